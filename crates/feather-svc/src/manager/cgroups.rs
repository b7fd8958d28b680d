//! Each unit's own cgroup below the VM's, as systemd gives each unit one: the VM's init binds
//! the VM group's `services` folder of every hierarchy at its usual place under
//! `/sys/fs/cgroup` (v1 controllers, the v2 hierarchy, or both on a hybrid machine), and the
//! manager makes `/sys/fs/cgroup/…/UNIT` there. Every process of a unit enters its group
//! before it executes its program, so the kernel knows a unit's processes however they fork or
//! make sessions; `MemoryMax=`, `TasksMax=`, `CPUQuota=`, `CPUWeight=` are the group's limits,
//! and its memory and CPU time are what `service ls`/`status` show.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use feather_sys::cgroup::{Cgroup, Hierarchies, Limits};
use nix::unistd::Pid;

use crate::unit::Unit;

/// The hierarchies the VM's init bound for its services, or None in a VM without them (a
/// throw-away VM without limits has no cgroup of its own).
pub fn detect() -> Option<Hierarchies> {
    let hierarchies = Hierarchies::detect();
    let probe = Cgroup::new(hierarchies.clone(), "");
    let delegated = probe
        .dirs()
        .iter()
        .any(|dir| dir.starts_with("/sys/fs/cgroup") && dir.join("cgroup.procs").exists());
    delegated.then_some(hierarchies)
}

/// Why a unit's group could not be made as its settings say.
#[derive(Debug, thiserror::Error)]
#[error("its cgroup {name}: {error}")]
pub struct CgroupError {
    name: String,
    error: feather_sys::SysError,
}

/// Makes (or takes again) the unit's group and applies its resource settings.
pub fn prepare(hierarchies: &Hierarchies, unit: &Unit) -> Result<Cgroup, CgroupError> {
    let name = unit.name.to_string();
    let group = Cgroup::new(hierarchies.clone(), &name);
    let resources = unit
        .service
        .as_ref()
        .map(|s| s.resources)
        .unwrap_or_default();
    let failed = |error| CgroupError {
        name: name.clone(),
        error,
    };
    group
        .create(&Limits {
            memory_bytes: resources.memory_max,
            pids: resources.tasks_max,
            cpus: resources.cpu_quota,
        })
        .map_err(failed)?;
    if let Some(weight) = resources.cpu_weight {
        group.set_cpu_weight(weight).map_err(failed)?;
    }
    Ok(group)
}

/// The group's `cgroup.procs` files, open for writing: a process of the unit writes "0" to
/// each before it executes its program (see `raw::install`).
pub fn open_procs(group: &Cgroup) -> Vec<File> {
    group
        .procs_files()
        .iter()
        .filter_map(|path| {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .ok()
        })
        .collect()
}

/// The group's processes, with their parents (as the VM's /proc numbers them).
pub fn members_with_parents(group: &Cgroup) -> Vec<(i32, i32)> {
    group
        .members()
        .into_iter()
        .filter_map(|pid| Some((pid.as_raw(), super::processes::parent_of(pid)?)))
        .collect()
}

pub fn members(group: &Cgroup) -> Vec<Pid> {
    group.members()
}

/// Memory (bytes) and CPU time the group's processes use, from the kernel's accounting.
pub fn usage(group: &Cgroup) -> (Option<u64>, Option<Duration>) {
    (group.memory_usage(), group.cpu_usage())
}

/// Removes the unit's group once it is empty (a group left occupied, by `KillMode=none` or
/// `process`, is taken again by the unit's next start).
pub fn remove(group: &Cgroup) {
    let _ = group.remove(Duration::from_millis(50));
}

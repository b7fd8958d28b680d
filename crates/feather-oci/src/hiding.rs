//! State roots registered after a container over the host (`org.feather.base=host`) started:
//! hidden in it as in a running VM (feather_vm::hiding). The init hides the roots registered
//! when it assembles the root ([`crate::mounts`]); a root registered later is hidden by a
//! short child that joins the init's mount namespace through its pidfd (checked against the
//! recorded start time, and to be a member of the container's own cgroup) and mounts the
//! empty tmpfs there. `create` reads the registry once
//! more after it recorded the init, so a root registered while the container started is never
//! missed: the registering call writes its entry before it looks for containers, `create`
//! records its init before it reads the registry again, so one of the two sees the other.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use feather_core::StateRoot;
use nix::unistd::Pid;

use crate::cgroups::Groups;
use crate::registry::RootRegistry;
use crate::store::{Container, Record};

/// Hides `new`'s folders in every running container over the host, of every runtime root
/// feather-oci was used with. Returns one warning per container where that failed.
pub fn in_running_containers(new: &StateRoot) -> Vec<String> {
    let folders = feather_core::roots::root_folders(new);
    let mut warnings = Vec::new();
    // Its records are trusted below (an init whose mount namespace root joins): `roots()`
    // lists only runtime roots no user but root can change.
    for root in RootRegistry::host().roots() {
        for id in crate::store::ids(&root) {
            let Ok(container) = Container::load(&root, &id) else {
                continue;
            };
            if !is_over_the_host(&container) || container.record.pid == 0 {
                continue;
            }
            if let Err(error) = hide_in(&container, &folders) {
                warnings.push(format!(
                    "cannot hide state root {} from the running OCI container {id} (of {}): \
                     {error:#}; delete and run that container again to hide it",
                    new.dir().display(),
                    root.display()
                ));
            }
        }
    }
    warnings
}

/// After `create` recorded the init: hides the state folders registered since `seen` (the
/// ones the init hid) in the container.
pub fn registered_since(container: &Container, seen: &[PathBuf]) -> Result<()> {
    let new: Vec<PathBuf> = feather_core::roots::host_state_folders()
        .into_iter()
        .filter(|folder| !seen.contains(folder))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    hide_in(container, &new).context(
        "org.feather.base=host: hide the state roots registered while the container started",
    )
}

fn is_over_the_host(container: &Container) -> bool {
    container
        .record
        .annotations
        .get("org.feather.base")
        .is_some_and(|base| base == "host")
}

/// Hides `folders` (host paths: the container's root is the host's `/`) in the mount namespace
/// of `container`'s init, if it still runs.
fn hide_in(container: &Container, folders: &[impl AsRef<Path>]) -> Result<()> {
    let Some(pidfd) = container.init_pidfd() else {
        return Ok(());
    };
    if !init_in_its_group(&container.record) {
        // The init ended meanwhile, its pid reused: nothing is left to hide anything in.
        if !container.init_alive() {
            return Ok(());
        }
        bail!(
            "its record names pid {} as its init, which is not in the container's cgroup {:?} (a \
             record feather-oci did not write): nothing was mounted there; check who wrote {}",
            container.record.pid,
            container.record.cgroup,
            container.dir.join("record.json").display()
        );
    }
    let folders: Vec<PathBuf> = folders.iter().map(|f| f.as_ref().to_owned()).collect();
    match feather_sys::process::hide_in_mount_namespace_of(&pidfd, &folders) {
        Ok(()) => Ok(()),
        // The container stopped meanwhile (its namespace is gone with its init: ESRCH):
        // nothing is left to hide anything in, as for a VM (feather_vm::hiding).
        Err(_) if !container.init_alive() => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Whether the init `record` names is a member of the container's own cgroup, the group
/// create made for it and started it in: a record naming any other process (host pid 1, a
/// stranger's, forged by whoever could write it) would have the tmpfs mounted in that
/// process's namespace, the host's own. The members are read in the folders of the group in
/// each hierarchy (`Cgroup::members`), not from the process's `/proc/PID/cgroup` (relative to
/// its cgroup namespace), as feather_vm's hiding does. The group is trusted only as a create
/// would have named it ([`crate::cgroups::relative_path`]): never the hierarchy's root (every
/// process), a path with `..`, nor `feather/` (the VMs'). A record is trusted with its group
/// no further than `kill --all` and `delete` already trust it (they signal its members).
fn init_in_its_group(record: &Record) -> bool {
    let Ok(relative) = crate::cgroups::relative_path(Some(Path::new(&record.cgroup)), &record.id)
    else {
        return false;
    };
    Groups::new(&relative)
        .members()
        .contains(&Pid::from_raw(record.pid))
}

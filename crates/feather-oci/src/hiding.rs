//! State roots registered after a container over the host (`org.feather.base=host`) started:
//! hidden in it as in a running VM (feather_vm::hiding). The init hides the roots registered
//! when it assembles the root ([`crate::mounts`]); a root registered later is hidden by a
//! short child that joins the init's mount namespace through its pidfd (checked against the
//! recorded start time, to be a member of the group create made and marked for the container,
//! and to be in a mount namespace other than the host's: [`init_trusted`]) and mounts the
//! empty tmpfs there. `create` reads the registry once
//! more after it recorded the init, so a root registered while the container started is never
//! missed: the registering call writes its entry before it looks for containers, `create`
//! records its init before it reads the registry again, so one of the two sees the other.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use feather_core::StateRoot;
use nix::unistd::Pid;

use crate::registry::RootRegistry;
use crate::store::Container;

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
                // Running it again helps where the mount failed, not where its record is
                // untrusted (the advice then names the record).
                let advice = match error.is::<Untrusted>() {
                    true => "",
                    false => "; delete and run that container again to hide it",
                };
                warnings.push(format!(
                    "cannot hide state root {} from the running OCI container {id} (of {}): \
                     {error:#}{advice}",
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

/// Whether `container` sees the host's files (`org.feather.base=host`): the one kind a state
/// root registered later is hidden in.
pub(crate) fn is_over_the_host(container: &Container) -> bool {
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
    if let Err(why) = init_trusted(container) {
        // The init ended meanwhile, its pid reused: nothing is left to hide anything in.
        if !container.init_alive() {
            return Ok(());
        }
        return Err(Untrusted(format!(
            "its record names pid {} as its init, {why}: nothing was mounted in that process's \
             namespace, so the root stays visible in the container if it runs; check who wrote \
             {} (feather-oci writes it, and puts the init in the group it made), or whether a \
             process of the container moved its init",
            container.record.pid,
            container.dir.join("record.json").display()
        ))
        .into());
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

/// A container's init that [`init_trusted`] refused: why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Untrusted(String);

/// Why the init `record` names is not to have a tmpfs mounted in its mount namespace, if it is
/// not: a record naming any other process (host pid 1, a service, another runtime's
/// container, forged by whoever could write it) would have it mounted there, the host's own
/// namespace perhaps. Four checks, as none alone holds against a forged record (which names
/// its group as freely as its pid):
/// - the group is one create would have named and made for this container, bearing its
///   mark ([`crate::store::marked_groups`]; the mark alone, where `kill --all` and `delete`
///   also take an unmarked group their init provably has to itself);
/// - the init is a member, read in the group's folders in each hierarchy (`Cgroup::members`),
///   not from the process's `/proc/PID/cgroup` (relative to its cgroup namespace), as
///   feather_vm's hiding does (feather derives the VM's group itself; here the record names
///   it, hence the mark);
/// - and its mount namespace is neither the caller's nor pid 1's: a container over the host
///   has one of its own, and a mount in the host's would hide the root from the host itself.
fn init_trusted(container: &Container) -> std::result::Result<(), String> {
    let record = &container.record;
    let group = &record.cgroup;
    let groups = container
        .marked_groups()
        .map_err(|why| format!("in {why}"))?;
    if !groups.members().contains(&Pid::from_raw(record.pid)) {
        return Err(format!("which is not in the container's cgroup {group:?}"));
    }
    if shares_a_hosts_mount_namespace(record.pid) {
        return Err(
            "which shares the mount namespace of the host (pid 1) or of this \
                    command"
                .to_owned(),
        );
    }
    Ok(())
}

/// Whether process `pid` is in the caller's (its thread's) mount namespace or pid 1's; also
/// where its namespace cannot be read (nothing is mounted then). Pid 1's may be unreadable
/// (a pid 1 of another user namespace, in a sandbox): then it is compared with the caller's
/// only. Read by pid: the mount is made
/// through the pidfd taken before the checks, so a pid reused meanwhile gets nothing (the
/// init's namespace is gone with it).
fn shares_a_hosts_mount_namespace(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let namespace = |of: &str| {
        std::fs::metadata(format!("/proc/{of}/ns/mnt"))
            .ok()
            .map(|meta| (meta.dev(), meta.ino()))
    };
    let Some(its) = namespace(&pid.to_string()) else {
        return true;
    };
    ["thread-self", "1"]
        .into_iter()
        .any(|other| namespace(other) == Some(its))
}

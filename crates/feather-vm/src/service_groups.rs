//! The groups below the VM's `services/` folder in each cgroup hierarchy — each unit's group
//! (`nginx.service`), and any the VM's root made there — saved with a checkpoint and put back
//! at its restore.
//!
//! CRIU runs with cgroups ignored (the keeper owns the VM's group: docs/security.md row 63),
//! so a restored VM's processes all come back in the VM's own group, and the `services/`
//! folder the restoring keeper binds into the VM is new. What counts is the kernel's
//! membership at the dump, as systemd would see it: every process in a unit's group, those its
//! manager never heard of (a daemon a unit forked, which `setsid`ed away) included. So the
//! dumping keeper reads each group's `cgroup.procs` while CRIU holds the tasks seized (after it
//! dumped them, before they go on or end: nothing forks meanwhile), and the limits written in
//! the group, and saves them with the hierarchy's entry in `layers.json` ([`save`]). The
//! restoring keeper makes the groups again with those limits before CRIU runs ([`recreate`]),
//! and moves each process back into its group while the restored processes are still stopped
//! ([`move_back`]): no process of a unit runs, or forks, outside its group.
//!
//! The list is read from the checkpoint, which the host keeps but treats as tampered with: a
//! group's path must stay below `services/`, only the files of [`SETTINGS`] are written (as
//! the VM's root may write them itself), and a pid is moved only if it names a process of the
//! restored VM (looked up among the VM's group's members, in the VM's pid namespace).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use feather_sys::cgroup::Cgroup;
use nix::unistd::Pid;

use crate::error::{failed, io, Result};

/// One group below a hierarchy's `services/` folder, at the dump.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedGroup {
    /// Its path below `services/` (`nginx.service`; empty for `services/` itself).
    pub(crate) path: PathBuf,
    /// Its processes, as the VM's pid namespace numbers them (CRIU restores those numbers).
    #[serde(default)]
    pub(crate) pids: Vec<i32>,
    /// What its files of [`SETTINGS`] held, as (file, value), in that order.
    #[serde(default)]
    pub(crate) settings: Vec<(String, String)>,
}

/// The files of a group that hold what it was given (by the VM's service manager: its units'
/// `MemoryMax=`, `TasksMax=`, `CPUQuota=`, `CPUWeight=`), in the order they are written back:
/// a v2 group's controllers for its children before its children's limits are written, a CPU
/// period before its quota.
pub(crate) const SETTINGS: [&str; 9] = [
    "cgroup.subtree_control",
    "memory.limit_in_bytes",
    "memory.max",
    "pids.max",
    "cpu.cfs_period_us",
    "cpu.cfs_quota_us",
    "cpu.max",
    "cpu.shares",
    "cpu.weight",
];

/// How deep below `services/` groups are saved (cgroup v2 bounds a VM to 16 levels below its
/// own group: docs/security.md row 60; v1 has no bound).
const MAX_DEPTH: usize = 16;

/// The longest value of a setting written back (the kernel's are a few words).
const MAX_VALUE: usize = 64;

/// The groups in `services` (the `services/` folder of the VM's group in one hierarchy, on
/// this host), parents before their children. Read while the VM's processes cannot fork.
pub(crate) fn save(services: &Path) -> Vec<SavedGroup> {
    let mut groups = Vec::new();
    save_below(services, Path::new(""), 0, &mut groups);
    groups
}

fn save_below(services: &Path, path: &Path, depth: usize, groups: &mut Vec<SavedGroup>) {
    let dir = services.join(path);
    groups.push(SavedGroup {
        path: path.to_path_buf(),
        pids: vm_pids(&dir),
        settings: settings_of(&dir),
    });
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| path.join(e.file_name()))
        .collect();
    children.sort();
    for child in children {
        save_below(services, &child, depth + 1, groups);
    }
}

/// The processes of the group at `dir` (not those below it), by their numbers in the VM.
fn vm_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .filter_map(|pid| feather_sys::process::innermost_pid(Pid::from_raw(pid)))
        .collect()
}

/// The group's files of [`SETTINGS`] it has, with their values as they are written back.
fn settings_of(dir: &Path) -> Vec<(String, String)> {
    SETTINGS
        .iter()
        .filter_map(|file| {
            let value = as_written(file, &fs::read_to_string(dir.join(file)).ok()?);
            (!value.is_empty()).then(|| ((*file).to_owned(), value))
        })
        .collect()
}

/// A setting's value as read (`memory pids` from `cgroup.subtree_control`) turned into what
/// writing it takes (`+memory +pids`).
fn as_written(file: &str, read: &str) -> String {
    match file {
        "cgroup.subtree_control" => read
            .split_whitespace()
            .map(|controller| format!("+{controller}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => read.trim().to_owned(),
    }
}

/// Makes the saved `groups` again below `services` (this host's `services/` folder of the VM's
/// group in the same hierarchy, made already), each with its settings, before CRIU restores
/// the processes. Each group is checked before anything is made for it.
pub(crate) fn recreate(
    vm: &impl std::fmt::Display,
    services: &Path,
    groups: &[SavedGroup],
) -> Result<()> {
    for group in groups {
        let dir = services.join(checked_path(vm, &group.path)?);
        check_settings(vm, group)?;
        if let Err(e) = fs::create_dir(&dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io(vm, format!("create the cgroup {}", dir.display()))(e));
            }
        }
        apply_settings(vm, &dir, &group.settings)?;
    }
    Ok(())
}

/// Refuses a group whose settings name a file feather never saves, or a value no kernel wrote.
fn check_settings(vm: &impl std::fmt::Display, group: &SavedGroup) -> Result<()> {
    let odd = group.settings.iter().find(|(file, value)| {
        !SETTINGS.contains(&file.as_str()) || value.len() > MAX_VALUE || value.contains('\n')
    });
    match odd {
        None => Ok(()),
        Some((file, value)) => Err(failed(
            vm,
            format!(
                "its checkpoint gives the cgroup {} the setting {file:?} = {value:?}, which \
                 feather never saves; the checkpoint was changed: start the VM anew",
                group.path.display()
            ),
        )),
    }
}

/// Writes each setting into the group at `dir`, in order; a value the group has already (a
/// new group's default) is not written.
fn apply_settings(
    vm: &impl std::fmt::Display,
    dir: &Path,
    settings: &[(String, String)],
) -> Result<()> {
    for (file, value) in settings {
        let path = dir.join(file);
        let now = fs::read_to_string(&path).map(|read| as_written(file, &read));
        if now.as_deref().is_ok_and(|now| now == value) {
            continue;
        }
        fs::write(&path, value)
            .map_err(io(vm, format!("write {value:?} into {}", path.display())))?;
    }
    Ok(())
}

/// A group's path below `services/`, refused unless it stays there (names only: no `..`, no
/// root).
fn checked_path<'a>(vm: &impl std::fmt::Display, path: &'a Path) -> Result<&'a Path> {
    match path.components().all(|c| matches!(c, Component::Normal(_))) {
        true => Ok(path),
        false => Err(failed(
            vm,
            format!(
                "its checkpoint names the cgroup {}, which is not below the VM's services/ \
                 folder; the checkpoint was changed: start the VM anew",
                path.display()
            ),
        )),
    }
}

/// The restored VM's processes, by their numbers in the VM, with their host pids: the members
/// of the VM's group (CRIU restored every process of the VM there).
pub(crate) fn restored_processes(cgroup: &Cgroup) -> BTreeMap<i32, Pid> {
    cgroup
        .members()
        .into_iter()
        .filter_map(|host| Some((feather_sys::process::innermost_pid(host)?, host)))
        .collect()
}

/// Moves each restored process back into the group it was in at the dump (`restored`: see
/// [`restored_processes`]), while CRIU leaves them stopped. A pid not among the VM's processes
/// is skipped (an image lists no other), as is one that ended meanwhile.
pub(crate) fn move_back(
    vm: &impl std::fmt::Display,
    services: &Path,
    groups: &[SavedGroup],
    restored: &BTreeMap<i32, Pid>,
) -> Result<()> {
    for group in groups {
        let procs = services
            .join(checked_path(vm, &group.path)?)
            .join("cgroup.procs");
        for host in group.pids.iter().filter_map(|pid| restored.get(pid)) {
            match fs::write(&procs, host.to_string()) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                    return Err(io(
                        vm,
                        format!("move process {host} into {}", procs.display()),
                    )(e));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v2_groups_controllers_are_written_back_as_enabled() {
        assert_eq!(
            as_written("cgroup.subtree_control", "memory pids\n"),
            "+memory +pids"
        );
        assert_eq!(as_written("cgroup.subtree_control", "\n"), "");
        assert_eq!(as_written("pids.max", "16\n"), "16");
    }

    #[test]
    fn groups_are_saved_parents_first_with_their_processes_in_the_vm_and_their_settings() {
        let dir = std::env::temp_dir().join(format!("feather-saved-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("b.service/inner")).unwrap();
        fs::create_dir_all(dir.join("a.service")).unwrap();
        let me = std::process::id().to_string();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        fs::write(dir.join("a.service/cgroup.procs"), format!("{me}\n")).unwrap();
        fs::write(dir.join("a.service/pids.max"), "16\n").unwrap();
        fs::write(dir.join("a.service/cpu.cfs_quota_us"), "50000\n").unwrap();
        fs::write(dir.join("a.service/cpu.cfs_period_us"), "100000\n").unwrap();
        let saved = save(&dir);
        let _ = fs::remove_dir_all(&dir);
        let paths: Vec<&Path> = saved.iter().map(|g| g.path.as_path()).collect();
        assert_eq!(
            paths,
            ["", "a.service", "b.service", "b.service/inner"].map(Path::new)
        );
        let own = feather_sys::process::innermost_pid(Pid::this()).unwrap();
        assert_eq!(saved[1].pids, [own]);
        // In the order they are written back: the period before the quota.
        assert_eq!(
            saved[1].settings,
            [
                ("pids.max", "16"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000")
            ]
            .map(|(f, v)| (f.to_owned(), v.to_owned()))
        );
        assert!(saved[0].pids.is_empty() && saved[2].settings.is_empty());
    }

    #[test]
    fn a_saved_group_outside_services_is_refused() {
        for bad in ["../x", "/x", "a/../../x", "./x"] {
            let e = checked_path(&"vm", Path::new(bad)).unwrap_err();
            assert!(
                e.to_string().contains("not below the VM's services/"),
                "{bad}: {e}"
            );
        }
        for good in ["", "nginx.service", "a/b"] {
            assert!(checked_path(&"vm", Path::new(good)).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_setting_feather_never_saves_is_refused() {
        let dir = std::env::temp_dir().join(format!("feather-groups-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let group = SavedGroup {
            path: "x.service".into(),
            settings: vec![("cgroup.procs".into(), "1".into())],
            ..SavedGroup::default()
        };
        let e = recreate(&"vm", &dir, &[group]).unwrap_err();
        let made = dir.join("x.service").exists();
        let _ = fs::remove_dir_all(&dir);
        assert!(e.to_string().contains("which feather never saves"), "{e}");
        assert!(!made, "the group was made before its settings were checked");
    }
}

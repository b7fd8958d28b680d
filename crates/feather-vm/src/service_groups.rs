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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::fs;
use std::path::{Component, Path, PathBuf};

use feather_core::display::escape_path;
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
/// a v2 group's type first (`threaded`, which a process moved into a domain group made in its
/// stead would not fit), its controllers for its children before its children's limits are
/// written, a CPU period before its quota.
pub(crate) const SETTINGS: [&str; 10] = [
    "cgroup.type",
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

/// How many cgroups a VM may make below its group on cgroup v2 (`services/` and its units
/// count), and how deep: each costs kernel memory, and the `services/` subtree is the VM
/// root's to make groups in (row 27 of docs/security.md). A VM's service manager makes one
/// group a unit; a VM running a thousand units is beyond what feather is for. A restore, which
/// makes the groups itself (on cgroup v1 charged to the keeper, not the VM), holds to both.
pub const MAX_CGROUPS: u32 = 1000;
/// See [`MAX_CGROUPS`]: `services/` is one level below the VM's group, a unit's group two.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// How many names a group's path below `services/` may have (`services/` is one level of
/// [`MAX_CGROUP_DEPTH`]).
const MAX_DEPTH: usize = MAX_CGROUP_DEPTH as usize - 1;

/// The longest value of a setting written back (the kernel's are a few words).
const MAX_VALUE: usize = 64;

/// The groups in `services` (the `services/` folder of the VM's group in one hierarchy, on
/// this host), parents before their children. Read while the VM's processes cannot fork.
/// At most [`MAX_CGROUPS`] groups, [`MAX_DEPTH`] deep, as a restore makes no more. Nothing the
/// VM named fails the dump: a group that cannot be saved is left out (said in the keeper's
/// log), and its processes come back in the VM's own group.
pub(crate) fn save(vm: &impl Display, services: &Path) -> Vec<SavedGroup> {
    let mut groups = Vec::new();
    save_below(vm, services, Path::new(""), &mut groups);
    groups
}

fn save_below(vm: &impl Display, services: &Path, path: &Path, groups: &mut Vec<SavedGroup>) {
    if groups.len() >= MAX_CGROUPS as usize {
        return;
    }
    let dir = services.join(path);
    groups.push(SavedGroup {
        path: path.to_path_buf(),
        pids: vm_pids(vm, &dir),
        settings: settings_of(&dir),
    });
    if path.components().count() >= MAX_DEPTH {
        return;
    }
    for child in children_of(vm, &dir) {
        save_below(vm, services, &path.join(child), groups);
    }
}

/// The names of the groups in the group at `dir`, sorted; those not UTF-8 (which
/// `layers.json` cannot hold) left out.
fn children_of(vm: &impl Display, dir: &Path) -> Vec<String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!(
                "feather keeper {vm}: the cgroups in {} are not saved with the checkpoint: \
                 cannot list them: {e}",
                escape_path(dir)
            );
            return Vec::new();
        }
    };
    let mut children: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string();
            if let Err(odd) = &name {
                eprintln!(
                    "feather keeper {vm}: the cgroup {} is not saved with the checkpoint: its \
                     name is not UTF-8; a restore leaves its processes in the VM's group",
                    escape_path(&dir.join(odd))
                );
            }
            name.ok()
        })
        .collect();
    children.sort();
    children
}

/// The processes of the group at `dir` (not those below it), by their numbers in the VM. A
/// threaded group has no list of its own (the kernel lists its processes in the domain group
/// above it), and one the VM removed meanwhile none; a group that cannot be read is said in
/// the keeper's log, its processes restored in the VM's group.
fn vm_pids(vm: &impl Display, dir: &Path) -> Vec<i32> {
    let procs = dir.join("cgroup.procs");
    let listed = match fs::read_to_string(&procs) {
        Ok(listed) => listed,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOENT)) => {
            String::new()
        }
        Err(e) => {
            eprintln!(
                "feather keeper {vm}: the processes in {} are not saved with the checkpoint: \
                 {e}",
                escape_path(&procs)
            );
            String::new()
        }
    };
    listed
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .filter_map(|pid| feather_sys::process::pid_in_child_namespace(Pid::from_raw(pid)))
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
/// writing it takes (`+memory +pids`); a type other than `threaded` (the only one written:
/// the kernel sets the others itself) as nothing.
fn as_written(file: &str, read: &str) -> String {
    match file {
        "cgroup.type" if read.trim() == "threaded" => "threaded".to_owned(),
        "cgroup.type" => String::new(),
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
/// the processes, and returns those made, for [`move_back`]. Only a changed checkpoint refuses
/// the restore, checked before anything is made; a group that cannot be made or given its
/// settings (a name too long for a path, a v2 group the VM had made threaded) is left out,
/// said in the keeper's log, and its processes stay in the VM's group.
pub(crate) fn recreate(
    vm: &impl Display,
    services: &Path,
    groups: &[SavedGroup],
) -> Result<Vec<SavedGroup>> {
    check_groups(vm, groups)?;
    let made = groups
        .iter()
        .filter(|group| {
            let made = make_group(vm, &services.join(&group.path), &group.settings);
            if let Err(e) = &made {
                eprintln!(
                    "feather keeper {vm}: {}; its processes stay in the VM's group",
                    feather_core::error::causes(e)
                );
            }
            made.is_ok()
        })
        .cloned()
        .collect();
    Ok(made)
}

/// Refuses `groups` (of one hierarchy) that no dump saves: more than a VM may make, a path
/// that leaves `services/` or goes deeper than a VM may, settings no kernel wrote, a pid
/// listed twice.
fn check_groups(vm: &impl Display, groups: &[SavedGroup]) -> Result<()> {
    if groups.len() > MAX_CGROUPS as usize {
        return Err(failed(
            vm,
            format!(
                "its checkpoint lists {} cgroups in one hierarchy, more than the {MAX_CGROUPS} \
                 a VM may make; the checkpoint was changed: start the VM anew",
                groups.len()
            ),
        ));
    }
    for group in groups {
        checked_path(vm, &group.path)?;
        check_settings(vm, group)?;
    }
    check_listed_once(vm, groups)
}

/// Makes the group at `dir` (if missing) and writes its settings.
fn make_group(vm: &impl Display, dir: &Path, settings: &[(String, String)]) -> Result<()> {
    if let Err(e) = fs::create_dir(dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(io(vm, format!("create the cgroup {}", escape_path(dir)))(e));
        }
    }
    apply_settings(vm, dir, settings)
}

/// Refuses a group whose settings name a file feather never saves, or a value no kernel wrote.
fn check_settings(vm: &impl Display, group: &SavedGroup) -> Result<()> {
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
                escape_path(&group.path)
            ),
        )),
    }
}

/// Writes each setting into the group at `dir`, in order; a value the group has already (a
/// new group's default) is not written.
fn apply_settings(vm: &impl Display, dir: &Path, settings: &[(String, String)]) -> Result<()> {
    for (file, value) in settings {
        let path = dir.join(file);
        let now = fs::read_to_string(&path).map(|read| as_written(file, &read));
        if now.as_deref().is_ok_and(|now| now == value) {
            continue;
        }
        fs::write(&path, value).map_err(io(
            vm,
            format!("write {value:?} into {}", escape_path(&path)),
        ))?;
    }
    Ok(())
}

/// A group's path below `services/`, refused unless it stays there (names only: no `..`, no
/// root) and is no deeper than a VM may make groups ([`MAX_DEPTH`]).
fn checked_path<'a>(vm: &impl Display, path: &'a Path) -> Result<&'a Path> {
    let refused = |why: &str| {
        Err(failed(
            vm,
            format!(
                "its checkpoint names the cgroup {}, which is {why}; the checkpoint was \
                 changed: start the VM anew",
                escape_path(path)
            ),
        ))
    };
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return refused("not below the VM's services/ folder");
    }
    if path.components().count() > MAX_DEPTH {
        return refused(&format!(
            "deeper than the {MAX_CGROUP_DEPTH} levels a VM may make below its group"
        ));
    }
    Ok(path)
}

/// The restored VM's processes, by their numbers in the VM, with their host pids: the members
/// of the VM's group (CRIU restored every process of the VM there).
pub(crate) fn restored_processes(cgroup: &Cgroup) -> BTreeMap<i32, Pid> {
    cgroup
        .members()
        .into_iter()
        .filter_map(|host| Some((feather_sys::process::pid_in_child_namespace(host)?, host)))
        .collect()
}

/// Moves each restored process back into the group it was in at the dump (`restored`: see
/// [`restored_processes`]), while CRIU leaves them stopped. A pid not among the VM's processes
/// is skipped (an image lists no other), as is one that ended meanwhile; a pid listed twice is
/// refused (each move takes a lock every cgroup change on the host waits for). A group that
/// cannot be entered is said in the keeper's log, its processes left in the VM's group.
pub(crate) fn move_back(
    vm: &impl Display,
    services: &Path,
    groups: &[SavedGroup],
    restored: &BTreeMap<i32, Pid>,
) -> Result<()> {
    check_listed_once(vm, groups)?;
    for group in groups {
        let procs = services
            .join(checked_path(vm, &group.path)?)
            .join("cgroup.procs");
        for host in group.pids.iter().filter_map(|pid| restored.get(pid)) {
            match fs::write(&procs, host.to_string()) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                    eprintln!(
                        "feather keeper {vm}: cannot move process {host} into {}: {e}; the \
                         processes of that group stay in the VM's group",
                        escape_path(&procs)
                    );
                    break;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Refuses `groups` (of one hierarchy) listing a pid more than once: a dump lists each
/// process once, in its one group.
fn check_listed_once(vm: &impl Display, groups: &[SavedGroup]) -> Result<()> {
    let mut seen = BTreeSet::new();
    let twice = groups
        .iter()
        .flat_map(|g| &g.pids)
        .find(|pid| !seen.insert(**pid));
    match twice {
        None => Ok(()),
        Some(pid) => Err(failed(
            vm,
            format!(
                "its checkpoint lists the process {pid} more than once in one cgroup \
                 hierarchy; the checkpoint was changed: start the VM anew"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feather_testkit::ScratchDir;

    #[test]
    fn a_v2_groups_controllers_are_written_back_as_enabled() {
        assert_eq!(
            as_written("cgroup.subtree_control", "memory pids\n"),
            "+memory +pids"
        );
        assert_eq!(as_written("cgroup.subtree_control", "\n"), "");
        assert_eq!(as_written("pids.max", "16\n"), "16");
    }

    /// `unshare` (which the test started) with the init of the pid namespace it made; both end
    /// on drop (`--kill-child`).
    struct InitOfANamespace {
        unshare: std::process::Child,
        init: i32,
    }

    impl InitOfANamespace {
        fn start() -> InitOfANamespace {
            let unshare = feather_testkit::command_without_stdio(
                "unshare",
                &["--pid", "--fork", "--kill-child", "sleep", "60"],
            )
            .spawn()
            .unwrap();
            let children = format!("/proc/{0}/task/{0}/children", unshare.id());
            let mut unshare = unshare;
            loop {
                let ended = unshare.try_wait().unwrap();
                assert!(ended.is_none(), "unshare ended: {ended:?}");
                let listed = fs::read_to_string(&children).unwrap_or_default();
                if let Some(init) = listed.split_whitespace().find_map(|c| c.parse().ok()) {
                    return InitOfANamespace { unshare, init };
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    impl Drop for InitOfANamespace {
        fn drop(&mut self) {
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }

    #[test]
    fn groups_are_saved_parents_first_with_their_processes_in_the_vm_and_their_settings() {
        let scratch = feather_testkit::ScratchDir::new("saved");
        let dir = scratch.0.clone();
        fs::create_dir_all(dir.join("b.service/inner")).unwrap();
        fs::create_dir_all(dir.join("a.service")).unwrap();
        // A VM's init (pid 1 in a namespace below ours), and this test, which has no number
        // there and is left out.
        let vm = InitOfANamespace::start();
        let me = std::process::id();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        fs::write(
            dir.join("a.service/cgroup.procs"),
            format!("{me}\n{}\n", vm.init),
        )
        .unwrap();
        fs::write(dir.join("a.service/pids.max"), "16\n").unwrap();
        fs::write(dir.join("a.service/cpu.cfs_quota_us"), "50000\n").unwrap();
        fs::write(dir.join("a.service/cpu.cfs_period_us"), "100000\n").unwrap();
        let saved = save(&"vm", &dir);
        let paths: Vec<&Path> = saved.iter().map(|g| g.path.as_path()).collect();
        assert_eq!(
            paths,
            ["", "a.service", "b.service", "b.service/inner"].map(Path::new)
        );
        assert_eq!(saved[1].pids, [1]);
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
        let scratch = feather_testkit::ScratchDir::new("groups");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let group = SavedGroup {
            path: "x.service".into(),
            settings: vec![("cgroup.procs".into(), "1".into())],
            ..SavedGroup::default()
        };
        let e = recreate(&"vm", &dir, &[group]).unwrap_err();
        let made = dir.join("x.service").exists();
        assert!(e.to_string().contains("which feather never saves"), "{e}");
        assert!(!made, "the group was made before its settings were checked");
    }

    #[test]
    fn a_group_whose_name_is_not_utf8_is_left_out_and_the_dump_goes_on() {
        use std::os::unix::ffi::OsStrExt;
        let dir = ScratchDir::new("odd-name");
        let odd = dir.0.join(std::ffi::OsStr::from_bytes(b"\xff.service"));
        fs::create_dir_all(odd.join("inner")).unwrap();
        fs::create_dir(dir.0.join("a.service")).unwrap();
        let saved = save(&"vm", &dir.0);
        let paths: Vec<&Path> = saved.iter().map(|g| g.path.as_path()).collect();
        assert_eq!(paths, ["", "a.service"].map(Path::new));
        let layer = crate::images::ExternalLayer {
            cgroup_services: true,
            groups: saved,
            ..Default::default()
        };
        serde_json::to_vec_pretty(&[layer]).expect("layers.json is written");
    }

    #[test]
    fn no_more_groups_are_saved_than_a_restore_makes() {
        let dir = ScratchDir::new("many");
        for i in 0..MAX_CGROUPS {
            fs::create_dir(dir.0.join(format!("{i:04}.service"))).unwrap();
        }
        let deep: PathBuf = (0..MAX_CGROUP_DEPTH + 2).map(|i| format!("d{i}")).collect();
        fs::create_dir_all(dir.0.join("0000.service").join(&deep)).unwrap();
        let saved = save(&"vm", &dir.0);
        assert_eq!(saved.len(), MAX_CGROUPS as usize);
        let deepest = saved.iter().map(|g| g.path.components().count()).max();
        assert_eq!(deepest, Some(MAX_DEPTH));
        assert!(saved.iter().all(|g| checked_path(&"vm", &g.path).is_ok()));
    }

    /// The bound on depth keeps every path below PATH_MAX: 15 names of 255 bytes below a
    /// `services/` folder.
    #[test]
    fn the_deepest_groups_with_the_longest_names_are_saved_and_made_again() {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        let (dumped, restored) = (
            ScratchDir::new("deepest"),
            ScratchDir::new("deepest-restored"),
        );
        let name = "n".repeat(255);
        // One level more than a VM may make, each made beneath the last (past PATH_MAX).
        let mut dir: std::os::fd::OwnedFd = fs::File::open(&dumped.0).unwrap().into();
        for _ in 0..=MAX_DEPTH {
            mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
            dir = openat(&dir, name.as_str(), OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        }
        let saved = save(&"vm", &dumped.0);
        assert_eq!(saved.len(), MAX_DEPTH + 1);
        let made = recreate(&"vm", &restored.0, &saved).unwrap();
        assert_eq!(made, saved);
    }

    #[test]
    fn more_groups_than_a_vm_may_make_are_refused_before_any_is_made() {
        let dir = ScratchDir::new("too-many");
        let groups: Vec<SavedGroup> = (0..=MAX_CGROUPS)
            .map(|i| SavedGroup {
                path: format!("{i}.service").into(),
                ..SavedGroup::default()
            })
            .collect();
        let e = recreate(&"vm", &dir.0, &groups).unwrap_err();
        assert!(e.to_string().contains("more than the 1000"), "{e}");
        assert!(!dir.0.join("0.service").exists(), "a group was made");
    }

    #[test]
    fn a_group_deeper_than_a_vm_may_make_is_refused() {
        let dir = ScratchDir::new("too-deep");
        let deep: PathBuf = (0..MAX_CGROUP_DEPTH).map(|i| format!("d{i}")).collect();
        let group = SavedGroup {
            path: deep,
            ..SavedGroup::default()
        };
        let e = recreate(&"vm", &dir.0, &[group]).unwrap_err();
        assert!(e.to_string().contains("deeper than the 16 levels"), "{e}");
        assert!(!dir.0.join("d0").exists(), "a group was made");
        let allowed: PathBuf = (0..MAX_DEPTH).map(|i| format!("d{i}")).collect();
        assert!(checked_path(&"vm", &allowed).is_ok());
    }

    #[test]
    fn a_group_that_cannot_be_made_is_left_out_and_the_restore_goes_on() {
        let dir = ScratchDir::new("unmade");
        let group = |path: &str, pids: Vec<i32>| SavedGroup {
            path: path.into(),
            pids,
            settings: vec![("pids.max".into(), "16".into())],
        };
        // A group the kernel will not make (here a name past NAME_MAX).
        let long = "n".repeat(300);
        let groups = [group("a.service", vec![7]), group(&long, vec![8])];
        let made = recreate(&"vm", &dir.0, &groups).unwrap();
        assert_eq!(made, groups[..1]);
        let limit = fs::read_to_string(dir.0.join("a.service/pids.max")).unwrap();
        assert_eq!(limit, "16");
        // And a group that went meanwhile is not entered, the others are.
        let gone = [group("gone.service", vec![8]), groups[0].clone()];
        let restored = BTreeMap::from([(7, Pid::from_raw(1007)), (8, Pid::from_raw(1008))]);
        move_back(&"vm", &dir.0, &gone, &restored).unwrap();
        let moved = fs::read_to_string(dir.0.join("a.service/cgroup.procs")).unwrap();
        assert_eq!(moved, "1007");
    }

    /// A group of this host's cgroup v2 hierarchy, removed (with the groups below it) on drop.
    struct V2Group(PathBuf);

    impl Drop for V2Group {
        fn drop(&mut self) {
            let mut below: Vec<PathBuf> = walk(&self.0);
            below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for dir in below {
                let _ = fs::remove_dir(dir);
            }
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut found = vec![dir.to_path_buf()];
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.extend(walk(&entry.path()));
            }
        }
        found
    }

    #[test]
    fn a_threaded_group_is_made_threaded_again() {
        let hierarchies = feather_sys::cgroup::Hierarchies::detect();
        let name = format!("feather-test-threaded-{}", std::process::id());
        let top = Cgroup::new(hierarchies, name)
            .v2_dir()
            .expect("this host has a cgroup v2 hierarchy");
        fs::create_dir(&top).unwrap();
        let top = V2Group(top);
        let (dumped, restored) = (top.0.join("dumped"), top.0.join("restored"));
        fs::create_dir_all(dumped.join("worker.service")).unwrap();
        fs::create_dir(&restored).unwrap();
        fs::write(dumped.join("worker.service/cgroup.type"), "threaded").unwrap();
        let saved = save(&"vm", &dumped);
        assert_eq!(
            saved[1].settings[0],
            ("cgroup.type".into(), "threaded".into())
        );
        let made = recreate(&"vm", &restored, &saved).unwrap();
        assert_eq!(made.len(), 2);
        let kind = fs::read_to_string(restored.join("worker.service/cgroup.type")).unwrap();
        assert_eq!(kind.trim(), "threaded");
        // A process goes into it (ended before the groups are removed).
        let process = Started(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        );
        let host = Pid::from_raw(process.0.id() as i32);
        let threaded = [SavedGroup {
            path: "worker.service".into(),
            pids: vec![1],
            ..SavedGroup::default()
        }];
        move_back(&"vm", &restored, &threaded, &BTreeMap::from([(1, host)])).unwrap();
        // (A threaded group's `cgroup.procs` cannot be read: the process says where it is.)
        let groups = fs::read_to_string(format!("/proc/{host}/cgroup")).unwrap();
        let v2 = groups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        assert!(v2.ends_with("/restored/worker.service"), "{v2}");
    }

    /// A process the test started, ended on drop.
    struct Started(std::process::Child);

    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `cgroup.procs` of each group made as a plain file, for move_back to write into.
    fn groups_in(dir: &Path, groups: &[SavedGroup]) {
        for group in groups {
            fs::create_dir_all(dir.join(&group.path)).unwrap();
            fs::write(dir.join(&group.path).join("cgroup.procs"), "").unwrap();
        }
    }

    #[test]
    fn a_process_listed_twice_is_refused_before_any_is_moved() {
        let dir = ScratchDir::new("twice");
        let groups = [
            SavedGroup {
                path: "a.service".into(),
                pids: vec![7],
                ..SavedGroup::default()
            },
            SavedGroup {
                path: "b.service".into(),
                pids: vec![9, 7],
                ..SavedGroup::default()
            },
        ];
        groups_in(&dir.0, &groups);
        let restored = BTreeMap::from([(7, Pid::from_raw(1007)), (9, Pid::from_raw(1009))]);
        let e = move_back(&"vm", &dir.0, &groups, &restored).unwrap_err();
        assert!(e.to_string().contains("process 7 more than once"), "{e}");
        let moved = fs::read_to_string(dir.0.join("a.service/cgroup.procs")).unwrap();
        assert_eq!(moved, "", "a process was moved");
    }

    #[test]
    fn a_process_not_of_the_restored_vm_is_not_moved() {
        let dir = ScratchDir::new("stranger");
        let groups = [SavedGroup {
            path: "a.service".into(),
            pids: vec![7, 8],
            ..SavedGroup::default()
        }];
        groups_in(&dir.0, &groups);
        let restored = BTreeMap::from([(7, Pid::from_raw(1007))]);
        move_back(&"vm", &dir.0, &groups, &restored).unwrap();
        let moved = fs::read_to_string(dir.0.join("a.service/cgroup.procs")).unwrap();
        assert_eq!(moved, "1007");
    }

    #[test]
    fn a_setting_no_kernel_wrote_is_refused() {
        for value in ["1\n+cpu".to_owned(), "9".repeat(MAX_VALUE + 1)] {
            let group = SavedGroup {
                path: "x.service".into(),
                settings: vec![("pids.max".into(), value.clone())],
                ..SavedGroup::default()
            };
            let e = check_settings(&"vm", &group).unwrap_err();
            assert!(e.to_string().contains("which feather never saves"), "{e}");
        }
        let fine = SavedGroup {
            settings: vec![("pids.max".into(), "9".repeat(MAX_VALUE))],
            ..SavedGroup::default()
        };
        assert!(check_settings(&"vm", &fine).is_ok());
    }
}

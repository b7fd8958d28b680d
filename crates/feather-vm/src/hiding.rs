//! Keeping every VM out of every state root of the host, not only out of its own: a VM of one
//! root must not read the layers (or reach the sockets) of the VMs of another.
//!
//! The roots are those of the host-wide registry ([`feather_core::roots`]). A VM hides all of
//! them when it starts (step 4 of the recipe); a root registered later is hidden in the VMs
//! already running by a short child that joins each VM's mount namespace (through its init's
//! pidfd) and mounts the empty tmpfs there. The keeper of a starting VM looks at the registry
//! once more after it has recorded its init, so a root registered while it started is never
//! missed: the registering call writes its entry before it reads the VMs' states, the keeper
//! records its init before it reads the registry again, so one of the two sees the other. The
//! registering call therefore waits for no VM that is not running (see `in_running_vm`).
//!
//! Each such tmpfs is mounted in init's mount namespace, and reaches the VM's other mount
//! namespaces by propagation: init makes the VM's tree shared (within the VM only, once its
//! root is assembled), the spawner makes the namespace of a unit with `PrivateTmp=` a slave of it, and
//! the kernel makes the copies in a namespace made in a new user namespace (`--allow-userns`)
//! slaves. No process of the VM can unmount it there, nor make its namespace private first,
//! nor clone the mount beneath it: the VM's filter refuses every mount call (`mount`,
//! `umount2`, `pivot_root`, `fsopen`, `fsconfig`, `fsmount`, `fspick`, `move_mount`,
//! `open_tree`, `open_tree_attr`, `mount_setattr`), in any user namespace.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use feather_core::roots::{Look, Registry};
use feather_core::store::OperationsLock;
use feather_core::{StateRoot, VmDir, VmStatus};
use feather_sys::mountinfo::MountEntry;
use feather_sys::process;

/// Mount points the recipe needs in the VM's tree. A base that lacks one (a bare tree made for
/// a test) gets it in the VM's layer at create time; `diff` does not report those.
pub const MOUNT_POINTS: [&str; 4] = ["proc", "sys", "dev", "run"];

/// The host folders every VM must not see: the state and run folders of every registered
/// root and of `own`, and the registry itself.
pub fn state_folders(own: &StateRoot) -> Vec<PathBuf> {
    state_folders_in(own, &feather_core::roots::host_mounts())
}

/// [`state_folders`], their aliases from the host's mount table `mounts` (a start reads it
/// once, for this and for its layers: issue 15).
pub fn state_folders_in(own: &StateRoot, mounts: &[MountEntry]) -> Vec<PathBuf> {
    state_folders_seen(own, &Look::host(), mounts)
}

/// [`state_folders_in`] as the look at the registry `look` found it (a start's first look,
/// which its last look compares with).
pub fn state_folders_seen(own: &StateRoot, look: &Look, mounts: &[MountEntry]) -> Vec<PathBuf> {
    let mut folders: BTreeSet<PathBuf> = look.state_folders_in(mounts).into_iter().collect();
    folders.extend(feather_core::roots::root_folders_in(own, mounts));
    folders.into_iter().collect()
}

/// [`state_folders`] for a guard that must not miss one (`diff`, `commit`): an unreadable
/// registry is an error, and a root whose folder is missing still counts.
pub fn state_folders_strict(own: &StateRoot) -> feather_core::error::Result<Vec<PathBuf>> {
    feather_core::roots::guarded_folders_strict(own)
}

pub use feather_core::roots::StateFolders;

/// [`StateFolders`] of the host with `own`'s, read strictly.
pub fn state_folders_guarded(own: &StateRoot) -> feather_core::error::Result<StateFolders> {
    feather_core::roots::guarded_strict(own)
}

/// Where the host folder `folder` is in a VM over `base`, if the VM sees it at all: folders
/// under the recipe's own mounts (the VM's private /run, /dev, /proc, /sys) are never the
/// host's, and hiding there would cover the VM's own files.
pub fn inside(base: &Path, folder: &Path) -> Option<PathBuf> {
    let rel = folder.strip_prefix(base).ok()?;
    let first = rel.components().next()?;
    (!MOUNT_POINTS.iter().any(|m| first.as_os_str() == *m)).then(|| rel.to_path_buf())
}

/// The state folders `folders` that a VM over `base` sees (see [`inside`]), relative to its
/// root, each beneath none of the others, in order: what init hides. Beneath a folder hidden
/// (under an empty tmpfs) or not found as one (missing, a link, a file) there is nothing left
/// to hide, so init looks up only these (a registered root's `run` is most often in its
/// folder, and most registered roots are gone). Which folders the VM sees is settled first: a
/// folder that holds the base is outside the VM's view and hides nothing, and those beneath
/// it inside the base must still be hidden (review initfront32 M1: a `--ro` bind of the base
/// showed them).
pub fn to_hide(base: &Path, folders: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen: Vec<PathBuf> = folders.iter().filter_map(|f| inside(base, f)).collect();
    // By components: whatever sorts between a folder and one beneath it is beneath it too.
    seen.sort();
    let mut kept: Vec<PathBuf> = Vec::with_capacity(seen.len());
    for folder in seen {
        if !kept.last().is_some_and(|above| folder.starts_with(above)) {
            kept.push(folder);
        }
    }
    kept
}

/// Why a state folder could not be hidden in a running VM.
#[derive(Debug, thiserror::Error)]
pub enum HidingError {
    #[error(transparent)]
    State(#[from] feather_core::Error),
    #[error(
        "an operation on it (start, stop, checkpoint…) was still under way after {} s",
        OPERATION_PATIENCE.as_secs()
    )]
    Busy,
    #[error(
        "an operation on it, {}, was still stopped (SIGSTOP or Ctrl-Z) after {} s: let it go \
         on (`kill -CONT {}`) and end first",
        .0.named(),
        OPERATION_PATIENCE.as_secs(),
        .0.pid
    )]
    HeldByStopped(feather_core::lock_holder::Holder),
    #[error(
        "its state names pid {pid} as its init, which is not in the VM's group {} (a record \
         feather did not write): nothing was mounted there; check who wrote its state.json",
        .group.display()
    )]
    NotItsInit { pid: i32, group: PathBuf },
    #[error("cannot read its mounts")]
    Mounts(#[source] std::io::Error),
    #[error("cannot mount the empty tmpfs on {} in it", listed(folders))]
    Hide {
        /// The folders as the VM sees them.
        folders: Vec<PathBuf>,
        #[source]
        source: feather_sys::SysError,
    },
}

impl HidingError {
    /// Whether it says that the VM's init is ending: the kernel gives `ENOENT` for the mount
    /// table of a process that let go of its filesystem root and `EINVAL` for one that let go
    /// of its namespaces, both of which `exit` does before the process becomes a zombie (and
    /// letting go of a VM's mount tree, its overlays synced, takes a while). Such a process
    /// never has a mount namespace again: there is nothing to hide in.
    fn says_the_init_is_ending(&self) -> bool {
        use nix::errno::Errno;
        let ending = [Errno::ENOENT as i32, Errno::EINVAL as i32];
        matches!(self, HidingError::Mounts(e) if e.raw_os_error().is_some_and(|n| ending.contains(&n)))
    }
}

/// `folders`, for a message.
fn listed(folders: &[PathBuf]) -> String {
    let shown: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
    shown.join(", ")
}

/// Hides `new`'s folders in every running VM of every registered root. Returns one warning
/// per VM where that failed.
pub fn in_running_vms(new: &StateRoot) -> Vec<String> {
    // With their aliases: the same folders at other paths (a bind mount's source).
    let folders = feather_core::roots::root_folders(new);
    // Said once, as the host's fault, not once for every root.
    if let Err(why) = feather_core::strict_modes::users_mount_points() {
        return vec![format!(
            "did not look for running VMs in any state root to hide state root {} in them: {}",
            new.dir().display(),
            feather_core::error::causes(&why)
        )];
    }
    let mut warnings = Vec::new();
    let mut vms = Vec::new();
    for root in Registry::host().roots() {
        // Its VMs' records are trusted below (a pid whose mount namespace root joins): only
        // in a root no user but root can change (review rootscheck31 H4).
        if let Err(why) = feather_core::strict_modes::check_state_root(root.dir()) {
            warnings.push(format!(
                "did not look for running VMs in state root {} to hide state root {} in them: \
                 {}",
                root.dir().display(),
                new.dir().display(),
                feather_core::error::causes(&why)
            ));
            continue;
        }
        let dir = root.dir().to_path_buf();
        vms.extend(
            root.list()
                .unwrap_or_default()
                .into_iter()
                .map(|vm| (dir.clone(), vm)),
        );
    }
    let outcomes = in_turn(vms, OPERATION_PATIENCE, |(_, vm)| {
        in_running_vm(vm, &folders)
    });
    for ((root, vm), outcome) in outcomes {
        warnings.extend(warning(new, &root, &vm, outcome));
    }
    // The wait above may have taken up to OPERATION_PATIENCE: what this command checks after
    // it (feather-oci's runtime roots, to hide `new` in their containers) sees a folder on the
    // way of an fstab line users may mount as it is now.
    feather_sys::fstab::follow_lines_again();
    warnings
}

/// Tries `hide` on each of `vms` in turn, round after round, until it has done with every one
/// or `patience` has passed: a VM whose operation lock is taken (`Busy`, `HeldByStopped`) is
/// tried again in the next round. Every VM whose lock is free is hidden in at once, in the
/// first round; the busy ones share the one patience, each tried every round, so one long
/// operation does not use up the patience of the VMs after it; and a holder stopped for a
/// moment (Ctrl-Z, then `bg`) is waited for as a busy one is. Returns each VM with the outcome
/// of its last try.
fn in_turn<T>(
    vms: Vec<T>,
    patience: std::time::Duration,
    mut hide: impl FnMut(&T) -> Result<(), HidingError>,
) -> Vec<(T, Result<(), HidingError>)> {
    let deadline = std::time::Instant::now() + patience;
    let mut done = Vec::with_capacity(vms.len());
    let mut pending = vms;
    loop {
        let mut still_held = Vec::new();
        for vm in pending {
            match hide(&vm) {
                outcome @ Err(HidingError::Busy | HidingError::HeldByStopped(_)) => {
                    still_held.push((vm, outcome))
                }
                outcome => done.push((vm, outcome)),
            }
        }
        if still_held.is_empty() || std::time::Instant::now() >= deadline {
            done.extend(still_held);
            return done;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        pending = still_held.into_iter().map(|(vm, _)| vm).collect();
    }
}

/// The warning for a VM `vm` of `root` where hiding `new` had `outcome`, if it failed.
fn warning(
    new: &StateRoot,
    root: &Path,
    vm: &VmDir,
    outcome: Result<(), HidingError>,
) -> Option<String> {
    let why = outcome.err()?;
    Some(format!(
        "cannot hide state root {} from running VM {} (of {}): {}; stop and start that VM to \
         hide it",
        new.dir().display(),
        vm.name(),
        root.display(),
        feather_core::error::causes(&why)
    ))
}

/// How long hiding a new root waits, in all, for the operations under way on the host's
/// running VMs (a checkpoint of a large VM takes seconds).
const OPERATION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Hides `folders` in `vm` if it is running and no operation is under way on it (`Busy` or
/// `HeldByStopped` if one is: [`in_turn`] tries again); a VM that is not running has nothing
/// to hide in.
fn in_running_vm(vm: &VmDir, folders: &[PathBuf]) -> Result<(), HidingError> {
    // Its state first, without its operation lock: a VM that is not running (created,
    // stopped, checkpointed, crashed, or its folder gone) is passed over, whatever holds that
    // lock — a start, a restore, an rm or a commit of a stopped VM, which can take long and
    // has nothing to hide in. A start or restore that makes it run after this read is not
    // missed: its keeper records the VM running before its last look at the registry
    // (`Keeper::boot`, `Keeper::restore`; a VM received by a migration looks again once its
    // record has landed), and this root's entry was written before this read. This read not
    // seeing the record, the record came after the entry, and the keeper's look after both
    // finds the entry and hides the root itself — the same order that covers a throw-away
    // `run`, which takes no operation lock at all.
    if !vm
        .read_state()
        .is_ok_and(|state| state.status == VmStatus::Running)
    {
        return Ok(());
    }
    // A running VM: an operation under way finishes first, and none starts while the tmpfs is
    // mounted: a hiding mount made while CRIU dumps the VM would go into its images, which
    // leave out only the hiding mounts the dump saw (snapshot::dump).
    let _op = match vm.try_lock_operations() {
        Ok(OperationsLock::Taken(lock)) => lock,
        Ok(OperationsLock::Busy) => return Err(HidingError::Busy),
        Ok(OperationsLock::HeldByStopped(holder)) => {
            return Err(HidingError::HeldByStopped(holder))
        }
        // Its folder went away meanwhile: a VM being removed has nothing to hide in.
        Err(feather_core::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(())
        }
        Err(e) => return Err(e.into()),
    };
    let Ok(state) = vm.read_state() else {
        return Ok(());
    };
    let (VmStatus::Running, Some(pid)) = (state.status, state.init_pid) else {
        return Ok(());
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let Ok(pidfd) = process::pidfd_open(pid) else {
        return Ok(());
    };
    // The pidfd holds the process whatever happens to the pid from here; the start time
    // proves it is the init the state names, not a stranger that reused its pid.
    if process::start_ticks(pid) != state.init_start_ticks || state.init_start_ticks.is_none() {
        return Ok(());
    }
    let config = vm.read_config()?;
    // The init feather started is in the VM's group, where only root puts a process: a record
    // naming any other (host pid 1, forged) would have the tmpfs mounted in that process's
    // namespace, the host's own. The group's members are read in the folders feather made
    // the group in, not from the process's `/proc/PID/cgroup` (relative to its cgroup
    // namespace, which differs where the cgroupfs mount's root is not the hierarchy's).
    let group = crate::vm_group::cgroup_path(&config);
    if !is_one_name(&config.id) || !group.members().contains(&pid) {
        if process::start_ticks(pid) != state.init_start_ticks {
            return Ok(());
        }
        return Err(HidingError::NotItsInit {
            pid: pid.as_raw(),
            group: group.relative().to_path_buf(),
        });
    }
    let base = config.base;
    // A VM that stopped meanwhile (its init gone, a zombie not yet reaped, or exiting) has
    // nothing left to hide anything in.
    in_vm(&pidfd, pid, &base, folders).or_else(|why| {
        let still_there =
            process::start_ticks(pid) == state.init_start_ticks && process::is_alive(pid);
        if still_there && !why.says_the_init_is_ending() {
            Err(why)
        } else {
            Ok(())
        }
    })
}

/// Whether a VM's id is one plain name, as feather makes it: its group is then one of
/// `feather/`'s children, never `feather/` itself or above.
fn is_one_name(id: &str) -> bool {
    let mut parts = Path::new(id).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    )
}

/// Hides in the VM whose init is `pid` (held by `pidfd`) those of `folders` it sees and that
/// are not hidden already (a tmpfs mounted on them, as the kernel's mountinfo of init says).
pub fn in_vm(
    pidfd: &impl AsFd,
    pid: nix::unistd::Pid,
    base: &Path,
    folders: &[PathBuf],
) -> Result<(), HidingError> {
    // Nothing to hide (a start during which no root was registered, the common case): the
    // VM's mount table, ~30 mounts for the kernel to print, is not read.
    if folders.is_empty() {
        return Ok(());
    }
    // Bytes: a VM with a host filesystem layered at a path that is not UTF-8 has a mount
    // table that is not text.
    let mountinfo =
        feather_sys::mountinfo::read_table(Path::new(&format!("/proc/{pid}/mountinfo")))
            .map_err(HidingError::Mounts)?;
    let hidden: Vec<PathBuf> = feather_sys::mountinfo::parse(&mountinfo)
        .into_iter()
        .filter(|m| m.fs_type == "tmpfs")
        .map(|m| m.mount_point)
        .collect();
    let rels: Vec<PathBuf> = folders
        .iter()
        .filter_map(|folder| inside(base, folder))
        .filter(|rel| !hidden.contains(&Path::new("/").join(rel)))
        .collect();
    if rels.is_empty() {
        return Ok(());
    }
    process::hide_in_mount_namespace_of(pidfd, &rels).map_err(|source| HidingError::Hide {
        folders: rels.iter().map(|rel| Path::new("/").join(rel)).collect(),
        source,
    })
}

/// Whether a mount of a VM, as its init's mountinfo says, is one of the hiding tmpfs: a VM
/// cannot mount, and the recipe's own tmpfs lie at or under /run, /dev, /proc and /sys.
pub fn is_hiding_mount(mount: &feather_sys::mountinfo::MountEntry) -> bool {
    mount.fs_type == "tmpfs" && inside(Path::new("/"), &mount.mount_point).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use feather_core::lock_holder::Holder;

    /// A fake VM for [`in_turn`]: taken for its first `held_for` tries (stopped or not), then
    /// hidden in.
    struct Held {
        name: &'static str,
        held_for: usize,
        stopped: bool,
    }

    /// A VM's name, and whether it was hidden in.
    type Try = (&'static str, bool);

    /// Runs [`in_turn`] over `vms` and returns the tries in order (name, hidden) and the last
    /// outcome of each, by name.
    fn tries(vms: Vec<Held>, patience: std::time::Duration) -> (Vec<Try>, Vec<Try>) {
        let log = std::cell::RefCell::new(Vec::new());
        let outcomes = in_turn(vms, patience, |vm| {
            let before = log.borrow().iter().filter(|(n, _)| *n == vm.name).count();
            let hidden = before >= vm.held_for;
            log.borrow_mut().push((vm.name, hidden));
            match (hidden, vm.stopped) {
                (true, _) => Ok(()),
                (false, false) => Err(HidingError::Busy),
                (false, true) => Err(HidingError::HeldByStopped(Holder {
                    pid: 1,
                    command: "x".into(),
                    stopped: true,
                })),
            }
        });
        let last = outcomes
            .into_iter()
            .map(|(vm, outcome)| (vm.name, outcome.is_ok()))
            .collect();
        (log.into_inner(), last)
    }

    /// The VMs whose lock is free are hidden in before any busy one is waited for; the busy
    /// ones are tried in turn, so one held long does not keep the others waiting; a holder
    /// stopped for a while is tried again, not given up on.
    #[test]
    fn the_free_vms_first_then_every_busy_one_in_turn_until_its_lock_is_free() {
        let vms = vec![
            Held {
                name: "long",
                held_for: 6,
                stopped: false,
            },
            Held {
                name: "stopped",
                held_for: 2,
                stopped: true,
            },
            Held {
                name: "free",
                held_for: 0,
                stopped: false,
            },
        ];
        let (log, last) = tries(vms, std::time::Duration::from_secs(600));
        let first = |entry: (&str, bool)| log.iter().position(|e| *e == entry).unwrap();
        assert_eq!(
            log[..3],
            [("long", false), ("stopped", false), ("free", true)],
            "{log:?}"
        );
        assert!(first(("stopped", true)) < first(("long", true)), "{log:?}");
        assert!(last.iter().all(|(_, hidden)| *hidden), "{last:?}");
    }

    /// Once the patience has passed, each VM still held keeps the outcome of its last try: a
    /// warning names it.
    #[test]
    fn a_vm_still_held_when_the_patience_has_passed_is_named() {
        let vms = vec![
            Held {
                name: "long",
                held_for: usize::MAX,
                stopped: false,
            },
            Held {
                name: "stopped",
                held_for: usize::MAX,
                stopped: true,
            },
            Held {
                name: "free",
                held_for: 0,
                stopped: false,
            },
        ];
        let (_, mut last) = tries(vms, std::time::Duration::ZERO);
        last.sort();
        assert_eq!(last, [("free", true), ("long", false), ("stopped", false)]);
    }

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn only_the_outermost_state_folders_are_looked_up() {
        let folders = paths(&[
            "/tmp/a/run",
            "/var/lib/feather",
            "/tmp/a",
            "/tmp/a-b/run",
            "/tmp/a-b",
            "/tmp/ab/c",
            "/tmp/a/run/deeper",
            "/tmp/abc/run",
            "/run/feather",
        ]);
        let expected = paths(&[
            "tmp/a",
            "tmp/a-b",
            "tmp/ab/c",
            "tmp/abc/run",
            "var/lib/feather",
        ]);
        assert_eq!(to_hide(Path::new("/"), &folders), expected);
    }

    /// A root registered at a folder that holds the VM's base, with another root's folder
    /// inside the base: the outer one is outside the VM's view, and the inner one must still be
    /// hidden (a `--ro` bind of the base, which bypasses the overlay's hiding layer, showed
    /// it: review initfront32 M1).
    #[test]
    fn a_state_folder_in_the_base_is_hidden_beneath_one_that_holds_the_base() {
        let folders = paths(&["/srv/x", "/srv/x/tree/data/c", "/srv/x/tree/data/c/run"]);
        let base = Path::new("/srv/x/tree");
        assert_eq!(to_hide(base, &folders), paths(&["data/c"]));
        assert_eq!(
            to_hide(Path::new("/srv/x"), &folders),
            paths(&["tree/data/c"])
        );
    }

    /// A VM's group is `feather/ID`: an id that is not one plain name (a forged record's)
    /// would name `feather/` itself, a group above it, or another VM's below it.
    #[test]
    fn only_a_plain_name_is_an_id_whose_group_is_its_own() {
        for id in ["web", "web-1.a_b", "web/"] {
            assert!(is_one_name(id), "{id:?}");
        }
        for id in ["", ".", "..", "../web", "web/..", "a/b", "/web", "./web"] {
            assert!(!is_one_name(id), "{id:?}");
        }
    }

    /// What the kernel says of the mount table of a process that let go of its namespaces
    /// (here a zombie; a VM's init being torn down is one for a while before it is a zombie)
    /// is taken for an ending VM, not for a failure to warn about.
    #[test]
    fn the_mounts_of_a_process_past_its_namespaces_say_it_is_ending() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let pidfd = process::pidfd_open(pid).unwrap();
        while process::state(pid) != Some('Z') {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let folders = [PathBuf::from("/var/lib/feather-test-hiding")];
        let failed = in_vm(&pidfd, pid, Path::new("/"), &folders);
        let _ = child.wait();
        let why = failed.expect_err("a zombie has no mount table to read");
        assert!(why.says_the_init_is_ending(), "{why:?}");
        let other = HidingError::Mounts(std::io::Error::from_raw_os_error(
            nix::errno::Errno::EACCES as i32,
        ));
        assert!(!other.says_the_init_is_ending());
    }

    /// A hiding that failed after a start or restore is only in the keeper's log: the line
    /// says which folders the VM may still read.
    #[test]
    fn a_failed_hiding_names_the_folders_as_the_vm_sees_them() {
        let failed = HidingError::Hide {
            folders: vec!["/var/lib/feather".into(), "/srv/roots/b/run".into()],
            source: feather_sys::SysError {
                op: "hide in mount namespace",
                target: "init".into(),
                errno: nix::errno::Errno::ENOMEM,
            },
        };
        let said = feather_core::error::causes(&failed);
        assert!(
            said.starts_with(
                "cannot mount the empty tmpfs on /var/lib/feather, /srv/roots/b/run in it: hide \
                 in mount namespace init: ENOMEM"
            ),
            "{said}"
        );
    }

    #[test]
    fn a_folder_is_hidden_where_the_vm_sees_the_hosts_tree_only() {
        let root = Path::new("/");
        assert_eq!(
            inside(root, Path::new("/var/lib/feather")),
            Some(PathBuf::from("var/lib/feather"))
        );
        // The VM's own /run, /dev, /proc and /sys: nothing there is the host's.
        assert_eq!(inside(root, Path::new("/run/feather")), None);
        assert_eq!(inside(root, Path::new("/dev/shm/x")), None);
        assert_eq!(inside(root, Path::new("/")), None);
        // A VM over another base sees only what lies under it.
        let base = Path::new("/srv/base");
        assert_eq!(inside(base, Path::new("/var/lib/feather")), None);
        assert_eq!(
            inside(base, Path::new("/srv/base/tmp/root")),
            Some(PathBuf::from("tmp/root"))
        );
    }
}

//! How a pooled VM's keeper sees its state root removed by hand (`rm -rf ROOT`, or the folder
//! moved away) at once, not at its idle time: feather has no command that removes a root, and
//! with the pool on by default every root that ran `run --rm` holds a pooled VM (docs/design.md,
//! "The pool").
//!
//! `rm -rf` removes a folder's contents before the folder, in the order it reads them: the
//! root's own folder goes last, and whichever of its subtrees comes first may be large. So the
//! watch is on what goes early whatever that order: the root's folder itself (moved, or
//! removed), and the VM's own things spread over it — its folder (each of its files removed),
//! its run folder (its control socket), and its pool entry. Any event on them is a reason to
//! look ([`RootWatch::gone`]); none of them changes while the VM waits in the pool unclaimed.

use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use feather_core::{StateRoot, VmDir};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// What a pooled VM's keeper watches for its root's removal.
pub struct RootWatch {
    /// `None` where no inotify instance could be had (`fs.inotify.max_user_instances`, 128 by
    /// default, is per user, and every pooled keeper is root's): then the keeper looks every
    /// [`LOOK_EVERY`] instead.
    inotify: Option<Inotify>,
    /// The root's folder as the watch began, held open: its link count is 0 once it is removed,
    /// whatever is at its path then.
    folder: std::fs::File,
    root: PathBuf,
    /// The root folder's device and inode as the watch began: another folder at its path (a
    /// root removed and made again) is not this VM's root.
    identity: Identity,
    /// What must be there while the VM waits in the pool: its folder, its control socket, its
    /// pool entry.
    kept: Vec<PathBuf>,
    /// When a watch without inotify looks next.
    next_look: Cell<Instant>,
}

/// Test-only ([`crate::test_hooks`]): set in a keeper's environment, it gets no inotify
/// instance, as when the per-user limit is reached.
pub const NO_INOTIFY: &str = "FEATHER_TEST_NO_INOTIFY";

/// A folder's device and inode.
pub type Identity = (u64, u64);

/// How often a keeper without inotify looks at its root: an `fstat` and a `stat` or four, a
/// few microseconds, and a removed root's VM then goes within this rather than at its idle time.
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

/// How long a keeper that saw its root going waits for the removal to end before it tears its
/// VM down: its teardown must not make or rename anything in a folder `rm -rf` is removing
/// (the `rm` would fail, "Directory not empty"). A removal that stops short leaves the root
/// there — the namespaces made ahead for the root's network are mounts in its folder
/// (docs/network.md), which `rm -rf` cannot remove while the network is up — and the keeper
/// goes on after this, then takes the network down ([`crate::keeper`]), so that the next
/// `rm -rf` succeeds.
const REMOVAL_PATIENCE: Duration = Duration::from_secs(2);

/// How often a keeper without inotify looks whether the removal it saw begin is over.
const LOOK_WHILE_REMOVED: Duration = Duration::from_millis(10);

impl RootWatch {
    /// The watch for pooled VM `vm` of `root`; `None` where its root's folder cannot be opened
    /// (removed already: the VM then goes at its idle time, as its folder's absence is looked
    /// for then too). Where inotify cannot be had, a watch that looks every [`LOOK_EVERY`];
    /// either way said once on stderr (the keeper's log).
    pub fn new(root: &StateRoot, vm: &VmDir) -> Option<RootWatch> {
        let said = |why: String| {
            eprintln!("feather keeper {}: {why}", vm.name());
        };
        let folder = std::fs::File::open(root.dir())
            .inspect_err(|e| {
                said(format!(
                    "cannot open its root's folder {} to watch it ({e}); the VM goes at its \
                     idle time",
                    root.dir().display()
                ))
            })
            .ok()?;
        let identity = folder.metadata().ok().map(|m| (m.dev(), m.ino()))?;
        let entry = crate::pooled::entry(root, vm.name());
        let inotify = watching(root, vm, &entry)
            .inspect_err(|e| {
                said(format!(
                    "no inotify watch on its root ({e}; `fs.inotify.max_user_instances`); it \
                     looks every {}s whether the root was removed instead",
                    LOOK_EVERY.as_secs()
                ))
            })
            .ok();
        Some(RootWatch {
            inotify,
            folder,
            root: root.dir().to_owned(),
            identity,
            kept: vec![vm.path().to_owned(), vm.control_socket(), entry],
            next_look: Cell::new(Instant::now() + LOOK_EVERY),
        })
    }

    /// Reads what the kernel reported (so that the descriptor is quiet again) and says whether
    /// the root is going: its folder moved, removed or replaced, or any of the VM's things in
    /// it gone.
    pub fn gone(&self) -> bool {
        if let Some(inotify) = &self.inotify {
            while matches!(inotify.read_events(), Ok(events) if !events.is_empty()) {}
        }
        self.next_look.set(Instant::now() + LOOK_EVERY);
        let removed = self.folder.metadata().is_ok_and(|m| m.nlink() == 0);
        removed || !is_at(&self.root, self.identity) || self.kept.iter().any(|p| !exists(p))
    }

    /// When to look without an event: `None` with inotify (its descriptor says when).
    pub fn look_at(&self) -> Option<Instant> {
        self.inotify.is_none().then(|| self.next_look.get())
    }

    /// Whether it is time to look ([`Self::look_at`]).
    pub fn time_to_look(&self) -> bool {
        self.look_at().is_some_and(|at| Instant::now() >= at)
    }

    /// The root folder's identity as the watch began.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// Waits (up to [`REMOVAL_PATIENCE`]) until the root's folder is gone from its path, so that
    /// the teardown that follows makes nothing in a folder being removed: woken by the watch's
    /// events, looking again at each; without inotify, every [`LOOK_WHILE_REMOVED`]. Whether
    /// it saw the root go (not: its patience ran out, no event having come).
    pub fn await_removal(&self) -> bool {
        self.await_removal_waking(|| {})
    }

    /// [`Self::await_removal`], calling `before_wait` each time before it waits (a test's
    /// removal, made while the keeper waits).
    fn await_removal_waking(&self, mut before_wait: impl FnMut()) -> bool {
        let woken = self
            .inotify
            .as_ref()
            .filter(|inotify| self.watch_parent(inotify));
        let deadline = Instant::now() + REMOVAL_PATIENCE;
        while is_at(&self.root, self.identity) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            before_wait();
            match woken {
                Some(inotify) => {
                    let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
                    let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
                    if poll(&mut fds, timeout) == Ok(0) {
                        return false;
                    }
                    while matches!(inotify.read_events(), Ok(events) if !events.is_empty()) {}
                }
                None => std::thread::sleep(LOOK_WHILE_REMOVED.min(left)),
            }
        }
        true
    }

    /// Adds the root's parent folder to the watch, for the root's name removed or moved from it:
    /// the root's own `IN_DELETE_SELF` comes only once no one holds the folder open, and this
    /// watch holds it ([`RootWatch::folder`]), so only its parent says when `rm -rf` removed it
    /// (review pool29 H1: the wait ran out its patience on every removal). Added only now, so
    /// that the other roots of a parent such as `/var/lib` wake no pooled keeper meanwhile.
    /// Whether it was added (else the caller looks every [`LOOK_WHILE_REMOVED`]).
    fn watch_parent(&self, inotify: &Inotify) -> bool {
        let Some(parent) = self.root.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return false;
        };
        let flags =
            AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_ONLYDIR;
        inotify.add_watch(parent, flags).is_ok()
    }

    /// The inotify descriptor to poll, if there is one.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(AsFd::as_fd)
    }
}

/// An inotify instance watching what goes early in a removal of `root` (see the module's
/// documentation).
fn watching(root: &StateRoot, vm: &VmDir, entry: &Path) -> nix::Result<Inotify> {
    if crate::test_hooks::set(NO_INOTIFY).is_some() {
        return Err(nix::errno::Errno::EMFILE);
    }
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    let itself = AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF;
    let contents = itself | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM;
    let watched = [
        (root.dir(), itself),
        (vm.path(), contents),
        (vm.run_dir(), contents),
        (entry, itself),
    ];
    for (path, flags) in watched {
        inotify.add_watch(path, flags)?;
    }
    Ok(inotify)
}

/// Whether the folder at `path` is the one of `identity` (the root a watch began on), as a
/// removed root's path may hold another folder since (a root made again there).
pub fn is_at(path: &Path, identity: Identity) -> bool {
    std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == identity)
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of the test's, removed whatever its outcome.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The keeper waits for its root's folder itself to go, the last step of `rm -rf` (the VM's
    /// things in it are gone already), while its watch holds that folder open: the removal
    /// wakes it (the root's parent's event), and it says the root went. Before, only the
    /// root's `IN_DELETE_SELF` was watched, which the held folder defers: it waited out its
    /// patience and said so.
    #[test]
    fn the_wait_for_a_removal_is_woken_by_the_roots_folder_going() {
        let scratch = Scratch(feather_testkit::unique_dir("root-watch", "removal"));
        let root = StateRoot::new(Some(scratch.0.join("root")));
        let vm = root.vm(&"pooled".parse().unwrap());
        let entry = crate::pooled::entry(&root, vm.name());
        for folder in [vm.path(), vm.run_dir(), entry.parent().unwrap()] {
            std::fs::create_dir_all(folder).unwrap();
        }
        std::fs::write(&entry, "").unwrap();
        let watch = RootWatch::new(&root, &vm).unwrap();
        assert!(watch.inotify.is_some(), "no inotify instance for the test");
        for inside in std::fs::read_dir(root.dir()).unwrap().flatten() {
            std::fs::remove_dir_all(inside.path()).unwrap();
        }
        assert!(watch.gone(), "the VM's things removed are not seen");
        let mut removed = false;
        let went = watch.await_removal_waking(|| {
            if !removed {
                std::fs::remove_dir(root.dir()).unwrap();
                removed = true;
            }
        });
        assert!(
            went,
            "the wait ran out its patience: the root's removal did not wake it"
        );
    }
}

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

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use feather_core::{StateRoot, VmDir};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// What a pooled VM's keeper watches for its root's removal.
pub struct RootWatch {
    inotify: Inotify,
    root: PathBuf,
    /// The root folder's device and inode as the watch began: another folder at its path (a
    /// root removed and made again) is not this VM's root.
    identity: (u64, u64),
    /// What must be there while the VM waits in the pool: its folder, its control socket, its
    /// pool entry.
    kept: Vec<PathBuf>,
}

/// How long a keeper that saw its root going waits for the removal to end before it tears its
/// VM down: its teardown must not make or rename anything in a folder `rm -rf` is removing
/// (the `rm` would fail, "Directory not empty"). A removal that stops short leaves the root
/// there — the namespaces made ahead for the root's network are mounts in its folder
/// (docs/network.md), which `rm -rf` cannot remove while the network is up — and the keeper
/// goes on after this, then takes the network down ([`crate::keeper`]), so that the next
/// `rm -rf` succeeds.
const REMOVAL_PATIENCE: Duration = Duration::from_secs(2);

impl RootWatch {
    /// The watch for pooled VM `vm` of `root`; `None` where inotify cannot be had (the VM then
    /// goes at its idle time, as its folder's absence is looked for then too).
    pub fn new(root: &StateRoot, vm: &VmDir) -> Option<RootWatch> {
        let identity = identity(root.dir())?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let itself = AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF;
        let contents = itself | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM;
        let entry = crate::pooled::entry(root, vm.name());
        let watched = [
            (root.dir(), itself),
            (vm.path(), contents),
            (vm.run_dir(), contents),
            (entry.as_path(), itself),
        ];
        for (path, flags) in watched {
            inotify.add_watch(path, flags).ok()?;
        }
        Some(RootWatch {
            inotify,
            root: root.dir().to_owned(),
            identity,
            kept: vec![vm.path().to_owned(), vm.control_socket(), entry],
        })
    }

    /// Reads what the kernel reported (so that the descriptor is quiet again) and says whether
    /// the root is going: its folder moved, removed or replaced, or any of the VM's things in
    /// it gone.
    pub fn gone(&self) -> bool {
        while matches!(self.inotify.read_events(), Ok(events) if !events.is_empty()) {}
        identity(&self.root) != Some(self.identity) || self.kept.iter().any(|p| !exists(p))
    }

    /// Waits (up to [`REMOVAL_PATIENCE`]) until the root's folder is gone from its path, so that
    /// the teardown that follows makes nothing in a folder being removed.
    pub fn await_removal(&self) {
        let deadline = Instant::now() + REMOVAL_PATIENCE;
        while identity(&self.root) == Some(self.identity) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl AsFd for RootWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

/// A folder's device and inode, if it is there.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

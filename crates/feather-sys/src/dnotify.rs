//! Folders watched through dnotify (`fcntl(F_NOTIFY)`): the kernel signals a thread when an
//! entry of a folder is made, removed, renamed or written.
//!
//! Why not inotify: every inotify instance counts against its user's
//! `fs.inotify.max_user_instances` (128 by default) across the whole host, and a process that
//! holds one for as long as it runs — a keeper per running VM, as root — takes them from every
//! other root process on the host (systemd, udev, `criu check`). dnotify has no instance: its
//! marks belong to one group the kernel makes at boot, and each watch is an open descriptor of
//! the folder, counted against the process's own `RLIMIT_NOFILE` only. What it lacks: nothing
//! says a file was closed after writing (each write is told as it happens, so a reader waits
//! for the writes to stop), nothing names the entry, and a folder's own removal or renaming is
//! told only to a watch on the folder above it.
//!
//! The signal is SIGURG, whose default action is to ignore it. F_NOTIFY makes the whole process
//! the owner until F_SETOWN_EX narrows it to the watching thread; a change in between is
//! signalled to the process, and the kernel weighs such a signal against the mask of the
//! process's main thread as it sends it: where that thread does not block SIGURG (a keeper's
//! does not, but for the instants it spawns a thread with every signal blocked: the stdio
//! relay, the network's helpers), the signal, ignored by default, is dropped there and then: no
//! thread is woken, no call interrupted, and the look that follows the arming sees the change.
//! Were the main thread to block it, the signal would wait for the process and wake one of its
//! threads that does not (an `epoll_wait` there returning EINTR); it is left unblocked there
//! for that reason, and because a keeper's main thread clones the VM's init, which would carry
//! the block into the VM. The watching thread blocks it and reads it from a signalfd
//! ([`Signals`]), which also takes one waiting for the process (one extra look). Nothing else
//! sends feather's processes SIGURG: the kernel sends it for a socket's out-of-band data only
//! to the socket's owner, and no feather socket has one.

use std::fs::Metadata;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

use crate::{raw, Context, Result};

/// The signal changes are told by.
const SIGNAL: Signal = Signal::SIGURG;

/// uapi/linux/fcntl.h.
const DN_MODIFY: i32 = 0x2;
const DN_CREATE: i32 = 0x4;
const DN_DELETE: i32 = 0x8;
const DN_RENAME: i32 = 0x10;
const DN_MULTISHOT: i32 = 0x8000_0000_u32 as i32;

/// Which changes of a folder are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Changes(i32);

impl Changes {
    /// An entry made, removed, renamed (in, out or within), or a file in it written.
    pub const ENTRIES_AND_WRITES: Changes = Changes(DN_CREATE | DN_DELETE | DN_RENAME | DN_MODIFY);
    /// An entry made, removed or renamed: for the folder above one watched, whose own removal
    /// or renaming only its parent is told of.
    pub const ENTRIES: Changes = Changes(DN_CREATE | DN_DELETE | DN_RENAME);
}

/// The calling thread's way of being told: SIGURG blocked in it and read from a signalfd that
/// becomes readable when a watched folder changes. It stays on that thread (not `Send`): the
/// signalfd reads only signals sent to the thread that reads it, and the watches signal the
/// thread that made it.
///
/// ```compile_fail
/// fn sent<T: Send>() {}
/// sent::<feather_sys::dnotify::Signals>();
/// ```
pub struct Signals {
    fd: SignalFd,
    thread: Pid,
    _this_thread: PhantomData<*const ()>,
}

impl Signals {
    /// Blocks SIGURG in the calling thread (already so in a thread that blocks all) and opens
    /// the descriptor it is read from. Folders watched through it signal this thread.
    pub fn here() -> Result<Signals> {
        let mut set = SigSet::empty();
        set.add(SIGNAL);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .ctx("pthread_sigmask", "SIGURG")?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .ctx("signalfd", "SIGURG")?;
        Ok(Signals {
            fd,
            thread: nix::unistd::gettid(),
            _this_thread: PhantomData,
        })
    }

    /// Reads every signal waiting; whether there was any (a change since the last call).
    pub fn taken(&self) -> bool {
        let mut any = false;
        while let Ok(Some(_)) = self.fd.read_signal() {
            any = true;
        }
        any
    }

    /// Watches `folder` (through links) for `changes`, told to the thread that made `self`,
    /// for as long as the returned value lives.
    pub fn watch(&self, folder: &Path, changes: Changes) -> Result<Watched> {
        let fd: OwnedFd = nix::fcntl::open(
            folder,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx("open", folder.display())?;
        let own = nix::sys::stat::fstat(&fd).ctx("fstat", folder.display())?;
        raw::notify_folder_changes(
            fd.as_fd(),
            changes.0 | DN_MULTISHOT,
            SIGNAL as i32,
            self.thread.as_raw(),
        )
        .ctx("fcntl F_NOTIFY", folder.display())?;
        Ok(Watched {
            _fd: fd,
            device: own.st_dev,
            inode: own.st_ino,
            changes,
        })
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A folder watched; the watch ends when this is dropped (its descriptor closed).
pub struct Watched {
    _fd: OwnedFd,
    device: u64,
    inode: u64,
    changes: Changes,
}

impl Watched {
    /// Whether this watches the folder `meta` describes, for `changes`.
    pub fn is(&self, meta: &Metadata, changes: Changes) -> bool {
        (self.device, self.inode) == (meta.dev(), meta.ino()) && self.changes == changes
    }
}

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
//! The signal is SIGURG, whose default action is to ignore it. F_NOTIFY makes the arming
//! thread the owner as its process (the kernel keeps the thread's own pid, taken for the
//! whole process) until F_SETOWN_EX narrows it to the watching thread alone. A change in
//! between is sent to the process, and the kernel weighs it as it sends it against the arming
//! thread's mask only: were SIGURG blocked there, as it is in the watching thread, the signal
//! would wait for the process and wake one of its threads that does not block it (a keeper's
//! main thread: its `epoll_wait`, or a socket read with a timeout, returning EINTR). So
//! [`Signals::watch`] lets SIGURG in to the arming thread for those two calls: a change
//! between them is ignored as it is sent, dropped there and then: no thread woken, no call
//! interrupted. A signal waiting for the thread by then (a change of a folder it already
//! watches) is taken and ignored too; the caller looks at its folders after it arms, which
//! sees every such change. Otherwise the watching thread blocks SIGURG and reads it from a
//! signalfd ([`Signals`]), which also takes one waiting for the process (one extra look).
//! Nothing else sends feather's processes SIGURG: the kernel sends it for a socket's
//! out-of-band data only to the socket's owner, and no feather socket has one.

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

/// The set of SIGURG alone.
fn only_signal() -> SigSet {
    let mut set = SigSet::empty();
    set.add(SIGNAL);
    set
}

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
        let set = only_signal();
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
    /// for as long as the returned value lives. Called on that thread, which looks at its
    /// folders afterwards: a change of one it watches already, made while this arms, may go
    /// untold (see the module's documentation).
    pub fn watch(&self, folder: &Path, changes: Changes) -> Result<Watched> {
        let fd: OwnedFd = nix::fcntl::open(
            folder,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx("open", folder.display())?;
        let own = nix::sys::stat::fstat(&fd).ctx("fstat", folder.display())?;
        // SIGURG let in to this thread while F_NOTIFY has the process own the watch: a change
        // then is ignored as it is sent, rather than left waiting for another thread to be
        // woken by (see the module's documentation). Whatever it drops, the look that follows
        // every arming sees.
        let before = only_signal()
            .thread_swap_mask(SigmaskHow::SIG_UNBLOCK)
            .ctx("pthread_sigmask", "SIGURG")?;
        let armed = raw::notify_folder_changes(fd.as_fd(), changes.0 | DN_MULTISHOT, SIGNAL as i32)
            .ctx("fcntl F_NOTIFY", folder.display())
            .and_then(|()| {
                #[cfg(test)]
                tests::between();
                raw::own_folder_changes(fd.as_fd(), self.thread.as_raw())
                    .ctx("fcntl F_SETOWN_EX", folder.display())
            });
        before.thread_set_mask().ctx("pthread_sigmask", "SIGURG")?;
        armed?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    thread_local! {
        /// What a test has happen between F_NOTIFY and F_SETOWN_EX, once.
        static BETWEEN: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
    }

    /// Runs what the calling thread's test set to happen between F_NOTIFY and F_SETOWN_EX.
    pub(super) fn between() {
        if let Some(then) = BETWEEN.with(|between| between.borrow_mut().take()) {
            then();
        }
    }

    /// In a child of the test (so that the thread waiting in a read is the only one a signal
    /// to the process could wake): a thread that blocks every signal watches a folder, which
    /// changes between F_NOTIFY and F_SETOWN_EX, while the other thread waits in a read with a
    /// timeout (which a signal ends with EINTR rather than restart, as the keeper's wait for
    /// init). 0: the read was not interrupted and the watch told of a later change; 1: the
    /// read ended with EINTR; 2: the later change was not told; 3: another failure.
    fn arm_while_another_thread_reads(folder: &Path) -> i32 {
        let (mut waiting, mut telling) = UnixStream::pair().unwrap();
        waiting
            .set_read_timeout(Some(Duration::from_secs(600)))
            .unwrap();
        let reader = nix::unistd::gettid();
        let folder = folder.to_path_buf();
        let arming = std::thread::spawn(move || {
            pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None).unwrap();
            let signals = Signals::here().unwrap();
            while !feather_testkit::stat::asleep_in_read(reader.as_raw()) {
                std::thread::yield_now();
            }
            let made = folder.join("between");
            BETWEEN.with(|between| {
                *between.borrow_mut() = Some(Box::new(move || {
                    std::fs::File::create(made).unwrap();
                }));
            });
            let watched = signals.watch(&folder, Changes::ENTRIES).unwrap();
            signals.taken();
            std::fs::File::create(folder.join("after")).unwrap();
            let told = signals.taken();
            drop(watched);
            telling.write_all(&[1]).unwrap();
            told
        });
        let read = waiting.read(&mut [0u8; 1]);
        let told = arming.join().unwrap();
        match (read, told) {
            (Ok(1), true) => 0,
            (Err(e), _) if e.kind() == std::io::ErrorKind::Interrupted => 1,
            (Ok(1), false) => 2,
            _ => 3,
        }
    }

    /// A change between F_NOTIFY (the arming thread's process owns the watch) and
    /// F_SETOWN_EX (its thread does) wakes no other thread. Before, the arming thread blocked
    /// SIGURG, so the signal waited for the process and ended the other thread's read with
    /// EINTR (a keeper's wait for its VM's init, cut short).
    #[test]
    fn a_change_while_arming_interrupts_no_other_thread() {
        let folder_scratch = feather_testkit::ScratchDir::new("dnotify-arming");
        let folder = folder_scratch.0.clone();
        // SAFETY: the child runs this test's code only, then `_exit`s; nextest runs each test
        // in a process of its own, with no other thread holding a lock the child would need.
        let fork = unsafe { nix::unistd::fork() }.unwrap();
        let nix::unistd::ForkResult::Parent { child } = fork else {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                arm_while_another_thread_reads(&folder)
            }))
            .unwrap_or(3);
            // SAFETY: ends the child without running the test harness's exit handlers.
            unsafe { libc::_exit(code) };
        };
        let status = nix::sys::wait::waitpid(child, None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(child, 0),
            "1: the other thread's read interrupted, 2: a later change not told, 3: a failure"
        );
    }
}

//! Post-copy: the keeper's copy of the asker's end of CRIU's page-server connection, kept
//! while the lazy dump runs, so that the asker's end closing is never the end of the transfer.
//!
//! CRIU 4.1 takes an end of file between requests for a finished lazy transfer
//! (criu/page-xfer.c `page_server_serve`: `recv` returns 0, the loop ends with success) and
//! ends the dumped processes, whose memory only its page server held. A `feather migrate`
//! killed (SIGKILL, Ctrl-C) before it let the VM go closed its end so, and the VM was lost at
//! both hosts: the receiver, never released, discards its copy. With the keeper's copy open, no
//! end of file reaches CRIU while the keeper lives; a thread watches the asker's control
//! connection, and once the asker hangs up (it ended, or shut its side down) it:
//! - with no release record, makes the transfer fail ([`feather_migrate::pages::abort`]: a
//!   command CRIU does not know, and the connection shut both ways, so that a CRIU blocked
//!   sending pages nobody reads fails too): CRIU lets the processes go on, and the keeper's
//!   failed-dump path runs the VM on here (`Keeper::settle_source_copy`);
//! - with one, closes the copy: the end of file CRIU takes for the end, as the asker's own end
//!   closing was before (the VM may run at the receiver).
//!
//! The copy is never read or written while the asker lives: its relay alone speaks to CRIU. The
//! watch ends with the dump (dropped), which closes the copy: CRIU no longer serves by then.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The watch over one lazy dump's page transfer; dropped once the dump has ended.
pub(crate) struct TransferWatch {
    /// Closed to end the watch.
    stop: Option<UnixStream>,
    watcher: Option<JoinHandle<()>>,
}

/// What the watch did once the asker hung up, for the keeper's log.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// No release record: the transfer was made to fail.
    Failed,
    /// A release record: the copy was closed.
    Closed,
}

impl TransferWatch {
    /// Watches `asker` (the control connection of the asker the other end of `copy` goes to)
    /// until the watch is dropped; `released` says whether a release record lets the VM go.
    /// An error if the watch cannot start: then nothing may pass the asker its end, which
    /// alone would close the transfer.
    pub(crate) fn start(
        vm: &str,
        asker: &UnixStream,
        copy: UnixStream,
        released: impl Fn() -> bool + Send + 'static,
    ) -> std::io::Result<TransferWatch> {
        let asker = asker.try_clone()?;
        let (stop, stopped) = UnixStream::pair()?;
        let vm = vm.to_owned();
        let watcher = std::thread::Builder::new()
            .name("transfer-watch".into())
            .spawn(move || {
                if asker_hung_up(&asker, &stopped) {
                    let settled = settle(copy, released());
                    log(&vm, &settled);
                }
            })?;
        Ok(TransferWatch {
            stop: Some(stop),
            watcher: Some(watcher),
        })
    }
}

impl Drop for TransferWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
    }
}

/// Waits until the asker hung up (`true`) or the watch was stopped (`false`, also when both
/// came: the dump has ended, nothing is left to settle). A poll that fails (ENOMEM) is tried
/// again: deciding early would fail a transfer the asker still relays.
fn asker_hung_up(asker: &UnixStream, stopped: &UnixStream) -> bool {
    // The asker sends nothing during the dump: readable is its end of file. One that sends
    // all the same is watched for its end alone: POLLRDHUP (its writing side shut, closed or
    // not) or POLLHUP, which poll reports whatever was asked, also with its bytes left unread.
    // nix names no POLLRDHUP.
    let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
    let ended = rdhup | PollFlags::POLLHUP | PollFlags::POLLERR;
    let mut asked = PollFlags::POLLIN | rdhup;
    loop {
        let mut fds = [
            PollFd::new(asker.as_fd(), asked),
            PollFd::new(stopped.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) if fds[1].any().unwrap_or(true) => return false,
            Ok(_) if fds[0].revents().is_none_or(|seen| seen.intersects(ended)) => return true,
            Ok(_) if fds[0].any().unwrap_or(true) => match at_end_of_file(asker) {
                Some(true) => return true,
                Some(false) => asked = rdhup,
                None => {}
            },
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Whether `stream` reads an end of file (or fails) rather than data, without reading; None if
/// neither is there yet.
fn at_end_of_file(stream: &UnixStream) -> Option<bool> {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    match recv(stream.as_raw_fd(), &mut [0u8; 1], flags) {
        Ok(0) => Some(true),
        Ok(_) => Some(false),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => None,
        Err(_) => Some(true),
    }
}

/// Settles the transfer once the asker is gone: fails it unless the VM was `released`.
fn settle(copy: UnixStream, released: bool) -> Settled {
    if released {
        return Settled::Closed;
    }
    feather_migrate::pages::abort(&copy);
    Settled::Failed
}

fn log(vm: &str, settled: &Settled) {
    let what = match settled {
        Settled::Failed => {
            "the asker went before it let the VM go: its page transfer was made to fail, so \
             that the VM runs on here"
        }
        Settled::Closed => "the asker went after it let the VM go: its page transfer ends here",
    };
    eprintln!("feather keeper {vm}: {what}");
    feather_core::trace::phase(&format!("checkpoint: {what}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// CRIU's side of the connection, the asker's end, the keeper's copy of it; the asker's
    /// control connection, the keeper's end of it.
    struct Pair {
        criu: UnixStream,
        askers_end: UnixStream,
        copy: UnixStream,
        asker: UnixStream,
        keepers: UnixStream,
    }

    fn pair() -> Pair {
        let (criu, askers_end) = UnixStream::pair().unwrap();
        let copy = askers_end.try_clone().unwrap();
        let (asker, keepers) = UnixStream::pair().unwrap();
        Pair {
            criu,
            askers_end,
            copy,
            asker,
            keepers,
        }
    }

    /// Everything CRIU reads until the end of file.
    fn read_to_end(mut criu: UnixStream) -> Vec<u8> {
        criu.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        criu.read_to_end(&mut got).unwrap();
        got
    }

    /// The asker killed before the release: its end closes, but CRIU reads a failing command,
    /// not an end of file it would take for a finished transfer.
    #[test]
    fn an_asker_gone_before_the_release_makes_criu_fail() {
        let Pair {
            criu,
            askers_end,
            copy,
            asker,
            keepers,
        } = pair();
        let _watch = TransferWatch::start("t", &keepers, copy, || false).unwrap();
        drop((askers_end, asker));
        let got = read_to_end(criu);
        assert_eq!(got.len(), 24, "{got:?}");
        assert_eq!(&got[..4], &0xffffu32.to_le_bytes(), "{got:?}");
    }

    /// An asker that wrote during the dump (nothing the real `migrate` does) and then hung
    /// up, its bytes unread: the watch still sees it gone, and settles (it once spun on the
    /// unread bytes for good, the VM left seized).
    #[test]
    fn an_asker_gone_with_bytes_unread_is_seen_gone() {
        let Pair {
            criu,
            askers_end,
            copy,
            mut asker,
            keepers,
        } = pair();
        let _watch = TransferWatch::start("t", &keepers, copy, || false).unwrap();
        std::io::Write::write_all(&mut asker, b"unread").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop((askers_end, asker));
        let got = read_to_end(criu);
        assert_eq!(&got[..4], &0xffffu32.to_le_bytes(), "{got:?}");
    }

    #[test]
    fn an_asker_gone_after_the_release_closes_the_transfer() {
        let Pair {
            criu,
            askers_end,
            copy,
            asker,
            keepers,
        } = pair();
        let _watch = TransferWatch::start("t", &keepers, copy, || true).unwrap();
        drop((askers_end, asker));
        assert_eq!(read_to_end(criu), b"");
    }

    /// While the asker lives, its relay alone speaks to CRIU: the copy neither reads CRIU's
    /// pages nor writes, and CRIU sees no end of file while the asker's end is open.
    #[test]
    fn the_copy_leaves_a_living_asker_s_transfer_alone() {
        let Pair {
            mut criu,
            mut askers_end,
            copy,
            asker: _asker,
            keepers,
        } = pair();
        let watch = TransferWatch::start("t", &keepers, copy, || false).unwrap();
        std::io::Write::write_all(&mut criu, b"pages").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut got = [0u8; 5];
        askers_end.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pages");
        criu.set_nonblocking(true).unwrap();
        let mut none = [0u8; 1];
        let read = criu.read(&mut none);
        assert_eq!(
            read.map_err(|e| e.kind()).unwrap_err(),
            std::io::ErrorKind::WouldBlock
        );
        // The dump ended: the copy is closed, the asker's end still speaks.
        drop(watch);
        std::io::Write::write_all(&mut askers_end, b"end").unwrap();
        drop(askers_end);
        criu.set_nonblocking(false).unwrap();
        assert_eq!(read_to_end(criu), b"end");
    }

    /// A CRIU blocked sending pages nobody reads (the relay killed mid-answer) takes no
    /// request: it is made to fail all the same, and the watch does not hang.
    #[test]
    fn a_criu_blocked_sending_pages_fails_once_the_asker_is_gone() {
        let Pair {
            criu,
            askers_end,
            copy,
            asker,
            keepers,
        } = pair();
        let watch = TransferWatch::start("t", &keepers, copy, || false).unwrap();
        let sending = std::thread::spawn(move || {
            let page = vec![0u8; 1 << 16];
            let mut criu = criu;
            loop {
                if let Err(e) = std::io::Write::write_all(&mut criu, &page) {
                    return e.kind();
                }
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        drop((askers_end, asker));
        assert_eq!(sending.join().unwrap(), std::io::ErrorKind::BrokenPipe);
        drop(watch);
    }
}

//! PROTOTYPE, measured and then taken out (slower than splice on Linux 6.18, and a redirected
//! TCP connection has no flow control: see docs/shuttle.md). Carrying a TCP connection's bytes
//! without the broker: the client's and the target's sockets
//! are joined in the kernel (`feather_sys::sockmap`), which sends what one receives out of the
//! other. The broker's one thread per connection only watches for each direction's end and
//! passes it on, and for a cut. Where the kernel refuses the join (no BPF, a kernel without
//! sockmap), and for unix sockets (below), the bytes are spliced (`splice`).
//!
//! The end of a direction must not overtake its last bytes: the kernel sends redirected bytes
//! from a worker, later, so the client's end of writing is passed on (`shutdown(SHUT_WR)`)
//! only once the target's socket has taken as many bytes as the client's socket received
//! (TCP_INFO's counts). Unix sockets have no such counts, so their channels splice.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, recv, send, shutdown, sockopt, MsgFlags, Shutdown};
use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage};

use feather_sys::sockmap::{self, Redirect};

use crate::splice;

/// How a connection's bytes were carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// Redirected by the kernel (a BPF sockmap); the broker only watched.
    Kernel,
    /// Spliced by the broker's threads, and why the kernel could not carry them.
    Splice(String),
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Kernel => write!(f, "redirected in the kernel (BPF sockmap)"),
            Path::Splice(why) => write!(f, "spliced by the broker ({why})"),
        }
    }
}

/// Carries both directions between `client` and `server` until both have ended, in the
/// kernel where it can. `joined` is called once the path is known, before any wait.
pub fn forward(client: Arc<OwnedFd>, server: Arc<OwnedFd>, joined: impl FnOnce(&Path)) {
    match join(&client, &server) {
        Ok((joint, base)) => {
            joined(&Path::Kernel);
            watch(&client, &server, base);
            drop(joint);
        }
        Err(why) => {
            joined(&Path::Splice(why));
            let _ = splice::forward(client, server);
        }
    }
}

/// Joins two TCP sockets; returns the joint and each one's written count before it (the
/// zero from which what the other passes on to it is counted).
fn join(client: &OwnedFd, server: &OwnedFd) -> Result<(Redirect, [u64; 2]), String> {
    if !(is_tcp(client) && is_tcp(server)) {
        return Err("a unix socket's end could overtake its last bytes".into());
    }
    let written = |s: &OwnedFd| sockmap::tcp_bytes_written(s.as_fd()).map_err(|e| e.to_string());
    let base = [written(client)?, written(server)?];
    let joint = sockmap::redirect_each_other(client.as_fd(), server.as_fd())
        .map_err(|e| format!("the kernel would not join the sockets: {e}"))?;
    Ok((joint, base))
}

fn is_tcp(socket: &OwnedFd) -> bool {
    let Ok(address) = nix::sys::socket::getsockname::<SockaddrStorage>(socket.as_raw_fd()) else {
        return false;
    };
    let stream = getsockopt(socket, sockopt::SockType) == Ok(nix::sys::socket::SockType::Stream);
    stream
        && matches!(
            address.family(),
            Some(AddressFamily::Inet | AddressFamily::Inet6)
        )
}

/// One direction of a joined connection: bytes that `from` receives go out of `to`.
struct Direction<'a> {
    from: &'a OwnedFd,
    to: &'a OwnedFd,
    /// `to`'s written count when the join began.
    base: u64,
    open: bool,
}

/// Watches a joined connection until both directions have ended, or until either socket is
/// cut or fails (then both are cut).
fn watch(client: &OwnedFd, server: &OwnedFd, [client_base, server_base]: [u64; 2]) {
    let mut directions = [
        Direction {
            from: client,
            to: server,
            base: server_base,
            open: true,
        },
        Direction {
            from: server,
            to: client,
            base: client_base,
            open: true,
        },
    ];
    while directions.iter().any(|d| d.open) {
        let events = |d: &Direction| {
            if d.open {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            }
        };
        let mut fds = [
            PollFd::new(client.as_fd(), events(&directions[0])),
            PollFd::new(server.as_fd(), events(&directions[1])),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return cut_both(client, server),
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
            .collect();
        for (direction, ready) in directions.iter_mut().zip(ready) {
            // A socket that fails, or that hangs up (both its directions ended, or reset)
            // once nothing more is to come from it, leaves the other direction nowhere to go.
            let failed = ready.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL)
                || (ready.contains(PollFlags::POLLHUP) && !direction.open);
            // Readable, or hung up with its own direction still open: its end (or bytes the
            // kernel left with it) is passed on.
            if failed || (direction.open && !ready.is_empty() && direction.pass_on().is_err()) {
                return cut_both(client, server);
            }
        }
    }
}

impl Direction<'_> {
    /// Called when `from` is readable: passes on bytes the kernel left with it (a redirect it
    /// could not make), or its end once the kernel has passed on everything before it.
    fn pass_on(&mut self) -> io::Result<()> {
        let mut buffer = [0u8; 64 * 1024];
        loop {
            match recv(self.from.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => break,
                Ok(n) => send_all(self.to, &buffer[..n])?,
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // `from` has ended its writing: its received count includes its FIN.
        self.wait_until_passed_on(1)?;
        shutdown(self.to.as_raw_fd(), Shutdown::Write)?;
        self.open = false;
        Ok(())
    }

    /// Waits until `to` has taken every byte `from` received (`from`'s count less `beyond`,
    /// what it counts that is not data): the kernel's worker is done.
    fn wait_until_passed_on(&self, beyond: u64) -> io::Result<()> {
        let mut pause = Duration::from_micros(50);
        loop {
            let received = sockmap::tcp_bytes_received(self.from.as_fd()).map_err(io_error)?;
            let written = sockmap::tcp_bytes_written(self.to.as_fd()).map_err(io_error)?;
            if written.saturating_sub(self.base) >= received.saturating_sub(beyond) {
                return Ok(());
            }
            // A cut (or a failed peer) ends the wait: `to` hangs up or errs.
            let mut fds = [PollFd::new(self.to.as_fd(), PollFlags::empty())];
            if poll(&mut fds, PollTimeout::ZERO).is_ok()
                && fds[0].revents().is_some_and(|r| !r.is_empty())
            {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

fn send_all(to: &OwnedFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match send(to.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn io_error(e: feather_sys::SysError) -> io::Error {
    io::Error::from_raw_os_error(e.errno as i32)
}

fn cut_both(client: &OwnedFd, server: &OwnedFd) {
    splice::cut(client);
    splice::cut(server);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// client — [a   broker   b] — server, carried by `forward` on a thread of its own; the
    /// broker's sockets are returned too, for a cut.
    fn carried() -> (
        TcpStream,
        TcpStream,
        [Arc<OwnedFd>; 2],
        std::thread::JoinHandle<Path>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let client = TcpStream::connect(address).unwrap();
        let (a, _) = listener.accept().unwrap();
        let b = TcpStream::connect(address).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (a, b) = (Arc::new(OwnedFd::from(a)), Arc::new(OwnedFd::from(b)));
        let broker = [a.clone(), b.clone()];
        let forwarding = std::thread::spawn(move || {
            let mut path = None;
            forward(a, b, |p| path = Some(p.clone()));
            path.unwrap()
        });
        (client, server, broker, forwarding)
    }

    #[test]
    fn a_tcp_connection_is_carried_in_the_kernel_and_its_half_close_follows_the_last_byte() {
        let (mut client, mut server, _broker, forwarding) = carried();
        let big: Vec<u8> = (0..64_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = std::thread::spawn(move || {
            client.write_all(&sent).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).unwrap();
            answer
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), big.len(), "every byte before the end");
        assert!(got == big, "the server got what the client sent, in order");
        server.write_all(b"thanks").unwrap();
        drop(server);
        assert_eq!(writer.join().unwrap(), "thanks");
        assert_eq!(forwarding.join().unwrap(), Path::Kernel);
    }

    #[test]
    fn a_cut_ends_a_kernel_carried_connection_both_ways_at_once() {
        let (mut client, mut server, broker, forwarding) = carried();
        client.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // What `Live::cut` does when a rule goes or a VM stops.
        broker.iter().for_each(|s| splice::cut(s));
        assert_eq!(forwarding.join().unwrap(), Path::Kernel);
        let mut rest = Vec::new();
        assert_eq!(
            server.read_to_end(&mut rest).unwrap_or(0),
            0,
            "the server's end"
        );
        assert_eq!(
            client.read_to_end(&mut rest).unwrap_or(0),
            0,
            "the client's end"
        );
        // Writing on is refused or vanishes: nothing reaches the server any more.
        let _ = client.write_all(b"more");
        assert!(server.read(&mut got).unwrap_or(0) == 0);
    }

    #[test]
    fn unix_sockets_are_spliced_and_say_why() {
        let (mut client, a) = std::os::unix::net::UnixStream::pair().unwrap();
        let (b, mut server) = std::os::unix::net::UnixStream::pair().unwrap();
        let forwarding = std::thread::spawn(move || {
            let mut path = None;
            forward(
                Arc::new(OwnedFd::from(a)),
                Arc::new(OwnedFd::from(b)),
                |p| path = Some(p.clone()),
            );
            path.unwrap()
        });
        client.write_all(b"hi").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = String::new();
        server.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hi");
        drop(server);
        assert!(matches!(forwarding.join().unwrap(), Path::Splice(_)));
    }
}

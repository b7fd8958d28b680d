//! Carrying a connection's bytes between the VM's client and the target: splice(2) from one
//! socket into a pipe and from the pipe into the other socket, in both directions, so the bytes
//! never pass through the broker's memory. The end of one direction (the sender shut down its
//! writing side) is passed on with `shutdown(SHUT_WR)`, so protocols that half-close work.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::sys::socket::{shutdown, Shutdown};
use nix::unistd::pipe2;

/// How much one splice moves at most, and the pipe's size: 1 MiB is the default most a pipe
/// may hold without raising `fs.pipe-max-size`; bigger moves mean fewer calls per gigabyte.
const CHUNK: usize = 1 << 20;

/// Forwards both directions between `client` and `server` until both have ended. Returns the
/// bytes carried (client to server, server to client).
pub fn forward(client: Arc<OwnedFd>, server: Arc<OwnedFd>) -> io::Result<(u64, u64)> {
    let (back_from, back_to) = (server.clone(), client.clone());
    let back = std::thread::Builder::new()
        .name("shuttle-splice".into())
        .spawn(move || pump(&back_from, &back_to))?;
    let there = pump(&client, &server);
    let back = back
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the splicing thread panicked")));
    Ok((there?, back?))
}

/// Moves bytes from `from` to `to` until `from` ends, then ends `to`'s writing side. If `to`
/// takes no more (its reader shut down or went away), only this direction ends, as it would on
/// a direct connection: `from`'s reading side is shut (a unix sender's next write fails; a TCP
/// sender learns nothing, as from a peer that shut its own reading side), and an answer still
/// coming the other way is carried on. If reading `from` fails, that socket is broken both
/// ways (a reset): both sockets are shut down, which ends the other direction too.
fn pump(from: &OwnedFd, to: &OwnedFd) -> io::Result<u64> {
    match pump_through_pipe(from, to) {
        Ok(carried) => {
            let _ = shutdown(to.as_raw_fd(), Shutdown::Write);
            Ok(carried)
        }
        Err(Broken::Writing(error)) => {
            let _ = shutdown(from.as_raw_fd(), Shutdown::Read);
            let _ = shutdown(to.as_raw_fd(), Shutdown::Write);
            Err(error)
        }
        Err(Broken::Reading(error)) => {
            let _ = shutdown(from.as_raw_fd(), Shutdown::Both);
            let _ = shutdown(to.as_raw_fd(), Shutdown::Both);
            Err(error)
        }
    }
}

/// Which side of a direction failed.
enum Broken {
    Reading(io::Error),
    Writing(io::Error),
}

fn pump_through_pipe(from: &OwnedFd, to: &OwnedFd) -> Result<u64, Broken> {
    let (pipe_out, pipe_in) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Broken::Reading(e.into()))?;
    // A bigger pipe is only an optimisation; the default size works too.
    let _ = fcntl(&pipe_in, FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    let mut carried = 0u64;
    loop {
        let got = match splice(
            from,
            None,
            &pipe_in,
            None,
            CHUNK,
            SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Ok(0) => return Ok(carried),
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Broken::Reading(e.into())),
        };
        let mut left = got;
        while left > 0 {
            match splice(&pipe_out, None, to, None, left, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(0) => return Err(Broken::Writing(io::ErrorKind::WriteZero.into())),
                Ok(n) => left -= n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Broken::Writing(e.into())),
            }
        }
        carried += got as u64;
    }
}

/// Ends both directions of a socket from outside the threads that carry it (a channel closes,
/// a VM stops): their splices return and the connection ends.
pub fn cut(socket: &OwnedFd) {
    let _ = shutdown(socket.as_raw_fd(), Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A client and a server, with the broker's `forward` between them on a thread of its own.
    fn relayed() -> (
        UnixStream,
        UnixStream,
        std::thread::JoinHandle<std::io::Result<(u64, u64)>>,
    ) {
        let (client, client_broker) = UnixStream::pair().unwrap();
        let (server_broker, server) = UnixStream::pair().unwrap();
        let forwarding = std::thread::spawn(move || {
            forward(
                Arc::new(OwnedFd::from(client_broker)),
                Arc::new(OwnedFd::from(server_broker)),
            )
        });
        (client, server, forwarding)
    }

    #[test]
    fn bytes_cross_both_ways_and_a_half_close_is_passed_on() {
        let (mut client, mut server, forwarding) = relayed();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
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
        assert!(
            got == big,
            "the server got what the client sent, then its end"
        );
        server.write_all(b"thanks").unwrap();
        drop(server);
        assert_eq!(writer.join().unwrap(), "thanks");
        let (there, back) = forwarding.join().unwrap().unwrap();
        assert_eq!((there, back), (big.len() as u64, 6));
    }

    /// A server that reads nothing holds a TCP client back: what the channel keeps in flight is
    /// bounded by the sockets' buffers and the pipe, as on a direct connection. This is what a
    /// BPF sockmap redirect lacks on Linux 6.18 (docs/shuttle.md, "Why the bytes still pass
    /// through the broker": bench/sockmap/sockmap_probe.c pushed its 256 MiB cap into such a
    /// server), and why channels splice: a VM must not be able to park the host's memory in a
    /// channel. The poll's wait only decides when to stop writing; a slow broker stops it
    /// sooner, with less in flight, so the assertion cannot fail for want of time.
    #[test]
    fn a_server_that_reads_nothing_holds_a_tcp_client_back() {
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::AsFd;

        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

        const CAP: usize = 128 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(address).unwrap();
        let (client_broker, _) = listener.accept().unwrap();
        let server_broker = TcpStream::connect(address).unwrap();
        let (server, _) = listener.accept().unwrap();
        let forwarding = std::thread::spawn(move || {
            forward(
                Arc::new(OwnedFd::from(client_broker)),
                Arc::new(OwnedFd::from(server_broker)),
            )
        });
        client.set_nonblocking(true).unwrap();
        let chunk = vec![1u8; 64 << 10];
        let mut pushed = 0;
        while pushed < CAP {
            match client.write(&chunk) {
                Ok(n) => pushed += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut writable = [PollFd::new(client.as_fd(), PollFlags::POLLOUT)];
                    if poll(&mut writable, PollTimeout::from(2000u16)).unwrap() == 0 {
                        break;
                    }
                }
                Err(e) => panic!("the client's write failed: {e}"),
            }
        }
        assert!(
            pushed < CAP,
            "a client got {pushed} bytes into a channel whose server reads nothing"
        );
        drop(server);
        drop(client);
        let _ = forwarding.join().unwrap();
    }

    /// A server that stops reading mid-request (it shuts down its reading side, as one that
    /// refuses an upload does) still gets its answer to the client: only the direction whose
    /// receiver took no more ends.
    #[test]
    fn an_answer_crosses_after_the_receiver_stopped_reading() {
        let (mut client, mut server, forwarding) = relayed();
        server.shutdown(std::net::Shutdown::Read).unwrap();
        // The client writes until the broker tells it the server takes no more.
        let chunk = vec![7u8; 64 << 10];
        let refused = loop {
            if let Err(error) = client.write_all(&chunk) {
                break error;
            }
        };
        assert_eq!(refused.kind(), std::io::ErrorKind::BrokenPipe, "{refused}");
        server.write_all(b"413 too large").unwrap();
        drop(server);
        // The broker ends the client's connection with bytes of the client's still unread in
        // it, as the server itself would have: the kernel then reports the reset once the
        // answer has been read (a TCP peer sends an RST), which may come instead of the end.
        let mut answer = Vec::new();
        let mut buffer = [0u8; 64];
        loop {
            match client.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the client's read failed: {e}"),
            }
        }
        assert_eq!(String::from_utf8_lossy(&answer), "413 too large");
        let carried = forwarding.join().unwrap();
        assert!(
            carried.is_err(),
            "the way to the server failed: {carried:?}"
        );
    }
}

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

/// Moves bytes from `from` to `to` until `from` ends, then ends `to`'s writing side. On an
/// error both sockets are shut down, which ends the other direction too.
fn pump(from: &OwnedFd, to: &OwnedFd) -> io::Result<u64> {
    let result = pump_through_pipe(from, to);
    match &result {
        Ok(_) => {
            let _ = shutdown(to.as_raw_fd(), Shutdown::Write);
        }
        Err(_) => {
            let _ = shutdown(from.as_raw_fd(), Shutdown::Both);
            let _ = shutdown(to.as_raw_fd(), Shutdown::Both);
        }
    }
    result
}

fn pump_through_pipe(from: &OwnedFd, to: &OwnedFd) -> io::Result<u64> {
    let (pipe_out, pipe_in) = pipe2(OFlag::O_CLOEXEC)?;
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
            Err(e) => return Err(e.into()),
        };
        let mut left = got;
        while left > 0 {
            match splice(&pipe_out, None, to, None, left, SpliceFFlags::SPLICE_F_MOVE) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => left -= n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
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

    #[test]
    fn bytes_cross_both_ways_and_a_half_close_is_passed_on() {
        let (mut client, client_broker) = UnixStream::pair().unwrap();
        let (server_broker, mut server) = UnixStream::pair().unwrap();
        let forwarding = std::thread::spawn(move || {
            forward(
                Arc::new(OwnedFd::from(client_broker)),
                Arc::new(OwnedFd::from(server_broker)),
            )
        });
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
}

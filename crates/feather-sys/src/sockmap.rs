//! Two connected sockets that pass their bytes to each other inside the kernel: every byte one
//! receives is sent out of the other, by a BPF stream-verdict program (`BPF_PROG_TYPE_SK_SKB`,
//! `BPF_SK_SKB_STREAM_VERDICT`) that redirects it, so no process has to wake up to move it.
//!
//! Each socket sits alone in a sockmap of its own, whose program redirects into the partner's
//! map. A program runs with the socket that received the bytes, but a unix socket's bytes
//! belong to the socket that sent them (`skb->sk`), so a program shared by both sockets could
//! not tell which one they came to; one map per socket needs no such question. The program is
//! nine instructions written out here rather than compiled from C: it needs no BPF compiler at
//! build time and no ELF loader (`verdict_program` says what each does).
//!
//! A redirect the kernel cannot make (the partner left its map, or is no longer connected)
//! leaves the bytes with the receiving socket, readable as usual: never dropped silently.
//!
//! Nothing is pinned: the maps and programs live as long as [`Redirect`]'s descriptors. When
//! the last descriptor of a map closes, the kernel detaches its program and takes the socket
//! out (sockmap's `map_release_uref`), which also breaks the reference each program holds on
//! the other socket's map. A process that dies leaves nothing behind.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::bpf::{self, Insn};
use crate::{raw, Context, Result};

/// uapi/linux/bpf.h: `BPF_MAP_TYPE_SOCKMAP`, `BPF_PROG_TYPE_SK_SKB` and its attach type
/// `BPF_SK_SKB_STREAM_VERDICT`.
const MAP_TYPE_SOCKMAP: u32 = 15;
const PROG_TYPE_SK_SKB: u32 = 14;
const ATTACH_STREAM_VERDICT: u32 = 5;
/// `BPF_FUNC_sk_redirect_map`: `bpf_sk_redirect_map(skb, map, key, flags)`.
const HELPER_SK_REDIRECT_MAP: i32 = 52;
/// `SK_PASS`: the bytes go on (to the redirect's target when one was set, else stay).
const SK_PASS: i32 = 1;
/// `BPF_PSEUDO_MAP_FD`: the 64-bit immediate names a map by its descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// The license the program is loaded under (the helper it calls is not GPL-only).
const LICENSE: &CStr = c"Apache-2.0";

/// The stream-verdict program of a socket whose partner is the one socket in `partner_map`:
/// redirect what arrives to the partner's sending side, and pass it in any case, so that a
/// redirect that fails leaves the bytes readable on the receiving socket. A TCP socket's FIN
/// comes to the program as an empty skb: it is not redirected (the kernel's worker would try
/// to send it after the broker has ended the partner's writing, and fail the partner with
/// EPIPE); the end of a direction is the broker's to pass on.
pub fn verdict_program(partner_map: BorrowedFd<'_>) -> [Insn; 9] {
    let insn = |code, dst, src, off, imm| Insn {
        code,
        dst,
        src,
        off,
        imm,
    };
    [
        // r2 = skb->len; if r2 == 0 skip to the return
        insn(0x61, 2, 1, 0, 0),
        insn(0x15, 2, 0, 5, 0),
        // r2 = partner_map (a 64-bit load over two instructions; r1 holds the skb)
        insn(0x18, 2, PSEUDO_MAP_FD, 0, partner_map.as_raw_fd()),
        insn(0, 0, 0, 0, 0),
        // r3 = 0: the partner's key; r4 = 0: flags (out of its sending side, not its input)
        insn(0xb7, 3, 0, 0, 0),
        insn(0xb7, 4, 0, 0, 0),
        // bpf_sk_redirect_map(skb, partner_map, 0, 0)
        insn(0x85, 0, 0, 0, HELPER_SK_REDIRECT_MAP),
        // return SK_PASS
        insn(0xb7, 0, 0, 0, SK_PASS),
        insn(0x95, 0, 0, 0, 0),
    ]
}

/// Two sockets joined in the kernel (see the module's documentation). Dropping it ends the
/// redirection and frees the maps and programs.
#[derive(Debug)]
pub struct Redirect {
    _maps: [OwnedFd; 2],
    _programs: [OwnedFd; 2],
}

/// Joins `a` and `b`, two connected stream sockets (TCP, or unix stream on Linux 5.15 and
/// later): from now on what either receives is sent out of the other. Fails — leaving both
/// sockets as they were — where the kernel refuses: no `CAP_BPF`/`CAP_NET_ADMIN`, no sockmap,
/// or a socket of a kind a sockmap does not take.
///
/// Bytes that came in before cannot wait for the next arrival: a TCP socket's are passed on at
/// once (setting `SO_RCVLOWAT` makes TCP run its data-ready hook, which is the program's);
/// a unix socket's stay readable on it.
pub fn redirect_each_other(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> Result<Redirect> {
    let map_a = raw::bpf_map_create(MAP_TYPE_SOCKMAP, 1).ctx("create", "a sockmap")?;
    let map_b = raw::bpf_map_create(MAP_TYPE_SOCKMAP, 1).ctx("create", "a sockmap")?;
    let load = |partner: &OwnedFd| {
        bpf::load(
            (PROG_TYPE_SK_SKB, ATTACH_STREAM_VERDICT),
            &verdict_program(partner.as_fd()),
            LICENSE,
            "the sockmap's redirecting program",
        )
    };
    let program_a = load(&map_b)?;
    let program_b = load(&map_a)?;
    for (map, program) in [(&map_a, &program_a), (&map_b, &program_b)] {
        raw::bpf_prog_attach(true, map.as_fd(), program.as_fd(), ATTACH_STREAM_VERDICT, 0)
            .ctx("attach the redirecting program to", "its sockmap")?;
    }
    raw::bpf_map_update(map_b.as_fd(), 0, b.as_raw_fd() as u32)
        .ctx("put into a sockmap", format!("socket {}", b.as_raw_fd()))?;
    raw::bpf_map_update(map_a.as_fd(), 0, a.as_raw_fd() as u32)
        .ctx("put into a sockmap", format!("socket {}", a.as_raw_fd()))?;
    for socket in [a, b] {
        // Only TCP acts on it; elsewhere this is harmless.
        let _ = raw::set_receive_low_water(socket, 1);
    }
    Ok(Redirect {
        _maps: [map_a, map_b],
        _programs: [program_a, program_b],
    })
}

/// How many bytes have been written into the TCP socket `socket` (acknowledged or still
/// queued), counting its SYN if it connected: compare two counts of one socket.
pub fn tcp_bytes_written(socket: BorrowedFd<'_>) -> Result<u64> {
    // The acknowledged count first: the queue only shrinks as it grows, so a count taken in
    // between can come out low, never high.
    let acked = raw::tcp_bytes_acked(socket).ctx("read TCP_INFO of", "a socket")?;
    let queued = raw::tcp_unacknowledged(socket).ctx("read SIOCOUTQ of", "a socket")?;
    Ok(acked + queued)
}

/// How many bytes the TCP socket `socket` has received: its data, and one more once the
/// peer's end of writing (its FIN) came.
pub fn tcp_bytes_received(socket: BorrowedFd<'_>) -> Result<u64> {
    raw::tcp_bytes_received(socket).ctx("read TCP_INFO of", "a socket")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;

    /// Two connections client—a and b—server joined at a and b; returns (client, server,
    /// the joint).
    fn joined_tcp() -> (TcpStream, TcpStream, Redirect, [TcpStream; 2]) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let client = TcpStream::connect(address).unwrap();
        let (a, _) = listener.accept().unwrap();
        let b = TcpStream::connect(address).unwrap();
        let (server, _) = listener.accept().unwrap();
        let joint = redirect_each_other(a.as_fd(), b.as_fd()).unwrap();
        (client, server, joint, [a, b])
    }

    #[test]
    fn the_verifier_takes_the_program_and_tcp_bytes_cross_both_ways() {
        let (mut client, mut server, _joint, _sockets) = joined_tcp();
        client.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").unwrap();
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
    }

    #[test]
    fn tcp_bytes_sent_before_the_join_are_passed_on_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(address).unwrap();
        let (a, _) = listener.accept().unwrap();
        let b = TcpStream::connect(address).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"early").unwrap();
        server.write_all(b"hello").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let _joint = redirect_each_other(a.as_fd(), b.as_fd()).unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"early");
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        drop((a, b));
    }

    #[test]
    fn unix_stream_bytes_cross_both_ways() {
        let (mut client, a) = UnixStream::pair().unwrap();
        let (b, mut server) = UnixStream::pair().unwrap();
        let _joint = redirect_each_other(a.as_fd(), b.as_fd()).unwrap();
        let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = std::thread::spawn(move || {
            client.write_all(&sent).unwrap();
            client
        });
        let mut got = vec![0u8; big.len()];
        server.read_exact(&mut got).unwrap();
        assert!(got == big, "the server got what the client sent, in order");
        let mut client = writer.join().unwrap();
        server.write_all(b"thanks").unwrap();
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"thanks");
        drop((a, b));
    }

    #[test]
    fn the_written_count_reaches_what_was_sent_once_all_is_passed_on() {
        let (mut client, mut server, _joint, [a, b]) = joined_tcp();
        let base = tcp_bytes_written(b.as_fd()).unwrap();
        let big = vec![7u8; 8 << 20];
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            server.read_to_end(&mut got).unwrap();
            got.len()
        });
        client.write_all(&big).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        while tcp_bytes_written(b.as_fd()).unwrap() - base < big.len() as u64 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The end of the client's writing counts as one byte received (its FIN).
        while tcp_bytes_received(a.as_fd()).unwrap() < big.len() as u64 + 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(tcp_bytes_received(a.as_fd()).unwrap(), big.len() as u64 + 1);
        b.shutdown(Shutdown::Write).unwrap();
        assert_eq!(reader.join().unwrap(), big.len());
    }
}

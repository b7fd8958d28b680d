//! The messages of a VM's start, one typed enum per pair of processes, each sent as one JSON
//! line:
//!
//! ```text
//! feather start ──spawns──▶ keeper ──clones──▶ init
//!               ◀─ KeeperReport ──  ── ToInit::Go ─────────▶   (assemble the root)
//!                                   ── ToInit::NetworkReady ─▶  (in the VM's cgroup, veth in place)
//!                                   ◀─ FromInitBoot ─────────   (Ready, or Failed and why)
//!                                   ── ToInit::Start ────────▶  (the broker is open: go on)
//! ```
//!
//! A message that is not the one expected fails with [`BootError::Unexpected`], naming both,
//! instead of a silent exit. [`KeeperReport::Up`] carries the keeper's protocol version:
//! `feather` and `feather-keeper` are installed side by side, and a pair from different builds
//! is told to be reinstalled together rather than misread.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

/// Changes whenever a message of this module changes.
pub const VERSION: u32 = 2;

/// The longest message of this module.
const MAX_LINE: usize = 64 * 1024;

/// What the keeper tells the init it cloned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToInit {
    /// Init may assemble the VM's root; the keeper moves it into the VM's cgroup and builds
    /// the network's host side meanwhile.
    Go,
    /// Init is in the VM's cgroup and the VM's end of its veth pair (if any) is in init's
    /// network namespace: init may make its cgroup namespace and configure the interface.
    NetworkReady,
    /// The VM is ready around init (its Shuttle broker open): init starts the first workload.
    Start,
}

/// What init tells its keeper once the VM is assembled, or why it could not be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromInitBoot {
    /// What init holds beneath each layer it mounts, once it has assembled the root, before
    /// the keeper tells it NETWORK_READY (`layers::SeenLowers::confirm`).
    /// The last (or only) piece of it: see [`send_pinned`].
    Pinned(Vec<crate::lower_id::PinnedLower>),
    /// A piece of it, more following: one line holds at most [`MAX_LINE`] bytes, and a host
    /// with hundreds of mounts beneath the base (a container host) has as many layers.
    PinnedPart(Vec<crate::lower_id::PinnedLower>),
    Ready,
    Failed(String),
}

/// What a background keeper tells the `feather start` that spawned it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keeper", rename_all = "snake_case")]
pub enum KeeperReport {
    Up { version: u32 },
    Failed { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("expected {expected}, received {received}")]
    Unexpected {
        expected: &'static str,
        received: String,
    },
    #[error("expected {expected}, but the other side closed the connection")]
    Closed { expected: &'static str },
    #[error("while waiting for {expected}")]
    Io {
        expected: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The keeper could not start the VM: its own message, which names the VM and carries
    /// every cause.
    #[error("{message}")]
    KeeperFailed { message: String },
}

/// Writes one message as a JSON line.
pub fn send(to: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    to.write_all(&line)
}

/// The keeper's and init's ends of their boot socket. A SOCK_SEQPACKET pair (wrapped as
/// `UnixStream`s: reading and writing are the same calls): every message is one packet, which
/// [`receive`] reads whole in one call and never with any of the next one, which init reads
/// after it re-executes itself. Over a byte stream each message was read a byte per call so as
/// not to take any of the next: 284 calls in a `run --rm`'s keeper, most of them while init
/// waited for NETWORK_READY.
pub fn pair() -> std::io::Result<(UnixStream, UnixStream)> {
    let (ours, theirs) = feather_sys::fdpass::seqpacket_pair()?;
    for end in [&ours, &theirs] {
        room_for_the_longest_packet(end)?;
    }
    Ok((UnixStream::from(ours), UnixStream::from(theirs)))
}

/// A packet is refused (EMSGSIZE) when longer than its sender's send buffer, which
/// `net.core.wmem_default` sizes (a host may lower it below a [`MAX_LINE`] packet): each end's
/// is set to hold the longest (review start29 L1). Root sets it past `wmem_max` too.
fn room_for_the_longest_packet(end: &impl AsFd) -> std::io::Result<()> {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    // Twice the packet: the kernel counts its bookkeeping against the buffer too (and
    // doubles what is set, reporting the doubled size).
    let wanted = 2 * (MAX_LINE + 2);
    if getsockopt(end, sockopt::SndBuf)? >= wanted {
        return Ok(());
    }
    setsockopt(end, sockopt::SndBufForce, &wanted)
        .or_else(|_| setsockopt(end, sockopt::SndBuf, &wanted))?;
    Ok(())
}

/// Reads one message from a socket of [`pair`]: one packet, one line.
pub fn receive<T: for<'de> Deserialize<'de>>(
    from: &mut (impl Read + AsFd),
    expected: &'static str,
) -> Result<T, BootError> {
    let mut reset_seen = false;
    loop {
        match read_packet(from) {
            Ok(packet) if packet.is_empty() => return Err(BootError::Closed { expected }),
            Ok(packet) if packet.len() > MAX_LINE + 1 => return Err(too_long(expected)),
            Ok(packet) => {
                let line = packet.as_slice();
                return parse(line.strip_suffix(b"\n").unwrap_or(line), expected);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A seqpacket peer that closed with a packet of ours unread in its queue (init
            // failing before it read GO) is reported as a reset once, before the packets it
            // sent: read on, so its last word (why it failed) is what the start reports.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !reset_seen => {
                reset_seen = true;
            }
            Err(source) => return Err(BootError::Io { expected, source }),
        }
    }
}

/// The next packet, read into a buffer of its size: its length is peeked first, so that a
/// message of a few bytes (GO, START) does not clear and fault in a buffer of [`MAX_LINE`]
/// (init's heap pages, shared with the keeper's since the clone, are each copied on the
/// first write). One byte more than the longest packet at most: a longer one fills that
/// buffer, and is taken from the queue all the same. Empty once the peer has closed. The peek
/// and the read are two calls: sound only with one reader of the socket at a time (init, then
/// the keeper), and only on a socket of [`pair`] (a stream socket would read as closed).
fn read_packet(from: &mut (impl Read + AsFd)) -> std::io::Result<Vec<u8>> {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let length = recv(
        from.as_fd().as_raw_fd(),
        &mut [],
        MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
    )?;
    let mut packet = vec![0u8; length.min(MAX_LINE + 1) + 1];
    let read = from.read(&mut packet)?;
    packet.truncate(read);
    Ok(packet)
}

/// Reads one message from a byte stream (the keeper's report pipe): byte by byte up to its
/// line end, so that nothing after it is taken.
fn receive_line<T: for<'de> Deserialize<'de>>(
    from: &mut impl Read,
    expected: &'static str,
) -> Result<T, BootError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match from.read(&mut byte) {
            Ok(0) if line.is_empty() => return Err(BootError::Closed { expected }),
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < MAX_LINE => line.push(byte[0]),
            Ok(_) => return Err(too_long(expected)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(BootError::Io { expected, source }),
        }
    }
    parse(&line, expected)
}

fn too_long(expected: &'static str) -> BootError {
    BootError::Unexpected {
        expected,
        received: format!("a line of more than {MAX_LINE} bytes"),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(
    line: &[u8],
    expected: &'static str,
) -> Result<T, BootError> {
    serde_json::from_slice(line).map_err(|_| BootError::Unexpected {
        expected,
        received: format!("{:?}", String::from_utf8_lossy(line)),
    })
}

/// The most bytes of entries [`send_pinned`] puts in one line, well below [`MAX_LINE`]: one
/// entry (a mount point of at most PATH_MAX bytes, escaped, and a handle) stays below the rest.
const PINNED_PIECE: usize = 32 * 1024;

/// Sends what init holds beneath its layers in lines below [`MAX_LINE`]: pieces
/// ([`FromInitBoot::PinnedPart`]), the last a [`FromInitBoot::Pinned`]. In one line, a host
/// with some 250 layers failed every start (review lowers28 L1).
pub fn send_pinned(
    to: &mut impl Write,
    found: Vec<crate::lower_id::PinnedLower>,
) -> std::io::Result<()> {
    let mut piece = Vec::new();
    let mut bytes = 0;
    for entry in found {
        let size = serde_json::to_vec(&entry)?.len() + 1;
        if bytes + size > PINNED_PIECE && !piece.is_empty() {
            send(to, &FromInitBoot::PinnedPart(std::mem::take(&mut piece)))?;
            bytes = 0;
        }
        bytes += size;
        piece.push(entry);
    }
    send(to, &FromInitBoot::Pinned(piece))
}

/// Reads what [`send_pinned`] sent, whole, as one [`FromInitBoot::Pinned`]; any other report
/// (init's failure) as it came.
pub fn receive_pinned(
    from: &mut (impl Read + AsFd),
    expected: &'static str,
) -> Result<FromInitBoot, BootError> {
    let mut all = Vec::new();
    loop {
        match receive(from, expected)? {
            FromInitBoot::PinnedPart(piece) => all.extend(piece),
            FromInitBoot::Pinned(piece) => {
                all.extend(piece);
                return Ok(FromInitBoot::Pinned(all));
            }
            other => return Ok(other),
        }
    }
}

/// Reads one [`ToInit`] and checks it is `want`.
pub fn expect(from: &mut (impl Read + AsFd), want: ToInit) -> Result<(), BootError> {
    let expected = match want {
        ToInit::Go => "go",
        ToInit::NetworkReady => "network_ready",
        ToInit::Start => "start",
    };
    match receive::<ToInit>(from, expected)? {
        got if got == want => Ok(()),
        got => Err(BootError::Unexpected {
            expected,
            received: format!("{got:?}"),
        }),
    }
}

/// What `feather start` makes of its keeper's report: `Ok` once the VM is up, else the
/// keeper's own message ([`BootError::KeeperFailed`]) or what came instead.
pub fn read_report(from: &mut impl Read) -> Result<(), BootError> {
    const EXPECTED: &str = "the keeper's report (up or failed)";
    match receive_line::<KeeperReport>(from, EXPECTED)? {
        KeeperReport::Up { version } if version == VERSION => Ok(()),
        KeeperReport::Up { version } => Err(BootError::Unexpected {
            expected: "a keeper of this feather's protocol version",
            received: format!(
                "version {version}, not {VERSION} (install feather and feather-keeper from the \
                 same build, side by side)"
            ),
        }),
        KeeperReport::Failed { message } => Err(BootError::KeeperFailed { message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_one_at_a_time_and_named_when_unexpected() {
        let (mut keeper, mut init) = pair().unwrap();
        send(&mut keeper, &ToInit::Go).unwrap();
        send(&mut keeper, &ToInit::NetworkReady).unwrap();
        expect(&mut init, ToInit::Go).unwrap();
        // The second message is still there, whole, for whoever reads next (init after its
        // re-execution).
        let mut reexecuted = init.try_clone().unwrap();
        drop(init);
        let error = expect(&mut reexecuted, ToInit::Start).unwrap_err();
        assert_eq!(error.to_string(), "expected start, received NetworkReady");
        keeper.write_all(b"\x67\n").unwrap();
        let error = expect(&mut reexecuted, ToInit::Go).unwrap_err();
        assert_eq!(error.to_string(), "expected go, received \"g\"");
        keeper.write_all(&vec![b' '; MAX_LINE + 2]).unwrap();
        let error = expect(&mut reexecuted, ToInit::Go).unwrap_err();
        assert!(error.to_string().contains("a line of more than"), "{error}");
        drop(keeper);
        assert!(matches!(
            expect(&mut reexecuted, ToInit::Go),
            Err(BootError::Closed { expected: "go" })
        ));
    }

    /// A packet of a line of [`MAX_LINE`] bytes and its line end is read whole; one byte more
    /// is refused as too long (the buffer a packet is read into is sized from its peeked
    /// length, at most one byte past the longest).
    #[test]
    fn the_longest_line_is_read_and_one_byte_more_refused() {
        let (mut keeper, mut init) = pair().unwrap();
        let go = serde_json::to_vec(&ToInit::Go).unwrap();
        // JSON allows leading blanks: the message is still GO, the packet as long as asked.
        let padded = |line_length: usize| {
            let mut packet = vec![b' '; line_length - go.len()];
            packet.extend_from_slice(&go);
            packet.push(b'\n');
            packet
        };
        let longest = padded(MAX_LINE);
        assert_eq!(longest.len(), MAX_LINE + 1);
        assert_eq!(keeper.write(&longest).unwrap(), longest.len());
        expect(&mut init, ToInit::Go).unwrap();
        let too_long = padded(MAX_LINE + 1);
        assert_eq!(keeper.write(&too_long).unwrap(), MAX_LINE + 2);
        let error = expect(&mut init, ToInit::Go).unwrap_err();
        assert!(error.to_string().contains("a line of more than"), "{error}");
        // The refused packet was taken off the queue: the next one is read.
        send(&mut keeper, &ToInit::Start).unwrap();
        expect(&mut init, ToInit::Start).unwrap();
    }

    /// Init that fails before it read GO sends its reason and exits with GO unread in its
    /// queue; the kernel then reports a reset to the keeper before init's packet, which the
    /// start must still report (review start29 M1: it said "Connection reset by peer").
    #[test]
    fn the_last_word_of_a_peer_that_closed_with_ours_unread_is_read() {
        let (mut keeper, mut init) = pair().unwrap();
        send(&mut keeper, &ToInit::Go).unwrap();
        send(&mut init, &ToInit::NetworkReady).unwrap();
        drop(init);
        expect(&mut keeper, ToInit::NetworkReady).unwrap();
        assert!(matches!(
            expect(&mut keeper, ToInit::Go),
            Err(BootError::Closed { expected: "go" })
        ));
    }

    /// On a host whose `net.core.wmem_default` is below a packet of [`MAX_LINE`], the pair
    /// still carries the longest message (a socket made with such a buffer stands in for
    /// the host: the sysctl is the whole machine's).
    #[test]
    fn the_longest_packet_fits_a_socket_made_with_a_small_send_buffer() {
        use nix::sys::socket::{setsockopt, sockopt};
        let (ours, theirs) = feather_sys::fdpass::seqpacket_pair().unwrap();
        setsockopt(&ours, sockopt::SndBuf, &4096).unwrap();
        let (mut ours, mut theirs) = (UnixStream::from(ours), UnixStream::from(theirs));
        let longest = vec![b' '; MAX_LINE + 1];
        assert!(
            ours.write(&longest).is_err(),
            "the stand-in buffer is too large"
        );
        room_for_the_longest_packet(&ours).unwrap();
        assert_eq!(ours.write(&longest).unwrap(), longest.len());
        let mut packet = vec![0u8; MAX_LINE + 2];
        assert_eq!(theirs.read(&mut packet).unwrap(), longest.len());
    }

    /// What init holds beneath 600 layers with long names (a container host's `merged`
    /// overlays beneath the base) reaches the keeper whole, a report of init's after it
    /// still read; in one line it was past MAX_LINE and failed the start (review lowers28
    /// L1).
    #[test]
    fn what_init_holds_beneath_many_layers_is_sent_in_pieces() {
        use crate::lower_id::{FolderOn, PinnedLower};
        let found: Vec<PinnedLower> = (0..600)
            .map(|i| PinnedLower {
                layer: format!("var-lib-docker-overlay2-{i:064x}-merged"),
                folder: Some((
                    (i, 256),
                    FolderOn {
                        kind: 0x794c7630,
                        fsid: i,
                        handle: Some(format!("251:{}", "ab".repeat(60))),
                        uuid: Some("cd".repeat(16)),
                    },
                )),
                over_nothing: false,
            })
            .collect();
        let mut lines = Vec::new();
        send_pinned(&mut lines, found.clone()).unwrap();
        assert!(lines
            .split(|&b| b == b'\n')
            .all(|line| line.len() < MAX_LINE));
        let (mut keeper, mut init) = pair().unwrap();
        let sent = found.clone();
        // The socket holds a few packets only: the keeper reads while init sends.
        let sending = std::thread::spawn(move || {
            send_pinned(&mut init, sent).unwrap();
            send(&mut init, &FromInitBoot::Ready).unwrap();
        });
        let whole = receive_pinned(&mut keeper, "pinned").unwrap();
        assert_eq!(whole, FromInitBoot::Pinned(found));
        let after: FromInitBoot = receive(&mut keeper, "ready").unwrap();
        assert_eq!(after, FromInitBoot::Ready);
        sending.join().unwrap();
    }

    #[test]
    fn a_keeper_of_another_version_is_named() {
        let mut stream = Vec::new();
        send(
            &mut stream,
            &KeeperReport::Up {
                version: VERSION + 1,
            },
        )
        .unwrap();
        let error = read_report(&mut stream.as_slice()).unwrap_err();
        assert!(error.to_string().contains("same build"), "{error}");
        let mut stream = Vec::new();
        send(
            &mut stream,
            &KeeperReport::Failed {
                message: "no".into(),
            },
        )
        .unwrap();
        assert!(matches!(
            read_report(&mut stream.as_slice()),
            Err(BootError::KeeperFailed { message }) if message == "no"
        ));
    }
}

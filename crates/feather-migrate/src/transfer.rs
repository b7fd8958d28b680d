//! Moving a VM archive to another host over TCP, authenticated with a shared token and
//! checksummed.
//!
//! ```text
//! sender (feather migrate)                      receiver (feather serve)
//!                                   ◀── Hello { version, nonce }
//! checks the version,
//! Offer { version, vm, proof } ──▶              checks the version, the token (HMAC over nonce
//!                                               and vm) and
//!                                   ◀── Accept  that no VM of that name exists here (or Refuse)
//! ... checkpoints the VM, writes its archive ...
//! the archive, in frames, as tar makes it ──▶    unpacks it as it comes, aside
//! Archive { size, sha256, mac } ──▶             checks size, SHA-256 and its MAC, imports and restores
//!                                               the VM with its processes stopped
//!                                   ◀── Restored  (or Done { error } if it could not)
//! records that it let the VM go,
//! Release { mac } ──▶                           lets the VM's processes run
//!                                   ◀── Done { error: None }
//! removes its own copy
//! ```
//!
//! Two phases, so that the VM never runs twice and is never lost: until the receiver has the
//! Release, its copy stays stopped and is discarded if anything goes wrong (or if `feather
//! serve` dies: the copy's keeper watches it); until the sender has the final Done, it keeps its
//! checkpoint. Only a connection lost between Release and Done leaves the sender unsure, and
//! then it keeps its checkpoint and says so, rather than guess.
//!
//! Both ends check the other's [`VERSION`] at connect, before anything else: a pair of feather
//! builds that speak different versions fails with [`TransferError::Version`], naming both,
//! rather than misread each other.
//!
//! One JSON object per line (at most [`MAX_LINE`] bytes: a peer cannot make the receiver buffer
//! without end before it has proved anything); the archive in between as frames (a 4-byte
//! big-endian length of at most [`MAX_FRAME`], that many bytes, then the frame's tag; length 0
//! ends it, tagged too), sent while tar still writes it and unpacked as it arrives, so that
//! making, sending and unpacking it overlap while the VM is frozen.
//!
//! Nothing from the network is acted on before it is authenticated. The token never crosses
//! the wire: each message that matters carries an HMAC-SHA-256 keyed by it over the receiver's
//! fresh nonce, so a recorded exchange cannot be replayed. Each frame's tag covers the nonce,
//! the frame's number and its bytes, and the receiver checks it before it hands a byte of the
//! frame to tar: a byte altered, a frame dropped, reordered, replayed from another transfer or
//! cut off at the end is refused before it is unpacked. The size, SHA-256 and MAC that follow
//! the archive check the whole once more. The token authenticates; it does not encrypt: use it
//! on networks you trust, or over a tunnel.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::error::TransferError;
use crate::error::{MigrateError, Result};

/// Changes whenever a message of this module (or what it means) changes. 3: the archive is two
/// tar streams, the layers pre-copied and then the rest (crate::precopy).
pub const VERSION: u32 = 3;

type HmacSha256 = Hmac<Sha256>;

/// How long either side waits for the other between messages (a restore or a checkpoint may
/// take this long).
const PATIENCE: Duration = Duration::from_secs(600);

/// The longest protocol line a peer may send.
pub const MAX_LINE: usize = 64 * 1024;

/// The largest archive frame: what the sender reads from tar at once.
pub const MAX_FRAME: usize = 1 << 20;

/// An HMAC-SHA-256 tag's length in bytes.
const TAG_LEN: usize = 32;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Message {
    Hello {
        /// Absent (0) from a build before versions were checked.
        #[serde(default)]
        version: u32,
        nonce: String,
    },
    Offer {
        #[serde(default)]
        version: u32,
        vm: String,
        /// The VM's address and the subnet it belongs to (`--net private`), "" without.
        #[serde(default)]
        address: String,
        #[serde(default)]
        subnet: String,
        /// Post-copy: the port of the sender's page server (at the address the receiver sees
        /// the sender at); 0 for stop-and-copy.
        #[serde(default)]
        pages_port: u16,
        proof: String,
    },
    Accept,
    Refuse {
        why: String,
    },
    Archive {
        size: u64,
        sha256: String,
        mac: String,
    },
    Restored,
    Release {
        mac: String,
    },
    Done {
        error: Option<String>,
    },
}

impl Message {
    /// The message's name, for an error that says what came instead of what was expected.
    fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Offer { .. } => "offer",
            Message::Accept => "accept",
            Message::Refuse { .. } => "refuse",
            Message::Archive { .. } => "archive",
            Message::Restored => "restored",
            Message::Release { .. } => "release",
            Message::Done { .. } => "done",
        }
    }
}

/// What a sender offers: a VM, and its address and subnet if it has a private network.
#[derive(Clone, Debug, Default)]
pub struct Offer {
    pub vm: String,
    pub address: String,
    pub subnet: String,
    /// Post-copy: the port the sender's page server will listen on; 0 for stop-and-copy.
    pub pages_port: u16,
}

/// How far a transfer has come, for a progress display: `sent` of `total` bytes.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A connection to a receiver that has accepted a VM and waits for its archive.
pub struct Accepted {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    nonce: String,
    token: String,
    to: String,
}

/// Asks the receiver at `to` to take VM `vm`. Fails, before anything happens to the VM, if it
/// cannot be reached, the token is wrong, or it already has a VM of that name.
pub fn offer(to: &str, token: &str, offer: &Offer) -> Result<Accepted> {
    let failed = |source: TransferError| MigrateError::Transfer {
        peer: to.to_owned(),
        source,
    };
    let stream = TcpStream::connect(to).map_err(|e| failed(TransferError::Connect(e)))?;
    stream
        .set_read_timeout(Some(PATIENCE))
        .map_err(|e| failed(TransferError::Lost(e)))?;
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .map_err(|e| failed(TransferError::Lost(e)))?,
    );
    let nonce = match read(&mut reader).map_err(failed)? {
        Message::Hello { version, nonce } => {
            check_version(version).map_err(failed)?;
            nonce
        }
        other => return Err(failed(unexpected("hello", &other))),
    };
    let mut accepted = Accepted {
        stream,
        reader,
        nonce,
        token: token.to_owned(),
        to: to.to_owned(),
    };
    let proof = mac(
        token,
        &[
            &accepted.nonce,
            "offer",
            &offer.vm,
            &offer.address,
            &offer.subnet,
            &offer.pages_port.to_string(),
        ],
    );
    accepted.send(&Message::Offer {
        version: VERSION,
        vm: offer.vm.clone(),
        address: offer.address.clone(),
        subnet: offer.subnet.clone(),
        pages_port: offer.pages_port,
        proof,
    })?;
    match read(&mut accepted.reader).map_err(failed)? {
        Message::Accept => Ok(accepted),
        Message::Refuse { why } => Err(failed(TransferError::Refused { why })),
        other => Err(failed(unexpected("accept or refuse", &other))),
    }
}

/// This side's address towards `to`: where the receiver reaches a page server of this host
/// (the address this host's packets to it come from).
pub fn local_address_towards(to: &str) -> Result<std::net::IpAddr> {
    let failed = |e| MigrateError::Transfer {
        peer: to.to_owned(),
        source: TransferError::Connect(e),
    };
    let target = std::net::ToSocketAddrs::to_socket_addrs(to)
        .map_err(failed)?
        .next()
        .ok_or_else(|| failed(std::io::Error::from(std::io::ErrorKind::AddrNotAvailable)))?;
    let unspecified: std::net::SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // A UDP socket connects without a packet: the kernel only picks the route and address.
    let probe = std::net::UdpSocket::bind(unspecified).map_err(failed)?;
    probe.connect(target).map_err(failed)?;
    Ok(probe.local_addr().map_err(failed)?.ip())
}

/// The tag that opens a post-copy page stream: the receiver's proof of the token for this
/// transfer (see [`crate::pages`]).
fn pages_tag(token: &str, nonce: &str) -> [u8; TAG_LEN] {
    keyed(token, &[nonce.as_bytes(), b"pages"])
        .finalize()
        .into_bytes()
        .into()
}

impl Accepted {
    /// The tag the receiver's page stream must open with.
    pub fn pages_tag(&self) -> [u8; TAG_LEN] {
        pages_tag(&self.token, &self.nonce)
    }

    fn send(&mut self, message: &Message) -> Result<()> {
        write(&mut self.stream, message).map_err(|e| self.failed(TransferError::Lost(e)))
    }

    fn failed(&self, source: TransferError) -> MigrateError {
        MigrateError::Transfer {
            peer: self.to.clone(),
            source,
        }
    }

    /// Sends the archive read from `archive` as it comes, and waits until the receiver has
    /// restored the VM, stopped (or says why it cannot). `finished` is asked, once `archive`
    /// ends, whether all of it was written: if not, the connection is dropped, and the receiver
    /// discards what it got. Returns the number of bytes sent and the connection, for the
    /// release.
    pub fn send_archive(
        mut self,
        archive: &mut dyn Read,
        finished: impl FnOnce() -> Result<()>,
        progress: Progress,
    ) -> Result<(u64, Restored)> {
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; MAX_FRAME];
        let mut size = 0u64;
        progress(0, 0);
        for number in 0u64.. {
            let n = archive
                .read(&mut buffer)
                .map_err(|e| self.failed(TransferError::ReadingArchive(e)))?;
            let tag = frame_tag(&self.token, &self.nonce, number, &buffer[..n]);
            let length = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
            self.stream
                .write_all(&length)
                .and_then(|()| self.stream.write_all(&buffer[..n]))
                .and_then(|()| self.stream.write_all(&tag))
                .map_err(|e| self.failed(TransferError::Lost(e)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            size += n as u64;
            progress(size, 0);
        }
        finished()?;
        let sha256 = hex(&hasher.finalize());
        let mac = mac(
            &self.token,
            &[&self.nonce, "archive", &size.to_string(), &sha256],
        );
        self.send(&Message::Archive { size, sha256, mac })?;
        progress(size, size);
        match read(&mut self.reader).map_err(|e| self.failed(e))? {
            Message::Restored => Ok((size, Restored { accepted: self })),
            Message::Done { error: Some(why) } => {
                Err(self.failed(TransferError::NotRestored { why }))
            }
            other => Err(self.failed(unexpected("restored or done", &other))),
        }
    }
}

/// A receiver that has restored the VM, stopped, and waits for the sender to let it go.
pub struct Restored {
    accepted: Accepted,
}

/// How a release ended.
#[derive(Debug)]
pub enum Released {
    /// The VM runs at the receiver.
    Running,
    /// The receiver could not let it run and has discarded its copy.
    Failed(String),
    /// The connection broke after the release was sent: the receiver may or may not run it.
    Unknown(TransferError),
}

impl Restored {
    /// Lets the VM run at the receiver, and waits for its word that it does.
    pub fn release(mut self) -> Released {
        let accepted = &mut self.accepted;
        let mac = mac(&accepted.token, &[&accepted.nonce, "release"]);
        if let Err(e) = write(&mut accepted.stream, &Message::Release { mac }) {
            return Released::Unknown(TransferError::Lost(e));
        }
        match read(&mut accepted.reader) {
            Ok(Message::Done { error: None }) => Released::Running,
            Ok(Message::Done { error: Some(why) }) => Released::Failed(why),
            Ok(other) => Released::Unknown(unexpected("done", &other)),
            Err(e) => Released::Unknown(e),
        }
    }
}

/// The receiving side: a listening socket and the token senders must know.
pub struct Receiver {
    listener: TcpListener,
    token: String,
}

/// One VM accepted: its name, and its archive to read as it arrives ([`Incoming::archive`]),
/// then check ([`Incoming::verify`]) before anything of it is used.
pub struct Incoming<'a> {
    pub vm: String,
    /// Who sent it, for messages.
    pub peer: String,
    /// Post-copy: the sender's page server, which serves the VM's memory after its restore.
    pub pages: Option<crate::criu::PageServer>,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    nonce: String,
    receiver: &'a Receiver,
    hasher: Sha256,
    size: u64,
    /// The frame being handed out, already authenticated, and how much of it was handed out.
    frame: Vec<u8>,
    taken: usize,
    /// How many frames were read: the number the next frame's tag must cover.
    frames: u64,
    ended: bool,
}

/// The archive of an [`Incoming`] as it arrives.
pub struct ArchiveReader<'i, 'a> {
    incoming: &'i mut Incoming<'a>,
    progress: Progress<'i>,
}

impl Read for ArchiveReader<'_, '_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let incoming = &mut *self.incoming;
        if buffer.is_empty() {
            return Ok(0);
        }
        if incoming.taken == incoming.frame.len() && !incoming.ended {
            incoming.next_frame()?;
            (self.progress)(incoming.size, 0);
        }
        let rest = &incoming.frame[incoming.taken..];
        let n = buffer.len().min(rest.len());
        buffer[..n].copy_from_slice(&rest[..n]);
        incoming.taken += n;
        Ok(n)
    }
}

impl Incoming<'_> {
    /// Reads the next frame whole and checks its tag; only then are its bytes handed out.
    fn next_frame(&mut self) -> std::io::Result<()> {
        let refused = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        let mut length = [0u8; 4];
        self.reader.read_exact(&mut length)?;
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_FRAME {
            return Err(refused(format!(
                "an archive frame of {length} bytes (at most {MAX_FRAME})"
            )));
        }
        self.frame.resize(length, 0);
        self.reader.read_exact(&mut self.frame)?;
        let mut tag = [0u8; TAG_LEN];
        self.reader.read_exact(&mut tag)?;
        let number = self.frames;
        if !frame_tag_verifies(&self.receiver.token, &self.nonce, number, &self.frame, &tag) {
            self.frame.clear();
            return Err(refused(format!(
                "archive frame {number} is not authentic: altered, out of order or not from \
                 the sender that offered the VM; nothing of it was used"
            )));
        }
        self.frames += 1;
        self.taken = 0;
        self.ended = length == 0;
        self.hasher.update(&self.frame);
        self.size += length as u64;
        Ok(())
    }
}

impl<'a> Incoming<'a> {
    /// The tag this side's page stream opens with.
    pub fn pages_tag(&self) -> [u8; TAG_LEN] {
        pages_tag(&self.receiver.token, &self.nonce)
    }

    /// The archive, read as it arrives; `progress` hears the bytes so far.
    pub fn archive<'i>(&'i mut self, progress: Progress<'i>) -> ArchiveReader<'i, 'a> {
        ArchiveReader {
            incoming: self,
            progress,
        }
    }

    /// Once the archive was read to its end: checks its size and SHA-256 against what the
    /// sender says they are, and that the sender's word is authentic.
    pub fn verify(&mut self) -> std::result::Result<(), TransferError> {
        if !self.ended {
            return Err(TransferError::NotReadToEnd);
        }
        let (sent, sha256, tag) = match read(&mut self.reader)? {
            Message::Archive { size, sha256, mac } => (size, sha256, mac),
            other => return Err(unexpected("archive", &other)),
        };
        if !verify(
            &self.receiver.token,
            &[&self.nonce, "archive", &sent.to_string(), &sha256],
            &tag,
        ) {
            return Err(TransferError::NotAuthentic {
                what: "archive's description",
            });
        }
        if sent != self.size {
            return Err(TransferError::Size {
                sent,
                received: self.size,
            });
        }
        let actual = hex(&std::mem::take(&mut self.hasher).finalize());
        if actual != sha256 {
            return Err(TransferError::Checksum {
                sent: sha256,
                received: actual,
            });
        }
        Ok(())
    }

    /// Tells the sender the VM is restored (stopped) here, and waits for it to let the VM go.
    /// `Err` if it does not (the connection broke, or it said something else): the caller
    /// must discard its copy, which the sender keeps.
    pub fn restored(&mut self) -> std::result::Result<(), TransferError> {
        write(&mut self.stream, &Message::Restored).map_err(TransferError::Lost)?;
        match read(&mut self.reader)? {
            Message::Release { mac }
                if verify(&self.receiver.token, &[&self.nonce, "release"], &mac) =>
            {
                Ok(())
            }
            other => Err(TransferError::NotReleased {
                received: other.name(),
            }),
        }
    }

    /// Tells the sender how it ended: `Ok` once the VM runs here, else the error and its
    /// causes, as text for the sender's message.
    pub fn finish(mut self, outcome: std::result::Result<(), &dyn std::error::Error>) {
        let _ = write(
            &mut self.stream,
            &Message::Done {
                error: outcome.err().map(feather_core::error::causes),
            },
        );
    }
}

impl Receiver {
    pub fn bind(listen: &str, token: &str) -> Result<Receiver> {
        let listener = TcpListener::bind(listen).map_err(|e| MigrateError::Transfer {
            peer: listen.to_owned(),
            source: TransferError::Listen(e),
        })?;
        Ok(Receiver {
            listener,
            token: token.to_owned(),
        })
    }

    pub fn local_addr(&self) -> String {
        self.listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Waits for the next sender and receives its VM. `check` says whether this side takes
    /// the offer (a VM of that name may be here already); its error, with its causes, is what
    /// the sender is told. Errors concern one sender only; the caller reports them and goes on
    /// serving.
    pub fn next<E: std::error::Error>(
        &self,
        check: impl Fn(&Offer) -> std::result::Result<(), E>,
    ) -> Result<Incoming<'_>> {
        let (mut stream, peer_address) =
            self.listener.accept().map_err(|e| MigrateError::Transfer {
                peer: self.local_addr(),
                source: TransferError::Lost(e),
            })?;
        let peer = peer_address.to_string();
        let failed = |source: TransferError| MigrateError::Transfer {
            peer: peer.clone(),
            source,
        };
        stream
            .set_read_timeout(Some(PATIENCE))
            .map_err(|e| failed(TransferError::Lost(e)))?;
        let mut reader = BufReader::new(
            stream
                .try_clone()
                .map_err(|e| failed(TransferError::Lost(e)))?,
        );
        let nonce = random_hex(16).map_err(|e| failed(TransferError::Nonce(e)))?;
        write(
            &mut stream,
            &Message::Hello {
                version: VERSION,
                nonce: nonce.clone(),
            },
        )
        .map_err(|e| failed(TransferError::Lost(e)))?;
        let mut refuse = |error: TransferError| {
            let why = match &error {
                TransferError::Declined { why } => why.clone(),
                other => other.to_string(),
            };
            let _ = write(&mut stream, &Message::Refuse { why });
            failed(error)
        };
        let offer = match read(&mut reader).map_err(failed)? {
            Message::Offer { version, .. } if version != VERSION => {
                return Err(refuse(TransferError::Version {
                    expected: VERSION,
                    received: version,
                }));
            }
            Message::Offer {
                version: _,
                vm,
                address,
                subnet,
                pages_port,
                proof,
            } if verify(
                &self.token,
                &[
                    &nonce,
                    "offer",
                    &vm,
                    &address,
                    &subnet,
                    &pages_port.to_string(),
                ],
                &proof,
            ) =>
            {
                Offer {
                    vm,
                    address,
                    subnet,
                    pages_port,
                }
            }
            Message::Offer { .. } => return Err(refuse(TransferError::WrongToken)),
            other => return Err(failed(unexpected("offer", &other))),
        };
        let vm = offer.vm.clone();
        let valid_name = !vm.is_empty()
            && vm
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !vm.starts_with('.');
        if !valid_name {
            return Err(refuse(TransferError::BadName { vm }));
        }
        if let Err(e) = check(&offer) {
            let why = feather_core::error::causes(&e);
            return Err(refuse(TransferError::Declined { why }));
        }
        write(&mut stream, &Message::Accept).map_err(|e| failed(TransferError::Lost(e)))?;
        let pages = (offer.pages_port != 0).then(|| crate::criu::PageServer {
            address: peer_address.ip().to_string(),
            port: offer.pages_port,
        });
        Ok(Incoming {
            vm,
            peer,
            pages,
            stream,
            reader,
            nonce,
            receiver: self,
            hasher: Sha256::new(),
            size: 0,
            frame: Vec::new(),
            taken: 0,
            frames: 0,
            ended: false,
        })
    }
}

fn write(stream: &mut TcpStream, message: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    stream.write_all(&line)
}

fn read(reader: &mut BufReader<TcpStream>) -> std::result::Result<Message, TransferError> {
    let mut line = Vec::new();
    // One more than allowed, to tell a line of exactly MAX_LINE from a longer one.
    match reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
    {
        Ok(0) => Err(TransferError::Closed),
        Ok(_) if line.len() > MAX_LINE => Err(TransferError::TooLong { limit: MAX_LINE }),
        Ok(_) => serde_json::from_slice(&line).map_err(TransferError::Garbled),
        Err(e) => Err(TransferError::Lost(e)),
    }
}

fn unexpected(expected: &'static str, received: &Message) -> TransferError {
    TransferError::Unexpected {
        expected,
        received: received.name(),
    }
}

/// A peer of another protocol version is named at connect, before anything of it is read.
fn check_version(received: u32) -> std::result::Result<(), TransferError> {
    if received == VERSION {
        Ok(())
    } else {
        Err(TransferError::Version {
            expected: VERSION,
            received,
        })
    }
}

fn keyed(token: &str, parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    for part in parts {
        mac.update(part);
        mac.update(b"\0");
    }
    mac
}

fn mac(token: &str, parts: &[&str]) -> String {
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    hex(&keyed(token, &parts).finalize().into_bytes())
}

/// Compares in constant time (through the MAC library).
fn verify(token: &str, parts: &[&str], tag: &str) -> bool {
    let Some(tag) = unhex(tag) else {
        return false;
    };
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    keyed(token, &parts).verify_slice(&tag).is_ok()
}

/// The tag of archive frame `number` of the transfer with `nonce`: the frame's number binds its
/// place, the nonce its transfer, the empty last frame the archive's end.
fn frame_tag(token: &str, nonce: &str, number: u64, bytes: &[u8]) -> [u8; TAG_LEN] {
    frame_mac(token, nonce, number, bytes)
        .finalize()
        .into_bytes()
        .into()
}

fn frame_tag_verifies(token: &str, nonce: &str, number: u64, bytes: &[u8], tag: &[u8]) -> bool {
    frame_mac(token, nonce, number, bytes)
        .verify_slice(tag)
        .is_ok()
}

fn frame_mac(token: &str, nonce: &str, number: u64, bytes: &[u8]) -> HmacSha256 {
    keyed(
        token,
        &[nonce.as_bytes(), b"frame", &number.to_be_bytes(), bytes],
    )
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buffer = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(hex(&buffer))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_verifies_only_with_the_same_token_and_parts() {
        let tag = mac("secret", &["nonce", "offer", "db1"]);
        assert!(verify("secret", &["nonce", "offer", "db1"], &tag));
        assert!(!verify("other", &["nonce", "offer", "db1"], &tag));
        assert!(!verify("secret", &["nonce", "offer", "db2"], &tag));
        assert!(!verify("secret", &["nonce2", "offer", "db1"], &tag));
        assert!(!verify("secret", &["nonce", "offer", "db1"], "zz"));
    }

    /// Sends `archive` through a relay that XORs the byte at `flip` (counted from the first
    /// byte the sender writes after the offer is accepted) and returns what the receiver's
    /// reader handed out, and how reading ended.
    fn relay_archive(archive: Vec<u8>, flip: Option<usize>) -> (Vec<u8>, std::io::Result<()>) {
        use std::net::Shutdown;
        use std::thread;

        let receiver = Receiver::bind("127.0.0.1:0", "token").unwrap();
        let relay = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay.local_addr().unwrap().to_string();
        let target = receiver.local_addr();
        thread::spawn(move || {
            let (from_sender, _) = relay.accept().unwrap();
            let to_receiver = TcpStream::connect(target).unwrap();
            let (mut back_in, mut back_out) = (
                to_receiver.try_clone().unwrap(),
                from_sender.try_clone().unwrap(),
            );
            thread::spawn(move || {
                let _ = std::io::copy(&mut back_in, &mut back_out);
                let _ = back_out.shutdown(Shutdown::Write);
            });
            // The sender's protocol lines up to the archive pass unchanged; then bytes count.
            let mut reader = BufReader::new(from_sender);
            let mut writer = to_receiver;
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).unwrap();
            writer.write_all(&line).unwrap();
            let mut offset = 0usize;
            let mut buffer = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                if let Some(at) = flip.filter(|at| (offset..offset + n).contains(at)) {
                    buffer[at - offset] ^= 0x20;
                }
                offset += n;
                if writer.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            let _ = writer.shutdown(Shutdown::Write);
        });
        let sender = thread::spawn(move || {
            let offer = Offer {
                vm: "vm".into(),
                ..Offer::default()
            };
            let accepted = offer_to(&relay_addr, &offer);
            let _ = accepted.send_archive(&mut archive.as_slice(), || Ok(()), &mut |_, _| {});
        });
        let mut incoming = receiver.next(|_| Ok::<(), TransferError>(())).unwrap();
        let mut handed_out = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let ended = loop {
            match incoming.archive(&mut |_, _| {}).read(&mut chunk) {
                Ok(0) => break incoming.verify().map_err(std::io::Error::other),
                Ok(n) => handed_out.extend_from_slice(&chunk[..n]),
                Err(e) => break Err(e),
            }
        };
        drop(incoming);
        let _ = sender.join();
        (handed_out, ended)
    }

    fn offer_to(to: &str, what: &Offer) -> Accepted {
        offer(to, "token", what).unwrap()
    }

    fn archive_of(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn an_archive_that_arrives_intact_is_handed_out_whole_and_verifies() {
        let archive = archive_of(3 * MAX_FRAME + 12345);
        let (received, ended) = relay_archive(archive.clone(), None);
        ended.unwrap();
        assert!(received == archive, "the archive arrives byte for byte");
    }

    #[test]
    fn an_altered_byte_is_refused_before_any_byte_of_its_frame_is_handed_out() {
        let archive = archive_of(3 * MAX_FRAME);
        // The first frame: its 4-byte length, then data; flip a data byte of it.
        let (received, ended) = relay_archive(archive.clone(), Some(4 + 1000));
        let error = ended.expect_err("an altered frame must be refused");
        assert!(error.to_string().contains("not authentic"), "{error}");
        assert!(
            received.is_empty(),
            "nothing of the altered first frame was used"
        );

        // An altered byte in the third frame: the two authentic frames before it were handed
        // out, nothing of the third.
        let frame = 4 + MAX_FRAME + TAG_LEN;
        let (received, ended) = relay_archive(archive.clone(), Some(2 * frame + 4 + 7));
        assert!(ended.is_err());
        assert!(
            received == archive[..2 * MAX_FRAME],
            "exactly the authentic frames"
        );

        // An altered tag is refused as well.
        let (received, ended) = relay_archive(archive, Some(4 + MAX_FRAME + 3));
        assert!(ended.is_err());
        assert!(received.is_empty());
    }

    #[test]
    fn a_receiver_of_another_version_is_named_before_anything_is_offered() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap().to_string();
        let old = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .write_all(b"{\"msg\":\"hello\",\"nonce\":\"00\"}\n")
                .unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            rest
        });
        let error = offer(&to, "token", &Offer::default()).err().unwrap();
        assert!(matches!(
            error,
            MigrateError::Transfer {
                source: TransferError::Version {
                    expected: VERSION,
                    received: 0
                },
                ..
            }
        ));
        assert!(
            feather_core::error::causes(&error)
                .contains(&format!("version 0, where this side speaks {VERSION}")),
            "{error}"
        );
        assert!(old.join().unwrap().is_empty(), "no offer was sent");
    }

    #[test]
    fn a_sender_of_another_version_is_refused_naming_both() {
        let receiver = Receiver::bind("127.0.0.1:0", "token").unwrap();
        let to = receiver.local_addr();
        let sender = std::thread::spawn(move || {
            let stream = TcpStream::connect(to).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut hello = String::new();
            reader.read_line(&mut hello).unwrap();
            assert!(hello.contains(&format!("\"version\":{VERSION}")), "{hello}");
            (&stream)
                .write_all(b"{\"msg\":\"offer\",\"version\":9,\"vm\":\"a\",\"proof\":\"\"}\n")
                .unwrap();
            let mut answer = String::new();
            reader.read_line(&mut answer).unwrap();
            answer
        });
        let error = receiver
            .next(|_| Ok::<(), TransferError>(()))
            .err()
            .unwrap();
        assert!(matches!(
            error,
            MigrateError::Transfer {
                source: TransferError::Version {
                    expected: VERSION,
                    received: 9
                },
                ..
            }
        ));
        let answer = sender.join().unwrap();
        assert!(
            answer.contains("refuse")
                && answer.contains(&format!("version 9, where this side speaks {VERSION}")),
            "{answer}"
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
    }
}

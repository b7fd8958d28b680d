//! Moving a VM archive to another host over TCP, authenticated with a shared token and
//! checksummed.
//!
//! ```text
//! sender (feather migrate)                      receiver (feather serve)
//!                                   ◀── Hello { nonce }
//! Offer { vm, proof } ──▶                       checks the token (HMAC over nonce and vm) and
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

use crate::error::{MigrateError, Result};

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
        nonce: String,
    },
    Offer {
        vm: String,
        /// The VM's address and the subnet it belongs to (`--net private`), "" without.
        #[serde(default)]
        address: String,
        #[serde(default)]
        subnet: String,
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

/// What a sender offers: a VM, and its address and subnet if it has a private network.
#[derive(Clone, Debug, Default)]
pub struct Offer {
    pub vm: String,
    pub address: String,
    pub subnet: String,
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
    let failed = |why: String| MigrateError::Transfer {
        peer: to.to_owned(),
        why,
    };
    let stream = TcpStream::connect(to).map_err(|e| failed(format!("cannot connect: {e}")))?;
    stream
        .set_read_timeout(Some(PATIENCE))
        .map_err(|e| failed(e.to_string()))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| failed(e.to_string()))?);
    let nonce = match read(&mut reader).map_err(failed)? {
        Message::Hello { nonce } => nonce,
        other => return Err(failed(format!("not a feather receiver (said {other:?})"))),
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
        ],
    );
    accepted.send(&Message::Offer {
        vm: offer.vm.clone(),
        address: offer.address.clone(),
        subnet: offer.subnet.clone(),
        proof,
    })?;
    match read(&mut accepted.reader).map_err(failed)? {
        Message::Accept => Ok(accepted),
        Message::Refuse { why } => Err(failed(format!("refused: {why}"))),
        other => Err(failed(format!("unexpected answer {other:?}"))),
    }
}

impl Accepted {
    fn send(&mut self, message: &Message) -> Result<()> {
        write(&mut self.stream, message).map_err(|e| MigrateError::Transfer {
            peer: self.to.clone(),
            why: format!("connection lost: {e}"),
        })
    }

    fn failed(&self, why: String) -> MigrateError {
        MigrateError::Transfer {
            peer: self.to.clone(),
            why,
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
                .map_err(|e| self.failed(format!("reading the archive: {e}")))?;
            let tag = frame_tag(&self.token, &self.nonce, number, &buffer[..n]);
            let length = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
            self.stream
                .write_all(&length)
                .and_then(|()| self.stream.write_all(&buffer[..n]))
                .and_then(|()| self.stream.write_all(&tag))
                .map_err(|e| self.failed(format!("connection lost while sending: {e}")))?;
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
                Err(self.failed(format!("could not restore it: {why}")))
            }
            other => Err(self.failed(format!("unexpected answer {other:?}"))),
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
    Unknown(String),
}

impl Restored {
    /// Lets the VM run at the receiver, and waits for its word that it does.
    pub fn release(mut self) -> Released {
        let accepted = &mut self.accepted;
        let mac = mac(&accepted.token, &[&accepted.nonce, "release"]);
        if let Err(e) = accepted.send(&Message::Release { mac }) {
            return Released::Unknown(e.to_string());
        }
        match read(&mut accepted.reader) {
            Ok(Message::Done { error: None }) => Released::Running,
            Ok(Message::Done { error: Some(why) }) => Released::Failed(why),
            Ok(other) => Released::Unknown(format!("unexpected answer {other:?}")),
            Err(why) => Released::Unknown(why),
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
    /// The archive, read as it arrives; `progress` hears the bytes so far.
    pub fn archive<'i>(&'i mut self, progress: Progress<'i>) -> ArchiveReader<'i, 'a> {
        ArchiveReader {
            incoming: self,
            progress,
        }
    }

    /// Once the archive was read to its end: checks its size and SHA-256 against what the
    /// sender says they are, and that the sender's word is authentic.
    pub fn verify(&mut self) -> std::result::Result<(), String> {
        if !self.ended {
            return Err("the archive was not read to its end".into());
        }
        let (sent, sha256, tag) = match read(&mut self.reader)? {
            Message::Archive { size, sha256, mac } => (size, sha256, mac),
            other => return Err(format!("unexpected message {other:?}")),
        };
        if !verify(
            &self.receiver.token,
            &[&self.nonce, "archive", &sent.to_string(), &sha256],
            &tag,
        ) {
            return Err("the archive's description is not authentic".into());
        }
        if sent != self.size {
            return Err(format!("received {} of {sent} bytes", self.size));
        }
        let actual = hex(&std::mem::take(&mut self.hasher).finalize());
        if actual != sha256 {
            return Err(format!(
                "checksum mismatch: sent {sha256}, received {actual}"
            ));
        }
        Ok(())
    }

    /// Tells the sender the VM is restored (stopped) here, and waits for it to let the VM go.
    /// `Err` if it does not (the connection broke, or it said something else): the caller
    /// must discard its copy, which the sender keeps.
    pub fn restored(&mut self) -> std::result::Result<(), String> {
        write(&mut self.stream, &Message::Restored).map_err(|e| format!("connection lost: {e}"))?;
        match read(&mut self.reader)? {
            Message::Release { mac }
                if verify(&self.receiver.token, &[&self.nonce, "release"], &mac) =>
            {
                Ok(())
            }
            other => Err(format!(
                "the sender did not release the VM (said {other:?})"
            )),
        }
    }

    /// Tells the sender how it ended: `Ok` once the VM runs here.
    pub fn finish(mut self, outcome: std::result::Result<(), String>) {
        let _ = write(
            &mut self.stream,
            &Message::Done {
                error: outcome.err(),
            },
        );
    }
}

impl Receiver {
    pub fn bind(listen: &str, token: &str) -> Result<Receiver> {
        let listener = TcpListener::bind(listen).map_err(|e| MigrateError::Transfer {
            peer: listen.to_owned(),
            why: format!("cannot listen: {e}"),
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

    /// Waits for the next sender and receives its VM. `exists` says whether a VM of a name is
    /// already here (such an offer is refused). Errors concern one sender only; the caller
    /// reports them and goes on serving.
    pub fn next(
        &self,
        check: impl Fn(&Offer) -> std::result::Result<(), String>,
    ) -> Result<Incoming<'_>> {
        let (mut stream, peer) = self.listener.accept().map_err(|e| MigrateError::Transfer {
            peer: self.local_addr(),
            why: format!("accept: {e}"),
        })?;
        let peer = peer.to_string();
        let failed = |why: String| MigrateError::Transfer {
            peer: peer.clone(),
            why,
        };
        stream
            .set_read_timeout(Some(PATIENCE))
            .map_err(|e| failed(e.to_string()))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| failed(e.to_string()))?);
        let nonce = random_hex(16).map_err(|e| failed(e.to_string()))?;
        write(
            &mut stream,
            &Message::Hello {
                nonce: nonce.clone(),
            },
        )
        .map_err(|e| failed(e.to_string()))?;
        let offer = match read(&mut reader).map_err(failed)? {
            Message::Offer {
                vm,
                address,
                subnet,
                proof,
            } if verify(
                &self.token,
                &[&nonce, "offer", &vm, &address, &subnet],
                &proof,
            ) =>
            {
                Offer {
                    vm,
                    address,
                    subnet,
                }
            }
            Message::Offer { .. } => {
                let why = "wrong token".to_owned();
                let _ = write(&mut stream, &Message::Refuse { why: why.clone() });
                return Err(failed(why));
            }
            other => return Err(failed(format!("unexpected message {other:?}"))),
        };
        let vm = offer.vm.clone();
        let valid_name = !vm.is_empty()
            && vm
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !vm.starts_with('.');
        let refused = if valid_name {
            check(&offer).err()
        } else {
            Some(format!("{vm:?} is not a VM name"))
        };
        if let Some(why) = refused {
            let _ = write(&mut stream, &Message::Refuse { why: why.clone() });
            return Err(failed(why));
        }
        write(&mut stream, &Message::Accept).map_err(|e| failed(e.to_string()))?;
        Ok(Incoming {
            vm,
            peer,
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

fn read(reader: &mut BufReader<TcpStream>) -> std::result::Result<Message, String> {
    let mut line = Vec::new();
    // One more than allowed, to tell a line of exactly MAX_LINE from a longer one.
    match reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
    {
        Ok(0) => Err("the other side closed the connection".into()),
        Ok(_) if line.len() > MAX_LINE => Err(format!(
            "a message longer than {MAX_LINE} bytes: not a feather peer"
        )),
        Ok(_) => serde_json::from_slice(&line).map_err(|e| format!("garbled message: {e}")),
        Err(e) => Err(format!("connection lost: {e}")),
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
        let mut incoming = receiver.next(|_| Ok(())).unwrap();
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
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
    }
}

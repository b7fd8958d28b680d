//! Moving a VM archive to another host over the migration channel ([`crate::channel`]: TLS 1.3,
//! and both ends' proof of the shared token bound to the session), checksummed.
//!
//! ```text
//! sender (feather migrate)                      receiver (feather serve)
//! TLS 1.3 handshake, then each end's proof of the token (see crate::channel)
//!                                   ◀── Hello { version }
//! checks the version,
//! Offer { version, vm, … } ──▶                  checks the version and
//!                                   ◀── Accept  that no VM of that name exists here (or Refuse)
//! ... checkpoints the VM, writes its archive ...
//! the archive, in frames, as tar makes it ──▶    unpacks it as it comes, aside
//! Archive { size, sha256 } ──▶                  checks size and SHA-256, imports and restores
//!                                               the VM with its processes stopped
//!                                   ◀── Restored  (or Done { error } if it could not)
//! records that it let the VM go,
//! Release ──▶                                   lets the VM's processes run
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
//! rather than misread each other (a receiver from before TLS is recognised by its plain-text
//! hello).
//!
//! One JSON object per line (at most [`MAX_LINE`] bytes: a peer cannot make the receiver buffer
//! without end); the archive in between as frames (a 4-byte big-endian length of at most
//! [`MAX_FRAME`], then that many bytes; length 0 ends it, so a cut-off archive is seen), sent
//! while tar still writes it and unpacked as it arrives, so that making, sending and unpacking
//! it overlap while the VM is frozen.
//!
//! Nothing from the network is acted on before it is authenticated: no message is read before
//! both ends proved the token, and TLS authenticates every record before a byte of it is handed
//! out — an altered byte fails its record with [`TransferError::Tampered`] and nothing of that
//! record reaches tar. The size and SHA-256 that follow the archive check the whole once more
//! (frames dropped or doubled by a bug at either end).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::channel::VERSION;
use crate::channel::{self, ClientSide, ClientStream, Security, ServerSide, ServerStream};
pub use crate::error::TransferError;
use crate::error::{MigrateError, Result};

/// How long either side waits for the other between messages (a restore or a checkpoint may
/// take this long).
const PATIENCE: Duration = Duration::from_secs(600);

/// How long a receiver waits for a sender's handshake and proof (a sender from before TLS
/// would wait for this side to speak first: it is dropped after this).
const HANDSHAKE: Duration = Duration::from_secs(30);

/// The longest protocol line a peer may send.
pub const MAX_LINE: usize = 64 * 1024;

/// The largest archive frame: what the sender reads from tar at once.
pub const MAX_FRAME: usize = 1 << 20;

/// A frame's length prefix.
const LENGTH_LEN: usize = 4;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Message {
    Hello {
        version: u32,
    },
    Offer {
        version: u32,
        vm: String,
        /// The VM's address and the subnet it belongs to (`--net private`), "" without.
        #[serde(default)]
        address: String,
        #[serde(default)]
        subnet: String,
        /// Post-copy: the port of the sender's page relay (at the address the receiver sees
        /// the sender at); 0 for stop-and-copy.
        #[serde(default)]
        pages_port: u16,
    },
    Accept,
    Refuse {
        why: String,
    },
    Archive {
        size: u64,
        sha256: String,
    },
    Restored,
    Release,
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
            Message::Release => "release",
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
    /// Post-copy: the port the sender's page relay listens on; 0 for stop-and-copy.
    pub pages_port: u16,
}

/// How far a transfer has come, for a progress display: `sent` of `total` bytes.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A connection to a receiver that has accepted a VM and waits for its archive.
pub struct Accepted {
    reader: BufReader<ClientStream>,
    /// The channel for the page stream: the same token, and only this receiver's certificate.
    pages: ClientSide,
    to: String,
}

/// Asks the receiver at `to` to take VM `vm`. Fails, before anything happens to the VM, if it
/// cannot be reached, the token is wrong, or it already has a VM of that name.
pub fn offer(to: &str, security: &Security, offer: &Offer) -> Result<Accepted> {
    let failed = |source: TransferError| MigrateError::Transfer {
        peer: to.to_owned(),
        source,
    };
    let channel = ClientSide::new(security, to)?;
    let tcp = TcpStream::connect(to).map_err(|e| failed(TransferError::Connect(e)))?;
    tcp.set_read_timeout(Some(PATIENCE))
        .map_err(|e| failed(TransferError::Lost(e)))?;
    crate::dark_peer::give_up_on_a_silent_peer(&tcp)
        .map_err(|e| failed(TransferError::Connect(e)))?;
    let stream = channel.connect(tcp).map_err(failed)?;
    let pages = match channel::receiver_certificate(&stream) {
        Some(certificate) => channel.pinned(certificate)?,
        None => {
            return Err(failed(TransferError::Tls(
                rustls::Error::NoCertificatesPresented,
            )))
        }
    };
    let mut accepted = Accepted {
        reader: BufReader::new(stream),
        pages,
        to: to.to_owned(),
    };
    match read(&mut accepted.reader).map_err(failed)? {
        Message::Hello { version } => check_version(version).map_err(failed)?,
        other => return Err(failed(unexpected("hello", &other))),
    }
    accepted.send(&Message::Offer {
        version: VERSION,
        vm: offer.vm.clone(),
        address: offer.address.clone(),
        subnet: offer.subnet.clone(),
        pages_port: offer.pages_port,
    })?;
    match read(&mut accepted.reader).map_err(failed)? {
        Message::Accept => Ok(accepted),
        Message::Refuse { why } => Err(failed(TransferError::Refused { why })),
        other => Err(failed(unexpected("accept or refuse", &other))),
    }
}

/// This side's address towards `to`: where the receiver reaches a page relay of this host
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

impl Accepted {
    /// The channel the receiver's page stream must come over: the same token, and the
    /// certificate this receiver presented.
    pub fn pages_channel(&self) -> ClientSide {
        self.pages.clone()
    }

    fn send(&mut self, message: &Message) -> Result<()> {
        write(self.reader.get_mut(), message).map_err(|e| {
            let why = self.why_broken(e);
            self.failed(why)
        })
    }

    fn failed(&self, source: TransferError) -> MigrateError {
        MigrateError::Transfer {
            peer: self.to.clone(),
            source,
        }
    }

    /// Why a write failed: the receiver may have refused what it got with a TLS alert (a
    /// record altered on the way) before it closed the connection; that is the reason to give.
    fn why_broken(&mut self, e: std::io::Error) -> TransferError {
        match channel::broken(e) {
            TransferError::Lost(e) => {
                channel::alert_from_peer(self.reader.get_mut()).unwrap_or(TransferError::Lost(e))
            }
            other => other,
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
        // The length and the bytes in one buffer: one write, so as few TLS records as may be.
        let mut frame = vec![0u8; LENGTH_LEN + MAX_FRAME];
        let mut size = 0u64;
        progress(0, 0);
        loop {
            let n = archive
                .read(&mut frame[LENGTH_LEN..])
                .map_err(|e| self.failed(TransferError::ReadingArchive(e)))?;
            let length = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
            frame[..LENGTH_LEN].copy_from_slice(&length);
            let stream = self.reader.get_mut();
            if let Err(e) = stream
                .write_all(&frame[..LENGTH_LEN + n])
                .and_then(|()| stream.flush())
            {
                let why = self.why_broken(e);
                return Err(self.failed(why));
            }
            if n == 0 {
                break;
            }
            hasher.update(&frame[LENGTH_LEN..LENGTH_LEN + n]);
            size += n as u64;
            progress(size, 0);
        }
        finished()?;
        let sha256 = hex(&hasher.finalize());
        self.send(&Message::Archive { size, sha256 })?;
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
        // Only the receiver can run the VM from here: an outage is waited out, not given up on.
        wait_out_an_outage(&accepted.reader.get_ref().sock);
        if let Err(e) = write(accepted.reader.get_mut(), &Message::Release) {
            return Released::Unknown(channel::broken(e));
        }
        match read(&mut accepted.reader) {
            Ok(Message::Done { error: None }) => Released::Running,
            Ok(Message::Done { error: Some(why) }) => Released::Failed(why),
            Ok(other) => Released::Unknown(unexpected("done", &other)),
            Err(e) => Released::Unknown(e),
        }
    }
}

/// The receiving side: a listening socket, and the channel's certificate and token.
pub struct Receiver {
    listener: TcpListener,
    channel: ServerSide,
}

/// One VM accepted: its name, and its archive to read as it arrives ([`Incoming::archive`]),
/// then check ([`Incoming::verify`]) before anything of it is used.
pub struct Incoming<'a> {
    pub vm: String,
    /// Who sent it, for messages.
    pub peer: String,
    /// Post-copy: the sender's page relay, which serves the VM's memory after its restore.
    pub pages: Option<crate::criu::PageServer>,
    reader: BufReader<ServerStream>,
    receiver: &'a Receiver,
    hasher: Sha256,
    size: u64,
    /// The frame being handed out (TLS authenticated each of its records) and how much of it
    /// was handed out.
    frame: Vec<u8>,
    taken: usize,
    ended: bool,
    /// Why the archive stopped arriving, when the channel said so (tar only hears "broken").
    broken: Option<TransferError>,
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
    /// Reads the next frame whole; TLS has authenticated every byte of it on the way.
    fn next_frame(&mut self) -> std::io::Result<()> {
        let mut length = [0u8; LENGTH_LEN];
        self.read_exact(&mut length)?;
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an archive frame of {length} bytes (at most {MAX_FRAME})"),
            ));
        }
        let mut frame = std::mem::take(&mut self.frame);
        frame.resize(length, 0);
        let read = self.read_exact(&mut frame);
        self.frame = frame;
        if let Err(e) = read {
            self.frame.clear();
            return Err(e);
        }
        self.taken = 0;
        self.ended = length == 0;
        self.hasher.update(&self.frame);
        self.size += length as u64;
        Ok(())
    }

    /// Reads from the channel; a TLS failure is kept as what it means ([`Incoming::broken`]).
    fn read_exact(&mut self, buffer: &mut [u8]) -> std::io::Result<()> {
        let read = self.reader.read_exact(buffer);
        if let Err(e) = &read {
            self.broken = channel::tls_failure(e);
        }
        read
    }
}

impl<'a> Incoming<'a> {
    /// The channel the sender's page relay expects: this receiver's certificate and token.
    pub fn pages_channel(&self) -> ServerSide {
        self.receiver.channel.clone()
    }

    /// Why the archive stopped arriving, if the channel broke (a record altered on the way:
    /// [`TransferError::Tampered`]), for an error that says so rather than tar's "broken".
    pub fn broken(&mut self) -> Option<TransferError> {
        self.broken.take()
    }

    /// The archive, read as it arrives; `progress` hears the bytes so far.
    pub fn archive<'i>(&'i mut self, progress: Progress<'i>) -> ArchiveReader<'i, 'a> {
        ArchiveReader {
            incoming: self,
            progress,
        }
    }

    /// Once the archive was read to its end: checks its size and SHA-256 against what the
    /// sender says they are.
    pub fn verify(&mut self) -> std::result::Result<(), TransferError> {
        if !self.ended {
            return Err(TransferError::NotReadToEnd);
        }
        let (sent, sha256) = match read(&mut self.reader)? {
            Message::Archive { size, sha256 } => (size, sha256),
            other => return Err(unexpected("archive", &other)),
        };
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
        write(self.reader.get_mut(), &Message::Restored).map_err(channel::broken)?;
        match read(&mut self.reader)? {
            Message::Release => {
                wait_out_an_outage(&self.reader.get_ref().sock);
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
            self.reader.get_mut(),
            &Message::Done {
                error: outcome.err().map(feather_core::error::causes),
            },
        );
    }
}

impl Receiver {
    /// Listens on `listen`; the channel's certificate is made now (or read from the files).
    pub fn bind(listen: &str, security: &Security) -> Result<Receiver> {
        let channel = ServerSide::new(security)?;
        let listener = TcpListener::bind(listen).map_err(|e| MigrateError::Transfer {
            peer: listen.to_owned(),
            source: TransferError::Listen(e),
        })?;
        Ok(Receiver { listener, channel })
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
        let (tcp, peer_address) = self.listener.accept().map_err(|e| MigrateError::Transfer {
            peer: self.local_addr(),
            source: TransferError::Lost(e),
        })?;
        let peer = peer_address.to_string();
        let failed = |source: TransferError| MigrateError::Transfer {
            peer: peer.clone(),
            source,
        };
        tcp.set_read_timeout(Some(HANDSHAKE))
            .map_err(|e| failed(TransferError::Lost(e)))?;
        crate::dark_peer::give_up_on_a_silent_peer(&tcp)
            .map_err(|e| failed(TransferError::Lost(e)))?;
        // Nothing is read from the sender but its handshake and its proof of the token.
        let stream = self.channel.accept(tcp).map_err(failed)?;
        stream
            .sock
            .set_read_timeout(Some(PATIENCE))
            .map_err(|e| failed(TransferError::Lost(e)))?;
        let mut reader = BufReader::new(stream);
        write(reader.get_mut(), &Message::Hello { version: VERSION })
            .map_err(|e| failed(channel::broken(e)))?;
        let received = read(&mut reader).map_err(failed)?;
        let mut refuse = |error: TransferError| {
            let why = match &error {
                TransferError::Declined { why } => why.clone(),
                other => other.to_string(),
            };
            let _ = write(reader.get_mut(), &Message::Refuse { why });
            failed(error)
        };
        let offer = match received {
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
            } => Offer {
                vm,
                address,
                subnet,
                pages_port,
            },
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
        write(reader.get_mut(), &Message::Accept).map_err(|e| failed(channel::broken(e)))?;
        let pages = (offer.pages_port != 0).then(|| crate::criu::PageServer {
            address: peer_address.ip().to_string(),
            port: offer.pages_port,
        });
        Ok(Incoming {
            vm,
            peer,
            pages,
            reader,
            receiver: self,
            hasher: Sha256::new(),
            size: 0,
            frame: Vec::new(),
            taken: 0,
            ended: false,
            broken: None,
        })
    }
}

/// Gives the conversation [`crate::dark_peer::AFTER_RELEASE`] once the VM is let go. A socket
/// that refuses it keeps the bound for a silent peer, which still ends the migration as a
/// broken connection does, so the release goes on.
fn wait_out_an_outage(socket: &TcpStream) {
    let _ = crate::dark_peer::wait_out_an_outage(socket);
}

fn write(stream: &mut impl Write, message: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()
}

fn read(reader: &mut impl BufRead) -> std::result::Result<Message, TransferError> {
    let mut line = Vec::new();
    // One more than allowed, to tell a line of exactly MAX_LINE from a longer one.
    match reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
    {
        Ok(0) => Err(TransferError::Closed),
        Ok(_) if line.len() > MAX_LINE => Err(TransferError::TooLong { limit: MAX_LINE }),
        Ok(_) => serde_json::from_slice(&line).map_err(TransferError::Garbled),
        Err(e) => Err(channel::broken(e)),
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security() -> Security {
        Security {
            token: "token".into(),
            files: None,
        }
    }

    /// What one relayed transfer came to: what the receiver's reader handed out, how reading
    /// ended, why the channel broke at the receiver, and how sending ended.
    struct Relayed {
        handed_out: Vec<u8>,
        ended: std::io::Result<()>,
        broken: Option<TransferError>,
        sent: Result<()>,
    }

    /// Sends `archive` through a relay that XORs the byte at `flip` (counted from the first
    /// byte the sender writes, its TLS handshake included).
    fn relay_archive(archive: Vec<u8>, flip: Option<usize>) -> Relayed {
        use std::net::Shutdown;
        use std::thread;

        let receiver = Receiver::bind("127.0.0.1:0", &security()).unwrap();
        let relay = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay.local_addr().unwrap().to_string();
        let target = receiver.local_addr();
        thread::spawn(move || {
            let (mut from_sender, _) = relay.accept().unwrap();
            let to_receiver = TcpStream::connect(target).unwrap();
            let (mut back_in, mut back_out) = (
                to_receiver.try_clone().unwrap(),
                from_sender.try_clone().unwrap(),
            );
            thread::spawn(move || {
                let _ = std::io::copy(&mut back_in, &mut back_out);
                let _ = back_out.shutdown(Shutdown::Write);
            });
            let mut writer = to_receiver;
            let mut offset = 0usize;
            let mut buffer = [0u8; 8192];
            while let Ok(n) = from_sender.read(&mut buffer) {
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
            accepted
                .send_archive(&mut archive.as_slice(), || Ok(()), &mut |_, _| {})
                .map(|_| ())
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
        let broken = incoming.broken();
        match &ended {
            Ok(()) => incoming.finish(Ok(())),
            Err(e) => incoming.finish(Err(e)),
        }
        let sent = sender.join().unwrap();
        Relayed {
            handed_out,
            ended,
            broken,
            sent,
        }
    }

    fn user_timeout(socket: &TcpStream) -> Duration {
        use nix::sys::socket::{getsockopt, sockopt};
        Duration::from_millis(getsockopt(socket, sockopt::TcpUserTimeout).unwrap().into())
    }

    /// Both ends of the conversation give up on a silent peer before the release (no
    /// TCP_USER_TIMEOUT, keepalive only) and wait out an outage after it, when only the
    /// receiver can run the VM.
    #[test]
    fn the_release_turns_both_ends_from_giving_up_to_waiting_out_an_outage() {
        let receiver = Receiver::bind("127.0.0.1:0", &security()).unwrap();
        let to = receiver.local_addr();
        let sender = std::thread::spawn(move || {
            let offer = Offer {
                vm: "vm".into(),
                ..Offer::default()
            };
            let accepted = offer_to(&to, &offer);
            let (_, restored) = accepted
                .send_archive(&mut [0u8; 16].as_slice(), || Ok(()), &mut |_, _| {})
                .unwrap();
            let socket = restored.accepted.reader.get_ref().sock.try_clone().unwrap();
            let before = user_timeout(&socket);
            let released = restored.release();
            (before, user_timeout(&socket), released)
        });
        let mut incoming = receiver.next(|_| Ok::<(), TransferError>(())).unwrap();
        std::io::copy(&mut incoming.archive(&mut |_, _| {}), &mut std::io::sink()).unwrap();
        incoming.verify().unwrap();
        let receivers_before = user_timeout(&incoming.reader.get_ref().sock);
        incoming.restored().unwrap();
        let receivers_after = user_timeout(&incoming.reader.get_ref().sock);
        incoming.finish(Ok(()));
        let (senders_before, senders_after, released) = sender.join().unwrap();
        assert!(matches!(released, Released::Running), "{released:?}");
        assert_eq!(receivers_before, Duration::ZERO);
        assert_eq!(senders_before, Duration::ZERO);
        assert_eq!(receivers_after, crate::dark_peer::AFTER_RELEASE);
        assert_eq!(senders_after, crate::dark_peer::AFTER_RELEASE);
    }

    fn offer_to(to: &str, what: &Offer) -> Accepted {
        offer(to, &security(), what).unwrap()
    }

    fn archive_of(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn an_archive_that_arrives_intact_is_handed_out_whole_and_verifies() {
        let archive = archive_of(3 * MAX_FRAME + 12345);
        let relayed = relay_archive(archive.clone(), None);
        relayed.ended.unwrap();
        assert!(
            relayed.handed_out == archive,
            "the archive arrives byte for byte"
        );
    }

    #[test]
    fn an_altered_byte_is_refused_as_tampering_and_nothing_of_its_record_is_used() {
        let archive = archive_of(3 * MAX_FRAME);
        // Deep in the archive's second frame, past the handshake and the offer.
        let relayed = relay_archive(archive.clone(), Some(MAX_FRAME + 12345));
        assert!(relayed.ended.is_err(), "an altered record must be refused");
        assert!(
            matches!(relayed.broken, Some(TransferError::Tampered(_))),
            "{:?}",
            relayed.broken
        );
        // What was handed out is what the sender sent, and stops before the altered byte.
        let out = &relayed.handed_out;
        assert!(out.len() < MAX_FRAME + 12345, "{}", out.len());
        assert!(
            archive.starts_with(out),
            "only authentic bytes were handed out"
        );
        // The sender hears it too, from the receiver's alert.
        let sent = relayed.sent.expect_err("the sender is refused");
        assert!(
            matches!(
                sent,
                MigrateError::Transfer {
                    source: TransferError::Tampered(_),
                    ..
                }
            ),
            "{sent:?}"
        );
        assert!(
            feather_core::error::causes(&sent).contains("altered on the way"),
            "{sent}"
        );
    }

    #[test]
    fn a_wrong_token_is_refused_before_anything_is_offered() {
        let receiver = Receiver::bind("127.0.0.1:0", &security()).unwrap();
        let to = receiver.local_addr();
        let sender = std::thread::spawn(move || {
            let wrong = Security {
                token: "not the token".into(),
                files: None,
            };
            offer(&to, &wrong, &Offer::default()).err().unwrap()
        });
        let error = receiver.next(|_| Ok::<(), TransferError>(())).err();
        assert!(matches!(
            error,
            Some(MigrateError::Transfer {
                source: TransferError::WrongToken,
                ..
            })
        ));
        let error = sender.join().unwrap();
        assert!(
            matches!(
                error,
                MigrateError::Transfer {
                    source: TransferError::WrongToken,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_receiver_of_another_version_is_named_before_anything_is_offered() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap().to_string();
        // A receiver from before TLS: it speaks first, in plain text.
        let old = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .write_all(b"{\"msg\":\"hello\",\"nonce\":\"00\"}\n")
                .unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            rest
        });
        let error = offer(&to, &security(), &Offer::default()).err().unwrap();
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
        let heard = old.join().unwrap();
        assert!(
            !heard.windows(5).any(|w| w == b"offer"),
            "no offer was sent"
        );
    }

    #[test]
    fn a_sender_of_another_version_is_refused_naming_both() {
        let receiver = Receiver::bind("127.0.0.1:0", &security()).unwrap();
        let to = receiver.local_addr();
        let sender = std::thread::spawn(move || {
            let channel = ClientSide::new(&security(), &to).unwrap();
            let stream = channel.connect(TcpStream::connect(&to).unwrap()).unwrap();
            let mut reader = BufReader::new(stream);
            let mut hello = String::new();
            reader.read_line(&mut hello).unwrap();
            assert!(hello.contains(&format!("\"version\":{VERSION}")), "{hello}");
            let stream = reader.get_mut();
            stream
                .write_all(b"{\"msg\":\"offer\",\"version\":9,\"vm\":\"a\"}\n")
                .unwrap();
            stream.flush().unwrap();
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
}

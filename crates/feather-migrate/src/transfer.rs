//! Moving a VM archive to another host over TCP, authenticated with a shared token and
//! checksummed.
//!
//! ```text
//! sender (feather migrate)                      receiver (feather serve)
//!                                   ◀── Hello { nonce }
//! Offer { vm, proof } ──▶                       checks the token (HMAC over nonce and vm) and
//!                                   ◀── Accept  that no VM of that name exists here (or Refuse)
//! ... checkpoints the VM, writes its archive ...
//! Archive { size, sha256, mac } + size bytes ──▶  checks size, SHA-256 and its MAC, restores
//!                                   ◀── Done { error: None } once the VM runs here
//! ```
//!
//! One JSON object per line, then the raw archive. The token never crosses the wire: each
//! message that matters carries an HMAC-SHA-256 keyed by it over the receiver's fresh nonce, so
//! a recorded exchange cannot be replayed and the archive's checksum cannot be swapped.
//! The token authenticates; it does not encrypt: use it on networks you trust, or over a tunnel.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io_at, MigrateError, Result};

type HmacSha256 = Hmac<Sha256>;

/// How long either side waits for the other between messages (a restore or a checkpoint may
/// take this long).
const PATIENCE: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Message {
    Hello {
        nonce: String,
    },
    Offer {
        vm: String,
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
    Done {
        error: Option<String>,
    },
}

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
pub fn offer(to: &str, token: &str, vm: &str) -> Result<Accepted> {
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
    let proof = mac(token, &[&accepted.nonce, "offer", vm]);
    accepted.send(&Message::Offer {
        vm: vm.to_owned(),
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

    /// Sends the archive and waits until the receiver runs the VM (or says why it cannot).
    /// Returns the number of bytes sent.
    pub fn send_archive(mut self, archive: &Path) -> Result<u64> {
        let (size, sha256) = digest(archive)?;
        let mac = mac(
            &self.token,
            &[&self.nonce, "archive", &size.to_string(), &sha256],
        );
        self.send(&Message::Archive { size, sha256, mac })?;
        let mut file = File::open(archive).map_err(io_at(archive))?;
        std::io::copy(&mut file, &mut self.stream).map_err(|e| MigrateError::Transfer {
            peer: self.to.clone(),
            why: format!("connection lost while sending: {e}"),
        })?;
        let failed = |why: String| MigrateError::Transfer {
            peer: self.to.clone(),
            why,
        };
        match read(&mut self.reader).map_err(failed)? {
            Message::Done { error: None } => Ok(size),
            Message::Done { error: Some(why) } => {
                Err(failed(format!("could not restore it: {why}")))
            }
            other => Err(failed(format!("unexpected answer {other:?}"))),
        }
    }
}

/// The receiving side: a listening socket and the token senders must know.
pub struct Receiver {
    listener: TcpListener,
    token: String,
    /// Where incoming archives are written before they are restored.
    incoming: PathBuf,
}

/// One VM received: its name and its verified archive, for the caller to restore.
pub struct Incoming<'a> {
    pub vm: String,
    pub archive: PathBuf,
    stream: TcpStream,
    _receiver: &'a Receiver,
}

impl Incoming<'_> {
    /// Tells the sender how the restore went; on `Ok` it releases the VM on its side.
    pub fn finish(mut self, outcome: std::result::Result<(), String>) {
        let _ = fs::remove_file(&self.archive);
        let _ = write(
            &mut self.stream,
            &Message::Done {
                error: outcome.err(),
            },
        );
    }
}

impl Receiver {
    pub fn bind(listen: &str, token: &str, incoming: &Path) -> Result<Receiver> {
        let listener = TcpListener::bind(listen).map_err(|e| MigrateError::Transfer {
            peer: listen.to_owned(),
            why: format!("cannot listen: {e}"),
        })?;
        fs::create_dir_all(incoming).map_err(io_at(incoming))?;
        Ok(Receiver {
            listener,
            token: token.to_owned(),
            incoming: incoming.to_path_buf(),
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
    pub fn next(&self, exists: impl Fn(&str) -> bool) -> Result<Incoming<'_>> {
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
        let vm = match read(&mut reader).map_err(failed)? {
            Message::Offer { vm, proof }
                if verify(&self.token, &[&nonce, "offer", &vm], &proof) =>
            {
                vm
            }
            Message::Offer { .. } => {
                let why = "wrong token".to_owned();
                let _ = write(&mut stream, &Message::Refuse { why: why.clone() });
                return Err(failed(why));
            }
            other => return Err(failed(format!("unexpected message {other:?}"))),
        };
        let valid_name = !vm.is_empty()
            && vm
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !vm.starts_with('.');
        if !valid_name || exists(&vm) {
            let why = if valid_name {
                format!("a VM named {vm} exists here already")
            } else {
                format!("{vm:?} is not a VM name")
            };
            let _ = write(&mut stream, &Message::Refuse { why: why.clone() });
            return Err(failed(why));
        }
        write(&mut stream, &Message::Accept).map_err(|e| failed(e.to_string()))?;
        let (size, sha256, tag) = match read(&mut reader).map_err(failed)? {
            Message::Archive { size, sha256, mac } => (size, sha256, mac),
            other => return Err(failed(format!("unexpected message {other:?}"))),
        };
        if !verify(
            &self.token,
            &[&nonce, "archive", &size.to_string(), &sha256],
            &tag,
        ) {
            return Err(failed("the archive's description is not authentic".into()));
        }
        let archive = self
            .incoming
            .join(format!("{vm}-{}.tar.zst", std::process::id()));
        let received = (|| -> std::result::Result<(), String> {
            let mut file = File::create(&archive).map_err(|e| e.to_string())?;
            let copied = std::io::copy(&mut (&mut reader).take(size), &mut file)
                .map_err(|e| format!("connection lost while receiving: {e}"))?;
            if copied != size {
                return Err(format!("received {copied} of {size} bytes"));
            }
            file.sync_all().map_err(|e| e.to_string())?;
            let (_, actual) = digest(&archive).map_err(|e| e.to_string())?;
            if actual != sha256 {
                return Err(format!(
                    "checksum mismatch: sent {sha256}, received {actual}"
                ));
            }
            Ok(())
        })();
        if let Err(why) = received {
            let _ = fs::remove_file(&archive);
            let _ = write(
                &mut stream,
                &Message::Done {
                    error: Some(why.clone()),
                },
            );
            return Err(failed(why));
        }
        Ok(Incoming {
            vm,
            archive,
            stream,
            _receiver: self,
        })
    }
}

fn write(stream: &mut TcpStream, message: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    stream.write_all(&line)
}

fn read(reader: &mut BufReader<TcpStream>) -> std::result::Result<Message, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("the other side closed the connection".into()),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("garbled message: {e}")),
        Err(e) => Err(format!("connection lost: {e}")),
    }
}

fn mac(token: &str, parts: &[&str]) -> String {
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    for part in parts {
        mac.update(part.as_bytes());
        mac.update(b"\0");
    }
    hex(&mac.finalize().into_bytes())
}

/// Compares in constant time (through the MAC library).
fn verify(token: &str, parts: &[&str], tag: &str) -> bool {
    let Some(tag) = unhex(tag) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    for part in parts {
        mac.update(part.as_bytes());
        mac.update(b"\0");
    }
    mac.verify_slice(&tag).is_ok()
}

/// Size and SHA-256 of a file.
fn digest(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(io_at(path))?;
    Ok((size, hex(&hasher.finalize())))
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

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
    }
}

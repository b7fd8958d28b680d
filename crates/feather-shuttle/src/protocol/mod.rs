//! The messages between shuttle's processes, one typed module per pair, each with its own
//! protocol version:
//!
//! ```text
//! feather-open (in a VM) ◀── SOCK_SEQPACKET ──▶ broker            [`open`]
//! broker ──argv, stdin──▶ share helper (`feather __shuttle-share`)  [`share`]
//!        ◀── stdout ─────
//! broker ──argv──▶ D-Bus proxy jail (`feather __dbus-proxy`)        [`jail`]
//! ```
//!
//! The two ends of a pair may come from different builds (the `feather` binary beside a
//! running keeper can be replaced; a VM sees the host's `feather-open`). Each pair checks the
//! other's version first, and a mismatch or a message out of turn fails with a
//! [`ProtocolError`] that names what was expected and what came, instead of being misread.
//! `ask` prompts are not a protocol: the broker's own thread writes them to a terminal.
//!
//! This module is at the bottom of the crate: it uses none of the others.

pub mod jail;
pub mod open;
pub mod share;

use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

/// The longest message of any pair.
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("expected {expected}, received {received}")]
    Unexpected {
        expected: &'static str,
        received: String,
    },
    #[error("expected {expected}, but the other side closed the connection")]
    Closed { expected: &'static str },
    #[error("while waiting for {expected}: {error}")]
    Io {
        expected: &'static str,
        error: io::Error,
    },
    #[error(
        "expected {peer} of protocol version {expected}, received version {received} \
         (install feather from one build, and restart the VMs that ran the other)"
    )]
    Version {
        peer: &'static str,
        expected: u32,
        received: u32,
    },
}

/// `Ok` if `received` is `expected`; `peer` names the other side for the message.
pub fn check_version(
    peer: &'static str,
    expected: u32,
    received: u32,
) -> Result<(), ProtocolError> {
    if received == expected {
        Ok(())
    } else {
        Err(ProtocolError::Version {
            peer,
            expected,
            received,
        })
    }
}

/// One message as JSON, or what came instead of `expected`.
pub fn decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    expected: &'static str,
) -> Result<T, ProtocolError> {
    serde_json::from_slice(bytes).map_err(|_| ProtocolError::Unexpected {
        expected,
        received: format!("{:?}", String::from_utf8_lossy(bytes)),
    })
}

/// One message as JSON. Only maps, strings and numbers: it cannot fail.
pub fn encode(message: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

/// Writes one message as a JSON line and flushes it.
pub fn send_line(to: &mut impl Write, message: &impl Serialize) -> io::Result<()> {
    let mut line = encode(message);
    line.push(b'\n');
    to.write_all(&line)?;
    to.flush()
}

/// Reads one JSON line.
pub fn receive_line<T: for<'de> Deserialize<'de>>(
    from: &mut impl BufRead,
    expected: &'static str,
) -> Result<T, ProtocolError> {
    let mut line = Vec::new();
    match from
        .by_ref()
        .take(MAX_MESSAGE as u64 + 1)
        .read_until(b'\n', &mut line)
    {
        Ok(0) => Err(ProtocolError::Closed { expected }),
        Ok(_) if line.len() > MAX_MESSAGE => Err(ProtocolError::Unexpected {
            expected,
            received: format!("a line of more than {MAX_MESSAGE} bytes"),
        }),
        Ok(_) => decode(line.trim_ascii_end(), expected),
        Err(error) => Err(ProtocolError::Io { expected, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_one_at_a_time_and_named_when_unexpected() {
        let mut stream = Vec::new();
        send_line(&mut stream, &share::Report::Hello { version: 7 }).unwrap();
        stream.extend_from_slice(b"{\"nonsense\":1}\n");
        let mut reader = io::BufReader::new(stream.as_slice());
        let hello: share::Report = receive_line(&mut reader, "hello").unwrap();
        assert!(matches!(hello, share::Report::Hello { version: 7 }));
        let error = receive_line::<share::Report>(&mut reader, "a report").unwrap_err();
        assert!(
            matches!(
                error,
                ProtocolError::Unexpected {
                    expected: "a report",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("nonsense"), "{error}");
        let closed = receive_line::<share::Report>(&mut reader, "a report").unwrap_err();
        assert!(matches!(closed, ProtocolError::Closed { .. }), "{closed}");
    }

    #[test]
    fn a_version_mismatch_names_both() {
        let error = check_version("a share helper", 1, 2).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("version 1") && message.contains("version 2"),
            "{message}"
        );
        assert!(check_version("a share helper", 3, 3).is_ok());
    }
}

//! How the host reaches a VM's service manager: it runs the manager's binary in the VM as a
//! client (`feather-svcd --vm VM --client ASK`), with one typed [`Ask`] as its argument; the
//! client talks to the manager over [`super::protocol`] and writes what came back as JSON
//! lines ([`Line`]) on its stdout, which the host reads.
//!
//! ```text
//! host (feather_vm::services)            in the VM (feather-svcd --client)      manager
//!   argv: --client {Ask}          ──▶      protocol::Request               ──▶
//!                                 ◀──  Line::Hello { version }   (first, before the ask is read)
//!                                 ◀──  Line::Answer { response }         ◀──  protocol::Response
//!                                 ◀──  Line::Log { bytes } …  (logs; -f: until the host hangs up)
//!                                 ◀──  Line::Failed { failure }  (the client could not ask)
//! ```
//!
//! The client runs inside the VM, from the VM's view of the host's root: a VM may replace it
//! with anything. The host therefore reads these lines as hostile input: each line bounded
//! ([`MAX_LINE`]), typed by serde, the hello's [`VERSION`] checked first, and every error naming
//! what was expected and what came ([`ReadError`]).

use std::io::BufRead;

use serde::{Deserialize, Serialize};

use super::protocol::{FreshState, Refusal, Response};

/// The client's flag on the manager binary's command line; its value is one [`Ask`] in JSON.
pub const CLIENT_FLAG: &str = "--client";

/// The version of these lines and of [`Ask`]; raise it with any change a peer of the previous
/// version would misread.
pub const VERSION: u32 = 1;

/// The longest line the host reads: a list of every unit of a VM fits many times over.
pub const MAX_LINE: usize = 8 << 20;

/// The longest piece of a log line sent in one [`Line::Log`]; longer lines come in pieces.
pub const LOG_PIECE: usize = 64 << 10;

/// One thing the host asks of a VM's service manager, through the client.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum Ask {
    /// Start units with their dependency closure (starting the manager if none runs).
    Start {
        units: Vec<String>,
        fresh_state: FreshState,
    },
    /// Stop units; refused with [`Failure::NoServices`] where no manager runs.
    Stop { units: Vec<String> },
    /// Reload units; refused with [`Failure::NoServices`] where no manager runs.
    Reload { units: Vec<String> },
    /// Stop those of the units that run (one never started is simply started), then start.
    Restart { units: Vec<String> },
    /// Every unit the manager knows (none if no manager runs).
    List,
    /// One unit, with the last `lines` of its log.
    Status { unit: String, lines: usize },
    /// The last `lines` of a unit's log, then (with `follow`) what is appended, until the host
    /// hangs up.
    Logs {
        unit: String,
        lines: usize,
        follow: bool,
    },
}

/// One line of the client's stdout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "line", rename_all = "snake_case")]
pub enum Line {
    /// The first line: the client's [`VERSION`].
    Hello { version: u32 },
    /// The manager's answer to the ask (for a restart: to its start, or the refusal of a stop).
    Answer { response: Response },
    /// A line of a unit's log (or a piece of one, at most [`LOG_PIECE`] bytes), without its end.
    Log { bytes: Vec<u8> },
    /// The client could not ask.
    Failed { failure: Failure },
}

/// Why the client could not ask the manager; the host names the VM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// A stop or reload where no manager runs.
    #[error("runs no services")]
    NoServices,
    /// The unit's log does not exist (the unit was never started).
    #[error("{unit} has no log yet (it has not been started)")]
    NoLog { unit: String },
    /// The manager refused what the client asked it on the way (the unit of `logs`).
    #[error("{refusal}")]
    Refused { refusal: Refusal },
    /// The manager could not be reached or started, or the exchange with it failed.
    #[error("{message}")]
    Manager { message: String },
    /// The ask is no [`Ask`] of the client's version (a host of another build; the host has
    /// its hello, with that version, before this).
    #[error(
        "the service client (protocol version {version}) cannot read what it was asked: {problem}"
    )]
    UnreadableAsk { version: u32, problem: String },
    /// The unit's log could not be read.
    #[error("{path}: {message}")]
    Log { path: String, message: String },
}

impl Line {
    /// The line's name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Line::Hello { .. } => "hello",
            Line::Answer { .. } => "answer",
            Line::Log { .. } => "log",
            Line::Failed { .. } => "failed",
        }
    }
}

/// What is wrong with the client's output, as the host reads it.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the service client's output: {0}")]
    Io(#[from] std::io::Error),
    #[error("a line of the service client's output is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("the service client wrote {received} where {expected} was expected")]
    Unexpected {
        expected: &'static str,
        received: String,
    },
    /// The output ended (the client exited or crashed) where `expected` was to come.
    #[error("the service client's output ended where {expected} was expected")]
    Ended { expected: &'static str },
    #[error(
        "protocol version mismatch with the service client in the VM: expected {expected}, \
         received {received}; the VM's feather-svcd is another build than this feather's"
    )]
    VersionMismatch { expected: u32, received: u32 },
}

/// Reads the next line (without its end) into `line`, at most [`MAX_LINE`] bytes; `false` at
/// the end of the output.
pub fn read_raw(from: &mut impl BufRead, line: &mut Vec<u8>) -> Result<bool, ReadError> {
    line.clear();
    loop {
        let available = from.fill_buf()?;
        if available.is_empty() {
            return Ok(!line.is_empty());
        }
        let (taken, ended) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (end + 1, true),
            None => (available.len(), false),
        };
        let content = if ended { taken - 1 } else { taken };
        if line.len() + content > MAX_LINE {
            return Err(ReadError::TooLong);
        }
        line.extend_from_slice(&available[..content]);
        from.consume(taken);
        if ended {
            return Ok(true);
        }
    }
}

/// Reads the next [`Line`]; `None` at the end of the output.
pub fn read_line(from: &mut impl BufRead) -> Result<Option<Line>, ReadError> {
    let mut raw = Vec::new();
    if !read_raw(from, &mut raw)? {
        return Ok(None);
    }
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|e| ReadError::Unexpected {
            expected: "a line of the service client's protocol",
            received: describe(&raw, &e),
        })
}

/// Reads the client's hello and checks its version.
pub fn read_hello(from: &mut impl BufRead) -> Result<(), ReadError> {
    match read_line(from)? {
        Some(Line::Hello { version }) if version == VERSION => Ok(()),
        Some(Line::Hello { version }) => Err(ReadError::VersionMismatch {
            expected: VERSION,
            received: version,
        }),
        Some(other) => Err(ReadError::Unexpected {
            expected: "hello",
            received: other.kind().to_owned(),
        }),
        None => Err(ReadError::Ended { expected: "hello" }),
    }
}

/// What came instead of a line: its start (it may be long) and why it is not one.
fn describe(raw: &[u8], error: &serde_json::Error) -> String {
    const SHOWN: usize = 80;
    let start = String::from_utf8_lossy(&raw[..raw.len().min(SHOWN)]);
    let more = if raw.len() > SHOWN { "…" } else { "" };
    format!("{start:?}{more} ({error})")
}

/// Writes one line to `to` and flushes it (the host reads as the client writes).
pub fn write_line(to: &mut impl std::io::Write, line: &Line) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(line)?;
    bytes.push(b'\n');
    to.write_all(&bytes)?;
    to.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> std::io::Cursor<Vec<u8>> {
        std::io::Cursor::new(text.as_bytes().to_vec())
    }

    #[test]
    fn a_hello_of_this_version_then_an_answer_are_read() {
        let mut out = Vec::new();
        write_line(&mut out, &Line::Hello { version: VERSION }).unwrap();
        let answer = Line::Answer {
            response: Response::List { units: Vec::new() },
        };
        write_line(&mut out, &answer).unwrap();
        let mut input = std::io::Cursor::new(out);
        read_hello(&mut input).unwrap();
        assert_eq!(read_line(&mut input).unwrap(), Some(answer));
        assert_eq!(read_line(&mut input).unwrap(), None);
    }

    #[test]
    fn another_version_is_named_with_both() {
        let error = read_hello(&mut lines("{\"line\":\"hello\",\"version\":9}\n")).unwrap_err();
        assert!(
            matches!(
                error,
                ReadError::VersionMismatch {
                    expected: VERSION,
                    received: 9
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn what_is_not_a_line_is_named_as_what_came() {
        let error = read_hello(&mut lines("nginx running\n")).unwrap_err();
        match &error {
            ReadError::Unexpected { expected, received } => {
                assert_eq!(*expected, "a line of the service client's protocol");
                assert!(received.starts_with("\"nginx running\""), "{received}");
            }
            other => panic!("{other:?}"),
        }
        let error = read_hello(&mut lines(
            "{\"line\":\"answer\",\"response\":{\"result\":\"list\",\"units\":[]}}\n",
        ))
        .unwrap_err();
        assert!(
            matches!(&error, ReadError::Unexpected { expected: "hello", received } if received == "answer"),
            "{error:?}"
        );
        assert!(matches!(
            read_hello(&mut lines("")).unwrap_err(),
            ReadError::Ended { expected: "hello" }
        ));
    }

    #[test]
    fn a_line_longer_than_the_bound_is_refused_before_it_is_all_read() {
        let mut input = std::io::BufReader::new(std::io::repeat(b'x'));
        assert!(matches!(
            read_line(&mut input).unwrap_err(),
            ReadError::TooLong
        ));
    }

    #[test]
    fn asks_keep_their_json_form() {
        let ask = Ask::Logs {
            unit: "nginx".into(),
            lines: 3,
            follow: true,
        };
        let json = serde_json::to_string(&ask).unwrap();
        assert_eq!(
            json,
            r#"{"ask":"logs","unit":"nginx","lines":3,"follow":true}"#
        );
        assert_eq!(serde_json::from_str::<Ask>(&json).unwrap(), ask);
    }
}

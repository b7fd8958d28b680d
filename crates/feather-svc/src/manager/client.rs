//! The in-VM client of the service manager: `feather-svcd --vm VM --client ASK`, run in the VM
//! by the host (feather_vm::services). It asks the manager one [`Ask`] over
//! [`super::protocol`] and writes what came back as [`Line`]s on stdout
//! ([`super::client_protocol`]); the host formats them. It prints nothing for people.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client_protocol::{self, Ask, Failure, Line, LOG_PIECE};
use super::protocol::{FreshState, Refusal, Request, Response, LOG_DIR};

/// Runs the client for `ask` (its JSON) in VM `vm`: its hello first (so that a host of another
/// build learns both versions before anything else), then what came of the ask. The exit
/// status is 0 once an answer or a failure was written, 1 if not even that could be done.
pub fn main(vm: &str, ask: &str) -> i32 {
    let mut out = std::io::stdout().lock();
    let hello = Line::Hello {
        version: client_protocol::VERSION,
    };
    let written = client_protocol::write_line(&mut out, &hello).and_then(|()| {
        let line = match serde_json::from_str::<Ask>(ask) {
            Err(e) => Line::Failed {
                failure: Failure::UnreadableAsk {
                    version: client_protocol::VERSION,
                    problem: e.to_string(),
                },
            },
            Ok(ask) => match answer(vm, ask, &mut out) {
                Ok(Some(response)) => Line::Answer { response },
                Ok(None) => return Ok(()),
                Err(failure) => Line::Failed { failure },
            },
        };
        client_protocol::write_line(&mut out, &line)
    });
    match written {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Asks the manager; `None` when the answer was the log lines already written.
fn answer(vm: &str, ask: Ask, out: &mut impl Write) -> Result<Option<Response>, Failure> {
    let request = match ask {
        Ask::Logs {
            unit,
            lines,
            follow,
        } => return logs(&unit, lines, follow, out).map(|()| None),
        Ask::Start { units, fresh_state } => Request::Start { units, fresh_state },
        Ask::Restart { units } => {
            if let Some(refusal) = stop_running(&units)? {
                return Ok(Some(refusal));
            }
            Request::Start {
                units,
                fresh_state: FreshState::No,
            }
        }
        Ask::Stop { units } => Request::Stop { units },
        Ask::Reload { units } => Request::Reload { units },
        Ask::List => Request::List,
        Ask::Status { unit, lines } => Request::Status { unit, lines },
    };
    if matches!(request, Request::Stop { .. } | Request::Reload { .. }) && !super::running() {
        return Err(Failure::NoServices);
    }
    let starts = matches!(request, Request::Start { .. });
    call(&request, starts.then_some(vm)).map(Some)
}

/// For a restart: stops those of `units` that run; a unit never started is simply started
/// later (its stop's `NotStarted` refusal is expected). Another refusal is the answer.
fn stop_running(units: &[String]) -> Result<Option<Response>, Failure> {
    if !super::running() {
        return Ok(None);
    }
    for unit in units {
        let stop = Request::Stop {
            units: vec![unit.clone()],
        };
        match call(&stop, None)? {
            Response::Error {
                error: Refusal::NotStarted { .. },
            } => {}
            refused @ Response::Error { .. } => return Ok(Some(refused)),
            _ => {}
        }
    }
    Ok(None)
}

fn call(request: &Request, start_if_absent: Option<&str>) -> Result<Response, Failure> {
    super::call(request, start_if_absent).map_err(|e| Failure::Manager {
        message: e.to_string(),
    })
}

/// Writes the last `lines` of a unit's log, then (with `follow`) what is appended.
fn logs(unit: &str, lines: usize, follow: bool, out: &mut impl Write) -> Result<(), Failure> {
    let path = log_path(unit)?;
    let shown = path.display().to_string();
    let io = |e: std::io::Error| Failure::Log {
        path: shown.clone(),
        message: e.to_string(),
    };
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => {
            return Err(Failure::NoLog {
                unit: log_unit(&path),
            })
        }
        // Wait for the first start to make it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => wait_for(&path),
        Err(e) => return Err(io(e)),
    };
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(io)?;
    let all: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    let all = match all.split_last() {
        Some(([], rest)) => rest,
        _ => &all[..],
    };
    for line in &all[all.len().saturating_sub(lines)..] {
        write_log_line(out, line).map_err(io)?;
    }
    if follow {
        let position = file.seek(SeekFrom::End(0)).map_err(io)?;
        follow_log(&path, file, position, out).map_err(io)?;
    }
    Ok(())
}

/// The log of a unit: the manager knows its real name (an alias, a name without .service).
fn log_path(unit: &str) -> Result<PathBuf, Failure> {
    let status = Request::Status {
        unit: unit.to_owned(),
        lines: 0,
    };
    let name = match super::call(&status, None) {
        Ok(Response::Status { unit, .. }) => unit.name,
        Ok(Response::Error { error }) => return Err(Failure::Refused { refusal: error }),
        _ => crate::UnitName::parse(unit)
            .map_err(|e| Failure::Manager {
                message: e.to_string(),
            })?
            .to_string(),
    };
    Ok(Path::new(LOG_DIR).join(format!("{name}.log")))
}

fn log_unit(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn wait_for(path: &Path) -> File {
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(file) = File::open(path) {
            return file;
        }
    }
}

/// Writes what is appended to the log from `position` on, until the host hangs up (a write
/// fails).
fn follow_log(
    path: &Path,
    mut file: File,
    mut position: u64,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut unfinished = Vec::new();
    let mut buffer = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let length = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if length < position {
            // Truncated or replaced: start from its beginning.
            file = File::open(path)?;
            position = 0;
        }
        file.seek(SeekFrom::Start(position))?;
        buffer.clear();
        position += file.read_to_end(&mut buffer)? as u64;
        unfinished.extend_from_slice(&buffer);
        if let Some(end) = unfinished.iter().rposition(|&b| b == b'\n') {
            let finished: Vec<u8> = unfinished.drain(..=end).collect();
            for line in finished[..end].split(|&b| b == b'\n') {
                write_log_line(out, line)?;
            }
        } else if unfinished.len() >= LOG_PIECE {
            write_log_line(out, &std::mem::take(&mut unfinished))?;
        }
    }
}

/// Writes one log line, in pieces of at most [`LOG_PIECE`] bytes.
fn write_log_line(out: &mut impl Write, line: &[u8]) -> std::io::Result<()> {
    let mut pieces = line.chunks(LOG_PIECE).peekable();
    if pieces.peek().is_none() {
        return client_protocol::write_line(out, &Line::Log { bytes: Vec::new() });
    }
    for piece in pieces {
        client_protocol::write_line(
            out,
            &Line::Log {
                bytes: piece.to_vec(),
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(out: &[u8]) -> Vec<Line> {
        let mut input = std::io::Cursor::new(out.to_vec());
        std::iter::from_fn(|| client_protocol::read_line(&mut input).unwrap()).collect()
    }

    #[test]
    fn a_long_log_line_goes_in_pieces_and_an_empty_one_as_itself() {
        let mut out = Vec::new();
        write_log_line(&mut out, &vec![b'x'; LOG_PIECE + 1]).unwrap();
        write_log_line(&mut out, b"").unwrap();
        let sizes: Vec<usize> = lines(&out)
            .into_iter()
            .map(|line| match line {
                Line::Log { bytes } => bytes.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [LOG_PIECE, 1, 0]);
    }

    #[test]
    fn an_unreadable_ask_is_a_typed_failure_naming_the_version() {
        let failure = serde_json::from_str::<Ask>("{\"ask\":\"reboot\"}")
            .map_err(|e| Failure::UnreadableAsk {
                version: client_protocol::VERSION,
                problem: e.to_string(),
            })
            .unwrap_err();
        let text = failure.to_string();
        assert!(
            text.contains("version 1") && text.contains("reboot"),
            "{text}"
        );
    }
}

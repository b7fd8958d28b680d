//! `ask` rules: the person at the terminal that started the VM decides. With no terminal, or
//! no answer in time, the request is denied.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::board::{Board, Posted};
use crate::policy::{Request, Rule};

/// How long a question waits for its answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// The answer to one question.
#[derive(Debug)]
pub enum Answer {
    Yes(AnsweredAt),
    No(AnsweredAt),
    /// No one to ask, or no answer in time.
    NoOne(NoAnswer),
}

/// Where a question was answered.
#[derive(Debug)]
pub enum AnsweredAt {
    Terminal(PathBuf),
    WebView,
}

impl std::fmt::Display for AnsweredAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnsweredAt::Terminal(terminal) => write!(f, "at {}", terminal.display()),
            AnsweredAt::WebView => f.write_str("from the web view"),
        }
    }
}

/// Why no one answered.
#[derive(Debug, thiserror::Error)]
pub enum NoAnswer {
    #[error("no terminal started this VM, and no web view of its state root is open")]
    NoTerminal,
    #[error("cannot open {}: {error}", terminal.display())]
    Open {
        terminal: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write to {}: {error}", terminal.display())]
    Write {
        terminal: PathBuf,
        error: std::io::Error,
    },
    #[error("no answer {asked} within {}s", within.as_secs())]
    Timeout { asked: String, within: Duration },
}

/// Asks whether `request` may go ahead: on `terminal` (the one that started the source VM)
/// and, while a web view of the state root is open, on its `board`; the first answer counts.
/// Only "y" or "yes" on the terminal allows.
pub fn ask(
    terminal: Option<&Path>,
    board: &Board,
    request: &Request,
    rule: &Rule,
    within: Duration,
) -> Answer {
    let watched = board.watched();
    let mut tty = match terminal {
        Some(terminal) => match put_question(terminal, request, rule) {
            Ok(tty) => Some((tty, terminal)),
            Err(why) if !watched => return Answer::NoOne(why),
            Err(_) => None,
        },
        None if watched => None,
        None => return Answer::NoOne(NoAnswer::NoTerminal),
    };
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| (now + within).as_secs());
    let posted = if watched {
        board.post(request, rule, until).ok()
    } else {
        None
    };
    let deadline = Instant::now() + within;
    loop {
        if let Some(allow) = posted.as_ref().and_then(Posted::answer) {
            if let Some((tty, _)) = &mut tty {
                let word = if allow { "allowed" } else { "denied" };
                let _ = write!(tty, "(answered from the web view: {word})\r\n");
            }
            return if allow {
                Answer::Yes(AnsweredAt::WebView)
            } else {
                Answer::No(AnsweredAt::WebView)
            };
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let asked = match &mut tty {
                Some((tty, terminal)) => {
                    let _ = tty.write_all(b"(no answer: denied)\r\n");
                    format!("at {}", terminal.display())
                }
                None => "from the web view".to_owned(),
            };
            return Answer::NoOne(NoAnswer::Timeout { asked, within });
        }
        // A short look at each in turn, so whichever answers first is heard at once.
        let slice = left.min(LOOK_EVERY);
        match &mut tty {
            Some((tty, terminal)) => {
                if let Some(allow) = read_answer(tty, slice) {
                    let at = AnsweredAt::Terminal(terminal.to_path_buf());
                    return if allow {
                        Answer::Yes(at)
                    } else {
                        Answer::No(at)
                    };
                }
            }
            None => std::thread::sleep(slice),
        }
    }
}

/// How often a question waiting on both a terminal and the board looks at each.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Opens `terminal` and puts the question there.
fn put_question(terminal: &Path, request: &Request, rule: &Rule) -> Result<File, NoAnswer> {
    let mut tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(terminal)
        .map_err(|error| NoAnswer::Open {
            terminal: terminal.to_path_buf(),
            error,
        })?;
    // The object is the VM's choice: escaped, so it cannot redraw the question.
    let question = format!(
        "\r\nfeather: {} asks for {} {} of {} ({} at {}). Allow? [y/N] ",
        request.source,
        request.kind,
        feather_core::display::escape_for_terminal(&request.object),
        request.target,
        rule.verdict,
        rule.at
    );
    tty.write_all(question.as_bytes())
        .map_err(|error| NoAnswer::Write {
            terminal: terminal.to_path_buf(),
            error,
        })?;
    Ok(tty)
}

/// The terminal's answer if one came within `within`: "y" or "yes" allows, anything else
/// refuses.
fn read_answer(tty: &mut File, within: Duration) -> Option<bool> {
    let mut fds = [PollFd::new(tty.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(within).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(n) if n > 0 => {}
        _ => return None,
    }
    let mut line = [0u8; 64];
    let read = tty.read(&mut line).unwrap_or(0);
    let answer = String::from_utf8_lossy(&line[..read])
        .trim()
        .to_ascii_lowercase();
    Some(matches!(answer.as_str(), "y" | "yes"))
}

//! `ask` rules: the person at the terminal that started the VM decides. With no terminal, or
//! no answer in time, the request is denied.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::policy::{Request, Rule};

/// How long a question waits for its answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// The answer to one question.
#[derive(Debug)]
pub enum Answer {
    Yes,
    No,
    /// No terminal to ask, or no answer in time.
    NoOne(NoAnswer),
}

/// Why no one answered.
#[derive(Debug, thiserror::Error)]
pub enum NoAnswer {
    #[error("no terminal started this VM")]
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
    #[error("no answer at {} within {}s", terminal.display(), within.as_secs())]
    Timeout { terminal: PathBuf, within: Duration },
}

/// Asks on `terminal` whether `request` may go ahead. Only "y" or "yes" allows.
pub fn ask(terminal: Option<&Path>, request: &Request, rule: &Rule, within: Duration) -> Answer {
    let Some(terminal) = terminal else {
        return Answer::NoOne(NoAnswer::NoTerminal);
    };
    let mut tty = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(terminal)
    {
        Ok(tty) => tty,
        Err(error) => {
            return Answer::NoOne(NoAnswer::Open {
                terminal: terminal.to_path_buf(),
                error,
            })
        }
    };
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
    if let Err(error) = tty.write_all(question.as_bytes()) {
        return Answer::NoOne(NoAnswer::Write {
            terminal: terminal.to_path_buf(),
            error,
        });
    }
    let mut fds = [PollFd::new(tty.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(within).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(n) if n > 0 => {}
        _ => {
            let _ = tty.write_all(b"(no answer: denied)\r\n");
            return Answer::NoOne(NoAnswer::Timeout {
                terminal: terminal.to_path_buf(),
                within,
            });
        }
    }
    let mut line = [0u8; 64];
    let read = tty.read(&mut line).unwrap_or(0);
    let answer = String::from_utf8_lossy(&line[..read])
        .trim()
        .to_ascii_lowercase();
    if matches!(answer.as_str(), "y" | "yes") {
        Answer::Yes
    } else {
        Answer::No
    }
}

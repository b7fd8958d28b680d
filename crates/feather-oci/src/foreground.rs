//! A container's program in the foreground: `run` and `exec` without `--detach` wait for it,
//! pass on the signals they get, and return its exit status. Without `--console-socket` and
//! with a terminal (`process.terminal`, `exec --tty`), they relay the terminal themselves, as
//! runc does: the program gets a pty of the container's devpts, whose master comes back over a
//! socket (the one an engine's console socket would be), and this side copies between its own
//! stdin/stdout and that master, with its own terminal in raw mode meanwhile.
//!
//! One poll waits for everything: the blocked signals (a signalfd), the program's end (a
//! pidfd), the terminal's master and stdin.

use std::io::IsTerminal;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// What the foreground command passes on to the program (SIGWINCH resizes a relayed terminal
/// instead).
const FORWARDED: [Signal; 9] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
    Signal::SIGALRM,
    Signal::SIGWINCH,
];

/// Signals held from now on, to be passed on by [`Foreground::wait`]. Taken after the
/// program's process was forked (a blocked mask is inherited across fork and exec).
pub struct Foreground {
    signals: SignalFd,
}

impl Foreground {
    pub fn hold_signals() -> Result<Foreground> {
        let signals =
            feather_sys::process::block_signals(&FORWARDED).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Foreground { signals })
    }

    /// Waits for `pid`, a child of this process, relaying `terminal` (a pty master) if
    /// given; returns its exit code (128 + the signal that ended it).
    pub fn wait(self, pid: Pid, terminal: Option<OwnedFd>) -> Result<i32> {
        let pidfd = feather_sys::process::pidfd_open(pid).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut terminal = terminal.map(Relay::new);
        let mut ended = false;
        loop {
            if ended && terminal.as_ref().is_none_or(|t| !t.master_open) {
                break;
            }
            let mut fds = vec![
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(relay) = &terminal {
                fds.extend(relay.poll_fds());
            }
            // Once the program ended, its terminal is read until it stays quiet a moment
            // (a background process may hold it open).
            let timeout = if ended {
                PollTimeout::from(100u16)
            } else {
                PollTimeout::NONE
            };
            let ready: Vec<bool> = match poll(&mut fds, timeout) {
                Ok(0) => break,
                Ok(_) => fds
                    .iter()
                    .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                    .collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(error) => return Err(error).context("wait for the container's program"),
            };
            drop(fds);
            if ready[0] {
                self.pass_on(&pidfd, terminal.as_ref());
            }
            ended |= ready[1];
            if let Some(relay) = &mut terminal {
                relay.handle(&ready[2..]);
            }
        }
        drop(terminal);
        loop {
            match waitpid(pid, None).context("wait for the container's program")? {
                WaitStatus::Exited(_, code) => return Ok(code),
                WaitStatus::Signaled(_, signal, _) => return Ok(128 + signal as i32),
                _ => {}
            }
        }
    }

    fn pass_on(&self, pidfd: &OwnedFd, terminal: Option<&Relay>) {
        let Ok(Some(info)) = self.signals.read_signal() else {
            return;
        };
        let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
            return;
        };
        match (signal, terminal) {
            (Signal::SIGWINCH, Some(relay)) => relay.copy_window_size(),
            (Signal::SIGWINCH, None) => {}
            _ => {
                let _ = feather_sys::process::signal(pidfd, signal);
            }
        }
    }
}

/// A listening socket to give `create` as its `--console-socket` when `run` relays the
/// terminal itself; removed when dropped.
pub struct ConsoleListener {
    listener: UnixListener,
    pub path: PathBuf,
}

impl ConsoleListener {
    /// A socket in the runtime's root (the caller's own folder, mode 0700, made and judged by
    /// [`crate::store::root_dir`] before), named after the container.
    pub fn new(root: &Path, id: &str) -> Result<ConsoleListener> {
        let path = root.join(format!(".{id}.console.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("a console socket at {}", path.display()))?;
        Ok(ConsoleListener { listener, path })
    }

    /// The terminal's master, which the container's init sent during `create`.
    pub fn receive(&self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .context("process.terminal: the container's init sent no terminal")?;
        receive_master(&stream)
    }
}

impl Drop for ConsoleListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The master of a pty sent over `socket` (as to an engine's console socket).
pub fn receive_master(socket: &UnixStream) -> Result<OwnedFd> {
    let mut name = [0u8; 64];
    let (_, fds) = feather_sys::fdpass::receive(socket, &mut name)
        .context("process.terminal: receive the terminal")?;
    match fds.into_iter().next() {
        Some(master) => Ok(master),
        None => bail!("process.terminal: the container's init sent no terminal"),
    }
}

/// The copying between this side's stdio and a terminal's master, with this side's own
/// terminal (if stdin is one) in raw mode until dropped.
struct Relay {
    master: OwnedFd,
    master_open: bool,
    stdin_open: bool,
    saved: Option<Termios>,
}

impl Relay {
    fn new(master: OwnedFd) -> Relay {
        let mut relay = Relay {
            master,
            master_open: true,
            stdin_open: true,
            saved: None,
        };
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            relay.copy_window_size();
            if let Ok(saved) = termios::tcgetattr(&stdin) {
                let mut raw = saved.clone();
                termios::cfmakeraw(&mut raw);
                let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw);
                relay.saved = Some(saved);
            }
        }
        relay
    }

    fn copy_window_size(&self) {
        if let Some(size) = feather_sys::pty::window_size(&std::io::stdin()) {
            feather_sys::pty::set_window_size(&self.master, &size);
        }
    }

    /// The master while open, then stdin while open.
    fn poll_fds(&self) -> Vec<PollFd<'_>> {
        let master = self
            .master_open
            .then(|| PollFd::new(self.master.as_fd(), PollFlags::POLLIN));
        let stdin = self
            .stdin_open
            .then(|| PollFd::new(feather_sys::process::standard_fd(0), PollFlags::POLLIN));
        master.into_iter().chain(stdin).collect()
    }

    /// Copies what [`Relay::poll_fds`] found ready.
    fn handle(&mut self, ready: &[bool]) {
        let mut next = 0;
        if self.master_open {
            if ready.get(next) == Some(&true)
                && !feather_sys::pty::relay_available(
                    self.master.as_fd(),
                    feather_sys::process::standard_fd(1),
                )
            {
                self.master_open = false;
            }
            next += 1;
        }
        if self.stdin_open
            && ready.get(next) == Some(&true)
            && !feather_sys::pty::relay_available(
                feather_sys::process::standard_fd(0),
                self.master.as_fd(),
            )
        {
            self.stdin_open = false;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}

//! `feather exec`: runs a program inside a running VM. The program is started by the VM's init
//! (see [`crate::commands`]), so it descends from init like every other process of the VM: it
//! shares the VM's namespaces, cgroup, confinement and Landlock domain. This side sends the
//! request with its stdin, stdout and stderr (or, with `-t`, a terminal of the VM's devpts),
//! relays signals and the terminal, and returns the program's exit code.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use feather_core::{Error, StateRoot, VmName, VmStatus};
use feather_sys::process;
use feather_sys::pty;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::termios::{self, SetArg, Termios};
use nix::unistd::Pid;

use crate::commands::{self, FromInit, ToInit};
use crate::error::{failed, InVm, Result};
use crate::workload::Workload;

/// Exit code when feather itself could not run the command (as `docker exec` uses).
pub const EXIT_CANNOT_EXEC: i32 = 126;

/// Runs `workload` in the running VM `name` and returns its exit code. The caller is left in the
/// VM's network namespace (and, with `tty`, its mount namespace): call this last, or from a
/// child process.
pub fn exec(root: &StateRoot, name: &VmName, workload: &Workload, tty: bool) -> Result<i32> {
    let vm = root.open(name)?;
    let state = vm.read_state()?;
    let (VmStatus::Running, Some(init_pid)) = (state.status, state.init_pid) else {
        return Err(Error::NotRunning(name.to_string()).into());
    };
    let init = Pid::from_raw(init_pid);
    let pidfd = process::pidfd_open(init).in_vm(name)?;
    // The pidfd pins the process; the start time proves it is our init and not a newcomer
    // that reused the pid.
    if process::start_ticks(init) != state.init_start_ticks {
        return Err(Error::NotRunning(name.to_string()).into());
    }
    let channel = commands::connect_to_init(init, &pidfd)
        .map_err(|why| failed(name, format!("cannot reach the VM's init: {why}")))?;
    let signals = process::block_signals(&HANDLED).in_vm(name)?;
    let terminal = if tty {
        // The terminal must come from the VM's own devpts: open it from the VM's mounts.
        process::join_namespaces(&pidfd, nix::sched::CloneFlags::CLONE_NEWNS).in_vm(name)?;
        Some(Terminal::open().map_err(|why| failed(name, why))?)
    } else {
        None
    };
    let request = ToInit::Exec {
        workload: workload.clone(),
        terminal: terminal.as_ref().map(|t| t.term.clone()),
    };
    let fds = match &terminal {
        Some(t) => [t.slave.as_ref().map_or(-1, |s| s.as_raw_fd()); 3],
        None => [0, 1, 2],
    };
    commands::send(&channel, &request, &fds).map_err(|e| match e {
        nix::errno::Errno::E2BIG => failed(
            name,
            format!(
                "the command's arguments and environment are too long (at most {} KiB together)",
                commands::MAX_MESSAGE / 1024
            ),
        ),
        e => failed(
            name,
            format!("cannot ask the VM's init to run the command: {e}"),
        ),
    })?;
    let mut terminal = terminal;
    if let Some(t) = terminal.as_mut() {
        // Only the program holds the terminal now: its end shows as the master's end.
        t.close_slave();
    }
    match commands::receive::<FromInit>(&channel) {
        Ok(Some((FromInit::Started { .. }, _))) => {}
        Ok(Some((FromInit::Failed { message }, _))) => return Err(failed(name, message)),
        _ => {
            return Err(failed(
                name,
                "the VM's init did not start the command (is the VM stopping?)",
            ))
        }
    }
    wait_and_relay(&channel, &signals, terminal).ok_or_else(|| {
        failed(
            name,
            "stopped while the command ran; its exit status is unknown",
        )
    })
}

/// What `exec` passes on to its program.
const HANDLED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Waits for init to report the program's end, forwarding signals to it and, with a terminal,
/// copying between the user's terminal and the VM's. Returns the program's exit code (128 +
/// signal if killed), or `None` if init went away first.
fn wait_and_relay(
    channel: &OwnedFd,
    signals: &SignalFd,
    mut terminal: Option<Terminal>,
) -> Option<i32> {
    let stdin = std::io::stdin();
    let mut stdin_open = terminal.is_some();
    let mut code = None;
    let mut channel_open = true;
    loop {
        if let Some(code) = code {
            if terminal.as_ref().is_none_or(|t| !t.master_open) {
                return Some(code);
            }
        } else if !channel_open {
            return None;
        }
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if channel_open {
            fds.push(PollFd::new(channel.as_fd(), PollFlags::POLLIN));
        }
        if let Some(t) = &terminal {
            if t.master_open {
                fds.push(PollFd::new(t.master.as_fd(), PollFlags::POLLIN));
            }
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
        }
        let timeout = if code.is_some() {
            PollTimeout::from(100u16)
        } else {
            PollTimeout::NONE
        };
        if poll(&mut fds, timeout).unwrap_or(0) == 0 && code.is_some() {
            return code;
        }
        let readable: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut next = 1;
        if readable[0] {
            if let Ok(Some(info)) = signals.read_signal() {
                handle_signal(channel, info.ssi_signo as i32, terminal.as_ref());
            }
        }
        if channel_open {
            if readable[next] {
                match commands::receive::<FromInit>(channel) {
                    Ok(Some((FromInit::Exited { code: exited }, _))) => code = Some(exited),
                    Ok(Some(_)) => {}
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                    Ok(None) | Err(_) => channel_open = false,
                }
            }
            next += 1;
        }
        if let Some(t) = terminal.as_mut() {
            if t.master_open {
                if readable.get(next) == Some(&true)
                    && !copy(t.master.as_fd(), std::io::stdout().as_fd())
                {
                    t.master_open = false;
                }
                next += 1;
            }
            if stdin_open
                && readable.get(next) == Some(&true)
                && !copy(stdin.as_fd(), t.master.as_fd())
            {
                stdin_open = false;
            }
        }
    }
}

/// Acts on one signal: a new window size goes to the terminal, the others to the program.
fn handle_signal(channel: &OwnedFd, signo: i32, terminal: Option<&Terminal>) {
    if signo == Signal::SIGWINCH as i32 {
        if let Some(t) = terminal {
            t.copy_window_size();
        }
        return;
    }
    let _ = commands::send(channel, &ToInit::Signal { signo }, &[]);
}

/// Copies what is available from one descriptor to another; false at end of input.
fn copy(from: BorrowedFd, to: BorrowedFd) -> bool {
    let mut buffer = [0u8; 8192];
    match nix::unistd::read(from, &mut buffer) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            let mut written = 0;
            while written < n {
                match nix::unistd::write(to, &buffer[written..n]) {
                    Ok(count) => written += count,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return false,
                }
            }
            true
        }
    }
}

/// A terminal of the VM's devpts for `exec -t`, and the user's terminal in raw mode while it
/// is used.
struct Terminal {
    master: nix::pty::PtyMaster,
    /// The program's end, sent to init and then closed here.
    slave: Option<OwnedFd>,
    term: String,
    master_open: bool,
    saved: Option<Termios>,
}

impl Terminal {
    fn open() -> std::result::Result<Terminal, String> {
        let (master, slave_path) =
            pty::open_pair().map_err(|e| format!("cannot open a terminal in the VM: {e}"))?;
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        let slave: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(&slave_path)
            .map_err(|e| format!("cannot open the VM's terminal {slave_path}: {e}"))?
            .into();
        let mut terminal = Terminal {
            master,
            slave: Some(slave),
            term,
            master_open: true,
            saved: None,
        };
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            terminal.copy_window_size();
            if let Ok(saved) = termios::tcgetattr(&stdin) {
                let mut raw = saved.clone();
                termios::cfmakeraw(&mut raw);
                let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw);
                terminal.saved = Some(saved);
            }
        }
        Ok(terminal)
    }

    fn copy_window_size(&self) {
        if let Some(size) = pty::window_size(&std::io::stdin()) {
            pty::set_window_size(&self.master, &size);
        }
    }

    /// Closes this side's copy of the program's end, so that the master sees the program
    /// close the terminal.
    fn close_slave(&mut self) {
        self.slave = None;
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}

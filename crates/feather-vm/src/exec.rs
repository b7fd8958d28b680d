//! `feather exec`: runs a program inside a running VM, as nsenter does. The calling process
//! joins the VM's namespaces itself, forks the program (which becomes a member of the
//! VM's pid namespace and, from the child, of its cgroup), and relays signals, the terminal
//! and the exit code.

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use feather_core::{Error, StateRoot, VmName, VmStatus};
use feather_sys::cgroup::Entry;
use feather_sys::process;
use feather_sys::pty;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{failed, InVm, Result};
use crate::keeper::cgroup_of;
use crate::workload::{become_workload, Workload};

/// Exit code when feather itself could not run the command (as `docker exec` uses).
pub const EXIT_CANNOT_EXEC: i32 = 126;

/// Runs `workload` in the running VM `name` and returns its exit code. The caller is left in the
/// VM's namespaces: call this last, or from a child process.
pub fn exec(root: &StateRoot, name: &VmName, workload: &Workload, tty: bool) -> Result<i32> {
    let vm = root.open(name)?;
    let config = vm.read_config()?;
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
    // Only the command enters the VM's cgroup, from the child: this relaying process must not
    // count against the VM's limits, nor be a candidate for the VM's OOM killer.
    let cgroup = cgroup_of(&config)
        .map(|c| c.entry())
        .transpose()
        .in_vm(name)?;
    process::join_namespaces(&pidfd, process::vm_namespaces()).in_vm(name)?;
    // From here on, paths resolve inside the VM.
    let terminal = if tty {
        Some(Terminal::open().map_err(|why| failed(name, why))?)
    } else {
        None
    };
    let signals = process::block_signals(&HANDLED).in_vm(name)?;
    let child = match process::fork().in_vm(name)? {
        None => run_child(workload, cgroup.as_ref(), terminal.as_ref()),
        Some(pid) => pid,
    };
    Ok(wait_and_relay(child, &signals, terminal))
}

/// In the forked child, inside the VM: become the workload. Never returns.
fn run_child(workload: &Workload, cgroup: Option<&Entry>, terminal: Option<&Terminal>) -> ! {
    let term_name = terminal.map(|t| t.term.as_str());
    if let Err(e) = cgroup.map_or(Ok(()), Entry::enter) {
        eprintln!("feather: {e}");
        std::process::exit(EXIT_CANNOT_EXEC);
    }
    if let Some(terminal) = terminal {
        if let Err(why) = terminal.attach_as_controlling() {
            eprintln!("feather: {why}");
            std::process::exit(EXIT_CANNOT_EXEC);
        }
    } else {
        // A session of its own inside the VM (with a terminal, attaching made one): what it
        // leaves running belongs to no session on the host, so the VM can be checkpointed.
        // Signals from the user's terminal still arrive: exec relays them.
        let _ = nix::unistd::setsid();
    }
    // The same seccomp filter as init's processes, installed while this process still holds
    // the host's capabilities; become_workload then reduces them.
    if let Err(why) = feather_confine::seccomp::install() {
        eprintln!("feather: {why}");
        std::process::exit(EXIT_CANNOT_EXEC);
    }
    let why = become_workload(workload, term_name);
    eprintln!("feather: {why}");
    std::process::exit(if why.ends_with("command not found") {
        127
    } else {
        EXIT_CANNOT_EXEC
    });
}

/// What `exec` waits for: its child's end, and signals to pass on to it.
const HANDLED: [Signal; 8] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Waits for the child, forwarding signals to it and, with a terminal, copying between the
/// user's terminal and the VM's. Returns the child's exit code (128 + signal if killed).
fn wait_and_relay(child: Pid, signals: &SignalFd, mut terminal: Option<Terminal>) -> i32 {
    let stdin = std::io::stdin();
    let mut stdin_open = terminal.is_some();
    let mut code = None;
    loop {
        if let Some(code) = code {
            if terminal.as_ref().is_none_or(|t| !t.master_open) {
                return code;
            }
        }
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
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
            return code.unwrap_or(0);
        }
        let readable: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        if readable[0] {
            if let Ok(Some(info)) = signals.read_signal() {
                code = code.or(handle_signal(
                    child,
                    info.ssi_signo as i32,
                    terminal.as_ref(),
                ));
            }
        }
        if let Some(t) = terminal.as_mut() {
            let mut next = 1;
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

/// Acts on one signal; returns the child's exit code once it has exited.
fn handle_signal(child: Pid, signo: i32, terminal: Option<&Terminal>) -> Option<i32> {
    match Signal::try_from(signo) {
        Ok(Signal::SIGCHLD) => match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
            _ => None,
        },
        Ok(Signal::SIGWINCH) => {
            if let Some(t) = terminal {
                t.copy_window_size();
            }
            None
        }
        Ok(signal) => {
            let _ = nix::sys::signal::kill(child, signal);
            None
        }
        Err(_) => None,
    }
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
    slave_path: String,
    term: String,
    master_open: bool,
    saved: Option<Termios>,
}

impl Terminal {
    fn open() -> std::result::Result<Terminal, String> {
        let (master, slave_path) =
            pty::open_pair().map_err(|e| format!("cannot open a terminal in the VM: {e}"))?;
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        let mut terminal = Terminal {
            master,
            slave_path,
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

    /// In the child: a new session whose controlling terminal and stdio are the VM terminal.
    fn attach_as_controlling(&self) -> std::result::Result<(), String> {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        let slave: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.slave_path)
            .map_err(|e| format!("{}: {e}", self.slave_path))?
            .into();
        pty::make_controlling(&slave).map_err(|e| e.to_string())?;
        process::redirect_stdio(&slave).map_err(|e| e.to_string())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}

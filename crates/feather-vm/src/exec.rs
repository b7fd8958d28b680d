//! `feather exec`: runs a program inside a running VM. The program is started by the VM's init
//! (see [`crate::commands`]), so it descends from init like every other process of the VM: it
//! shares the VM's namespaces, cgroup, confinement and Landlock domain. This side sends the
//! request with the VM's ends of three pipes it owns (see [`crate::relay`]) or, with `-t`, a
//! terminal of the VM's devpts — never a descriptor of its caller —, relays signals and the
//! program's stdio, and returns the program's exit code.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use feather_core::{StateRoot, VmName};
use feather_sys::process;
use feather_sys::pty;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::termios::{self, SetArg, Termios};

use crate::commands::{self, FromInit, ToInit};
use crate::error::{failed, io, InVm, Result, VmError};
use crate::relay::{ready_slots, Relay, Slot};
use crate::workload::Workload;

pub use crate::workload::EXIT_CANNOT_EXEC;

/// Runs `workload` in the running VM `name` and returns its exit code. The caller is left in the
/// VM's network namespace: call this last, or from a child process.
pub fn exec(root: &StateRoot, name: &VmName, workload: &Workload, tty: bool) -> Result<i32> {
    let (init, pidfd, _) = crate::program::running_init(root, name)?;
    let channel = commands::connect_to_init(init, &pidfd).map_err(|source| VmError::Command {
        vm: name.to_string(),
        source,
    })?;
    let signals = process::block_signals(&HANDLED).in_vm(name)?;
    let terminal = if tty {
        // The terminal must come from the VM's own devpts: open it from the VM's mounts, then
        // go back to the host's. Left in the VM's mount namespace, this process held it past
        // the VM's end, and with it the VM's mounts, its layer's overlay among them, after the
        // VM's keeper had gone: a start of the VM waits for that keeper's end
        // (`lifecycle::await_last_keeper`), not for this process, and mounted the layer beside
        // them. The terminal's descriptor keeps the VM's devpts alone.
        let host = std::fs::File::open("/proc/self/ns/mnt")
            .map_err(io(name, "opening this process's mount namespace"))?;
        process::join_namespaces(&pidfd, nix::sched::CloneFlags::CLONE_NEWNS).in_vm(name)?;
        let terminal = Terminal::open().in_vm(name)?;
        nix::sched::setns(&host, nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| io(name, "going back to the host's mounts")(e.into()))?;
        Some(terminal)
    } else {
        None
    };
    let request = ToInit::Exec {
        version: commands::VERSION,
        workload: workload.clone(),
        terminal: terminal.as_ref().map(|t| t.term.clone()),
        spawner: false,
        unannounced: true,
    };
    let (streams, vm_ends) = match terminal {
        Some(mut t) => {
            let slave = t.slave.take();
            (
                Streams::Terminal(t),
                slave.map(|s| [s]).into_iter().flatten().collect(),
            )
        }
        None => {
            let (ends, relay) = crate::relay::pipes()
                .map_err(|e| io(name, "cannot make the command's pipes")(e.into()))?;
            (Streams::Pipes(relay), Vec::from(ends))
        }
    };
    let fds: Vec<i32> = match vm_ends.as_slice() {
        [terminal] => vec![terminal.as_raw_fd(); 3],
        ends => ends.iter().map(|fd| fd.as_raw_fd()).collect(),
    };
    commands::send(&channel, &request, &fds).map_err(|e| match e {
        nix::errno::Errno::E2BIG => failed(
            name,
            format!(
                "the command's arguments and environment are too long (at most {} KiB together)",
                commands::MAX_MESSAGE / 1024
            ),
        ),
        e => io(name, "cannot ask the VM's init to run the command")(e.into()),
    })?;
    // Only the program holds the VM's ends now: their end shows as the end of its stdio.
    drop(vm_ends);
    // init answers only a failure to start, or the program's end (`unannounced`): this side
    // relays from the start, and learns which it is from the channel.
    match wait_and_relay(&channel, &signals, streams) {
        Outcome::Exited(code) => Ok(code),
        Outcome::Failed(message) => Err(failed(name, message)),
        Outcome::Gone => Err(failed(
            name,
            "the VM's init went away before the command's exit status came (is the VM stopping?)",
        )),
    }
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

/// The program's stdio as this side relays it.
enum Streams {
    Terminal(Terminal),
    Pipes(Relay),
}

/// How an exec ended, as init told.
enum Outcome {
    /// The program's exit code (128 + signal if killed), its output copied out.
    Exited(i32),
    /// init could not start the program: why.
    Failed(String),
    /// init went away (or answered something else) before telling.
    Gone,
}

/// Waits for init to report the program's end (or its failure to start it), forwarding
/// signals to it and copying between the caller's stdio and the program's (a terminal of the
/// VM, or the pipes).
fn wait_and_relay(channel: &OwnedFd, signals: &SignalFd, streams: Streams) -> Outcome {
    match relay_until_told(channel, signals, streams) {
        Ok(Some(code)) => Outcome::Exited(code),
        Ok(None) => Outcome::Gone,
        Err(message) => Outcome::Failed(message),
    }
}

/// [`wait_and_relay`]: the exit code, `None` if init went away first, or init's message if it
/// could not start the program.
fn relay_until_told(
    channel: &OwnedFd,
    signals: &SignalFd,
    mut streams: Streams,
) -> Result<Option<i32>, String> {
    let mut code = None;
    let mut channel_open = true;
    loop {
        match (&mut streams, code) {
            (Streams::Pipes(relay), Some(_)) => {
                relay.finish();
                return Ok(code);
            }
            (Streams::Terminal(t), Some(_)) if !t.master_open => return Ok(code),
            (Streams::Pipes(relay), None) if !channel_open => {
                relay.finish();
                return Ok(None);
            }
            (Streams::Terminal(_), None) if !channel_open => return Ok(None),
            _ => {}
        }
        let (signalled, message, ready, quiet) = {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            fds.push(PollFd::new(channel.as_fd(), PollFlags::POLLIN));
            let slots = match &streams {
                Streams::Terminal(t) => {
                    fds.extend(t.poll_fds());
                    Vec::new()
                }
                Streams::Pipes(relay) => {
                    let (slots, relayed): (Vec<Slot>, Vec<PollFd>) =
                        relay.poll_fds().into_iter().unzip();
                    fds.extend(relayed);
                    slots
                }
            };
            // After the program's end, a terminal is read until it stays quiet a moment.
            let timeout = if code.is_some() {
                PollTimeout::from(100u16)
            } else {
                PollTimeout::NONE
            };
            let quiet = poll(&mut fds, timeout).unwrap_or(0) == 0;
            let is_ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let terminal_ready: Vec<bool> = fds[2..].iter().map(is_ready).collect();
            let ready = match &streams {
                Streams::Terminal(_) => Ready::Terminal(terminal_ready),
                Streams::Pipes(_) => Ready::Pipes(ready_slots(&slots, &fds[2..])),
            };
            (is_ready(&fds[0]), is_ready(&fds[1]), ready, quiet)
        };
        if quiet && code.is_some() {
            return Ok(code);
        }
        if signalled {
            if let Ok(Some(info)) = signals.read_signal() {
                let terminal = match &streams {
                    Streams::Terminal(t) => Some(t),
                    Streams::Pipes(_) => None,
                };
                handle_signal(channel, info.ssi_signo as i32, terminal);
            }
        }
        if message && channel_open {
            match commands::receive::<FromInit>(channel) {
                Ok(Some((FromInit::Exited { code: exited }, _))) => code = Some(exited),
                Ok(Some((FromInit::Failed { message }, _))) => return Err(message),
                // An init of an earlier build announces the start all the same.
                Ok(Some((FromInit::Started { .. }, _))) => {}
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Ok(None) | Err(_) => channel_open = false,
            }
        }
        match (&mut streams, ready) {
            (Streams::Terminal(t), Ready::Terminal(ready)) => t.handle(&ready),
            (Streams::Pipes(relay), Ready::Pipes(ready)) => relay.handle(&ready),
            _ => {}
        }
    }
}

/// What poll found ready among the streams' descriptors.
enum Ready {
    Terminal(Vec<bool>),
    Pipes(Vec<Slot>),
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

/// A terminal of the VM's devpts for `exec -t`, and the user's terminal in raw mode while it
/// is used.
struct Terminal {
    master: nix::pty::PtyMaster,
    /// The program's end, sent to init and then closed here.
    slave: Option<OwnedFd>,
    term: String,
    master_open: bool,
    /// Whether the caller's stdin may still give more.
    stdin_open: bool,
    saved: Option<Termios>,
}

impl Terminal {
    /// A new terminal of the VM's devpts (its mounts joined already).
    fn open() -> feather_sys::Result<Terminal> {
        let (master, slave) = pty::open_pair()?;
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        let mut terminal = Terminal {
            master,
            slave: Some(slave),
            term,
            master_open: true,
            stdin_open: true,
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

    /// The descriptors to poll: the master while open, then the caller's stdin while open.
    fn poll_fds(&self) -> Vec<PollFd<'_>> {
        let master = self
            .master_open
            .then(|| PollFd::new(self.master.as_fd(), PollFlags::POLLIN));
        let stdin = self
            .stdin_open
            .then(|| PollFd::new(process::standard_fd(0), PollFlags::POLLIN));
        master.into_iter().chain(stdin).collect()
    }

    /// Copies between the caller's terminal and the VM's, as [`Terminal::poll_fds`] found them
    /// ready.
    fn handle(&mut self, ready: &[bool]) {
        let mut next = 0;
        if self.master_open {
            if ready.get(next) == Some(&true)
                && !feather_sys::pty::relay_available(
                    self.master.as_fd(),
                    std::io::stdout().as_fd(),
                )
            {
                self.master_open = false;
            }
            next += 1;
        }
        if self.stdin_open
            && ready.get(next) == Some(&true)
            && !feather_sys::pty::relay_available(std::io::stdin().as_fd(), self.master.as_fd())
        {
            self.stdin_open = false;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}

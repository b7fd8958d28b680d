//! A program started in a running VM for a caller that gives the program's stdio itself and
//! may be multi-threaded: the shuttle broker in a keeper (`Peers::run`), and the host's client
//! of a VM's service manager ([`crate::services`]). Like [`crate::exec`], it asks the VM's init
//! to start the program, so the program descends from init like every other process of the
//! VM, and it gives the VM only the far ends of three pipes it makes ([`crate::relay`]), never
//! a descriptor of the caller; a thread copies between those pipes and the stdio given.
//!
//! Reaching init's command socket needs the VM's network namespace, and `setns` is per thread:
//! it is done on a short-lived thread of its own, so the calling thread (and every other
//! thread of the caller) stays where it was. No mount namespace is entered: a program without
//! a terminal needs none, and a multi-threaded process could not enter one.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use feather_core::{Error, StateRoot, VmName, VmStatus};
use feather_sys::{process, pty};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::PtyMaster;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::commands::{self, CommandError, FromInit, ToInit};
use crate::error::{failed, io, InVm, Result, VmError};
use crate::relay::Relaying;
use crate::workload::Workload;

/// A program running in a VM, started by [`launch`]. Dropping it hangs the program up (init
/// ends a program whose requester went away).
pub struct Launched {
    vm: VmName,
    /// The connection to the VM's init: it reports the program's end here.
    channel: OwnedFd,
    relaying: Option<Relaying>,
    code: Option<i32>,
}

/// Starts `workload` in the running VM `name` with `stdio` (stdin, stdout, stderr) as its
/// standard streams, relayed. Safe to call from any thread of a multi-threaded process.
pub fn launch(
    root: &StateRoot,
    name: &VmName,
    workload: &Workload,
    stdio: [OwnedFd; 3],
) -> Result<Launched> {
    launch_handing(root, name, workload, stdio, false)
}

/// [`launch`] for the VM's service client, which init gives the spawner's socket, for the
/// service manager it may start (`PrivateTmp=`, crate::spawner).
pub fn launch_service_client(
    root: &StateRoot,
    name: &VmName,
    workload: &Workload,
    stdio: [OwnedFd; 3],
) -> Result<Launched> {
    launch_handing(root, name, workload, stdio, true)
}

fn launch_handing(
    root: &StateRoot,
    name: &VmName,
    workload: &Workload,
    stdio: [OwnedFd; 3],
    spawner: bool,
) -> Result<Launched> {
    let (init, pidfd, _) = running_init(root, name)?;
    let (vm_ends, relay) =
        crate::relay::pipes().map_err(|e| io(name, "cannot make the command's pipes")(e.into()))?;
    let request = Request {
        workload,
        terminal: None,
        spawner,
    };
    let channel = start(name, init, &pidfd, request, Vec::from(vm_ends))?;
    let relaying = relay
        .with_caller_stdio(stdio)
        .spawn()
        .map_err(|e| failed(name, format!("cannot start the stdio relay: {e}")))?;
    Ok(Launched {
        vm: name.clone(),
        channel,
        relaying: Some(relaying),
        code: None,
    })
}

/// Starts `workload` in the running VM `name` on a new terminal of the VM's own devpts (as
/// `feather exec -t`), `term` its TERM; returns it with the terminal's master, which the
/// caller reads and writes. Safe to call from any thread: the terminal is opened beneath the
/// VM's root (its init's `/proc/PID/root`), never by entering its mount namespace.
pub fn launch_with_terminal(
    root: &StateRoot,
    name: &VmName,
    workload: &Workload,
    term: &str,
) -> Result<(Launched, PtyMaster)> {
    let (init, pidfd, ticks) = running_init(root, name)?;
    let vm_root = std::fs::File::open(format!("/proc/{init}/root"))
        .map_err(|e| io(name, "cannot open its init's root")(e))?;
    // The root was opened through the pid number: it is our init's if that number still
    // names the process of the same start time.
    if process::start_ticks(init) != ticks {
        return Err(Error::NotRunning(name.to_string()).into());
    }
    let (master, slave) = pty::open_pair_beneath(&vm_root).in_vm(name)?;
    let request = Request {
        workload,
        terminal: Some(term.to_owned()),
        spawner: false,
    };
    let channel = start(name, init, &pidfd, request, vec![slave])?;
    let launched = Launched {
        vm: name.clone(),
        channel,
        relaying: None,
        code: None,
    };
    Ok((launched, master))
}

/// The running VM's init, pinned by a pidfd whose process is proven to be the init the VM's
/// state names (its start time), not a newcomer that reused the pid.
pub(crate) fn running_init(root: &StateRoot, name: &VmName) -> Result<(Pid, OwnedFd, Option<u64>)> {
    let vm = root.open(name)?;
    let state = vm.read_state()?;
    let (VmStatus::Running, Some(init_pid)) = (state.status, state.init_pid) else {
        return Err(Error::NotRunning(name.to_string()).into());
    };
    let init = Pid::from_raw(init_pid);
    let pidfd = process::pidfd_open(init).in_vm(name)?;
    if process::start_ticks(init) != state.init_start_ticks {
        return Err(Error::NotRunning(name.to_string()).into());
    }
    Ok((init, pidfd, state.init_start_ticks))
}

/// Asks init to start `workload` on `vm_ends` (three pipe ends, or one terminal for all
/// three); the connection on which init reports the program's end.
/// What init is asked to start.
struct Request<'a> {
    workload: &'a Workload,
    terminal: Option<String>,
    spawner: bool,
}

fn start(
    name: &VmName,
    init: Pid,
    pidfd: &OwnedFd,
    request: Request<'_>,
    vm_ends: Vec<OwnedFd>,
) -> Result<OwnedFd> {
    let Request {
        workload,
        terminal,
        spawner,
    } = request;
    let channel = connect_from_a_thread(init, pidfd).map_err(|source| VmError::Command {
        vm: name.to_string(),
        source,
    })?;
    let request = ToInit::Exec {
        version: commands::VERSION,
        workload: workload.clone(),
        terminal,
        spawner,
        unannounced: false,
    };
    let fds: Vec<i32> = match vm_ends.as_slice() {
        [terminal] => vec![terminal.as_raw_fd(); 3],
        ends => ends.iter().map(|fd| fd.as_raw_fd()).collect(),
    };
    commands::send(&channel, &request, &fds).map_err(|e| {
        failed(
            name,
            format!("cannot ask the VM's init to run {}: {e}", program(workload)),
        )
    })?;
    // Only the program holds the VM's ends now: their end shows as the end of its stdio.
    drop(vm_ends);
    match commands::receive::<FromInit>(&channel) {
        Ok(Some((FromInit::Started { .. }, _))) => Ok(channel),
        Ok(Some((FromInit::Failed { message }, _))) => Err(failed(name, message)),
        Ok(Some((other, _))) => Err(failed(
            name,
            format!("the VM's init answered {other:?} where Started or Failed was expected"),
        )),
        Err(nix::errno::Errno::EBADMSG) => Err(failed(
            name,
            "the VM's init answered something that is not a FromInit message (Started or Failed expected)",
        )),
        _ => Err(failed(
            name,
            format!("the VM's init did not start {} (is the VM stopping?)", program(workload)),
        )),
    }
}

fn program(workload: &Workload) -> &str {
    workload.argv.first().map_or("the program", String::as_str)
}

/// Connects to init's command socket from a thread that enters the VM's network namespace
/// and ends right after.
fn connect_from_a_thread(init: Pid, pidfd: &OwnedFd) -> std::result::Result<OwnedFd, CommandError> {
    std::thread::scope(|scope| {
        let entering = std::thread::Builder::new()
            .name("enter VM net".into())
            .spawn_scoped(scope, || commands::connect_to_init(init, pidfd))
            .map_err(CommandError::Thread)?;
        entering.join().map_err(|_| CommandError::ThreadPanicked)?
    })
}

impl Launched {
    /// Passes `signal` on to the program.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        commands::send(
            &self.channel,
            &ToInit::Signal {
                signo: signal as i32,
            },
            &[],
        )
        .map_err(|e| {
            failed(
                &self.vm,
                format!("cannot pass {signal} on to the program: {e}"),
            )
        })
    }

    /// The program's exit code (128 + signal if killed) if it has ended, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<i32>> {
        self.wait_for(PollTimeout::ZERO)
    }

    /// Waits for the program's end; its exit code (128 + signal if killed).
    pub fn wait(&mut self) -> Result<i32> {
        loop {
            if let Some(code) = self.wait_for(PollTimeout::NONE)? {
                return Ok(code);
            }
        }
    }

    /// Waits at most `timeout` for the program's end; its exit code if it ended.
    pub fn wait_timeout(&mut self, timeout: std::time::Duration) -> Result<Option<i32>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.wait_for(feather_sys::timed::poll_timeout(left))? {
                Some(code) => return Ok(Some(code)),
                None if left.is_zero() => return Ok(None),
                None => {}
            }
        }
    }

    /// Takes what init reported within `timeout`; the exit code once the program ended. Its
    /// output is then copied out by the relay, which ends on its own (a process the program
    /// left running may hold the pipes open for a moment, see [`crate::relay`]).
    fn wait_for(&mut self, timeout: PollTimeout) -> Result<Option<i32>> {
        if self.code.is_some() {
            return Ok(self.code);
        }
        let mut fds = [PollFd::new(self.channel.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(failed(&self.vm, format!("poll: {e}"))),
        }
        match commands::receive::<FromInit>(&self.channel) {
            Ok(Some((FromInit::Exited { code }, _))) => {
                self.code = Some(code);
                self.finish_relay();
                Ok(Some(code))
            }
            Ok(Some(_)) | Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => Ok(None),
            Ok(None) | Err(_) => {
                self.finish_relay();
                Err(failed(
                    &self.vm,
                    "stopped while the command ran; its exit status is unknown",
                ))
            }
        }
    }

    /// Lets the relay copy out what is left and end, on a thread of its own: the caller may
    /// be the one reading what it copies.
    fn finish_relay(&mut self) {
        if let Some(relaying) = self.relaying.take() {
            let _ = std::thread::Builder::new()
                .name("stdio relay end".into())
                .spawn(move || relaying.finish());
        }
    }
}

impl AsFd for Launched {
    /// Readable when init reports on the program ([`Launched::try_wait`] takes it).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.channel.as_fd()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.finish_relay();
    }
}

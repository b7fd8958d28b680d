//! The VM's init: pid 1 inside the VM. It assembles the VM's root (the isolation recipe),
//! reports to its keeper, then reaps orphans, runs the VM's first workload if it has one, and
//! shuts everything down in order when asked.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::rootfs::{self, RootfsPlan};
use crate::workload::{become_workload, Workload};

#[derive(Clone, Debug)]
pub struct InitPlan {
    pub rootfs: RootfsPlan,
    /// A program to run as soon as the VM is up; init exits with its status when it ends.
    pub workload: Option<Workload>,
    /// How long processes get between SIGTERM and SIGKILL when the VM stops.
    pub grace: Duration,
    /// Whether init keeps the keeper's stdin/stdout/stderr (a foreground run) or detaches them.
    pub attached: bool,
}

/// What init tells its keeper once the VM is assembled, or why it could not be.
#[derive(Debug, Serialize, Deserialize)]
pub enum InitReport {
    Ready,
    Failed(String),
}

/// The byte the keeper sends once it has moved init into the VM's cgroup.
pub const GO: u8 = b'g';

/// Runs as the child of the keeper's clone into new namespaces; never returns.
pub fn run(plan: InitPlan, mut keeper: UnixStream) -> ! {
    // If the keeper dies, so does the VM: a VM nobody keeps could be neither stopped nor seen.
    if feather_sys::process::set_parent_death_signal(Signal::SIGKILL).is_err() {
        std::process::exit(1);
    }
    let _ = nix::sys::prctl::set_name(c"feather-init");
    let mut go = [0u8; 1];
    if keeper.read_exact(&mut go).is_err() || go[0] != GO {
        std::process::exit(1);
    }
    match prepare(&plan) {
        Ok(()) => {}
        Err(why) => {
            report(&mut keeper, InitReport::Failed(why));
            std::process::exit(1);
        }
    }
    // As pid 1 of its namespace, init would ignore every signal it has no handler for; blocked
    // and read from a signalfd, they arrive.
    let signals = match feather_sys::process::block_signals(&HANDLED).map_err(|e| e.to_string()) {
        Ok(signals) => signals,
        Err(why) => {
            report(&mut keeper, InitReport::Failed(why));
            std::process::exit(1);
        }
    };
    let workload = plan.workload.as_ref().map(start_workload);
    report(&mut keeper, InitReport::Ready);
    drop(keeper);
    let code = supervise(&signals, workload, plan.grace);
    std::process::exit(code)
}

/// Everything before init starts supervising: the cgroup view, the root, the seccomp filter
/// and the capability set.
fn prepare(plan: &InitPlan) -> Result<(), String> {
    // The cgroup namespace is made now, after the keeper moved us into the VM's group, so that
    // the VM sees its own group as the root of the hierarchy.
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|e| format!("unshare cgroup namespace: {e}"))?;
    rootfs::assemble(&plan.rootfs).map_err(|e| e.to_string())?;
    if !plan.attached {
        detach_stdio();
    }
    // The seccomp filter and the reduced capability set, inherited by everything init starts.
    feather_confine::confine().map_err(|e| e.to_string())
}

fn report(keeper: &mut UnixStream, report: InitReport) {
    let mut line = serde_json::to_vec(&report).unwrap_or_default();
    line.push(b'\n');
    let _ = keeper.write_all(&line);
}

/// A detached VM writes nowhere on the host: its stdio is the VM's own /dev/null.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = feather_sys::process::redirect_stdio(&null);
    }
}

const HANDLED: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn start_workload(workload: &Workload) -> Pid {
    match feather_sys::process::fork() {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            let why = become_workload(workload, None);
            eprintln!("feather: {why}");
            std::process::exit(127);
        }
        Err(e) => {
            eprintln!("feather: cannot start {:?}: {e}", workload.argv);
            std::process::exit(126);
        }
    }
}

/// Reaps every child until the VM's end, and returns init's exit code: the workload's status
/// when there is one, 0 after an orderly stop.
fn supervise(signals: &SignalFd, workload: Option<Pid>, grace: Duration) -> i32 {
    loop {
        let Ok(Some(info)) = signals.read_signal() else {
            continue;
        };
        let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        match (signal, workload) {
            (Signal::SIGCHLD, _) => {
                if let Some(code) = reap(workload) {
                    shut_down(grace.min(Duration::from_secs(1)));
                    return code;
                }
            }
            // A terminal's interrupt reaches the workload directly (it shares the foreground
            // process group); forwarding it as well would deliver it twice.
            (Signal::SIGINT | Signal::SIGQUIT, Some(_)) => {}
            (signal, Some(pid)) => {
                let _ = kill(pid, signal);
            }
            (Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT, None) => {
                shut_down(grace);
                return 0;
            }
            _ => {}
        }
    }
}

/// Collects every exited child; returns the workload's exit code if it was among them.
fn reap(workload: Option<Pid>) -> Option<i32> {
    let mut workload_code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if Some(pid) == workload => {
                workload_code = Some(code)
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if Some(pid) == workload => {
                workload_code = Some(128 + signal as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return workload_code,
            Ok(_) => {}
        }
    }
}

/// Where the VM's service manager (crates/feather-svc) records its pid.
const SERVICE_MANAGER_PID_FILE: &str = "/run/feather-svc/manager.pid";

/// Gives the VM's service manager, if one runs, the first part of the grace period to stop its
/// services in reverse dependency order, before everything gets SIGTERM at once.
fn stop_services_first(deadline: Instant) {
    let Some(manager) = std::fs::read_to_string(SERVICE_MANAGER_PID_FILE)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .map(Pid::from_raw)
    else {
        return;
    };
    // The pid must still be the manager (a `feather __service` process), not a newcomer.
    let cmdline = std::fs::read(format!("/proc/{manager}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("__service")
        || kill(manager, Signal::SIGTERM).is_err()
    {
        return;
    }
    while Instant::now() < deadline {
        // The manager is init's child (it detached from the `exec` that started it).
        let _ = reap(None);
        if kill(manager, None) == Err(Errno::ESRCH) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops every process of the VM: SIGTERM to all, up to `grace` for them to exit, then SIGKILL.
fn shut_down(grace: Duration) {
    let everyone = Pid::from_raw(-1);
    let deadline = Instant::now() + grace;
    stop_services_first(deadline);
    let _ = kill(everyone, Signal::SIGTERM);
    while Instant::now() < deadline {
        let _ = reap(None);
        // kill(-1, 0) fails with ESRCH once no process but init is left in the namespace.
        if kill(everyone, None) == Err(Errno::ESRCH) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(everyone, Signal::SIGKILL);
    let _ = reap(None);
}

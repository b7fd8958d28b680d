//! Every `unsafe` block of feather-svc: the hook that runs in a service's process between
//! fork and exec.

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{setgid, setgroups, setsid, setuid, Gid, Uid};

/// What a service's process does to itself before it executes its program. Everything is
/// computed beforehand, so that the hook itself only makes system calls.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

#[derive(Clone, Debug)]
pub struct ProcessSetup {
    /// None: the process keeps the manager's (root's) identity (`+`, `!`, or no User=).
    pub credentials: Option<Credentials>,
    pub umask: u32,
    pub limits: Vec<(Resource, u64, u64)>,
}

/// Installs `setup` to run in the child: a new session (so the service's processes can be
/// found and signalled as a group), its umask and resource limits, then its user and groups.
pub fn install(command: &mut Command, setup: ProcessSetup) {
    let hook = move || -> std::io::Result<()> {
        // The manager blocks the signals it reads from a signalfd; a service must not inherit
        // that mask, or it would never see SIGTERM.
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        setsid()?;
        umask(Mode::from_bits_truncate(setup.umask));
        for (resource, soft, hard) in &setup.limits {
            setrlimit(*resource, *soft, *hard)?;
        }
        if let Some(credentials) = &setup.credentials {
            // Groups first: once the uid is not 0, they can no longer be changed.
            setgroups(&credentials.groups)?;
            setgid(credentials.gid)?;
            setuid(credentials.uid)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. The manager is single-threaded,
    // and the hook only makes system calls (sigprocmask, setsid, umask, setrlimit, setgroups, setgid,
    // setuid) over values computed before the fork: it allocates nothing and takes no lock.
    // The `?` conversions build io::Error from an errno, which does not allocate.
    unsafe {
        command.pre_exec(hook);
    }
}

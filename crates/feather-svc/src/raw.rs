//! Every `unsafe` block of feather-svc: the hook that runs in a service's process between
//! fork and exec.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{execve, getpid, setgid, setgroups, setsid, setuid, Gid, Uid};

/// What a service's process does to itself before it executes its program. Everything is
/// computed beforehand, so that the hook itself only makes system calls.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// Sockets handed to a service (socket activation): they become descriptors 3, 4, … and the
/// program is executed by the hook itself, with `LISTEN_PID` set to its own pid.
#[derive(Clone, Debug)]
pub struct ListenFds {
    pub fds: Vec<RawFd>,
    pub program: CString,
    pub argv: Vec<CString>,
    /// The environment, with LISTEN_FDS and LISTEN_FDNAMES but without LISTEN_PID.
    pub env: Vec<CString>,
}

#[derive(Clone, Debug)]
pub struct ProcessSetup {
    /// None: the process keeps the manager's (root's) identity (`+`, `!`, or no User=).
    pub credentials: Option<Credentials>,
    pub umask: u32,
    pub limits: Vec<(Resource, u64, u64)>,
    pub listen: Option<ListenFds>,
    /// The unit's `cgroup.procs` files (one per hierarchy), open for writing: the process
    /// moves itself into its unit's group first, so whatever it starts is in it too.
    pub cgroup_procs: Vec<RawFd>,
    /// `CapabilityBoundingSet=`: the capabilities taken out of the bounding set (before the
    /// user changes: dropping needs CAP_SETPCAP).
    pub drop_capabilities: Vec<caps::Capability>,
    /// `AmbientCapabilities=` (those the bounding set keeps): raised in the ambient set after
    /// the user changes, so the program keeps them through its exec as that user.
    pub ambient_capabilities: Vec<caps::Capability>,
    /// `NoNewPrivileges=`: set last, just before the program is executed.
    pub no_new_privileges: bool,
    /// Seccomp filters of the unit's own (`RestrictAddressFamilies=`, `RestrictNamespaces=`
    /// and the other argument checks, then `SystemCallFilter=`, whose allow list may lack
    /// seccomp(2) itself),
    /// installed last, after no_new_privs (which they imply: a VM's processes lack
    /// CAP_SYS_ADMIN, as systemd implies it for a service without that capability).
    pub seccomp: Vec<Vec<feather_sys::seccomp::Instruction>>,
    /// `MemoryDenyWriteExecute=` by the kernel's `PR_SET_MDWE` (see [`kernel_has_mdwe`]).
    pub memory_deny_write_execute: bool,
    /// `ProtectSystem=`, `ReadWritePaths=`, …: a Landlock ruleset the manager made, entered
    /// after no_new_privs (which it needs) and before the seccomp filters (which may not allow
    /// `landlock_restrict_self`). Closed on exec.
    pub landlock: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// For host tests of one setting: the caller's identity, umask 022, nothing else set.
#[cfg(test)]
impl ProcessSetup {
    pub(crate) fn plain() -> ProcessSetup {
        ProcessSetup {
            credentials: None,
            umask: 0o022,
            limits: Vec::new(),
            listen: None,
            cgroup_procs: Vec::new(),
            drop_capabilities: Vec::new(),
            ambient_capabilities: Vec::new(),
            no_new_privileges: false,
            seccomp: Vec::new(),
            memory_deny_write_execute: false,
            landlock: None,
        }
    }
}

/// The first descriptor a passed socket gets, as sd_listen_fds(3) expects.
pub const LISTEN_FDS_START: RawFd = 3;

/// Installs `setup` to run in the child: the signal mask cleared, its cgroup, a new session (so
/// the service's processes can be found and signalled as a group), its umask and resource
/// limits, its bounding set, its user and groups (keeping its ambient capabilities),
/// no_new_privs, its Landlock domain, its seccomp filters, and with sockets to pass, the
/// sockets and the exec itself.
pub fn install(command: &mut Command, setup: ProcessSetup) {
    let hook = move || apply(&setup);
    // SAFETY: the hook runs in the forked child before exec. The manager is single-threaded,
    // so no lock (the allocator's included) can be held by another thread at the fork: the
    // hook may allocate. It makes system calls over values computed before the fork; on an
    // error it returns it, and std reports it to the parent as the spawn's failure.
    unsafe {
        command.pre_exec(hook);
    }
}

/// What [`install`]'s hook does, in the process about to become the service's program (also
/// the VM's spawner's child, `private_tmp::become_planned`).
pub(crate) fn apply(setup: &ProcessSetup) -> std::io::Result<()> {
    // The manager blocks the signals it reads from a signalfd; a service must not inherit
    // that mask, or it would never see SIGTERM.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    for fd in &setup.cgroup_procs {
        // "0" is the writer itself; done before the user changes (moving needs root).
        write_all(*fd, b"0")?;
    }
    setsid()?;
    umask(Mode::from_bits_truncate(setup.umask));
    for (resource, soft, hard) in &setup.limits {
        setrlimit(*resource, *soft, *hard)?;
    }
    for cap in &setup.drop_capabilities {
        caps::drop(None, caps::CapSet::Bounding, *cap).map_err(std::io::Error::other)?;
        // Out of the inheritable set too: a root process's new permitted set takes it in
        // at exec, bounding set or not.
        caps::drop(None, caps::CapSet::Inheritable, *cap).map_err(std::io::Error::other)?;
    }
    if let Some(credentials) = &setup.credentials {
        let ambient = &setup.ambient_capabilities;
        if !ambient.is_empty() {
            // The permitted set survives setuid only with keep-caps (reset at exec); an
            // ambient capability must be permitted and inheritable when it is raised.
            nix::sys::prctl::set_keepcaps(true)?;
        }
        // Groups first: once the uid is not 0, they can no longer be changed.
        setgroups(&credentials.groups)?;
        setgid(credentials.gid)?;
        setuid(credentials.uid)?;
        for cap in ambient {
            caps::raise(None, caps::CapSet::Inheritable, *cap).map_err(std::io::Error::other)?;
            caps::raise(None, caps::CapSet::Ambient, *cap).map_err(std::io::Error::other)?;
        }
    }
    if setup.no_new_privileges || !setup.seccomp.is_empty() {
        nix::sys::prctl::set_no_new_privs()?;
    }
    if let Some(ruleset) = &setup.landlock {
        landlock_restrict_self(ruleset.as_raw_fd())?;
    }
    if setup.memory_deny_write_execute {
        set_mdwe()?;
    }
    for filter in &setup.seccomp {
        feather_sys::seccomp::install_filter(filter).map_err(std::io::Error::other)?;
    }
    if let Some(listen) = &setup.listen {
        for (i, fd) in listen.fds.iter().enumerate() {
            // Without O_CLOEXEC, the new descriptor survives the exec.
            dup_to(*fd, LISTEN_FDS_START + i as RawFd, false)?;
        }
        let mut env = listen.env.clone();
        env.push(CString::new(format!("LISTEN_PID={}", getpid())).unwrap_or_default());
        execve(&listen.program, &listen.argv, &env)?;
    }
    Ok(())
}

/// Whether the running kernel has `PR_SET_MDWE` (Linux 6.3): `PR_GET_MDWE` answers EINVAL
/// where it does not.
pub fn kernel_has_mdwe() -> bool {
    // SAFETY: PR_GET_MDWE only reads the caller's flags; the other arguments must be 0.
    unsafe { libc::prctl(libc::PR_GET_MDWE, 0, 0, 0, 0) >= 0 }
}

/// `prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`: from now on, and in every program the
/// process executes, no mapping is writable and executable and none becomes executable.
fn set_mdwe() -> std::io::Result<()> {
    // SAFETY: PR_SET_MDWE takes its flags by value and changes only the caller's memory
    // policy; the unused arguments must be 0.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_MDWE,
            libc::PR_MDWE_REFUSE_EXEC_GAIN as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// landlock_restrict_self(2): the caller, and everything it starts, enters the domain of
/// `ruleset` (nested in the one it is in). Needs no_new_privs without CAP_SYS_ADMIN.
fn landlock_restrict_self(ruleset: RawFd) -> std::io::Result<()> {
    // SAFETY: the call takes a descriptor and flags by value; `ruleset` is a Landlock ruleset
    // the manager made and keeps open (in the Arc the hook holds) until the spawn ends.
    let ret = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// write(2) of `bytes` to a raw descriptor the caller holds open.
fn write_all(fd: RawFd, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe `bytes`, which lives for the call; `fd` is a
    // descriptor the manager opened (a cgroup.procs file) and keeps open until the spawn ends.
    let ret = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// dup3(2) over raw descriptors; `new` is closed on exec if `cloexec`.
pub(crate) fn dup_to(old: RawFd, new: RawFd, cloexec: bool) -> nix::Result<()> {
    // SAFETY: dup2 takes two integers. The callers pass a descriptor they hold open (a
    // listening socket of the manager, or /dev/null just opened) and a target that is either
    // free or one of the placeholders the manager reserved (see `reserve_low_fds`), so no
    // descriptor anyone relies on is replaced.
    let ret = unsafe { libc::dup3(old, new, if cloexec { libc::O_CLOEXEC } else { 0 }) };
    if ret < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Makes sure descriptors 3 up to `3 + count` are open (placeholders on /dev/null), so that
/// descriptors the manager opens later, and the ones std uses while spawning, are above them,
/// and a service's sockets can be placed at 3, 4, … without replacing any of them.
pub fn reserve_low_fds(count: RawFd) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count {
        if std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists() {
            continue;
        }
        let null = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")?
            .into_raw_fd();
        if null != fd {
            dup_to(null, fd, true)?;
            let _ = nix::unistd::close(null);
        }
    }
    Ok(())
}

/// The local time zone's offset from UTC, in seconds, at `unix` seconds (from /etc/localtime,
/// as the C library reads it).
pub fn local_offset(unix: i64) -> i64 {
    let time: libc::time_t = unix;
    // SAFETY: localtime_r only writes the `tm` it is given, which is a zeroed local value,
    // and reads `time`; it is the reentrant form, so no static buffer is shared.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals for the length of the call.
    let ok = unsafe { !libc::localtime_r(&time, &mut tm).is_null() };
    if ok {
        tm.tm_gmtoff
    } else {
        0
    }
}

/// The spawner's socket the manager's starter left at `fd` (see `manager/spawner.rs`), made
/// close-on-exec; `None` when nothing, or something else than a unix `SOCK_SEQPACKET` socket,
/// is there.
pub fn inherited_spawner_socket(fd: RawFd) -> Option<OwnedFd> {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, UnixAddr};
    // SAFETY: F_GETFD only asks whether `fd` is open in this process.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the manager calls this once, at its start, before it opens anything of its own:
    // `fd` is the descriptor its starter left open for it, owned by nothing else here.
    let socket = unsafe { feather_sys::process::inherited_fd(fd) }.ok()?;
    // (A socket of another family has no unix address.)
    let unix = getsockopt(&socket, sockopt::SockType).ok() == Some(SockType::SeqPacket)
        && getsockname::<UnixAddr>(socket.as_raw_fd()).is_ok();
    if !unix {
        return None;
    }
    nix::fcntl::fcntl(
        &socket,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .ok()?;
    Some(socket)
}

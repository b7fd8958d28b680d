//! The container's program, set up as `process` says: oomScoreAdj, rlimits, umask, user and
//! additional groups, the five capability sets as given (none when the field is absent, as in
//! runc — not feather's VM set), noNewPrivileges, the seccomp profile, cwd, env, args.

use std::collections::HashSet;
use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsFd, RawFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability as Cap, CapsHashSet};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::Mode;
use nix::unistd::{AccessFlags, Gid, Uid};
use oci_spec::runtime::{Capabilities, LinuxSeccomp, PosixRlimitType, Process};
use seccompiler::BpfProgram;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The program `args[0]` names, searched in the process's own PATH (not the runtime's).
pub fn find_program(process: &Process) -> Result<PathBuf> {
    let args = process.args().clone().unwrap_or_default();
    let Some(name) = args.first() else {
        bail!("process.args: empty");
    };
    if name.contains('/') {
        let path = process.cwd().join(name);
        if through_magic_link(&path) {
            bail!("process.args[0]: {name:?} is reached through a link of /proc (PID/fd, cwd, root or exe), which may lead out of the container: refused");
        }
        if nix::unistd::access(&path, AccessFlags::X_OK).is_err() {
            bail!("process.args[0]: exec: {name:?}: no such executable file");
        }
        return Ok(PathBuf::from(name));
    }
    let path_var = env_value(process, "PATH").unwrap_or_else(|| DEFAULT_PATH.to_owned());
    for folder in path_var.split(':').filter(|f| !f.is_empty()) {
        let candidate = Path::new(folder).join(name);
        let is_file = std::fs::metadata(&candidate).is_ok_and(|m| m.is_file());
        if is_file
            && nix::unistd::access(&candidate, AccessFlags::X_OK).is_ok()
            && !through_magic_link(&process.cwd().join(&candidate))
        {
            return Ok(candidate);
        }
    }
    bail!("process.args[0]: exec: {name:?}: executable file not found in $PATH")
}

/// Whether `path` (in the container) is reached through a magic link — `/proc/PID/fd/N`,
/// `cwd`, `root`, `exe` — which may name a folder outside the container's root (runc's
/// CVE-2024-21626). Defence in depth only: the execve is by path, and what makes it safe is
/// that the runtime holds no such folder by then ([`close_before_exec`]).
fn through_magic_link(path: &Path) -> bool {
    let Ok(root) = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let relative = path.strip_prefix("/").unwrap_or(path);
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    matches!(
        openat2(root.as_fd(), relative, how),
        Err(nix::errno::Errno::ELOOP)
    )
}

fn env_value(process: &Process, key: &str) -> Option<String> {
    process.env().iter().flatten().find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

/// Everything up to exec, then exec. Runs in the container (after pivot_root), as root.
/// `feather` are feather's own filters ([`crate::confine`]), installed after the config's;
/// `proc` the runtime's private procfs ([`feather_sys::procfs`]), closed here once used;
/// `keep` the descriptors that stay open up to the execve besides stdio: `--preserve-fds`
/// and what cannot be walked (the error report's socket, the exec.fifo). Every other
/// descriptor is closed before the program is searched for: see [`close_before_exec`].
pub fn become_program(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    feather: Filters,
    proc: feather_sys::procfs::ProcFs,
    keep: &[RawFd],
) -> Result<Infallible> {
    let mut filters = seccomp
        .map(crate::seccomp::compile)
        .transpose()?
        .unwrap_or_default();
    filters.extend(feather);
    if let Some(score) = process.oom_score_adj() {
        // Through the runtime's private procfs: the container's /proc/self may lead anywhere.
        proc.write(
            Path::new("self/oom_score_adj"),
            score.to_string().as_bytes(),
        )
        .map_err(|e| anyhow::anyhow!("process.oomScoreAdj: {e}"))?;
    }
    drop(proc);
    // Before the rlimits (a low RLIMIT_NOFILE would refuse the descriptors), before any filter
    // (a profile written before openat2 existed refuses it), and as root, as runc enters it: a
    // working folder its user cannot search is still entered.
    enter_cwd(process.cwd())?;
    let env = environment(process)?;
    close_before_exec(keep)?;
    let program = find_program(process)?;
    for limit in process.rlimits().iter().flatten() {
        let resource = resource(limit.typ());
        setrlimit(resource, limit.soft(), limit.hard())
            .with_context(|| format!("process.rlimits[{:?}] {}:{} (this machine withholds CAP_SYS_RESOURCE: a limit cannot be raised past the runtime's hard limit)", limit.typ(), limit.soft(), limit.hard()))?;
    }
    if let Some(umask) = process.user().umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    }
    let no_new_privileges = process.no_new_privileges() == Some(true);
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while we have it.
    if !no_new_privileges {
        crate::seccomp::install(&filters)?;
    }
    become_user(process)?;
    set_capabilities(process)?;
    if no_new_privileges {
        nix::sys::prctl::set_no_new_privs().context("process.noNewPrivileges")?;
    }
    let argv = cstrings(process.args().iter().flatten())?;
    let program = CString::new(program.as_os_str().as_encoded_bytes())?;
    if no_new_privileges {
        crate::seccomp::install(&filters)?;
    }
    feather_sys::process::reset_signal_dispositions();
    let error = nix::unistd::execve(&program, &argv, &env).unwrap_err();
    bail!("process.args[0]: exec {program:?}: {error}")
}

/// Closes every descriptor but stdio and `keep`, before the program is searched for and
/// exec'd: the runtime's private procfs, the host's `/proc/PID/task` an `exec` remembered
/// ([`feather_sys::process::close_for_exec`]), whatever else it held. Close-on-exec is not
/// enough: the kernel resolves the execve path (a PATH entry, a script's `#!` interpreter)
/// before it closes those, and an image's `/p3 -> /proc/self/fd/3/../../..` would run, and let
/// the container overwrite, a host binary (runc's CVE-2024-21626, attacks 2 and 3). Searched
/// after the close, PATH sees what the execve will see. Before any seccomp filter, which may
/// not know close_range.
fn close_before_exec(keep: &[RawFd]) -> Result<()> {
    feather_sys::process::close_for_exec(keep).map_err(|e| {
        anyhow::anyhow!(
            "close the runtime's descriptors before exec: {e} (Linux 5.9 or later has close_range)"
        )
    })
}

/// `process.cwd` (the image's `WORKDIR`, as engines pass it), entered by the runtime before
/// it takes the program's user: resolved inside the container's root without following a magic link, and entered by
/// descriptor. Until it closes them ([`close_before_exec`]) the runtime holds descriptors of
/// its own (its private procfs, unmasked and writable, the container's root, `exec.fifo`):
/// a `chdir` to `/proc/self/fd/N` would have started the program in one of them (runc's
/// CVE-2024-21626).
fn enter_cwd(cwd: &Path) -> Result<()> {
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context("open /")?;
    let relative = cwd.strip_prefix("/").unwrap_or(cwd);
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let folder = openat2(root.as_fd(), relative, how).map_err(|e| {
        let why = if e == nix::errno::Errno::ELOOP {
            " (a link through /proc/PID/fd, cwd or root is refused)"
        } else {
            ""
        };
        anyhow::anyhow!("process.cwd {}: {e}{why}", cwd.display())
    })?;
    nix::unistd::fchdir(&folder).with_context(|| format!("process.cwd {}", cwd.display()))
}

fn resource(typ: PosixRlimitType) -> Resource {
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Groups, gid, uid — keeping the permitted capabilities across the uid change, so that the
/// sets asked for can be given to a non-root user too.
fn become_user(process: &Process) -> Result<()> {
    let user = process.user();
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).context("process.user.additionalGids")?;
    nix::sys::prctl::set_keepcaps(true).context("prctl(PR_SET_KEEPCAPS)")?;
    nix::unistd::setgid(Gid::from_raw(user.gid())).context("process.user.gid")?;
    nix::unistd::setuid(Uid::from_raw(user.uid())).context("process.user.uid")?;
    nix::sys::prctl::set_keepcaps(false).context("prctl(PR_SET_KEEPCAPS)")?;
    Ok(())
}

pub(crate) fn cap_set(set: Option<&Capabilities>, field: &str) -> Result<CapsHashSet> {
    set.into_iter()
        .flatten()
        .map(|cap| {
            let name = serde_json::to_value(cap)?
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Cap::from_str(&name).map_err(|_| anyhow::anyhow!("{field}: unknown capability {name}"))
        })
        .collect()
}

fn set_capabilities(process: &Process) -> Result<()> {
    // Absent means none (LinuxCapabilities::default() would be runc's example set instead).
    let given = process.capabilities().as_ref();
    let bounding = cap_set(
        given.and_then(|g| g.bounding().as_ref()),
        "process.capabilities.bounding",
    )?;
    let effective = cap_set(
        given.and_then(|g| g.effective().as_ref()),
        "process.capabilities.effective",
    )?;
    let permitted = cap_set(
        given.and_then(|g| g.permitted().as_ref()),
        "process.capabilities.permitted",
    )?;
    let inheritable = cap_set(
        given.and_then(|g| g.inheritable().as_ref()),
        "process.capabilities.inheritable",
    )?;
    let ambient = cap_set(
        given.and_then(|g| g.ambient().as_ref()),
        "process.capabilities.ambient",
    )?;
    // A uid change empties the effective set (PR_SET_KEEPCAPS keeps only the permitted one):
    // take the permitted set back, so that CAP_SETPCAP can shape the bounding set.
    let held = caps::read(None, CapSet::Permitted).context("read capabilities")?;
    caps::set(None, CapSet::Effective, &held).context("process.capabilities.effective")?;
    let known: HashSet<Cap> = caps::runtime::thread_all_supported();
    for cap in known.difference(&bounding) {
        caps::drop(None, CapSet::Bounding, *cap).context("process.capabilities.bounding")?;
    }
    // Inheritable and ambient first, while CAP_SETPCAP and the full permitted set are held.
    caps::set(None, CapSet::Inheritable, &inheritable)
        .context("process.capabilities.inheritable")?;
    caps::clear(None, CapSet::Ambient).context("process.capabilities.ambient")?;
    raise_ambient(&ambient, &inheritable)?;
    caps::set(
        None,
        CapSet::Effective,
        &effective.intersection(&permitted).copied().collect(),
    )
    .context("process.capabilities.effective")?;
    caps::set(None, CapSet::Permitted, &permitted).context("process.capabilities.permitted")?;
    Ok(())
}

/// Raises the ambient capabilities that can be: the kernel grants one only if it is
/// inheritable (and permitted, as every capability is here). One that is not cannot be granted,
/// which the runtime spec asks a runtime to warn of rather than fail on; runc and youki warn,
/// and configs rely on it (Debian's runc 1.1.5 `runc spec` lists ambient capabilities with no
/// inheritable set). Left out, it is not held after the exec: nothing is granted by the warning.
fn raise_ambient(ambient: &HashSet<Cap>, inheritable: &HashSet<Cap>) -> Result<()> {
    let (grantable, not): (Vec<Cap>, Vec<Cap>) =
        ambient.iter().partition(|cap| inheritable.contains(cap));
    if !not.is_empty() {
        let mut names: Vec<String> = not.iter().map(Cap::to_string).collect();
        names.sort();
        crate::log::warn(&format!(
            "process.capabilities.ambient: {} not raised: an ambient capability must be inheritable too (add it to process.capabilities.inheritable)",
            names.join(", ")
        ));
    }
    for cap in grantable {
        caps::raise(None, CapSet::Ambient, cap).context("process.capabilities.ambient")?;
    }
    Ok(())
}

fn environment(process: &Process) -> Result<Vec<CString>> {
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|pair| pair.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(process.user().uid())));
    }
    cstrings(env.iter())
}

/// The user's home from the container's /etc/passwd, else "/" (as runc).
fn home_of(uid: u32) -> String {
    read_passwd()
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 6 && fields[2].parse() == Ok(uid)).then(|| fields[5].to_owned())
        })
        .unwrap_or_else(|| "/".to_owned())
}

/// The most of /etc/passwd read: far more than any real one.
const PASSWD_LIMIT: u64 = 4 << 20;

/// The container's /etc/passwd, which the image chose: opened without waiting (`O_NONBLOCK`:
/// a FIFO there, or a file another process holds a lease on, would hold the runtime — and
/// the engine waiting on it — for as long as the container likes) and without following a
/// magic link (`/proc/PID/fd/N` of another process), then read only when it is a regular
/// file (not `/dev/zero`), and at most [`PASSWD_LIMIT`]. Plain links are followed, as by
/// runc: after pivot_root they lead only to the container's own files.
fn read_passwd() -> Option<String> {
    use std::io::Read;
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let file = std::fs::File::from(openat2(root.as_fd(), "etc/passwd", how).ok()?);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(PASSWD_LIMIT).read_to_string(&mut text).ok()?;
    Some(text)
}

fn cstrings<'a>(items: impl Iterator<Item = &'a String>) -> Result<Vec<CString>> {
    items
        .map(|s| CString::new(s.as_bytes()).context("a string with a NUL byte"))
        .collect()
}

/// For filters compiled once by the caller.
pub type Filters = Vec<BpfProgram>;

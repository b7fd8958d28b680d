//! D-Bus channels: Debian's `xdg-dbus-proxy`, run by the broker outside the VMs, between the
//! target's system bus and the source VM, filtering so that the source sees and talks to
//! exactly the allowed names (`--filter --talk=NAME`). The broker's endpoint in the source VM
//! hands each connection (once the gate allowed it) to the proxy's socket in the VM's run
//! folder on the host.
//!
//! The proxy parses what the VM sends, so it runs confined (see [`jail_main`]): as a user of
//! its own, without capabilities, with no_new_privs and the VMs' seccomp filter, in its own
//! pid, IPC, network and mount namespaces whose root holds `/usr`, its listening folder and a
//! `/proc` of its own pid namespace alone. It reaches the target's bus through a descriptor of
//! the bus socket that the jail opens from the broker's own (`/proc/<keeper>/fd/<n>`, opened
//! inside the target VM's view, so a symlink in the target cannot point it at the host's bus)
//! and hands down as `/proc/self/fd/<n>`.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use feather_sys::creds::Identity;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::endpoint::{self, Holder};
use crate::protocol::jail::{Plan, VERSION};
use crate::protocol::{self, ProtocolError};

/// Where a VM's system bus is, in the VM's view; where a D-Bus channel appears when its rule
/// has no `at=`.
pub const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// The proxy program (Debian's package xdg-dbus-proxy).
pub const PROXY: &str = "xdg-dbus-proxy";

/// The hidden subcommand of the helper binary (`feather-keeper`, Peers::helper) that confines and
/// runs a proxy.
pub const JAIL_SUBCOMMAND: &str = "__dbus-proxy";

/// A proxy runs as its client (uid, gid, groups): the bus sees who is asking, and libdbus
/// clients authenticate with their own uid, which must be the proxy's. A client that is the
/// VM's root is not root on the target's bus: its proxy runs as `nobody` (a system bus refuses
/// users its passwd does not know, so no uid of feather's own would do).
const NOBODY: u32 = 65534;

fn proxy_user(client: &Identity) -> Identity {
    if client.uid.is_root() {
        Identity {
            uid: nix::unistd::Uid::from_raw(NOBODY),
            gid: nix::unistd::Gid::from_raw(NOBODY),
            groups: Vec::new(),
        }
    } else {
        client.clone()
    }
}

/// Proxies one channel may run at once (one per client uid).
pub const MAX_PROXIES: usize = 8;

/// The most of the proxy's output its log keeps. The log is a file of the root's run folder
/// (`/run`, memory, on most hosts), and a VM decides how often the proxy warns: a line for each
/// connection that sends it a malformed message (2,900 connections in 3 s, 207 KB, measured
/// here). Thousands of lines fit.
pub const LOG_BYTES: u64 = 256 << 10;

/// How long a proxy may take to listen.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// Why a proxy could not be started (the broker's side).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no system bus at {SYSTEM_BUS} ({error}; start the dbus service there)")]
    NoBus { error: endpoint::EndpointError },
    #[error("cannot run {PROXY}: not found (install Debian's package xdg-dbus-proxy)")]
    NotFound,
    #[error("{PROXY} is {}, outside /usr: the confined proxy sees only /usr (install Debian's package xdg-dbus-proxy)", .0.display())]
    OutsideUsr(PathBuf),
    #[error("{}: {error}", path.display())]
    Folder { path: PathBuf, error: io::Error },
    #[error("cannot start the proxy's jail: {0}")]
    Jail(io::Error),
    #[error("{PROXY} ended ({status}): {said}")]
    Ended {
        status: std::process::ExitStatus,
        said: String,
    },
    #[error("{PROXY} did not listen within {READY_WITHIN:?}")]
    Slow,
    #[error("cannot watch the proxy's jail: {0}")]
    Wait(io::Error),
}

/// A running proxy for one target bus and one set of names; ended (and its socket removed)
/// when dropped.
pub struct Proxy {
    holder: Holder,
    names: Vec<String>,
    /// The jail, parent of the proxy (which dies with it).
    child: Child,
    socket: PathBuf,
    /// The proxy's listening folder (its own) and the folder its root is mounted on.
    listen: PathBuf,
    root: PathBuf,
    /// The target's bus socket, reached by the proxy through `/proc/<keeper>/fd/<n>`.
    _bus: OwnedFd,
}

impl Proxy {
    /// Starts a proxy to `holder`'s system bus allowing `names`, listening in
    /// `<run_dir>/shuttle/dbus-<channel>/`, confined by the jail `helper` runs
    /// ([`JAIL_SUBCOMMAND`]); returns once it takes connections.
    pub fn spawn(
        mut helper: Command,
        run_dir: &Path,
        channel: u64,
        holder: Holder,
        names: &[String],
        client: &Identity,
    ) -> Result<Proxy, ProxyError> {
        let bus = endpoint::open_socket_file(holder, Path::new(SYSTEM_BUS))
            .map_err(|error| ProxyError::NoBus { error })?;
        let program = find_program(PROXY)?;
        let dir = run_dir.join("shuttle");
        let at = |path: &Path| {
            let path = path.to_path_buf();
            move |error| ProxyError::Folder { path, error }
        };
        fs::create_dir_all(&dir).map_err(at(&dir))?;
        // Root's alone: a proxy's folder belongs to its client's uid, which a user of the
        // host may also be; only the broker and the proxy (given its folder by a mount) reach
        // it.
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(at(&dir))?;
        let user = proxy_user(client);
        let tag = format!("dbus-{channel}-{}", client.uid);
        let listen_at = dir.join(&tag);
        let listen =
            fresh_folder(&listen_at, 0o700, Some(user.uid.as_raw())).map_err(at(&listen_at))?;
        let root_at = dir.join(format!("{tag}.root"));
        let root = fresh_folder(&root_at, 0o755, None).map_err(at(&root_at))?;
        let socket = listen.join(LISTEN_NAME);
        let log_at = dir.join(format!("{tag}.log"));
        let log = File::create(&log_at).map_err(at(&log_at))?;
        let plan = Plan {
            version: VERSION,
            bus: format!("/proc/{}/fd/{}", std::process::id(), bus.as_raw_fd()),
            listen: listen.clone(),
            root: root.clone(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: user.groups.iter().map(|g| g.as_raw()).collect(),
            program,
            args: std::iter::once("--filter".to_owned())
                .chain(names.iter().map(|name| format!("--talk={name}")))
                .collect(),
        };
        let plan = String::from_utf8_lossy(&protocol::encode(&plan)).into_owned();
        let child = helper
            .arg(plan)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(ProxyError::Jail)?;
        let mut proxy = Proxy {
            holder,
            names: names.to_vec(),
            child,
            socket,
            listen,
            root,
            _bus: bus,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            // Bound is not yet listening: a connection that is taken is the sign.
            if UnixStream::connect(&proxy.socket).is_ok() {
                return Ok(proxy);
            }
            if let Some(status) = proxy.child.try_wait().map_err(ProxyError::Wait)? {
                let said = fs::read_to_string(&log_at).unwrap_or_default();
                let said = said.trim().to_owned();
                return Err(ProxyError::Ended { status, said });
            }
            if Instant::now() >= deadline {
                return Err(ProxyError::Slow);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether this proxy is the one for `holder` and `names`.
    pub fn serves(&self, holder: Holder, names: &[String]) -> bool {
        self.holder == holder && self.names == names
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn connect(&self) -> io::Result<UnixStream> {
        UnixStream::connect(&self.socket)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.listen);
        let _ = fs::remove_dir(&self.root);
    }
}

/// The proxy's socket in its listening folder (`/listen` in its own view).
const LISTEN_NAME: &str = "bus.sock";

/// `program` as found in `PATH`: it must be under `/usr`, the only part of the host the proxy
/// sees.
fn find_program(program: &str) -> Result<PathBuf, ProxyError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(ProxyError::NotFound)?;
    let real = fs::canonicalize(&found).map_err(|error| ProxyError::Folder {
        path: found.clone(),
        error,
    })?;
    if !real.starts_with("/usr") {
        return Err(ProxyError::OutsideUsr(real));
    }
    Ok(real)
}

/// An empty folder at `path` (what was there is removed), with `mode`, owned by `owner`.
fn fresh_folder(path: &Path, mode: u32, owner: Option<u32>) -> io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let _ = fs::remove_dir_all(path);
    fs::DirBuilder::new().mode(mode).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    if let Some(uid) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
    }
    Ok(path.to_path_buf())
}

/// Why the jail could not run the proxy (written to its log, the proxy's stderr).
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("bad plan: {0}")]
    Plan(ProtocolError),
    #[error("cannot open the bus socket {path}: {}", errno.desc())]
    Bus { path: String, errno: Errno },
    #[error("cannot make the proxy's namespaces: {}", .0.desc())]
    Namespaces(Errno),
    #[error("pipe: {}", .0.desc())]
    Pipe(Errno),
    #[error(transparent)]
    Sys(feather_sys::SysError),
    #[error("{what}: {error}")]
    Root {
        what: &'static str,
        error: io::Error,
    },
    #[error("the proxy never runs as root")]
    AsRoot,
    #[error(transparent)]
    Capabilities(feather_confine::capabilities::CapabilityError),
    #[error("{call}: {}", errno.desc())]
    Ids { call: &'static str, errno: Errno },
    #[error("the jail ended")]
    JailEnded,
    #[error("no_new_privs: {}", .0.desc())]
    NoNewPrivs(Errno),
    #[error("bound the proxy's log: {}", .0.desc())]
    Limit(Errno),
    #[error(transparent)]
    Seccomp(feather_confine::seccomp::SeccompError),
    #[error("an argument holds a NUL byte")]
    Nul,
    #[error("cannot run {}: {}", program.display(), errno.desc())]
    Exec { program: PathBuf, errno: Errno },
}

/// The jail's main (`feather-keeper __dbus-proxy PLAN`, run by the broker as root, single-threaded):
/// new pid, IPC, network and mount namespaces; in the child that is pid 1 there, a root of
/// `/usr` (read-only), `/listen` and a `/proc` of that pid namespace only; every capability
/// dropped, the proxy's own uid and gid and no groups, no_new_privs, the VMs' seccomp filter;
/// then the proxy. The jail waits for it and ends with it; the proxy dies with the jail.
/// Errors go to stderr (the proxy's log).
pub fn jail_main(plan: &str) -> i32 {
    let jail: Plan = match read_plan(plan) {
        Ok(jail) => jail,
        Err(e) => {
            eprintln!("feather dbus proxy: {e}");
            return 2;
        }
    };
    match enter(&jail) {
        Ok(code) => code,
        Err(why) => {
            eprintln!("feather dbus proxy: {why}");
            1
        }
    }
}

/// The plan, of this build's version.
fn read_plan(plan: &str) -> Result<Plan, JailError> {
    let plan: Plan =
        protocol::decode(plan.as_bytes(), "the proxy's plan").map_err(JailError::Plan)?;
    protocol::check_version("a broker", VERSION, plan.version).map_err(JailError::Plan)?;
    Ok(plan)
}

fn enter(jail: &Plan) -> Result<i32, JailError> {
    use nix::sched::{unshare, CloneFlags};
    // The broker's descriptor of the target's bus, taken before anything changes: a new
    // descriptor of exactly that socket, left open across exec for the proxy.
    let bus =
        nix::fcntl::open(jail.bus.as_str(), OFlag::O_PATH, Mode::empty()).map_err(|errno| {
            JailError::Bus {
                path: jail.bus.clone(),
                errno,
            }
        })?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(JailError::Namespaces)?;
    // Open on the jail's side while it lives: the child, pid 1 of its namespace (its getppid
    // is 0), sees the jail gone as a hang-up.
    let (alive, jail_lives) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(JailError::Pipe)?;
    match feather_sys::process::fork().map_err(JailError::Sys)? {
        Some(child) => {
            drop(alive);
            let code = wait_for(child);
            drop(jail_lives);
            Ok(code)
        }
        None => {
            drop(jail_lives);
            let why = confine_and_run(jail, bus, alive);
            eprintln!("feather dbus proxy: {why}");
            std::process::exit(1)
        }
    }
}

fn wait_for(child: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 1,
        }
    }
}

/// In the child (pid 1 of the new pid namespace): only returns why it could not exec.
fn confine_and_run(jail: &Plan, bus: OwnedFd, jail_alive: OwnedFd) -> JailError {
    match build_root(jail)
        .and_then(|()| bound_output())
        .and_then(|()| drop_privileges(jail, &jail_alive))
    {
        Ok(()) => {}
        Err(why) => return why,
    }
    let bus = bus.into_raw_fd();
    // Nothing of the keeper's reaches the proxy but its output and the bus.
    feather_sys::process::close_other_fds(&[bus]);
    let upstream = format!("unix:path=/proc/self/fd/{bus}");
    let socket = format!("/listen/{LISTEN_NAME}");
    let mut argv = vec![
        jail.program.to_string_lossy().into_owned(),
        upstream,
        socket,
    ];
    argv.extend(jail.args.iter().cloned());
    let Ok(argv) = argv
        .into_iter()
        .map(std::ffi::CString::new)
        .collect::<Result<Vec<_>, _>>()
    else {
        return JailError::Nul;
    };
    let env: [&std::ffi::CStr; 0] = [];
    let errno = nix::unistd::execve(&argv[0], &argv, &env).unwrap_err();
    JailError::Exec {
        program: jail.program.clone(),
        errno,
    }
}

/// Mounts the proxy's whole view on `jail.root` and makes it the root: `/usr` read-only,
/// `/lib`, `/lib64`, `/bin` as links into it, `/listen` (its folder), a `/proc` of its own pid
/// namespace showing processes only; nothing else of the host.
fn build_root(jail: &Plan) -> Result<(), JailError> {
    use feather_sys::mount::{self as m, Flags};
    let fail = JailError::Sys;
    m::make_all_private().map_err(fail)?;
    let root = &jail.root;
    m::tmpfs(
        root,
        Flags::MS_NOSUID | Flags::MS_NODEV,
        "mode=0755,size=64k",
    )
    .map_err(fail)?;
    for dir in ["usr", "listen", "proc"] {
        fs::create_dir(root.join(dir)).map_err(|error| JailError::Root { what: dir, error })?;
    }
    for link in ["lib", "lib64", "bin"] {
        std::os::unix::fs::symlink(format!("usr/{link}"), root.join(link))
            .map_err(|error| JailError::Root { what: link, error })?;
    }
    m::bind(Path::new("/usr"), &root.join("usr")).map_err(fail)?;
    m::remount_bind_readonly(&root.join("usr")).map_err(fail)?;
    m::bind(&jail.listen, &root.join("listen")).map_err(fail)?;
    let noexec = Flags::MS_NOSUID | Flags::MS_NODEV | Flags::MS_NOEXEC;
    m::api_filesystem(
        "proc",
        &root.join("proc"),
        noexec,
        Some("subset=pid,hidepid=invisible"),
    )
    .map_err(fail)?;
    m::remount_bind_readonly(root).map_err(fail)?;
    m::pivot_into(root).map_err(fail)
}

/// The proxy's log (its stderr) stops growing at [`LOG_BYTES`]: past it, writes fail with EFBIG
/// (`RLIMIT_FSIZE`, soft and hard) instead of filling the host's run folder. SIGXFSZ, which the
/// kernel sends with that failure and which would end the proxy, stays blocked (the mask and
/// the pending signal are kept across the exec; the proxy never unblocks it).
fn bound_output() -> Result<(), JailError> {
    use nix::sys::resource::{setrlimit, Resource};
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    setrlimit(Resource::RLIMIT_FSIZE, LOG_BYTES, LOG_BYTES).map_err(JailError::Limit)?;
    let mut xfsz = SigSet::empty();
    xfsz.add(Signal::SIGXFSZ);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&xfsz), None)
        .map_err(JailError::Limit)
}

/// Every capability, root's uid and groups, and the right to gain privilege again: gone. The
/// seccomp filter comes last, once no_new_privs lets an unprivileged process install it.
fn drop_privileges(jail: &Plan, jail_alive: &OwnedFd) -> Result<(), JailError> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    if jail.uid == 0 {
        return Err(JailError::AsRoot);
    }
    feather_confine::capabilities::drop_all().map_err(JailError::Capabilities)?;
    let ids = |call: &'static str| move |errno| JailError::Ids { call, errno };
    let groups: Vec<Gid> = jail.groups.iter().copied().map(Gid::from_raw).collect();
    setgroups(&groups).map_err(ids("setgroups"))?;
    let (gid, uid) = (Gid::from_raw(jail.gid), Uid::from_raw(jail.uid));
    setresgid(gid, gid, gid).map_err(ids("setresgid"))?;
    setresuid(uid, uid, uid).map_err(ids("setresuid"))?;
    // After the change of uid, which clears it: the proxy dies with its jail.
    feather_sys::process::set_parent_death_signal(nix::sys::signal::Signal::SIGKILL)
        .map_err(JailError::Sys)?;
    let mut alive = [nix::poll::PollFd::new(
        jail_alive.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    if nix::poll::poll(&mut alive, nix::poll::PollTimeout::ZERO).unwrap_or(1) != 0 {
        return Err(JailError::JailEnded);
    }
    nix::sys::prctl::set_no_new_privs().map_err(JailError::NoNewPrivs)?;
    // The filter of a VM that asked for nothing more: no user namespaces, no clone3.
    feather_confine::seccomp::install(feather_confine::seccomp::Profile::default())
        .map_err(JailError::Seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_of_another_build_is_refused_naming_both_versions() {
        let older = r#"{"bus":"/proc/1/fd/3","listen":"/l","root":"/r","uid":1,"gid":1,
                        "groups":[],"program":"/usr/bin/xdg-dbus-proxy","args":[]}"#;
        let error = read_plan(older).unwrap_err();
        assert!(
            matches!(
                error,
                JailError::Plan(ProtocolError::Version {
                    expected: VERSION,
                    received: 0,
                    ..
                })
            ),
            "{error}"
        );
        let current = older.replacen('{', &format!("{{\"version\":{VERSION},"), 1);
        assert_eq!(read_plan(&current).unwrap().uid, 1);
        assert!(matches!(read_plan("nonsense"), Err(JailError::Plan(_))));
    }
}

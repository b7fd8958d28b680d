//! `create`: validate the config (refusing by name what cannot be honoured), make the
//! container's folder, cgroup and fifo, clone the init into its namespaces, run the prestart
//! and createRuntime hooks while it waits, and return once it is ready and waiting for
//! `start`. Any failure removes everything made.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use feather_sys::cgroup::V2Entry;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::annotations::Feather;
use crate::cgroups::Made;
use crate::hooks::{self, Kind};
use crate::init::Init;
use crate::store::{Container, Record};

pub struct CreateArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// The node's annotation policy (`--annotation-policy`, [`crate::policy`]).
    pub policy: PathBuf,
}

pub fn create(root: &Path, args: &CreateArgs) -> Result<()> {
    // The init runs this program inside the container until `start`: from a read-only mount
    // (see feather_sys::own_program), before anything is made.
    feather_core::trace::phase("start the program");
    feather_sys::own_program::run_from_read_only_mount().context("create")?;
    // The init, forked from here, keeps it until its program's execve.
    feather_sys::process::make_undumpable().context("create")?;
    let (mut container, spec, feather) =
        make_container(root, &args.id, &args.bundle, &args.policy)?;
    let mut made = Made::Nothing;
    let built = build(&mut container, &spec, args, &feather, &mut made);
    if let Err(error) = built {
        crate::ops::undo(&container, made);
        return Err(error);
    }
    Ok(())
}

/// The checks and the folder both `create` and `restore` begin with: the bundle's config,
/// validated (its widening annotations against the node's `policy`), and the container's
/// folder under `root` with its record and a copy of the config.
pub fn make_container(
    root: &Path,
    id: &str,
    bundle: &Path,
    policy: &Path,
) -> Result<(Container, Spec, Feather)> {
    crate::store::validate_id(id)?;
    if Container::exists(root, id) {
        bail!("container with id {id} already exists");
    }
    let bundle = bundle
        .canonicalize()
        .with_context(|| format!("bundle {}", bundle.display()))?;
    let spec = Spec::load(bundle.join("config.json"))
        .map_err(|e| anyhow::anyhow!("{}/config.json: {e}", bundle.display()))?;
    crate::validate::check(&spec)?;
    let feather = Feather::parse(&spec)?;
    crate::policy::check(policy, &feather)?;
    if !feather.services.is_empty() {
        crate::services::check_manager()?;
    }
    let linux = spec.linux().clone().context("linux")?;
    if let Some(seccomp) = linux.seccomp() {
        crate::seccomp::compile(seccomp)?;
    }
    let cgroup = crate::cgroups::relative_path(linux.cgroups_path().as_deref(), id)?;
    crate::cgroups::Groups::new(&cgroup).refuse_occupied()?;
    let rootfs = match (&feather.host_base, spec.root()) {
        (true, _) | (false, None) => PathBuf::from("/"),
        (false, Some(root)) => bundle.join(root.path()),
    };
    let record = Record {
        id: id.to_owned(),
        bundle: bundle.clone(),
        rootfs,
        pid: 0,
        start_ticks: 0,
        created: crate::log::now_rfc3339(),
        cgroup,
        annotations: spec.annotations().clone().unwrap_or_default(),
        v2_after_clone: false,
    };
    feather_core::trace::phase("read and check the config");
    let container = Container::make(root, record)?;
    if let Err(error) = spec.save(container.dir.join("config.json")) {
        crate::ops::undo(&container, Made::Nothing);
        return Err(error.into());
    }
    // feather's own tools (`feather ls`) list the containers of every root used; an engine's
    // container never fails for want of that listing.
    if let Err(error) = crate::registry::RootRegistry::host().register(root) {
        eprintln!("feather-oci: warning: {error}");
    }
    feather_core::trace::phase("make the container's folder");
    Ok((container, spec, feather))
}

fn build(
    container: &mut Container,
    spec: &Spec,
    args: &CreateArgs,
    feather: &Feather,
    made: &mut Made,
) -> Result<()> {
    nix::unistd::mkfifo(&container.fifo(), Mode::from_bits_truncate(0o622))
        .with_context(|| format!("make {}", container.fifo().display()))?;
    crate::userns::give_fifo(&container.fifo(), spec)?;
    let linux = spec.linux().clone().context("linux")?;
    let groups = container.groups();
    feather_core::trace::phase("make the fifo");
    // Made for this container, and marked so as soon as its folders are (Groups::make):
    // `kill --all` and `delete` act on no other group (crate::store::own_groups), and a root
    // registered later is hidden only in the init of a group so marked (crate::hiding). Only
    // a container over the host needs it; an image container runs where trusted.* attributes
    // cannot be set (CAP_SYS_ADMIN in a user namespace only), unmarked.
    let v2_entry = groups.make(
        linux.resources().as_ref(),
        &container.mark(),
        feather.host_base,
        made,
    )?;
    feather_core::trace::phase("make the cgroups");
    if feather.host_base {
        crate::mounts::host_layer(&container.dir)?;
    }
    let mut new = CloneFlags::empty();
    let mut new_cgroup_namespace = false;
    let mut joins = Vec::new();
    let mut mount_namespace = None;
    let mut cgroup_namespace = None;
    for namespace in linux.namespaces().iter().flatten() {
        let flag = CloneFlags::from_bits_truncate(namespace.typ() as i32);
        match namespace.path() {
            Some(path) => {
                let file = File::open(path).with_context(|| {
                    format!(
                        "linux.namespaces[{}].path {}",
                        namespace.typ(),
                        path.display()
                    )
                })?;
                // The init joins a mount namespace itself: this process goes on with the
                // engine's paths (pid file, state root) in its own.
                if namespace.typ() == LinuxNamespaceType::Mount {
                    mount_namespace = Some(file);
                } else if namespace.typ() == LinuxNamespaceType::Cgroup {
                    cgroup_namespace = Some(file);
                } else {
                    joins.push((file, flag, namespace.typ()));
                }
            }
            None if namespace.typ() == LinuxNamespaceType::Cgroup => new_cgroup_namespace = true,
            None => new |= flag,
        }
    }
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    let console = match (&args.console_socket, terminal) {
        (Some(path), true) => Some(
            UnixStream::connect(path)
                .with_context(|| format!("--console-socket {}", path.display()))?,
        ),
        (None, true) => {
            bail!("process.terminal: cannot allocate a terminal without --console-socket")
        }
        _ => None,
    };
    let idmapped = crate::idmap::prepare(spec, &container.record.bundle)?;
    // Read before the init exists; roots registered from now on are hidden once it is
    // recorded (crate::hiding).
    let hidden_roots = if feather.host_base {
        feather_core::roots::host_state_folders()
    } else {
        Vec::new()
    };
    feather_core::trace::phase("prepare the namespaces and id-mapped mounts");
    // The init starts in its groups (cloned into the v2 one, moving its one thread into the
    // v1 ones itself): a move by pid would wait for an RCU grace period.
    let cgroup_entry = groups.entry(v2_entry)?;
    let (mut socket, child_socket) = UnixStream::pair().context("socketpair")?;
    // Joined namespaces apply to this process (a pid namespace to its children): the init is
    // cloned into them, and into new ones for the rest.
    for (file, flag, typ) in &joins {
        nix::sched::setns(file, *flag)
            .with_context(|| format!("linux.namespaces[{typ}].path: join"))?;
    }
    // A joined cgroup namespace is the init's to join, last, once in its groups (as runc: on
    // an `nsdelegate` hierarchy a move is refused from inside a namespace whose root does not
    // hold the mover's group). An init in a new user namespace has no right to join one
    // owned by the host's: this process joins it then, before the clone.
    if new.contains(CloneFlags::CLONE_NEWUSER) {
        if let Some(file) = cgroup_namespace.take() {
            nix::sched::setns(file, CloneFlags::CLONE_NEWCGROUP)
                .context("linux.namespaces[cgroup].path: join")?;
        }
    }
    let (forked, cgroup_entry) = clone_init(new, cgroup_entry)?;
    container.record.v2_after_clone = cgroup_entry.v2_entry() == V2Entry::AfterClone;
    let child = match forked {
        feather_sys::process::Forked::Child => {
            drop(socket);
            Init {
                cgroup_entry: Some(cgroup_entry),
                spec: spec.clone(),
                record: container.record.clone(),
                dir: container.dir.clone(),
                socket: child_socket,
                console,
                no_pivot: args.no_pivot,
                new_cgroup_namespace,
                cgroup_namespace,
                mount_namespace,
                host_base: feather.host_base,
                hidden_roots: hidden_roots.clone(),
                confinement: crate::confine::Confinement::of(feather.confine, spec),
                services: feather.services.clone(),
                preserve_fds: args.preserve_fds,
                idmapped,
                started: false,
            }
            .run()
        }
        feather_sys::process::Forked::Parent(child) => child,
    };
    feather_core::trace::phase("clone the init");
    drop(child_socket);
    drop(cgroup_entry);
    drop(console);
    drop(idmapped);
    let outcome = supervise(container, spec, &mut socket, child.pid.as_raw()).and_then(|()| {
        if feather.host_base {
            crate::hiding::registered_since(container, &hidden_roots)?;
        }
        Ok(())
    });
    if outcome.is_err() {
        let _ = feather_sys::process::signal(&child.pidfd, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child.pid, None);
    }
    outcome?;
    if let Some(pid_file) = &args.pid_file {
        PidFile::prepare(pid_file)?.write(container.record.pid)?;
    }
    Ok(())
}

/// Clones the init into `new` namespaces and into the group's v2 folder. A clone the kernel
/// killed at birth (this process's own v2 group has had `cgroup.kill` written a different
/// number of times than the container's: feather_sys's `V2Entry`; nothing tells ahead) is
/// cloned again, to move itself into the v2 group too. Returns the fork and what the init
/// enters its groups with.
fn clone_init(
    new: CloneFlags,
    entry: crate::cgroups::Entry,
) -> Result<(feather_sys::process::Forked, crate::cgroups::Entry)> {
    use feather_sys::process::{fork_into_cgroup, killed_at_birth, Forked};
    let clone = |entry: &crate::cgroups::Entry| {
        fork_into_cgroup(new, entry.v2()).map_err(|e| {
            anyhow::anyhow!("clone the container's init into its namespaces and cgroup: {e}")
        })
    };
    let init = match clone(&entry)? {
        Forked::Parent(init) if entry.v2().is_some() && killed_at_birth(&init) => init,
        forked => return Ok((forked, entry)),
    };
    let _ = nix::sys::wait::waitpid(init.pid, None);
    let entry = entry.moved_after_clone();
    Ok((clone(&entry)?, entry))
}

/// Drives the init through its steps, which it begins in its cgroups; returns once it waits
/// for `start`.
fn supervise(
    container: &mut Container,
    spec: &Spec,
    socket: &mut UnixStream,
    pid: i32,
) -> Result<()> {
    crate::userns::write_maps(pid, spec)?;
    if let Err(e) = writeln!(socket, "go {pid}") {
        // The init ended first (its cgroup join, its first step, failed): its reason is
        // better than "Broken pipe".
        return Err(init_said_why(socket).unwrap_or_else(|| e.into()));
    }
    container.record.pid = pid;
    let reader = BufReader::new(socket.try_clone()?);
    for line in reader.lines() {
        let line = line?;
        match line.as_str() {
            "mounted" => {
                feather_core::trace::phase("wait for the init's mounts");
                // runtime.md: "creating" is lifecycle step 2, the environment being made;
                // these hooks are steps 3 and 4, after it ("created"; runc says "creating").
                let state = crate::ops::hook_state(&container.record, "created");
                hooks::run(spec, Kind::Prestart, &state)?;
                hooks::run(spec, Kind::CreateRuntime, &state)?;
                writeln!(socket, "go")?;
                feather_core::trace::phase("run the prestart hooks");
            }
            "ready" => {
                feather_core::trace::phase("wait for the init to be ready");
                container.record.start_ticks =
                    feather_sys::process::start_ticks(nix::unistd::Pid::from_raw(pid))
                        .context("the container's init vanished")?;
                container.save()?;
                feather_core::trace::phase("save the record");
                return Ok(());
            }
            other => match other.strip_prefix("error ") {
                Some(message) => bail!("{message}"),
                None => bail!("unexpected message from the container's init: {other:?}"),
            },
        }
    }
    container.record.pid = 0;
    bail!("the container's init exited during create without saying why (if it was killed, the kernel's log names the OOM killer, or the engine's log a kill)")
}

/// The error an init that ended wrote on its socket before it went, if any (waiting a second
/// at most: an init that cannot be written to has closed its end).
fn init_said_why(socket: &UnixStream) -> Option<anyhow::Error> {
    let socket = socket.try_clone().ok()?;
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .ok()?;
    BufReader::new(socket)
        .lines()
        .map_while(|line| line.ok())
        .find_map(|line| {
            line.strip_prefix("error ")
                .map(|why| anyhow::anyhow!("{why}"))
        })
}

/// `--pid-file`, written whole or not at all (engines read it as soon as the command returns),
/// through its folder opened up front: `exec` writes it after entering the container's mount
/// namespace, where the engine's path leads nowhere.
pub struct PidFile {
    folder: std::os::fd::OwnedFd,
    name: std::ffi::OsString,
    path: PathBuf,
}

impl PidFile {
    pub fn prepare(path: &Path) -> Result<PidFile> {
        let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else {
            bail!("--pid-file {}: not a file path", path.display());
        };
        let folder = if folder.as_os_str().is_empty() {
            Path::new(".")
        } else {
            folder
        };
        let folder = nix::fcntl::open(
            folder,
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("--pid-file {}", path.display()))?;
        Ok(PidFile {
            folder,
            name: name.to_owned(),
            path: path.to_owned(),
        })
    }

    pub fn write(&self, pid: i32) -> Result<()> {
        let mut temporary = self.name.clone();
        temporary.push(".feather-oci.tmp");
        let written = nix::fcntl::openat(
            &self.folder,
            temporary.as_os_str(),
            nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_TRUNC
                | nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .and_then(|file| nix::unistd::write(&file, pid.to_string().as_bytes()).map(drop))
        .and_then(|()| {
            nix::fcntl::renameat(
                &self.folder,
                temporary.as_os_str(),
                &self.folder,
                self.name.as_os_str(),
            )
        });
        written.with_context(|| format!("--pid-file {}", self.path.display()))
    }
}

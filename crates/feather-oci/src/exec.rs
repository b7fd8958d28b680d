//! `exec`: a new process in a running container — in all of its namespaces and its cgroup,
//! under the container's seccomp profile, with the user, capabilities and environment of the
//! `--process` JSON (or the container's process with the flags' changes).
//!
//! This process opens the container's groups in the host's namespaces, joins the container's
//! namespaces through a pidfd of the init (checked against the recorded start time, so a
//! reused pid is never entered) but its cgroup namespace, then clones a child into the v2 group
//! (`CLONE_INTO_CGROUP`): the child joins the v1 groups, then the cgroup namespace last (as
//! runc: on an `nsdelegate` hierarchy a move is refused from inside a namespace whose root does
//! not hold the mover's group), and becomes the program. Its errors
//! come back over a close-on-exec socket, so a failed exec is this command's error. Without
//! `--detach` this command waits for the program, passing signals on, and relays its terminal
//! itself when `--tty` comes without `--console-socket` ([`crate::foreground`]).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use feather_sys::process::Forked;
use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use oci_spec::runtime::{LinuxCapabilities, Process, Spec};

use crate::store::{Container, Status};

#[derive(Default)]
pub struct ExecArgs {
    pub id: String,
    pub process: Option<PathBuf>,
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub preserve_fds: i32,
    pub command: Vec<String>,
}

/// Returns the exit code to exit with (0 when detached).
pub fn exec(root: &Path, args: &ExecArgs) -> Result<i32> {
    // The child runs this program inside the container up to its execve, and a program of
    // the container may run it again (`#!/proc/self/exe`): from a read-only mount (see
    // feather_sys::own_program), before anything is done. Re-executes the whole command.
    feather_sys::own_program::run_from_read_only_mount().context("exec")?;
    // The child, forked into the container, keeps it until its execve.
    feather_sys::process::make_undumpable().context("exec")?;
    let container = Container::load(root, &args.id)?;
    match container.status() {
        Status::Created | Status::Running => {}
        Status::Paused => bail!(
            "cannot exec in container {}: it is paused; resume it first",
            args.id
        ),
        other => bail!(
            "cannot exec in container {}: it is {} (an exec needs a created or running container)",
            args.id,
            other.name()
        ),
    }
    let config = container.config()?;
    let process = process_for(&config, args)?;
    // Before entering the container: a joined network namespace is told from the host's here.
    let confinement = crate::confine::Confinement::of(
        crate::annotations::Feather::parse(&config)?.confine,
        &config,
    );
    let terminal = process.terminal() == Some(true);
    // Without --console-socket, this side relays the terminal itself (as runc): the master
    // comes back over `relayed`.
    let (console, relayed) = match (&args.console_socket, terminal) {
        (Some(path), true) => (
            Some(
                UnixStream::connect(path)
                    .with_context(|| format!("--console-socket {}", path.display()))?,
            ),
            None,
        ),
        (None, true) if args.detach => {
            bail!("--tty with --detach: give --console-socket (nobody would relay the terminal)")
        }
        (None, true) => {
            let (ours, theirs) = UnixStream::pair().context("socketpair")?;
            (Some(theirs), Some(ours))
        }
        _ => (None, None),
    };
    let pid_file = args
        .pid_file
        .as_deref()
        .map(crate::create::PidFile::prepare)
        .transpose()?;
    let Some(pidfd) = container.init_pidfd() else {
        bail!(
            "cannot exec in container {}: its init has exited (container not running)",
            args.id
        );
    };
    // Opened here, in the host's mount namespace: the child starts in the container's groups
    // (see `start_child`).
    // Only the container's own group: a process put in the group a record merely names
    // (`init.scope`, another container's) would escape this container's limits and die with
    // that group's `kill --all`.
    let entry = container
        .own_groups()
        .map_err(|why| {
            anyhow::anyhow!(
                "cannot exec in container {}: its record names {why}: no process is started \
                 in it (see \"Whose group\" in feather-oci's docs)",
                args.id
            )
        })?
        .entry(container.record.v2_entry())
        .with_context(|| format!("cannot exec in container {}", args.id))?;
    // Taken in the host's namespaces, before the container's: the child writes into /proc
    // through it, never through the container's /proc (feather_sys::procfs).
    let proc = feather_sys::procfs::ProcFs::private()
        .map_err(|e| anyhow::anyhow!("exec: a private procfs: {e}"))?;
    let namespaces = config
        .linux()
        .iter()
        .flat_map(|l| l.namespaces().iter().flatten())
        .fold(CloneFlags::empty(), |all, ns| {
            all | CloneFlags::from_bits_truncate(ns.typ() as i32)
        });
    // The cgroup namespace is the child's to join, last (see the module's doc).
    let cgroup_namespace = namespaces
        .contains(CloneFlags::CLONE_NEWCGROUP)
        .then_some(&pidfd);
    feather_sys::process::join_namespaces(&pidfd, namespaces - CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| anyhow::anyhow!("cannot enter container {}: {e}", args.id))?;
    crate::process::find_program(&process)?;
    let seccomp = config.linux().as_ref().and_then(|l| l.seccomp().clone());
    let mut entry = entry;
    let child = loop {
        let (mut report, child_report) = UnixStream::pair()?;
        let forked = feather_sys::process::fork_into_cgroup(CloneFlags::empty(), entry.v2())
            .map_err(|e| clone_failed(&args.id, e))?;
        let child = match forked {
            Forked::Parent(child) => child,
            Forked::Child => {
                drop(report);
                let error =
                    match start_child(&entry, cgroup_namespace, &child_report).and_then(|()| {
                        // What the program gets besides stdio; the report socket cannot be
                        // walked through and closes at the execve. The procfs and the console
                        // socket are closed once used.
                        let mut passed: Vec<i32> = (3..3 + args.preserve_fds).collect();
                        passed.push(child_report.as_raw_fd());
                        let mut keep = passed.clone();
                        keep.push(proc.raw_fd());
                        keep.extend(console.as_ref().map(|c| c.as_raw_fd()));
                        feather_sys::process::close_other_fds(&keep);
                        become_it(
                            &process,
                            console,
                            seccomp.as_ref(),
                            &confinement,
                            proc,
                            &passed,
                        )
                    }) {
                        Ok(never) => match never {},
                        Err(error) => error,
                    };
                let _ = write!(&child_report, "{error:#}");
                std::process::exit(127);
            }
        };
        drop(child_report);
        let mut message = String::new();
        let _ = report.read_to_string(&mut message);
        match message.strip_prefix(RAN) {
            Some("") => break child,
            Some(error) => {
                let _ = waitpid(child.pid, None);
                bail!("{error}");
            }
            None if message.is_empty() && entry.v2().is_some() => {
                // Killed at birth, before it ran: cloned into a v2 group whose count of kills
                // differs from this process's own group's (feather_sys's `V2Entry`).
                let _ = waitpid(child.pid, None);
                entry = entry.moved_after_clone();
            }
            None if message.is_empty() => {
                let _ = waitpid(child.pid, None);
                bail!("cannot exec in container {}: the new process ended before it ran, without saying why (killed: see the kernel's log for the OOM killer)", args.id);
            }
            None => {
                let _ = waitpid(child.pid, None);
                bail!("{message}");
            }
        }
    };
    // Host descriptors of the groups: nothing needs them once the child is in.
    drop(entry);
    drop(console);
    let child = child.pid;
    if let Some(pid_file) = &pid_file {
        pid_file.write(child.as_raw())?;
    }
    if args.detach {
        return Ok(0);
    }
    let foreground = crate::foreground::Foreground::hold_signals()?;
    let master = relayed
        .as_ref()
        .map(crate::foreground::receive_master)
        .transpose()?;
    foreground.wait(child, master)
}

/// What the child writes first on its report socket, once it is in the container's groups: a
/// report without it is that of a child that never ran (killed at its clone).
const RAN: &str = "+";

/// The child's first step, before anything of the container's runs: it joins the container's
/// v1 groups (it was cloned into the v2 one; never moved by pid, which waits for an RCU grace
/// period), then its cgroup namespace, then says it ran.
fn start_child(
    entry: &crate::cgroups::Entry,
    cgroup_namespace: Option<&std::os::fd::OwnedFd>,
    mut report: &UnixStream,
) -> Result<()> {
    entry.enter()?;
    if let Some(pidfd) = cgroup_namespace {
        nix::sched::setns(pidfd, CloneFlags::CLONE_NEWCGROUP)
            .context("join the container's cgroup namespace")?;
    }
    report.write_all(RAN.as_bytes()).context("exec: report")
}

/// A failed clone into the container's v2 group, saying what the user can do about it.
fn clone_failed(id: &str, error: feather_sys::SysError) -> anyhow::Error {
    let why = match error.errno {
        nix::errno::Errno::EAGAIN => " (the container's group is at its pids limit, pids.max)",
        nix::errno::Errno::EBUSY => {
            " (the container's group has controllers enabled for groups below it, and only \
             those can hold processes)"
        }
        _ => "",
    };
    anyhow::anyhow!("cannot exec in container {id}: {error}{why}")
}

fn become_it(
    process: &Process,
    console: Option<UnixStream>,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    confinement: &crate::confine::Confinement,
    proc: feather_sys::procfs::ProcFs,
    passed: &[i32],
) -> Result<std::convert::Infallible> {
    nix::unistd::setsid().context("setsid")?;
    confinement.scope_exec()?;
    if let Some(console) = console {
        let (master, slave) =
            feather_sys::pty::open_pair().map_err(|e| anyhow::anyhow!("--tty: {e}"))?;
        feather_sys::fdpass::send(&console, b"/dev/ptmx", &[master.as_raw_fd()])
            .context("--tty: send the terminal to --console-socket")?;
        feather_sys::pty::make_controlling(&slave).map_err(|e| anyhow::anyhow!("{e}"))?;
        feather_sys::process::redirect_stdio(&slave).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    crate::process::become_program(process, seccomp, confinement.filters()?, proc, passed)
}

/// `--process FILE`, or the container's own process with the command and flags applied.
fn process_for(config: &Spec, args: &ExecArgs) -> Result<Process> {
    let mut process: Process = match &args.process {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--process {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("--process {}: not an OCI process", path.display()))?
        }
        None => {
            if args.command.is_empty() {
                bail!("exec: give a command, or --process FILE");
            }
            let mut process = config.process().clone().context("process")?;
            process.set_args(Some(args.command.clone()));
            process.set_terminal(Some(args.tty));
            process
        }
    };
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    if !args.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        env.extend(args.env.iter().cloned());
        process.set_env(Some(env));
    }
    if let Some(user) = &args.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        let user = process.user_mut();
        user.set_uid(
            uid.parse()
                .with_context(|| format!("--user {uid}: a number"))?,
        );
        user.set_gid(
            gid.parse()
                .with_context(|| format!("--user {gid}: a number"))?,
        );
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    if !args.caps.is_empty() {
        add_capabilities(&mut process, &args.caps)?;
    }
    Ok(process)
}

fn add_capabilities(process: &mut Process, names: &[String]) -> Result<()> {
    let mut capabilities: LinuxCapabilities = process.capabilities().clone().unwrap_or_default();
    for name in names {
        let cap: oci_spec::runtime::Capability =
            serde_json::from_value(serde_json::Value::String(name.clone()))
                .with_context(|| format!("--cap {name}: unknown capability"))?;
        let with = |set: &Option<oci_spec::runtime::Capabilities>| {
            let mut set = set.clone().unwrap_or_default();
            set.insert(cap);
            Some(set)
        };
        capabilities.set_bounding(with(capabilities.bounding()));
        capabilities.set_effective(with(capabilities.effective()));
        capabilities.set_permitted(with(capabilities.permitted()));
    }
    process.set_capabilities(Some(capabilities));
    Ok(())
}

//! The container's init: the process `create` clones into the new namespaces. It assembles the
//! root, reports ready, and waits on `exec.fifo` until `start`; then it becomes the program,
//! keeping its pid — the pid the engine waits on (the shim and conmon are subreapers: when
//! `create` exits, the init becomes their child).
//!
//! It talks to `create` over a socket pair, one line a message: `go <pid>` (it is in its
//! cgroup; its pid as the host sees it), `mounted` (hooks may run), `go`, `ready`, or
//! `error <text>`, which `create` reports as its own error.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use oci_spec::runtime::Spec;

use crate::cgroups::Groups;
use crate::hooks::{self, Kind};
use crate::store::Record;

pub struct Init {
    /// The container's groups, entered first thing ([`crate::cgroups::Entry`]).
    pub cgroup_entry: Option<crate::cgroups::Entry>,
    pub spec: Spec,
    pub record: Record,
    pub dir: PathBuf,
    pub socket: UnixStream,
    pub console: Option<UnixStream>,
    pub no_pivot: bool,
    pub new_cgroup_namespace: bool,
    /// `linux.namespaces[cgroup].path`: joined by the init once in its groups.
    pub cgroup_namespace: Option<std::fs::File>,
    /// `linux.namespaces[mount].path`: joined by the init before it builds the root there.
    pub mount_namespace: Option<std::fs::File>,
    pub host_base: bool,
    /// With `host_base`: the host's state folders to hide, as create read them.
    pub hidden_roots: Vec<std::path::PathBuf>,
    /// feather's own features (`org.feather.*`): its confinement and the host's services.
    pub confinement: crate::confine::Confinement,
    pub services: Vec<String>,
    pub preserve_fds: i32,
    /// The id-mapped mounts create made, to attach at their destinations.
    pub idmapped: crate::idmap::Trees,
    /// Set once `start` released the init: errors then go to the container's stderr.
    pub started: bool,
}

impl Init {
    /// Never returns: the program replaces the init, or the init exits after reporting.
    pub fn run(mut self) -> ! {
        let error = match self.steps() {
            Ok(never) => match never {},
            Err(error) => error,
        };
        let message = format!("{error:#}").replace('\n', " ");
        // After `ready` nobody reads the socket: the container's stderr is where the engine
        // shows it (runc does the same).
        if writeln!(self.socket, "error {message}").is_err() || self.started {
            eprintln!("feather-oci: container {}: {message}", self.record.id);
        }
        std::process::exit(1)
    }

    fn receive(&mut self) -> Result<String> {
        let mut line = String::new();
        BufReader::new(&self.socket).read_line(&mut line)?;
        if line.is_empty() {
            bail!("create went away");
        }
        Ok(line.trim_end().to_owned())
    }

    fn steps(&mut self) -> Result<Infallible> {
        // Until create has recorded us, its death must be ours.
        feather_sys::process::set_parent_death_signal(Signal::SIGKILL)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Before anything that could fork, and before its descriptors are closed by number.
        if let Some(entry) = self.cgroup_entry.take() {
            entry.enter()?;
        }
        if let Some(namespace) = self.cgroup_namespace.take() {
            nix::sched::setns(namespace, CloneFlags::CLONE_NEWCGROUP)
                .context("linux.namespaces[cgroup].path: join")?;
        }
        let mut keep: Vec<i32> = (3..3 + self.preserve_fds).collect();
        keep.push(self.socket.as_raw_fd());
        keep.extend(self.console.as_ref().map(|c| c.as_raw_fd()));
        keep.extend(self.idmapped.raw_fds());
        keep.extend(self.mount_namespace.as_ref().map(|m| m.as_raw_fd()));
        feather_sys::process::close_other_fds(&keep);
        let go = self.receive()?;
        let host_pid: i32 = go
            .strip_prefix("go ")
            .and_then(|p| p.parse().ok())
            .context("unexpected message from create")?;
        self.record.pid = host_pid;
        feather_core::trace::phase("init: wait for go");
        // Every write into /proc goes through a procfs of the init's own, taken before the
        // container has a single mount (docs/security.md): the container's /proc is its own to
        // make lead anywhere.
        let proc = feather_sys::procfs::ProcFs::private()
            .map_err(|e| anyhow::anyhow!("a private procfs for the init: {e}"))?;
        // The fifo is opened now, on the host's path (the namespace's root may not reach it);
        // after pivot_root it is reopened through this descriptor, for writing, which blocks
        // until `start` opens it for reading.
        let fifo = nix::fcntl::open(
            &self.dir.join("exec.fifo"),
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .context("open exec.fifo")?;
        if let Some(namespace) = self.mount_namespace.take() {
            // As runc: the root is assembled in the joined namespace, whose root it becomes;
            // the bundle's paths resolve there.
            nix::sched::setns(namespace, CloneFlags::CLONE_NEWNS)
                .context("linux.namespaces[mount].path: join")?;
        }
        if crate::userns::is_new(&self.spec) {
            crate::userns::become_root()?;
        }
        if self.new_cgroup_namespace {
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).context("linux.namespaces[cgroup]")?;
        }
        nix::unistd::setsid().context("setsid")?;
        feather_core::trace::phase("init: procfs, fifo, namespaces");
        let groups = Groups::new(&self.record.cgroup);
        let rootfs = crate::mounts::prepare_root(
            &self.spec,
            &self.record.bundle,
            &self.dir,
            self.host_base,
            &self.hidden_roots,
        )?;
        feather_core::trace::phase("init: prepare the root");
        let assembled = crate::mounts::mount_all(
            &self.spec,
            &rootfs,
            &self.record.bundle,
            &groups,
            &std::mem::take(&mut self.idmapped),
        )?;
        feather_core::trace::phase("init: mount all");
        writeln!(self.socket, "mounted")?;
        if self.receive()? != "go" {
            bail!("unexpected message from create");
        }
        let state = crate::ops::hook_state(&self.record, "created");
        hooks::run(&self.spec, Kind::CreateContainer, &state)?;
        feather_core::trace::phase("init: wait for the hooks");
        crate::mounts::mask_all(&self.spec, &assembled, &self.confinement)?;
        feather_core::trace::phase("init: mask");
        crate::mounts::enter_root(&assembled, self.no_pivot)?;
        feather_core::trace::phase("init: enter the root");
        self.set_names()?;
        crate::mounts::finish_root(&self.spec, &assembled, &self.confinement, &proc)?;
        feather_core::trace::phase("init: finish the root");
        if has_new_network(&self.spec) {
            // As runc: programs expect 127.0.0.1 in a new network namespace, which starts with
            // `lo` down.
            feather_sys::net::loopback_up()
                .map_err(|e| anyhow::anyhow!("linux.namespaces[network]: {e}"))?;
        }
        // The container's Landlock domain first, so that its services share it.
        self.confinement.scope_init()?;
        if !self.services.is_empty() {
            crate::services::start(&self.record.id, &self.services, &self.confinement)?;
        }
        let process = self.spec.process().clone().context("process")?;
        if process.terminal() == Some(true) {
            self.give_terminal()?;
        }
        feather_core::trace::phase("init: loopback, confinement, services, terminal");
        crate::process::find_program(&process)?;
        nix::sys::prctl::set_pdeathsig(None::<Signal>).context("prctl(PR_SET_PDEATHSIG)")?;
        feather_core::trace::phase("init: find the program");
        writeln!(self.socket, "ready")?;
        // Held open until exec closes it (O_CLOEXEC): `start` reads the byte, then waits for
        // the end of the fifo, so its poststart hooks follow the startContainer ones and the
        // program's exec.
        let started = wait_for_start(&fifo, &proc)?;
        self.started = true;
        let state = crate::ops::hook_state(&self.record, "running");
        hooks::run(&self.spec, Kind::StartContainer, &state)?;
        let seccomp = self.spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        // Everything else is closed before the execve (see process::become_program): dropped
        // here first, so that no object is left owning a closed descriptor.
        drop((fifo, assembled));
        let mut keep: Vec<i32> = (3..3 + self.preserve_fds).collect();
        keep.push(self.socket.as_raw_fd());
        keep.push(started.as_raw_fd());
        crate::process::become_program(
            &process,
            seccomp.as_ref(),
            self.confinement.filters()?,
            proc,
            &keep,
        )
    }

    fn set_names(&self) -> Result<()> {
        if let Some(hostname) = self.spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            nix::unistd::sethostname(hostname).context("hostname")?;
        }
        if let Some(domain) = self.spec.domainname().as_deref().filter(|h| !h.is_empty()) {
            // The system call, not /proc/sys/kernel/domainname: see feather_sys::procfs.
            feather_sys::net::set_domain_name(domain)
                .map_err(|e| anyhow::anyhow!("domainname: {e}"))?;
        }
        Ok(())
    }

    /// `process.terminal`: a pseudo-terminal of the container's devpts; the master goes to the
    /// engine through `--console-socket`, the slave becomes the init's controlling terminal,
    /// its stdio and `/dev/console`.
    fn give_terminal(&mut self) -> Result<()> {
        let Some(console) = &self.console else {
            bail!("process.terminal: a terminal needs --console-socket");
        };
        let (master, slave) =
            feather_sys::pty::open_pair().map_err(|e| anyhow::anyhow!("process.terminal: {e}"))?;
        feather_sys::fdpass::send(console, b"/dev/ptmx", &[master.as_raw_fd()])
            .context("process.terminal: send the terminal to --console-socket")?;
        drop(master);
        feather_sys::pty::make_controlling(&slave).map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::mounts::bind_console(&slave)?;
        feather_sys::process::redirect_stdio(&slave).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.console = None;
        Ok(())
    }
}

fn has_new_network(spec: &Spec) -> bool {
    spec.linux()
        .iter()
        .flat_map(|l| l.namespaces().iter().flatten())
        .any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network && ns.path().is_none())
}

fn wait_for_start(fifo: &OwnedFd, proc: &feather_sys::procfs::ProcFs) -> Result<OwnedFd> {
    let writer = proc
        .reopen(fifo, OFlag::O_WRONLY)
        .map_err(|e| anyhow::anyhow!("wait on exec.fifo: {e}"))?;
    nix::unistd::write(&writer, b"0").context("write exec.fifo")?;
    Ok(writer)
}

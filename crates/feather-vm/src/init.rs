//! The VM's init: pid 1 inside the VM. It assembles the VM's root (the isolation recipe),
//! reports to its keeper, then reaps orphans, runs the VM's first workload if it has one, and
//! shuts everything down in order when asked.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags};

use crate::boot::{self, ToInit};
use crate::commands::Commands;
use crate::decide::{self, InitAction};
use crate::idle::Quiet;
use crate::launch::{InitArgs, Resumed};
use crate::rootfs::{self, RootfsPlan};
use crate::spawner;
use crate::workload::Workload;
use feather_core::trace;

/// Why init could not assemble the VM or get ready (reported to the keeper, with its causes).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{call}")]
    Call {
        call: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error(transparent)]
    Root(feather_sys::SysError),
    #[error("cannot tell the keeper what the VM's layers lie over")]
    Pinned(#[source] std::io::Error),
    #[error("the keeper did not attach the VM's network")]
    Network(#[source] boot::BootError),
    #[error(transparent)]
    Interface(feather_net::NetError),
    #[error(transparent)]
    Landlock(feather_confine::landlock::LandlockError),
    #[error(transparent)]
    Confine(feather_confine::ConfineError),
    #[error("signals")]
    Signals(#[source] feather_sys::SysError),
    #[error("the command socket")]
    Commands(#[source] crate::commands::CommandError),
    #[error("fcntl on the keeper socket")]
    KeeperSocket(#[source] nix::errno::Errno),
    #[error("feather's binary was not found among init's files; cannot re-execute it")]
    NoProgram,
    #[error("the workload's arguments contain a NUL byte")]
    Nul,
    #[error("cannot start the command")]
    Workload(#[source] feather_sys::SysError),
    #[error("cannot run {program} inside the VM")]
    Reexecute {
        program: String,
        #[source]
        source: nix::errno::Errno,
    },
}

fn call(call: &'static str) -> impl FnOnce(nix::errno::Errno) -> InitError {
    move |source| InitError::Call { call, source }
}

#[derive(Clone, Debug)]
pub struct InitPlan {
    pub rootfs: RootfsPlan,
    /// A program to run as soon as the VM is up; init exits with its status when it ends.
    pub workload: Option<Workload>,
    /// How long processes get between SIGTERM and SIGKILL when the VM stops.
    pub grace: Duration,
    /// Whether init keeps the stdin/stdout/stderr the keeper gave it (a foreground run: pipes the
    /// keeper relays, never the caller's own descriptors) or detaches them.
    pub attached: bool,
    /// What the VM's config relaxes or adds to the seccomp filter.
    pub seccomp: feather_confine::seccomp::Profile,
}

/// What init tells its keeper once the VM is assembled, or why it could not be.
pub use crate::boot::FromInitBoot as InitReport;

/// Refuses, naming the limit and what to do, to start a VM whose init could not hold its
/// sockets at their fixed numbers ([`crate::commands::COMMAND_FD`], [`spawner::SPAWNER_FD`]):
/// init inherits the caller's open-file limit, and below them it would fail deep inside its
/// start with a bare EINVAL. Checked by the keeper before anything of the VM is made.
pub fn check_descriptor_limit(vm: &str) -> crate::error::Result<()> {
    let highest = crate::commands::COMMAND_FD.max(spawner::SPAWNER_FD);
    let needed = highest as u64 + 1;
    let (limit, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(|e| crate::error::VmError::Io {
            vm: vm.to_string(),
            doing: "cannot read the open-file limit".into(),
            source: e.into(),
        })?;
    if limit < needed {
        return Err(crate::error::VmError::DescriptorLimit {
            vm: vm.to_string(),
            limit,
            highest,
            needed,
        });
    }
    Ok(())
}

/// Runs as the child of the keeper's clone into new namespaces; never returns.
pub fn run(plan: InitPlan, mut keeper: UnixStream) -> ! {
    // If the keeper dies, so does the VM: a VM nobody keeps could be neither stopped nor seen.
    if feather_sys::process::set_parent_death_signal(Signal::SIGKILL).is_err() {
        std::process::exit(1);
    }
    let _ = nix::sys::prctl::set_name(c"feather-init");
    if let Err(e) = boot::expect(&mut keeper, ToInit::Go) {
        eprintln!("feather init: from the keeper: {e}");
        std::process::exit(1);
    }
    trace::init_step("wait for GO");
    let resumed = Resumed {
        workload: plan.workload.clone(),
        grace_ms: plan.grace.as_millis() as u64,
        allow_userns: plan.seccomp.allow_userns,
        disk_quota: plan.seccomp.disk_quota,
    };
    let filters = match prepare(&plan, &resumed, &mut keeper) {
        Ok(filters) => filters,
        Err(why) => {
            report_failure(&mut keeper, &why);
            std::process::exit(1);
        }
    };
    if !plan.rootfs.reexecutes() {
        // A foreground run's command may end at once, and init's end would map again the code
        // a release gave back: init waits until it has been quiet a while (see `idle`).
        let quiet = if plan.attached {
            Quiet::busy_since(std::time::Instant::now())
        } else {
            Quiet::release_first()
        };
        serve(keeper, resumed, quiet, filters)
    }
    let why = reexecute(&plan, &resumed, &keeper);
    report_failure(&mut keeper, &why);
    std::process::exit(1)
}

/// Replaces init's program, until now the host's feather binary, by the same binary bound inside
/// the VM (rootfs step 8b), so that nothing of the running VM refers to a file outside its own
/// mounts and the VM can be checkpointed. Returns only on failure, saying why.
fn reexecute(plan: &InitPlan, resumed: &Resumed, keeper: &UnixStream) -> InitError {
    use std::os::fd::AsRawFd;
    let fd = keeper.as_raw_fd();
    if let Err(e) = nix::fcntl::fcntl(
        keeper,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    ) {
        return InitError::KeeperSocket(e);
    }
    let Some(args) = rootfs::in_vm_program(&plan.rootfs.init_files) else {
        return InitError::NoProgram;
    };
    let launch = InitArgs {
        keeper_fd: fd,
        resumed: resumed.clone(),
    };
    let Ok(args) = args
        .into_iter()
        .chain(launch.to_args())
        .map(std::ffi::CString::new)
        .collect::<Result<Vec<_>, _>>()
    else {
        return InitError::Nul;
    };
    match nix::unistd::execv(&args[0], &args) {
        Err(source) => InitError::Reexecute {
            program: args[0].to_string_lossy().into_owned(),
            source,
        },
    }
}

/// The running feather binary followed by every shared object mapped into this process (the
/// dynamic loader, libc, ...; none for a static binary): what init needs to run again from
/// inside the VM.
pub fn program_files() -> std::io::Result<Vec<std::path::PathBuf>> {
    let exe = std::env::current_exe()?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut files = vec![exe.clone()];
    for path in maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
    {
        let path = std::path::PathBuf::from(path);
        let is_library = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().contains(".so"));
        if path.is_absolute() && is_library && path != exe && !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
}

/// init after its re-execution inside the VM: forks the spawner, enters the VM's filter and
/// capability set, starts the first workload, reports to the keeper on `keeper`, and
/// supervises until the VM ends. Never returns.
pub fn resume(keeper: UnixStream, resumed: Resumed) -> ! {
    // Init's steps go on from here (the re-execution itself is not timed).
    trace::begin_init();
    serve(keeper, resumed, Quiet::release_first(), None)
}

/// [`resume`], giving the program's pages back when `quiet` says (see `idle`). `compiled`: the
/// VM's seccomp filters of `resumed`'s profile, if init compiled them already: only an init
/// that does not re-execute can have (see [`prepare`]); `None` has them compiled here.
fn serve(
    mut keeper: UnixStream,
    resumed: Resumed,
    quiet: Quiet,
    compiled: Option<feather_confine::seccomp::Compiled>,
) -> ! {
    let _ = nix::sys::prctl::set_name(c"feather-init");
    // The VM's root holds the same capabilities as init: were init dumpable, it could ptrace
    // it or take its descriptors (`/proc/1/fd`, pidfd_getfd) — the exec channel's listener, the
    // layer's tmpfs before it is closed. Not dumpable, only the host (CAP_SYS_PTRACE: CRIU,
    // `feather ps`) reaches in. What init starts is dumpable again at its execve.
    if let Err(e) = feather_sys::process::make_undumpable() {
        report_failure(&mut keeper, &InitError::Root(e));
        std::process::exit(1);
    }
    // Compiled once (before the wait for the network, unless init re-executed), before the
    // spawner's fork: the spawner installs these very programs in every process it makes (it
    // compiled them again before), and compiles its own filter beside init's next steps.
    let seccomp = resumed.seccomp();
    let filters = match compiled.map_or_else(|| compile_filters(seccomp), Ok) {
        Ok(filters) => filters,
        Err(e) => {
            report_failure(&mut keeper, &e);
            std::process::exit(1);
        }
    };
    // The spawner gives its pages back when init does: for a foreground run, not while its
    // command may end at once (reading its smaps and unmapping took CPU from the command).
    let spawner = start_spawner(seccomp, &filters, quiet.clone());
    trace::init_step("fork the spawner");
    // The seccomp filter and the reduced capability set, inherited by everything init starts.
    // (Until now nothing of the VM's has run: only init, its re-execution from the VM's own
    // copy of feather's binary, and the spawner's fork.)
    if let Err(e) = feather_confine::confine_compiled(&filters) {
        report_failure(&mut keeper, &InitError::Confine(e));
        std::process::exit(1);
    }
    trace::init_step("confine init (filter, capabilities)");
    // As pid 1 of its namespace, init would ignore every signal it has no handler for; blocked
    // and read from a signalfd, they arrive.
    let signals = match feather_sys::process::block_signals(&HANDLED) {
        Ok(signals) => signals,
        Err(e) => {
            report_failure(&mut keeper, &InitError::Signals(e));
            std::process::exit(1);
        }
    };
    // `feather exec` starts its programs through init (see commands.rs), ready before the VM is.
    let mut commands = match Commands::listen(spawner) {
        Ok(commands) => commands,
        Err(e) => {
            report_failure(&mut keeper, &InitError::Commands(e));
            std::process::exit(1);
        }
    };
    report(&mut keeper, InitReport::Ready);
    trace::init_step("signals, exec channel, report ready");
    // Right after the report: the keeper's steps up to Start are its own (the network's last
    // step, its record, hiding state roots registered meanwhile, the shuttle broker), and the
    // fork and the command's preparation go beside them; its working folder is entered only
    // at the exec, after that hiding (workload::Prepared).
    let first = match resumed
        .workload
        .as_ref()
        .map(|workload| FirstWorkload::prepare(workload, &keeper))
        .transpose()
    {
        Ok(first) => first,
        Err(e) => {
            eprintln!("feather: {}", feather_core::error::causes(&e));
            std::process::exit(crate::workload::EXIT_CANNOT_EXEC);
        }
    };
    // No request is served before Start (`supervise`, below, is the first to accept one):
    // a background keeper answers `feather start` before it hides the roots registered while
    // the VM started, and sends Start only after; `feather exec` connects to this process
    // directly, so an exec served earlier could see such a root (keeper.rs, `main_background`;
    // the security test `host_view::an_exec_right_after_a_background_start_…`).
    trace::init_step("fork and prepare the first workload");
    if let Err(e) = boot::expect(&mut keeper, ToInit::Start) {
        eprintln!("feather init: from the keeper: {e}");
        std::process::exit(1);
    }
    trace::init_step("wait for Start");
    drop(keeper);
    let workload = first.map(FirstWorkload::start);
    let code = supervise(
        &signals,
        &mut commands,
        workload,
        Duration::from_millis(resumed.grace_ms),
        quiet,
    );
    std::process::exit(code)
}

/// The spawner (PrivateTmp=), forked inside the VM's Landlock domain, after init's
/// re-execution (so it shares init's pages, and maps no host file) and before init's filter
/// and capability drop, since its one recipe needs CAP_SYS_ADMIN (it confines itself to that
/// recipe at once). Returns init's end of its socket. A VM whose spawner cannot start still
/// runs; only its units with PrivateTmp= fail, saying so.
fn start_spawner(
    seccomp: feather_confine::seccomp::Profile,
    filters: &feather_confine::seccomp::Compiled,
    quiet: Quiet,
) -> Option<OwnedFd> {
    match spawner::start(seccomp, filters, quiet) {
        Ok(end) => Some(end),
        Err(e) => {
            eprintln!(
                "feather init: {}; units with PrivateTmp= cannot start in this VM",
                feather_core::error::causes(&e)
            );
            None
        }
    }
}

/// The VM's seccomp filters, compiled once: init installs them, and the spawner installs these
/// very programs in every process it makes.
fn compile_filters(
    profile: feather_confine::seccomp::Profile,
) -> Result<feather_confine::seccomp::Compiled, InitError> {
    let filters = feather_confine::seccomp::Compiled::new(profile)
        .map_err(|e| InitError::Confine(e.into()))?;
    trace::init_step("compile the seccomp filters");
    Ok(filters)
}

/// Everything before init re-executes itself: the cgroup view, the root, the network, the
/// Landlock domain. Returns the VM's seccomp filters of `resumed`'s profile (the one the
/// spawner is handed too), compiled on the way unless init re-executes.
fn prepare(
    plan: &InitPlan,
    resumed: &Resumed,
    keeper: &mut UnixStream,
) -> Result<Option<feather_confine::seccomp::Compiled>, InitError> {
    // Every VM is a session of its own, led by its init: nothing of it belongs to a session
    // outside (which would also keep it from being checkpointed), and a foreground run's VM has
    // no controlling terminal of the caller's that its processes could open as /dev/tty.
    nix::unistd::setsid().map_err(call("setsid"))?;
    // The root is assembled while the keeper moves init into the VM's cgroup and attaches its
    // network (both wait for RCU grace periods on this kernel): nothing here forks or runs a
    // program of the VM's.
    let (old_root, pinned) = rootfs::assemble(&plan.rootfs).map_err(InitError::Root)?;
    // What the layers lie over, as mounted, for the keeper's record (review gl27 L4).
    boot::send_pinned(keeper, pinned).map_err(InitError::Pinned)?;
    trace::init_step("tell the keeper what the layers lie over");
    // While the keeper attaches the network, which init waits for next: the filters depend on
    // the VM's profile only. An init that re-executes compiles them after (its new program
    // cannot take them over).
    let filters = (!plan.rootfs.reexecutes())
        .then(|| compile_filters(resumed.seccomp()))
        .transpose()?;
    // Until the old root is detached (an RCU grace period, on a thread of init's), only steps
    // that resolve no path follow: the wait for the network, the cgroup namespace, the
    // interfaces, the Landlock domain.
    boot::expect(keeper, ToInit::NetworkReady).map_err(InitError::Network)?;
    trace::init_step("wait for the keeper's network");
    // The cgroup namespace is made now, after the keeper moved us into the VM's group, so that
    // the VM sees its own group as the root of the hierarchy.
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(call("unshare cgroup namespace"))?;
    // After NETWORK_READY: bringing `lo` up takes the host-wide RTNL, which the keeper's attach
    // holds meanwhile.
    if plan.rootfs.network.own_namespace {
        feather_sys::net::loopback_up().map_err(InitError::Root)?;
    }
    plan.rootfs
        .network
        .configure()
        .map_err(InitError::Interface)?;
    // One Landlock domain for the whole VM, made before init starts anything: every process of
    // the VM descends from init (`feather exec` too), so they all share it. It needs
    // CAP_SYS_ADMIN (no_new_privs stays off), so it comes before the capability set.
    let scoping = if plan.rootfs.network.own_namespace {
        feather_confine::landlock::scope_signals()
    } else {
        feather_confine::landlock::scope_ipc()
    }
    .map_err(InitError::Landlock)?;
    trace::init_step("cgroup namespace, interfaces, Landlock domain");
    old_root.detached().map_err(InitError::Root)?;
    trace::init_step("wait for the old root's detach");
    // The VM's tree shared within the VM (never with the host: the recipe's step 1 made it
    // private; after the pivot, which refuses a shared parent), so that what the host hides in
    // this namespace later (a root registered while the VM runs, the roots a restore hides
    // again) reaches every mount namespace of the VM: those of its units with `PrivateTmp=`
    // (slaves, crate::spawner), made before or after (crate::hiding).
    feather_sys::mount::make_all_shared().map_err(InitError::Root)?;
    trace::init_step("make every mount shared");
    if !plan.attached {
        if scoping == feather_confine::landlock::Scoping::Unsupported {
            eprintln!(
                "feather init: {}; abstract sockets and signals are confined by the VM's \
                 namespaces only",
                feather_confine::landlock::support()
            );
        }
        detach_stdio();
    }
    // The filter and the capability drop come after the re-execution (`resume`), once the
    // spawner is forked.
    Ok(filters)
}

fn report(keeper: &mut UnixStream, report: InitReport) {
    let _ = boot::send(keeper, &report);
}

/// The keeper hears why, with every cause: the report crosses a process boundary as text.
fn report_failure(keeper: &mut UnixStream, why: &InitError) {
    report(keeper, InitReport::Failed(feather_core::error::causes(why)));
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

/// The VM's first workload (a `run --rm` command), forked and prepared — its user, groups,
/// folder, signals and capabilities — as soon as init has reported ready, so that this runs
/// beside the keeper's last steps (its record, the shuttle broker) instead of after them. The
/// process execs the program only once the keeper says Start, so the command still finds the
/// channels its policy gives it from its first instruction. (Forked and prepared after Start,
/// these steps were about a quarter of the keeper's "run the command" for `/bin/true`.)
struct FirstWorkload {
    pid: Pid,
    /// Its end of the pipe the prepared process waits on: a byte lets it exec, the pipe's
    /// close without one (init gone) ends it.
    go: OwnedFd,
}

impl FirstWorkload {
    fn prepare(workload: &Workload, keeper: &UnixStream) -> Result<FirstWorkload, InitError> {
        use std::os::fd::AsRawFd;
        let (wait, go) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(call("pipe2"))?;
        match feather_sys::process::fork().map_err(InitError::Workload)? {
            Some(pid) => Ok(FirstWorkload { pid, go }),
            None => {
                drop(go);
                // Only init talks to the keeper: the keeper's end sees init's close alone.
                let _ = nix::unistd::close(keeper.as_raw_fd());
                let why = match crate::workload::prepare(workload, None) {
                    Ok(prepared) if await_go(&wait) => prepared.exec(),
                    Ok(_) => std::process::exit(crate::workload::EXIT_CANNOT_EXEC),
                    Err(why) => why,
                };
                eprintln!("feather: {}", feather_core::error::causes(&why));
                std::process::exit(why.exit_code());
            }
        }
    }

    /// Lets the prepared process exec its program; returns its pid.
    fn start(self) -> Pid {
        // A process that ended already (it failed to prepare) is reaped as any other.
        let _ = nix::unistd::write(&self.go, &[1]);
        self.pid
    }
}

/// Whether init let the prepared workload go (a byte came), rather than ending first.
fn await_go(wait: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(wait, &mut byte) {
            Ok(1) => return true,
            Err(Errno::EINTR) => {}
            _ => return false,
        }
    }
}

/// Reaps every child and serves `feather exec` until the VM's end, and returns init's exit
/// code: the workload's status when there is one, 0 after an orderly stop.
fn supervise(
    signals: &SignalFd,
    commands: &mut Commands,
    workload: Option<Pid>,
    grace: Duration,
    mut quiet: Quiet,
) -> i32 {
    // The VM is up: init gives back the code that made it (and, after each burst of requests,
    // the code that served them), at once or, for a foreground run, once quiet.
    loop {
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        fds.extend(commands.poll_fds());
        if quiet.wait(&mut fds, None).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        commands.handle(&ready[1..]);
        if !ready[0] {
            continue;
        }
        let Ok(Some(info)) = signals.read_signal() else {
            continue;
        };
        let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        match decide::init_on_signal(signal, workload) {
            InitAction::Reap => {
                if let Some(code) = reap(workload, commands) {
                    trace::init_step("run the first workload until it ends");
                    shut_down(decide::grace_after_workload(grace), signals, commands);
                    trace::init_step("stop the rest of the VM");
                    return code;
                }
            }
            // The keeper forwards what the caller's terminal sent it (Ctrl-C included): the VM
            // is a session of its own, which no host terminal signals directly.
            InitAction::Forward(pid, signal) => {
                let _ = kill(pid, signal);
            }
            InitAction::ShutDown => {
                shut_down(grace, signals, commands);
                return 0;
            }
            InitAction::Ignore => {}
        }
    }
}

/// Collects every exited child, telling `feather exec` of its programs' ends; returns the
/// workload's exit code if it was among them.
fn reap(workload: Option<Pid>, commands: &mut Commands) -> Option<i32> {
    decide::reap(
        || waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)),
        workload,
        |pid, code| {
            commands.exited(pid, code);
        },
    )
}

/// Where the VM's service manager (crates/feather-svc) records its pid.
const SERVICE_MANAGER_PID_FILE: &str = "/run/feather-svc/manager.pid";
/// The manager's process name (feather_svc::manager::PROGRAM, the binary it executes).
const SERVICE_MANAGER_COMM: &str = "feather-svcd";

/// Gives the VM's service manager, if one runs, the first part of the grace period to stop its
/// services in reverse dependency order, before everything gets SIGTERM at once.
fn stop_services_first(deadline: Instant, signals: &SignalFd, commands: &mut Commands) {
    let Some(manager) = std::fs::read_to_string(SERVICE_MANAGER_PID_FILE)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .map(Pid::from_raw)
    else {
        return;
    };
    // The pid must still be the manager (the `feather-svcd` binary), not a newcomer.
    let comm = std::fs::read_to_string(format!("/proc/{manager}/comm")).unwrap_or_default();
    if comm.trim_end() != SERVICE_MANAGER_COMM || kill(manager, Signal::SIGTERM).is_err() {
        return;
    }
    while Instant::now() < deadline {
        // The manager is init's child (it detached from the `exec` that started it).
        let _ = reap(None, commands);
        if kill(manager, None) == Err(Errno::ESRCH) {
            return;
        }
        await_child_signal(signals, deadline);
    }
}

/// Stops every process of the VM: SIGTERM to all, up to `grace` for them to exit, then SIGKILL.
fn shut_down(grace: Duration, signals: &SignalFd, commands: &mut Commands) {
    let everyone = Pid::from_raw(-1);
    let deadline = Instant::now() + grace;
    stop_services_first(deadline, signals, commands);
    let _ = kill(everyone, Signal::SIGTERM);
    while Instant::now() < deadline {
        let _ = reap(None, commands);
        if alone() {
            return;
        }
        await_child_signal(signals, deadline);
    }
    let _ = kill(everyone, Signal::SIGKILL);
    let _ = reap(None, commands);
}

/// Whether no process but init is left in the VM's pid namespace. kill(-1, 0) fails with ESRCH
/// then, but it walks every process of the host; a child init has not reaped yet says at once
/// that init is not alone (every process of the VM that init started descends from it, and
/// orphans are re-parented to it), so the walk is left for when init has no child left (a
/// process entered from the host with setns has a parent outside, which only the walk sees).
fn alone() -> bool {
    use nix::sys::wait::{waitid, Id};
    let no_child = waitid(
        Id::All,
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
    ) == Err(Errno::ECHILD);
    no_child && kill(Pid::from_raw(-1), None) == Err(Errno::ESRCH)
}

/// Longest wait for a SIGCHLD before init looks again anyway: a safety net only.
const SHUT_DOWN_RECHECK: Duration = Duration::from_millis(100);

/// Waits until a signal arrives (a SIGCHLD: some process of the VM ended) or `deadline`, and
/// takes it. Every end that can leave init alone in the VM sends it a SIGCHLD: the last
/// process to end is init's child then (orphans are re-parented to init), so init looks again
/// the moment it may be alone instead of at the next tick of a timer (a fixed 10 ms sleep
/// cost every `run --rm` and every stop 10 ms). Other signals that arrive meanwhile (a
/// second stop, a forwarded Ctrl-C) change nothing: the VM is being stopped already.
fn await_child_signal(signals: &SignalFd, deadline: Instant) {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .min(SHUT_DOWN_RECHECK);
    let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    if let Ok(1..) = nix::poll::poll(&mut fds, feather_sys::timed::poll_timeout(left)) {
        let _ = signals.read_signal();
    }
}

//! The service manager inside a VM: starts units in dependency order, waits for each to be
//! ready by its `Type=`, supervises them (restart, start limits), and stops them in reverse
//! order. One thread and one loop: it polls its control socket, a signalfd and the notify
//! sockets, and moves every unit through its states on each turn.
//!
//! ```text
//! waiting ─▶ activating: condition → start-pre → start → (ready) → start-post ─▶ active
//!   active ─(main exits)─▶ stop-post ─▶ auto-restart ─▶ activating …   or ─▶ inactive/failed
//!   active ─(stop)─▶ deactivating: stop → sigterm → (timeout) sigkill → stop-post ─▶ inactive
//! ```
//!
//! A unit's processes are found by what the kernel knows: each unit has a cgroup of its own
//! below the VM's (`super::cgroups`), which every process of the unit enters before it executes
//! its program, so a daemon that forks away or makes a session of its own is still the unit's.
//! In a VM without per-unit cgroups (a throw-away VM without limits has no cgroup at all),
//! sessions stand in: every command starts in a new session, and a daemon that makes one of its
//! own is followed by its main pid's session. The manager is a child subreaper, so daemons that
//! fork away are reparented to it and reaped here.
//!
//! Beside this file, one part of the manager each:
//! - `requests`: what clients ask, and the answers;
//! - `starting`: a unit's way up; `readiness`: PID files and sd_notify; `bus_names`:
//!   `Type=dbus` readiness on the VM's bus;
//! - `exits`: what the end of a unit's process means; `stopping`: a unit's way down;
//! - `accepting`: `Accept=yes` sockets; `timers`: timer units.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::bus::{self, Bus};
use super::processes::{all_processes, guess_main_pid, is_zombie, read_pid_file, session_of};
use super::protocol::{
    self, FreshState, Refusal, Request, Response, ServiceInfo, NOTIFY_DIR, SOCKET,
};
use super::spawn::{self, Identity, SpawnError};
use super::spawner::{self, Spawner};
use super::{cgroups, filesystem, protections, syscall_filter};
use super::{sockets, syslog};
use crate::graph::{socket_service, DependencyGraph};
use crate::name::UnitName;
use crate::paths::UnitPaths;
use crate::unit::{KillMode, Restart, ServiceType, Unit};
use crate::words::ExecCommand;
use crate::{catalog, conditions, generators, state};

mod accepting;
mod bus_names;
mod decide;
mod exits;
mod readiness;
mod requests;
mod starting;
mod stopping;
mod timers;

// The parent uses only `decide` of its children (pure, it uses nothing back); the other
// children add methods to [`Manager`] and use the parent, never the other way round.
use decide::{phase_setting, Exit, Outcome, Peer, Phase, State, TimerRun};

/// The most sockets one service can be handed.
const MAX_PASSED_SOCKETS: RawFd = 32;

/// How often a running service's main process is looked for when it is not the manager's
/// child (and so its end would not be signalled).
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// How often a connection to the VM's system bus is tried while a Type=dbus unit waits and the
/// bus cannot be reached (dbus may still be starting).
const BUS_RETRY: Duration = Duration::from_millis(200);

/// How often units are looked at while something is in progress.
const TICK: Duration = Duration::from_millis(5);

/// Why a unit could not start (what its `result` then says).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Socket(#[from] sockets::SocketError),
    #[error(transparent)]
    Calendar(#[from] crate::calendar::CalendarError),
    #[error("notify socket {}: {error}", path.display())]
    NotifySocket {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the unit it triggers cannot be loaded: {0}")]
    TimerTarget(crate::SvcError),
    #[error("{0} has no OnActiveSec=, OnBootSec=, OnUnitActiveSec=, OnUnitInactiveSec= or OnCalendar=: nothing would start it")]
    TimerWithoutTrigger(String),
    #[error("fresh state: {0}")]
    FreshState(state::StateError),
    #[error("the forking start command exited, and no main process was left")]
    NoMainProcess,
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
}

/// Why the manager could not set itself up (it then exits; its log says why).
#[derive(Debug, thiserror::Error)]
#[error("{step}: {error}")]
pub struct SetupError {
    step: &'static str,
    error: std::io::Error,
}

fn setup(step: &'static str) -> impl FnOnce(std::io::Error) -> SetupError {
    move |error| SetupError { step, error }
}

/// One unit as the manager runs it.
struct Runtime {
    unit: Unit,
    state: State,
    phase: Phase,
    since: Instant,
    main_pid: Option<Pid>,
    control: Option<(Pid, ExecCommand)>,
    pending: VecDeque<ExecCommand>,
    deadline: Option<Instant>,
    ready: bool,
    status_text: Option<String>,
    result: Option<Outcome>,
    restarts: u32,
    starts: VecDeque<Instant>,
    sessions: BTreeSet<i32>,
    notify: Option<UnixDatagram>,
    identity: Option<Identity>,
    env: Vec<(String, String)>,
    log: Option<File>,
    pulled_by: Option<String>,
    /// Units this one starts after (and stops before).
    after: BTreeSet<String>,
    /// Units whose failure fails this one (Requires=, BindsTo=, Requisite=).
    requires: BTreeSet<String>,
    restart_at: Option<Instant>,
    /// A start of it failed and is retried without a start limit (`StartLimitIntervalSec=0`,
    /// pdns's units): its state would never settle, so a job waiting for it answers, with the
    /// unit shown as failing. Cleared once it is active, or stopped, or failed for good.
    start_failing: bool,
    /// Asked to stop, waiting for the units ordered after it to stop first.
    stop_pending: bool,
    /// The stop was asked for: the unit is not restarted.
    stop_requested: bool,
    /// Whether the unit got as far as active in this run (ExecStop runs only then).
    was_active: bool,
    /// For a socket unit: the sockets it listens on, handed to its service.
    listeners: Vec<sockets::Bound>,
    /// A start was asked for while the unit was stopping.
    start_after_stop: bool,
    /// Why the last reload failed.
    reload_error: Option<String>,
    /// `--fresh-state`: the folders to empty and the initialiser, for the next start only.
    fresh: Option<state::Plan>,
    /// An instance started for one connection of an `Accept=yes` socket: that socket's name.
    instance_of: Option<String>,
    /// Its connection, until its main process has it.
    connection: Option<OwnedFd>,
    /// For an `Accept=yes` socket: the connections accepted so far (numbering instances).
    accepted: u64,
    /// For a timer: when it started, its calendar events, when it last triggered its unit,
    /// and when it next does.
    timer: Option<TimerRun>,
    /// When the unit was last started and last stopped (a timer's OnUnitActiveSec= and
    /// OnUnitInactiveSec= count from them).
    last_activated: Option<Instant>,
    last_deactivated: Option<Instant>,
    /// Its own cgroup below the VM's, where the VM has them.
    group: Option<feather_sys::cgroup::Cgroup>,
    /// Its `SystemCallFilter=`, compiled at its start.
    syscall_filter: Option<Vec<feather_sys::seccomp::Instruction>>,
    /// The calls its `PrivateDevices=`, `ProtectClock=`, … refuse, compiled at its start.
    protection_filter: Option<Vec<feather_sys::seccomp::Instruction>>,
    /// `PrivateTmp=`: the name of its folders in `/tmp` and `/var/tmp`, from its start to its
    /// stop.
    private_tmp: Option<String>,
    /// A process of it entered a Landlock domain of its own (`ProtectSystem=`, …) since it
    /// started.
    landlocked: bool,
    /// The VM was restored from a checkpoint while it ran under a Landlock domain, which
    /// CRIU does not restore: its processes run without it until it starts again.
    unconfined_since_restore: bool,
}

impl Runtime {
    fn new(unit: Unit) -> Runtime {
        Runtime {
            unit,
            state: State::Inactive,
            phase: Phase::Idle,
            since: Instant::now(),
            main_pid: None,
            control: None,
            pending: VecDeque::new(),
            deadline: None,
            ready: false,
            status_text: None,
            result: None,
            restarts: 0,
            starts: VecDeque::new(),
            sessions: BTreeSet::new(),
            notify: None,
            identity: None,
            env: Vec::new(),
            log: None,
            pulled_by: None,
            after: BTreeSet::new(),
            requires: BTreeSet::new(),
            restart_at: None,
            start_failing: false,
            stop_pending: false,
            stop_requested: false,
            was_active: false,
            listeners: Vec::new(),
            start_after_stop: false,
            reload_error: None,
            fresh: None,
            instance_of: None,
            connection: None,
            accepted: 0,
            timer: None,
            last_activated: None,
            last_deactivated: None,
            group: None,
            syscall_filter: None,
            protection_filter: None,
            private_tmp: None,
            landlocked: false,
            unconfined_since_restore: false,
        }
    }

    /// Whether the unit's cgroup holds any process.
    fn group_populated(&self) -> bool {
        self.group
            .as_ref()
            .is_some_and(|g| !cgroups::members(g).is_empty())
    }

    /// A socket unit with `Accept=yes`: the manager accepts its connections itself.
    fn is_accepting(&self) -> bool {
        self.unit.socket.as_ref().is_some_and(|s| s.accept)
    }

    fn peer(&self) -> Peer {
        Peer {
            state: self.state,
            stop_pending: self.stop_pending,
        }
    }

    fn set(&mut self, state: State, phase: Phase) {
        if self.state != state {
            self.since = Instant::now();
        }
        if matches!(state, State::Active | State::Inactive | State::Failed) {
            self.start_failing = false;
        }
        self.state = state;
        self.phase = phase;
    }

    /// The unit's settings not applied, and those lost to a restore until it restarts.
    fn not_applied(&self) -> Vec<String> {
        let mut list = self.unit.not_applied.clone();
        if self.unconfined_since_restore {
            list.extend(
                self.unit
                    .exec
                    .filesystem
                    .confining_keys()
                    .into_iter()
                    .map(|key| format!("Service.{key} {LOST_TO_RESTORE}")),
            );
        }
        list
    }

    fn info(&self) -> ServiceInfo {
        let usage = self.group.as_ref().map(cgroups::usage).unwrap_or_default();
        ServiceInfo {
            name: self.unit.name.to_string(),
            description: self.unit.description.clone(),
            state: self.state.public(),
            sub: match (self.state, self.phase) {
                (State::Active, _) if !self.listeners.is_empty() => "listening".into(),
                (State::Active, _) if self.timer.is_some() => {
                    if self.timer.as_ref().is_some_and(|t| t.next.is_some()) {
                        "waiting".into()
                    } else {
                        "elapsed".into()
                    }
                }
                (State::Active, Phase::Running) if self.main_pid.is_none() => "exited".into(),
                (State::Failed, _) => "failed".into(),
                (State::Waiting, _) => "waiting".into(),
                (_, phase) => phase.name().into(),
            },
            main_pid: self.main_pid.map(Pid::as_raw),
            since_secs: self.since.elapsed().as_secs(),
            restarts: self.restarts,
            ready: self.ready,
            status_text: self.status_text.clone(),
            result: self
                .result
                .as_ref()
                .map(|o| o.text().to_owned())
                .or_else(|| self.reload_error.clone()),
            pulled_by: self.pulled_by.clone(),
            log: Some(
                spawn::log_path(self.unit.name.as_str())
                    .display()
                    .to_string(),
            ),
            not_applied: self.not_applied(),
            cgroup: self
                .group
                .as_ref()
                .and_then(|g| g.dirs().into_iter().next())
                .map(|d| d.display().to_string()),
            memory_bytes: usage.0,
            cpu_nsec: usage.1.map(|d| d.as_nanos() as u64),
            start_failing: self.start_failing,
        }
    }
}

/// A request that waits for its units to settle.
struct Job {
    client: UnixStream,
    units: Vec<String>,
    /// Wanted units left out, reported with the answer.
    skipped: Vec<ServiceInfo>,
    /// Exit the manager once answered.
    then_exit: bool,
    /// A reload: the answer names the units whose ExecReload= failed.
    reload: bool,
}

pub struct Manager {
    paths: UnitPaths,
    units: BTreeMap<String, Runtime>,
    jobs: Vec<Job>,
    listener: UnixListener,
    signals: SignalFd,
    shutting_down: bool,
    /// The VM's /dev/log, if the manager holds it.
    syslog: Option<UnixDatagram>,
    /// When the VM started (its init): timers' OnBootSec= count from it.
    vm_boot: Instant,
    /// The connection to the VM's own D-Bus system bus, while Type=dbus units need it.
    bus: Option<Bus>,
    /// Why the bus could not be reached (or was lost), for the messages of waiting units.
    bus_problem: Option<bus::BusError>,
    bus_attempt: Option<Instant>,
    /// The cgroup hierarchies the VM's init bound for per-unit groups; None without them.
    hierarchies: Option<feather_sys::cgroup::Hierarchies>,
    /// The generators that failed or overran when the manager started, by name.
    failed_generators: Vec<String>,
    /// The groups of `SystemCallFilter=`, read from the VM's systemd when a unit first needs
    /// them.
    syscall_groups:
        Option<Result<syscall_filter::Groups, std::sync::Arc<syscall_filter::FilterError>>>,
    /// The VM's spawner, which makes the processes of units with `PrivateTmp=`.
    spawner: Spawner,
    /// The manager's own start time: another one means CRIU restored it (it restores a
    /// process as a new one, which the kernel gives a new start time).
    started: Option<u64>,
    /// Those processes, which are not the manager's children: followed by pidfd, by pid.
    adopted: BTreeMap<i32, OwnedFd>,
}

impl Manager {
    /// Sets up the manager: the control socket, the signals it handles, subreaping.
    pub fn new(listener: UnixListener) -> Result<Manager, SetupError> {
        let mut set = SigSet::empty();
        for signal in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            set.add(signal);
        }
        // Taken first, before the manager opens a descriptor of its own.
        let spawner = Spawner::inherited();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .map_err(|e| setup("sigprocmask")(e.into()))?;
        let signals = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| setup("signalfd")(e.into()))?;
        // Daemons fork away from the process the manager started; as a subreaper the manager
        // still gets them (and their exit status) instead of the VM's init.
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| setup("PR_SET_CHILD_SUBREAPER")(e.into()))?;
        listener
            .set_nonblocking(true)
            .map_err(setup("the control socket"))?;
        // Sockets are handed to services as descriptors 3, 4, …: keep those low numbers
        // occupied so nothing else the manager (or std, while spawning) opens lands there.
        crate::raw::reserve_low_fds(MAX_PASSED_SOCKETS).map_err(setup("reserving descriptors"))?;
        fs::create_dir_all(NOTIFY_DIR).map_err(setup(NOTIFY_DIR))?;
        let failed_generators = run_generators();
        Ok(Manager {
            paths: UnitPaths::new("/"),
            units: BTreeMap::new(),
            jobs: Vec::new(),
            listener,
            signals,
            shutting_down: false,
            syslog: syslog::listen(),
            vm_boot: vm_boot(),
            bus: None,
            bus_problem: None,
            bus_attempt: None,
            hierarchies: cgroups::detect(),
            failed_generators,
            syscall_groups: None,
            spawner,
            adopted: BTreeMap::new(),
            started: own_start_time(),
        })
    }

    /// Serves until asked to shut down (or SIGTERM), with every unit stopped.
    pub fn run(mut self) {
        loop {
            let busy = !self.jobs.is_empty()
                || self
                    .units
                    .values()
                    .any(|r| !r.state.settled() || r.restart_at.is_some() || r.stop_pending);
            // The listening sockets of Accept=yes socket units (duplicates, so the poll set
            // does not borrow the units).
            let accepting: Vec<(String, OwnedFd)> = self
                .units
                .iter()
                .filter(|(_, r)| r.state == State::Active && r.is_accepting())
                .flat_map(|(n, r)| {
                    r.listeners
                        .iter()
                        .filter_map(|b| Some((n.clone(), b.fd.try_clone().ok()?)))
                })
                .collect();
            let adopted: Vec<OwnedFd> = self
                .adopted
                .values()
                .filter_map(|fd| fd.try_clone().ok())
                .collect();
            let notify: Vec<(String, UnixDatagram)> = self
                .units
                .iter()
                .filter_map(|(n, r)| Some((n.clone(), r.notify.as_ref()?.try_clone().ok()?)))
                .collect();
            {
                let mut fds = vec![
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(syslog) = &self.syslog {
                    fds.push(PollFd::new(syslog.as_fd(), PollFlags::POLLIN));
                }
                fds.extend(
                    accepting
                        .iter()
                        .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
                );
                if let Some(bus) = &self.bus {
                    let mut flags = PollFlags::POLLIN;
                    if bus.wants_write() {
                        flags |= PollFlags::POLLOUT;
                    }
                    fds.push(PollFd::new(bus.fd(), flags));
                }
                fds.extend(
                    notify
                        .iter()
                        .map(|(_, s)| PollFd::new(s.as_fd(), PollFlags::POLLIN)),
                );
                // A process of the spawner's is readable once it ended.
                fds.extend(
                    adopted
                        .iter()
                        .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
                );
                // A forking unit without a main process is followed through its group.
                let watching = self.units.values().any(|r| {
                    r.state == State::Active && (r.main_pid.is_some() || r.group.is_some())
                });
                let next_timer = self
                    .units
                    .values()
                    .filter_map(|r| r.timer.as_ref()?.next)
                    .min()
                    .map(|at| at.saturating_duration_since(Instant::now()));
                let timeout = if busy {
                    PollTimeout::try_from(TICK).unwrap_or(PollTimeout::MAX)
                } else if let Some(wait) = next_timer.filter(|w| *w < LIVENESS_CHECK) {
                    PollTimeout::try_from(wait.max(TICK)).unwrap_or(PollTimeout::MAX)
                } else if watching || next_timer.is_some() {
                    PollTimeout::try_from(LIVENESS_CHECK).unwrap_or(PollTimeout::MAX)
                } else {
                    PollTimeout::NONE
                };
                let _ = poll(&mut fds, timeout);
            }
            self.read_signals();
            // Before reaping: a sender that just exited is still known by its pid.
            self.read_syslog();
            self.reap();
            for (name, socket) in &notify {
                self.read_notify(name, socket);
            }
            self.read_bus();
            for (name, fd) in &accepting {
                self.accept_connections(name, fd);
            }
            self.accept();
            self.run_timers();
            self.tick();
            self.finish_jobs();
            self.collect_instances();
            if self.shutting_down
                && self
                    .units
                    .values()
                    .all(|r| r.state.settled() && !r.stop_pending)
                && self.jobs.is_empty()
            {
                let _ = fs::remove_file(SOCKET);
                return;
            }
        }
    }

    /// Files the messages waiting on /dev/log into the logs of the units that sent them.
    fn read_syslog(&mut self) {
        let Some(socket) = &self.syslog else {
            return;
        };
        let mut messages = Vec::new();
        while let Some(message) = syslog::receive(socket) {
            messages.push(message);
        }
        for (pid, text) in messages {
            let owner = pid.and_then(|pid| self.unit_of(pid));
            match owner.and_then(|name| self.units.get_mut(&name)) {
                Some(r) => log_line(r, &format!("syslog: {text}")),
                None => {
                    if let Ok(mut file) = fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(Path::new(protocol::LOG_DIR).join("syslog.log"))
                    {
                        let _ =
                            std::io::Write::write_all(&mut file, format!("{text}\n").as_bytes());
                    }
                }
            }
        }
    }

    /// The unit a process belongs to: by its pid, or by its session.
    fn unit_of(&self, pid: i32) -> Option<String> {
        let by_pid = self.units.iter().find(|(_, r)| {
            r.main_pid.map(Pid::as_raw) == Some(pid)
                || r.control.as_ref().map(|(p, _)| p.as_raw()) == Some(pid)
        });
        if let Some((name, _)) = by_pid {
            return Some(name.clone());
        }
        let session = session_of(Pid::from_raw(pid))?;
        self.units
            .iter()
            .find(|(_, r)| r.sessions.contains(&session))
            .map(|(name, _)| name.clone())
    }

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            // SIGCHLD only wakes the loop; reaping follows.
            if let Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) =
                Signal::try_from(info.ssi_signo as i32)
            {
                self.begin_shutdown();
            }
        }
    }

    /// The main process of a `PrivateTmp=` unit that is not the manager's child — the
    /// spawner's, or a daemon one of those left behind, which the VM's init inherited — is
    /// followed through a pidfd, which gives its end and its status (once its parent reaped
    /// it). (Other units' main processes named by `MAINPID=` or a PID file are looked for, as
    /// before: their end is "not a child of the manager: its status is unknown".)
    fn adopt_main_processes(&mut self) {
        let me = std::process::id() as i32;
        let strangers: Vec<Pid> = self
            .units
            .values()
            .filter(|r| r.private_tmp.is_some())
            .filter_map(|r| r.main_pid)
            .filter(|pid| !self.adopted.contains_key(&pid.as_raw()))
            .filter(|pid| super::processes::parent_of(*pid).is_some_and(|parent| parent != me))
            .collect();
        for pid in strangers {
            if let Ok(pidfd) = feather_sys::process::pidfd_open(pid) {
                self.adopted.insert(pid.as_raw(), pidfd);
            }
        }
    }

    /// After a restore from a checkpoint, the units whose processes ran in a Landlock domain
    /// of their own run without it (CRIU does not recreate Landlock domains): shown by
    /// `service status` and `ls --json` (`not_applied`), and said in their logs, until they
    /// start again.
    fn notice_restore(&mut self) {
        let now = own_start_time();
        if now == self.started {
            return;
        }
        self.started = now;
        for r in self.units.values_mut() {
            if r.landlocked && r.state == State::Active {
                r.unconfined_since_restore = true;
                let keys: Vec<String> = r
                    .unit
                    .exec
                    .filesystem
                    .confining_keys()
                    .iter()
                    .map(|k| format!("{k}="))
                    .collect();
                log_line(
                    r,
                    &format!(
                        "feather: the VM was restored from a checkpoint: {} {LOST_TO_RESTORE}",
                        keys.join(", ")
                    ),
                );
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let active: Vec<String> = self.units.keys().cloned().collect();
        self.request_stop(&active);
    }

    /// Moves every unit on: starts the ones whose turn it is, checks deadlines, pid files,
    /// restarts and stops.
    fn tick(&mut self) {
        self.notice_restore();
        self.adopt_main_processes();
        let now = Instant::now();
        let names: Vec<String> = self.units.keys().cloned().collect();
        // A main process named by MAINPID= or a PID file need not be the manager's child, and
        // then its end sends no SIGCHLD here: look whether it still lives. (A child of the
        // manager that ended is a zombie until reaped, so it still counts as alive here; one
        // the spawner made is followed through its pidfd, which gives its status.)
        for name in &names {
            let gone = self.units.get(name).is_some_and(|r| {
                r.state == State::Active
                    && r.main_pid.is_some_and(|pid| {
                        !self.adopted.contains_key(&pid.as_raw())
                            && kill(pid, None) == Err(nix::errno::Errno::ESRCH)
                    })
            });
            if gone {
                self.main_exited(name, Exit::Unknown);
            }
            self.follow_group(name);
        }
        for name in &names {
            let state_of =
                |units: &BTreeMap<String, Runtime>, n: &str| units.get(n).map(|r| r.state);
            let Some(r) = self.units.get(name) else {
                continue;
            };
            match r.state {
                State::Waiting => {
                    let failed_dependency = r
                        .requires
                        .iter()
                        .find(|d| state_of(&self.units, d) == Some(State::Failed));
                    if let Some(dependency) = failed_dependency.cloned() {
                        let why = format!(
                            "dependency {dependency} failed: {}",
                            self.units[&dependency]
                                .result
                                .as_ref()
                                .map_or("", Outcome::text)
                        );
                        let r = self.units.get_mut(name).unwrap_or_else(|| unreachable!());
                        fail(r, why);
                        continue;
                    }
                    // Requisite=: the unit must already be active; it is not started for this one.
                    let missing_requisite = r.unit.dependencies.requisite.iter().find(|d| {
                        let infrastructure = UnitName::parse(d)
                            .ok()
                            .and_then(|n| crate::infra::stand_in(&n))
                            .is_some();
                        !infrastructure && state_of(&self.units, d) != Some(State::Active)
                    });
                    if let Some(requisite) = missing_requisite.cloned() {
                        let r = self.units.get_mut(name).unwrap_or_else(|| unreachable!());
                        fail(r, format!("its requisite {requisite} is not active (Requisite= does not start it)"));
                        continue;
                    }
                    // Also while a unit it is ordered after is stopping (a conflicting one, say).
                    if !decide::start_blocked(&r.after, |d| self.peer(d)) {
                        self.begin_start(name);
                    }
                }
                _ => {
                    if r.stop_pending {
                        // Units that start after this one stop before it.
                        let others = self
                            .units
                            .iter()
                            .map(|(other, o)| (other.as_str(), &o.after, o.peer()));
                        if !decide::stop_blocked(name, others) {
                            self.begin_stop(name);
                        }
                        continue;
                    }
                    if r.restart_at.is_some_and(|at| now >= at) {
                        self.restart(name);
                        continue;
                    }
                    let phase = r.phase;
                    if phase == Phase::WaitPidFile {
                        self.check_pid_file(name);
                    }
                    if phase == Phase::WaitBusName && self.bus.is_none() {
                        self.connect_bus();
                    }
                    if matches!(phase, Phase::SigTerm | Phase::SigKill) {
                        self.check_stopped(name);
                    }
                    let Some(r) = self.units.get(name) else {
                        continue;
                    };
                    if r.deadline.is_some_and(|d| now >= d) {
                        self.deadline_passed(name);
                    }
                }
            }
        }
    }

    /// A running forking unit without a known main process lives as long as its cgroup holds
    /// a process: the main process is taken from the group once it has exactly one top
    /// process, and an empty group ends the unit, as systemd ends it (successfully).
    fn follow_group(&mut self, name: &str) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        let forking = r
            .unit
            .service
            .as_ref()
            .is_some_and(|s| s.kind == ServiceType::Forking && !s.remain_after_exit);
        if r.state != State::Active || r.phase != Phase::Running || r.main_pid.is_some() {
            return;
        }
        let Some(group) = r.group.as_ref().filter(|_| forking) else {
            return;
        };
        let members = cgroups::members_with_parents(group);
        if members.is_empty() {
            self.main_exited(name, Exit::Code(0));
            return;
        }
        if let Some(top) = decide::top_of_group(&members) {
            r.main_pid = Some(Pid::from_raw(top));
        }
    }

    /// What the decisions about other units need to know of `name`.
    fn peer(&self, name: &str) -> Option<Peer> {
        self.units.get(name).map(Runtime::peer)
    }

    /// The main and control processes of every unit.
    fn known_pids(&self) -> BTreeSet<i32> {
        self.units
            .values()
            .flat_map(|r| {
                r.main_pid
                    .into_iter()
                    .chain(r.control.as_ref().map(|(p, _)| *p))
            })
            .map(Pid::as_raw)
            .collect()
    }
}

/// Runs the host's systemd generators into the VM's /run before any unit is loaded, as systemd
/// does at boot. Their output and one line for each (ran, not run and why, failed, timed out)
/// go to [`protocol::GENERATORS_LOG`]; the manager's log names the ones that failed, which are
/// returned.
fn run_generators() -> Vec<String> {
    let log = match spawn::open_log("generators") {
        Ok(log) => log,
        Err(e) => {
            eprintln!("feather-svc: generators not run: {e}");
            return Vec::new();
        }
    };
    let results = match generators::run(Path::new("/"), generators::BUDGET, &log) {
        Ok(results) => results,
        Err(e) => {
            eprintln!("feather-svc: generators not run: their output folders: {e}");
            return Vec::new();
        }
    };
    let mut log = log;
    let mut failed = Vec::new();
    for (generator, outcome) in results {
        let line = format!(
            "{} ({}): {outcome}",
            generator.name,
            generator.path.display()
        );
        let _ = std::io::Write::write_all(&mut log, format!("feather: {line}\n").as_bytes());
        if !matches!(
            outcome,
            generators::Outcome::Ran | generators::Outcome::NotRun(_)
        ) {
            eprintln!("feather-svc: generator {line}");
            failed.push(generator.name);
        }
    }
    failed
}

/// Stops listening: closes a socket unit's sockets and removes its socket files.
fn close_sockets(r: &mut Runtime) {
    for bound in r.listeners.drain(..) {
        if let Some(path) = &bound.path {
            let _ = fs::remove_file(path);
        }
    }
}

/// Records why the unit failed (shown as its `result`) and marks it failed.
fn fail(r: &mut Runtime, why: impl std::fmt::Display) {
    let why = why.to_string();
    log_line(r, &format!("feather: failed: {why}"));
    r.result = Some(Outcome::Failed(why));
    r.deadline = None;
    r.ready = false;
    r.set(State::Failed, Phase::Idle);
}

fn log_line(r: &mut Runtime, line: &str) {
    if r.log.is_none() {
        r.log = spawn::open_log(r.unit.name.as_str()).ok();
    }
    if let Some(log) = r.log.as_mut() {
        let _ = std::io::Write::write_all(log, format!("{line}\n").as_bytes());
    }
}

/// The living processes of a unit: its main and control processes, everything in its cgroup
/// and in its sessions.
fn processes_of(r: &Runtime) -> Vec<Pid> {
    let me = std::process::id() as i32;
    let mut pids: BTreeSet<i32> = all_processes()
        .into_iter()
        .filter(|p| r.sessions.contains(&p.session) && p.pid != me)
        .map(|p| p.pid)
        .collect();
    if let Some(group) = &r.group {
        pids.extend(cgroups::members(group).into_iter().map(Pid::as_raw));
    }
    pids.extend(r.main_pid.map(Pid::as_raw));
    pids.extend(r.control.as_ref().map(|(p, _)| p.as_raw()));
    pids.into_iter()
        .map(Pid::from_raw)
        .filter(|p| kill(*p, None).is_ok() && !is_zombie(*p))
        .collect()
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> Vec<String> {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// What a unit restored under a Landlock domain is told, and shows.
const LOST_TO_RESTORE: &str = "(not in force until it restarts: the VM was restored from a \
    checkpoint, and CRIU does not restore Landlock domains)";

/// The manager's start time, in clock ticks since boot.
fn own_start_time() -> Option<u64> {
    feather_sys::process::start_ticks(nix::unistd::getpid())
}

pub(super) fn vm_boot() -> Instant {
    let now = Instant::now();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let started = fs::read_to_string("/proc/1/stat").ok().and_then(|s| {
        let after_name = s.rsplit_once(')')?.1;
        after_name.split_whitespace().nth(19)?.parse::<f64>().ok()
    });
    let uptime = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
    match (started, uptime) {
        (Some(started), Some(uptime)) if uptime >= started / ticks => now
            .checked_sub(Duration::from_secs_f64(uptime - started / ticks))
            .unwrap_or(now),
        _ => now,
    }
}

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
//! A unit's processes are found by session: every command starts in a new session, and a
//! daemon that makes a session of its own is followed by its main pid's session. The manager is
//! a child subreaper, so daemons that fork away are reparented to it and reaped here.
//!
//! Beside this file: `requests` (what clients ask and the answers), `bus_names` (`Type=dbus`
//! readiness on the VM's bus), `accepting` (`Accept=yes` sockets), `timers` (timer units).

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
use super::protocol::{self, FreshState, Request, Response, ServiceInfo, NOTIFY_DIR, SOCKET};
use super::spawn::{self, Identity};
use super::{sockets, syslog};
use crate::graph::{socket_service, DependencyGraph};
use crate::name::UnitName;
use crate::paths::UnitPaths;
use crate::unit::{KillMode, Restart, ServiceType, Unit};
use crate::words::ExecCommand;
use crate::{catalog, conditions, state};

mod accepting;
mod bus_names;
mod requests;
mod timers;

use accepting::is_accepting;
use timers::{start_timer, vm_boot, TimerRun};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Inactive,
    Waiting,
    Activating,
    Active,
    Deactivating,
    Failed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Waiting => "waiting",
            State::Activating => "activating",
            State::Active => "active",
            State::Deactivating => "deactivating",
            State::Failed => "failed",
        }
    }

    fn settled(self) -> bool {
        matches!(self, State::Inactive | State::Active | State::Failed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// `--fresh-state`: the package's initialiser runs in the emptied data folders.
    FreshState,
    Condition,
    StartPre,
    Start,
    WaitReady,
    WaitPidFile,
    /// Type=dbus: the main process runs; its BusName= has no owner on the bus yet.
    WaitBusName,
    StartPost,
    Running,
    AutoRestart,
    Stop,
    SigTerm,
    SigKill,
    StopPost,
    Reload,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Idle => "dead",
            Phase::FreshState => "fresh-state",
            Phase::Condition => "condition",
            Phase::StartPre => "start-pre",
            Phase::Start | Phase::WaitReady | Phase::WaitPidFile | Phase::WaitBusName => "start",
            Phase::StartPost => "start-post",
            Phase::Running => "running",
            Phase::AutoRestart => "auto-restart",
            Phase::Stop => "stop",
            Phase::SigTerm => "stop-sigterm",
            Phase::SigKill => "final-sigkill",
            Phase::StopPost => "stop-post",
            Phase::Reload => "reload",
        }
    }
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
    result: Option<String>,
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
        }
    }

    fn set(&mut self, state: State, phase: Phase) {
        if self.state != state {
            self.since = Instant::now();
        }
        self.state = state;
        self.phase = phase;
    }

    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: self.unit.name.to_string(),
            description: self.unit.description.clone(),
            state: self.state.name().into(),
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
            result: self.result.clone().or_else(|| self.reload_error.clone()),
            pulled_by: self.pulled_by.clone(),
            log: Some(
                spawn::log_path(self.unit.name.as_str())
                    .display()
                    .to_string(),
            ),
            not_applied: self.unit.not_applied.clone(),
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
    bus_problem: Option<String>,
    bus_attempt: Option<Instant>,
}

impl Manager {
    /// Sets up the manager: the control socket, the signals it handles, subreaping.
    pub fn new(listener: UnixListener) -> Result<Manager, String> {
        let mut set = SigSet::empty();
        for signal in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            set.add(signal);
        }
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .map_err(|e| format!("sigprocmask: {e}"))?;
        let signals = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("signalfd: {e}"))?;
        // Daemons fork away from the process the manager started; as a subreaper the manager
        // still gets them (and their exit status) instead of the VM's init.
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        // Sockets are handed to services as descriptors 3, 4, …: keep those low numbers
        // occupied so nothing else the manager (or std, while spawning) opens lands there.
        crate::raw::reserve_low_fds(MAX_PASSED_SOCKETS)
            .map_err(|e| format!("reserving descriptors: {e}"))?;
        fs::create_dir_all(NOTIFY_DIR).map_err(|e| format!("{NOTIFY_DIR}: {e}"))?;
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
                .filter(|(_, r)| r.state == State::Active && is_accepting(r))
                .flat_map(|(n, r)| {
                    r.listeners
                        .iter()
                        .filter_map(|b| Some((n.clone(), b.fd.try_clone().ok()?)))
                })
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
                let watching = self
                    .units
                    .values()
                    .any(|r| r.state == State::Active && r.main_pid.is_some());
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
        let now = Instant::now();
        let names: Vec<String> = self.units.keys().cloned().collect();
        // A main process named by MAINPID= or a PID file need not be the manager's child, and
        // then its end sends no SIGCHLD here: look whether it still lives. (A child of the
        // manager that ended is a zombie until reaped, so it still counts as alive here.)
        for name in &names {
            let gone = self.units.get(name).is_some_and(|r| {
                r.state == State::Active
                    && r.main_pid
                        .is_some_and(|pid| kill(pid, None) == Err(nix::errno::Errno::ESRCH))
            });
            if gone {
                self.main_exited(name, Exit::Unknown);
            }
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
                            self.units[&dependency].result.clone().unwrap_or_default()
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
                    let blocked = r.after.iter().any(|d| {
                        matches!(
                            state_of(&self.units, d),
                            Some(State::Waiting | State::Activating | State::Deactivating)
                        ) || self.units.get(d).is_some_and(|o| o.stop_pending)
                    });
                    if !blocked {
                        self.begin_start(name);
                    }
                }
                _ => {
                    if r.stop_pending {
                        // Units that start after this one stop before it.
                        let blocked = self.units.iter().any(|(other, o)| {
                            other != name
                                && o.after.contains(name)
                                && (o.stop_pending || o.state == State::Deactivating)
                        });
                        if !blocked {
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

    fn begin_start(&mut self, name: &str) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        r.set(State::Activating, Phase::Condition);
        r.result = None;
        r.ready = false;
        r.status_text = None;
        r.stop_requested = false;
        r.was_active = false;
        r.sessions.clear();
        r.main_pid = None;
        match conditions::check(&r.unit.conditions, Path::new("/")) {
            conditions::Verdict::Met => {}
            conditions::Verdict::Skip(why) => {
                // Not a failure: the unit is simply not run, and what needs it goes on.
                log_line(r, &format!("feather: skipped: {why}"));
                r.result = Some(format!("skipped: {why}"));
                r.set(State::Inactive, Phase::Idle);
                return;
            }
            conditions::Verdict::Fail(why) => {
                fail(r, why);
                return;
            }
        }
        r.starts.push_back(Instant::now());
        r.last_activated = Some(Instant::now());
        let Some(service) = r.unit.service.clone() else {
            // Targets are reached when their dependencies are; other unit types have no
            // processes of their own here.
            if let Some(target) = r.unit.timer_target() {
                let loaded = UnitName::parse(&target)
                    .map_err(|e| e.to_string())
                    .and_then(|n| self.paths.load(&n).map_err(|e| e.to_string()))
                    .map_err(|e| format!("the unit it triggers cannot be loaded: {e}"));
                match loaded.and_then(|_| start_timer(r, target.clone())) {
                    Ok(timer) => r.timer = Some(timer),
                    Err(why) => {
                        fail(r, why);
                        return;
                    }
                }
            }
            if r.unit.socket.is_some() {
                match sockets::bind(&r.unit).and_then(|bound| {
                    if is_accepting(r) {
                        sockets::prepare_accepting(&r.unit, &bound)?;
                    }
                    Ok(bound)
                }) {
                    Ok(bound) => r.listeners = bound,
                    Err(why) => {
                        fail(r, why);
                        return;
                    }
                }
            }
            r.ready = true;
            r.set(State::Active, Phase::Running);
            if r.timer.is_some() {
                let next = self.next_elapse(name);
                self.set_timer_next(name, next);
            }
            return;
        };
        r.deadline = service.timeout_start.map(|t| Instant::now() + t);
        if let Some(plan) = &r.fresh {
            // Before the unit's *Directory= folders are made (again) below.
            for (folder, why) in plan.folders.clone() {
                log_line(
                    r,
                    &format!(
                        "feather: fresh state: {} ({why}) replaced by an empty folder in the VM's layer",
                        folder.display()
                    ),
                );
                if let Err(e) = state::empty_folder(&folder) {
                    fail(r, format!("fresh state: {e}"));
                    return;
                }
            }
        }
        let prepared = spawn::identity(&r.unit).and_then(|identity| {
            let dirs = spawn::make_directories(&r.unit, &identity)?;
            let env = spawn::environment(&r.unit, &identity, &dirs)?;
            let log = spawn::open_log(r.unit.name.as_str())?;
            Ok((identity, env, log))
        });
        match prepared {
            Ok((identity, env, log)) => {
                r.identity = Some(identity);
                r.env = env;
                r.log = Some(log);
            }
            Err(why) => {
                fail(r, why);
                return;
            }
        }
        match &r.fresh {
            Some(plan) => {
                r.phase = Phase::FreshState;
                r.status_text = Some(format!(
                    "fresh state: initialising {}",
                    plan.folders
                        .iter()
                        .map(|(p, _)| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
                r.pending = plan.initialise.iter().cloned().collect();
            }
            None => r.pending = service.exec_condition.iter().cloned().collect(),
        }
        self.advance(name);
    }

    /// Runs the next command of the current phase, or moves to the next phase.
    fn advance(&mut self, name: &str) {
        loop {
            let Some(r) = self.units.get_mut(name) else {
                return;
            };
            if r.control.is_some() || matches!(r.state, State::Inactive | State::Failed) {
                return;
            }
            let Some(service) = r.unit.service.clone() else {
                return;
            };
            if let Some(command) = r.pending.pop_front() {
                let main = r.phase == Phase::Start
                    && !matches!(service.kind, ServiceType::Oneshot | ServiceType::Forking);
                match self.spawn(name, &command, main) {
                    Ok(()) => {
                        let r = self.units.get_mut(name).unwrap_or_else(|| unreachable!());
                        if main {
                            r.phase = match service.kind {
                                ServiceType::Notify | ServiceType::NotifyReload => Phase::WaitReady,
                                ServiceType::Dbus => Phase::WaitBusName,
                                _ => {
                                    r.ready = true;
                                    r.pending = service.exec_start_post.iter().cloned().collect();
                                    Phase::StartPost
                                }
                            };
                        }
                        if r.phase == Phase::WaitBusName && main {
                            let bus_name = service.bus_name.clone().unwrap_or_default();
                            r.status_text = Some(format!(
                                "waiting for bus name {bus_name} on the VM's D-Bus system bus"
                            ));
                            log_line(r, &format!("feather: waiting for bus name {bus_name}"));
                            self.watch_bus_name(&bus_name);
                            return;
                        }
                        if r.control.is_some()
                            || matches!(r.phase, Phase::WaitReady | Phase::WaitBusName)
                        {
                            return;
                        }
                        continue;
                    }
                    Err(why) => {
                        let r = self.units.get_mut(name).unwrap_or_else(|| unreachable!());
                        if r.state == State::Deactivating {
                            log_line(r, &why);
                            continue;
                        }
                        self.fail_and_clean(name, why);
                        return;
                    }
                }
            }
            let r = self.units.get_mut(name).unwrap_or_else(|| unreachable!());
            match r.phase {
                Phase::FreshState => {
                    if let Some(plan) = r.fresh.take() {
                        if let Err(e) = state::mark_done(name, &plan) {
                            log_line(r, &format!("feather: fresh state: {e}"));
                        }
                        log_line(r, "feather: fresh state: ready");
                    }
                    r.status_text = None;
                    r.phase = Phase::Condition;
                    r.pending = service.exec_condition.iter().cloned().collect();
                }
                Phase::Condition => {
                    r.phase = Phase::StartPre;
                    r.pending = service.exec_start_pre.iter().cloned().collect();
                }
                Phase::StartPre => {
                    r.phase = Phase::Start;
                    if matches!(
                        service.kind,
                        ServiceType::Notify | ServiceType::NotifyReload
                    ) {
                        if let Err(why) = open_notify_socket(r) {
                            self.fail_and_clean(name, why);
                            return;
                        }
                    }
                    r.pending = match service.kind {
                        ServiceType::Oneshot => service.exec_start.iter().cloned().collect(),
                        _ => service.exec_start.iter().take(1).cloned().collect(),
                    };
                    if r.pending.is_empty() {
                        r.phase = Phase::StartPost;
                        r.pending = service.exec_start_post.iter().cloned().collect();
                    }
                }
                Phase::Start => {
                    // The start commands are done: the oneshot ran, or the forking parent exited.
                    if service.kind == ServiceType::Forking {
                        r.phase = Phase::WaitPidFile;
                        self.check_pid_file(name);
                        return;
                    }
                    r.ready = true;
                    r.phase = Phase::StartPost;
                    r.pending = service.exec_start_post.iter().cloned().collect();
                }
                Phase::StartPost => {
                    r.deadline = None;
                    r.ready = true;
                    r.was_active = true;
                    let keeps_running = r.main_pid.is_some() || service.remain_after_exit;
                    if keeps_running {
                        r.set(State::Active, Phase::Running);
                    } else {
                        // A oneshot without RemainAfterExit= is done once it ran.
                        r.set(State::Inactive, Phase::Idle);
                        r.was_active = false;
                        self.after_stop(name);
                    }
                    return;
                }
                Phase::Stop => {
                    r.phase = Phase::SigTerm;
                    self.signal_unit(name, false);
                    self.check_stopped(name);
                    return;
                }
                Phase::StopPost => {
                    self.after_stop(name);
                    return;
                }
                Phase::Reload => {
                    r.phase = Phase::Running;
                    return;
                }
                _ => return,
            }
        }
    }

    fn spawn(&mut self, name: &str, command: &ExecCommand, main: bool) -> Result<(), String> {
        // The main process gets the sockets of the socket units that activate it.
        let listen: Vec<(RawFd, String)> = if main {
            self.units
                .values()
                .filter(|o| o.state == State::Active)
                .filter(|o| socket_service(&o.unit).as_deref() == Some(name))
                .flat_map(|o| {
                    o.listeners
                        .iter()
                        .map(|b| (b.fd.as_raw_fd(), b.name.clone()))
                })
                .collect()
        } else {
            Vec::new()
        };
        let r = self.units.get_mut(name).ok_or("unit vanished")?;
        // An instance of an Accept=yes socket: its connection is its one socket.
        let mut listen = listen;
        let connection = if main { r.connection.as_ref() } else { None };
        if let Some(connection) = connection {
            listen = vec![(connection.as_raw_fd(), "connection".to_owned())];
        }
        let identity = r.identity.clone().ok_or("no identity")?;
        let mut env = r.env.clone();
        if let Some(pid) = r.main_pid {
            env.push(("MAINPID".into(), pid.to_string()));
        }
        if r.notify.is_some() {
            env.push((
                "NOTIFY_SOCKET".into(),
                notify_path(name).display().to_string(),
            ));
        }
        let log = r.log.as_ref().ok_or("no log")?;
        let mut process = spawn::command(
            &r.unit,
            command,
            &identity,
            &env,
            log,
            &listen,
            connection.map(|c| c.as_fd()),
        )?;
        let phase = r.phase.name();
        log_line(r, &format!("feather: {phase}: {}", command.argv.join(" ")));
        let child = process
            .spawn()
            .map_err(|e| format!("{} {}: {e}", phase_setting(r.phase), command.path))?;
        let pid = Pid::from_raw(child.id() as i32);
        // The child is reaped by the manager's own waitpid loop, not through `child`.
        drop(child);
        r.sessions.insert(pid.as_raw());
        if main {
            r.main_pid = Some(pid);
            // The service holds the connection now; the manager's copy would keep it open
            // after the service closed it.
            r.connection = None;
        } else {
            r.control = Some((pid, command.clone()));
        }
        Ok(())
    }

    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let (pid, code) = match status {
                WaitStatus::Exited(pid, code) => (pid, Exit::Code(code)),
                WaitStatus::Signaled(pid, signal, _) => (pid, Exit::Signal(signal as i32)),
                _ => continue,
            };
            let owner = self.units.iter().find_map(|(n, r)| {
                if r.control.as_ref().is_some_and(|(p, _)| *p == pid) {
                    Some((n.clone(), true))
                } else if r.main_pid == Some(pid) {
                    Some((n.clone(), false))
                } else {
                    None
                }
            });
            match owner {
                Some((name, true)) => self.control_exited(&name, code),
                Some((name, false)) => self.main_exited(&name, code),
                None => {}
            }
        }
    }

    fn control_exited(&mut self, name: &str, code: Exit) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        let Some((pid, command)) = r.control.take() else {
            return;
        };
        // A session whose leader is gone and that holds no process is forgotten, so that a
        // later process that gets its number is never taken for this unit's.
        if !all_processes().iter().any(|p| p.session == pid.as_raw()) {
            r.sessions.remove(&pid.as_raw());
        }
        let success = code.success(
            r.unit
                .service
                .as_ref()
                .map_or(&[][..], |s| &s.success_exit_status),
        );
        if success || command.ignore_failure || r.state == State::Deactivating {
            if !success {
                log_line(
                    r,
                    &format!(
                        "feather: {} {} {} (ignored)",
                        phase_setting(r.phase),
                        command.path,
                        code.describe()
                    ),
                );
            }
            self.advance(name);
            return;
        }
        if r.phase == Phase::Reload {
            // A failed reload leaves the service running as it was.
            let why = format!("ExecReload {} {}", command.path, code.describe());
            log_line(r, &format!("feather: reload failed: {why}"));
            r.reload_error = Some(why);
            r.pending.clear();
            r.phase = Phase::Running;
            return;
        }
        if r.phase == Phase::Condition && matches!(code, Exit::Code(1..=254)) {
            r.result = Some(format!(
                "skipped: ExecCondition {} {}",
                command.path,
                code.describe()
            ));
            r.set(State::Inactive, Phase::Idle);
            r.deadline = None;
            return;
        }
        let why = format!(
            "{} {} {}",
            phase_setting(r.phase),
            command.path,
            code.describe()
        );
        self.fail_and_clean(name, why);
    }

    fn main_exited(&mut self, name: &str, code: Exit) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        r.main_pid = None;
        match r.state {
            State::Deactivating => {
                self.check_stopped(name);
            }
            State::Activating => {
                let mut why = format!("main process {} before it was ready", code.describe());
                if r.phase == Phase::WaitBusName {
                    let bus_name = r.unit.service.as_ref().and_then(|s| s.bus_name.clone());
                    why.push_str(&format!(
                        " (its bus name {} never appeared",
                        bus_name.unwrap_or_default()
                    ));
                    match &self.bus_problem {
                        Some(problem) => why.push_str(&format!(
                            "; the VM's D-Bus system bus could not be reached: {problem}; is dbus running in this VM?)"
                        )),
                        None => why.push(')'),
                    }
                }
                self.fail_and_clean(name, why);
            }
            State::Active => {
                let service = r.unit.service.clone().unwrap_or_default();
                let clean = code.success(&service.success_exit_status);
                let restart = !r.stop_requested
                    && match service.restart {
                        Restart::No => false,
                        Restart::Always => true,
                        Restart::OnSuccess => clean,
                        Restart::OnFailure => !clean,
                        Restart::OnAbnormal | Restart::OnAbort => matches!(code, Exit::Signal(_)),
                        Restart::OnWatchdog => false,
                    };
                if !clean {
                    r.result = Some(format!("main process {}", code.describe()));
                }
                log_line(r, &format!("feather: main process {}", code.describe()));
                if restart {
                    r.restart_at =
                        Some(Instant::now() + service.restart_sec.min(Duration::from_secs(3600)));
                    r.set(State::Activating, Phase::AutoRestart);
                    self.kill_remaining(name);
                    return;
                }
                // Stop what remains of the service, as systemd does when its main process ends.
                r.set(State::Deactivating, Phase::Stop);
                r.deadline = service.timeout_stop.map(|t| Instant::now() + t);
                r.pending = if r.was_active {
                    service.exec_stop.iter().cloned().collect()
                } else {
                    VecDeque::new()
                };
                self.advance(name);
            }
            _ => {}
        }
    }

    /// OnFailure=: the units started when this one failed for good (not when it restarts).
    fn trigger_on_failure(&mut self, name: &str) {
        let Some(on_failure) = self
            .units
            .get(name)
            .map(|r| r.unit.dependencies.on_failure.clone())
        else {
            return;
        };
        if on_failure.is_empty() {
            return;
        }
        if let Err(why) = self.request_start(&on_failure, FreshState::No) {
            if let Some(r) = self.units.get_mut(name) {
                log_line(
                    r,
                    &format!("feather: OnFailure= {}: {why}", on_failure.join(" ")),
                );
            }
        }
    }

    /// A restart after Restart=, unless the start limit is hit.
    fn restart(&mut self, name: &str) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        r.restart_at = None;
        let limit = r.unit.start_limit.clone();
        if let Some(interval) = limit.interval {
            let now = Instant::now();
            while r
                .starts
                .front()
                .is_some_and(|t| now.duration_since(*t) > interval)
            {
                r.starts.pop_front();
            }
            if limit.burst > 0 && r.starts.len() >= limit.burst as usize {
                let why = format!(
                    "start limit hit: {} starts within {}s (StartLimitBurst={}, StartLimitIntervalSec={}); last: {}",
                    r.starts.len(), interval.as_secs(), limit.burst, interval.as_secs(),
                    r.result.clone().unwrap_or_default()
                );
                fail(r, why);
                self.trigger_on_failure(name);
                return;
            }
        }
        r.restarts += 1;
        r.set(State::Waiting, Phase::Idle);
        self.begin_start(name);
    }

    fn begin_stop(&mut self, name: &str) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        r.stop_pending = false;
        r.stop_requested = true;
        if r.unit.service.is_none() {
            close_sockets(r);
            r.timer = None;
            r.status_text = None;
            let next = if std::mem::take(&mut r.start_after_stop) {
                State::Waiting
            } else {
                State::Inactive
            };
            r.set(next, Phase::Idle);
            return;
        }
        let service = r.unit.service.clone().unwrap_or_default();
        if let Some((pid, _)) = &r.control {
            // A start in progress is abandoned: its current command is terminated.
            let _ = kill(*pid, Signal::SIGTERM);
        }
        r.deadline = service.timeout_stop.map(|t| Instant::now() + t);
        r.pending = if r.was_active {
            service.exec_stop.iter().cloned().collect()
        } else {
            VecDeque::new()
        };
        r.set(State::Deactivating, Phase::Stop);
        self.advance(name);
    }

    /// Sends the stop signal (or, finally, SIGKILL) to the unit's processes, per KillMode=.
    fn signal_unit(&mut self, name: &str, finally: bool) {
        let Some(r) = self.units.get(name) else {
            return;
        };
        let service = r.unit.service.clone().unwrap_or_default();
        let signal = if finally {
            service.final_kill_signal
        } else {
            service.kill_signal
        };
        let Ok(signal) = Signal::try_from(signal) else {
            return;
        };
        let main = r.main_pid;
        let others: Vec<Pid> = processes_of(r)
            .into_iter()
            .filter(|p| Some(*p) != main)
            .collect();
        if let Some(main) = main {
            let _ = kill(main, signal);
            if signal != Signal::SIGKILL {
                let _ = kill(main, Signal::SIGCONT);
            }
        }
        let others_get = match (service.kill_mode, finally) {
            (KillMode::ControlGroup, _) => Some(signal),
            (KillMode::Mixed, false) => None,
            (KillMode::Mixed, true) => Some(Signal::SIGKILL),
            (KillMode::Process | KillMode::None, _) => None,
        };
        if let Some(sig) = others_get {
            for pid in others {
                let _ = kill(pid, sig);
            }
        }
    }

    fn kill_remaining(&mut self, name: &str) {
        let Some(r) = self.units.get(name) else {
            return;
        };
        for pid in processes_of(r) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    /// In the stop phases: moves on once the processes that must go are gone.
    fn check_stopped(&mut self, name: &str) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        if !matches!(r.phase, Phase::SigTerm | Phase::SigKill) {
            return;
        }
        let kill_mode = r
            .unit
            .service
            .as_ref()
            .map_or(KillMode::ControlGroup, |s| s.kill_mode);
        let left = match kill_mode {
            KillMode::Process | KillMode::None => r.main_pid.is_some(),
            _ => r.main_pid.is_some() || !processes_of(r).is_empty(),
        };
        if left {
            return;
        }
        r.main_pid = None;
        r.phase = Phase::StopPost;
        r.pending = r
            .unit
            .service
            .as_ref()
            .map(|s| s.exec_stop_post.iter().cloned().collect())
            .unwrap_or_default();
        self.advance(name);
    }

    fn deadline_passed(&mut self, name: &str) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        r.deadline = None;
        match r.state {
            State::Activating => {
                let timeout = r
                    .unit
                    .service
                    .as_ref()
                    .and_then(|s| s.timeout_start)
                    .unwrap_or_default();
                let why = if r.phase == Phase::WaitBusName {
                    let bus_name = r
                        .unit
                        .service
                        .as_ref()
                        .and_then(|s| s.bus_name.clone())
                        .unwrap_or_default();
                    let mut why = format!(
                        "timed out after {}s waiting for its bus name {bus_name} to appear on the VM's D-Bus system bus (Type=dbus, TimeoutStartSec=)",
                        timeout.as_secs()
                    );
                    let silent = self.bus.as_ref().is_some_and(|b| !b.answered());
                    let problem = self.bus_problem.clone().or_else(|| {
                        silent.then(|| {
                            format!(
                                "{} accepted the connection, but no dbus-daemon answered",
                                bus::SYSTEM_BUS
                            )
                        })
                    });
                    if let Some(problem) = &problem {
                        why.push_str(&format!(
                            "; the bus could not be reached: {problem} (is dbus running in this VM? `feather service status VM dbus`)"
                        ));
                    }
                    why
                } else {
                    format!(
                        "timed out after {}s while in {} (TimeoutStartSec=)",
                        timeout.as_secs(),
                        r.phase.name()
                    )
                };
                self.fail_and_clean(name, why);
            }
            State::Deactivating => {
                if r.phase == Phase::Stop {
                    if let Some((pid, _)) = &r.control {
                        let _ = kill(*pid, Signal::SIGKILL);
                    }
                }
                log_line(
                    r,
                    "feather: stop timed out (TimeoutStopSec=); killing what remains",
                );
                r.phase = Phase::SigKill;
                r.deadline = Some(Instant::now() + Duration::from_secs(5));
                self.signal_unit(name, true);
                self.check_stopped(name);
            }
            _ => {}
        }
    }

    /// A failed start: record why, kill what the unit started, run ExecStopPost.
    fn fail_and_clean(&mut self, name: &str, why: String) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        log_line(r, &format!("feather: failed: {why}"));
        r.result = Some(why);
        // Whatever the KillMode=, a start that failed leaves nothing running.
        for pid in processes_of(r) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        r.control = None;
        r.pending.clear();
        r.set(State::Deactivating, Phase::SigKill);
        r.deadline = Some(Instant::now() + Duration::from_secs(5));
        self.check_stopped(name);
    }

    /// The end of every stop: clean up, then inactive, or failed (and maybe restarted).
    fn after_stop(&mut self, name: &str) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        spawn::remove_runtime_directories(&r.unit);
        r.last_deactivated = Some(Instant::now());
        if r.notify.take().is_some() {
            let _ = fs::remove_file(notify_path(name));
        }
        r.deadline = None;
        r.main_pid = None;
        r.control = None;
        r.sessions.clear();
        if std::mem::take(&mut r.start_after_stop) {
            r.result = None;
            r.ready = false;
            r.stop_requested = false;
            r.set(State::Waiting, Phase::Idle);
            return;
        }
        let failed = r.result.is_some() && !r.stop_requested;
        // Ready stays shown only for a oneshot that ran to its end.
        if failed || r.stop_requested || r.was_active {
            r.ready = false;
        }
        r.set(
            if failed {
                State::Failed
            } else {
                State::Inactive
            },
            Phase::Idle,
        );
        let restart = r.unit.service.as_ref().map_or(Restart::No, |s| s.restart);
        let restart_sec = r
            .unit
            .service
            .as_ref()
            .map_or(Duration::ZERO, |s| s.restart_sec);
        // A failed start is retried like a crash, within the start limit.
        if failed
            && matches!(
                restart,
                Restart::Always | Restart::OnFailure | Restart::OnAbnormal
            )
        {
            r.restart_at = Some(Instant::now() + restart_sec.min(Duration::from_secs(3600)));
            r.set(State::Activating, Phase::AutoRestart);
            return;
        }
        if failed {
            self.trigger_on_failure(name);
        }
        // BindsTo=: the units bound to this one stop with it, however it ended.
        let bound: Vec<String> = self
            .units
            .iter()
            .filter(|(_, o)| {
                o.unit.dependencies.binds_to.iter().any(|b| b == name)
                    && matches!(o.state, State::Active | State::Activating | State::Waiting)
                    && !o.stop_pending
            })
            .map(|(n, _)| n.clone())
            .collect();
        if !bound.is_empty() {
            for other in &bound {
                if let Some(o) = self.units.get_mut(other) {
                    o.result = Some(format!(
                        "stopped: {name}, which it is bound to (BindsTo=), ended"
                    ));
                }
            }
            self.request_stop(&bound);
        }
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

    fn check_pid_file(&mut self, name: &str) {
        let known = self.known_pids();
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        let service = r.unit.service.clone().unwrap_or_default();
        let main = match &service.pid_file {
            Some(path) => read_pid_file(path),
            None if service.guess_main_pid => guess_main_pid(&known),
            None => None,
        };
        match main {
            Some(pid) => {
                r.main_pid = Some(pid);
                if let Some(session) = session_of(pid) {
                    r.sessions.insert(session);
                }
            }
            None if service.pid_file.is_none() => {}
            // Wait for the daemon to write its pid file (until TimeoutStartSec=).
            None => return,
        }
        if r.main_pid.is_none()
            && !service.remain_after_exit
            && service.pid_file.is_none()
            && service.guess_main_pid
        {
            self.fail_and_clean(
                name,
                "the forking start command exited, and no main process was left".into(),
            );
            return;
        }
        r.ready = true;
        r.phase = Phase::StartPost;
        r.pending = service.exec_start_post.iter().cloned().collect();
        self.advance(name);
    }

    fn read_notify(&mut self, name: &str, socket: &UnixDatagram) {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let Some(r) = self.units.get_mut(name) else {
                return;
            };
            let mut ready = false;
            for line in text.lines() {
                match line.split_once('=') {
                    Some(("READY", "1")) => ready = true,
                    Some(("STATUS", status)) => r.status_text = Some(status.to_owned()),
                    Some(("MAINPID", pid)) => {
                        if let Ok(pid) = pid.parse::<i32>() {
                            r.main_pid = Some(Pid::from_raw(pid));
                            if let Some(session) = session_of(Pid::from_raw(pid)) {
                                r.sessions.insert(session);
                            }
                        }
                    }
                    _ => {}
                }
            }
            if ready && r.phase == Phase::WaitReady {
                r.ready = true;
                r.phase = Phase::StartPost;
                r.pending = r
                    .unit
                    .service
                    .as_ref()
                    .map(|s| s.exec_start_post.iter().cloned().collect())
                    .unwrap_or_default();
                self.advance(name);
            }
        }
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug)]
enum Exit {
    Code(i32),
    Signal(i32),
    /// A main process that was not the manager's child ended; how is not known.
    Unknown,
}

impl Exit {
    fn success(self, extra: &[i32]) -> bool {
        match self {
            Exit::Code(code) => code == 0 || extra.contains(&code),
            Exit::Unknown => false,
            // systemd counts SIGHUP, SIGINT, SIGTERM and SIGPIPE as clean for the main process.
            Exit::Signal(signal) => {
                [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGPIPE].contains(&signal)
                    || extra.contains(&-signal)
            }
        }
    }

    fn describe(self) -> String {
        match self {
            Exit::Code(code) => format!("exited with status {code}"),
            Exit::Unknown => "ended (not a child of the manager: its status is unknown)".into(),
            Exit::Signal(signal) => match Signal::try_from(signal) {
                Ok(s) => format!("was killed by {s}"),
                Err(_) => format!("was killed by signal {signal}"),
            },
        }
    }
}

/// Stops listening: closes a socket unit's sockets and removes its socket files.
fn close_sockets(r: &mut Runtime) {
    for bound in r.listeners.drain(..) {
        if let Some(path) = &bound.path {
            let _ = fs::remove_file(path);
        }
    }
}

fn fail(r: &mut Runtime, why: String) {
    log_line(r, &format!("feather: failed: {why}"));
    r.result = Some(why);
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

fn phase_setting(phase: Phase) -> &'static str {
    match phase {
        Phase::FreshState => "fresh state: initialiser",
        Phase::Condition => "ExecCondition",
        Phase::StartPre => "ExecStartPre",
        Phase::Start | Phase::WaitReady | Phase::WaitPidFile | Phase::WaitBusName => "ExecStart",
        Phase::StartPost => "ExecStartPost",
        Phase::Stop => "ExecStop",
        Phase::StopPost => "ExecStopPost",
        Phase::Reload => "ExecReload",
        _ => "command",
    }
}

fn notify_path(unit: &str) -> PathBuf {
    Path::new(NOTIFY_DIR).join(unit)
}

/// The datagram socket a notify service reports READY=1 on, writable by the service's user.
fn open_notify_socket(r: &mut Runtime) -> Result<(), String> {
    let path = notify_path(r.unit.name.as_str());
    let _ = fs::remove_file(&path);
    let socket =
        UnixDatagram::bind(&path).map_err(|e| format!("notify socket {}: {e}", path.display()))?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o666));
    r.notify = Some(socket);
    Ok(())
}

/// The living processes of a unit: its main and control processes and everything in its
/// sessions.
fn processes_of(r: &Runtime) -> Vec<Pid> {
    let me = std::process::id() as i32;
    let mut pids: BTreeSet<i32> = all_processes()
        .into_iter()
        .filter(|p| r.sessions.contains(&p.session) && p.pid != me)
        .map(|p| p.pid)
        .collect();
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

//! The supervisor's decisions, as pure functions and types: fed with what happened (a process
//! that ended and how, the time, the states of the other units), they say what to do next
//! (restart or not, wait for what, signal whom, when a timer is due). The manager's loop makes
//! the system calls and keeps the books; its rules of order, readiness, restarts, start limits,
//! KillMode=, control commands and timers are here, unit-tested without root, without
//! processes and without waiting (`decide/tests.rs`). What still lives in the loop: Conflicts=,
//! stopping the units bound to one that ended (BindsTo=), and the timeouts' consequences.
//!
//! This module uses nothing of the rest of the supervisor: the arrows point from the loop to
//! here, never back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::calendar::CalendarSpec;
use crate::manager::protocol::UnitState;
use crate::unit::{KillMode, Restart, ServiceType, StartLimit, Timer};

/// Where a unit is, as the manager tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Inactive,
    Waiting,
    Activating,
    Active,
    Deactivating,
    Failed,
}

impl State {
    /// The state clients see.
    pub(super) fn public(self) -> UnitState {
        match self {
            State::Inactive => UnitState::Inactive,
            State::Waiting => UnitState::Waiting,
            State::Activating => UnitState::Activating,
            State::Active => UnitState::Active,
            State::Deactivating => UnitState::Deactivating,
            State::Failed => UnitState::Failed,
        }
    }

    pub(super) fn name(self) -> &'static str {
        self.public().name()
    }

    /// Whether the unit is where a job waiting for it may answer.
    pub(super) fn settled(self) -> bool {
        matches!(self, State::Inactive | State::Active | State::Failed)
    }
}

/// The step of a start or a stop a unit is at, within its [`State`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
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
    pub(super) fn name(self) -> &'static str {
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

/// The setting whose command runs in `phase`, for messages.
pub(super) fn phase_setting(phase: Phase) -> &'static str {
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

/// The phase after ExecStart='s main process was spawned: waiting for the readiness `Type=`
/// asks for, or (simple, exec, idle) started.
pub(super) fn phase_after_main_spawned(readiness: Readiness) -> Phase {
    match readiness {
        Readiness::Notify => Phase::WaitReady,
        Readiness::BusName => Phase::WaitBusName,
        _ => Phase::StartPost,
    }
}

/// The phase once the start commands that are not a main process exited: a forking daemon's
/// PID file is awaited; a oneshot is started.
pub(super) fn phase_after_start_commands(readiness: Readiness) -> Phase {
    match readiness {
        Readiness::PidFile => Phase::WaitPidFile,
        _ => Phase::StartPost,
    }
}

/// How a unit's last run ended when it did not simply stop as asked: shown as its `result`,
/// and (only [`Outcome::Failed`]) what makes a stop end in `failed`, with restarts and
/// OnFailure=.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A command, a timeout, its main process, a dependency.
    Failed(String),
    /// Not run, and not a failure: a condition not met.
    Skipped(String),
    /// Stopped without a request for it (BindsTo=), or asked to stop before it started.
    Stopped(String),
}

impl Outcome {
    pub(super) fn text(&self) -> &str {
        match self {
            Outcome::Failed(text) | Outcome::Skipped(text) | Outcome::Stopped(text) => text,
        }
    }
}

/// Whether a unit whose processes are all gone ends `failed` (else `inactive`): it failed, and
/// no stop was asked for.
pub(super) fn stop_ends_failed(outcome: Option<&Outcome>, stop_requested: bool) -> bool {
    matches!(outcome, Some(Outcome::Failed(_))) && !stop_requested
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Exit {
    Code(i32),
    Signal(i32),
    /// A main process that was not the manager's child ended; how is not known.
    Unknown,
}

impl Exit {
    /// Clean by systemd's rules; `extra` is SuccessExitStatus= (a signal as its negative).
    pub(super) fn success(self, extra: &[i32]) -> bool {
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

    pub(super) fn describe(self) -> String {
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

/// Restart=: whether the main process of an active unit that ended as `exit` is started
/// again. A stop that was asked for is never followed by a restart.
pub(super) fn restart_after_exit(
    restart: Restart,
    exit: Exit,
    success_exit_status: &[i32],
    stop_requested: bool,
) -> bool {
    if stop_requested {
        return false;
    }
    let clean = exit.success(success_exit_status);
    match restart {
        Restart::No => false,
        Restart::Always => true,
        Restart::OnSuccess => clean,
        Restart::OnFailure => !clean,
        Restart::OnAbnormal | Restart::OnAbort => matches!(exit, Exit::Signal(_)),
        Restart::OnWatchdog => false,
    }
}

/// Restart=: whether a start that failed (a command, a timeout) is retried like a crash.
pub(super) fn restart_after_failed_start(restart: Restart) -> bool {
    matches!(
        restart,
        Restart::Always | Restart::OnFailure | Restart::OnAbnormal
    )
}

/// The longest RestartSec= honoured (RestartSec=infinity would never restart).
const MAX_RESTART_DELAY: Duration = Duration::from_secs(3600);

/// When a restart decided at `now` happens.
pub(super) fn restart_at(now: Instant, restart_sec: Duration) -> Instant {
    now + restart_sec.min(MAX_RESTART_DELAY)
}

/// StartLimitIntervalSec= and StartLimitBurst=: what a restart at `now` may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StartLimitVerdict {
    Allowed,
    /// `starts` starts within `interval` already: the unit fails instead.
    Hit {
        starts: usize,
        interval: Duration,
    },
}

/// Forgets the starts in `starts` older than the limit's interval, then judges a new one.
pub(super) fn start_limit(
    starts: &mut VecDeque<Instant>,
    limit: &StartLimit,
    now: Instant,
) -> StartLimitVerdict {
    let Some(interval) = limit.interval else {
        return StartLimitVerdict::Allowed;
    };
    while starts
        .front()
        .is_some_and(|t| now.duration_since(*t) > interval)
    {
        starts.pop_front();
    }
    if limit.burst > 0 && starts.len() >= limit.burst as usize {
        StartLimitVerdict::Hit {
            starts: starts.len(),
            interval,
        }
    } else {
        StartLimitVerdict::Allowed
    }
}

/// Type=: when a service counts as started (ExecStartPost= runs then, and what starts after
/// it may start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Readiness {
    /// simple, exec, idle: once its main process is spawned.
    OnSpawn,
    /// notify, notify-reload: once it sends READY=1.
    Notify,
    /// dbus: once its BusName= has an owner on the VM's bus.
    BusName,
    /// oneshot: once all its start commands exited.
    StartCommandsExited,
    /// forking: once its start command exited and its PID file (if any) names the daemon.
    PidFile,
}

pub(super) fn readiness(kind: ServiceType) -> Readiness {
    match kind {
        ServiceType::Simple | ServiceType::Exec | ServiceType::Idle => Readiness::OnSpawn,
        ServiceType::Notify | ServiceType::NotifyReload => Readiness::Notify,
        ServiceType::Dbus => Readiness::BusName,
        ServiceType::Oneshot => Readiness::StartCommandsExited,
        ServiceType::Forking => Readiness::PidFile,
    }
}

impl Readiness {
    /// Whether ExecStart= starts the main process (else it is a control command the
    /// manager waits for).
    pub(super) fn start_is_main(self) -> bool {
        matches!(
            self,
            Readiness::OnSpawn | Readiness::Notify | Readiness::BusName
        )
    }

    /// How many of the ExecStart= commands run: all for a oneshot, else the one.
    pub(super) fn start_commands(self, given: usize) -> usize {
        match self {
            Readiness::StartCommandsExited => given,
            _ => given.min(1),
        }
    }
}

/// What follows the end of a control command (ExecCondition=, ExecStartPre=, ExecStop=, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ControlOutcome {
    /// The next command or phase; `ignored_failure`: it failed, but that does not count (a
    /// `-` prefix, or the unit is stopping anyway).
    Next { ignored_failure: bool },
    /// ExecReload= failed: the service keeps running as it was.
    ReloadFailed,
    /// ExecCondition= exited 1..254: the unit is skipped, not failed.
    ConditionNotMet,
    /// The start fails: what the unit started is killed.
    Failed,
}

pub(super) fn control_outcome(
    phase: Phase,
    state: State,
    exit: Exit,
    ignore_failure: bool,
    success_exit_status: &[i32],
) -> ControlOutcome {
    let success = exit.success(success_exit_status);
    if success || ignore_failure || state == State::Deactivating {
        return ControlOutcome::Next {
            ignored_failure: !success,
        };
    }
    match (phase, exit) {
        (Phase::Reload, _) => ControlOutcome::ReloadFailed,
        (Phase::Condition, Exit::Code(1..=254)) => ControlOutcome::ConditionNotMet,
        _ => ControlOutcome::Failed,
    }
}

/// A forking service whose start command exited: what its PID file (or the guess) shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PidFileOutcome {
    /// PIDFile= is not written yet: wait (until TimeoutStartSec=).
    Wait,
    /// Started (with the main process found, or none to find).
    Ready,
    /// GuessMainPID= found no daemon left, and the unit does not remain after exit.
    NoMainProcess,
}

/// `found`: the PID file (or the guess) named a process now; `known_main`: a main process is
/// known anyway (a MAINPID= before).
pub(super) fn pid_file_outcome(
    found: bool,
    known_main: bool,
    has_pid_file: bool,
    guess_main_pid: bool,
    remain_after_exit: bool,
) -> PidFileOutcome {
    match (found, has_pid_file) {
        (true, _) => PidFileOutcome::Ready,
        (false, true) => PidFileOutcome::Wait,
        (false, false) if !known_main && guess_main_pid && !remain_after_exit => {
            PidFileOutcome::NoMainProcess
        }
        (false, false) => PidFileOutcome::Ready,
    }
}

/// What one sd_notify datagram says (the lines the manager acts on; others are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Notification {
    /// READY=1: a notify service is started.
    pub(super) ready: bool,
    /// STATUS=: shown by `service ls` and `service status`; the last one counts.
    pub(super) status: Option<String>,
    /// MAINPID=: the service's main process, if not the one the manager started.
    pub(super) main_pid: Option<i32>,
}

pub(super) fn notification(text: &str) -> Notification {
    let mut n = Notification::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => n.ready = true,
            Some(("STATUS", status)) => n.status = Some(status.to_owned()),
            Some(("MAINPID", pid)) => {
                if let Ok(pid) = pid.parse::<i32>() {
                    n.main_pid = Some(pid);
                }
            }
            _ => {}
        }
    }
    n
}

/// What the manager knows of another unit when it decides on this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Peer {
    pub(super) state: State,
    /// Asked to stop, waiting for the units ordered after it.
    pub(super) stop_pending: bool,
}

/// Start order: a waiting unit starts once no unit it is ordered after (After=, or the
/// reverse of Before=) is still on its way up or down.
pub(super) fn start_blocked(after: &BTreeSet<String>, peer: impl Fn(&str) -> Option<Peer>) -> bool {
    after.iter().any(|d| {
        peer(d).is_some_and(|p| {
            matches!(
                p.state,
                State::Waiting | State::Activating | State::Deactivating
            ) || p.stop_pending
        })
    })
}

/// Stop order, the reverse of start order: `name` stops once no unit ordered after it is
/// still to stop or stopping.
pub(super) fn stop_blocked<'a>(
    name: &str,
    others: impl IntoIterator<Item = (&'a str, &'a BTreeSet<String>, Peer)>,
) -> bool {
    others.into_iter().any(|(other, after, peer)| {
        other != name
            && after.contains(name)
            && (peer.stop_pending || peer.state == State::Deactivating)
    })
}

/// What a stop of `names` stops: them, and, again and again, every unit that requires, is bound
/// to or is part of one that stops. `stops_with[u]`: the units whose stop stops `u`
/// (Requires=, BindsTo=, Requisite=, PartOf=).
pub(super) fn stop_closure(
    names: &[String],
    stops_with: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeSet<String> {
    let mut stopping: BTreeSet<String> = names.iter().cloned().collect();
    loop {
        let more: Vec<String> = stops_with
            .iter()
            .filter(|(n, on)| !stopping.contains(*n) && on.iter().any(|d| stopping.contains(d)))
            .map(|(n, _)| n.clone())
            .collect();
        if more.is_empty() {
            return stopping;
        }
        stopping.extend(more);
    }
}

/// For each unit of a start, the units it starts after, from the graph's orderings
/// (`(before, after)` pairs).
pub(super) fn after_sets<'a>(
    ordering: impl IntoIterator<Item = &'a (String, String)>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (before, after) in ordering {
        sets.entry(after.clone())
            .or_default()
            .insert(before.clone());
    }
    sets
}

/// KillMode=: which signal goes to the main process and which to the unit's other processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct KillPlan {
    /// None: KillMode=none, where no process is signalled (only ExecStop= runs).
    pub(super) main: Option<Signal>,
    /// SIGCONT after the signal, so a stopped process sees it.
    pub(super) continue_main: bool,
    pub(super) others: Option<Signal>,
}

/// The signals of a stop: `signal` is KillSignal= (or, `finally`, FinalKillSignal=).
pub(super) fn kill_plan(kill_mode: KillMode, signal: Signal, finally: bool) -> KillPlan {
    let others = match (kill_mode, finally) {
        (KillMode::ControlGroup, _) => Some(signal),
        (KillMode::Mixed, false) => None,
        (KillMode::Mixed, true) => Some(Signal::SIGKILL),
        (KillMode::Process | KillMode::None, _) => None,
    };
    KillPlan {
        main: (kill_mode != KillMode::None).then_some(signal),
        continue_main: signal != Signal::SIGKILL,
        others,
    }
}

/// KillMode=: whether a stop waits for all the unit's processes, or only its main process
/// (`mixed`: once the main process is gone, the rest get SIGKILL at once, see
/// [`kill_rest_after_stop`]).
pub(super) fn stop_waits_for_all(kill_mode: KillMode) -> bool {
    kill_mode == KillMode::ControlGroup
}

/// KillMode=mixed: what is left of the unit once its main process ended gets SIGKILL, as
/// systemd's final kill sends it.
pub(super) fn kill_rest_after_stop(kill_mode: KillMode) -> bool {
    kill_mode == KillMode::Mixed
}

/// KillMode=: whether a stop waits for the main process to end (not with `none`, where
/// nothing is signalled and what runs is left running).
pub(super) fn stop_waits_for_main(kill_mode: KillMode) -> bool {
    kill_mode != KillMode::None
}

/// A unit's main process, found in its own cgroup (`members` with their parents): the one
/// process whose parent is outside the group (the manager, whose child it became), if there
/// is exactly one. A forking daemon's master process is found so, wherever its PID file is.
pub(super) fn top_of_group(members: &[(i32, i32)]) -> Option<i32> {
    let mut tops = members
        .iter()
        .filter(|(_, parent)| !members.iter().any(|(pid, _)| pid == parent))
        .map(|(pid, _)| *pid);
    let first = tops.next()?;
    tops.next().is_none().then_some(first)
}

/// A running timer.
pub(super) struct TimerRun {
    pub(super) started: Instant,
    pub(super) started_wall: i64,
    pub(super) calendar: Vec<CalendarSpec>,
    pub(super) last_trigger: Option<(Instant, i64)>,
    pub(super) next: Option<Instant>,
    pub(super) target: String,
}

/// When a timer is next due; for a calendar event also its local wall-clock time.
pub(super) type Elapse = (Instant, Option<i64>);

/// What a timer's next elapse depends on.
#[derive(Clone, Debug)]
pub(super) struct TimerClock {
    pub(super) now: Instant,
    /// Local seconds since the epoch at `now`, with their fraction.
    pub(super) now_wall: f64,
    /// When the timer started, monotonic and local wall-clock.
    pub(super) started: Instant,
    pub(super) started_wall: i64,
    pub(super) vm_boot: Instant,
    /// When the triggered unit was last started and last stopped.
    pub(super) target_activated: Option<Instant>,
    pub(super) target_deactivated: Option<Instant>,
    /// When the timer last triggered, monotonic and wall-clock.
    pub(super) last_trigger: Option<(Instant, i64)>,
}

/// When a timer is next due: the earliest of its settings that has not triggered yet (a time
/// at or before its last trigger counts as done, as in systemd).
pub(super) fn next_elapse(
    settings: &Timer,
    calendar: &[CalendarSpec],
    clock: &TimerClock,
) -> Option<Elapse> {
    let last = clock.last_trigger.map(|(at, _)| at);
    let mut monotonic: Vec<Instant> = Vec::new();
    monotonic.extend(settings.on_active.iter().map(|d| clock.started + *d));
    monotonic.extend(settings.on_boot.iter().map(|d| clock.vm_boot + *d));
    if let Some(at) = clock.target_activated {
        monotonic.extend(settings.on_unit_active.iter().map(|d| at + *d));
    }
    if let Some(at) = clock.target_deactivated {
        monotonic.extend(settings.on_unit_inactive.iter().map(|d| at + *d));
    }
    monotonic.retain(|c| last.is_none_or(|l| *c > l));
    let mut candidates: Vec<Elapse> = monotonic.into_iter().map(|at| (at, None)).collect();
    let base_wall = clock
        .last_trigger
        .map_or(clock.started_wall, |(_, wall)| wall);
    for spec in calendar {
        if let Some(wall) = spec.next_after(base_wall) {
            let ahead = wall as f64 - clock.now_wall;
            let at = if ahead >= 0.0 {
                clock.now + Duration::from_secs_f64(ahead)
            } else {
                clock
                    .now
                    .checked_sub(Duration::from_secs_f64(-ahead))
                    .unwrap_or(clock.now)
            };
            candidates.push((at, Some(wall)));
        }
    }
    candidates.into_iter().min_by_key(|(at, _)| *at)
}

#[cfg(test)]
mod tests;

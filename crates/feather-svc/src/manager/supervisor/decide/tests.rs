//! The supervisor's rules, without root, processes or waiting: start and stop order, readiness
//! by Type=, Restart= and start limits, KillMode=, timers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::*;
use crate::graph::DependencyGraph;
use crate::name::UnitName;
use crate::paths::UnitPaths;

/// A scratch tree of unit files, removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new(label: &str, units: &[(&str, &str)]) -> Tree {
        let root =
            std::env::temp_dir().join(format!("feather-svc-decide-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("lib/systemd/system");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in units {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Tree(root)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The after-sets of the closure of `root` in a tree of unit files.
fn after_sets_of(tree: &Tree, root: &str) -> BTreeMap<String, BTreeSet<String>> {
    let paths = UnitPaths::new(&tree.0);
    let graph = DependencyGraph::closure(&paths, &[UnitName::parse(root).unwrap()]).unwrap();
    let mut sets = after_sets(&graph.ordering());
    for name in graph.units.keys() {
        sets.entry(name.clone()).or_default();
    }
    sets
}

/// The manager's loop, reduced to order: every turn starts the waiting units that may start;
/// each is active by the next turn. Returns the waves.
fn start_order(after: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut states: BTreeMap<String, State> =
        after.keys().map(|n| (n.clone(), State::Waiting)).collect();
    let mut waves = Vec::new();
    while states.values().any(|s| *s == State::Waiting) {
        let peer = |n: &str| {
            states.get(n).map(|s| Peer {
                state: *s,
                stop_pending: false,
            })
        };
        let wave: Vec<String> = after
            .iter()
            .filter(|(n, _)| states[*n] == State::Waiting)
            .filter(|(_, a)| !start_blocked(a, peer))
            .map(|(n, _)| n.clone())
            .collect();
        assert!(!wave.is_empty(), "stuck with {states:?}");
        for n in &wave {
            states.insert(n.clone(), State::Active);
        }
        waves.push(wave);
    }
    waves
}

/// The loop again, for a stop of every unit: each turn the units whose stop is not blocked
/// begin to stop (deactivating); by the next turn they are inactive. Returns the waves.
fn stop_order(after: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut peers: BTreeMap<String, Peer> = after
        .keys()
        .map(|n| {
            let peer = Peer {
                state: State::Active,
                stop_pending: true,
            };
            (n.clone(), peer)
        })
        .collect();
    let mut waves = Vec::new();
    while peers.values().any(|p| p.stop_pending) {
        // What began to stop on the last turn has stopped by now.
        for p in peers.values_mut() {
            if p.state == State::Deactivating {
                p.state = State::Inactive;
            }
        }
        let wave: Vec<String> = peers
            .iter()
            .filter(|(_, p)| p.stop_pending)
            .filter(|(n, _)| {
                let others = after.iter().map(|(o, a)| (o.as_str(), a, peers[o]));
                !stop_blocked(n, others)
            })
            .map(|(n, _)| n.clone())
            .collect();
        assert!(!wave.is_empty(), "stuck with {peers:?}");
        for n in &wave {
            peers.insert(
                n.clone(),
                Peer {
                    state: State::Deactivating,
                    stop_pending: false,
                },
            );
        }
        waves.push(wave);
    }
    waves
}

fn names(waves: &[&[&str]]) -> Vec<Vec<String>> {
    waves
        .iter()
        .map(|w| w.iter().map(|n| n.to_string()).collect())
        .collect()
}

fn web_stack() -> Tree {
    Tree::new(
        "stack",
        &[
            (
                "web.service",
                "[Unit]\nRequires=app.service cache.service\nAfter=app.service cache.service\n[Service]\nExecStart=/bin/true\n",
            ),
            (
                "app.service",
                "[Unit]\nRequires=db.service\nAfter=db.service\n[Service]\nExecStart=/bin/true\n",
            ),
            ("cache.service", "[Service]\nExecStart=/bin/true\n"),
            (
                "db.service",
                "[Unit]\nBefore=cache.service\n[Service]\nExecStart=/bin/true\n",
            ),
        ],
    )
}

#[test]
fn units_start_in_the_order_of_the_dependency_graph() {
    let tree = web_stack();
    let after = after_sets_of(&tree, "web.service");
    assert_eq!(
        start_order(&after),
        names(&[
            &["db.service"],
            &["app.service", "cache.service"],
            &["web.service"]
        ])
    );
}

#[test]
fn units_stop_in_the_reverse_order() {
    let tree = web_stack();
    let after = after_sets_of(&tree, "web.service");
    assert_eq!(
        stop_order(&after),
        names(&[
            &["web.service"],
            &["app.service", "cache.service"],
            &["db.service"]
        ])
    );
}

#[test]
fn a_unit_waits_while_one_it_starts_after_is_stopping() {
    let after: BTreeSet<String> = ["old.service".to_owned()].into();
    for (state, stop_pending, blocked) in [
        (State::Deactivating, false, true),
        (State::Active, true, true),
        (State::Activating, false, true),
        (State::Waiting, false, true),
        (State::Active, false, false),
        (State::Failed, false, false),
        (State::Inactive, false, false),
    ] {
        let peer = |_: &str| {
            Some(Peer {
                state,
                stop_pending,
            })
        };
        assert_eq!(start_blocked(&after, peer), blocked, "{state:?}");
    }
    // A unit it is ordered after but that is not part of this start does not hold it.
    assert!(!start_blocked(&after, |_| None));
}

#[test]
fn readiness_follows_type() {
    let table = [
        (ServiceType::Simple, Readiness::OnSpawn, true, 1),
        (ServiceType::Exec, Readiness::OnSpawn, true, 1),
        (ServiceType::Idle, Readiness::OnSpawn, true, 1),
        (ServiceType::Notify, Readiness::Notify, true, 1),
        (ServiceType::NotifyReload, Readiness::Notify, true, 1),
        (ServiceType::Dbus, Readiness::BusName, true, 1),
        (
            ServiceType::Oneshot,
            Readiness::StartCommandsExited,
            false,
            3,
        ),
        (ServiceType::Forking, Readiness::PidFile, false, 1),
    ];
    for (kind, expected, main, commands) in table {
        let readiness = readiness(kind);
        assert_eq!(readiness, expected, "{kind:?}");
        assert_eq!(readiness.start_is_main(), main, "{kind:?}");
        // Three ExecStart= lines: only a oneshot runs them all.
        assert_eq!(readiness.start_commands(3), commands, "{kind:?}");
        assert_eq!(readiness.start_commands(0), 0, "{kind:?}");
    }
}

#[test]
fn exits_are_clean_by_systemds_rules() {
    assert!(Exit::Code(0).success(&[]));
    assert!(!Exit::Code(3).success(&[]));
    assert!(Exit::Code(3).success(&[3]));
    assert!(Exit::Signal(libc::SIGTERM).success(&[]));
    assert!(Exit::Signal(libc::SIGPIPE).success(&[]));
    assert!(!Exit::Signal(libc::SIGKILL).success(&[]));
    assert!(Exit::Signal(libc::SIGUSR1).success(&[-libc::SIGUSR1]));
    assert!(!Exit::Unknown.success(&[0]));
    assert_eq!(Exit::Code(2).describe(), "exited with status 2");
    assert_eq!(
        Exit::Signal(libc::SIGKILL).describe(),
        "was killed by SIGKILL"
    );
}

#[test]
fn restart_policies() {
    let exits = [
        Exit::Code(0),
        Exit::Code(1),
        Exit::Signal(libc::SIGKILL),
        Exit::Signal(libc::SIGTERM),
        Exit::Unknown,
    ];
    // For each policy: whether each of the exits above is restarted.
    let table = [
        (Restart::No, [false, false, false, false, false]),
        (Restart::Always, [true, true, true, true, true]),
        (Restart::OnSuccess, [true, false, false, true, false]),
        (Restart::OnFailure, [false, true, true, false, true]),
        (Restart::OnAbnormal, [false, false, true, true, false]),
        (Restart::OnAbort, [false, false, true, true, false]),
        (Restart::OnWatchdog, [false, false, false, false, false]),
    ];
    for (restart, expected) in table {
        for (exit, want) in exits.iter().zip(expected) {
            assert_eq!(
                restart_after_exit(restart, *exit, &[], false),
                want,
                "{restart:?} {exit:?}"
            );
            // A stop that was asked for is never followed by a restart.
            assert!(!restart_after_exit(restart, *exit, &[], true));
        }
    }
    // SuccessExitStatus= makes an exit clean: on-failure does not restart it.
    assert!(!restart_after_exit(
        Restart::OnFailure,
        Exit::Code(3),
        &[3],
        false
    ));
    for (restart, retried) in [
        (Restart::No, false),
        (Restart::Always, true),
        (Restart::OnFailure, true),
        (Restart::OnAbnormal, true),
        (Restart::OnSuccess, false),
        (Restart::OnAbort, false),
        (Restart::OnWatchdog, false),
    ] {
        assert_eq!(restart_after_failed_start(restart), retried, "{restart:?}");
    }
}

#[test]
fn restart_delay_is_capped() {
    let now = Instant::now();
    assert_eq!(
        restart_at(now, Duration::from_millis(100)),
        now + Duration::from_millis(100)
    );
    assert_eq!(
        restart_at(now, Duration::MAX),
        now + Duration::from_secs(3600)
    );
}

#[test]
fn start_limits_count_the_starts_within_the_interval() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let limit = StartLimit {
        interval: Some(s(10)),
        burst: 3,
    };
    let mut starts: VecDeque<Instant> = [t0, t0 + s(1), t0 + s(2)].into();
    assert_eq!(
        start_limit(&mut starts, &limit, t0 + s(3)),
        StartLimitVerdict::Hit {
            starts: 3,
            interval: s(10)
        }
    );
    // 11.5 s after the first start, the first two are older than the interval.
    let later = t0 + Duration::from_millis(11_500);
    assert_eq!(
        start_limit(&mut starts, &limit, later),
        StartLimitVerdict::Allowed
    );
    assert_eq!(starts, VecDeque::from([t0 + s(2)]));
    // No interval, or a burst of 0: no limit.
    let mut many: VecDeque<Instant> = std::iter::repeat_n(t0, 50).collect();
    let unlimited = StartLimit {
        interval: None,
        burst: 3,
    };
    assert_eq!(
        start_limit(&mut many, &unlimited, t0),
        StartLimitVerdict::Allowed
    );
    let no_burst = StartLimit {
        interval: Some(s(10)),
        burst: 0,
    };
    assert_eq!(
        start_limit(&mut many, &no_burst, t0),
        StartLimitVerdict::Allowed
    );
}

#[test]
fn kill_mode_decides_who_gets_which_signal() {
    let term = Signal::SIGTERM;
    let kill = Signal::SIGKILL;
    let plan = |mode, signal, finally| kill_plan(mode, signal, finally);
    // control-group: everything gets the signal.
    assert_eq!(
        plan(KillMode::ControlGroup, term, false),
        KillPlan {
            main: Some(term),
            continue_main: true,
            others: Some(term)
        }
    );
    assert_eq!(plan(KillMode::ControlGroup, kill, true).others, Some(kill));
    assert!(!plan(KillMode::ControlGroup, kill, true).continue_main);
    // mixed: SIGTERM to the main process only; the final kill reaches all.
    assert_eq!(plan(KillMode::Mixed, term, false).others, None);
    assert_eq!(plan(KillMode::Mixed, term, true).others, Some(kill));
    // process: only the main process; none: no process at all (systemd.kill(5)).
    for mode in [KillMode::Process, KillMode::None] {
        assert_eq!(plan(mode, term, false).others, None);
        assert_eq!(plan(mode, kill, true).others, None);
    }
    assert_eq!(plan(KillMode::Process, term, false).main, Some(term));
    assert_eq!(plan(KillMode::None, term, false).main, None);
    assert_eq!(plan(KillMode::None, kill, true).main, None);
    assert!(stop_waits_for_all(KillMode::ControlGroup));
    // mixed: the stop waits for the main process; then the rest gets SIGKILL at once.
    assert!(!stop_waits_for_all(KillMode::Mixed));
    assert!(kill_rest_after_stop(KillMode::Mixed));
    assert!(!kill_rest_after_stop(KillMode::ControlGroup));
    assert!(!kill_rest_after_stop(KillMode::Process));
    assert!(!stop_waits_for_all(KillMode::Process));
    assert!(!stop_waits_for_all(KillMode::None));
    assert!(stop_waits_for_main(KillMode::Process));
    assert!(!stop_waits_for_main(KillMode::None));
}

fn clock(now: Instant) -> TimerClock {
    TimerClock {
        now,
        now_wall: 0.0,
        started: now,
        started_wall: 0,
        vm_boot: now,
        target_activated: None,
        target_deactivated: None,
        last_trigger: None,
    }
}

#[test]
fn a_timer_is_next_due_at_its_earliest_setting_not_yet_triggered() {
    let now = Instant::now();
    let s = Duration::from_secs;
    let settings = Timer {
        on_active: vec![s(30)],
        on_boot: vec![s(10)],
        ..Timer::default()
    };
    let c = clock(now);
    assert_eq!(next_elapse(&settings, &[], &c), Some((now + s(10), None)));
    // Once it triggered at the boot setting, the active one is next; then nothing.
    let c = TimerClock {
        last_trigger: Some((now + s(10), 10)),
        ..clock(now)
    };
    assert_eq!(next_elapse(&settings, &[], &c), Some((now + s(30), None)));
    let c = TimerClock {
        last_trigger: Some((now + s(30), 30)),
        ..clock(now)
    };
    assert_eq!(next_elapse(&settings, &[], &c), None);
}

#[test]
fn on_unit_active_sec_repeats_from_the_triggered_units_last_start() {
    let now = Instant::now();
    let s = Duration::from_secs;
    let settings = Timer {
        on_unit_active: vec![s(5)],
        ..Timer::default()
    };
    // The unit never ran: nothing to count from.
    assert_eq!(next_elapse(&settings, &[], &clock(now)), None);
    let c = TimerClock {
        target_activated: Some(now),
        ..clock(now)
    };
    assert_eq!(next_elapse(&settings, &[], &c), Some((now + s(5), None)));
    // It triggered at +5 and the unit started at +6: next at +11.
    let c = TimerClock {
        target_activated: Some(now + s(6)),
        last_trigger: Some((now + s(5), 5)),
        ..clock(now)
    };
    assert_eq!(next_elapse(&settings, &[], &c), Some((now + s(11), None)));
}

#[test]
fn an_on_boot_sec_in_the_past_is_due_at_once() {
    let now = Instant::now();
    let s = Duration::from_secs;
    let settings = Timer {
        on_boot: vec![s(60)],
        ..Timer::default()
    };
    let c = TimerClock {
        vm_boot: now.checked_sub(s(100)).unwrap_or(now),
        ..clock(now)
    };
    let (at, wall) = next_elapse(&settings, &[], &c).unwrap();
    assert!(at <= now && wall.is_none());
}

#[test]
fn a_calendar_event_is_due_at_its_wall_clock_time() {
    let now = Instant::now();
    let minutely = CalendarSpec::parse("minutely").unwrap();
    // 30 s past a minute (local seconds since the epoch).
    let wall = 20_000 * 86_400 + 30;
    let c = TimerClock {
        now_wall: wall as f64,
        started_wall: wall,
        ..clock(now)
    };
    let next_minute = 20_000 * 86_400 + 60;
    assert_eq!(
        next_elapse(&Timer::default(), std::slice::from_ref(&minutely), &c),
        Some((now + Duration::from_secs(30), Some(next_minute)))
    );
    // After it triggered at that minute, the next is a minute later.
    let c = TimerClock {
        now_wall: next_minute as f64,
        last_trigger: Some((now + Duration::from_secs(30), next_minute)),
        ..c
    };
    assert_eq!(
        next_elapse(&Timer::default(), &[minutely], &c),
        Some((now + Duration::from_secs(60), Some(next_minute + 60)))
    );
}

#[test]
fn notify_messages_say_ready_status_and_main_pid() {
    assert_eq!(
        notification("READY=1\nSTATUS=Processing requests…\nMAINPID=4242\n"),
        Notification {
            ready: true,
            status: Some("Processing requests…".into()),
            main_pid: Some(4242),
        }
    );
    // READY=0, an unknown line, a bad pid: nothing of it counts.
    assert_eq!(
        notification("READY=0\nWATCHDOG=1\nMAINPID=x"),
        Notification::default()
    );
    // The last STATUS= of a datagram counts.
    assert_eq!(
        notification("STATUS=one\nSTATUS=two").status.as_deref(),
        Some("two")
    );
}

#[test]
fn the_phase_after_execstart_follows_type() {
    // For each Type=: where a start is once ExecStart='s process is spawned (a main process)
    // or once the start commands exited (not a main process).
    let table = [
        (ServiceType::Simple, Phase::StartPost),
        (ServiceType::Exec, Phase::StartPost),
        (ServiceType::Idle, Phase::StartPost),
        (ServiceType::Notify, Phase::WaitReady),
        (ServiceType::NotifyReload, Phase::WaitReady),
        (ServiceType::Dbus, Phase::WaitBusName),
        (ServiceType::Oneshot, Phase::StartPost),
        (ServiceType::Forking, Phase::WaitPidFile),
    ];
    for (kind, next) in table {
        let readiness = readiness(kind);
        let got = if readiness.start_is_main() {
            phase_after_main_spawned(readiness)
        } else {
            phase_after_start_commands(readiness)
        };
        assert_eq!(got, next, "{kind:?}");
        // Every waiting phase is shown as `start` and belongs to ExecStart=.
        assert!(matches!(got.name(), "start" | "start-post"), "{kind:?}");
        if got != Phase::StartPost {
            assert_eq!(phase_setting(got), "ExecStart", "{kind:?}");
        }
    }
}

#[test]
fn the_end_of_a_control_command_decides_the_next_step() {
    let next = |ignored_failure| ControlOutcome::Next { ignored_failure };
    let up = State::Activating;
    let failed = Exit::Code(1);
    // Success, a `-` prefix, or a unit that stops anyway: go on.
    assert_eq!(
        control_outcome(Phase::StartPre, up, Exit::Code(0), false, &[]),
        next(false)
    );
    assert_eq!(
        control_outcome(Phase::StartPre, up, failed, true, &[]),
        next(true)
    );
    assert_eq!(
        control_outcome(Phase::Stop, State::Deactivating, failed, false, &[]),
        next(true)
    );
    assert_eq!(
        control_outcome(Phase::StartPost, up, Exit::Code(7), false, &[7]),
        next(false)
    );
    // A failed reload leaves the unit running; a condition not met skips it.
    assert_eq!(
        control_outcome(Phase::Reload, State::Active, failed, false, &[]),
        ControlOutcome::ReloadFailed
    );
    assert_eq!(
        control_outcome(Phase::Condition, up, Exit::Code(254), false, &[]),
        ControlOutcome::ConditionNotMet
    );
    // ExecCondition= exiting 255 or killed is a failure, as in systemd; so is any other phase.
    assert_eq!(
        control_outcome(Phase::Condition, up, Exit::Code(255), false, &[]),
        ControlOutcome::Failed
    );
    assert_eq!(
        control_outcome(
            Phase::Condition,
            up,
            Exit::Signal(libc::SIGKILL),
            false,
            &[]
        ),
        ControlOutcome::Failed
    );
    assert_eq!(
        control_outcome(Phase::StartPre, up, failed, false, &[]),
        ControlOutcome::Failed
    );
}

#[test]
fn a_forking_start_waits_for_its_pid_file() {
    use PidFileOutcome::*;
    // (found now, main known before, PIDFile=, GuessMainPID=, RemainAfterExit=) → outcome
    for (found, known, pid_file, guess, remain, outcome) in [
        (true, false, true, true, false, Ready),
        (false, false, true, true, false, Wait),
        // A PID file not written yet is waited for, whatever MAINPID= said.
        (false, true, true, true, false, Wait),
        (false, false, true, false, true, Wait),
        (true, false, false, true, false, Ready),
        (false, false, false, true, false, NoMainProcess),
        (false, true, false, true, false, Ready),
        (false, false, false, true, true, Ready),
        (false, false, false, false, false, Ready),
    ] {
        assert_eq!(
            pid_file_outcome(found, known, pid_file, guess, remain),
            outcome,
            "{found} {known} {pid_file} {guess} {remain}"
        );
    }
}

#[test]
fn only_a_failure_not_followed_by_a_stop_request_ends_failed() {
    let failed = Outcome::Failed("main process exited with status 1".into());
    let skipped = Outcome::Skipped("skipped: ConditionPathExists=/nope".into());
    let bound =
        Outcome::Stopped("stopped: db.service, which it is bound to (BindsTo=), ended".into());
    assert!(stop_ends_failed(Some(&failed), false));
    assert!(!stop_ends_failed(Some(&failed), true));
    assert!(!stop_ends_failed(Some(&skipped), false));
    assert!(!stop_ends_failed(Some(&bound), false));
    assert!(!stop_ends_failed(None, false));
    assert_eq!(
        bound.text(),
        "stopped: db.service, which it is bound to (BindsTo=), ended"
    );
}

#[test]
fn a_stop_takes_along_what_requires_or_is_part_of_the_stopped_units() {
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| n.to_string()).collect() };
    // web requires app, app requires db, a worker is PartOf=app, cache stands alone.
    let stops_with: BTreeMap<String, BTreeSet<String>> = [
        ("web", set(&["app"])),
        ("app", set(&["db"])),
        ("worker", set(&["app"])),
        ("db", set(&[])),
        ("cache", set(&[])),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_owned(), s))
    .collect();
    assert_eq!(
        stop_closure(&["db".to_owned()], &stops_with),
        set(&["app", "db", "web", "worker"])
    );
    assert_eq!(
        stop_closure(&["web".to_owned()], &stops_with),
        set(&["web"])
    );
    assert_eq!(
        stop_closure(&["cache".to_owned(), "app".to_owned()], &stops_with),
        set(&["app", "cache", "web", "worker"])
    );
}

#[test]
fn the_main_process_of_a_group_is_its_one_process_whose_parent_is_outside() {
    // postfix: master (349, child of the manager, 4) and its children.
    let postfix = [(349, 4), (350, 349), (351, 349), (357, 349)];
    assert_eq!(top_of_group(&postfix), Some(349));
    // The forking parent still there beside the daemon: two candidates, none is guessed.
    assert_eq!(top_of_group(&[(20, 4), (21, 4), (22, 21)]), None);
    assert_eq!(top_of_group(&[]), None);
}

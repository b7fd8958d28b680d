//! The decisions of a running VM's two resident processes, as pure functions: fed with what
//! happened (a request on the control socket, a signal, the time, a child's end), they say
//! what to do next. The keeper's loop ([`crate::keeper`]) and init's ([`crate::init`]) make the
//! system calls; the rules are here, unit-tested without root, processes or waiting.
//!
//! This module uses nothing of the rest of the crate but the messages it decides on: the
//! arrows point from the loops to here, never back.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::protocol::Request;

/// How long processes get to exit after SIGTERM when a VM stops, unless told otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// How much longer than the grace it gave init the keeper waits before it kills init: init
/// itself gives the VM's processes the grace, then needs a moment to reap them.
pub const KILL_MARGIN: Duration = Duration::from_secs(2);

/// Where a running VM is on its way to an end, as its keeper sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Init was asked to stop everything; it is killed if still there at `kill_at`.
    Stopping {
        kill_at: Instant,
    },
    /// Init was sent SIGKILL; only its exit is awaited.
    Killed,
}

impl Phase {
    /// How long the keeper may wait for something to happen before it must act itself.
    pub fn patience(self, now: Instant) -> Option<Duration> {
        match self {
            Phase::Stopping { kill_at } => Some(kill_at.saturating_duration_since(now)),
            Phase::Running | Phase::Killed => None,
        }
    }
}

/// What the keeper does next: the phase it is in from now, and the signal (if any) it sends
/// to init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub phase: Phase,
    pub signal: Option<Signal>,
}

impl Step {
    fn stay(phase: Phase) -> Step {
        Step {
            phase,
            signal: None,
        }
    }
}

/// A stop with `grace` was asked for (by a request or a signal): init gets SIGTERM once, and
/// the keeper will kill it if it has not ended `grace` plus [`KILL_MARGIN`] from `now`. A stop
/// under way is not restarted (its deadline stands).
pub fn stop(phase: Phase, grace: Duration, now: Instant) -> Step {
    match phase {
        Phase::Running => Step {
            phase: Phase::Stopping {
                kill_at: now + grace + KILL_MARGIN,
            },
            signal: Some(Signal::SIGTERM),
        },
        other => Step::stay(other),
    }
}

/// A pooled VM's claimer let go (its command ended, or it died): the VM ends now, as a
/// throw-away VM does when its command ends — every process of it killed with init, its pid
/// namespace's first, with no grace (the claimer is gone, and nothing of the VM outlives
/// its use).
pub fn claim_ended(phase: Phase) -> Step {
    match phase {
        Phase::Killed => Step::stay(phase),
        Phase::Running | Phase::Stopping { .. } => Step {
            phase: Phase::Killed,
            signal: Some(Signal::SIGKILL),
        },
    }
}

/// The keeper received `signal`. In the foreground (`feather run --rm`) it goes on to init,
/// and so to the workload: the VM is a session of its own, out of reach of the caller's
/// terminal, whose Ctrl-C reaches only the keeper. In the background, any handled signal
/// stops the VM.
pub fn on_signal(phase: Phase, signal: Signal, foreground: bool, now: Instant) -> Step {
    if foreground {
        Step {
            phase,
            signal: Some(signal),
        }
    } else {
        stop(phase, DEFAULT_GRACE, now)
    }
}

/// The time passed: a stop whose deadline has come ends with SIGKILL.
pub fn on_time(phase: Phase, now: Instant) -> Step {
    match phase {
        Phase::Stopping { kill_at } if now >= kill_at => Step {
            phase: Phase::Killed,
            signal: Some(Signal::SIGKILL),
        },
        other => Step::stay(other),
    }
}

/// What the keeper makes of a request on its control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Answer at once that the VM runs, with init's pid.
    Running,
    /// Stop the VM with this grace; the asker hears when it has stopped.
    Stop(Duration),
    /// Dump the VM with CRIU (then see [`after_dump`]); `lazy`: post-copy, its memory served
    /// from there; `hold_frozen`: frozen from before the dump until the asker lets go (only a
    /// VM left running has something to hold: otherwise its processes end with the dump).
    Checkpoint {
        leave_running: bool,
        criu: std::path::PathBuf,
        lazy: bool,
        hold_frozen: bool,
    },
    /// Take the VM out of the pool, if it is in it still, for an asker at `terminal` (see
    /// [`Request::Claim`]).
    Claim {
        terminal: Option<std::path::PathBuf>,
    },
}

pub fn answer(request: Request) -> Answer {
    match request {
        // A Resume reaches a running keeper only after the VM was let go: it runs already.
        Request::Status | Request::Resume => Answer::Running,
        Request::Stop { grace_secs } => Answer::Stop(Duration::from_secs(grace_secs)),
        Request::Claim { terminal } => Answer::Claim { terminal },
        Request::Checkpoint {
            leave_running,
            criu,
            lazy,
            hold_frozen,
        } => Answer::Checkpoint {
            leave_running,
            criu,
            hold_frozen: hold_frozen && leave_running && !lazy,
            lazy,
        },
    }
}

/// What follows a dump that worked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterDump {
    /// The VM runs on: answer now.
    AnswerNow,
    /// CRIU left the VM's processes stopped: init is killed, the VM's end is recorded as a
    /// checkpoint, and the asker hears once the VM has ended.
    EndAsCheckpointed,
}

pub fn after_dump(leave_running: bool) -> AfterDump {
    if leave_running {
        AfterDump::AnswerNow
    } else {
        AfterDump::EndAsCheckpointed
    }
}

/// What a keeper holding a VM received by a migration (stopped until the sender lets it go)
/// makes of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhileHeld {
    /// The sender let the VM go: continue its processes and answer that it runs.
    Release,
    /// Answer that it runs (its init exists), and keep waiting.
    Status,
    /// Refuse: the VM is not the keeper's to stop or checkpoint yet.
    Refuse,
}

pub fn while_held(request: &Request) -> WhileHeld {
    match request {
        Request::Resume => WhileHeld::Release,
        Request::Status => WhileHeld::Status,
        Request::Stop { .. } | Request::Checkpoint { .. } | Request::Claim { .. } => {
            WhileHeld::Refuse
        }
    }
}

/// How a VM's run ended: init's exit code, and the words `ls` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The init's exit code: the workload's for a foreground run, 0 after an orderly stop.
    pub code: i32,
    pub how: String,
}

/// How init's end, as `waitpid` told it, reads.
pub fn ended(status: nix::Result<WaitStatus>, foreground: bool) -> Ended {
    match status {
        Ok(WaitStatus::Exited(_, code)) if foreground => Ended {
            code,
            how: format!("command exited with status {code}"),
        },
        Ok(WaitStatus::Exited(_, 0)) => Ended {
            code: 0,
            how: "stopped".into(),
        },
        Ok(WaitStatus::Exited(_, code)) => Ended {
            code,
            how: format!("init exited with status {code}"),
        },
        Ok(WaitStatus::Signaled(_, signal, _)) => Ended {
            code: 128 + signal as i32,
            how: format!("init killed by {signal}"),
        },
        other => Ended {
            code: 1,
            how: format!("init ended: {other:?}"),
        },
    }
}

/// What init does on a signal it reads from its signalfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitAction {
    /// A child ended: reap every child that has.
    Reap,
    /// Pass the signal on to the workload.
    Forward(Pid, Signal),
    /// Stop every process of the VM and exit 0.
    ShutDown,
    Ignore,
}

/// With a workload (a foreground run), every signal but SIGCHLD goes on to it: the keeper
/// forwards what the caller's terminal sent (Ctrl-C included), and the VM ends when the
/// workload does. Without, the stop signals shut the VM down.
pub fn init_on_signal(signal: Signal, workload: Option<Pid>) -> InitAction {
    match (signal, workload) {
        (Signal::SIGCHLD, _) => InitAction::Reap,
        (signal, Some(pid)) => InitAction::Forward(pid, signal),
        (Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT, None) => {
            InitAction::ShutDown
        }
        _ => InitAction::Ignore,
    }
}

/// The exit code a shell would report for a child's end: its status, or 128 + the signal that
/// killed it; None for what is not an end (a stop, a continue).
pub fn exit_code(status: WaitStatus) -> Option<(Pid, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, code)),
        WaitStatus::Signaled(pid, signal, _) => Some((pid, 128 + signal as i32)),
        _ => None,
    }
}

/// Reaps every child that has ended: `wait` is `waitpid(-1, WNOHANG)`, asked until no ended
/// child is left; each end other than the workload's goes to `exited` (a `feather exec`
/// program's session hears of it). Returns the workload's exit code if it was among them.
pub fn reap(
    mut wait: impl FnMut() -> nix::Result<WaitStatus>,
    workload: Option<Pid>,
    mut exited: impl FnMut(Pid, i32),
) -> Option<i32> {
    let mut workload_code = None;
    loop {
        let status = match wait() {
            Ok(WaitStatus::StillAlive) | Err(_) => return workload_code,
            Ok(status) => status,
        };
        let Some((pid, code)) = exit_code(status) else {
            continue;
        };
        if Some(pid) == workload {
            workload_code = Some(code);
        } else {
            exited(pid, code);
        }
    }
}

/// How long init's shutdown after the workload ended gives the VM's other processes: the
/// grace, but at most a second (the user waits for a foreground command's end).
pub fn grace_after_workload(grace: Duration) -> Duration {
    grace.min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Instant {
        // One base for every test: only differences matter.
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_secs(secs)
    }

    /// A claimed VM ends at once when its claimer lets go, a stop under way included (no
    /// grace, no margin: a throw-away VM's end), and is not killed twice.
    #[test]
    fn a_claim_s_end_kills_init_at_once() {
        let killed = Step {
            phase: Phase::Killed,
            signal: Some(Signal::SIGKILL),
        };
        assert_eq!(claim_ended(Phase::Running), killed);
        assert_eq!(claim_ended(Phase::Stopping { kill_at: at(60) }), killed);
        assert_eq!(claim_ended(Phase::Killed), Step::stay(Phase::Killed));
    }

    #[test]
    fn a_stop_sends_sigterm_once_and_keeps_its_first_deadline() {
        let first = stop(Phase::Running, Duration::from_secs(3), at(0));
        assert_eq!(first.signal, Some(Signal::SIGTERM));
        assert_eq!(
            first.phase,
            Phase::Stopping {
                kill_at: at(3) + KILL_MARGIN
            }
        );
        let again = stop(first.phase, Duration::from_secs(60), at(1));
        assert_eq!(
            again,
            Step::stay(first.phase),
            "no second SIGTERM, no new deadline"
        );
        assert_eq!(
            stop(Phase::Killed, DEFAULT_GRACE, at(1)),
            Step::stay(Phase::Killed)
        );
    }

    #[test]
    fn init_is_killed_once_the_grace_and_margin_are_over() {
        let stopping = stop(Phase::Running, Duration::from_secs(1), at(0)).phase;
        assert_eq!(on_time(stopping, at(2)), Step::stay(stopping));
        let killed = on_time(stopping, at(3));
        assert_eq!(killed.signal, Some(Signal::SIGKILL));
        assert_eq!(killed.phase, Phase::Killed);
        assert_eq!(on_time(Phase::Killed, at(100)), Step::stay(Phase::Killed));
        assert_eq!(on_time(Phase::Running, at(100)), Step::stay(Phase::Running));
    }

    #[test]
    fn the_keeper_waits_without_end_until_a_stop_has_a_deadline() {
        assert_eq!(Phase::Running.patience(at(0)), None);
        assert_eq!(Phase::Killed.patience(at(0)), None);
        let stopping = Phase::Stopping { kill_at: at(5) };
        assert_eq!(stopping.patience(at(2)), Some(Duration::from_secs(3)));
        assert_eq!(stopping.patience(at(9)), Some(Duration::ZERO));
    }

    #[test]
    fn in_the_foreground_signals_go_to_the_workload_in_the_background_they_stop_the_vm() {
        let forwarded = on_signal(Phase::Running, Signal::SIGINT, true, at(0));
        assert_eq!(forwarded.signal, Some(Signal::SIGINT));
        assert_eq!(forwarded.phase, Phase::Running);
        let stopped = on_signal(Phase::Running, Signal::SIGHUP, false, at(0));
        assert_eq!(stopped.signal, Some(Signal::SIGTERM));
        assert_eq!(
            stopped.phase,
            Phase::Stopping {
                kill_at: at(0) + DEFAULT_GRACE + KILL_MARGIN
            }
        );
    }

    #[test]
    fn requests_are_answered_by_kind() {
        assert_eq!(answer(Request::Status), Answer::Running);
        assert_eq!(answer(Request::Resume), Answer::Running);
        assert_eq!(
            answer(Request::Stop { grace_secs: 4 }),
            Answer::Stop(Duration::from_secs(4))
        );
        assert_eq!(
            answer(Request::Checkpoint {
                leave_running: true,
                criu: "/usr/sbin/criu".into(),
                lazy: false,
                hold_frozen: true,
            }),
            Answer::Checkpoint {
                leave_running: true,
                criu: "/usr/sbin/criu".into(),
                lazy: false,
                hold_frozen: true,
            }
        );
        // A VM whose processes end with the dump is never held frozen.
        assert_eq!(
            answer(Request::Checkpoint {
                leave_running: false,
                criu: "/usr/sbin/criu".into(),
                lazy: false,
                hold_frozen: true,
            }),
            Answer::Checkpoint {
                leave_running: false,
                criu: "/usr/sbin/criu".into(),
                lazy: false,
                hold_frozen: false,
            }
        );
        assert_eq!(after_dump(true), AfterDump::AnswerNow);
        assert_eq!(after_dump(false), AfterDump::EndAsCheckpointed);
    }

    #[test]
    fn a_held_vm_runs_only_when_released_and_refuses_stop_and_checkpoint() {
        assert_eq!(while_held(&Request::Resume), WhileHeld::Release);
        assert_eq!(while_held(&Request::Status), WhileHeld::Status);
        assert_eq!(
            while_held(&Request::Stop { grace_secs: 1 }),
            WhileHeld::Refuse
        );
        assert_eq!(
            while_held(&Request::Checkpoint {
                leave_running: false,
                criu: "criu".into(),
                lazy: false,
                hold_frozen: false,
            }),
            WhileHeld::Refuse
        );
    }

    #[test]
    fn init_s_end_reads_as_the_user_expects() {
        let pid = Pid::from_raw(7);
        assert_eq!(
            ended(Ok(WaitStatus::Exited(pid, 3)), true),
            Ended {
                code: 3,
                how: "command exited with status 3".into()
            }
        );
        assert_eq!(ended(Ok(WaitStatus::Exited(pid, 0)), false).how, "stopped");
        assert_eq!(
            ended(Ok(WaitStatus::Exited(pid, 2)), false).how,
            "init exited with status 2"
        );
        let killed = ended(Ok(WaitStatus::Signaled(pid, Signal::SIGKILL, false)), false);
        assert_eq!(killed.code, 137);
        assert_eq!(killed.how, "init killed by SIGKILL");
        assert_eq!(ended(Err(nix::errno::Errno::ECHILD), false).code, 1);
    }

    #[test]
    fn init_reaps_on_sigchld_forwards_to_a_workload_and_shuts_down_without_one() {
        let workload = Some(Pid::from_raw(2));
        assert_eq!(init_on_signal(Signal::SIGCHLD, workload), InitAction::Reap);
        assert_eq!(init_on_signal(Signal::SIGCHLD, None), InitAction::Reap);
        assert_eq!(
            init_on_signal(Signal::SIGTERM, workload),
            InitAction::Forward(Pid::from_raw(2), Signal::SIGTERM)
        );
        assert_eq!(
            init_on_signal(Signal::SIGUSR1, workload),
            InitAction::Forward(Pid::from_raw(2), Signal::SIGUSR1)
        );
        for signal in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            assert_eq!(init_on_signal(signal, None), InitAction::ShutDown);
        }
        assert_eq!(init_on_signal(Signal::SIGUSR2, None), InitAction::Ignore);
    }

    #[test]
    fn reaping_collects_every_end_and_tells_the_workload_s_apart() {
        let (workload, other, stopped) = (Pid::from_raw(2), Pid::from_raw(9), Pid::from_raw(5));
        let mut statuses = vec![
            Ok(WaitStatus::Exited(other, 4)),
            Ok(WaitStatus::Stopped(stopped, Signal::SIGSTOP)),
            Ok(WaitStatus::Signaled(workload, Signal::SIGTERM, false)),
            Ok(WaitStatus::StillAlive),
            Ok(WaitStatus::Exited(Pid::from_raw(11), 0)),
        ]
        .into_iter();
        let mut others = Vec::new();
        let code = reap(
            || statuses.next().unwrap(),
            Some(workload),
            |pid, code| others.push((pid, code)),
        );
        assert_eq!(
            code,
            Some(128 + 15),
            "the workload's end, as a shell says it"
        );
        assert_eq!(others, vec![(other, 4)], "a stop is not an end");
        assert_eq!(
            statuses.count(),
            1,
            "reaping stops once no ended child is left"
        );

        let mut none = vec![Err(nix::errno::Errno::ECHILD)].into_iter();
        assert_eq!(reap(|| none.next().unwrap(), None, |_, _| {}), None);
    }

    #[test]
    fn after_the_workload_ends_the_rest_get_at_most_a_second() {
        assert_eq!(
            grace_after_workload(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            grace_after_workload(Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }
}

//! Stopping a unit: its stop commands, SIGTERM, SIGKILL after the timeout, stop-post, and what
//! follows (restart, dependants, clean-up).

use super::readiness::notify_path;
use super::*;

impl Manager {
    pub(super) fn begin_stop(&mut self, name: &str) {
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
    pub(super) fn signal_unit(&mut self, name: &str, finally: bool) {
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
        let plan = decide::kill_plan(service.kill_mode, signal, finally);
        let main = r.main_pid;
        let others: Vec<Pid> = processes_of(r)
            .into_iter()
            .filter(|p| Some(*p) != main)
            .collect();
        if let (Some(main), Some(signal)) = (main, plan.main) {
            let _ = kill(main, signal);
            if plan.continue_main {
                let _ = kill(main, Signal::SIGCONT);
            }
        }
        if let Some(sig) = plan.others {
            for pid in others {
                let _ = kill(pid, sig);
            }
        }
    }

    pub(super) fn kill_remaining(&mut self, name: &str) {
        let Some(r) = self.units.get(name) else {
            return;
        };
        for pid in processes_of(r) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    /// In the stop phases: moves on once the processes that must go are gone.
    pub(super) fn check_stopped(&mut self, name: &str) {
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
        let left = (r.main_pid.is_some() && decide::stop_waits_for_main(kill_mode))
            || (decide::stop_waits_for_all(kill_mode) && !processes_of(r).is_empty());
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

    pub(super) fn deadline_passed(&mut self, name: &str) {
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
                    let problem =
                        self.bus_problem
                            .as_ref()
                            .map(ToString::to_string)
                            .or_else(|| {
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
    pub(super) fn fail_and_clean(&mut self, name: &str, why: impl std::fmt::Display) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        let why = why.to_string();
        log_line(r, &format!("feather: failed: {why}"));
        r.result = Some(Outcome::Failed(why));
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
    pub(super) fn after_stop(&mut self, name: &str) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        let kill_mode = r
            .unit
            .service
            .as_ref()
            .map_or(KillMode::ControlGroup, |s| s.kill_mode);
        if decide::kill_rest_after_stop(kill_mode) {
            for pid in processes_of(r) {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        spawn::remove_runtime_directories(&r.unit);
        if let Some(folder) = r.private_tmp.take() {
            spawner::remove_folders(&folder);
        }
        r.last_deactivated = Some(Instant::now());
        if r.notify.take().is_some() {
            let _ = fs::remove_file(notify_path(name));
        }
        r.deadline = None;
        r.main_pid = None;
        r.control = None;
        r.sessions.clear();
        if let Some(group) = &r.group {
            cgroups::remove(group);
        }
        if std::mem::take(&mut r.start_after_stop) {
            r.result = None;
            r.ready = false;
            r.stop_requested = false;
            r.set(State::Waiting, Phase::Idle);
            return;
        }
        let failed = decide::stop_ends_failed(r.result.as_ref(), r.stop_requested);
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
        if failed && decide::restart_after_failed_start(restart) {
            r.restart_at = Some(decide::restart_at(Instant::now(), restart_sec));
            r.set(State::Activating, Phase::AutoRestart);
            r.start_failing = r.unit.start_limit.interval.is_none();
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
                    o.result = Some(Outcome::Stopped(format!(
                        "stopped: {name}, which it is bound to (BindsTo=), ended"
                    )));
                }
            }
            self.request_stop(&bound);
        }
    }
}

//! What the end of a unit's process means: reaping, the next step after a control command,
//! a main process that ended (restart, start limits, OnFailure=).

use super::*;

impl Manager {
    pub(super) fn reap(&mut self) {
        self.reap_adopted();
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            if let Some((pid, code)) = ended_status(status) {
                self.process_ended(pid, code);
            }
        }
    }

    /// The processes the spawner made (`PrivateTmp=`) that ended: their status comes from
    /// their pidfd once their parent, the spawner, reaped them.
    fn reap_adopted(&mut self) {
        let ended: Vec<(i32, i32)> = self
            .adopted
            .iter()
            .filter_map(|(pid, pidfd)| {
                let status = feather_sys::process::exit_status(pidfd).ok()??;
                Some((*pid, status))
            })
            .collect();
        for (pid, status) in ended {
            self.adopted.remove(&pid);
            let status = WaitStatus::from_raw(Pid::from_raw(pid), status);
            if let Some((pid, code)) = status.ok().and_then(ended_status) {
                self.process_ended(pid, code);
            }
        }
    }

    /// Moves on the unit whose control or main process `pid` was.
    fn process_ended(&mut self, pid: Pid, code: Exit) {
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

    pub(super) fn control_exited(&mut self, name: &str, code: Exit) {
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
        let outcome = decide::control_outcome(
            r.phase,
            r.state,
            code,
            command.ignore_failure,
            r.unit
                .service
                .as_ref()
                .map_or(&[][..], |s| &s.success_exit_status),
        );
        if let decide::ControlOutcome::Next { ignored_failure } = outcome {
            if ignored_failure {
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
        if outcome == decide::ControlOutcome::ReloadFailed {
            // A failed reload leaves the service running as it was.
            let why = format!("ExecReload {} {}", command.path, code.describe());
            log_line(r, &format!("feather: reload failed: {why}"));
            r.reload_error = Some(why);
            r.pending.clear();
            r.phase = Phase::Running;
            return;
        }
        if outcome == decide::ControlOutcome::ConditionNotMet {
            r.result = Some(Outcome::Skipped(format!(
                "skipped: ExecCondition {} {}",
                command.path,
                code.describe()
            )));
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

    pub(super) fn main_exited(&mut self, name: &str, code: Exit) {
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
                let restart = decide::restart_after_exit(
                    service.restart,
                    code,
                    &service.success_exit_status,
                    r.stop_requested,
                );
                if !clean {
                    r.result = Some(Outcome::Failed(format!("main process {}", code.describe())));
                }
                log_line(r, &format!("feather: main process {}", code.describe()));
                if restart {
                    r.restart_at = Some(decide::restart_at(Instant::now(), service.restart_sec));
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
    pub(super) fn trigger_on_failure(&mut self, name: &str) {
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
    pub(super) fn restart(&mut self, name: &str) {
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        r.restart_at = None;
        let limit = r.unit.start_limit.clone();
        if let decide::StartLimitVerdict::Hit { starts, interval } =
            decide::start_limit(&mut r.starts, &limit, Instant::now())
        {
            let why = format!(
                "start limit hit: {starts} starts within {}s (StartLimitBurst={}, StartLimitIntervalSec={}); last: {}",
                interval.as_secs(), limit.burst, interval.as_secs(),
                r.result.as_ref().map_or("", Outcome::text)
            );
            fail(r, why);
            self.trigger_on_failure(name);
            return;
        }
        r.restarts += 1;
        r.set(State::Waiting, Phase::Idle);
        self.begin_start(name);
    }
}

/// A process's end as the manager counts it; `None` for a stop or a continue.
fn ended_status(status: WaitStatus) -> Option<(Pid, Exit)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, Exit::Code(code))),
        WaitStatus::Signaled(pid, signal, _) => Some((pid, Exit::Signal(signal as i32))),
        _ => None,
    }
}

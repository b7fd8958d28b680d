//! What clients ask of the manager: start (with the dependency closure), stop (in reverse
//! order, with what needs the unit), reload, list, status, shut down; and the answers, sent
//! once the units a request touched have settled.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::*;

/// Why the manager refuses a request; answered to the client, nothing is changed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the service manager is shutting down")]
    ShuttingDown,
    /// A unit (or its dependency closure) cannot be loaded.
    #[error(transparent)]
    Unit(#[from] crate::SvcError),
    /// A unit is not installed, and generators failed when the manager started: one of them
    /// may have been meant to make it.
    #[error("{error} (generators that failed when the VM's service manager started: {}; see {})", failed.join(", "), protocol::GENERATORS_LOG)]
    NotFoundAfterGenerators {
        error: crate::SvcError,
        failed: Vec<String>,
    },
    #[error("{unit} cannot start with fresh state: {problem}")]
    FreshState {
        unit: String,
        problem: crate::state::StateError,
    },
    #[error("{0} is running on the data it has; stop it first (`feather service stop VM {0}`) to start it with fresh state")]
    RunningOnItsData(String),
    #[error("{0} was not started in this VM (see `feather service ls`)")]
    NotStarted(String),
    #[error("{unit} is {state} ({phase}), not running: nothing to reload")]
    NotRunning {
        unit: String,
        state: &'static str,
        phase: &'static str,
    },
    #[error("{0} has no ExecReload=: restart it instead")]
    NoReload(String),
}

impl From<RequestError> for Refusal {
    fn from(error: RequestError) -> Refusal {
        match error {
            RequestError::NotStarted(unit) => Refusal::NotStarted { unit },
            other => Refusal::Refused {
                message: other.to_string(),
            },
        }
    }
}

impl Manager {
    /// Reads the request of every connection waiting on the control socket.
    pub(super) fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut stream = stream;
            match protocol::greet_client(&mut stream) {
                Ok(request) => self.handle(request, stream),
                Err(error) => {
                    let _ = protocol::send(&mut stream, &Response::Error { error });
                }
            }
        }
    }

    /// Answers a request at once, or keeps the connection in a job until its units settle.
    pub(super) fn handle(&mut self, request: Request, mut stream: UnixStream) {
        let answer = match request {
            Request::Start { units, fresh_state } => {
                match self.request_start(&units, fresh_state) {
                    Ok((units, skipped)) => {
                        self.jobs.push(Job {
                            client: stream,
                            units,
                            skipped,
                            then_exit: false,
                            reload: false,
                        });
                        return;
                    }
                    Err(error) => Response::Error {
                        error: error.into(),
                    },
                }
            }
            Request::Stop { units } => {
                let mut missing = units.iter().filter_map(|u| {
                    let name = UnitName::parse(u).ok()?;
                    (!self.units.contains_key(name.as_str()) && self.alias_of(&name).is_none())
                        .then(|| name.to_string())
                });
                if let Some(missing) = missing.next() {
                    Response::Error {
                        error: RequestError::NotStarted(missing).into(),
                    }
                } else {
                    let names: Vec<String> = units
                        .iter()
                        .filter_map(|u| UnitName::parse(u).ok())
                        .map(|n| self.alias_of(&n).unwrap_or_else(|| n.to_string()))
                        .collect();
                    let touched = self.request_stop(&names);
                    self.jobs.push(Job {
                        client: stream,
                        units: touched,
                        skipped: Vec::new(),
                        then_exit: false,
                        reload: false,
                    });
                    return;
                }
            }
            Request::Reload { units } => match self.request_reload(&units) {
                Ok(units) => {
                    self.jobs.push(Job {
                        client: stream,
                        units,
                        skipped: Vec::new(),
                        then_exit: false,
                        reload: true,
                    });
                    return;
                }
                Err(error) => Response::Error {
                    error: error.into(),
                },
            },
            Request::List => Response::List {
                units: self.units.values().map(Runtime::info).collect(),
            },
            Request::Status { unit, lines } => self.status(&unit, lines),
            // Only the first message of a connection is a hello (see protocol::greet_client).
            Request::Hello { .. } => Response::Error {
                error: Refusal::UnexpectedMessage {
                    expected: "a request".into(),
                    received: "hello".into(),
                },
            },
            Request::Shutdown => {
                self.begin_shutdown();
                let units = self.units.keys().cloned().collect();
                self.jobs.push(Job {
                    client: stream,
                    units,
                    skipped: Vec::new(),
                    then_exit: true,
                    reload: false,
                });
                return;
            }
        };
        let _ = protocol::send(&mut stream, &answer);
    }

    /// The name a started unit has if `name` is one of its aliases.
    pub(super) fn alias_of(&self, name: &UnitName) -> Option<String> {
        if self.units.contains_key(name.as_str()) {
            return Some(name.to_string());
        }
        match self.paths.find(name) {
            Ok(Some(crate::paths::Fragment::File { name: real, .. }))
                if self.units.contains_key(real.as_str()) =>
            {
                Some(real.to_string())
            }
            _ => None,
        }
    }

    /// One unit's state (a unit never started is read from its file) and its last log lines.
    pub(super) fn status(&self, unit: &str, lines: usize) -> Response {
        let name = match UnitName::parse(unit) {
            Ok(name) => name,
            Err(e) => {
                return Response::Error {
                    error: RequestError::from(e).into(),
                }
            }
        };
        let info = match self.alias_of(&name).and_then(|n| self.units.get(&n)) {
            Some(runtime) => runtime.info(),
            None => match self.paths.load(&name) {
                Ok(unit) => Runtime::new(unit).info(),
                Err(e) => {
                    return Response::Error {
                        error: RequestError::from(e).into(),
                    }
                }
            },
        };
        let log = tail(&spawn::log_path(&info.name), lines);
        Response::Status {
            unit: Box::new(info),
            log,
        }
    }

    /// Loads the closure of `names`, queues every unit of it that is not already up, and
    /// returns the units the job waits for.
    pub(super) fn request_start(
        &mut self,
        names: &[String],
        fresh_state: FreshState,
    ) -> Result<(Vec<String>, Vec<ServiceInfo>), RequestError> {
        if self.shutting_down {
            return Err(RequestError::ShuttingDown);
        }
        let roots = names
            .iter()
            .map(|n| UnitName::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        let graph = DependencyGraph::closure(&self.paths, &roots).map_err(|error| match error {
            crate::SvcError::NotFound { .. } if !self.failed_generators.is_empty() => {
                RequestError::NotFoundAfterGenerators {
                    error,
                    failed: self.failed_generators.clone(),
                }
            }
            error => RequestError::Unit(error),
        })?;
        graph.start_waves()?;
        let mut after_sets = decide::after_sets(&graph.ordering());
        let mut fresh = self.fresh_plans(&graph, fresh_state)?;
        let mut job_units = Vec::new();
        for (name, unit) in &graph.units {
            job_units.push(name.clone());
            if let Some(existing) = self.units.get_mut(name) {
                if existing.state == State::Deactivating || existing.stop_pending {
                    // Still stopping: its processes are tracked here until they are gone; the
                    // start follows the stop.
                    existing.start_after_stop = true;
                    existing.fresh = fresh.remove(name);
                    continue;
                }
                if matches!(
                    existing.state,
                    State::Active | State::Activating | State::Waiting
                ) {
                    continue;
                }
            }
            let mut runtime = Runtime::new(unit.clone());
            runtime.fresh = fresh.remove(name);
            if let Some(old) = self.units.get(name) {
                runtime.restarts = old.restarts;
            }
            runtime.pulled_by = graph
                .pulled_by
                .get(name)
                .map(|(by, how)| format!("{by} ({how})"));
            runtime.after = after_sets.remove(name).unwrap_or_default();
            let d = &unit.dependencies;
            runtime.requires = d
                .requires
                .iter()
                .chain(&d.binds_to)
                .chain(&d.requisite)
                .filter(|n| graph.units.contains_key(*n))
                .cloned()
                .collect();
            runtime.set(State::Waiting, Phase::Idle);
            if let Err(why) = catalog::validate(unit) {
                fail(&mut runtime, why);
            } else if let Some(missing) = catalog::missing_program(Path::new("/"), unit) {
                fail(
                    &mut runtime,
                    format!(
                        "its program {} is not installed in the VM",
                        missing.display()
                    ),
                );
            }
            self.units.insert(name.clone(), runtime);
        }
        // Conflicts=, either way round: the other unit stops, and the new one starts after it.
        let mut conflicting = Vec::new();
        for (name, unit) in &graph.units {
            for (other, o) in &self.units {
                let conflict = unit.dependencies.conflicts.contains(other)
                    || o.unit.dependencies.conflicts.contains(name);
                let up = matches!(o.state, State::Active | State::Activating | State::Waiting);
                if conflict && up && !graph.units.contains_key(other) {
                    conflicting.push((name.clone(), other.clone()));
                }
            }
        }
        for (name, other) in &conflicting {
            if let Some(r) = self.units.get_mut(name) {
                r.after.insert(other.clone());
            }
        }
        let others: Vec<String> = conflicting.into_iter().map(|(_, other)| other).collect();
        if !others.is_empty() {
            job_units.extend(self.request_stop(&others));
        }
        let skipped = graph
            .skipped
            .iter()
            .map(|(name, why)| ServiceInfo {
                name: name.clone(),
                state: protocol::UnitState::Skipped,
                sub: "skipped".into(),
                result: Some(why.clone()),
                ..ServiceInfo::default()
            })
            .collect();
        Ok((job_units, skipped))
    }

    /// The units of `graph` that start with empty state, and what that means for each; refused
    /// for a unit that runs (its data is in use).
    fn fresh_plans(
        &self,
        graph: &DependencyGraph,
        fresh_state: FreshState,
    ) -> Result<BTreeMap<String, crate::state::Plan>, RequestError> {
        let mut plans = BTreeMap::new();
        if fresh_state == FreshState::No {
            return Ok(plans);
        }
        for (name, unit) in &graph.units {
            if fresh_state == FreshState::Once && crate::state::done(name) {
                continue;
            }
            let plan = crate::state::plan(Path::new("/"), unit).map_err(|problem| {
                RequestError::FreshState {
                    unit: name.clone(),
                    problem,
                }
            })?;
            if plan.is_empty() {
                continue;
            }
            let up = self.units.get(name).is_some_and(|r| {
                matches!(r.state, State::Active | State::Activating | State::Waiting)
                    && !r.stop_pending
            });
            if up {
                return Err(RequestError::RunningOnItsData(name.clone()));
            }
            plans.insert(name.clone(), plan);
        }
        Ok(plans)
    }

    /// Starts the ExecReload= commands of running units; all must be running and have some.
    pub(super) fn request_reload(&mut self, names: &[String]) -> Result<Vec<String>, RequestError> {
        let mut real = Vec::new();
        for name in names {
            let parsed = UnitName::parse(name)?;
            let Some(name) = self.alias_of(&parsed) else {
                return Err(RequestError::NotStarted(parsed.to_string()));
            };
            let r = &self.units[&name];
            if r.state != State::Active || r.phase != Phase::Running {
                return Err(RequestError::NotRunning {
                    unit: name,
                    state: r.state.name(),
                    phase: r.phase.name(),
                });
            }
            if r.unit
                .service
                .as_ref()
                .is_none_or(|s| s.exec_reload.is_empty())
            {
                return Err(RequestError::NoReload(name));
            }
            real.push(name);
        }
        for name in &real {
            if let Some(r) = self.units.get_mut(name) {
                r.reload_error = None;
                r.phase = Phase::Reload;
                r.pending = r
                    .unit
                    .service
                    .as_ref()
                    .map(|s| s.exec_reload.iter().cloned().collect())
                    .unwrap_or_default();
            }
            self.advance(name);
        }
        Ok(real)
    }

    /// Marks `names`, and the active units that require or are bound to them, to stop; the
    /// ones ordered after others stop first. Returns the units touched.
    pub(super) fn request_stop(&mut self, names: &[String]) -> Vec<String> {
        let stops_with: BTreeMap<String, BTreeSet<String>> = self
            .units
            .iter()
            .map(|(n, r)| {
                let on = r.requires.iter().chain(&r.unit.dependencies.part_of);
                (n.clone(), on.cloned().collect())
            })
            .collect();
        let stopping = decide::stop_closure(names, &stops_with);
        for name in &stopping {
            if let Some(r) = self.units.get_mut(name) {
                r.stop_requested = true;
                r.restart_at = None;
                match r.state {
                    State::Waiting => {
                        r.result =
                            Some(Outcome::Stopped("stop requested before it started".into()));
                        r.set(State::Inactive, Phase::Idle);
                    }
                    State::Inactive | State::Failed => {}
                    _ => r.stop_pending = true,
                }
            }
        }
        stopping.into_iter().collect()
    }

    /// Answers the jobs whose units have all settled.
    pub(super) fn finish_jobs(&mut self) {
        let mut remaining = Vec::new();
        for mut job in std::mem::take(&mut self.jobs) {
            let settled = job.units.iter().all(|n| {
                self.units.get(n).is_none_or(|r| {
                    let settled = r.state.settled()
                        && !r.stop_pending
                        && r.restart_at.is_none()
                        && r.phase != Phase::Reload;
                    settled || r.start_failing
                })
            });
            if !settled {
                remaining.push(job);
                continue;
            }
            let mut units: Vec<ServiceInfo> = job
                .units
                .iter()
                .filter_map(|n| self.units.get(n))
                .map(Runtime::info)
                .collect();
            let reload_failed = if job.reload {
                job.units
                    .iter()
                    .filter(|n| self.units.get(*n).is_some_and(|r| r.reload_error.is_some()))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            units.append(&mut job.skipped);
            let done = Response::Done {
                units,
                reload_failed,
            };
            let _ = protocol::send(&mut job.client, &done);
            if job.then_exit {
                self.shutting_down = true;
            }
        }
        self.jobs = remaining;
    }
}

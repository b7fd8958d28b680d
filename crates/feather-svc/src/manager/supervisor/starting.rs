//! A unit's way up: its dependencies first, then condition → start-pre → start → ready →
//! start-post, each command spawned as the unit says.

use super::readiness::{notify_path, open_notify_socket};
use super::timers::start_timer;
use super::*;

impl Manager {
    pub(super) fn begin_start(&mut self, name: &str) {
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
                r.result = Some(Outcome::Skipped(format!("skipped: {why}")));
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
                    .and_then(|n| self.paths.load(&n))
                    .map_err(StartError::TimerTarget);
                match loaded.and_then(|_| start_timer(r, target.clone())) {
                    Ok(timer) => r.timer = Some(timer),
                    Err(why) => {
                        fail(r, why);
                        return;
                    }
                }
            }
            if r.unit.socket.is_some() {
                match sockets::bind(&r.unit).and_then(|bound| -> Result<_, sockets::SocketError> {
                    if r.is_accepting() {
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
                    fail(r, StartError::FreshState(e));
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
        if r.unit.exec.filesystem.private_tmp && !self.spawner.is_present() {
            private_tmp_not_applied(r);
        } else if r.unit.exec.filesystem.private_tmp && r.private_tmp.is_none() {
            match spawner::make_folders(r.unit.name.as_str()) {
                Ok(folder) => r.private_tmp = Some(folder),
                Err(why) => {
                    fail(r, why);
                    return;
                }
            }
        }
        r.group = None;
        if let Some(hierarchies) = &self.hierarchies {
            match cgroups::prepare(hierarchies, &r.unit) {
                Ok(group) => r.group = Some(group),
                // A limit the unit asks for and cannot have fails it; without limits, its
                // processes are followed by session.
                Err(why) if service.resources.any() => {
                    fail(r, StartError::from(why));
                    return;
                }
                Err(why) => log_line(r, &format!("feather: {why}; followed by session")),
            }
        }
        r.syscall_filter = None;
        r.landlocked = false;
        r.unconfined_since_restore = false;
        if !r.unit.exec.system_call_filter.is_empty() {
            let groups = self
                .syscall_groups
                .get_or_insert_with(|| syscall_filter::load_groups().map_err(std::sync::Arc::new));
            let compiled = match groups {
                Ok(groups) => syscall_filter::resolve(&r.unit.exec.system_call_filter, groups)
                    .and_then(|resolved| {
                        resolved
                            .map(|resolved| {
                                syscall_filter::compile(
                                    &resolved,
                                    r.unit.exec.system_call_error_number,
                                )
                            })
                            .transpose()
                    }),
                Err(e) => Err(syscall_filter::FilterError::Earlier(e.clone())),
            };
            match compiled {
                Ok(filter) => r.syscall_filter = filter,
                // Shown, not hidden: the unit runs, and `status` lists the setting as not
                // applied.
                Err(why) => {
                    log_line(r, &format!("feather: {why}; SystemCallFilter= not applied"));
                    let entry = "Service.SystemCallFilter".to_owned();
                    if !r.unit.not_applied.contains(&entry) {
                        r.unit.not_applied.push(entry);
                    }
                }
            }
        }
        r.protection_filter = None;
        let mut refused: Vec<&str> = Vec::new();
        for (key, entries) in protections::refused(&r.unit.exec.protections) {
            if !protections::needs_groups(entries) {
                refused.extend(entries);
                continue;
            }
            let groups = self
                .syscall_groups
                .get_or_insert_with(|| syscall_filter::load_groups().map_err(std::sync::Arc::new));
            match groups {
                Ok(_) => refused.extend(entries),
                // Shown, not hidden: the unit runs, and `status` lists the setting as not
                // applied.
                Err(e) => {
                    log_line(r, &format!("feather: {e}; {key}= not applied"));
                    let entry = format!("Service.{key}");
                    if !r.unit.not_applied.contains(&entry) {
                        r.unit.not_applied.push(entry);
                    }
                }
            }
        }
        let no_groups = syscall_filter::Groups::new();
        let groups = match &self.syscall_groups {
            Some(Ok(groups)) => groups,
            _ => &no_groups,
        };
        match protections::filter(&refused, groups) {
            Ok(filter) => r.protection_filter = filter,
            // A group this systemd lacks: the unit runs, the settings are listed.
            Err(why) => {
                for (key, _) in protections::refused(&r.unit.exec.protections) {
                    log_line(r, &format!("feather: {why}; {key}= not applied"));
                    let entry = format!("Service.{key}");
                    if !r.unit.not_applied.contains(&entry) {
                        r.unit.not_applied.push(entry);
                    }
                }
            }
        }
        let no_new_privileges = spawn::gets_no_new_privileges(&r.unit, r.syscall_filter.is_some());
        if let Some(why) = filesystem::not_applicable(&r.unit, no_new_privileges) {
            let keys = r.unit.exec.filesystem.confining_keys();
            let names: Vec<String> = keys.iter().map(|k| format!("{k}=")).collect();
            log_line(
                r,
                &format!("feather: {} not applied: {why}", names.join(", ")),
            );
            for key in keys {
                let entry = format!("Service.{key}");
                if !r.unit.not_applied.contains(&entry) {
                    r.unit.not_applied.push(entry);
                }
            }
        }
        if self.hierarchies.is_none() && service.resources.any() {
            log_line(
                r,
                "feather: MemoryMax=/TasksMax=/CPUQuota=/CPUWeight= not applied: this VM has no cgroup (a throw-away VM without limits)",
            );
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
    pub(super) fn advance(&mut self, name: &str) {
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
            let readiness = decide::readiness(service.kind);
            if let Some(command) = r.pending.pop_front() {
                let main = r.phase == Phase::Start && readiness.start_is_main();
                match self.spawn(name, &command, main) {
                    Ok(()) => {
                        let r = self.units.get_mut(name).unwrap_or_else(|| unreachable!());
                        if main {
                            r.phase = decide::phase_after_main_spawned(readiness);
                            if r.phase == Phase::StartPost {
                                r.ready = true;
                                r.pending = service.exec_start_post.iter().cloned().collect();
                            }
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
                            log_line(r, &why.to_string());
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
                    if readiness == decide::Readiness::Notify {
                        if let Err(why) = open_notify_socket(r) {
                            self.fail_and_clean(name, why);
                            return;
                        }
                    }
                    r.pending = service
                        .exec_start
                        .iter()
                        .take(readiness.start_commands(service.exec_start.len()))
                        .cloned()
                        .collect();
                    if r.pending.is_empty() {
                        r.phase = Phase::StartPost;
                        r.pending = service.exec_start_post.iter().cloned().collect();
                    }
                }
                Phase::Start => {
                    // The start commands are done: the oneshot ran, or the forking parent exited.
                    if decide::phase_after_start_commands(readiness) == Phase::WaitPidFile {
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
                    // A forking daemon without a main process known lives in its group.
                    let keeps_running = r.main_pid.is_some()
                        || service.remain_after_exit
                        || (service.kind == ServiceType::Forking && r.group_populated());
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

    pub(super) fn spawn(
        &mut self,
        name: &str,
        command: &ExecCommand,
        main: bool,
    ) -> Result<(), SpawnError> {
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
        let not_prepared = |what| SpawnError::NotPrepared {
            unit: name.to_owned(),
            what,
        };
        let r = self
            .units
            .get_mut(name)
            .ok_or(not_prepared("its runtime"))?;
        // An instance of an Accept=yes socket: its connection is its one socket.
        let mut listen = listen;
        let connection = if main { r.connection.as_ref() } else { None };
        if let Some(connection) = connection {
            listen = vec![(connection.as_raw_fd(), "connection".to_owned())];
        }
        let identity = r.identity.clone().ok_or(not_prepared("its identity"))?;
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
        let log = r.log.as_ref().ok_or(not_prepared("its log"))?;
        // Open until the process is spawned: it enters the unit's group through them.
        let cgroup_procs = r
            .group
            .as_ref()
            .map(cgroups::open_procs)
            .unwrap_or_default();
        // `+` runs a command with full privileges: no namespace either, as in systemd.
        let private_tmp = r.private_tmp.clone().filter(|_| !command.full_privileges);
        let prepared = spawn::command(
            &r.unit,
            command,
            &identity,
            &env,
            log,
            spawn::Handed {
                listen: &listen,
                connection: connection.map(|c| c.as_fd()),
                cgroup_procs: &cgroup_procs,
                syscall_filter: r.syscall_filter.as_deref(),
                protection_filter: r.protection_filter.as_deref(),
                private_tmp: private_tmp.as_deref(),
            },
        )?;
        r.landlocked |= prepared.setup.landlock.is_some();
        let phase = r.phase.name();
        log_line(r, &format!("feather: {phase}: {}", command.argv.join(" ")));
        let pid = match private_tmp {
            Some(folder) => {
                let adopted = self.spawner.spawn(&folder, &prepared).map_err(|why| {
                    SpawnError::PrivateTmp {
                        setting: phase_setting(r.phase),
                        path: command.path.clone(),
                        why: why.to_string(),
                    }
                })?;
                self.adopted.insert(adopted.pid.as_raw(), adopted.pidfd);
                adopted.pid
            }
            None => {
                let child = prepared
                    .into_command()
                    .spawn()
                    .map_err(|error| SpawnError::Start {
                        setting: phase_setting(r.phase),
                        path: command.path.clone(),
                        error,
                    })?;
                // The child is reaped by the manager's own waitpid loop, not through `child`.
                Pid::from_raw(child.id() as i32)
            }
        };
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
}

/// A manager given no spawner at all runs where none is made: in a container of feather-oci
/// (whose init has none), or in a VM whose init could not start it (init's log says why). There
/// a `PrivateTmp=` unit shares `/tmp` and `/var/tmp`, as it did before VMs had spawners, and
/// says so in its log and `not_applied`, rather than fail. A spawner that was given and has
/// ended since fails the unit instead (`SpawnerError::Gone`): its VM had one and lost it.
fn private_tmp_not_applied(r: &mut Runtime) {
    const ENTRY: &str = "Service.PrivateTmp";
    if r.unit.not_applied.iter().any(|e| e == ENTRY) {
        return;
    }
    r.unit.not_applied.push(ENTRY.to_owned());
    log_line(
        r,
        "feather: PrivateTmp= not applied: this manager has no spawner (a container of \
         feather-oci has none; in a VM, init's log says why it could not start one), so the \
         unit shares /tmp and /var/tmp",
    );
}

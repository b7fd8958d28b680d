//! Readiness a service reports itself: its PID file (`Type=forking`) and `sd_notify` messages
//! (`Type=notify`: READY=1, STATUS=, MAINPID=).

use super::*;

impl Manager {
    pub(super) fn check_pid_file(&mut self, name: &str) {
        let known = self.known_pids();
        let Some(r) = self.units.get_mut(name) else {
            return;
        };
        let service = r.unit.service.clone().unwrap_or_default();
        let group = r.group.as_ref().map(cgroups::members_with_parents);
        let main = match (&service.pid_file, &group) {
            (Some(path), _) => read_pid_file(path),
            // Its group says which process is the daemon, not a guess (so also with
            // GuessMainPID=no, where systemd would show none).
            // (RemainAfterExit=yes, as SysV scripts have, keeps them `exited` without one.)
            (None, Some(members)) if !service.remain_after_exit => {
                decide::top_of_group(members).map(Pid::from_raw)
            }
            (None, Some(_)) => None,
            (None, None) if service.guess_main_pid => guess_main_pid(&known),
            (None, None) => None,
        };
        // A group with processes but no single top process: the unit runs without a main
        // process, as long as its group holds one.
        let populated = group.as_ref().is_some_and(|m| !m.is_empty());
        let outcome = decide::pid_file_outcome(
            main.is_some(),
            r.main_pid.is_some() || populated,
            service.pid_file.is_some(),
            service.guess_main_pid,
            service.remain_after_exit,
        );
        if let Some(pid) = main {
            r.main_pid = Some(pid);
            if let Some(session) = session_of(pid) {
                r.sessions.insert(session);
            }
        }
        match outcome {
            decide::PidFileOutcome::Ready => {}
            decide::PidFileOutcome::Wait => return,
            decide::PidFileOutcome::NoMainProcess => {
                self.fail_and_clean(name, StartError::NoMainProcess);
                return;
            }
        }
        r.ready = true;
        r.phase = Phase::StartPost;
        r.pending = service.exec_start_post.iter().cloned().collect();
        self.advance(name);
    }

    pub(super) fn read_notify(&mut self, name: &str, socket: &UnixDatagram) {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let Some(r) = self.units.get_mut(name) else {
                return;
            };
            let said = decide::notification(&text);
            if let Some(status) = said.status {
                r.status_text = Some(status);
            }
            if let Some(pid) = said.main_pid.map(Pid::from_raw) {
                r.main_pid = Some(pid);
                if let Some(session) = session_of(pid) {
                    r.sessions.insert(session);
                }
            }
            // READY=1 counts only while the unit waits for it (not again after a restart).
            if said.ready && r.phase == Phase::WaitReady {
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

pub(super) fn notify_path(unit: &str) -> PathBuf {
    Path::new(NOTIFY_DIR).join(unit)
}

/// The datagram socket a notify service reports READY=1 on, writable by the service's user.
pub(super) fn open_notify_socket(r: &mut Runtime) -> Result<(), StartError> {
    let path = notify_path(r.unit.name.as_str());
    let _ = fs::remove_file(&path);
    let failed = |error| StartError::NotifySocket {
        path: path.clone(),
        error,
    };
    let socket = UnixDatagram::bind(&path).map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
    let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o666));
    r.notify = Some(socket);
    Ok(())
}

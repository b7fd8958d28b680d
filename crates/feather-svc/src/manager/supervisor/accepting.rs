//! `Accept=yes` sockets: the manager accepts each connection and starts an instance of the
//! socket's template service for it; finished instances are forgotten.

use super::*;

impl Manager {
    /// Accepts the connections waiting on one listening socket of the `Accept=yes` socket
    /// `name`, and starts an instance of its template service for each (`echo@.service` as
    /// `echo@3-127.0.0.1:7777-127.0.0.1:41234.service`, as systemd names them).
    pub(super) fn accept_connections(&mut self, name: &str, listener: &OwnedFd) {
        loop {
            let connection = match sockets::accept(listener) {
                Ok(Some(connection)) => connection,
                Ok(None) => return,
                Err(e) => {
                    if let Some(r) = self.units.get_mut(name) {
                        log_line(r, &format!("feather: accept: {e}"));
                    }
                    return;
                }
            };
            let Some(socket) = self.units.get(name) else {
                return;
            };
            let max = socket
                .unit
                .socket
                .as_ref()
                .map_or(64, |s| s.max_connections);
            let running = self
                .units
                .values()
                .filter(|o| o.instance_of.as_deref() == Some(name))
                .filter(|o| !matches!(o.state, State::Inactive | State::Failed))
                .count();
            let number = socket.accepted;
            let template = format!("{}@.service", socket.unit.name.stem());
            let r = self.units.get_mut(name).unwrap_or_else(|| unreachable!());
            r.accepted += 1;
            r.status_text = Some(format!("{} connections accepted", r.accepted));
            if running >= max as usize {
                log_line(
                    r,
                    &format!("feather: connection refused: {running} instances run (MaxConnections={max})"),
                );
                continue;
            }
            let instance = sockets::instance_name(number, &connection);
            let loaded = UnitName::parse(&template)
                .map(|t| t.with_instance(&instance))
                .map_err(|e| e.to_string())
                .and_then(|n| self.paths.load(&n).map_err(|e| e.to_string()));
            let unit = match loaded {
                Ok(unit) => unit,
                Err(e) => {
                    let r = self.units.get_mut(name).unwrap_or_else(|| unreachable!());
                    log_line(
                        r,
                        &format!("feather: connection closed: its service cannot be loaded: {e}"),
                    );
                    continue;
                }
            };
            let instance_name = unit.name.to_string();
            let mut runtime = Runtime::new(unit);
            runtime.pulled_by = Some(format!("{name} (accepted a connection)"));
            runtime.instance_of = Some(name.to_owned());
            runtime.connection = Some(connection);
            runtime.set(State::Waiting, Phase::Idle);
            if let Err(why) = catalog::validate(&runtime.unit) {
                fail(&mut runtime, why);
            }
            self.units.insert(instance_name, runtime);
        }
    }

    /// Instances of Accept=yes sockets are forgotten once they ended cleanly (as systemd
    /// collects them); failed ones stay listed until the socket is started again.
    pub(super) fn collect_instances(&mut self) {
        let in_jobs: BTreeSet<&String> = self.jobs.iter().flat_map(|j| &j.units).collect();
        let done: Vec<String> = self
            .units
            .iter()
            .filter(|(n, r)| {
                r.instance_of.is_some()
                    && r.state == State::Inactive
                    && r.restart_at.is_none()
                    && !r.stop_pending
                    && !r.start_after_stop
                    && !in_jobs.contains(n)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in done {
            self.units.remove(&name);
        }
    }
}

//! `Type=dbus` readiness: the manager's connection to the VM's own system bus, the bus names
//! units wait for, and what the bus says about their owners.

use super::*;

impl Manager {
    /// Asks the bus about `bus_name` (connecting first if need be; a failed connection is
    /// retried from `tick` while units wait).
    pub(super) fn watch_bus_name(&mut self, bus_name: &str) {
        if self.bus.is_none() {
            self.connect_bus();
            return;
        }
        let result = self.bus.as_mut().map(|b| b.watch(bus_name));
        if let Some(Err(problem)) = result {
            self.lose_bus(problem);
        }
    }

    /// Connects to the VM's system bus, at most every [`BUS_RETRY`], and asks about every bus
    /// name a unit waits for.
    pub(super) fn connect_bus(&mut self) {
        if self.bus_attempt.is_some_and(|t| t.elapsed() < BUS_RETRY) {
            return;
        }
        self.bus_attempt = Some(Instant::now());
        let mut connection = match Bus::connect(bus::SYSTEM_BUS) {
            Ok(connection) => connection,
            Err(problem) => {
                self.bus_problem = Some(problem);
                return;
            }
        };
        for name in self.waited_bus_names() {
            if let Err(problem) = connection.watch(&name) {
                self.bus_problem = Some(problem);
                return;
            }
        }
        self.bus = Some(connection);
    }

    pub(super) fn lose_bus(&mut self, problem: bus::BusError) {
        self.bus = None;
        self.bus_problem = Some(problem);
    }

    /// The BusName= of every unit waiting for its name.
    pub(super) fn waited_bus_names(&self) -> BTreeSet<String> {
        self.units
            .values()
            .filter(|r| r.phase == Phase::WaitBusName)
            .filter_map(|r| r.unit.service.as_ref()?.bus_name.clone())
            .collect()
    }

    /// What the bus said: a unit whose bus name got an owner is ready.
    pub(super) fn read_bus(&mut self) {
        let Some(connection) = self.bus.as_mut() else {
            return;
        };
        let events = match connection.process() {
            Ok(events) => events,
            Err(problem) => {
                self.lose_bus(problem);
                return;
            }
        };
        self.bus_problem = None;
        for bus::Event::Owner {
            name: bus_name,
            owned,
        } in events
        {
            let names: Vec<String> = self
                .units
                .iter()
                .filter(|(_, r)| {
                    r.unit.service.as_ref().and_then(|s| s.bus_name.as_deref())
                        == Some(bus_name.as_str())
                })
                .map(|(n, _)| n.clone())
                .collect();
            for name in names {
                let Some(r) = self.units.get_mut(&name) else {
                    continue;
                };
                if owned && r.phase == Phase::WaitBusName {
                    log_line(r, &format!("feather: bus name {bus_name} acquired: ready"));
                    r.status_text = Some(format!("owns bus name {bus_name}"));
                    r.ready = true;
                    r.phase = Phase::StartPost;
                    r.pending = r
                        .unit
                        .service
                        .as_ref()
                        .map(|s| s.exec_start_post.iter().cloned().collect())
                        .unwrap_or_default();
                    self.advance(&name);
                } else if !owned && r.state == State::Active && r.ready {
                    log_line(r, &format!("feather: bus name {bus_name} lost its owner"));
                    r.status_text = Some(format!("bus name {bus_name} has no owner"));
                } else if owned && r.state == State::Active {
                    r.status_text = Some(format!("owns bus name {bus_name}"));
                }
            }
        }
        // Nothing waits any more: let the connection go (the bus may be stopped later).
        if self.waited_bus_names().is_empty() && !self.units.values().any(is_dbus_and_active) {
            self.bus = None;
        }
    }
}

pub(super) fn is_dbus_and_active(r: &Runtime) -> bool {
    r.state == State::Active
        && r.unit
            .service
            .as_ref()
            .is_some_and(|s| s.kind == ServiceType::Dbus)
}

//! The dependency graph of the units a start needs: the closure of `Requires=`, `BindsTo=`,
//! `Wants=` and `Upholds=` (with the `.wants/` and `.requires/` links), the order
//! `After=`/`Before=` put them in, independent units grouped into waves that start in
//! parallel, the reverse for stopping, and cycles reported by the units in them.
//! Host-infrastructure units ([`crate::infra`]) are satisfied, not started.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;

use crate::error::{Result, SvcError};
use crate::infra;
use crate::name::UnitName;
use crate::paths::UnitPaths;
use crate::unit::Unit;

#[derive(Debug, Serialize)]
pub struct DependencyGraph {
    /// The units to start, by name.
    pub units: BTreeMap<String, Unit>,
    /// Which unit pulled each one in, and how (`requires`, `wants`, …); roots have none.
    pub pulled_by: BTreeMap<String, (String, &'static str)>,
    /// Infrastructure units depended on, with what stands in for them.
    pub satisfied: BTreeMap<String, &'static str>,
    /// Wanted units left out, and why (not installed, masked, unreadable).
    pub skipped: BTreeMap<String, String>,
}

/// The kinds of dependency that pull a unit in, and whether its absence is an error.
/// `Requisite=` pulls nothing: the unit must already be active (the manager checks).
fn pulls(unit: &Unit) -> Vec<(&'static str, String, bool)> {
    let d = &unit.dependencies;
    let mut pulls = Vec::new();
    let dbus = unit
        .service
        .as_ref()
        .is_some_and(|s| s.kind == crate::unit::ServiceType::Dbus);
    for (kind, names, required) in [
        ("requires", &d.requires, true),
        ("binds to", &d.binds_to, true),
        ("wants", &d.wants, false),
        ("upholds", &d.upholds, false),
    ] {
        pulls.extend(names.iter().map(|n| {
            // The implicit dependency of Type=dbus (see Unit::finish), said as such.
            let kind = if dbus && kind == "requires" && n == crate::unit::DBUS_SOCKET {
                "is Type=dbus and so requires the VM's own D-Bus system bus,"
            } else {
                kind
            };
            (kind, n.clone(), required)
        }));
    }
    // A socket starts the service it activates (feather starts both; see docs/services.md).
    if let Some(service) = socket_service(unit) {
        pulls.push(("triggers", service, true));
    }
    pulls
}

/// The service a socket unit activates: `Service=`, or the one of the same name. With
/// `Accept=yes` a new instance runs per connection, which feather does not do yet.
pub fn socket_service(unit: &Unit) -> Option<String> {
    let socket = unit.socket.as_ref()?;
    if socket.accept {
        return None;
    }
    Some(
        socket
            .service
            .clone()
            .unwrap_or_else(|| format!("{}.service", unit.name.stem())),
    )
}

impl DependencyGraph {
    /// Loads `roots` and everything they pull in. A root that cannot be loaded, or a required
    /// unit that is missing, is an error; a wanted one is skipped and recorded.
    pub fn closure(paths: &UnitPaths, roots: &[UnitName]) -> Result<DependencyGraph> {
        let mut graph = DependencyGraph {
            units: BTreeMap::new(),
            pulled_by: BTreeMap::new(),
            satisfied: BTreeMap::new(),
            skipped: BTreeMap::new(),
        };
        let mut queue: VecDeque<String> = VecDeque::new();
        for root in roots {
            if let Some(stand_in) = infra::stand_in(root) {
                return Err(SvcError::HostInfrastructure {
                    name: root.to_string(),
                    stand_in: stand_in.to_string(),
                });
            }
            let unit = paths.load(root)?;
            let name = unit.name.to_string();
            if let std::collections::btree_map::Entry::Vacant(entry) = graph.units.entry(name) {
                queue.push_back(entry.key().clone());
                entry.insert(unit);
            }
        }
        while let Some(current) = queue.pop_front() {
            for (kind, dependency, required) in pulls(&graph.units[&current]) {
                let name = UnitName::parse(&dependency)?;
                if let Some(stand_in) = infra::stand_in(&name) {
                    graph.satisfied.insert(name.to_string(), stand_in);
                    continue;
                }
                if graph.units.contains_key(name.as_str())
                    || graph.skipped.contains_key(name.as_str())
                {
                    continue;
                }
                match paths.load(&name) {
                    Ok(unit) => {
                        let real = unit.name.to_string();
                        if graph.units.contains_key(&real) {
                            continue;
                        }
                        graph
                            .pulled_by
                            .insert(real.clone(), (current.clone(), kind));
                        graph.units.insert(real.clone(), unit);
                        queue.push_back(real);
                    }
                    Err(e) if required => {
                        return Err(SvcError::MissingDependency {
                            unit: current,
                            kind,
                            missing: name.to_string(),
                            why: Box::new(e),
                        })
                    }
                    Err(e) => {
                        graph.skipped.insert(name.to_string(), e.to_string());
                    }
                }
            }
        }
        Ok(graph)
    }

    /// `(before, after)` pairs among the units of the graph: the first starts before the
    /// second and stops after it.
    pub fn ordering(&self) -> BTreeSet<(String, String)> {
        let mut edges = BTreeSet::new();
        for (name, unit) in &self.units {
            let d = &unit.dependencies;
            for other in &d.after {
                if self.units.contains_key(other) && other != name {
                    edges.insert((other.clone(), name.clone()));
                }
            }
            for other in &d.before {
                if self.units.contains_key(other) && other != name {
                    edges.insert((name.clone(), other.clone()));
                }
            }
            // A target waits for what it wants or requires, as systemd orders targets by
            // default.
            if unit.name.kind() == "target" && unit.default_dependencies {
                for other in d.wants.iter().chain(&d.requires) {
                    if self.units.contains_key(other) && other != name {
                        edges.insert((other.clone(), name.clone()));
                    }
                }
            }
            // A socket is listening before its service starts.
            if let Some(service) = socket_service(unit) {
                if self.units.contains_key(&service) {
                    edges.insert((name.clone(), service));
                }
            }
        }
        edges
    }

    /// The start order: each wave's units depend on no unit of its own or a later wave, so a
    /// wave's units may start together once the previous wave is up.
    pub fn start_waves(&self) -> Result<Vec<Vec<String>>> {
        let edges = self.ordering();
        let mut waiting_on: BTreeMap<&str, usize> =
            self.units.keys().map(|n| (n.as_str(), 0)).collect();
        for (_, after) in &edges {
            *waiting_on.entry(after.as_str()).or_default() += 1;
        }
        let mut waves = Vec::new();
        while !waiting_on.is_empty() {
            let wave: Vec<String> = waiting_on
                .iter()
                .filter(|(_, &count)| count == 0)
                .map(|(name, _)| name.to_string())
                .collect();
            if wave.is_empty() {
                let left: BTreeSet<&str> = waiting_on.keys().copied().collect();
                return Err(SvcError::Cycle(find_cycle(&edges, &left)));
            }
            for name in &wave {
                waiting_on.remove(name.as_str());
                for (before, after) in &edges {
                    if before == name {
                        if let Some(count) = waiting_on.get_mut(after.as_str()) {
                            *count -= 1;
                        }
                    }
                }
            }
            waves.push(wave);
        }
        Ok(waves)
    }

    /// The stop order: the start order reversed.
    pub fn stop_waves(&self) -> Result<Vec<Vec<String>>> {
        let mut waves = self.start_waves()?;
        waves.reverse();
        Ok(waves)
    }
}

/// A cycle among `left` (which has no unit free of ordering constraints), as its units in
/// order with the first repeated at the end.
fn find_cycle(edges: &BTreeSet<(String, String)>, left: &BTreeSet<&str>) -> Vec<String> {
    let Some(start) = left.iter().next() else {
        return Vec::new();
    };
    // Walk backwards along "must start after" edges: every unit left has a predecessor left,
    // so the walk must revisit a unit, and the part from its first visit is a cycle.
    let mut path: Vec<&str> = vec![start];
    loop {
        let current = *path.last().unwrap_or(start);
        let Some((before, _)) = edges
            .iter()
            .find(|(b, a)| a == current && left.contains(b.as_str()))
        else {
            return path.iter().map(|s| s.to_string()).collect();
        };
        if let Some(at) = path.iter().position(|p| *p == before.as_str()) {
            let mut cycle: Vec<String> = path[at..].iter().rev().map(|s| s.to_string()).collect();
            cycle.push(cycle[0].clone());
            return cycle;
        }
        path.push(before.as_str());
    }
}

//! OCI containers as feather's own tools show them (`feather ls`, `feather ps`): read from
//! the runtime roots of the host's [`RootRegistry`], through the same records and kernel state
//! `feather-oci state` reads — the CLI never runs feather-oci to learn them.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::registry::RootRegistry;
use crate::store::{Container, Status};

/// One container, with the engine's id and the runtime root the engine keeps it in.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerSummary {
    pub id: String,
    pub runtime_root: PathBuf,
    /// `created`, `running`, `paused`, `stopped` (or `creating`), as `feather-oci state`.
    pub status: &'static str,
    /// The init's (the program's) pid on the host; none once stopped.
    pub pid: Option<i32>,
    /// `host` for `org.feather.base=host`, else the bundle's rootfs.
    pub base: String,
    pub bundle: PathBuf,
    /// RFC 3339, as the state JSON's `created`.
    pub created: String,
    /// Processes in the container's cgroup now.
    pub processes: usize,
}

/// One process of a container.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerProcess {
    /// Its pid inside the container.
    pub pid: i32,
    pub host_pid: i32,
    pub uid: u32,
    pub command: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(
        "no OCI container {id} in the runtime roots feather-oci was used with (see `feather ls`)"
    )]
    NotFound { id: String },
    #[error("OCI container {id} is in several runtime roots ({}): name one with --runtime-root", roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous { id: String, roots: Vec<PathBuf> },
    #[error("OCI container {id} in {} is {status}, not running", root.display())]
    NotRunning {
        id: String,
        root: PathBuf,
        status: &'static str,
    },
    #[error("OCI container {id} in {}", root.display())]
    Unreadable {
        id: String,
        root: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Every container of every registered runtime root, by root, then id.
pub fn containers(registry: &RootRegistry) -> Vec<ContainerSummary> {
    registry
        .roots()
        .iter()
        .flat_map(|root| {
            crate::store::ids(root)
                .into_iter()
                .filter_map(move |id| Container::load(root, &id).ok())
                .map(move |container| summary(root, &container))
        })
        .collect()
}

fn summary(root: &Path, container: &Container) -> ContainerSummary {
    let status = container.status();
    let host_base = container
        .record
        .annotations
        .get("org.feather.base")
        .is_some_and(|base| base == "host");
    ContainerSummary {
        id: container.record.id.clone(),
        runtime_root: root.to_owned(),
        status: status.name(),
        pid: (!matches!(status, Status::Stopped | Status::Creating))
            .then_some(container.record.pid),
        base: if host_base {
            "host".to_owned()
        } else {
            container.record.rootfs.display().to_string()
        },
        bundle: container.record.bundle.clone(),
        created: container.record.created.clone(),
        processes: container
            .named_groups()
            .map_or(0, |groups| groups.members().len()),
    }
}

/// The processes of container `id`, found in `runtime_root` or, without one, in the one
/// registered root that has it.
pub fn processes(
    registry: &RootRegistry,
    id: &str,
    runtime_root: Option<&Path>,
) -> Result<Vec<ContainerProcess>, ListError> {
    let (root, container) = find(registry, id, runtime_root)?;
    match container.status() {
        Status::Created | Status::Running | Status::Paused => {}
        other => {
            return Err(ListError::NotRunning {
                id: id.to_owned(),
                root,
                status: other.name(),
            })
        }
    }
    let mut rows: Vec<ContainerProcess> = container
        .named_groups()
        .map(|groups| groups.members())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pid| feather_sys::process::describe(pid).map(ContainerProcess::from))
        .collect();
    rows.sort_by_key(|p| p.pid);
    Ok(rows)
}

/// The runtime root of container `id` (found as by [`processes`]), which must be running:
/// for tools that enter it (`feather check ipc`).
pub fn running(
    registry: &RootRegistry,
    id: &str,
    runtime_root: Option<&Path>,
) -> Result<PathBuf, ListError> {
    let (root, container) = find(registry, id, runtime_root)?;
    match container.status() {
        Status::Running => Ok(root),
        other => Err(ListError::NotRunning {
            id: id.to_owned(),
            root,
            status: other.name(),
        }),
    }
}

pub(crate) fn find(
    registry: &RootRegistry,
    id: &str,
    runtime_root: Option<&Path>,
) -> Result<(PathBuf, Container), ListError> {
    let roots: Vec<PathBuf> = match runtime_root {
        Some(root) => vec![root.to_owned()],
        None => registry.roots(),
    };
    let holding: Vec<PathBuf> = roots
        .into_iter()
        .filter(|root| crate::store::validate_id(id).is_ok() && Container::exists(root, id))
        .collect();
    match holding.as_slice() {
        [] => Err(ListError::NotFound { id: id.to_owned() }),
        [root] => Container::load(root, id)
            .map(|container| (root.clone(), container))
            .map_err(|error| ListError::Unreadable {
                id: id.to_owned(),
                root: root.clone(),
                source: error.into(),
            }),
        _ => Err(ListError::Ambiguous {
            id: id.to_owned(),
            roots: holding,
        }),
    }
}

impl From<feather_sys::process::Described> for ContainerProcess {
    fn from(d: feather_sys::process::Described) -> ContainerProcess {
        ContainerProcess {
            pid: d.pid,
            host_pid: d.host_pid,
            uid: d.uid,
            command: d.command,
        }
    }
}

//! OCI containers in feather's own listings: `feather ls` shows the containers of every
//! runtime root feather-oci was used with, and `feather ps` finds a container by its engine's
//! id when no VM has that name. The state is read through feather-oci's library
//! (`feather_oci::listing`), never by running feather-oci.

use std::path::Path;

use feather_core::{StateRoot, VmName};
use feather_oci::listing::{self, ContainerProcess, ContainerSummary, ListError};
use feather_oci::registry::RootRegistry;
use feather_vm::error::VmError;
use feather_vm::inspect::{self, Process};

/// Every OCI container on this host.
pub fn containers() -> Vec<ContainerSummary> {
    listing::containers(&RootRegistry::host())
}

/// The processes of VM `name`, or of the OCI container of that id: in `runtime_root` when
/// given, else in the one registered runtime root that has it when no VM is named so.
pub fn processes(
    root: &StateRoot,
    name: &str,
    runtime_root: Option<&Path>,
) -> anyhow::Result<Vec<Process>> {
    let registry = RootRegistry::host();
    if runtime_root.is_some() {
        return Ok(in_container(&registry, name, runtime_root)?);
    }
    let not_a_vm: anyhow::Error = match name.parse::<VmName>() {
        Ok(vm) => match inspect::processes(root, &vm) {
            Ok(rows) => return Ok(rows),
            Err(error @ VmError::Core(feather_core::Error::NotFound(_))) => error.into(),
            Err(error) => return Err(error.into()),
        },
        Err(error) => error.into(),
    };
    match in_container(&registry, name, None) {
        // Neither: the VM's error says what to do.
        Err(ListError::NotFound { .. }) => Err(not_a_vm),
        found => Ok(found?),
    }
}

fn in_container(
    registry: &RootRegistry,
    id: &str,
    runtime_root: Option<&Path>,
) -> Result<Vec<Process>, ListError> {
    Ok(listing::processes(registry, id, runtime_root)?
        .into_iter()
        .map(|p: ContainerProcess| Process {
            pid: p.pid,
            host_pid: p.host_pid,
            uid: p.uid,
            command: p.command,
        })
        .collect())
}

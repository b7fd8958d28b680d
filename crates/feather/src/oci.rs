//! OCI containers in feather's own tools: `feather ls` shows the containers of every runtime
//! root feather-oci was used with; `feather ps`, `feather diff` and `feather check ipc` find a
//! container by its engine's id when no VM has that name. The state is read through feather-oci's library
//! (`feather_oci::listing`, `feather_oci::layer`), never by running feather-oci.

use std::path::{Path, PathBuf};

use feather_core::{StateRoot, VmName};
use feather_ipcprobe::run::OciContainer;
use feather_oci::layer::LayerError;
use feather_oci::listing::{self, ContainerProcess, ContainerSummary, ListError};
use feather_oci::registry::RootRegistry;
use feather_vm::diff::{Change, Tree};
use feather_vm::error::VmError;
use feather_vm::inspect::{self, Process};
use feather_vm::layers::Layer;

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
    vm_or_container(
        name,
        runtime_root,
        |vm| inspect::processes(root, vm),
        |registry, runtime_root| match in_container(registry, name, runtime_root) {
            Err(ListError::NotFound { .. }) => Ok(None),
            found => Ok(Some(found?)),
        },
    )
}

/// What VM `name`, or the OCI container of that id (found as by [`processes`]), changed.
pub fn changes(
    root: &StateRoot,
    name: &str,
    runtime_root: Option<&Path>,
) -> anyhow::Result<Vec<Change>> {
    vm_or_container(
        name,
        runtime_root,
        |vm| feather_vm::commit::changes(root, vm),
        |registry, runtime_root| match container_changes(registry, name, runtime_root) {
            Err(LayerError::List(ListError::NotFound { .. })) => Ok(None),
            found => Ok(Some(found?)),
        },
    )
}

/// What `feather check ipc NAME` probes as VM A: VM `name`, or else the running OCI container
/// of that id (in `runtime_root` when given). When neither exists, the VM: the probe's error
/// says what it needs.
pub fn probed(
    root: &StateRoot,
    name: Option<String>,
    runtime_root: Option<&Path>,
) -> anyhow::Result<(Option<String>, Option<OciContainer>)> {
    let Some(name) = name else {
        return Ok((None, None));
    };
    let is_vm = name
        .parse::<VmName>()
        .is_ok_and(|vm| root.open(&vm).is_ok());
    if is_vm && runtime_root.is_none() {
        return Ok((Some(name), None));
    }
    match listing::running(&RootRegistry::host(), &name, runtime_root) {
        Ok(runtime_root) => Ok((
            None,
            Some(OciContainer {
                runtime_root,
                id: name,
            }),
        )),
        Err(ListError::NotFound { .. }) if runtime_root.is_none() => Ok((Some(name), None)),
        Err(error) => Err(error.into()),
    }
}

/// `for_vm` when a VM is named `name` (and no runtime root is given), else `for_container`,
/// which answers `None` when no container has that id either: then the VM's error says what
/// to do.
fn vm_or_container<T>(
    name: &str,
    runtime_root: Option<&Path>,
    for_vm: impl FnOnce(&VmName) -> Result<T, VmError>,
    for_container: impl FnOnce(&RootRegistry, Option<&Path>) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let registry = RootRegistry::host();
    if runtime_root.is_some() {
        return for_container(&registry, runtime_root)?.ok_or_else(|| {
            ListError::NotFound {
                id: name.to_owned(),
            }
            .into()
        });
    }
    let not_a_vm: anyhow::Error = match name.parse::<VmName>() {
        Ok(vm) => match for_vm(&vm) {
            Ok(found) => return Ok(found),
            Err(error @ VmError::Core(feather_core::Error::NotFound(_))) => error.into(),
            Err(error) => return Err(error.into()),
        },
        Err(error) => error.into(),
    };
    for_container(&registry, None)?.ok_or(not_a_vm)
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

/// The container's writable layer over what lies beneath it, read as a VM's layer is.
fn container_changes(
    registry: &RootRegistry,
    id: &str,
    runtime_root: Option<&Path>,
) -> Result<Vec<Change>, LayerError> {
    let layer = feather_oci::layer::layer(registry, id, runtime_root)?;
    let tree = Tree {
        layer: Layer {
            mount_point: "/".into(),
            lower: layer.lower_path,
            upper: layer.upper_path.clone(),
            work: PathBuf::new(),
            hiding: None,
            over_nothing: false,
        },
        upper: layer.upper,
        lower: Some(layer.lower),
        unseen: None,
    };
    // Nothing of a container's is ever committed: no folder is guarded.
    let guarded = feather_vm::diff::Guarded::default();
    feather_vm::diff::diff_trees(&[tree], &layer.mount_points, &guarded).map_err(|source| {
        LayerError::Io {
            id: id.to_owned(),
            what: "reading its layer",
            path: layer.upper_path,
            source,
        }
    })
}

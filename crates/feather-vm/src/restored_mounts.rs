//! The mount tree a restored VM came back with, checked while CRIU leaves it stopped, after
//! its credentials ([`crate::restored_creds`]) and once the masks its dump lacked are added.
//! CRIU mounts proc, sysfs and cgroup2 anew with the flags the images hold: an imported
//! archive or a migration's sender can leave out `/proc/sys`'s read-only bind, a mask or
//! `/sys`'s read-only flag, and a VM's init lives in the host's user namespace — its root is
//! the host's, and a writable `kernel.core_pattern` runs its program as the host's root. Every
//! mount namespace of the VM must have what [`rootfs::assemble`] makes, from its own lists:
//! [`rootfs::READ_ONLY_PROC`] read-only with everything below them, [`rootfs::MASKED_PROC`]
//! and [`rootfs::MASKED_SYS`] masked, below every proc and sysfs mount; every sysfs
//! read-only; every cgroup mount read-only or showing one of the VM's `services` folders;
//! the base's `--ro` paths read-only. The judgement is
//! [`feather_confine::restored_mounts`]'s, which feather-oci's restore shares.

use std::path::{Path, PathBuf};

use feather_confine::restored_mounts::{cgroup_root, Expected, ReadOnly};
use feather_confine::restored_sources::{Before, CriuMountTable, HostNamespaces, Tables};
use feather_sys::cgroup::Cgroup;

use crate::error::{failed, VmError};
use crate::rootfs;

/// What the restored tree of a VM of `config` (its group `cgroup`) must have.
pub(crate) fn expected(
    config: &feather_core::VmConfig,
    cgroup: Option<&Cgroup>,
    before: Before,
) -> Expected {
    let knobs = rootfs::READ_ONLY_PROC.iter().map(|knob| ReadOnly {
        path: Path::new("/proc").join(knob),
        recursive: true,
    });
    let read_only_base = config.read_only.iter().map(|path| ReadOnly {
        path: path.clone(),
        recursive: false,
    });
    let masked = rootfs::MASKED_PROC
        .iter()
        .chain(&rootfs::MASKED_SYS)
        .map(|path| Path::new("/").join(path))
        .collect();
    let cgroup_roots: Vec<PathBuf> = cgroup
        .map(Cgroup::service_subtrees)
        .unwrap_or_default()
        .iter()
        .filter_map(|(subtree, _)| cgroup_root(subtree))
        .collect();
    Expected {
        read_only: knobs.chain(read_only_base).collect(),
        masked,
        sysfs_writable: false,
        cgroup_roots,
        before: Some(before),
        // CRIU is handed the network namespace alone, which no task holds as a descriptor.
        handed: Vec::new(),
    }
}

/// What existed where CRIU ran and what of it the restore exposes: the VM's root (CRIU's
/// `--root`, with the layers mounted beneath it) and each host path CRIU binds an external
/// mount from (`exposed`, the restore's own list), from the table the restoring child wrote
/// (`where_criu_ran`) beside the keeper's own, read now (its peer groups: the child's mounts
/// are private).
pub(crate) fn before(
    where_criu_ran: &CriuMountTable,
    exposed: &[PathBuf],
    host_network: bool,
) -> std::io::Result<Before> {
    let where_criu_ran = where_criu_ran.read().map_err(std::io::Error::other)?;
    let tables = Tables::read_now(where_criu_ran)?;
    // A VM has an IPC namespace of its own always, a network namespace but with `--net host`.
    let host = HostNamespaces {
        network: host_network,
        ipc: false,
    };
    Ok(Before::of(&tables, exposed, false).keeping(host))
}

/// Checks the VM's tree under `init` (held still in `hold`); the refusal names what is wrong.
pub(crate) fn check_tree(
    name: &feather_core::VmName,
    init: nix::unistd::Pid,
    hold: &feather_confine::held::Hold,
    expected: &Expected,
) -> Result<(), VmError> {
    feather_confine::restored_mounts::check_tree(init.as_raw(), hold, expected).map_err(|why| {
        failed(
            name,
            format!(
                "the restored VM's mounts are not what feather makes in a VM: {why}; \
                 refusing the restore"
            ),
        )
    })
}

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

use std::fs;
use std::os::unix::fs::FileExt;

use feather_confine::restored_mounts::{cgroup_root, Expected, ReadOnly};
use feather_confine::restored_sources::{Before, HostNamespaces};
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
    }
}

/// The file the restoring child writes its mount table in before it becomes CRIU: a memfd,
/// shared with the keeper across the fork, closed by the child's exec.
pub(crate) fn before_file() -> nix::Result<fs::File> {
    let fd = nix::sys::memfd::memfd_create(
        c"feather-restoring-mounts",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )?;
    Ok(fs::File::from(fd))
}

/// In the restoring child, its overlays, layers, masks and cgroup folders mounted: its mount
/// table. Not written, the keeper finds none and the VM's mounts are refused.
pub(crate) fn write_before(file: &fs::File) {
    if let Ok(text) = fs::read("/proc/self/mountinfo") {
        let _ = file.write_all_at(&text, 0);
    }
}

/// What existed where CRIU ran and what of it the restore exposes: the VM's root (CRIU's
/// `--root`, with the layers mounted beneath it) and each host path CRIU binds an external
/// mount from (`exposed`, the restore's own list); the keeper's namespace's peer groups too
/// (the child's mounts are private).
pub(crate) fn read_before(file: &fs::File, exposed: &[PathBuf], host_network: bool) -> Before {
    let mut text = Vec::new();
    let mut at = 0;
    let mut chunk = [0u8; 16 << 10];
    while let Ok(len @ 1..) = file.read_at(&mut chunk, at) {
        text.extend_from_slice(&chunk[..len]);
        at += len as u64;
    }
    let keepers = feather_sys::mountinfo::mounts().unwrap_or_default();
    let mut mounts = keepers;
    mounts.extend(feather_sys::mountinfo::parse(&text));
    // A VM has an IPC namespace of its own always, a network namespace but with `--net host`.
    let host = HostNamespaces {
        network: host_network,
        ipc: false,
    };
    Before::of(&mounts, exposed, false).keeping(host)
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
                "the restored VM's mounts are not what feather makes in a VM: {why} (a \
                 checkpoint altered, or sent, to leave the kernel's knobs writable); refusing \
                 the restore: start the VM anew or restore a checkpoint this host or a trusted \
                 one took"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the restoring child writes is what the keeper reads back, from offset 0 whatever
    /// the shared offset: this namespace's devices, and `/` exposed as its own filesystem.
    #[test]
    fn the_childs_mount_table_reaches_the_keeper() {
        let file = before_file().unwrap();
        write_before(&file);
        let before = read_before(&file, &[PathBuf::from("/")], false);
        let own = feather_sys::mountinfo::mounts().unwrap();
        let root = own
            .iter()
            .rfind(|m| m.mount_point == Path::new("/"))
            .unwrap();
        assert!(before.devices.contains(&root.device));
        assert!(before.sources.iter().any(|s| s.device == root.device));
    }
}

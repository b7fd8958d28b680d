//! A VM's disk cap (`feather create --disk SIZE`): the folders of its layers (upper and work of
//! every layer) belong to a project of the state root's filesystem, whose quota is SIZE. The
//! filesystem counts every block the VM's writes put there, copy-ups included, and refuses the
//! write beyond the cap with EDQUOT. overlayfs writes with its mounter's credentials less
//! CAP_SYS_RESOURCE, so even the VM's root cannot exceed the cap.
//!
//! The project id is chosen at creation, at random among ids nobody uses on that filesystem
//! (no files, no limits), and recorded in the VM's config; `rm` lifts its cap.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use feather_core::{DiskQuota, VmName};
use feather_sys::mountinfo;
use feather_sys::quota;
use nix::errno::Errno;

use crate::error::{failed, Result};
use crate::layers::Layer;

/// Project ids feather chooses from: above those administrators number by hand in
/// /etc/projid, below 2^31 for tools that read ids as signed.
const PROJECTS: std::ops::Range<u32> = 0x4000_0000..0x8000_0000;

fn open_dir(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Checks that the filesystem of `state` (the state root) enforces project quotas and picks
/// an unused project for a VM capped at `bytes`.
pub fn allocate(name: &VmName, state: &Path, bytes: u64) -> Result<DiskQuota> {
    let dir = open_dir(state).map_err(|e| failed(name, format!("{}: {e}", state.display())))?;
    if let Err(errno) = quota::enforced(dir.as_fd()) {
        return Err(failed(name, unsupported(state, errno)));
    }
    for _ in 0..32 {
        let project = random_project();
        let used = quota::in_use(dir.as_fd(), project).map_err(|e| {
            failed(
                name,
                format!(
                    "reading project quota {project} at {}: {e}",
                    state.display()
                ),
            )
        })?;
        if !used {
            return Ok(DiskQuota { bytes, project });
        }
    }
    Err(failed(
        name,
        format!(
            "found no unused project id on the filesystem of {}",
            state.display()
        ),
    ))
}

fn random_project() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("the kernel's random device"),
        &mut bytes,
    );
    PROJECTS.start + u32::from_ne_bytes(bytes) % (PROJECTS.end - PROJECTS.start)
}

/// What a user who asked for `--disk` on a filesystem without project quotas reads.
fn unsupported(state: &Path, errno: Errno) -> String {
    let (fs_type, mount) = filesystem_of(state);
    let why = match errno {
        Errno::ESRCH => "project quotas are not on (it is not mounted with `prjquota`)".to_owned(),
        Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::ENOTTY => {
            "the filesystem has no quotas".to_owned()
        }
        other => other.to_string(),
    };
    format!(
        "--disk needs project quotas on {fs_type} at {mount}: {why}. Mount an xfs or ext4 \
         filesystem with `prjquota` (ext4 also needs `tune2fs -O quota,project` while unmounted, \
         and the kernel CONFIG_QFMT_V2), or use a --root on one that has them, or create the VM \
         without --disk"
    )
}

/// The type and mount point of the filesystem holding `path`, for messages.
fn filesystem_of(path: &Path) -> (String, String) {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mountinfo::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        // The last of the longest: a later mount on the same point hides the earlier one.
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .map(|m| (m.fs_type, m.mount_point.display().to_string()))
        .unwrap_or_else(|| ("an unknown filesystem".into(), "/".into()))
}

/// Sets the cap and puts the folders of `layers` into the VM's project. Done at every start:
/// layers of newly mounted host filesystems, and those `reset` made afresh, join it too.
pub fn apply(name: &VmName, state: &Path, disk: DiskQuota, layers: &[Layer]) -> Result<()> {
    let dir = open_dir(state).map_err(|e| failed(name, format!("{}: {e}", state.display())))?;
    quota::set_limit(dir.as_fd(), disk.project, disk.bytes).map_err(|errno| {
        let why = match errno {
            Errno::EPERM => "setting a project quota needs CAP_SYS_ADMIN".to_owned(),
            Errno::ESRCH | Errno::ENOSYS | Errno::EOPNOTSUPP => unsupported(state, errno),
            other => other.to_string(),
        };
        failed(
            name,
            format!("its disk cap (project {}): {why}", disk.project),
        )
    })?;
    for layer in layers {
        for folder in [&layer.upper, &layer.work] {
            assign(name, folder, disk.project)?;
        }
    }
    Ok(())
}

/// Puts the folder `path` (feather's own, in the VM's state folder) into `project`.
pub fn assign(name: &VmName, path: &Path, project: u32) -> Result<()> {
    let dir = open_dir(path).map_err(|e| failed(name, format!("{}: {e}", path.display())))?;
    quota::assign(dir.as_fd(), project).map_err(|e| {
        failed(
            name,
            format!(
                "{}: cannot put it in project {project}: {e}",
                path.display()
            ),
        )
    })
}

/// Lifts a removed VM's cap, so that its project id is free again. Best effort: the files are
/// gone, and a stale limit on an unused id harms nobody.
pub fn release(state: &Path, disk: DiskQuota) {
    if let Ok(dir) = open_dir(state) {
        let _ = quota::set_limit(dir.as_fd(), disk.project, 0);
    }
}

/// Bytes the VM's layers hold now, by the filesystem's count.
pub fn usage(state: &Path, disk: DiskQuota) -> Option<u64> {
    let dir = open_dir(state).ok()?;
    quota::usage(dir.as_fd(), disk.project).ok()
}

//! A VM's disk cap (`feather create --disk SIZE`), enforced one of two ways, chosen at creation
//! and recorded in the VM's config:
//!
//! - **Project quota**, where the state root's filesystem enforces them (ext4 with the `quota`
//!   and `project` features, xfs; mounted with `prjquota`, on a kernel built with their quota
//!   formats): the folders of the VM's layers belong to a project whose quota is SIZE. The
//!   filesystem counts every block the VM's writes put there, copy-ups included, and refuses
//!   the write beyond the cap with EDQUOT. The project id is chosen at random among ids nobody
//!   uses on that filesystem; `rm` lifts its cap.
//! - **A filesystem image of its own** everywhere else (this needs only a loop device):
//!   `<vm>/disk.img`, a sparse file of SIZE formatted ext4, is mounted at `<vm>/disk`, and the
//!   VM's layer folders are there (`disk/upper`, `disk/work`, `disk/mounts`:
//!   [`crate::layers::home`]; overlayfs wants an upper folder and its work folder on one
//!   mount). A write beyond the cap fails with ENOSPC, and the host's disk holds at most SIZE
//!   for the VM. The mount lives in the host's mount namespace from `create` to `rm` (a VM's
//!   mount namespace is copied from it at start), and is made again by whatever needs the
//!   layers after a reboot.
//!
//! Either way overlayfs writes with its mounter's credentials, so even the VM's root cannot
//! exceed the cap.

use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use feather_core::{DiskQuota, VmDir, VmName};
use feather_sys::beneath;
use feather_sys::mountinfo;
use feather_sys::quota;
use nix::errno::Errno;
use nix::mount::MntFlags;

use crate::error::{failed, io, Result, VmError};
use feather_sys::folder::open_no_follow;

/// Project ids feather chooses from: above those administrators number by hand in
/// /etc/projid, below 2^31 for tools that read ids as signed.
const PROJECTS: std::ops::Range<u32> = 0x4000_0000..0x8000_0000;

/// The smallest image cap: ext4's own metadata needs a few MiB before the first file.
const MIN_IMAGE: u64 = 8 << 20;

/// The layer folders an image holds.
const IMAGE_FOLDERS: [&str; 3] = ["upper", "work", "mounts"];

/// Where a VM's disk image is mounted.
pub fn mount_point(vm: &VmDir) -> std::path::PathBuf {
    vm.path().join("disk")
}

/// The error of VM `name` whose quota of `project` on the filesystem of `state` (the state
/// root) could not be read.
fn quota_unreadable<'a>(
    name: &'a VmName,
    state: &'a Path,
    project: u32,
) -> impl FnOnce(Errno) -> VmError + 'a {
    move |e| {
        let why = format!(
            "reading project quota {project} at {}: {e}",
            state.display()
        );
        failed(name, why)
    }
}

/// Chooses how a VM capped at `bytes` is held to it: a project quota where the filesystem of
/// `state` (the state root) enforces them, else a filesystem image of its own.
pub fn allocate(name: &VmName, state: &Path, bytes: u64) -> Result<DiskQuota> {
    let dir = open_no_follow(state).map_err(io(name, state.display().to_string()))?;
    if let Err(errno) = quota::enforced(dir.as_fd()) {
        return image_cap(name, state, errno, bytes);
    }
    for _ in 0..32 {
        let project = random_project();
        let used =
            quota::in_use(dir.as_fd(), project).map_err(quota_unreadable(name, state, project))?;
        if !used {
            return Ok(DiskQuota::ProjectQuota { bytes, project });
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

/// An image cap, where the tools it needs are installed and `bytes` can hold a filesystem.
fn image_cap(name: &VmName, state: &Path, errno: Errno, bytes: u64) -> Result<DiskQuota> {
    if bytes < MIN_IMAGE {
        return Err(failed(
            name,
            format!(
                "--disk {bytes} bytes is too small: without project quotas ({}) the VM's \
                 layers get a filesystem image of their own, which needs at least 8M",
                unsupported(state, errno)
            ),
        ));
    }
    if let Some(missing) = ["mkfs.ext4", "mount"]
        .into_iter()
        .find(|tool| !on_path(tool))
    {
        return Err(failed(
            name,
            format!(
                "{}; and {missing} is not installed for a disk image instead (Debian: apt-get \
                 install e2fsprogs mount)",
                unsupported(state, errno)
            ),
        ));
    }
    Ok(DiskQuota::Image { bytes })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        .to_string_lossy()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|dir| Path::new(dir).join(tool).is_file())
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

/// Makes a new VM's cap: its project and limit, or its image, formatted and mounted. Before
/// anything is made in its layer, so that all of it counts.
pub fn prepare(name: &VmName, state: &Path, vm: &VmDir, disk: DiskQuota) -> Result<()> {
    match disk {
        DiskQuota::ProjectQuota { bytes, project } => {
            set_project_limit(name, state, project, bytes)?;
            assign(name, &vm.upper(), project)?;
            assign(name, &vm.work(), project)
        }
        DiskQuota::Image { bytes } => {
            make_image(name, vm, bytes)?;
            attach(name, vm, disk)
        }
    }
}

/// Holds the `folders` of a starting VM's layers (upper and work) to its cap. Done at every start: layers of newly mounted
/// host filesystems, and those `reset` made afresh, join the project too; an image is mounted
/// again if a reboot took it away (call [`attach`] before the layer folders are made).
pub fn apply(
    name: &VmName,
    state: &Path,
    vm: &VmDir,
    disk: DiskQuota,
    folders: &[&Path],
) -> Result<()> {
    match disk {
        DiskQuota::ProjectQuota { bytes, project } => {
            set_project_limit(name, state, project, bytes)?;
            for folder in folders {
                assign(name, folder, project)?;
            }
            Ok(())
        }
        DiskQuota::Image { .. } => attach(name, vm, disk),
    }
}

/// Holds what an imported VM's layers brought (unpacked into `staging`, root's alone until it
/// is placed) to its cap, `disk` as made on this host. A project quota charges each file to
/// its own project, and a new file takes its folder's project only where the folder has the
/// inherit flag; tar gives neither, and [`apply`] marks only the layers' top folders: all the
/// archive held stayed in project 0, and with it every file the VM made later in a folder that
/// came in the archive, every byte it added to a file that did — uncapped, and left out of
/// `inspect`'s usage. So every folder of the layers joins the project with the inherit flag,
/// every plain file joins it ([`hold_layers`]), and what the archive holds must fit the cap.
/// An image cap needs nothing here: the layers move into the image at their first use
/// ([`attach`]), where they count.
pub fn hold_imported(
    name: &VmName,
    state: &Path,
    staging: &Path,
    disk: Option<DiskQuota>,
    file: &str,
) -> Result<()> {
    let Some(DiskQuota::ProjectQuota { bytes, project }) = disk else {
        return Ok(());
    };
    hold_layers(staging, project).map_err(|e| {
        failed(
            name,
            format!(
                "{file}: putting its layers in project {project} (its disk cap): {e}; nothing \
                 was imported"
            ),
        )
    })?;
    let dir = open_no_follow(state).map_err(io(name, state.display().to_string()))?;
    let used =
        quota::usage(dir.as_fd(), project).map_err(quota_unreadable(name, state, project))?;
    if used > bytes {
        return Err(failed(
            name,
            format!(
                "{file}: its layers hold {:.1} MiB, more than its disk cap of {} (`--disk`): \
                 every write would fail. Make room inside the VM where it runs (or create it \
                 there anew with a larger --disk) and export or send it again; nothing was \
                 imported",
                used as f64 / (1 << 20) as f64,
                feather_core::size::format_bytes(bytes)
            ),
        ));
    }
    Ok(())
}

/// Puts every folder (with the inherit flag) and every plain file of the layers in `staging`
/// (`upper`, `work`, and `mounts/` with each filesystem's layer in it) into `project`, never
/// following a link. `mounts/` and its folder per layer are feather's own: a few blocks, and
/// their layers' folders made later inherit the project.
pub(crate) fn hold_layers(staging: &Path, project: u32) -> std::io::Result<()> {
    let vm = beneath::open_root(staging)?;
    for layers in ["upper", "work", "mounts"] {
        let Some(top) = beneath::open_dir(&vm, Path::new(layers))? else {
            continue;
        };
        beneath::each_file_and_folder(&top, &mut |file, meta| {
            let assigned = if meta.is_dir() {
                quota::assign(file.as_fd(), project)
            } else {
                quota::assign_file(file.as_fd(), project)
            };
            assigned.map_err(std::io::Error::from)
        })?;
    }
    Ok(())
}

fn set_project_limit(name: &VmName, state: &Path, project: u32, bytes: u64) -> Result<()> {
    let dir = open_no_follow(state).map_err(io(name, state.display().to_string()))?;
    quota::set_limit(dir.as_fd(), project, bytes).map_err(|errno| {
        let why = match errno {
            Errno::EPERM => "setting a project quota needs CAP_SYS_ADMIN".to_owned(),
            Errno::ESRCH | Errno::ENOSYS | Errno::EOPNOTSUPP => unsupported(state, errno),
            other => other.to_string(),
        };
        failed(name, format!("its disk cap (project {project}): {why}"))
    })
}

/// A sparse file of `bytes`, formatted ext4 with nothing reserved for root (the VM's root is
/// the image's only user) and a root folder only root may enter.
fn make_image(name: &VmName, vm: &VmDir, bytes: u64) -> Result<()> {
    let image = vm.path().join("disk.img");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&image)
        .and_then(|file| file.set_len(bytes).map(|()| file))
        .map_err(io(name, image.display().to_string()))?;
    drop(file);
    run(
        name,
        feather_sys::process::command("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-E", "nodiscard,root_owner=0:0"])
            .arg(&image),
    )
}

/// Mounts a VM's image where it is not mounted: after a reboot, and for every use of the
/// layers in between (start, diff, commit, reset). A VM imported from an archive (or
/// migrated) arrives with its layers as plain folders: they move into a new image of its cap.
pub fn attach(name: &VmName, vm: &VmDir, disk: DiskQuota) -> Result<()> {
    let DiskQuota::Image { bytes } = disk else {
        return Ok(());
    };
    let mount_point = mount_point(vm);
    let image = vm.path().join("disk.img");
    let at = |path: &Path| io(name, path.display().to_string());
    std::fs::create_dir_all(&mount_point).map_err(at(&mount_point))?;
    let adopt = !image.exists();
    if adopt {
        make_image(name, vm, bytes)?;
    }
    if !is_mounted_on(vm.path(), &mount_point) {
        run(
            name,
            feather_sys::process::command("mount")
                .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
                .arg(&image)
                .arg(&mount_point),
        )?;
    }
    for folder in IMAGE_FOLDERS {
        let inside = mount_point.join(folder);
        std::fs::create_dir_all(&inside).map_err(at(&inside))?;
        let outside = vm.path().join(folder);
        if adopt && outside.is_dir() {
            move_into_image(name, &outside, &inside)?;
        }
    }
    Ok(())
}

/// Copies a plain layer folder's content into the image, then empties the folder. `cp -a`
/// keeps what a layer's entries carry — owners, modes, times, extended attributes (overlayfs's
/// opaque marks), whiteout devices, symlinks, hard links — and `--sparse=always` holes; it
/// never follows a symlink of the layer. Feather's own folders on both sides; the layer's
/// content is the VM's, only copied, never interpreted.
fn move_into_image(name: &VmName, outside: &Path, inside: &Path) -> Result<()> {
    let source = outside.join(".");
    run(
        name,
        feather_sys::process::command("cp")
            .args(["-a", "--sparse=always", "--no-target-directory"])
            .arg(&source)
            .arg(inside),
    )?;
    let at = |e: std::io::Error| io(name, outside.display().to_string())(e);
    std::fs::remove_dir_all(outside).map_err(at)?;
    std::fs::create_dir(outside).map_err(at)
}

/// Unmounts what [`attach`] mounted (the loop device goes with its last user, which may be a
/// VM's mount namespace that is still ending).
pub fn detach(vm: &VmDir) {
    let path = mount_point(vm);
    if is_mounted_on(vm.path(), &path) {
        let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
    }
}

/// Whether something is mounted on `path`, a folder of feather's own in `parent`: the image
/// is a filesystem of its own, so its device differs from the state root's.
fn is_mounted_on(parent: &Path, path: &Path) -> bool {
    !same_filesystem(parent, path)
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

fn run(name: &VmName, command: &mut Command) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(io(name, format!("cannot run {command:?}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(
            name,
            format!(
                "its disk image: {:?} failed: {}",
                command.get_program(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ))
    }
}

/// Puts the folder `path` (feather's own, in the VM's state folder) into `project`.
pub fn assign(name: &VmName, path: &Path, project: u32) -> Result<()> {
    let dir = open_no_follow(path).map_err(io(name, path.display().to_string()))?;
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

/// Lifts a removed VM's cap, so that its project id is free again (best effort: the files are
/// gone, and a stale limit on an unused id harms nobody), or unmounts its image (call it before
/// the VM's folder is removed).
pub fn release(state: &Path, vm: &VmDir, disk: DiskQuota) {
    match disk {
        DiskQuota::ProjectQuota { project, .. } => {
            if let Ok(dir) = open_no_follow(state) {
                let _ = quota::set_limit(dir.as_fd(), project, 0);
            }
        }
        DiskQuota::Image { .. } => detach(vm),
    }
}

/// Bytes the VM's layers hold now, by the filesystem's count.
pub fn usage(state: &Path, vm: &VmDir, disk: DiskQuota) -> Option<u64> {
    match disk {
        DiskQuota::ProjectQuota { project, .. } => {
            let dir = open_no_follow(state).ok()?;
            quota::usage(dir.as_fd(), project).ok()
        }
        DiskQuota::Image { .. } => {
            let stat = nix::sys::statvfs::statvfs(&vm.path().join("disk")).ok()?;
            let used = stat.blocks().saturating_sub(stat.blocks_free());
            Some(used * stat.fragment_size())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Project 0 and the inherit flag are taken on any filesystem with these attributes (the
    /// host's ext4 without project quotas too): every folder an import brought, however deep,
    /// gets the flag, and a link's target none.
    #[test]
    fn every_folder_an_import_brought_inherits_its_project_and_no_link_is_followed() {
        let scratch = feather_testkit::ScratchDir::new("hold");
        let dir = scratch.0.clone();
        let staging = dir.join("staging");
        for folder in [
            "upper/etc/deep/deeper",
            "mounts/data/upper/db",
            "mounts/data/work",
            "outside",
        ] {
            fs::create_dir_all(if folder == "outside" {
                dir.join(folder)
            } else {
                staging.join(folder)
            })
            .unwrap();
        }
        fs::write(staging.join("upper/etc/deep/file"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), staging.join("upper/etc/link")).unwrap();
        let flag = |path: &Path| {
            let folder = std::fs::File::open(path).unwrap();
            quota::inherits(folder.as_fd())
        };
        if flag(&staging).is_err() {
            eprintln!("the temporary folder's filesystem has no project attributes: skipped");
            return;
        }
        let held = hold_layers(&staging, 0);
        let inherit: Vec<(&str, bool)> = [
            "upper",
            "upper/etc",
            "upper/etc/deep/deeper",
            "mounts/data/upper/db",
            "mounts/data/work",
        ]
        .into_iter()
        .map(|folder| (folder, flag(&staging.join(folder)).unwrap()))
        .collect();
        let outside = flag(&dir.join("outside")).unwrap();
        held.unwrap();
        assert!(inherit.iter().all(|(_, on)| *on), "{inherit:?}");
        assert!(!outside, "the folder a link named took the flag");
    }
}

//! A VM's copy-on-write layers: one overlay for the base's own filesystem, and one for each
//! other real filesystem mounted under the base (a separate /home, /boot, a tmpfs under /mnt).
//! overlayfs does not descend into submounts of its lower layer, so without these a VM would
//! see empty folders where the host has mounted filesystems.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use feather_core::error::IoContext;
use feather_core::{StateRoot, VmConfig, VmDir, VmName};
use feather_sys::mountinfo::{self, is_api_filesystem};

use feather_sys::hiding_layer::HidingLayer;
use serde::{Deserialize, Serialize};

use crate::error::{InVm, Result, VmError};
use crate::lower_id::{folder_id, FolderOn, PinnedLower};
use crate::read_only;

/// Folders under which the VM gets fresh kernel filesystems of its own instead of a view of
/// the host's: nothing mounted there on the host is layered.
const OWN_TREES: [&str; 4] = ["proc", "sys", "dev", "run"];

#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Where the layer appears inside the VM: `/` or, for a submount, its path.
    pub mount_point: PathBuf,
    /// The host folder seen read-only beneath the layer.
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The part of the VM's [`HidingLayer`] above `lower`, where a host folder hidden from VMs
    /// lies in it (see [`hiding_layer`]): the overlay shows such folders empty by itself.
    pub hiding: Option<PathBuf>,
    /// `lower` is an empty folder standing in for the host's filesystem the layer lay over,
    /// which went since a checkpoint (`snapshot::restore_tree`): no folder of the base's, even
    /// where it lies under the base (a state root under a base of `/`).
    pub over_nothing: bool,
}

/// Where a VM's layer folders are: its own folder (`upper/`, `work/`, `mounts/`), or for a VM
/// with a disk image the image's mount (`disk/upper/` …; overlayfs wants an upper folder and
/// its work folder on one mount).
#[derive(Clone, Debug, PartialEq)]
pub struct Home {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mounts: PathBuf,
}

pub fn home(vm: &VmDir, config: &VmConfig) -> Home {
    match config.limits.disk {
        Some(feather_core::DiskQuota::Image { .. }) => {
            Home::in_folder(&crate::disk::mount_point(vm))
        }
        _ if config.layer_in_memory() => in_memory(vm),
        _ => Home {
            upper: vm.upper(),
            work: vm.work(),
            mounts: vm.mounts(),
        },
    }
}

impl Home {
    fn in_folder(dir: &Path) -> Home {
        Home {
            upper: dir.join("upper"),
            work: dir.join("work"),
            mounts: dir.join("mounts"),
        }
    }
}

/// A running throw-away VM's layer in memory, reached through its keeper's descriptor
/// (`/proc/<keeper>/fd/<fd>`) once the mount there proves to be the VM's tmpfs. Where there is
/// none (the VM does not run, its keeper died: the layer went with it), folders of the VM's
/// own folder that do not exist: an empty layer.
fn in_memory(vm: &VmDir) -> Home {
    let held = vm.read_state().ok().and_then(|state| {
        let (pid, layer) = (state.keeper_pid?, state.memory_layer?);
        let dir = PathBuf::from(format!("/proc/{pid}/fd/{}", layer.fd));
        let opened = feather_sys::beneath::open_root(&dir).ok()?;
        (feather_sys::mount::mount_id(&opened).ok()? == layer.mount_id).then_some(dir)
    });
    Home::in_folder(held.as_deref().unwrap_or(vm.path()))
}

/// A throw-away VM's layer in memory (see `VmConfig::layer_in_memory`), made by its keeper
/// at the start: a tmpfs no path leads to, open as `fd` for the keeper's life. Init, the
/// keeper's clone, reaches it as `/proc/self/fd/<fd>` while it mounts the VM's overlays; then
/// the overlays hold it. It goes when the last of them does, whatever dies when: nothing of it
/// is ever on the host's disk or in its mount table.
#[derive(Debug)]
pub struct MemoryLayer {
    pub fd: std::os::fd::OwnedFd,
    /// What the VM's state records, for others to find it by.
    pub recorded: feather_core::state::MemoryLayer,
}

impl MemoryLayer {
    /// The layer a VM with `config` keeps in memory, made now; None if its layer is on disk.
    pub fn for_vm(config: &VmConfig) -> Result<Option<MemoryLayer>> {
        config
            .layer_in_memory()
            .then(|| MemoryLayer::make(&config.name))
            .transpose()
    }

    fn make(name: &VmName) -> Result<MemoryLayer> {
        use std::os::fd::AsRawFd;
        let fd = feather_sys::mount::detached_tmpfs(c"0700").in_vm(name)?;
        let recorded = feather_core::state::MemoryLayer {
            fd: fd.as_raw_fd(),
            mount_id: feather_sys::mount::mount_id(&fd).in_vm(name)?,
        };
        Ok(MemoryLayer { fd, recorded })
    }

    /// The tmpfs as this process (or a clone of it) reaches it.
    fn top(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.recorded.fd))
    }

    /// The layer's folders as this process (or a clone of it) reaches them.
    fn home(&self) -> Home {
        Home::in_folder(&self.top())
    }

    /// Where the VM's generated /etc files go (`feather_net::etc`): beside the layer's folders,
    /// so never in the layer (`diff` and `commit` do not see them), and in memory like it. Init
    /// binds them from here, read-only, before it lets go of the tmpfs: the binds then hold it.
    pub fn etc_dir(&self) -> PathBuf {
        self.top().join("etc")
    }
}

impl Layer {
    fn root(vm: &VmDir, config: &VmConfig) -> Layer {
        Layer::root_in(&home(vm, config), config)
    }

    fn root_in(home: &Home, config: &VmConfig) -> Layer {
        Layer {
            mount_point: "/".into(),
            lower: config.base.clone(),
            upper: home.upper.clone(),
            work: home.work.clone(),
            hiding: None,
            over_nothing: false,
        }
    }

    pub(crate) fn submount(vm: &VmDir, config: &VmConfig, mount_point: PathBuf) -> Layer {
        Layer::submount_in(&home(vm, config), config, mount_point)
    }

    fn submount_in(home: &Home, config: &VmConfig, mount_point: PathBuf) -> Layer {
        let dir = home.mounts.join(escape(&mount_point));
        Layer {
            lower: config.base.join(relative(&mount_point)),
            upper: dir.join("upper"),
            work: dir.join("work"),
            hiding: None,
            over_nothing: false,
            mount_point,
        }
    }

    /// The overlay's lower layers, the uppermost first.
    pub fn lowers(&self) -> Vec<&Path> {
        self.hiding
            .iter()
            .chain([&self.lower])
            .map(PathBuf::as_path)
            .collect()
    }

    /// The host path beneath `path`, a path relative to this layer's mount point.
    pub fn lower_path(&self, path: &Path) -> PathBuf {
        self.lower.join(path)
    }

    /// The VM path of `path`, a path relative to this layer's mount point.
    pub fn vm_path(&self, path: &Path) -> PathBuf {
        self.mount_point.join(path)
    }
}

/// The hiding layer of a VM whose overlays are `layers` (the root layer first), over `base`:
/// each of the host's `hidden` folders the VM sees goes into the layer of the deepest overlay
/// it lies in, and each overlay with one gets its part as its topmost lower layer
/// ([`Layer::hiding`]). None when the VM sees none of them (a base that holds no state root).
///
/// Made where the VM's overlays are mounted (by the keeper before init's clone, by the
/// restoring keeper before its child's fork), held by the maker's descriptor until the overlays
/// are mounted, then by them alone: it is in no mount table and on no disk, reachable by no
/// path, and goes with the VM's last overlay, whatever dies when. No VM process ever holds its
/// descriptor (init closes it before anything of the VM's runs). overlayfs never writes a
/// lower layer, and mounts private read-only clones of them.
///
/// A lower layer must not change under a mounted overlay: a root registered while the VM runs
/// is hidden by a mount only (`hiding::in_running_vms`), until the VM's next start or restore.
pub fn hiding_layer(
    name: &VmName,
    layers: &mut [Layer],
    base: &Path,
    hidden: &[PathBuf],
) -> Result<Option<HidingLayer>> {
    let mut folders: Vec<Vec<PathBuf>> = vec![Vec::new(); layers.len()];
    for folder in hidden {
        let Some(rel) = crate::hiding::inside(base, folder) else {
            continue;
        };
        let vm_path = Path::new("/").join(&rel);
        let deepest = layers
            .iter()
            .enumerate()
            .filter(|(_, layer)| vm_path.starts_with(&layer.mount_point))
            .filter(|(_, layer)| vm_path != layer.mount_point)
            .max_by_key(|(_, layer)| layer.mount_point.components().count());
        if let Some((i, layer)) = deepest {
            if let Ok(in_layer) = vm_path.strip_prefix(&layer.mount_point) {
                folders[i].push(in_layer.to_path_buf());
            }
        }
    }
    // Over the host's tree, the host's own /run, /proc, /sys and /dev too (where not a
    // filesystem of their own, the root filesystem's folders, /run with the default root's run
    // folder and whatever services keep there): the VM's own mounts go over them, but a
    // descriptor kept on the root of a namespace that ended walks beneath those mounts.
    if base == Path::new("/") {
        if let Some(root_layer) = folders.first_mut() {
            root_layer.extend(crate::hiding::MOUNT_POINTS.iter().map(PathBuf::from));
        }
    }
    let lowers: Vec<(&Path, Vec<PathBuf>)> = layers
        .iter()
        .zip(folders)
        .map(|(layer, folders)| (layer.lower.as_path(), folders))
        .collect();
    let built = HidingLayer::build(&lowers).in_vm(name)?;
    if let Some(built) = &built {
        for (i, layer) in layers.iter_mut().enumerate() {
            layer.hiding = built.lower(i);
        }
    }
    Ok(built)
}

/// What a VM starting now is made of besides its root layer, given what is mounted under its
/// base on the host.
#[derive(Debug)]
pub struct ForStart {
    /// The root layer first, then one per filesystem mounted under the base.
    pub layers: Vec<Layer>,
    /// The VM paths bound read-only from the base (`create --ro`): the configured paths.
    pub read_only: Vec<PathBuf>,
    /// The filesystems mounted under those paths, bound read-only with them (if still there
    /// when init binds them: `rootfs::RootfsPlan::read_only_mounts`).
    pub read_only_mounts: Vec<PathBuf>,
    /// A throw-away VM's layer in memory, which the keeper holds for the VM's life.
    pub memory_layer: Option<MemoryLayer>,
}

/// The host's mount table, read once by a start or restore for all it does with it (its
/// layers, its state folders' aliases).
pub fn host_mount_table() -> Result<Vec<mountinfo::MountEntry>> {
    Ok(mountinfo::mounts().at("/proc/self/mountinfo")?)
}

/// The layers and read-only binds a VM starting (or restored) now needs, given its layer in
/// memory made already (by [`MemoryLayer::for_vm`]) and the host's state folders
/// (`hiding::state_folders_in`, from the host's mount table `host_mounts`, which the
/// submount layers come from too: read once per start). The layers' folders are created.
pub fn for_start_in(
    root: &StateRoot,
    vm: &VmDir,
    config: &VmConfig,
    memory_layer: Option<MemoryLayer>,
    state_folders: &[PathBuf],
    host_mounts: &[mountinfo::MountEntry],
) -> Result<ForStart> {
    if let Some(disk) = config.limits.disk {
        // An image holds the layer folders: mounted before any of them is made.
        crate::disk::attach(&config.name, vm, disk)?;
    }
    let home = match &memory_layer {
        Some(layer) => {
            let home = layer.home();
            // The mode of upper/ is the mode of the VM's `/`: the ordinary 0755.
            for dir in [&home.upper, &home.work, &home.mounts] {
                fs::create_dir(dir).at(dir)?;
            }
            for dir in &config.scaffold {
                let path = home.upper.join(relative(dir));
                fs::create_dir(&path).at(&path)?;
            }
            home
        }
        None => home(vm, config),
    };
    let base = &config.base;
    let mut submounts: Vec<PathBuf> = Vec::new();
    for entry in host_mounts {
        let Ok(rel) = entry.mount_point.strip_prefix(base) else {
            continue;
        };
        let own_tree = rel
            .components()
            .next()
            .is_some_and(|c| OWN_TREES.iter().any(|t| c.as_os_str() == *t));
        if rel.as_os_str().is_empty() || own_tree || is_api_filesystem(&entry.fs_type) {
            continue;
        }
        // Every state root of the host, this one included: what is mounted in them (another
        // VM's disk image) is hidden from the VM, never one of its layers. Asked last: it
        // compares the mount with each of the host's state folders (hundreds of registered
        // roots, against a table of hundreds of mounts, most of them under /proc, /sys, /dev).
        if state_folders
            .iter()
            .any(|folder| entry.mount_point.starts_with(folder))
        {
            continue;
        }
        let mount_point = Path::new("/").join(rel);
        // A later mount on the same point hides the earlier one; keep one layer per point.
        submounts.retain(|m| m != &mount_point);
        submounts.push(mount_point);
    }
    // Filesystems under a read-only path are bound read-only with it, not layered.
    let (under_read_only, submounts): (Vec<PathBuf>, Vec<PathBuf>) = submounts
        .into_iter()
        .partition(|m| read_only::covers(&config.read_only, m));
    let mut layers = vec![Layer::root_in(&home, config)];
    layers.extend(
        submounts
            .into_iter()
            .map(|mount_point| Layer::submount_in(&home, config, mount_point)),
    );
    make_folders(&config.name, &home, &layers)?;
    if let Some(disk) = config.limits.disk {
        let folders: Vec<&Path> = layers
            .iter()
            .flat_map(|layer| [layer.upper.as_path(), layer.work.as_path()])
            .collect();
        crate::disk::apply(&config.name, root.dir(), vm, disk, &folders)?;
    }
    Ok(ForStart {
        layers,
        read_only: config.read_only.clone(),
        read_only_mounts: under_read_only,
        memory_layer,
    })
}

/// Checks that the folders of `layers` (in `home`) are folders, making those of the layers of
/// filesystems under the base where missing, each reached beneath the folder `home` is in
/// without following a link ([`feather_sys::beneath::make_dirs`]). Their overlays are mounted
/// by these names next (by init, or the restoring child), and a link at one (put there by hand
/// or by an older feather's import, copied by a backup) would make the folder it names, any of
/// the host's, the VM's writable layer: the start or restore is refused naming it instead.
/// (The overlays are mounted by name, not through the descriptors opened here: the upper
/// folder's name in the overlay's options is how a checkpoint tells the VM's own layers from
/// another overlay, `snapshot::is_own_layer`. Only the host's root can change the names in
/// the VM's folder between the check and the mount.)
pub fn make_folders(name: &VmName, home: &Home, layers: &[Layer]) -> Result<()> {
    let Some(dir) = home.mounts.parent() else {
        return Ok(());
    };
    let pinned = feather_sys::beneath::open_root(dir).at(dir)?;
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o755);
    for layer in layers {
        for folder in [&layer.upper, &layer.work] {
            let rel = folder.strip_prefix(dir).unwrap_or(folder);
            let made = if layer.mount_point == Path::new("/") {
                // The root layer's folders are the VM's from its creation: never made anew.
                feather_sys::beneath::open_folder(&pinned, rel)
            } else {
                feather_sys::beneath::make_dirs(&pinned, rel, mode)
            };
            made.map_err(|e| not_a_layer_folder(name, folder, e))?;
        }
    }
    Ok(())
}

fn not_a_layer_folder(name: &VmName, folder: &Path, source: std::io::Error) -> VmError {
    let why = match source.raw_os_error() {
        Some(libc::ELOOP) => "is a link, or lies beneath one",
        Some(libc::ENOTDIR) => "is not a folder, or lies beneath a file",
        _ => "cannot be opened as a folder beneath the VM's folder",
    };
    VmError::Io {
        vm: name.to_string(),
        doing: format!(
            "the layer folder {} {why}, which feather never makes: its overlay would write \
             elsewhere than the VM's folder. Nothing was mounted; put the layer's own folder \
             there (or remove the entry, and the VM starts that layer empty)",
            feather_core::display::escape_path(folder)
        ),
        source,
    }
}

/// What each layer of a VM lay over when it last started or was restored, as the host's root
/// saw it then: the mount its lower folder was on, by the kernel's unique mount id (never
/// reused within a boot), with the boot's id (`lowers.json` in the VM's folder, see
/// [`VmDir::lower_mounts`]). `diff` and `commit` read a layer's lower folder only while it is
/// still on that mount ([`SeenLowers::saw`]): a filesystem mounted on the folder since, or the
/// folder beneath the one the VM saw once that is unmounted, is a filesystem the VM never saw.
/// Mount ids are those of one boot and of the mount namespace the record was taken in (a copy
/// of a namespace has its own mounts): from another boot or namespace (a systemd unit with
/// `PrivateTmp=`, `unshare -m`), the lower folder itself is compared instead, by what names it
/// on a filesystem with an id of its own ([`FolderOn`]). A layer the record does not name, one whose
/// folder could not be opened when it was taken, and one the record cannot tell from another
/// is not read ([`Unseen`]). A VM without a record (never started, or by a feather from before
/// it) has its root layer's lower read as it is, and no submount layer's
/// ([`SeenLowers::judge`]).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeenLowers {
    boot: String,
    /// The layers' folder names ([`escape`]: `""` for the root layer) and their mount ids
    /// ([`NONE_SEEN`], [`UNOPENED`], [`NO_MOUNT_ID`] aside).
    mounts: BTreeMap<String, u64>,
    /// The mount namespace of the record (the inode of `/proc/self/ns/mnt`); 0 in a record by
    /// a feather from before it, whose mount ids are compared from any namespace.
    #[serde(default)]
    namespace: u64,
    /// The lower folders' (st_dev, st_ino), by the names of `mounts` (none for [`NONE_SEEN`]):
    /// a filesystem mounted over the folder shows its own root, the folder beneath one
    /// unmounted is another inode, and only a bind of the folder itself (harmless) shows both.
    #[serde(default)]
    folders: BTreeMap<String, (u64, u64)>,
    /// The lower folders' filesystems and file handles, by the names of `mounts`: what tells
    /// the folder from another boot or mount namespace, where (st_dev, st_ino) repeat (review
    /// f27 N6: another tmpfs, FUSE or btrfs mount takes the lowest free anonymous device, with
    /// the same root inode). Absent in a record by a feather from before it.
    #[serde(default)]
    filesystems: BTreeMap<String, FolderOn>,
    /// The record's file is there but is not what feather writes: every layer is refused.
    #[serde(skip)]
    unreadable: bool,
}

/// Why `diff` and `commit` do not read the host folder beneath a layer ([`SeenLowers::saw`]):
/// every change of the layer is then marked `host-mount`, and `commit` refuses it, saying this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unseen {
    /// The folder is not on the filesystem the layer lay over at the VM's last start or
    /// restore: one mounted on it since, the one the VM saw unmounted, the folder gone or made
    /// anew, or (from another boot) another disk or a fresh tmpfs there.
    Replaced,
    /// The record of the VM's last start does not name the layer: it was not layered then
    /// (nothing was mounted there), and what is mounted there now is no filesystem it saw
    /// (review gl27 M3: drive B mounted where drive A was at an earlier run).
    Unrecorded,
    /// The folder could not be opened when the start recorded it (a user's FUSE mount without
    /// `allow_other`): nothing tells what the layer lay over.
    Unopened,
    /// The record is of another boot or mount namespace, and holds nothing that tells the
    /// folder (a record by an older feather, a filesystem without file handles or a
    /// filesystem id, as FUSE, or one whose id is its device number and which gives no volume
    /// UUID, as FAT).
    Unprovable,
    /// The record is there but cannot be read.
    Unreadable,
}

impl Unseen {
    /// What is wrong, after "the host's folder beneath the VM's layer at PATH".
    pub fn why(self) -> &'static str {
        match self {
            Unseen::Replaced => {
                "is not on the filesystem the layer lay over at the VM's last start (one was \
                 mounted there since, or the one the VM saw was unmounted or replaced, or the \
                 host restarted with another filesystem there)"
            }
            Unseen::Unrecorded => {
                "was not layered at the VM's last start (nothing was mounted there then), or the \
                 VM has no record of what its layers lay over (imported and not started since, \
                 or last started by an older feather): what is there now is no filesystem the \
                 VM is known to have seen with these changes"
            }
            Unseen::Unopened => {
                "could not be opened when the VM last started, so nothing tells what the \
                 layer lay over"
            }
            Unseen::Unprovable => {
                "cannot be told from another filesystem: the VM's record of what its layers lay \
                 over is of another boot or mount namespace and names no file handle for it, or \
                 its filesystem's id is only its device number and it gives no volume UUID \
                 (FAT, exFAT, squashfs; XFS on a kernel without the FS_IOC_GETFSUUID ioctl, \
                 which came with Linux 6.9), which another volume in the same slot repeats"
            }
            Unseen::Unreadable => "cannot be checked: the VM's record lowers.json is unreadable",
        }
    }

    /// What the user can do.
    pub fn remedy(self) -> &'static str {
        match self {
            Unseen::Replaced => {
                "unmount what was mounted there since, or mount back the filesystem the VM saw, \
                 and commit again; or start the VM again to layer what is there now"
            }
            Unseen::Unrecorded | Unseen::Unopened => {
                "mount there the filesystem the VM saw and start the VM again, so that it is \
                 recorded (for a FUSE mount, with allow_other); or drop the layer's changes \
                 with `feather reset VM PATH`"
            }
            Unseen::Unprovable => {
                "run diff and commit in the mount namespace the VM was started from (and the \
                 same boot), or start the VM again to record what its layers lie over"
            }
            Unseen::Unreadable => "start the VM again to record what its layers lie over",
        }
    }
}

impl SeenLowers {
    /// The mounts the lowers of `layers` (the root layer first) are on now, found as `diff`
    /// finds them ([`open_lower`]); [`NONE_SEEN`] for a layer over no folder of the base's (a
    /// restored layer whose filesystem went, [`Layer::over_nothing`], a folder removed). A
    /// lower that cannot be opened (a user's FUSE mount root may not enter) is recorded as
    /// [`UNOPENED`], never read: the record fails no start that went on before it (the
    /// layer's own mount decides).
    pub fn now(base_path: &Path, layers: &[Layer]) -> std::io::Result<SeenLowers> {
        let base = feather_sys::beneath::open_root(base_path)?;
        let mut seen = SeenLowers {
            boot: feather_core::store::boot_id().unwrap_or_default(),
            namespace: mount_namespace()?,
            ..SeenLowers::default()
        };
        for layer in layers {
            let name = escape(&layer.mount_point);
            let lower = match layer.over_nothing || !layer.lower.starts_with(base_path) {
                true => Ok(None),
                false => open_lower(&base, base_path, layer),
            };
            let found = lower.and_then(|lower| lower.map(|l| Found::of(&l)).transpose());
            let id = match found {
                Ok(Some(found)) => {
                    seen.folders.insert(name.clone(), found.folder);
                    seen.filesystems.insert(name.clone(), found.on);
                    found.mount
                }
                Ok(None) => NONE_SEEN,
                Err(_) => UNOPENED,
            };
            seen.mounts.insert(name, id);
        }
        Ok(seen)
    }

    /// Records what the lowers of `layers` are on now, for the VM's `diff` and `commit`, aside
    /// ([`pending`]): it replaces the VM's record only once the start or restore succeeded
    /// ([`SeenLowers::settle`]). A start that fails leaves the record of the run that made the
    /// layer's changes, which vouches for them (review lowers28 L3: before, a failed start over
    /// drive B left a record naming B, and commit wrote drive A's changes into B). `sync`: when
    /// it reaches the disk. Returns the record as written, for a caller that confirms it
    /// itself ([`SeenLowers::confirm_recorded`]).
    pub fn record(
        vm: &VmDir,
        config: &VmConfig,
        layers: &[Layer],
        sync: RecordSync,
    ) -> Result<SeenLowers> {
        let seen = SeenLowers::now(&config.base, layers).at(&config.base)?;
        let durability = match sync {
            RecordSync::Now => durability_of(config),
            RecordSync::Later => feather_core::atomic::Durability::Volatile,
        };
        seen.write(&pending(vm), vm, durability)?;
        Ok(seen)
    }

    /// Syncs the record [`SeenLowers::record`] set aside ([`RecordSync::Later`]), for a kept VM: its contents
    /// reach the disk before [`SeenLowers::settle`] renames it into place (and syncs that).
    pub fn sync_pending(vm: &VmDir, config: &VmConfig) -> Result<()> {
        if config.ephemeral {
            return Ok(());
        }
        let path = pending(vm);
        fs::File::open(&path)
            .and_then(|file| file.sync_all())
            .at(&path)?;
        Ok(())
    }

    /// Makes the record [`SeenLowers::record`] set aside (confirmed) the VM's record: its
    /// start or restore succeeded, and its layers lie over what it names.
    pub fn settle(vm: &VmDir, config: &VmConfig) -> Result<()> {
        let path = vm.lower_mounts();
        fs::rename(pending(vm), &path).at(&path)?;
        if !config.ephemeral {
            fs::File::open(vm.path())
                .and_then(|dir| dir.sync_all())
                .at(vm.path())?;
        }
        Ok(())
    }

    /// Confirms the VM's record with what its init (or restoring child) pinned beneath its
    /// layers (`pinned`): a layer where init held another folder than the record names is
    /// recorded as init saw it (its mount id unknown: the folder is compared,
    /// [`NO_MOUNT_ID`]), so that the filesystem recorded, mounted back there later, is not
    /// taken for it; one whose folder init could not read is refused ([`UNOPENED`]).
    pub fn confirm(vm: &VmDir, config: &VmConfig, pinned: &[PinnedLower]) -> Result<()> {
        match SeenLowers::read(&pending(vm)) {
            Some(seen) => seen.confirm_recorded(vm, config, pinned),
            None => Ok(()),
        }
    }

    /// [`SeenLowers::confirm`] with the record [`SeenLowers::record`] returned, by the
    /// process that wrote it and holds the VM's keeper lock since (a start): the file holds
    /// the same, so it is not read back.
    pub fn confirm_recorded(
        mut self,
        vm: &VmDir,
        config: &VmConfig,
        pinned: &[PinnedLower],
    ) -> Result<()> {
        match self.take_pinned(pinned) {
            true => self.write(&pending(vm), vm, durability_of(config)),
            false => Ok(()),
        }
    }

    /// Removes the record a failed start or restore set aside: the VM's record stays.
    pub fn drop_pending(vm: &VmDir) {
        let _ = fs::remove_file(pending(vm));
    }

    /// [`SeenLowers::confirm`] on the record in memory: whether it changed.
    fn take_pinned(&mut self, pinned: &[PinnedLower]) -> bool {
        let mut changed = false;
        for PinnedLower {
            layer,
            folder,
            over_nothing,
        } in pinned
        {
            let recorded = (self.folders.get(layer), self.filesystems.get(layer));
            if *over_nothing {
                if self.mounts.insert(layer.clone(), NONE_SEEN) != Some(NONE_SEEN) {
                    self.folders.remove(layer);
                    self.filesystems.remove(layer);
                    changed = true;
                }
                continue;
            }
            match folder {
                Some((id, on)) if recorded == (Some(id), Some(on)) => continue,
                Some((id, on)) => {
                    self.folders.insert(layer.clone(), *id);
                    self.filesystems.insert(layer.clone(), on.clone());
                    self.mounts.insert(layer.clone(), NO_MOUNT_ID);
                }
                None => {
                    self.mounts.insert(layer.clone(), UNOPENED);
                }
            }
            changed = true;
        }
        changed
    }

    fn write(
        &self,
        path: &Path,
        vm: &VmDir,
        durability: feather_core::atomic::Durability,
    ) -> Result<()> {
        let text = serde_json::to_vec(self).map_err(crate::error::encode(vm.name(), "lowers"))?;
        feather_core::atomic::write_atomic(path, &text, durability)?;
        Ok(())
    }

    /// The VM's record, of any boot; None if it has none. One that cannot be read refuses
    /// every layer ([`Unseen::Unreadable`]).
    pub fn recorded(vm: &VmDir) -> Option<SeenLowers> {
        SeenLowers::read(&vm.lower_mounts())
    }

    /// [`SeenLowers::recorded`] from the file `path`.
    fn read(path: &Path) -> Option<SeenLowers> {
        let text = match fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            read => read.ok(),
        };
        let parsed = text.and_then(|text| serde_json::from_slice(&text).ok());
        Some(parsed.unwrap_or(SeenLowers {
            unreadable: true,
            ..SeenLowers::default()
        }))
    }

    /// [`SeenLowers::saw`] with the VM's record, if it has one. Without one (a VM never
    /// started, or last started by a feather from before the record), the root layer's lower,
    /// the base, is read as it is, but a submount layer's is not ([`Unseen::Unrecorded`]):
    /// such a layer exists only because a start made it (which records) or an archive was
    /// imported (which carries no record, and chose the layer: review lowers28 L4).
    pub fn judge(
        seen: Option<&SeenLowers>,
        layer: &Layer,
        lower: Option<&File>,
    ) -> std::io::Result<Option<Unseen>> {
        match seen {
            Some(seen) => seen.saw(layer, lower),
            None if layer.mount_point == Path::new("/") => Ok(None),
            None => Ok(Some(Unseen::Unrecorded)),
        }
    }

    /// Whether `lower`, the lower folder of `layer` opened now (None: the base has none), is
    /// the folder the VM saw there: None if so, else why not. A folder gone is not what the VM
    /// saw: what commit would make in its place lies on another filesystem. A layer the record
    /// does not name was not layered at the last start, and is not either.
    pub fn saw(&self, layer: &Layer, lower: Option<&File>) -> std::io::Result<Option<Unseen>> {
        if self.unreadable {
            return Ok(Some(Unseen::Unreadable));
        }
        let name = escape(&layer.mount_point);
        let Some(&id) = self.mounts.get(&name) else {
            return Ok(Some(Unseen::Unrecorded));
        };
        if id == UNOPENED {
            return Ok(Some(Unseen::Unopened));
        }
        let lower = match lower {
            Some(lower) if id != NONE_SEEN => lower,
            Some(_) => return Ok(Some(Unseen::Replaced)),
            None => return Ok((id != NONE_SEEN).then_some(Unseen::Replaced)),
        };
        let same_boot = feather_core::store::boot_id().is_some_and(|boot| boot == self.boot);
        let same_namespace = self.namespace == 0 || self.namespace == mount_namespace()?;
        if same_boot && same_namespace && id != NO_MOUNT_ID {
            // The folder too: a base that is a folder of its mount, renamed and made anew
            // there, is on the same mount (review lowers28 L5).
            let folder_now = folder_id(lower)?;
            let moved = self
                .folders
                .get(&name)
                .is_some_and(|&seen| seen != folder_now);
            return Ok((moved || mount_id_of(lower)? != id).then_some(Unseen::Replaced));
        }
        self.same_folder(&name, lower, same_boot)
    }

    /// [`SeenLowers::saw`] from another boot or mount namespace (or without mount ids): the
    /// folder itself compared, by what names it ([`FolderOn::proves`]). Its device number only within one
    /// boot: that of a filesystem without a disk of its own (tmpfs, a btrfs subvolume, NFS) is
    /// handed out in mount order.
    fn same_folder(
        &self,
        name: &str,
        lower: &File,
        same_boot: bool,
    ) -> std::io::Result<Option<Unseen>> {
        let (Some(&(dev, ino)), Some(on)) = (self.folders.get(name), self.filesystems.get(name))
        else {
            return Ok(Some(Unseen::Unprovable));
        };
        if !on.proves(dev) {
            return Ok(Some(Unseen::Unprovable));
        }
        let (dev_now, ino_now) = folder_id(lower)?;
        let now = FolderOn::of(lower)?;
        if on.lost_its_proof(&now, dev) {
            return Ok(Some(Unseen::Unprovable));
        }
        let same = ino == ino_now && (dev == dev_now || !same_boot) && on.matches(&now, dev);
        Ok((!same).then_some(Unseen::Replaced))
    }
}

/// What a lower folder is on, as [`SeenLowers::now`] records it.
struct Found {
    mount: u64,
    folder: (u64, u64),
    on: FolderOn,
}

impl Found {
    fn of(lower: &File) -> std::io::Result<Found> {
        let mount = match mount_id_of(lower) {
            // A kernel without unique mount ids (before 6.8): the folder is compared instead.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => NO_MOUNT_ID,
            id => id?,
        };
        Ok(Found {
            mount,
            folder: folder_id(lower)?,
            on: FolderOn::of(lower)?,
        })
    }
}

/// When a start's or restore's record of what its layers lie over ([`SeenLowers::record`])
/// reaches the disk.
pub enum RecordSync {
    /// As it is written: synced for a kept VM ([`durability_of`]).
    Now,
    /// Later, by [`SeenLowers::sync_pending`]: a start syncs it while init assembles the
    /// root, before it settles it, so that the two journal commits of a synced write (4–10 ms
    /// on this host's ext4, before init's clone) are off the way to the VM's start.
    Later,
}

/// How a VM's record of what its layers lie over is written: synced for a kept VM, whose
/// `diff` and `commit` read it after a power cut.
fn durability_of(config: &VmConfig) -> feather_core::atomic::Durability {
    match config.ephemeral {
        true => feather_core::atomic::Durability::Volatile,
        false => feather_core::atomic::Durability::Durable,
    }
}

/// Where a start or restore sets its record aside until it succeeded ([`SeenLowers::settle`]).
fn pending(vm: &VmDir) -> PathBuf {
    vm.path().join(".lowers.json.pending")
}

/// The caller's mount namespace: the inode of its `/proc/self/ns/mnt`.
fn mount_namespace() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata("/proc/self/ns/mnt")?.ino())
}

/// The mount id recorded for a layer that lay over nothing of the base's: the kernel's unique
/// ids are never 0, so whatever is there later is a filesystem the VM never saw.
const NONE_SEEN: u64 = 0;

/// The mount id recorded for a layer whose lower folder could not be opened (nor its mount
/// read): never read ([`Unseen::Unopened`]). Unique mount ids count up from 2^32, one a mount.
const UNOPENED: u64 = u64::MAX;

/// The mount id recorded where the kernel reports none (before 6.8): the folder is compared.
const NO_MOUNT_ID: u64 = u64::MAX - 1;

fn mount_id_of(dir: &File) -> std::io::Result<u64> {
    feather_sys::mount::mount_id(dir).map_err(|e| std::io::Error::from_raw_os_error(e.errno as i32))
}

/// The host folder beneath `layer`, opened beneath the base (`base`, opened from `base_path`);
/// None when the host has none there.
pub fn open_lower(base: &File, base_path: &Path, layer: &Layer) -> std::io::Result<Option<File>> {
    let rel = layer.lower.strip_prefix(base_path).unwrap_or(Path::new(""));
    feather_sys::beneath::open_dir(base, rel)
}

/// The layers that hold a VM's changes, whether or not it runs: the root layer and every
/// submount layer it has ever had. An entry of `mounts/` that is not a folder, or whose `upper`
/// is not (a link), is none: no start mounts it ([`make_folders`]), and `diff` or `commit`
/// would read the folder the link names as the VM's changes.
pub fn existing(vm: &VmDir, config: &VmConfig) -> Vec<Layer> {
    let mut layers = vec![Layer::root(vm, config)];
    if let Ok(entries) = fs::read_dir(home(vm, config).mounts) {
        let is_folder = |path: &Path| fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        let mut points: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| is_folder(&e.path()) && is_folder(&e.path().join("upper")))
            .filter_map(|e| unescape(e.file_name().as_bytes()))
            .collect();
        points.sort();
        layers.extend(points.into_iter().map(|p| Layer::submount(vm, config, p)));
    }
    layers
}

/// The name a layer goes by in the VM's record of what its layers lie over (its folder's name,
/// [`escape`] of its mount point: `""` for the root layer).
pub fn name(layer: &Layer) -> String {
    escape(&layer.mount_point)
}

fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// Names a submount layer's folder after its mount point, reversibly, in the style of
/// systemd-escape: `/mnt/data-1` becomes `mnt-data\x2d1`.
fn escape(mount_point: &Path) -> String {
    let mut name = String::new();
    for (i, component) in relative(mount_point).components().enumerate() {
        if i > 0 {
            name.push('-');
        }
        for byte in component.as_os_str().as_encoded_bytes() {
            match byte {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => name.push(*byte as char),
                other => name.push_str(&format!("\\x{other:02x}")),
            }
        }
    }
    name
}

/// The mount point a layer's folder is named after ([`escape`]), every byte kept: a mount
/// point need not be UTF-8.
fn unescape(name: &[u8]) -> Option<PathBuf> {
    let mut bytes = vec![b'/'];
    let mut rest = name;
    while let Some((&first, tail)) = rest.split_first() {
        match first {
            b'-' => {
                bytes.push(b'/');
                rest = tail;
            }
            b'\\' => {
                let hex = std::str::from_utf8(tail.get(1..3)?).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &tail[3..];
            }
            other => {
                bytes.push(other);
                rest = tail;
            }
        }
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        for path in ["/mnt/data", "/mnt/data-1", "/srv/with space/x\\y", "/a.b_c"] {
            let name = escape(Path::new(path));
            assert!(!name.contains('/'), "{name}");
            assert_eq!(unescape(name.as_bytes()).unwrap(), PathBuf::from(path));
        }
    }

    /// A mount point that is not UTF-8 names a layer folder that names it back: before, the
    /// folder was passed over, and `diff` and `commit` never saw that layer's changes.
    #[test]
    fn escaping_round_trips_bytes_that_are_not_utf8() {
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/mnt/b\xff-\xc3"));
        let name = escape(path);
        assert_eq!(name, "mnt-b\\xff\\x2d\\xc3");
        assert_eq!(unescape(name.as_bytes()).unwrap(), path);
    }

    /// A folder of the test's own holding `mnt`, removed with what is in it when dropped, also
    /// when the test fails (after the mounts in it, which are declared after it).
    fn scratch(label: &str) -> ScratchDir {
        let scratch = ScratchDir::new(&format!("lowers-{label}"));
        fs::create_dir_all(scratch.0.join("mnt")).unwrap();
        scratch
    }

    use feather_testkit::{ScratchDir, TmpfsMount};

    /// A layer at `mount_point` over the base `base` (its own folders never used here).
    fn layer_over(base: &Path, mount_point: &str) -> Layer {
        Layer {
            mount_point: mount_point.into(),
            lower: base.join(relative(Path::new(mount_point))),
            upper: PathBuf::from("/nonexistent/upper"),
            work: PathBuf::from("/nonexistent/work"),
            hiding: None,
            over_nothing: false,
        }
    }

    /// What `diff` would find the layer over now, judged against `seen`.
    fn judged(seen: &SeenLowers, base: &Path, layer: &Layer) -> Option<Unseen> {
        let opened = feather_sys::beneath::open_root(base).unwrap();
        let lower = open_lower(&opened, base, layer).unwrap();
        seen.saw(layer, lower.as_ref()).unwrap()
    }

    /// A layer the record does not name (not layered at the last start: drive A at an
    /// earlier run, drive B there now) is not read; before, it was read unchecked (review gl27
    /// M3 b).
    #[test]
    fn a_layer_the_record_does_not_name_is_not_read() {
        let scratch = scratch("unnamed");
        let base = &scratch.0;
        let root = layer_over(base, "/");
        let seen = SeenLowers::now(base, std::slice::from_ref(&root)).unwrap();
        let _drive_b = TmpfsMount::at(&base.join("mnt/usb"));
        assert_eq!(judged(&seen, base, &root), None);
        let usb = layer_over(base, "/mnt/usb");
        assert_eq!(judged(&seen, base, &usb), Some(Unseen::Unrecorded));
    }

    /// A lower folder that could not be opened at the start (here a name too long; a user's
    /// FUSE mount without allow_other in life) is recorded so and never read; before, it was
    /// left out of the record, and read unchecked whatever was there later (review gl27 M3 c).
    #[test]
    fn a_lower_that_could_not_be_opened_at_the_start_is_never_read() {
        let scratch = scratch("unopened");
        let base = &scratch.0;
        let long = format!("/mnt/{}", "x".repeat(300));
        let layer = layer_over(base, &long);
        let seen = SeenLowers::now(base, std::slice::from_ref(&layer)).unwrap();
        assert_eq!(seen.mounts.get(&escape(Path::new(&long))), Some(&UNOPENED));
        let other = fs::File::open(base).unwrap();
        for lower in [None, Some(&other)] {
            assert_eq!(seen.saw(&layer, lower).unwrap(), Some(Unseen::Unopened));
        }
    }

    /// A record of another boot is checked by the folder itself (its filesystem and handle):
    /// the same filesystem still there is read, another tmpfs mounted at its place is not.
    /// Before, a record of another boot was not checked at all (review gl27 M3 a).
    #[test]
    fn a_record_of_another_boot_tells_the_filesystem_by_its_handle() {
        let scratch = scratch("boot");
        let base = &scratch.0;
        let mut layers = vec![layer_over(base, "/"), layer_over(base, "/mnt/t")];
        let first = TmpfsMount::at(&base.join("mnt/t"));
        let mut seen = SeenLowers::now(base, &layers).unwrap();
        seen.boot = "another boot".into();
        let file = base.join("lowers.json");
        fs::write(&file, serde_json::to_vec(&seen).unwrap()).unwrap();
        let mut seen = SeenLowers::read(&file).expect("a record of another boot is read");
        for layer in &layers {
            assert_eq!(judged(&seen, base, layer), None, "{layer:?}");
        }
        drop(first);
        let _second = TmpfsMount::at(&base.join("mnt/t"));
        assert_eq!(judged(&seen, base, &layers[1]), Some(Unseen::Replaced));
        assert_eq!(judged(&seen, base, &layers[0]), None);
        // A record by a feather from before the handles: nothing tells the folder.
        seen.filesystems.clear();
        layers.truncate(1);
        assert_eq!(judged(&seen, base, &layers[0]), Some(Unseen::Unprovable));
    }

    /// A filesystem whose id is only its device number (FAT, exFAT, f2fs: `statfs`'s
    /// `f_fsid` is `huge_encode_dev` of its disk, the folder's st_dev) and which gives no
    /// volume UUID tells nothing from another boot or namespace: another volume in the same
    /// slot repeats it, and on FAT the root's handle too. Before, such a record passed for
    /// proof (review lowers28 M1). One with a UUID (XFS) is told by it, and a UUID recorded
    /// must be found again; a record from before UUIDs is proved by the rest.
    #[test]
    fn a_filesystem_id_that_is_the_device_number_proves_nothing_without_a_uuid() {
        let on = FolderOn {
            kind: 0x4d44, // MSDOS_SUPER_MAGIC
            fsid: 0x0811,
            handle: Some("1:0100000000000000".into()),
            uuid: None,
        };
        assert!(!on.proves(0x0811), "FAT on /dev/sdb1 (8:17)");
        assert!(on.proves(0x0812), "an id that is not the folder's device");
        assert!(
            !FolderOn {
                fsid: 0,
                ..on.clone()
            }
            .proves(0x0811),
            "FUSE"
        );
        let xfs = FolderOn {
            kind: 0x5846_5342, // XFS_SUPER_MAGIC
            uuid: Some("2a38a18064b64111baf2618329f089dd".into()),
            ..on.clone()
        };
        assert!(xfs.proves(0x0811), "XFS on /dev/sdb1: its UUID");
        let other_volume = FolderOn {
            uuid: Some("dc777532b0b44e329f7ae595dfc4cac6".into()),
            ..xfs.clone()
        };
        assert!(
            !xfs.matches(&other_volume, 0x0811),
            "another XFS volume in the slot"
        );
        assert!(xfs.matches(&xfs.clone(), 0x0811));
        let renumbered = FolderOn {
            fsid: 0x0821,
            ..xfs.clone()
        };
        assert!(
            xfs.matches(&renumbered, 0x0811),
            "the same XFS volume, its disk sdc after a reboot"
        );
        assert!(
            !on.matches(
                &FolderOn {
                    fsid: 0x0821,
                    ..on.clone()
                },
                0x0812
            ),
            "an id of its own must be found again"
        );
        let before_uuids = FolderOn {
            uuid: None,
            ..xfs.clone()
        };
        assert!(
            before_uuids.matches(&xfs, 0x0811),
            "a record from before UUIDs"
        );
        // Its UUID not found now (a kernel without the ioctl): nothing proves it either way;
        // ext4's own id, from its UUID, still does (review lowroots29 L3).
        assert!(
            xfs.lost_its_proof(&before_uuids, 0x0811),
            "XFS without its UUID"
        );
        let ext4 = FolderOn {
            kind: 0xef53, // EXT4_SUPER_MAGIC
            fsid: 0x5d1c_0e2a_77b4_3f01,
            ..xfs.clone()
        };
        let ext4_without = FolderOn {
            uuid: None,
            ..ext4.clone()
        };
        assert!(!ext4.lost_its_proof(&ext4_without, 0x0811));
        assert!(
            ext4.matches(&ext4_without, 0x0811),
            "ext4 proved by its own id"
        );
        assert!(
            !FolderOn {
                handle: None,
                ..xfs
            }
            .proves(0x0812),
            "no handle"
        );
    }

    /// A start's record replaces the VM's only once the start succeeded: one that failed
    /// (over drive B, where the layer's changes were made over drive A) leaves the record that
    /// refuses B. Before, the record was written at once, and named B (review lowers28 L3).
    #[test]
    fn a_failed_starts_record_replaces_nothing() {
        let scratch = scratch("pending");
        let base = &scratch.0;
        let root = StateRoot::new(Some(base.join("state")));
        let config: VmConfig = toml::from_str(&format!(
            "name = \"web\"\nid = \"abc\"\nbase = {:?}\ncreated = 0\n",
            base.display().to_string()
        ))
        .unwrap();
        let vm = root.vm(&config.name);
        fs::create_dir_all(vm.path()).unwrap();
        let layers = [layer_over(base, "/"), layer_over(base, "/mnt/t")];
        let a = TmpfsMount::at(&base.join("mnt/t"));
        let seen_a = SeenLowers::now(base, &layers).unwrap();
        seen_a
            .write(&vm.lower_mounts(), &vm, durability_of(&config))
            .unwrap();
        drop(a);
        let _b = TmpfsMount::at(&base.join("mnt/t"));
        SeenLowers::record(&vm, &config, &layers, RecordSync::Now).unwrap();
        let recorded = SeenLowers::recorded(&vm).unwrap();
        assert_eq!(
            recorded, seen_a,
            "the failed start's record replaced the VM's"
        );
        assert_eq!(judged(&recorded, base, &layers[1]), Some(Unseen::Replaced));
        SeenLowers::drop_pending(&vm);
        assert!(!pending(&vm).exists());
        // As a start writes it: unsynced before init's clone, synced beside init's assembly.
        SeenLowers::record(&vm, &config, &layers, RecordSync::Later).unwrap();
        SeenLowers::sync_pending(&vm, &config).unwrap();
        SeenLowers::settle(&vm, &config).unwrap();
        let recorded = SeenLowers::recorded(&vm).unwrap();
        assert_eq!(judged(&recorded, base, &layers[1]), None, "B, once started");
    }

    /// Without a record, the base beneath the root layer is read as it is, a submount
    /// layer's folder not: an imported VM's layer at `/mnt/backup` is no filesystem it is
    /// known to have seen. Before, every lower was read unchecked (review lowers28 L4).
    #[test]
    fn without_a_record_only_the_root_layers_lower_is_read() {
        let scratch = scratch("norecord");
        let base = &scratch.0;
        let lower = fs::File::open(base).unwrap();
        let root = layer_over(base, "/");
        assert_eq!(SeenLowers::judge(None, &root, Some(&lower)).unwrap(), None);
        let sub = layer_over(base, "/mnt");
        assert_eq!(
            SeenLowers::judge(None, &sub, Some(&lower)).unwrap(),
            Some(Unseen::Unrecorded)
        );
    }

    /// In the start's boot and namespace the folder is compared too, not only its mount: a
    /// lower that is a folder of its mount, renamed and made anew there, is not the one the
    /// VM saw. Before, only the mount id was (review lowers28 L5).
    #[test]
    fn a_lower_folder_made_anew_on_the_same_mount_is_not_read() {
        let scratch = scratch("anew");
        let base = &scratch.0;
        fs::create_dir(base.join("mnt/d")).unwrap();
        let layer = layer_over(base, "/mnt/d");
        let seen = SeenLowers::now(base, std::slice::from_ref(&layer)).unwrap();
        assert_eq!(judged(&seen, base, &layer), None);
        fs::rename(base.join("mnt/d"), base.join("mnt/d-old")).unwrap();
        fs::create_dir(base.join("mnt/d")).unwrap();
        assert_eq!(judged(&seen, base, &layer), Some(Unseen::Replaced));
    }

    /// The record confirmed with what init pinned: the same folder changes nothing (the mount
    /// id stays, compared as before); another is taken as init saw it and compared by folder
    /// (the one first recorded then refused); one init could not read is refused.
    #[test]
    fn the_record_takes_what_init_pinned() {
        let scratch = scratch("pinned");
        let base = &scratch.0;
        let layers = [layer_over(base, "/"), layer_over(base, "/mnt/t")];
        let a = TmpfsMount::at(&base.join("mnt/t"));
        let mut seen = SeenLowers::now(base, &layers).unwrap();
        // As init and a restoring child hold them: O_PATH, which takes no ioctl (a tmpfs's
        // volume UUID is asked through the descriptor reopened).
        let held = |folder: &Path| {
            let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY;
            fs::File::from(nix::fcntl::open(folder, flags, nix::sys::stat::Mode::empty()).unwrap())
        };
        let held_a = held(&a.0);
        let b = TmpfsMount::at(&base.join("mnt/t"));
        let held_b = held(&b.0);
        let held_base = held(base);
        let same = [
            PinnedLower::of(name(&layers[0]), &held_base),
            PinnedLower::of(name(&layers[1]), &held_a),
        ];
        assert!(!seen.take_pinned(&same), "nothing changes: {seen:?}");
        let other = [PinnedLower::of(name(&layers[1]), &held_b)];
        assert!(seen.take_pinned(&other));
        assert_eq!(seen.mounts.get("mnt-t"), Some(&NO_MOUNT_ID));
        assert_eq!(
            judged(&seen, base, &layers[1]),
            None,
            "B, which init layered"
        );
        drop(b);
        assert_eq!(
            judged(&seen, base, &layers[1]),
            Some(Unseen::Replaced),
            "A again"
        );
        let unread = [PinnedLower {
            layer: name(&layers[0]),
            folder: None,
            over_nothing: false,
        }];
        assert!(seen.take_pinned(&unread));
        assert_eq!(judged(&seen, base, &layers[0]), Some(Unseen::Unopened));
        // A restored layer mounted over the stand-in of a filesystem gone meanwhile: over
        // nothing, so whatever is there later is not what the VM saw.
        let gone = [PinnedLower::over_nothing(name(&layers[1]))];
        assert!(seen.take_pinned(&gone));
        assert!(!seen.take_pinned(&gone), "once");
        assert_eq!(
            judged(&seen, base, &layers[1]),
            Some(Unseen::Replaced),
            "A, over nothing"
        );
        drop(a);
    }

    /// A record that cannot be read refuses every layer; before, it was as none, and every
    /// layer was read unchecked (review gl27 M3).
    #[test]
    fn an_unreadable_record_refuses_every_layer() {
        let scratch = scratch("unreadable");
        let base = &scratch.0;
        let file = base.join("lowers.json");
        fs::write(&file, "{not json").unwrap();
        let seen = SeenLowers::read(&file).expect("a record that is there");
        assert_eq!(
            judged(&seen, base, &layer_over(base, "/")),
            Some(Unseen::Unreadable)
        );
        assert_eq!(SeenLowers::read(&base.join("none.json")), None);
    }

    /// From another mount namespace, a fresh tmpfs at the lower's place is not the one the
    /// VM saw, though its (st_dev, st_ino) may well be the same (the lowest free anonymous
    /// device, the root's inode): before, only those were compared (review f27 N6).
    #[test]
    fn from_another_namespace_a_fresh_tmpfs_is_told_from_the_one_seen() {
        let scratch = scratch("namespace");
        let base = &scratch.0;
        let layer = layer_over(base, "/mnt/t");
        let first = TmpfsMount::at(&base.join("mnt/t"));
        let mut seen = SeenLowers::now(base, std::slice::from_ref(&layer)).unwrap();
        seen.namespace = 1;
        assert_eq!(judged(&seen, base, &layer), None);
        drop(first);
        let _second = TmpfsMount::at(&base.join("mnt/t"));
        let now = folder_id(&fs::File::open(base.join("mnt/t")).unwrap()).unwrap();
        eprintln!(
            "(st_dev, st_ino) recorded {:?}, now {now:?}",
            seen.folders.get("mnt-t")
        );
        assert_eq!(judged(&seen, base, &layer), Some(Unseen::Replaced));
    }

    /// A restored layer over the stand-in for a filesystem that went is recorded as over
    /// nothing, also where the stand-in lies under the base (a state root under a base of
    /// `/`): before, the stand-in's own mount was recorded, and a folder made on that
    /// filesystem at the layer's place later was read as the one the VM saw (review gl27 L3).
    #[test]
    fn a_layer_over_the_stand_in_for_a_vanished_filesystem_is_recorded_over_nothing() {
        let scratch = scratch("vanished");
        let base = &scratch.0;
        fs::create_dir(base.join("vanished-lower")).unwrap();
        let layer = Layer {
            lower: base.join("vanished-lower"),
            over_nothing: true,
            ..layer_over(base, "/mnt/data")
        };
        let seen = SeenLowers::now(base, std::slice::from_ref(&layer)).unwrap();
        assert_eq!(seen.mounts.get("mnt-data"), Some(&NONE_SEEN));
        fs::create_dir(base.join("mnt/data")).unwrap();
        let remade = layer_over(base, "/mnt/data");
        assert_eq!(judged(&seen, base, &remade), Some(Unseen::Replaced));
    }

    /// A record by a feather from before the namespace and folders were recorded is still
    /// read (namespace 0: its mount ids are compared, as they were).
    #[test]
    fn a_record_without_namespace_or_folders_is_read() {
        let seen: SeenLowers =
            serde_json::from_str(r#"{"boot":"b","mounts":{"":7,"mnt-sub":0}}"#).unwrap();
        assert_eq!(seen.namespace, 0);
        assert!(seen.folders.is_empty());
        assert_eq!(seen.mounts.get(""), Some(&7));
    }
}

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
        // Every state root of the host, this one included: what is mounted in them (another
        // VM's disk image) is hidden from the VM, never one of its layers.
        let is_state = state_folders
            .iter()
            .any(|folder| entry.mount_point.starts_with(folder));
        if rel.as_os_str().is_empty() || own_tree || is_state || is_api_filesystem(&entry.fs_type) {
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
/// A VM without a record (never started, or by a feather from before it) or with one of
/// another boot (mount ids begin anew) has every lower read as it is. Mount ids are those of
/// the mount namespace the record was taken in (a copy of a namespace has its own mounts):
/// from another one (a systemd unit with `PrivateTmp=`, `unshare -m`), the lower folder's
/// (st_dev, st_ino) is compared instead.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeenLowers {
    boot: String,
    /// The layers' folder names ([`escape`]: `""` for the root layer) and their mount ids.
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
}

impl SeenLowers {
    /// The mounts the lowers of `layers` (the root layer first) are on now, found as `diff`
    /// finds them ([`open_lower`]); [`NONE_SEEN`] for a layer over no folder of the base's (a
    /// restored layer whose filesystem went, a folder removed). A lower that cannot be opened
    /// (a user's FUSE mount root may not enter) is left out, unchecked: the record fails no
    /// start that went on before it (the layer's own mount decides).
    pub fn now(base_path: &Path, layers: &[Layer]) -> std::io::Result<SeenLowers> {
        let base = feather_sys::beneath::open_root(base_path)?;
        let mut mounts = BTreeMap::new();
        let mut folders = BTreeMap::new();
        for layer in layers {
            let lower = match layer.lower.starts_with(base_path) {
                true => open_lower(&base, base_path, layer),
                false => Ok(None),
            };
            let seen = match lower {
                Ok(Some(lower)) => {
                    mount_id_of(&lower).and_then(|id| Ok((id, Some(folder_id(&lower)?))))
                }
                Ok(None) => Ok((NONE_SEEN, None)),
                Err(e) => Err(e),
            };
            if let Ok((id, folder)) = seen {
                let name = escape(&layer.mount_point);
                if let Some(folder) = folder {
                    folders.insert(name.clone(), folder);
                }
                mounts.insert(name, id);
            }
        }
        let boot = feather_core::store::boot_id().unwrap_or_default();
        Ok(SeenLowers {
            boot,
            mounts,
            namespace: mount_namespace()?,
            folders,
        })
    }

    /// Records what the lowers of `layers` are on now, for the VM's `diff` and `commit`.
    pub fn record(vm: &VmDir, config: &VmConfig, layers: &[Layer]) -> Result<()> {
        let path = vm.lower_mounts();
        let seen = SeenLowers::now(&config.base, layers).at(&config.base)?;
        let text = serde_json::to_vec(&seen).map_err(crate::error::encode(vm.name(), "lowers"))?;
        let durability = match config.ephemeral {
            true => feather_core::atomic::Durability::Volatile,
            false => feather_core::atomic::Durability::Durable,
        };
        feather_core::atomic::write_atomic(&path, &text, durability)?;
        Ok(())
    }

    /// The VM's record, if it has one of this boot.
    pub fn recorded(vm: &VmDir) -> Option<SeenLowers> {
        let text = fs::read(vm.lower_mounts()).ok()?;
        let seen: SeenLowers = serde_json::from_slice(&text).ok()?;
        let boot = feather_core::store::boot_id()?;
        (seen.boot == boot).then_some(seen)
    }

    /// Whether `lower`, the lower folder of `layer` opened now (None: the base has none), is
    /// on the mount the VM saw there; true for a layer the record does not name (not layered
    /// at the last start). A folder gone is not what the VM saw: what commit would make in
    /// its place lies on another filesystem. From another mount namespace than the record's,
    /// the folder itself is compared (its mount ids are not those of the record).
    pub fn saw(&self, layer: &Layer, lower: Option<&File>) -> std::io::Result<bool> {
        let name = escape(&layer.mount_point);
        let Some(&id) = self.mounts.get(&name) else {
            return Ok(true);
        };
        let Some(lower) = lower else {
            return Ok(id == NONE_SEEN);
        };
        if self.namespace == 0 || self.namespace == mount_namespace()? {
            return Ok(mount_id_of(lower)? == id);
        }
        Ok(self.folders.get(&name) == Some(&folder_id(lower)?))
    }
}

/// The caller's mount namespace: the inode of its `/proc/self/ns/mnt`.
fn mount_namespace() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata("/proc/self/ns/mnt")?.ino())
}

/// A folder's (st_dev, st_ino).
fn folder_id(dir: &File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = dir.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// The mount id recorded for a layer that lay over nothing of the base's: the kernel's unique
/// ids are never 0, so whatever is there later is a filesystem the VM never saw.
const NONE_SEEN: u64 = 0;

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

//! The container's root, assembled in its new mount namespace from the config's `root`,
//! `mounts`, `linux.devices`, `maskedPaths`, `readonlyPaths` and `linux.rootfsPropagation`.
//!
//! The rootfs comes from an image, so it is hostile: a mount destination is resolved inside it
//! one component at a time ([`make_target`]) — a symlink in the image can never point a mount
//! at a host path — and every mount is made on that descriptor with the new mount API: a bind
//! is a detached copy of its source's descriptor (`open_tree`), a filesystem a detached mount
//! of its own (`fsopen`, `fsmount`), their flags set on the detached mount (`mount_setattr`),
//! and both attached onto the descriptor (`move_mount`). No path is looked up twice, and none
//! goes through a `/proc/self/fd/N` of the mount namespace, which in a namespace joined by
//! `path` is whatever that namespace's `/proc` is (runc's CVE-2021-30465 class). Missing
//! folders are made with mkdirat relative to their resolved parent.

use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mkdirat, mknodat, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::cgroups::{self, Groups};
use crate::sources::{resolve, Sources};

const NONE: Option<&str> = None;

pub fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// A mount's options split into flags to set, flags to clear, propagation changes and the
/// filesystem's own data.
struct Options {
    set: MsFlags,
    clear: MsFlags,
    propagation: Vec<MsFlags>,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> Options {
    let mut parsed = Options {
        set: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
    };
    for option in options {
        if let Some(flag) = propagation_flag(option) {
            parsed.propagation.push(flag);
            continue;
        }
        let (set, clear) = match option.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            _ => {
                parsed.data.push(option.clone());
                continue;
            }
        };
        parsed.set |= set;
        parsed.set &= !clear;
        parsed.clear |= clear;
    }
    parsed
}

/// Opens `path` inside `root` as an O_PATH descriptor, making what is missing: folders on the
/// way, and the last entry as a folder or an empty file. Walks one component at a time with
/// O_NOFOLLOW: a symlink is read and its target walked in its place (an absolute one from
/// the rootfs, `..` never above it), so a link in the image can lead the walk, and what it
/// makes, only to places inside the rootfs — also when the link's target does not exist yet.
pub fn make_target(root: &OwnedFd, path: &Path, directory: bool) -> Result<OwnedFd> {
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut pending, path);
    // The folders walked so far, the rootfs first.
    let mut walked: Vec<OwnedFd> = vec![reopen(root)?];
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            if walked.len() > 1 {
                walked.pop();
            }
            continue;
        }
        let last = pending.is_empty();
        let parent = walked.last().expect("the rootfs is never popped");
        let opened = openat(
            parent.as_fd(),
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        let entry = match opened {
            Ok(entry) => entry,
            Err(Errno::ENOENT) => {
                make_entry(parent, &name, !last || directory)
                    .with_context(|| format!("make {} in the rootfs", name.to_string_lossy()))?;
                pending.push(name);
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("open {} in the rootfs", path.display()))
            }
        };
        let kind = nix::sys::stat::fstat(&entry)?.st_mode & libc::S_IFMT;
        if kind == libc::S_IFLNK {
            links += 1;
            if links > 40 {
                bail!("{}: too many symbolic links", path.display());
            }
            let target = nix::fcntl::readlinkat(parent.as_fd(), name.as_os_str())?;
            if Path::new(&target).is_absolute() {
                walked.truncate(1);
            }
            push_components(&mut pending, Path::new(&target));
            continue;
        }
        if last {
            return Ok(entry);
        }
        if kind != libc::S_IFDIR {
            bail!(
                "{}: {} is not a folder",
                path.display(),
                name.to_string_lossy()
            );
        }
        walked.push(entry);
    }
    Ok(walked.pop().expect("the rootfs"))
}

/// Queues `path`'s components so that the first is popped first.
fn push_components(pending: &mut Vec<std::ffi::OsString>, path: &Path) {
    let names: Vec<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    pending.extend(names.into_iter().rev());
}

fn reopen(fd: &OwnedFd) -> Result<OwnedFd> {
    Ok(openat(
        fd.as_fd(),
        ".",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// A folder or an empty file named `name` in `parent` (an O_PATH descriptor).
fn make_entry(parent: &OwnedFd, name: &OsStr, directory: bool) -> nix::Result<()> {
    let made = if directory {
        mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755))
    } else {
        let at = openat(
            parent.as_fd(),
            ".",
            OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        openat(
            at.as_fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop)
    };
    match made {
        Err(Errno::EEXIST) => Ok(()),
        other => other,
    }
}

/// The per-mount flags among `flags` as `MOUNT_ATTR_*` bits, and the bits to clear with
/// them (the access-time field, when `flags` sets an access-time mode).
fn mount_attributes(flags: MsFlags) -> (u64, u64) {
    use feather_sys::mount::attr;
    let mut set = 0;
    for (flag, bit) in [
        (MsFlags::MS_RDONLY, attr::RDONLY),
        (MsFlags::MS_NOSUID, attr::NOSUID),
        (MsFlags::MS_NODEV, attr::NODEV),
        (MsFlags::MS_NOEXEC, attr::NOEXEC),
        (MsFlags::MS_NOATIME, attr::NOATIME),
        (MsFlags::MS_STRICTATIME, attr::STRICTATIME),
        (MsFlags::MS_NODIRATIME, attr::NODIRATIME),
    ] {
        if flags.contains(flag) {
            set |= bit;
        }
    }
    let atime = MsFlags::MS_NOATIME | MsFlags::MS_STRICTATIME | MsFlags::MS_RELATIME;
    let clear = if flags.intersects(atime) {
        attr::ATIME
    } else {
        0
    };
    (set, clear)
}

/// The superblock's flags among `flags`, as the generic options `fsconfig` takes.
fn superblock_options(flags: MsFlags) -> impl Iterator<Item = &'static str> {
    [
        (MsFlags::MS_RDONLY, "ro"),
        (MsFlags::MS_SYNCHRONOUS, "sync"),
        (MsFlags::MS_DIRSYNC, "dirsync"),
        (MsFlags::MS_MANDLOCK, "mand"),
    ]
    .into_iter()
    .filter(move |(flag, _)| flags.contains(*flag))
    .map(|(_, name)| name)
}

/// Sets each of `propagation` (as `mount` options name them) on the mount `fd` is on.
fn set_propagation(fd: &OwnedFd, propagation: &[MsFlags]) -> Result<()> {
    for flag in propagation {
        let recursive = flag.contains(MsFlags::MS_REC);
        feather_sys::mount::set_propagation(fd, *flag - MsFlags::MS_REC, recursive)
            .map_err(|e| anyhow::anyhow!("set propagation: {e}"))?;
    }
    Ok(())
}

/// Attaches the detached mount `tree` onto `target` (an `O_PATH` descriptor).
fn attach(tree: &OwnedFd, target: &OwnedFd, what: &str) -> Result<()> {
    feather_sys::mount::attach_tree(tree, target).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// A detached bind of exactly what `source` is (with the mounts below it when `recursive`).
fn clone_of(source: &OwnedFd, recursive: bool) -> Result<OwnedFd> {
    let tree = if recursive {
        feather_sys::mount::clone_tree_recursive(source)
    } else {
        feather_sys::mount::clone_tree(source)
    };
    tree.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Makes the mount namespace private (or as `linux.rootfsPropagation` says) and the rootfs a
/// mount point of its own, ready for pivot_root. Returns the rootfs path.
/// `hidden`: the host's state folders to hide in a container over the host (`host_base`).
pub fn prepare_root(
    spec: &Spec,
    bundle: &Path,
    dir: &Path,
    host_base: bool,
    hidden: &[PathBuf],
) -> Result<PathBuf> {
    // Slave, not private, by default (as runc): the host's later unmounts still reach the
    // container, and nothing the container mounts reaches the host.
    mount(NONE, "/", NONE, MsFlags::MS_SLAVE | MsFlags::MS_REC, NONE)
        .context("make the container's mounts private")?;
    if host_base {
        return host_root(dir, hidden);
    }
    let Some(root) = spec.root() else {
        bail!("root: missing");
    };
    let rootfs = bundle.join(root.path());
    let rootfs = rootfs
        .canonicalize()
        .with_context(|| format!("root.path {}", rootfs.display()))?;
    mount(
        Some(&rootfs),
        &rootfs,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .with_context(|| format!("root.path: bind {}", rootfs.display()))?;
    Ok(rootfs)
}

/// `org.feather.base=host`: the writable layer of the overlay of the host's `/`, a tmpfs
/// mounted by `create` in the host's mount namespace at `<container>/layer` — outside the
/// host's root filesystem (overlayfs refuses an upper layer inside its own lower one; the
/// runtime's root may be on `/`), thrown away at `delete`, and where feather's own tools read
/// what the container wrote (`feather diff`, [`crate::layer`]). Its pages are charged to the
/// container's memory cgroup, which writes them.
pub fn host_layer(dir: &Path) -> Result<()> {
    let layer = dir.join(HOST_LAYER);
    fs::create_dir(&layer).with_context(|| format!("create {}", layer.display()))?;
    mount(
        Some("tmpfs"),
        &layer,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=700"),
    )
    .context("org.feather.base=host: mount the layer's tmpfs")?;
    for sub in ["upper", "work"] {
        fs::create_dir(layer.join(sub))?;
    }
    Ok(())
}

/// The folder of a container that holds its [`host_layer`].
pub const HOST_LAYER: &str = "layer";

/// Unmounts the [`host_layer`] of the container in `dir`, if it has one.
pub fn remove_host_layer(dir: &Path) {
    let _ = nix::mount::umount2(&dir.join(HOST_LAYER), nix::mount::MntFlags::MNT_DETACH);
}

/// `org.feather.base=host`, in the init: the overlay of the host's `/` with the layer `create`
/// made ([`host_layer`]). Above the host's tree, a hiding layer (`feather_sys::hiding_layer`)
/// shows each of the host's state folders `hidden` as an empty folder, whatever mount the
/// container's processes come through (as in a feather VM: docs/security.md, row 21); the
/// tmpfs of [`hide_state_roots`] go over them as well. The layer lives only as long as this
/// init's descriptor and then the overlay hold it.
fn host_root(dir: &Path, hidden: &[PathBuf]) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    let layer = dir.join(HOST_LAYER);
    fs::create_dir_all(&rootfs).with_context(|| format!("create {}", rootfs.display()))?;
    let base = Path::new("/");
    let folders: Vec<PathBuf> = hidden
        .iter()
        .filter_map(|folder| folder.strip_prefix(base).ok())
        .map(Path::to_path_buf)
        .collect();
    let hiding =
        feather_sys::hiding_layer::HidingLayer::build(&[(base, folders)]).map_err(|e| {
            anyhow::anyhow!("org.feather.base=host: the layer hiding the state roots: {e}")
        })?;
    let mask = hiding.as_ref().and_then(|layer| layer.lower(0));
    let lowers: Vec<&Path> = mask.iter().map(PathBuf::as_path).chain([base]).collect();
    feather_sys::mount::overlay(
        &lowers,
        &layer.join("upper"),
        &layer.join("work"),
        &rootfs,
        feather_sys::mount::LayerSync::Volatile,
    )
    .map_err(|e| anyhow::anyhow!("org.feather.base=host: {e}"))?;
    drop(hiding);
    hide_state_roots(&rootfs, hidden)?;
    Ok(rootfs)
}

/// `org.feather.base=host`: every feather state root of the host, and their registry
/// (`folders`, read by create from `feather_core::roots::host_state_folders`), under an empty
/// read-only tmpfs, as in every feather VM (docs/security.md): they hold the layers of the
/// host's VMs. Each folder is opened beneath the rootfs without following a link. Roots
/// registered later: [`crate::hiding`].
fn hide_state_roots(rootfs: &Path, folders: &[PathBuf]) -> Result<()> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("open {}", rootfs.display()))?;
    for folder in folders {
        feather_sys::mount::hide_beneath(&root, folder).with_context(|| {
            format!(
                "org.feather.base=host: hide feather's state folder {} in the container",
                folder.display()
            )
        })?;
    }
    // hide_beneath mounts where it changed the working folder to.
    nix::unistd::chdir("/").context("chdir /")
}

/// The container's root as assembled: the rootfs's descriptor (pivot_root goes there, not to
/// a path looked up again) and the kernel's filesystems the config mounted (`proc`, `sysfs`),
/// each with its destination and held by its mount's descriptor. The masked and read-only
/// paths under them (`/proc/sys`, `/sys/firmware`) are found beneath those mounts, never
/// through the destination's path, which the image may make a link into a volume another
/// container renames under us: the runtime would cover the wrong thing and leave the
/// container's real procfs or sysfs open.
pub struct Assembled {
    root: OwnedFd,
    kernel: Vec<(PathBuf, OwnedFd)>,
}

/// Every entry of `mounts`, in order, then the default devices and `linux.devices`.
pub fn mount_all(
    spec: &Spec,
    rootfs: &Path,
    bundle: &Path,
    groups: &Groups,
    idmapped: &crate::idmap::Trees,
) -> Result<Assembled> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("open {}", rootfs.display()))?;
    let sources = Sources::new(spec, bundle, rootfs);
    let mut dev_is_tmpfs = false;
    let mut kernel = Vec::new();
    for (index, entry) in spec.mounts().iter().flatten().enumerate() {
        let mount = mount_one(&root, entry, &sources, groups, idmapped.of(index))
            .with_context(|| format!("mounts[{}]", entry.destination().display()))?;
        let at = |path: &str| {
            entry
                .destination()
                .components()
                .eq(Path::new(path).components())
        };
        if at("/dev") && entry.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        let is_kernel = matches!(entry.typ().as_deref(), Some("proc" | "sysfs"));
        if let (true, Some(mount)) = (is_kernel, mount) {
            kernel.push((entry.destination().clone(), mount));
        }
    }
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    if dev_is_tmpfs {
        default_devices(&root, &devices)?;
    }
    for device in &devices {
        make_device(&root, device)
            .with_context(|| format!("linux.devices[{}]", device.path().display()))?;
    }
    Ok(Assembled { root, kernel })
}

/// One entry of `mounts`; `idmapped`: the id-mapped tree create made for it (see
/// [`crate::idmap`]), attached in place of a bind. Returns the descriptor of the mount made
/// (none for `cgroup`, which makes several).
fn mount_one(
    root: &OwnedFd,
    entry: &Mount,
    sources: &Sources,
    groups: &Groups,
    idmapped: Option<&OwnedFd>,
) -> Result<Option<OwnedFd>> {
    let options = parse_options(entry.options().as_deref().unwrap_or_default());
    let typ = entry.typ().clone().unwrap_or_default();
    let destination = entry.destination();
    if typ == "cgroup" || typ == "cgroup2" {
        mount_cgroups(root, destination, &options, groups)?;
        return Ok(None);
    }
    let mount = if typ == "bind" || options.set.contains(MsFlags::MS_BIND) {
        bind_one(root, entry, sources, &options, idmapped)?
    } else if options.set.contains(MsFlags::MS_REMOUNT) {
        // The mount already at the destination, its own flags changed.
        let target = make_target(root, destination, true)?;
        let (set, clear) = mount_attributes(options.set);
        feather_sys::mount::set_attributes(&target, set, clear, false)
            .map_err(|e| anyhow::anyhow!("remount: {e}"))?;
        target
    } else {
        filesystem_one(root, entry, &typ, &options)?
    };
    set_propagation(&mount, &options.propagation)?;
    Ok(Some(mount))
}

/// A bind (or rbind) of `entry`'s source: a detached copy of the source opened once, its flags
/// set while detached, attached onto the destination's descriptor. Returns the attached mount.
fn bind_one(
    root: &OwnedFd,
    entry: &Mount,
    sources: &Sources,
    options: &Options,
    idmapped: Option<&OwnedFd>,
) -> Result<OwnedFd> {
    let source = entry.source().clone().unwrap_or_default();
    let (source, opened) = sources.open(Some(root), &source)?;
    let directory = nix::sys::stat::fstat(&opened)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let target = make_target(root, entry.destination(), directory)?;
    let tree = match idmapped {
        Some(tree) => tree.try_clone()?,
        None => clone_of(&opened, options.set.contains(MsFlags::MS_REC))
            .with_context(|| format!("bind {}", source.display()))?,
    };
    let (set, clear) = mount_attributes(options.set);
    if set != 0 || clear != 0 {
        feather_sys::mount::set_attributes(&tree, set, clear, false)
            .map_err(|e| anyhow::anyhow!("bind {}: flags: {e}", source.display()))?;
    }
    attach(&tree, &target, &format!("bind {}", source.display()))?;
    Ok(tree)
}

/// A new filesystem of `typ` (proc, sysfs, tmpfs, devpts, mqueue…) with `entry`'s source,
/// flags and data, made detached and attached onto the destination's descriptor. Returns the
/// attached mount.
fn filesystem_one(root: &OwnedFd, entry: &Mount, typ: &str, options: &Options) -> Result<OwnedFd> {
    let target = make_target(root, entry.destination(), true)?;
    let source = match entry.source() {
        Some(source) => source.to_string_lossy().into_owned(),
        None => typ.to_owned(),
    };
    let mut fs_options: Vec<&str> = superblock_options(options.set).collect();
    fs_options.extend(
        options
            .data
            .iter()
            .map(String::as_str)
            .filter(|o| !o.is_empty()),
    );
    let (attributes, _) = mount_attributes(options.set);
    let mount = feather_sys::mount::new_filesystem(typ, &source, &fs_options, attributes)
        .map_err(|e| anyhow::anyhow!("mount {typ}: {e}"))?;
    attach(&mount, &target, &format!("mount {typ}"))?;
    Ok(mount)
}

/// A `cgroup` mount: a tmpfs with, for each hierarchy, the container's own group bound in —
/// never the host's tree above it.
fn mount_cgroups(
    root: &OwnedFd,
    destination: &Path,
    options: &Options,
    groups: &Groups,
) -> Result<()> {
    use feather_sys::mount::{attr, set_attributes};
    let inert = attr::NOSUID | attr::NODEV | attr::NOEXEC;
    let target = make_target(root, destination, true)?;
    let tmpfs = feather_sys::mount::new_filesystem("tmpfs", "tmpfs", &["mode=755"], inert)
        .map_err(|e| anyhow::anyhow!("a tmpfs for cgroups: {e}"))?;
    attach(&tmpfs, &target, "mount tmpfs for cgroups")?;
    let readonly = options.set.contains(MsFlags::MS_RDONLY);
    for (name, hierarchy) in cgroups::hierarchies() {
        let own = groups.dir_in(&hierarchy);
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let source = match nix::fcntl::open(&own, flags, Mode::empty()) {
            Ok(source) => source,
            Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
            Err(e) => return Err(e).with_context(|| format!("open {}", own.display())),
        };
        let tree = clone_of(&source, false).with_context(|| format!("bind {}", own.display()))?;
        if readonly {
            set_attributes(&tree, attr::RDONLY | inert, 0, false)
                .map_err(|e| anyhow::anyhow!("{} read-only: {e}", own.display()))?;
        }
        let target = make_target(root, &destination.join(&name), true)?;
        attach(&tree, &target, &format!("bind {}", own.display()))?;
    }
    if readonly {
        set_attributes(&tmpfs, attr::RDONLY, 0, false)
            .map_err(|e| anyhow::anyhow!("the cgroups' tmpfs read-only: {e}"))?;
    }
    Ok(())
}

/// runc's default devices in a tmpfs /dev (name, major, minor): bound from the host's nodes
/// (the devices cgroup and the engine's device list decide what may be opened).
pub(crate) const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// [`DEFAULT_DEVICES`], each the host's node checked to be that device, and the usual links.
fn default_devices(root: &OwnedFd, configured: &[LinuxDevice]) -> Result<()> {
    for (name, major, minor) in DEFAULT_DEVICES {
        let inside = Path::new("/dev").join(name);
        if configured.iter().any(|d| d.path() == &inside) {
            continue;
        }
        let number = nix::sys::stat::makedev(major, minor);
        let node = host_node(&inside, libc::S_IFCHR, number)?;
        let tree = clone_of(&node, false)?;
        let target = make_target(root, &inside, false)?;
        attach(&tree, &target, &format!("bind {}", inside.display()))?;
    }
    let dev = resolve(root, Path::new("/dev"), OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        match nix::unistd::symlinkat(target, dev.as_fd(), name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("link /dev/{name}")),
        }
    }
    Ok(())
}

/// The host's node at `path` (the init's `/dev`: the host's, or that of a mount namespace
/// joined by `path`), opened without following a link and checked to be of `kind`
/// (`S_IFCHR`, `S_IFBLK`) and device `number`.
fn host_node(path: &Path, kind: libc::mode_t, number: u64) -> Result<OwnedFd> {
    let node = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("open the host's {}", path.display()))?;
    let stat = nix::sys::stat::fstat(&node)?;
    if stat.st_mode & libc::S_IFMT != kind || stat.st_rdev != number {
        bail!(
            "the host's {} is not the device {}:{}: fix the host's /dev",
            path.display(),
            nix::sys::stat::major(number),
            nix::sys::stat::minor(number)
        );
    }
    Ok(node)
}

fn make_device(root: &OwnedFd, device: &LinuxDevice) -> Result<()> {
    let path = device.path();
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("not a device path");
    };
    let parent = make_target(root, parent, true)?;
    let parent = nix::fcntl::openat(
        parent.as_fd(),
        ".",
        OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let kind = match device.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => bail!("type \"a\" is not a device node"),
    };
    let number = nix::sys::stat::makedev(device.major() as u64, device.minor() as u64);
    let mode = Mode::from_bits_truncate(device.file_mode().unwrap_or(0o666));
    // mknod's mode passes through the umask (0640 for 0660 under 022): fileMode is the node's
    // mode exactly, as runc makes it, with the umask cleared around the call — never by a chmod
    // afterwards, which goes by the name and follows a link put there meanwhile (before
    // pivot_root an absolute one names a host file).
    let umask = nix::sys::stat::umask(Mode::empty());
    let made = mknodat(parent.as_fd(), name, kind, mode, number);
    nix::sys::stat::umask(umask);
    match made {
        Ok(()) | Err(Errno::EEXIST) => {}
        // No node may be made in a user namespace: the host's is bound instead, as runc does.
        Err(Errno::EPERM) if kind != SFlag::S_IFIFO => {
            return bind_host_node(root, device, kind, number)
        }
        Err(e) => return Err(e).context("mknod"),
    };
    nix::unistd::fchownat(
        parent.as_fd(),
        name,
        device.uid().map(nix::unistd::Uid::from_raw),
        device.gid().map(nix::unistd::Gid::from_raw),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .context("chown")?;
    Ok(())
}

/// `device` bound from the host's node of the same path, which must be that device (opened
/// once, without following a link, checked, and bound from that descriptor).
fn bind_host_node(root: &OwnedFd, device: &LinuxDevice, kind: SFlag, number: u64) -> Result<()> {
    let host = device.path();
    let Ok(node) = host_node(host, kind.bits(), number) else {
        bail!(
            "mknod is not allowed in a user namespace, and the host has no such node at {} to bind",
            host.display()
        );
    };
    let tree = clone_of(&node, false)?;
    let target = make_target(root, host, false)?;
    attach(&tree, &target, &format!("bind {}", host.display()))
}

/// Makes the rootfs the root: pivot_root, or with `--no-pivot` a move and chroot. Enters the
/// rootfs by its descriptor: its path, in a mount namespace joined by `path`, is that
/// namespace's to change meanwhile.
pub fn enter_root(assembled: &Assembled, no_pivot: bool) -> Result<()> {
    nix::unistd::fchdir(&assembled.root).context("enter the rootfs")?;
    if !no_pivot {
        // pivot_root(".", ".") stacks the old root on the new one; unmounting "." then
        // removes the old root without a folder to park it in.
        nix::unistd::pivot_root(".", ".").context("pivot_root")?;
        nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
            .context("detach the old root")?;
        nix::unistd::chdir("/").context("chdir /")?;
        return Ok(());
    }
    mount(Some("."), "/", NONE, MsFlags::MS_MOVE, NONE).context("move the rootfs to /")?;
    nix::unistd::chroot(".").context("chroot")?;
    nix::unistd::chdir("/").context("chdir /")?;
    Ok(())
}

/// Where a `linux.sysctl` key's knob is below `/proc/sys`. Keys are dotted, and a dot inside a
/// component is written as `/`, as the kubelet and sysctl(8) write them
/// (`net.ipv4.conf.eth0/100.forwarding` is `net/ipv4/conf/eth0.100/forwarding`): the two swap,
/// as runc and crun do. A path with an empty, `.` or `..` component is refused by name.
pub fn sysctl_path(key: &str) -> Result<PathBuf> {
    let path: String = key
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            other => other,
        })
        .collect();
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("linux.sysctl[{key}]: not a sysctl name (dot-separated, a dot inside a name written as /, as net.ipv4.conf.eth0/100.forwarding)");
    }
    Ok(PathBuf::from(path))
}

/// What is done inside the new root: sysctls (through `proc`), read-only paths, a read-only root (the masked
/// paths were covered before: [`mask_all`]).
pub fn finish_root(
    spec: &Spec,
    assembled: &Assembled,
    confinement: &crate::confine::Confinement,
    proc: &feather_sys::procfs::ProcFs,
) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    for (key, value) in linux.sysctl().iter().flatten() {
        // Through the init's private procfs, never the container's /proc (feather_sys::procfs).
        let path = Path::new("sys").join(sysctl_path(key)?);
        proc.write(&path, value.as_bytes())
            .map_err(|e| anyhow::anyhow!("linux.sysctl[{key}]: {e}"))?;
    }
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context("open /")?;
    let within = Within {
        root: &root,
        kernel: &assembled.kernel,
    };
    for (path, asked) in read_only_paths(linux, confinement) {
        make_readonly(&within, Path::new(&path)).with_context(|| asked)?;
    }
    if let Some(flag) = linux
        .rootfs_propagation()
        .as_deref()
        .and_then(propagation_flag)
    {
        mount(NONE, "/", NONE, flag, NONE).context("linux.rootfsPropagation")?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(NONE, "/", NONE, flags, NONE).context("root.readonly")?;
    }
    Ok(())
}

/// The paths [`finish_root`] makes read-only with everything below them, each with what asks
/// for it: `linux.readonlyPaths`, then, under feather's confinement, the kernel's global knobs
/// the config did not make read-only or mask itself (crate::confine::READONLY), so that its
/// `readonlyPaths` decide nothing that would let the container reach past a feather VM's
/// limits. A restore requires the same of the restored tree ([`crate::restored_mounts`]).
pub fn read_only_paths(
    linux: &oci_spec::runtime::Linux,
    confinement: &crate::confine::Confinement,
) -> Vec<(String, String)> {
    let unlisted =
        |path: &str| !listed(linux.readonly_paths(), path) && !listed(linux.masked_paths(), path);
    given_then_knobs(
        linux.readonly_paths(),
        "linux.readonlyPaths",
        confinement,
        crate::confine::READONLY
            .iter()
            .filter(|path| unlisted(path)),
        |path| format!("feather's confinement: {path} read-only"),
    )
}

/// The paths [`mask_all`] covers, each with what asks for it: `linux.maskedPaths`, then, under
/// feather's confinement, the kernel's global knobs the config did not mask itself
/// (crate::confine::MASKED).
pub fn masked_paths(
    linux: &oci_spec::runtime::Linux,
    confinement: &crate::confine::Confinement,
) -> Vec<(String, String)> {
    given_then_knobs(
        linux.masked_paths(),
        "linux.maskedPaths",
        confinement,
        crate::confine::MASKED
            .iter()
            .filter(|path| !listed(linux.masked_paths(), path)),
        |path| format!("feather's confinement: masking {path}"),
    )
}

/// The paths of the config's list `given` (named `field` in what asks for each), then, under
/// feather's confinement, the `knobs` it adds, each asked for as `knob_asked` says: what
/// [`read_only_paths`] and [`masked_paths`] share but for their lists.
fn given_then_knobs<'k>(
    given: &Option<Vec<String>>,
    field: &str,
    confinement: &crate::confine::Confinement,
    knobs: impl Iterator<Item = &'k &'static str>,
    knob_asked: impl Fn(&str) -> String,
) -> Vec<(String, String)> {
    let mut paths: Vec<(String, String)> = given
        .iter()
        .flatten()
        .map(|path| (path.clone(), format!("{field}[{path}]")))
        .collect();
    if confinement.is_on() {
        paths.extend(knobs.map(|path| (path.to_string(), knob_asked(path))));
    }
    paths
}

/// Whether `entry`'s options leave its mount read-only (`ro`, not undone by a later `rw`).
pub fn is_read_only(entry: &Mount) -> bool {
    let options = parse_options(entry.options().as_deref().unwrap_or_default());
    options.set.contains(MsFlags::MS_RDONLY)
}

/// Covers [`masked_paths`]: in the rootfs, before pivot_root. Each path is
/// found as [`Within::open`] says and covered on its descriptor by the host's `/dev/null`
/// (checked to be that device) or an empty read-only tmpfs — never by the container's own
/// `/dev/null`, which the image or a shared volume can make a link to a kernel knob: the
/// "mask" would then be a writable bind of it (runc's CVE-2025-31133).
pub fn mask_all(
    spec: &Spec,
    assembled: &Assembled,
    confinement: &crate::confine::Confinement,
) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let within = Within {
        root: &assembled.root,
        kernel: &assembled.kernel,
    };
    let null = host_node(
        Path::new("/dev/null"),
        libc::S_IFCHR,
        nix::sys::stat::makedev(1, 3),
    )?;
    for (path, asked) in masked_paths(linux, confinement) {
        mask(&within, &null, Path::new(&path)).with_context(|| asked)?;
    }
    Ok(())
}

fn listed(list: &Option<Vec<String>>, path: &str) -> bool {
    list.iter().flatten().any(|given| given == path)
}

/// Where the masked and read-only paths are looked for: the container's root, and the
/// kernel's filesystems the config mounted ([`Assembled`]).
struct Within<'a> {
    root: &'a OwnedFd,
    kernel: &'a [(PathBuf, OwnedFd)],
}

impl Within<'_> {
    /// `path` opened `O_PATH`: under the destination of a `proc` or `sysfs` mount (the
    /// longest such, the later of equal ones), beneath that mount without following any link
    /// (the kernel files masked or made read-only are reached without one; a link on the way
    /// leads to no such file); elsewhere inside the root (RESOLVE_IN_ROOT).
    fn open(&self, path: &Path) -> nix::Result<OwnedFd> {
        let beneath = self
            .kernel
            .iter()
            .rev()
            .filter_map(|(destination, mount)| Some((path.strip_prefix(destination).ok()?, mount)))
            .min_by_key(|(rest, _)| rest.components().count());
        let Some((rest, mount)) = beneath else {
            return resolve(self.root, path, OFlag::O_PATH);
        };
        let rest = if rest.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rest
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        openat2(mount.as_fd(), rest, how)
    }
}

/// Covers `path` (nothing there: nothing to cover) on its descriptor: a folder with an empty
/// read-only tmpfs, anything else with a bind of `null`.
fn mask(within: &Within, null: &OwnedFd, path: &Path) -> Result<()> {
    use feather_sys::mount::attr;
    let target = match within.open(path) {
        Ok(target) => target,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let is_dir = nix::sys::stat::fstat(&target)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let cover = if is_dir {
        let inert = attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC;
        feather_sys::mount::new_filesystem("tmpfs", "tmpfs", &["ro"], inert)
            .map_err(|e| anyhow::anyhow!("an empty tmpfs: {e}"))?
    } else {
        clone_of(null, false)?
    };
    attach(&cover, &target, "cover")
}

/// Makes `path` (nothing there: nothing to protect) read-only with everything below it: a
/// detached recursive copy of what was opened, made read-only (and nosuid, nodev, noexec)
/// while detached, attached onto that same descriptor.
fn make_readonly(within: &Within, path: &Path) -> Result<()> {
    use feather_sys::mount::attr;
    let target = match within.open(path) {
        Ok(target) => target,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let tree = clone_of(&target, true)?;
    let flags = attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC;
    feather_sys::mount::set_attributes(&tree, flags, 0, true)
        .map_err(|e| anyhow::anyhow!("read-only: {e}"))?;
    attach(&tree, &target, "read-only bind")
}

/// `process.terminal`: the terminal's slave bound over `/dev/console`, as the runtime
/// specification asks. The bind's source is the slave's own descriptor (a detached copy of it,
/// `open_tree`), never a `/dev/pts/N` path the container could swap for a link or a mount
/// (runc's CVE-2025-52565); the target is opened beneath the root without following a link
/// (made as an empty file when missing, refused when it is a link or a folder), and the bind
/// lands on that descriptor. Runs after pivot_root.
pub fn bind_console(slave: &OwnedFd) -> Result<()> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context("process.terminal: open /")?;
    let dev = openat2(root.as_fd(), "dev", how)
        .context("process.terminal: open /dev (a link or missing) for /dev/console")?;
    match openat(
        dev.as_fd(),
        "console",
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(_) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e).context("process.terminal: make /dev/console"),
    }
    let target = openat(
        dev.as_fd(),
        "console",
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context("process.terminal: open /dev/console")?;
    let kind = nix::sys::stat::fstat(&target)?.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG && kind != libc::S_IFCHR {
        bail!("process.terminal: /dev/console in the container is not a file or a device (a link or a folder): remove it from the image");
    }
    let tree = feather_sys::mount::clone_tree(slave)
        .map_err(|e| anyhow::anyhow!("process.terminal: /dev/console: {e}"))?;
    feather_sys::mount::attach_tree(&tree, &target)
        .map_err(|e| anyhow::anyhow!("process.terminal: bind /dev/console: {e}"))
}

/// The host's device nodes feather-oci binds in a container: `/dev/null` (masks), runc's
/// default devices, the config's `linux.devices` under `/dev` (bound in a user namespace).
pub(crate) fn host_nodes(
    spec: &oci_spec::runtime::Spec,
) -> impl Iterator<Item = std::path::PathBuf> {
    let devices = crate::mounts::DEFAULT_DEVICES
        .iter()
        .map(|(name, _, _)| std::path::Path::new("/dev").join(name));
    let configured = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
        .into_iter()
        .map(|device| device.path().clone())
        .filter(|path| path.starts_with("/dev"));
    devices.chain(configured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use feather_sys::mount::attr;

    /// The two lists, each the config's own then the knobs it left out (under confinement
    /// only), with what asks for each: a knob the config already masks is not also made
    /// read-only.
    #[test]
    fn read_only_and_masked_paths_are_the_configs_then_the_knobs_it_left_out() {
        let linux: oci_spec::runtime::Linux = serde_json::from_value(serde_json::json!({
            "readonlyPaths": ["/proc/sys", "/data"],
            "maskedPaths": ["/proc/bus", "/proc/kcore"]
        }))
        .unwrap();
        let confined = |confine| crate::confine::Confinement {
            confine,
            host_network: false,
        };
        let on = confined(crate::confine::Confine::Ipc);
        let off = confined(crate::confine::Confine::None);
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(path, asked)| (path.to_string(), asked.to_string()))
                .collect()
        };
        let configs_read_only = [
            ("/proc/sys", "linux.readonlyPaths[/proc/sys]"),
            ("/data", "linux.readonlyPaths[/data]"),
        ];
        assert_eq!(read_only_paths(&linux, &off), pairs(&configs_read_only));
        let knobs = [
            ("/proc/fs", "feather's confinement: /proc/fs read-only"),
            ("/proc/irq", "feather's confinement: /proc/irq read-only"),
            (
                "/proc/sysrq-trigger",
                "feather's confinement: /proc/sysrq-trigger read-only",
            ),
        ];
        let all: Vec<_> = configs_read_only.into_iter().chain(knobs).collect();
        assert_eq!(read_only_paths(&linux, &on), pairs(&all));

        let configs_masked = [
            ("/proc/bus", "linux.maskedPaths[/proc/bus]"),
            ("/proc/kcore", "linux.maskedPaths[/proc/kcore]"),
        ];
        assert_eq!(masked_paths(&linux, &off), pairs(&configs_masked));
        let knobs = [
            "/proc/keys",
            "/proc/timer_list",
            "/proc/sched_debug",
            "/sys/firmware",
        ]
        .map(|path| (path, format!("feather's confinement: masking {path}")));
        let mut all = pairs(&configs_masked);
        all.extend(knobs.map(|(path, asked)| (path.to_string(), asked)));
        assert_eq!(masked_paths(&linux, &on), all);
    }

    #[test]
    fn a_mounts_options_become_its_own_flags_and_its_superblocks() {
        let options = parse_options(&[
            "ro".into(),
            "nosuid".into(),
            "nodev".into(),
            "noexec".into(),
            "strictatime".into(),
            "sync".into(),
            "mode=755".into(),
        ]);
        let (set, clear) = mount_attributes(options.set);
        assert_eq!(
            set,
            attr::RDONLY | attr::NOSUID | attr::NODEV | attr::NOEXEC | attr::STRICTATIME
        );
        // Setting an access-time mode clears the field first, or the kernel refuses it.
        assert_eq!(clear, attr::ATIME);
        let superblock: Vec<&str> = superblock_options(options.set).collect();
        assert_eq!(superblock, ["ro", "sync"]);
        assert_eq!(options.data, ["mode=755"]);
    }

    #[test]
    fn relatime_alone_still_clears_the_access_time_field() {
        let (set, clear) = mount_attributes(parse_options(&["relatime".into()]).set);
        assert_eq!((set, clear), (attr::RELATIME, attr::ATIME));
        assert_eq!(mount_attributes(MsFlags::empty()), (0, 0));
    }
}

//! The isolation recipe: how a VM's root is assembled inside its new mount namespace.
//! Runs in the VM's init before anything of the VM runs. Each step says what it prevents.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use feather_sys::mount::{self, Flags, LayerSync};
use feather_sys::{Result, SysError};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::hiding;
use crate::layers::{self, Layer};
use crate::lower_id::PinnedLower;

/// Everything the recipe needs, computed by the keeper before the fork.
#[derive(Clone, Debug)]
pub struct RootfsPlan {
    pub hostname: String,
    pub base: PathBuf,
    /// The host folder where the root is assembled (the VM's `rootfs/`).
    pub rootfs: PathBuf,
    pub layers: Vec<Layer>,
    /// VM paths bound read-only from the base instead of layered (`create --ro`), each after
    /// what it lies in.
    pub read_only: Vec<PathBuf>,
    /// The filesystems the keeper found mounted under those paths, bound read-only with them;
    /// each passed over if the host unmounted it meanwhile (see [`pin_listed_filesystems`]).
    pub read_only_mounts: Vec<PathBuf>,
    /// The descriptor of a throw-away VM's layer in memory, which init (a clone of the keeper)
    /// has a copy of: the layers' folders and the generated /etc files are `/proc/self/fd/<it>/…`
    /// until they are mounted, then init closes it (the overlays and binds hold the tmpfs),
    /// before anything of the VM's runs, so that nothing in the VM can reach its layer from
    /// below through init's descriptors.
    pub memory_layer_fd: Option<std::os::fd::RawFd>,
    /// The descriptor of the VM's hiding layer (`layers::hiding_layer`), which init has a copy
    /// of: the layers' [`Layer::hiding`] folders are `/proc/self/fd/<it>/…`. Init closes it once
    /// the overlays are mounted (they hold the layer then), before anything of the VM's runs.
    pub hiding_layer_fd: Option<std::os::fd::RawFd>,
    /// Volatile for a throw-away VM, whose layers go with it.
    pub sync: LayerSync,
    /// Host paths that must not be visible inside the VM: feather's state and run folders,
    /// which hold every VM's private layer and control socket.
    pub hidden: Vec<PathBuf>,
    /// The VM's network inside: interface, generated /etc files.
    pub network: feather_net::Inside,
    /// The host's feather binary and the shared libraries it runs with, bound read-only into
    /// [`INIT_DIR`] for init to re-execute from (see step 8b).
    pub init_files: Vec<PathBuf>,
    /// The VM group's `services` folder in each cgroup hierarchy its services use (host paths),
    /// with where the hierarchy is mounted below `/sys/fs/cgroup`: bound there in the VM, so its
    /// service manager gives each unit a group of its own (step 6b). Empty for a VM without a
    /// cgroup.
    pub service_cgroups: Vec<(PathBuf, PathBuf)>,
}

impl RootfsPlan {
    /// Whether init re-executes itself from [`RootfsPlan::init_files`] (a kept VM, which must
    /// refer to no file outside its own mounts to be checkpointed) rather than serve the VM
    /// as the host's program.
    pub fn reexecutes(&self) -> bool {
        !self.init_files.is_empty()
    }
}

/// Where init's own program and libraries appear inside the VM.
pub const INIT_DIR: &str = "/run/.feather-init";

/// The command that runs feather's binary from [`INIT_DIR`] inside the VM (step 8b), its
/// arguments to follow. A dynamic binary runs through its dynamic loader, with the folder as
/// the library path: the VM's base may have no loader or libraries of its own (a bare tree),
/// or others than the host's. A static one (the release build's `feather-keeper`, see
/// scripts/build-release) maps no loader and runs by itself. `None` when `init_files` has no
/// program.
pub fn in_vm_program(init_files: &[PathBuf]) -> Option<Vec<String>> {
    let dir = Path::new(INIT_DIR);
    let program = dir.join(init_files.first()?.file_name()?);
    let loader = init_files
        .iter()
        .filter_map(|file| file.file_name())
        .find(|name| name.to_string_lossy().starts_with("ld-linux"));
    let Some(loader) = loader else {
        return Some(vec![program.display().to_string()]);
    };
    Some(vec![
        dir.join(loader).display().to_string(),
        "--library-path".into(),
        dir.display().to_string(),
        program.display().to_string(),
    ])
}

/// Host devices a VM gets, bound into its own small /dev. Everything else (disks, /dev/mem,
/// /dev/kmsg, input devices) simply does not exist inside.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The kernel interfaces that reveal or control the host, masked as Docker (29) masks them:
/// a file under /dev/null, a folder under an empty read-only tmpfs.
pub(crate) const MASKED_PROC: [&str; 10] = [
    "proc/acpi",
    "proc/asound",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
];

/// The same under /sys (read-only as a whole already): firmware tables, the power-capping
/// energy counters (a side channel into other tenants' work), SELinux's interface.
pub(crate) const MASKED_SYS: [&str; 3] = [
    "sys/firmware",
    "sys/devices/virtual/powercap",
    "sys/fs/selinux",
];

/// The kernel interfaces under /proc a VM may read but must not write (Docker's read-only
/// paths): host-wide settings, interrupt routing, PCI configuration space, SysRq.
pub(crate) const READ_ONLY_PROC: [&str; 5] = ["bus", "fs", "irq", "sys", "sysrq-trigger"];

/// Assembles the root and pivots into it. The old root's detach goes on beside the caller's
/// next steps (see [`mount::pivot_beside`]): nothing of the VM's may run, and no path be
/// resolved, before [`mount::OldRoot::detached`] has returned. Also returns what was found
/// beneath each layer mounted, the root layer first, for the keeper's record of them
/// (`layers::SeenLowers::confirm`).
pub fn assemble(plan: &RootfsPlan) -> Result<(mount::OldRoot, Vec<PinnedLower>)> {
    // 1. Mounts made from here on stay in this namespace, and the host's later mounts stay out.
    mount::make_all_private()?;
    step("make every mount private");
    // 2. The copy-on-write view of the base: lower = the base, upper = the VM's layer. Above
    //    the base, the VM's hiding layer: an empty opaque folder at each state folder of the
    //    host (see step 4), so the overlay itself shows them empty, in every mount namespace
    //    of the VM and to a descriptor that outlives one (whose mounts the kernel then
    //    disconnects, the tmpfs of step 4 among them).
    let root = &plan.rootfs;
    let [first, others @ ..] = plan.layers.as_slice() else {
        unreachable!("a VM has a root layer")
    };
    //    The base is opened first, without following a link, and given by descriptor (see
    //    [`open_base`]), as the other layers' lowers are (step 3).
    let base = open_base(&first.lower)?;
    let mut found = vec![PinnedLower::of(layers::name(first), &base)];
    let lowers = lowers_by_descriptor(first, &base);
    let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    mount::overlay(&lowers, &first.upper, &first.work, root, plan.sync)?;
    drop(base);
    step("open the base, mount the root overlay");
    //    Every later mount point is a name in this tree, which the VM's layer controls (a link
    //    `proc -> /x` left there by an earlier run). Each is opened beneath the tree without
    //    following a link, checked to be a folder, and mounted on what was opened.
    let tree = open_tree(root)?;
    // 3. Other filesystems under the base get layers of their own, or the VM would see empty
    //    folders (overlayfs does not cross mount points of its lower layer); the read-only
    //    paths are the base's own files, bound read-only (3b). A mount goes after every mount
    //    it lies in. Where the VM's layer holds a link or a non-folder, the VM's own entry
    //    shadows that filesystem, and it is not layered.
    //    Only the filesystems still mounted here are, each held open until its layer is
    //    mounted: the keeper listed the host's mounts before this namespace was copied from the
    //    host's, and the host may have unmounted one since (see [`pin_listed_filesystems`]).
    let pinned = pin_listed_filesystems(&plan.base, others)?;
    found.extend(
        pinned
            .iter()
            .map(|p| PinnedLower::of(layers::name(p.layer), &p.lower)),
    );
    step("find the filesystems under the base");
    crate::test_hooks::held(HOLD_AFTER_MOUNTS_FOUND);
    let mut upper_mounts: Vec<(&Path, UpperMount)> = pinned
        .iter()
        .map(|pinned| {
            (
                pinned.layer.mount_point.as_path(),
                UpperMount::Layer(pinned),
            )
        })
        .chain(
            plan.read_only
                .iter()
                .map(|path| (path.as_path(), UpperMount::ReadOnly)),
        )
        .chain(
            plan.read_only_mounts
                .iter()
                .map(|path| (path.as_path(), UpperMount::ReadOnlyFilesystem)),
        )
        .collect();
    upper_mounts.sort_by_key(|(path, _)| path.components().count());
    for (vm_path, mount) in upper_mounts {
        match mount {
            UpperMount::Layer(pinned) => mount_submount_layer(&tree, pinned, plan.sync)?,
            UpperMount::ReadOnly => bind_read_only(&plan.base, root, vm_path)?,
            UpperMount::ReadOnlyFilesystem => bind_read_only_filesystem(&plan.base, root, vm_path)?,
        }
    }
    step("mount their layers, bind the read-only paths");
    //    The overlays hold the filesystems now: init lets go of them before anything of the
    //    VM's runs.
    drop(pinned);
    //    The overlays hold the hiding layer now: nothing of the VM's may reach it through
    //    init's descriptors.
    if let Some(fd) = plan.hiding_layer_fd {
        let _ = nix::unistd::close(fd);
    }
    // 4. feather's state (every VM's layer, the control sockets) of every state root of the
    //    host, and the registry of them, are replaced by an empty read-only folder: a VM sees
    //    neither its own layer from below nor any other VM's, of its root or of any other.
    //    The overlays hide them already (step 2); the tmpfs makes them read-only, and hides
    //    them in every namespace of the VM also where a layer does not (a `--ro` path, whose
    //    bind is of the base's own files) and once the overlays are mounted (a root registered
    //    later is hidden the same way: `hiding`).
    //    The folders are found beneath the VM's root without following links (a link in the
    //    VM's layer cannot steer the mount), and the tmpfs is mounted on what was opened.
    hide_state_folders(plan)?;
    step("hide the state folders");
    //    Steps 5 to 8 mount the VM's own /proc, /sys, /dev and /run on folders opened as above
    //    (a link or a non-folder there fails the start: the VM must get its own instances).
    //    What they then do below those points is in the filesystems just mounted, which
    //    nothing of the VM's layer reaches.
    mount_proc(root, &tree)?;
    step("mount /proc, its read-only places");
    let mut folder_mask = None;
    mask(root, &MASKED_PROC, &mut folder_mask)?;
    step("mask /proc's places");
    // 6. sysfs read-only: it shows this VM's network devices, and nothing in it can be written.
    let ro = Flags::MS_RDONLY | Flags::MS_NOSUID | Flags::MS_NODEV | Flags::MS_NOEXEC;
    let sys = own_mount_point(&tree, "sys")?;
    mount::api_filesystem("sysfs", &by_descriptor(&sys), ro, None)
        .map_err(at_vm_path(Path::new("/sys")))?;
    mask(root, &MASKED_SYS, &mut folder_mask)?;
    step("mount /sys, mask its places");
    mount_service_cgroups(root, &plan.service_cgroups)?;
    step("bind the services' cgroups");
    mount_dev(root, &tree)?;
    step("mount /dev");
    // 8. A private /run: the host's sockets and pid files there are not the VM's.
    let run = own_mount_point(&tree, "run")?;
    mount::tmpfs(
        &by_descriptor(&run),
        Flags::MS_NOSUID | Flags::MS_NODEV,
        "mode=0755,size=10%",
    )
    .map_err(at_vm_path(Path::new("/run")))?;
    let _ = fs::create_dir(root.join("run/lock"));
    let _ = fs::set_permissions(
        root.join("run/lock"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    );
    // 8b. feather's binary, read-only, for init to run from: a process whose program or mapped
    //     files lie on a mount outside the VM's mount namespace cannot be checkpointed (CRIU
    //     finds no mount to name them by), so init re-executes itself from here.
    //     The libraries come along because the base may have none (a bare tree).
    let init_dir = inside(root, Path::new(INIT_DIR));
    for host_file in &plan.init_files {
        let Some(file_name) = host_file.file_name() else {
            continue;
        };
        let target = init_dir.join(file_name);
        fs::create_dir_all(&init_dir)
            .and_then(|()| fs::File::create(&target))
            .map_err(|e| feather_sys::SysError {
                op: "create",
                target: target.display().to_string(),
                errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
        mount::bind(host_file, &target)?;
        mount::remount_bind_readonly(&target)?;
    }
    step("mount /run, bind init's files");
    // 9. The VM's own hostname, in its own UTS namespace.
    nix::unistd::sethostname(&plan.hostname).map_err(|errno| feather_sys::SysError {
        op: "sethostname",
        target: plan.hostname.clone(),
        errno,
    })?;
    // 10. The VM's network identity. Its loopback is brought up and, with --net private, the
    //     VM's end of its veth pair gets its address and route by init after this recipe
    //     (beside the old root's detach; init still holds CAP_NET_ADMIN of its own namespace
    //     then). Generated /etc/hostname, hosts and resolv.conf are bound over
    //     the VM's files, so they never reach its layer; a base without the file goes without.
    //     They are bound read-only: they are host files (on the default root in the host's
    //     /run; a throw-away VM's in the tmpfs of its layer), which a VM must not write into,
    //     let alone fill.
    //     Each target is opened beneath the VM's root without following a link (the VM's
    //     layer may hold one on the way) and the file is bound onto what was opened.
    for (file, vm_path) in &plan.network.files {
        mount::bind_file_beneath_inert(file, &tree, vm_path)?;
    }
    //     A throw-away VM's files lie in the tmpfs of its layer in memory: the overlays and
    //     these binds hold it now, and init lets go of it.
    if let Some(fd) = plan.memory_layer_fd {
        let _ = nix::unistd::close(fd);
    }
    step("set the hostname, bind the /etc files");
    // 11. Make the assembled tree the root and drop every path back to the host's.
    let old_root = mount::pivot_beside(root)?;
    step("pivot into the root");
    Ok((old_root, found))
}

/// One step of the recipe done, for `FEATHER_TRACE=phases` (init's own lines).
fn step(name: &str) {
    feather_core::trace::init_step(name);
}

/// The VM's tree at `root` (the overlay of step 2), opened: every later mount point is looked
/// up beneath it.
pub(crate) fn open_tree(root: &Path) -> Result<fs::File> {
    feather_sys::beneath::open_root(root).map_err(io_failed("open", root))
}

/// What is at a mount point of the recipe in the VM's tree.
pub(crate) enum MountPoint {
    /// A folder, opened (`O_PATH`): the mount goes on exactly it.
    Folder(OwnedFd),
    /// Nothing to mount on: a link on the way or at the end, not a folder, or missing (the
    /// errno says which). The VM's own entry is there.
    Not(Errno),
}

/// `vm_path` opened beneath the VM's `tree` with `openat2` (`RESOLVE_BENEATH`, no symbolic
/// link, no magic link followed) and checked to be a folder by `fstat` on what was opened.
fn open_mount_point(tree: &fs::File, vm_path: &Path) -> Result<MountPoint> {
    let rel = vm_path.strip_prefix("/").unwrap_or(vm_path);
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    match feather_sys::beneath::open_beneath(tree, rel, flags) {
        Ok(fd) if is_folder(&fd) => Ok(MountPoint::Folder(fd)),
        Ok(_) => Ok(MountPoint::Not(Errno::ENOTDIR)),
        Err(e) if feather_sys::beneath::absent(&e) => Ok(MountPoint::Not(Errno::from_raw(
            e.raw_os_error().unwrap_or(libc::ENOENT),
        ))),
        Err(e) => Err(io_failed("open beneath the VM's root", vm_path)(e)),
    }
}

/// [`open_mount_point`], after making what is missing of `vm_path` folder by folder beneath
/// the VM's `tree` (`mkdirat` on the descriptor of the folder before, which was opened as
/// [`open_mount_point`] opens: a link is never followed, nothing is made outside the tree).
/// Where a link or a non-folder stands on the way, nothing more is made, and the answer says
/// what is there. A restore uses it for the mount points of the layers it mounts: the host may
/// have removed a filesystem's mount point since the checkpoint.
pub(crate) fn make_mount_point(tree: &fs::File, vm_path: &Path) -> Result<MountPoint> {
    make_folders_beneath(tree, vm_path)
        .map_err(io_failed("make beneath the VM's root", vm_path))?;
    open_mount_point(tree, vm_path)
}

/// The walk of [`make_mount_point`]: stops quietly at the first name that is not a folder.
fn make_folders_beneath(tree: &fs::File, vm_path: &Path) -> std::io::Result<()> {
    use std::path::Component;
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut folder = feather_sys::beneath::open_beneath(tree, Path::new("."), flags)?;
    for component in vm_path.components() {
        let name = match component {
            Component::Normal(name) => Path::new(name),
            Component::RootDir | Component::CurDir => continue,
            // Never climbed: what is there is left to `open_mount_point` to judge.
            Component::ParentDir | Component::Prefix(_) => return Ok(()),
        };
        match nix::sys::stat::mkdirat(&folder, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(errno.into()),
        }
        folder = match feather_sys::beneath::open_beneath(&folder, name, flags) {
            Ok(next) => next,
            Err(e) if feather_sys::beneath::absent(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
    }
    Ok(())
}

fn is_folder(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// The name that leads to exactly what `fd` holds open, for the mount calls that take a path:
/// the kernel resolves it to the opened folder itself, whatever names changed since.
pub(crate) fn by_descriptor(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// For an error of a mount made through [`by_descriptor`]: names the folder by its place in
/// the VM, not by the descriptor's `/proc/self/fd/N`, which tells the reader nothing.
pub(crate) fn at_vm_path(vm_path: &Path) -> impl FnOnce(SysError) -> SysError + '_ {
    move |e| SysError {
        target: format!("{} in the VM", vm_path.display()),
        ..e
    }
}

/// 3. The layer of a filesystem mounted under the base, on the folder at its mount point in
///    the VM's tree. None there (a link or a file the VM's layer holds, or nothing): the VM's
///    own entry shadows that filesystem, which is not layered, as init says on its stderr (the
///    keeper's log, or a foreground `run`'s stderr).
fn mount_submount_layer(tree: &fs::File, pinned: &PinnedLayer, sync: LayerSync) -> Result<()> {
    let layer = pinned.layer;
    let lowers = pinned.lowers();
    match open_mount_point(tree, &layer.mount_point)? {
        MountPoint::Folder(point) => match mount::overlay(
            &lowers.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
            &layer.upper,
            &layer.work,
            &by_descriptor(&point),
            sync,
        ) {
            // The host removed the filesystem's folder since it was found, which detached this
            // namespace's copy of it (the kernel then refuses it as a lower layer, EINVAL): it
            // vanished meanwhile. A detached mount never comes back, so one still in the table
            // now was there for the mount, and its failure is the start's.
            Err(_) if !pinned.still_mounted()? => {
                passed_over(&layer.mount_point);
                Ok(())
            }
            done => done.map_err(at_vm_path(&layer.mount_point)),
        },
        MountPoint::Not(Errno::ENOENT) => Ok(()),
        MountPoint::Not(why) => {
            eprintln!(
                "feather init: {} is not a folder in the VM ({why}: a link or a file in its \
                 layer), which shadows the host's filesystem mounted there: it is not layered \
                 (remove the entry from the VM's layer to see it again)",
                layer.mount_point.display()
            );
            Ok(())
        }
    }
}

/// What step 3 mounts at a VM path.
enum UpperMount<'a> {
    /// The layer of a filesystem under the base.
    Layer(&'a PinnedLayer<'a>),
    /// A read-only path (`create --ro`).
    ReadOnly,
    /// A filesystem under a read-only path, if it is still there.
    ReadOnlyFilesystem,
}

/// A layer of a filesystem under the base, with that filesystem held open: the overlay's lower
/// layer is what was found mounted, whatever the host does with the path since.
struct PinnedLayer<'a> {
    layer: &'a Layer,
    lower: OwnedFd,
    /// Where the filesystem was found mounted, and the mount's id in this namespace.
    host_path: PathBuf,
    id: u64,
}

impl PinnedLayer<'_> {
    /// Whether the filesystem held is still mounted where it was found, by this namespace's
    /// mount table now.
    fn still_mounted(&self) -> Result<bool> {
        Ok(is_mounted_in(&own_mounts()?, &self.host_path, self.id))
    }

    /// The overlay's lower layers, the uppermost first: the layer's hiding part, then the
    /// filesystem held open.
    fn lowers(&self) -> Vec<PathBuf> {
        lowers_by_descriptor(self.layer, &self.lower)
    }
}

/// The lower layers of `layer`'s overlay, the uppermost first, its own lower folder held open
/// as `lower`: the layer's hiding part, then `lower` by descriptor.
pub(crate) fn lowers_by_descriptor(layer: &Layer, lower: &OwnedFd) -> Vec<PathBuf> {
    layer
        .hiding
        .iter()
        .cloned()
        .chain([by_descriptor(lower)])
        .collect()
}

/// The VM's base, the root layer's lower folder, opened from `/` with `openat2` following no
/// link, symbolic or magic, on the way (a VM records its base canonical: a link on its path now
/// was put there since, by whoever may write a folder on it, between the keeper's checks and
/// this mount). The overlay is given the descriptor, so it lies over exactly what was opened.
/// Used by a restore for the root layer too.
pub(crate) fn open_base(base: &Path) -> Result<OwnedFd> {
    open_without_links(base, "the VM's base")
}

/// The folder at `path`, a host path feather chose (in a state folder), opened to be given
/// by descriptor.
pub(crate) fn open_folder(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| failed("open", path, errno))
}

/// A lower folder under the VM's base (`what`, for the error), opened as [`open_base`] opens
/// the base: following no link.
pub(crate) fn open_without_links(base: &Path, what: &str) -> Result<OwnedFd> {
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| failed("open", Path::new("/"), errno))?;
    let rel = base.strip_prefix("/").unwrap_or(base);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    feather_sys::beneath::open_beneath(&root, rel, flags).map_err(|e| {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        let why = match errno {
            // A link at the end is ENOTDIR (opened as itself, not a folder), on the way ELOOP.
            Errno::ELOOP | Errno::ENOTDIR => {
                "is a link now, or has one on its path, or is no folder (the VM recorded a \
                 folder without a link on its path): a link put there since could lead the \
                 VM's layer over another tree; nothing was mounted (put the folder back, or \
                 create the VM anew over the folder the link names)"
            }
            Errno::ENOENT => "is gone",
            _ => "cannot be opened",
        };
        SysError {
            op: "nothing mounted:",
            target: format!("{what} {} {why}", base.display()),
            errno,
        }
    })
}

/// The layers of `others` (filesystems the keeper found mounted under `base` on the host) whose
/// filesystem is still mounted at its place in this namespace, init's, each held open. The host
/// may unmount one between the keeper's listing and the copy of its mount table that this
/// namespace is (an automount expiring, another program's scratch mount), or before step 1 made
/// every mount here private, and removing its folder on the host detaches this namespace's
/// copy even after: such a filesystem is passed over, as if the host had unmounted it before
/// the start, and the VM sees what is beneath (the base's folder, or nothing where the folder
/// went too). A filesystem found here is held by its descriptor until its layer is mounted, so
/// a failure to mount it still fails the start. Found here means: the path opened leads to a
/// mount that this namespace's mount table (read after the opening) has at exactly that path,
/// by its id. A filesystem mounted on the host since the listing is not layered, as before;
/// one mounted where a listed one was is layered in its place.
fn pin_listed_filesystems<'a>(base: &Path, others: &'a [Layer]) -> Result<Vec<PinnedLayer<'a>>> {
    let mut opened = Vec::new();
    for layer in others {
        let host_path = base.join(in_base(&layer.mount_point));
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match nix::fcntl::open(&host_path, flags, Mode::empty()) {
            Ok(fd) => opened.push((layer, host_path, fd)),
            Err(Errno::ENOENT | Errno::ENOTDIR) => passed_over(&layer.mount_point),
            Err(errno) => return Err(failed("open", &host_path, errno)),
        }
    }
    if opened.is_empty() {
        return Ok(Vec::new());
    }
    let mounts = own_mounts()?;
    let mut pinned = Vec::new();
    for (layer, host_path, lower) in opened {
        let id = mount_id_in_table(&lower)?;
        if is_mounted_in(&mounts, &host_path, id) {
            pinned.push(PinnedLayer {
                layer,
                lower,
                host_path,
                id,
            });
        } else {
            passed_over(&layer.mount_point);
        }
    }
    Ok(pinned)
}

/// For tests only, as `keeper::HOLD_RUNNING_RECORD`: the file whose lock a starting VM's init
/// waits for once it has found the filesystems under the base still mounted in its namespace
/// (see [`pin_listed_filesystems`]), before it mounts their layers and binds the read-only
/// paths and the filesystems under them, so that a test can remove one on the host meanwhile.
/// Unset, nothing waits.
pub const HOLD_AFTER_MOUNTS_FOUND: &str = "FEATHER_TEST_HOLD_AFTER_MOUNTS_FOUND";

/// This namespace's mount table.
fn own_mounts() -> Result<Vec<feather_sys::mountinfo::MountEntry>> {
    feather_sys::mountinfo::mounts().map_err(io_failed(
        "read",
        Path::new(feather_sys::mountinfo::OWN_TABLE),
    ))
}

/// Says on init's stderr (the keeper's log) that the host's filesystem at `vm_path` went while
/// the VM started.
fn passed_over(vm_path: &Path) {
    eprintln!(
        "feather init: the host's filesystem at {} was unmounted while the VM started: it is \
         not in the VM (the VM sees what is beneath it)",
        vm_path.display()
    );
}

/// The id the mount table gives the mount `fd` is on (its `/proc/self/fdinfo` says it).
fn mount_id_in_table(fd: &OwnedFd) -> Result<u64> {
    let info = PathBuf::from(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()));
    let text = fs::read_to_string(&info).map_err(io_failed("read", &info))?;
    text.lines()
        .find_map(|line| line.strip_prefix("mnt_id:")?.trim().parse().ok())
        .ok_or_else(|| failed("read mnt_id from", &info, Errno::EINVAL))
}

/// Whether the mount `id` is, by `mounts` (a mount table), mounted at `host_path` and a
/// filesystem the keeper layers (not a kernel interface: `layers::for_start_in` passes those
/// over).
fn is_mounted_in(mounts: &[feather_sys::mountinfo::MountEntry], host_path: &Path, id: u64) -> bool {
    mounts.iter().any(|entry| {
        entry.id == id
            && entry.mount_point == host_path
            && !feather_sys::mountinfo::is_api_filesystem(&entry.fs_type)
    })
}

/// A VM path as a path relative to the base.
fn in_base(vm_path: &Path) -> &Path {
    vm_path.strip_prefix("/").unwrap_or(vm_path)
}

/// The folder `/name` of the VM's tree, where the VM's own instance of a kernel or memory
/// filesystem (/proc, /sys, /dev, /run) is mounted next. Anything else there fails the start,
/// naming the path and what to do: the VM must not run without its own instance, and a mount
/// never lands where a link points.
fn own_mount_point(tree: &fs::File, name: &str) -> Result<OwnedFd> {
    match open_mount_point(tree, Path::new(name))? {
        MountPoint::Folder(point) => Ok(point),
        MountPoint::Not(errno) => Err(feather_sys::SysError {
            op: "cannot mount the VM's own filesystem at",
            target: format!(
                "/{name}, which is not a folder in the VM (a link or a file in its layer, or \
                 missing: remove that entry from the VM's layer, or `feather reset` the VM)"
            ),
            errno,
        }),
    }
}

/// 3b. Binds the base's `vm_path` read-only (and nodev, as the layers are) at the same path of
///     the VM's tree. Both ends are opened without following any link and without leaving
///     the base, resp. the VM's tree (a link the host or the VM's layer put there since the
///     VM was created cannot steer the bind), and the bind is attached to exactly what was
///     opened. Only the one filesystem at `vm_path` is bound: what is mounted under it is
///     bound by an entry of its own, or hidden.
fn bind_read_only(base: &Path, root: &Path, vm_path: &Path) -> Result<()> {
    let rel = in_base(vm_path);
    let source = crate::read_only::open_in_base(base, rel)
        .map_err(io_failed("open read-only path in base", &base.join(rel)))?;
    bind_opened_read_only(&source, root, rel)
}

/// 3b, for a filesystem the keeper found mounted under a read-only path: bound as
/// [`bind_read_only`] binds, if it is still mounted at its place in init's namespace when it is
/// opened, else passed over, as the layers of [`pin_listed_filesystems`] are (and so if the
/// bind fails once it is no longer there: the host removed its folder, which detached it).
fn bind_read_only_filesystem(base: &Path, root: &Path, vm_path: &Path) -> Result<()> {
    let rel = in_base(vm_path);
    let host_path = base.join(rel);
    let source = match crate::read_only::open_in_base(base, rel) {
        Ok(source) => source,
        Err(e) if feather_sys::beneath::absent(&e) => {
            passed_over(vm_path);
            return Ok(());
        }
        Err(e) => return Err(io_failed("open read-only path in base", &host_path)(e)),
    };
    let id = mount_id_in_table(&source)?;
    if !is_mounted_in(&own_mounts()?, &host_path, id) {
        passed_over(vm_path);
        return Ok(());
    }
    match bind_opened_read_only(&source, root, rel) {
        Err(_) if !is_mounted_in(&own_mounts()?, &host_path, id) => {
            passed_over(vm_path);
            Ok(())
        }
        bound => bound,
    }
}

/// Binds `source`, opened in the base at `rel`, read-only at `rel` in the VM's tree at `root`.
fn bind_opened_read_only(source: &OwnedFd, root: &Path, rel: &Path) -> Result<()> {
    let tree = mount::clone_tree(source)?;
    mount::set_tree_flags(
        &tree,
        mount::TreeFlags {
            read_only: true,
            no_suid: false,
            no_dev: true,
        },
    )?;
    let point = crate::read_only::open_in_base(root, rel).map_err(io_failed(
        "open read-only path in the VM's tree",
        &root.join(rel),
    ))?;
    mount::attach_tree(&tree, &point)
}

/// 4. See [`assemble`].
fn hide_state_folders(plan: &RootfsPlan) -> Result<()> {
    let root = &plan.rootfs;
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| failed("open", root, errno))?;
    for rel in hiding::to_hide(&plan.base, &plan.hidden) {
        mount::hide_beneath(&root_fd, &rel)
            .map_err(|errno| failed("hide", &root.join(&rel), errno))?;
    }
    nix::unistd::chdir("/").map_err(|errno| failed("chdir", Path::new("/"), errno))
}

fn failed(op: &'static str, target: &Path, errno: nix::errno::Errno) -> feather_sys::SysError {
    feather_sys::SysError {
        op,
        target: target.display().to_string(),
        errno,
    }
}

/// 5. A /proc of the VM's own pid namespace; the parts that speak about or to the host kernel
///    are masked or read-only. These stay as they are: a VM has neither CAP_SYS_ADMIN nor the
///    mount calls (seccomp), so it can neither remount them read-write nor unmount them.
fn mount_proc(root: &Path, tree: &fs::File) -> Result<()> {
    let proc_dir = root.join("proc");
    let point = own_mount_point(tree, "proc")?;
    mount::api_filesystem(
        "proc",
        &by_descriptor(&point),
        Flags::MS_NOSUID | Flags::MS_NODEV | Flags::MS_NOEXEC,
        None,
    )
    .map_err(at_vm_path(Path::new("/proc")))?;
    for dir in READ_ONLY_PROC {
        let target = proc_dir.join(dir);
        if target.exists() {
            mount::bind_over_readonly(&target)?;
        }
    }
    Ok(())
}

/// Masks each of `paths` (relative to the VM's root) that exists: a folder under an empty
/// read-only tmpfs, anything else under /dev/null. These are kernel filesystems (proc,
/// sysfs), whose tree a VM cannot change. The folders' masks are one tmpfs: the first folder
/// masked (`folder_mask`, kept across calls) gets it, and every later one a bind of it, which
/// keeps its mount's flags (read-only, nosuid, nodev, noexec) and its read-only superblock.
/// Each superblock costs every memory cgroup of the host a bit of its shrinker bitmap (see
/// docs/design.md, "An idle VM's kernel memory"), and a restore binds one mask at every
/// masked folder already ([`is_folder_mask`]).
fn mask(root: &Path, paths: &[&str], folder_mask: &mut Option<PathBuf>) -> Result<()> {
    for path in paths {
        let target = root.join(path);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => match folder_mask {
                Some(first) => mount::bind(first, &target)?,
                None => {
                    mount_mask(&target)?;
                    *folder_mask = Some(target);
                }
            },
            Ok(_) => mount::bind(Path::new("/dev/null"), &target)?,
            Err(_) => {}
        }
    }
    Ok(())
}

/// The mask over a folder: an empty tmpfs, read-only from its making (its superblock too, so
/// no remount of the mount alone makes it writable), holding nothing and able to hold nothing.
/// A restore hands one to CRIU for every mask of the VM (see [`is_folder_mask`]).
pub(crate) fn mount_mask(target: &Path) -> Result<()> {
    mount::tmpfs(
        target,
        Flags::MS_RDONLY | Flags::MS_NOSUID | Flags::MS_NODEV | Flags::MS_NOEXEC,
        "size=0,mode=0555",
    )
}

/// Whether `mount`, as the VM's init's mountinfo shows it, is one of the masks over a folder
/// that [`assemble`] made: a read-only tmpfs at one of the masked paths (a VM cannot mount, so
/// nothing else is there). Its content is known, nothing: a checkpoint need not carry it.
pub(crate) fn is_folder_mask(mount: &feather_sys::mountinfo::MountEntry) -> bool {
    let Ok(path) = mount.mount_point.strip_prefix("/") else {
        return false;
    };
    mount.fs_type == "tmpfs"
        && mount.super_options.split(',').any(|o| o == "ro")
        && MASKED_PROC
            .iter()
            .chain(&MASKED_SYS)
            .any(|masked| path == Path::new(masked))
}

/// The key a checkpoint gives a bind of a host file that [`assemble`] made in the VM — a device
/// of [`DEVICES`], /dev/null over a masked file, init's program and libraries in [`INIT_DIR`] —
/// from `mount`, as the VM's init's mountinfo shows it (a VM cannot mount, so nothing else is
/// at these points); None for any other mount. A restore binds each key from the host file
/// [`host_file_binds`] names for it, never from a host path the images hold: CRIU's automatic
/// external mounts take that path from the images, where a crafted checkpoint could name any.
pub(crate) fn host_file_key(mount: &feather_sys::mountinfo::MountEntry) -> Option<String> {
    let point = &mount.mount_point;
    let name = point.file_name()?.to_str()?;
    let parent = point.parent()?;
    let device = parent == Path::new("/dev") && DEVICES.contains(&name);
    let masked_file = !is_folder_mask(mount) && masked_paths().any(|m| m == point.as_path());
    let init_file = parent == Path::new(INIT_DIR);
    (device || masked_file || init_file).then(|| key_of(point))
}

/// The host file each key of [`host_file_key`] is bound from on this host: its devices, its
/// /dev/null for the masked files, and `init_files` (this host's feather binary and libraries,
/// see [`RootfsPlan::init_files`]) by name.
pub(crate) fn host_file_binds(init_files: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let devices = DEVICES.iter().map(|name| {
        let path = Path::new("/dev").join(name);
        (key_of(&path), path)
    });
    let masks = masked_paths().map(|point| (key_of(&point), PathBuf::from("/dev/null")));
    let init = init_files.iter().filter_map(|file| {
        let point = Path::new(INIT_DIR).join(file.file_name()?);
        Some((key_of(&point), file.clone()))
    });
    devices.chain(masks).chain(init).collect()
}

/// `/dev/null` → `feather-host-dev-null`.
fn key_of(vm_path: &Path) -> String {
    format!(
        "feather-host{}",
        vm_path.display().to_string().replace('/', "-")
    )
}

/// Every path of [`MASKED_PROC`] and [`MASKED_SYS`], as a VM path.
fn masked_paths() -> impl Iterator<Item = PathBuf> {
    MASKED_PROC
        .iter()
        .chain(&MASKED_SYS)
        .map(|masked| Path::new("/").join(masked))
}

/// 6b. The VM's services get cgroups of their own below the VM's: the `services` folder of
///     the VM's group in each hierarchy (memory, pids, cpu, cpuacct, v2; never devices) is bound
///     at its usual place under `/sys/fs/cgroup` (a read-only tmpfs holding only these mount
///     points). The VM's root can make groups and move its own processes there, and set limits
///     below the VM's own, which it never sees: the VM's group itself (where the keeper wrote
///     the VM's limits) is above every mount the VM has.
fn mount_service_cgroups(root: &Path, subtrees: &[(PathBuf, PathBuf)]) -> Result<()> {
    if subtrees.is_empty() {
        return Ok(());
    }
    let top = root.join("sys/fs/cgroup");
    mount_cgroup_top(&top, subtrees.iter().map(|(_, at)| at.as_path()))?;
    for (subtree, at) in subtrees {
        match fs::create_dir(subtree) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io_failed("create cgroup", subtree)(e));
            }
            _ => {}
        }
        mount::bind(subtree, &top.join(at))?;
    }
    mount::remount_bind_readonly(&top)
}

/// The tmpfs at `/sys/fs/cgroup` (see [`mount_service_cgroups`]), holding only the folders
/// `mount_points` (relative to it), where each hierarchy is bound next. The mount is made
/// read-only once they are bound; a restore, which hands it to CRIU to bind the hierarchies
/// again (see [`cgroup_top_folders`]), makes it read-only at once.
pub(crate) fn mount_cgroup_top<'a>(
    top: &Path,
    mount_points: impl Iterator<Item = &'a Path>,
) -> Result<()> {
    mount::tmpfs(
        top,
        Flags::MS_NOSUID | Flags::MS_NODEV | Flags::MS_NOEXEC,
        "mode=0755,size=16k",
    )?;
    for at in mount_points {
        let target = top.join(at);
        fs::create_dir_all(&target).map_err(io_failed("create", &target))?;
    }
    Ok(())
}

/// If `mount`, as the VM's init's mountinfo shows it, is the tmpfs [`mount_service_cgroups`]
/// made at `/sys/fs/cgroup`: the folders it holds, the first part of the mount point of each
/// of `mounts` below it. Read-only, so the VM added nothing: a checkpoint need not carry it.
pub(crate) fn cgroup_top_folders(
    mount: &feather_sys::mountinfo::MountEntry,
    mounts: &[feather_sys::mountinfo::MountEntry],
) -> Option<Vec<PathBuf>> {
    let top = Path::new("/sys/fs/cgroup");
    if mount.fs_type != "tmpfs" || mount.mount_point != top {
        return None;
    }
    let mut folders: Vec<PathBuf> = mounts
        .iter()
        .filter_map(|m| m.mount_point.strip_prefix(top).ok()?.iter().next())
        .map(PathBuf::from)
        .collect();
    folders.sort();
    folders.dedup();
    Some(folders)
}

fn io_failed(
    op: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> feather_sys::SysError {
    let target = path.display().to_string();
    move |e: std::io::Error| feather_sys::SysError {
        op,
        target,
        errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    }
}

/// 7. A minimal /dev: a few harmless devices, a devpts instance of the VM's own (its terminals
///    are not the host's), a private /dev/shm and a POSIX message-queue filesystem that shows
///    only the VM's IPC namespace.
fn mount_dev(root: &Path, tree: &fs::File) -> Result<()> {
    let dev = root.join("dev");
    let point = own_mount_point(tree, "dev")?;
    mount::tmpfs(
        &by_descriptor(&point),
        Flags::MS_NOSUID | Flags::MS_NOEXEC,
        "mode=0755,size=64k",
    )
    .map_err(at_vm_path(Path::new("/dev")))?;
    for name in DEVICES {
        let target = dev.join(name);
        let _ = fs::File::create(&target);
        mount::bind(&Path::new("/dev").join(name), &target)?;
    }
    let pts = dev.join("pts");
    let _ = fs::create_dir(&pts);
    mount::api_filesystem(
        "devpts",
        &pts,
        Flags::MS_NOSUID | Flags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let _ = symlink("pts/ptmx", dev.join("ptmx"));
    for dir in ["shm", "mqueue"] {
        let _ = fs::create_dir(dev.join(dir));
    }
    mount::tmpfs(
        &dev.join("shm"),
        Flags::MS_NOSUID | Flags::MS_NODEV,
        "mode=1777,size=50%",
    )?;
    mount::api_filesystem(
        "mqueue",
        &dev.join("mqueue"),
        Flags::MS_NOSUID | Flags::MS_NODEV | Flags::MS_NOEXEC,
        None,
    )?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = symlink(target, dev.join(link));
    }
    Ok(())
}

fn inside(root: &Path, vm_path: &Path) -> PathBuf {
    root.join(vm_path.strip_prefix("/").unwrap_or(vm_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What init's own mount table says of a filesystem the keeper listed, by the id of the
    /// mount its path led to: mounted at its place, or gone.
    #[test]
    fn a_listed_filesystem_is_found_by_the_id_of_the_mount_its_path_led_to() {
        let table = feather_sys::mountinfo::parse(
            "1 0 8:1 / / rw - ext4 /dev/vda rw\n\
             2 1 0:40 / /base/srv rw - tmpfs t rw\n\
             3 1 0:41 / /base/with\\040space rw - tmpfs t rw\n\
             4 1 0:42 / /base/sys rw - sysfs sysfs rw\n\
             5 1 0:43 / /base/stacked rw - proc proc rw\n\
             6 5 0:44 / /base/stacked rw - tmpfs t rw\n",
        );
        for (id, mounted) in [
            (2, "/base/srv"),
            (3, "/base/with space"),
            (6, "/base/stacked"),
        ] {
            assert!(is_mounted_in(&table, Path::new(mounted), id), "{mounted}");
        }
        // Nothing at the path; the mount found elsewhere (the folder beneath, a link to another
        // mount); a kernel interface.
        for (id, gone) in [
            (2, "/base/opt"),
            (1, "/base/opt"),
            (2, "/base/stacked"),
            (4, "/base/sys"),
        ] {
            assert!(!is_mounted_in(&table, Path::new(gone), id), "{gone}");
        }
        assert_eq!(
            Path::new("/base").join(in_base(Path::new("/srv"))),
            Path::new("/base/srv")
        );
        assert_eq!(
            Path::new("/").join(in_base(Path::new("/srv"))),
            Path::new("/srv")
        );
    }

    #[test]
    fn a_dynamic_init_runs_through_its_loader_from_the_init_folder() {
        let files = [
            "/usr/local/bin/feather-keeper",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ]
        .map(PathBuf::from);
        assert_eq!(
            in_vm_program(&files).unwrap(),
            [
                "/run/.feather-init/ld-linux-x86-64.so.2",
                "--library-path",
                "/run/.feather-init",
                "/run/.feather-init/feather-keeper",
            ]
        );
    }

    /// A statically linked keeper maps no loader (and no library): init re-executes the
    /// program itself rather than giving up (it said "no dynamic loader mapped" and every
    /// kept VM's start failed).
    #[test]
    fn a_static_init_runs_by_itself_from_the_init_folder() {
        let files = [PathBuf::from("/usr/local/bin/feather-keeper")];
        assert_eq!(
            in_vm_program(&files).unwrap(),
            ["/run/.feather-init/feather-keeper"]
        );
        assert_eq!(in_vm_program(&[]), None);
    }
}

//! Mount operations, each named for what it is used for.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{raw, Context, Result};

const NONE: Option<&str> = None;

/// Stops mount events from travelling between the caller's new mount namespace and the host:
/// without it, mounts made for the VM would appear on the host (shared propagation), and the
/// host's later mounts would appear in the VM.
pub fn make_all_private() -> Result<()> {
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE).ctx("make private", "/")
}

/// Makes every mount of the caller's namespace shared, each in a peer group of its own (none
/// is shared with the host: [`make_all_private`] came first), so that a mount made here later
/// reaches every namespace copied from this one: as a slave into one the VM's spawner makes
/// (`MS_SLAVE` there), and into one a VM makes in a user namespace of its own (the kernel makes
/// its copies slaves). The pivot into the VM's root must come first: pivot_root refuses a
/// shared parent.
pub fn make_all_shared() -> Result<()> {
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_SHARED, NONE).ctx("make shared", "/")
}

/// Whether an overlay flushes its upper layer to disk when it is unmounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSync {
    /// The default: unmounting syncs the upper filesystem, so a stopped VM's layer is on disk.
    Durable,
    /// overlayfs's `volatile`: no sync ever. Unmounting a durable overlay syncs the *whole*
    /// upper filesystem, which can take long on a busy disk; a layer that is thrown away with
    /// its VM needs none of it. Such a layer cannot be mounted a second time.
    Volatile,
}

/// What every overlay feather mounts is told, whatever the overlay module's defaults (the
/// kernel's `CONFIG_OVERLAY_FS_{REDIRECT_DIR,INDEX,METACOPY}`, or `overlay.metacopy=Y` on its
/// command line, change them on another host): a layer is taken as it is, nothing in it leads
/// anywhere else.
/// - `redirect_dir=nofollow`: a lookup that meets a redirect is refused. `off` does not stop the
///   kernel from following one (`redirect_always_follow`), and a layer from elsewhere (an
///   imported archive, a migration's sender, an OCI image's) could carry one naming any folder
///   of the lower tree, a hidden state root included.
/// - `metacopy=off`: a file's data is its own layer's, never taken from the layer below. With
///   `nofollow` given, the kernel turns a default `metacopy=on` off by itself ("disabling
///   metacopy due to redirect_dir"); said outright, it holds however a kernel resolves the two.
/// - `index=off`: no index of hard links and file handles, whose records (`trusted.overlay.
///   origin`, `.upper`) would tie the layer to this one mount of it.
const LOCKED_DOWN: [(&str, &str); 3] = [
    ("redirect_dir", "nofollow"),
    ("metacopy", "off"),
    ("index", "off"),
];

/// Mounts an overlay of `lowers` (read-only, the uppermost first: a
/// [`crate::hiding_layer::HidingLayer`] above the tree shown) and `upper` (where writes go) at
/// `target`. `nodev`: a device node written into the layer can never be opened, so a VM cannot
/// reach a raw disk by creating one.
pub fn overlay(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
    sync: LayerSync,
) -> Result<()> {
    mount(
        Some("feather"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(overlay_options(lowers, upper, work, sync).as_str()),
    )
    .ctx("mount overlay", target.display())
}

/// The options of an [`overlay`].
fn overlay_options(lowers: &[&Path], upper: &Path, work: &Path, sync: LayerSync) -> String {
    // No redirects, metacopy or index ([`LOCKED_DOWN`]): every change is a plain file,
    // directory or whiteout in the upper layer, which `diff` and `commit` read directly; xino
    // off keeps inode numbers those of the layers. No option changes what reading through the
    // overlay costs (measured: docs/design.md, "The overlay's cost per file").
    let lowers: Vec<String> = lowers.iter().map(|lower| escape_option(lower)).collect();
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        escape_option(upper),
        escape_option(work)
    );
    for (key, value) in LOCKED_DOWN {
        options.push_str(&format!(",{key}={value}"));
    }
    options.push_str(",xino=off");
    if sync == LayerSync::Volatile {
        options.push_str(",volatile");
    }
    // A hiding layer above the tree (a tmpfs) makes the overlay one of two filesystems, where
    // `xino=off` would show folders with inode numbers of the overlay's own (new at every
    // mount) and the lower's files with another `st_dev` than their folder's: `xino=auto` (the
    // later option wins) maps every layer's numbers into one space, those of the upper's
    // filesystem unchanged, all under the overlay's `st_dev`, as when all layers are on one
    // filesystem. A lower layer cannot be on the upper's filesystem instead: the kernel refuses
    // a lower layer beneath another (`/`), "overlapping lowerdir path".
    if lowers.len() > 1 {
        options.push_str(",xino=auto");
    }
    options
}

/// overlayfs separates options with ',' and lower layers with ':'; both may be escaped.
/// Whether an overlay whose super options (a mountinfo field, as it reads) are `super_options`
/// has `upper` as its upper folder. The options are compared as [`overlay`] wrote them: the
/// kernel shows an overlay's options as they were given, escapes and all.
pub fn is_overlay_upper(super_options: &str, upper: &Path) -> bool {
    let options = crate::mountinfo::unescape(super_options);
    let wanted = format!("upperdir={}", escape_option(upper));
    let found = split_options(&options).any(|option| option == wanted);
    found
}

/// An overlay's options, split at the commas its escapes (`\,`) do not hide.
fn split_options(options: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(options);
    std::iter::from_fn(move || {
        let text = rest?;
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b',' => {
                    rest = Some(&text[i + 1..]);
                    return Some(&text[..i]);
                }
                _ => i += 1,
            }
        }
        rest = None;
        Some(text)
    })
}

fn escape_option(path: &Path) -> String {
    path.to_string_lossy()
        .replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(':', "\\:")
}

pub fn bind(source: &Path, target: &Path) -> Result<()> {
    mount(Some(source), target, NONE, MsFlags::MS_BIND, NONE).ctx("bind mount", target.display())
}

/// Makes an existing bind mount read-only (a bind mount takes its flags only on remount).
pub fn remount_bind_readonly(target: &Path) -> Result<()> {
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    mount(NONE, target, NONE, flags, NONE).ctx("remount read-only", target.display())
}

/// Makes an existing bind mount of a file a VM may read but never write or run: read-only,
/// nosuid, nodev, noexec.
pub fn remount_bind_inert(target: &Path) -> Result<()> {
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(NONE, target, NONE, flags, NONE).ctx("remount read-only", target.display())
}

/// Binds the host file `source` read-only, nosuid, nodev, noexec over the regular file `rel`
/// beneath the folder `dir` (a VM's tree being assembled): `rel` is opened with openat2 without
/// following any symbolic link and never leaving `dir`, and the bind lands on the file that
/// was opened (through `/proc/self/fd`), so a link in the VM's layer cannot steer it. Returns
/// false when there is no such regular file (nothing is bound then).
pub fn bind_file_beneath_inert(source: &Path, dir: &impl AsFd, rel: &Path) -> Result<bool> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let target = match crate::beneath::open_beneath(dir, rel, OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(e) if crate::beneath::absent(&e) => return Ok(false),
        Err(e) => {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            return Err::<bool, _>(errno).ctx("open beneath", rel.display());
        }
    };
    let is_file =
        nix::sys::stat::fstat(&target).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    if !is_file {
        return Ok(false);
    }
    bind(source, &fd_path(&target))?;
    // The descriptor still names the file beneath the bind: the new mount is opened afresh
    // (the same way) to be made read-only.
    let bound = crate::beneath::open_beneath(dir, rel, OFlag::O_PATH).map_err(|e| {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        crate::SysError {
            op: "open beneath",
            target: rel.display().to_string(),
            errno,
        }
    })?;
    remount_bind_inert(&fd_path(&bound))?;
    Ok(true)
}

fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Binds `target` over itself read-only, nosuid, nodev, noexec (a kernel interface a VM may
/// read but not write). Every mount below it stays where it is, read-write as it was.
pub fn bind_over_readonly(target: &Path) -> Result<()> {
    bind(target, target)?;
    remount_bind_inert(target)
}

/// Hides the folder `rel` beneath `dir` under an empty read-only tmpfs, as a VM must see the
/// folders of feather's state. The folder is found with openat2 without following any
/// symbolic link and never leaving `dir`, and the tmpfs is mounted on the folder that was
/// opened (through the working folder, which is left there): a path the VM can change
/// cannot steer the mount elsewhere. Returns false when there is no such folder to hide
/// (nothing of the host's is then reachable by that path). Changes the working folder.
pub fn hide_beneath(dir: &impl AsFd, rel: &Path) -> nix::Result<bool> {
    let Some(target) = open_beneath(dir, rel, OFlag::O_DIRECTORY)? else {
        return Ok(false);
    };
    empty_tmpfs_on(&target, "size=4k,mode=0755")?;
    Ok(true)
}

/// Masks the kernel interface `rel` beneath `dir` as a VM's recipe does: a folder under an
/// empty read-only tmpfs (size 0, its superblock read-only too), a file under `dev_null`, a
/// detached bind mount of the host's `/dev/null` (`raw::open_tree_clone`, made in the host's
/// mount namespace), which this consumes. Found as [`hide_beneath`] finds a folder: without
/// following a symbolic link, never leaving `dir`, and mounted on what was opened. Returns
/// false when there is nothing at `rel`. Changes the working folder.
pub fn mask_beneath(dir: &impl AsFd, rel: &Path, dev_null: OwnedFd) -> nix::Result<bool> {
    let Some(target) = open_beneath(dir, rel, OFlag::empty())? else {
        return Ok(false);
    };
    if nix::sys::stat::fstat(&target)?.st_mode & libc::S_IFMT != libc::S_IFDIR {
        raw::move_mount_onto(dev_null.as_fd(), target.as_fd())?;
        return Ok(true);
    }
    empty_tmpfs_on(&target, "size=0,mode=0555")?;
    Ok(true)
}

/// `rel` (leading `/` ignored) opened `O_PATH` (with `flags`) beneath `dir` without following
/// any symbolic link and never leaving it; None when nothing of that kind is there.
fn open_beneath(dir: &impl AsFd, rel: &Path, flags: OFlag) -> nix::Result<Option<OwnedFd>> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | flags)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    // EAGAIN: a rename raced the lookup; the kernel asks for a retry.
    let mut tries = 0;
    loop {
        match openat2(dir.as_fd(), rel, how) {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => return Ok(None),
            Err(errno) => return Err(errno),
        }
    }
}

/// Mounts an empty read-only, inert tmpfs with `options` on the folder `target` (through the
/// working folder, which is left there): no path is looked up again.
fn empty_tmpfs_on(target: &OwnedFd, options: &str) -> nix::Result<()> {
    nix::unistd::fchdir(target)?;
    mount(
        Some("tmpfs"),
        ".",
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options),
    )
}

pub fn tmpfs(target: &Path, flags: MsFlags, options: &str) -> Result<()> {
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options))
        .ctx("mount tmpfs", target.display())
}

/// Mounts a kernel filesystem such as proc, sysfs, devpts or mqueue.
pub fn api_filesystem(
    fs_type: &str,
    target: &Path,
    flags: MsFlags,
    options: Option<&str>,
) -> Result<()> {
    mount(Some(fs_type), target, Some(fs_type), flags, options)
        .ctx("mount", format_args!("{fs_type} on {}", target.display()))
}

/// Makes `new_root` the caller's root and detaches the old root entirely, so that no path
/// inside the VM leads back to the host's tree.
pub fn pivot_into(new_root: &Path) -> Result<()> {
    pivot(new_root)?;
    detach_old_root()
}

/// [`pivot_into`], whose last step runs on a thread of its own beside what the caller does
/// next: the detach of the old root waits for an RCU grace period (`namespace_unlock`), 0.1 to
/// over 10 ms on a busy host, although the old tree is gone from the namespace at its start.
/// Until [`OldRoot::detached`] has returned, the host's tree may still be stacked over the
/// new root and the working folder (shared with the thread) must not change: the caller
/// resolves no path and starts no process before it.
pub fn pivot_beside(new_root: &Path) -> Result<OldRoot> {
    pivot(new_root)?;
    match std::thread::Builder::new()
        .name("detach-old-root".into())
        .stack_size(64 * 1024)
        .spawn(detach_old_root)
    {
        Ok(thread) => Ok(OldRoot(Some(thread))),
        // No thread: the detach is done here, as pivot_into does it.
        Err(_) => detach_old_root().map(|()| OldRoot(None)),
    }
}

/// The host's root being detached by [`pivot_beside`]'s thread.
#[must_use = "the old root is gone only once `detached` has returned"]
pub struct OldRoot(Option<std::thread::JoinHandle<Result<()>>>);

impl OldRoot {
    /// Waits until the old root is detached: from here on no path leads back to the host.
    /// The caller is then again the process's only thread (it may fork).
    pub fn detached(self) -> Result<()> {
        let Some(thread) = self.0 else {
            return Ok(());
        };
        thread.join().unwrap_or_else(|_| {
            Err(Errno::EIO).ctx("detach old root", "/ (its thread panicked)")
        })?;
        raw::await_single_thread(std::time::Duration::from_secs(1)).ctx(
            "wait for the end of",
            "the thread that detached the old root",
        )
    }
}

/// pivot_root(".", ".") in `new_root`: stacks the old root on top of the new one at "/", so
/// that unmounting "." ([`detach_old_root`]) removes it without a folder to park it in.
fn pivot(new_root: &Path) -> Result<()> {
    nix::unistd::chdir(new_root).ctx("chdir", new_root.display())?;
    nix::unistd::pivot_root(".", ".").ctx("pivot_root", new_root.display())
}

fn detach_old_root() -> Result<()> {
    umount2(".", MntFlags::MNT_DETACH).ctx("detach old root", "/")?;
    nix::unistd::chdir("/").ctx("chdir", "/")
}

pub use nix::mount::MsFlags as Flags;

/// The unique id of the mount `fd` is on (statx STATX_MNT_ID_UNIQUE): what the kernel says a
/// mount is, where a path could be changed under us.
pub fn mount_id(fd: &impl std::os::fd::AsFd) -> Result<u64> {
    use std::os::fd::AsRawFd;
    raw::unique_mount_id(fd.as_fd().as_raw_fd()).ctx("statx(STATX_MNT_ID_UNIQUE)", "descriptor")
}

/// The filesystem's handle of the inode `fd` is (name_to_handle_at: its type and bytes), which
/// names it on that filesystem wherever it is mounted, in any mount namespace and across
/// reboots (see [`raw::file_handle`]).
pub fn file_handle(fd: &impl std::os::fd::AsFd) -> Result<(i32, Vec<u8>)> {
    use std::os::fd::AsRawFd;
    raw::file_handle(fd.as_fd().as_raw_fd()).ctx("name_to_handle_at", "descriptor")
}

/// The 16-byte volume UUID of the filesystem `fd` is on (FS_IOC_GETFSUUID, on kernels that
/// have it: Linux 6.9 and later, and backports; ext4, XFS, btrfs, f2fs, erofs and tmpfs give
/// one), which names the volume wherever its disk sits, where `statfs`'s `f_fsid` may be only
/// the device number (XFS); None where the filesystem gives none (exFAT, squashfs, FUSE, a
/// kernel without the ioctl), gives all zeros (a filesystem made without one) or gives fewer
/// than 16 bytes (FAT's 4-byte volume serial, which volumes repeat by chance and by design). An
/// `O_PATH` descriptor (which takes no ioctl) is reopened through `/proc/self/fd` to ask: the
/// same inode, no path walked.
pub fn volume_uuid(fd: &impl std::os::fd::AsFd) -> Option<Vec<u8>> {
    let asked = match raw::volume_uuid(fd.as_fd()) {
        Err(nix::errno::Errno::EBADF) => {
            let own = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let reopened =
                nix::fcntl::open(own.as_str(), flags, nix::sys::stat::Mode::empty()).ok()?;
            raw::volume_uuid(reopened.as_fd())
        }
        asked => asked,
    };
    asked
        .ok()
        .filter(|uuid| uuid.len() == 16 && uuid.iter().any(|&byte| byte != 0))
}

/// Flags of a detached mount made by [`clone_tree`] (`MOUNT_ATTR_*` of uapi/linux/mount.h).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeFlags {
    pub read_only: bool,
    pub no_suid: bool,
    pub no_dev: bool,
}

impl TreeFlags {
    fn bits(self) -> u64 {
        const MOUNT_ATTR_RDONLY: u64 = 0x01;
        const MOUNT_ATTR_NOSUID: u64 = 0x02;
        const MOUNT_ATTR_NODEV: u64 = 0x04;
        [
            (self.read_only, MOUNT_ATTR_RDONLY),
            (self.no_suid, MOUNT_ATTR_NOSUID),
            (self.no_dev, MOUNT_ATTR_NODEV),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |bits, (_, bit)| bits | bit)
    }
}

/// A detached bind mount of exactly the file or folder `fd` refers to (no submounts):
/// `open_tree(OPEN_TREE_CLONE)`. The caller must be in the mount namespace that holds `fd`'s
/// mount.
pub fn clone_tree(fd: &impl AsFd) -> Result<OwnedFd> {
    raw::open_tree_clone(fd.as_fd(), false).ctx("open_tree", "descriptor")
}

/// [`clone_tree`], in a peer group of its own: a clone keeps its source's propagation, so a
/// clone of a VM's mount (a VM's tree is shared, so that what the host hides in it reaches
/// every namespace of the VM) or of a host mount under systemd (whose `/` is shared) would
/// be a peer of its source wherever it is attached, and mounts made later under either would
/// appear under the other: between two VMs, or between the host and a VM.
pub fn clone_tree_private(fd: &impl AsFd) -> Result<OwnedFd> {
    let tree = clone_tree(fd)?;
    set_propagation(&tree, MsFlags::MS_PRIVATE, false)?;
    Ok(tree)
}

/// [`clone_tree`] with the mounts beneath `fd` too (`AT_RECURSIVE`): an `rbind`'s tree.
pub fn clone_tree_recursive(fd: &impl AsFd) -> Result<OwnedFd> {
    raw::open_tree_clone(fd.as_fd(), true).ctx("open_tree(AT_RECURSIVE)", "descriptor")
}

/// A read-only overlay of `lowers` (uppermost first), as a detached mount that no path leads
/// to (`fsopen`, `fsconfig` with one `lowerdir+` each, `fsmount`): the merged view of an
/// overlay's lower layers, without its upper one.
pub fn detached_lower_overlay(lowers: &[&Path]) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let context = raw::fsopen(c"overlay").ctx("fsopen", "overlay")?;
    for (key, value) in lower_overlay_settings(lowers) {
        let shown = format!("{key} {}", Path::new(value).display());
        let key = std::ffi::CString::new(key).map_err(|_| Errno::EINVAL);
        let value = std::ffi::CString::new(value.as_bytes()).map_err(|_| Errno::EINVAL);
        key.and_then(|key| raw::fsconfig_string(context.as_fd(), &key, &value?))
            .ctx("fsconfig", shown)?;
    }
    raw::fsmount_readonly(context.as_fd()).ctx("fsmount", "overlay of lower layers")
}

/// What a [`detached_lower_overlay`] of `lowers` is told, in order: one `lowerdir+` each, then,
/// as an [`overlay`] is, [`LOCKED_DOWN`]: nothing in a layer (an image's) leads elsewhere.
fn lower_overlay_settings<'a>(lowers: &[&'a Path]) -> Vec<(&'static str, &'a std::ffi::OsStr)> {
    let lowers = lowers.iter().map(|lower| ("lowerdir+", lower.as_os_str()));
    let locked = LOCKED_DOWN
        .iter()
        .map(|&(key, value)| (key, std::ffi::OsStr::new(value)));
    lowers.chain(locked).collect()
}

/// A tmpfs as a detached mount that no path leads to (`fsopen`, `fsconfig`, `fsmount`), `nodev`,
/// its root folder of `mode`: it lives as long as a descriptor or a mount (an overlay using a
/// folder of it as its upper layer) holds it, and no longer, whoever dies when.
pub fn detached_tmpfs(mode: &std::ffi::CStr) -> Result<OwnedFd> {
    const MOUNT_ATTR_NODEV: libc::c_uint = 0x04;
    let context = raw::fsopen(c"tmpfs").ctx("fsopen", "tmpfs")?;
    raw::fsconfig_string(context.as_fd(), c"mode", mode).ctx("fsconfig mode", "tmpfs")?;
    raw::fsmount(context.as_fd(), MOUNT_ATTR_NODEV).ctx("fsmount", "tmpfs")
}

/// Makes the detached mount `tree` an id-mapped one (`mount_setattr` with
/// `MOUNT_ATTR_IDMAP`): files owned by an id appear owned by what the user namespace `userns`
/// maps it to. `recursive`: every mount of the tree, else its top one only. The caller must
/// be privileged over the filesystem's own user namespace (the host's, for a disk).
pub fn idmap_tree(tree: &impl AsFd, userns: &impl AsFd, recursive: bool) -> Result<()> {
    raw::mount_setattr_idmap(tree.as_fd(), userns.as_fd(), recursive)
        .ctx("mount_setattr(MOUNT_ATTR_IDMAP)", "descriptor")
}

/// Sets `flags` on a mount made by [`clone_tree`] (`mount_setattr`).
pub fn set_tree_flags(tree: &impl AsFd, flags: TreeFlags) -> Result<()> {
    raw::mount_setattr_set(tree.as_fd(), flags.bits()).ctx("mount_setattr", "descriptor")
}

/// Attaches the detached mount `tree` on exactly the file or folder `point` refers to (an
/// `O_PATH` descriptor), in the caller's mount namespace (`move_mount`): no name is looked up,
/// so nothing renamed meanwhile can move where it lands.
pub fn attach_tree(tree: &impl AsFd, point: &impl AsFd) -> Result<()> {
    raw::move_mount_onto(tree.as_fd(), point.as_fd()).ctx("move_mount", "descriptor")
}

/// `MOUNT_ATTR_*` of uapi/linux/mount.h: a mount's own flags, for [`set_attributes`] and
/// [`new_filesystem`].
pub mod attr {
    pub const RDONLY: u64 = 0x01;
    pub const NOSUID: u64 = 0x02;
    pub const NODEV: u64 = 0x04;
    pub const NOEXEC: u64 = 0x08;
    /// The three access-time modes below are one field: clear it to set one.
    pub const ATIME: u64 = 0x70;
    pub const RELATIME: u64 = 0x00;
    pub const NOATIME: u64 = 0x10;
    pub const STRICTATIME: u64 = 0x20;
    pub const NODIRATIME: u64 = 0x80;
}

/// Sets the attributes `set` and clears `clear` ([`attr`]) on the mount `fd` is on (the whole
/// tree below it too with `recursive`), attached or detached (`mount_setattr`): the mount is
/// the one the descriptor holds, never one a path leads to.
pub fn set_attributes(fd: &impl AsFd, set: u64, clear: u64, recursive: bool) -> Result<()> {
    raw::mount_setattr(fd.as_fd(), recursive, set, clear, 0).ctx("mount_setattr", "descriptor")
}

/// Sets the propagation of the mount `fd` is on (with `recursive`, of every mount below it
/// too): `propagation` one of `MS_SHARED`, `MS_SLAVE`, `MS_PRIVATE`, `MS_UNBINDABLE`.
pub fn set_propagation(fd: &impl AsFd, propagation: MsFlags, recursive: bool) -> Result<()> {
    raw::mount_setattr(fd.as_fd(), recursive, 0, 0, propagation.bits())
        .ctx("mount_setattr(propagation)", "descriptor")
}

/// A new filesystem of `fs_type` as a detached mount that no path leads to (`fsopen`,
/// `fsconfig`, `fsmount`): `source` its source name, each of `options` a `key=value` or a
/// `key` (the filesystem's own options, and the superblock's `ro`, `sync`, `dirsync`,
/// `lazytime`), the mount's flags `attributes` ([`attr`]). Attach it with [`attach_tree`].
pub fn new_filesystem(
    fs_type: &str,
    source: &str,
    options: &[&str],
    attributes: u64,
) -> Result<OwnedFd> {
    let c = |text: &str| {
        std::ffi::CString::new(text)
            .map_err(|_| Errno::EINVAL)
            .ctx("a NUL byte in", text)
    };
    let context = raw::fsopen(&c(fs_type)?).ctx("fsopen", fs_type)?;
    raw::fsconfig_string(context.as_fd(), c"source", &c(source)?)
        .ctx("fsconfig source", format_args!("{fs_type} {source}"))?;
    for option in options {
        let set = match option.split_once('=') {
            Some((key, value)) => raw::fsconfig_string(context.as_fd(), &c(key)?, &c(value)?),
            None => raw::fsconfig_flag(context.as_fd(), &c(option)?),
        };
        set.ctx("fsconfig", format_args!("{fs_type} option {option}"))?;
    }
    raw::fsmount(context.as_fd(), attributes as libc::c_uint).ctx("fsmount", fs_type)
}

/// Whether a live overlay uses `upper` as its upper folder: an overlay a process still holds
/// (a descriptor, a working folder, a mapping) after every mount of it went, a lazily unmounted
/// one, or a mounted one. Mounting `upper` again beside it would be two overlays on one upper
/// layer, which overlayfs calls undefined behaviour (lost or corrupt files) and only warns of.
///
/// The kernel is asked, not a record: a new overlay of `upper` is made with `index=on`, with
/// which overlayfs refuses an upper folder in use (`EBUSY`) instead of warning, and with its
/// work folder on another filesystem (a detached tmpfs), which overlayfs refuses (`EINVAL`)
/// right after the upper folder's check and before it writes anything: the probe never
/// mounts, and leaves the layer as it was (checked on 6.18: no folder, no attribute made). The
/// refusal of a free layer is a line in the kernel's log ("workdir and upperdir must reside
/// under the same mount"), so callers probe only where an old overlay may have been left.
pub fn overlay_upper_in_use(upper: &Path) -> Result<bool> {
    let elsewhere = detached_tmpfs(c"0700")?;
    let elsewhere_path = format!("/proc/self/fd/{}", elsewhere.as_raw_fd());
    let c = |text: &str| std::ffi::CString::new(text).map_err(|_| Errno::EINVAL);
    let context = raw::fsopen(c"overlay").ctx("fsopen", "overlay")?;
    let set = |key: &std::ffi::CStr, value: &str| {
        c(value)
            .and_then(|value| raw::fsconfig_string(context.as_fd(), key, &value))
            .ctx(
                "fsconfig",
                format_args!("probe of {}: {key:?}", upper.display()),
            )
    };
    set(c"lowerdir", &elsewhere_path)?;
    set(c"upperdir", &escape_option(upper))?;
    set(c"workdir", &elsewhere_path)?;
    set(c"index", "on")?;
    match raw::fsmount(context.as_fd(), 0) {
        Err(Errno::EBUSY) => Ok(true),
        // The expected refusal, of the work folder. Which other EINVAL could come first: the
        // options' consistency check (fixed options: one that failed would fail for every
        // upper, also one in use, which the test below sees as EBUSY on this kernel), and an
        // upper on a read-only filesystem (refused before the in-use check; no overlay can
        // write such a layer). Paths that cannot be used fail at `fsconfig`, an error here.
        Err(Errno::EINVAL) => Ok(false),
        Err(errno) => Err(errno).ctx("probe overlay of", upper.display()),
        // Not reached (the work folder is on another filesystem); dropped, it is no mount.
        Ok(_) => Ok(false),
    }
}

#[cfg(test)]
mod tree_tests {
    use super::TreeFlags;

    #[test]
    fn tree_flags_are_the_kernels_bits() {
        assert_eq!(TreeFlags::default().bits(), 0);
        let all = TreeFlags {
            read_only: true,
            no_suid: true,
            no_dev: true,
        };
        assert_eq!(all.bits(), 0x07);
    }

    /// Every overlay feather mounts is told to follow no redirect, take no file's data from the
    /// layer below (metacopy) and keep no index, whatever the module's defaults say (the
    /// read-only overlay of an OCI image's layers relied on them for metacopy). The kernel takes
    /// the settings: a metacopy-marked file in the upper of two lower layers shows its own
    /// (empty) data, not the one below's.
    #[test]
    fn every_overlay_is_told_to_follow_nothing_whatever_the_modules_defaults() {
        use std::path::Path;
        let lower = [Path::new("/lower")];
        let options = super::overlay_options(
            &lower,
            Path::new("/upper"),
            Path::new("/work"),
            super::LayerSync::Durable,
        );
        let settings: Vec<String> = super::lower_overlay_settings(&lower)
            .iter()
            .map(|(key, value)| format!("{key}={}", value.to_string_lossy()))
            .collect();
        for wanted in ["redirect_dir=nofollow", "metacopy=off", "index=off"] {
            assert!(
                options.split(',').any(|option| option == wanted),
                "{wanted} missing from {options}"
            );
            assert!(
                settings.iter().any(|setting| setting == wanted),
                "{wanted} missing from {settings:?}"
            );
        }

        let scratch = feather_testkit::ScratchDir::new("lower-overlay");
        let dir = scratch.0.clone();
        let [top, bottom] = ["top", "bottom"].map(|n| dir.join(n));
        for folder in [&top, &bottom] {
            std::fs::create_dir_all(folder).unwrap();
        }
        std::fs::write(bottom.join("file"), "the layer below's").unwrap();
        std::fs::write(top.join("file"), "").unwrap();
        xattr::set(top.join("file"), "trusted.overlay.metacopy", b"").unwrap();
        let merged = super::detached_lower_overlay(&[&top, &bottom]);
        let read = merged.as_ref().map_err(|e| e.to_string()).map(|merged| {
            nix::fcntl::openat(
                merged,
                "file",
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map(|fd| std::io::read_to_string(std::fs::File::from(fd)))
        });
        drop(merged);
        let read = read.expect("the overlay of lower layers mounts");
        assert!(
            !matches!(&read, Ok(Ok(data)) if !data.is_empty()),
            "the metacopy mark was followed: {read:?}"
        );
    }

    /// The probe against the real kernel (as root, as feather's tests run): an overlay of an
    /// upper folder is in use while mounted and while a descriptor holds it after a lazy
    /// unmount, free once the last hold goes; the probe writes nothing into the layer.
    #[test]
    fn an_upper_folder_is_in_use_while_any_overlay_of_it_lives() {
        use std::path::Path;
        let scratch = feather_testkit::ScratchDir::new("probe");
        let dir = scratch.0.clone();
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|n| dir.join(n));
        for folder in [&lower, &upper, &work, &merged] {
            std::fs::create_dir_all(folder).unwrap();
        }
        // Every entry of the upper and work folders with every attribute (`trusted.*` too,
        // as root), as `getfattr` dumps them: what a probe must leave as it was.
        let state = || {
            let dump = std::process::Command::new("getfattr")
                .args(["-R", "-d", "-m", "-", "--absolute-names"])
                .args([&upper, &work])
                .output()
                .unwrap();
            assert!(dump.status.success(), "getfattr: {dump:?}");
            let mut names = Vec::new();
            let mut folders = vec![upper.clone(), work.clone()];
            while let Some(folder) = folders.pop() {
                for entry in std::fs::read_dir(&folder).unwrap() {
                    let entry = entry.unwrap();
                    if entry.file_type().unwrap().is_dir() {
                        folders.push(entry.path());
                    }
                    names.push(entry.path());
                }
            }
            names.sort();
            (names, String::from_utf8_lossy(&dump.stdout).into_owned())
        };
        // A probe, and whether it changed anything.
        let probe = |upper: &Path| {
            let before = state();
            let answer = super::overlay_upper_in_use(upper);
            (answer, before == state())
        };
        let fresh = probe(&upper);
        super::overlay(
            &[lower.as_path()],
            &upper,
            &work,
            &merged,
            super::LayerSync::Durable,
        )
        .unwrap();
        std::fs::write(merged.join("marker"), "harmless").unwrap();
        let held = std::fs::File::open(merged.join("marker")).unwrap();
        let mounted = probe(&upper);
        nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH).unwrap();
        let only_held = probe(&upper);
        drop(held);
        // The last hold of a lazily unmounted overlay is let go as its file closes.
        let free = probe(&upper);
        assert!(!fresh.0.unwrap(), "a fresh folder is free");
        assert!(
            mounted.0.unwrap(),
            "a mounted overlay's upper folder is in use"
        );
        assert!(
            only_held.0.unwrap(),
            "a held overlay's upper folder is in use"
        );
        assert!(!free.0.unwrap(), "free once nothing holds the overlay");
        assert_eq!(
            [fresh.1, mounted.1, only_held.1, free.1],
            [true; 4],
            "a probe changed an entry or an attribute of the layer or its work folder"
        );
    }
}

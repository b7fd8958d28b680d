//! What is at a path of a restored mount namespace, looked up by host-root code while the
//! restored tree is frozen ([`crate::restored_mounts`]), one component at a time so that no
//! lookup enters a filesystem whose answers may wait on a process or the network.
//!
//! A FUSE server is a process; so is an NFS server, or the process a network filesystem's
//! packets go through. One of the frozen tree's (or a VM's) would never answer: a lookup,
//! `stat` or `readdir` there waits in the kernel for good (FUSE waits even for the answer to
//! its `INIT`), and the host's restore with it (review rest28 N8). So each component is opened
//! `O_PATH` with `openat2` `RESOLVE_NO_XDEV` (the kernel answers `EXDEV` at a mount point
//! rather than crossing it) and the mount there is found in the namespace's own table, by its
//! parent's id and mount point: entered only when its type is one the kernel answers alone
//! ([`answers_alone`]), and then checked, after the crossing, to be that mount (its id from
//! `fdinfo`, which asks no filesystem). Another is never entered: a path at its mount point
//! is told by the table alone (its mount's id, neither `/dev/null` nor an empty folder), and a
//! path beneath it cannot be judged (an error naming the mount).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use feather_sys::mountinfo::MountEntry;
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};

/// What is at a path of the tree, looked up from its root as `create` places its mounts:
/// links followed, never out of the root, no magic link's jump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Missing,
    /// Links that lead nowhere but round (a loop, or too many): the path cannot be judged.
    Link,
    /// A file or folder on the mount `mount` (its id).
    At {
        mount: u64,
        /// The character device 1:3 (`/dev/null`).
        null: bool,
        /// A folder with nothing in it.
        empty_folder: bool,
    },
}

/// As many links as the kernel follows in one lookup (`MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Whether lookups on a filesystem of type `fs_type` are answered by the kernel alone (its
/// own memory, or a local block device's), never by a process or a server: the kernel's
/// pseudo-filesystems, tmpfs and overlay (over the host's layers), local disk filesystems.
/// Fails closed: a type not listed (FUSE, NFS, CIFS, 9p, Ceph, autofs, one this list does not
/// know) is not entered.
pub fn answers_alone(fs_type: &str) -> bool {
    const KERNELS: &[&str] = &[
        "proc",
        "sysfs",
        "tmpfs",
        "devtmpfs",
        "devpts",
        "mqueue",
        "cgroup",
        "cgroup2",
        "overlay",
        "ramfs",
        "binfmt_misc",
        "securityfs",
        "debugfs",
        "tracefs",
        "bpf",
        "configfs",
        "pstore",
        "hugetlbfs",
        "efivarfs",
        "fusectl",
        "nsfs",
    ];
    // bcachefs, nilfs2 and ntfs3 too: a host whose `/` or container store is one of them had
    // nothing beneath it held, and a reused number was refused (review fixrest29, M2's cost).
    const LOCAL_DISKS: &[&str] = &[
        "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "vfat", "exfat", "squashfs", "erofs",
        "iso9660", "zfs", "bcachefs", "nilfs2", "ntfs3",
    ];
    KERNELS.contains(&fs_type) || LOCAL_DISKS.contains(&fs_type)
}

/// A folder the walk has reached: its descriptor, its path from the root, its mount's id.
struct Level {
    fd: OwnedFd,
    path: PathBuf,
    mount: u64,
}

/// What is at `path` beneath `root` (the namespace's root, its table `mounts`; `proc` the
/// host's, for `fdinfo`). Links are followed inside the root, as `create` follows them to
/// place a config's mounts and read-only paths (`Within::open`): an image's `/var/run -> /run`
/// leads a read-only `/var/run/secrets/…` mount where it is (review mntcheck26 MC-3); a link's
/// text is resolved beneath the root; a link that may be a magic one (on a proc mount) is
/// `Link`, neither its text nor its jump followed ([`may_be_magic`]). No filesystem the kernel
/// does not answer alone is entered (module doc).
pub fn look_up(
    proc: &OwnedFd,
    root: &OwnedFd,
    mounts: &[MountEntry],
    path: &Path,
) -> Result<Found, String> {
    let root_mount = mount_id(proc, root).map_err(|e| cannot(path, &e))?;
    let pending = components(path);
    if let Some(unentered) = unentered(mounts, root_mount) {
        return at_unentered(unentered, pending.is_empty(), path);
    }
    let fd = root.try_clone().map_err(|e| cannot(path, &e))?;
    let mut walk = Walk {
        proc,
        mounts,
        levels: vec![Level {
            fd,
            path: PathBuf::from("/"),
            mount: root_mount,
        }],
        pending,
        links: 0,
    };
    while let Some(name) = walk.pending.pop_front() {
        if let Some(found) = walk.step(&name, path)? {
            return Ok(found);
        }
    }
    let last = walk.levels.pop().expect("the root is never popped");
    describe(last.fd, last.mount).map_err(|e| cannot(path, &e))
}

/// Why `path` cannot be looked at.
fn cannot(path: &Path, e: &dyn std::fmt::Display) -> String {
    format!("cannot look at {}: {e}", path.display())
}

/// A lookup of [`look_up`] under way: the folders reached (the root first), the names still
/// to walk, the links followed so far.
struct Walk<'a> {
    proc: &'a OwnedFd,
    mounts: &'a [MountEntry],
    levels: Vec<Level>,
    pending: VecDeque<OsString>,
    links: usize,
}

impl Walk<'_> {
    /// Walks `name`, the next name of `path`: what is there if the walk ends at it.
    fn step(&mut self, name: &OsStr, path: &Path) -> Result<Option<Found>, String> {
        if name == ".." {
            // Never above the root, as `RESOLVE_IN_ROOT`.
            if self.levels.len() > 1 {
                self.levels.pop();
            }
            return Ok(None);
        }
        let here = self.levels.last().expect("the root is never popped");
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_NO_XDEV
                    | ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let fd = match openat2(here.fd.as_fd(), name, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(Some(Found::Missing)),
            Err(Errno::EXDEV) => return self.cross_mount_point(name, path),
            Err(e) => return Err(cannot(path, &e)),
        };
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| cannot(path, &e))?;
        if stat.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return self.follow(&fd, name).map_err(|e| cannot(path, &e));
        }
        let (path, mount) = (here.path.join(name), here.mount);
        self.levels.push(Level { fd, path, mount });
        Ok(None)
    }

    /// Crosses the mount point `name` of the last folder reached, found first in the table:
    /// entered only if the kernel answers its type alone; another ends the walk there
    /// ([`at_unentered`]).
    fn cross_mount_point(&mut self, name: &OsStr, path: &Path) -> Result<Option<Found>, String> {
        let here = self.levels.last().expect("the root is never popped");
        let point = here.path.join(name);
        let mount = top_mount_at(self.mounts, here.mount, &point).ok_or_else(|| {
            cannot(
                path,
                &format_args!(
                    "{} is a mount point the namespace's table does not list",
                    point.display()
                ),
            )
        })?;
        if !answers_alone(&mount.fs_type) {
            return at_unentered(mount, self.pending.is_empty(), path).map(Some);
        }
        let fd = cross(self.proc, here, name, mount.id).map_err(|e| cannot(path, &e))?;
        self.levels.push(Level {
            fd,
            path: point,
            mount: mount.id,
        });
        Ok(None)
    }

    /// Follows the link `fd`, named `name`, in the last folder reached: its text's names are
    /// walked next, from the root if it is absolute. `Link` past [`MAX_LINKS`], or for a link
    /// that may be a magic one ([`may_be_magic`]).
    fn follow(&mut self, fd: &OwnedFd, name: &OsStr) -> Result<Option<Found>, String> {
        let here = self.levels.last().expect("the root is never popped");
        self.links += 1;
        if self.links > MAX_LINKS || may_be_magic(self.mounts, here.mount, name) {
            return Ok(Some(Found::Link));
        }
        let target = nix::fcntl::readlinkat(fd.as_fd(), "").map_err(|e| e.to_string())?;
        if Path::new(&target).is_absolute() {
            self.levels.truncate(1);
        }
        for component in components(Path::new(&target)).into_iter().rev() {
            self.pending.push_front(component);
        }
        Ok(None)
    }
}

/// Whether a link named `name` on the mount `mount` may be a magic link (`/proc/PID/cwd`,
/// `root`, `fd/N`, `map_files/…`): any link on a proc mount but `self` and `thread-self`,
/// whose text is the jump. A magic link's text (its target's `d_path`) is not where the kernel
/// jumps: a target on a mount hidden under another prints the same path, which leads to the
/// top one (review rest29 M1), so such a path cannot be judged.
fn may_be_magic(mounts: &[MountEntry], mount: u64, name: &OsStr) -> bool {
    let on_proc = mounts
        .iter()
        .find(|m| m.id == mount)
        .is_none_or(|m| m.fs_type == "proc");
    on_proc && name != "self" && name != "thread-self"
}

/// The names `path` walks through, `..` kept (links' targets may hold it), `.` left out.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// The mount of the table `mounts` with id `id`, if it is one the walk does not enter.
pub(crate) fn unentered(mounts: &[MountEntry], id: u64) -> Option<&MountEntry> {
    mounts
        .iter()
        .find(|m| m.id == id)
        .filter(|m| !answers_alone(&m.fs_type))
}

/// A mount the walk does not enter, met on the way to `path`: at its end (`last`), told by
/// the table alone; else an error naming it.
fn at_unentered(mount: &MountEntry, last: bool, path: &Path) -> Result<Found, String> {
    match last {
        true => Ok(Found::At {
            mount: mount.id,
            null: false,
            empty_folder: false,
        }),
        false => Err(format!(
            "cannot look at {}: it lies beneath the {} mount at {} ({}), whose answers may \
             wait on a process (one of the frozen tree's) or a server, so the check does not \
             enter it",
            path.display(),
            mount.fs_type,
            mount.mount_point.display(),
            mount.source
        )),
    }
}

/// The mount on top of those at `point` whose bottom one is mounted on the mount `parent`:
/// what a lookup crossing `point` from `parent` reaches.
fn top_mount_at<'a>(mounts: &'a [MountEntry], parent: u64, point: &Path) -> Option<&'a MountEntry> {
    let on = |parent: u64| {
        mounts
            .iter()
            .find(|m| m.parent == parent && m.id != parent && m.mount_point == point)
    };
    let mut top = on(parent)?;
    while let Some(above) = on(top.id) {
        top = above;
    }
    Some(top)
}

/// Crosses the mount point `name` of `here` into the mount `expected` (a type the kernel
/// answers alone), and makes sure it is that mount: one mounted since the table was read
/// fails the lookup.
fn cross(proc: &OwnedFd, here: &Level, name: &OsStr, expected: u64) -> Result<OwnedFd, String> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(here.fd.as_fd(), name, how).map_err(|e| e.to_string())?;
    let reached = mount_id(proc, &fd)?;
    match reached == expected {
        true => Ok(fd),
        false => Err(format!(
            "the mount at {} is {reached}, where the namespace's table lists {expected}: \
             mounted since it was read",
            here.path.join(name).display()
        )),
    }
}

/// What the walk's last step, `fd` on the mount `mount` (one it entered), shows.
fn describe(fd: OwnedFd, mount: u64) -> Result<Found, String> {
    let stat = nix::sys::stat::fstat(&fd).map_err(|e| e.to_string())?;
    let kind = stat.st_mode & libc::S_IFMT;
    let null = kind == libc::S_IFCHR && stat.st_rdev == libc::makedev(1, 3);
    let empty_folder = kind == libc::S_IFDIR && is_empty_folder(&fd).map_err(|e| e.to_string())?;
    Ok(Found::At {
        mount,
        null,
        empty_folder,
    })
}

/// The id of the mount `fd` is on, from its `fdinfo` (which asks no filesystem).
pub(crate) fn mount_id(proc: &OwnedFd, fd: &OwnedFd) -> Result<u64, String> {
    let info = read_in_proc(proc, &format!("thread-self/fdinfo/{}", fd.as_raw_fd()))?;
    mnt_id_in(&info).ok_or_else(|| "no mnt_id in its fdinfo".to_string())
}

/// The `mnt_id` an `fdinfo` file's text `info` shows.
pub(crate) fn mnt_id_in(info: &[u8]) -> Option<u64> {
    info.split(|&b| b == b'\n').find_map(|line| {
        let value = line.strip_prefix(b"mnt_id:")?;
        std::str::from_utf8(value).ok()?.trim().parse().ok()
    })
}

/// A file of the host's proc, `name` beneath it.
pub(crate) fn read_in_proc(proc: &OwnedFd, name: &str) -> Result<Vec<u8>, String> {
    let fd = nix::fcntl::openat(
        proc.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open /proc/{name}: {e}"))?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut text)
        .map_err(|e| format!("cannot read /proc/{name}: {e}"))?;
    Ok(text)
}

/// Whether the folder `fd` (an `O_PATH` descriptor) holds nothing.
fn is_empty_folder(fd: &OwnedFd) -> nix::Result<bool> {
    let opened = nix::fcntl::openat(
        fd.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut dir = nix::dir::Dir::from_fd(opened)?;
    let mut names = dir.iter().filter_map(Result::ok);
    Ok(names.all(|e| matches!(e.file_name().to_bytes(), b"." | b"..")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path through a link inside the root (`var/run -> /run`, as Debian's images have) is
    /// looked up where the link leads, as `create` placed the mount there; a link loop is
    /// `Link`. Before, any link was `Link` and refused an ordinary restore (MC-3).
    #[test]
    fn a_path_through_a_link_inside_the_root_is_looked_up_where_it_leads() {
        let scratch = feather_testkit::ScratchDir::new("restored-links");
        let folder = scratch.0.clone();
        std::fs::create_dir_all(folder.join("run/secrets")).unwrap();
        std::fs::create_dir_all(folder.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", folder.join("var/run")).unwrap();
        std::os::unix::fs::symlink("loop", folder.join("loop")).unwrap();
        let open = |path: &Path| -> OwnedFd {
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).unwrap()
        };
        let (proc, root) = (open(Path::new("/proc")), open(&folder));
        let mounts = feather_sys::mountinfo::mounts().unwrap();
        let through_link = look_up(&proc, &root, &mounts, Path::new("/var/run/secrets"));
        let looped = look_up(&proc, &root, &mounts, Path::new("/loop"));
        assert!(
            matches!(
                through_link,
                Ok(Found::At {
                    empty_folder: true,
                    ..
                })
            ),
            "{through_link:?}"
        );
        assert_eq!(looped, Ok(Found::Link));
    }

    /// A path through a magic link (`/proc/self/cwd`, `/proc/self/root`) is `Link`, not what
    /// its text names: that text is not where the kernel jumps (a target under a mount hidden
    /// by another prints the same path). `/proc/self` itself, an ordinary link, is followed.
    /// Before, the text was followed and `/proc/self/cwd` judged as the folder it named
    /// (review rest29 M1).
    #[test]
    fn a_path_through_a_magic_link_is_link() {
        let open = |path: &str| -> OwnedFd {
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).unwrap()
        };
        let (proc, root) = (open("/proc"), open("/"));
        let mounts = feather_sys::mountinfo::mounts().unwrap();
        let look = |path: &str| look_up(&proc, &root, &mounts, Path::new(path));
        assert_eq!(look("/proc/self/cwd"), Ok(Found::Link));
        assert_eq!(look("/proc/thread-self/root/etc"), Ok(Found::Link));
        assert!(
            matches!(look("/proc/self/status"), Ok(Found::At { .. })),
            "{:?}",
            look("/proc/self/status")
        );
    }

    #[test]
    fn only_filesystems_the_kernel_answers_alone_are_entered() {
        for kind in [
            "proc", "tmpfs", "overlay", "ext4", "bcachefs", "nilfs2", "ntfs3",
        ] {
            assert!(answers_alone(kind), "{kind}");
        }
        for kind in [
            "fuse",
            "fuse.sshfs",
            "fuseblk",
            "nfs4",
            "cifs",
            "9p",
            "autofs",
            "x",
        ] {
            assert!(!answers_alone(kind), "{kind}");
        }
    }
}

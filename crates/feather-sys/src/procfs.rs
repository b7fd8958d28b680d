//! Writes into `/proc` that nothing can redirect (runc's CVE-2025-52881): a runtime that writes
//! `oom_score_adj`, a sysctl or a user namespace's maps by path writes into whatever that path
//! leads to, and inside a container the path is the container's: its `/proc` may be a link
//! into a volume, or have a mount over the very file (from the image, or propagated from
//! another container through a shared mount). A write meant for `/proc/self/oom_score_adj`
//! then lands in `/proc/sysrq-trigger` or `/proc/sys/kernel/core_pattern`, as host root.
//!
//! [`ProcFs`] is a procfs no path leads to: a new instance (`fsopen("proc")`, `fsmount`), or,
//! where the kernel refuses one, a clone of the caller's `/proc` mount without the mounts on
//! it (`open_tree(OPEN_TREE_CLONE)` without `AT_RECURSIVE`), taken before anything of the
//! container exists. It is checked to be procfs's root (`fstatfs` magic, inode 1), and every
//! file is opened beneath it with openat2 `RESOLVE_BENEATH | RESOLVE_NO_XDEV |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` and checked again to be a procfs file on that
//! very mount. `self` is read from the instance itself (its link names the caller's pid there).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::sys::statfs::{fstatfs, PROC_SUPER_MAGIC};

use crate::{raw, Context, Result};

/// The inode number of every procfs instance's root (`PROC_ROOT_INO`).
const PROC_ROOT_INO: u64 = 1;

/// `MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC`.
const INERT: nix::libc::c_uint = 0x02 | 0x04 | 0x08;

/// A private procfs of the caller's pid namespace, held by its root's descriptor.
pub struct ProcFs {
    root: OwnedFd,
    mount: u64,
}

impl ProcFs {
    /// A procfs no other process can reach or mount over. Take it before the container's
    /// mounts exist: the fallback clones the caller's `/proc`.
    pub fn private() -> Result<ProcFs> {
        let root = match fresh_instance() {
            Ok(root) => root,
            // A user namespace that does not own the pid namespace, or a `/proc` partly
            // covered (the kernel's "too revealing" rule), refuses a new instance.
            Err(_) => clone_of_proc()?,
        };
        let stat = nix::sys::stat::fstat(&root).ctx("fstat", "private procfs")?;
        let is_proc = fstatfs(&root).is_ok_and(|fs| fs.filesystem_type() == PROC_SUPER_MAGIC);
        if !is_proc || stat.st_ino as u64 != PROC_ROOT_INO {
            return Err(Errno::EXDEV).ctx("check", "private procfs (not procfs's root)");
        }
        let mount = raw::unique_mount_id(root.as_raw_fd()).ctx("statx", "private procfs")?;
        Ok(ProcFs { root, mount })
    }

    /// Writes `value` into the file `rel` of procfs (`sys/vm/overcommit_memory`,
    /// `self/oom_score_adj`, `1234/uid_map`) in one write, as the kernel wants for these.
    pub fn write(&self, rel: &Path, value: &[u8]) -> Result<()> {
        let file = self.open(rel, OFlag::O_WRONLY)?;
        let written = nix::unistd::write(&file, value).ctx("write", self.shown(rel))?;
        if written != value.len() {
            return Err(Errno::EIO).ctx("write (short)", self.shown(rel));
        }
        Ok(())
    }

    /// Opens the file `rel` of procfs with `flags`, never through a link or a mount.
    pub fn open(&self, rel: &Path, flags: OFlag) -> Result<OwnedFd> {
        let rel = self.resolve_self(rel)?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_XDEV
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let file = retry_eagain(|| openat2(self.root.as_fd(), rel.as_path(), how))
            .ctx("open", self.shown(&rel))?;
        self.check_ours(&file, &rel)?;
        Ok(file)
    }

    /// Opens the file the caller's descriptor `fd` refers to again, with `flags` (an `O_PATH`
    /// descriptor of a FIFO, opened for writing): through `self/fd/N` of this procfs, whose
    /// last component is the kernel's link to exactly that file.
    pub fn reopen(&self, fd: &impl AsFd, flags: OFlag) -> Result<OwnedFd> {
        let number = fd.as_fd().as_raw_fd();
        let file = self.open_link(Path::new("self/fd"), &number.to_string(), flags)?;
        let (was, is) = (
            nix::sys::stat::fstat(fd.as_fd()).ctx("fstat", number)?,
            nix::sys::stat::fstat(&file).ctx("fstat", number)?,
        );
        if (was.st_dev, was.st_ino) != (is.st_dev, is.st_ino) {
            return Err(Errno::EXDEV).ctx("reopen (another file)", format_args!("fd {number}"));
        }
        Ok(file)
    }

    /// Opens what the kernel's link `name` in the folder `folder` of procfs names (`fd/N`,
    /// `ns/user`): the folder is walked as [`ProcFs::open`] walks, only that last link is
    /// followed.
    pub fn open_link(&self, folder: &Path, name: &str, flags: OFlag) -> Result<OwnedFd> {
        if name.contains('/') || name == ".." || name == "." {
            return Err(Errno::EINVAL).ctx("open", self.shown(&folder.join(name)));
        }
        let folder = self.open(folder, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        nix::fcntl::openat(
            folder.as_fd(),
            name,
            flags | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx("open", name)
    }

    /// The descriptor to keep open across a `close_other_fds`.
    pub fn raw_fd(&self) -> RawFd {
        self.root.as_raw_fd()
    }

    /// The root of this procfs, for walks of its own (`openat2` beneath it).
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// `rel` with a leading `self` or `thread-self` replaced by what the instance's link says
    /// (the caller's pid in the instance's pid namespace); `..` and absolute paths refused.
    fn resolve_self(&self, rel: &Path) -> Result<PathBuf> {
        let mut components = rel.components();
        let first = match components.next() {
            Some(Component::Normal(first)) => first,
            _ => return Err(Errno::EINVAL).ctx("resolve", self.shown(rel)),
        };
        if components
            .clone()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(Errno::EINVAL).ctx("resolve", self.shown(rel));
        }
        if first != "self" && first != "thread-self" {
            return Ok(rel.to_owned());
        }
        let link =
            nix::fcntl::readlinkat(self.root.as_fd(), first).ctx("readlink", self.shown(rel))?;
        let pid = PathBuf::from(link);
        let is_pid = pid
            .components()
            .all(|c| matches!(c, Component::Normal(n) if n.to_str().is_some_and(is_name)));
        if !is_pid {
            return Err(Errno::EXDEV).ctx("resolve", self.shown(rel));
        }
        Ok(pid.join(components.as_path()))
    }

    /// Refuses a file that is not procfs's, on this very mount.
    fn check_ours(&self, file: &OwnedFd, rel: &Path) -> Result<()> {
        let is_proc = fstatfs(file).is_ok_and(|fs| fs.filesystem_type() == PROC_SUPER_MAGIC);
        let mount = raw::unique_mount_id(file.as_raw_fd()).ctx("statx", self.shown(rel))?;
        if !is_proc || mount != self.mount {
            return Err(Errno::EXDEV).ctx("open (not this procfs)", self.shown(rel));
        }
        Ok(())
    }

    fn shown(&self, rel: &Path) -> String {
        format!("/proc/{}", rel.display())
    }
}

/// The components of a `self` or `thread-self` link: `1234` or `1234/task/1234`.
fn is_name(name: &str) -> bool {
    name == "task" || (!name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
}

/// A new procfs instance of the caller's pid namespace, as a detached mount.
fn fresh_instance() -> Result<OwnedFd> {
    let context = raw::fsopen(c"proc").ctx("fsopen", "proc")?;
    raw::fsmount(context.as_fd(), INERT).ctx("fsmount", "proc")
}

/// The mount at the caller's `/proc` alone, as a detached copy no mount covers.
fn clone_of_proc() -> Result<OwnedFd> {
    let proc = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx("open", "/proc")?;
    raw::open_tree_clone(proc.as_fd(), false).ctx("open_tree", "/proc")
}

/// openat2 answers EAGAIN when a rename raced the lookup: the kernel asks for a retry.
fn retry_eagain<T>(mut open: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    let mut tries = 0;
    loop {
        match open() {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_the_callers_pid_in_the_instance() {
        let proc = ProcFs::private().unwrap();
        let file = proc.open(Path::new("self/stat"), OFlag::O_RDONLY).unwrap();
        let mut text = String::new();
        use std::io::Read;
        std::fs::File::from(file).read_to_string(&mut text).unwrap();
        assert!(
            text.starts_with(&format!("{} (", std::process::id())),
            "{text}"
        );
    }

    #[test]
    fn links_and_parents_are_refused() {
        let proc = ProcFs::private().unwrap();
        for rel in ["self/cwd/etc/passwd", "self/root", "../etc", "mounts"] {
            assert!(
                proc.open(Path::new(rel), OFlag::O_RDONLY).is_err(),
                "{rel} was opened"
            );
        }
        assert!(proc
            .open(Path::new("sys/kernel/hostname"), OFlag::O_RDONLY)
            .is_ok());
    }

    /// In a mount namespace of this thread's own where `/proc/sys/kernel/domainname` is covered
    /// by a bind of the hostname knob (what a container can arrange in its `/proc`): a new
    /// instance and the fallback's clone both lead to the domain name itself.
    #[test]
    fn a_mount_over_a_file_of_proc_redirects_nothing() {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        let private = nix::mount::MsFlags::MS_PRIVATE | nix::mount::MsFlags::MS_REC;
        nix::mount::mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
        nix::mount::mount(
            Some("/proc/sys/kernel/hostname"),
            "/proc/sys/kernel/domainname",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let domain = nix::sys::utsname::uname().unwrap();
        let want = format!("{}\n", domain.domainname().to_string_lossy());
        let by_path = std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap();
        assert_ne!(by_path, want, "the bind should cover the path");
        let read = |root: OwnedFd| {
            let mount = raw::unique_mount_id(root.as_raw_fd()).unwrap();
            let proc = ProcFs { root, mount };
            let file = proc
                .open(Path::new("sys/kernel/domainname"), OFlag::O_RDONLY)
                .unwrap();
            let mut text = String::new();
            use std::io::Read;
            std::fs::File::from(file).read_to_string(&mut text).unwrap();
            text
        };
        assert_eq!(read(fresh_instance().unwrap()), want);
        assert_eq!(read(clone_of_proc().unwrap()), want);
    }

    #[test]
    fn a_descriptor_is_reopened_as_the_same_file() {
        let proc = ProcFs::private().unwrap();
        let path = nix::fcntl::open("/dev/null", OFlag::O_PATH, Mode::empty()).unwrap();
        let writable = proc.reopen(&path, OFlag::O_WRONLY).unwrap();
        assert_eq!(nix::unistd::write(&writable, b"x"), Ok(1));
    }
}

//! Pseudo-terminals for `exec -t` (and feather-oci's relayed terminal): opening them in a VM,
//! their window size, and relaying what they carry.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::pty::{grantpt, unlockpt, PtyMaster};

use crate::raw;
use crate::{Context, Result};

pub use nix::libc::winsize as WindowSize;

/// The devpts mount of a VM (the VM cannot move or replace it: that takes CAP_SYS_ADMIN). Its
/// `/dev/ptmx` is only a symlink in the VM's writable /dev, so it is not used.
const PTMX: &str = "/dev/pts/ptmx";

/// Opens a new pseudo-terminal pair from the devpts instance mounted at /dev/pts of the caller's
/// mount namespace (inside a VM: the VM's own instance). Returns the master and the slave, the
/// slave opened from the master (TIOCGPTPEER), never by a path: host code may run this in a
/// VM's mount namespace, where every path but the devpts mount is the VM's to change.
pub fn open_pair() -> Result<(PtyMaster, OwnedFd)> {
    let fd = nix::fcntl::open(
        PTMX,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )
    .ctx("open", PTMX)?;
    pair_of(fd)
}

/// [`open_pair`] from the devpts instance at `dev/pts` beneath `root`, a VM's root directory
/// (its init's `/proc/PID/root`), without entering the VM's mount namespace: for a
/// multi-threaded caller, which cannot. The walk never follows a symlink and cannot leave
/// `root`; what it reaches must be a devpts instance's ptmx.
pub fn open_pair_beneath(root: &impl AsFd) -> Result<(PtyMaster, OwnedFd)> {
    let how = nix::fcntl::OpenHow::new()
        .flags(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            nix::fcntl::ResolveFlag::RESOLVE_IN_ROOT
                | nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS
                | nix::fcntl::ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = nix::fcntl::openat2(root.as_fd(), &PTMX[1..], how)
        .ctx("open beneath the VM's root", PTMX)?;
    pair_of(fd)
}

/// The master and slave of the new pseudo-terminal `fd` (a ptmx just opened) made.
fn pair_of(fd: OwnedFd) -> Result<(PtyMaster, OwnedFd)> {
    let on_devpts = nix::sys::statfs::fstatfs(&fd)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::DEVPTS_SUPER_MAGIC);
    if !on_devpts {
        return Err(nix::errno::Errno::ENOTTY).ctx("open (not a devpts instance)", PTMX);
    }
    let master = raw::pty_master(fd).ctx("TIOCGPTN", PTMX)?;
    grantpt(&master).ctx("grantpt", PTMX)?;
    unlockpt(&master).ctx("unlockpt", PTMX)?;
    let slave = raw::pty_peer(master.as_raw_fd()).ctx("TIOCGPTPEER", PTMX)?;
    Ok((master, slave))
}

/// Makes `terminal` the controlling terminal of the caller, which must lead a new session.
pub fn make_controlling(terminal: &OwnedFd) -> Result<()> {
    raw::set_controlling_terminal(terminal.as_raw_fd()).ctx("TIOCSCTTY", "terminal")
}

pub fn window_size(terminal: &impl AsFd) -> Option<WindowSize> {
    raw::window_size(terminal.as_fd().as_raw_fd()).ok()
}

pub fn set_window_size(terminal: &impl AsFd, size: &WindowSize) {
    let _ = raw::set_window_size(terminal.as_fd().as_raw_fd(), size);
}

/// Copies what is available on `from` (one read) to `to`, for a terminal relay woken by poll;
/// false at the end of input (a master whose every slave closed reads EIO) or when `to` is gone.
pub fn relay_available(from: BorrowedFd, to: BorrowedFd) -> bool {
    let mut buffer = [0u8; 8192];
    match nix::unistd::read(from, &mut buffer) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            let mut written = 0;
            while written < n {
                match nix::unistd::write(to, &buffer[written..n]) {
                    Ok(count) => written += count,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return false,
                }
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feather_testkit::ScratchDir;
    use std::fs::{self, File};
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    /// A stand-in for a VM's root, a scratch folder removed on drop (also when the test fails): the VM's root decides
    /// every entry of it but its devpts mount.
    struct FakeRoot(ScratchDir);

    impl FakeRoot {
        fn new(label: &str) -> FakeRoot {
            FakeRoot(ScratchDir::new(&format!("pty-{label}")))
        }

        /// `path` in the root.
        fn join(&self, path: &str) -> PathBuf {
            self.0 .0.join(path)
        }

        fn open_pair(&self) -> Result<(PtyMaster, OwnedFd)> {
            open_pair_beneath(&File::open(&self.0 .0).unwrap())
        }
    }

    /// The web view's terminal opens `dev/pts/ptmx` beneath a VM's root: a link anywhere on
    /// that way (to the host's devpts, which the host's own terminals are on) is never
    /// followed, and what is opened must be a devpts instance's ptmx, not a file or FIFO.
    #[test]
    fn links_and_stand_ins_in_a_vms_tree_lead_to_no_terminal() {
        let root = FakeRoot::new("links");
        symlink("/dev", root.join("dev")).unwrap();
        assert!(root.open_pair().is_err(), "followed dev → the host's /dev");
        fs::remove_file(root.join("dev")).unwrap();
        fs::create_dir(root.join("dev")).unwrap();
        symlink("/dev/pts", root.join("dev/pts")).unwrap();
        assert!(root.open_pair().is_err(), "followed dev/pts → the host's");
        fs::remove_file(root.join("dev/pts")).unwrap();
        fs::create_dir(root.join("dev/pts")).unwrap();
        symlink("/dev/pts/ptmx", root.join("dev/pts/ptmx")).unwrap();
        assert!(
            root.open_pair().is_err(),
            "followed dev/pts/ptmx → the host's"
        );
        fs::remove_file(root.join("dev/pts/ptmx")).unwrap();
        fs::write(root.join("dev/pts/ptmx"), "").unwrap();
        assert!(root.open_pair().is_err(), "a plain file passed for a ptmx");
        fs::remove_file(root.join("dev/pts/ptmx")).unwrap();
        nix::unistd::mkfifo(
            &root.join("dev/pts/ptmx"),
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )
        .unwrap();
        assert!(root.open_pair().is_err(), "a FIFO passed for a ptmx");
    }

    /// The same walk reaches a real devpts instance beneath the root it is given.
    #[test]
    fn a_devpts_beneath_the_root_gives_a_terminal_pair() {
        let (master, slave) = open_pair_beneath(&File::open("/").unwrap()).unwrap();
        assert!(nix::unistd::isatty(&slave).unwrap());
        assert!(nix::unistd::isatty(&master).unwrap());
    }
}

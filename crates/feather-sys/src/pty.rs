//! Pseudo-terminals for `exec -t`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};

use crate::raw;
use crate::{Context, Result};

pub use nix::libc::winsize as WindowSize;

/// Opens a new pseudo-terminal pair from the devpts instance visible at /dev/ptmx of the
/// caller's mount namespace (inside a VM: the VM's own instance). Returns the master and the
/// path of the slave.
pub fn open_pair() -> Result<(PtyMaster, String)> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx("open", "/dev/ptmx")?;
    grantpt(&master).ctx("grantpt", "/dev/ptmx")?;
    unlockpt(&master).ctx("unlockpt", "/dev/ptmx")?;
    let slave = ptsname_r(&master).ctx("ptsname", "/dev/ptmx")?;
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

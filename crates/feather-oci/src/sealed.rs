//! The runtime's own binary, out of a container's reach (runc's CVE-2019-5736).
//!
//! `create`, `run` and `exec` put a process into a container that stays the runtime until it
//! execs the container's program — and an image whose program is a link to `/proc/self/exe`
//! makes the runtime's binary itself that program, run as the container's root. Either way the
//! container can open `/proc/PID/exe`, and once that process is gone reopen the descriptor
//! for writing: the host's feather-oci, which the engine runs as root next.
//!
//! So these commands first re-execute themselves from a read-only detached bind mount of their
//! binary (`open_tree` + `mount_setattr(MOUNT_ATTR_RDONLY)`, no path leads to it): their
//! `/proc/PID/exe`, and every process that inherits or execs it, is then that mount, and
//! every open of it for writing fails with EROFS. runc seals a copy in a memfd instead; a
//! bind costs no copy of the binary. A binary already on a read-only mount stays as it is.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{fstatvfs, FsFlags};

/// Where the binary is installed, for the re-executed process: the view has no path, and
/// `feather-svcd` is found beside the installed binary.
const INSTALLED: &str = "FEATHER_OCI_INSTALLED_BINARY";

/// Re-executes this process from a read-only view of its binary, unless it runs from one.
pub fn ensure() -> Result<()> {
    let exe = nix::fcntl::open(
        "/proc/self/exe",
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context("open the runtime's binary (/proc/self/exe)")?;
    if is_read_only(&exe)? {
        if let Some(installed) = std::env::var_os(INSTALLED) {
            feather_svc::manager::set_installed_binary(installed.into());
        }
        return Ok(());
    }
    let installed = std::fs::read_link("/proc/self/exe").context("read /proc/self/exe")?;
    let view = read_only_view(&exe)?;
    let args = cstrings(std::env::args_os().map(|a| a.as_bytes().to_vec()))?;
    let env = std::env::vars_os()
        .filter(|(key, _)| key != INSTALLED)
        .map(|(key, value)| [key.as_bytes(), b"=", value.as_bytes()].concat())
        .chain([[INSTALLED.as_bytes(), b"=", installed.as_os_str().as_bytes()].concat()]);
    let env = cstrings(env)?;
    let error =
        nix::unistd::execveat(view.as_fd(), c"", &args, &env, AtFlags::AT_EMPTY_PATH).unwrap_err();
    Err(error).context("re-execute the runtime from a read-only view of its binary")
}

fn is_read_only(exe: &OwnedFd) -> Result<bool> {
    let stat = fstatvfs(exe).context("fstatvfs of the runtime's binary")?;
    Ok(stat.flags().contains(FsFlags::ST_RDONLY))
}

/// A detached, read-only bind mount of exactly the file `exe` refers to.
fn read_only_view(exe: &OwnedFd) -> Result<OwnedFd> {
    let protect = "protect the runtime's binary from the container (a read-only bind of it)";
    let view = feather_sys::mount::clone_tree(exe)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context(protect)?;
    let flags = feather_sys::mount::TreeFlags {
        read_only: true,
        ..Default::default()
    };
    feather_sys::mount::set_tree_flags(&view, flags)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context(protect)?;
    Ok(view)
}

fn cstrings(items: impl Iterator<Item = Vec<u8>>) -> Result<Vec<CString>> {
    items
        .map(|bytes| CString::new(bytes).context("an argument or variable with a NUL byte"))
        .collect()
}

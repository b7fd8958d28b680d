//! The running program's own binary, out of reach of the containers it enters.
//!
//! A process that joins a container's pid namespace (`feather-oci exec`, `create`'s init) is
//! visible there, and so is its `/proc/PID/exe`: the host's file, whatever the container's
//! root is. A program of the container that starts `#!/proc/self/exe` even runs that binary
//! again inside, under the container's credentials. The container's root can open the file
//! through that link, wait until no process runs it, and write to it: the next time the host
//! runs the program, it runs the container's code as host root (runc's CVE-2019-5736).
//!
//! [`run_from_read_only_mount`] re-executes the program from a detached, read-only bind mount
//! of its binary (`open_tree`, `mount_setattr`, `execveat`): the file is the same, but every
//! path to it through `/proc` is on that mount, so the kernel refuses every write through it
//! (EROFS), and no path in any mount namespace leads to the mount. It costs one `execve`, no
//! copy of the binary.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::sys::statvfs::FsFlags;

use crate::mount::{self, TreeFlags};
use crate::{Context, Result};

/// Where the program's binary is on the host, kept in the environment across the
/// re-execution (the re-executed process's `/proc/self/exe` names a mount no path leads to).
pub const PATH_VAR: &str = "FEATHER_OWN_PROGRAM";

/// The running program's path on the host: where it was before [`run_from_read_only_mount`]
/// re-executed it, else `/proc/self/exe`'s target. For finding the binaries installed beside.
pub fn path() -> std::io::Result<PathBuf> {
    match std::env::var_os(PATH_VAR) {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => std::env::current_exe(),
    }
}

/// Re-executes this program, with the same arguments and environment, from a detached
/// read-only bind mount of its binary; returns at once if it runs from a read-only mount
/// already (after the re-execution, or where the binary's filesystem is read-only). Call it
/// first thing, before threads, for a command that will enter a container.
pub fn run_from_read_only_mount() -> Result<()> {
    let exe = nix::fcntl::open(
        "/proc/self/exe",
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx("open", "/proc/self/exe")?;
    let flags = nix::sys::statvfs::fstatvfs(&exe).ctx("fstatvfs", "/proc/self/exe")?;
    if flags.flags().contains(FsFlags::ST_RDONLY) {
        return Ok(());
    }
    if std::env::var_os(PATH_VAR).is_some() {
        // Re-executed once already and still writable: never loop.
        return Err(crate::SysError {
            op: "run from a read-only mount",
            target: "/proc/self/exe (still on a writable mount after the re-execution)".into(),
            errno: nix::errno::Errno::EROFS,
        });
    }
    let host_path = std::env::current_exe().ctx("readlink", "/proc/self/exe")?;
    let tree = mount::clone_tree(&exe)?;
    mount::set_tree_flags(
        &tree,
        TreeFlags {
            read_only: true,
            no_suid: true,
            no_dev: true,
        },
    )?;
    let args = c_strings(std::env::args_os())?;
    let env = c_strings(
        std::env::vars_os()
            .filter(|(key, _)| key != PATH_VAR)
            .map(|(key, value)| {
                let mut pair = key;
                pair.push("=");
                pair.push(value);
                pair
            })
            .chain(std::iter::once({
                let mut pair = OsString::from(PATH_VAR);
                pair.push("=");
                pair.push(host_path.as_os_str());
                pair
            })),
    )?;
    let error = nix::unistd::execveat(&tree, c"", &args, &env, AtFlags::AT_EMPTY_PATH).unwrap_err();
    Err(crate::SysError {
        op: "execveat",
        target: format!("{} from a read-only mount", host_path.display()),
        errno: error,
    })
}

fn c_strings(strings: impl Iterator<Item = OsString>) -> Result<Vec<CString>> {
    strings
        .map(|s| CString::new(s.into_vec()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| crate::SysError {
            op: "run from a read-only mount",
            target: "an argument or environment entry holding a NUL byte".into(),
            errno: nix::errno::Errno::EINVAL,
        })
}

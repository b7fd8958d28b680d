//! Safe wrappers over the Linux interfaces feather is built from. Every `unsafe` call of a
//! foreign function is in [`raw`]; the other modules compose safe calls into named operations,
//! and where they call one of raw's `unsafe fn`s, say why its contract holds.

pub mod beneath;
pub mod blocked;
pub mod bpf;
pub mod cgroup;
pub mod creds;
pub mod dnotify;
pub mod fdpass;
pub mod flush;
pub mod fnv;
pub mod folder;
pub mod fstab;
pub mod hiding_layer;
pub mod io;
pub mod kernel;
pub mod lookup;
pub mod memory;
pub mod mount;
pub mod mountinfo;
pub mod net;
pub mod own_program;
pub mod process;
pub mod procfs;
pub mod pty;
pub mod quota;
mod raw;
pub mod seccomp;
pub mod timed;
pub mod user_mounts;

pub use nix::errno::Errno;
pub use nix::sched::CloneFlags;
pub use nix::unistd::Pid;

/// A failed system call, with the operation and object it was applied to.
#[derive(Debug, thiserror::Error)]
#[error("{op} {target}: {errno}")]
pub struct SysError {
    pub op: &'static str,
    pub target: String,
    #[source]
    pub errno: Errno,
}

pub type Result<T> = std::result::Result<T, SysError>;

/// Attaches an operation and its object to a raw errno.
pub(crate) trait Context<T> {
    fn ctx(self, op: &'static str, target: impl std::fmt::Display) -> Result<T>;
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, op: &'static str, target: impl std::fmt::Display) -> Result<T> {
        self.map_err(|errno| SysError {
            op,
            target: target.to_string(),
            errno,
        })
    }
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, target: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| SysError {
            op,
            target: target.to_string(),
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })
    }
}

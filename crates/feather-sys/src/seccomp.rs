//! Installing a seccomp filter that feather-confine has compiled.

use crate::raw;
use crate::{Context, Result};

pub use nix::libc::sock_filter as Instruction;

/// Installs `program` on the calling thread; every process it starts inherits it. The caller
/// must hold CAP_SYS_ADMIN (or have set no_new_privs), and must be single-threaded, since only
/// the calling thread is filtered.
pub fn install_filter(program: &[Instruction]) -> Result<()> {
    raw::seccomp_set_mode_filter(program)
        .ctx("seccomp(SECCOMP_SET_MODE_FILTER)", "VM syscall filter")
}

/// The seccomp mode of the calling process: 0 none, 1 strict, 2 filter.
pub fn mode() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Seccomp:"))?
        .trim()
        .parse()
        .ok()
}

/// The Landlock ABI version of the running kernel; 0 when Landlock is missing or disabled.
pub fn landlock_abi() -> i64 {
    raw::landlock_abi_version().unwrap_or(0)
}

//! Installing a seccomp filter that feather-confine has compiled.

use nix::libc;

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

/// The programs of every seccomp filter thread `tid` runs under, the first installed first,
/// read as its tracer for the moment. The thread must be stopped (a tree CRIU restored and
/// left stopped) or it is stopped for the read; it is left as it was. The caller needs
/// CAP_SYS_ADMIN and CAP_SYS_PTRACE, and no filter of its own.
pub fn filters_of(tid: libc::pid_t) -> Result<Vec<Vec<Instruction>>> {
    let what = format!("thread {tid}");
    raw::ptrace_seize(tid).ctx("ptrace(PTRACE_SEIZE)", &what)?;
    let read = read_filters(tid);
    let detached = raw::ptrace_detach(tid).ctx("ptrace(PTRACE_DETACH)", &what);
    let filters = read?;
    detached?;
    Ok(filters)
}

fn read_filters(tid: libc::pid_t) -> Result<Vec<Vec<Instruction>>> {
    let what = format!("thread {tid}");
    // A thread stopped before the seize is in its tracer's stop once the seize returns; one
    // that ran is stopped here (ESRCH: not in a ptrace stop).
    let first = match raw::ptrace_seccomp_filter(tid, 0) {
        Err(nix::errno::Errno::ESRCH) => {
            raw::ptrace_interrupt(tid).ctx("ptrace(PTRACE_INTERRUPT)", &what)?;
            nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(tid),
                Some(nix::sys::wait::WaitPidFlag::__WALL),
            )
            .ctx("waitpid", &what)?;
            raw::ptrace_seccomp_filter(tid, 0)
        }
        other => other,
    };
    let mut filters = Vec::new();
    let mut next = first;
    // Index 0 is the first installed (the kernel counts back from the last by the total);
    // ENOENT past the last installed; EINVAL when there is no filter.
    loop {
        match next {
            Ok(program) => filters.push(program),
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::EINVAL) => break,
            Err(e) => return Err(e).ctx("ptrace(PTRACE_SECCOMP_GET_FILTER)", &what),
        }
        next = raw::ptrace_seccomp_filter(tid, filters.len() as u64);
    }
    Ok(filters)
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

//! Scheduling classes: work done ahead (a pool's refill) that must yield to everything else.

use nix::errno::Errno;
use nix::libc;
use nix::unistd::Pid;

/// Puts the calling process in the idle scheduling class (`SCHED_IDLE`: it runs only when no
/// other process wants the CPU) and the idle I/O class. Its children inherit both.
pub fn make_idle() -> Result<(), Errno> {
    crate::raw::set_scheduler(0, libc::SCHED_IDLE)?;
    crate::raw::set_io_class(0, true)
}

/// Gives every thread of process `pid` the ordinary scheduling and I/O classes back
/// (`SCHED_OTHER`, nice unchanged); the children it makes from here inherit them.
pub fn make_ordinary(pid: Pid) -> Result<(), Errno> {
    let threads: Vec<libc::pid_t> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|_| Errno::ESRCH)?
        .flatten()
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .collect();
    for thread in threads {
        crate::raw::set_scheduler(thread, libc::SCHED_OTHER)?;
        crate::raw::set_io_class(thread, false)?;
    }
    Ok(())
}

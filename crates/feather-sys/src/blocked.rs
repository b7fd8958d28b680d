//! Threads in uninterruptible sleep (state `D`), and where in the kernel they wait: what a
//! freeze or CRIU's seize of a VM cannot get past, named in its error.
//!
//! The one such wait a frozen cgroup v2 group keeps for ever is vfork's: the parent waits in
//! the kernel (`wait_for_vfork_done`, state D, counted as frozen) until its child starts a
//! program or exits, and a child stopped before that (frozen, or stopped by CRIU's ptrace)
//! never lets it go. [`Blocked::in_vfork`] tells that wait from the others (a disk, an RCU
//! grace period), which end by themselves.

use std::fmt;
use std::fs;

use nix::unistd::Pid;

use crate::process;

/// The most kernel frames of a blocked thread's stack kept for its description.
const FRAMES_KEPT: usize = 6;

/// A thread in uninterruptible sleep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The process, as the host numbers it.
    pub host_pid: i32,
    /// The thread, as the host numbers it (the process's own pid for its main thread).
    pub tid: i32,
    /// The process as its own pid namespace shows it (pid and command line), if still there.
    pub described: Option<process::Described>,
    /// The kernel function it sleeps in (`/proc/PID/task/TID/wchan`), empty if unknown.
    pub wchan: String,
    /// The innermost kernel frames of its stack (`/proc/PID/task/TID/stack`: root only), the
    /// offsets dropped.
    pub stack: Vec<String>,
    /// Its children (a vfork parent's: the child it waits for), as the host numbers them.
    pub children: Vec<i32>,
}

impl Blocked {
    /// Whether it waits in vfork for a child to start a program or exit: its stack or wait
    /// channel is vfork's wait (inlined into `kernel_clone` on current kernels).
    pub fn in_vfork(&self) -> bool {
        std::iter::once(&self.wchan)
            .chain(self.stack.iter())
            .any(|frame| frame == "wait_for_vfork_done" || frame == "kernel_clone")
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.described {
            Some(d) => {
                let command: String = d.command.chars().take(80).collect();
                write!(
                    f,
                    "process {} ({command}; host pid {})",
                    d.pid, self.host_pid
                )?;
            }
            None => write!(f, "host process {}", self.host_pid)?,
        }
        if self.tid != self.host_pid {
            write!(f, ", thread {}", self.tid)?;
        }
        write!(f, " in uninterruptible sleep")?;
        if !self.wchan.is_empty() {
            write!(f, " at {}", self.wchan)?;
        }
        if !self.stack.is_empty() {
            write!(f, " (stack: {})", self.stack.join(" < "))?;
        }
        if self.in_vfork() {
            let children: Vec<String> = self.children.iter().map(i32::to_string).collect();
            write!(
                f,
                ": it waits in vfork for its child (host pid {}) to start a program",
                if children.is_empty() {
                    "?".to_owned()
                } else {
                    children.join(", ")
                }
            )?;
        }
        Ok(())
    }
}

/// The threads of `pids` that are in uninterruptible sleep now.
pub fn threads_of(pids: &[Pid]) -> Vec<Blocked> {
    pids.iter()
        .flat_map(|&pid| threads(pid).into_iter().map(move |tid| (pid, tid)))
        .filter(|&(pid, tid)| state(pid, tid) == Some('D'))
        .map(|(pid, tid)| describe(pid, tid))
        .collect()
}

/// Whether a thread of `pids` is runnable (state R). In a group the kernel reports frozen,
/// that is one about to sleep in a wait that counts as frozen (vfork's).
pub fn any_runnable(pids: &[Pid]) -> bool {
    pids.iter().any(|&pid| {
        threads(pid)
            .into_iter()
            .any(|tid| state(pid, tid) == Some('R'))
    })
}

/// Whether thread `tid` of `pid` is still in uninterruptible sleep (false once it is gone).
pub fn still_blocked(blocked: &Blocked) -> bool {
    state(Pid::from_raw(blocked.host_pid), blocked.tid) == Some('D')
}

/// The threads of `pid` (none if it is gone).
fn threads(pid: Pid) -> Vec<i32> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The state letter of a thread (`R`, `S`, `D`, …), from its `stat` line.
fn state(pid: Pid, tid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn describe(pid: Pid, tid: i32) -> Blocked {
    let read = |file: &str| fs::read_to_string(format!("/proc/{pid}/task/{tid}/{file}"));
    Blocked {
        host_pid: pid.as_raw(),
        tid,
        described: process::describe(pid),
        wchan: read("wchan")
            .map(|w| w.trim().to_owned())
            .unwrap_or_default(),
        stack: read("stack").map(|text| frames(&text)).unwrap_or_default(),
        children: read("children")
            .map(|text| {
                text.split_whitespace()
                    .filter_map(|c| c.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// "[<0>] kernel_clone+0x1d3/0x400\n…" → ["kernel_clone", …], innermost first.
fn frames(stack: &str) -> Vec<String> {
    stack
        .lines()
        .filter_map(|line| {
            let frame = line.split_once("] ").map_or(line, |(_, f)| f).trim();
            let name = frame.split_once('+').map_or(frame, |(name, _)| name);
            (!name.is_empty()).then(|| name.to_owned())
        })
        .take(FRAMES_KEPT)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vfork_parent() -> Blocked {
        Blocked {
            host_pid: 19831,
            tid: 19831,
            described: None,
            wchan: "kernel_clone".into(),
            stack: frames(
                "[<0>] kernel_clone+0x1d3/0x400\n[<0>] __do_sys_vfork+0x66/0x90\n\
                 [<0>] do_syscall_64+0x71/0x290\n",
            ),
            children: vec![19900],
        }
    }

    #[test]
    fn a_stack_keeps_the_function_names_innermost_first() {
        assert_eq!(
            vfork_parent().stack,
            ["kernel_clone", "__do_sys_vfork", "do_syscall_64"]
        );
    }

    #[test]
    fn a_vfork_parent_is_told_from_other_waits_and_names_its_child() {
        let parent = vfork_parent();
        assert!(parent.in_vfork());
        assert!(parent
            .to_string()
            .contains("waits in vfork for its child (host pid 19900)"));
        let disk = Blocked {
            wchan: "io_schedule".into(),
            stack: vec!["io_schedule".into(), "folio_wait_bit_common".into()],
            ..parent
        };
        assert!(!disk.in_vfork());
        assert!(!disk.to_string().contains("vfork"), "{disk}");
    }
}

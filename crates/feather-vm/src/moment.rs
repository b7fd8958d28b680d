//! The keeper's side of a `--leave-running --export` checkpoint taken at one moment: the VM's
//! processes (CRIU's images) and its layers (the archive) as they were at the same instant.
//!
//! ```text
//! feather checkpoint --leave-running --export: archives the layers while the VM runs, then
//!       ──Checkpoint{hold_frozen}──▶ keeper
//!   keeper: freeze the VM's group ── CRIU dump (freeze_cgroup: it leaves the group frozen)
//!       ◀── Checkpointed ──
//!   feather: archives the images and what the layers changed, while no process of it runs
//!       ── closes its end ──▶ keeper: thaws ── Thawed{frozen_ms} ──▶
//! ```
//!
//! Bounded and crash-safe: the asker closing its end thaws the VM at once, whether it is done
//! or died (Ctrl-C, SIGKILL: the kernel closes it); an asker that hangs is given
//! [`HOLD_LIMIT`], after which the VM thaws and the asker hears that its copy was not taken
//! frozen. A keeper that dies holding the freeze leaves the thaw to the asker, which sees the
//! connection end without an answer ([`crate::checkpoint`]).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use feather_core::VmDir;
use feather_sys::blocked::{self, Blocked};
use feather_sys::cgroup::{Cgroup, Frozen};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{failed, Result};
use crate::protocol::Response;

/// The longest a VM stays frozen for the copy of its layers after its dump.
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(300);

/// How long the VM's processes may take to stop running once frozen, including the waits
/// for vfork children to start their programs (see [`seizable_freeze`]).
const FREEZE_PATIENCE: Duration = Duration::from_secs(10);

/// How often a vfork parent is looked at while the VM is thawed for its child.
const VFORK_LOOK: Duration = Duration::from_millis(1);

/// The freezer group to name to CRIU for every dump of the VM (see
/// `feather_migrate::criu::Dump::freeze_cgroup`): its v2 folder, which the keeper's own freeze
/// uses too. None where the VM has no group or the machine no v2 hierarchy: CRIU then seizes
/// the tasks one by one, as before.
pub(crate) fn freezer_of(cgroup: Option<&Cgroup>) -> Option<PathBuf> {
    cgroup
        .and_then(Cgroup::v2_dir)
        .filter(|dir| dir.join("cgroup.freeze").exists())
}

/// Freezes the VM's group for a dump that names it to CRIU (`--freeze-cgroup`), and returns
/// the guard that thaws it; None where it has no freezer (CRIU then seizes the tasks one by
/// one). CRIU, given a group that is not frozen yet, writes its `cgroup.freeze` and looks
/// again only every 100 ms (criu/seize.c, `freeze_processes`): the first look comes before
/// the kernel has stopped every task, so each checkpoint waited 100 ms more than it took.
/// This waits for the kernel's word, looking every 2 ms; CRIU finds the group frozen, seizes
/// the tasks at once, and leaves the group frozen, as it found it, until the guard goes.
/// An error if the VM cannot be frozen so that CRIU can seize it: CRIU would wait out its
/// own 10 s timeout and fail with less to say.
pub(crate) fn frozen_for_dump(vm: &VmDir, cgroup: Option<&Cgroup>) -> Result<Option<Frozen>> {
    match cgroup.filter(|c| freezer_of(Some(c)).is_some()) {
        Some(cgroup) => seizable_freeze(vm, cgroup).map(Some),
        None => Ok(None),
    }
}

/// Freezes the group at a moment when CRIU can seize every process of it: none waits in
/// vfork. A vfork parent waits in the kernel (state D) until its child starts a program,
/// and the cgroup v2 freezer counts it as frozen; CRIU then seizes every task, child too,
/// and waits for each to stop for it: the child stops before its exec, the parent never
/// does, and the dump fails after CRIU's 10 s ("Unseizable non-zombie N found, state D").
/// A shell running commands (dash starts each with vfork) is caught so in a few percent of
/// freezes, more under load. So a frozen group with a thread in D is thawed, the children
/// given the moment to start their programs (each parent leaves its D then), and frozen
/// again, until it freezes with none or [`FREEZE_PATIENCE`] is out.
fn seizable_freeze(vm: &VmDir, cgroup: &Cgroup) -> Result<Frozen> {
    let deadline = Instant::now() + FREEZE_PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frozen = match cgroup.freeze(left) {
            Ok(frozen) => frozen,
            Err(e) => return Err(not_frozen(vm, &e, cgroup)),
        };
        let waiting = settled(cgroup, deadline);
        if waiting.is_empty() {
            return Ok(frozen);
        }
        drop(frozen);
        if !waited_out(&waiting, deadline) {
            let still: Vec<Blocked> = blocked::threads_of(&cgroup.members());
            return Err(held(vm, if still.is_empty() { &waiting } else { &still }));
        }
    }
}

/// The threads of a frozen group in uninterruptible sleep, once none is runnable any more (or
/// at `deadline`). The kernel counts a vfork parent as frozen just before it goes to sleep
/// (`cgroup_enter_frozen` comes before the wait in `wait_for_vfork_done`), so the group can
/// read frozen while the parent still shows R; looked at then, it would be missed (it was,
/// in 2 of 30 checkpoints of a shell loop).
fn settled(cgroup: &Cgroup, deadline: Instant) -> Vec<Blocked> {
    loop {
        let members = cgroup.members();
        if !blocked::any_runnable(&members) || Instant::now() >= deadline {
            return blocked::threads_of(&members);
        }
        std::thread::sleep(VFORK_LOOK);
    }
}

/// Waits until none of `waiting` is in uninterruptible sleep any more (true), or `deadline`.
fn waited_out(waiting: &[Blocked], deadline: Instant) -> bool {
    loop {
        if !waiting.iter().any(blocked::still_blocked) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(VFORK_LOOK);
    }
}

/// The error of a freeze that did not complete: which threads of the VM were in D.
fn not_frozen(vm: &VmDir, e: &feather_sys::SysError, cgroup: &Cgroup) -> crate::error::VmError {
    let blocked = blocked::threads_of(&cgroup.members());
    let which = if blocked.is_empty() {
        String::new()
    } else {
        format!("; in uninterruptible sleep: {}", listed(&blocked))
    };
    failed(
        vm.name(),
        format!(
            "its processes could not be frozen for the checkpoint within {} s ({e}){which}; \
             checkpoint again once they are out of that wait",
            FREEZE_PATIENCE.as_secs()
        ),
    )
}

/// The error of a freeze that kept finding processes CRIU cannot seize.
fn held(vm: &VmDir, blocked: &[Blocked]) -> crate::error::VmError {
    failed(
        vm.name(),
        format!(
            "could not be frozen at a moment when CRIU can seize all its processes (tried for \
             {} s): {}; a process waiting in vfork cannot be seized until its child starts a \
             program or exits; checkpoint again once it has (a child stopped before its exec, \
             e.g. by a debugger or SIGSTOP, holds its parent until it is let go)",
            FREEZE_PATIENCE.as_secs(),
            listed(blocked)
        ),
    )
}

fn listed(blocked: &[Blocked]) -> String {
    let described: Vec<String> = blocked.iter().map(Blocked::to_string).collect();
    described.join("; ")
}

/// A VM frozen for its checkpoint; dropping it thaws the VM.
pub(crate) struct Held {
    _frozen: Frozen,
    since: Instant,
}

/// Freezes the VM before its dump: no process of it runs from now until the [`Held`] goes.
pub(crate) fn freeze(vm: &VmDir, cgroup: Option<&Cgroup>) -> Result<Held> {
    let name = vm.name();
    let Some(cgroup) = cgroup.filter(|c| freezer_of(Some(c)).is_some()) else {
        return Err(failed(
            name,
            "cannot be frozen (it has no cgroup in a cgroup v2 hierarchy), so its layers cannot \
             be archived at the moment of a --leave-running checkpoint; checkpoint it without \
             --leave-running (its processes end and its layers hold still), or without --export",
        ));
    };
    let frozen = seizable_freeze(vm, cgroup)?;
    Ok(Held {
        _frozen: frozen,
        since: Instant::now(),
    })
}

/// After the checkpoint's answer: keeps the VM frozen until the asker closes its end of
/// `stream` or [`HOLD_LIMIT`] passes, thaws it, and returns the asker's last answer.
pub(crate) fn release_when_done(held: Held, stream: &UnixStream, vm: &VmDir) -> Response {
    // Readable once the asker shut its side down or ended (end of file, or a hang-up).
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(HOLD_LIMIT).unwrap_or(PollTimeout::MAX);
    let released = matches!(poll(&mut fds, timeout), Ok(n) if n > 0);
    let frozen_for = held.since.elapsed();
    drop(held);
    if released {
        Response::Thawed {
            frozen_ms: frozen_for.as_millis() as u64,
        }
    } else {
        Response::Error {
            message: format!(
                "VM {}: was thawed after {} s, before its export was written (a VM stays frozen \
                 for the copy of its layers at most that long)",
                vm.name(),
                HOLD_LIMIT.as_secs()
            ),
        }
    }
}

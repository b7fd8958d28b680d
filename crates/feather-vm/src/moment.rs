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
use feather_sys::cgroup::{Cgroup, Frozen};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{failed, InVm, Result};
use crate::protocol::Response;

/// The longest a VM stays frozen for the copy of its layers after its dump.
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(300);

/// How long the VM's processes may take to stop running once frozen.
const FREEZE_PATIENCE: Duration = Duration::from_secs(10);

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
/// the guard that thaws it; None if it could not be frozen in time (CRIU then freezes it
/// itself). CRIU, given a group that is not frozen yet, writes its `cgroup.freeze` and looks
/// again only every 100 ms (criu/seize.c, `freeze_processes`): the first look comes before
/// the kernel has stopped every task, so each checkpoint waited 100 ms more than it took.
/// This waits for the kernel's word, looking every 2 ms; CRIU finds the group frozen, seizes
/// the tasks at once, and leaves the group frozen, as it found it, until the guard goes.
pub(crate) fn frozen_for_dump(cgroup: Option<&Cgroup>) -> Option<Frozen> {
    let cgroup = cgroup.filter(|c| freezer_of(Some(c)).is_some())?;
    cgroup.freeze(FREEZE_PATIENCE).ok()
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
    let frozen = cgroup.freeze(FREEZE_PATIENCE).in_vm(name)?;
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

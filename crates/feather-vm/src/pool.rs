//! A pool of VMs made ahead for `feather run --rm` (issue 15): throw-away VMs of the default
//! options, each up and waiting with its background keeper, so that a run only claims one and
//! runs its command through init's exec channel ([`crate::exec`]) — no namespaces, mounts,
//! cgroup or network to make while the caller waits.
//!
//! - On by default: the size is a setting of the state root ([`set_size`]), 1 unless set
//!   (0: off); `FEATHER_POOL=0` keeps one run out of it ([`pooled::opted_out`]).
//! - A claim ([`claim`]) asks a pooled VM's keeper for it ([`crate::protocol::Request::Claim`]);
//!   the keeper gives it to one asker only, and ends and removes the VM as a throw-away VM's
//!   teardown does once that asker's connection closes: its command ended, or it was killed.
//!   A pooled VM is used once, never returned.
//! - A pooled VM made under another fingerprint ([`crate::pooled::fingerprint`]: the host's
//!   mounts, `/etc` files, the root's settings, feather's build) is claimed only to be ended.
//! - A fill ([`fill`], run by a detached process that the claimed VM's keeper starts as the
//!   VM ends, or a run that missed after its command: see [`pooled::start_filler`]) removes
//!   what crashes left and makes VMs until the pool has its size; one at a time (a lock).
//! - A pooled VM unclaimed for the root's idle time ([`set_idle`]) is ended by its keeper,
//!   which takes it out of the pool as a claim would and starts no fill: the next run does.
//!
//! Where each thing lives on disk: [`crate::pooled`].

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use feather_core::atomic::{write_atomic, Durability};
use feather_core::error::IoContext;
use feather_core::{StateRoot, VmName};

use crate::error::{failed, io, Result};
use crate::lifecycle::{self, CreateOptions};
use crate::pool_locks::{self, Deadline};
use crate::pooled;
use crate::protocol::{Conversation, Request, Response};
use crate::workload::{Inherited, Workload};

/// How long a claim waits for a pooled VM's keeper to answer before it tries the next (a
/// keeper answers in microseconds; one that does not is removed by the next fill).
const CLAIM_PATIENCE: Duration = Duration::from_millis(300);

/// How long a fill waits for a pooled VM's keeper to answer before it ends it as stuck (or of
/// a build that speaks another protocol).
const ANSWER_PATIENCE: Duration = Duration::from_secs(1);

/// How long a drain waits for the pool's VMs to be gone.
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);

/// The pool's size setting: [`pooled::DEFAULT_SIZE`] unless set.
pub fn size(root: &StateRoot) -> usize {
    pooled::size(root)
}

/// The largest pool: each pooled VM holds a keeper, an init, a veth and an address lease (a
/// /24 has about 250), and a fill makes them one after another.
pub const MAX_SIZE: usize = 64;

/// Records the pool's size setting (durably: it is a setting of the root, as its network's).
pub fn set_size(root: &StateRoot, size: usize) -> Result<()> {
    if size > MAX_SIZE {
        return Err(failed(
            &root.dir().display(),
            format!("a pool of {size} VMs is too large: at most {MAX_SIZE}"),
        ));
    }
    make_folders(root)?;
    pooled::write_setting(root, pooled::SIZE, format!("{size}\n").as_bytes())?;
    pooled::forget_stale_misses(root);
    Ok(())
}

/// Records how long a pooled VM waits unclaimed before its keeper removes it (`None`: for
/// ever), durably, as the size. Read by each pooled VM's keeper as the VM is up, and again
/// when that time has come.
pub fn set_idle(root: &StateRoot, idle: Option<Duration>) -> Result<()> {
    let seconds = match idle {
        None => 0,
        // Whole seconds, at least one: 0 is "for ever".
        Some(idle) => idle.as_secs().max(1),
    };
    make_folders(root)?;
    pooled::write_setting(root, pooled::IDLE, format!("{seconds}\n").as_bytes())
}

/// What `feather pool` shows.
#[derive(Debug, Default)]
pub struct Status {
    pub size: usize,
    /// How long a pooled VM waits unclaimed; `None`: for ever.
    pub idle: Option<Duration>,
    /// Pooled VMs ready to be claimed: up, made under the host's present fingerprint.
    pub ready: Vec<VmName>,
    /// Pooled VMs that will not be claimed (made under another fingerprint, or their keeper
    /// is gone): the next fill removes them.
    pub stale: Vec<VmName>,
    /// How many runs in a row found only stale VMs: at [`pooled::STALE_MISSES_TO_STOP`] no
    /// refill starts until a run finds a VM that matches or the size is set again.
    pub stale_misses: u32,
}

impl Status {
    /// Whether runs that kept finding the pool stale stopped its refills.
    pub fn refills_stopped(&self) -> bool {
        self.stale_misses >= pooled::STALE_MISSES_TO_STOP
    }
}

/// The pool as it is now.
pub fn status(root: &StateRoot) -> Status {
    let current = pooled::fingerprint(root);
    let mut status = Status {
        size: size(root),
        idle: pooled::idle(root),
        stale_misses: pooled::stale_misses(root),
        ..Status::default()
    };
    for (name, made_under) in entries(root) {
        let up = root.vm(&name).keeper_alive().unwrap_or(false);
        if up && made_under == current {
            status.ready.push(name);
        } else {
            status.stale.push(name);
        }
    }
    status
}

/// The pool's entries: each pooled VM's name and the fingerprint it was made under.
fn entries(root: &StateRoot) -> Vec<(VmName, String)> {
    let Ok(read) = fs::read_dir(pooled::entries_dir(root)) else {
        return Vec::new();
    };
    let mut entries: Vec<(VmName, String)> = read
        .flatten()
        .filter_map(|entry| {
            let name: VmName = entry.file_name().to_str()?.parse().ok()?;
            let made_under = pooled::read_small(&entry.path())?;
            Some((name, made_under.trim().to_owned()))
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// A pooled VM claimed by this process: its keeper ends it when this is let go
/// ([`Claimed::let_go`]), dropped, or this process dies.
pub struct Claimed {
    pub name: VmName,
    held: Conversation,
}

/// How long a run waits for its pooled VM's keeper to set the VM aside once it let go: the
/// keeper kills init and renames a folder (milliseconds); one stopped or stuck is left to it.
const RELEASE_PATIENCE: Duration = Duration::from_secs(10);

impl Claimed {
    /// Lets go of the VM and waits until its keeper has set it aside (out of `ls`, its name
    /// free; the rest of its teardown goes on without anyone waiting), as a cold run ends with
    /// its VM. Whether the keeper said so; if not, it died (or is stuck).
    fn let_go(self) -> bool {
        let answered = || -> std::io::Result<Response> {
            self.held.done_sending()?;
            self.held.wait_at_most(RELEASE_PATIENCE)?;
            let mut held = self.held;
            held.answer()
        };
        matches!(answered(), Ok(Response::Stopped { .. }))
    }
}

/// Claims one pooled VM that matches the host as it is now, if there is one, to run
/// `workload` in. Two claims never get the same VM (its keeper gives it once). One that no
/// longer matches is claimed and let go at once (its keeper removes it); one whose keeper does
/// not answer is left to the next fill. The keeper is told this process's terminal, where the
/// VM's `ask` rules then ask, as a VM started from here would.
pub fn claim(root: &StateRoot, workload: &Workload) -> Option<Claimed> {
    let mut entries = entries(root);
    feather_core::trace::phase("look in the pool");
    // A command too big for init's message runs as it would in a VM of its own only there: a
    // miss, which costs the pool nothing.
    if entries.is_empty() || !crate::commands::fits(workload) {
        return None;
    }
    let request = Request::Claim {
        terminal: lifecycle::starting_terminal(),
    };
    // Concurrent runs start at different entries, so that they seldom ask the same keeper.
    let start = std::process::id() as usize % entries.len();
    entries.rotate_left(start);
    // Taken at the first VM claimed, not before: back to back, the entry a run finds is often
    // the refill's, whose VM is still being made (its keeper does not listen yet), and the
    // fingerprint (the host's mount table and files, hashed: 2.3–2.7 ms in a debug build) was
    // that miss's cost for nothing.
    let mut current = None;
    let mut stale = false;
    for (name, made_under) in entries {
        let vm = root.vm(&name);
        if !limits_fit(workload, &vm) || !context_fits(&vm) {
            // Left in the pool for a caller it fits.
            continue;
        }
        let socket = vm.control_socket();
        let Ok(mut conversation) = Conversation::start(&socket, &request, CLAIM_PATIENCE) else {
            continue;
        };
        if !matches!(conversation.answer(), Ok(Response::Claimed)) {
            continue;
        }
        let current = current.get_or_insert_with(|| {
            let taken = pooled::fingerprint(root);
            feather_core::trace::phase("claim: fingerprint the host");
            taken
        });
        if made_under != *current {
            // Dropped: its keeper ends it.
            claimed_to_be_ended(root, &name);
            stale = true;
            continue;
        }
        if pooled::stale_misses(root) > 0 {
            pooled::forget_stale_misses(root);
        }
        return Some(Claimed {
            name,
            held: conversation,
        });
    }
    if stale {
        pooled::record_stale_miss(root);
    }
    None
}

/// Whether the caller's limits `workload` carries can be given to its command in the pooled
/// `vm`: not above its keeper's (the fill that made it may have had lower ones than the host's).
fn limits_fit(workload: &Workload, vm: &feather_core::VmDir) -> bool {
    let Some(inherited) = &workload.inherited else {
        return true;
    };
    vm.last_keeper()
        .is_some_and(|(keeper, _)| crate::filler::limits_fit(inherited, keeper))
}

/// Whether the caller's context (network namespace, `NoNewPrivs`, seccomp, capability sets, LSM
/// label, audit login uid) is the pooled `vm`'s keeper's, which its command would have instead.
fn context_fits(vm: &feather_core::VmDir) -> bool {
    vm.last_keeper()
        .is_some_and(|(keeper, _)| crate::filler::context_fits(keeper))
}

/// Runs `workload` in the claimed VM as `run --rm` runs it in a VM of its own: through init's
/// exec channel, its stdio pipes this process relays, signals passed on; returns its exit code
/// (128 + signal if killed). The VM ends once `claimed` is let go here: this returns once its
/// keeper has set it aside (out of `ls`), not waiting for the rest of its teardown.
pub fn run_claimed(root: &StateRoot, claimed: Claimed, workload: &Workload) -> Result<i32> {
    // exec leaves its caller in the VM's network namespace: back to the host's after, for the
    // filler this process starts next.
    let host = fs::File::open("/proc/self/ns/net").map_err(io(
        &claimed.name,
        "opening this process's network namespace",
    ))?;
    let code = crate::exec::exec(root, &claimed.name, workload, false);
    feather_core::trace::phase("run the command through the pooled VM's init");
    nix::sched::setns(host.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io(&claimed.name, "going back to the host's network")(e.into()))?;
    let name = claimed.name.clone();
    if !claimed.let_go() {
        // Its keeper is gone (killed), or going: its ending descriptors close one after
        // another, so give it a moment to let go of its lock.
        remove_if_crashed(root, &name, Instant::now() + CRASH_PATIENCE);
    }
    feather_core::trace::phase("wait for the pooled VM to be set aside");
    code
}

/// How long a run whose command did not report its end waits for its pooled VM's keeper to
/// be seen gone (killed) before it leaves the VM to that keeper.
const CRASH_PATIENCE: Duration = Duration::from_secs(1);

/// Removes claimed VM `name` if its keeper is gone by `deadline` having left it (killed: the
/// VM not set aside, as the keeper's teardown does first), and starts the refill that keeper
/// would have started.
fn remove_if_crashed(root: &StateRoot, name: &VmName, deadline: Instant) {
    let vm = root.vm(name);
    if !vm.keeper_ends_by(deadline).unwrap_or(false) || !vm.path().exists() {
        return;
    }
    remove_crashed_claim(root, &vm);
    if size(root) > 0 {
        let _ = pooled::start_filler(root);
    }
}

/// Removes what a claimed VM whose keeper is gone left, and its claimed entry once nothing is.
fn remove_crashed_claim(root: &StateRoot, vm: &feather_core::VmDir) {
    if vm.path().exists() {
        lifecycle::remove_failed_throw_away(root, vm);
    }
    if !vm.path().exists() {
        let _ = fs::remove_file(pooled::claimed_entry(root, vm.name()));
    }
}

/// Removes the claimed VMs whose keeper died before it removed them (the run that claimed one
/// was killed with it, or before it could look): what a keeper's teardown would have removed.
/// A VM whose keeper set it aside is finished by the commands that settle teardowns.
fn remove_crashed_claims(root: &StateRoot) {
    for name in claimed(root) {
        let vm = root.vm(&name);
        if !vm.path().exists() || !vm.keeper_alive().unwrap_or(true) {
            remove_crashed_claim(root, &vm);
        }
    }
}

/// The VMs claimed whose keeper has not removed them yet (in use, or ending).
fn claimed(root: &StateRoot) -> Vec<VmName> {
    let Ok(read) = fs::read_dir(pooled::claimed_dir(root)) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Brings the pool to its size: removes what is stale or left by a crash, makes VMs that are
/// missing, claims and lets go of those over the size. One fill works at a time (a lock).
/// Another returns at once where the one at work can do all it would (its hard limits are
/// not below this one's), and the one at work looks again once it has let go of the lock (a
/// claim whose fill returned so is not missed; not a fill whose generation is over, nor one
/// that failed: review pool29 M2); otherwise it waits for it, then does its own
/// round: VMs made under a lower hard limit than its own are replaced, not left. With
/// `generation` (what its starter saw: [`pooled::generation`]), a fill that finds the pool
/// emptied since for its network to go makes nothing. A fill records itself for others to
/// trust only once it knows it will work (its generation current, the host's context), and
/// removes the record before it lets go of the lock; one that fails after (a VM it could not
/// make) does not look again.
pub fn fill(root: &StateRoot, generation: Option<u64>) -> Result<()> {
    make_folders(root)?;
    let folder = pooled::open_dir(root).at(pooled::dir(root))?;
    loop {
        let lock = open_fill_lock(root, &folder)?;
        if lock.try_lock().is_err() {
            if at_work_can_do_ours(&folder) {
                return Ok(());
            }
            if let Some(Some(hold)) = HOLD_FILL_WAIT_AT.get() {
                crate::test_hooks::held_by(hold);
            }
            // For the whole round of the fill at work, which may make many VMs; but a fill
            // stopped (Ctrl-Z) holding it is named, not waited on for good.
            let shown = pooled::dir(root).join(pooled::FILL_LOCK);
            pool_locks::lock_file_unless_stopped(&lock, &shown)?;
        }
        // Over before it writes its record: a fill that finds the lock taken then waits for
        // this one rather than trust it, and does its own round.
        if generation.is_some_and(|seen| seen != pooled::generation(root)) {
            return Ok(());
        }
        if crate::filler::not_the_hosts_context().is_none() {
            say_who_fills(&folder);
        }
        feather_core::trace::phase("fill: take the lock, record itself");
        let worked = fill_locked(root);
        // Before the lock goes: a fill taking it next has not recorded itself yet, and one
        // finding it taken then must not trust this one's record, which is over.
        let _ = fs::remove_file(pooled::in_folder(&folder, pooled::FILLER));
        drop(lock);
        worked?;
        // Only a claim made meanwhile (whose fill found the lock taken and returned) asks for
        // another round; what this one could not remove waits for the next fill.
        if entries(root).len() >= size(root) {
            return Ok(());
        }
    }
}

/// Makes the pool's folders where missing, one by one and never the root's own folder: a
/// fill (or a setting) for a root removed meanwhile fails here instead of making the root
/// again.
fn make_folders(root: &StateRoot) -> Result<()> {
    for dir in [
        pooled::dir(root),
        pooled::entries_dir(root),
        pooled::claimed_dir(root),
    ] {
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e).at(&dir)?,
            _ => {}
        }
    }
    Ok(())
}

/// The pool's lock ([`pooled::FILL_LOCK`]) in its opened `folder`
/// ([`pool_locks::open_lock_in`]).
fn open_fill_lock(root: &StateRoot, folder: &fs::File) -> Result<fs::File> {
    pool_locks::open_lock_in(folder, &pooled::dir(root), pooled::FILL_LOCK)
}

/// Records this fill, while it holds the lock, in the pool's opened `folder`
/// ([`pooled::FILLER`]), for another fill to look at ([`at_work_can_do_ours`]). Written whole
/// by a rename, which replaces a symbolic link put there rather than writing through it.
fn say_who_fills(folder: &fs::File) {
    let Some(record) = pooled::process_record(nix::unistd::getpid()) else {
        return;
    };
    let file = pooled::in_folder(folder, pooled::FILLER);
    let _ = write_atomic(&file, record.as_bytes(), Durability::Volatile);
}

/// Whether the fill that holds the lock does all this one would: it still runs (as it
/// recorded itself in the pool's opened `folder`) and no hard limit of this process's is above
/// its own (it replaces VMs made under lower ones as this one would). Unknown: no, and this
/// one waits.
fn at_work_can_do_ours(folder: &fs::File) -> bool {
    let record = pooled::read_small(&pooled::in_folder(folder, pooled::FILLER));
    let at_work = record.and_then(|record| pooled::still_running(&record));
    at_work.is_some_and(|pid| {
        crate::filler::limits_fit(&Inherited::of_this_process(), pid)
            && crate::filler::context_fits(pid)
    })
}

/// Test-only ([`crate::test_hooks`]): a fill that has its lock waits, before it reads the
/// size, for the lock of the file this names: a fill under way, as `network down` meets it.
pub const HOLD_FILL: &str = "FEATHER_TEST_HOLD_FILL";

/// [`HOLD_FILL`] as the fill's starter set it (read before the fill clears its environment).
static HOLD_FILL_AT: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();

/// Test-only ([`crate::test_hooks`]): a fill that found its lock taken by a fill at work it
/// does not trust waits, before it waits for that lock, for the lock of the file this names:
/// a test sees that it came to wait.
pub const HOLD_FILL_WAIT: &str = "FEATHER_TEST_HOLD_FILL_WAIT";

/// [`HOLD_FILL_WAIT`] as the fill's starter set it (read before the fill clears its
/// environment).
static HOLD_FILL_WAIT_AT: std::sync::OnceLock<Option<std::ffi::OsString>> =
    std::sync::OnceLock::new();

/// Test-only ([`crate::test_hooks`]): a fill waits, before it takes its lock, for the lock of
/// the file this names: a fill started before `network down` but at work only after it.
pub const HOLD_FILL_START: &str = "FEATHER_TEST_HOLD_FILL_START";

/// Test-only ([`crate::test_hooks`]): `network down` in a root without a pool waits, its
/// [`pooled::fence`] in place, for the lock of the file this names: a `network down` killed
/// while its fence stands.
pub const HOLD_FENCED: &str = "FEATHER_TEST_HOLD_FENCED";

/// Test-only ([`crate::test_hooks`]): `network down` in a root with a pool's folder waits,
/// the pool's size 0 written in it, for the lock of the file this names: a `network down`
/// killed while it empties the pool.
pub const HOLD_EMPTYING: &str = "FEATHER_TEST_HOLD_EMPTYING";

/// [`fill`], under its lock.
fn fill_locked(root: &StateRoot) -> Result<()> {
    if let Some(Some(hold)) = HOLD_FILL_AT.get() {
        crate::test_hooks::held_by(hold);
    }
    loop {
        remove_stale(root);
        feather_core::trace::phase("fill: remove stale VMs");
        let ready = entries(root).len();
        let wanted = size(root);
        if ready == wanted {
            return Ok(());
        }
        if ready > wanted {
            for _ in wanted..ready {
                drop(claim_any(root));
            }
            return Ok(());
        }
        if let Some(why) = crate::filler::not_the_hosts_context() {
            return Err(failed(
                &root.dir().display(),
                format!(
                    "the pool's fill makes no VM: {why}, and its VMs would pass that on to \
                     other callers; fill it from the host (`feather pool --fill` as a login's \
                     process)"
                ),
            ));
        }
        for _ in ready..wanted {
            // A size lowered meanwhile (a drain, `network down`) stops it at once.
            if size(root) < wanted {
                break;
            }
            add_one(root)?;
        }
    }
}

/// Claims one pooled VM, whatever it was made under, and lets go of it (its keeper ends it).
fn claim_any(root: &StateRoot) -> Option<Claimed> {
    entries(root).into_iter().find_map(|(name, _)| {
        let socket = root.vm(&name).control_socket();
        let request = Request::Claim { terminal: None };
        let mut conversation = Conversation::start(&socket, &request, CLAIM_PATIENCE).ok()?;
        if !matches!(conversation.answer(), Ok(Response::Claimed)) {
            return None;
        }
        claimed_to_be_ended(root, &name);
        Some(Claimed {
            name,
            held: conversation,
        })
    })
}

/// Says, in VM `name`'s claimed entry, that its claimer (a fill, or a run whose VM no longer
/// matches) runs no command in it: the keeper recorded the claimer, and a drain would name the
/// VM in use by a run for as long as that process lives. Written before the claim is let go,
/// so before the keeper's teardown, which removes the entry last.
fn claimed_to_be_ended(root: &StateRoot, name: &VmName) {
    let _ = write_atomic(
        &pooled::claimed_entry(root, name),
        b"",
        Durability::Volatile,
    );
}

/// Removes the pool's entries that will never be claimed, with their VMs, and what claimed
/// VMs whose keeper was killed left ([`remove_crashed_claims`]): an entry without a VM (a fill that died before it made it), a VM whose keeper is gone (killed, or a fill that
/// died before it started it) or does not answer (stopped, stuck, of a build that speaks
/// another protocol), a VM made under another fingerprint. Run under the fill lock: no fill
/// is half-way through an entry.
fn remove_stale(root: &StateRoot) {
    remove_crashed_claims(root);
    let current = pooled::fingerprint(root);
    for (name, made_under) in entries(root) {
        let vm = root.vm(&name);
        let entry = pooled::entry(root, &name);
        if !vm.path().exists() {
            let _ = fs::remove_file(&entry);
            continue;
        }
        if !vm.keeper_alive().unwrap_or(true) {
            lifecycle::remove_failed_throw_away(root, &vm);
            let _ = fs::remove_file(&entry);
            continue;
        }
        if !answers(&vm.control_socket()) {
            // Its entry removed first: that is the claim, so no run takes it meanwhile.
            if fs::remove_file(&entry).is_ok() {
                end_unanswering(root, &vm);
            }
            continue;
        }
        // A VM made by a fill whose limits a caller had lowered serves only callers as low:
        // replaced by one of this fill's, which took the host's as far as it may.
        let lower = vm.last_keeper().is_some_and(|(keeper, _)| {
            !crate::filler::limits_fit(&Inherited::of_this_process(), keeper)
        });
        // The claim refused: a run claimed it meanwhile (its entry is gone: the VM is that
        // run's, whose fingerprint, read at another moment, matched), or a keeper of an
        // earlier build knows no claim (its entry is there: removed here first, which is the
        // claim, then stopped; it removes its throw-away VM itself).
        if (made_under != current || lower)
            && !claimed_to_end(root, &name)
            && fs::remove_file(&entry).is_ok()
        {
            let _ = lifecycle::stop(root, &name, Duration::ZERO);
        }
    }
}

/// Whether the keeper listening on `socket` answers a status request in this build's protocol.
fn answers(socket: &Path) -> bool {
    Conversation::start(socket, &Request::Status, ANSWER_PATIENCE)
        .and_then(|mut asked| asked.answer())
        .is_ok_and(|answer| matches!(answer, Response::Running { .. }))
}

/// Ends a pooled VM whose keeper does not answer (its entry removed already): the keeper is
/// killed by the pid its lock records (checked by its start time), then what it held removed.
fn end_unanswering(root: &StateRoot, vm: &feather_core::VmDir) {
    if let Some((pid, started)) = vm.last_keeper() {
        let pid = nix::unistd::Pid::from_raw(pid);
        if feather_sys::process::start_ticks(pid) == Some(started) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let deadline = Instant::now() + ANSWER_PATIENCE;
            let _ = feather_sys::process::await_end(pid, started, deadline);
        }
    }
    if !vm.keeper_alive().unwrap_or(true) {
        lifecycle::remove_failed_throw_away(root, vm);
    } else {
        eprintln!(
            "feather pool: VM {} does not answer and its keeper could not be ended; \
             `feather stop {}` ends it",
            vm.name(),
            vm.name()
        );
    }
}

/// Claims pooled VM `name` and lets go of it at once, which ends it; whether its keeper gave
/// it.
fn claimed_to_end(root: &StateRoot, name: &VmName) -> bool {
    let socket = root.vm(name).control_socket();
    let request = Request::Claim { terminal: None };
    let Ok(mut claim) = Conversation::start(&socket, &request, CLAIM_PATIENCE) else {
        return false;
    };
    let given = claim
        .answer()
        .is_ok_and(|answer| answer == Response::Claimed);
    if given {
        claimed_to_be_ended(root, name);
    }
    given
}

/// Makes one pooled VM: its entry first (so that `ls` never shows it, and a crash leaves the
/// entry that leads the next fill to it), then the VM, then its fingerprint, then its start.
fn add_one(root: &StateRoot) -> Result<()> {
    let name: VmName = format!("run-{}", lifecycle::new_id()).parse()?;
    let entry = pooled::entry(root, &name);
    // Matches no fingerprint until the VM's is written: a crash before leaves it stale.
    fs::write(&entry, "").at(&entry)?;
    // The options of a `run --rm` that names none, read as the command line reads them.
    let options = CreateOptions {
        ephemeral: true,
        ..crate::options::CreateRequest::default().options()?
    };
    let made = lifecycle::create(root, &name, &options).and_then(|vm| {
        feather_core::trace::phase("fill: create the VM");
        fingerprinted(root, &entry)
            .inspect(|()| feather_core::trace::phase("fill: its fingerprint"))
            .and_then(|()| lifecycle::start(root, &name))
            .inspect_err(|_| lifecycle::remove_failed_throw_away(root, &vm))
    });
    if made.is_err() {
        let _ = fs::remove_file(&entry);
    }
    feather_core::trace::phase("make a pooled VM");
    made
}

/// Writes the fingerprint into a pooled VM's `entry` once the VM is created and before it
/// starts: after the root's network exists (the creation chose it, writing `network.toml`, a
/// root's first VM included), before the start reads what the fingerprint holds (the mounts,
/// the `/etc` files, the policy). Taken before the creation, a root's first pooled VM was
/// stale as soon as it was made, and the fill let it go and made another.
fn fingerprinted(root: &StateRoot, entry: &Path) -> Result<()> {
    let fingerprint = pooled::fingerprint(root);
    write_atomic(entry, fingerprint.as_bytes(), Durability::Volatile)?;
    Ok(())
}

/// `feather pool --fill`, as [`pooled::start_filler`] starts it: in a session of its own, so that
/// the terminal of the run that started it may close without ending it.
pub fn fill_detached(root: &StateRoot, generation: Option<u64>) -> Result<()> {
    // It goes on for rounds after the command that started it: no fstab resolution is kept
    // from one look to the next (feather_sys::fstab).
    feather_sys::fstab::resolve_at_every_look();
    // Nothing of its starter's beyond stdio: a script's `flock 9` or make's jobserver pipe
    // would otherwise stay held until the fill has made its VMs.
    feather_sys::process::close_other_fds(&[]);
    let _ = nix::unistd::setsid();
    // In `/`, as a filler a run starts ([`pooled::start_filler`]): run by hand, the caller's
    // folder would otherwise be held by the keepers it starts (a mount it keeps busy).
    std::env::set_current_dir("/").at("/")?;
    // Once per fill started, not at each of a drain's rounds ([`fill`]).
    pooled::sweep_fence_leftovers(root);
    let _ = HOLD_FILL_AT.set(crate::test_hooks::set(HOLD_FILL));
    let _ = HOLD_FILL_WAIT_AT.set(crate::test_hooks::set(HOLD_FILL_WAIT));
    let hold_start = crate::test_hooks::set(HOLD_FILL_START);
    crate::filler::become_no_callers(root)?;
    feather_core::trace::phase("fill: become no caller's (pool cgroup, limits)");
    if let Some(hold) = hold_start {
        crate::test_hooks::held_by(&hold);
    }
    fill(root, generation)
}

/// How long a drain waits for a claimed VM whose run has ended (killed: a run that ends lets
/// go only once its VM is set aside) to be set aside by its keeper.
const CLAIM_END_PATIENCE: Duration = Duration::from_secs(2);

/// What a drain left: VMs claimed by runs, which are theirs.
#[derive(Debug, Default)]
pub struct Drained {
    /// Claimed VMs whose run still runs its command, and that run's pid: each VM goes when its
    /// command ends.
    pub in_use: Vec<(VmName, i32)>,
    /// Claimed VMs whose run has ended but whose keeper had not set them aside by the drain's
    /// patience (stopped, or stuck).
    pub not_yet_removed: Vec<VmName>,
}

/// Empties the pool and sets its size to 0: every pooled VM is claimed and let go, and waited
/// for until its teardown is over, and then the root's network goes unless a VM uses it (the
/// linger the teardowns of runs from the pool begin, the namespaces made ahead mounted in the
/// root), so that nothing of the pool is left and `rm -rf` of the root leaves nothing. VMs
/// claimed by runs still running their command are theirs: not waited for, named in what it
/// returns.
pub fn drain(root: &StateRoot) -> Result<Drained> {
    let drained = emptied(root);
    // Even after a drain that failed, as `network down` does.
    lifecycle::take_network_down(root);
    drained
}

/// [`drain`] but the root's network.
fn emptied(root: &StateRoot) -> Result<Drained> {
    set_size(root, 0)?;
    // A fill at work (a run's refill, making its VM) reads the size 0 only once that VM is
    // made: waited for, so that its VM is among those drained and waited for, not left behind
    // mid-teardown when the drain returns.
    await_fill(root)?;
    let names: Vec<VmName> = entries(root).into_iter().map(|(name, _)| name).collect();
    fill(root, None)?;
    // A fill at work meanwhile (it held the lock) reads the size 0 before it stops.
    let deadline = Instant::now() + DRAIN_PATIENCE;
    while !entries(root).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        fill(root, None)?;
    }
    for name in &names {
        let vm = root.vm(name);
        while vm.path().exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let drained = claims_settled(root);
    lifecycle::settle_throw_aways(root, true);
    match entries(root).first() {
        None => Ok(drained),
        Some((name, _)) => Err(failed(
            name,
            "is still in the pool after the drain; `feather pool --drain` tries again",
        )),
    }
}

/// The fence [`pooled::fence`] put in place, if it did. One that cannot be written (a full or
/// read-only disk, when an admin most needs `network down`) does not keep the network up: it
/// is said, and `meanwhile` runs unfenced, as before fences were.
fn fenced(root: &StateRoot) -> Option<pooled::Fence> {
    pooled::fence(root).unwrap_or_else(|e| {
        eprintln!(
            "feather: warning: cannot fence the pool while the network goes down ({e}); \
             a run ending meanwhile may fill the pool again: `feather pool --drain` after"
        );
        None
    })
}

/// Empties the pool as [`drain`] does while `meanwhile` runs (`feather network down`, whose
/// network the pooled VMs use), and then puts its size setting back as it was (absent stays
/// absent: the next run refills the pool). A fill under way is waited for first (its lock),
/// once the size reads 0: it makes nothing more, and one started later makes nothing, until
/// `meanwhile` is over; one started before but at work only after makes nothing either (the
/// pool's next [`pooled::generation`]). A root without a pool's folder has no pooled VM and
/// no fill started before (a fill's starter makes the folder before it reads the generation:
/// [`pooled::start_filler`]); it gets a folder with the size 0 while `meanwhile` runs, so that
/// a fill started then makes nothing, and none after ([`pooled::fence`]). A pool's folder that
/// is there is held locked as a fence's owner holds its own ([`pooled::hold_dir`]), so that no
/// lifter of a stale fence takes it away under this; a stale fence's size found there is put
/// back as absent. The size and
/// generation are written through the pool's opened folder; the drain that follows reaches
/// the rest of the pool by path (its settings, `vms/`, `claimed/`, `fill.lock`), in a root
/// whose folders and entries only root can change ([`feather_core::strict_modes`]). How many
/// pooled VMs there were (0: none), what the drain left, and what `meanwhile` gave.
pub fn emptied_while<T>(
    root: &StateRoot,
    meanwhile: impl FnOnce() -> T,
) -> Result<(usize, Drained, T)> {
    let held = match pooled::hold_dir(root)? {
        Some(held) => Some(held),
        None => match fenced(root) {
            Some(fence) => {
                crate::test_hooks::held(HOLD_FENCED);
                let given = meanwhile();
                pooled::lift_fence(root, fence);
                return Ok((0, Drained::default(), given));
            }
            // Made meanwhile by a fill's starter: emptied as any pool.
            None => pooled::hold_dir(root)?,
        },
    };
    // No fence could be written (said), and no folder is there: unfenced, as before fences.
    let Some(folder) = held else {
        return Ok((0, Drained::default(), meanwhile()));
    };
    // Counted before the size is 0 too: a fill under way then ends the VMs above it itself.
    let before = entries(root).len();
    // The size 0 first, then the next generation; a starter reads them the other way round
    // ([`pooled::start_filler`]): one that read the generation before it was raised reads a
    // size of 0 or starts a fill of the generation over, which makes nothing. The fence's 0,
    // the setting to put back kept beside it: killed from here on, this leaves a fence whose
    // owner is gone, which the next reader of the size lifts, putting the setting back.
    let setting = pooled::fence_held(root, &folder)?;
    pooled::next_generation(root, &folder)?;
    crate::test_hooks::held(HOLD_EMPTYING);
    let emptied = await_fill_in(root, &folder).and_then(|()| {
        let pooled = entries(root).len().max(before);
        let drained = emptied(root)?;
        Ok((pooled, drained))
    });
    // Even after a drain that failed: the network goes unless a VM uses it.
    let given = meanwhile();
    // Back as it was, whatever the drain did.
    pooled::unfence_held(root, &folder, setting)?;
    let (pooled, drained) = emptied?;
    Ok((pooled, drained, given))
}

/// Waits for the fill at work, if any, to end (it reads the size again before it stops), at
/// most [`FILL_PATIENCE`], or not at all where it is stopped: then an error names it and what
/// to do ([`pool_locks::lock_within`]). A pool without a lock has no fill at work, and is not
/// given one: a fill that takes the lock later reads the size and generation after.
fn await_fill(root: &StateRoot) -> Result<()> {
    match pooled::open_dir(root) {
        Ok(folder) => await_fill_in(root, &folder),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(pooled::dir(root))?,
    }
}

/// [`await_fill`] in the pool's opened `folder`: the descriptor its caller holds (a second
/// open of the folder would be a second open file description).
fn await_fill_in(root: &StateRoot, folder: &fs::File) -> Result<()> {
    let lock = pooled::in_folder(folder, pooled::FILL_LOCK);
    if fs::symlink_metadata(lock).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Ok(());
    }
    let lock = open_fill_lock(root, folder)?;
    let shown = pooled::dir(root).join(pooled::FILL_LOCK);
    pool_locks::lock_within(lock, &shown, Deadline::after(FILL_PATIENCE))?;
    Ok(())
}

/// How long a drain or `network down` waits for the fill at work ([`await_fill`]), which stops
/// once the VM it is making is made (it reads the size, 0, before the next): seconds, a minute
/// on a host under load. A fill behind another waits for that one's whole round instead, with
/// no bound but a stopped holder ([`fill`]).
const FILL_PATIENCE: Duration = Duration::from_secs(120);

/// Waits a moment for each claimed VM whose run has ended to be set aside by its keeper (a
/// run killed leaves that to its keeper, which sees the claim's connection close), not for
/// those whose run still runs its command: what is left.
fn claims_settled(root: &StateRoot) -> Drained {
    let mut drained = Drained::default();
    let patience_ends = Instant::now() + CLAIM_END_PATIENCE;
    for name in claimed(root) {
        let vm = root.vm(&name);
        if let Some(pid) = pooled::claimer_running(root, &name) {
            drained.in_use.push((name, pid));
            continue;
        }
        while vm.path().exists() && Instant::now() < patience_ends {
            std::thread::sleep(Duration::from_millis(5));
        }
        if vm.path().exists() {
            drained.not_yet_removed.push(name);
        }
    }
    drained
}

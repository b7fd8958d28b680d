//! VMs made ahead for the default `feather run --rm` (docs/design.md, "VMs made ahead"): with
//! `FEATHER_POOL=N`, a state root keeps up to N throw-away VMs of the default configuration
//! running, hidden from `ls`. A `run --rm` without options that change the VM claims one
//! through its keeper, which renames it, gives it the run's hostname and `/etc` files, and
//! ends it when the run's command has ended; the run enters it as `exec` does.
//!
//! ```text
//! <run>/pool/last-run      touched by every default `run --rm` as it starts
//! <run>/pool/refill.lock   held by the one refill under way
//! <run>/pool/draining      present while `drain` empties the pool: no refill makes a VM
//! ```
//!
//! The refill must not slow the runs it serves: it is a detached process in the idle
//! scheduling and I/O classes, it makes a VM only once no run has started for [`QUIET`] (runs
//! coming back to back, as a script's loop, all go the ordinary way, unslowed), and a claimed
//! VM's teardown runs in the idle class too (`Keeper::end_claimed`).

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use feather_core::error::IoContext;
use feather_core::trace;
use feather_core::{StateRoot, VmDir, VmName, VmStatus};

use crate::lifecycle::{self, CreateOptions};
use crate::options::CreateRequest;
use crate::protocol::{Conversation, Request, Response};
use crate::workload::Workload;

/// The environment variable that sizes the pool: how many VMs a state root keeps made ahead
/// (0, the default: none).
pub const SIZE_VARIABLE: &str = "FEATHER_POOL";

/// At most this many VMs made ahead per state root.
const MOST: usize = 8;

/// How long no `run --rm` must have started before the refill makes a VM.
pub const QUIET: Duration = Duration::from_millis(150);

/// How VMs made ahead are named (with 12 hex digits): never a name `run --rm` gives.
const PREFIX: &str = "pool-";

/// The pool's size from the environment: 0 when unset or not a number.
pub fn size() -> usize {
    std::env::var(SIZE_VARIABLE)
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MOST)
}

fn folder(root: &StateRoot) -> PathBuf {
    root.run_dir().join("pool")
}

/// What a VM made ahead records of the feather that made it: the package's version and the
/// identity of the keeper program beside this binary (a rebuild or a reinstall changes it). A
/// VM made by another feather is never claimed, and the next refill removes it.
pub fn version() -> String {
    use std::os::unix::fs::MetadataExt;
    let program = crate::launch::program()
        .and_then(fs::metadata)
        .map(|m| format!("{}:{}:{}.{}", m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default();
    format!("{} {program}", env!("CARGO_PKG_VERSION"))
}

/// A VM made ahead, claimed: the run's own now. Dropping it ends the VM.
pub struct Claimed {
    pub name: VmName,
    connection: Conversation,
}

impl Claimed {
    /// Ends the VM, and returns once its keeper has set it aside (`ls` no longer shows it;
    /// its teardown goes on, waited for by the commands that wait for teardowns).
    pub fn end(mut self) {
        if self.connection.done_sending().is_ok() {
            let _ = self.connection.answer();
        }
    }
}

/// Runs `workload` in a VM made ahead, named `name` (with a terminal of the VM's own with
/// `tty`, as `exec -t`), and returns its exit code; `None` when none was ready (the run then
/// makes its VM itself). Starts a refill in any case.
pub fn run(
    root: &StateRoot,
    name: &VmName,
    workload: &Workload,
    tty: bool,
) -> Option<crate::Result<i32>> {
    let size = size();
    if size == 0 {
        return None;
    }
    note_run(root);
    // Before the claim: the refill must not inherit the claim's connection (whose end ends
    // the VM), nor the namespaces `exec` moves this process into.
    refill_in_background(root, size);
    trace::phase("pool: start the refill");
    let Some(claimed) = claim(root, name) else {
        trace::phase("pool: none ready");
        return None;
    };
    trace::phase("pool: claim a VM made ahead");
    let code = match tty {
        true => crate::exec::exec_with_terminal_from_child(root, &claimed.name, workload),
        false => crate::exec::exec(root, &claimed.name, workload, false),
    };
    trace::phase("pool: run the command");
    claimed.end();
    trace::phase("pool: end the VM");
    Some(code)
}

/// For a `run --rm` that makes its own VM (options that change it): with a pool, records that
/// a run starts now, so that a refill waits until runs stop coming, whatever their VMs.
pub fn note_other_run(root: &StateRoot) {
    if size() > 0 {
        note_run(root);
    }
}

/// Records that a `run --rm` starts now: a refill waits until runs stop coming.
fn note_run(root: &StateRoot) {
    let dir = folder(root);
    let mark = dir.join("last-run");
    let touched = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&mark)
        .and_then(|file| file.set_modified(SystemTime::now()));
    if touched.is_err() && fs::create_dir_all(&dir).is_ok() {
        let _ = File::create(&mark);
    }
}

/// Claims a VM made ahead by this feather, as `name`. The keeper renames the VM, which one
/// claim alone can do: of two runs asking one VM, the other gets an error and asks the next.
pub fn claim(root: &StateRoot, name: &VmName) -> Option<Claimed> {
    let version = version();
    let request = Request::Claim {
        name: name.to_string(),
        terminal: lifecycle::starting_terminal(),
    };
    for vm in root.pooled().ok()? {
        if vm.pooled_version().as_deref() != Some(version.as_str()) {
            continue;
        }
        // Made in the idle class: its keeper answers in the ordinary one.
        if let Some(keeper) = vm.read_state().ok().and_then(|state| state.keeper_pid) {
            let _ = feather_sys::sched::make_ordinary(nix::unistd::Pid::from_raw(keeper));
        }
        let Ok(mut connection) =
            Conversation::start(&vm.control_socket(), &request, Duration::from_secs(5))
        else {
            continue;
        };
        if let Ok(Response::Claimed { .. }) = connection.answer() {
            return Some(Claimed {
                name: name.clone(),
                connection,
            });
        }
    }
    None
}

/// Starts a detached process that fills the pool up to `size` (see [`refill`]), unless a refill
/// is under way (waiting, as it does while runs come back to back): then a lock tells, and this
/// run costs no process. The refill inherits the lock (a `flock` belongs to the open file, which
/// the child shares); two forks: the refill is no child of this process, which may wait for its
/// own.
fn refill_in_background(root: &StateRoot, size: usize) {
    let dir = folder(root);
    let lock = lock_file(&dir).or_else(|_| {
        fs::create_dir_all(&dir)?;
        lock_file(&dir)
    });
    let Ok(lock) = lock else {
        return;
    };
    if lock.try_lock().is_err() {
        return;
    }
    match feather_sys::process::fork() {
        Ok(Some(child)) => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Ok(None) => {
            if let Ok(None) = feather_sys::process::fork() {
                detach();
                refill(root, size, lock);
            }
            // Without the run's exit handlers and destructors, which are the run's.
            std::process::exit(0);
        }
        Err(_) => {}
    }
}

/// A session of its own, stdio on /dev/null: the run's caller (a shell reading its output)
/// must not wait for the refill.
fn detach() {
    let _ = nix::unistd::setsid();
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// Fills the pool up to `size`, holding `lock` (the pool's refill lock, taken), in the idle
/// scheduling and I/O classes (the VMs it starts inherit them until claimed), a VM only once
/// no run has started for [`QUIET`], none while the pool is drained. VMs made by another
/// feather, and VMs whose making was cut short (a refill killed), are removed first.
fn refill(root: &StateRoot, size: usize, mut lock: File) {
    let _ = feather_sys::sched::make_idle();
    let dir = folder(root);
    // Who refills, for whoever looks (a test that kills it).
    let _ = lock
        .set_len(0)
        .and_then(|()| write!(lock, "{}", std::process::id()));
    let version = version();
    loop {
        wait_for_quiet(root);
        if dir.join("draining").exists() {
            return;
        }
        let ready = match kept_or_discarded(root, &version) {
            Ok(ready) => ready,
            Err(_) => return,
        };
        if ready >= size || make_one(root, &version).is_err() {
            return;
        }
    }
}

/// `<run>/pool/refill.lock`, opened without emptying it (it names the refill holding it).
fn lock_file(dir: &std::path::Path) -> std::io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("refill.lock"))
}

/// Sleeps until no `run --rm` has started for [`QUIET`], or the pool is being drained.
fn wait_for_quiet(root: &StateRoot) {
    let mark = folder(root).join("last-run");
    let draining = folder(root).join("draining");
    while !draining.exists() {
        let since = fs::metadata(&mark)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .unwrap_or(QUIET);
        if since >= QUIET {
            return;
        }
        std::thread::sleep(QUIET - since);
    }
}

/// Removes the VMs made ahead that will never be claimed (another feather's, or one whose
/// refill died before it ran); returns how many are ready or on their way.
fn kept_or_discarded(root: &StateRoot, version: &str) -> crate::Result<usize> {
    let mut kept = 0;
    for vm in root.pooled()? {
        let ours = vm.pooled_version().as_deref() == Some(version);
        if ours && vm.keeper_alive()? {
            kept += 1;
        } else {
            discard(root, &vm);
        }
    }
    Ok(kept)
}

/// Removes a VM made ahead, running or not, and waits for its keeper's end: a throw-away
/// VM's keeper removes its folder before its network is gone, and the root's bridge must be
/// free of it when the drain returns.
fn discard(root: &StateRoot, vm: &VmDir) {
    let keeper = vm.open_keeper_lock();
    let _ = lifecycle::remove(root, vm.name(), true);
    if let Ok(keeper) = keeper {
        let _ = keeper.lock();
    }
}

/// Makes and starts one VM ahead: the default `run --rm`'s configuration, hidden from `ls`
/// from its first moment.
fn make_one(root: &StateRoot, version: &str) -> crate::Result<()> {
    let name: VmName = format!("{PREFIX}{}", lifecycle::new_id()).parse()?;
    let options = CreateOptions {
        ephemeral: true,
        pooled: Some(version.to_owned()),
        ..CreateRequest::default().options()?
    };
    lifecycle::create(root, &name, &options)?;
    lifecycle::start(root, &name).inspect_err(|_| {
        let _ = lifecycle::remove(root, &name, true);
    })
}

/// Empties the pool: the refill under way stops (after the VM it is making, if any), every
/// VM made ahead is removed. Returns how many were. Any command that removes a state root
/// calls this first.
pub fn drain(root: &StateRoot) -> crate::Result<usize> {
    let dir = folder(root);
    if !dir.exists() && root.pooled()?.is_empty() {
        return Ok(0);
    }
    fs::create_dir_all(&dir).at(&dir)?;
    let flag = dir.join("draining");
    File::create(&flag).at(&flag)?;
    let lock = lock_file(&dir).at(dir.join("refill.lock"))?;
    // A refill sees the flag within QUIET, or once the VM it is making has started.
    let deadline = Instant::now() + Duration::from_secs(60);
    while lock.try_lock().is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pooled = root.pooled()?;
    for vm in &pooled {
        await_boot(vm);
        discard(root, vm);
    }
    // Nothing of the pool is left: a root whose VMs are all gone can be removed.
    for file in ["last-run", "refill.lock", "draining"] {
        let _ = fs::remove_file(dir.join(file));
    }
    let _ = fs::remove_dir(&dir);
    Ok(pooled.len())
}

/// Waits (a while) for the keeper of a VM made ahead that is still booting it (its refill was
/// killed meanwhile) to have it up or to have failed: a removal must not race its boot.
fn await_boot(vm: &VmDir) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let booting = || {
        vm.read_state()
            .is_ok_and(|state| state.status == VmStatus::Created)
            && vm.keeper_alive().unwrap_or(false)
    };
    while booting() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

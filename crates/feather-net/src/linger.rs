//! A root's bridge and tables outlive its last throw-away VM by a while ([`period`], five
//! minutes unless `FEATHER_NETWORK_LINGER` says otherwise): the teardown of a `run --rm` handed
//! over to `feather-keeper __finish` leaves them, so that the next throw-away VM — the next
//! command typed, or the next of a script's loop — finds them made instead of making them
//! again. Making them costs most of a private network's time: a bridge, and an `nft` run whose
//! exit waits for an RCU grace period (nf_tables flushes its destroy work when a netfilter
//! socket closes, ~15 ms on an idle host). With them stays the root's pool of namespaces made
//! ahead (pool.rs). They hold no VM's entries, and nothing stays for good:
//!
//! ```text
//! <root>/network-linger.wait   locked by the one process that lingers; its mtime is when the
//!                              root's last VM ended (each later end moves it on)
//! <root>/network-linger.lock   held while a process removes the network if unused
//! ```
//!
//! - "Unless a VM uses them", everywhere below, is one look ([`in_use`]): a VM's port on
//!   the bridge, a pooled namespace claimed, or a live keeper's marker of an attached network
//!   (attached.rs), which covers a restore between its join of the root's network and CRIU's
//!   making of the VM's veth.
//! - The finisher of a VM's teardown takes the wait file ([`begin`]) before it removes the VM's
//!   folder, which commands that wait for teardowns wait for: at every moment one of the two
//!   files says that something may be left.
//! - The lingering process waits until the wait file's mtime has not moved for a [`period`]
//!   (timed on the monotonic clock), takes the removal lock, unlinks the wait file, and removes
//!   the bridge, tables and pool unless a VM uses them. A VM that ends while another process
//!   lingers moves the mtime on and leaves; if that process had unlinked the file already (its
//!   look may come before this VM's port was gone), it lingers itself.
//! - `feather network down` ([`end`]) unlinks the wait file, which wakes the lingering process
//!   (it watches the file), waits for it to end (at most [`LINGERER_PATIENCE`], not at all for
//!   a stopped one: [`Ended::Lingering`]), and removes what is unused, waiting for the refill
//!   and network locks [`DOWN_PATIENCE`] at most. A lingering
//!   process whose wait file another process unlinked (this, or the root's folder being
//!   removed) makes and removes nothing in the root: a file made there while `rm -rf` removes
//!   the folder keeps the folder from going.
//! - A lingering process that died leaves a file unlocked: the next command removes what is
//!   unused ([`settle`]). No command waits for a live one: the network it keeps is no VM's.
//! - A kept VM's keeper whose VM was the root's last user of its network takes the removal
//!   lock before it records the VM's stop ([`claim_if_unused`]), and removes the network after
//!   its answer ([`Claim::remove`]): killed in between, it leaves the lock's file unlocked, and
//!   the next command removes what is unused, as after a lingering process that died. A
//!   keeper that did not claim looks again after its answer, its own veth gone
//!   ([`remove_if_last`]): of two VMs stopping at once, each saw the other's port.
//! - Nothing that holds the removal lock waits without an end for another lock (the pool's
//!   refill, the root's network lock): past [`PATIENCE`] it leaves the removal to the next
//!   command, the lock's file in place. The locks are taken in one order: the removal lock,
//!   the refill lock (taken even where the pool has no folder yet, so that no refill begins
//!   beside the removal and reads the settings before they go: pool.rs), the network lock.
//!   Nor does a command wait for the removal lock past [`REMOVAL_PATIENCE`] (a few times
//!   that, each time after a whole removal by someone else): a holder that does not go on
//!   (stopped by a signal) holds up every command of the root that long at most.
//! - A root's folder removed by hand while its network lingers leaves the network, which only
//!   its host-wide claim ties to the root: removed_roots.rs removes it later. Take it down
//!   first (`feather network down`).

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use feather_core::lock_holder::IfStopped;
use feather_core::StateRoot;

use crate::netlink::{index_of, Netlink};
use crate::settings::{is_linked, lock_as_named_in_three_rounds, open_lock_file, RootNetwork};
use crate::{attached, firewall, pool};

/// The environment variable that sets how long, in seconds, the root's network waits for a
/// next VM after its last throw-away VM.
pub const PERIOD_VARIABLE: &str = "FEATHER_NETWORK_LINGER";

/// How long the root's network waits when [`PERIOD_VARIABLE`] does not say.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(300);

/// A pool entry taken this recently says VMs are still coming: the pool and the bridge stay.
const TAKEN_RECENTLY: Duration = Duration::from_millis(150);

/// `<root>/network-linger.wait`: present, and locked, while a process lingers.
const WAIT_FILE: &str = "network-linger.wait";

/// `<root>/network-linger.lock`: held while the unused network is removed; left unlocked by a
/// removal that did not finish, which the next command finishes.
const LOCK_FILE: &str = "network-linger.lock";

/// How long a removal of the root's network waits for a lock another process holds (a refill
/// of the pool, a VM's start taking the root's network lock), holding the removal lock that
/// every command waits for ([`settle`]). Past it, the removal is left to the next command.
const PATIENCE: Duration = Duration::from_secs(2);

/// How long `network down` ([`end`]) waits for the pool's refill lock and the root's network
/// lock, one deadline for both, holding the removal lock (with [`PATIENCE`] for VMs still
/// coming before: ~32 s in all): a refill makes namespaces for seconds on a host under load,
/// and the admin asked for the network to go. A holder seen stopped is not waited for
/// ([`Ended::HeldStopped`]). Other commands wait [`REMOVAL_PATIENCE`] at most for the removal
/// lock meanwhile, then go on without it. Past it, the network stays, told as used (a refill
/// or a VM's start kept it); the next command or `network down` removes it.
pub const DOWN_PATIENCE: Duration = Duration::from_secs(30);

/// How long a command waits for a removal under way ([`settle`], [`end`]) before it goes on
/// without it.
const REMOVAL_PATIENCE: Duration = Duration::from_secs(5);

/// How long the root's network waits for a next VM: [`PERIOD_VARIABLE`] (seconds, fractions
/// allowed; unset or empty: [`DEFAULT_PERIOD`]).
pub fn period() -> crate::error::Result<Duration> {
    let value = std::env::var(PERIOD_VARIABLE).unwrap_or_default();
    if value.trim().is_empty() {
        return Ok(DEFAULT_PERIOD);
    }
    value
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| {
            crate::error::NetError::Invalid(format!(
                "{PERIOD_VARIABLE}={value:?} is not a number of seconds (how long the root's \
                 network waits for a next VM after its last one; unset, {} s)",
                DEFAULT_PERIOD.as_secs()
            ))
        })
}

/// The root's linger, begun by a throw-away VM's finisher once the VM's network is gone from
/// the bridge, before the VM's folder goes ([`begin`]).
pub struct Lingering<'a> {
    root: &'a StateRoot,
    /// The wait file, locked: this process lingers. None: another one does, and was told of
    /// this VM's end.
    waiting: Option<File>,
}

/// Moves the root's linger on to now: takes the wait file if no process lingers, else tells
/// the one that does.
pub fn begin(root: &StateRoot) -> Lingering<'_> {
    let path = root.dir().join(WAIT_FILE);
    loop {
        let Ok(file) = open_lock_file(&path) else {
            // Nothing can linger: the network goes now, unless a VM uses it.
            remove_if_unused(root);
            return Lingering {
                root,
                waiting: None,
            };
        };
        let _ = file.set_modified(SystemTime::now());
        let locked = file.try_lock().is_ok();
        // Unlinked meanwhile (by a lingering process at its end, `settle` or `end`): its look
        // may have come before this VM's port was gone. Take a new one.
        if !is_linked(&path, &file) {
            continue;
        }
        let waiting = locked.then_some(file);
        return Lingering { root, waiting };
    }
}

impl Lingering<'_> {
    /// Lingers, if this process does: waits until the root's last VM ended `period` ago, then
    /// removes the root's network unless a VM uses it. The last thing its process does: it
    /// keeps the wait file's lock until it exits, so that [`end`], which waits for the lock,
    /// returns only once the process is gone.
    pub fn hold(self, period: Duration) {
        let Some(file) = self.waiting else {
            return;
        };
        let path = self.root.dir().join(WAIT_FILE);
        // Unlinked by another process, this one makes and removes nothing: `end` removes what
        // is unused itself once this process is gone, and a root's folder being removed (whose
        // `rm -rf` unlinks the wait file before the folder goes) must not get a file made in
        // it: the removal lock made then kept the folder from going (ENOTEMPTY), and its unlink
        // after left the folder there, empty.
        if wait_out(&path, &file, period) == Waited::PeriodOver {
            end_linger(self.root, &path, &file);
        }
        std::mem::forget(file);
    }
}

/// How the wait for a next VM ended.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    /// No VM ended for the whole period: the lingering process removes the network.
    PeriodOver,
    /// The wait file was unlinked by another process ([`end`], or the root's folder removed).
    Unlinked,
}

/// Waits until the wait file's mtime has stayed the same for `period`, or the file is unlinked
/// (by [`end`], or with the root's folder).
fn wait_out(path: &Path, file: &File, period: Duration) -> Waited {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    // Touching the file (a later VM's end) and unlinking it both change its attributes.
    let watch = Inotify::init(InitFlags::IN_CLOEXEC).and_then(|inotify| {
        inotify
            .add_watch(path, AddWatchFlags::IN_ATTRIB)
            .map(|_| inotify)
    });
    let mut last_end = None;
    let mut since = Instant::now();
    loop {
        // fstat of a file this process holds open fails on no live file; if it ever did, the
        // file can tell nothing more, so this process leaves the root as it finds it.
        let Ok(meta) = file.metadata() else {
            return Waited::Unlinked;
        };
        if meta.nlink() == 0 {
            return Waited::Unlinked;
        }
        // Timed on the monotonic clock from when this process saw the mtime move: setting the
        // wall clock neither ends nor stretches the wait.
        let ended = meta.modified().ok();
        if ended != last_end {
            last_end = ended;
            since = Instant::now();
        }
        let Some(left) = period.checked_sub(since.elapsed()).filter(|l| !l.is_zero()) else {
            return Waited::PeriodOver;
        };
        match &watch {
            Ok(inotify) => wait_for_change(inotify, left),
            // Without inotify: in steps, so that an unlink is noticed within one.
            Err(_) => std::thread::sleep(left.min(Duration::from_secs(1))),
        }
    }
}

/// Waits until `inotify` has an event (then reads them) or `timeout` has passed.
fn wait_for_change(inotify: &nix::sys::inotify::Inotify, timeout: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    // Rounded up: a timeout of 0 ms would spin until the period's end.
    let millis = timeout.as_millis().max(1);
    let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, timeout).is_ok_and(|ready| ready > 0) {
        let _ = inotify.read_events();
    }
}

/// What `feather network down` ([`end`]) did with the root's network.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Gone, or there was none.
    Down,
    /// It stays: a VM uses it (or a VM's start held the root's network lock, or a refill of
    /// its pool the refill lock, past [`DOWN_PATIENCE`]).
    Used,
    /// It stays: another process held the removal lock all through [`REMOVAL_PATIENCE`]
    /// (removing it, or stopped by a signal while it did).
    Busy,
    /// It stays, untouched: the process that lingers did not end within [`LINGERER_PATIENCE`]
    /// of its wait file's unlink, or was seen stopped (SIGSTOP, Ctrl-Z: it would not end until
    /// let go on). The holder of its wait file's lock, as `/proc/locks` told.
    Lingering(Option<feather_core::lock_holder::Holder>),
    /// It stays: the holder of the pool's refill lock or the root's network lock (`lock`) was
    /// seen stopped (SIGSTOP, Ctrl-Z), and would hold it until let go on.
    HeldStopped {
        lock: std::path::PathBuf,
        holder: feather_core::lock_holder::Holder,
    },
}

/// How long `network down` ([`end`]) waits for the process that lingers to end once woken
/// (it makes and removes nothing then: milliseconds, seconds on a host under load).
const LINGERER_PATIENCE: Duration = Duration::from_secs(30);

/// `feather network down`: ends the root's lingering, waiting (at most [`LINGERER_PATIENCE`],
/// not at all for a stopped one) for the process that lingers, and removes the root's bridge,
/// tables and pool unless a VM uses them.
pub fn end(root: &StateRoot) -> Ended {
    let path = root.dir().join(WAIT_FILE);
    if let Ok(file) = File::open(&path) {
        let _ = fs::remove_file(&path);
        // The unlink wakes the lingering process, which ends without removing anything (this
        // command does, below); it holds the lock until it is gone: wait for it.
        if let Err(not_ended) = lingerer_ended(&file) {
            return not_ended;
        }
    }
    let taken = remove_if_unused_within(root, DOWN_PATIENCE);
    let stays = RootNetwork::load(root.dir())
        .ok()
        .flatten()
        .is_some_and(|network| index_of(&network.bridge).is_some());
    match (stays, taken) {
        (false, _) => Ended::Down,
        (true, true) => match stopped_holder(root.dir()) {
            Some((lock, holder)) => Ended::HeldStopped { lock, holder },
            None => Ended::Used,
        },
        (true, false) => Ended::Busy,
    }
}

/// A stopped holder (SIGSTOP, Ctrl-Z) of the pool's refill lock or the root's network lock, as
/// `/proc/locks` tells now, with that lock's path: what a removal that gave up on one says.
fn stopped_holder(
    root_dir: &Path,
) -> Option<(std::path::PathBuf, feather_core::lock_holder::Holder)> {
    [
        pool::refill_lock_path(root_dir),
        root_dir.join("network.lock"),
    ]
    .into_iter()
    .find_map(|lock| {
        let holder = feather_core::lock_holder::holder(&lock).filter(|h| h.stopped)?;
        Some((lock, holder))
    })
}

/// Waits for the lock of the unlinked wait `file`, held by the process that lingers until it
/// ends: [`Ended::Lingering`] where it did not end in time, or is stopped.
fn lingerer_ended(file: &File) -> Result<(), Ended> {
    use feather_core::lock_holder::{IfStopped, NotTaken};
    let deadline = Instant::now() + LINGERER_PATIENCE;
    match feather_core::lock_holder::lock_within(file, deadline, IfStopped::GiveUp) {
        // A file that cannot be locked (no flock on its filesystem) tells nothing: as before.
        Ok(()) | Err(NotTaken::Failed(_)) => Ok(()),
        Err(NotTaken::HeldPast(holder)) => Err(Ended::Lingering(holder)),
        Err(NotTaken::HeldStopped(holder)) => Err(Ended::Lingering(Some(holder))),
    }
}

/// A kept VM's keeper's claim on the removal of its root's network ([`claim_if_unused`]):
/// the removal lock, held from before the VM's stop is recorded until the network is gone
/// ([`Claim::remove`]). A keeper killed in between leaves the lock's file unlocked, which the
/// root's next command takes for a removal left undone ([`settle`]).
pub struct Claim {
    root: StateRoot,
    removing: File,
}

/// For a kept VM's keeper, before it records the VM's stop: the removal of the root's bridge,
/// tables and pool claimed if the VM (whose bridge port is `own_port`) was their last user,
/// as far as a look without any lock can tell: the bridge is there, no other VM uses it
/// ([`used_by_a_vm`]), and no process lingers for the next throw-away VM (whose end removes
/// them). None otherwise, and when another process holds the removal lock (it removes what is
/// unused).
pub fn claim_if_unused(root: &StateRoot, own_port: &str) -> Option<Claim> {
    if root.dir().join(WAIT_FILE).exists() {
        return None;
    }
    let network = RootNetwork::load(root.dir()).ok().flatten()?;
    if used_by_a_vm(root, &network, Some(own_port))? {
        return None;
    }
    let removing = take_removal_lock(root.dir(), |file| file.try_lock().is_ok())?;
    Some(Claim {
        root: root.clone(),
        removing,
    })
}

/// Whether a VM other than the one whose bridge port is `own_port` uses the root's network, as
/// far as a look without any lock can tell ([`in_use`]). None when the bridge is not there.
fn used_by_a_vm(root: &StateRoot, network: &RootNetwork, own_port: Option<&str>) -> Option<bool> {
    let on_bridge = pool::vm_port_on_bridge(network, own_port)?;
    Some(on_bridge || used_off_the_bridge(root, network, own_port))
}

/// Whether a VM other than the one whose bridge port is `own_port` uses the root's network: a
/// VM's port on the bridge, a pooled namespace claimed, or a live VM's marker of an attached
/// network, written before its veth is made (a restore's, whose veth CRIU makes after the
/// restore let go of the root's network lock: see attached.rs). The look of every removal of
/// the root's bridge, tables and pool, under the root's network lock ([`remove_unused`], and
/// `clean_up` in lib.rs); [`used_by_a_vm`] is the same look before any lock.
pub(crate) fn in_use(root: &StateRoot, network: &RootNetwork, own_port: Option<&str>) -> bool {
    pool::vm_port_on_bridge(network, own_port) == Some(true)
        || used_off_the_bridge(root, network, own_port)
}

/// A user of the root's network with no port on the bridge (yet): a pooled namespace claimed,
/// or a live VM's marker.
fn used_off_the_bridge(root: &StateRoot, network: &RootNetwork, own_port: Option<&str>) -> bool {
    pool::has_claimed(network.root()) || attached::in_use(root, own_port)
}

/// For a kept VM's keeper that did not claim the removal of its root's network
/// ([`claim_if_unused`]), after its answer, its own veth deleted: the network goes if no VM
/// uses it now. Two VMs stopping together each saw the other's port before either veth was
/// deleted, and neither claimed: the one whose veth goes last sees no other port here. A
/// removal under way is waited for (at most [`REMOVAL_PATIENCE`]): its look under the network
/// lock may have come before this VM's veth went. Beside a VM's port it leaves at once.
pub fn remove_if_last(root: &StateRoot) {
    if root.dir().join(WAIT_FILE).exists() {
        return;
    }
    let Some(network) = RootNetwork::load(root.dir()).ok().flatten() else {
        return;
    };
    if used_by_a_vm(root, &network, None) == Some(false) {
        remove_if_unused(root);
    }
}

impl Claim {
    /// The claimed removal: the bridge, tables and pool go unless a VM took them up
    /// meanwhile (looked at again under the root's network lock). Waits for no other lock
    /// past [`PATIENCE`]: the removal is then left to the root's next command.
    pub fn remove(self) {
        remove_under(&self.root, self.removing);
    }
}

/// After a kept VM's `rm`: a keeper killed before its stop was recorded leaves its root's
/// bridge, tables and pool, which go unless a VM uses them, or a process lingers for the next
/// throw-away VM, whose end removes them. A removal under way is left to whoever holds it.
pub fn remove_unless_used_or_lingering(root: &StateRoot) {
    if root.dir().join(WAIT_FILE).exists() {
        return;
    }
    if let Some(removing) = take_removal_lock(root.dir(), |file| file.try_lock().is_ok()) {
        remove_under(root, removing);
    }
}

/// Before a command: a lingering process that died leaves the bridge and tables (and the
/// pool filled while it lingered), which are removed here unless a VM uses them; with `wait`,
/// a removal under way is waited for, and a pool left without a lingering process (its VM ran
/// past the linger, or a refill was killed) is looked at too. A live lingering process is not
/// waited for.
pub fn settle(root: &StateRoot, wait: bool) {
    let waiting = root.dir().join(WAIT_FILE);
    if let Ok(file) = File::open(&waiting) {
        if file.try_lock().is_ok() && is_linked(&waiting, &file) {
            end_linger(root, &waiting, &file);
        }
        return;
    }
    let removing = root.dir().join(LOCK_FILE);
    let orphaned_pool = wait && pool::has_entries(root.dir());
    if !removing.exists() && !orphaned_pool {
        return;
    }
    if wait || File::open(&removing).is_ok_and(|file| file.try_lock().is_ok()) {
        remove_if_unused(root);
    }
}

/// Fills the root's pool ([`pool::refill`]) when VMs come one after another: other teardowns
/// are under way (`others_finishing`), the root's network lingers for a VM that ended, or a
/// VM is on the bridge (which then stays).
pub fn refill_pool_if_in_demand(root_dir: &Path, others_finishing: bool) {
    if others_finishing || root_dir.join(WAIT_FILE).exists() || pool::vm_on_bridge(root_dir) {
        pool::refill(root_dir);
    }
}

/// Unlinks `path` if it still names `file` (locked by the caller).
fn let_go(path: &Path, file: &File) {
    if is_linked(path, file) {
        let _ = fs::remove_file(path);
    }
}

/// Holding the wait file `file` (at `path`): takes the removal lock, lets the wait file go, and
/// removes the network unless a VM uses it. The removal lock before the wait file goes: a crash
/// leaves one or the other.
fn end_linger(root: &StateRoot, path: &Path, file: &File) {
    let removing = lock_removal(root.dir());
    let_go(path, file);
    if let Some(removing) = removing {
        remove_under(root, removing);
    }
}

/// The root's removal lock, waited for at most [`REMOVAL_PATIENCE`]; None when its file
/// cannot be made, or another process held it all that time (it removes what is unused, or
/// leaves its file for the next command).
fn lock_removal(root_dir: &Path) -> Option<File> {
    let deadline = Instant::now() + REMOVAL_PATIENCE;
    take_removal_lock(root_dir, |file| {
        crate::settings::lock_within(file, deadline, IfStopped::WaitOn)
    })
}

/// The root's removal lock's file, opened (made if missing) and locked by `lock`, which says
/// whether it took the lock. A removal unlinks the file last, holding its lock: the lock
/// counts only on the file its path still names ([`lock_as_named_in_three_rounds`]).
fn take_removal_lock(root_dir: &Path, lock: impl Fn(&File) -> bool) -> Option<File> {
    let path = root_dir.join(LOCK_FILE);
    lock_as_named_in_three_rounds(&path, || open_lock_file(&path), lock)
        .ok()
        .flatten()
}

/// Under the root's removal lock: [`remove_under`]. Whether the lock was taken.
fn remove_if_unused(root: &StateRoot) -> bool {
    remove_if_unused_within(root, PATIENCE)
}

/// [`remove_if_unused`], waiting at most `patience` for the refill and network locks.
fn remove_if_unused_within(root: &StateRoot, patience: Duration) -> bool {
    let removing = lock_removal(root.dir());
    let taken = removing.is_some();
    if let Some(removing) = removing {
        remove_under_within(root, removing, patience);
    }
    taken
}

/// Holding the root's removal lock (`removing`), then the pool's refill lock and the root's
/// network lock: the bridge, its tables and the pool go if no VM uses them ([`in_use`]).
/// The lock's file goes last; it stays, for the next command to finish the removal, when the
/// refill or the network lock stayed taken past [`PATIENCE`].
fn remove_under(root: &StateRoot, removing: File) {
    remove_under_within(root, removing, PATIENCE)
}

/// [`remove_under`], waiting for VMs still coming at most [`PATIENCE`], then for the refill
/// and network locks `patience` at most in all (one deadline for both, and for each file
/// [`pool::with_refill_lock_within`] takes anew), and not at all for a holder seen stopped
/// (SIGSTOP, Ctrl-Z), which would keep the removal lock, and every command that waits for it,
/// waiting ([`stopped_holder`] names it).
fn remove_under_within(root: &StateRoot, removing: File, patience: Duration) {
    let root_dir = root.dir();
    if let Ok(Some(network)) = RootNetwork::load(root_dir) {
        // A loop of `run --rm` takes pooled namespaces one after another, and between two of
        // them no VM may be on the bridge: the pool and the bridge stay while VMs keep coming.
        // Still coming after [`PATIENCE`], the network is theirs, and their ends remove it.
        let deadline = Instant::now() + PATIENCE;
        while let Some(age) = pool::since_last_taken(root_dir).filter(|age| *age < TAKEN_RECENTLY) {
            if Instant::now() >= deadline {
                let_go(&root_dir.join(LOCK_FILE), &removing);
                return;
            }
            std::thread::sleep(TAKEN_RECENTLY - age);
        }
        let deadline = Instant::now() + patience;
        let done = pool::with_refill_lock_within(root_dir, deadline, || {
            let Some(_lock) = network.lock_within(deadline) else {
                return false;
            };
            // What a killed refill or keeper left goes even while VMs use the bridge.
            pool::clean_stale_locked(&network, false);
            remove_unused(root, &network);
            true
        });
        if done != Some(true) {
            return;
        }
    } else {
        pool::remove_folder_left(root_dir, PATIENCE);
    }
    let_go(&root_dir.join(LOCK_FILE), &removing);
}

/// Holding the root's network lock: the bridge, tables and pool, if no VM uses them.
fn remove_unused(root: &StateRoot, network: &RootNetwork) {
    if let Some(bridge) = index_of(&network.bridge) {
        if in_use(root, network, None) {
            return;
        }
        remove_network(network, bridge);
    } else {
        // No bridge: the pool's pairs went with it; their folders and leases go now.
        pool::drain(network);
    }
    network.forget_if_unused();
}

/// The pool, both tables and the bridge (index `bridge`).
fn remove_network(network: &RootNetwork, bridge: u32) {
    pool::drain(network);
    firewall::delete_tables(network);
    if let Ok(mut netlink) = Netlink::open() {
        let _ = netlink.delete_link(bridge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    /// A removal unlinks the lock's file last, still holding its lock. A process waiting for
    /// that lock on the same file took it on the unlinked file: a removal claimed that no
    /// other command could see, since the next one makes a new file and locks that. The lock
    /// is taken again on the file the path names.
    #[test]
    fn the_removal_lock_is_taken_on_the_file_its_path_names() {
        let root_scratch = feather_testkit::ScratchDir::new("removal-lock");
        let root = root_scratch.0.clone();
        fs::create_dir_all(&root).unwrap();
        let path = root.join(LOCK_FILE);
        let holder = open_lock_file(&path).unwrap();
        holder.lock().unwrap();
        let waiting = std::thread::spawn({
            let root = root.clone();
            move || lock_removal(&root)
        });
        // The waiter has opened the file (two descriptors of this process name it) and waits
        // for its lock (lock_within polls every 10 ms).
        let opened = || {
            fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|fd| fs::read_link(fd.path()).is_ok_and(|target| target == path))
                .count()
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while opened() < 2 {
            assert!(
                Instant::now() < deadline,
                "the waiter never opened the lock's file"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let_go(&path, &holder);
        drop(holder);
        let taken = waiting.join().unwrap().expect("the lock is taken");
        assert!(
            is_linked(&path, &taken),
            "the lock is held on an unlinked file"
        );
        assert!(
            File::open(&path).unwrap().try_lock().is_err(),
            "a new opener of the path takes the lock beside it"
        );
    }

    /// `rm -rf` of a root whose network lingers unlinks the wait file before the root's folder
    /// goes. The lingering process, woken by it, made the removal lock in the folder (then
    /// unlinked it): made while `rm -rf` ran, it kept the folder from going, and an empty
    /// folder was left (a test's root, in CI).
    #[test]
    fn a_linger_ended_by_its_root_s_removal_makes_nothing_in_the_root() {
        let root_scratch = feather_testkit::ScratchDir::new("linger-removed");
        let root = root_scratch.0.clone();
        fs::create_dir_all(&root).unwrap();
        let state_root = StateRoot::new(Some(root.clone()));
        let lingering = begin(&state_root);
        assert!(lingering.waiting.is_some(), "this process lingers");
        // Everything made in the root from here on is queued here.
        let made = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
        made.add_watch(&root, AddWatchFlags::IN_CREATE).unwrap();
        std::thread::scope(|scope| {
            let lingerer = scope.spawn(|| lingering.hold(DEFAULT_PERIOD));
            // What `rm -rf` of the root does first: the wait file goes.
            fs::remove_file(root.join(WAIT_FILE)).unwrap();
            lingerer.join().unwrap();
        });
        let names: Vec<_> = made
            .read_events()
            .unwrap_or_default()
            .into_iter()
            .map(|event| event.name)
            .collect();
        assert!(names.is_empty(), "made in the removed root: {names:?}");
        fs::remove_dir(&root).unwrap();
    }
}

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
//! - The lingering process waits until the wait file's mtime is a [`period`] old, then unlinks
//!   the file and removes the bridge, tables and pool unless a VM uses them. A VM that ends
//!   while another process lingers moves the mtime on and leaves; if that process had already
//!   unlinked the file, it lingers itself (its port may have been on the bridge at the other's
//!   look).
//! - `feather network down` ([`end`]) does not wait: it unlinks the file, which wakes the
//!   lingering process (it watches the file), waits for it to end, and removes what is unused.
//! - A lingering process that died leaves the file unlocked: the next command removes what is
//!   unused ([`settle`]). No command waits for a live one: the network it keeps is no VM's.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::netlink::{index_of, Netlink};
use crate::settings::RootNetwork;
use crate::{firewall, pool};

/// The environment variable that sets how long, in seconds, the root's network waits for a
/// next VM after its last throw-away VM.
pub const PERIOD_VARIABLE: &str = "FEATHER_NETWORK_LINGER";

/// How long the root's network waits when [`PERIOD_VARIABLE`] does not say.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(300);

/// A pool entry taken this recently says VMs are still coming: the pool and the bridge stay.
const TAKEN_RECENTLY: Duration = Duration::from_millis(150);

/// `<root>/network-linger.wait`: present, and locked, while a process lingers.
const WAIT_FILE: &str = "network-linger.wait";

/// `<root>/network-linger.lock`: held while the unused network is removed.
const LOCK_FILE: &str = "network-linger.lock";

/// How long the root's network waits for a next VM: [`PERIOD_VARIABLE`] (seconds, fractions
/// allowed), or [`DEFAULT_PERIOD`].
pub fn period() -> crate::error::Result<Duration> {
    match std::env::var(PERIOD_VARIABLE) {
        Err(_) => Ok(DEFAULT_PERIOD),
        Ok(value) => value
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .ok_or_else(|| {
                crate::error::NetError::Invalid(format!(
                    "{PERIOD_VARIABLE}={value:?} is not a number of seconds (how long the \
                     root's network waits for a next VM after its last one; unset, {} s)",
                    DEFAULT_PERIOD.as_secs()
                ))
            }),
    }
}

/// After a throw-away VM's teardown: lingers for the root's network ([`period`] after the last
/// VM's end), then removes it unless a VM uses it; or, when another process lingers already,
/// moves its end on and returns. The last thing its process does: a lingering process keeps
/// the wait file's lock until it exits, so that [`end`], which waits for the lock, returns only
/// once the process is gone.
pub fn hold(root_dir: &Path, period: Duration) {
    let path = root_dir.join(WAIT_FILE);
    loop {
        let Ok(file) = open(&path) else {
            remove_if_unused(root_dir);
            return;
        };
        let _ = file.set_modified(SystemTime::now());
        if file.try_lock().is_ok() {
            // Ours unless a process that found it unlocked (settle, end) unlinked it.
            if is_linked(&path, &file) {
                wait_out(&path, &file, period);
                let_go(&path, &file);
                remove_if_unused(root_dir);
                std::mem::forget(file);
                return;
            }
        } else if is_linked(&path, &file) {
            // The lingering process has not looked yet: its look comes after this VM's end.
            return;
        }
    }
}

/// Waits until the wait file is `period` older than its mtime, or unlinked (by [`end`]).
fn wait_out(path: &Path, file: &File, period: Duration) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    // Touching the file (a later VM's end) and unlinking it both change its attributes.
    let watch = Inotify::init(InitFlags::IN_CLOEXEC).and_then(|inotify| {
        inotify
            .add_watch(path, AddWatchFlags::IN_ATTRIB)
            .map(|_| inotify)
    });
    loop {
        let Ok(meta) = file.metadata() else {
            return;
        };
        if meta.nlink() == 0 {
            return;
        }
        let ended = meta.modified().unwrap_or_else(|_| SystemTime::now());
        // An mtime in the future (the clock set back) counts from now.
        let waited = ended.elapsed().unwrap_or_default();
        let Some(left) = period.checked_sub(waited).filter(|left| !left.is_zero()) else {
            return;
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

/// `feather network down`: ends the root's lingering, waiting for the process that lingers,
/// and removes the root's bridge, tables and pool unless a VM uses them. Whether a VM does
/// (the network then stays).
pub fn end(root_dir: &Path) -> bool {
    let path = root_dir.join(WAIT_FILE);
    if let Ok(file) = File::open(&path) {
        let _ = fs::remove_file(&path);
        // The lingering process holds the lock until it has looked: wait for it.
        let _ = file.lock();
    }
    remove_if_unused(root_dir);
    RootNetwork::load(root_dir)
        .ok()
        .flatten()
        .is_some_and(|network| index_of(&network.bridge).is_some())
}

/// Before a command: a lingering process that died leaves the bridge and tables (and the
/// pool filled while it lingered), which are removed here unless a VM uses them; with `wait`,
/// a removal under way is waited for, and a pool left without a lingering process (its VM ran
/// past the linger, or a refill was killed) is looked at too. A live lingering process is not
/// waited for.
pub fn settle(root_dir: &Path, wait: bool) {
    let waiting = root_dir.join(WAIT_FILE);
    if let Ok(file) = File::open(&waiting) {
        if file.try_lock().is_ok() && is_linked(&waiting, &file) {
            let_go(&waiting, &file);
            remove_if_unused(root_dir);
        }
        return;
    }
    let removing = root_dir.join(LOCK_FILE);
    let orphaned_pool = wait && pool::has_entries(root_dir);
    if !removing.exists() && !orphaned_pool {
        return;
    }
    if wait || File::open(&removing).is_ok_and(|file| file.try_lock().is_ok()) {
        remove_if_unused(root_dir);
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

fn open(path: &Path) -> std::io::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Whether `path` still names `file`.
fn is_linked(path: &Path, file: &File) -> bool {
    let same = |a: &fs::Metadata, b: &fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    matches!((fs::metadata(path), file.metadata()), (Ok(now), Ok(ours)) if same(&now, &ours))
}

/// Unlinks `path` if it still names `file` (locked by the caller).
fn let_go(path: &Path, file: &File) {
    if is_linked(path, file) {
        let _ = fs::remove_file(path);
    }
}

/// Under the root's removal lock, the pool's refill lock and the root's network lock: the
/// bridge, its tables and the pool go if no VM's port is on the bridge and no VM claimed a
/// pooled namespace.
fn remove_if_unused(root_dir: &Path) {
    let Ok(Some(network)) = RootNetwork::load(root_dir) else {
        return;
    };
    let path = root_dir.join(LOCK_FILE);
    let Ok(removing) = open(&path) else {
        return;
    };
    if removing.lock().is_err() {
        return;
    }
    // A loop of `run --rm` takes pooled namespaces one after another, and between two of them
    // no VM may be on the bridge: the pool and the bridge stay while VMs keep coming.
    while let Some(age) = pool::since_last_taken(root_dir).filter(|age| *age < TAKEN_RECENTLY) {
        std::thread::sleep(TAKEN_RECENTLY - age);
    }
    pool::with_refill_lock(root_dir, || {
        // What a killed refill or keeper left goes even while VMs use the bridge.
        pool::clean_stale(&network);
        remove_unused(&network)
    });
    let_go(&path, &removing);
}

fn remove_unused(network: &RootNetwork) {
    let Ok(_lock) = network.lock() else {
        return;
    };
    if let Some(bridge) = index_of(&network.bridge) {
        let ports = Path::new("/sys/class/net")
            .join(&network.bridge)
            .join("brif");
        let taken = pool::taken_ports(network.root());
        let used = fs::read_dir(ports).is_ok_and(|mut entries| {
            entries.any(|port| {
                port.is_ok_and(|port| pool::is_vm_port(&port.file_name().to_string_lossy(), &taken))
            })
        });
        if used || pool::has_claimed(network.root()) {
            return;
        }
        pool::drain(network);
        firewall::delete_tables(network);
        if let Ok(mut netlink) = Netlink::open() {
            let _ = netlink.delete_link(bridge);
        }
    } else {
        // No bridge: the pool's pairs went with it; their folders and leases go now.
        pool::drain(network);
    }
    network.forget_if_unused();
}

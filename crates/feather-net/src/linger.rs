//! A root's bridge and tables outlive its last throw-away VM by a moment ([`LINGER`]): the
//! teardown of a `run --rm` handed over to `feather-keeper __finish` leaves them, so that the
//! next throw-away VM, in a script's loop, finds them made instead of making them again (a
//! bridge, an `nft` run, and their removal: most of a private network's cost), and with them
//! the root's pool of namespaces made ahead (pool.rs), which stays while VMs keep taking its
//! namespaces. Nothing stays for good: the process that lingers removes them (and the pool)
//! unless a VM uses them by then, and while it waits it holds the root's linger lock, which
//! every command that waits for teardowns waits for; one that finds the lock free and its file
//! still there knows the lingering process died, and removes what it left ([`settle`]).

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::netlink::{index_of, Netlink};
use crate::settings::RootNetwork;
use crate::{firewall, pool};

/// How long the bridge and tables wait for a next VM.
pub const LINGER: Duration = Duration::from_millis(150);

/// `<root>/network-linger.lock`: present, and locked, while a process lingers.
const LOCK_FILE: &str = "network-linger.lock";

/// Waits [`LINGER`], holding the root's linger lock, then removes the root's bridge and tables
/// unless a VM uses them. When another process lingers already, its look at the bridge may
/// come before this VM's port was gone: this one looks again after it, without waiting more.
pub fn hold(root_dir: &Path) {
    let path = root_dir.join(LOCK_FILE);
    let Ok(file) = open(&path) else {
        remove_if_unused(root_dir);
        return;
    };
    if file.try_lock().is_ok() {
        std::thread::sleep(LINGER);
    } else if file.lock().is_err() {
        return;
    }
    remove_if_unused(root_dir);
    let_go(&path, file);
}

/// Fills the root's pool ([`pool::refill`]) when VMs come one after another: other teardowns
/// are under way (`others_finishing`), the root's bridge lingers for a VM that ended a moment
/// ago, or a VM is on the bridge (which then stays). A lone `run --rm` now and then makes
/// none: its bridge goes after the linger, and the pool would go with it, unused.
pub fn refill_pool_if_in_demand(root_dir: &Path, others_finishing: bool) {
    if others_finishing || root_dir.join(LOCK_FILE).exists() || pool::vm_on_bridge(root_dir) {
        pool::refill(root_dir);
    }
}

/// Before a command: a lingering process that died leaves the bridge and tables (and the
/// pool filled while it lingered), which are removed here unless a VM uses them; with `wait`,
/// one lingering now is waited for, and a pool left without a lingering process (its VM ran
/// past the linger, or a refill was killed) is looked at too.
pub fn settle(root_dir: &Path, wait: bool) {
    let path = root_dir.join(LOCK_FILE);
    let orphaned_pool = wait && pool::has_entries(root_dir);
    if !path.exists() && !orphaned_pool {
        return;
    }
    let Ok(file) = open(&path) else {
        return;
    };
    let locked = if wait {
        file.lock().is_ok()
    } else {
        file.try_lock().is_ok()
    };
    if locked {
        remove_if_unused(root_dir);
        let_go(&path, file);
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Removes the lock's file, if it is still the one locked, then the lock.
fn let_go(path: &Path, file: File) {
    let same = |a: fs::Metadata, b: fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    if let (Ok(now), Ok(ours)) = (fs::metadata(path), file.metadata()) {
        if same(now, ours) {
            let _ = fs::remove_file(path);
        }
    }
}

/// Under the pool's refill lock and the root's network lock: the bridge, its tables and the
/// pool go if no VM's port is on the bridge and no VM claimed a pooled namespace.
fn remove_if_unused(root_dir: &Path) {
    let Ok(Some(network)) = RootNetwork::load(root_dir) else {
        return;
    };
    // A loop of `run --rm` takes pooled namespaces one after another, and between two of them
    // no VM may be on the bridge: the pool and the bridge stay while VMs keep coming.
    while let Some(age) = pool::since_last_taken(root_dir).filter(|age| *age < LINGER) {
        std::thread::sleep(LINGER - age);
    }
    pool::with_refill_lock(root_dir, || {
        // What a killed refill or keeper left goes even while VMs use the bridge.
        pool::clean_stale(&network);
        remove_unused(&network)
    });
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

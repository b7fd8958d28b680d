//! A root's bridge and tables outlive its last throw-away VM by a moment ([`LINGER`]): the
//! teardown of a `run --rm` handed over to `feather-keeper __finish` leaves them, so that the
//! next throw-away VM, in a script's loop, finds them made instead of making them again (a
//! bridge, an `nft` run, and their removal: most of a private network's cost). Nothing stays
//! for good: the process that lingers removes them unless a VM uses them by then, and while it
//! waits it holds the root's linger lock, which every command that waits for teardowns waits
//! for; one that finds the lock free and its file still there knows the lingering process died,
//! and removes what it left ([`settle`]).

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::firewall;
use crate::netlink::{index_of, Netlink};
use crate::settings::RootNetwork;

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

/// Before a command: a lingering process that died leaves the bridge and tables, which are
/// removed here unless a VM uses them; with `wait`, one lingering now is waited for.
pub fn settle(root_dir: &Path, wait: bool) {
    let path = root_dir.join(LOCK_FILE);
    if !path.exists() {
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

/// Under the root's network lock: the bridge and tables go if no port is on the bridge.
fn remove_if_unused(root_dir: &Path) {
    let Ok(Some(network)) = RootNetwork::load(root_dir) else {
        return;
    };
    let Ok(_lock) = network.lock() else {
        return;
    };
    if let Some(bridge) = index_of(&network.bridge) {
        let ports = Path::new("/sys/class/net")
            .join(&network.bridge)
            .join("brif");
        if fs::read_dir(ports).is_ok_and(|mut entries| entries.next().is_some()) {
            return;
        }
        firewall::delete_tables(&network);
        if let Ok(mut netlink) = Netlink::open() {
            let _ = netlink.delete_link(bridge);
        }
    }
    network.forget_if_unused();
}

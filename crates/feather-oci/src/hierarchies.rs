//! Where this host mounts its cgroup hierarchies, as its mount table says: read once per
//! process (`create` asked 14 times, each a read of /proc/self/mountinfo), and anew in a
//! forked child, which may join another mount namespace.

use std::path::PathBuf;
use std::sync::Mutex;

use feather_sys::cgroup::Hierarchies;
use feather_sys::mountinfo::MountEntry;

/// The cgroup mounts as process `pid` read them.
struct Table {
    pid: u32,
    mounts: Vec<MountEntry>,
    hierarchies: Hierarchies,
}

fn with_table<T>(look: impl FnOnce(&Table) -> T) -> T {
    static TABLE: Mutex<Option<Table>> = Mutex::new(None);
    let mut table = TABLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let pid = std::process::id();
    let read = match table.take() {
        Some(read) if read.pid == pid => read,
        _ => {
            let mounts: Vec<MountEntry> = feather_sys::mountinfo::mounts()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
                .collect();
            Table {
                pid,
                hierarchies: Hierarchies::in_mounts(mounts.clone()),
                mounts,
            }
        }
    };
    look(table.insert(read))
}

/// The hierarchies feather-sys's [`feather_sys::cgroup::Cgroup`] writes limits to.
pub fn detect() -> Hierarchies {
    with_table(|table| table.hierarchies.clone())
}

/// Every cgroup mount (v1 and v2), in mount order.
pub fn mounts() -> Vec<MountEntry> {
    with_table(|table| table.mounts.clone())
}

/// The v1 hierarchy holding `controller`, if the machine mounts it as v1.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    with_table(|table| {
        table
            .mounts
            .iter()
            .find(|m| m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == controller))
            .map(|m| m.mount_point.clone())
    })
}

pub fn v2_mount() -> Option<PathBuf> {
    with_table(|table| {
        table
            .mounts
            .iter()
            .find(|m| m.fs_type == "cgroup2")
            .map(|m| m.mount_point.clone())
    })
}

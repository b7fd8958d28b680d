//! Where this host mounts its cgroup hierarchies, as its mount table says: read once per
//! process and mount namespace (`create` asked 14 times, each a read of /proc/self/mountinfo),
//! and anew in a forked child, which may join another mount namespace. Keyed by the mount
//! namespace too: a child in a new pid namespace may have its parent's pid number. A table
//! that could not be read is not kept: the next look reads again.

use std::path::PathBuf;
use std::sync::Mutex;

use feather_sys::cgroup::Hierarchies;
use feather_sys::mountinfo::MountEntry;

/// The cgroup mounts as process `pid` read them in the mount namespace `namespace`.
struct Table {
    pid: u32,
    namespace: Option<u64>,
    mounts: Vec<MountEntry>,
    hierarchies: Hierarchies,
}

fn with_table<T>(look: impl FnOnce(&Table) -> T) -> T {
    static TABLE: Mutex<Option<Table>> = Mutex::new(None);
    let mut table = TABLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let pid = std::process::id();
    let namespace = mount_namespace();
    let read = match table.take() {
        Some(read) if read.pid == pid && read.namespace == namespace && namespace.is_some() => read,
        _ => {
            let read = feather_sys::mountinfo::mounts();
            let kept = read.is_ok();
            let mounts: Vec<MountEntry> = read
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
                .collect();
            let fresh = Table {
                pid,
                namespace,
                hierarchies: Hierarchies::in_mounts(mounts.clone()),
                mounts,
            };
            if !kept {
                return look(&fresh);
            }
            fresh
        }
    };
    look(table.insert(read))
}

/// The inode of the caller's mount namespace; None when it cannot be read (nothing is kept).
fn mount_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/mnt").ok().map(|m| m.ino())
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

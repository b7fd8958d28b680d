//! Where this host mounts its cgroup hierarchies, as its mount table says.

use std::path::PathBuf;

/// The v1 hierarchy holding `controller`, if the machine mounts it as v1.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    feather_sys::mountinfo::mounts()
        .ok()?
        .into_iter()
        .find(|m| m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == controller))
        .map(|m| m.mount_point)
}

pub fn v2_mount() -> Option<PathBuf> {
    feather_sys::mountinfo::mounts()
        .ok()?
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
}

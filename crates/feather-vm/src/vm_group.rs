//! Where a VM's cgroup is: below `feather/` in each hierarchy, named by the VM's id, so that
//! VMs of one name under two state roots never meet. A module of its own, below the keeper
//! that makes the group and the commands that look at it (`inspect`, `migrate`, the search
//! for a hand-over's holders).

use feather_core::VmConfig;
use feather_sys::cgroup::{Cgroup, Hierarchies};

/// Where a VM's cgroup is or would be; for cleaning up whatever a crash left.
pub fn cgroup_path(config: &VmConfig) -> Cgroup {
    cgroup_path_in(Hierarchies::detect(), config)
}

/// [`cgroup_path`] in hierarchies already detected (reading the mount table once for many
/// VMs: the web view's table lists every VM every second).
pub fn cgroup_path_in(hierarchies: Hierarchies, config: &VmConfig) -> Cgroup {
    Cgroup::new(hierarchies, format!("feather/{}", config.id))
}

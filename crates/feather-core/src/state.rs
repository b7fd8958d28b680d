//! A VM's run-time state (`state.json`): written by its keeper at every transition.

use serde::{Deserialize, Serialize};

/// What the state file records. Whether the keeper is really alive is checked separately
/// (its lock), so a keeper killed with SIGKILL shows as [`VmStatus::Crashed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    /// Created, never started.
    Created,
    /// A keeper and an init are up.
    Running,
    /// Stopped cleanly, or its init exited.
    Stopped,
    /// Its processes were saved by `feather checkpoint` and ended; `feather restore` brings
    /// them back.
    Checkpointed,
    /// The state file says running but the keeper is gone: it died without cleaning up.
    /// Never written; derived when the state is read.
    Crashed,
}

impl std::fmt::Display for VmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmStatus::Created => "created",
            VmStatus::Running => "running",
            VmStatus::Stopped => "stopped",
            VmStatus::Checkpointed => "checkpointed",
            VmStatus::Crashed => "crashed",
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VmState {
    pub status: VmStatus,
    /// Host pid of the keeper.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeper_pid: Option<i32>,
    /// Host pid of the VM's init (pid 1 inside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<i32>,
    /// The init's start time in clock ticks since boot (`/proc/<pid>/stat` field 22): tells
    /// our init apart from an unrelated process that reused its pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_start_ticks: Option<u64>,
    /// Seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<u64>,
    /// How the last run ended, in words ("stopped by request", "init killed by SIGKILL").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// A running throw-away VM's layer in memory (see `VmConfig::layer_in_memory`): where its
    /// keeper holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_layer: Option<MemoryLayer>,
}

/// A tmpfs no path leads to, holding a throw-away VM's layer: open in its keeper as `fd`, and
/// reached by others as `/proc/<keeper>/fd/<fd>`. `mount_id` (the kernel's unique mount id,
/// never reused) proves that what that path leads to is this tmpfs, not what a later process
/// that reused the keeper's pid has open there.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemoryLayer {
    pub fd: i32,
    pub mount_id: u64,
}

impl VmState {
    pub fn created() -> Self {
        VmState {
            status: VmStatus::Created,
            keeper_pid: None,
            init_pid: None,
            init_start_ticks: None,
            started: None,
            stopped: None,
            last_exit: None,
            memory_layer: None,
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

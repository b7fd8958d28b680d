//! What the broker needs of other VMs, provided by whoever hosts it (a VM's keeper, in
//! feather-vm): this crate decides and forwards, it does not start or enter VMs itself.

use std::process::Command;
use std::sync::Arc;

use nix::sys::signal::Signal;

/// Why the host of the broker could not do what it was asked about a VM.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("{vm:?} is not a VM name: {why}")]
    BadName { vm: String, why: String },
    /// The VM was started, and was no longer running right after.
    #[error("VM {vm} stopped right after it started")]
    StoppedAfterStart { vm: String },
    /// The VM started, but some of its configured services (or the one asked for) did not.
    #[error("VM {vm}: {} failed to start: {}", .units.join(", "), .why.join("; "))]
    ServicesFailed {
        vm: String,
        units: Vec<String>,
        why: Vec<String>,
    },
    /// The helper binary that does the work needing a fresh single-threaded process.
    #[error("{} is missing (install it beside {})", .helper.display(), .beside.display())]
    HelperMissing {
        helper: std::path::PathBuf,
        beside: std::path::PathBuf,
    },
    #[error("cannot find the running binary: {0}")]
    OwnBinary(#[source] std::io::Error),
    /// What the host's VM library reported (reading a VM's state, starting it, entering it,
    /// reaching its service manager); its message names the VM.
    #[error(transparent)]
    Host(Box<dyn std::error::Error + Send + Sync>),
}

impl PeersError {
    /// Wraps an error of the host's VM library.
    pub fn host(error: impl std::error::Error + Send + Sync + 'static) -> PeersError {
        PeersError::Host(Box::new(error))
    }
}

/// A program started by [`Peers::run`] in a VM.
pub trait Running: Send + Sync {
    /// Its exit code (128 + signal if killed) once it has ended, without waiting.
    fn try_wait(&self) -> Result<Option<i32>, PeersError>;
    /// Passes `signal` on to it.
    fn signal(&self, signal: Signal) -> Result<(), PeersError>;
}

/// Operations on the VMs of the broker's state root.
pub trait Peers: Send + Sync {
    /// The host pid of running VM `vm`'s init, or `None` if it is not running.
    fn init_pid(&self, vm: &str) -> Result<Option<i32>, PeersError>;
    /// Starts VM `vm` with the services it was created with; returns its init's host pid.
    fn start(&self, vm: &str) -> Result<i32, PeersError>;
    /// Starts `unit` (with what it needs) in running VM `vm` and waits until it is ready.
    fn start_service(&self, vm: &str, unit: &str) -> Result<(), PeersError>;
    /// The tags VM `vm` was created with (for `@tag:` selectors); none if it does not exist.
    fn tags(&self, vm: &str) -> Vec<String>;
    /// Runs `argv` in running VM `vm` as user `uid`, as `feather exec` does, with `stdio` as
    /// the program's stdin, stdout and stderr (relayed: the VM gets none of them).
    fn run(
        &self,
        vm: &str,
        argv: &[String],
        uid: u32,
        stdio: [std::os::fd::OwnedFd; 3],
    ) -> Result<Arc<dyn Running>, PeersError>;
    /// Records, before anything is mounted, that VM `source` hands files of the filesystems
    /// `fsids` (its layers, [`crate::protocol::share::Found::fsid`]) over to VM `target`: the
    /// source's stop ends what in the target still holds them, and the source's layer is not
    /// mounted again while an overlay of it lives (docs/shuttle.md, "When the source stops").
    /// An error refuses the hand-over.
    fn handing_over(&self, source: &str, target: &str, fsids: &[u64]) -> Result<(), PeersError>;
    /// A command that runs the helper binary's `subcommand`, for work that enters VMs'
    /// namespaces (which needs a fresh single-threaded process).
    fn helper(&self, subcommand: &str) -> Result<Command, PeersError>;
}

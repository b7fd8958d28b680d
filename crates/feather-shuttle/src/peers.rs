//! What the broker needs of other VMs, provided by whoever hosts it (a VM's keeper, in
//! feather-vm): this crate decides and forwards, it does not start or enter VMs itself.

use std::os::fd::OwnedFd;
use std::process::{Child, Command};

/// Operations on the VMs of the broker's state root.
pub trait Peers: Send + Sync {
    /// The host pid of running VM `vm`'s init, or `None` if it is not running.
    fn init_pid(&self, vm: &str) -> Result<Option<i32>, String>;
    /// Starts VM `vm` with the services it was created with; returns its init's host pid.
    fn start(&self, vm: &str) -> Result<i32, String>;
    /// Starts `unit` (with what it needs) in running VM `vm` and waits until it is ready.
    fn start_service(&self, vm: &str, unit: &str) -> Result<(), String>;
    /// The tags VM `vm` was created with (for `@tag:` selectors); none if it does not exist.
    fn tags(&self, vm: &str) -> Vec<String>;
    /// Runs `argv` in running VM `vm` as user `uid`, as `feather exec` does, with `stdio` as
    /// the program's stdin, stdout and stderr. The child's exit status is the program's (125 if
    /// feather could not run it, the reason written to the stderr given).
    fn run(
        &self,
        vm: &str,
        argv: &[String],
        uid: u32,
        stdio: [OwnedFd; 3],
    ) -> Result<Child, String>;
    /// A command that runs the feather binary's hidden `subcommand`, for work that enters VMs'
    /// namespaces (which needs a fresh single-threaded process).
    fn helper(&self, subcommand: &str) -> Result<Command, String>;
}

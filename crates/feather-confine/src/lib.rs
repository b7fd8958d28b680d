//! Confinement applied to every process that enters a VM: a reduced capability set, a seccomp
//! filter, and (documented in [`landlock`]) why Landlock scoping is not yet among them.
//!
//! The order, for a process about to become a VM's program (init's workloads inherit init's
//! state; `feather exec` applies it in its child):
//! 1. seccomp filter ([`seccomp::install`]) — while the process still holds CAP_SYS_ADMIN, so
//!    no_new_privs need not be set and set-uid programs (`su`, `sudo`, `passwd`, `ping` with
//!    file capabilities) keep working inside the VM; after the VM's mounts, which it forbids.
//!    Nothing the setup does after it (capset, setgroups, setuid, chdir, execve) is denied, so
//!    it is "last" in the sense that matters: it covers everything the program does.
//! 2. capabilities reduced ([`capabilities::reduce_to_default`]), bounding set first.
//! 3. the user switch and execve, in feather-vm's workload module.

pub mod capabilities;
pub mod landlock;
pub mod seccomp;

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Capabilities(#[from] capabilities::CapabilityError),
}

/// Steps 1 and 2 above, for a process that is already inside the VM's namespaces and root.
pub fn confine() -> Result<(), ConfineError> {
    seccomp::install()?;
    capabilities::reduce_to_default()?;
    Ok(())
}

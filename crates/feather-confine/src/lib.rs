//! Confinement applied to every process of a VM: a Landlock domain, a seccomp filter and a
//! reduced capability set. The VM's init applies them to itself; every other process of the
//! VM descends from init (`feather exec` has init fork its program) and inherits them.
//!
//! The order, in init (step 0, [`landlock`], comes first: it needs CAP_SYS_ADMIN):
//! 1. seccomp filter ([`seccomp::install`]) — while the process still holds CAP_SYS_ADMIN, so
//!    no_new_privs need not be set and set-uid programs (`su`, `sudo`, `passwd`, `ping` with
//!    file capabilities) keep working inside the VM; after the VM's mounts, which it forbids.
//!    Nothing the setup does after it (capset, setgroups, setuid, chdir, execve) is denied, so
//!    it is "last" in the sense that matters: it covers everything the program does.
//! 2. capabilities reduced ([`capabilities::reduce_to_default`]), bounding set first.
//! 3. the user switch and execve, in feather-vm's workload module.
//!
//! Device access ([`devices`]) is the VM's cgroup's: its keeper sets it on the group.

pub mod capabilities;
pub mod devices;
pub mod held;
pub mod landlock;
pub mod restored;
mod restored_descriptors;
pub mod restored_mounts;
pub mod restored_paths;
mod restored_reach;
pub mod restored_sources;
pub mod sealed;
pub mod seccomp;

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Capabilities(#[from] capabilities::CapabilityError),
}

/// Steps 1 and 2 above, for a process that is already inside the VM's namespaces and root.
pub fn confine(profile: seccomp::Profile) -> Result<(), ConfineError> {
    confine_compiled(&seccomp::Compiled::new(profile)?)
}

/// [`confine`] with the filters compiled beforehand.
pub fn confine_compiled(filters: &seccomp::Compiled) -> Result<(), ConfineError> {
    filters.install()?;
    capabilities::reduce_to_default()?;
    Ok(())
}

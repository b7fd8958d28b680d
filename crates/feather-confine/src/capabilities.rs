//! The capability set of a VM's root.
//!
//! Docker's default set is the reference: it lets ordinary system software run as root
//! (package scripts chown files, daemons bind port 80 and switch users) while withholding
//! everything that reaches past the VM. feather keeps Docker's set except `CAP_MKNOD`.
//!
//! | kept | why a VM needs it |
//! |---|---|
//! | CHOWN, DAC_OVERRIDE, FOWNER, FSETID | root managing files in its own layer |
//! | SETUID, SETGID, SETPCAP, SETFCAP | daemons dropping to their users; setcap during installs |
//! | KILL | signalling the VM's own processes of other users (its pid namespace bounds it) |
//! | NET_BIND_SERVICE, NET_RAW | ports below 1024 and ping, in the VM's own network namespace |
//! | SYS_CHROOT | chroot-ing daemons (sshd, postfix) |
//! | AUDIT_WRITE | login programs writing audit records |
//!
//! Everything else is dropped from the bounding set, so not even a set-uid binary in the VM
//! regains it. Notably: SYS_ADMIN (mount, remount, namespaces, most of what escapes), SYS_MODULE
//! (loading kernel modules), SYS_RAWIO and MKNOD (raw devices; the VM's layers are also mounted
//! `nodev`), SYS_TIME, SYS_BOOT, NET_ADMIN, SYS_PTRACE, BPF, PERFMON, SYSLOG, MAC_ADMIN.

use caps::{CapSet, Capability, CapsHashSet};

pub const DEFAULT_SET: [Capability; 13] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SETFCAP,
    Capability::CAP_KILL,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_NET_RAW,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_AUDIT_WRITE,
];

#[derive(Debug, thiserror::Error)]
#[error("cannot reduce capabilities: {0}")]
pub struct CapabilityError(#[from] caps::errors::CapsError);

/// Reduces the caller to [`DEFAULT_SET`]: first the bounding set (which caps what any later
/// exec can gain), then the ambient, inheritable, permitted and effective sets.
pub fn reduce_to_default() -> Result<(), CapabilityError> {
    reduce_to(DEFAULT_SET.into_iter().collect())
}

/// The VM's spawner (crates/feather-vm/src/spawner.rs): [`DEFAULT_SET`], which each process it
/// makes goes on with, and CAP_SYS_ADMIN, for the one mount namespace and the binds of its
/// recipe, which each such process drops (by [`reduce_to_default`]) before anything of the
/// VM's runs in it.
pub fn reduce_to_spawner() -> Result<(), CapabilityError> {
    let mut keep: CapsHashSet = DEFAULT_SET.into_iter().collect();
    keep.insert(Capability::CAP_SYS_ADMIN);
    reduce_to(keep)
}

fn reduce_to(keep: CapsHashSet) -> Result<(), CapabilityError> {
    for capability in caps::all() {
        if !keep.contains(&capability) {
            // A capability the running kernel does not know cannot be dropped, nor held.
            let _ = caps::drop(None, CapSet::Bounding, capability);
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    let held = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = held.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Inheritable, &kept)?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(())
}

/// The names of the default set, for `inspect` and documentation.
pub fn default_set_names() -> Vec<String> {
    DEFAULT_SET.iter().map(|c| c.to_string()).collect()
}

/// Drops every capability from the bounding, ambient and inheritable sets: for a helper that
/// goes on as an unprivileged user (its change of uid away from root empties the permitted
/// and effective sets; this keeps any later exec from gaining one back).
pub fn drop_all() -> Result<(), CapabilityError> {
    for capability in caps::all() {
        let _ = caps::drop(None, CapSet::Bounding, capability);
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    Ok(())
}

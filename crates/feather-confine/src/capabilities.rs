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
    drop_bounding_except(&keep);
    caps::clear(None, CapSet::Ambient)?;
    let held = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = held.intersection(&keep).copied().collect();
    set_unless_already(CapSet::Inheritable, &kept)?;
    set_unless_already(CapSet::Effective, &kept)?;
    if held != kept {
        caps::set(None, CapSet::Permitted, &kept)?;
    }
    Ok(())
}

/// Drops from the bounding set every capability not in `keep` that it still holds. Each drop
/// makes and commits a new credential, held or not (about 4 µs here, against 0.3 µs for a
/// read), and a process started by an already reduced init (every workload, every
/// `feather exec`) has none left to drop.
fn drop_bounding_except(keep: &CapsHashSet) {
    for capability in caps::all() {
        // A capability the running kernel does not know is neither held nor droppable.
        if !keep.contains(&capability)
            && caps::has_cap(None, CapSet::Bounding, capability).unwrap_or(false)
        {
            let _ = caps::drop(None, CapSet::Bounding, capability);
        }
    }
}

/// Sets `set` to `wanted` unless it is that already (a set costs a credential commit).
fn set_unless_already(set: CapSet, wanted: &CapsHashSet) -> Result<(), CapabilityError> {
    if caps::read(None, set)? != *wanted {
        caps::set(None, set, wanted)?;
    }
    Ok(())
}

/// [`DEFAULT_SET`] as a mask, bit N for capability N, as /proc/PID/status shows sets.
pub fn default_mask() -> u64 {
    mask_of(DEFAULT_SET.iter())
}

/// The spawner's set ([`reduce_to_spawner`]) as a mask: the most a process of a VM holds.
pub fn spawner_mask() -> u64 {
    default_mask() | mask_of([Capability::CAP_SYS_ADMIN].iter())
}

fn mask_of<'a>(set: impl Iterator<Item = &'a Capability>) -> u64 {
    set.fold(0, |mask, c| mask | 1u64 << c.index())
}

/// The names of the capabilities of `mask` (bits this crate does not know as `cap_N`), for
/// messages.
pub fn names_of(mask: u64) -> Vec<String> {
    (0..64u8)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| {
            caps::all()
                .into_iter()
                .find(|c| c.index() == bit)
                .map_or_else(|| format!("cap_{bit}"), |c| c.to_string())
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread's capability sets as /proc shows them: (CapInh, CapPrm, CapEff, CapBnd).
    fn thread_sets() -> [u64; 4] {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:"].map(|field| {
            let hex = status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .unwrap()
                .trim();
            u64::from_str_radix(hex, 16).unwrap()
        })
    }

    fn mask(set: &[Capability]) -> u64 {
        set.iter().map(|c| 1u64 << c.index()).sum()
    }

    /// A process started by an already reduced init goes through the reduction again (a
    /// workload, a `feather exec`), where nothing is left to drop: both rounds must leave
    /// exactly the default set, in every set. Capabilities belong to a thread: the test's own
    /// thread changes, no other.
    #[test]
    fn reducing_twice_leaves_exactly_the_default_set() {
        std::thread::spawn(|| {
            // Without CAP_SETPCAP nothing can be dropped from the bounding set: there is
            // nothing to check (the suite runs as root).
            if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
                return;
            }
            let want = mask(&DEFAULT_SET);
            for round in 0..2 {
                reduce_to_default().unwrap();
                let [inheritable, permitted, effective, bounding] = thread_sets();
                assert_eq!(bounding, want, "round {round}");
                assert_eq!(
                    (inheritable, permitted, effective),
                    (want, want, want),
                    "round {round}"
                );
            }
        })
        .join()
        .unwrap();
    }
}

//! Who is on the far end of a connection a VM made to a channel: its uid and gid as the kernel
//! recorded them at connect (SO_PEERCRED), and its supplementary groups, read from its
//! `/proc/<pid>/status` only if that pid is a process of the source VM (same pid namespace as
//! the VM's init) and still the same process after the reading. VMs have no user namespaces:
//! the uids are the host's.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use feather_sys::creds::{groups_of, Identity};
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Pid, Uid};

/// The identity of the peer of `client`, a connection accepted from VM `init_pid`'s side.
pub fn of_peer(client: &impl AsFd, init_pid: i32) -> io::Result<Identity> {
    let cred = getsockopt(client, sockopt::PeerCredentials)?;
    Ok(Identity {
        uid: Uid::from_raw(cred.uid()),
        gid: Gid::from_raw(cred.gid()),
        groups: groups_in_vm(cred.pid(), init_pid).unwrap_or_default(),
    })
}

/// The groups of `pid` if it is a process of the VM whose init is `init_pid`, else None
/// (the client then connects with its uid and gid alone).
fn groups_in_vm(pid: i32, init_pid: i32) -> Option<Vec<Gid>> {
    if pid <= 0 {
        return None;
    }
    let before = feather_sys::process::start_ticks(Pid::from_raw(pid))?;
    let groups = groups_of(pid).ok()?;
    let same_ns = |a: i32, b: i32| -> Option<bool> {
        let ours = std::fs::metadata(format!("/proc/{a}/ns/pid")).ok()?;
        let theirs = std::fs::metadata(format!("/proc/{b}/ns/pid")).ok()?;
        Some((ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()))
    };
    let in_vm = same_ns(pid, init_pid)?;
    // Still the process whose status was read: a pid reused meanwhile has another start.
    let after = feather_sys::process::start_ticks(Pid::from_raw(pid))?;
    (in_vm && before == after).then_some(groups)
}

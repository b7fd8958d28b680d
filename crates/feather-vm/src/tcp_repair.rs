//! Taking a VM's TCP sockets out of repair mode after a failed post-copy dump.
//!
//! CRIU puts every established TCP connection it dumps into repair mode (`TCP_REPAIR`) and
//! takes it out again at the end of the dump — but CRIU 4.1 decides whether to do so *before*
//! its lazy page transfer, from whether the processes were meant to run on (`cr_dump_finish`
//! in criu/cr-dump.c: `network_unlock()` only when the dump failed or `--leave-running`). A
//! post-copy dump succeeds, so the connections stay in repair mode; when the page transfer then
//! fails, CRIU lets the processes go on with them still in it. There a `recv` fails with EPERM
//! (a python server dies of it) and a `send` only queues, never transmitting. The keeper takes
//! them out of repair mode as CRIU would have, while the migration still holds the VM frozen.

use std::os::fd::RawFd;

use feather_sys::process;
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use nix::unistd::Pid;

/// Takes every TCP socket that a process of `pids` holds out of repair mode; returns how many
/// were in it. A socket several processes share is found once in repair mode, then no more.
pub(crate) fn end_repair(pids: &[Pid]) -> usize {
    let mut ended = 0;
    for &pid in pids {
        let Ok(pidfd) = process::pidfd_open(pid) else {
            continue;
        };
        for fd in socket_fds(pid) {
            let Ok(socket) = process::take_fd(&pidfd, fd) else {
                continue;
            };
            // A unix or UDP socket answers this with an error: not in repair mode.
            if getsockopt(&socket, sockopt::TcpRepair) == Ok(1)
                && setsockopt(&socket, sockopt::TcpRepair, &0).is_ok()
            {
                ended += 1;
            }
        }
    }
    ended
}

/// The descriptors of `pid` that are sockets.
fn socket_fds(pid: Pid) -> Vec<RawFd> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:["))
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

//! Acting as another user for one call: credentials are per thread in the kernel, so a
//! connection made by a thread that took a client's uid and groups carries them (the server
//! sees them with SO_PEERCRED and checks them against the socket file's mode).

use std::io;

use nix::unistd::{Gid, Uid};

use crate::raw;

/// Who a peer is, as the kernel told us (SO_PEERCRED) and its supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// Runs `f` on a new thread that has `who`'s uid, gid and groups, and returns what it
/// returned. The thread ends with `f`: it never comes back to root, and no other thread of the
/// process changes.
pub fn run_as<T: Send>(who: &Identity, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("as-client".into())
            .spawn_scoped(scope, || {
                let groups: Vec<u32> = who.groups.iter().map(|g| g.as_raw()).collect();
                raw::set_thread_ids(who.uid.as_raw(), who.gid.as_raw(), &groups)
                    .map_err(io::Error::from)?;
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("the thread acting as the client panicked"))?
    })
}

/// The supplementary groups of process `pid` (its `Groups:` line in /proc/PID/status).
pub fn groups_of(pid: i32) -> io::Result<Vec<Gid>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse_groups(&status))
}

fn parse_groups(status: &str) -> Vec<Gid> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|list| {
            list.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .map(Gid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// This process's effective uid: whom its files are made for, besides root the one owner a
/// folder it trusts may have (a state root's, as `feather_core::strict_modes` judges them on
/// [`crate::lookup`]'s walk).
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_the_status_line() {
        let status = "Name:\tsh\nGid:\t0\t0\t0\t0\nGroups:\t4 24 1000 \nNSpid:\t1\n";
        assert_eq!(
            parse_groups(status),
            [4, 24, 1000].map(Gid::from_raw).to_vec()
        );
        assert!(parse_groups("Groups:\t\n").is_empty());
    }

    #[test]
    fn the_thread_acts_as_the_user_and_the_process_stays_root() {
        if !Uid::effective().is_root() {
            return;
        }
        let who = Identity {
            uid: Uid::from_raw(1234),
            gid: Gid::from_raw(2345),
            groups: vec![Gid::from_raw(3456)],
        };
        let seen = run_as(&who, || {
            Ok((
                Uid::effective(),
                Gid::effective(),
                nix::unistd::getgroups()?,
            ))
        })
        .unwrap();
        assert_eq!(seen, (who.uid, who.gid, who.groups.clone()));
        assert!(
            Uid::effective().is_root(),
            "the other threads are still root"
        );
    }
}

//! Finding a service's processes in the VM's /proc: by session, by parent, by pid file. Where
//! the VM has per-unit cgroups (`cgroups`), a unit's group is what counts; sessions stand in
//! for it in a VM without them.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The process a PID file names, if it lives.
pub(super) fn read_pid_file(path: &Path) -> Option<Pid> {
    let text = fs::read_to_string(path).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let pid = Pid::from_raw(pid);
    // The pid must name a living process.
    kill(pid, None).ok().map(|_| pid)
}

/// Without a PIDFile=, the daemon a forking start left behind: a child of the manager (its
/// subreaper, so the daemon was reparented to it) that is no unit's known process.
pub(super) fn guess_main_pid(known: &BTreeSet<i32>) -> Option<Pid> {
    let me = std::process::id() as i32;
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == me && !known.contains(&p.pid))
        .map(|p| Pid::from_raw(p.pid))
        .next()
}

pub(super) struct ProcessEntry {
    pub pid: i32,
    pub ppid: i32,
    pub session: i32,
}

pub(super) fn all_processes() -> Vec<ProcessEntry> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let mut text = String::new();
            File::open(format!("/proc/{pid}/stat"))
                .ok()?
                .read_to_string(&mut text)
                .ok()?;
            let after = &text[text.rfind(')')? + 2..];
            let fields: Vec<&str> = after.split_whitespace().collect();
            // state ppid pgrp session …
            if fields.first() == Some(&"Z") {
                return None;
            }
            Some(ProcessEntry {
                pid,
                ppid: fields.get(1)?.parse().ok()?,
                session: fields.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

/// The parent of a living process.
pub(super) fn parent_of(pid: Pid) -> Option<i32> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = text.get(text.rfind(')')? + 2..)?;
    after.split_whitespace().nth(1)?.parse().ok()
}

pub(super) fn session_of(pid: Pid) -> Option<i32> {
    all_processes()
        .into_iter()
        .find(|p| p.pid == pid.as_raw())
        .map(|p| p.session)
}

pub(super) fn is_zombie(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| t.rfind(')').map(|i| t[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

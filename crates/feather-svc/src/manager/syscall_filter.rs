//! `SystemCallFilter=` as a seccomp filter of the unit's own. The groups (`@system-service`,
//! `@privileged`, …) are those of the systemd installed in the VM's root (the host's), read
//! from `systemd-analyze syscall-filter` once, so a unit gets exactly the calls its own systemd
//! would give it. As systemd combines the lines: the first decides whether the list allows
//! (then `@default` is allowed too) or, with `~`, denies; a later line of the same kind adds,
//! one of the other kind takes away; a call outside an allow list, or in a deny list, kills the
//! process (SIGSYS), or fails with `SystemCallErrorNumber=` where that is set.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::str::FromStr;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

use crate::unit::SyscallFilterLine;

/// Why a unit's system call filter could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("systemd-analyze syscall-filter (for the groups of SystemCallFilter=): {0}")]
    Groups(std::io::Error),
    #[error("SystemCallFilter=: unknown group {0}")]
    UnknownGroup(String),
    #[error("SystemCallFilter=: {0}")]
    Compile(seccompiler::BackendError),
    /// The groups could not be read when an earlier unit needed them (read once per manager).
    #[error(transparent)]
    Earlier(std::sync::Arc<FilterError>),
}

/// Group name → its entries (calls and other groups), as the installed systemd lists them.
pub type Groups = BTreeMap<String, Vec<String>>;

/// Reads the groups from the systemd installed in the VM's root.
pub fn load_groups() -> Result<Groups, FilterError> {
    let output = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(FilterError::Groups)?;
    if !output.status.success() {
        return Err(FilterError::Groups(std::io::Error::other(format!(
            "exited with {}",
            output.status
        ))));
    }
    Ok(parse_groups(&String::from_utf8_lossy(&output.stdout)))
}

/// `@group` at the start of a line opens a group; indented lines are its entries (`# …`
/// comments skipped); a line starting with `#` ends the listing.
pub fn parse_groups(text: &str) -> Groups {
    let mut groups = Groups::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            break;
        }
        if let Some(name) = line.strip_prefix('@') {
            current = Some(format!("@{}", name.trim()));
            groups.entry(format!("@{}", name.trim())).or_default();
            continue;
        }
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') || !line.starts_with(' ') {
            continue;
        }
        if let Some(group) = &current {
            groups
                .entry(group.clone())
                .or_default()
                .push(entry.to_owned());
        }
    }
    groups
}

/// The calls a group or name stands for.
fn expand(
    entry: &str,
    groups: &Groups,
    into: &mut BTreeSet<String>,
    seen: &mut BTreeSet<String>,
) -> Result<(), FilterError> {
    if !entry.starts_with('@') {
        into.insert(entry.to_owned());
        return Ok(());
    }
    if !seen.insert(entry.to_owned()) {
        return Ok(());
    }
    let members = groups
        .get(entry)
        .ok_or_else(|| FilterError::UnknownGroup(entry.to_owned()))?;
    for member in members {
        expand(member, groups, into, seen)?;
    }
    Ok(())
}

/// What a unit's lines come to: whether the calls are the only ones allowed, and which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub allow: bool,
    pub calls: BTreeSet<String>,
}

/// Combines a unit's `SystemCallFilter=` lines as systemd does; None without any.
pub fn resolve(
    lines: &[SyscallFilterLine],
    groups: &Groups,
) -> Result<Option<Resolved>, FilterError> {
    let Some(first) = lines.first() else {
        return Ok(None);
    };
    let allow = !first.inverted;
    let mut calls = BTreeSet::new();
    if allow {
        expand("@default", groups, &mut calls, &mut BTreeSet::new())?;
    }
    for line in lines {
        let mut named = BTreeSet::new();
        for entry in &line.entries {
            expand(entry, groups, &mut named, &mut BTreeSet::new())?;
        }
        if line.inverted != allow {
            calls.extend(named);
        } else {
            calls.retain(|c| !named.contains(c));
        }
    }
    Ok(Some(Resolved { allow, calls }))
}

/// The filter for this machine's architecture: `errno` (SystemCallErrorNumber=) or, without
/// it, the end of the process for a refused call. Names this architecture lacks are skipped,
/// as systemd skips them.
pub fn compile(
    resolved: &Resolved,
    errno: Option<i32>,
) -> Result<Vec<feather_sys::seccomp::Instruction>, FilterError> {
    let mut rules = BTreeMap::new();
    for call in &resolved.calls {
        if let Ok(number) = syscalls::Sysno::from_str(call) {
            // An empty list of rules matches the call whatever its arguments.
            rules.insert(number.id() as i64, Vec::new());
        }
    }
    let refuse = match errno {
        Some(errno) => SeccompAction::Errno(errno as u32),
        None => SeccompAction::KillProcess,
    };
    let (on_listed, on_others) = if resolved.allow {
        (SeccompAction::Allow, refuse)
    } else {
        (refuse, SeccompAction::Allow)
    };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(FilterError::Compile)?;
    let filter =
        SeccompFilter::new(rules, on_others, on_listed, arch).map_err(FilterError::Compile)?;
    let program: BpfProgram = filter.try_into().map_err(FilterError::Compile)?;
    Ok(program
        .into_iter()
        .map(|i| feather_sys::seccomp::Instruction {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "@default
    # System calls that are always permitted
    exit
    getpid

@basic-io
    # Basic IO
    read
    write

@privileged
    # All system calls which need super-user capabilities
    @clock
    chroot

@clock
    # Change the system time
    settimeofday

@system-service
    # General system service operations
    @basic-io
    @privileged
    capget

# Ungrouped System Calls (known but not included in any of the groups except @known):
#   arc_gettls
";

    fn line(inverted: bool, entries: &[&str]) -> SyscallFilterLine {
        SyscallFilterLine {
            inverted,
            entries: entries.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn calls(resolved: &Resolved) -> Vec<&str> {
        resolved.calls.iter().map(String::as_str).collect()
    }

    #[test]
    fn groups_are_read_from_systemd_analyze_and_nest() {
        let groups = parse_groups(LISTING);
        assert_eq!(groups["@privileged"], ["@clock", "chroot"]);
        assert_eq!(groups.len(), 5);
        // redis-server.service: @system-service, then ~@privileged.
        let redis = resolve(
            &[
                line(false, &["@system-service"]),
                line(true, &["@privileged"]),
            ],
            &groups,
        )
        .unwrap()
        .unwrap();
        assert!(redis.allow);
        assert_eq!(calls(&redis), ["capget", "exit", "getpid", "read", "write"]);
    }

    #[test]
    fn a_first_inverted_line_makes_a_deny_list() {
        let groups = parse_groups(LISTING);
        let deny = resolve(&[line(true, &["@clock", "chroot"])], &groups)
            .unwrap()
            .unwrap();
        assert!(!deny.allow);
        assert_eq!(calls(&deny), ["chroot", "settimeofday"]);
        let less = resolve(
            &[line(true, &["@clock", "chroot"]), line(false, &["chroot"])],
            &groups,
        )
        .unwrap()
        .unwrap();
        assert_eq!(calls(&less), ["settimeofday"]);
        assert_eq!(resolve(&[], &groups).unwrap(), None);
        assert!(matches!(
            resolve(&[line(false, &["@nope"])], &groups),
            Err(FilterError::UnknownGroup(g)) if g == "@nope"
        ));
    }

    #[test]
    fn a_filter_compiles_for_this_machine() {
        let groups = parse_groups(LISTING);
        let resolved = resolve(&[line(false, &["@basic-io", "no_such_call"])], &groups)
            .unwrap()
            .unwrap();
        assert!(!compile(&resolved, None).unwrap().is_empty());
        assert!(!compile(&resolved, Some(libc::EPERM)).unwrap().is_empty());
    }
}

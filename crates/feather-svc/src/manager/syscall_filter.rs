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
    /// feather_sys::seccomp::fold_x32 did not recognise seccompiler's program.
    #[error("SystemCallFilter=: {0}")]
    Fold(String),
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
///
/// On x86_64 an x32 call is decided as its native twin: the name's x86_64 number, with the
/// x32 bit (`read`'s 0|x32) or as x32's own number of the call (`ioctl`'s 514|x32, `readv`'s
/// 515|x32: feather_sys::seccomp::X32_TWINS), is allowed or refused as the name is
/// (feather_sys::seccomp::fold_x32 and with_x32_twins). That is systemd's behaviour, not
/// `SystemCallArchitectures=native`'s: systemd.exec(5) has `SystemCallArchitectures=` name
/// "the architecture identifiers to include in the system call filter", and by default (an
/// empty list) systemd includes every ABI of the machine in it, each under its own numbers
/// of the same names (src/shared/seccomp-util.c compiles the filter once per local
/// architecture, x32 among them), recommending `SystemCallArchitectures=native` beside
/// `SystemCallFilter=` to end the other ABIs. Ending every x32 call here would kill x32
/// programs that systemd runs under the same unit; leaving x32 numbers out (as before
/// 2026-12-05) let every x32 call through a deny list (`~ptrace` by 521|x32) and refused
/// every one under an allow list. A unit that sets `SystemCallArchitectures=native` gets its
/// filter of its own, which ends x32 calls first (restrictions.rs). i386 calls are ended by
/// the architecture check at the start of every feather filter, the VM's too, where systemd
/// would filter them by their i386 numbers.
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
    let rules = feather_sys::seccomp::with_x32_twins(rules);
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
    feather_sys::seccomp::fold_x32(feather_sys::seccomp::from_seccompiler(program))
        .map_err(FilterError::Fold)
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

    /// An x32 call is decided as its native twin, as systemd's filter (compiled for x32 too)
    /// decides it: under deny and allow lists, refusing by errno or by killing, every number
    /// below 1024 with the x32 bit (x32's own 512–547 among them) answers as the native call
    /// of the same name; x32's `ioctl` (514) and `ptrace` (521) are refused by `~ioctl
    /// ptrace`, allowed by an allow list naming them, and x32's `chroot` refused by one that
    /// does not. Before, every x32 call passed a deny list and none an allow list.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_calls_are_decided_as_their_native_twins() {
        const X86_64: u32 = 0xc000_003e;
        let x32 = feather_sys::seccomp::X32_SYSCALL_BIT;
        let groups = parse_groups(LISTING);
        let deny = resolve(
            &[line(
                true,
                &["ioctl", "ptrace", "kexec_load", "readv", "@clock"],
            )],
            &groups,
        )
        .unwrap()
        .unwrap();
        let allow = resolve(&[line(false, &["@basic-io", "ioctl", "ptrace"])], &groups)
            .unwrap()
            .unwrap();
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        let allowed = libc::SECCOMP_RET_ALLOW;
        for (resolved, errno, refused) in [
            (&deny, Some(libc::EPERM), eperm),
            (&deny, None, kill),
            (&allow, Some(libc::EPERM), eperm),
            (&allow, None, kill),
        ] {
            let program = compile(resolved, errno).unwrap();
            let answer = |nr: u32| feather_sys::seccomp::evaluate(&program, X86_64, nr, [0; 6]);
            let what = format!("allow {}, errno {errno:?}", resolved.allow);
            for native in 0..1024u32 {
                let twin = feather_sys::seccomp::native_twin(native).unwrap_or(native);
                assert_eq!(answer(native | x32), answer(twin), "{what}: {native}|x32");
                assert!(answer(native | x32).is_some(), "{what}: {native}|x32");
            }
            let (listed, unlisted) = if resolved.allow {
                (allowed, refused)
            } else {
                (refused, allowed)
            };
            for nr in [514 | x32, 521 | x32, libc::SYS_ioctl as u32 | x32] {
                assert_eq!(answer(nr), Some(listed), "{what}: {nr:#x}");
            }
            assert_eq!(
                answer(libc::SYS_chroot as u32 | x32),
                Some(unlisted),
                "{what}"
            );
            assert_eq!(
                answer(libc::SYS_getpid as u32 | x32),
                Some(allowed),
                "{what}"
            );
            let i386 = feather_sys::seccomp::evaluate(&program, 0x4000_0003, 20, [0; 6]);
            assert_eq!(i386, Some(kill), "{what}");
        }
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

//! `PrivateDevices=`, `ProtectKernelModules=`, `ProtectClock=` and `ProtectHostname=`: what
//! systemd applies for them beyond a mount (`src/core/namespace.c` and `exec-invoke.c`), made
//! the same way for a unit's processes in a VM:
//!
//! - `PrivateDevices=`: `CAP_MKNOD` and `CAP_SYS_RAWIO` leave the bounding set, `@raw-io`
//!   fails with EPERM. The view is every VM's already: its `/dev` is the minimal one systemd
//!   makes, and the VM's device program allows only those devices.
//! - `ProtectKernelModules=`: `CAP_SYS_MODULE` leaves the bounding set, `@module` fails.
//! - `ProtectClock=`: `CAP_SYS_TIME` and `CAP_WAKE_ALARM` leave it, `@clock` fails.
//! - `ProtectHostname=`: `sethostname` and `setdomainname` fail (systemd's filter beside its
//!   UTS namespace; a VM's UTS namespace is its own already).
//!
//! Each implies no_new_privs, as systemd implies it for a service without `CAP_SYS_ADMIN`.
//! The groups are the installed systemd's (`syscall_filter::load_groups`).

use std::collections::BTreeSet;

use super::syscall_filter::{self, FilterError, Groups, Resolved};
use crate::unit::KernelProtections;

/// Each setting that is on, with the calls and groups it refuses.
pub fn refused(protections: &KernelProtections) -> Vec<(&'static str, &'static [&'static str])> {
    let settings: [(&str, bool, &[&str]); 4] = [
        ("PrivateDevices", protections.private_devices, &["@raw-io"]),
        (
            "ProtectKernelModules",
            protections.kernel_modules,
            &["@module"],
        ),
        ("ProtectClock", protections.clock, &["@clock"]),
        (
            "ProtectHostname",
            protections.hostname,
            &["sethostname", "setdomainname"],
        ),
    ];
    settings
        .into_iter()
        .filter(|(_, on, _)| *on)
        .map(|(key, _, entries)| (key, entries))
        .collect()
}

/// Whether any of `entries` is a group, which needs the installed systemd's list.
pub fn needs_groups(entries: &[&str]) -> bool {
    entries.iter().any(|entry| entry.starts_with('@'))
}

/// The capabilities systemd removes from the bounding set for `protections`.
pub fn capabilities(protections: &KernelProtections) -> Vec<caps::Capability> {
    use caps::Capability::*;
    let mut dropped = Vec::new();
    if protections.private_devices {
        dropped.extend([CAP_MKNOD, CAP_SYS_RAWIO]);
    }
    if protections.kernel_modules {
        dropped.push(CAP_SYS_MODULE);
    }
    if protections.clock {
        dropped.extend([CAP_SYS_TIME, CAP_WAKE_ALARM]);
    }
    dropped
}

/// One filter that refuses `entries` (calls and groups of `groups`) with EPERM, as systemd's
/// filters for these settings answer; None for no entries.
pub fn filter(
    entries: &[&str],
    groups: &Groups,
) -> Result<Option<Vec<feather_sys::seccomp::Instruction>>, FilterError> {
    if entries.is_empty() {
        return Ok(None);
    }
    let mut calls = BTreeSet::new();
    for entry in entries {
        let line = crate::unit::SyscallFilterLine {
            inverted: true,
            entries: vec![(*entry).to_owned()],
        };
        if let Some(resolved) = syscall_filter::resolve(&[line], groups)? {
            calls.extend(resolved.calls);
        }
    }
    let resolved = Resolved {
        allow: false,
        calls,
    };
    syscall_filter::compile(&resolved, Some(libc::EPERM)).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Groups {
        syscall_filter::parse_groups(
            "@raw-io\n    iopl\n    ioperm\n\n@module\n    init_module\n\n@clock\n    adjtimex\n",
        )
    }

    #[test]
    fn each_setting_refuses_its_group_and_drops_its_capabilities() {
        use caps::Capability::*;
        let all = KernelProtections {
            private_devices: true,
            kernel_modules: true,
            clock: true,
            hostname: true,
        };
        let keys: Vec<_> = refused(&all).iter().map(|(key, _)| *key).collect();
        assert_eq!(
            keys,
            [
                "PrivateDevices",
                "ProtectKernelModules",
                "ProtectClock",
                "ProtectHostname"
            ]
        );
        assert_eq!(
            capabilities(&all),
            [
                CAP_MKNOD,
                CAP_SYS_RAWIO,
                CAP_SYS_MODULE,
                CAP_SYS_TIME,
                CAP_WAKE_ALARM
            ]
        );
        let hostname = KernelProtections {
            hostname: true,
            ..KernelProtections::default()
        };
        // The hostname calls are named: no group needed, no capability dropped.
        assert!(!needs_groups(refused(&hostname)[0].1));
        assert!(capabilities(&hostname).is_empty());
        assert!(refused(&KernelProtections::default()).is_empty());
        assert!(filter(&[], &groups()).unwrap().is_none());
        assert!(matches!(
            filter(&["@unknown"], &groups()),
            Err(FilterError::UnknownGroup(_))
        ));
    }

    /// Runs a read-only `adjtimex` (allowed without CAP_SYS_TIME; by number, as the C
    /// library's goes through `clock_adjtime`) from Python under `filters`; the test runs on
    /// the host, outside any VM.
    fn calls_under(filters: Vec<Vec<feather_sys::seccomp::Instruction>>) -> String {
        const PROBE: &str = "import ctypes\n\
            libc = ctypes.CDLL(None, use_errno=True)\n\
            import os\n\
            number = {'x86_64': 159, 'aarch64': 171}[os.uname().machine]\n\
            state = libc.syscall(number, ctypes.create_string_buffer(512))\n\
            print('adjtimex', state >= 0, ctypes.get_errno())\n";
        let mut command = std::process::Command::new("python3");
        command.args(["-c", PROBE]);
        crate::raw::install(
            &mut command,
            crate::raw::ProcessSetup {
                seccomp: filters,
                ..crate::raw::ProcessSetup::plain()
            },
        );
        let output = command.output().expect("python3 runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    #[test]
    fn protect_clock_refuses_adjtimex() {
        let clock = KernelProtections {
            clock: true,
            ..KernelProtections::default()
        };
        let entries: Vec<&str> = refused(&clock)
            .into_iter()
            .flat_map(|(_, entries)| entries.iter().copied())
            .collect();
        let filter = filter(&entries, &groups()).unwrap().unwrap();
        assert!(calls_under(Vec::new()).starts_with("adjtimex True"));
        assert_eq!(
            calls_under(vec![filter]),
            format!("adjtimex False {}\n", libc::EPERM)
        );
    }
}

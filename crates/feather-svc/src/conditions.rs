//! `Condition*=` and `Assert*=`, checked when a unit starts, with systemd's rules: every
//! plain condition must hold, and of the triggering ones (`|` prefix) at least one; `!`
//! negates. A condition that does not hold skips the unit (it is not a failure and units that
//! need it still start); an assertion that does not hold fails it.
//!
//! Checks are made inside the VM, so they see the VM's files and the VM's capabilities.
//! Conditions about the machine that have no meaning in a VM hold or not as for a container:
//! `ConditionVirtualization=container` holds, `ConditionFirstBoot=` does not.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use crate::paths::inside;
use crate::unit::Condition;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    /// A condition does not hold: the unit is skipped; says which.
    Skip(String),
    /// An assertion does not hold: the unit fails; says which.
    Fail(String),
}

/// Checks `conditions` against the tree at `root` (the VM's `/` when the manager checks).
pub fn check(conditions: &[Condition], root: &Path) -> Verdict {
    for (prefix, failing) in [("Assert", true), ("Condition", false)] {
        let mine: Vec<&Condition> = conditions
            .iter()
            .filter(|c| c.key.starts_with(prefix))
            .collect();
        let mut triggering = Vec::new();
        for condition in mine {
            let (trigger, value) = match condition.value.strip_prefix('|') {
                Some(rest) => (true, rest),
                None => (false, condition.value.as_str()),
            };
            let holds = holds(&condition.key[prefix.len()..], value, root);
            let written = format!("{}={}", condition.key, condition.value);
            if trigger {
                triggering.push((holds, written));
            } else if !holds {
                return verdict(failing, written);
            }
        }
        if !triggering.is_empty() && !triggering.iter().any(|(holds, _)| *holds) {
            let all: Vec<String> = triggering.into_iter().map(|(_, w)| w).collect();
            return verdict(failing, format!("none of {}", all.join(", ")));
        }
    }
    Verdict::Met
}

fn verdict(failing: bool, what: String) -> Verdict {
    if failing {
        Verdict::Fail(format!("assertion {what} does not hold"))
    } else {
        Verdict::Skip(format!("condition {what} does not hold"))
    }
}

/// Whether one condition (`PathExists`, with its value, `!` allowed) holds.
fn holds(kind: &str, value: &str, root: &Path) -> bool {
    let (negate, value) = match value.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let path = || inside(root, value);
    let result = match kind {
        "PathExists" => path().exists(),
        "PathIsDirectory" => path().is_dir(),
        "PathIsSymbolicLink" => {
            fs::symlink_metadata(path()).is_ok_and(|m| m.file_type().is_symlink())
        }
        "PathIsMountPoint" => is_mount_point(value),
        "PathIsReadWrite" => nix::sys::statvfs::statvfs(&path())
            .is_ok_and(|s| !s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)),
        "DirectoryNotEmpty" => fs::read_dir(path()).is_ok_and(|mut d| d.next().is_some()),
        "FileNotEmpty" => fs::metadata(path()).is_ok_and(|m| m.is_file() && m.len() > 0),
        "FileIsExecutable" => {
            fs::metadata(path()).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        "Virtualization" => matches!(value, "yes" | "container"),
        "Capability" => caps::Capability::from_str(value)
            .ok()
            .and_then(|cap| caps::has_cap(None, caps::CapSet::Bounding, cap).ok())
            .unwrap_or(false),
        "KernelCommandLine" => fs::read_to_string("/proc/cmdline").is_ok_and(|line| {
            line.split_whitespace().any(|word| {
                word == value || (!value.contains('=') && word.split('=').next() == Some(value))
            })
        }),
        "Security" => match value {
            "selinux" => Path::new("/sys/fs/selinux/enforce").exists(),
            "apparmor" => fs::read_to_string("/sys/module/apparmor/parameters/enabled")
                .is_ok_and(|v| v.trim() == "Y"),
            _ => false,
        },
        // A VM is never on its first boot, never needs the host's update, has no credentials.
        "FirstBoot" | "NeedsUpdate" | "Credential" => false,
        // Conditions about the machine (power, architecture, host name, memory, …): as the
        // host is, they hold.
        _ => true,
    };
    result != negate
}

/// Whether a mount's point is `path`, by the table's bytes unescaped: in a VM with a host
/// filesystem layered at a path that is not UTF-8, the table is not text.
fn is_mount_point(path: &str) -> bool {
    let path = match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    feather_sys::mountinfo::mounts().is_ok_and(|mounts| {
        mounts
            .iter()
            .any(|mount| mount.mount_point == std::path::Path::new(path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_found_in_the_table_with_or_without_a_trailing_slash() {
        for path in ["/", "/proc", "/proc/"] {
            assert!(is_mount_point(path), "{path}");
        }
        assert!(!is_mount_point("/proc/self"));
    }

    fn c(key: &str, value: &str) -> Condition {
        Condition {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn conditions_skip_assertions_fail_triggers_need_one() {
        let root_scratch = feather_testkit::ScratchDir::new("svc-cond");
        let root = root_scratch.0.clone();
        fs::create_dir_all(root.join("etc/full")).unwrap();
        fs::write(root.join("etc/full/file"), "x").unwrap();
        fs::write(root.join("etc/empty-file"), "").unwrap();
        let check = |list: &[Condition]| check(list, &root);
        assert_eq!(
            check(&[c("ConditionPathExists", "/etc/full/file")]),
            Verdict::Met
        );
        assert_eq!(
            check(&[c("ConditionPathExists", "!/etc/full/file")]),
            Verdict::Skip("condition ConditionPathExists=!/etc/full/file does not hold".into())
        );
        assert_eq!(
            check(&[c("ConditionDirectoryNotEmpty", "/etc/full")]),
            Verdict::Met
        );
        assert!(matches!(
            check(&[c("ConditionFileNotEmpty", "/etc/empty-file")]),
            Verdict::Skip(_)
        ));
        assert!(
            matches!(check(&[c("AssertPathExists", "/nope")]), Verdict::Fail(m) if m.contains("AssertPathExists=/nope"))
        );
        // Triggering conditions: one is enough; none is a skip.
        assert_eq!(
            check(&[
                c("ConditionPathExists", "|/nope"),
                c("ConditionPathIsDirectory", "|/etc/full")
            ]),
            Verdict::Met
        );
        assert!(
            matches!(check(&[c("ConditionPathExists", "|/nope"), c("ConditionPathExists", "|/nope2")]), Verdict::Skip(m) if m.starts_with("condition none of"))
        );
        assert_eq!(
            check(&[
                c("ConditionVirtualization", "container"),
                c("ConditionVirtualization", "!kvm")
            ]),
            Verdict::Met
        );
        assert!(matches!(
            check(&[c("ConditionFirstBoot", "yes")]),
            Verdict::Skip(_)
        ));
        assert_eq!(check(&[c("ConditionACPower", "true")]), Verdict::Met);
    }
}

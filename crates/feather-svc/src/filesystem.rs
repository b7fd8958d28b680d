//! A unit's filesystem sandboxing settings (`ProtectSystem=`, `ProtectHome=`,
//! `ReadWritePaths=`, `ReadOnlyPaths=`, `InaccessiblePaths=`, `ProtectControlGroups=`, and
//! the ones the VM already enforces), read as systemd reads them, and what each path of the
//! filesystem becomes under them: writable, read-only or inaccessible.
//!
//! systemd makes these views with a mount namespace per service; a VM's processes cannot
//! (no `CAP_SYS_ADMIN`), so `manager/filesystem.rs` gives the same access with a Landlock
//! domain of the unit's own. This module only says which path gets which [`Access`].

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::SettingError;
use crate::values;

/// `ProtectSystem=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectSystem {
    #[default]
    No,
    /// `/usr`, `/boot`, `/efi` read-only.
    Yes,
    /// Those and `/etc`.
    Full,
    /// Everything but `/dev`, `/proc`, `/sys` and the unit's writable paths.
    Strict,
}

/// `ProtectHome=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtectHome {
    #[default]
    No,
    /// `/home`, `/root`, `/run/user` inaccessible.
    Yes,
    ReadOnly,
    /// systemd mounts empty read-only tmpfs there: their content hidden, as with `yes`.
    Tmpfs,
}

/// What a process of the unit may do beneath a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Ordered from the most restrictive: for one path named twice, the first wins.
    Inaccessible,
    ReadOnly,
    ReadWrite,
}

/// One path of `ReadWritePaths=` and its kin; `optional` (a `-` prefix): ignored when it does
/// not exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathSetting {
    pub path: PathBuf,
    pub optional: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FilesystemSettings {
    pub protect_system: ProtectSystem,
    pub protect_home: ProtectHome,
    pub read_write_paths: Vec<PathSetting>,
    pub read_only_paths: Vec<PathSetting>,
    pub inaccessible_paths: Vec<PathSetting>,
    pub protect_control_groups: bool,
    /// `/proc/sys`, `/sys` and the other kernel tunables: read-only in every VM already.
    pub protect_kernel_tunables: bool,
    /// `/dev/kmsg`, `/proc/kmsg`, `syslog(2)`: out of every VM's reach already.
    pub protect_kernel_logs: bool,
    /// `ProtectKernelModules=`: the module folders inaccessible (its capability and filter
    /// are `manager/protections.rs`'s; the unit parser sets both from the one key).
    pub protect_kernel_modules: bool,
    /// `PrivateTmp=`: `/tmp` and `/var/tmp` are folders of the unit's own (the VM's spawner
    /// makes its processes, docs/services.md), writable under `ProtectSystem=strict`.
    pub private_tmp: bool,
}

/// The settings of this module, as `apply` reads them.
pub const KEYS: [&str; 9] = [
    "ProtectSystem",
    "ProtectHome",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ProtectControlGroups",
    "ProtectKernelTunables",
    "ProtectKernelLogs",
    "PrivateTmp",
];

impl FilesystemSettings {
    /// Reads one assignment of a key of [`KEYS`]; `expanded` is its value with specifiers
    /// resolved.
    pub fn apply(&mut self, key: &str, expanded: &str) -> Result<(), SettingError> {
        let raw = expanded.trim();
        match key {
            "ProtectSystem" => self.protect_system = protect_system(raw)?,
            "ProtectHome" => self.protect_home = protect_home(raw)?,
            "ReadWritePaths" => path_list(&mut self.read_write_paths, key, raw)?,
            "ReadOnlyPaths" => path_list(&mut self.read_only_paths, key, raw)?,
            "InaccessiblePaths" => path_list(&mut self.inaccessible_paths, key, raw)?,
            "ProtectControlGroups" => self.protect_control_groups = values::boolean(raw)?,
            "ProtectKernelTunables" => self.protect_kernel_tunables = values::boolean(raw)?,
            "ProtectKernelLogs" => self.protect_kernel_logs = values::boolean(raw)?,
            "PrivateTmp" => self.private_tmp = values::boolean(raw)?,
            _ => {}
        }
        Ok(())
    }

    /// The settings that need a Landlock domain of the unit's own, as `Section.Key` names;
    /// empty when the unit has none.
    pub fn confining_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.protect_system != ProtectSystem::No {
            keys.push("ProtectSystem");
        }
        if self.protect_home != ProtectHome::No {
            keys.push("ProtectHome");
        }
        for (key, list) in [
            ("ReadWritePaths", &self.read_write_paths),
            ("ReadOnlyPaths", &self.read_only_paths),
            ("InaccessiblePaths", &self.inaccessible_paths),
        ] {
            if !list.is_empty() {
                keys.push(key);
            }
        }
        if self.protect_control_groups {
            keys.push("ProtectControlGroups");
        }
        if self.protect_kernel_modules {
            keys.push("ProtectKernelModules");
        }
        keys
    }

    /// Every path these settings name, with its access, in systemd's terms: `writable` are
    /// the unit's `RuntimeDirectory=`, `StateDirectory=`, `CacheDirectory=` and
    /// `LogsDirectory=` folders, which systemd leaves writable whatever else is read-only.
    /// `/` is always in the list (read-only under `ProtectSystem=strict`, else writable).
    pub fn entries(&self, writable: &[PathBuf]) -> Vec<Entry> {
        let mut entries = vec![Entry::fixed("/", self.root_access())];
        let fixed = |paths: &[&'static str], access| -> Vec<Entry> {
            paths.iter().map(|p| Entry::optional(p, access)).collect()
        };
        match self.protect_system {
            ProtectSystem::No => {}
            ProtectSystem::Yes => entries.extend(fixed(&SYSTEM, Access::ReadOnly)),
            ProtectSystem::Full => {
                entries.extend(fixed(&SYSTEM, Access::ReadOnly));
                entries.push(Entry::optional("/etc", Access::ReadOnly));
            }
            ProtectSystem::Strict => {
                entries.extend(fixed(&API_FILESYSTEMS, Access::ReadWrite));
                if self.private_tmp {
                    entries.extend(fixed(&TEMPORARY, Access::ReadWrite));
                }
            }
        }
        match self.protect_home {
            ProtectHome::No => {}
            ProtectHome::Yes | ProtectHome::Tmpfs => {
                entries.extend(fixed(&HOMES, Access::Inaccessible))
            }
            ProtectHome::ReadOnly => entries.extend(fixed(&HOMES, Access::ReadOnly)),
        }
        if self.protect_control_groups {
            entries.push(Entry::optional("/sys/fs/cgroup", Access::ReadOnly));
        }
        if self.protect_kernel_modules {
            entries.extend(fixed(&MODULES, Access::Inaccessible));
        }
        entries.extend(
            writable
                .iter()
                .map(|p| Entry::optional(p, Access::ReadWrite)),
        );
        for (list, access, setting) in [
            (&self.read_write_paths, Access::ReadWrite, "ReadWritePaths"),
            (&self.read_only_paths, Access::ReadOnly, "ReadOnlyPaths"),
            (
                &self.inaccessible_paths,
                Access::Inaccessible,
                "InaccessiblePaths",
            ),
        ] {
            entries.extend(list.iter().map(|p| Entry {
                path: p.path.clone(),
                access,
                optional: p.optional,
                setting,
            }));
        }
        entries
    }

    fn root_access(&self) -> Access {
        if self.protect_system == ProtectSystem::Strict {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        }
    }
}

/// `ProtectSystem=yes`: the vendor's programs and the boot loader's folders.
const SYSTEM: [&str; 3] = ["/usr", "/boot", "/efi"];
/// What `ProtectSystem=strict` leaves writable (the settings that protect them are
/// `PrivateDevices=`, `ProtectKernelTunables=`, `ProtectControlGroups=`).
const API_FILESYSTEMS: [&str; 3] = ["/dev", "/proc", "/sys"];
/// `PrivateTmp=`'s folders.
const TEMPORARY: [&str; 2] = ["/tmp", "/var/tmp"];
/// `ProtectKernelModules=`'s folders (where `/lib` is not a link to `/usr/lib`, both).
const MODULES: [&str; 2] = ["/usr/lib/modules", "/lib/modules"];
/// `ProtectHome=`'s folders.
const HOMES: [&str; 3] = ["/home", "/root", "/run/user"];

/// One path and its access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub access: Access,
    /// Skipped when it does not exist (systemd's own paths, and `-` ones).
    pub optional: bool,
    /// The setting that names it, for messages.
    pub setting: &'static str,
}

impl Entry {
    fn fixed(path: impl AsRef<Path>, access: Access) -> Entry {
        Entry {
            path: path.as_ref().to_path_buf(),
            access,
            optional: false,
            setting: "ProtectSystem",
        }
    }

    fn optional(path: impl AsRef<Path>, access: Access) -> Entry {
        Entry {
            optional: true,
            ..Entry::fixed(path, access)
        }
    }
}

/// The access of every path of `entries` once they are combined as systemd's mounts combine
/// them: a deeper path decides for what is beneath it, except beneath an inaccessible one
/// (nothing can be nested in it); a path named twice takes its most restrictive access.
/// `entries` must hold resolved (absolute, link-free) paths.
pub fn combine(entries: &[(PathBuf, Access)]) -> Vec<(PathBuf, Access)> {
    let mut sorted: Vec<(PathBuf, Access)> = entries.to_vec();
    sorted.sort();
    sorted.dedup_by(|later, first| later.0 == first.0);
    let hidden: Vec<PathBuf> = sorted
        .iter()
        .filter(|(_, access)| *access == Access::Inaccessible)
        .map(|(path, _)| path.clone())
        .collect();
    sorted
        .into_iter()
        .filter(|(path, _)| !hidden.iter().any(|h| path != h && path.starts_with(h)))
        .collect()
}

/// The access `combined` gives at `path`: that of the deepest entry at or above it.
pub fn access_at(combined: &[(PathBuf, Access)], path: &Path) -> Access {
    combined
        .iter()
        .filter(|(p, _)| path.starts_with(p))
        .max_by_key(|(p, _)| p.components().count())
        .map_or(Access::ReadWrite, |(_, access)| *access)
}

/// What a Landlock domain grants, as rules: each path and the access granted beneath it
/// (`Inaccessible` is no right). Landlock can only add rights along a path, never take one
/// away below, so a path stricter than a folder above it is made by granting that folder
/// only what everything beneath it shares, and the rest to each of its other entries, at
/// every level down to the strict path ([`Child`]ren from `list`; links are skipped, their
/// targets have rules of their own). Entries made later in such a folder get only what the
/// folder was granted.
pub fn rules<E>(
    combined: &[(PathBuf, Access)],
    list: &mut dyn FnMut(&Path) -> Result<Vec<Child>, E>,
) -> Result<Vec<(PathBuf, Access)>, E> {
    let mut plan = Plan {
        entries: combined,
        rules: Vec::new(),
    };
    let root = Path::new("/");
    let access = plan.access_of(root).unwrap_or(Access::ReadWrite);
    plan.visit(root, access, Access::Inaccessible, list)?;
    Ok(plan.rules)
}

/// An entry of a folder.
#[derive(Clone, Debug)]
pub struct Child {
    pub path: PathBuf,
    pub is_link: bool,
}

struct Plan<'a> {
    entries: &'a [(PathBuf, Access)],
    rules: Vec<(PathBuf, Access)>,
}

impl Plan<'_> {
    fn access_of(&self, path: &Path) -> Option<Access> {
        self.entries
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, access)| *access)
    }

    fn beneath<'b>(&'b self, path: &'b Path) -> impl Iterator<Item = &'b (PathBuf, Access)> {
        self.entries
            .iter()
            .filter(move |(p, _)| p != path && p.starts_with(path))
    }

    /// Grants `node` its `target` access, given the access `inherited` from the rules above.
    fn visit<E>(
        &mut self,
        node: &Path,
        target: Access,
        inherited: Access,
        list: &mut dyn FnMut(&Path) -> Result<Vec<Child>, E>,
    ) -> Result<(), E> {
        let floor = self
            .beneath(node)
            .map(|(_, access)| *access)
            .fold(target, Access::min);
        if floor > inherited {
            self.rules.push((node.to_path_buf(), floor));
        }
        let have = inherited.max(floor);
        if floor == target {
            // Nothing beneath is stricter: only what is looser needs rules of its own.
            let looser: Vec<(PathBuf, Access)> = self
                .beneath(node)
                .filter(|(p, _)| !self.beneath(node).any(|(q, _)| q != p && p.starts_with(q)))
                .cloned()
                .collect();
            for (path, access) in looser {
                self.visit(&path, access, have, list)?;
            }
            return Ok(());
        }
        for child in list(node)? {
            if child.is_link {
                continue;
            }
            if let Some(access) = self.access_of(&child.path) {
                self.visit(&child.path, access, have, list)?;
            } else if self.beneath(&child.path).next().is_some() {
                self.visit(&child.path, target, have, list)?;
            } else if target > have {
                self.rules.push((child.path, target));
            }
        }
        Ok(())
    }
}

fn protect_system(raw: &str) -> Result<ProtectSystem, SettingError> {
    Ok(match raw {
        "" => ProtectSystem::No,
        "full" => ProtectSystem::Full,
        "strict" => ProtectSystem::Strict,
        other => match values::boolean(other) {
            Ok(true) => ProtectSystem::Yes,
            Ok(false) => ProtectSystem::No,
            Err(_) => return Err(unknown("ProtectSystem", other)),
        },
    })
}

fn protect_home(raw: &str) -> Result<ProtectHome, SettingError> {
    Ok(match raw {
        "" => ProtectHome::No,
        "read-only" => ProtectHome::ReadOnly,
        "tmpfs" => ProtectHome::Tmpfs,
        other => match values::boolean(other) {
            Ok(true) => ProtectHome::Yes,
            Ok(false) => ProtectHome::No,
            Err(_) => return Err(unknown("ProtectHome", other)),
        },
    })
}

fn unknown(key: &'static str, value: &str) -> SettingError {
    SettingError::UnknownValue {
        key,
        value: value.to_owned(),
    }
}

/// A list setting: the empty value resets it; each word may start with `-` (ignored when
/// missing) and then `+` (relative to `RootDirectory=`, which a VM's units do not have: the
/// VM's root).
fn path_list(list: &mut Vec<PathSetting>, key: &str, raw: &str) -> Result<(), SettingError> {
    if raw.is_empty() {
        list.clear();
        return Ok(());
    }
    for word in raw.split_whitespace() {
        let (optional, rest) = match word.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, word),
        };
        let path = rest.strip_prefix('+').unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(SettingError::NotAbsolute {
                key: key.to_owned(),
                word: word.to_owned(),
            });
        }
        list.push(PathSetting {
            path: PathBuf::from(path),
            optional,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_at_a_path_is_that_of_the_deepest_entry_above_it() {
        let combined = [
            (PathBuf::from("/"), Access::ReadWrite),
            (PathBuf::from("/usr"), Access::ReadOnly),
            (PathBuf::from("/srv/hidden"), Access::Inaccessible),
        ];
        assert_eq!(access_at(&combined, Path::new("/tmp")), Access::ReadWrite);
        assert_eq!(
            access_at(&combined, Path::new("/usr/lib")),
            Access::ReadOnly
        );
        assert_eq!(
            access_at(&combined, Path::new("/srv/hidden/x")),
            Access::Inaccessible
        );
        assert_eq!(access_at(&[], Path::new("/tmp")), Access::ReadWrite);
    }

    fn read(lines: &[(&str, &str)]) -> FilesystemSettings {
        let mut settings = FilesystemSettings::default();
        for (key, value) in lines {
            settings.apply(key, value).unwrap();
        }
        settings
    }

    fn paths(entries: &[Entry]) -> Vec<(String, Access, bool)> {
        entries
            .iter()
            .map(|e| (e.path.display().to_string(), e.access, e.optional))
            .collect()
    }

    #[test]
    fn protect_system_levels_name_systemds_folders() {
        let yes = read(&[("ProtectSystem", "yes")]).entries(&[]);
        assert_eq!(
            paths(&yes),
            [
                ("/".into(), Access::ReadWrite, false),
                ("/usr".into(), Access::ReadOnly, true),
                ("/boot".into(), Access::ReadOnly, true),
                ("/efi".into(), Access::ReadOnly, true),
            ]
        );
        let full = read(&[("ProtectSystem", "full")]).entries(&[]);
        assert!(paths(&full).contains(&("/etc".into(), Access::ReadOnly, true)));
        let strict = read(&[("ProtectSystem", "strict"), ("PrivateTmp", "yes")])
            .entries(&[PathBuf::from("/var/lib/redis")]);
        let strict = paths(&strict);
        assert_eq!(strict[0], ("/".into(), Access::ReadOnly, false));
        for writable in [
            "/dev",
            "/proc",
            "/sys",
            "/tmp",
            "/var/tmp",
            "/var/lib/redis",
        ] {
            assert!(
                strict.contains(&(writable.into(), Access::ReadWrite, true)),
                "{writable}: {strict:?}"
            );
        }
        assert!(read(&[("ProtectSystem", "no")]).confining_keys().is_empty());
        let error = FilesystemSettings::default()
            .apply("ProtectSystem", "sometimes")
            .unwrap_err();
        assert_eq!(error.to_string(), "unknown ProtectSystem=sometimes");
    }

    #[test]
    fn path_lists_take_prefixes_and_reset() {
        let settings = read(&[
            ("ReadWritePaths", "/a"),
            ("ReadWritePaths", ""),
            ("ReadWritePaths", "-/var/lib/redis -+/srv"),
            ("InaccessiblePaths", "+/secret"),
        ]);
        assert_eq!(
            settings.read_write_paths,
            [
                PathSetting {
                    path: "/var/lib/redis".into(),
                    optional: true
                },
                PathSetting {
                    path: "/srv".into(),
                    optional: true
                },
            ]
        );
        assert_eq!(settings.inaccessible_paths[0].path, Path::new("/secret"));
        assert!(!settings.inaccessible_paths[0].optional);
        assert_eq!(
            settings.confining_keys(),
            ["ReadWritePaths", "InaccessiblePaths"]
        );
        let mut bad = FilesystemSettings::default();
        let error = bad.apply("ReadOnlyPaths", "var/lib").unwrap_err();
        assert!(error.to_string().contains("ReadOnlyPaths"), "{error}");
    }

    #[test]
    fn protect_home_hides_or_freezes_the_homes() {
        for (value, access) in [
            ("yes", Access::Inaccessible),
            ("tmpfs", Access::Inaccessible),
            ("read-only", Access::ReadOnly),
        ] {
            let entries = paths(&read(&[("ProtectHome", value)]).entries(&[]));
            for home in HOMES {
                assert!(
                    entries.contains(&(home.into(), access, true)),
                    "{value}: {entries:?}"
                );
            }
        }
    }

    /// A small tree: `/` holds etc, home, run, srv, usr and the link bin; `/run` holds user
    /// and nginx.pid; `/srv` holds a, b.
    fn tree(path: &Path) -> Result<Vec<Child>, String> {
        let names: &[&str] = match path.to_str() {
            Some("/") => &["bin", "etc", "home", "run", "srv", "usr"],
            Some("/run") => &["nginx.pid", "user"],
            Some("/srv") => &["a", "b"],
            other => return Err(format!("{other:?} listed")),
        };
        Ok(names
            .iter()
            .map(|name| Child {
                path: path.join(name),
                is_link: *name == "bin",
            })
            .collect())
    }

    fn planned(entries: &[(&str, Access)]) -> Vec<(String, Access)> {
        let entries: Vec<(PathBuf, Access)> = entries.iter().map(|(p, a)| (p.into(), *a)).collect();
        rules(&combine(&entries), &mut tree)
            .unwrap()
            .into_iter()
            .map(|(p, a)| (p.display().to_string(), a))
            .collect()
    }

    #[test]
    fn looser_paths_beneath_a_strict_one_are_single_rules() {
        use Access::*;
        // ProtectSystem=strict with a writable path: no folder is listed.
        assert_eq!(
            planned(&[("/", ReadOnly), ("/srv/a", ReadWrite), ("/proc", ReadWrite)]),
            [
                ("/".into(), ReadOnly),
                ("/proc".into(), ReadWrite),
                ("/srv/a".into(), ReadWrite),
            ]
        );
    }

    #[test]
    fn a_stricter_path_splits_the_folders_above_it() {
        use Access::*;
        // ProtectSystem=yes: / keeps reading, its other entries get everything; the link is
        // left to its target's rules.
        assert_eq!(
            planned(&[("/", ReadWrite), ("/usr", ReadOnly)]),
            [
                ("/".into(), ReadOnly),
                ("/etc".into(), ReadWrite),
                ("/home".into(), ReadWrite),
                ("/run".into(), ReadWrite),
                ("/srv".into(), ReadWrite),
            ]
        );
        // An inaccessible path two levels down: / and /run get nothing themselves.
        assert_eq!(
            planned(&[
                ("/", ReadWrite),
                ("/run/user", Inaccessible),
                ("/usr", ReadOnly)
            ]),
            [
                ("/etc".into(), ReadWrite),
                ("/home".into(), ReadWrite),
                ("/run/nginx.pid".into(), ReadWrite),
                ("/srv".into(), ReadWrite),
                ("/usr".into(), ReadOnly),
            ]
        );
        // Read-only everywhere but a hidden folder: reading / is granted to what / holds.
        assert_eq!(
            planned(&[
                ("/", ReadOnly),
                ("/srv/b", Inaccessible),
                ("/srv/a", ReadWrite)
            ]),
            [
                ("/etc".into(), ReadOnly),
                ("/home".into(), ReadOnly),
                ("/run".into(), ReadOnly),
                ("/srv/a".into(), ReadWrite),
                ("/usr".into(), ReadOnly),
            ]
        );
    }

    #[test]
    fn combining_keeps_the_strictest_and_nothing_beneath_a_hidden_path() {
        let combined = combine(&[
            ("/".into(), Access::ReadWrite),
            ("/srv".into(), Access::ReadWrite),
            ("/srv".into(), Access::ReadOnly),
            ("/secret".into(), Access::Inaccessible),
            ("/secret/open".into(), Access::ReadWrite),
            ("/secretive".into(), Access::ReadOnly),
        ]);
        assert_eq!(
            combined,
            [
                ("/".into(), Access::ReadWrite),
                ("/secret".into(), Access::Inaccessible),
                ("/secretive".into(), Access::ReadOnly),
                ("/srv".into(), Access::ReadOnly),
            ]
        );
    }
}

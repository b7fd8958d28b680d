//! A unit's filesystem settings (`crate::filesystem`) as a Landlock domain of its own, nested
//! in the VM's: made here in the manager (the ruleset, with one rule per path), entered by the
//! unit's process just before its program runs (`raw.rs`), after `no_new_privs`, which
//! Landlock needs from a process without `CAP_SYS_ADMIN`, and before the seccomp filters,
//! which may not allow `landlock_restrict_self`.
//!
//! The VM's own domain handles only scoping (signals, abstract sockets); this one handles only
//! filesystem rights, so it narrows what a unit may reach on disk and nothing else.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use landlock::{
    Access as _, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, ABI,
};

use crate::filesystem::{self, Access, Child};
use crate::unit::{DirectoryKind, Unit};

#[derive(Debug, thiserror::Error)]
pub enum FilesystemError {
    #[error("{setting}={}: {error} (prefix it with '-' to skip it where it does not exist)", path.display())]
    Path {
        setting: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot list {} to confine the unit beneath it: {error}", path.display())]
    List {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot open {} for a Landlock rule: {error}", path.display())]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("Landlock: {0}")]
    Landlock(String),
}

/// The running kernel's Landlock ABI; `Unsupported` without Landlock.
pub fn kernel_abi() -> ABI {
    ABI::from(feather_sys::seccomp::landlock_abi() as i32)
}

/// Why `unit`'s filesystem settings cannot be applied, if they cannot: `no_new_privileges`
/// says whether its processes get `no_new_privs`.
pub fn not_applicable(unit: &Unit, no_new_privileges: bool) -> Option<String> {
    if unit.exec.filesystem.confining_keys().is_empty() {
        return None;
    }
    if !no_new_privileges {
        return Some(
            "a Landlock domain needs no_new_privs, and the unit neither sets NoNewPrivileges= \
             nor a setting that implies it (systemd applies them with a mount namespace of the \
             service's own, without no_new_privs; adding it could break the set-user-ID \
             programs the unit runs)"
                .into(),
        );
    }
    if kernel_abi() == ABI::Unsupported {
        return Some("the kernel has no Landlock".into());
    }
    None
}

/// The Landlock ruleset of `unit`'s filesystem settings, ready for `landlock_restrict_self`;
/// None when it has none (or they cannot be applied: see [`not_applicable`]).
///
/// `private_tmp`: the unit's folders (`PrivateTmp=`), which its processes see at `/tmp` and
/// `/var/tmp`, get the unit's access to those (writable, unless a setting names them), by
/// rules on their own inodes: Landlock walks a path up through the mounts skipping the folder
/// a mount covers, so a rule for `/tmp`, or for `/` above it, does not reach the root of the
/// bind mount at `/tmp`.
pub fn ruleset(unit: &Unit, private_tmp: Option<&str>) -> Result<Option<OwnedFd>, FilesystemError> {
    let settings = &unit.exec.filesystem;
    let abi = kernel_abi();
    if settings.confining_keys().is_empty() || abi == ABI::Unsupported {
        return Ok(None);
    }
    let entries = resolve(&settings.entries(&writable_directories(unit)))?;
    let combined = filesystem::combine(&entries);
    let mut rules = filesystem::rules(&combined, &mut list)?;
    if let Some(folder) = private_tmp {
        // What the unit sees at /tmp and /var/tmp are its folders: each gets, by a rule of
        // its own (never left to one above it, which the walk up from the mount skips), the
        // access the unit would have at /tmp or /var/tmp.
        for root in crate::private_tmp::TEMPORARY_ROOTS {
            let access = filesystem::access_at(&combined, Path::new(root));
            rules.push((crate::private_tmp::private_folder(root, folder), access));
        }
    }
    let landlock = |e: &dyn std::fmt::Display| FilesystemError::Landlock(e.to_string());
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|ruleset| ruleset.create())
        .map_err(|e| landlock(&e))?;
    for (path, access) in rules {
        let Some((fd, is_dir)) = open(&path)? else {
            // Gone, or a link now, since it was listed: it needs no rule (a link's target
            // has its own), and one made again gets its folder's access.
            continue;
        };
        let rights = rights(abi, access, is_dir);
        if rights.is_empty() {
            continue;
        }
        created = created
            .add_rule(PathBeneath::new(fd, rights))
            .map_err(|e| landlock(&e))?;
    }
    Ok(Option::<OwnedFd>::from(created))
}

/// The unit's own folders that systemd keeps writable under any of these settings:
/// `RuntimeDirectory=`, `StateDirectory=`, `CacheDirectory=`, `LogsDirectory=` (not
/// `ConfigurationDirectory=`, which stays as `ProtectSystem=` leaves `/etc`).
fn writable_directories(unit: &Unit) -> Vec<PathBuf> {
    DirectoryKind::ALL
        .into_iter()
        .filter(|kind| *kind != DirectoryKind::Configuration)
        .flat_map(|kind| {
            unit.exec
                .directories(kind)
                .paths
                .iter()
                .map(move |rel| Path::new(kind.root()).join(rel))
        })
        .collect()
}

/// Each entry's path with its links resolved, as systemd resolves them; a missing optional one
/// is left out, a missing required one fails the start, as under systemd.
fn resolve(entries: &[filesystem::Entry]) -> Result<Vec<(PathBuf, Access)>, FilesystemError> {
    let mut resolved = Vec::new();
    for entry in entries {
        match std::fs::canonicalize(&entry.path) {
            Ok(path) => resolved.push((path, entry.access)),
            Err(_) if entry.optional => {}
            Err(error) => {
                return Err(FilesystemError::Path {
                    setting: entry.setting,
                    path: entry.path.clone(),
                    error,
                })
            }
        }
    }
    Ok(resolved)
}

fn list(folder: &Path) -> Result<Vec<Child>, FilesystemError> {
    let failed = |error| FilesystemError::List {
        path: folder.to_path_buf(),
        error,
    };
    let mut children = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        let kind = entry.file_type().map_err(failed)?;
        children.push(Child {
            path: entry.path(),
            is_link: kind.is_symlink(),
        });
    }
    Ok(children)
}

/// `path` opened for a rule, without following a final link, and whether it is a folder;
/// None if it vanished or became a link since it was listed (a link is never granted its
/// target's access through its own name).
fn open(path: &Path) -> Result<Option<(OwnedFd, bool)>, FilesystemError> {
    let failed = |error| FilesystemError::Open {
        path: path.to_path_buf(),
        error,
    };
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(failed(error)),
    };
    // O_PATH with O_NOFOLLOW opens a final link itself rather than failing.
    let kind = file.metadata().map_err(failed)?.file_type();
    if kind.is_symlink() {
        return Ok(None);
    }
    Ok(Some((file.into(), kind.is_dir())))
}

/// The rights `access` stands for on this kernel. Read-only keeps executing, reading, listing,
/// device ioctls and connecting to unix sockets (a read-only mount allows them all); it
/// leaves out writing, truncating, making, removing and renaming. A file takes only the
/// rights that apply to files.
fn rights(abi: ABI, access: Access, is_dir: bool) -> BitFlags<AccessFs> {
    let all = AccessFs::from_all(abi);
    let granted = match access {
        Access::ReadWrite => all,
        Access::ReadOnly => {
            AccessFs::from_read(abi) | (all & (AccessFs::IoctlDev | AccessFs::ResolveUnix))
        }
        Access::Inaccessible => BitFlags::EMPTY,
    };
    if is_dir {
        granted
    } else {
        granted & AccessFs::from_file(abi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystem::PathSetting;

    /// Runs `script` under a unit's domain made from `settings`, as the manager's spawn hook
    /// enters it (no_new_privs first); the test runs on the host, outside any VM.
    fn run_confined(
        settings: crate::filesystem::FilesystemSettings,
        script: &str,
    ) -> std::process::Output {
        let mut unit = Unit::new(crate::name::UnitName::parse("probe.service").unwrap());
        unit.exec.filesystem = settings;
        let ruleset = ruleset(&unit, None).unwrap().map(std::sync::Arc::new);
        assert!(ruleset.is_some(), "this kernel has Landlock");
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", script]);
        crate::raw::install(
            &mut command,
            crate::raw::ProcessSetup {
                no_new_privileges: true,
                landlock: ruleset,
                ..crate::raw::ProcessSetup::plain()
            },
        );
        command.output().expect("sh runs")
    }

    /// A folder of the test's own, removed when the test ends, also when it fails.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_domain_refuses_what_the_settings_protect_and_nothing_else() {
        let scratch = Scratch(
            std::env::temp_dir().join(format!("feather-svc-landlock-{}", std::process::id())),
        );
        let base = scratch.0.clone();
        for folder in ["ro", "hidden", "rw"] {
            std::fs::create_dir_all(base.join(folder)).unwrap();
        }
        std::fs::write(base.join("hidden/secret"), "secret\n").unwrap();
        std::fs::write(base.join("ro/file"), "file\n").unwrap();
        let at = |rel: &str| PathSetting {
            path: base.join(rel),
            optional: false,
        };
        let settings = crate::filesystem::FilesystemSettings {
            read_only_paths: vec![at("ro")],
            inaccessible_paths: vec![at("hidden")],
            ..Default::default()
        };
        let script = format!(
            "cd {}; echo x > ro/new && echo ro-written; cat ro/file; \
             cat hidden/secret && echo hidden-read; echo x > rw/new && echo rw-written",
            base.display()
        );
        let confined = run_confined(settings, &script);
        let free = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        drop(scratch);
        let out = String::from_utf8_lossy(&confined.stdout);
        let err = String::from_utf8_lossy(&confined.stderr);
        assert_eq!(out, "file\nrw-written\n", "{err}");
        assert!(err.contains("Permission denied"), "{err}");
        assert_eq!(
            String::from_utf8_lossy(&free.stdout),
            "ro-written\nfile\nsecret\nhidden-read\nrw-written\n"
        );
    }

    #[test]
    fn read_only_leaves_out_every_change() {
        let abi = ABI::V7;
        let read_only = rights(abi, Access::ReadOnly, true);
        for change in [
            AccessFs::WriteFile,
            AccessFs::Truncate,
            AccessFs::MakeReg,
            AccessFs::MakeDir,
            AccessFs::RemoveFile,
            AccessFs::RemoveDir,
            AccessFs::Refer,
        ] {
            assert!(!read_only.contains(change), "{change:?}");
        }
        assert!(read_only.contains(AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::Execute));
        assert_eq!(
            rights(abi, Access::ReadWrite, true),
            AccessFs::from_all(abi)
        );
        assert!(!rights(abi, Access::ReadWrite, false).contains(AccessFs::ReadDir));
        assert!(rights(abi, Access::Inaccessible, true).is_empty());
    }
}

//! The host-wide registry of the runtime roots (`--root`) feather-oci was used with, so that
//! feather's own tools find OCI containers wherever their engine keeps them: containerd's
//! runc shim gives `/run/containerd/runc/<namespace>`, podman and Docker roots of their own.
//!
//! One file per root in [`REGISTRY_DIR`], named by a hash of the root's canonical path and
//! holding that path; written atomically, and only by a `create` that does not find it there
//! already, so concurrent creates of different roots never contend. The registry lives in
//! `/run`: containers do not outlive a reboot, and neither do most runtime roots. Entries of
//! roots that are gone are dropped when the registry is read.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use feather_core::registered_path;
use feather_core::warning_stamps::WarningStamps;

/// Where the registry lives: root-only, like the runtime roots it names.
pub const REGISTRY_DIR: &str = "/run/feather-oci/roots";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("runtime root {}: {source}", .root.display())]
    Root {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot record runtime root {} in {}: {source} (make {} writable for root; feather ls will not list its containers)", .root.display(), .registry.display(), .registry.display())]
    Write {
        root: PathBuf,
        registry: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct RootRegistry {
    dir: PathBuf,
}

impl RootRegistry {
    /// The host's registry.
    pub fn host() -> RootRegistry {
        RootRegistry::at(PathBuf::from(REGISTRY_DIR))
    }

    /// A registry in another folder (for unit tests).
    pub fn at(dir: PathBuf) -> RootRegistry {
        RootRegistry { dir }
    }

    /// Records `root`, a folder that exists. Does nothing when it is known already.
    pub fn register(&self, root: &Path) -> Result<(), RegistryError> {
        let root = fs::canonicalize(root).map_err(|source| RegistryError::Root {
            root: root.to_owned(),
            source,
        })?;
        let entry = self.dir.join(entry_name(&root));
        if fs::read(&entry).is_ok_and(|known| known == root.as_os_str().as_bytes()) {
            return Ok(());
        }
        self.write(&entry, &root)
            .map_err(|source| RegistryError::Write {
                root: root.clone(),
                registry: self.dir.clone(),
                source,
            })
    }

    fn write(&self, entry: &Path, root: &Path) -> std::io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        // One temporary name per process: concurrent creates of one root race harmlessly.
        let temporary = entry.with_extension(format!("tmp{}", std::process::id()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)?;
        file.write_all(root.as_os_str().as_bytes())?;
        drop(file);
        fs::rename(&temporary, entry)
    }

    /// Every registered root that still exists and that no user but root can change
    /// ([`crate::store::check_root`]: its records are trusted, a container's rootfs diffed or
    /// its init joined as root), sorted. Entries of roots that are gone are removed on the
    /// way; a root that fails the check is passed over with a warning.
    pub fn roots(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        // Said once, as the host's fault: each root's refusal would say it again, with advice
        // to forget entries of roots that are fine.
        if let Err(why) = feather_core::strict_modes::users_mount_points() {
            let said = format!(
                "no registered OCI runtime root is looked at: {why}; their containers are not \
                 listed nor looked up until then (their registry entries stay)"
            );
            let said = feather_core::display::escape_controls_by_line(&said);
            eprintln!("feather: warning: {said}");
            return Vec::new();
        }
        WarningStamps::of_registry(&self.dir).sweep();
        let mut roots = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "root") {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else {
                continue;
            };
            let root = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
            // A link on the way is followed only where root alone could have placed it, as
            // feather's own registry is read (`feather_core::registered_path`).
            match registered_path::resolve(&root) {
                Ok(found) if !found.exists => {
                    let _ = fs::remove_file(&path);
                    WarningStamps::of_registry(&self.dir).forget(&path);
                }
                Ok(found) if fs::symlink_metadata(&found.path).is_ok_and(|m| m.is_dir()) => {
                    match crate::store::check_root(&found.path) {
                        Ok(()) => roots.push(found.path),
                        Err(why) => {
                            let advice = format!(
                                "If the runtime root is no longer in use, remove its entry {}",
                                path.display()
                            );
                            self.passed_over(&path, &format!("{why:#}"), &advice)
                        }
                    }
                }
                Ok(_) => {}
                Err(why) => self.passed_over(&path, &why.to_string(), &why.advice(&path)),
            }
        }
        roots.sort();
        roots.dedup();
        roots
    }

    /// Warns that the runtime root registered in `entry` is passed over because `why` (which
    /// names the root; `advice` names `entry`), once a day unless someone looks, as feather's
    /// own registry does (`feather_core::warning_stamps`): every call of an engine's reads it.
    fn passed_over(&self, entry: &Path, why: &str, advice: &str) {
        let warning = format!(
            "a registered OCI runtime root is passed over: {why}; its containers are not listed \
             nor looked up, nor is any state root hidden in them. {advice}"
        );
        WarningStamps::of_registry(&self.dir).say(entry, &warning);
    }
}

/// FNV-1a of the path: stable across builds (std's hasher is not promised to be), short
/// enough for a file name whatever the path's length.
fn entry_name(root: &Path) -> String {
    let hash = feather_sys::fnv::fnv1a_64(root.as_os_str().as_bytes());
    format!("{hash:016x}.root")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_recorded_once_and_forgotten_when_gone() {
        let scratch = feather_testkit::ScratchDir::new("oci-registry-once");
        let dir = scratch.0.clone();
        let registry = RootRegistry::at(dir.join("registry"));
        let (a, b) = (dir.join("a"), dir.join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        registry.register(&a).unwrap();
        registry.register(&a).unwrap();
        registry.register(&dir.join("b/../b")).unwrap();
        assert_eq!(registry.roots(), [a.clone(), b.clone()]);
        fs::remove_dir(&b).unwrap();
        assert_eq!(registry.roots(), [a]);
        assert_eq!(fs::read_dir(dir.join("registry")).unwrap().count(), 1);
        assert!(registry.register(&b).is_err(), "a root that does not exist");
    }

    /// A registered runtime root in a folder a user owns (no link on the way) is passed over:
    /// its records are not listed, looked up, nor its inits joined, whatever they name.
    #[test]
    fn a_root_a_user_could_change_is_passed_over() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = feather_testkit::ScratchDir::new("oci-registry-users");
        let dir = fs::canonicalize(&scratch.0).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let registry = RootRegistry::at(dir.join("registry"));
        let root = dir.join("home-u/runtime");
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        registry.register(&root).unwrap();
        assert_eq!(registry.roots(), [root], "root's alone: listed");
        std::os::unix::fs::chown(dir.join("home-u"), Some(65534), Some(65534)).unwrap();
        assert!(registry.roots().is_empty(), "a user's folder above it");
        assert!(registry.roots().is_empty(), "read again");
        let count = |dir: PathBuf| fs::read_dir(dir).map(Iterator::count).ok();
        let registry_dir = dir.join("registry");
        let entries = fs::read_dir(&registry_dir).unwrap().flatten();
        let entries = entries.filter(|e| e.path().extension().is_some_and(|ext| ext == "root"));
        assert_eq!(entries.count(), 1, "the entry is kept");
        assert_eq!(
            count(registry_dir.join(feather_core::warning_stamps::STAMPS_DIR)),
            Some(1),
            "warned of once, its warning stamped"
        );
    }

    /// A registered runtime root a user swapped for a link (owning the folder holding it) is
    /// passed over, where root's own link is followed.
    #[test]
    fn a_root_a_user_swapped_for_a_link_is_passed_over() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = feather_testkit::ScratchDir::new("oci-registry-swapped");
        let dir = fs::canonicalize(&scratch.0).unwrap();
        let registry = RootRegistry::at(dir.join("registry"));
        let (parent, elsewhere) = (dir.join("parent"), dir.join("elsewhere"));
        fs::create_dir_all(parent.join("mid/root")).unwrap();
        fs::create_dir_all(elsewhere.join("root")).unwrap();
        registry.register(&parent.join("mid/root")).unwrap();
        // The folder above the root swapped: the root's own name is no link.
        fs::remove_dir_all(parent.join("mid")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, parent.join("mid")).unwrap();
        std::os::unix::fs::chown(&parent, Some(65534), Some(65534)).unwrap();
        assert!(registry.roots().is_empty(), "a user's link is not followed");
        std::os::unix::fs::chown(&parent, Some(0), Some(0)).unwrap();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            registry.roots(),
            [elsewhere.join("root")],
            "root's own link is followed"
        );
    }
}

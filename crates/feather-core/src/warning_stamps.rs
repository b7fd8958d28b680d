//! Warnings that hold until an admin acts (a registry's entry passed over), said once a day for
//! each entry and reason rather than by every command that meets them: every start of a VM
//! reads the registry of roots, two or three times (the front, its last look, the keeper), and
//! said the same lines each time, into every VM's log.
//!
//! One stamp per entry warned of, in a folder of the registry's own ([`STAMPS_DIR`], root's
//! and 0700 as the registry is): its text is the warning last said, its mtime when. A warning
//! is due where no stamp says it (none, or one saying another: the reason or the advice
//! changed), or where the stamp is [`EVERY`] old, or dated in the future (the clock set back
//! since). A stamp that cannot be read or written leaves the warning due every time: never
//! fewer warnings than without stamps. Written unsynced: a stamp lost to a power cut costs one
//! warning more.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::atomic::{write_atomic_private, Durability};
use crate::error::IoContext;
use crate::small_file;

/// The folder, in the registry's folder, of its warning stamps (not an entry: the registries
/// read only their entries' files).
pub const STAMPS_DIR: &str = "warned";

/// How often a warning that still holds is said again.
pub const EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// The most a stamp may weigh: a warning is a few lines.
const MAX_STAMP: u64 = 64 << 10;

/// The warning stamps of one registry.
pub struct WarningStamps {
    dir: PathBuf,
}

impl WarningStamps {
    /// The stamps of the registry in `folder`.
    pub fn of_registry(folder: &Path) -> WarningStamps {
        WarningStamps {
            dir: folder.join(STAMPS_DIR),
        }
    }

    /// Whether `warning`, about the registry's entry file `entry`, is to be said now; if so, it
    /// is stamped said.
    pub fn due(&self, entry: &Path, warning: &str) -> bool {
        let Some(stamp) = self.stamp_of(entry) else {
            return true;
        };
        if said_lately(&stamp, warning) {
            return false;
        }
        // Not stamped (a registry that cannot be written): said again next time.
        let _ = self.write(&stamp, warning);
        true
    }

    /// Forgets the stamp of the entry file `entry` (removed from the registry).
    pub fn forget(&self, entry: &Path) {
        if let Some(stamp) = self.stamp_of(entry) {
            let _ = fs::remove_file(stamp);
        }
    }

    /// The stamp of the entry file `entry`: by its name.
    fn stamp_of(&self, entry: &Path) -> Option<PathBuf> {
        Some(self.dir.join(entry.file_name()?))
    }

    fn write(&self, stamp: &Path, warning: &str) -> crate::error::Result<()> {
        if let Err(e) = fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e).at(&self.dir);
            }
        }
        write_atomic_private(stamp, warning.as_bytes(), Durability::Volatile)
    }
}

/// Whether the stamp `stamp` says `warning`, and was written less than [`EVERY`] ago.
fn said_lately(stamp: &Path, warning: &str) -> bool {
    let Ok(said) = small_file::read(stamp, MAX_STAMP) else {
        return false;
    };
    let age = fs::symlink_metadata(stamp)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|at| at.elapsed().ok());
    said == warning.as_bytes() && age.is_some_and(|age| age < EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn registry(label: &str) -> PathBuf {
        let dir = feather_testkit::unique_dir("warning-stamps", label);
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        dir
    }

    /// Dates the stamp of `name` at `at`.
    fn date(stamps: &WarningStamps, name: &str, at: SystemTime) {
        let file = fs::File::options()
            .write(true)
            .open(stamps.dir.join(name))
            .unwrap();
        file.set_modified(at).unwrap();
    }

    /// A warning is said once, then not again while it holds, until a day has passed; again at
    /// once for another reason, for a stamp dated in the future, and for an entry forgotten.
    #[test]
    fn a_warning_is_said_once_a_day_for_each_entry_and_reason() {
        let folder = registry("once");
        let stamps = WarningStamps::of_registry(&folder);
        let name = &folder.join("0123.json");
        let said = [
            stamps.due(name, "passed over: a user's link"),
            stamps.due(name, "passed over: a user's link"),
            stamps.due(&folder.join("4567.json"), "passed over: a user's link"),
            stamps.due(name, "passed over: a user's mount"),
            stamps.due(name, "passed over: a user's mount"),
        ];
        date(&stamps, "0123.json", SystemTime::now() - EVERY);
        let a_day_on = stamps.due(name, "passed over: a user's mount");
        date(&stamps, "0123.json", SystemTime::now() + EVERY);
        let clock_set_back = stamps.due(name, "passed over: a user's mount");
        stamps.forget(name);
        let forgotten = stamps.due(name, "passed over: a user's mount");
        fs::remove_dir_all(&folder).unwrap();
        assert_eq!(said, [true, false, true, true, false]);
        assert!(a_day_on, "said again a day on");
        assert!(clock_set_back, "a stamp in the future counts as old");
        assert!(forgotten, "said again once the entry's stamp is forgotten");
    }

    /// A registry whose stamps cannot be written says every warning every time.
    #[test]
    fn a_warning_that_cannot_be_stamped_is_said_every_time() {
        let folder = registry("unwritable");
        fs::write(folder.join(STAMPS_DIR), "not a folder").unwrap();
        let stamps = WarningStamps::of_registry(&folder);
        let name = &folder.join("0123.json");
        let said = [stamps.due(name, "w"), stamps.due(name, "w")];
        fs::remove_dir_all(&folder).unwrap();
        assert_eq!(said, [true, true]);
    }
}

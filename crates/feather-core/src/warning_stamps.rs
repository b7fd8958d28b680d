//! Warnings that hold until an admin acts (a registry's entry passed over), said once a day for
//! each entry and reason by the reads nobody may watch: every start of a VM reads the registry
//! of roots, two or three times (the front, its last look, the keeper, whose stderr is the
//! VM's log), and feather-oci reads its own at each call of an engine's. Said every time
//! where someone looks: by a process that asked for it ([`say_every_time`]: `feather ls`, a
//! registration) or whose stderr is a terminal; so an admin never misses a warning another
//! reader claimed for the day.
//!
//! One stamp per entry warned of, in a folder of the registry's own ([`STAMPS_DIR`]: a folder,
//! not a link, of the registry's owner and unreadable to others, as the registry is; else no
//! stamp is read nor written): its text is the warning last said, its mtime when. A warning is
//! due where no stamp says it (none, or one saying another: the reason or the advice changed),
//! or where the stamp is [`EVERY`] old, or dated in the future (the clock set back since). It
//! is stamped after it is said (a process killed between says it again next time). A stamp
//! that cannot be read or written leaves the warning due every time: never fewer warnings than
//! without stamps. Written unsynced: a stamp lost to a power cut costs one warning more; two
//! threads of one process stamping one entry at once may cost one more as well (they share
//! the temporary file's name). Stamps whose entry is gone (removed by hand, as the advice
//! says) and temporary files of killed writers are removed when the entries are read
//! ([`WarningStamps::sweep`]).

use std::fs;
use std::io::IsTerminal;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// How old a writer's temporary file must be to count as left by a killed writer.
const ABANDONED: Duration = Duration::from_secs(60);

/// Set by [`say_every_time`].
static EVERY_TIME: AtomicBool = AtomicBool::new(false);

/// Makes this process say every warning every time, stamped or not: for `feather ls` and a
/// registration, which an admin runs to look.
pub fn say_every_time() {
    EVERY_TIME.store(true, Ordering::Relaxed);
}

/// Whether this process says every warning ([`say_every_time`], or a terminal on stderr).
fn someone_looks() -> bool {
    EVERY_TIME.load(Ordering::Relaxed) || std::io::stderr().is_terminal()
}

/// The warning stamps of one registry.
pub struct WarningStamps {
    registry: PathBuf,
    dir: PathBuf,
}

impl WarningStamps {
    /// The stamps of the registry in `folder`.
    pub fn of_registry(folder: &Path) -> WarningStamps {
        WarningStamps {
            registry: folder.to_owned(),
            dir: folder.join(STAMPS_DIR),
        }
    }

    /// Says `warning`, about the registry's entry file `entry`, on stderr if it is due (or
    /// someone looks), then stamps it said. Returns whether it was said.
    pub fn say(&self, entry: &Path, warning: &str) -> bool {
        let stamp = self.stamp_of(entry);
        let lately = stamp
            .as_deref()
            .is_some_and(|stamp| self.checked() && said_lately(stamp, warning));
        if lately && !someone_looks() {
            return false;
        }
        eprintln!(
            "feather: warning: {}",
            crate::display::escape_controls_by_line(warning)
        );
        if let Some(stamp) = stamp.filter(|_| !lately) {
            // Not stamped (a registry that cannot be written): said again next time.
            let _ = self.write(&stamp, warning);
        }
        true
    }

    /// Forgets the stamp of the entry file `entry` (removed from the registry).
    pub fn forget(&self, entry: &Path) {
        if let Some(stamp) = self.stamp_of(entry) {
            let _ = fs::remove_file(stamp);
        }
    }

    /// Removes the stamps whose entry file is gone from the registry, and temporary files of
    /// writers killed before their rename ([`ABANDONED`] old): nothing else would.
    pub fn sweep(&self) {
        let Ok(files) = fs::read_dir(&self.dir) else {
            return;
        };
        if !self.checked() {
            return;
        }
        for file in files.flatten() {
            let name = file.file_name();
            let gone = if name.to_string_lossy().starts_with('.') {
                file.metadata()
                    .and_then(|meta| meta.modified())
                    .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > ABANDONED))
            } else {
                fs::symlink_metadata(self.registry.join(&name))
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            };
            if gone {
                let _ = fs::remove_file(file.path());
            }
        }
    }

    /// The stamp of the entry file `entry`: by its name.
    fn stamp_of(&self, entry: &Path) -> Option<PathBuf> {
        Some(self.dir.join(entry.file_name()?))
    }

    /// Whether the stamps' folder is one to trust: a folder (not a link), of the registry's
    /// owner, unreadable and unwritable to others, as the registry's `summary/` is checked.
    fn checked(&self) -> bool {
        let (Ok(registry), Ok(dir)) = (
            fs::symlink_metadata(&self.registry),
            fs::symlink_metadata(&self.dir),
        ) else {
            return false;
        };
        dir.is_dir() && dir.uid() == registry.uid() && dir.mode() & 0o077 == 0
    }

    fn write(&self, stamp: &Path, warning: &str) -> crate::error::Result<()> {
        if let Err(e) = fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e).at(&self.dir);
            }
        }
        if !self.checked() {
            return Err(crate::Error::Other(format!(
                "{} is not a folder of the registry's owner, closed to others: no warning is \
                 stamped there",
                self.dir.display()
            )));
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

    /// A registry's folder of the test's own, 0700 as the host's, removed when dropped (also
    /// when the test fails), and its stamps.
    fn registry(label: &str) -> (feather_testkit::ScratchDir, WarningStamps) {
        let scratch = feather_testkit::ScratchDir::new(&format!("warning-stamps-{label}"));
        fs::set_permissions(
            &scratch.0,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let stamps = WarningStamps::of_registry(&scratch.0);
        (scratch, stamps)
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
        let (scratch, stamps) = registry("once");
        let folder = &scratch.0;
        let name = &folder.join("0123.json");
        let said = [
            stamps.say(name, "passed over: a user's link"),
            stamps.say(name, "passed over: a user's link"),
            stamps.say(&folder.join("4567.json"), "passed over: a user's link"),
            stamps.say(name, "passed over: a user's mount"),
            stamps.say(name, "passed over: a user's mount"),
        ];
        date(&stamps, "0123.json", SystemTime::now() - EVERY);
        let a_day_on = stamps.say(name, "passed over: a user's mount");
        date(&stamps, "0123.json", SystemTime::now() + EVERY);
        let clock_set_back = stamps.say(name, "passed over: a user's mount");
        stamps.forget(name);
        let forgotten = stamps.say(name, "passed over: a user's mount");
        assert_eq!(said, [true, false, true, true, false]);
        assert!(a_day_on, "said again a day on");
        assert!(clock_set_back, "a stamp in the future counts as old");
        assert!(forgotten, "said again once the entry's stamp is forgotten");
    }

    /// A registry whose stamps cannot be written says every warning every time.
    #[test]
    fn a_warning_that_cannot_be_stamped_is_said_every_time() {
        let (scratch, stamps) = registry("unwritable");
        let folder = &scratch.0;
        fs::write(folder.join(STAMPS_DIR), "not a folder").unwrap();
        let name = &folder.join("0123.json");
        let said = [stamps.say(name, "w"), stamps.say(name, "w")];
        assert_eq!(said, [true, true]);
    }

    /// A process where someone looks (`feather ls`, a registration) says a warning every time,
    /// also one a reader nobody watches claimed for the day; and stamps it for the others.
    #[test]
    fn a_warning_is_said_every_time_where_someone_looks() {
        let (scratch, stamps) = registry("looks");
        let folder = &scratch.0;
        let name = &folder.join("0123.json");
        let unwatched = [stamps.say(name, "w"), stamps.say(name, "w")];
        say_every_time();
        let watched = [stamps.say(name, "w"), stamps.say(name, "w")];
        let stamped = stamps.dir.join("0123.json").exists();
        assert_eq!(unwatched, [true, false]);
        assert_eq!(watched, [true, true], "said every time where someone looks");
        assert!(stamped);
    }

    /// A stamps folder that is a link, another's, or open to others is neither read nor
    /// written: its warnings are said every time, and nothing is written where it leads.
    #[test]
    fn stamps_in_a_folder_not_the_registrys_own_are_neither_read_nor_written() {
        use std::os::unix::fs::PermissionsExt;
        let (scratch, stamps) = registry("unchecked");
        let folder = &scratch.0;
        let elsewhere = folder.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, folder.join(STAMPS_DIR)).unwrap();
        let name = &folder.join("0123.json");
        let through_link = [stamps.say(name, "w"), stamps.say(name, "w")];
        let written_there = fs::read_dir(&elsewhere).unwrap().count();
        fs::remove_file(folder.join(STAMPS_DIR)).unwrap();
        fs::create_dir(folder.join(STAMPS_DIR)).unwrap();
        fs::set_permissions(folder.join(STAMPS_DIR), fs::Permissions::from_mode(0o777)).unwrap();
        let open_to_all = [stamps.say(name, "w"), stamps.say(name, "w")];
        let written_open = fs::read_dir(folder.join(STAMPS_DIR)).unwrap().count();
        assert_eq!(through_link, [true, true]);
        assert_eq!(written_there, 0, "a stamp was written through the link");
        assert_eq!(open_to_all, [true, true]);
        assert_eq!(
            written_open, 0,
            "a stamp was written in a folder open to all"
        );
    }

    /// The stamps of entries removed (by hand, as the advice says) and a killed writer's
    /// temporary file are removed when the entries are read; a live entry's stamp and a
    /// writer's fresh temporary file are kept.
    #[test]
    fn stamps_of_gone_entries_and_abandoned_temporary_files_are_swept() {
        let (scratch, stamps) = registry("sweep");
        let folder = &scratch.0;
        fs::write(folder.join("live.json"), "{}").unwrap();
        stamps.say(&folder.join("live.json"), "w");
        stamps.say(&folder.join("gone.json"), "w");
        for temp in [".old.json.tmp-1", ".new.json.tmp-2"] {
            fs::write(stamps.dir.join(temp), "w").unwrap();
        }
        date(
            &stamps,
            ".old.json.tmp-1",
            SystemTime::now() - 2 * ABANDONED,
        );
        stamps.sweep();
        let mut left: Vec<String> = fs::read_dir(&stamps.dir)
            .unwrap()
            .flatten()
            .map(|file| file.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".new.json.tmp-2", "live.json"]);
    }
}

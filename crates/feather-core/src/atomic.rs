//! Every change of state on disk is atomic: write a temporary file beside the target, flush it,
//! rename it over the target (a `Volatile` one is never flushed here; one that opts in with
//! [`Staged::exchanging_names`] is exchanged with it instead). A reader sees the old file or
//! the new one, never half of one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Whether a write must survive a power cut (`Durable`) or only a crash of feather itself
/// (`Volatile`, used for throw-away VMs whose state dies with them anyway). `Whole`: the new
/// contents reach the disk before the rename, which is not synced: a power cut leaves the
/// file old or new, never empty or half-written, and may forget the change (one journal
/// commit instead of two; for a record that is as true as the old one once the power is back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Durable,
    Whole,
    Volatile,
}

pub fn write_atomic(path: &Path, contents: &[u8], durability: Durability) -> Result<()> {
    stage(path, contents, durability, "tmp")?.commit()
}

/// [`write_atomic`] of a file only its owner may read or write (0600, whatever the umask).
pub fn write_atomic_private(path: &Path, contents: &[u8], durability: Durability) -> Result<()> {
    stage_in_mode(path, contents, durability, "tmp", 0o600)?.commit()
}

/// A new version of a file, written (and synced, unless `Volatile`) beside it, that replaces it
/// only when committed: the slow half of [`write_atomic`] done ahead, while something else is
/// waited for. Dropped uncommitted, it is removed and the file stays as it was.
#[must_use = "a staged file replaces nothing until it is committed"]
pub struct Staged {
    /// None once committed: the name is the target's then (and another thread of this process
    /// may stage under it again).
    temp: Option<PathBuf>,
    target: PathBuf,
    durability: Durability,
    /// Committed by an exchange of names ([`Staged::exchanging_names`]).
    exchange: bool,
}

/// Writes `contents` beside `path` under a name of this process's (`.<name>.<kind>-<pid>`).
pub fn stage(path: &Path, contents: &[u8], durability: Durability, kind: &str) -> Result<Staged> {
    stage_in_mode(path, contents, durability, kind, 0o666)
}

/// [`stage`] with the file made in `mode` (less the umask).
fn stage_in_mode(
    path: &Path,
    contents: &[u8],
    durability: Durability,
    kind: &str,
    mode: u32,
) -> Result<Staged> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let staged = Staged {
        temp: Some(folder_of(path).join(format!(".{file_name}.{kind}-{}", std::process::id()))),
        target: path.to_path_buf(),
        durability,
        exchange: false,
    };
    let write = |temp: &Path| -> std::io::Result<()> {
        let mut file = create_new(temp, mode)?;
        file.write_all(contents)?;
        if durability != Durability::Volatile {
            file.sync_all()?;
        }
        Ok(())
    };
    if let Some(temp) = &staged.temp {
        write(temp).at(path)?;
    }
    Ok(staged)
}

/// A new file at `temp`, never through a link there: a state folder may be a user's (a root
/// given as `--root ~/vms`), who could otherwise plant a link under the predictable name and
/// have root truncate and write its target (review fixpool29 H1'). What is at the name already
/// (a link, or a file a process of the same pid left) is removed first: a link goes, not
/// what it names.
fn create_new(temp: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(temp)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(temp)?;
            open()
        }
        opened => opened,
    }
}

impl Staged {
    /// Has a `Volatile` file's [`Self::commit`] exchange names with the file and then remove
    /// the old version ([`feather_sys::flush::replace_unflushed`]), so that ext4 does not write
    /// the new one out at the rename: a throw-away VM's records never reach the disk, and
    /// their removal frees no blocks. Only for a file in a VM's folder: a process killed
    /// between the exchange and the removal leaves the old version under the staged name,
    /// which the VM folder's readers never take and [`remove_abandoned`] sweeps there (at a
    /// kept VM's next start; a throw-away VM's folder goes whole). Not for a file a power cut
    /// must leave old or new (on ext4 the name may then be left empty), nor in a folder whose
    /// readers take every name (the network's claims) or whose sweeps go by age (the warning
    /// stamps, the folder summaries: the staged name would hold an old file for a moment).
    /// Other durabilities are synced before the rename anyway and are renamed.
    pub fn exchanging_names(mut self) -> Self {
        self.exchange = self.durability == Durability::Volatile;
        self
    }

    /// Renames the new version over the file (and syncs that, if `Durable`), or exchanges
    /// their names ([`Self::exchanging_names`]).
    pub fn commit(mut self) -> Result<()> {
        let folder = folder_of(&self.target);
        if let Some(temp) = self.temp.take() {
            let replaced = if self.exchange {
                feather_sys::flush::replace_unflushed(&temp, &self.target)
            } else {
                fs::rename(&temp, &self.target)
            };
            if let Err(e) = replaced {
                self.temp = Some(temp);
                return Err(e).at(&self.target);
            }
        }
        if self.durability == Durability::Durable {
            File::open(folder)
                .and_then(|dir| dir.sync_all())
                .at(folder)?;
        }
        Ok(())
    }
}

/// The version of a file that [`Staged::commit_keeping_replaced`] replaced, still linked
/// beside it as `.<name>.replaced-<pid>` until this is dropped. Freeing a file's blocks on
/// ext4 mounted with `discard` is a synchronous discard (3–4 ms measured on this host's disk,
/// against 0.04 ms for a rename whose target stays linked): a caller that must answer soon
/// (a keeper telling `feather start` the VM is up) drops this after its answer. Left by a
/// process that died first, it is removed by [`remove_abandoned`].
#[must_use = "dropped at once, it frees the old version's blocks here"]
pub struct Replaced(Option<PathBuf>);

impl Replaced {
    /// Nothing kept: the old version went with the rename (or there was none).
    pub fn none() -> Self {
        Replaced(None)
    }
}

impl Drop for Replaced {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

impl Staged {
    /// [`Self::commit`], keeping the version it replaces linked (see [`Replaced`]) so that the
    /// rename frees no blocks. A `Volatile` file's old version is not kept: written unsynced,
    /// it holds no blocks on ext4 yet (delayed allocation), and its link would cost more than
    /// it saves.
    pub fn commit_keeping_replaced(self) -> Result<Replaced> {
        let kept = match (&self.temp, self.durability) {
            (None, _) | (Some(_), Durability::Volatile) => None,
            (Some(_), _) => {
                let path = folder_of(&self.target).join(format!(
                    ".{}.replaced-{}",
                    self.target
                        .file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default(),
                    std::process::id()
                ));
                // One this process kept from an earlier commit and never dropped: its own.
                let _ = fs::remove_file(&path);
                // No old version (a first record): nothing to keep.
                fs::hard_link(&self.target, &path).ok().map(|()| path)
            }
        };
        // Dropped on a failed commit: the link goes, and the old version stays the file.
        let replaced = Replaced(kept);
        self.commit()?;
        Ok(replaced)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Removes from `folder` the new versions staged by processes that died before they committed
/// or dropped them (`.<name>.<kind>-<pid>`, [`stage`]): a keeper killed while init assembled
/// the root leaves its staged record. A process alive under that pid keeps its file (it may be
/// writing it now; one that merely reused the pid leaves the file to a later call).
pub fn remove_abandoned(folder: &Path) {
    let Ok(entries) = fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = staged_by(&name.to_string_lossy()) else {
            continue;
        };
        if ended(pid) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` can no longer write: gone, or a zombie. A keeper killed by SIGKILL is
/// a zombie until its parent (the reaper it was left to) reaps it, and the start that cleans up
/// after it comes as soon as it has ended, often before that.
fn ended(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // Fields resume after the command name's last ')'; the first is the state.
    stat.rfind(')')
        .and_then(|end| stat[end + 1..].trim_start().chars().next())
        == Some('Z')
}

/// The pid in a staged file's name `.<name>.<kind>-<pid>`, if it is one.
fn staged_by(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?;
    let (head, pid) = rest.rsplit_once('-')?;
    let kind = head.rsplit_once('.')?.1;
    matches!(kind, "tmp" | "staged" | "replaced")
        .then(|| pid.parse().ok())
        .flatten()
}

fn folder_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Flushes files and folders already written (unsynced) to disk, in order: a batch written
/// first and synced here syncs a folder once for all it holds, and its files' data in one
/// journal commit rather than one each (`feather_sys::flush`).
pub fn sync_all(paths: &[std::path::PathBuf]) -> Result<()> {
    feather_sys::flush::sync_together(paths).map_err(|(path, source)| Error::Io { path, source })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The names removed from `folder` while `commit` ran: the staged name after an exchange
    /// of names, none after a rename over the file (which removes no name).
    pub(crate) fn names_removed_by(
        folder: &Path,
        commit: impl FnOnce(),
    ) -> Vec<std::ffi::OsString> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
        watch.add_watch(folder, AddWatchFlags::IN_DELETE).unwrap();
        commit();
        match watch.read_events() {
            Ok(events) => events.into_iter().filter_map(|event| event.name).collect(),
            Err(nix::errno::Errno::EAGAIN) => Vec::new(),
            Err(e) => panic!("inotify: {e}"),
        }
    }

    /// Only a `Volatile` file staged to exchange names is exchanged with the one it replaces
    /// (its staged name then holds the old version until removed): every other write, a
    /// `Volatile` one included (a network claim, a pool's count, a stamp), is a rename over
    /// it, which leaves no old version under a name of its own (review-startvm34 M1, M2).
    #[test]
    fn only_a_write_that_opts_in_exchanges_names() {
        let scratch = feather_testkit::ScratchDir::new("exchange-opt-in");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("state.json");
        fs::write(&target, b"old").unwrap();
        for durability in [Durability::Volatile, Durability::Whole, Durability::Durable] {
            let removed = names_removed_by(&dir, || {
                write_atomic(&target, b"plain", durability).unwrap();
            });
            assert_eq!(removed, Vec::<std::ffi::OsString>::new(), "{durability:?}");
        }
        let staged = stage(&target, b"exchanged", Durability::Volatile, "staged").unwrap();
        let removed = names_removed_by(&dir, || staged.exchanging_names().commit().unwrap());
        let staged_name = format!(".state.json.staged-{}", std::process::id());
        assert_eq!(removed, [std::ffi::OsString::from(staged_name)]);
        assert_eq!(fs::read(&target).unwrap(), b"exchanged");
        let kept = stage(&target, b"renamed", Durability::Whole, "staged").unwrap();
        let removed = names_removed_by(&dir, || kept.exchanging_names().commit().unwrap());
        assert!(removed.is_empty(), "a synced write is renamed: {removed:?}");
    }

    /// A link planted under the name a write stages at (a user's state folder) is replaced,
    /// never written through: what it names keeps its bytes (review fixpool29 H1').
    #[test]
    fn a_link_at_the_staging_name_is_not_written_through() {
        let scratch = feather_testkit::ScratchDir::new("staged-link");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, "keep me").unwrap();
        let target = dir.join("size");
        let staging = dir.join(format!(".size.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &staging).unwrap();
        write_atomic(&target, b"4", Durability::Volatile).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me");
        assert_eq!(fs::read_to_string(&target).unwrap(), "4");
        assert!(fs::symlink_metadata(&target).unwrap().file_type().is_file());
        assert!(fs::symlink_metadata(&staging).is_err(), "the link is gone");
    }

    #[test]
    fn files_staged_by_dead_processes_are_removed_and_live_ones_kept() {
        let scratch = feather_testkit::ScratchDir::new("abandoned");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        let dead = ended.id();
        ended.wait().unwrap();
        // Ended, not reaped yet: a zombie of this process's.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let unreaped = zombie.id();
        while feather_testkit::stat::runs(unreaped) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let own = std::process::id();
        for name in [
            format!(".state.json.replaced-{unreaped}"),
            format!(".state.json.staged-{dead}"),
            format!(".config.toml.tmp-{dead}"),
            format!(".state.json.replaced-{dead}"),
            format!(".state.json.staged-{own}"),
            format!(".hidden-{dead}"),
            "state.json".to_owned(),
        ] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        remove_abandoned(&dir);
        zombie.wait().unwrap();
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                format!(".hidden-{dead}"),
                format!(".state.json.staged-{own}"),
                "state.json".to_owned()
            ]
        );
    }

    /// The rename of a commit that keeps the replaced version frees none of its blocks: the
    /// old version is still linked, the very same inode, until the guard is dropped.
    #[test]
    fn a_commit_keeping_the_replaced_version_frees_it_only_when_dropped() {
        use std::os::unix::fs::MetadataExt;
        let scratch = feather_testkit::ScratchDir::new("replaced");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("state.json");
        let kept = format!(".state.json.replaced-{}", std::process::id());
        // A first record has no old version to keep.
        let first = stage(&target, b"created", Durability::Whole, "staged").unwrap();
        drop(first.commit_keeping_replaced().unwrap());
        let old = fs::metadata(&target).unwrap();
        let staged = stage(&target, b"running", Durability::Whole, "staged").unwrap();
        let replaced = staged.commit_keeping_replaced().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"running");
        let still = fs::metadata(dir.join(&kept)).expect("the old version was freed at the rename");
        assert_eq!((still.ino(), still.nlink()), (old.ino(), 1));
        assert_eq!(fs::read(dir.join(&kept)).unwrap(), b"created");
        drop(replaced);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        // A volatile record keeps nothing.
        let volatile = stage(&target, b"ended", Durability::Volatile, "staged").unwrap();
        let nothing = volatile.commit_keeping_replaced().unwrap();
        let after: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        drop(nothing);
        assert_eq!(
            names,
            ["state.json"],
            "the old version stayed after the drop"
        );
        assert_eq!(
            after,
            ["state.json"],
            "a volatile commit kept its old version"
        );
    }

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let scratch = feather_testkit::ScratchDir::new("atomic");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("state.json");
        write_atomic(&target, b"first", Durability::Durable).unwrap();
        write_atomic(&target, b"second", Durability::Volatile).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"second");
        write_atomic(&target, b"third", Durability::Whole).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"third");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn a_staged_file_replaces_the_old_one_only_when_committed() {
        let scratch = feather_testkit::ScratchDir::new("staged");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("state.json");
        write_atomic(&target, b"old", Durability::Durable).unwrap();
        let names = || -> Vec<_> {
            fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect()
        };
        let dropped = stage(&target, b"never", Durability::Whole, "staged").unwrap();
        drop(dropped);
        assert_eq!(names(), ["state.json"], "a dropped staged file was left");
        let staged = stage(&target, b"new", Durability::Whole, "staged").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"old");
        staged.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(names(), ["state.json"], "a committed staged file was left");
    }
}

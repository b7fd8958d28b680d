//! The host-wide registry of state roots: every root feather has opened on this host, so
//! that every VM can be kept out of all of them, not only out of its own.
//!
//! One file per root in [`REGISTRY_DIR`] (persistent: a root outlives a reboot, and so do
//! the layers in it), named by a hash of the root's path and written atomically, so that
//! concurrent feather calls of different roots never contend. An entry records the root's
//! folders by their canonical path and the identity (device, inode) of its state folder: a
//! root removed and made again at the same path counts as new, and is hidden anew in the VMs
//! already running.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use feather_sys::beneath::{self, Spared, ROOT_ID_FILE};
use feather_sys::lookup::Lookup;
use feather_sys::mountinfo::{self, MountEntry};

use crate::atomic::{write_atomic, Durability};
use crate::error::{Error, IoContext, Result};
use crate::registered_path::{self, Unresolved};
use crate::warning_stamps::WarningStamps;
use crate::{folder_summary, StateRoot};

/// Where the registry lives. Outside every state root, root-only, hidden from every VM.
pub const REGISTRY_DIR: &str = "/var/lib/feather-roots";

/// How many entries of roots whose path is gone ("retired") the registry keeps, the newest:
/// such a root may live on elsewhere (its bind unmounted and its mount point removed, moved by
/// hand), and its id and recorded places still hide and guard it there (review roots28 H1b).
/// Past this, the oldest go: a root removed by `feather` leaves no entry ([`Registry::forget_below`]),
/// so only roots removed or moved by hand count, and the registry stays small.
const RETIRED_KEPT: usize = 64;

/// How many places, and how many former ids, an entry keeps: a root's path registered again
/// keeps what it recorded before (the bind unmounted: review roots28 H1a), the newest first.
const RECORDED_KEPT: usize = 8;

/// How long registering a root waits for the commits that hold the registry.
const COMMIT_PATIENCE: Duration = Duration::from_secs(5);

/// The lock file, in the registry's folder, that a registration holds while it waits for the
/// commits in flight and that a commit passes before it holds the registry
/// ([`Registry::hold_for_commit`]).
const TURNSTILE: &str = "turnstile.lock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    dir: PathBuf,
    run: PathBuf,
    dev: u64,
    ino: u64,
    /// Where the state and run folders were in the host's mount table when the root was
    /// registered: their aliases there are found even once their paths show other folders
    /// (an entry written before these were recorded gets them at its root's next command).
    #[serde(default)]
    places: Vec<Place>,
    /// The root's id, which its state folder holds in its [`ROOT_ID_FILE`]: a folder that
    /// holds it is the root's, whatever its device and inode now (review gl27 M2). Kept when
    /// the path is registered again (its folder made again, or another filesystem there now).
    /// Empty in an entry written before ids were (it gets one at its root's next command).
    #[serde(default)]
    id: String,
    /// Ids its path's folder held before the one it holds now (another root's folder moved or
    /// copied there, or two first registrations that drew each their own): a folder holding
    /// one is still this root's (review roots28 M1). At most [`RECORDED_KEPT`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    former_ids: Vec<String>,
    /// Read strictly ([`Registry::entries_strict`]), its folders could not be resolved: a
    /// user's mount or link is on the way, and the mount's server may never answer. Nothing
    /// is asked of them (no marker read, no `stat`): they are guarded by path, and by the
    /// identity recorded at registration.
    #[serde(skip)]
    unresolved: bool,
}

impl Entry {
    fn root(&self) -> StateRoot {
        StateRoot::with_dirs(self.dir.clone(), self.run.clone())
    }

    /// Whether it names the same folders as `other`, with the same identity.
    fn same_root(&self, other: &Entry) -> bool {
        (&self.dir, &self.run, self.dev, self.ino) == (&other.dir, &other.run, other.dev, other.ino)
    }

    /// Whether it is `now`'s entry with nothing to add: the same root, its places and id
    /// recorded.
    fn is_complete_for(&self, now: &Entry) -> bool {
        self.same_root(now) && !self.places.is_empty() && !self.id.is_empty()
    }

    /// Its state and run folders.
    fn folders(&self) -> [PathBuf; 2] {
        [self.dir.clone(), self.run.clone()]
    }

    /// Every id that names this root: its own and its former ones.
    fn ids(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.id)
            .chain(&self.former_ids)
            .filter(|id| !id.is_empty())
    }
}

pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The host's registry.
    pub fn host() -> Self {
        Registry::at(REGISTRY_DIR.into())
    }

    /// A registry in another folder (for unit tests).
    pub fn at(dir: PathBuf) -> Self {
        Registry { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records `root`, whose state folder must exist. Returns the root with canonical paths when
    /// its entry is new (the caller then hides it in the VMs already running), None when the
    /// registry already knew it, and the root's id to write in its folder once it is hidden
    /// ([`Registration::mark`]).
    pub fn register(&self, root: &StateRoot) -> Result<Registration> {
        let walked = feather_sys::lookup::walk(root.dir()).at(root.dir())?;
        self.register_checked(root, &walked)
    }

    /// [`Registry::register`] of a root whose folder `checked`, its check's lookup
    /// ([`StateRoot::prepare_dir`]), found: its canonical path and identity are the lookup's,
    /// not looked up again.
    pub fn register_checked(&self, root: &StateRoot, checked: &Lookup) -> Result<Registration> {
        let mut entry = entry_of(root, checked)?;
        let path = self.dir.join(entry_name(&entry.dir));
        // Every command looks: one read of the entry and one of the folder's marker, no lock.
        if self.read(&path).is_some_and(|known| {
            known.is_complete_for(&entry) && marker_in(&entry.dir).as_ref() == Some(&known.id)
        }) {
            return Ok(Registration::default());
        }
        // Written while no commit runs (see [`Registry::hold_for_commit`]), and read again
        // under the lock: two registrations of one root draw one id (review roots28 M1).
        let folder = self.open_folder()?;
        self.lock_waiting_for_commits(&folder)?;
        let known = self.read(&path);
        let marker = marker_in(&entry.dir);
        // A folder with no marker may be one whose last registration ended before it was
        // hidden and marked (killed): it is hidden in the running VMs again.
        let new = marker.is_none() || !known.as_ref().is_some_and(|k| k.same_root(&entry));
        (entry.id, entry.former_ids) = ids_of(known.as_ref(), marker)?;
        // The mount table is read only for an entry to write, not at every command.
        let mounts = host_mounts();
        let now = [&entry.dir, &entry.run]
            .into_iter()
            .filter_map(|folder| Place::of(folder, &mounts));
        let before = known.iter().flat_map(|known| known.places.iter().cloned());
        entry.places = newest_distinct(now.chain(before));
        let text = serde_json::to_vec(&entry).map_err(|e| {
            Error::Other(format!(
                "cannot record state root {} in {}: {e} (give --root a UTF-8 path)",
                root.dir().display(),
                self.dir.display()
            ))
        })?;
        write_atomic(&path, &text, Durability::Durable)?;
        // The registering command is one an admin watches: it says every entry passed over.
        crate::warning_stamps::say_every_time();
        Ok(Registration {
            new: new.then(|| entry.root()),
            unmarked: Some(entry),
        })
    }

    /// Takes the registry's lock for a registration, waiting at most [`COMMIT_PATIENCE`] for
    /// the commits that hold it: one stopped (Ctrl-Z) or writing into an unread pager would
    /// otherwise hang every command that registers a root (review gl27 L1).
    ///
    /// The wait is at the [`TURNSTILE`] first: once a registration holds it, no commit begins
    /// until the registration is done, so commits that overlap one another (parallel commits,
    /// a script committing in a loop) cannot keep the registry held for ever — `flock` itself
    /// lets a shared lock in past a waiting exclusive one.
    fn lock_waiting_for_commits(&self, folder: &fs::File) -> Result<()> {
        let deadline = Instant::now() + COMMIT_PATIENCE;
        let turnstile = self.open_turnstile()?;
        self.try_lock_until(&turnstile, deadline, folder)?;
        self.try_lock_until(folder, deadline, folder)
    }

    /// Takes `file`'s exclusive lock, polling until `deadline`; past it, the error names the
    /// commits holding the registry `folder`.
    fn try_lock_until(&self, file: &fs::File, deadline: Instant, folder: &fs::File) -> Result<()> {
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(()),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(self.held_by_commits(folder)),
                Err(fs::TryLockError::Error(e)) => return Err(e).at(&self.dir),
            }
        }
    }

    /// The registry's [`TURNSTILE`] file, made if missing (never through a link).
    fn open_turnstile(&self) -> Result<fs::File> {
        let path = self.dir.join(TURNSTILE);
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .at(&path)
    }

    /// The error of a registration that waited too long for the commits holding the registry.
    fn held_by_commits(&self, folder: &fs::File) -> Error {
        let pids = folder
            .metadata()
            .map(|m| lock_holders(&m))
            .unwrap_or_default();
        let by = match pids.as_slice() {
            [] => String::new(),
            pids => format!(
                " (pid {})",
                pids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Error::Other(format!(
            "the state root registry {} has been held for {} s by a running `feather commit`{by}, \
             and a new state root is registered only while no commit runs: let that commit \
             end (resume it with `fg` if it was stopped, or quit its pager), then run this again",
            self.dir.display(),
            COMMIT_PATIENCE.as_secs(),
        ))
    }

    /// The registry's folder, made if missing, held open (for its lock).
    fn open_folder(&self) -> Result<fs::File> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .at(&self.dir)?;
        fs::File::open(&self.dir).at(&self.dir)
    }

    /// The registry held still for a commit: no root is registered until the hold is dropped,
    /// so none can appear between the commit's reading of the registry and its last write
    /// (review fixes23 C7). Shared: commits do not wait for each other, only a registration
    /// of a new root waits for them (one of a root already known takes no lock).
    pub fn hold_for_commit(&self) -> Result<RegistryHold> {
        let folder = self.open_folder()?;
        // Through the turnstile: a registration waiting for the commits in flight holds it
        // (at most COMMIT_PATIENCE), and this commit waits behind it.
        let turnstile = self.open_turnstile()?;
        turnstile.lock_shared().at(&self.dir)?;
        folder.lock_shared().at(&self.dir)?;
        Ok(RegistryHold { _folder: folder })
    }

    /// Every registered root whose state folder still exists, with canonical paths.
    pub fn roots(&self) -> Vec<StateRoot> {
        self.entries().live.iter().map(Entry::root).collect()
    }

    /// The registry's entries: those of roots whose path exists, those of roots whose path is
    /// gone, kept for their ids and places (the [`RETIRED_KEPT`] newest; older ones are
    /// removed on the way), and those passed over, each with a warning.
    fn entries(&self) -> Entries {
        self.entries_since(&Entries::default())
    }

    /// A first look at the registry ([`Look`]).
    pub fn look(self) -> Look {
        let entries = self.entries();
        Look {
            registry: self,
            entries,
        }
    }

    /// [`Registry::entries`], but for what the look `before` read that its file holds still as
    /// it was read: an entry `before` found live at the very paths it names is neither
    /// resolved again nor listed (a start's last look: [`Look::late_state_folders_in`]).
    fn entries_since(&self, before: &Entries) -> Entries {
        let mut listed = Entries::default();
        // From the registry's summary while nothing changed since it was written: a start
        // opens no entry, however many the registry keeps (issue 15).
        let files = folder_summary::read(&self.dir, parse_entry);
        self.warning_stamps().sweep();
        for (path, entry) in files {
            let Some(entry) = entry else {
                continue;
            };
            if before.unmoved.get(&path) == Some(&entry) {
                continue;
            }
            match resolved(&entry) {
                Ok(Some(live)) => {
                    if (&live.dir, &live.run) == (&entry.dir, &entry.run) {
                        listed.unmoved.insert(path, entry);
                    }
                    listed.live.push(live);
                }
                Ok(None) => listed.retired.push((path, entry)),
                Err(why) => {
                    self.warn_passed_over(&path, &entry, &why);
                    listed.refused.push(entry);
                }
            }
        }
        if listed.retired.len() > RETIRED_KEPT {
            // Rare (more than RETIRED_KEPT roots removed by hand): only then a stat of each.
            listed
                .retired
                .sort_by_cached_key(|(path, _)| std::cmp::Reverse(modified(path)));
            for (path, _) in listed.retired.drain(RETIRED_KEPT..) {
                self.remove_entry(&path);
            }
        }
        listed
    }

    /// Every registered root, for a guard that must not miss one (`diff`, `commit`): an entry
    /// whose folder is missing is kept (guarding a path costs nothing), and a registry that
    /// cannot be read, or an entry that cannot be, is an error naming the file, not a root
    /// fewer (review fixes23 C4). No registry at all holds no root.
    pub fn roots_strict(&self) -> Result<Vec<StateRoot>> {
        let entries = self.entries_strict()?;
        Ok(entries
            .into_iter()
            .map(|entry| StateRoot::with_dirs(entry.dir, entry.run))
            .collect())
    }

    /// The registered roots' state folders as the walks of `diff` and `commit` know them,
    /// read as strictly as [`Registry::roots_strict`]: a folder holding a registered root id
    /// (an entry's, or one of its former ones) is a root's, whatever path reaches it (a bind
    /// mount's source, a folder moved) and even while the path the registry names shows
    /// something else (the bind unmounted), and whatever its device and inode now (after a
    /// reboot). The identities (device, inode) recorded at registration count while the
    /// entry's path exists and its folder holds no id of the entry's (an entry written before
    /// ids were, a marker not written yet or removed: review roots28 M1); not once the path is
    /// gone (a removed root's inode number may be a new folder's). An entry whose path the
    /// registry's resolution passed over (`Entry::unresolved`: a user's link or mount on
    /// it) is not looked at at all, so its identities count for ever: a folder that later gets
    /// its (device, inode), as a user's FUSE mount's reused anonymous device may give it, is
    /// spared too, which errs on guarding (review walk34 L6).
    pub fn spared_strict(&self) -> Result<Spared> {
        Ok(self.spared_of(&self.entries_strict()?))
    }

    /// [`Registry::spared_strict`] of `entries`, read from it.
    fn spared_of(&self, entries: &[Entry]) -> Spared {
        let unmarked = |entry: &&Entry| {
            if entry.unresolved {
                return true;
            }
            match marker_in(&entry.dir) {
                Some(marker) => !entry.ids().any(|id| *id == marker),
                None => fs::symlink_metadata(&entry.dir).is_ok(),
            }
        };
        Spared {
            identities: entries
                .iter()
                .filter(unmarked)
                .map(|entry| (entry.dev, entry.ino))
                .collect(),
            ids: entries.iter().flat_map(Entry::ids).cloned().collect(),
        }
    }

    fn entries_strict(&self) -> Result<Vec<Entry>> {
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.map_err(|e| unreadable(&self.dir, e))?,
        };
        let mut roots = Vec::new();
        for file in entries {
            let path = file.map_err(|e| unreadable(&self.dir, e))?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            // An entry removed since the listing (a root forgotten meanwhile) guards nothing.
            let bytes = match fs::read(&path) {
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                other => other.map_err(|e| unreadable(&path, e))?,
            };
            let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Other(format!(
                    "cannot read the registered state root {}: {e}; feather cannot tell which \
                     folders to guard: repair or remove that file (`feather ls` with that root \
                     writes it again)",
                    path.display()
                ))
            })?;
            roots.push(self.resolved_strictly(&path, entry));
        }
        Ok(roots)
    }

    /// Removes the entries of every root at or below `folder` (a folder about to be removed
    /// with the roots in it), so that nothing waits for the sweep in [`Registry::roots`].
    /// `folder` is resolved as the entries are ([`resolved_or_named`]): a user's link on its
    /// way forgets nothing where it leads.
    pub fn forget_below(&self, folder: &Path) {
        // An empty path (no folder: `absolute` refuses it) would hold every root.
        let Ok(folder) = std::path::absolute(folder) else {
            return;
        };
        let folder = resolved_or_named(&folder);
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for file in entries.flatten() {
            let path = file.path();
            if self
                .read(&path)
                .is_some_and(|entry| entry.dir.starts_with(&folder))
            {
                self.remove_entry(&path);
            }
        }
    }

    /// Removes the entries of the roots below `folder` whose state folder is gone and that
    /// `may_forget` (given the entry's folder) lets go: the tests' sweep of the entries their
    /// killed runs left (their folders removed since, with `/tmp/feather-tests`), by the test
    /// processes that ended. feather itself keeps such an entry ([`RETIRED_KEPT`]: a root gone
    /// from its path may live on elsewhere).
    pub fn forget_gone_below(&self, folder: &Path, may_forget: impl Fn(&Path) -> bool) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let gone =
            |dir: &Path| fs::symlink_metadata(dir).is_err_and(|e| e.kind() == ErrorKind::NotFound);
        for file in entries.flatten() {
            let path = file.path();
            if self.read(&path).is_some_and(|entry| {
                entry.dir.starts_with(folder) && may_forget(&entry.dir) && gone(&entry.dir)
            }) {
                self.remove_entry(&path);
            }
        }
    }

    /// Removes the entry file `path`, and its warning stamp.
    fn remove_entry(&self, path: &Path) {
        let _ = fs::remove_file(path);
        self.warning_stamps().forget(path);
    }

    fn warning_stamps(&self) -> WarningStamps {
        WarningStamps::of_registry(&self.dir)
    }

    /// Says that the registry's entry `file`, reading `entry`, is passed over because `why`:
    /// once a day for each entry and reason unless someone looks ([`crate::warning_stamps`]),
    /// and at most once per process, also where someone looks or no stamp can be written. A
    /// start reads the registry two or three times (a new root's registration, its first look,
    /// its last one); after the first, the stamp is not even looked at. Returns whether it was
    /// said.
    fn warn_passed_over(&self, file: &Path, entry: &Entry, why: &Unresolved) -> bool {
        static WARNED: std::sync::Mutex<Vec<(PathBuf, Entry, String)>> =
            std::sync::Mutex::new(Vec::new());
        let warning = not_followed(file, why);
        let read = (file.to_path_buf(), entry.clone(), warning);
        let mut warned = WARNED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned.contains(&read) {
            return false;
        }
        let said = self.warning_stamps().say(file, &read.2);
        warned.push(read);
        said
    }

    /// `entry` (of the registry's file `file`) with its folders resolved as [`resolved`] does,
    /// also where its state folder is gone (guarding a path costs nothing); where a link a user
    /// may have placed is on the way, as recorded, with a warning ([`Self::warn_passed_over`]):
    /// its paths are guarded as such, and nothing where the link leads.
    fn resolved_strictly(&self, file: &Path, entry: Entry) -> Entry {
        match folders_resolved(&entry) {
            Ok((dir, run)) => with_folders(entry, dir, run),
            Err(why) => {
                self.warn_passed_over(file, &entry, &why);
                Entry {
                    unresolved: true,
                    ..entry
                }
            }
        }
    }

    fn read(&self, path: &Path) -> Option<Entry> {
        parse_entry(&fs::read(path).ok()?)
    }

    /// The stamp of the host's last sweep of removed roots' cgroups: its mtime is when that
    /// sweep began (see [`Registry::claim_sweep`]).
    pub fn sweep_stamp(&self) -> PathBuf {
        self.dir.join(SWEEP_STAMP)
    }

    /// The host's sweep of removed roots' cgroups, if none began in the last `every` and none
    /// is under way: the stamp's lock, held until the claim is dropped, with the stamp's mtime
    /// set to now. None otherwise: a sweep under way does what this one would (it began after
    /// the stamp was last dated), so a caller never waits for another's. A stamp dated in the
    /// future (the clock set back since) counts as old: sweeps never stop for it. Host-wide, as
    /// the groups are (every root's VMs share `feather/`), and one file for all roots, where a
    /// stamp per root would be one more file in each. No VM nor OCI container sees the
    /// registry's folder; a stamp that is not a plain file of the folder's owner, unreadable
    /// to others, is refused (the caller then sweeps, as before there was a stamp) rather than
    /// let a lock someone else holds on it stop every sweep.
    pub fn claim_sweep(&self, every: Duration) -> Result<Option<SweepClaim>> {
        let path = self.sweep_stamp();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .at(&self.dir)?;
        let stamp = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .at(&path)?;
        let meta = stamp.metadata().at(&path)?;
        let owner = fs::metadata(&self.dir).at(&self.dir)?.uid();
        if !meta.is_file() || meta.uid() != owner || meta.mode() & 0o077 != 0 {
            return Err(Error::Other(format!(
                "{}: not a plain file of the registry's owner, unreadable to others (remove it: \
                 the next `feather rm` makes it anew)",
                path.display()
            )));
        }
        match stamp.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(e).at(&path),
        }
        // A stamp just made (empty, as every stamp is) has now for its mtime: the first sweep
        // on a host comes a minute after its first `rm`.
        let recent = meta
            .modified()
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age < every);
        if recent {
            return Ok(None);
        }
        stamp.set_modified(std::time::SystemTime::now()).at(&path)?;
        Ok(Some(SweepClaim { _stamp: stamp }))
    }
}

/// The error of a strict read that could not read `path` (the registry's folder or an entry).
fn unreadable(path: &Path, e: std::io::Error) -> Error {
    Error::Other(format!(
        "cannot read {}, of the registry of state roots: {e}; feather cannot tell which folders \
         to guard, and commits nothing until it can: run feather as root (the registry is \
         root's, 0700), or repair that file or folder",
        path.display()
    ))
}

/// What [`Registry::register`] did.
#[derive(Debug, Default)]
pub struct Registration {
    /// The root, with canonical paths, when its entry is new: to hide in the VMs running.
    pub new: Option<StateRoot>,
    /// The entry written, whose id goes in its state folder.
    unmarked: Option<Entry>,
}

impl Registration {
    /// Writes the root's id into its state folder ([`ROOT_ID_FILE`]) where it holds none:
    /// after the root is hidden in the VMs running, as everything that goes in a new root (a
    /// VM watching the folder sees nothing of it:
    /// `host_view::no_vm_sees_any_state_root_of_the_host`). Until then `diff` and `commit`
    /// know the folder by its path and its identity now.
    pub fn mark(&self) -> Result<()> {
        match &self.unmarked {
            Some(entry) => write_root_id(entry),
            None => Ok(()),
        }
    }
}

/// The registry held still for a commit ([`Registry::hold_for_commit`]) until dropped.
pub struct RegistryHold {
    _folder: fs::File,
}

/// The host's sweep of removed roots' cgroups, claimed by [`Registry::claim_sweep`]: no other
/// begins until this is dropped.
pub struct SweepClaim {
    _stamp: fs::File,
}

/// The name, in the registry's folder, of the stamp of the host's last sweep of removed roots'
/// cgroups (see [`Registry::claim_sweep`]); not an entry (those end in `.json`).
pub const SWEEP_STAMP: &str = "cgroup-sweep.stamp";

/// The host folders no VM, and no OCI container over the host, may see: the state and run
/// folders of every registered root (canonical where they exist), and the registry itself,
/// each with its aliases ([`with_aliases_in`]), from the host's mount table read now.
pub fn host_state_folders() -> Vec<PathBuf> {
    host_state_folders_in(&host_mounts())
}

/// [`host_state_folders`] from the mount table `mounts` (a start reads it once for all it
/// does: review issue 15).
pub fn host_state_folders_in(mounts: &[MountEntry]) -> Vec<PathBuf> {
    Look::host().state_folders_in(mounts)
}

/// The registry as a start's first look found it ([`Registry::look`]): each entry's folders
/// resolved on descriptors once, and an entry passed over warned of once, for everything the
/// start hides ([`Look::state_folders_in`]) and for its last look
/// ([`Look::late_state_folders_in`]), which resolves only what changed since (issue 15).
pub struct Look {
    registry: Registry,
    entries: Entries,
}

impl Look {
    /// A first look at the host's registry.
    pub fn host() -> Look {
        Registry::host().look()
    }

    /// [`host_state_folders_in`] as this look found the registry.
    pub fn state_folders_in(&self, mounts: &[MountEntry]) -> Vec<PathBuf> {
        let entries = &self.entries;
        state_folders_of(&entries.live, &entries.at_recorded_places_only(), mounts)
    }

    /// The state folders of the roots registered that `known` (the start's
    /// [`Look::state_folders_in`] with its own root's) does not name, with their aliases: a
    /// start's last look, which finds the roots registered while it started (none, nearly
    /// always). When there is one, the host's mount table is read again, not taken from the
    /// start's beginning: a root registered meanwhile may have been mounted or bound meanwhile
    /// too (review roots28 L1).
    ///
    /// An entry this look found live at the very paths it names, whose file holds it still as
    /// it was read, is not resolved again ([`Registry::entries_since`]): resolved, it would be
    /// passed over all the same, its folders in `known`. A registration writes its entry
    /// before it hides its root in the VMs running (`feather_vm::hiding`), and writes it
    /// anew, so an entry written meanwhile is read here: as another entry, resolved; or as
    /// the one this look read, whose folders, at the paths it names, this start hid. A root
    /// moved by hand meanwhile behind a link at an unchanged entry's path is found by the
    /// root's next command, which registers where it leads (a new entry) and hides it then,
    /// as in the VMs already running. An entry found retired or passed over is resolved
    /// again (a passed-over one is warned of at most once per process:
    /// [`Registry::warn_passed_over`]).
    pub fn late_state_folders_in(&self, known: &[PathBuf]) -> Vec<PathBuf> {
        self.late_state_folders_of(known, host_mounts)
    }

    /// [`Look::late_state_folders_in`], `now` reading the mount table.
    fn late_state_folders_of(
        &self,
        known: &[PathBuf],
        now: impl FnOnce() -> Vec<MountEntry>,
    ) -> Vec<PathBuf> {
        let late: Vec<Entry> = self
            .registry
            .entries_since(&self.entries)
            .live
            .into_iter()
            .filter(|entry| !(known.contains(&entry.dir) && known.contains(&entry.run)))
            .collect();
        match late.is_empty() {
            true => Vec::new(),
            false => state_folders_of(&late, &[], &now()),
        }
    }
}

/// The folders `diff`, `commit` and an export guard: the state folders of every registered
/// root (read as strictly as [`Registry::roots_strict`]), the registry's and `own`'s, with
/// their aliases, from one read of the host's mount table (as a start's).
pub fn guarded_folders_strict(own: &StateRoot) -> Result<Vec<PathBuf>> {
    Ok(guarded_strict(own)?.folders)
}

/// What `diff`, `commit` and an export guard of the host: the folders
/// [`guarded_folders_strict`] gives, and the state folders as a walk of the host knows them,
/// by identity or by the root id they hold, at a path no mount table names.
#[derive(Clone, Debug, Default)]
pub struct StateFolders {
    pub folders: Vec<PathBuf>,
    pub spared: Spared,
}

/// [`StateFolders`] of the host's registry and `own` ([`Registry::spared_strict`], and the
/// identities of those folders, not of their aliases: [`Registry::guarded_with`]).
pub fn guarded_strict(own: &StateRoot) -> Result<StateFolders> {
    Registry::host().guarded_with(own, &host_mounts())
}

impl Registry {
    /// [`guarded_strict`] of this registry, the aliases from `mounts`. The identities are
    /// `stat`ed of each root's own folders only (which its `root-id` read touches anyway),
    /// never of an alias: an alias found in the mount table may lie on another mount (a place
    /// recorded before a reboot whose device number is an NFS or FUSE mount's now), whose
    /// `stat` hangs while its server is away (review lowroots29), and it is the same folder as
    /// the one it aliases, of the same identity, where it is one at all.
    pub fn guarded_with(&self, own: &StateRoot, mounts: &[MountEntry]) -> Result<StateFolders> {
        let entries = self.entries_strict()?;
        let mut own_folders: Vec<PathBuf> = entries.iter().flat_map(Entry::folders).collect();
        own_folders.extend(registry_folder());
        own_folders.extend(canonical_folders(own));
        let mut spared = self.spared_of(&entries);
        // Never through a link, on any name of the path: a path left as recorded (a user's
        // link on it, or on a folder above it) guards no folder by identity, not the one it
        // leads to (`/usr`, or the host's `/run` through `/tmp/x -> /`, which `commit` would
        // then refuse to touch); it is guarded by its path alone. Nor through a user's mount
        // (an unresolved entry's: its server may never answer).
        let unresolved: Vec<PathBuf> = entries
            .iter()
            .filter(|entry| entry.unresolved)
            .flat_map(Entry::folders)
            .collect();
        spared.identities.extend(
            own_folders
                .iter()
                .filter(|folder| !unresolved.contains(folder))
                .filter_map(|folder| identity_unfollowed(folder)),
        );
        spared.identities.sort_unstable();
        spared.identities.dedup();
        let folders = with_places(own_folders, &entries, &[], mounts);
        Ok(StateFolders { folders, spared })
    }
}

/// The state folders of `entries` and the registry's, with their aliases in `mounts`: those
/// of the paths they have now, and those of where the entries recorded them, also where
/// `retired` (roots whose path is gone) recorded them: a root bound from `/data/feather` at
/// `/var/lib/feather` keeps its alias `/data/feather` once the bind is gone and its path shows
/// an empty folder of `/` (the places are kept when the path is registered again), or once
/// that folder is removed too (review roots28 H1).
fn state_folders_of(entries: &[Entry], retired: &[&Entry], mounts: &[MountEntry]) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = entries.iter().flat_map(Entry::folders).collect();
    folders.extend(registry_folder());
    with_places(folders, entries, retired, mounts)
}

/// `folders` with their aliases in `mounts`, and the paths of the places `entries` and
/// `retired` recorded (see [`state_folders_of`]).
fn with_places(
    folders: Vec<PathBuf>,
    entries: &[Entry],
    retired: &[&Entry],
    mounts: &[MountEntry],
) -> Vec<PathBuf> {
    let recorded = entries
        .iter()
        .chain(retired.iter().copied())
        .flat_map(|entry| entry.places.iter());
    let mut all: std::collections::BTreeSet<PathBuf> =
        with_aliases_in(folders, mounts).into_iter().collect();
    all.extend(recorded.flat_map(|place| place.paths(mounts)));
    all.into_iter().collect()
}

/// What [`Registry::entries`] lists.
#[derive(Default)]
struct Entries {
    /// Those whose root's path exists.
    live: Vec<Entry>,
    /// Those whose root's path is gone, with their files.
    retired: Vec<(PathBuf, Entry)>,
    /// Those whose path leads through a link a user may have placed ([`resolved`]): neither
    /// hidden nor guarded where it leads, only at the places they recorded, as retired ones.
    refused: Vec<Entry>,
    /// Those of `live` found at the very paths they name (no link on the way), by their
    /// files, each as its file holds it: what a later look passes over while the file holds
    /// it still ([`Registry::entries_since`]).
    unmoved: std::collections::BTreeMap<PathBuf, Entry>,
}

impl Entries {
    /// The entries hidden only at their recorded places: the retired and the refused.
    fn at_recorded_places_only(&self) -> Vec<&Entry> {
        let retired = self.retired.iter().map(|(_, entry)| entry);
        retired.chain(&self.refused).collect()
    }
}

/// `entry` with its folders resolved ([`registered_path::resolve`]: a link followed only where
/// root alone could have placed it), None when its state folder is gone.
fn resolved(entry: &Entry) -> std::result::Result<Option<Entry>, Unresolved> {
    let (dir, run) = folders_resolved(entry)?;
    Ok(dir.exists.then(|| with_folders(entry.clone(), dir, run)))
}

/// The state folder and the run folder of `entry`, resolved ([`registered_path::resolve`]).
fn folders_resolved(
    entry: &Entry,
) -> std::result::Result<(registered_path::Resolved, registered_path::Resolved), Unresolved> {
    Ok((
        registered_path::resolve(&entry.dir)?,
        registered_path::resolve(&entry.run)?,
    ))
}

/// `entry` with the folders `dir` and `run` it resolved to.
fn with_folders(
    entry: Entry,
    dir: registered_path::Resolved,
    run: registered_path::Resolved,
) -> Entry {
    Entry {
        dir: dir.path,
        run: run.path,
        ..entry
    }
}

/// The warning for the registry's entry `file`, passed over because `why` (which names the
/// paths; the advice names `file`).
fn not_followed(file: &Path, why: &Unresolved) -> String {
    format!(
        "a registered state root is passed over: {why}; no VM hides it nor does `diff` guard \
         it there. {}",
        why.advice(file)
    )
}

/// The first [`RECORDED_KEPT`] distinct of `items`.
fn newest_distinct<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut kept = Vec::new();
    for item in items {
        if kept.len() == RECORDED_KEPT {
            break;
        }
        if !kept.contains(&item) {
            kept.push(item);
        }
    }
    kept
}

/// The id, and the former ids, of a root registered again (`known`, its entry) or for the
/// first time, whose folder holds `marker`: the id the folder holds (a root moved, copied or
/// bound here keeps its own; the entry's goes to the former ones), else the entry's, else a
/// new random one.
fn ids_of(known: Option<&Entry>, marker: Option<String>) -> Result<(String, Vec<String>)> {
    let former = known.map(|k| k.former_ids.clone()).unwrap_or_default();
    let recorded = known.map(|k| k.id.clone()).filter(|id| !id.is_empty());
    let id = match (marker, &recorded) {
        (Some(marker), _) => marker,
        (None, Some(recorded)) => recorded.clone(),
        (None, None) => random_id()?,
    };
    let others = newest_distinct(recorded.into_iter().chain(former).filter(|old| *old != id));
    Ok((id, others))
}

/// The root id the state folder `dir` (canonical) holds in its [`ROOT_ID_FILE`], if any: the
/// folder reached through no link (a path a link is on now holds none: the folder it leads to
/// is not the root's), the file read as [`beneath::root_id_in`] reads it.
fn marker_in(dir: &Path) -> Option<String> {
    beneath::root_id_in(&unfollowed(dir)?)
}

/// The folder `dir` (absolute), opened from `/` through no link at all (a user's link on any
/// name of the path, not only its last, leaves it unopened).
fn unfollowed(dir: &Path) -> Option<fs::File> {
    let root = beneath::open_root(Path::new("/")).ok()?;
    let rel = dir.strip_prefix("/").ok()?;
    beneath::open_dir(&root, rel).ok()?
}

/// The identity (device, inode) of the folder `dir`, reached through no link
/// ([`unfollowed`]).
fn identity_unfollowed(dir: &Path) -> Option<(u64, u64)> {
    let meta = unfollowed(dir)?.metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The caller's mount table, as the host's; empty when it cannot be read (the walks of `diff`
/// and `commit` match the folders' identities too).
pub fn host_mounts() -> Vec<MountEntry> {
    mountinfo::mounts().unwrap_or_default()
}

/// An entry of the registry from its file's text (None: not an entry).
fn parse_entry(text: &[u8]) -> Option<Entry> {
    serde_json::from_slice(text).ok()
}

/// [`REGISTRY_DIR`], and its canonical path where that differs (`/var/lib` a link root made),
/// resolved as the entries are ([`registered_path::resolve`]).
fn registry_folder() -> Vec<PathBuf> {
    let named = PathBuf::from(REGISTRY_DIR);
    let canonical = resolved_or_named(&named);
    vec![named, canonical]
}

/// `path` (absolute) resolved as the entries are ([`registered_path::resolve`]: on
/// descriptors, a link followed only where root alone could have placed it), or as named where
/// that refuses it (a user's link on the way names nothing but itself).
fn resolved_or_named(path: &Path) -> PathBuf {
    registered_path::resolve(path).map_or_else(|_| path.to_path_buf(), |r| r.path)
}

/// A new root id: 16 random bytes, in hex.
fn random_id() -> Result<String> {
    let mut random = [0u8; 16];
    let urandom = Path::new("/dev/urandom");
    fs::File::open(urandom)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .at(urandom)?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `id` into the state folder `dir` ([`ROOT_ID_FILE`]) unless it holds an id already
/// (a folder of another root's, bound or moved here, keeps its own).
/// Written through the folder's descriptor, once its device and inode are checked to be the
/// entry's: a folder swapped in at the path since the registration (by a user owning a
/// parent of a root such as `/home/u/feather`) is refused, not given the id (review roots28 L3).
fn write_root_id(entry: &Entry) -> Result<()> {
    let dir = &entry.dir;
    let folder = feather_sys::folder::open_no_follow(dir).at(dir)?;
    let meta = folder.metadata().at(dir)?;
    if (meta.dev(), meta.ino()) != (entry.dev, entry.ino) {
        return Err(Error::Other(format!(
            "the state folder {} is another folder than the one registered a moment ago (moved \
             or replaced meanwhile): its root id was not written; check who can change {} and \
             run the command again",
            dir.display(),
            dir.parent().unwrap_or(dir).display()
        )));
    }
    if beneath::root_id_in(&folder).is_some() {
        return Ok(());
    }
    let path = Path::new(&format!("/proc/self/fd/{}", folder.as_raw_fd())).join(ROOT_ID_FILE);
    write_atomic(
        &path,
        format!("{}\n", entry.id).as_bytes(),
        Durability::Durable,
    )
}

/// The state and run folders of `root`, canonical where they exist, with their aliases.
pub fn root_folders(root: &StateRoot) -> Vec<PathBuf> {
    root_folders_in(root, &host_mounts())
}

/// [`root_folders`], the aliases from `mounts`.
pub fn root_folders_in(root: &StateRoot, mounts: &[MountEntry]) -> Vec<PathBuf> {
    with_aliases_in(canonical_folders(root), mounts)
}

/// The state and run folders of `root`, canonical ([`resolved_or_named`]). Not by
/// `canonicalize`, which follows every link: a root a command opened passed
/// `check_state_root`, whose walk trusts no folder a user could change, but a path that was
/// not checked (or changed since) must not lead the hiding of a new root, or the guard of
/// `diff` and `commit`, to where a user's link points (`/usr`).
fn canonical_folders(root: &StateRoot) -> [PathBuf; 2] {
    [root.dir(), root.run_dir()].map(resolved_or_named)
}

/// `folders` and every other path of the host's mount table that reaches one of them
/// (review fixes23 C4): where the folder's filesystem is mounted again, or a folder holding it
/// is bound elsewhere. With `/dev/sdb1` at `/data` and `/data/feather` bound at
/// `/var/lib/feather`, each of those two is the other's alias; a VM over `/` sees both, and
/// must find both hidden, and `commit` must guard both. See [`Place::paths`].
pub fn with_aliases(folders: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    with_aliases_in(folders, &host_mounts())
}

/// [`with_aliases`] from the mount table `mounts`.
pub fn with_aliases_in(
    folders: impl IntoIterator<Item = PathBuf>,
    mounts: &[MountEntry],
) -> Vec<PathBuf> {
    let mut all = std::collections::BTreeSet::new();
    for folder in folders {
        if let Some(place) = Place::of(&folder, mounts) {
            all.extend(place.paths(mounts));
        }
        all.insert(folder);
    }
    all.into_iter().collect()
}

/// Where a folder is in the host's mount table: the device of its filesystem (mountinfo's
/// `major:minor`, the superblock's: a btrfs subvolume's mount shows its filesystem's, with the
/// subvolume in the root field) and its path within that filesystem. Its aliases follow from
/// the table alone, with no look at any other mount: a `stat` of a dead NFS mount or of an
/// autofs path hangs (review gl27 L2), and the looks cost a start 0.3 ms (issue 15).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    device: String,
    path: PathBuf,
}

impl Place {
    /// Where `folder` (canonical) is, as `mounts` tell: in the mount its path leads to.
    pub fn of(folder: &Path, mounts: &[MountEntry]) -> Option<Place> {
        let on = showing(folder, mounts)?;
        let rest = folder.strip_prefix(&on.mount_point).ok()?;
        Some(Place {
            device: on.device.clone(),
            path: joined(&on.root, rest),
        })
    }

    /// Every path of `mounts` that shows the folder or part of it: the folder itself where a
    /// mount of its filesystem shows it or a folder above it (its root field the folder's path
    /// or above), and the whole mount point of a bind of a folder inside it (`vms` bound at
    /// `/srv/vms`: review gl27 M1). Only where that mount is the one the path leads to: a path
    /// another mount covers shows something else.
    pub fn paths(&self, mounts: &[MountEntry]) -> Vec<PathBuf> {
        let leads_to = |path: &Path, mount: &MountEntry| {
            showing(path, mounts).is_some_and(|shown| shown.id == mount.id)
        };
        mounts
            .iter()
            .filter(|mount| mount.device == self.device)
            .filter_map(|mount| {
                let path = match self.path.strip_prefix(&mount.root) {
                    Ok(rest) => joined(&mount.mount_point, rest),
                    Err(_) if mount.root.starts_with(&self.path) => mount.mount_point.clone(),
                    Err(_) => return None,
                };
                leads_to(&path, mount).then_some(path)
            })
            .collect()
    }
}

/// The mount the path `path` (canonical) leads to in `mounts`, found as a lookup of the path
/// finds it: from the namespace's root mount, into the mount on the first folder of the path
/// that has one (a mount stacked on another is on that one's root), until none is. Not by the
/// table's order: a mount moved since it was made (`/run` from the initramfs) is listed before
/// the mount it is on.
fn showing<'a>(path: &Path, mounts: &'a [MountEntry]) -> Option<&'a MountEntry> {
    let is_listed = |id: u64| mounts.iter().any(|mount| mount.id == id);
    let at_root = || {
        mounts
            .iter()
            .rev()
            .filter(|m| m.mount_point == Path::new("/"))
    };
    let mut on = at_root()
        .find(|mount| !is_listed(mount.parent))
        .or_else(|| at_root().next())?;
    // Each step goes one mount deeper: no more steps than mounts (a table read as it changed
    // could hold a loop).
    for _ in 0..mounts.len() {
        let next = mounts
            .iter()
            .filter(|mount| mount.parent == on.id && mount.id != on.id)
            .filter(|mount| path.starts_with(&mount.mount_point))
            .min_by_key(|mount| mount.mount_point.components().count());
        match next {
            Some(next) => on = next,
            None => break,
        }
    }
    Some(on)
}

/// `rest` beneath `at`, without the trailing `/` an empty `rest` would add.
fn joined(at: &Path, rest: &Path) -> PathBuf {
    match rest.as_os_str().is_empty() {
        true => at.to_path_buf(),
        false => at.join(rest),
    }
}

/// The entry of `root`, its state folder found by `checked` (the walk of its check, which
/// ended in the folder: its path as walked is the canonical one, never resolved by
/// `realpath`, which follows any link a user placed).
fn entry_of(root: &StateRoot, checked: &Lookup) -> Result<Entry> {
    if checked.missing.is_some() {
        return Err(std::io::Error::from(ErrorKind::NotFound)).at(root.dir());
    }
    let end = &checked.end.step;
    let (dir, dev, ino) = (end.path.clone(), end.meta.dev(), end.meta.ino());
    let run = match root.run_dir().strip_prefix(root.dir()) {
        // `--root DIR`'s own `DIR/run`: the canonical folder resolved once, not twice (each
        // resolution reads every component of the path as a link).
        Ok(inside) => canonical_inside(&dir, inside)?,
        Err(_) => canonical_run(root.run_dir())?,
    };
    Ok(Entry {
        dir,
        run,
        dev,
        ino,
        places: Vec::new(),
        id: String::new(),
        former_ids: Vec::new(),
        unresolved: false,
    })
}

/// `canonical_dir` joined with `inside`, a folder's name in it, where that is no link (or does
/// not exist yet): what [`canonical_run`] resolves, with one look instead of a resolution of
/// every component of the path. Anything else is resolved.
fn canonical_inside(canonical_dir: &Path, inside: &Path) -> Result<PathBuf> {
    let joined = canonical_dir.join(inside);
    let mut components = inside.components();
    let one_name = matches!(
        (components.next(), components.next()),
        (Some(std::path::Component::Normal(_)), None)
    );
    match fs::symlink_metadata(&joined) {
        Ok(meta) if one_name && !meta.file_type().is_symlink() => Ok(joined),
        Err(e) if one_name && e.kind() == ErrorKind::NotFound => Ok(joined),
        _ => canonical_run(&joined),
    }
}

/// The run folder may not exist yet: its parent does (the state folder, or /run).
fn canonical_run(run: &Path) -> Result<PathBuf> {
    if let Ok(run) = fs::canonicalize(run) {
        return Ok(run);
    }
    let (Some(parent), Some(name)) = (run.parent(), run.file_name()) else {
        return fs::canonicalize(run).at(run);
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    Ok(fs::canonicalize(parent).at(parent)?.join(name))
}

/// FNV-1a of the path: stable across builds, unlike std's hasher.
fn entry_name(dir: &Path) -> String {
    let hash = feather_sys::fnv::fnv1a_64(dir.as_os_str().as_encoded_bytes());
    format!("{hash:016x}.json")
}

/// When the file `path` was last written (the epoch when that cannot be told).
fn modified(path: &Path) -> std::time::SystemTime {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// The pids holding a shared flock on the file `meta` is of, as /proc/locks tells (nothing
/// when it cannot be read, or the holders lie in another pid namespace).
fn lock_holders(meta: &fs::Metadata) -> Vec<u32> {
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // "N: FLOCK ADVISORY READ pid maj:min:ino 0 EOF"; a waiter's line has "->".
            match fields.as_slice() {
                [_, "FLOCK", _, "READ", pid, file, ..] if *file == id => pid.parse().ok(),
                _ => None,
            }
        })
        .filter(|pid| *pid > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    std::thread_local! {
        /// The scratch folders this test's thread made: removed when the thread ends, passed
        /// or failed (libtest joins a test's thread, so they are gone before its result
        /// counts), after the guards on its stack (mounts, a FUSE daemon) have let go.
        static SCRATCH: std::cell::RefCell<Vec<feather_testkit::ScratchDir>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    /// A path not made yet, in a scratch folder of the test's own that is removed when the
    /// test ends, also when it fails.
    fn scratch(kind: &str) -> PathBuf {
        let folder = feather_testkit::ScratchDir::new(kind);
        let path = folder.0.join(kind);
        SCRATCH.with(|made| made.borrow_mut().push(folder));
        path
    }

    /// A registry and a root made for a test (`label` names their scratch folders), the root's
    /// folders made, not registered.
    fn a_root(label: &str) -> (Registry, StateRoot) {
        let registry = Registry::at(scratch(&format!("registry-{label}")));
        let root = StateRoot::new(Some(scratch(&format!("root-{label}"))));
        root.prepare().unwrap();
        (registry, root)
    }

    /// `source` and `target` made where missing, canonical, and `source` bound at `target`
    /// (the test unmounts it).
    fn bound(source: &Path, target: &Path) -> (PathBuf, PathBuf) {
        fs::create_dir_all(source).unwrap();
        fs::create_dir_all(target).unwrap();
        let (source, target) = (
            fs::canonicalize(source).unwrap(),
            fs::canonicalize(target).unwrap(),
        );
        let bind = std::process::Command::new("mount")
            .arg("--bind")
            .arg(&source)
            .arg(&target)
            .status()
            .unwrap();
        assert!(
            bind.success(),
            "bind {} at {}",
            source.display(),
            target.display()
        );
        (source, target)
    }

    /// A FUSE filesystem (fuse-overlayfs over a scratch folder) served by a daemon of the
    /// test's own, stopped (SIGSTOP) on demand, as a dead NFS or FUSE server: a lookup in it
    /// then waits. Let go, unmounted and ended on drop, also when the test failed.
    struct StoppableFuse {
        mount: PathBuf,
        daemon: std::process::Child,
        folder: PathBuf,
    }

    impl StoppableFuse {
        fn new(kind: &str) -> StoppableFuse {
            let folder = scratch(kind);
            let (lower, mount) = (folder.join("lower"), folder.join("mnt"));
            fs::create_dir_all(lower.join("d/state")).unwrap();
            fs::create_dir_all(&mount).unwrap();
            let daemon = std::process::Command::new("fuse-overlayfs")
                .arg("-f")
                .arg("-o")
                .arg(format!("lowerdir={}", lower.display()))
                .arg(&mount)
                .spawn()
                .expect("fuse-overlayfs (./setup.sh)");
            let fuse = StoppableFuse {
                mount,
                daemon,
                folder,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while !host_mounts().iter().any(|m| m.mount_point == fuse.mount) {
                assert!(Instant::now() < deadline, "fuse-overlayfs never mounted");
                std::thread::sleep(Duration::from_millis(20));
            }
            fuse
        }

        fn device(&self) -> String {
            let mounts = host_mounts();
            let mount = mounts.iter().find(|m| m.mount_point == self.mount);
            mount.unwrap().device.clone()
        }

        /// Sends `signal` (`STOP`, `CONT`) to the test's own daemon, by its pid.
        fn signal(&self, signal: &str) {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.daemon.id().to_string())
                .status();
        }
    }

    impl Drop for StoppableFuse {
        fn drop(&mut self) {
            self.signal("CONT");
            // Lazily, before the daemon goes: a busy mount must not stay behind, dead (ENOTCONN).
            let _ = std::process::Command::new("umount")
                .args(["-l"])
                .arg(&self.mount)
                .status();
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
            let _ = fs::remove_dir_all(&self.folder);
        }
    }

    /// What `diff` and `commit` guard is found with no look at an alias on another mount: a
    /// place recorded before a reboot whose device number is now a FUSE mount's (its server
    /// stopped) gives paths in that mount, which are guarded by path, and nothing there is
    /// `stat`ed. Before, each alias was `stat`ed for its identity, and the command waited as
    /// long as the server did (review lowroots29).
    #[test]
    fn what_diff_guards_is_found_without_a_look_at_an_aliass_mount() {
        let (registry, root) = a_root("dead-alias");
        registry.register(&root).unwrap().mark().unwrap();
        let fuse = StoppableFuse::new("fuse-dead-alias");
        let file = fs::read_dir(registry.dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|ext| ext == "json"))
            .unwrap();
        let mut entry: Entry = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        entry.places.push(Place {
            device: fuse.device(),
            path: "/d/state".into(),
        });
        fs::write(&file, serde_json::to_vec(&entry).unwrap()).unwrap();
        fuse.signal("STOP");
        let (send, answer) = std::sync::mpsc::channel();
        let looking = registry.dir().to_path_buf();
        let own = StateRoot::new(Some(root.dir().to_path_buf()));
        std::thread::spawn(move || {
            let found = Registry::at(looking).guarded_with(&own, &host_mounts());
            let _ = send.send(found.map(|found| found.folders));
        });
        // Generous: the look takes milliseconds; a `stat` in the stopped mount never ends.
        let folders = answer.recv_timeout(Duration::from_secs(60));
        fuse.signal("CONT");
        let folders = folders.expect("the guarded folders, found without waiting on the mount");
        assert!(
            folders.unwrap().contains(&fuse.mount.join("d/state")),
            "the alias is guarded by path"
        );
        drop(fuse);
        fs::remove_dir_all(registry.dir()).unwrap();
        fs::remove_dir_all(root.dir()).unwrap();
    }

    /// What `diff` and `commit` guard is found with no look through a registered path its
    /// resolution passed over: here a link in a user's folder that leads into a FUSE mount
    /// whose server is stopped (as a user's mount would be, judged and refused before it is
    /// asked anything). The entry is guarded by its path and recorded identity. Before, its
    /// folder was `lstat`ed by path for whether its recorded identity counts, which followed the
    /// link into the mount, and the command waited as long as the server did.
    #[test]
    fn what_diff_guards_is_found_without_a_look_through_a_path_passed_over() {
        let (registry, own) = a_root("passed-over");
        let fuse = StoppableFuse::new("fuse-passed-over");
        let users = scratch("passed-over-users");
        fs::create_dir_all(&users).unwrap();
        let users = fs::canonicalize(users).unwrap();
        std::os::unix::fs::symlink(&fuse.mount, users.join("link")).unwrap();
        std::os::unix::fs::chown(&users, Some(65534), Some(65534)).unwrap();
        let dir = users.join("link/d/state");
        let entry = Entry {
            run: dir.join("run"),
            dir: dir.clone(),
            dev: 1,
            ino: 2,
            places: Vec::new(),
            id: "passed-over".to_owned(),
            former_ids: Vec::new(),
            unresolved: false,
        };
        fs::create_dir_all(registry.dir()).unwrap();
        let file = registry.dir().join(entry_name(&entry.dir));
        fs::write(&file, serde_json::to_vec(&entry).unwrap()).unwrap();
        fuse.signal("STOP");
        let (send, answer) = std::sync::mpsc::channel();
        let looking = registry.dir().to_path_buf();
        std::thread::spawn(move || {
            let found = Registry::at(looking).guarded_with(&own, &host_mounts());
            let _ = send.send(found.map(|found| (found.folders, found.spared.identities)));
        });
        // Generous: the look takes milliseconds; one in the stopped mount never ends.
        let found = answer.recv_timeout(Duration::from_secs(60));
        fuse.signal("CONT");
        let (folders, identities) = found
            .expect("the guarded folders, found without waiting on the mount")
            .unwrap();
        assert!(folders.contains(&dir), "guarded by its path: {folders:?}");
        assert!(identities.contains(&(1, 2)), "and its recorded identity");
    }

    /// A user owning a registered root's parent swaps the root for a link (to `/usr`, say;
    /// here a folder of the test's): no VM hides where it leads, `diff` and `commit` guard
    /// nothing there, and the entry is neither listed nor dropped. Once the folder holding the
    /// link is root's alone (root moved the root and linked it back), the link is followed.
    #[test]
    fn a_root_a_user_swapped_for_a_link_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let (registry, root) = a_root("swapped");
        registry.register(&root).unwrap().mark().unwrap();
        let (_, own) = a_root("swapped-own");
        let dir = fs::canonicalize(root.dir()).unwrap();
        let parent = dir.parent().unwrap().to_path_buf();
        let elsewhere = scratch("swapped-target");
        fs::create_dir_all(elsewhere.join("run")).unwrap();
        let elsewhere = fs::canonicalize(elsewhere).unwrap();
        fs::rename(&dir, parent.join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        std::os::unix::fs::chown(&parent, Some(65534), Some(65534)).unwrap();
        assert!(registry.roots().is_empty(), "a user's link is not followed");
        let entries = registry.entries();
        let hidden = state_folders_of(
            &entries.live,
            &entries.at_recorded_places_only(),
            &host_mounts(),
        );
        assert!(
            !hidden.iter().any(|folder| folder.starts_with(&elsewhere)),
            "hidden where the link leads: {hidden:?}"
        );
        let guarded = registry.guarded_with(&own, &host_mounts()).unwrap();
        for target in [elsewhere.clone(), elsewhere.join("run")] {
            let target = fs::metadata(target).unwrap();
            assert!(!guarded
                .spared
                .identities
                .contains(&(target.dev(), target.ino())));
        }
        assert!(!guarded
            .folders
            .iter()
            .any(|folder| folder.starts_with(&elsewhere)));
        let entry_files = fs::read_dir(registry.dir())
            .unwrap()
            .flatten()
            .filter(|file| file.path().extension().is_some_and(|ext| ext == "json"));
        assert_eq!(entry_files.count(), 1, "the entry is kept");
        let stamps = fs::read_dir(registry.dir().join(crate::warning_stamps::STAMPS_DIR));
        assert_eq!(
            stamps.map(Iterator::count).ok(),
            Some(1),
            "the warning stamped said, once for its entry, by the reads above"
        );
        // Root's alone: root's own move, followed.
        std::os::unix::fs::chown(&parent, Some(0), Some(0)).unwrap();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
        let listed: Vec<PathBuf> = registry
            .roots()
            .iter()
            .map(|root| root.dir().to_path_buf())
            .collect();
        assert_eq!(listed, [elsewhere]);
        fs::remove_dir_all(registry.dir()).unwrap();
    }

    /// The warning for an entry whose root a user swapped for a link names each thing once:
    /// the link (the root itself) and the entry's file (both were named twice).
    #[test]
    fn the_warning_for_a_root_swapped_for_a_link_names_each_path_once() {
        let home = scratch("swapped-named-once");
        fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
        let link = fs::canonicalize(&home).unwrap().join("vms");
        std::os::unix::fs::symlink("/usr", &link).unwrap();
        let why = registered_path::resolve(&link).unwrap_err();
        fs::remove_dir_all(&home).unwrap();
        let file = Path::new(REGISTRY_DIR).join("0123456789abcdef.json");
        let warning = not_followed(&file, &why);
        for named in [link.as_path(), &file] {
            let times = warning.matches(named.to_str().unwrap()).count();
            assert_eq!(
                times,
                1,
                "{} named {times} times: {warning}",
                named.display()
            );
        }
    }

    #[test]
    fn the_strict_read_keeps_a_missing_root_and_fails_on_an_unreadable_entry() {
        let registry = Registry::at(scratch("registry-strict"));
        assert!(registry.roots_strict().unwrap().is_empty(), "no registry");
        let root = StateRoot::new(Some(scratch("root-strict")));
        root.prepare().unwrap();
        registry.register(&root).unwrap();
        fs::remove_dir_all(root.dir()).unwrap();
        assert_eq!(
            registry.roots_strict().unwrap().len(),
            1,
            "a missing root kept"
        );
        fs::write(registry.dir().join("broken.json"), "{").unwrap();
        let err = registry.roots_strict().unwrap_err().to_string();
        assert!(err.contains("broken.json"), "{err}");
        assert!(
            registry.roots().is_empty(),
            "the lenient read passes it over"
        );
        fs::remove_file(registry.dir().join("broken.json")).unwrap();
        fs::create_dir(registry.dir().join("folder.json")).unwrap();
        let err = registry.spared_strict().unwrap_err().to_string();
        assert!(
            err.contains("folder.json, of the registry") && err.contains("commits nothing"),
            "{err}"
        );
        fs::remove_dir_all(registry.dir()).unwrap();
    }

    /// A root registered while a commit runs would be missing from what it read of the
    /// registry: its registration waits for the commit (review fixes23 C7).
    #[test]
    fn a_new_root_is_registered_only_once_no_commit_holds_the_registry() {
        let (registry, root) = a_root("held");
        let hold = registry.hold_for_commit().unwrap();
        let second = registry.hold_for_commit().unwrap();
        let (done, registered) = std::sync::mpsc::channel();
        let (dir, root_dir) = (registry.dir().to_path_buf(), root.dir().to_path_buf());
        let registering = std::thread::spawn(move || {
            let root = StateRoot::new(Some(root_dir));
            let _ = done.send(
                Registry::at(dir)
                    .register(&root)
                    .map(|done| done.new.is_some()),
            );
        });
        let waited = Duration::from_millis(300);
        assert!(
            registered.recv_timeout(waited).is_err(),
            "registered while commits held the registry"
        );
        drop(hold);
        assert!(
            registered.recv_timeout(waited).is_err(),
            "one commit still holds it"
        );
        drop(second);
        let new = registered.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(new.unwrap(), "registered once no commit held it");
        registering.join().unwrap();
        assert_eq!(registry.roots().len(), 1);
        fs::remove_dir_all(root.dir()).unwrap();
        fs::remove_dir_all(registry.dir()).unwrap();
    }

    /// Commits that overlap one another cannot keep a registration out for ever: once it
    /// waits, a commit that begins waits behind it (flock alone would let it in).
    #[test]
    fn a_commit_begun_while_a_registration_waits_waits_behind_it() {
        let (registry, root) = a_root("turnstile");
        let first = registry.hold_for_commit().unwrap();
        let (dir, root_dir) = (registry.dir().to_path_buf(), root.dir().to_path_buf());
        let registering = std::thread::spawn(move || {
            let root = StateRoot::new(Some(root_dir));
            Registry::at(dir)
                .register(&root)
                .map(|done| done.new.is_some())
        });
        let turnstile = registry.open_turnstile().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while turnstile.try_lock_shared().is_ok() {
            turnstile.unlock().unwrap();
            assert!(
                Instant::now() < deadline,
                "the registration never began to wait"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let (held, next_holds) = std::sync::mpsc::channel();
        let dir = registry.dir().to_path_buf();
        let next = std::thread::spawn(move || {
            let hold = Registry::at(dir).hold_for_commit().unwrap();
            let _ = held.send(());
            hold
        });
        assert!(
            next_holds.recv_timeout(Duration::from_millis(300)).is_err(),
            "a commit began while a registration waited"
        );
        drop(first);
        assert!(registering.join().unwrap().unwrap(), "registered");
        next_holds.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(next.join().unwrap());
        fs::remove_dir_all(root.dir()).unwrap();
        fs::remove_dir_all(registry.dir()).unwrap();
    }

    /// A commit that holds the registry for long (stopped, or writing into an unread pager)
    /// makes a registration fail after a bounded wait, naming the registry and the commit's
    /// pid, rather than hang (review gl27 L1).
    #[test]
    fn a_registration_waits_for_a_commit_only_so_long() {
        let (registry, root) = a_root("stuck");
        let hold = registry.hold_for_commit().unwrap();
        let (done, registered) = std::sync::mpsc::channel();
        let (dir, root_dir) = (registry.dir().to_path_buf(), root.dir().to_path_buf());
        std::thread::spawn(move || {
            let root = StateRoot::new(Some(root_dir));
            let _ = done.send(
                Registry::at(dir)
                    .register(&root)
                    .map(|done| done.new.is_some()),
            );
        });
        let waited = COMMIT_PATIENCE + Duration::from_secs(5);
        let err = registered.recv_timeout(waited).expect("still waiting");
        let err = err.unwrap_err().to_string();
        assert!(
            err.contains(&registry.dir().display().to_string())
                && err.contains("feather commit")
                && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(hold);
        assert!(
            registry.register(&root).unwrap().new.is_some(),
            "registered now"
        );
        fs::remove_dir_all(root.dir()).unwrap();
        fs::remove_dir_all(registry.dir()).unwrap();
    }

    /// A folder bound elsewhere is found at both paths (review fixes23 C4); a path of the
    /// same filesystem that shows another folder is none of its aliases.
    #[test]
    fn a_folder_bound_elsewhere_has_the_other_path_for_an_alias() {
        let other = scratch("alias-other");
        fs::create_dir_all(&other).unwrap();
        let (source, target) = bound(&scratch("alias-source"), &scratch("alias-target"));
        let found = (
            with_aliases([source.clone()]),
            with_aliases([target.clone()]),
        );
        let alone = with_aliases([fs::canonicalize(&other).unwrap()]);
        let _ = std::process::Command::new("umount").arg(&target).status();
        for dir in [&source, &target, &other] {
            let _ = fs::remove_dir(dir);
        }
        let both = vec![source.clone(), target.clone()];
        let mut sorted = both.clone();
        sorted.sort();
        assert_eq!(found.0, sorted, "from the source");
        assert_eq!(found.1, sorted, "from the bind");
        assert_eq!(alone.len(), 1, "{alone:?}");
    }

    /// A folder inside a root bound elsewhere: its mount point is an alias of the root's, to
    /// hide and guard whole (review gl27 M1).
    #[test]
    fn a_bind_of_a_folder_inside_is_an_alias_too() {
        let root = scratch("inside-root");
        fs::create_dir_all(root.join("vms/a")).unwrap();
        let (vms, target) = bound(&root.join("vms"), &scratch("inside-target"));
        let root = vms.parent().unwrap().to_path_buf();
        let found = with_aliases([root.clone()]);
        let _ = std::process::Command::new("umount").arg(&target).status();
        let _ = fs::remove_dir_all(&root);
        let _ = fs::remove_dir(&target);
        let mut expected = vec![root, target];
        expected.sort();
        assert_eq!(found, expected);
    }

    /// A host's mount table as the kernel prints it: `/run` moved from the initramfs (listed
    /// before the root it is on), a disk at `/data` whose `feather` is bound at
    /// `/var/lib/feather` and whose `feather/vms` is bound at `/srv/vms`, the disk again at
    /// `/mnt/nfs-dead/disk` beneath a dead NFS mount, and a tmpfs over `/backup/feather`, which
    /// covers that disk's bind there.
    const TABLE: &str = "\
22 27 0:21 / /run rw - tmpfs tmpfs rw
27 1 254:0 / / rw - ext4 /dev/vda rw
30 27 8:17 / /data rw - ext4 /dev/sdb1 rw
31 27 8:17 /feather /var/lib/feather rw - ext4 /dev/sdb1 rw
32 27 8:17 /feather/vms /srv/vms rw - ext4 /dev/sdb1 rw
33 27 0:60 / /mnt/nfs-dead rw - nfs4 server:/ rw
34 33 8:17 / /mnt/nfs-dead/disk rw - ext4 /dev/sdb1 rw
35 27 8:17 / /backup rw - ext4 /dev/sdb1 rw
36 35 0:61 / /backup/feather rw - tmpfs tmpfs rw
";

    /// Every path showing a root's folder, from the mount table alone: none of these paths
    /// exists here, and the aliases are found all the same (before, each was `stat`ed, which a
    /// dead NFS mount hangs: review gl27 L2, issue 15); a path another mount covers is none.
    #[test]
    fn aliases_come_from_the_mount_table_alone() {
        let mounts = mountinfo::parse(TABLE);
        let found = with_aliases_in([PathBuf::from("/var/lib/feather")], &mounts);
        let expected: Vec<PathBuf> = [
            "/data/feather",
            "/mnt/nfs-dead/disk/feather",
            "/srv/vms",
            "/var/lib/feather",
        ]
        .map(PathBuf::from)
        .into();
        assert_eq!(found, expected, "/backup/feather is the tmpfs's");
        let place = Place::of(Path::new("/run/feather"), &mounts).unwrap();
        assert_eq!(
            (place.device.as_str(), place.path.as_path()),
            ("0:21", Path::new("/feather")),
            "/run is on /, listed after it"
        );
        assert_eq!(
            with_aliases_in([PathBuf::from("/srv/other")], &mounts),
            [PathBuf::from("/srv/other")],
            "a folder of / beside the bind has none"
        );
    }

    /// The place a root had when registered keeps giving its aliases once its own path shows
    /// another folder (the bind at `/var/lib/feather` unmounted: review gl27 M2b).
    #[test]
    fn a_recorded_place_gives_the_aliases_once_the_path_shows_another_folder() {
        let mounts = mountinfo::parse(TABLE);
        let recorded = Place::of(Path::new("/var/lib/feather"), &mounts).unwrap();
        let unbound: Vec<MountEntry> = mounts.into_iter().filter(|m| m.id != 31).collect();
        assert!(
            !with_aliases_in([PathBuf::from("/var/lib/feather")], &unbound)
                .contains(&PathBuf::from("/data/feather")),
            "the path alone no longer leads there"
        );
        assert!(recorded
            .paths(&unbound)
            .contains(&PathBuf::from("/data/feather")));
    }

    /// What the walks of `diff` and `commit` know a root by: the id in its folder, which it
    /// keeps moved and which its path keeps registered again, not the device and inode
    /// recorded at registration, which another folder may have after a reboot (review gl27
    /// M2, f27 N5).
    #[test]
    fn a_root_is_known_by_its_id_not_by_a_stale_inode() {
        let registry = Registry::at(scratch("registry-ids"));
        let scratch_dir = scratch("ids");
        let root = StateRoot::new(Some(scratch_dir.join("root")));
        root.prepare().unwrap();
        registry.register(&root).unwrap().mark().unwrap();
        let id = fs::read_to_string(root.dir().join(ROOT_ID_FILE)).unwrap();
        let is_spared = |folder: &Path| {
            let spared = registry.spared_strict().unwrap();
            let open = fs::File::open(folder).unwrap();
            spared.is(&open, &open.metadata().unwrap())
        };
        assert!(is_spared(root.dir()));

        // A reboot gave another folder the numbers the entry recorded: it is not the root.
        let other = scratch_dir.join("other");
        fs::create_dir(&other).unwrap();
        let entry_file = registry
            .dir()
            .join(entry_name(&fs::canonicalize(root.dir()).unwrap()));
        let mut entry = registry.read(&entry_file).unwrap();
        let meta = fs::metadata(&other).unwrap();
        (entry.dev, entry.ino) = (meta.dev(), meta.ino());
        fs::write(&entry_file, serde_json::to_vec(&entry).unwrap()).unwrap();
        assert!(!is_spared(&other), "a stale identity refuses falsely");

        // The root moved away, its path made again and registered again: both are the root's.
        let moved = scratch_dir.join("moved");
        fs::rename(root.dir(), &moved).unwrap();
        assert!(is_spared(&moved), "moved, its path gone");
        root.prepare().unwrap();
        let again = registry.register(&root).unwrap();
        assert!(again.new.is_some(), "made again: new");
        again.mark().unwrap();
        assert_eq!(
            fs::read_to_string(root.dir().join(ROOT_ID_FILE)).unwrap(),
            id,
            "its path keeps its id"
        );
        assert!(is_spared(&moved), "registered again");
        assert!(is_spared(root.dir()));
        fs::remove_dir_all(&scratch_dir).unwrap();
        fs::remove_dir_all(registry.dir()).unwrap();
    }

    #[test]
    fn a_root_is_new_once_and_listed_while_it_exists() {
        let (registry, root) = a_root("");
        let new = registry.register(&root).unwrap();
        new.mark().unwrap();
        let new = new.new.expect("first time: new");
        assert_eq!(new.dir(), fs::canonicalize(root.dir()).unwrap());
        assert!(registry.register(&root).unwrap().new.is_none(), "known");
        assert_eq!(registry.roots().len(), 1);
        fs::remove_dir_all(root.dir()).unwrap();
        assert!(registry.roots().is_empty(), "a removed root is not listed");
        fs::remove_dir_all(registry.dir()).unwrap();
    }

    #[test]
    fn a_sweep_is_claimed_once_its_stamp_is_a_minute_old_or_dated_ahead() {
        use std::os::unix::fs::PermissionsExt;
        let registry = Registry::at(scratch("registry-sweep"));
        let minute = Duration::from_secs(60);
        let date = |offset: i64| {
            let now = std::time::SystemTime::now();
            let at = match offset < 0 {
                true => now - Duration::from_secs(offset.unsigned_abs()),
                false => now + Duration::from_secs(offset as u64),
            };
            let stamp = fs::File::options()
                .write(true)
                .open(registry.sweep_stamp())
                .unwrap();
            stamp.set_modified(at).unwrap();
        };
        assert!(
            registry.claim_sweep(minute).unwrap().is_none(),
            "a stamp just made says now"
        );
        date(-120);
        let claimed = registry.claim_sweep(minute).unwrap();
        assert!(claimed.is_some(), "two minutes old: due");
        drop(claimed);
        assert!(
            registry.claim_sweep(minute).unwrap().is_none(),
            "the claim dated the stamp now"
        );
        date(3600);
        assert!(
            registry.claim_sweep(minute).unwrap().is_some(),
            "dated an hour ahead (the clock set back): due"
        );
        assert!(registry.roots().is_empty(), "the stamp is not an entry");

        // A sweep under way: the next claim does not wait for it.
        date(-120);
        let under_way = registry.claim_sweep(minute).unwrap();
        assert!(under_way.is_some());
        date(-120);
        assert!(
            registry.claim_sweep(minute).unwrap().is_none(),
            "a sweep under way: none more"
        );
        drop(under_way);
        assert!(registry.claim_sweep(minute).unwrap().is_some());

        // A stamp others could read, and so lock: refused, not waited on.
        fs::set_permissions(registry.sweep_stamp(), fs::Permissions::from_mode(0o644)).unwrap();
        date(-120);
        assert!(registry.claim_sweep(minute).is_err());
        fs::remove_dir_all(registry.dir()).unwrap();
    }

    /// The state folders a start of a VM over the host hides, as [`host_state_folders_in`]
    /// gives them, from `registry`.
    fn hidden_by(registry: &Registry) -> Vec<PathBuf> {
        let entries = registry.entries();
        state_folders_of(
            &entries.live,
            &entries.at_recorded_places_only(),
            &host_mounts(),
        )
    }

    /// Whether a walk of `diff` or `commit` knows `folder` for a root's by the registry alone.
    fn spared_by(registry: &Registry, folder: &Path) -> bool {
        let spared = registry.spared_strict().unwrap();
        let open = fs::File::open(folder).unwrap();
        spared.is(&open, &open.metadata().unwrap())
    }

    /// Dates the file `path` `secs` seconds back.
    fn backdate(path: &Path, secs: u64) {
        let at = std::time::SystemTime::now() - Duration::from_secs(secs);
        // Read-only: a folder too (the owner may date what it opened so).
        fs::File::open(path).unwrap().set_modified(at).unwrap();
    }

    /// A root bound from a source folder, its bind then unmounted: its path, registered again
    /// (the root's next command), keeps the place recorded before, so the source is still
    /// hidden; its mount point then removed, the entry is kept (not pruned a minute on) with
    /// its id and places, so the source is still hidden and guarded (review roots28 H1).
    #[test]
    fn a_root_unbound_then_gone_from_its_path_stays_hidden_and_guarded_at_its_source() {
        let registry = Registry::at(scratch("registry-unbound"));
        let folder = scratch("unbound");
        let (source, target) = bound(&folder.join("source"), &folder.join("target"));
        let root = StateRoot::new(Some(target.clone()));
        root.prepare().unwrap();
        registry.register(&root).unwrap().mark().unwrap();
        let unbound = std::process::Command::new("umount")
            .arg(&target)
            .status()
            .unwrap();
        assert!(unbound.success());
        // The root's next command: its path shows an empty folder now.
        root.prepare().unwrap();
        registry.register(&root).unwrap().mark().unwrap();
        let after_unbind = (hidden_by(&registry), spared_by(&registry, &source));
        let entry_file = registry.dir().join(entry_name(&target));
        backdate(&entry_file, 3600);
        fs::remove_dir_all(&target).unwrap();
        let after_rmdir = (
            hidden_by(&registry),
            spared_by(&registry, &source),
            entry_file.exists(),
        );
        fs::remove_dir_all(&folder).unwrap();
        fs::remove_dir_all(registry.dir()).unwrap();
        assert!(after_unbind.0.contains(&source), "{:?}", after_unbind.0);
        assert!(after_unbind.1, "guarded unbound");
        assert!(after_rmdir.0.contains(&source), "{:?}", after_rmdir.0);
        assert!(after_rmdir.1, "guarded, its path gone");
        assert!(after_rmdir.2, "the entry kept");
    }

    /// Entries of roots whose path is gone are kept, the newest [`RETIRED_KEPT`] of them: the
    /// registry does not grow without end with roots removed by hand.
    #[test]
    fn only_so_many_entries_of_roots_gone_are_kept_the_newest() {
        let registry = Registry::at(scratch("registry-retired"));
        fs::create_dir_all(registry.dir()).unwrap();
        let gone = scratch("retired-gone");
        let extra = 3;
        for n in 0..RETIRED_KEPT + extra {
            let dir = gone.join(n.to_string());
            let entry = Entry {
                run: dir.join("run"),
                dir,
                dev: 0,
                ino: n as u64,
                places: Vec::new(),
                id: format!("id{n}"),
                former_ids: Vec::new(),
                unresolved: false,
            };
            let file = registry.dir().join(entry_name(&entry.dir));
            fs::write(&file, serde_json::to_vec(&entry).unwrap()).unwrap();
            // The first ones the oldest.
            backdate(&file, (RETIRED_KEPT + extra - n) as u64 * 10);
        }
        assert!(registry.roots().is_empty(), "none listed");
        let ids = registry.spared_strict().unwrap().ids;
        fs::remove_dir_all(registry.dir()).unwrap();
        assert_eq!(ids.len(), RETIRED_KEPT);
        for n in 0..extra {
            assert!(!ids.contains(&format!("id{n}")), "the oldest go: {n}");
        }
    }

    /// A registration that ended before its root was marked (killed between writing the entry
    /// and [`Registration::mark`]) is done again at the root's next command, which marks it; a
    /// folder holding another id than its entry's (another host's root copied there) makes
    /// the entry take it, keeping the old one; a folder whose marker is removed is still known
    /// by its recorded identity (review roots28 M1).
    #[test]
    fn a_missing_or_other_marker_is_written_or_adopted_and_the_identity_guards_meanwhile() {
        let (registry, root) = a_root("marker");
        let first = registry.register(&root).unwrap();
        assert!(first.new.is_some());
        drop(first); // killed before its mark
        let again = registry.register(&root).unwrap();
        assert!(
            again.new.is_some(),
            "hidden again: the first may not have been"
        );
        again.mark().unwrap();
        let marker = root.dir().join(ROOT_ID_FILE);
        let id = fs::read_to_string(&marker).unwrap().trim().to_string();
        assert!(
            registry.register(&root).unwrap().new.is_none(),
            "marked now"
        );

        fs::remove_file(&marker).unwrap();
        let unmarked = spared_by(&registry, root.dir());

        fs::write(&marker, "0ther1d\n").unwrap();
        registry.register(&root).unwrap().mark().unwrap();
        let entry = registry
            .read(
                &registry
                    .dir()
                    .join(entry_name(&fs::canonicalize(root.dir()).unwrap())),
            )
            .unwrap();
        let ids = registry.spared_strict().unwrap().ids;
        fs::remove_dir_all(root.dir()).unwrap();
        fs::remove_dir_all(registry.dir()).unwrap();
        assert!(unmarked, "the marker removed: known by its identity");
        assert_eq!(entry.id, "0ther1d", "the folder's id adopted");
        assert_eq!(entry.former_ids, std::slice::from_ref(&id));
        assert!(ids.contains(&id) && ids.contains(&entry.id), "{ids:?}");
    }

    /// Two commands registering a new root at once draw one id between them: the one its
    /// folder holds is its entry's (review roots28 M1).
    #[test]
    fn concurrent_first_registrations_of_a_root_agree_on_its_id() {
        for round in 0..8 {
            let registry = Registry::at(scratch(&format!("registry-race{round}")));
            let root_dir = scratch(&format!("root-race{round}"));
            StateRoot::new(Some(root_dir.clone())).prepare().unwrap();
            let start = std::sync::Arc::new(std::sync::Barrier::new(2));
            let registering: Vec<_> = (0..2)
                .map(|_| {
                    let (dir, root_dir, start) = (
                        registry.dir().to_path_buf(),
                        root_dir.clone(),
                        start.clone(),
                    );
                    std::thread::spawn(move || {
                        let root = StateRoot::new(Some(root_dir));
                        start.wait();
                        Registry::at(dir).register(&root).unwrap().mark().unwrap();
                    })
                })
                .collect();
            for thread in registering {
                thread.join().unwrap();
            }
            let marker = fs::read_to_string(root_dir.join(ROOT_ID_FILE)).unwrap();
            let entry = registry
                .read(
                    &registry
                        .dir()
                        .join(entry_name(&fs::canonicalize(&root_dir).unwrap())),
                )
                .unwrap();
            fs::remove_dir_all(&root_dir).unwrap();
            fs::remove_dir_all(registry.dir()).unwrap();
            assert_eq!(marker.trim(), entry.id, "round {round}");
        }
    }

    /// A start's last look, finding a root registered meanwhile, reads the mount table again:
    /// the root may have been bound meanwhile too (review roots28 L1). With none, it reads none.
    #[test]
    fn the_last_look_reads_the_mount_table_again_only_for_a_late_root() {
        let (registry, root) = a_root("late");
        registry.register(&root).unwrap().mark().unwrap();
        let dir = fs::canonicalize(root.dir()).unwrap();
        let run = fs::canonicalize(root.run_dir()).unwrap();
        // The table now: the folder holding the root bound at /mnt/bound.
        let parent = dir.parent().unwrap().display().to_string();
        let table = format!(
            "27 1 254:0 / / rw - ext4 /dev/vda rw\n40 27 254:0 {parent} /mnt/bound rw - ext4 /dev/vda rw\n"
        );
        let bound = Path::new("/mnt/bound").join(dir.file_name().unwrap());
        // A start whose first look found the registry empty.
        let first = Look {
            registry: Registry::at(registry.dir().to_path_buf()),
            entries: Entries::default(),
        };
        let late = first.late_state_folders_of(&[], || mountinfo::parse(&table));
        let read = std::cell::Cell::new(false);
        let known = first.late_state_folders_of(&[dir.clone(), run], || {
            read.set(true);
            Vec::new()
        });
        fs::remove_dir_all(root.dir()).unwrap();
        fs::remove_dir_all(registry.dir()).unwrap();
        assert!(late.contains(&bound), "{late:?}");
        assert!(
            known.is_empty() && !read.get(),
            "no late root: no table read"
        );
    }

    /// A root root moved and linked back (root's link, followed), the link then pointed
    /// elsewhere by root after a start's first look, its entry unchanged: the start's last look
    /// resolves the entry again and hides where the link leads now. An entry is passed over
    /// only where the first look found it at the very paths it names.
    #[test]
    fn a_roots_link_pointed_elsewhere_after_a_starts_first_look_is_followed_by_its_last_look() {
        use std::os::unix::fs::PermissionsExt;
        let (registry, root) = a_root("relinked");
        registry.register(&root).unwrap().mark().unwrap();
        let dir = fs::canonicalize(root.dir()).unwrap();
        let parent = dir.parent().unwrap().to_path_buf();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
        let (before, after) = (parent.join("before"), parent.join("after"));
        fs::rename(&dir, &before).unwrap();
        fs::create_dir_all(after.join("run")).unwrap();
        std::os::unix::fs::symlink(&before, &dir).unwrap();
        let first = Registry::at(registry.dir().to_path_buf()).look();
        let known = first.state_folders_in(&[]);
        fs::remove_file(&dir).unwrap();
        std::os::unix::fs::symlink(&after, &dir).unwrap();
        let late = first.late_state_folders_of(&known, Vec::new);
        assert!(known.contains(&before), "{known:?}");
        assert!(late.contains(&after), "{late:?}");
    }

    /// Entries a start's first look found retired (the root's folder gone) or passed over (a
    /// user's link on the way) are resolved again by its last look: a folder made again at
    /// the path, or the link made root's, is hidden then (review startcost31 L2).
    #[test]
    fn entries_retired_or_passed_over_at_a_starts_first_look_are_resolved_by_its_last_look() {
        use std::os::unix::fs::PermissionsExt;
        let (registry, gone) = a_root("retired-again");
        registry.register(&gone).unwrap().mark().unwrap();
        let gone_dir = fs::canonicalize(gone.dir()).unwrap();
        let linked = StateRoot::new(Some(scratch("root-refused-again")));
        linked.prepare().unwrap();
        registry.register(&linked).unwrap().mark().unwrap();
        let linked_dir = fs::canonicalize(linked.dir()).unwrap();
        let parent = linked_dir.parent().unwrap().to_path_buf();
        let elsewhere = parent.join("elsewhere");
        fs::rename(&linked_dir, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &linked_dir).unwrap();
        fs::rename(&gone_dir, gone_dir.with_extension("away")).unwrap();
        std::os::unix::fs::chown(&parent, Some(65534), Some(65534)).unwrap();
        // Read from a mount table that names no place: what is hidden comes from the entries.
        let first = Registry::at(registry.dir().to_path_buf()).look();
        let known = first.state_folders_in(&[]);
        fs::rename(gone_dir.with_extension("away"), &gone_dir).unwrap();
        std::os::unix::fs::chown(&parent, Some(0), Some(0)).unwrap();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o755)).unwrap();
        let late = first.late_state_folders_of(&known, Vec::new);
        for found in [&gone_dir, &elsewhere] {
            assert!(!known.contains(found), "{known:?}");
            assert!(late.contains(found), "{late:?}");
        }
    }

    /// An entry passed over is warned of at most once per process while it reads so, also
    /// where no stamp can be written (its stamps' folder a file): the reads after the first
    /// (a start's last look) say nothing; another reason is said (review start33 L3, L7).
    #[test]
    fn an_entry_passed_over_is_warned_of_once_per_process_also_where_no_stamp_is_written() {
        let (registry, root) = a_root("warned-once");
        registry.register(&root).unwrap().mark().unwrap();
        let dir = fs::canonicalize(root.dir()).unwrap();
        let file = registry.dir().join(entry_name(&dir));
        let entry = registry.read(&file).unwrap();
        let stamps = registry.dir().join(crate::warning_stamps::STAMPS_DIR);
        fs::write(&stamps, "not a folder").unwrap();
        let (link, mount) = (
            Unresolved::TooManyLinks(dir.clone()),
            Unresolved::Relative(dir.clone()),
        );
        let said = [
            registry.warn_passed_over(&file, &entry, &link),
            registry.warn_passed_over(&file, &entry, &link),
            registry.warn_passed_over(&file, &entry, &mount),
            registry.warn_passed_over(&file, &entry, &mount),
        ];
        assert!(stamps.is_file(), "no stamp could be written");
        assert_eq!(said, [true, false, true, false]);
    }

    /// A registry holding one root (`label`), settled and summarised, then read by a start from
    /// its summary: the registry, the root, that start's first look and what it hid, and
    /// whether the registry was summarised.
    fn a_summarised_registry(label: &str) -> (Registry, StateRoot, Look, Vec<PathBuf>, bool) {
        let (registry, root) = a_root(label);
        registry.register(&root).unwrap().mark().unwrap();
        let summary_dir = registry.dir().join(folder_summary::SUMMARY_DIR);
        fs::create_dir_all(&summary_dir).unwrap();
        backdate(registry.dir(), 3600);
        hidden_by(&registry);
        let summarised = summary_dir.join("files.json").exists();
        let look = Registry::at(registry.dir().to_path_buf()).look();
        let hidden = look.state_folders_in(&host_mounts());
        (registry, root, look, hidden, summarised)
    }

    /// A root's entry written again during a start, under the same name (its run folder moved),
    /// after the start read the registry from its settled summary: the start's last look reads
    /// the new entry, not the summary's, and hides the new run folder (review startcost31 L1).
    #[test]
    fn an_entry_rewritten_after_a_start_read_the_summary_is_read_anew_by_the_last_look() {
        let (registry, root, first, known, summarised) = a_summarised_registry("rewritten");
        let moved = StateRoot::with_dirs(root.dir().into(), scratch("run-rewritten"));
        moved.prepare().unwrap();
        registry.register(&moved).unwrap().mark().unwrap();
        let new_run = fs::canonicalize(moved.run_dir()).unwrap();
        let late = first.late_state_folders_of(&known, Vec::new);
        for dir in [root.dir(), moved.run_dir(), registry.dir()] {
            fs::remove_dir_all(dir).unwrap();
        }
        assert!(summarised, "the start read the registry's summary");
        assert!(!known.contains(&new_run), "{known:?}");
        assert!(late.contains(&new_run), "{late:?}");
    }

    /// What a start hides comes from the registry's summary once the registry has settled,
    /// and a root registered after the summary was written is hidden all the same: the summary
    /// no longer matches the registry, and is passed over (issue 15).
    #[test]
    fn a_root_registered_after_the_registrys_summary_is_hidden() {
        let (registry, first, _, _, summarised) = a_summarised_registry("summary-first");
        let second = StateRoot::new(Some(scratch("root-summary-second")));
        second.prepare().unwrap();
        registry.register(&second).unwrap().mark().unwrap();
        let hidden = hidden_by(&registry);
        let second_dir = fs::canonicalize(second.dir()).unwrap();
        for dir in [first.dir(), second.dir(), registry.dir()] {
            fs::remove_dir_all(dir).unwrap();
        }
        assert!(summarised, "the settled registry summarised");
        assert!(hidden.contains(&second_dir), "{hidden:?}");
    }

    /// A root named through links, `..` or extra slashes is registered at the path its check's
    /// walk ended in, which is the one a resolution of the path finds: the same entry, not a
    /// second one for the same root.
    #[test]
    fn a_root_registered_from_its_checks_walk_is_the_root_resolved_by_path() {
        let folder = fs::canonicalize(scratch("checked-walk").parent().unwrap()).unwrap();
        fs::create_dir_all(folder.join("real/root")).unwrap();
        fs::create_dir_all(folder.join("real/sub")).unwrap();
        std::os::unix::fs::symlink(folder.join("real"), folder.join("link")).unwrap();
        std::os::unix::fs::symlink("real/root", folder.join("relative")).unwrap();
        // `deep/..` is `real`, where the link leads, not `folder`, as the path reads.
        std::os::unix::fs::symlink(folder.join("real/sub"), folder.join("deep")).unwrap();
        let spellings = [
            folder.join("real/root"),
            folder.join("link/root/"),
            folder.join("link/../real//root"),
            folder.join("relative"),
            folder.join("relative/../root"),
            folder.join("deep/../root"),
        ];
        for named in spellings {
            let (root, checked) = StateRoot::named(Some(named.clone())).prepare_dir().unwrap();
            let by_walk = entry_of(&root, &checked).unwrap();
            let by_path = fs::canonicalize(&named).unwrap();
            assert_eq!(by_walk.dir, by_path, "{}", named.display());
            assert_eq!(by_walk.run, by_path.join("run"), "{}", named.display());
        }
    }

    /// A state folder swapped at its path between the registration and the mark is not given
    /// the root's id (review roots28 L3: written by path, into whatever folder was there).
    #[test]
    fn the_id_goes_only_into_the_folder_registered() {
        let registry = Registry::at(scratch("registry-swap"));
        let folder = scratch("swap");
        let root = StateRoot::new(Some(folder.join("root")));
        root.prepare().unwrap();
        let registered = registry.register(&root).unwrap();
        fs::rename(root.dir(), folder.join("away")).unwrap();
        fs::create_dir(root.dir()).unwrap();
        let marked = registered.mark();
        let planted = root.dir().join(ROOT_ID_FILE).exists();
        fs::remove_dir_all(&folder).unwrap();
        fs::remove_dir_all(registry.dir()).unwrap();
        let err = marked.unwrap_err().to_string();
        assert!(err.contains("another folder"), "{err}");
        assert!(!planted, "the id written into the folder swapped in");
    }

    /// The own root's folders (a new root's, hidden in the running VMs; `diff`'s and
    /// `commit`'s own, guarded) and a folder whose roots are forgotten are resolved as the
    /// entries are: through a user's link, they name the link, never where it leads (both
    /// followed it, by `canonicalize`).
    #[test]
    fn a_root_or_folder_named_through_a_users_link_is_not_followed() {
        let (registry, kept) = a_root("through-link");
        registry.register(&kept).unwrap();
        let kept_dir = fs::canonicalize(kept.dir()).unwrap();
        let home = scratch("through-link-home");
        fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
        let link = fs::canonicalize(&home).unwrap().join("link");
        std::os::unix::fs::symlink(kept_dir.parent().unwrap(), &link).unwrap();
        let through = link.join(kept_dir.file_name().unwrap());
        let folders = root_folders_in(&StateRoot::new(Some(through.clone())), &[]);
        registry.forget_below(&link);
        let left = registry.roots();
        fs::remove_dir_all(&home).unwrap();
        fs::remove_dir_all(registry.dir()).unwrap();
        fs::remove_dir_all(kept.dir()).unwrap();
        assert_eq!(folders, [through.clone(), through.join("run")]);
        assert_eq!(left.len(), 1, "forgotten through a user's link");
    }

    /// The tests' sweep forgets only entries below its folder whose state folder is gone and
    /// that it may (an ended test's): never a live root's, nor another's.
    #[test]
    fn only_entries_of_gone_folders_below_one_and_let_go_are_forgotten() {
        let registry = Registry::at(scratch("registry-forget-gone"));
        let folder = scratch("forget-gone");
        let names = ["ended-gone", "ended-live", "running-gone"];
        for name in names {
            let root = StateRoot::new(Some(folder.join(name)));
            root.prepare().unwrap();
            registry.register(&root).unwrap();
        }
        let outside = StateRoot::new(Some(scratch("root-forget-gone-outside")));
        outside.prepare().unwrap();
        registry.register(&outside).unwrap();
        fs::remove_dir_all(folder.join("ended-gone")).unwrap();
        fs::remove_dir_all(folder.join("running-gone")).unwrap();
        fs::remove_dir_all(outside.dir()).unwrap();
        let folder = fs::canonicalize(&folder).unwrap();
        registry.forget_gone_below(&folder, |dir| !dir.ends_with("running-gone"));
        let mut left: Vec<PathBuf> = registry
            .entries_strict()
            .unwrap()
            .into_iter()
            .map(|entry| entry.dir)
            .collect();
        left.sort();
        fs::remove_dir_all(&folder).unwrap();
        fs::remove_dir_all(registry.dir()).unwrap();
        let outside_dir = outside.dir().to_path_buf();
        let mut kept = vec![
            folder.join("ended-live"),
            folder.join("running-gone"),
            outside_dir,
        ];
        kept.sort();
        assert_eq!(left, kept);
    }

    #[test]
    fn forgetting_a_folder_removes_the_entries_of_the_roots_below_it_only() {
        let registry = Registry::at(scratch("registry-forget"));
        let folder = scratch("forget");
        let inside = StateRoot::new(Some(folder.join("root")));
        let outside = StateRoot::new(Some(scratch("root-kept")));
        for root in [&inside, &outside] {
            root.prepare().unwrap();
            registry.register(root).unwrap();
        }
        registry.forget_below(&folder);
        let left: Vec<PathBuf> = registry
            .roots()
            .iter()
            .map(|r| r.dir().to_owned())
            .collect();
        assert_eq!(left, [fs::canonicalize(outside.dir()).unwrap()]);
        for dir in [&folder, outside.dir(), registry.dir()] {
            fs::remove_dir_all(dir).unwrap();
        }
    }
}

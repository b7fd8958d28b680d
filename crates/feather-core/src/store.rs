//! The state store: where each VM's files live, and the only code that reads or writes them.
//!
//! ```text
//! <root>/vms/<name>/config.toml   what the VM is (VmConfig)
//!                  /state.json    what it is doing (VmState)
//!                  /upper/        its private copy-on-write layer over the base
//!                  /work/         overlayfs's work folder for upper/
//!                  /mounts/<n>/   upper/ and work/ for the n-th other filesystem under the base
//!                  /rootfs/       where the VM's root is assembled (inside its mount namespace)
//!                  /keeper.lock   held by the keeper for its whole life; holds its pid and start
//!                                 time, whose end a start waits for
//!                  /keeper.log    the keeper's own messages
//!                  /op.lock       serialises start, stop, rm, reset and commit
//!                  /checkpoint/   CRIU images of the last checkpoint, and CRIU's logs
//! <run>/<name>/control.sock       the keeper's control socket
//! <root>/.tightened-v1            every VM folder made private once (see `StateRoot::prepare`)
//! <root>/teardown.log             what the teardowns handed over by `run --rm` had to say
//!                                 (their finishers' stderr; see `StateRoot::teardown_log`)
//! <root>/vms/.removing-<name>-<id>/, <run>/.removing-<name>-<id>/
//!                                 a throw-away VM that ended, set aside while its teardown
//!                                 finishes (its keeper lock held until then; see
//!                                 `feather_vm::lifecycle::settle_throw_aways`)
//! ```
//!
//! The root, its `vms/`, every VM folder, the run folder and every VM's run folder are 0700:
//! a VM's layer holds whatever the VM made, set-uid-root programs included, and no other host
//! user may reach them through the host's tree. Nothing needs more: processes inside a VM
//! reach their files through the VM's overlay, whose lookups below the mount never walk these
//! host folders, and the generated /etc files are bound in by descriptor, not by path.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use feather_sys::lookup::Lookup;

use crate::atomic::{stage, sync_all, write_atomic, Durability, Staged};
use crate::error::{Error, IoContext, Result};
use crate::{VmConfig, VmName, VmState, VmStatus};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/feather";
/// See [`StateRoot::teardown_log`].
pub const TEARDOWN_LOG: &str = "teardown.log";
/// Where a full [`TEARDOWN_LOG`] is moved (the one before is dropped).
pub const TEARDOWN_LOG_ROTATED: &str = "teardown.log.1";
/// The size past which [`TEARDOWN_LOG`] is moved aside: 1 MiB, about ten thousand failures.
pub const TEARDOWN_LOG_LIMIT: u64 = 1 << 20;
pub const DEFAULT_RUN_DIR: &str = "/run/feather";

/// How the folders of a throw-away VM whose teardown is under way begin (see
/// [`VmDir::set_aside`]); no VM name starts with a dot.
const SET_ASIDE: &str = ".removing-";

/// How the folder of a VM being created begins, until it is renamed into place
/// ([`StateRoot::create`]).
const CREATING: &str = ".creating-";

/// The mode of every folder of feather's own: root alone may enter.
const PRIVATE: u32 = 0o700;

/// `<root>/.tightened-v1`: present once [`StateRoot::prepare`] has made every VM folder (and
/// every VM's run folder) of the root private, which an older feather made 0755. A root
/// without it (an older feather's) is walked again at the next command.
const TIGHTENED: &str = ".tightened-v1";

/// Whether `dir` is the default root's folder spelled otherwise (`/var/lib/feather/`,
/// `//var/lib/feather`, through a symbolic link to `/var` or to the folder): its sockets are
/// in [`DEFAULT_RUN_DIR`] too. Given as `<dir>/run`, a command's claims, fills and status
/// requests looked for the default root's VMs' sockets where none are (a fill of one
/// spelling ended the other's pooled VMs as not answering). The folder may not exist yet
/// (a host's first command): its parent's identity is compared then, with the name missing.
/// Found as the root's check walks it ([`feather_sys::lookup::walk`]), not by `realpath`: a
/// mount a user decides the files of on the way ends the walk before it is asked anything (a
/// FUSE server that never answers hung the command before its refusal: review roots31 L2).
/// `walked`: the walk of `dir`.
fn is_the_default(walked: &std::io::Result<Lookup>) -> bool {
    let place = |lookup: &Lookup| {
        let meta = &lookup.end.step.meta;
        (meta.dev(), meta.ino(), lookup.missing.clone())
    };
    let Ok(dir) = walked else {
        return false;
    };
    if let Some(default) = place_on_slashs_mount(Path::new(DEFAULT_STATE_DIR)) {
        return place(dir) == default;
    }
    let default = feather_sys::lookup::walk(Path::new(DEFAULT_STATE_DIR));
    default.is_ok_and(|default| place(dir) == place(&default))
}

/// Where the folder `path` (absolute) is, as [`is_the_default`] compares [`DEFAULT_STATE_DIR`]:
/// found with one `openat2` (two where it is not made yet) when its path, or its parent's, is
/// plain folders on the mount of `/` (`RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS`): no mount is
/// crossed (an automount point on the way is mounted first, as the walk's own open of it
/// would) and no link followed; what the walk would find,
/// without its open and two `statx` per name (14 system calls at every command given
/// `--root`). None (the walk decides) where a link or a mount is on the way, as where `/var`
/// is a filesystem of its own.
fn place_on_slashs_mount(path: &Path) -> Option<(u64, u64, Option<PathBuf>)> {
    let slash = feather_sys::beneath::open_root(Path::new("/")).ok()?;
    let place = |path: &Path| -> std::io::Result<(u64, u64)> {
        let below_slash = path.strip_prefix("/").map_err(std::io::Error::other)?;
        let meta = feather_sys::beneath::pin_folder_on_mount(&slash, below_slash)?.metadata()?;
        Ok((meta.dev(), meta.ino()))
    };
    match place(path) {
        Ok((dev, ino)) => Some((dev, ino, None)),
        // Not made yet (a link in its place is ENOTDIR and one on the way ELOOP, each for the
        // walk to follow): its parent, with the name missing, as the walk says.
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let (dev, ino) = place(path.parent()?).ok()?;
            Some((dev, ino, Some(PathBuf::from(path.file_name()?))))
        }
        Err(_) => None,
    }
}

/// A state root: the folder holding every VM, and the run folder holding their sockets.
#[derive(Clone, Debug)]
pub struct StateRoot {
    dir: PathBuf,
    run: PathBuf,
}

/// A state root as a command names it, with the walk of its folder that told whether it is
/// the default root: [`NamedRoot::prepare_dir`] judges that walk rather than walking the path
/// again (each walk opens and `fstat`s every name on the way, and a command walked the same
/// `--root` three times).
pub struct NamedRoot {
    pub root: StateRoot,
    walked: Option<std::io::Result<Lookup>>,
}

impl NamedRoot {
    /// [`StateRoot::prepare_dir`], judging the walk the root was named with.
    pub fn prepare_dir(self) -> Result<(StateRoot, Lookup)> {
        let checked = self.root.prepare_dir_walked(self.walked)?;
        Ok((self.root, checked))
    }

    /// The root, once the walk it was named with says its folder is there and passes the
    /// check of its folders ([`crate::strict_modes::check_state_root`]); None, with nothing
    /// made or judged, where its folder is not made (for a command that acts only in a root
    /// that is there: a pool's fill, which a root drained or removed meanwhile leaves with
    /// nothing to do). One walk of the path serves the folder's look, the default root's
    /// spelling and the check.
    pub fn checked_if_made(self) -> Result<Option<StateRoot>> {
        let walked = self
            .walked
            .unwrap_or_else(|| feather_sys::lookup::walk(&self.root.dir));
        if walked.as_ref().is_ok_and(|lookup| lookup.missing.is_some()) {
            return Ok(None);
        }
        crate::strict_modes::check_walked(&self.root.dir, walked)?;
        Ok(Some(self.root))
    }
}

impl StateRoot {
    /// The default root (`/var/lib/feather`, sockets in `/run/feather`), or `dir` with its
    /// sockets in `dir/run`, so that separate roots (one per test) never share anything.
    pub fn new(dir: Option<PathBuf>) -> Self {
        StateRoot::named(dir).root
    }

    /// [`StateRoot::new`], with the walk of `dir` that told whether it is the default root.
    pub fn named(dir: Option<PathBuf>) -> NamedRoot {
        let default = NamedRoot {
            root: StateRoot {
                dir: DEFAULT_STATE_DIR.into(),
                run: DEFAULT_RUN_DIR.into(),
            },
            walked: None,
        };
        // Absolute: a VM's init mounts under it after changing folder, and the process a
        // throw-away VM's teardown is handed to leaves the caller's folder.
        let Some(dir) = dir.map(|dir| std::path::absolute(&dir).unwrap_or(dir)) else {
            return default;
        };
        if dir == Path::new(DEFAULT_STATE_DIR) {
            return default;
        }
        let walked = feather_sys::lookup::walk(&dir);
        if is_the_default(&walked) {
            return default;
        }
        NamedRoot {
            root: StateRoot {
                run: dir.join("run"),
                dir,
            },
            walked: Some(walked),
        }
    }

    /// A root with both folders given, as a keeper receives them from `feather start`.
    pub fn with_dirs(dir: PathBuf, run: PathBuf) -> Self {
        StateRoot { dir, run }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn run_dir(&self) -> &Path {
        &self.run
    }

    fn vms_dir(&self) -> PathBuf {
        self.dir.join("vms")
    }

    /// Where the process finishing a throw-away VM's teardown after `run --rm` returned
    /// (`feather-keeper __finish`) writes what it has to say: a failure there has no terminal
    /// left to tell, and the VM's own `keeper.log` goes with its folder. Appended to by every
    /// such process of the root; moved to [`TEARDOWN_LOG_ROTATED`] when past
    /// [`TEARDOWN_LOG_LIMIT`], so the two hold at most twice that.
    pub fn teardown_log(&self) -> PathBuf {
        self.dir.join(TEARDOWN_LOG)
    }

    /// [`StateRoot::teardown_log`], opened to append (made 0600 if missing; moved aside first if
    /// past its limit). Only a plain file, never through a symbolic link: the finisher runs as
    /// root, and a root's folder may be a user's (`sudo feather --root ~/vms …`).
    pub fn open_teardown_log(&self) -> Result<File> {
        let path = self.teardown_log();
        let open = || {
            let log = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .at(&path)?;
            let meta = log.metadata().at(&path)?;
            if !meta.file_type().is_file() {
                let not_a_file = std::io::Error::new(ErrorKind::InvalidInput, "not a plain file");
                return Err(not_a_file).at(&path);
            }
            Ok((log, meta))
        };
        let (log, meta) = open()?;
        if meta.len() <= TEARDOWN_LOG_LIMIT {
            return Ok(log);
        }
        // Moved aside by one finisher at a time, under the log's own lock, and only while the
        // path still names it: a second finisher that saw the same full log finds a new one
        // there once it has the lock, and does not move that over the first's history.
        log.lock().at(&path)?;
        if fs::symlink_metadata(&path).is_ok_and(|now| now.ino() == meta.ino()) {
            let _ = fs::rename(&path, self.dir.join(TEARDOWN_LOG_ROTATED));
        }
        drop(log);
        open().map(|(log, _)| log)
    }

    /// Makes the root's state and run folders exist, 0700, and tightens what an older feather
    /// made 0755 (the root, `vms/`, each VM folder, each VM's run folder): from here on no
    /// other host user can reach a VM's layer. The root and its two parent folders are looked
    /// at on every call (a few system calls); the walk over every VM's folders only until it
    /// has completed once in this root ([`TIGHTENED`]), since every folder made since is made
    /// 0700: before every command it cost two opens per VM (exec's system time 1.2 → 2.0 ms
    /// with 100 VMs).
    pub fn prepare(&self) -> Result<()> {
        self.prepare_dir()?;
        self.prepare_inside()
    }

    /// [`Self::prepare`] after [`Self::prepare_dir`], for a caller that made the state folder
    /// itself first (the front, before it records the root in the registry of roots): each
    /// folder looked at once.
    pub fn prepare_inside(&self) -> Result<()> {
        // The run folder is opened without following a link (as `vms/`), and made only if it
        // is not there (after a reboot, for the default root in /run).
        if !make_private(&self.run, Follow::No)? {
            make_private_dir(&self.run)?;
        }
        make_private(&self.vms_dir(), Follow::No)?;
        let parents = [self.vms_dir(), self.run.clone()];
        let marker = self.dir.join(TIGHTENED);
        if marker.exists() {
            return Ok(());
        }
        for parent in &parents {
            let Ok(entries) = fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    make_private(&entry.path(), Follow::No)?;
                }
            }
        }
        // The walk is done; a marker that cannot be written (a full disk, a root mounted
        // read-only) only means the next command walks again, and must not fail this one —
        // `feather rm`, which frees the space, included.
        let _ = write_atomic(&marker, b"", Durability::Durable);
        Ok(())
    }

    /// Makes the state folder alone exist, 0700, without anything in it yet: what the
    /// registry of roots needs before the root is hidden from running VMs.
    /// Refused, before anything is made or changed in it, when a user other than root could
    /// change a folder on its way ([`crate::strict_modes`]).
    pub fn prepare_dir(&self) -> Result<()> {
        self.prepare_dir_walked(None).map(drop)
    }

    /// [`StateRoot::prepare_dir`], judging `walked` (a walk of the folder taken a moment ago)
    /// where given. Returns the check's lookup: the folder, as the walk found it, is the one
    /// opened.
    fn prepare_dir_walked(&self, walked: Option<std::io::Result<Lookup>>) -> Result<Lookup> {
        // Made, where missing, one folder at a time in the folders the check went through,
        // each looked at once made (a part of it someone else made first in the sticky /tmp is
        // theirs); an existing root is not asked to be made again (mkdir's EEXIST and the look
        // that follows it, at every command).
        let made = crate::strict_modes::made_state_root(&self.dir, walked)?;
        #[cfg(test)]
        tests::between_check_and_open(&self.dir);
        // Opened once by path, as every later step finds it: it must be the folder the check
        // ended in, not one put in its place since (a rename in a sticky folder above it).
        let opened = open_folder(&self.dir, Follow::Yes)?;
        crate::strict_modes::same_root(&self.dir, &made, opened.as_ref())?;
        if let Some(opened) = opened {
            tighten(&opened, &self.dir)?;
        }
        Ok(made)
    }

    /// Makes the VM's run folder (and the root's) exist, 0700, before its keeper puts its
    /// socket and generated files there.
    pub fn make_run_dir(&self, vm: &VmDir) -> Result<()> {
        make_private_dir(&vm.run)?;
        make_private(&self.run, Follow::Yes)?;
        make_private(&vm.run, Follow::No).map(drop)
    }

    /// The folder a VM of this name has or would have; it may not exist.
    pub fn vm(&self, name: &VmName) -> VmDir {
        VmDir {
            name: name.clone(),
            path: self.vms_dir().join(name.as_str()),
            run: self.run.join(name.as_str()),
        }
    }

    /// An existing VM, or [`Error::NotFound`].
    pub fn open(&self, name: &VmName) -> Result<VmDir> {
        let vm = self.vm(name);
        if vm.config_path().exists() {
            Ok(vm)
        } else {
            Err(Error::NotFound(name.to_string()))
        }
    }

    /// Every VM, sorted by name. Folders that are not complete VMs (a create that died
    /// half-way) are skipped; [`StateRoot::set_aside_vms_sweeping`] removes them.
    pub fn list(&self) -> Result<Vec<VmDir>> {
        let entries = match fs::read_dir(self.vms_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).at(self.vms_dir()),
        };
        let mut vms: Vec<VmDir> = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.parse::<VmName>().ok())
            .map(|name| self.vm(&name))
            .filter(|vm| vm.config_path().exists())
            .collect();
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vms)
    }

    /// Creates a VM's folder with its config and initial state, atomically: it is assembled
    /// under a temporary name and renamed into place, so a crash leaves no half-made VM and
    /// two racing creates of one name cannot both succeed.
    pub fn create(&self, config: &VmConfig, durability: Durability) -> Result<VmDir> {
        self.create_synced_with(config, durability, &[])
    }

    /// [`Self::create`], where `made_for_it` (files written unsynced elsewhere for this VM, such
    /// as its address lease, in the order they must reach the disk) are synced with the VM's
    /// own files when `durability` asks for it: in one journal commit, and before the rename
    /// that makes the VM exist, so that a power cut never leaves a VM without them.
    pub fn create_synced_with(
        &self,
        config: &VmConfig,
        durability: Durability,
        made_for_it: &[PathBuf],
    ) -> Result<VmDir> {
        let vm = self.vm(&config.name);
        if vm.path.exists() {
            return Err(Error::AlreadyExists(config.name.to_string()));
        }
        let vms_dir = self.vms_dir();
        make_private_dir(&vms_dir)?;
        let temp = vms_dir.join(format!("{CREATING}{}-{}", config.name, config.id));
        // Locked until the folder is renamed into place (let go when this function returns):
        // a sweep passes over the folder of a create alive, however long it takes.
        let creating = made_creating(&temp)?;
        let assemble = || -> Result<()> {
            // upper/ keeps the ordinary 0755: its mode is the mode of the VM's `/`. A layer in
            // memory is made by the keeper; only the mount point is on disk.
            let folders: &[&str] = if config.layer_in_memory() {
                &["rootfs"]
            } else {
                &["upper", "work", "rootfs", "mounts"]
            };
            for sub in folders {
                fs::create_dir(temp.join(sub)).at(temp.join(sub))?;
            }
            let staged = VmDir {
                name: config.name.clone(),
                path: temp.clone(),
                run: vm.run.clone(),
            };
            // Written in place (no one reads a folder by its temporary name, and a crash leaves
            // it to `set_aside_vms_sweeping`), unsynced, then synced together: the folder once,
            // after both files, and the rename into place below.
            write_new(&staged.config_path(), config_text(config)?.as_bytes())?;
            write_new(&staged.state_path(), &state_text(&VmState::created())?)?;
            // `Whole` as `Durable`: a VM's folder is whole only with its files and their names.
            if durability != Durability::Volatile {
                let own = [staged.config_path(), staged.state_path(), temp.clone()];
                sync_all(&[made_for_it, &own].concat())?;
            }
            Ok(())
        };
        if let Err(e) = assemble() {
            let _ = fs::remove_dir_all(&temp);
            return Err(e);
        }
        // rename(2) refuses to replace a non-empty directory, and ours is never empty.
        if let Err(e) = fs::rename(&temp, &vm.path) {
            let _ = fs::remove_dir_all(&temp);
            return match e.kind() {
                ErrorKind::AlreadyExists | ErrorKind::DirectoryNotEmpty => {
                    Err(Error::AlreadyExists(config.name.to_string()))
                }
                _ => Err(e).at(&vm.path),
            };
        }
        if durability == Durability::Durable {
            // The rename itself: without this, a power cut could forget the VM just made.
            if let Err(e) = sync_all(&[vms_dir]) {
                let _ = fs::remove_dir_all(&vm.path);
                return Err(e);
            }
        }
        drop(creating);
        Ok(vm)
    }

    /// Throw-away VMs set aside by [`VmDir::set_aside`] whose folders are still there: their
    /// teardown is under way (their keeper lock is held) or died half-way.
    pub fn set_aside_vms(&self) -> Vec<VmDir> {
        self.listed_aside(false)
    }

    /// [`StateRoot::set_aside_vms`], removing on the way what creates that died half-way left
    /// behind: for every command, which settles the teardowns before it acts, in the one
    /// listing of `vms/` (a create listed it again right after, for this alone). A create
    /// holds a lock on its folder until it renames it into place ([`made_creating`]), so only
    /// a folder whose lock is free is swept, and only once it is a minute old: a create alive
    /// in another process, stalled in a sync or stopped however long, keeps its folder, and
    /// one that has just made its folder has not locked it yet.
    pub fn set_aside_vms_sweeping(&self) -> Vec<VmDir> {
        self.listed_aside(true)
    }

    /// [`StateRoot::set_aside_vms`]; `sweep`: see [`StateRoot::set_aside_vms_sweeping`].
    fn listed_aside(&self, sweep: bool) -> Vec<VmDir> {
        let Ok(entries) = fs::read_dir(self.vms_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let folder = entry.file_name().into_string().ok()?;
                if sweep && folder.starts_with(CREATING) {
                    sweep_if_dead(&entry.path());
                    return None;
                }
                let (name, _id) = folder.strip_prefix(SET_ASIDE)?.rsplit_once('-')?;
                Some(VmDir {
                    name: name.parse().ok()?,
                    path: entry.path(),
                    run: self.run.join(&folder),
                })
            })
            .collect()
    }
}

/// Makes the folder `temp` a create assembles a VM in, and locks it: the lock, held until the
/// folder is renamed into place, tells a sweep that the create is alive
/// ([`StateRoot::set_aside_vms_sweeping`]). The kernel lets it go when the create dies.
fn made_creating(temp: &Path) -> Result<File> {
    fs::DirBuilder::new().mode(PRIVATE).create(temp).at(temp)?;
    let locked = locked_while_moved(temp);
    if locked.is_err() {
        let _ = fs::remove_dir(temp);
    }
    locked
}

/// The folder `folder` of `vms/`, locked as a create's is ([`made_creating`]): for whoever
/// renames a VM's folder to a `.creating-*` name to remove it (`rm`), so that a sweep does not
/// remove it meanwhile under its feet. The lock stays on the folder through the rename.
pub fn locked_while_moved(folder: &Path) -> Result<File> {
    let opened = open_creating(folder)?;
    opened.lock().at(folder)?;
    Ok(opened)
}

/// The folder of a create `path` in `vms/`, opened (never through a link).
fn open_creating(path: &Path) -> Result<File> {
    feather_sys::folder::open_no_follow(path).at(path)
}

/// Removes the folder of a create `path` in `vms/` if the create is dead: no one holds its
/// lock ([`made_creating`]), and it was last changed more than a minute ago. Removed under
/// its lock, and only while `path` is the folder locked.
fn sweep_if_dead(path: &Path) {
    let Ok(folder) = open_creating(path) else {
        return;
    };
    if folder.try_lock().is_err() {
        return;
    }
    let Ok(meta) = folder.metadata() else {
        return;
    };
    let stale = meta
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > std::time::Duration::from_secs(60));
    let still_there = fs::symlink_metadata(path)
        .is_ok_and(|now| (now.dev(), now.ino()) == (meta.dev(), meta.ino()));
    if stale && still_there {
        remove_beneath(path);
    }
}

/// Removes the folder `path` and everything in it through descriptors, at any depth and never
/// following a link: what a dead create, import or `rm` left may hold a VM's layer, whose
/// folders the VM chose (an `rm` removes it the same way).
fn remove_beneath(path: &Path) {
    let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let _ = feather_sys::beneath::open_root(folder)
        .and_then(|folder| feather_sys::beneath::remove_tree(&folder, name));
}

/// One VM's folder.
#[derive(Clone, Debug)]
pub struct VmDir {
    name: VmName,
    path: PathBuf,
    run: PathBuf,
}

impl VmDir {
    pub fn name(&self) -> &VmName {
        &self.name
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }
    pub fn state_path(&self) -> PathBuf {
        self.path.join("state.json")
    }
    pub fn upper(&self) -> PathBuf {
        self.path.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.path.join("work")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }
    /// Layers of the other filesystems mounted under the base, one folder each.
    pub fn mounts(&self) -> PathBuf {
        self.path.join("mounts")
    }
    /// The CRIU images of the VM's last checkpoint, and CRIU's logs.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.path.join("checkpoint")
    }
    pub fn keeper_log(&self) -> PathBuf {
        self.path.join("keeper.log")
    }
    pub fn run_dir(&self) -> &Path {
        &self.run
    }
    /// The state root this VM's folders are in (`<root>/vms/<name>`, `<run>/<name>`), for
    /// code given the VM alone. None for folders without those parents.
    pub fn root(&self) -> Option<StateRoot> {
        let dir = self.path.parent()?.parent()?;
        let run = self.run.parent()?;
        Some(StateRoot::with_dirs(dir.to_owned(), run.to_owned()))
    }
    pub fn control_socket(&self) -> PathBuf {
        self.run.join("control.sock")
    }
    /// A record of what `commit` wrote to the base, so that a later commit can tell the host's
    /// own changes from feather's.
    pub fn commit_journal(&self) -> PathBuf {
        self.path.join("committed.json")
    }
    /// What the VM's layers lay over when it last started (`feather_vm::layers::SeenLowers`).
    pub fn lower_mounts(&self) -> PathBuf {
        self.path.join("lowers.json")
    }

    pub fn read_config(&self) -> Result<VmConfig> {
        let path = self.config_path();
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::NotFound(self.name.to_string()),
            _ => Error::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        toml::from_str(&text).map_err(|e| self.corrupt(path, e.to_string()))
    }

    pub fn write_config(&self, config: &VmConfig, durability: Durability) -> Result<()> {
        write_atomic(
            &self.config_path(),
            config_text(config)?.as_bytes(),
            durability,
        )
    }

    /// The recorded state, with a dead keeper turned into [`VmStatus::Crashed`].
    pub fn read_state(&self) -> Result<VmState> {
        let path = self.state_path();
        let text = fs::read(&path).at(&path)?;
        let mut state: VmState =
            serde_json::from_slice(&text).map_err(|e| self.corrupt(path, e.to_string()))?;
        if state.status == VmStatus::Running && !self.keeper_alive()? {
            state.status = VmStatus::Crashed;
        }
        Ok(state)
    }

    pub fn write_state(&self, state: &VmState, durability: Durability) -> Result<()> {
        self.state_staged_as(state, durability, "tmp")?.commit()
    }

    /// A state written (and synced, unless `Volatile`) ahead, that becomes the VM's record when
    /// committed (see [`crate::atomic::Staged`]).
    pub fn stage_state(&self, state: &VmState, durability: Durability) -> Result<Staged> {
        self.state_staged_as(state, durability, "staged")
    }

    /// The VM's record staged under a name of `kind`; a `Volatile` one (a throw-away VM's)
    /// replaces the record by an exchange of names, which ext4 does not write out
    /// ([`Staged::exchanging_names`]: this folder's readers take no dot name, and
    /// [`crate::atomic::remove_abandoned`] sweeps it).
    fn state_staged_as(
        &self,
        state: &VmState,
        durability: Durability,
        kind: &str,
    ) -> Result<Staged> {
        Ok(stage(&self.state_path(), &state_text(state)?, durability, kind)?.exchanging_names())
    }

    /// Takes the keeper lock, which the keeper holds for as long as it lives. The kernel drops
    /// it when the keeper dies, however it dies, which is how a crash is noticed.
    pub fn lock_keeper(&self) -> Result<Option<File>> {
        try_lock(&self.path.join("keeper.lock"))
    }

    /// Records in the keeper lock `lock`, held, which process holds it: `pid`, which started
    /// at `started` (clock ticks since boot, field 22 of `/proc/<pid>/stat`). The lock goes as
    /// that process's descriptors close, before the kernel is done with its exit; whoever must
    /// wait for the whole exit (the mounts of the VM it held go last) reads the record with
    /// [`VmDir::last_keeper`].
    /// With them, the boot they belong to (`/proc/sys/kernel/random/boot_id`): after a reboot
    /// the same pid with the same start time can be an unrelated process.
    pub fn record_keeper(lock: &File, pid: u32, started: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let boot = boot_id().unwrap_or_else(|| UNKNOWN_BOOT.to_owned());
        // A new lock file (every throw-away VM's) is not truncated: a truncation to nothing
        // makes ext4 write the file's data out at its next close (`auto_da_alloc`: 0.1 ms of
        // the start's CPU and a block the removal frees again, a discard on this host).
        if lock.metadata()?.len() != 0 {
            lock.set_len(0)?;
        }
        lock.write_all_at(format!("{pid} {started} {boot}\n").as_bytes(), 0)
    }

    /// The keeper that last held the keeper lock, as it recorded itself
    /// ([`VmDir::record_keeper`]): its pid and start time. The record outlives its keeper
    /// (whoever reads it checks that the process is still that keeper). None when none
    /// recorded itself (a keeper of an older build) and for a record of another boot.
    pub fn last_keeper(&self) -> Option<(i32, u64)> {
        let text = fs::read_to_string(self.path.join("keeper.lock")).ok()?;
        let mut fields = text.split_whitespace();
        let pid = fields.next()?.parse().ok().filter(|pid| *pid > 0)?;
        let started = fields.next()?.parse().ok()?;
        let boot = fields.next()?;
        let this_boot = boot_id().unwrap_or_else(|| UNKNOWN_BOOT.to_owned());
        (boot == this_boot).then_some((pid, started))
    }

    /// Waits until no keeper holds the keeper lock, and takes it.
    pub fn await_keeper(&self) -> Result<File> {
        let path = self.path.join("keeper.lock");
        let file = open_lock_file(&path).at(&path)?;
        file.lock().at(&path)?;
        Ok(file)
    }

    /// The keeper lock's file, opened but not locked, only if it is there: a set-aside folder
    /// (see [`VmDir::set_aside`]) always has one until its removal unlinks it, and opening it
    /// with [`VmDir::lock_keeper`] or [`VmDir::await_keeper`] then made a new one, unlocked,
    /// in a folder being removed: the opener took the finisher's work for a finisher that died
    /// and raced it for the folder. None when the file is gone.
    pub fn existing_keeper_lock(&self) -> Result<Option<File>> {
        let path = self.path.join("keeper.lock");
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&path),
        }
    }

    /// Moves a throw-away VM that has ended out of the way, folder and run folder, under names
    /// no VM can have (see [`StateRoot::set_aside_vms`]): from here on its name is free and
    /// `ls` no longer shows it, while its teardown finishes. Renames only, so it is quick on
    /// any filesystem. `id` is the VM's id, which makes the names unique.
    pub fn set_aside(&self, id: &str) -> Result<VmDir> {
        let folder = self.set_aside_folder(id);
        let aside = VmDir {
            name: self.name.clone(),
            path: self.path.with_file_name(&folder),
            run: self.run.with_file_name(&folder),
        };
        match fs::rename(&self.run, &aside.run) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e).at(&self.run),
            _ => {}
        }
        if let Err(e) = fs::rename(&self.path, &aside.path) {
            let _ = fs::rename(&aside.run, &self.run);
            return Err(e).at(&self.path);
        }
        Ok(aside)
    }

    /// The name [`VmDir::set_aside`] gives the VM's folders (`.removing-<name>-<id>`).
    pub fn set_aside_folder(&self, id: &str) -> String {
        format!("{SET_ASIDE}{}-{id}", self.name)
    }

    /// The id in the name of a folder set aside by [`VmDir::set_aside`] (`.removing-<name>-<id>`),
    /// which names the VM's cgroup: its teardown can find the group even when the folder's
    /// config can no longer be read. None for any other folder.
    pub fn set_aside_id(&self) -> Option<&str> {
        let folder = self.path.file_name()?.to_str()?;
        let (_, id) = folder.strip_prefix(SET_ASIDE)?.rsplit_once('-')?;
        Some(id).filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    /// Whether a keeper holds the keeper lock right now.
    pub fn keeper_alive(&self) -> Result<bool> {
        Ok(self.lock_keeper()?.is_none())
    }

    /// Whether the keeper lock is free by `deadline`, looked at every 5 ms: for a keeper that
    /// is ending (its descriptors, the lock's among them, close one after another as it exits).
    pub fn keeper_ends_by(&self, deadline: std::time::Instant) -> Result<bool> {
        while self.keeper_alive()? {
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(true)
    }

    /// Serialises the commands that change a VM (start, stop, rm, reset, commit); waits for
    /// one already under way.
    pub fn lock_operations(&self) -> Result<File> {
        use crate::lock_holder::NotTaken;
        let taken = self.lock_operations_in_place(|file| file.lock().map_err(NotTaken::Failed))?;
        taken.map_err(|other| {
            Error::Other(format!("VM {}: op.lock not taken: {other:?}", self.name))
        })
    }

    /// Like [`VmDir::lock_operations`], for `stop` and `rm`: waits for a command under way, but
    /// not for one that is stopped (SIGSTOP, Ctrl-Z), which would hold the lock for good: that
    /// fails, naming the process and how to let it go on or end it. A post-copy `migrate`
    /// stopped after its dump also holds the VM's keeper, which waits for it.
    pub fn lock_operations_unless_holder_stopped(&self, what: &str) -> Result<File> {
        let taken = self.lock_operations_in_place(crate::lock_holder::lock_unless_stopped)?;
        taken.map_err(|not_taken| match not_taken {
            crate::lock_holder::NotTaken::HeldStopped(holder) => {
                self.held_by_stopped(what, &holder)
            }
            other => Error::Other(format!("VM {}: op.lock not taken: {other:?}", self.name)),
        })
    }

    /// The VM's `op.lock` as `take` takes it, checked to be the one its folder holds once taken:
    /// a folder moved aside meanwhile (`rm`), and maybe replaced by a new VM's of the name,
    /// leaves an orphaned lock whose taking serialises nothing. Then the lock at the path is
    /// opened and taken again; where no folder is there any more, an `Io` error (NotFound)
    /// ([`crate::lock_holder::lock_as_named`]).
    fn lock_operations_in_place(
        &self,
        take: impl Fn(&File) -> std::result::Result<(), crate::lock_holder::NotTaken>,
    ) -> Result<std::result::Result<File, crate::lock_holder::NotTaken>> {
        let path = self.path.join("op.lock");
        match crate::lock_holder::lock_as_named(&path, || open_lock_file(&path), take) {
            Ok(Err(crate::lock_holder::NotTaken::Failed(e))) | Err(e) => Err(e).at(&path),
            Ok(taken) => Ok(taken),
        }
    }

    fn held_by_stopped(&self, what: &str, holder: &crate::lock_holder::Holder) -> Error {
        let pid = holder.pid;
        let named = holder.named();
        Error::Other(format!(
            "VM {}: cannot {what} it while {named}, which is under way on it, \
             is stopped (SIGSTOP or Ctrl-Z): it would wait for good. Let it go on (`kill -CONT \
             {pid}`), then try again. Ending it (`kill {pid}`) is safe only for a post-copy \
             migrate that has not let the VM go (no `released-to` in the VM's folder: the VM \
             runs on here); one that has serves the VM's memory to the receiver, and ending it \
             loses the VM",
            self.name
        ))
    }

    /// Like [`VmDir::lock_operations`], but waits at most `patience`: None when the lock
    /// stayed taken all that time.
    pub fn lock_operations_within(&self, patience: std::time::Duration) -> Result<Option<File>> {
        use crate::lock_holder::IfStopped;
        // One deadline for every file it takes ([`VmDir::lock_operations_in_place`]).
        let deadline = std::time::Instant::now() + patience;
        let taken = self.lock_operations_in_place(|file| {
            crate::lock_holder::lock_within(file, deadline, IfStopped::WaitOn)
        })?;
        Ok(taken.ok())
    }

    /// The VM's operation lock if it is free now; else whether its holder is stopped (SIGSTOP,
    /// Ctrl-Z): for a caller with other VMs to get on with, which tries again in turn and names
    /// what it could not wait for (a registration hiding a new root in every running VM).
    pub fn try_lock_operations(&self) -> Result<OperationsLock> {
        use crate::lock_holder::{IfStopped, NotTaken};
        let now = std::time::Instant::now();
        let taken = self.lock_operations_in_place(|file| {
            crate::lock_holder::lock_within(file, now, IfStopped::WaitOn)
        })?;
        Ok(match taken {
            Ok(file) => OperationsLock::Taken(file),
            Err(NotTaken::HeldPast(Some(holder))) if holder.stopped => {
                OperationsLock::HeldByStopped(holder)
            }
            Err(_) => OperationsLock::Busy,
        })
    }

    fn corrupt(&self, path: PathBuf, why: String) -> Error {
        Error::CorruptState {
            vm: self.name.to_string(),
            path,
            why,
        }
    }
}

/// What a try of a VM's operation lock got ([`VmDir::try_lock_operations`]).
pub enum OperationsLock {
    /// The lock, held until the file is dropped.
    Taken(File),
    /// Held by an operation under way.
    Busy,
    /// Held by a process that is stopped.
    HeldByStopped(crate::lock_holder::Holder),
}

fn config_text(config: &VmConfig) -> Result<String> {
    toml::to_string(config).map_err(|e| Error::Other(e.to_string()))
}

fn state_text(state: &VmState) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(state).map_err(|e| Error::Other(e.to_string()))
}

/// Writes a new file of a folder no other process reads yet: in place, without the temporary
/// file and rename a write others may read needs (`write_atomic`).
fn write_new(path: &Path, contents: &[u8]) -> Result<()> {
    File::create_new(path)
        .and_then(|mut file| file.write_all(contents))
        .at(path)
}

/// Creates `dir` and any missing parent 0700 (an existing one keeps its mode).
fn make_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE)
        .create(dir)
        .at(dir)
}

/// Whether the last component of a path may be a symbolic link: the root's folders are named
/// by the administrator (`--root` may well be a link), the folders inside are feather's own.
#[derive(Clone, Copy, PartialEq)]
enum Follow {
    Yes,
    No,
}

/// Takes group and other permissions off an existing folder, acting on the opened folder, and
/// says whether it exists. A missing one is fine; a link where feather made a folder is refused.
fn make_private(dir: &Path, follow: Follow) -> Result<bool> {
    let Some(opened) = open_folder(dir, follow)? else {
        return Ok(false);
    };
    tighten(&opened, dir)?;
    Ok(true)
}

/// The folder `dir`, opened (None when missing).
fn open_folder(dir: &Path, follow: Follow) -> Result<Option<File>> {
    let mut flags = libc::O_DIRECTORY | libc::O_CLOEXEC;
    if follow == Follow::No {
        flags |= libc::O_NOFOLLOW;
    }
    match OpenOptions::new().read(true).custom_flags(flags).open(dir) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).at(dir),
    }
}

/// Takes group and other permissions off the opened folder `dir`.
fn tighten(opened: &File, dir: &Path) -> Result<()> {
    let mode = opened.metadata().at(dir)?.mode();
    if mode & 0o077 != 0 {
        opened
            .set_permissions(fs::Permissions::from_mode(PRIVATE))
            .at(dir)?;
    }
    Ok(())
}

/// The boot id recorded when `/proc/sys/kernel/random/boot_id` cannot be read: a record made
/// so is read back as this boot's when the id cannot be read then either, rather than never
/// (which turned off the wait for the recorded keeper's end).
const UNKNOWN_BOOT: &str = "-";

/// This boot's id: a record of a process from another boot names no process of this one.
pub fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned()).filter(|id| !id.is_empty())
}

/// The lock file at `path`, made if missing, opened for reading and writing.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// Some(file) holding the lock, or None when someone else holds it.
fn try_lock(path: &Path) -> Result<Option<File>> {
    let file = open_lock_file(path).at(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e).at(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use feather_testkit::ScratchDir;

    /// The default root spelled otherwise is the default root, sockets in `/run/feather`
    /// included; another folder, a link to it included, is not. Only looked at (`stat`,
    /// `readlink`): nothing of the host's default root is made or changed.
    #[test]
    fn the_default_root_spelled_otherwise_is_the_default_root() {
        let scratch = ScratchDir::new("spellings");
        let links = scratch.0.clone();
        std::os::unix::fs::symlink("/var", links.join("var")).unwrap();
        std::os::unix::fs::symlink(&links, links.join("other")).unwrap();
        let spellings = [
            PathBuf::from("/var/lib/feather/"),
            PathBuf::from("//var/lib/feather"),
            PathBuf::from("/var/lib/./feather"),
            links.join("var/lib/feather"),
        ];
        let roots: Vec<(PathBuf, StateRoot)> = spellings
            .into_iter()
            .map(|dir| (dir.clone(), StateRoot::new(Some(dir))))
            .collect();
        let not_default = StateRoot::new(Some(links.join("other")));
        for (dir, root) in roots {
            assert_eq!(root.dir(), Path::new(DEFAULT_STATE_DIR), "{dir:?}");
            assert_eq!(root.run_dir(), Path::new(DEFAULT_RUN_DIR), "{dir:?}");
        }
        assert_eq!(not_default.run_dir(), links.join("other/run"));
    }

    /// The one-`openat2` look at the default root's place finds what the walk finds, for a
    /// folder there and for one not made yet; with a link in its place, a link or a mount on
    /// the way, it finds nothing and the walk decides (a link it would not follow).
    #[test]
    fn a_folders_place_on_slashs_mount_is_the_walks_or_left_to_the_walk() {
        let scratch = ScratchDir::new("default-place");
        let base = scratch.0.canonicalize().unwrap();
        fs::create_dir(base.join("made")).unwrap();
        std::os::unix::fs::symlink(base.join("made"), base.join("link")).unwrap();
        let walked = |path: &Path| {
            let lookup = feather_sys::lookup::walk(path).unwrap();
            let meta = &lookup.end.step.meta;
            (meta.dev(), meta.ino(), lookup.missing.clone())
        };
        // A scratch folder on a mount of its own (a tmpfs /tmp, a bind of `/`'s own filesystem)
        // is a mount on the way: told by mount, as `RESOLVE_NO_XDEV` tells it, not by device
        // (a btrfs subvolume has a device of its own on the same mount).
        let mount = |path: &str| {
            let opened = File::open(path).unwrap();
            feather_sys::mountinfo::mount_id_of_fd(std::os::fd::AsFd::as_fd(&opened)).unwrap()
        };
        let on_slashs = mount(&base.to_string_lossy()) == mount("/");
        for path in [base.join("made"), base.join("missing")] {
            let expected = on_slashs.then(|| walked(&path));
            assert_eq!(place_on_slashs_mount(&path), expected, "{path:?}");
        }
        for path in [
            base.join("link"),
            base.join("link/below"),
            "/proc/self".into(),
        ] {
            assert_eq!(place_on_slashs_mount(&path), None, "{path:?}");
        }
        assert_eq!(place_on_slashs_mount(Path::new("/no-such-top/x")), None);
    }

    /// A pool's fill acts only in a root that is there: one not made is left unmade, with
    /// nothing judged; one a user could change is refused.
    #[test]
    fn a_named_root_is_checked_only_once_made() {
        let scratch = ScratchDir::new("checked-if-made");
        let base = scratch.0.canonicalize().unwrap();
        let missing = base.join("not-made");
        let named = StateRoot::named(Some(missing.clone()));
        assert!(named.checked_if_made().unwrap().is_none());
        assert!(!missing.exists());
        fs::create_dir(&missing).unwrap();
        let made = StateRoot::named(Some(missing.clone())).checked_if_made();
        assert_eq!(made.unwrap().unwrap().dir(), missing);
        fs::set_permissions(&missing, fs::Permissions::from_mode(0o777)).unwrap();
        let refused = StateRoot::named(Some(missing.clone())).checked_if_made();
        assert!(
            matches!(refused, Err(Error::UntrustedRoot { .. })),
            "{refused:?}"
        );
        // A path the walk cannot follow (a file on the way) is an error, not a root not made.
        fs::write(base.join("file"), "").unwrap();
        let unwalkable = StateRoot::named(Some(base.join("file/root"))).checked_if_made();
        assert!(unwalkable.is_err(), "{unwalkable:?}");
    }

    /// A wait for a VM's operation lock whose folder is moved aside meanwhile (`rm`) and a new
    /// VM's made at its path ends holding the new folder's lock, not the orphaned one: taking
    /// that would serialise nothing with the new VM's commands. Bounded or not.
    #[test]
    fn a_wait_for_the_operation_lock_ends_on_the_folder_now_at_the_path() {
        ends_on_the_folder_now_at_the_path("bounded", |vm| {
            vm.lock_operations_within(MINUTE)
                .unwrap()
                .expect("the lock is taken")
        });
        ends_on_the_folder_now_at_the_path("unbounded", |vm| vm.lock_operations().unwrap());
    }

    fn ends_on_the_folder_now_at_the_path(label: &str, wait: fn(&VmDir) -> File) {
        let scratch = ScratchDir::new(&format!("op-lock-moved-{label}"));
        let root = StateRoot::new(Some(scratch.0.join("root")));
        let vm = root.vm(&"x".parse().unwrap());
        fs::create_dir_all(&vm.path).unwrap();
        let lock = vm.path.join("op.lock");
        let held = open_lock_file(&lock).unwrap();
        held.lock().unwrap();
        let waiter = vm.clone();
        let waiting = std::thread::spawn(move || wait(&waiter));
        let deadline = std::time::Instant::now() + MINUTE;
        while feather_testkit::opens_of(&lock) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the wait never opened {lock:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        fs::rename(&vm.path, scratch.0.join("aside")).unwrap();
        fs::create_dir_all(&vm.path).unwrap();
        let new = open_lock_file(&lock).unwrap();
        drop(held);
        let taken = waiting.join().unwrap();
        assert_eq!(
            taken.metadata().unwrap().ino(),
            new.metadata().unwrap().ino(),
            "{label}"
        );
    }

    const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

    /// What a test does to the root's path, as a local user racing feather would.
    type Race = Box<dyn Fn(&Path)>;

    std::thread_local! {
        /// What a test does between the root's check and its open.
        static BETWEEN_CHECK_AND_OPEN: std::cell::RefCell<Option<Race>> =
            const { std::cell::RefCell::new(None) };
    }

    pub(super) fn between_check_and_open(dir: &Path) {
        BETWEEN_CHECK_AND_OPEN.with(|hook| {
            if let Some(hook) = hook.borrow().as_ref() {
                hook(dir)
            }
        });
    }

    /// A folder as `/tmp` is (root's, 1777), removed on drop.
    struct Sticky(PathBuf);

    impl Drop for Sticky {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// `sudo feather --root /tmp/vms` where `/tmp/vms` is not made yet: a user who renames a
    /// folder of theirs to `vms` after the check and before feather opens it (a rename in a
    /// sticky folder is theirs to make) has it refused, left as it was (not made 0700 by root,
    /// nothing made in it), root's own folder not used.
    #[test]
    fn a_root_a_user_puts_in_place_between_its_check_and_its_open_is_refused_untouched() {
        let sticky = Sticky(std::env::temp_dir().join(format!("feather-sticky-{}", rand_suffix())));
        fs::create_dir(&sticky.0).unwrap();
        fs::set_permissions(&sticky.0, fs::Permissions::from_mode(0o1777)).unwrap();
        let users = sticky.0.join("mine");
        fs::create_dir(&users).unwrap();
        fs::set_permissions(&users, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::lchown(&users, Some(65534), Some(65534)).unwrap();
        let root = StateRoot::new(Some(sticky.0.join("vms")));
        let (from, aside) = (users.clone(), sticky.0.join("roots-own"));
        BETWEEN_CHECK_AND_OPEN.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move |dir: &Path| {
                let _ = fs::rename(dir, &aside);
                fs::rename(&from, dir).unwrap();
            }))
        });
        let refused = root.prepare_dir();
        BETWEEN_CHECK_AND_OPEN.with(|hook| hook.borrow_mut().take());
        match refused {
            Err(
                ref refusal @ Error::UntrustedRoot {
                    ref folder,
                    ref why,
                    fault,
                    ..
                },
            ) => {
                // The root's own folder is named, and what to do: not /tmp's owner blamed.
                assert_eq!(folder, root.dir());
                assert!(why.contains("replaced"), "{why}");
                assert_eq!(fault, crate::error::RootFault::Replaced);
                let said = refusal.to_string();
                assert!(said.contains("run the command again"), "{said}");
                assert!(!said.contains("leave it as it is"), "{said}");
            }
            other => panic!("a root a user put in place was taken: {other:?}"),
        }
        let theirs = fs::metadata(root.dir()).unwrap();
        assert_eq!((theirs.uid(), theirs.mode() & 0o7777), (65534, 0o755));
        assert_eq!(fs::read_dir(root.dir()).unwrap().count(), 0);
    }

    /// A state root not made yet, in a scratch folder of the test's own: removed when the
    /// folder is dropped, also when the test fails.
    fn scratch() -> (ScratchDir, StateRoot) {
        let folder = ScratchDir::new("store");
        let root = StateRoot::new(Some(folder.0.join("root")));
        (folder, root)
    }

    /// The finisher opens the root's teardown log as root: a link planted in its place (a
    /// root's folder may be a user's, `sudo feather --root ~/vms …`) is refused and the file it
    /// names is left as it was; a plain log is appended to, and moved aside once full.
    #[test]
    fn the_teardown_log_is_a_plain_file_never_a_link() {
        let (_scratch, root) = scratch();
        root.prepare().unwrap();
        let elsewhere = root.dir().join("elsewhere");
        fs::write(&elsewhere, "untouched").unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.teardown_log()).unwrap();
        assert!(root.open_teardown_log().is_err());
        assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "untouched");

        fs::remove_file(root.teardown_log()).unwrap();
        root.open_teardown_log()
            .unwrap()
            .write_all(b"said\n")
            .unwrap();
        assert_eq!(fs::read_to_string(root.teardown_log()).unwrap(), "said\n");
        let full = vec![b'x'; TEARDOWN_LOG_LIMIT as usize + 1];
        root.open_teardown_log().unwrap().write_all(&full).unwrap();
        root.open_teardown_log()
            .unwrap()
            .write_all(b"new\n")
            .unwrap();
        assert_eq!(fs::read_to_string(root.teardown_log()).unwrap(), "new\n");
        let rotated = fs::metadata(root.dir().join(TEARDOWN_LOG_ROTATED)).unwrap();
        assert_eq!(rotated.len(), full.len() as u64 + 5);
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn config(name: &str) -> VmConfig {
        VmConfig {
            name: name.parse().unwrap(),
            id: "abc".into(),
            base: "/".into(),
            limits: Limits::default(),
            created: 0,
            ephemeral: false,
            scaffold: vec![],
            services: vec![],
            fresh_state: false,
            network: Default::default(),
            tags: vec![],
            allow_userns: false,
            read_only: vec![],
        }
    }

    /// A keeper's record names a process of this boot: after a reboot the same pid with the
    /// same start time can be an unrelated live process, which a start waited 60 s for.
    #[test]
    fn a_keeper_s_record_of_another_boot_names_no_keeper() {
        let (_scratch, root) = scratch();
        let vm = root.create(&config("kept"), Durability::Volatile).unwrap();
        let lock = vm.lock_keeper().unwrap().unwrap();
        VmDir::record_keeper(&lock, 4242, 77).unwrap();
        assert_eq!(vm.last_keeper(), Some((4242, 77)));
        let path = vm.path().join("keeper.lock");
        let text = fs::read_to_string(&path).unwrap();
        let boot = boot_id().unwrap();
        assert!(text.contains(&boot), "{text:?}");
        let other = text.replace(&boot, "00000000-0000-4000-8000-000000000000");
        fs::write(&path, other).unwrap();
        assert_eq!(vm.last_keeper(), None);
    }

    /// A keeper's record replaces the last one whole, whether the lock file is new (not
    /// truncated then) or holds a longer record of an earlier keeper.
    #[test]
    fn a_keeper_s_record_replaces_a_longer_earlier_one_whole() {
        let (_scratch, root) = scratch();
        let vm = root.create(&config("kept"), Durability::Volatile).unwrap();
        let lock = vm.lock_keeper().unwrap().unwrap();
        VmDir::record_keeper(&lock, 4242, 77).unwrap();
        let path = vm.path().join("keeper.lock");
        let first = fs::read_to_string(&path).unwrap();
        VmDir::record_keeper(&lock, 123_456, 987_654_321).unwrap();
        VmDir::record_keeper(&lock, 4242, 77).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), first);
        assert_eq!(vm.last_keeper(), Some((4242, 77)));
    }

    #[test]
    fn a_durable_create_leaves_a_complete_vm_and_no_staging_folder() {
        let (_scratch, root) = scratch();
        let vm = root.create(&config("kept"), Durability::Durable).unwrap();
        assert_eq!(vm.read_config().unwrap().name.as_str(), "kept");
        assert_eq!(vm.read_state().unwrap().status, VmStatus::Created);
        let leftovers: Vec<String> = fs::read_dir(root.vms_dir())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "kept")
            .collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    }

    #[test]
    fn a_durable_create_whose_lease_cannot_be_synced_makes_no_vm() {
        let (_scratch, root) = scratch();
        fs::create_dir_all(root.dir()).unwrap();
        let lease = root.dir().join("network-leases").join("10.0.0.2");
        let err = root
            .create_synced_with(
                &config("kept"),
                Durability::Durable,
                std::slice::from_ref(&lease),
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::Io { path, .. } if *path == lease),
            "{err}"
        );
        let left: Vec<_> = fs::read_dir(root.vms_dir()).unwrap().collect();
        assert!(
            left.is_empty(),
            "a VM or its staging folder is left: {left:?}"
        );
        // Once there, it is synced with the VM's files, and the VM is made.
        fs::create_dir_all(lease.parent().unwrap()).unwrap();
        fs::write(&lease, "abc").unwrap();
        root.create_synced_with(&config("kept"), Durability::Durable, &[lease])
            .unwrap();
        assert_eq!(root.list().unwrap().len(), 1);
    }

    #[test]
    fn create_then_list_then_refuse_duplicate() {
        let (_scratch, root) = scratch();
        root.create(&config("b"), Durability::Volatile).unwrap();
        root.create(&config("a"), Durability::Volatile).unwrap();
        let names: Vec<_> = root
            .list()
            .unwrap()
            .iter()
            .map(|vm| vm.name().to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(matches!(
            root.create(&config("a"), Durability::Volatile),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(
            root.open(&"a".parse().unwrap())
                .unwrap()
                .read_config()
                .unwrap(),
            config("a")
        );
    }

    /// What a create killed half-way left goes at the next command's look for teardowns, once
    /// a minute old; a younger one (a create under way elsewhere) and the VMs set aside stay.
    #[test]
    fn the_look_for_teardowns_sweeps_what_creates_that_died_left() {
        let (_scratch, root) = scratch();
        let vm = root.create(&config("aside"), Durability::Volatile).unwrap();
        let aside = vm.set_aside("abc").unwrap();
        let vms = root.dir().join("vms");
        let (died, making) = (vms.join(".creating-died-1"), vms.join(".creating-making-2"));
        let stalled = vms.join(".creating-stalled-3");
        for folder in [&died, &making] {
            fs::create_dir_all(folder.join("upper")).unwrap();
        }
        // A create alive, stalled for two minutes (a sync under heavy writeback, SIGSTOP).
        let held = made_creating(&stalled).unwrap();
        fs::create_dir(stalled.join("upper")).unwrap();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        for folder in [&died, &stalled] {
            File::open(folder).unwrap().set_modified(long_ago).unwrap();
        }
        assert_eq!(root.set_aside_vms().len(), 1);
        assert!(died.exists(), "the plain look sweeps nothing");
        let found = root.set_aside_vms_sweeping();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path(), aside.path());
        assert!(!died.exists(), "a create that died a minute ago is swept");
        assert!(making.exists(), "a create under way is left alone");
        assert!(
            stalled.join("upper").exists(),
            "a create alive is left alone, however old its folder"
        );
        // Its process dead, the kernel lets its lock go.
        drop(held);
        root.set_aside_vms_sweeping();
        assert!(!stalled.exists(), "a create that died is swept");
    }

    #[test]
    fn a_set_aside_vm_frees_its_name_and_is_found_again() {
        let (_scratch, root) = scratch();
        let vm = root.create(&config("tmp"), Durability::Volatile).unwrap();
        root.make_run_dir(&vm).unwrap();
        let held = vm.lock_keeper().unwrap().unwrap();
        let aside = vm.set_aside("abc").unwrap();
        assert!(root.list().unwrap().is_empty());
        assert!(matches!(
            root.open(&"tmp".parse().unwrap()),
            Err(Error::NotFound(_))
        ));
        assert!(!vm.run_dir().exists() && aside.run_dir().exists());
        let found = root.set_aside_vms();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name().as_str(), "tmp");
        assert_eq!(found[0].path(), aside.path());
        // Its id, which names its cgroup, is in the folder's name.
        assert_eq!(found[0].set_aside_id(), Some("abc"));
        assert_eq!(vm.set_aside_id(), None);
        // The lock moved with the folder: whoever finishes the teardown still holds it.
        assert!(found[0].keeper_alive().unwrap());
        assert!(found[0].existing_keeper_lock().unwrap().is_some());
        drop(held);
        assert!(!found[0].keeper_alive().unwrap());
        // A folder whose removal took the lock file: it is not made again by a look at it.
        fs::remove_file(aside.path().join("keeper.lock")).unwrap();
        assert!(found[0].existing_keeper_lock().unwrap().is_none());
        assert!(!aside.path().join("keeper.lock").exists());
        // The name may be used again at once.
        root.create(&config("tmp"), Durability::Volatile).unwrap();
    }

    #[test]
    fn prepare_makes_new_roots_private_and_tightens_old_ones() {
        let (_scratch, root) = scratch();
        let mode = |path: &Path| fs::metadata(path).unwrap().mode() & 0o7777;
        root.prepare().unwrap();
        assert_eq!(mode(root.dir()), 0o700);
        assert_eq!(mode(root.run_dir()), 0o700);
        let vm = root.create(&config("d"), Durability::Volatile).unwrap();
        assert_eq!(mode(vm.path()), 0o700);
        assert_eq!(
            mode(&vm.upper()),
            0o755 & !umask(),
            "upper/ is the VM's `/`"
        );
        // What an older feather left: everything 0755, and no mark of a completed walk.
        fs::create_dir_all(vm.run_dir()).unwrap();
        fs::remove_file(root.dir().join(TIGHTENED)).unwrap();
        for dir in [
            root.dir(),
            &root.vms_dir(),
            vm.path(),
            root.run_dir(),
            vm.run_dir(),
        ] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        root.prepare().unwrap();
        for dir in [
            root.dir(),
            &root.vms_dir(),
            vm.path(),
            root.run_dir(),
            vm.run_dir(),
        ] {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
    }

    #[test]
    fn prepare_walks_the_vm_folders_once_but_tightens_the_root_every_time() {
        let (_scratch, root) = scratch();
        let mode = |path: &Path| fs::metadata(path).unwrap().mode() & 0o7777;
        let vm = root.create(&config("w"), Durability::Volatile).unwrap();
        fs::create_dir_all(vm.run_dir()).unwrap();
        root.prepare().unwrap();
        assert!(
            root.dir().join(TIGHTENED).exists(),
            "the completed walk is marked"
        );
        // A folder loosened after the walk: the parent folders, which alone lead to it, are
        // tightened again by every command; the VM folders are not walked again.
        for dir in [root.dir(), &root.vms_dir(), root.run_dir(), vm.path()] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        root.prepare().unwrap();
        for dir in [root.dir(), &root.vms_dir(), root.run_dir()] {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
        assert_eq!(mode(vm.path()), 0o755, "walked once only");
    }

    fn umask() -> u32 {
        let scratch = ScratchDir::new("umask");
        let dir = scratch.0.join("probe");
        fs::create_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().mode() & 0o777;
        0o777 & !mode
    }

    #[test]
    fn running_without_a_keeper_reads_as_crashed() {
        let (_scratch, root) = scratch();
        let vm = root.create(&config("c"), Durability::Volatile).unwrap();
        let mut state = VmState::created();
        state.status = VmStatus::Running;
        vm.write_state(&state, Durability::Volatile).unwrap();
        assert_eq!(vm.read_state().unwrap().status, VmStatus::Crashed);
        let held = vm.lock_keeper().unwrap().expect("lock is free");
        // flock is per open file description: a second open of the same file sees it held.
        assert_eq!(vm.read_state().unwrap().status, VmStatus::Running);
        drop(held);
    }

    /// A throw-away VM's record replaces the last one by an exchange of names (ext4 does not
    /// write it out then); a kept VM's is renamed over it.
    #[test]
    fn a_throw_away_vm_s_record_is_exchanged_and_a_kept_one_s_renamed() {
        use crate::atomic::tests::names_removed_by;
        let (_scratch, root) = scratch();
        let vm = root.create(&config("x"), Durability::Volatile).unwrap();
        let state = VmState::created();
        let staged = format!(".state.json.staged-{}", std::process::id());
        let removed = names_removed_by(vm.path(), || {
            let record = vm.stage_state(&state, Durability::Volatile).unwrap();
            record.commit().unwrap();
        });
        assert_eq!(removed, [std::ffi::OsString::from(staged)]);
        let removed = names_removed_by(vm.path(), || {
            vm.write_state(&state, Durability::Whole).unwrap();
        });
        assert!(removed.is_empty(), "{removed:?}");
    }
}

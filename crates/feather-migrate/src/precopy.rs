//! The layer pre-copy of a migration: the VM's layers (`upper/`, `mounts/`) travel while it
//! still runs, and only what changed since follows while it is frozen, rsync-like.
//!
//! ```text
//! VM runs     survey: every entry of the layers, and the time it began
//!             archive 1: the layers, as tar reads them (files may change meanwhile)
//! VM frozen   the caller's freeze (the dump); a second survey:
//!             archive 2: config, state, checkpoint images, and every layer entry new or
//!             changed since the first survey began, plus checkpoint/layer-manifest: every
//!             entry the layers hold now
//! ```
//!
//! Both archives go out as one stream, one after the other; the receiver unpacks it with one
//! tar reading past the first's end (`--ignore-zeros`), so entries of the second replace
//! those of the first, and then removes every layer entry the [`MANIFEST`] does not list
//! ([`prune`]), as `rsync --delete` would: what the VM removed while its layers travelled,
//! including files it made and removed again after the first survey that the first archive
//! caught in between.
//!
//! "Changed" is told by the inode's change time (ctime), which every write, truncation,
//! rename, link, chmod, chown and xattr change sets. One write leaves it alone: a write
//! through a shared mapping to a page already dirty, whose time was set when the page was
//! first written after its last writeback. So an entry counts as changed if its ctime is later
//! than the first survey's start less the kernel's writeback horizon
//! (`vm.dirty_expire_centisecs` + `vm.dirty_writeback_centisecs`, 35 s by default, plus a
//! second): a page written in the window without a new time was dirtied, with one, within that
//! horizon. Files written in the last half minute travel twice; nothing written is missed.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Stdio};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use feather_sys::beneath;
use nix::fcntl::OFlag;

use crate::archive::{self, Stream};
use crate::error::{io_at, MigrateError, Result};

/// The members that travel before the freeze.
const LAYERS: [&str; 2] = ["upper", "mounts"];
/// The members that travel only frozen, whole.
const REST: [&str; 3] = ["config.toml", "state.json", "checkpoint"];

/// Every entry of the layers at the freeze: NUL-separated paths as the archive names them,
/// written by the sender into the second archive.
pub const MANIFEST: &str = "checkpoint/layer-manifest";

/// The longest [`MANIFEST`] a receiver reads: it comes from the sender, and is held in memory
/// whole. A layer's every entry is listed by its path: four million entries of 64 bytes.
const MAX_MANIFEST: u64 = 256 << 20;

/// The layers' entries when the pre-copy began.
pub struct Survey {
    /// Entries changed after this (seconds since the epoch, with the writeback horizon taken
    /// off) are sent again.
    since: i128,
    /// Every entry, relative to the VM's folder: one not among them is new, and sent again.
    entries: HashSet<PathBuf>,
}

/// Lists the layers of the VM folder `vm_dir` and notes when.
pub fn survey(vm_dir: &Path) -> Survey {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let since = i128::from(now.as_secs()) - i128::from(horizon().as_secs());
    let mut entries = HashSet::new();
    walk(
        vm_dir,
        &archive::members(vm_dir, &LAYERS),
        &mut |path, _| {
            entries.insert(path.to_path_buf());
        },
    );
    Survey { since, entries }
}

/// How long a page written through a shared mapping may stay dirty, so that further writes to
/// it set no time: the kernel's writeback settings, and a second.
fn horizon() -> Duration {
    let centisecs = |name: &str| -> u64 {
        fs::read_to_string(format!("/proc/sys/vm/{name}"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(3000)
    };
    Duration::from_millis(
        10 * (centisecs("dirty_expire_centisecs") + centisecs("dirty_writeback_centisecs")),
    ) + Duration::from_secs(1)
}

/// Calls `found` for every entry under the members `roots` of `dir` (the roots too), with its
/// path relative to `dir` and its metadata; never follows a symlink. Entries that vanish while
/// it walks are skipped. The layers are the VM's, and it still runs during the survey: every
/// entry is reached beneath `dir`'s descriptor with no symlink allowed on the way (a folder
/// swapped for a link between two steps is refused by the kernel, not listed through).
fn walk(dir: &Path, roots: &[String], found: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let Ok(top) = beneath::open_root(dir) else {
        return;
    };
    let mut pending: Vec<PathBuf> = roots.iter().map(PathBuf::from).collect();
    while let Some(rel) = pending.pop() {
        // O_PATH with O_NOFOLLOW: the entry itself, a symlink included, for its metadata.
        let Ok(entry) = beneath::open_beneath(&top, &rel, OFlag::O_PATH) else {
            continue;
        };
        let Ok(meta) = fs::File::from(entry).metadata() else {
            continue;
        };
        found(&rel, &meta);
        if meta.is_dir() {
            if let Ok(Some(folder)) = beneath::open_dir(&top, &rel) {
                let names = beneath::names(&folder).unwrap_or_default();
                pending.extend(names.into_iter().map(|name| rel.join(name)));
            }
        }
    }
}

/// The second archive's members: the rest whole, and the layer entries new or changed since
/// `survey`, each on its own (tar does not descend into them), parents first. Writes every
/// entry the layers hold now into the [`MANIFEST`].
fn delta(vm_dir: &Path, survey: &Survey) -> Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    let mut manifest = Vec::new();
    walk(
        vm_dir,
        &archive::members(vm_dir, &LAYERS),
        &mut |path, meta| {
            manifest.extend_from_slice(archive::archived_name(path).as_os_str().as_bytes());
            manifest.push(0);
            if !survey.entries.contains(path) || i128::from(meta.ctime()) >= survey.since {
                changed.push(path.to_path_buf());
            }
        },
    );
    walk(vm_dir, &archive::members(vm_dir, &REST), &mut |path, _| {
        changed.push(path.to_path_buf());
    });
    let file = vm_dir.join(MANIFEST);
    fs::write(&file, &manifest).map_err(io_at(&file))?;
    changed.push(PathBuf::from(MANIFEST));
    changed.sort();
    changed.dedup();
    Ok(changed)
}

/// The two archives as one stream (see the module's text): read it to its end, then ask
/// [`Finish::finish`]. `freeze` runs between them, once the layers are out; an error of it
/// ends the stream (the caller keeps what it needs to know of it).
pub fn stream<'f>(
    vm_dir: &Path,
    freeze: impl FnOnce() -> std::io::Result<()> + 'f,
) -> Result<(PreCopy<'f>, Finish)> {
    let survey = survey(vm_dir);
    let members = archive::members(vm_dir, &LAYERS);
    // tar refuses to make an empty archive: without layers, the stream begins frozen.
    let mut layers = if members.is_empty() {
        None
    } else {
        let mut tar = archive::tar_create(vm_dir, Path::new("-"));
        tar.args(["--ignore-failed-read", "--warning=no-file-changed"])
            .args(["--warning=no-file-removed", "--warning=no-file-shrank"])
            .args(members);
        let mut layers = spawn(vm_dir, tar, None)?;
        layers.changes_allowed = true;
        Some(layers)
    };
    let output = layers.as_mut().and_then(|l| l.tar.stdout.take());
    let shared = Rc::new(RefCell::new(Shared {
        stream: layers,
        error: None,
    }));
    Ok((
        PreCopy {
            vm_dir: vm_dir.to_path_buf(),
            output,
            part: Part::Layers,
            freeze: Some(Box::new(freeze)),
            survey,
            shared: shared.clone(),
            layer_bytes: 0,
        },
        Finish { shared },
    ))
}

/// Which archive the stream is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Layers,
    Rest,
    Ended,
}

/// The tar being read, and the first failure, shared by the stream and its [`Finish`].
struct Shared {
    stream: Option<Stream>,
    error: Option<MigrateError>,
}

/// The stream of [`stream`], to read.
pub struct PreCopy<'f> {
    vm_dir: PathBuf,
    output: Option<ChildStdout>,
    part: Part,
    freeze: Option<Box<dyn FnOnce() -> std::io::Result<()> + 'f>>,
    survey: Survey,
    shared: Rc<RefCell<Shared>>,
    layer_bytes: u64,
}

/// Whether the whole stream was written: ask once it was read to its end.
pub struct Finish {
    shared: Rc<RefCell<Shared>>,
}

impl Finish {
    pub fn finish(self) -> Result<()> {
        let mut shared = self.shared.borrow_mut();
        if let Some(e) = shared.error.take() {
            return Err(e);
        }
        match shared.stream.take() {
            Some(stream) => stream.finish(),
            None => Ok(()),
        }
    }
}

impl PreCopy<'_> {
    /// Bytes of the stream that were sent before the freeze.
    pub fn layer_bytes(&self) -> u64 {
        self.layer_bytes
    }

    /// The layers are out: ends their tar, freezes, and starts the second archive.
    fn next_part(&mut self) -> std::io::Result<()> {
        self.output = None;
        let layers = self.shared.borrow_mut().stream.take();
        if let Some(Err(e)) = layers.map(Stream::finish) {
            return Err(self.fail(e));
        }
        if let Some(freeze) = self.freeze.take() {
            freeze()?;
        }
        let members = delta(&self.vm_dir, &self.survey).map_err(|e| self.fail(e))?;
        let mut rest = archive::tar_create(&self.vm_dir, Path::new("-"));
        rest.args(["--no-recursion", "--null", "--files-from=-"]);
        let mut list = Vec::new();
        for member in &members {
            list.extend_from_slice(member.as_os_str().as_bytes());
            list.push(0);
        }
        let mut rest = spawn(&self.vm_dir, rest, Some(list)).map_err(|e| self.fail(e))?;
        self.output = rest.tar.stdout.take();
        self.shared.borrow_mut().stream = Some(rest);
        self.part = Part::Rest;
        Ok(())
    }

    /// Keeps `e` for [`Finish::finish`] and returns an I/O error that ends the stream.
    fn fail(&self, e: MigrateError) -> std::io::Error {
        let message = e.to_string();
        self.shared.borrow_mut().error.get_or_insert(e);
        std::io::Error::other(message)
    }
}

impl Read for PreCopy<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = match self.output.as_mut() {
                Some(output) => output.read(buffer)?,
                None => 0,
            };
            if n > 0 || buffer.is_empty() {
                if self.part == Part::Layers {
                    self.layer_bytes += n as u64;
                }
                return Ok(n);
            }
            match self.part {
                Part::Layers => self.next_part()?,
                Part::Rest | Part::Ended => {
                    self.part = Part::Ended;
                    return Ok(0);
                }
            }
        }
    }
}

/// Starts `tar` writing to a pipe; `list`: its member list, written to its stdin by a thread
/// (tar writes its output while it reads the list).
fn spawn(vm_dir: &Path, mut tar: std::process::Command, list: Option<Vec<u8>>) -> Result<Stream> {
    let failed = |e| MigrateError::Tar {
        what: "archive",
        path: vm_dir.to_path_buf(),
        source: e,
    };
    let mut child = tar
        .stdin(if list.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    if let (Some(list), Some(mut stdin)) = (list, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = stdin.write_all(&list);
        });
    }
    Ok(Stream {
        tar: child,
        vm_dir: vm_dir.to_path_buf(),
        changes_allowed: false,
    })
}

/// On the receiver, once the archive was checked: removes from the layers of the unpacked
/// VM folder `staging` every entry the [`MANIFEST`] does not list, then the manifest. Without
/// a manifest (an archive made by `checkpoint --export`) nothing is removed. The layers are
/// walked beneath the folder without following a symlink: a VM's names are only names.
pub fn prune(staging: &Path) -> Result<()> {
    let list = staging.join(MANIFEST);
    let bytes = match archive::read_at_most(&list, MAX_MANIFEST) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Err(MigrateError::Archive {
                what: "the layer manifest",
                path: list,
                why: format!(
                    "it is longer than {} MiB, more than a layer of millions of files lists: \
                     the VM was sent by hand or altered; nothing was imported",
                    MAX_MANIFEST >> 20
                ),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(&list)(e)),
    };
    let keep: HashSet<&Path> = bytes
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| Path::new(OsStr::from_bytes(p)))
        .collect();
    let root = beneath::open_root(staging).map_err(io_at(staging))?;
    for layer in LAYERS {
        let layer = Path::new(layer);
        if !keep.contains(layer) {
            continue;
        }
        if let Some(dir) =
            beneath::open_dir(&root.as_fd(), layer).map_err(io_at(&staging.join(layer)))?
        {
            prune_folder(staging, layer, &dir, &keep)?;
        }
    }
    fs::remove_file(&list).map_err(io_at(&list))
}

/// Removes what of the folder `dir` (at `rel` in `staging`) `keep` does not list, and prunes
/// its subfolders alike.
fn prune_folder(staging: &Path, rel: &Path, dir: &fs::File, keep: &HashSet<&Path>) -> Result<()> {
    let failed = |e| io_at(&staging.join(rel))(e);
    for name in beneath::names(dir).map_err(failed)? {
        let path = rel.join(&name);
        if !keep.contains(path.as_path()) {
            beneath::remove_tree(dir, &name).map_err(io_at(&staging.join(&path)))?;
        } else if let Some(sub) =
            beneath::open_dir(&dir.as_fd(), Path::new(&name)).map_err(failed)?
        {
            prune_folder(staging, &path, &sub, keep)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_manifest_does_not_list_is_pruned_and_nothing_else() {
        let staging_scratch = feather_testkit::ScratchDir::new("prune");
        let staging = staging_scratch.0.clone();
        for dir in [
            "upper/kept/deeper",
            "upper/gone/deeper",
            "checkpoint",
            "outside",
        ] {
            fs::create_dir_all(staging.join(dir)).unwrap();
        }
        for file in [
            "upper/kept/a",
            "upper/kept/b",
            "upper/gone/deeper/c",
            "checkpoint/x",
        ] {
            fs::write(staging.join(file), "x").unwrap();
        }
        // A symlink where a folder was: pruned as a name, never followed.
        std::os::unix::fs::symlink(staging.join("outside"), staging.join("upper/link")).unwrap();
        fs::write(staging.join("outside/precious"), "x").unwrap();
        let manifest = ["upper", "upper/kept", "upper/kept/a", "upper/kept/deeper"];
        let mut bytes = Vec::new();
        for path in manifest {
            bytes.extend_from_slice(path.as_bytes());
            bytes.push(0);
        }
        fs::write(staging.join(MANIFEST), bytes).unwrap();
        prune(&staging).unwrap();
        let exists = |p: &str| staging.join(p).symlink_metadata().is_ok();
        assert!(exists("upper/kept/a") && exists("upper/kept/deeper"));
        assert!(!exists("upper/kept/b") && !exists("upper/gone") && !exists("upper/link"));
        assert!(exists("checkpoint/x") && exists("outside/precious"));
        assert!(!exists(MANIFEST));
    }

    #[test]
    fn the_walk_reports_a_symlink_as_itself_and_never_lists_through_it() {
        let scratch = feather_testkit::ScratchDir::new("walk");
        let dir = scratch.0.clone();
        fs::create_dir_all(dir.join("upper/folder")).unwrap();
        fs::create_dir_all(dir.join("outside")).unwrap();
        fs::write(dir.join("upper/folder/file"), "x").unwrap();
        fs::write(dir.join("outside/precious"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), dir.join("upper/link")).unwrap();
        let mut seen = Vec::new();
        walk(&dir, &["upper".to_owned()], &mut |path, meta| {
            seen.push((path.display().to_string(), meta.file_type().is_symlink()));
        });
        seen.sort();
        assert_eq!(
            seen,
            [
                ("upper".to_owned(), false),
                ("upper/folder".to_owned(), false),
                ("upper/folder/file".to_owned(), false),
                ("upper/link".to_owned(), true),
            ]
        );
    }
}

//! Applying a VM's changes to its base (`commit`) and dropping them (`reset`).
//!
//! Each file is applied atomically: written beside its target under a temporary name with its
//! mode, owner, extended attributes and times, flushed, then renamed over the target. A path the
//! host changed after the VM copied it up is a conflict: nothing is applied unless forced.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io::ErrorKind;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use feather_core::atomic::{write_atomic, Durability};
use feather_core::error::IoContext;
use feather_core::{Error, StateRoot, VmDir, VmName, VmStatus};
use nix::unistd::{Gid, Uid};

use crate::diff::{self, lstat, Change, ChangeKind};
use crate::error::{failed, Result, VmError};
use crate::layers;

/// The changes of a VM, as `feather diff` lists them.
pub fn changes(root: &StateRoot, name: &VmName) -> Result<Vec<Change>> {
    let vm = root.open(name)?;
    let config = vm.read_config()?;
    if let Some(disk) = config.limits.disk {
        crate::disk::attach(name, &vm, disk)?;
    }
    diff::diff(&layers::existing(&vm, &config), &config)
        .map_err(|e| failed(name, format!("reading its layer: {e}")))
}

/// Applies the changes at or below `paths` (all changes when empty) to the VM's base.
/// Returns the changes applied.
pub fn commit(
    root: &StateRoot,
    name: &VmName,
    paths: &[PathBuf],
    force: bool,
) -> Result<Vec<Change>> {
    let vm = root.open(name)?;
    let _op = vm.lock_operations()?;
    let selected = select(changes(root, name)?, paths, name)?;
    let mut journal = Journal::load(&vm);
    let conflicts: Vec<String> = selected
        .iter()
        .filter(|change| !force && host_changed_since_copy_up(change, &journal))
        .map(|change| change.path.display().to_string())
        .collect();
    if !conflicts.is_empty() {
        return Err(VmError::CommitConflict {
            vm: name.to_string(),
            paths: conflicts,
        });
    }
    apply_all(&selected).map_err(|(path, e)| {
        failed(
            name,
            format!(
                "commit {}: {e} (nothing after it was applied)",
                path.display()
            ),
        )
    })?;
    for change in &selected {
        journal.record(change);
    }
    journal.save(&vm)?;
    Ok(selected)
}

/// The changes at or below any of `paths`; each path must select at least one.
fn select(all: Vec<Change>, paths: &[PathBuf], name: &VmName) -> Result<Vec<Change>> {
    if paths.is_empty() {
        return Ok(all);
    }
    for path in paths {
        if !all.iter().any(|c| c.path.starts_with(path)) {
            return Err(failed(
                name,
                format!(
                    "{} has no change to commit (see `feather diff {name}`)",
                    path.display()
                ),
            ));
        }
    }
    Ok(all
        .into_iter()
        .filter(|c| paths.iter().any(|p| c.path.starts_with(p)))
        .collect())
}

/// Whether the host path was changed (by someone other than feather) after the VM made its
/// version. The VM's version was born (statx birth time) when overlayfs copied it up or the VM
/// created it; the host's ctime moves on every change to it, and cannot be set back by users.
fn host_changed_since_copy_up(change: &Change, journal: &Journal) -> bool {
    let Ok(Some(lower)) = lstat(&change.lower) else {
        return false;
    };
    let Ok(upper) = fs::symlink_metadata(&change.upper) else {
        return false;
    };
    let host_changed = ctime(&lower);
    let vm_made = upper.created().ok().or_else(|| Some(ctime(&upper)));
    let committed = journal.committed_at(&change.path);
    let reference = vm_made.into_iter().chain(committed).max();
    reference.is_some_and(|reference| host_changed > reference)
}

fn ctime(meta: &Metadata) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32)
}

/// Applies `changes` (sorted by path) in three steps, so that the disk is flushed twice in all
/// rather than once per file, while every file still replaces its target atomically:
/// 1. folders are made or updated, and every other entry is written beside its target;
/// 2. the filesystems written to are flushed (syncfs), then each entry is renamed over its target;
/// 3. deletions are applied, and the filesystems flushed again.
fn apply_all(changes: &[Change]) -> Result<(), (PathBuf, std::io::Error)> {
    let mut staged: Vec<Staged> = Vec::new();
    let mut flush = Flush::default();
    let written = changes
        .iter()
        .filter(|c| c.kind != ChangeKind::Deleted)
        .try_for_each(|change| {
            let meta = fs::symlink_metadata(&change.upper).map_err(at(change))?;
            if let Some(parent) = change.lower.parent() {
                fs::create_dir_all(parent).map_err(at(change))?;
                flush.include(parent).map_err(at(change))?;
            }
            if meta.is_dir() {
                apply_dir(&change.upper, &meta, &change.lower).map_err(at(change))
            } else {
                staged.push(stage(&change.upper, &meta, &change.lower).map_err(at(change))?);
                Ok(())
            }
        });
    let renamed = written.and_then(|()| {
        flush.now().map_err(|e| (PathBuf::from("/"), e))?;
        staged.drain(..).try_for_each(|entry| {
            entry
                .replace_target()
                .map_err(|e| (entry.target.clone(), e))
        })
    });
    for entry in &staged {
        let _ = fs::remove_file(&entry.temp);
    }
    renamed?;
    for change in changes.iter().filter(|c| c.kind == ChangeKind::Deleted) {
        if let Some(parent) = change.lower.parent() {
            flush.include(parent).map_err(at(change))?;
        }
        remove_any(&change.lower).map_err(at(change))?;
    }
    flush.now().map_err(|e| (PathBuf::from("/"), e))
}

/// Names the change an I/O error happened on.
fn at(change: &Change) -> impl Fn(std::io::Error) -> (PathBuf, std::io::Error) + '_ {
    move |e| (change.path.clone(), e)
}

/// The filesystems a commit wrote to, to be flushed with one syncfs each.
#[derive(Default)]
struct Flush {
    filesystems: Vec<(u64, File)>,
}

impl Flush {
    fn include(&mut self, dir: &Path) -> std::io::Result<()> {
        let device = fs::metadata(dir)?.dev();
        if !self.filesystems.iter().any(|(d, _)| *d == device) {
            self.filesystems.push((device, File::open(dir)?));
        }
        Ok(())
    }

    fn now(&self) -> std::io::Result<()> {
        for (_, file) in &self.filesystems {
            nix::unistd::syncfs(file)?;
        }
        Ok(())
    }
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match lstat(path)? {
        None => Ok(()),
        Some(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Some(_) => fs::remove_file(path),
    }
}

fn apply_dir(upper: &Path, meta: &Metadata, target: &Path) -> std::io::Result<()> {
    match lstat(target)? {
        Some(existing) if existing.is_dir() => {}
        Some(_) => {
            fs::remove_file(target)?;
            fs::create_dir(target)?;
        }
        None => fs::create_dir(target)?,
    }
    copy_metadata(upper, meta, target)
}

/// An entry written beside its target, waiting to be renamed over it.
struct Staged {
    temp: PathBuf,
    target: PathBuf,
}

impl Staged {
    fn replace_target(&self) -> std::io::Result<()> {
        if lstat(&self.target)?.is_some_and(|m| m.is_dir()) {
            fs::remove_dir_all(&self.target)?;
        }
        fs::rename(&self.temp, &self.target)
    }
}

/// Writes a file, symlink or FIFO beside `target`, with the VM entry's metadata.
fn stage(upper: &Path, meta: &Metadata, target: &Path) -> std::io::Result<Staged> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = target.with_file_name(format!(".{name}.feather-{}", std::process::id()));
    let _ = fs::remove_file(&temp);
    let write = || -> std::io::Result<()> {
        let kind = meta.file_type();
        if kind.is_symlink() {
            symlink(fs::read_link(upper)?, &temp)?;
        } else if kind.is_file() {
            std::io::copy(&mut File::open(upper)?, &mut File::create(&temp)?)?;
        } else if std::os::unix::fs::FileTypeExt::is_fifo(&kind) {
            nix::unistd::mkfifo(&temp, nix::sys::stat::Mode::from_bits_truncate(meta.mode()))?;
        } else {
            return Err(std::io::Error::new(
                ErrorKind::Unsupported,
                "sockets and device nodes are not committed",
            ));
        }
        copy_metadata(upper, meta, &temp)
    };
    match write() {
        Ok(()) => Ok(Staged {
            temp,
            target: target.to_path_buf(),
        }),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Owner first (chown clears set-uid bits), then mode, extended attributes and times.
fn copy_metadata(upper: &Path, meta: &Metadata, target: &Path) -> std::io::Result<()> {
    let is_link = meta.file_type().is_symlink();
    let (uid, gid) = (
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
    );
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        target,
        uid,
        gid,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if is_link {
        return Ok(());
    }
    fs::set_permissions(target, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    for attribute in xattr::list(upper)? {
        // overlayfs's own bookkeeping (opaque, origin, …) is not part of the file.
        if attribute.to_string_lossy().starts_with("trusted.overlay.") {
            continue;
        }
        if let Some(value) = xattr::get(upper, &attribute)? {
            xattr::set(target, &attribute, &value)?;
        }
    }
    if meta.is_file() {
        let times = fs::FileTimes::new()
            .set_accessed(meta.accessed()?)
            .set_modified(meta.modified()?);
        File::options().write(true).open(target)?.set_times(times)?;
    }
    Ok(())
}

/// What commit wrote to the base and when (the host path's ctime right after), so that
/// feather's own writes are not mistaken for the host's later ones.
struct Journal {
    entries: BTreeMap<PathBuf, (i64, i64)>,
    path: PathBuf,
}

impl Journal {
    fn load(vm: &VmDir) -> Journal {
        let path = vm.commit_journal();
        let entries = fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Journal { entries, path }
    }

    fn record(&mut self, change: &Change) {
        match lstat(&change.lower) {
            Ok(Some(meta)) => self
                .entries
                .insert(change.path.clone(), (meta.ctime(), meta.ctime_nsec())),
            _ => self.entries.remove(&change.path),
        };
    }

    fn committed_at(&self, path: &Path) -> Option<SystemTime> {
        let (secs, nanos) = *self.entries.get(path)?;
        Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos as u32))
    }

    fn save(&self, vm: &VmDir) -> Result<()> {
        let bytes =
            serde_json::to_vec(&self.entries).map_err(|e| failed(vm.name(), e.to_string()))?;
        Ok(write_atomic(&self.path, &bytes, Durability::Durable)?)
    }
}

/// Drops every change of a stopped VM: its layers are emptied, as if just created.
pub fn reset(root: &StateRoot, name: &VmName) -> Result<()> {
    let vm = root.open(name)?;
    let _op = vm.lock_operations()?;
    match vm.read_state()?.status {
        VmStatus::Running => return Err(Error::Running(name.to_string()).into()),
        // Its saved processes hold files of the layer: emptying it would break the checkpoint.
        VmStatus::Checkpointed => {
            return Err(failed(
                name,
                format!("is checkpointed: `feather restore {name}` it, or `feather rm {name}`"),
            ))
        }
        _ => {}
    }
    let config = vm.read_config()?;
    match config.limits.disk {
        // The image holds the layer folders: a new image empties them all.
        Some(disk @ feather_core::DiskQuota::Image { .. }) => crate::disk::renew(name, &vm, disk)?,
        _ => {
            for dir in [vm.upper(), vm.work(), vm.mounts()] {
                fs::remove_dir_all(&dir).at(&dir)?;
                fs::create_dir(&dir).at(&dir)?;
            }
        }
    }
    for dir in &config.scaffold {
        let path = vm.upper().join(dir.strip_prefix("/").unwrap_or(dir));
        fs::create_dir(&path).at(&path)?;
    }
    let _ = fs::remove_file(vm.commit_journal());
    Ok(())
}

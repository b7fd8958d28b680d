//! Applying a VM's changes to its base (`commit`) and dropping them (`reset`).
//!
//! Each file is applied atomically: written beside its target under a temporary name with its
//! mode, owner, extended attributes and times, flushed, then renamed over the target. A path the
//! host changed after the VM copied it up is a conflict: nothing is applied unless forced.
//!
//! The VM's layer is hostile ground: a running VM can swap any entry of it for a symlink while
//! commit works. So a running VM is frozen (its cgroup) for the whole commit, and, whether or not
//! it runs, every file operation on the layer and on the base is made through descriptors (see
//! [`feather_sys::beneath`]): nothing is ever reached through a symlink, the VM's symlinks are
//! copied as symlinks, and a type is what fstat on the opened descriptor says.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use feather_core::atomic::{write_atomic, Durability};
use feather_core::display::escape_path;
use feather_core::error::IoContext;
use feather_core::{Error, StateRoot, VmConfig, VmDir, VmName, VmStatus};
use feather_sys::beneath::{self, Entry, Spared};
use feather_sys::cgroup::Frozen;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use crate::diff::{self, Change, ChangeKind, Tree};
use crate::error::{encode, failed, io, InVm, Result, VmError};
use crate::layers;

/// How long a running VM may take to stop running when frozen for a commit.
const FREEZE_PATIENCE: Duration = Duration::from_secs(10);

/// The changes of a VM, as `feather diff` lists them.
pub fn changes(root: &StateRoot, name: &VmName) -> Result<Vec<Change>> {
    let vm = root.open(name)?;
    let config = vm.read_config()?;
    let (_, trees) = pin(&vm, &config)?;
    let hidden = crate::hiding::state_folders_guarded(root)?;
    diff::diff(&trees, &config, &hidden).map_err(io(name, "reading its layer"))
}

/// The base and every layer of the VM, pinned as descriptors.
fn pin(vm: &VmDir, config: &VmConfig) -> Result<(File, Vec<Tree>)> {
    // A layer an old overlay still writes (kept by a file the VM handed over) is not read.
    crate::handed_over::refuse_while_alive(vm, config)?;
    if let Some(disk) = config.limits.disk {
        // A disk image holds the layers: mounted again if a reboot took it away.
        crate::disk::attach(vm.name(), vm, disk)?;
    }
    let reading = |e: std::io::Error| io(vm.name(), "opening its layers")(e);
    let base = beneath::open_root(&config.base).map_err(|e| {
        failed(
            vm.name(),
            format!("opening its base {}: {e}", config.base.display()),
        )
    })?;
    let seen = layers::SeenLowers::recorded(vm);
    let trees = diff::open_trees(
        layers::existing(vm, config),
        &base,
        &config.base,
        seen.as_ref(),
    )
    .map_err(reading)?;
    Ok((base, trees))
}

/// Stops a running VM's processes for as long as the result is held, so the layer holds still
/// while it is read and applied. Any VM whose cgroup exists is frozen (also one whose keeper
/// crashed, whose processes may live on). A running VM without a cgroup (a throw-away VM
/// started without limits by a feather from before every VM had one) cannot be frozen and is
/// refused.
fn hold_still(vm: &VmDir, config: &VmConfig) -> Result<Option<Stilled>> {
    let running = vm.read_state()?.status == VmStatus::Running;
    let name = vm.name();
    match crate::keeper::cgroup_of(config) {
        Some(cgroup) if cgroup.exists() => {
            // Blocked first: an interrupt must not end commit between freezing and thawing
            // (the VM would stay frozen). It is delivered once the VM is thawed.
            let signals = BlockedSignals::block().in_vm(name)?;
            let frozen = cgroup.freeze(FREEZE_PATIENCE).in_vm(name)?;
            Ok(Some(Stilled {
                _frozen: frozen,
                _signals: signals,
            }))
        }
        _ if !running => Ok(None),
        _ => Err(failed(
            name,
            "runs without a cgroup (a throw-away VM started without limits by an older \
                 feather), so it cannot be frozen while its changes are committed, and nothing \
                 was committed: commit it from a VM started by this feather, or use a VM that \
                 lives on (`feather create`)",
        )),
    }
}

/// A frozen VM and the interrupts held back meanwhile; dropped in this order: thaw, then let
/// the signals through.
struct Stilled {
    _frozen: Frozen,
    _signals: BlockedSignals,
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT held pending until dropped.
struct BlockedSignals {
    previous: SigSet,
}

impl BlockedSignals {
    fn block() -> feather_sys::Result<BlockedSignals> {
        let mut set = SigSet::empty();
        for signal in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            set.add(signal);
        }
        let mut previous = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut previous)).map_err(
            |errno| feather_sys::SysError {
                op: "block",
                target: "interrupts while the VM is frozen".into(),
                errno,
            },
        )?;
        Ok(BlockedSignals { previous })
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.previous), None);
    }
}

/// What `commit` applies beyond the changes that raise no question.
#[derive(Clone, Copy, Debug, Default)]
pub struct Consent {
    /// Overwrite host paths changed after the VM copied them (`--force`).
    pub force: bool,
    /// Apply the set-user-ID and set-group-ID programs and file capabilities the VM made, and
    /// its changes that widen who may use an entry (`--keep-privileges`, see
    /// [`diff::Access`]): the VM's root could make them, and they would run with those
    /// privileges on the host, or let other users write what root runs.
    pub keep_privileges: bool,
}

/// Applies the changes at or below `paths` (all changes when empty) to the VM's base.
/// Returns the changes applied. A running VM is frozen meanwhile and thawed afterwards, also
/// when the commit fails.
pub fn commit(
    root: &StateRoot,
    name: &VmName,
    paths: &[PathBuf],
    consent: Consent,
) -> Result<Vec<Change>> {
    let vm = root.open(name)?;
    let _op = vm.lock_operations()?;
    // Its freeze and thaw would let a copy run here that may run at the receiver.
    crate::images::refuse_if_released(&vm, "committing it")?;
    let config = vm.read_config()?;
    let _frozen = hold_still(&vm, &config)?;
    let (_base, trees) = pin(&vm, &config)?;
    // No root is registered until the commit is done: one registered after the reading of
    // the registry would not be guarded (review fixes23 C7).
    let _registry = feather_core::roots::Registry::host().hold_for_commit()?;
    let hidden = crate::hiding::state_folders_guarded(root)?;
    let all = diff::diff(&trees, &config, &hidden).map_err(io(name, "reading its layer"))?;
    let selected = select(all, paths, name)?;
    refuse_forbidden(&trees, &selected, name)?;
    // Sockets and device nodes: passed over before anything is written (review fixes23 C6).
    let selected: Vec<Change> = selected
        .into_iter()
        .filter(|change| change.forbidden.is_none())
        .collect();
    let mut journal = Journal::load(&vm);
    let conflicts: Vec<String> = selected
        .iter()
        .filter(|change| !consent.force && host_changed_since_copy_up(&trees, change, &journal))
        .map(|change| escape_path(&change.path).into_owned())
        .collect();
    if !conflicts.is_empty() {
        return Err(VmError::CommitConflict {
            vm: name.to_string(),
            paths: conflicts,
        });
    }
    let privileged: Vec<String> = selected
        .iter()
        .filter(|change| !consent.keep_privileges && !change.privileges.is_empty())
        .map(|change| {
            format!(
                "{} ({})",
                escape_path(&change.path),
                change.privileges_shown()
            )
        })
        .collect();
    if !privileged.is_empty() {
        return Err(VmError::CommitPrivileges {
            vm: name.to_string(),
            paths: privileged,
        });
    }
    if !consent.keep_privileges {
        refuse_widened(&selected, name)?;
    }
    apply_all(&trees, &selected, &hidden.spared).map_err(|(path, e)| {
        failed(
            name,
            format!(
                "commit {}: {e} (nothing after it was applied)",
                escape_path(&path)
            ),
        )
    })?;
    for change in &selected {
        journal.record(&trees, change);
    }
    journal.save(&vm)?;
    Ok(selected)
}

/// Refuses the whole commit when any of `selected` lies where the VM cannot write by itself,
/// or where a host mount the VM's layer does not cover is (`Change::forbidden`), or in a layer
/// whose lower folder is not the one the VM saw ([`refuse_unseen`]). Not passed over with the
/// rest applied: such a change says the VM got
/// past a defence, and the admin should look at all it changed before any of it lands; naming
/// the other paths still commits them.
fn refuse_forbidden(trees: &[Tree], selected: &[Change], name: &VmName) -> Result<()> {
    let named = |kind: &dyn Fn(diff::Forbidden) -> bool| -> Vec<String> {
        selected
            .iter()
            .filter_map(|change| {
                let why = change.forbidden.filter(|why| why.refused() && kind(*why))?;
                Some(format!("{} ({})", escape_path(&change.path), why.word()))
            })
            .collect()
    };
    let forbidden = named(&|why| why.past_a_defence());
    if !forbidden.is_empty() {
        return Err(VmError::CommitForbidden {
            vm: name.to_string(),
            paths: forbidden,
        });
    }
    let unsearched = named(&|why| why == diff::Forbidden::Unsearched);
    if !unsearched.is_empty() {
        return Err(VmError::CommitUnsearched {
            vm: name.to_string(),
            paths: unsearched,
        });
    }
    let host_mounts = named(&|why| why == diff::Forbidden::HostMount);
    refuse_unseen(trees, selected, name)?;
    if !host_mounts.is_empty() {
        return Err(VmError::CommitHostMount {
            vm: name.to_string(),
            paths: host_mounts,
        });
    }
    Ok(())
}

/// Refuses the whole commit when any of `selected` lies in a layer whose lower folder is not
/// the one the VM saw, or cannot be told from another ([`Tree::unseen`]), naming the layer,
/// why and what to do. Its changes are marked [`diff::Forbidden::HostMount`], which
/// [`refuse_forbidden`] refuses next in general terms: this says why the whole layer is.
fn refuse_unseen(trees: &[Tree], selected: &[Change], name: &VmName) -> Result<()> {
    let unseen = selected
        .iter()
        .filter(|change| change.forbidden.is_some_and(|why| why.refused()))
        .find_map(|change| {
            let tree = &trees[change.layer];
            Some((&tree.layer, tree.unseen?))
        });
    let Some((layer, why)) = unseen else {
        return Ok(());
    };
    Err(VmError::CommitUnseenLayer {
        vm: name.to_string(),
        layer: escape_path(&layer.mount_point).into_owned(),
        lower: escape_path(&layer.lower).into_owned(),
        why: why.why(),
        remedy: why.remedy().replace("VM PATH", &format!("{name} PATH")),
    })
}

/// Refuses the whole commit when any of `selected` widens who may use an entry of the base
/// (see [`diff::Access::widens`]), naming each and how: consent is `--keep-privileges`.
fn refuse_widened(selected: &[Change], name: &VmName) -> Result<()> {
    let widened: Vec<String> = selected
        .iter()
        .filter_map(|change| {
            let how = change.widened_shown();
            (!how.is_empty()).then(|| format!("{} ({how})", escape_path(&change.path)))
        })
        .collect();
    if widened.is_empty() {
        return Ok(());
    }
    Err(VmError::CommitAccess {
        vm: name.to_string(),
        paths: widened,
    })
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
                    escape_path(path)
                ),
            ));
        }
    }
    Ok(all
        .into_iter()
        .filter(|c| paths.iter().any(|p| c.path.starts_with(p)))
        .collect())
}

/// The VM's entry of a change, pinned (`None` for a whiteout's absence).
fn upper_entry(trees: &[Tree], change: &Change) -> std::io::Result<Option<Entry>> {
    Entry::open(&trees[change.layer].upper, &change.rel)
}

/// The host's entry a change applies to, pinned: on the mount of the layer's lower folder,
/// where the VM saw it (a host mount there is `EXDEV`, see [`diff::Forbidden::HostMount`]).
fn lower_entry(trees: &[Tree], change: &Change) -> std::io::Result<Option<Entry>> {
    match &trees[change.layer].lower {
        Some(lower) => Entry::open_on_mount(lower, &change.rel),
        None => Ok(None),
    }
}

/// Whether the host path was changed (by someone other than feather) after the VM made its
/// version. The VM's version was born (statx birth time) when overlayfs copied it up or the VM
/// created it; the host's ctime moves on every change to it, and cannot be set back by users.
fn host_changed_since_copy_up(trees: &[Tree], change: &Change, journal: &Journal) -> bool {
    let Ok(Some(lower)) = lower_entry(trees, change) else {
        return false;
    };
    let Ok(Some(upper)) = upper_entry(trees, change) else {
        return false;
    };
    let host_changed = ctime(&lower.meta);
    let vm_made = upper
        .meta
        .created()
        .ok()
        .or_else(|| Some(ctime(&upper.meta)));
    let committed = journal.committed_at(&change.path);
    let reference = vm_made.into_iter().chain(committed).max();
    reference.is_some_and(|reference| host_changed > reference)
}

fn ctime(meta: &Metadata) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32)
}

type Failure = (PathBuf, std::io::Error);

/// Applies `changes` (sorted by path) in three steps, so that the disk is flushed twice in all
/// rather than once per file, while every file still replaces its target atomically:
/// 1. folders are made or updated, and every other entry is written beside its target;
/// 2. the filesystems written to are flushed (syncfs), then each entry is renamed over its target;
/// 3. deletions are applied, and the filesystems flushed again.
///
/// No removal empties a state folder of `spared` (their identities): a root reached where no
/// path list names it, below a folder the VM deleted or replaced (review gl27 H1).
fn apply_all(trees: &[Tree], changes: &[Change], spared: &Spared) -> Result<(), Failure> {
    let mut staged: Vec<Staged> = Vec::new();
    let mut flush = Flush::default();
    let written = changes
        .iter()
        .filter(|c| c.kind != ChangeKind::Deleted)
        .try_for_each(|change| {
            let upper = upper_entry(trees, change)
                .and_then(|e| e.ok_or_else(vanished))
                .map_err(at(change))?;
            let (parent, name) = base_parent(trees, change).map_err(at(change))?;
            flush.include(&parent).map_err(at(change))?;
            if upper.meta.is_dir() {
                apply_dir(&upper, &parent, name, spared).map_err(at(change))
            } else {
                staged.push(stage(&upper, parent, name).map_err(at(change))?);
                Ok(())
            }
        });
    let renamed = written.and_then(|()| {
        flush.now().map_err(|e| (PathBuf::from("/"), e))?;
        staged.drain(..).try_for_each(|entry| {
            let failed = |e| (entry.target(), host_mount_said(e));
            entry.replace_target(spared).map_err(failed)
        })
    });
    for entry in &staged {
        entry.discard();
    }
    renamed?;
    for change in changes.iter().filter(|c| c.kind == ChangeKind::Deleted) {
        let (parent, name) = base_parent(trees, change).map_err(at(change))?;
        flush.include(&parent).map_err(at(change))?;
        beneath::remove_tree_sparing(&parent, name, spared).map_err(at(change))?;
    }
    flush.now().map_err(|e| (PathBuf::from("/"), e))
}

fn vanished() -> std::io::Error {
    std::io::Error::new(
        ErrorKind::NotFound,
        "the VM's version vanished from its layer while committing",
    )
}

/// Names the change an I/O error happened on.
fn at(change: &Change) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| (change.path.clone(), host_mount_said(e))
}

/// `EXDEV` of a lookup in the base said as what it means there: a host mount `diff` did not see
/// (mounted since), which commit never enters; and a removal's refusal at a state folder.
fn host_mount_said(e: std::io::Error) -> std::io::Error {
    if beneath::spared_folder(&e) {
        return std::io::Error::other(
            "the VM deleted or replaced a folder that holds a feather state root (found by its \
             device and inode, where no path of a root leads), which commit never removes; \
             nothing of the folder was removed: commit the VM's other changes by path (see \
             `feather diff`), and move the state root out of the base",
        );
    }
    if !beneath::at_a_mount(&e) {
        return e;
    }
    std::io::Error::other(
        "a filesystem is mounted there on the host (or beneath it), where the VM's layer does \
         not reach, and commit never writes into one: unmount it and commit again",
    )
}

/// The host folder a change goes into (made if missing), pinned, and the change's name in it.
/// Every component is opened beneath the pinned base without following symlinks or entering
/// another mount.
fn base_parent<'c>(trees: &[Tree], change: &'c Change) -> std::io::Result<(File, &'c OsStr)> {
    let lower = trees[change.layer].lower.as_ref().ok_or_else(|| {
        std::io::Error::new(
            ErrorKind::NotFound,
            "the host folder beneath the layer is gone",
        )
    })?;
    let name = change
        .rel
        .file_name()
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "a change without a name"))?;
    let mut dir = lower.try_clone()?;
    for component in change.rel.parent().into_iter().flat_map(Path::components) {
        let component = component.as_os_str();
        dir = match beneath::open_dir_on_mount(&dir, Path::new(component))? {
            Some(next) => next,
            None => {
                nix::sys::stat::mkdirat(&dir, component, Mode::from_bits_truncate(0o755))?;
                beneath::open_dir_on_mount(&dir, Path::new(component))?.ok_or_else(vanished)?
            }
        };
    }
    Ok((dir, name))
}

/// The filesystems a commit wrote to, to be flushed with one syncfs each.
#[derive(Default)]
struct Flush {
    filesystems: Vec<(u64, File)>,
}

impl Flush {
    fn include(&mut self, dir: &File) -> std::io::Result<()> {
        let device = dir.metadata()?.dev();
        if !self.filesystems.iter().any(|(d, _)| *d == device) {
            self.filesystems.push((device, dir.try_clone()?));
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

/// Makes or updates the host folder `name` in `parent` after the VM's folder `upper`.
fn apply_dir(upper: &Entry, parent: &File, name: &OsStr, spared: &Spared) -> std::io::Result<()> {
    match Entry::open_on_mount(parent, Path::new(name))? {
        Some(existing) if existing.meta.is_dir() => {}
        Some(_) => {
            beneath::remove_tree_sparing(parent, name, spared)?;
            nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700))?;
        }
        None => nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700))?,
    }
    let target = beneath::open_dir_on_mount(parent, Path::new(name))?.ok_or_else(vanished)?;
    copy_metadata(&upper.reopen()?, &upper.meta, &target)
}

/// An entry written beside its target, waiting to be renamed over it.
struct Staged {
    parent: File,
    temp: PathBuf,
    name: PathBuf,
}

impl Staged {
    fn replace_target(&self, spared: &Spared) -> std::io::Result<()> {
        if Entry::open_on_mount(&self.parent, &self.name)?.is_some_and(|e| e.meta.is_dir()) {
            beneath::remove_tree_sparing(&self.parent, self.name.as_os_str(), spared)?;
        }
        nix::fcntl::renameat(&self.parent, &self.temp, &self.parent, &self.name)?;
        Ok(())
    }

    fn discard(&self) {
        let _ = nix::unistd::unlinkat(
            &self.parent,
            &self.temp,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }

    fn target(&self) -> PathBuf {
        self.name.clone()
    }
}

/// Writes a file, symlink or FIFO beside `name` in `parent`, with the VM entry's metadata.
fn stage(upper: &Entry, parent: File, name: &OsStr) -> std::io::Result<Staged> {
    let temp = PathBuf::from(format!(
        ".{}.feather-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let staged = Staged {
        parent,
        temp,
        name: PathBuf::from(name),
    };
    staged.discard();
    match write_entry(upper, &staged.parent, &staged.temp) {
        Ok(()) => Ok(staged),
        Err(e) => {
            staged.discard();
            Err(e)
        }
    }
}

fn write_entry(upper: &Entry, parent: &File, temp: &Path) -> std::io::Result<()> {
    let meta = &upper.meta;
    let kind = meta.file_type();
    let owner = (
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
    );
    if kind.is_symlink() {
        nix::unistd::symlinkat(upper.link_target()?.as_os_str(), parent, temp)?;
        nix::unistd::fchownat(parent, temp, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        Ok(())
    } else if kind.is_file() {
        let source = upper.reopen()?;
        let fd = nix::fcntl::openat(
            parent,
            temp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let target = File::from(fd);
        beneath::copy_sparse(&source, &target)?;
        copy_metadata(&source, meta, &target)?;
        let times = std::fs::FileTimes::new()
            .set_accessed(meta.accessed()?)
            .set_modified(meta.modified()?);
        target.set_times(times)
    } else if kind.is_fifo() {
        // A FIFO is made, never opened: opening one blocks, and its extended attributes (if
        // any) are not carried over. Its owner and mode are set through an O_PATH descriptor
        // of the FIFO made, never by name: whoever may write `parent` could swap the name for
        // a link to any host file between the two (review fixes23 C5).
        nix::unistd::mkfifoat(parent, temp, Mode::from_bits_truncate(0o600))?;
        let fifo = Entry::open_on_mount(parent, temp)?.ok_or_else(vanished)?;
        if !fifo.meta.file_type().is_fifo() {
            return Err(std::io::Error::other("the staged FIFO was replaced"));
        }
        nix::unistd::fchownat(&fifo.fd, "", owner.0, owner.1, AtFlags::AT_EMPTY_PATH)?;
        // chmod takes no O_PATH descriptor: its /proc/self/fd link names the inode itself.
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", fifo.fd.as_raw_fd()));
        std::fs::set_permissions(by_fd, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        Ok(())
    } else {
        Err(std::io::Error::new(
            ErrorKind::Unsupported,
            "sockets and device nodes are not committed",
        ))
    }
}

/// Owner first (chown clears set-uid bits), then mode and extended attributes, all on the
/// descriptors: `source` is the VM's version, `target` the host's new one.
fn copy_metadata(source: &File, meta: &Metadata, target: &File) -> std::io::Result<()> {
    use xattr::FileExt;
    nix::unistd::fchown(
        target.as_fd(),
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
    )?;
    nix::sys::stat::fchmod(
        target.as_fd(),
        Mode::from_bits_truncate(meta.mode() & 0o7777),
    )?;
    for attribute in source.list_xattr()? {
        if !carried(&attribute) {
            continue;
        }
        if let Some(value) = source.get_xattr(&attribute)? {
            target.set_xattr(&attribute, &value)?;
        }
    }
    Ok(())
}

/// Whether commit carries the extended attribute `name` of the VM's entry to the host: the
/// same allow-list as an archive's (`feather-migrate` `TAR_OPTIONS`, docs/security.md row 70)
/// but overlayfs's own records: `user.*`, file capabilities and ACLs (both shown by `diff` and
/// applied only with `--keep-privileges`). Every other `security.*` (an SELinux or Smack label,
/// IMA and EVM records) is the host's to give, and `trusted.*` is the host's software's, so
/// they are dropped (review fixes23 C8).
fn carried(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b"user.")
        || name == b"security.capability"
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// What commit wrote to the base and when (the host path's ctime right after), so that
/// feather's own writes are not mistaken for the host's later ones.
struct Journal {
    /// Keyed by the VM path as `escape_path` shows it: the same text for every UTF-8 path
    /// without controls or backslashes, and one-to-one for all others (JSON keys are text).
    entries: BTreeMap<String, (i64, i64)>,
    path: PathBuf,
}

impl Journal {
    fn load(vm: &VmDir) -> Journal {
        let path = vm.commit_journal();
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Journal { entries, path }
    }

    fn record(&mut self, trees: &[Tree], change: &Change) {
        match lower_entry(trees, change) {
            Ok(Some(Entry { meta, .. })) => self
                .entries
                .insert(key(&change.path), (meta.ctime(), meta.ctime_nsec())),
            _ => self.entries.remove(&key(&change.path)),
        };
    }

    fn committed_at(&self, path: &Path) -> Option<SystemTime> {
        let (secs, nanos) = *self.entries.get(&key(path))?;
        Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos as u32))
    }

    fn save(&self, vm: &VmDir) -> Result<()> {
        let bytes =
            serde_json::to_vec(&self.entries).map_err(encode(vm.name(), "the commit journal"))?;
        Ok(write_atomic(&self.path, &bytes, Durability::Durable)?)
    }
}

fn key(path: &Path) -> String {
    escape_path(path).into_owned()
}

/// Drops every change of a stopped VM: its layers are emptied, as if just created.
pub fn reset(root: &StateRoot, name: &VmName) -> Result<()> {
    let vm = root.open(name)?;
    let _op = vm.lock_operations()?;
    let config = stopped_for_reset(&vm)?;
    // The layers' entries are emptied through descriptors: the VM made them, and a symlink
    // among them is removed as a link, never followed.
    let home = layers::home(&vm, &config);
    for dir in [home.upper, home.work, home.mounts] {
        let pinned = beneath::open_root(&dir).at(&dir)?;
        beneath::empty_dir(&pinned).at(&dir)?;
    }
    let upper = layers::home(&vm, &config).upper;
    for dir in &config.scaffold {
        let path = upper.join(dir.strip_prefix("/").unwrap_or(dir));
        std::fs::create_dir(&path).at(&path)?;
    }
    let _ = std::fs::remove_file(vm.commit_journal());
    Ok(())
}

/// Drops the changes of a stopped VM at or below each of `paths` (paths in the VM, each of
/// which must hold one), as `commit` selects them: in every layer, the entry at the path and
/// all it holds, and every layer of a filesystem mounted at or below it, emptied. The rest
/// stays, to be committed (the changes `commit` refuses, say, dropped first). The layer is the
/// VM's: each entry is reached beneath the layer's folder by descriptor, no link followed (a
/// link on the way is no entry of the layer at that path, and nothing is dropped), and a link
/// at the path is removed as a link. Every path is found before anything is dropped (review
/// lowers28 L7: one without a change refused the command after the others were gone). A path
/// beneath a folder the VM replaced (an opaque folder) over a host entry at that path is
/// refused, naming the folder: dropped, the host's entry would stay hidden, deleted by the
/// next commit (L2).
pub fn reset_paths(root: &StateRoot, name: &VmName, paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        check_reset_path(name, path)?;
    }
    let vm = root.open(name)?;
    let _op = vm.lock_operations()?;
    let config = stopped_for_reset(&vm)?;
    let layers = layers::existing(&vm, &config);
    let mut found = vec![false; paths.len()];
    for layer in &layers {
        let upper = beneath::open_root(&layer.upper).at(&layer.upper)?;
        for (path, found) in paths.iter().zip(found.iter_mut()) {
            refuse_beneath_replaced(name, layer, &upper, path)?;
            *found |= drop_in_layer(&upper, &layer.mount_point, path, false).at(&layer.upper)?;
        }
    }
    if let Some((path, _)) = paths.iter().zip(&found).find(|(_, found)| !**found) {
        return Err(failed(
            name,
            format!(
                "{} has no change in the VM's layers to drop (see `feather diff {name}`; a link \
                 or a file the VM put on the way is the change: drop that path); nothing was \
                 dropped",
                escape_path(path)
            ),
        ));
    }
    for layer in &layers {
        let upper = beneath::open_root(&layer.upper).at(&layer.upper)?;
        for path in paths {
            drop_in_layer(&upper, &layer.mount_point, path, true).at(&layer.upper)?;
        }
        // Scaffold mount points are feather's, not changes: made again where dropped.
        let root_layer = layer.mount_point == Path::new("/");
        let scaffold = config
            .scaffold
            .iter()
            .filter(|dir| root_layer && under_any(dir, paths));
        for dir in scaffold {
            let rel = dir.strip_prefix("/").unwrap_or(dir);
            beneath::make_dirs(&upper, rel, Mode::from_bits_truncate(0o755)).at(dir)?;
        }
    }
    Ok(())
}

/// Refuses `path` where a folder above it in `layer` (its upper folder `upper`) is opaque, the
/// VM's replacement of the host's folder, and the host holds an entry at `path` beneath the
/// layer: dropped from the layer, that entry would stay hidden by the folder (`diff` shows it
/// deleted, and `commit` deletes it). The folder is named, to be reset whole instead.
fn refuse_beneath_replaced(
    name: &VmName,
    layer: &layers::Layer,
    upper: &File,
    path: &Path,
) -> Result<()> {
    let Ok(rel) = path.strip_prefix(&layer.mount_point) else {
        return Ok(());
    };
    let mut above: Vec<&Path> = rel.ancestors().skip(1).collect();
    above.pop(); // the layer's own folder
    for folder in above.into_iter().rev() {
        let Some(dir) = beneath::open_dir_on_mount(upper, folder).at(&layer.upper)? else {
            return Ok(());
        };
        if diff::is_opaque(&dir) && host_holds(layer, rel) {
            let replaced = layer.mount_point.join(folder);
            return Err(failed(
                name,
                format!(
                    "cannot reset {}: the VM replaced the folder {} above it, which hides the \
                     host's {} (dropped, it would stay deleted, and `commit` would delete it); \
                     reset {} to keep the host's folder; nothing was dropped",
                    escape_path(path),
                    escape_path(&replaced),
                    escape_path(path),
                    escape_path(&replaced),
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the host folder beneath `layer` holds an entry at `rel`, found on its own mount and
/// through no link; not where it cannot be read.
fn host_holds(layer: &layers::Layer, rel: &Path) -> bool {
    if layer.over_nothing {
        return false;
    }
    beneath::open_root(&layer.lower)
        .and_then(|lower| Entry::open_on_mount(&lower, rel))
        .is_ok_and(|entry| entry.is_some())
}

fn under_any(dir: &Path, paths: &[PathBuf]) -> bool {
    paths.iter().any(|path| dir.starts_with(path))
}

/// Refuses a path `reset` cannot take: relative, with `.` or `..`, or `/` (which is every
/// change: `feather reset NAME` without paths).
fn check_reset_path(name: &VmName, path: &Path) -> Result<()> {
    let plain = path.is_absolute()
        && path
            .components()
            .skip(1)
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    let why = match () {
        _ if !plain => "is not a path in the VM from its `/` without `.` or `..`",
        _ if path == Path::new("/") => {
            "is every change: give no path to drop them all (`feather reset NAME`)"
        }
        _ => return Ok(()),
    };
    Err(failed(
        name,
        format!(
            "cannot reset {}: it {why}; nothing was dropped",
            escape_path(path)
        ),
    ))
}

/// Drops the changes at or below the VM path `path` from the layer at `mount_point` whose
/// upper folder is `upper` (only looks, unless `apply`); whether there were any.
fn drop_in_layer(
    upper: &File,
    mount_point: &Path,
    path: &Path,
    apply: bool,
) -> std::io::Result<bool> {
    if mount_point.starts_with(path) {
        // The whole layer lies at or below the path.
        let held = !beneath::names(upper)?.is_empty();
        if apply {
            beneath::empty_dir(upper)?;
        }
        return Ok(held);
    }
    let Ok(rel) = path.strip_prefix(mount_point) else {
        return Ok(false);
    };
    let (Some(parent), Some(entry)) = (rel.parent(), rel.file_name()) else {
        return Ok(false);
    };
    // None where the VM put a link or a file on the way: no entry of the layer is there.
    let Some(folder) = beneath::open_dir_on_mount(upper, parent)? else {
        return Ok(false);
    };
    if Entry::open_on_mount(&folder, Path::new(entry))?.is_none() {
        return Ok(false);
    }
    if apply {
        beneath::remove_tree(&folder, entry)?;
    }
    Ok(true)
}

/// Refuses a VM whose cgroup still has processes (a crashed VM's keeper died, and they live
/// on with its overlay mounted, writing the layer while `reset` walks it: review lowers28 L8).
fn refuse_while_members(vm: &VmDir, config: &VmConfig) -> Result<()> {
    let name = vm.name();
    let Some(cgroup) = crate::keeper::cgroup_of(config).filter(|c| c.exists()) else {
        return Ok(());
    };
    let members = cgroup.members();
    if members.is_empty() {
        return Ok(());
    }
    let pids: Vec<String> = members.iter().map(|pid| pid.to_string()).collect();
    Err(failed(
        name,
        format!(
            "still has processes in its cgroup ({}), which may write its layers: `feather stop \
             {name}` ends them, then reset again; nothing was dropped",
            pids.join(", ")
        ),
    ))
}

/// Checks that the VM may have its layers changed by `reset` (stopped, not checkpointed, no
/// old overlay left writing them), waits for a stop's keeper to let go of its mounts, and
/// mounts a disk image holding its layers; its configuration.
fn stopped_for_reset(vm: &VmDir) -> Result<VmConfig> {
    let name = vm.name();
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
    // A stop's keeper may still be letting go of the VM's mounts (and flushing the layer):
    // the layer is changed once they are gone.
    crate::lifecycle::await_last_keeper(vm)?;
    let config = vm.read_config()?;
    refuse_while_members(vm, &config)?;
    crate::handed_over::refuse_while_alive(vm, &config)?;
    if let Some(disk) = config.limits.disk {
        crate::disk::attach(name, vm, disk)?;
    }
    Ok(config)
}

//! File operations on a tree someone else can change while we work in it (a VM's layer, and
//! the base commit writes into). Every path is resolved relative to a pinned directory
//! descriptor with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), so a
//! symlink swapped into any component makes the call fail instead of leading out of the tree;
//! the type of what was opened is read with fstat on the descriptor, and every change is made
//! on a descriptor or on one name in a pinned directory (unlinkat, renameat, mkdirat, …).
//!
//! Lookups cross mount points unless made with the `_on_mount` functions, which stay on the
//! pinned folder's mount (`RESOLVE_NO_XDEV`): a VM's base is read that way, since overlayfs
//! never crosses into what is mounted under its lower folder, and what is mounted there is no
//! part of what the VM saw or changed. Removals ([`remove_tree`], [`empty_dir`]) always stay.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::{lseek, Whence};

/// Whether a lookup may pass from the pinned folder's mount into one mounted beneath it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mounts {
    Cross,
    /// `RESOLVE_NO_XDEV`: a mount point on the way, or at the end, is `EXDEV`. An automount
    /// point is `EXDEV` too, but the kernel mounts it first when the lookup goes through it or
    /// opens it as a folder (`O_DIRECTORY`); an `O_PATH` lookup ending at it leaves it alone.
    Stay,
}

/// The resolution every lookup here uses: never above the pinned folder, never through a link,
/// and with [`Mounts::Stay`] never onto another mount.
fn resolve(mounts: Mounts) -> ResolveFlag {
    let resolve = ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    match mounts {
        Mounts::Cross => resolve,
        Mounts::Stay => resolve | ResolveFlag::RESOLVE_NO_XDEV,
    }
}

/// Opens `rel` (relative, any number of components) beneath `dir` with `flags`.
/// `O_NOFOLLOW` and `O_CLOEXEC` are always added; a symlink anywhere on the way is `ELOOP`.
pub fn open_beneath(dir: &impl AsFd, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    open_with(dir, rel, flags, Mounts::Cross)
}

/// [`open_beneath`] staying on `dir`'s mount: a mount point on the way or at the end is
/// `EXDEV` ([`at_a_mount`]).
pub fn open_on_mount(dir: &impl AsFd, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    open_with(dir, rel, flags, Mounts::Stay)
}

fn open_with(dir: &impl AsFd, rel: &Path, flags: OFlag, mounts: Mounts) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(resolve(mounts));
    Ok(openat2(dir.as_fd(), rel, how)?)
}

/// Whether an error of an `_on_mount` lookup (whose path has only plain names) means that the
/// path reaches another mount than the pinned folder's.
pub fn at_a_mount(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EXDEV)
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<LeftLifted>())
            .is_some_and(|left| at_a_mount(&left.source))
}

/// The folder at `path`, opened to be pinned. `path` is chosen by the host (a state folder or
/// a VM's configured base), never by a VM, so it is resolved as usual; everything beneath it
/// is then reached through [`open_beneath`].
pub fn open_root(path: &Path) -> io::Result<File> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// The folder `rel` beneath `dir` and on its mount, pinned (`O_PATH`); else the lookup's own
/// error, which tells a name missing (`ENOENT`) from a link on the way (`ELOOP`), a mount
/// (`EXDEV`), or a file on the way or a link as the last name (`ENOTDIR`: the folder is asked
/// for, and the link not followed).
pub fn pin_folder_on_mount(dir: &impl AsFd, rel: &Path) -> io::Result<File> {
    open_on_mount(dir, rel, OFlag::O_PATH | OFlag::O_DIRECTORY).map(File::from)
}

/// The folder `rel` beneath `dir`, opened for listing; `None` when it does not exist, is not a
/// folder, or is reached through a symlink.
pub fn open_dir(dir: &impl AsFd, rel: &Path) -> io::Result<Option<File>> {
    open_dir_with(dir, rel, Mounts::Cross)
}

/// [`open_dir`] staying on `dir`'s mount: a mount point on the way or at the end is the error
/// `EXDEV` ([`at_a_mount`]), never `None`.
pub fn open_dir_on_mount(dir: &impl AsFd, rel: &Path) -> io::Result<Option<File>> {
    open_dir_with(dir, rel, Mounts::Stay)
}

fn open_dir_with(dir: &impl AsFd, rel: &Path, mounts: Mounts) -> io::Result<Option<File>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    match open_with(dir, rel, flags, mounts) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(e) if absent_with(&e, mounts) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The folder `rel` beneath `dir`, made where missing and opened (`O_PATH | O_DIRECTORY`): each
/// name on the way made with `mkdirat` (`mode`) on the descriptor of the folder before it, which
/// was opened as [`open_beneath`] opens. A link anywhere on the way, or at the end, is `ELOOP`,
/// a file `ENOTDIR`, and nothing is made past it: never a folder where a link points.
pub fn make_dirs(dir: &impl AsFd, rel: &Path, mode: Mode) -> io::Result<OwnedFd> {
    walk_folders(dir, rel, Some(mode))
}

/// [`make_dirs`] without making anything: the folder `rel` beneath `dir`, each name on the way
/// a folder (a link `ELOOP`, a file `ENOTDIR`).
pub fn open_folder(dir: &impl AsFd, rel: &Path) -> io::Result<OwnedFd> {
    walk_folders(dir, rel, None)
}

fn walk_folders(dir: &impl AsFd, rel: &Path, make: Option<Mode>) -> io::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut folder = open_beneath(dir, Path::new("."), flags)?;
    for component in rel.components() {
        let name = match component {
            std::path::Component::Normal(name) => Path::new(name),
            std::path::Component::CurDir => continue,
            _ => return Err(io::Error::from_raw_os_error(libc::EXDEV)),
        };
        if let Some(mode) = make {
            match nix::sys::stat::mkdirat(&folder, name, mode) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        folder = open_beneath(&folder, name, flags).map_err(|e| link_is_eloop(&folder, name, e))?;
    }
    Ok(folder)
}

/// `O_DIRECTORY | O_NOFOLLOW` on a link answers `ENOTDIR`: the link is said as one, `ELOOP`.
fn link_is_eloop(dir: &OwnedFd, name: &Path, e: io::Error) -> io::Error {
    let is_link = e.raw_os_error() == Some(libc::ENOTDIR)
        && nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
    if is_link {
        io::Error::from_raw_os_error(libc::ELOOP)
    } else {
        e
    }
}

/// Whether an error means "nothing (usable) there": missing, not a folder on the way, or a
/// symlink where none may be.
pub fn absent(e: &io::Error) -> bool {
    e.kind() == ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOTDIR) | Some(libc::ELOOP) | Some(libc::EXDEV)
        )
}

/// [`absent`], but where a lookup stays on its mount `EXDEV` says a mount is there: an error.
fn absent_with(e: &io::Error, mounts: Mounts) -> bool {
    absent(e) && !(mounts == Mounts::Stay && at_a_mount(e))
}

/// One entry of a tree, pinned: an `O_PATH` descriptor of the entry itself (a symlink is not
/// followed) and its metadata read from that descriptor.
pub struct Entry {
    pub fd: File,
    pub meta: Metadata,
}

impl Entry {
    /// The entry at `rel` beneath `dir`; `None` if there is none.
    pub fn open(dir: &impl AsFd, rel: &Path) -> io::Result<Option<Entry>> {
        Entry::open_with(dir, rel, Mounts::Cross)
    }

    /// [`Entry::open`] staying on `dir`'s mount: a mount point on the way or at `rel` is the
    /// error `EXDEV` ([`at_a_mount`]), never `None`.
    pub fn open_on_mount(dir: &impl AsFd, rel: &Path) -> io::Result<Option<Entry>> {
        Entry::open_with(dir, rel, Mounts::Stay)
    }

    fn open_with(dir: &impl AsFd, rel: &Path, mounts: Mounts) -> io::Result<Option<Entry>> {
        match open_with(dir, rel, OFlag::O_PATH, mounts) {
            Ok(fd) => {
                let fd = File::from(fd);
                let meta = fd.metadata()?;
                Ok(Some(Entry { fd, meta }))
            }
            Err(e) if absent_with(&e, mounts) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the very inode this entry pinned for reading. Only regular files and folders are
    /// opened (opening a device or FIFO can have effects), through the process's own
    /// `/proc/self/fd` link, which names our descriptor and nothing a VM can change.
    pub fn reopen(&self) -> io::Result<File> {
        if !self.meta.is_file() && !self.meta.is_dir() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "only files and folders are read",
            ));
        }
        let link = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let fd = nix::fcntl::open(
            link.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            Mode::empty(),
        )?;
        let file = File::from(fd);
        let again = file.metadata()?;
        if (again.dev(), again.ino()) != (self.meta.dev(), self.meta.ino()) {
            return Err(io::Error::other("the entry changed while it was read"));
        }
        Ok(file)
    }

    /// The target of a symlink entry, read from its descriptor (never followed).
    pub fn link_target(&self) -> io::Result<OsString> {
        Ok(nix::fcntl::readlinkat(self.fd.as_fd(), "")?)
    }
}

/// The names in a folder (without `.` and `..`), sorted.
pub fn names(dir: &File) -> io::Result<Vec<OsString>> {
    let mut names = names_where(dir, |_| true)?;
    names.sort();
    Ok(names)
}

/// The names in `dir` that may be folders: its listing's type says a folder, or says nothing
/// (`DT_UNKNOWN`, a filesystem that does not fill it in): what a search for folders must open.
fn folder_names(dir: &File) -> io::Result<Vec<OsString>> {
    use nix::dir::Type;
    names_where(dir, |kind| matches!(kind, None | Some(Type::Directory)))
}

/// The names in `dir` (`.` and `..` aside) whose listed type `keep` takes, unsorted.
fn names_where(
    dir: &File,
    keep: impl Fn(Option<nix::dir::Type>) -> bool,
) -> io::Result<Vec<OsString>> {
    let fd = open_on_mount(dir, Path::new("."), OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    let mut listing = Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
        if name != "." && name != ".." && keep(entry.file_type()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Calls `visit` on every folder (`dir` itself first) and every plain file of the tree `dir`,
/// each opened for reading; links, devices, FIFOs and sockets are passed over, never opened
/// (opening a device can have effects, a FIFO blocks) and no link is followed. Each folder is
/// reached again from `dir` by its path, beneath it and without links ([`open_beneath`]), so
/// the walk holds a few descriptors whatever the depth; a path too long to open fails the walk.
/// For a tree nobody else changes while it runs (an import's staging folder, root's only).
pub fn each_file_and_folder(
    dir: &File,
    visit: &mut dyn FnMut(&File, &Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let mut folders = vec![std::path::PathBuf::from(".")];
    while let Some(rel) = folders.pop() {
        let folder = File::from(open_beneath(
            dir,
            &rel,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )?);
        visit(&folder, &folder.metadata()?)?;
        for name in names(&folder)? {
            let Some(entry) = Entry::open(&folder, Path::new(&name))? else {
                continue;
            };
            if entry.meta.is_dir() {
                folders.push(rel.join(&name));
            } else if entry.meta.is_file() {
                visit(&entry.reopen()?, &entry.meta)?;
            }
        }
    }
    Ok(())
}

/// Removes the entry `name` of `dir` and, if it is a folder, everything in it, never following
/// a symlink: each folder is opened with `O_NOFOLLOW` beneath its parent's descriptor, and each
/// entry is unlinked by name from its parent's descriptor (see [`empty_dir`]). It never enters
/// another mount: a mount point at `name` or anywhere in it is the error `EXDEV`
/// ([`at_a_mount`]), met before that mount's folder is emptied (it would then have failed
/// `EBUSY` only after emptying whatever filesystem is mounted there).
pub fn remove_tree(dir: &File, name: &OsStr) -> io::Result<()> {
    remove_tree_sparing(dir, name, &Spared::default())
}

/// [`remove_tree`] that never empties nor removes a folder of `spared` (its device and inode as
/// fstat on its descriptor says, or the root id its descriptor reads: [`Spared::is`]): such a folder in the tree is the error
/// [`spared_folder`] before anything is removed ([`holds_spared`]); one the walk by path missed
/// (a path too long) is refused where the removal meets it, nothing further removed. Identity, not path: a folder a path list misses (moved, or reached where no
/// mount table names it) is still met.
pub fn remove_tree_sparing(dir: &File, name: &OsStr, spared: &Spared) -> io::Result<()> {
    let entry = match Entry::open_on_mount(dir, Path::new(name))? {
        None => return Ok(()),
        Some(entry) => entry,
    };
    if entry.meta.is_dir() {
        refuse_spared(&entry.fd, &entry.meta, spared)?;
        if let Some(folder) = open_dir_on_mount(dir, Path::new(name))? {
            // Looked for first, so that in all but a tree too deep to walk by path nothing is
            // removed; emptying lifts folders up, which would move the spared one's parents.
            if !spared.is_empty() && holds_spared(&folder, spared, Bounds::WHOLE) != Search::Clear {
                return Err(io::Error::new(
                    ErrorKind::PermissionDenied,
                    SparedFolder::default(),
                ));
            }
            empty_dir_sparing(&folder, spared)?;
        }
        nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir)?;
    } else {
        nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(())
}

/// Removes everything in the folder `dir`, keeping the folder, with two descriptors whatever
/// the depth: the files of each folder in it are unlinked there, its folders moved up into
/// `dir` (`renameat2` between the two pinned folders, under names of feather's that replace
/// nothing), and the emptied folder removed; the tree gets shallower instead of the walk
/// deeper. A VM chooses how deep its folders nest: a walk that held a descriptor a level (or
/// recursed) ran out of descriptors (or stack) on a layer thousands of levels deep, and
/// `feather rm` left such a VM's folder behind. A mount point in it is the error `EXDEV`
/// ([`at_a_mount`]): what is mounted there is never entered.
pub fn empty_dir(dir: &File) -> io::Result<()> {
    empty_dir_sparing(dir, &Spared::default())
}

/// [`empty_dir`] that refuses at a folder of `spared` (see [`remove_tree_sparing`]), `dir`
/// itself included. A refusal, or any other error once it moved something (a mount point met:
/// `EXDEV`), puts back the folders it moved up, and makes again (empty, with their mode and
/// owner) those it removed, so that the spared folder is found at its path again (review f27
/// N2: a root moved from its path lost its guard, and the next commit emptied it); the files
/// it unlinked on the way are gone. A folder that cannot go back (its name taken meanwhile)
/// is named in the error, with the folder it is in (review roots28 M2). Only a tree changed by
/// someone else since [`holds_spared`] looked gets a refusal this far.
pub fn empty_dir_sparing(dir: &File, spared: &Spared) -> io::Result<()> {
    refuse_spared(dir, &dir.metadata()?, spared)?;
    let mut undo = Undo::default();
    empty_dir_undoable(dir, spared, &mut undo).map_err(|e| {
        #[cfg(test)]
        tests::before_put_back();
        let left = undo.put_back(dir);
        match left.is_empty() {
            true => e,
            false => with_left_lifted(e, dir, left),
        }
    })
}

/// The error `e` of an emptying of `dir` that left the folders `left` lifted in it.
fn with_left_lifted(e: io::Error, dir: &File, left: Vec<OsString>) -> io::Error {
    let left = Left {
        dir: std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok(),
        names: left,
    };
    match spared_folder(&e) {
        true => io::Error::new(
            ErrorKind::PermissionDenied,
            SparedFolder { left: Some(left) },
        ),
        false => io::Error::new(e.kind(), LeftLifted { source: e, left }),
    }
}

/// Folders an emptying moved up and could not put back.
#[derive(Debug)]
struct Left {
    /// The folder they are in, where its path can be told.
    dir: Option<std::path::PathBuf>,
    names: Vec<OsString>,
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .names
            .iter()
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        let within = match &self.dir {
            Some(dir) => format!(" in {}", dir.display()),
            None => String::new(),
        };
        write!(
            f,
            "; folders it had moved could not be put back (their names were taken meanwhile) \
             and are now {}{within}: move them back by hand",
            names.join(", ")
        )
    }
}

/// An emptying's error other than a refusal, with the folders it could not put back.
#[derive(Debug)]
struct LeftLifted {
    source: io::Error,
    left: Left,
}

impl std::fmt::Display for LeftLifted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.source, self.left)
    }
}

impl std::error::Error for LeftLifted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn empty_dir_undoable(dir: &File, spared: &Spared, undo: &mut Undo) -> io::Result<()> {
    loop {
        let names = names(dir)?;
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            let Some(entry) = Entry::open_on_mount(dir, Path::new(&name))? else {
                continue; // gone since it was listed
            };
            if !entry.meta.is_dir() {
                nix::unistd::unlinkat(
                    dir,
                    name.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                )?;
                continue;
            }
            refuse_spared(&entry.fd, &entry.meta, spared)?;
            let was = undo.original(&name);
            if let Some(folder) = open_dir_on_mount(dir, Path::new(&name))? {
                refuse_spared(&folder, &folder.metadata()?, spared)?;
                lift_contents(&folder, dir, &was, undo, spared)?;
            }
            nix::unistd::unlinkat(dir, name.as_os_str(), nix::unistd::UnlinkatFlags::RemoveDir)?;
            undo.removed
                .push((was, entry.meta.mode(), entry.meta.uid(), entry.meta.gid()));
        }
    }
}

/// What [`empty_dir_sparing`] moved and removed in `dir`, to put back where it refuses.
#[derive(Default)]
struct Undo {
    /// The names lifted into `dir` so far (`.feather-removing-N` from 1 on).
    moved: u64,
    /// Each folder lifted into `dir`: its name there, and its path in `dir` before.
    lifted: Vec<(OsString, std::path::PathBuf)>,
    /// Each folder removed once emptied, in order (a folder before those lifted out of it):
    /// its path in `dir` before, its mode, owner and group.
    removed: Vec<(std::path::PathBuf, u32, u32, u32)>,
}

impl Undo {
    /// The path in `dir` that the entry `name` of `dir` had before the removal began.
    fn original(&self, name: &OsStr) -> std::path::PathBuf {
        self.lifted
            .iter()
            .rev()
            .find(|(lifted, _)| lifted == name)
            .map_or_else(|| name.into(), |(_, was)| was.clone())
    }

    /// Makes the removed folders again, then moves the lifted ones still in `dir` back, in the
    /// order they went: each one's parent is there again before it. Each parent is opened
    /// beneath `dir` without following a link. Returns the lifted folders still in `dir` that
    /// could not go back (one emptied and removed since is made again by its path instead).
    fn put_back(&self, dir: &File) -> Vec<OsString> {
        let parent_of = |was: &Path| {
            let (parent, name) = (was.parent()?, was.file_name()?);
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
            Some((
                File::from(open_on_mount(dir, parent, flags).ok()?),
                name.to_owned(),
            ))
        };
        for (was, mode, uid, gid) in &self.removed {
            let Some((parent, name)) = parent_of(was) else {
                continue;
            };
            if nix::sys::stat::mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o700))
                .is_err()
            {
                continue;
            }
            if let Ok(Some(made)) = open_dir_on_mount(&parent, Path::new(&name)) {
                let _ = nix::unistd::fchown(
                    &made,
                    Some(nix::unistd::Uid::from_raw(*uid)),
                    Some(nix::unistd::Gid::from_raw(*gid)),
                );
                let _ = nix::sys::stat::fchmod(&made, Mode::from_bits_truncate(*mode));
            }
        }
        let mut left = Vec::new();
        for (lifted, was) in &self.lifted {
            let back = match parent_of(was) {
                Some((parent, name)) => nix::fcntl::renameat2(
                    dir,
                    lifted.as_os_str(),
                    &parent,
                    name.as_os_str(),
                    nix::fcntl::RenameFlags::RENAME_NOREPLACE,
                ),
                None => Err(Errno::ENOTDIR),
            };
            let still_here = || {
                nix::sys::stat::fstatat(
                    dir,
                    lifted.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .is_ok()
            };
            if back.is_err() && still_here() {
                left.push(lifted.clone());
            }
        }
        left
    }
}

/// Unlinks the files of `folder` (at `was` in `into` before the removal began) and moves its
/// folders into `into` under fresh names, recorded in `undo`. A folder of `spared` is refused
/// before it is moved: it would be moved out of its place.
fn lift_contents(
    folder: &File,
    into: &File,
    was: &Path,
    undo: &mut Undo,
    spared: &Spared,
) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    for name in names(folder)? {
        let Some(entry) = Entry::open_on_mount(folder, Path::new(&name))? else {
            continue;
        };
        if !entry.meta.is_dir() {
            nix::unistd::unlinkat(
                folder,
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )?;
            continue;
        }
        refuse_spared(&entry.fd, &entry.meta, spared)?;
        loop {
            undo.moved += 1;
            let fresh = format!(".feather-removing-{}", undo.moved);
            match renameat2(
                folder,
                name.as_os_str(),
                into,
                fresh.as_str(),
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Err(Errno::EEXIST) => continue, // a name of the tree's own: the next one
                result => {
                    result?;
                    undo.lifted.push((fresh.into(), was.join(&name)));
                    break;
                }
            }
        }
    }
    Ok(())
}

/// The error of a removal that met a folder it must spare (see [`remove_tree_sparing`]), with
/// the folders it moved and could not put back.
#[derive(Debug, Default)]
struct SparedFolder {
    left: Option<Left>,
}

impl std::fmt::Display for SparedFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a folder in it must not be removed; nothing further was removed")?;
        match &self.left {
            Some(left) => write!(f, "{left}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for SparedFolder {}

/// Whether `e` is a removal's refusal at a folder it must spare.
pub fn spared_folder(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SparedFolder>())
}

/// Whether a folder of `spared` (by its device and inode) lies in the tree `dir`, on `dir`'s
/// mount, at most `depth` levels beneath it. What cannot be opened or read is passed over (a
/// path too long, a folder gone): a removal still refuses where it meets one. Only folders
/// are opened (by the listing's type, where the filesystem gives it): a spared folder is one,
/// and a tree's files outnumber its folders (`diff` of a VM that deleted the host's
/// `/data/tree`, 200 folders of 100 files each: 20,815 opens and 20,253 `statx` before, 815
/// and 253 after; 0.15 s of wall time before, 0.035 s after, debug build, 2026-12-07).
/// At most `bounds.entries` entries are opened: a tree the VM deleted is the host's, and
/// its size is not the VM's to choose ([`Search::Unfinished`] when they are spent; review
/// lowroots29 M6).
pub fn holds_spared(dir: &impl AsFd, spared: &Spared, bounds: Bounds) -> Search {
    // Paths from `dir`, not descriptors: a wide tree would hold one for each folder.
    let mut folders = vec![(std::path::PathBuf::from("."), 0)];
    let mut left = bounds.entries;
    while let Some((rel, level)) = folders.pop() {
        let Ok(Some(folder)) = open_dir_on_mount(dir, &rel) else {
            continue;
        };
        for name in folder_names(&folder).unwrap_or_default() {
            let Some(spent) = left.checked_sub(1) else {
                return Search::Unfinished;
            };
            left = spent;
            let Ok(Some(entry)) = Entry::open_on_mount(&folder, Path::new(&name)) else {
                continue;
            };
            if spared.is(&entry.fd, &entry.meta) {
                return Search::Holds;
            }
            if entry.meta.is_dir() && level < bounds.depth {
                folders.push((rel.join(&name), level + 1));
            }
        }
    }
    Search::Clear
}

/// How far [`holds_spared`] looks: levels beneath the folder, and entries opened in all.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub depth: usize,
    pub entries: usize,
}

impl Bounds {
    /// The whole tree (a removal, which visits all of it anyway).
    pub const WHOLE: Bounds = Bounds {
        depth: usize::MAX,
        entries: usize::MAX,
    };
}

/// What [`holds_spared`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// A spared folder lies in the tree.
    Holds,
    /// None lies in the tree, down to the depth asked.
    Clear,
    /// The entries were spent before the tree was searched: one may lie in it.
    Unfinished,
}

fn refuse_spared(fd: &impl AsFd, meta: &Metadata, spared: &Spared) -> io::Result<()> {
    if spared.is(fd, meta) {
        return Err(io::Error::new(
            ErrorKind::PermissionDenied,
            SparedFolder::default(),
        ));
    }
    Ok(())
}

/// The file in a state root's folder that holds the root's id (see [`Spared`]).
pub const ROOT_ID_FILE: &str = "root-id";

/// The folders a removal must spare, and a walk of the host knows for state folders: those of
/// `identities` (device, inode), and those holding a [`ROOT_ID_FILE`] that names one of `ids`,
/// a registered state root's, whatever their device and inode now: after a reboot a tmpfs,
/// btrfs or overlay folder has other numbers and another folder may have the old ones, and a
/// root moved keeps its id (review gl27 M2, f27 N2, N5).
#[derive(Clone, Debug, Default)]
pub struct Spared {
    pub identities: Vec<(u64, u64)>,
    pub ids: Vec<String>,
}

impl Spared {
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty() && self.ids.is_empty()
    }

    /// Whether the entry `fd` (a descriptor of it, `O_PATH` too), whose metadata is `meta`, is
    /// a folder to spare.
    pub fn is(&self, fd: &impl AsFd, meta: &Metadata) -> bool {
        meta.is_dir()
            && (self.identities.contains(&(meta.dev(), meta.ino()))
                || !self.ids.is_empty() && root_id_in(fd).is_some_and(|id| self.ids.contains(&id)))
    }
}

/// The root id the folder `folder` holds in its [`ROOT_ID_FILE`], if it holds one: a plain
/// file on the folder's mount, opened without following a link and without waiting (a FIFO).
pub fn root_id_in(folder: &impl AsFd) -> Option<String> {
    use std::io::Read;
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK;
    let file = File::from(open_on_mount(folder, Path::new(ROOT_ID_FILE), flags).ok()?);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(128).read_to_string(&mut text).ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// Copies the open regular file `from` into `to` (empty, writable), keeping holes: only the
/// data regions SEEK_DATA finds are copied (with copy_file_range, which lets the filesystem
/// share or clone blocks), and the length is set at the end, so a sparse file stays sparse.
pub fn copy_sparse(from: &File, to: &File) -> io::Result<()> {
    let len = from.metadata()?.len() as i64;
    let mut offset = 0i64;
    while offset < len {
        let data = match lseek(from, offset, Whence::SeekData) {
            Ok(at) => at,
            Err(Errno::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(from, data, Whence::SeekHole)?.min(len);
        copy_range(from, to, data, hole)?;
        offset = hole;
    }
    nix::unistd::ftruncate(to, len)?;
    Ok(())
}

fn copy_range(from: &File, to: &File, start: i64, end: i64) -> io::Result<()> {
    let (mut read_at, mut write_at) = (start, start);
    while read_at < end {
        let chunk = (end - read_at).min(1 << 30) as usize;
        let copied = match nix::fcntl::copy_file_range(
            from,
            Some(&mut read_at),
            to,
            Some(&mut write_at),
            chunk,
        ) {
            Ok(n) => n,
            // Between filesystems of different types the kernel declines: copy by hand.
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                return copy_by_reading(from, to, read_at, end)
            }
            Err(e) => return Err(e.into()),
        };
        if copied == 0 {
            // The file shrank while it was copied: what is left reads as nothing.
            break;
        }
    }
    Ok(())
}

fn copy_by_reading(from: &File, to: &File, mut at: i64, end: i64) -> io::Result<()> {
    let mut buffer = vec![0u8; 1 << 20];
    while at < end {
        let want = ((end - at) as usize).min(buffer.len());
        let n = from.read_at(&mut buffer[..want], at as u64)?;
        if n == 0 {
            break;
        }
        to.write_all_at(&buffer[..n], at as u64)?;
        at += n as i64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use feather_testkit::ScratchDir;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    /// A folder of the test's own (removed on drop, also when the test fails) holding
    /// `tree/sub` and `outside/keep`.
    fn scratch(label: &str) -> ScratchDir {
        let scratch = ScratchDir::new(&format!("beneath-{label}"));
        fs::create_dir_all(scratch.0.join("tree/sub")).unwrap();
        fs::create_dir_all(scratch.0.join("outside")).unwrap();
        fs::write(scratch.0.join("outside/keep"), "keep").unwrap();
        scratch
    }

    #[test]
    fn no_symlink_is_followed_on_the_way() {
        let scratch = scratch("follow");
        symlink(scratch.0.join("outside"), scratch.0.join("tree/link")).unwrap();
        let root = open_root(&scratch.0.join("tree")).unwrap();
        let error = open_beneath(&root, Path::new("link/keep"), OFlag::O_RDONLY).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ELOOP));
        assert!(open_dir(&root, Path::new("link")).unwrap().is_none());
        assert!(open_beneath(&root, Path::new("../outside"), OFlag::O_PATH).is_err());
        let link = Entry::open(&root, Path::new("link")).unwrap().unwrap();
        assert!(link.meta.file_type().is_symlink());
        assert_eq!(
            link.link_target().unwrap(),
            scratch.0.join("outside").into_os_string()
        );
        assert!(
            link.reopen().is_err(),
            "a symlink is never opened for reading"
        );
    }

    #[test]
    fn folders_are_made_beneath_never_where_a_link_points() {
        let scratch = scratch("make");
        let root = open_root(&scratch.0.join("tree")).unwrap();
        let mode = Mode::from_bits_truncate(0o755);
        make_dirs(&root, Path::new("sub/a/b"), mode).unwrap();
        assert!(scratch.0.join("tree/sub/a/b").is_dir());
        make_dirs(&root, Path::new("sub/a/b"), mode).unwrap();
        symlink(scratch.0.join("outside"), scratch.0.join("tree/link")).unwrap();
        for rel in ["link", "link/made", "link/made/deeper"] {
            let error = make_dirs(&root, Path::new(rel), mode).unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{rel}");
        }
        fs::write(scratch.0.join("tree/file"), "").unwrap();
        let error = make_dirs(&root, Path::new("file/made"), mode).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOTDIR));
        assert!(make_dirs(&root, Path::new("../outside/made"), mode).is_err());
        let error = open_folder(&root, Path::new("link")).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ELOOP));
        open_folder(&root, Path::new("sub/a")).unwrap();
        let error = open_folder(&root, Path::new("sub/missing")).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound, "nothing is made");
        let outside: Vec<_> = fs::read_dir(scratch.0.join("outside")).unwrap().collect();
        assert_eq!(outside.len(), 1, "only the marker is outside");
    }

    #[test]
    fn a_walk_opens_every_folder_and_file_and_nothing_a_link_or_fifo_names() {
        let scratch = scratch("walk");
        fs::create_dir_all(scratch.0.join("tree/sub/deeper")).unwrap();
        fs::write(scratch.0.join("tree/sub/deeper/file"), "x").unwrap();
        fs::write(scratch.0.join("tree/top"), "y").unwrap();
        symlink(scratch.0.join("outside"), scratch.0.join("tree/sub/link")).unwrap();
        symlink(
            scratch.0.join("outside/keep"),
            scratch.0.join("tree/sub/file-link"),
        )
        .unwrap();
        nix::unistd::mkfifo(
            &scratch.0.join("tree/fifo"),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let root = open_root(&scratch.0.join("tree")).unwrap();
        let mut seen = Vec::new();
        each_file_and_folder(&root, &mut |file, meta| {
            let again = file.metadata()?;
            assert_eq!((again.dev(), again.ino()), (meta.dev(), meta.ino()));
            let link = format!("/proc/self/fd/{}", file.as_raw_fd());
            let path = fs::read_link(link)?;
            seen.push(path.strip_prefix(&scratch.0).unwrap().to_path_buf());
            Ok(())
        })
        .unwrap();
        seen.sort();
        let expected: Vec<PathBuf> = [
            "tree",
            "tree/sub",
            "tree/sub/deeper",
            "tree/sub/deeper/file",
            "tree/top",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn removing_a_tree_removes_links_not_what_they_point_to() {
        let scratch = scratch("remove");
        symlink(scratch.0.join("outside"), scratch.0.join("tree/sub/link")).unwrap();
        fs::write(scratch.0.join("tree/sub/file"), "x").unwrap();
        let root = open_root(&scratch.0).unwrap();
        remove_tree(&root, OsStr::new("tree")).unwrap();
        assert!(!scratch.0.join("tree").exists());
        assert_eq!(
            fs::read_to_string(scratch.0.join("outside/keep")).unwrap(),
            "keep"
        );
    }

    /// The search for a spared folder, which opens folders only, finds one among files, by
    /// its identity and by the id it holds, and finds none in a tree of files and other
    /// folders, nor one deeper than asked; with its entries spent it says the search is
    /// unfinished (review lowroots29 M6).
    #[test]
    fn a_spared_folder_is_found_among_files() {
        let scratch = scratch("holds");
        let root_folder = scratch.0.join("tree/sub/deeper/root");
        fs::create_dir_all(&root_folder).unwrap();
        for folder in ["tree", "tree/sub", "tree/sub/deeper"] {
            for i in 0..20 {
                fs::write(scratch.0.join(folder).join(format!("f{i}")), "x").unwrap();
            }
        }
        let tree = open_root(&scratch.0.join("tree")).unwrap();
        let deep = Bounds {
            depth: 64,
            entries: usize::MAX,
        };
        let meta = fs::metadata(&root_folder).unwrap();
        let by_identity = Spared {
            identities: vec![(meta.dev(), meta.ino())],
            ids: Vec::new(),
        };
        assert_eq!(holds_spared(&tree, &by_identity, deep), Search::Holds);
        let shallow = Bounds { depth: 1, ..deep };
        assert_eq!(
            holds_spared(&tree, &by_identity, shallow),
            Search::Clear,
            "deeper than asked"
        );
        // The folders tree/sub, tree/sub/deeper and its root: 3 entries opened, files aside.
        let few = Bounds { entries: 2, ..deep };
        assert_eq!(
            holds_spared(&tree, &by_identity, few),
            Search::Unfinished,
            "entries spent"
        );
        let enough = Bounds { entries: 3, ..deep };
        assert_eq!(holds_spared(&tree, &by_identity, enough), Search::Holds);
        fs::write(root_folder.join(ROOT_ID_FILE), "abc\n").unwrap();
        let by_id = Spared {
            identities: Vec::new(),
            ids: vec!["abc".into()],
        };
        assert_eq!(holds_spared(&tree, &by_id, deep), Search::Holds);
        let outside = fs::metadata(scratch.0.join("outside")).unwrap();
        let elsewhere = Spared {
            identities: vec![(outside.dev(), outside.ino())],
            ids: vec!["other".into()],
        };
        assert_eq!(holds_spared(&tree, &elsewhere, deep), Search::Clear);
    }

    /// A tree holding a spared folder is refused before anything is removed, and a spared
    /// folder being emptied is refused (review gl27 H1).
    #[test]
    fn a_removal_never_empties_nor_moves_a_spared_folder() {
        let scratch = scratch("spared");
        for rel in ["tree/sub/deeper/root", "tree/root"] {
            let root_folder = scratch.0.join(rel);
            fs::create_dir_all(&root_folder).unwrap();
            fs::write(root_folder.join("marker"), "root").unwrap();
            let meta = fs::metadata(&root_folder).unwrap();
            let spared = Spared {
                identities: vec![(meta.dev(), meta.ino())],
                ids: Vec::new(),
            };
            let root = open_root(&scratch.0).unwrap();
            fs::write(scratch.0.join("tree/sub/file"), "x").unwrap();
            let error = remove_tree_sparing(&root, OsStr::new("tree"), &spared).unwrap_err();
            assert!(spared_folder(&error), "{error}");
            assert_eq!(
                fs::read_to_string(root_folder.join("marker")).unwrap(),
                "root"
            );
            assert!(scratch.0.join("tree/sub/file").exists(), "nothing removed");
            let parent = open_root(root_folder.parent().unwrap()).unwrap();
            let error = empty_dir_sparing(&parent, &spared).unwrap_err();
            assert!(spared_folder(&error), "{error}");
            assert!(root_folder.join("marker").exists(), "emptied");
        }
    }

    /// A folder holding a root id of `ids` is spared whatever its device and inode, and one
    /// naming another id is not (review gl27 M2: the identity of a root after a reboot).
    #[test]
    fn a_folder_naming_a_spared_root_id_is_spared_whatever_its_inode() {
        let scratch = scratch("spared-id");
        let root_folder = scratch.0.join("tree/sub/root");
        fs::create_dir_all(&root_folder).unwrap();
        fs::write(root_folder.join(ROOT_ID_FILE), "0123abcd\n").unwrap();
        fs::create_dir_all(scratch.0.join("other/root")).unwrap();
        fs::write(scratch.0.join("other/root").join(ROOT_ID_FILE), "ffff").unwrap();
        let spared = Spared {
            identities: Vec::new(),
            ids: vec!["0123abcd".into()],
        };
        let root = open_root(&scratch.0).unwrap();
        assert_eq!(holds_spared(&root, &spared, Bounds::WHOLE), Search::Holds);
        let error = remove_tree_sparing(&root, OsStr::new("tree"), &spared).unwrap_err();
        assert!(spared_folder(&error), "{error}");
        assert!(root_folder.join(ROOT_ID_FILE).exists(), "nothing removed");
        let error = empty_dir_sparing(&open_root(&root_folder).unwrap(), &spared).unwrap_err();
        assert!(spared_folder(&error), "{error}");
        remove_tree_sparing(&root, OsStr::new("other"), &spared).unwrap();
        assert!(
            !scratch.0.join("other").exists(),
            "another root's id spares nothing"
        );
    }

    /// An emptying that meets a spared folder deep down (one the look before missed: a tree
    /// changed since) puts back the folders it lifted and removed on the way, so that the
    /// folder is found at its path again (review f27 N2).
    #[test]
    fn a_refused_emptying_puts_back_what_it_moved() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = scratch("put-back");
        let root_folder = scratch.0.join("tree/a/b/root");
        fs::create_dir_all(&root_folder).unwrap();
        fs::create_dir_all(scratch.0.join("tree/a/c/d")).unwrap();
        fs::write(root_folder.join(ROOT_ID_FILE), "feed").unwrap();
        fs::set_permissions(scratch.0.join("tree/a"), fs::Permissions::from_mode(0o750)).unwrap();
        let spared = Spared {
            identities: Vec::new(),
            ids: vec!["feed".into()],
        };
        let tree = open_root(&scratch.0.join("tree")).unwrap();
        let error = empty_dir_sparing(&tree, &spared).unwrap_err();
        assert!(spared_folder(&error), "{error}");
        assert!(
            root_folder.join(ROOT_ID_FILE).exists(),
            "the root is at its path"
        );
        let mode = fs::metadata(scratch.0.join("tree/a")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o750, "made again as it was");
        let left: Vec<OsString> = names(&tree).unwrap();
        assert!(
            !left
                .iter()
                .any(|name| name.as_bytes().starts_with(b".feather-removing")),
            "nothing left lifted: {left:?}"
        );
        assert!(scratch.0.join("tree/a/c/d").is_dir(), "a sibling put back");
    }

    thread_local! {
        /// What a test does just before an emptying puts back what it moved.
        static BEFORE_PUT_BACK: std::cell::RefCell<Option<Box<dyn Fn()>>> =
            const { std::cell::RefCell::new(None) };
    }

    pub(super) fn before_put_back() {
        BEFORE_PUT_BACK.with(|hook| {
            if let Some(hook) = hook.borrow().as_ref() {
                hook();
            }
        });
    }

    /// A folder that cannot go back (its name taken between the lift and the put-back: an
    /// owner of the tree racing the removal) is named in the refusal, with where it is now
    /// (review roots28 M2: left in `.feather-removing-N`, and the error said nothing).
    #[test]
    fn a_folder_that_cannot_be_put_back_is_named_in_the_error() {
        let scratch = scratch("put-back-blocked");
        let root_folder = scratch.0.join("tree/a/b/root");
        fs::create_dir_all(&root_folder).unwrap();
        fs::write(root_folder.join(ROOT_ID_FILE), "feed").unwrap();
        let spared = Spared {
            identities: Vec::new(),
            ids: vec!["feed".into()],
        };
        let blocked = scratch.0.join("tree/a/b");
        let taken = blocked.clone();
        BEFORE_PUT_BACK.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move || fs::create_dir_all(&taken).unwrap()))
        });
        let tree = open_root(&scratch.0.join("tree")).unwrap();
        let error = empty_dir_sparing(&tree, &spared).unwrap_err();
        BEFORE_PUT_BACK.with(|hook| *hook.borrow_mut() = None);
        assert!(spared_folder(&error), "{error}");
        let text = error.to_string();
        let tree_path = fs::canonicalize(scratch.0.join("tree")).unwrap();
        assert!(
            text.contains(".feather-removing-1")
                && text.contains(&format!("in {}", tree_path.display())),
            "{text}"
        );
        assert!(scratch
            .0
            .join("tree/.feather-removing-1/root")
            .join(ROOT_ID_FILE)
            .exists());
    }

    /// An emptying that meets a mount point after it moved folders up puts them back too
    /// (review roots28 M2: only a refusal did).
    #[test]
    fn an_emptying_stopped_by_a_mount_point_puts_back_what_it_moved() {
        let scratch = scratch("put-back-mount");
        fs::create_dir_all(scratch.0.join("tree/a/b/x")).unwrap();
        let mount = TmpfsMount::at(&scratch.0.join("tree/a/b/m"));
        let tree = open_root(&scratch.0.join("tree")).unwrap();
        let error = empty_dir(&tree).unwrap_err();
        let left: Vec<OsString> = names(&tree).unwrap();
        let back = scratch.0.join("tree/a/b/m").is_dir();
        drop(mount);
        // Wherever the mount went (lifted with its parent, when not put back).
        for name in &left {
            let _ = nix::mount::umount2(
                &scratch.0.join("tree").join(name).join("m"),
                nix::mount::MntFlags::MNT_DETACH,
            );
        }
        assert!(at_a_mount(&error), "{error}");
        assert!(
            !left
                .iter()
                .any(|name| name.as_bytes().starts_with(b".feather-removing")),
            "left lifted: {left:?}"
        );
        assert!(back, "the mount point is at its path again");
    }

    use feather_testkit::TmpfsMount;

    #[test]
    fn remove_tree_never_enters_a_mount() {
        let scratch = scratch("mount");
        let point = scratch.0.join("tree/sub/mnt");
        let mounted = TmpfsMount::at(&point);
        fs::create_dir(point.join("photos")).unwrap();
        fs::write(point.join("photos/keep"), "keep").unwrap();
        fs::write(point.join("keep2"), "keep").unwrap();
        let root = open_root(&scratch.0).unwrap();
        let error = remove_tree(&root, OsStr::new("tree")).unwrap_err();
        assert!(at_a_mount(&error), "{error}");
        let sub = open_root(&scratch.0.join("tree/sub")).unwrap();
        let error = remove_tree(&sub, OsStr::new("mnt")).unwrap_err();
        assert!(at_a_mount(&error), "{error}");
        assert!(at_a_mount(&empty_dir(&sub).unwrap_err()));
        assert_eq!(
            fs::read_to_string(point.join("photos/keep")).unwrap(),
            "keep"
        );
        assert_eq!(fs::read_to_string(point.join("keep2")).unwrap(), "keep");
        // The lookups that stay on their mount say so; those that cross do as before.
        let error = Entry::open_on_mount(&root, Path::new("tree/sub/mnt/keep2")).err();
        assert!(error.is_some_and(|e| at_a_mount(&e)));
        let error = open_dir_on_mount(&sub, Path::new("mnt")).err();
        assert!(error.is_some_and(|e| at_a_mount(&e)));
        assert!(Entry::open(&root, Path::new("tree/sub/mnt/keep2"))
            .unwrap()
            .is_some());
        // A mount's own root is listed from its descriptor.
        let names = names(&open_root(&point).unwrap()).unwrap();
        assert_eq!(names, [OsString::from("keep2"), OsString::from("photos")]);
        drop(mounted);
    }

    #[test]
    fn a_sparse_copy_keeps_holes_and_data() {
        let scratch = scratch("sparse");
        let from_path = scratch.0.join("tree/sparse");
        let from = File::create(&from_path).unwrap();
        from.write_all_at(b"head", 0).unwrap();
        from.write_all_at(b"tail", 64 << 20).unwrap();
        let from = File::open(&from_path).unwrap();
        let to = File::create(scratch.0.join("tree/copy")).unwrap();
        copy_sparse(&from, &to).unwrap();
        let meta = to.metadata().unwrap();
        assert_eq!(meta.len(), (64 << 20) + 4);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "{} bytes on disk",
            meta.blocks() * 512
        );
        let copy = File::open(scratch.0.join("tree/copy")).unwrap();
        let mut four = [0u8; 4];
        copy.read_exact_at(&mut four, 64 << 20).unwrap();
        assert_eq!(&four, b"tail");
        copy.read_exact_at(&mut four, 0).unwrap();
        assert_eq!(&four, b"head");
    }
}

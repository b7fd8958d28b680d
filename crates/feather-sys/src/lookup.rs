//! What the kernel goes through to find a path: each folder and symbolic link on the way, as
//! its descriptor says (owner, mode), for a caller that must know who could change where the
//! path leads (a state root, StrictModes as sshd checks a user's files). Each name is opened
//! `O_PATH | O_NOFOLLOW` relative to the folder before it and read with fstat on its own
//! descriptor; a link is read on its descriptor and its target walked the same way, so what
//! is looked at is what the walk went through, never a path looked up again.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::mountinfo::{self, MountEntry};
use crate::user_mounts;

/// As many links as the kernel follows in one lookup (`MAXSYMLINKS`).
pub(crate) const MAX_LINKS: usize = 40;

/// One name the lookup went through: where (the path as walked so far) and what it is.
#[derive(Debug)]
pub struct Step {
    pub path: PathBuf,
    pub meta: Metadata,
    /// The mount this name is on, when the walk crossed into it here (its filesystem's device
    /// is not the folder's it was found in): what a filesystem reports of its owners is only
    /// as good as who mounted it ([`crate::user_mounts`]).
    pub mount: Option<MountEntry>,
}

/// Every folder and link a lookup went through, `/` first, and the path's missing part if it
/// stopped short (a folder not made yet): `<end>/<missing>`.
#[derive(Debug)]
pub struct Lookup {
    pub steps: Vec<Step>,
    pub missing: Option<PathBuf>,
    /// Where the walk ended, on the descriptor it went through: the path's own folder (or
    /// what its last name is) when nothing is missing, the folder its missing part would be
    /// made in otherwise. Not always the last step: a path may end in `..`.
    pub end: End,
}

/// The folder a walk ended in, pinned (`O_PATH`): what a caller makes or opens next is
/// relative to it, never found again by path.
#[derive(Debug)]
pub struct End {
    pub step: Step,
    pub pinned: File,
}

impl End {
    fn of(pinned: File, path: PathBuf) -> io::Result<Self> {
        let meta = pinned.metadata()?;
        Ok(End {
            step: Step {
                path,
                meta,
                mount: None,
            },
            pinned,
        })
    }
}

/// Walks the absolute `path` from `/`, one name at a time ([module doc](self)). `..` goes
/// back to the folder the walk came from (already looked at). A name missing ends the walk
/// (`missing`); anything else that is not a folder before the last name is `ENOTDIR`.
pub fn walk(path: &Path) -> io::Result<Lookup> {
    walk_following(path, |_| Ok(()))
}

/// A link a walk is about to follow, and the folder it was found in, each as its own
/// descriptor says (never looked up again by path).
#[derive(Debug)]
pub struct LinkFound<'a> {
    /// The folder holding the link, as walked, and its `fstat`.
    pub holder: &'a Path,
    pub holder_meta: &'a Metadata,
    /// The link itself, as walked (its `fstat` is the last of the walk's steps).
    pub link: &'a Step,
}

/// [`walk`], asking `may_follow` before each link is followed: its error ends the walk.
pub fn walk_following(
    path: &Path,
    mut may_follow: impl FnMut(&LinkFound) -> io::Result<()>,
) -> io::Result<Lookup> {
    if !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path",
        ));
    }
    let slash = open_path(None, Path::new("/"))?;
    let slash_meta = slash.metadata()?;
    // The folders the walk is in, `/` first, each with its device: `..` goes back one.
    let mut trail = vec![(slash, PathBuf::from("/"), slash_meta.dev())];
    let mut steps = vec![Step {
        path: "/".into(),
        meta: slash_meta,
        mount: None,
    }];
    let mut mounts = Mounts::default();
    let mut names: VecDeque<Name> = names_of(path).collect();
    let mut links = 0;
    while let Some(name) = next_name(&mut names, &mut trail) {
        let (folder, at, folders_dev) = trail.last().expect("/ stays on the trail");
        let shown = at.join(&name);
        let opened = match open_path(Some(folder), Path::new(&name)) {
            Ok(opened) => opened,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let rest = std::iter::once(Name::Plain(name)).chain(names);
                let rest: PathBuf = rest.map(|name| name.into_os_string()).collect();
                let (folder, at, _) = trail.pop().expect("/ stays on the trail");
                return Ok(Lookup {
                    steps,
                    missing: Some(rest),
                    end: End::of(folder, at)?,
                });
            }
            Err(e) => return Err(e),
        };
        let mount = mounts.crossed(&opened, *folders_dev, &shown)?;
        let meta = opened.metadata()?;
        steps.push(Step {
            path: shown.clone(),
            meta: meta.clone(),
            mount,
        });
        if meta.file_type().is_symlink() {
            may_follow(&LinkFound {
                holder: at,
                holder_meta: &folder.metadata()?,
                link: steps.last().expect("just pushed"),
            })?;
            links += 1;
            if links > MAX_LINKS {
                return Err(Errno::ELOOP.into());
            }
            let target = PathBuf::from(read_link(&opened)?);
            let target: Vec<Name> = names_of(&target).collect();
            for name in target.into_iter().rev() {
                names.push_front(name);
            }
            continue;
        }
        if !meta.is_dir() {
            if !names.is_empty() {
                return Err(Errno::ENOTDIR.into());
            }
            return Ok(Lookup {
                steps,
                missing: None,
                end: End::of(opened, shown)?,
            });
        }
        let dev = meta.dev();
        trail.push((opened, shown, dev));
    }
    let (folder, at, _) = trail.pop().expect("/ stays on the trail");
    Ok(Lookup {
        steps,
        missing: None,
        end: End::of(folder, at)?,
    })
}

/// Where a walk stopped: at a mount whose files a user decides, whatever they report
/// ([`user_mounts::set_by_a_user`] says why), inside the walk's `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("{} {why}", path.display())]
pub struct UsersMount {
    /// The name the walk crossed into the mount at.
    pub path: PathBuf,
    pub why: String,
}

/// The namespace's mount table, read once a walk crosses into a mount, then kept for the walk.
#[derive(Default)]
pub(crate) struct Mounts(Option<Vec<MountEntry>>);

impl Mounts {
    /// The mount `opened` (at `path`) is on when the walk crossed into it there (its device is
    /// not `folders_dev`, the folder's it was found in), judged before anything is asked of its
    /// filesystem: a mount whose files a user decides ([`user_mounts::set_by_a_user`]) ends
    /// the walk with [`UsersMount`], never asked anything (an `fstat` of a FUSE mount's root asks
    /// its server, and one that never answers would hang the command before its refusal:
    /// review roots31 L2).
    fn crossed(
        &mut self,
        opened: &File,
        folders_dev: u64,
        path: &Path,
    ) -> io::Result<Option<MountEntry>> {
        let (dev, id) = crate::raw::device_and_listed_mount_id_unasked(opened.as_raw_fd())?;
        if dev == folders_dev {
            return Ok(None);
        }
        let mount = self.by_id(id)?;
        match user_mounts::set_by_a_user(&mount) {
            Some(why) => Err(io::Error::other(UsersMount {
                path: path.to_path_buf(),
                why,
            })),
            None => Ok(Some(mount)),
        }
    }

    /// The entry of the mount whose id mountinfo lists as `id`. The table is read once, and
    /// again if `id` is not in it: a mount made since (an automount, another command's) is no
    /// reason to refuse.
    pub(crate) fn by_id(&mut self, id: u64) -> io::Result<MountEntry> {
        let listed = |table: &[MountEntry]| table.iter().find(|mount| mount.id == id).cloned();
        if let Some(mount) = self.0.as_deref().and_then(listed) {
            return Ok(mount);
        }
        let table = mountinfo::mounts()?;
        let found = listed(&table);
        self.0 = Some(table);
        found.ok_or_else(|| {
            io::Error::other(format!(
                "the mount crossed here (id {id}) is not in /proc/self/mountinfo: it was \
                     unmounted while feather looked, or /proc is not mounted; run the command \
                     again once it stays mounted"
            ))
        })
    }
}

/// Makes the folder `name` (one name, mode `mode` less the umask) in the pinned `folder`:
/// never through a link in its place (mkdir does not follow one; it is `EEXIST`).
pub fn make_folder(folder: &File, name: &Path, mode: u32) -> io::Result<()> {
    nix::sys::stat::mkdirat(folder.as_fd(), name, Mode::from_bits_truncate(mode))?;
    Ok(())
}

/// What `name` in the pinned folder `end` is, a link not followed, and its mount when one is
/// mounted there; None when there is none.
pub fn look_at(end: &End, name: &Path) -> io::Result<Option<Step>> {
    let opened = match open_path(Some(&end.pinned), name) {
        Ok(opened) => opened,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let path = end.step.path.join(name);
    let mount = Mounts::default().crossed(&opened, end.step.meta.dev(), &path)?;
    let meta = opened.metadata()?;
    Ok(Some(Step { path, meta, mount }))
}

/// A name of a path, owned: a link's target joins the names still to walk.
pub(crate) enum Name {
    Slash,
    Up,
    Plain(OsString),
}

impl Name {
    fn into_os_string(self) -> OsString {
        match self {
            Name::Slash => "/".into(),
            Name::Up => "..".into(),
            Name::Plain(name) => name,
        }
    }
}

/// The next plain name of `names`, a `/` or `..` before it taken on the `trail` of folders the
/// walk is in (`/` first, which `..` never leaves, as the kernel's lookup does not).
pub(crate) fn next_name<T>(names: &mut VecDeque<Name>, trail: &mut Vec<T>) -> Option<OsString> {
    loop {
        match names.pop_front()? {
            Name::Slash => trail.truncate(1),
            Name::Up => {
                if trail.len() > 1 {
                    trail.pop();
                }
            }
            Name::Plain(name) => return Some(name),
        }
    }
}

/// The names of `path` (`.` dropped).
pub(crate) fn names_of(path: &Path) -> impl Iterator<Item = Name> + '_ {
    path.components().filter_map(|component| match component {
        Component::RootDir => Some(Name::Slash),
        Component::ParentDir => Some(Name::Up),
        Component::Normal(name) => Some(Name::Plain(name.to_os_string())),
        Component::CurDir | Component::Prefix(_) => None,
    })
}

/// `name` opened `O_PATH | O_NOFOLLOW` in `folder` (or from the process's `/`): as a folder
/// first, since only a lookup that wants a folder (`O_DIRECTORY`) triggers an automount not
/// mounted yet (without it the walk would pin the autofs stub, not the filesystem the root is
/// on); a link or a file is then opened as itself.
fn open_path(folder: Option<&File>, name: &Path) -> io::Result<File> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open = |flags| match folder {
        Some(folder) => nix::fcntl::openat(folder.as_fd(), name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    };
    let fd = match open(flags | OFlag::O_DIRECTORY) {
        Err(nix::errno::Errno::ENOTDIR) => open(flags)?,
        other => other?,
    };
    Ok(File::from(fd))
}

/// The target of the link pinned by `link`'s descriptor.
pub(crate) fn read_link(link: &File) -> io::Result<OsString> {
    Ok(nix::fcntl::readlinkat(link.as_fd(), "")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount made after the table was read (an automount, another command's) is found by
    /// reading it again, not taken for one that cannot be looked at (review fstab33 M2).
    #[test]
    fn a_mount_missing_from_the_table_read_before_is_found_in_a_fresh_one() {
        let slash = File::open("/").unwrap();
        let id = crate::mountinfo::mount_id_of_fd(slash.as_fd()).unwrap();
        let mut read_before = Mounts(Some(Vec::new()));
        assert_eq!(read_before.by_id(id).unwrap().id, id);
        assert!(Mounts::default().by_id(u64::MAX).is_err());
    }
}

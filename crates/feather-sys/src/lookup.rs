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
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// As many links as the kernel follows in one lookup (`MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// One name the lookup went through: where (the path as walked so far) and what it is.
#[derive(Debug)]
pub struct Step {
    pub path: PathBuf,
    pub meta: Metadata,
}

/// Every folder and link a lookup went through, `/` first, and the path's missing part if it
/// stopped short (a folder not made yet): `<last step>/<missing>`.
#[derive(Debug)]
pub struct Lookup {
    pub steps: Vec<Step>,
    pub missing: Option<PathBuf>,
}

/// Walks the absolute `path` from `/`, one name at a time ([module doc](self)). `..` goes
/// back to the folder the walk came from (already looked at). A name missing ends the walk
/// (`missing`); anything else that is not a folder before the last name is `ENOTDIR`.
pub fn walk(path: &Path) -> io::Result<Lookup> {
    if !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path",
        ));
    }
    let slash = open_path(None, Path::new("/"))?;
    let mut steps = vec![Step {
        path: "/".into(),
        meta: slash.metadata()?,
    }];
    // The folders the walk is in, `/` first: `..` goes back one.
    let mut trail = vec![(slash, PathBuf::from("/"))];
    let mut names: VecDeque<Name> = names_of(path).collect();
    let mut links = 0;
    while let Some(name) = names.pop_front() {
        let name = match name {
            Name::Slash => {
                trail.truncate(1);
                continue;
            }
            Name::Up => {
                if trail.len() > 1 {
                    trail.pop();
                }
                continue;
            }
            Name::Plain(name) => name,
        };
        let (folder, at) = trail.last().expect("/ stays on the trail");
        let shown = at.join(&name);
        let opened = match open_path(Some(folder), Path::new(&name)) {
            Ok(opened) => opened,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let rest = std::iter::once(Name::Plain(name)).chain(names);
                let rest: PathBuf = rest.map(|name| name.into_os_string()).collect();
                return Ok(Lookup {
                    steps,
                    missing: Some(rest),
                });
            }
            Err(e) => return Err(e),
        };
        let meta = opened.metadata()?;
        steps.push(Step {
            path: shown.clone(),
            meta: meta.clone(),
        });
        if meta.file_type().is_symlink() {
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
        if !meta.is_dir() && !names.is_empty() {
            return Err(Errno::ENOTDIR.into());
        }
        trail.push((opened, shown));
    }
    Ok(Lookup {
        steps,
        missing: None,
    })
}

/// A name of a path, owned: a link's target joins the names still to walk.
enum Name {
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

/// The names of `path` (`.` dropped).
fn names_of(path: &Path) -> impl Iterator<Item = Name> + '_ {
    path.components().filter_map(|component| match component {
        Component::RootDir => Some(Name::Slash),
        Component::ParentDir => Some(Name::Up),
        Component::Normal(name) => Some(Name::Plain(name.to_os_string())),
        Component::CurDir | Component::Prefix(_) => None,
    })
}

/// `name` opened `O_PATH | O_NOFOLLOW` in `folder` (or from the process's `/`).
fn open_path(folder: Option<&File>, name: &Path) -> io::Result<File> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match folder {
        Some(folder) => nix::fcntl::openat(folder.as_fd(), name, flags, Mode::empty())?,
        None => nix::fcntl::open(name, flags, Mode::empty())?,
    };
    Ok(File::from(fd))
}

/// The target of the link pinned by `link`'s descriptor.
fn read_link(link: &File) -> io::Result<OsString> {
    Ok(nix::fcntl::readlinkat(link.as_fd(), "")?)
}

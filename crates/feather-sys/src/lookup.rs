//! What the kernel goes through to find a path: each folder and symbolic link on the way, as
//! its descriptor says (owner, mode), for a caller that must know who could change where the
//! path leads (a state root, StrictModes as sshd checks a user's files). Each name is opened
//! `O_PATH | O_NOFOLLOW` relative to the folder before it and read with fstat on its own
//! descriptor; a link is read on its descriptor and its target walked the same way, so what
//! is looked at is what the walk went through, never a path looked up again. A mount the
//! lookup crosses into is judged before anything is asked of its filesystem
//! ([`opened_noting_mount`]).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
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
    /// The mount this name is on, when the walk crossed into it here (the kernel's lookup went
    /// from the folder's mount into another: a filesystem mounted there, or a bind): what a
    /// filesystem reports of its owners is only as good as who mounted it
    /// ([`crate::user_mounts`]).
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
    let slash = File::from(nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    let slash_meta = slash.metadata()?;
    // The folders the walk is in, `/` first: `..` goes back one.
    let mut trail = vec![(slash, PathBuf::from("/"))];
    let mut steps = vec![Step {
        path: "/".into(),
        meta: slash_meta,
        mount: None,
    }];
    let mut mounts = Mounts::default();
    let mut names: VecDeque<Name> = names_of(path).collect();
    let mut links = 0;
    while let Some(name) = next_name(&mut names, &mut trail) {
        let (folder, at) = trail.last().expect("/ stays on the trail");
        let shown = at.join(&name);
        let (opened, crossed) = match open_path(folder, Path::new(&name)) {
            Ok(opened) => opened,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let rest = std::iter::once(Name::Plain(name)).chain(names);
                let rest: PathBuf = rest.map(|name| name.into_os_string()).collect();
                let (folder, at) = trail.pop().expect("/ stays on the trail");
                return Ok(Lookup {
                    steps,
                    missing: Some(rest),
                    end: End::of(folder, at)?,
                });
            }
            Err(e) => return Err(e),
        };
        let mount = mounts.judged(crossed, &shown)?;
        let meta = asked(&opened, &shown)?;
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
        trail.push((opened, shown));
    }
    let (folder, at) = trail.pop().expect("/ stays on the trail");
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
    /// The mount of id `crossed` the walk crossed into at `path` ([`opened_noting_mount`];
    /// None where it crossed none), judged before anything is asked of its filesystem: a mount
    /// whose files a user decides ([`user_mounts::set_by_a_user`]) ends the walk with
    /// [`UsersMount`], never asked anything (an `fstat` of a FUSE mount's root asks its server,
    /// and one that never answers would hang the command before its refusal: review roots31
    /// L2; a `statx` even with `AT_STATX_DONT_SYNC` asks 9p without a cache, gfs2 and ocfs2).
    fn judged(&mut self, crossed: Option<u64>, path: &Path) -> io::Result<Option<MountEntry>> {
        let Some(id) = crossed else {
            return Ok(None);
        };
        let mount = self.by_id(id)?;
        #[cfg(test)]
        asks::note(asks::Event::Judged(path.to_path_buf()));
        match user_mounts::set_by_a_user(&mount) {
            Some(why) => Err(io::Error::other(UsersMount {
                path: path.to_path_buf(),
                why,
            })),
            None => Ok(Some(mount)),
        }
    }

    /// A walk's mounts as if `table` had been read, for tests of what it does with a mount
    /// this host cannot make.
    #[cfg(test)]
    pub(crate) fn read_as(table: Vec<MountEntry>) -> Self {
        Mounts(Some(table))
    }

    /// The mount table as last read (empty before any read).
    pub(crate) fn table(&self) -> &[MountEntry] {
        self.0.as_deref().unwrap_or_default()
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
    let (opened, crossed) = match open_path(&end.pinned, name) {
        Ok(opened) => opened,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let path = end.step.path.join(name);
    let mount = Mounts::default().judged(crossed, &path)?;
    let meta = asked(&opened, &path)?;
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

/// `name` opened `O_PATH | O_NOFOLLOW` in `folder`, and the mount crossed to reach it
/// ([`opened_noting_mount`]): as a folder first, since only a lookup that wants a folder
/// (`O_DIRECTORY`) triggers an automount not mounted yet (without it the walk would pin the
/// autofs stub, not the filesystem the root is on); a link or a file is then opened as itself.
fn open_path(folder: &File, name: &Path) -> io::Result<(File, Option<u64>)> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW;
    match opened_noting_mount(folder, name, flags | OFlag::O_DIRECTORY) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            opened_noting_mount(folder, name, flags)
        }
        other => other,
    }
}

/// `name` (one name) opened in `folder` with `flags` (`O_PATH` among them), and the id of the
/// mount the kernel's lookup crossed into to reach it (None: it is on `folder`'s mount), asking
/// that mount's filesystem nothing, so that a caller can judge the mount first: the lookup is
/// first kept from crossing a mount (`RESOLVE_NO_XDEV`: `EXDEV` at a mount point, before
/// anything is asked of a filesystem mounted there), and only where it would cross is the name
/// opened again and its mount's id read from `/proc/self/fdinfo`
/// ([`mountinfo::mount_id_of_fd`]). Not before an automount daemon: the kernel crosses
/// managed mounts before it checks `RESOLVE_NO_XDEV`, so an automount point is mounted (where
/// `flags` want a folder) or its daemon waited on first; fstab's walk refuses the points its
/// table lists before calling this. The second `O_PATH` open asks the mounted root little (no
/// `LOOKUP_OPEN`, no `->open`), but its `d_weak_revalidate` runs: NFS retrying on `ESTALE`, 9p
/// with a cache and an overlay may ask their server; FUSE is not asked. A `statx` of it would
/// ask, even with `AT_STATX_DONT_SYNC`, on 9p without a cache, gfs2 and ocfs2. A mount made or
/// gone between the two opens is told by the second's id.
pub(crate) fn opened_noting_mount(
    folder: &File,
    name: &Path,
    flags: OFlag,
) -> io::Result<(File, Option<u64>)> {
    let flags = flags | OFlag::O_CLOEXEC;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_NO_XDEV);
    match nix::fcntl::openat2(folder.as_fd(), name, how) {
        Ok(fd) => Ok((File::from(fd), None)),
        Err(Errno::EXDEV) => {
            let opened = File::from(nix::fcntl::openat(
                folder.as_fd(),
                name,
                flags,
                Mode::empty(),
            )?);
            let id = mountinfo::mount_id_of_fd(opened.as_fd())?;
            Ok((opened, Some(id)))
        }
        Err(e @ (Errno::ENOSYS | Errno::EPERM)) => Err(openat2_refused(e)),
        Err(e) => Err(e.into()),
    }
}

/// What a walk says where the kernel refuses `openat2` itself (`ENOSYS`: a kernel before 5.6
/// or gVisor; `EPERM`: a seccomp profile or systemd `SystemCallFilter=` older than it): a
/// lookup by name asks for no permission `EPERM` would mean, so the call is named, not a path.
fn openat2_refused(e: Errno) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "openat2 is refused here ({e}): feather walks every path with it (Linux 5.6 or \
             later); allow openat2 in the seccomp profile or system call filter feather runs \
             under"
        ),
    )
}

/// The `fstat` of `opened` (at `path`), on a mount judged fit to ask: what a walk asks of a
/// filesystem.
fn asked(opened: &File, path: &Path) -> io::Result<Metadata> {
    #[cfg(test)]
    asks::note(asks::Event::Asked(path.to_path_buf()));
    #[cfg(not(test))]
    let _ = path; // Named for the tests' record of what was asked.
    opened.metadata()
}

/// The target of the link pinned by `link`'s descriptor.
pub(crate) fn read_link(link: &File) -> io::Result<OsString> {
    Ok(nix::fcntl::readlinkat(link.as_fd(), "")?)
}

/// What a walk did, in order, for tests that it asks no mount anything before judging it.
#[cfg(test)]
pub(crate) mod asks {
    use std::cell::RefCell;
    use std::path::PathBuf;

    #[derive(Clone, Debug, PartialEq)]
    pub(crate) enum Event {
        /// The mount crossed into at this name was judged.
        Judged(PathBuf),
        /// This name's filesystem was asked what it is (`fstat`, `statx`).
        Asked(PathBuf),
    }

    thread_local! {
        static EVENTS: RefCell<Vec<Event>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn note(event: Event) {
        EVENTS.with(|events| events.borrow_mut().push(event));
    }

    /// The events noted on this thread since the last call.
    pub(crate) fn taken() -> Vec<Event> {
        EVENTS.with(|events| std::mem::take(&mut *events.borrow_mut()))
    }

    /// Whether every name whose mount was judged was asked nothing before it.
    pub(crate) fn judged_before_asked(events: &[Event]) -> bool {
        events.iter().enumerate().all(|(at, event)| match event {
            Event::Judged(path) => !events[..at].contains(&Event::Asked(path.clone())),
            Event::Asked(_) => true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the kernel refuses `openat2` (an old seccomp profile's `EPERM`, gVisor's
    /// `ENOSYS`), a walk says so, naming the call, not a path it could not open (review walk34
    /// L3). The filter is the test thread's own (installed without `TSYNC`), so nothing else
    /// is filtered. Before, the walk said "Operation not permitted".
    #[test]
    fn a_walk_where_openat2_is_refused_names_it() {
        let said = std::thread::spawn(|| {
            let rules = [(libc::SYS_openat2, Vec::new())].into_iter().collect();
            let arch = std::env::consts::ARCH.try_into().unwrap();
            let refuse = seccompiler::SeccompAction::Errno(libc::EPERM as u32);
            let filter = seccompiler::SeccompFilter::new(
                rules,
                seccompiler::SeccompAction::Allow,
                refuse,
                arch,
            )
            .unwrap();
            let program = seccompiler::BpfProgram::try_from(filter).unwrap();
            crate::seccomp::install_filter(&crate::seccomp::from_seccompiler(program)).unwrap();
            walk(Path::new("/proc/self")).unwrap_err().to_string()
        })
        .join()
        .unwrap();
        assert!(said.contains("openat2 is refused here (EPERM"), "{said}");
    }

    /// A mount the walk crosses into (here `/proc`, a mount on every host feather runs on) is
    /// judged before its filesystem is asked anything: the mount's id comes from the lookup
    /// and procfs, not from a `statx` of its root, which 9p without a cache, gfs2 and ocfs2
    /// answer by asking their server even with `AT_STATX_DONT_SYNC`. Before, the walk took the
    /// crossing's device and mount id by such a `statx`, then judged.
    #[test]
    fn a_crossed_mount_is_judged_before_its_filesystem_is_asked_anything() {
        asks::taken();
        let lookup = walk(Path::new("/proc/self/fdinfo")).unwrap();
        let events = asks::taken();
        let proc = Path::new("/proc");
        assert!(
            events.contains(&asks::Event::Judged(proc.into())),
            "{events:?}"
        );
        assert!(asks::judged_before_asked(&events), "{events:?}");
        let crossed = lookup.steps.iter().find(|step| step.path == proc).unwrap();
        assert_eq!(crossed.mount.as_ref().unwrap().fs_type, "proc");
        // A name on its folder's mount crossed none.
        assert!(lookup.steps.last().unwrap().mount.is_none());
    }

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

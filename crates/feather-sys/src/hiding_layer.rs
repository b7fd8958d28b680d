//! A layer that hides folders of an overlay's lower layers in the overlay itself: for each
//! folder, an empty folder marked opaque (`trusted.overlay.opaque` = `y`) at the same path,
//! with plain folders above it, mounted as the topmost lower layer. overlayfs then shows the
//! folder empty by itself, to every process that reaches the overlay, whatever mount
//! namespace (or detached piece of one) it comes through; a mount on the folder hides it only
//! where that mount is connected.
//!
//! The layer is a tmpfs mounted nowhere: no path leads to it, it lives as long as a descriptor
//! or an overlay over it holds it, and nothing of it is on disk or in a mount table to clean up
//! after a crash.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode};

use crate::{Context, Result};

/// The xattr that makes an overlay's folder hide what the layers below hold at its path.
const OPAQUE: &str = "trusted.overlay.opaque";

/// A hiding layer for one or more overlays, made by [`HidingLayer::build`].
#[derive(Debug)]
pub struct HidingLayer {
    /// The detached tmpfs: folder `i` of it is the layer for the `i`-th lower given.
    pub fd: OwnedFd,
    /// Whether folder `i` was made (some folder to hide lies in the `i`-th lower).
    made: Vec<bool>,
}

impl HidingLayer {
    /// The layer that hides, for each `(lower, folders)` of `lowers`, each of `folders` (paths
    /// relative to `lower`) that is a folder of `lower` reached through folders of its own
    /// filesystem only (no symbolic link, no mount point, nothing else on the way: what lies
    /// behind a link is not at that path in the overlay either, and overlayfs does not cross a
    /// lower layer's mount points). A folder inside another one hidden adds nothing. Each
    /// folder made (the hidden one too) takes the mode, owner and times of the lower's folder
    /// at its path: the overlay shows a merged folder with the attributes of its topmost
    /// layer's, and copies those up when the VM writes in it. None when nothing is to be
    /// hidden in any lower.
    pub fn build(lowers: &[(&Path, Vec<PathBuf>)]) -> Result<Option<HidingLayer>> {
        if lowers.iter().all(|(_, folders)| folders.is_empty()) {
            return Ok(None);
        }
        let fd = crate::mount::detached_tmpfs(c"0755")?;
        let mut made = Vec::with_capacity(lowers.len());
        // The times of every folder made, set once nothing more is made in them (making a
        // folder changes its parent's times).
        let mut folders_made: Vec<(OwnedFd, FileStat)> = Vec::new();
        for (i, (lower, folders)) in lowers.iter().enumerate() {
            made.push(build_one(&fd, i, lower, folders, &mut folders_made)?);
        }
        for (dir, st) in folders_made.iter().rev() {
            set_times(dir, st).ctx("futimens", "a folder of the hiding layer")?;
        }
        Ok(made.contains(&true).then_some(HidingLayer { fd, made }))
    }

    /// The path of the layer for the `i`-th lower, as this process (or a fork of it, which has
    /// the descriptor under the same number) reaches it; None if nothing is hidden there.
    pub fn lower(&self, i: usize) -> Option<PathBuf> {
        self.made
            .get(i)
            .copied()
            .unwrap_or(false)
            .then(|| PathBuf::from(format!("/proc/self/fd/{}/{i}", self.fd.as_raw_fd())))
    }
}

fn build_one(
    layer: &OwnedFd,
    i: usize,
    lower: &Path,
    folders: &[PathBuf],
    made: &mut Vec<(OwnedFd, FileStat)>,
) -> Result<bool> {
    let mut folders: Vec<&PathBuf> = folders.iter().collect();
    // In the order of a walk of the tree (`Path` compares by components): the folders two
    // hidden ones share are made once, and a folder of the walk is never come back to.
    folders.sort();
    folders.dedup();
    let lower_root = match open_dir(None, lower.as_os_str(), OFlag::O_PATH) {
        Ok(fd) => fd,
        // A lower that is gone (a filesystem the host unmounted) holds nothing to hide.
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(false),
        Err(errno) => return Err(errno).ctx("open", lower.display()),
    };
    let mut top: Option<OwnedFd> = None;
    // The folders of the walk down to the last one made: each one's name, its folder in the
    // lower, and where in `made` its folder in the layer is.
    let mut path: Vec<(&OsStr, OwnedFd, usize)> = Vec::new();
    // The last folder hidden: in the walk's order, every folder beneath it comes right after
    // it, before any other, so it is the only one a folder of the walk can be beneath (a
    // look through every folder hidden so far made the build quadratic in them).
    let mut hidden: Option<&Path> = None;
    // The last folder of the walk the lower does not hold as a folder of its own filesystem
    // (missing, a link, a mount point on the way, not a folder): nothing beneath it is either,
    // and is not looked for again (the entries of roots long gone: issue 15).
    let mut unreachable: Option<PathBuf> = None;
    'folders: for folder in folders {
        if hidden.is_some_and(|h| folder.starts_with(h))
            || unreachable.as_ref().is_some_and(|u| folder.starts_with(u))
        {
            continue;
        }
        let names: Vec<&OsStr> = folder
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            continue;
        }
        let shared = path
            .iter()
            .zip(&names)
            .take_while(|((name, _, _), other)| name == *other)
            .count();
        path.truncate(shared);
        // The lower's folders along the rest of the path first: nothing is made unless all are
        // folders of the lower's own filesystem (overlayfs shows a lower's mount points as the
        // folders beneath them: what is mounted there is not in the overlay).
        // The hidden folder itself may be a mount point: overlayfs shows the folder beneath the
        // mount there, which gets its opaque folder all the same (its attributes are those of
        // what is mounted there, as the host shows the path; nothing is opened beyond it).
        let mut found: Vec<(&OsStr, Option<OwnedFd>, FileStat)> = Vec::new();
        let rest = &names[shared..];
        for (n, name) in rest.iter().enumerate() {
            let at = found
                .last()
                .and_then(|(_, fd, _)| fd.as_ref())
                .or(path.last().map(|(_, fd, _)| fd))
                .unwrap_or(&lower_root);
            let next = match open_in_lower(at, name) {
                Ok(next) => next,
                Err(Errno::EXDEV) if n + 1 == rest.len() => {
                    let st = nix::sys::stat::fstatat(
                        at,
                        *name,
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .ctx("stat", lower.join(folder).display())?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                        continue 'folders;
                    }
                    found.push((name, None, st));
                    break;
                }
                // Nothing there, a link, a mount point on the way, not a folder: overlayfs does
                // not show the folder at that path either.
                Err(Errno::ENOENT | Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR) => {
                    unreachable = Some(names[..=shared + n].iter().collect());
                    continue 'folders;
                }
                Err(errno) => return Err(errno).ctx("open", lower.join(folder).display()),
            };
            let st = nix::sys::stat::fstat(&next).ctx("stat", lower.join(folder).display())?;
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                unreachable = Some(names[..=shared + n].iter().collect());
                continue 'folders;
            }
            found.push((name, Some(next), st));
        }
        if top.is_none() {
            let name = OsStr::new(&*i.to_string()).to_owned();
            mkdir(layer, &name, 0o755).ctx("mkdir", "the hiding layer")?;
            let opened =
                open_dir(Some(layer), &name, OFlag::O_RDONLY).ctx("open", "the hiding layer")?;
            top = Some(opened);
        }
        let last = found.len();
        if last == 0 {
            continue;
        }
        for (n, (name, lower_dir, st)) in found.into_iter().enumerate() {
            let parent = match path.last() {
                Some((_, _, index)) => &made[*index].0,
                None => top.as_ref().expect("made above"),
            };
            mkdir(parent, name, 0o700).ctx("mkdir", folder.display())?;
            let dir =
                open_dir(Some(parent), name, OFlag::O_RDONLY).ctx("open", folder.display())?;
            // Made by root, as the lower's folders mostly are: changed only where they differ.
            if (st.st_uid, st.st_gid) != (0, 0) {
                nix::unistd::fchown(
                    &dir,
                    Some(nix::unistd::Uid::from_raw(st.st_uid)),
                    Some(nix::unistd::Gid::from_raw(st.st_gid)),
                )
                .ctx("fchown", folder.display())?;
            }
            nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(st.st_mode & 0o7777))
                .ctx("fchmod", folder.display())?;
            // Its ACLs and other xattrs too (a default ACL, `user.*`): the overlay shows the
            // topmost layer's. Not those of what is mounted on a hidden folder (not opened).
            if let Some(lower_dir) = &lower_dir {
                copy_xattrs(lower_dir, &dir).ctx("copy the xattrs of", folder.display())?;
            }
            let dir = match n + 1 == last {
                true => set_opaque(dir).ctx("set trusted.overlay.opaque on", folder.display())?,
                false => dir,
            };
            made.push((dir, st));
            match lower_dir {
                Some(lower_dir) => path.push((name, lower_dir, made.len() - 1)),
                // A mount point, the last folder of this one: nothing is made beneath it.
                None => break,
            }
        }
        hidden = Some(folder.as_path());
    }
    Ok(top.is_some())
}

/// Copies the xattrs of the lower's folder `from` (an `O_PATH` descriptor) but overlayfs's own
/// (`trusted.overlay.*`) onto the layer's folder `to`; one the layer's tmpfs does not take
/// (EOPNOTSUPP) is left out.
fn copy_xattrs(from: &OwnedFd, to: &OwnedFd) -> nix::Result<()> {
    let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    let from = PathBuf::from(format!("/proc/self/fd/{}", from.as_raw_fd()));
    let to = PathBuf::from(format!("/proc/self/fd/{}", to.as_raw_fd()));
    for name in xattr::list_deref(&from).map_err(errno)? {
        if name.as_encoded_bytes().starts_with(b"trusted.overlay.") {
            continue;
        }
        let Some(value) = xattr::get_deref(&from, &name).map_err(errno)? else {
            continue;
        };
        match xattr::set_deref(&to, &name, &value).map_err(errno) {
            Ok(()) | Err(Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `name` opened as a folder in `at` (or the path `name` if None), not following a link.
fn open_dir(at: Option<&OwnedFd>, name: &OsStr, flags: OFlag) -> nix::Result<OwnedFd> {
    let flags = flags | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match at {
        Some(at) => nix::fcntl::openat(at, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    }
}

/// `name`, a folder of `at` on its filesystem, opened `O_PATH`: not a link, not a mount point
/// (`RESOLVE_NO_XDEV`).
fn open_in_lower(at: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    use nix::fcntl::{OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_NO_XDEV
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_BENEATH,
        );
    nix::fcntl::openat2(at, name, how)
}

/// Makes folder `name` in `at`; false if it was there already.
fn mkdir(at: &OwnedFd, name: &OsStr, mode: u32) -> nix::Result<bool> {
    match nix::sys::stat::mkdirat(at, name, Mode::from_bits_truncate(mode)) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(errno) => Err(errno),
    }
}

/// Marks the folder `dir` opaque; gives its descriptor back.
fn set_opaque(dir: OwnedFd) -> nix::Result<OwnedFd> {
    let file = std::fs::File::from(dir);
    xattr::FileExt::set_xattr(&file, OPAQUE, b"y")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok(OwnedFd::from(file))
}

fn set_times(dir: &impl AsFd, st: &FileStat) -> nix::Result<()> {
    use nix::sys::time::TimeSpec;
    let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    nix::sys::stat::futimens(dir, &atime, &mtime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// What the layer for `i` holds, as (path, mode, uid, mtime, opaque) of every folder.
    fn listing(layer: &HidingLayer, i: usize) -> Vec<(String, u32, u32, i64, bool)> {
        let top = layer.lower(i).unwrap();
        let mut found = Vec::new();
        let mut stack = vec![top.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let opaque = xattr::get(&path, OPAQUE).unwrap() == Some(b"y".to_vec());
                found.push((
                    path.strip_prefix(&top).unwrap().display().to_string(),
                    meta.permissions().mode() & 0o7777,
                    meta.uid(),
                    meta.mtime(),
                    opaque,
                ));
                stack.push(path);
            }
        }
        found.sort();
        found
    }

    /// Any failure but a folder not there to hide fails the build, naming the folder: here the
    /// walk runs out of descriptors (EMFILE) on the way down. Before, it passed over the folder
    /// as if missing, and the layer hid nothing there.
    #[test]
    fn a_walk_that_fails_fails_the_build_naming_the_folder() {
        let lower_scratch = feather_testkit::ScratchDir::new("hiding-layer-emfile");
        let lower = lower_scratch.0.clone();
        let deep = "a/b/c/d/e/f/g/h/root";
        std::fs::create_dir_all(lower.join(deep)).unwrap();
        // In a child: the limit on descriptors is the whole process's.
        // SAFETY: the child runs this test's code only, then `_exit`s; nextest runs each test
        // in a process of its own, with no other thread holding a lock the child would need.
        let fork = unsafe { nix::unistd::fork() }.unwrap();
        let nix::unistd::ForkResult::Parent { child } = fork else {
            use nix::sys::resource::{getrlimit, setrlimit, Resource};
            let highest = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(2);
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
            setrlimit(Resource::RLIMIT_NOFILE, highest + 1, hard).unwrap();
            // Every number below the limit taken, then five more allowed: the layer's
            // descriptors and the first folders' of the walk.
            let mut filled = Vec::new();
            while let Ok(file) = std::fs::File::open("/dev/null") {
                filled.push(file);
            }
            setrlimit(Resource::RLIMIT_NOFILE, highest + 6, hard).unwrap();
            let code = match HidingLayer::build(&[(lower.as_path(), vec![deep.into()])]) {
                Err(e) if e.errno == Errno::EMFILE && e.target.contains(deep) => 0,
                Err(_) => 2,
                Ok(_) => 1,
            };
            // SAFETY: ends the child without running the test harness's exit handlers.
            unsafe { libc::_exit(code) };
        };
        let status = nix::sys::wait::waitpid(child, None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(child, 0),
            "1: built as if missing, 2: another error"
        );
    }

    /// A folder beneath a missing one, a link or a file is passed over with it (not looked
    /// for), and only that: a folder beside it, whose name begins the same, is still hidden.
    #[test]
    fn the_folders_beneath_one_missing_are_passed_over_and_their_neighbours_hidden() {
        let lower_scratch = feather_testkit::ScratchDir::new("hiding-layer-beneath-missing");
        let lower = lower_scratch.0.clone();
        std::fs::create_dir_all(lower.join("srv/gone2/root")).unwrap();
        std::fs::create_dir_all(lower.join("srv/real")).unwrap();
        std::os::unix::fs::symlink("real", lower.join("srv/link")).unwrap();
        std::fs::write(lower.join("srv/file"), "").unwrap();
        let folders: Vec<PathBuf> = [
            "srv/gone/root",
            "srv/gone/root/run",
            "srv/gone2/root",
            "srv/link/root",
            "srv/link/root/run",
            "srv/file/root",
            "srv/real",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let layer = HidingLayer::build(&[(lower.as_path(), folders)])
            .unwrap()
            .unwrap();
        let made: Vec<(String, bool)> = listing(&layer, 0)
            .into_iter()
            .map(|(name, _, _, _, opaque)| (name, opaque))
            .collect();
        let expected: Vec<(String, bool)> = [
            ("srv", false),
            ("srv/gone2", false),
            ("srv/gone2/root", true),
            ("srv/real", true),
        ]
        .iter()
        .map(|(name, opaque)| (name.to_string(), *opaque))
        .collect();
        assert_eq!(made, expected);
    }

    /// The folders above a hidden one copy the lower's attributes; the hidden one is opaque and
    /// empty; a folder behind a link, a missing one, and one inside another hidden add nothing.
    #[test]
    fn hidden_folders_are_opaque_and_their_parents_the_lowers() {
        let lower_scratch = feather_testkit::ScratchDir::new("hiding-layer-lower");
        let lower = lower_scratch.0.clone();
        std::fs::create_dir_all(lower.join("var/lib/feather/vms")).unwrap();
        std::fs::create_dir_all(lower.join("var/lib/other")).unwrap();
        std::fs::create_dir_all(lower.join("srv/real")).unwrap();
        std::os::unix::fs::symlink("real", lower.join("srv/link")).unwrap();
        std::fs::set_permissions(lower.join("var/lib"), PermissionsExt::from_mode(0o751)).unwrap();
        std::os::unix::fs::chown(lower.join("var/lib"), Some(7), Some(8)).unwrap();
        let old = nix::sys::time::TimeSpec::new(1_000_000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &lower.join("var"),
            &old,
            &old,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        let folders: Vec<PathBuf> = [
            "var/lib/feather",
            "var/lib/feather/vms",
            "var/lib/other",
            "srv/link/inside",
            "srv/missing",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let other_scratch = feather_testkit::ScratchDir::new("hiding-layer-other");
        let other = other_scratch.0.clone();
        let layer = HidingLayer::build(&[(lower.as_path(), folders), (other.as_path(), vec![])])
            .unwrap()
            .unwrap();
        assert_eq!(layer.lower(1), None, "nothing hidden in the second lower");
        assert_eq!(
            listing(&layer, 0),
            vec![
                ("var".into(), 0o755, 0, 1_000_000, false),
                (
                    "var/lib".into(),
                    0o751,
                    7,
                    std::fs::metadata(lower.join("var/lib")).unwrap().mtime(),
                    false
                ),
                (
                    "var/lib/feather".into(),
                    0o755,
                    0,
                    std::fs::metadata(lower.join("var/lib/feather"))
                        .unwrap()
                        .mtime(),
                    true
                ),
                (
                    "var/lib/other".into(),
                    0o755,
                    0,
                    std::fs::metadata(lower.join("var/lib/other"))
                        .unwrap()
                        .mtime(),
                    true
                ),
            ]
        );
        let missing = vec!["srv/missing".into()];
        assert!(HidingLayer::build(&[(lower.as_path(), missing)])
            .unwrap()
            .is_none());
        assert!(HidingLayer::build(&[(lower.as_path(), vec![])])
            .unwrap()
            .is_none());
    }

    /// What a tree holds, every path under `dir` (sorted, relative).
    fn tree(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(at) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&at) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
                if path.is_dir() && !path.is_symlink() {
                    stack.push(path);
                }
            }
        }
        found.sort();
        found
    }

    /// In an overlay with the hiding layer above its lower, where nothing is mounted on the
    /// hidden folder: it shows empty; removed and made again, renamed, written in, the folder
    /// above it renamed, and the overlay mounted again over the same upper layer, it never
    /// shows what the lower holds there. Without the layer, the same overlay shows the secret.
    #[test]
    fn no_removal_making_or_renaming_in_the_overlay_shows_a_hidden_folder() {
        let scratch = feather_testkit::ScratchDir::new("hiding-layer-overlay");
        let dir = scratch.0.clone();
        for sub in [
            "lower/srv/root/vms",
            "lower/mnt",
            "lower/mnt2",
            "upper",
            "work",
            "merged",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("lower/srv/root/vms/secret"), "secret\n").unwrap();
        std::fs::write(dir.join("lower/srv/kept"), "kept\n").unwrap();
        // Beneath what will be mounted on a hidden folder, the lower's own files.
        std::fs::write(dir.join("lower/mnt2/under"), "under\n").unwrap();
        let (lower, upper, work, merged) = (
            dir.join("lower"),
            dir.join("upper"),
            dir.join("work"),
            dir.join("merged"),
        );
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                // A mount namespace of this thread's own: the overlays go with it.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
                let private = nix::mount::MsFlags::MS_PRIVATE | nix::mount::MsFlags::MS_REC;
                nix::mount::mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
                let sync = crate::mount::LayerSync::Durable;
                crate::mount::overlay(&[&lower], &upper, &work, &merged, sync).unwrap();
                let unhidden = tree(&merged);
                nix::mount::umount2(&merged, nix::mount::MntFlags::empty()).unwrap();
                // A filesystem mounted in the lower: the overlay shows the folder beneath it,
                // and the layer adds nothing for a folder in it.
                let tmpfs = nix::mount::MsFlags::empty();
                nix::mount::mount(
                    Some("tmpfs"),
                    &lower.join("mnt"),
                    Some("tmpfs"),
                    tmpfs,
                    None::<&str>,
                )
                .unwrap();
                std::fs::create_dir(lower.join("mnt/inner")).unwrap();
                // A hidden folder that is itself a mount point: the overlay shows the folder
                // beneath the mount, which the layer hides all the same.
                nix::mount::mount(
                    Some("tmpfs"),
                    &lower.join("mnt2"),
                    Some("tmpfs"),
                    tmpfs,
                    None::<&str>,
                )
                .unwrap();
                let folders = vec!["srv/root".into(), "mnt/inner".into(), "mnt2".into()];
                let layer = HidingLayer::build(&[(lower.as_path(), folders)])
                    .unwrap()
                    .unwrap();
                let mask = layer.lower(0).unwrap();
                let in_layer = tree(&mask);
                let mount = || {
                    crate::mount::overlay(&[&mask, &lower], &upper, &work, &merged, sync).unwrap()
                };
                mount();
                let mut seen = vec![tree(&merged)];
                let root = merged.join("srv/root");
                std::fs::remove_dir(&root).unwrap();
                seen.push(tree(&merged));
                std::fs::create_dir(&root).unwrap();
                seen.push(tree(&merged));
                std::fs::write(root.join("own"), "the VM's own\n").unwrap();
                std::fs::remove_file(root.join("own")).unwrap();
                let renamed = std::fs::rename(&root, merged.join("srv/moved"));
                let renamed_above = std::fs::rename(merged.join("srv"), merged.join("srv2"));
                seen.push(tree(&merged));
                nix::mount::umount2(&merged, nix::mount::MntFlags::empty()).unwrap();
                // The VM's next start, over the same upper layer.
                mount();
                seen.push(tree(&merged));
                nix::mount::umount2(&merged, nix::mount::MntFlags::empty()).unwrap();
                (
                    unhidden,
                    in_layer,
                    seen,
                    renamed.map_err(|e| e.raw_os_error()),
                    renamed_above.map_err(|e| e.raw_os_error()),
                )
            })
            .join()
            .unwrap()
        });
        let (unhidden, in_layer, seen, renamed, renamed_above) = outcome;
        assert_eq!(in_layer, ["mnt2", "srv", "srv/root"]);
        assert!(unhidden.contains(&"mnt2/under".to_owned()), "{unhidden:?}");
        assert!(
            unhidden.contains(&"srv/root/vms/secret".to_owned()),
            "{unhidden:?}"
        );
        for (step, tree) in seen.iter().enumerate() {
            assert!(
                !tree
                    .iter()
                    .any(|p| p.contains("vms") || p.contains("secret") || p.contains("under")),
                "step {step}: {tree:?}"
            );
        }
        assert_eq!(seen[0], ["mnt", "mnt2", "srv", "srv/kept", "srv/root"]);
        assert_eq!(seen[1], ["mnt", "mnt2", "srv", "srv/kept"]);
        assert_eq!(seen[2], ["mnt", "mnt2", "srv", "srv/kept", "srv/root"]);
        // A folder made by the overlay (opaque in the upper layer) is renamed; one of a lower
        // layer only copied, by the caller (EXDEV).
        assert_eq!(renamed, Ok(()));
        assert_eq!(renamed_above, Err(Some(libc::EXDEV)));
        assert_eq!(seen[3], ["mnt", "mnt2", "srv", "srv/kept", "srv/moved"]);
        assert_eq!(seen[4], seen[3]);
    }
}

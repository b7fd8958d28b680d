//! What the tasks of a restored tree hold, checked against the mounts that cover the kernel's
//! paths, while CRIU leaves the tree stopped ([`crate::restored_mounts::check_tree`] calls it
//! once every mount namespace passed).
//!
//! A mask or a read-only bind covers a path for lookups made after it; a descriptor opened
//! beneath the place before (CRIU opens a task's descriptors, working folder, root and mapped
//! files before the restorer adds what the dump lacked, and images may name a mount that
//! another one hides) keeps the file and the mount it was opened on. Through it the task reads
//! what the mask hides (`/proc/keys`), or, through a folder or a reopen of
//! `/proc/self/fd/N`, writes a knob the bind makes read-only (`/proc/sys/kernel/core_pattern`
//! on the writable proc beneath: the host's, as the tree's root is the host's uid 0). So each
//! descriptor, working folder, root, mapped file and executable of every task is told by its
//! mount (its id: a descriptor's `fdinfo` `mnt_id`, which asks no filesystem; for a link with
//! no `fdinfo`, that of a descriptor opened `O_PATH` through it, which may ask a network
//! filesystem's server, so it is opened only where the mount is needed) and its path in that mount's
//! namespace (the link's text, the kernel's `d_path` from that namespace's root, as the host's
//! root lies outside it): one on a mount that lookups of that path no longer reach (hidden) at,
//! beneath or above a covered place, reaching there more than the cover gives (a mask:
//! anything; a read-only bind: a writable mount), fails the restore.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use feather_sys::mountinfo::MountEntry;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// One mount namespace of the tree: its table, and the places the check requires covered
/// there (each of the config's paths beneath every proc and sysfs mount, as the namespace's
/// root shows them).
pub(crate) struct Namespace {
    pub mounts: Vec<MountEntry>,
    /// Places a mask covers: nothing of what is beneath may be reached.
    pub masked: Vec<PathBuf>,
    /// Places a read-only bind covers with every mount beneath: nothing beneath may be
    /// reached on a writable mount.
    pub read_only: Vec<PathBuf>,
    /// Places a read-only bind covers alone (the config's non-recursive read-only paths, a
    /// read-only root): only a mount at the place itself is judged, as the check of the
    /// namespace judges only it (review restore30 M3: before, each was taken as recursive,
    /// and a file on a writable tmpfs beneath a read-only root was refused).
    pub read_only_alone: Vec<PathBuf>,
}

/// As many links (descriptors, working folders, roots, mapped files) as the check reads in
/// one tree: a bound on its work whatever the images hold (a task may hold a million
/// descriptors; each costs a `readlink`).
const MAX_LINKS: usize = 1 << 22;

/// As much of an `fdinfo` file as is read: `mnt_id` is its third line; what follows (an
/// epoll's or inotify's list) is not needed.
const FDINFO_BYTES: u64 = 4096;

/// Checks what every thread of the tree under `init` (held still in `hold`) holds against
/// the covered places of `namespaces` (the tree's every mount namespace, already checked);
/// the refusal names the process, what it holds, the mount and the place.
pub(crate) fn check(
    init: i32,
    hold: &crate::held::Hold,
    namespaces: &[Namespace],
) -> Result<(), String> {
    let proc = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open /proc: {e}"))?;
    let mut reader = Reader {
        proc,
        namespaces,
        read: 0,
    };
    crate::restored::walk_tree(
        init,
        hold,
        |thread| reader.thread(&thread),
        |unchecked| unchecked.to_string(),
    )
}

/// Reads the links of the tree's threads, counting them.
struct Reader<'a> {
    /// The host's proc, for the `fdinfo` of a descriptor of this process.
    proc: OwnedFd,
    namespaces: &'a [Namespace],
    read: usize,
}

/// Where a link's mount id is read: a descriptor's own `fdinfo`, or (a working folder, a
/// root, a mapped file, which have none) a descriptor this process opens through the link.
enum MountOf<'a> {
    /// A descriptor's, beneath its thread's folder.
    FdInfo(&'a OwnedFd),
    /// A working folder's, root's, mapped file's or executable's: of a descriptor this
    /// process opens `O_PATH` through the link.
    Opened,
}

/// A folder of links (a thread's `fd`, a process's `map_files`) and the names in it.
struct Entries {
    folder: OwnedFd,
    names: Vec<String>,
}

impl Reader<'_> {
    /// One thread: its working folder, root and descriptors; a thread group's leader also its
    /// mapped files and executable. Its `/proc` folder opened once, each read beneath it.
    fn thread(&mut self, thread: &crate::restored::Thread) -> Result<(), String> {
        let held = |what: &str, e: nix::Error| {
            format!(
                "cannot read {what} of restored process {} (thread {}) to check what it holds: \
                 {e}",
                thread.pid,
                crate::restored::thread_id(thread.path)
            )
        };
        let dir = match open_folder(thread.path) {
            Ok(dir) => dir,
            Err(_) if crate::held::has_ended(thread.path) => return Ok(()),
            Err(e) => return Err(held("its /proc folder", e)),
        };
        let read = |reader: &mut Self, folder: &OwnedFd, name: &str, mount_of: MountOf| match reader
            .link(folder, name, mount_of)
        {
            Err(_) if reader.read > MAX_LINKS => Err(format!(
                "the restored tree holds more than {MAX_LINKS} descriptors, working folders, \
                 roots, mapped files and executables, the most the check reads: refused"
            )),
            Err(_) if crate::held::has_ended(thread.path) => Ok(()),
            Err(e) => Err(held(name, e)),
            Ok(Some(why)) => Err(format!(
                "restored process {} (thread {}) holds {why}",
                thread.pid,
                crate::restored::thread_id(thread.path)
            )),
            Ok(None) => Ok(()),
        };
        for name in ["cwd", "root"] {
            read(self, &dir, name, MountOf::Opened)?;
        }
        let fds = open_entries(&dir, "fd").map_err(|e| held("fd", e))?;
        for fd in &fds.names {
            read(self, &fds.folder, fd, MountOf::FdInfo(&dir))?;
        }
        if crate::restored::thread_id(thread.path) != thread.pid.to_string() {
            return Ok(());
        }
        let process = PathBuf::from(format!("/proc/{}", thread.pid));
        let process = open_folder(&process).map_err(|e| held("its /proc folder", e))?;
        read(self, &process, "exe", MountOf::Opened)?;
        let maps = open_entries(&process, "map_files").map_err(|e| held("map_files", e))?;
        for map in &maps.names {
            read(self, &maps.folder, map, MountOf::Opened)?;
        }
        Ok(())
    }

    /// The link `name` in `folder` (a thread's, its `fd` or `map_files` folder): why what it
    /// leads to reaches past a cover, if it does. Its mount is read only where its path could
    /// be hidden at a covered place ([`may_be_hidden`]): most never are, and an open through
    /// a link to a network filesystem may ask its server.
    fn link(
        &mut self,
        folder: &OwnedFd,
        name: &str,
        mount_of: MountOf,
    ) -> nix::Result<Option<String>> {
        self.read += 1;
        if self.read > MAX_LINKS {
            return Err(nix::Error::E2BIG);
        }
        let text = nix::fcntl::readlinkat(folder, name)?;
        let path = Path::new(&text);
        let path = match text.to_str().and_then(|t| t.strip_suffix(" (deleted)")) {
            Some(undeleted) => Path::new(undeleted),
            None => path,
        };
        // Pipes, sockets and anonymous files (`pipe:[…]`) lie on no mount of the tree.
        if !path.is_absolute() || !self.namespaces.iter().any(|ns| mount_is_needed(ns, path)) {
            return Ok(None);
        }
        let mount = match mount_of {
            MountOf::FdInfo(thread) => mount_in_fdinfo(thread, name)?,
            MountOf::Opened => {
                let opened = nix::fcntl::openat(
                    folder,
                    name,
                    OFlag::O_PATH | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                crate::restored_paths::mount_id(&self.proc, &opened).map_err(|_| nix::Error::EIO)?
            }
        };
        let what = match name.parse::<u32>() {
            Ok(fd) => format!("descriptor {fd}"),
            Err(_) => format!("its {name}"),
        };
        Ok(unknown_mount(self.namespaces, mount, path)
            .or_else(|| {
                self.namespaces
                    .iter()
                    .find_map(|ns| reaches_past_a_cover(ns, mount, path))
            })
            .map(|why| format!("{what} on {}, {why}", path.display())))
    }
}

fn folder_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

fn open_folder(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(path, folder_flags(), Mode::empty())
}

/// The folder `name` beneath `parent`, and the names in it but `.` and `..`.
fn open_entries(parent: &OwnedFd, name: &str) -> nix::Result<Entries> {
    let folder = nix::fcntl::openat(parent, name, folder_flags(), Mode::empty())?;
    let mut dir = nix::dir::Dir::from_fd(folder.try_clone().map_err(io_errno)?)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    Ok(Entries { folder, names })
}

fn io_errno(e: std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The `mnt_id` of descriptor `fd` of the thread whose folder `thread` is.
fn mount_in_fdinfo(thread: &OwnedFd, fd: &str) -> nix::Result<u64> {
    let file = nix::fcntl::openat(
        thread,
        format!("fdinfo/{fd}").as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut text = Vec::new();
    std::fs::File::from(file)
        .take(FDINFO_BYTES)
        .read_to_end(&mut text)
        .map_err(io_errno)?;
    crate::restored_paths::mnt_id_in(&text).ok_or(nix::Error::EINVAL)
}

/// Whether something at `path` in the namespace `ns` could lie on a mount lookups of `path`
/// do not reach, at, beneath or above a covered place: a mount of the table whose point
/// `path` lies on is not the one lookups reach there (one on the way, whose folder at the
/// next mount's point a descriptor may hold, too).
fn may_be_hidden(ns: &Namespace, path: &Path) -> bool {
    let covered = ns.masked.iter().chain(&ns.read_only);
    if covered.into_iter().any(|place| related(place, path)) {
        let reached = visible(&ns.mounts, path).map(|m| m.id);
        return ns
            .mounts
            .iter()
            .any(|m| path.starts_with(&m.mount_point) && Some(m.id) != reached);
    }
    ns.read_only_alone
        .iter()
        .any(|place| path.starts_with(place) && !hidden_at(ns, place).is_empty())
}

/// The mounts at `place` itself that lookups of it do not reach (stacked beneath the top).
fn hidden_at<'a>(ns: &'a Namespace, place: &Path) -> Vec<&'a MountEntry> {
    let reached = visible(&ns.mounts, place).map(|m| m.id);
    let at_place = ns.mounts.iter().filter(|m| m.mount_point == place);
    at_place.filter(|m| Some(m.id) != reached).collect()
}

/// Whether the mount of something at `path` is read: where it may be hidden
/// ([`may_be_hidden`]), or where it is at or beneath a covered place, which a mount no table
/// of the tree has would reach uncovered ([`unknown_mount`]). Beneath a kernel place lie only
/// the kernel's filesystems and the covers, which answer an open alone.
fn mount_is_needed(ns: &Namespace, path: &Path) -> bool {
    let beneath = |place: &PathBuf| path.starts_with(place);
    may_be_hidden(ns, path) || ns.masked.iter().chain(&ns.read_only).any(beneath)
}

/// Why a file at `path` on the mount `mount` is refused when no mount namespace of the tree
/// has that mount, at, beneath or above one's covered place: nothing masks or binds the
/// namespace it is of (one no live task of the tree is in, CRIU's own), so it may reach the
/// kernel's files uncovered (review restore30 M1: before, such a file passed).
fn unknown_mount(namespaces: &[Namespace], mount: u64, path: &Path) -> Option<String> {
    if namespaces
        .iter()
        .any(|ns| ns.mounts.iter().any(|m| m.id == mount))
    {
        return None;
    }
    let place = namespaces.iter().find_map(|ns| {
        ns.masked
            .iter()
            .chain(&ns.read_only)
            .find(|place| related(place, path))
    })?;
    Some(format!(
        "mount {mount}, which no mount namespace of the restored tree has, by {}: nothing \
         covers that place on it",
        place.display()
    ))
}

/// Whether `path` is at, beneath or above `place`.
fn related(place: &Path, path: &Path) -> bool {
    path.starts_with(place) || place.starts_with(path)
}

/// Why a file at `path` on the mount `mount` reaches past a cover of `ns`: it lies on a mount
/// lookups of `path` do not reach, and from it a covered place is reached with more than the
/// cover gives. None when `mount` is not of `ns`, or is the one lookups reach.
fn reaches_past_a_cover(ns: &Namespace, mount: u64, path: &Path) -> Option<String> {
    let held = ns.mounts.iter().find(|m| m.id == mount)?;
    if visible(&ns.mounts, path).is_some_and(|m| m.id == mount) {
        return None;
    }
    for place in &ns.masked {
        if let Some(reached) = reached_at(ns, held, path, place) {
            return Some(format!(
                "a mount lookups no longer reach there, which shows {} unmasked (on {}): \
                 the mask over it hides nothing from this process",
                place.display(),
                described(reached)
            ));
        }
    }
    // A place bound read-only alone: only a writable mount stacked at the place itself.
    let alone = ns.read_only_alone.iter().filter(|place| {
        path.starts_with(place) && held.mount_point == **place && !held.is_read_only()
    });
    if let Some(place) = alone.into_iter().next() {
        return Some(writable_beneath(place, held));
    }
    ns.read_only.iter().find_map(|place| {
        reached_at(ns, held, path, place)
            .filter(|m| reaches_writable(&ns.mounts, m))
            .map(|reached| writable_beneath(place, reached))
    })
}

/// A mount by its id, type and point.
fn described(m: &MountEntry) -> String {
    format!(
        "mount {} ({} at {})",
        m.id,
        m.fs_type,
        m.mount_point.display()
    )
}

/// The refusal of a file that reaches `place`, bound read-only, writable on `reached`.
fn writable_beneath(place: &Path, reached: &MountEntry) -> String {
    format!(
        "a mount lookups no longer reach there, which shows {} writable (on {}): through it \
         this process would write where the read-only bind over it allows reading only",
        place.display(),
        described(reached)
    )
}

/// The mount through which a file at `path` on the mount `held` reaches `place`, when that is
/// not the mount lookups of `place` reach; None when `path` is neither at, beneath nor above
/// `place`.
fn reached_at<'a>(
    ns: &'a Namespace,
    held: &'a MountEntry,
    path: &Path,
    place: &Path,
) -> Option<&'a MountEntry> {
    if path.starts_with(place) {
        // At or beneath the place: what the descriptor reaches is its own mount.
        return Some(held);
    }
    if !place.starts_with(path) {
        return None;
    }
    // Above: a lookup from it to the place crosses the mounts on the way, but none stacked
    // where it starts.
    let first = children_on_the_way(&ns.mounts, held, place)
        .into_iter()
        .filter(|m| m.mount_point.as_path() != path)
        .min_by_key(|m| m.mount_point.components().count());
    let reached = first.map_or(held, |first| last(&descend(&ns.mounts, first, place)));
    let shown = visible(&ns.mounts, place).map(|m| m.id);
    (Some(reached.id) != shown).then_some(reached)
}

/// The mount lookups of `path` from the namespace's root reach ([`descend`] from its root
/// mount). None without a root.
fn visible<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    Some(last(&descend(mounts, root_of(mounts)?, path)))
}

/// The namespace's root mount: at `/`, its parent not of the table.
fn root_of(mounts: &[MountEntry]) -> Option<&MountEntry> {
    mounts.iter().find(|m| {
        m.mount_point == Path::new("/") && !mounts.iter().any(|p| p.id == m.parent && p.id != m.id)
    })
}

/// The mounts a lookup of `path` that arrives on `from` crosses, `from` first, the one it
/// reaches last: each step to the child mount first met on the way (the shortest point that
/// `path` lies on; a mount stacked on another is its child at the same point, and a lookup
/// arriving at a point crosses every mount stacked there).
fn descend<'a>(mounts: &'a [MountEntry], from: &'a MountEntry, path: &Path) -> Vec<&'a MountEntry> {
    let mut crossed = vec![from];
    // Each step goes one mount down the tree: no more steps than mounts.
    for _ in 0..mounts.len() {
        let here = last(&crossed);
        let next = children_on_the_way(mounts, here, path)
            .into_iter()
            .min_by_key(|m| m.mount_point.components().count());
        match next {
            Some(next) => crossed.push(next),
            None => break,
        }
    }
    crossed
}

/// The mounts on `parent` whose point `path` lies on.
fn children_on_the_way<'a>(
    mounts: &'a [MountEntry],
    parent: &MountEntry,
    path: &Path,
) -> Vec<&'a MountEntry> {
    let on_parent = mounts
        .iter()
        .filter(|m| m.parent == parent.id && m.id != parent.id);
    on_parent
        .filter(|m| path.starts_with(&m.mount_point))
        .collect()
}

/// The mount a lookup reached last of those [`descend`] gives (never none: it starts on one).
fn last<'a>(crossed: &[&'a MountEntry]) -> &'a MountEntry {
    crossed[crossed.len() - 1]
}

/// Whether `mount`, or a mount beneath it in the tree (which lookups from it cross into), is
/// writable.
fn reaches_writable(mounts: &[MountEntry], mount: &MountEntry) -> bool {
    let mut pending = vec![mount];
    let mut seen = Vec::new();
    while let Some(m) = pending.pop() {
        if seen.contains(&m.id) {
            continue;
        }
        seen.push(m.id);
        if !m.is_read_only() {
            return true;
        }
        pending.extend(mounts.iter().filter(|c| c.parent == m.id && c.id != m.id));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM's namespace after a restore added a mask over `/proc/keys` and a read-only bind
    /// over `/proc/sys` (with its `binfmt_misc` cloned read-only): proc (30) is hidden at
    /// both places; mount 33 is the host's `binfmt_misc` left beneath the bind.
    const TABLE: &str = "\
20 1 0:40 / / rw - overlay overlay rw
30 20 0:5 / /proc rw,nosuid - proc proc rw
33 30 0:50 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw
40 30 0:1 /null /proc/keys ro - devtmpfs udev rw
41 30 0:5 /sys /proc/sys ro - proc proc rw
42 41 0:50 / /proc/sys/fs/binfmt_misc ro - binfmt_misc binfmt_misc rw
";

    fn namespace() -> Namespace {
        Namespace {
            mounts: feather_sys::mountinfo::parse(TABLE.as_bytes()),
            masked: vec!["/proc/keys".into()],
            read_only: vec!["/proc/sys".into()],
            read_only_alone: Vec::new(),
        }
    }

    fn judged(mount: u64, path: &str) -> Option<String> {
        reaches_past_a_cover(&namespace(), mount, Path::new(path))
    }

    /// What a lookup of each path would reach passes: the root, proc, the mask, the bind and
    /// its clone; a mount the images or the host use elsewhere is not this namespace's.
    #[test]
    fn what_lookups_reach_passes() {
        for (mount, path) in [
            (20, "/"),
            (20, "/etc/passwd"),
            (30, "/proc"),
            (30, "/proc/1/status"),
            (40, "/proc/keys"),
            (41, "/proc/sys/kernel/core_pattern"),
            (42, "/proc/sys/fs/binfmt_misc/register"),
        ] {
            assert_eq!(judged(mount, path), None, "{mount} {path}");
        }
        assert_eq!(
            unknown_mount(&[namespace()], 99, Path::new("/etc/passwd")),
            None
        );
    }

    /// A file at, beneath or above a covered place on a mount no namespace of the tree has
    /// (one no live task is in, which nothing masks or binds) is refused naming the mount
    /// and the place; and its mount is read beneath a place even where no table mount is
    /// hidden (review restore30 M1: before, it passed).
    #[test]
    fn a_file_on_a_mount_no_table_has_by_a_covered_place_is_refused() {
        for path in ["/proc/sys/kernel/core_pattern", "/proc/keys", "/proc"] {
            let why = unknown_mount(&[namespace()], 99, Path::new(path)).unwrap();
            assert!(
                why.contains("mount 99, which no mount namespace"),
                "{path}: {why}"
            );
        }
        // A namespace whose table shows no proc: nothing is hidden at its places.
        let mut plain = namespace();
        plain.mounts = feather_sys::mountinfo::parse(b"20 1 0:40 / / rw - overlay overlay rw\n");
        assert!(!may_be_hidden(
            &plain,
            Path::new("/proc/sys/kernel/core_pattern")
        ));
        assert!(mount_is_needed(
            &plain,
            Path::new("/proc/sys/kernel/core_pattern")
        ));
        assert!(!mount_is_needed(&plain, Path::new("/etc/passwd")));
    }

    /// A file beneath a mask on the mount it hides, a knob or a folder beneath the bind on the
    /// writable mount beneath it, and a mount hidden beneath the bind's clone: each refused
    /// naming the place and the mount.
    #[test]
    fn what_lies_beneath_a_cover_is_refused() {
        let keys = judged(30, "/proc/keys").unwrap();
        assert!(
            keys.contains("/proc/keys unmasked") && keys.contains("mount 30 (proc at /proc)"),
            "{keys}"
        );
        for (mount, path) in [
            (30, "/proc/sys/kernel/core_pattern"),
            (30, "/proc/sys"),
            (33, "/proc/sys/fs/binfmt_misc"),
        ] {
            let why = judged(mount, path).unwrap();
            assert!(
                why.contains("/proc/sys writable") && why.contains(&format!("mount {mount} ")),
                "{mount} {path}: {why}"
            );
        }
    }

    /// A folder above a covered place on a mount lookups do not reach (a second proc stacked
    /// on a writable one at `/proc`): a lookup from it reaches the writable knobs; one whose
    /// way to the place is covered too (its own read-only bind) passes.
    #[test]
    fn a_hidden_folder_above_a_covered_place_is_refused_unless_covered_on_its_way() {
        let stacked = "\
20 1 0:40 / / rw - overlay overlay rw
30 20 0:5 / /proc rw - proc proc rw
50 30 0:6 / /proc rw - proc proc rw
51 50 0:6 /sys /proc/sys ro - proc proc rw
";
        let mut ns = namespace();
        ns.mounts = feather_sys::mountinfo::parse(stacked.as_bytes());
        ns.masked.clear();
        let why = reaches_past_a_cover(&ns, 30, Path::new("/proc")).unwrap();
        assert!(why.contains("/proc/sys writable"), "{why}");
        assert!(may_be_hidden(&ns, Path::new("/proc")));
        let covered = format!("{stacked}31 30 0:5 /sys /proc/sys ro - proc proc rw\n");
        ns.mounts = feather_sys::mountinfo::parse(covered.as_bytes());
        assert_eq!(reaches_past_a_cover(&ns, 30, Path::new("/proc")), None);
    }

    /// A read-only root bound alone (`readOnlyRootFilesystem`): a file on a writable tmpfs
    /// mounted beneath it, hidden by another mount, passes, and its mount is not read; a
    /// writable mount stacked at `/` itself beneath the read-only top is refused (review
    /// restore30 M3: before, the place was taken as recursive and the tmpfs file refused).
    #[test]
    fn a_place_bound_read_only_alone_judges_only_the_mounts_at_it() {
        let table = |lines: &[&str]| feather_sys::mountinfo::parse(lines.join("\n").as_bytes());
        let ns = Namespace {
            mounts: table(&[
                "20 1 0:40 / / ro - overlay overlay rw",
                "60 20 0:61 / /tmp rw - tmpfs tmpfs rw",
                "61 60 0:62 / /tmp rw - tmpfs tmpfs rw",
            ]),
            masked: Vec::new(),
            read_only: Vec::new(),
            read_only_alone: vec!["/".into()],
        };
        assert_eq!(reaches_past_a_cover(&ns, 60, Path::new("/tmp/x")), None);
        assert!(!may_be_hidden(&ns, Path::new("/tmp/x")));
        let ns = Namespace {
            mounts: table(&[
                "19 1 0:39 / / rw - overlay overlay rw",
                "20 19 0:40 / / ro - overlay overlay rw",
            ]),
            ..ns
        };
        assert!(may_be_hidden(&ns, Path::new("/etc/passwd")));
        let why = reaches_past_a_cover(&ns, 19, Path::new("/etc/passwd")).unwrap();
        assert!(why.contains("shows / writable"), "{why}");
    }

    /// Only a path on the way to, at or beneath a covered place where the table has a mount
    /// lookups do not reach has its mount read.
    #[test]
    fn only_paths_that_may_be_hidden_have_their_mount_read() {
        let ns = namespace();
        for (path, hidden) in [
            ("/", false),
            ("/etc", false),
            // The overlay's own `/proc` folder lies beneath proc.
            ("/proc", true),
            ("/proc/1/status", false),
            ("/proc/keys", true),
            ("/proc/sys/kernel", true),
        ] {
            assert_eq!(may_be_hidden(&ns, Path::new(path)), hidden, "{path}");
        }
    }
}

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
//! filesystem's server) and its path in that mount's namespace (the link's text, the kernel's
//! `d_path` from that namespace's root, as the host's root lies outside it): one on a mount
//! that lookups of that path no longer reach (hidden) at, beneath or above a covered place,
//! reaching there more than the cover gives (a mask: anything; a read-only bind: a writable
//! mount), fails the restore ([`crate::restored_reach`] judges, with bounded work); so does
//! one on a mount no namespace of the tree has, wherever its path says it is
//! ([`Outside::refusal`]).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use feather_sys::mountinfo::MountEntry;
use nix::fcntl::OFlag;
use nix::sys::memfd::MFdFlags;
use nix::sys::stat::Mode;

use crate::restored_reach::{Judge, Namespace, TooMuchWork};

/// As many links (descriptors, working folders, roots, mapped files) as the check reads in
/// one tree: a bound on its work whatever the images hold (a task may hold a million
/// descriptors; each costs a `readlink`).
const MAX_LINKS: usize = 1 << 22;

/// As much of an `fdinfo` file as is read: `mnt_id` is its third line; what follows (an
/// epoll's or inotify's list) is not needed.
const FDINFO_BYTES: u64 = 4096;

/// Filesystems of the kernel's own internal mounts, in no namespace's table, whose files
/// lead nowhere else: an aio ring's, `memfd_secret`'s, a dma-buf's (`AIO_RING_MAGIC`,
/// `SECRETMEM_MAGIC`, `DMA_BUF_MAGIC`). The shared-memory tmpfs (memfd, SysV shm, a shared
/// anonymous map) is known by its mount's id instead: any tmpfs may be mounted.
const INTERNAL_FILESYSTEMS: [u64; 3] = [0xa10a_10a1, 0x5345_434d, 0x444d_4142];

/// `HUGETLBFS_MAGIC`: the kernel's internal hugetlbfs mounts hold a shared `MAP_HUGETLB`
/// map, a SysV `SHM_HUGETLB` segment, an `MFD_HUGETLB` memfd (PostgreSQL with `huge_pages`,
/// DPDK); a file, not a folder, of any hugetlbfs is memory and reaches no kernel knob
/// (review restore31 M1: every such map was refused).
const HUGETLBFS: u64 = 0x9584_58f6;

/// How many threads of one process whose descriptor tables were read a thread's table is
/// compared with (kcmp) before its own is read: a bound on the comparisons, as threads made
/// with `CLONE_FILES` share their creator's table.
const TABLES_COMPARED: usize = 4;

/// What a refusal of the check adds after what the tree holds: a file of a mount no
/// namespace of the tree has.
const OUTSIDE_CAUSES: &str = "no restore this host makes leaves a task such a file (CRIU \
    opens a task's files in the tree's own namespaces): the checkpoint was likely altered; \
    restore only checkpoints this host or a trusted one took";

/// Why the check refused the tree: each names the process, what it holds and why.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// It reaches past a mask or a read-only bind: the kernel knobs' causes apply
    /// ([`Refusal::with_causes`]).
    #[error("{0}")]
    PastACover(String),
    /// It lies on a mount no namespace of the tree has.
    #[error("{0}; {OUTSIDE_CAUSES}")]
    Outside(String),
    /// It was not judged (unreadable, or past the check's bounds), as the message says.
    #[error("{0}")]
    Unchecked(String),
}

impl Refusal {
    /// The refusal with `knob_causes` added where they apply (review restore31 L3: every
    /// refusal had them, the check's own limits and unreadable links too).
    pub(crate) fn with_causes(self, knob_causes: &str) -> String {
        match self {
            Refusal::PastACover(why) => format!("{why}; {knob_causes}"),
            other => other.to_string(),
        }
    }
}

/// Checks what every thread of the tree under `init` (held still in `hold`) holds against
/// the covered places of `namespaces` (the tree's every mount namespace, already checked);
/// `handed`, the files the restorer handed CRIU for the tree (by device and inode). The
/// refusal names the process, what it holds, the mount and the place.
pub(crate) fn check(
    init: i32,
    hold: &crate::held::Hold,
    namespaces: &[Namespace],
    handed: &[(u64, u64)],
) -> Result<(), Refusal> {
    read_tree(init, hold, (namespaces, handed), MAX_LINKS).map(drop)
}

/// [`check`], reading at most `max_links` links; how many were read.
fn read_tree(
    init: i32,
    hold: &crate::held::Hold,
    (namespaces, handed): (&[Namespace], &[(u64, u64)]),
    max_links: usize,
) -> Result<usize, Refusal> {
    let proc = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Refusal::Unchecked(format!("cannot open /proc: {e}")))?;
    let outside = Outside::read(&proc, handed).map_err(Refusal::Unchecked)?;
    let mut reader = Reader {
        proc,
        judge: Judge::new(namespaces),
        outside,
        read: 0,
        max_links,
        maps_read: HashSet::new(),
        tables_read: HashMap::new(),
    };
    crate::restored::walk_tree(
        init,
        hold,
        |thread| reader.thread(&thread),
        |unchecked| Refusal::Unchecked(unchecked.to_string()),
    )?;
    Ok(reader.read)
}

/// What a file on a mount no namespace of the tree has may be on without a refusal.
struct Outside {
    /// The kernel's shared-memory mount (a memfd's, a SysV segment's), by a memfd this
    /// process makes.
    shared_memory: u64,
    /// The mounts of this process's namespace, the host's (or the engine's), by id: to name
    /// one a refused file lies on.
    host: HashMap<u64, MountEntry>,
    /// The files handed to CRIU for the tree, by `(st_dev, st_ino)`.
    handed: HashSet<(u64, u64)>,
}

impl Outside {
    fn read(proc: &OwnedFd, handed: &[(u64, u64)]) -> Result<Self, String> {
        let memfd = shared_memory_file()
            .map_err(|e| format!("cannot make a memfd to learn the shared-memory mount: {e}"))?;
        let shared_memory = crate::restored_paths::mount_id(proc, &memfd)?;
        let table = crate::restored_paths::read_in_proc(proc, "thread-self/mountinfo")?;
        let host = feather_sys::mountinfo::parse(table);
        Ok(Outside {
            shared_memory,
            host: host.into_iter().map(|m| (m.id, m)).collect(),
            handed: handed.iter().copied().collect(),
        })
    }

    /// Why a file `opened` on `mount`, a mount no namespace of the tree has, is refused: it
    /// may be on a proc or sysfs (or a folder of one, or of the host's tree) that nothing
    /// masks or binds (one of a namespace no live task of the tree is in, CRIU's own, or
    /// detached), wherever its path says it is (review fixrestore30 M1: before, only one by
    /// a covered place was refused). Passed: the kernel's internal mounts, a file not a
    /// folder of a hugetlbfs, and exactly the files the restore handed CRIU for the tree
    /// (standard input, output and error: review restore31 M4, before, any file not a
    /// folder of the host's namespace passed, `/dev/mem` and `cgroup.procs` too).
    fn refusal(&self, mount: u64, opened: &OwnedFd) -> nix::Result<Option<String>> {
        let filesystem = nix::sys::statfs::fstatfs(opened)?.filesystem_type().0 as u64;
        let tmpfs = nix::sys::statfs::TMPFS_MAGIC.0 as u64;
        let internal = INTERNAL_FILESYSTEMS.contains(&filesystem)
            || (filesystem == tmpfs && mount == self.shared_memory);
        if internal {
            return Ok(None);
        }
        let stat = nix::sys::stat::fstat(opened)?;
        let folder = stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let handed = self.handed.contains(&(stat.st_dev, stat.st_ino));
        if !folder && (filesystem == HUGETLBFS || handed) {
            return Ok(None);
        }
        let kind = self.host.get(&mount).map_or_else(
            || format!("filesystem {filesystem:#x}"),
            |m| m.fs_type.clone(),
        );
        Ok(Some(format!(
            "mount {mount} ({kind}), which no mount namespace of the restored tree has: \
             nothing masks or binds read-only what it reaches"
        )))
    }
}

/// A memfd of the kernel's shared-memory mount, sealed against exec where the kernel can
/// (Linux 6.3 on; there, with `vm.memfd_noexec` 2, one without the seal is refused: review
/// restore31 L1), else plain.
fn shared_memory_file() -> nix::Result<OwnedFd> {
    let name = "feather-restore-check";
    let sealed = MFdFlags::MFD_CLOEXEC | MFdFlags::from_bits_retain(libc::MFD_NOEXEC_SEAL);
    match nix::sys::memfd::memfd_create(name, sealed) {
        Err(nix::Error::EINVAL) => nix::sys::memfd::memfd_create(name, MFdFlags::MFD_CLOEXEC),
        made => made,
    }
}

/// The files `fds` (descriptors of this process the restore hands CRIU for the tree) are,
/// by `(st_dev, st_ino)`: what [`crate::restored_mounts::Expected::handed`] holds.
pub fn handed_files(fds: &[i32]) -> Result<Vec<(u64, u64)>, String> {
    let file = |fd: &i32| {
        let stat = nix::sys::stat::stat(format!("/proc/thread-self/fd/{fd}").as_str())
            .map_err(|e| format!("cannot read descriptor {fd} handed to CRIU: {e}"))?;
        Ok((stat.st_dev, stat.st_ino))
    };
    fds.iter().map(file).collect()
}

/// Reads the links of the tree's threads, counting them.
struct Reader<'a> {
    /// The host's proc, for the `fdinfo` of a descriptor of this process.
    proc: OwnedFd,
    judge: Judge<'a>,
    outside: Outside,
    read: usize,
    /// [`MAX_LINKS`]; less in a test.
    max_links: usize,
    /// The processes whose mapped files and executable were read (through a live thread).
    maps_read: HashSet<i32>,
    /// Per process, the threads whose descriptor tables were read (at most
    /// [`TABLES_COMPARED`] kept).
    tables_read: HashMap<i32, Vec<i32>>,
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

/// Why a link was not judged.
enum Unjudged {
    /// The link, or the mount of what it leads to, could not be read: the error.
    Unreadable(String),
    TooMuch(TooMuchWork),
}

impl From<nix::Error> for Unjudged {
    fn from(e: nix::Error) -> Self {
        Unjudged::Unreadable(e.to_string())
    }
}

impl From<TooMuchWork> for Unjudged {
    fn from(e: TooMuchWork) -> Self {
        Unjudged::TooMuch(e)
    }
}

/// What a link leads to, when it is refused: why, and whether past a cover.
struct Held {
    why: String,
    past_a_cover: bool,
}

/// What a thread's links are read from.
struct ThreadAt<'a> {
    thread: &'a crate::restored::Thread<'a>,
    tid: String,
    /// Its `/proc/PID/task/TID` folder.
    folder: OwnedFd,
}

impl ThreadAt<'_> {
    /// What cannot be read of the thread, `what` (a link's or a folder's name).
    fn unreadable(&self, what: &str, e: impl std::fmt::Display) -> Refusal {
        Refusal::Unchecked(format!(
            "cannot read {what} of restored process {} (thread {}) to check what it holds: {e}",
            self.thread.pid, self.tid
        ))
    }
}

impl Reader<'_> {
    /// One thread: its working folder, root and descriptors (once per table a process's
    /// threads share); the first live thread of a thread group also the group's mapped files
    /// and executable. Its `/proc` folder opened once, each read beneath it.
    fn thread(&mut self, thread: &crate::restored::Thread) -> Result<(), Refusal> {
        let tid = crate::restored::thread_id(thread.path);
        let folder = match open_folder(thread.path) {
            Ok(folder) => folder,
            Err(_) if crate::held::has_ended(thread.path) => return Ok(()),
            Err(e) => {
                let at = format!("restored process {} (thread {tid})", thread.pid);
                return Err(Refusal::Unchecked(format!(
                    "cannot read the /proc folder of {at} to check what it holds: {e}"
                )));
            }
        };
        let at = ThreadAt {
            thread,
            tid,
            folder,
        };
        for name in ["cwd", "root"] {
            self.judge_link(&at, &at.folder, name, MountOf::Opened)?;
        }
        if self.table_unread(&at) {
            let fds = open_entries(&at.folder, "fd").map_err(|e| at.unreadable("fd", e))?;
            for fd in &fds.names {
                self.judge_link(&at, &fds.folder, fd, MountOf::FdInfo(&at.folder))?;
            }
        }
        self.memory(&at)
    }

    /// Whether the descriptor table of the thread at `at` is none of those read of its
    /// process's threads (kcmp; where the kernel cannot tell, it is read), noting it read
    /// (review restore31 L5: 200 threads sharing 25k descriptors were read 200 times, past
    /// [`MAX_LINKS`]).
    fn table_unread(&mut self, at: &ThreadAt) -> bool {
        let Ok(tid) = at.tid.parse::<i32>() else {
            return true;
        };
        let read = self.tables_read.entry(at.thread.pid).or_default();
        let shared = |&other: &i32| {
            let pids = (
                nix::unistd::Pid::from_raw(tid),
                nix::unistd::Pid::from_raw(other),
            );
            feather_sys::process::shares_descriptor_table(pids.0, pids.1).unwrap_or(false)
        };
        if read.iter().any(shared) {
            return false;
        }
        if read.len() < TABLES_COMPARED {
            read.push(tid);
        }
        true
    }

    /// A group's memory and executable, read through the first live thread of it: through
    /// a leader that has ended, `map_files` is empty and `exe` unreadable (review restore30
    /// L1: before, such a group's mapped files passed unread).
    fn memory(&mut self, at: &ThreadAt) -> Result<(), Refusal> {
        if self.maps_read.contains(&at.thread.pid) || crate::held::has_ended(at.thread.path) {
            return Ok(());
        }
        self.judge_link(at, &at.folder, "exe", MountOf::Opened)?;
        let Some(process) = self.process_folder(at)? else {
            return Ok(());
        };
        let maps =
            open_entries(&process, "map_files").map_err(|e| at.unreadable("map_files", e))?;
        for map in &maps.names {
            self.judge_link(at, &maps.folder, map, MountOf::Opened)?;
        }
        self.maps_read.insert(at.thread.pid);
        Ok(())
    }

    /// `/proc/TID`, the thread's view of its group's memory (`map_files` is a process's
    /// alone): opened by number, then known to be the thread's as its own folder still
    /// answers (a number is not reused while its thread lives; review restore31 L4: before,
    /// a thread killed from outside could leave its number to an unrelated process, whose
    /// maps were judged). None when the thread has ended.
    fn process_folder(&self, at: &ThreadAt) -> Result<Option<OwnedFd>, Refusal> {
        let opened = nix::fcntl::openat(&self.proc, at.tid.as_str(), folder_flags(), Mode::empty())
            .map_err(|e| at.unreadable("its /proc folder", e));
        let alive = nix::fcntl::openat(
            &at.folder,
            "stat",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        match alive {
            Ok(_) => opened.map(Some),
            Err(_) if crate::held::has_ended(at.thread.path) => Ok(None),
            Err(e) => Err(at.unreadable("stat", e)),
        }
    }

    /// Judges the link `name` in `folder` of the thread at `at`: refused naming the
    /// process, the thread and what it holds; unjudged only if the thread has ended.
    fn judge_link(
        &mut self,
        at: &ThreadAt,
        folder: &OwnedFd,
        name: &str,
        mount_of: MountOf,
    ) -> Result<(), Refusal> {
        let held = |why: String| {
            let (pid, tid) = (at.thread.pid, &at.tid);
            format!("restored process {pid} (thread {tid}) holds {why}")
        };
        match self.link(folder, name, mount_of) {
            Ok(None) => Ok(()),
            Ok(Some(Held {
                why,
                past_a_cover: true,
            })) => Err(Refusal::PastACover(held(why))),
            Ok(Some(Held { why, .. })) => Err(Refusal::Outside(held(why))),
            Err(Unjudged::TooMuch(e)) => Err(Refusal::Unchecked(e.to_string())),
            Err(_) if self.read > self.max_links => Err(Refusal::Unchecked(format!(
                "the restored tree holds more than {} descriptors, working folders, roots, \
                 mapped files and executables, the most the check reads: refused",
                self.max_links
            ))),
            Err(_) if crate::held::has_ended(at.thread.path) => Ok(()),
            Err(Unjudged::Unreadable(e)) => Err(at.unreadable(name, e)),
        }
    }

    /// The link `name` in `folder` (a thread's, its `fd` or `map_files` folder): why what it
    /// leads to reaches past a cover, or lies on a mount no namespace of the tree has, if it
    /// does. The mount of every absolute path is read.
    fn link(
        &mut self,
        folder: &OwnedFd,
        name: &str,
        mount_of: MountOf,
    ) -> Result<Option<Held>, Unjudged> {
        self.read += 1;
        if self.read > self.max_links {
            return Err(nix::Error::E2BIG.into());
        }
        let text = nix::fcntl::readlinkat(folder, name)?;
        let path = Path::new(&text);
        let path = match text.to_str().and_then(|t| t.strip_suffix(" (deleted)")) {
            Some(undeleted) => Path::new(undeleted),
            None => path,
        };
        // Pipes, sockets and anonymous files (`pipe:[…]`) lie on no mount of the tree.
        if !path.is_absolute() {
            return Ok(None);
        }
        let open_through = || {
            nix::fcntl::openat(
                folder,
                name,
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        let (mount, opened) = match mount_of {
            MountOf::FdInfo(thread) => (mount_in_fdinfo(thread, name)?, None),
            MountOf::Opened => {
                let opened = open_through()?;
                let mount = crate::restored_paths::mount_id(&self.proc, &opened)
                    .map_err(Unjudged::Unreadable)?;
                (mount, Some(opened))
            }
        };
        let past_a_cover = self.judge.knows(mount);
        let why = if past_a_cover {
            self.judge.verdict(mount, path)?
        } else {
            let opened = match opened {
                Some(opened) => opened,
                None => open_through()?,
            };
            self.outside.refusal(mount, &opened)?
        };
        let what = match name.parse::<u32>() {
            Ok(fd) => format!("descriptor {fd}"),
            Err(_) => format!("its {name}"),
        };
        Ok(why.map(|why| Held {
            why: format!("{what} on {}, {why}", path.display()),
            past_a_cover,
        }))
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

#[cfg(test)]
/// The standard input, output and error of `pid` (read through a live thread), which the
/// test hands it as a restore hands the tree its own (they lie on the test's mounts, not
/// the process's namespace).
pub(crate) fn stdio_of(pid: i32) -> Vec<(u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let fds = tasks
        .map(|t| t.unwrap().path().join("fd"))
        .find(|fds| fds.join("0").exists())
        .unwrap();
    let file = |fd| std::fs::metadata(fds.join(format!("{fd}"))).ok();
    let identity = |m: std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    };
    (0..3).filter_map(file).map(identity).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use feather_testkit::{eventually, ScratchDir, Started};
    use std::time::Duration;

    /// `script` run by `sh` in a mount namespace of its own, `$1` a scratch folder of the
    /// test's (what it mounts there is the namespace's alone); once `ready` holds of its pid
    /// and its scratch folder (within a generous minute; a set-up that fails ends the script
    /// and the test at once).
    /// Killed and removed on drop, the process first.
    fn started(
        label: &str,
        script: &str,
        ready: impl Fn(i32, &Path) -> bool,
    ) -> (Started, ScratchDir) {
        let scratch = ScratchDir::new(label);
        let folder = scratch.0.display().to_string();
        let private = ["-m", "--propagation", "private", "sh", "-c", script, "sh"];
        let mut child = Started::spawn("unshare", &[&private[..], &[&folder]].concat());
        let pid = child.0.id() as i32;
        let came = eventually(Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("{label}: the set-up ended, {status}");
            }
            ready(pid, &scratch.0)
        });
        assert!(came, "{label}: the process was not ready in 60 s");
        (child, scratch)
    }

    /// The namespace `pid` is in (read through a live thread), `/proc/sys` bound read-only
    /// there as the check requires.
    fn namespace_of(pid: i32) -> Vec<Namespace> {
        let mut tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let table = tasks
            .find_map(|t| std::fs::read(t.unwrap().path().join("mountinfo")).ok())
            .unwrap();
        vec![Namespace {
            mounts: feather_sys::mountinfo::parse(table),
            masked: Vec::new(),
            read_only: vec!["/proc/sys".into()],
            read_only_alone: Vec::new(),
        }]
    }

    /// What the check says of the tree of `pid`, frozen as a restore holds it.
    fn checked(label: &str, pids: &[i32]) -> Result<(), String> {
        let held = crate::held::TestGroup::frozen(label, pids).unwrap();
        let namespaces = namespace_of(pids[0]);
        let handed = stdio_of(pids[0]);
        check(pids[0], held.hold(), &namespaces, &handed).map_err(|r| r.to_string())
    }

    /// How many entries the folder `/proc/{pid}/{name}` has.
    fn entries(pid: i32, name: &str) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/{name}"))
            .unwrap()
            .count()
    }

    fn comm_is(pid: i32, name: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == format!("{name}\n"))
    }

    /// The refusal of a process whose thread other than the leader runs `in_thread` (Python
    /// lines indented by four, `p` a proc mounted for it), the proc detached once it ran:
    /// naming that thread, not the leader, and the mount no namespace of the tree has.
    fn refusal_of_a_thread_on_a_detached_proc(label: &str, in_thread: &str) -> String {
        let script = format!(
            "set -e; mkdir $1/p; mount -t proc proc $1/p; \
             exec python3 -c 'import ctypes, os, subprocess, sys, threading, time\n\
p = sys.argv[1] + \"/p\"\n\
done = threading.Event()\n\
def in_thread():\n\
{in_thread}\
\x20   done.set()\n\
\x20   time.sleep(1000)\n\
threading.Thread(target=in_thread).start()\n\
done.wait()\n\
subprocess.run([\"umount\", \"-l\", p], check=True)\n\
open(sys.argv[1] + \"/ready\", \"w\").close()\n\
time.sleep(1000)' $1"
        );
        let ready = |_, folder: &Path| folder.join("ready").exists();
        let (child, _scratch) = started(label, &script, ready);
        let pid = child.0.id() as i32;
        let refusal = checked(label, &[pid]).unwrap_err();
        assert!(
            !refusal.contains(&format!("(thread {pid})"))
                && refusal.contains("which no mount namespace of the restored tree has"),
            "{refusal}"
        );
        refusal
    }

    /// A tree holding more links than the check reads is refused saying so; the same tree
    /// within the limit passes (review restore30 M4: the limit had no test).
    #[test]
    fn a_tree_holding_more_links_than_the_check_reads_is_refused() {
        let script = "exec 3</dev/null 4</dev/null 5</dev/null 6</dev/null 7</dev/null \
                      8</dev/null 9</dev/null; exec busybox sleep 1000";
        let (child, _scratch) = started("many-links", script, |pid, _| comm_is(pid, "busybox"));
        let pid = child.0.id() as i32;
        let held = crate::held::TestGroup::frozen("many-links", &[pid]).unwrap();
        let namespaces = namespace_of(pid);
        let within =
            |max_links| read_tree(pid, held.hold(), (&namespaces, &stdio_of(pid)), max_links);
        let refusal = within(8).unwrap_err().with_causes("KNOB CAUSES");
        assert!(
            refusal.contains("holds more than 8 descriptors, working folders")
                && !refusal.contains("KNOB CAUSES"),
            "{refusal}"
        );
        assert!(within(1000).is_ok());
    }

    /// A folder of a proc no namespace of the tree has (mounted in the namespace, then
    /// detached): its path reads `/sys/kernel`, near no covered place, but `openat` from it
    /// writes `core_pattern`. Refused naming the descriptor and the mount (review
    /// fixrestore30 M1: before, only a path at, beneath or above a covered place had its
    /// mount read, and this passed).
    #[test]
    fn a_descriptor_on_a_mount_no_namespace_of_the_tree_has_is_refused_wherever_it_lies() {
        let script = "set -e; mount -t proc proc $1; exec 5<$1/sys/kernel; umount -l $1; \
                      exec busybox sleep 1000";
        let (child, _scratch) = started("detached-proc", script, |pid, _| comm_is(pid, "busybox"));
        let pid = child.0.id() as i32;
        let held = crate::held::TestGroup::frozen("detached-proc", &[pid]).unwrap();
        let namespaces = namespace_of(pid);
        let refusal = check(pid, held.hold(), &namespaces, &stdio_of(pid)).unwrap_err();
        let refusal = refusal.with_causes(crate::restored_mounts::KNOB_CAUSES);
        assert!(
            refusal.contains(&format!(
                "process {pid} (thread {pid}) holds descriptor 5 on /sys/kernel, mount"
            )) && refusal.contains("which no mount namespace of the restored tree has"),
            "{refusal}"
        );
        // The causes of a mount no namespace has, not those of a kernel knob (review
        // restore31 L3).
        assert!(
            refusal.contains("the checkpoint was likely altered")
                && !refusal.contains("another kernel or config"),
            "{refusal}"
        );
    }

    /// A process whose executable lies on a tmpfs detached after its exec: refused naming
    /// the executable.
    #[test]
    fn an_executable_on_a_mount_no_namespace_of_the_tree_has_is_refused() {
        let script = "set -e; mount -t tmpfs t $1; cp /usr/bin/busybox $1/bb; \
                      exec python3 -c 'import os, subprocess, sys\n\
d = sys.argv[1]\n\
fd = os.open(d + \"/bb\", os.O_RDONLY)\n\
subprocess.run([\"umount\", \"-l\", d], check=True)\n\
os.chdir(\"/\")\n\
os.execv(f\"/proc/self/fd/{fd}\", [\"sleep\", \"1000\"])' $1";
        let exe_is_bb = |pid: i32, _: &Path| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == Path::new("/bb"))
        };
        let (child, _scratch) = started("detached-exe", script, exe_is_bb);
        let pid = child.0.id() as i32;
        let refusal = checked("detached-exe", &[pid]).unwrap_err();
        assert!(
            refusal.contains("holds its exe on /bb, mount")
                && refusal.contains("(filesystem 0x1021994)"),
            "{refusal}"
        );
    }

    /// A thread group whose leader has exited, its other thread alive, maps a file of a
    /// tmpfs detached after the map: through the leader `map_files` is empty; read through
    /// the live thread, the map is refused (review restore30 L1: before, it passed unread).
    #[test]
    fn a_mapped_file_of_a_group_whose_leader_exited_is_read_through_a_live_thread() {
        let script = "set -e; mount -t tmpfs t $1; echo mapped > $1/mapped; \
                      exec python3 -c 'import ctypes, mmap, os, subprocess, sys, threading, time\n\
d = sys.argv[1]\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
libc.mmap.restype = ctypes.c_void_p\n\
fd = os.open(d + \"/mapped\", os.O_RDONLY)\n\
kept = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)\n\
assert kept not in (None, ctypes.c_void_p(-1).value)\n\
os.close(fd)\n\
subprocess.run([\"umount\", \"-l\", d], check=True)\n\
os.chdir(\"/\")\n\
threading.Thread(target=time.sleep, args=(1000,)).start()\n\
exit_nr = {\"x86_64\": 60, \"aarch64\": 93}[os.uname().machine]\n\
libc.syscall(exit_nr, 0)' $1";
        let leader_gone = |pid: i32, _: &Path| {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |t| t.count());
            tasks == 2 && crate::held::has_ended(Path::new(&format!("/proc/{pid}/task/{pid}")))
        };
        let (child, _scratch) = started("leader-gone", script, leader_gone);
        let pid = child.0.id() as i32;
        let refusal = checked("leader-gone", &[pid]).unwrap_err();
        assert!(
            refusal.contains(&format!("process {pid} (thread "))
                && refusal.contains(" on /mapped, mount")
                && !refusal.contains("descriptor")
                && refusal.contains("which no mount namespace of the restored tree has"),
            "{refusal}"
        );
    }

    /// A thread other than the leader with a root of its own (`unshare(CLONE_FS)`, then
    /// `chroot`) at a proc that is then detached: refused naming the thread and its root
    /// (review restore30 M4: no test had a non-leader thread's links, nor a root).
    #[test]
    fn a_threads_own_root_on_a_mount_no_namespace_of_the_tree_has_is_refused() {
        let in_thread = "\x20   assert ctypes.CDLL(None).unshare(0x200) == 0\n\
\x20   os.chroot(p)\n";
        let refusal = refusal_of_a_thread_on_a_detached_proc("thread-root", in_thread);
        assert!(refusal.contains(" holds its root on "), "{refusal}");
    }

    /// What a restore hands the tree or the kernel makes for it passes: a memfd (the
    /// shared-memory mount), a hugetlb memfd, the very file handed to CRIU; a file of the
    /// host's not handed (review restore31 M4: any passed), a folder of the host's tree and a
    /// file of its proc do not.
    #[test]
    fn of_the_mounts_no_namespace_of_the_tree_has_only_harmless_ones_pass() {
        let proc = nix::fcntl::open(
            "/proc",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let scratch = ScratchDir::new("handed");
        let (handed, other) = (scratch.0.join("handed"), scratch.0.join("other"));
        std::fs::write(&handed, "").unwrap();
        std::fs::write(&other, "").unwrap();
        let at = |path: &Path| {
            nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).unwrap()
        };
        let handed_fd = at(&handed);
        use std::os::fd::AsRawFd;
        let identities = handed_files(&[handed_fd.as_raw_fd()]).unwrap();
        let outside = Outside::read(&proc, &identities).unwrap();
        let judged = |fd: OwnedFd| {
            let mount = crate::restored_paths::mount_id(&proc, &fd).unwrap();
            outside.refusal(mount, &fd).unwrap()
        };
        let memfd = |flags| nix::sys::memfd::memfd_create("m", flags | MFdFlags::MFD_CLOEXEC);
        assert_eq!(judged(memfd(MFdFlags::empty()).unwrap()), None);
        // Made without reserving a page: a hugetlbfs internal mount's file.
        assert_eq!(judged(memfd(MFdFlags::MFD_HUGETLB).unwrap()), None);
        assert_eq!(judged(handed_fd), None);
        let not_handed = judged(at(&other)).unwrap();
        assert!(
            not_handed.contains("which no mount namespace"),
            "{not_handed}"
        );
        let folder = judged(at(Path::new("/"))).unwrap();
        assert!(folder.contains("which no mount namespace"), "{folder}");
        let knob = judged(at(Path::new("/proc/sys/kernel/core_pattern"))).unwrap();
        assert!(knob.contains("(proc)"), "{knob}");
    }

    /// Threads sharing their process's descriptor table: it is read once, not once per
    /// thread (review restore31 L5): the check reads each thread's working folder and root,
    /// the table, the executable and the mapped files, no more.
    #[test]
    fn a_descriptor_table_threads_share_is_read_once() {
        let script = "exec python3 -c 'import os, sys, threading, time\n\
held = [os.open(\"/dev/null\", os.O_RDONLY) for _ in range(100)]\n\
for _ in range(3):\n\
\x20   threading.Thread(target=time.sleep, args=(1000,)).start()\n\
open(sys.argv[1] + \"/ready\", \"w\").close()\n\
time.sleep(1000)' $1";
        let ready = |_, folder: &Path| folder.join("ready").exists();
        let (child, _scratch) = started("shared-table", script, ready);
        let pid = child.0.id() as i32;
        let held = crate::held::TestGroup::frozen("shared-table", &[pid]).unwrap();
        let namespaces = namespace_of(pid);
        let read = read_tree(pid, held.hold(), (&namespaces, &stdio_of(pid)), MAX_LINKS).unwrap();
        let threads = entries(pid, "task");
        assert_eq!(threads, 4);
        let once = 2 * threads + entries(pid, "fd") + 1 + entries(pid, "map_files");
        assert_eq!(read, once);
    }

    /// A thread with a descriptor table of its own (`unshare(CLONE_FILES)`) holding a folder
    /// of a proc then detached: its table is read, not taken as its process's, and refused.
    #[test]
    fn a_threads_own_descriptor_table_is_read() {
        let in_thread = "\x20   assert ctypes.CDLL(None).unshare(0x400) == 0\n\
\x20   os.open(p + \"/sys/kernel\", os.O_RDONLY)\n";
        let refusal = refusal_of_a_thread_on_a_detached_proc("own-table", in_thread);
        assert!(refusal.contains(" on /sys/kernel, mount"), "{refusal}");
    }

    /// A shared map of huge pages (`MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB`, as PostgreSQL's
    /// `huge_pages` makes), on the kernel's internal hugetlbfs mount: passes (review
    /// restore31 M1: it was refused). Needs a free huge page (`vm.nr_hugepages`); without
    /// one it says so and checks nothing.
    #[test]
    fn a_shared_map_of_huge_pages_passes() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let free = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|n| n.trim().parse::<u64>().ok());
        if free.unwrap_or(0) == 0 {
            eprintln!("no free huge page (vm.nr_hugepages): the huge-page map is not checked");
            return;
        }
        let script = "exec python3 -c 'import ctypes, mmap, sys, time\n\
libc = ctypes.CDLL(None)\n\
libc.mmap.restype = ctypes.c_void_p\n\
flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | 0x40000\n\
kept = libc.mmap(None, 2 << 20, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)\n\
assert kept not in (None, ctypes.c_void_p(-1).value)\n\
ctypes.memset(kept, 1, 1)\n\
open(sys.argv[1] + \"/ready\", \"w\").close()\n\
time.sleep(1000)' $1";
        let ready = |_, folder: &Path| folder.join("ready").exists();
        let (child, _scratch) = started("huge-map", script, ready);
        let pid = child.0.id() as i32;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(maps.contains("/anon_hugepage"), "{maps}");
        assert_eq!(checked("huge-map", &[pid]), Ok(()));
    }
}

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

/// Checks what every thread of the tree under `init` (held still in `hold`) holds against
/// the covered places of `namespaces` (the tree's every mount namespace, already checked);
/// the refusal names the process, what it holds, the mount and the place.
pub(crate) fn check(
    init: i32,
    hold: &crate::held::Hold,
    namespaces: &[Namespace],
) -> Result<(), String> {
    check_within(init, hold, namespaces, MAX_LINKS)
}

/// [`check`], reading at most `max_links` links.
fn check_within(
    init: i32,
    hold: &crate::held::Hold,
    namespaces: &[Namespace],
    max_links: usize,
) -> Result<(), String> {
    let proc = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open /proc: {e}"))?;
    let outside = Outside::read(&proc)?;
    let mut reader = Reader {
        proc,
        judge: Judge::new(namespaces),
        outside,
        read: 0,
        max_links,
        maps_read: HashSet::new(),
    };
    crate::restored::walk_tree(
        init,
        hold,
        |thread| reader.thread(&thread),
        |unchecked| unchecked.to_string(),
    )
}

/// What a file on a mount no namespace of the tree has may be on without a refusal.
struct Outside {
    /// The kernel's shared-memory mount (a memfd's, a SysV segment's), by a memfd this
    /// process makes.
    shared_memory: u64,
    /// The mounts of this process's namespace, the host's (or the engine's), by id: a
    /// descriptor the restore was handed (a container's standard output) lies there.
    host: HashMap<u64, MountEntry>,
}

impl Outside {
    fn read(proc: &OwnedFd) -> Result<Self, String> {
        let memfd = nix::sys::memfd::memfd_create(
            "feather-restore-check",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| format!("cannot make a memfd to learn the shared-memory mount: {e}"))?;
        let shared_memory = crate::restored_paths::mount_id(proc, &memfd)?;
        let table = crate::restored_paths::read_in_proc(proc, "thread-self/mountinfo")?;
        let host = feather_sys::mountinfo::parse(table);
        Ok(Outside {
            shared_memory,
            host: host.into_iter().map(|m| (m.id, m)).collect(),
        })
    }

    /// Why a file `opened` on `mount`, a mount no namespace of the tree has, is refused: it
    /// may be on a proc or sysfs (or a folder of one, or of the host's tree) that nothing
    /// masks or binds (one of a namespace no live task of the tree is in, CRIU's own, or
    /// detached), wherever its path says it is (review fixrestore30 M1: before, only one by
    /// a covered place was refused). Passed: the kernel's internal mounts, and a file not a
    /// folder on a mount of the host's namespace that is neither proc nor sysfs (what the
    /// restore hands the tree: standard input, output and error).
    fn refusal(&self, mount: u64, opened: &OwnedFd) -> nix::Result<Option<String>> {
        let filesystem = nix::sys::statfs::fstatfs(opened)?.filesystem_type().0 as u64;
        let tmpfs = nix::sys::statfs::TMPFS_MAGIC.0 as u64;
        let internal = INTERNAL_FILESYSTEMS.contains(&filesystem)
            || (filesystem == tmpfs && mount == self.shared_memory);
        if internal {
            return Ok(None);
        }
        let folder = nix::sys::stat::fstat(opened)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let host = self.host.get(&mount);
        let kernel_files = |m: &&MountEntry| ["proc", "sysfs"].contains(&m.fs_type.as_str());
        if !folder && host.is_some_and(|m| !kernel_files(&m)) {
            return Ok(None);
        }
        let kind = host.map_or_else(
            || format!("filesystem {filesystem:#x}"),
            |m| m.fs_type.clone(),
        );
        Ok(Some(format!(
            "mount {mount} ({kind}), which no mount namespace of the restored tree has: \
             nothing masks or binds read-only what it reaches"
        )))
    }
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
    Unreadable(nix::Error),
    TooMuch(TooMuchWork),
}

impl From<nix::Error> for Unjudged {
    fn from(e: nix::Error) -> Self {
        Unjudged::Unreadable(e)
    }
}

impl From<TooMuchWork> for Unjudged {
    fn from(e: TooMuchWork) -> Self {
        Unjudged::TooMuch(e)
    }
}

impl Reader<'_> {
    /// One thread: its working folder, root and descriptors; the first live thread of a
    /// thread group also the group's mapped files and executable. Its `/proc` folder opened
    /// once, each read beneath it.
    fn thread(&mut self, thread: &crate::restored::Thread) -> Result<(), String> {
        let tid = crate::restored::thread_id(thread.path);
        let held = |what: &str, e: nix::Error| {
            format!(
                "cannot read {what} of restored process {} (thread {tid}) to check what it \
                 holds: {e}",
                thread.pid
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
            Err(Unjudged::TooMuch(e)) => Err(e.to_string()),
            Err(_) if reader.read > reader.max_links => Err(format!(
                "the restored tree holds more than {} descriptors, working folders, roots, \
                 mapped files and executables, the most the check reads: refused",
                reader.max_links
            )),
            Err(_) if crate::held::has_ended(thread.path) => Ok(()),
            Err(Unjudged::Unreadable(e)) => Err(held(name, e)),
            Ok(Some(why)) => Err(format!(
                "restored process {} (thread {tid}) holds {why}",
                thread.pid
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
        // A group's memory and executable are read through any live thread of it: through a
        // leader that has ended, `map_files` is empty and `exe` unreadable (review restore30
        // L1: before, such a group's mapped files passed unread). `/proc/TID` is the thread's
        // view of them.
        if self.maps_read.contains(&thread.pid) || crate::held::has_ended(thread.path) {
            return Ok(());
        }
        let process = nix::fcntl::openat(&self.proc, tid.as_str(), folder_flags(), Mode::empty())
            .map_err(|e| held("its /proc folder", e))?;
        read(self, &process, "exe", MountOf::Opened)?;
        let maps = open_entries(&process, "map_files").map_err(|e| held("map_files", e))?;
        for map in &maps.names {
            read(self, &maps.folder, map, MountOf::Opened)?;
        }
        self.maps_read.insert(thread.pid);
        Ok(())
    }

    /// The link `name` in `folder` (a thread's, its `fd` or `map_files` folder): why what it
    /// leads to reaches past a cover, or lies on a mount no namespace of the tree has, if it
    /// does. The mount of every absolute path is read.
    fn link(
        &mut self,
        folder: &OwnedFd,
        name: &str,
        mount_of: MountOf,
    ) -> Result<Option<String>, Unjudged> {
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
                    .map_err(|_| nix::Error::EIO)?;
                (mount, Some(opened))
            }
        };
        let why = if self.judge.knows(mount) {
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
        Ok(why.map(|why| format!("{what} on {}, {why}", path.display())))
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
        check(pids[0], held.hold(), &namespace_of(pids[0]))
    }

    fn comm_is(pid: i32, name: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == format!("{name}\n"))
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
        let refusal = check_within(pid, held.hold(), &namespaces, 8).unwrap_err();
        assert!(
            refusal.contains("holds more than 8 descriptors, working folders"),
            "{refusal}"
        );
        assert_eq!(check_within(pid, held.hold(), &namespaces, 1000), Ok(()));
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
        let refusal = checked("detached-proc", &[pid]).unwrap_err();
        assert!(
            refusal.contains(&format!(
                "process {pid} (thread {pid}) holds descriptor 5 on /sys/kernel, mount"
            )) && refusal.contains("which no mount namespace of the restored tree has"),
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
        let script = "set -e; mkdir $1/p; mount -t proc proc $1/p; \
                      exec python3 -c 'import ctypes, os, subprocess, sys, threading, time\n\
d = sys.argv[1]\n\
rooted = threading.Event()\n\
def chrooted():\n\
\x20   assert ctypes.CDLL(None).unshare(0x200) == 0\n\
\x20   os.chroot(d + \"/p\")\n\
\x20   rooted.set()\n\
\x20   time.sleep(1000)\n\
threading.Thread(target=chrooted).start()\n\
rooted.wait()\n\
subprocess.run([\"umount\", \"-l\", d + \"/p\"], check=True)\n\
open(d + \"/ready\", \"w\").close()\n\
time.sleep(1000)' $1";
        let ready = |_, folder: &Path| folder.join("ready").exists();
        let (child, _scratch) = started("thread-root", script, ready);
        let pid = child.0.id() as i32;
        let refusal = checked("thread-root", &[pid]).unwrap_err();
        assert!(
            !refusal.contains(&format!("(thread {pid})"))
                && refusal.contains(" holds its root on ")
                && refusal.contains("which no mount namespace of the restored tree has"),
            "{refusal}"
        );
    }

    /// What a restore hands the tree or the kernel makes for it passes: a memfd (the
    /// shared-memory mount), a file of the host's (standard output on the host's tree); a
    /// folder of the host's tree and a file of its proc do not.
    #[test]
    fn of_the_mounts_no_namespace_of_the_tree_has_only_harmless_ones_pass() {
        let proc =
            nix::fcntl::open("/proc", OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let outside = Outside::read(&proc).unwrap();
        let judged = |fd: OwnedFd| {
            let mount = crate::restored_paths::mount_id(&proc, &fd).unwrap();
            outside.refusal(mount, &fd).unwrap()
        };
        let memfd = nix::sys::memfd::memfd_create("m", nix::sys::memfd::MFdFlags::empty()).unwrap();
        assert_eq!(judged(memfd), None);
        let at = |path: &str| {
            nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).unwrap()
        };
        assert_eq!(judged(at("/etc/hostname")), None);
        let folder = judged(at("/")).unwrap();
        assert!(folder.contains("which no mount namespace"), "{folder}");
        let knob = judged(at("/proc/sys/kernel/core_pattern")).unwrap();
        assert!(knob.contains("(proc)"), "{knob}");
    }
}

//! Creating, joining and signalling processes.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sched::CloneFlags;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::raw::{self, Cloned};
use crate::{Context, Result};

/// Takes the descriptor a parent left open across exec for this process (`--ready-fd` of a
/// keeper, the keeper's socket of a re-executed init). Descriptors 0–2 are never taken.
///
/// # Safety
/// As [`raw::inherited`]: `fd` was left open for this process to take, and nothing else in
/// the process owns it (each number is taken once, at start).
pub unsafe fn inherited_fd(fd: RawFd) -> Result<OwnedFd> {
    if fd < 3 {
        return Err::<OwnedFd, _>(nix::errno::Errno::EBADF).ctx("take inherited descriptor", fd);
    }
    // SAFETY: this function's contract is raw::inherited's, passed on to its caller.
    unsafe { raw::inherited(fd) }.ctx("take inherited descriptor", fd)
}

/// Moves `fd` to descriptor number `at` (close-on-exec), which must be free: a descriptor
/// others find by its number. EBUSY if `at` is taken (it is never closed to make room).
pub fn move_to_free_fd(fd: OwnedFd, at: RawFd) -> Result<OwnedFd> {
    let moved = raw::duplicate_from(fd.as_raw_fd(), at).ctx("F_DUPFD_CLOEXEC", at)?;
    if moved.as_raw_fd() != at {
        return Err::<OwnedFd, _>(nix::errno::Errno::EBUSY).ctx("take descriptor", at);
    }
    Ok(moved)
}

/// The namespaces every VM gets: its own mounts, pids, System V IPC, hostname, network and
/// cgroup view.
pub fn vm_namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP
}

/// A child process held by a pidfd, so that signals and waits can never hit a stranger that
/// reused its pid.
#[derive(Debug)]
pub struct ChildProcess {
    pub pid: Pid,
    pub pidfd: OwnedFd,
}

pub enum Forked {
    Parent(ChildProcess),
    Child,
}

/// Forks into new `namespaces`. With CLONE_NEWPID the child is pid 1 of its namespace.
/// The caller must be single-threaded.
pub fn fork_into(namespaces: CloneFlags) -> Result<Forked> {
    fork_into_cgroup(namespaces, None)
}

/// [`fork_into`], the child starting in the v2 cgroup whose folder `cgroup` is open
/// (`CLONE_INTO_CGROUP`): no move afterwards, which would wait for an RCU grace period.
pub fn fork_into_cgroup(
    namespaces: CloneFlags,
    cgroup: Option<std::os::fd::BorrowedFd>,
) -> Result<Forked> {
    let cgroup = cgroup.map(|fd| fd.as_raw_fd());
    match raw::clone3(namespaces.bits(), cgroup).ctx("clone3", "into new namespaces")? {
        Cloned::Parent { pid, pidfd } => Ok(Forked::Parent(ChildProcess {
            pid: Pid::from_raw(pid),
            pidfd,
        })),
        Cloned::Child => Ok(Forked::Child),
    }
}

/// Plain fork for a single-threaded caller: `Some(pid)` in the parent, `None` in the child.
pub fn fork() -> Result<Option<Pid>> {
    Ok(raw::fork().ctx("fork", "process")?.map(Pid::from_raw))
}

/// Whether the threads `a` and `b` share one descriptor table (kcmp(2), `KCMP_FILES`: one
/// made with `CLONE_FILES` shares its creator's).
pub fn shares_descriptor_table(a: Pid, b: Pid) -> Result<bool> {
    raw::shares_descriptor_table(a.as_raw(), b.as_raw()).ctx("kcmp", a)
}

pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    raw::pidfd_open(pid.as_raw()).ctx("pidfd_open", pid)
}

/// The wait(2) status of the process behind `pidfd` once it ended and was reaped (by whichever
/// process is its parent); `None` while it runs. See [`raw::pidfd_exit_status`].
pub fn exit_status(pidfd: &impl AsFd) -> Result<Option<i32>> {
    raw::pidfd_exit_status(pidfd.as_fd()).ctx("ioctl(PIDFD_GET_INFO)", "process")
}

/// The id of the caller's mount namespace (`NS_GET_MNTNS_ID`, Linux 6.8+), never reused for
/// another namespace; None where the kernel has no such id.
pub fn mount_namespace_id() -> Option<u64> {
    let ns = fs::File::open("/proc/self/ns/mnt").ok()?;
    raw::mount_namespace_id(ns.as_fd()).ok()
}

/// A duplicate of descriptor `fd` of the process behind `pidfd` (pidfd_getfd(2)): the kernel's
/// own object, found by the process's identity, never by a name the process could forge.
pub fn take_fd(pidfd: &impl AsFd, fd: RawFd) -> Result<OwnedFd> {
    raw::pidfd_getfd(pidfd.as_fd().as_raw_fd(), fd).ctx("pidfd_getfd", fd)
}

pub fn signal(pidfd: &impl AsFd, signal: Signal) -> Result<()> {
    raw::pidfd_send_signal(pidfd.as_fd().as_raw_fd(), signal as i32)
        .ctx("pidfd_send_signal", signal)
}

/// Makes the caller not dumpable (`PR_SET_DUMPABLE 0`), and so its children until they
/// exec: a runtime process that enters a container's pid namespace (a container's init before
/// its program, `exec`'s child) would otherwise be open, once it has the container's uid and
/// capabilities, to ptrace and `/proc/PID/{environ,fd,mem,root}` from the container's root —
/// its environment and descriptors are the host's. The kernel makes a process dumpable again
/// at `execve` of an ordinary program, so the container's program is as usual.
pub fn make_undumpable() -> Result<()> {
    nix::sys::prctl::set_dumpable(false).ctx("prctl(PR_SET_DUMPABLE, 0)", "runtime process")
}

/// Moves the caller into every namespace in `namespaces` of the process behind `pidfd`, in one
/// atomic step. A new pid namespace applies to the caller's children, not to the caller.
pub fn join_namespaces(pidfd: &impl AsFd, namespaces: CloneFlags) -> Result<()> {
    // A later fork checks this process's threads in its own /proc, which a joined mount
    // namespace would hide (no other namespace changes what /proc shows this process).
    if namespaces.contains(CloneFlags::CLONE_NEWNS) {
        raw::remember_threads();
    }
    nix::sched::setns(pidfd.as_fd(), namespaces).ctx("setns", "namespaces of a process")
}

/// A descriptor of the mount namespace a short-lived child makes together with the other new
/// `namespaces` (a user namespace, for one), which the caller may join without them
/// ([`join_namespace`]). The child opens its own namespace's file and sends it over a socket:
/// a process may open its own, where the caller's opening the child's (or joining it by a
/// pidfd) would need ptrace access to a child not dumpable as the caller is not. The caller
/// must be single-threaded; the child is reaped before this returns.
pub fn new_mount_namespace(namespaces: CloneFlags) -> Result<OwnedFd> {
    let what = "new mount namespace";
    let (ours, theirs) = crate::fdpass::seqpacket_pair().ctx("socketpair", what)?;
    let namespaces = namespaces | CloneFlags::CLONE_NEWNS;
    let Some(pid) = raw::fork_into_namespaces(namespaces.bits()).ctx("clone", what)? else {
        drop(ours);
        let sent = fs::File::open("/proc/self/ns/mnt")
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|ns| crate::fdpass::send(&theirs, b"mnt", &[ns.as_raw_fd()]));
        raw::exit_now(i32::from(sent.is_err()))
    };
    drop(theirs);
    let mut buffer = [0u8; 8];
    let received = crate::fdpass::receive(&ours, &mut buffer);
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
    let (_, fds) = received.ctx("receive namespace", what)?;
    fds.into_iter()
        .next()
        .ok_or(nix::errno::Errno::ENOENT)
        .ctx("receive namespace (its maker sent none)", what)
}

/// Moves the caller into the namespace whose descriptor is `ns` (a file of /proc/PID/ns), of
/// the type `namespace` names.
pub fn join_namespace(ns: &impl AsFd, namespace: CloneFlags) -> Result<()> {
    if namespace.contains(CloneFlags::CLONE_NEWNS) {
        raw::remember_threads();
    }
    nix::sched::setns(ns.as_fd(), namespace).ctx("setns", "namespace")
}

/// Hides the folders `rels` (paths inside the VM, e.g. another state root) in the mount
/// namespace of the process `pidfd` names, under an empty read-only tmpfs each
/// ([`crate::mount::hide_beneath`]), from a short-lived child: the caller's own mounts stay
/// as they are, and the caller may have other threads (a keeper hides roots registered while
/// its VM started). Folders that are not there are passed over.
pub fn hide_in_mount_namespace_of(pidfd: &impl AsFd, rels: &[std::path::PathBuf]) -> Result<()> {
    refuse_heap_paths("hide in mount namespace", rels)?;
    // SAFETY: the job makes system calls only: open, openat2, fchdir and mount with paths nix
    // keeps on its stack (each under 1 KiB, refused above otherwise). It takes no lock and
    // allocates nothing.
    unsafe {
        in_mount_namespace_of(pidfd, "hide in mount namespace", |root| {
            rels.iter()
                .try_for_each(|rel| crate::mount::hide_beneath(root, rel).map(drop))
        })
    }
}

/// Masks the kernel interfaces `rels` (paths inside the VM, such as `proc/kcore`) in the
/// mount namespace of the process `pidfd` names, as a VM's recipe masks them
/// ([`crate::mount::mask_beneath`]), from a short-lived child as
/// [`hide_in_mount_namespace_of`] does. Paths that are not there are passed over.
pub fn mask_in_mount_namespace_of(pidfd: &impl AsFd, rels: &[std::path::PathBuf]) -> Result<()> {
    refuse_heap_paths("mask in mount namespace", rels)?;
    // One detached bind mount of the host's /dev/null per path that may be a file, made here:
    // open_tree copies only mounts of the caller's own namespace.
    let dev_null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx("open", "/dev/null")?;
    let mut clones = Vec::with_capacity(rels.len());
    for _ in rels {
        // Private: a peer of the host's /dev (shared under systemd) otherwise.
        clones.push(crate::mount::clone_tree_private(&dev_null)?);
    }
    // SAFETY: the job makes system calls only: open, openat2, fstat, fchdir, mount and
    // move_mount with paths nix keeps on its stack (each under 1 KiB, refused above
    // otherwise); the clones were made before the fork. It takes no lock and allocates nothing.
    unsafe {
        in_mount_namespace_of(pidfd, "mask in mount namespace", |root| {
            rels.iter().zip(clones).try_for_each(|(rel, dev_null)| {
                crate::mount::mask_beneath(root, rel, dev_null).map(drop)
            })
        })
    }
}

/// The length from which nix copies a path to the heap, not its stack, to end it with a NUL.
const STACK_PATH: usize = 1024;

/// Refuses, before any fork, a path of `rels` that nix would copy to the heap in the forked
/// child of a threaded process, which must not allocate: the places come from a restored
/// tree's mount points, which its images choose (review rest29 L3: a proc mounted at a path
/// over 1 KiB).
fn refuse_heap_paths(what: &'static str, rels: &[std::path::PathBuf]) -> Result<()> {
    match rels.iter().find(|rel| rel.as_os_str().len() >= STACK_PATH) {
        Some(rel) => Err::<(), _>(nix::errno::Errno::ENAMETOOLONG).ctx(
            what,
            format_args!("a path of {} bytes (1 KiB or more)", rel.as_os_str().len()),
        ),
        None => Ok(()),
    }
}

/// Runs `job` on the root folder of the mount namespace of the process `pidfd` names, in a
/// child forked for it that joins that namespace and exits right after: the caller's own
/// mounts stay as they are, and the caller may have other threads.
///
/// # Safety
/// The caller may have other threads, so the child may only make system calls: `job` must not
/// allocate, take a lock or run anything that does (no `format!`, no `println!`, no `Vec`
/// growth), as after any `fork` of a threaded process.
unsafe fn in_mount_namespace_of(
    pidfd: &impl AsFd,
    what: &'static str,
    job: impl FnOnce(&OwnedFd) -> nix::Result<()>,
) -> Result<()> {
    // SAFETY: the child below makes system calls only (setns, open, then `job`, which the
    // caller vouches for), then exit_now; it runs no exit handler.
    let forked = unsafe { raw::fork_threaded() }.ctx("fork", "mount namespace helper")?;
    let Some(child) = forked else {
        let outcome = nix::sched::setns(pidfd.as_fd(), CloneFlags::CLONE_NEWNS).and_then(|()| {
            let root = nix::fcntl::open(
                "/",
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )?;
            job(&root)
        });
        raw::exit_now(match outcome {
            Ok(()) => 0,
            Err(errno) => errno as i32,
        })
    };
    match nix::sys::wait::waitpid(Pid::from_raw(child), None)
        .ctx("wait for", "mount namespace helper")?
    {
        nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
        nix::sys::wait::WaitStatus::Exited(_, code) => {
            Err::<(), _>(nix::errno::Errno::from_raw(code)).ctx(what, "VM")
        }
        other => Err::<(), _>(nix::errno::Errno::ECHILD)
            .ctx("mount namespace helper ended", format_args!("{other:?}")),
    }
}

/// For a statically linked program (the release front): glibc's NSS lookups of users and
/// groups answered from /etc/passwd and /etc/group only, never by loading the host's NSS
/// modules, which a static glibc cannot safely load (see [`raw::nss_files_only`]).
pub fn nss_files_only() {
    raw::nss_files_only();
}

/// For a program started without Rust's runtime (`#![no_main]`): stdin, stdout and stderr
/// made sure to be open (on /dev/null where closed) and SIGPIPE ignored, as that runtime would
/// (see the front, crates/feather/src/main.rs).
pub fn start_without_rusts_runtime() {
    raw::start_without_rusts_runtime();
}

/// The start time of `pid` in clock ticks since boot, or None if there is no such process.
/// A (pid, start time) pair names one process for the whole uptime of the machine.
pub fn start_ticks(pid: Pid) -> Option<u64> {
    let mut buffer = [0u8; STAT_LINE_MAX];
    let stat = read_whole(&format!("/proc/{pid}/stat"), &mut buffer)?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the kernel has queued a SIGKILL for the process `child` (its `ShdPnd` in
/// `/proc/<pid>/status`, which keeps it while the process is a zombie too): right after its
/// clone, the sign it was killed at birth, before it ran anything, by `cgroup_post_fork` (a
/// clone into a v2 group whose count of kills differs from the cloner's own group's, see
/// `cgroup::V2Entry`), which queues it before clone3 returns. Also true if anything else has
/// killed the child by then. Where the status cannot be read (a `/proc` mounted with hidepid,
/// or not this pid namespace's), whether the child ended of SIGKILL within
/// [`KILLED_AT_BIRTH_WAIT`]: a child killed at birth ends as soon as it is scheduled, a live
/// one waits for its parent's word.
pub fn killed_at_birth(child: &ChildProcess) -> bool {
    let status = fs::File::open(format!("/proc/{}/status", child.pid));
    match status
        .ok()
        .and_then(|file| sigkill_pending_in(std::io::BufReader::new(file)))
    {
        Some(pending) => pending,
        None => ended_of_sigkill_within(child, KILLED_AT_BIRTH_WAIT),
    }
}

/// How long [`killed_at_birth`] waits for a child to end where it cannot read its status.
pub const KILLED_AT_BIRTH_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether the `ShdPnd` line of a `/proc/<pid>/status` has SIGKILL; `None` if no such line can
/// be read. Read line by line: the file has no bound on its length (`Cpus_allowed` and
/// `Mems_allowed` grow with the machine's CPUs and nodes).
fn sigkill_pending_in(status: impl std::io::BufRead) -> Option<bool> {
    for line in status.lines() {
        if let Some(mask) = line.ok()?.strip_prefix("ShdPnd:") {
            let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
            return Some(mask & (1 << (Signal::SIGKILL as u64 - 1)) != 0);
        }
    }
    None
}

/// Whether `child` (not reaped: it stays for the caller to reap) ends of SIGKILL within `wait`.
fn ended_of_sigkill_within(child: &ChildProcess, wait: std::time::Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(child.pidfd.as_fd(), PollFlags::POLLIN)];
    if !matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
        return false;
    }
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    matches!(
        waitid(Id::PIDFd(child.pidfd.as_fd()), flags),
        Ok(WaitStatus::Signaled(_, Signal::SIGKILL, _))
    )
}

/// Waits until the process `pid` that started at `started` (clock ticks since boot, as
/// [`start_ticks`] reads them) has ended, or `deadline` has passed: whether it has ended
/// (also when `pid` names no process, or another one). The end is its pidfd's: the kernel
/// tells a pidfd of a process's end from `exit_notify`, once the exit's work is done
/// (`exit_task_work`): its descriptors closed, its namespaces let go, and the mounts that were
/// then unmounted gone; a lock it held (`flock`) is let go earlier, in that same work.
pub fn await_end(pid: Pid, started: u64, deadline: std::time::Instant) -> Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags};
    let pidfd = match raw::pidfd_open(pid.as_raw()) {
        Ok(pidfd) => pidfd,
        // No such process: ESRCH; the pid is now a thread's, not a process's: ENOENT (EINVAL
        // on older kernels). Either way the recorded process has ended.
        Err(nix::errno::Errno::ESRCH | nix::errno::Errno::ENOENT | nix::errno::Errno::EINVAL) => {
            return Ok(true)
        }
        Err(e) => return Err(e).ctx("pidfd_open", pid),
    };
    // The pidfd pins the process: checked now, it is the one that started then, not a later
    // one that was given its pid.
    if start_ticks(pid) != Some(started) {
        return Ok(true);
    }
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, crate::timed::poll_timeout(left)) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(e).ctx("poll", "pidfd"),
        }
    }
}

/// `host_pid`'s number in the pid namespace one level below this process's (for a keeper, the
/// VM's: what the VM's root calls it, and what CRIU restores), or None if it is gone or has
/// none (a process of this namespace). Not its number in its innermost namespace: a process
/// the VM started in a namespace of its own (`--allow-userns`) has a number there, 1 for its
/// init, that another of the VM's processes has in the VM.
pub fn pid_in_child_namespace(host_pid: Pid) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    // NSpid lists the pid in each namespace from /proc's (this process's) down to its own.
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Room for a whole `/proc/PID/stat` line: 52 fields of at most 20 digits, and a command name
/// of at most 64 bytes escaped.
const STAT_LINE_MAX: usize = 52 * 21 + 64 + 3;

/// A small file read whole into `buffer`, in one read and the one that sees its end (where
/// `read_to_string` grows its buffer from 32 bytes: six reads for a `stat` line), or None if
/// it cannot be read, is not UTF-8 or does not fit.
fn read_whole<'b>(path: &str, buffer: &'b mut [u8]) -> Option<&'b str> {
    use std::io::Read;
    let mut file = fs::File::open(path).ok()?;
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            return None;
        }
        match file.read(&mut buffer[filled..]) {
            Ok(0) => return std::str::from_utf8(&buffer[..filled]).ok(),
            Ok(read) => filled += read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// A process as `ps` in its own pid namespace shows it, read from the host's /proc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// Its pid in its innermost pid namespace (a VM's or a container's).
    pub pid: i32,
    pub host_pid: i32,
    pub uid: u32,
    /// Its command line, or `[name]` for a kernel-less one (a zombie, an exiting process).
    pub command: String,
}

/// `host_pid` described, or None if it is gone.
pub fn describe(host_pid: Pid) -> Option<Described> {
    let status = fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::trim)
    };
    // NSpid lists the pid in each nested namespace, outermost first: the last is its own.
    let pid = field("NSpid:")?.split_whitespace().last()?.parse().ok()?;
    let uid = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
    let cmdline = command_line(host_pid);
    let command = if cmdline.is_empty() {
        format!("[{}]", field("Name:").unwrap_or("?"))
    } else {
        String::from_utf8_lossy(&cmdline)
            .trim_end_matches('\0')
            .replace('\0', " ")
    };
    Some(Described {
        pid,
        host_pid: host_pid.as_raw(),
        uid,
        command,
    })
}

/// The most of a process's command line `describe` reads: a VM's process chooses its own (up
/// to the kernel's ARG_MAX, megabytes), and `feather ps` of a VM with thousands of them must
/// not take the host's memory for it.
const COMMAND_LINE_MAX: u64 = 64 * 1024;

/// The first [`COMMAND_LINE_MAX`] bytes of `pid`'s command line (empty if it is gone).
fn command_line(pid: Pid) -> Vec<u8> {
    use std::io::Read;
    let mut bytes = Vec::new();
    if let Ok(file) = fs::File::open(format!("/proc/{pid}/cmdline")) {
        let _ = file.take(COMMAND_LINE_MAX).read_to_end(&mut bytes);
    }
    bytes
}

/// Whether `pid` is a live process: it exists and has not exited (a zombie, state `Z`, or a
/// dying one, `X`, has no namespaces left to enter or read).
pub fn is_alive(pid: Pid) -> bool {
    !matches!(state(pid), None | Some('Z' | 'X' | 'x'))
}

/// The state letter of process `pid` (`R`, `S`, `T` stopped by a signal, `Z`, …), from its
/// `stat` line; None if there is no such process.
pub fn state(pid: Pid) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Asks the kernel to send `signal` to the caller when its parent dies.
pub fn set_parent_death_signal(signal: Signal) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(signal).ctx("prctl(PR_SET_PDEATHSIG)", signal)
}

/// Closes every descriptor of the caller except stdin, stdout, stderr and `keep`: a VM must not
/// inherit a descriptor of the host side (a lock, a socket, a directory outside its root).
pub fn close_other_fds(keep: &[RawFd]) {
    let _ = close_all_but(keep);
}

/// Closes — not marks close-on-exec — every descriptor of the caller but stdin, stdout, stderr
/// and `keep`, the folder [`raw::remember_threads`] holds included: for a process about to
/// execve a program it finds in a container. The kernel resolves the path given to execve (a
/// PATH entry, a script's `#!` interpreter) *before* it closes close-on-exec descriptors, so a
/// directory of the host still open then is reachable as `/proc/self/fd/N/..` (runc's
/// CVE-2024-21626, attacks 2 and 3). Keep only what cannot be walked (sockets, pipes, a FIFO)
/// and what the program is given. Objects of the caller that own a closed descriptor must
/// never be dropped afterwards: call it after the last fork, right before the execve.
pub fn close_for_exec(keep: &[RawFd]) -> Result<()> {
    raw::forget_threads();
    close_all_but(keep).ctx("close_range", "descriptors before exec")
}

/// Closes every descriptor of the caller but stdin, stdout, stderr, `keep` and the remembered
/// threads folder (while there is one), by number; every gap is tried, the first error told.
fn close_all_but(keep: &[RawFd]) -> std::result::Result<(), nix::errno::Errno> {
    // By number (close_range over the gaps), not from a listing of /proc/self/fd: a caller
    // that joined a container's mount namespace sees the container's /proc, which may list
    // nothing at all, and then nothing would be closed.
    let mut kept: Vec<RawFd> = keep
        .iter()
        .copied()
        .chain(raw::remembered_threads_fd())
        .filter(|fd| *fd > 2)
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let mut result = Ok(());
    let mut first: RawFd = 3;
    for fd in kept {
        if fd > first {
            result = result.and(raw::close_range(first as u32, (fd - 1) as u32));
        }
        first = fd + 1;
    }
    result.and(raw::close_range(first as u32, u32::MAX))
}

/// A [`std::process::Command`] for `program` that passes it its stdin, stdout and stderr
/// only (see [`pass_only`]); a descriptor it needs besides is named with [`pass_only`].
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    pass_only(&mut command, &[]);
    command
}

/// Lets the program `command` will start inherit its stdin, stdout, stderr and `given`,
/// nothing else of this process: not a descriptor some other code (or this process's own
/// starter) left without close-on-exec, not one another thread holds for a moment without it.
/// Every program feather's host side starts is started so, naming what it passes.
pub fn pass_only(command: &mut std::process::Command, given: &[BorrowedFd]) {
    raw::pass_only_on_exec(command, given.iter().map(AsRawFd::as_raw_fd).collect());
}

/// Makes the program `command` starts end (SIGKILL) when the thread calling `spawn` ends, the
/// whole process killed (SIGKILL) included, for a helper that is of no use once its starter is
/// gone and would otherwise live on, adopted by the machine's reaper. The kernel ties the signal
/// to the *thread* that forks, not to its process: the caller starts such a helper from a
/// thread that lives as long as the helper is wanted (a process's main thread), never from a
/// short-lived one, whose end would end the helper at once.
pub fn end_with_starting_thread(command: &mut std::process::Command) {
    raw::end_with_starting_thread_on_exec(command);
}

/// [`end_with_starting_thread`] for a child forked without a [`std::process::Command`] (a
/// keeper's restoring child, which prepares a mount namespace before it execs CRIU): called
/// first thing in the child, with `parent` the pid of the process that forked it, read before
/// the fork. The signal survives the exec. An error (the parent already gone) means the child
/// must end rather than go on unowned.
pub fn end_with_forking_thread(parent: Pid) -> Result<()> {
    raw::end_with_forking_thread(parent.as_raw()).ctx("prctl(PR_SET_PDEATHSIG)", "forked child")
}

/// Starts `command`, a feather program that closes at its own start every descriptor it was
/// not named (feather-keeper's keeper and finisher), handing it `given`: their close-on-exec is
/// cleared for the start only. No hook runs between fork and exec, so the standard library
/// starts the program with posix_spawn (a vfork): with [`pass_only`]'s hook it forks, and this
/// process then pays a copy-on-write fault for every page it writes until the child has
/// exec'd (1.5 ms of every `run --rm`'s hand-over to its finisher, measured). A program another
/// thread starts meanwhile does not get `given`: every host-side start goes through
/// [`pass_only`] or [`command`], whose hook marks them close-on-exec in that child.
pub fn spawn_handing_over(
    command: &mut std::process::Command,
    given: &[BorrowedFd],
) -> std::io::Result<std::process::Child> {
    let mark = |close_on_exec: bool| -> std::io::Result<()> {
        let flags = if close_on_exec {
            nix::fcntl::FdFlag::FD_CLOEXEC
        } else {
            nix::fcntl::FdFlag::empty()
        };
        for fd in given {
            nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_SETFD(flags))?;
        }
        Ok(())
    };
    let spawned = mark(false).and_then(|()| command.spawn());
    mark(true)?;
    spawned
}

/// Marks every descriptor above stderr close-on-exec: run first by a feather program that
/// takes over the descriptors its starter names, so that neither those nor any its starter
/// left open by mistake reach the programs it starts.
pub fn inherited_close_on_exec() -> Result<()> {
    raw::close_range_on_exec(3, u32::MAX).ctx("close_range(CLOSE_RANGE_CLOEXEC)", "3..")
}

/// Clears close-on-exec on `fd`: a descriptor the program about to be exec'd takes over.
pub fn keep_across_exec(fd: &impl AsFd) -> Result<()> {
    nix::fcntl::fcntl(
        fd.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map(drop)
    .ctx("clear close-on-exec on", fd.as_fd().as_raw_fd())
}

/// Gives every signal its default action back, before exec (see [`raw::reset_signal_dispositions`]).
pub fn reset_signal_dispositions() {
    raw::reset_signal_dispositions();
}

/// Blocks `signals` for the caller and returns a descriptor to read them from, so that a
/// single-threaded process can wait for signals, pidfds and sockets in one poll.
pub fn block_signals(signals: &[Signal]) -> Result<SignalFd> {
    let mut set = SigSet::empty();
    for signal in signals {
        set.add(*signal);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).ctx("sigprocmask", "block")?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).ctx("signalfd", "blocked signals")
}

/// The caller's stdin (0), stdout (1) or stderr (2), for as long as the process lives.
pub fn standard_fd(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    raw::standard_fd(fd)
}

/// Makes `fd` the caller's stdin, stdout and stderr.
pub fn redirect_stdio(fd: &impl AsFd) -> Result<()> {
    nix::unistd::dup2_stdin(fd).ctx("dup2", "stdin")?;
    nix::unistd::dup2_stdout(fd).ctx("dup2", "stdout")?;
    nix::unistd::dup2_stderr(fd).ctx("dup2", "stderr")
}

/// Makes `fd` this process's stderr.
pub fn redirect_stderr(fd: &impl AsFd) -> Result<()> {
    nix::unistd::dup2_stderr(fd).ctx("dup2", "stderr")
}

/// The pids of processes whose pid namespace is the one of `pid`, as host pids.
pub fn same_pid_namespace(pid: Pid) -> Vec<Pid> {
    let Ok(target) = fs::read_link(format!("/proc/{pid}/ns/pid")) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|ns| ns == target))
        .map(Pid::from_raw)
        .collect()
}

/// This process's nice value (-20..19).
pub fn nice() -> Result<i32> {
    raw::nice_value().ctx("getpriority", "of this process")
}

/// Sets this process's nice value (lowering it below the present one needs CAP_SYS_NICE).
pub fn set_nice(nice: i32) -> Result<()> {
    raw::set_nice_value(nice).ctx("setpriority", nice)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path of 1 KiB or more is refused before the fork, naming its length: nix would copy
    /// it to the heap in the child (review rest29 L3). Before, the child looked it up.
    #[test]
    fn a_path_of_a_kib_is_refused_before_the_fork() {
        let pidfd = pidfd_open(nix::unistd::getpid()).unwrap();
        let long = vec![std::path::PathBuf::from("a/".repeat(512))];
        for outcome in [
            hide_in_mount_namespace_of(&pidfd, &long),
            mask_in_mount_namespace_of(&pidfd, &long),
        ] {
            let refused = outcome.unwrap_err().to_string();
            assert!(refused.contains("a path of 1024 bytes"), "{refused}");
        }
    }

    /// A status longer than any fixed buffer (`Cpus_allowed` and `Mems_allowed` of a large
    /// host): the SIGKILL queued in `ShdPnd` below them is still seen, where a read into 4096
    /// bytes gave up and the kill at birth went unseen.
    #[test]
    fn a_sigkill_pending_is_seen_past_a_long_status() {
        let long = format!("Name:\tinit\nCpus_allowed:\t{}\n", "ffffffff,".repeat(1200));
        let status = |shdpnd: &str| format!("{long}SigPnd:\t0\nShdPnd:\t{shdpnd}\n");
        assert!(status("0").len() > 8192);
        let pending = |text: String| sigkill_pending_in(std::io::Cursor::new(text));
        assert_eq!(pending(status("0000000000000100")), Some(true));
        assert_eq!(pending(status("0000000000000000")), Some(false));
        assert_eq!(pending(long.clone()), None, "no ShdPnd line: unknown");
    }

    /// Where a child's status cannot be read, a child that ends of SIGKILL is told from one that
    /// lives on, waiting for its parent.
    #[test]
    fn a_child_ended_of_sigkill_is_told_from_one_that_lives() {
        let child = |die: bool| {
            // SAFETY: the child only raises a signal or sleeps, then ends with `exit_now`.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    if die {
                        let _ = nix::sys::signal::raise(Signal::SIGKILL);
                    }
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    raw::exit_now(0);
                }
                nix::unistd::ForkResult::Parent { child } => ChildProcess {
                    pid: child,
                    pidfd: pidfd_open(child).unwrap(),
                },
            }
        };
        let killed = child(true);
        assert!(ended_of_sigkill_within(&killed, KILLED_AT_BIRTH_WAIT));
        let _ = nix::sys::wait::waitpid(killed.pid, None);
        let alive = child(false);
        let seen = ended_of_sigkill_within(&alive, KILLED_AT_BIRTH_WAIT);
        let _ = nix::sys::signal::kill(alive.pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(alive.pid, None);
        assert!(!seen);
    }

    /// A keeper's record may name, later, a thread of another process: pidfd_open then fails
    /// with ENOENT (EINVAL on older kernels), which the wait took for an error, failing every
    /// start of the VM while that thread lived. The recorded process has ended.
    #[test]
    fn a_pid_that_is_now_a_thread_s_names_a_process_that_has_ended() {
        let (told, tid) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            told.send(nix::unistd::gettid()).unwrap();
            let _ = wait.recv();
        });
        let tid = tid.recv().unwrap();
        let started = start_ticks(tid).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let ended = await_end(tid, started, deadline);
        done.send(()).unwrap();
        thread.join().unwrap();
        assert!(ended.unwrap(), "a thread is not the recorded process");
    }

    /// The host pids of the processes `pid` started (waiting until it has started one; a
    /// minute at most, should it have failed).
    fn children_of(pid: u32) -> Vec<i32> {
        for _ in 0..6000 {
            let listed =
                fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            let children: Vec<i32> = listed
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect();
            if !children.is_empty() {
                return children;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{pid} started no process");
    }

    /// Ends `unshare` (which we started) on drop; its child, and so both namespaces, with it
    /// (`--kill-child`).
    struct Started(std::process::Child);

    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_pid_is_numbered_as_the_namespace_below_ours_numbers_it() {
        let nest = ["--pid", "--fork", "--kill-child"];
        let args = [&nest[..], &["unshare"][..], &nest[..], &["sleep", "60"][..]].concat();
        let outer = Started(
            feather_testkit::command_without_stdio("unshare", &args)
                .spawn()
                .unwrap(),
        );
        // The VM's init (pid 1 in the namespace below ours), and a process that init started
        // in a namespace of its own, where it is 1 too.
        let init = children_of(outer.0.id())[0];
        let nested = children_of(init as u32)[0];
        assert_eq!(pid_in_child_namespace(Pid::from_raw(init)), Some(1));
        assert_eq!(pid_in_child_namespace(Pid::from_raw(nested)), Some(2));
        assert_eq!(pid_in_child_namespace(Pid::this()), None);
    }

    /// The descriptors a program started by `start` holds beyond stdio, as it lists them.
    fn descriptors_of_a_program(
        start: impl FnOnce(&mut std::process::Command) -> std::io::Result<std::process::Child>,
    ) -> Vec<RawFd> {
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", "ls /proc/self/fd"])
            .stdout(std::process::Stdio::piped());
        let output = start(&mut command).unwrap().wait_with_output().unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .filter(|fd| *fd > 2)
            .collect()
    }

    /// Row 62: a descriptor left without close-on-exec (as a caller or another thread may)
    /// reaches no program started through `command` or `pass_only` unless named; one named
    /// reaches it, by `pass_only` and by `spawn_handing_over`, and stays close-on-exec here.
    #[test]
    fn a_started_program_gets_only_the_descriptors_it_is_named() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        // Not close-on-exec (what the defence is about), and numbered above what the listing
        // opens itself (`ls` reads /proc/self/fd through the lowest free descriptor).
        let high = |fd: OwnedFd| {
            let moved = raw::duplicate_from(fd.as_raw_fd(), 200).unwrap();
            keep_across_exec(&moved).unwrap();
            moved
        };
        let (leaked, named) = nix::unistd::pipe().unwrap();
        let (leaked, named) = (high(leaked), high(named));
        let close_on_exec = |fd: &OwnedFd| {
            FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap())
                .contains(FdFlag::FD_CLOEXEC)
        };
        let unnamed = descriptors_of_a_program(|c| {
            pass_only(c, &[]);
            c.spawn()
        });
        assert!(!unnamed.contains(&leaked.as_raw_fd()), "{unnamed:?}");
        assert!(!unnamed.contains(&named.as_raw_fd()), "{unnamed:?}");
        let passed = descriptors_of_a_program(|c| {
            pass_only(c, &[named.as_fd()]);
            c.spawn()
        });
        assert!(passed.contains(&named.as_raw_fd()), "{passed:?}");
        assert!(!passed.contains(&leaked.as_raw_fd()), "{passed:?}");
        fcntl(&named, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
        let handed = descriptors_of_a_program(|c| spawn_handing_over(c, &[named.as_fd()]));
        assert!(handed.contains(&named.as_raw_fd()), "{handed:?}");
        assert!(close_on_exec(&named), "still close-on-exec here");
    }

    #[test]
    fn start_ticks_of_self_is_stable_and_of_nobody_is_none() {
        let me = Pid::this();
        assert!(start_ticks(me).is_some());
        assert_eq!(start_ticks(me), start_ticks(me));
        assert_eq!(start_ticks(Pid::from_raw(i32::MAX)), None);
    }

    /// The start time is field 22 of the whole line, also behind a command name that holds
    /// spaces and parentheses (a VM's program chooses its name).
    #[test]
    fn start_ticks_reads_past_a_command_name_with_parentheses() {
        let scratch = feather_testkit::ScratchDir::new("ticks");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let program = dir.join("a) 1 2 (b");
        std::os::unix::fs::symlink("/bin/sleep", &program).unwrap();
        let mut child = std::process::Command::new(&program)
            .arg("10")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let whole = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let expected = feather_testkit::stat::Stat::parse(&whole)
            .unwrap()
            .start_ticks;
        let found = start_ticks(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(whole.contains("(a) 1 2 (b)"), "{whole}");
        assert_eq!(found, Some(expected));
    }

    #[test]
    fn a_long_command_line_is_described_by_its_first_64_kib() {
        // A VM's process chooses its command line; `ps` reads no more of it than this. (One
        // argument may hold at most 128 KiB: two make it longer than what is read.)
        let long = "x".repeat(100 * 1024);
        // The shell waits on its stdin, a pipe: it starts no child that could outlive the test.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read line", &long, &long])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let command = loop {
            // Until the child has run /bin/sh, its command line is this test's.
            let command = describe(pid).expect("the shell runs").command;
            if command.starts_with("/bin/sh") || std::time::Instant::now() > deadline {
                break command;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let start: String = command.chars().take(60).collect();
        assert!(command.starts_with("/bin/sh -c read line xxx"), "{start}");
        assert_eq!(command.len() as u64, COMMAND_LINE_MAX);
    }

    #[test]
    fn a_zombie_is_not_alive() {
        assert!(is_alive(Pid::this()));
        assert!(!is_alive(Pid::from_raw(i32::MAX)));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        // Not reaped yet: it stays a zombie until wait().
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while is_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!is_alive(pid), "an exited, unreaped child is a zombie");
        assert!(start_ticks(pid).is_some(), "a zombie still has its stat");
        child.wait().unwrap();
    }
}

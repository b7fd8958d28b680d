//! Every `unsafe` call of feather-sys. Each wrapper is the smallest safe interface over one
//! system call that nix does not offer safely.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;

/// `struct clone_args` of clone3(2), as the kernel's uapi defines it.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// uapi/linux/sched.h: the child starts in the (v2) cgroup `clone_args.cgroup` refers to.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What clone3 returned: in the parent the child's pid and a pidfd for it, in the child 0.
pub enum Cloned {
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
    Child,
}

/// Forks like fork(2), but into the new namespaces named by `flags`, and returns a pidfd for
/// the child. With a null stack, clone3 continues the child on a copy of the parent's stack,
/// exactly as fork does.
///
/// After a fork of a multi-threaded process the child may only call async-signal-safe
/// functions, and feather's children do much more; so this refuses (`EDEADLK`, "a lock
/// another thread may hold") unless the caller is the process's only thread.
pub fn clone3(namespaces: libc::c_int, cgroup: Option<RawFd>) -> Result<Cloned, Errno> {
    require_single_thread()?;
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: namespaces as u64 | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(cgroup) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cgroup as u64;
    }
    // SAFETY: `args` is a valid, fully initialised clone_args that lives across the call, and its
    // size is passed with it; `cgroup`, if given, is a descriptor the caller holds open across
    // the call (the kernel only reads it). With stack 0 the child resumes here on a private copy of our
    // stack (fork semantics). The kernel writes the pidfd into `pidfd`, which outlives the call.
    // The caller is the only thread (checked above; only it could have started another
    // since), so the child's copy of the address space holds no lock of another thread.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Cloned::Child),
        pid => {
            // SAFETY: the kernel just created this descriptor for us (CLONE_PIDFD); nothing else
            // owns it.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Cloned::Parent {
                pid: pid as libc::pid_t,
                pidfd,
            })
        }
    }
}

/// fork(2) into the new namespaces named by `namespaces` (clone(2) with exit signal SIGCHLD,
/// for a caller whose filter answers clone3 with ENOSYS: the VM's spawner, whose filter can
/// read clone's flags, not clone3's): `Some(pid)` in the parent, `None` in the child. Refuses
/// (`EDEADLK`) unless the caller is the process's only thread, as [`fork`] does.
pub fn fork_into_namespaces(namespaces: libc::c_int) -> Result<Option<libc::pid_t>, Errno> {
    require_single_thread()?;
    let flags = namespaces | libc::SIGCHLD;
    // SAFETY: with stack 0 the child resumes here on a private copy of our stack (fork
    // semantics); no tid, tls or pidfd flag is set, so the kernel reads no other argument. The
    // caller is the only thread (checked above), so the child's copy of the address space
    // holds no lock of another thread.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0, 0, 0, 0) };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        pid => Ok(Some(pid as libc::pid_t)),
    }
}

/// pidfd_open(2): a descriptor that refers to one process for as long as it is held, immune to
/// pid reuse.
pub fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the descriptor is new and owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The exit status (as wait(2) encodes it) of the process behind `pidfd`, once it has ended and
/// been reaped by its parent (`PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`, Linux 6.15); `None`
/// while it runs or before its parent reaped it. Works for a process that is not the caller's
/// child, which waitpid cannot follow.
pub fn pidfd_exit_status(pidfd: BorrowedFd<'_>) -> Result<Option<i32>, Errno> {
    // SAFETY: pidfd_info is plain old data; all zeroes is a valid value.
    let mut info: libc::pidfd_info = unsafe { std::mem::zeroed() };
    info.mask = libc::PIDFD_INFO_EXIT as u64;
    // SAFETY: PIDFD_GET_INFO reads `mask` and writes at most size_of::<pidfd_info>() bytes
    // (the size encoded in the request) into `info`, a live local.
    let ret = unsafe { libc::ioctl(pidfd.as_raw_fd(), libc::PIDFD_GET_INFO, &mut info) };
    if ret < 0 {
        return Err(Errno::last());
    }
    if info.mask & libc::PIDFD_INFO_EXIT as u64 == 0 {
        return Ok(None);
    }
    Ok(Some(info.exit_code))
}

/// The 64-bit id of the mount namespace `ns` (a descriptor of an `ns/mnt` file) refers to
/// (`NS_GET_MNTNS_ID`, Linux 6.8): unique for the system's life, where the namespace's inode
/// number is handed to the next namespace made once it is freed.
pub fn mount_namespace_id(ns: BorrowedFd<'_>) -> Result<u64, Errno> {
    let mut id: u64 = 0;
    // SAFETY: NS_GET_MNTNS_ID writes one u64 (the size encoded in the request) into `id`, a
    // live local, and reads nothing.
    let ret = unsafe { libc::ioctl(ns.as_raw_fd(), libc::NS_GET_MNTNS_ID, &mut id) };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(id)
}

/// kcmp(2) with `KCMP_FILES`: whether the tasks `a` and `b` (thread ids of the caller's pid
/// namespace) share one descriptor table.
pub fn shares_descriptor_table(a: libc::pid_t, b: libc::pid_t) -> Result<bool, Errno> {
    /// uapi/linux/kcmp.h.
    const KCMP_FILES: libc::c_int = 2;
    // SAFETY: kcmp takes five integers (the indices are unused with KCMP_FILES) and returns
    // 0, 1, 2, 3 or -1; it reads and writes no memory of ours.
    let ordered = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILES, 0, 0) };
    Errno::result(ordered).map(|order| order == 0)
}

/// pidfd_getfd(2): a duplicate, in the caller, of descriptor `fd` of the process behind `pidfd`
/// (close-on-exec, as the kernel always makes it). The duplicate refers to the same open file
/// as the target's descriptor: what the kernel holds, not anything the target could describe.
pub fn pidfd_getfd(pidfd: RawFd, fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_getfd takes three integers (flags must be 0) and returns a new descriptor
    // or -1; it reads and writes no memory of ours.
    let duplicate = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
    if duplicate < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just installed this descriptor in our table; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate as RawFd) })
}

/// TIOCGPTPEER: opens the slave of the pseudo-terminal master `master` (read-write, no
/// controlling terminal, close-on-exec) without looking up any path.
pub fn pty_peer(master: RawFd) -> Result<OwnedFd, Errno> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes its open flags as an integer argument and returns a new
    // descriptor or -1; it reads and writes no memory of ours.
    let peer = unsafe { libc::ioctl(master, libc::TIOCGPTPEER, flags) };
    if peer < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the ioctl just opened this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(peer) })
}

/// Takes `fd` as a pseudo-terminal master, after the kernel confirmed it is one (TIOCGPTN
/// answers only on a master).
pub fn pty_master(fd: OwnedFd) -> Result<nix::pty::PtyMaster, Errno> {
    use std::os::fd::AsRawFd;
    let mut number: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int into the valid, exclusively borrowed `number`.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut number) })?;
    // SAFETY: the kernel just answered TIOCGPTN on `fd`, which only a master does.
    Ok(unsafe { nix::pty::PtyMaster::from_owned_fd(fd) })
}

/// pidfd_send_signal(2): signals exactly the process the pidfd refers to.
pub fn pidfd_send_signal(pidfd: RawFd, signal: libc::c_int) -> Result<(), Errno> {
    // SAFETY: plain integers and a null siginfo, which the kernel fills in itself.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// fork(2); refused unless the caller is the process's only thread (see [`clone3`]).
pub fn fork() -> Result<Option<libc::pid_t>, Errno> {
    require_single_thread()?;
    // SAFETY: the caller is the process's only thread (checked above; only it could have
    // started another since), so no other thread can hold a lock the child would inherit, and
    // fork_threaded's contract on the child holds whatever it does.
    unsafe { fork_threaded() }
}

/// fork(2) from a process that may have other threads (a keeper with its port forwarders and
/// broker): `Some(pid)` in the parent, `None` in the child.
///
/// # Safety
/// Until the child execs or ends with [`exit_now`], it may only make async-signal-safe calls:
/// system calls with arguments prepared before the fork (nix's paths under 1 KiB live on the
/// stack), no lock another thread may hold (stdio, a `Mutex`), no exit handlers.
pub unsafe fn fork_threaded() -> Result<Option<libc::pid_t>, Errno> {
    // SAFETY: fork itself has no memory-safety precondition; what the child may do after it
    // in a process of several threads is this function's contract, passed to its caller.
    match unsafe { libc::fork() } {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// This process's folder of threads in its own /proc, opened by [`remember_threads`] before
/// the process joins another mount namespace (`feather exec -t`, `feather-oci exec`), whose
/// /proc may not show it at all; -1 when none is held. A number, not an `OwnedFd`: a child
/// about to exec a container's program closes it ([`forget_threads`]), which a `OnceLock`
/// could not let go of.
static TASKS: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Opens this process's folder of threads while it still sees its own /proc: call it before
/// joining another mount namespace.
pub fn remember_threads() {
    use std::os::fd::IntoRawFd;
    use std::sync::atomic::Ordering;
    if TASKS.load(Ordering::Acquire) >= 0 {
        return;
    }
    if let Ok(fd) = open_tasks() {
        let fd = fd.into_raw_fd();
        if TASKS
            .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: `fd` was just opened here and handed to no one: another thread stored its
            // own first, so this one is still solely ours to close.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// The descriptor [`remember_threads`] keeps, which closing "every other descriptor" must keep.
pub fn remembered_threads_fd() -> Option<RawFd> {
    let fd = TASKS.load(std::sync::atomic::Ordering::Acquire);
    (fd >= 0).then_some(fd)
}

/// Closes the folder [`remember_threads`] opened, for good: it is a directory of the host's
/// /proc, and a program exec'd while it is open can be found through `/proc/self/fd/N/..`
/// (the kernel resolves the path given to execve, and a script's interpreter, before it
/// closes close-on-exec descriptors). Only a fork needs the folder; call this after the last.
pub fn forget_threads() {
    let fd = TASKS.swap(-1, std::sync::atomic::Ordering::AcqRel);
    if fd >= 0 {
        // SAFETY: the number was TASKS's own descriptor, and the swap took it out: no later
        // reader of TASKS is handed it, so closing it here closes nothing anyone still uses.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

fn open_tasks() -> nix::Result<std::os::fd::OwnedFd> {
    nix::fcntl::open(
        "/proc/self/task",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// A new descriptor of the folder [`remember_threads`] opened, if it is still held: reopened
/// by number rather than borrowed as an object, since [`forget_threads`] may close it (it is
/// called only by a process about to exec, after its last fork).
fn reopen_remembered_threads() -> Option<nix::Result<OwnedFd>> {
    remembered_threads_fd().map(reopen_folder)
}

/// `openat(folder, ".")`: a new descriptor of the folder numbered `folder`.
fn reopen_folder(folder: RawFd) -> nix::Result<OwnedFd> {
    // SAFETY: openat takes a NUL-terminated path (a literal here) and plain integers; it
    // touches no other memory of the process (a number closed meanwhile gives EBADF).
    let opened = Errno::result(unsafe {
        libc::openat(
            folder,
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: openat succeeded: `opened` is a fresh descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(opened) })
}

/// Makes fork and clone3 safe by construction: they go on only in a process of one thread.
fn require_single_thread() -> Result<(), Errno> {
    // The kernel's count of this process's threads: one entry per thread in /proc/self/task,
    // or, once the process joined another mount namespace, in the folder it remembered.
    let tasks = match open_tasks() {
        Ok(fd) => fd,
        Err(errno) => reopen_remembered_threads().unwrap_or(Err(errno))?,
    };
    let mut tasks = nix::dir::Dir::from_fd(tasks)?;
    let threads = tasks
        .iter()
        .flatten()
        .filter(|entry| !matches!(entry.file_name().to_bytes(), b"." | b".."))
        .count();
    if threads == 1 {
        Ok(())
    } else {
        Err(Errno::EDEADLK)
    }
}

/// Waits, up to `limit`, until the caller is the process's only thread again: a thread that
/// was joined has returned from its work but is still counted until it has finished its exit
/// in the kernel, which a fork right after the join would see (and refuse, see
/// [`require_single_thread`]).
pub fn await_single_thread(limit: std::time::Duration) -> Result<(), Errno> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match require_single_thread() {
            Err(Errno::EDEADLK) if std::time::Instant::now() < deadline => std::thread::yield_now(),
            done => return done,
        }
    }
}

/// Ends the calling process at once with `code`, running no exit handler: for a forked child,
/// whose exit must not flush or tear down anything it shares with its parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) takes a plain integer and never returns; it touches no memory of the
    // process, so no Rust invariant can be broken by calling it at any point.
    unsafe { libc::_exit(code) }
}

/// What Rust's runtime does before `main` that a program started without it (`#![no_main]`:
/// the front, crates/feather/src/main.rs) must still do. Each of stdin, stdout and stderr that
/// is closed is opened on /dev/null, so that no file the program opens is taken for one of them
/// ([`standard_fd`] relies on it); SIGPIPE is ignored, so that a write to a pipe whose reader
/// is gone is an `EPIPE` error the program handles, not a silent death. Aborts if /dev/null
/// cannot be opened, as the runtime does.
pub fn start_without_rusts_runtime() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    loop {
        // SAFETY: poll reads and writes the three entries of `fds` and nothing else; their
        // count is given. A zero timeout returns at once.
        if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } != -1 {
            break;
        }
        if Errno::last() == Errno::EINTR {
            continue;
        }
        // As the runtime: where poll cannot tell (no memory, too many descriptors), ask each.
        for entry in &mut fds {
            // SAFETY: F_GETFD reads a descriptor's flags; any number is accepted (EBADF).
            let closed = unsafe { libc::fcntl(entry.fd, libc::F_GETFD) } == -1
                && Errno::last() == Errno::EBADF;
            entry.revents = if closed { libc::POLLNVAL } else { 0 };
        }
        break;
    }
    for _closed in fds.iter().filter(|e| e.revents & libc::POLLNVAL != 0) {
        // open(2) takes the lowest free number: the closed ones in order.
        match nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::empty(),
        ) {
            // Kept for the process's life: it is stdin, stdout or stderr now.
            Ok(null) => drop(std::os::fd::IntoRawFd::into_raw_fd(null)),
            Err(_) => std::process::abort(),
        }
    }
    // SAFETY: SIG_IGN installs no handler, so nothing runs in signal context; the previous
    // disposition is not needed.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
}

/// The NSS databases a statically linked program (the release front, scripts/build-release)
/// may look up: each is served by glibc's built-in "files" module alone (/etc/passwd,
/// /etc/group). scripts/build-release fails the build if the front links a lookup in another.
pub const NSS_FILES_ONLY: [&std::ffi::CStr; 2] = [c"passwd", c"group"];

extern "C" {
    /// glibc's <nss.h>: overrides nsswitch.conf's line for one database in this process.
    fn __nss_configure_lookup(
        database: *const libc::c_char,
        services: *const libc::c_char,
    ) -> libc::c_int;
}

/// Makes glibc answer every NSS lookup of [`NSS_FILES_ONLY`] from its built-in "files" module,
/// whatever nsswitch.conf names: a static glibc would otherwise dlopen the host's modules
/// (libnss_systemd, libnss_sss, …), built against libc.so.6, into a process that has its own
/// libc; that second libc crashes (libnss_systemd does, in getpwuid_r). "files" and "dns" are
/// built into glibc since 2.34 and load nothing. Call it while the process has one thread.
pub fn nss_files_only() {
    for database in NSS_FILES_ONLY {
        // SAFETY: both arguments are NUL-terminated strings that outlive the call, which copies
        // them; glibc takes its NSS lock. It fails (-1) only for an unknown database or no
        // memory, and then nsswitch.conf stays in force: the lookup it would serve is reachable
        // only from `~` completion with HOME unset, and scripts/build-release guards the set.
        let _ = unsafe { __nss_configure_lookup(database.as_ptr(), c"files".as_ptr()) };
    }
}

/// `struct sigaction` as the kernel's rt_sigaction(2) takes it on x86-64 and aarch64.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Restores the default action of every catchable signal, the real-time ones glibc reserves for
/// itself (32, 33) included. Rust's runtime ignores SIGPIPE, and a parent may have ignored
/// others; a program started by plain exec would inherit that and misbehave.
pub fn reset_signal_dispositions() {
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a valid kernel sigaction for SIG_DFL (no handler, no restorer
        // needed), the old action pointer is null, and the mask size is the kernel's 8 bytes.
        // Only this process's signal table changes; it is about to exec.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8,
            )
        };
    }
}

/// Makes `fd`, a terminal, the controlling terminal of the calling session leader.
pub fn set_controlling_terminal(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal from another session).
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}

pub fn window_size(fd: RawFd) -> Result<libc::winsize, Errno> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the valid, exclusively borrowed `size`.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) })?;
    Ok(size)
}

pub fn set_window_size(fd: RawFd, size: &libc::winsize) -> Result<(), Errno> {
    // SAFETY: TIOCSWINSZ reads one winsize from the valid `size`.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, size) }).map(drop)
}

/// Sets the flags of a network interface (SIOCSIFFLAGS) through a socket.
pub fn set_interface_flags(socket: RawFd, name: &str, up: bool) -> Result<(), Errno> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the valid, NUL-terminated request.
    Errno::result(unsafe { libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request) })?;
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    let flags = unsafe { &mut request.ifr_ifru.ifru_flags };
    // Reading the flags takes no lock; setting them takes the host-wide RTNL, which other
    // namespaces' changes hold (often for milliseconds): an interface already as wanted (the
    // loopback of a namespace made ahead, feather_net::pool) is left alone.
    if (*flags & libc::IFF_UP as libc::c_short != 0) == up {
        return Ok(());
    }
    if up {
        *flags |= libc::IFF_UP as libc::c_short;
    } else {
        *flags &= !(libc::IFF_UP as libc::c_short);
    }
    // SAFETY: as above, with the flags changed.
    Errno::result(unsafe { libc::ioctl(socket, libc::SIOCSIFFLAGS, &request) }).map(drop)
}

/// seccomp(SECCOMP_SET_MODE_FILTER): installs a classic-BPF filter on the calling thread and
/// every child it makes from now on. Unlike the usual helpers it does not set no_new_privs
/// first: the caller holds CAP_SYS_ADMIN, which the kernel accepts instead, so set-uid programs
/// keep working inside a VM (see feather-confine's seccomp module).
pub fn seccomp_set_mode_filter(program: &[libc::sock_filter]) -> Result<(), Errno> {
    let len = u16::try_from(program.len()).map_err(|_| Errno::E2BIG)?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `len` valid instructions in `program`, which outlives the call;
    // the kernel copies the program and keeps no pointer into our memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    Errno::result(ret).map(drop)
}

/// PTRACE_SECCOMP_GET_FILTER of <linux/ptrace.h>, which libc does not name.
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

/// One ptrace request that passes no pointer (`data` is a plain value).
fn ptrace_plain(request: libc::c_uint, tid: libc::pid_t, data: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: SEIZE, INTERRUPT and DETACH read `addr` (null) and `data` as values, never as
    // pointers into our memory.
    let ret = unsafe { libc::ptrace(request, tid, std::ptr::null_mut::<libc::c_void>(), data) };
    Errno::result(ret).map(drop)
}

/// ptrace(PTRACE_SEIZE, tid): the caller becomes the thread's tracer; it keeps running (or
/// stopped) as it was.
pub fn ptrace_seize(tid: libc::pid_t) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_SEIZE, tid, 0)
}

/// ptrace(PTRACE_INTERRUPT, tid): a seized thread that runs stops for its tracer.
pub fn ptrace_interrupt(tid: libc::pid_t) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_INTERRUPT, tid, 0)
}

/// ptrace(PTRACE_DETACH, tid, 0, 0): the thread goes back to what it was doing (a thread of a
/// stopped group stays stopped).
pub fn ptrace_detach(tid: libc::pid_t) -> Result<(), Errno> {
    ptrace_plain(libc::PTRACE_DETACH, tid, 0)
}

/// ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index): the program of the thread's seccomp filter
/// `index` (0 the first installed), as it was installed. The thread must be in a ptrace stop of
/// the caller's; the caller needs CAP_SYS_ADMIN and no seccomp filter of its own.
pub fn ptrace_seccomp_filter(
    tid: libc::pid_t,
    index: u64,
) -> Result<Vec<libc::sock_filter>, Errno> {
    let request = PTRACE_SECCOMP_GET_FILTER;
    // SAFETY: with a null buffer the kernel only returns the program's length.
    let len = unsafe {
        libc::ptrace(
            request,
            tid,
            index as *mut libc::c_void,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    let len = usize::try_from(Errno::result(len)?).map_err(|_| Errno::EINVAL)?;
    let empty = libc::sock_filter {
        code: 0,
        jt: 0,
        jf: 0,
        k: 0,
    };
    let mut program = vec![empty; len];
    // SAFETY: `program` holds `len` instructions, the length the kernel gave for this filter
    // (a thread's filters are immutable and it adds none while stopped under us, so the kernel
    // writes that same length); it outlives the call.
    let written = unsafe {
        libc::ptrace(
            request,
            tid,
            index as *mut libc::c_void,
            program.as_mut_ptr(),
        )
    };
    let written = usize::try_from(Errno::result(written)?).map_err(|_| Errno::EINVAL)?;
    program.truncate(written);
    Ok(program)
}

/// landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION): the Landlock ABI version
/// of the running kernel, or the errno (ENOSYS: not built in; EOPNOTSUPP: disabled at boot).
pub fn landlock_abi_version() -> Result<i64, Errno> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer and size 0 the call only reports the version; it
    // reads and writes no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    Errno::result(ret)
}

/// sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): starts writing the file's dirty pages out
/// and returns without waiting for them (nix does not offer it).
pub fn start_writeback(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: the call takes a descriptor and three integers; it reads and writes no memory of
    // ours, and `fd` is open for the duration of the borrow.
    let ret = unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    Errno::result(ret).map(drop)
}

/// uapi/asm-generic/fcntl.h (nix and libc's glibc targets do not export these): the signal a
/// file's owner is sent, and the owner set to one thread.
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

/// `struct f_owner_ex` of uapi/asm-generic/fcntl.h.
#[repr(C)]
struct OwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// fcntl(F_SETSIG, `signal`), then fcntl(F_NOTIFY, `events`): dnotify on the folder `dir`,
/// each change signalled to the owner the kernel sets, the calling thread's process (its
/// struct pid taken as the process's), until [`own_folder_changes`] narrows it. The signal is
/// set first: one sent before the owner is narrowed is already `signal`.
pub fn notify_folder_changes(
    dir: BorrowedFd<'_>,
    events: libc::c_int,
    signal: libc::c_int,
) -> Result<(), Errno> {
    // SAFETY: F_SETSIG takes an integer argument; it reads and writes no memory of ours, and
    // `dir` is open for the duration of the borrow.
    Errno::result(unsafe { libc::fcntl(dir.as_raw_fd(), F_SETSIG, signal) })?;
    // SAFETY: F_NOTIFY takes an integer argument (the event bits); as above.
    Errno::result(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_NOTIFY, events) }).map(drop)
}

/// fcntl(F_SETOWN_EX, thread `tid`): the changes of the folder `dir` (watched by
/// [`notify_folder_changes`]) signalled to that thread only.
pub fn own_folder_changes(dir: BorrowedFd<'_>, tid: libc::pid_t) -> Result<(), Errno> {
    let owner = OwnerEx {
        kind: F_OWNER_TID,
        pid: tid,
    };
    // SAFETY: F_SETOWN_EX reads one `struct f_owner_ex` through the pointer, which points to
    // `owner`, alive and laid out as the kernel's (repr(C), two ints) for the whole call; it
    // writes no memory of ours, and `dir` is open for the duration of the borrow.
    let ret = unsafe { libc::fcntl(dir.as_raw_fd(), F_SETOWN_EX, &owner as *const OwnerEx) };
    Errno::result(ret).map(drop)
}

/// A descriptor this process inherited from its parent for one use, owned from now on.
/// EBADF if `fd` is not open.
///
/// # Safety
/// `fd` must have been left open across exec for this process to take, and nothing else in
/// the process may own it: each number is taken at most once, before anything could have
/// wrapped it. Otherwise two owners would close it, the second closing whatever reused the
/// number.
pub unsafe fn inherited(fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: F_GETFD only reads the flags of whatever `fd` names; it fails with EBADF if
    // nothing.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the descriptor is open (F_GETFD succeeded) and, by this function's contract, no
    // other value owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fcntl(F_DUPFD_CLOEXEC): a close-on-exec duplicate of `fd` at the lowest free number not
/// below `lowest`, owned.
pub fn duplicate_from(fd: RawFd, lowest: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer argument and returns a new descriptor or -1; it
    // reads and writes no memory of ours.
    let duplicate = Errno::result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, lowest) })?;
    // SAFETY: the kernel just installed this descriptor in our table; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

/// The process's own stdin (0), stdout (1) or stderr (2), borrowed for the process's life.
/// Panics on any other number.
pub fn standard_fd(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    assert!(
        (0..=2).contains(&fd),
        "descriptor {fd} is not stdin, stdout or stderr"
    );
    // SAFETY: descriptors 0-2 are open from the start of the process (Rust's runtime opens
    // /dev/null on any that was closed, and `start_without_rusts_runtime` where it does not run) and feather never closes them, only dup2s onto them,
    // which keeps the number open.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// accept4(2): the new connection of a listening socket, owned.
pub fn accept(listener: RawFd, flags: nix::sys::socket::SockFlag) -> Result<OwnedFd, Errno> {
    let fd = nix::sys::socket::accept4(listener, flags)?;
    // SAFETY: accept4 just created this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// read(2) once from `fd` into the unused capacity of `buffer`, at most `most` bytes, which are
/// appended to its contents: the bytes read, 0 at the end of the file.
pub fn read_appending(fd: RawFd, buffer: &mut Vec<u8>, most: usize) -> Result<usize, Errno> {
    buffer.reserve(most);
    let spare = buffer.spare_capacity_mut();
    let count = most.min(spare.len());
    // SAFETY: the kernel writes at most `count` bytes at `spare`, memory this Vec owns beyond
    // its contents.
    let read = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), count) };
    let read = usize::try_from(Errno::result(read)?).map_err(|_| Errno::EIO)?;
    // SAFETY: the read above initialised these `read` bytes (at most `count`, within the
    // capacity), right after the contents.
    unsafe { buffer.set_len(buffer.len() + read) };
    Ok(read)
}

/// recvmsg(2) of one message into `buffer`, with room for up to 64 descriptors passed by
/// SCM_RIGHTS (installed close-on-exec; more are closed by the kernel, and the message marked
/// truncated): the length received and the descriptors, owned.
pub fn receive_with_fds(socket: RawFd, buffer: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), Errno> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut control = nix::cmsg_space!([RawFd; 64]);
    let mut iov = [std::io::IoSliceMut::new(buffer)];
    let received = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in received.cmsgs()? {
        if let ControlMessageOwned::ScmRights(passed) = message {
            // SAFETY: SCM_RIGHTS installed these descriptors in this process during the
            // recvmsg above; nothing else owns them.
            fds.extend(
                passed
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((received.bytes, fds))
}

/// The hardware (MAC) address of interface `name`, asked on any socket of the caller's network
/// namespace (SIOCGIFHWADDR).
pub fn hardware_address(socket: RawFd, name: &str) -> Result<[u8; 6], Errno> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the hardware address of the valid, NUL-terminated request.
    Errno::result(unsafe { libc::ioctl(socket, libc::SIOCGIFHWADDR, &mut request) })?;
    // SAFETY: the union member written by SIOCGIFHWADDR is ifru_hwaddr.
    let address = unsafe { request.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(address.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(mac)
}

/// Sends `payload` of link-layer protocol `protocol` (host order) from an `AF_PACKET`,
/// `SOCK_DGRAM` socket on interface `ifindex` to hardware address `destination`: the kernel
/// adds the Ethernet header, with the interface's own address as the source.
pub fn send_link_layer(
    socket: RawFd,
    ifindex: u32,
    protocol: u16,
    destination: [u8; 6],
    payload: &[u8],
) -> Result<(), Errno> {
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as libc::c_ushort;
    address.sll_protocol = protocol.to_be();
    address.sll_ifindex = ifindex as libc::c_int;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&destination);
    // SAFETY: `payload` is valid for its length and `address` is a fully initialised
    // sockaddr_ll whose size is passed with it; both outlive the call.
    let sent = unsafe {
        libc::sendto(
            socket,
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    Errno::result(sent).map(drop)
}

/// `struct fsxattr` of FS_IOC_FSGETXATTR/FS_IOC_FSSETXATTR, as the kernel's uapi defines it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FsXattr {
    pub xflags: u32,
    pub extsize: u32,
    pub nextents: u32,
    pub projid: u32,
    pub cowextsize: u32,
    pub pad: [u8; 8],
}

/// `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
/// `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;

/// `_IOR(0x15, 0, struct fsuuid2)`: merged for Linux 6.9 (2024; some distributions backport
/// it); ENOTTY on kernels without it.
const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;

/// FS_IOC_GETFSUUID: the volume UUID of the filesystem `fd` is on (its length, then up to 16
/// bytes); ENOTTY where the filesystem gives none.
pub fn volume_uuid(fd: BorrowedFd) -> Result<Vec<u8>, Errno> {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    let mut answer = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: `answer` is a writable struct fsuuid2 of the size the request encodes; the kernel
    // fills it in and keeps no pointer to it.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            FS_IOC_GETFSUUID,
            &mut answer as *mut FsUuid2,
        )
    };
    Errno::result(ret)?;
    Ok(answer.uuid[..usize::from(answer.len).min(16)].to_vec())
}

/// FS_IOC_FSGETXATTR: the extended attributes (project id, xflags) of the file `fd` is open on.
pub fn fs_get_xattr(fd: BorrowedFd) -> Result<FsXattr, Errno> {
    let mut attr = FsXattr::default();
    // SAFETY: `attr` is a writable struct fsxattr of the size the request encodes; the kernel
    // fills it in and keeps no pointer to it.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut attr as *mut FsXattr) };
    Errno::result(ret).map(|_| attr)
}

/// FS_IOC_FSSETXATTR: sets the extended attributes of the file `fd` is open on.
pub fn fs_set_xattr(fd: BorrowedFd, attr: &FsXattr) -> Result<(), Errno> {
    // SAFETY: `attr` is an initialised struct fsxattr of the size the request encodes; the kernel
    // only reads it during the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, attr as *const FsXattr) };
    Errno::result(ret).map(drop)
}

/// quotactl_fd(2) with a command whose argument is a `struct if_dqblk` (Q_GETQUOTA,
/// Q_SETQUOTA) for quota `id` of the filesystem holding `fd`.
pub fn quotactl_fd_dqblk(
    fd: BorrowedFd,
    cmd: libc::c_int,
    id: u32,
    block: &mut libc::dqblk,
) -> Result<(), Errno> {
    // SAFETY: `block` is a valid, writable struct if_dqblk (libc's dqblk has its layout) that
    // outlives the call; Q_GETQUOTA writes it, Q_SETQUOTA reads it, neither keeps the pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd(),
            cmd,
            id,
            block as *mut libc::dqblk,
        )
    };
    Errno::result(ret).map(drop)
}

/// `struct if_dqinfo` of Q_GETINFO.
#[repr(C)]
#[derive(Default)]
struct DqInfo {
    bgrace: u64,
    igrace: u64,
    flags: u32,
    valid: u32,
}

/// quotactl_fd(2) Q_GETINFO for quota type `kind`: succeeds only when the filesystem holding
/// `fd` has that quota type on (ESRCH when it is off, ENOSYS when it has no quotas at all).
pub fn quotactl_fd_getinfo(fd: BorrowedFd, kind: libc::c_int) -> Result<(), Errno> {
    let mut info = DqInfo::default();
    // SAFETY: `info` is a writable struct if_dqinfo that outlives the call; the kernel writes it
    // and keeps no pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd(),
            libc::QCMD(libc::Q_GETINFO, kind),
            0,
            &mut info as *mut DqInfo,
        )
    };
    Errno::result(ret).map(drop)
}

/// statx(2) of the descriptor itself (`AT_EMPTY_PATH`): the unique id of the mount it is on
/// (STATX_MNT_ID_UNIQUE, never reused while the system runs), or ENODATA if the kernel did not
/// report one.
pub fn unique_mount_id(fd: RawFd) -> Result<u64, Errno> {
    mount_id_of(fd, libc::STATX_MNT_ID_UNIQUE)
}

/// What a name's descriptor is, as statx(2) tells it without asking its filesystem
/// ([`entry_unasked`]).
#[derive(Clone, Copy, Debug)]
pub struct EntryUnasked {
    /// Its type and mode bits (`st_mode`).
    pub mode: u32,
    pub uid: u32,
    /// The id of its mount as mountinfo lists it (STATX_MNT_ID).
    pub mount_id: u64,
}

/// statx(2) of the descriptor itself (a link not followed, no automount triggered), with
/// `AT_STATX_DONT_SYNC`: its type, mode, owner and mount. FUSE, NFS and CIFS answer that from
/// what they hold, so a server that never answers is not waited on; 9p without a cache asks
/// its server anyway and gfs2 and ocfs2 take cluster locks, so a caller judges the mount
/// first (`mountinfo::mount_id_of_fd`). ENODATA if the kernel did not report all of them.
pub fn entry_unasked(fd: RawFd) -> Result<EntryUnasked, Errno> {
    let mask = libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_UID | libc::STATX_MNT_ID;
    let stx = statx_of(fd, mask, libc::AT_STATX_DONT_SYNC | libc::AT_NO_AUTOMOUNT)?;
    if stx.stx_mask & mask != mask {
        return Err(Errno::ENODATA);
    }
    Ok(EntryUnasked {
        mode: u32::from(stx.stx_mode),
        uid: stx.stx_uid,
        mount_id: stx.stx_mnt_id,
    })
}

/// The mount id `fd` is on, of the kind `mask` asks (`STATX_MNT_ID` or `STATX_MNT_ID_UNIQUE`).
fn mount_id_of(fd: RawFd, mask: u32) -> Result<u64, Errno> {
    Ok(statx_of(fd, mask, 0)?.stx_mnt_id)
}

/// statx(2) of the descriptor itself (a link not followed) for `mask`, with `flags`; ENODATA
/// if the kernel did not report what `mask` asks.
fn statx_of(fd: RawFd, mask: u32, flags: i32) -> Result<libc::statx, Errno> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `fd` is borrowed for the call; the empty path is a valid NUL-terminated string;
    // `stx` is writable memory of exactly the size of `struct statx`, which the kernel fills.
    let ret = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | flags,
            mask,
            stx.as_mut_ptr(),
        )
    };
    Errno::result(ret)?;
    // SAFETY: statx succeeded and filled the struct (it was zeroed before, so every field is
    // initialised either way).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & mask == 0 {
        return Err(Errno::ENODATA);
    }
    Ok(stx)
}

/// name_to_handle_at(2) of the descriptor itself (`AT_EMPTY_PATH`): the filesystem's handle of
/// the inode (its type, then its bytes), which names it on that filesystem for good (the inode
/// number and, where the filesystem keeps one, its generation: a folder made anew, or another
/// tmpfs's root, has another). Asked as a file id (`AT_HANDLE_FID`, Linux 6.5), which a
/// filesystem that cannot open by handle (overlayfs) still gives; without it, as a plain handle.
pub fn file_handle(fd: RawFd) -> Result<(i32, Vec<u8>), Errno> {
    const MAX_HANDLE_SZ: usize = 128;
    const AT_HANDLE_FID: libc::c_int = 0x200;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; MAX_HANDLE_SZ],
    }
    let attempt = |flags: libc::c_int| -> Result<(i32, Vec<u8>), Errno> {
        let mut handle = Handle {
            bytes: MAX_HANDLE_SZ as u32,
            kind: 0,
            data: [0; MAX_HANDLE_SZ],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `handle` is a live `struct file_handle` whose `handle_bytes` says the room
        // after its header (MAX_HANDLE_SZ, the kernel's largest), and `mount_id` a live int; the
        // kernel writes at most that much into them. `fd` is borrowed for the call and the
        // empty path is a valid NUL-terminated string.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                fd,
                c"".as_ptr(),
                &mut handle as *mut Handle,
                &mut mount_id as *mut libc::c_int,
                libc::AT_EMPTY_PATH | flags,
            )
        };
        Errno::result(ret)?;
        let length = (handle.bytes as usize).min(MAX_HANDLE_SZ);
        Ok((handle.kind, handle.data[..length].to_vec()))
    };
    match attempt(AT_HANDLE_FID) {
        Err(Errno::EINVAL) => attempt(0),
        done => done,
    }
}

/// Gives the *calling thread only* the user `uid`, group `gid` and supplementary `groups`
/// (real, effective and saved). The kernel keeps credentials per thread; glibc's wrappers
/// broadcast a change to every thread of the process, so the raw system calls are used.
/// Groups first, then the group, then the user: once the user is not root, the thread may no
/// longer change the others. The thread cannot come back to root (its capabilities are gone):
/// run this on a thread made for it.
pub fn set_thread_ids(
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: &[libc::gid_t],
) -> Result<(), Errno> {
    // SAFETY: `groups` is a live slice of gid_t and its length is passed with it; the kernel
    // only reads it. Only the calling thread's credentials change.
    Errno::result(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    // SAFETY: plain integer arguments; only the calling thread's credentials change.
    Errno::result(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: as above.
    Errno::result(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })?;
    Ok(())
}

// The new mount API (uapi/linux/mount.h), which nix does not offer: hand one file or folder
// of a mount namespace to another by descriptor, never by a path looked up again.
const OPEN_TREE_CLONE: libc::c_uint = 0x01;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `open_tree(fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH [| AT_RECURSIVE])`.
pub fn open_tree_clone(fd: BorrowedFd<'_>, recursive: bool) -> Result<OwnedFd, Errno> {
    let recursive = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `fd` is a live descriptor borrowed for the call, the empty path a valid
    // NUL-terminated string that outlives it; the kernel only reads them.
    let result = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            c"".as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint | recursive,
        )
    };
    let raw = Errno::result(result)?;
    // SAFETY: open_tree returned a fresh descriptor (checked non-negative above), owned by no
    // one else; the cast is lossless for a descriptor number.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH, {attr_set}, sizeof)`.
pub fn mount_setattr_set(tree: BorrowedFd<'_>, attr_set: u64) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set,
        ..MountAttr::default()
    };
    // SAFETY: `tree` is a live descriptor; the empty path and `attr` live across the call and
    // the size passed is exactly `attr`'s, which the kernel only reads.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(result).map(drop)
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH [| AT_RECURSIVE], {MOUNT_ATTR_IDMAP, userns}, sizeof)`.
pub fn mount_setattr_idmap(
    tree: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        userns_fd: userns.as_raw_fd() as u64,
        ..MountAttr::default()
    };
    let recursive = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `tree` and `userns` are live descriptors for the call; the empty path and
    // `attr` live across it and the size passed is exactly `attr`'s, which the kernel only
    // reads.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | recursive,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(result).map(drop)
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], {attr_set, attr_clr, propagation},
/// sizeof)`: per-mount attributes (`MOUNT_ATTR_*`) and propagation (`MS_SHARED`, `MS_SLAVE`,
/// `MS_PRIVATE`, `MS_UNBINDABLE` or 0) of the mount `fd` is on, attached or detached.
pub fn mount_setattr(
    fd: BorrowedFd<'_>,
    recursive: bool,
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation,
        ..MountAttr::default()
    };
    let recursive = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `fd` is a live descriptor; the empty path and `attr` live across the call and
    // the size passed is exactly `attr`'s, which the kernel only reads.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | recursive,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(result).map(drop)
}

const FSCONFIG_SET_FLAG: libc::c_uint = 0;

/// `fsconfig(context, FSCONFIG_SET_FLAG, key, NULL, 0)`: a filesystem option without a value.
pub fn fsconfig_flag(context: BorrowedFd<'_>, key: &std::ffi::CStr) -> Result<(), Errno> {
    // SAFETY: `context` is a live descriptor; `key` is a valid NUL-terminated string that
    // outlives the call, only read by the kernel; the null value is what SET_FLAG takes.
    let result = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            FSCONFIG_SET_FLAG,
            key.as_ptr(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    Errno::result(result).map(drop)
}

const FSOPEN_CLOEXEC: libc::c_uint = 0x01;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x01;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x01;

/// A new filesystem context: `fsopen(fs_type, FSOPEN_CLOEXEC)`.
pub fn fsopen(fs_type: &std::ffi::CStr) -> Result<OwnedFd, Errno> {
    // SAFETY: `fs_type` is a valid NUL-terminated string that outlives the call, only read.
    let result = unsafe { libc::syscall(libc::SYS_fsopen, fs_type.as_ptr(), FSOPEN_CLOEXEC) };
    let raw = Errno::result(result)?;
    // SAFETY: fsopen returned a fresh descriptor (checked non-negative above), owned by no one
    // else; the cast is lossless for a descriptor number.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// `fsconfig(context, FSCONFIG_SET_STRING, key, value, 0)`.
pub fn fsconfig_string(
    context: BorrowedFd<'_>,
    key: &std::ffi::CStr,
    value: &std::ffi::CStr,
) -> Result<(), Errno> {
    // SAFETY: `context` is a live descriptor; `key` and `value` are valid NUL-terminated
    // strings that outlive the call, only read by the kernel.
    let result = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    };
    Errno::result(result).map(drop)
}

/// `fsconfig(context, FSCONFIG_CMD_CREATE, NULL, NULL, 0)`, then `fsmount(context,
/// FSMOUNT_CLOEXEC, MOUNT_ATTR_RDONLY)`: the filesystem as a detached read-only mount.
pub fn fsmount_readonly(context: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    fsmount(context, MOUNT_ATTR_RDONLY)
}

/// `fsconfig(context, FSCONFIG_CMD_CREATE, NULL, NULL, 0)`, then `fsmount(context,
/// FSMOUNT_CLOEXEC, attributes)`: the filesystem as a detached mount with `MOUNT_ATTR_*`
/// `attributes`.
pub fn fsmount(context: BorrowedFd<'_>, attributes: libc::c_uint) -> Result<OwnedFd, Errno> {
    // SAFETY: `context` is a live descriptor; the null key and value are what
    // FSCONFIG_CMD_CREATE takes.
    let created = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    Errno::result(created)?;
    // SAFETY: plain integer arguments on a live descriptor.
    let result = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            attributes,
        )
    };
    let raw = Errno::result(result)?;
    // SAFETY: fsmount returned a fresh descriptor (checked non-negative above), owned by no
    // one else; the cast is lossless for a descriptor number.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// `close_range(first, last, 0)`: closes every descriptor numbered `first..=last` the caller
/// has. Descriptors owned by objects of the caller then dangle: callers use it right before
/// an exec, or in a child that keeps only what it names.
pub fn close_range(first: libc::c_uint, last: libc::c_uint) -> Result<(), Errno> {
    // SAFETY: plain integer arguments; closing descriptors touches no memory of this process.
    let result = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
    Errno::result(result).map(drop)
}

/// `close_range(first, last, CLOSE_RANGE_CLOEXEC)`: marks every descriptor numbered
/// `first..=last` the caller has close-on-exec, closing none.
pub fn close_range_on_exec(first: libc::c_uint, last: libc::c_uint) -> Result<(), Errno> {
    // SAFETY: plain integer arguments; marking descriptors touches no memory of this process.
    let result = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            last,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(result).map(drop)
}

/// Makes the program `command` starts inherit only its stdin, stdout, stderr and `given`: in
/// the child, between fork and exec, every descriptor above stderr is marked close-on-exec,
/// then `given` unmarked. What the parent's other threads open meanwhile is marked too.
pub fn pass_only_on_exec(command: &mut std::process::Command, given: Vec<RawFd>) {
    use std::os::unix::process::CommandExt;
    let hook = move || -> std::io::Result<()> {
        close_range_on_exec(3, libc::c_uint::MAX)?;
        for &fd in &given {
            // SAFETY: F_SETFD takes an integer argument and touches no memory.
            Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child of a possibly multi-threaded process before
    // exec: it makes only async-signal-safe system calls (close_range, fcntl) over a vector
    // allocated before the fork, allocates nothing (an Errno converts to an io::Error without
    // allocating), and takes no lock.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Makes the program `command` starts get SIGKILL when the thread that starts it ends: between
/// fork and exec the child sets its parent death signal, then checks that its parent is still
/// the process that forked it (getppid names the process, not the thread). The kernel sends that signal when the forking *thread* exits
/// (the whole process killed included), and only if it was set before: a parent that ended
/// between the fork and the setting left the child to a reaper, and the child then ends itself
/// rather than run the program unowned. An exec keeps the signal unless it changes the
/// credentials (a set-user-ID program, or file capabilities beyond the caller's).
pub fn end_with_starting_thread_on_exec(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // The pid the child's parent has, read in the parent before the fork (a thread's parent
    // is its process, as getppid() says).
    let parent = std::process::id() as libc::pid_t;
    let hook = move || -> std::io::Result<()> { end_with_forking_thread(parent) };
    // SAFETY: the hook runs in the forked child of a possibly multi-threaded process before
    // exec: it makes only async-signal-safe system calls (prctl, getppid), allocates nothing
    // (an Errno converts to an io::Error without allocating), and takes no lock.
    unsafe {
        command.pre_exec(hook);
    }
}

/// In a child just forked by `parent` (its pid, read before the fork): SIGKILL when the thread
/// that forked it ends (the parent death signal), and ESRCH if the parent ended before the
/// signal was set (the child was given to a reaper: it must not go on unowned). Only
/// async-signal-safe system calls (prctl, getppid), no allocation: fit for a child of a
/// multi-threaded process.
pub fn end_with_forking_thread(parent: libc::pid_t) -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() != parent {
        return Err(std::io::Error::from(Errno::ESRCH));
    }
    Ok(())
}

/// `setdomainname(name, len)`: the NIS domain name of the caller's UTS namespace.
pub fn set_domain_name(name: &[u8]) -> Result<(), Errno> {
    // SAFETY: `name` is a live slice for the call and its exact length is passed; the kernel
    // only reads that many bytes (no terminating NUL is needed).
    let result = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    Errno::result(result).map(drop)
}

/// `move_mount(tree, "", point, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)`.
pub fn move_mount_onto(tree: BorrowedFd<'_>, point: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: both descriptors are live for the call; the empty path is a valid
    // NUL-terminated string that outlives it, only read by the kernel.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            point.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(result).map(drop)
}

/// bpf(2)'s commands feather uses (uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_QUERY: libc::c_int = 16;
/// uapi/linux/bpf.h: BPF_PROG_QUERY counts the programs a group inherits from its ancestors.
const BPF_F_QUERY_EFFECTIVE: u32 = 1;
/// uapi/linux/bpf.h: `BPF_OBJ_NAME_LEN`, the name's NUL included.
pub const BPF_OBJ_NAME_LEN: usize = 16;

/// The part of `union bpf_attr` BPF_PROG_LOAD reads, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The part of `union bpf_attr` BPF_PROG_ATTACH and BPF_PROG_DETACH read.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The part of `union bpf_attr` BPF_PROG_QUERY reads and writes.
#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// The part of `union bpf_attr` BPF_OBJ_GET_INFO_BY_FD reads.
#[repr(C)]
#[derive(Default)]
struct GetInfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_prog_info` up to its `name`: the kernel writes the first `info_len` bytes.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; BPF_OBJ_NAME_LEN],
}

/// The part of `union bpf_attr` BPF_PROG_GET_FD_BY_ID reads.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// bpf(2) with `attr` of its own size (the kernel takes a prefix of `union bpf_attr` and
/// treats the rest as zero).
///
/// # Safety
/// `T` must be the prefix of `union bpf_attr` that `cmd` reads, `#[repr(C)]`, and every
/// address in it must point to memory valid for what the kernel does there during the call
/// (reading the instructions and license, writing the log or the ids up to their stated sizes).
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> Result<libc::c_long, Errno> {
    // SAFETY: `attr` is a live, exclusively borrowed T of the size given; the caller vouches
    // for the layout and the addresses inside it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    Errno::result(ret)
}

/// BPF_PROG_LOAD of `insns` (each a `struct bpf_insn`, 8 bytes) as a program of `prog_type`
/// expecting `attach_type`, under `license`, named `name` (letters, digits, `_` and `.`; the
/// kernel refuses others); the verifier's log goes into `log` if not empty.
pub fn bpf_prog_load(
    prog_type: u32,
    attach_type: u32,
    insns: &[u64],
    license: &std::ffi::CStr,
    name: &[u8; BPF_OBJ_NAME_LEN],
    log: &mut [u8],
) -> Result<OwnedFd, Errno> {
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: *name,
        expected_attach_type: attach_type,
        ..Default::default()
    };
    if !log.is_empty() {
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    // SAFETY: ProgLoadAttr is BPF_PROG_LOAD's prefix of bpf_attr; `insns` (insn_cnt of 8
    // bytes), `license` (NUL-terminated) and `log` (log_size bytes, written) are borrowed
    // across the call.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr) }?;
    // SAFETY: on success BPF_PROG_LOAD returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// BPF_PROG_ATTACH (`attach`) or BPF_PROG_DETACH of `prog` on `target` (a cgroup folder).
pub fn bpf_prog_attach(
    attach: bool,
    target: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
    flags: u32,
) -> Result<(), Errno> {
    let mut attr = ProgAttachAttr {
        target_fd: target.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: flags,
        ..Default::default()
    };
    let cmd = if attach {
        BPF_PROG_ATTACH
    } else {
        BPF_PROG_DETACH
    };
    // SAFETY: ProgAttachAttr is the prefix of bpf_attr both commands read; it holds no
    // address, and both descriptors are borrowed across the call.
    unsafe { bpf(cmd, &mut attr) }.map(drop)
}

/// BPF_PROG_QUERY: the ids of the programs of `attach_type` attached to `target` itself, or
/// with `effective` the ones that run for it (its ancestors' included), up to `ids.len()`
/// (written there), and how many there are.
pub fn bpf_prog_query(
    target: BorrowedFd<'_>,
    attach_type: u32,
    effective: bool,
    ids: &mut [u32],
) -> Result<usize, Errno> {
    let mut attr = ProgQueryAttr {
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        query_flags: if effective { BPF_F_QUERY_EFFECTIVE } else { 0 },
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: ProgQueryAttr is BPF_PROG_QUERY's prefix of bpf_attr; the kernel writes at most
    // prog_cnt ids into `ids`, which is exclusively borrowed across the call.
    unsafe { bpf(BPF_PROG_QUERY, &mut attr) }?;
    Ok(attr.prog_cnt as usize)
}

/// BPF_PROG_GET_FD_BY_ID: a descriptor of the loaded program `id`.
pub fn bpf_prog_get_fd_by_id(id: u32) -> Result<OwnedFd, Errno> {
    let mut attr = GetFdByIdAttr {
        prog_id: id,
        ..Default::default()
    };
    // SAFETY: GetFdByIdAttr is BPF_PROG_GET_FD_BY_ID's prefix of bpf_attr and holds no
    // address.
    let fd = unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) }?;
    // SAFETY: on success the kernel returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// BPF_OBJ_GET_INFO_BY_FD: the name `prog` was loaded under (NUL-padded).
pub fn bpf_prog_name(prog: BorrowedFd<'_>) -> Result<[u8; BPF_OBJ_NAME_LEN], Errno> {
    let mut info = ProgInfo::default();
    let mut attr = GetInfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: &mut info as *mut ProgInfo as u64,
    };
    // SAFETY: GetInfoAttr is BPF_OBJ_GET_INFO_BY_FD's prefix of bpf_attr; the kernel writes at
    // most info_len bytes into `info`, which is exclusively borrowed across the call, and
    // reads no address in it (its array fields stay 0: nothing asked).
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(info.name)
}

/// madvise(MADV_DONTNEED) over `len` bytes at `start`: the pages leave this process's page
/// tables (and its Rss) and stay in the page cache; the next access maps them again.
///
/// # Safety
/// The range must be one read-only private mapping of a file with no anonymous page (every
/// page reads exactly as the file does), which stays mapped during the call (the program's
/// own, never unmapped): then dropping its page-table entries changes no value any code can
/// read. On memory of the process's own it would replace the contents by zeros or the file's.
#[inline]
pub unsafe fn release_clean_pages(start: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: madvise reads and writes no memory of ours through its arguments; that dropping
    // these pages loses nothing is this function's contract, passed to its caller.
    let ret = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    Errno::result(ret).map(drop)
}

/// malloc_trim(0): glibc's allocator gives the free pages of its heaps back to the kernel.
pub fn trim_heap() {
    // SAFETY: malloc_trim takes no pointer and frees no allocation: it only returns pages
    // holding no live allocation, under the allocator's own locks (safe from any thread).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// getpriority(PRIO_PROCESS, 0): this process's nice value (-20..19).
pub fn nice_value() -> Result<i32, Errno> {
    Errno::clear();
    // SAFETY: getpriority takes integers only and touches no memory of this process.
    let value = unsafe { libc::getpriority(libc::PRIO_PROCESS as _, 0) };
    // -1 is also a nice value: only errno tells a failure apart.
    if value == -1 && Errno::last_raw() != 0 {
        return Err(Errno::last());
    }
    Ok(value)
}

/// setpriority(PRIO_PROCESS, 0, nice): sets this process's nice value.
pub fn set_nice_value(nice: i32) -> Result<(), Errno> {
    // SAFETY: setpriority takes integers only and touches no memory of this process.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, nice) };
    Errno::result(result).map(drop)
}

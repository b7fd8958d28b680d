//! The VM's spawner: the one process of a VM that keeps CAP_SYS_ADMIN, for one recipe — a
//! process in a mount namespace of its own whose `/tmp` and `/var/tmp` are a unit's private
//! folders (`PrivateTmp=`, docs/services.md). The protocol is feather_svc::private_tmp's.
//!
//! How it is confined, in order:
//! 1. init forks it inside the VM's Landlock domain, after its own re-execution from the VM's
//!    copy of feather's binary (so the spawner maps no host file and shares init's pages) and
//!    before its filter and capability drop; its socket's other end stays with init, which
//!    hands a duplicate only to the service client it runs for the host, which hands it to the
//!    manager it starts;
//! 2. nothing of init's but that socket: its other descriptors closed, stdio on `/dev/null`;
//! 3. not dumpable: no process of the VM can trace it or take its descriptors;
//! 4. its capabilities: the VM's set and CAP_SYS_ADMIN, no other;
//! 5. its filter (feather_confine::seccomp::compile_spawner): the VM's, with only `unshare`
//!    of a mount namespace, `clone` into a new user and mount namespace together (the maker of
//!    a locked copy), `setns` of a mount namespace, recursive `open_tree` clones,
//!    `move_mount` by descriptors and `mount` with `MS_BIND` or `MS_REC|MS_SLAVE` let through;
//! 6. a request names one folder (no `/`, not `.`/`..`, `systemd-private-…`); each bind's
//!    source is opened beneath `/tmp` or `/var/tmp`, and its target as `/tmp` or `/var/tmp`,
//!    without following a link; nothing else of the request reaches a call;
//! 7. its child enters the VM's filter and capability set (dropping CAP_SYS_ADMIN) before it
//!    reads anything from the manager.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use feather_confine::seccomp::{Compiled, Profile};
use feather_svc::private_tmp::{
    self, check_folder_name, SpawnAnswer, SpawnRequest, TEMPORARY_ROOTS,
};
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::poll::{PollFd, PollFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::idle::Quiet;

/// Where init holds its end of the spawner's socket (and hands it to the service client).
pub const SPAWNER_FD: RawFd = private_tmp::SPAWNER_FD;

/// Why the spawner could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error("cannot start the VM's spawner: {call}")]
    Call {
        call: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot start the VM's spawner")]
    Sys(#[source] feather_sys::SysError),
}

/// Forks the spawner (init calls it while it still holds CAP_SYS_ADMIN, before its filter);
/// returns init's end of its socket, at [`SPAWNER_FD`], close-on-exec. `vm_filters`: the VM's
/// filters of `seccomp`, compiled by init, which the spawner takes as they are instead of
/// compiling them again. `quiet`: when it gives its pages back, as init does.
pub fn start(
    seccomp: Profile,
    vm_filters: &Compiled,
    quiet: Quiet,
) -> Result<OwnedFd, SpawnerError> {
    let (init_end, spawner_end) =
        feather_sys::fdpass::seqpacket_pair().map_err(|source| SpawnerError::Call {
            call: "socketpair",
            source,
        })?;
    match feather_sys::process::fork().map_err(SpawnerError::Sys)? {
        Some(_) => {
            drop(spawner_end);
            feather_sys::process::move_to_free_fd(init_end, SPAWNER_FD).map_err(SpawnerError::Sys)
        }
        None => {
            drop(init_end);
            become_spawner(spawner_end, seccomp, vm_filters, quiet)
        }
    }
}

/// The forked child: nothing of init's but its socket; then it serves until init is gone.
fn become_spawner(socket: OwnedFd, seccomp: Profile, vm_filters: &Compiled, quiet: Quiet) -> ! {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = feather_sys::process::redirect_stdio(&null);
    }
    feather_sys::process::close_other_fds(&[socket.as_raw_fd()]);
    std::process::exit(serve(socket, seccomp, vm_filters, quiet).unwrap_or(1))
}

/// Why the spawner could not confine itself (it then ends, before it serves anything).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the VM's spawner")]
    Sys(#[source] feather_sys::SysError),
    #[error("the VM's spawner")]
    Capabilities(#[source] feather_confine::capabilities::CapabilityError),
    #[error("the VM's spawner")]
    Filter(#[source] feather_confine::seccomp::SeccompError),
}

/// The spawner's life: confines itself, then serves requests on `socket` until no other end
/// of it is left (init is gone). Returns its exit code.
fn serve(
    socket: OwnedFd,
    seccomp: Profile,
    vm_filters: &Compiled,
    mut quiet: Quiet,
) -> Result<i32, ServeError> {
    let _ = nix::sys::prctl::set_name(c"feather-spawner");
    feather_sys::process::make_undumpable().map_err(ServeError::Sys)?;
    feather_confine::capabilities::reduce_to_spawner().map_err(ServeError::Capabilities)?;
    // Its own filter; the VM's, which each process it makes enters, are init's (compiled once
    // per start, before this fork).
    feather_confine::seccomp::install_spawner(seccomp).map_err(ServeError::Filter)?;
    // Its children end here (their parent): reaped at once, so that their pidfds give the
    // manager their status.
    let children =
        feather_sys::process::block_signals(&[Signal::SIGCHLD]).map_err(ServeError::Sys)?;
    // Resident in every VM, as init is: its program's pages go back while it waits, when
    // init's do (`quiet`, init's).
    loop {
        let mut fds = [
            PollFd::new(socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(children.as_fd(), PollFlags::POLLIN),
        ];
        if quiet.wait(&mut fds, None).is_err() {
            continue;
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let (request_ready, child_ended) = (ready(&fds[0]), ready(&fds[1]));
        if child_ended {
            // One read: the descriptor blocks; a burst of SIGCHLD is one pending signal.
            let _ = children.read_signal();
            reap_children();
        }
        if request_ready && !answer_one(&socket, vm_filters) {
            return Ok(0);
        }
    }
}

fn reap_children() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            return;
        }
    }
}

/// Reads one request and answers it; false once the socket has no other end.
fn answer_one(socket: &OwnedFd, vm_filters: &Compiled) -> bool {
    let mut buffer = vec![0u8; 4096];
    let (length, fds) = match feather_sys::fdpass::receive(socket, &mut buffer) {
        Ok((0, _)) => return false,
        Ok(received) => received,
        Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return true,
        Err(_) => return false,
    };
    // A request carries no descriptor: any sent along is closed unread.
    drop(fds);
    let request = serde_json::from_slice::<SpawnRequest>(&buffer[..length]);
    let id = request.as_ref().map_or(0, |r| r.id);
    let spawned = request
        .map_err(|e| format!("not a request: {e}"))
        .and_then(|request| spawn(&request, vm_filters));
    let (answer, fds) = match spawned {
        Ok((pid, pidfd, channel)) => (
            SpawnAnswer::Started {
                id,
                pid: pid.as_raw(),
            },
            vec![pidfd, channel],
        ),
        Err(why) => (SpawnAnswer::Refused { id, why }, Vec::new()),
    };
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let message = serde_json::to_vec(&answer).unwrap_or_default();
    let _ = feather_sys::fdpass::send(socket, &message, &raw);
    true
}

/// Checks the request and forks its process: its pid, pidfd, and the manager's end of the
/// channel to it.
fn spawn(request: &SpawnRequest, vm_filters: &Compiled) -> Result<(Pid, OwnedFd, OwnedFd), String> {
    check_folder_name(&request.folder).map_err(|e| e.to_string())?;
    let (manager_end, child_end) =
        feather_sys::fdpass::seqpacket_pair().map_err(|e| format!("socketpair: {e}"))?;
    match feather_sys::process::fork().map_err(|e| feather_core::error::causes(&e))? {
        Some(pid) => {
            drop(child_end);
            let pidfd = feather_sys::process::pidfd_open(pid)
                .map_err(|e| feather_core::error::causes(&e))?;
            Ok((pid, pidfd, manager_end))
        }
        None => {
            drop(manager_end);
            feather_sys::process::close_other_fds(&[child_end.as_raw_fd()]);
            if let Err(why) = private_view(&request.folder, vm_filters) {
                let _ = feather_sys::fdpass::send(&child_end, why.as_bytes(), &[]);
                std::process::exit(127);
            }
            feather_svc::private_tmp::become_planned(child_end)
        }
    }
}

/// The recipe, in the spawner's child: a mount namespace of its own, a slave of the VM's,
/// whose `/proc` and `/sys` are covered by copies with their submounts locked
/// ([`locked_kernel_trees`]), with `/tmp` and `/var/tmp` bound from the unit's folders; then
/// the VM's filter and capability set, as every process of the VM (CAP_SYS_ADMIN dropped).
fn private_view(folder: &str, vm_filters: &Compiled) -> Result<(), String> {
    let causes = |e: feather_sys::SysError| feather_core::error::causes(&e);
    // Copied from the VM's namespace before this one exists: nothing of the unit's in it.
    let locked =
        feather_sys::process::new_mount_namespace(CloneFlags::CLONE_NEWUSER).map_err(causes)?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare: {e}"))?;
    // A slave of the VM's namespace, as systemd makes it: nothing bound here reaches the
    // VM's namespace, and what the host mounts there later (the empty tmpfs over a state root
    // registered while the VM runs, or hidden again after a restore) reaches this one. A
    // private copy kept only the hiding made before it, and showed a later root.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("making mounts slaves: {e}"))?;
    let own =
        std::fs::File::open("/proc/self/ns/mnt").map_err(|e| format!("/proc/self/ns/mnt: {e}"))?;
    for (point, tree) in locked_kernel_trees(&locked, &own)? {
        feather_sys::mount::attach_tree(&tree, &open_folder(point)?).map_err(causes)?;
    }
    for root in TEMPORARY_ROOTS {
        bind_private_folder(root, folder).map_err(|e| format!("{root}: {e}"))?;
    }
    // As every program init starts (crate::workload): chosen before the VM's init on a shortage.
    let _ = std::fs::write(
        "/proc/self/oom_score_adj",
        crate::workload::WORKLOAD_OOM_SCORE_ADJ.to_string(),
    );
    feather_confine::confine_compiled(vm_filters).map_err(|e| feather_core::error::causes(&e))
}

/// The VM's kernel interfaces whose read-only binds and masks must hold for good: `/proc`
/// (`sys`, `sysrq-trigger`, `keys`, `timer_list`…) and `/sys` (`firmware`, `powercap`).
const KERNEL_TREES: [&str; 2] = ["proc", "sys"];

/// Recursive copies of [`KERNEL_TREES`] taken in `locked` (a copy of the VM's namespace made
/// together with a new user namespace, [`feather_sys::process::new_mount_namespace`]), where
/// the kernel locks every mount (`MNT_LOCKED`), and a recursive copy keeps its submounts
/// locked; the caller is back in `own` when this returns. A locked mount stays attached to its
/// parent when its namespace's last process ends; the unit's own namespace, made by `unshare`,
/// locks nothing, and at its end the kernel detached every mount from the next: a VM process
/// holding a folder in it (through `/proc/<pid>/root`) walked from `/proc` into the read-write
/// procfs beneath the read-only `/proc/sys` (host sysctls) and beneath the masks. The unit does
/// not live in `locked` itself: CRIU cannot dump a tmpfs whose submounts are locked where it
/// looks first (the VM's `/dev` and `/run`; it tars them with their submounts' files, and the
/// restore fails), and the unit stays in the VM's user namespace either way.
fn locked_kernel_trees(
    locked: &OwnedFd,
    own: &impl AsFd,
) -> Result<Vec<(&'static str, OwnedFd)>, String> {
    let causes = |e: feather_sys::SysError| feather_core::error::causes(&e);
    feather_sys::process::join_namespace(locked, CloneFlags::CLONE_NEWNS).map_err(causes)?;
    let trees = KERNEL_TREES
        .iter()
        .map(|point| {
            let at = open_folder(point)?;
            let tree = feather_sys::mount::clone_tree_recursive(&at).map_err(causes)?;
            Ok((*point, tree))
        })
        .collect::<Result<Vec<_>, String>>();
    let back = feather_sys::process::join_namespace(own, CloneFlags::CLONE_NEWNS).map_err(causes);
    let trees = trees?;
    back?;
    Ok(trees)
}

/// The folder `/NAME` of the caller's root, opened `O_PATH` without following a link.
fn open_folder(name: &str) -> Result<OwnedFd, String> {
    let slash = feather_sys::beneath::open_root(Path::new("/")).map_err(|e| format!("/: {e}"))?;
    feather_sys::beneath::open_beneath(&slash, Path::new(name), OFlag::O_PATH | OFlag::O_DIRECTORY)
        .map_err(|e| format!("/{name}: {e}"))
}

/// Binds `ROOT/FOLDER/tmp` over `ROOT`, both opened beneath `/` without following a link
/// (the VM's root may have planted one anywhere on the way).
fn bind_private_folder(root: &str, folder: &str) -> std::io::Result<()> {
    let slash = feather_sys::beneath::open_root(Path::new("/"))?;
    let rel = Path::new(root.trim_start_matches('/'));
    let target =
        feather_sys::beneath::open_beneath(&slash, rel, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    let source = feather_sys::beneath::open_beneath(
        &target,
        &Path::new(folder).join("tmp"),
        OFlag::O_PATH | OFlag::O_DIRECTORY,
    )?;
    let by_fd = |fd: &OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::mount::mount(
        Some(by_fd(&source).as_str()),
        by_fd(&target).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(())
}

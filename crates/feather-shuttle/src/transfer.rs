//! Resource-name transfer: a path named in one VM (the source) becomes visible in another (the
//! target) at a fresh place, and the argument is rewritten to that place.
//!
//! The content handed over is the one the path has *in the source* — which may exist only in
//! the source's private layer — and exactly that file or folder: it is bind-mounted with the new
//! mount API, never copied, so with `mode=rw` the target's writes land in the source's file.
//!
//! ```text
//! broker (keeper, multi-threaded)              share helper (`feather-keeper __shuttle-share PLAN`)
//!   ◀── Hello { version }
//!   gate: files PATH (as written) ──────────▶   in the host's mount namespace:
//!                                                 openat2(/proc/<source init>/root, PATH,
//!                                                   RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
//!                                                 a regular file or folder? where did it lead?
//!   ◀── Resolved { each: (real path, folder) | why not }
//!   gate: files REAL PATH (if it differs)
//!   start the target on demand
//!   Go { target init } ─────────────────────▶   setns(source's mounts): open_tree(CLONE)
//!                                                 mount_setattr(nosuid, nodev[, rdonly])
//!                                               setns(target's mounts): mkdir
//!                                                 /run/feather/shared/<id>/, move_mount
//!   ◀── Mounted { paths }  |  Failed { fault }
//!   …the program runs in the target…
//!   close the helper's stdin ───────────────▶   umount by the tree's descriptor, remove
//!                                                 what it made (by folder descriptor), exit
//! ```
//!
//! Entering mount namespaces needs a single-threaded process, hence the helper; if the keeper
//! dies, the helper's stdin closes and it removes the mounts all the same. The messages are
//! [`crate::protocol::share`]'s.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use feather_sys::mount::{self, TreeFlags};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::Pid;

use crate::protocol::share::{End, Found, Go, Os, Plan, Report, ShareFault, VERSION};
use crate::protocol::{self, ProtocolError};

/// Where handed-over files appear in a target VM: `<this>/<id>/<basename>`.
pub const SHARED_IN_VM: &str = "/run/feather/shared";

/// The hidden subcommand of the helper binary (`feather-keeper`, Peers::helper) that runs the
/// share helper.
pub const HELPER_SUBCOMMAND: &str = "__shuttle-share";

/// The absolute path an argument names in the source, from the source's working folder
/// `cwd`, with `.` and empty components dropped. A `..` is refused: it is how a path walks out
/// of what a `files` rule allows, and a requester can always name the file directly.
pub fn requested_path(arg: &str, cwd: &str) -> Result<String, PathFault> {
    if arg.is_empty() || arg.contains('\0') {
        return Err(PathFault::NotAPath(arg.to_owned()));
    }
    let joined = if arg.starts_with('/') {
        arg.to_owned()
    } else if cwd.starts_with('/') {
        format!("{cwd}/{arg}")
    } else {
        return Err(PathFault::Relative {
            arg: arg.to_owned(),
            cwd: cwd.to_owned(),
        });
    };
    let mut parts = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathFault::Climbs(arg.to_owned())),
            part => parts.push(part),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Why an argument is not a path that may be handed over.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathFault {
    #[error("{0:?} is not a path")]
    NotAPath(String),
    #[error("{arg:?} is relative and the working folder {cwd:?} is not absolute")]
    Relative { arg: String, cwd: String },
    #[error("{0:?} climbs with '..' (name the file by its own path)")]
    Climbs(String),
}

/// Why the broker's share helper did not hand the paths over.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("cannot start the share helper: {0}")]
    Spawn(io::Error),
    #[error("the share helper has no pipes")]
    NoPipes,
    #[error("the share helper ended early (see the keeper's log)")]
    Ended,
    #[error("the share helper answered out of turn: {0}")]
    Protocol(ProtocolError),
    #[error("the share helper's input is closed")]
    InputClosed,
    #[error("cannot talk to the share helper: {0}")]
    Talk(io::Error),
    #[error(transparent)]
    Failed(ShareFault),
}

impl From<ProtocolError> for HelperError {
    fn from(error: ProtocolError) -> HelperError {
        match error {
            ProtocolError::Closed { .. } | ProtocolError::Io { .. } => HelperError::Ended,
            error => HelperError::Protocol(error),
        }
    }
}

/// The broker's handle on one running helper. Dropping it ends the hand-over: the helper
/// removes its mounts and exits.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    /// Starts the helper (`command` runs [`HELPER_SUBCOMMAND`]) on `plan`.
    /// The plan's version is set here.
    pub fn spawn(mut command: Command, plan: &Plan) -> Result<Helper, HelperError> {
        let plan = Plan {
            version: VERSION,
            ..plan.clone()
        };
        let plan = String::from_utf8_lossy(&protocol::encode(&plan)).into_owned();
        let mut child = command
            .arg(plan)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(HelperError::Spawn)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(HelperError::NoPipes);
        };
        let mut helper = Helper {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
        };
        match helper.report("the share helper's hello")? {
            Report::Hello { version } => {
                protocol::check_version("a share helper", VERSION, version)?;
                Ok(helper)
            }
            other => Err(out_of_turn("the share helper's hello", &other)),
        }
    }

    /// Where each item led in the source, or why it cannot be handed over.
    pub fn resolved(&mut self) -> Result<Vec<Result<Found, ShareFault>>, HelperError> {
        const EXPECTED: &str = "resolved paths";
        match self.report(EXPECTED)? {
            Report::Resolved { items } => Ok(items),
            Report::Failed { fault } => Err(HelperError::Failed(fault)),
            other => Err(out_of_turn(EXPECTED, &other)),
        }
    }

    /// Mounts every item in the target; returns where each is there.
    pub fn mount(&mut self, go: &Go) -> Result<Vec<String>, HelperError> {
        const EXPECTED: &str = "mounted paths";
        let stdin = self.stdin.as_mut().ok_or(HelperError::InputClosed)?;
        protocol::send_line(stdin, go).map_err(HelperError::Talk)?;
        match self.report(EXPECTED)? {
            Report::Mounted { paths } => Ok(paths),
            Report::Failed { fault } => Err(HelperError::Failed(fault)),
            other => Err(out_of_turn(EXPECTED, &other)),
        }
    }

    fn report(&mut self, expected: &'static str) -> Result<Report, HelperError> {
        Ok(protocol::receive_line(&mut self.stdout, expected)?)
    }
}

fn out_of_turn(expected: &'static str, received: &Report) -> HelperError {
    HelperError::Protocol(ProtocolError::Unexpected {
        expected,
        received: format!("{received:?}"),
    })
}

impl Drop for Helper {
    fn drop(&mut self) {
        // End of input: the helper unmounts, removes its folder and exits.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The helper's main: `plan` is the JSON [`Plan`]; talks on stdin/stdout. Returns the exit
/// code (errors are reported on stdout, for the broker, before it ends).
pub fn helper_main(plan: &str) -> i32 {
    let mut out = std::io::stdout().lock();
    let mut say = |report: &Report| -> bool { protocol::send_line(&mut out, report).is_ok() };
    if !say(&Report::Hello { version: VERSION }) {
        return 1;
    }
    let plan = match read_plan(plan) {
        Ok(plan) => plan,
        Err(fault) => {
            say(&Report::Failed { fault });
            return 2;
        }
    };
    let opened = match open_in_source(&plan) {
        Ok(opened) => opened,
        Err(fault) => {
            say(&Report::Failed { fault });
            return 1;
        }
    };
    let items = opened
        .iter()
        .map(|o| {
            o.as_ref()
                .map(|(_, found)| found.clone())
                .map_err(Clone::clone)
        })
        .collect();
    if !say(&Report::Resolved { items }) {
        return 1;
    }
    let mut stdin = std::io::stdin().lock();
    let go: Go = match protocol::receive_line(&mut stdin, "the broker's go") {
        Ok(go) => go,
        // The broker closed our input: it hands nothing over.
        Err(ProtocolError::Closed { .. }) => return 0,
        Err(e) => {
            say(&Report::Failed {
                fault: protocol_fault(e),
            });
            return 2;
        }
    };
    let fds: Vec<(OwnedFd, Found)> = match opened.into_iter().collect() {
        Ok(fds) => fds,
        Err(fault) => {
            say(&Report::Failed { fault });
            return 1;
        }
    };
    let shared = match share(&plan, &go, fds) {
        Ok(shared) => shared,
        Err(fault) => {
            say(&Report::Failed { fault });
            return 1;
        }
    };
    if !say(&Report::Mounted {
        paths: shared.paths.clone(),
    }) {
        return 1;
    }
    // Until the broker closes our input: the program runs.
    let mut line = String::new();
    while stdin.read_line(&mut line).unwrap_or(0) > 0 {}
    drop(shared);
    0
}

/// The plan, of this build's version.
fn read_plan(plan: &str) -> Result<Plan, ShareFault> {
    let plan: Plan =
        protocol::decode(plan.as_bytes(), "the broker's plan").map_err(protocol_fault)?;
    protocol::check_version("a broker", VERSION, plan.version).map_err(protocol_fault)?;
    Ok(plan)
}

/// A protocol error of the helper's side, as it is reported to the broker.
fn protocol_fault(error: ProtocolError) -> ShareFault {
    let expected = match &error {
        ProtocolError::Unexpected { expected, .. }
        | ProtocolError::Closed { expected }
        | ProtocolError::Io { expected, .. } => (*expected).to_owned(),
        ProtocolError::Version { peer, expected, .. } => {
            format!("{peer} of protocol version {expected}")
        }
    };
    let received = match error {
        ProtocolError::Unexpected { received, .. } => received,
        ProtocolError::Closed { .. } => "the end of input".to_owned(),
        ProtocolError::Io { error, .. } => error.to_string(),
        ProtocolError::Version { received, .. } => {
            format!("version {received} (install feather from one build)")
        }
    };
    ShareFault::Protocol { expected, received }
}

/// One item opened in the source (a descriptor of it, and where it led), or why not.
type Opened = Result<(OwnedFd, Found), ShareFault>;

/// Opens each item in the source's root (from the host's mounts, through
/// `/proc/<init>/root`), refusing what may not be handed over.
fn open_in_source(plan: &Plan) -> Result<Vec<Opened>, ShareFault> {
    let root_path = format!("/proc/{}/root", plan.source_pid);
    let root: OwnedFd = File::open(&root_path)
        .map_err(|e| ShareFault::SourceRoot {
            path: root_path.clone(),
            os: Os::from(&e),
        })?
        .into();
    // Checked after the open: the root opened belongs to the init the broker named.
    same_process(plan.source_pid, plan.source_ticks, End::Source)?;
    Ok(plan
        .items
        .iter()
        .map(|path| open_one(&root, path))
        .collect())
}

fn open_one(root: &OwnedFd, path: &str) -> Result<(OwnedFd, Found), ShareFault> {
    // RESOLVE_IN_ROOT: `/`, `..` and absolute symlinks stop at the VM's root, so nothing
    // outside the VM is reachable; RESOLVE_NO_MAGICLINKS: no /proc/*/fd jumps to a file the
    // VM's processes hold open elsewhere.
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let path = path.to_owned();
    let fd = openat2(root, path.as_str(), how).map_err(|e| match e {
        Errno::ENOENT => ShareFault::Missing { path: path.clone() },
        Errno::ELOOP => ShareFault::Loops { path: path.clone() },
        Errno::EXDEV => ShareFault::LeavesVm { path: path.clone() },
        e => ShareFault::Open {
            path: path.clone(),
            os: e.into(),
        },
    })?;
    let io_fault = |e: io::Error| ShareFault::Open {
        path: path.clone(),
        os: Os::from(&e),
    };
    let meta = File::from(fd.try_clone().map_err(io_fault)?)
        .metadata()
        .map_err(io_fault)?;
    let kind = meta.file_type();
    let folder = if kind.is_dir() {
        true
    } else if kind.is_file() {
        false
    } else {
        let what = if kind.is_block_device() || kind.is_char_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_fifo() {
            "a FIFO"
        } else {
            "not a regular file or folder"
        };
        return Err(ShareFault::NotFileOrFolder {
            path,
            what: what.to_owned(),
        });
    };
    // The descriptor's path as the source's root sees it: its mount belongs to the VM's
    // mount namespace, whose root is the VM's root.
    let real = std::fs::read_link(format!("/proc/self/fd/{}", raw_fd(&fd))).map_err(|e| {
        ShareFault::Unplaced {
            path: path.clone(),
            os: Os::from(&e),
        }
    })?;
    let real = real.to_string_lossy().into_owned();
    if !real.starts_with('/') || real.ends_with(" (deleted)") {
        return Err(ShareFault::NotInVm { path, real });
    }
    let fsid = layer_id(&fd).map_err(|e| ShareFault::Open {
        path: path.clone(),
        os: e.into(),
    })?;
    Ok((fd, Found { real, folder, fsid }))
}

/// The filesystem id of the overlay `fd` is on (one of the source's layers), or None for a
/// file of another filesystem (the source's own `/run`, say): only an overlay's id is its own
/// (overlayfs derives it from the layer's UUID), where `proc`, `sysfs` or cgroupfs share one
/// among every VM, and a target's process holding such a file would be none of the source's.
fn layer_id(fd: &OwnedFd) -> Result<Option<u64>, Errno> {
    use nix::sys::statfs::{fstatfs, OVERLAYFS_SUPER_MAGIC};
    if fstatfs(fd)?.filesystem_type() != OVERLAYFS_SUPER_MAGIC {
        return Ok(None);
    }
    Ok(Some(nix::sys::statvfs::fstatvfs(fd)?.filesystem_id()))
}

fn raw_fd(fd: &impl AsFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_fd().as_raw_fd()
}

/// What one helper made and mounted in the target; removed on drop (the helper is then in the
/// target's mount namespace, whose processes may have renamed, replaced or symlinked any of it
/// meanwhile). Everything is held by descriptor from the moment it was made: clean-up looks up
/// no path the VM could redirect.
struct Shared {
    paths: Vec<String>,
    /// The helper's own `/proc/self/fd`, in the host's procfs, opened before any VM's mounts
    /// were entered: the target VM cannot stand a procfs of its own in for it.
    own_fds: OwnedFd,
    mounted: Vec<Mounted>,
    /// Folders made (the `<id>` folder, then any `<n>` below it): removed in reverse.
    made: Vec<Entry>,
}

/// An entry the helper made in a folder it holds open, and the inode it had when made.
struct Entry {
    parent: OwnedFd,
    name: String,
    inode: (u64, u64),
    folder: bool,
}

/// One hand-over mount: the mounted tree itself (its root, held since `move_mount`), the
/// kernel's id of that mount, and the mount point the helper made for it.
struct Mounted {
    tree: OwnedFd,
    mount_id: u64,
    point: Entry,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for mounted in self.mounted.iter().rev() {
            if let Err(why) = unmount(&self.own_fds, mounted) {
                eprintln!(
                    "feather share: cannot unmount {}: {why}",
                    mounted.point.name
                );
            }
            remove_entry(&mounted.point);
        }
        for entry in self.made.iter().rev() {
            remove_entry(entry);
        }
    }
}

/// Unmounts exactly the mount the helper attached, wherever the target's processes may have
/// put names since: `umount2` of `/proc/self/fd/N` (N the tree's descriptor) follows the magic
/// link to that mount and no other, and the kernel refuses it unless the descriptor is the
/// mount's root. A path such as `/run/feather/shared/<id>/sys` would be looked up anew in the
/// VM's view, where `<id>` may have become a symlink to `/proc`.
fn unmount(own_fds: &OwnedFd, mounted: &Mounted) -> Result<(), UnmountError> {
    // What the kernel says is at the mount point now: if not ours, the VM moved names around;
    // ours is unmounted all the same (by descriptor), and whatever is there is left alone.
    let here = open_entry(&mounted.point.parent, &mounted.point.name)
        .ok()
        .and_then(|fd| feather_sys::mount::mount_id(&fd).ok());
    if here != Some(mounted.mount_id) {
        eprintln!(
            "feather share: {} no longer holds the hand-over mount (the target VM moved it); \
             unmounting that mount by its descriptor",
            mounted.point.name
        );
    }
    nix::unistd::fchdir(own_fds).map_err(UnmountError::OwnFds)?;
    let link = raw_fd(&mounted.tree).to_string();
    nix::mount::umount2(link.as_str(), nix::mount::MntFlags::MNT_DETACH)
        .map_err(UnmountError::Unmount)
}

/// Why a hand-over mount could not be removed (said in the keeper's log).
#[derive(Debug, thiserror::Error)]
enum UnmountError {
    #[error("cannot enter /proc/self/fd: {}", .0.desc())]
    OwnFds(Errno),
    #[error("{}", .0.desc())]
    Unmount(Errno),
}

/// Removes an entry the helper made if the name still holds it (same inode), by the folder's
/// descriptor, never following a symlink: anything else the VM put there is its own.
fn remove_entry(entry: &Entry) {
    let still_ours = open_entry(&entry.parent, &entry.name)
        .and_then(|fd| nix::sys::stat::fstat(&fd))
        .is_ok_and(|st| (st.st_dev, st.st_ino) == entry.inode);
    if still_ours {
        let how = if entry.folder {
            nix::unistd::UnlinkatFlags::RemoveDir
        } else {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        };
        let _ = nix::unistd::unlinkat(&entry.parent, entry.name.as_str(), how);
    }
}

/// Entry `name` of `parent` itself (`O_PATH`): a symlink is not followed, and nothing outside
/// `parent` is reached. A mount on the entry is entered (its root is what opens).
fn open_entry(parent: &OwnedFd, name: &str) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    openat2(parent, name, how)
}

/// Makes folder `name` in `parent` and opens it (never through a symlink, never onto another
/// filesystem): the entry to remove later, and the folder's descriptor.
fn make_folder(parent: &OwnedFd, name: &str, shown: &Path) -> Result<(Entry, OwnedFd), ShareFault> {
    let fail = |e: Errno| ShareFault::Make {
        path: shown.display().to_string(),
        os: e.into(),
    };
    nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o755)).map_err(fail)?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let dir = openat2(parent, name, how).map_err(fail)?;
    let entry = made_entry(parent, name, &dir, true).map_err(fail)?;
    Ok((entry, dir))
}

fn made_entry(parent: &OwnedFd, name: &str, fd: &OwnedFd, folder: bool) -> Result<Entry, Errno> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok(Entry {
        parent: parent.try_clone().map_err(|_| Errno::EMFILE)?,
        name: name.to_owned(),
        inode: (st.st_dev, st.st_ino),
        folder,
    })
}

/// Makes the mount point `name` in `parent` (a folder or an empty file, as the item is) and
/// attaches `tree` on exactly that entry, by descriptor.
fn mount_at(
    shared: &mut Shared,
    tree: OwnedFd,
    folder: bool,
    parent: &OwnedFd,
    name: &str,
    shown: &Path,
) -> Result<(), ShareFault> {
    let fail = |e: Errno| ShareFault::Make {
        path: shown.display().to_string(),
        os: e.into(),
    };
    if folder {
        nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o755))
    } else {
        nix::fcntl::openat(
            parent,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map(drop)
    }
    .map_err(fail)?;
    let point_fd = open_entry(parent, name).map_err(fail)?;
    let point = made_entry(parent, name, &point_fd, folder).map_err(fail)?;
    let mount_failed = |e: feather_sys::SysError| ShareFault::Mount {
        path: shown.display().to_string(),
        os: Os::from(&e),
    };
    if let Err(e) = feather_sys::mount::attach_tree(&tree, &point_fd) {
        remove_entry(&point);
        return Err(mount_failed(e));
    }
    let mount_id = feather_sys::mount::mount_id(&tree).map_err(mount_failed);
    // Recorded before a failure is returned: dropping `shared` then unmounts it.
    shared.mounted.push(Mounted {
        tree,
        mount_id: mount_id.as_ref().copied().unwrap_or(0),
        point,
    });
    mount_id.map(drop)
}

/// Clones each opened item in the source's mount namespace, then enters the target's and
/// mounts the clones under a fresh folder.
fn share(plan: &Plan, go: &Go, opened: Vec<(OwnedFd, Found)>) -> Result<Shared, ShareFault> {
    let pidfd = |pid: i32, end: End| {
        feather_sys::process::pidfd_open(Pid::from_raw(pid)).map_err(|e| ShareFault::Pidfd {
            end,
            os: Os::from(&e),
        })
    };
    let source = pidfd(plan.source_pid, End::Source)?;
    let target = pidfd(go.target_pid, End::Target)?;
    // The pidfds pin both processes: checked now, they are the VMs' inits while we enter them.
    same_process(plan.source_pid, plan.source_ticks, End::Source)?;
    same_process(go.target_pid, go.target_ticks, End::Target)?;
    let own_fds: OwnedFd = File::open("/proc/self/fd")
        .map_err(|e| ShareFault::OwnFds { os: Os::from(&e) })?
        .into();
    let enter = |pidfd: &OwnedFd, end: End| {
        feather_sys::process::join_namespaces(pidfd, CloneFlags::CLONE_NEWNS).map_err(|e| {
            ShareFault::Enter {
                end,
                os: Os::from(&e),
            }
        })
    };
    // open_tree(OPEN_TREE_CLONE) clones only mounts of the caller's own namespace.
    enter(&source, End::Source)?;
    let mut trees = Vec::new();
    for (index, (fd, found)) in opened.iter().enumerate() {
        // Private: a peer of the source VM's mount, it would carry the mounts made later under
        // either VM's (another hand-over's, writable) to the other.
        let tree = mount::clone_tree_private(fd).map_err(|e| ShareFault::Take {
            path: found.real.clone(),
            os: Os::from(&e),
        })?;
        // Never a way to gain privilege or reach devices through a handed-over file.
        let flags = TreeFlags {
            read_only: !go.writable.get(index).copied().unwrap_or(false),
            no_suid: true,
            no_dev: true,
        };
        mount::set_tree_flags(&tree, flags).map_err(|e| ShareFault::Flags {
            path: found.real.clone(),
            os: Os::from(&e),
        })?;
        trees.push((tree, found.folder));
    }
    drop(opened);
    enter(&target, End::Target)?;
    let base = folder_beneath_root(SHARED_IN_VM)?;
    let dir = Path::new(SHARED_IN_VM).join(&plan.id);
    let (id_entry, id_dir) = make_folder(&base, &plan.id, &dir)?;
    let mut shared = Shared {
        paths: Vec::new(),
        own_fds,
        mounted: Vec::new(),
        made: vec![id_entry],
    };
    let mut used = HashSet::new();
    for (index, ((tree, folder), item)) in trees.into_iter().zip(&plan.items).enumerate() {
        let name = Path::new(item)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".to_owned());
        // Two arguments with one name each get a folder of their own.
        let (parent, parent_path) = if used.insert(name.clone()) {
            let parent = id_dir.try_clone().map_err(|e| ShareFault::Make {
                path: dir.display().to_string(),
                os: Os::from(&e),
            })?;
            (parent, dir.clone())
        } else {
            let sub = (index + 1).to_string();
            let sub_path = dir.join(&sub);
            let (entry, sub_dir) = make_folder(&id_dir, &sub, &sub_path)?;
            shared.made.push(entry);
            (sub_dir, sub_path)
        };
        let point = parent_path.join(&name);
        mount_at(&mut shared, tree, folder, &parent, &name, &point)?;
        shared.paths.push(point.to_string_lossy().into_owned());
    }
    Ok(shared)
}

/// Whether `pid` is still the process that started at `ticks` (the VM's init the broker saw).
fn same_process(pid: i32, ticks: Option<u64>, end: End) -> Result<(), ShareFault> {
    let now = feather_sys::process::start_ticks(Pid::from_raw(pid));
    if ticks.is_some() && now == ticks {
        Ok(())
    } else {
        Err(ShareFault::Stopped { end })
    }
}

/// Opens the absolute `path` in the caller's root, making missing folders; no symlink is
/// followed (the target VM's own processes could have planted them).
fn folder_beneath_root(path: &str) -> Result<OwnedFd, ShareFault> {
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH)
    };
    let mut dir: OwnedFd = File::open("/")
        .map_err(|e| ShareFault::TargetRoot { os: Os::from(&e) })?
        .into();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        match nix::sys::stat::mkdirat(&dir, part, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(ShareFault::Make {
                    path: path.to_owned(),
                    os: e.into(),
                })
            }
        }
        dir = openat2(&dir, part, how()).map_err(|e| ShareFault::OpenInTarget {
            path: path.to_owned(),
            os: e.into(),
        })?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_paths_are_absolute_and_never_climb() {
        assert_eq!(
            requested_path("a.txt", "/home/ann").unwrap(),
            "/home/ann/a.txt"
        );
        assert_eq!(requested_path("/tmp//./x", "/").unwrap(), "/tmp/x");
        assert_eq!(requested_path("./d/", "/srv").unwrap(), "/srv/d");
        let climbs = requested_path("../etc/shadow", "/home/ann").unwrap_err();
        assert!(matches!(climbs, PathFault::Climbs(_)), "{climbs}");
        assert!(climbs.to_string().contains("'..'"), "{climbs}");
        let climbs = requested_path("/home/ann/Downloads/../../../etc/shadow", "/").unwrap_err();
        assert!(climbs.to_string().contains("'..'"), "{climbs}");
        assert!(matches!(
            requested_path("a", "relative"),
            Err(PathFault::Relative { .. })
        ));
        assert!(matches!(
            requested_path("", "/"),
            Err(PathFault::NotAPath(_))
        ));
    }

    /// Only an overlay's id names a layer: a file of `proc`, `sysfs` or another filesystem
    /// (whose id every VM shares, or which is no layer) gives none, so the source's stop never
    /// ends a target's process for holding one.
    #[test]
    fn only_files_of_an_overlay_have_a_layers_id() {
        for path in ["/proc/self/status", "/sys/kernel/mm", "/"] {
            let fd: OwnedFd = File::open(path).unwrap().into();
            let id = layer_id(&fd).unwrap();
            if path == "/"
                && std::fs::read_to_string("/proc/self/mountinfo")
                    .unwrap()
                    .lines()
                    .any(|line| {
                        line.split_whitespace().nth(4) == Some("/") && line.contains(" overlay ")
                    })
            {
                continue;
            }
            assert_eq!(id, None, "{path}");
        }
    }

    /// A stand-in helper: a shell that says `reports` (one per line), then waits for its
    /// input to close.
    fn fake_helper(reports: &[&str]) -> Command {
        let mut script = String::new();
        for report in reports {
            script.push_str(&format!("printf '%s\\n' '{report}'; "));
        }
        script.push_str("cat >/dev/null");
        let mut command = Command::new("sh");
        command.args(["-c", &script, "fake-helper"]);
        command
    }

    fn plan() -> Plan {
        Plan {
            version: 0,
            source_pid: 1,
            source_ticks: None,
            id: "t".into(),
            items: vec!["/a".into()],
        }
    }

    #[test]
    fn a_helper_of_another_build_is_named_not_misread() {
        let error = Helper::spawn(fake_helper(&[r#"{"step":"hello","version":99}"#]), &plan())
            .err()
            .unwrap();
        assert!(
            matches!(
                error,
                HelperError::Protocol(ProtocolError::Version {
                    expected: VERSION,
                    received: 99,
                    ..
                })
            ),
            "{error}"
        );
        let mut ends = Command::new("sh");
        ends.args(["-c", "exit 0"]);
        let silent = Helper::spawn(ends, &plan()).err().unwrap();
        assert!(matches!(silent, HelperError::Ended), "{silent}");
    }

    #[test]
    fn reports_out_of_turn_and_faults_arrive_typed() {
        let hello = format!(r#"{{"step":"hello","version":{VERSION}}}"#);
        let mounted = r#"{"step":"mounted","paths":[]}"#;
        let mut helper = Helper::spawn(fake_helper(&[&hello, mounted]), &plan()).unwrap();
        let error = helper.resolved().unwrap_err();
        assert!(
            matches!(
                &error,
                HelperError::Protocol(ProtocolError::Unexpected {
                    expected: "resolved paths",
                    ..
                })
            ),
            "{error}"
        );
        assert!(error.to_string().contains("Mounted"), "{error}");
        let refused = r#"{"step":"resolved","items":[{"Err":{"fault":"missing","path":"/a"}}]}"#;
        let mut helper = Helper::spawn(fake_helper(&[&hello, refused]), &plan()).unwrap();
        let items = helper.resolved().unwrap();
        assert_eq!(items, [Err(ShareFault::Missing { path: "/a".into() })]);
    }
}

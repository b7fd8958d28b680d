//! Resource-name transfer: a path named in one VM (the source) becomes visible in another (the
//! target) at a fresh place, and the argument is rewritten to that place.
//!
//! The content handed over is the one the path has *in the source* — which may exist only in
//! the source's private layer — and exactly that file or folder: it is bind-mounted with the new
//! mount API, never copied, so with `mode=rw` the target's writes land in the source's file.
//!
//! ```text
//! broker (keeper, multi-threaded)              share helper (`feather-keeper __shuttle-share PLAN`)
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
//!   ◀── Mounted { paths }  |  Failed { why }
//!   …the program runs in the target…
//!   close the helper's stdin ───────────────▶   umount by the tree's descriptor, remove
//!                                                 what it made (by folder descriptor), exit
//! ```
//!
//! Entering mount namespaces needs a single-threaded process, hence the helper; if the keeper
//! dies, the helper's stdin closes and it removes the mounts all the same.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::raw;

/// Where handed-over files appear in a target VM: `<this>/<id>/<basename>`.
pub const SHARED_IN_VM: &str = "/run/feather/shared";

/// The hidden subcommand of the helper binary (`feather-keeper`, Peers::helper) that runs the
/// share helper.
pub const HELPER_SUBCOMMAND: &str = "__shuttle-share";

/// The absolute path an argument names in the source, from the source's working folder
/// `cwd`, with `.` and empty components dropped. A `..` is refused: it is how a path walks out
/// of what a `files` rule allows, and a requester can always name the file directly.
pub fn requested_path(arg: &str, cwd: &str) -> Result<String, String> {
    if arg.is_empty() || arg.contains('\0') {
        return Err(format!("{arg:?} is not a path"));
    }
    let joined = if arg.starts_with('/') {
        arg.to_owned()
    } else if cwd.starts_with('/') {
        format!("{cwd}/{arg}")
    } else {
        return Err(format!(
            "{arg:?} is relative and the working folder {cwd:?} is not absolute"
        ));
    };
    let mut parts = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "{arg:?} climbs with '..' (name the file by its own path)"
                ))
            }
            part => parts.push(part),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// What the broker asks the helper to hand over.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Host pid of the source VM's init (a child of the keeper that runs the helper)…
    pub source_pid: i32,
    /// …and its start time: a process that reused the pid is not entered.
    pub source_ticks: Option<u64>,
    /// Names the folder under [`SHARED_IN_VM`]; unique among the target's hand-overs.
    pub id: String,
    /// Absolute paths in the source, as [`requested_path`] made them.
    pub items: Vec<String>,
}

/// Where a requested path led in the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// The path with every symlink followed (inside the source's root).
    pub real: String,
    pub folder: bool,
}

/// The broker's word to the helper after the paths were checked.
#[derive(Debug, Serialize, Deserialize)]
pub struct Go {
    /// Host pid of the target VM's init, and its start time.
    pub target_pid: i32,
    pub target_ticks: Option<u64>,
    /// Per item, whether it is mounted writable (both rules for a path and its real path
    /// must say rw).
    pub writable: Vec<bool>,
}

/// What the helper reports, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Report {
    Resolved { items: Vec<Result<Found, String>> },
    Mounted { paths: Vec<String> },
    Failed { why: String },
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
    pub fn spawn(mut command: Command, plan: &Plan) -> Result<Helper, String> {
        let plan = serde_json::to_string(plan).map_err(|e| e.to_string())?;
        let mut child = command
            .arg(plan)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the share helper: {e}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the share helper has no pipes".into());
        };
        Ok(Helper {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
        })
    }

    /// Where each item led in the source, or why it cannot be handed over.
    pub fn resolved(&mut self) -> Result<Vec<Result<Found, String>>, String> {
        match self.report()? {
            Report::Resolved { items } => Ok(items),
            Report::Failed { why } => Err(why),
            other => Err(format!("the share helper answered out of turn: {other:?}")),
        }
    }

    /// Mounts every item in the target; returns where each is there.
    pub fn mount(&mut self, go: &Go) -> Result<Vec<String>, String> {
        let mut line = serde_json::to_vec(go).map_err(|e| e.to_string())?;
        line.push(b'\n');
        self.stdin
            .as_mut()
            .ok_or("the share helper's input is closed")?
            .write_all(&line)
            .map_err(|e| format!("cannot talk to the share helper: {e}"))?;
        match self.report()? {
            Report::Mounted { paths } => Ok(paths),
            Report::Failed { why } => Err(why),
            other => Err(format!("the share helper answered out of turn: {other:?}")),
        }
    }

    fn report(&mut self) -> Result<Report, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => Err("the share helper ended early (see the keeper's log)".into()),
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| format!("the share helper's report does not parse: {e}")),
        }
    }
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
    let mut say = |report: &Report| -> bool {
        serde_json::to_string(report)
            .ok()
            .is_some_and(|line| writeln!(out, "{line}").and_then(|()| out.flush()).is_ok())
    };
    let plan: Plan = match serde_json::from_str(plan) {
        Ok(plan) => plan,
        Err(e) => {
            say(&Report::Failed {
                why: format!("bad plan: {e}"),
            });
            return 2;
        }
    };
    let opened = match open_in_source(&plan) {
        Ok(opened) => opened,
        Err(why) => {
            say(&Report::Failed { why });
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
    let mut line = String::new();
    if stdin.read_line(&mut line).unwrap_or(0) == 0 {
        return 0;
    }
    let go: Go = match serde_json::from_str(&line) {
        Ok(go) => go,
        Err(e) => {
            say(&Report::Failed {
                why: format!("bad go: {e}"),
            });
            return 2;
        }
    };
    let fds: Vec<(OwnedFd, Found)> = match opened.into_iter().collect() {
        Ok(fds) => fds,
        Err(why) => {
            say(&Report::Failed { why });
            return 1;
        }
    };
    let shared = match share(&plan, &go, fds) {
        Ok(shared) => shared,
        Err(why) => {
            say(&Report::Failed { why });
            return 1;
        }
    };
    if !say(&Report::Mounted {
        paths: shared.paths.clone(),
    }) {
        return 1;
    }
    // Until the broker closes our input: the program runs.
    while stdin.read_line(&mut line).unwrap_or(0) > 0 {}
    drop(shared);
    0
}

/// Opens each item in the source's root (from the host's mounts, through
/// `/proc/<init>/root`), refusing what may not be handed over.
/// One item opened in the source (a descriptor of it, and where it led), or why not.
type Opened = Result<(OwnedFd, Found), String>;

fn open_in_source(plan: &Plan) -> Result<Vec<Opened>, String> {
    let root_path = format!("/proc/{}/root", plan.source_pid);
    let root: OwnedFd = File::open(&root_path)
        .map_err(|e| format!("cannot open the source VM's root {root_path}: {e}"))?
        .into();
    // Checked after the open: the root opened belongs to the init the broker named.
    same_process(plan.source_pid, plan.source_ticks, "source")?;
    Ok(plan
        .items
        .iter()
        .map(|path| open_one(&root, path))
        .collect())
}

fn open_one(root: &OwnedFd, path: &str) -> Result<(OwnedFd, Found), String> {
    // RESOLVE_IN_ROOT: `/`, `..` and absolute symlinks stop at the VM's root, so nothing
    // outside the VM is reachable; RESOLVE_NO_MAGICLINKS: no /proc/*/fd jumps to a file the
    // VM's processes hold open elsewhere.
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root, path, how).map_err(|e| match e {
        Errno::ENOENT => format!("{path} does not exist in the source VM"),
        Errno::ELOOP => format!("{path} leads through a /proc magic link or a symlink loop"),
        Errno::EXDEV => format!("{path} leads out of the source VM"),
        e => format!("{path}: {}", e.desc()),
    })?;
    let meta = File::from(fd.try_clone().map_err(|e| e.to_string())?)
        .metadata()
        .map_err(|e| format!("{path}: {e}"))?;
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
        return Err(format!(
            "{path} is {what}: only regular files and folders are handed over"
        ));
    };
    // The descriptor's path as the source's root sees it: its mount belongs to the VM's
    // mount namespace, whose root is the VM's root.
    let real = std::fs::read_link(format!("/proc/self/fd/{}", raw_fd(&fd)))
        .map_err(|e| format!("{path}: cannot tell where it leads: {e}"))?;
    let real = real.to_string_lossy().into_owned();
    if !real.starts_with('/') || real.ends_with(" (deleted)") {
        return Err(format!(
            "{path} leads to {real:?}, not a path in the source VM"
        ));
    }
    Ok((fd, Found { real, folder }))
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
fn unmount(own_fds: &OwnedFd, mounted: &Mounted) -> Result<(), String> {
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
    nix::unistd::fchdir(own_fds)
        .map_err(|e| format!("cannot enter /proc/self/fd: {}", e.desc()))?;
    let link = raw_fd(&mounted.tree).to_string();
    nix::mount::umount2(link.as_str(), nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| e.desc().to_owned())
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
fn make_folder(parent: &OwnedFd, name: &str, shown: &Path) -> Result<(Entry, OwnedFd), String> {
    let fail = |e: Errno| {
        format!(
            "cannot make {} in the target VM: {}",
            shown.display(),
            e.desc()
        )
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
) -> Result<(), String> {
    let fail = |e: Errno| {
        format!(
            "cannot make {} in the target VM: {}",
            shown.display(),
            e.desc()
        )
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
    let mount_failed = |e: Errno| {
        format!(
            "cannot mount at {} in the target VM: {}",
            shown.display(),
            e.desc()
        )
    };
    if let Err(e) = raw::attach_tree(&tree, &point_fd) {
        remove_entry(&point);
        return Err(mount_failed(e));
    }
    let mount_id = feather_sys::mount::mount_id(&tree).map_err(|e| mount_failed(e.errno));
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
fn share(plan: &Plan, go: &Go, opened: Vec<(OwnedFd, Found)>) -> Result<Shared, String> {
    let source = feather_sys::process::pidfd_open(Pid::from_raw(plan.source_pid))
        .map_err(|e| format!("the source VM: {e}"))?;
    let target = feather_sys::process::pidfd_open(Pid::from_raw(go.target_pid))
        .map_err(|e| format!("the target VM: {e}"))?;
    // The pidfds pin both processes: checked now, they are the VMs' inits while we enter them.
    same_process(plan.source_pid, plan.source_ticks, "source")?;
    same_process(go.target_pid, go.target_ticks, "target")?;
    let own_fds: OwnedFd = File::open("/proc/self/fd")
        .map_err(|e| format!("cannot open /proc/self/fd: {e}"))?
        .into();
    // open_tree(OPEN_TREE_CLONE) clones only mounts of the caller's own namespace.
    feather_sys::process::join_namespaces(&source, CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot enter the source VM's mounts: {e}"))?;
    let mut trees = Vec::new();
    for (index, (fd, found)) in opened.iter().enumerate() {
        let tree = raw::clone_tree(fd).map_err(|e| {
            format!(
                "cannot take {} from the source VM: {}",
                found.real,
                e.desc()
            )
        })?;
        // Never a way to gain privilege or reach devices through a handed-over file.
        let mut flags = raw::MOUNT_ATTR_NOSUID | raw::MOUNT_ATTR_NODEV;
        if !go.writable.get(index).copied().unwrap_or(false) {
            flags |= raw::MOUNT_ATTR_RDONLY;
        }
        raw::set_mount_flags(&tree, flags)
            .map_err(|e| format!("cannot make {} read-only: {}", found.real, e.desc()))?;
        trees.push((tree, found.folder));
    }
    drop(opened);
    feather_sys::process::join_namespaces(&target, CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot enter the target VM's mounts: {e}"))?;
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
            (id_dir.try_clone().map_err(|e| e.to_string())?, dir.clone())
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
fn same_process(pid: i32, ticks: Option<u64>, which: &str) -> Result<(), String> {
    let now = feather_sys::process::start_ticks(Pid::from_raw(pid));
    if ticks.is_some() && now == ticks {
        Ok(())
    } else {
        Err(format!("the {which} VM stopped during the hand-over"))
    }
}

/// Opens the absolute `path` in the caller's root, making missing folders; no symlink is
/// followed (the target VM's own processes could have planted them).
fn folder_beneath_root(path: &str) -> Result<OwnedFd, String> {
    let how = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH)
    };
    let mut dir: OwnedFd = File::open("/")
        .map_err(|e| format!("cannot open the target VM's root: {e}"))?
        .into();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        match nix::sys::stat::mkdirat(&dir, part, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(format!("cannot make {path} in the target VM: {}", e.desc())),
        }
        dir = openat2(&dir, part, how())
            .map_err(|e| format!("cannot open {path} in the target VM: {}", e.desc()))?;
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
        assert!(requested_path("../etc/shadow", "/home/ann")
            .unwrap_err()
            .contains("'..'"));
        assert!(
            requested_path("/home/ann/Downloads/../../../etc/shadow", "/")
                .unwrap_err()
                .contains("'..'")
        );
        assert!(requested_path("a", "relative").is_err());
        assert!(requested_path("", "/").is_err());
    }
}

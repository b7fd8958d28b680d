//! The mount points `/etc/fstab` lets a user mount on (`user`, `users`, `owner`, `group`): at
//! one, any user can mount a filesystem of theirs at any moment, mounted now or not. Each is
//! found where mount(8) mounts it, which is not always where its line's text says: mount(8)
//! follows the path (`realpath`), so `/mnt/usb/`, `/mnt//usb`, `/mnt/./usb`, `/mnt/x/../usb`
//! and a link to `/mnt` spell one mount point.
//!
//! The path is followed as the kernel would, one name at a time, each folder judged before
//! anything in it is looked at: only in a folder root alone can change, on a filesystem whose
//! lookups no server answers. Past a folder a user can change (theirs, one others may write, a
//! mount of theirs), or a link of theirs, the line's mount point is wherever they point it;
//! past a FUSE, network or automount folder, it is wherever that filesystem's server says, and
//! asking would wait on a server that may never answer (a user's stopped FUSE server, an
//! unreachable share). There the walk stops and the line is said to lead anywhere
//! ([`UsersMountPoints::anywhere`]): no folder can be told safe from it.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::lookup::{self, Mounts, Name};
use crate::mountinfo::{self, unescape, MountEntry};
use crate::raw::{self, EntryUnasked};
use crate::user_mounts;

/// Where the admin lists mounts, some of which any user may make.
const FSTAB: &str = "/etc/fstab";

/// The fstab options that let a user other than root mount an entry (mount(8)).
const USERS_MAY_MOUNT: [&str; 4] = ["user", "users", "owner", "group"];

/// Filesystems whose lookups the kernel answers from a local disk or from memory, no server
/// asked, as mountinfo names them: the only ones the walk looks in. An allow-list, so that it
/// fails closed: any other (NFS, CIFS, 9p, a cluster filesystem, one this list has never
/// heard of) may wait for ever on a server that is gone, and is not looked in. An overlay is
/// looked in where its layers are on these ([`overlay_not_looked_in`]). Judged by type, not
/// device: ext4 on an NBD or iSCSI disk, or on a loop file on NFS, waits as NFS does.
#[rustfmt::skip]
const LOCAL_FILESYSTEMS: [&str; 47] = [
    // Disks (and flash, and read-only images).
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "bcachefs", "f2fs", "jfs", "reiserfs",
    "nilfs2", "vfat", "msdos", "exfat", "ntfs", "ntfs3", "hfs", "hfsplus", "iso9660", "udf",
    "squashfs", "erofs", "cramfs", "romfs", "ubifs", "jffs2",
    // Memory and the kernel's own.
    "tmpfs", "ramfs", "devtmpfs", "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue",
    "debugfs", "tracefs", "securityfs", "configfs", "pstore", "bpf", "efivarfs", "hugetlbfs",
    "binfmt_misc", "fusectl", "nsfs", "selinuxfs",
];

/// How deep overlays may stack on overlays (the kernel's `FILESYSTEM_MAX_STACK_DEPTH`).
const OVERLAY_DEPTH: usize = 2;

/// Anyone but the owner may write (`S_IWGRP | S_IWOTH`).
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Entries of a folder with it may be renamed or removed only by their owner (`/tmp`).
const STICKY: u32 = 0o1000;

/// The mount points `/etc/fstab` lets users mount on, each with the option that does: read
/// once, then asked of every folder a walk went through.
#[derive(Clone, Debug)]
pub struct UsersMountPoints {
    points: Vec<(PathBuf, String)>,
    anywhere: Option<Anywhere>,
}

/// The fstab lines whose mount point may be any folder, each said (the line, where following
/// its path stopped and why).
#[derive(Clone, Debug)]
pub struct Anywhere {
    pub lines: Vec<String>,
    /// Only a passing failure to look made them so (a mount table that changed meanwhile,
    /// /proc unreadable, an I/O error): the lines themselves may be fine.
    pub passing: bool,
}

impl UsersMountPoints {
    /// This host's, from `/etc/fstab` (bounded); none where there is none. Resolved again
    /// only when the file changed since this process last did, or when its lines were
    /// followed on the filesystem in a process that outlives one command ([`Remembered`]).
    pub fn of_this_host() -> Self {
        resolved(Path::new(FSTAB), &LAST, STRETCH.load(Ordering::Relaxed))
    }

    fn in_fstab(fstab: &str) -> Self {
        let mut mounts = Mounts::default();
        let mut found = Vec::new();
        let mut stopped = Vec::new();
        for line in users_lines(fstab) {
            match where_mounted(&line.target, &mut mounts) {
                Ok(mounted) => found.push((line, mounted)),
                Err(stop) => stopped.push((stop.said(&line), stop.passing)),
            }
        }
        stopped.extend(through_another(&found).map(|said| (said, false)));
        let anywhere = (!stopped.is_empty()).then(|| Anywhere {
            passing: stopped.iter().all(|(_, passing)| *passing),
            lines: stopped.into_iter().map(|(said, _)| said).collect(),
        });
        let points = found
            .into_iter()
            .map(|(line, mounted)| (mounted.point, line.option));
        UsersMountPoints {
            points: points.collect(),
            anywhere,
        }
    }

    /// Why a user may mount on `folder` (a path as a walk went through it), or None.
    pub fn at(&self, folder: &Path) -> Option<String> {
        let (_, option) = self.points.iter().find(|(point, _)| point == folder)?;
        Some(format!(
            "is a mount point {FSTAB} lets users mount on (`{option}`): any user can mount a \
             filesystem of theirs there at any moment"
        ))
    }

    /// The lines whose mount point may be any folder, every state root's too (its path goes
    /// past a folder or link a user can change, or one feather does not look in), or None.
    pub fn anywhere(&self) -> Option<&Anywhere> {
        self.anywhere.as_ref()
    }
}

/// This process's last resolution of `/etc/fstab` ([`resolved`]).
static LAST: Mutex<Option<Remembered>> = Mutex::new(None);

/// 0 in a process that outlives a command; else which stretch without a wait of a process
/// that runs one command and ends this is ([`resolve_once_per_command`], [`follow_lines_again`]).
static STRETCH: AtomicU64 = AtomicU64::new(0);

/// Says that this process runs one command and ends (the `feather` front): the fstab lines
/// users may mount are then followed on the filesystem once for each stretch of the command
/// without a wait ([`follow_lines_again`]), not again at each state root it checks (`ls`
/// checked three). A process that outlives a command (a keeper, the web view, a detached fill:
/// [`resolve_at_every_look`]) follows them again at each look, so a folder or mount changed on
/// a line's way is seen at its next one.
pub fn resolve_once_per_command() {
    let _ = STRETCH.compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed);
}

/// Says that this process waited for something of unknown length (another command's lock):
/// the fstab lines users may mount are followed again at the next look, as a folder or mount on
/// their way may have changed meanwhile. Nothing in a process that follows them at each look.
pub fn follow_lines_again() {
    let _ = STRETCH.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        (n != 0).then_some(n + 1)
    });
}

/// Says that this process goes on after its command (`pool --fill`'s filler, detached for
/// rounds): from now on the fstab lines users may mount are followed again at each look.
pub fn resolve_at_every_look() {
    STRETCH.store(0, Ordering::Relaxed);
}

/// A resolution of an fstab, and the stamp of the file it was read from.
///
/// Why keeping it is sound: what the resolution says is a function of the file's text and,
/// for each line users may mount, of the folders and mounts on that line's way. The text is
/// read again whenever the stamp (device, inode, size, modification and change times) moved,
/// so an edit or a file renamed into place is seen (a change time cannot be set back by
/// anyone). An edit that keeps the size and inode is told by its times alone: always where
/// a change after a look is stamped finer than the clock's tick (since Linux 6.13 on ext4,
/// xfs, btrfs and tmpfs); elsewhere (an older kernel, overlayfs, NFS, zfs) two such edits by
/// root within one tick, with a look between them, keep the first text until the next change.
/// A text without such lines asks nothing of the filesystem: kept while the stamp holds, in
/// any process. A text with them is followed again at each look unless the process runs one
/// command ([`resolve_once_per_command`]), where it is kept until the command waits for
/// something of unknown length ([`follow_lines_again`]).
struct Remembered {
    stamp: Option<Stamp>,
    points: UsersMountPoints,
    followed_lines: bool,
    /// The stretch of a one-command process it was followed in ([`STRETCH`]).
    stretch: u64,
}

/// What identifies a version of a file's text without reading it.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    /// `path`'s stamp, None where it cannot be looked at (a missing fstab: no lines).
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// The user mount points of the fstab at `fstab`, from `last` when that may be kept
/// ([`Remembered`]; `stretch`: the [`STRETCH`] this process is in), else read and resolved, and
/// kept in `last`.
fn resolved(fstab: &Path, last: &Mutex<Option<Remembered>>, stretch: u64) -> UsersMountPoints {
    // Stamped before it is read: a change between the two moves the next look's stamp.
    let stamp = Stamp::of(fstab);
    // Never waited for: a lock held by another thread (or by a thread of the parent this
    // process was forked from, which would hold it for ever here) means a fresh resolution.
    let Ok(mut last) = last.try_lock() else {
        return UsersMountPoints::in_fstab(&user_mounts::read_bounded(fstab));
    };
    let keep = |kept: &&Remembered| {
        kept.stamp == stamp && (!kept.followed_lines || (stretch != 0 && kept.stretch == stretch))
    };
    if let Some(kept) = last.as_ref().filter(keep) {
        return kept.points.clone();
    }
    let text = user_mounts::read_bounded(fstab);
    let points = UsersMountPoints::in_fstab(&text);
    *last = Some(Remembered {
        stamp,
        points: points.clone(),
        followed_lines: users_lines(&text).next().is_some(),
        stretch,
    });
    points
}

/// A line of fstab that users may mount: its source and mount point as written (unescaped),
/// and the option that lets them.
struct UsersLine {
    source: String,
    target: PathBuf,
    option: String,
}

fn users_lines(fstab: &str) -> impl Iterator<Item = UsersLine> + '_ {
    fstab.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let (source, target, _, options) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        if line.trim_start().starts_with('#') {
            return None;
        }
        let option = options.split(',').find(|option| {
            let name = option.split('=').next().unwrap_or(option);
            USERS_MAY_MOUNT.contains(&name)
        })?;
        Some(UsersLine {
            source: source.to_owned(),
            target: PathBuf::from(unescape(target)),
            option: option.to_owned(),
        })
    })
}

/// Where a line's mount point is, and the folders its path was followed through to get there.
struct Mounted {
    point: PathBuf,
    through: Vec<PathBuf>,
}

/// Each line whose path goes through another's mount point (`/mnt/a/b` and `/mnt/a`), said: it
/// goes through whatever filesystem a user mounts there.
fn through_another(found: &[(UsersLine, Mounted)]) -> impl Iterator<Item = String> + '_ {
    found.iter().filter_map(|(line, mounted)| {
        let (other, at) = found
            .iter()
            .find(|(_, other)| mounted.through.contains(&other.point))?;
        let why = format!(
            "is a mount point {FSTAB} lets users mount on (`{}`)",
            other.option
        );
        Some(Stop::new(&at.point, why).said(line))
    })
}

/// Where following a line's path stopped, and why: past it, a user or a server decides.
#[derive(Debug)]
struct Stop {
    at: PathBuf,
    why: String,
    /// Stopped because looking failed (see [`Anywhere::passing`]), not because of the path.
    passing: bool,
}

impl Stop {
    fn new(at: &Path, why: impl Into<String>) -> Self {
        Stop {
            at: at.to_path_buf(),
            why: why.into(),
            passing: false,
        }
    }

    /// Where looking at `at` failed with `e`: nothing is known of the line there.
    fn could_not(at: &Path, e: impl std::fmt::Display) -> Self {
        Stop {
            passing: true,
            ..Stop::new(at, format!("could not be looked at ({e})"))
        }
    }

    /// The fault of `line`: its mount point may be any folder. Where the walk stopped at `/`
    /// itself, no mount point avoids it, and only dropping the option does.
    fn said(&self, line: &UsersLine) -> String {
        let only_fix = if self.at == Path::new("/") && !self.passing {
            "; every path goes through `/`, so no mount point avoids it: drop the line's \
             user option"
        } else {
            ""
        };
        format!(
            "{FSTAB} line `{} {}` lets users mount (`{}`) on a path that may lead anywhere past \
             {}, which {}{only_fix}",
            line.source,
            line.target.display(),
            line.option,
            self.at.display(),
            self.why
        )
    }
}

/// A folder the walk is in, judged: root's alone, on a filesystem no server answers for.
struct Folder {
    fd: File,
    path: PathBuf,
    mount_id: u64,
    /// Others may make names in it (it is sticky: they cannot move root's).
    shared: bool,
}

/// What a name in a judged folder is.
enum Looked {
    /// Nothing: only root could make it, in a folder of root's alone.
    Missing,
    /// The line's own mount point, something mounted on it now: never looked in.
    MountedOn,
    /// An entry on a mount judged fit to ask (its folder's, or one crossed into and judged).
    Entry(File, EntryUnasked),
}

/// Where mount(8) mounts `target`, followed as the kernel follows it ([module doc](self)); a
/// relative one (`none`) is kept as written, naming no folder a walk goes through.
fn where_mounted(target: &Path, mounts: &mut Mounts) -> Result<Mounted, Stop> {
    if !target.is_absolute() {
        return Ok(Mounted {
            point: target.to_path_buf(),
            through: Vec::new(),
        });
    }
    let slash = Path::new("/");
    let opened = opened_slash().map_err(|e| Stop::could_not(slash, e))?;
    let mount_id = mount_id_of(&opened, slash)?;
    judged_mount(mount_id, slash, None, mounts)?;
    let entry = asked(&opened, slash)?;
    let mut trail = vec![judged_folder(opened, slash, entry, mount_id)?];
    let mut through = vec![slash.to_path_buf()];
    let mut names: VecDeque<Name> = lookup::names_of(target).collect();
    let mut links = 0;
    while let Some(name) = lookup::next_name(&mut names, &mut trail) {
        let folder = trail.last().expect("/ stays on the trail");
        let here = folder.path.join(&name);
        let last = names.is_empty();
        let (opened, entry) = match looked_at(folder, Path::new(&name), &here, last, mounts)? {
            Looked::Entry(opened, entry) => (opened, entry),
            Looked::MountedOn => {
                return Ok(Mounted {
                    point: here,
                    through,
                })
            }
            Looked::Missing => {
                let rest = std::iter::once(Name::Plain(name)).chain(names);
                return Ok(as_written(&folder.path, rest, through));
            }
        };
        if is_link(entry.mode) {
            links += 1;
            if links > lookup::MAX_LINKS {
                return Err(Stop::new(&here, "leads through too many links"));
            }
            let to = lookup::read_link(&opened).map_err(|e| Stop::could_not(&here, e))?;
            let to: Vec<Name> = lookup::names_of(Path::new(&to)).collect();
            to.into_iter().rev().for_each(|name| names.push_front(name));
            continue;
        }
        if last {
            // The mount point itself: never looked in, whatever is mounted there now.
            return Ok(Mounted {
                point: here,
                through,
            });
        }
        if !is_folder(entry.mode) {
            // mount(8) fails there until root makes it otherwise.
            return Ok(as_written(&here, names, through));
        }
        trail.push(judged_folder(opened, &here, entry, entry.mount_id)?);
        through.push(here);
    }
    let point = trail.pop().expect("/ stays on the trail").path;
    Ok(Mounted { point, through })
}

/// Why the walk does not open `here`, a name in a folder on mount `folder_mount`, or None:
/// the mount `table` (as the walk last read it) lists an automount point there. Even an
/// `O_PATH` open that crosses no mount (`RESOLVE_NO_XDEV`) passes through the automount
/// daemon first (the kernel's `d_manage` runs before the mount is crossed, and waits while
/// the daemon mounts or expires it), so it is refused by the table, before any open. One
/// mounted after the table was read is not seen.
fn automount_point_at(table: &[MountEntry], folder_mount: u64, here: &Path) -> Option<String> {
    let autofs = table.iter().find(|mount| {
        mount.parent == folder_mount && mount.mount_point == here && mount.fs_type == "autofs"
    })?;
    Some(format!(
        "is an automount point ({}), whose daemon answers for what is in it: feather does not \
         open it",
        autofs.fs_type
    ))
}

/// `name` (at `here`, the line's last name if `last`) in the judged `folder`, opened without
/// following it, its mount judged before anything is asked of it where it is not the
/// folder's, then looked at without asking its filesystem ([`Looked`]).
fn looked_at(
    folder: &Folder,
    name: &Path,
    here: &Path,
    last: bool,
    mounts: &mut Mounts,
) -> Result<Looked, Stop> {
    if let Some(why) = automount_point_at(mounts.table(), folder.mount_id, here) {
        return Err(Stop::new(here, why));
    }
    // Not as a folder, so that an automount point is not mounted by the lookup.
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW;
    let (opened, crossed) = match lookup::opened_noting_mount(&folder.fd, name, flags) {
        Ok(opened) => opened,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && folder.shared => {
            let why = "is not there, in a folder others may make names in: anyone may put a \
                       link there";
            return Err(Stop::new(here, why));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Looked::Missing),
        Err(e) => return Err(Stop::could_not(here, e)),
    };
    let mount_id = crossed.unwrap_or(folder.mount_id);
    if last && !folder.shared && mount_id != folder.mount_id {
        return Ok(Looked::MountedOn);
    }
    judged_mount(mount_id, here, Some(folder.mount_id), mounts)?;
    let entry = asked(&opened, here)?;
    match entry_stop(&entry, folder.mount_id, folder.shared) {
        Some(why) => Err(Stop::new(here, why)),
        None => Ok(Looked::Entry(opened, entry)),
    }
}

/// Why the walk stops at `entry`, found in a folder on mount `folder_mount` (`shared`: others
/// may make names in it), or None: a link must be root's, on its folder's mount (one mounted
/// there from elsewhere leads where its mounter chose); in a folder others may make names
/// in, an entry must be root's (another's may be renamed and a link put in its place).
fn entry_stop(entry: &EntryUnasked, folder_mount: u64, shared: bool) -> Option<String> {
    if is_link(entry.mode) && entry.uid != 0 {
        return Some(format!(
            "is a link of uid {}'s, not one root alone put there",
            entry.uid
        ));
    }
    if is_link(entry.mode) && entry.mount_id != folder_mount {
        return Some("is a link mounted there from elsewhere, not one of its folder's".to_owned());
    }
    if shared && entry.uid != 0 {
        return Some(format!(
            "is uid {}'s, in a folder others may write in: they may put a link in its place",
            entry.uid
        ));
    }
    None
}

/// The id of the mount `opened` (at `path`) is on, asking its filesystem nothing
/// ([`mountinfo::mount_id_of_fd`]).
fn mount_id_of(opened: &File, path: &Path) -> Result<u64, Stop> {
    mountinfo::mount_id_of_fd(opened.as_fd()).map_err(|e| Stop::could_not(path, e))
}

/// The mount of id `id` (of the name at `path`), judged where the walk crosses into it (it is
/// not `came_from`, its folder's) before anything is asked of its filesystem: neither a
/// user's nor one a server answers for.
fn judged_mount(
    id: u64,
    path: &Path,
    came_from: Option<u64>,
    mounts: &mut Mounts,
) -> Result<(), Stop> {
    if came_from != Some(id) {
        let mount = mounts.by_id(id).map_err(|e| Stop::could_not(path, e))?;
        #[cfg(test)]
        lookup::asks::note(lookup::asks::Event::Judged(path.to_path_buf()));
        if let Some(why) = not_looked_in(&mount, mounts.table(), OVERLAY_DEPTH) {
            return Err(Stop::new(path, why));
        }
    }
    Ok(())
}

/// `opened` (at `path`) looked at, on a mount judged fit to ask ([`raw::entry_unasked`]).
fn asked(opened: &File, path: &Path) -> Result<EntryUnasked, Stop> {
    #[cfg(test)]
    lookup::asks::note(lookup::asks::Event::Asked(path.to_path_buf()));
    raw::entry_unasked(opened.as_raw_fd()).map_err(|e| Stop::could_not(path, e))
}

/// The folder opened at `path` (`entry`, on the judged mount `mount_id`), judged before
/// anything in it is looked at: root's, and not writable by others unless sticky.
fn judged_folder(
    fd: File,
    path: &Path,
    entry: EntryUnasked,
    mount_id: u64,
) -> Result<Folder, Stop> {
    if entry.uid != 0 {
        return Err(Stop::new(
            path,
            format!("is owned by uid {}, not root", entry.uid),
        ));
    }
    let mode = entry.mode & 0o7777;
    let shared = mode & WRITABLE_BY_OTHERS != 0;
    if shared && mode & STICKY == 0 {
        let why = format!("is writable by group or others (mode {mode:04o})");
        return Err(Stop::new(path, why));
    }
    Ok(Folder {
        fd,
        path: path.to_path_buf(),
        mount_id,
        shared,
    })
}

/// Why the walk does not look in `mount` (of the mount table `table`), or None: a user decides
/// what is in it ([`user_mounts::set_by_a_user`]), a server answers for it (FUSE, an automount
/// point's daemon), or it is not known to be local ([`LOCAL_FILESYSTEMS`]; an overlay stacked
/// `depth` deep at most, [`overlay_not_looked_in`]).
fn not_looked_in(mount: &MountEntry, table: &[MountEntry], depth: usize) -> Option<String> {
    if let Some(why) = user_mounts::set_by_a_user(mount) {
        return Some(why);
    }
    let fs_type = mount.fs_type.as_str();
    let served = if user_mounts::is_fuse(mount) {
        "a FUSE filesystem, whose server answers for what is in it"
    } else if fs_type == "autofs" {
        "an automount point, whose daemon answers for what is in it"
    } else if fs_type == "overlay" {
        return overlay_not_looked_in(mount, table, depth).map(|why| format!("is on {why}"));
    } else if LOCAL_FILESYSTEMS.contains(&fs_type) {
        return None;
    } else {
        "a filesystem feather does not know to be local (a server may answer for what is in it)"
    };
    Some(format!(
        "is on {served} ({fs_type}): feather does not ask it"
    ))
}

/// Why the overlay `mount` is not looked in, said as `the overlay at …, whose …`, or None: a
/// lookup in it asks each of its layers' filesystems, so each layer its options name
/// (`lowerdir`, `upperdir`, `workdir`) must be an absolute path on a mount looked in (an
/// overlay under it `depth` less one deep), found in `table` by the longest mount point the
/// path begins with, as text: nothing is asked. A layer named otherwise (relative, with `..`
/// or an escape) or placed on the overlay itself (its options were written where that path
/// named another mount: another namespace or root) cannot be placed, and is not taken for
/// local.
fn overlay_not_looked_in(mount: &MountEntry, table: &[MountEntry], depth: usize) -> Option<String> {
    let at = format!("the overlay at {}", mount.mount_point.display());
    if depth == 0 {
        return Some(format!(
            "{at}, stacked on more overlays than the kernel allows"
        ));
    }
    let layers = overlay_layers(&mount.super_options);
    if layers.is_empty() {
        return Some(format!("{at}, whose options name no layer"));
    }
    layers.into_iter().find_map(|layer| {
        let why = match layer_mount(Path::new(layer), table) {
            None => "cannot be placed on a mount by its name".to_owned(),
            Some(holder) if holder.id == mount.id => "is placed on that overlay itself: its \
                 options were written where the path named another mount (another namespace \
                 or root), so it cannot be placed"
                .to_owned(),
            Some(holder) => not_looked_in(holder, table, depth - 1)?,
        };
        Some(format!("{at}, whose layer {layer} {why}"))
    })
}

/// The layers an overlay's superblock options name, as written.
fn overlay_layers(super_options: &str) -> Vec<&str> {
    let mut layers = Vec::new();
    for (key, value) in super_options.split(',').filter_map(|o| o.split_once('=')) {
        match key {
            "lowerdir" | "lowerdir+" | "datadir+" => {
                layers.extend(value.split(':').filter(|layer| !layer.is_empty()))
            }
            "upperdir" | "workdir" => layers.push(value),
            _ => {}
        }
    }
    layers
}

/// The mount of `table` the absolute `path` is on, by the longest mount point it begins with
/// (the last mounted of those at one point: it covers the others); None for a path that is
/// not plainly absolute (relative, `.`, `..`, an escape mountinfo wrote).
fn layer_mount<'a>(path: &Path, table: &'a [MountEntry]) -> Option<&'a MountEntry> {
    let plain = path.is_absolute()
        && !path.as_os_str().as_encoded_bytes().contains(&b'\\')
        && path
            .components()
            .all(|part| matches!(part, Component::RootDir | Component::Normal(_)));
    if !plain {
        return None;
    }
    table
        .iter()
        .filter(|mount| path.starts_with(&mount.mount_point))
        .max_by_key(|mount| mount.mount_point.components().count())
}

/// The mount point where the rest of its path (`rest`, from `folder`) names nothing yet: as
/// written, `..` taken back lexically (mount(8) fails there until root makes it otherwise).
fn as_written(
    folder: &Path,
    rest: impl IntoIterator<Item = Name>,
    through: Vec<PathBuf>,
) -> Mounted {
    let mut point = folder.to_path_buf();
    for name in rest {
        match name {
            Name::Slash => point = PathBuf::from("/"),
            Name::Up => {
                point.pop();
            }
            Name::Plain(name) => point.push(name),
        }
    }
    Mounted { point, through }
}

/// The process's `/`, opened `O_PATH`.
fn opened_slash() -> Result<File, Errno> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(File::from(nix::fcntl::open("/", flags, Mode::empty())?))
}

fn is_link(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFLNK
}

fn is_folder(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{lchown, symlink, PermissionsExt};

    use feather_testkit::ScratchDir;

    /// A scratch folder of root's (0755) with `mnt/stick` made in it, by its real path; None
    /// (the test skipped, said why) where this host's own mounts on the way to it are not
    /// looked in ([`walked_all_the_way`]).
    fn scratch_with_a_stick(label: &str) -> Option<(ScratchDir, PathBuf)> {
        let scratch = ScratchDir::new(label);
        let base = scratch.0.canonicalize().unwrap();
        fs::create_dir_all(base.join("mnt/stick")).unwrap();
        walked_all_the_way(&base).then_some((scratch, base))
    }

    /// Whether a walk to `path` is looked in all the way on this host, said on stderr where
    /// not: a test of what the walk finds in folders it makes cannot run where `/` itself is
    /// not known to be local (a container's overlay whose layers are in another namespace, an
    /// NFS root), since every walk stops there (review walk34 L5).
    fn walked_all_the_way(path: &Path) -> bool {
        let table = mountinfo::mounts().unwrap();
        let unwalked = path.ancestors().find_map(|folder| {
            let mount = layer_mount(folder, &table)?;
            let why = not_looked_in(mount, &table, OVERLAY_DEPTH)?;
            Some(format!("{} {why}", folder.display()))
        });
        match unwalked {
            Some(why) => eprintln!("skipped: no walk goes past {why}"),
            None => return true,
        }
        false
    }

    /// The points of an fstab of the one `users` line for `target`.
    fn points_of(target: &str) -> UsersMountPoints {
        UsersMountPoints::in_fstab(&format!("/dev/sdb1 {target} auto users,noauto 0 0\n"))
    }

    /// A resolution kept in `last` for the fstab at `path` as it is now, saying `marker` is a
    /// mount point users may mount on: what `resolved` returns when it keeps it.
    fn kept_for(path: &Path, marker: &str, followed_lines: bool) -> Mutex<Option<Remembered>> {
        Mutex::new(Some(Remembered {
            stamp: Stamp::of(path),
            points: UsersMountPoints {
                points: vec![(PathBuf::from(marker), "users".to_owned())],
                anywhere: None,
            },
            followed_lines,
            stretch: 1,
        }))
    }

    fn is_point(points: &UsersMountPoints, folder: &str) -> bool {
        points.at(Path::new(folder)).is_some()
    }

    /// [`scratch_with_a_stick`], the path of an fstab in it (not written yet), and the line
    /// that lets users mount on its stick; None (the test skipped) as there.
    fn an_fstab_for_a_stick(label: &str) -> Option<(ScratchDir, PathBuf, PathBuf, String)> {
        let (scratch, base) = scratch_with_a_stick(label)?;
        let line = format!(
            "/dev/sdb1 {}/mnt/stick auto users,noauto 0 0\n",
            base.display()
        );
        let fstab = base.join("fstab");
        Some((scratch, base, fstab, line))
    }

    /// An fstab changed after a process resolved it, in place or replaced, is read again at its
    /// next look; a resolution is kept only while the file is unchanged.
    #[test]
    fn a_changed_fstab_is_read_again() {
        let Some((_scratch, base, fstab, line)) = an_fstab_for_a_stick("fstab-changed") else {
            return;
        };
        fs::write(&fstab, "# none\n").unwrap();
        let last = kept_for(&fstab, "/kept", false);
        assert!(
            is_point(&resolved(&fstab, &last, 0), "/kept"),
            "kept while unchanged"
        );
        // In place (the same inode).
        fs::write(&fstab, &line).unwrap();
        let points = resolved(&fstab, &last, 1);
        assert!(!is_point(&points, "/kept"));
        let stick = base.join("mnt/stick");
        assert!(is_point(&points, &stick.to_string_lossy()));
        // Rewritten in place to the same length: only its times tell the change.
        let owner = line.replace("users", "owner");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&fstab)
            .and_then(|mut file| std::io::Write::write_all(&mut file, owner.as_bytes()))
            .unwrap();
        let why = resolved(&fstab, &last, 1).at(&stick).expect("the stick");
        assert!(why.contains("(`owner`)"), "{why}");
        // Replaced by another file (a new inode), with no line left.
        fs::write(base.join("new"), "# none\n").unwrap();
        fs::rename(base.join("new"), &fstab).unwrap();
        let points = resolved(&fstab, &last, 1);
        assert!(!is_point(&points, &format!("{}/mnt/stick", base.display())));
        fs::remove_file(&fstab).unwrap();
        assert!(resolved(&fstab, &last, 1).points.is_empty());
    }

    /// Lines users may mount are followed on the filesystem, which may change without fstab
    /// changing (a folder on a line's way made writable by all): followed again at each look
    /// unless the process runs one command, which keeps what it found until it waits.
    #[test]
    fn lines_followed_on_the_filesystem_are_followed_again_unless_the_process_runs_one_command() {
        let Some((_scratch, base, fstab, line)) = an_fstab_for_a_stick("fstab-followed") else {
            return;
        };
        fs::write(&fstab, &line).unwrap();
        let last = Mutex::new(None);
        assert!(resolved(&fstab, &last, 1).anywhere().is_none());
        fs::set_permissions(base.join("mnt"), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            resolved(&fstab, &last, 1).anywhere().is_none(),
            "one command: kept"
        );
        assert!(
            resolved(&fstab, &last, 0).anywhere().is_some(),
            "followed again"
        );
        let last = kept_for(&fstab, "/kept", true);
        assert!(is_point(&resolved(&fstab, &last, 1), "/kept"));
        assert!(!is_point(&resolved(&fstab, &last, 0), "/kept"));
        // After a wait (the next stretch of the command), followed again.
        let last = kept_for(&fstab, "/kept", true);
        assert!(
            !is_point(&resolved(&fstab, &last, 2), "/kept"),
            "after a wait"
        );
    }

    #[test]
    fn fstab_entries_users_may_mount_are_told_mounted_or_not() {
        let Some((_scratch, base)) = scratch_with_a_stick("fstab-options") else {
            return;
        };
        let at = base.display();
        let points = UsersMountPoints::in_fstab(&format!(
            "# /dev/sdc1 {at}/commented auto users 0 0\n\
             UUID=1 / ext4 defaults 0 1\n\
             /dev/sdb1 {at}/mnt/stick auto users,noauto 0 0\n\
             /dev/sdb2 {at}/my\\040cam vfat noauto,user 0 0\n\
             //srv/share {at}/share cifs owner,noauto 0 0\n\
             /dev/sdd1 {at}/group auto group,noauto 0 0\n\
             /dev/sde1 {at}/admins auto noauto,usrquota 0 0\n\
             /dev/sdf1 none swap sw,user 0 0\n",
        ));
        assert!(points.anywhere().is_none());
        for (folder, option) in [
            ("mnt/stick", "users"),
            ("my cam", "user"),
            ("share", "owner"),
            ("group", "group"),
        ] {
            let why = points.at(&base.join(folder)).expect(folder);
            assert!(why.contains(&format!("(`{option}`)")), "{why}");
        }
        for folder in ["", "admins", "commented", "mnt"] {
            assert_eq!(points.at(&base.join(folder)), None, "{folder}");
        }
    }

    /// However an fstab line spells its mount point (`//`, `.`, a trailing `/`, `..`, a link
    /// of root's, absolute or relative), the folder mount(8) mounts on is found, as a walk
    /// goes through it. Before, the target was compared as a path, name by name: `//`, `.` and
    /// a trailing `/` were taken as the same, `..` and links were not (the last four spellings
    /// passed).
    #[test]
    fn an_fstab_mount_point_is_found_however_the_line_spells_it() {
        let Some((_scratch, base)) = scratch_with_a_stick("fstab-spellings") else {
            return;
        };
        let stick = base.join("mnt/stick");
        symlink(base.join("mnt"), base.join("media")).unwrap();
        symlink("mnt/./", base.join("relative")).unwrap();
        for spelling in [
            "/mnt/stick/",
            "//mnt///stick",
            "/./mnt/./stick/.",
            "/mnt/nothing/../stick",
            "/media/stick",
            "/relative/stick",
            "/media/../media/stick/",
        ] {
            let points = points_of(&format!("{}{spelling}", base.display()));
            assert!(points.at(&stick).is_some(), "{spelling}");
            assert!(points.anywhere().is_none(), "{spelling}");
        }
    }

    /// A line whose path goes past a folder or link a user can change leads wherever that
    /// user points it: no link past there is followed, and every folder is refused, the line,
    /// the folder and why named.
    #[test]
    fn past_a_users_folder_or_link_a_line_leads_anywhere() {
        let Some((_scratch, base)) = scratch_with_a_stick("fstab-users") else {
            return;
        };
        let stick = base.join("mnt/stick");
        let alices = base.join("alice");
        fs::create_dir(&alices).unwrap();
        symlink(base.join("mnt"), alices.join("mnt")).unwrap();
        lchown(&alices, Some(65534), None).unwrap();
        let users_link = base.join("users-link");
        symlink(base.join("mnt"), &users_link).unwrap();
        lchown(&users_link, Some(65534), None).unwrap();
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let sticky = base.join("sticky");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        let in_sticky = sticky.join("stick");
        // Alice's own folder in /tmp: she may rename it and put a link in its place, which
        // mount(8) follows.
        let alices_in_sticky = sticky.join("alices-stick");
        fs::create_dir(&alices_in_sticky).unwrap();
        lchown(&alices_in_sticky, Some(65534), None).unwrap();
        for (target, past, why) in [
            (
                alices.join("mnt/stick"),
                &alices,
                "is owned by uid 65534, not root",
            ),
            (
                users_link.join("stick"),
                &users_link,
                "is a link of uid 65534's",
            ),
            (
                open.join("stick"),
                &open,
                "is writable by group or others (mode 0777)",
            ),
            (
                in_sticky.clone(),
                &in_sticky,
                "is not there, in a folder others may make names in",
            ),
            (
                alices_in_sticky.clone(),
                &alices_in_sticky,
                "is uid 65534's, in a folder others may write in",
            ),
        ] {
            let points = points_of(&target.to_string_lossy());
            assert_eq!(points.at(&stick), None, "{} followed", target.display());
            assert_eq!(
                points.at(&target),
                None,
                "{} taken as written",
                target.display()
            );
            let anywhere = points.anywhere().expect("leads anywhere");
            let past_it = format!(
                "/etc/fstab line `/dev/sdb1 {}` lets users mount (`users`) on a path that may \
                 lead anywhere past {}, which {why}",
                target.display(),
                past.display()
            );
            assert_eq!(anywhere.lines.len(), 1);
            assert!(anywhere.lines[0].contains(&past_it), "{anywhere:?}");
            assert!(!anywhere.passing, "{anywhere:?}");
        }
    }

    /// A line whose path goes through another line's mount point goes through whatever
    /// filesystem a user mounts there: it leads anywhere.
    #[test]
    fn a_line_past_another_lines_mount_point_leads_anywhere() {
        let Some((_scratch, base)) = scratch_with_a_stick("fstab-nested") else {
            return;
        };
        let (mnt, stick) = (base.join("mnt"), base.join("mnt/stick"));
        let points = UsersMountPoints::in_fstab(&format!(
            "/dev/sdb1 {} auto user,noauto 0 0\n/dev/sdc1 {} auto users,noauto 0 0\n",
            stick.display(),
            mnt.display()
        ));
        let anywhere = points.anywhere().expect("leads anywhere");
        let past_it = format!(
            "/etc/fstab line `/dev/sdb1 {}` lets users mount (`user`) on a path that may lead \
             anywhere past {}, which is a mount point /etc/fstab lets users mount on (`users`)",
            stick.display(),
            mnt.display()
        );
        assert_eq!(anywhere.lines, [past_it]);
    }

    /// Every line that leads anywhere is said, each by its source too (two lines may share a
    /// mount point), so that one edit fixes them all.
    #[test]
    fn every_line_that_leads_anywhere_is_said_with_its_source() {
        let Some((_scratch, base)) = scratch_with_a_stick("fstab-every-line") else {
            return;
        };
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let points = UsersMountPoints::in_fstab(&format!(
            "/dev/sdb1 {o}/a auto user,noauto 0 0\n\
             /dev/sdc1 {s} auto users,noauto 0 0\n\
             LABEL=CAM {o}/b auto owner,noauto 0 0\n",
            o = open.display(),
            s = base.join("mnt/stick").display(),
        ));
        let anywhere = points.anywhere().expect("leads anywhere");
        let starts: Vec<&str> = anywhere
            .lines
            .iter()
            .map(|l| &l[..l.find(" on ").unwrap()])
            .collect();
        let (a, b) = (open.join("a"), open.join("b"));
        assert_eq!(
            starts,
            [
                format!(
                    "/etc/fstab line `/dev/sdb1 {}` lets users mount (`user`)",
                    a.display()
                ),
                format!(
                    "/etc/fstab line `LABEL=CAM {}` lets users mount (`owner`)",
                    b.display()
                ),
            ]
        );
        assert!(points.at(&base.join("mnt/stick")).is_some());
    }

    /// Where looking failed, not the line's path, the line is said to lead anywhere as a
    /// passing fault (the advice is to run again, not to edit a line that may be fine); a
    /// line at fault besides makes it the line's. A name longer than a folder may hold fails
    /// the lookup as looking fails on a host with /proc unreadable or an I/O error.
    #[test]
    fn a_line_not_looked_at_is_a_passing_fault_not_the_lines() {
        let Some((_scratch, base)) = scratch_with_a_stick("fstab-passing") else {
            return;
        };
        let unlookable = format!("{}/{}/x", base.display(), "n".repeat(300));
        let anywhere = points_of(&unlookable)
            .anywhere()
            .expect("leads anywhere")
            .clone();
        assert!(anywhere.passing, "{anywhere:?}");
        assert!(
            anywhere.lines[0].contains("could not be looked at"),
            "{anywhere:?}"
        );
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let both = UsersMountPoints::in_fstab(&format!(
            "/dev/sdb1 {unlookable} auto users 0 0\n/dev/sdc1 {}/a auto users 0 0\n",
            open.display()
        ));
        assert!(!both.anywhere().expect("leads anywhere").passing);
    }

    /// A link must be root's and on its folder's mount: one mounted over a name from
    /// elsewhere leads where whoever mounted it chose. In a folder others may make names in,
    /// even root's link is fine, a user's entry is not.
    #[test]
    fn a_link_mounted_from_elsewhere_or_a_users_entry_in_a_shared_folder_stops_the_walk() {
        let entry = |mode: u32, uid: u32, mount_id: u64| EntryUnasked {
            mode,
            uid,
            mount_id,
        };
        let (link, folder) = (libc::S_IFLNK | 0o777, libc::S_IFDIR | 0o755);
        assert_eq!(entry_stop(&entry(link, 0, 7), 7, false), None);
        assert_eq!(entry_stop(&entry(link, 0, 7), 7, true), None);
        let mounted = entry_stop(&entry(link, 0, 8), 7, false).expect("stops");
        assert!(
            mounted.contains("mounted there from elsewhere"),
            "{mounted}"
        );
        let users = entry_stop(&entry(link, 1000, 7), 7, false).expect("stops");
        assert!(users.contains("a link of uid 1000's"), "{users}");
        assert_eq!(entry_stop(&entry(folder, 1000, 7), 7, false), None);
        let shared = entry_stop(&entry(folder, 1000, 7), 7, true).expect("stops");
        assert!(
            shared.contains("in a folder others may write in"),
            "{shared}"
        );
    }

    /// A mount entry of `fs_type` at `mount_point`, with superblock options `super_options`.
    fn mount_at(mount_point: &str, fs_type: &str, super_options: &str) -> MountEntry {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(40);
        MountEntry {
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            parent: 1,
            device: "0:50".to_owned(),
            root: "/".into(),
            mount_point: mount_point.into(),
            options: "rw".to_owned(),
            optional: Vec::new(),
            fs_type: fs_type.to_owned(),
            source: "src".to_owned(),
            super_options: super_options.to_owned(),
        }
    }

    /// The walk looks only in a filesystem known to be local, so that one it has never heard
    /// of fails closed: not in a network filesystem (named or not: gfs2, a made-up one), an
    /// automount point, any FUSE one (root's too), a user's (FUSE) mount. It looks in a local
    /// disk's, a tmpfs, the kernel's own (all this host's but FUSE). Before, a deny-list of
    /// network filesystems walked any type it did not name.
    #[test]
    fn only_filesystems_known_local_are_looked_in() {
        for (fs_type, options, said) in [
            ("nfs4", "rw,vers=4.2", "not know to be local"),
            ("cifs", "rw", "not know to be local"),
            ("9p", "rw,trans=virtio", "not know to be local"),
            ("gfs2", "rw", "not know to be local"),
            ("ocfs2", "rw", "not know to be local"),
            ("newnetfs", "rw", "not know to be local"),
            ("autofs", "rw,fd=5", "on an automount point"),
            (
                "fuse.sshfs",
                "rw,user_id=0,group_id=0",
                "on a FUSE filesystem",
            ),
            ("fuseblk", "rw,user_id=0", "on a FUSE filesystem"),
            ("fuse.sshfs", "rw,user_id=1000", "mounted by uid 1000"),
        ] {
            let why = not_looked_in(&mount_at("/srv/x", fs_type, options), &[], OVERLAY_DEPTH)
                .expect(fs_type);
            assert!(why.contains(said), "{fs_type}: {why}");
            assert!(why.contains(&format!("({fs_type})")), "{fs_type}: {why}");
            assert!(!why.contains("network one"), "{fs_type}: {why}");
        }
        for fs_type in [
            "ext4", "xfs", "btrfs", "zfs", "vfat", "tmpfs", "proc", "cgroup2",
        ] {
            let mount = mount_at("/srv/x", fs_type, "rw");
            assert_eq!(not_looked_in(&mount, &[], OVERLAY_DEPTH), None, "{fs_type}");
        }
    }

    /// An overlay asks its layers' filesystems: it is looked in only where every layer its
    /// options name lies on a mount looked in (an overlay over overlays too, as deep as the
    /// kernel stacks them), found by mount point as text. A layer on NFS, one that cannot be
    /// placed (relative, `..`) or an overlay naming no layer is not looked in.
    #[test]
    fn an_overlay_is_looked_in_only_where_its_layers_are_local() {
        let table = [
            mount_at("/", "ext4", "rw"),
            mount_at("/srv", "nfs4", "rw,vers=4.2"),
            mount_at("/srv/cache", "tmpfs", "rw"),
            mount_at(
                "/var/lib/x/merged",
                "overlay",
                "rw,lowerdir=/usr/l1:/usr/l2",
            ),
        ];
        let overlay = |options: &str| mount_at("/o", "overlay", options);
        let judged = |options: &str| not_looked_in(&overlay(options), &table, OVERLAY_DEPTH);
        for fine in [
            "rw,lowerdir=/usr/l1:/usr/l2,upperdir=/var/up,workdir=/var/work",
            "rw,lowerdir=/srv/cache/l",
            "rw,lowerdir+=/usr/l1,datadir+=/usr/d",
            "rw,lowerdir=/var/lib/x/merged/sub",
        ] {
            assert_eq!(judged(fine), None, "{fine}");
        }
        for (options, said) in [
            (
                "rw,lowerdir=/usr/l1:/srv/l2,upperdir=/var/up",
                "whose layer /srv/l2 is on a filesystem feather does not know to be local",
            ),
            (
                "rw,lowerdir=/usr/l1,upperdir=/srv/up,workdir=/srv/work",
                "whose layer /srv/up is on",
            ),
            (
                "rw,lowerdir=l/ABC:l/DEF",
                "whose layer l/ABC cannot be placed",
            ),
            (
                "rw,lowerdir=/srv/cache/../l",
                "whose layer /srv/cache/../l cannot be placed",
            ),
            ("rw,xino=off", "whose options name no layer"),
            (
                "rw,lowerdir=/var/lib/x/merged/sub,upperdir=/srv/up",
                "the overlay at /o, whose layer /srv/up is on a filesystem",
            ),
        ] {
            let why = judged(options).expect(options);
            assert!(why.contains(said), "{options}: {why}");
        }
        let deep = mount_at("/o", "overlay", "rw,lowerdir=/var/lib/x/merged/sub");
        let why = not_looked_in(&deep, &table, 1).expect("too deep");
        assert!(
            why.contains(
                "is on the overlay at /o, whose layer /var/lib/x/merged/sub is on the overlay at \
                 /var/lib/x/merged, stacked on more overlays than the kernel allows"
            ),
            "{why}"
        );
    }

    /// An overlay whose layer's path, as its options spell it, lies on that overlay itself
    /// (an initramfs-made `/`, whose `upperdir=/cow/upper` named another mount where it was
    /// mounted) cannot be placed, and is not looked in: it is not taken for local by the
    /// layers of the table's mount that happens to be at that path now (review walk34 M2).
    /// Before, it was refused only once the depth ran out, said as a filesystem not known to
    /// be local (a network one).
    #[test]
    fn an_overlay_whose_layer_lies_on_itself_is_not_looked_in() {
        let overlay = mount_at("/", "overlay", "rw,lowerdir=/usr/l,upperdir=/cow/upper");
        let table = [mount_at("/usr", "ext4", "rw"), overlay.clone()];
        let why = not_looked_in(&overlay, &table, OVERLAY_DEPTH).expect("placed on itself");
        assert!(
            why.contains("whose layer /cow/upper is placed on that overlay itself"),
            "{why}"
        );
    }

    /// Where the walk stops at `/` itself, the line's fault says that no mount point avoids
    /// it, and that only dropping its user option does (review walk34 M3); elsewhere a line
    /// may be moved, and is not told so.
    #[test]
    fn a_line_stopped_at_slash_is_told_to_drop_its_user_option() {
        let line = UsersLine {
            source: "/dev/sr0".to_owned(),
            target: "/media/cdrom0".into(),
            option: "user".to_owned(),
        };
        let why = "is on a filesystem feather does not know to be local (nfs4)";
        let at_slash = Stop::new(Path::new("/"), why).said(&line);
        assert!(
            at_slash.contains("drop the line's user option"),
            "{at_slash}"
        );
        let at_media = Stop::new(Path::new("/media"), why).said(&line);
        assert!(!at_media.contains("drop the line's"), "{at_media}");
    }

    /// An automount point the mount table lists is refused before anything opens it: even
    /// an `O_PATH` lookup that stops at a mount passes through the automount daemon first,
    /// and waits on it (review walk34 M1). This host cannot make an autofs mount in a test,
    /// so the table the walk read is given one at a real folder: before, the walk opened the
    /// folder and went on.
    #[test]
    fn an_automount_point_in_the_table_is_refused_before_it_is_opened() {
        let Some((_scratch, base)) = scratch_with_a_stick("fstab-autofs") else {
            return;
        };
        let folder = File::open(&base).unwrap();
        let mut autofs = mount_at(base.join("mnt").to_str().unwrap(), "autofs", "rw,fd=5");
        autofs.parent = mountinfo::mount_id_of_fd(folder.as_fd()).unwrap();
        let mut table = mountinfo::mounts().unwrap();
        table.push(autofs);
        let mut mounts = Mounts::read_as(table);
        let stop = match where_mounted(&base.join("mnt/stick"), &mut mounts) {
            Ok(mounted) => panic!("walked past the automount point to {:?}", mounted.point),
            Err(stop) => stop,
        };
        assert_eq!(stop.at, base.join("mnt"));
        assert!(
            stop.why.contains("is an automount point (autofs)"),
            "{}",
            stop.why
        );
    }

    /// Following a line's path, a mount crossed (here `/proc`) is judged before its
    /// filesystem is asked anything: its id comes from the lookup and procfs, not a `statx`,
    /// which 9p without a cache, gfs2 and ocfs2 answer by asking their server even with
    /// `AT_STATX_DONT_SYNC` (review fstab33 M1).
    #[test]
    fn a_mount_a_lines_path_crosses_is_judged_before_it_is_asked_anything() {
        if !walked_all_the_way(Path::new("/proc")) {
            return;
        }
        lookup::asks::taken();
        let points = points_of("/proc/feather-no-such-mount-point");
        assert!(points.anywhere().is_none());
        let events = lookup::asks::taken();
        let judged = lookup::asks::Event::Judged("/proc".into());
        assert!(events.contains(&judged), "{events:?}");
        assert!(lookup::asks::judged_before_asked(&events), "{events:?}");
    }
}

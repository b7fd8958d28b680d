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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Filesystems whose lookups a server answers over a network, not the kernel from a disk: a
/// name looked up in one may wait for ever on a server that is gone (a hard NFS mount). A
/// deny-list, as the kernel names them in mountinfo (FUSE ones, glusterfs's too, are told by
/// their `fuse` type): a network filesystem not named here is walked as a local one.
const NETWORK_FILESYSTEMS: [&str; 16] = [
    "nfs", "nfs4", "cifs", "smb3", "ceph", "9p", "afs", "coda", "lustre", "gfs2", "ocfs2", "pvfs2",
    "virtiofs", "vboxsf", "beegfs", "gpfs",
];

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
        resolved(Path::new(FSTAB), &LAST, ONE_COMMAND.load(Ordering::Relaxed))
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

/// Set by a process that runs one command and ends ([`resolve_once_per_command`]).
static ONE_COMMAND: AtomicBool = AtomicBool::new(false);

/// Says that this process runs one command and ends (the `feather` front): the fstab lines
/// users may mount are then followed on the filesystem once for the command, as they were
/// when it read them once, not again at each state root it checks (`ls` checked three). A
/// process that outlives a command (a keeper, the web view) never sets it, and follows them
/// again at each look, so a folder or mount changed on a line's way is seen at its next one.
pub fn resolve_once_per_command() {
    ONE_COMMAND.store(true, Ordering::Relaxed);
}

/// A resolution of an fstab, and the stamp of the file it was read from.
///
/// Why keeping it is sound: what the resolution says is a function of the file's text and,
/// for each line users may mount, of the folders and mounts on that line's way. The text is
/// read again whenever the stamp (device, inode, size, modification and change times) moved,
/// so an edit or a file renamed into place is always seen (a change time cannot be set back
/// by anyone, and since 6.13 a change after a look is stamped finer than the clock's tick).
/// A text without such lines asks nothing of the filesystem: kept while the stamp holds, in
/// any process. A text with them is followed again at each look unless the process runs one
/// command ([`resolve_once_per_command`]), where it is what one read at the command's start
/// would have said.
struct Remembered {
    stamp: Option<Stamp>,
    points: UsersMountPoints,
    followed_lines: bool,
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
/// ([`Remembered`]; `one_command`: this process runs one), else read and resolved, and kept in
/// `last`.
fn resolved(fstab: &Path, last: &Mutex<Option<Remembered>>, one_command: bool) -> UsersMountPoints {
    // Stamped before it is read: a change between the two moves the next look's stamp.
    let stamp = Stamp::of(fstab);
    // Never waited for: a lock held by another thread (or by a thread of the parent this
    // process was forked from, which would hold it for ever here) means a fresh resolution.
    let Ok(mut last) = last.try_lock() else {
        return UsersMountPoints::in_fstab(&user_mounts::read_bounded(fstab));
    };
    let keep = |kept: &&Remembered| kept.stamp == stamp && (!kept.followed_lines || one_command);
    if let Some(kept) = last.as_ref().filter(keep) {
        return kept.points.clone();
    }
    let text = user_mounts::read_bounded(fstab);
    let points = UsersMountPoints::in_fstab(&text);
    *last = Some(Remembered {
        stamp,
        points: points.clone(),
        followed_lines: users_lines(&text).next().is_some(),
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

    /// The fault of `line`: its mount point may be any folder.
    fn said(&self, line: &UsersLine) -> String {
        format!(
            "{FSTAB} line `{} {}` lets users mount (`{}`) on a path that may lead anywhere past \
             {}, which {}",
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
    let opened = opened_unfollowed(None, slash).map_err(|e| Stop::could_not(slash, e))?;
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
    let opened = match opened_unfollowed(Some(&folder.fd), name) {
        Ok(opened) => opened,
        Err(Errno::ENOENT) if folder.shared => {
            let why = "is not there, in a folder others may make names in: anyone may put a \
                       link there";
            return Err(Stop::new(here, why));
        }
        Err(Errno::ENOENT) => return Ok(Looked::Missing),
        Err(e) => return Err(Stop::could_not(here, e)),
    };
    let mount_id = mount_id_of(&opened, here)?;
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
        if let Some(why) = not_looked_in(&mount) {
            return Err(Stop::new(path, why));
        }
    }
    Ok(())
}

/// `opened` (at `path`) looked at, on a mount judged fit to ask ([`raw::entry_unasked`]).
fn asked(opened: &File, path: &Path) -> Result<EntryUnasked, Stop> {
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

/// Why the walk does not look in `mount`: a user decides what is in it
/// ([`user_mounts::set_by_a_user`]), or a server answers for it (FUSE, a network filesystem,
/// an automount point's daemon).
fn not_looked_in(mount: &MountEntry) -> Option<String> {
    if let Some(why) = user_mounts::set_by_a_user(mount) {
        return Some(why);
    }
    let kind = mount.fs_type.split('.').next().unwrap_or_default();
    let served = match kind {
        _ if user_mounts::is_fuse(mount) => "a FUSE filesystem",
        "autofs" => "an automount point",
        _ if NETWORK_FILESYSTEMS.contains(&kind) => "a network filesystem",
        _ => return None,
    };
    Some(format!(
        "is on {served} ({}), whose server answers for what is in it: feather does not ask it",
        mount.fs_type
    ))
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

/// `name` opened `O_PATH | O_NOFOLLOW` in `folder` (or from the process's `/`): not as a
/// folder, so that an automount point is not mounted by the lookup.
fn opened_unfollowed(folder: Option<&File>, name: &Path) -> Result<File, Errno> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match folder {
        Some(folder) => nix::fcntl::openat(folder.as_fd(), name, flags, Mode::empty())?,
        None => nix::fcntl::open(name, flags, Mode::empty())?,
    };
    Ok(File::from(fd))
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

    /// A scratch folder of root's (0755) with `mnt/stick` made in it, by its real path.
    fn scratch_with_a_stick(label: &str) -> (ScratchDir, PathBuf) {
        let scratch = ScratchDir::new(label);
        let base = scratch.0.canonicalize().unwrap();
        fs::create_dir_all(base.join("mnt/stick")).unwrap();
        (scratch, base)
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
        }))
    }

    fn is_point(points: &UsersMountPoints, folder: &str) -> bool {
        points.at(Path::new(folder)).is_some()
    }

    /// [`scratch_with_a_stick`], the path of an fstab in it (not written yet), and the line
    /// that lets users mount on its stick.
    fn an_fstab_for_a_stick(label: &str) -> (ScratchDir, PathBuf, PathBuf, String) {
        let (scratch, base) = scratch_with_a_stick(label);
        let line = format!(
            "/dev/sdb1 {}/mnt/stick auto users,noauto 0 0\n",
            base.display()
        );
        let fstab = base.join("fstab");
        (scratch, base, fstab, line)
    }

    /// An fstab changed after a process resolved it, in place or replaced, is read again at its
    /// next look; a resolution is kept only while the file is unchanged.
    #[test]
    fn a_changed_fstab_is_read_again() {
        let (_scratch, base, fstab, line) = an_fstab_for_a_stick("fstab-changed");
        fs::write(&fstab, "# none\n").unwrap();
        let last = kept_for(&fstab, "/kept", false);
        assert!(
            is_point(&resolved(&fstab, &last, false), "/kept"),
            "kept while unchanged"
        );
        // In place (the same inode).
        fs::write(&fstab, &line).unwrap();
        let points = resolved(&fstab, &last, true);
        assert!(!is_point(&points, "/kept"));
        assert!(is_point(&points, &format!("{}/mnt/stick", base.display())));
        // Replaced by another file (a new inode), with no line left.
        fs::write(base.join("new"), "# none\n").unwrap();
        fs::rename(base.join("new"), &fstab).unwrap();
        let points = resolved(&fstab, &last, true);
        assert!(!is_point(&points, &format!("{}/mnt/stick", base.display())));
        fs::remove_file(&fstab).unwrap();
        assert!(resolved(&fstab, &last, true).points.is_empty());
    }

    /// Lines users may mount are followed on the filesystem, which may change without fstab
    /// changing (a folder on a line's way made writable by all): followed again at each look
    /// unless the process runs one command, which keeps what it found at its first look.
    #[test]
    fn lines_followed_on_the_filesystem_are_followed_again_unless_the_process_runs_one_command() {
        let (_scratch, base, fstab, line) = an_fstab_for_a_stick("fstab-followed");
        fs::write(&fstab, &line).unwrap();
        let last = Mutex::new(None);
        assert!(resolved(&fstab, &last, false).anywhere().is_none());
        fs::set_permissions(base.join("mnt"), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            resolved(&fstab, &last, true).anywhere().is_none(),
            "one command: kept"
        );
        assert!(
            resolved(&fstab, &last, false).anywhere().is_some(),
            "followed again"
        );
        let last = kept_for(&fstab, "/kept", true);
        assert!(is_point(&resolved(&fstab, &last, true), "/kept"));
        assert!(!is_point(&resolved(&fstab, &last, false), "/kept"));
    }

    #[test]
    fn fstab_entries_users_may_mount_are_told_mounted_or_not() {
        let (_scratch, base) = scratch_with_a_stick("fstab-options");
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
        let (_scratch, base) = scratch_with_a_stick("fstab-spellings");
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
        let (_scratch, base) = scratch_with_a_stick("fstab-users");
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
        let (_scratch, base) = scratch_with_a_stick("fstab-nested");
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
        let (_scratch, base) = scratch_with_a_stick("fstab-every-line");
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
        let (_scratch, base) = scratch_with_a_stick("fstab-passing");
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

    /// The walk does not look in a mount a server answers for: a network filesystem, an
    /// automount point, any FUSE one (root's too), a user's (FUSE) mount; it looks in a local
    /// disk's, a tmpfs, an overlay.
    #[test]
    fn network_automount_and_fuse_mounts_are_not_looked_in() {
        let mount = |fs_type: &str, super_options: &str| MountEntry {
            id: 40,
            parent: 1,
            device: "0:50".to_owned(),
            root: "/".into(),
            mount_point: "/srv/x".into(),
            options: "rw".to_owned(),
            optional: Vec::new(),
            fs_type: fs_type.to_owned(),
            source: "src".to_owned(),
            super_options: super_options.to_owned(),
        };
        for (fs_type, options, said) in [
            ("nfs4", "rw,vers=4.2", "on a network filesystem (nfs4)"),
            ("cifs", "rw", "on a network filesystem (cifs)"),
            ("9p", "rw,trans=virtio", "on a network filesystem (9p)"),
            ("pvfs2", "rw", "on a network filesystem (pvfs2)"),
            ("vboxsf", "rw", "on a network filesystem (vboxsf)"),
            ("autofs", "rw,fd=5", "on an automount point (autofs)"),
            (
                "fuse.sshfs",
                "rw,user_id=0,group_id=0",
                "on a FUSE filesystem (fuse.sshfs)",
            ),
            ("fuseblk", "rw,user_id=0", "on a FUSE filesystem (fuseblk)"),
            ("fuse.sshfs", "rw,user_id=1000", "mounted by uid 1000"),
        ] {
            let why = not_looked_in(&mount(fs_type, options)).expect(fs_type);
            assert!(why.contains(said), "{fs_type}: {why}");
        }
        for fs_type in ["ext4", "xfs", "btrfs", "tmpfs", "overlay"] {
            assert_eq!(not_looked_in(&mount(fs_type, "rw")), None, "{fs_type}");
        }
    }
}

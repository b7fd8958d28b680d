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

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::lookup::{self, Mounts, Name};
use crate::mountinfo::{unescape, MountEntry};
use crate::raw::{self, EntryUnasked};
use crate::user_mounts;

/// Where the admin lists mounts, some of which any user may make.
const FSTAB: &str = "/etc/fstab";

/// The fstab options that let a user other than root mount an entry (mount(8)).
const USERS_MAY_MOUNT: [&str; 4] = ["user", "users", "owner", "group"];

/// Filesystems whose lookups a server answers over a network, not the kernel from a disk: a
/// name looked up in one may wait for ever on a server that is gone (a hard NFS mount).
const NETWORK_FILESYSTEMS: [&str; 16] = [
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ncpfs",
    "ceph",
    "9p",
    "afs",
    "coda",
    "lustre",
    "gfs2",
    "ocfs2",
    "orangefs",
    "virtiofs",
    "glusterfs",
];

/// Anyone but the owner may write (`S_IWGRP | S_IWOTH`).
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Entries of a folder with it may be renamed or removed only by their owner (`/tmp`).
const STICKY: u32 = 0o1000;

/// The mount points `/etc/fstab` lets users mount on, each with the option that does: read
/// once, then asked of every folder a walk went through.
pub struct UsersMountPoints {
    points: Vec<(PathBuf, String)>,
    /// Why a line's mount point may be any folder, the first such line's.
    anywhere: Option<String>,
}

impl UsersMountPoints {
    /// This host's, from `/etc/fstab` (bounded); none where there is none.
    pub fn of_this_host() -> Self {
        Self::in_fstab(&user_mounts::read_bounded(FSTAB))
    }

    fn in_fstab(fstab: &str) -> Self {
        let mut mounts = Mounts::default();
        let mut found = Vec::new();
        let mut anywhere = None;
        for (target, option) in users_lines(fstab) {
            match where_mounted(&target, &mut mounts) {
                Ok(mounted) => found.push(Line {
                    target,
                    option,
                    mounted,
                }),
                Err(stop) => {
                    anywhere.get_or_insert_with(|| stop.said(&target, &option));
                }
            }
        }
        if let Some(why) = through_another(&found) {
            anywhere.get_or_insert(why);
        }
        let points = found
            .into_iter()
            .map(|line| (line.mounted.point, line.option));
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

    /// Why some line's mount point may be any folder, every state root's too (its path goes
    /// past a folder or link a user can change, or one feather does not look in), or None.
    pub fn anywhere(&self) -> Option<&str> {
        self.anywhere.as_deref()
    }
}

/// Each line of `fstab` that users may mount: its mount point as written (unescaped), and the
/// option that lets them.
fn users_lines(fstab: &str) -> impl Iterator<Item = (PathBuf, String)> + '_ {
    fstab.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, _, options) = (
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
        Some((PathBuf::from(unescape(target)), option.to_owned()))
    })
}

/// Where a line's mount point is, and the folders its path was followed through to get there.
struct Mounted {
    point: PathBuf,
    through: Vec<PathBuf>,
}

/// A line users may mount, found.
struct Line {
    target: PathBuf,
    option: String,
    mounted: Mounted,
}

/// Why a line's mount point could be any folder: a line whose path goes through another's
/// mount point (`/mnt/a/b` and `/mnt/a`) goes through whatever filesystem a user mounts there.
fn through_another(found: &[Line]) -> Option<String> {
    found.iter().find_map(|line| {
        let other = found
            .iter()
            .find(|other| line.mounted.through.contains(&other.mounted.point))?;
        let stop = Stop {
            at: other.mounted.point.clone(),
            why: format!(
                "is a mount point {FSTAB} lets users mount on (`{}`)",
                other.option
            ),
        };
        Some(stop.said(&line.target, &line.option))
    })
}

/// Where following a line's path stopped, and why: past it, a user or a server decides.
#[derive(Debug)]
struct Stop {
    at: PathBuf,
    why: String,
}

impl Stop {
    fn new(at: &Path, why: impl Into<String>) -> Self {
        Stop {
            at: at.to_path_buf(),
            why: why.into(),
        }
    }

    /// The refusal of every folder for the line of `target` and `option`.
    fn said(&self, target: &Path, option: &str) -> String {
        format!(
            "may be where a user mounts a filesystem of theirs: {FSTAB} lets users mount \
             (`{option}`) on {}, a path that may lead anywhere past {}, which {}",
            target.display(),
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
    let opened = opened_unfollowed(None, slash).map_err(|e| could_not(slash, e))?;
    let entry = raw::entry_unasked(opened.as_raw_fd()).map_err(|e| could_not(slash, e))?;
    let mut trail = vec![judged_folder(opened, slash, entry, None, mounts)?];
    let mut through = vec![slash.to_path_buf()];
    let mut names: VecDeque<Name> = lookup::names_of(target).collect();
    let mut links = 0;
    while let Some(name) = lookup::next_name(&mut names, &mut trail) {
        let folder = trail.last().expect("/ stays on the trail");
        let here = folder.path.join(&name);
        let Some((opened, entry)) = looked_at(folder, Path::new(&name), &here)? else {
            let rest = std::iter::once(Name::Plain(name)).chain(names);
            return Ok(as_written(&folder.path, rest, through));
        };
        if is_link(entry.mode) {
            links += 1;
            if links > lookup::MAX_LINKS {
                return Err(Stop::new(&here, "leads through too many links"));
            }
            let to = lookup::read_link(&opened).map_err(|e| could_not(&here, e))?;
            let to: Vec<Name> = lookup::names_of(Path::new(&to)).collect();
            to.into_iter().rev().for_each(|name| names.push_front(name));
            continue;
        }
        if names.is_empty() {
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
        let came_from = Some(folder.mount_id);
        trail.push(judged_folder(opened, &here, entry, came_from, mounts)?);
        through.push(here);
    }
    let point = trail.pop().expect("/ stays on the trail").path;
    Ok(Mounted { point, through })
}

/// `name` (at `here`) in the judged `folder`, opened without following it and looked at
/// without asking its filesystem; None where there is none (only root could make it, in a
/// folder of root's alone). In a folder others may make names in, it must be root's and be
/// there; a link must be root's, on its folder's mount.
fn looked_at(
    folder: &Folder,
    name: &Path,
    here: &Path,
) -> Result<Option<(File, EntryUnasked)>, Stop> {
    let opened = match opened_unfollowed(Some(&folder.fd), name) {
        Ok(opened) => opened,
        Err(Errno::ENOENT) if folder.shared => {
            let why = "is not there, in a folder others may make names in: anyone may put a \
                       link there";
            return Err(Stop::new(here, why));
        }
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(could_not(here, e)),
    };
    let entry = raw::entry_unasked(opened.as_raw_fd()).map_err(|e| could_not(here, e))?;
    if is_link(entry.mode) && (entry.uid != 0 || entry.mount_id != folder.mount_id) {
        let why = format!(
            "is a link of uid {}'s, not one root alone put there",
            entry.uid
        );
        return Err(Stop::new(here, why));
    }
    if folder.shared && entry.uid != 0 {
        let why = format!(
            "is uid {}'s, in a folder others may write in: they may put a link in its place",
            entry.uid
        );
        return Err(Stop::new(here, why));
    }
    Ok(Some((opened, entry)))
}

/// The folder opened at `path` (`entry`), judged before anything in it is looked at: on a
/// mount neither a user's nor one a server answers for (looked at where the walk crossed into
/// it: `entry`'s mount is not `came_from`, its folder's), root's, and not writable by others
/// unless sticky.
fn judged_folder(
    fd: File,
    path: &Path,
    entry: EntryUnasked,
    came_from: Option<u64>,
    mounts: &mut Mounts,
) -> Result<Folder, Stop> {
    if came_from != Some(entry.mount_id) {
        let mount = mounts
            .by_id(entry.mount_id)
            .map_err(|e| Stop::new(path, format!("could not be looked at ({e})")))?;
        if let Some(why) = not_looked_in(&mount) {
            return Err(Stop::new(path, why));
        }
    }
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
        mount_id: entry.mount_id,
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
        "fuse" | "fuseblk" => "a FUSE filesystem",
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

fn could_not(path: &Path, e: impl std::fmt::Display) -> Stop {
    Stop::new(path, format!("could not be looked at ({e})"))
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
        assert_eq!(points.anywhere(), None);
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
            assert_eq!(points.anywhere(), None, "{spelling}");
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
        ] {
            let points = points_of(&target.to_string_lossy());
            assert_eq!(points.at(&stick), None, "{} followed", target.display());
            let said = points.anywhere().expect("leads anywhere");
            let past_it = format!(
                "(`users`) on {}, a path that may lead anywhere past {}, which {why}",
                target.display(),
                past.display()
            );
            assert!(said.contains(&past_it), "{said}");
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
        let said = points.anywhere().expect("leads anywhere");
        let past_it = format!(
            "(`user`) on {}, a path that may lead anywhere past {}, which is a mount point \
             /etc/fstab lets users mount on (`users`)",
            stick.display(),
            mnt.display()
        );
        assert!(said.contains(&past_it), "{said}");
    }
}

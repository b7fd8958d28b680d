//! Mounts whose files' owners and modes a local user decides: what such a filesystem reports
//! (uid 0, mode 0755) says nothing of who can change it. A FUSE server a user started answers
//! every lookup as it likes (with `allow_other`, root's lookups too); a filesystem a user
//! mounted from an image of their own (`udisksctl loop-setup`, an fstab line with `user`) holds
//! whatever the user wrote into the image, and the image stays theirs to write while mounted.

use std::io::Read;
use std::path::Path;

use crate::mountinfo::{unescape, MountEntry};

/// Where libmount records what the kernel's table does not say: who mounted a `user` mount,
/// which helper (udisks) made one.
const UTAB: &str = "/run/mount/utab";

/// More than a machine's utab or fstab holds; a longer one is read only so far.
const TABLE_LIMIT: u64 = 1 << 20;

/// Why `mount`'s files are ones a local user decides, or None.
pub fn set_by_a_user(mount: &MountEntry) -> Option<String> {
    if let Some(why) = fuse_of_a_user(mount) {
        return Some(why);
    }
    let utab = read_bounded(UTAB);
    mounted_for_a_user(mount, &utab)
}

/// Whether `mount` is FUSE's (`fuse`, `fuseblk`, each possibly `.<subtype>`): its server
/// answers every lookup in it.
pub(crate) fn is_fuse(mount: &MountEntry) -> bool {
    let kind = mount.fs_type.split('.').next().unwrap_or_default();
    kind == "fuse" || kind == "fuseblk"
}

/// A FUSE mount (`fuse`, `fuseblk`, each possibly `.<subtype>`) whose server is not root's: the
/// kernel records the mounter's uid as `user_id=` in the superblock's options.
fn fuse_of_a_user(mount: &MountEntry) -> Option<String> {
    if !is_fuse(mount) {
        return None;
    }
    let user = mount
        .super_options
        .split(',')
        .find_map(|option| option.strip_prefix("user_id="));
    match user {
        Some("0") => None,
        Some(uid) => Some(format!(
            "is on a FUSE filesystem ({}) mounted by uid {uid}, whose server decides every owner and mode on it",
            mount.fs_type
        )),
        None => Some(format!(
            "is on a FUSE filesystem ({}) whose mounter's uid is not known",
            mount.fs_type
        )),
    }
}

/// A mount libmount's `utab` says a user made (`user=NAME`, NAME not root) or udisks made for
/// one (`uhelper=udisks2`): matched by the mount's id where the line has one, else by where it
/// is mounted.
fn mounted_for_a_user(mount: &MountEntry, utab: &str) -> Option<String> {
    let id = mount.id.to_string();
    let target = mount.mount_point.to_string_lossy();
    for line in utab.lines() {
        let fields: Vec<(&str, &str)> = line
            .split(' ')
            .filter_map(|field| field.split_once('='))
            .collect();
        let value = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let by_target = match value("ID") {
            Some(line_id) if line_id == id => false,
            Some(_) => continue,
            None if value("TARGET").is_some_and(|t| unescape(t) == target) => true,
            None => continue,
        };
        let Some(why) = value("OPTS")
            .unwrap_or("")
            .split(',')
            .find_map(users_option)
        else {
            continue;
        };
        if !by_target {
            return Some(why);
        }
        // Without a mount id the line may be left from a mount gone without umount(8).
        return Some(format!(
            "{why} (so says {UTAB} for {target}; if `findmnt {target}` shows another mount \
             there now, that line is stale: remove it)"
        ));
    }
    None
}

/// Why a utab option says a user made the mount (`user=NAME`, NAME not root; `uhelper=udisks*`).
fn users_option(option: &str) -> Option<String> {
    match option.split_once('=')? {
        ("user", who) if who != "root" => Some(format!("is on a filesystem user {who} mounted")),
        ("uhelper", helper) if helper.starts_with("udisks") => Some(format!(
            "is on a filesystem {helper} mounted for a user (a disk or image of theirs)"
        )),
        _ => None,
    }
}

/// The text of the table at `path`, bounded; empty where there is none (utab: no mount made by
/// mount(8) or udisks needed a record).
pub(crate) fn read_bounded(path: impl AsRef<Path>) -> String {
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(TABLE_LIMIT).read_to_string(&mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::parse;

    fn mount(line: &str) -> MountEntry {
        parse(line).pop().expect("a mountinfo line")
    }

    #[test]
    fn a_fuse_mount_is_a_users_unless_roots_server_serves_it() {
        let users = mount(
            "70 47 0:40 / /home/a/mnt rw,nosuid,nodev - fuse.sshfs a@b:/ rw,user_id=1000,group_id=1000,allow_other",
        );
        let why = fuse_of_a_user(&users).expect("refused");
        assert!(
            why.contains("uid 1000") && why.contains("fuse.sshfs"),
            "{why}"
        );
        let blk = mount("71 47 0:41 / /mnt/x rw - fuseblk /dev/sdb1 rw,user_id=1000");
        assert!(fuse_of_a_user(&blk).is_some());
        let roots = mount("72 47 0:42 / /srv rw - fuse.x x rw,user_id=0,group_id=0,allow_other");
        assert_eq!(fuse_of_a_user(&roots), None);
        let ext4 = mount("73 47 8:1 / /data rw - ext4 /dev/sda1 rw,user_id=1000");
        assert_eq!(fuse_of_a_user(&ext4), None);
    }

    #[test]
    fn a_fuseblk_mount_with_a_subtype_is_fuse_too() {
        let blk = mount("74 47 0:43 / /mnt/y rw - fuseblk.ntfs /dev/sdb1 rw,user_id=1000");
        let why = fuse_of_a_user(&blk).expect("refused");
        assert!(why.contains("mounted by uid 1000"), "{why}");
    }

    #[test]
    fn a_mount_utab_says_a_user_or_udisks_made_is_a_users() {
        let media = mount("80 47 7:0 / /media/a/disk rw,nosuid,nodev - ext4 /dev/loop0 rw");
        let utab = "SRC=/dev/sda1 TARGET=/boot ROOT=/ OPTS=x-systemd.automount\n\
                    SRC=/dev/loop0 TARGET=/media/a/disk ROOT=/ OPTS=uhelper=udisks2\n";
        let why = mounted_for_a_user(&media, utab).expect("refused");
        assert!(why.contains("udisks2") && why.contains("stale"), "{why}");
        let by_id = "ID=80 SRC=/dev/loop0 TARGET=/elsewhere ROOT=/ OPTS=user=alice\n";
        let why = mounted_for_a_user(&media, by_id).expect("refused");
        assert!(why.contains("alice") && !why.contains("stale"), "{why}");
        // Another mount's line, and root's own `user` mount, say nothing of this one.
        let other = "ID=81 SRC=/dev/loop0 TARGET=/media/a/disk ROOT=/ OPTS=user=alice\n\
                     ID=80 SRC=/dev/loop0 TARGET=/media/a/disk ROOT=/ OPTS=user=root\n";
        assert_eq!(mounted_for_a_user(&media, other), None);
        let spaced = mount("82 47 7:1 / /media/a/my\\040disk rw - ext4 /dev/loop1 rw");
        let utab = "SRC=/dev/loop1 TARGET=/media/a/my\\040disk OPTS=uhelper=udisks2\n";
        assert!(mounted_for_a_user(&spaced, utab).is_some());
    }
}

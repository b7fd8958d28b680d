//! Reading /proc/self/mountinfo: which filesystems are mounted where.

use std::fs;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq)]
pub struct MountEntry {
    /// The mount's id in its namespace (what `/proc/<pid>/fdinfo/<fd>` says as `mnt_id` of a
    /// descriptor on it).
    pub id: u64,
    /// Its filesystem's device, `major:minor` (the superblock's: a bind shows its source's).
    pub device: String,
    /// What of its filesystem the mount shows (`/` for a whole filesystem, a folder of it for
    /// a bind).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// The mount's own options (`ro` or `rw` first, then `nosuid`, `nodev`, …), apart from
    /// its superblock's.
    pub options: String,
    /// The optional fields: `shared:N` (a peer group), `master:N` (the group it receives
    /// from), `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

/// The mounts of the caller's mount namespace, in mount order.
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&fs::read_to_string("/proc/self/mountinfo")?))
}

/// Parses mountinfo text (proc(5)): `id parent major:minor root mount-point options
/// [optional fields...] - fs-type source super-options`.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mut fields = before.split(' ');
            let id = fields.next()?.parse().ok()?;
            let _parent = fields.next()?;
            let device = fields.next()?;
            let root = fields.next()?;
            let mount_point = fields.next()?;
            let options = fields.next()?;
            let optional = fields
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect();
            let mut after = after.split(' ');
            Some(MountEntry {
                id,
                device: device.to_owned(),
                root: PathBuf::from(unescape(root)),
                mount_point: PathBuf::from(unescape(mount_point)),
                options: options.to_owned(),
                optional,
                fs_type: after.next()?.to_owned(),
                source: unescape(after.next().unwrap_or("")),
                super_options: after.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

impl MountEntry {
    /// Whether nothing can be written through the mount: it, or its superblock, is read-only.
    pub fn is_read_only(&self) -> bool {
        let has_ro = |options: &str| options.split(',').any(|o| o == "ro");
        has_ro(&self.options) || has_ro(&self.super_options)
    }
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Filesystem types that are kernel interfaces rather than stored files: a VM gets its own
/// instance of the ones it needs and never a copy-on-write view of them.
pub fn is_api_filesystem(fs_type: &str) -> bool {
    matches!(
        fs_type,
        "proc"
            | "sysfs"
            | "devtmpfs"
            | "devpts"
            | "cgroup"
            | "cgroup2"
            | "mqueue"
            | "tracefs"
            | "debugfs"
            | "securityfs"
            | "pstore"
            | "bpf"
            | "configfs"
            | "fusectl"
            | "binfmt_misc"
            | "hugetlbfs"
            | "autofs"
            | "efivarfs"
            | "nsfs"
            | "rpc_pipefs"
            | "nfsd"
            | "selinuxfs"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    28 27 0:25 / /mnt/with\\040space ro shared:1 - tmpfs none ro\n";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/"));
        assert_eq!(mounts[1].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!((mounts[0].id, mounts[1].id), (27, 28));
        assert_eq!(mounts[1].fs_type, "tmpfs");
        assert_eq!(
            (mounts[0].options.as_str(), mounts[1].options.as_str()),
            ("rw,relatime", "ro")
        );
        assert_eq!(
            (mounts[0].device.as_str(), mounts[1].device.as_str()),
            ("254:0", "0:25")
        );
        assert!(mounts[0].optional.is_empty());
        assert_eq!(mounts[1].optional, ["shared:1"]);
    }
}

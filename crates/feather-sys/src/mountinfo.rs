//! Reading /proc/self/mountinfo: which filesystems are mounted where.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The caller's mount table.
pub const OWN_TABLE: &str = "/proc/self/mountinfo";

/// The room [`read_table`] makes before its first read: a table of a hundred mounts or so.
const TABLE_ROOM: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct MountEntry {
    /// The mount's id in its namespace (what `/proc/<pid>/fdinfo/<fd>` says as `mnt_id` of a
    /// descriptor on it).
    pub id: u64,
    /// The id of the mount it is mounted on (its own for the namespace's root, or one not in
    /// the table: the root of a chroot's or a pivoted namespace's old tree).
    pub parent: u64,
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
    Ok(parse(read_table(Path::new(OWN_TABLE))?))
}

/// The id (as mountinfo lists it) of the mount `fd` is on, as `/proc/self/fdinfo` says it:
/// procfs tells it from the open file alone, asking its filesystem nothing (a statx of it
/// may: 9p without a cache asks its server even with `AT_STATX_DONT_SYNC`, gfs2 and ocfs2
/// take cluster locks), so a mount can be judged before anything is asked of it.
pub fn mount_id_of_fd(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("/proc/self/fdinfo names no mnt_id"))
}

/// The text of the mount table at `path` (a `/proc/<pid>/mountinfo`) into a buffer with room
/// for [`TABLE_ROOM`] bytes from the start. procfs gives the file no size, so `fs::read` starts
/// with an empty buffer, which `read_to_end` probes with a read of 32 bytes and then grows by
/// doubling, one read per size: eight reads for a table of 30 mounts, and a start reads the
/// table several times. With room made, each read takes what procfs has ready (about a page
/// of text), and a table of a few KiB takes two reads: its text and its end.
pub fn read_table(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut text = Vec::with_capacity(TABLE_ROOM);
    fs::File::open(path)?.read_to_end(&mut text)?;
    Ok(text)
}

/// Parses mountinfo text (proc(5)): `id parent major:minor root mount-point options
/// [optional fields...] - fs-type source super-options`. The text is bytes: the kernel writes
/// paths as they are (but for the octal escapes of [`unescape`]), and a path need not be UTF-8
/// (a folder a user or a VM named so): `root` and `mount_point` keep every byte, the other
/// fields are read lossily (only compared with fixed words, or shown).
pub fn parse(text: impl AsRef<[u8]>) -> Vec<MountEntry> {
    text.as_ref()
        .split(|&b| b == b'\n')
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let split_at = line.windows(3).position(|w| w == b" - ")?;
    let (before, after) = (&line[..split_at], &line[split_at + 3..]);
    let text = |field: &[u8]| String::from_utf8_lossy(field).into_owned();
    let mut fields = before.split(|&b| b == b' ');
    let id = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let parent = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let device = text(fields.next()?);
    let root = path(fields.next()?);
    let mount_point = path(fields.next()?);
    let options = text(fields.next()?);
    let optional = fields.filter(|f| !f.is_empty()).map(text).collect();
    let mut after = after.split(|&b| b == b' ');
    Some(MountEntry {
        id,
        parent,
        device,
        root,
        mount_point,
        options,
        optional,
        fs_type: text(after.next()?),
        source: String::from_utf8_lossy(&unescape_bytes(after.next().unwrap_or(b""))).into_owned(),
        super_options: text(after.next().unwrap_or(b"")),
    })
}

/// A path field of mountinfo, every byte kept.
fn path(field: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(unescape_bytes(field)))
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
    String::from_utf8_lossy(&unescape_bytes(field.as_bytes())).into_owned()
}

/// [`unescape`], every byte kept.
fn unescape_bytes(bytes: &[u8]) -> Vec<u8> {
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
    out
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

    /// A path that is not UTF-8 keeps its bytes (as the kernel wrote them, escapes undone), and
    /// the table around it is read whole: reading it as text failed on the first such byte.
    #[test]
    fn mount_points_that_are_not_utf8_keep_their_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let text = b"27 1 254:0 / / rw - ext4 /dev/vda rw\n\
                     28 27 0:25 /r\xff /mnt/b\xff\\040x rw - tmpfs src\xfe rw\n\
                     29 27 0:26 / /mnt/after rw - tmpfs none rw\n";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(
            mounts[1].mount_point.as_os_str().as_bytes(),
            b"/mnt/b\xff x"
        );
        assert_eq!(mounts[1].root.as_os_str().as_bytes(), b"/r\xff");
        assert_eq!(mounts[1].source, "src\u{fffd}");
        assert_eq!(mounts[2].mount_point, PathBuf::from("/mnt/after"));
    }
}

//! How much an archive may unpack to. An archive is small for what it holds (zstd turns a
//! gigabyte of zeros into a few kilobytes, a million empty files into little more), and its
//! author, or a migration's sender, chooses what it holds: unbounded, one import filled the
//! receiving state root's filesystem, which every VM of the root (and often the host) writes
//! to, before anything of it was checked. So an import is stopped, and refused, when
//! - the archive, decompressed, passes [`MAX_VAR`] bytes (no bound unless set): counted as it
//!   goes to tar, this is every byte tar writes (a sparse file's data, not its holes) and
//!   512 bytes or more for each entry; or
//! - the filesystem's free space falls under [`RESERVE_VAR`] (default 5% of the filesystem,
//!   at most 1 GiB), or its free inodes under 5% of its inodes (a million empty files, or
//!   folders, which take a block each): measured (`statvfs`) every [`WATCH_EVERY`] while tar
//!   unpacks, so what the filesystem says counts, other writers on it too (a refusal may come
//!   early, never late); tar may pass the reserve by what it writes in one [`WATCH_EVERY`]
//!   before it is stopped, and the import is refused all the same.

use std::path::Path;
use std::time::Duration;

/// The most, in bytes (`64G`, `512M`), an archive may unpack to (its tar stream).
pub const MAX_VAR: &str = "FEATHER_IMPORT_MAX";
/// The free space, in bytes (`2G`), an import leaves on the state root's filesystem.
pub const RESERVE_VAR: &str = "FEATHER_IMPORT_RESERVE";
/// How often the filesystem is measured while tar unpacks.
pub const WATCH_EVERY: Duration = Duration::from_millis(20);
/// The default reserve: this share of the filesystem (1/20: 5%), of its space and its inodes…
const RESERVE_SHARE: u64 = 20;
/// …but never more space than this.
const RESERVE_MOST: u64 = 1 << 30;

/// What an import may use of the filesystem holding `dir`, measured when it begins.
#[derive(Debug)]
pub struct Room {
    dir: std::path::PathBuf,
    most: Option<u64>,
    reserve: u64,
    reserve_inodes: u64,
}

/// Free space and inodes of a filesystem, as an unprivileged writer may use them (the space
/// ext4 keeps for root stays out of it).
struct Measure {
    free: u64,
    size: u64,
    inodes_free: u64,
    inodes: u64,
}

fn measure(dir: &Path) -> std::io::Result<Measure> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    let unit = stat.fragment_size();
    Ok(Measure {
        free: stat.blocks_available() * unit,
        size: stat.blocks() * unit,
        inodes_free: stat.files_available(),
        inodes: stat.files(),
    })
}

/// A size from the environment variable `name`, if set; what is wrong with it otherwise.
fn size_from(name: &str) -> Result<Option<u64>, String> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    feather_core::size::parse_bytes(&text)
        .map(Some)
        .map_err(|e| format!("{name}={text}: {e}; nothing was imported"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

impl Room {
    /// The room an import into a folder of `dir` (the state root's `vms/`) has, from the
    /// environment's bounds and the filesystem now. Err: why not (a bound mistyped, the
    /// filesystem unreadable), said to the user.
    pub fn of(dir: &Path) -> Result<Room, String> {
        let now = measure(dir).map_err(|e| format!("measuring {}: {e}", dir.display()))?;
        let reserve =
            size_from(RESERVE_VAR)?.unwrap_or_else(|| (now.size / RESERVE_SHARE).min(RESERVE_MOST));
        Ok(Room {
            dir: dir.to_path_buf(),
            most: size_from(MAX_VAR)?,
            reserve,
            reserve_inodes: now.inodes / RESERVE_SHARE,
        })
    }

    /// The most bytes the archive may unpack to, if bounded.
    pub fn most(&self) -> Option<u64> {
        self.most
    }

    /// Why an archive past [`Room::most`] is refused.
    pub fn too_large(&self) -> String {
        let most = self.most.unwrap_or_default();
        format!(
            "it unpacks to more than {} ({MAX_VAR}={}, the most an import may unpack to): if \
             a VM that large is expected, raise it in the environment of `feather restore \
             --import` or of `feather serve`; nothing was imported",
            mib(most),
            feather_core::size::format_bytes(most)
        )
    }

    /// Why the import must stop now, if the filesystem is short of room.
    pub fn short(&self) -> Option<String> {
        let now = match measure(&self.dir) {
            Ok(now) => now,
            Err(e) => return Some(format!("measuring {}: {e}", self.dir.display())),
        };
        if now.free < self.reserve {
            return Some(format!(
                "unpacking it left {} free on the filesystem of {}, under the {} an import \
                 leaves free ({RESERVE_VAR}; 5% of the filesystem, at most 1G, unless set): \
                 make room there, or import into a state root (--root) on a filesystem with \
                 room; nothing was imported",
                mib(now.free),
                self.dir.display(),
                mib(self.reserve)
            ));
        }
        if now.inodes > 0 && now.inodes_free < self.reserve_inodes {
            return Some(format!(
                "unpacking it left {} of {} inodes free on the filesystem of {}, under the 5% an \
                 import leaves free: the archive holds that many files, or the filesystem is \
                 nearly out of them; import into a state root (--root) on a filesystem with \
                 room; nothing was imported",
                now.inodes_free,
                now.inodes,
                self.dir.display()
            ));
        }
        None
    }
}

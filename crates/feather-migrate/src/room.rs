//! How much an archive may unpack to. An archive is small for what it holds (zstd turns a
//! gigabyte of zeros into a few kilobytes, a million empty files into little more), and its
//! author, or a migration's sender, chooses what it holds: unbounded, one import filled the
//! receiving state root's filesystem, which every VM of the root (and often the host) writes
//! to, before anything of it was checked. So the filesystem is measured while tar unpacks
//! (`statvfs`, every [`WATCH_EVERY`]) and tar is stopped, and the import refused, when
//! - the space it has lost since the import began passes [`MAX_VAR`] (no bound unless set), or
//! - the space left free falls under [`RESERVE_VAR`] (default 5% of the filesystem, at most
//!   1 GiB), or the inodes left under 5% of its inodes (a million empty files).
//!
//! What the filesystem says is measured, not what tar was told: sparse files, hard links and
//! folders count as the blocks and inodes they take. Other writers on the same filesystem count
//! too (a refusal may come early, never late), and tar may pass a bound by what it writes in
//! one [`WATCH_EVERY`] before it is stopped; the import is refused all the same.

use std::path::Path;
use std::time::Duration;

/// The most, in bytes (`64G`, `512M`), one import may take of the state root's filesystem.
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
    free_at_start: u64,
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
            free_at_start: now.free,
            most: size_from(MAX_VAR)?,
            reserve,
            reserve_inodes: now.inodes / RESERVE_SHARE,
        })
    }

    /// Why the import must stop now, if it must.
    pub fn exceeded(&self) -> Option<String> {
        let now = match measure(&self.dir) {
            Ok(now) => now,
            Err(e) => return Some(format!("measuring {}: {e}", self.dir.display())),
        };
        let taken = self.free_at_start.saturating_sub(now.free);
        if let Some(most) = self.most.filter(|most| taken > *most) {
            return Some(format!(
                "it unpacks to more than {} ({MAX_VAR}={}, the most one import may take of \
                 the state root's filesystem): if a VM that large is expected, raise it in the \
                 environment of `feather restore --import` or `feather serve`; nothing was \
                 imported",
                mib(most),
                feather_core::size::format_bytes(most)
            ));
        }
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

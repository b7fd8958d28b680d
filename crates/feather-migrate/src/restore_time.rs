//! The time CRIU is given to restore a checkpoint before it is taken for stuck and ended
//! ([`crate::criu::RestoreCall::restore`]; docs/migration.md, "A restore's CRIU is given a
//! time, then ended"). Bounded whatever the images folder holds: a sender or an imported
//! checkpoint chooses its files.

use std::fs;
use std::os::fd::AsRawFd;

/// How long CRIU may take to restore the images in the folder `images` before it is taken for
/// stuck: [`RESTORE_PATIENCE`], plus the space the images take (the memory of a stop-and-copy
/// checkpoint, tmpfs contents) at [`RESTORE_READS_AT_LEAST`], at most
/// [`RESTORE_READS_AT_MOST`] more.
pub fn restore_patience(images: &fs::File) -> std::time::Duration {
    patience_for(allocated_bytes(images))
}

/// [`restore_patience`] of images taking `bytes`.
fn patience_for(bytes: u64) -> std::time::Duration {
    let reading = std::time::Duration::from_secs(bytes / RESTORE_READS_AT_LEAST);
    RESTORE_PATIENCE + reading.min(RESTORE_READS_AT_MOST)
}

/// The space the plain files of the folder `images` take on its disk (`st_blocks`), summed
/// without overflow: a file's claimed size is whatever a sender or an imported checkpoint
/// chose (a sparse file of 16 TiB costs nothing), which would make the wait for good again.
fn allocated_bytes(images: &fs::File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    // Listed through the descriptor CRIU is given, whatever its path names now.
    fs::read_dir(format!("/proc/self/fd/{}", images.as_raw_fd()))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .filter(fs::Metadata::is_file)
        .fold(0u64, |sum, meta| {
            sum.saturating_add(meta.blocks().saturating_mul(512))
        })
}

/// What a restore may take besides reading its images: CRIU restores a VM's processes in well
/// under a second here, a few seconds on a loaded host.
pub const RESTORE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The slowest reading of images a restore is given time for, in bytes per second (a slow
/// disk, or a host busy with other work).
pub const RESTORE_READS_AT_LEAST: u64 = 16 << 20;

/// The most time given for reading images (15 min: 14 GiB at [`RESTORE_READS_AT_LEAST`]),
/// whatever the folder holds.
pub const RESTORE_READS_AT_MOST: std::time::Duration = std::time::Duration::from_secs(15 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    /// The time a restore is given counts the space its images take, not the size they
    /// claim (a sparse file of 1 TiB takes none; counted by its size, it gave CRIU 18 h), and
    /// is capped whatever they take (before, a sum that could overflow and no cap).
    #[test]
    fn a_restore_s_patience_is_bounded_whatever_its_images_folder_holds() {
        let images = feather_testkit::ScratchDir::new("criu-patience");
        fs::create_dir_all(&images.0).unwrap();
        let sparse = fs::File::create(images.0.join("pages-1.img")).unwrap();
        sparse.set_len(1 << 40).unwrap();
        fs::write(images.0.join("core-1.img"), [0u8; 8192]).unwrap();
        let folder = fs::File::open(&images.0).unwrap();
        assert_eq!(restore_patience(&folder), RESTORE_PATIENCE);
        assert_eq!(
            patience_for(u64::MAX),
            RESTORE_PATIENCE + RESTORE_READS_AT_MOST
        );
    }
}

//! Flushing several files to disk together. fsync(2) of a file first writes its data out,
//! which on a journalling filesystem allocates its blocks in the running transaction, and then
//! commits that transaction: syncing N freshly written files one after the other commits N
//! transactions. Starting every file's writeback first puts all of their allocations in one
//! transaction, which the first fsync commits; the later ones find theirs committed already
//! and only flush the device's cache — one flush each, a few milliseconds on a busy disk.
//!
//! On a filesystem whose journal commits in order (ext4, XFS), committing a change commits every
//! change made before it: files whose data was written out and waited for ([`write_out`]), then
//! made to exist by a rename, reach the disk with that rename in one commit and one flush
//! (the fsync of the rename's folder), and a commit that takes the rename (the journal's own,
//! every few seconds) takes the files' allocations with it, which came first.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::raw;

/// Flushes every path (files and folders, already written unsynced) to disk, in order.
/// Returns the path that failed with its error.
pub fn sync_together(paths: &[PathBuf]) -> Result<(), (PathBuf, io::Error)> {
    let opened = paths
        .iter()
        .map(|path| File::open(path).map_err(|e| failed(path, e)))
        .collect::<Result<Vec<_>, _>>()?;
    for file in &opened {
        // Only a head start for the fsync below, which is the guarantee: a folder (no pages
        // of its own to write on most filesystems) or a filesystem without it loses nothing.
        let _ = raw::start_writeback(file.as_fd());
    }
    for (file, path) in opened.iter().zip(paths) {
        file.sync_all().map_err(|e| failed(path, e))?;
    }
    Ok(())
}

/// Writes the data of every file (already written, unsynced) out and waits until it is on the
/// device, without a journal commit or a flush of the device's cache: the first half of a
/// commit that [`orders_commits`] lets one later fsync finish. Returns the path that failed.
pub fn write_out(files: &[PathBuf]) -> Result<(), (PathBuf, io::Error)> {
    let opened = files
        .iter()
        .map(|path| File::open(path).map_err(|e| failed(path, e)))
        .collect::<Result<Vec<_>, _>>()?;
    for file in &opened {
        let _ = raw::start_writeback(file.as_fd());
    }
    for (file, path) in opened.iter().zip(files) {
        raw::write_out(file.as_fd()).map_err(|e| failed(path, e.into()))?;
    }
    Ok(())
}

/// Whether the filesystem holding `path` commits its metadata through one journal in the order
/// the changes were made (ext4, XFS), so that an fsync of the last change commits all earlier
/// ones with it. Other filesystems (btrfs's per-file log, tmpfs, unknown ones) are synced file
/// by file.
pub fn orders_commits(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC};
    statfs(path).is_ok_and(|fs| {
        let kind = fs.filesystem_type();
        kind == EXT4_SUPER_MAGIC || kind == XFS_SUPER_MAGIC
    })
}

fn failed(path: &Path, error: io::Error) -> (PathBuf, io::Error) {
    (path.to_path_buf(), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_files_and_folders_and_names_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("feather-flush-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        std::fs::write(&file, b"{}").unwrap();
        sync_together(&[file.clone(), dir.clone()]).unwrap();
        let missing = dir.join("missing");
        let (path, error) = sync_together(&[file, missing.clone()]).unwrap_err();
        assert_eq!((path, error.kind()), (missing, io::ErrorKind::NotFound));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_files_out_and_names_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("feather-write-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, b"name = 'a'").unwrap();
        write_out(std::slice::from_ref(&file)).unwrap();
        let missing = dir.join("missing");
        let (path, error) = write_out(&[file, missing.clone()]).unwrap_err();
        assert_eq!((path, error.kind()), (missing, io::ErrorKind::NotFound));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_filesystem_without_a_journal_is_synced_file_by_file() {
        assert!(!orders_commits(Path::new("/proc")));
    }
}

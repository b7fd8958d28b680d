//! Flushing several files to disk together. fsync(2) of a file first writes its data out,
//! which on a journalling filesystem allocates its blocks in the running transaction, and then
//! commits that transaction: syncing N freshly written files one after the other commits N
//! transactions. Starting every file's writeback first puts all of their allocations in one
//! transaction, which the first fsync commits; the later ones find theirs committed already
//! and only flush the device's cache.

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
}

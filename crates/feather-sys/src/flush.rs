//! Flushing several files to disk together. fsync(2) of a file first writes its data out,
//! which on a journalling filesystem allocates its blocks in the running transaction, and then
//! commits that transaction: syncing N freshly written files one after the other commits N
//! transactions. Starting every file's writeback first puts all of their allocations in one
//! transaction, which the first fsync commits; the later ones find theirs committed already
//! and only flush the device's cache — one flush each, a few milliseconds on a busy disk.
//!
//! On a filesystem whose journal commits in order (XFS, ext4 with a journal: [`orders_commits`]), committing a change commits every
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
/// the changes were made, so that an fsync of the last change commits all earlier ones with it:
/// XFS (always logged), and ext4 with a journal, as the kernel says. The statfs magic of ext4
/// is also ext2's and ext3's, with or without a journal (this machine's root ext4 has none);
/// without one nothing orders the commits, and every file is synced on its own. Other
/// filesystems (btrfs's per-file log, tmpfs, unknown ones) are synced file by file too.
pub fn orders_commits(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, EXT4_SUPER_MAGIC, XFS_SUPER_MAGIC};
    match statfs(path).map(|fs| fs.filesystem_type()) {
        Ok(kind) if kind == XFS_SUPER_MAGIC => true,
        Ok(kind) if kind == EXT4_SUPER_MAGIC => ext4_has_journal(path),
        _ => false,
    }
}

/// Whether the ext4 filesystem holding `path` has a journal: the kernel names its thread in
/// `/sys/fs/ext4/<device>/journal_task` (`<none>` without one), the device found through
/// `/sys/dev/block/<major>:<minor>`. False wherever that cannot be read.
fn ext4_has_journal(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let (major, minor) = (
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev()),
    );
    let Ok(device) = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")) else {
        return false;
    };
    let Some(name) = device.file_name() else {
        return false;
    };
    let task = Path::new("/sys/fs/ext4").join(name).join("journal_task");
    std::fs::read_to_string(task).is_ok_and(|task| {
        let task = task.trim();
        !task.is_empty() && task != "<none>"
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

    /// A small ext4 filesystem on a loop device, made with `features` (mkfs.ext4 `-O`);
    /// unmounted and removed on drop.
    struct LoopExt4 {
        dir: PathBuf,
    }

    impl LoopExt4 {
        fn new(label: &str, features: &str) -> LoopExt4 {
            use std::process::Command;
            let dir = std::env::temp_dir().join(format!("feather-{label}-{}", std::process::id()));
            let fs = LoopExt4 { dir };
            std::fs::create_dir_all(fs.mount()).unwrap();
            let image = fs.dir.join("fs.img");
            let made = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", features])
                .arg(&image)
                .arg("32M")
                .status()
                .expect("mkfs.ext4 (e2fsprogs, ./setup.sh)");
            assert!(made.success());
            let mounted = Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(fs.mount())
                .status()
                .unwrap();
            assert!(mounted.success());
            fs
        }

        fn mount(&self) -> PathBuf {
            self.dir.join("mnt")
        }
    }

    impl Drop for LoopExt4 {
        fn drop(&mut self) {
            // `umount -d` also frees the loop device.
            let _ = std::process::Command::new("umount")
                .arg("-d")
                .arg(self.mount())
                .status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// ext4's statfs magic says nothing of a journal: one commit for many files is had only
    /// where the kernel names the journal's thread.
    #[test]
    fn only_a_filesystem_with_a_journal_orders_its_commits() {
        let journalled = LoopExt4::new("journal", "has_journal");
        let bare = LoopExt4::new("no-journal", "^has_journal");
        assert!(orders_commits(&journalled.mount()));
        assert!(!orders_commits(&bare.mount()));
        assert!(!orders_commits(Path::new("/proc")));
    }
}

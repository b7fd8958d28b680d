//! Flushing several files to disk together. fsync(2) of a file first writes its data out,
//! which on a journalling filesystem allocates its blocks in the running transaction, and then
//! commits that transaction: syncing N freshly written files one after the other commits N
//! transactions. Starting every file's writeback first puts all of their allocations in one
//! transaction, which the first fsync commits; the later ones find theirs committed already
//! and only flush the device's cache. Those later ones go side by side, one thread each: the
//! block layer serves flushes that wait together with one flush of the device, where one
//! after the other each waited for a flush of its own — behind every write in flight on a
//! busy disk (a create's five: 17.5 ms median one after the other against 2.4 ms side by
//! side, 60 rounds alternating on this host's ext4, load 5–7). And the other way round:
//! [`replace_unflushed`] puts a file in another's place without having ext4 write it out at
//! the rename.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::raw;

/// How many paths are open and flushed at once: bounded whatever the number given (a VM's
/// checkpoint has some files for each of its processes and threads), so that neither the
/// open files (the caller's RLIMIT_NOFILE, often 1024) nor the threads (a pids cgroup's
/// limit; a failed spawn aborts the process) grow with what a VM runs. Each chunk still
/// shares one transaction commit and the device's flushes (see the module's note).
const CHUNK: usize = 32;

/// Flushes every path (files and folders, already written unsynced) to disk; all of them are
/// on disk when it returns Ok. Returns the first path (in the order given) that failed, with
/// its error. At most [`CHUNK`] paths are open, and as many threads run, at a time.
pub fn sync_together(paths: &[PathBuf]) -> Result<(), (PathBuf, io::Error)> {
    paths.chunks(CHUNK).try_for_each(sync_chunk)
}

/// [`sync_together`] of at most [`CHUNK`] paths: all open, their writeback started, then
/// flushed side by side.
fn sync_chunk(paths: &[PathBuf]) -> Result<(), (PathBuf, io::Error)> {
    let opened = paths
        .iter()
        .map(|path| File::open(path).map_err(|e| failed(path, e)))
        .collect::<Result<Vec<_>, _>>()?;
    for file in &opened {
        // Only a head start for the fsync below, which is the guarantee: a folder (no pages
        // of its own to write on most filesystems) or a filesystem without it loses nothing.
        let _ = raw::start_writeback(file.as_fd());
    }
    let Some((first, rest)) = opened.split_first() else {
        return Ok(());
    };
    // The first commits the transaction that holds them all; the rest, side by side, then
    // share the device's flushes (see the module's note).
    let synced: Vec<io::Result<()>> = std::thread::scope(|scope| {
        let others: Vec<_> = rest
            .iter()
            .map(|file| scope.spawn(move || file.sync_all()))
            .collect();
        std::iter::once(first.sync_all())
            .chain(others.into_iter().map(|other| {
                other
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the flushing thread panicked")))
            }))
            .collect()
    });
    match synced
        .into_iter()
        .zip(paths)
        .find(|(outcome, _)| outcome.is_err())
    {
        Some((Err(e), path)) => Err(failed(path, e)),
        _ => Ok(()),
    }
}

fn failed(path: &Path, error: io::Error) -> (PathBuf, io::Error) {
    (path.to_path_buf(), error)
}

/// Puts the file at `new` in `target`'s place without having its data written out now: the two
/// names are exchanged, then the old version (at `new` then) is removed. A rename over an
/// existing file makes ext4 (`auto_da_alloc`, its default) write the new file's data out, so
/// that a power cut cannot leave the name empty; an exchange does not (docs/design.md, Known
/// limits, has the measurements). So only for a file that need not survive a power cut, in a
/// folder whose readers take no dot name and whose staged names are swept: a process killed
/// between the exchange and the removal leaves the old version under `new`.
/// A plain rename where there is no `target` yet, or where the filesystem, kernel, seccomp
/// profile or a security module refuses the exchange. Whatever cannot be removed from `new`
/// after the exchange (a folder was at `target`) is put back, and the error returned, as a
/// rename over it would have failed. A reader sees the old file or the new one, never none.
pub fn replace_unflushed(new: &Path, target: &Path) -> io::Result<()> {
    replace_by_exchange(new, target, &exchange, |old| std::fs::remove_file(old))
}

/// `renameat2(RENAME_EXCHANGE)` of two paths.
fn exchange(one: &Path, other: &Path) -> nix::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    renameat2(AT_FDCWD, one, AT_FDCWD, other, RenameFlags::RENAME_EXCHANGE)
}

/// [`replace_unflushed`] with its exchange and its removal of the old version given (a test
/// looks between the two, or makes one fail).
fn replace_by_exchange(
    new: &Path,
    target: &Path,
    exchange: &dyn Fn(&Path, &Path) -> nix::Result<()>,
    remove_old: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    use nix::errno::Errno;
    match exchange(new, target) {
        Ok(()) => {}
        // No target yet, or names that cannot be exchanged here (a filesystem without it:
        // EINVAL, EOPNOTSUPP; an old kernel or a seccomp profile: ENOSYS; a security module
        // that allows a rename only: EPERM, EACCES): what a rename does, it does.
        Err(
            Errno::ENOENT
            | Errno::EINVAL
            | Errno::EOPNOTSUPP
            | Errno::ENOSYS
            | Errno::EPERM
            | Errno::EACCES,
        ) => return std::fs::rename(new, target),
        Err(e) => return Err(e.into()),
    }
    match remove_old(new) {
        // Gone already: nothing of the old version is left.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // A folder (EISDIR; EPERM under some security modules) or a removal refused: put back,
        // as a rename over it would have left it.
        Err(e) => match exchange(new, target) {
            Ok(()) => Err(e),
            Err(back) => Err(io::Error::new(
                e.kind(),
                format!(
                    "{} could not be replaced ({e}), and what was there is now at {}: putting \
                     it back failed ({back}); move it back by hand",
                    target.display(),
                    new.display()
                ),
            )),
        },
        Ok(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::MetadataExt;

    /// A folder of the test's own with `state` holding "old" and `.state.staged` "new".
    fn old_and_staged(label: &str) -> (feather_testkit::ScratchDir, PathBuf, PathBuf) {
        let scratch = feather_testkit::ScratchDir::new(label);
        std::fs::create_dir_all(&scratch.0).unwrap();
        let (new, target) = (scratch.0.join(".state.staged"), scratch.0.join("state"));
        std::fs::write(&target, b"old").unwrap();
        std::fs::write(&new, b"new").unwrap();
        (scratch, new, target)
    }

    fn inode(path: &Path) -> u64 {
        std::fs::symlink_metadata(path).unwrap().ino()
    }

    /// The names are exchanged, not renamed over: between the exchange and the removal, the
    /// old version (its inode) is under the staged name; after, the staged inode is at the
    /// name and nothing else is left. No target yet: the new file takes the name.
    #[test]
    fn a_replacement_without_flush_exchanges_the_names_and_removes_the_old_version() {
        let (scratch, new, target) = old_and_staged("replace-unflushed");
        let (old_inode, new_inode) = (inode(&target), inode(&new));
        let mut seen = None;
        replace_by_exchange(&new, &target, &exchange, |old| {
            seen = Some((inode(old), std::fs::read(old).unwrap()));
            std::fs::remove_file(old)
        })
        .unwrap();
        assert_eq!(seen, Some((old_inode, b"old".to_vec())));
        assert_eq!(inode(&target), new_inode);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(&scratch.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state"], "the old version was left beside it");
        std::fs::write(&new, b"newer").unwrap();
        std::fs::remove_file(&target).unwrap();
        replace_unflushed(&new, &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"newer");
        assert!(!new.exists());
    }

    /// Where the exchange is refused (a filesystem, kernel, seccomp profile or security module
    /// without it), the new version still replaces the old one, by a rename.
    #[test]
    fn a_refused_exchange_is_a_plain_rename() {
        use nix::errno::Errno;
        for refused in [
            Errno::EINVAL,
            Errno::EOPNOTSUPP,
            Errno::ENOSYS,
            Errno::EPERM,
            Errno::EACCES,
        ] {
            let (_scratch, new, target) = old_and_staged("replace-refused");
            let new_inode = inode(&new);
            replace_by_exchange(&new, &target, &|_, _| Err(refused), |_| {
                panic!("{refused}: nothing was exchanged, nothing to remove")
            })
            .unwrap_or_else(|e| panic!("{refused}: {e}"));
            assert_eq!(inode(&target), new_inode, "{refused}");
            assert!(!new.exists(), "{refused}");
        }
    }

    /// An old version that cannot be removed (a security module's EPERM, say) is put back,
    /// and the error returned: nothing moved, nothing lost.
    #[test]
    fn an_old_version_that_cannot_be_removed_is_put_back() {
        let (_scratch, new, target) = old_and_staged("replace-unremovable");
        let refused = replace_by_exchange(&new, &target, &exchange, |_| {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        })
        .unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EPERM));
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read(&new).unwrap(), b"new");
    }

    /// A put-back that fails says where what was at the name is now.
    #[test]
    fn a_failed_put_back_names_where_the_old_version_is() {
        let (_scratch, new, target) = old_and_staged("replace-stuck");
        let exchanges = std::cell::Cell::new(0);
        let once = |one: &Path, other: &Path| {
            exchanges.set(exchanges.get() + 1);
            match exchanges.get() {
                1 => exchange(one, other),
                _ => Err(nix::errno::Errno::EIO),
            }
        };
        let refused = replace_by_exchange(&new, &target, &once, |_| {
            Err(io::Error::from_raw_os_error(libc::EISDIR))
        })
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains(&format!("now at {}", new.display())),
            "{refused}"
        );
        assert_eq!(std::fs::read(&new).unwrap(), b"old");
    }

    #[test]
    fn a_folder_at_the_name_is_not_replaced_and_stays_where_it_was() {
        let scratch = feather_testkit::ScratchDir::new("replace-unflushed-folder");
        let dir = scratch.0.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let (new, target) = (dir.join(".state.staged"), dir.join("state"));
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), b"kept").unwrap();
        std::fs::write(&new, b"new").unwrap();
        let refused = replace_unflushed(&new, &target).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EISDIR));
        assert_eq!(std::fs::read(target.join("inside")).unwrap(), b"kept");
        assert_eq!(std::fs::read(&new).unwrap(), b"new");
    }

    #[test]
    fn syncs_files_and_folders_and_names_a_missing_one() {
        let scratch = feather_testkit::ScratchDir::new("flush");
        let dir = scratch.0.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        std::fs::write(&file, b"{}").unwrap();
        sync_together(&[file.clone(), dir.clone()]).unwrap();
        let missing = dir.join("missing");
        let (path, error) = sync_together(&[file, missing.clone()]).unwrap_err();
        assert_eq!((path, error.kind()), (missing, io::ErrorKind::NotFound));
    }

    /// Flushed side by side, every path is flushed, and a failure is the first in the order
    /// given, whichever thread met it first (fsync of a /proc file fails with EINVAL).
    #[test]
    fn names_the_first_path_that_cannot_be_flushed() {
        let scratch = feather_testkit::ScratchDir::new("flush-order");
        let dir = scratch.0.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, b"x").unwrap();
        let first = PathBuf::from("/proc/self/stat");
        let second = PathBuf::from("/proc/self/status");
        let (path, error) =
            sync_together(&[file.clone(), first.clone(), dir.clone(), second]).unwrap_err();
        assert_eq!((path, error.raw_os_error()), (first, Some(libc::EINVAL)));
        sync_together(&[file, dir.clone()]).unwrap();
    }

    /// The files of a VM's checkpoint grow with its processes and threads: thousands of them
    /// are flushed under a file limit far below their number (review-ckpt32 H1: all opened at
    /// once, they failed with EMFILE and the checkpoint was refused). nextest runs each test
    /// in a process of its own, so the lowered limit is this test's alone; it is put back.
    #[test]
    fn flushes_thousands_of_files_under_a_low_open_file_limit() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let scratch = feather_testkit::ScratchDir::new("flush-many");
        let dir = scratch.0.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let mut paths: Vec<PathBuf> = (0..3000)
            .map(|i| {
                let file = dir.join(format!("pages-{i}.img"));
                std::fs::write(&file, b"x").unwrap();
                file
            })
            .collect();
        paths.push(dir);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();
        let flushed = sync_together(&paths);
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
        if let Err((path, error)) = flushed {
            panic!("{}: {error}", path.display());
        }
    }
}

//! The shape of a checkpoint's image folder before CRIU reads it: only plain files, each its
//! inode's only name, and folders. CRIU, as the host's root, opens every image by name,
//! following links: a `pages-N.img` linked to a host file put that file's bytes in the
//! restored container's memory, and a `parent` link (pages `in_parent`) another checkpoint's.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

/// The name of a pre-copy's parent images: feather-oci never makes one (`--parent-path` is
/// refused at checkpoint), and CRIU reads pages through it.
const PARENT: &str = "parent";

/// Deepest folder nesting walked: no checkpoint has folders in its image folder at all.
const MAX_DEPTH: usize = 8;

/// Refuses, naming the entry, an image folder (`folder`, shown as `shown`) holding anything
/// but plain files with one name and folders, or a `parent`. Read by descriptor, never
/// following a link: what is checked is what CRIU is given (the same folder's descriptor).
pub fn check(folder: &fs::File, shown: &Path) -> Result<()> {
    if nix::sys::stat::fstatat(folder, PARENT, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
        bail!(
            "{}: it holds `{PARENT}`, the images of a pre-copy's parent, which feather-oci \
             never makes and CRIU would read pages through (another checkpoint's, or a host \
             folder's); refusing the restore: restore a checkpoint taken in one step",
            shown.join(PARENT).display()
        );
    }
    walk(folder.as_fd(), shown, 0)
}

fn walk(folder: std::os::fd::BorrowedFd, shown: &Path, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!(
            "{}: folders nested deeper than {MAX_DEPTH}, which no checkpoint makes; refusing \
             the restore",
            shown.display()
        );
    }
    let listed = fs::read_dir(format!("/proc/self/fd/{}", folder.as_raw_fd()))
        .with_context(|| format!("list {}", shown.display()))?;
    for entry in listed {
        let name = entry
            .with_context(|| format!("list {}", shown.display()))?
            .file_name();
        let path = shown.join(&name);
        let stat = nix::sys::stat::fstatat(folder, name.as_bytes(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .with_context(|| format!("{}", path.display()))?;
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFDIR {
            let inner: OwnedFd = nix::fcntl::openat(
                folder,
                name.as_bytes(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .with_context(|| format!("open {}", path.display()))?;
            walk(inner.as_fd(), &path, depth + 1)?;
        } else if kind != SFlag::S_IFREG {
            bail!(
                "{}: {}, where a checkpoint holds only plain files and folders; CRIU, as the \
                 host's root, would open it by name (a link's target, any host file, read \
                 into the restored container); refusing the restore: remove it",
                path.display(),
                kind_name(kind)
            );
        } else if stat.st_nlink != 1 {
            bail!(
                "{}: a file with {} names (a hard link), where a checkpoint's files each have \
                 one; refusing the restore: copy the checkpoint's files anew",
                path.display(),
                stat.st_nlink
            );
        }
    }
    Ok(())
}

fn kind_name(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFSOCK => "a socket",
        _ => "not a plain file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(dir: &Path) -> Result<()> {
        check(&fs::File::open(dir).unwrap(), dir)
    }

    #[test]
    fn links_fifos_hard_links_and_a_parent_are_refused_naming_them() {
        let folder = feather_testkit::ScratchDir::new("oci-image-folder");
        let scratch = folder.0.clone();
        let images = scratch.join("images");
        fs::create_dir_all(images.join("sub")).unwrap();
        fs::write(images.join("pages-1.img"), "pages").unwrap();
        fs::write(images.join("sub/inventory.img"), "x").unwrap();
        checked(&images).unwrap();

        let host = scratch.join("host-file");
        fs::write(&host, "host").unwrap();
        type Make<'a> = &'a dyn Fn(&Path);
        let cases: [(&str, Make); 4] = [
            ("sub/pages-2.img", &|p| {
                std::os::unix::fs::symlink(&host, p).unwrap()
            }),
            ("fifo.img", &|p| {
                nix::unistd::mkfifo(p, Mode::from_bits_truncate(0o600)).unwrap()
            }),
            ("hard.img", &|p| fs::hard_link(&host, p).unwrap()),
            (PARENT, &|p| fs::create_dir(p).unwrap()),
        ];
        for (name, make) in cases {
            let path = images.join(name);
            make(&path);
            let error = format!("{:#}", checked(&images).unwrap_err());
            assert!(
                error.contains(&path.display().to_string()),
                "{name}: {error}"
            );
            if path.is_dir() {
                fs::remove_dir(&path).unwrap();
            } else {
                fs::remove_file(&path).unwrap();
            }
            checked(&images).unwrap();
        }
    }
}

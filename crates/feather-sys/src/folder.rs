//! A folder opened for reading, never through a symbolic link: what a command running as root
//! opens in a folder a user may own (a root's, a VM's, a pool's, an import's staging), to act
//! on the descriptor rather than on the path. Only the last part of the path is refused as a
//! link: the parts before it are resolved as the kernel resolves them, links included, so a
//! caller that must not follow a link there opens each part beneath a descriptor it holds.
//! One way of opening, for every such caller.

use std::fs::File;
use std::path::Path;

/// Folder `path` opened (read-only, close-on-exec), never through a symbolic link at its last
/// component nor a file that is not a folder (both ENOTDIR: `O_DIRECTORY` checks the link
/// itself).
pub fn open_no_follow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder is opened; a link to it, and a plain file, are refused.
    #[test]
    fn a_folder_is_opened_and_a_link_to_one_or_a_file_refused() {
        let scratch = feather_testkit::ScratchDir::new("open-no-follow");
        let dir = scratch.0.join("folder");
        std::fs::create_dir_all(&dir).unwrap();
        let link = scratch.0.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let file = scratch.0.join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(open_no_follow(&dir).unwrap().metadata().unwrap().is_dir());
        let errno = |path: &Path| open_no_follow(path).unwrap_err().raw_os_error();
        assert_eq!(errno(&link), Some(libc::ENOTDIR));
        assert_eq!(errno(&file), Some(libc::ENOTDIR));
    }
}

//! Whether a state root's folder is one only root can change, as sshd's StrictModes checks a
//! user's files: feather acts there as root, by path, between its checks and its uses, so a
//! local user who owns the root's folder (`sudo feather --root ~/vms …`) or any folder above
//! it, or can write to one, could swap `pool/`, `vms/` or a settings file for their own — a
//! link to `/etc/sudoers.d` for root to write into, a FIFO or `/dev/zero` for root to read,
//! a held lock — at any moment. The folders are looked at on the descriptors the kernel's own
//! lookup goes through ([`feather_sys::lookup`]), links included, never by a path looked up
//! again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Anyone but the owner may write (`S_IWGRP | S_IWOTH`).
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Entries of a folder with it may be renamed or removed only by their owner (`/tmp`).
const STICKY: u32 = 0o1000;

/// Refuses the state root `dir` unless every folder and link its lookup goes through is
/// owned by root (or this process's user) and no one else can write to it (the sticky `/tmp`
/// aside: no one can move what root made in it), the root's own folder not even with the
/// sticky bit (its names are feather's). A part not made yet is fine: whoever makes it (root,
/// next) is looked at again once it is made.
pub fn check_state_root(dir: &Path) -> Result<()> {
    let lookup = feather_sys::lookup::walk(dir).at(dir)?;
    let last = lookup.steps.len() - 1;
    for (place, step) in lookup.steps.iter().enumerate() {
        let the_root = place == last && lookup.missing.is_none();
        if let Some(why) = untrusted(&step.meta, the_root) {
            return Err(Error::UntrustedRoot {
                root: dir.to_path_buf(),
                folder: step.path.clone(),
                why,
            });
        }
    }
    Ok(())
}

/// What makes a folder or link of a root's lookup one a user other than root could change.
fn untrusted(meta: &std::fs::Metadata, the_root: bool) -> Option<String> {
    let owner = meta.uid();
    if owner != 0 && owner != feather_sys::creds::effective_uid() {
        return Some(format!("is owned by uid {owner}, not root"));
    }
    let mode = meta.mode() & 0o7777;
    let shared = mode & WRITABLE_BY_OTHERS != 0;
    if meta.file_type().is_symlink() || !shared {
        return None;
    }
    if the_root {
        return Some(format!("is writable by group or others (mode {mode:04o})"));
    }
    (mode & STICKY == 0)
        .then(|| format!("is writable by group or others without the sticky bit (mode {mode:04o})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A scratch folder under the sticky `/tmp`, made 0755 and removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "feather-strict-{label}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn refusal(dir: &Path) -> (PathBuf, String) {
        match check_state_root(dir) {
            Err(Error::UntrustedRoot { folder, why, .. }) => (folder, why),
            other => panic!("{} was not refused: {other:?}", dir.display()),
        }
    }

    fn set_mode(dir: &Path, mode: u32) {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_root_in_a_folder_only_root_changes_is_taken_made_or_not() {
        let scratch = Scratch::new("fine");
        let root = scratch.0.join("root");
        check_state_root(&root.join("not/made/yet")).unwrap();
        fs::create_dir(&root).unwrap();
        set_mode(&root, 0o700);
        check_state_root(&root).unwrap();
        // A link to it is fine where the link is root's, in a folder only root changes.
        std::os::unix::fs::symlink(&root, scratch.0.join("link")).unwrap();
        check_state_root(&scratch.0.join("link")).unwrap();
        // A relative one, through `..`: walked from the link's folder, as the kernel does.
        let back = Path::new("..")
            .join(scratch.0.file_name().unwrap())
            .join("root");
        std::os::unix::fs::symlink(&back, scratch.0.join("relative")).unwrap();
        check_state_root(&scratch.0.join("relative")).unwrap();
        std::os::unix::fs::lchown(&root, Some(65534), None).unwrap();
        assert_eq!(refusal(&scratch.0.join("relative")).0, root);
    }

    #[test]
    fn a_folder_above_the_root_writable_by_others_is_refused_unless_sticky() {
        let scratch = Scratch::new("shared");
        let root = scratch.0.join("root");
        fs::create_dir(&root).unwrap();
        set_mode(&scratch.0, 0o775);
        let (folder, why) = refusal(&root);
        assert_eq!(folder, scratch.0);
        assert!(
            why.contains("writable by group") && why.contains("0775"),
            "{why}"
        );
        // Missing, the root is refused the same: its folder would be made where others can
        // put theirs first.
        refusal(&scratch.0.join("not-yet"));
        set_mode(&scratch.0, 0o1777);
        check_state_root(&root).unwrap();
    }

    #[test]
    fn a_root_folder_writable_by_others_is_refused_even_sticky() {
        let scratch = Scratch::new("root-shared");
        let root = scratch.0.join("root");
        fs::create_dir(&root).unwrap();
        set_mode(&root, 0o1777);
        let (folder, why) = refusal(&root);
        assert_eq!(folder, root);
        assert!(why.contains("1777"), "{why}");
    }

    #[test]
    fn a_folder_of_another_user_on_the_way_is_refused_links_included() {
        let scratch = Scratch::new("owned");
        let users = scratch.0.join("home");
        let root = scratch.0.join("root");
        fs::create_dir(&users).unwrap();
        fs::create_dir(&root).unwrap();
        let link = users.join("vms");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        std::os::unix::fs::lchown(&users, Some(65534), Some(65534)).unwrap();
        // Through a user's folder to a root only root changes: the user can point the link
        // elsewhere at any moment.
        let (folder, why) = refusal(&link);
        assert_eq!(folder, users);
        assert!(why.contains("uid 65534"), "{why}");
        // The root's own folder a user's.
        std::os::unix::fs::lchown(&root, Some(65534), None).unwrap();
        assert_eq!(refusal(&root).0, root);
        // A link of a user's in the sticky /tmp: the user may replace it.
        std::os::unix::fs::lchown(&root, Some(0), None).unwrap();
        let in_tmp =
            std::env::temp_dir().join(format!("feather-strict-link-{}", std::process::id()));
        let _ = fs::remove_file(&in_tmp);
        std::os::unix::fs::symlink(&root, &in_tmp).unwrap();
        std::os::unix::fs::lchown(&in_tmp, Some(65534), None).unwrap();
        let refused = refusal(&in_tmp);
        fs::remove_file(&in_tmp).unwrap();
        assert_eq!(refused.0, in_tmp);
    }
}

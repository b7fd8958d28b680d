//! Resolving a path a registry recorded (a state root's folder, an OCI runtime root) so that
//! no link a user other than root could have placed steers it: a registered root whose
//! parent a user owns could be swapped for a link to `/usr`, and every VM started after would
//! hide `/usr`.
//!
//! A link is followed only where the folder holding it is root's and writable by nobody else
//! (root's own `ln -s` after moving a root, or `/var/lib` moved to another disk, keeps
//! working). A link in a folder a user may write, sticky (`/tmp`) or not, refuses the path:
//! the caller passes over it with a warning, and never hides or guards where it leads.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// As many links as the kernel follows in one lookup (`MAXSYMLINKS`).
const LINKS_FOLLOWED: usize = 40;

/// Why a recorded path was not resolved.
#[derive(Debug, thiserror::Error)]
pub enum Unresolved {
    #[error(
        "{} leads through the link {}, in {}, a folder a user other than root may write: it \
         is not followed (that user may have placed it)",
        .path.display(), .link.display(), .holder.display()
    )]
    UsersLink {
        path: PathBuf,
        link: PathBuf,
        holder: PathBuf,
    },
    #[error("{} leads through more than {LINKS_FOLLOWED} links", .0.display())]
    TooManyLinks(PathBuf),
    #[error("{} is not an absolute path", .0.display())]
    Relative(PathBuf),
    #[error("cannot look at {}: {source}", .at.display())]
    Io {
        at: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A recorded path resolved: its canonical path, and whether it exists (a missing path's part
/// that does not exist is kept as named, resolved lexically).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: PathBuf,
    pub exists: bool,
}

/// `path` (absolute) resolved as `realpath` would, each link followed only where its holder is
/// root's and writable by no one else ([`trusted_holder`]).
pub fn resolve(path: &Path) -> Result<Resolved, Unresolved> {
    if !path.is_absolute() {
        return Err(Unresolved::Relative(path.to_path_buf()));
    }
    let mut pending: VecDeque<OsString> = names_of(path);
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        match name.to_str() {
            Some("..") => {
                resolved.pop();
                continue;
            }
            Some(".") => continue,
            _ => {}
        }
        let next = resolved.join(&name);
        let meta = match std::fs::symlink_metadata(&next) {
            Ok(meta) => meta,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Ok(missing(next, pending));
            }
            Err(source) => return Err(Unresolved::Io { at: next, source }),
        };
        if !meta.file_type().is_symlink() {
            resolved = next;
            continue;
        }
        if !trusted_holder(&resolved)? {
            return Err(Unresolved::UsersLink {
                path: path.to_path_buf(),
                link: next,
                holder: resolved,
            });
        }
        links += 1;
        if links > LINKS_FOLLOWED {
            return Err(Unresolved::TooManyLinks(path.to_path_buf()));
        }
        let target = std::fs::read_link(&next).map_err(|source| Unresolved::Io {
            at: next.clone(),
            source,
        })?;
        if target.is_absolute() {
            resolved = PathBuf::from("/");
        }
        for name in names_of(&target).into_iter().rev() {
            pending.push_front(name);
        }
    }
    Ok(Resolved {
        path: resolved,
        exists: true,
    })
}

/// The names of `path`, `..` and `.` kept as names (resolved in order, after links).
fn names_of(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// `first_missing` with the names after it, resolved lexically: nothing is there to follow.
fn missing(mut first_missing: PathBuf, rest: VecDeque<OsString>) -> Resolved {
    for name in rest {
        match name.to_str() {
            Some("..") => {
                first_missing.pop();
            }
            Some(".") => {}
            _ => first_missing.push(name),
        }
    }
    Resolved {
        path: first_missing,
        exists: false,
    }
}

/// Whether the folder `holder` (reached through no link) is root's and writable by no one
/// else: only root could have placed a link in it. A sticky folder (`/tmp`) does not count:
/// a user may place a link there where root's folder was removed.
fn trusted_holder(holder: &Path) -> Result<bool, Unresolved> {
    let meta = std::fs::symlink_metadata(holder).map_err(|source| Unresolved::Io {
        at: holder.to_path_buf(),
        source,
    })?;
    Ok(meta.uid() == 0 && meta.mode() & 0o022 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn scratch(label: &str) -> feather_testkit::ScratchDir {
        let scratch = feather_testkit::ScratchDir::new(label);
        // The tests' folders above may be anyone's: the scratch folder is root's, 0755.
        std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        scratch
    }

    fn resolved(path: &Path) -> PathBuf {
        resolve(path).expect("resolved").path
    }

    #[test]
    fn a_link_root_placed_in_its_own_folder_is_followed() {
        let scratch = scratch("resolve-root-link");
        let dir = std::fs::canonicalize(&scratch.0).unwrap();
        std::fs::create_dir_all(dir.join("disk/feather")).unwrap();
        symlink(dir.join("disk/feather"), dir.join("feather")).unwrap();
        assert_eq!(resolved(&dir.join("feather")), dir.join("disk/feather"));
        assert_eq!(
            resolved(&dir.join("feather/run")),
            dir.join("disk/feather/run")
        );
        assert!(!resolve(&dir.join("feather/run")).unwrap().exists);
    }

    #[test]
    fn a_higher_folder_root_moved_and_linked_back_is_followed() {
        let scratch = scratch("resolve-moved-above");
        let dir = std::fs::canonicalize(&scratch.0).unwrap();
        std::fs::create_dir_all(dir.join("other-disk/data/feather")).unwrap();
        // Relative, with a `..`: as `ln -s ../x` writes it.
        symlink("other-disk/./data", dir.join("data")).unwrap();
        assert_eq!(
            resolved(&dir.join("data/feather")),
            dir.join("other-disk/data/feather")
        );
    }

    #[test]
    fn a_link_in_a_folder_a_user_may_write_is_refused() {
        let scratch = scratch("resolve-users-folder");
        let dir = std::fs::canonicalize(&scratch.0).unwrap();
        let home = dir.join("home-u");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
        symlink("/usr", home.join("feather")).unwrap();
        let refused = resolve(&home.join("feather")).expect_err("a user's link");
        assert!(
            matches!(&refused, Unresolved::UsersLink { link, holder, .. }
                if *link == home.join("feather") && *holder == home),
            "{refused:?}"
        );
        // The same with the folder root's but writable by its group.
        std::os::unix::fs::chown(&home, Some(0), Some(65534)).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(resolve(&home.join("feather/bin")).is_err());
    }

    #[test]
    fn a_link_in_a_sticky_folder_is_refused() {
        let scratch = scratch("resolve-sticky");
        let dir = std::fs::canonicalize(&scratch.0).unwrap();
        let tmp = dir.join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
        symlink("/usr", tmp.join("x")).unwrap();
        assert!(matches!(
            resolve(&tmp.join("x")),
            Err(Unresolved::UsersLink { .. })
        ));
        // A plain folder there is the root itself: followed as named.
        std::fs::create_dir(tmp.join("y")).unwrap();
        assert_eq!(resolved(&tmp.join("y")), tmp.join("y"));
    }

    #[test]
    fn a_missing_path_is_said_missing_and_loops_end() {
        let scratch = scratch("resolve-missing");
        let dir = std::fs::canonicalize(&scratch.0).unwrap();
        let gone = resolve(&dir.join("gone/run")).unwrap();
        assert_eq!(
            gone,
            Resolved {
                path: dir.join("gone/run"),
                exists: false
            }
        );
        symlink("loop", dir.join("loop")).unwrap();
        assert!(matches!(
            resolve(&dir.join("loop")),
            Err(Unresolved::TooManyLinks(_))
        ));
        assert!(matches!(
            resolve(Path::new("relative")),
            Err(Unresolved::Relative(_))
        ));
    }
}

//! Resolving a path a registry recorded (a state root's folder, an OCI runtime root) so that
//! no link a user other than root could have placed steers it: a registered root whose
//! parent a user owns could be swapped for a link to `/usr`, and every VM started after would
//! hide `/usr`.
//!
//! The path is walked on descriptors, one name at a time ([`lookup::walk_following`]): what is
//! judged is what the walk went through, never a path looked up again (a user swapping folders
//! between two looks cannot win a race). A link is followed only where the folder holding it,
//! by the `fstat` of its descriptor, is root's and writable by nobody else (root's own `ln -s`
//! after moving a root, or `/var/lib` moved to another disk, keeps working). A link in a
//! folder a user may write refuses the path: the caller passes over it with a warning, and
//! never hides or guards where it leads. A mount whose files a user decides (a user's FUSE
//! mount) on the way refuses it too, before that mount is asked anything (no hang).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use feather_sys::lookup::{self, LinkFound, Lookup, UsersMount};

/// Why a recorded path was not resolved.
#[derive(Debug, thiserror::Error)]
pub enum Unresolved {
    #[error(
        "{}, in {}, a folder a user other than root may write: it is not followed (that user \
         may have placed it)",
        through_link(.path, .link), .holder.display()
    )]
    UsersLink {
        path: PathBuf,
        link: PathBuf,
        holder: PathBuf,
    },
    #[error(
        "{} leads through {}, which {why}: nothing on it is looked at",
        .path.display(), .mount.display()
    )]
    UsersMount {
        path: PathBuf,
        mount: PathBuf,
        why: String,
    },
    #[error("{} leads through too many links", .0.display())]
    TooManyLinks(PathBuf),
    #[error("{} is not an absolute path", .0.display())]
    Relative(PathBuf),
    #[error("cannot look at {}: {source}", .at.display())]
    Io {
        at: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Unresolved {
    /// What an admin does about a registry's entry `file` passed over because of this (said
    /// after it, so each path is named once: the link, the mount or the path this names, and
    /// `file`): what fits the case (a link in a folder others may write, a user's mount, a
    /// path that cannot be looked at), and removing `file` where the root is no longer in use.
    pub fn advice(&self, file: &Path) -> String {
        let fix = match self {
            Unresolved::UsersLink { .. } => {
                "If root made that link, move it (or the root) to a folder only root may write"
            }
            Unresolved::UsersMount { .. } => {
                "If the root is meant to be there, unmount the user's mount"
            }
            Unresolved::TooManyLinks(_) | Unresolved::Relative(_) | Unresolved::Io { .. } => {
                "Repair that path"
            }
        };
        format!(
            "{fix}; if the root is no longer in use, remove its entry {}",
            file.display()
        )
    }
}

/// "`path` leads through the link `link`", or, where `path` is the link itself (the root
/// swapped for one), "`link` is a link": each path named once.
fn through_link(path: &Path, link: &Path) -> String {
    match path == link {
        true => format!("{} is a link", link.display()),
        false => format!(
            "{} leads through the link {}",
            path.display(),
            link.display()
        ),
    }
}

/// A recorded path resolved: its canonical path, and whether it exists (a missing path's part
/// that does not exist is kept as named, resolved lexically).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: PathBuf,
    pub exists: bool,
}

/// `path` (absolute) resolved as `realpath` would, on descriptors ([module doc](self)), each
/// link followed only where its holder is root's and writable by no one else.
///
/// A user's link in a sticky folder (`/tmp`) means root's folder is gone (a user may place a
/// name there only where none is): the path is said missing, as any gone root's is, so its
/// entry retires quietly rather than warning at every start for ever.
pub fn resolve(path: &Path) -> Result<Resolved, Unresolved> {
    if !path.is_absolute() {
        return Err(Unresolved::Relative(path.to_path_buf()));
    }
    let mut refused = None;
    let walked = lookup::walk_following(path, |found| {
        refused = link_refused(path, found);
        match refused {
            Some(_) => Err(io::Error::from_raw_os_error(libc::EPERM)),
            None => Ok(()),
        }
    });
    match (refused, walked) {
        (Some(Refused::Gone), _) => Ok(gone(path)),
        (Some(Refused::Users(why)), _) => Err(why),
        (None, Ok(lookup)) => Ok(resolved_of(lookup)),
        (None, Err(e)) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(gone(path)),
        (None, Err(e)) => Err(unresolved(path, e)),
    }
}

/// Why a walk did not follow a link.
enum Refused {
    /// A user's link in a sticky folder: root's folder is gone.
    Gone,
    Users(Unresolved),
}

/// Why the link `found` on the way of `path` is not followed, if it is not: its holder is not
/// root's alone ([`trusted_holder`]).
fn link_refused(path: &Path, found: &LinkFound) -> Option<Refused> {
    if trusted_holder(found.holder_meta) {
        return None;
    }
    if found.holder_meta.mode() & libc::S_ISVTX != 0 && found.link.meta.uid() != 0 {
        return Some(Refused::Gone);
    }
    Some(Refused::Users(Unresolved::UsersLink {
        path: path.to_path_buf(),
        link: found.link.path.clone(),
        holder: found.holder.to_path_buf(),
    }))
}

/// Whether a folder (its descriptor's `fstat`) is root's and writable by no one else: only
/// root could have placed a link in it.
fn trusted_holder(holder: &std::fs::Metadata) -> bool {
    holder.uid() == 0 && holder.mode() & 0o022 == 0
}

/// The walk's error for `path` as [`Unresolved`]: a user's mount where the walk stopped
/// before it asked that mount anything, a link loop, or the error itself.
fn unresolved(path: &Path, e: io::Error) -> Unresolved {
    if let Some(mount) = e.get_ref().and_then(|e| e.downcast_ref::<UsersMount>()) {
        return Unresolved::UsersMount {
            path: path.to_path_buf(),
            mount: mount.path.clone(),
            why: mount.why.clone(),
        };
    }
    if e.raw_os_error() == Some(libc::ELOOP) {
        return Unresolved::TooManyLinks(path.to_path_buf());
    }
    Unresolved::Io {
        at: path.to_path_buf(),
        source: e,
    }
}

/// What a walk ended in: its end's path, and the missing part after it (resolved lexically:
/// nothing is there to follow).
fn resolved_of(lookup: Lookup) -> Resolved {
    let end = lookup.end.step.path;
    match lookup.missing {
        None => Resolved {
            path: end,
            exists: true,
        },
        Some(missing) => Resolved {
            path: lexically(end, &missing),
            exists: false,
        },
    }
}

/// `path` said missing as recorded (resolved lexically).
fn gone(path: &Path) -> Resolved {
    Resolved {
        path: lexically(PathBuf::from("/"), path),
        exists: false,
    }
}

/// `rest` resolved lexically from `base`.
fn lexically(mut base: PathBuf, rest: &Path) -> PathBuf {
    for component in rest.components() {
        match component {
            Component::ParentDir => {
                base.pop();
            }
            Component::Normal(name) => base.push(name),
            Component::RootDir => base = PathBuf::from("/"),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
    base
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
        std::fs::create_dir(dir.join("var")).unwrap();
        // Relative, with a `..`: as `ln -s ../x` writes it.
        symlink("../other-disk/./data", dir.join("var/data")).unwrap();
        assert_eq!(
            resolved(&dir.join("var/data/feather")),
            dir.join("other-disk/data/feather")
        );
        assert_eq!(
            resolve(&dir.join("var/data/gone/../run")).unwrap(),
            Resolved {
                path: dir.join("other-disk/data/run"),
                exists: false
            }
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
        // A user's link there: root's folder is gone (a user may place a name there only
        // where none is), so the path is missing, not refused (no warning for ever).
        std::os::unix::fs::lchown(tmp.join("x"), Some(65534), Some(65534)).unwrap();
        assert_eq!(
            resolve(&tmp.join("x/run")).unwrap(),
            Resolved {
                path: tmp.join("x/run"),
                exists: false
            }
        );
        // A plain folder there is the root itself: followed as named.
        std::fs::create_dir(tmp.join("y")).unwrap();
        assert_eq!(resolved(&tmp.join("y")), tmp.join("y"));
    }

    /// A mount a user decides, where the walk stopped before asking it anything, refuses the
    /// path as such, naming the mount and why.
    #[test]
    fn a_users_mount_on_the_way_refuses_the_path() {
        let stopped = io::Error::other(UsersMount {
            path: "/home/u/vms".into(),
            why: "is a FUSE mount made by uid 1000".into(),
        });
        let refused = unresolved(Path::new("/home/u/vms/run"), stopped);
        assert!(
            matches!(&refused, Unresolved::UsersMount { mount, why, .. }
                if mount == Path::new("/home/u/vms") && why.contains("uid 1000")),
            "{refused:?}"
        );
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

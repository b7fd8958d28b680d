//! Where a bind's source is found (`mounts[].source`): a path of the host, absolute or
//! relative to the bundle — but one inside the rootfs, whose folders and links are the
//! image's, is a path of the container: resolved inside the root, so that a link there (to
//! `/etc`) names the container's `/etc`, never the host's. Used by the init for binds and by
//! `create` for id-mapped ones ([`crate::idmap`]).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use oci_spec::runtime::Spec;

pub struct Sources {
    bundle: PathBuf,
    /// The rootfs as the caller found it, and as the config names it.
    rootfs: [PathBuf; 2],
}

impl Sources {
    /// The sources of `spec`'s bundle `bundle`, whose rootfs the caller found at `rootfs`.
    pub fn new(spec: &Spec, bundle: &Path, rootfs: &Path) -> Sources {
        let named = spec
            .root()
            .as_ref()
            .map(|r| bundle.join(r.path()))
            .unwrap_or_else(|| rootfs.to_owned());
        Sources {
            bundle: lexically_normal(bundle),
            rootfs: [lexically_normal(rootfs), lexically_normal(&named)],
        }
    }

    /// `source` (as the config gives it) opened `O_PATH`, with its host path; `root` is the
    /// rootfs's descriptor (none: the caller could not open it, and a source inside it is
    /// refused).
    pub fn open(&self, root: Option<&OwnedFd>, source: &Path) -> Result<(PathBuf, OwnedFd)> {
        // Taken lexically: `rootfs/link/../x`, where the image made `link` a link to a host
        // folder, is the container's `/x`, never the host's folder above that link's target.
        let source = lexically_normal(&self.bundle.join(source));
        let inside = self
            .rootfs
            .iter()
            .find_map(|rootfs| source.strip_prefix(rootfs).ok());
        let opened = match (inside, root) {
            (Some(rest), Some(root)) => resolve(root, rest, OFlag::O_PATH),
            (Some(_), None) => Err(nix::errno::Errno::ENOENT),
            (None, _) => nix::fcntl::open(&source, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()),
        };
        let opened = opened.with_context(|| format!("source {}", source.display()))?;
        Ok((source, opened))
    }
}

/// `path` with its `.` and `..` taken by name, as engines clean paths (Go's `filepath.Clean`):
/// which root a source is in is decided before any link is followed. A `..` at `/` stays there.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    normal.push(component);
                }
            }
            other => normal.push(other),
        }
    }
    normal
}

/// Opens `path` (absolute, as the container sees it) inside `root`, never leaving it and
/// following no magic link.
pub fn resolve(root: &OwnedFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root.as_fd(), relative, how)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_taken_by_name_and_never_climb_above_the_root() {
        let normal = |p: &str| lexically_normal(Path::new(p));
        assert_eq!(normal("/b/rootfs/link/../x"), Path::new("/b/rootfs/x"));
        assert_eq!(normal("/b/rootfs/./a//b/"), Path::new("/b/rootfs/a/b"));
        assert_eq!(normal("/b/rootfs/../volume"), Path::new("/b/volume"));
        assert_eq!(normal("/../../etc"), Path::new("/etc"));
        assert_eq!(normal("rel/../../up"), Path::new("../up"));
    }
}

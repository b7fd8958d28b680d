//! What a container wrote, for feather's own tools (`feather diff`): its writable layer and
//! what lies beneath it, each pinned as a descriptor once (what is beneath is then read through
//! `feather_sys::beneath`, never by a path the container could change).
//!
//! - `org.feather.base=host`: the upper layer of the overlay of the host's `/`
//!   ([`crate::mounts::host_layer`]), over the host's root filesystem as the overlay sees it
//!   (a detached mount of it alone, without the filesystems mounted on it).
//! - an image's rootfs: when the engine made it an overlay mount (containerd's, Docker's and
//!   podman's overlay snapshotters), that overlay's upper layer over its lower one, as the
//!   host's mount table says (the engine's mount options; a container cannot mount in the
//!   host's namespace); several lower layers are read merged, through a read-only overlay of
//!   them alone mounted detached. A rootfs that is a plain folder records nothing of what was
//!   written.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::listing::ListError;
use crate::registry::RootRegistry;

/// A container's writable layer and what lies beneath it, pinned.
pub struct ContainerLayer {
    pub upper: File,
    pub upper_path: PathBuf,
    pub lower: File,
    /// The folder beneath, as the host names it (`/` for a container over the host; `a:b:…`
    /// for an overlay of several lower layers, uppermost first).
    pub lower_path: PathBuf,
    /// The destinations of the config's mounts: mount points the runtime made when missing,
    /// never the container's writing (what it writes there goes to the mounted filesystem).
    pub mount_points: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    List(#[from] ListError),
    #[error("OCI container {id}: its rootfs {} is not an overlay mount, so nothing records what the container wrote (feather diff reads an overlay's upper layer: a container over the host, org.feather.base=host, or an engine's overlay snapshot)", rootfs.display())]
    NotLayered { id: String, rootfs: PathBuf },
    #[error("OCI container {id}: its rootfs {} is an overlay without a writable layer ({options})", rootfs.display())]
    ReadOnly {
        id: String,
        rootfs: PathBuf,
        options: String,
    },
    #[error("OCI container {id}: its rootfs {} is an overlay whose lower layers feather diff cannot read ({options})", rootfs.display())]
    UnreadableLowers {
        id: String,
        rootfs: PathBuf,
        options: String,
    },
    #[error("OCI container {id}: its rootfs {} is an overlay whose lower layer {} is named relative to the engine's working folder, which feather cannot know", rootfs.display(), lower.display())]
    RelativeLower {
        id: String,
        rootfs: PathBuf,
        lower: PathBuf,
    },
    #[error("OCI container {id}: {what} {}", path.display())]
    Io {
        id: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The layer of container `id`, found in `runtime_root` or, without one, in the one registered
/// root that has it. A container has it from `create` until `delete` (stopped ones too).
pub fn layer(
    registry: &RootRegistry,
    id: &str,
    runtime_root: Option<&Path>,
) -> Result<ContainerLayer, LayerError> {
    let (_, container) = crate::listing::find(registry, id, runtime_root)?;
    let mount_points: Vec<PathBuf> = container
        .config()
        .ok()
        .and_then(|config| config.mounts().clone())
        .into_iter()
        .flatten()
        .map(|mount| mount.destination().clone())
        .collect();
    let io_error = |what: &'static str, path: &Path| {
        let (id, path) = (id.to_owned(), path.to_owned());
        move |source| LayerError::Io {
            id,
            what,
            path,
            source,
        }
    };
    let host_base = container
        .record
        .annotations
        .get("org.feather.base")
        .is_some_and(|base| base == "host");
    if host_base {
        let upper_path = container.dir.join(crate::mounts::HOST_LAYER).join("upper");
        let upper = feather_sys::beneath::open_root(&upper_path)
            .map_err(io_error("its layer", &upper_path))?;
        let root = Path::new("/");
        let lower = host_root_alone().map_err(io_error("the host's root filesystem", root))?;
        return Ok(ContainerLayer {
            upper,
            upper_path,
            lower,
            lower_path: root.to_owned(),
            mount_points,
        });
    }
    let rootfs = container.record.rootfs.clone();
    let options = overlay_options(&rootfs)
        .map_err(io_error("reading the mount table for", &rootfs))?
        .ok_or_else(|| LayerError::NotLayered {
            id: id.to_owned(),
            rootfs: rootfs.clone(),
        })?;
    let (upper_path, lower_path) = layers_of(&options).map_err(|problem| match problem {
        Problem::NoUpper => LayerError::ReadOnly {
            id: id.to_owned(),
            rootfs: rootfs.clone(),
            options: options.clone(),
        },
        Problem::Lowers => LayerError::UnreadableLowers {
            id: id.to_owned(),
            rootfs: rootfs.clone(),
            options: options.clone(),
        },
        Problem::Relative(lower) => LayerError::RelativeLower {
            id: id.to_owned(),
            rootfs: rootfs.clone(),
            lower,
        },
    })?;
    let upper = feather_sys::beneath::open_root(&upper_path)
        .map_err(io_error("its overlay's upper layer", &upper_path))?;
    let lower =
        lower_view(&lower_path).map_err(io_error("its overlay's lower layers", &lower_path))?;
    Ok(ContainerLayer {
        upper,
        upper_path,
        lower,
        lower_path,
        mount_points,
    })
}

/// The host's root filesystem alone (a detached copy of the `/` mount without the mounts on
/// it): what an overlay with `/` as its lower layer sees beneath.
fn host_root_alone() -> io::Result<File> {
    let root = feather_sys::beneath::open_root(Path::new("/"))?;
    let alone = feather_sys::mount::clone_tree(&root).map_err(io::Error::other)?;
    // open_tree gives an O_PATH descriptor; listing a folder takes a real one.
    feather_sys::beneath::open_dir(&alone, Path::new(""))?
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

/// What lies beneath an overlay's upper layer: its one lower folder, or the merged view of
/// several (`a:b:…`, uppermost first) as a read-only overlay of them alone, mounted detached.
fn lower_view(lowers: &Path) -> io::Result<File> {
    let text = lowers.as_os_str().to_string_lossy();
    let layers: Vec<&Path> = text.split(':').map(Path::new).collect();
    if let [one] = layers.as_slice() {
        return feather_sys::beneath::open_root(one);
    }
    let merged = feather_sys::mount::detached_lower_overlay(&layers).map_err(io::Error::other)?;
    feather_sys::beneath::open_dir(&merged, Path::new(""))?
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

/// The super options of the overlay mounted last at `rootfs` in this mount namespace, if the
/// last mount there is an overlay.
fn overlay_options(rootfs: &Path) -> io::Result<Option<String>> {
    let last = feather_sys::mountinfo::mounts()?
        .into_iter()
        .rev()
        .find(|entry| entry.mount_point == rootfs);
    Ok(last
        .filter(|entry| entry.fs_type == "overlay")
        .map(|entry| entry.super_options))
}

enum Problem {
    NoUpper,
    /// None, or data-only ones (`::`), which this reading does not know.
    Lowers,
    Relative(PathBuf),
}

/// The upper folder and the lower ones (`a:b:…`, uppermost first, as one path) of an
/// overlay's super options (`lowerdir=L,upperdir=U,workdir=W,…`).
fn layers_of(options: &str) -> Result<(PathBuf, PathBuf), Problem> {
    let value = |key: &str| {
        options
            .split(',')
            .find_map(|option| option.strip_prefix(key))
            .map(str::to_owned)
    };
    let upper = value("upperdir=").ok_or(Problem::NoUpper)?;
    let lowers = value("lowerdir=").unwrap_or_default();
    if lowers.is_empty() || lowers.contains("::") {
        return Err(Problem::Lowers);
    }
    if let Some(relative) = lowers.split(':').find(|l| !Path::new(l).is_absolute()) {
        return Err(Problem::Relative(relative.into()));
    }
    Ok((PathBuf::from(upper), PathBuf::from(lowers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lower_layer_is_read_from_the_options() {
        let (upper, lower) =
            layers_of("rw,lowerdir=/s/1/fs,upperdir=/s/2/fs,workdir=/s/2/work,index=off")
                .ok()
                .unwrap();
        assert_eq!(upper, Path::new("/s/2/fs"));
        assert_eq!(lower, Path::new("/s/1/fs"));
    }

    #[test]
    fn several_lower_layers_are_kept_in_order_and_what_cannot_be_read_is_told_apart() {
        let (_, lowers) = layers_of("rw,lowerdir=/a:/b,upperdir=/u,workdir=/w")
            .ok()
            .unwrap();
        assert_eq!(lowers, Path::new("/a:/b"));
        assert!(matches!(
            layers_of("rw,lowerdir=l/ABC:l/DEF,upperdir=/u,workdir=/w"),
            Err(Problem::Relative(_))
        ));
        assert!(matches!(
            layers_of("rw,lowerdir=/a::/data,upperdir=/u,workdir=/w"),
            Err(Problem::Lowers)
        ));
        assert!(matches!(
            layers_of("ro,lowerdir=/a:/b"),
            Err(Problem::NoUpper)
        ));
    }
}

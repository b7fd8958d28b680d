//! Id-mapped bind mounts: the mount options `idmap` (the top mount of the bind) and `ridmap`
//! (every mount of an `rbind`'s tree), with the mount's own `uidMappings` and `gidMappings`, or
//! else the container's user namespace's (`linux.uidMappings`, `linux.gidMappings`).
//!
//! A file owned by id N on disk appears owned by the host id the mapping gives container id N:
//! with the container's own mappings, the host's root-owned files appear owned by the
//! container's root. `create` makes each such mount before the init is cloned — marking a
//! mount id-mapped takes privilege over the filesystem's user namespace (the host's), which an
//! init in a new user namespace lacks — as a detached tree (`open_tree`, `mount_setattr` with
//! `MOUNT_ATTR_IDMAP` and a user namespace of those mappings), and the init attaches it at the
//! mount's destination in the container's root.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxIdMapping, Spec};
use serde::Deserialize;

/// The detached id-mapped trees of a config's mounts, by the mount's index in `mounts`.
#[derive(Default)]
pub struct Trees(Vec<(usize, OwnedFd)>);

impl Trees {
    pub fn of(&self, index: usize) -> Option<&OwnedFd> {
        self.0
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, tree)| tree)
    }

    pub fn raw_fds(&self) -> Vec<i32> {
        use std::os::fd::AsRawFd;
        self.0.iter().map(|(_, tree)| tree.as_raw_fd()).collect()
    }
}

/// Whether a mount's options ask for an id-mapped mount: `Some(recursive)`.
pub fn requested(options: &[String]) -> Option<bool> {
    if options.iter().any(|o| o == "ridmap") {
        Some(true)
    } else if options.iter().any(|o| o == "idmap") {
        Some(false)
    } else {
        None
    }
}

/// The mappings of one mount as config.json gives them (fields the `oci-spec` crate does not
/// read yet).
#[derive(Default, Deserialize)]
struct MountMappings {
    #[serde(default, rename = "uidMappings")]
    uid: Vec<LinuxIdMapping>,
    #[serde(default, rename = "gidMappings")]
    gid: Vec<LinuxIdMapping>,
}

#[derive(Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    mounts: Vec<MountMappings>,
}

/// Makes the id-mapped trees the config's mounts ask for. `bundle` holds the config.json as
/// the engine wrote it. The caller must be single-threaded (a helper process is forked).
pub fn prepare(spec: &Spec, bundle: &Path) -> Result<Trees> {
    let mut trees = Trees::default();
    let mounts = spec.mounts().clone().unwrap_or_default();
    if !mounts
        .iter()
        .any(|m| requested(m.options().as_deref().unwrap_or_default()).is_some())
    {
        return Ok(trees);
    }
    let text = std::fs::read_to_string(bundle.join("config.json"))
        .with_context(|| format!("{}/config.json", bundle.display()))?;
    let raw: RawConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}/config.json: mounts", bundle.display()))?;
    // A source inside the rootfs is the image's path: resolved inside it (crate::sources).
    let rootfs = bundle.join(
        spec.root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_default(),
    );
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let root = nix::fcntl::open(&rootfs, flags, Mode::empty()).ok();
    let sources = crate::sources::Sources::new(spec, bundle, &rootfs);
    let linux = spec.linux().as_ref();
    let none = MountMappings::default();
    for (index, mount) in mounts.iter().enumerate() {
        let options = mount.options().clone().unwrap_or_default();
        let Some(recursive) = requested(&options) else {
            continue;
        };
        let field = format!("mounts[{}]", mount.destination().display());
        let own = raw.mounts.get(index).unwrap_or(&none);
        let (uid, gid) = if own.uid.is_empty() && own.gid.is_empty() {
            (
                linux
                    .and_then(|l| l.uid_mappings().clone())
                    .unwrap_or_default(),
                linux
                    .and_then(|l| l.gid_mappings().clone())
                    .unwrap_or_default(),
            )
        } else {
            (own.uid.clone(), own.gid.clone())
        };
        if uid.is_empty() || gid.is_empty() {
            bail!("{field}.options idmap: give the mount uidMappings and gidMappings, or the container a user namespace with linux.uidMappings and linux.gidMappings");
        }
        let source = mount.source().clone().unwrap_or_default();
        let (source, opened) = sources.open(root.as_ref(), &source)?;
        let tree = id_mapped_tree(
            &opened,
            recursive,
            options.iter().any(|o| o == "rbind"),
            &uid,
            &gid,
        )
        .with_context(|| format!("{field}.options idmap: {}", source.display()))?;
        trees.0.push((index, tree));
    }
    Ok(trees)
}

/// A detached copy of the mount at `source` (its tree with `rbind`), id-mapped (every mount of
/// it with `ridmap`).
fn id_mapped_tree(
    at: &OwnedFd,
    ridmap: bool,
    rbind: bool,
    uid: &[LinuxIdMapping],
    gid: &[LinuxIdMapping],
) -> Result<OwnedFd> {
    let tree = if rbind || ridmap {
        feather_sys::mount::clone_tree_recursive(at)
    } else {
        feather_sys::mount::clone_tree(at)
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let userns = user_namespace(uid, gid)?;
    feather_sys::mount::idmap_tree(&tree, &userns, ridmap)
        .map_err(|e| anyhow::anyhow!("{e} (the filesystem must support id-mapped mounts)"))?;
    Ok(tree)
}

/// A user namespace with these maps, held by a descriptor: a child unshares one and waits
/// while its maps are written from here, then ends.
fn user_namespace(uid: &[LinuxIdMapping], gid: &[LinuxIdMapping]) -> Result<OwnedFd> {
    // Close-on-exec: a program another part of the runtime starts meanwhile gets neither.
    let (ready_read, ready_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let (done_read, done_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let Some(child) = feather_sys::process::fork().map_err(|e| anyhow::anyhow!("{e}"))? else {
        drop((ready_read, done_write));
        let made = nix::sched::unshare(CloneFlags::CLONE_NEWUSER).is_ok();
        let _ = nix::unistd::write(&ready_write, &[u8::from(made)]);
        let mut byte = [0u8; 1];
        let _ = nix::unistd::read(done_read.as_fd(), &mut byte);
        std::process::exit(0);
    };
    drop((ready_write, done_read));
    let made = {
        let mut byte = [0u8; 1];
        matches!(nix::unistd::read(ready_read.as_fd(), &mut byte), Ok(1)) && byte[0] == 1
    };
    let userns = if made {
        write_maps_of(child.as_raw(), uid, gid)
    } else {
        Err(anyhow::anyhow!("unshare(CLONE_NEWUSER) failed"))
    };
    drop(done_write);
    let _ = nix::sys::wait::waitpid(child, None);
    userns
}

/// `pid` is this process's child, not yet waited for: its pid names no other process.
fn write_maps_of(pid: i32, uid: &[LinuxIdMapping], gid: &[LinuxIdMapping]) -> Result<OwnedFd> {
    let proc = feather_sys::procfs::ProcFs::private().map_err(|e| anyhow::anyhow!("{e}"))?;
    let folder = Path::new(&pid.to_string()).to_owned();
    for (file, maps) in [("uid_map", uid), ("gid_map", gid)] {
        let text: String = maps
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        proc.write(&folder.join(file), text.as_bytes())
            .map_err(|e| anyhow::anyhow!("write the mappings: {e}"))?;
    }
    proc.open_link(&folder.join("ns"), "user", OFlag::O_RDONLY)
        .map_err(|e| anyhow::anyhow!("open the mappings' user namespace: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridmap_is_recursive_and_idmap_is_not() {
        let options = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(requested(&options(&["rbind", "ridmap"])), Some(true));
        assert_eq!(requested(&options(&["bind", "idmap", "ro"])), Some(false));
        assert_eq!(requested(&options(&["bind"])), None);
    }

    #[test]
    fn a_mounts_own_mappings_are_read_from_the_raw_config() {
        let raw: RawConfig = serde_json::from_str(
            r#"{"mounts": [{"destination": "/a"}, {"destination": "/b", "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}], "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}]}"#,
        )
        .unwrap();
        assert!(raw.mounts[0].uid.is_empty());
        assert_eq!(raw.mounts[1].uid[0].host_id(), 1000);
    }
}

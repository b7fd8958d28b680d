//! `linux.namespaces[user]` with `linux.uidMappings`/`gidMappings`: the init is cloned into a
//! new user namespace together with the others (which it then owns); `create` writes the
//! init's maps from the host before letting it go on, and the init becomes the namespace's
//! root (ids 0, which the maps must cover) before it builds the root, so that what it makes
//! belongs to the container's root. The rootfs's ownership is the engine's (containerd's
//! `--uidmap` remaps the snapshot, podman chowns it), as with runc.

use std::path::Path;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Linux, LinuxIdMapping, LinuxNamespaceType, Spec};

/// Whether `spec` asks for a new user namespace.
pub fn is_new(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
}

/// Refuses mappings the init could not run under, naming the field.
pub fn check(linux: &Linux) -> Result<()> {
    for (field, maps) in [
        ("linux.uidMappings", linux.uid_mappings()),
        ("linux.gidMappings", linux.gid_mappings()),
    ] {
        let maps = maps.as_deref().unwrap_or_default();
        if maps.is_empty() {
            bail!(
                "{field}: a new user namespace needs mappings (feather-oci maps no ids of its own)"
            );
        }
        if !maps.iter().any(|m| m.container_id() == 0 && m.size() > 0) {
            bail!("{field}: the container's id 0 must be mapped (the container's init runs as the namespace's root)");
        }
    }
    Ok(())
}

/// From the host, before the init goes on: the init's uid and gid maps. `pid` is create's
/// own child, not yet waited for: even if it died, its pid stays its own (a zombie) and names
/// no other process. Written through a private procfs ([`feather_sys::procfs`]).
pub fn write_maps(pid: i32, spec: &Spec) -> Result<()> {
    if !is_new(spec) {
        return Ok(());
    }
    let linux = spec.linux().as_ref().context("linux")?;
    let proc = feather_sys::procfs::ProcFs::private()
        .map_err(|e| anyhow::anyhow!("linux.uidMappings: {e}"))?;
    for (field, file, maps) in [
        ("linux.uidMappings", "uid_map", linux.uid_mappings()),
        ("linux.gidMappings", "gid_map", linux.gid_mappings()),
    ] {
        let text = map_text(maps.as_deref().unwrap_or_default());
        proc.write(&Path::new(&pid.to_string()).join(file), text.as_bytes())
            .map_err(|e| anyhow::anyhow!("{field}: {e}"))?;
    }
    Ok(())
}

/// `exec.fifo` belongs to the namespace's root, who opens it to wait for `start` (as runc).
pub fn give_fifo(fifo: &Path, spec: &Spec) -> Result<()> {
    if !is_new(spec) {
        return Ok(());
    }
    let linux = spec.linux().as_ref().context("linux")?;
    let host_id = |maps: &Option<Vec<LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .find(|m| m.container_id() == 0)
            .map(|m| m.host_id())
    };
    nix::unistd::chown(
        fifo,
        host_id(linux.uid_mappings()).map(nix::unistd::Uid::from_raw),
        host_id(linux.gid_mappings()).map(nix::unistd::Gid::from_raw),
    )
    .context("linux.uidMappings: give exec.fifo to the container's root")
}

/// The kernel's format: one "inside outside count" line a range.
fn map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// In the init, once its maps are written: it becomes the namespace's root, keeping the full
/// capability set the new namespace gave it.
pub fn become_root() -> Result<()> {
    nix::unistd::setgroups(&[]).context("linux.namespaces[user]: setgroups")?;
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .context("linux.gidMappings: become gid 0 of the user namespace")?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .context("linux.uidMappings: become uid 0 of the user namespace")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_written_one_range_a_line() {
        let maps: Vec<LinuxIdMapping> = serde_json::from_str(
            r#"[{"containerID": 0, "hostID": 100000, "size": 65536}, {"containerID": 65536, "hostID": 1000, "size": 1}]"#,
        )
        .unwrap();
        assert_eq!(map_text(&maps), "0 100000 65536\n65536 1000 1\n");
    }
}

//! The mount tree a restored container came back with, checked while CRIU leaves it stopped
//! ([`crate::restore`]), beside its processes' credentials ([`crate::restored`]). CRIU mounts
//! proc, sysfs and cgroup2 anew with the flags the images hold, and only the binds they list:
//! a checkpoint this host did not take can leave out `/proc/sys`'s read-only bind, a mask or
//! `/sys`'s read-only flag — without a user namespace (Docker's default) the container's root
//! is the host's, and a writable `kernel.core_pattern` runs its program as the host's root.
//! Every mount namespace of the tree must have what `create` makes for this config, taken from
//! the same code ([`crate::mounts::read_only_paths`], [`crate::mounts::masked_paths`]):
//! - each of those read-only paths read-only with everything below it, below every proc or
//!   sysfs mount of the tree; each masked path masked (`/dev/null` or an empty read-only
//!   tmpfs);
//! - each of the config's `ro` mounts read-only (a `cgroup` one with its folders), and the
//!   root under `root.readonly`; a mount a later one covers is not looked at;
//! - every sysfs read-only unless the config mounts a writable one;
//! - every `cgroup` or `cgroup2` mount read-only, or showing the container's own group where
//!   the config mounts cgroup writable.
//!
//! The judgement is [`feather_confine::restored_mounts`]'s, which `feather restore` shares.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use feather_confine::restored_mounts::{cgroup_root, Expected, ReadOnly};
use feather_confine::restored_sources::{Before, CriuMountTable, HostNamespaces, Tables};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::store::Container;

/// What the restored tree of `container` (of `spec`) must have, but for what was mounted
/// before CRIU ran ([`before`], read once it has).
pub fn expected(spec: &Spec, container: &Container) -> Result<Expected> {
    let groups = &container.groups();
    let knob = |path| ReadOnly {
        path,
        recursive: true,
    };
    let KernelPaths { read_only, masked } = KernelPaths::of(spec)?;
    let mut read_only: Vec<ReadOnly> = read_only.into_iter().map(knob).collect();
    read_only.extend(read_only_mounts(spec));
    let sysfs_writable = spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| m.typ().as_deref() == Some("sysfs") && !crate::mounts::is_read_only(m));
    // A writable group of its own only where the config mounts cgroup writable: else its
    // root could raise its own limits (review mntcheck26 MC-2).
    let cgroup_roots = match mounts_cgroup_writable(spec) {
        true => crate::cgroups::hierarchies()
            .into_iter()
            .filter_map(|(_, hierarchy)| cgroup_root(&groups.dir_in(&hierarchy)))
            .collect(),
        false => Vec::new(),
    };
    Ok(Expected {
        read_only,
        masked,
        sysfs_writable,
        cgroup_roots,
        before: None,
        // Set once the restore knows what it hands CRIU (`restore::Accounted`).
        handed: Vec::new(),
    })
}

/// The kernel's paths `create` makes read-only (each with every mount beneath it) and masks
/// for a config: what a dump taken under another kernel may lack ([`crate::restore`] adds it).
pub struct KernelPaths {
    pub read_only: Vec<PathBuf>,
    pub masked: Vec<PathBuf>,
}

impl KernelPaths {
    pub fn of(spec: &Spec) -> Result<KernelPaths> {
        let linux = spec.linux().as_ref().context("linux")?;
        let feather = crate::annotations::Feather::parse(spec)?;
        let confinement = crate::confine::Confinement::of(feather.confine, spec);
        let paths = |listed: Vec<(String, String)>| {
            listed
                .into_iter()
                .map(|(path, _)| PathBuf::from(path))
                .collect()
        };
        Ok(KernelPaths {
            read_only: paths(crate::mounts::read_only_paths(linux, &confinement)),
            masked: paths(crate::mounts::masked_paths(linux, &confinement)),
        })
    }
}

/// What was mounted where CRIU ran (`where_criu_ran`, the table its child wrote just before
/// its exec, its filesystems held mounted since by `restore`), beside this namespace's own,
/// read now, and the device of every mount it showed while CRIU ran (`while_criu_ran`); and
/// what the restore exposes of it, from what `restore` hands CRIU: the rootfs
/// (`--root`), the config's bind sources (its externals), the host nodes it binds
/// ([`crate::mounts::host_nodes`]).
pub fn before(
    spec: &Spec,
    container: &Container,
    where_criu_ran: &CriuMountTable,
    while_criu_ran: feather_confine::restored_sources::SeenMounts,
) -> Result<Before> {
    let where_criu_ran = where_criu_ran.read().map_err(anyhow::Error::msg)?;
    let tables = Tables::read_now(where_criu_ran)
        .context("read /proc/self/mountinfo")?
        .seen_while_criu_ran(while_criu_ran);
    let externals =
        crate::checkpoint::external_mounts(spec, &container.record.bundle, &container.groups());
    let binds = externals
        .into_iter()
        .filter(|e| !e.cgroup)
        .map(|e| e.source);
    let exposed: Vec<PathBuf> = std::iter::once(container.record.rootfs.clone())
        .chain(binds)
        .chain(crate::mounts::host_nodes(spec))
        .collect();
    Ok(Before::of(&tables, &exposed, asks_for_sharing(spec)).keeping(host_namespaces(spec)))
}

/// The host's namespaces the container keeps: those of the network and IPC kinds the config
/// gives it none of (a namespace joined by path is another's, not the host's).
fn host_namespaces(spec: &Spec) -> HostNamespaces {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone());
    let own = |kind: LinuxNamespaceType| namespaces.iter().flatten().any(|n| n.typ() == kind);
    HostNamespaces {
        network: !own(LinuxNamespaceType::Network),
        ipc: !own(LinuxNamespaceType::Ipc),
    }
}

/// Whether the config makes a mount a peer of the host's: shared propagation on its root or
/// on one of its mounts.
fn asks_for_sharing(spec: &Spec) -> bool {
    let shared = |option: &str| option == "shared" || option == "rshared";
    let root = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone())
        .is_some_and(|p| shared(&p));
    let mounts = spec.mounts().iter().flatten();
    root || mounts
        .flat_map(|m| m.options().iter().flatten())
        .any(|o| shared(o))
}

/// Whether the config mounts a `cgroup` or `cgroup2` filesystem writable.
fn mounts_cgroup_writable(spec: &Spec) -> bool {
    spec.mounts().iter().flatten().any(|m| {
        matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")) && !crate::mounts::is_read_only(m)
    })
}

/// The config's `ro` mounts that no later one covers, as `create` leaves them: a `cgroup`
/// mount with each group bound in it, any other alone; the root under `root.readonly`.
fn read_only_mounts(spec: &Spec) -> Vec<ReadOnly> {
    let mounts: Vec<_> = spec.mounts().iter().flatten().collect();
    let covered = |index: usize, at: &Path| {
        let later = &mounts[index + 1..];
        later.iter().any(|m| at.starts_with(m.destination()))
    };
    let mut read_only: Vec<ReadOnly> = mounts
        .iter()
        .enumerate()
        .filter(|(index, m)| crate::mounts::is_read_only(m) && !covered(*index, m.destination()))
        .map(|(_, m)| ReadOnly {
            path: m.destination().clone(),
            recursive: matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")),
        })
        .collect();
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        read_only.push(ReadOnly {
            path: PathBuf::from("/"),
            recursive: false,
        });
    }
    read_only
}

/// Checks the tree under `init` (held still in `hold`); the refusal names what is wrong.
pub fn check_tree(
    init: i32,
    hold: &feather_confine::held::Hold,
    expected: &Expected,
) -> Result<()> {
    feather_confine::restored_mounts::check_tree(init, hold, expected).map_err(|why| {
        anyhow::anyhow!(
            "the restored container's mounts are not what its config makes: {why}; refusing \
             the restore"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mounts: serde_json::Value, root_readonly: bool) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": root_readonly},
            "mounts": mounts,
            "linux": {}
        }))
        .expect("a spec")
    }

    #[test]
    fn the_configs_ro_mounts_are_read_only_unless_a_later_one_covers_them() {
        let mounts = serde_json::json!([
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
            {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]},
            {"destination": "/data", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/etc/x", "type": "bind", "source": "/srv/x", "options": ["ro", "rw"]}
        ]);
        let paths: Vec<(String, bool)> = read_only_mounts(&spec(mounts, true))
            .into_iter()
            .map(|r| (r.path.display().to_string(), r.recursive))
            .collect();
        let want = [("/sys", false), ("/sys/fs/cgroup", true), ("/", false)];
        assert_eq!(paths, want.map(|(p, r)| (p.to_string(), r)));
    }

    /// A writable cgroup mount of the container's own group passes only where the config
    /// mounts cgroup writable (review mntcheck26 MC-2: Docker's `ro` cgroup, a crafted rw one
    /// of its own group, and its root raises its own limits).
    #[test]
    fn a_writable_own_group_is_allowed_only_by_a_writable_cgroup_mount() {
        let cgroup = |options: serde_json::Value| {
            serde_json::json!([{"destination": "/sys/fs/cgroup", "type": "cgroup",
                "source": "cgroup", "options": options}])
        };
        assert!(!mounts_cgroup_writable(&spec(
            cgroup(serde_json::json!(["ro"])),
            false
        )));
        assert!(mounts_cgroup_writable(&spec(
            cgroup(serde_json::json!(["rw"])),
            false
        )));
        assert!(!mounts_cgroup_writable(&spec(serde_json::json!([]), false)));
    }
}

//! The keeper's side of checkpoint and restore: it dumps its VM's process tree with CRIU
//! ([`dump`]), restores one in a keeper started in restore mode ([`restore_tree`]) and, for a VM
//! received by a migration, keeps it stopped until the sender lets it go ([`hold`],
//! [`await_release`]). The asker's side (`feather checkpoint`, `restore`, `migrate`, `serve`) is
//! in [`crate::checkpoint`] and [`crate::migration`]; the files both read, in [`crate::images`].
//!
//! ```text
//! feather checkpoint ──Checkpoint──▶ keeper ── criu swrk: DUMP of the tree at <init> ──▶
//!                                      │          images in <vm>/checkpoint/; processes end
//!                                      └─ records "checkpointed" once init is gone
//! feather restore ── spawns a keeper in restore mode:
//!   keeper: /etc files, published ports, bridge and firewall entries (--net private),
//!           cgroup with the VM's limits ─ fork ─▶ child: own mount namespace, the VM's root
//!      ▲                                           overlay mounted at <vm>/rootfs, joins the
//!      │    RESTORE (root, rst_sibling, veth) ───▶ cgroup, execs `criu swrk`
//!      └── the restored init is the keeper's own child (a sibling of criu), held by a pidfd
//!          like a booted one; ls, exec, ps, stop and rm work as before.
//! ```
//!
//! A VM received by a migration is restored stopped and waits for `feather serve` to let it
//! run ([`await_release`]): the two phases of a migration (see [`crate::migration`]).
//!
//! The VM's root overlay is mounted by the restoring side, because CRIU rebuilds the VM's mount
//! namespace on top of a root it is given (`--root`), and so are the mounts whose content is
//! known (the masks over kernel folders, the tmpfs at /sys/fs/cgroup and the `services/`
//! folders of the VM's group bound on it: see
//! [`crate::images::ExternalLayer`]); every other mount of the VM (its /proc, /dev, /run with
//! its content, devpts, mqueue) CRIU recreates from its images.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use feather_confine::held::Hold;
use feather_confine::restored_sources::CriuMountTable;
use feather_confine::sealed::SealedReport;
use feather_core::atomic::Durability;
use feather_core::error::IoContext;
use feather_core::{StateRoot, VmConfig, VmDir};
use feather_migrate::criu::{self, Criu, Dump, DumpNote, Restore};
use feather_sys::cgroup::Cgroup;
use feather_sys::mount::{self, LayerSync};
use feather_sys::mountinfo::MountEntry;
use feather_sys::process::{self, ChildProcess};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::decide::{self, WhileHeld};
use crate::error::{encode, failed, io, InVm, Result};
use crate::hiding;
use crate::images::{
    self, held_for, ExternalLayer, EXTERNAL_NETNS, HOLD, LAYERS, LAZY, NETNS_DUMPED,
};
use crate::layers;
use crate::lower_id::PinnedLower;
use crate::protocol::{self, Response};
use crate::rootfs;
use crate::service_groups;

/// The folder of the VM's run folder where a restore mounts the mask it hands to CRIU for
/// each of the VM's masks over kernel folders (in the restoring child's mount namespace only).
const MASK: &str = "mask";

/// The same for the tmpfs at the VM's `/sys/fs/cgroup`.
const CGROUP_TOP: &str = "cgroup-top";

/// The name a replaced checkpoint folder takes beside the VM's other files until it is removed.
const STALE_PREFIX: &str = "checkpoint.stale-";

/// Moves the VM's last checkpoint out of the way of a new one (a checkpoint taken now replaces
/// the last one; a failed one leaves none behind). Removing hundreds of megabytes of images
/// takes long on some filesystems (ext4 with `discard`: 20-170 ms for 64 MB here), so it is
/// never waited for before the answer: `beside_dump`, it starts now, in a thread `removal`
/// holds, while CRIU dumps (for a VM whose processes end with the dump: a plain checkpoint, and
/// a stop-and-copy migration's, whose downtime it then overlaps instead of following);
/// otherwise it is left to [`remove_stale`], after the answer, which also waits for the thread.
pub(crate) fn set_aside_last(
    vm: &VmDir,
    beside_dump: bool,
    removal: &StaleRemoval,
) -> feather_core::Result<()> {
    let images = vm.checkpoint_dir();
    if !images.exists() {
        return Ok(());
    }
    let stale = vm
        .path()
        .join(format!("{STALE_PREFIX}{}", std::process::id()));
    // A removal still running would race the one below on the same folder.
    removal.wait();
    let _ = fs::remove_dir_all(&stale);
    fs::rename(&images, &stale).at(&images)?;
    if beside_dump {
        removal.0.set(Some(std::thread::spawn(move || {
            let _ = fs::remove_dir_all(stale);
        })));
    }
    Ok(())
}

/// The removal of a replaced checkpoint that [`set_aside_last`] started beside a dump, owned by
/// the keeper that dumped until [`remove_stale`] waits for it (a keeper that ends without
/// waiting lets it go with its process: the folder is swept at its next checkpoint or stop).
#[derive(Default)]
pub(crate) struct StaleRemoval(std::cell::Cell<Option<std::thread::JoinHandle<()>>>);

impl StaleRemoval {
    /// Waits for the removal, if one was started and has not been waited for.
    fn wait(&self) {
        if let Some(started) = self.0.take() {
            let _ = started.join();
        }
    }
}

/// Refuses to checkpoint a VM with a mount point whose path is not UTF-8 (a host filesystem
/// under its base mounted at such a folder, and so layered), naming it, before anything is
/// dumped or the last checkpoint set aside: CRIU's requests and images carry mount points as
/// text, and the restore's check of the images reads them so.
fn refuse_mount_points_not_utf8(name: &feather_core::VmName, mounts: &[MountEntry]) -> Result<()> {
    let Some(mount) = mounts.iter().find(|m| m.mount_point.to_str().is_none()) else {
        return Ok(());
    };
    Err(failed(
        name,
        format!(
            "cannot be checkpointed: {} is a mount point in the VM whose path is not UTF-8, \
             which CRIU's requests and images cannot carry; nothing was dumped (mount that \
             filesystem at a folder named in UTF-8, then start the VM again)",
            feather_core::display::escape_path(&mount.mount_point)
        ),
    ))
}

/// Removes checkpoints set aside by [`set_aside_last`] (also those a crash left behind), once
/// the `removal` it started beside the dump has ended.
pub(crate) fn remove_stale(vm: &VmDir, removal: &StaleRemoval) {
    removal.wait();
    let Ok(entries) = fs::read_dir(vm.path()) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(STALE_PREFIX)
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Completes a network namespace made anew for a restore (its veth pair, address and firewall
/// entries: `feather_net::Attachment::wire_restored`), while CRIU starts.
pub(crate) type Wire<'a> = dyn Fn(&std::os::fd::OwnedFd) -> Result<()> + 'a;

/// What a dump does with the VM's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NetnsAtDump {
    /// Its content is known — loopback only (`--net none`), or what feather made for a private
    /// network and nothing else (`feather_net::as_made`) — so CRIU leaves it out and the
    /// restoring keeper makes it anew ([`EXTERNAL_NETNS`]).
    Known,
    /// CRIU dumps it (or, `--net host`, leaves it to the host); with why, for a private
    /// network whose namespace differs from what feather made ([`NETNS_DUMPED`]).
    ToCriu(Option<String>),
}

/// In the keeper: dumps the VM's process tree, rooted at its init, into its checkpoint folder
/// (the last checkpoint is set aside first). Every error names the VM: the keeper's answer
/// carries it to `feather checkpoint` as it is.
/// `lazy`: post-copy, the memory is kept back and served on this connection (CRIU's end of
/// the page server's socket pair) until the receiver has it all; `on_note` hears CRIU's notes
/// ([`DumpNote::Images`] once everything else is dumped, before that). `freezer`: the VM's freezer group, for CRIU to seize its tasks frozen (see
/// `moment::freezer_of`). `netns`: whether its network namespace is dumped. `cgroup`: the
/// VM's group, whose `services/` subtrees are saved with the checkpoint (see
/// [`crate::service_groups`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dump(
    vm: &VmDir,
    init: Pid,
    cgroup: Option<&Cgroup>,
    leave_running: bool,
    criu: &Path,
    lazy: Option<std::os::fd::BorrowedFd>,
    freezer: Option<&Path>,
    netns: &NetnsAtDump,
    on_note: &mut dyn FnMut(DumpNote) -> bool,
    removal: &StaleRemoval,
) -> Result<()> {
    let name = vm.name();
    let criu = Criu::checked(criu.to_path_buf(), String::new());
    let images = vm.checkpoint_dir();
    let mountinfo = format!("/proc/{init}/mountinfo");
    let text = feather_sys::mountinfo::read_table(Path::new(&mountinfo))
        .at(&mountinfo)
        .in_vm(name)?;
    let mounts = feather_sys::mountinfo::parse(text);
    refuse_mount_points_not_utf8(name, &mounts)?;
    let ends_vm = !leave_running && lazy.is_none();
    set_aside_last(vm, ends_vm, removal).in_vm(name)?;
    let config = vm.read_config().in_vm(name)?;
    let mut layers: Vec<ExternalLayer> =
        numbered(&mounts, "layer", |m| is_own_layer(vm, &config, m), |l| l).collect();
    layers.extend(numbered(
        &mounts,
        "etc",
        |m| feather_net::etc::generated(Path::new("/"), &m.mount_point).is_some(),
        |l| ExternalLayer {
            generated: true,
            ..l
        },
    ));
    layers.extend(numbered(&mounts, "mask", rootfs::is_folder_mask, |l| {
        ExternalLayer { mask: true, ..l }
    }));
    layers.extend(
        mounts
            .iter()
            .filter_map(|m| Some((m, rootfs::cgroup_top_folders(m, &mounts)?)))
            .map(|(m, folders)| ExternalLayer {
                key: "feather-cgroup-top".into(),
                mount_point: m.mount_point.clone(),
                cgroup_top: Some(folders),
                ..ExternalLayer::default()
            }),
    );
    layers.extend(numbered(
        &mounts,
        "cgroup",
        |m| cgroup_hierarchy_at(m).is_some(),
        |l| ExternalLayer {
            cgroup_services: true,
            ..l
        },
    ));
    // The host files a start binds (devices, file masks, init's program) get keys of their
    // own, which a restore maps to this host's files (see rootfs::host_file_key).
    let host_files = mounts.iter().filter_map(|m| {
        Some((
            m.mount_point.display().to_string(),
            rootfs::host_file_key(m)?,
        ))
    });
    let external: Vec<(String, String)> = layers
        .iter()
        .map(|l| (l.mount_point.display().to_string(), l.key.clone()))
        .chain(host_files)
        .collect();
    // The tmpfs hiding state roots are not dumped: the restoring keeper hides the roots of
    // its own host, before the restored processes run (see Keeper::restore).
    let skipped: Vec<String> = mounts
        .iter()
        .filter(|m| hiding::is_hiding_mount(m))
        .map(|m| m.mount_point.display().to_string())
        .collect();
    let external_netns = mark_netns(vm, netns, init)?;
    images::write_format(&images).map_err(io(
        name,
        format!("write {}", images.join(images::FORMAT).display()),
    ))?;
    // Its processes end with the dump, and the images are all that is left of them: on disk
    // before the VM's record says so (see `sync_images`).
    let images_to_sync = ends_vm && !flushed_with_layer(&images, vm, &config);
    // Why the keeper refused the images at CRIU's `post-dump`, if it did.
    let mut refused = None;
    let mut images_refused = false;
    let dumped = criu.dump(
        &Dump {
            vm: name.as_str(),
            pid: init.as_raw(),
            images: &images,
            leave_running,
            external_mounts: &external,
            skipped_mounts: &skipped,
            lazy,
            freeze_cgroup: freezer,
            external_netns,
            config_missing: crate::test_hooks::set(CRIU_CONFIG_MISSING).is_some(),
        },
        &mut |note| {
            if note == DumpNote::Images {
                // Written before the dump ends, as a post-copy receiver reads it meanwhile;
                // CRIU holds the tasks seized until then, so the groups' members are still
                // those it dumped. Without it the images could not be restored: the dump
                // fails instead (CRIU lets the tasks go on).
                feather_core::trace::phase("checkpoint: CRIU dumped all but lazy memory");
                save_service_groups(name, &mut layers, cgroup);
                feather_core::trace::phase("checkpoint: the units' groups saved");
                let written = serde_json::to_vec_pretty(&layers)
                    .map_err(encode(name, LAYERS))
                    .and_then(|list| {
                        if crate::test_hooks::armed(FAIL_LAYERS) {
                            return Err(failed(name, format!("{FAIL_LAYERS} is set (a test)")));
                        }
                        // Flushed with the other images (in batches of at most 32), if they are.
                        let durability = match images_to_sync {
                            true => Durability::Volatile,
                            false => Durability::Durable,
                        };
                        feather_core::atomic::write_atomic(&images.join(LAYERS), &list, durability)
                            .in_vm(name)?;
                        match images_to_sync {
                            true => sync_images(name, &images),
                            false => Ok(()),
                        }
                    });
                if let Err(e) = written {
                    eprintln!("feather keeper {name}: {}", feather_core::error::causes(&e));
                    refused = Some(e);
                    return false;
                }
            }
            // A refused `post-dump` only marks CRIU's dump failed: a lazy one still starts its
            // page server, whose `status-ready` would have the asker send images without
            // `layers.json`. Refused too, it fails the dump before the asker hears of it.
            // So too after `on_note` refused the images (the keeper could not freeze the VM
            // behind CRIU, say).
            if note == DumpNote::PageServer && (refused.is_some() || images_refused) {
                return false;
            }
            let heard = on_note(note);
            images_refused |= note == DumpNote::Images && !heard;
            heard
        },
    );
    if let Err(e) = dumped {
        // Keep only the log, which the error points to.
        if let Ok(entries) = fs::read_dir(&images) {
            for entry in entries.flatten() {
                if entry.file_name() != criu::DUMP_LOG {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        // The keeper's own refusal says why, where CRIU's words would only say that it was.
        return Err(refused.unwrap_or_else(|| e.into()));
    }
    Ok(())
}

/// For tests only: set (to anything) in a keeper's environment, a post-copy dump names a
/// configuration file that does not exist to CRIU, in place of the one that gives its page
/// server its connection, as a CRIU that could not read it sees it (see
/// `feather_migrate::criu::Dump::config_missing`). Read by a debug build only.
pub const CRIU_CONFIG_MISSING: &str = "FEATHER_TEST_CRIU_CONFIG_MISSING";

/// For tests only: set in a keeper's environment (to anything, or to a file's absolute path:
/// while that file exists, see [`crate::test_hooks::armed`]), the dump's [`LAYERS`] cannot be
/// written (as on a full disk), so that a test sees what the keeper's refusal of the images at
/// CRIU's `post-dump` leaves. Read at that one spot, by a debug build only
/// ([`crate::test_hooks`]); unset (always, outside tests), nothing fails.
pub const FAIL_LAYERS: &str = "FEATHER_TEST_FAIL_LAYERS";

/// For tests only, as [`FAIL_LAYERS`]: the flush of the images of a dump that ends the VM
/// fails (as on a failing disk), so that a test sees that the VM is not recorded checkpointed
/// without it.
pub const FAIL_IMAGES_SYNC: &str = "FEATHER_TEST_FAIL_IMAGES_SYNC";

/// Flushes every file of the checkpoint folder `images`, and the folder, to disk in batches of
/// at most 32 (`feather_core::atomic::sync_all`), at CRIU's `post-dump` of a dump that ends the
/// VM: a failure refuses the dump, and CRIU lets the VM's processes go on. The record that calls the
/// VM checkpointed is synced later (`Keeper::tear_down`), and a synced record does not take
/// earlier unsynced files with it (ext4 allocates their blocks late): without this a power cut
/// after the checkpoint could leave a "checkpointed" VM whose images are empty or cut short.
/// Only where [`flushed_with_layer`] does not. One file at a time, not `syncfs` of their
/// filesystem, which also writes out every other writer's data there: for 46 files and 64 MB
/// of pages (debug build, load 4-5, other builds writing) 33-55 ms against 72-289 ms.
fn sync_images(name: &feather_core::VmName, images: &Path) -> Result<()> {
    let cannot = |why: String| {
        failed(
            name,
            format!(
                "cannot flush its checkpoint's images to disk ({why}), so the checkpoint is \
                 refused and the VM runs on; check the disk holding {}, then try again",
                images.display()
            ),
        )
    };
    if crate::test_hooks::armed(FAIL_IMAGES_SYNC) {
        return Err(cannot(format!("{FAIL_IMAGES_SYNC} is set (a test)")));
    }
    let mut paths: Vec<PathBuf> = fs::read_dir(images)
        .and_then(|entries| entries.map(|entry| Ok(entry?.path())).collect())
        .map_err(|e| cannot(format!("{}: {e}", images.display())))?;
    paths.push(images.to_path_buf());
    feather_core::atomic::sync_all(&paths).map_err(|e| cannot(feather_core::error::causes(&e)))?;
    feather_core::trace::phase("checkpoint: the images flushed to disk");
    Ok(())
}

/// Whether the flush of the VM's layer before its record (its overlay's unmount, then
/// [`sync_images_filesystem`]: `Keeper::flush_checkpoint`) flushes the checkpoint folder
/// `images` too: only where both are on one filesystem, which a VM with a disk image of its
/// own (`limits.disk`: its layer is in the image) does not share. Unknown counts as not (the
/// images are then flushed at `post-dump`). Where it does, flushing the images first saves
/// nothing: the layer's flush (35-51 ms for 64 MB of pages, debug build, load 4-5) is their
/// writing, and after them it still took 1-11 ms.
fn flushed_with_layer(images: &Path, vm: &VmDir, config: &VmConfig) -> bool {
    use std::os::unix::fs::MetadataExt;
    let device = |path: &Path| fs::metadata(path).map(|meta| meta.dev()).ok();
    let upper = layers::home(vm, config).upper;
    device(images).is_some_and(|images| device(&upper) == Some(images))
}

/// The checkpoint folder of a VM whose images [`flushed_with_layer`] covers, opened before
/// that flush (the drop of the VM's mounts: `Keeper::tear_down`) so that
/// [`sync_images_filesystem`] after it hears of a write error the flush met. None only where
/// the images were flushed at `post-dump` ([`sync_images`]); a folder that cannot be opened is
/// kept as the error, which refuses the record as a failed flush does.
pub(crate) fn images_flushed_with_layer(
    vm: &VmDir,
    config: &VmConfig,
) -> Option<std::io::Result<fs::File>> {
    let images = vm.checkpoint_dir();
    flushed_with_layer(&images, vm, config).then(|| fs::File::open(&images))
}

/// Flushes the filesystem holding the checkpoint folder `images` (opened, or failed to open, by
/// [`images_flushed_with_layer`]) after the layer's flush: the unmount flushes it only if it
/// let go of the overlay's last hold (not while another namespace or file still holds it),
/// and drops a write error it meets. Then little is left to write (1-11 ms, see
/// [`flushed_with_layer`]), and `syncfs` returns any write error on the filesystem since the
/// folder was opened. On an error the VM must not be recorded checkpointed.
pub(crate) fn sync_images_filesystem(vm: &VmDir, images: std::io::Result<fs::File>) -> Result<()> {
    let synced = match crate::test_hooks::armed(FAIL_IMAGES_SYNC) {
        true => Err(std::io::Error::other(format!(
            "{FAIL_IMAGES_SYNC} is set (a test)"
        ))),
        false => {
            images.and_then(|images| nix::unistd::syncfs(images).map_err(std::io::Error::from))
        }
    };
    synced.map_err(|e| {
        failed(
            vm.name(),
            format!(
                "cannot flush its checkpoint's images to disk ({e}), so it is recorded \
                 stopped, not checkpointed: its processes ended with the dump, and its \
                 checkpoint might not survive a power cut; check the disk holding {}",
                vm.checkpoint_dir().display()
            ),
        )
    })?;
    feather_core::trace::phase("teardown: the images' filesystem flushed");
    Ok(())
}

/// The mounts `picked` chooses, in order, as external mounts of the dump keyed
/// `feather-<kind>-<n>`, each made what it is by `what`.
fn numbered<'a>(
    mounts: &'a [MountEntry],
    kind: &'a str,
    picked: impl Fn(&MountEntry) -> bool + 'a,
    what: impl Fn(ExternalLayer) -> ExternalLayer + 'a,
) -> impl Iterator<Item = ExternalLayer> + 'a {
    mounts
        .iter()
        .filter(move |m| picked(m))
        .enumerate()
        .map(move |(i, m)| {
            what(ExternalLayer {
                key: format!("feather-{kind}-{i}"),
                mount_point: m.mount_point.clone(),
                ..ExternalLayer::default()
            })
        })
}

/// The inode of the VM's network namespace if CRIU is to leave it out ([`NetnsAtDump::Known`]),
/// which the images say ([`EXTERNAL_NETNS`]); or None, and why, if feather made it and it
/// changed since ([`NETNS_DUMPED`]).
fn mark_netns(vm: &VmDir, netns: &NetnsAtDump, init: Pid) -> Result<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    let name = vm.name();
    let images = vm.checkpoint_dir();
    fs::create_dir_all(&images).at(&images).in_vm(name)?;
    match netns {
        NetnsAtDump::Known => {
            let path = format!("/proc/{init}/ns/net");
            let inode = fs::metadata(&path).at(&path).in_vm(name)?.ino();
            let marker = images.join(EXTERNAL_NETNS);
            fs::write(&marker, b"").at(&marker).in_vm(name)?;
            Ok(Some(inode))
        }
        NetnsAtDump::ToCriu(None) => Ok(None),
        NetnsAtDump::ToCriu(Some(why)) => {
            let marker = images.join(NETNS_DUMPED);
            fs::write(&marker, why).at(&marker).in_vm(name)?;
            Ok(None)
        }
    }
}

/// If `mount`, as the VM's init's mountinfo shows it, is a cgroup hierarchy bound at
/// `/sys/fs/cgroup/<folder>` (a start binds the `services/` folder of the VM's group there):
/// that folder.
fn cgroup_hierarchy_at(mount: &MountEntry) -> Option<PathBuf> {
    if !matches!(mount.fs_type.as_str(), "cgroup" | "cgroup2") {
        return None;
    }
    let mut below = mount.mount_point.strip_prefix(CGROUP_MOUNTS).ok()?.iter();
    match (below.next(), below.next()) {
        (Some(folder), None) => Some(PathBuf::from(folder)),
        _ => None,
    }
}

/// Where the VM's cgroup hierarchies are, in the VM as on the host.
const CGROUP_MOUNTS: &str = "/sys/fs/cgroup";

/// Saves, with each cgroup hierarchy of `layers`, the groups below the `services/` folder of
/// the VM's group there (see [`crate::service_groups`]).
fn save_service_groups(
    name: &feather_core::VmName,
    layers: &mut [ExternalLayer],
    cgroup: Option<&Cgroup>,
) {
    let subtrees = cgroup.map(Cgroup::service_subtrees).unwrap_or_default();
    for layer in layers.iter_mut().filter(|l| l.cgroup_services) {
        if let Some(folder) = services_folder_of(&subtrees, &layer.mount_point) {
            layer.groups = service_groups::save(name, folder);
        }
    }
}

/// Of the `services/` folders of the VM's group (`subtrees`, see
/// [`Cgroup::service_subtrees`]), the one bound at `mount_point` in the VM.
fn services_folder_of<'a>(
    subtrees: &'a [(PathBuf, PathBuf)],
    mount_point: &Path,
) -> Option<&'a Path> {
    let at = mount_point
        .strip_prefix(CGROUP_MOUNTS)
        .unwrap_or(mount_point);
    subtrees
        .iter()
        .find(|(_, here)| here == at)
        .map(|(folder, _)| folder.as_path())
}

/// For each cgroup hierarchy the checkpoint bound under `/sys/fs/cgroup` (`bound`, see
/// [`cgroup_hierarchy_at`]): its key, and the `services/` folder of the VM's group in that
/// hierarchy on this host (made if missing), for CRIU to bind there as a start does. Never
/// the VM's group itself: its limits are the keeper's, out of the VM's reach (security row 27).
/// A checkpoint with the tmpfs at `/sys/fs/cgroup` (`has_top`) but no hierarchy listed was
/// taken by an older feather, which left the hierarchies to CRIU: CRIU mounts each anew at the
/// cgroup namespace's root, the VM's own group, so such a checkpoint is refused.
fn services_folders(
    vm: &VmDir,
    cgroup: Option<&Cgroup>,
    bound: &[ExternalLayer],
    has_top: bool,
) -> Result<Vec<ServicesFolder>> {
    let name = vm.name();
    if has_top && bound.is_empty() {
        return Err(failed(
            name,
            "its checkpoint was taken by an older feather, whose restore would leave the VM \
             its own cgroup limits writable; start the VM anew (`feather start`) and checkpoint \
             it again",
        ));
    }
    let subtrees = cgroup.map(Cgroup::service_subtrees).unwrap_or_default();
    bound
        .iter()
        .map(|layer| {
            let Some(folder) = services_folder_of(&subtrees, &layer.mount_point) else {
                let at = layer
                    .mount_point
                    .strip_prefix(CGROUP_MOUNTS)
                    .unwrap_or(&layer.mount_point);
                return Err(failed(
                    name,
                    format!(
                        "its checkpoint binds the cgroup hierarchy {} at {}, which this host \
                         does not give its VMs' services; restore it on a host with the same \
                         cgroup hierarchies",
                        at.display(),
                        layer.mount_point.display()
                    ),
                ));
            };
            match fs::create_dir(folder) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(io(name, format!("create {}", folder.display()))(e));
                }
                _ => {}
            }
            // The units' groups, with their limits, before any process is restored.
            Ok(ServicesFolder {
                key: layer.key.clone(),
                groups: service_groups::recreate(name, folder, &layer.groups)?,
                folder: folder.to_path_buf(),
            })
        })
        .collect()
}

/// A cgroup hierarchy's `services/` folder of the VM's group on this host, bound where the
/// checkpoint's external mount `key` was, with the groups made again below it.
#[derive(Debug)]
struct ServicesFolder {
    key: String,
    folder: PathBuf,
    groups: Vec<service_groups::SavedGroup>,
}

/// Whether the VM's last checkpoint left its network namespace out (see [`NetnsAtDump`]): the
/// restore makes it anew.
pub(crate) fn netns_external(vm: &VmDir) -> bool {
    vm.checkpoint_dir().join(EXTERNAL_NETNS).exists()
}

/// Whether `mount` is one of the VM's own layers over a host mount: an overlay whose upper
/// folder is the one feather made for that mount point. Any other overlay in the VM is not
/// taken for one — a Shuttle hand-over binds another VM's overlay into this VM's `/run`, in a
/// folder this VM can rename, and a restore layers `base + mount point` from the host at each
/// layer's mount point, so a mount point the VM chose must never be one. (CRIU then meets that
/// overlay as a mount it cannot dump, and the checkpoint is refused.)
fn is_own_layer(vm: &VmDir, config: &VmConfig, mount: &MountEntry) -> bool {
    if mount.fs_type != "overlay" || mount.mount_point == Path::new("/") {
        return false;
    }
    let expected = layers::Layer::submount(vm, config, mount.mount_point.clone()).upper;
    mount::is_overlay_upper(&mount.super_options, &expected)
}

/// Refuses a checkpoint whose mount images have CRIU bind a host path into the VM that feather
/// does not bind there itself, or mount one anew: CRIU takes from the images the host path of
/// its automatic external mounts (those in a service's own mount namespace), the type, source
/// and flags of every other mount, and the read-only flag of the keyed ones, which a crafted
/// checkpoint or a migration's sender could set to bind any host folder (`/`, `/etc`, the
/// host's feather binary) writable into the VM. Every entry is judged
/// ([`feather_migrate::mount_images::judge`]) against: the keys this restore passes
/// (`mapping`, and `host_files`: devices, /dev/null, init's program, the last read-only as
/// bound at a start, as are the generated /etc files), and as automatic binds `host_files` and
/// the VM's generated /etc files at this host's paths, and read-only the base's paths the VM
/// has read-only (`--ro`). Gives the binds CRIU will make beneath the VM's root and the keys'
/// host paths, which the restoring child walks once it has mounted them ([`check_binds`]).
fn check_mount_images(
    vm: &VmDir,
    config: &VmConfig,
    images: &Path,
    mapping: &[(String, PathBuf)],
    generated: &[ExternalLayer],
    host_files: &[(String, PathBuf)],
    init_files: &[PathBuf],
) -> Result<feather_migrate::mount_images::Binds> {
    let name = vm.name();
    let keyed: Vec<(String, bool)> = mapping
        .iter()
        .map(|(key, _)| {
            let generated = generated.iter().any(|file| &file.key == key);
            (key.clone(), generated)
        })
        .chain(
            host_files
                .iter()
                .map(|(key, path)| (key.clone(), init_files.contains(path))),
        )
        .collect();
    let allowed: Vec<PathBuf> = host_files
        .iter()
        .map(|(_, path)| path.clone())
        .chain(
            ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
                .iter()
                .filter_map(|file| feather_net::etc::generated(vm.run_dir(), Path::new(file))),
        )
        .collect();
    // The base's paths the VM has read-only (`--ro`; an imported config's checked as `create`
    // records them), bound read-only.
    let read_only = read_only_in_base(config);
    // The proc paths the VM's root binds read-only over themselves; its masks are tmpfs and
    // /dev/null, no bind of a kernel path.
    let kernel_binds: Vec<(feather_migrate::mount_images::KernelFs, PathBuf)> =
        crate::rootfs::READ_ONLY_PROC
            .iter()
            .map(|name| {
                let path = Path::new("/").join(name);
                (feather_migrate::mount_images::KernelFs::Proc, path)
            })
            .collect();
    let policy = feather_migrate::mount_images::Policy {
        keyed: &keyed,
        allowed: &allowed,
        read_only: &read_only,
        kernel_binds: &kernel_binds,
    };
    let judged = feather_migrate::mount_images::judge(images, &policy).map_err(io(
        name,
        format!("read the mount images in {}", images.display()),
    ))?;
    judged.map_err(|refusal| refused(name, &refusal))
}

/// The restore refused for what its mount images have CRIU do.
fn refused(
    name: &feather_core::VmName,
    refusal: &feather_migrate::mount_images::Refusal,
) -> crate::error::VmError {
    failed(
        name,
        format!(
            "its checkpoint's mount images are refused: {refusal}; feather does not mount that \
             in a VM (a checkpoint altered, or sent, to bind or mount a host path in the VM); \
             refusing the restore: start the VM anew or restore a checkpoint this host or a \
             trusted one took"
        ),
    )
}

/// In the restoring child, once the VM's root and the keys' host paths are mounted as CRIU
/// will find them: every bind CRIU makes beneath them is walked there without following a
/// link ([`feather_migrate::mount_images::Binds::check`]), as CRIU follows them as the host's
/// root, before any pivot (a link `x -> /` in the VM's layer would bind the host's own tree).
fn check_binds(
    name: &feather_core::VmName,
    binds: &feather_migrate::mount_images::Binds,
    rootfs: &Path,
    mapping: &[(String, PathBuf)],
) -> Result<()> {
    binds
        .check(rootfs, mapping)
        .map_err(|refusal| refused(name, &refusal))
}

/// In a keeper started in restore mode: restores the VM's process tree from its checkpoint
/// folder and returns its init, now a child of this process.
/// `veth`: the VM's veth pair, for CRIU to make (`--net private`, its namespace dumped);
/// `netns`: the namespace made anew for a VM whose namespace was not dumped (see
/// [`netns_external`]), and what completes it ([`Wire`]), run while CRIU starts. A VM received
/// by a migration comes back stopped, until `feather serve` confirms it (see
/// [`await_release`]).
pub(crate) fn restore_tree(
    root: &StateRoot,
    vm: &VmDir,
    config: &VmConfig,
    cgroup: Option<&Cgroup>,
    veth: Option<&feather_net::VethPair>,
    netns: Option<(std::os::fd::OwnedFd, &Wire<'_>)>,
) -> Result<ChildProcess> {
    let (netns, wire) = match netns {
        Some((netns, wire)) => (Some(netns), Some(wire)),
        None => (None, None),
    };
    let name = vm.name();
    // `feather restore` (or `serve`) checked it before starting this keeper.
    let criu = Criu::located_by_starter().in_vm(name)?;
    let hold = holding(name, cgroup)?;
    let images = vm.checkpoint_dir();
    let host_mounts = layers::host_mount_table()?;
    let state_folders = crate::hiding::state_folders_in(root, &host_mounts);
    let memory_layer = layers::MemoryLayer::for_vm(config)?;
    let mut top =
        layers::for_start_in(root, vm, config, memory_layer, &state_folders, &host_mounts)?
            .layers
            .swap_remove(0);
    let rootfs = vm.rootfs();
    // Checked before anything is derived from it: host folders are, from its names.
    let placement = images::Placement {
        base: &config.base,
        state_folders: &state_folders,
    };
    let external = images::read_layers(&images, name, images::Reading::Restore, &placement)?;
    let (masks, external): (Vec<ExternalLayer>, Vec<ExternalLayer>) =
        external.into_iter().partition(|l| l.mask);
    let (cgroup_top, external): (Vec<ExternalLayer>, Vec<ExternalLayer>) =
        external.into_iter().partition(|l| l.cgroup_top.is_some());
    let (hierarchies, external): (Vec<ExternalLayer>, Vec<ExternalLayer>) =
        external.into_iter().partition(|l| l.cgroup_services);
    let services = services_folders(vm, cgroup, &hierarchies, !cgroup_top.is_empty())?;
    let (generated, external): (Vec<ExternalLayer>, Vec<ExternalLayer>) =
        external.into_iter().partition(|l| l.generated);
    let mut others: Vec<(layers::Layer, PathBuf)> = external
        .iter()
        .map(|l| {
            let mut layer = layers::Layer::submount(vm, config, l.mount_point.clone());
            // The host may have unmounted and removed what the layer lay over since the
            // checkpoint; the VM then keeps its own changes there, over nothing.
            if !layer.lower.is_dir() {
                layer.lower = images.join(VANISHED_LOWER);
                layer.over_nothing = true;
            }
            let at = rootfs.join(l.mount_point.strip_prefix("/").unwrap_or(&l.mount_point));
            (layer, at)
        })
        .collect();
    for (layer, _) in &others {
        if !layer.lower.exists() {
            fs::create_dir_all(&layer.lower).at(&layer.lower)?;
        }
    }
    // The child mounts each by these names: folders beneath the VM's, never a link's target.
    let restored: Vec<layers::Layer> = others.iter().map(|(layer, _)| layer.clone()).collect();
    layers::make_folders(name, &layers::home(vm, config), &restored)?;
    // What the layers lie over, for `diff` and `commit` to read nothing else.
    let all: Vec<layers::Layer> = std::iter::once(top.clone()).chain(restored).collect();
    // Confirmed from the file (`confirm_held_lowers`), as a restore's other steps read it.
    layers::SeenLowers::record(vm, config, &all, layers::RecordSync::Now)?;
    crate::test_hooks::held(HOLD_AFTER_RESTORE_RECORD);
    // The overlays hide every state root registered by now by themselves, before CRIU reopens
    // anything of the VM's: a descriptor or working folder a restored process had in a folder
    // that is a state root now is reopened as the empty folder the overlay shows there (the
    // tmpfs of the hiding come only after CRIU, `Keeper::restore`). Held until the child has
    // mounted the overlays; CRIU, which it becomes, does not get its descriptor.
    let hiding = {
        let mut all: Vec<layers::Layer> = std::iter::once(top.clone())
            .chain(others.iter().map(|(layer, _)| layer.clone()))
            .collect();
        let hiding = layers::hiding_layer(name, &mut all, &config.base, &state_folders)?;
        let mut masked = all.into_iter();
        top.hiding = masked.next().and_then(|layer| layer.hiding);
        for ((layer, _), with) in others.iter_mut().zip(masked) {
            layer.hiding = with.hiding;
        }
        hiding
    };
    let mut mapping: Vec<(String, PathBuf)> = external
        .iter()
        .zip(&others)
        .map(|(l, (_, at))| (l.key.clone(), at.clone()))
        .collect();
    for file in &generated {
        let Some(path) = feather_net::etc::generated(vm.run_dir(), &file.mount_point) else {
            continue;
        };
        mapping.push((file.key.clone(), path));
    }
    // One empty read-only tmpfs, mounted in the restoring child's namespace only, is every
    // mask: CRIU binds it at each and gives each its dumped flags.
    let mask = vm.run_dir().join(MASK);
    mapping.extend(masks.iter().map(|m| (m.key.clone(), mask.clone())));
    // The same for the tmpfs at /sys/fs/cgroup, with the folders the hierarchies are bound on.
    let cgroups = vm.run_dir().join(CGROUP_TOP);
    mapping.extend(cgroup_top.iter().map(|c| (c.key.clone(), cgroups.clone())));
    mapping.extend(services.iter().map(|s| (s.key.clone(), s.folder.clone())));
    // The host files a start binds, from this host's own paths, whatever the images say.
    let program = crate::init::program_files().map_err(io(name, "find the feather binary"))?;
    let host_files = rootfs::host_file_binds(&program);
    let binds = check_mount_images(
        vm,
        config,
        &images,
        &mapping,
        &generated,
        &host_files,
        &program,
    )?;
    mapping.extend(host_files);
    let veths: Vec<(String, String, String)> = veth
        .map(|v| (v.inside.clone(), v.host_end.clone(), v.bridge.clone()))
        .into_iter()
        .collect();
    let lazy = images.join(LAZY).exists();
    let mut call = criu
        .restore_call(&Restore {
            images: &images,
            root: &rootfs,
            external_mounts: &mapping,
            veths: &veths,
            // Always: the keeper hides the state roots before the VM's processes go on.
            leave_stopped: true,
            // Post-copy: `feather serve` runs the daemon that fetches the memory.
            lazy,
            netns: netns.as_ref().map(AsRawFd::as_raw_fd),
        })
        .in_vm(name)?;
    if let Some(hold) = crate::test_hooks::set(HOLD_AT_POST_RESTORE) {
        call.at_post_restore(Box::new(move || crate::test_hooks::held_by(&hold)));
    }
    let sync = if config.ephemeral {
        LayerSync::Volatile
    } else {
        LayerSync::Durable
    };
    // The child's reason when it cannot prepare (a mount point it refuses), for the user: its
    // stderr is only the keeper's log. Not blocking: a process forked meanwhile may hold the
    // writing end until its exec.
    let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
    let (why_read, why_write) = nix::unistd::pipe2(flags)
        .map_err(|e| io(name, "make the restoring child's pipe")(e.into()))?;
    // The child's mount namespace, where CRIU runs: no restored process may be left in it.
    let (mnt_read, mnt_write) = nix::unistd::pipe2(flags)
        .map_err(|e| io(name, "make the restoring child's pipe")(e.into()))?;
    // What is mounted where CRIU runs, just before: every mount of the restored tree must be
    // accounted for by it (`restored_mounts`). Written by the child, read at offset 0 here.
    let mounts_before =
        CriuMountTable::new().map_err(io(name, "make the restoring child's mount table file"))?;
    // What the child finds beneath each layer as it mounts it, for the record of what the
    // layers lie over (`SeenLowers::confirm`): the host may mount another filesystem at a
    // layer's place between the record and the child's copy of its mounts. Written and
    // sealed by the child before it says its namespace.
    let lowers_held = SealedReport::new(
        c"feather-restored-lowers",
        "the restoring child's report of what the layers lie over",
    )
    .map_err(io(name, "make the restoring child's file of its lowers"))?;
    // The child, CRIU once it has exec'd, ends with the keeper: a keeper killed mid-restore
    // leaves no CRIU restoring for no one (what it restored is in the VM's cgroup, which the
    // crash clean-up kills). Forked from the keeper's main thread (`fork` takes the only
    // thread), which lives as long as the keeper: the death signal follows the forking thread.
    let keeper = Pid::this();
    let child = match process::fork().in_vm(name)? {
        None => {
            if let Err(e) = process::end_with_forking_thread(keeper) {
                eprintln!("feather keeper {name}: the restoring child cannot end with it: {e}");
                std::process::exit(125);
            }
            // In the child: a mount namespace of its own, so that the VM's root overlay, which
            // CRIU needs mounted to rebuild the VM's mounts on, never appears on the host.
            let prepared = (|| -> Result<()> {
                unshare(CloneFlags::CLONE_NEWNS)
                    .map_err(|e| io(name, "unshare mounts")(e.into()))?;
                mount::make_all_private().in_vm(name)?;
                let base = rootfs::open_base(&top.lower).in_vm(name)?;
                let mut held = vec![PinnedLower::of(layers::name(&top), &base)];
                let lowers = rootfs::lowers_by_descriptor(&top, &base);
                let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
                mount::overlay(&lowers, &top.upper, &top.work, &rootfs, sync).in_vm(name)?;
                drop(base);
                let tree = rootfs::open_tree(&rootfs).in_vm(name)?;
                crate::test_hooks::held(HOLD_BEFORE_RESTORED_LAYERS);
                let vanished = images.join(VANISHED_LOWER);
                for (layer, _) in &others {
                    held.push(
                        mount_restored_layer_over_what_is_left(
                            &tree, layer, &top.upper, sync, &vanished, &top.lower,
                        )
                        .in_vm(name)?,
                    );
                }
                drop(tree);
                let text = serde_json::to_vec(&held).map_err(encode(name, "held lowers"))?;
                lowers_held
                    .write(&text)
                    .map_err(io(name, "write what the restored layers lie over"))?;
                if !masks.is_empty() {
                    fs::create_dir_all(&mask).map_err(io(name, mask.display().to_string()))?;
                    rootfs::mount_mask(&mask).in_vm(name)?;
                }
                for top in &cgroup_top {
                    let folders = top.cgroup_top.iter().flatten().map(PathBuf::as_path);
                    fs::create_dir_all(&cgroups)
                        .map_err(io(name, cgroups.display().to_string()))?;
                    rootfs::mount_cgroup_top(&cgroups, folders).in_vm(name)?;
                    mount::remount_bind_readonly(&cgroups).in_vm(name)?;
                }
                check_binds(name, &binds, &rootfs, &mapping)?;
                if let Some(cgroup) = cgroup {
                    cgroup.add(Pid::this()).in_vm(name)?;
                    // CRIU runs with cgroups ignored and restores no cgroup namespace: the
                    // VM's processes take criu's, this one, which must be rooted at the VM's
                    // group as the one init made at the start was. Without it the restored
                    // VM saw the host's whole cgroup tree (its cgroup2 mount was the host's
                    // root) and could write in it: other VMs' groups, their `cgroup.kill`.
                    unshare(CloneFlags::CLONE_NEWCGROUP)
                        .map_err(|e| io(name, "unshare cgroup namespace")(e.into()))?;
                }
                Ok(())
            })();
            let prepared = prepared.and_then(|()| {
                mounts_before
                    .write_own()
                    .map_err(io(name, "write the mount table CRIU runs on"))
            });
            if prepared.is_ok() {
                let mnt = fs::read_link("/proc/self/ns/mnt").unwrap_or_default();
                let _ = nix::unistd::write(&mnt_write, mnt.as_os_str().as_encoded_bytes());
            }
            if let Err(why) = prepared {
                let why = feather_core::error::causes(&why);
                eprintln!("feather keeper {name}: cannot prepare the restore: {why}");
                // The parent names the VM itself.
                let vm_said = format!("VM {name}: ");
                let why = why.strip_prefix(&vm_said).unwrap_or(&why);
                let _ = nix::unistd::write(&why_write, why.as_bytes());
                std::process::exit(125);
            }
            if let Err(e) = call.keep_criu_end_across_exec() {
                eprintln!("feather keeper {name}: cannot hand CRIU its channel: {e}");
                std::process::exit(125);
            }
            let mut keep = vec![0, 1, 2, call.criu_end()];
            if let Some(netns) = &netns {
                if let Err(e) = process::keep_across_exec(netns) {
                    eprintln!("feather keeper {name}: cannot hand CRIU its network namespace: {e}");
                    std::process::exit(125);
                }
                keep.push(netns.as_raw_fd());
            }
            process::close_other_fds(&keep);
            let why = exec(&call.program, &call.args);
            eprintln!(
                "feather keeper {name}: cannot run {}: {why}",
                call.program.display()
            );
            std::process::exit(126);
        }
        Some(pid) => pid,
    };
    drop(why_write);
    drop(mnt_write);
    drop(hiding);
    // The network, while the child prepares and CRIU starts.
    let wired = match (wire, &netns) {
        (Some(wire), Some(netns)) => wire(netns),
        _ => Ok(()),
    };
    // Post-copy: `feather serve` started the daemon fetching the memory just before this
    // keeper, which prepared meanwhile; CRIU's restore needs it listening.
    let listening = match lazy {
        true => criu::await_lazy_pages(name.as_str(), &images, LAZY_PATIENCE).map_err(Into::into),
        false => Ok(()),
    };
    // A daemon that never listened, or a network not made: dropping the call ends criu swrk,
    // which waits for its request. The tree is frozen at CRIU's pre-resume, before any of it
    // runs again (criu, the child, leaves the group first), and stays so until the keeper
    // continues it.
    let mut held = None;
    // CRIU's namespace, held from before CRIU is asked to restore until the check.
    let (pinned, restoring_mnt, _criu_namespace) = match hold_restoring_namespace(child, &mnt_read)
    {
        Ok((path, namespace)) => (Ok(()), path, namespace),
        Err(e) => (Err(io(name, "wait for the restoring child")(e)), None, None),
    };
    // Only a child that named its namespace wrote its report of the layers: one that ended
    // without a word left it empty, and is refused as such (not as an unreadable report),
    // its own reason told first where it gave one (`unprepared`; review lowroots29 L1).
    let confirmed = pinned.and_then(|()| match restoring_mnt.is_some() {
        true => confirm_held_lowers(vm, config, &lowers_held),
        false => Err(failed(
            name,
            "the restoring child ended before it named its mount namespace and reported the \
             layers it mounted; nothing was restored",
        )),
    });
    let restored = wired.and(listening).and(confirmed).and_then(|()| {
        let mut at_pre_resume = || {
            let frozen = hold.freeze_or_kill(child.as_raw());
            let answer = frozen.is_ok();
            held = Some(frozen);
            answer
        };
        // Opened before anything reaps the child: it names CRIU whenever it is killed.
        let criu = process::pidfd_open(child).map_err(|e| {
            failed(
                name,
                format!(
                    "cannot hold the child that runs CRIU by a pidfd ({e}); nothing was restored"
                ),
            )
        })?;
        // A CRIU stuck past its time is ended with what it restored.
        call.restore(name.as_str(), criu.as_fd(), &mut at_pre_resume, &mut || {
            hold.end_restored(child.as_raw())
        })
        .map_err(Into::into)
    });
    // criu swrk ends once it has answered; the restored tree is this process's child.
    let _ = waitpid(child, None);
    if let Some(Err(e)) = held {
        return Err(failed(
            name,
            format!(
                "cannot hold the restored processes still for their check (freezing {}): {e}; \
                 they were killed and the restore refused",
                hold.group().display()
            ),
        ));
    }
    let pid = Pid::from_raw(restored.map_err(|e| unprepared(name, why_read).unwrap_or(e))?);
    let pidfd = process::pidfd_open(pid).in_vm(name)?;
    let init = ChildProcess { pid, pidfd };
    crate::test_hooks::held(HOLD_BEFORE_RESTORED_CHECK);
    // Stopped still: a VM never runs with a kernel interface unmasked, nor a unit's process
    // outside its group.
    // Before anything else of the restored tree is touched: what CRIU gave each task came
    // from images this host may not have written (an import, a migration's sender).
    let ready = crate::restored_creds::Allowed::for_vm(
        crate::restored_creds::seccomp_profile(config),
        config.network.mode == feather_core::NetMode::Host,
    )
    .map_err(|e| {
        failed(
            name,
            format!("cannot compile the VM's seccomp filters to check the restored processes: {e}"),
        )
    })
    .and_then(|allowed| {
        // Named always once CRIU ran: the check that no restored task stays there needs it.
        let criu_ran_in = restoring_mnt.as_deref().ok_or_else(|| {
            failed(
                name,
                "the restoring child never named the mount namespace CRIU ran in: the check that \
                 no restored process stays there cannot be made; refused",
            )
        })?;
        crate::restored_creds::check_tree(name, init.pid, &allowed, Some(criu_ran_in), &hold)
    })
    .and_then(|()| cover_what_the_dump_lacked(vm, &init, &hold, binds.queued_by_path()))
    .and_then(|()| {
        let exposed: Vec<PathBuf> = std::iter::once(rootfs.clone())
            .chain(mapping.iter().map(|(_, path)| path.clone()))
            .chain(read_only_in_base(config))
            .collect();
        let before = crate::restored_mounts::before(
            &mounts_before,
            &exposed,
            config.network.mode == feather_core::NetMode::Host,
        )
        .map_err(io(name, "read the keeper's mount table"))?;
        let expected = crate::restored_mounts::expected(config, cgroup, before);
        crate::restored_mounts::check_tree(name, init.pid, &hold, &expected)
    })
    .and_then(|()| {
        feather_core::trace::phase("restore: CRIU restored the tree, kernel interfaces masked");
        let regrouped = regroup(name, cgroup, &services);
        feather_core::trace::phase("restore: the units' processes back in their groups");
        regrouped
    });
    if let Err(e) = ready {
        kill_refused(&hold, &init);
        return Err(e);
    }
    Ok(init)
}

/// Kills a refused restored tree while it is frozen: the held group first (review m26 M5:
/// every process of it, those outside init's pid namespace too), then its init, reaped. Left
/// frozen: thawed only by the group's removal, which kills again first.
fn kill_refused(hold: &Hold, init: &ChildProcess) {
    let _ = hold.kill();
    let _ = process::signal(&init.pidfd, nix::sys::signal::Signal::SIGKILL);
    let _ = waitpid(init.pid, None);
}

/// The freezer the restored tree is held still in, from CRIU's `pre-resume` until the keeper
/// continues it ([`feather_confine::held`]): the VM group's v2 `cgroup.freeze`, also on a
/// hybrid machine (the dump's freeze uses it too). Without it a restored process whose images
/// give it a SIGCONT timer would run during its check: the restore is refused.
fn holding(name: &feather_core::VmName, cgroup: Option<&Cgroup>) -> Result<Hold> {
    let cannot = |why: String| {
        failed(
            name,
            format!("cannot hold the restored processes still for their check: {why}"),
        )
    };
    let mount = cgroup
        .and_then(Cgroup::v2_mount)
        .ok_or_else(|| cannot("this machine mounts no cgroup v2 hierarchy".into()))?;
    let relative = cgroup.map(Cgroup::relative).unwrap_or(Path::new(""));
    Hold::v2(mount, relative).map_err(|e| cannot(e.to_string()))
}

/// Moves each restored process back into the group below `services/` it was in at the dump
/// (CRIU restored them all in the VM's group), in every hierarchy of the checkpoint
/// (`services`: the groups made again, see [`services_folders`]).
fn regroup(
    name: &feather_core::VmName,
    cgroup: Option<&Cgroup>,
    services: &[ServicesFolder],
) -> Result<()> {
    let Some(cgroup) = cgroup else {
        return Ok(());
    };
    // A VM without services has nothing in its `services/` folders: its processes are not
    // even looked up.
    let nothing_saved = services
        .iter()
        .flat_map(|s| &s.groups)
        .all(|g| g.pids.is_empty());
    if nothing_saved {
        return Ok(());
    }
    let restored = service_groups::restored_processes(cgroup);
    for services in services {
        service_groups::move_back(name, &services.folder, &services.groups, &restored)?;
    }
    Ok(())
}

/// The mount namespace the restoring child made, CRIU's (`mnt:[…]`), once the child has said
/// so on `said` (just before its exec, one short write, so whole; a child that failed ends
/// without a word: None), and a descriptor holding it: whatever CRIU does with namespaces of
/// its own, what the child mounted there stays mounted, its device numbers taken, until the
/// keeper has checked the restored tree and masked what the dump lacked (`Before::of`). Once
/// the child has spoken both are required: a wait that fails, or a namespace that cannot be
/// opened or is not the one it named, is an error (review r27 R3: each left the pin out
/// silently, and a wait that failed the name too, which skipped the check that no restored
/// task stays in CRIU's namespace).
fn hold_restoring_namespace(
    child: Pid,
    said: &std::os::fd::OwnedFd,
) -> std::io::Result<(Option<PathBuf>, Option<fs::File>)> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let ended = process::pidfd_open(child).map_err(std::io::Error::other)?;
    loop {
        let mut fds = [
            PollFd::new(said.as_fd(), PollFlags::POLLIN),
            PollFd::new(ended.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => break,
        }
    }
    let Some(path) = restoring_namespace(said) else {
        return Ok((None, None));
    };
    let link = format!("/proc/{child}/ns/mnt");
    let namespace =
        fs::File::open(&link).map_err(|e| std::io::Error::new(e.kind(), format!("{link}: {e}")))?;
    // Named again through the descriptor held: the namespace the child said, not a later one.
    let held = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&namespace)
    );
    let read = fs::read_link(&held)?;
    if read != path {
        return Err(std::io::Error::other(format!(
            "the restoring child said it prepared the restore in {}, but {link} is {}",
            path.display(),
            read.display()
        )));
    }
    Ok((Some(path), Some(namespace)))
}

/// Confirms the VM's record of what its layers lie over with what the restoring child held
/// beneath them as it mounted them (written to `held`, which it did before saying it was
/// prepared): a restore as a start does with its init's report (review lowroots29).
fn confirm_held_lowers(vm: &VmDir, config: &VmConfig, held: &SealedReport) -> Result<()> {
    let name = vm.name();
    let text = held.read().map_err(|e| failed(name, e))?;
    let held: Vec<PinnedLower> = serde_json::from_slice(&text).map_err(|e| {
        failed(
            name,
            format!("the restoring child's report of what the layers lie over is unreadable: {e}"),
        )
    })?;
    layers::SeenLowers::confirm(vm, config, &held)
}

fn restoring_namespace(said: &std::os::fd::OwnedFd) -> Option<PathBuf> {
    let mut text = [0u8; 256];
    let len = nix::unistd::read(said, &mut text).ok()?;
    (len > 0).then(|| PathBuf::from(String::from_utf8_lossy(&text[..len]).into_owned()))
}

/// The reason the restoring child gave for not preparing the restore, if it gave one (read
/// once it has ended; one write of less than a pipe's buffer, so whole).
fn unprepared(
    name: &impl std::fmt::Display,
    why: std::os::fd::OwnedFd,
) -> Option<crate::error::VmError> {
    let mut text = [0u8; 4096];
    let len = nix::unistd::read(&why, &mut text).ok()?;
    let text = String::from_utf8_lossy(&text[..len]);
    (len > 0).then(|| failed(name, format!("cannot prepare the restore: {text}")))
}

/// The base's paths the VM has read-only (`--ro`), as the host sees them: a start binds
/// each from there, and CRIU binds each again from there (an automatic bind).
fn read_only_in_base(config: &VmConfig) -> Vec<PathBuf> {
    config
        .read_only
        .iter()
        .map(|path| config.base.join(path.strip_prefix("/").unwrap_or(path)))
        .collect()
}

/// The empty folder in a VM's checkpoint folder that a restored layer lies over when the host
/// removed the filesystem it lay over since the checkpoint.
const VANISHED_LOWER: &str = "vanished-lower";

/// For tests only, as `keeper::HOLD_RUNNING_RECORD`: the file whose lock a restoring keeper's
/// child waits for once it has mounted the VM's root overlay in its mount namespace, before it
/// mounts the layers of the host's filesystems, so that a test can remove one on the host
/// meanwhile. Unset, nothing waits.
pub const HOLD_BEFORE_RESTORED_LAYERS: &str = "FEATHER_TEST_HOLD_BEFORE_RESTORED_LAYERS";

/// For tests only, as `keeper::HOLD_RUNNING_RECORD`: the file whose lock a restoring keeper
/// waits for once it has recorded what the VM's layers lie over, before it forks the child
/// that copies the host's mounts, so that a test can mount a filesystem at a layer's place
/// meanwhile, as the host may. Unset, nothing waits.
pub const HOLD_AFTER_RESTORE_RECORD: &str = "FEATHER_TEST_HOLD_AFTER_RESTORE_RECORD";

/// For tests only, as `keeper::HOLD_RUNNING_RECORD`: the file whose lock a restoring keeper
/// waits for at CRIU's `post-restore` notification (every task restored, none resumed, before
/// CRIU's last word to a post-copy restore's `lazy-pages` daemon), so that a test can have
/// the daemon end first, as it does when the sender dies. Unset, nothing waits.
pub const HOLD_AT_POST_RESTORE: &str = "FEATHER_TEST_HOLD_AT_POST_RESTORE";

/// For tests only, as `keeper::HOLD_RUNNING_RECORD`: the file whose lock a restoring keeper
/// waits for once CRIU has restored the VM, frozen, before any check of the restored tree, so
/// that a test can change the tree as crafted images would have CRIU make it. Unset, nothing
/// waits.
pub const HOLD_BEFORE_RESTORED_CHECK: &str = "FEATHER_TEST_HOLD_BEFORE_RESTORED_CHECK";

/// [`mount_restored_layer`], and once more if that fails and the layer's lower folder is no
/// longer there: the host removed it since the keeper looked, which also detaches the restoring
/// child's copy of a filesystem mounted there (the kernel then refuses it, EINVAL, or finds no
/// folder, ENOENT). The layer then lies over `vanished`, an empty folder, as a layer whose
/// filesystem went before the restore does. A lower still there fails the restore as before.
fn mount_restored_layer_over_what_is_left(
    tree: &fs::File,
    layer: &layers::Layer,
    vm_layer: &Path,
    sync: LayerSync,
    vanished: &Path,
    base: &Path,
) -> feather_sys::Result<PinnedLower> {
    match mount_restored_layer(tree, layer, vm_layer, sync, base) {
        Err(_) if !layer.lower.is_dir() => {
            fs::create_dir_all(vanished).map_err(|e| feather_sys::SysError {
                op: "create",
                target: vanished.display().to_string(),
                errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
            let over_nothing = layers::Layer {
                lower: vanished.to_path_buf(),
                over_nothing: true,
                ..layer.clone()
            };
            mount_restored_layer(tree, &over_nothing, vm_layer, sync, base)
        }
        done => done,
    }
}

/// The layer of a host filesystem the checkpointed VM had, mounted in the restoring child
/// on its mount point in the VM's tree, opened beneath it as a start opens it (the VM's layer
/// holds whatever a crafted layer put there; an absolute link would resolve against the
/// host's root here). A point the host removed since is made, folder by folder, in the VM's
/// layer. A link or a non-folder there refuses the restore: CRIU binds the layer from that
/// path and recreates the VM's mount there, following the link, and the VM's mount
/// namespace as dumped has a mount there. (CRIU is handed the point's path: once each name
/// on it was found a folder here, nothing changes them before CRIU reads it, since nothing of
/// the VM runs.) The layer's lower folder, under the VM's `base`, is opened following no link
/// and given by descriptor, as a start's are (a link put at a mount point after the keeper
/// checked `layers.json` fails the restore); the empty folder a vanished one is replaced by
/// ([`layers::Layer::over_nothing`]) lies in the checkpoint's own folder, opened by its path
/// (following the links on the state root's path, which the admin chose: review gl27 L3,
/// a root reached through a link under a base of `/` failed such restores).
fn mount_restored_layer(
    tree: &fs::File,
    layer: &layers::Layer,
    vm_layer: &Path,
    sync: LayerSync,
    base: &Path,
) -> feather_sys::Result<PinnedLower> {
    let point = rootfs::make_mount_point(tree, &layer.mount_point)?;
    let of_the_base = !layer.over_nothing && layer.lower.starts_with(base);
    let lower = match of_the_base {
        true => {
            let what = format!(
                "the lower folder of the layer at {},",
                layer.mount_point.display()
            );
            rootfs::open_without_links(&layer.lower, &what)?
        }
        false => rootfs::open_folder(&layer.lower)?,
    };
    let lowers = rootfs::lowers_by_descriptor(layer, &lower);
    let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    let held = match of_the_base {
        true => PinnedLower::of(layers::name(layer), &lower),
        false => PinnedLower::over_nothing(layers::name(layer)),
    };
    match point {
        rootfs::MountPoint::Folder(point) => mount::overlay(
            &lowers,
            &layer.upper,
            &layer.work,
            &rootfs::by_descriptor(&point),
            sync,
        )
        .map(|()| held)
        .map_err(rootfs::at_vm_path(&layer.mount_point)),
        rootfs::MountPoint::Not(errno) => Err(feather_sys::SysError {
            op: "cannot restore the layer of the host's filesystem at",
            target: format!(
                "{}, which is not a folder in the VM (a link or a file in its layer): remove \
                 that entry from the VM's layer ({}), then restore",
                layer.mount_point.display(),
                vm_layer.display()
            ),
            errno,
        }),
    }
}

/// Masks the kernel interfaces that the restored VM of `init` sees unmasked, in every mount
/// namespace of it (init's first, then each other one a process of the frozen group `hold`
/// is in: a unit's `PrivateTmp=` namespace): CRIU recreates only the masks it dumped, and a
/// folder or file that was not there at the dump (another host's kernel, a driver loaded
/// since) may be here. Every namespace, not init's alone (review m26 M3: the mount check
/// requires the masks in each, and a migrated VM with such a unit was refused): a second
/// namespace is the VM's as much as init's, and a mask left out there would show its
/// processes the kernel interface (requiring there only what the dump had would). Done while
/// the VM is frozen.
/// `queued`: the files messages queued in the images carry, which refuse a restore that adds
/// a cover ([`feather_migrate::mount_images::refuse_in_flight`]).
fn cover_what_the_dump_lacked(
    vm: &VmDir,
    init: &ChildProcess,
    hold: &Hold,
    queued: &[String],
) -> Result<()> {
    let name = vm.name();
    let cannot = |e: std::io::Error| {
        failed(
            name,
            format!("cannot list the restored processes to mask their kernel interfaces: {e}"),
        )
    };
    let mut seen = Vec::new();
    let others = hold.processes().map_err(cannot)?;
    for pid in std::iter::once(init.pid.as_raw()).chain(others) {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let namespace = match feather_confine::restored::namespace(&proc, "mnt") {
            Ok(namespace) => namespace,
            // A zombie has none; any other process is refused by the mount check after.
            Err(_) => continue,
        };
        if seen.contains(&namespace) {
            continue;
        }
        seen.push(namespace);
        let covered = match pid == init.pid.as_raw() {
            true => cover_in_namespace_of(vm, pid, &init.pidfd)?,
            false => {
                let pidfd = process::pidfd_open(Pid::from_raw(pid)).in_vm(name)?;
                cover_in_namespace_of(vm, pid, &pidfd)?
            }
        };
        feather_migrate::mount_images::refuse_in_flight(queued, &covered).map_err(|why| {
            failed(
                name,
                format!(
                    "{why}; refusing the restore: start the VM anew, or restore a checkpoint \
                     taken with every read-only bind and mask in place"
                ),
            )
        })?;
    }
    Ok(())
}

/// Masks the kernel interfaces that the mount namespace of process `pid` (`pidfd`) of the
/// restored VM shows unmasked: each place the mount check requires masked (every proc and
/// sysfs mount's, as the namespace's root shows them: a chrooted unit's own proc too) that
/// no mask covers ([`feather_confine::restored_mounts::unmasked_places`], review r27 R7:
/// before, only the fixed paths of the process's own view were looked at, and such a VM
/// was refused). Looked up beneath the namespace's root, never through a magic link: a link
/// in the restored tree is the images' to choose, and through `/proc/PID/root` an absolute
/// one would lead the host's root to a host path (review r27 R6).
/// A writable one of `/proc/{bus,fs,irq,sys,sysrq-trigger}` is not bound read-only here but
/// refused by the check: what CRIU opened beneath it while it was writable (a descriptor in a
/// task's table, or one CRIU queues on a unix socket, where no check of the tasks sees it; a
/// working folder on `/proc/sys`) would keep write access to `/proc/sys/kernel/core_pattern`
/// under a bind made now (reviews rest29 H1, fixrestore30 H1, H2). Returns the places masked.
fn cover_in_namespace_of(
    vm: &VmDir,
    pid: i32,
    pidfd: &std::os::fd::OwnedFd,
) -> Result<Vec<PathBuf>> {
    let name = vm.name();
    let ns = format!("/proc/{pid}/ns/mnt");
    let namespace = fs::File::open(&ns).at(&ns).in_vm(name)?;
    let cannot_find = |what: &str, why: String| {
        failed(
            name,
            format!(
                "cannot find the kernel interfaces to {what} in process {pid}'s mount \
                 namespace: {why}"
            ),
        )
    };
    // No peer group is kept off (`&[]`), unlike feather-oci's `host_groups`: a mask
    // propagates to the peers of the place's mount, and a VM's mounts are never peers of the
    // host's (its root is mounted private, and the mount check after refuses a peer of a host
    // mount, review restore30 L8).
    let masked: Vec<PathBuf> = rootfs::MASKED_PROC
        .iter()
        .chain(&rootfs::MASKED_SYS)
        .map(|path| Path::new("/").join(path))
        .collect();
    let missing = feather_confine::restored_mounts::unmasked_places(&namespace, &masked, &[])
        .map_err(|why| cannot_find("mask", why))?;
    if !missing.is_empty() {
        process::mask_in_mount_namespace_of(pidfd, &missing).in_vm(name)?;
    }
    Ok(missing)
}

/// For tests only: set (to anything) in a keeper's environment, the thaw of its restored VM
/// fails ([`thaw_restored`]), as a `cgroup.freeze` that cannot be written would. Unset
/// (always, outside tests), nothing fails.
pub const FAIL_RESTORED_THAW: &str = "FEATHER_TEST_FAIL_RESTORED_THAW";

/// Thaws the restored VM's group, frozen since CRIU's `pre-resume` (review freeze26 F26-8:
/// its failure was only logged, and the VM, recorded running, stayed frozen for good; the
/// callers now end it instead), unless a test fails it ([`FAIL_RESTORED_THAW`]).
pub(crate) fn thaw_restored(name: &feather_core::VmName, cgroup: &Cgroup) -> Result<()> {
    let cannot = |why: String| {
        failed(
            name,
            format!(
                "cannot thaw its restored processes (held frozen for their check in {}): \
                 {why}; they were killed and the restore failed",
                cgroup.v2_dir().unwrap_or_default().display()
            ),
        )
    };
    if crate::test_hooks::set(FAIL_RESTORED_THAW).is_some() {
        return Err(cannot(format!("{FAIL_RESTORED_THAW} is set (a test)")));
    }
    cgroup
        .thaw()
        .map_err(|e| cannot(feather_core::error::causes(&e)))
}

/// How long a lazy restore waits for `criu lazy-pages` to listen.
const LAZY_PATIENCE: Duration = Duration::from_secs(10);

/// Runs `program`; returns only on failure.
fn exec(program: &Path, args: &[std::ffi::OsString]) -> std::io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let argv: std::result::Result<Vec<CString>, _> = std::iter::once(program.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| CString::new(a.as_bytes()))
        .collect();
    match argv {
        Ok(argv) => match nix::unistd::execv(&argv[0], &argv) {
            Err(e) => e.into(),
        },
        Err(_) => std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an argument contains a NUL byte",
        ),
    }
}

/// In a keeper restoring a VM received by a migration: a pidfd of the `feather serve` that
/// waits for the sender's confirmation, opened before the restore so that its end cannot be
/// missed. None for an ordinary restore.
pub(crate) fn hold(vm: &VmDir) -> Result<Option<std::os::fd::OwnedFd>> {
    let Some(receiver) = held_for(vm) else {
        return Ok(None);
    };
    receiver.pidfd().map(Some).ok_or_else(|| {
        failed(
            vm.name(),
            format!(
                "the `feather serve` receiving it (pid {}) ended",
                receiver.pid
            ),
        )
    })
}

/// How long a received VM waits, stopped, for the migration to be confirmed.
const HOLD_PATIENCE: Duration = Duration::from_secs(600);

/// In a keeper whose VM came back stopped for a migration (see [`hold`]): waits until
/// `feather serve` says the sender has released it (`Request::Resume`), then — once
/// `recorded` says its record as running is on disk — continues every process of the VM,
/// answers, runs `once_running` and returns true. If that serve ends first, nothing is heard
/// for [`HOLD_PATIENCE`], or the record failed, returns false: the sender keeps the VM, and
/// this copy must never run.
pub(crate) fn await_release(
    vm: &VmDir,
    serve: &std::os::fd::OwnedFd,
    init: &ChildProcess,
    listener: &std::os::unix::net::UnixListener,
    cgroup: Option<&Cgroup>,
    recorded: &mut dyn FnMut() -> std::result::Result<(), String>,
    once_running: &dyn Fn(),
) -> bool {
    use nix::poll::{poll, PollFd, PollFlags};
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + HOLD_PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds = [
            PollFd::new(serve.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(init.pidfd.as_fd(), PollFlags::POLLIN),
        ];
        let _ = poll(&mut fds, feather_sys::timed::poll_timeout(left));
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[0]) {
            return false;
        }
        // The keeper's own loop hears of init's end.
        if ready(&fds[2]) {
            return true;
        }
        if !ready(&fds[1]) {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let decision = protocol::read_request(&stream).map(|r| decide::while_held(&r));
        match decision {
            Ok(WhileHeld::Release) => {
                // Its record as running is on disk before any of it runs.
                if let Err(why) = recorded() {
                    let _ = protocol::write_response(
                        &stream,
                        &Response::Error {
                            message: format!("VM {}: cannot record it running: {why}", vm.name()),
                        },
                    );
                    return false;
                }
                let _ = fs::remove_file(vm.checkpoint_dir().join(HOLD));
                // Frozen since CRIU's pre-resume, and stopped by its SIGSTOP. Still frozen, it
                // is ended here, and the sender keeps the VM.
                if let Some(Err(e)) = cgroup.map(|cgroup| thaw_restored(vm.name(), cgroup)) {
                    let message = feather_core::error::causes(&e);
                    eprintln!("feather keeper {}: {message}", vm.name());
                    let _ = protocol::write_response(&stream, &Response::Error { message });
                    return false;
                }
                for pid in cgroup.map(Cgroup::members).unwrap_or_default() {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                }
                let _ = nix::sys::signal::kill(init.pid, nix::sys::signal::Signal::SIGCONT);
                let _ = protocol::write_response(
                    &stream,
                    &Response::Running {
                        init_pid: init.pid.as_raw(),
                        ends_released_copy: true,
                    },
                );
                // After the answer: the VM's link, brought up, is not part of its freeze.
                once_running();
                return true;
            }
            Ok(WhileHeld::Status) => {
                let _ = protocol::write_response(
                    &stream,
                    &Response::Running {
                        init_pid: init.pid.as_raw(),
                        ends_released_copy: true,
                    },
                );
            }
            _ => {
                let _ = protocol::write_response(
                    &stream,
                    &Response::Error {
                        message: format!(
                            "VM {}: is arriving by migration and waits for the sending host to \
                             release it; try again in a moment",
                            vm.name()
                        ),
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump's images are flushed through the same open and fsync as any file of the folder:
    /// every entry of it is, and one that cannot be (here a link to nothing, as a file gone
    /// under it) refuses the checkpoint, naming it and the disk to check (review-ckpt32 M1).
    #[test]
    fn the_images_flush_takes_every_entry_of_the_folder_and_names_one_it_cannot() {
        let scratch = feather_testkit::ScratchDir::new("images-sync");
        let images = scratch.0.join("checkpoint");
        fs::create_dir_all(&images).unwrap();
        for file in ["pages-1.img", "core-1.img", LAYERS] {
            fs::write(images.join(file), b"x").unwrap();
        }
        let name: feather_core::VmName = "vm".parse().unwrap();
        sync_images(&name, &images).unwrap();
        let gone = images.join("mm-1.img");
        std::os::unix::fs::symlink(scratch.0.join("nothing"), &gone).unwrap();
        let said = feather_core::error::causes(&sync_images(&name, &images).unwrap_err());
        assert!(
            said.contains("cannot flush its checkpoint's images to disk")
                && said.contains(&gone.display().to_string())
                && said.contains(&format!("check the disk holding {}", images.display())),
            "{said}"
        );
    }

    /// A process the test started, killed and reaped on drop.
    struct Started(std::process::Child);

    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeping() -> Started {
        Started(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        )
    }

    /// A pipe whose read end is non-blocking (as the restoring child's), `text` written in it.
    fn said(text: &str) -> std::os::fd::OwnedFd {
        let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
        let (read, write) = nix::unistd::pipe2(flags).unwrap();
        if !text.is_empty() {
            nix::unistd::write(&write, text.as_bytes()).unwrap();
        }
        read
    }

    /// The namespace the child names is held and given; one it names that is not its own is
    /// an error (review r27 R3: before, the pin was dropped silently); a child that ended
    /// without a word gives none.
    #[test]
    fn the_restoring_childs_namespace_is_held_or_the_restore_fails() {
        let child = sleeping();
        let pid = Pid::from_raw(child.0.id() as i32);
        let own = fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
        let (path, held) =
            hold_restoring_namespace(pid, &said(&own.display().to_string())).unwrap();
        assert_eq!(path.as_deref(), Some(own.as_path()));
        assert!(held.is_some());
        let other = hold_restoring_namespace(pid, &said("mnt:[1]"));
        assert!(other.unwrap_err().to_string().contains("mnt:[1]"));
        let mut silent = Started(std::process::Command::new("true").spawn().unwrap());
        let silent_pid = Pid::from_raw(silent.0.id() as i32);
        // Waited for by its pidfd, which the exit makes readable; reaped after.
        let (path, held) = hold_restoring_namespace(silent_pid, &said("")).unwrap();
        let _ = silent.0.wait();
        assert!(path.is_none() && held.is_none());
    }

    /// A refused restore (any `Err` of the checks, `ready`) kills the held group: a process
    /// of it that init's death does not end (outside init's tree and pid namespace) dies, and
    /// the group stays frozen. Without the group's kill it lived on (review r27 R10).
    #[test]
    fn a_refused_restore_kills_every_process_of_its_held_group() {
        let mut member = sleeping();
        let started = sleeping();
        let pid = Pid::from_raw(started.0.id() as i32);
        let group = feather_confine::held::TestGroup::frozen("vm-refused", &[member.0.id() as i32])
            .unwrap();
        let init = ChildProcess {
            pid,
            pidfd: process::pidfd_open(pid).unwrap(),
        };
        kill_refused(group.hold(), &init);
        // Reaped by `kill_refused`: its pid is no longer the test's to signal.
        std::mem::forget(started);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let status = loop {
            if let Some(status) = member.0.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "the member lives on");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status:?}"
        );
        assert!(group.hold().is_frozen().unwrap(), "the group was thawed");
    }

    fn vm_and_config() -> (VmDir, VmConfig) {
        let root = StateRoot::new(Some(PathBuf::from("/state")));
        let config: VmConfig =
            toml::from_str("name = \"web\"\nid = \"abc\"\nbase = \"/\"\ncreated = 0\n").unwrap();
        (root.vm(&config.name), config)
    }

    /// An overlay's mountinfo entry as the kernel shows it: the options as given (overlay's
    /// escapes), then mountinfo's octal escapes of backslashes.
    fn overlay(at: &str, upper: &Path) -> MountEntry {
        let given = upper.display().to_string().replace('\\', "\\\\");
        MountEntry {
            id: 0,
            parent: 0,
            device: "0:1".into(),
            root: PathBuf::from("/"),
            mount_point: PathBuf::from(at),
            options: "rw".into(),
            optional: Vec::new(),
            fs_type: "overlay".into(),
            source: "overlay".into(),
            super_options: format!(
                "rw,lowerdir=/srv,upperdir={},workdir=/state/w,redirect_dir=off",
                given.replace('\\', "\\134")
            ),
        }
    }

    fn mount(at: &str, fs_type: &str) -> MountEntry {
        MountEntry {
            id: 0,
            parent: 0,
            device: "0:1".into(),
            root: PathBuf::from("/"),
            mount_point: PathBuf::from(at),
            options: "rw".into(),
            optional: Vec::new(),
            fs_type: fs_type.into(),
            source: fs_type.into(),
            super_options: "rw".into(),
        }
    }

    #[test]
    fn the_cgroup_hierarchies_bound_under_sys_fs_cgroup_are_found() {
        let at = |m: &MountEntry| cgroup_hierarchy_at(m);
        assert_eq!(
            at(&mount("/sys/fs/cgroup/pids", "cgroup")),
            Some(PathBuf::from("pids"))
        );
        assert_eq!(
            at(&mount("/sys/fs/cgroup/unified", "cgroup2")),
            Some(PathBuf::from("unified"))
        );
        // The tmpfs they are bound on, a hierarchy elsewhere or deeper, another filesystem.
        assert_eq!(at(&mount("/sys/fs/cgroup", "tmpfs")), None);
        assert_eq!(at(&mount("/sys/fs/cgroup", "cgroup2")), None);
        assert_eq!(at(&mount("/mnt/pids", "cgroup")), None);
        assert_eq!(at(&mount("/sys/fs/cgroup/pids/x", "cgroup")), None);
        assert_eq!(at(&mount("/sys/fs/cgroup/pids", "tmpfs")), None);
    }

    #[test]
    fn a_checkpoint_leaving_the_cgroup_hierarchies_to_criu_is_refused() {
        // An older feather listed the tmpfs at /sys/fs/cgroup but not the hierarchies on it,
        // which CRIU then mounted at the VM's own group.
        let (vm, _) = vm_and_config();
        let refused = services_folders(&vm, None, &[], true).unwrap_err();
        assert!(
            refused.to_string().contains("taken by an older feather"),
            "{refused}"
        );
        // A VM without cgroup mounts at all (no cgroup) has nothing to bind.
        assert!(services_folders(&vm, None, &[], false).unwrap().is_empty());
        let pids = ExternalLayer {
            key: "feather-cgroup-0".into(),
            mount_point: "/sys/fs/cgroup/pids".into(),
            cgroup_services: true,
            ..ExternalLayer::default()
        };
        let missing = services_folders(&vm, None, &[pids], true).unwrap_err();
        assert!(
            missing.to_string().contains("cgroup hierarchy pids"),
            "{missing}"
        );
    }

    #[test]
    fn only_overlays_over_the_vms_own_layer_folders_are_its_layers() {
        let (vm, config) = vm_and_config();
        let own = layers::Layer::submount(&vm, &config, "/srv".into()).upper;
        assert!(is_own_layer(&vm, &config, &overlay("/srv", &own)));
        // A mount point whose folder name needs escapes (`-` is `\x2d` in it).
        let escaped = layers::Layer::submount(&vm, &config, "/srv/my-data".into()).upper;
        assert!(is_own_layer(
            &vm,
            &config,
            &overlay("/srv/my-data", &escaped)
        ));
        // Another VM's overlay bound in (a Shuttle hand-over), wherever this VM moved it: even
        // at a mount point of a real layer, its upper folder is not this VM's.
        let theirs = Path::new("/state/vms/other/upper");
        assert!(!is_own_layer(
            &vm,
            &config,
            &overlay("/run/feather-shuttle/x", theirs)
        ));
        assert!(!is_own_layer(&vm, &config, &overlay("/srv", theirs)));
        // This VM's layer folder for /srv, mounted elsewhere, is no layer of that elsewhere.
        assert!(!is_own_layer(&vm, &config, &overlay("/root", &own)));
        assert!(!is_own_layer(&vm, &config, &overlay("/", &vm.upper())));
    }
}

//! The files of a VM's checkpoint folder that both sides read: the asker's (`feather
//! checkpoint`, `restore`, `migrate`, `serve`: [`crate::checkpoint`], [`crate::migration`]) and
//! the keeper's, which dumps and restores the VM ([`crate::snapshot`]).

use std::collections::HashSet;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use feather_core::display::escape_path;
use feather_core::VmDir;
use feather_migrate::archive::read_at_most;
use feather_sys::process;
use nix::unistd::Pid;

use crate::error::{RecordRefusal, Result, VmError};

/// The file in an images folder that says a dump completed.
pub(crate) const INVENTORY: &str = "inventory.img";

/// The VM's layers over other host filesystems at the time of the dump (see [`ExternalLayer`]).
pub(crate) const LAYERS: &str = "layers.json";

/// The subnet of the VM's address (`--net private`) where it was checkpointed.
pub(crate) const SUBNET: &str = "subnet.json";

/// Present when the VM's network namespace was not dumped (`--net none`: loopback only;
/// `--net private`: what feather made and nothing else, `feather_net::as_made`; the VM cannot
/// change either): the restoring side makes one anew, as at a start, and hands it to CRIU.
/// Saves CRIU's `ip` and `iptables-save` runs at the dump, their counterparts at the restore,
/// and the veth pair CRIU made.
pub(crate) const EXTERNAL_NETNS: &str = "external-netns";

/// Present, saying why, when a private network's namespace differed from what feather made and
/// CRIU dumped it whole.
pub(crate) const NETNS_DUMPED: &str = "netns-dumped";

/// Present while a VM restored for a migration waits for `feather serve` to confirm it; holds
/// that serve's pid and start time ([`Receiver`]). See `snapshot::await_release`.
pub(crate) const HOLD: &str = "hold";

/// A layer of the VM over another host filesystem (a separate /home, a tmpfs under /mnt). CRIU
/// does not dump these overlays (it could not mount them again: their options name host
/// folders in feather's escaped spelling, which it mangles); the restoring side mounts each
/// from the VM's own folder and hands it to CRIU under its key.
///
/// The files feather generates for the VM (`/etc/hosts`, …) are listed here too, with
/// `generated`: they are bound from the VM's run folder, which lies elsewhere in another state
/// root, so the restoring side names where its own copies are.
///
/// So are the masks over kernel folders (`/proc/acpi`, `/sys/firmware`, …), with `mask`: empty
/// read-only tmpfs, which CRIU would otherwise archive with `tar --gzip` and unpack again, a
/// program run each way per mask during a migration's freeze; the restoring side mounts one
/// such tmpfs and hands it to CRIU for each. And so is the read-only tmpfs at `/sys/fs/cgroup`
/// with `cgroup_top`, the folders it holds for the cgroup hierarchies bound there, which CRIU
/// binds again on them. And so is each hierarchy bound there, with `cgroup_services`: the
/// restoring side hands CRIU the `services/` folder of the VM's group in that hierarchy, as a
/// start binds it; left to CRIU, which mounts a cgroup hierarchy anew at the cgroup
/// namespace's root, the restored VM had its own group there, its limits writable; its
/// `groups` are the units' groups in it, which CRIU leaves out.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExternalLayer {
    pub(crate) key: String,
    pub(crate) mount_point: PathBuf,
    #[serde(default)]
    pub(crate) generated: bool,
    #[serde(default)]
    pub(crate) mask: bool,
    #[serde(default)]
    pub(crate) cgroup_top: Option<Vec<PathBuf>>,
    #[serde(default)]
    pub(crate) cgroup_services: bool,
    /// With `cgroup_services`: the groups below that `services/` folder at the dump, with their
    /// processes and limits, which the restore puts back (see [`crate::service_groups`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) groups: Vec<crate::service_groups::SavedGroup>,
}

/// Present while a VM received by a post-copy migration has its memory fetched from the
/// sender's page server by `criu lazy-pages` (started by `feather serve`): its restore is lazy.
pub(crate) const LAZY: &str = "lazy-pages";

/// The record a sending host writes in the VM's folder (durably) before it lets the VM go to
/// its receiver, naming the receiver, and removes only once the receiver said it could not run
/// it: from then on the copy here must never run again (a start, restore, commit or checkpoint
/// here refuses it, its keeper ends it). Beside the checkpoint folder, not in it: the clean-up
/// of a failed dump empties that folder, and the next checkpoint sets it aside. Feathers of
/// before session 22 wrote it in the checkpoint folder, where it is still honoured (and an
/// archive holding it refused, see `imported`).
pub(crate) const RELEASED_TO: &str = "released-to";

/// Where [`RELEASED_TO`] is written for `vm`.
pub(crate) fn release_record(vm: &VmDir) -> PathBuf {
    vm.path().join(RELEASED_TO)
}

/// The receiver a release record of `vm` names (as written: a host and port), and the
/// record's path, if the VM was let go to another host. Only a record that is not there means
/// it was not: one that cannot be read (EIO, EACCES, a folder, not UTF-8) counts as written,
/// to a receiver its error stands for, for a copy taken for never let go could run twice.
pub(crate) fn released_to(vm: &VmDir) -> Option<(String, PathBuf)> {
    [release_record(vm), vm.checkpoint_dir().join(RELEASED_TO)]
        .into_iter()
        .find_map(|record| match fs::read_to_string(&record) {
            Ok(to) => Some((to.trim().to_owned(), record)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some((format!("a host its unreadable record hides ({e})"), record)),
        })
}

/// Refuses `what` (a start, restore, commit, checkpoint: something that would let the copy
/// here run, or freeze and thaw it) of a VM a migration let go to another host.
pub(crate) fn refuse_if_released(vm: &VmDir, what: &str) -> Result<()> {
    let Some((to, record)) = released_to(vm) else {
        return Ok(());
    };
    Err(crate::error::failed(
        vm.name(),
        format!(
            "was let go to {} by a migration, and may run there: {what} here could run it \
             twice. Check with `feather ls` there; `feather rm {}` removes the copy here; if it \
             does not run there, remove {} and try again",
            feather_core::display::escape_for_terminal(&to),
            vm.name(),
            record.display()
        ),
    ))
}

/// The `feather serve` a VM received by migration waits for (in [`HOLD`]): a process named by
/// its pid and its start time (`/proc/PID/stat` field 22), which together name one process for
/// the machine's uptime. The pid alone names whatever has it now: once that serve ended, any
/// process that got its pid — a VM's among them, whose command line is the VM's to choose —
/// would pass for it, and a copy the sender kept would be restored here as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Receiver {
    pub(crate) pid: i32,
    /// None in a hold an older feather wrote (its pid alone): such a receiver counts as ended.
    start_ticks: Option<u64>,
}

impl Receiver {
    /// This process, as the receiver of a migration; None when its start time cannot be
    /// read (no /proc): a hold without it would count as a receiver that ended, and the copy
    /// would be refused while this process still receives it.
    pub(crate) fn this_process() -> Option<Receiver> {
        let pid = std::process::id() as i32;
        Some(Receiver {
            pid,
            start_ticks: Some(process::start_ticks(Pid::from_raw(pid))?),
        })
    }

    /// The text of a [`HOLD`] file: the pid and the start time.
    pub(crate) fn to_text(self) -> String {
        match self.start_ticks {
            Some(ticks) => format!("{} {ticks}", self.pid),
            None => self.pid.to_string(),
        }
    }

    fn parse(text: &str) -> Option<Receiver> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start_ticks = match words.next() {
            Some(ticks) => Some(ticks.parse().ok()?),
            None => None,
        };
        Some(Receiver { pid, start_ticks })
    }

    /// A pidfd of the receiver while it runs; None once it ended, whatever has its pid since.
    /// The pidfd is opened first: a process started when the receiver did, found at its pid
    /// after that, is the one the pidfd holds (the pid was not free in between).
    pub(crate) fn pidfd(self) -> Option<OwnedFd> {
        let start_ticks = self.start_ticks?;
        let pid = Pid::from_raw(self.pid);
        let pidfd = process::pidfd_open(pid).ok()?;
        (process::start_ticks(pid) == Some(start_ticks)).then_some(pidfd)
    }

    /// Whether the receiver still runs (see [`Receiver::pidfd`]).
    pub(crate) fn runs(self) -> bool {
        self.pidfd().is_some()
    }
}

/// The `feather serve` a VM received by migration waits for, if it waits.
pub(crate) fn held_for(vm: &VmDir) -> Option<Receiver> {
    Receiver::parse(&fs::read_to_string(vm.checkpoint_dir().join(HOLD)).ok()?)
}

/// The file in an images folder that names the format of the checkpoint: its records (this
/// folder's files besides CRIU's images, [`LAYERS`] first) and what they mean. A feather
/// restores and imports only the formats it knows; an archive or a migration carries the
/// file with the checkpoint.
pub(crate) const FORMAT: &str = "format";

/// The format this feather writes. 1 is a checkpoint without a [`FORMAT`] file (every feather
/// before the file), read as 2; 2 has the cgroup hierarchies as `feather-cgroup-N` external
/// mounts (an older one is refused in `snapshot::services_folders`).
pub(crate) const FORMAT_VERSION: u32 = 2;

/// Writes [`FORMAT`] into the images folder `images` of a dump.
pub(crate) fn write_format(images: &Path) -> std::io::Result<()> {
    fs::write(images.join(FORMAT), format!("{FORMAT_VERSION}\n"))
}

/// Where a checkpoint's records are read, which decides what the user can do about a refusal.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reading<'a> {
    /// The VM's own checkpoint, restored here (`restore`, the keeper).
    Restore,
    /// An archive being imported (`restore --import FILE`, a migration's): it names it.
    Import(&'a str),
}

/// The most a dump writes into `layers.json`: its groups below `services/` are bounded
/// ([`crate::service_groups`]), about 3 MiB for the most a VM may make in a dozen hierarchies.
/// A longer file was made by hand, and is not read into the host's memory.
const MAX_LAYERS: u64 = 8 << 20;

/// Where a checkpoint's layers are placed on this host: the VM's base, and the host's state
/// folders (`hiding::state_folders`), where a restore never makes a layer's overlay.
pub(crate) struct Placement<'a> {
    pub base: &'a Path,
    pub state_folders: &'a [PathBuf],
}

/// The layers of the checkpoint in `images` ([`LAYERS`]; none without the file), read and
/// checked before anything is derived from them: refused if its format is not one this feather
/// knows, or an entry is not one a dump writes (see [`check_layer`]), or a layer lies over a
/// state folder of the host's (see [`check_placement`]).
pub(crate) fn read_layers(
    images: &Path,
    vm: &impl std::fmt::Display,
    reading: Reading,
    placement: &Placement,
) -> Result<Vec<ExternalLayer>> {
    check_format(images, vm, reading)?;
    let refused = |entry: String, why: String| refusal(vm, reading, LAYERS, entry, why, false);
    let bytes = match read_at_most(&images.join(LAYERS), MAX_LAYERS) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Err(refused(
                "the file".into(),
                format!("is longer than the {} MiB a dump writes", MAX_LAYERS >> 20),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(refused("the file".into(), format!("cannot be read ({e})"))),
    };
    let layers: Vec<ExternalLayer> = serde_json::from_slice(&bytes)
        .map_err(|e| refused("the list".into(), format!("is not a list of layers ({e})")))?;
    let mut keys = HashSet::new();
    let mut points = HashSet::new();
    for (i, layer) in layers.iter().enumerate() {
        let entry = || {
            format!(
                "entry {} (key \"{}\", mount point {})",
                i + 1,
                feather_core::display::escape_for_terminal(&layer.key),
                escape_path(&layer.mount_point)
            )
        };
        check_layer(layer).map_err(|why| refused(entry(), why))?;
        check_placement(layer, placement).map_err(|why| refused(entry(), why))?;
        if !keys.insert(&layer.key) {
            return Err(refused(entry(), "its key is an earlier entry's too".into()));
        }
        if !points.insert(&layer.mount_point) {
            return Err(refused(
                entry(),
                "its mount point is an earlier entry's too".into(),
            ));
        }
    }
    Ok(layers)
}

/// Refuses a checkpoint whose [`FORMAT`] this feather does not know (a newer feather's), or
/// cannot read. No file: format 1.
fn check_format(images: &Path, vm: &impl std::fmt::Display, reading: Reading) -> Result<()> {
    let text = match read_at_most(&images.join(FORMAT), 16) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            let why = "is longer than any format feather writes".to_owned();
            return Err(refusal(vm, reading, FORMAT, "the file".into(), why, false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            let why = format!("cannot be read ({e})");
            return Err(refusal(vm, reading, FORMAT, "the file".into(), why, false));
        }
    };
    let shown = feather_core::display::escape_bytes(text.trim_ascii()).into_owned();
    let version: Option<u32> = std::str::from_utf8(text.trim_ascii())
        .ok()
        .and_then(|t| t.parse().ok());
    match version {
        Some(1..=FORMAT_VERSION) => Ok(()),
        Some(newer) if newer > FORMAT_VERSION => Err(refusal(
            vm,
            reading,
            FORMAT,
            format!("format {newer}"),
            format!("written by a newer feather (this one knows formats 1 to {FORMAT_VERSION})"),
            true,
        )),
        _ => Err(refusal(
            vm,
            reading,
            FORMAT,
            format!("\"{shown}\""),
            "is no format feather writes".into(),
            false,
        )),
    }
}

/// Why the filesystem layer `layer` may not be placed over the base: its lower folder (the
/// base's folder at its mount point, also where links there lead) lies at or beneath a state
/// folder, which a start never layers (mounts in state folders are no VM's layers) and which
/// the VM's hiding covers only in a layer above it. A restore would otherwise mount an overlay
/// of a state root, or of another VM's layers, into the VM (review rev25 L1).
fn check_placement(
    layer: &ExternalLayer,
    placement: &Placement,
) -> std::result::Result<(), String> {
    if layer_kind(&layer.key) != Some("layer") {
        return Ok(());
    }
    let rel = layer
        .mount_point
        .strip_prefix("/")
        .unwrap_or(&layer.mount_point);
    let base = placement.base;
    let canonical_base = fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    let lowers = [base.join(rel), canonical_base.join(rel)]
        .into_iter()
        .chain(fs::canonicalize(base.join(rel)).ok());
    for lower in lowers {
        if let Some(folder) = placement
            .state_folders
            .iter()
            .find(|folder| lower.starts_with(folder))
        {
            return Err(format!(
                "it lies over {}, a state folder of this host's, hidden from every VM, where no \
                 VM's layer is ever made",
                escape_path(folder)
            ));
        }
    }
    Ok(())
}

/// Why `layer` is not an entry a dump writes: its key names its kind (`feather-<kind>-<n>`),
/// the kind what it is and where; a mount point is an absolute path of plain names (never
/// `..`, `.`, an empty name or a NUL: a restore derives host folders from it).
fn check_layer(layer: &ExternalLayer) -> std::result::Result<(), String> {
    let point = &layer.mount_point;
    check_vm_path(point)?;
    let flags = [
        layer.generated,
        layer.mask,
        layer.cgroup_top.is_some(),
        layer.cgroup_services,
    ];
    if flags.iter().filter(|f| **f).count() > 1 {
        return Err("it is of more than one kind".into());
    }
    let kind = layer_kind(&layer.key).ok_or("its key is none a dump gives")?;
    let cgroups = Path::new("/sys/fs/cgroup");
    let below_cgroups = point.strip_prefix(cgroups).ok();
    let fits = match kind {
        "layer" => {
            let own = ["proc", "sys", "dev", "run"];
            flags == [false; 4]
                && !own
                    .iter()
                    .any(|tree| point.starts_with(Path::new("/").join(tree)))
        }
        "etc" => layer.generated && feather_net::etc::generated(Path::new("/"), point).is_some(),
        "mask" => layer.mask,
        "cgroup-top" => {
            let folders = layer.cgroup_top.as_deref().unwrap_or_default();
            return match point == cgroups {
                true => check_cgroup_folders(folders),
                false => Err("it is not at /sys/fs/cgroup".into()),
            };
        }
        "cgroup" => {
            layer.cgroup_services && below_cgroups.is_some_and(|p| p.components().count() == 1)
        }
        _ => false,
    };
    match fits {
        true => Ok(()),
        false => Err("its key does not fit its kind or its mount point".into()),
    }
}

/// The kind a dump's key names: `feather-cgroup-top`, or `feather-<kind>-<n>`.
fn layer_kind(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("feather-")?;
    if rest == "cgroup-top" {
        return Some(rest);
    }
    let (kind, number) = rest.rsplit_once('-')?;
    let numbered = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    let known = ["layer", "etc", "mask", "cgroup"].contains(&kind);
    (numbered && known).then_some(kind)
}

/// The folders the tmpfs at `/sys/fs/cgroup` holds: one plain name each, each once.
fn check_cgroup_folders(folders: &[PathBuf]) -> std::result::Result<(), String> {
    let mut seen = HashSet::new();
    for folder in folders {
        if !plain_name(folder.as_os_str().as_encoded_bytes()) {
            return Err(format!(
                "its folder {} is not one plain name",
                escape_path(folder)
            ));
        }
        if !seen.insert(folder) {
            return Err(format!(
                "its folder {} is listed twice",
                escape_path(folder)
            ));
        }
    }
    Ok(())
}

/// Whether `name` is one plain name of a folder or file: not empty, `.` or `..`, without a
/// `/` or a NUL byte.
fn plain_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// Whether `path` is a path in the VM a dump writes: `/` then plain names, at least one.
fn check_vm_path(path: &Path) -> std::result::Result<(), String> {
    let bytes = path.as_os_str().as_encoded_bytes();
    let Some(names) = bytes.strip_prefix(b"/") else {
        return Err("the mount point is not an absolute path".into());
    };
    match names.split(|b| *b == b'/').all(plain_name) {
        true => Ok(()),
        false => Err(
            "the mount point is not a path of plain names (it has `..`, `.`, an empty name or \
             a NUL byte, or is `/`)"
                .into(),
        ),
    }
}

/// The refusal of a checkpoint's record `file`, at `entry`, for `why`; `newer`: the format of
/// a newer feather, else a record no feather writes (damaged or altered).
fn refusal(
    vm: &impl std::fmt::Display,
    reading: Reading,
    file: &str,
    entry: String,
    why: String,
    newer: bool,
) -> VmError {
    let (file, remedy) = match (reading, newer) {
        (Reading::Restore, true) => (
            file.to_owned(),
            format!("nothing was restored: restore it with a feather as new as the one that took it, or start the VM anew here (`feather start {vm}`)"),
        ),
        (Reading::Restore, false) => (
            file.to_owned(),
            format!("nothing was made or restored for it: the checkpoint is damaged or was altered; start the VM anew (`feather start {vm}`) or remove it (`feather rm {vm}`)"),
        ),
        (Reading::Import(archive), true) => (
            format!("{file} in {archive}"),
            "nothing was imported: import it with a feather as new as the one that exported it".into(),
        ),
        (Reading::Import(archive), false) => (
            format!("{file} in {archive}"),
            "nothing was imported: the archive is damaged or was altered; export the VM again where it was checkpointed".into(),
        ),
    };
    VmError::CheckpointRecord(Box::new(RecordRefusal {
        vm: vm.to_string(),
        file,
        entry,
        why,
        remedy,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(key: &str, point: &str) -> ExternalLayer {
        ExternalLayer {
            key: key.into(),
            mount_point: point.into(),
            ..ExternalLayer::default()
        }
    }

    #[test]
    fn the_entries_a_dump_writes_pass() {
        let entries = [
            layer("feather-layer-0", "/mnt/data-1"),
            ExternalLayer {
                generated: true,
                ..layer("feather-etc-2", "/etc/hosts")
            },
            ExternalLayer {
                mask: true,
                ..layer("feather-mask-10", "/proc/acpi")
            },
            ExternalLayer {
                cgroup_top: Some(vec!["unified".into(), "pids".into()]),
                ..layer("feather-cgroup-top", "/sys/fs/cgroup")
            },
            ExternalLayer {
                cgroup_services: true,
                ..layer("feather-cgroup-0", "/sys/fs/cgroup/pids")
            },
        ];
        for entry in &entries {
            assert_eq!(check_layer(entry), Ok(()), "{entry:?}");
        }
    }

    #[test]
    fn mount_points_that_leave_or_bend_the_vms_tree_are_refused() {
        for point in [
            "/mnt/../../../tmp",
            "/..",
            "mnt/relative",
            "/",
            "",
            "/mnt//data",
            "/mnt/./data",
            "/mnt/data/",
            "/mnt/nul\0byte",
        ] {
            assert!(
                check_layer(&layer("feather-layer-0", point)).is_err(),
                "{point:?}"
            );
        }
    }

    #[test]
    fn keys_and_kinds_must_agree() {
        let refused = [
            layer("feather-layer-x", "/mnt"),
            layer("other-layer-0", "/mnt"),
            layer("feather-layer-0", "/proc/x"),
            ExternalLayer {
                generated: true,
                ..layer("feather-etc-0", "/etc/passwd")
            },
            ExternalLayer {
                cgroup_services: true,
                ..layer("feather-cgroup-0", "/sys/fs/cgroup/a/b")
            },
            ExternalLayer {
                mask: true,
                generated: true,
                ..layer("feather-mask-0", "/etc/hosts")
            },
        ];
        for entry in &refused {
            assert!(check_layer(entry).is_err(), "{entry:?}");
        }
    }

    #[test]
    fn cgroup_folders_are_plain_names_each_once() {
        for folders in [
            vec!["../../../tmp/x"],
            vec!["/tmp/x"],
            vec!["a/b"],
            vec![".."],
            vec![""],
            vec!["pids", "pids"],
        ] {
            let top = ExternalLayer {
                cgroup_top: Some(folders.iter().map(PathBuf::from).collect()),
                ..layer("feather-cgroup-top", "/sys/fs/cgroup")
            };
            assert!(check_layer(&top).is_err(), "{folders:?}");
        }
    }

    #[test]
    fn a_layers_list_longer_than_a_dump_writes_is_refused_unread() {
        let scratch = feather_testkit::ScratchDir::new("layers");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let longest = vec![b' '; MAX_LAYERS as usize];
        fs::write(dir.join(LAYERS), &longest).unwrap();
        let nowhere = Placement {
            base: Path::new("/"),
            state_folders: &[],
        };
        let longest_read = read_layers(&dir, &"web", Reading::Restore, &nowhere);
        fs::write(dir.join(LAYERS), [longest.as_slice(), b" "].concat()).unwrap();
        let longer_read = read_layers(&dir, &"web", Reading::Restore, &nowhere);
        // The longest a dump writes is read (and refused only as not a list).
        let e = longest_read.unwrap_err().to_string();
        assert!(e.contains("is not a list") && !e.contains("longer"), "{e}");
        let e = longer_read.unwrap_err().to_string();
        assert!(e.contains("longer than the 8 MiB a dump writes"), "{e}");
    }

    #[test]
    fn a_record_that_is_a_link_or_a_fifo_is_refused_without_waiting_or_following() {
        let scratch = feather_testkit::ScratchDir::new("records");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("target"), "2\n").unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
        nix::unistd::mkfifo(
            &dir.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let plain = read_at_most(&dir.join("target"), 16);
        let link = read_at_most(&dir.join("link"), 16);
        let fifo = read_at_most(&dir.join("fifo"), 16);
        assert_eq!(plain.unwrap(), Some(b"2\n".to_vec()));
        assert!(link.is_err(), "a link was followed");
        assert!(fifo.is_err(), "a FIFO was read");
    }
}

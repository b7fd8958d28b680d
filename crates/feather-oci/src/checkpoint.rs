//! `checkpoint`: a running container's process tree dumped by CRIU (feather's, found by
//! feather-migrate) into `--image-path`, with runc's flags; `restore` (in [`crate::restore`])
//! brings it back as a container of a bundle.
//!
//! What the dump leaves out, and the restore puts back from the restoring side's config, as
//! runc does: the bind mounts of `mounts` (keyed by destination), the container's own cgroup
//! folders bound in under a `cgroup` mount (keyed by hierarchy: the restored container's group
//! has another path), and a network namespace joined by `path` (the engine hands over a new
//! one). The standard descriptors the engine gave are recorded in `descriptors.json` (runc's
//! file): pipes among them are replaced by the restoring process's own at restore.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use feather_migrate::criu::{common_options, Criu, DUMP_LOG};
use feather_migrate::rpc;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::annotations::Feather;
use crate::cgroups::Groups;
use crate::store::{Container, Status};

/// The key a joined network namespace is dumped under (runc's).
pub const NET_KEY: &str = "extRootNetNS";

/// The standard descriptors' targets at the dump, for the restore.
pub const DESCRIPTORS: &str = "descriptors.json";

pub struct CheckpointArgs {
    pub id: String,
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub manage_cgroups_mode: Option<String>,
    /// runc's flags feather-oci does not support, by name, when given.
    pub refused: Vec<&'static str>,
}

/// runc's `--manage-cgroups-mode`. feather-oci makes the restored container's cgroup itself,
/// from the restoring config's `linux.resources`, and restores into it, so CRIU leaves cgroups
/// alone: `soft` (runc's default) and `ignore` both mean that. `full` and `strict` would have
/// CRIU recreate the dumped groups' properties, which the config decides here.
pub fn cgroups_mode(mode: Option<&str>) -> Result<i32> {
    match mode {
        None | Some("soft" | "ignore") => Ok(rpc::CgMode::Ignore as i32),
        Some(other) => bail!("--manage-cgroups-mode {other}: not supported by feather-oci (soft or ignore: the restored container's cgroup is made from its config's linux.resources)"),
    }
}

/// Why each refused flag is refused.
pub fn refusal(flag: &str) -> String {
    let why = match flag {
        "--pre-dump" | "--parent-path" => "pre-copy needs the kernel's soft-dirty page tracking, which this kernel lacks; checkpoint in one step",
        "--lazy-pages" | "--page-server" | "--status-fd" => "lazy (post-copy) restores are feather migrate's, for feather VMs",
        "--auto-dedup" => "images are written whole",
        "--empty-ns" => "every namespace of the container is dumped or given back by the restoring config",
        _ => "not supported",
    };
    format!("{flag}: not supported by feather-oci ({why})")
}

/// Refuses what a checkpoint (or restore) of this config cannot carry.
pub fn check_config(spec: &Spec, action: &str) -> Result<()> {
    let feather = Feather::parse(spec)?;
    let confinement = crate::confine::Confinement::of(feather.confine, spec);
    if confinement.scopes_abstract_sockets() {
        // As for a feather VM with --net host: CRIU cannot put a process back into a Landlock
        // domain that scopes abstract unix sockets.
        bail!("org.feather.confine: {action} of a confined container on the host's network is not supported (its Landlock domain scopes the host's abstract unix sockets, which CRIU cannot restore); give it a network namespace of its own, or annotate org.feather.confine=none (which the node's annotation policy must allow)");
    }
    if confinement.is_on() && shares_host_pids(spec) {
        // CRIU restores no Landlock domain: in the host's pid namespace the scoped signals are
        // all that keeps the container's root (the host's uid 0) from signalling the host's
        // processes, and a restore would bring it back without them.
        bail!("org.feather.confine: {action} of a confined container in the host's pid namespace is not supported (its Landlock domain keeps it from signalling the host's processes, and CRIU cannot restore that domain); give it a pid namespace of its own (linux.namespaces: pid), or annotate org.feather.confine=none (which the node's annotation policy must allow)");
    }
    if feather.base_is_host() {
        bail!("annotation org.feather.base=host: {action} of a container over the host is not supported (its layer is a tmpfs that is not part of the images; feather checkpoint works on feather VMs)");
    }
    if spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) {
        bail!("process.terminal: {action} of a container with a terminal is not supported by feather-oci");
    }
    let mut joined = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.path().is_some() && n.typ() != LinuxNamespaceType::Network);
    if let Some(namespace) = joined.next() {
        bail!(
            "linux.namespaces[{}].path: {action} of a container in another's namespace is not supported (only a network namespace may be joined)",
            namespace.typ()
        );
    }
    Ok(())
}

/// Whether the config gives the container no pid namespace: it lives in the runtime's (the
/// host's). One joined by `path` is refused by [`check_config`] on its own.
fn shares_host_pids(spec: &Spec) -> bool {
    !spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|all| all.iter().any(|n| n.typ() == LinuxNamespaceType::Pid))
}

/// A mount CRIU leaves out of the dump and takes from the restoring side: its mount point
/// inside the container, its key, and where it comes from on this side.
pub struct External {
    pub inside: PathBuf,
    pub key: String,
    pub source: PathBuf,
    /// A cgroup folder (its mount point lies in the tmpfs CRIU restores), not a config mount.
    pub cgroup: bool,
    /// The config binds it read-only (`ro`).
    pub read_only: bool,
}

/// The config's bind mounts and the cgroup folders bound in under its `cgroup` mounts.
pub fn external_mounts(spec: &Spec, bundle: &Path, groups: &Groups) -> Vec<External> {
    let mut externals = Vec::new();
    for mount in spec.mounts().iter().flatten() {
        let typ = mount.typ().as_deref().unwrap_or_default();
        let destination = mount.destination();
        let options = mount.options().iter().flatten();
        if typ == "cgroup" || typ == "cgroup2" {
            for (name, hierarchy) in crate::cgroups::hierarchies() {
                let own = groups.dir_in(&hierarchy);
                if own.is_dir() {
                    externals.push(External {
                        inside: destination.join(&name),
                        key: format!("cgroup-{name}"),
                        source: own,
                        cgroup: true,
                        // `create` binds the folders read-only under a read-only mount.
                        read_only: options.clone().any(|o| o == "ro"),
                    });
                }
            }
            continue;
        }
        let bind = typ == "bind" || options.clone().any(|o| o == "bind" || o == "rbind");
        if bind {
            let source = mount.source().clone().unwrap_or_default();
            externals.push(External {
                inside: destination.clone(),
                key: destination.display().to_string(),
                source: if source.is_relative() {
                    bundle.join(source)
                } else {
                    source
                },
                cgroup: false,
                read_only: options.clone().any(|o| o == "ro"),
            });
        }
    }
    externals
}

/// The joined network namespace of `spec`, if any.
pub fn joined_network(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .iter()
        .flatten()
        .find(|n| n.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

pub fn checkpoint(root: &Path, args: &CheckpointArgs) -> Result<()> {
    if let Some(flag) = args.refused.first() {
        bail!("checkpoint {}", refusal(flag));
    }
    let mode = cgroups_mode(args.manage_cgroups_mode.as_deref())?;
    let container = Container::load(root, &args.id)?;
    if !matches!(container.status(), Status::Running | Status::Paused) {
        bail!(
            "cannot checkpoint container {}: it is {} (only a running or paused container can be checkpointed)",
            args.id,
            container.status().name()
        );
    }
    let spec = container.config()?;
    check_config(&spec, "checkpoint")?;
    let criu = Criu::locate()?;
    let images = open_folder(&args.image_path, "--image-path")?;
    let work = match &args.work_path {
        Some(path) => Some(open_folder(path, "--work-path")?),
        None => None,
    };
    let pid = container.record.pid;
    let mut external = write_descriptors(pid, &args.image_path)?;
    external.extend(
        external_mounts(&spec, &container.record.bundle, &container.groups())
            .into_iter()
            .map(|m| format!("mnt[{}]:{}", m.inside.display(), m.key)),
    );
    if let Some(path) = joined_network(&spec) {
        let inode = fs::metadata(&path)
            .with_context(|| format!("linux.namespaces[network].path {}", path.display()))?
            .ino();
        external.push(format!("net[{inode}]:{NET_KEY}"));
    }
    let opts = rpc::Opts {
        images_dir_fd: images.as_raw_fd(),
        work_dir_fd: work.as_ref().map(AsRawFd::as_raw_fd),
        pid: Some(pid),
        log_file: Some(DUMP_LOG.into()),
        leave_running: Some(args.leave_running),
        tcp_established: Some(args.tcp_established),
        file_locks: Some(args.file_locks),
        ext_unix_sk: Some(args.ext_unix_sk),
        shell_job: Some(args.shell_job),
        manage_cgroups_mode: Some(mode),
        external,
        // CRIU freezes the group, seizes its tasks while they cannot run, and leaves the group
        // as it found it: containerd pauses a container, checkpoints it with --leave-running,
        // copies its writable layer and only then resumes it — the layer must not change
        // between the dump and that copy (a thaw of ours let a writer truncate a file whose
        // size CRIU had just recorded, and the restore failed: "File tmp/count has bad size").
        // Only the container's own group ([`Container::own_groups`]): a record naming
        // `init.scope` would have CRIU freeze the host's init. Without it CRIU seizes the
        // process tree alone, by ptrace.
        freeze_cgroup: match container.own_groups() {
            Ok(groups) => Some(groups.freezer_group()?.display().to_string()),
            Err(_) => None,
        },
        ..common_options()
    };
    let log = args
        .work_path
        .as_ref()
        .unwrap_or(&args.image_path)
        .join(DUMP_LOG);
    let dumped = criu.dump_with(&args.id, opts, &log);
    dumped?;
    // As runc: a container checkpointed without --leave-running is gone (CRIU ended its
    // processes); the engine restores it under a new or the same id.
    if !args.leave_running {
        crate::ops::destroy(&container);
    }
    Ok(())
}

/// `path`, made if missing, opened for CRIU (which reads it through /proc/<us>/fd).
pub fn open_folder(path: &Path, flag: &str) -> Result<fs::File> {
    fs::create_dir_all(path).with_context(|| format!("{flag} {}", path.display()))?;
    fs::File::open(path).with_context(|| format!("{flag} {}", path.display()))
}

/// What each standard descriptor of the init is to CRIU: a pipe by its `pipe:[…]` name (CRIU
/// dumps the pipe; the restore gives the restoring process's own in its place), and a file
/// on a mount outside the container (the engine's /dev/null or log file) as an external
/// `file[mnt_id:inode]`, not dumped and given back the same way. Returns those externals.
fn write_descriptors(pid: i32, images: &Path) -> Result<Vec<String>> {
    let inside = container_mount_ids(pid);
    let mut externals = Vec::new();
    let mut keys = Vec::new();
    for fd in 0..3 {
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let key = match outside_file(pid, fd, &inside) {
            Some(key) => {
                externals.push(key.clone());
                key
            }
            None => target,
        };
        keys.push(key);
    }
    let path = images.join(DESCRIPTORS);
    fs::write(&path, serde_json::to_string(&keys)?)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(externals)
}

/// The mount ids of the init's mount namespace. Its table is read as bytes: a mount point
/// that is not UTF-8 failed the whole table as text, and every descriptor counted as outside.
fn container_mount_ids(pid: i32) -> Vec<u64> {
    let table = feather_sys::mountinfo::read_table(Path::new(&format!("/proc/{pid}/mountinfo")))
        .unwrap_or_default();
    feather_sys::mountinfo::parse(table)
        .into_iter()
        .map(|mount| mount.id)
        .collect()
}

/// CRIU's key for descriptor `fd` of `pid` when it is a file on a mount the container does
/// not have.
fn outside_file(pid: i32, fd: i32, inside: &[u64]) -> Option<String> {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let mount_id: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))?
        .trim()
        .parse()
        .ok()?;
    let metadata = fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let file = metadata.file_type();
    let is_file = file.is_file() || file.is_char_device() || file.is_block_device();
    (is_file && !inside.contains(&mount_id))
        .then(|| format!("file[{mount_id:x}:{:x}]", metadata.ino()))
}

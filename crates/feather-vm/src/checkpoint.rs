//! Checkpoint and restore of a whole VM with CRIU: its init and every process under it, with
//! their memory, open files, sockets, pids (inside the VM), hostname and namespaces.
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
//! run ([`await_release`]): the two phases of a migration (see [`migrate`]).
//!
//! The VM's root overlay is mounted by the restoring side, because CRIU rebuilds the VM's mount
//! namespace on top of a root it is given (`--root`); every other mount of the VM (its /proc,
//! /dev, /run with its content, devpts, mqueue) CRIU recreates from its images.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use feather_core::atomic::Durability;
use feather_core::error::IoContext;
use feather_core::{Error, StateRoot, VmConfig, VmDir, VmName, VmStatus};
use feather_migrate::archive;
use feather_migrate::criu::{self, Criu, Dump, Restore};
use feather_sys::cgroup::Cgroup;
use feather_sys::mount::{self, LayerSync};
use feather_sys::process::{self, ChildProcess};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::error::{failed, InVm, Result, VmError};
use crate::hiding;
use crate::layers;
use crate::lifecycle;
use crate::protocol::{self, Request, Response};

/// How long a dump may take before `feather checkpoint` stops waiting for the keeper.
const DUMP_TIMEOUT: Duration = Duration::from_secs(600);

/// The file in an images folder that says a dump completed.
const INVENTORY: &str = "inventory.img";

/// The VM's layers over other host filesystems at the time of the dump (see [`ExternalLayer`]).
const LAYERS: &str = "layers.json";

/// The subnet of the VM's address (`--net private`) where it was checkpointed.
const SUBNET: &str = "subnet.json";

/// Present while a VM restored for a migration waits for `feather serve` to confirm it; holds
/// that serve's pid. See [`await_release`].
const HOLD: &str = "hold";

/// A layer of the VM over another host filesystem (a separate /home, a tmpfs under /mnt). CRIU
/// does not dump these overlays (it could not mount them again: their options name host
/// folders in feather's escaped spelling, which it mangles); the restoring side mounts each
/// from the VM's own folder and hands it to CRIU under its key.
///
/// The files feather generates for the VM (`/etc/hosts`, …) are listed here too, with
/// `generated`: they are bound from the VM's run folder, which lies elsewhere in another state
/// root, so the restoring side names where its own copies are.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ExternalLayer {
    key: String,
    mount_point: PathBuf,
    #[serde(default)]
    generated: bool,
}

/// `feather checkpoint`: saves the running VM `name` to its checkpoint folder. Unless
/// `leave_running`, its processes end and the VM is recorded as checkpointed. With `export`,
/// the VM (config, layers, images) is also written to that file.
pub fn checkpoint(
    root: &StateRoot,
    name: &VmName,
    leave_running: bool,
    export: Option<&Path>,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf> {
    let vm = root.open(name)?;
    let _op = vm.lock_operations()?;
    match vm.read_state()?.status {
        VmStatus::Running => {}
        VmStatus::Checkpointed => {
            return Err(failed(
                name,
                format!("is already checkpointed (resume it with `feather restore {name}`)"),
            ))
        }
        _ => return Err(Error::NotRunning(name.to_string()).into()),
    }
    let config = vm.read_config()?;
    if config.ephemeral {
        return Err(failed(
            name,
            "is a throw-away VM (run --rm): it goes away with its processes and cannot be checkpointed",
        ));
    }
    if config.network.mode == feather_core::NetMode::Host
        && matches!(
            feather_confine::landlock::support(),
            feather_confine::landlock::Support::Scoping { .. }
        )
    {
        return Err(failed(
            name,
            "shares the host's network (--net host), so Landlock keeps its processes from the \
             host's abstract unix sockets, and CRIU cannot checkpoint such processes (its code \
             inside them reaches CRIU through an abstract socket); checkpoint works for VMs \
             created with --net none",
        ));
    }
    progress(Progress::Phase(&format!("checkpointing {name}")));
    // Found here, before the keeper is asked, so that a missing CRIU is reported plainly.
    let criu = Criu::locate().map_err(|e| failed(name, e.to_string()))?;
    let answer = protocol::call(
        &vm.control_socket(),
        &Request::Checkpoint {
            leave_running,
            criu: criu.path().to_path_buf(),
        },
        DUMP_TIMEOUT,
    )
    .map_err(|e| failed(name, format!("its keeper did not answer: {e}")))?;
    match answer {
        Response::Checkpointed {
            leave_running: true,
        } => {}
        // The keeper answers once the VM's processes are gone, just before it exits itself; a
        // restore right after must not find its lock still held.
        Response::Checkpointed {
            leave_running: false,
        } => {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while vm.keeper_alive()? && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Response::Error { message } => {
            let prefix = format!("VM {name}: ");
            return Err(failed(
                name,
                message.strip_prefix(&prefix).unwrap_or(&message),
            ));
        }
        other => {
            return Err(failed(
                name,
                format!("unexpected answer from its keeper: {other:?}"),
            ))
        }
    }
    // Where the VM's address came from: a restore elsewhere keeps it only in the same subnet.
    if let Some(subnet) = feather_net::subnet_of(root.dir(), &config.network)
        .map_err(|e| failed(name, e.to_string()))?
    {
        let text = serde_json::to_vec(&subnet).map_err(|e| failed(name, e.to_string()))?;
        feather_core::atomic::write_atomic(
            &vm.checkpoint_dir().join(SUBNET),
            &text,
            Durability::Durable,
        )?;
    }
    if let Some(file) = export {
        progress(Progress::Phase(&format!("writing {}", file.display())));
        archive::export(vm.path(), file, &mut |done| {
            progress(Progress::Bytes { done, total: 0 })
        })
        .map_err(|e| failed(name, e.to_string()))?;
    }
    Ok(vm.checkpoint_dir())
}

/// The name a replaced checkpoint folder takes beside the VM's other files until it is removed.
const STALE_PREFIX: &str = "checkpoint.stale-";

/// Moves the VM's last checkpoint out of the way of a new one (a checkpoint taken now replaces
/// the last one; a failed one leaves none behind). Removing hundreds of megabytes of images
/// takes long on some filesystems (ext4 with `discard`), so it is left to
/// [`remove_stale`], after the user has their answer.
pub(crate) fn set_aside_last(vm: &VmDir) -> Result<()> {
    let images = vm.checkpoint_dir();
    if !images.exists() {
        return Ok(());
    }
    let stale = vm
        .path()
        .join(format!("{STALE_PREFIX}{}", std::process::id()));
    let _ = fs::remove_dir_all(&stale);
    Ok(fs::rename(&images, &stale).at(&images)?)
}

/// Removes checkpoints set aside by [`set_aside_last`] (also those a crash left behind).
pub(crate) fn remove_stale(vm: &VmDir) {
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

/// In the keeper: dumps the VM's process tree, rooted at its init, into its checkpoint folder
/// (the last checkpoint is set aside first).
pub(crate) fn dump(vm: &VmDir, init: Pid, leave_running: bool, criu: &Path) -> Result<()> {
    let name = vm.name();
    let criu = Criu::checked(criu.to_path_buf(), String::new());
    let images = vm.checkpoint_dir();
    set_aside_last(vm)?;
    let mountinfo = format!("/proc/{init}/mountinfo");
    let text = fs::read_to_string(&mountinfo).at(&mountinfo)?;
    let mounts = feather_sys::mountinfo::parse(&text);
    let mut layers: Vec<ExternalLayer> = mounts
        .iter()
        .filter(|m| m.fs_type == "overlay" && m.mount_point != Path::new("/"))
        .enumerate()
        .map(|(i, m)| ExternalLayer {
            key: format!("feather-layer-{i}"),
            mount_point: m.mount_point.clone(),
            generated: false,
        })
        .collect();
    layers.extend(
        mounts
            .iter()
            .filter(|m| feather_net::etc::generated(Path::new("/"), &m.mount_point).is_some())
            .enumerate()
            .map(|(i, m)| ExternalLayer {
                key: format!("feather-etc-{i}"),
                mount_point: m.mount_point.clone(),
                generated: true,
            }),
    );
    let external: Vec<(String, String)> = layers
        .iter()
        .map(|l| (l.mount_point.display().to_string(), l.key.clone()))
        .collect();
    // The tmpfs hiding state roots are not dumped: the restoring keeper hides the roots of
    // its own host, before the restored processes run (see Keeper::restore).
    let skipped: Vec<String> = mounts
        .iter()
        .filter(|m| hiding::is_hiding_mount(m))
        .map(|m| m.mount_point.display().to_string())
        .collect();
    let dumped = criu.dump(&Dump {
        vm: name.as_str(),
        pid: init.as_raw(),
        images: &images,
        leave_running,
        external_mounts: &external,
        skipped_mounts: &skipped,
    });
    if let Err(e) = dumped {
        // Keep only the log, which the error points to.
        if let Ok(entries) = fs::read_dir(&images) {
            for entry in entries.flatten() {
                if entry.file_name() != criu::DUMP_LOG {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        return Err(e.into());
    }
    let list = serde_json::to_vec_pretty(&layers).map_err(|e| failed(name, e.to_string()))?;
    feather_core::atomic::write_atomic(&images.join(LAYERS), &list, Durability::Durable)?;
    Ok(())
}

/// `feather restore`: brings a checkpointed VM back; with `import`, first adds it to this state
/// root from an archive made by `feather checkpoint --export`.
pub fn restore(root: &StateRoot, name: &VmName, import: Option<&Path>) -> Result<()> {
    if let Some(file) = import {
        import_archive(root, name, Source::File(file), None)?;
    }
    let vm = root.open(name)?;
    let _op = vm.lock_operations()?;
    match vm.read_state()?.status {
        VmStatus::Checkpointed => {}
        VmStatus::Running => return Err(Error::Running(name.to_string()).into()),
        _ => {
            return Err(failed(
                name,
                format!("has no checkpoint to restore (take one with `feather checkpoint {name}` while it runs)"),
            ))
        }
    }
    if !vm.checkpoint_dir().join(INVENTORY).exists() {
        return Err(failed(
            name,
            format!(
                "its checkpoint in {} is incomplete; `feather rm {name}` removes the VM",
                vm.checkpoint_dir().display()
            ),
        ));
    }
    let released = vm.checkpoint_dir().join(RELEASED_TO);
    if let Ok(to) = fs::read_to_string(&released) {
        return Err(failed(
            name,
            format!(
                "was let go to {to} by a migration, and may run there: restoring it here could                  run it twice. If it does not run there, remove {} and restore it again",
                released.display()
            ),
        ));
    }
    if let Some(pid) = held_for(&vm) {
        if !serving(pid) {
            return Err(failed(
                name,
                format!(
                    "was received by a migration that was never confirmed (the `feather serve` \
                     that received it, pid {pid}, ended first), so the sending host kept it; \
                     `feather rm {name}` removes this copy"
                ),
            ));
        }
    }
    Criu::locate().map_err(|e| failed(name, e.to_string()))?;
    lifecycle::spawn_keeper(root, &vm, true)
}

/// The pid of the `feather serve` a VM received by migration waits for, if it waits.
fn held_for(vm: &VmDir) -> Option<i32> {
    fs::read_to_string(vm.checkpoint_dir().join(HOLD))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is still a `feather serve` (not a process that got its pid since).
fn serving(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let mut words = cmdline.split(|b| *b == 0);
        words.any(|w| w == b"serve")
    })
}

/// Adds the VM in `file` to this state root under its recorded name, which must be `name`, as a
/// checkpointed VM with a new id (its cgroup must not meet the original's, which may still run).
/// Where an imported VM comes from.
enum Source<'s, 'a> {
    /// An archive made by `checkpoint --export`.
    File(&'s Path),
    /// A migration: its archive is unpacked as it arrives, and checked before it is used.
    Migration(
        &'s mut feather_migrate::transfer::Incoming<'a>,
        &'s mut dyn FnMut(Progress),
    ),
}

/// `held_by`: the pid of the `feather serve` receiving it; the VM is marked as waiting for it
/// before it appears here (see [`hold`]).
fn import_archive(
    root: &StateRoot,
    name: &VmName,
    mut source: Source,
    held_by: Option<u32>,
) -> Result<()> {
    let file = match &source {
        Source::File(file) => file.display().to_string(),
        Source::Migration(incoming, _) => format!("the VM sent from {}", incoming.peer),
    };
    if root.open(name).is_ok() {
        return Err(failed(
            name,
            format!(
                "exists already here; restore it without --import, or `feather rm {name}` first"
            ),
        ));
    }
    let vms = root.dir().join("vms");
    fs::create_dir_all(&vms).at(&vms)?;
    let staging = vms.join(format!(".creating-import-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let unpacked = match &mut source {
        Source::File(path) => archive::unpack(path, &staging),
        Source::Migration(incoming, progress) => archive::unpack_from(
            &mut incoming.archive(&mut |done, total| progress(Progress::Bytes { done, total })),
            Path::new(&file),
            &staging,
        ),
    };
    let mut config = unpacked.map_err(|e| failed(name, e.to_string()))?;
    let mut leased = false;
    let placed = (|| -> Result<()> {
        // Nothing of what arrived is used before it is known to be what the sender sent.
        if let Source::Migration(incoming, _) = &mut source {
            incoming
                .verify()
                .map_err(|why| failed(name, format!("{file}: {why}")))?;
        }
        if config.name != *name {
            return Err(failed(
                name,
                format!("{file} holds VM {}, not {name}", config.name),
            ));
        }
        if !staging.join("checkpoint").join(INVENTORY).exists() {
            return Err(failed(
                name,
                format!(
                    "{file} holds no checkpoint (export it with `feather checkpoint {name} --export`)"
                ),
            ));
        }
        config.id = lifecycle::new_id();
        // A VM with a private network keeps its address, in the same subnet only.
        let subnet = match fs::read(staging.join("checkpoint").join(SUBNET)) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| failed(name, format!("{file}: its {SUBNET}: {e}")))?,
            ),
            Err(_) => None,
        };
        feather_net::keep_address(
            root.dir(),
            name.as_str(),
            &config.network,
            subnet,
            Some(&config.id),
        )
        .map_err(|e| failed(name, e.to_string()))?;
        leased = true;
        let text = toml::to_string(&config).map_err(|e| failed(name, e.to_string()))?;
        feather_core::atomic::write_atomic(
            &staging.join("config.toml"),
            text.as_bytes(),
            Durability::Durable,
        )?;
        let mut state = feather_core::VmState::created();
        state.status = VmStatus::Checkpointed;
        state.last_exit = Some(format!("imported from {file}"));
        let text = serde_json::to_vec_pretty(&state).map_err(|e| failed(name, e.to_string()))?;
        feather_core::atomic::write_atomic(
            &staging.join("state.json"),
            &text,
            Durability::Durable,
        )?;
        if let Some(pid) = held_by {
            feather_core::atomic::write_atomic(
                &staging.join("checkpoint").join(HOLD),
                pid.to_string().as_bytes(),
                Durability::Durable,
            )?;
        }
        let target = root.vm(name);
        fs::rename(&staging, target.path()).at(target.path())?;
        Ok(())
    })();
    if placed.is_err() {
        let _ = fs::remove_dir_all(&staging);
        if leased {
            let _ = feather_net::release(root.dir(), &config.id, &config.network);
        }
    }
    placed
}

/// In a keeper started in restore mode: restores the VM's process tree from its checkpoint
/// folder and returns its init, now a child of this process.
/// `veth`: the VM's veth pair, for CRIU to make (`--net private`). A VM received by a migration
/// comes back stopped, until `feather serve` confirms it (see [`await_release`]).
pub(crate) fn restore_tree(
    root: &StateRoot,
    vm: &VmDir,
    config: &VmConfig,
    cgroup: Option<&Cgroup>,
    veth: Option<&feather_net::VethPair>,
) -> Result<ChildProcess> {
    let name = vm.name();
    let criu = Criu::locate().map_err(|e| failed(name, e.to_string()))?;
    let images = vm.checkpoint_dir();
    let top = layers::for_start(root, vm, config)?.swap_remove(0);
    let rootfs = vm.rootfs();
    let list = images.join(LAYERS);
    let external: Vec<ExternalLayer> = match fs::read(&list) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| failed(name, format!("{}: {e}", list.display())))?,
        Err(_) => Vec::new(),
    };
    let (generated, external): (Vec<ExternalLayer>, Vec<ExternalLayer>) =
        external.into_iter().partition(|l| l.generated);
    let others: Vec<(layers::Layer, PathBuf)> = external
        .iter()
        .map(|l| {
            let mut layer = layers::Layer::submount(vm, config, l.mount_point.clone());
            // The host may have unmounted and removed what the layer lay over since the
            // checkpoint; the VM then keeps its own changes there, over nothing.
            if !layer.lower.is_dir() {
                layer.lower = images.join("vanished-lower");
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
    let veths: Vec<(String, String, String)> = veth
        .map(|v| (v.inside.clone(), v.host_end.clone(), v.bridge.clone()))
        .into_iter()
        .collect();
    let call = criu
        .restore_call(&Restore {
            images: &images,
            root: &rootfs,
            external_mounts: &mapping,
            veths: &veths,
            // Always: the keeper hides the state roots before the VM's processes go on.
            leave_stopped: true,
        })
        .map_err(|e| failed(name, e.to_string()))?;
    let sync = if config.ephemeral {
        LayerSync::Volatile
    } else {
        LayerSync::Durable
    };
    let child = match process::fork().in_vm(name)? {
        None => {
            // In the child: a mount namespace of its own, so that the VM's root overlay, which
            // CRIU needs mounted to rebuild the VM's mounts on, never appears on the host.
            let prepared = (|| -> std::result::Result<(), String> {
                unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare mounts: {e}"))?;
                mount::make_all_private().map_err(|e| e.to_string())?;
                mount::overlay(&top.lower, &top.upper, &top.work, &rootfs, sync)
                    .map_err(|e| e.to_string())?;
                for (layer, at) in &others {
                    // Missing only when the host removed the mount point: made in the VM's
                    // own layer, so that the layer has somewhere to appear.
                    if !at.exists() {
                        fs::create_dir_all(at).map_err(|e| format!("{}: {e}", at.display()))?;
                    }
                    mount::overlay(&layer.lower, &layer.upper, &layer.work, at, sync)
                        .map_err(|e| e.to_string())?;
                }
                if let Some(cgroup) = cgroup {
                    cgroup.add(Pid::this()).map_err(|e| e.to_string())?;
                }
                Ok(())
            })();
            if let Err(why) = prepared {
                eprintln!("feather keeper {name}: cannot prepare the restore: {why}");
                std::process::exit(125);
            }
            process::close_other_fds(&[0, 1, 2, call.criu_end()]);
            let why = exec(&call.program, &call.args);
            eprintln!(
                "feather keeper {name}: cannot run {}: {why}",
                call.program.display()
            );
            std::process::exit(126);
        }
        Some(pid) => pid,
    };
    let restored = call.restore(name.as_str());
    // criu swrk ends once it has answered; the restored tree is this process's child.
    let _ = waitpid(child, None);
    let pid = Pid::from_raw(restored?);
    let pidfd = process::pidfd_open(pid).in_vm(name)?;
    Ok(ChildProcess { pid, pidfd })
}

fn exec(program: &Path, args: &[std::ffi::OsString]) -> String {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let argv: std::result::Result<Vec<CString>, _> = std::iter::once(program.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| CString::new(a.as_bytes()))
        .collect();
    match argv {
        Ok(argv) => match nix::unistd::execv(&argv[0], &argv) {
            Err(e) => e.to_string(),
        },
        Err(_) => "an argument contains a NUL byte".into(),
    }
}

/// What a long action tells whoever shows its progress.
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// A new step begins.
    Phase(&'a str),
    /// Bytes of the step's data done so far, of `total` (0: not known).
    Bytes { done: u64, total: u64 },
}

/// What a migration moved and how long the VM was frozen: from the start of its checkpoint
/// to the receiver's word that it runs there.
#[derive(Debug)]
pub struct Migrated {
    pub bytes: u64,
    pub frozen: Duration,
}

/// The marker a sending host leaves in the VM's checkpoint folder from the moment it lets the
/// VM go until the receiver says it runs there: a restore here would run it twice.
const RELEASED_TO: &str = "released-to";

/// `feather migrate`: moves the running VM `name` to the receiver at `to` (a `feather serve`
/// knowing `token`). The receiver is asked first, so an unreachable one, a wrong token or an
/// address that cannot be kept there leaves the VM untouched. Then the VM is checkpointed and
/// its archive sent; the receiver restores it, stopped, and only once this side has let it go
/// does it run there, and only once it runs there is it removed here (two phases, see
/// feather_migrate::transfer). If anything fails before the release, the VM is restored here.
pub fn migrate(
    root: &StateRoot,
    name: &VmName,
    to: &str,
    token: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Migrated> {
    let vm = root.open(name)?;
    if vm.read_state()?.status != VmStatus::Running {
        return Err(Error::NotRunning(name.to_string()).into());
    }
    let config = vm.read_config()?;
    let subnet = feather_net::subnet_of(root.dir(), &config.network)
        .map_err(|e| failed(name, e.to_string()))?;
    let offer = feather_migrate::transfer::Offer {
        vm: name.to_string(),
        address: config
            .network
            .address
            .filter(|_| subnet.is_some())
            .map(|a| a.to_string())
            .unwrap_or_default(),
        subnet: subnet.map(|s| s.to_string()).unwrap_or_default(),
    };
    progress(Progress::Phase(&format!("asking {to} to take {name}")));
    let accepted = feather_migrate::transfer::offer(to, token, &offer)?;
    let started = std::time::Instant::now();
    progress(Progress::Phase(&format!(
        "checkpointing {name} (frozen from now on)"
    )));
    let sent = match checkpoint(root, name, false, None, progress) {
        Ok(_) => {
            progress(Progress::Phase(&format!("sending {name} to {to}")));
            // Made as it is sent: tar, the connection and the receiver work at once.
            let mut stream = archive::stream(vm.path());
            let output = stream.as_mut().ok().and_then(|s| s.take_output());
            match (stream, output) {
                (Err(e), _) => Err(failed(name, e.to_string())),
                (Ok(stream), Some(mut output)) => accepted
                    .send_archive(&mut output, move || stream.finish(), &mut |done, total| {
                        progress(Progress::Bytes { done, total });
                        if total > 0 && done == total {
                            progress(Progress::Phase(&format!("{to} restores {name}")));
                        }
                    })
                    .map_err(VmError::from),
                (Ok(_), None) => Err(failed(name, "tar gave no output")),
            }
        }
        Err(e) => Err(e),
    };
    let (bytes, restored) = match sent {
        Ok(sent) => sent,
        // The checkpoint itself failed: CRIU left the VM running.
        Err(e) if vm.read_state()?.status != VmStatus::Checkpointed => return Err(e),
        Err(e) => return restore_here(root, name, e, progress),
    };
    // From here the receiver may run the VM: a restore here must not happen unless it says it
    // does not.
    let marker = vm.checkpoint_dir().join(RELEASED_TO);
    feather_core::atomic::write_atomic(&marker, to.as_bytes(), Durability::Durable)?;
    progress(Progress::Phase(&format!("letting {name} run at {to}")));
    match restored.release() {
        feather_migrate::transfer::Released::Running => {
            let frozen = started.elapsed();
            lifecycle::remove(root, name, false)?;
            Ok(Migrated { bytes, frozen })
        }
        feather_migrate::transfer::Released::Failed(why) => {
            let _ = fs::remove_file(&marker);
            let e = failed(name, format!("{to} could not run it: {why}"));
            restore_here(root, name, e, progress)
        }
        feather_migrate::transfer::Released::Unknown(why) => Err(failed(
            name,
            format!(
                "the connection to {to} broke after the VM was let go there ({why}), so it may \
                 run there or nowhere; it stays checkpointed here. If `feather ls` on {to} does \
                 not show it running, remove {} and `feather restore {name}` here",
                marker.display()
            ),
        )),
    }
}

/// After a failed migration: brings the VM back here.
fn restore_here(
    root: &StateRoot,
    name: &VmName,
    e: VmError,
    progress: &mut dyn FnMut(Progress),
) -> Result<Migrated> {
    progress(Progress::Phase(&format!(
        "migration failed; restoring {name} here"
    )));
    match restore(root, name, None) {
        Ok(()) => Err(failed(
            name,
            format!("migration failed, the VM runs here again: {e}"),
        )),
        Err(again) => Err(failed(
            name,
            format!("migration failed ({e}) and so did restoring it here ({again}); it stays checkpointed: `feather restore {name}`"),
        )),
    }
}

/// `feather serve`: receives VMs sent by `feather migrate` with `token` on `listen` and runs
/// them in this state root; with `once`, returns after the first (its error, if it failed).
pub fn serve(
    root: &StateRoot,
    listen: &str,
    token: &str,
    once: bool,
    mut on_ready: impl FnMut(&str),
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    discard_unconfirmed(root);
    let receiver = feather_migrate::transfer::Receiver::bind(listen, token)?;
    on_ready(&receiver.local_addr());
    loop {
        let check = |offer: &feather_migrate::transfer::Offer| -> std::result::Result<(), String> {
            let name: VmName = offer
                .vm
                .parse()
                .map_err(|e: feather_core::Error| e.to_string())?;
            if root.open(&name).is_ok() {
                return Err(format!("a VM named {name} exists here already"));
            }
            if offer.address.is_empty() {
                return Ok(());
            }
            let network = feather_core::NetworkConfig {
                mode: feather_core::NetMode::Private,
                address: Some(
                    offer
                        .address
                        .parse()
                        .map_err(|_| "a garbled address".to_owned())?,
                ),
                ..Default::default()
            };
            let subnet = offer.subnet.parse().map_err(|e: String| e)?;
            feather_net::keep_address(root.dir(), name.as_str(), &network, Some(subnet), None)
                .map_err(|e| e.to_string())
        };
        let outcome = match receiver.next(check) {
            Ok(incoming) => receive(root, incoming, progress),
            Err(e) => {
                eprintln!("feather serve: {e}");
                Err(e.into())
            }
        };
        if once {
            return outcome;
        }
    }
}

/// Restores one received VM, stopped; lets it run once the sender has let it go; discards it
/// if anything fails on the way.
fn receive(
    root: &StateRoot,
    mut incoming: feather_migrate::transfer::Incoming,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    progress(Progress::Phase(&format!("receiving {}", incoming.vm)));
    let name: VmName = match incoming.vm.parse() {
        Ok(name) => name,
        Err(e) => {
            let e = VmError::from(e);
            incoming.finish(Err(e.to_string()));
            return Err(e);
        }
    };
    let restored = (|| -> Result<()> {
        // The VM's keeper keeps it stopped until this process tells it to resume, and ends it
        // if this process ends first; until then no one may restore it here.
        let source = Source::Migration(&mut incoming, &mut *progress);
        import_archive(root, &name, source, Some(std::process::id()))?;
        let vm = root.open(&name)?;
        progress(Progress::Phase(&format!("restoring {name}")));
        restore(root, &name, None)?;
        progress(Progress::Phase(&format!(
            "{name} restored; waiting for the sender to let it go"
        )));
        incoming
            .restored()
            .map_err(|why| failed(&name, format!("the migration was not completed: {why}")))?;
        resume(&vm)
    })();
    match &restored {
        Ok(()) => eprintln!("feather serve: VM {name} received and running"),
        Err(e) => {
            eprintln!("feather serve: {e}");
            // The sender keeps the VM or restores it at home: a copy left here would be a second.
            discard(root, &name);
        }
    }
    incoming.finish(restored.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    restored
}

/// Removes a received VM that must not run here, whatever state it reached.
fn discard(root: &StateRoot, name: &VmName) {
    let Ok(vm) = root.open(name) else {
        return;
    };
    if let Ok(config) = vm.read_config() {
        // Its processes are stopped and were never let run: they end at once.
        let cgroup = crate::keeper::cgroup_path(&config);
        if cgroup.exists() {
            cgroup.kill_all();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vm.keeper_alive().unwrap_or(false) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = lifecycle::remove(root, name, true);
}

/// Copies of VMs that a migration brought here but never confirmed (their `feather serve`
/// ended first): the sender kept them. A serve starting removes them.
fn discard_unconfirmed(root: &StateRoot) {
    let Ok(entries) = fs::read_dir(root.dir().join("vms")) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<VmName>().ok())
        else {
            continue;
        };
        let Ok(vm) = root.open(&name) else { continue };
        if held_for(&vm).is_some_and(|pid| !serving(pid))
            && vm
                .read_state()
                .is_ok_and(|s| s.status == VmStatus::Checkpointed)
        {
            eprintln!(
                "feather serve: removing VM {name}: a migration that brought it here was never \
                 confirmed, so its sender kept it"
            );
            discard(root, &name);
        }
    }
}

/// In a keeper restoring a VM received by a migration: a pidfd of the `feather serve` that
/// waits for the sender's confirmation, opened before the restore so that its end cannot be
/// missed. None for an ordinary restore.
pub(crate) fn hold(vm: &VmDir) -> Result<Option<std::os::fd::OwnedFd>> {
    let Some(pid) = held_for(vm) else {
        return Ok(None);
    };
    let name = vm.name();
    process::pidfd_open(Pid::from_raw(pid))
        .map(Some)
        .map_err(|_| {
            failed(
                name,
                format!("the `feather serve` receiving it (pid {pid}) ended"),
            )
        })
}

/// How long a received VM waits, stopped, for the migration to be confirmed.
const HOLD_PATIENCE: Duration = Duration::from_secs(600);

/// In a keeper whose VM came back stopped for a migration (see [`hold`]): waits until
/// `feather serve` says the sender has released it (`Request::Resume`), then continues every
/// process of the VM and returns true. If that serve ends first, or nothing is heard for
/// [`HOLD_PATIENCE`], returns false: the sender keeps the VM, and this copy must never run.
pub(crate) fn await_release(
    vm: &VmDir,
    serve: &std::os::fd::OwnedFd,
    init: &ChildProcess,
    listener: &std::os::unix::net::UnixListener,
    cgroup: Option<&Cgroup>,
) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
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
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        );
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
        match protocol::read_request(&stream) {
            Ok(Request::Resume) => {
                let _ = fs::remove_file(vm.checkpoint_dir().join(HOLD));
                for pid in cgroup.map(Cgroup::members).unwrap_or_default() {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                }
                let _ = nix::sys::signal::kill(init.pid, nix::sys::signal::Signal::SIGCONT);
                let _ = protocol::write_response(
                    &stream,
                    &Response::Running {
                        init_pid: init.pid.as_raw(),
                    },
                );
                return true;
            }
            Ok(Request::Status) => {
                let _ = protocol::write_response(
                    &stream,
                    &Response::Running {
                        init_pid: init.pid.as_raw(),
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

/// In `feather serve`, once the sender has released the VM: tells its keeper to let it run.
fn resume(vm: &VmDir) -> Result<()> {
    let name = vm.name();
    match protocol::call(
        &vm.control_socket(),
        &Request::Resume,
        Duration::from_secs(30),
    ) {
        Ok(Response::Running { .. }) => Ok(()),
        Ok(other) => Err(failed(
            name,
            format!("its keeper did not resume it: {other:?}"),
        )),
        Err(e) => Err(failed(name, format!("its keeper did not answer: {e}"))),
    }
}

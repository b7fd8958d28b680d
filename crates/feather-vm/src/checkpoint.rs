//! Checkpoint and restore of a whole VM with CRIU (its init and every process under it, with
//! their memory, open files, sockets, pids inside the VM, hostname and namespaces): the asker's
//! side, `feather checkpoint` and `feather restore`, run by the CLI.
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
//! run ([`crate::snapshot::await_release`]): the two phases of a migration (see
//! [`crate::migration`]).
//!
//! The keeper's side (the dump, the restore of the process tree) is [`crate::snapshot`].

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use feather_core::atomic::Durability;
use feather_core::error::causes;
use feather_core::error::IoContext;
use feather_core::{trace, Error, StateRoot, VmName, VmStatus};
use feather_migrate::archive;
use feather_migrate::criu::Criu;

use crate::error::{encode, failed, io, InVm, Result, VmError};
use crate::images::{self, held_for, Receiver, HOLD, INVENTORY, SUBNET};
use crate::imported::{self, Accepted};
use crate::lifecycle;
use crate::protocol::{self, Request, Response};

/// How long a dump may take before `feather checkpoint` stops waiting for the keeper.
const DUMP_TIMEOUT: Duration = Duration::from_secs(600);

/// `feather checkpoint`: saves the running VM `name` to its checkpoint folder. Unless
/// `leave_running`, its processes end and the VM is recorded as checkpointed. With `export`,
/// the VM (config, layers, images) is also written to that file, as it was at the moment of the
/// dump: a VM left running is frozen from before its dump until its layers are archived (see
/// [`export_at_one_moment`]).
pub fn checkpoint(
    root: &StateRoot,
    name: &VmName,
    leave_running: bool,
    export: Option<&Path>,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf> {
    let vm = root.open(name)?;
    let _op = vm.lock_operations()?;
    let config = checkpointable(&vm, name)?;
    progress(Progress::Phase(&format!("checkpointing {name}")));
    // Found here, before the keeper is asked, so that a missing CRIU is reported plainly.
    let criu = Criu::locate().in_vm(name)?;
    let request = |hold_frozen| Request::Checkpoint {
        leave_running,
        criu: criu.path().to_path_buf(),
        lazy: false,
        hold_frozen,
    };
    if let (true, Some(file)) = (leave_running, export) {
        export_at_one_moment(root, &vm, &config, &request(true), file, progress)?;
        return Ok(vm.checkpoint_dir());
    }
    // Back at the keeper's answer: the VM's processes are gone, its layer flushed and the
    // checkpoint recorded. The keeper's last steps (the root's network if the VM was its last
    // user, the lock) touch nothing an export archives, and a `restore`, `start` or `rm` that
    // comes next waits for the keeper's end itself (`lifecycle::await_last_keeper`).
    dump(&vm, &request(false))?;
    record_subnet(root, &vm, &config)?;
    // The VM's processes ended with the dump: its layers hold still while they are archived.
    if let Some(file) = export {
        progress(Progress::Phase(&format!("writing {}", file.display())));
        archive::export(vm.path(), file, &mut |done| {
            progress(Progress::Bytes { done, total: 0 })
        })
        .in_vm(name)?;
    }
    Ok(vm.checkpoint_dir())
}

/// Asks the VM's keeper for a dump; returns the conversation once the images are written (a
/// held VM stays frozen as long as it is open, see [`crate::moment`]).
fn dump(vm: &feather_core::VmDir, request: &Request) -> Result<protocol::Conversation> {
    let name = vm.name();
    let mut keeper = protocol::Conversation::start(&vm.control_socket(), request, DUMP_TIMEOUT)
        .map_err(|source| protocol::silent(name, source))?;
    trace::phase("checkpoint: checks, the keeper asked");
    protocol::expect(keeper.answer(), name, |response| match response {
        Response::Checkpointed { .. } => Ok(()),
        other => Err(other),
    })?;
    trace::phase("checkpoint: the keeper answered");
    Ok(keeper)
}

/// `checkpoint --leave-running --export FILE`: the VM's processes and layers in `file` as they
/// were at one moment, while the VM goes on. Its layers are archived while it still runs; then
/// the keeper freezes it and dumps it (`request` holds it frozen), and only the images and
/// what changed in the layers since follow, the way a migration's pre-copy sends them
/// (`feather_migrate::precopy`; the import prunes what the VM removed meanwhile); then the
/// keeper thaws it. Any failure thaws it too: the keeper's end of the conversation closes.
fn export_at_one_moment(
    root: &StateRoot,
    vm: &feather_core::VmDir,
    config: &feather_core::VmConfig,
    request: &Request,
    file: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let name = vm.name();
    let progress = std::cell::RefCell::new(progress);
    let keeper = std::cell::RefCell::new(None);
    let failure = std::cell::RefCell::new(None);
    let freeze = || {
        (progress.borrow_mut())(Progress::Frozen);
        trace::phase("checkpoint: layers, running");
        let dumped = dump(vm, request).and_then(|held| {
            record_subnet(root, vm, config)?;
            Ok(held)
        });
        match dumped {
            Ok(held) => {
                keeper.replace(Some(held));
                Ok(())
            }
            Err(e) => {
                failure.replace(Some(e));
                Err(std::io::Error::other("the checkpoint failed"))
            }
        }
    };
    (progress.borrow_mut())(Progress::Phase(&format!("writing {}", file.display())));
    let written = write_precopied(vm, file, freeze, &progress);
    trace::phase("checkpoint: images and changes, frozen");
    let thawed = keeper.take().map(|held| let_go(held, name, config));
    (progress.borrow_mut())(Progress::Resumed);
    let done = match (failure.take(), written, thawed) {
        (Some(e), _, _) => Err(e),
        (None, Err(e), _) => Err(e),
        (None, Ok(()), Some(thawed)) => thawed,
        (None, Ok(()), None) => Err(failed(name, "was never frozen for its checkpoint")),
    };
    if done.is_err() {
        let _ = fs::remove_file(file);
    }
    trace::phase("checkpoint: thaw");
    done
}

/// Writes the VM folder's pre-copy stream (see [`export_at_one_moment`]) to `file`, through
/// a file beside it renamed once complete.
fn write_precopied<'f>(
    vm: &feather_core::VmDir,
    file: &Path,
    freeze: impl FnOnce() -> std::io::Result<()> + 'f,
    progress: &std::cell::RefCell<&mut dyn FnMut(Progress)>,
) -> Result<()> {
    use std::io::{Read, Write};
    let name = vm.name();
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let (mut stream, finish) = feather_migrate::precopy::stream(vm.path(), freeze).in_vm(name)?;
    let copied = (|| -> std::io::Result<()> {
        let mut out = fs::File::create(&partial)?;
        let mut buffer = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            // Not borrowed across the read: the freeze, run inside it, reports too.
            let read = stream.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            out.write_all(&buffer[..read])?;
            done += read as u64;
            (progress.borrow_mut())(Progress::Bytes { done, total: 0 });
        }
        out.sync_all()
    })();
    let finished = finish.finish().in_vm(name);
    let renamed = copied
        .and_then(|()| fs::rename(&partial, file))
        .map_err(io(name, format!("writing {}", file.display())));
    if finished.is_err() || renamed.is_err() {
        let _ = fs::remove_file(&partial);
    }
    finished.and(renamed)
}

/// Tells the keeper holding the VM frozen that its layers are archived, and checks that it
/// stayed frozen all along. A keeper that ended meanwhile (it may have died holding the
/// freeze) leaves the thaw to this side.
fn let_go(
    mut keeper: protocol::Conversation,
    name: &VmName,
    config: &feather_core::VmConfig,
) -> Result<()> {
    let answer = keeper.done_sending().and_then(|()| keeper.answer());
    if answer.is_err() {
        if let Some(cgroup) = crate::keeper::cgroup_of(config) {
            let _ = cgroup.thaw();
        }
    }
    protocol::expect(answer, name, |response| match response {
        Response::Thawed { .. } => Ok(()),
        other => Err(other),
    })
}

/// Whether the VM may be checkpointed now (it runs, is not throw-away, and CRIU can reach its
/// processes); its config if so.
fn checkpointable(vm: &feather_core::VmDir, name: &VmName) -> Result<feather_core::VmConfig> {
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
    // Its freeze and thaw (or its set-aside of the checkpoint folder) would let a copy run
    // here that may run at the receiver.
    images::refuse_if_released(vm, "checkpointing it")?;
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
    Ok(config)
}

/// Where the VM's address came from: a restore elsewhere keeps it only in the same subnet.
fn record_subnet(
    root: &StateRoot,
    vm: &feather_core::VmDir,
    config: &feather_core::VmConfig,
) -> Result<()> {
    let name = vm.name();
    if let Some(subnet) = feather_net::subnet_of(root.dir(), &config.network).in_vm(name)? {
        let text = serde_json::to_vec(&subnet).map_err(encode(name, SUBNET))?;
        feather_core::atomic::write_atomic(
            &vm.checkpoint_dir().join(SUBNET),
            &text,
            Durability::Durable,
        )?;
    }
    Ok(())
}

/// A post-copy checkpoint under way: everything but the VM's memory is in its checkpoint
/// folder, and CRIU, in the keeper, serves the memory from its page server until the receiver
/// has every page (or the fetching fails: then CRIU lets the VM's processes go on here).
pub(crate) struct LazyCheckpoint {
    vm: feather_core::VmDir,
    keeper: protocol::Conversation,
    _op: std::fs::File,
}

/// For tests only: set (to anything), [`checkpoint_lazy`] fails right after the keeper said
/// `Dumped`, where the checkpoint's subnet is recorded (as a full disk would make it), so that a
/// test sees what a failure between the dump and the page transfer leaves. Read by a debug
/// build only ([`crate::test_hooks`]); unset (always, outside tests), nothing fails.
pub const FAIL_AFTER_DUMPED: &str = "FEATHER_TEST_FAIL_AFTER_DUMPED";

/// Post-copy: dumps the running VM `name` but its memory, which CRIU serves on the connection
/// the keeper passes with `Dumped` (one end of a socket pair, CRIU's the other: its page
/// server listens nowhere); returns once the rest is in the checkpoint folder, with that
/// connection. If this fails the VM runs on, and the error is CRIU's own (or, after the dump,
/// [`VmError::MigrationFailed`]).
///
/// From the dump on, CRIU's page server waits for requests on that connection, the VM's
/// processes seized, until a page transfer ends: whatever fails after `Dumped` ends that
/// transfer ([`LazyCheckpoint::resume`]) and CRIU lets the processes go on.
pub(crate) fn checkpoint_lazy(
    root: &StateRoot,
    name: &VmName,
) -> Result<(LazyCheckpoint, UnixStream)> {
    let vm = root.open(name)?;
    let op = vm.lock_operations()?;
    let config = checkpointable(&vm, name)?;
    let criu = Criu::locate().in_vm(name)?;
    let mut keeper = protocol::Conversation::start(
        &vm.control_socket(),
        &Request::Checkpoint {
            leave_running: false,
            criu: criu.path().to_path_buf(),
            lazy: true,
            hold_frozen: false,
        },
        DUMP_TIMEOUT,
    )
    .map_err(|source| protocol::silent(name, source))?;
    protocol::expect(keeper.answer(), name, |response| match response {
        Response::Dumped => Ok(()),
        other => Err(other),
    })?;
    let passed = keeper.passed();
    let lazy = LazyCheckpoint {
        vm: vm.clone(),
        keeper,
        _op: op,
    };
    // A keeper of this protocol version always passes it; without it, this side says it is
    // done, whereupon the keeper makes CRIU's transfer fail (it holds a copy of the connection
    // until then), and the answer says what CRIU made of it.
    let Some(page_server) = passed.map(UnixStream::from) else {
        let why = "its keeper said Dumped without passing the connection to CRIU's page server";
        let _ = lazy.keeper.done_sending();
        return Err(lazy.resume(failed(name, why)));
    };
    let recorded = match crate::test_hooks::set(FAIL_AFTER_DUMPED) {
        Some(_) => Err(failed(name, format!("{FAIL_AFTER_DUMPED} is set (a test)"))),
        None => record_subnet(root, &vm, &config),
    };
    match recorded {
        Ok(()) => Ok((lazy, page_server)),
        // As after any failure before the release (`migration::post_copy`): frozen until the
        // keeper has taken the processes' TCP connections out of CRIU's repair mode.
        Err(e) => {
            let frozen = crate::vm_group::cgroup_path(&config).freeze(Duration::from_secs(10));
            feather_migrate::pages::abort(&page_server);
            let e = lazy.resume(e);
            thaw_unless_keeper_died(frozen.ok(), &vm);
            Err(e)
        }
    }
}

impl LazyCheckpoint {
    /// After a failure `e` before the receiver ran the VM, the page transfer made to fail
    /// (`feather_migrate::pages::abort`, by the caller): waits for CRIU to let the VM's
    /// processes here go on, and says what became of them.
    pub(crate) fn resume(mut self, e: VmError) -> VmError {
        let name = self.vm.name().to_string();
        match self.dump_ended() {
            // The page transfer failed, as asked: CRIU let the processes go on, and the keeper
            // thaws them once told this side is done.
            Err(VmError::Keeper(_)) => match self.thawed() {
                Ok(()) => VmError::MigrationFailed {
                    vm: name,
                    source: Box::new(e),
                },
                Err(why) => failed(
                    &name,
                    format!(
                        "migration failed ({}), and its keeper did not let it run on here ({}); \
                         `feather ls` shows it running if it does",
                        causes(&e),
                        causes(&why)
                    ),
                ),
            },
            // CRIU took the transfer for finished and ended them (what the relay holding back
            // the receiver's end prevents); their memory was in CRIU's page server only.
            Ok(()) => failed(
                &name,
                format!(
                    "migration failed ({}), and the VM is lost: CRIU ended its processes here \
                     as if the receiver had taken it, and its checkpoint here lacks its memory \
                     (a post-copy dump leaves that to the page server), so it cannot be \
                     restored; `feather rm {name}` removes what is left",
                    causes(&e)
                ),
            ),
            Err(unknown) => failed(
                &name,
                format!(
                    "migration failed ({}), and whether the VM runs here again is not known: \
                     its keeper did not say ({}); `feather ls` shows it running if it does",
                    causes(&e),
                    causes(&unknown)
                ),
            ),
        }
    }

    /// Whether the dump has ended already, before the receiver ran the VM: the keeper's answer
    /// waits (CRIU's page server failed, or the keeper ended). Such a VM must not be let go:
    /// the receiver could fetch none of its memory. Asked without waiting; a poll that fails
    /// counts as ended (the VM is then kept here, where it can run on).
    pub(crate) fn ended_early(&self) -> bool {
        self.keeper.answer_waiting().unwrap_or(true)
    }

    /// Waits until the page server has served every page and the VM's processes here have
    /// ended (`Ok`), or the fetching failed (`Err`; CRIU then lets the processes here go on,
    /// unless they were ended or are frozen). The keeper answers once it has recorded the VM
    /// checkpointed; its last steps after that are waited for by whatever removes the copy
    /// here (`lifecycle::remove`, bounded, saying which process it waits for), not here, where
    /// a keeper slow to end would be taken for pages lost.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.dump_ended()
    }

    /// The keeper's answer at the end of the dump: `Ok` once the page server has served every
    /// page (CRIU ends the processes here).
    fn dump_ended(&mut self) -> Result<()> {
        // Past the release, giving up on the answer would end the relay and lose the VM: the
        // conversation's patience (600 s) is no bound on how long the pages take.
        let answer = match self.keeper.wait_without_limit() {
            Ok(()) => self.keeper.answer(),
            Err(e) => Err(e),
        };
        protocol::expect(answer, self.vm.name(), |response| match response {
            Response::Checkpointed { .. } => Ok(()),
            other => Err(other),
        })
    }
}

impl LazyCheckpoint {
    /// After a failed dump, the VM never released (or the receiver said it could not run it):
    /// tells the keeper, which holds the processes frozen with their TCP connections in repair
    /// mode and their link down until then, that this side is done, and waits until it has let
    /// them run on. A keeper that held nothing (the VM thawed before its answer) just ends the
    /// conversation.
    fn thawed(mut self) -> Result<()> {
        let name = self.vm.name().to_string();
        self.keeper
            .done_sending()
            .map_err(|source| protocol::silent(&name, source))?;
        let answer = self.keeper.answer();
        // A keeper that held nothing ends the conversation; one that died held the VM (frozen,
        // its TCP connections in repair): it must not pass for one that let it go.
        let ended = matches!(&answer, Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof);
        if ended && keeper_died(&self.vm) {
            return Err(failed(
                &name,
                format!(
                    "its keeper died while it held the VM frozen here; it stays frozen, and \
                     `feather stop {name}` or `feather rm {name}` ends what is left"
                ),
            ));
        }
        if ended {
            return Ok(());
        }
        protocol::expect(answer, &name, |response| match response {
            Response::Thawed { .. } => Ok(()),
            other => Err(other),
        })
    }
}

/// After [`LazyCheckpoint::resume`]: thaws the VM here (its keeper has taken its TCP connections out of
/// repair mode), unless its keeper died while holding it: then it stays frozen, as the keeper
/// left it, for the clean-up of `stop` or `rm`, which kills it before any thaw.
pub(crate) fn thaw_unless_keeper_died(
    frozen: Option<feather_sys::cgroup::Frozen>,
    vm: &feather_core::VmDir,
) {
    match frozen {
        Some(frozen) if keeper_died(vm) => frozen.keep(),
        frozen => drop(frozen),
    }
}

/// Whether the keeper recorded for `vm` has ended (no such process, or a zombie). A pid taken
/// since by another process passes for the keeper.
pub(crate) fn keeper_died(vm: &feather_core::VmDir) -> bool {
    let Some(pid) = vm.read_state().ok().and_then(|state| state.keeper_pid) else {
        return true;
    };
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// `feather restore`: brings a checkpointed VM back; with `import`, first adds it to this state
/// root from an archive made by `feather checkpoint --export`, if its config asks nothing of
/// this host beyond what `accepted` states (see [`crate::imported`]).
pub fn restore(root: &StateRoot, name: &VmName, import: Option<(&Path, &Accepted)>) -> Result<()> {
    restore_with(root, name, import, None)
}

/// [`restore`], with the network namespace `netns` made ahead for the VM (see
/// `migration::receive`), which its keeper uses if the checkpoint left the VM's out.
pub(crate) fn restore_with(
    root: &StateRoot,
    name: &VmName,
    import: Option<(&Path, &Accepted)>,
    netns: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<()> {
    crate::init::check_descriptor_limit(name.as_str())?;
    if let Some((file, accepted)) = import {
        import_archive(root, name, Source::File(file), accepted, None)?;
    }
    let vm = root.open(name)?;
    let _op = vm.lock_operations()?;
    match vm.read_state()?.status {
        VmStatus::Checkpointed => {}
        VmStatus::Running => return Err(Error::Running(name.to_string()).into()),
        // A --leave-running checkpoint leaves its images here, but the VM ran on over its
        // layer: they describe processes whose files have changed since, and are never
        // restored (an export, taken frozen, is).
        _ if vm.checkpoint_dir().join(INVENTORY).exists() => {
            return Err(failed(
                name,
                format!(
                    "has run since its last checkpoint (left running, or restored), so its \
                     files no longer match that checkpoint's processes and it cannot be \
                     restored; a VM left running is restored from an export taken with the \
                     checkpoint (`feather checkpoint {name} --leave-running --export FILE`, then \
                     `feather restore {name} --import FILE` in another state root)"
                ),
            ))
        }
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
    images::refuse_if_released(&vm, "restoring it")?;
    if let Some(receiver) = held_for(&vm) {
        if !receiver.runs() {
            return Err(failed(
                name,
                format!(
                    "was received by a migration that was never confirmed (the `feather serve` \
                     that received it, pid {}, ended first), so the sending host kept it; \
                     `feather rm {name}` removes this copy",
                    receiver.pid
                ),
            ));
        }
    }
    let config = vm.read_config()?;
    let state_folders = crate::hiding::state_folders_strict(root)?;
    let placement = images::Placement {
        base: &config.base,
        state_folders: &state_folders,
    };
    images::read_layers(
        &vm.checkpoint_dir(),
        name,
        images::Reading::Restore,
        &placement,
    )?;
    Criu::locate().in_vm(name)?;
    lifecycle::spawn_keeper_with(root, &vm, true, netns)
}

/// Adds the VM in `file` to this state root under its recorded name, which must be `name`, as a
/// checkpointed VM with a new id (its cgroup must not meet the original's, which may still run).
/// Where an imported VM comes from.
pub(crate) enum Source<'s, 'a> {
    /// An archive made by `checkpoint --export`.
    File(&'s Path),
    /// A migration: its archive is unpacked as it arrives, and checked before it is used.
    Migration(
        &'s mut feather_migrate::transfer::Incoming<'a>,
        &'s mut dyn FnMut(Progress),
    ),
}

/// `held_by`: the `feather serve` receiving it; the VM is marked as waiting for it
/// before it appears here (see `snapshot::hold`).
pub(crate) fn import_archive(
    root: &StateRoot,
    name: &VmName,
    mut source: Source,
    accepted: &Accepted,
    held_by: Option<Receiver>,
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
    // Made and locked here, and held until it is placed: the sweep of dead creates' folders
    // (`StateRoot::set_aside_vms_sweeping`, in every command) passes over an import alive,
    // however long its archive takes to arrive.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .at(&staging)?;
    let _unpacking = feather_core::store::locked_while_moved(&staging)?;
    let unpacked = match &mut source {
        Source::File(path) => archive::unpack(path, &staging),
        Source::Migration(incoming, progress) => archive::unpack_from(
            &mut incoming.archive(&mut |done, total| progress(Progress::Bytes { done, total })),
            Path::new(&file),
            &staging,
        ),
    };
    // A channel that broke (a record altered on the way) says why; tar only saw it end.
    let broken = match &mut source {
        Source::Migration(incoming, _) => incoming.broken(),
        Source::File(_) => None,
    };
    let mut config = match (unpacked, broken) {
        (Err(_), Some(source)) => {
            return Err(VmError::Received {
                vm: name.to_string(),
                file,
                source,
            })
        }
        (unpacked, _) => unpacked.in_vm(name)?,
    };
    let mut leased = false;
    let placed = (|| -> Result<()> {
        // Nothing of what arrived is used before it is known to be what the sender sent.
        if let Source::Migration(incoming, _) = &mut source {
            incoming.verify().map_err(|source| VmError::Received {
                vm: name.to_string(),
                file: file.clone(),
                source,
            })?;
        }
        // What the VM removed from its layers while they were pre-copied (a migration, or a
        // --leave-running export); an archive without a manifest is left as it is.
        feather_migrate::precopy::prune(&staging).in_vm(name)?;
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
        // What its config chose of this host, checked before anything of it is used.
        imported::check(root, &config, accepted, &file)?;
        imported::check_records(name, &staging.join("checkpoint"), &file)?;
        if let Source::Migration(..) = source {
            imported::check_received_name(root, name, accepted, &file)?;
        }
        config.limits.disk = imported::disk_here(root, &config)?;
        crate::disk::hold_imported(name, root.dir(), &staging, config.limits.disk, &file)?;
        // Its records checked before it is placed: a restore derives host folders from them.
        let state_folders = crate::hiding::state_folders_strict(root)?;
        let placement = images::Placement {
            base: &config.base,
            state_folders: &state_folders,
        };
        images::read_layers(
            &staging.join("checkpoint"),
            name,
            images::Reading::Import(&file),
            &placement,
        )?;
        config.id = lifecycle::new_id();
        // A VM with a private network keeps its address, in the same subnet only.
        let subnet = match archive::read_at_most(&staging.join("checkpoint").join(SUBNET), 4096) {
            Ok(Some(bytes)) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(encode(name, format!("{file}: its {SUBNET}")))?,
            ),
            Ok(None) => {
                return Err(failed(
                    name,
                    format!(
                        "{file}: its {SUBNET} is longer than any feather writes: it was made by \
                         hand or altered; nothing was imported"
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(failed(name, format!("{file}: its {SUBNET}: {e}"))),
        };
        feather_net::keep_address(
            root.dir(),
            name.as_str(),
            &config.network,
            subnet,
            Some(&config.id),
        )
        .in_vm(name)?;
        leased = true;
        let text = toml::to_string(&config).map_err(encode(name, "config.toml"))?;
        feather_core::atomic::write_atomic(
            &staging.join("config.toml"),
            text.as_bytes(),
            Durability::Durable,
        )?;
        let mut state = feather_core::VmState::created();
        state.status = VmStatus::Checkpointed;
        state.last_exit = Some(format!("imported from {file}"));
        let text = serde_json::to_vec_pretty(&state).map_err(encode(name, "state.json"))?;
        feather_core::atomic::write_atomic(
            &staging.join("state.json"),
            &text,
            Durability::Durable,
        )?;
        if let Some(receiver) = held_by {
            feather_core::atomic::write_atomic(
                &staging.join("checkpoint").join(HOLD),
                receiver.to_text().as_bytes(),
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

/// What a long action tells whoever shows its progress.
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// A new step begins.
    Phase(&'a str),
    /// Bytes of the step's data done so far, of `total` (0: not known).
    Bytes { done: u64, total: u64 },
    /// A migration froze the VM just now; it stays frozen until it runs at the receiver.
    Frozen,
    /// The migrated VM runs at the receiver: its freeze is over.
    Resumed,
    /// About how long the freeze will be, said before it begins.
    EstimatedFreeze(Duration),
    /// Post-copy: pages of the VM's memory not yet at the receiver (about: counted from the
    /// bytes the page server sent), of `total`.
    Pages { left: u64, total: u64 },
}

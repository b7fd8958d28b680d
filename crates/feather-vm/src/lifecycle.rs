//! A VM's life: create, start, stop, remove, and the throw-away run. These are the functions the
//! CLI calls; they talk to a running VM only through its keeper.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use feather_core::atomic::Durability;
use feather_core::error::IoContext;
use feather_core::state::now;
use feather_core::trace;
use feather_core::{
    Error, Limits, NetworkConfig, StateRoot, VmConfig, VmDir, VmName, VmState, VmStatus,
};
use feather_sys::beneath;

use crate::error::{failed, io, InVm, Result, VmError};
use crate::hiding::MOUNT_POINTS;
use crate::keeper::{self, Keeper};
use crate::launch::{self, KeeperArgs};
use crate::protocol::{self, Request, Response};
use crate::workload::Workload;

/// What `feather create` is asked for.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub base: Option<PathBuf>,
    pub limits: Limits,
    pub ephemeral: bool,
    pub network: NetworkConfig,
    pub tags: Vec<String>,
    /// `--disk`: bytes the VM's layers may hold (a project quota; `limits.disk` is ignored).
    pub disk: Option<u64>,
    /// `--allow-userns`: the VM's processes may create user namespaces.
    pub allow_userns: bool,
    /// `--ro PATH`: paths of the base the VM sees read-only, not through its layer.
    pub read_only: Vec<PathBuf>,
}

/// Creates a VM: a folder with its config and an empty layer. Nothing is copied.
pub fn create(root: &StateRoot, name: &VmName, options: &CreateOptions) -> Result<VmDir> {
    create_with_config(root, name, options).map(|(vm, _)| vm)
}

/// [`create`], with the config it wrote: a throw-away VM started right after by the same
/// process hands it to its keeper instead of reading the file back. Not its look at the
/// registry of roots (`--ro`): the keeper takes its own just before it builds the hiding
/// layer, so that a root registered in between is hidden by the layer, not only by the start's
/// last look (review start33 L1).
fn create_with_config(
    root: &StateRoot,
    name: &VmName,
    options: &CreateOptions,
) -> Result<(VmDir, VmConfig)> {
    let base = checked_base(root, options.base.as_deref().unwrap_or(Path::new("/")))?;
    // The host's state folders (a look at the registry of roots) only when there is a path
    // to check against them: most VMs have no `--ro`.
    let read_only = if options.read_only.is_empty() {
        Vec::new()
    } else {
        crate::read_only::resolve(
            &base,
            &options.read_only,
            &crate::hiding::state_folders(root),
        )?
    };
    let scaffold: Vec<PathBuf> = MOUNT_POINTS
        .iter()
        .filter(|dir| !base.join(dir).is_dir())
        .map(|dir| PathBuf::from("/").join(dir))
        .collect();
    let mut limits = options.limits.clone();
    limits.disk = match options.disk {
        Some(bytes) => {
            fs::create_dir_all(root.dir()).at(root.dir())?;
            Some(crate::disk::allocate(name, root.dir(), bytes)?)
        }
        None => None,
    };
    let id = new_id();
    let mut network = options.network.clone();
    feather_net::allocate(root.dir(), &id, &mut network, !options.ephemeral).in_vm(name)?;
    let config = VmConfig {
        name: name.clone(),
        id,
        base,
        limits,
        created: now(),
        ephemeral: options.ephemeral,
        scaffold,
        services: Vec::new(),
        fresh_state: false,
        network,
        tags: options.tags.clone(),
        allow_userns: options.allow_userns,
        read_only,
    };
    let durability = if options.ephemeral {
        Durability::Volatile
    } else {
        Durability::Durable
    };
    let lease = feather_net::lease_files(root.dir(), &config.network);
    let vm = root
        .create_synced_with(&config, durability, &lease)
        .inspect_err(|_| {
            let _ = feather_net::release(root.dir(), &config.id, &config.network);
        })?;
    // Before the scaffold folders are made, so that they too are in the VM's project.
    if let Some(disk) = config.limits.disk {
        if let Err(e) = crate::disk::prepare(name, root.dir(), &vm, disk) {
            crate::disk::release(root.dir(), &vm, disk);
            let _ = fs::remove_dir_all(vm.path());
            let _ = feather_net::release(root.dir(), &config.id, &config.network);
            return Err(e);
        }
    }
    // A layer in memory gets them from its keeper, which makes it.
    let upper = crate::layers::home(&vm, &config).upper;
    for dir in config.scaffold.iter().filter(|_| !config.layer_in_memory()) {
        let path = upper.join(dir.strip_prefix("/").unwrap_or(dir));
        fs::create_dir(&path).at(&path)?;
    }
    Ok((vm, config))
}

/// 12 random hex digits from the kernel's generator.
pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 6];
    let _ = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts a VM in the background: spawns its keeper and waits until the VM is up or has failed.
pub fn start(root: &StateRoot, name: &VmName) -> Result<()> {
    let vm = root.open(name)?;
    let _op = vm.lock_operations()?;
    // Booted afresh from its layer, with its name and address, while it may run there.
    crate::images::refuse_if_released(&vm, "starting it")?;
    match vm.read_state()?.status {
        VmStatus::Running => return Err(failed(name, "is already running")),
        VmStatus::Checkpointed => {
            return Err(failed(
                name,
                format!(
                "is checkpointed: resume it with `feather restore {name}` (or `feather rm {name}`)"
            ),
            ))
        }
        VmStatus::Crashed => recover(&vm)?,
        VmStatus::Created | VmStatus::Stopped => {}
    }
    spawn_keeper(root, &vm, false)
}

/// How long a start, restore or reset waits for the VM's last keeper to end.
const LAST_KEEPER_PATIENCE: Duration = Duration::from_secs(60);

/// How long [`await_last_keeper`] waits before it says what it waits for: a flush on a busy
/// disk takes seconds, and a command silent that long looks hung.
const KEEPER_WAIT_UNSAID: Duration = Duration::from_secs(1);

/// Waits until the VM's last keeper has ended: its process gone, and its lock let go. A kept
/// VM's keeper answers its stop before it lets go of the VM's mounts, whose unmount flushes
/// the layer's filesystem (`Keeper::serve`), and lets go of its lock after them. Killed in
/// between, it lets go of the lock as its descriptors close, before the kernel unmounts what
/// its hold on the VM's mount namespace kept: a start that went by the lock alone mounted the
/// layer beside the old mounts (overlayfs: "upperdir is in-use … undefined behavior"). So this
/// waits for the process recorded in the lock's file (`keeper::take_keeper_lock`), whose
/// pidfd tells of its end once the kernel is done with its exit, its mounts included; then
/// for the lock (held by a keeper of an older build, which recorded nothing). Called with
/// the VM's operations lock held and the VM not running, so the holder can only be a keeper
/// ending. Bounded: a flush on a hung disk never ends.
pub(crate) fn await_last_keeper(vm: &VmDir) -> Result<()> {
    let deadline = std::time::Instant::now() + LAST_KEEPER_PATIENCE;
    let recorded = vm.last_keeper();
    if let Some((pid, started)) = recorded {
        let pid = nix::unistd::Pid::from_raw(pid);
        let soon = std::time::Instant::now() + KEEPER_WAIT_UNSAID;
        let mut ended = feather_sys::process::await_end(pid, started, soon).in_vm(vm.name())?;
        if !ended {
            eprintln!(
                "feather: VM {}: waiting for its last keeper, pid {pid}, to end (up to {} s): \
                 it finishes its last steps after its answer, such as writing a stopped VM's \
                 layer to disk",
                vm.name(),
                LAST_KEEPER_PATIENCE.as_secs()
            );
            ended = feather_sys::process::await_end(pid, started, deadline).in_vm(vm.name())?;
        }
        if !ended {
            return Err(last_keeper_stays(vm, Some(pid)));
        }
    }
    if !vm.keeper_ends_by(deadline)? {
        return Err(last_keeper_stays(vm, None));
    }
    Ok(())
}

/// The error of [`await_last_keeper`] when its patience ran out, naming the process when known.
fn last_keeper_stays(vm: &VmDir, pid: Option<nix::unistd::Pid>) -> VmError {
    let who = pid.map_or_else(
        || {
            format!(
                "the process holding {}",
                vm.path().join("keeper.lock").display()
            )
        },
        |pid| format!("its last keeper, pid {pid},"),
    );
    let what = pid.map_or_else(
        || format!("`fuser -v {}`", vm.path().join("keeper.lock").display()),
        |pid| {
            if is_stopped(pid) {
                format!("it is stopped: `kill -CONT {pid}` lets it go on")
            } else {
                format!("`cat /proc/{pid}/stack` shows what it waits for")
            }
        },
    );
    failed(
        vm.name(),
        format!(
            "{who} has not ended within {} s (it lets go of the VM's mounts as it ends, and \
             their unmount writes the VM's layer to disk); {what}; try again once it has ended",
            LAST_KEEPER_PATIENCE.as_secs()
        ),
    )
}

/// Whether `pid` is stopped by a signal (state T in `/proc/<pid>/stat`).
fn is_stopped(pid: nix::unistd::Pid) -> bool {
    feather_sys::process::state(pid) == Some('T')
}

/// Spawns a VM's background keeper, which boots the VM or, with `restore`, restores it from its
/// checkpoint, and waits until the VM is up or has failed.
pub(crate) fn spawn_keeper(root: &StateRoot, vm: &VmDir, restore: bool) -> Result<()> {
    spawn_keeper_with(root, vm, restore, None)
}

/// [`spawn_keeper`], handing a restoring keeper the network namespace `netns`, made ahead.
pub(crate) fn spawn_keeper_with(
    root: &StateRoot,
    vm: &VmDir,
    restore: bool,
    netns: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<()> {
    let name = vm.name();
    await_last_keeper(vm)?;
    trace::phase("wait for the VM's last keeper");
    // Never beside an overlay of the VM's layer that something still keeps alive (a file
    // it handed over to another VM, say): two overlays on one upper layer lose files.
    crate::handed_over::refuse_while_alive(vm, &vm.read_config()?)?;
    trace::phase("check no hand-over keeps its layer");
    // Close-on-exec (std's pipe is): the keeper is passed the write end by name, and no
    // program another thread of this process starts meanwhile (`feather serve`'s, the web
    // view's) gets it, which would keep the read below from ever seeing the keeper's end.
    let (mut ready_read, ready_write) = std::io::pipe().map_err(io(name, "pipe"))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(vm.keeper_log())
        .at(vm.keeper_log())?;
    let exe = launch::program().map_err(io(name, "cannot find the feather binary"))?;
    if !exe.exists() {
        return Err(failed(
            name,
            format!(
                "cannot start its keeper: {} is missing; install {} beside feather (cargo builds and installs both)",
                exe.display(),
                launch::KEEPER_PROGRAM
            ),
        ));
    }
    let args = KeeperArgs {
        state_dir: root.dir().to_path_buf(),
        run_dir: root.run_dir().to_path_buf(),
        ready_fd: ready_write.as_raw_fd(),
        restore,
        netns_fd: netns.map(|fd| fd.as_raw_fd()),
        terminal: starting_terminal(),
        name: name.clone(),
    };
    let mut command = Command::new(exe);
    command
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(log.try_clone().at(vm.keeper_log())?)
        .stderr(log);
    // The keeper closes at its start what it was not named (feather-keeper's `take_only`).
    let handed: Vec<std::os::fd::BorrowedFd<'_>> =
        std::iter::once(std::os::fd::AsFd::as_fd(&ready_write))
            .chain(netns)
            .collect();
    trace::phase("check the VM, open its keeper's log");
    let mut child = feather_sys::process::spawn_handing_over(&mut command, &handed)
        .map_err(io(name, "cannot start its keeper"))?;
    drop(ready_write);
    trace::phase("spawn the keeper");
    let report = crate::boot::read_report(&mut ready_read);
    trace::phase("wait for the keeper's report (its phases: keeper.log)");
    match report {
        Ok(()) => Ok(()),
        Err(crate::boot::BootError::KeeperFailed { message }) => {
            let _ = child.wait();
            // The keeper's own error, which names the VM already.
            Err(VmError::Keeper(message))
        }
        Err(crate::boot::BootError::Closed { .. }) => {
            let _ = child.wait();
            Err(failed(
                name,
                format!(
                    "its keeper died while starting it (see {})",
                    vm.keeper_log().display()
                ),
            ))
        }
        Err(source) => {
            let _ = child.wait();
            Err(VmError::Boot {
                vm: name.to_string(),
                during: "its keeper",
                source,
            })
        }
    }
}

/// The terminal this command was started from, if any: where the VM's `ask` rules ask.
pub(crate) fn starting_terminal() -> Option<PathBuf> {
    nix::unistd::ttyname(std::io::stdin()).ok()
}

/// How a [`stop`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The VM's keeper stopped it; how its processes ended, as the keeper says, and what
    /// ending its hand-overs did in other VMs (`crate::handed_over`), one sentence each.
    ByItsKeeper {
        how: String,
        handed_over: Vec<String>,
    },
    /// Its keeper was gone (dead before the stop, or killed during it): the stop cleaned up
    /// what it left instead, and says why. Worth telling the user: the VM did not end as asked.
    CleanedUp(&'static str),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::ByItsKeeper { how, handed_over } => {
                f.write_str(how)?;
                handed_over
                    .iter()
                    .try_for_each(|said| write!(f, "; {said}"))
            }
            Stopped::CleanedUp(why) => f.write_str(why),
        }
    }
}

/// Stops a running VM: its processes get SIGTERM, then SIGKILL after `grace`. A crashed VM
/// is cleaned up instead.
pub fn stop(root: &StateRoot, name: &VmName, grace: Duration) -> Result<Stopped> {
    let vm = root.open(name)?;
    let _op = vm.lock_operations_unless_holder_stopped("stop")?;
    match vm.read_state()?.status {
        VmStatus::Running => {}
        VmStatus::Crashed => {
            recover(&vm)?;
            return Ok(Stopped::CleanedUp("was crashed; cleaned up"));
        }
        VmStatus::Created | VmStatus::Stopped | VmStatus::Checkpointed => {
            return Err(Error::NotRunning(name.to_string()).into())
        }
    }
    let answer = protocol::call(
        &vm.control_socket(),
        &Request::Stop {
            grace_secs: grace.as_secs(),
        },
        grace + Duration::from_secs(30),
    );
    // The keeper closes the socket as it exits; the state tells how the VM ended. A keeper that
    // died before it recorded the stop (killed, say, while the VM's processes had their grace)
    // left the VM reading crashed and its cgroup, network and run folder in place: cleaned up
    // here, as a stop of a crashed VM does, rather than called stopped.
    if answer.is_err() && vm.keeper_ends_by(std::time::Instant::now() + KEEPER_EXIT_PATIENCE)? {
        let state = vm.read_state()?;
        if state.status == VmStatus::Crashed {
            recover(&vm)?;
            return Ok(Stopped::CleanedUp(
                "lost its keeper while stopping; cleaned up",
            ));
        }
        return Ok(Stopped::ByItsKeeper {
            how: state.last_exit.unwrap_or_else(|| "stopped".into()),
            handed_over: Vec::new(),
        });
    }
    protocol::expect(answer, name, |response| match response {
        Response::Stopped { how, handed_over } => Ok(Stopped::ByItsKeeper { how, handed_over }),
        other => Err(other),
    })
}

/// How long a command whose keeper closed the control socket without an answer waits for the
/// keeper's lock to go: an exiting process's descriptors are closed one after another, and its
/// lock's may be closed after its socket's (under load, up to tens of milliseconds later).
const KEEPER_EXIT_PATIENCE: Duration = Duration::from_secs(2);

/// Cleans up after a keeper that died without doing so itself, and records it. Loses no data:
/// the VM's layer is untouched.
pub fn recover(vm: &VmDir) -> Result<()> {
    let config = vm.read_config()?;
    keeper::remove_leftovers(vm, &config);
    keeper::sweep_removed_roots();
    // What its keeper's stop would have ended, now that none of its processes is left: the
    // other VMs' holds on files it handed over to them.
    if let Some(root) = vm.root() {
        for said in crate::handed_over::end_holders(&root, vm).said {
            eprintln!("feather: VM {}: {said}", vm.name());
        }
    }
    let mut state = vm.read_state()?;
    if state.status == VmStatus::Crashed {
        state.status = VmStatus::Stopped;
        state.keeper_pid = None;
        state.init_pid = None;
        state.init_start_ticks = None;
        state.stopped = Some(now());
        state.last_exit = Some("its keeper died; cleaned up by feather".into());
        vm.write_state(&state, Durability::Durable)?;
    }
    Ok(())
}

/// Finishes the teardowns of throw-away VMs that were set aside when their command ended (see
/// `Keeper::hand_off`). One whose lock is free was left half-way by a child that died: it is
/// finished here. One still under way is waited for when `wait` (every command but `run --rm`,
/// so that nothing feather shows or counts includes a teardown under way), else left to its
/// child. Creates that died half-way are swept on the way ([`StateRoot::set_aside_vms_sweeping`]).
pub fn settle_throw_aways(root: &StateRoot, wait: bool) {
    // The same listing sweeps what creates that died half-way left (every create's command
    // settles first).
    for aside in root.set_aside_vms_sweeping() {
        let Ok(opened) = aside.existing_keeper_lock() else {
            continue;
        };
        let Some(lock) = opened else {
            // The folder's removal, a teardown's last step (its cgroup, network and lease went
            // before), reached the lock file: what is left of the folder goes, beside whoever
            // removes it still, or for one that died half-way through.
            let _ = fs::remove_dir_all(aside.path());
            let _ = fs::remove_dir_all(aside.run_dir());
            continue;
        };
        let locked = if wait {
            lock.lock().is_ok()
        } else {
            lock.try_lock().is_ok()
        };
        // Done meanwhile, by its child: nothing is left to do.
        if locked && aside.path().exists() {
            finish_throw_away(root, &aside, keeper::remove_leftovers);
        }
    }
    feather_net::linger::settle(root, wait);
}

/// What `feather network down` did with the root's network.
pub use feather_net::linger::Ended as NetworkDown;

/// How long `feather network down` waits for a VM's start or a refill of the pool.
pub use feather_net::linger::DOWN_PATIENCE as NETWORK_DOWN_PATIENCE;

/// `feather network down`: the root's bridge and tables go now, unless a VM uses them, rather
/// than when the linger after its last throw-away VM ends (feather_net::linger).
pub fn take_network_down(root: &StateRoot) -> NetworkDown {
    feather_net::linger::end(root)
}

/// In the process a foreground `run --rm` handed its teardown to (see `Keeper::hand_off`),
/// which holds the VM's keeper lock: finishes the VM set aside as `folder`. With a private
/// network, the root's linger for the next VM is begun before the VM's folder goes; the
/// process lingers ([`linger_for_the_next_vm`]) once it has let go of the keeper lock.
pub fn finish_handed_off<'a>(
    root: &'a StateRoot,
    folder: &str,
) -> Option<feather_net::linger::Lingering<'a>> {
    // One listing of `vms/` finds this VM's folder and the others' teardowns under way.
    let set_aside = root.set_aside_vms();
    let aside = set_aside
        .iter()
        .find(|vm| vm.path().file_name().is_some_and(|name| name == folder))?;
    let private = release_throw_away(root, aside, keeper::remove_throw_away_leftovers);
    let lingering = private.then(|| {
        // Namespaces made ahead when VMs come one after another (other teardowns under way when
        // this one began, from the listing before the release: one set aside during it may be
        // counted by neither finisher, one finished during it still by this one; either only
        // decides whether a refill is asked for now, and this root's linger, begun before the
        // folder goes, lets a later finisher's refill find it: review startcli34 L6).
        let others_finishing = set_aside.iter().any(|other| other.path() != aside.path());
        feather_net::linger::refill_pool_if_in_demand(root.dir(), others_finishing);
        feather_net::linger::begin(root)
    });
    // The VM's folder goes last: until then every command that waits for teardowns waits for
    // this process by the folder's keeper lock, its refill included. Gone first, it left a
    // moment in which such a command found no folder and went on while this process still ran.
    let _ = fs::remove_dir_all(aside.path());
    lingering
}

/// After a throw-away VM's teardown, in the process it was handed to, with the VM's keeper
/// lock let go (a command that opened the lock before the folder went waits for it): the
/// root's bridge and tables wait for the next VM (feather_net::linger; the VM's run checked
/// the period).
pub fn linger_for_the_next_vm(lingering: feather_net::linger::Lingering) {
    let period = feather_net::linger::period().unwrap_or(feather_net::linger::DEFAULT_PERIOD);
    lingering.hold(period);
}

/// Removes what a throw-away VM that is set aside still holds: leftovers of its network and
/// cgroup (by `leftovers`), its lease, its folders. Whether it had a private network.
fn finish_throw_away(root: &StateRoot, aside: &VmDir, leftovers: fn(&VmDir, &VmConfig)) -> bool {
    let private = release_throw_away(root, aside, leftovers);
    let _ = fs::remove_dir_all(aside.path());
    private
}

/// [`finish_throw_away`] but the VM's folder, which holds its keeper lock. A folder whose
/// config cannot be read still names the VM's id (`.removing-<name>-<id>`), and with it the
/// VM's cgroup, which goes all the same: removed without it, the folder was the last record
/// of the group.
fn release_throw_away(root: &StateRoot, aside: &VmDir, leftovers: fn(&VmDir, &VmConfig)) -> bool {
    let mut private = false;
    match aside.read_config() {
        Ok(config) => {
            leftovers(aside, &config);
            let _ = feather_net::release(root.dir(), &config.id, &config.network);
            private = config.network.mode == feather_core::NetMode::Private;
        }
        Err(e) => {
            eprintln!(
                "feather: the teardown of throw-away VM {} ({}) cannot read its config: {}",
                aside.name(),
                aside.path().display(),
                feather_core::error::causes(&e)
            );
            if let Some(id) = aside.set_aside_id() {
                keeper::remove_group_of_id(id, aside.name());
            }
        }
    }
    let _ = fs::remove_dir_all(aside.run_dir());
    private
}

/// A `--base` as a VM records it: the folder's canonical path, outside the state root.
pub(crate) fn checked_base(root: &StateRoot, given: &Path) -> Result<PathBuf> {
    let base = fs::canonicalize(given).map_err(|_| Error::MissingBase(given.to_path_buf()))?;
    if !base.is_dir() {
        return Err(Error::MissingBase(base).into());
    }
    if base.starts_with(root.dir()) {
        return Err(Error::InvalidValue {
            what: "--base",
            value: base.display().to_string(),
            why: "it lies inside feather's state folder".into(),
        }
        .into());
    }
    Ok(base)
}

/// Removes a VM and its layer. A running VM is refused unless `force`, which stops it first.
pub fn remove(root: &StateRoot, name: &VmName, force: bool) -> Result<()> {
    let vm = root.open(name)?;
    match vm.read_state()?.status {
        VmStatus::Running if !force => return Err(Error::Running(name.to_string()).into()),
        VmStatus::Running => {
            let throw_away = vm.read_config()?.ephemeral;
            stop(root, name, Duration::from_secs(2))?;
            if throw_away && removed_by_its_run(root, name)? {
                return Ok(());
            }
        }
        _ => {}
    }
    let _op = vm.lock_operations_unless_holder_stopped("remove")?;
    if vm.read_state()?.status == VmStatus::Running {
        return Err(Error::Running(name.to_string()).into());
    }
    // A stop answers before its keeper's last steps (the root's network if this VM was its
    // last user, the flush of the layer as its mounts go): the VM is gone once they are done.
    // Returned before, `rm` left a keeper that made the removal lock in a root whose folder
    // was being removed next, and removed the layer under an overlay still mounted.
    await_last_keeper(&vm)?;
    let config = vm.read_config()?;
    keeper::remove_leftovers(&vm, &config);
    keeper::sweep_removed_roots();
    // A VM whose keeper died before its stop ended what others hold of files it handed over
    // (a crashed VM's clean-up is the lines above): ended now, as its stop would have.
    for said in crate::handed_over::end_holders(root, &vm).said {
        eprintln!("feather: VM {name}: {said}");
    }
    crate::handed_over::refuse_while_alive(&vm, &config)?;
    if let Some(disk) = config.limits.disk {
        // Before the folder goes: an image's mounts would keep it busy.
        crate::disk::release(root.dir(), &vm, disk);
    }
    // Renamed out of the way first, so a half-finished removal never looks like a VM.
    let vms = root.dir().join("vms");
    let doomed_name = format!(".creating-removed-{}-{}", name, config.id);
    let doomed = vms.join(&doomed_name);
    // Locked before the rename, until it is removed: a sweep of what creates left passes over
    // a `.creating-*` folder whose lock is held.
    let _moving = feather_core::store::locked_while_moved(vm.path())?;
    fs::rename(vm.path(), &doomed).at(vm.path())?;
    // Through descriptors, at any depth: the VM chose how deep its layer's folders nest.
    beneath::open_root(&vms)
        .and_then(|vms| beneath::remove_tree(&vms, doomed_name.as_ref()))
        .at(&doomed)?;
    feather_net::release(root.dir(), &config.id, &config.network).in_vm(name)?;
    // A keeper killed before it recorded the VM's stop (a crashed VM, cleaned up above) left
    // the root's bridge and tables, and they go here unless a VM uses them (otherwise nothing
    // is left to remove: a look at the bridge's index). A removal under way (a stop's keeper's,
    // right after its answer) is not waited for.
    if config.network.mode == feather_core::NetMode::Private {
        feather_net::linger::remove_unless_used_or_lingering(root);
    }
    Ok(())
}

/// Whether a stopped throw-away VM is gone: the `run --rm` that keeps it removes it as it
/// ends, so `rm -f` waits for that (a removal of its own would race it for the folder). False
/// when the run died first and left it to be removed here.
fn removed_by_its_run(root: &StateRoot, name: &VmName) -> Result<bool> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let vm = match root.open(name) {
            Ok(vm) => vm,
            Err(feather_core::Error::NotFound(_)) => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        if !vm.keeper_alive()? || std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `feather run --rm`: a throw-away VM for one command, kept by this very process, removed
/// when the command ends. Returns the command's exit code. `peers`: see [`Keeper::begin`].
pub fn run_ephemeral(
    root: &StateRoot,
    name: &VmName,
    options: &CreateOptions,
    workload: Workload,
    peers: std::sync::Arc<dyn feather_shuttle::Peers>,
) -> Result<i32> {
    let options = CreateOptions {
        ephemeral: true,
        ..options.clone()
    };
    // Read again by the process its teardown is handed to, which can tell no one.
    feather_net::linger::period().map_err(|source| VmError::Net {
        vm: name.to_string(),
        source: Box::new(source),
    })?;
    // The workload's stdio: pipes this process relays, never the caller's own descriptors.
    let (ends, relay) =
        crate::relay::pipes().map_err(|e| io(name, "cannot make the command's pipes")(e.into()))?;
    let (vm, config) = create_with_config(root, name, &options)?;
    trace::phase("create the VM's folder and lease");
    let mut keeper = match Keeper::boot(root, &vm, config, Some(workload), Some(ends)) {
        Ok(keeper) => keeper,
        Err(e) => {
            remove_failed_throw_away(root, &vm);
            return Err(e);
        }
    };
    // The signals the keeper passes on to the command are held from here (init is cloned, so
    // it does not inherit the mask), before any thread starts: a Ctrl-C that comes while the
    // command starts waits for the keeper's loop instead of ending this process (or landing on
    // the relay's thread).
    let _held = feather_sys::process::block_signals(&crate::keeper::HANDLED).in_vm(name)?;
    // The relay runs beside the keeper's loop; it is started once init is cloned (a clone
    // must come from a single-threaded process).
    let relaying = relay.spawn().map_err(io(name, "cannot relay stdio"));
    keeper.begin(root, starting_terminal(), peers);
    trace::phase("open the broker, start the command");
    let ended = keeper.serve(true);
    if let Ok(relaying) = relaying {
        relaying.finish();
    }
    trace::phase("finish relaying stdio");
    Ok(ended?.code)
}

/// Removes a throw-away VM whose start failed: what its keeper left (a keeper that died while
/// starting it cleaned up nothing: its cgroup stayed, and the folder removed here was its only
/// record), its lease, its folder. Not while another keeper holds it. The root's bridge stays
/// for the next VM, as after every throw-away VM's teardown (`feather_net::linger`).
pub(crate) fn remove_failed_throw_away(root: &StateRoot, vm: &VmDir) {
    let Ok(Some(_lock)) = vm.lock_keeper() else {
        return;
    };
    if let Ok(config) = vm.read_config() {
        keeper::remove_throw_away_leftovers(vm, &config);
        let _ = feather_net::release(root.dir(), &config.id, &config.network);
    }
    let _ = fs::remove_dir_all(vm.path());
}

/// `feather run --rm -t`: the command needs a terminal of the VM's own devpts, which exists only
/// once the VM is up, so the throw-away VM is started in the background, entered like `exec -t`,
/// and stopped (which removes it) when the command ends.
pub fn run_ephemeral_with_terminal(
    root: &StateRoot,
    name: &VmName,
    options: &CreateOptions,
    workload: &Workload,
) -> Result<i32> {
    let options = CreateOptions {
        ephemeral: true,
        ..options.clone()
    };
    let vm = create(root, name, &options)?;
    if let Err(e) = start(root, name) {
        remove_failed_throw_away(root, &vm);
        return Err(e);
    }
    // exec moves its caller into the VM's namespaces for good; this process must stay on the
    // host to stop the VM afterwards, so the command is entered from a child.
    let code = match feather_sys::process::fork().in_vm(name)? {
        None => std::process::exit(match crate::exec::exec(root, name, workload, true) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("feather: {}", feather_core::error::causes(&e));
                crate::workload::EXIT_CANNOT_EXEC
            }
        }),
        Some(child) => match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
            _ => crate::workload::EXIT_CANNOT_EXEC,
        },
    };
    stop(root, name, Duration::from_secs(1))?;
    Ok(code)
}

/// A VM's recorded state, for `ls` and `inspect`.
pub fn status(vm: &VmDir) -> Result<VmState> {
    Ok(vm.read_state()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throw-away VM's keeper is handed the config its creator wrote instead of reading it
    /// back: it is the one the VM's folder holds, as a keeper reading the file gets.
    #[test]
    fn the_config_handed_to_a_throw_away_vms_keeper_is_the_one_its_folder_holds() {
        let scratch = feather_testkit::ScratchDir::new("handed-config");
        let root = StateRoot::new(Some(scratch.0.join("root")));
        let options = CreateOptions {
            ephemeral: true,
            tags: vec!["handed".into()],
            read_only: vec![PathBuf::from("/usr")],
            ..CreateOptions::default()
        };
        let name = "handed".parse().unwrap();
        let (vm, handed) = create_with_config(&root, &name, &options).unwrap();
        assert_eq!(vm.read_config().unwrap(), handed);
    }

    /// The error of a wait for the VM's last keeper names the process and what to do, in one
    /// line (it once had 18 spaces in the middle, a line break without its `\`).
    #[test]
    fn a_last_keeper_that_does_not_end_is_named_in_one_plain_line() {
        let root = StateRoot::new(Some(PathBuf::from("/nonexistent/feather-root")));
        let vm = root.vm(&"vm".parse().unwrap());
        let named = last_keeper_stays(&vm, Some(nix::unistd::Pid::from_raw(4242))).to_string();
        assert!(named.contains("pid 4242"), "{named}");
        assert!(named.contains("/proc/4242/stack"), "{named}");
        let unnamed = last_keeper_stays(&vm, None).to_string();
        assert!(unnamed.contains("keeper.lock"), "{unnamed}");
        // Stopped by a signal, it goes on once told to.
        let mut stopped = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(stopped.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        while !is_stopped(pid) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let told = last_keeper_stays(&vm, Some(pid)).to_string();
        let _ = stopped.kill();
        let _ = stopped.wait();
        assert!(told.contains(&format!("kill -CONT {pid}")), "{told}");
        for message in [named, unnamed, told] {
            assert!(
                !message.contains("  ") && !message.contains('\n'),
                "{message:?}"
            );
        }
    }
}

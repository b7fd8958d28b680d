//! The keeper: one small process per running VM, on the host side. It builds the VM (cgroup,
//! namespaces, init), answers on the control socket, and when the VM ends, for whatever reason,
//! removes everything the VM held on the host.
//!
//! ```text
//! keeper ── clone3(new namespaces) ──▶ init (pid 1 inside)
//!   │  1. create the cgroup, apply limits        │  waits for GO
//!   │  2. a thread: move init into it, GO ─────▶ │  3. unshare cgroupns, assemble root, pivot
//!   │     meanwhile: bridge, veth into init's    │     (meanwhile)
//!   │     netns; send NETWORK_READY  ──────────▶ │     configure eth0
//!   │  5. record state, open control.sock ◀───── │  4. report Ready (or Failed: why)
//!   │  6. answer `feather start` (Up)            │
//!   │  7. open the broker, START ──────────────▶ │  8. close the boot socket, run the VM
//!   └─ serve until init exits, then clean up     └─ supervise
//! ```
//!
//! A throw-away VM run in the foreground (`run --rm`) reports its command's exit status before
//! the slow end of its teardown: see [`Keeper::hand_off`].

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use feather_core::atomic::{Durability, Staged};
use feather_core::error::causes;
use feather_core::error::IoContext;
use feather_core::roots::Look;
use feather_core::state::now;
use feather_core::trace;
use feather_core::{StateRoot, VmConfig, VmDir, VmName, VmState, VmStatus};
use feather_migrate::criu::DumpNote;
use feather_shuttle::Peers;
use feather_sys::cgroup::{Cgroup, Hierarchies, Limits, V2Entry};
use feather_sys::mount::LayerSync;
use feather_sys::process::{self, ChildProcess, Forked};
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;

use crate::boot::{self, KeeperReport, ToInit};
use crate::decide::{self, Phase};
pub use crate::decide::{Ended, DEFAULT_GRACE};
use crate::error::{failed, io, InVm, Result, VmError};
use crate::finisher::{Finisher, Held};
use crate::handed_over;
use crate::hiding;
use crate::idle::Quiet;
use crate::init::{self, InitPlan, InitReport};
use crate::layers;
use crate::lower_id::PinnedLower;
use crate::moment;
use crate::protocol::{self, Response};
use crate::relay::VmEnds;
use crate::root_watch::RootWatch;
use crate::rootfs::RootfsPlan;
use crate::snapshot;
use crate::transfer_watch::TransferWatch;
use crate::vm_group::cgroup_path;
use crate::workload::Workload;

/// How long a VM may take from clone to its init's report before the start is abandoned.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Signals that stop the VM (or, in the foreground, go to its workload).
pub(crate) const HANDLED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The cgroup of a VM, named by its id so VMs of one name under two state roots never meet.
/// Every VM has one, a throw-away VM without limits (`run --rm --pids max`) too: its device
/// rules live there ([`restrict_devices`]), whatever its limits. (Before, such a VM had no
/// group, to spare it the RCU grace period of its first move on cgroup v1, about 10 ms, and
/// with it no device rules: a node of the host's disk in its `/dev` opened.)
pub fn cgroup_of(config: &VmConfig) -> Option<Cgroup> {
    Some(cgroup_path(config))
}

/// Makes the VM group's `services` groups, which init binds into the VM (rootfs step 6b),
/// beside init's assembly: five cgroup mkdirs (about 0.35 ms) that init would otherwise make
/// on its way. Whoever comes first makes each; the other finds it there. A failure here is
/// left to init, which tries again and reports it.
fn make_service_groups(cgroup: &Cgroup) {
    for (subtree, _) in cgroup.service_subtrees() {
        let _ = std::fs::create_dir(subtree);
    }
}

/// Lets the VM's processes open only the devices its `/dev` holds
/// (`feather_confine::devices::vm_policy`), with every mechanism this host has: the v1
/// `devices` controller's lines on the VM's group, and the device program of the v2 group
/// above every VM's (`feather/`), which the VM's v2 group (where its processes are on v1,
/// hybrid and v2 hosts alike) inherits: loaded once per host, not at every start. Set before
/// anything of the VM's runs: at a start beside init's assembly (feather's own code, which
/// the VM's waits for), at a restore before CRIU enters the group. On a
/// host whose only mechanism is the program, a program that cannot be set fails the start;
/// where the v1 controller holds the same rules, the program is defence in depth and its
/// failure is a line in the keeper's log.
fn restrict_devices(cgroup: &Cgroup, name: &VmName) -> Result<()> {
    use feather_confine::devices;
    let v1 = cgroup
        .restrict_devices_v1(&devices::vm_v1_lines())
        .in_vm(name)?;
    // Where v2 is not mounted there is no program to set.
    let Some(group) = cgroup.v2_dir() else {
        return Ok(());
    };
    let every_vms = group.parent().unwrap_or(&group);
    match devices::share_vm_program(every_vms) {
        Ok(_) => Ok(()),
        Err(e) if v1 => {
            eprintln!(
                "feather keeper {name}: the v1 devices controller restricts its devices; the cgroup v2 device program (defence in depth) was not set: {e}"
            );
            Ok(())
        }
        Err(e) => Err(e).in_vm(name),
    }
}

pub struct Keeper {
    vm: VmDir,
    config: VmConfig,
    cgroup: Option<Cgroup>,
    init: ChildProcess,
    listener: UnixListener,
    network: feather_net::Attachment,
    durability: Durability,
    /// Set once CRIU has saved the VM and ended its processes: their end is a checkpoint.
    checkpointed: std::cell::Cell<bool>,
    /// Why a checkpoint whose processes ended is not recorded as one (its images' flush
    /// failed: [`Keeper::flush_checkpoint`]), for the asker.
    checkpoint_refused: Option<String>,
    /// Set once a pooled VM was claimed by a `run --rm` (see [`crate::pool`]): its end is that
    /// run's end, and its teardown a throw-away VM's, out of `ls`'s sight.
    claimed: std::cell::Cell<bool>,
    /// Set once a pooled VM waited unclaimed for the pool's idle time and took itself out of
    /// the pool ([`Keeper::expire`]): its teardown is a claimed VM's, but starts no refill.
    expired: std::cell::Cell<bool>,
    /// Set once a pooled VM's keeper saw its root removed or moved away ([`RootWatch`]): the
    /// identity of the root's folder it watched. Its teardown renames nothing in what is left of
    /// the root, and acts on the root's network only if the folder at the root's path is still
    /// that one (a removal that stopped short), never on a new root made there since.
    gone_root: std::cell::Cell<Option<crate::root_watch::Identity>>,
    /// A claimed VM's claimer that let go (its command ended): answered once the VM is set
    /// aside, so that its run ends with its VM, as a cold run's does.
    claimer_waiting: Option<UnixStream>,
    /// A VM received by a migration: the `feather serve` it waits for (snapshot::hold).
    hold: Option<OwnedFd>,
    /// The VM's shuttle broker, once opened; dropped (closing its channels) with the keeper.
    broker: Option<feather_shuttle::Broker>,
    /// Init waits on this before it starts the first workload (see [`Keeper::begin`]); `None`
    /// once told, and for a restored VM, whose processes run already.
    init_waits: Option<UnixStream>,
    /// The VM's mount namespace, held past init's end (see [`holds_mounts`]): the last process
    /// of a namespace unmounts its ~30 mounts as it exits (an RCU grace period among them,
    /// and for a kept VM the flush of its layer's whole filesystem), and without this that is
    /// init, whose end this process waits for before it can answer. Held, the namespace
    /// outlives init and is let go after the answer: by a throw-away VM's finisher
    /// ([`hands_off`]), or by a kept VM's keeper itself (see [`Keeper::serve`]). Declared
    /// before the lock, so that it goes first on every way out: a lock let go while the mounts
    /// were still there would let a start mount the VM's layer beside them.
    held_mounts: std::cell::Cell<Option<OwnedFd>>,
    /// The removal of the checkpoint a dump replaced, running beside the dump until waited for
    /// ([`snapshot::set_aside_last`]).
    stale_removal: snapshot::StaleRemoval,
    /// Held until the VM is cleaned up, its mounts included (or the keeper dies): its release
    /// tells others the VM is no longer kept. Its file names this process
    /// ([`take_keeper_lock`]), whose end a start waits for.
    lock: File,
    /// A throw-away VM's layer in memory (see [`layers::MemoryLayer`]), held for the VM's life.
    memory_layer: Option<layers::MemoryLayer>,
    /// The process the teardown will be handed to ([`hands_off`]), started once the VM's
    /// command runs ([`Keeper::serve`]; see [`crate::finisher`]); `None` if it could not be
    /// started then (it is started at the hand-over), and for every other keeper.
    finisher: Option<Finisher>,
    /// A VM received by a migration: its record as running, being synced while the sender is
    /// asked to let it go; awaited before it runs (see [`Keeper::restore`]).
    recording: std::cell::RefCell<Option<Recording>>,
    /// The VM's record before it was recorded running, still linked until the start has been
    /// answered: its blocks' release (a synchronous discard on ext4 with `discard`) is kept
    /// off the start's path ([`feather_core::atomic::Replaced`]).
    replaced_record: std::cell::Cell<Option<feather_core::atomic::Replaced>>,
    /// A pooled VM's watch for its root's removal ([`RootWatch`]), made before the VM is
    /// recorded running: a root moved or removed once the VM reads as running is seen, even
    /// before [`Keeper::serve`] looks at the watch (a background start answers before it).
    root_watch: Option<RootWatch>,
}

/// The thread writing a VM's state durably.
type Recording = std::thread::JoinHandle<feather_core::Result<()>>;

/// For tests only: the file whose lock a restoring keeper waits for (shared, blocking) just
/// before it records the VM running, so that a test holding that lock acts while the restored
/// VM still reads as checkpointed — as a slow disk could make it — and knows where the keeper
/// stands. Unset (always, outside tests), nothing waits.
pub const HOLD_RUNNING_RECORD: &str = "FEATHER_TEST_HOLD_RUNNING_RECORD";

/// For tests only, as [`HOLD_RUNNING_RECORD`]: the file whose lock a restoring keeper waits for
/// once it has made the host side of the VM's network, before CRIU restores the VM (and makes
/// the veth pair of a namespace it dumped), so that a test acts while the restore has joined
/// the root's network and the VM has no port on its bridge yet. Unset, nothing waits.
pub const HOLD_BEFORE_CRIU: &str = "FEATHER_TEST_HOLD_BEFORE_CRIU";

/// For tests only, as [`HOLD_RUNNING_RECORD`]: the file whose lock a starting background
/// keeper waits for once it has told `feather start` the VM is up, before it opens the broker
/// and tells init Start, so that a test sees the start's answer come before those steps.
/// Unset, nothing waits.
pub const HOLD_BEFORE_BEGIN: &str = "FEATHER_TEST_HOLD_BEFORE_BEGIN";

/// For tests only, as [`HOLD_RUNNING_RECORD`]: the file whose lock a starting keeper waits for
/// once it has recorded the VM running (a background keeper: told `feather start` the VM is
/// up), right before its late look at the registry, which hides the roots registered while the
/// VM started, so that a test sends a request meanwhile and sees it served only after that
/// look. Unset, nothing waits.
pub const HOLD_BEFORE_LATE_LOOK: &str = "FEATHER_TEST_HOLD_BEFORE_LATE_LOOK";

/// For tests only, as [`HOLD_RUNNING_RECORD`]: the file whose lock a kept VM's keeper waits for
/// once it has answered the VM's stop, before its last steps (the root's network, the flush of
/// the VM's layer), so that a test sees what waits for the keeper's end. Unset, nothing waits.
pub const HOLD_AFTER_STOP_ANSWER: &str = "FEATHER_TEST_HOLD_AFTER_STOP_ANSWER";

/// For tests only, as [`HOLD_RUNNING_RECORD`], but waited for by `feather serve` (the receiver
/// of a migration), not a keeper: the file whose lock it waits for once it has resumed a VM
/// the sender let go, before it tells the sender that the VM runs here, so that a test acts
/// while the VM runs at the receiver and, post-copy, the sender still holds it frozen and its
/// CRIU still serves the pages. Unset, nothing waits.
pub const HOLD_AFTER_RESUME: &str = "FEATHER_TEST_HOLD_AFTER_RESUME";

/// For tests only, as [`HOLD_AFTER_RESUME`], but waited for by `feather migrate` (post-copy):
/// the file whose lock it waits for once the receiver restored the VM and it froze the VM
/// here, before it looks for the keeper's answer and lets the VM go, so that a test can make
/// the dump fail then. Unset, nothing waits.
pub const HOLD_BEFORE_RELEASE: &str = "FEATHER_TEST_HOLD_BEFORE_RELEASE";

/// For tests only, as [`HOLD_RUNNING_RECORD`]: the file whose lock a starting keeper waits for
/// once it has listed the host's mounts under the VM's base (a layer for each), before it
/// builds the hiding layer and clones init, so that a test can unmount one of them meanwhile,
/// as the host may. Unset, nothing waits.
pub const HOLD_AFTER_MOUNT_LIST: &str = "FEATHER_TEST_HOLD_AFTER_MOUNT_LIST";

/// For tests only: names a file whose lock a claimed VM's keeper waits for once it has started
/// the pool's refill, before it removes the VM: a keeper that lives on after its refill ended.
pub const HOLD_AFTER_REFILL: &str = "FEATHER_TEST_HOLD_AFTER_REFILL";

/// For tests only: names a file whose lock the keeper of a throw-away VM it tears down itself
/// (a pooled VM drained, a hand-over that failed) waits for between the start of its network's
/// removal and the return of its lease, so that a test sees that removal (which takes the
/// root's bridge down after its last VM) done first, as a loaded host has it at times. Only
/// while that file exists: a test arms the hook for one teardown by making the file (locked)
/// just before it, and no other keeper given the hook is held.
pub const HOLD_BEFORE_LEASE_RETURN: &str = "FEATHER_TEST_HOLD_BEFORE_LEASE_RETURN";

/// For tests only: names a file whose lock the thread closing a claimed VM's root watch waits
/// for before it closes it ([`close_aside`]), so that a test sees that nothing of the run
/// waits for that close. Unset, nothing waits.
pub const HOLD_ROOT_WATCH_CLOSE: &str = "FEATHER_TEST_HOLD_ROOT_WATCH_CLOSE";

/// For tests only: set (to anything) in a keeper's environment, its status answer leaves out
/// [`Response::Running`]'s `ends_released_copy`, as a keeper of a build before it answers, so
/// that a test sees `migrate` refuse post-copy with such a keeper. Unset, the answer has it.
pub const AS_AN_OLDER_KEEPER: &str = "FEATHER_TEST_AS_AN_OLDER_KEEPER";

/// Waits for the lock of the file the test-only `variable` names ([`HOLD_RUNNING_RECORD`],
/// [`HOLD_BEFORE_CRIU`], [`HOLD_BEFORE_LATE_LOOK`], [`HOLD_BEFORE_BEGIN`],
/// [`HOLD_AFTER_STOP_ANSWER`], [`HOLD_AFTER_RESUME`], [`HOLD_BEFORE_RELEASE`],
/// [`HOLD_AFTER_MOUNT_LIST`], [`HOLD_AFTER_REFILL`], [`HOLD_ROOT_WATCH_CLOSE`],
/// [`HOLD_BEFORE_LEASE_RETURN`]), if it is set:
/// in a debug build only (see [`crate::test_hooks`]).
pub(crate) fn held_by_test(variable: &str) {
    crate::test_hooks::held(variable);
}

/// For tests only: set (to anything) in a keeper's environment, its post-copy freeze behind
/// CRIU (at `post-dump`) fails, as without a v2 group or with a task that never counts as
/// frozen, so that a test sees the dump refused. Read at that one spot; unset (always, outside
/// tests), nothing fails.
pub const FAIL_SEIZED_FREEZE: &str = "FEATHER_TEST_FAIL_SEIZED_FREEZE";

/// The post-copy freeze behind CRIU (see `Keeper::dumped`), unless a test fails it
/// ([`FAIL_SEIZED_FREEZE`]).
fn seized_freeze(cgroup: &Cgroup) -> feather_sys::Result<feather_sys::cgroup::Frozen> {
    if crate::test_hooks::set(FAIL_SEIZED_FREEZE).is_some() {
        return Err(feather_sys::SysError {
            op: "freeze",
            target: format!("the VM's processes ({FAIL_SEIZED_FREEZE} is set: a test)"),
            errno: nix::errno::Errno::ETIMEDOUT,
        });
    }
    cgroup.freeze(std::time::Duration::from_secs(10))
}

/// Whether a keeper leaves the slow end of its VM's teardown to a finisher process of its own
/// (see [`Keeper::hand_off`]): a throw-away VM run in the foreground, without a disk image
/// (whose release must come before the exit status).
fn hands_off(config: &VmConfig, foreground: bool) -> bool {
    config.ephemeral && foreground && config.limits.disk.is_none()
}

/// Whether a keeper holds its VM's mount namespace past init's end ([`Keeper::held_mounts`]):
/// when it hands its teardown over, and for every kept VM, whose layer is durable: overlayfs
/// flushes the layer's whole filesystem to disk when it is unmounted (`syncfs`, every other
/// writer's dirty pages on that filesystem included: 80–1200 ms on this machine while others
/// build, nearly all of a stop). The keeper answers the stop once the VM's processes, cgroup
/// and network are gone and its stop is recorded, and lets the mounts go after (see
/// [`Keeper::serve`]): the flush still happens at every stop, only the answer no longer waits
/// for it.
fn holds_mounts(config: &VmConfig, foreground: bool) -> bool {
    hands_off(config, foreground) || !config.ephemeral
}

/// The VM's keeper lock, taken, with this process recorded in it (pid and start time): the
/// lock goes as this process's descriptors close, before the kernel has unmounted what its
/// hold on the VM's mount namespace kept, so a start waits for the process itself
/// (`lifecycle::await_last_keeper`); and a removal of the root's network tells a live VM's
/// `network-attached` marker from a dead keeper's by it (feather_net's `attached`). Never
/// left unrecorded: the last keeper's record would stand for this one.
fn take_keeper_lock(vm: &VmDir) -> Result<File> {
    let name = vm.name();
    let lock = vm
        .lock_keeper()?
        .ok_or_else(|| failed(name, "is already running"))?;
    let started = process::start_ticks(nix::unistd::Pid::this()).ok_or_else(|| {
        failed(
            name,
            "its keeper cannot read its own start time in /proc/self/stat (is /proc mounted?)",
        )
    })?;
    VmDir::record_keeper(&lock, std::process::id(), started)
        .map_err(io(name, "recording its keeper in keeper.lock"))?;
    Ok(lock)
}

/// Closes a VM's root watch, once the VM is out of the pool, on a short-lived thread of its own:
/// closing an inotify instance waits for the kernel's grace period (fsnotify's SRCU, 10-20 ms
/// here), which in the keeper's loop held up the claimer's let-go; and kept until the VM's
/// end, every long run from the pool would hold one of root's inotify instances, which are
/// counted host-wide (`fs.inotify.max_user_instances`, 128 by default). Where no thread can be
/// had, closed here.
fn close_aside(watch: RootWatch) {
    let closing = std::thread::Builder::new().name("close-watch".into());
    let _ = closing.spawn(move || {
        held_by_test(HOLD_ROOT_WATCH_CLOSE);
        drop(watch);
    });
}

/// Init's mount namespace, opened while init is this process's unreaped child (its pid cannot
/// name another process). `None` if init is gone already: its namespace went with it.
fn hold_mount_namespace(init: &ChildProcess) -> Option<OwnedFd> {
    File::open(format!("/proc/{}/ns/mnt", init.pid))
        .ok()
        .map(OwnedFd::from)
}

/// A keeper whose VM is up and recorded running, before the steps that cannot fail its start
/// (each failure is only said): the record of what its layers lie over settled (a synced
/// rename), and the roots registered while it started hidden in it. Both come before anything
/// of the VM's runs (init's Start, any request served); a background start answers
/// `feather start` before them (`keeper_main`).
struct Unsettled {
    keeper: Keeper,
    /// The state folders the start hid: the late look passes over them.
    known_state_folders: Vec<PathBuf>,
    /// The start's look at the registry of roots, which the late look compares with.
    first_look: Look,
}

impl Unsettled {
    /// The steps after the record; `phase`: what the trace calls them.
    fn settle(self, phase: &str) -> Keeper {
        held_by_test(HOLD_BEFORE_LATE_LOOK);
        let keeper = self.keeper;
        keeper.settle_lowers();
        // Roots registered while the VM started are hidden now (see `hiding`).
        if let Err(why) =
            keeper.hide_late_state_folders(&self.first_look, &self.known_state_folders)
        {
            keeper.say_not_hidden(&why);
        }
        trace::phase(phase);
        keeper
    }
}

impl Keeper {
    /// Builds and starts the VM. On failure nothing it made is left behind. `stdio`: for a
    /// foreground run, the VM's ends of the pipes this process relays (see [`crate::relay`]),
    /// which become init's and so the first workload's stdin, stdout and stderr; without, init's
    /// stdio is the VM's /dev/null. Never the caller's own descriptors. `config`: the one
    /// the caller just wrote to the VM's folder (creating it), not read back.
    pub fn boot(
        root: &StateRoot,
        vm: &VmDir,
        config: VmConfig,
        workload: Option<Workload>,
        stdio: Option<VmEnds>,
    ) -> Result<Keeper> {
        Ok(
            Keeper::boot_unsettled(root, vm, Some(config), workload, stdio)?
                .settle("hide late state folders"),
        )
    }

    /// [`Keeper::boot`] up to the VM recorded running, without the steps that follow, which
    /// cannot fail its start ([`Unsettled::settle`]). `written`: the config as its caller
    /// wrote it; without, read from the VM's folder under the keeper lock.
    fn boot_unsettled(
        root: &StateRoot,
        vm: &VmDir,
        written: Option<VmConfig>,
        workload: Option<Workload>,
        stdio: Option<VmEnds>,
    ) -> Result<Unsettled> {
        let attached = stdio.is_some();
        let name = vm.name().clone();
        init::check_descriptor_limit(name.as_str())?;
        let lock = take_keeper_lock(vm)?;
        let config = match written {
            Some(config) => config,
            None => vm.read_config()?,
        };
        let durability = if config.ephemeral {
            Durability::Volatile
        } else {
            Durability::Durable
        };
        // Detected once (the mount table, each hierarchy's controllers) for the leftovers'
        // removal and the VM's own group.
        let group = cgroup_path(&config);
        remove_leftovers_of(vm, &config, &group);
        root.make_run_dir(vm)?;
        let cgroup = Some(group);
        let memory_layer = layers::MemoryLayer::for_vm(&config)?;
        let (mut network, inside) = feather_net::prepare(
            root,
            vm.run_dir(),
            &etc_dir(vm, memory_layer.as_ref()),
            name.as_str(),
            &config.id,
            &config.network,
        )
        .inspect_err(|_| remove_leftovers(vm, &config))
        .in_vm(&name)?;
        trace::phase("prepare the network (/etc files, ports)");
        // Read once: the layers, the state folders' aliases and the last look all use it.
        let host_mounts = layers::host_mount_table()?;
        // Resolved once, here, just before the hiding layer is built (also for a `--ro` run,
        // whose create looked already): the late look resolves only the entries written since.
        let first_look = Look::host();
        let hidden = hiding::state_folders_seen(root, &first_look, &host_mounts);
        let mut tree =
            layers::for_start_in(root, vm, &config, memory_layer, &hidden, &host_mounts)?;
        // What the layers lie over, for `diff` and `commit` to read nothing else.
        let seen_lowers = match layers::SeenLowers::record(
            vm,
            &config,
            &tree.layers,
            layers::RecordSync::Later,
        ) {
            Ok(recorded) => recorded,
            Err(e) => {
                network.detach();
                remove_leftovers(vm, &config);
                return Err(e);
            }
        };
        held_by_test(HOLD_AFTER_MOUNT_LIST);
        let memory_layer = tree.memory_layer.take();
        // Held until init, a fork of this process, has its copy (see `layers::hiding_layer`).
        let hiding_layer =
            match layers::hiding_layer(&name, &mut tree.layers, &config.base, &hidden) {
                Ok(layer) => layer,
                Err(e) => {
                    network.detach();
                    remove_leftovers(vm, &config);
                    return Err(e);
                }
            };
        let plan = InitPlan {
            rootfs: RootfsPlan {
                hostname: name.to_string(),
                base: config.base.clone(),
                rootfs: vm.rootfs(),
                layers: tree.layers,
                memory_layer_fd: memory_layer.as_ref().map(|layer| layer.recorded.fd),
                hiding_layer_fd: hiding_layer.as_ref().map(|layer| layer.fd.as_raw_fd()),
                read_only: tree.read_only,
                read_only_mounts: tree.read_only_mounts,
                hidden: hidden.clone(),
                network: inside,
                service_cgroups: cgroup
                    .as_ref()
                    .map(Cgroup::service_subtrees)
                    .unwrap_or_default(),
                // A throw-away VM is never checkpointed, so its init need not re-execute from
                // inside: that saves an exec and a dozen mounts on every `run --rm`.
                init_files: if config.ephemeral {
                    Vec::new()
                } else {
                    init::program_files().map_err(io(&name, "cannot find the feather binary"))?
                },
                sync: if config.ephemeral {
                    LayerSync::Volatile
                } else {
                    LayerSync::Durable
                },
            },
            workload,
            grace: decide::DEFAULT_GRACE,
            attached,
            seccomp: crate::restored_creds::seccomp_profile(&config),
        };
        trace::phase("plan the root (layers, hidden folders)");
        let mut v2_entry = V2Entry::AtClone;
        if let Some(cgroup) = &cgroup {
            // A group half made (a limit refused) goes with the rest: returned as it was, it
            // stayed, and a throw-away VM's folder, removed next, was its only record.
            match make_cgroup(cgroup, &config, &name, root) {
                Ok(entry) => v2_entry = entry,
                Err(e) => {
                    network.detach();
                    remove_leftovers(vm, &config);
                    return Err(e);
                }
            }
            trace::phase("create the cgroup");
        }
        // A throw-away VM's record is not synced to disk (a journal commit, 5–15 ms on this
        // host's ext4): nothing of it outlives a power cut. A kept VM's contents are, while
        // init assembles the root: renamed over the last record unsynced, on XFS or on ext4
        // without `auto_da_alloc` a power cut could leave an empty state file, and the VM
        // would be missing from `ls` with its folder and address still taken. The rename is
        // not synced (a second commit): a power cut ends the keeper too, and the record before
        // this one (created or stopped) is as true then as this one (running, by a keeper whose
        // lock is free). A restore's record is fully synced: its checkpoint must not read
        // restorable.
        let recorded = match durability {
            Durability::Durable => Durability::Whole,
            other => other,
        };
        let memory_recorded = memory_layer.as_ref().map(|layer| layer.recorded);
        let stage = |init: nix::unistd::Pid| {
            // The record of what the layers lie over, written unsynced before the clone.
            layers::SeenLowers::sync_pending(vm, &config)?;
            let state = running_state(init, memory_recorded);
            Ok(vm.stage_state(&state, recorded)?)
        };
        let booted = start_init(
            &name,
            cgroup.as_ref().map(|cgroup| (cgroup, v2_entry)),
            &network,
            plan,
            stdio,
            &stage,
        )
        .and_then(|started| {
            let listener = listen(vm)?;
            trace::phase("listen on the control socket");
            Ok((started, listener))
        });
        // Init has its copy, and closes it once its overlays hold the layer.
        drop(hiding_layer);
        let ((init, init_waits, record, pinned), listener) = match booted {
            Ok(parts) => parts,
            Err(e) => {
                network.detach();
                remove_leftovers(vm, &config);
                return Err(e);
            }
        };
        // The record of what the layers lie over, as init mounted them (nothing of the VM's
        // runs before Start): the host may have mounted another filesystem at a layer's place
        // since the record was taken (review gl27 L4).
        if let Err(e) = seen_lowers.confirm_recorded(vm, &config, &pinned) {
            let _ = process::signal(&init.pidfd, Signal::SIGKILL);
            let _ = waitpid(init.pid, None);
            network.detach();
            remove_leftovers(vm, &config);
            return Err(e);
        }
        if let Err(e) = network.complete() {
            let _ = process::signal(&init.pidfd, Signal::SIGKILL);
            let _ = waitpid(init.pid, None);
            network.detach();
            remove_leftovers(vm, &config);
            return Err(VmError::Net {
                vm: name.to_string(),
                source: Box::new(e),
            });
        }
        let held_mounts = holds_mounts(&config, attached)
            .then(|| hold_mount_namespace(&init))
            .flatten();
        let mut keeper = Keeper {
            vm: vm.clone(),
            config,
            cgroup,
            init,
            listener,
            network,
            durability,
            checkpointed: std::cell::Cell::new(false),
            checkpoint_refused: None,
            claimed: std::cell::Cell::new(false),
            expired: std::cell::Cell::new(false),
            gone_root: std::cell::Cell::new(None),
            claimer_waiting: None,
            hold: None,
            lock,
            broker: None,
            init_waits: Some(init_waits),
            held_mounts: std::cell::Cell::new(held_mounts),
            stale_removal: snapshot::StaleRemoval::default(),
            memory_layer,
            finisher: None,
            recording: std::cell::RefCell::new(None),
            replaced_record: std::cell::Cell::new(None),
            root_watch: None,
        };
        keeper.root_watch = keeper.watch_for_root_removal();
        match record.commit_keeping_replaced() {
            Ok(replaced) => keeper.replaced_record.set(Some(replaced)),
            Err(e) => {
                keeper.abandon();
                return Err(e.into());
            }
        }
        trace::phase("record the VM running");
        Ok(Unsettled {
            keeper,
            known_state_folders: hidden,
            first_look,
        })
    }

    /// Restores a checkpointed VM (see [`crate::checkpoint`]): its cgroup is made anew with
    /// its limits, and CRIU brings its processes back with init as this keeper's child. On
    /// failure nothing is left behind and the VM stays checkpointed. `made`: a network
    /// namespace with loopback up made ahead (by `feather serve`, while the VM was on its
    /// way), taken instead of a new one where the checkpoint left the VM's out.
    pub fn restore(root: &StateRoot, vm: &VmDir, made: Option<OwnedFd>) -> Result<Keeper> {
        let name = vm.name().clone();
        let lock = take_keeper_lock(vm)?;
        let config = vm.read_config()?;
        // Written back if the VM must not run after all (`give_back`).
        let prior = vm.read_state()?;
        // Detected once for the leftovers' removal and the group made below (see `boot`).
        let group = cgroup_path(&config);
        remove_leftovers_of(vm, &config, &group);
        root.make_run_dir(vm)?;
        let hold = snapshot::hold(vm)?;
        trace::phase("restore: lock, run folder, hold");
        // The host side of a private network (bridge, firewall entries, published ports) is
        // made as at a start; CRIU makes the veth pair itself, with its host end on the bridge.
        let (mut network, _) = feather_net::prepare(
            root,
            vm.run_dir(),
            &feather_net::etc::dir(vm.run_dir()),
            name.as_str(),
            &config.id,
            &config.network,
        )
        .in_vm(&name)?;
        let cgroup = Some(group);
        let grouped = match &cgroup {
            Some(cgroup) => make_cgroup(cgroup, &config, &name, root)
                // Before CRIU enters the group and opens what the checkpoint names.
                .and_then(|_| restrict_devices(cgroup, &name)),
            None => Ok(()),
        };
        // Returned without this, the group (and the network's host side) stayed.
        if let Err(e) = grouped {
            network.detach();
            remove_leftovers(vm, &config);
            return Err(e);
        }
        trace::phase("restore: network prepared, cgroup made");
        // A namespace left out of the dump is made here, as at a start; a dumped one CRIU
        // makes again, veth pair included.
        let external = snapshot::netns_external(vm);
        let attached = match (external, made) {
            (true, Some(netns)) => Ok((None, Some(netns))),
            (true, None) => network
                .new_namespace_for_restore()
                .map(|netns| (None, Some(netns))),
            (false, _) => network.attach_for_restore().map(|veth| (veth, None)),
        };
        trace::phase(if external {
            "restore: network namespace made anew"
        } else {
            "restore: host side attached (CRIU makes the namespace)"
        });
        held_by_test(HOLD_BEFORE_CRIU);
        // The namespace's veth pair, address and firewall entries are made while CRIU starts.
        let wire = |netns: &std::os::fd::OwnedFd| {
            let wired = network.wire_restored(netns).map_err(|e| VmError::Net {
                vm: name.to_string(),
                source: Box::new(e),
            });
            trace::phase("restore: the namespace's veth pair, address and firewall entries");
            wired
        };
        let restored = attached
            .in_vm(&name)
            .and_then(|(veth, netns)| {
                snapshot::restore_tree(
                    root,
                    vm,
                    &config,
                    cgroup.as_ref(),
                    veth.as_ref(),
                    netns.map(|netns| (netns, &wire as &snapshot::Wire<'_>)),
                )
            })
            .and_then(|init| {
                // CRIU restores no cgroup settings (feather makes the group), and the restored
                // processes are still stopped: the VM's device rules, and the link-layer
                // address its bridge port takes, are set before any runs (a namespace made
                // anew has that address from `wire_restored`).
                let pinned = match external {
                    true => Ok(()),
                    false => network
                        .own_mac_after_restore(init.pid.as_raw() as u32)
                        .map_err(|e| VmError::Net {
                            vm: name.to_string(),
                            source: Box::new(e),
                        }),
                };
                match pinned {
                    Err(e) => {
                        let _ = process::signal(&init.pidfd, Signal::SIGKILL);
                        let _ = waitpid(init.pid, None);
                        Err(e)
                    }
                    Ok(()) => Ok(init),
                }
            })
            .and_then(|init| Ok((init, listen(vm)?)))
            .and_then(|(init, listener)| match network.complete() {
                Ok(()) => Ok((init, listener)),
                Err(e) => {
                    let _ = process::signal(&init.pidfd, Signal::SIGKILL);
                    let _ = waitpid(init.pid, None);
                    Err(VmError::Net {
                        vm: name.to_string(),
                        source: Box::new(e),
                    })
                }
            });
        let (init, listener) = match restored {
            Ok(parts) => parts,
            Err(e) => {
                network.detach();
                remove_leftovers(vm, &config);
                return Err(e);
            }
        };
        // A restored VM is a kept one (throw-away VMs are never checkpointed): see
        // `holds_mounts`.
        let held_mounts = hold_mount_namespace(&init);
        let keeper = Keeper {
            vm: vm.clone(),
            durability: Durability::Durable,
            config,
            cgroup,
            init,
            listener,
            network,
            checkpointed: std::cell::Cell::new(false),
            checkpoint_refused: None,
            claimed: std::cell::Cell::new(false),
            expired: std::cell::Cell::new(false),
            gone_root: std::cell::Cell::new(None),
            claimer_waiting: None,
            hold,
            lock,
            broker: None,
            init_waits: None,
            held_mounts: std::cell::Cell::new(held_mounts),
            stale_removal: snapshot::StaleRemoval::default(),
            memory_layer: None,
            finisher: None,
            recording: std::cell::RefCell::new(None),
            replaced_record: std::cell::Cell::new(None),
            root_watch: None,
        };
        trace::phase("restore: CRIU restored the tree, network completed");
        // Synced before anything of the VM runs: the checkpoint it was restored from must not
        // read as restorable after a power cut, its layer having moved on since. A VM received
        // by a migration runs only once the sender lets it go, a round trip between the hosts
        // later: its record is synced meanwhile, on a thread, and awaited before it runs
        // (`serve`). Until then it reads as checkpointed, which it still is.
        match keeper.hold.is_some() {
            true => *keeper.recording.borrow_mut() = Some(keeper.record_running_aside()),
            false => {
                if let Err(e) = keeper.record_running(Durability::Durable) {
                    keeper.abandon();
                    return Err(e);
                }
            }
        }
        trace::phase("restore: recorded running");
        // The checkpoint holds no hiding mounts; CRIU left the processes stopped, so the roots
        // of this host are hidden before anything of the VM runs again, or it does not run:
        // this look is its only one. A VM received by a migration stays stopped until the
        // sender lets it go (snapshot::await_release).
        if let Err(why) = keeper.hide_state_folders(root) {
            return Err(keeper.give_back(&prior, why));
        }
        if keeper.hold.is_none() {
            if let Err(e) = keeper.continue_processes() {
                return Err(keeper.give_back_for(&prior, e));
            }
            keeper.let_traffic_through();
        }
        keeper.settle_lowers();
        trace::phase("restore: state folders hidden, processes continued");
        Ok(keeper)
    }

    /// Makes the record of what the layers lie over, set aside by this start or restore, the
    /// VM's (`layers::SeenLowers::settle`). One that cannot be is said: the VM's last record
    /// stays, which names the filesystems of an earlier run, and `commit` refuses a layer
    /// whose filesystem is another now (fails closed).
    fn settle_lowers(&self) {
        if let Err(e) = layers::SeenLowers::settle(&self.vm, &self.config) {
            eprintln!(
                "feather: VM '{}': the record of what its layers lie over could not be kept \
                 ({e}); commit refuses a layer whose filesystem differs from the last one \
                 recorded until the VM starts again",
                self.vm.name()
            );
        }
    }

    /// Ends a VM whose start (or restore) failed once its init was there, and removes what it
    /// held, the keeper lock last. A keeper dropped without this left init running until
    /// this process exited (its parent-death signal), and the VM's cgroup after it.
    fn abandon(self) {
        let _ = process::signal(&self.init.pidfd, Signal::SIGKILL);
        let _ = waitpid(self.init.pid, None);
        self.network.detach();
        remove_leftovers(&self.vm, &self.config);
    }

    /// Opens the VM's shuttle broker, then lets init start the first workload: a command run
    /// in a throw-away VM finds the channels the policy gives it from its first instruction.
    /// `terminal`: where `ask` rules ask (the terminal that started the VM). `peers`: the other
    /// VMs of the state root as the broker reaches them (`crate::peers::RootPeers`), passed in
    /// by whoever runs the keeper so that the keeper depends on no part of feather above it.
    pub fn begin(&mut self, root: &StateRoot, terminal: Option<PathBuf>, peers: Arc<dyn Peers>) {
        self.open_broker(root, terminal, peers);
        if let Some(mut init) = self.init_waits.take() {
            // Init's end, if it ended meanwhile, is seen by serve(). The wait is for a
            // checkpoint's sake, which a throw-away VM never has: there it held up the
            // keeper's loop, and so a short command's exit status, until init's spawner (a
            // fork of init's) had closed its copy of the socket too.
            if boot::send(&mut init, &ToInit::Start).is_ok() && !self.config.ephemeral {
                await_init_letting_go(&mut init);
            }
        }
    }

    /// Opens the VM's shuttle broker: what the policy lets cross into and out of the VM.
    fn open_broker(&mut self, root: &StateRoot, terminal: Option<PathBuf>, peers: Arc<dyn Peers>) {
        let side = feather_shuttle::VmSide {
            name: self.vm.name().to_string(),
            tags: self.config.tags.clone(),
            init_pid: self.init.pid.as_raw(),
            run_dir: self.vm.run_dir().to_path_buf(),
            throw_away: self.config.ephemeral,
        };
        let gate = feather_shuttle::Gate::new(root.dir(), terminal);
        self.broker = Some(feather_shuttle::Broker::start(side, gate, peers));
    }

    /// Hides in the running VM every state folder of the host it does not hide yet, other
    /// than `known` (hidden at its start).
    fn hide_state_folders(&self, root: &StateRoot) -> std::result::Result<(), hiding::HidingError> {
        let folders = hiding::state_folders(root);
        hiding::in_vm(&self.init.pidfd, self.init.pid, &self.config.base, &folders)
    }

    /// Hides in the VM the folders of the roots registered since its start's `first_look`
    /// found `known`, their aliases from the host's mount table read again when there is one
    /// (with the places the registry recorded): the roots known then are not looked at again
    /// (issue 15).
    fn hide_late_state_folders(
        &self,
        first_look: &Look,
        known: &[PathBuf],
    ) -> std::result::Result<(), hiding::HidingError> {
        let late: Vec<PathBuf> = first_look
            .late_state_folders_in(known)
            .into_iter()
            .filter(|folder| !known.contains(folder))
            .collect();
        hiding::in_vm(&self.init.pidfd, self.init.pid, &self.config.base, &late)
    }

    /// Hides in the VM every registered root's folders it does not hide yet (its own root's
    /// are hidden from its start or restore on).
    fn hide_registered_roots(&self) -> std::result::Result<(), hiding::HidingError> {
        hiding::in_vm(
            &self.init.pidfd,
            self.init.pid,
            &self.config.base,
            &feather_core::roots::host_state_folders(),
        )
    }

    /// After a start's last look at the registry failed: the VM runs on (its start hid every
    /// root registered before it began; this look catches those registered meanwhile), and
    /// the keeper's log (the terminal of a throw-away VM run in the foreground) names the
    /// folders and what to do. No later registration hides them: one hides only the root it
    /// registers (docs/security.md, row 21).
    fn say_not_hidden(&self, why: &hiding::HidingError) {
        eprintln!(
            "feather keeper {}: cannot hide the host's state folders in the VM: {}; the VM \
             runs on and may read them until it is stopped and started again",
            self.vm.name(),
            causes(why)
        );
    }

    /// For a restored VM that must not run (its processes are still stopped, none ran since
    /// the checkpoint): writes back `prior`, its record as checkpointed, so that its checkpoint
    /// can be restored again, then ends it and removes what the restore made
    /// ([`Keeper::abandon`]), the keeper lock last. The record is written back while the lock
    /// is held: no other command reads the VM as running without a keeper meanwhile, nor
    /// restores it while its stopped processes are still there.
    fn give_back(self, prior: &VmState, why: hiding::HidingError) -> VmError {
        let vm = self.vm.name().to_string();
        self.give_back_for(prior, VmError::NotHidden { vm, source: why })
    }

    /// [`Keeper::give_back`], for `error`, which it returns.
    fn give_back_for(self, prior: &VmState, error: VmError) -> VmError {
        if let Some(recording) = self.recording.borrow_mut().take() {
            let _ = recording.join();
        }
        if let Err(e) = self.vm.write_state(prior, Durability::Durable) {
            eprintln!(
                "feather keeper {}: cannot record it checkpointed again: {}",
                self.vm.name(),
                causes(&e)
            );
        }
        self.abandon();
        error
    }

    /// Opens the VM's link to its bridge, which a restore into a namespace made anew keeps
    /// closed until the VM may run (see `feather_net::Attachment::hold_traffic`).
    fn let_traffic_through(&self) {
        if let Err(e) = self.network.hold_traffic(false) {
            eprintln!(
                "feather keeper {}: cannot open the VM's link: {}",
                self.vm.name(),
                causes(&e)
            );
        }
    }

    /// Continues the VM's processes, which CRIU restored stopped and the restore froze
    /// (`snapshot::restore_tree`): thawed, then continued. A thaw that fails is the restore's
    /// failure: the caller ends the VM, still frozen ([`Keeper::give_back_for`]).
    fn continue_processes(&self) -> Result<()> {
        if let Some(cgroup) = &self.cgroup {
            snapshot::thaw_restored(self.vm.name(), cgroup)?;
        }
        for pid in self
            .cgroup
            .as_ref()
            .map(Cgroup::members)
            .unwrap_or_default()
        {
            let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
        }
        let _ = process::signal(&self.init.pidfd, Signal::SIGCONT);
        Ok(())
    }

    /// [`Keeper::record_running`], durably, on a thread of its own.
    fn record_running_aside(&self) -> Recording {
        let state = self.running_record();
        let vm = self.vm.clone();
        std::thread::spawn(move || {
            held_by_test(HOLD_RUNNING_RECORD);
            vm.write_state(&state, Durability::Durable)
        })
    }

    /// A restored VM's record as running.
    fn record_running(&self, durability: Durability) -> Result<()> {
        held_by_test(HOLD_RUNNING_RECORD);
        Ok(self.vm.write_state(&self.running_record(), durability)?)
    }

    /// The VM's record as running, as this keeper holds it now.
    fn running_record(&self) -> VmState {
        let memory_layer = self.memory_layer.as_ref().map(|layer| layer.recorded);
        running_state(self.init.pid, memory_layer)
    }

    /// Serves the control socket until the VM's init exits, then cleans up. `foreground`:
    /// the keeper is the user's `feather run --rm`, and signals it receives go to the workload.
    pub fn serve(mut self, foreground: bool) -> Result<Ended> {
        // The teardown's finisher, started once init has been told Start: the front then only
        // waits for the command, and the finisher's spawn (a vfork the front waits for) and its
        // start (an exec and the static C library's, ~0.55 ms of CPU here) go beside the
        // command's first steps. The spawn is on this thread, before init's end is looked for:
        // a command that ends sooner than the spawn (a failed exec, `true`, a busy host) has
        // its exit status wait for it. Started while init finished its boot, they took a core
        // from it on the way to Start; started at the hand-over, the spawn was on the way to
        // every run's exit status (docs/design.md, "Where a `run --rm` starts its finisher").
        if hands_off(&self.config, foreground) {
            self.finisher = self.start_finisher_early();
        }
        let signals = process::block_signals(&HANDLED).in_vm(self.vm.name())?;
        let runs = match &self.hold {
            Some(serve) => {
                let cgroup = self.cgroup.as_ref();
                let open = || self.let_traffic_through();
                let mut recording = self.recording.borrow_mut().take();
                let mut recorded = || match recording.take().map(std::thread::JoinHandle::join) {
                    None => Ok(()),
                    // Restore's look at the registry came before this record landed: a root
                    // registered in between read the VM as checkpointed and passed it over
                    // (see `hiding`). Looked at again before anything of it runs; failing,
                    // the VM is not let run and the sender keeps it.
                    Some(Ok(Ok(()))) => self.hide_registered_roots().map_err(|why| {
                        format!(
                            "cannot hide the host's state folders in it: {}",
                            causes(&why)
                        )
                    }),
                    Some(Ok(Err(e))) => Err(causes(&e)),
                    Some(Err(_)) => Err("the thread writing it panicked".to_owned()),
                };
                let runs = snapshot::await_release(
                    &self.vm,
                    serve,
                    &self.init,
                    &self.listener,
                    cgroup,
                    &mut recorded,
                    &open,
                );
                // Not let run: its end, recorded below, comes after that record.
                let _ = recorded();
                runs
            }
            None => true,
        };
        if runs {
            // The LAN behind the root's uplink, if any, learns the VM's address is here now.
            self.network.announce();
        } else {
            // The sender keeps the VM: this copy ends, unrun, and stays checkpointed.
            self.checkpointed.set(true);
            let _ = process::signal(&self.init.pidfd, Signal::SIGKILL);
        }
        let mut stop_requests: Vec<UnixStream> = Vec::new();
        let mut checkpoint_requests: Vec<UnixStream> = Vec::new();
        // A pooled VM's claimer, whose connection's end (its command ended, or it died) ends
        // the VM.
        let mut claimer: Option<UnixStream> = None;
        let mut phase = Phase::Running;
        // Post-copy: the VM's memory arrives through `feather serve` (its `criu lazy-pages`
        // and tunnel). If that serve ends before every page has, the pages never fetched
        // would read as zeros: the VM ends instead (docs/migration.md, "Post-copy").
        let lazy = self.vm.checkpoint_dir().join(crate::images::LAZY);
        let mut pages_from = self.hold.as_ref().filter(|_| runs && lazy.exists());
        // A keeper is done building its VM: it gives back the code that did once quiet, not at
        // once: a foreground run's command may end at once (and the teardown would map the
        // pages again), and a background keeper's shuttle thread (feather_shuttle::watch),
        // started a moment ago, would map the pages of its first steps again after the release.
        let mut quiet = Quiet::busy_since(Instant::now());
        // A pooled VM left unclaimed for the pool's idle time is removed by this keeper.
        let ready_at = Instant::now();
        let mut expires_at = if foreground {
            None
        } else {
            self.idle_expiry(ready_at)
        };
        // A pooled VM's root removed by hand is seen at once (the idle time may be "for ever").
        let mut root_watch = self.root_watch.take().filter(|_| !foreground);
        let status = loop {
            let mut fds = vec![
                PollFd::new(self.init.pidfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(serve) = pages_from {
                fds.push(PollFd::new(serve.as_fd(), PollFlags::POLLIN));
            }
            let claimer_at = fds.len();
            if let Some(claimer) = &claimer {
                fds.push(PollFd::new(claimer.as_fd(), PollFlags::POLLIN));
            }
            let watch_at = fds.len();
            if let Some(fd) = root_watch.as_ref().and_then(RootWatch::fd) {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            let now = Instant::now();
            let acts_at = phase.patience(now).map(|left| now + left);
            let look_at = root_watch.as_ref().and_then(RootWatch::look_at);
            let wake_at = acts_at.into_iter().chain(expires_at).chain(look_at).min();
            let _ = quiet.wait(&mut fds, wake_at);
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let (init_ended, connection, signalled) =
                (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]));
            let claim_ended = claimer.is_some() && fds.get(claimer_at).is_some_and(ready);
            let watched = root_watch.as_ref().is_some_and(|watch| {
                watch.time_to_look()
                    || (watch.fd().is_some() && fds.get(watch_at).is_some_and(ready))
            });
            if pages_from.is_some() && fds.get(3).is_some_and(ready) {
                pages_from = None;
                if lazy.exists() {
                    eprintln!(
                        "feather keeper {}: the `feather serve` fetching its memory ended before \
                         every page arrived; ending the VM",
                        self.vm.name()
                    );
                    let _ = process::signal(&self.init.pidfd, Signal::SIGKILL);
                }
            }
            if init_ended {
                break waitpid(self.init.pid, None);
            }
            if claim_ended {
                // The claimer says nothing after its claim: readable means it let go (its side
                // shut, and it waits for the VM to be set aside: `pool::run_claimed`) or died.
                // The VM is used once: whatever of its command's is left goes now, as at the
                // end of a throw-away VM's command.
                self.claimer_waiting = claimer.take();
                trace::phase("run until the claimer lets go");
                phase = self.act(decide::claim_ended(phase));
            }
            if connection {
                if let Ok((stream, _)) = self.listener.accept() {
                    match self.answer(&stream) {
                        Answered::Done => {}
                        Answered::Stop(grace) => {
                            // From here "run the command" is the wait for the VM's end.
                            trace::phase("run until asked to stop");
                            phase = self.act(decide::stop(phase, grace, Instant::now()));
                            stop_requests.push(stream);
                        }
                        Answered::Checkpointed => checkpoint_requests.push(stream),
                        Answered::Claimed => claimer = Some(stream),
                    }
                }
            }
            if signalled {
                let signal = signals
                    .read_signal()
                    .ok()
                    .flatten()
                    .and_then(|info| Signal::try_from(info.ssi_signo as i32).ok());
                if let Some(signal) = signal {
                    phase = self.act(decide::on_signal(phase, signal, foreground, Instant::now()));
                }
            }
            if self.claimed.get() || phase != Phase::Running {
                expires_at = None;
                if let Some(watch) = root_watch.take() {
                    close_aside(watch);
                }
            } else if watched && root_watch.as_ref().is_some_and(RootWatch::gone) {
                // Its root is being removed (or was moved away): nothing can claim, drain or
                // list this VM any more. Ended once the removal is over, leaving nothing.
                let Some(watch) = root_watch.take() else {
                    unreachable!("a watch that saw its root gone");
                };
                watch.await_removal();
                expires_at = None;
                if self.expire_for_removed_root(watch.identity()) {
                    trace::phase("wait in the pool until its root is removed");
                    phase = self.act(decide::claim_ended(phase));
                }
            } else if expires_at.is_some_and(|at| Instant::now() >= at) {
                // Read again: the setting may have changed since the VM was up. A VM whose
                // root was removed meanwhile reads as not pooled, and goes now.
                expires_at = self.idle_expiry(ready_at);
                if expires_at.is_some_and(|at| Instant::now() >= at) || self.root_removed() {
                    expires_at = None;
                    if self.expire() {
                        trace::phase("wait in the pool until idle too long");
                        phase = self.act(decide::claim_ended(phase));
                    }
                }
            }
            phase = self.act(decide::on_time(phase, Instant::now()));
            if phase != Phase::Running {
                quiet.ending();
            }
        };
        trace::phase("run the command");
        // A claimed VM that ended under its claimer (stopped, or its init died) is answered
        // as one let go.
        if self.claimer_waiting.is_none() {
            self.claimer_waiting = claimer.take();
        }
        let ended = decide::ended(status, foreground);
        // Files the VM handed over to other VMs (Shuttle) must not outlive it: its broker
        // ends the programs it asked for, which unmounts their hand-overs (a hand-over under
        // way is waited for), and then every process of a target still holding such a file is
        // ended (`handed_over`), before anything of the VM is let go. A throw-away VM's
        // broker goes after its teardown, as before, unless it handed something over.
        if !self.config.ephemeral || handed_over::recorded(&self.vm) {
            drop(self.broker.take());
        }
        let handed = if handed_over::recorded(&self.vm) {
            self.vm
                .root()
                .map(|root| handed_over::end_holders(&root, &self.vm))
                .unwrap_or_default()
                .say_in_log(self.vm.name())
        } else {
            handed_over::Ended::default()
        };
        self.tear_down(&ended.how, foreground);
        // The broker's last words (the audit lines its pace held back) go into the root's log
        // before anyone waiting for the stop hears of it: they may remove the root next.
        drop(self.broker.take());
        // Every process of the VM is gone, and its cgroup, network and run folder, and its end
        // is recorded: the asker hears of it now. What is left is a kept VM's mounts, which the
        // namespace held since its start keeps (`holds_mounts`; none when handed over, or
        // after a checkpoint, which let them go before its record).
        let mounts = self.held_mounts.take();
        for stream in stop_requests {
            let _ = protocol::write_response(
                &stream,
                &Response::Stopped {
                    how: ended.how.clone(),
                    handed_over: handed.said.clone(),
                },
            );
        }
        let answer = match self.checkpoint_refused.take() {
            Some(message) => Response::Error { message },
            None => Response::Checkpointed {
                leave_running: false,
            },
        };
        for stream in checkpoint_requests {
            let _ = protocol::write_response(&stream, &answer);
        }
        held_by_test(HOLD_AFTER_STOP_ANSWER);
        // The checkpoint it replaced, if its removal beside the dump has not ended yet (else
        // set aside by a dump that failed, or left by a crash), goes once the asker has their
        // answer.
        snapshot::remove_stale(&self.vm, &self.stale_removal);
        trace::phase("teardown: the replaced checkpoint removed, after the answer");
        // A kept VM's answer came once its own network was gone (`tear_down`); the root's
        // bridge, tables and pool go now if the VM was their last user, a removal claimed
        // before the stop was recorded (`Attachment::detach_keeping_bridge`): killed from
        // there on, this process leaves it to the root's next command. It waits for no other
        // lock without an end (a VM's start may hold the root's network lock); past its
        // patience the removal is left to the next command too. Before the flush below: every
        // command of the root waits for the claim.
        let claimed = !self.config.ephemeral && self.network.remove_claimed_root_network();
        // The last hold of the VM's mount namespace: its mounts go with it, and unmounting a
        // kept VM's layer flushes its filesystem (in this close, as the kernel unmounts).
        // Killed meanwhile, this process lets go of it as it dies, and the kernel unmounts
        // all the same.
        if mounts.is_some() {
            drop(mounts);
            trace::phase("teardown: let the VM's mounts go (its layer flushed), after the answer");
        }
        // With its mounts gone, the record of its hand-overs goes if the kernel says no
        // overlay of its layer lives any more; else the next start, diff or commit asks again.
        if !self.config.ephemeral {
            handed_over::settle(&self.vm, &self.config);
        }
        // Without a claim, a second look (another VM may have stopped beside this one), which
        // may wait for the removal lock: after the flush, which it must not hold up.
        if !self.config.ephemeral && !claimed {
            self.network.remove_root_network_if_last();
        }
        trace::phase("teardown: the root's network, if unused, after the answer");
        // Everything is cleaned up, the mounts too: the VM may be started again. A start that
        // came meanwhile waits for this process to end (`lifecycle::await_last_keeper`), not
        // for this lock alone: killed before here, the process lets go of the lock as its
        // descriptors close, before the kernel unmounts what the namespace kept, and a start
        // that went by the lock mounted the VM's layer beside the mounts still there.
        drop(self.lock);
        Ok(ended)
    }

    /// Sends init the signal a decision asks for; returns the phase it leads to.
    fn act(&self, step: decide::Step) -> Phase {
        if let Some(signal) = step.signal {
            let _ = process::signal(&self.init.pidfd, signal);
        }
        step.phase
    }

    /// Answers one request, or says what the asker waits for.
    fn answer(&self, stream: &UnixStream) -> Answered {
        let request = match protocol::read_request(stream) {
            Ok(request) => request,
            Err(e) => {
                let _ = protocol::write_response(
                    stream,
                    &Response::Error {
                        message: format!("bad request: {}", causes(&e)),
                    },
                );
                return Answered::Done;
            }
        };
        match decide::answer(request) {
            decide::Answer::Running => {
                let _ = protocol::write_response(
                    stream,
                    &Response::Running {
                        init_pid: self.init.pid.as_raw(),
                        ends_released_copy: crate::test_hooks::set(AS_AN_OLDER_KEEPER).is_none(),
                    },
                );
                Answered::Done
            }
            decide::Answer::Stop(grace) => Answered::Stop(grace),
            decide::Answer::Claim { terminal } => self.claim(stream, terminal),
            // The front refuses it first (`checkpoint::checkpointable`); refused here too
            // because a throw-away VM's keeper does not wait for init to let go of its boot
            // socket, which CRIU could not dump (review start29 L2).
            decide::Answer::Checkpoint { .. } if self.config.ephemeral => {
                let _ = protocol::write_response(
                    stream,
                    &Response::Error {
                        message: "a throw-away VM cannot be checkpointed".to_owned(),
                    },
                );
                Answered::Done
            }
            decide::Answer::Checkpoint {
                leave_running,
                criu,
                lazy,
                hold_frozen,
            } => {
                // The time before it is the keeper's idle wait for the request.
                trace::phase("checkpoint: asked");
                // Frozen from before the dump until the asker has archived the layers.
                let held = match hold_frozen
                    .then(|| moment::freeze(&self.vm, self.cgroup.as_ref()))
                    .transpose()
                {
                    Ok(held) => held,
                    Err(e) => {
                        let message = causes(&e);
                        let _ = protocol::write_response(stream, &Response::Error { message });
                        return Answered::Done;
                    }
                };
                self.dumped(stream, leave_running, &criu, lazy, held)
            }
        }
    }

    /// Takes a pooled VM out of the pool for the asker: the move of its pool entry to
    /// `claimed/` is the claim, which only one asker can make (the entry is gone for every
    /// later one).
    /// `terminal`: the claimer's, where the VM's `ask` rules ask from then on, as they would in
    /// a VM the claimer had started.
    fn claim(&self, stream: &UnixStream, terminal: Option<PathBuf>) -> Answered {
        let taken = !self.claimed.get()
            && self
                .vm
                .root()
                .is_some_and(|root| crate::pooled::take(&root, self.vm.name()));
        if !taken {
            let message = format!(
                "VM {} is not in the pool (claimed already?)",
                self.vm.name()
            );
            let _ = protocol::write_response(stream, &Response::Error { message });
            return Answered::Done;
        }
        self.claimed.set(true);
        if let Some(root) = self.vm.root() {
            crate::pooled::record_claimer(&root, self.vm.name(), stream);
        }
        if let Some(broker) = &self.broker {
            broker.set_terminal(terminal);
        }
        if protocol::write_response(stream, &Response::Claimed).is_err() {
            // The claimer is gone already: its close, seen next, ends the VM.
            eprintln!("feather keeper {}: its claimer went away", self.vm.name());
        }
        Answered::Claimed
    }

    /// When this VM, up since `ready_at`, has waited in the pool for the root's idle time
    /// (`pooled::idle`, read now); `None`: not pooled (or claimed), or the pool's VMs wait for
    /// ever.
    fn idle_expiry(&self, ready_at: Instant) -> Option<Instant> {
        let root = self.vm.root()?;
        if self.claimed.get() || !crate::pooled::is_pooled(&root, self.vm.name()) {
            return None;
        }
        crate::pooled::idle(&root).map(|idle| ready_at + idle)
    }

    /// Whether this unclaimed VM's folder is gone: its root was removed by hand (`rm -rf`: its
    /// pool entry went with it, and no one can claim, drain or list the VM any more). Its
    /// keeper ends it at its idle time rather than keep it for ever.
    fn root_removed(&self) -> bool {
        !self.claimed.get() && !self.vm.path().exists()
    }

    /// The watch for this VM's root's removal, if the VM waits in the pool.
    fn watch_for_root_removal(&self) -> Option<RootWatch> {
        let root = self.vm.root()?;
        if self.claimed.get() || !crate::pooled::is_pooled(&root, self.vm.name()) {
            return None;
        }
        RootWatch::new(&root, &self.vm)
    }

    /// Ends this pooled VM, whose root was removed (or moved away): as an idle VM ends, but its
    /// entry is not taken (it went with the root, or a claim would make the `claimed/` folder
    /// again in a root being removed). Whether it was still unclaimed.
    fn expire_for_removed_root(&self, root: crate::root_watch::Identity) -> bool {
        if self.claimed.get() {
            return false;
        }
        self.claimed.set(true);
        self.expired.set(true);
        self.gone_root.set(Some(root));
        true
    }

    /// Takes this pooled VM out of the pool for its own end, as a claim takes it (a run that
    /// asks meanwhile is refused, and makes its own VM): it ends as a claimed VM whose claimer
    /// let go, except that no refill follows — an idle pool shrinks until runs come again.
    /// Whether it was still in the pool (a fill that removes it meanwhile ends it itself).
    fn expire(&self) -> bool {
        let taken = self.root_removed()
            || self
                .vm
                .root()
                .is_some_and(|root| crate::pooled::take(&root, self.vm.name()));
        if taken {
            self.claimed.set(true);
            self.expired.set(true);
        }
        taken
    }

    /// Dumps the VM for a checkpoint request and answers it, or says what the asker waits for.
    /// `held`: the VM frozen for the whole checkpoint, thawed once the asker lets go.
    fn dumped(
        &self,
        stream: &UnixStream,
        leave_running: bool,
        criu: &std::path::Path,
        lazy: bool,
        held: Option<moment::Held>,
    ) -> Answered {
        // Post-copy: the page server's connection, made here so that CRIU listens nowhere
        // (see `feather_migrate::criu::Dump::lazy`): CRIU's end, and the asker's, passed with
        // `Dumped`.
        let (criu_end, mut askers_end) = match lazy.then(UnixStream::pair).transpose() {
            Ok(pair) => pair.unzip(),
            Err(e) => {
                let message = format!(
                    "VM {}: cannot make the connection for its page server ({e}); the VM runs \
                     on here; try again",
                    self.vm.name()
                );
                let _ = protocol::write_response(stream, &Response::Error { message });
                return Answered::Done;
            }
        };
        // CRIU seizes the tasks frozen (none forks out of its reach), and leaves a held VM
        // frozen. Not for post-copy: the migration freezes the VM itself while CRIU still
        // serves its pages, and CRIU's thaw at the end must not undo that.
        let freezer = moment::freezer_of(self.cgroup.as_ref()).filter(|_| !lazy);
        // A VM held frozen for an export is frozen already.
        let frozen = match freezer.as_ref().filter(|_| held.is_none()) {
            Some(_) => match moment::frozen_for_dump(&self.vm, self.cgroup.as_ref()) {
                Ok(frozen) => frozen,
                Err(e) => {
                    let message = causes(&e);
                    let _ = protocol::write_response(stream, &Response::Error { message });
                    return Answered::Done;
                }
            },
            None => None,
        };
        trace::phase("checkpoint: frozen");
        let netns = self.netns_at_dump();
        trace::phase(match &netns {
            snapshot::NetnsAtDump::Known => "checkpoint: network namespace as made, not dumped",
            snapshot::NetnsAtDump::ToCriu(_) => "checkpoint: network namespace left to CRIU",
        });
        if let snapshot::NetnsAtDump::ToCriu(Some(why)) = &netns {
            eprintln!(
                "feather keeper {}: CRIU dumps the network namespace: {why}",
                self.vm.name()
            );
        }
        // A private network left out of the dump is locked by the keeper (CRIU's own lock
        // works inside a namespace it dumps): see `hold_network`.
        let lockable = netns == snapshot::NetnsAtDump::Known
            && self.config.network.mode == feather_core::NetMode::Private;
        // The link goes down while CRIU starts and seizes the tasks, rather than at its
        // `network-lock` notice, which would wait for it (an RCU grace period, more under
        // load) inside the freeze; the notice then finds it down. Earlier is no looser a lock.
        let early_lock = std::cell::RefCell::new(
            self.network
                .traffic_switch()
                .filter(|_| lockable)
                .map(|switch| std::thread::spawn(move || switch.hold(true))),
        );
        let locked = std::cell::Cell::new(early_lock.borrow().is_some());
        // Post-copy: the VM frozen from CRIU's `post-dump` (its tasks seized by then) until the
        // dump has ended. A page server that fails (it cannot listen, or its transfer failed
        // before the release) has CRIU let the tasks go with their TCP connections still in
        // repair mode, where a restarted `recv` fails (EPERM): they run only once the keeper
        // has taken them out of it, below. The asker's own freeze takes over once it heard
        // `Dumped` (see `migration::post_copy`); one that never heard it never froze the VM.
        let mut seized_frozen = None;
        // Why the keeper refused a CRIU notice (the images, the page server), for the answer:
        // CRIU's own error would only say that the notice failed.
        let mut refusal = None;
        // Post-copy: the keeper's copy of the asker's end, watched until the dump has ended, so
        // that the asker's end closing alone never ends the transfer (see `transfer_watch`).
        let mut watch = None;
        // Whether the asker heard `Dumped`: from then on the VM may be released to the
        // receiver, and the asker's own freeze, not this one, decides when it runs here.
        let told = std::cell::Cell::new(false);
        let dumped = snapshot::dump(
            &self.vm,
            self.init.pid,
            self.cgroup.as_ref(),
            leave_running,
            criu,
            criu_end.as_ref().map(AsFd::as_fd),
            freezer.as_deref(),
            &netns,
            &mut |note| match note {
                DumpNote::Images => {
                    trace::phase("checkpoint: CRIU dumped all but the memory");
                    if let Some(cgroup) = self.cgroup.as_ref().filter(|_| lazy) {
                        match seized_freeze(cgroup) {
                            Ok(frozen) => seized_frozen = Some(frozen),
                            // Unfrozen, the VM's processes would run from CRIU's release on
                            // with their TCP sockets in repair mode (the freeze is what holds
                            // them until the keeper took them out of it): refused, CRIU fails
                            // the dump and unlocks the network itself before any of them runs.
                            Err(e) => {
                                let why = format!(
                                    "cannot freeze it behind CRIU, so its post-copy dump is \
                                     refused (its processes would run with their TCP \
                                     connections in repair mode): {}",
                                    causes(&e)
                                );
                                eprintln!("feather keeper {}: {why}", self.vm.name());
                                refusal = Some(why);
                                return false;
                            }
                        }
                        trace::phase("checkpoint: frozen behind CRIU");
                    }
                    true
                }
                // Post-copy: the asker sends the images while CRIU serves the memory. Told
                // once the page server is about to serve, not at `Images`: a page server that
                // fails to start fails the dump after `Images`, and the clean-up of a failed
                // dump (`snapshot::dump`) would empty the folder under an asker already
                // writing into it, whose error would then hide CRIU's.
                // The asker's end goes with `Dumped`, a copy of it watched here: an asker gone
                // before the release must not close the transfer (see `transfer_watch`).
                DumpNote::PageServer => {
                    trace::phase("checkpoint: CRIU's page server serves");
                    let Some(askers) = askers_end.take() else {
                        return true;
                    };
                    match self.watch_transfer(stream, &askers) {
                        Ok(watching) => watch = Some(watching),
                        Err(why) => {
                            eprintln!("feather keeper {}: {why}", self.vm.name());
                            refusal = Some(why);
                            return false;
                        }
                    }
                    let passed =
                        protocol::write_response_passing(stream, &Response::Dumped, askers.as_fd());
                    told.set(passed.is_ok());
                    told.get()
                }
                DumpNote::NetworkLock if lockable => {
                    locked.set(true);
                    self.hold_network(landed(&early_lock))
                }
                DumpNote::NetworkUnlock if locked.get() => {
                    // CRIU unlocks on a failure before any lock too: the early hold must
                    // have landed first, or it would take the link down after this.
                    let _ = landed(&early_lock);
                    // Once the asker heard `Dumped` the VM may run at the receiver: the link
                    // stays down until the asker is done (see `settle_source_copy`).
                    if !(told.get() && self.cgroup.is_some()) {
                        locked.set(false);
                        self.let_traffic_through();
                    }
                    true
                }
                _ => true,
            },
            &self.stale_removal,
        );
        // CRIU serves no more: its transfer is settled, and the copy closed.
        drop(watch);
        let dumped = match (dumped, refusal) {
            (Err(_), Some(why)) => Err(failed(self.vm.name(), why)),
            (dumped, _) => dumped,
        };
        // Post-copy: once the asker heard `Dumped` it froze the VM itself and may have released
        // it to the receiver, where it runs; a dump that failed after that (the receiver's
        // stream broke, the asker killed mid-transfer) must not let it run here too: the copy
        // here stays as CRIU left it — frozen, its link down, its TCP connections in repair —
        // until the asker is done, and then runs again only if it was never released (see
        // `settle_source_copy`).
        let keeps = told.get() && seized_frozen.is_some() && dumped.is_err();
        // A post-copy dump whose page transfer failed before the asker heard `Dumped`: CRIU let
        // the processes go on with their TCP connections still in repair mode.
        if lazy && dumped.is_err() && !keeps {
            self.end_criu_hold(&netns);
        }
        // A dump that failed before CRIU's notice: the link went down all the same.
        let _ = landed(&early_lock);
        // A VM that goes on (a failed dump, or one left running) gets its link back, whether
        // or not CRIU said so.
        if locked.get() && (dumped.is_err() || leave_running) && !keeps {
            self.let_traffic_through();
        }
        // Thawed: the processes of a VM left running go on; the others were ended by CRIU.
        drop(frozen);
        let undecided = match seized_frozen {
            Some(seized) if keeps => Some(seized),
            // Dumped: CRIU ends the processes, the asker's freeze holds them meanwhile.
            Some(seized) if told.get() => {
                seized.keep();
                None
            }
            // Thawed: the asker never heard `Dumped`, the VM goes on here.
            _ => None,
        };
        trace::phase("checkpoint: CRIU dumped");
        match dumped {
            Ok(()) => match decide::after_dump(leave_running) {
                decide::AfterDump::AnswerNow => {
                    let _ =
                        protocol::write_response(stream, &Response::Checkpointed { leave_running });
                    if let Some(held) = held {
                        let thawed = moment::release_when_done(held, stream, &self.vm);
                        let _ = protocol::write_response(stream, &thawed);
                    }
                    snapshot::remove_stale(&self.vm, &self.stale_removal);
                    Answered::Done
                }
                // CRIU left the VM's processes stopped; they end with their init, and the
                // answer waits for that end.
                decide::AfterDump::EndAsCheckpointed => {
                    self.checkpointed.set(true);
                    let _ = process::signal(&self.init.pidfd, Signal::SIGKILL);
                    Answered::Checkpointed
                }
            },
            Err(e) => {
                // Before the answer: a failed checkpoint leaves nothing set aside once it is
                // told (the replaced one's removal may still run beside the failed dump).
                snapshot::remove_stale(&self.vm, &self.stale_removal);
                let _ = protocol::write_response(
                    stream,
                    &Response::Error {
                        message: causes(&e),
                    },
                );
                if let Some(frozen) = undecided {
                    self.settle_source_copy(stream, frozen, &netns, locked.get());
                }
                Answered::Done
            }
        }
    }

    /// Post-copy: watches the transfer whose end `askers` the asker of `stream` is passed (see
    /// `transfer_watch`), or says why it cannot.
    fn watch_transfer(
        &self,
        stream: &UnixStream,
        askers: &UnixStream,
    ) -> std::result::Result<TransferWatch, String> {
        let vm = self.vm.clone();
        let released = move || crate::images::released_to(&vm).is_some();
        askers
            .try_clone()
            .and_then(|copy| TransferWatch::start(self.vm.name().as_str(), stream, copy, released))
            .map_err(|e| {
                format!(
                    "cannot watch its page transfer ({e}), so its post-copy dump is refused (a \
                     migration that ended before it let the VM go would end it here); the VM \
                     runs on here; try again"
                )
            })
    }

    /// Post-copy, after a dump that failed once the asker heard `Dumped`: keeps the copy here
    /// as CRIU left it — `frozen`, its link down (`link_down`), its TCP connections in repair
    /// mode, so that this kernel neither answers for connections that may live at the receiver
    /// now nor lets the processes run — until the asker is done with it (it shut its side of
    /// `stream` down or ended, however: a `migrate` killed mid-transfer too), or the VM's init
    /// ended. Then, if a release record says the VM was let go to the receiver, the copy here is
    /// ended, never thawed: it may run there. Otherwise (never released, or the receiver said it
    /// could not run it) it is the VM's only copy, and runs on here. The asker hears which.
    fn settle_source_copy(
        &self,
        stream: &UnixStream,
        frozen: feather_sys::cgroup::Frozen,
        netns: &snapshot::NetnsAtDump,
        link_down: bool,
    ) {
        let since = Instant::now();
        self.await_asker(stream);
        if let Some((to, _)) = crate::images::released_to(&self.vm) {
            // Killed frozen, and left frozen: they die without running again; the group goes
            // with the VM's teardown (`remove_group`), which thaws nothing it removes.
            if let Some(cgroup) = &self.cgroup {
                cgroup.kill_all();
            }
            frozen.keep();
            let message = format!(
                "VM {}: its post-copy dump failed after it was let go to {to}, where it may run: \
                 its processes here were ended, never thawed",
                self.vm.name()
            );
            eprintln!("feather keeper {}: {message}", self.vm.name());
            trace::phase("checkpoint: the copy let go ended here");
            let _ = protocol::write_response(stream, &Response::Error { message });
            return;
        }
        self.end_criu_hold(netns);
        if link_down {
            self.let_traffic_through();
        }
        drop(frozen);
        trace::phase("checkpoint: the copy never let go thawed here");
        let frozen_ms = since.elapsed().as_millis() as u64;
        let _ = protocol::write_response(stream, &Response::Thawed { frozen_ms });
    }

    /// Waits until the asker of a checkpoint shut its side of `stream` down or ended (end of
    /// file, or a hang-up), or the VM's init ended. Only one of those ends the wait: a poll
    /// that fails (ENOMEM) is tried again, for deciding early would thaw a copy `migrate` may
    /// still let go. SIGTERM does not end it either: the way out is to end `migrate`.
    fn await_asker(&self, stream: &UnixStream) {
        use nix::poll::{poll, PollTimeout};
        loop {
            let mut fds = [
                PollFd::new(stream.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.init.pidfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) if fds.iter().any(|fd| fd.any().unwrap_or(false)) => return,
                Err(nix::errno::Errno::EINTR) => {}
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// After a failed post-copy dump, where the VM's processes go on here: takes their TCP
    /// connections out of the repair mode CRIU left them in (see `tcp_repair`), and CRIU's lock
    /// of a private namespace it dumped (see `criu_lock`).
    fn end_criu_hold(&self, netns: &snapshot::NetnsAtDump) {
        if let Some(cgroup) = &self.cgroup {
            let ended = crate::tcp_repair::end_repair(&cgroup.members());
            trace::phase(&format!(
                "checkpoint: {ended} TCP connections taken out of repair mode"
            ));
        }
        let dumped_netns = matches!(netns, snapshot::NetnsAtDump::ToCriu(_));
        if dumped_netns && self.config.network.mode == feather_core::NetMode::Private {
            if let Err(e) = crate::criu_lock::remove(self.init.pid) {
                eprintln!(
                    "feather keeper {}: CRIU's network lock stays: {e}",
                    self.vm.name()
                );
            }
        }
    }

    /// What the dump does with the VM's network namespace: leaves it out when its content is
    /// known — loopback only, or a private network's as feather made it (compared, see
    /// `feather_net::as_made`) — and CRIU dumps it otherwise.
    fn netns_at_dump(&self) -> snapshot::NetnsAtDump {
        use feather_core::NetMode;
        match self.config.network.mode {
            // Loopback only, and the VM cannot change that (no CAP_NET_ADMIN).
            NetMode::None => snapshot::NetnsAtDump::Known,
            NetMode::Host => snapshot::NetnsAtDump::ToCriu(None),
            NetMode::Private => match self
                .network
                .changed_since_made(self.init.pid.as_raw() as u32)
            {
                Ok(changes) if changes.is_empty() => snapshot::NetnsAtDump::Known,
                Ok(changes) => snapshot::NetnsAtDump::ToCriu(Some(changes.join("; "))),
                Err(e) => snapshot::NetnsAtDump::ToCriu(Some(format!(
                    "it could not be compared with what feather made: {}",
                    causes(&e)
                ))),
            },
        }
    }

    /// At CRIU's `network-lock` (every task seized, nothing dumped yet), for a private network
    /// left out of the dump: closes the VM's link to its bridge for the dump (see
    /// `feather_net::Attachment::hold_traffic`), and compares its namespace once more, now
    /// that nothing of the VM runs. A namespace changed since the first look fails the dump
    /// (the VM goes on, and says so) rather than lose the change. Whether the dump goes on.
    /// `early`: how bringing the link down went, where a thread did it since the dump began.
    fn hold_network(&self, early: Option<feather_net::Result<()>>) -> bool {
        let name = self.vm.name();
        trace::phase("checkpoint: CRIU's network-lock notice (tasks seized)");
        let held = early.unwrap_or_else(|| self.network.hold_traffic(true));
        trace::phase("checkpoint: network locked");
        if let Err(e) = held {
            eprintln!(
                "feather keeper {name}: cannot lock the VM's network: {}",
                causes(&e)
            );
            return false;
        }
        match self
            .network
            .changed_since_made(self.init.pid.as_raw() as u32)
        {
            Ok(changes) if changes.is_empty() => {
                trace::phase("checkpoint: namespace compared again");
                true
            }
            Ok(changes) => {
                eprintln!(
                    "feather keeper {name}: the network namespace changed during the checkpoint                      ({}); try again",
                    changes.join("; ")
                );
                false
            }
            Err(e) => {
                eprintln!("feather keeper {name}: {}", causes(&e));
                false
            }
        }
    }

    /// A checkpoint must not read as restorable before the layer it goes with and its images
    /// are on disk: the layer's mounts go (and with them its flush) before the record. Which
    /// flush covers the images depends on where they are. Off the layer's filesystem (a disk
    /// image's) they were flushed at CRIU's `post-dump` (`snapshot::sync_images`). On it, this
    /// is their only flush, checked by a `syncfs` after it (`snapshot::sync_images_filesystem`):
    /// the unmount flushes only with the overlay's last hold, and drops a write error. On an
    /// error the VM is recorded stopped, not checkpointed, and the asker told why.
    fn flush_checkpoint(&mut self) {
        let images = snapshot::images_flushed_with_layer(&self.vm, &self.config);
        drop(self.held_mounts.take());
        trace::phase("teardown: let the VM's mounts go (its layer flushed)");
        let Some(images) = images else { return };
        if let Err(e) = snapshot::sync_images_filesystem(&self.vm, images) {
            self.complain(&e);
            self.checkpointed.set(false);
            self.checkpoint_refused = Some(causes(&e));
        }
    }

    /// `foreground`: this process is the user's `feather run --rm`, which may leave the slow end
    /// of a throw-away VM's teardown to a child of its own (see [`Keeper::hand_off`]).
    fn tear_down(&mut self, how: &str, foreground: bool) {
        // Handed over, the cgroup goes in the finisher too (`remove_throw_away_leftovers`):
        // every process of the VM ended with its init (its pid namespace), and the group is
        // named by the VM's id, which no later VM has.
        if hands_off(&self.config, foreground) {
            self.hand_off();
            return;
        }
        if self.claimed.get() {
            self.tear_down_claimed(how);
            return;
        }
        self.remove_cgroup();
        // A kept VM's answer waits for its own veth and firewall entries, not for the root's
        // bridge and tables, which go after it if the VM was their last user (`serve`).
        if self.config.ephemeral {
            self.network.detach();
        } else {
            self.network.detach_keeping_bridge();
        }
        trace::phase("teardown: start the network's removal");
        let _ = fs::remove_dir_all(self.vm.run_dir());
        trace::phase("teardown: remove the run folder");
        if self.config.ephemeral {
            self.network.release(&self.config.id);
            if let (Some(disk), Some(root)) = (self.config.limits.disk, self.vm.root()) {
                crate::disk::release(root.dir(), &self.vm, disk);
            }
            trace::phase("teardown: return the lease");
            let _ = fs::remove_dir_all(self.vm.path());
            trace::phase("teardown: remove the VM's folder");
            self.network.wait();
            trace::phase("teardown: wait for the network's removal");
            return;
        }
        if self.checkpointed.get() {
            self.flush_checkpoint();
        }
        let mut state = self.vm.read_state().unwrap_or_else(|_| VmState::created());
        state.status = if self.checkpointed.get() {
            VmStatus::Checkpointed
        } else {
            VmStatus::Stopped
        };
        state.keeper_pid = None;
        state.init_pid = None;
        state.init_start_ticks = None;
        state.stopped = Some(now());
        state.last_exit = Some(if self.checkpointed.get() {
            "checkpointed".to_owned()
        } else {
            how.to_owned()
        });
        // Whole, not Durable: the rename is not synced (a second device flush on every stop).
        // A power cut that forgets it leaves the record before, "running" by a keeper whose
        // lock is free, which `ls` shows as crashed and `start` and `rm` clean up after: as
        // true as "stopped" once the power is back, since the cut ended every process of the
        // VM too. A checkpointed record is fully synced: it must not read as running.
        let recorded = match self.durability {
            Durability::Durable if !self.checkpointed.get() => Durability::Whole,
            other => other,
        };
        if let Err(e) = self.vm.write_state(&state, recorded) {
            eprintln!("feather keeper {}: {}", self.vm.name(), causes(&e));
        }
        trace::phase("teardown: record the state");
        // The VM's veth and firewall entries gone; the kernel's freeing of the entries (the
        // close of the thread's nftables socket) is waited for as the keeper ends.
        self.network.wait_removed();
        trace::phase("teardown: wait for the network's removal");
    }
}

impl Keeper {
    fn remove_cgroup(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
            if let Err(e) = cgroup.remove(Duration::from_secs(5)) {
                eprintln!("feather keeper {}: {}", self.vm.name(), causes(&e));
            }
            trace::phase("teardown: remove the cgroup");
        }
    }

    /// Ends a throw-away VM run in the foreground without making the user wait for the kernel:
    /// its network's removal, its cgroup's and the unmounting of its tree wait for RCU grace
    /// periods, and its folders' removal for the disk. The VM, whose processes are all gone, is
    /// set aside (renamed: its name is free and `ls` shows it no more), and the process of the
    /// keeper program started once the command ran (`__finish`, [`crate::finisher`]) is handed
    /// the rest with the keeper lock, and removes it while this process reports the command's
    /// exit status.
    /// A finisher killed half-way leaves a set-aside VM whose lock is free: the next feather
    /// command finishes it ([`crate::lifecycle::settle_throw_aways`]), and every command but
    /// `run --rm` first waits for teardowns under way, so that what feather shows never
    /// includes one.
    fn hand_off(&mut self) {
        let aside = match self.vm.set_aside(&self.config.id) {
            _ if self.gone_root.get().is_some() => self.vm.clone(),
            Ok(aside) => aside,
            Err(e) => {
                self.complain(&e);
                self.remove_throw_away(&self.vm);
                return;
            }
        };
        self.hand_over_set_aside(&aside);
    }

    /// Says on the keeper's stderr (its log) what went wrong in a teardown that goes on.
    fn complain(&self, e: &dyn std::error::Error) {
        eprintln!("feather keeper {}: {}", self.vm.name(), causes(e));
    }

    /// Hands the teardown of the VM set aside as `aside` to a finisher: the one started while
    /// the command ran, else one started now; done by this process if none takes it. Whether
    /// one took it.
    fn hand_over_set_aside(&mut self, aside: &VmDir) -> bool {
        let held = Held {
            mounts: self.held_mounts.take(),
            memory_layer: self.memory_layer.take().map(|layer| layer.fd),
        };
        // The finisher started while the command ran, else (not started then, or gone since:
        // killed) one started now.
        let handed = match self.finisher.take() {
            Some(finisher) => finisher.hand_over(&self.lock, held),
            None => Err(held),
        }
        .or_else(|held| match self.start_finisher() {
            Ok(finisher) => finisher.hand_over(&self.lock, held),
            Err(e) => {
                self.complain(&e);
                Err(held)
            }
        });
        match handed {
            Ok(()) => {
                trace::phase("teardown: set aside, hand the rest over");
                true
            }
            Err(held) => {
                held.release();
                self.remove_throw_away(aside);
                false
            }
        }
    }

    /// Ends a VM claimed from the pool as a throw-away VM's teardown ends: set aside first (its
    /// name free, out of `ls`, and every command that waits for teardowns waits for this
    /// process's keeper lock), and the claimer told, then everything it held removed, which
    /// nobody waits for (its claimer has reported the exit status already): by a finisher when
    /// a refill starts (as a cold run's teardown), else by this process. A finisher killed
    /// half-way leaves the set-aside VM with its lock free, which the next feather command
    /// finishes ([`crate::lifecycle::settle_throw_aways`]).
    fn tear_down_claimed(&mut self, how: &str) {
        let aside = match self.vm.set_aside(&self.config.id) {
            _ if self.gone_root.get().is_some() => self.vm.clone(),
            Ok(aside) => aside,
            Err(e) => {
                self.complain(&e);
                self.vm.clone()
            }
        };
        // The run ends now, with its VM out of `ls` and its name free, as a cold run's; a
        // claimer that died hears nothing.
        if let Some(claimer) = self.claimer_waiting.take() {
            let stopped = Response::Stopped {
                how: how.to_owned(),
                handed_over: Vec::new(),
            };
            let _ = protocol::write_response(&claimer, &stopped);
        }
        trace::phase("teardown: a claimed VM set aside, its claimer told");
        // The pool is made whole again beside this teardown, which no one waits for either
        // (unless it was drained meanwhile: a fill would find nothing to do), but not after an
        // idle VM's end: the next run refills it (a miss, or a claim).
        let refilling = self
            .vm
            .root()
            .filter(|root| !self.expired.get() && crate::pooled::size(root) > 0)
            .is_some_and(|root| crate::pooled::start_filler(&root));
        if refilling {
            held_by_test(HOLD_AFTER_REFILL);
        }
        // With a refill under way, the rest goes as a cold run's teardown goes: handed to a
        // finisher, which keeps the root's bridge, tables and namespaces made ahead for the
        // next VM (the refill's, which takes one) and lingers. Removed here, a pooled VM
        // that was the root's last user of its network took them down while the refill's VM
        // was being made, which then made them all anew and its own veth pair (16–49 ms of its
        // keeper's 20–60 ms, load 7–9). A teardown that started no refill (an idle VM's end,
        // a drain's, refills stopped after stale misses, a fill that could not be spawned)
        // still removes it here: no VM comes next to use the network.
        // Only a VM set aside (not one whose root is gone, nor one that could not be): the
        // finisher finds it by its set-aside folder.
        let set_aside = aside.path() != self.vm.path();
        let hand_over = refilling && set_aside;
        let handed = hand_over && self.hand_over_set_aside(&aside);
        if !hand_over {
            self.remove_throw_away(&aside);
        }
        // Last: until here a crash leaves the claimed entry that leads a fill to what is left.
        if let Some(root) = self.vm.root() {
            let _ = fs::remove_file(crate::pooled::claimed_entry(&root, self.vm.name()));
        }
        // A root whose `rm -rf` stopped short at its network's mounts (namespaces made ahead):
        // its network goes now unless another VM uses it, as `network down` takes it, so that
        // the `rm -rf` tried again removes the rest. A root gone whole leaves its bridge and
        // tables to the sweep of removed roots (feather_net::removed_roots).
        // Only the root watched: a new folder at its path is another root, whose network is
        // not this keeper's to end (nor a file there naming another root's bridge).
        if let (Some(root), Some(watched)) = (self.vm.root(), self.gone_root.get()) {
            if crate::root_watch::is_at(root.dir(), watched) {
                let _ = feather_net::linger::end(&root);
            }
        }
        trace::phase(if handed {
            "teardown: a claimed VM's entry removed (the VM handed over)"
        } else {
            "teardown: a claimed VM removed"
        });
    }

    /// Starts the process that finishes the teardown (see [`crate::finisher`]).
    fn start_finisher(&self) -> Result<Finisher> {
        let root = self
            .vm
            .root()
            .ok_or_else(|| failed(self.vm.name(), "its folder has no parent"))?;
        Finisher::start(&root, &self.vm, &self.config.id)
    }

    /// [`Keeper::start_finisher`] while the command runs. Failing (a tight `pids.max`, the
    /// host binary gone), the hand-over tries again; why it failed goes to the root's
    /// teardown log, not the caller's terminal, as nothing is lost yet.
    fn start_finisher_early(&self) -> Option<Finisher> {
        self.start_finisher()
            .inspect_err(|e| {
                let note = format!(
                    "cannot start the teardown's finisher while the command runs (tried again \
                     at its end): {}",
                    causes(e)
                );
                self.note_in_teardown_log(&note);
            })
            .ok()
    }

    /// Appends `note` to the root's teardown log (`StateRoot::teardown_log`), where a
    /// finisher writes what it has to say; nothing if it cannot be opened.
    fn note_in_teardown_log(&self, note: &str) {
        use std::io::Write as _;
        let log = self
            .vm
            .root()
            .and_then(|root| root.open_teardown_log().ok());
        if let Some(mut log) = log {
            let _ = writeln!(log, "feather keeper {}: {note}", self.vm.name());
        }
    }

    /// Removes what is left of a throw-away VM after its processes: its network (waiting for
    /// the kernel), its lease, its run folder and last its folder, whose presence tells a later
    /// command that something may be left.
    fn remove_throw_away(&self, vm: &VmDir) {
        drop(self.held_mounts.take());
        self.remove_cgroup();
        self.network.detach();
        held_by_test(HOLD_BEFORE_LEASE_RETURN);
        self.network.release(&self.config.id);
        self.network.wait();
        let _ = fs::remove_dir_all(vm.run_dir());
        let _ = fs::remove_dir_all(vm.path());
    }
}

/// What a request to the keeper leads to.
enum Answered {
    /// Answered already.
    Done,
    /// Stop the VM with this grace period; the asker hears when it has stopped.
    Stop(Duration),
    /// The VM was checkpointed and its processes are ending; the asker hears when they have.
    Checkpointed,
    /// The VM was claimed from the pool; it ends when the asker's connection closes.
    Claimed,
}

/// The thread bringing a VM's link down since its dump began (see `Keeper::dumped`).
type EarlyLock = std::thread::JoinHandle<feather_net::Result<()>>;

/// Waits for the [`EarlyLock`] in `early`, if it is there still (the first caller takes it),
/// and returns how it went.
fn landed(early: &std::cell::RefCell<Option<EarlyLock>>) -> Option<feather_net::Result<()>> {
    let thread = early.borrow_mut().take()?;
    Some(thread.join().unwrap_or_else(|_| {
        Err(feather_net::NetError::Invalid(
            "the thread bringing the link down panicked".into(),
        ))
    }))
}

// Defined beside the restore, which remakes the VM's groups and holds to the same bounds.
pub use crate::service_groups::{MAX_CGROUPS, MAX_CGROUP_DEPTH};

/// Makes the VM's group with its limits, and bounds the groups the VM can make below it
/// ([`MAX_CGROUPS`]; on cgroup v1, which has no such bound, a memory limit holds: the kernel
/// charges a group's memory to the memory group of the process that makes it). Says how init
/// may enter the group's v2 folder: at its clone only into a group made here ([`V2Entry`]).
fn make_cgroup(
    cgroup: &Cgroup,
    config: &VmConfig,
    name: &VmName,
    root: &StateRoot,
) -> Result<V2Entry> {
    let v2_entry = cgroup.create(&limits_of(config)).in_vm(name)?;
    // A group a keeper left frozen (killed between a freeze and its thaw: a migration, a
    // checkpoint's hold, the post-copy freeze behind CRIU) whose clean-up could not remove it
    // is made again as it was, `cgroup.freeze` and all: the VM started or restored into it
    // would stay frozen. No process of the VM is in it yet (a restore's CRIU enters it after
    // this, and restores a migrated VM stopped, not frozen), so no freeze of another's is lost.
    if cgroup.thaw_left().in_vm(name)? {
        eprintln!("feather: VM {name}: its cgroup was left frozen (by a keeper that ended during a freeze); thawed");
    }
    // Which root's VM the group is, should its folder go without it (see `Cgroup::tag_root`).
    // Bookkeeping only: where `trusted.*` cannot be written (feather without CAP_SYS_ADMIN in
    // the host's user namespace, inside a container, say) the VM starts all the same, and its
    // group is simply never swept by root (`sweep_removed_roots`), as an older
    // feather's. Said once on stderr (the keeper's log): nothing on the normal path.
    if let Err(e) = cgroup.tag_root(root.dir()) {
        eprintln!(
            "feather: VM {name}: its cgroup is not tagged with its state root (it will not be \
             removed should the root go without it): {}",
            causes(&e)
        );
    }
    cgroup
        .bound_descendants(MAX_CGROUPS, MAX_CGROUP_DEPTH)
        .in_vm(name)?;
    Ok(v2_entry)
}

fn limits_of(config: &VmConfig) -> Limits {
    Limits {
        memory_bytes: config.limits.memory,
        pids: config.limits.pids,
        cpus: config.limits.cpus,
    }
}

/// How long the keeper waits for init to close its end of their boot socket after Start.
const INIT_LETS_GO: Duration = Duration::from_secs(5);

/// Waits until init has closed its end of the boot socket, which it does as soon as it has
/// read Start. Until then that end is a socket of the VM whose peer (the keeper's end) lies
/// outside it, which CRIU cannot dump ("Unix socket … not found"): a checkpoint right after
/// `feather start` returned failed now and then on a loaded machine.
fn await_init_letting_go(init: &mut UnixStream) {
    let deadline = Instant::now() + INIT_LETS_GO;
    // Init sends nothing more: the read ends at its close (0), its death, or the timeout. A
    // signal that ends it early (EINTR: a read with a timeout is not restarted) is read past.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || init.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match std::io::Read::read(init, &mut [0u8; 1]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            _ => return,
        }
    }
}

/// Where a starting VM's generated /etc files go: beside its layer in memory, for a
/// throw-away VM (nothing of them on the host's disk, nothing to remove at its end), else its
/// run folder (a checkpoint's restore binds them from there again, see `snapshot`).
fn etc_dir(vm: &VmDir, memory_layer: Option<&layers::MemoryLayer>) -> PathBuf {
    memory_layer.map_or_else(
        || feather_net::etc::dir(vm.run_dir()),
        layers::MemoryLayer::etc_dir,
    )
}

/// Removes what a keeper that died without cleaning up left: its cgroup (and any process still
/// in it), its veth and nftables chains (and the bridge, if no other VM of its state root uses
/// it) and its control socket. Mounts need no cleaning: they lived only in the VM's mount
/// namespace, which the kernel dropped with its last process.
pub fn remove_leftovers(vm: &VmDir, config: &VmConfig) {
    remove_leftovers_of(vm, config, &cgroup_path(config));
}

/// [`remove_leftovers`] with the VM's group already found (a start's or restore's, which
/// makes the group again right after).
fn remove_leftovers_of(vm: &VmDir, config: &VmConfig, cgroup: &Cgroup) {
    remove_leftovers_with(vm, config, cgroup, feather_net::remove_leftovers);
}

/// Like [`remove_leftovers`], for a throw-away VM whose teardown was handed over: the root's
/// bridge and tables stay for the next VM even after its last one (see `feather_net::linger`).
pub fn remove_throw_away_leftovers(vm: &VmDir, config: &VmConfig) {
    remove_leftovers_with(
        vm,
        config,
        &cgroup_path(config),
        feather_net::remove_leftovers_keeping_bridge,
    );
}

fn remove_leftovers_with(
    vm: &VmDir,
    config: &VmConfig,
    cgroup: &Cgroup,
    network: fn(&StateRoot, &std::path::Path, &str, &feather_core::NetworkConfig),
) {
    remove_group(cgroup, vm.name());
    if let Some(root) = vm.root() {
        network(&root, vm.run_dir(), &config.id, &config.network);
    }
    let _ = fs::remove_dir_all(vm.run_dir());
    // A record a keeper killed while init assembled the root had staged (never committed).
    feather_core::atomic::remove_abandoned(vm.path());
    layers::SeenLowers::drop_pending(vm);
}

/// Removes the cgroup of a VM whose processes should all be gone (any still in it are
/// killed). A group that stays (a process that would not leave within the patience) is said on
/// stderr — the keeper's log, or the terminal of the command cleaning up — naming the VM and
/// the group: a cgroup left behind then says why.
fn remove_group(cgroup: &Cgroup, vm: &VmName) {
    if !cgroup.exists() {
        return;
    }
    // Killed before any thaw: a group left frozen (a keeper killed during a freeze, a copy a
    // migration let go) must not run a moment of user code; frozen processes die of the kill
    // as they are, and a thawed one with SIGKILL pending never returns to user space.
    cgroup.kill_all();
    if let Err(e) = cgroup.remove(Duration::from_secs(5)) {
        eprintln!("feather: VM {vm}: its cgroup stays: {}", causes(&e));
        // A group that stays is not left frozen for the next start or restore, which makes
        // the group again over it (that start thaws it too, see `make_cgroup`).
        if let Err(e) = cgroup.thaw_left() {
            eprintln!(
                "feather: VM {vm}: its cgroup cannot be thawed: {}",
                causes(&e)
            );
        }
    }
}

/// Removes the cgroup of the VM whose id is `id` (see [`cgroup_path`]), for a teardown that
/// knows the id but cannot read the VM's config: a throw-away VM's set-aside folder carries
/// the id in its name (`feather_core::VmDir::set_aside_id`).
pub fn remove_group_of_id(id: &str, vm: &VmName) {
    remove_group(
        &Cgroup::new(Hierarchies::detect(), format!("feather/{id}")),
        vm,
    );
}

/// How often, at most, [`sweep_removed_roots`] looks at the VM groups of the host:
/// each look reads every group's tag: among 1047 VM groups, an `rm` of a created VM took
/// 4.9 ms of CPU (5.4–7.5 ms of wall time) with a look each time and 1.3 ms (1.7 ms) without,
/// release build. The groups it removes wait a minute anyway ([`SWEEP_SPARES_GROUPS_FOR`]).
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How young a group [`sweep_removed_roots`] leaves alone, whatever its root: the
/// rule `StateRoot::set_aside_vms_sweeping` holds to for a VM folder being made.
pub const SWEEP_SPARES_GROUPS_FOR: Duration = Duration::from_secs(60);

/// Removes what state roots whose folder is gone left on the host: their networks
/// ([`feather_net::removed_roots`]), and the VM groups that hold no process, left by a
/// VM whose keeper died and whose root was removed before anything cleaned up after it (its
/// folder, the group's only other record, went with the root). Only a group tagged with its
/// root ([`Cgroup::tag_root`]) is looked at, and one with a process in it is left alone (its
/// VM runs on, its root removed under it: ending it is for whoever removed the root; asked with
/// one read of its v2 `cgroup.events`, [`Cgroup::holds_process`], not a walk of the groups
/// the VM nested). A group
/// is made only once its VM's folder is in its root, so no start in a root that exists loses
/// its group here. A root is known by its path: the tag's path as this command resolves it.
/// A starter in another mount namespace (a root on a private tmpfs, a service with
/// PrivateTmp) or with a path through a link changed since may see a root this command does
/// not, so a group younger than [`SWEEP_SPARES_GROUPS_FOR`] (by its folder's mtime) is left
/// alone: a start or restore between making its group and putting init (or CRIU) in it holds
/// an empty group that is never touched. Run by `rm` and the crash clean-up, off every
/// start's path, at most once every [`SWEEP_EVERY`] on the host (see
/// `Registry::claim_sweep`): a group so left goes at the first of them once it is due.
pub fn sweep_removed_roots() {
    // A stamp that cannot be made (the registry's folder read-only) leaves every call to sweep,
    // as before there was one: slower, never wrong.
    let _sweeping = match feather_core::roots::Registry::host().claim_sweep(SWEEP_EVERY) {
        Ok(None) => return,
        Ok(Some(stamp)) => Some(stamp),
        Err(_) => None,
    };
    feather_net::removed_roots::remove_networks();
    let hierarchies = Hierarchies::detect();
    let mut seen: Vec<(PathBuf, bool)> = Vec::new();
    for (group, root) in feather_sys::cgroup::groups_with_roots(&hierarchies, "feather") {
        let Some(root) = root else {
            continue;
        };
        let root_gone = match seen.iter().find(|(known, _)| *known == root) {
            Some((_, gone)) => *gone,
            None => {
                let gone = fs::symlink_metadata(&root)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
                seen.push((root.clone(), gone));
                gone
            }
        };
        let young = group.age().is_none_or(|age| age < SWEEP_SPARES_GROUPS_FOR);
        if !root_gone || young || group.holds_process() {
            continue;
        }
        if let Err(e) = group.remove(Duration::ZERO) {
            eprintln!(
                "feather: a cgroup of a VM of the removed state root {} stays: {}",
                root.display(),
                causes(&e)
            );
        }
    }
}

/// The record of a VM that runs with this process as its keeper and `init` as its init.
fn running_state(
    init: nix::unistd::Pid,
    memory_layer: Option<feather_core::state::MemoryLayer>,
) -> VmState {
    let mut state = VmState::created();
    state.status = VmStatus::Running;
    state.keeper_pid = Some(std::process::id() as i32);
    state.init_pid = Some(init.as_raw());
    state.init_start_ticks = process::start_ticks(init);
    state.started = Some(now());
    state.memory_layer = memory_layer;
    state
}

/// Clones init into the VM's namespaces, moves it into the cgroup, and waits until it has
/// assembled the VM's root. `stdio`: init's stdin, stdout and stderr (else it keeps this
/// process's until it detaches). Meanwhile, beside the devices rules, the network's host side
/// and init's last steps up to its report ([`boot_beside`]): `stage` writes the VM's running
/// record ahead, which the caller commits once the VM runs (dropped on a failure, it leaves
/// the last record as it was; a keeper killed meanwhile leaves it to the next start's
/// `remove_leftovers`).
fn start_init(
    name: &VmName,
    group: Option<(&Cgroup, V2Entry)>,
    network: &feather_net::Attachment,
    plan: InitPlan,
    stdio: Option<VmEnds>,
    stage: &(dyn Fn(nix::unistd::Pid) -> Result<Staged> + Sync),
) -> Result<(ChildProcess, UnixStream, Staged, Vec<PinnedLower>)> {
    let (mut ours, theirs) = boot::pair().map_err(io(name, "socketpair"))?;
    // The cgroup namespace is entered later, by init itself, once it is inside the VM's group.
    let mut namespaces = process::vm_namespaces() - nix::sched::CloneFlags::CLONE_NEWCGROUP;
    // A namespace made ahead (feather_net::pool) is joined instead of made: fresh, never used.
    let pooled = network.namespace();
    if !plan.rootfs.network.own_namespace || pooled.is_some() {
        namespaces -= nix::sched::CloneFlags::CLONE_NEWNET;
    }
    let cgroup = group.map(|(cgroup, _)| cgroup);
    trace::phase("before the clone");
    let (forked, entry) = clone_init(name, namespaces, group)?;
    let init = match forked {
        Forked::Child => {
            trace::begin_init();
            drop(ours);
            if let Some(namespace) = pooled {
                if nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                    std::process::exit(1);
                }
            }
            if let Some(Err(e)) = entry.as_ref().map(feather_sys::cgroup::Entry::enter) {
                // Said to the keeper, whose GO finds this process gone: the user sees why.
                let why = format!("init cannot enter the VM's cgroup: {}", causes(&e));
                let _ = boot::send(&mut &theirs, &InitReport::Failed(why));
                std::process::exit(1);
            }
            if let Some([stdin, stdout, stderr]) = &stdio {
                let taken = nix::unistd::dup2_stdin(stdin)
                    .and_then(|_| nix::unistd::dup2_stdout(stdout))
                    .and_then(|_| nix::unistd::dup2_stderr(stderr));
                if taken.is_err() {
                    std::process::exit(1);
                }
            }
            drop(stdio);
            // The layer in memory and the hiding layer, until the recipe has mounted them
            // (rootfs::assemble).
            let keep: Vec<std::os::fd::RawFd> = std::iter::once(theirs.as_raw_fd())
                .chain(plan.rootfs.memory_layer_fd)
                .chain(plan.rootfs.hiding_layer_fd)
                .collect();
            process::close_other_fds(&keep);
            trace::init_step("enter the VM's cgroups, take stdio");
            init::run(plan, theirs)
        }
        Forked::Parent(init) => init,
    };
    drop(entry);
    // Only init holds the VM's ends now: their end is the end of everything in the VM.
    drop(stdio);
    drop(theirs);
    trace::phase("clone init into new namespaces");
    let pid = init.pid;
    // Init is in its cgroup already (it started in the v2 group, or moved itself into it, and
    // moved itself into the v1 ones). The devices rules of its v1 group and the network's host
    // side (which waits for RCU grace periods) are not needed while init assembles its root
    // (trusted code of ours, no VM program runs yet, nothing forks), so init hears GO at once
    // and they go side by side; init waits for NETWORK_READY before it runs anything of the
    // VM's.
    let place = move || match cgroup {
        Some(cgroup) => {
            // After the device rules: v1 refuses a deny-all on a group with children, were
            // `devices` co-mounted with a controller of these.
            restrict_devices(cgroup, name)?;
            make_service_groups(cgroup);
            Ok(())
        }
        None => Ok(()),
    };
    let attach = || {
        network
            .attach(pid.as_raw() as u32)
            .map_err(|e| VmError::Net {
                vm: name.to_string(),
                source: Box::new(e),
            })
    };
    match boot_beside(name, &mut ours, place, attach, || stage(pid)) {
        Ok((staged, pinned)) => Ok((init, ours, staged, pinned)),
        Err(e) => {
            let _ = process::signal(&init.pidfd, Signal::SIGKILL);
            let _ = waitpid(init.pid, None);
            Err(e)
        }
    }
}

/// Clones init into `namespaces` and, with `group`, into the VM's cgroup; returns the clone's
/// fork and what init (the child) enters the group with ([`feather_sys::cgroup::Entry`]).
/// Init starts in the VM's v2 group and moves itself into its v1 groups: a move by pid would
/// wait for an RCU grace period (`Cgroup::entry`). Into a v2 group found still holding a
/// process (left by a clean-up that killed it but could not remove it; one found empty is made
/// anew) it moves itself after the clone: cloned into it, the kernel would kill it
/// ([`V2Entry`]). The kernel kills it too when
/// this keeper's own v2 group was once killed (a service's group that outlived a
/// `cgroup.kill`), which nothing tells ahead: a clone killed at birth is cloned again, to move
/// itself in.
fn clone_init(
    name: &VmName,
    namespaces: nix::sched::CloneFlags,
    group: Option<(&Cgroup, V2Entry)>,
) -> Result<(Forked, Option<feather_sys::cgroup::Entry>)> {
    let Some((cgroup, v2)) = group else {
        return Ok((process::fork_into(namespaces).in_vm(name)?, None));
    };
    let entry = cgroup.entry(v2).in_vm(name)?;
    let forked = process::fork_into_cgroup(namespaces, entry.v2()).in_vm(name)?;
    let init = match forked {
        Forked::Parent(init) if entry.v2().is_some() && process::killed_at_birth(&init) => init,
        forked => return Ok((forked, Some(entry))),
    };
    let _ = waitpid(init.pid, None);
    eprintln!(
        "feather: VM {name}: init was killed as it was cloned into its cgroup; cloned again \
         to move itself in"
    );
    drop(entry);
    let entry = cgroup.entry(V2Entry::AfterClone).in_vm(name)?;
    let forked = process::fork_into_cgroup(namespaces, entry.v2()).in_vm(name)?;
    Ok((forked, Some(entry)))
}

/// The keeper's side of init's boot, from GO to init's report. While init assembles the root,
/// `place` (the device rules and service groups of init's cgroup) runs on a thread and `attach`
/// (the network's host side) here; then init hears NETWORK_READY and reports. `stage` writes
/// the VM's running record on a thread of its own beside all of that, up to the report: for a
/// kept VM it syncs the record, a flush of the disk (0.3–18 ms measured on this host's ext4,
/// depending on the writes in flight), which init's last steps (its interface, the Landlock
/// domain, its re-execution from inside the VM, its spawner) waited for when the record was
/// awaited before NETWORK_READY. Nothing of the VM's runs before the record is committed
/// (after this, before init's Start), so init need not wait for it; a keeper killed meanwhile
/// takes init with it and leaves the staged file to the next start's `remove_leftovers`.
/// Returns the staged record once init is ready, with what init found beneath the layers as
/// it mounted them (its first report, once the root is assembled: `layers::PinnedLower`); on
/// a failure the record is dropped (removed) and the caller ends init.
fn boot_beside<T: Send>(
    name: &VmName,
    ours: &mut UnixStream,
    place: impl FnOnce() -> Result<()> + Send,
    attach: impl FnOnce() -> Result<()>,
    stage: impl FnOnce() -> Result<T> + Send,
) -> Result<(T, Vec<PinnedLower>)> {
    boot::send(ours, &ToInit::Go)
        .map_err(io(name, "init did not start"))
        .map_err(|e| reported_failure(ours, name, e))?;
    std::thread::scope(|side| {
        let placing = side.spawn(place);
        let staging = side.spawn(stage);
        let attached = attach();
        let placed = placing
            .join()
            .unwrap_or_else(|_| Err(failed(name, "its cgroup could not be entered")));
        trace::phase("restrict devices, attach the network (while init assembles)");
        let mut pinned = Vec::new();
        let ready = placed
            .and(attached)
            .and_then(|()| {
                pinned = await_pinned(name, ours)?;
                boot::send(ours, &ToInit::NetworkReady).map_err(io(name, "init did not start"))
            })
            .map_err(|e| reported_failure(ours, name, e))
            .and_then(|()| await_init_report(name, ours));
        trace::phase("wait for init to assemble the root");
        let staged = staging
            .join()
            .unwrap_or_else(|_| Err(failed(name, "its record could not be written")));
        trace::phase("sync the running record (beside init's last steps)");
        // Init's own failure says more than the record's.
        let staged = ready.and(staged)?;
        Ok((staged, pinned))
    })
}

/// What init found beneath the layers, its report once it has assembled the root (or why it
/// failed).
fn await_pinned(name: &VmName, ours: &mut UnixStream) -> Result<Vec<PinnedLower>> {
    ours.set_read_timeout(Some(BOOT_TIMEOUT))
        .map_err(io(name, "init's socket"))?;
    match boot::receive_pinned(ours, "what init found beneath the layers") {
        // `receive_pinned` gathers the pieces into one `Pinned`.
        Ok(InitReport::Pinned(found) | InitReport::PinnedPart(found)) => Ok(found),
        other => Err(not_the_report(
            name,
            other,
            "init said it was ready before what it found beneath the layers",
        )),
    }
}

/// Init's report, once it has assembled the VM and is ready (or has failed, saying why).
fn await_init_report(name: &VmName, ours: &mut UnixStream) -> Result<()> {
    ours.set_read_timeout(Some(BOOT_TIMEOUT))
        .map_err(io(name, "init's socket"))?;
    match boot::receive::<InitReport>(ours, "init's report (ready or failed)") {
        Ok(InitReport::Ready) => Ok(()),
        other => Err(not_the_report(
            name,
            other,
            "init said twice what it found beneath the layers",
        )),
    }
}

/// Why the start fails when init's handshake gave `got` instead of the report awaited: init's
/// own reason, init gone, the handshake's failure, or `out_of_order` (another report).
fn not_the_report(
    name: &VmName,
    got: std::result::Result<InitReport, boot::BootError>,
    out_of_order: &str,
) -> VmError {
    match got {
        Ok(InitReport::Failed(why)) => failed(name, format!("cannot start: {why}")),
        Ok(_) => failed(name, out_of_order),
        Err(boot::BootError::Closed { .. }) => failed(
            name,
            "init died while setting up the VM (see its keeper.log)",
        ),
        Err(source) => VmError::Boot {
            vm: name.to_string(),
            during: "init",
            source,
        },
    }
}

/// An init that failed while assembling the root is gone before the keeper is done with it
/// (placing it, or telling it the network is ready): its own report says why, better than the
/// missing process or the closed socket (`otherwise`) does.
fn reported_failure(ours: &mut UnixStream, name: &VmName, otherwise: VmError) -> VmError {
    let _ = ours.set_read_timeout(Some(Duration::from_secs(1)));
    match boot::receive::<InitReport>(ours, "init's report") {
        Ok(InitReport::Failed(why)) => failed(name, format!("cannot start: {why}")),
        _ => otherwise,
    }
}

fn listen(vm: &VmDir) -> Result<UnixListener> {
    let run_dir = vm.run_dir();
    fs::create_dir_all(run_dir).at(run_dir)?;
    let socket = vm.control_socket();
    let _ = fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).at(&socket)?;
    Ok(listener)
}

/// The background keeper's main: boots the VM (or restores it from its checkpoint), tells the waiting `feather start` through
/// `ready` whether it worked, then serves until the VM ends. `netns`: a restore's network
/// namespace made ahead by its starter (see [`Keeper::restore`]).
pub fn main_background(
    root: StateRoot,
    name: VmName,
    ready: OwnedFd,
    restore: bool,
    netns: Option<OwnedFd>,
    terminal: Option<PathBuf>,
    peers: Arc<dyn Peers>,
) -> i32 {
    // A session of its own: the terminal that ran `feather start` may close without taking
    // the VM with it.
    let _ = nix::unistd::setsid();
    // A background keeper's phases (in its keeper.log) start here: what comes before is the
    // exec and loading of `feather-keeper`, seen by `feather start` as its wait.
    trace::begin();
    let ready = File::from(ready);
    let vm = root.vm(&name);
    // A started VM is up once it is recorded running: nothing after can fail its start (its
    // record of what its layers lie over settled, the roots registered meanwhile hidden, the
    // broker opened, init told Start, which lets go of its boot socket), so `feather start`
    // returns now, beside those steps. What the VM runs waits for Start, and every request
    // (`stop`, `checkpoint`, whose CRIU needs init's boot socket closed: a kept VM's keeper
    // waits for init to let go of it; a throw-away VM is never checkpointed) for `serve`,
    // after them. A restore answers after them, as before (its `begin` has no Start to send).
    let answer = |mut ready: File| {
        let _ = boot::send(
            &mut ready,
            &KeeperReport::Up {
                version: boot::VERSION,
            },
        );
    };
    let answer_failed = |mut ready: File, e: VmError| {
        let message = causes(&e);
        let _ = boot::send(&mut ready, &KeeperReport::Failed { message });
        1
    };
    let keeper = if restore {
        let mut keeper = match Keeper::restore(&root, &vm, netns) {
            Ok(keeper) => keeper,
            Err(e) => return answer_failed(ready, e),
        };
        keeper.begin(&root, terminal, peers);
        trace::phase("open the broker");
        answer(ready);
        keeper
    } else {
        let booted = match Keeper::boot_unsettled(&root, &vm, None, None, None) {
            Ok(booted) => booted,
            Err(e) => return answer_failed(ready, e),
        };
        answer(ready);
        // Before `begin`: init serves no request before Start, and `feather exec` talks to
        // init, not to this keeper, so the roots registered during the start are hidden
        // before anything (the workload, an exec sent right after the answer) runs in the VM.
        let mut keeper = booted.settle("hide late state folders (after the answer)");
        held_by_test(HOLD_BEFORE_BEGIN);
        keeper.begin(&root, terminal, peers);
        trace::phase("open the broker, tell init Start (after the answer)");
        keeper.replaced_record.take();
        trace::phase("free the VM's record before it ran (after the answer)");
        keeper
    };
    match keeper.serve(false) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("feather keeper {name}: {}", causes(&e));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal that ends the keeper's wait for init to let go of the boot socket (EINTR, as
    /// a process-wide one let through by another thread did) does not end the wait: it goes
    /// on until init closes its end. Before, the wait ended there, and a checkpoint right
    /// after could find the socket still held. The EINTR is had without a handler: a socket
    /// read with a timeout in a process stopped and continued ends so (signal(7)).
    #[test]
    fn a_signal_does_not_end_the_wait_for_init_to_let_go() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static ENDED: AtomicBool = AtomicBool::new(false);
        let (mut keepers, inits) = boot::pair().unwrap();
        let (said, tid) = std::sync::mpsc::channel();
        let waiting = std::thread::spawn(move || {
            said.send(nix::unistd::gettid().as_raw()).unwrap();
            await_init_letting_go(&mut keepers);
            ENDED.store(true, Ordering::SeqCst);
        });
        let tid = tid.recv().unwrap();
        while !feather_testkit::stat::asleep_in_read(tid) {
            std::thread::yield_now();
        }
        // Continued only once the waiting thread has stopped (left its read).
        let pid = std::process::id();
        let stat = format!("/proc/{pid}/task/{tid}/stat");
        let script = format!(
            "kill -STOP {pid}; until [ \"$(sed 's/.*) //' {stat} | cut -d' ' -f1)\" = T ]; do :; \
             done; kill -CONT {pid}"
        );
        let status = std::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(status.success());
        // The waiting thread either reads again or has ended.
        let read_again = loop {
            if ENDED.load(Ordering::SeqCst) {
                break false;
            }
            if feather_testkit::stat::asleep_in_read(tid) {
                break true;
            }
            std::thread::yield_now();
        };
        drop(inits);
        waiting.join().unwrap();
        assert!(read_again, "the wait ended at the signal");
        assert!(ENDED.load(Ordering::SeqCst), "ended at init's close");
    }

    /// Init's last steps (its interface, its re-execution, its spawner) do not wait for the
    /// VM's running record to be synced: NETWORK_READY goes as soon as the cgroup and the
    /// network are in place, with the record still being written. Here the record's writing
    /// ends only once init has reported ready; a keeper that waited for the record before
    /// NETWORK_READY (as it did) would never hear the report, and the staging gives up.
    #[test]
    fn init_is_told_the_network_is_ready_while_the_record_is_synced() {
        let name: VmName = "boot-beside".parse().unwrap();
        let (mut ours, mut theirs) = boot::pair().unwrap();
        let (ready, told) = std::sync::mpsc::channel();
        let init = std::thread::spawn(move || {
            boot::expect(&mut theirs, ToInit::Go).unwrap();
            boot::send(&mut theirs, &InitReport::Pinned(Vec::new())).unwrap();
            boot::expect(&mut theirs, ToInit::NetworkReady).unwrap();
            boot::send(&mut theirs, &InitReport::Ready).unwrap();
            ready.send(()).unwrap();
        });
        let named = name.clone();
        let stage = move || {
            // A bound only so that a keeper that waits for the record first fails the test
            // rather than hanging it; the assertion is on the order, not on a duration.
            told.recv_timeout(Duration::from_secs(60))
                .map(|()| "staged")
                .map_err(|_| failed(&named, "init was not told the network is ready"))
        };
        let staged = boot_beside(&name, &mut ours, || Ok(()), || Ok(()), stage);
        drop(ours);
        init.join().unwrap();
        assert_eq!(staged.unwrap().0, "staged");
    }

    /// Init's failure is what a failed start reports, even when the record failed too.
    #[test]
    fn inits_failure_is_reported_before_the_records() {
        let name: VmName = "boot-beside-fails".parse().unwrap();
        let (mut ours, mut theirs) = boot::pair().unwrap();
        let init = std::thread::spawn(move || {
            boot::expect(&mut theirs, ToInit::Go).unwrap();
            boot::send(&mut theirs, &InitReport::Pinned(Vec::new())).unwrap();
            boot::expect(&mut theirs, ToInit::NetworkReady).unwrap();
            let why = "no room for the overlay".to_owned();
            boot::send(&mut theirs, &InitReport::Failed(why)).unwrap();
        });
        let stage = || -> Result<()> { Err(failed(&name, "the disk is full")) };
        let e = boot_beside(&name, &mut ours, || Ok(()), || Ok(()), stage).unwrap_err();
        init.join().unwrap();
        assert!(e.to_string().contains("no room for the overlay"), "{e}");
    }

    /// An init that failed before GO (it could not enter the VM's cgroup) said why and ended:
    /// the start reports its reason, not the closed socket GO found ("Broken pipe").
    #[test]
    fn inits_failure_before_go_is_what_the_start_reports() {
        let name: VmName = "boot-fails-before-go".parse().unwrap();
        let (mut ours, mut theirs) = boot::pair().unwrap();
        let why = "init cannot enter the VM's cgroup: enter cgroup by writing 0 to /x".to_owned();
        boot::send(&mut theirs, &InitReport::Failed(why)).unwrap();
        drop(theirs);
        let stage = || -> Result<()> { Ok(()) };
        let e = boot_beside(&name, &mut ours, || Ok(()), || Ok(()), stage).unwrap_err();
        assert!(
            e.to_string().contains("cannot enter the VM's cgroup"),
            "{e}"
        );
    }
}

//! Network namespaces made ahead of use for a root's throw-away VMs, as serverless platforms
//! keep them: a fresh namespace with its veth pair made, the VM's end (`eth0`) given an
//! address, brought up and routed through the bridge, and the firewall entries of that pair
//! and address added. A `run --rm` with a private network takes one at create ([`claim`]) and
//! its init joins it instead of making a namespace and waiting for the pair and the entries.
//!
//! ```text
//! <root>/network-pool/refill.lock      held while a process fills the pool
//! <root>/network-pool/making-<n>/      an entry being made (stale when the lock is free)
//! <root>/network-pool/ready/<n>/       an entry ready to be taken
//! <root>/network-pool/claimed/<vm id>/ claimed by that VM at create; its keeper attaches
//!                                      it at start, and the folder goes with the VM
//!     netns    the namespace, kept alive by a bind mount of it (until attached)
//!     link     "<host end> <address>": the pair's host end (`fthp` + n) and the address
//!     taken    `link` renamed once attached: the pair is the VM's, a VM's port on the bridge
//! <root>/network-leases/<address>      the entry's lease, held as `pool-<n>`, then the VM's id
//! ```
//!
//! - A namespace is never used twice: an entry leaves `ready/` by an atomic rename under the
//!   root's network lock, and the namespace's bind mount goes when the VM's init is in it. The
//!   VM's own state of the namespace ends with the VM (a VM controls its namespace: hostile).
//! - A taken pair's host end keeps its `fthp` name; the entry marked `taken` says it is a VM's
//!   port, which keeps the root's bridge and tables while that VM runs ([`is_vm_port`]).
//! - Bounded: at most [`SIZE`] entries, refilled by the process a `run --rm` hands its
//!   teardown to (`feather-keeper __finish`), off the critical path, when VMs come one after
//!   another or while the root's network lingers ([`crate::linger::refill_pool_if_in_demand`]):
//!   one refill at a time (the refill lock), which makes the entries missing side by side and
//!   goes on until none is; a finisher that finds a refill under way waits for it and tops the
//!   pool up after ([`refill`]). Removed with the root's bridge when its linger ends
//!   ([`crate::linger`]) or at `feather network down`: nothing stays once a root's VMs are
//!   gone and its network is down, so a root is removed as before (its VMs, `network down`,
//!   then its folder).
//! - Serialised with the network's removal by the refill lock, taken in one order (the refill
//!   lock, then the root's network lock; a VM's teardown that holds the network lock only
//!   tries the refill lock, and where a refill held it waits for that refill once it let go
//!   of the network lock: [`remove_once_refilled`]): a removal takes it even where the pool
//!   has no folder yet ([`with_refill_lock_within`]; where the folder cannot be made, it goes
//!   on without, as no refill can take the lock either), and a refill that finds the network
//!   gone once it has it (its settings or its bridge), or sees it go while it works, makes
//!   nothing and removes the folder it made. A lock is counted only on the file the folder
//!   holds (a holder that removed the folder let go of a lock no one else sees). A claimed
//!   entry's folder goes with its VM, whoever tears it down (its `rm`, its finisher, or its
//!   keeper alone: [`drop_claimed`]): once the root's network is forgotten, no clean-up comes
//!   for it.
//! - Crash-safe: an entry being made is under `making-` until it is complete; whatever a killed
//!   refill or keeper left (a `making-` entry, a claimed entry whose VM holds no lease, a
//!   `pool-` lease without its entry, a ready entry whose host end is gone after a reboot) is
//!   removed by the next refill or by the next feather command of the root, and a folder
//!   holding only the refill lock, left by a removal killed after the root forgot its network,
//!   by the next removal ([`remove_folder_left`]).
//! - Only VMs that need nothing else of the host side take an entry: a private network without
//!   `--egress` in a root without an uplink (their entries are made per VM as before).

use std::fs::{self, File};
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MntFlags;
use nix::sched::CloneFlags;

use crate::error::{netlink as netlink_error, IoAt, NetError, Result};
use crate::folder::make_dir;
use crate::inside::{Inside, Interface, VM_INTERFACE};
use crate::netlink::{index_of, Netlink, PeerNamespace};
use crate::settings::{lock_as_named_in_three_rounds, open_lock_file, RootNetwork};
use crate::{firewall, leases};

/// How many entries a root keeps ready: a script's loop of `run --rm` finds one most times
/// while the teardowns of the ones before refill the pool. Each entry takes the kernel's RTNL
/// several times, as do the namespaces of ended VMs being torn down: in a loop the refill
/// falls behind now and then, by tens of milliseconds when others hold the RTNL, and a deeper
/// pool rides that out more often: a back-to-back loop found the pool empty in 36–50 runs of
/// 145 with 2 entries made one after another, in 15–23 with 4 made side by side (load 8–9).
pub const SIZE: usize = 4;

const DIR: &str = "network-pool";
const READY: &str = "ready";
const CLAIMED: &str = "claimed";
const MAKING: &str = "making-";
const NETNS: &str = "netns";
const LINK: &str = "link";
const TAKEN: &str = "taken";
const REFILL_LOCK: &str = "refill.lock";

/// Host ends of pooled pairs start with this (and so match the firewall's `fth*` drops).
pub const HOST_END_PREFIX: &str = "fthp";

/// The pool's refill lock's path in the root at `root_dir`.
pub(crate) fn refill_lock_path(root_dir: &Path) -> PathBuf {
    dir_of(root_dir).join(REFILL_LOCK)
}

fn dir_of(root_dir: &Path) -> PathBuf {
    root_dir.join(DIR)
}

fn lease_id(n: &str) -> String {
    format!("pool-{n}")
}

/// Whether `port` (a bridge port's name) is a pooled pair's host end rather than one of a VM's
/// own pair (a pooled pair a VM has taken is a VM's port all the same: see [`is_vm_port`]).
pub fn is_pooled_port(port: &str) -> bool {
    port.starts_with(HOST_END_PREFIX)
}

/// The host ends of the pooled pairs VMs have taken ([`Pooled::let_go`]) and not yet given up
/// with their teardown.
fn taken_ports(root_dir: &Path) -> Vec<String> {
    fs::read_dir(dir_of(root_dir).join(CLAIMED))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| fs::read_to_string(entry.path().join(TAKEN)).ok())
                .filter_map(|text| text.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether bridge port `port` is a VM's: its own pair's, or a pooled pair it took (`taken`, from
/// [`taken_ports`]). A pooled pair no VM took is a spare, which goes with the bridge.
fn is_vm_port(port: &str, taken: &[String]) -> bool {
    !is_pooled_port(port) || taken.iter().any(|t| t == port)
}

/// An entry's pair: its host end and the address of its VM end.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Link {
    host_end: String,
    address: Ipv4Addr,
}

impl Link {
    fn read(entry: &Path) -> Option<Link> {
        let text = fs::read_to_string(entry.join(LINK)).ok()?;
        let (host_end, address) = text.trim().split_once(' ')?;
        Some(Link {
            host_end: host_end.to_owned(),
            address: address.parse().ok()?,
        })
    }
}

/// At `create` of a throw-away VM, holding the root's network lock: takes a ready entry for
/// VM `vm_id` and hands it the entry's lease. Returns the VM's address, or None when the pool
/// has no entry fit to take (the VM then gets a lease and a namespace of its own).
pub(crate) fn claim(network: &RootNetwork, vm_id: &str) -> Option<Ipv4Addr> {
    let dir = dir_of(network.root());
    let ready = fs::read_dir(dir.join(READY)).ok()?;
    for entry in ready.flatten() {
        let Some(link) = Link::read(&entry.path()) else {
            continue;
        };
        // After a reboot the entry's folder outlives its namespace: left to the clean-up.
        if !is_port_of(&link.host_end, &network.bridge) {
            continue;
        }
        let claimed = dir.join(CLAIMED).join(vm_id);
        if make_dir(&dir.join(CLAIMED)).is_err() || fs::rename(entry.path(), &claimed).is_err() {
            continue;
        }
        // A crash between the rename and here leaves a `pool-` lease without its entry and a
        // claimed entry whose VM holds no lease: both are removed by the clean-up.
        return match leases::hand_over(network, link.address, vm_id) {
            Ok(()) => Some(link.address),
            Err(_) => {
                destroy(network, &claimed);
                None
            }
        };
    }
    None
}

/// Whether interface `name` exists and is a port of `bridge`.
fn is_port_of(name: &str, bridge: &str) -> bool {
    fs::read_link(Path::new("/sys/class/net").join(name).join("master"))
        .is_ok_and(|master| master.file_name().is_some_and(|b| b == bridge))
}

/// The entry VM `vm_id` claimed, opened by its keeper at start.
pub struct Pooled {
    entry: PathBuf,
    pub host_end: String,
    /// The namespace, for init to join (`setns`) instead of making one.
    pub namespace: File,
}

/// At start: the entry VM `vm_id` claimed at create, if it did.
pub(crate) fn take(root_dir: &Path, vm_id: &str) -> Result<Option<Pooled>> {
    let entry = dir_of(root_dir).join(CLAIMED).join(vm_id);
    let Some(link) = Link::read(&entry) else {
        return Ok(None);
    };
    let path = entry.join(NETNS);
    let namespace = File::open(&path).at(&path)?;
    Ok(Some(Pooled {
        entry,
        host_end: link.host_end,
        namespace,
    }))
}

impl Pooled {
    /// Once init is in the namespace: its bind mount goes, so that nothing but the VM holds the
    /// namespace and nothing can take it again, and the entry is marked taken (`link` renamed
    /// `taken`): the pair is the VM's from now on, and its host end a VM's port on the bridge,
    /// which keeps the bridge and tables while the VM runs. The entry's folder goes with the
    /// VM ([`drop_claimed`], at its teardown): removed here, on the state root's disk, it took
    /// 4–5 ms (ext4 mounted `discard` frees a file's blocks synchronously) on the way to the
    /// VM's start. If the rename fails, the entry still reads as claimed: the bridge stays,
    /// and the teardown removes the pair and its firewall entries by the `link` it finds.
    pub(crate) fn let_go(&self) {
        unmount(&self.entry.join(NETNS));
        let _ = fs::rename(self.entry.join(LINK), self.entry.join(TAKEN));
    }
}

fn unmount(netns: &Path) {
    let _ = nix::mount::umount2(netns, MntFlags::MNT_DETACH);
}

/// Whether VM `vm_id` claimed an entry whose folder is still there.
pub(crate) fn is_claimed_by(root_dir: &Path, vm_id: &str) -> bool {
    dir_of(root_dir).join(CLAIMED).join(vm_id).exists()
}

/// At `rm` and at the end of a throw-away VM, by its finisher or by its keeper (holding the
/// root's network lock): the entry VM `vm_id` claimed goes — what an entry not taken holds
/// with it, only the folder of one taken, whose pair was the VM's. Once the root's bridge is
/// gone, so is the emptied pool's folder (the bridge's removal drains the pool but leaves the
/// entries of VMs still being torn down). Whether that folder is left to
/// [`remove_once_refilled`], for the caller to call once it let go of the network lock: a
/// refill held the refill lock (which comes before the network lock), and it kept the folder
/// for this entry, still there when it looked.
#[must_use]
pub(crate) fn drop_claimed(network: &RootNetwork, vm_id: &str) -> bool {
    let dir = dir_of(network.root());
    let entry = dir.join(CLAIMED).join(vm_id);
    if !is_claimed_by(network.root(), vm_id) {
        return false;
    }
    destroy(network, &entry);
    if index_of(&network.bridge).is_some() {
        return false;
    }
    match try_refill_lock(network.root()) {
        Some(_refilling) => {
            remove_if_empty(&dir);
            false
        }
        None => true,
    }
}

/// Not holding the root's network lock, after [`drop_claimed`] left the pool's folder of a
/// network whose bridge went to the refill under way: waits for that refill
/// ([`REFILL_PATIENCE`] at most, a few times that after whole removals by others) and removes
/// the folder if it is empty. Before, the folder outlived the network: the refill kept it for
/// the entry, and nothing looked again once the network was forgotten.
pub(crate) fn remove_once_refilled(network: &RootNetwork) {
    if let Some(_refilling) = refill_lock_within(network.root(), REFILL_PATIENCE) {
        if index_of(&network.bridge).is_none() {
            remove_if_empty(&dir_of(network.root()));
        }
    }
}

/// Removes one entry: its namespace's mount, its pair, its firewall entries, its folder, and
/// its lease if the pool still holds it. Deleting the pair waits for RCU grace periods.
fn destroy(network: &RootNetwork, entry: &Path) {
    unmount(&entry.join(NETNS));
    if let Some(link) = Link::read(entry) {
        if let (Some(index), Ok(mut netlink)) = (index_of(&link.host_end), Netlink::open()) {
            let _ = netlink.delete_link(index);
        }
        firewall::remove_vm(network, &link.host_end, link.address, false);
    }
    if let Some(n) = entry
        .file_name()
        .and_then(|name| name.to_str())
        .map(|name| name.trim_start_matches(MAKING))
    {
        let _ = leases::release(network, &lease_id(n));
    }
    let _ = fs::remove_dir_all(entry);
}

/// Whether the root has pool entries (any folder in the pool: ready, claimed or half-made).
pub fn has_entries(root_dir: &Path) -> bool {
    let dir = dir_of(root_dir);
    let nonempty = |path: PathBuf| fs::read_dir(path).is_ok_and(|mut e| e.next().is_some());
    nonempty(dir.join(READY))
        || nonempty(dir.join(CLAIMED))
        || fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(MAKING))
        })
}

/// How long ago a VM last claimed an entry (or the last claimed entry went), if one ever did.
pub fn since_last_taken(root_dir: &Path) -> Option<std::time::Duration> {
    let modified = fs::metadata(dir_of(root_dir).join(CLAIMED))
        .and_then(|m| m.modified())
        .ok()?;
    // A time in the future (the clock set back) counts as long ago.
    modified.elapsed().ok()
}

/// Whether an entry is claimed by a VM that has not attached it yet (it holds its `link`): the
/// bridge is in use.
pub(crate) fn has_claimed(root_dir: &Path) -> bool {
    fs::read_dir(dir_of(root_dir).join(CLAIMED))
        .is_ok_and(|entries| entries.flatten().any(|e| e.path().join(LINK).exists()))
}

/// The refill lock, when no other process holds it. None in a root whose folder is gone.
fn try_refill_lock(root_dir: &Path) -> Option<File> {
    take_refill_lock(root_dir, |file| file.try_lock().is_ok())
        .ok()
        .flatten()
}

/// The refill lock, waited for at most `patience` (a few times that, each time after a whole
/// removal by someone else), and not once its holder is seen stopped (SIGSTOP, Ctrl-Z: a
/// finisher or a teardown would wait its whole patience for nothing); None in a root whose
/// folder cannot be made.
fn refill_lock_within(root_dir: &Path, patience: Duration) -> Option<File> {
    use feather_core::lock_holder::IfStopped;
    take_refill_lock(root_dir, |file| {
        crate::settings::lock_within(file, Instant::now() + patience, IfStopped::GiveUp)
    })
    .ok()
    .flatten()
}

/// The refill lock, taken by `lock` (whether it took it) on the file the pool's folder (made
/// if missing) holds. A holder that removed the folder (the network went) let go of a lock on
/// a file no one opens again: a waiter that took that lock would work beside the next refill
/// or removal, so the lock is taken again on the folder's file. Ok(None) when `lock` did not
/// take it; an error when the folder or its lock's file cannot be made.
fn take_refill_lock(
    root_dir: &Path,
    lock: impl Fn(&File) -> bool,
) -> std::io::Result<Option<File>> {
    let dir = dir_of(root_dir);
    let path = dir.join(REFILL_LOCK);
    let open = || {
        make_dir(&dir)?;
        open_lock_file(&path)
    };
    lock_as_named_in_three_rounds(&path, open, lock)
}

/// Whether a VM's port (not a pooled pair's) is on the root's bridge.
pub(crate) fn vm_on_bridge(root_dir: &Path) -> bool {
    let Ok(Some(network)) = RootNetwork::load(root_dir) else {
        return false;
    };
    vm_port_on_bridge(&network, None) == Some(true)
}

/// Whether a VM's port (not a pooled pair's), other than `except`, is on `network`'s bridge;
/// None when the bridge is not there. A port whose name no longer resolves is a device the
/// kernel is unregistering (it unlists the name, waits for an RCU grace period, and only then
/// takes the port off the bridge): its VM is gone, and counting it let two keepers stopping
/// together, each seeing the other's dying port, both leave the network.
pub(crate) fn vm_port_on_bridge(network: &RootNetwork, except: Option<&str>) -> Option<bool> {
    let ports = fs::read_dir(
        Path::new("/sys/class/net")
            .join(&network.bridge)
            .join("brif"),
    )
    .ok()?;
    let taken = taken_ports(network.root());
    Some(ports.flatten().any(|port| {
        let port = port.file_name().to_string_lossy().into_owned();
        Some(port.as_str()) != except && is_vm_port(&port, &taken) && index_of(&port).is_some()
    }))
}

/// How long a finisher waits for the refill another process is doing before it leaves the
/// refill to it: the refill lock is held while entries are made (15 ms each on average in a
/// loop of `run --rm` at load 5–8, 130 ms at most). Commands that wait for teardowns wait
/// for the finisher's wait too.
const REFILL_PATIENCE: Duration = Duration::from_secs(2);

/// Fills the root's pool up to [`SIZE`], after removing what a killed refill or keeper left.
/// Only while the root's bridge exists (the entries are its ports); never fails its caller:
/// an entry that cannot be made leaves nothing, and VMs then make their own.
///
/// A refill under way is waited for ([`REFILL_PATIENCE`] at most), then the pool is topped up
/// again: skipped, the entry this finisher's VM took came back only with the next finisher,
/// when the refill under way had looked at the pool before that VM took it. The entries
/// missing are made side by side ([`side_by_side`]), again until none is missing: each waits
/// for RCU grace periods, which entries made together share, and VMs keep taking entries
/// while a refill goes on.
pub fn refill(root_dir: &Path) {
    let Ok(Some(network)) = RootNetwork::load(root_dir) else {
        return;
    };
    if network.uplink.is_some() {
        return;
    }
    let Some(_refilling) = refill_lock_within(root_dir, REFILL_PATIENCE) else {
        return;
    };
    // Taken down while this waited for the lock (`network down` drains the pool and removes
    // the network holding it) or while it made entries (the bridge's removal, which looks for
    // entries being made before the lock: none yet): nothing is made, or nothing is left
    // but the folder this made, which goes again under the lock. Before, a finisher's refill
    // made the pool anew in a root whose network was down, and one whose entries could not be
    // made left the folder (CI on ce3c51a9: `pool::many_runs_from_the_pool_leave_nothing_
    // beyond_the_pool`, "the pool is left", 1 of 1334; seen once before, in session 28).
    if is_up(&network) {
        fill(&network);
    }
    if !is_up(&network) {
        remove_if_empty(&dir_of(root_dir));
    }
}

/// Whether the root's network is still there: its settings, and its bridge.
fn is_up(network: &RootNetwork) -> bool {
    matches!(RootNetwork::load(network.root()), Ok(Some(_))) && index_of(&network.bridge).is_some()
}

/// Holding the refill lock: the pool cleaned, then filled up to [`SIZE`] (see [`refill`]).
fn fill(network: &RootNetwork) {
    clean_stale(network);
    let ready = dir_of(network.root()).join(READY);
    if make_dir(&ready).is_err() {
        return;
    }
    let count = || fs::read_dir(&ready).map_or(SIZE, |entries| entries.count());
    loop {
        let missing = SIZE.saturating_sub(count());
        if missing == 0 || side_by_side(missing, || make_one(network).is_ok()) == 0 {
            return;
        }
    }
}

/// Runs `make` `count` times side by side, each on a thread of its own: how many succeeded.
fn side_by_side(count: usize, make: impl Fn() -> bool + Sync) -> usize {
    std::thread::scope(|scope| {
        let makers: Vec<_> = (0..count).map(|_| scope.spawn(&make)).collect();
        makers
            .into_iter()
            .map(|maker| maker.join())
            .filter(|made| matches!(made, Ok(true)))
            .count()
    })
}

/// Makes one entry under `making-<n>`, then moves it to `ready/<n>`. Whatever fails on the way
/// is undone here, and a process killed on the way leaves the `making-` entry to the clean-up.
fn make_one(network: &RootNetwork) -> Result<()> {
    let n = random_hex()?;
    let making = dir_of(network.root()).join(format!("{MAKING}{n}"));
    let made = make_entry(network, &making, &n);
    if made.is_err() {
        let _lock = network.lock()?;
        destroy(network, &making);
    }
    made
}

fn make_entry(network: &RootNetwork, making: &Path, n: &str) -> Result<()> {
    let host_end = format!("{HOST_END_PREFIX}{n}");
    let address = {
        let _lock = network.lock()?;
        if index_of(&network.bridge).is_none() {
            return Err(NetError::Invalid(format!(
                "bridge {} is gone: no pool entry to make",
                network.bridge
            )));
        }
        fs::create_dir(making).at(making)?;
        let address = leases::lease(network, &lease_id(n))?;
        let link = making.join(LINK);
        fs::write(&link, format!("{host_end} {address}")).at(&link)?;
        address
    };
    let netns = making.join(NETNS);
    new_namespace_at(&netns)?;
    let namespace = File::open(&netns).at(&netns)?;
    let mut netlink = Netlink::open().map_err(netlink_error("open netlink", "on the host"))?;
    let bridge = index_of(&network.bridge)
        .ok_or_else(|| NetError::Invalid(format!("bridge {} vanished", network.bridge)))?;
    netlink
        .create_veth(
            &host_end,
            bridge,
            VM_INTERFACE,
            PeerNamespace::Fd(namespace.as_raw_fd()),
        )
        .map_err(netlink_error("create veth pair", host_end.clone()))?;
    let inside = Inside {
        own_namespace: true,
        interface: Some(Interface::of_vm(network, address)),
        files: Vec::new(),
    };
    in_namespace(&namespace, move || {
        feather_sys::net::loopback_up().map_err(|e| NetError::Invalid(e.to_string()))?;
        inside.configure()
    })?;
    firewall::add_vm(network, &host_end, address, false)?;
    let _lock = network.lock()?;
    // The bridge may have gone meanwhile (its last VM's linger): then so must this entry.
    if !is_port_of(&host_end, &network.bridge) {
        return Err(NetError::Invalid(format!(
            "{host_end} is no port of bridge {}",
            network.bridge
        )));
    }
    let ready = dir_of(network.root()).join(READY).join(n);
    fs::rename(making, &ready).at(&ready)
}

/// A new network namespace, kept by a bind mount on `path` (what `ip netns add` does): made by
/// a thread of its own, which alone changes namespace.
fn new_namespace_at(path: &Path) -> Result<()> {
    File::create(path).at(path)?;
    let target = path.to_owned();
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<()> {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Io {
                    path: target.clone(),
                    source: e.into(),
                })?;
                feather_sys::mount::bind(Path::new("/proc/thread-self/ns/net"), &target).map_err(
                    |e| NetError::Io {
                        path: target.clone(),
                        source: std::io::Error::from_raw_os_error(e.errno as i32),
                    },
                )
            })
            .join()
            .unwrap_or_else(|_| Err(NetError::Invalid("namespace thread panicked".into())))
    })
}

/// Runs `work` on a thread that joined `namespace` (the caller's own stays as it is).
pub(crate) fn in_namespace<T: Send>(
    namespace: &File,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(namespace, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetError::Io {
                        path: PathBuf::from("(pooled network namespace)"),
                        source: e.into(),
                    }
                })?;
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(NetError::Invalid("namespace thread panicked".into())))
    })
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 4];
    let path = Path::new("/dev/urandom");
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .at(path)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes what killed refills and keepers left: `making-` entries (the caller holds the refill
/// lock, so none is being made), claimed entries whose VM holds no lease, ready entries whose
/// pair is gone, and `pool-` leases without an entry.
pub(crate) fn clean_stale(network: &RootNetwork) {
    if let Ok(_lock) = network.lock() {
        clean_stale_locked(network, false);
    }
}

/// [`clean_stale`] for a caller that holds the root's network lock; with `all`, the ready
/// entries go too.
pub(crate) fn clean_stale_locked(network: &RootNetwork, all: bool) {
    let dir = dir_of(network.root());
    let held = leases::held(network).unwrap_or_default();
    let listed = |path: PathBuf| -> Vec<fs::DirEntry> {
        fs::read_dir(path).map_or_else(|_| Vec::new(), |e| e.flatten().collect())
    };
    let mut doomed: Vec<PathBuf> = listed(dir.clone())
        .into_iter()
        .filter(|e| e.file_name().to_string_lossy().starts_with(MAKING))
        .map(|e| e.path())
        .collect();
    doomed.extend(
        listed(dir.join(CLAIMED))
            .into_iter()
            .filter(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                !held.iter().any(|(_, holder)| *holder == id)
            })
            .map(|e| e.path()),
    );
    let mut ready = Vec::new();
    for entry in listed(dir.join(READY)) {
        let fit = Link::read(&entry.path())
            .is_some_and(|link| is_port_of(&link.host_end, &network.bridge));
        if fit && !all {
            ready.push(entry.file_name().to_string_lossy().into_owned());
        } else {
            doomed.push(entry.path());
        }
    }
    for entry in &doomed {
        destroy(network, entry);
    }
    // Leases of the pool whose entry is no longer there.
    for (_, holder) in held {
        if let Some(n) = holder.strip_prefix("pool-") {
            if !ready.iter().any(|r| r == n) {
                let _ = leases::release(network, &holder);
            }
        }
    }
}

/// With the root's bridge (its last VM gone; the caller holds the root's network lock and the
/// refill lock): every entry goes but those claimed by VMs. Their pairs are deleted here, so
/// that no veth of the root outlives its bridge even for the moment the kernel takes to drop
/// a namespace.
pub(crate) fn drain(network: &RootNetwork) {
    clean_stale_locked(network, true);
    remove_if_empty(&dir_of(network.root()));
}

/// The pool's folder `dir`, if nothing is left in it but its refill lock (which the caller
/// holds). Empty folders only: a claimed entry belongs to a VM starting now or being torn down.
fn remove_if_empty(dir: &Path) {
    let _ = fs::remove_dir(dir.join(READY));
    let _ = fs::remove_dir(dir.join(CLAIMED));
    if holds_only_the_lock(dir) {
        let _ = fs::remove_dir_all(dir);
    }
}

/// In a root that recorded no network: the pool's folder, if it holds nothing but the refill
/// lock's file (looked at under that lock, waited for at most `patience`). A removal killed
/// after the root forgot its network, before the folder it made for the lock went again
/// ([`with_refill_lock_within`]), leaves it, and no later look at the pool saw it (no network,
/// no entries).
pub(crate) fn remove_folder_left(root_dir: &Path, patience: Duration) {
    if dir_of(root_dir).exists() {
        let _ = with_refill_lock_within(root_dir, Instant::now() + patience, || ());
    }
}

/// Whether the pool's folder `dir` holds nothing but the refill lock's file.
fn holds_only_the_lock(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .all(|e| e.file_name().as_os_str() == REFILL_LOCK)
    })
}

/// Runs `work` holding the refill lock, for the removal of the root's bridge, which drains the
/// pool: waits at most `patience` for a refill under way (a few times that, each time after a
/// whole removal by someone else); None, and `work` not run, when the refill went on all that
/// time. The lock is taken even where the pool has no folder yet (it is made, and goes again
/// after `work` if nothing else is in it): taken only where the folder was, a refill that made
/// the folder right after the look went on beside the removal, read the network's settings
/// before they went, and left the folder for good. Where the folder or its lock's file cannot
/// be made (a full disk, a `network-pool` that is no folder), no refill can take the lock
/// either, and `work` runs without it: before, the removal stopped there, and `network down`
/// said a VM used the network.
pub(crate) fn with_refill_lock_within<T>(
    root_dir: &Path,
    deadline: Instant,
    work: impl FnOnce() -> T,
) -> Option<T> {
    use feather_core::lock_holder::IfStopped;
    let dir = dir_of(root_dir);
    let lock = take_refill_lock(root_dir, |file| {
        crate::settings::lock_within(file, deadline, IfStopped::GiveUp)
    });
    let Ok(lock) = lock else {
        return Some(work());
    };
    let _refilling = lock?;
    // Looked at under the lock: a folder that holds nothing but the lock was made for it (here
    // or by a refill that made nothing), and goes again; the empty `claimed/` of a network that
    // stays keeps its time, which says when a VM last took an entry ([`since_last_taken`]).
    let made_for_the_lock = holds_only_the_lock(&dir);
    let done = work();
    if made_for_the_lock {
        remove_if_empty(&dir);
    }
    Some(done)
}

/// With the root's last VM's bridge (holding the root's network lock): drains the pool unless
/// a refill is under way. Whether the pool is empty now.
pub(crate) fn try_drain(network: &RootNetwork) -> bool {
    if !has_entries(network.root()) {
        return true;
    }
    match try_refill_lock(network.root()) {
        Some(_refilling) => {
            drain(network);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_ports_are_told_from_vm_ports() {
        assert!(is_pooled_port("fthp0a1b2c3d"));
        // A VM's own host end: `fth` and hex digits of its id.
        assert!(!is_pooled_port("fth0a1b2c3d"));
    }

    /// A root whose folder is gone (removed while a process of it was still ending) is not
    /// made again by the pool's locks and folders.
    #[test]
    fn a_removed_root_is_not_made_again_for_the_pool() {
        let root_scratch = feather_testkit::ScratchDir::new("pool-gone");
        let root = root_scratch.0.join("root");
        assert!(try_refill_lock(&root).is_none());
        assert!(make_dir(&dir_of(&root).join(READY)).is_err());
        assert!(!root.exists(), "the removed root was made again");
        // In a root that is there, the pool's folder is made once and found after.
        fs::create_dir_all(&root).unwrap();
        let lock = try_refill_lock(&root).expect("the refill lock, in a root that is there");
        make_dir(&dir_of(&root).join(READY)).unwrap();
        make_dir(&dir_of(&root).join(READY)).unwrap();
        drop(lock);
    }

    /// The entries missing are made side by side: each maker here waits until all of them have
    /// begun (at most a minute: made one after another, the first waits all that time, alone).
    #[test]
    fn missing_entries_are_made_side_by_side() {
        use std::sync::{Condvar, Mutex};
        for count in [1, 2, SIZE] {
            let begun = Mutex::new(0);
            let all_begun = Condvar::new();
            let made = side_by_side(count, || {
                let mut n = begun.lock().unwrap();
                *n += 1;
                all_begun.notify_all();
                let (n, _) = all_begun
                    .wait_timeout_while(n, Duration::from_secs(60), |n| *n < count)
                    .unwrap();
                *n == count
            });
            assert_eq!(made, count, "{count} made side by side");
        }
        // A maker that fails is not counted.
        assert_eq!(side_by_side(3, || false), 0);
    }

    /// A root whose recorded network's bridge is not there (taken down while a refill waited
    /// for its lock, or by the last VM's keeper before the refill's first entry was begun).
    fn root_without_its_bridge(scratch: &feather_testkit::ScratchDir) -> PathBuf {
        let root = scratch.0.join("root");
        fs::create_dir_all(&root).unwrap();
        let bridge = format!("ftgone{}", std::process::id() % 1_000_000);
        let settings = format!("bridge = \"{bridge}\"\nsubnet = \"10.254.254.0/24\"\n");
        fs::write(root.join("network.toml"), settings).unwrap();
        assert!(index_of(&bridge).is_none(), "{bridge} exists on this host");
        root
    }

    /// A refill whose root's bridge went makes nothing and leaves no pool. Before, it made the
    /// pool's folder (its lock, `ready/`), failed to make an entry, and left it for good: the
    /// network's removal had looked before.
    #[test]
    fn a_refill_in_a_root_whose_bridge_went_leaves_no_pool() {
        let scratch = feather_testkit::ScratchDir::new("pool-no-bridge");
        let root = root_without_its_bridge(&scratch);
        refill(&root);
        assert_no_pool(&root);
    }

    /// Asserts that the root has no pool's folder, naming what it holds if it has.
    fn assert_no_pool(root: &Path) {
        let left = fs::read_dir(dir_of(root))
            .map(|e| e.flatten().map(|e| e.file_name()).collect::<Vec<_>>());
        assert!(left.is_err(), "the pool is left: {left:?}");
    }

    /// The removal of the root's network holds the refill lock even where the pool has no
    /// folder yet: a refill that begins meanwhile waits for it (and then finds the network
    /// gone). Before, the removal took no lock there, and a refill made the folder and its
    /// lock right after the look, read the settings before they went, and went on.
    #[test]
    fn no_refill_begins_while_the_network_is_removed() {
        let scratch = feather_testkit::ScratchDir::new("pool-removal");
        let root = root_without_its_bridge(&scratch);
        let refill_could_begin =
            with_refill_lock_within(&root, Instant::now() + Duration::from_secs(10), || {
                // What a finisher's refill does first, from another process: its lock.
                std::thread::scope(|other| {
                    other
                        .spawn(|| try_refill_lock(&root).is_some())
                        .join()
                        .unwrap()
                })
            });
        assert_eq!(refill_could_begin, Some(false), "a refill began meanwhile");
        assert!(
            !dir_of(&root).exists(),
            "the folder made for the lock stays"
        );
    }

    /// A keeper drops its claimed entry after its network's removal took the bridge down,
    /// while a refill (which found the bridge gone, and kept the folder for that entry) still
    /// holds the refill lock: once the refill lets go, the folder goes. Before, the keeper only
    /// tried the lock, and the folder outlived the network.
    #[test]
    fn a_claimed_entry_dropped_beside_a_refill_leaves_no_pool() {
        let scratch = feather_testkit::ScratchDir::new("pool-dropped-beside-refill");
        let root = root_without_its_bridge(&scratch);
        let network = RootNetwork::load(&root).unwrap().unwrap();
        fs::create_dir_all(dir_of(&root).join(CLAIMED).join("vm-1")).unwrap();
        let refilling = try_refill_lock(&root).expect("the refill lock");
        let pool_left = drop_claimed(&network, "vm-1");
        assert!(pool_left, "the folder was removed beside the refill");
        std::thread::scope(|other| {
            // The keeper, its network lock let go, waits for the refill to end.
            let keeper = other.spawn(|| remove_once_refilled(&network));
            drop(refilling);
            keeper.join().unwrap();
        });
        assert_no_pool(&root);
    }

    /// Where the pool's folder cannot be made (here a file holds its name), the network's
    /// removal goes on without the refill lock, which no refill can take either. Before, it
    /// stopped there, and `network down` said a VM used the network, at every try.
    #[test]
    fn a_removal_goes_on_where_the_pool_s_folder_cannot_be_made() {
        let scratch = feather_testkit::ScratchDir::new("pool-no-folder");
        let root = scratch.0.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::write(dir_of(&root), "").unwrap();
        let removed =
            with_refill_lock_within(&root, Instant::now() + Duration::from_secs(10), || true);
        assert_eq!(removed, Some(true), "the removal stopped");
    }

    /// The folder a removal made for the refill lock, left by a removal killed after the root
    /// forgot its network, goes at the next removal; a folder that holds more stays.
    #[test]
    fn a_folder_left_with_only_the_refill_lock_goes() {
        let scratch = feather_testkit::ScratchDir::new("pool-folder-left");
        let root = scratch.0.join("root");
        fs::create_dir_all(dir_of(&root)).unwrap();
        fs::write(dir_of(&root).join(REFILL_LOCK), "").unwrap();
        remove_folder_left(&root, Duration::from_secs(10));
        assert!(
            !dir_of(&root).exists(),
            "the folder made for the lock stays"
        );
        fs::create_dir_all(dir_of(&root).join(CLAIMED).join("vm-1")).unwrap();
        remove_folder_left(&root, Duration::from_secs(10));
        assert!(dir_of(&root).join(CLAIMED).join("vm-1").exists());
    }

    /// A finisher or teardown behind a stopped holder of the refill lock (SIGSTOP, Ctrl-Z: a
    /// refill stopped) gives up at once rather than wait its patience for nothing. Before, its
    /// thread blocked in `flock` the whole patience (here 600 s).
    #[test]
    fn a_wait_for_the_refill_lock_gives_up_on_a_stopped_holder() {
        let scratch = feather_testkit::ScratchDir::new("pool-lock-stopped");
        let root = scratch.0.join("root");
        fs::create_dir_all(dir_of(&root)).unwrap();
        let path = dir_of(&root).join(REFILL_LOCK);
        let holder = feather_testkit::flock_holder::FlockHolder::of(&path).stopped();
        let (told, ended) = std::sync::mpsc::channel();
        let waiting = root.clone();
        let waiter = std::thread::spawn(move || {
            let taken = refill_lock_within(&waiting, Duration::from_secs(600));
            let _ = told.send(taken.is_some());
        });
        let taken = ended.recv_timeout(Duration::from_secs(60));
        // Killed: a wait still under way takes the lock now, and its thread ends.
        drop(holder);
        waiter.join().unwrap();
        let taken = taken.expect("the wait behind a stopped holder ended within 60 s");
        assert!(!taken, "no refill lock taken from a stopped holder");
    }

    /// A waiter that took the refill lock on the file of a folder its holder removed (the
    /// network went; it opened the file before, beside its holder) takes it again on the file
    /// the folder, made anew, holds: a lock on the removed file is one no later refill or
    /// removal sees.
    #[test]
    fn the_refill_lock_is_taken_on_the_file_the_folder_holds() {
        let scratch = feather_testkit::ScratchDir::new("pool-lock-named");
        let root = scratch.0.join("root");
        let path = dir_of(&root).join(REFILL_LOCK);
        fs::create_dir_all(&root).unwrap();
        let holder = try_refill_lock(&root).expect("the refill lock");
        let lock = std::thread::scope(|other| {
            let waiter = other.spawn(|| refill_lock_within(&root, Duration::from_secs(30)));
            let opened = || feather_testkit::opens_of(&path) == 2;
            let waiting = feather_testkit::eventually(Duration::from_secs(30), opened);
            assert!(waiting, "the waiter opened the refill lock within 30 s");
            fs::remove_dir_all(dir_of(&root)).unwrap();
            drop(holder);
            waiter.join().unwrap()
        });
        let lock = lock.expect("the refill lock, once its holder let go");
        assert!(
            crate::settings::is_linked(&path, &lock),
            "the lock was taken on the removed file"
        );
    }

    #[test]
    fn a_link_file_reads_back() {
        let scratch = feather_testkit::ScratchDir::new("pool-link");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LINK), "fthp01020304 10.78.3.7\n").unwrap();
        assert_eq!(
            Link::read(&dir),
            Some(Link {
                host_end: "fthp01020304".into(),
                address: "10.78.3.7".parse().unwrap(),
            })
        );
        fs::write(dir.join(LINK), "garbage").unwrap();
        assert_eq!(Link::read(&dir), None);
    }
}

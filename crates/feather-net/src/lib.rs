//! feather's VM networking. A VM with `--net private` gets a veth pair joining its network
//! namespace to its state root's bridge, an address leased from the root's subnet (chosen at
//! create, kept across stop and start), a default route through the bridge, nftables policy,
//! and published host ports. `--net none` keeps loopback only; `--net host` shares the host's
//! network and is not confined.
//!
//! Who does what when a VM starts:
//! ```text
//! keeper: prepare()  lease known, /etc files written, host ports bound (taken → error)
//!         clone3 → init in a new netns; cgroup; ──GO──▶ init assembles its root
//!         attach()   meanwhile: bridge (+ nftables tables) if missing, veth pair with its
//!                    peer created directly in init's netns, the VM's chains and map
//!                    entries (one nf_tables netlink batch)  ──NETWORK_READY──▶ init
//! init:   configure()  address, link up, default route on eth0 (still holding CAP_NET_ADMIN)
//! keeper: complete()  forwarder threads for published ports
//!         announce()  with the root's uplink (FEATHER_UPLINK): gratuitous ARPs for the VM's
//!                     address there, once it runs (see uplink.rs; attach adds the proxy ARP
//!                     entry, detach removes it)
//! stop:   detach()   veth; the VM's entries, or bridge and tables with the root's last VM
//!         wait()     before the keeper reports the VM stopped
//! run --rm: in the process the teardown is handed to: pool::refill() makes namespaces ahead
//!         for the next VM (a fresh namespace, its veth pair, address, route and firewall
//!         entries; a throw-away VM takes one at create, allocate → pool::claim, and its init
//!         joins it, Attachment::namespace), remove_leftovers_keeping_bridge(), then
//!         linger::begin(), then hold(): the root's bridge, tables and pool wait for the next
//!         VM (FEATHER_NETWORK_LINGER, 300 s), or until `feather network down`
//! ```

pub mod as_made;
mod attached;
mod choice;
pub mod error;
pub mod etc;
pub mod firewall;
mod folder;
pub mod inside;
pub mod leases;
pub mod linger;
pub mod netlink;
pub mod nftables;
pub mod pool;
pub mod publish;
pub mod removed_roots;
pub mod settings;
pub mod subnet;
pub mod uplink;

use std::cell::{Cell, RefCell};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use feather_core::network::{NetMode, NetworkConfig};
use feather_core::StateRoot;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use serde::Serialize;

use error::netlink as netlink_error;
pub use error::{NetError, Result};
pub use inside::{vm_mac, Inside, Interface, VM_INTERFACE};
use netlink::{index_of, Netlink, PeerNamespace};
use pool::Pooled;
use publish::Published;
pub use settings::RootNetwork;

/// The host end of a VM's veth pair: `fth` and 8 hex digits of the VM's id (interface names
/// have at most 15 characters).
pub fn host_end(vm_id: &str) -> String {
    let digits: String = vm_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("fth{digits}")
}

/// At `feather create`: checks the options, checks the published host ports are free now, and
/// leases the VM's address (private mode), unsynced. `kept`: a VM that is not thrown away,
/// whose lease must survive a power cut: its caller syncs [`lease_files`] with the VM's own
/// files, before the VM exists. A throw-away VM may take a namespace made ahead instead.
/// `vm_id`: a new id, which holds no lease yet.
pub fn allocate(
    root_dir: &Path,
    vm_id: &str,
    config: &mut NetworkConfig,
    kept: bool,
) -> Result<()> {
    config.validate()?;
    publish::check_free(&config.publish)?;
    if config.mode == NetMode::Private {
        if RootNetwork::load(root_dir)?.is_none() {
            // Before the root chooses its subnet: a removed root's may be free again.
            removed_roots::remove_networks();
        }
        let (network, _lock) = RootNetwork::load_or_choose_locked(root_dir)?;
        // A throw-away VM that needs nothing more of the host side takes a namespace made
        // ahead (pool.rs), with its address and firewall entries.
        let pooled = if !kept && !config.egress && network.uplink.is_none() {
            pool::claim(&network, vm_id)
        } else {
            None
        };
        config.address = match pooled {
            Some(address) => Some(address),
            // The VM's id is new: it holds no lease to look for.
            None => Some(leases::lease_new(&network, vm_id)?),
        };
    }
    Ok(())
}

/// The files that hold a VM's lease, which a kept VM syncs before it exists (see [`allocate`]);
/// none without a private network.
pub fn lease_files(root_dir: &Path, config: &NetworkConfig) -> Vec<PathBuf> {
    match (config.mode, config.address) {
        (NetMode::Private, Some(address)) => leases::files(root_dir, address).to_vec(),
        _ => Vec::new(),
    }
}

/// The subnet a VM's address belongs to, as recorded where the VM was checkpointed; None
/// without a private network.
pub fn subnet_of(root_dir: &Path, config: &NetworkConfig) -> Result<Option<subnet::Subnet>> {
    if config.mode != NetMode::Private {
        return Ok(None);
    }
    Ok(RootNetwork::load(root_dir)?.map(|network| network.subnet))
}

/// Whether a VM with a private network, checkpointed where its address belonged to `subnet`,
/// can come back in this state root with the same address: the root's subnet must be the same
/// (the restored VM keeps its address, prefix and route through the subnet's gateway) and the
/// address free. `Err` says why not, in the user's words; with `lease_for`, the address is
/// also leased to that VM id.
pub fn keep_address(
    root_dir: &Path,
    vm: &str,
    config: &NetworkConfig,
    subnet: Option<subnet::Subnet>,
    lease_for: Option<&str>,
) -> Result<()> {
    let (NetMode::Private, Some(address)) = (config.mode, config.address) else {
        return Ok(());
    };
    let (network, _lock) = RootNetwork::load_or_choose_locked(root_dir)?;
    let settings = root_dir.join("network.toml");
    let refused = |why: String| {
        network.forget_if_unused();
        Err(NetError::Invalid(format!(
            "VM {vm} keeps its address {address} when restored, {why}"
        )))
    };
    match subnet {
        Some(subnet) if subnet != network.subnet => {
            return refused(format!(
                "but it comes from subnet {subnet} and this state root's VMs use {} ({});                  give both state roots the same subnet (FEATHER_SUBNET before the first private                  VM of a root, or its network.toml while it has none)",
                network.subnet,
                settings.display()
            ))
        }
        None if !network.subnet.contains(address) => {
            return refused(format!(
                "but it lies outside this state root's subnet {} ({})",
                network.subnet,
                settings.display()
            ))
        }
        _ => {}
    }
    // What the VM's records say of its subnet is the sender's word: its address must be one a
    // VM here could have, never the bridge's (the host's own on it), the network's or the
    // broadcast address.
    if !network.subnet.is_vm_host(address) {
        return refused(format!(
            "but it is no address of a VM in the subnet {} (the network's, its gateway's, its \
             broadcast address, or outside it): the VM's config or records were made by hand \
             or altered",
            network.subnet
        ));
    }
    match lease_for {
        Some(id) => {
            if !leases::lease_exact(&network, id, address)? {
                return refused("but another VM of this state root holds it".into());
            }
        }
        None => {
            if leases::is_held(&network, address) {
                return refused("but another VM of this state root holds it".into());
            }
        }
    }
    Ok(())
}

/// At `feather rm`: returns the VM's address to the root's pool.
pub fn release(root_dir: &Path, vm_id: &str, config: &NetworkConfig) -> Result<()> {
    if config.mode != NetMode::Private {
        return Ok(());
    }
    if let Some(network) = RootNetwork::load(root_dir)? {
        let lock = network.lock()?;
        let pool_left = pool::drop_claimed(&network, vm_id);
        let released = release_lease(&network, vm_id, config);
        if released.is_ok() {
            network.forget_if_unused();
        }
        drop(lock);
        if pool_left {
            pool::remove_once_refilled(&network);
        }
        released?;
    }
    Ok(())
}

/// Returns the lease of VM `vm_id`: by the address its config names (one file), or, without
/// one, by looking at every lease.
fn release_lease(network: &RootNetwork, vm_id: &str, config: &NetworkConfig) -> Result<()> {
    match config.address {
        Some(address) => leases::release_at(network, vm_id, address),
        None => leases::release(network, vm_id),
    }
}

/// The host end of a VM's veth pair, brought down to hold every packet between the VM and its
/// bridge, and up to let them through (see [`Attachment::hold_traffic`]).
#[derive(Clone, Debug)]
pub struct TrafficSwitch {
    host_end: String,
}

impl TrafficSwitch {
    /// Holds (`true`) or lets through (`false`) the VM's traffic. Bringing a link down waits
    /// for the kernel's RCU grace period (`synchronize_net`): milliseconds, more on a loaded
    /// machine.
    pub fn hold(&self, held: bool) -> Result<()> {
        let index = index_of(&self.host_end).ok_or_else(|| {
            NetError::Invalid(format!("the VM's host end {} is gone", self.host_end))
        })?;
        let mut netlink = Netlink::open().map_err(netlink_error("open netlink", "on the host"))?;
        netlink
            .set_state(index, !held)
            .map_err(netlink_error("set the state of", self.host_end.clone()))
    }
}

/// A VM's veth pair as CRIU recreates it on restore: its end `inside` the VM, and its host end
/// joined to `bridge`.
#[derive(Clone, Debug)]
pub struct VethPair {
    pub inside: String,
    pub host_end: String,
    pub bridge: String,
}

/// The host side of one running VM's network, owned by its keeper.
pub struct Attachment {
    /// The VM's state root, whose other VMs' markers a removal of the root's network counts.
    root: StateRoot,
    config: NetworkConfig,
    network: Option<RootNetwork>,
    host_end: String,
    published: Option<Published>,
    /// `<run dir>/network-attached`: present from attach until the VM's network is removed.
    marker: PathBuf,
    /// The thread removing the VM's firewall entries (or, with the root's last VM, the bridge
    /// and tables), from `detach` until the attachment is dropped.
    removing: RefCell<Option<Removal>>,
    /// Whether `release` returned the VM's lease (a throw-away VM).
    released: Cell<bool>,
    /// A kept VM's claim on the removal of the root's network, taken by
    /// [`Attachment::detach_keeping_bridge`] when the VM was its last user.
    claim: RefCell<Option<linger::Claim>>,
    /// Set by `detach`: announcements of the VM's address on the uplink stop.
    gone: Arc<AtomicBool>,
    /// The namespace made ahead that the VM claimed at create, if it did (pool.rs): init joins
    /// it, and its pair, address and firewall entries are made already.
    pooled: Option<Pooled>,
}

/// At start, before the VM's init exists: writes the VM's /etc files into `etc_dir` (see
/// [`etc::write`]) and binds its published ports. `run_dir`: the VM's run folder (in `root`'s),
/// for the marker of an attached network. Returns the host side and the plan for init.
pub fn prepare(
    root: &StateRoot,
    run_dir: &Path,
    etc_dir: &Path,
    name: &str,
    vm_id: &str,
    config: &NetworkConfig,
) -> Result<(Attachment, Inside)> {
    let network = match config.mode {
        NetMode::Private => Some(RootNetwork::load_or_choose(root.dir())?),
        NetMode::None | NetMode::Host => None,
    };
    let private = match (&network, config.address) {
        (Some(network), Some(address)) if network.subnet.contains(address) => {
            Some((address, network.gateway()))
        }
        (Some(network), Some(address)) => {
            return Err(NetError::Invalid(format!(
                "VM {name} has address {address}, outside its state root's subnet {} (set in {}; \
                 put the subnet back, or recreate the VM)",
                network.subnet,
                network.root().join("network.toml").display()
            )))
        }
        (Some(_), None) => {
            return Err(NetError::Invalid(format!(
                "VM {name} has --net private but no address in its config (recreate it)"
            )))
        }
        _ => None,
    };
    let files = etc::write(
        etc_dir,
        &etc::Identity {
            name,
            mode: config.mode,
            private,
            egress: config.egress,
        },
    )?;
    let published = match private {
        Some((address, _)) => Some(publish::bind(&config.publish, address)?),
        None => None,
    };
    let pooled = match network {
        Some(_) => pool::take(root.dir(), vm_id)?,
        None => None,
    };
    let interface = match (&network, private) {
        // Configured when the pool made it.
        _ if pooled.is_some() => None,
        (Some(network), Some((address, _))) => Some(Interface::of_vm(network, address)),
        _ => None,
    };
    let inside = Inside {
        own_namespace: config.mode != NetMode::Host,
        interface,
        files,
    };
    let attachment = Attachment {
        root: root.clone(),
        config: config.clone(),
        network,
        host_end: pooled
            .as_ref()
            .map_or_else(|| host_end(vm_id), |p| p.host_end.clone()),
        published,
        marker: run_dir.join(attached::FILE),
        removing: RefCell::new(None),
        released: Cell::new(false),
        claim: RefCell::new(None),
        gone: Arc::new(AtomicBool::new(false)),
        pooled,
    };
    Ok((attachment, inside))
}

impl Attachment {
    /// Joins the namespace of the VM's init (process `init_pid`) to the root's bridge, making
    /// the bridge and its tables first if this is the root's first running VM.
    pub fn attach(&self, init_pid: u32) -> Result<()> {
        if let Some(pooled) = &self.pooled {
            self.mark()?;
            pooled.let_go();
            return Ok(());
        }
        self.join(Some(PeerNamespace::Process(init_pid)), true)
            .map(|_| ())
    }

    /// The network namespace made ahead for this VM, which its init joins instead of making
    /// one (see pool.rs); None when the VM gets a namespace of its own.
    pub fn namespace(&self) -> Option<&fs::File> {
        self.pooled.as_ref().map(|pooled| &pooled.namespace)
    }

    /// Written before anything of the VM's is made on the host: whatever happens next, a later
    /// clean-up knows there may be something of this VM to remove, and which host end; and
    /// while this keeper lives, a removal of the root's network counts the VM as its user,
    /// before its veth is there (see attached.rs).
    fn mark(&self) -> Result<()> {
        fs::write(&self.marker, &self.host_end).map_err(|source| NetError::Io {
            path: self.marker.clone(),
            source,
        })
    }

    /// Before a restore: everything [`Attachment::attach`] does but the veth pair, which CRIU
    /// makes itself as it recreates the VM's network namespace, with its host end on the bridge
    /// (`--external veth[…]`). Returns that pair for CRIU, or None without a private network.
    /// The root's network lock is let go before CRIU runs; the bridge and tables stay until the
    /// VM's port is on the bridge because the marker written here counts as a user in every
    /// removal's look (attached.rs).
    pub fn attach_for_restore(&self) -> Result<Option<VethPair>> {
        let pair = self.join(None, true)?;
        if let (Some(network), Some(address)) = (&self.network, self.config.address) {
            if network.uplink.is_some() {
                firewall::note_arrival(network, address)?;
            }
        }
        Ok(pair)
    }

    /// Before the restore of a VM whose network namespace was not dumped (its content was
    /// what feather made, see [`as_made`]): a new namespace with loopback up, for CRIU to
    /// restore the VM's processes into; with a private network, [`Attachment::wire_restored`]
    /// gives it the rest.
    pub fn new_namespace_for_restore(&self) -> Result<std::os::fd::OwnedFd> {
        feather_sys::net::new_loopback_namespace()
            .map_err(|e| NetError::Invalid(format!("make a network namespace: {e}")))
    }

    /// With a private network, in the namespace made by [`Attachment::new_namespace_for_restore`]:
    /// everything [`Attachment::attach`] does — the veth pair with its VM end in that
    /// namespace, given its address, link-layer address and default route, and the VM's
    /// firewall entries. The host end stays down, so no packet reaches the namespace before the
    /// restored sockets are there and the VM may run: [`Attachment::hold_traffic`] opens it.
    pub fn wire_restored(&self, namespace: &std::os::fd::OwnedFd) -> Result<()> {
        use std::os::fd::AsRawFd;
        let (Some(network), Some(address)) = (&self.network, self.config.address) else {
            return Ok(());
        };
        // Made down: held from the start, without bringing it down (see `TrafficSwitch`).
        self.join(Some(PeerNamespace::Fd(namespace.as_raw_fd())), false)?;
        let inside = Inside {
            own_namespace: true,
            interface: Some(Interface::of_vm(network, address)),
            files: Vec::new(),
        };
        let namespace = fs::File::from(namespace.try_clone().map_err(|source| NetError::Io {
            path: PathBuf::from("(restored network namespace)"),
            source,
        })?);
        pool::in_namespace(&namespace, move || inside.configure())?;
        if network.uplink.is_some() {
            firewall::note_arrival(network, address)?;
        }
        Ok(())
    }

    /// Whether the network namespace of the VM's init (process `init_pid`) holds what feather
    /// made in it and nothing else: what differs, in words (see [`as_made`]); empty for a VM
    /// without a private network, whose namespace holds loopback only or is the host's.
    pub fn changed_since_made(&self, init_pid: u32) -> Result<Vec<String>> {
        use error::IoAt;
        let (Some(network), Some(address)) = (&self.network, self.config.address) else {
            return Ok(Vec::new());
        };
        let interface = Interface::of_vm(network, address);
        let path = format!("/proc/{init_pid}/ns/net");
        let namespace = fs::File::open(&path).at(&path)?;
        pool::in_namespace(&namespace, move || {
            as_made::differences(&interface)
                .map_err(netlink_error("compare the network namespace", "of the VM"))
        })
    }

    /// Holds (`true`) or lets through (`false`) every packet between the VM and its bridge:
    /// the host end of its veth pair down or up. What CRIU's network lock does inside a
    /// namespace it dumps, for one it does not: while the VM's TCP sockets are dumped or
    /// restored (in repair mode) no segment reaches them, so none is acknowledged behind the
    /// dump's back and none is answered with a reset. The VM sees its link lose its carrier.
    pub fn hold_traffic(&self, held: bool) -> Result<()> {
        match self.traffic_switch() {
            Some(switch) => switch.hold(held),
            None => Ok(()),
        }
    }

    /// What [`Attachment::hold_traffic`] switches, to be switched from another thread (the
    /// attachment itself stays with its keeper's): None without a private network.
    pub fn traffic_switch(&self) -> Option<TrafficSwitch> {
        self.network.as_ref().map(|_| TrafficSwitch {
            host_end: self.host_end.clone(),
        })
    }

    /// `host_end_up`: whether the pair it makes (with `peer`) has its host end up.
    fn join(&self, peer: Option<PeerNamespace>, host_end_up: bool) -> Result<Option<VethPair>> {
        let (Some(network), Some(address)) = (&self.network, self.config.address) else {
            return Ok(None);
        };
        let _lock = network.lock()?;
        self.mark()?;
        let mut netlink = Netlink::open().map_err(netlink_error("open netlink", "on the host"))?;
        let bridge = match index_of(&network.bridge) {
            Some(index) => index,
            None => {
                netlink
                    .create_bridge(&network.bridge)
                    .map_err(netlink_error("create bridge", network.bridge.clone()))?;
                let index = index_of(&network.bridge).ok_or_else(|| {
                    NetError::Invalid(format!("bridge {} vanished", network.bridge))
                })?;
                netlink
                    .add_address(index, network.gateway(), network.subnet.prefix())
                    .map_err(netlink_error("add address", network.bridge.clone()))?;
                firewall::create_tables(network)?;
                index
            }
        };
        if let Some(stale) = index_of(&self.host_end) {
            let _ = netlink.delete_link(stale);
        }
        if let Some(peer) = peer {
            netlink
                .create_veth_with(&self.host_end, bridge, VM_INTERFACE, peer, host_end_up)
                .map_err(netlink_error("create veth pair", self.host_end.clone()))?;
        }
        if let Err(e) = firewall::add_vm(network, &self.host_end, address, self.config.egress) {
            // The tables may have been removed by hand: make them again, once.
            firewall::create_tables(network)?;
            firewall::add_vm(network, &self.host_end, address, self.config.egress)
                .map_err(|_| e)?;
        }
        if self.config.egress {
            enable_forwarding()?;
        }
        uplink::join(&mut netlink, network, address)?;
        Ok(Some(VethPair {
            inside: VM_INTERFACE.to_owned(),
            host_end: self.host_end.clone(),
            bridge: network.bridge.clone(),
        }))
    }

    /// After a restore, before the restored processes continue: the VM's interface has the
    /// link-layer address it had at the dump, which a VM checkpointed by a feather before the
    /// bridge pinned it chose at random; it gets [`vm_mac`] of its address, the only one the
    /// bridge takes from its port. (CRIU's own veth pair of a VM dumped since has it already.)
    pub fn own_mac_after_restore(&self, init_pid: u32) -> Result<()> {
        use error::IoAt;
        let (Some(_), Some(address)) = (&self.network, self.config.address) else {
            return Ok(());
        };
        let path = format!("/proc/{init_pid}/ns/net");
        let namespace = fs::File::open(&path).at(&path)?;
        pool::in_namespace(&namespace, move || {
            let mut netlink =
                Netlink::open().map_err(netlink_error("open netlink", "in the VM"))?;
            let index = index_of(VM_INTERFACE).ok_or_else(|| {
                NetError::Invalid(format!("the restored VM has no interface {VM_INTERFACE}"))
            })?;
            netlink
                .set_mac(index, vm_mac(address))
                .map_err(netlink_error("set the link-layer address of", VM_INTERFACE))
        })
    }

    /// Once the VM is up: starts forwarding the published ports (threads of the calling
    /// process).
    pub fn complete(&mut self) -> Result<()> {
        if let Some(published) = self.published.take() {
            published.serve();
        }
        Ok(())
    }

    /// Once the VM runs (started, restored, or let go by the host it migrated from): tells the
    /// LAN behind the root's uplink, if it has one, that the VM's address is here now.
    pub fn announce(&self) {
        if let (Some(network), Some(address)) = (&self.network, self.config.address) {
            uplink::announce(network, address, Arc::clone(&self.gone));
        }
    }

    /// Returns the lease of a throw-away VM whose state goes with its run, and the folder of
    /// the namespace made ahead it took, if it did ([`pool::drop_claimed`]): torn down by its
    /// keeper (an ephemeral VM whose teardown is not handed off, a VM of the root's pool
    /// drained, a hand-over that failed), no `rm` comes after to remove it, and once the
    /// root's network was forgotten no clean-up of the pool came either: its `network-pool`
    /// folder outlived the network. Such a VM waits here for the removal `detach` started
    /// (its lock), which `wait` waits for anyway. (Whether the root can forget its network is
    /// decided in [`Attachment::wait`], after the tear-down.)
    pub fn release(&self, vm_id: &str) {
        if let Some(network) = &self.network {
            if pool::is_claimed_by(network.root(), vm_id) {
                // After the removal `detach` started, which holds the lock: it deletes the
                // bridge if this VM was its last user, and the pool's folder then goes here.
                let pool_left = network
                    .lock()
                    .is_ok_and(|_lock| pool::drop_claimed(network, vm_id));
                if pool_left {
                    pool::remove_once_refilled(network);
                }
            }
            if release_lease(network, vm_id, &self.config).is_ok() {
                self.released.set(true);
            }
        }
    }

    /// Removes what `attach` made for this VM, and the bridge with the root's last VM.
    /// The firewall part goes on, on a thread, while the keeper finishes its own tear-down;
    /// dropping the attachment waits for it.
    pub fn detach(&self) {
        self.detach_with(false);
    }

    /// Like [`Attachment::detach`], but the root's bridge, tables and pool stay even after
    /// its last VM: for a kept VM's keeper, which answers its stop once the VM's own veth and
    /// firewall entries are gone, and then takes the root's network down if no VM uses it
    /// ([`Attachment::remove_claimed_root_network`]): the bridge's deletion waits for RCU
    /// grace periods (40–90 ms on this machine), which its answer need not. Called before the
    /// keeper records the VM's stop: if this VM was the network's last user, the removal is
    /// claimed here ([`linger::claim_if_unused`]), so that a keeper killed from here on leaves
    /// it to the root's next command rather than to no one.
    pub fn detach_keeping_bridge(&self) {
        if self.network.is_some() {
            *self.claim.borrow_mut() = linger::claim_if_unused(&self.root, &self.host_end);
        }
        self.detach_with(true);
    }

    fn detach_with(&self, keep_bridge: bool) {
        self.gone.store(true, Ordering::Relaxed);
        if let (Some(network), Some(address)) = (&self.network, self.config.address) {
            let removal = clean_up(
                &self.root,
                network,
                &self.host_end,
                &self.marker,
                address,
                self.config.egress,
                keep_bridge,
            );
            if removal.is_none() {
                let _ = fs::remove_file(&self.marker);
            }
            *self.removing.borrow_mut() = removal;
        }
    }

    /// After [`Attachment::detach_keeping_bridge`] and the keeper's answer: the removal it
    /// claimed, if it did (whether it did). The bridge, tables and pool go unless a VM took
    /// them up meanwhile; no other lock is waited for without an end
    /// ([`linger::Claim::remove`]).
    pub fn remove_claimed_root_network(&self) -> bool {
        let claim = self.claim.borrow_mut().take();
        claim.map(linger::Claim::remove).is_some()
    }

    /// After the keeper's answer, when it claimed no removal: its VM was not the network's last
    /// user when it looked, before its veth went, but another VM stopping meanwhile may have
    /// looked before this one's veth went too; whichever veth goes last, its keeper finds no
    /// other port now and takes the network down (`linger::remove_if_last`). It may wait
    /// seconds for the removal lock, so the keeper calls it once the VM's layer is flushed.
    pub fn remove_root_network_if_last(&self) {
        if self.network.is_some() {
            self.await_own_removal();
            self.await_own_port_gone();
            linger::remove_if_last(&self.root);
        }
    }

    /// Waits for the whole of what `detach` started, the VM's marker removed last: until then
    /// the look counts this VM, whose keeper lives, as a user of the network, and two keepers
    /// stopping together could each find itself there and both leave the bridge and tables
    /// (review f27 N1: the marker goes once the firewall's change is committed, 10–25 ms
    /// after the answer, and the look came sooner when the layer's flush was quick).
    fn await_own_removal(&self) {
        if let Some(removing) = self.removing.borrow_mut().take() {
            removing.join();
        }
    }

    /// Waits (2 s at most) until this VM's host end is no longer a link: the look that follows
    /// must not come while the kernel still has it (the VM's namespace going on the kernel's
    /// cleanup worker deletes the pair too), or two VMs stopping together may each see the
    /// other's port and both leave the network. The kernel unlists the name first and takes the
    /// port off the bridge (`brif`) only after an RCU grace period; the look passes over a port
    /// whose name is gone ([`pool::vm_port_on_bridge`]), so the name is what is waited for.
    fn await_own_port_gone(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while index_of(&self.host_end).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Attachment {
    /// Waits until what `detach` started has removed the VM's network: its veth, its firewall
    /// entries (or the bridge and tables). Not for the kernel's freeing of the entries, which
    /// [`Attachment::wait`] (and dropping the attachment) waits for too.
    pub fn wait_removed(&self) {
        if let Some(removing) = self.removing.borrow().as_ref() {
            removing.removed();
        }
    }

    /// Waits until what `detach` started is done: once the keeper says the VM stopped, nothing
    /// of its network may be left.
    pub fn wait(&self) {
        if let Some(removing) = self.removing.borrow_mut().take() {
            removing.join();
        }
        if let (true, Some(network)) = (self.released.replace(false), &self.network) {
            if let Ok(_lock) = network.lock() {
                network.forget_if_unused();
            }
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.wait();
    }
}

/// What a keeper that died without cleaning up left of a VM's network: its veth, its chains,
/// and the bridge if no other VM of the root uses it. Looks only when the VM's run folder says
/// it was attached, so a clean start pays nothing for it.
pub fn remove_leftovers(root: &StateRoot, run_dir: &Path, vm_id: &str, config: &NetworkConfig) {
    remove_attached(root, run_dir, vm_id, config, false);
}

/// Like [`remove_leftovers`], for a throw-away VM whose teardown was handed over: the root's
/// bridge and tables stay even if the VM was their last user, for the linger ([`linger`]) to
/// remove unless a VM started meanwhile uses them.
pub fn remove_leftovers_keeping_bridge(
    root: &StateRoot,
    run_dir: &Path,
    vm_id: &str,
    config: &NetworkConfig,
) {
    remove_attached(root, run_dir, vm_id, config, true);
}

fn remove_attached(
    root: &StateRoot,
    run_dir: &Path,
    vm_id: &str,
    config: &NetworkConfig,
    keep_bridge: bool,
) {
    let marker = run_dir.join(attached::FILE);
    let Ok(recorded) = fs::read_to_string(&marker) else {
        return;
    };
    if let (NetMode::Private, Some(address)) = (config.mode, config.address) {
        if let Ok(Some(network)) = RootNetwork::load(root.dir()) {
            // A marker of an older build is empty: the host end was always the VM's own.
            let host_end = match recorded.trim() {
                "" => host_end(vm_id),
                recorded => recorded.to_owned(),
            };
            if let Some(removing) = clean_up(
                root,
                &network,
                &host_end,
                &marker,
                address,
                config.egress,
                keep_bridge,
            ) {
                removing.join();
            }
        }
    }
    let _ = fs::remove_file(marker);
}

/// The thread [`clean_up`] starts, and its word that what it removes is gone: once the links
/// are deleted and the firewall change committed, before the close of its nftables socket,
/// which waits for the kernel to free the deleted entries (see [`nftables::apply_then`]).
struct Removal {
    thread: JoinHandle<()>,
    /// One word from the link deletions, one from the firewall; closed early if the thread
    /// ends without them.
    removed: std::sync::mpsc::Receiver<()>,
}

impl Removal {
    fn removed(&self) {
        for _ in 0..2 {
            if self.removed.recv().is_err() {
                return;
            }
        }
    }

    fn join(self) {
        let _ = self.thread.join();
    }
}

/// On a thread of its own, holding the root's network lock: deletes the VM's veth, then either
/// its firewall entries or, if no other VM uses the root's network (and not `keep_bridge`), the
/// bridge and both tables. The thread blocks every signal (they belong to the keeper's main
/// thread).
fn clean_up(
    root: &StateRoot,
    network: &RootNetwork,
    host_end: &str,
    marker: &Path,
    address: Ipv4Addr,
    egress: bool,
    keep_bridge: bool,
) -> Option<Removal> {
    // With `keep_bridge` the root's lock guards nothing here (the veth and chains are this VM's
    // alone, and the bridge stays): a VM starting meanwhile need not wait for the kernel.
    let lock = if keep_bridge {
        None
    } else {
        Some(network.lock().ok()?)
    };
    let mut netlink = Netlink::open().ok()?;
    let network = network.clone();
    let root = root.clone();
    let host_end = host_end.to_owned();
    let marker = marker.to_owned();
    let (told, removed) = std::sync::mpsc::channel();
    let work = move || {
        let _lock = lock;
        // First, so that the LAN stops being sent here what the VM no longer answers.
        uplink::leave(&mut netlink, &network, address);
        // Spare pooled pairs are no VM's: they go with the bridge, unless a refill is under
        // way (whose process lingers, and removes the bridge and the pool after it).
        let in_use = keep_bridge
            || linger::in_use(&root, &network, Some(&host_end))
            || !pool::try_drain(&network);
        // The veth is usually still there: the kernel tears the VM's namespace down in the
        // background. Deleting it and committing the nftables change each wait for RCU grace
        // periods, so the two run side by side.
        let firewall_told = told.clone();
        let (network, host_end) = (&network, &host_end);
        std::thread::scope(|both| {
            both.spawn(move || {
                let said = || {
                    let _ = firewall_told.send(());
                };
                if in_use {
                    firewall::remove_vm_then(network, host_end, address, egress, said);
                } else {
                    firewall::delete_tables(network);
                    said();
                }
            });
            if let Some(index) = index_of(host_end) {
                let _ = netlink.delete_link(index);
            }
            if !in_use {
                if let Some(bridge) = index_of(&network.bridge) {
                    let _ = netlink.delete_link(bridge);
                }
            }
            let _ = told.send(());
        });
        // Last, under the root's lock if taken: a removal that looks next finds this VM gone
        // with its veth (before, the caller removed it beside this thread, and a removal that
        // looked in between kept the bridge for a VM that was ending).
        let _ = fs::remove_file(&marker);
    };
    let mut old = SigSet::empty();
    let _ = pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    );
    let thread = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(work);
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    Some(Removal {
        thread: thread.ok()?,
        removed,
    })
}

/// `--egress` needs the host to route between the bridge and its other interfaces.
fn enable_forwarding() -> Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    fs::write(path, "1").map_err(|source| NetError::Io {
        path: path.into(),
        source,
    })
}

/// How `inspect` shows a VM's network.
#[derive(Debug, Serialize)]
pub struct NetworkView {
    pub mode: NetMode,
    /// False for `--net host`: the VM shares the host's network and nothing confines it.
    pub confined: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nftables_table: Option<String>,
    /// The host's interface on whose LAN the VM's address is answered for (FEATHER_UPLINK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    pub publish: Vec<String>,
    pub egress: bool,
}

/// `run_dir`: the VM's run folder, whose marker names the host end of a running VM's pair
/// (a pooled one's is not named after the VM).
pub fn view(root_dir: &Path, run_dir: &Path, vm_id: &str, config: &NetworkConfig) -> NetworkView {
    let network = match config.mode {
        NetMode::Private => RootNetwork::load(root_dir).ok().flatten(),
        _ => None,
    };
    NetworkView {
        mode: config.mode,
        confined: config.mode != NetMode::Host,
        address: config.address,
        prefix: network.as_ref().map(|n| n.subnet.prefix()),
        gateway: network.as_ref().map(RootNetwork::gateway),
        bridge: network.as_ref().map(|n| n.bridge.clone()),
        host_interface: network.as_ref().map(|_| {
            fs::read_to_string(run_dir.join(attached::FILE))
                .ok()
                .map(|recorded| recorded.trim().to_owned())
                .filter(|recorded| !recorded.is_empty())
                .unwrap_or_else(|| host_end(vm_id))
        }),
        nftables_table: network.as_ref().map(RootNetwork::table),
        uplink: network.as_ref().and_then(|n| n.uplink.clone()),
        publish: config.publish.iter().map(ToString::to_string).collect(),
        egress: config.egress,
    }
}

/// The NETWORK column of `feather ls`.
pub fn summary(config: &NetworkConfig) -> String {
    match (config.mode, config.address) {
        (NetMode::Private, Some(address)) => format!("private {address}"),
        (NetMode::Host, _) => "host (not confined)".into(),
        (mode, _) => mode.to_string(),
    }
}

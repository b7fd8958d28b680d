//! IPC channels: for each `ipc` rule that may allow something to a VM, an endpoint inside the
//! VM (a unix socket at the rule's `at=` path, or a TCP port on the VM's loopback), owned by
//! the VM's keeper. Every connection to an endpoint is a request decided by the gate; an
//! allowed one is connected to the target (a VM's socket or port, or the host's) — starting the
//! target VM and its service first when the rule says `start=UNIT` — and its bytes are spliced
//! across.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;

use crate::dbus::{self, Proxy, ProxyError, SYSTEM_BUS};
use crate::endpoint::{self, Holder, UnixEndpoint};
use crate::gate::Gate;
use crate::identity;
use crate::peers::{Peers, PeersError};
use crate::policy::{Kind, Party, Policy, Request, Rule, RuleRef};
use crate::side::VmSide;
use crate::splice;

/// The mode of unix sockets the broker binds in a VM: anyone in the VM may connect, as with
/// the sockets of the services they stand in for (postgres' is 0777, the bus' 0666); the policy
/// decides who crosses, by VM.
const SOCKET_MODE: u32 = 0o666;

/// How long a connection waits for a service started on demand to take connections, after
/// its start (which already waits for the service's readiness) returned.
const ANSWER_AFTER_START: Duration = Duration::from_secs(10);

/// How many connections one VM's channels carry at once (each takes two threads of its
/// keeper); more are closed as they come, so that a VM cannot exhaust the host's threads.
pub const MAX_CONNECTIONS: usize = 256;

/// Why a connection could not be carried to its target (recorded in the audit log).
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("the host does not answer: {0}")]
    HostSilent(ConnectError),
    /// The keeper could not tell whether the target runs.
    #[error("{0}")]
    Peer(PeersError),
    #[error("VM {0} is not running")]
    NotRunning(String),
    #[error("VM {vm} does not answer: {error}")]
    Silent { vm: String, error: ConnectError },
    /// Unreachable, and the rule does not start the target.
    #[error("{0} (start it, or add start=UNIT to the rule to start it on demand)")]
    NoStart(Box<ReachError>),
    #[error("starting VM {vm} on demand: {why}")]
    StartVm { vm: String, why: PeersError },
    #[error("starting {unit} in VM {vm} on demand: {why}")]
    StartService {
        vm: String,
        unit: String,
        why: PeersError,
    },
    #[error("{error}, though {unit} was started and is ready")]
    StartedButSilent {
        unit: String,
        error: Box<ReachError>,
    },
    #[error("the channel closed meanwhile")]
    Closed,
}

/// Why the target's end of a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{count} users of this VM already use the channel (at most {max})")]
    TooManyUsers { count: usize, max: usize },
    /// The keeper could not give the proxy's jail.
    #[error("{0}")]
    Peer(PeersError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Endpoint(#[from] endpoint::EndpointError),
    #[error("no proxy")]
    NoProxy,
}

/// Why a channel's endpoint could not be opened in the source VM.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Endpoint(#[from] endpoint::EndpointError),
    #[error(
        "the VM shares the host's network, where a port would be the host's too \
         (give the VM a network of its own, or use a unix socket channel)"
    )]
    SharesHostNetwork,
}

/// Where a channel appears in the source VM.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    Unix(PathBuf),
    Tcp(u16),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Unix(path) => write!(f, "unix:{}", path.display()),
            Place::Tcp(port) => write!(f, "tcp:{port}"),
        }
    }
}

/// Where a channel leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Host,
    Vm(String),
}

/// What a channel reaches in its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    Unix(PathBuf),
    Tcp(u16),
    /// The target's system bus, filtered to these names.
    Dbus(Vec<String>),
}

/// One channel as the policy describes it. Channels are compared by this: a policy change that
/// leaves a channel's spec as it was leaves the channel and its connections alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub place: Place,
    pub target: Target,
    pub remote: Remote,
}

/// A channel the policy offers, and the first rule that offers it (named when opening fails).
#[derive(Clone, Debug)]
pub struct Offer {
    pub spec: Spec,
    pub rule: Rule,
}

/// A rule whose place in the source is already another rule's channel.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{place} in {source_vm} is already the channel of {first}")]
pub struct Taken {
    pub place: Place,
    pub source_vm: String,
    pub first: RuleRef,
}

/// The channels `policy` offers `source`, one per place in the source: the first rule for a
/// place wins; D-Bus rules for one place and one target add up to one filtered bus. Rules that
/// cannot have their place come back in the second list, with why.
pub fn offers(policy: &Policy, source: &Party) -> (Vec<Offer>, Vec<(Rule, Taken)>) {
    let mut offers: Vec<Offer> = Vec::new();
    let mut skipped = Vec::new();
    for rule in policy.offered_to(Kind::Ipc, source) {
        let target = match rule.target.single() {
            Some(Party::Host) => Target::Host,
            Some(Party::Vm { name, .. }) => Target::Vm(name),
            None => continue,
        };
        let Some((scheme, what)) = rule.object.as_str().split_once(':') else {
            continue;
        };
        let at = rule.option("at");
        let (place, remote) = match scheme {
            "unix" => (
                Place::Unix(PathBuf::from(at.unwrap_or(what))),
                Remote::Unix(PathBuf::from(what)),
            ),
            "tcp" => {
                let Ok(port) = what.parse::<u16>() else {
                    continue;
                };
                let at = at.and_then(|at| at.parse().ok()).unwrap_or(port);
                (Place::Tcp(at), Remote::Tcp(port))
            }
            "dbus" => (
                Place::Unix(PathBuf::from(at.unwrap_or(SYSTEM_BUS))),
                Remote::Dbus(vec![what.to_owned()]),
            ),
            _ => continue,
        };
        match offers.iter_mut().find(|offer| offer.spec.place == place) {
            None => offers.push(Offer {
                spec: Spec {
                    place,
                    target,
                    remote,
                },
                rule: rule.clone(),
            }),
            Some(first) => match (&mut first.spec.remote, remote) {
                (Remote::Dbus(names), Remote::Dbus(more)) if first.spec.target == target => {
                    for name in more {
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                _ => skipped.push((
                    rule.clone(),
                    Taken {
                        place,
                        source_vm: source.to_string(),
                        first: first.rule.at.clone(),
                    },
                )),
            },
        }
    }
    (offers, skipped)
}

/// Whether what `spec` reaches in its target VM is itself a channel the policy opens there
/// (`tcp:9000 @anyvm db allow` gives db a channel at its own port 9000, leading to itself):
/// such a connection would be passed on from channel to channel without end. Channels lead to
/// services, never to other channels.
pub fn leads_to_a_channel(policy: &Policy, peers: &dyn Peers, source: &str, spec: &Spec) -> bool {
    let Target::Vm(vm) = &spec.target else {
        return false;
    };
    if vm == source && spec.place == remote_place(spec) {
        return true;
    }
    let (target_offers, _) = offers(policy, &Party::vm(vm.clone(), &peers.tags(vm)));
    target_offers
        .iter()
        .any(|offer| offer.spec.place == remote_place(spec) && !is_a_loop(offer, vm))
}

/// Where a channel's remote would be if it were a place.
fn remote_place(spec: &Spec) -> Place {
    match &spec.remote {
        Remote::Unix(path) => Place::Unix(path.clone()),
        Remote::Tcp(port) => Place::Tcp(*port),
        Remote::Dbus(_) => Place::Unix(PathBuf::from(SYSTEM_BUS)),
    }
}

/// A channel of VM `vm` to itself, at the very place it leads to: never opened, so what is
/// at that place in `vm` is `vm`'s own.
fn is_a_loop(offer: &Offer, vm: &str) -> bool {
    offer.spec.target == Target::Vm(vm.to_owned()) && offer.spec.place == remote_place(&offer.spec)
}

/// What the broker's threads share.
pub struct Shared {
    pub side: Arc<VmSide>,
    pub gate: Arc<Gate>,
    pub peers: Arc<dyn Peers>,
    pub live: Mutex<Live>,
    /// Wakes the broker's thread: a connection into a VM it does not watch yet, or the end.
    pub wake: EventFd,
    pub stopping: AtomicBool,
    /// Connections accepted and not yet ended (see [`MAX_CONNECTIONS`]).
    pub carrying: AtomicUsize,
    /// One start at a time per target VM: concurrent first connections start it once.
    starting: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Shared {
    pub fn new(side: Arc<VmSide>, gate: Arc<Gate>, peers: Arc<dyn Peers>) -> io::Result<Shared> {
        Ok(Shared {
            side,
            gate,
            peers,
            live: Mutex::new(Live::default()),
            wake: EventFd::from_flags(
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                    | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )?,
            stopping: AtomicBool::new(false),
            carrying: AtomicUsize::new(0),
            starting: Mutex::new(HashMap::new()),
        })
    }

    pub fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_lock(&self, vm: &str) -> Arc<Mutex<()>> {
        self.starting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(vm.to_owned())
            .or_default()
            .clone()
    }
}

/// The connections being carried, so that they can be cut when their channel closes or their
/// target VM stops.
#[derive(Default)]
pub struct Live {
    next: u64,
    connections: HashMap<u64, Connection>,
    /// Channels that closed: connections of theirs that finish connecting are cut at once.
    closed: Vec<u64>,
}

struct Connection {
    channel: u64,
    target_pid: Option<i32>,
    sockets: Vec<Arc<OwnedFd>>,
}

impl Live {
    /// The target pids of connections being carried (for the broker to watch).
    pub fn target_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .connections
            .values()
            .filter_map(|c| c.target_pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Cuts the connections that match.
    pub fn cut(&mut self, which: impl Fn(u64, Option<i32>) -> bool) {
        for connection in self.connections.values() {
            if which(connection.channel, connection.target_pid) {
                connection.sockets.iter().for_each(|s| splice::cut(s));
            }
        }
    }

    pub fn close_channel(&mut self, channel: u64) {
        self.closed.push(channel);
        self.cut(|c, _| c == channel);
    }
}

/// A connection's place in [`Live`]; leaving it takes the connection out.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared.live().connections.remove(&self.id);
    }
}

fn register<'a>(
    shared: &'a Shared,
    channel: u64,
    target_pid: Option<i32>,
    sockets: Vec<Arc<OwnedFd>>,
) -> Result<Registered<'a>, ReachError> {
    let mut live = shared.live();
    if live.closed.contains(&channel) || shared.stopping.load(Ordering::SeqCst) {
        return Err(ReachError::Closed);
    }
    live.next += 1;
    let id = live.next;
    live.connections.insert(
        id,
        Connection {
            channel,
            target_pid,
            sockets,
        },
    );
    drop(live);
    if target_pid.is_some() {
        let _ = shared.wake.write(1);
    }
    Ok(Registered { shared, id })
}

/// An open channel: its endpoint in the source VM, and what its connections share.
pub struct Channel {
    pub info: Arc<ChannelInfo>,
    listener: Listener,
}

enum Listener {
    Unix(UnixEndpoint),
    Tcp(TcpListener),
}

pub struct ChannelInfo {
    pub id: u64,
    pub spec: Spec,
    /// The rule that opened it; connections are decided by the policy in force when they come.
    pub rule: Rule,
    /// A D-Bus channel's filtering proxies, one per client uid (the proxy runs as its
    /// client), each made by that uid's first connection.
    proxy: Mutex<HashMap<u32, Proxy>>,
}

impl Channel {
    /// Opens the endpoint of `offer` in the source VM.
    pub fn open(side: &VmSide, id: u64, offer: Offer) -> Result<Channel, OpenError> {
        let holder = Holder::Vm(side.init_pid);
        let listener = match &offer.spec.place {
            Place::Unix(at) => Listener::Unix(endpoint::bind_unix(side.init_pid, at, SOCKET_MODE)?),
            Place::Tcp(port) => {
                if endpoint::shares_host_network(side.init_pid)? {
                    return Err(OpenError::SharesHostNetwork);
                }
                Listener::Tcp(endpoint::listen_tcp(holder, *port)?)
            }
        };
        Ok(Channel {
            info: Arc::new(ChannelInfo {
                id,
                spec: offer.spec,
                rule: offer.rule,
                proxy: Mutex::new(HashMap::new()),
            }),
            listener,
        })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.listener {
            Listener::Unix(endpoint) => endpoint.listener.as_fd(),
            Listener::Tcp(listener) => listener.as_fd(),
        }
    }

    /// The connections waiting to be accepted.
    pub fn accept_all(&self) -> Vec<OwnedFd> {
        let mut accepted = Vec::new();
        loop {
            let next = match &self.listener {
                Listener::Unix(endpoint) => {
                    endpoint.listener.accept().map(|(s, _)| OwnedFd::from(s))
                }
                Listener::Tcp(listener) => listener.accept().and_then(|(s, _)| {
                    s.set_nodelay(true)?;
                    Ok(OwnedFd::from(s))
                }),
            };
            match next {
                Ok(socket) => accepted.push(socket),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: none left; others (a connection reset before its accept) too.
                Err(_) => break,
            }
        }
        accepted
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // The proxy goes with its channel; the endpoint's socket file with its UnixEndpoint.
        drop(std::mem::take(
            &mut *self.info.proxy.lock().unwrap_or_else(|e| e.into_inner()),
        ));
    }
}

/// The policy's party for a channel's target.
fn target_party(peers: &dyn Peers, target: &Target) -> Party {
    match target {
        Target::Host => Party::Host,
        Target::Vm(name) => Party::vm(name.clone(), &peers.tags(name)),
    }
}

/// Carries one accepted connection: decide, reach the target (starting it if the rule says
/// so), splice. Runs on a thread of its own; every way out closes the client's connection.
pub fn serve(shared: Arc<Shared>, channel: Arc<ChannelInfo>, client: OwnedFd) {
    struct Carried<'a>(&'a AtomicUsize);
    impl Drop for Carried<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _carried = Carried(&shared.carrying);
    let source = shared.side.party();
    let target = target_party(shared.peers.as_ref(), &channel.spec.target);
    let object = |remote: &str| Request {
        kind: Kind::Ipc,
        object: remote.to_owned(),
        source: source.clone(),
        target: target.clone(),
    };
    match &channel.spec.remote {
        Remote::Unix(path) => {
            let request = object(&format!("unix:{}", path.display()));
            let Ok(rule) = shared.gate.check(&request) else {
                return;
            };
            // The target sees the client's own uid and groups, never the keeper's root.
            let who = match identity::of_peer(&client, shared.side.init_pid) {
                Ok(who) => who,
                Err(e) => {
                    let why = format!("cannot tell who connected (SO_PEERCRED: {e})");
                    shared.gate.record_failure(&request, &rule, &why);
                    return;
                }
            };
            let reached = reach(
                &shared,
                &channel.spec.target,
                rule.option("start"),
                |holder| Ok(endpoint::connect_unix(holder, path, &who).map(OwnedFd::from)?),
            );
            carry(&shared, &channel, &request, &rule, client, reached);
        }
        Remote::Tcp(port) => {
            let request = object(&format!("tcp:{port}"));
            let Ok(rule) = shared.gate.check(&request) else {
                return;
            };
            let reached = reach(
                &shared,
                &channel.spec.target,
                rule.option("start"),
                |holder| Ok(endpoint::connect_tcp(holder, *port).map(OwnedFd::from)?),
            );
            carry(&shared, &channel, &request, &rule, client, reached);
        }
        Remote::Dbus(names) => {
            // Each name is decided on its own; the proxy lets the client talk to those allowed.
            let mut allowed = Vec::new();
            let mut deciding = None;
            for name in names {
                let request = object(&format!("dbus:{name}"));
                if let Ok(rule) = shared.gate.check(&request) {
                    allowed.push(name.clone());
                    deciding.get_or_insert((request, rule));
                }
            }
            let Some((request, rule)) = deciding else {
                return;
            };
            // The proxy runs as the client: the bus sees the client's uid, as its own
            // authentication says (libdbus sends it).
            let who = match identity::of_peer(&client, shared.side.init_pid) {
                Ok(who) => who,
                Err(e) => {
                    let why = format!("cannot tell who connected (SO_PEERCRED: {e})");
                    shared.gate.record_failure(&request, &rule, &why);
                    return;
                }
            };
            let reached = reach(
                &shared,
                &channel.spec.target,
                rule.option("start"),
                |holder| {
                    let mut proxies = channel.proxy.lock().unwrap_or_else(|e| e.into_inner());
                    let uid = who.uid.as_raw();
                    let current = proxies
                        .get_mut(&uid)
                        .is_some_and(|p| p.serves(holder, &allowed) && p.is_alive());
                    if !current {
                        // A proxy for another target instance or other names: replaced.
                        proxies.remove(&uid);
                        // Each is a process of the host: a VM's root, free to take any uid,
                        // gets no more than a few.
                        if proxies.len() >= dbus::MAX_PROXIES {
                            return Err(ConnectError::TooManyUsers {
                                count: proxies.len(),
                                max: dbus::MAX_PROXIES,
                            });
                        }
                        let jail = shared
                            .peers
                            .helper(dbus::JAIL_SUBCOMMAND)
                            .map_err(ConnectError::Peer)?;
                        let spawned = dbus::Proxy::spawn(
                            jail,
                            &shared.side.run_dir,
                            channel.id,
                            holder,
                            &allowed,
                            &who,
                        )?;
                        proxies.insert(uid, spawned);
                    }
                    let proxy = proxies.get(&uid).ok_or(ConnectError::NoProxy)?;
                    Ok(proxy.connect().map(OwnedFd::from)?)
                },
            );
            carry(&shared, &channel, &request, &rule, client, reached);
        }
    }
}

/// Splices `client` to what was reached, or records why nothing was.
fn carry(
    shared: &Shared,
    channel: &ChannelInfo,
    request: &Request,
    rule: &Rule,
    client: OwnedFd,
    reached: Result<(OwnedFd, Holder), ReachError>,
) {
    let (server, holder) = match reached {
        Ok(reached) => reached,
        Err(why) => {
            shared.gate.record_failure(request, rule, &why.to_string());
            return;
        }
    };
    let (client, server) = (Arc::new(client), Arc::new(server));
    let target_pid = match holder {
        Holder::Vm(pid) => Some(pid),
        Holder::Host => None,
    };
    let Ok(_registered) = register(
        shared,
        channel.id,
        target_pid,
        vec![client.clone(), server.clone()],
    ) else {
        return;
    };
    let _ = splice::forward(client, server);
}

/// Reaches the target with `connect`: right away if it is running and answers; otherwise, with
/// `start` (a unit), by starting the target VM and the unit first, once for all connections
/// that wait for it.
fn reach<T>(
    shared: &Shared,
    target: &Target,
    start: Option<&str>,
    connect: impl Fn(Holder) -> Result<T, ConnectError>,
) -> Result<(T, Holder), ReachError> {
    let vm = match target {
        Target::Host => {
            return connect(Holder::Host)
                .map(|t| (t, Holder::Host))
                .map_err(ReachError::HostSilent)
        }
        Target::Vm(vm) => vm,
    };
    let attempt = || -> Result<(T, Holder), ReachError> {
        let pid = shared
            .peers
            .init_pid(vm)
            .map_err(ReachError::Peer)?
            .ok_or_else(|| ReachError::NotRunning(vm.clone()))?;
        connect(Holder::Vm(pid))
            .map(|t| (t, Holder::Vm(pid)))
            .map_err(|error| ReachError::Silent {
                vm: vm.clone(),
                error,
            })
    };
    let first = attempt();
    let Some(unit) = start else {
        return first.map_err(|why| ReachError::NoStart(Box::new(why)));
    };
    if first.is_ok() {
        return first;
    }
    let lock = shared.start_lock(vm);
    let _one_start = lock.lock().unwrap_or_else(|e| e.into_inner());
    // Whoever held the lock before may have started it.
    if let Ok(reached) = attempt() {
        return Ok(reached);
    }
    shared.peers.start(vm).map_err(|why| ReachError::StartVm {
        vm: vm.clone(),
        why,
    })?;
    shared
        .peers
        .start_service(vm, unit)
        .map_err(|why| ReachError::StartService {
            vm: vm.clone(),
            unit: unit.to_owned(),
            why,
        })?;
    // The unit is ready; a socket made just after readiness is waited for a little.
    let deadline = Instant::now() + ANSWER_AFTER_START;
    loop {
        match attempt() {
            Ok(reached) => return Ok(reached),
            Err(error) if Instant::now() >= deadline => {
                return Err(ReachError::StartedButSilent {
                    unit: unit.to_owned(),
                    error: Box::new(error),
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The place where an endpoint would be opened, for messages.
pub fn describe(side: &VmSide, place: &Place) -> String {
    match place {
        Place::Unix(path) => format!("{} in VM {}", path.display(), side.name),
        Place::Tcp(port) => format!("port {port} in VM {}", side.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        let scratch = feather_testkit::ScratchDir::new("channels");
        std::fs::write(scratch.0.join("10.policy"), text).unwrap();
        Policy::load_dirs(std::slice::from_ref(&scratch.0)).unwrap()
    }

    struct NoTags;

    /// What a host without VMs answers.
    fn not_here(what: &str) -> crate::peers::PeersError {
        crate::peers::PeersError::host(std::io::Error::other(format!("no {what} here")))
    }

    impl Peers for NoTags {
        fn init_pid(&self, _: &str) -> Result<Option<i32>, crate::peers::PeersError> {
            Ok(None)
        }
        fn start(&self, vm: &str) -> Result<i32, crate::peers::PeersError> {
            Err(not_here(vm))
        }
        fn start_service(&self, vm: &str, _: &str) -> Result<(), crate::peers::PeersError> {
            Err(not_here(vm))
        }
        fn tags(&self, _: &str) -> Vec<String> {
            Vec::new()
        }
        fn handing_over(
            &self,
            source: &str,
            _: &str,
            _: &[u64],
        ) -> Result<(), crate::peers::PeersError> {
            Err(not_here(source))
        }
        fn run(
            &self,
            vm: &str,
            _: &[String],
            _: u32,
            _: [std::os::fd::OwnedFd; 3],
        ) -> Result<std::sync::Arc<dyn crate::peers::Running>, crate::peers::PeersError> {
            Err(not_here(vm))
        }
        fn helper(
            &self,
            subcommand: &str,
        ) -> Result<std::process::Command, crate::peers::PeersError> {
            Err(not_here(subcommand))
        }
    }

    #[test]
    fn channels_that_lead_to_channels_are_found() {
        let policy = policy(
            "ipc tcp:9000 @anyvm sink allow
             ipc tcp:7000 a b allow
             ipc tcp:7000 b a allow
             ipc tcp:7001 a b allow at=7002
",
        );
        let leads = |vm: &str| -> Vec<bool> {
            offers(&policy, &Party::vm(vm, &[]))
                .0
                .iter()
                .map(|offer| leads_to_a_channel(&policy, &NoTags, vm, &offer.spec))
                .collect()
        };
        // sink's own channel to itself loops (the broker skips it); a's reaches sink's service,
        // since sink's port 9000 is then its own. a and b at 7000 lead to each other.
        assert_eq!(leads("sink"), [true]);
        assert_eq!(leads("a"), [false, true, false]);
        assert_eq!(leads("b"), [false, true]);
    }

    #[test]
    fn one_channel_per_place_and_dbus_names_add_up() {
        let policy = policy(
            "ipc unix:/run/postgresql/.s.PGSQL.5432 web db allow start=postgresql@15-main\n\
             ipc tcp:5432 @anyvm db allow at=15432\n\
             ipc tcp:6379 web cache deny\n\
             ipc tcp:9999 web other allow at=15432\n\
             ipc dbus:org.a web bus allow at=/run/bus\n\
             ipc dbus:org.b web bus ask at=/run/bus\n\
             ipc tcp:80 mail db allow\n",
        );
        let web = Party::vm("web", &[]);
        let (offers, skipped) = offers(&policy, &web);
        let specs: Vec<&Spec> = offers.iter().map(|o| &o.spec).collect();
        assert_eq!(
            specs,
            [
                &Spec {
                    place: Place::Unix("/run/postgresql/.s.PGSQL.5432".into()),
                    target: Target::Vm("db".into()),
                    remote: Remote::Unix("/run/postgresql/.s.PGSQL.5432".into()),
                },
                &Spec {
                    place: Place::Tcp(15432),
                    target: Target::Vm("db".into()),
                    remote: Remote::Tcp(5432),
                },
                &Spec {
                    place: Place::Unix("/run/bus".into()),
                    target: Target::Vm("bus".into()),
                    remote: Remote::Dbus(vec!["org.a".into(), "org.b".into()]),
                },
            ]
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0.at.line, 4);
        assert_eq!(skipped[0].1.place, Place::Tcp(15432));
        assert!(
            skipped[0].1.to_string().contains("already the channel of"),
            "{}",
            skipped[0].1
        );
    }
}

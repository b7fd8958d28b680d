//! The broker's one thread: it watches the policy folders (and reopens the channels when the
//! rules change), accepts on every channel's endpoint (each connection is then carried by a
//! thread of its own), and watches the VMs at the far end of live connections, cutting them
//! when such a VM stops. When the VM it serves stops, or the broker is dropped, it closes
//! everything.
//!
//! A VM the policy offers nothing costs this one thread, asleep in `poll` without a timeout
//! until a policy folder changes (waking once a second where the kernel will not tell of
//! changes, see [`crate::policy_watch`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use nix::unistd::Pid;

use crate::channels::{self, Channel, Offer, Shared};
use crate::gate::Gate;
use crate::peers::Peers;
use crate::policy::{self, Kind, Party, Request};
use crate::policy_watch::PolicyWatch;
use crate::side::VmSide;

/// Why a broker cannot watch (and so opens no channels).
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Vm(#[from] feather_sys::SysError),
}

/// The IPC side of a broker: its thread and what the thread shares with connections.
pub struct Channels {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Channels {
    /// Opens the channels the policy offers the VM now (before the VM is reported started,
    /// so its first connection finds them), then watches from a thread of its own.
    pub fn start(side: &Arc<VmSide>, gate: &Arc<Gate>, peers: &Arc<dyn Peers>) -> Option<Channels> {
        let cannot_watch = |e: WatchError| {
            eprintln!(
                "feather shuttle {}: cannot watch the policy or the VM, no channels open: {e}",
                side.name
            );
        };
        let shared = match Shared::new(side.clone(), gate.clone(), peers.clone()) {
            Ok(shared) => Arc::new(shared),
            Err(e) => {
                cannot_watch(e.into());
                return None;
            }
        };
        // The watcher is made in its thread, which alone is told of the policy's changes
        // (`feather_sys::dnotify::Signals` stays on the thread that made it); this one waits
        // until it has opened the channels, so the VM's first connection finds them.
        let (opened, has_opened) = std::sync::mpsc::sync_channel::<Result<(), WatchError>>(1);
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("shuttle".into())
            .spawn(move || {
                // The keeper takes its signals through a signalfd, which works only while no
                // thread lets them in; the connection threads inherit this mask.
                let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None);
                let mut watcher = match Watcher::new(theirs) {
                    Ok(watcher) => watcher,
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                watcher.sync();
                let _ = opened.send(Ok(()));
                watcher.run()
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                eprintln!(
                    "feather shuttle {}: cannot start its thread: {e}",
                    side.name
                );
                return None;
            }
        };
        match has_opened.recv() {
            Ok(Ok(())) => Some(Channels {
                shared,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                cannot_watch(e);
                None
            }
            // The thread panicked before it said: only where a panic unwinds (tests, debug
            // builds); a release build aborts the keeper on a panic (`panic = "abort"`).
            Err(_) => {
                let _ = thread.join();
                cannot_watch(io::Error::other("its thread panicked").into());
                None
            }
        }
    }
}

impl Drop for Channels {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.shared.wake.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What one polled descriptor stands for.
#[derive(Clone, Copy)]
enum Role {
    Wake,
    Policy,
    Source,
    /// By id: a policy change handled earlier in the same wake-up may have reordered them.
    Channel(u64),
    Target(i32),
}

struct Watcher {
    shared: Arc<Shared>,
    channels: Vec<Channel>,
    next_channel: u64,
    policy: PolicyWatch,
    /// The served VM's init: its end is the end of every channel.
    source: OwnedFd,
    /// Inits of VMs that live connections lead into.
    targets: HashMap<i32, OwnedFd>,
    /// Channels that could not open, already reported (each is tried again on every change).
    reported: HashSet<String>,
    /// Connections are being refused for being too many (reported once).
    busy: bool,
}

impl Watcher {
    fn new(shared: Arc<Shared>) -> Result<Watcher, WatchError> {
        let source = feather_sys::process::pidfd_open(Pid::from_raw(shared.side.init_pid))?;
        // The gate's state root: where its audit log is.
        let root = shared
            .gate
            .audit()
            .path()
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        let policy = PolicyWatch::new(policy::policy_dirs(&root));
        // What changed between the gate's first read and this watch, which saw none of it.
        if let Err(why) = shared.gate.reload() {
            eprintln!("feather shuttle {}: {why}", shared.side.name);
        }
        Ok(Watcher {
            shared,
            channels: Vec::new(),
            next_channel: 0,
            policy,
            source,
            targets: HashMap::new(),
            reported: HashSet::new(),
            busy: false,
        })
    }

    /// Opens the channels the policy in force offers and closes those it no longer does.
    fn sync(&mut self) {
        let side = self.shared.side.clone();
        let policy = self.shared.gate.policy();
        let (offers, skipped) = channels::offers(&policy, &side.party());
        let shared = self.shared.clone();
        self.channels.retain(|channel| {
            let offered = offers.iter().any(|o| o.spec == channel.info.spec);
            if !offered {
                shared.live().close_channel(channel.info.id);
            }
            offered
        });
        for offer in offers {
            if self.channels.iter().any(|c| c.info.spec == offer.spec) {
                continue;
            }
            if channels::leads_to_a_channel(
                &policy,
                self.shared.peers.as_ref(),
                &side.name,
                &offer.spec,
            ) {
                let why = format!(
                    "not opened: {} would lead to a channel in the target, not to a service \
                     (channels do not chain; give the rule another at= or narrow its source)",
                    channels::describe(&side, &offer.spec.place)
                );
                self.report(&offer, &why);
                continue;
            }
            self.next_channel += 1;
            match Channel::open(&side, self.next_channel, offer.clone()) {
                Ok(channel) => self.channels.push(channel),
                Err(e) => self.report(
                    &offer,
                    &format!(
                        "cannot open {}: {e}",
                        channels::describe(&side, &offer.spec.place)
                    ),
                ),
            }
        }
        for (rule, why) in skipped {
            let key = format!("{}: {why}", rule.at);
            if self.reported.insert(key.clone()) {
                eprintln!("feather shuttle {}: rule {key}", side.name);
            }
        }
    }

    /// Records once that `offer` could not be opened: in the audit log and the keeper's log.
    fn report(&mut self, offer: &Offer, why: &str) {
        if !self.reported.insert(format!("{:?} {why}", offer.spec)) {
            return;
        }
        eprintln!("feather shuttle {}: {why}", self.shared.side.name);
        let target = match &offer.spec.target {
            channels::Target::Host => Party::Host,
            channels::Target::Vm(name) => Party::vm(name.clone(), &self.shared.peers.tags(name)),
        };
        let request = Request {
            kind: Kind::Ipc,
            object: offer.rule.object.as_str().to_owned(),
            source: self.shared.side.party(),
            target,
        };
        self.shared.gate.record_failure(&request, &offer.rule, why);
    }

    fn run(mut self) {
        // Changes are signalled to this thread, which waits for them.
        self.policy.start();
        if let Some(why) = self.policy.looking() {
            eprintln!(
                "feather shuttle {}: the policy is looked at every second: the kernel will not \
                 tell of its changes ({why}; dnotify: a kernel built without CONFIG_DNOTIFY, or \
                 fs.dir-notify-enable=0)",
                self.shared.side.name
            );
        }
        loop {
            if self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            let ready = self.wait();
            let mut source_ended = false;
            for role in ready {
                match role {
                    Role::Wake => {
                        let _ = self.shared.wake.read();
                        self.watch_targets();
                    }
                    Role::Policy => {
                        if self.policy.changed() {
                            if let Err(why) = self.shared.gate.reload() {
                                eprintln!("feather shuttle {}: {why}", self.shared.side.name);
                            }
                            self.sync();
                        }
                    }
                    Role::Source => source_ended = true,
                    Role::Channel(id) => self.accept(id),
                    Role::Target(pid) => {
                        self.shared.live().cut(|_, target| target == Some(pid));
                        self.targets.remove(&pid);
                    }
                }
            }
            if source_ended {
                break;
            }
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        for channel in self.channels.drain(..) {
            self.shared.live().close_channel(channel.info.id);
        }
    }

    /// Sleeps until something happens; what did.
    fn wait(&self) -> Vec<Role> {
        let mut watched: Vec<(Role, BorrowedFd<'_>)> = vec![
            (Role::Wake, self.shared.wake.as_fd()),
            (Role::Source, self.source.as_fd()),
        ];
        watched.extend(self.policy.fd().map(|fd| (Role::Policy, fd)));
        for channel in &self.channels {
            watched.push((Role::Channel(channel.info.id), channel.as_fd()));
        }
        for (pid, pidfd) in &self.targets {
            watched.push((Role::Target(*pid), pidfd.as_fd()));
        }
        let mut fds: Vec<PollFd<'_>> = watched
            .iter()
            .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        let timeout = self.policy.timeout();
        let mut ready: Vec<Role> = match poll(&mut fds, timeout) {
            Ok(_) => fds
                .iter()
                .zip(&watched)
                .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, (role, _))| *role)
                .collect(),
            Err(_) => Vec::new(),
        };
        if timeout != PollTimeout::NONE && !ready.iter().any(|r| matches!(r, Role::Policy)) {
            // A look is set for a time (`PolicyWatch::changed` takes it if due).
            ready.push(Role::Policy);
        }
        ready
    }

    /// Hands each waiting connection of channel `id` to a thread of its own.
    fn accept(&mut self, id: u64) {
        let Some(channel) = self.channels.iter().find(|c| c.info.id == id) else {
            return;
        };
        let (info, waiting) = (channel.info.clone(), channel.accept_all());
        for client in waiting {
            if self.shared.carrying.load(Ordering::SeqCst) >= channels::MAX_CONNECTIONS {
                // Closed unanswered; said once in the keeper's log until the load falls.
                drop(client);
                if !self.busy {
                    self.busy = true;
                    eprintln!(
                        "feather shuttle {}: {} connections at once; closing more until some end",
                        self.shared.side.name,
                        channels::MAX_CONNECTIONS
                    );
                }
                continue;
            }
            self.busy = false;
            self.shared.carrying.fetch_add(1, Ordering::SeqCst);
            let (shared, info) = (self.shared.clone(), info.clone());
            let spawned = std::thread::Builder::new()
                .name("shuttle-connection".into())
                .spawn(move || channels::serve(shared, info, client));
            if let Err(e) = spawned {
                self.shared.carrying.fetch_sub(1, Ordering::SeqCst);
                eprintln!(
                    "feather shuttle {}: cannot carry a connection: {e}",
                    self.shared.side.name
                );
            }
        }
    }

    /// Watches the inits of the VMs live connections lead into, and only those.
    fn watch_targets(&mut self) {
        let pids = self.shared.live().target_pids();
        self.targets.retain(|pid, _| pids.contains(pid));
        for pid in pids {
            if self.targets.contains_key(&pid) {
                continue;
            }
            match feather_sys::process::pidfd_open(Pid::from_raw(pid)) {
                Ok(pidfd) => {
                    self.targets.insert(pid, pidfd);
                }
                // Already gone: its connections end now.
                Err(_) => self.shared.live().cut(|_, target| target == Some(pid)),
            }
        }
    }
}

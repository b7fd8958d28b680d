//! A VM's broker: runs in the VM's keeper, outside the VM, and is the only way anything of
//! other VMs or the host reaches into the VM (and back), each time through the [`Gate`].

use std::path::PathBuf;
use std::sync::Arc;

use crate::gate::Gate;
use crate::peers::Peers;
use crate::policy::{Kind, Party};
use crate::watch::Channels;

/// The VM a broker serves: the source of every request the broker handles.
#[derive(Clone, Debug)]
pub struct VmSide {
    pub name: String,
    pub tags: Vec<String>,
    /// Host pid of the VM's init: its namespaces are the VM's.
    pub init_pid: i32,
    /// The VM's run folder on the host (`<run>/<name>`).
    pub run_dir: PathBuf,
    /// A throw-away VM (`feather run --rm`): its life is one command's.
    pub throw_away: bool,
}

impl VmSide {
    pub fn party(&self) -> Party {
        Party::vm(self.name.clone(), &self.tags)
    }
}

/// What a broker opened; all of it closes when the broker is dropped (the VM ends).
pub struct Broker {
    /// IPC channels and dependencies (see [`crate::channels`]).
    _channels: Option<Channels>,
    /// `feather-open`'s endpoint in the VM, if the policy lets it invoke anything.
    _invocations: Option<crate::invoke::Invocations>,
}

impl Broker {
    /// Opens what the policy offers the VM. Never fails the VM: what cannot be opened is
    /// recorded in the audit log and the keeper's log.
    pub fn start(side: VmSide, gate: Gate, peers: Arc<dyn Peers>) -> Broker {
        let (side, gate) = (Arc::new(side), Arc::new(gate));
        // Watching the policy costs a throw-away VM its inotify instance, whose release at the
        // end waits for the kernel's SRCU grace period (up to ~15 ms on every `run --rm`).
        // Without an IPC rule for it, such a VM does without: its life is one command's.
        let (policy, party) = (gate.policy(), side.party());
        let offered = policy.offered_to(Kind::Ipc, &party).next().is_some();
        let channels = if side.throw_away && !offered {
            None
        } else {
            Channels::start(&side, &gate, &peers)
        };
        let invocations =
            crate::invoke::Invocations::open(side, gate, peers).unwrap_or_else(|why| {
                eprintln!("feather shuttle: {why}");
                None
            });
        Broker {
            _channels: channels,
            _invocations: invocations,
        }
    }
}

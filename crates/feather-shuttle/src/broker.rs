//! A VM's broker: runs in the VM's keeper, outside the VM, and is the only way anything of
//! other VMs or the host reaches into the VM (and back), each time through the [`Gate`].

use std::sync::Arc;

use crate::gate::Gate;
use crate::peers::Peers;
use crate::policy::Kind;
use crate::side::VmSide;
use crate::watch::Channels;

/// What a broker opened; all of it closes when the broker is dropped (the VM ends).
pub struct Broker {
    /// Shared with what the broker opened: [`Broker::set_terminal`] reaches all of it.
    gate: Arc<Gate>,
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
        // Watching the policy costs a throw-away VM a thread, a signalfd and the folders'
        // descriptors, and adds its watches to the list the kernel walks on every write in a
        // policy folder (each signalling every watching broker; docs/shuttle.md, "Many VMs on
        // one host"). Without an IPC rule for it, such a VM does without: its life is one
        // command's.
        let (policy, party) = (gate.policy(), side.party());
        let offered = policy.offered_to(Kind::Ipc, &party).next().is_some();
        let channels = if side.throw_away && !offered {
            None
        } else {
            Channels::start(&side, &gate, &peers)
        };
        let invocations = crate::invoke::Invocations::open(side, gate.clone(), peers)
            .unwrap_or_else(|why| {
                eprintln!("feather shuttle: {why}");
                None
            });
        Broker {
            gate,
            _channels: channels,
            _invocations: invocations,
        }
    }

    /// From now on the VM's `ask` rules ask at `terminal`: the terminal of the run that
    /// claimed a VM of the pool, which was started with none.
    pub fn set_terminal(&self, terminal: Option<std::path::PathBuf>) {
        self.gate.set_terminal(terminal);
    }
}

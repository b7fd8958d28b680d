//! Shuttle: the only ways anything crosses the barrier between VMs (or between a VM and the
//! host), each opened only where a policy rule allows it, and each decision written to an
//! audit log.
//!
//! - [`policy`]: the rule files, and the decision for one request (first match wins, default
//!   deny); [`error`]: why a policy does not load.
//! - [`broker`]: per VM, in its keeper: opens what the policy offers the VM ([`side`]).
//! - [`gate`]: the one door: decide, [`ask`] where the rule says so (on the terminal, and on
//!   the [`board`] a web view answers), record, then open.
//! - [`audit`]: one JSON line per decision.
//! - [`watch`]: the broker's thread: reopens the channels when the policy changes, which
//!   [`policy_watch`] finds out.
//! - [`channels`]: IPC channels (unix sockets, TCP ports, D-Bus names through [`dbus`]) and
//!   the dependencies they start; [`endpoint`] binds and connects inside VMs, [`splice`]
//!   carries the bytes.
//! - [`peers`]: what the broker needs of other VMs, provided by the keeper that hosts it.
//! - [`invoke`]: `feather-open` in a VM, and the broker's side of it: run an allowed
//!   application in another VM.
//! - [`transfer`]: hand a path of one VM to another (bind mount, argument rewritten).
//! - [`protocol`]: every message between the broker and the processes it talks to, one module
//!   per pair, versioned.
//!
//! Imports point one way: broker → watch → channels → dbus, watch → policy_watch; broker →
//! invoke → transfer; all → gate → policy → error; [`side`] (the VM served) above policy;
//! [`protocol`] at the bottom. Raw system calls are feather-sys's: this crate has no `unsafe`.

pub mod ask;
pub mod audit;
pub mod board;
pub mod broker;
pub mod channels;
pub mod dbus;
pub mod endpoint;
pub mod error;
pub mod gate;
mod identity;
pub mod invoke;
pub mod peers;
pub mod policy;
pub mod policy_watch;
pub mod protocol;
pub mod side;
pub mod splice;
pub mod transfer;
pub mod view;
pub mod watch;

pub use audit::{Audit, Outcome};
pub use broker::Broker;
pub use error::{PolicyError, RuleFault};
pub use gate::{Gate, Refusal};
pub use peers::Peers;
pub use policy::{Consulted, Decision, Kind, Party, Policy, Request, Rule, Verdict};
pub use side::VmSide;

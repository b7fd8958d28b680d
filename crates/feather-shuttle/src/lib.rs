//! Shuttle: the only ways anything crosses the barrier between VMs (or between a VM and the
//! host), each opened only where a policy rule allows it, and each decision written to an
//! audit log.
//!
//! - [`policy`]: the rule files, and the decision for one request (first match wins, default
//!   deny).
//! - [`audit`]: one JSON line per decision.

pub mod audit;
pub mod error;
pub mod policy;

pub use audit::{Audit, Outcome};
pub use error::PolicyError;
pub use policy::{Decision, Kind, Party, Policy, Request, Rule, Verdict};

//! The IPC probe: for every Linux IPC channel, a listener in one place and a client in another
//! — host→VM, VM→host, VM→VM and inside one VM — and the matrix of what the clients found.
//! `feather check ipc` runs it for a user's VMs; `tests/security/ipc_matrix.rs` asserts every
//! cell and writes `docs/ipc-matrix.md`.
//!
//! - [`agent`]: the listener and the client, run as `feather-probe __ipcprobe` on the host and
//!   in VMs (what they share is `agent::shared`)
//! - [`run`]: the probe itself, a library of the host (VMs made and entered with feather-vm)
//! - [`matrix`]: the cells, their expectations and the report

pub mod agent;
pub mod matrix;
mod raw;
pub mod run;

pub use matrix::{Cell, Direction, Expect, Kind, Matrix, Outcome, Row};

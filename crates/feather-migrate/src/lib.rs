//! Moving running feather VMs.
//!
//! - [`criu`]: finds CRIU, says whether it works here, and runs its dumps and restores of a VM's
//!   process tree
//! - [`kdat`]: CRIU's cache of its kernel probes, kept usable where CRIU would not keep it
//! - [`rpc`]: CRIU's RPC messages and the connection to `criu swrk`
//! - [`archive`]: a stopped or checkpointed VM as one compressed file, and back
//! - [`precopy`]: a migration's layers sent while the VM runs, then only what changed
//! - [`transfer`]: an archive sent to another host, authenticated and checksummed
//! - [`pages`]: post-copy's page stream between CRIU's page server and `criu lazy-pages`,
//!   relayed on both hosts and opened with the receiver's proof of the token
//!
//! The VM side (which process tree, which mounts, who owns the restored init) is the keeper's,
//! in `feather-vm`; this crate knows CRIU and files, nothing of namespaces.

pub mod archive;
pub mod criu;
mod error;
pub mod kdat;
pub mod pages;
pub mod precopy;
pub mod rpc;
pub mod transfer;

pub use error::{MigrateError, Result};

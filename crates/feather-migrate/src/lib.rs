//! Moving running feather VMs.
//!
//! - [`criu`]: finds CRIU, says whether it works here, and runs its dumps and restores of a VM's
//!   process tree
//! - [`kdat`]: CRIU's cache of its kernel probes, kept usable where CRIU would not keep it
//! - [`rpc`]: CRIU's RPC messages and the connection to `criu swrk`
//! - [`archive`]: a stopped or checkpointed VM as one compressed file, and back
//! - [`room`]: how much an archive may unpack to on the state root's filesystem
//! - [`dark_peer`]: a migration connection given up once its peer is silent 30 s before the
//!   release; after it, an outage waited out (15 min)
//! - [`channel`]: what every migration connection runs over: TLS 1.3, and both ends' proof of
//!   the shared token bound to the session
//! - [`precopy`]: a migration's layers sent while the VM runs, then only what changed
//! - [`transfer`]: an archive sent to another host over the channel, checksummed
//! - [`pages`]: post-copy's page stream between CRIU's page server and `criu lazy-pages`,
//!   relayed on both hosts over the channel
//!
//! The VM side (which process tree, which mounts, who owns the restored init) is the keeper's,
//! in `feather-vm`; this crate knows CRIU and files, nothing of namespaces.

pub mod archive;
pub mod channel;
pub mod criu;
pub mod dark_peer;
mod error;
mod image_frame;
pub mod kdat;
pub mod mount_images;
pub mod pages;
pub mod precopy;
mod queued_files;
mod restore_time;
pub mod room;
pub mod rpc;
pub mod transfer;

pub use error::{MigrateError, Result};

//! feather's vocabulary, shared by every other crate: what a VM is called, how it is
//! configured, where its state lives and how that state is changed safely.
//!
//! Nothing here touches namespaces, mounts or cgroups; those live in `feather-sys` and
//! `feather-vm`. Everything here can be unit-tested without root.

pub mod atomic;
pub mod config;
pub mod display;
pub mod error;
pub mod folder_summary;
pub mod lock_holder;
pub mod name;
pub mod network;
pub mod registered_path;
pub mod roots;
pub mod size;
pub mod small_file;
pub mod state;
pub mod stdout;
pub mod store;
pub mod strict_modes;
pub mod trace;
pub mod warning_stamps;

pub use config::{DiskQuota, Limits, VmConfig};
pub use error::{Error, Result};
pub use name::VmName;
pub use network::{NetMode, NetworkConfig, Publish};
pub use state::{VmState, VmStatus};
pub use store::{StateRoot, VmDir};

//! feather VMs: a copy-on-write view of a base tree (the host's `/` by default) in private
//! namespaces, kept by a keeper process on the host side and run by an init inside.
//!
//! - [`lifecycle`]: create, start, stop, rm, and the throw-away `run --rm`
//! - [`keeper`] and [`init`]: the two processes of a running VM
//! - [`rootfs`]: the isolation recipe, step by step
//! - [`layers`]: which overlays a VM needs
//! - [`exec`]: entering a running VM
//! - [`launch`]: a program started in a running VM with stdio its caller gives, from any
//!   thread (the broker's invocations, the service manager's client)
//! - [`services`]: starting a VM with its services, and one request to its service manager
//! - [`peers`]: the VMs of a state root as the shuttle broker in a keeper sees them
//! - [`checkpoint`]: saving a running VM with CRIU and bringing it back
//! - [`diff`] and [`commit`]: what a VM changed, applying it, dropping it
//! - [`inspect`]: what a VM is and holds, for `ls`, `ps` and `inspect`

pub mod accounts;
pub mod boot;
pub mod checkpoint;
pub mod commands;
pub mod commit;
pub mod diff;
pub mod disk;
pub mod error;
pub mod exec;
pub mod hiding;
pub mod init;
pub mod inspect;
pub mod keeper;
pub mod launch;
pub mod layers;
pub mod lifecycle;
pub mod peers;
pub mod protocol;
pub mod relay;
pub mod rootfs;
pub mod services;
pub mod workload;

pub use error::{Result, VmError};

//! feather as an OCI runtime: the command line containerd's runc shim, Docker and podman call
//! (runc's), over a bundle's `config.json` (docs/oci.md).
//!
//! - [`cli`]: the commands and flags, as runc spells them
//! - [`create`] and [`init`]: a container's init, held until `start` on the `exec.fifo`
//! - [`mounts`], [`process`], [`seccomp`], [`cgroups`], [`hooks`]: the config, field by field
//! - [`controllers`]: cpuset, block I/O, huge pages and `unified`, where this host has them
//!   ([`hierarchies`]: where they are mounted)
//! - [`validate`]: every field feather cannot honour is refused by name before anything is made
//! - [`ops`] and [`exec`]: state, start, kill, delete, ps, list, pause, resume, events, update
//! - [`checkpoint`] and [`restore`]: runc's `checkpoint`/`restore` through feather's CRIU
//! - [`annotations`]: feather's own features, through `org.feather.*` annotations
//! - [`userns`]: a new user namespace and its uid/gid maps
//! - [`store`]: a container's folder under `--root` and its status

pub mod annotations;
pub mod cgroups;
pub mod checkpoint;
pub mod cli;
pub mod controllers;
pub mod create;
pub mod exec;
pub mod hierarchies;
pub mod hooks;
pub mod init;
pub mod log;
pub mod mounts;
pub mod ops;
pub mod process;
pub mod restore;
pub mod seccomp;
pub mod store;
pub mod userns;
pub mod validate;

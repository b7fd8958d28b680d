//! feather as an OCI runtime: the command line containerd's runc shim, Docker and podman call
//! (runc's), over a bundle's `config.json` (docs/oci.md).
//!
//! - [`cli`]: the commands and flags, as runc spells them
//! - [`create`] and [`init`]: a container's init, held until `start` on the `exec.fifo`
//! - [`mounts`], [`process`], [`seccomp`], [`cgroups`], [`hooks`]: the config, field by field
//!   ([`devices`]: the device rules as one policy, v1 lines and a cgroup v2 device program)
//! - [`controllers`]: cpuset, block I/O, huge pages and `unified`, where this host has them
//!   ([`hierarchies`]: where they are mounted)
//! - [`validate`]: every field feather cannot honour is refused by name before anything is made
//! - [`ops`] and [`exec`]: state, start, kill, delete, ps, list, pause, resume, events, update
//! - [`run`]: create and start in one; [`foreground`]: waiting for a program, passing signals
//!   on and relaying its terminal (`run`, `exec` without `--detach`)
//! - [`checkpoint`] and [`restore`]: runc's `checkpoint`/`restore` through feather's CRIU
//! - [`annotations`]: feather's own features, through `org.feather.*` annotations (the
//!   widening ones only where the node's [`policy`] allows them):
//!   [`confine`] (feather's IPC confinement on top of the config's) and [`services`] (the
//!   host's units started in the container); [`hiding`]: state roots registered after a
//!   container over the host started, hidden in it
//! - [`userns`]: a new user namespace and its uid/gid maps; [`idmap`]: id-mapped bind mounts
//! - [`store`]: a container's folder under `--root` and its status
//! - [`registry`] and [`listing`]: the runtime roots used on this host, and their containers
//!   as feather's own tools (`feather ls`, `feather ps`) read them; [`layer`]: what a
//!   container wrote (`feather diff`)

pub mod annotations;
pub mod cgroups;
pub mod checkpoint;
pub mod cli;
pub mod confine;
pub mod controllers;
pub mod create;
pub mod devices;
pub mod exec;
pub mod foreground;
pub mod hiding;
pub mod hierarchies;
pub mod hooks;
pub mod idmap;
pub mod image_folder;
pub mod init;
pub mod layer;
pub mod listing;
pub mod log;
pub mod mounts;
pub mod ops;
pub mod policy;
pub mod process;
pub mod registry;
pub mod restore;
pub mod restored;
pub mod restored_mounts;
pub mod run;
pub mod seccomp;
pub mod services;
pub mod sources;
pub mod store;
pub mod userns;
pub mod validate;

//! feather VMs: a copy-on-write view of a base tree (the host's `/` by default) in private
//! namespaces, kept by a keeper process on the host side and run by an init inside.
//!
//! Run by the CLI (the asker's side; they reach a running VM only through its keeper):
//! - [`lifecycle`]: create, start, stop, rm, and the throw-away `run --rm`; [`options`]: a new VM's options as a person writes them
//! - [`checkpoint`]: `feather checkpoint` and `restore`; [`migration`]: `migrate` (post-copy or
//!   stop-and-copy) and `serve`
//! - [`exec`] (with [`relay`]): entering a running VM
//! - [`services`]: starting a VM with its services, and one request to its service manager
//! - [`program`]: a program started in a running VM with stdio its caller gives, from any
//!   thread (the broker's invocations, the service manager's client)
//! - [`diff`] and [`commit`]: what a VM changed, applying it, dropping it
//! - [`inspect`]: what a VM is and holds, for `ls`, `ps` and `inspect`
//! - [`hiding`]: keeping every state root out of every running VM's view
//!
//! Run by the VM's resident processes:
//! - [`keeper`] (host side) and [`init`] (pid 1 inside); what each does on each event is
//!   decided in [`decide`] (pure functions, unit-tested without root)
//! - [`snapshot`]: the keeper's side of checkpoint, restore and a migration's hold;
//!   [`moment`]: a `--leave-running --export` checkpoint's freeze, held while its layers are
//!   archived
//! - [`rootfs`]: the isolation recipe, step by step, which init runs; [`layers`] and [`disk`]:
//!   the overlays a VM needs and their cap; [`read_only`]: the paths it sees read-only instead;
//!   [`lower_id`]: what names a layer's lower folder for the record of what the layers lie over
//! - [`spawner`]: the one process of a VM that keeps CAP_SYS_ADMIN, for one recipe: a unit's
//!   process with a private `/tmp` (`PrivateTmp=`)
//! - [`idle`]: what keeper and init give back of their program's pages once the VM is up
//! - [`workload`] and [`accounts`]: the last steps before a process becomes the user's program
//! - [`peers`]: the other VMs of the state root, as a keeper's Shuttle broker reaches them
//!   (passed in by the binary, so that the keeper depends on nothing above it)
//!
//! The messages between them, one typed module per pair: [`launch`] (the keeper's, init's and
//! a handed-over teardown's command lines), [`boot`] (feather start ↔ keeper ↔ init during a start), [`protocol`]
//! (CLI ↔ keeper, `control.sock`), [`commands`] (`feather exec` ↔ init), [`finisher`] (`run --rm`
//! ↔ the process its teardown is handed to); [`images`]: the
//! checkpoint folder's files both sides read. [`error`]: [`VmError`], one variant per kind of
//! failure, each naming the VM.
//!
//! Arrows point one way, from the asker's side to the keeper's to init's (no module cycles:
//! `scripts/module-cycles.py crates/feather-vm/src`).

pub mod accounts;
pub mod boot;
pub mod checkpoint;
pub mod commands;
pub mod commit;
mod criu_lock;
pub mod decide;
pub mod diff;
pub mod disk;
pub mod error;
pub mod exec;
pub mod filler;
pub mod finisher;
pub mod handed_over;
pub mod hiding;
pub mod idle;
pub mod images;
pub mod imported;
pub mod init;
pub mod inspect;
pub mod keeper;
pub mod launch;
pub mod layers;
pub mod lifecycle;
pub mod lower_id;
pub mod migration;
pub mod moment;
pub mod options;
pub mod peers;
pub mod pool;
mod pool_locks;
pub mod pooled;
pub mod program;
pub mod protocol;
pub mod read_only;
pub mod relay;
mod restored_creds;
mod restored_mounts;
pub mod root_watch;
pub mod rootfs;
mod service_groups;
pub mod services;
pub mod snapshot;
pub mod spawner;
mod tcp_repair;
mod test_hooks;
mod transfer_watch;
mod vm_group;
pub mod workload;

pub use error::{Result, VmError};

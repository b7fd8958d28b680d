//! Functional tests: what a user of feather VMs relies on, end to end, as root, against the
//! real kernel. Each test has its own state root and cleans up after itself.

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod checkpoint;
mod commit;
mod conventions;
mod copy_on_write;
mod exec;
mod isolation;
mod lifecycle;
mod limits;
mod migrate;
mod network;
mod pool;
mod read_only;
mod recovery;
mod services;
mod services_accept;
mod services_catalogue;
mod services_cgroups;
mod services_dbus;
mod services_filesystem;
mod services_generators;
mod services_private_tmp;
mod services_protocol;
mod services_restrictions;
mod services_sandbox;
mod services_state;
mod services_timers;
mod shuttle_invoke;
mod shuttle_ipc;
mod shuttle_policy;

//! Security tests: what a VM's root must not be able to do or see.

#[path = "../support/mod.rs"]
mod support;

mod capabilities;
mod hardening;
mod host_view;
mod ipc_matrix;
mod landlock;
mod shuttle_paths;

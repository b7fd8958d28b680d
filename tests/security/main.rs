//! Security tests: what a VM's root must not be able to do or see.

#[path = "../support/mod.rs"]
mod support;

mod capabilities;
mod checkpoint_records;
mod commit_privileges;
mod commit_races;
mod descriptors;
mod devices;
mod exec_channel;
mod hardening;
mod host_view;
mod imported_config;
mod imported_layers;
mod ipc_matrix;
mod landlock;
mod limits_default;
mod recipe_mount_points;
mod restore_mount_points;
mod restored_credentials;
mod restored_host_binds;
mod service_client;
mod shuttle_edges;
mod shuttle_paths;
mod spawner;
mod spoofing;
mod state_root;
mod terminal_escapes;

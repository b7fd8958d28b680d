//! feather-oci driven as engines drive it: by the runtime specification's lifecycle directly,
//! by opencontainers' own conformance suite (runtime-tools' validation), by containerd (`ctr run --runc-binary`, and its CRI plugin as the kubelet drives it), podman (`--runtime`) and Docker (a `runtimes` entry). Each test starts its
//! own engine with its own config, root, state and socket, and removes all of it after, also
//! when it fails.

mod support;

mod breakout;
mod checkpoint;
mod conformance;
mod containerd;
mod cri;
mod devices;
mod diff;
mod docker;
mod feather;
mod host_binary;
mod idmap;
mod ipc;
mod podman;
mod resources;
mod run;
mod spec;
mod state_roots;
mod terminal_escapes;
mod userns;

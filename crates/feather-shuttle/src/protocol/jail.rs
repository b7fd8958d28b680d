//! The broker and the D-Bus proxy's jail (`feather __dbus-proxy PLAN`, see [`crate::dbus`]):
//! one message, the plan, as the jail's argument. The jail answers nothing: the broker waits
//! for the proxy's socket to take connections, and reads the jail's log (its stderr) if it
//! ends first.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Changes whenever the plan changes.
pub const VERSION: u32 = 1;

/// What the jail is told: where the broker's descriptor of the bus is, the folders, the uid
/// and the proxy's program and filter arguments.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan {
    /// [`VERSION`] of the broker's build; a plan without one is version 0.
    #[serde(default)]
    pub version: u32,
    /// `/proc/<keeper>/fd/<n>`: the broker's descriptor of the target's bus socket.
    pub bus: String,
    /// The proxy's listening folder, and the folder its root is mounted on.
    pub listen: PathBuf,
    pub root: PathBuf,
    /// Who the proxy runs as.
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub program: PathBuf,
    pub args: Vec<String>,
}

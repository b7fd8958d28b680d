//! How `feather service …` talks to the service manager inside a VM: one JSON request per
//! line on a unix socket in the VM's private /run, one JSON response per line back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The manager's folder in the VM's /run: its socket, pid file, lock, log and notify sockets.
pub const RUN_DIR: &str = "/run/feather-svc";
pub const SOCKET: &str = "/run/feather-svc/manager.sock";
pub const PID_FILE: &str = "/run/feather-svc/manager.pid";
pub const LOCK_FILE: &str = "/run/feather-svc/manager.lock";
pub const MANAGER_LOG: &str = "/run/feather-svc/manager.log";
pub const NOTIFY_DIR: &str = "/run/feather-svc/notify";
/// Per-service logs (stdout and stderr), `<unit>.log`, in the VM's own layer.
pub const LOG_DIR: &str = "/var/log/feather";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start units with their dependency closure; answered once all have settled.
    Start {
        units: Vec<String>,
        /// Whether the units start from the host's data (copy-on-write) or with empty state.
        #[serde(default)]
        fresh_state: FreshState,
    },
    /// Stop units (and what requires or is bound to them), in reverse order.
    Stop { units: Vec<String> },
    /// Run the ExecReload= commands of running units.
    Reload { units: Vec<String> },
    /// Every unit the manager knows.
    List,
    /// One unit, with the last lines of its log.
    Status { unit: String, lines: usize },
    /// Stop everything in reverse order, then exit.
    Shutdown,
}

/// What a start does with the data of the services it starts (see [`crate::state`]).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FreshState {
    /// The host's data as it is, copy-on-write.
    #[default]
    No,
    /// Empty state now: the data folders are emptied in the VM's layer (what the VM's copy had
    /// written there is dropped too) and initialised.
    Always,
    /// Empty state unless this VM already gave the unit fresh state (a VM created with
    /// `--fresh-state` keeps, on its later starts, the data its services wrote).
    Once,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// What the request did to each unit it touched.
    Done {
        units: Vec<ServiceInfo>,
    },
    List {
        units: Vec<ServiceInfo>,
    },
    Status {
        unit: Box<ServiceInfo>,
        log: Vec<String>,
    },
    Error {
        message: String,
    },
}

/// A unit's state as clients see it; in JSON the lowercase names systemd uses (`service ls
/// --json` shows them).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnitState {
    #[default]
    Inactive,
    /// Queued: waiting for the units it starts after.
    Waiting,
    Activating,
    Active,
    Deactivating,
    Failed,
    /// Wanted by a started unit but left out (not installed, host infrastructure, …); only in
    /// the answer to a start.
    Skipped,
}

impl UnitState {
    pub fn name(self) -> &'static str {
        match self {
            UnitState::Inactive => "inactive",
            UnitState::Waiting => "waiting",
            UnitState::Activating => "activating",
            UnitState::Active => "active",
            UnitState::Deactivating => "deactivating",
            UnitState::Failed => "failed",
            UnitState::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for UnitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The state of one unit, as `service ls` and `service status` show it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    pub description: Option<String>,
    pub state: UnitState,
    /// Finer: `running`, `exited`, `start-pre`, `start`, `start-post`, `stop`, `auto-restart`, …
    pub sub: String,
    pub main_pid: Option<i32>,
    /// Seconds since the unit entered its state.
    pub since_secs: u64,
    pub restarts: u32,
    /// Whether the unit reached readiness (by its Type=) in its current run.
    pub ready: bool,
    /// The last STATUS= a notify service sent.
    pub status_text: Option<String>,
    /// Why it failed, or what was skipped.
    pub result: Option<String>,
    /// The unit this one was pulled in by, if not asked for directly.
    pub pulled_by: Option<String>,
    pub log: Option<String>,
    /// Settings read from the unit but not applied in a VM.
    pub not_applied: Vec<String>,
}

pub fn send(stream: &mut UnixStream, value: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    stream.write_all(&line)
}

pub fn receive<T: for<'de> Deserialize<'de>>(stream: &UnixStream) -> std::io::Result<T> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the service manager closed the connection",
        ));
    }
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub fn connect() -> std::io::Result<UnixStream> {
    UnixStream::connect(Path::new(SOCKET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_states_keep_their_json_names() {
        for (state, name) in [
            (UnitState::Inactive, "inactive"),
            (UnitState::Waiting, "waiting"),
            (UnitState::Activating, "activating"),
            (UnitState::Active, "active"),
            (UnitState::Deactivating, "deactivating"),
            (UnitState::Failed, "failed"),
            (UnitState::Skipped, "skipped"),
        ] {
            let info = ServiceInfo {
                state,
                ..ServiceInfo::default()
            };
            let json = serde_json::to_value(&info).unwrap();
            assert_eq!(json["state"], name);
            assert_eq!(state.to_string(), name);
            let back: ServiceInfo = serde_json::from_value(json).unwrap();
            assert_eq!(back.state, state);
        }
    }
}

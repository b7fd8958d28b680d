//! How `feather service …` talks to the service manager inside a VM: one JSON message per
//! line on a unix socket in the VM's private /run.
//!
//! ```text
//! client (feather __service)                 manager (feather-svcd)
//!   Request::Hello { version }      ──▶
//!                                   ◀──  Response::Hello { version }   (or Error: VersionMismatch)
//!   Request::Start/Stop/…           ──▶
//!                                   ◀──  Response::Done/List/Status/Error
//! ```
//!
//! The hello makes a client and a manager of different builds (a manager started by an older
//! feather still running in a VM) fail at once with both versions named, instead of misreading
//! each other's messages. Every message is read whole before the next is sent, so each side may
//! read with a fresh buffer.

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
/// What the VM's systemd generators printed, and what became of each.
pub const GENERATORS_LOG: &str = "/var/log/feather/generators.log";

/// The version of these messages; raise it with any change a peer of the previous version
/// would misread.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The first message on every connection: the client's [`VERSION`].
    Hello { version: u32 },
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
    /// The answer to [`Request::Hello`]: the manager's [`VERSION`].
    Hello {
        version: u32,
    },
    /// What the request did to each unit it touched.
    Done {
        units: Vec<ServiceInfo>,
        /// For a reload: the units whose ExecReload= failed (they keep running as they were).
        #[serde(default)]
        reload_failed: Vec<String>,
    },
    List {
        units: Vec<ServiceInfo>,
    },
    Status {
        unit: Box<ServiceInfo>,
        log: Vec<String>,
    },
    Error {
        error: Refusal,
    },
}

/// Why the manager did not do what was asked; nothing was changed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// A stop or reload named a unit the manager never started.
    #[error("{unit} was not started in this VM (see `feather service ls`)")]
    NotStarted { unit: String },
    /// The client's hello carried another [`VERSION`] than the manager's.
    #[error("{}", version_advice(*expected, *received))]
    VersionMismatch { expected: u32, received: u32 },
    #[error("the service manager expected {expected}, but {received} came")]
    UnexpectedMessage { expected: String, received: String },
    #[error("bad request: {problem}")]
    BadRequest { problem: String },
    /// Any other refusal (a unit that cannot be loaded, a reload of a stopped unit, …).
    #[error("{message}")]
    Refused { message: String },
}

fn version_advice(expected: u32, received: u32) -> String {
    format!(
        "protocol version mismatch with the VM's service manager: expected {expected}, received {received}; \
         the VM's feather-svcd was started by another feather build: restart the VM \
         (`feather stop VM`, `feather start VM`) so that the one installed beside feather runs"
    )
}

/// What goes wrong in the exchange itself, on the client's side.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("cannot reach the service manager: {0}")]
    Send(std::io::Error),
    #[error("no answer from the service manager: {0}")]
    Receive(std::io::Error),
    /// The manager answered the hello with another [`VERSION`] (`expected` is this client's).
    #[error("{}", version_advice(*expected, *received))]
    VersionMismatch { expected: u32, received: u32 },
    /// The answer to the hello is no message of this version: a manager from before the hello
    /// (or another build) runs in the VM.
    #[error("the service manager answered the hello with a message this feather cannot read ({0}); it is probably an older feather-svcd: restart the VM (`feather stop VM`, `feather start VM`) so that the one installed beside feather runs")]
    UnreadableHello(std::io::Error),
    /// The manager answered with another message than the one the exchange is at.
    #[error("the service manager answered {received} where {expected} was expected")]
    UnexpectedMessage {
        expected: &'static str,
        received: String,
    },
}

impl Request {
    /// The message's name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Start { .. } => "start",
            Request::Stop { .. } => "stop",
            Request::Reload { .. } => "reload",
            Request::List => "list",
            Request::Status { .. } => "status",
            Request::Shutdown => "shutdown",
        }
    }
}

impl Response {
    /// The message's name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Hello { .. } => "hello",
            Response::Done { .. } => "done",
            Response::List { .. } => "list",
            Response::Status { .. } => "status",
            Response::Error { .. } => "error",
        }
    }
}

/// The client's side of the hello: sends this build's [`VERSION`], checks the manager's.
pub fn greet_manager(stream: &mut UnixStream) -> Result<(), ProtocolError> {
    greet_manager_as(stream, VERSION)
}

fn greet_manager_as(stream: &mut UnixStream, version: u32) -> Result<(), ProtocolError> {
    send(stream, &Request::Hello { version }).map_err(ProtocolError::Send)?;
    let answer = receive::<Response>(stream).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => ProtocolError::UnreadableHello(e),
        _ => ProtocolError::Receive(e),
    })?;
    match answer {
        Response::Hello { version: theirs } if theirs == version => Ok(()),
        Response::Hello { version: theirs } => Err(ProtocolError::VersionMismatch {
            expected: version,
            received: theirs,
        }),
        // The manager refused this client's version: it names its own as expected.
        Response::Error {
            error: Refusal::VersionMismatch { expected, .. },
        } => Err(ProtocolError::VersionMismatch {
            expected: version,
            received: expected,
        }),
        other => Err(ProtocolError::UnexpectedMessage {
            expected: "hello",
            received: other.kind().to_owned(),
        }),
    }
}

/// The manager's side of a connection's start: the client's hello (answered with this
/// build's [`VERSION`]), then its one request. A refusal is for the caller to send back.
pub fn greet_client(stream: &mut UnixStream) -> Result<Request, Refusal> {
    let bad = |e: std::io::Error| Refusal::BadRequest {
        problem: e.to_string(),
    };
    match receive::<Request>(stream).map_err(bad)? {
        Request::Hello { version } if version == VERSION => {}
        Request::Hello { version } => {
            return Err(Refusal::VersionMismatch {
                expected: VERSION,
                received: version,
            })
        }
        other => {
            return Err(Refusal::UnexpectedMessage {
                expected: "hello".into(),
                received: other.kind().into(),
            })
        }
    }
    send(stream, &Response::Hello { version: VERSION }).map_err(bad)?;
    match receive::<Request>(stream).map_err(bad)? {
        Request::Hello { .. } => Err(Refusal::UnexpectedMessage {
            expected: "a request".into(),
            received: "a second hello".into(),
        }),
        request => Ok(request),
    }
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
    /// The unit's own cgroup, as the VM names it (`/sys/fs/cgroup/memory/nginx.service`, the
    /// first hierarchy's), while it has one.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Memory its processes use now (its cgroup's accounting), in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU time its processes used since its group was made, in nanoseconds.
    #[serde(default)]
    pub cpu_nsec: Option<u64>,
    /// Its start failed and is retried without a start limit (`StartLimitIntervalSec=0`): a
    /// start that asked for it has failed, though the unit goes on trying (`activating
    /// (auto-restart)`).
    #[serde(default)]
    pub start_failing: bool,
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

    /// A manager that answers one hello as `answer` says, on the other end of a socket pair.
    fn manager(answer: Response) -> UnixStream {
        let (client, server) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut server = server;
            let _: Request = receive(&server).unwrap();
            send(&mut server, &answer).unwrap();
        });
        client
    }

    #[test]
    fn a_hello_of_the_same_version_is_accepted_and_the_request_follows() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let manager = std::thread::spawn(move || {
            let mut server = server;
            let request = greet_client(&mut server);
            (request, server)
        });
        greet_manager(&mut client).unwrap();
        send(&mut client, &Request::List).unwrap();
        let (request, _server) = manager.join().unwrap();
        assert_eq!(request.unwrap(), Request::List);
    }

    #[test]
    fn a_manager_of_another_version_is_named_with_both_versions() {
        let mut client = manager(Response::Hello {
            version: VERSION + 1,
        });
        let error = greet_manager(&mut client).unwrap_err();
        assert!(
            matches!(error, ProtocolError::VersionMismatch { expected, received }
                if expected == VERSION && received == VERSION + 1),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains(&format!("expected {VERSION}, received {}", VERSION + 1))
                && text.contains("restart the VM"),
            "{text}"
        );
    }

    #[test]
    fn the_manager_refuses_a_client_of_another_version() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let manager = std::thread::spawn(move || {
            let mut server = server;
            let greeted = greet_client(&mut server);
            if let Err(error) = &greeted {
                send(
                    &mut server,
                    &Response::Error {
                        error: error.clone(),
                    },
                )
                .unwrap();
            }
            greeted
        });
        let error = greet_manager_as(&mut client, VERSION + 7).unwrap_err();
        // Closed, so that a manager that wrongly waits for a request sees the end.
        drop(client);
        // The manager saw the client's version and said so; the client names both.
        assert_eq!(
            manager.join().unwrap().unwrap_err(),
            Refusal::VersionMismatch {
                expected: VERSION,
                received: VERSION + 7
            }
        );
        assert!(
            matches!(error, ProtocolError::VersionMismatch { expected, received }
                if expected == VERSION + 7 && received == VERSION),
            "{error:?}"
        );
    }

    #[test]
    fn an_answer_out_of_turn_is_an_unexpected_message() {
        let mut client = manager(Response::List { units: Vec::new() });
        match greet_manager(&mut client).unwrap_err() {
            ProtocolError::UnexpectedMessage { expected, received } => {
                assert_eq!((expected, received.as_str()), ("hello", "list"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_manager_from_before_the_hello_is_named_as_such() {
        let (mut client, server) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut server = server;
            let _ = receive::<serde_json::Value>(&server);
            // What a manager without the hello answered to a message it could not read.
            server
                .write_all(b"{\"result\":\"error\",\"message\":\"bad request: unknown variant\"}\n")
                .unwrap();
        });
        let error = greet_manager(&mut client).unwrap_err();
        assert!(
            matches!(error, ProtocolError::UnreadableHello(_)),
            "{error:?}"
        );
        assert!(error.to_string().contains("restart the VM"), "{error}");
    }

    #[test]
    fn a_request_before_the_hello_is_refused() {
        let (mut client, server) = UnixStream::pair().unwrap();
        send(&mut client, &Request::Shutdown).unwrap();
        let mut server = server;
        assert_eq!(
            greet_client(&mut server).unwrap_err(),
            Refusal::UnexpectedMessage {
                expected: "hello".into(),
                received: "shutdown".into()
            }
        );
    }

    #[test]
    fn refusals_keep_their_kind_over_the_wire() {
        let refusal = Response::Error {
            error: Refusal::NotStarted {
                unit: "nginx.service".into(),
            },
        };
        let line = serde_json::to_string(&refusal).unwrap();
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back, refusal);
        assert!(line.contains(r#""kind":"not_started""#), "{line}");
    }

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

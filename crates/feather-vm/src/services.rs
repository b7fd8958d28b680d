//! A VM's services from the host: starting a VM with the services it was created with, and one
//! request to its service manager. The CLI (`feather start`, `feather service …`) and the
//! shuttle broker in a keeper (crate::peers) both call these; neither runs the `feather`
//! command line.
//!
//! A request reaches the manager through its client inside the VM: the VM's init runs the
//! manager's own binary (`feather-svcd`, beside this one on the host, at the same path in a VM
//! over the host's root) as `feather-svcd --vm VM --client ASK`, and it writes the manager's
//! typed answers as JSON lines (feather_svc::manager::client_protocol). That program is the
//! VM's to replace, so its output is read as hostile input: bounded lines, typed serde, the
//! version checked first; whoever shows it escapes what it holds.

use std::io::{BufRead, BufReader, Read as _};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use feather_core::{StateRoot, VmName};
use feather_svc::manager::client_protocol::{self, Ask, Failure, Line, ReadError, CLIENT_FLAG};
use feather_svc::manager::protocol::{FreshState, Refusal, Response, ServiceInfo, UnitState};
use feather_sys::timed::Timed;

use crate::error::VmError;
use crate::lifecycle;
use crate::program::launch_service_client;
use crate::workload::Workload;

/// How long the client may take to end its output and exit once it answered.
const CLIENT_END: Duration = Duration::from_secs(5);

/// How long the manager may take to answer a start, stop, restart or reload: it bounds each
/// unit's work by the unit's own timeouts (TimeoutStartSec= and the like, 90 s by default), so
/// this is a last resort against a client that never answers.
const ACTION_ANSWER: Duration = Duration::from_secs(600);

/// How long the manager may take to answer a question (the list, a status, a log's end).
const QUERY_ANSWER: Duration = Duration::from_secs(30);

/// How much of the client's stderr is kept, to explain a client that gave no answer.
const STDERR_KEPT: u64 = 4096;

/// What goes wrong reaching a VM's service manager; each names the VM.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Core(#[from] feather_core::Error),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot find feather's own binary: {0}")]
    OwnBinary(#[source] std::io::Error),
    #[error(
        "VM {vm} cannot run its service manager: {} is missing; install {} beside feather (cargo builds and installs both)",
        .program.display(),
        feather_svc::manager::PROGRAM
    )]
    ManagerMissing { vm: VmName, program: PathBuf },
    #[error(
        "VM {vm} cannot run feather's service manager: its base {} has no {} (services run in VMs over the host's root)",
        .base.display(),
        .program.display()
    )]
    NotInBase {
        vm: VmName,
        base: PathBuf,
        program: PathBuf,
    },
    /// A unit asked for at create that cannot be duplicated: its name or file is wrong.
    #[error(transparent)]
    Unit(#[from] feather_svc::SvcError),
    #[error("{unit} is host infrastructure and is not duplicated in VMs; in a VM: {stand_in}")]
    Infrastructure {
        unit: String,
        stand_in: &'static str,
    },
    /// The catalogue's no (`feather service catalog`): the unit is installed but a VM's copy
    /// cannot work, for the reason given.
    #[error("{unit} cannot be duplicated into a VM: {reason}")]
    NotDuplicable { unit: String, reason: String },
    #[error("VM {vm} runs no services (start one with `feather service start {vm} UNIT`)")]
    NoServices { vm: VmName },
    /// The manager refused; nothing was changed.
    #[error("VM {vm}: {refusal}")]
    Refused { vm: VmName, refusal: Refusal },
    /// The client in the VM could not ask the manager.
    #[error("VM {vm}: {failure}")]
    Failed { vm: VmName, failure: Failure },
    /// The client's output broke the protocol.
    #[error("VM {vm}: {error}")]
    Protocol { vm: VmName, error: ReadError },
    #[error("VM {vm}: the service client ended with status {code} without an answer{}", stderr_note(.stderr))]
    NoAnswer {
        vm: VmName,
        code: i32,
        stderr: String,
    },
    /// The client (the VM's program) did not answer, or did not end, in time; it was killed.
    #[error("VM {vm}: the service client gave no answer within {} s and was stopped", .waited.as_secs())]
    NoAnswerInTime { vm: VmName, waited: Duration },
    #[error("cannot make a pipe for the service client: {0}")]
    Pipe(#[source] std::io::Error),
}

fn stderr_note(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        text => format!(": {text}"),
    }
}

pub type Result<T, E = ServicesError> = std::result::Result<T, E>;

/// The unit names of `services` as installed below `base` (`nginx` → `nginx.service`), or
/// why one cannot be duplicated into a VM: what `create --service` checks before it makes the
/// VM.
pub fn check_installed(base: &std::path::Path, services: &[String]) -> Result<Vec<String>> {
    let paths = feather_svc::UnitPaths::new(base);
    services
        .iter()
        .map(|service| {
            let name = feather_svc::UnitName::parse(service)?;
            if let Some(stand_in) = feather_svc::infra::stand_in(&name) {
                return Err(ServicesError::Infrastructure {
                    unit: name.to_string(),
                    stand_in,
                });
            }
            let unit = paths.load(&name)?;
            // What the catalogue says no to is refused here with its reason, not at the
            // VM's start.
            if let Some(reason) = feather_svc::catalog::why_not(&paths, &unit, &unit.name) {
                return Err(ServicesError::NotDuplicable {
                    unit: unit.name.to_string(),
                    reason,
                });
            }
            Ok(unit.name.to_string())
        })
        .collect()
}

/// Records the services VM `name` starts whenever it starts (`fresh_state`: from empty data on
/// its first start).
pub fn configure(
    root: &StateRoot,
    name: &VmName,
    services: Vec<String>,
    fresh_state: bool,
) -> Result<()> {
    if services.is_empty() {
        return Ok(());
    }
    let vm = root.open(name)?;
    let mut config = vm.read_config()?;
    config.services = services;
    config.fresh_state = fresh_state;
    vm.write_config(&config, feather_core::atomic::Durability::Durable)?;
    Ok(())
}

/// Starts VM `name` (see [`lifecycle::start`]), then the services it was created with; the
/// answer of their start (empty if it has none).
pub fn start(root: &StateRoot, name: &VmName) -> Result<Vec<ServiceInfo>> {
    lifecycle::start(root, name)?;
    start_configured(root, name)
}

/// Starts the services VM `name` was created with in the running VM, if any; the answer of
/// their start (empty if it has none). Failed units are in it, state `failed` ([`failures`]).
pub fn start_configured(root: &StateRoot, name: &VmName) -> Result<Vec<ServiceInfo>> {
    let config = root.open(name)?.read_config()?;
    if config.services.is_empty() {
        return Ok(Vec::new());
    }
    let ask = Ask::Start {
        units: config.services,
        // Empty state once: later starts of the VM keep what its services wrote.
        fresh_state: if config.fresh_state {
            FreshState::Once
        } else {
            FreshState::No
        },
    };
    match call(root, name, &ask)? {
        Response::Done { units, .. } => Ok(units),
        other => Err(unexpected(name, "done", &other)),
    }
}

/// The units of an answer that failed: their start (also one retried without a start limit,
/// which goes on trying), or their reload (`reload_failed`).
pub fn failures<'a>(units: &'a [ServiceInfo], reload_failed: &[String]) -> Vec<&'a ServiceInfo> {
    units
        .iter()
        .filter(|u| {
            u.state == UnitState::Failed || u.start_failing || reload_failed.contains(&u.name)
        })
        .collect()
}

/// Asks VM `name`'s service manager `ask` (not [`Ask::Logs`]; see [`logs`]) and returns its
/// answer: `Done`, `List` or `Status`; a refusal is [`ServicesError::Refused`].
pub fn call(root: &StateRoot, name: &VmName, ask: &Ask) -> Result<Response> {
    let mut no_logs = |_: &[u8]| false;
    match converse(root, name, ask, &mut no_logs)? {
        Some(Response::Error { error }) => Err(ServicesError::Refused {
            vm: name.clone(),
            refusal: error,
        }),
        Some(Response::Hello { .. }) => Err(ServicesError::Protocol {
            vm: name.clone(),
            error: ReadError::Unexpected {
                expected: "an answer",
                received: "a second hello".into(),
            },
        }),
        Some(answer) => Ok(answer),
        None => Err(ServicesError::Protocol {
            vm: name.clone(),
            error: ReadError::Unexpected {
                expected: "an answer",
                received: "log lines".into(),
            },
        }),
    }
}

/// The last `lines` of `unit`'s log in VM `name`, each given to `line` (without its end, as
/// the VM wrote it), then with `follow` what is appended, until `line` returns false.
pub fn logs(
    root: &StateRoot,
    name: &VmName,
    unit: &str,
    lines: usize,
    follow: bool,
    line: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<()> {
    let ask = Ask::Logs {
        unit: unit.to_owned(),
        lines,
        follow,
    };
    match converse(root, name, &ask, line)? {
        None => Ok(()),
        Some(Response::Error { error }) => Err(ServicesError::Refused {
            vm: name.clone(),
            refusal: error,
        }),
        Some(other) => Err(unexpected(name, "log lines", &other)),
    }
}

fn unexpected(name: &VmName, expected: &'static str, received: &Response) -> ServicesError {
    ServicesError::Protocol {
        vm: name.clone(),
        error: ReadError::Unexpected {
            expected,
            received: received.kind().to_owned(),
        },
    }
}

/// How long the manager may take to answer `ask`; `None` for a log followed until the one
/// who reads it stops.
fn answer_time(ask: &Ask) -> Option<Duration> {
    match ask {
        Ask::Logs { follow: true, .. } => None,
        Ask::Start { .. } | Ask::Stop { .. } | Ask::Restart { .. } | Ask::Reload { .. } => {
            Some(ACTION_ANSWER)
        }
        Ask::List | Ask::Status { .. } | Ask::Logs { .. } => Some(QUERY_ANSWER),
    }
}

/// Runs the client in the VM for `ask` and reads its lines: log lines go to `log` (while it
/// returns true); the answer is returned (`None` where the ask was for log lines). The client
/// is the VM's program: it is never waited for without end, and killed when it overstays.
fn converse(
    root: &StateRoot,
    name: &VmName,
    ask: &Ask,
    log: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<Option<Response>> {
    let program = client_program(root, name)?;
    let ask_json = serde_json::to_string(ask).map_err(|e| ServicesError::Protocol {
        vm: name.clone(),
        error: ReadError::Io(e.into()),
    })?;
    let workload = Workload {
        argv: vec![
            program.display().to_string(),
            "--vm".into(),
            name.to_string(),
            CLIENT_FLAG.into(),
            ask_json,
        ],
        ..Workload::default()
    };
    let pipe = || std::io::pipe().map_err(ServicesError::Pipe);
    // An empty stdin: its write end is closed at once.
    let (stdin, _) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let stdio: [OwnedFd; 3] = [stdin.into(), stdout_write.into(), stderr_write.into()];
    let mut launched = launch_service_client(root, name, &workload, stdio)?;
    let stderr = keep_stderr(stderr_read);
    let started = Instant::now();
    let deadline = answer_time(ask).map(|time| started + time);
    let mut output = BufReader::new(Timed::new(stdout_read, deadline));
    let logs_asked = matches!(ask, Ask::Logs { .. });
    let read = read_answer(name, &mut output, logs_asked, log).and_then(|read| {
        if let Read::Answer(_) = read {
            // Answered: the output must end now (more is refused), and soon; an output held
            // open past that (by a process the client left behind) does not take the answer.
            output
                .get_mut()
                .set_deadline(Some(Instant::now() + CLIENT_END));
            match expect_end(name, &mut output) {
                Err(e) if !timed_out(&e) => return Err(e),
                _ => {}
            }
        }
        Ok(read)
    });
    drop(output);
    let overstayed = |launched: &mut crate::program::Launched| {
        let _ = launched.signal(nix::sys::signal::Signal::SIGKILL);
        ServicesError::NoAnswerInTime {
            vm: name.clone(),
            waited: started.elapsed(),
        }
    };
    match read {
        Err(e) if timed_out(&e) => return Err(overstayed(&mut launched)),
        Err(e) => return Err(e),
        Ok(Read::Answer(response)) => {
            // Its output ended: it is ending. Its end is waited for (a little), so that
            // nothing of the request is left running in the VM.
            if launched.wait_timeout(CLIENT_END)?.is_none() {
                let _ = launched.signal(nix::sys::signal::Signal::SIGKILL);
            }
            return Ok(Some(response));
        }
        // Dropping the client hangs it up.
        Ok(Read::LogsStopped) => return Ok(None),
        Ok(Read::Ended) => {}
    }
    let Some(code) = launched.wait_timeout(CLIENT_END)? else {
        return Err(overstayed(&mut launched));
    };
    if logs_asked && code == 0 {
        return Ok(None);
    }
    // It wrote nothing, or no answer: its exit status and stderr say more.
    Err(ServicesError::NoAnswer {
        vm: name.clone(),
        code,
        stderr: stderr.recv_timeout(CLIENT_END).unwrap_or_default(),
    })
}

/// The first [`STDERR_KEPT`] bytes of the client's stderr, once it ends; the rest is read and
/// dropped, so that the client never blocks on it.
fn keep_stderr(stderr: std::io::PipeReader) -> std::sync::mpsc::Receiver<String> {
    let (kept_tx, kept_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut stderr = stderr;
        let _ = (&mut stderr).take(STDERR_KEPT).read_to_end(&mut kept);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        let _ = kept_tx.send(String::from_utf8_lossy(&kept).into_owned());
    });
    kept_rx
}

/// Whether reading the client's output failed because its time ran out.
fn timed_out(error: &ServicesError) -> bool {
    matches!(
        error,
        ServicesError::Protocol { error: ReadError::Io(e), .. } if e.kind() == std::io::ErrorKind::TimedOut
    )
}

/// What the client's output came to.
#[derive(Debug, PartialEq)]
enum Read {
    /// The manager's answer (the output must end after it: [`expect_end`]).
    Answer(Response),
    /// Log lines, until the one who reads them stopped.
    LogsStopped,
    /// The output ended with no answer (log lines, if any, were given out): the client's exit
    /// status tells whether that is all.
    Ended,
}

/// Reads the client's output up to its answer: the hello, then the answer, a failure or
/// (`logs_asked`) log lines, each given to `log` while it returns true.
fn read_answer(
    name: &VmName,
    output: &mut impl BufRead,
    logs_asked: bool,
    log: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<Read> {
    let protocol = |error| ServicesError::Protocol {
        vm: name.clone(),
        error,
    };
    match client_protocol::read_hello(output) {
        Ok(()) => {}
        Err(ReadError::Ended { .. }) => return Ok(Read::Ended),
        Err(error) => return Err(protocol(error)),
    }
    while let Some(line) = client_protocol::read_line(output).map_err(protocol)? {
        match line {
            Line::Log { bytes } if logs_asked => {
                if !log(&bytes) {
                    return Ok(Read::LogsStopped);
                }
            }
            Line::Answer { response } => return Ok(Read::Answer(response)),
            Line::Failed { failure } => {
                return Err(match failure {
                    Failure::NoServices => ServicesError::NoServices { vm: name.clone() },
                    failure => ServicesError::Failed {
                        vm: name.clone(),
                        failure,
                    },
                })
            }
            other => {
                return Err(protocol(ReadError::Unexpected {
                    expected: if logs_asked { "log lines" } else { "an answer" },
                    received: other.kind().to_owned(),
                }))
            }
        }
    }
    Ok(Read::Ended)
}

/// After the answer, nothing: the output's end.
fn expect_end(name: &VmName, output: &mut impl BufRead) -> Result<()> {
    match client_protocol::read_line(output) {
        Ok(None) => Ok(()),
        Ok(Some(other)) => Err(ReadError::Unexpected {
            expected: "the end of the output",
            received: other.kind().to_owned(),
        }),
        Err(error) => Err(error),
    }
    .map_err(|error| ServicesError::Protocol {
        vm: name.clone(),
        error,
    })
}

/// The manager's binary, which runs as the client: beside this one on the host, and at the
/// same path in the VM's base.
fn client_program(root: &StateRoot, name: &VmName) -> Result<PathBuf> {
    let config = root.open(name)?.read_config()?;
    let program = feather_svc::manager::program().map_err(|e| match e {
        feather_svc::manager::ClientError::OwnBinary(e) => ServicesError::OwnBinary(e),
        other => ServicesError::OwnBinary(std::io::Error::other(other.to_string())),
    })?;
    if !program.exists() {
        return Err(ServicesError::ManagerMissing {
            vm: name.clone(),
            program,
        });
    }
    let inside = config
        .base
        .join(program.strip_prefix("/").unwrap_or(&program));
    if !inside.exists() {
        return Err(ServicesError::NotInBase {
            vm: name.clone(),
            base: config.base,
            program,
        });
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str, logs_asked: bool) -> (Result<Read>, Vec<Vec<u8>>) {
        let name: VmName = "vm".parse().unwrap();
        let mut logged = Vec::new();
        let mut log = |line: &[u8]| {
            logged.push(line.to_vec());
            true
        };
        let mut output = std::io::Cursor::new(text.as_bytes().to_vec());
        let read = read_answer(&name, &mut output, logs_asked, &mut log);
        let read = match read {
            Ok(Read::Answer(answer)) => {
                expect_end(&name, &mut output).map(|()| Read::Answer(answer))
            }
            other => other,
        };
        (read, logged)
    }

    const HELLO: &str = "{\"line\":\"hello\",\"version\":1}\n";
    const LIST: &str = "{\"line\":\"answer\",\"response\":{\"result\":\"list\",\"units\":[]}}\n";

    #[test]
    fn an_answer_after_the_hello_is_the_answer() {
        let (read, _) = read_text(&format!("{HELLO}{LIST}"), false);
        assert_eq!(
            read.unwrap(),
            Read::Answer(Response::List { units: Vec::new() })
        );
    }

    #[test]
    fn log_lines_are_given_out_only_when_asked_for() {
        let line = "{\"line\":\"log\",\"bytes\":[104,105,27]}\n";
        let (read, logged) = read_text(&format!("{HELLO}{line}{line}"), true);
        assert_eq!(read.unwrap(), Read::Ended);
        assert_eq!(logged, vec![b"hi\x1b".to_vec(), b"hi\x1b".to_vec()]);
        let (read, logged) = read_text(&format!("{HELLO}{line}"), false);
        assert!(
            matches!(
                read,
                Err(ServicesError::Protocol {
                    error: ReadError::Unexpected {
                        expected: "an answer",
                        ..
                    },
                    ..
                })
            ),
            "{read:?}"
        );
        assert!(logged.is_empty());
    }

    #[test]
    fn anything_after_the_answer_is_refused() {
        let (read, _) = read_text(&format!("{HELLO}{LIST}{LIST}"), false);
        let error = read.unwrap_err();
        assert!(
            matches!(
                &error,
                ServicesError::Protocol {
                    error: ReadError::Unexpected {
                        expected: "the end of the output",
                        received,
                    },
                    ..
                } if received == "answer"
            ),
            "{error:?}"
        );
        assert!(error.to_string().starts_with("VM vm: "), "{error}");
    }

    #[test]
    fn a_failure_is_typed_and_names_the_vm() {
        let failed = "{\"line\":\"failed\",\"failure\":{\"kind\":\"no_services\"}}\n";
        let error = read_text(&format!("{HELLO}{failed}"), false).0.unwrap_err();
        assert!(
            matches!(error, ServicesError::NoServices { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "VM vm runs no services (start one with `feather service start vm UNIT`)"
        );
    }

    #[test]
    fn silence_and_a_foreign_first_line_are_told_apart() {
        assert_eq!(read_text("", false).0.unwrap(), Read::Ended);
        let error = read_text("\x1b[2Jnginx running\n", false).0.unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("expected") && text.contains("\\u{1b}[2Jnginx running"),
            "{text}"
        );
    }
}

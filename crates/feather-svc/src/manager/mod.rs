//! The service manager that runs inside a VM, and the client the host uses to reach it.
//!
//! `feather service start VM UNIT` (feather_vm::services) has the VM's init run the manager's
//! binary as a client, `feather-svcd --vm VM --client ASK` ([`client`]). That client connects
//! to the manager's socket in the VM's own /run ([`protocol::SOCKET`]); if no manager runs yet,
//! it starts one, detached (a session of its own, reparented to the VM's init), which then
//! stays in the VM supervising. Only processes inside the VM can reach the socket: the VM's
//! /run is a private tmpfs. The client writes the manager's typed answers as JSON lines for the
//! host ([`client_protocol`]).
//!
//! The manager is its own small binary, [`PROGRAM`] (`crates/feather/src/bin/feather-svcd.rs`),
//! installed beside `feather`: it stays resident in every VM that runs services, so it carries
//! only this crate, not the whole command line.

mod bus;
mod cgroups;
pub mod client;
pub mod client_protocol;
mod filesystem;
mod processes;
mod protections;
pub mod protocol;
mod restrictions;
mod sockets;
mod spawn;
mod spawner;
pub mod supervisor;
mod syscall_filter;
mod syslog;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::{Request, Response, LOCK_FILE, MANAGER_LOG, PID_FILE, RUN_DIR, SOCKET};

/// How long a client waits for a manager it started to listen.
const MANAGER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The service manager's binary name; the VM's init recognises the manager by it (its `comm`).
pub const PROGRAM: &str = "feather-svcd";

/// What goes wrong reaching a VM's service manager from inside the VM.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot find the running feather binary: {0}")]
    OwnBinary(std::io::Error),
    #[error("the service manager {} is missing: install {PROGRAM} beside feather", .0.display())]
    ManagerMissing(PathBuf),
    #[error("{RUN_DIR}: {0}")]
    RunDir(std::io::Error),
    #[error("cannot start the service manager: {0}")]
    Fork(feather_sys::SysError),
    #[error("the service manager did not start: {0} (see {MANAGER_LOG} in the VM)")]
    DidNotStart(std::io::Error),
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),
}

/// Where the service manager's binary is: beside the running binary (`feather`,
/// `feather-keeper` or the manager itself; cargo builds them into one folder, and an install
/// puts them in one folder). Inside a VM over the host's root that path is the same as on the
/// host. (The running binary's host path: a re-execution from a read-only mount keeps it,
/// feather_sys::own_program.)
pub fn program() -> Result<PathBuf, ClientError> {
    let exe = feather_sys::own_program::path().map_err(ClientError::OwnBinary)?;
    Ok(exe.with_file_name(PROGRAM))
}

/// Sends `request` to the VM's manager (starting one first if `start_if_absent`), after the
/// hello that checks both speak one [`protocol::VERSION`], and returns its answer. Runs inside
/// the VM.
pub fn call(request: &Request, start_if_absent: Option<&str>) -> Result<Response, ClientError> {
    let mut stream = match protocol::connect() {
        Ok(stream) => stream,
        Err(_) if start_if_absent.is_some() => {
            launch(start_if_absent.unwrap_or_default())?;
            let deadline = Instant::now() + MANAGER_START_TIMEOUT;
            loop {
                match protocol::connect() {
                    Ok(stream) => break stream,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => return Err(ClientError::DidNotStart(e)),
                }
            }
        }
        Err(_) => return Ok(Response::List { units: Vec::new() }),
    };
    protocol::greet_manager(&mut stream)?;
    protocol::send(&mut stream, request).map_err(protocol::ProtocolError::Send)?;
    Ok(protocol::receive(&stream).map_err(protocol::ProtocolError::Receive)?)
}

/// Whether a manager answers in this VM.
pub fn running() -> bool {
    protocol::connect().is_ok()
}

/// Starts the manager of VM `vm` detached: fork, new session, fork again; the grandchild
/// executes `feather-svcd --vm VM`, which serves ([`serve`]).
fn launch(vm: &str) -> Result<(), ClientError> {
    let program = program()?;
    if !program.exists() {
        return Err(ClientError::ManagerMissing(program));
    }
    fs::create_dir_all(RUN_DIR).map_err(ClientError::RunDir)?;
    match feather_sys::process::fork().map_err(ClientError::Fork)? {
        Some(child) => {
            // The intermediate child exits at once; reap it.
            let _ = nix::sys::wait::waitpid(child, None);
            Ok(())
        }
        None => {
            let _ = nix::unistd::setsid();
            match feather_sys::process::fork() {
                Ok(Some(_)) => std::process::exit(0),
                Ok(None) => {
                    // Nothing of the caller's (its stdout may be a pipe someone reads to the
                    // end) stays open in the manager.
                    if let Ok(log) = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(MANAGER_LOG)
                    {
                        let _ = feather_sys::process::redirect_stdio(&log);
                    }
                    // The spawner's socket (PrivateTmp=), if init handed it to this client.
                    feather_sys::process::close_other_fds(&[crate::private_tmp::SPAWNER_FD]);
                    let why = std::process::Command::new(&program)
                        .arg0(PROGRAM)
                        .args(["--vm", vm])
                        .exec();
                    eprintln!(
                        "feather-svc: cannot start the service manager {}: {why}",
                        program.display()
                    );
                    std::process::exit(1)
                }
                Err(_) => std::process::exit(1),
            }
        }
    }
}

/// The manager's main: one per VM (a lock decides), its pid recorded in [`PID_FILE`].
pub fn serve() -> i32 {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(MANAGER_LOG);
    if let Ok(log) = &log {
        let _ = feather_sys::process::redirect_stdio(log);
    }
    feather_sys::process::close_other_fds(&[crate::private_tmp::SPAWNER_FD]);
    let lock = match File::create(LOCK_FILE) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("feather-svc: {LOCK_FILE}: {e}");
            return 1;
        }
    };
    if nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err() {
        // Another manager won the race; the client talks to it.
        return 0;
    }
    let _ = fs::remove_file(SOCKET);
    let listener = match UnixListener::bind(SOCKET) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("feather-svc: {SOCKET}: {e}");
            return 1;
        }
    };
    if let Ok(mut pid_file) = File::create(PID_FILE) {
        let _ = writeln!(pid_file, "{}", std::process::id());
    }
    // The folders the host's boot makes in /run (systemd-tmpfiles), made in the VM's fresh one.
    for problem in crate::tmpfiles::create(&crate::tmpfiles::folders(std::path::Path::new("/"))) {
        eprintln!("feather-svc: {problem}");
    }
    let manager = match supervisor::Manager::new(listener) {
        Ok(manager) => manager,
        Err(e) => {
            eprintln!("feather-svc: {e}");
            return 1;
        }
    };
    manager.run();
    let _ = fs::remove_file(PID_FILE);
    0
}

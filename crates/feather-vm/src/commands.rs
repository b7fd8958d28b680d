//! init's command channel: how `feather exec` has the VM's init start its program, so that
//! every process of a VM descends from init and shares its Landlock domain (see
//! `docs/confinement.md`).
//!
//! ```text
//! feather exec ── connect @<init's abstract name>, in the VM's net namespace ──────────▶ init
//!   Exec { version, workload, terminal, spawner, unannounced } + stdin, stdout, stderr ─▶ fork:
//!                                                                     setsid, (TIOCSCTTY),
//!   ◀── Started { pid } (unless unannounced)  |  Failed { message }   dup2, become_workload
//!   Signal { signo } ──▶ kill(pid, signo)              (TERM, INT, HUP, QUIT, USR1, USR2)
//!   ◀── Exited { code }  (when init reaps the program; code, or 128 + signal), then close
//!   connection closed while the program runs ──▶ SIGHUP to it, as a terminal hang-up
//! ```
//!
//! The socket is a SOCK_SEQPACKET listener with a kernel-chosen abstract name in the VM's
//! network namespace, held by init at descriptor [`COMMAND_FD`]. `feather exec` finds it through
//! the kernel, by init's identity: it duplicates init's descriptor [`COMMAND_FD`] through init's
//! pidfd (`pidfd_getfd`), checks that it is a listening unix SOCK_SEQPACKET socket, asks the
//! kernel for its exact address (`getsockname`), connects, and before sending anything checks
//! that the peer of its connection is init (`SO_PEERCRED`: the pid that listens is init's). No
//! text a VM can write (`/proc/net/unix` lists socket names a VM chooses) is read. CRIU saves
//! and restores the listener like any listening socket, at the same descriptor number (a socket
//! pair to the keeper would be an external connection CRIU refuses to dump; a socket file bound
//! by init, pid 1, CRIU cannot restore). init serves only connections from outside its pid
//! namespace (the peer pid it sees is 0) made by root: a VM's own processes, root inside
//! included, cannot ask init to start anything.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    bind, connect, getsockname, getsockopt, listen, socket, sockopt, AddressFamily, Backlog,
    SockFlag, SockType, UnixAddr,
};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::workload::{become_workload, Workload};

/// The descriptor number at which init holds its command socket, so that `feather exec` can take
/// it from init by number (`pidfd_getfd`). High enough that nothing init inherits or opens
/// before it listens takes it by chance; checked free before use.
pub const COMMAND_FD: RawFd = 100;

/// The largest message either side sends (a workload's argv and environment).
pub const MAX_MESSAGE: usize = 128 * 1024;

/// Room in a message to init for what an `Exec` holds beside its workload's arguments and
/// environment (its other fields, a caller's attributes: a list of CPUs).
const EXEC_ROOM: usize = 16 * 1024;

/// Whether an `Exec` of `workload` fits in one message to init (checked before a VM is taken
/// for it, so that one that does not fit costs nothing).
pub fn fits(workload: &Workload) -> bool {
    serde_json::to_vec(workload).is_ok_and(|bytes| bytes.len() + EXEC_ROOM <= MAX_MESSAGE)
}

/// Changes whenever a message of this module changes. `feather` and the `feather-keeper` a VM's
/// init runs may come from different builds (a VM outlives an upgrade): an `Exec` of another
/// version is refused naming both, rather than misread.
pub const VERSION: u32 = 1;

/// What can go wrong on init's command channel, on either side.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{doing}")]
    Socket {
        doing: &'static str,
        #[source]
        source: Errno,
    },
    #[error("command socket at descriptor {COMMAND_FD}")]
    Place(#[source] feather_sys::SysError),
    #[error("the request did not carry stdin, stdout and stderr")]
    NoStdio,
    #[error("cannot start {argv:?}")]
    Start {
        argv: Vec<String>,
        #[source]
        source: feather_sys::SysError,
    },
    #[error("join the VM's network namespace")]
    Join(#[source] feather_sys::SysError),
    #[error("the socket at init's address is not init's (its listener is pid {listener}, init is {init})")]
    Impostor { listener: i32, init: Pid },
    #[error("cannot take init's command socket; is ptrace disabled on this host (kernel.yama.ptrace_scope = 3)? feather exec needs root's ptrace access to the VM's init")]
    NoPtrace(#[source] feather_sys::SysError),
    #[error("{STOPPING}")]
    NoSocket(#[source] feather_sys::SysError),
    #[error("{STOPPING}: its descriptor {COMMAND_FD} {what}")]
    NotTheSocket { what: &'static str },
    #[error("cannot start a thread to enter the VM's network namespace")]
    Thread(#[source] std::io::Error),
    #[error("the thread that entered the VM's network namespace panicked")]
    ThreadPanicked,
    #[error("exec protocol version {received}, where this VM's init speaks {expected} (the VM was started by another build of feather: restart it, or use that build's feather exec)")]
    Version { expected: u32, received: u32 },
}

/// What a missing or strange command socket most likely means.
const STOPPING: &str = "its init has no command socket (is the VM stopping?)";

fn socket_error(doing: &'static str) -> impl FnOnce(Errno) -> CommandError {
    move |source| CommandError::Socket { doing, source }
}

/// What `feather exec` asks of init.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToInit {
    /// Start `workload` with the three descriptors sent along as its stdin, stdout and stderr.
    /// `terminal`: the TERM of a terminal; the descriptors are then one terminal of the VM's
    /// devpts, which becomes the program's controlling terminal.
    Exec {
        /// The asker's [`VERSION`]; absent (0) from a build before versions were checked.
        #[serde(default)]
        version: u32,
        workload: Workload,
        terminal: Option<String>,
        /// The program is the VM's service client: it gets a duplicate of init's end of the
        /// spawner's socket (crate::spawner) at its number, for the manager it may start.
        #[serde(default)]
        spawner: bool,
        /// The asker does not wait for [`FromInit::Started`]: init answers only `Failed`, or
        /// `Exited` at the program's end, which spares `feather exec` a wake-up per command.
        /// Absent (false) from a build before it; an init of such a build answers `Started`
        /// anyway, which the asker then ignores.
        #[serde(default)]
        unannounced: bool,
    },
    /// Deliver this signal to the program.
    Signal { signo: i32 },
}

/// What init answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum FromInit {
    /// The program runs with this pid (inside the VM).
    Started {
        pid: i32,
    },
    Failed {
        message: String,
    },
    /// The program ended: its exit code, or 128 + the signal that killed it.
    Exited {
        code: i32,
    },
}

/// init's side: the listening socket and one session per connected `feather exec`.
pub struct Commands {
    listener: OwnedFd,
    sessions: Vec<Session>,
    /// init's end of the spawner's socket (`PrivateTmp=`), if the VM has a spawner.
    spawner: Option<OwnedFd>,
}

struct Session {
    connection: OwnedFd,
    program: Option<Pid>,
}

impl Commands {
    /// Opens the command socket at [`COMMAND_FD`]. Called by init before it reports ready.
    /// `spawner`: init's end of the spawner's socket, which the service client gets.
    pub fn listen(spawner: Option<OwnedFd>) -> Result<Commands, CommandError> {
        let socket = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(socket_error("command socket"))?;
        let listener = feather_sys::process::move_to_free_fd(socket, COMMAND_FD)
            .map_err(CommandError::Place)?;
        // An address of the family alone: the kernel picks a free abstract name.
        bind(listener.as_raw_fd(), &UnixAddr::new_unnamed())
            .map_err(socket_error("bind the command socket"))?;
        listen(&listener, Backlog::new(64).unwrap_or(Backlog::MAXCONN))
            .map_err(socket_error("listen on the command socket"))?;
        Ok(Commands {
            listener,
            sessions: Vec::new(),
            spawner,
        })
    }

    /// The descriptors to poll: the listener, then every session.
    pub fn poll_fds(&self) -> Vec<PollFd<'_>> {
        std::iter::once(&self.listener)
            .chain(self.sessions.iter().map(|s| &s.connection))
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect()
    }

    /// Acts on what [`Commands::poll_fds`] found ready (`ready[i]` for the i-th descriptor).
    pub fn handle(&mut self, ready: &[bool]) {
        // Sessions first, from the back, so that removing one keeps the others' indices.
        for index in (0..self.sessions.len()).rev() {
            if ready.get(index + 1) == Some(&true) && !self.serve(index) {
                let session = self.sessions.remove(index);
                // The exec side is gone while its program runs: a hang-up, as a terminal's.
                if let Some(pid) = session.program {
                    let _ = kill(pid, Signal::SIGHUP);
                }
            }
        }
        if ready.first() == Some(&true) {
            self.accept();
        }
    }

    /// Reports the end of `pid` to the session that started it; false if none did.
    pub fn exited(&mut self, pid: Pid, code: i32) -> bool {
        let Some(index) = self.sessions.iter().position(|s| s.program == Some(pid)) else {
            return false;
        };
        let session = self.sessions.remove(index);
        let _ = send(&session.connection, &FromInit::Exited { code }, &[]);
        true
    }

    fn accept(&mut self) {
        while let Ok(connection) = feather_sys::fdpass::accept(&self.listener) {
            // Only root outside the VM: a process of the VM's own pid namespace has a pid here.
            let from_host = getsockopt(&connection, sockopt::PeerCredentials)
                .is_ok_and(|c| c.pid() == 0 && c.uid() == 0);
            if from_host {
                self.sessions.push(Session {
                    connection,
                    program: None,
                });
            }
        }
    }

    /// Reads one message of session `index`; false once the connection is closed.
    fn serve(&mut self, index: usize) -> bool {
        let session = &mut self.sessions[index];
        let (message, fds) = match receive(&session.connection) {
            Ok(Some(received)) => received,
            Ok(None) => return false,
            Err(Errno::EAGAIN | Errno::EINTR) => return true,
            Err(_) => return false,
        };
        match (message, session.program) {
            (
                ToInit::Exec {
                    version,
                    workload,
                    terminal,
                    spawner,
                    unannounced,
                },
                None,
            ) => {
                let spawner = if spawner { self.spawner.as_ref() } else { None };
                let started = admit(version)
                    .and_then(|()| start(&workload, terminal.as_deref(), fds, spawner));
                let reply = match started {
                    Ok(pid) => {
                        session.program = Some(pid);
                        FromInit::Started { pid: pid.as_raw() }
                    }
                    Err(e) => FromInit::Failed {
                        message: feather_core::error::causes(&e),
                    },
                };
                let started = matches!(reply, FromInit::Started { .. });
                if started && unannounced {
                    return true;
                }
                send(&session.connection, &reply, &[]).is_ok() && started
            }
            (ToInit::Signal { signo }, Some(pid)) => {
                if let Ok(signal) = Signal::try_from(signo) {
                    let _ = kill(pid, signal);
                }
                true
            }
            _ => false,
        }
    }
}

/// An `Exec` of this module's [`VERSION`] is served; any other is refused, naming both.
fn admit(version: u32) -> Result<(), CommandError> {
    if version == VERSION {
        Ok(())
    } else {
        Err(CommandError::Version {
            expected: VERSION,
            received: version,
        })
    }
}

/// Forks the program: a session of its own (with `terminal`, the terminal sent along becomes
/// its controlling terminal), the three descriptors as its stdio, then the workload's user,
/// environment and folder. It inherits init's namespaces, cgroup, seccomp filter, capability
/// set and Landlock domain.
fn start(
    workload: &Workload,
    terminal: Option<&str>,
    fds: Vec<OwnedFd>,
    spawner: Option<&OwnedFd>,
) -> Result<Pid, CommandError> {
    let [stdin, stdout, stderr]: [OwnedFd; 3] =
        fds.try_into().map_err(|_| CommandError::NoStdio)?;
    match feather_sys::process::fork() {
        Ok(Some(pid)) => Ok(pid),
        Ok(None) => {
            let _ = nix::unistd::setsid();
            if terminal.is_some() {
                if let Err(e) = feather_sys::pty::make_controlling(&stdin) {
                    let _ = nix::unistd::dup2_stderr(&stderr);
                    eprintln!("feather: {e}");
                    std::process::exit(crate::workload::EXIT_CANNOT_EXEC);
                }
            }
            let redirected = nix::unistd::dup2_stdin(&stdin)
                .and_then(|_| nix::unistd::dup2_stdout(&stdout))
                .and_then(|_| nix::unistd::dup2_stderr(&stderr));
            if redirected.is_err() {
                std::process::exit(crate::workload::EXIT_CANNOT_EXEC);
            }
            drop((stdin, stdout, stderr));
            if let Some(spawner) = spawner {
                // Only this program keeps it across its exec; init's own stays close-on-exec.
                if feather_sys::process::keep_across_exec(spawner).is_err() {
                    std::process::exit(crate::workload::EXIT_CANNOT_EXEC);
                }
            }
            let why = become_workload(workload, terminal);
            eprintln!("feather: {}", feather_core::error::causes(&why));
            std::process::exit(why.exit_code());
        }
        Err(source) => Err(CommandError::Start {
            argv: workload.argv.clone(),
            source,
        }),
    }
}

/// The exec side: takes init's command socket from init itself (`init` held by `pidfd`, whose
/// start time the caller checked), joins the VM's network namespace, where its abstract name
/// lives, connects, and proves the connection reached init before anything is sent.
pub fn connect_to_init(init: Pid, pidfd: &impl AsFd) -> Result<OwnedFd, CommandError> {
    let address = command_socket_address(pidfd)?;
    feather_sys::process::join_namespaces(pidfd, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(CommandError::Join)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(socket_error("socket"))?;
    connect(fd.as_raw_fd(), &address).map_err(socket_error("connect to init's socket"))?;
    // The peer's credentials are the listener's, taken by the kernel when it called listen():
    // its pid, as this (host) pid namespace sees it, must be init's.
    let peer = getsockopt(&fd, sockopt::PeerCredentials)
        .map_err(socket_error("SO_PEERCRED on init's socket"))?;
    if peer.pid() != init.as_raw() {
        return Err(CommandError::Impostor {
            listener: peer.pid(),
            init,
        });
    }
    Ok(fd)
}

/// The exact abstract address of init's command socket, from the kernel: a duplicate of init's
/// descriptor [`COMMAND_FD`] must be a listening unix SOCK_SEQPACKET socket, and its own name
/// is what `getsockname` answers.
fn command_socket_address(pidfd: &impl AsFd) -> Result<UnixAddr, CommandError> {
    let listener = feather_sys::process::take_fd(pidfd, COMMAND_FD).map_err(|e| match e.errno {
        // pidfd_getfd asks for ptrace access to init, which Yama's mode 3 refuses even root.
        nix::errno::Errno::EPERM => CommandError::NoPtrace(e),
        _ => CommandError::NoSocket(e),
    })?;
    let is_listening_seqpacket = getsockopt(&listener, sockopt::SockType)
        .is_ok_and(|t| t == SockType::SeqPacket)
        && getsockopt(&listener, sockopt::AcceptConn).unwrap_or(false);
    if !is_listening_seqpacket {
        return Err(CommandError::NotTheSocket {
            what: "is not a listening SOCK_SEQPACKET socket",
        });
    }
    let address: UnixAddr =
        getsockname(listener.as_raw_fd()).map_err(socket_error("getsockname of init's socket"))?;
    if address.as_abstract().is_none() {
        return Err(CommandError::NotTheSocket {
            what: "has no abstract unix address",
        });
    }
    Ok(address)
}

/// Sends one message with `fds` attached. E2BIG if it is longer than [`MAX_MESSAGE`].
pub fn send(socket: &impl AsFd, message: &impl Serialize, fds: &[RawFd]) -> nix::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(|_| Errno::EINVAL)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(Errno::E2BIG);
    }
    feather_sys::fdpass::send(socket, &bytes, fds)
}

/// Receives one message and the descriptors sent with it; `None` once the peer closed.
pub fn receive<T: for<'de> Deserialize<'de>>(
    socket: &impl AsFd,
) -> nix::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let (length, fds) = feather_sys::fdpass::receive(socket, &mut buffer)?;
    if length == 0 {
        return Ok(None);
    }
    serde_json::from_slice(&buffer[..length])
        .map(|message| Some((message, fds)))
        .map_err(|_| Errno::EBADMSG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `unannounced` crosses builds both ways: absent (an earlier asker), it is false, and an
    /// init that does not know it (an earlier build) reads the request all the same.
    #[test]
    fn an_unannounced_exec_is_read_by_either_build() {
        let earlier: ToInit = serde_json::from_str(
            r#"{"op":"exec","version":1,"workload":{"argv":["true"],"env":[],"cwd":null,"user":null},"terminal":null}"#,
        )
        .unwrap();
        assert!(matches!(
            earlier,
            ToInit::Exec {
                unannounced: false,
                ..
            }
        ));
        let newer = serde_json::to_value(ToInit::Exec {
            version: VERSION,
            workload: Workload {
                argv: vec!["true".into()],
                env: Vec::new(),
                cwd: None,
                user: None,
                inherited: None,
            },
            terminal: None,
            spawner: false,
            unannounced: true,
        })
        .unwrap();
        assert_eq!(newer["unannounced"], true);
        #[derive(Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        enum EarlierToInit {
            Exec { version: u32, workload: Workload },
        }
        let EarlierToInit::Exec { version, workload } = serde_json::from_value(newer).unwrap();
        assert_eq!((version, workload.argv), (VERSION, vec!["true".to_owned()]));
    }

    #[test]
    fn an_exec_of_another_version_is_refused_naming_both() {
        let old: ToInit =
            serde_json::from_str(r#"{"op":"exec","workload":{"argv":["true"],"env":[],"cwd":null,"user":null},"terminal":null}"#)
                .unwrap();
        let ToInit::Exec { version, .. } = old else {
            panic!("{old:?}")
        };
        let error = admit(version).unwrap_err();
        assert!(matches!(
            error,
            CommandError::Version {
                expected: VERSION,
                received: 0
            }
        ));
        assert!(
            error
                .to_string()
                .contains("version 0, where this VM's init speaks 1"),
            "{error}"
        );
        assert!(admit(VERSION).is_ok());
    }
}

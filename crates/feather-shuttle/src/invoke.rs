//! Application invocation: `feather-open APP [PATH…]` inside a VM asks its keeper's broker to
//! run APP in another VM; the policy names the applications, the command line and what the
//! arguments may be.
//!
//! ```text
//! feather-open (in VM A) ── /run/feather/shuttle.sock (SOCK_SEQPACKET, in A's /run) ──▶ broker
//!   ◀── Hello { version }
//!   Open { version, app, vm, args, cwd } ──▶  gate: invoke APP A→B; per path, files PATH A→B
//!                                    hand the paths over (see transfer), start B on demand,
//!                                    run COMMAND REWRITTEN-ARGS in B (Peers::run) on three pipes
//!   ◀── Started { argv } + the pipes' other ends (stdin, stdout, stderr)
//!   ◀── Exited { code }  (then the hand-over mounts are gone)
//!   or ◀── Refused { why }  |  Failed { why }
//! ```
//!
//! The messages are [`crate::protocol::open`]'s. The program's output comes back through the
//! pipes: no descriptor of the requester, its
//! terminal least of all, ever reaches the target VM.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{
    connect, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::audit::Outcome;
use crate::gate::{Gate, Refusal};
use crate::peers::{Peers, PeersError, Running};
use crate::policy::{Decision, Kind, Party, Request, Rule, Verdict};
use crate::protocol::open::{Answer, Open, VERSION};
use crate::protocol::share::{Found, Go, Plan};
use crate::protocol::{self, ProtocolError, MAX_MESSAGE};
use crate::side::VmSide;
use crate::transfer::{self, Helper};

/// Where `feather-open` finds its VM's broker, in the VM's view.
pub const SOCKET_IN_VM: &str = "/run/feather/shuttle.sock";

/// `feather-open`'s exit status when the policy refused the request.
pub const EXIT_REFUSED: i32 = 77;
/// `feather-open`'s exit status when the request was allowed but could not be carried out
/// (no broker, the target would not start, a path could not be handed over).
pub const EXIT_FAILED: i32 = 125;

/// How long a program may take to end after its requester hung up.
const HANG_UP_GRACE: Duration = Duration::from_secs(5);

/// Requests one VM may have in flight at once; more connections are closed unanswered, so a
/// VM cannot make its keeper start threads without end.
const MAX_IN_FLIGHT: usize = 32;

/// Why a VM's invocation endpoint could not be opened (the VM runs without it).
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("VM {vm}: cannot open {SOCKET_IN_VM}: {error}")]
    Bind { vm: String, error: BindError },
    #[error("VM {vm}: pipe: {errno}")]
    Pipe { vm: String, errno: Errno },
    #[error("cannot start the invocation thread: {0}")]
    Thread(std::io::Error),
}

/// Why the socket in the VM's `/run/feather` could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{0}")]
    Root(std::io::Error),
    #[error("{}: {}", path, errno.desc())]
    Folder { path: &'static str, errno: Errno },
    #[error("bind: {0}")]
    Bind(crate::endpoint::EndpointError),
    #[error("listen: {0}")]
    Listen(Errno),
}

/// Why an allowed program could not be run in the target.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("pipe: {0}")]
    Pipe(Errno),
    /// The keeper could not run it.
    #[error("{0}")]
    Peer(PeersError),
}

/// Why `feather-open` did not run the program; each says which exit status it ends with.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("socket: {0}")]
    Socket(Errno),
    #[error("{0}")]
    Address(Errno),
    #[error(
        "cannot reach the shuttle at {SOCKET_IN_VM}: {} (run this inside a feather VM that a \
         policy `invoke` rule lets invoke applications; the VM reads the policy when it starts)",
        .0.desc()
    )]
    Unreachable(Errno),
    #[error("the arguments are too long")]
    TooLong,
    #[error("cannot send the request: {0}")]
    Send(Errno),
    #[error("the shuttle: {0}")]
    Protocol(ProtocolError),
    #[error("the broker sent no pipes")]
    NoPipes,
    #[error("refused: {0}")]
    Refused(String),
    #[error("failed: {0}")]
    Failed(String),
    #[error("the shuttle went away before the program ended (did the VM stop?)")]
    Gone,
}

impl OpenError {
    /// `feather-open`'s exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            OpenError::Refused(_) => EXIT_REFUSED,
            _ => EXIT_FAILED,
        }
    }
}

/// A VM's invocation endpoint: the socket in its `/run` and the thread that serves it.
/// Dropping it closes the socket and ends the programs still running for it.
pub struct Invocations {
    /// Closing it tells the listening thread to stop.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    running: RunningPrograms,
    /// What the connection threads share: their count tells when every hand-over is gone.
    context: Arc<Context>,
}

/// The programs started for a VM's requests, by a number of their own.
type RunningPrograms = Arc<Mutex<HashMap<u64, Arc<dyn Running>>>>;

/// What every connection's thread shares.
struct Context {
    side: Arc<VmSide>,
    gate: Arc<Gate>,
    peers: Arc<dyn Peers>,
    running: RunningPrograms,
    in_flight: AtomicUsize,
    /// The start time of the VM's init, taken while the keeper holds it as its child.
    source_ticks: Option<u64>,
}

/// The start time of `pid` if it is a VM's init (the helper enters only that process).
fn init_ticks(pid: i32) -> Option<u64> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let ticks = feather_sys::process::start_ticks(Pid::from_raw(pid));
    (comm.trim_end() == "feather-init")
        .then_some(ticks)
        .flatten()
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Invocations {
    /// Opens the endpoint if the policy lets the VM invoke anything (else `Ok(None)`: a VM
    /// without invoke rules pays nothing).
    pub fn open(
        side: Arc<VmSide>,
        gate: Arc<Gate>,
        peers: Arc<dyn Peers>,
    ) -> Result<Option<Invocations>, InvokeError> {
        let source = side.party();
        if gate
            .policy()
            .offered_to(Kind::Invoke, &source)
            .next()
            .is_none()
        {
            return Ok(None);
        }
        let listener = bind_in_vm(side.init_pid).map_err(|error| InvokeError::Bind {
            vm: side.name.clone(),
            error,
        })?;
        let (stop_read, stop_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|errno| InvokeError::Pipe {
                vm: side.name.clone(),
                errno,
            })?;
        let running: RunningPrograms = Arc::new(Mutex::new(HashMap::new()));
        let source_ticks = init_ticks(side.init_pid);
        let context = Arc::new(Context {
            side,
            gate,
            peers,
            running: running.clone(),
            in_flight: AtomicUsize::new(0),
            source_ticks,
        });
        let shared = context.clone();
        let thread = std::thread::Builder::new()
            .name("shuttle-invoke".into())
            .spawn(move || {
                // The keeper takes its signals through a signalfd, which works only while no
                // thread lets them in; the connection threads inherit this mask (and programs
                // started with std's Command get a clean one).
                let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None);
                accept_loop(&listener, &stop_read, &context)
            })
            .map_err(InvokeError::Thread)?;
        Ok(Some(Invocations {
            stop: Some(stop_write),
            thread: Some(thread),
            running,
            context: shared,
        }))
    }
}

impl Drop for Invocations {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The VM ends: so do the programs it asked for, and with each its hand-over, which
        // its connection's thread unmounts as the program ends. Waited for (SIGKILL after
        // the grace a hang-up gets), so that what the keeper does next, ending what the
        // targets still hold of the VM's files (feather-vm `handed_over`), finds no
        // hand-over still mounted there, through which a target's process could open more.
        for signal in [Signal::SIGTERM, Signal::SIGKILL] {
            for program in self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
            {
                let _ = program.signal(signal);
            }
            let deadline = Instant::now() + HANG_UP_GRACE;
            while self.context.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.context.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
        }
    }
}

/// Binds the listening socket at [`SOCKET_IN_VM`] in the VM's `/run`, reached through
/// `/proc/<init>/root` without following any symlink the VM may have planted.
fn bind_in_vm(init_pid: i32) -> Result<OwnedFd, BindError> {
    let root: OwnedFd = std::fs::File::open(format!("/proc/{init_pid}/root"))
        .map_err(BindError::Root)?
        .into();
    let strict = || {
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS)
    };
    let folder = |path: &'static str| move |errno| BindError::Folder { path, errno };
    let run = openat2(&root, "run", strict()).map_err(folder("/run"))?;
    match nix::sys::stat::mkdirat(&run, "feather", Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err(folder("/run/feather")(errno)),
    }
    let dir = openat2(&run, "feather", strict()).map_err(folder("/run/feather"))?;
    listen_in(&dir)
}

/// Binds and listens at `shuttle.sock` in `dir` (the VM's `/run/feather`), replacing what
/// was there.
fn listen_in(dir: &OwnedFd) -> Result<OwnedFd, BindError> {
    let _ = nix::unistd::unlinkat(dir, "shuttle.sock", nix::unistd::UnlinkatFlags::NoRemoveDir);
    // Anyone in the VM may ask (the policy decides): the socket is born 0666, never chmodded
    // by name afterwards (the VM's processes may already run, after a restore).
    let listener = crate::endpoint::bind_in(
        dir,
        std::ffi::OsStr::new("shuttle.sock"),
        SockType::SeqPacket,
        0o666,
    )
    .map_err(BindError::Bind)?;
    listen(&listener, Backlog::new(16).unwrap_or(Backlog::MAXCONN)).map_err(BindError::Listen)?;
    Ok(listener)
}

fn accept_loop(listener: &OwnedFd, stop: &OwnedFd, context: &Arc<Context>) {
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        while let Ok(connection) = feather_sys::fdpass::accept(listener) {
            if context.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
                context.in_flight.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let serving = context.clone();
            let spawned = std::thread::Builder::new()
                .name("shuttle-open".into())
                .spawn(move || {
                    serve(&serving, connection);
                    serving.in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                context.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Why an invocation did not happen.
enum Stop {
    Refused(String),
    Failed(String),
}

impl From<Refusal> for Stop {
    fn from(refusal: Refusal) -> Stop {
        Stop::Refused(refusal.to_string())
    }
}

fn serve(context: &Context, connection: OwnedFd) {
    // Blocking from here on; a requester that never sends is dropped after a while.
    let _ = nix::fcntl::fcntl(&connection, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
    let _ = nix::sys::socket::setsockopt(
        &connection,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(10, 0),
    );
    let requester = match getsockopt(&connection, sockopt::PeerCredentials) {
        Ok(creds) => Requester {
            pid: creds.pid(),
            uid: creds.uid(),
        },
        Err(_) => return,
    };
    if send(&connection, &Answer::Hello { version: VERSION }, &[]).is_err() {
        return;
    }
    let open = match receive::<Open>(&connection) {
        Ok(Some((open, _))) => open,
        _ => return,
    };
    if let Err(e) = protocol::check_version("a feather-open", VERSION, open.version) {
        let _ = send(&connection, &Answer::Failed { why: e.to_string() }, &[]);
        return;
    }
    let _ = nix::sys::socket::setsockopt(
        &connection,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 0),
    );
    // Each request is decided by the rules as they are now (a malformed file refuses all).
    if let Err(why) = context.gate.reload() {
        eprintln!("feather shuttle: VM {}: {why}", context.side.name);
    }
    let answer = match invoke(context, &open, &requester, &connection) {
        Ok(code) => Answer::Exited { code },
        Err(Stop::Refused(why)) => Answer::Refused { why },
        Err(Stop::Failed(why)) => Answer::Failed { why },
    };
    let _ = send(&connection, &answer, &[]);
}

/// Who asked: the peer of the connection, as the host sees it.
struct Requester {
    pid: i32,
    uid: u32,
}

impl Requester {
    fn describe(&self) -> String {
        format!("requested by pid {} (host) uid {}", self.pid, self.uid)
    }
}

/// Decides, hands the paths over, runs the program and waits for it; returns its exit code.
fn invoke(
    context: &Context,
    open: &Open,
    requester: &Requester,
    connection: &OwnedFd,
) -> Result<i32, Stop> {
    let gate = &context.gate;
    let source = context.side.party();
    let detail = requester.describe();
    // Checked before any rule is consulted: a pattern rule (`invoke * …`) must never match a
    // path or a command line that would then run as the command.
    if !is_app_name(&open.app) {
        let why = format!(
            "{:?} is not an application name (letters, digits, '.', '_', '-', '@')",
            open.app
        );
        let request = Request {
            kind: Kind::Invoke,
            object: open.app.clone(),
            source,
            target: Party::vm("-", &[]),
        };
        let denied = Decision {
            verdict: Verdict::Deny,
            rule: None,
        };
        let _ = gate.record(
            &request,
            &denied,
            &Outcome::Denied,
            Some(format!("{why}; {detail}")),
        );
        return Err(Stop::Refused(why));
    }
    let target = target_of(context, open)?;
    let request = Request {
        kind: Kind::Invoke,
        object: open.app.clone(),
        source: source.clone(),
        target: target.clone(),
    };
    let rule = gate.check_for(&request, Some(&detail))?;
    let fail = |why: String| {
        gate.record_failure(&request, &rule, &why);
        why
    };
    let Party::Vm {
        name: target_vm, ..
    } = &target
    else {
        return Err(Stop::Failed(fail(
            "running applications on the host is not supported yet: name a VM".into(),
        )));
    };
    let items = match argument_mode(&rule) {
        Args::Any => None,
        Args::None if open.args.is_empty() => Some(Vec::new()),
        Args::None => {
            return Err(Stop::Refused(fail(format!(
                "{} takes no arguments ({}: args=none)",
                open.app, rule.at
            ))))
        }
        Args::Files => Some(file_items(context, open, &request, &rule, &detail)?),
    };
    let mut helper = None;
    let mut shared_args = Vec::new();
    if let Some(items) = items.filter(|items| !items.is_empty()) {
        let id = format!(
            "{}-{}-{}",
            context.side.name,
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let command = context
            .peers
            .helper(transfer::HELPER_SUBCOMMAND)
            .map_err(|why| Stop::Failed(fail(why.to_string())))?;
        let plan = Plan {
            version: crate::protocol::share::VERSION,
            source_pid: context.side.init_pid,
            source_ticks: context.source_ticks,
            id,
            items: items.iter().map(|item| item.path.clone()).collect(),
        };
        let mut started =
            Helper::spawn(command, &plan).map_err(|why| Stop::Failed(fail(why.to_string())))?;
        let resolved = started
            .resolved()
            .map_err(|why| Stop::Failed(fail(why.to_string())))?;
        let mut writable = Vec::new();
        let mut fsids = Vec::new();
        for (item, found) in items.iter().zip(resolved) {
            let found = found.map_err(|why| Stop::Refused(fail(why.to_string())))?;
            let real_rw = real_path_allowed(context, &request, item, &found, &detail, &fail)?;
            writable.push(item.writable && real_rw);
            fsids.extend(found.fsid);
        }
        let target_pid = context
            .peers
            .start(target_vm)
            .map_err(|why| Stop::Failed(fail(format!("VM {target_vm} would not start: {why}"))))?;
        // Recorded before the mount: a keeper killed right after it still leaves the record
        // its VM's next stop, start or recovery goes by.
        if !fsids.is_empty() {
            context
                .peers
                .handing_over(&context.side.name, target_vm, &fsids)
                .map_err(|why| Stop::Failed(fail(why.to_string())))?;
        }
        shared_args = started
            .mount(&Go {
                target_pid,
                target_ticks: init_ticks(target_pid),
                writable,
            })
            .map_err(|why| Stop::Failed(fail(why.to_string())))?;
        helper = Some(started);
    } else {
        context
            .peers
            .start(target_vm)
            .map_err(|why| Stop::Failed(fail(format!("VM {target_vm} would not start: {why}"))))?;
    }
    let mut argv = command_of(&rule, &open.app);
    if helper.is_some() {
        argv.extend(shared_args);
    } else if matches!(argument_mode(&rule), Args::Any) {
        argv.extend(open.args.iter().cloned());
    }
    let code = run(context, target_vm, &argv, requester.uid, connection)
        .map_err(|why| Stop::Failed(fail(why.to_string())));
    // The program ended: the hand-over mounts go.
    drop(helper);
    code
}

/// The target: the one named, or the single VM the first rule offering the app names.
fn target_of(context: &Context, open: &Open) -> Result<Party, Stop> {
    if let Some(vm) = &open.vm {
        vm.parse::<feather_core::VmName>()
            .map_err(|e| Stop::Refused(e.to_string()))?;
        return Ok(Party::vm(vm.clone(), &context.peers.tags(vm)));
    }
    let policy = context.gate.policy();
    let source = context.side.party();
    let offering = policy
        .offered_to(Kind::Invoke, &source)
        .find(|rule| rule.object.matches(&open.app));
    match offering {
        // No rule offers it: the gate records the default decision against no one in
        // particular.
        None => Ok(Party::vm("-", &[])),
        Some(rule) => match rule.target.single() {
            Some(Party::Vm { name, .. }) => {
                let tags = context.peers.tags(&name);
                Ok(Party::vm(name, &tags))
            }
            Some(Party::Host) => Ok(Party::Host),
            None => Err(Stop::Refused(format!(
                "{} may run {} in more than one VM ({}): name one with --vm",
                rule.at, open.app, rule.target
            ))),
        },
    }
}

/// A path to hand over: absolute in the source, and whether its `files` rule says `mode=rw`.
struct Item {
    path: String,
    writable: bool,
}

/// What a rule lets the requester's arguments be.
enum Args {
    None,
    Files,
    Any,
}

fn argument_mode(rule: &Rule) -> Args {
    match rule.option("args") {
        Some("none") => Args::None,
        Some("any") => Args::Any,
        _ => Args::Files,
    }
}

/// The command line in the target: the rule's `command=`, or the app looked up in the
/// target's PATH.
fn command_of(rule: &Rule, app: &str) -> Vec<String> {
    rule.option("command")
        .and_then(shlex::split)
        .filter(|words| !words.is_empty())
        .unwrap_or_else(|| vec![app.to_owned()])
}

/// With `args=files`: every argument a path, each allowed by a `files` rule (which says
/// whether it is writable).
fn file_items(
    context: &Context,
    open: &Open,
    invoke: &Request,
    rule: &Rule,
    detail: &str,
) -> Result<Vec<Item>, Stop> {
    let mut items = Vec::new();
    for arg in &open.args {
        if arg.starts_with('-') {
            let why = format!(
                "argument {arg:?} is not a path: {} passes only paths to {} (args=files)",
                rule.at, open.app
            );
            context.gate.record_failure(invoke, rule, &why);
            return Err(Stop::Refused(why));
        }
        let path = transfer::requested_path(arg, &open.cwd).map_err(|fault| {
            let why = fault.to_string();
            context.gate.record_failure(invoke, rule, &why);
            Stop::Refused(why)
        })?;
        let files = Request {
            kind: Kind::Files,
            object: path.clone(),
            source: invoke.source.clone(),
            target: invoke.target.clone(),
        };
        let allowing = context
            .gate
            .check_for(&files, Some(detail))
            .map_err(|refusal| {
                let why = format!("path {path}: {refusal}");
                context.gate.record_failure(invoke, rule, &why);
                Stop::Refused(why)
            })?;
        items.push(Item {
            path,
            writable: allowing.option("mode") == Some("rw"),
        });
    }
    Ok(items)
}

/// A path that led elsewhere through symlinks: where it led must be allowed too. Returns
/// whether that rule allows writing.
fn real_path_allowed(
    context: &Context,
    invoke: &Request,
    item: &Item,
    found: &Found,
    detail: &str,
    fail: &dyn Fn(String) -> String,
) -> Result<bool, Stop> {
    if found.real == item.path {
        return Ok(true);
    }
    let files = Request {
        kind: Kind::Files,
        object: found.real.clone(),
        source: invoke.source.clone(),
        target: invoke.target.clone(),
    };
    let detail = format!("{detail}; {} leads here", item.path);
    match context.gate.check_for(&files, Some(&detail)) {
        Ok(rule) => Ok(rule.option("mode") == Some("rw")),
        Err(refusal) => Err(Stop::Refused(fail(format!(
            "path {} leads to {}: {refusal}",
            item.path, found.real
        )))),
    }
}

/// Runs `argv` in `vm` as `uid` on three fresh pipes, hands their other ends to the requester
/// and waits for the program (or the requester's hang-up, which ends it).
fn run(
    context: &Context,
    vm: &str,
    argv: &[String],
    uid: u32,
    connection: &OwnedFd,
) -> Result<i32, RunError> {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(RunError::Pipe);
    let (stdin_read, stdin_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let program = context
        .peers
        .run(vm, argv, uid, [stdin_read, stdout_write, stderr_write])
        .map_err(RunError::Peer)?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    context
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, program.clone());
    let started = Answer::Started {
        vm: vm.to_owned(),
        argv: argv.to_vec(),
    };
    let sent = send(
        connection,
        &started,
        &[
            stdin_write.as_raw_fd(),
            stdout_read.as_raw_fd(),
            stderr_read.as_raw_fd(),
        ],
    );
    drop((stdin_write, stdout_read, stderr_read));
    if sent.is_err() {
        let _ = program.signal(Signal::SIGTERM);
    }
    let code = wait(program.as_ref(), connection);
    context
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    Ok(code)
}

/// Waits for `program`; if the requester hangs up first, the program is ended: SIGTERM, then
/// SIGKILL after [`HANG_UP_GRACE`].
fn wait(program: &dyn Running, connection: &OwnedFd) -> i32 {
    let mut hung_up: Option<Instant> = None;
    loop {
        match program.try_wait() {
            Ok(Some(code)) => return code,
            Ok(None) => {}
            // Its VM went away: the end of the program too.
            Err(_) => return EXIT_FAILED,
        }
        match hung_up {
            None => {
                let mut fds = [PollFd::new(connection.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) > 0 {
                    hung_up = Some(Instant::now());
                    let _ = program.signal(Signal::SIGTERM);
                }
            }
            Some(at) => {
                if at.elapsed() > HANG_UP_GRACE {
                    let _ = program.signal(Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn is_app_name(app: &str) -> bool {
    !app.is_empty()
        && app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Sends one message with `fds` attached.
fn send(socket: &impl AsFd, message: &impl Serialize, fds: &[RawFd]) -> Result<(), Errno> {
    let bytes = protocol::encode(message);
    if bytes.len() > MAX_MESSAGE {
        return Err(Errno::E2BIG);
    }
    feather_sys::fdpass::send(socket, &bytes, fds)
}

/// Receives one message and the descriptors sent with it; `None` once the peer closed.
fn receive<T: for<'de> Deserialize<'de>>(
    socket: &impl AsFd,
) -> Result<Option<(T, Vec<OwnedFd>)>, Errno> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let (length, fds) = feather_sys::fdpass::receive(socket, &mut buffer)?;
    if length == 0 {
        return Ok(None);
    }
    serde_json::from_slice(&buffer[..length])
        .map(|message| Some((message, fds)))
        .map_err(|_| Errno::EBADMSG)
}

/// Receives one message, or says what came instead of `expected`.
fn receive_expected<T: for<'de> Deserialize<'de>>(
    socket: &impl AsFd,
    expected: &'static str,
) -> Result<(T, Vec<OwnedFd>), OpenError> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        match feather_sys::fdpass::receive(socket, &mut buffer) {
            Ok((0, _)) => return Err(OpenError::Gone),
            Ok((length, fds)) => {
                return protocol::decode(&buffer[..length], expected)
                    .map(|message| (message, fds))
                    .map_err(OpenError::Protocol)
            }
            Err(Errno::EINTR) => {}
            Err(_) => return Err(OpenError::Gone),
        }
    }
}

/// `feather-open` (inside a VM): asks the broker, relays the program's stdin, stdout and
/// stderr, and returns its exit code — or [`EXIT_REFUSED`] / [`EXIT_FAILED`] with the reason
/// on stderr.
pub fn open(app: &str, vm: Option<&str>, args: &[String]) -> i32 {
    match try_open(app, vm, args) {
        Ok(code) => code,
        Err(why) => {
            eprintln!("feather-open: {why}");
            why.exit_code()
        }
    }
}

fn try_open(app: &str, vm: Option<&str>, args: &[String]) -> Result<i32, OpenError> {
    let socket = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(OpenError::Socket)?;
    let address = UnixAddr::new(SOCKET_IN_VM).map_err(OpenError::Address)?;
    connect(socket.as_raw_fd(), &address).map_err(OpenError::Unreachable)?;
    const HELLO: &str = "the shuttle's hello";
    match receive_expected::<Answer>(&socket, HELLO)? {
        (Answer::Hello { version }, _) => {
            protocol::check_version("a shuttle", VERSION, version).map_err(OpenError::Protocol)?
        }
        (other, _) => return Err(out_of_turn(HELLO, &other)),
    }
    let cwd = std::env::current_dir()
        .map(|dir| dir.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/".into());
    let request = Open {
        version: VERSION,
        app: app.to_owned(),
        vm: vm.map(str::to_owned),
        args: args.to_vec(),
        cwd,
    };
    send(&socket, &request, &[]).map_err(|e| match e {
        Errno::E2BIG => OpenError::TooLong,
        e => OpenError::Send(e),
    })?;
    const OUTCOME: &str = "the program's start or end";
    let mut relays = Vec::new();
    loop {
        match receive_expected::<Answer>(&socket, OUTCOME)? {
            (Answer::Started { .. }, fds) => {
                let Ok([stdin, stdout, stderr]): Result<[OwnedFd; 3], _> = fds.try_into() else {
                    return Err(OpenError::NoPipes);
                };
                // stdin is not waited for: the program may end without reading it.
                let _ = std::thread::Builder::new()
                    .spawn(move || relay(std::io::stdin(), std::fs::File::from(stdin)));
                relays.push(std::thread::spawn(move || {
                    relay(std::fs::File::from(stdout), std::io::stdout())
                }));
                relays.push(std::thread::spawn(move || {
                    relay(std::fs::File::from(stderr), std::io::stderr())
                }));
            }
            (Answer::Exited { code }, _) => {
                for relay in relays {
                    let _ = relay.join();
                }
                return Ok(code);
            }
            (Answer::Refused { why }, _) => return Err(OpenError::Refused(why)),
            (Answer::Failed { why }, _) => return Err(OpenError::Failed(why)),
            (other @ Answer::Hello { .. }, _) => return Err(out_of_turn(OUTCOME, &other)),
        }
    }
}

fn out_of_turn(expected: &'static str, received: &Answer) -> OpenError {
    OpenError::Protocol(ProtocolError::Unexpected {
        expected,
        received: format!("{received:?}"),
    })
}

/// Copies until end of input (or a write fails).
fn relay(mut from: impl Read, mut to: impl Write) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                if to
                    .write_all(&buffer[..n])
                    .and_then(|()| to.flush())
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Where `feather-open` and the `xdg-open` hook are installed as links to `feather` (see
/// docs/shuttle.md): the name the binary was called by decides what it does.
pub fn called_as(argv0: &Path) -> Option<&'static str> {
    match argv0.file_name()?.to_str()? {
        "feather-open" => Some("feather-open"),
        "xdg-open" => Some("xdg-open"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse;

    /// A folder of the test's, removed on drop.
    struct Scratch(std::path::PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The VM (here a thread) keeps putting a symlink to a file of the host (the test's
    /// marker) where the socket is bound: the socket's mode is never set by following it.
    #[test]
    fn a_symlink_swapped_in_for_the_socket_is_never_chmodded() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::AtomicBool;
        let scratch = Scratch(
            std::env::temp_dir().join(format!("feather-invoke-chmod-{}", std::process::id())),
        );
        let _ = std::fs::remove_dir_all(&scratch.0);
        let run = scratch.0.join("run-feather");
        std::fs::create_dir_all(&run).unwrap();
        let marker = scratch.0.join("marker");
        std::fs::write(&marker, "host file").unwrap();
        std::fs::set_permissions(&marker, PermissionsExt::from_mode(0o600)).unwrap();
        let dir: OwnedFd = std::fs::File::open(&run).unwrap().into();
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let (link, socket) = (run.join("link"), run.join("shuttle.sock"));
                while !done.load(Ordering::Relaxed) {
                    let _ = std::os::unix::fs::symlink(&marker, &link);
                    let _ = std::fs::rename(&link, &socket);
                }
            });
            for _ in 0..20_000 {
                let _ = listen_in(&dir);
            }
            done.store(true, Ordering::Relaxed);
        });
        let mode = std::fs::metadata(&marker).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the host's file was chmodded");
        // Undisturbed, the socket is born 0666.
        let _ = std::fs::remove_file(run.join("shuttle.sock"));
        let _listener = listen_in(&dir).unwrap();
        let mode = std::fs::symlink_metadata(run.join("shuttle.sock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o666);
    }

    fn rule(line: &str) -> Rule {
        parse(Path::new("t.policy"), line).unwrap().remove(0)
    }

    #[test]
    fn the_command_line_comes_from_the_rule_or_is_the_app() {
        let given = rule("invoke viewer a b allow command=\"/usr/bin/less -R\"\n");
        assert_eq!(command_of(&given, "viewer"), ["/usr/bin/less", "-R"]);
        let default = rule("invoke viewer a b allow\n");
        assert_eq!(command_of(&default, "viewer"), ["viewer"]);
        assert!(matches!(argument_mode(&default), Args::Files));
        let none = rule("invoke viewer a b allow args=none\n");
        assert!(matches!(argument_mode(&none), Args::None));
        let any = rule("invoke viewer a b allow args=any\n");
        assert!(matches!(argument_mode(&any), Args::Any));
    }

    #[test]
    fn feather_opens_exit_status_is_chosen_by_the_error_variant() {
        assert_eq!(OpenError::Refused("no".into()).exit_code(), EXIT_REFUSED);
        for failed in [
            OpenError::Failed("x".into()),
            OpenError::Gone,
            OpenError::Protocol(ProtocolError::Version {
                peer: "a shuttle",
                expected: VERSION,
                received: VERSION + 1,
            }),
        ] {
            assert_eq!(failed.exit_code(), EXIT_FAILED, "{failed}");
        }
    }

    #[test]
    fn application_names_are_plain_words() {
        assert!(is_app_name("org.gnome.Evince"));
        assert!(is_app_name("xdg-open"));
        for bad in ["", "/bin/sh", "a b", "v;rm", "../x", "*"] {
            assert!(!is_app_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_name_called_by_picks_the_mode() {
        assert_eq!(
            called_as(Path::new("/usr/local/bin/feather-open")),
            Some("feather-open")
        );
        assert_eq!(called_as(Path::new("hook/xdg-open")), Some("xdg-open"));
        assert_eq!(called_as(Path::new("/usr/bin/feather")), None);
    }
}

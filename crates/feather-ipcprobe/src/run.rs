//! Running the probe: listeners and clients in their places, one direction at a time, and the
//! matrix assembled from what they report.
//!
//! ```text
//! host: lower listener (before the VMs start: its files are in their lower layer)
//! create + start VMs A and B (over the host's /)
//! host→VM   listener in A, client on the host
//! VM→host   listener on the host (+ the lower one), client in A (with a host terminal as its
//!           controlling terminal, and the machine-wide kernel operations)
//! VM→VM     listener in A, client in B
//! inside    listener in A, client in A (each started by A's init, as `feather exec` asks)
//! init→exec a throw-away VM C whose first program (started by init) is the client, and a
//!           listener entered into C as `feather exec` enters
//! ```
//! The probe is a library of the host: it creates, starts and removes VMs with
//! feather_vm::lifecycle and starts agents in them with feather_vm::program. The agent is the
//! binary [`AGENT_PROGRAM`] (`feather-probe __ipcprobe`, crate::agent::SUBCOMMAND), which also
//! keeps the throw-away VM ([`THROWAWAY_SUBCOMMAND`]); the probe never runs the `feather`
//! command line.
//! Every listener is stopped (stdin closed; killed after a timeout) before the next direction,
//! and removes what it made; the VMs the probe made are removed at the end, also on failure.
//!
//! A cross-boundary cell that a shuttle policy rule of the state root opens (a unix stream
//! socket or loopback port of the listener's VM, reachable in the client's) must be reached,
//! and is shown with its rule: with no rules the matrix is exactly the confinement's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use feather_core::{Limits, NetMode, NetworkConfig, StateRoot, VmName};
use feather_shuttle::policy::{Party, Policy, Request, Verdict};
use feather_vm::lifecycle::{self, CreateOptions};
use feather_vm::program::{launch, Launched};
use feather_vm::workload::Workload;
use nix::sys::signal::Signal;

use crate::agent::{Attempt, ClientPlan, Heard, Published, SOCKET_DIRS, SUBCOMMAND};
use crate::matrix::{Cell, Direction, Expect, Kind, Matrix, Outcome, Row};
use crate::raw;

/// The agent's binary, installed beside `feather`.
pub const AGENT_PROGRAM: &str = "feather-probe";

/// Where [`AGENT_PROGRAM`] is: beside the running binary.
pub fn agent_program() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(AGENT_PROGRAM))
}

/// The subcommand of the agent's binary that runs a throw-away VM whose first program is the
/// client (see [`throwaway_main`]).
pub const THROWAWAY_SUBCOMMAND: &str = "__ipcprobe-throwaway";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
#[error("ipc probe: {0}")]
pub struct ProbeError(String);

fn fail(what: impl Into<String>) -> ProbeError {
    ProbeError(what.into())
}

/// How to run the probe.
#[derive(Clone, Debug)]
pub struct ProbeSetup {
    /// The agent's binary ([`AGENT_PROGRAM`], run as `feather-probe __ipcprobe …`); it must be
    /// visible inside VMs at the same path (it is, under the default base `/`, unless it lives
    /// in feather's state folder).
    pub agent: PathBuf,
    pub root: Option<PathBuf>,
    /// A running VM of the user's to probe as VM A; without it the probe makes its own.
    pub vm: Option<String>,
    /// An OCI container (feather-oci's) to probe as VM A instead of a VM, entered as
    /// `feather-oci exec` enters it; its root must show the agent's binary at the same path
    /// (a container over the host's `/` does).
    pub container: Option<OciContainer>,
    /// Names the probe's VMs and objects (instead of this process's pid), so that shuttle
    /// policy rules can be written for them beforehand: VMs `ipcprobe-{a,b,c}-LABEL`, objects
    /// `fpLABEL{a,v,i,c,h,l}` (`v` for the VM→VM listener, in VM A).
    pub label: Option<String>,
}

/// A running OCI container: its runtime root (feather-oci's `--root`) and its id.
#[derive(Clone, Debug)]
pub struct OciContainer {
    pub runtime_root: PathBuf,
    pub id: String,
}

/// The subcommand of the agent's binary that runs the agent in an OCI container (see
/// [`enter_oci_main`]).
pub const ENTER_OCI_SUBCOMMAND: &str = "__ipcprobe-enter-oci";

impl ProbeSetup {
    /// The place that is VM A when it is the user's: their VM, or their OCI container.
    fn users_a(&self) -> Option<&str> {
        self.vm
            .as_deref()
            .or(self.container.as_ref().map(|c| c.id.as_str()))
    }

    fn container_at(&self, place: &str) -> Option<&OciContainer> {
        self.container.as_ref().filter(|c| c.id == place)
    }

    fn state_root(&self) -> StateRoot {
        StateRoot::new(self.root.clone())
    }

    /// The state root's folder, where its policy is.
    fn root_dir(&self) -> PathBuf {
        self.state_root().dir().to_path_buf()
    }

    /// VM `vm` as policy rules see it: its name and tags.
    fn party(&self, vm: &str) -> Party {
        let tags = vm
            .parse()
            .ok()
            .and_then(|name| self.state_root().open(&name).ok())
            .and_then(|dir| dir.read_config().ok())
            .map(|config| config.tags)
            .unwrap_or_default();
        Party::vm(vm, &tags)
    }

    /// Creates VM `vm` as `feather create` does by default, and starts it.
    fn create_and_start(&self, vm: &str) -> Result<(), ProbeError> {
        let name = vm_name(vm)?;
        let root = self.state_root();
        lifecycle::create(&root, &name, &vm_options())
            .map_err(|e| fail(format!("create {vm}: {e}")))?;
        lifecycle::start(&root, &name).map_err(|e| fail(format!("start {vm}: {e}")))?;
        Ok(())
    }

    /// The agent's command line: `AGENT __ipcprobe ARGS…`.
    fn agent_argv(&self, args: &[&str]) -> Vec<String> {
        let mut argv = vec![self.agent.display().to_string(), SUBCOMMAND.to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    }

    /// Starts the agent with `args` in `place`: a process of the host, or a program the VM's
    /// init starts (as `feather exec` does), with `stdio` as its stdin, stdout and stderr.
    fn agent(
        &self,
        place: Option<&str>,
        token: Option<&str>,
        args: &[&str],
        stdio: [OwnedFd; 3],
    ) -> Result<Agent, ProbeError> {
        let mut argv = self.agent_argv(args);
        let where_ = place.unwrap_or("the host");
        if let Some(container) = place.and_then(|p| self.container_at(p)) {
            // Entered by a fresh process of the agent's binary: joining a mount namespace
            // takes a single-threaded process.
            let enter = [
                self.agent.display().to_string(),
                ENTER_OCI_SUBCOMMAND.to_owned(),
                container.runtime_root.display().to_string(),
                container.id.clone(),
            ];
            argv.splice(0..0, enter);
        }
        match place.filter(|p| self.container_at(p).is_none()) {
            None => {
                let [stdin, stdout, stderr] = stdio;
                let mut command = Command::new(&argv[0]);
                command
                    .args(&argv[1..])
                    .stdin(stdin)
                    .stdout(stdout)
                    .stderr(stderr);
                if let Some(token) = token {
                    command.env("FPROBE_TOKEN", token);
                }
                command
                    .spawn()
                    .map(Agent::Host)
                    .map_err(|e| fail(format!("cannot start the agent on {where_}: {e}")))
            }
            Some(vm) => {
                let workload = Workload {
                    argv,
                    env: token
                        .map(|t| ("FPROBE_TOKEN".to_owned(), t.to_owned()))
                        .into_iter()
                        .collect(),
                    ..Workload::default()
                };
                launch(&self.state_root(), &vm_name(vm)?, &workload, stdio)
                    .map(Agent::Vm)
                    .map_err(|e| fail(format!("cannot start the agent in VM {vm}: {e}")))
            }
        }
    }
}

fn vm_name(vm: &str) -> Result<VmName, ProbeError> {
    vm.parse().map_err(|e| fail(format!("{vm}: {e}")))
}

/// What `feather create` makes by default: a private network, the default process limit.
fn vm_options() -> CreateOptions {
    CreateOptions {
        limits: Limits {
            pids: Some(Limits::DEFAULT_PIDS),
            ..Limits::default()
        },
        network: NetworkConfig {
            mode: NetMode::Private,
            ..NetworkConfig::default()
        },
        ..CreateOptions::default()
    }
}

/// A pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd), ProbeError> {
    std::io::pipe()
        .map(|(read, write)| (read.into(), write.into()))
        .map_err(|e| fail(format!("pipe: {e}")))
}

/// This process's stderr, for an agent whose errors go where the probe's go.
fn own_stderr() -> Result<OwnedFd, ProbeError> {
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| fail(format!("stderr: {e}")))
}

/// An agent process: on the host, or in a VM.
enum Agent {
    Host(Child),
    Vm(Launched),
}

impl Agent {
    /// Its exit code once it ended (`None` while it runs; 125 if its VM went away).
    fn try_wait(&mut self) -> Option<i32> {
        match self {
            Agent::Host(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.code().unwrap_or(128)),
                Ok(None) => None,
                Err(_) => Some(125),
            },
            Agent::Vm(launched) => launched.try_wait().unwrap_or(Some(125)),
        }
    }

    /// Waits at most `timeout` for its end; then kills it.
    fn wait_or_kill(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(code) = self.try_wait() {
                return Some(code);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    fn kill(&mut self) {
        match self {
            Agent::Host(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Agent::Vm(launched) => {
                let _ = launched.signal(Signal::SIGKILL);
                let _ = launched.wait();
            }
        }
    }
}

/// VMs the probe made, removed on drop.
struct TemporaryVms<'a> {
    setup: &'a ProbeSetup,
    names: Vec<String>,
}

impl Drop for TemporaryVms<'_> {
    fn drop(&mut self) {
        let root = self.setup.state_root();
        for name in &self.names {
            let Ok(name) = name.parse::<VmName>() else {
                continue;
            };
            match lifecycle::remove(&root, &name, true) {
                // The throw-away VM C is removed by its own run.
                Ok(())
                | Err(feather_vm::error::VmError::Core(feather_core::Error::NotFound(_))) => {}
                Err(e) => eprintln!(
                    "ipc probe: cannot remove its VM {name}: {}",
                    feather_core::error::causes(&e)
                ),
            }
        }
    }
}

/// A running listener; stopped (and killed if need be) on drop.
struct Listener {
    agent: Agent,
    stdin: Option<OwnedFd>,
    lines: Receiver<String>,
    published: Published,
}

impl Listener {
    fn start(
        setup: &ProbeSetup,
        place: Option<&str>,
        token: &str,
        extra: &[&str],
    ) -> Result<Listener, ProbeError> {
        let (stdin_read, stdin_write) = pipe()?;
        let (stdout_read, stdout_write) = pipe()?;
        let mut args = vec!["listen", "--token", token];
        args.extend(extra);
        let agent = setup.agent(
            place,
            Some(token),
            &args,
            [stdin_read, stdout_write, own_stderr()?],
        )?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(File::from(stdout_read))
                .lines()
                .map_while(Result::ok)
            {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut listener = Listener {
            agent,
            stdin: Some(stdin_write),
            lines,
            published: Published::default(),
        };
        let where_ = place.unwrap_or("the host");
        let line = listener
            .lines
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| {
                fail(format!(
                    "the listener in {where_} did not start (its error is above); in a VM it runs {} from the host's path",
                    setup.agent.display()
                ))
            })?;
        listener.published = serde_json::from_str(&line)
            .map_err(|e| fail(format!("the listener in {where_} said {line:?}: {e}")))?;
        // The host's client opens, appends to, signals and traces what this report names:
        // only the names the probe's own token gives are acted on.
        if let Some((field, said)) = listener.published.departure_from(token) {
            return Err(fail(format!(
                "the listener in {where_} published {field} {said:?}, not what its token {token}                  gives: refused, the host acts on no name a VM chose (in a VM the listener runs                  the VM's view of {}, which its root can replace)",
                setup.agent.display()
            )));
        }
        Ok(listener)
    }

    /// Stops the listener and returns what it heard.
    fn stop(mut self) -> Heard {
        drop(self.stdin.take());
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .and_then(|line| serde_json::from_str(&line).ok())
            .unwrap_or_default()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        drop(self.stdin.take());
        self.agent.wait_or_kill(Duration::from_secs(5));
    }
}

/// Reads `from` to its end on a thread of its own.
fn read_all(from: OwnedFd) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = File::from(from).read_to_end(&mut bytes);
        bytes
    })
}

/// Runs a client in `place` and returns its attempts.
fn client(
    setup: &ProbeSetup,
    place: Option<&str>,
    plan: &ClientPlan,
    with_terminal: bool,
) -> Result<Vec<Attempt>, ProbeError> {
    let json = serde_json::to_string(plan).map_err(|e| fail(e.to_string()))?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    // A host terminal as what stands for the client's stdin: the TIOCSTI cell is then the real
    // attack (typing into the terminal of whoever runs the client in the VM). The program in
    // the VM gets a pipe from the relay, never the terminal.
    let (_master, stdin) = if with_terminal {
        let (master, slave) = raw::open_pty().map_err(|e| fail(format!("openpty: {e}")))?;
        (Some(master), slave)
    } else {
        let (empty, _) = pipe()?;
        (None, empty)
    };
    let mut agent = setup.agent(
        place,
        None,
        &["attempt", &json],
        [stdin, stdout_write, stderr_write],
    )?;
    let (stdout, stderr) = (read_all(stdout_read), read_all(stderr_read));
    let where_ = place.unwrap_or("the host");
    if agent.wait_or_kill(CLIENT_TIMEOUT).is_none() {
        return Err(fail(format!(
            "the client in {where_} did not finish in {} s",
            CLIENT_TIMEOUT.as_secs()
        )));
    }
    let stdout = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
    serde_json::from_str(stdout.trim()).map_err(|e| {
        fail(format!(
            "the client in {where_} failed ({e}): {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&stderr.join().unwrap_or_default()).trim()
        ))
    })
}

/// Runs a client as the first program of a throw-away VM (so init starts it), and a listener
/// entered into that VM as `feather exec` enters; the client gets its plan on stdin once the
/// listener is up. The throw-away VM is kept by a fresh process of the agent's binary
/// ([`THROWAWAY_SUBCOMMAND`]): a VM's keeper clones its init, which only a single-threaded
/// process may do.
fn init_to_exec(setup: &ProbeSetup, vm: &str, token: &str) -> Result<Vec<Attempt>, ProbeError> {
    let root = setup.state_root();
    let mut runner = Command::new(&setup.agent)
        .arg(THROWAWAY_SUBCOMMAND)
        .arg(root.dir())
        .arg(root.run_dir())
        .arg(vm)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start VM {vm}: {e}")))?;
    let pid = runner.id();
    let mut stdin = runner.stdin.take();
    let (sender, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(runner.wait_with_output());
    });
    let kill_runner = || {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    // The VM is up once the agent runs in it.
    let deadline = Instant::now() + START_TIMEOUT;
    while check_agent_runs_in(setup, vm).is_err() {
        if Instant::now() > deadline {
            kill_runner();
            return Err(fail(format!("VM {vm} did not start")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let listener = match Listener::start(setup, Some(vm), token, &[]) {
        Ok(listener) => listener,
        Err(e) => {
            kill_runner();
            return Err(e);
        }
    };
    let plan = ClientPlan {
        main: listener.published.clone(),
        lower: None,
        kernel: false,
    };
    let json = serde_json::to_string(&plan).map_err(|e| fail(e.to_string()))?;
    if let Some(stdin) = stdin.as_mut() {
        let _ = writeln!(stdin, "{json}");
    }
    drop(stdin);
    let output = match result.recv_timeout(CLIENT_TIMEOUT) {
        Ok(output) => output.map_err(|e| fail(e.to_string()))?,
        Err(_) => {
            kill_runner();
            return Err(fail(format!("the client in VM {vm} did not finish")));
        }
    };
    // The VM ended with its first program; the listener was stopped with it and reports.
    let heard = listener.stop();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let attempts: Vec<Attempt> = serde_json::from_str(stdout.trim()).map_err(|e| {
        fail(format!(
            "the client started by init in {vm} failed ({e}): {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })?;
    Ok(merge(attempts, &heard))
}

/// `AGENT __ipcprobe-throwaway STATE_DIR RUN_DIR VM`: a throw-away VM whose first program is
/// the agent's client (its plan on stdin), kept by this process until the client ends; as
/// `feather run --rm` does. Returns the client's exit status.
pub fn throwaway_main(args: &[String]) -> i32 {
    let [state_dir, run_dir, vm] = args else {
        eprintln!("usage: {THROWAWAY_SUBCOMMAND} STATE_DIR RUN_DIR VM");
        return 2;
    };
    let Ok(agent) = std::env::current_exe() else {
        eprintln!("{THROWAWAY_SUBCOMMAND}: cannot find the agent's binary");
        return 125;
    };
    let root = StateRoot::with_dirs(state_dir.into(), run_dir.into());
    let name = match vm_name(vm) {
        Ok(name) => name,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let workload = Workload {
        argv: vec![
            agent.display().to_string(),
            SUBCOMMAND.to_owned(),
            "attempt".to_owned(),
            "-".to_owned(),
        ],
        ..Workload::default()
    };
    let peers = std::sync::Arc::new(feather_vm::peers::RootPeers::new(&root));
    match lifecycle::run_ephemeral(&root, &name, &vm_options(), workload, peers) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{THROWAWAY_SUBCOMMAND}: {e}");
            125
        }
    }
}

/// `AGENT __ipcprobe-enter-oci RUNTIME_ROOT ID ARGV…`: runs ARGV in the running OCI container
/// ID as `feather-oci exec` does (its namespaces, cgroup, the config's process with feather's
/// confinement), with this process's stdio and its `FPROBE_TOKEN`. Returns ARGV's exit status.
pub fn enter_oci_main(args: &[String]) -> i32 {
    let [root, id, command @ ..] = args else {
        eprintln!("usage: {ENTER_OCI_SUBCOMMAND} RUNTIME_ROOT ID ARGV…");
        return 2;
    };
    let exec = feather_oci::exec::ExecArgs {
        id: id.clone(),
        command: command.to_vec(),
        env: std::env::var("FPROBE_TOKEN")
            .map(|token| format!("FPROBE_TOKEN={token}"))
            .into_iter()
            .collect(),
        ..feather_oci::exec::ExecArgs::default()
    };
    match feather_oci::exec::exec(std::path::Path::new(root), &exec) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{ENTER_OCI_SUBCOMMAND}: OCI container {id}: {e:#}");
            125
        }
    }
}

/// Channels whose outcome is the listener's report, not the client's.
fn confirmed_by_listener(channel: &str) -> Option<&'static str> {
    match channel {
        "file-write" => Some("file-changed"),
        "inotify-listener-watches" => Some("inotify:"),
        _ => None,
    }
}

fn merge(attempts: Vec<Attempt>, heard: &Heard) -> Vec<Attempt> {
    attempts
        .into_iter()
        .map(|mut attempt| {
            if let Some(event) = confirmed_by_listener(&attempt.channel) {
                let noticed = heard.events.iter().any(|e| e.starts_with(event));
                if attempt.outcome.kind == Kind::Reached && !noticed {
                    attempt.outcome = Outcome::new(
                        Kind::Invisible,
                        format!("{}; the listener noticed nothing", attempt.outcome.detail),
                    );
                } else if attempt.outcome.kind == Kind::Reached {
                    attempt.outcome.detail += "; the listener noticed it";
                }
            }
            attempt
        })
        .collect()
}

/// Flows that exist by design, with the reason shown in the matrix.
pub fn by_design(channel: &str) -> Option<&'static str> {
    Some(match channel {
        "file-read" => "VM→host: a VM reads the host's files it has not written, and sees the host's later changes to them — that is the copy-on-write view, and the reason a VM needs no image. The reverse does not exist: a VM's writes go to its own layer (`file-write`).",
        "inotify-listener-watches" => "VM→host: a VM reading a lower-layer file reads the host's file, so a host watching it sees the access (not the data). One-way: host writes do not raise events inside the VM (`inotify-client-watches`).",
        "tcp-host-address" | "udp-host-address" => "host→VM: a VM has an address of its own (`--net private`, the default) so that the host reaches its services there, as with a published port. VM→host is refused and VM→VM dropped by feather's nftables policy (docs/network.md).",
        "keyring-user" | "keyring-session" => "inside one VM: kernel keyrings are not namespaced, so the seccomp filter denies keyctl, add_key and request_key to VM processes altogether (as Docker's default profile does); programs fall back to files.",
        _ => return None,
    })
}

/// What a cell must show.
pub fn expectation(channel: &str, direction: Direction) -> Expect {
    match (channel, direction) {
        ("keyring-user" | "keyring-session", Direction::InsideVm | Direction::InitToExec) => {
            Expect::DeniedByDesign
        }
        (_, Direction::InsideVm | Direction::InitToExec) => Expect::Works,
        ("file-read" | "inotify-listener-watches", Direction::VmToHost) => Expect::OneWayByDesign,
        ("tcp-host-address" | "udp-host-address", Direction::HostToVm) => Expect::OneWayByDesign,
        _ => Expect::Blocked,
    }
}

pub fn group_of(channel: &str) -> &'static str {
    let prefix = channel.split([':', '-']).next().unwrap_or(channel);
    match prefix {
        "sysv" | "posix" if channel != "posix-lock" => "System V and POSIX IPC",
        "unix" | "x11" | "fifo" | "dbus" => "Unix sockets, FIFOs, D-Bus, X11",
        "tcp" | "udp" | "netlink" => "Network and netlink",
        "file" | "flock" | "posix" | "ofd" | "inotify" => {
            "Shared lower-layer files: content, locks, inotify"
        }
        "proc" | "process_vm_readv" | "signal" | "ptrace" => "Processes: signals, ptrace, /proc",
        "keyring" => "Kernel keyrings",
        "tiocsti" | "tioclinux" => "Terminal injection",
        _ => "Machine-wide kernel state (VM → kernel)",
    }
}

/// Checks, before anything is made, that `vm` runs and shows the probe's binary.
fn check_agent_runs_in(setup: &ProbeSetup, vm: &str) -> Result<(), ProbeError> {
    let (stderr_read, stderr_write) = pipe()?;
    let (stdin, _) = pipe()?;
    let (_, stdout) = pipe()?;
    let ran = setup
        .agent(Some(vm), None, &["ping"], [stdin, stdout, stderr_write])
        .map(|mut agent| {
            let stderr = read_all(stderr_read);
            let code = agent.wait_or_kill(START_TIMEOUT);
            (code, stderr.join().unwrap_or_default())
        });
    let why = match ran {
        Ok((Some(0), _)) => return Ok(()),
        Ok((_, stderr)) => String::from_utf8_lossy(&stderr).trim().to_owned(),
        Err(e) => e.to_string(),
    };
    Err(fail(format!(
        "cannot run the probe in VM {vm}: {why} — the probe runs {} inside the VM, so the VM must \
         be running and its base must show that file at the same path (the default base / does, \
         unless the file is under feather's state folder)",
        setup.agent.display()
    )))
}

/// While it lives, an interrupt (Ctrl-C), SIGTERM or SIGHUP does not kill the probe but is
/// noticed between steps, so that the probe's VMs and listeners are removed on the way out.
struct Interruptions {
    signals: Option<nix::sys::signalfd::SignalFd>,
    previous: nix::sys::signal::SigSet,
}

impl Interruptions {
    fn catch() -> Interruptions {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        let mut set = SigSet::empty();
        for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(signal);
        }
        let mut previous = SigSet::empty();
        let _ =
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut previous));
        let flags =
            nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC;
        Interruptions {
            signals: nix::sys::signalfd::SignalFd::with_flags(&set, flags).ok(),
            previous,
        }
    }

    fn check(&self) -> Result<(), ProbeError> {
        match self.signals.as_ref().map(|s| s.read_signal()) {
            Some(Ok(Some(info))) => Err(fail(format!(
                "interrupted by signal {}; cleaned up",
                info.ssi_signo
            ))),
            _ => Ok(()),
        }
    }
}

impl Drop for Interruptions {
    fn drop(&mut self) {
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&self.previous),
            None,
        );
    }
}

/// Runs the whole probe.
pub fn run(setup: &ProbeSetup) -> Result<Matrix, ProbeError> {
    let interruptions = Interruptions::catch();
    let label = setup
        .label
        .clone()
        .unwrap_or_else(|| std::process::id().to_string());
    let base = format!("fp{label}");
    let mut notes = vec![];
    if let Some(vm) = setup.users_a() {
        check_agent_runs_in(setup, vm)?;
    }
    // The lower listener first: its files exist before the VMs start.
    let lower = Listener::start(setup, None, &format!("{base}l"), &["--no-x11"])?;
    let mut vms = TemporaryVms {
        setup,
        names: Vec::new(),
    };
    let a = match (&setup.vm, &setup.container) {
        (Some(vm), _) => {
            notes.push(format!("VM A is the user's VM {vm}; it was started before the lower-layer files were made."));
            vm.clone()
        }
        (None, Some(container)) => {
            notes.push(format!(
                "VM A is the OCI container {} (runtime root {}), entered as `feather-oci exec` enters it; it was started before the lower-layer files were made.",
                container.id,
                container.runtime_root.display()
            ));
            container.id.clone()
        }
        (None, None) => {
            let name = format!("ipcprobe-a-{label}");
            vms.names.push(name.clone());
            setup.create_and_start(&name)?;
            name
        }
    };
    let b = format!("ipcprobe-b-{label}");
    vms.names.push(b.clone());
    setup.create_and_start(&b)?;

    let policy = Policy::load(&setup.root_dir()).map_err(|e| fail(e.to_string()))?;
    let (party_a, party_b) = (setup.party(&a), setup.party(&b));
    let mut results: Vec<(Direction, Vec<Attempt>)> = Vec::new();
    let mut opened: BTreeMap<(Direction, String), String> = BTreeMap::new();
    interruptions.check()?;
    // host→VM
    let listener = Listener::start(setup, Some(&a), &format!("{base}a"), &[])?;
    let plan = ClientPlan {
        main: listener.published.clone(),
        lower: None,
        kernel: false,
    };
    let attempts = client(setup, None, &plan, false)?;
    results.push((Direction::HostToVm, merge(attempts, &listener.stop())));
    interruptions.check()?;
    // VM→VM
    let listener = Listener::start(setup, Some(&a), &format!("{base}v"), &[])?;
    let plan = ClientPlan {
        main: listener.published.clone(),
        lower: None,
        kernel: false,
    };
    let attempts = client(setup, Some(&b), &plan, false)?;
    for (channel, rule) in opened_by_policy(&policy, &party_b, &party_a, &listener.published) {
        opened.insert((Direction::VmToVm, channel), rule);
    }
    results.push((Direction::VmToVm, merge(attempts, &listener.stop())));
    interruptions.check()?;
    // inside one VM
    let listener = Listener::start(setup, Some(&a), &format!("{base}i"), &[])?;
    let plan = ClientPlan {
        main: listener.published.clone(),
        lower: None,
        kernel: false,
    };
    let attempts = client(setup, Some(&a), &plan, false)?;
    results.push((Direction::InsideVm, merge(attempts, &listener.stop())));
    interruptions.check()?;
    // inside one VM, from a program init started to one `feather exec` started
    let c = format!("ipcprobe-c-{label}");
    vms.names.push(c.clone());
    results.push((
        Direction::InitToExec,
        init_to_exec(setup, &c, &format!("{base}c"))?,
    ));
    interruptions.check()?;
    // VM→host last: host files the VM has looked up through its lower layer may linger
    // in the VM's view after the host removes them (overlayfs caches lower entries).
    // With the lower listener for the lower-layer rows.
    let listener = Listener::start(setup, None, &format!("{base}h"), &["--uevents"])?;
    let plan = ClientPlan {
        main: listener.published.clone(),
        lower: Some(lower.published.clone()),
        kernel: true,
    };
    let attempts = client(setup, Some(&a), &plan, true)?;
    for (channel, rule) in opened_by_policy(&policy, &party_a, &Party::Host, &listener.published) {
        opened.insert((Direction::VmToHost, channel), rule);
    }
    drop(listener.stop());
    results.push((Direction::VmToHost, merge(attempts, &lower.stop())));
    drop(vms);
    interruptions.check()?;

    notes.push(format!(
        "Kernel {}; {}.",
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        landlock_note()
    ));
    notes.push("VM processes run under feather's seccomp filter and Docker's default capability set without CAP_MKNOD; no_new_privs is not set (set-uid programs work).".into());
    if !opened.is_empty() {
        notes.push(format!(
            "{} cell(s) opened by shuttle policy rules (marked with the rule): these must be reached.",
            opened.len()
        ));
    }
    Ok(assemble(results, &opened, notes))
}

/// The cells of one direction that an allowing shuttle rule opens, for a client in `source`
/// and the listener that published `p` in `target`: channel → the rule's `FILE:LINE`.
fn opened_by_policy(
    policy: &Policy,
    source: &Party,
    target: &Party,
    p: &Published,
) -> Vec<(String, String)> {
    let mut candidates: Vec<(String, String, String)> = SOCKET_DIRS
        .iter()
        .map(|(dir, suffix)| {
            let path = p.socket_path(dir, suffix, "stream");
            (format!("unix-stream:{dir}"), format!("unix:{path}"), path)
        })
        .collect();
    candidates.push((
        "tcp-loopback".to_owned(),
        format!("tcp:{}", p.tcp_port),
        p.tcp_port.to_string(),
    ));
    candidates
        .into_iter()
        .filter_map(|(channel, object, appears_at)| {
            let decision = policy.decide(&Request {
                kind: feather_shuttle::Kind::Ipc,
                object,
                source: source.clone(),
                target: target.clone(),
            });
            let rule = decision
                .rule
                .filter(|_| decision.verdict == Verdict::Allow)?;
            // The client tries where the listener is; a channel placed elsewhere (`at=`) opens
            // another path, not this cell.
            if rule.option("at").is_some_and(|at| at != appears_at) {
                return None;
            }
            Some((channel, rule.at.to_string()))
        })
        .collect()
}

fn landlock_note() -> String {
    format!(
        "{} — where available, each VM is one Landlock domain: signals are scoped for every VM, \
         abstract sockets for VMs sharing the host's network (see docs/confinement.md)",
        feather_confine::landlock::support()
    )
}

fn assemble(
    results: Vec<(Direction, Vec<Attempt>)>,
    opened: &BTreeMap<(Direction, String), String>,
    notes: Vec<String>,
) -> Matrix {
    let mut rows: Vec<Row> = Vec::new();
    for (direction, attempts) in results {
        for attempt in attempts {
            let rule = opened.get(&(direction, attempt.channel.clone())).cloned();
            let cell = Cell {
                direction,
                expect: match rule {
                    Some(_) => Expect::OpenedByPolicy,
                    None => expectation(&attempt.channel, direction),
                },
                outcome: attempt.outcome,
                rule,
            };
            match rows.iter_mut().find(|r| r.channel == attempt.channel) {
                Some(row) => row.cells.push(cell),
                None => rows.push(Row {
                    group: group_of(&attempt.channel).to_owned(),
                    by_design: by_design(&attempt.channel).map(str::to_owned),
                    channel: attempt.channel,
                    cells: vec![cell],
                }),
            }
        }
    }
    // Rows in group order, keeping the probe's order within a group.
    let order: Vec<String> =
        rows.iter()
            .map(|r| r.group.clone())
            .fold(Vec::new(), |mut seen, g| {
                if !seen.contains(&g) {
                    seen.push(g);
                }
                seen
            });
    rows.sort_by_key(|r| order.iter().position(|g| *g == r.group));
    Matrix { rows, notes }
}

//! What every integration test stands on: a private state root per test, a way to call the
//! real `feather` binary, and scratch base trees. Everything a test makes is removed when its
//! fixture is dropped, also when the test fails.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A folder of its own under /tmp/feather-tests, removed on drop.
fn unique_dir(kind: &str, label: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from("/tmp/feather-tests")
        .join(format!("{kind}-{label}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The result of one `feather` call.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Outcome {
    fn from(output: Output) -> Self {
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A private feather state root. Dropping it removes every VM in it (stopping the running ones)
/// and the root itself.
pub struct Feather {
    pub root: PathBuf,
}

impl Feather {
    pub fn new(label: &str) -> Self {
        Feather {
            root: unique_dir("root", label),
        }
    }

    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_feather")
    }

    /// A `feather --root <this root>` command, ready for more arguments.
    pub fn command(&self) -> Command {
        let mut command = Command::new(Self::bin());
        command.arg("--root").arg(&self.root).stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Outcome {
        self.command()
            .args(args)
            .output()
            .expect("feather runs")
            .into()
    }

    /// Runs `feather args…` and returns its stdout; panics with its stderr if it failed.
    pub fn ok(&self, args: &[&str]) -> String {
        let outcome = self.run(args);
        assert_eq!(
            outcome.code, 0,
            "feather {args:?} failed: {}{}",
            outcome.stderr, outcome.stdout
        );
        outcome.stdout
    }

    /// Runs `feather args…`, asserts it failed, and returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let outcome = self.run(args);
        assert_ne!(
            outcome.code, 0,
            "feather {args:?} should have failed, printed: {}",
            outcome.stdout
        );
        outcome.stderr
    }

    /// Writes the shuttle policy file `<root>/policy.d/<name>.policy`.
    pub fn write_policy(&self, name: &str, rules: &str) -> PathBuf {
        let dir = self.root.join("policy.d");
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}.policy"));
        fs::write(&file, rules).unwrap();
        file
    }

    /// Creates VM `vm` over `base` (with `options` such as limits) and starts it.
    pub fn start_over(&self, vm: &str, base: &ScratchBase, options: &[&str]) {
        let mut args = vec!["create", vm, "--base", base.as_str()];
        args.extend_from_slice(options);
        self.ok(&args);
        self.ok(&["start", vm]);
    }

    /// Runs a shell command line inside a running (or startable) VM; returns its stdout.
    pub fn sh(&self, vm: &str, script: &str) -> String {
        self.ok(&["exec", vm, "--", "sh", "-c", script])
    }

    pub fn inspect(&self, vm: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", vm])).expect("inspect prints JSON")
    }

    pub fn status(&self, vm: &str) -> String {
        self.inspect(vm)["state"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.root.join("vms").join(vm)
    }

    /// The VM's cgroup folders on the host (in every hierarchy).
    pub fn cgroup_dirs(&self, vm: &str) -> Vec<PathBuf> {
        self.inspect(vm)["cgroup"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| PathBuf::from(p.as_str().unwrap()))
            .collect()
    }

    /// Waits up to 10 s for `check` to hold.
    pub fn eventually(&self, what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn vm_names(&self) -> Vec<String> {
        fs::read_dir(self.root.join("vms"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Feather {
    fn drop(&mut self) {
        for vm in self.vm_names() {
            let removed = self.run(&["rm", "--force", &vm]).code == 0;
            if !removed {
                kill_recorded_processes(&self.vm_dir(&vm));
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Last resort when `rm` failed: kill the keeper and init this VM recorded, by pid, after
/// checking they are still ours.
fn kill_recorded_processes(vm_dir: &Path) {
    let Ok(text) = fs::read_to_string(vm_dir.join("state.json")) else {
        return;
    };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    for key in ["init_pid", "keeper_pid"] {
        if let Some(pid) = state[key].as_i64() {
            let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.contains("feather") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A fresh state root with a running VM named `vm` over a fresh scratch base.
pub fn running_vm(label: &str) -> (Feather, ScratchBase) {
    let feather = Feather::new(label);
    let base = ScratchBase::new(label);
    feather.start_over("vm", &base, &[]);
    (feather, base)
}

/// A minimal root tree: busybox (static) as every command, plus whatever the test adds.
/// VMs over it can run shell scripts, and `commit` writes only into it.
pub struct ScratchBase {
    pub path: PathBuf,
    mounts: Vec<PathBuf>,
}

const BUSYBOX_COMMANDS: [&str; 36] = [
    "sh", "cat", "echo", "ls", "rm", "mv", "cp", "mkdir", "rmdir", "chmod", "chown", "ln", "touch",
    "stat", "test", "true", "false", "sleep", "ps", "id", "hostname", "head", "tail", "wc", "grep",
    "sed", "printf", "kill", "readlink", "seq", "tr", "env", "pwd", "mknod", "mount", "dd",
];

impl ScratchBase {
    pub fn new(label: &str) -> Self {
        let path = unique_dir("base", label);
        for dir in [
            "bin", "etc", "tmp", "root", "proc", "sys", "dev", "run", "data",
        ] {
            fs::create_dir_all(path.join(dir)).unwrap();
        }
        fs::copy("/bin/busybox", path.join("bin/busybox"))
            .expect("busybox-static is installed (./setup.sh)");
        for command in BUSYBOX_COMMANDS {
            symlink("busybox", path.join("bin").join(command)).unwrap();
        }
        fs::write(
            path.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        )
        .unwrap();
        fs::write(path.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        ScratchBase {
            path,
            mounts: Vec::new(),
        }
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str) {
        let path = self.file(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.file(rel)).ok()
    }

    /// Mounts a tmpfs at `rel` (a separate filesystem under the base); unmounted on drop.
    pub fn mount_tmpfs(&mut self, rel: &str) -> PathBuf {
        let target = self.file(rel);
        fs::create_dir_all(&target).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "feather-test"])
            .arg(&target)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs at {}", target.display());
        self.mounts.push(target.clone());
        target
    }
}

impl Drop for ScratchBase {
    fn drop(&mut self) {
        for target in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(target).status();
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A folder holding the `feather` binary alone, without the binaries cargo builds beside it
/// (`feather-keeper`, `feather-svcd`) until a test adds them; removed on drop.
pub struct LoneFeather {
    pub dir: PathBuf,
}

impl LoneFeather {
    pub fn new(label: &str) -> Self {
        let lone = LoneFeather {
            dir: unique_dir("lone", label),
        };
        lone.add("feather");
        lone
    }

    /// Puts the built binary `name` beside the lone `feather`.
    pub fn add(&self, name: &str) {
        let built = Path::new(Feather::bin()).with_file_name(name);
        let here = self.dir.join(name);
        // A hard link is cheap, and its path is what the binary finds as its own.
        if fs::hard_link(&built, &here).is_err() {
            fs::copy(&built, &here).unwrap();
        }
    }

    /// Runs this `feather` on `feather`'s state root.
    pub fn run(&self, feather: &Feather, args: &[&str]) -> Output {
        Command::new(self.dir.join("feather"))
            .arg("--root")
            .arg(&feather.root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("feather runs")
    }
}

impl Drop for LoneFeather {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A TCP server for the connection tests: listens on port 7000 (all addresses) and appends
/// every line it receives to /run/received.
pub const LINE_SERVER: &str = r#"
import socket
server = socket.socket()
server.bind(("0.0.0.0", 7000))
server.listen()
while True:
    connection, _ = server.accept()
    with open("/run/received", "a") as out:
        for line in connection.makefile():
            out.write(line)
            out.flush()
"#;

/// Its client: connects to port 7000 of its first argument (default 127.0.0.1) and sends the
/// numbers 1, 2, 3, … a line each, twenty a second, over that one connection.
pub const LINE_CLIENT: &str = r#"
import socket, sys, time
client = socket.create_connection((sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1", 7000))
i = 0
while True:
    i += 1
    client.sendall(f"{i}\n".encode())
    time.sleep(0.05)
"#;

/// Runs a Python `program` (with `args`) in the background in `vm`, as a daemon (stdio on
/// /dev/null), with `feather` being the VM's state root.
pub fn python_daemon(feather: &Feather, vm: &str, program: &str, args: &[&str]) {
    let mut command = vec![
        "exec",
        vm,
        "--",
        "sh",
        "-c",
        "/usr/bin/python3 -c \"$0\" \"$@\" </dev/null >/dev/null 2>&1 &",
        program,
    ];
    command.extend_from_slice(args);
    feather.ok(&command);
}

/// The numbers the line server in `vm` has received so far (see [`LINE_SERVER`]).
pub fn received_numbers(feather: &Feather, vm: &str) -> Vec<u64> {
    feather
        .run(&["exec", vm, "--", "cat", "/run/received"])
        .stdout
        .lines()
        .filter_map(|line| line.parse().ok())
        .collect()
}

/// Waits until something in `vm` listens on TCP port 7000 (the line server).
pub fn await_line_server(feather: &Feather, vm: &str) {
    feather.eventually("the server listens", || {
        feather
            .run(&[
                "exec",
                vm,
                "--",
                "sh",
                "-c",
                "grep -q ':1B58 ' /proc/net/tcp",
            ])
            .code
            == 0
    });
}

/// The host pids of every process of running VM `vm` (init included), from `feather ps`.
pub fn vm_host_pids(feather: &Feather, vm: &str) -> Vec<i32> {
    let ps: serde_json::Value =
        serde_json::from_str(&feather.ok(&["ps", vm, "--json"])).expect("ps prints JSON");
    ps.as_array()
        .map(|processes| {
            processes
                .iter()
                .filter_map(|p| p["host_pid"].as_i64())
                .map(|pid| pid as i32)
                .collect()
        })
        .unwrap_or_default()
}

/// The SHA-256 of `bytes` in hex, by the host's `sha256sum`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

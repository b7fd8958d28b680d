//! Fixtures for the OCI tests: a busybox rootfs and bundles, the runtime with a private
//! `--root`, and engines (containerd, with or without its CRI plugin, podman, dockerd) started per test and stopped by pid.
//!
//! What feather's own test crates need as well (scratch folders, a command's outcome, waiting,
//! CRIU image edits) is crates/feather-testkit's.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[path = "../support/ended_runs.rs"]
mod ended_runs;

pub use feather_testkit::{a_disk, eventually, run, Outcome};
use serde_json::{json, Value};

pub fn runtime_bin() -> &'static str {
    env!("CARGO_BIN_EXE_feather-oci")
}

/// A folder of its own under /tmp/feather-tests. Dropping it unmounts whatever is still
/// mounted below it (an engine's storage after a failed test) and removes it.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        ended_runs::forget_entries_of_ended_tests();
        Scratch {
            dir: feather_testkit::unique_dir("oci", label),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // feather's state roots the test made in its folder (`feather --root`): the network
        // their last throw-away VM left lingering for the next (feather_net::linger) goes
        // first, as docs/network.md says a root is removed, or its bridge, tables and pooled
        // namespaces would outlive the folder.
        let registry = feather_core::roots::Registry::host();
        let dir = fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        for root in registry.roots() {
            if root.dir().starts_with(&dir) {
                take_network_down(root.dir());
            }
        }
        unmount_below(&self.dir);
        registry.forget_below(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `feather --root ROOT network down`, if the root has a network or a lingering process.
fn take_network_down(root: &Path) {
    if !root.join("network.toml").exists() && !root.join("network-linger.wait").exists() {
        return;
    }
    let feather = PathBuf::from(runtime_bin()).with_file_name("feather");
    let _ = Command::new(feather)
        .arg("--root")
        .arg(root)
        .args(["network", "down"])
        .stdin(Stdio::null())
        .output();
}

/// A cgroup folder of the test's own for its containers' groups (`cgroupsPath`
/// `/<this>/<group>`), removed in every hierarchy on drop, also when the test failed (once
/// empty). Tests shared one before, each removing it at its end: one test's removal could land
/// between another's making of the folder and of its group in it, and fail that one's create.
pub struct CgroupParent(String);

impl CgroupParent {
    pub fn new() -> CgroupParent {
        CgroupParent(format!("feather-oci-tests-{}", std::process::id()))
    }

    /// `group` in it, relative to a hierarchy's root.
    pub fn group(&self, group: &str) -> String {
        format!("{}/{group}", self.0)
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(hierarchy.path().join(&self.0));
        }
    }
}

/// Lazily unmounts every mount at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The busybox applets the tests' containers use.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "true", "false", "id", "ls", "ps", "hostname", "env", "pwd",
    "kill", "grep", "wc", "head", "mkdir", "touch", "tty", "ulimit", "stat", "readlink", "test",
];

/// A minimal root: busybox-static and its applets, /etc/passwd and /etc/group.
pub fn busybox_rootfs(dir: &Path) {
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static is installed");
    for applet in APPLETS {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:alice:/home/alice:/bin/sh\n",
    )
    .unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\nalice:x:1000:\n").unwrap();
}

/// A config.json like the one containerd 1.6 writes for `ctr run` (its mounts, namespaces,
/// masked and read-only paths, default capabilities), running `args`.
pub fn base_config(args: &[&str]) -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// A bundle folder with a busybox rootfs and `config` as its config.json.
pub struct Bundle {
    pub dir: PathBuf,
}

impl Bundle {
    pub fn new(scratch: &Scratch, name: &str, config: &Value) -> Bundle {
        let dir = scratch.path(name);
        busybox_rootfs(&dir.join("rootfs"));
        let bundle = Bundle { dir };
        bundle.set_config(config);
        bundle
    }

    pub fn set_config(&self, config: &Value) {
        fs::write(
            self.dir.join("config.json"),
            serde_json::to_string_pretty(config).unwrap(),
        )
        .unwrap();
    }
}

/// The node's annotation policy (`--annotation-policy`) for a test: a file of its own in
/// `scratch` allowing the widening `org.feather.*` annotations in `allowed`
/// (`org.feather.base=host`, …); none given, it is not written (absent, it allows none).
pub fn annotation_policy(scratch: &Scratch, allowed: &[&str]) -> PathBuf {
    let path = scratch.path("oci-policy.toml");
    if !allowed.is_empty() {
        fs::write(&path, policy_text(allowed)).unwrap();
    }
    path
}

fn policy_text(allowed: &[&str]) -> String {
    // A TOML array of strings is written as JSON's.
    let list = serde_json::to_string(allowed).unwrap();
    format!("[annotations]\nallow = {list}\n")
}

/// For an engine, which calls the runtime by a path alone (`ctr run --runc-binary`, podman's
/// `--runtime`, containerd's `BinaryName`): a script in `scratch` that runs the build's
/// feather-oci with the policy of [`annotation_policy`], as a node's admin would pass it.
pub fn runtime_allowing(scratch: &Scratch, allowed: &[&str]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let policy = annotation_policy(scratch, allowed);
    let script = scratch.path("feather-oci-with-policy");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} --annotation-policy {} \"$@\"\n",
            runtime_bin(),
            policy.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// `feather-oci --root <private root> --annotation-policy <the test's>` (none allowed until
/// [`Runtime::allow_annotations`]). Dropping it force-deletes every container left.
pub struct Runtime {
    pub root: PathBuf,
    /// The binary run: the build's, or a copy a test may let a container attack.
    pub program: PathBuf,
    /// The test's own annotation policy: never the node's /etc/feather/oci.toml.
    pub policy: PathBuf,
}

impl Runtime {
    pub fn new(scratch: &Scratch) -> Runtime {
        Runtime::of(scratch, Path::new(runtime_bin()))
    }

    /// The runtime `program` (a copy of the build's) with a private root in `scratch`.
    pub fn of(scratch: &Scratch, program: &Path) -> Runtime {
        Runtime {
            root: scratch.path("runtime-root"),
            program: program.to_owned(),
            policy: annotation_policy(scratch, &[]),
        }
    }

    /// Writes the test's policy allowing these widening annotations (see [`annotation_policy`]).
    pub fn allow_annotations(&self, allowed: &[&str]) {
        fs::write(&self.policy, policy_text(allowed)).unwrap();
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--annotation-policy")
            .arg(&self.policy);
        command
    }

    pub fn run(&self, args: &[&str]) -> Outcome {
        run(self.command().args(args))
    }

    /// `run --detach` of `bundle` as container `id`, which must start; its stdio on /dev/null
    /// (the container keeps the stdio it is given: not pipes a test would wait on).
    pub fn run_detached(&self, id: &str, bundle: &Bundle) {
        let started = self
            .command()
            .args(["run", "--detach", "--bundle"])
            .arg(&bundle.dir)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(started.success(), "run {id}: {started}");
    }

    /// `create`, with the container's stdout and stderr going to `output` (the init inherits
    /// create's stdio, as under an engine: a pipe would stay open as long as the container).
    /// The outcome's stderr is that file's content.
    pub fn create(&self, id: &str, bundle: &Bundle, output: &Path) -> Outcome {
        let args: [&OsStr; 4] = [
            "create".as_ref(),
            "--bundle".as_ref(),
            bundle.dir.as_os_str(),
            id.as_ref(),
        ];
        self.run_into(args, output)
    }

    /// The runtime with `args`, its stdout and stderr going to the file `output`, as `create`'s
    /// do (a command whose container inherits them); the outcome's stderr is that file's content.
    pub fn run_into<'a>(
        &self,
        args: impl IntoIterator<Item = &'a OsStr>,
        output: &Path,
    ) -> Outcome {
        let file = fs::File::create(output).unwrap();
        let status = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .unwrap();
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: fs::read_to_string(output).unwrap_or_default(),
        }
    }

    pub fn state(&self, id: &str) -> Value {
        let outcome = self.run(&["state", id]);
        assert_eq!(outcome.code, 0, "state {id}: {outcome:?}");
        serde_json::from_str(&outcome.stdout).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_owned()
    }

    /// Waits until the container's init has exited.
    pub fn wait_stopped(&self, id: &str) {
        let stopped = eventually(Duration::from_secs(20), || self.status(id) == "stopped");
        assert!(stopped, "container {id} did not stop");
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for entry in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let _ = self.run(&["delete", "--force", &id]);
        }
    }
}

/// A layer tar of a busybox rootfs (what `podman import` takes) under `scratch`.
pub fn busybox_layer_tar(scratch: &Scratch) -> PathBuf {
    let rootfs = scratch.path("image-rootfs");
    busybox_rootfs(&rootfs);
    let tar = scratch.path("layer.tar");
    let outcome = run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg("."));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    tar
}

fn sha256_of(path: &Path) -> String {
    let outcome = run(Command::new("sha256sum").arg(path));
    outcome.stdout.split_whitespace().next().unwrap().to_owned()
}

fn add_blob(layout: &Path, file: &Path) -> (String, u64) {
    let digest = sha256_of(file);
    let size = fs::metadata(file).unwrap().len();
    fs::copy(file, layout.join("blobs/sha256").join(&digest)).unwrap();
    (digest, size)
}

/// An OCI image layout tar of the busybox rootfs, named `name` (what `ctr image import` takes).
pub fn busybox_image_tar(scratch: &Scratch, name: &str) -> PathBuf {
    busybox_image_tar_running(scratch, name, &["/bin/sh"])
}

/// The same image with `cmd` as its command (a pod sandbox image's must keep running).
pub fn busybox_image_tar_running(scratch: &Scratch, name: &str, cmd: &[&str]) -> PathBuf {
    let layer = busybox_layer_tar(scratch);
    let layout = scratch.path("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let (layer_digest, layer_size) = add_blob(&layout, &layer);
    let config = scratch.path("image-config.json");
    fs::write(
        &config,
        json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}
        })
        .to_string(),
    )
    .unwrap();
    let (config_digest, config_size) = add_blob(&layout, &config);
    let manifest = scratch.path("manifest.json");
    fs::write(
        &manifest,
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer_size}]
        })
        .to_string(),
    )
    .unwrap();
    let (manifest_digest, manifest_size) = add_blob(&layout, &manifest);
    fs::write(
        layout.join("index.json"),
        json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "latest"}
            }]
        })
        .to_string(),
    )
    .unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tar = scratch.path("image.tar");
    let outcome = run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    tar
}

/// A daemon the test started; stopped by its pid (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    pub child: Child,
    pub name: &'static str,
}

impl Daemon {
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let stopped = eventually(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `script` under a pseudo-terminal (`script`), for engines that need one for `-t`.
pub fn with_terminal(command_line: &str) -> Outcome {
    run(Command::new("script").args(["-qec", command_line, "/dev/null"]))
}

static ENGINES: AtomicUsize = AtomicUsize::new(0);

/// A containerd started for one test: its own config, root, state, socket and namespace.
/// Dropping it removes every container of its namespace, then stops it by pid.
pub struct Containerd {
    pub address: PathBuf,
    pub namespace: String,
    runtime_root: PathBuf,
    /// The cgroup parent of its containers, removed from every hierarchy when empty.
    cgroup_parent: String,
    /// Where [`Containerd::ctr_logged`] has the shim write tasks' output, one file a task.
    task_logs: PathBuf,
    logged: AtomicUsize,
    daemon: Daemon,
}

/// containerd's config: its root, state and socket in `scratch`, then `plugins`.
fn containerd_config(scratch: &Scratch, plugins: &str) -> String {
    format!(
        "version = 2\nroot = \"{}\"\nstate = \"{}\"\n{plugins}\n\
         [grpc]\n  address = \"{}\"\n",
        scratch.path("containerd-root").display(),
        scratch.path("containerd-state").display(),
        scratch.path("containerd.sock").display()
    )
}

impl Containerd {
    /// containerd without its CRI plugin, for `ctr` in a namespace of the test's own.
    pub fn start(scratch: &Scratch) -> Containerd {
        let namespace = format!(
            "feather-oci-{}-{}",
            std::process::id(),
            ENGINES.fetch_add(1, Ordering::SeqCst)
        );
        let config = containerd_config(
            scratch,
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]",
        );
        // The shim's `--root` for feather-oci: containerd's runc shim puts it under /run.
        let runtime_root = PathBuf::from("/run/containerd/runc").join(&namespace);
        Containerd::launch(scratch, &config, namespace.clone(), runtime_root, namespace)
    }

    /// containerd with its CRI plugin configured by `cri` (a `[plugins."io.containerd.grpc.v1.cri"]`
    /// table), serving the kubelet's namespace `k8s.io`; its shims' runtime root is
    /// `runtime_root` (the runtime's `Root` option) and its pods' cgroup parent `cgroup_parent`.
    pub fn start_cri(
        scratch: &Scratch,
        cri: &str,
        runtime_root: &Path,
        cgroup_parent: &str,
    ) -> Containerd {
        let config = containerd_config(scratch, cri);
        Containerd::launch(
            scratch,
            &config,
            "k8s.io".to_owned(),
            runtime_root.join("k8s.io"),
            cgroup_parent.trim_start_matches('/').to_owned(),
        )
    }

    fn launch(
        scratch: &Scratch,
        config_text: &str,
        namespace: String,
        runtime_root: PathBuf,
        cgroup_parent: String,
    ) -> Containerd {
        let address = scratch.path("containerd.sock");
        let config = scratch.path("containerd.toml");
        fs::write(&config, config_text).unwrap();
        let log = fs::File::create(scratch.path("containerd.log")).unwrap();
        // containerd 1.6 leaves a task checkpoint's images in a temporary folder
        // (ctrd-checkpoint*): in the test's own, removed with it.
        let tmp = scratch.path("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let child = Command::new("containerd")
            .env("TMPDIR", &tmp)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd is installed (setup.sh)");
        let containerd = Containerd {
            address,
            namespace,
            runtime_root,
            cgroup_parent,
            task_logs: scratch.path("task-logs"),
            logged: AtomicUsize::new(0),
            daemon: Daemon {
                child,
                name: "containerd",
            },
        };
        let up = eventually(Duration::from_secs(20), || {
            containerd.address.exists() && containerd.ctr(&["version"]).code == 0
        });
        assert!(
            up,
            "containerd did not come up: {}",
            fs::read_to_string(scratch.path("containerd.log")).unwrap_or_default()
        );
        containerd
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace);
        command
    }

    pub fn ctr(&self, args: &[&str]) -> Outcome {
        run(self.command().args(args))
    }

    /// `ctr run …` or `ctr task exec …` with the task's stdout and stderr written by the shim
    /// to a file of its own (`--log-uri`), whose text is the outcome's `stdout`.
    ///
    /// What ctr prints of a task that exits right after writing is not reliable, whatever the
    /// runtime: ctr 1.6 closes the FIFOs it reads a task's output from as soon as the task has
    /// exited (`Cancel` in the client's `Task.Delete`, before it waits for them), so the last
    /// lines still on their way through the shim are lost now and then — about one run in a
    /// hundred under load. The shim drains a log file before its delete returns.
    pub fn ctr_logged(&self, args: &[&str]) -> Outcome {
        let subcommand_end = match args {
            ["run", ..] => 1,
            ["task", "exec", ..] => 2,
            _ => panic!("ctr_logged runs `run` or `task exec`, not {args:?}"),
        };
        let log = self.task_logs.join(format!(
            "task-{}.log",
            self.logged.fetch_add(1, Ordering::SeqCst)
        ));
        let uri = format!("file://{}", log.display());
        let mut with_log = args.to_vec();
        with_log.splice(subcommand_end..subcommand_end, ["--log-uri", &uri]);
        let mut outcome = self.ctr(&with_log);
        outcome.stdout = fs::read_to_string(&log).unwrap_or_default();
        outcome
    }

    /// The `--root` the shim gives feather-oci.
    pub fn runtime_root(&self) -> PathBuf {
        self.runtime_root.clone()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let listed = self.ctr(&["containers", "ls", "-q"]);
        for id in listed.stdout.split_whitespace() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            let _ = eventually(Duration::from_secs(5), || {
                !self.ctr(&["task", "ls"]).stdout.contains("RUNNING")
            });
            let _ = self.ctr(&["task", "delete", "-f", id]);
            let _ = self.ctr(&["containers", "rm", id]);
        }
        self.daemon.stop();
        let _ = fs::remove_dir_all(self.runtime_root());
        // The shim's cgroupsPath is /<parent>/<id> (ctr's parent is the namespace): remove
        // the parent where it is left empty.
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(hierarchy.path().join(&self.cgroup_parent));
        }
    }
}

/// podman with storage, run folder and temporary folder in the test's scratch folder,
/// feather-oci as its runtime, cgroupfs (this machine has no systemd) and no network.
pub struct Podman {
    pub root: PathBuf,
    pub run_root: PathBuf,
    pub tmp: PathBuf,
    pub runtime: String,
    /// The cgroup folder its containers' groups and their conmons' are made in
    /// (`--cgroup-parent`): podman's default, `libpod_parent`, is every podman's, and one
    /// test's removal of it as it ended could land between another's making of it and of a
    /// container's group in it.
    cgroup_parent: String,
}

impl Podman {
    pub fn new(scratch: &Scratch, runtime: &str) -> Podman {
        // podman refuses a run root longer than 50 characters.
        let run_root = PathBuf::from(format!(
            "/tmp/feather-tests/pr-{}-{}",
            std::process::id(),
            ENGINES.fetch_add(1, Ordering::SeqCst)
        ));
        let cgroup_parent = run_root.file_name().unwrap().to_string_lossy().into_owned();
        Podman {
            root: scratch.path("podman-root"),
            run_root,
            tmp: scratch.path("podman-tmp"),
            runtime: runtime.to_owned(),
            cgroup_parent,
        }
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.run_root)
            .arg("--tmpdir")
            .arg(&self.tmp)
            .args(["--runtime", &self.runtime])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        command
    }

    /// `podman args…`; a `run` or `create` makes its container's groups in this engine's
    /// own cgroup parent.
    pub fn podman(&self, args: &[&str]) -> Outcome {
        let mut command = self.command();
        match args.split_first() {
            Some((&verb, rest)) if verb == "run" || verb == "create" => {
                let parent = format!("/{}", self.cgroup_parent);
                command
                    .arg(verb)
                    .args(["--cgroup-parent", &parent])
                    .args(rest)
            }
            _ => command.args(args),
        };
        run(&mut command)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.podman(&["rmi", "--all", "--force"]);
        unmount_below(&self.root);
        unmount_below(&self.run_root);
        let _ = fs::remove_dir_all(&self.run_root);
        // The cgroupfs parent podman made for this engine's containers and their conmons.
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let parent = hierarchy.path().join(&self.cgroup_parent);
            let _ = fs::remove_dir(parent.join("conmon"));
            let _ = fs::remove_dir(parent);
        }
    }
}

/// dockerd started for one test: its own data-root, exec-root, pidfile, socket and
/// containerd namespace; no iptables, no bridge, nofile 1024 by default (this machine
/// withholds CAP_SYS_RESOURCE), and feather-oci as the runtime "feather".
pub struct Dockerd {
    pub socket: PathBuf,
    exec_root: PathBuf,
    /// The cgroup folder its containers' groups are made in (`cgroup-parent`).
    cgroup_parent: String,
    daemon: Option<Daemon>,
}

impl Dockerd {
    pub fn start(scratch: &Scratch) -> Dockerd {
        let socket = scratch.path("docker.sock");
        // containerd's socket lives under the exec root: keep it short.
        let exec_root = PathBuf::from(format!(
            "/tmp/feather-tests/dx-{}-{}",
            std::process::id(),
            ENGINES.fetch_add(1, Ordering::SeqCst)
        ));
        let config = scratch.path("daemon.json");
        let namespace = exec_root
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        fs::write(
            &config,
            json!({
                "data-root": scratch.path("docker-data"),
                "exec-root": exec_root,
                "pidfile": scratch.path("docker.pid"),
                "hosts": [format!("unix://{}", socket.display())],
                "iptables": false, "ip6tables": false, "bridge": "none",
                "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 1024, "Soft": 1024}},
                "runtimes": {"feather": {"path": runtime_bin()}},
                "exec-opts": ["native.cgroupdriver=cgroupfs"],
                // The containers' groups in a folder of this daemon's own: the default
                // (`docker`) is every dockerd's, and one test's removal of it as it ended could
                // land between another's making of it and of a container's group in it.
                "cgroup-parent": format!("/{namespace}"),
                // `docker checkpoint` needs it (Docker 20.10).
                "experimental": true,
                "containerd-namespace": namespace,
                "containerd-plugins-namespace": format!("{namespace}-plugins"),
            })
            .to_string(),
        )
        .unwrap();
        let log = fs::File::create(scratch.path("dockerd.log")).unwrap();
        // The containerd dockerd starts inherits its environment: its checkpoint folders
        // (ctrd-checkpoint*, see `Containerd::launch`) go in the test's own, removed with it.
        let tmp = scratch.path("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let child = Command::new("dockerd")
            .env("TMPDIR", &tmp)
            .arg("--config-file")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker.io is installed (setup.sh)");
        let dockerd = Dockerd {
            socket,
            exec_root,
            cgroup_parent: namespace,
            daemon: Some(Daemon {
                child,
                name: "dockerd",
            }),
        };
        let up = eventually(Duration::from_secs(30), || {
            dockerd.docker(&["info"]).code == 0
        });
        assert!(
            up,
            "dockerd did not come up: {}",
            fs::read_to_string(scratch.path("dockerd.log")).unwrap_or_default()
        );
        dockerd
    }

    pub fn docker(&self, args: &[&str]) -> Outcome {
        run(Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let listed = self.docker(&["ps", "-aq"]);
        for id in listed.stdout.split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = self.docker(&["image", "prune", "-af"]);
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop();
        }
        unmount_below(&self.exec_root);
        let _ = fs::remove_dir_all(&self.exec_root);
        // What dockerd makes outside its roots, removed only when empty.
        let _ = fs::remove_dir("/run/docker/plugins");
        let _ = fs::remove_dir("/run/docker");
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(hierarchy.path().join(&self.cgroup_parent));
        }
    }
}

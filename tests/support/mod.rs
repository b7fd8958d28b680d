//! What every integration test stands on: a private state root per test, a way to call the
//! real `feather` binary, and scratch base trees. Everything a test makes is removed when its
//! fixture is dropped, also when the test fails.
//!
//! What tests/oci needs as well (scratch folders, a command's outcome, waiting, CRIU image
//! edits) is crates/feather-testkit's.

#![allow(dead_code)]

pub mod ended_runs;
pub mod wire;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ended_runs::forget_entries_of_ended_tests;
use feather_testkit::process_exists;
use feather_testkit::TESTS_DIR;
pub use feather_testkit::{unique_dir, Outcome};

/// A private feather state root. Dropping it removes every VM in it (stopping the running ones)
/// and the root itself.
pub struct Feather {
    pub root: PathBuf,
}

impl Feather {
    pub fn new(label: &str) -> Self {
        sweep_roots_of_ended_tests(Path::new(TESTS_DIR));
        forget_entries_of_ended_tests();
        Feather {
            root: unique_dir("root", label),
        }
    }

    /// A state root at `root`, a folder the caller made (e.g. on a filesystem of its own); it
    /// is removed on drop like any other.
    pub fn at(root: PathBuf) -> Self {
        Feather { root }
    }

    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_feather")
    }

    /// A `feather --root <this root>` command, ready for more arguments; out of the pool
    /// ([`NO_POOL`]): a test's `run --rm` leaves no pooled VM behind (tests of the pool remove
    /// the variable).
    pub fn command(&self) -> Command {
        let mut command = Command::new(Self::bin());
        command
            .arg("--root")
            .arg(&self.root)
            .env(NO_POOL, "0")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Outcome {
        feather_testkit::run(self.command().args(args))
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

    /// Fails the test, with the reason, unless `feather check criu` finds a CRIU that works
    /// here (checkpoints and restores need it).
    pub fn require_criu(&self) {
        let check = self.run(&["check", "criu"]);
        assert_eq!(
            check.code, 0,
            "this test needs a working CRIU (run ./setup.sh, which installs it with scripts/install-criu): {}{}",
            check.stderr, check.stdout
        );
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

    /// Creates VM `vm` over `base` (with `options` such as limits).
    pub fn create_over(&self, vm: &str, base: &ScratchBase, options: &[&str]) {
        let mut args = vec!["create", vm, "--base", base.as_str()];
        args.extend_from_slice(options);
        self.ok(&args);
    }

    /// Creates VM `vm` over `base` (with `options` such as limits) and starts it.
    pub fn start_over(&self, vm: &str, base: &ScratchBase, options: &[&str]) {
        self.create_over(vm, base, options);
        self.ok(&["start", vm]);
    }

    /// `feather <args>` running in the background, its stdout dropped and its stderr kept for
    /// the verdict (`wait_with_output`): for a test that acts while the command waits.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Starts a throw-away VM `vm` (`run --rm`, with `options` such as `--base` or limits)
    /// running `sleep 60`, and waits until `inspect` says it runs. The child is the `run`: the
    /// VM ends when it is stopped, or when the child is killed.
    pub fn spawn_throw_away(&self, vm: &str, options: &[&str]) -> Child {
        let child = self
            .command()
            .arg("run")
            .arg("--rm")
            .args(options)
            .args([vm, "--", "sleep", "60"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.eventually(&format!("the throw-away VM {vm} runs"), || {
            self.run(&["inspect", vm]).stdout.contains("\"running\"")
        });
        child
    }

    /// Runs a shell command line inside a running (or startable) VM; returns its stdout.
    pub fn sh(&self, vm: &str, script: &str) -> String {
        self.ok(&["exec", vm, "--", "sh", "-c", script])
    }

    pub fn inspect(&self, vm: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", vm])).expect("inspect prints JSON")
    }

    /// Kills VM `vm`'s keeper (SIGKILL, by the pid `inspect` records), as a crash of feather's
    /// own would end it; its pid.
    pub fn kill_keeper(&self, vm: &str) -> i32 {
        let keeper = self.inspect(vm)["state"]["keeper_pid"].as_i64().unwrap() as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(keeper),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        keeper
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

    /// Where the VM's keeper takes requests (`feather_vm::protocol`).
    pub fn control_socket(&self, vm: &str) -> PathBuf {
        feather_core::StateRoot::new(Some(self.root.clone()))
            .vm(&vm.parse().unwrap())
            .control_socket()
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

    /// Waits up to 30 s for `check` to hold: what takes milliseconds on a quiet host can take
    /// seconds beside the suite's other tests (a new root's first command also waits for any
    /// operation under way on the host's running VMs, which it hides itself in).
    pub fn eventually(&self, what: &str, check: impl Fn() -> bool) {
        self.eventually_within(what, Duration::from_secs(30), check)
    }

    /// Waits up to `patience` for `check` to hold: for what waits on something slow itself (a
    /// restore waits up to 60 s for the checkpointing keeper to end, whose layer's flush takes
    /// seconds on a busy disk).
    pub fn eventually_within(&self, what: &str, patience: Duration, check: impl Fn() -> bool) {
        let held = feather_testkit::eventually(patience, check);
        assert!(held, "timed out waiting until {what}");
    }

    fn vm_names(&self) -> Vec<String> {
        names_in(&self.root.join("vms"))
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect()
    }
}

/// The variable that keeps a `run --rm` out of the pool (`FEATHER_POOL=0`:
/// feather_vm::pooled::OPT_OUT): the pool is on by default, and each test's root would keep a
/// pooled VM for 10 minutes, which every "nothing left" count would find.
pub const NO_POOL: &str = "FEATHER_POOL";

/// The start time of process `pid` in clock ticks since boot (field 22 of its stat line).
pub fn start_ticks(pid: u32) -> u64 {
    start_ticks_if_running(pid).unwrap_or_else(|| panic!("no process {pid}"))
}

/// [`start_ticks`] of process `pid`, if there is one.
fn start_ticks_if_running(pid: u32) -> Option<u64> {
    Some(feather_testkit::stat::Stat::of(pid)?.start_ticks)
}

/// Whether the thread whose `/proc` folder is `task` (`/proc/PID` is a process's main thread,
/// `/proc/PID/task/TID` any thread) is in one of the system calls `calls`, as its `syscall`
/// file says.
pub fn in_system_call(task: &Path, calls: &[libc::c_long]) -> bool {
    fs::read_to_string(task.join("syscall")).is_ok_and(|call| {
        call.split_whitespace()
            .next()
            .and_then(|number| number.parse::<libc::c_long>().ok())
            .is_some_and(|number| calls.contains(&number))
    })
}

/// The names in folder `dir`, in no order (none where it cannot be read).
pub fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Feather {
    fn drop(&mut self) {
        let left = self.tear_down();
        if !left.is_empty() && !std::thread::panicking() {
            panic!(
                "cgroups of this root's VMs were left after the VMs were removed (now removed): {left:?}"
            );
        }
    }
}

/// Tears down the roots in `dir` that [`Feather::new`] made for test processes that are gone
/// (`root-<label>-<pid>-<n>`, no process `<pid>`): a test killed (nextest's timeout sends
/// SIGKILL) never ran its roots' drop, and left their VMs, keepers, cgroups and registry
/// entries. Each is removed as a drop removes a root ([`Feather::tear_down`]), once: a root
/// whose teardown left something is marked (`.swept`) and left to the hand. A root of a live
/// process, or of a pid reused meanwhile, is left alone; so is every other folder. One test
/// sweeps at a time (the lock of `dir/sweep.lock`); another that finds it taken goes on, as the
/// sweep under way removes what it would.
pub fn sweep_roots_of_ended_tests(dir: &Path) {
    let ended: Vec<PathBuf> = names_in(dir)
        .iter()
        .filter(|name| owner_of_root(name).is_some_and(|pid| !process_exists(pid)))
        .map(|name| dir.join(name))
        .collect();
    if ended.is_empty() {
        return;
    }
    let Ok(lock) = fs::File::create(dir.join("sweep.lock")) else {
        return;
    };
    if lock.try_lock().is_err() {
        return;
    }
    for root in ended {
        // Swept by another test since the listing: gone. Tried once only: what a teardown
        // leaves (a mount it cannot remove) is not tried again by every later test.
        let tried = root.join(".swept");
        if !root.is_dir() || tried.exists() || fs::write(&tried, "").is_err() {
            continue;
        }
        // Torn down here, not by a drop, which would fail the sweeping test for the cgroups
        // an ended test left.
        let _ = std::mem::ManuallyDrop::new(Feather::at(root)).tear_down();
    }
}

/// The pid of the test process that made the root folder `name` ([`unique_dir`]'s
/// `root-<label>-<pid>-<n>`); None for any other name.
fn owner_of_root(name: &str) -> Option<u32> {
    name.strip_prefix("root-")?;
    feather_testkit::maker_of(name)
}

impl Feather {
    /// Removes every VM of this root (stopping the running ones), its network, its VMs' cgroups
    /// and its registry entry, then the root itself: what a drop does. Returns the cgroups of
    /// its VMs that were left after the VMs were removed (removed now, their processes killed).
    fn tear_down(&self) -> Vec<PathBuf> {
        // Any feather command but `run --rm` waits for throw-away VMs' teardowns under way
        // (and finishes one a crash cut short) before the root goes.
        if self.root.join("vms").exists() {
            let _ = self.run(&["ls"]);
        }
        // A pool (a test of it, or a command run without [`NO_POOL`]) is drained first: its
        // VMs are not `ls`'s, and a pooled VM would keep the root's network.
        if !names_in(&self.root.join("pool/vms")).is_empty() {
            let _ = self.run(&["pool", "--drain"]);
        }
        for vm in self.vm_names() {
            if self.run(&["rm", "--force", &vm]).code == 0 {
                continue;
            }
            // Busy (an operation of a server the test started, such as a restore, may still
            // hold it) or half made: end its processes, then remove it once more, so that its
            // mounts go with it and the root can be removed.
            kill_recorded_processes(&self.vm_dir(&vm));
            for _ in 0..50 {
                if self.run(&["rm", "--force", &vm]).code == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        // Teardowns handed over by the `rm`s above (a throw-away VM's run ends it) finish
        // before the groups are looked at.
        if self.root.join("vms").exists() {
            let _ = self.run(&["ls"]);
        }
        // The root's network lingers after its last throw-away VM (feather_net::linger), and
        // its lingering process may outlive the network: a kept VM's `rm` takes the bridge and
        // network.toml with it when no other VM is on the bridge. Ended either way before the
        // folder goes, as docs/network.md says a root is removed.
        if self.root.join("network.toml").exists() || self.root.join("network-linger.wait").exists()
        {
            let _ = self.run(&["network", "down"]);
        }
        // No cgroup of this root's VMs may outlive them. A group is tagged with its VM's state
        // root (feather_sys::cgroup::Cgroup::tag_root), so only this root's own are counted,
        // whatever the tests running beside this one do; one that is left is removed (its
        // processes killed) and fails the test that left it.
        let left = self.vm_groups();
        if !left.is_empty() {
            remove_cgroups(&left);
        }
        feather_core::roots::Registry::host().forget_below(&self.root);
        let _ = fs::remove_dir_all(&self.root);
        left
    }
}

impl Feather {
    /// The folders, in every hierarchy, of the cgroups tagged with this root's folder: its VMs'
    /// groups, whether or not the VMs' folders are still there.
    pub fn vm_groups(&self) -> Vec<PathBuf> {
        let hierarchies = feather_sys::cgroup::Hierarchies::detect();
        feather_sys::cgroup::groups_of_root(&hierarchies, "feather", &self.root)
            .iter()
            .flat_map(feather_sys::cgroup::Cgroup::dirs)
            .filter(|dir| dir.exists())
            .collect()
    }
}

/// Last resort when `rm` failed: kill the keeper and init this VM recorded, by pid, after
/// checking they are still the ones recorded: the init by its start time, the keeper by its
/// command line (`--state-dir ROOT … NAME`, feather_vm::launch). A recorded pid the kernel has
/// given to another test's process since is left alone (a command line naming "feather", all
/// that was checked before, is nearly every process of the suite's).
fn kill_recorded_processes(vm_dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(text) = fs::read_to_string(vm_dir.join("state.json")) else {
        return;
    };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    let pid_of = |key: &str| state[key].as_u64().and_then(|pid| u32::try_from(pid).ok());
    let init = pid_of("init_pid").filter(|&pid| {
        state["init_start_ticks"].as_u64().is_some()
            && start_ticks_if_running(pid) == state["init_start_ticks"].as_u64()
    });
    let (Some(name), Some(root)) = (vm_dir.file_name(), vm_dir.parent().and_then(Path::parent))
    else {
        return;
    };
    let keeper = pid_of("keeper_pid").filter(|pid| {
        fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            let args: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            args.contains(&root.as_os_str().as_bytes()) && args.last() == Some(&name.as_bytes())
        })
    });
    for pid in init.into_iter().chain(keeper) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A fresh state root with a running VM named `vm` over a fresh scratch base.
/// The root's firewall table `inet <bridge>` as `nft list table` prints it (empty when it is
/// not there): a VM's entries read `<address> : jump vm-<host end>`.
pub fn nft_inet_table(bridge: &str) -> String {
    let listed = Command::new("nft")
        .args(["list", "table", "inet", bridge])
        .output()
        .unwrap();
    String::from_utf8_lossy(&listed.stdout).into_owned()
}

/// Adds to VM `vm`'s `eth0`, from outside, an address feather did not give it
/// (`192.0.2.7/32`): a checkpoint then dumps the VM's network namespace whole, as it is no
/// longer what feather made, and a restore has CRIU make its veth pair.
pub fn give_an_address_of_its_own(feather: &Feather, vm: &str) {
    let init = feather.inspect(vm)["state"]["init_pid"]
        .as_i64()
        .unwrap()
        .to_string();
    let added = Command::new("nsenter")
        .args([
            "-t",
            &init,
            "-n",
            "ip",
            "addr",
            "add",
            "192.0.2.7/32",
            "dev",
            "eth0",
        ])
        .status()
        .unwrap();
    assert!(added.success(), "nsenter ip addr add in VM {vm}: {added}");
}

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

    /// Copies the host's `program` into the base at the same path, with the shared libraries
    /// and loader `ldd` names for it, so that a VM over this base can run it.
    pub fn add_host_program(&self, program: &str) {
        let listing = Command::new("ldd").arg(program).output().unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        let libraries = listing
            .split_whitespace()
            .filter(|word| word.starts_with('/'))
            .map(str::to_owned);
        for file in std::iter::once(program.to_owned()).chain(libraries) {
            let target = self.file(file.trim_start_matches('/'));
            fs::create_dir_all(target.parent().unwrap()).unwrap();
            fs::copy(&file, &target).unwrap_or_else(|e| panic!("copy {file}: {e}"));
        }
    }

    /// Mounts a tmpfs at `rel` (a separate filesystem under the base); unmounted on drop.
    pub fn mount_tmpfs(&mut self, rel: &str) -> PathBuf {
        self.mount_tmpfs_at(Path::new(rel))
    }

    /// [`ScratchBase::mount_tmpfs`] at a path that need not be UTF-8.
    pub fn mount_tmpfs_at(&mut self, rel: &Path) -> PathBuf {
        let target = self.path.join(rel);
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

    /// Binds the folder `source` at `rel` (made if missing), unmounted on drop.
    pub fn bind_at(&mut self, source: &Path, rel: &str) -> PathBuf {
        let target = self.path.join(rel);
        fs::create_dir_all(&target).unwrap();
        let status = Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(&target)
            .status()
            .unwrap();
        assert!(status.success(), "bind at {}", target.display());
        self.mounts.push(target.clone());
        target
    }

    /// Unmounts what [`ScratchBase::mount_tmpfs`] mounted last at `target`.
    pub fn unmount(&mut self, target: &Path) {
        let status = Command::new("umount").arg(target).status().unwrap();
        assert!(status.success(), "umount {}", target.display());
        // The uppermost of mounts stacked at one path: the others stay for the drop.
        if let Some(last) = self.mounts.iter().rposition(|mount| mount == target) {
            self.mounts.remove(last);
        }
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

/// A folder bound (`mount --bind`) at a folder of its own under the tests' folder, as a state
/// root bound from a data disk is; unmounted and removed on drop, also when the test failed.
pub struct Bind {
    pub target: PathBuf,
}

impl Bind {
    pub fn new(source: &Path, label: &str) -> Self {
        let bind = Bind {
            target: unique_dir("bind", label),
        };
        let status = Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(&bind.target)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "bind {} at {}",
            source.display(),
            bind.target.display()
        );
        bind
    }

    /// Unmounts it now (the drop then only removes the folder).
    pub fn unmount(&self) {
        let status = Command::new("umount").arg(&self.target).status().unwrap();
        assert!(status.success(), "umount {}", self.target.display());
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.target).status();
        let _ = fs::remove_dir(&self.target);
    }
}

/// A small ext4 filesystem with project quotas (`quota,project`, mounted `prjquota`) on a loop
/// device, for state roots whose VMs have a disk cap; unmounted and removed on drop. `new`
/// says why not when this kernel cannot mount it (ext4 quotas need CONFIG_QFMT_V2).
pub struct ProjectQuotaFs {
    pub mount: PathBuf,
    image: PathBuf,
}

impl ProjectQuotaFs {
    /// A plain ext4 filesystem (no quotas), for the fallback where project quotas are not had.
    pub fn without_prjquota(label: &str, megabytes: u32) -> Self {
        let dir = unique_dir("quota", label);
        let fs = ProjectQuotaFs {
            mount: dir.join("mnt"),
            image: dir.join("fs.img"),
        };
        fs::create_dir(&fs.mount).unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&fs.image)
            .arg(format!("{megabytes}M"))
            .status()
            .expect("mkfs.ext4 (e2fsprogs, ./setup.sh)");
        assert!(made.success());
        let mounted = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&fs.image)
            .arg(&fs.mount)
            .status()
            .unwrap();
        assert!(mounted.success());
        fs
    }

    pub fn new(label: &str, megabytes: u32) -> Result<Self, String> {
        let dir = unique_dir("quota", label);
        let fs = ProjectQuotaFs {
            mount: dir.join("mnt"),
            image: dir.join("fs.img"),
        };
        fs::create_dir(&fs.mount).unwrap();
        let size = format!("{megabytes}M");
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "quota,project"])
            .arg(&fs.image)
            .arg(&size)
            .output()
            .map_err(|e| format!("mkfs.ext4 (e2fsprogs, ./setup.sh): {e}"))?;
        if !made.status.success() {
            return Err(String::from_utf8_lossy(&made.stderr).into_owned());
        }
        let mounted = Command::new("mount")
            .args(["-o", "loop,prjquota"])
            .arg(&fs.image)
            .arg(&fs.mount)
            .output()
            .expect("mount runs");
        if !mounted.status.success() {
            return Err(format!(
                "this kernel cannot mount ext4 with project quotas: {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            ));
        }
        Ok(fs)
    }
}

impl Drop for ProjectQuotaFs {
    fn drop(&mut self) {
        // `umount -d` also frees the loop device.
        let _ = Command::new("umount").arg("-d").arg(&self.mount).status();
        if let Some(dir) = self.image.parent() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// VM `vm`'s `commit` refused for its layer at `layer`, whose folder shows `first` again (the
/// filesystem the keeper recorded, A of A-B-A, mounted back once B, which the VM saw, is
/// gone), and `first` left without the VM's `new`.
pub fn commit_refused_over_the_first(feather: &Feather, vm: &str, layer: &str, first: &Path) {
    let refused = feather.fails(&["commit", vm]);
    let why = format!("beneath the VM's layer at {layer} is not on the filesystem");
    assert!(refused.contains(&why), "{refused}");
    assert!(!first.join("new").exists(), "A untouched");
}

/// An XFS filesystem on a loop device of its own, mounted at a folder (of a scratch base):
/// XFS's `statfs` id is only its device number, its volume UUID tells it from another.
/// [`XfsVolume::format_again`] makes another volume on the same loop device (so the same
/// device number, another UUID). Unmounted, its loop device freed and its image removed on
/// drop, also when the test failed.
pub struct XfsVolume {
    pub mount: PathBuf,
    device: String,
    dir: PathBuf,
}

impl XfsVolume {
    pub fn new(label: &str, mount: &Path) -> Self {
        let dir = unique_dir("xfs", label);
        let image = dir.join("xfs.img");
        // 300 MB: the least mkfs.xfs makes; sparse, so a few MB on disk.
        fs::File::create(&image)
            .unwrap()
            .set_len(300 << 20)
            .unwrap();
        let attached = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(attached.status.success(), "losetup: {attached:?}");
        let volume = XfsVolume {
            mount: mount.to_path_buf(),
            device: String::from_utf8(attached.stdout)
                .unwrap()
                .trim()
                .to_owned(),
            dir,
        };
        fs::create_dir_all(mount).unwrap();
        let made = volume.format();
        assert!(made.status.success(), "mkfs.xfs: {made:?}");
        volume.mount();
        volume
    }

    /// Whether the kernel tells the volume's UUID (FS_IOC_GETFSUUID, Linux 6.9 or a backport).
    pub fn gives_its_uuid(&self) -> bool {
        let root = fs::File::open(&self.mount).unwrap();
        feather_sys::mount::volume_uuid(&root).is_some()
    }

    /// Unmounts the volume and makes another on the same loop device, mounted in its place.
    /// mkfs.xfs opens the device exclusively, which fails while the old volume's superblock
    /// lives on: a stopped VM's overlays, which held it, go with its mount namespaces, which
    /// the kernel releases a little after the stop (measured: 0.4 s). Tried again until then.
    pub fn format_again(&self) {
        let status = Command::new("umount").arg(&self.mount).status().unwrap();
        assert!(status.success(), "umount {}", self.mount.display());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.format().status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} still busy after 60 s",
                self.device
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.mount();
    }

    fn format(&self) -> Output {
        Command::new("mkfs.xfs")
            .args(["-q", "-f", &self.device])
            .output()
            .expect("mkfs.xfs (xfsprogs, ./setup.sh)")
    }

    fn mount(&self) {
        let mounted = Command::new("mount")
            .arg(&self.device)
            .arg(&self.mount)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount {}", self.device);
        let open = <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
        fs::set_permissions(&self.mount, open).unwrap();
    }
}

impl Drop for XfsVolume {
    fn drop(&mut self) {
        // Lazily: a test that failed may leave the volume busy, and it must not stay mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = fs::remove_dir_all(&self.dir);
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

/// A TCP port of 127.0.0.1 that no other test process holds while this one lives, for a
/// test that must name a port before something listens on it (`--publish`, a server started
/// later). Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768–60999 here),
/// so no `bind(0)` and no outgoing connection of another test can land on it between the pick
/// and its use — a port picked by `bind(0)` and freed could be (the web test's squatter once
/// raced that way). Held as `TestSubnet` holds a subnet.
pub struct TestPort {
    pub port: u16,
    _held: Held,
}

impl TestPort {
    /// A port of the 12,000 below the ephemeral range (20768–32767 here) that no test holds
    /// and that binds now.
    pub fn new() -> TestPort {
        let first_ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<usize>().ok())
            .unwrap_or(32768);
        let below = first_ephemeral.saturating_sub(12000).max(1024)..first_ephemeral;
        let (port, held) = hold_one_of("ports", "", below, |port| {
            std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok()
        });
        TestPort {
            port: port as u16,
            _held: held,
        }
    }
}

/// `redis-cli` in network namespace `ns` (None: the test's own), against `host:port`.
pub fn redis_cli(ns: Option<&str>, host: &str, port: u16, args: &[&str]) -> String {
    let mut command = Command::new("nsenter");
    match ns {
        Some(ns) => command.arg(format!("--net=/run/netns/{ns}")),
        None => command.arg("--net=/proc/self/ns/net"),
    };
    let output = command
        .args(["redis-cli", "-h", host, "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts, in running VM `vm`, a shell loop that counts in memory and writes each value to
/// /run/count every 50 ms (its stdio the VM's /dev/null, as a daemon's), and waits until it
/// has counted.
pub fn start_counting(feather: &Feather, vm: &str) {
    feather.sh(
        vm,
        "sh -c 'i=0; while true; do i=$((i+1)); echo $i > /run/count.next; \
         mv /run/count.next /run/count; sleep 0.05; done' </dev/null >/dev/null 2>&1 &",
    );
    feather.eventually("the counter has counted", || count(feather, vm) >= 3);
}

/// The counter of [`start_counting`] (0 while it cannot be read). The loop renames each
/// value into place: written in place, a read between the truncation and the write found the
/// file empty (a restored loop writes at once: CI read 0 after a restore that way).
pub fn count(feather: &Feather, vm: &str) -> u64 {
    let outcome = feather.run(&["exec", vm, "--", "cat", "/run/count"]);
    outcome.stdout.trim().parse().unwrap_or(0)
}

/// A /24 that no other test process holds while this one lives: tests that must name a
/// subnet (FEATHER_SUBNET) take one here instead of trusting their pid to pick a free one.
/// Held by an exclusive `flock` on a file per subnet, so a test killed midway frees it with
/// its process.
pub struct TestSubnet {
    /// e.g. "10.79.12.0/24"
    pub cidr: String,
    _held: Held,
}

impl TestSubnet {
    /// A /24 of `first_two.0.0/16` (e.g. "10.79"), its third byte from 1 to 250.
    pub fn of(first_two: &str) -> TestSubnet {
        let (k, held) = hold_one_of("subnets", &format!("{first_two}."), 1..251, |_| true);
        TestSubnet {
            cidr: format!("{first_two}.{k}.0/24"),
            _held: held,
        }
    }
}

/// A value held by this test process: an exclusive `flock` on its file, removed when the hold
/// ends (also by the kernel, if the process is killed; the file then stays until reused).
struct Held {
    path: PathBuf,
    _lock: nix::fcntl::Flock<fs::File>,
}

impl Drop for Held {
    /// Removed while still locked: a process that opened the file before this and locks it
    /// after finds, by `held_as_named`, that it locked a file no longer under the name.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The first value of `values`, searched from a start of this process's own, that no other
/// test process holds and that `usable` accepts, held on the file
/// /tmp/feather-tests/`folder`/`prefix``value`.
fn hold_one_of(
    folder: &str,
    prefix: &str,
    values: std::ops::Range<usize>,
    usable: impl Fn(usize) -> bool,
) -> (usize, Held) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// How many values this test process has asked for: where the next search starts.
    static ASKED: AtomicUsize = AtomicUsize::new(0);
    let folder = Path::new("/tmp/feather-tests").join(folder);
    fs::create_dir_all(&folder).unwrap();
    let start = ASKED.fetch_add(1, Ordering::SeqCst) + std::process::id() as usize * 7;
    let how_many = values.len();
    for value in (0..how_many).map(|i| values.start + (start + i) % how_many) {
        let path = folder.join(format!("{prefix}{value}"));
        if let Some(held) = held_as_named(path) {
            if usable(value) {
                return (value, held);
            }
        }
    }
    panic!(
        "every value of {values:?} under {} is held by another test or in use",
        folder.display()
    );
}

/// `path` locked by this process, if no other holds it and the file locked is still the one
/// under that name (not one a holder removed as it let go).
fn held_as_named(path: PathBuf) -> Option<Held> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::MetadataExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
    let named = fs::metadata(&path).ok()?;
    (named.ino() == lock.metadata().ok()?.ino()).then_some(Held { path, _lock: lock })
}

/// `feather diff`'s listing without its size column: `A /path` a line, as commit prints it.
pub fn diff_paths(listing: &str) -> String {
    listing
        .lines()
        .filter(|line| !line.starts_with("total:"))
        // A symlink's target (` -> TARGET`, after the path) is not part of its path.
        .map(|line| line.split(" -> ").next().unwrap_or(line))
        .map(|line| match (line.get(..1), line.find(" /")) {
            (Some(kind), Some(at)) => format!("{kind}{}\n", &line[at..]),
            _ => format!("{line}\n"),
        })
        .collect()
}

/// A plain folder of its own under /tmp/feather-tests (outside every base), removed on drop.
pub struct ScratchDir {
    pub path: PathBuf,
}

impl ScratchDir {
    pub fn new(label: &str) -> Self {
        ScratchDir {
            path: unique_dir("dir", label),
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A hold on restoring keepers just before they record the VM running (see
/// `feather_vm::keeper::HOLD_RUNNING_RECORD`): a file whose lock this holds until
/// [`RecordHold::release`] (or its drop, also when the test fails). A keeper given
/// [`RecordHold::env`] waits there, its VM restored, stopped, and still recorded as
/// checkpointed. [`RecordHold::before_criu`] holds them earlier instead.
pub struct RecordHold {
    dir: ScratchDir,
    lock: Option<fs::File>,
    /// The keeper's test-only variable that names the hold's file.
    variable: &'static str,
}

impl RecordHold {
    pub fn new(label: &str) -> Self {
        Self::at(label, feather_vm::keeper::HOLD_RUNNING_RECORD)
    }

    /// A hold on restoring keepers once they have made the host side of the VM's network,
    /// before CRIU restores the VM (`feather_vm::keeper::HOLD_BEFORE_CRIU`): the restore has
    /// joined the root's network, and the veth pair of a namespace CRIU dumped is not made yet.
    pub fn before_criu(label: &str) -> Self {
        Self::at(label, feather_vm::keeper::HOLD_BEFORE_CRIU)
    }

    /// A hold on starting background keepers once they have told `feather start` the VM is
    /// up, before they open its broker and tell its init Start
    /// (`feather_vm::keeper::HOLD_BEFORE_BEGIN`).
    pub fn before_begin(label: &str) -> Self {
        Self::at(label, feather_vm::keeper::HOLD_BEFORE_BEGIN)
    }

    /// A hold on the thread that closes a claimed VM's root watch, before it closes it
    /// (`feather_vm::keeper::HOLD_ROOT_WATCH_CLOSE`).
    pub fn root_watch_close(label: &str) -> Self {
        Self::at(label, feather_vm::keeper::HOLD_ROOT_WATCH_CLOSE)
    }

    /// A hold on starting keepers once they have recorded the VM running (a background
    /// keeper: answered `feather start`), right before their late look at the registry
    /// (`feather_vm::keeper::HOLD_BEFORE_LATE_LOOK`).
    pub fn before_late_look(label: &str) -> Self {
        Self::at(label, feather_vm::keeper::HOLD_BEFORE_LATE_LOOK)
    }

    /// A hold on kept VMs' keepers once they have answered their VM's stop, before their last
    /// steps (`feather_vm::keeper::HOLD_AFTER_STOP_ANSWER`).
    pub fn after_stop_answer(label: &str) -> Self {
        Self::at(label, feather_vm::keeper::HOLD_AFTER_STOP_ANSWER)
    }

    /// A hold on `feather serve` once it has resumed a VM the sender let go, before it tells
    /// the sender that the VM runs there (`feather_vm::keeper::HOLD_AFTER_RESUME`; given to
    /// the serve).
    pub fn after_resume(label: &str) -> Self {
        Self::at(label, feather_vm::keeper::HOLD_AFTER_RESUME)
    }

    /// A hold on a post-copy `feather migrate` once the receiver restored the VM and it froze
    /// the VM at the source, before it lets it go (`feather_vm::keeper::HOLD_BEFORE_RELEASE`;
    /// given to the migrate).
    pub fn before_release(label: &str) -> Self {
        Self::at(label, feather_vm::keeper::HOLD_BEFORE_RELEASE)
    }

    /// A hold on starting keepers once they have listed the host's mounts under the VM's base,
    /// before they clone its init (`feather_vm::keeper::HOLD_AFTER_MOUNT_LIST`).
    pub fn after_mount_list(label: &str) -> Self {
        Self::at(label, feather_vm::keeper::HOLD_AFTER_MOUNT_LIST)
    }

    /// A hold on restoring keepers once they have recorded what the VM's layers lie over,
    /// before their child copies the host's mounts
    /// (`feather_vm::snapshot::HOLD_AFTER_RESTORE_RECORD`).
    pub fn after_restore_record(label: &str) -> Self {
        Self::at(label, feather_vm::snapshot::HOLD_AFTER_RESTORE_RECORD)
    }

    /// A hold on starting VMs' inits once they have found the filesystems under the base still
    /// mounted in their namespace, before they mount their layers
    /// (`feather_vm::rootfs::HOLD_AFTER_MOUNTS_FOUND`).
    pub fn after_mounts_found(label: &str) -> Self {
        Self::at(label, feather_vm::rootfs::HOLD_AFTER_MOUNTS_FOUND)
    }

    /// A hold on restoring keepers' children once they have mounted the VM's root overlay,
    /// before they mount the layers of the host's filesystems
    /// (`feather_vm::snapshot::HOLD_BEFORE_RESTORED_LAYERS`).
    pub fn before_restored_layers(label: &str) -> Self {
        Self::at(label, feather_vm::snapshot::HOLD_BEFORE_RESTORED_LAYERS)
    }

    /// A hold on restoring keepers once CRIU has restored the VM, frozen, before they check
    /// the restored tree (`feather_vm::snapshot::HOLD_BEFORE_RESTORED_CHECK`).
    pub fn before_restored_check(label: &str) -> Self {
        Self::at(label, feather_vm::snapshot::HOLD_BEFORE_RESTORED_CHECK)
    }

    /// A hold on restoring keepers at CRIU's `post-restore` notification: every task restored,
    /// none resumed, CRIU's last word to a post-copy restore's `lazy-pages` daemon not said yet
    /// (`feather_vm::snapshot::HOLD_AT_POST_RESTORE`).
    pub fn at_post_restore(label: &str) -> Self {
        Self::at(label, feather_vm::snapshot::HOLD_AT_POST_RESTORE)
    }

    /// `feather start vm` of `feather`'s root under this hold, its stderr piped; returned once a
    /// process of the start waits for the hold.
    pub fn start(&self, feather: &Feather, vm: &str) -> Child {
        let (variable, value) = self.env();
        let start = feather
            .command()
            .env(variable, value)
            .args(["start", vm])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        feather.eventually("the start waits for the hold", || self.awaited());
        start
    }

    fn at(label: &str, variable: &'static str) -> Self {
        let dir = ScratchDir::new(label);
        let lock = fs::File::create(dir.path.join("hold")).unwrap();
        lock.lock().unwrap();
        RecordHold {
            dir,
            lock: Some(lock),
            variable,
        }
    }

    /// The variable and value that make a keeper (and the keepers a command starts) wait.
    pub fn env(&self) -> (&'static str, PathBuf) {
        (self.variable, self.dir.path.join("hold"))
    }

    /// `feather restore vm` of `feather`'s root under this hold, its output piped; returned once
    /// its keeper waits for the hold (it first waits for the checkpointing keeper's end, up to
    /// 60 s: that keeper finishes its last steps after its answer).
    pub fn restore(&self, feather: &Feather, vm: &str) -> Child {
        let (variable, value) = self.env();
        let restoring = feather
            .command()
            .env(variable, value)
            .args(["restore", vm])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        feather.eventually_within(
            "the restoring keeper waits for the hold",
            Duration::from_secs(60),
            || self.awaited(),
        );
        restoring
    }

    /// Whether a process waits for the hold now, as the kernel's table of file locks says.
    pub fn awaited(&self) -> bool {
        self.waiter().is_some()
    }

    /// The process that waits for the hold now, if one does (a line of `/proc/locks` such as
    /// `1: -> FLOCK  ADVISORY  READ 4321 08:01:5678 0 EOF` names its pid and the file).
    pub fn waiter(&self) -> Option<i32> {
        flock_waiters(&self.dir.path.join("hold"))
            .into_iter()
            .next()
    }

    /// The init of the VM whose restoring keeper waits for the hold: the keeper's child in a
    /// mount namespace of its own (CRIU restores the VM's init as the keeper's child).
    pub fn held_init(&self) -> i32 {
        let keeper = self.waiter().expect("a keeper waits for the hold");
        let namespace = |pid: i32| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        let children = fs::read_dir(format!("/proc/{keeper}/task"))
            .unwrap()
            .flat_map(|task| fs::read_to_string(task.unwrap().path().join("children")))
            .collect::<Vec<String>>()
            .join(" ");
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .find(|&pid| namespace(pid) != namespace(keeper))
            .expect("the restoring keeper has its VM's init as a child")
    }

    /// `feather <args>` of `feather`'s root under this hold, run to its end; it must succeed.
    pub fn run(&self, feather: &Feather, args: &[&str]) {
        let (variable, value) = self.env();
        let output = feather
            .command()
            .env(variable, value)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    }

    /// The process that waits for the hold, once one does (up to 60 s; `what`: what the test
    /// waits for, for the failure's message).
    pub fn await_waiter(&self, feather: &Feather, what: &str) -> i32 {
        let waiter = std::cell::Cell::new(None);
        feather.eventually_within(what, Duration::from_secs(60), || {
            waiter.set(self.waiter());
            waiter.get().is_some()
        });
        waiter.get().unwrap()
    }

    /// Lets the waiting keepers go on.
    pub fn release(&mut self) {
        self.lock = None;
    }
}

/// The processes blocked in a `flock` of the file at `path`, as `/proc/locks` lists them
/// (`1: -> FLOCK  ADVISORY  READ 4321 08:01:5678 0 EOF` names the waiter's pid, and the file
/// by its filesystem's device and its inode: an inode number alone is another filesystem's
/// file too, which another test may lock).
pub fn flock_waiters(path: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(path) else {
        return Vec::new();
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let file = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.get(1) == Some(&"->") && fields.contains(&file.as_str()))
        .filter_map(|fields| fields.get(5)?.parse().ok())
        .collect()
}

/// The processes other than this one with the file at `path` open (a descriptor whose link in
/// `/proc/PID/fd` reads `path`: no filesystem is asked, so a stopped FUSE server's file held
/// by another test's process hangs nothing): while the test holds the file's lock, those that
/// wait for it (feather's waits try the lock again and again, holding the file open, rather
/// than block in `flock`). `path` as the kernel spells it: absolute, through no link.
pub fn other_openers(path: &Path) -> Vec<i32> {
    let opens = |pid: i32| {
        fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|to| to == path))
        })
    };
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != std::process::id() as i32 && opens(pid))
        .collect()
}

/// Python that fills the mount namespace of the process `sys.argv[1]` up to `fs.mount-max`, so that no
/// further mount can be made in it (ENOSPC): recursive binds of trees that double in size,
/// then of ever smaller ones, a few hundred system calls for the host's 100,000. Prints the
/// error of a last single bind.
const FILL_MOUNT_NAMESPACE_PY: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MS_REC, MS_PRIVATE, CLONE_NEWNS = 4096, 16384, 1 << 18, 0x00020000
def mount(source, target, fstype, flags):
    return 0 if libc.mount(source, target, fstype, flags, None) == 0 else ctypes.get_errno()
if libc.setns(os.open(f"/proc/{sys.argv[1]}/ns/mnt", os.O_RDONLY), CLONE_NEWNS) != 0:
    sys.exit("setns: " + os.strerror(ctypes.get_errno()))
top = b"/run/fill"
os.makedirs(top, exist_ok=True)
assert mount(b"fill", top, b"tmpfs", 0) == 0 and mount(None, top, None, MS_PRIVATE) == 0
trees, made = [], 0
while True:
    tree = top + b"/t%d" % len(trees)
    os.mkdir(tree)
    if mount(tree, tree, None, MS_BIND):
        break
    copies = [tree + b"/a", tree + b"/b"] if trees else []
    for copy in copies:
        os.mkdir(copy)
    if any(mount(trees[-1], copy, None, MS_BIND | MS_REC) for copy in copies):
        break
    trees.append(tree)
for tree in reversed(trees):
    while True:
        made += 1
        copy = top + b"/r%d" % made
        os.mkdir(copy)
        if mount(tree, copy, None, MS_BIND | MS_REC):
            break
print(errno.errorcode.get(mount(top, top, None, MS_BIND), "made"))
"#;

/// Fills the mount namespace of process `pid` (see [`FILL_MOUNT_NAMESPACE_PY`]): every mount
/// made in it from then on fails with ENOSPC, as on a host out of mounts. The namespace ends
/// with its last process, and its mounts with it.
pub fn fill_mount_namespace(pid: i32) {
    let filled = Command::new("python3")
        .args(["-c", FILL_MOUNT_NAMESPACE_PY, &pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&filled.stdout),
        "ENOSPC\n",
        "{filled:?}"
    );
}

/// The characters of `text` a terminal would act on (other than the line ends of `\n`):
/// C0 and C1 controls, DEL, and bidirectional controls. Empty for safely escaped output.
pub fn terminal_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| c != '\n')
        .filter(|&c| {
            c.is_control()
                || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

/// A folder of the test's on the host (under /tmp/feather-tests, which VMs over the host's `/`
/// see through their lower layer), removed on drop.
pub struct HostDir(pub PathBuf);

impl HostDir {
    pub fn new(label: &str) -> Self {
        HostDir(unique_dir("host", label))
    }

    /// Links `bin/feather-open` here to the feather binary and returns its path: a VM over the
    /// host's `/` runs it as its `feather-open`.
    pub fn feather_open(&self) -> String {
        let bin = self.0.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let open = bin.join("feather-open");
        if !open.exists() {
            symlink(Feather::bin(), &open).unwrap();
        }
        open.display().to_string()
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
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

/// What of a state root is on the host outside its folder, for leak counts: its processes
/// (keepers, inits, teardown children: their command lines name the root), the host's mounts
/// that name it, its bridge's links and its nftables tables (named after the bridge).
#[derive(Debug, Default, PartialEq)]
pub struct HostTraces {
    pub processes: Vec<i32>,
    pub mounts: Vec<String>,
    pub links: Vec<String>,
    pub nft_tables: Vec<String>,
}

impl HostTraces {
    /// The traces of the root at `root` whose bridge (if it has had one) is `bridge`.
    pub fn of(root: &Path, bridge: Option<&str>) -> HostTraces {
        let root_text = root.to_string_lossy().into_owned();
        let processes = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != std::process::id() as i32)
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&root_text))
            })
            .collect();
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(&root_text))
            .map(str::to_owned)
            .collect();
        let lines = |program: &str, args: &[&str]| -> Vec<String> {
            let out = Command::new(program).args(args).output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        };
        // Bridge names are host-wide and handed out lowest first: once this root returned its
        // bridge, the root of a test running beside this one may claim the same name, and what
        // is found under it is that root's. Its claim is looked for after the listing too: a
        // root may claim the name and make its bridge while the links are listed.
        let anothers = |bridge: &str| bridge_claim(bridge).is_some_and(|claim| !claim.names(root));
        let (links, nft_tables) = match bridge {
            Some(bridge) if !anothers(bridge) => {
                let found = (
                    lines("ip", &["-o", "link"])
                        .into_iter()
                        .filter(|l| {
                            l.contains(&format!(" {bridge}:"))
                                || l.contains(&format!("master {bridge} "))
                        })
                        .collect(),
                    lines("nft", &["list", "tables"])
                        .into_iter()
                        .filter(|l| {
                            // feather_net::settings::RootNetwork::table.
                            let table = l.split_whitespace().last().unwrap_or_default();
                            table == bridge || table.strip_prefix("feather-") == Some(bridge)
                        })
                        .collect(),
                );
                if anothers(bridge) {
                    (Vec::new(), Vec::new())
                } else {
                    found
                }
            }
            _ => (Vec::new(), Vec::new()),
        };
        HostTraces {
            processes,
            mounts,
            links,
            nft_tables,
        }
    }
}

/// The host-wide claim on a bridge name (feather-net's `/run/feather-net/claims/<bridge>`),
/// if a state root holds one.
pub struct BridgeClaim(String);

impl BridgeClaim {
    /// Whether the claim is the root's at `root`.
    pub fn names(&self, root: &Path) -> bool {
        let line = format!("root = \"{}\"", root.display());
        self.0.lines().any(|l| l == line)
    }
}

pub fn bridge_claim(bridge: &str) -> Option<BridgeClaim> {
    fs::read_to_string(Path::new("/run/feather-net/claims").join(bridge))
        .ok()
        .map(BridgeClaim)
}

/// The host's interface indexes now (`ip -o link`: "INDEX: NAME…").
pub fn host_link_indexes() -> Vec<u32> {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

/// The cgroup folders of feather VMs on this host, in every hierarchy.
pub fn feather_cgroups() -> Vec<PathBuf> {
    fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|hierarchy| {
            fs::read_dir(hierarchy.path().join("feather"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|group| group.path())
        // The pool's fills' group stays, as `feather/` itself does (feather_vm::filler).
        .filter(|path| path.is_dir() && !path.ends_with("pool"))
        .collect()
}

/// Of the VM cgroups on this host now ([`feather_cgroups`]), those not in `before` (that
/// listing, taken when the test began) that are empty and may be the root's at `root`:
/// tagged with it, or with no root at all (a group whose tag could not be written). The
/// groups of other roots — tests running beside this one, whose VMs come and go, and whose
/// groups may stand empty a while (a VM whose keeper was killed, until its root's next
/// command) — are theirs to account for.
pub fn new_empty_groups_not_of_other_roots(before: &[PathBuf], root: &Path) -> Vec<PathBuf> {
    let same = |tagged: &Path| {
        let spelled = |path: &Path| fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        tagged == root || spelled(tagged) == spelled(root)
    };
    let hierarchies = feather_sys::cgroup::Hierarchies::detect();
    let others: Vec<std::ffi::OsString> =
        feather_sys::cgroup::groups_with_roots(&hierarchies, "feather")
            .into_iter()
            .filter(|(_, tagged)| tagged.as_deref().is_some_and(|tagged| !same(tagged)))
            .filter_map(|(group, _)| group.relative().file_name().map(ToOwned::to_owned))
            .collect();
    feather_cgroups()
        .into_iter()
        .filter(|group| !before.contains(group))
        .filter(|group| {
            group
                .file_name()
                .is_none_or(|name| !others.iter().any(|o| o == name))
        })
        .filter(|group| cgroup_is_empty(group))
        .collect()
}

/// The cgroup folders of the VM whose id is `id`, in every hierarchy; a test that makes a VM
/// leave its group on purpose holds one, and whatever is left of the group when it is dropped
/// (the test failed half-way) is removed: its processes killed, its folders deepest first.
pub struct VmGroups {
    id: String,
}

impl VmGroups {
    pub fn of(id: &str) -> VmGroups {
        VmGroups { id: id.to_owned() }
    }

    /// The group's folders that exist now.
    pub fn present(&self) -> Vec<PathBuf> {
        feather_cgroups()
            .into_iter()
            .filter(|group| {
                group
                    .file_name()
                    .is_some_and(|name| name == self.id.as_str())
            })
            .collect()
    }
}

impl Drop for VmGroups {
    fn drop(&mut self) {
        remove_cgroups(&self.present());
    }
}

/// Kills the processes of `groups` (and of the groups below them) and removes them, deepest
/// first: what a test's clean-up does with a VM's cgroup that feather left behind.
pub fn remove_cgroups(groups: &[PathBuf]) {
    for _ in 0..100 {
        let mut busy = false;
        for group in groups {
            let mut below: Vec<PathBuf> = walk_dirs(group);
            below.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
            for dir in below {
                let _ = fs::write(dir.join("cgroup.kill"), "1");
                for pid in fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|line| line.parse().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if fs::remove_dir(&dir).is_err() && dir.exists() {
                    busy = true;
                }
            }
        }
        if !busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `dir` and every folder below it.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < found.len() {
        let entries: Vec<PathBuf> = fs::read_dir(&found[i])
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        found.extend(entries);
        i += 1;
    }
    found
}

/// Whether a cgroup holds no process.
pub fn cgroup_is_empty(path: &Path) -> bool {
    fs::read_to_string(path.join("cgroup.procs")).map_or(true, |procs| procs.trim().is_empty())
}

/// A program holding 256 MiB and writing into it every 5 ms without changing what it holds
/// (each tick rewrites a byte of another page with its own value): `/run/sum-before` is the
/// SHA-256 of the 256 MiB once filled; a file `/run/sum-request` makes it write the SHA-256 it
/// finds then to `/run/sum-after`; `/run/longest-gap` is the longest time between two ticks in
/// milliseconds since it was filled (a frozen VM's ticks stop; measured from inside, on the
/// wall clock: CRIU's time namespace makes the monotonic one skip a checkpoint's pause).
pub const MEMORY_WRITER: &str = include_str!("memory-writer.py");

/// A python program that rewrites `/var/tmp/layer/counter` in place, makes one file and removes
/// another in that folder every 5 ms, and checks at each round that the last round's files are
/// as it left them (a mismatch is written to `/var/tmp/layer/MISMATCH`): across a migration, it
/// proves that what the VM wrote and removed while its layer was pre-copied arrived.
pub const LAYER_WRITER: &str = include_str!("layer-writer.py");

/// Fails the test if any mount of this host lies under `dir` (a test's VM folder, say).
pub fn assert_no_mount_under(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.display().to_string();
    assert!(
        !mounts.lines().any(|line| line.contains(&dir)),
        "a mount is left under {dir}:\n{mounts}"
    );
}

/// The TCP sockets of process `pid` that listen (state 0A in its namespace's
/// `/proc/<pid>/net/tcp` and `tcp6`), as those lines.
pub fn listening_tcp_sockets_of(pid: i32) -> Vec<String> {
    let own: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .flat_map(|table| {
            fs::read_to_string(format!("/proc/{pid}/net/{table}"))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(3) == Some(&"0A")
                && fields.get(9).is_some_and(|i| own.iter().any(|o| o == i))
        })
        .collect()
}

/// `feather ARGS` run while `lock` is held by a stopped process: its stderr, once it has
/// failed (within 60 s, else the test fails: it waited for the holder) naming the holder's
/// pid and how to let it go on (`kill -CONT`).
pub fn failed_behind_a_stopped_holder(feather: &Feather, lock: &Path, args: &[&str]) -> String {
    let limit = std::time::Duration::from_secs(60);
    failed_behind_a_stopped_holder_within(feather, lock, args, limit)
}

/// [`failed_behind_a_stopped_holder`], failed within `limit` (a command's own bound on its
/// wait, where waiting it out would also end in a failure naming the holder).
pub fn failed_behind_a_stopped_holder_within(
    feather: &Feather,
    lock: &Path,
    args: &[&str],
    limit: std::time::Duration,
) -> String {
    let holder = feather_testkit::flock_holder::FlockHolder::of(lock).stopped();
    let pid = holder.pid();
    let mut command = feather.command();
    command.args(args);
    let what = format!("feather {args:?}, {lock:?} held by a stopped process");
    let out = feather_testkit::run_within(&mut command, limit, &what);
    drop(holder);
    let said = out.stderr;
    assert_ne!(out.code, 0, "{said}");
    assert!(said.contains(&format!("kill -CONT {pid}")), "{said}");
    said
}

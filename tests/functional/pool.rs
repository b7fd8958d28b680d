//! The pool of VMs made ahead for `run --rm` (docs/design.md, "The pool"): a run from it is a
//! run in a VM of its own, claimed once; whatever ends it, nothing is left; a VM that no
//! longer matches the host is not used. On by default (one VM, ended after its idle time):
//! the tests of that path are at the end.

use std::collections::BTreeSet;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::lifecycle::{assert_nothing_left, leak_cycles, root_with_known_bridge};
use crate::support::{self, Feather, TestSubnet};

/// A state root with a pool, on a subnet of its own (every command of it, and the filler a run
/// starts, see the same `FEATHER_SUBNET`, which the pool's fingerprint includes); drained on
/// drop, whatever the test did.
struct Pooled {
    feather: Feather,
    subnet: TestSubnet,
    bridge: String,
    size: usize,
    /// Test hooks every command of the root carries (and so every fill, and every keeper a
    /// fill starts): [`Pooled::hooked`].
    hooks: Vec<(&'static str, std::path::PathBuf)>,
}

impl Pooled {
    fn new(label: &str, size: usize) -> Pooled {
        let (feather, subnet, bridge) = root_with_known_bridge(label);
        let pooled = Pooled {
            feather,
            subnet,
            bridge,
            size,
            hooks: Vec::new(),
        };
        pooled.ok(&["pool", "--size", &size.to_string()]);
        pooled.whole();
        pooled
    }

    /// Waits until the pool has its size of ready VMs. Any host mount made meanwhile (other
    /// tests of the suite mount, in parallel) turns them stale: a fill then makes new ones.
    /// The ready set it saw whole: looked at again, the pool may be stale already (another
    /// test's mount), and a second look would see it empty.
    fn whole(&self) -> BTreeSet<String> {
        let seen = std::cell::RefCell::new(BTreeSet::new());
        self.feather.eventually("the pool is whole", || {
            let ready = self.ready();
            let whole = ready.len() == self.size;
            if !whole {
                self.ok(&["pool", "--fill"]);
            }
            *seen.borrow_mut() = ready;
            whole
        });
        seen.into_inner()
    }

    /// Runs `run` (which says the name of the VM it ran in) until it ran in a VM the pool
    /// showed ready just before, at most three times (see [`Pooled::whole`]): that name, and
    /// the pool as it was.
    fn taken_from_ready(&self, mut run: impl FnMut() -> String) -> (String, BTreeSet<String>) {
        let mut tries = Vec::new();
        for _ in 0..3 {
            let ready = self.whole();
            let name = run();
            if ready.contains(&name) {
                return (name, ready);
            }
            tries.push((name, ready));
        }
        panic!("no run took a VM the pool showed ready: {tries:?}");
    }

    /// A root whose pool holds one VM, none made yet: its size written as `pool --size 1`
    /// would, without the fill that command starts (the test makes what it needs first).
    fn of_one_unfilled(label: &str) -> Pooled {
        let mut pool = Pooled::new(label, 0);
        fs::write(pool.feather.root.join("pool/size"), "1\n").unwrap();
        pool.size = 1;
        pool
    }

    /// A state root as a user's first command finds it: no pool setting, so the default's
    /// (one VM, made by the fill of the root's first `run --rm`).
    fn by_default(label: &str) -> Pooled {
        let (feather, subnet, bridge) = root_with_known_bridge(label);
        Pooled {
            feather,
            subnet,
            bridge,
            size: 1,
            hooks: Vec::new(),
        }
    }

    /// This root with test hook `variable` set to `hook` in every command of it: a hook for
    /// keepers reaches a pooled VM's keeper only through the fill that made it, and any fill
    /// (one of [`Pooled::whole`]'s, after another test's mount made the pool stale) can make
    /// the VM a run claims.
    fn hooked(mut self, variable: &'static str, hook: &Hook) -> Pooled {
        self.hooks.push((variable, hook.path.clone()));
        self
    }

    /// A command of this root, in the pool as a user's is (`support::NO_POOL` removed).
    fn command(&self) -> Command {
        let mut command = self.feather.command();
        command
            .env("FEATHER_SUBNET", &self.subnet.cidr)
            .env_remove(support::NO_POOL)
            .envs(self.hooks.iter().map(|(variable, path)| (variable, path)));
        command
    }

    fn output(&self, args: &[&str]) -> std::process::Output {
        self.command().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "feather {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pooled VMs ready to be claimed, as `feather pool` names them.
    fn ready(&self) -> BTreeSet<String> {
        let shown = self.ok(&["pool"]);
        let line = shown
            .lines()
            .find_map(|line| line.strip_prefix("ready: "))
            .unwrap_or_default();
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    }

    /// The pool's entries on disk, ready or not.
    fn entries(&self) -> Vec<String> {
        support::names_in(&self.feather.root.join("pool/vms"))
    }

    fn vm_folders(&self) -> Vec<String> {
        support::names_in(&self.feather.root.join("vms"))
    }

    /// The pool drained, and nothing of it or of any VM left on the host or in the root.
    fn drained_leaving_nothing(&self, cgroups_before: &[std::path::PathBuf]) {
        self.ok(&["pool", "--drain"]);
        // Gone when the drain returns, before any other command (which would wait for
        // teardowns under way) looks.
        let (entries, folders) = (self.entries(), self.vm_folders());
        assert!(entries.is_empty(), "entries left: {entries:?}");
        assert!(folders.is_empty(), "left in vms: {folders:?}");
        assert_eq!(self.ok(&["pool"]).lines().next(), Some("size: 0"));
        assert_nothing_left(&self.feather, &self.bridge, cgroups_before);
    }

    /// `pool --size 1` of the root given as `root` (its path, or another spelling), its VM's
    /// keeper given no inotify instance (a test hook): the VM's name and its keeper's pid.
    fn filled_without_inotify(&self, root: &std::path::Path) -> (String, i32) {
        let out = Command::new(Feather::bin())
            .arg("--root")
            .arg(root)
            .args(["pool", "--size", "1"])
            .env("FEATHER_SUBNET", &self.subnet.cidr)
            .env(feather_vm::root_watch::NO_INOTIFY, "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let name = self.entries().into_iter().next().expect("a pooled VM");
        let keeper = keeper_of(self, &name);
        (name, keeper)
    }

    /// `pool --fill` of this root, run by `sh -c script` (which ends with `exec "$@"`).
    fn fill_in_shell(&self, script: &str) -> Command {
        let ours = self.command();
        let mut fill = Command::new("sh");
        fill.args(["-c", script, "sh"])
            .arg(ours.get_program())
            .args(ours.get_args())
            .args(["pool", "--fill"])
            .envs(ours.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env_remove(support::NO_POOL)
            .stdin(Stdio::null());
        fill
    }

    /// [`Pooled::fill_in_shell`] held by `hook` (`pool::HOLD_FILL`) under the pool's lock, once
    /// it holds it.
    fn fill_held(&self, script: &str, hook: &Hook) -> std::process::Child {
        let fill = self
            .fill_in_shell(script)
            .env(feather_vm::pool::HOLD_FILL, &hook.path)
            .spawn()
            .unwrap();
        let lock = self.feather.root.join("pool/fill.lock");
        // Held under its lock once it has said who fills (the hook holds it after): another
        // fill coming before the record would wait rather than return (review fixpool29 L2').
        let record = self.feather.root.join("pool/filler");
        self.feather
            .eventually("the held fill holds the pool's lock and says so", || {
                holds_flock(fill.id(), &lock) && record.exists()
            });
        fill
    }

    /// A symbolic link to the root's folder, in a folder of its own, removed on drop.
    fn link_to_root(&self, label: &str) -> (std::path::PathBuf, Remove) {
        let links = support::unique_dir("links", label);
        let link = links.join("root");
        std::os::unix::fs::symlink(&self.feather.root, &link).unwrap();
        (link, Remove(links))
    }

    /// Removes the root's folder by hand, as scripts do (its network's namespaces made ahead,
    /// mounted in it, unmounted first).
    fn remove_the_root_by_hand(&self) {
        let root = &self.feather.root;
        self.feather
            .eventually("the root's folder is removed by hand", || {
                let mounts = support::HostTraces::of(root, None).mounts;
                for point in mounts.iter().filter_map(|line| line.split(' ').nth(4)) {
                    let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
                }
                fs::remove_dir_all(root).is_ok() || !root.exists()
            });
    }

    /// Once the pooled VM of this root, removed by hand, is gone: no port is left on its
    /// bridge, nor a new VM cgroup; the next root that chooses its network removes this one's
    /// bridge and tables (feather_net::removed_roots), leaving nothing of it on the host.
    fn removed_roots_network_goes_with_the_next_root(
        &self,
        root: &std::path::Path,
        cgroups_before: &[std::path::PathBuf],
    ) {
        let ports = format!("/sys/class/net/{}/brif", self.bridge);
        let left: Vec<String> = support::names_in(std::path::Path::new(&ports));
        assert!(left.is_empty(), "ports left on {}: {left:?}", self.bridge);
        self.feather.eventually("no new VM cgroup stays", || {
            support::new_empty_groups_not_of_other_roots(cgroups_before, root).is_empty()
        });
        let (next, next_subnet, _) = root_with_known_bridge("pool-after-root-removed");
        let out = next
            .command()
            .env("FEATHER_SUBNET", &next_subnet.cidr)
            .args(["run", "--rm", "--", "true"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            support::HostTraces::of(root, Some(&self.bridge)),
            support::HostTraces::default(),
            "the removed root's network is left on the host"
        );
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // Not in a root a test removed: the drain would make its folder again.
        if self.feather.root.exists() {
            let _ = self.output(&["pool", "--drain"]);
        }
    }
}

/// A folder a test made, removed whatever its outcome.
struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether `hostname` is a pooled VM's (`run-` and 12 hex digits), not a run's own VM's
/// (`run-` and the run's pid).
fn from_the_pool(hostname: &str) -> bool {
    hostname
        .strip_prefix("run-")
        .is_some_and(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The script each comparison runs: its output, error output, folder, environment, limits,
/// `NoNewPrivs`, seccomp mode, capability sets, audit login uid, exit code; the hostname is printed apart (a VM's own name).
const SCRIPT: &str =
    "echo out; echo err >&2; pwd; env | sort; ulimit -a; umask; id; read line; echo \"in: $line\"; \
     grep -E '^(NoNewPrivs|Seccomp|Cap)' /proc/self/status; cat /proc/self/loginuid; echo; exit 7";

/// A run from the pool gives what a run in a VM of its own gives: the same output, error
/// output, exit code, folder (the caller's), environment, limits and stdin; its hostname is
/// the pooled VM's name, `run-` and hex digits as a run's own VM's.
#[test]
fn a_run_from_the_pool_is_a_run_in_a_vm_of_its_own() {
    let pool = Pooled::new("pool-same", 1);
    let pooled = pool.ready();
    let caller = support::unique_dir("caller", "pool-same");
    let _remove = Remove(caller.clone());
    let run = |args: &[&str]| {
        let mut child = pool
            .command()
            .current_dir(&caller)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"given\n").unwrap();
        child.wait_with_output().unwrap()
    };
    let from_pool = run(&["run", "--rm", "--", "sh", "-c", SCRIPT]);
    // The run took the pooled VM; the fill it started once its command ended made another.
    // An entry, made by that fill (the claim removed the old one); ready once whole, filled
    // again here if another test's mount made it stale meanwhile.
    pool.feather
        .eventually("the pool is refilled", || pool.entries().len() == 1);
    let refilled = pool.whole();
    assert!(pooled.is_disjoint(&refilled), "a pooled VM was used twice");
    // `--net private` is the default network named: not the defaults' spelling, so a miss.
    let own = run(&["run", "--rm", "--net", "private", "--", "sh", "-c", SCRIPT]);
    assert_eq!(from_pool.status.code(), Some(7));
    assert_eq!(own.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&from_pool.stdout),
        String::from_utf8_lossy(&own.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&from_pool.stderr), "err\n");
    assert!(
        String::from_utf8_lossy(&from_pool.stdout).contains(&format!("\n{}\n", caller.display()))
    );
    // A run from the pool runs in the pooled VM: its name is the hostname.
    let hostname = |args: &[&str]| pool.ok(&[&["run", "--rm"], args, &["--", "hostname"]].concat());
    assert!(!refilled.is_empty());
    pool.taken_from_ready(|| hostname(&[]).trim().to_owned());
    let own = hostname(&["--net", "private"]);
    assert!(
        own.starts_with("run-") && !from_the_pool(own.trim()),
        "{own}"
    );
}

/// A caller whose context is not the pooled VM's keeper's (here `NoNewPrivs`, as a systemd
/// unit's `NoNewPrivileges=` sets it; the network namespace, seccomp, capability sets, LSM label
/// and audit login uid alike) does not take the VM, whose command would lose it: its command runs
/// in a VM of its own, which keeps it, and the pooled VM stays for a caller it fits. Nor does a
/// fill such a caller starts make a VM, which would pass it on to others.
#[test]
fn a_caller_of_another_context_takes_no_pooled_vm_and_fills_none() {
    let pool = Pooled::new("pool-context", 1);
    let ready = pool.ready();
    let constrained = |args: &[&str]| {
        let ours = pool.command();
        let mut command = Command::new("setpriv");
        command
            .arg("--no-new-privs")
            .arg(ours.get_program())
            .args(ours.get_args())
            .args(args)
            .envs(ours.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env_remove(support::NO_POOL)
            .stdin(Stdio::null());
        command.output().unwrap()
    };
    let out = constrained(&[
        "run",
        "--rm",
        "--",
        "sh",
        "-c",
        "hostname; grep NoNewPrivs /proc/self/status",
    ]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    let hostname = said.lines().next().unwrap_or_default();
    assert!(
        !from_the_pool(hostname),
        "the constrained run took a pooled VM: {said}"
    );
    assert!(said.contains("NoNewPrivs:\t1"), "{said}");
    // Its VM stays for a caller it fits (another test's mount may have made it stale: the
    // entry is what counts).
    assert_eq!(pool.entries(), ready.iter().cloned().collect::<Vec<_>>());
    // A fill from that context makes nothing, and says why.
    pool.ok(&["pool", "--drain"]);
    let out = constrained(&["pool", "--size", "1"]);
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("NoNewPrivs"), "{said}");
    assert!(pool.entries().is_empty(), "{:?}", pool.entries());
}

/// Runs that start together each get a VM of their own: a pooled VM's keeper gives it to one
/// claimer only, the others take another or make their own.
#[test]
fn concurrent_runs_never_share_a_pooled_vm() {
    let pool = Pooled::new("pool-concurrent", 3);
    // Another test's mount may turn the whole pool stale (see `Pooled::whole`): a second
    // round then.
    for round in 0..2 {
        pool.whole();
        if concurrent_runs_took_from(&pool) || round == 1 {
            return;
        }
    }
}

/// Six runs at once from `pool`: each in a VM of its own; whether any took a pooled one
/// (asserted in the last round).
fn concurrent_runs_took_from(pool: &Pooled) -> bool {
    let pooled = pool.ready();
    let runs: Vec<_> = (0..6)
        .map(|_| {
            pool.command()
                .args(["run", "--rm", "--", "sh", "-c", "hostname; sleep 1"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let names: Vec<String> = runs
        .into_iter()
        .map(|run| {
            let out = run.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
        .collect();
    let distinct: BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "a VM shared: {names:?}");
    names.iter().any(|n| pooled.contains(n))
}

/// A run killed in the middle of its command (SIGKILL: it can do nothing) ends its pooled VM:
/// the keeper sees the claim's connection close and removes the VM as a throw-away VM's
/// teardown does; drained, nothing is left.
#[test]
fn a_run_killed_mid_command_ends_its_pooled_vm() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-killed-run", 1);
    let (mut run, pooled) = a_run_holding_a_pooled_vm(&pool);
    kill(&mut run);
    pool.feather.eventually("the claimed VM is gone", || {
        !pool.vm_folders().iter().any(|f| f.contains(&pooled))
    });
    pool.drained_leaving_nothing(&cgroups_before);
}

/// A `run --rm -- sleep 1000` that took a VM of `pool`, and that VM's name. Another test's
/// mount may make the pooled VM stale: the run then makes its own VM (a cold run's front is its
/// keeper: killed, it leaves the VM crashed, removed here), and it is tried again with a fresh
/// pool.
fn a_run_holding_a_pooled_vm(pool: &Pooled) -> (std::process::Child, String) {
    let listed = || {
        let rows: serde_json::Value = serde_json::from_str(&pool.ok(&["ls", "--json"])).unwrap();
        rows[0]["name"].as_str().map(str::to_owned)
    };
    for _ in 0..3 {
        pool.whole();
        let mut run = pool
            .command()
            .args(["run", "--rm", "--", "sleep", "1000"])
            .spawn()
            .unwrap();
        pool.feather
            .eventually("the run's VM is listed", || listed().is_some());
        let name = listed().unwrap();
        if from_the_pool(&name) {
            return (run, name);
        }
        kill(&mut run);
        pool.ok(&["rm", "-f", &name]);
    }
    panic!("no run took a VM of the pool");
}

/// Root's inotify instances are counted host-wide (`fs.inotify.max_user_instances`, 128 by
/// default): a pooled VM's keeper holds one for its root watch while the VM waits in the pool,
/// and gives it back once a run claims the VM, while that run's command still runs. Kept for
/// the run's life, every long run from the pool (a service started with `run --rm`) held one,
/// and after about a hundred root's daemons got none (review poolhit30 M1).
#[test]
fn a_long_run_from_the_pool_holds_no_inotify_instance() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-watch-given-back", 1);
    let (mut run, claimed) = a_run_holding_a_pooled_vm(&pool);
    let keeper = keeper_of(&pool, &claimed);
    let log = pool.feather.root.join(format!("vms/{claimed}/keeper.log"));
    let log = fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("the claimed VM's keeper log {}: {e}", log.display()));
    assert!(
        !log.contains("no inotify watch"),
        "the pooled VM's keeper had no root watch to give back (fs.inotify.max_user_instances \
         reached by other processes of root?): {log}"
    );
    let given_back =
        feather_testkit::eventually(Duration::from_secs(30), || !holds_inotify(keeper));
    let still_running = run.try_wait().unwrap().is_none();
    kill(&mut run);
    assert!(
        still_running,
        "the run holding VM {claimed} ended by itself"
    );
    assert!(
        given_back,
        "the keeper of claimed VM {claimed} still holds an inotify instance while its run runs"
    );
    pool.drained_leaving_nothing(&cgroups_before);
}

/// A run from the pool does not wait for its VM's root watch to be closed: closing an inotify
/// instance waits for the kernel's grace period (fsnotify's SRCU, 10-20 ms here), and the
/// keeper, closing it in its loop at the claim, saw a short command's claimer let go only after
/// it, which made a hit slower than a cold run (docs/design.md, "On by default"). A test hook
/// holds that close until the run has ended.
#[test]
fn a_run_from_the_pool_does_not_wait_for_its_root_watch_to_close() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::of_one_unfilled("pool-watch-close");
    let mut hold = support::RecordHold::root_watch_close("pool-watch-close");
    let (variable, file) = hold.env();
    // Its pooled VMs' keepers are given the hook by the fill that starts them.
    let filled_with_the_hook = || {
        pool.feather.eventually("the pool is whole", || {
            let whole = pool.ready().len() == 1;
            if !whole {
                let mut fill = pool.command();
                fill.env(variable, &file).args(["pool", "--fill"]);
                assert!(fill.status().unwrap().success());
            }
            whole
        })
    };
    let ran = (0..3).find_map(|_| {
        filled_with_the_hook();
        let mut run = pool
            .command()
            .env(variable, &file)
            .env("FEATHER_TRACE", "phases")
            .args(["run", "--rm", "--", "true"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let ended = feather_testkit::eventually(Duration::from_secs(60), || {
            run.try_wait().unwrap().is_some()
        });
        if !ended {
            kill(&mut run);
            return Some(false);
        }
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        // Another test's mount may make the pooled VM stale: that run was a cold one.
        let traced = String::from_utf8_lossy(&out.stderr);
        let hit = traced.contains("run the command through the pooled VM's init");
        // A run ends with its VM set aside, as a cold run does (a run whose keeper does not
        // answer gives up after 10 s, its VM still listed).
        hit.then(|| pool.ok(&["ls", "--json"]).trim() == "[]")
    });
    let listed = pool.ok(&["ls"]);
    hold.release();
    let ran = ran.expect("no run took a VM of the pool");
    assert!(
        ran,
        "the run from the pool ended without its VM set aside, its keeper closing its root \
         watch: {listed}"
    );
    pool.drained_leaving_nothing(&cgroups_before);
}

/// Whether process `pid` holds an inotify instance.
fn holds_inotify(pid: i32) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|to| to.as_os_str() == "anon_inode:inotify"))
}

/// Kills `run` with SIGKILL (it can do nothing) and reaps it.
fn kill(run: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(run.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    run.wait().unwrap();
}

/// A claimed VM whose keeper is killed mid-command (F7 of the pool's review): the run fails
/// (125, as the VM's end before the command's), having removed what the keeper left rather
/// than leave the VM crashed, and starts the refill the keeper would have started: the pool
/// is made whole again without anyone else filling it; drained, nothing is left.
#[test]
fn a_claimed_vms_keeper_killed_leaves_nothing_and_the_pool_is_refilled() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-claimed-keeper", 1);
    let (mut run, claimed) = a_run_holding_a_pooled_vm(&pool);
    pool.feather.kill_keeper(&claimed);
    assert_eq!(run.wait().unwrap().code(), Some(125));
    assert!(
        !pool.vm_folders().contains(&claimed),
        "the crashed VM was left: {:?}",
        pool.vm_folders()
    );
    // An entry, made by the fill the run started (ready, or made stale by another test's mount
    // meanwhile).
    pool.feather
        .eventually_within("the pool is refilled", Duration::from_secs(30), || {
            pool.entries().len() == 1
        });
    pool.drained_leaving_nothing(&cgroups_before);
}

/// A drain right after a run waits for the run's VM to be set aside by its keeper: the run
/// exits with its command's status before the keeper has seen the claim end (here the keeper
/// is stopped until the drain is seen waiting). Without the wait the drain returned with the
/// VM's folder still there and its teardown not begun.
#[test]
fn a_drain_right_after_a_run_waits_for_the_runs_vm_to_go() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-drain-after-run", 1);
    let (mut run, claimed) = a_run_holding_a_pooled_vm(&pool);
    let keeper = pool.feather.inspect(&claimed)["state"]["keeper_pid"]
        .as_i64()
        .unwrap() as i32;
    let keeper = Stopped::new(nix::unistd::Pid::from_raw(keeper));
    kill(&mut run);
    let mut drain = pool.command().args(["pool", "--drain"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let early = drain.try_wait().unwrap();
    drop(keeper);
    assert!(
        early.is_none(),
        "the drain returned ({early:?}) before the run's VM was set aside"
    );
    assert!(drain.wait().unwrap().success());
    let folders = pool.vm_folders();
    assert!(folders.is_empty(), "left in vms: {folders:?}");
    pool.drained_leaving_nothing(&cgroups_before);
}

/// A run from the pool ends with its VM, as a cold run does: once it has exited, its VM's
/// keeper has set the VM aside (its folder renamed, its name free), so `ls` right after does
/// not list it; the rest of the teardown goes on without anyone waiting. Without that the run
/// exited before its keeper had even seen the claim end: its VM was still there and listed.
#[test]
fn a_run_from_the_pool_ends_with_its_vm() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-ends-with-vm", 1);
    let mut seen_after = (Vec::new(), String::new());
    let (name, _) = pool.taken_from_ready(|| {
        let name = pool
            .ok(&["run", "--rm", "--", "hostname"])
            .trim()
            .to_owned();
        // At once: the folders first (no process to start), then `ls`.
        seen_after = (pool.vm_folders(), pool.ok(&["ls", "--json"]));
        name
    });
    let (folders, listed) = seen_after;
    assert!(
        !folders.contains(&name),
        "the run's VM {name} was still in vms after the run: {folders:?}"
    );
    assert!(
        !listed.contains(&name),
        "`ls` right after the run listed its VM {name}: {listed}"
    );
    pool.drained_leaving_nothing(&cgroups_before);
}

/// A drain beside a run that still runs its command from a pooled VM empties the pool without
/// waiting for that run (its VM is the run's, removed when its command ends), and says so on
/// stderr, naming the VM and the run. Without that it waited 2 s, silently, and returned with
/// the VM up.
#[test]
fn a_drain_beside_a_running_pooled_run_names_it_and_does_not_wait() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-drain-beside-run", 1);
    let (mut run, claimed) = a_run_holding_a_pooled_vm(&pool);
    let started = std::time::Instant::now();
    let drain = pool.output(&["pool", "--drain"]);
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&drain.stderr);
    assert!(drain.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "VM {claimed} is in use by a run (pid {}) still running its command",
            run.id()
        )),
        "the drain did not say what it left: {said:?}"
    );
    // Bounded well short of the run's command (`sleep 1000`), which a drain that waited for
    // the run would wait out, and well above a loaded host's slowest drain: not a measure of
    // speed. (The drain of before waited 2 s and said nothing: the message above tells it.)
    assert!(
        took < Duration::from_secs(60),
        "the drain waited {took:?} for a run still running its command"
    );
    assert!(run.try_wait().unwrap().is_none(), "the run ended");
    assert!(pool.vm_folders().contains(&claimed));
    assert!(pool.entries().is_empty(), "{:?}", pool.entries());
    kill(&mut run);
    pool.feather.eventually("the run's VM is gone", || {
        !pool.vm_folders().contains(&claimed)
    });
    pool.drained_leaving_nothing(&cgroups_before);
}

/// A process stopped (SIGSTOP) until this is dropped, failing test or not.
struct Stopped(nix::unistd::Pid);

impl Stopped {
    fn new(pid: nix::unistd::Pid) -> Stopped {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A claimed VM whose keeper was killed together with its run (which could not look) is
/// removed by the next fill, which finds it by its claimed entry (F7).
#[test]
fn a_claimed_vm_left_crashed_with_its_run_is_removed_by_the_next_fill() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-claimed-crash", 1);
    let (mut run, claimed) = a_run_holding_a_pooled_vm(&pool);
    let pid = nix::unistd::Pid::from_raw(run.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let keeper = pool.feather.kill_keeper(&claimed);
    pool.feather.eventually("its keeper is gone", || {
        !std::path::Path::new(&format!("/proc/{keeper}")).exists()
    });
    kill(&mut run);
    assert!(pool.vm_folders().contains(&claimed), "nothing crashed");
    pool.ok(&["pool", "--fill"]);
    assert!(
        !pool.vm_folders().contains(&claimed),
        "the fill left the crashed VM: {:?}",
        pool.vm_folders()
    );
    assert!(support::names_in(&pool.feather.root.join("pool/claimed")).is_empty());
    pool.drained_leaving_nothing(&cgroups_before);
}

/// A pooled VM whose keeper was killed is not claimed: the next run makes its own VM (and
/// works), and the fill it starts removes what the dead keeper left; drained, nothing is left.
#[test]
fn a_pooled_vm_whose_keeper_died_is_passed_over_and_cleaned_up() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-dead-keeper", 1);
    // Its entry, not `ready`: another test's mount may have made it stale meanwhile.
    let pooled = pool.entries().into_iter().next().unwrap();
    let keeper = pool.feather.kill_keeper(&pooled);
    pool.feather.eventually("its keeper is gone", || {
        !std::path::Path::new(&format!("/proc/{keeper}")).exists()
    });
    let name = pool.ok(&["run", "--rm", "--", "hostname"]);
    assert_ne!(name.trim(), pooled, "a VM whose keeper died was used");
    pool.feather.eventually("the fill removed it", || {
        !pool.vm_folders().contains(&pooled) && !pool.entries().contains(&pooled)
    });
    pool.drained_leaving_nothing(&cgroups_before);
}

/// A drain removes every pooled VM and everything each held: nothing is left at all.
#[test]
fn a_drained_pool_leaves_nothing() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-drain", 2);
    // Another test's mount may have made a VM stale (`whole` then made another), whose folder
    // goes with its keeper's teardown.
    let two = feather_testkit::eventually(Duration::from_secs(30), || pool.vm_folders().len() == 2);
    assert!(two, "{:?}", pool.vm_folders());
    // Pooled VMs are not the user's: `ls` does not show them, but says they are there.
    assert_eq!(pool.ok(&["ls", "--json"]).trim(), "[]");
    // On stderr, so that a script that counts `ls`'s lines is not misled.
    let listed = pool.output(&["ls"]);
    assert!(listed.status.success(), "{listed:?}");
    let (out, said) = (
        String::from_utf8_lossy(&listed.stdout),
        String::from_utf8_lossy(&listed.stderr),
    );
    assert!(!out.contains("in the pool"), "{out}");
    assert!(said.contains("2 VMs in the pool"), "{said}");
    pool.drained_leaving_nothing(&cgroups_before);
}

/// After runs from the pool, `pool --drain` (no `network down`) leaves nothing of the root on
/// the host, and `rm -rf` of the root then removes it all: the drain ends the root's network
/// unless a VM uses it — the bridge and its tables that a run's teardown keeps, lingering, for
/// the next VM, and the namespaces made ahead, mounted in the root. Before, each run's
/// teardown left them for 5 minutes, with a process of the root lingering, and `rm -rf`
/// stopped at the namespaces' mounts.
#[test]
fn a_drain_after_runs_from_the_pool_leaves_nothing_for_rm_rf() {
    let pool = Pooled::new("pool-drain-rm-rf", 1);
    pool.taken_from_ready(|| {
        pool.ok(&["run", "--rm", "--", "hostname"])
            .trim()
            .to_owned()
    });
    pool.ok(&["pool", "--drain"]);
    let root = &pool.feather.root;
    pool.feather
        .eventually("no process of the root is left", || {
            support::HostTraces::of(root, None).processes.is_empty()
        });
    let traces = support::HostTraces::of(root, Some(&pool.bridge));
    assert_eq!(traces, support::HostTraces::default(), "left on the host");
    fs::remove_dir_all(root).unwrap();
}

/// A host mount made after the pool filled is seen by the next run, as by a run in a VM of
/// its own: the pooled VMs, assembled before it, no longer match the host and are not used.
#[test]
fn a_host_mount_made_after_the_fill_is_seen_by_the_next_run() {
    let pool = Pooled::new("pool-mount", 1);
    let pooled = pool.ready();
    let mounted = support::unique_dir("mount", "pool-mount");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "pool-test"])
        .arg(&mounted)
        .status()
        .unwrap();
    assert!(status.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = fs::remove_dir(&self.0);
        }
    }
    let _unmount = Unmount(mounted.clone());
    fs::write(mounted.join("seen"), "on the mount\n").unwrap();
    let script = format!("hostname; cat {}/seen", mounted.display());
    let out = pool.ok(&["run", "--rm", "--", "sh", "-c", &script]);
    let (name, seen) = out.split_once('\n').unwrap();
    assert_eq!(seen, "on the mount\n");
    assert!(
        !pooled.contains(name),
        "a VM made before the mount was used"
    );
    // The fill that run started made a VM under the new mount table: it is used, and sees it.
    assert!(pool.whole().is_disjoint(&pooled));
    pool.taken_from_ready(|| {
        let out = pool.ok(&["run", "--rm", "--", "sh", "-c", &script]);
        let (name, seen) = out.split_once('\n').unwrap();
        assert_eq!(seen, "on the mount\n");
        name.to_owned()
    });
}

/// A run that asks for anything but a VM of the default options (a VM name, another network, a
/// base, limits) makes its own VM: the pool is left as it was.
#[test]
fn runs_with_other_options_do_not_take_from_the_pool() {
    let pool = Pooled::new("pool-options", 1);
    let pooled = pool.ready();
    let base = support::ScratchBase::new("pool-options");
    for options in [
        vec!["--net", "none"],
        vec!["own"],
        vec!["--base", base.as_str()],
        vec!["--memory", "512M"],
        vec!["--pids", "100"],
    ] {
        let args = [&["run", "--rm"], &options[..], &["--", "hostname"]].concat();
        let out = pool.ok(&args);
        assert!(!pooled.contains(out.trim()), "{options:?} took {out}");
        // Not claimed: still in the pool, unless another test's mount made it stale and a
        // fill replaced it.
        let entries = pool.entries();
        assert!(
            pooled.iter().all(|name| entries.contains(name)) || pool.ready() != pooled,
            "{options:?} changed the pool"
        );
    }
}

/// Many runs from the pool (each claims a VM, the fill it starts makes another) leave nothing
/// but the pool itself; drained, nothing at all.
#[test]
fn many_runs_from_the_pool_leave_nothing_beyond_the_pool() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-leaks", 2);
    let mut used = BTreeSet::new();
    for _ in 0..leak_cycles() {
        used.insert(
            pool.ok(&["run", "--rm", "--", "hostname"])
                .trim()
                .to_owned(),
        );
    }
    assert!(
        used.iter().any(|name| from_the_pool(name)),
        "no run took a VM of the pool: {used:?}"
    );
    pool.feather.eventually_within(
        "the pool is whole again, and nothing else is left",
        Duration::from_secs(60),
        || {
            let ready = pool.ready();
            let folders: BTreeSet<String> = pool.vm_folders().into_iter().collect();
            let whole = ready.len() == 2 && folders == ready;
            if !whole {
                // Another test's mount may have made the pool stale meanwhile.
                pool.ok(&["pool", "--fill"]);
            }
            whole
        },
    );
    pool.drained_leaving_nothing(&cgroups_before);
}

/// Runs from the pool back to back keep the root's network for the refills' VMs, as cold runs
/// keep it for the next: a claimed VM's teardown is handed to a finisher, which refills the
/// namespaces made ahead and lingers, and a refill's VM takes one of them (its entry claimed,
/// `network-pool/claimed/`) instead of making its veth pair and firewall entries. Before, the
/// claimed VM's keeper took the root's bridge, tables and namespaces down with its VM, and no
/// pooled VM ever found one made ahead.
#[test]
fn a_refills_vm_takes_a_namespace_made_ahead() {
    let pool = Pooled::new("pool-refill-netns", 1);
    assert!(
        a_refills_vm_took_a_namespace(&pool),
        "no refill's VM took a namespace made ahead in 10 runs from the pool"
    );
}

/// Runs from `pool` (of one VM) until the VM a refill made took a namespace made ahead (at
/// most 10): whether one did.
fn a_refills_vm_took_a_namespace(pool: &Pooled) -> bool {
    let claimed = pool.feather.root.join("network-pool/claimed");
    (0..10).any(|_| {
        pool.taken_from_ready(|| {
            pool.ok(&["run", "--rm", "--", "hostname"])
                .trim()
                .to_owned()
        });
        pool.whole();
        !support::names_in(&claimed).is_empty()
    })
}

/// A pooled VM that took a namespace made ahead, drained as the root's last VM: its keeper
/// tears it down alone (no refill follows a drain, so no finisher), its network's removal
/// takes the root's bridge down, and the root forgets its network once the VM's lease is back.
/// The keeper is held (a test hook, armed for the drain only: every keeper of the root's pool
/// is given it, and no other teardown is held) until the bridge is gone before it returns the
/// lease, as a loaded host orders them at times. Before, the VM's entry of the namespaces
/// made ahead (`network-pool/claimed/<id>`) stayed: the removal kept it for the VM, which
/// still held its lease, and no `rm` of the VM's network came after, nor any clean-up once
/// the network was forgotten ("the pool is left", the flake of
/// `many_runs_from_the_pool_leave_nothing_beyond_the_pool` under load).
#[test]
fn a_drained_vm_that_took_a_namespace_made_ahead_leaves_no_pool_of_namespaces() {
    let cgroups_before = support::feather_cgroups();
    let hook = Hook::unarmed("lease-return");
    // Every fill passes the hook on to the keepers it starts.
    let mut pool = Pooled::new("pool-drained-netns", 0)
        .hooked(feather_vm::keeper::HOLD_BEFORE_LEASE_RETURN, &hook);
    pool.ok(&["pool", "--size", "1"]);
    pool.size = 1;
    assert!(
        a_refills_vm_took_a_namespace(&pool),
        "no refill's VM took a namespace made ahead in 10 runs from the pool"
    );
    // The finishers' refills are over (`ls` waits for teardowns): the drained VM is the root's
    // network's last user.
    pool.ok(&["ls"]);
    // Declared after the pool, so dropped before it on a panic: the pool's drain on drop is
    // not held.
    let mut armed = hook.armed();
    let drain = pool
        .command()
        .args(["pool", "--drain"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    hook.waiter(&pool.feather);
    let bridge = std::path::Path::new("/sys/class/net").join(&pool.bridge);
    let bridge_went = feather_testkit::eventually(Duration::from_secs(30), || !bridge.exists());
    armed.release();
    let drained = drain.wait_with_output().unwrap();
    assert!(
        bridge_went,
        "the drained VM's keeper never took the bridge down"
    );
    assert!(drained.status.success(), "{drained:?}");
    pool.drained_leaving_nothing(&cgroups_before);
}

/// What a fill killed half-way leaves — an entry whose VM it never made, a VM it made but
/// never started — is hidden from `ls`, never claimed, and removed by the next fill.
#[test]
fn what_a_fill_killed_half_way_left_is_removed_by_the_next() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-half-way", 1);
    let ready = pool.ready();
    let (no_vm, not_started) = ("run-000000000001", "run-000000000002");
    fs::write(pool.feather.root.join("pool/vms").join(no_vm), "killed").unwrap();
    fs::write(
        pool.feather.root.join("pool/vms").join(not_started),
        "killed",
    )
    .unwrap();
    pool.ok(&["create", not_started]);
    assert_eq!(pool.ok(&["ls", "--json"]).trim(), "[]");
    let now = pool.ready();
    assert!(
        !now.contains(no_vm) && !now.contains(not_started),
        "what was left is ready: {now:?} (was {ready:?})"
    );
    // A fill at work meanwhile (the refill of the pool's start) makes this one return at once:
    // it fills again until one did the work.
    pool.feather.eventually("a fill removed what was left", || {
        pool.ok(&["pool", "--fill"]);
        let entries = pool.entries();
        entries.len() == 1 && !entries.iter().any(|e| e == no_vm || e == not_started)
    });
    assert!(!pool.vm_folders().iter().any(|f| f == not_started));
    pool.drained_leaving_nothing(&cgroups_before);
}

/// The pooled VM's keeper (by the pid its VM's record holds).
fn keeper_of(pool: &Pooled, name: &str) -> i32 {
    // An entry is written before its VM is made, and `pool` counts a VM ready while its
    // fill's start holds the keeper's lock: waited for until it runs.
    pool.feather
        .eventually(&format!("pooled VM {name} runs"), || {
            pool.feather.status(name) == "running"
        });
    pool.feather.inspect(name)["state"]["keeper_pid"]
        .as_i64()
        .unwrap() as i32
}

/// A fill started by a caller with its own limits, umask, environment and cgroup makes VMs
/// that carry none of them (F1b, F1c, F8 of the pool's review): their keepers have fixed
/// attributes, feather's settings only, and live in feather's pool group; and a run from the
/// pool gives the command the umask and limits of its own caller, as a cold run does (F1).
#[test]
fn the_pool_carries_nothing_of_the_caller_that_filled_it() {
    let pool = Pooled::of_one_unfilled("pool-attributes");
    let fill_from = |script: &str| {
        let status = Command::new("sh")
            .args(["-c", script, "sh", Feather::bin()])
            .arg("--root")
            .arg(&pool.feather.root)
            .args(["pool", "--fill"])
            .env("FEATHER_SUBNET", &pool.subnet.cidr)
            .env("POOL_TEST_SECRET", "hunter2")
            .status()
            .unwrap();
        assert!(status.success());
    };
    // A caller with nofile 200 (soft and hard: raising a hard limit back takes a capability
    // this host may withhold) starts a fill: it makes no VM, or one without that limit.
    fill_from("ulimit -n 200; exec \"$@\"");
    // A caller with umask 077, nice 5 and a secret in its environment starts a fill, which
    // replaces a VM made with lower limits than its own.
    fill_from("umask 077; exec nice -n 5 \"$@\"");
    let lowered = |limits: &str| {
        let open_files = limits.lines().find(|l| l.starts_with("Max open files"));
        open_files.unwrap().contains(" 200 ")
    };
    let entries = pool.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let name = entries.into_iter().next().unwrap();
    let keeper = keeper_of(&pool, &name);
    let read = |what: &str| fs::read(format!("/proc/{keeper}/{what}")).unwrap();
    let limits = String::from_utf8_lossy(&read("limits")).into_owned();
    assert!(!lowered(&limits), "{limits}");
    let environ = String::from_utf8_lossy(&read("environ")).into_owned();
    assert!(!environ.contains("POOL_TEST_SECRET"), "{environ}");
    let status = String::from_utf8_lossy(&read("status")).into_owned();
    assert!(status.contains("Umask:\t0022"), "{status}");
    let stat = String::from_utf8_lossy(&read("stat")).into_owned();
    let nice = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(16)
        .unwrap()
        .to_owned();
    assert_eq!(nice, "0", "{stat}");
    let cgroups = String::from_utf8_lossy(&read("cgroup")).into_owned();
    // In every hierarchy feather places VMs in (v1 memory, pids; v2).
    let used = |line: &&str| {
        let controllers = line.split(':').nth(1).unwrap_or_default();
        controllers.is_empty() || controllers.split(',').any(|c| c == "memory" || c == "pids")
    };
    assert!(
        cgroups
            .lines()
            .filter(used)
            .all(|line| line.ends_with("/feather/pool")),
        "{cgroups}"
    );
    // A run from the pool gets its own caller's umask and limit, as a cold run.
    let script = "ulimit -n 300; umask 027; exec \"$@\"";
    pool.taken_from_ready(|| {
        let out = Command::new("sh")
            .args(["-c", script, "sh", Feather::bin()])
            .arg("--root")
            .arg(&pool.feather.root)
            .args([
                "run",
                "--rm",
                "--",
                "sh",
                "-c",
                "hostname; ulimit -n; umask",
            ])
            .env("FEATHER_SUBNET", &pool.subnet.cidr)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let (name, rest) = out.split_once('\n').unwrap_or_default();
        assert_eq!(rest, "300\n0027\n");
        name.to_owned()
    });
}

/// `pool --size` typed at a terminal makes VMs with no terminal: a pooled VM's `ask` rules
/// ask its claimer's terminal, never the one of whoever filled the pool (F2).
#[test]
fn a_fill_from_a_terminal_gives_its_vms_no_terminal() {
    let pool = Pooled::new("pool-terminal", 0);
    let pty = nix::pty::openpty(None, None).unwrap();
    let status = pool
        .command()
        .args(["pool", "--size", "1"])
        .stdin(Stdio::from(pty.slave))
        .status()
        .unwrap();
    assert!(status.success());
    let name = pool
        .entries()
        .into_iter()
        .next()
        .expect("the fill made a VM");
    let keeper = keeper_of(&pool, &name);
    let cmdline = fs::read(format!("/proc/{keeper}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains("--terminal"), "{cmdline}");
}

/// A pooled VM whose keeper does not answer (stopped here; a keeper of an older protocol
/// likewise) is ended by the next fill: a drain returns at once and leaves nothing (F18).
#[test]
fn a_drain_ends_a_pooled_vm_whose_keeper_does_not_answer() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::new("pool-stuck", 1);
    // Its entry, ready or made stale meanwhile by another test's mount.
    let name = pool.entries().into_iter().next().unwrap();
    let keeper = nix::unistd::Pid::from_raw(keeper_of(&pool, &name));
    struct Continue(nix::unistd::Pid);
    impl Drop for Continue {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    let _continue = Continue(keeper);
    nix::sys::signal::kill(keeper, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = std::time::Instant::now();
    let mut drain = pool.command().args(["pool", "--drain"]).spawn().unwrap();
    let deadline = started + Duration::from_secs(15);
    while drain.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(status) = drain.try_wait().unwrap() else {
        let _ = drain.kill();
        let _ = drain.wait();
        panic!("the drain still waits on the stopped keeper after 15 s");
    };
    assert!(status.success());
    pool.drained_leaving_nothing(&cgroups_before);
}

/// A fill started for a root whose pool was drained (or which was removed) makes nothing, not
/// even the root's folder again (F5).
#[test]
fn a_fill_for_a_drained_or_removed_root_makes_nothing() {
    let pool = Pooled::new("pool-removed", 0);
    pool.ok(&["pool", "--fill"]);
    assert!(pool.entries().is_empty());
    let gone = support::unique_dir("root", "pool-removed-gone");
    let _remove = Remove(gone.clone());
    fs::remove_dir(&gone).unwrap();
    let status = Command::new(Feather::bin())
        .arg("--root")
        .arg(&gone)
        .args(["pool", "--fill"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!gone.exists(), "the fill made the removed root again");
}

/// A run whose environment holds a `FEATHER_*` variable that shapes no VM takes from the pool
/// and leaves the rest of it (F4); a command too big for init's message is a miss that costs
/// the pool nothing, and runs (F9).
#[test]
fn unrelated_settings_and_big_commands_leave_the_pool_alone() {
    let pool = Pooled::new("pool-settings", 2);
    pool.taken_from_ready(|| {
        let out = pool
            .command()
            .args(["run", "--rm", "--", "hostname"])
            .env("FEATHER_COMPLETE", "0")
            .env("FEATHER_POOL_TEST", "1")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    let big = "a".repeat(60_000);
    let out = pool.output(&[
        "run", "--rm", "--", "sh", "-c", "echo $#", "x", &big, &big, &big,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n");
}

/// A pool larger than feather allows is refused before anything is made (F17).
#[test]
fn a_pool_too_large_is_refused() {
    let pool = Pooled::new("pool-too-large", 0);
    let out = pool.output(&["pool", "--size", "1000"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most 64"),
        "{out:?}"
    );
    assert!(pool.entries().is_empty());
    assert_eq!(pool.ok(&["pool"]).lines().next(), Some("size: 0"));
}

/// A pooled VM left unclaimed for the pool's idle time (`pool --idle`) is removed by its own
/// keeper, leaving nothing on the host or in the root, and the pool is not refilled until a
/// run comes: that run makes its own VM, and the fill it starts makes the pool whole again.
#[test]
fn pooled_vms_idle_too_long_go_and_the_next_run_refills_the_pool() {
    let cgroups_before = support::feather_cgroups();
    let mut pool = Pooled::new("pool-idle", 0);
    pool.size = 2;
    pool.ok(&["pool", "--size", "2", "--idle", "3s"]);
    assert!(pool.ok(&["pool"]).contains("\nidle: 3s\n"));
    // Made (one may be gone already on a slow host).
    assert!(!pool.entries().is_empty());
    pool.feather
        .eventually_within("the idle VMs are gone", Duration::from_secs(30), || {
            pool.entries().is_empty() && pool.vm_folders().is_empty()
        });
    // Nothing starts a fill now: the pool stays empty.
    std::thread::sleep(Duration::from_secs(3));
    assert!(pool.entries().is_empty(), "refilled: {:?}", pool.entries());
    assert!(support::names_in(&pool.feather.root.join("pool/claimed")).is_empty());
    assert_nothing_left(&pool.feather, &pool.bridge, &cgroups_before);
    // The VMs the run's fill makes wait for ever from now on (read as each is up).
    pool.ok(&["pool", "--idle", "0"]);
    assert!(pool.ok(&["pool"]).contains("\nidle: for ever\n"));
    let name = pool.ok(&["run", "--rm", "--", "hostname"]);
    assert!(!from_the_pool(name.trim()), "{name}");
    pool.feather.eventually_within(
        "the run's fill made the pool whole",
        Duration::from_secs(30),
        || pool.entries().len() == 2,
    );
    pool.whole();
    pool.drained_leaving_nothing(&cgroups_before);
}

/// A root removed by hand (`rm -rf`, as scripts and CI remove roots: feather has no command
/// for it) with a pooled VM in it: the VM's keeper ends it at its idle time, leaving no
/// process, cgroup or port on the root's bridge; the bridge and tables then go as any removed
/// root's do, when the next root chooses its network (feather_net::removed_roots). Without
/// that the keeper found its VM no longer pooled (the entry went with the root), set no
/// expiry, and kept it, its veth, and so the bridge, for ever.
#[test]
fn a_pooled_vm_whose_root_was_removed_goes_at_its_idle_time() {
    let cgroups_before = support::feather_cgroups();
    let mut pool = Pooled::new("pool-root-removed", 0);
    pool.size = 1;
    pool.ok(&["pool", "--size", "1", "--idle", "4s"]);
    let name = pool.entries().into_iter().next().expect("a pooled VM");
    let keeper = keeper_of(&pool, &name);
    let alive = || std::path::Path::new(&format!("/proc/{keeper}")).exists();
    let root = pool.feather.root.clone();
    pool.remove_the_root_by_hand();
    assert!(
        alive(),
        "the pooled VM was gone before its root was removed"
    );
    pool.feather.eventually_within(
        "the removed root's pooled VM and its processes are gone",
        Duration::from_secs(30),
        || !alive() && support::HostTraces::of(&root, None).processes.is_empty(),
    );
    pool.removed_roots_network_goes_with_the_next_root(&root, &cgroups_before);
}

/// A root's first `run --rm` (no pool setting: the default) makes its own VM and starts the
/// fill that leaves one pooled VM; the next run claims it, and its keeper's refill leaves one
/// again. `pool` says size 1 with no setting written.
#[test]
fn a_roots_first_run_leaves_one_pooled_vm_and_the_second_claims_it() {
    let pool = Pooled::by_default("pool-default");
    let first = pool.ok(&["run", "--rm", "--", "hostname"]);
    assert!(!from_the_pool(first.trim()), "{first}");
    pool.feather
        .eventually("the first run's fill made one VM", || {
            pool.entries().len() == 1
        });
    assert!(!pool.feather.root.join("pool/size").exists());
    assert_eq!(pool.ok(&["pool"]).lines().next(), Some("size: 1"));
    // `ls` lists no pooled VM (and says there is one).
    assert_eq!(pool.ok(&["ls", "--json"]).trim(), "[]");
    let (second, _) = pool.taken_from_ready(|| {
        pool.ok(&["run", "--rm", "--", "hostname"])
            .trim()
            .to_owned()
    });
    assert!(from_the_pool(&second), "{second}");
    pool.feather
        .eventually("the claimed VM's keeper refilled the pool", || {
            pool.entries().len() == 1 && !pool.entries().contains(&second)
        });
}

/// The VM a root's first run leaves ends at the idle time (10 minutes by default; set short
/// here) and leaves nothing on the host or in the root; no fill follows.
#[test]
fn a_default_pooled_vm_expires_and_leaves_nothing() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::by_default("pool-default-idle");
    pool.ok(&["pool", "--idle", "3s"]);
    assert!(!pool.feather.root.join("pool/size").exists());
    pool.ok(&["run", "--rm", "--", "true"]);
    pool.feather
        .eventually("the first run's fill made one VM", || {
            !pool.entries().is_empty()
        });
    pool.feather
        .eventually_within("the idle VM is gone", Duration::from_secs(30), || {
            pool.entries().is_empty() && pool.vm_folders().is_empty()
        });
    std::thread::sleep(Duration::from_secs(2));
    assert!(pool.entries().is_empty(), "refilled: {:?}", pool.entries());
    assert_nothing_left(&pool.feather, &pool.bridge, &cgroups_before);
}

/// `FEATHER_POOL=0` in a run's environment: the run starts no fill (and claims nothing); a
/// root whose size was set to 0 keeps it, and its runs leave no VM either.
#[test]
fn feather_pool_0_and_size_0_leave_no_pooled_vm() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::by_default("pool-opt-out");
    // The run's trace says when it starts a fill (after its command, before it exits): no
    // waiting for a fill that does not come.
    let traced = |opt_out: Option<&str>| {
        let mut command = pool.command();
        if let Some(value) = opt_out {
            command.env(support::NO_POOL, value);
        }
        let out = command
            .env("FEATHER_TRACE", "phases")
            .args(["run", "--rm", "--", "hostname"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        (String::from_utf8_lossy(&out.stdout).trim().to_owned(), said)
    };
    let (_, said) = traced(Some("0"));
    assert!(!said.contains("start the pool's fill"), "{said}");
    assert!(pool.entries().is_empty(), "{:?}", pool.entries());
    // The run's own VM may still be in its teardown (`.removing-…`): no pooled VM's folder.
    let folders = pool.vm_folders();
    assert!(
        !folders.iter().any(|name| from_the_pool(name)),
        "{folders:?}"
    );
    // A ready pooled VM is not claimed by an opted-out run: its own VM, the entry stays.
    pool.ok(&["pool", "--size", "1"]);
    pool.whole();
    let ready = pool.entries();
    let (name, said) = traced(Some("0"));
    assert!(
        !from_the_pool(&name),
        "an opted-out run took a pooled VM: {name}"
    );
    assert!(!said.contains("claim a VM of the pool"), "{said}");
    assert!(!said.contains("start the pool's fill"), "{said}");
    assert_eq!(pool.entries(), ready);
    pool.ok(&["pool", "--size", "0"]);
    assert_eq!(
        fs::read_to_string(pool.feather.root.join("pool/size")).unwrap(),
        "0\n"
    );
    let (_, said) = traced(None);
    assert!(!said.contains("start the pool's fill"), "{said}");
    assert!(pool.entries().is_empty(), "{:?}", pool.entries());
    assert_nothing_left(&pool.feather, &pool.bridge, &cgroups_before);
}

/// A root removed by hand (`rm -rf`) with the pooled VM its first run left, whose idle time is
/// "for ever": the keeper sees the removal at once (an inotify watch) and ends the VM once the
/// removal is over, leaving no keeper, process, cgroup, port on the bridge or mount; the bridge
/// and tables go as any removed root's (when the next root chooses its network). Before the
/// watch the keeper looked only at its idle time, and with none kept the VM for ever.
#[test]
fn a_removed_roots_pooled_vm_goes_at_once() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::by_default("pool-default-removed");
    pool.ok(&["pool", "--idle", "0"]);
    pool.ok(&["run", "--rm", "--", "true"]);
    pool.feather
        .eventually("the first run's fill made one VM", || {
            pool.entries().len() == 1
        });
    pool.whole();
    let name = pool.entries().into_iter().next().unwrap();
    let keeper = keeper_of(&pool, &name);
    let alive = || std::path::Path::new(&format!("/proc/{keeper}")).exists();
    let root = pool.feather.root.clone();
    // The root's network may have namespaces made ahead, mounted in its folder: `rm -rf`
    // stops short at them (docs/network.md) having removed the rest, the VM's things with it.
    let rm = || Command::new("rm").arg("-rf").arg(&root).output().unwrap();
    let first = rm();
    let said = String::from_utf8_lossy(&first.stderr);
    assert!(
        first.status.success() || said.lines().all(|line| line.contains("/network-pool/")),
        "rm -rf: {first:?}"
    );
    pool.feather.eventually(
        "the removed root's pooled VM and its processes are gone",
        || !alive() && support::HostTraces::of(&root, None).processes.is_empty(),
    );
    // Its keeper took the network down as it went: the `rm -rf` tried again removes the rest.
    let again = rm();
    assert!(again.status.success(), "rm -rf again: {again:?}");
    assert!(!root.exists());
    let traces = support::HostTraces::of(&root, None);
    assert!(traces.mounts.is_empty(), "mounts left: {:?}", traces.mounts);
    pool.removed_roots_network_goes_with_the_next_root(&root, &cgroups_before);
}

/// `network down` beside the pooled VM a run left: the pool is emptied first (stderr says so,
/// its setting kept), and the network goes. Before, the pooled VM kept the network ("a VM uses
/// it") and whoever removed the root next left the bridge and tables to the next root.
#[test]
fn network_down_empties_the_pool_first() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::by_default("pool-network-down");
    pool.ok(&["run", "--rm", "--", "true"]);
    pool.feather
        .eventually("the first run's fill made one VM", || {
            pool.entries().len() == 1
        });
    let out = pool.output(&["network", "down"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("pool") && said.contains("emptied"), "{said}");
    // The drain's own claims are not runs' (it named itself as a run still running before).
    assert!(!said.contains("in use by a run"), "{said}");
    assert!(pool.entries().is_empty(), "{:?}", pool.entries());
    assert!(!pool.feather.root.join("pool/size").exists());
    assert_eq!(
        support::HostTraces::of(&pool.feather.root, Some(&pool.bridge)),
        support::HostTraces::default(),
        "the network stayed"
    );
    assert_nothing_left(&pool.feather, &pool.bridge, &cgroups_before);
}

/// A root moved away (renamed) with the pooled VM its first run left, idle "for ever": the
/// keeper sees its root's folder gone from its path (`IN_MOVE_SELF`) and ends the VM at once,
/// leaving no process of it. What the move took along (the VM's entry and folder) is what a
/// killed keeper leaves, which the root's next fill removes: moved back, the root's drain
/// and `network down` leave nothing. Moved while the VM reads as running but its keeper does
/// not serve yet (held before it begins: a background start answers before that): before, the
/// keeper made its watch only as it began to serve, found no root at the path then, and kept
/// the VM for ever (a failure seen in parallel runs of `pool::`).
#[test]
fn a_moved_roots_pooled_vm_goes_at_once() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::by_default("pool-default-moved");
    pool.ok(&["pool", "--idle", "0"]);
    let mut hold = support::RecordHold::before_begin("pool-default-moved");
    let (variable, file) = hold.env();
    let out = pool
        .command()
        .env(variable, &file)
        .args(["run", "--rm", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    pool.feather.eventually_within(
        "the first run's fill holds its VM's keeper before it serves",
        Duration::from_secs(60),
        || hold.awaited(),
    );
    let name = pool.entries().into_iter().next().unwrap();
    let keeper = keeper_of(&pool, &name);
    let alive = || std::path::Path::new(&format!("/proc/{keeper}")).exists();
    let root = pool.feather.root.clone();
    // Not a `root-…` name: the sweep of ended tests' roots (tests/support) would take it.
    let moved = root.with_file_name(format!(
        "moved-{}",
        root.file_name().unwrap().to_string_lossy()
    ));
    fs::rename(&root, &moved).unwrap();
    hold.release();
    let ended = feather_testkit::eventually(Duration::from_secs(30), || !alive());
    // Back where the fixture removes it, whatever the outcome.
    fs::rename(&moved, &root).unwrap();
    assert!(ended, "the moved root's pooled VM is still up");
    pool.ok(&["pool", "--drain"]);
    assert_nothing_left(&pool.feather, &pool.bridge, &cgroups_before);
}

/// `network down` while a fill is under way (held by a test hook after it took its lock, before
/// it read the size, as a run's refill that had not written its entry yet): `network down`
/// writes the size 0, waits for the fill, which then makes nothing, takes the network down and
/// only then puts the setting back; `rm -rf` of the root then succeeds at once and leaves
/// nothing. Before, `network down` saw no entry, did nothing to the pool, and the fill made a
/// VM (bringing the network up again) in a root being removed.
#[test]
fn network_down_waits_for_a_fill_under_way_and_rm_rf_then_leaves_nothing() {
    let pool = Pooled::by_default("pool-down-fill");
    let out = pool
        .command()
        .env(support::NO_POOL, "0")
        .args(["run", "--rm", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The pool's folder made; idle "for ever": a VM made by the fill would stay.
    pool.ok(&["pool", "--idle", "0"]);
    let mut hook = Hook::held("pool-down-fill");
    let mut fill = pool
        .command()
        .env(feather_vm::pool::HOLD_FILL, &hook.path)
        .args(["pool", "--fill"])
        .spawn()
        .unwrap();
    let lock = pool.feather.root.join("pool/fill.lock");
    pool.feather
        .eventually("the fill holds its lock", || holds_flock(fill.id(), &lock));
    let mut down = pool
        .command()
        .args(["network", "down"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let size = pool.feather.root.join("pool/size");
    // With the fix it waits for the fill, size 0 written; before, it was done at once.
    feather_testkit::eventually(Duration::from_secs(10), || {
        fs::read_to_string(&size).is_ok_and(|size| size == "0\n")
            || matches!(down.try_wait(), Ok(Some(_)))
    });
    hook.release();
    assert!(fill.wait().unwrap().success());
    let out = down.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(pool.entries().is_empty(), "{:?}", pool.entries());
    assert!(!size.exists(), "the size setting was not put back");
    let root = pool.feather.root.clone();
    let rm = Command::new("rm").arg("-rf").arg(&root).output().unwrap();
    assert!(rm.status.success(), "rm -rf: {rm:?}");
    assert_eq!(
        support::HostTraces::of(&root, Some(&pool.bridge)),
        support::HostTraces::default(),
        "left on the host"
    );
}

/// Whether process `pid` holds a `flock` on the file at `path` (`/proc/locks`).
fn holds_flock(pid: u32, path: &std::path::Path) -> bool {
    flocks(path).contains(&(pid, false))
}

/// The processes that hold (`false`) or wait for (`true`) a `flock` on the file at `path`, as
/// `/proc/locks` lists them.
fn flocks(path: &std::path::Path) -> Vec<(u32, bool)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(inode) = fs::metadata(path).map(|m| m.ino().to_string()) else {
        return Vec::new();
    };
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .filter_map(|line| {
            // "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF"; a waiter's has "->" after N:.
            let mut fields: Vec<&str> = line.split_whitespace().skip(1).collect();
            let waiting = fields.first() == Some(&"->");
            if waiting {
                fields.remove(0);
            }
            let of_path = fields.get(4)?.rsplit(':').next()? == inode;
            (fields.first() == Some(&"FLOCK") && of_path)
                .then(|| Some((fields.get(3)?.parse().ok()?, waiting)))
                .flatten()
        })
        .collect()
}

/// A file whose lock a test holds, for a test hook (`pool::HOLD_FILL`, `HOLD_FILL_START`) to
/// wait for; its folder removed on drop.
struct Hook {
    path: std::path::PathBuf,
    held: Option<fs::File>,
    _folder: Remove,
}

impl Hook {
    /// A hook that holds no one until [`Hook::armed`]: its file is not there yet, and a process
    /// at the hook goes on where it finds none.
    fn unarmed(label: &str) -> Hook {
        let folder = support::unique_dir("hold-fill", label);
        Hook {
            path: folder.join("fill"),
            held: None,
            _folder: Remove(folder),
        }
    }

    /// The hook's file made, held while the guard lives: a process that reaches the hook
    /// meanwhile waits. Made locked under another name and renamed, so that no process finds
    /// it unlocked.
    fn armed(&self) -> Armed {
        let making = self.path.with_extension("making");
        let held = fs::File::create(&making).unwrap();
        held.lock().unwrap();
        fs::rename(&making, &self.path).unwrap();
        Armed {
            path: self.path.clone(),
            held: Some(held),
        }
    }

    fn held(label: &str) -> Hook {
        let folder = support::unique_dir("hold-fill", label);
        let path = folder.join("fill");
        let held = fs::File::create(&path).unwrap();
        held.lock().unwrap();
        Hook {
            path,
            held: Some(held),
            _folder: Remove(folder),
        }
    }

    /// The process waiting at the hook, once one does.
    fn waiter(&self, feather: &Feather) -> u32 {
        let waiter = || flocks(&self.path).into_iter().find(|&(_, waiting)| waiting);
        feather.eventually("a process waits at the hook", || waiter().is_some());
        waiter().unwrap().0
    }

    fn release(&mut self) {
        self.held = None;
    }
}

/// A hook's file, held while this lives ([`Hook::armed`]): removed, then let go, at
/// [`Armed::release`] or on drop, so that a process that reaches the hook later goes on.
struct Armed {
    path: std::path::PathBuf,
    held: Option<fs::File>,
}

impl Armed {
    fn release(&mut self) {
        let _ = fs::remove_file(&self.path);
        self.held = None;
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.release();
    }
}

/// A fill that finds another at work waits for it, then does what it came for: here, replaces
/// the VM the one at work made under a lower hard limit (a caller's `ulimit -n 200`) with one
/// of the host's limits. Before, it returned at once and the lowered VM stayed, serving only
/// callers as low.
#[test]
fn a_fill_that_finds_another_at_work_waits_and_replaces_its_lowered_vm() {
    let pool = Pooled::of_one_unfilled("pool-fill-waits");
    let mut hook = Hook::held("pool-fill-waits");
    let fill = |script: &str| pool.fill_in_shell(script);
    let mut lowered = pool.fill_held("ulimit -n 200; exec \"$@\"", &hook);
    let mut at_wait = Hook::held("pool-fill-waits-at");
    let mut ours = fill("exec \"$@\"")
        .env(feather_vm::pool::HOLD_FILL_WAIT, &at_wait.path)
        .spawn()
        .unwrap();
    // Ours found the lock taken by the one at work (held by the hook), did not trust it (its
    // limits are lower), and comes to wait for it.
    assert_eq!(
        at_wait.waiter(&pool.feather),
        ours.id(),
        "our fill comes to wait"
    );
    at_wait.release();
    hook.release();
    assert!(lowered.wait().unwrap().success());
    assert!(ours.wait().unwrap().success());
    let entries = pool.entries();
    let [name] = &entries[..] else {
        panic!("the pool holds {entries:?}")
    };
    let limits = fs::read_to_string(format!("/proc/{}/limits", keeper_of(&pool, name))).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files"));
    assert!(!open_files.unwrap().contains(" 200 "), "{limits}");
}

/// A fill a run started before `network down` but at work only after it (held by a test hook
/// before it takes its lock), when the size setting is back as it was: it makes nothing, so
/// that `rm -rf` of the root after `network down` leaves nothing. Before, it made a VM (and
/// brought the network up again) in the root being removed.
#[test]
fn a_fill_started_before_network_down_and_at_work_after_it_makes_nothing() {
    a_late_fill_makes_nothing("pool-down-late-fill", true);
}

/// [`a_fill_started_before_network_down_and_at_work_after_it_makes_nothing`] in a root whose
/// pool was never used: the run that starts the fill makes the pool's folder first, so that
/// `network down`, which makes nothing of a pool where there is none, raises its generation.
/// Without that, the fill made the folder only after `network down`, and a VM.
#[test]
fn a_roots_first_fill_started_before_network_down_makes_nothing_after_it() {
    a_late_fill_makes_nothing("pool-down-first-fill", false);
}

/// `network down` in a root whose pool was never used makes nothing of a pool there (it made
/// `pool/` with its settings, and the pool's lock, in every root it took down).
#[test]
fn network_down_makes_no_pool_where_there_is_none() {
    let feather = Feather::new("pool-down-none");
    feather.ok(&["ls"]);
    feather.ok(&["network", "down"]);
    assert!(
        !feather.root.join("pool").exists(),
        "a pool's folder was made"
    );
}

/// `network down` of `feather`'s root held at the test hook `variable`, then, once `meanwhile`
/// has run, killed (by pid) there.
fn network_down_killed_at(feather: &Feather, variable: &str, meanwhile: impl FnOnce()) {
    let hook = Hook::held("pool-down-killed");
    let mut down = feather
        .command()
        .env(variable, &hook.path)
        .args(["network", "down"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let waiter = hook.waiter(feather);
    assert_eq!(waiter, down.id(), "network down waits at {variable}");
    meanwhile();
    down.kill().unwrap();
    down.wait().unwrap();
}

/// `network down` killed (by pid) while its pool fence stands, in a root without a pool: the
/// next `pool` shows the pool on again (the default size 1), or the size a `pool --size 0` set
/// meanwhile. Before, the fence's size 0 stayed for good and looked like the admin's own.
#[test]
fn a_network_down_killed_while_its_fence_stands_leaves_the_pool_as_it_was() {
    for set in [None, Some("0")] {
        let feather = Feather::new("pool-fence-killed");
        feather.ok(&["ls"]);
        network_down_killed_at(&feather, feather_vm::pool::HOLD_FENCED, || {
            if let Some(size) = set {
                feather.ok(&["pool", "--size", size]);
            }
        });
        let shown = feather.ok(&["pool"]);
        let expected = format!("size: {}", set.unwrap_or("1"));
        assert_eq!(shown.lines().next(), Some(&*expected), "{shown}");
        if set.is_none() {
            assert!(!feather.root.join("pool").exists(), "the fence was left");
        }
    }
}

/// `network down` killed (by pid) while it empties a root's pool (its size 0 written, held by
/// a test hook), the size set before (`pool --size 0`, or none): the next `pool` shows that
/// size again (none: the default 1). Before, its size 0 stayed for good and read as the
/// admin's own.
#[test]
fn a_network_down_killed_while_it_empties_the_pool_leaves_its_size_as_it_was() {
    for set in [Some("0"), None] {
        let feather = Feather::new("pool-down-killed");
        // The pool's folder, made by a setting that leaves the size alone.
        feather.ok(&["pool", "--idle", "0"]);
        if let Some(size) = set {
            feather.ok(&["pool", "--size", size]);
        }
        network_down_killed_at(&feather, feather_vm::pool::HOLD_EMPTYING, || ());
        let shown = feather.ok(&["pool"]);
        let expected = format!("size: {}", set.unwrap_or("1"));
        assert_eq!(shown.lines().next(), Some(&*expected), "{shown}");
    }
}

/// A `network down` that ends as it should leaves no setting kept aside in the pool's folder
/// (`size.put-back`, kept while it empties the pool); its size is as it was.
#[test]
fn network_down_leaves_no_size_kept_aside() {
    let feather = Feather::new("pool-down-put-back");
    feather.ok(&["pool", "--idle", "0"]);
    feather.ok(&["pool", "--size", "2"]);
    feather.ok(&["network", "down"]);
    let kept = feather.root.join("pool/size.put-back");
    assert!(!kept.exists(), "{kept:?} is left");
    assert_eq!(feather.ok(&["pool"]).lines().next(), Some("size: 2"));
}

/// The setting a killed `network down` kept aside that cannot be put back (something else in
/// its place: here a folder) is said, naming it, rather than leave the pool off without a
/// word.
#[test]
fn a_size_kept_aside_that_cannot_be_put_back_is_said() {
    let feather = Feather::new("pool-put-back-blocked");
    feather.ok(&["pool", "--idle", "0"]);
    feather.ok(&["pool", "--size", "2"]);
    network_down_killed_at(&feather, feather_vm::pool::HOLD_EMPTYING, || ());
    let kept = feather.root.join("pool/size.put-back");
    fs::remove_file(&kept).unwrap();
    fs::create_dir(&kept).unwrap();
    let shown = feather.run(&["pool"]);
    assert!(
        shown.stderr.contains(&kept.display().to_string()),
        "{}",
        shown.stderr
    );
}

/// A fill that finds the pool's lock held by a stopped process (SIGSTOP, Ctrl-Z: a fill
/// stopped) fails at once, naming it and how to let it go on; before the bound, it waited
/// for it for good, and `pool --size` with it.
#[test]
fn a_fill_behind_a_stopped_holder_of_the_pools_lock_fails_naming_it() {
    let feather = Feather::new("pool-fill-stopped");
    feather.ok(&["pool", "--idle", "0"]);
    let lock = feather
        .root
        .join("pool")
        .join(feather_vm::pooled::FILL_LOCK);
    let said = support::failed_behind_a_stopped_holder(&feather, &lock, &["pool", "--size", "1"]);
    assert!(said.contains("fill.lock"), "{said}");
}

/// `pool --size` while the pool's settings lock is held by a stopped process (SIGSTOP,
/// Ctrl-Z: a `pool --size` or a fence's lift stopped mid-way) fails, naming the lock,
/// the holder's pid and how to let it go on, and leaves the size as it was; before the bound,
/// it would wait for the holder for good.
#[test]
fn a_size_set_behind_a_stopped_holder_of_the_settings_lock_fails_naming_it() {
    let feather = Feather::new("pool-settings-stopped");
    feather.ok(&["pool", "--idle", "0"]);
    let lock = feather
        .root
        .join("pool")
        .join(feather_vm::pooled::SETTINGS_LOCK);
    let said = support::failed_behind_a_stopped_holder(&feather, &lock, &["pool", "--size", "0"]);
    assert!(said.contains("settings.lock"), "{said}");
    let shown = feather.ok(&["pool"]);
    assert_eq!(shown.lines().next(), Some("size: 1"), "{shown}");
}

/// A fill started by a run, held before it takes its lock, at work only after `network down`;
/// the pool's folder made before the run (a setting) or by it (`made_first` false).
fn a_late_fill_makes_nothing(label: &str, made_first: bool) {
    let pool = Pooled::by_default(label);
    if made_first {
        pool.ok(&["pool", "--idle", "0"]);
    }
    let mut hook = Hook::held("pool-down-late-fill");
    let out = pool
        .command()
        .env(feather_vm::pool::HOLD_FILL_START, &hook.path)
        .env("FEATHER_TRACE", "phases")
        .args(["run", "--rm", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("start the pool's fill"), "{said}");
    let fill = hook.waiter(&pool.feather);
    let out = pool.output(&["network", "down"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!pool.feather.root.join("pool/size").exists());
    hook.release();
    pool.feather.eventually("the late fill has ended", || {
        !std::path::Path::new(&format!("/proc/{fill}")).exists()
    });
    assert!(pool.entries().is_empty(), "{:?}", pool.entries());
    let folders = pool.vm_folders();
    assert!(
        !folders.iter().any(|name| from_the_pool(name)),
        "{folders:?}"
    );
}

/// A root's first fill makes one VM: its fingerprint is taken once the root's network exists
/// (made with that VM). Before, the first VM was stale as soon as it was made (`network.toml`
/// written meanwhile), and the fill let it go and made a second; counted by the fill's trace,
/// which says each VM it makes. Another test's mount may make a VM stale meanwhile: a fresh
/// root is tried up to three times.
#[test]
fn a_roots_first_fill_makes_one_vm() {
    let mut made = Vec::new();
    for attempt in 0..3 {
        let pool = Pooled::by_default(&format!("pool-first-fill-{attempt}"));
        assert_eq!(pool.ok(&["pool"]).lines().next(), Some("size: 1"));
        assert!(!pool.feather.root.join("network.toml").exists());
        let out = pool
            .command()
            .env("FEATHER_TRACE", "phases")
            .args(["pool", "--fill"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        let count = said.matches("make a pooled VM").count();
        if count == 1 {
            assert_eq!(pool.entries().len(), 1, "{:?}", pool.entries());
            return;
        }
        made.push(count);
    }
    panic!("a root's first fill made {made:?} VMs, not 1");
}

/// A claimed VM's keeper reaps the refill it started: held (a test hook) after it started it,
/// it has no child left once the refill has made the pool whole and ended. Before, the ended
/// fill stayed its zombie for as long as the keeper lived.
#[test]
fn a_claimed_vms_keeper_reaps_the_refill_it_started() {
    let mut hook = Hook::held("refill-reaped");
    // Every fill passes the hook on to the keepers it starts: a miss's too, and `whole`'s.
    let pool = Pooled::by_default("pool-refill-reaped")
        .hooked(feather_vm::keeper::HOLD_AFTER_REFILL, &hook);
    pool.ok(&["pool", "--size", "1"]);
    pool.taken_from_ready(|| {
        pool.ok(&["run", "--rm", "--", "hostname"])
            .trim()
            .to_owned()
    });
    let keeper = hook.waiter(&pool.feather);
    let lock = pool.feather.root.join("pool/fill.lock");
    pool.feather
        .eventually("the refill has made the pool whole and let go", || {
            pool.entries().len() == 1 && flocks(&lock).is_empty()
        });
    pool.feather.eventually(
        "the held keeper has no child left: the refill reaped",
        || children_of(keeper).is_empty(),
    );
    hook.release();
}

/// The children of process `pid`, of all its threads.
fn children_of(pid: u32) -> Vec<String> {
    support::names_in(std::path::Path::new(&format!("/proc/{pid}/task")))
        .iter()
        .filter_map(|task| fs::read_to_string(format!("/proc/{pid}/task/{task}/children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A pooled VM's keeper that gets no inotify instance (a test hook, as when root's
/// `fs.inotify.max_user_instances` is reached) says so once in its log and looks every 2 s
/// instead: its root removed by hand, the VM goes though its idle time is "for ever". Before,
/// it went silently without a watch, and so never.
#[test]
fn a_keeper_without_inotify_says_so_and_still_sees_its_root_removed() {
    let mut pool = Pooled::new("pool-no-inotify", 0);
    pool.size = 1;
    pool.ok(&["pool", "--idle", "0"]);
    let (name, keeper) = pool.filled_without_inotify(&pool.feather.root);
    // Killed if the test fails: with its root gone nothing else would end it.
    let _end = EndKeeper(keeper);
    let alive = || std::path::Path::new(&format!("/proc/{keeper}")).exists();
    let root = pool.feather.root.clone();
    let log = fs::read_to_string(root.join("vms").join(&name).join("keeper.log")).unwrap();
    assert_eq!(log.matches("no inotify watch").count(), 1, "{log}");
    pool.remove_the_root_by_hand();
    pool.feather.eventually_within(
        "the removed root's pooled VM and its processes are gone",
        Duration::from_secs(30),
        || !alive() && support::HostTraces::of(&root, None).processes.is_empty(),
    );
}

/// A keeper killed on drop if it is still there.
struct EndKeeper(i32);

impl Drop for EndKeeper {
    fn drop(&mut self) {
        // Only while the pid is still a keeper's (not reused since it ended).
        let comm = fs::read_to_string(format!("/proc/{}/comm", self.0)).unwrap_or_default();
        if comm.starts_with("feather-keeper") {
            let pid = nix::unistd::Pid::from_raw(self.0);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A host whose mount table changes between runs (containers, automounts) turns every pooled
/// VM stale: after two runs in a row found only stale VMs, runs start no more fills (each would
/// cost a VM start beside the next run, for a VM that goes stale too), until the size is set
/// again. A run that finds a VM that matches starts the count again.
#[test]
fn runs_that_keep_finding_the_pool_stale_stop_refilling_it() {
    let pool = Pooled::new("pool-churn", 1);
    let mut mounts = Vec::new();
    let mut stale_run = |round: usize| {
        let mounted = support::unique_dir(&format!("churn-{round}"), "pool-churn");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "pool-churn"])
            .arg(&mounted)
            .status()
            .unwrap();
        assert!(status.success());
        mounts.push(Unmount(mounted));
        let out = pool
            .command()
            .env("FEATHER_TRACE", "phases")
            .args(["run", "--rm", "--", "hostname"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!from_the_pool(&name), "a stale VM was used: {name}");
        String::from_utf8_lossy(&out.stderr).contains("start the pool's fill")
    };
    // Other fills (a claimed VM's keeper's refill, `whole`'s) may end a stale VM before a run
    // finds it: runs until two in a row found it stale.
    let misses = pool.feather.root.join("pool/stale-misses");
    let counted = || {
        fs::read_to_string(&misses)
            .ok()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    let mut round = 0;
    while counted() < 2 && round < 8 {
        pool.whole();
        stale_run(round);
        round += 1;
    }
    assert!(
        counted() >= 2,
        "no two stale misses in a row in {round} runs"
    );
    // `pool` says so, and how to end it without turning the default size into a setting
    // (review pool29 L3: it said `feather pool --size 1`, which `network down` then keeps).
    let shown = pool.ok(&["pool"]);
    assert!(
        shown.contains("refills stopped")
            && shown.contains("`feather pool --fill`")
            && !shown.contains("--size"),
        "{shown}"
    );
    // No fill at work any more (one started before the count reached 2 may make a VM).
    let lock = pool.feather.root.join("pool/fill.lock");
    pool.feather.eventually("no fill is at work", || {
        fs::File::open(&lock).is_ok_and(|file| file.try_lock().is_ok())
    });
    assert!(
        !stale_run(round),
        "a run started a fill after two stale misses in a row"
    );
    // The size set again: filled, counted from 0.
    pool.ok(&["pool", "--size", "1"]);
    assert!(!misses.exists());
    assert!(!pool.ok(&["pool"]).contains("refills stopped"));
    drop(mounts);
}

/// A mount a test made, unmounted and its folder removed on drop.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// A fill holds no descriptor of whoever started it beyond stdio (a script's `flock 9`, make's
/// jobserver pipe): the write end of a pipe its starter had at 9 is closed while the fill is
/// still at work (held under its lock by a test hook). Before, it stayed open until the fill
/// had made its VMs.
#[test]
fn a_fill_holds_nothing_of_its_starters_descriptors() {
    use std::os::fd::AsFd;
    let pool = Pooled::by_default("pool-fill-fds");
    pool.ok(&["pool", "--idle", "0"]);
    let mut hook = Hook::held("pool-fill-fds");
    let (read, write) = nix::unistd::pipe().unwrap();
    let ours = pool.command();
    // The shell puts the pipe at 9, as `flock 9` or a jobserver would leave it, then becomes
    // the fill.
    let mut fill = Command::new("sh")
        .args(["-c", "exec 9>&1 >/dev/null; exec \"$@\"", "sh"])
        .arg(ours.get_program())
        .args(ours.get_args())
        .args(["pool", "--fill"])
        .envs(ours.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env_remove(support::NO_POOL)
        .env(feather_vm::pool::HOLD_FILL, &hook.path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .spawn()
        .unwrap();
    let lock = pool.feather.root.join("pool/fill.lock");
    pool.feather
        .eventually("the fill holds its lock", || holds_flock(fill.id(), &lock));
    let mut fds = [nix::poll::PollFd::new(
        read.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO);
    let hung_up = fds[0]
        .revents()
        .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP));
    hook.release();
    assert!(fill.wait().unwrap().success());
    assert!(
        hung_up,
        "the fill at work still held its starter's descriptor 9"
    );
}

/// A root given as a symbolic link is one pool with the root it names: a fill through the
/// link makes the VM the root's own path shows ready, and its keeper watches the root's own
/// path, so that the link removed (the root untouched) leaves the VM in the pool, claimed
/// then through the root's path. Before, the keeper watched the link's path and took the
/// link's removal for its root's (seen here by a keeper without inotify, which looks every
/// 2 s whatever changed).
#[test]
fn a_root_given_as_a_symbolic_link_is_one_pool_with_it() {
    let mut pool = Pooled::new("pool-symlink", 0);
    pool.size = 1;
    pool.ok(&["pool", "--idle", "0"]);
    let (link, _remove) = pool.link_to_root("pool-symlink");
    let (_, keeper) = pool.filled_without_inotify(&link);
    let _end = EndKeeper(keeper);
    fs::remove_file(&link).unwrap();
    // Twice the look of a keeper without inotify, and a second more.
    std::thread::sleep(feather_vm::root_watch::LOOK_EVERY * 2 + Duration::from_secs(1));
    assert!(
        std::path::Path::new(&format!("/proc/{keeper}")).exists(),
        "the pooled VM ended when the link to its root was removed"
    );
    let (taken, _) = pool.taken_from_ready(|| {
        pool.ok(&["run", "--rm", "--", "hostname"])
            .trim()
            .to_owned()
    });
    assert!(from_the_pool(&taken), "{taken}");
}

/// A `fill.lock` that a user owning the root's folder made a symbolic link (`sudo feather
/// --root ~/vms …`) is not followed: the file it points at keeps its bytes, and the fill says
/// what is wrong and what to do (review pool29 H2: it was truncated and overwritten as root).
#[test]
fn a_fill_lock_made_a_symbolic_link_is_refused_and_its_target_kept() {
    let pool = Pooled::new("pool-lock-link", 0);
    let scratch = support::unique_dir("scratch", "pool-lock-link");
    let _remove = Remove(scratch.clone());
    let target = scratch.join("precious");
    fs::write(&target, b"not the pool's\n").unwrap();
    let lock = pool.feather.root.join("pool/fill.lock");
    let _ = fs::remove_file(&lock);
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    let out = pool.output(&["pool", "--size", "1"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    fs::remove_file(&lock).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"not the pool's\n", "{said}");
    assert!(!out.status.success(), "the fill went through the link");
    assert!(
        said.contains("fill.lock") && said.contains("symbolic link") && said.contains("remove it"),
        "{said}"
    );
}

/// A fill that is over leaves no record of itself as the fill at work: a fill that finds the
/// lock taken by the next one, not recorded yet, must not trust the record of one that is
/// over and return (review pool29 M3: the record stayed after the lock was let go).
#[test]
fn a_fill_over_leaves_no_record_of_a_fill_at_work() {
    let pool = Pooled::new("pool-record-cleared", 1);
    pool.ok(&["pool", "--fill"]);
    let record = pool.feather.root.join("pool/filler");
    assert!(
        !record.exists(),
        "{}",
        fs::read_to_string(&record).unwrap_or_default()
    );
}

/// A root with a policy rule file, filled through its own path, is claimed from through a
/// symbolic link to it: its rule files are fingerprinted by their names in the policy folder,
/// not by the root's spelling (review pool29 M1: every run through the link found the pool
/// stale, ended its VM and missed).
#[test]
fn a_root_with_policy_rules_is_claimed_from_through_a_symbolic_link() {
    let mut pool = Pooled::new("pool-link-policy", 0);
    let policy = pool.feather.root.join("policy.d");
    fs::create_dir_all(&policy).unwrap();
    fs::write(
        policy.join("10-db.policy"),
        "ipc  tcp:5432  vm  db  allow\n",
    )
    .unwrap();
    pool.size = 1;
    pool.ok(&["pool", "--size", "1"]);
    let (link, _remove) = pool.link_to_root("pool-link-policy");
    let (taken, _) = pool.taken_from_ready(|| {
        let out = Command::new(Feather::bin())
            .arg("--root")
            .arg(&link)
            .args(["run", "--rm", "--", "hostname"])
            .env("FEATHER_SUBNET", &pool.subnet.cidr)
            .env_remove(support::NO_POOL)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    assert!(from_the_pool(&taken), "{taken}");
}

/// A fill that finds another at work that does all it would (the same limits, the same
/// context) returns at once, while that one still holds the lock: back-to-back runs do not
/// queue one fill each (review pool29 L5: only the bench caught a version where every fill
/// waited, which made a pool of 4 back to back 4x slower).
#[test]
fn a_fill_that_finds_one_at_work_doing_all_it_would_returns_at_once() {
    let pool = Pooled::of_one_unfilled("pool-fill-returns");
    let mut hook = Hook::held("pool-fill-returns");
    let mut at_work = pool.fill_held("exec \"$@\"", &hook);
    let lock = pool.feather.root.join("pool/fill.lock");
    let ours = std::cell::RefCell::new(pool.fill_in_shell("exec \"$@\"").spawn().unwrap());
    pool.feather.eventually("our fill returns", || {
        ours.borrow_mut().try_wait().unwrap().is_some()
    });
    let mut ours = ours.into_inner();
    let still_held = holds_flock(at_work.id(), &lock);
    hook.release();
    assert!(ours.wait().unwrap().success());
    assert!(at_work.wait().unwrap().success());
    assert!(
        still_held,
        "our fill returned only once the one at work was done"
    );
}

/// A run that finds in the pool only an entry whose VM does not answer (back to back, the
/// refill's, whose VM is still being made) misses without fingerprinting the host, which only
/// a VM claimed is compared with. Before, every such miss paid for the fingerprint.
#[test]
fn a_miss_past_a_vm_not_ready_takes_no_fingerprint() {
    let cgroups_before = support::feather_cgroups();
    let pool = Pooled::of_one_unfilled("pool-miss-no-print");
    // An entry as a fill writes it before it starts the VM: no VM answers for it yet.
    fs::write(pool.feather.root.join("pool/vms/run-notready"), "").unwrap();
    let out = pool
        .command()
        .env("FEATHER_TRACE", "phases")
        .args(["run", "--rm", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("look in the pool"), "{said}");
    assert!(!said.contains("claim a VM of the pool"), "{said}");
    assert!(!said.contains("fingerprint the host"), "{said}");
    pool.feather.eventually("the fill removed the entry", || {
        !pool.entries().iter().any(|e| e == "run-notready")
    });
    pool.drained_leaving_nothing(&cgroups_before);
}

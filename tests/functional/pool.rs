//! VMs made ahead for the default `run --rm` (FEATHER_POOL, feather_vm::pool): a run that
//! claims one cannot tell it from a VM made for it, two runs never share one, the pool drains,
//! a refill killed at any point leaves nothing, and a VM made by another feather is never used.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, Feather};

/// A default `feather run --rm` with a pool of `size`; its phases traced, to tell a claim.
fn run_rm(feather: &Feather, size: usize, argv: &[&str]) -> Command {
    let mut command = feather.command();
    command
        .env("FEATHER_POOL", size.to_string())
        .env("FEATHER_TRACE", "phases")
        .args(["run", "--rm", "--"])
        .args(argv);
    command
}

struct Ran {
    code: i32,
    stdout: String,
    claimed: bool,
    pid: u32,
}

fn ran(mut command: Command) -> Ran {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        claimed: stderr.contains("pool: claim a VM made ahead"),
        pid,
    }
}

/// The VMs made ahead in the root, as `feather pool` lists them (name, made by).
fn pooled(feather: &Feather) -> Vec<String> {
    feather.ok(&["pool"]).lines().map(str::to_owned).collect()
}

/// Waits until the pool holds `n` VMs of this feather that are up.
fn await_pool(feather: &Feather, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = pooled(feather)
            .iter()
            .filter(|line| line.ends_with("this feather"))
            .filter(|line| {
                let name = line.split('\t').next().unwrap();
                std::fs::read_to_string(feather.vm_dir(name).join("state.json"))
                    .is_ok_and(|s| s.contains("\"running\""))
            })
            .count();
        if ready >= n {
            return;
        }
        assert!(Instant::now() < deadline, "the pool never held {n} VMs");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a command sees of the VM it runs in, the VM's own name replaced by NAME. Not the
/// count of its mounts: a VM hides every state root registered while it runs (other tests'),
/// one that waited in the pool for longer than a VM made for the run.
const LOOK: &str = "hostname; cat /etc/hostname; grep -v '^#' /etc/hosts | sed 's/^[0-9.]*\\t//'; \
    echo pid $$; pwd; id; env | sort; cat /proc/self/cgroup; \
    grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status; ulimit -a; chrt -p $$; \
    ionice -p $$; cat /proc/self/oom_score_adj; umask; ip -o addr | wc -l; \
    ls -a /run /dev";

fn look(feather: &Feather, size: usize) -> Ran {
    let mut seen = ran(run_rm(feather, size, &["sh", "-c", LOOK]));
    assert_eq!(seen.code, 0, "{}", seen.stdout);
    seen.stdout = seen.stdout.replace(&format!("run-{}", seen.pid), "NAME");
    seen
}

#[test]
fn a_command_cannot_tell_a_vm_made_ahead_from_one_made_for_it() {
    let feather = Feather::new("pool-alike");
    let cold = look(&feather, 0);
    assert!(!cold.claimed);
    // The first run fills the pool; the next claims the VM made ahead.
    assert_eq!(ran(run_rm(&feather, 1, &["true"])).code, 0);
    await_pool(&feather, 1);
    let warm = look(&feather, 1);
    assert!(warm.claimed, "the run claimed no VM made ahead");
    assert!(cold.stdout.starts_with("NAME\nNAME\n"), "{}", cold.stdout);
    assert_eq!(cold.stdout, warm.stdout);
    // The claimed VM is the run's, listed under its name while it runs, like a cold one's.
    await_pool(&feather, 1);
    let mut command = run_rm(&feather, 1, &["sleep", "30"]);
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let name = format!("run-{}", child.id());
    feather.eventually("the claimed VM is listed under the run's name", || {
        feather.ok(&["ls"]).contains(&name)
    });
    assert!(
        !feather.ok(&["ls"]).contains("pool-"),
        "a VM made ahead is listed"
    );
    // Ended with its command, whose status the run returns: killed by SIGTERM, as cold.
    let kill_sleep = "for p in /proc/[0-9]*; do \
        [ \"$(cat $p/comm)\" = sleep ] && kill -TERM ${p#/proc/}; done; true";
    // The VM ends with the sleep, perhaps before this exec hears its shell's end.
    feather.run(&["exec", &name, "--", "sh", "-c", kill_sleep]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    feather.eventually("the claimed VM is gone", || !feather.vm_dir(&name).exists());
}

/// Once the runs started together have all claimed: the VM's name and its processes.
const SEEN_AFTER_A_WHILE: &str = "sleep 1; hostname; for p in /proc/[0-9]*; do cat $p/comm; done";

#[test]
fn two_runs_never_claim_one_vm() {
    let feather = Feather::new("pool-race");
    assert_eq!(ran(run_rm(&feather, 2, &["true"])).code, 0);
    await_pool(&feather, 2);
    // Six runs at once for two VMs: each runs in a VM named after it, alone.
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let command = run_rm(&feather, 2, &["sh", "-c", SEEN_AFTER_A_WHILE]);
            std::thread::spawn(move || ran(command))
        })
        .collect();
    let results: Vec<Ran> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    let claimed = results.iter().filter(|r| r.claimed).count();
    assert!((1..=2).contains(&claimed), "{claimed} claims of 2 VMs");
    for r in &results {
        assert_eq!(r.code, 0);
        // Its own hostname, and no process of another run's in its VM: one shell.
        let mut lines = r.stdout.lines();
        assert_eq!(
            lines.next(),
            Some(format!("run-{}", r.pid).as_str()),
            "{}",
            r.stdout
        );
        let shells = lines.filter(|comm| *comm == "sh").count();
        assert_eq!(shells, 1, "{}", r.stdout);
    }
}

#[test]
fn a_drain_removes_every_vm_made_ahead_and_stops_the_refill() {
    let feather = Feather::new("pool-drain");
    assert_eq!(ran(run_rm(&feather, 2, &["true"])).code, 0);
    await_pool(&feather, 2);
    feather.ok(&["pool", "--drain"]);
    assert!(pooled(&feather).is_empty());
    // A run leaves a refill waiting until runs stop coming (here they seem to, the last
    // run's mark kept fresh): the drain stops it before it makes a VM.
    assert_eq!(ran(run_rm(&feather, 2, &["true"])).code, 0);
    let mark = feather.root.join("run/pool/last-run");
    let drained = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !drained.load(std::sync::atomic::Ordering::SeqCst) {
                // Gone once the drain is done.
                if let Ok(file) = std::fs::File::options().write(true).open(&mark) {
                    let _ = file.set_modified(std::time::SystemTime::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        feather.ok(&["pool", "--drain"]);
        drained.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(pooled(&feather).is_empty(), "a VM was made after the drain");
    assert_nothing_of_the_root_left(&feather);
}

#[test]
fn a_refill_killed_at_any_point_leaves_nothing_and_ls_tells_the_truth() {
    let feather = Feather::new("pool-killed");
    let lock = feather.root.join("run/pool/refill.lock");
    for delay_ms in [0u64, 2, 5, 10, 20, 40, 80, 160] {
        assert_eq!(ran(run_rm(&feather, 1, &["true"])).code, 0);
        // The refill names itself in its lock once it holds it, then waits for quiet (150 ms).
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&lock)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok())
                .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "no refill named itself");
            std::thread::sleep(Duration::from_millis(5));
        };
        std::thread::sleep(Duration::from_millis(150 + delay_ms));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        std::fs::write(&lock, "").unwrap();
        // No VM of the user's: `ls` lists none, whatever the refill left.
        assert_eq!(
            feather.ok(&["ls", "--json"]).trim(),
            "[]",
            "after {delay_ms} ms"
        );
        // A VM of the pool left half-made is never claimed as if ready, and the next refill
        // clears it away: a run works either way.
        let after = ran(run_rm(&feather, 1, &["echo", "ok"]));
        assert_eq!((after.code, after.stdout.as_str()), (0, "ok\n"));
        feather.ok(&["pool", "--drain"]);
    }
    assert_nothing_of_the_root_left(&feather);
}

#[test]
fn a_vm_made_by_another_feather_is_not_claimed_and_the_refill_removes_it() {
    let feather = Feather::new("pool-version");
    assert_eq!(ran(run_rm(&feather, 1, &["true"])).code, 0);
    await_pool(&feather, 1);
    let old = pooled(&feather)[0].split('\t').next().unwrap().to_owned();
    std::fs::write(feather.vm_dir(&old).join("pooled"), "0.0.1 another build").unwrap();
    assert!(pooled(&feather)[0].contains("another feather"));
    let run = ran(run_rm(&feather, 1, &["true"]));
    assert!(!run.claimed, "a VM of another feather was claimed");
    assert_eq!(run.code, 0);
    feather.eventually("the refill replaced it", || {
        let now = pooled(&feather);
        now.len() == 1 && !now[0].starts_with(&old) && now[0].ends_with("this feather")
    });
    assert!(!feather.vm_dir(&old).exists());
}

/// Nothing of the root's VMs on the host, nor in the root: processes, mounts, folders.
fn assert_nothing_of_the_root_left(feather: &Feather) {
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
    feather.eventually("no process or mount of the root is left", || {
        let traces = support::HostTraces::of(&feather.root, None);
        traces.processes.is_empty() && traces.mounts.is_empty()
    });
    for folder in ["vms", "network-leases"] {
        let left: Vec<_> = std::fs::read_dir(feather.root.join(folder))
            .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in {folder}: {left:?}");
    }
}

#[test]
fn a_state_root_made_while_a_vm_waits_in_the_pool_is_hidden_in_it() {
    let feather = Feather::new("pool-hide");
    assert_eq!(ran(run_rm(&feather, 1, &["true"])).code, 0);
    await_pool(&feather, 1);
    // Another root, new to the host's registry: its first command records it and hides it in
    // every running VM, the one made ahead included.
    let other = Feather::new("pool-hide-other");
    other.ok(&["ls"]);
    let dir = other.root.display().to_string();
    assert!(std::fs::read_dir(&other.root).unwrap().count() > 0);
    let seen = ran(run_rm(
        &feather,
        1,
        &["sh", "-c", &format!("ls -A {dir} | wc -l")],
    ));
    assert!(seen.claimed, "the run claimed no VM made ahead");
    assert_eq!(
        seen.stdout.trim(),
        "0",
        "the new root is seen in the claimed VM"
    );
}

#[test]
fn a_run_with_a_terminal_gets_one_of_the_claimed_vm_s_own() {
    let feather = Feather::new("pool-tty");
    assert_eq!(ran(run_rm(&feather, 1, &["true"])).code, 0);
    await_pool(&feather, 1);
    let mut command = feather.command();
    command
        .env("FEATHER_POOL", "1")
        .env("FEATHER_TRACE", "phases")
        .args(["run", "--rm", "-t", "--", "sh", "-c"])
        .arg("readlink /proc/self/fd/0; test -t 1 && echo is-a-tty; hostname; exit 3");
    let seen = ran(command);
    assert!(seen.claimed, "the run claimed no VM made ahead");
    assert_eq!(seen.code, 3);
    assert_eq!(
        seen.stdout.replace('\r', ""),
        format!("/dev/pts/0\nis-a-tty\nrun-{}\n", seen.pid)
    );
    feather.eventually("the claimed VM is gone", || {
        feather.ok(&["ls", "--json"]).trim() == "[]"
    });
}

#[test]
fn a_claimed_vm_ends_when_its_run_is_killed() {
    let feather = Feather::new("pool-killed-run");
    assert_eq!(ran(run_rm(&feather, 1, &["true"])).code, 0);
    await_pool(&feather, 1);
    let mut child = run_rm(&feather, 1, &["sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let name = format!("run-{}", child.id());
    feather.eventually("the run claimed a VM", || {
        feather.ok(&["ls"]).contains(&name)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // The keeper sees the run's end of the claim close: the VM ends, and nothing of it stays.
    feather.eventually("the claimed VM is gone", || {
        feather.ok(&["ls", "--json"]).trim() == "[]" && !feather.vm_dir(&name).exists()
    });
    feather.ok(&["pool", "--drain"]);
    assert_nothing_of_the_root_left(&feather);
}

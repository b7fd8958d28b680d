//! Per-unit cgroups below the VM's: a unit's processes are what the kernel puts in its group,
//! so states are true (a forking daemon whose PID file is in a chroot is running with the right
//! main pid; one that died is not), a daemon that `setsid`s away is stopped with its unit,
//! `KillMode=` is honoured exactly, and `MemoryMax=` kills only its own unit.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::services::{assert_running, service, services, vm, write_unit};
use crate::support::Feather;

/// Waits up to `patience` for `unit` to satisfy `done`; returns its last entry.
fn wait_for(
    feather: &Feather,
    vm: &str,
    unit: &str,
    patience: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let s = service(&services(feather, vm), unit).clone();
        if done(&s) || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pids of processes in the VM whose command line is exactly `cmdline`.
fn pids_of(feather: &Feather, vm: &str, cmdline: &str) -> Vec<String> {
    feather
        .sh(vm, &format!("pgrep -fx '{cmdline}' || true"))
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn services_a_forking_daemon_with_its_pid_file_in_a_chroot_is_running_with_its_main_pid() {
    let feather = Feather::new("svc-cg-postfix");
    vm(&feather, "mx");
    // postfix@-.service: Type=forking, GuessMainPID=no, no PIDFile= (master's is in its chroot,
    // /var/spool/postfix/pid/master.pid): the main process is the one of its group whose parent
    // is outside it.
    feather.ok(&["service", "start", "mx", "postfix@-"]);
    let s = assert_running(&feather, "mx", "postfix@-.service");
    let master = feather.sh("mx", "cat /var/spool/postfix/pid/master.pid");
    assert_eq!(s["main_pid"].to_string(), master.trim(), "{s}");
    let group = feather.sh(
        "mx",
        "cat '/sys/fs/cgroup/pids/postfix@-.service/cgroup.procs'",
    );
    assert!(
        group.lines().any(|p| p == master.trim()),
        "master is not in its unit's group: {group}"
    );
    assert!(s["memory_bytes"].as_u64().is_some_and(|b| b > 0), "{s}");
    assert!(s["cpu_nsec"].as_u64().is_some(), "{s}");
    // A daemon that died is never shown running.
    feather.sh("mx", &format!("kill -9 {}", master.trim()));
    let s = wait_for(
        &feather,
        "mx",
        "postfix@-.service",
        Duration::from_secs(30),
        |s| s["state"] != "active",
    );
    assert_ne!(s["state"], "active", "a killed postfix shown as {s}");
    assert!(s["main_pid"].is_null(), "{s}");
}

#[test]
fn services_a_daemon_that_setsids_away_is_stopped_with_its_unit() {
    let feather = Feather::new("svc-cg-setsid");
    vm(&feather, "box");
    write_unit(
        &feather,
        "box",
        "escaper.service",
        "[Service]\nExecStart=/bin/sh -c 'setsid -f sleep 4242; exec sleep 4343'\n",
    );
    feather.ok(&["service", "start", "box", "escaper"]);
    let escaped = wait_until_some(|| pids_of(&feather, "box", "sleep 4242"));
    let group = feather.sh(
        "box",
        "cat /sys/fs/cgroup/pids/escaper.service/cgroup.procs",
    );
    assert!(
        group.lines().any(|p| p == escaped[0]),
        "the escaped daemon {escaped:?} is not in its unit's group: {group}"
    );
    feather.ok(&["service", "stop", "box", "escaper"]);
    assert_eq!(pids_of(&feather, "box", "sleep 4242"), Vec::<String>::new());
    assert_eq!(pids_of(&feather, "box", "sleep 4343"), Vec::<String>::new());
}

fn wait_until_some(probe: impl Fn() -> Vec<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = probe();
        if !found.is_empty() || Instant::now() >= deadline {
            assert!(!found.is_empty(), "the process never appeared");
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn services_kill_mode_is_honoured_exactly() {
    let feather = Feather::new("svc-cg-killmode");
    vm(&feather, "km");
    // Each unit's main process (sleep 5N01) leaves a child (sleep 5N02) in its group, in a
    // session of its own.
    let modes = ["control-group", "mixed", "process", "none"];
    for (i, mode) in modes.iter().enumerate() {
        write_unit(
            &feather,
            "km",
            &format!("km-{mode}.service"),
            &format!(
                "[Service]\nKillMode={mode}\nTimeoutStopSec=30\n\
                 ExecStart=/bin/sh -c 'setsid -f sleep 5{i}02; exec sleep 5{i}01'\n"
            ),
        );
    }
    let units: Vec<String> = modes.iter().map(|m| format!("km-{m}")).collect();
    let mut args = vec!["service", "start", "km"];
    args.extend(units.iter().map(String::as_str));
    feather.ok(&args);
    for i in 0..modes.len() {
        wait_until_some(|| pids_of(&feather, "km", &format!("sleep 5{i}02")));
    }
    let started = Instant::now();
    let mut args = vec!["service", "stop", "km"];
    args.extend(units.iter().map(String::as_str));
    feather.ok(&args);
    // Short of the units' TimeoutStopSec=30, which a stop that waited for the rest of the group
    // would wait out; not a measure of speed.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "mixed waited for the rest of its group instead of killing it"
    );
    let left =
        |i: usize, which: u8| !pids_of(&feather, "km", &format!("sleep 5{i}0{which}")).is_empty();
    // control-group: everything; mixed: main by SIGTERM, the rest by SIGKILL after it.
    assert!(!left(0, 1) && !left(0, 2), "control-group left processes");
    assert!(!left(1, 1) && !left(1, 2), "mixed left processes");
    // process: only the main process; none: nothing at all.
    assert!(
        !left(2, 1) && left(2, 2),
        "process: main gone, the child stays"
    );
    assert!(left(3, 1) && left(3, 2), "none: nothing is killed");
    for s in services(&feather, "km") {
        assert_eq!(s["state"], "inactive", "{s}");
    }
}

#[test]
fn services_a_units_memory_limit_kills_only_that_unit() {
    let feather = Feather::new("svc-cg-memory");
    vm(&feather, "mem");
    write_unit(
        &feather,
        "mem",
        "hog.service",
        "[Service]\nMemoryMax=32M\nTasksMax=16\nCPUQuota=50%\nCPUWeight=50\n\
         ExecStart=/usr/bin/python3 -c 'import time; b = bytes(256 << 20) + b\"x\"; time.sleep(600)'\n",
    );
    write_unit(
        &feather,
        "mem",
        "calm.service",
        "[Service]\nMemoryMax=64M\nExecStart=/bin/sleep 600\n",
    );
    feather.ok(&["service", "start", "mem", "calm", "hog"]);
    let limits = feather.sh(
        "mem",
        "cat /sys/fs/cgroup/memory/hog.service/memory.limit_in_bytes \
             /sys/fs/cgroup/pids/hog.service/pids.max \
             /sys/fs/cgroup/cpu/hog.service/cpu.cfs_quota_us \
             /sys/fs/cgroup/cpu/hog.service/cpu.shares",
    );
    assert_eq!(
        limits.split_whitespace().collect::<Vec<_>>(),
        [&(32u64 << 20).to_string(), "16", "50000", "512"]
    );
    let hog = wait_for(
        &feather,
        "mem",
        "hog.service",
        Duration::from_secs(20),
        |s| s["state"] == "failed",
    );
    assert_eq!(hog["state"], "failed", "{hog}");
    assert!(
        hog["result"]
            .as_str()
            .is_some_and(|r| r.contains("signal 9") || r.contains("SIGKILL")),
        "{hog}"
    );
    let calm = assert_running(&feather, "mem", "calm.service");
    assert!(calm["memory_bytes"].as_u64().is_some(), "{calm}");
    assert_eq!(feather.status("mem"), "running");
    let status = feather.ok(&["service", "status", "mem", "calm"]);
    assert!(
        status.contains("  memory: ") && status.contains("     cpu: "),
        "{status}"
    );
}

/// The processes of each group below the VM's `services/` folder (`/sys/fs/cgroup/pids` in
/// the VM) and its `pids.max`, one line per unit: `UNIT MAX PID…`, pids sorted.
fn unit_groups(feather: &Feather, vm: &str, units: &[&str]) -> Vec<String> {
    units
        .iter()
        .map(|unit| {
            let dir = format!("/sys/fs/cgroup/pids/{unit}");
            let text = feather.sh(
                vm,
                &format!("cat {dir}/pids.max; sort -n {dir}/cgroup.procs | tr '\\n' ' '"),
            );
            format!(
                "{unit} {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect()
}

/// After a checkpoint and restore, each unit's processes are in its own group again — the
/// daemon the manager started and those it forked, also one that `setsid`ed away, which the
/// manager never knew by pid — with its limits read back from the group's files, and `service
/// stop` (`KillMode=control-group`, the default) ends all of them. CRIU restores the processes
/// in the VM's group: without the keeper putting them back, the units' groups were gone after
/// a restore (their `services/` folder new and empty) and a stop left the escaped daemon
/// running.
#[test]
fn services_a_restored_vms_units_are_back_in_their_groups_with_their_limits() {
    let feather = Feather::new("svc-cg-restore");
    feather.require_criu();
    feather.ok(&["create", "rs", "--net", "none"]);
    feather.ok(&["start", "rs"]);
    // Debian's nginx unit (a master and its workers), with limits of its own from a drop-in.
    feather.sh(
        "rs",
        "mkdir -p /etc/systemd/system/nginx.service.d && \
         printf '[Service]\\nTasksMax=77\\nMemoryMax=200M\\n' \
         > /etc/systemd/system/nginx.service.d/limits.conf",
    );
    write_unit(
        &feather,
        "rs",
        "escaper.service",
        "[Service]\nTasksMax=33\nCPUQuota=50%\n\
         ExecStart=/bin/sh -c 'setsid -f sleep 4242; exec sleep 4343'\n",
    );
    feather.ok(&["service", "start", "rs", "nginx", "escaper"]);
    wait_until_some(|| pids_of(&feather, "rs", "sleep 4242"));
    let units = ["nginx.service", "escaper.service"];
    let before = unit_groups(&feather, "rs", &units);
    assert!(before[0].starts_with("nginx.service 77 "), "{before:?}");
    assert!(before[1].starts_with("escaper.service 33 "), "{before:?}");
    // Every nginx process (master and workers) is in its unit's group.
    let nginx = pids_of(&feather, "rs", "nginx: .*");
    assert!(nginx.len() >= 2, "{nginx:?}");
    for pid in &nginx {
        assert!(
            before[0].split(' ').any(|p| p == pid),
            "{pid} not in {before:?}"
        );
    }
    // A group the VM's root named with a byte that is not UTF-8 (which `layers.json` cannot
    // hold) does not fail the dump: it is left out.
    feather.sh("rs", "mkdir \"/sys/fs/cgroup/pids/$(printf '\\377odd')\"");

    feather.ok(&["checkpoint", "rs"]);
    feather.ok(&["restore", "rs"]);

    assert_eq!(unit_groups(&feather, "rs", &units), before);
    let limits = feather.sh(
        "rs",
        "cat /sys/fs/cgroup/memory/nginx.service/memory.limit_in_bytes \
             /sys/fs/cgroup/cpu/escaper.service/cpu.cfs_quota_us",
    );
    assert_eq!(
        limits.split_whitespace().collect::<Vec<_>>(),
        [(200u64 << 20).to_string().as_str(), "50000"]
    );
    let nginx_unit = assert_running(&feather, "rs", "nginx.service");
    assert!(
        nginx_unit["memory_bytes"].as_u64().is_some(),
        "{nginx_unit}"
    );
    assert_running(&feather, "rs", "escaper.service");

    feather.ok(&["service", "stop", "rs", "nginx", "escaper"]);
    assert_eq!(pids_of(&feather, "rs", "nginx: .*"), Vec::<String>::new());
    assert_eq!(pids_of(&feather, "rs", "sleep 4242"), Vec::<String>::new());
    assert_eq!(pids_of(&feather, "rs", "sleep 4343"), Vec::<String>::new());
}

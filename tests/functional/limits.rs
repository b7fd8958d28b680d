use std::fs;

use crate::support::{Feather, ScratchBase};

#[test]
fn memory_limit_kills_what_exceeds_it() {
    let feather = Feather::new("limit-memory");
    let base = ScratchBase::new("limit-memory");
    feather.ok(&[
        "create",
        "small",
        "--base",
        base.as_str(),
        "--memory",
        "32M",
    ]);
    feather.ok(&["start", "small"]);
    // A shell variable of 64 MiB cannot fit in 32 MiB: the kernel's OOM killer ends it.
    let outcome = feather.run(&[
        "exec",
        "small",
        "--",
        "sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}",
    ]);
    assert!(
        !outcome.stdout.contains("survived"),
        "the allocation succeeded: {}",
        outcome.stdout
    );
    assert_eq!(outcome.code, 137, "killed by SIGKILL: {outcome:?}");
    // The VM itself is still up: its programs, not its init, are the OOM killer's choice.
    assert_eq!(feather.sh("small", "echo alive"), "alive\n");
    assert_eq!(
        feather.sh(
            "small",
            "cat /proc/self/oom_score_adj /proc/1/oom_score_adj"
        ),
        "500\n0\n"
    );
}

#[test]
fn pids_limit_refuses_fork() {
    let feather = Feather::new("limit-pids");
    let base = ScratchBase::new("limit-pids");
    feather.start_over("few", &base, &["--pids", "8"]);
    let outcome = feather.run(&[
        "exec",
        "few",
        "--",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done; wait",
    ]);
    assert!(
        outcome.stderr.contains("can't fork")
            || outcome.stderr.contains("Resource temporarily unavailable"),
        "{outcome:?}"
    );
}

#[test]
fn cpu_limit_throttles() {
    let feather = Feather::new("limit-cpu");
    let base = ScratchBase::new("limit-cpu");
    feather.start_over("slow", &base, &["--cpus", "0.1"]);
    let dirs = feather.cgroup_dirs("slow");
    let cpu_dir = dirs
        .iter()
        .find(|d| d.join("cpu.stat").exists())
        .expect("a cpu controller");
    let quota = fs::read_to_string(cpu_dir.join("cpu.cfs_quota_us"))
        .or_else(|_| fs::read_to_string(cpu_dir.join("cpu.max")))
        .unwrap();
    assert!(quota.starts_with("10000"), "quota for 0.1 cpu: {quota}");
    feather.sh("slow", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done");
    let stat = fs::read_to_string(cpu_dir.join("cpu.stat")).unwrap();
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(throttled > 0, "the kernel throttled the VM: {stat}");
}

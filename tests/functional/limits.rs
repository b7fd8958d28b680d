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

/// The mount point of the host's v1 `memory` hierarchy, if it holds memory alone.
fn memory_hierarchy_alone() -> Option<std::path::PathBuf> {
    const OTHERS: [&str; 14] = [
        "cpuset",
        "cpu",
        "cpuacct",
        "io",
        "blkio",
        "devices",
        "freezer",
        "net_cls",
        "perf_event",
        "net_prio",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    ];
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let after: Vec<&str> = fields.iter().skip_while(|f| **f != "-").copied().collect();
        let (fs_type, options) = (after.get(1)?, after.get(3)?);
        let controllers: Vec<&str> = options.split(',').collect();
        (*fs_type == "cgroup"
            && fields[3] == "/"
            && controllers.contains(&"memory")
            && !controllers.iter().any(|c| OTHERS.contains(c)))
        .then(|| std::path::PathBuf::from(fields[4]))
    })
}

/// A VM the host gave no memory limit has one memory cgroup where the v1 `memory` hierarchy
/// holds memory alone: its own group is its services' folder (bound at /sys/fs/cgroup/memory
/// in the VM); a second one, `services/`, cost 0.57 MiB of kernel memory a VM on this host
/// (the kernel's shrinker bitmap of every memory group, docs/design.md). A VM given
/// `--memory` still gets `services/` below the group that holds its limit, which it cannot
/// reach.
#[test]
fn an_unlimited_vm_has_one_memory_group_and_a_limited_one_keeps_its_limit_out_of_reach() {
    let Some(memory) = memory_hierarchy_alone() else {
        eprintln!("skipped: no v1 memory hierarchy of memory alone on this host");
        return;
    };
    let feather = Feather::new("limit-memory-groups");
    let base = ScratchBase::new("limit-memory-groups");
    feather.ok(&["create", "free", "--base", base.as_str()]);
    feather.ok(&["create", "held", "--base", base.as_str(), "--memory", "64M"]);
    feather.ok(&["start", "free"]);
    feather.ok(&["start", "held"]);
    let group = |vm: &str| {
        feather
            .cgroup_dirs(vm)
            .into_iter()
            .find(|dir| dir.starts_with(&memory))
            .expect("a memory group")
    };
    let free = group("free");
    assert!(
        !free.join("services").exists(),
        "a second memory group for the unlimited VM: {}",
        free.display()
    );
    // The VM's folder is its own group: its processes are there, and a unit's group it makes
    // there is below its group on the host.
    let members = feather.sh("free", "wc -l < /sys/fs/cgroup/memory/cgroup.procs");
    assert_ne!(
        members.trim(),
        "0",
        "the VM's processes are not in its folder"
    );
    feather.sh("free", "mkdir /sys/fs/cgroup/memory/probe.service");
    assert!(free.join("probe.service").is_dir());

    let held = group("held");
    assert!(held.join("services").is_dir());
    let members = feather.sh(
        "held",
        "echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes; \
         wc -l < /sys/fs/cgroup/memory/cgroup.procs",
    );
    assert_eq!(members.trim(), "0", "the limited VM sees its own group");
    assert_eq!(
        fs::read_to_string(held.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (64u64 << 20).to_string(),
        "the limited VM changed its limit"
    );
    // The VM's own groups go with it.
    feather.ok(&["stop", "free"]);
    assert!(!free.exists(), "{} stays after the stop", free.display());
}

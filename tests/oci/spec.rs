//! The runtime specification's lifecycle (runtime.md) and config fields (config.md,
//! config-linux.md), with feather-oci called directly as an engine calls it.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::{base_config, eventually, Bundle, CgroupParent, Outcome, Runtime, Scratch};

#[test]
fn lifecycle_states_and_errors_per_state() {
    let scratch = Scratch::new("lifecycle");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "100"]));
    let output = scratch.path("output");

    let outcome = runtime.run(&["start", "nobody"]);
    assert_ne!(outcome.code, 0, "start of a missing container must fail");
    assert!(
        outcome.stderr.contains("does not exist") && outcome.stderr.contains("list"),
        "names what is wrong and where to look: {outcome:?}"
    );

    let outcome = runtime.create("c1", &bundle, &output);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let state = runtime.state("c1");
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], "c1");
    assert!(state["pid"].as_i64().unwrap() > 0);
    assert_eq!(state["bundle"], bundle.dir.to_str().unwrap());
    let pid = state["pid"].as_i64().unwrap();
    assert!(
        fs::metadata(format!("/proc/{pid}")).is_ok(),
        "the init exists while created"
    );

    let outcome = runtime.create("c1", &bundle, &output);
    assert_ne!(
        outcome.code, 0,
        "a second create with the same id must fail"
    );
    assert!(outcome.stderr.contains("already exists"), "{outcome:?}");

    assert_eq!(runtime.run(&["start", "c1"]).code, 0);
    assert_eq!(runtime.status("c1"), "running");
    assert_eq!(
        runtime.state("c1")["pid"].as_i64().unwrap(),
        pid,
        "the program keeps the init's pid"
    );

    let outcome = runtime.run(&["start", "c1"]);
    assert_ne!(outcome.code, 0, "start of a running container must fail");
    assert!(
        outcome.stderr.contains("only a created container"),
        "{outcome:?}"
    );
    let outcome = runtime.run(&["delete", "c1"]);
    assert_ne!(
        outcome.code, 0,
        "delete of a running container without --force must fail"
    );
    assert!(outcome.stderr.contains("not stopped"), "{outcome:?}");

    assert_eq!(runtime.run(&["pause", "c1"]).code, 0);
    assert_eq!(runtime.status("c1"), "paused");
    assert_ne!(
        runtime.run(&["pause", "c1"]).code,
        0,
        "pause of a paused container"
    );
    let outcome = runtime.run(&["exec", "c1", "true"]);
    assert_ne!(outcome.code, 0, "exec in a paused container must fail");
    assert!(outcome.stderr.contains("resume it first"), "{outcome:?}");
    assert_eq!(runtime.run(&["resume", "c1"]).code, 0);
    assert_eq!(runtime.status("c1"), "running");

    let ps = runtime.run(&["ps", "--format", "json", "c1"]);
    let pids: Vec<i64> = serde_json::from_str(&ps.stdout).unwrap();
    assert_eq!(pids, [pid], "{ps:?}");

    assert_eq!(runtime.run(&["kill", "c1", "KILL"]).code, 0);
    runtime.wait_stopped("c1");
    let outcome = runtime.run(&["kill", "c1", "9"]);
    assert_ne!(outcome.code, 0, "kill of a stopped container must fail");
    // Engines take "container not running" for a process already gone (containerd's shim).
    assert!(
        outcome.stderr.contains("container not running") && outcome.stderr.contains("delete it"),
        "{outcome:?}"
    );
    let outcome = runtime.run(&["exec", "c1", "true"]);
    assert_ne!(outcome.code, 0, "exec in a stopped container must fail");
    assert!(
        outcome.stderr.contains("it is stopped")
            && outcome
                .stderr
                .contains("needs a created or running container"),
        "{outcome:?}"
    );
    assert_ne!(
        runtime.run(&["start", "c1"]).code,
        0,
        "start of a stopped container"
    );

    let listed = runtime.run(&["list", "--format", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed[0]["id"], "c1");

    assert_eq!(runtime.run(&["delete", "c1"]).code, 0);
    assert_ne!(runtime.run(&["state", "c1"]).code, 0, "state after delete");
    assert_eq!(
        runtime.run(&["delete", "--force", "c1"]).code,
        0,
        "delete --force of a missing container succeeds, as runc"
    );
}

#[test]
fn delete_of_a_created_container_and_force_delete_of_a_running_one() {
    let scratch = Scratch::new("delete");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "100"]));
    let output = scratch.path("output");
    assert_eq!(runtime.create("created", &bundle, &output).code, 0);
    let pid = runtime.state("created")["pid"].as_i64().unwrap();
    assert_eq!(runtime.run(&["delete", "created"]).code, 0);
    assert!(
        eventually(Duration::from_secs(30), || !is_alive(pid)),
        "delete of a created container ends its init"
    );
    assert_eq!(runtime.create("running", &bundle, &output).code, 0);
    assert_eq!(runtime.run(&["start", "running"]).code, 0);
    let pid = runtime.state("running")["pid"].as_i64().unwrap();
    assert_eq!(runtime.run(&["delete", "--force", "running"]).code, 0);
    assert!(eventually(Duration::from_secs(30), || !is_alive(pid)));
    assert!(!runtime.root.join("running").exists());
}

/// `kill --all` reaches every process of the container's group while they keep forking and
/// ending: chains whose every link forks the next and exits, in the host's pid namespace (a
/// pid namespace's init would take them all with it when killed). SIGTERM goes to the group
/// frozen, through pidfds: listed unfrozen, a link forked between the listing and the signals
/// would live on. SIGKILL goes through `cgroup.kill` where the kernel has it. Either way
/// nothing of the container's is left. A paused container stays paused until resumed.
#[test]
fn kill_all_leaves_no_process_of_a_group_that_keeps_forking() {
    let scratch = Scratch::new("kill-all");
    let runtime = Runtime::new(&scratch);
    for signal in ["TERM", "KILL"] {
        let id = format!("forking-{}", signal.to_ascii_lowercase());
        let mut config = base_config(&[
            "sh",
            "-c",
            "for link in 1 2 3 4 5 6 7 8; do sh /chain & done; exec sleep 100",
        ]);
        config["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|ns| ns["type"] != "pid");
        let bundle = Bundle::new(&scratch, &format!("bundle-{id}"), &config);
        fs::write(bundle.dir.join("rootfs/chain"), "sh /chain &\n").unwrap();
        runtime.run_detached(&id, &bundle);
        let members = || -> Vec<i64> {
            let ps = runtime.run(&["ps", "--format", "json", &id]);
            serde_json::from_str(&ps.stdout).unwrap_or_default()
        };
        assert!(
            eventually(Duration::from_secs(10), || members().len() > 4),
            "the chains run: {:?}",
            members()
        );
        let killed = runtime.run(&["kill", "--all", &id, signal]);
        assert_eq!(killed.code, 0, "{killed:?}");
        assert!(
            eventually(Duration::from_secs(30), || members().is_empty()),
            "{signal}: left in the container's group: {:?}",
            members()
        );
        assert_eq!(runtime.run(&["delete", &id]).code, 0);
    }

    // A paused container stays paused: its processes take the signal when resumed.
    let mut config = base_config(&["sleep", "100"]);
    config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|ns| ns["type"] != "pid");
    let bundle = Bundle::new(&scratch, "bundle-paused", &config);
    runtime.run_detached("paused", &bundle);
    assert_eq!(runtime.run(&["pause", "paused"]).code, 0);
    assert_eq!(runtime.run(&["kill", "--all", "paused", "TERM"]).code, 0);
    assert_eq!(runtime.status("paused"), "paused");
    assert_eq!(runtime.run(&["resume", "paused"]).code, 0);
    runtime.wait_stopped("paused");
}

fn is_alive(pid: i64) -> bool {
    feather_testkit::stat::runs(pid)
}

/// Runs `config` to its end and returns what the program printed.
pub(crate) fn run_to_end(
    runtime: &Runtime,
    scratch: &Scratch,
    id: &str,
    config: &serde_json::Value,
) -> String {
    let bundle = Bundle::new(scratch, &format!("bundle-{id}"), config);
    let output = scratch.path(&format!("output-{id}"));
    let outcome = runtime.create(id, &bundle, &output);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(runtime.run(&["start", id]).code, 0);
    runtime.wait_stopped(id);
    assert_eq!(runtime.run(&["delete", id]).code, 0);
    fs::read_to_string(output).unwrap()
}

#[test]
fn process_fields_are_honoured() {
    let scratch = Scratch::new("process");
    let runtime = Runtime::new(&scratch);
    let script = "id; pwd; echo HOST=$(hostname); echo GREETING=$GREETING; ulimit -n; \
                  grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/$$/status; \
                  touch /probe 2>/dev/null && echo ROOT=writable || echo ROOT=readonly; \
                  grep -c ' /proc/keys ' /proc/self/mountinfo";
    let mut config = base_config(&["sh", "-c", script]);
    config["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [4242]});
    config["process"]["cwd"] = json!("/tmp");
    config["process"]["env"] = json!(["PATH=/bin", "GREETING=hello"]);
    config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
    config["process"]["capabilities"] = json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN"],
        "permitted": ["CAP_CHOWN"], "inheritable": ["CAP_CHOWN"], "ambient": ["CAP_CHOWN"]
    });
    config["hostname"] = json!("feathered");
    config["root"]["readonly"] = json!(true);
    let output = run_to_end(&runtime, &scratch, "fields", &config);
    assert!(
        output.contains("uid=1000(alice) gid=1000(alice) groups=4242"),
        "{output}"
    );
    assert!(output.contains("/tmp\n"), "{output}");
    assert!(output.contains("HOST=feathered"), "{output}");
    assert!(output.contains("GREETING=hello"), "{output}");
    assert!(output.contains("256\n"), "{output}");
    // CAP_CHOWN is bit 0, CAP_KILL bit 5; a non-root program keeps only its ambient set.
    assert!(output.contains("CapEff:\t0000000000000001"), "{output}");
    assert!(output.contains("CapBnd:\t0000000000000021"), "{output}");
    assert!(output.contains("NoNewPrivs:\t1"), "{output}");
    assert!(output.contains("ROOT=readonly"), "{output}");
    assert!(
        output.trim_end().ends_with("\n1"),
        "/proc/keys is masked: {output}"
    );
}

/// An ambient capability that is not inheritable cannot be granted: the container starts
/// without it, as under runc (Debian's runc 1.1.5 `runc spec` writes such a set), and with the
/// ambient capabilities that are inheritable.
#[test]
fn ambient_capabilities_that_are_not_inheritable_are_left_out_and_the_rest_raised() {
    let scratch = Scratch::new("ambient");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&["sh", "-c", "grep -E 'CapAmb|CapEff' /proc/self/status"]);
    config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    config["process"]["capabilities"] = json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN", "CAP_KILL"],
        "permitted": ["CAP_CHOWN", "CAP_KILL"], "inheritable": ["CAP_CHOWN"],
        "ambient": ["CAP_CHOWN", "CAP_KILL"]
    });
    let output = run_to_end(&runtime, &scratch, "ambient", &config);
    // CAP_CHOWN is bit 0; CAP_KILL (bit 5) was not inheritable, so not ambient, and a non-root
    // program keeps only its ambient set.
    assert!(output.contains("CapAmb:\t0000000000000001"), "{output}");
    assert!(output.contains("CapEff:\t0000000000000001"), "{output}");
}

#[test]
fn absent_capabilities_mean_none_and_seccomp_profile_is_applied() {
    let scratch = Scratch::new("seccomp");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&[
        "sh",
        "-c",
        "grep -E 'CapEff|Seccomp:' /proc/self/status; mkdir /tmp/x && echo MKDIR=ok || echo MKDIR=denied",
    ]);
    config["process"]
        .as_object_mut()
        .unwrap()
        .remove("capabilities");
    config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["not_a_call_here"], "action": "SCMP_ACT_ERRNO"}
        ]
    });
    let output = run_to_end(&runtime, &scratch, "seccomp", &config);
    assert!(output.contains("CapEff:\t0000000000000000"), "{output}");
    assert!(output.contains("Seccomp:\t2"), "{output}");
    assert!(output.contains("MKDIR=denied"), "{output}");
}

#[test]
fn resources_and_sysctl_reach_the_container() {
    let scratch = Scratch::new("resources");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes \
         /sys/fs/cgroup/pids/pids.max /proc/sys/net/ipv4/ip_unprivileged_port_start",
    ]);
    config["linux"]["resources"] = json!({
        "memory": {"limit": 67108864, "swap": 134217728},
        "pids": {"limit": 64},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000}
    });
    config["linux"]["sysctl"] = json!({"net.ipv4.ip_unprivileged_port_start": "81"});
    let parent = CgroupParent::new();
    let group = parent.group("resources");
    config["linux"]["cgroupsPath"] = json!(format!("/{group}"));
    let output = run_to_end(&runtime, &scratch, "resources", &config);
    assert_eq!(
        output.lines().collect::<Vec<_>>(),
        ["67108864", "134217728", "64", "81"],
        "{output}"
    );
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory")
            .join(&group)
            .exists(),
        "delete removes the cgroup"
    );
}

/// Puts the host's `kernel.core_pattern` back if a test changed it (only a runtime without the
/// sysctl check would).
struct CorePattern(String);

impl Drop for CorePattern {
    fn drop(&mut self) {
        let path = "/proc/sys/kernel/core_pattern";
        if fs::read_to_string(path).unwrap_or_default() != self.0 {
            let _ = fs::write(path, &self.0);
        }
    }
}

/// `linux.sysctl` sets only knobs of a namespace the container has of its own, as runc, crun
/// and youki: any other write changes the host's knob, as host root without a user namespace
/// (`kernel.core_pattern` runs a program as host root at the next crash). Refused by name
/// before anything is made: `kernel.core_pattern` (the host's value unchanged), `net.*` without
/// a network namespace or in the host's joined by path, `kernel.shm*` in the host's ipc
/// namespace; applied: `kernel.shmmax` in an ipc namespace of the container's.
#[test]
fn sysctls_outside_the_containers_own_namespaces_are_refused_by_name() {
    let scratch = Scratch::new("sysctl-scope");
    let runtime = Runtime::new(&scratch);
    let host = |knob: &str| fs::read_to_string(format!("/proc/sys/{knob}")).unwrap();
    let core_pattern = CorePattern(host("kernel/core_pattern"));
    let refused = |id: &str, sysctl: serde_json::Value, namespaces: serde_json::Value| {
        let mut config = base_config(&["true"]);
        config["linux"]["sysctl"] = sysctl;
        config["linux"]["namespaces"] = namespaces;
        let bundle = Bundle::new(&scratch, &format!("bundle-{id}"), &config);
        let outcome = runtime.create(id, &bundle, &scratch.path(&format!("output-{id}")));
        assert_ne!(outcome.code, 0, "{id}: {outcome:?}");
        let listed = runtime.run(&["list", "-q"]);
        assert_eq!(listed.stdout.trim(), "", "nothing is left: {listed:?}");
        outcome.stderr
    };
    let all = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]);
    let error = refused(
        "core-pattern",
        json!({"kernel.core_pattern": "feather-test-core-%p"}),
        all.clone(),
    );
    assert!(
        error.contains("linux.sysctl[kernel.core_pattern]"),
        "{error}"
    );
    assert_eq!(host("kernel/core_pattern"), core_pattern.0);

    // The host's own value: a runtime without the check changes nothing while it fails this.
    let port_start = host("net/ipv4/ip_unprivileged_port_start")
        .trim()
        .to_owned();
    let net = json!({ "net.ipv4.ip_unprivileged_port_start": port_start });
    for (id, namespaces) in [
        (
            "no-netns",
            json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]),
        ),
        (
            "host-netns",
            json!([{"type": "pid"}, {"type": "uts"}, {"type": "mount"}, {"type": "network", "path": "/proc/self/ns/net"}]),
        ),
    ] {
        let error = refused(id, net.clone(), namespaces);
        assert!(
            error.contains("linux.sysctl[net.ipv4.ip_unprivileged_port_start]")
                && error.contains("network namespace"),
            "{id}: {error}"
        );
    }
    let shmmax = host("kernel/shmmax").trim().to_owned();
    let error = refused(
        "host-ipc",
        json!({ "kernel.shmmax": shmmax }),
        json!([{"type": "pid"}, {"type": "uts"}, {"type": "mount"}, {"type": "ipc", "path": "/proc/self/ns/ipc"}]),
    );
    assert!(
        error.contains("linux.sysctl[kernel.shmmax]") && error.contains("ipc namespace"),
        "{error}"
    );

    let mut config = base_config(&["cat", "/proc/sys/kernel/shmmax"]);
    config["linux"]["sysctl"] = json!({"kernel.shmmax": "123456789"});
    assert_eq!(
        run_to_end(&runtime, &scratch, "own-ipc", &config),
        "123456789\n"
    );
    assert_eq!(
        host("kernel/shmmax").trim(),
        shmmax,
        "the host's is its own"
    );
}

/// A network namespace the test made and bound at a path of its own, as docker's
/// `/var/run/docker/netns/X` and CNI's are: joined by that path, it is the container's own, so
/// `net.*` sysctls are applied in it (review fixes24 L5: were the runtime's own namespace
/// looked up under a wrong name, every namespace joined by a path would count as the host's and
/// these be refused). One names an interface with a dot, `br0.5`, writing the dot as `/`
/// (`net.ipv4.conf.br0/5.forwarding`, as the kubelet and sysctl(8) write it; runc and crun
/// swap `.` and `/`): it was refused as "not a sysctl name" (L4). Both read back from inside;
/// the host's untouched. A bridge, not a dummy: this kernel has no dummy driver.
#[test]
fn net_sysctls_apply_in_a_network_namespace_joined_by_a_path_of_the_tests() {
    let scratch = Scratch::new("sysctl-netns");
    let runtime = Runtime::new(&scratch);
    let host = |knob: &str| fs::read_to_string(format!("/proc/sys/{knob}")).unwrap();
    let port_start = host("net/ipv4/ip_unprivileged_port_start");
    // `unshare --net=FILE` binds the new namespace at FILE; the scratch's drop unmounts it,
    // which ends the namespace and its bridge.
    let netns = scratch.path("netns");
    fs::write(&netns, "").unwrap();
    let made = crate::support::run(
        std::process::Command::new("unshare")
            .arg(format!("--net={}", netns.display()))
            .args([
                "sh",
                "-c",
                "ip link add br0.5 type bridge && cat /proc/sys/net/ipv4/conf/br0.5/forwarding",
            ]),
    );
    assert_eq!(made.code, 0, "{made:?}");
    // The other value than the namespace starts with (new namespaces may copy the host's).
    let forwarding = if made.stdout.trim() == "1" { "0" } else { "1" };
    let mut config = base_config(&[
        "cat",
        "/proc/sys/net/ipv4/conf/br0.5/forwarding",
        "/proc/sys/net/ipv4/ip_unprivileged_port_start",
    ]);
    for namespace in config["linux"]["namespaces"].as_array_mut().unwrap() {
        if namespace["type"] == "network" {
            namespace["path"] = json!(netns);
        }
    }
    config["linux"]["sysctl"] = json!({
        "net.ipv4.conf.br0/5.forwarding": forwarding,
        "net.ipv4.ip_unprivileged_port_start": "99",
    });
    assert_eq!(
        run_to_end(&runtime, &scratch, "joined-netns", &config),
        format!("{forwarding}\n99\n")
    );
    assert_eq!(host("net/ipv4/ip_unprivileged_port_start"), port_start);
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let scratch = Scratch::new("hooks");
    let runtime = Runtime::new(&scratch);
    let log_dir = scratch.path("hooklog");
    fs::create_dir_all(&log_dir).unwrap();
    let host_log = log_dir.join("log");
    let hook = |name: &str, log: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read -r state; echo {name} \"$state\" >> {log}")]});
    let host = host_log.to_str().unwrap();
    let mut config = base_config(&["true"]);
    config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/hooklog", "type": "bind", "source": log_dir, "options": ["rbind", "rw"]
    }));
    config["hooks"] = json!({
        "prestart": [hook("prestart", host)],
        "createRuntime": [hook("createRuntime", host)],
        "createContainer": [hook("createContainer", host)],
        "startContainer": [hook("startContainer", "/hooklog/log")],
        "poststart": [hook("poststart", host)],
        "poststop": [hook("poststop", host)]
    });
    run_to_end(&runtime, &scratch, "hooks", &config);
    let log = fs::read_to_string(&host_log).unwrap();
    let order: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        order,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ],
        "{log}"
    );
    for line in log.lines() {
        let state: serde_json::Value =
            serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        assert_eq!(state["id"], "hooks", "{line}");
        assert!(state["pid"].as_i64().unwrap() > 0, "{line}");
    }
}

#[test]
fn what_cannot_be_honoured_is_refused_by_name_and_leaves_nothing() {
    let scratch = Scratch::new("refuse");
    let runtime = Runtime::new(&scratch);
    let log = scratch.path("log.json");
    let cases = [
        (
            "linux.resources.hugepageLimits[3MB]",
            json!({"linux": {"resources": {"hugepageLimits": [{"pageSize": "3MB", "limit": 1}]}}}),
        ),
        (
            "linux.uidMappings",
            json!({"linux": {"namespaces": [{"type": "user"}, {"type": "mount"}]}}),
        ),
        (
            "org.feather.bogus",
            json!({"annotations": {"org.feather.bogus": "1"}}),
        ),
        (
            "linux.seccomp.syscalls[0].action",
            json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}}}),
        ),
        (
            "linux.resources.blockIO.leafWeight",
            json!({"linux": {"resources": {"blockIO": {"leafWeight": 100}}}}),
        ),
    ];
    for (field, patch) in cases {
        let mut config = base_config(&["true"]);
        merge(&mut config, &patch);
        let bundle = Bundle::new(
            &scratch,
            &format!("bundle-{}", field.replace(['[', ']', '.'], "-")),
            &config,
        );
        let outcome = runtime
            .command()
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", "create", "--bundle"])
            .arg(&bundle.dir)
            .arg("refused")
            .output()
            .unwrap();
        assert_ne!(outcome.status.code(), Some(0), "{field} must be refused");
        let last = fs::read_to_string(&log).unwrap();
        let last: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
        assert_eq!(last["level"], "error");
        assert!(
            last["msg"].as_str().unwrap().contains(field),
            "{field}: {last}"
        );
        assert!(
            !runtime.root.join("refused").exists(),
            "{field}: nothing is left behind"
        );
    }
    let outcome = runtime.run(&["--systemd-cgroup", "list"]);
    assert_ne!(outcome.code, 0);
    assert!(outcome.stderr.contains("--systemd-cgroup"), "{outcome:?}");
    let mut config = base_config(&["true"]);
    config["process"]["args"] = json!(["no-such-program"]);
    let bundle = Bundle::new(&scratch, "bundle-missing-program", &config);
    let outcome = runtime.create("missing", &bundle, &scratch.path("out"));
    assert!(
        outcome.stderr.contains("executable file not found"),
        "{outcome:?}"
    );
    assert!(!runtime.root.join("missing").exists());
}

/// Deep-merges `patch` into `config` (objects merge, everything else replaces).
pub(crate) fn merge(config: &mut serde_json::Value, patch: &serde_json::Value) {
    match (config, patch) {
        (serde_json::Value::Object(config), serde_json::Value::Object(patch)) => {
            for (key, value) in patch {
                merge(
                    config.entry(key.clone()).or_insert(serde_json::Value::Null),
                    value,
                );
            }
        }
        (config, patch) => *config = patch.clone(),
    }
}

#[test]
fn exec_joins_the_container() {
    let scratch = Scratch::new("exec");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "100"]));
    assert_eq!(
        runtime.create("c1", &bundle, &scratch.path("output")).code,
        0
    );
    assert_eq!(runtime.run(&["start", "c1"]).code, 0);
    let outcome = runtime.run(&[
        "exec",
        "--env",
        "EXTRA=1",
        "--cwd",
        "/tmp",
        "c1",
        "sh",
        "-c",
        "echo $(hostname) $EXTRA $(pwd); ps -o pid,comm | grep -c sleep; exit 3",
    ]);
    assert_eq!(outcome.code, 3, "{outcome:?}");
    assert!(outcome.stdout.starts_with("box 1 /tmp\n1\n"), "{outcome:?}");
    let outcome = runtime.run(&["exec", "c1", "no-such-program"]);
    assert_ne!(outcome.code, 0);
    assert!(
        outcome.stderr.contains("executable file not found"),
        "{outcome:?}"
    );
}

#[test]
fn host_base_annotation_gives_a_copy_on_write_view_of_the_host() {
    let scratch = Scratch::new("hostbase");
    let runtime = Runtime::new(&scratch);
    let marker = scratch.path("marker");
    fs::write(&marker, "from the host\n").unwrap();
    let script = format!(
        "cat {m}; echo changed > {m}; cat {m}; test -e /etc/os-release && echo HOST_ETC=yes",
        m = marker.display()
    );
    let mut config = base_config(&["/bin/sh", "-c", &script]);
    config["process"]["env"] = json!(["PATH=/usr/bin:/bin"]);
    config["annotations"] = json!({"org.feather.base": "host"});
    runtime.allow_annotations(&["org.feather.base=host"]);
    let output = run_to_end(&runtime, &scratch, "hostbase", &config);
    assert_eq!(output, "from the host\nchanged\nHOST_ETC=yes\n");
    assert_eq!(
        fs::read_to_string(&marker).unwrap(),
        "from the host\n",
        "the host's file is untouched"
    );
}

#[test]
fn a_symlink_in_the_image_never_points_a_mount_at_the_host() {
    let scratch = Scratch::new("symlink");
    let runtime = Runtime::new(&scratch);
    // The host folder the image's link names, and what the engine binds into the container.
    let host_target = scratch.path("host-target");
    fs::create_dir_all(&host_target).unwrap();
    let shared = scratch.path("shared");
    fs::create_dir_all(&shared).unwrap();
    fs::write(shared.join("file"), "bound\n").unwrap();
    let mut config = base_config(&["cat", "/link/sub/file"]);
    config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/link/sub", "type": "bind", "source": shared, "options": ["rbind", "ro"]
    }));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    std::os::unix::fs::symlink(&host_target, bundle.dir.join("rootfs/link")).unwrap();
    let output = scratch.path("output");
    let outcome = runtime.create("c1", &bundle, &output);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(runtime.run(&["start", "c1"]).code, 0);
    runtime.wait_stopped("c1");
    assert_eq!(
        fs::read_to_string(&output).unwrap(),
        "bound\n",
        "the bind lands where the link leads inside the rootfs"
    );
    assert!(
        !host_target.join("sub").exists(),
        "nothing was made on the host through the image's symlink"
    );
    assert!(bundle
        .dir
        .join("rootfs")
        .join(host_target.strip_prefix("/").unwrap())
        .join("sub")
        .is_dir());
}

#[test]
fn delete_force_cleans_up_after_create_was_killed_mid_way() {
    let scratch = Scratch::new("killed-create");
    let runtime = Runtime::new(&scratch);
    let started = scratch.path("hook-started");
    let mut config = base_config(&["true"]);
    let parent = CgroupParent::new();
    let group = parent.group("killed");
    config["linux"]["cgroupsPath"] = json!(format!("/{group}"));
    config["hooks"] = json!({"createRuntime": [{
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("echo $$ > {}; exec sleep 60", started.display())]
    }]});
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let mut create = runtime
        .command()
        .args(["create", "--bundle"])
        .arg(&bundle.dir)
        .arg("c1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || fs::read_to_string(
        &started
    )
    .is_ok_and(|t| t.ends_with('\n'))));
    let hook: i32 = fs::read_to_string(&started)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The hook outlives the killed runtime (it is the runtime's child, not the container's):
    // the test ends it itself, by pid.
    let _hook = KillOnDrop(hook);
    // The runtime dies mid-create (the engine or the machine killed it).
    create.kill().unwrap();
    create.wait().unwrap();
    assert_eq!(runtime.status("c1"), "creating");
    let outcome = runtime.run(&["delete", "--force", "c1"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        !runtime.root.join("c1").exists(),
        "the container's folder is gone"
    );
    let memory = std::path::Path::new("/sys/fs/cgroup/memory").join(&group);
    assert!(
        eventually(Duration::from_secs(30), || !memory.exists()),
        "its cgroup is gone"
    );
}

/// Kills a process this test started indirectly, by pid, when the test ends.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn output_to_a_reader_that_went_away_ends_quietly() {
    // `feather-oci features | head -1`: the reader closes before the runtime writes.
    let scratch = Scratch::new("reader-gone");
    let runtime = Runtime::new(&scratch);
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let outcome: Outcome = runtime
        .command()
        .arg("features")
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
        .into();
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.stderr, "", "no panic, no message");
}

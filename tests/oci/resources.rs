//! config-linux.md's resources that depend on the host's controllers: cpuset, block I/O
//! throttles and weights, huge pages and `unified`, applied where this host has the
//! controller (here: v1 cpuset and blkio without weights, hugetlb only on the v2 hierarchy of
//! a hybrid host) or refused by the field's name; and `update --resources` for them.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::spec::{merge, run_to_end};
use crate::support::{a_disk, base_config, eventually, Bundle, Runtime, Scratch};

fn v2_offers(controller: &str) -> bool {
    fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .or_else(|_| fs::read_to_string("/sys/fs/cgroup/cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller)
}

fn cgroup_file(controller: &str, group: &str, file: &str) -> String {
    fs::read_to_string(
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(group)
            .join(file),
    )
    .unwrap_or_default()
    .trim()
    .to_owned()
}

#[test]
fn cpuset_throttles_huge_pages_and_unified_reach_the_container() {
    assert!(
        Path::new("/sys/fs/cgroup/cpuset").is_dir() && Path::new("/sys/fs/cgroup/blkio").is_dir(),
        "this test is written for the v1 cpuset and blkio hierarchies of this host"
    );
    let scratch = Scratch::new("controllers");
    let runtime = Runtime::new(&scratch);
    let disk = a_disk();
    let (major, minor) = disk.split_once(':').unwrap();
    let mut config = base_config(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/cpuset/cpuset.cpus /sys/fs/cgroup/cpuset/cpuset.mems \
         /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device \
         /sys/fs/cgroup/blkio/blkio.throttle.write_iops_device",
    ]);
    let last_cpu = std::thread::available_parallelism().unwrap().get() - 1;
    config["linux"]["resources"] = json!({
        "cpu": {"cpus": last_cpu.to_string(), "mems": "0"},
        "blockIO": {
            "weight": 0,
            "throttleReadBpsDevice": [{"major": major.parse::<i64>().unwrap(), "minor": minor.parse::<i64>().unwrap(), "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": major.parse::<i64>().unwrap(), "minor": minor.parse::<i64>().unwrap(), "rate": 100}]
        }
    });
    let output = run_to_end(&runtime, &scratch, "controllers-cpuset", &config);
    assert_eq!(
        output.lines().collect::<Vec<_>>(),
        [
            last_cpu.to_string(),
            "0".to_owned(),
            format!("{disk} 1048576"),
            format!("{disk} 100")
        ],
        "{output}"
    );

    // Huge pages: the hugetlb controller is on the v2 hierarchy of this hybrid host; the
    // limit and a `unified` key of the same controller go there.
    if v2_offers("hugetlb") {
        let parent = crate::support::CgroupParent::new();
        let group = parent.group("huge");
        let mut config = base_config(&["sleep", "100"]);
        merge(
            &mut config,
            &json!({"linux": {
                "cgroupsPath": format!("/{group}"),
                "resources": {
                    "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
                    "unified": {"hugetlb.1GB.max": "0"}
                }
            }}),
        );
        let bundle = Bundle::new(&scratch, "bundle-huge", &config);
        let outcome = runtime.create("controllers-huge", &bundle, &scratch.path("out-huge"));
        assert_eq!(outcome.code, 0, "{outcome:?}");
        assert_eq!(cgroup_file("unified", &group, "hugetlb.2MB.max"), "4194304");
        assert_eq!(cgroup_file("unified", &group, "hugetlb.1GB.max"), "0");

        // update --resources: the same fields on a running container.
        assert_eq!(runtime.run(&["start", "controllers-huge"]).code, 0);
        let update = scratch.path("update.json");
        fs::write(
            &update,
            json!({
                "cpu": {"cpus": "0"},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 8388608}],
                "blockIO": {"throttleReadBpsDevice": [{"major": major.parse::<i64>().unwrap(), "minor": minor.parse::<i64>().unwrap(), "rate": 2097152}]}
            })
            .to_string(),
        )
        .unwrap();
        let outcome = runtime.run(&[
            "update",
            "--resources",
            update.to_str().unwrap(),
            "controllers-huge",
        ]);
        assert_eq!(outcome.code, 0, "{outcome:?}");
        assert_eq!(cgroup_file("unified", &group, "hugetlb.2MB.max"), "8388608");
        assert_eq!(cgroup_file("cpuset", &group, "cpuset.cpus"), "0");
        assert_eq!(
            cgroup_file("blkio", &group, "blkio.throttle.read_bps_device"),
            format!("{disk} 2097152")
        );
        fs::write(&update, r#"{"unified": {"memory.max": "1000000"}}"#).unwrap();
        let outcome = runtime.run(&[
            "update",
            "--resources",
            update.to_str().unwrap(),
            "controllers-huge",
        ]);
        assert_ne!(outcome.code, 0);
        assert!(
            outcome
                .stderr
                .contains("linux.resources.unified[memory.max]"),
            "{outcome:?}"
        );
        assert_eq!(
            runtime.run(&["delete", "--force", "controllers-huge"]).code,
            0
        );
        assert!(eventually(Duration::from_secs(30), || !Path::new(
            "/sys/fs/cgroup/unified"
        )
        .join(&group)
        .exists()));
    }
}

/// The init starts in the container's group in every hierarchy: cloned into the v2 one, it
/// moves its one thread into each v1 one itself (`0` into `tasks`) before it could fork, as
/// create no longer moves it by pid (which waits for an RCU grace period).
#[test]
fn the_init_is_in_the_containers_group_in_every_hierarchy() {
    let scratch = Scratch::new("init-groups");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "100"]));
    let id = format!("init-groups-{}", std::process::id());
    let outcome = runtime.create(&id, &bundle, &scratch.path("output"));
    let table = init_groups(&runtime, &id);
    assert_eq!(runtime.run(&["delete", "--force", &id]).code, 0);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_in_group(&table, &format!("/feather-oci/{id}"), "the init");
}

/// `/proc/PID/cgroup` of the container's init, as the host sees it.
fn init_groups(runtime: &Runtime, id: &str) -> String {
    let pid = runtime.state(id)["pid"].as_i64().unwrap_or_default();
    fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// The cgroup hierarchies this host has mounted, with a controller or v2 (systemd's named one
/// holds none): (controllers as `/proc/PID/cgroup` names them, "" for v2; mount point).
fn host_hierarchies() -> Vec<(String, std::path::PathBuf)> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (mount, kind, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            let controllers = match *kind {
                "cgroup2" => String::new(),
                "cgroup" => options
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "relatime" | "nosuid" | "nodev" | "noexec")
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                _ => return None,
            };
            (!controllers.contains("name=")).then(|| (controllers, mount.into()))
        })
        .collect()
}

/// The v2 hierarchy's mount point, where the host has one.
fn v2_mount() -> Option<std::path::PathBuf> {
    host_hierarchies()
        .into_iter()
        .find_map(|(controllers, mount)| controllers.is_empty().then_some(mount))
}

/// Asserts that the process whose `/proc/PID/cgroup` is `table` is in `group` in every
/// hierarchy with a controller (systemd's named one holds none, and no group), and that the
/// table names every hierarchy this host has.
fn assert_in_group(table: &str, group: &str, who: &str) {
    let hierarchies: Vec<(&str, &str)> = table
        .lines()
        .filter_map(|line| line.split_once(':')?.1.split_once(':'))
        .filter(|(controllers, _)| !controllers.starts_with("name="))
        .collect();
    for (controllers, _) in host_hierarchies() {
        let controllers = controllers.split(',').next().unwrap_or_default();
        assert!(
            hierarchies
                .iter()
                .any(|(c, _)| c.split(',').any(|c| c == controllers)),
            "{who}: no {controllers:?} hierarchy in {table}"
        );
    }
    for (controllers, path) in hierarchies {
        assert_eq!(path, group, "{who}, hierarchy {controllers:?}: {table}");
    }
}

/// The hooks run while the init is made see it in its group: createRuntime (the runtime's
/// namespaces) and createContainer (the init's mount namespace, before pivot_root) read the
/// init's `/proc/PID/cgroup`, startContainer (inside the container) its pid 1's.
#[test]
fn hooks_see_the_init_in_its_group() {
    let scratch = Scratch::new("hook-groups");
    let runtime = Runtime::new(&scratch);
    let id = format!("hook-groups-{}", std::process::id());
    let read_init = |out: &Path| {
        json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!(
                "pid=$(sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p'); cat /proc/$pid/cgroup > {}",
                out.display()
            )],
            "env": ["PATH=/usr/bin:/bin"]
        })
    };
    let (runtime_hook, container_hook) = (
        scratch.path("create-runtime"),
        scratch.path("create-container"),
    );
    let mut config = base_config(&["sleep", "100"]);
    config["hooks"] = json!({
        "createRuntime": [read_init(&runtime_hook)],
        "createContainer": [read_init(&container_hook)],
        "startContainer": [{
            "path": "/bin/sh",
            "args": ["sh", "-c", "cat /proc/1/cgroup > /start-container.tmp; mv /start-container.tmp /start-container"],
            "env": ["PATH=/bin"]
        }]
    });
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let outcome = runtime.create(&id, &bundle, &scratch.path("output"));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(runtime.run(&["start", &id]).code, 0);
    let start_hook = bundle.dir.join("rootfs/start-container");
    assert!(
        eventually(Duration::from_secs(20), || start_hook.exists()),
        "the startContainer hook did not run: {}",
        fs::read_to_string(scratch.path("output")).unwrap_or_default()
    );
    let group = format!("/feather-oci/{id}");
    for (hook, file) in [
        ("createRuntime", runtime_hook),
        ("createContainer", container_hook),
        ("startContainer", start_hook),
    ] {
        let table = fs::read_to_string(&file).unwrap_or_default();
        assert_in_group(
            &table,
            &group,
            &format!("the init, as a {hook} hook sees it"),
        );
    }
}

/// `exec`'s process starts in the container's group in every hierarchy, before its program
/// runs (the program reads its own table); the runtime's process that waits for it stays
/// out of the group, so `ps`, `kill --all` and the group's limits never count it.
#[test]
fn an_exec_starts_in_the_containers_group_and_the_runtime_stays_out() {
    let scratch = Scratch::new("exec-groups");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "100"]));
    let id = format!("exec-groups-{}", std::process::id());
    runtime.run_detached(&id, &bundle);
    let mut exec = runtime
        .command()
        .args([
            "exec",
            &id,
            "sh",
            "-c",
            "cat /proc/self/cgroup; echo end; read line",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The table ends where the program says so (or where the program ended).
    let mut table = String::new();
    for line in BufReader::new(exec.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "end" {
            break;
        }
        table.push_str(&line);
        table.push('\n');
    }
    let runtimes_table = fs::read_to_string(format!("/proc/{}/cgroup", exec.id())).unwrap();
    writeln!(exec.stdin.take().unwrap()).unwrap();
    let ended = exec.wait_with_output().unwrap();
    assert!(ended.status.success(), "{ended:?}");
    let group = format!("/feather-oci/{id}");
    assert_in_group(&table, &group, "the exec'd process");
    assert!(
        !runtimes_table.contains(&group),
        "the runtime's exec process is in the container's group: {runtimes_table}"
    );
}

/// A failure to join one of the container's groups fails `exec`, naming the group, and
/// leaves no process in the container. The group here is the init's cpuset group, which
/// the test empties of memory nodes once the init is out of it: the kernel then refuses
/// every process.
#[test]
fn a_failure_to_join_the_containers_group_fails_exec_and_leaves_nothing() {
    let Some(cpuset_mount) = host_hierarchies()
        .into_iter()
        .find_map(|(controllers, mount)| (controllers == "cpuset").then_some(mount))
    else {
        eprintln!("skipped: this host has no v1 cpuset hierarchy");
        return;
    };
    let scratch = Scratch::new("exec-join-fails");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "100"]));
    let id = format!("exec-join-fails-{}", std::process::id());
    runtime.run_detached(&id, &bundle);
    let pid = runtime.state(&id)["pid"].as_i64().unwrap();
    let cpuset = cpuset_mount.join("feather-oci").join(&id);
    fs::write(cpuset_mount.join("cgroup.procs"), pid.to_string()).unwrap();
    fs::write(cpuset.join("cpuset.mems"), "\n").unwrap();
    let outcome = runtime.run(&["exec", &id, "true"]);
    let members = |dir: &Path| {
        fs::read_to_string(dir.join(format!("feather-oci/{id}/cgroup.procs"))).unwrap_or_default()
    };
    let listed: Vec<(String, String)> = host_hierarchies()
        .into_iter()
        .map(|(controllers, mount)| (controllers, members(&mount)))
        .collect();
    assert_ne!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stderr.contains("join the container's cgroup")
            && outcome.stderr.contains(&cpuset.display().to_string()),
        "the error names the group: {outcome:?}"
    );
    for (hierarchy, listed) in listed {
        let expected = if hierarchy == "cpuset" {
            String::new()
        } else {
            format!("{pid}\n")
        };
        assert_eq!(listed, expected, "{hierarchy:?}: only the init is left");
    }
    assert_eq!(runtime.status(&id), "running");
}

/// A user namespace's container: its init, and an exec'd process (cloned into the group by a
/// process that has joined the user namespace), are in its group in every hierarchy.
#[test]
fn a_user_namespace_containers_processes_are_in_its_group() {
    let scratch = Scratch::new("userns-groups");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&["sleep", "100"]);
    crate::userns::mapped(&mut config);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    crate::userns::chown_tree(&bundle.dir.join("rootfs"), crate::userns::HOST_ROOT);
    let id = format!("userns-groups-{}", std::process::id());
    let outcome = runtime.create(&id, &bundle, &scratch.path("output"));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let group = format!("/feather-oci/{id}");
    assert_in_group(&init_groups(&runtime, &id), &group, "the init");
    assert_eq!(runtime.run(&["start", &id]).code, 0);
    let exec = runtime.run(&["exec", &id, "cat", "/proc/self/cgroup"]);
    assert_eq!(exec.code, 0, "{exec:?}");
    assert_in_group(&exec.stdout, &group, "the exec'd process");
}
/// A group made by the test in every hierarchy this host has (and removed, with what is in
/// it, when dropped, also after a failed assertion): what an engine's cgroupsPath names when
/// the group exists before the container.
struct MadeGroup {
    relative: String,
}

impl MadeGroup {
    fn new(relative: String) -> MadeGroup {
        let made = MadeGroup { relative };
        for dir in made.dirs() {
            fs::create_dir_all(dir).unwrap();
        }
        made
    }

    fn dirs(&self) -> Vec<std::path::PathBuf> {
        host_hierarchies()
            .into_iter()
            .map(|(_, mount)| mount.join(&self.relative))
            .collect()
    }

    fn v2(&self) -> std::path::PathBuf {
        v2_mount()
            .expect("a cgroup v2 hierarchy")
            .join(&self.relative)
    }

    /// The group's folder in the hierarchy that holds `controller`.
    fn dir_of(&self, controller: &str) -> std::path::PathBuf {
        host_hierarchies()
            .into_iter()
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
            .map_or_else(|| self.v2(), |(_, mount)| mount.join(&self.relative))
    }
}

impl Drop for MadeGroup {
    fn drop(&mut self) {
        if let Some(v2) = v2_mount() {
            let _ = fs::write(v2.join(&self.relative).join("cgroup.kill"), "1");
        }
        for dir in self.dirs() {
            let _ = eventually(Duration::from_secs(10), || {
                fs::remove_dir(&dir).is_ok() || !dir.exists()
            });
        }
    }
}

/// `linux.cgroupsPath` naming an empty group that exists already, as containerd and the
/// kubelet give, with limits of its own (a pod's): the group is kept as it is, its limits
/// too, and the init and an exec'd process are in it in every hierarchy.
#[test]
fn a_cgroups_path_that_exists_keeps_its_limits_and_is_joined_by_the_init_and_by_exec() {
    let scratch = Scratch::new("existing-groups");
    let runtime = Runtime::new(&scratch);
    let pid = std::process::id();
    let made = MadeGroup::new(format!("feather-oci-test-pod-{pid}"));
    // A limit of the pids controller (v1 or v2), and one of v2's own that needs no controller.
    let pids_max = made.dir_of("pids").join("pids.max");
    fs::write(&pids_max, "77").unwrap();
    let descendants = v2_mount().map(|_| made.v2().join("cgroup.max.descendants"));
    if let Some(file) = &descendants {
        fs::write(file, "7").unwrap();
    }
    let mut config = base_config(&["sleep", "100"]);
    config["linux"]["cgroupsPath"] = json!(format!("/{}", made.relative));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let id = format!("existing-groups-{pid}");
    let outcome = runtime.create(&id, &bundle, &scratch.path("output"));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(fs::read_to_string(&pids_max).unwrap().trim(), "77");
    if let Some(file) = &descendants {
        assert_eq!(fs::read_to_string(file).unwrap().trim(), "7", "{file:?}");
    }
    let group = format!("/{}", made.relative);
    assert_in_group(&init_groups(&runtime, &id), &group, "the init");
    assert_eq!(runtime.run(&["start", &id]).code, 0);
    let exec = runtime.run(&["exec", &id, "cat", "/proc/self/cgroup"]);
    assert_eq!(exec.code, 0, "{exec:?}");
    assert_in_group(&exec.stdout, &group, "the exec'd process");
    assert_eq!(runtime.run(&["delete", "--force", &id]).code, 0);
}

/// `linux.cgroupsPath` naming a group that holds a process not the container's: create is
/// refused, naming the group, and that process survives it and a `delete --force` of the id
/// (which would kill every process of the container's group).
#[test]
fn a_cgroups_path_holding_another_process_is_refused_and_that_process_survives() {
    let scratch = Scratch::new("occupied-group");
    let runtime = Runtime::new(&scratch);
    let pid = std::process::id();
    let made = MadeGroup::new(format!("feather-oci-test-occupied-{pid}"));
    let mut holder = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let procs = made.dir_of("pids").join("cgroup.procs");
    for file in [made.v2().join("cgroup.procs"), procs.clone()] {
        fs::write(file, holder.id().to_string()).unwrap();
    }
    let mut config = base_config(&["sleep", "100"]);
    config["linux"]["cgroupsPath"] = json!(format!("/{}", made.relative));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let id = format!("occupied-group-{pid}");
    let outcome = runtime.create(&id, &bundle, &scratch.path("output"));
    let deleted = runtime.run(&["delete", "--force", &id]);
    let alive = holder.try_wait().unwrap().is_none();
    let still_in = fs::read_to_string(&procs).unwrap_or_default();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_ne!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stderr.contains("already holds processes")
            && outcome.stderr.contains(&made.relative),
        "the error names the group: {outcome:?} (delete: {deleted:?})"
    );
    assert!(alive, "the group's process was killed: {deleted:?}");
    assert_eq!(still_in.trim(), holder.id().to_string());
}

/// A container's record naming a group create did not make for it (forged, or left by a
/// create where the group could not be marked), here one the test made holding a `sleep` of
/// its own: `kill --all` signals the init alone (another `sleep` of the test's, named by the
/// record), and `delete --force` neither kills the group's processes nor removes its folders;
/// each says so, naming the group; `pause`, `update` and `exec` are refused, naming it, and
/// leave it unfrozen, unlimited and without a new process. Before, `kill --all` and `delete`
/// signalled every process of the group the record named (`/system.slice`, another runtime's
/// container, `init.scope` alike), `delete` removed its folders, `pause` froze it, `update`
/// set its limits and `exec` put its process in it.
#[test]
fn kill_all_and_delete_leave_alone_a_group_the_record_merely_names() {
    let scratch = Scratch::new("named-group");
    let runtime = Runtime::new(&scratch);
    let pid = std::process::id();
    let made = MadeGroup::new(format!("feather-oci-test-named-{pid}"));
    let (mut stranger, mut init) = (Sleeper::start(), Sleeper::start());
    // In the v2 group (cgroup.kill's) and a v1 one, as the test of create's refusal.
    for dir in [made.v2(), made.dir_of("pids")] {
        fs::write(dir.join("cgroup.procs"), stranger.id().to_string()).unwrap();
    }
    let id = format!("named-group-{pid}");
    forge_record(&runtime, &id, &init, &made);
    let config = serde_json::to_string(&base_config(&["true"])).unwrap();
    fs::write(runtime.root.join(&id).join("config.json"), config).unwrap();

    let paused = runtime.run(&["pause", &id]);
    let frozen = freezer_says_frozen(&made);
    if frozen {
        thaw(&made);
    }
    let pids_max = made.dir_of("pids").join("pids.max");
    let limits = scratch.path("limits.json");
    fs::write(&limits, r#"{"pids": {"limit": 77}}"#).unwrap();
    let updated = runtime.run(&["update", "--resources", limits.to_str().unwrap(), &id]);
    let limit_after = fs::read_to_string(&pids_max).unwrap_or_default();
    // A usable cpuset (v1's needs one), so that nothing but the check refuses the exec.
    let cpuset = made.dir_of("cpuset");
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if let Ok(value) = fs::read_to_string(cpuset.parent().unwrap().join(file)) {
            let _ = fs::write(cpuset.join(file), value);
        }
    }
    let execed = runtime.run(&["exec", &id, "true"]);
    let killed = runtime.run(&["kill", "--all", &id, "KILL"]);
    let mut init_status = None;
    eventually(Duration::from_secs(20), || {
        init_status = init.0.try_wait().unwrap();
        init_status.is_some()
    });
    // Once the init is reaped, a SIGKILL sent with it has reached the stranger too: given a
    // moment more to end, as a loaded host may take to run it.
    let stranger_after_kill = stranger.outlives(Duration::from_secs(2));
    let deleted = runtime.run(&["delete", "--force", &id]);
    let stranger_after_delete = stranger.outlives(Duration::from_secs(2));
    let folders_left: Vec<bool> = made.dirs().iter().map(|dir| dir.exists()).collect();
    for (refused, what) in [(&paused, "pause"), (&updated, "update"), (&execed, "exec")] {
        assert!(
            refused.code != 0 && refused.stderr.contains(&made.relative),
            "{what} of the group the record names is refused, naming it: {refused:?}"
        );
    }
    assert!(
        !frozen,
        "pause froze the group the record names: {paused:?}"
    );
    assert_eq!(
        limit_after.trim(),
        "max",
        "update set a limit on the group the record names: {updated:?}"
    );
    assert!(
        stranger_after_kill,
        "kill --all killed a process of the group the record names: {killed:?}"
    );
    assert_eq!(
        init_status.and_then(|status| std::os::unix::process::ExitStatusExt::signal(&status)),
        Some(9),
        "kill --all signals the init (waited for it to end for 20 s): {killed:?}"
    );
    assert!(
        killed.stderr.contains(&made.relative),
        "kill --all names the group: {killed:?}"
    );
    assert!(
        stranger_after_delete,
        "delete killed a process of the group the record names: {deleted:?}"
    );
    assert!(
        folders_left.iter().all(|left| *left),
        "delete removed the group's folders ({folders_left:?}): {deleted:?}"
    );
    assert!(
        deleted.code == 0 && deleted.stderr.contains(&made.relative),
        "delete names the group it leaves: {deleted:?}"
    );
}

/// A `sleep` of the test's own, killed and reaped when dropped (also after a failed assertion).
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(
            std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap(),
        )
    }

    fn id(&self) -> u32 {
        self.0.id()
    }

    /// Whether it is still running after `grace` (polled: it fails as soon as it ended).
    fn outlives(&mut self, grace: Duration) -> bool {
        !eventually(grace, || self.0.try_wait().unwrap().is_some())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A container whose group bears the mark of a container of the same id in another runtime
/// root (two engines, or two `--root`s, naming one group path: containerd's `/default/web`)
/// is refused at create, naming that container and what to do: that container's `delete`
/// would otherwise kill this one and remove its group. Here the other container's init has
/// ended (its shim died, say), leaving its group empty and marked.
#[test]
fn a_group_bearing_the_mark_of_another_roots_container_of_that_id_is_refused() {
    let pid = std::process::id();
    let (scratch_a, scratch_b) = (Scratch::new("mark-root-a"), Scratch::new("mark-root-b"));
    let (runtime_a, runtime_b) = (Runtime::new(&scratch_a), Runtime::new(&scratch_b));
    // Dropped last: removes the group if a failed assertion left it.
    let made = MadeGroup::new(format!("feather-oci-test-marked-{pid}"));
    let mut config = base_config(&["sleep", "100"]);
    config["linux"]["cgroupsPath"] = json!(format!("/{}", made.relative));
    let id = format!("marked-{pid}");
    let bundle_a = Bundle::new(&scratch_a, "bundle", &config);
    let first = runtime_a.create(&id, &bundle_a, &scratch_a.path("output"));
    assert_eq!(first.code, 0, "{first:?}");
    let killed = runtime_a.run(&["kill", &id, "KILL"]);
    assert_eq!(killed.code, 0, "{killed:?}");
    runtime_a.wait_stopped(&id);

    let bundle_b = Bundle::new(&scratch_b, "bundle", &config);
    let second = runtime_b.create(&id, &bundle_b, &scratch_b.path("output"));
    let root_a = fs::canonicalize(&runtime_a.root).unwrap();
    let deleted = runtime_a.run(&["delete", "--force", &id]);
    let group_left = made.v2().exists();
    assert_ne!(second.code, 0, "{second:?}");
    assert!(
        second.stderr.contains(&made.relative)
            && second
                .stderr
                .contains(&root_a.join(&id).display().to_string())
            && second.stderr.contains("delete that container"),
        "the error names the group, the container whose mark it bears and what to do: {second:?}"
    );
    assert!(
        deleted.code == 0 && !group_left,
        "the marked container's delete removes its group: {deleted:?}"
    );
}

/// A create that fails past the making of its group (here: a terminal asked for without
/// --console-socket) removes the group it made, and leaves one it found and joined (an
/// engine's, with a group of its own below) as it was.
#[test]
fn a_failed_create_removes_the_group_it_made_and_leaves_one_it_joined() {
    let pid = std::process::id();
    let scratch = Scratch::new("failed-create-group");
    let runtime = Runtime::new(&scratch);
    let existing = MadeGroup::new(format!("feather-oci-test-joined-{pid}"));
    let below = MadeGroup::new(format!("{}/below", existing.relative));
    let fresh = MadeGroup {
        relative: format!("feather-oci-test-fresh-{pid}"),
    };
    let mut outcomes = Vec::new();
    for (n, group) in [&existing, &fresh].into_iter().enumerate() {
        let mut config = base_config(&["sleep", "100"]);
        config["process"]["terminal"] = json!(true);
        config["linux"]["cgroupsPath"] = json!(format!("/{}", group.relative));
        let bundle = Bundle::new(&scratch, &format!("bundle-{n}"), &config);
        let id = format!("failed-create-{n}-{pid}");
        let output = scratch.path(&format!("output-{n}"));
        outcomes.push(runtime.create(&id, &bundle, &output));
    }
    // Both fail past the making of the group: on the terminal, or on a v1 device rule the
    // kernel refuses in a group with a group below it (a hybrid host's).
    for outcome in &outcomes {
        assert!(
            outcome.code != 0
                && (outcome.stderr.contains("--console-socket")
                    || outcome.stderr.contains("linux.resources.devices")),
            "{outcome:?}"
        );
    }
    assert!(
        existing.dirs().iter().all(|dir| dir.exists()) && below.v2().exists(),
        "the failed create removed the group it joined: {:?}",
        outcomes[0]
    );
    assert!(
        fresh.dirs().iter().all(|dir| !dir.exists()),
        "the failed create left the group it made: {:?}",
        outcomes[1]
    );
}

/// A container whose group bears no mark naming its root (one made before feather-oci
/// marked every group so: here, marked with its id alone, as then) is still its own where the
/// kernel says so, every process of its group being in its init's own pid namespace: it is
/// paused, resumed, exec'd into, paused again and deleted (thawed and killed), its group
/// removed. Before, `resume` was refused and `delete` of the paused container left its
/// frozen init for good.
#[test]
fn a_container_made_before_the_mark_named_its_root_is_resumed_and_deleted() {
    let pid = std::process::id();
    let scratch = Scratch::new("legacy-mark");
    let runtime = Runtime::new(&scratch);
    let made = MadeGroup::new(format!("feather-oci-test-legacy-{pid}"));
    let mut config = base_config(&["sleep", "100"]);
    config["linux"]["cgroupsPath"] = json!(format!("/{}", made.relative));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let id = format!("legacy-mark-{pid}");
    runtime.run_detached(&id, &bundle);
    feather_oci::cgroups::Groups::new(&made.relative)
        .mark_for(Path::new(&id))
        .unwrap();
    for verb in ["pause", "resume"] {
        let outcome = runtime.run(&[verb, &id]);
        assert_eq!(outcome.code, 0, "{verb}: {outcome:?}");
    }
    // A usable cpuset (v1's needs one), so that nothing but the check refuses the exec.
    let cpuset = made.dir_of("cpuset");
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if let Ok(value) = fs::read_to_string(cpuset.parent().unwrap().join(file)) {
            let _ = fs::write(cpuset.join(file), value);
        }
    }
    let execed = runtime.run(&["exec", &id, "true"]);
    assert_eq!(execed.code, 0, "exec: {execed:?}");
    let paused = runtime.run(&["pause", &id]);
    assert_eq!(paused.code, 0, "{paused:?}");
    let deleted = runtime.run(&["delete", "--force", &id]);
    let group_left = made.v2().exists();
    thaw(&made);
    assert_eq!(deleted.code, 0, "{deleted:?}");
    assert!(
        !group_left,
        "delete left the container's group: {deleted:?}"
    );
}

/// A container whose group is not provably its own (unmarked, its init in the host's pid
/// namespace: made where `trusted.*` could not be set, sharing the host's pid namespace) in
/// create's default group `feather-oci/<id>`: `delete --force` kills its init alone and
/// removes the group, left empty. Before, every such `delete` leaked its group.
#[test]
fn delete_removes_the_empty_default_group_of_a_container_not_provably_its_own() {
    let scratch = Scratch::new("unmarked-default");
    let runtime = Runtime::new(&scratch);
    let id = format!("unmarked-default-{}", std::process::id());
    let made = MadeGroup::new(format!("feather-oci/{id}"));
    let init = Sleeper::start();
    forge_record(&runtime, &id, &init, &made);
    let deleted = runtime.run(&["delete", "--force", &id]);
    let left: Vec<_> = made.dirs().into_iter().filter(|dir| dir.exists()).collect();
    assert!(
        deleted.code == 0 && left.is_empty(),
        "delete left the empty group ({left:?}): {deleted:?}"
    );
}

/// A container record under `runtime`'s root, as a forger (or a stale record) would write it:
/// container `id`, its init the test's `init`, its group `made`.
fn forge_record(runtime: &Runtime, id: &str, init: &Sleeper, made: &MadeGroup) {
    use feather_oci::store::{Container, Record};
    feather_oci::store::root_dir(&runtime.root).unwrap();
    let init_pid = nix::unistd::Pid::from_raw(init.id() as i32);
    let record = Record {
        id: id.to_owned(),
        pid: init_pid.as_raw(),
        start_ticks: feather_sys::process::start_ticks(init_pid).unwrap(),
        cgroup: made.relative.clone(),
        ..Record::default()
    };
    Container::make(&runtime.root, record).unwrap();
}

/// Whether the group's freezer (v1's where the host has one, else v2's) says it is frozen.
fn freezer_says_frozen(made: &MadeGroup) -> bool {
    let read = |file: std::path::PathBuf| fs::read_to_string(file).unwrap_or_default();
    match made
        .dirs()
        .into_iter()
        .find(|dir| dir.join("freezer.state").exists())
    {
        Some(dir) => read(dir.join("freezer.state")).trim() != "THAWED",
        None => read(made.v2().join("cgroup.freeze")).trim() != "0",
    }
}

/// Thaws the group in every freezer (the clean-up of a test that found it frozen).
fn thaw(made: &MadeGroup) {
    for dir in made.dirs() {
        let _ = fs::write(dir.join("freezer.state"), "THAWED");
    }
    let _ = fs::write(made.v2().join("cgroup.freeze"), "0");
}

/// An exec into a container with a cgroup namespace of its own (docker's and podman's default
/// on a cgroup v2 host): the exec'd process is in the container's group and sees it as the
/// root (`/`) of its cgroup namespace in every hierarchy. It joins that namespace last, after
/// its clone into the group and its v1 joins, as runc does: on an `nsdelegate` hierarchy
/// (systemd's mount) a move from inside it would be refused (docs/oci.md).
#[test]
fn an_exec_into_a_cgroup_namespace_sees_the_containers_group_as_its_root() {
    let scratch = Scratch::new("exec-cgroupns");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&["sleep", "100"]);
    add_namespace(&mut config, json!({"type": "cgroup"}));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let id = format!("exec-cgroupns-{}", std::process::id());
    runtime.run_detached(&id, &bundle);
    let exec = runtime.run(&["exec", &id, "cat", "/proc/self/cgroup"]);
    assert_eq!(exec.code, 0, "{exec:?}");
    assert_in_group(
        &exec.stdout,
        "/",
        "the exec'd process, in its cgroup namespace",
    );
    // Detached, with no pipe that would wait for its end.
    let pid_file = scratch.path("exec.pid");
    let detached = runtime
        .command()
        .args(["exec", "--detach", "--pid-file"])
        .arg(&pid_file)
        .args([id.as_str(), "sleep", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(detached.success(), "exec --detach: {detached}");
    let exec_pid = fs::read_to_string(&pid_file).unwrap();
    let table = fs::read_to_string(format!("/proc/{}/cgroup", exec_pid.trim())).unwrap();
    assert_in_group(
        &table,
        &format!("/feather-oci/{id}"),
        "the exec'd process, from the host",
    );
}

fn add_namespace(config: &mut serde_json::Value, namespace: serde_json::Value) {
    config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(namespace);
}

/// `linux.namespaces[cgroup].path`: the init joins that cgroup namespace (after entering its
/// groups, as runc: see exec's) and is in its own container's group.
#[test]
fn a_joined_cgroup_namespace_is_the_inits() {
    let scratch = Scratch::new("joined-cgroupns");
    let runtime = Runtime::new(&scratch);
    let pid = std::process::id();
    let mut config = base_config(&["sleep", "100"]);
    add_namespace(&mut config, json!({"type": "cgroup"}));
    let owner = format!("joined-cgroupns-owner-{pid}");
    runtime.run_detached(&owner, &Bundle::new(&scratch, "owner", &config));
    let owner_ns = format!("/proc/{}/ns/cgroup", runtime.state(&owner)["pid"]);
    config["linux"]["namespaces"].as_array_mut().unwrap().pop();
    add_namespace(&mut config, json!({"type": "cgroup", "path": owner_ns}));
    let id = format!("joined-cgroupns-{pid}");
    let outcome = runtime.create(
        &id,
        &Bundle::new(&scratch, "joiner", &config),
        &scratch.path("output"),
    );
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let init = runtime.state(&id)["pid"].clone();
    let namespace = |path: String| fs::read_link(path).unwrap();
    assert_eq!(
        namespace(format!("/proc/{init}/ns/cgroup")),
        namespace(owner_ns)
    );
    assert_in_group(
        &init_groups(&runtime, &id),
        &format!("/feather-oci/{id}"),
        "the init",
    );
}

/// `create` and `exec` run by a process whose own v2 group was once killed (an engine's shim in
/// a group that outlived a `cgroup.kill`): the kernel kills a clone into the container's fresh
/// group at birth (feather_sys's `V2Entry`); the init and the exec'd process are cloned again,
/// move themselves in, and run in the container's group.
#[test]
fn create_and_exec_by_a_process_of_a_once_killed_group_start_in_the_containers_group() {
    let scratch = Scratch::new("from-killed-group");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "100"]));
    let pid = std::process::id();
    let engine = MadeGroup::new(format!("feather-oci-test-engine-{pid}"));
    fs::write(engine.v2().join("cgroup.kill"), "1").unwrap();
    // The runtime, run from a shell that first moves itself into that group.
    let in_engine_group = |args: &[&str]| {
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "echo 0 > {}/cgroup.procs && exec \"$@\"",
                engine.v2().display()
            ))
            .arg("sh")
            .arg(&runtime.program)
            .args(runtime.command().get_args())
            .args(args);
        command
    };
    let id = format!("from-killed-group-{pid}");
    let output = scratch.path("output");
    let file = fs::File::create(&output).unwrap();
    let created = in_engine_group(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    assert!(
        created.success(),
        "{}",
        fs::read_to_string(&output).unwrap()
    );
    let group = format!("/feather-oci/{id}");
    assert_in_group(&init_groups(&runtime, &id), &group, "the init");
    assert_eq!(runtime.run(&["start", &id]).code, 0);
    let exec = crate::support::run(&mut in_engine_group(&[
        "exec",
        &id,
        "cat",
        "/proc/self/cgroup",
    ]));
    assert_eq!(exec.code, 0, "{exec:?}");
    assert_in_group(&exec.stdout, &group, "the exec'd process");
}

#[test]
fn resources_this_host_lacks_are_refused_by_name() {
    let scratch = Scratch::new("controllers-refused");
    let runtime = Runtime::new(&scratch);
    let mut cases = vec![(
        "linux.resources.hugepageLimits[3MB]",
        json!({"hugepageLimits": [{"pageSize": "3MB", "limit": 1}]}),
    )];
    // A hybrid host: memory is a v1 controller, so `unified` cannot set it.
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        cases.push((
            "linux.resources.unified[memory.max]",
            json!({"unified": {"memory.max": "1000000"}}),
        ));
    }
    // No BFQ here: the blkio controller has throttles but no weights.
    if Path::new("/sys/fs/cgroup/blkio").is_dir()
        && !Path::new("/sys/fs/cgroup/blkio/blkio.weight").exists()
        && !Path::new("/sys/fs/cgroup/blkio/blkio.bfq.weight").exists()
    {
        cases.push((
            "linux.resources.blockIO.weight",
            json!({"blockIO": {"weight": 500}}),
        ));
    }
    for (n, (field, resources)) in cases.into_iter().enumerate() {
        let mut config = base_config(&["true"]);
        config["linux"]["resources"] = resources;
        let bundle = Bundle::new(&scratch, &format!("bundle-{n}"), &config);
        let outcome = runtime.create("controllers-refused", &bundle, &scratch.path("out"));
        assert_ne!(outcome.code, 0, "{field} must be refused");
        assert!(outcome.stderr.contains(field), "{field}: {outcome:?}");
        assert!(
            !runtime.root.join("controllers-refused").exists(),
            "{field}: nothing left"
        );
    }
}

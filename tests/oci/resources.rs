//! config-linux.md's resources that depend on the host's controllers: cpuset, block I/O
//! throttles and weights, huge pages and `unified`, applied where this host has the
//! controller (here: v1 cpuset and blkio without weights, hugetlb only on the v2 hierarchy of
//! a hybrid host) or refused by the field's name; and `update --resources` for them.

use std::fs;
use std::path::Path;
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
        let mut config = base_config(&["sleep", "100"]);
        merge(
            &mut config,
            &json!({"linux": {
                "cgroupsPath": format!("/feather-oci-tests/huge-{}", std::process::id()),
                "resources": {
                    "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
                    "unified": {"hugetlb.1GB.max": "0"}
                }
            }}),
        );
        let bundle = Bundle::new(&scratch, "bundle-huge", &config);
        let outcome = runtime.create("controllers-huge", &bundle, &scratch.path("out-huge"));
        assert_eq!(outcome.code, 0, "{outcome:?}");
        let group = format!("feather-oci-tests/huge-{}", std::process::id());
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
        assert!(eventually(Duration::from_secs(5), || !Path::new(
            "/sys/fs/cgroup/unified"
        )
        .join(&group)
        .exists()));
        for hierarchy in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let _ = fs::remove_dir(hierarchy.path().join("feather-oci-tests"));
        }
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
    let pid = runtime.state(&id)["pid"].as_i64().unwrap_or_default();
    let table = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert_eq!(runtime.run(&["delete", "--force", &id]).code, 0);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let group = format!("/feather-oci/{id}");
    // (controllers, path) per hierarchy; systemd's named one holds no controller, no group.
    let hierarchies: Vec<(&str, &str)> = table
        .lines()
        .filter_map(|line| line.split_once(':')?.1.split_once(':'))
        .filter(|(controllers, _)| !controllers.starts_with("name="))
        .collect();
    for controllers in ["memory", "pids", "devices", "freezer", "cpuset", ""] {
        assert!(
            hierarchies
                .iter()
                .any(|(c, _)| c.split(',').any(|c| c == controllers)),
            "no {controllers:?} hierarchy on this host: {table}"
        );
    }
    for (controllers, path) in hierarchies {
        assert_eq!(path, group, "hierarchy {controllers:?}: {table}");
    }
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

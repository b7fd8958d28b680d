//! `linux.namespaces[user]` with `uidMappings`/`gidMappings` (config-linux.md): the
//! container's root is an unprivileged id of the host, from a hand-made bundle (whose rootfs
//! the test chowns, as an engine does) and from `ctr run --uidmap/--gidmap`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::json;

use crate::spec::merge;
use crate::support::{
    base_config, busybox_image_tar, runtime_bin, Bundle, Containerd, Runtime, Scratch,
};

pub(crate) const HOST_ROOT: u32 = 100_000;

pub(crate) fn chown_tree(path: &Path, id: u32) {
    std::os::unix::fs::lchown(path, Some(id), Some(id)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in fs::read_dir(path).unwrap().flatten() {
            chown_tree(&entry.path(), id);
        }
    }
}

pub(crate) fn mapped(config: &mut serde_json::Value) {
    merge(
        config,
        &json!({"linux": {
            "uidMappings": [{"containerID": 0, "hostID": HOST_ROOT, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": HOST_ROOT, "size": 65536}]
        }}),
    );
    config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
}

#[test]
fn a_user_namespace_maps_the_containers_root_to_an_unprivileged_host_id() {
    let scratch = Scratch::new("userns");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&[
        "sh",
        "-c",
        "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; test -b /dev/loop0 && echo loop0; \
         touch /tmp/made; sleep 100",
    ]);
    mapped(&mut config);
    // No mknod in a user namespace: the host's node is bound.
    config["linux"]["devices"] =
        json!([{"path": "/dev/loop0", "type": "b", "major": 7, "minor": 0}]);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    chown_tree(&bundle.dir.join("rootfs"), HOST_ROOT);
    let output = scratch.path("output");
    let outcome = runtime.create("userns-u1", &bundle, &output);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(runtime.run(&["start", "userns-u1"]).code, 0);
    let made = bundle.dir.join("rootfs/tmp/made");
    assert!(crate::support::eventually(
        std::time::Duration::from_secs(10),
        || made.exists()
    ));
    let text = fs::read_to_string(&output).unwrap();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["0"],
            vec!["0"],
            vec!["0", "100000", "65536"],
            vec!["0", "100000", "65536"],
            vec!["loop0"]
        ],
        "{text}"
    );
    let owner = fs::metadata(&made).unwrap();
    assert_eq!(
        (owner.uid(), owner.gid()),
        (HOST_ROOT, HOST_ROOT),
        "what the container's root makes belongs to the mapped host id"
    );
    let pid = runtime.state("userns-u1")["pid"].as_i64().unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("100000")),
        "{status}"
    );

    // exec joins the user namespace too: never the host's root inside the container.
    let outcome = runtime.run(&["exec", "userns-u1", "cat", "/proc/self/uid_map"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(
        outcome.stdout.split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
    assert_eq!(runtime.run(&["delete", "--force", "userns-u1"]).code, 0);
}

#[test]
fn user_namespace_configs_it_cannot_run_are_refused_by_name() {
    let scratch = Scratch::new("userns-refused");
    let runtime = Runtime::new(&scratch);
    let cases = [
        (
            "linux.uidMappings",
            json!({"linux": {"uidMappings": [{"containerID": 0, "hostID": HOST_ROOT, "size": 1}]}}),
            false,
        ),
        (
            "linux.uidMappings",
            json!({"linux": {
                "uidMappings": [{"containerID": 1, "hostID": HOST_ROOT, "size": 10}],
                "gidMappings": [{"containerID": 0, "hostID": HOST_ROOT, "size": 10}]
            }}),
            true,
        ),
        (
            "linux.namespaces[user].path",
            json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "user", "path": "/proc/1/ns/user"}]}}),
            false,
        ),
    ];
    for (n, (field, patch, user)) in cases.into_iter().enumerate() {
        let mut config = base_config(&["true"]);
        merge(&mut config, &patch);
        if user {
            config["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "user"}));
        }
        let bundle = Bundle::new(&scratch, &format!("bundle-{n}"), &config);
        let outcome = runtime.create("userns-refused", &bundle, &scratch.path("out"));
        assert_ne!(outcome.code, 0, "{field} must be refused");
        assert!(outcome.stderr.contains(field), "{field}: {outcome:?}");
        assert!(!runtime.root.join("userns-refused").exists());
    }
}

#[test]
fn ctr_run_with_uidmap_and_gidmap() {
    let scratch = Scratch::new("containerd-userns");
    let containerd = Containerd::start(&scratch);
    const IMAGE: &str = "docker.io/library/feather-busybox:userns";
    let tar = busybox_image_tar(&scratch, IMAGE);
    let imported = containerd.ctr(&["images", "import", tar.to_str().unwrap()]);
    assert_eq!(imported.code, 0, "{imported:?}");
    let outcome = containerd.ctr(&[
        "run",
        "--rm",
        "--uidmap",
        "0:100000:65536",
        "--gidmap",
        "0:100000:65536",
        "--runc-binary",
        runtime_bin(),
        IMAGE,
        "u1",
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; touch /made && stat -c %u /made",
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(
        outcome
            .stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        [vec!["0"], vec!["0", "100000", "65536"], vec!["0"]],
        "{outcome:?}"
    );
}

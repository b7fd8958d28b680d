//! `linux.resources.devices` on the cgroup v2 hierarchy: the device program feather-oci loads
//! on the container's v2 group refuses what the rules deny, on its own — the container's v1
//! devices group (this hybrid host has one) is opened to every device before the container
//! runs, so a device refused here was refused by the program. A container with CAP_MKNOD and
//! a /dev without nodev makes nodes of the host's disk and of /dev/fuse, and opens them (never
//! reading or writing a byte).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::support::{a_disk, base_config, eventually, Bundle, Runtime, Scratch};

/// "major minor" of a disk of this host, as mknod takes it.
fn a_disk_node() -> String {
    a_disk().replace(':', " ")
}

fn v2_mount() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.to_owned()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// Lets the group's v1 devices controller allow every device (where this host has one), so
/// only the v2 program stands.
fn open_v1_devices(group: &str) {
    let dir = Path::new("/sys/fs/cgroup/devices").join(group);
    if dir.is_dir() {
        fs::write(dir.join("devices.allow"), "a").unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("devices.list")).unwrap().trim(),
            "a *:* rwm"
        );
    }
}

/// Each probe's line: `NAME=ok`, or `NAME=` and the shell's complaint.
fn probe(runtime: &Runtime, id: &str, disk: &str) -> String {
    let script = format!(
        "cd /dev; for n in disk fuse; do rm -f $n; done; \
         busybox mknod disk b {disk} && busybox mknod fuse c 10 229 || echo MKNOD=failed; \
         try() {{ if (eval \"$2\") 2>/tmp/e; then echo $1=ok; else echo $1=$(cat /tmp/e); fi; }}; \
         try DISK_READ ': < disk'; try FUSE_READ ': < fuse'; try FUSE_WRITE ': >> fuse'; \
         try NULL_WRITE ': >> null'"
    );
    let outcome = runtime.run(&["exec", id, "sh", "-c", &script]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    outcome.stdout
}

fn line<'a>(output: &'a str, name: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {output:?}"))
}

const REFUSED: &str = "Operation not permitted";

#[test]
fn the_v2_device_program_alone_refuses_what_the_rules_deny() {
    let scratch = Scratch::new("devices-v2");
    let runtime = Runtime::new(&scratch);
    let id = format!("devbpf-{}", std::process::id());
    let group = format!("feather-oci/{id}");
    let disk = a_disk_node();
    let mut config = base_config(&["sleep", "100"]);
    config["linux"]["resources"] = json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "r"}
    ]});
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let outcome = runtime.create(&id, &bundle, &scratch.path("output"));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    open_v1_devices(&group);
    assert_eq!(runtime.run(&["start", &id]).code, 0);

    let output = probe(&runtime, &id, &disk);
    assert!(!output.contains("MKNOD=failed"), "{output}");
    assert!(line(&output, "DISK_READ").contains(REFUSED), "{output}");
    assert_eq!(line(&output, "FUSE_READ"), "ok", "{output}");
    assert!(line(&output, "FUSE_WRITE").contains(REFUSED), "{output}");
    assert_eq!(line(&output, "NULL_WRITE"), "ok", "{output}");
    let v2_group = v2_mount().join(&group);
    let programs = feather_sys::bpf::device_programs(&v2_group).unwrap();
    assert_eq!(programs.len(), 1, "one device program on {v2_group:?}");

    // update --resources replaces the program (one stays attached) with the new rules.
    let update = scratch.path("update.json");
    fs::write(
        &update,
        json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}
        ]})
        .to_string(),
    )
    .unwrap();
    let outcome = runtime.run(&["update", "--resources", update.to_str().unwrap(), &id]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    open_v1_devices(&group);
    let after = feather_sys::bpf::device_programs(&v2_group).unwrap();
    assert_eq!(after.len(), 1, "the update's program replaced the first");
    assert_ne!(after, programs);
    let output = probe(&runtime, &id, &disk);
    assert!(line(&output, "DISK_READ").contains(REFUSED), "{output}");
    assert_eq!(line(&output, "FUSE_WRITE"), "ok", "{output}");

    // delete --force leaves neither the group nor a program.
    assert_eq!(runtime.run(&["delete", "--force", &id]).code, 0);
    assert!(!v2_group.exists());
    assert!(
        eventually(Duration::from_secs(10), || after
            .iter()
            .chain(&programs)
            .all(|p| !feather_sys::bpf::program_exists(*p))),
        "the device programs outlived the container's cgroup"
    );
}

#[test]
fn device_rules_the_runtime_cannot_enforce_fail_create_by_name() {
    let scratch = Scratch::new("devices-bad");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&["true"]);
    config["linux"]["resources"] = json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 4, "access": "rw"},
        {"allow": false, "type": "c", "major": 4, "minor": 1, "access": "w"}
    ]});
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let outcome = runtime.create("bad", &bundle, &scratch.path("output"));
    assert_ne!(outcome.code, 0);
    assert!(
        outcome.stderr.contains("linux.resources.devices[2]"),
        "{outcome:?}"
    );
    assert!(!v2_mount().join("feather-oci/bad").exists());
}

#[test]
fn a_config_without_device_rules_gets_runcs_defaults_not_every_device() {
    // runc's emulator starts from "deny all" and adds its always-allowed devices; a config
    // that lists no rules (hand-written, or from a tool that omits them) must not leave the
    // host's disks to a container holding CAP_MKNOD.
    let scratch = Scratch::new("devices-none");
    let runtime = Runtime::new(&scratch);
    let id = format!("devnone-{}", std::process::id());
    let config = base_config(&["sleep", "100"]);
    assert!(config["linux"].get("resources").is_none());
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let outcome = runtime.create(&id, &bundle, &scratch.path("output"));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(runtime.run(&["start", &id]).code, 0);

    let output = probe(&runtime, &id, &a_disk_node());
    assert!(!output.contains("MKNOD=failed"), "{output}");
    assert!(line(&output, "DISK_READ").contains(REFUSED), "{output}");
    assert!(line(&output, "FUSE_READ").contains(REFUSED), "{output}");
    assert_eq!(line(&output, "NULL_WRITE"), "ok", "{output}");
    assert_eq!(runtime.run(&["delete", "--force", &id]).code, 0);
}

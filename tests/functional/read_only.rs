//! `create --ro PATH` / `run --ro PATH`: a path of the base the VM sees read-only, as the base
//! has it, instead of through its layer — writes fail with EROFS, nothing reaches the layer
//! (`diff` is empty there), the host's changes show at once, and a path the VM must not see
//! through is refused by name before anything is made.

use std::fs;
use std::os::unix::fs::symlink;

use crate::support::{diff_paths, Feather, RecordHold, ScratchBase};

/// A filesystem under a read-only path that the host unmounts while the VM starts is passed
/// over as a layer's is (`copy_on_write::a_filesystem_…_is_passed_over`): `data/gone` is
/// unmounted and its folder removed once init has its own copy of the host's mounts (which the
/// removal detaches there; before, the start failed: ENOENT opening it in the base), `data/kept`
/// only unmounted on the host (init's copy stays, and is bound read-only as found).
#[test]
fn a_filesystem_under_a_read_only_path_unmounted_while_the_vm_starts_is_passed_over() {
    let feather = Feather::new("ro-vanished");
    let mut base = ScratchBase::new("ro-vanished");
    base.write("data/tool", "v1\n");
    let gone = base.mount_tmpfs("data/gone");
    let kept = base.mount_tmpfs("data/kept");
    fs::write(kept.join("file"), "on tmpfs\n").unwrap();
    feather.create_over("vm", &base, &["--net", "none", "--ro", "/data"]);
    let mut hold = RecordHold::after_mounts_found("ro-vanished");
    let start = hold.start(&feather, "vm");
    for at in [&gone, &kept] {
        let status = std::process::Command::new("umount")
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "umount {}", at.display());
    }
    fs::remove_dir(&gone).unwrap();
    hold.release();
    let started = start.wait_with_output().unwrap();
    assert!(
        started.status.success(),
        "the start fails over a filesystem unmounted meanwhile: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert_eq!(
        feather.sh(
            "vm",
            "ls /data; cat /data/kept/file; (echo vm > /data/kept/file) 2>&1 | sed 's/.*: //'"
        ),
        "kept\ntool\non tmpfs\nRead-only file system\n"
    );
    feather.ok(&["stop", "vm"]);
}

#[test]
fn a_read_only_path_refuses_writes_and_diff_shows_nothing_under_it() {
    let feather = Feather::new("ro");
    let mut base = ScratchBase::new("ro");
    base.write("data/tool", "v1\n");
    base.write("data/sub/deep", "deep\n");
    // A filesystem of its own under the read-only path: read-only with it, not a layer.
    let mounted = base.mount_tmpfs("data/disk");
    fs::write(mounted.join("file"), "on tmpfs\n").unwrap();
    feather.start_over("vm", &base, &["--net", "none", "--ro", "/data/"]);
    let inspected = feather.inspect("vm");
    assert_eq!(
        inspected["config"]["read_only"],
        serde_json::json!(["/data"])
    );
    assert_eq!(
        inspected["read_only"][0]["source"],
        base.file("data").to_str().unwrap()
    );
    // Every kind of change fails there, as on a read-only filesystem...
    for change in [
        "echo vm > /data/tool",
        "echo new > /data/new",
        "rm /data/sub/deep",
        "mv /data/tool /data/moved",
        "chmod 600 /data/tool",
        "mkdir /data/folder",
        "echo vm > /data/disk/file",
        "echo vm > /data/disk/new",
    ] {
        let outcome = feather.run(&["exec", "vm", "--", "sh", "-c", change]);
        assert_ne!(outcome.code, 0, "{change} succeeded");
        assert!(
            outcome.stderr.contains("Read-only file system"),
            "{change}: {}",
            outcome.stderr
        );
    }
    // ...while the rest of the VM is as writable as ever.
    feather.sh("vm", "echo vm > /etc/written");
    assert_eq!(
        feather.sh("vm", "cat /data/tool /data/sub/deep /data/disk/file"),
        "v1\ndeep\non tmpfs\n"
    );
    // The host's files are seen live, as it changes them.
    base.write("data/tool", "v2\n");
    assert_eq!(feather.sh("vm", "cat /data/tool"), "v2\n");
    let changes = diff_paths(&feather.ok(&["diff", "vm"]));
    assert_eq!(changes, "A /etc/written\n");
    // The config keeps it: a restarted VM has it again.
    feather.ok(&["stop", "vm"]);
    feather.ok(&["start", "vm"]);
    let outcome = feather.run(&["exec", "vm", "--", "sh", "-c", "echo vm > /data/tool"]);
    assert!(
        outcome.stderr.contains("Read-only file system"),
        "{}",
        outcome.stderr
    );
    assert_eq!(base.read("data/tool").unwrap(), "v2\n");
}

#[test]
fn a_throw_away_vm_takes_ro_too() {
    let feather = Feather::new("ro-run");
    let base = ScratchBase::new("ro-run");
    base.write("data/tool", "v1\n");
    let outcome = feather.run(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--base",
        base.as_str(),
        "--ro",
        "/data",
        "--",
        "sh",
        "-c",
        "cat /data/tool; echo vm > /data/tool",
    ]);
    assert_ne!(outcome.code, 0);
    assert_eq!(outcome.stdout, "v1\n");
    assert!(
        outcome.stderr.contains("Read-only file system"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn ro_refuses_what_a_vm_must_not_see_through_and_names_it() {
    let feather = Feather::new("ro-refused");
    let base = ScratchBase::new("ro-refused");
    base.write("data/file", "x\n");
    symlink("/etc", base.file("out")).unwrap();
    symlink("data", base.file("inside")).unwrap();
    let base_arg = base.as_str();
    let refused = |path: &str, why: &str| {
        let stderr = feather.fails(&["create", "vm", "--base", base_arg, "--ro", path]);
        assert!(
            stderr.contains(&format!("invalid --ro \"{path}\"")) && stderr.contains(why),
            "--ro {path}: {stderr}"
        );
    };
    refused("/out", "symbolic link");
    refused("/inside/file", "symbolic link");
    refused("/proc", "of its own");
    refused("/run", "of its own");
    refused("/", "whole root");
    refused("/data/../etc", "without `..`");
    refused("data", "from its root");
    refused("/missing", "no such file");
    // The state root itself, over the host's root, where the VM would see it.
    let state = feather.root.join("vms").display().to_string();
    fs::create_dir_all(feather.root.join("vms")).unwrap();
    let stderr = feather.fails(&["create", "vm", "--net", "none", "--ro", &state]);
    assert!(stderr.contains("hides from every VM"), "{stderr}");
    // Nothing was made for any of them.
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
}

#[test]
fn a_checkpointed_vm_comes_back_with_its_read_only_path() {
    let feather = Feather::new("ro-ckpt");
    feather.require_criu();
    let base = ScratchBase::new("ro-ckpt");
    base.write("data/tool", "v1\n");
    feather.start_over("vm", &base, &["--net", "none", "--ro", "/data"]);
    let mounts = "grep ' /data ' /proc/self/mountinfo | cut -d' ' -f4-6";
    let before = feather.sh("vm", mounts);
    assert!(before.contains(" ro,"), "{before}");
    feather.ok(&["checkpoint", "vm"]);
    feather.ok(&["restore", "vm"]);
    assert_eq!(feather.sh("vm", mounts), before);
    let outcome = feather.run(&["exec", "vm", "--", "sh", "-c", "echo vm > /data/tool"]);
    assert!(
        outcome.stderr.contains("Read-only file system"),
        "{}",
        outcome.stderr
    );
    base.write("data/tool", "v2\n");
    assert_eq!(feather.sh("vm", "cat /data/tool"), "v2\n");
}

#[test]
fn a_link_put_in_place_of_a_read_only_path_after_create_is_not_followed_at_start() {
    let feather = Feather::new("ro-swapped");
    let base = ScratchBase::new("ro-swapped");
    base.write("data/file", "base\n");
    feather.create_over("vm", &base, &["--net", "none", "--ro", "/data"]);
    // Whoever can change the base makes the path a link out of it, to the host's own /etc.
    fs::rename(base.file("data"), base.file("data.old")).unwrap();
    symlink("/etc", base.file("data")).unwrap();
    let stderr = feather.fails(&["start", "vm"]);
    assert!(
        stderr.contains("read-only path") && stderr.contains("/data"),
        "{stderr}"
    );
    assert_ne!(feather.status("vm"), "running");
}

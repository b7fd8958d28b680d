//! `feather diff` of OCI containers: what a container over the host wrote (its overlay's upper
//! layer over the host's root filesystem), what a container whose rootfs is an engine's
//! overlay wrote (that overlay's upper layer over its lower one), and a plain-folder rootfs
//! refused by name.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::feather::sibling;
use crate::support::{base_config, run, Bundle, Runtime, Scratch};

/// `feather --root <scratch> diff ARGS…`.
fn feather_diff(scratch: &Scratch, args: &[&str]) -> crate::support::Outcome {
    run(std::process::Command::new(sibling("feather"))
        .env("FEATHER_POOL", "0")
        .arg("--root")
        .arg(scratch.path("feather-root"))
        .arg("diff")
        .args(args))
}

/// Creates and starts container `id` and waits for its program's end.
fn run_to_stopped(runtime: &Runtime, scratch: &Scratch, id: &str, bundle: &Bundle) {
    let created = runtime.create(id, bundle, &scratch.path("output"));
    assert_eq!(created.code, 0, "{created:?}");
    assert_eq!(runtime.run(&["start", id]).code, 0);
    runtime.wait_stopped(id);
}

/// (kind letter, path) of each change, from `feather diff --json`.
fn changes(json: &str) -> Vec<(String, String)> {
    let rows: Vec<Value> = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    rows.iter()
        .map(|row| {
            (
                row["kind"].as_str().unwrap().to_owned(),
                row["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn change(kind: &str, path: &Path) -> (String, String) {
    (kind.to_owned(), path.display().to_string())
}

#[test]
fn diff_of_a_container_over_the_host_is_its_upper_layer() {
    let scratch = Scratch::new("diff-host");
    let runtime = Runtime::new(&scratch);
    // On the host's root filesystem (the overlay's lower layer), where the test may write.
    let host = scratch.path("host");
    fs::create_dir_all(&host).unwrap();
    fs::write(host.join("modify"), "before\n").unwrap();
    fs::write(host.join("delete"), "doomed\n").unwrap();
    fs::write(host.join("keep"), "untouched\n").unwrap();
    let script = format!(
        "echo new > {d}/added && echo more >> {d}/modify && rm {d}/delete && mkdir {d}/made",
        d = host.display()
    );
    let mut config = base_config(&["/bin/sh", "-c", &script]);
    config["process"]["env"] = json!(["PATH=/usr/bin:/bin"]);
    config["annotations"] = json!({"org.feather.base": "host"});
    runtime.allow_annotations(&["org.feather.base=host"]);
    // A mount point the runtime makes: not the container's change.
    config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": host.join("mount-point"), "type": "tmpfs", "source": "tmpfs"
    }));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let id = format!("diff-host-{}", std::process::id());
    run_to_stopped(&runtime, &scratch, &id, &bundle);
    assert_eq!(
        fs::read_to_string(host.join("modify")).unwrap(),
        "before\n",
        "the host is untouched"
    );
    assert!(host.join("delete").exists());

    let outcome = feather_diff(&scratch, &[&id, "--json"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let all = changes(&outcome.stdout);
    let ours: Vec<(String, String)> = all
        .iter()
        .filter(|(_, path)| Path::new(path).starts_with(&host))
        .cloned()
        .collect();
    assert_eq!(
        ours,
        vec![
            change("Added", &host.join("added")),
            change("Deleted", &host.join("delete")),
            change("Added", &host.join("made")),
            change("Modified", &host.join("modify")),
        ],
        "{all:?}"
    );
    // The folders on the way were copied up, unchanged: not changes.
    assert!(!all.iter().any(|(_, p)| p == "/tmp"), "{all:?}");

    let root = fs::canonicalize(&runtime.root).unwrap();
    let table = feather_diff(&scratch, &[&id, "--runtime-root", root.to_str().unwrap()]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with('M') && l.contains(&format!("{}/modify", host.display()))),
        "{table:?}"
    );

    assert_eq!(runtime.run(&["delete", &id]).code, 0);
    let layer = root.join(&id).join("layer");
    assert!(!layer.exists(), "delete unmounts and removes the layer");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "{mounts}");
}

#[test]
fn diff_of_a_container_on_an_overlay_rootfs_is_that_overlays_upper_layer() {
    diff_over_an_overlay_rootfs(false);
}

#[test]
fn diff_of_a_container_on_an_overlay_of_several_lower_layers_reads_them_merged() {
    diff_over_an_overlay_rootfs(true);
}

/// A container whose rootfs is an overlay mounted by the test, as an engine's snapshotter
/// does: the busybox rootfs as the lower layer, and with `two_lowers` a layer above it
/// holding `/etc/motd` and a whiteout of `/bin/ls`.
fn diff_over_an_overlay_rootfs(two_lowers: bool) {
    let scratch = Scratch::new("diff-overlay");
    let runtime = Runtime::new(&scratch);
    let script = "echo new > /added; echo more >> /etc/passwd; rm /bin/wc; \
                  if test -e /etc/motd; then rm /etc/motd; fi; test -e /bin/ls && echo ls-seen";
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sh", "-c", script]));
    let base = scratch.path("base");
    fs::rename(bundle.dir.join("rootfs"), &base).unwrap();
    let mut lowers = vec![base.display().to_string()];
    if two_lowers {
        let layer = scratch.path("layer");
        fs::create_dir_all(layer.join("etc")).unwrap();
        fs::create_dir_all(layer.join("bin")).unwrap();
        fs::write(layer.join("etc/motd"), "hello\n").unwrap();
        nix::sys::stat::mknod(
            &layer.join("bin/ls"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        lowers.insert(0, layer.display().to_string());
    }
    let (upper, work) = (scratch.path("upper"), scratch.path("work"));
    let rootfs: PathBuf = bundle.dir.join("rootfs");
    for dir in [&upper, &work, &rootfs] {
        fs::create_dir_all(dir).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .unwrap();
    let id = format!("diff-overlay-{}", std::process::id());
    run_to_stopped(&runtime, &scratch, &id, &bundle);
    let output = fs::read_to_string(scratch.path("output")).unwrap();
    assert_eq!(
        output.contains("ls-seen"),
        !two_lowers,
        "a whiteout in the upper lower layer hides /bin/ls: {output}"
    );

    let outcome = feather_diff(&scratch, &[&id, "--json"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let all = changes(&outcome.stdout);
    let mut expected = vec![
        change("Added", Path::new("/added")),
        change("Deleted", Path::new("/bin/wc")),
        change("Modified", Path::new("/etc/passwd")),
    ];
    if two_lowers {
        // Removed from the upper of the two lower layers: a deletion of the merged view.
        expected.insert(2, change("Deleted", Path::new("/etc/motd")));
    }
    assert_eq!(all, expected, "{outcome:?}");
    assert_eq!(runtime.run(&["delete", &id]).code, 0);
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
}

#[test]
fn diff_of_a_container_on_a_plain_folder_is_refused_naming_why() {
    let scratch = Scratch::new("diff-plain");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["true"]));
    let id = format!("diff-plain-{}", std::process::id());
    run_to_stopped(&runtime, &scratch, &id, &bundle);
    let outcome = feather_diff(&scratch, &[&id]);
    assert_ne!(outcome.code, 0);
    assert!(
        outcome.stderr.contains("not an overlay mount"),
        "{outcome:?}"
    );
    assert_eq!(runtime.run(&["delete", &id]).code, 0);
}

#[test]
fn diff_of_a_ctr_run_container_reads_containerds_snapshot() {
    let scratch = Scratch::new("diff-containerd");
    let containerd = crate::support::Containerd::start(&scratch);
    let image = "docker.io/library/feather-busybox:diff";
    let tar = crate::support::busybox_image_tar(&scratch, image);
    let imported = containerd.ctr(&["images", "import", tar.to_str().unwrap()]);
    assert_eq!(imported.code, 0, "{imported:?}");
    let outcome = containerd.ctr(&[
        "run",
        "-d",
        "--runc-binary",
        crate::support::runtime_bin(),
        image,
        "d1",
        "sh",
        "-c",
        "echo x > /written; rm /bin/wc; sleep 100",
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let root = containerd.runtime_root();
    let expected = [
        change("Deleted", Path::new("/bin/wc")),
        change("Added", Path::new("/written")),
    ];
    let mut last = None;
    let seen = crate::support::eventually(std::time::Duration::from_secs(20), || {
        let outcome = feather_diff(
            &scratch,
            &["d1", "--json", "--runtime-root", root.to_str().unwrap()],
        );
        let found = outcome.code == 0 && {
            let all = changes(&outcome.stdout);
            expected.iter().all(|e| all.contains(e))
        };
        last = Some(outcome);
        found
    });
    assert!(seen, "{last:?}");
    let killed = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "d1"]);
    assert_eq!(killed.code, 0, "{killed:?}");
}

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
    let scratch = Scratch::new("diff-overlay");
    let runtime = Runtime::new(&scratch);
    let script = "echo new > /added; echo more >> /etc/passwd; rm /bin/wc";
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sh", "-c", script]));
    // The bundle's rootfs becomes the lower layer of an overlay mounted in its place, as an
    // engine's snapshotter does.
    let lower = scratch.path("lower");
    fs::rename(bundle.dir.join("rootfs"), &lower).unwrap();
    let (upper, work) = (scratch.path("upper"), scratch.path("work"));
    for dir in [&upper, &work, &bundle.dir.join("rootfs")] {
        fs::create_dir_all(dir).unwrap();
    }
    let rootfs: PathBuf = bundle.dir.join("rootfs");
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
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

    let outcome = feather_diff(&scratch, &[&id, "--json"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let all = changes(&outcome.stdout);
    for expected in [
        change("Added", Path::new("/added")),
        change("Modified", Path::new("/etc/passwd")),
        change("Deleted", Path::new("/bin/wc")),
    ] {
        assert!(all.contains(&expected), "{expected:?} in {all:?}");
    }
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

//! A container over the host (`org.feather.base=host`) sees the host's files copy-on-write, as
//! a feather VM does — and, as in a VM, none of feather's state roots: they hold the layers of
//! the host's VMs (what each wrote) and their sockets.

use std::fs;
use std::path::{Path, PathBuf};

use feather_core::roots::{Registry, REGISTRY_DIR};
use feather_core::StateRoot;
use serde_json::json;

use crate::support::{base_config, Bundle, Runtime, Scratch};

/// A state root recorded in the host's registry for the test; its entry is removed after.
struct Registered {
    dir: PathBuf,
}

impl Registered {
    fn new(dir: &Path, run: &Path) -> Registered {
        fs::create_dir_all(dir).unwrap();
        let root = StateRoot::with_dirs(dir.to_owned(), run.to_owned());
        Registry::host().register(&root).unwrap();
        Registered {
            dir: fs::canonicalize(dir).unwrap(),
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        Registry::host().forget_below(&self.dir);
    }
}

#[test]
fn a_container_over_the_host_sees_no_feather_state_root() {
    let scratch = Scratch::new("state-roots");
    // A VM's layer in a registered root, holding what the VM wrote.
    let state = scratch.path("feather-state");
    let layer = state.join("vms/db/upper/srv");
    fs::create_dir_all(&layer).unwrap();
    fs::write(layer.join("secret"), "LAYER-OF-ANOTHER-VM\n").unwrap();
    let _registered = Registered::new(&state, &scratch.path("feather-run"));
    // A file beside the root, on the same filesystem: the container sees the host there.
    fs::write(scratch.path("beside"), "HOST-FILE-BESIDE\n").unwrap();

    let script = format!(
        "cat {beside}; cat {secret}; ls {registry}; true",
        beside = scratch.path("beside").display(),
        secret = layer.join("secret").display(),
        registry = REGISTRY_DIR,
    );
    let mut config = base_config(&["/bin/sh", "-c", &script]);
    config["annotations"] = json!({"org.feather.base": "host"});
    config["process"]["env"] = json!(["PATH=/usr/bin:/bin"]);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let runtime = Runtime::new(&scratch);
    runtime.allow_annotations(&["org.feather.base=host"]);
    let id = format!("state-roots-{}", std::process::id());
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stdout.contains("HOST-FILE-BESIDE"),
        "the container sees the host's files: {outcome:?}"
    );
    assert!(
        !outcome.stdout.contains("LAYER-OF-ANOTHER-VM"),
        "a VM's layer was read from a container over the host: {outcome:?}"
    );
    assert!(
        !outcome.stdout.contains(".json"),
        "the registry of state roots was listed: {outcome:?}"
    );
}

/// A state root registered while a container over the host runs — as `feather --root DIR`
/// registers a new root: the registry first, then the running VMs and containers — is hidden
/// in it too, not only in containers started after.
#[test]
fn a_state_root_registered_after_a_container_over_the_host_started_is_hidden_in_it() {
    let scratch = Scratch::new("late-root");
    let mut config = base_config(&["sleep", "60"]);
    config["annotations"] = json!({"org.feather.base": "host"});
    config["process"]["env"] = json!(["PATH=/usr/bin:/bin"]);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let runtime = Runtime::new(&scratch);
    runtime.allow_annotations(&["org.feather.base=host"]);
    let id = format!("late-root-{}", std::process::id());
    runtime.run_detached(&id, &bundle);

    let state = scratch.path("late-state");
    let layer = state.join("vms/db/upper/srv");
    fs::create_dir_all(&layer).unwrap();
    fs::write(layer.join("secret"), "LAYER-OF-A-LATER-ROOT\n").unwrap();
    let run_dir = scratch.path("late-run");
    let _registered = Registered::new(&state, &run_dir);
    let root = StateRoot::with_dirs(fs::canonicalize(&state).unwrap(), run_dir);
    let warnings = feather_oci::hiding::in_running_containers(&root);
    // Only this test's container: parallel tests' containers may stop, or be hidden in, while
    // this looks — and this root's path names `late-root-PID` too.
    let about_ours = format!("container {id} (");
    let ours: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains(&about_ours))
        .collect();
    assert!(ours.is_empty(), "{warnings:?}");

    let secret = layer.join("secret");
    let outcome = runtime.run(&["exec", &id, "cat", secret.to_str().unwrap()]);
    assert!(
        !outcome.stdout.contains("LAYER-OF-A-LATER-ROOT"),
        "a root registered after the container started is readable in it: {outcome:?}"
    );
    assert_ne!(outcome.code, 0, "{outcome:?}");
}

/// A privileged container over the host (CAP_SYS_ADMIN, as `docker run --privileged` gives)
/// can unmount the tmpfs that hides a state root in its mount namespace, and a container's
/// descriptor kept on the root of a mount namespace that ended walks beneath it as well (the
/// kernel disconnects that namespace's mounts): the overlay itself must show the root empty.
/// Before the hiding layer, the container read the VM's layer once the tmpfs was gone.
#[test]
fn a_container_over_the_host_that_unmounts_the_hiding_tmpfs_still_sees_no_state_root() {
    let scratch = Scratch::new("state-roots-unmounted");
    let state = scratch.path("feather-state");
    let layer = state.join("vms/db/upper/srv");
    fs::create_dir_all(&layer).unwrap();
    fs::write(layer.join("secret"), "LAYER-OF-ANOTHER-VM\n").unwrap();
    let registered = Registered::new(&state, &scratch.path("feather-run"));
    let script = format!(
        "umount {state} && echo unmounted; umount {registry} && echo unmounted; \
         cat {secret}; ls -A {state} {registry}; true",
        state = registered.dir.display(),
        secret = registered.dir.join("vms/db/upper/srv/secret").display(),
        registry = REGISTRY_DIR,
    );
    let mut config = base_config(&["/bin/sh", "-c", &script]);
    for set in ["bounding", "effective", "permitted"] {
        config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push("CAP_SYS_ADMIN".into());
    }
    config["annotations"] = json!({"org.feather.base": "host"});
    config["process"]["env"] = json!(["PATH=/usr/bin:/bin:/usr/sbin:/sbin"]);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let runtime = Runtime::new(&scratch);
    runtime.allow_annotations(&["org.feather.base=host"]);
    let id = format!("state-roots-unmounted-{}", std::process::id());
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stdout.starts_with("unmounted\nunmounted\n"),
        "the container unmounted the tmpfs: {outcome:?}"
    );
    assert!(
        !outcome.stdout.contains("LAYER-OF-ANOTHER-VM") && !outcome.stdout.contains("vms"),
        "a VM's layer was read from a container over the host: {outcome:?}"
    );
    assert!(
        !outcome.stdout.contains(".json"),
        "the registry of state roots was listed: {outcome:?}"
    );
}

/// A runtime root a local user could change (`--root` in a folder of uid 65534) is refused as
/// feather refuses such a state root, by every command that uses it, before anything is made:
/// feather-oci acts in it as root, by path. The engines' own roots (root's, under /run) pass:
/// the engine tests run through them.
#[test]
fn a_runtime_root_in_a_users_folder_is_refused_before_anything_is_made() {
    let scratch = Scratch::new("oci-users-root");
    let home = scratch.path("home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::lchown(&home, Some(65534), Some(65534)).unwrap();
    let mut runtime = Runtime::new(&scratch);
    runtime.root = home.join("oci-root");
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["/bin/true"]));
    let bundle = bundle.dir.to_str().unwrap().to_owned();
    let id = format!("users-root-{}", std::process::id());
    for args in [
        vec!["list"],
        vec!["create", "--bundle", &bundle, &id],
        vec!["run", "--bundle", &bundle, &id],
        vec!["state", &id],
    ] {
        let outcome = runtime.run(&args);
        assert_ne!(outcome.code, 0, "feather-oci {args:?} went on");
        let said = &outcome.stderr;
        assert!(
            said.contains(&format!("{} is owned by uid 65534", home.display()))
                && said.contains("choose a root"),
            "feather-oci {args:?}: {said}"
        );
    }
    assert!(
        fs::read_dir(&home).unwrap().next().is_none(),
        "made in the user's folder"
    );
}

//! A container over the host (`org.feather.base=host`) sees the host's files copy-on-write, as
//! a feather VM does — and, as in a VM, none of feather's state roots: they hold the layers of
//! the host's VMs (what each wrote) and their sockets.

use std::fs;
use std::path::{Path, PathBuf};

use feather_core::roots::{Registry, REGISTRY_DIR};
use feather_core::StateRoot;
use feather_oci::registry::RootRegistry;
use feather_oci::store::{Container, Record};
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

/// A registration hides a new root in every running container over the host through its
/// init's mount namespace, found in the container's record. A record names its group as freely
/// as its pid, so a forged one (by whoever could write it) gets no mount in the namespace of
/// the process it names where that process is not in a group create made for the container,
/// or shares this command's (the host's) mount namespace: the forged records name a stranger
/// in its own group (which create made for nobody: no stranger is in it), in the hierarchy's
/// root (where every process is), and in a group the test made and moved it into; and one
/// names a process in a group marked as create marks it, but in this command's own mount
/// namespace. The registration says why for each. Run with a registry of runtime roots of its
/// own (a tmpfs in a mount namespace of the test's thread): no other test's registration sees
/// its forged containers.
#[test]
fn a_container_record_naming_a_process_outside_its_group_gets_no_mount_in_its_namespace() {
    feather_testkit::own_mount_namespace();
    let _registry = own_runtime_registry();
    let scratch = Scratch::new("forged-init");
    let runtime_root = scratch.path("runtime-root");
    feather_oci::store::root_dir(&runtime_root).unwrap();
    RootRegistry::host().register(&runtime_root).unwrap();
    let id = format!("forged-init-{}", std::process::id());
    // Dropped after the processes in them (declared before them).
    let made = TestGroup::new(&format!("feather-test-{id}-made"));
    let marked = TestGroup::new(&format!("feather-test-{id}-marked"));
    marked
        .0
        .mark_for(&feather_oci::store::mark(
            &runtime_root,
            &format!("{id}-marked"),
        ))
        .unwrap();
    let stranger = feather_testkit::Stranger::start();
    let neighbour = feather_testkit::Stranger::in_our_namespace();
    made.0.add(pid_of(&stranger)).unwrap();
    marked.0.add(pid_of(&neighbour)).unwrap();
    let forged = [
        (id.clone(), format!("feather-oci/{id}"), &stranger),
        (format!("{id}-root"), String::new(), &stranger),
        (format!("{id}-made"), made.relative(), &stranger),
        (format!("{id}-marked"), marked.relative(), &neighbour),
    ];
    for (id, cgroup, init) in &forged {
        let pid = pid_of(init);
        let record = Record {
            id: id.clone(),
            pid: pid.as_raw(),
            start_ticks: feather_sys::process::start_ticks(pid).unwrap(),
            cgroup: cgroup.clone(),
            annotations: [("org.feather.base".to_owned(), "host".to_owned())].into(),
            ..Record::default()
        };
        Container::make(&runtime_root, record).unwrap();
    }

    let state = scratch.path("late-state");
    fs::create_dir(&state).unwrap();
    let late = StateRoot::with_dirs(fs::canonicalize(&state).unwrap(), scratch.path("late-run"));
    let warnings = feather_oci::hiding::in_running_containers(&late);
    for init in [&stranger, &neighbour] {
        let mounted = init.tmpfs_mounts();
        assert!(
            !mounted
                .iter()
                .any(|at| Path::new(at).starts_with(late.dir())),
            "a tmpfs was mounted in the namespace of pid {}: {mounted:?}",
            init.pid()
        );
    }
    for (id, _, init) in &forged {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("container {id} ("))
                    && w.contains(&format!("names pid {} as its init, ", init.pid()))
                    && !w.contains("run that container again")),
            "no warning naming the container {id} and its init, without advice to run it \
             again: {warnings:?}"
        );
    }
}

fn pid_of(process: &feather_testkit::Stranger) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(process.pid() as i32)
}

/// A cgroup the test made (in every hierarchy, below each one's root), its processes killed
/// and the group removed when dropped, also when the test fails.
struct TestGroup(feather_oci::cgroups::Groups, String);

impl TestGroup {
    fn new(relative: &str) -> TestGroup {
        let groups = feather_oci::cgroups::Groups::new(relative);
        let made = TestGroup(groups, relative.to_owned());
        let mark = Path::new("/feather-oci-test-group");
        let mut made_now = feather_oci::cgroups::Made::Nothing;
        (made.0.make(None, mark, false, &mut made_now)).unwrap();
        made
    }

    fn relative(&self) -> String {
        self.1.clone()
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        self.0.kill_all();
        self.0.remove();
    }
}

/// Gives the calling test's thread (in a mount namespace of its own) a registry of runtime
/// roots of its own, empty: an empty tmpfs over the nearest folder of the host's registry path
/// that exists, with the registry's folders made in it, root-only as feather-oci makes them.
/// Nothing is made on the host (`/run/feather-oci/roots` may be missing there).
fn own_runtime_registry() -> feather_testkit::TmpfsMount {
    let registry = Path::new(feather_oci::registry::REGISTRY_DIR);
    let nearest = registry.ancestors().find(|at| at.exists()).unwrap();
    let mount = feather_testkit::TmpfsMount::at(nearest);
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(registry)
        .unwrap();
    mount
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

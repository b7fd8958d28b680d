//! feather's own features through the runtime: its IPC confinement on top of the config's
//! (`org.feather.confine`), the host's services in a container over the host
//! (`org.feather.services`), and containers seen by feather's own tools (`feather ls`/`ps`).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::PathBuf;

use serde_json::json;

use crate::support::{
    base_config, busybox_image_tar, busybox_layer_tar, run, runtime_allowing, runtime_bin, Bundle,
    Containerd, Podman, Runtime, Scratch,
};

/// A Python script for a container over the host: what the container can reach. Prints
/// `ABSTRACT=connected|denied|…` for an abstract unix socket of the host's, `KEYCTL=EPERM|…`
/// for a keyring call (on feather's deny list, not on the config's profile) and
/// `MKDIR=denied|ok` for a call the config's own profile denies.
const PROBE: &str = r#"
import ctypes, errno, os, socket, sys
name = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("\0" + name)
    print("ABSTRACT=connected")
except PermissionError:
    print("ABSTRACT=denied")
except OSError as e:
    print("ABSTRACT=" + errno.errorcode.get(e.errno, str(e.errno)))
libc = ctypes.CDLL(None, use_errno=True)
# keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
if libc.syscall(250, 0, -3, 0) == -1 and ctypes.get_errno() == errno.EPERM:
    print("KEYCTL=EPERM")
else:
    print("KEYCTL=allowed")
try:
    os.mkdir("/tmp/probe-dir")
    print("MKDIR=ok")
except PermissionError:
    print("MKDIR=denied")
"#;

/// A container over the host in the host's network namespace (where abstract sockets are not
/// fenced by a namespace), whose config denies mkdir with its own profile.
fn probing_config(args: &[&str], confine: Option<&str>) -> serde_json::Value {
    let mut config = base_config(args);
    config["process"]["env"] = json!(["PATH=/usr/bin:/bin"]);
    let mut annotations = json!({"org.feather.base": "host"});
    if let Some(confine) = confine {
        annotations["org.feather.confine"] = confine.into();
    }
    config["annotations"] = annotations;
    let namespaces: Vec<serde_json::Value> = config["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ns| ns["type"] != "network")
        .cloned()
        .collect();
    config["linux"]["namespaces"] = namespaces.into();
    config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    config
}

fn run_to_end(
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
    std::fs::read_to_string(output).unwrap()
}

#[test]
fn feather_confinement_applies_on_top_of_the_config_profile() {
    let scratch = Scratch::new("confine");
    let runtime = Runtime::new(&scratch);
    runtime.allow_annotations(&["org.feather.base=host", "org.feather.confine=none"]);
    let name = format!("feather-oci-probe-{}", std::process::id());
    let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixListener::bind_addr(&address).unwrap();
    listener.set_nonblocking(true).unwrap();
    let probe = ["python3", "-c", PROBE, &name];

    // By default: what a feather VM cannot do, the container cannot either; the config's own
    // profile still denies what it denies.
    let confined = run_to_end(
        &runtime,
        &scratch,
        "confined",
        &probing_config(&probe, None),
    );
    assert_eq!(
        confined, "ABSTRACT=denied\nKEYCTL=EPERM\nMKDIR=denied\n",
        "feather's confinement and the config's profile both apply"
    );

    // An exec'd process cannot join the init's Landlock domain; it gets its own, and the
    // deny list.
    let bundle = Bundle::new(
        &scratch,
        "bundle-held",
        &probing_config(&["sleep", "100"], None),
    );
    let held = runtime.create("held", &bundle, &scratch.path("output-held"));
    assert_eq!(held.code, 0, "{held:?}");
    assert_eq!(runtime.run(&["start", "held"]).code, 0);
    let exec = runtime.run(&["exec", "held", "python3", "-c", PROBE, &name]);
    assert_eq!(exec.code, 0, "{exec:?}");
    assert_eq!(exec.stdout, "ABSTRACT=denied\nKEYCTL=EPERM\nMKDIR=denied\n");
    assert_eq!(runtime.run(&["delete", "--force", "held"]).code, 0);

    // Turned off by annotation: the config's profile alone, as under runc.
    let open = run_to_end(
        &runtime,
        &scratch,
        "open",
        &probing_config(&probe, Some("none")),
    );
    assert_eq!(open, "ABSTRACT=connected\nKEYCTL=allowed\nMKDIR=denied\n");

    // A privileged container (CAP_SYS_ADMIN, as `docker run --privileged` gives) is left as its
    // engine asked, unless the annotation asks for confinement.
    let mut privileged = probing_config(&probe, None);
    for set in ["bounding", "effective", "permitted"] {
        privileged["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push("CAP_SYS_ADMIN".into());
    }
    let output = run_to_end(&runtime, &scratch, "privileged", &privileged);
    assert_eq!(output, "ABSTRACT=connected\nKEYCTL=allowed\nMKDIR=denied\n");
    privileged["annotations"]["org.feather.confine"] = "ipc".into();
    let output = run_to_end(&runtime, &scratch, "privileged-confined", &privileged);
    assert_eq!(output, "ABSTRACT=denied\nKEYCTL=EPERM\nMKDIR=denied\n");
    drop(listener);
}

/// `org.feather.base=host` makes the host's `/` the root of a container run as root, and
/// whoever writes a container's annotations (under Kubernetes: a pod's author) is not the
/// node's admin: without the node's annotation policy allowing it, `create` fails naming the
/// annotation, the policy and how to allow it, and leaves nothing; once the policy allows it
/// the container reads the host's file. `confine=none` stays refused where only the base is
/// allowed; the narrowing `confine=ipc` and `tags` need no policy.
#[test]
fn annotation_policy_decides_whether_the_host_is_the_base() {
    let scratch = Scratch::new("annotation-policy");
    let runtime = Runtime::new(&scratch);
    let marker = scratch.path("marker");
    std::fs::write(&marker, "host file\n").unwrap();
    let mut config = base_config(&["cat", marker.to_str().unwrap()]);
    config["process"]["env"] = json!(["PATH=/usr/bin:/bin"]);
    config["annotations"] = json!({"org.feather.base": "host", "org.feather.tags": "a"});
    let refused_with = |id: &str, config: &serde_json::Value| {
        let bundle = Bundle::new(&scratch, &format!("bundle-{id}"), config);
        let outcome = runtime.create(id, &bundle, &scratch.path(&format!("output-{id}")));
        assert_ne!(outcome.code, 0, "{outcome:?}");
        let listed = runtime.run(&["list", "-q"]);
        assert_eq!(listed.stdout.trim(), "", "nothing is left: {listed:?}");
        outcome.stderr
    };
    let refused = refused_with("no-policy", &config);
    let policy = runtime.policy.display().to_string();
    for named in ["org.feather.base=host", &policy, "allow"] {
        assert!(refused.contains(named), "names {named}: {refused}");
    }

    runtime.allow_annotations(&["org.feather.base=host"]);
    assert_eq!(
        run_to_end(&runtime, &scratch, "allowed", &config),
        "host file\n"
    );
    config["annotations"]["org.feather.confine"] = "none".into();
    let refused = refused_with("confine-none", &config);
    assert!(refused.contains("org.feather.confine=none"), "{refused}");
    config["annotations"]["org.feather.confine"] = "ipc".into();
    assert_eq!(
        run_to_end(&runtime, &scratch, "confined", &config),
        "host file\n"
    );
}

#[test]
fn services_need_the_host_as_base_and_are_refused_by_name_otherwise() {
    let scratch = Scratch::new("services-refused");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&["true"]);
    config["annotations"] = json!({"org.feather.services": "redis-server"});
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let outcome = runtime.create("c1", &bundle, &scratch.path("output"));
    assert_ne!(outcome.code, 0);
    let error = run(runtime.command().args(["state", "c1"]));
    assert_ne!(error.code, 0, "nothing is left behind: {error:?}");
    let listed = runtime.run(&["list", "-q"]);
    assert_eq!(listed.stdout.trim(), "", "{listed:?}");
    let stderr = outcome.stderr;
    assert!(stderr.contains("org.feather.base=host"), "{stderr}");
}

/// `feather-svcd` and `feather` beside the runtime (a workspace build puts them there).
pub fn sibling(name: &str) -> PathBuf {
    let path = PathBuf::from(runtime_bin()).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace (cargo build --workspace), not feather-oci alone",
        path.display()
    );
    path
}

#[test]
fn ctr_run_over_the_host_with_a_duplicated_host_service() {
    sibling(feather_svc_program());
    let scratch = Scratch::new("containerd-services");
    let containerd = Containerd::start(&scratch);
    let image = "docker.io/library/feather-busybox:services";
    let tar = busybox_image_tar(&scratch, image);
    let imported = containerd.ctr(&["images", "import", tar.to_str().unwrap()]);
    assert_eq!(imported.code, 0, "{imported:?}");
    // `ctr run` gives the container a network namespace of its own (so the copy's port 6379 is
    // its own, whatever the host runs) and a tmpfs /run.
    let runtime = runtime_allowing(&scratch, &["org.feather.base=host", "org.feather.services"]);
    let outcome = containerd.ctr_logged(&[
        "run",
        "--rm",
        "--runc-binary",
        runtime.to_str().unwrap(),
        "--annotation",
        "org.feather.base=host",
        "--annotation",
        "org.feather.services=redis-server",
        image,
        "t1",
        "/bin/sh",
        "-c",
        "/usr/bin/redis-cli -h 127.0.0.1 set key from-the-copy >/dev/null; \
         /usr/bin/redis-cli -h 127.0.0.1 get key; \
         /usr/bin/redis-cli -h 127.0.0.1 ping",
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.stdout, "from-the-copy\nPONG\n", "{outcome:?}");
}

fn feather_svc_program() -> &'static str {
    "feather-svcd"
}

#[test]
fn feather_ls_and_ps_show_oci_containers() {
    let scratch = Scratch::new("feather-ls");
    let runtime = Runtime::new(&scratch);
    let id = format!("listed-{}", std::process::id());
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "100"]));
    let created = runtime.create(&id, &bundle, &scratch.path("output"));
    assert_eq!(created.code, 0, "{created:?}");
    assert_eq!(runtime.run(&["start", &id]).code, 0);
    let feather = |args: &[&str]| {
        run(std::process::Command::new(sibling("feather"))
            .env("FEATHER_POOL", "0")
            .arg("--root")
            .arg(scratch.path("feather-root"))
            .args(args))
    };
    let root = std::fs::canonicalize(&runtime.root).unwrap();

    let listed = feather(&["ls", "--oci", "--json"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    let containers: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    let ours = containers
        .iter()
        .find(|c| c["id"] == id.as_str() && c["runtime_root"] == root.to_str().unwrap())
        .unwrap_or_else(|| panic!("{id} in {}: {listed:?}", root.display()));
    assert_eq!(ours["status"], "running");
    assert_eq!(ours["processes"], 1);
    let table = feather(&["ls"]);
    assert!(
        table.stdout.contains("OCI CONTAINER") && table.stdout.contains(&id),
        "{table:?}"
    );
    assert_eq!(feather(&["ls", "--json"]).stdout.trim(), "[]", "VMs only");

    for args in [
        vec!["ps", id.as_str(), "--json"],
        vec![
            "ps",
            id.as_str(),
            "--json",
            "--runtime-root",
            root.to_str().unwrap(),
        ],
    ] {
        let ps = feather(&args);
        assert_eq!(ps.code, 0, "{ps:?}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&ps.stdout).unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["pid"], 1);
        assert_eq!(rows[0]["command"], "sleep 100");
    }
    let missing = feather(&["ps", "no-such-vm-or-container"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("no VM named"), "{missing:?}");

    assert_eq!(runtime.run(&["delete", "--force", &id]).code, 0);
    let after = feather(&["ls", "--oci", "--json"]);
    assert!(!after.stdout.contains(&id), "{after:?}");
}

#[test]
fn a_service_that_cannot_start_fails_create_and_leaves_nothing() {
    sibling(feather_svc_program());
    let scratch = Scratch::new("services-missing");
    let runtime = Runtime::new(&scratch);
    runtime.allow_annotations(&["org.feather.base=host", "org.feather.services"]);
    let mut config = base_config(&["true"]);
    config["annotations"] = json!({
        "org.feather.base": "host",
        "org.feather.services": "feather-no-such-unit"
    });
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let id = format!("svc-missing-{}", std::process::id());
    let outcome = runtime.create(&id, &bundle, &scratch.path("output"));
    assert_ne!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stderr.contains("feather-no-such-unit"),
        "the error names the unit: {outcome:?}"
    );
    let listed = runtime.run(&["list", "-q"]);
    assert_eq!(listed.stdout.trim(), "", "{listed:?}");
    let cgroup = PathBuf::from("/sys/fs/cgroup/pids/feather-oci").join(&id);
    let gone = crate::support::eventually(std::time::Duration::from_secs(30), || !cgroup.exists());
    assert!(
        gone,
        "the container's cgroup (and the service manager in it) is gone"
    );
}

#[test]
fn podman_run_over_the_host_with_a_duplicated_host_service() {
    sibling(feather_svc_program());
    let scratch = Scratch::new("podman-services");
    let runtime = runtime_allowing(&scratch, &["org.feather.base=host", "org.feather.services"]);
    let podman = Podman::new(&scratch, runtime.to_str().unwrap());
    let image = "localhost/feather-busybox:services";
    let tar = busybox_layer_tar(&scratch);
    let imported = podman.podman(&["import", tar.to_str().unwrap(), image]);
    assert_eq!(imported.code, 0, "{imported:?}");
    // `--network none`: a network namespace of its own, with only `lo`.
    let outcome = podman.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--annotation",
        "org.feather.base=host",
        "--annotation",
        "org.feather.services=redis-server",
        image,
        "/bin/sh",
        "-c",
        "/usr/bin/redis-cli -h 127.0.0.1 ping; cat /dev/null && echo DEVNULL=ok",
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    // podman's config denies every device and counts on the runtime's default allowed ones
    // (runc's), /dev/null among them.
    assert_eq!(outcome.stdout, "PONG\nDEVNULL=ok\n", "{outcome:?}");
}

/// feather's confinement keeps the host kernel's global knobs out of reach when the config
/// does not protect them itself (no `readonlyPaths`, no `maskedPaths`): a sysctl write is
/// refused and the kernel's timers (like its memory and keys) are masked, as in a feather VM. Without the confinement the
/// same config lets the container write the host's sysctl (the test writes back the value it
/// read: harmless) and read /proc/timer_list, as runc does.
#[test]
fn feather_confinement_protects_the_kernels_knobs_a_config_leaves_open() {
    let scratch = Scratch::new("knobs");
    let runtime = Runtime::new(&scratch);
    runtime.allow_annotations(&["org.feather.confine=none"]);
    let probe = "v=$(cat /proc/sys/vm/swappiness); \
                 if { echo $v > /proc/sys/vm/swappiness; } 2>/dev/null; then echo SYSCTL=written; else echo SYSCTL=refused; fi; \
                 if [ -n \"$(head -c 1 /proc/timer_list)\" ]; then echo TIMERS=visible; else echo TIMERS=masked; fi";
    let config = |confine: Option<&str>| {
        let mut config = base_config(&["sh", "-c", probe]);
        let linux = config["linux"].as_object_mut().unwrap();
        linux.remove("readonlyPaths");
        linux.remove("maskedPaths");
        if let Some(confine) = confine {
            config["annotations"] = json!({ "org.feather.confine": confine });
        }
        config
    };
    let confined = run_to_end(&runtime, &scratch, "knobs-confined", &config(None));
    assert_eq!(confined, "SYSCTL=refused\nTIMERS=masked\n");
    let open = run_to_end(&runtime, &scratch, "knobs-open", &config(Some("none")));
    assert_eq!(open, "SYSCTL=written\nTIMERS=visible\n");
}

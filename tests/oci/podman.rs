//! podman 4.3 (Debian 12's) with feather-oci as its `--runtime`, over an image the test
//! imports from a tar it builds. This machine withholds CAP_SYS_RESOURCE: podman's default
//! nofile and nproc limits cannot be set, so each run lowers them (as it must with runc).

use crate::support::{busybox_layer_tar, runtime_bin, Podman, Scratch};

const IMAGE: &str = "localhost/feather-busybox:test";
const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

fn ready(scratch: &Scratch) -> Podman {
    let podman = Podman::new(scratch, runtime_bin());
    let tar = busybox_layer_tar(scratch);
    let imported = podman.podman(&["import", tar.to_str().unwrap(), IMAGE]);
    assert_eq!(imported.code, 0, "{imported:?}");
    podman
}

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--network", "none"];
    args.extend(LIMITS);
    args.extend(extra);
    args
}

#[test]
fn podman_run_rm_exit_code_and_default_seccomp_profile() {
    let scratch = Scratch::new("podman-run");
    let podman = ready(&scratch);
    let outcome = podman.podman(&run_args(&[
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "grep Seccomp: /proc/self/status; id -u; exit 7",
    ]));
    assert_eq!(outcome.code, 7, "{outcome:?}");
    assert_eq!(
        outcome.stdout, "Seccomp:\t2\n0\n",
        "podman's default profile is loaded"
    );
    assert_eq!(
        podman.podman(&["ps", "-aq"]).stdout,
        "",
        "--rm removed the container"
    );
}

#[test]
fn podman_detached_exec_stop_rm() {
    let scratch = Scratch::new("podman-exec");
    let podman = ready(&scratch);
    let outcome = podman.podman(&run_args(&["-d", "--name", "c1", IMAGE, "sleep", "100"]));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let outcome = podman.podman(&["exec", "c1", "sh", "-c", "echo in; exit 6"]);
    assert_eq!(
        (outcome.code, outcome.stdout.as_str()),
        (6, "in\n"),
        "{outcome:?}"
    );
    let outcome = podman.podman(&["stop", "--time", "1", "c1"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let state = podman.podman(&["inspect", "--format", "{{.State.Status}}", "c1"]);
    assert_eq!(state.stdout.trim(), "exited", "{state:?}");
    assert_eq!(podman.podman(&["rm", "c1"]).code, 0);
}

//! Docker 20.10 (Debian 12's docker.io) with feather-oci as a configured runtime
//! (`"runtimes": {"feather": {"path": …}}`, `docker run --runtime feather`), over an image the
//! test imports from a tar it builds.

use crate::support::{busybox_layer_tar, Dockerd, Scratch};

#[test]
fn docker_run_rm_run_d_exec_stop_rm() {
    let scratch = Scratch::new("docker");
    let docker = Dockerd::start(&scratch);
    let tar = busybox_layer_tar(&scratch);
    let imported = docker.docker(&["import", tar.to_str().unwrap(), "feather-busybox:test"]);
    assert_eq!(imported.code, 0, "{imported:?}");
    let outcome = docker.docker(&[
        "run",
        "--rm",
        "--runtime",
        "feather",
        "feather-busybox:test",
        "sh",
        "-c",
        "grep Seccomp: /proc/self/status; exit 4",
    ]);
    assert_eq!(outcome.code, 4, "{outcome:?}");
    assert_eq!(
        outcome.stdout, "Seccomp:\t2\n",
        "Docker's default profile is loaded"
    );
    let outcome = docker.docker(&[
        "run",
        "-d",
        "--name",
        "d1",
        "--runtime",
        "feather",
        "feather-busybox:test",
        "sleep",
        "100",
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let outcome = docker.docker(&["exec", "d1", "sh", "-c", "echo in; exit 6"]);
    assert_eq!(
        (outcome.code, outcome.stdout.as_str()),
        (6, "in\n"),
        "{outcome:?}"
    );
    assert_eq!(docker.docker(&["stop", "-t", "1", "d1"]).code, 0);
    let state = docker.docker(&["inspect", "-f", "{{.State.Status}}", "d1"]);
    assert_eq!(state.stdout.trim(), "exited", "{state:?}");
    assert_eq!(docker.docker(&["rm", "d1"]).code, 0);
}

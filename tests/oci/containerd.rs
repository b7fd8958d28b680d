//! containerd 1.6 (Debian 12's) with feather-oci as the runc-compatible binary of its runc
//! shim (`ctr run --runc-binary`), over an OCI image the test builds and imports.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{
    busybox_image_tar, eventually, runtime_allowing, runtime_bin, with_terminal, Containerd,
    Scratch,
};

const IMAGE: &str = "docker.io/library/feather-busybox:test";

fn ready(scratch: &Scratch) -> Containerd {
    let containerd = Containerd::start(scratch);
    let tar = busybox_image_tar(scratch, IMAGE);
    let imported = containerd.ctr(&["images", "import", tar.to_str().unwrap()]);
    assert_eq!(imported.code, 0, "{imported:?}");
    containerd
}

#[test]
fn ctr_run_exit_codes_stdin_and_terminal() {
    let scratch = Scratch::new("containerd-run");
    let containerd = ready(&scratch);
    let bin = runtime_bin();
    let outcome = containerd.ctr_logged(&[
        "run",
        "--rm",
        "--runc-binary",
        bin,
        IMAGE,
        "t1",
        "sh",
        "-c",
        "echo hi; exit 3",
    ]);
    assert_eq!(outcome.code, 3, "{outcome:?}");
    assert_eq!(outcome.stdout, "hi\n");

    // What ctr prints of a task that exits right after writing may lose its end (see
    // `ctr_logged`), and stdin cannot go with a log file: the task's exit status says what
    // it read. ctr does not pass stdin's end on to the task (runc alike): read one line.
    let mut child = containerd
        .command()
        .args([
            "run",
            "--rm",
            "--runc-binary",
            bin,
            IMAGE,
            "t2",
            "sh",
            "-c",
            "read line; echo \"$line\" >&2; [ \"$line\" = 'through stdin' ] && exit 6",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(6), "{output:?}");

    // The exit status is the task's only when the line quotes the script as one argument.
    let line = format!(
        "ctr -a {} -n {} run --rm -t --runc-binary {bin} {IMAGE} t3 \
         sh -c 'tty; [ \"$(tty)\" = /dev/pts/0 ] && exit 5'",
        containerd.address.display(),
        containerd.namespace
    );
    let outcome = with_terminal(&line);
    assert_eq!(
        outcome.code, 5,
        "the task's terminal is /dev/pts/0: {outcome:?}"
    );
}

#[test]
fn ctr_exec_pause_resume_metrics_kill_delete() {
    let scratch = Scratch::new("containerd-task");
    let containerd = ready(&scratch);
    let bin = runtime_bin();
    let outcome = containerd.ctr(&[
        "run",
        "-d",
        "--runc-binary",
        bin,
        IMAGE,
        "t1",
        "sleep",
        "100",
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");

    let listed = crate::support::run(
        std::process::Command::new(bin)
            .arg("--root")
            .arg(containerd.runtime_root())
            .args(["list", "--format", "json"]),
    );
    assert!(
        listed.stdout.contains("\"id\":\"t1\""),
        "feather-oci lists the engine's container: {listed:?}"
    );

    let outcome = containerd.ctr_logged(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t1",
        "sh",
        "-c",
        "echo in; exit 4",
    ]);
    assert_eq!(
        (outcome.code, outcome.stdout.as_str()),
        (4, "in\n"),
        "{outcome:?}"
    );
    let outcome = containerd.ctr(&["task", "exec", "--exec-id", "e2", "t1", "no-such-program"]);
    assert_ne!(outcome.code, 0);
    assert!(
        outcome.stderr.contains("executable file not found"),
        "the runtime's error reaches the user: {outcome:?}"
    );

    assert_eq!(containerd.ctr(&["task", "pause", "t1"]).code, 0);
    assert!(containerd.ctr(&["task", "ls"]).stdout.contains("PAUSED"));
    assert_eq!(containerd.ctr(&["task", "resume", "t1"]).code, 0);
    assert!(containerd.ctr(&["task", "ls"]).stdout.contains("RUNNING"));

    let metrics = containerd.ctr(&["task", "metrics", "t1"]);
    assert!(
        metrics.stdout.contains("memory.usage_in_bytes"),
        "{metrics:?}"
    );
    let ps = containerd.ctr(&["task", "ps", "t1"]);
    assert_eq!(ps.stdout.lines().count(), 2, "one process: {ps:?}");

    assert_eq!(
        containerd
            .ctr(&["task", "kill", "-s", "SIGKILL", "t1"])
            .code,
        0
    );
    assert!(eventually(Duration::from_secs(10), || containerd
        .ctr(&["task", "ls"])
        .stdout
        .contains("STOPPED")));
    assert_eq!(containerd.ctr(&["task", "delete", "t1"]).code, 0);
    assert_eq!(containerd.ctr(&["containers", "rm", "t1"]).code, 0);
    assert!(
        !containerd.runtime_root().join("t1").exists(),
        "delete removed the runtime's state"
    );
}

#[test]
fn ctr_run_with_the_host_as_base() {
    let scratch = Scratch::new("containerd-host");
    let containerd = ready(&scratch);
    let marker = scratch.path("marker");
    std::fs::write(&marker, "host file\n").unwrap();
    let script = format!(
        "cat {m}; echo container > {m}; cat {m}",
        m = marker.display()
    );
    let runtime = runtime_allowing(&scratch, &["org.feather.base=host"]);
    let outcome = containerd.ctr_logged(&[
        "run",
        "--rm",
        "--runc-binary",
        runtime.to_str().unwrap(),
        "--annotation",
        "org.feather.base=host",
        IMAGE,
        "t1",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.stdout, "host file\ncontainer\n", "{outcome:?}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "host file\n");
}

//! runc's `run` (create and start in one, in the foreground or `--detach`ed) and the terminal
//! feather-oci relays itself when no `--console-socket` is given (`run`, `exec --tty`), tried
//! under a pseudo-terminal the test makes (script(1)).

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::{
    base_config, eventually, run, runtime_bin, with_terminal, Bundle, Runtime, Scratch,
};

#[test]
fn run_waits_for_the_program_exits_with_its_status_and_leaves_nothing() {
    let scratch = Scratch::new("run-status");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(
        &scratch,
        "bundle",
        &base_config(&["sh", "-c", "echo hello from run; exit 3"]),
    );
    let id = format!("run-{}", std::process::id());
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    assert_eq!(outcome.code, 3, "{outcome:?}");
    assert_eq!(outcome.stdout, "hello from run\n", "{outcome:?}");
    let left = runtime.run(&["list", "--quiet"]);
    assert_eq!(left.stdout.trim(), "", "deleted after its end: {left:?}");

    let kept = runtime.run(&["run", "--keep", "-b", bundle.dir.to_str().unwrap(), &id]);
    assert_eq!(kept.code, 3, "{kept:?}");
    assert_eq!(runtime.status(&id), "stopped");
    assert_eq!(runtime.run(&["delete", &id]).code, 0);
}

#[test]
fn run_detach_returns_while_the_program_runs() {
    let scratch = Scratch::new("run-detach");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "100"]));
    let id = format!("run-detach-{}", std::process::id());
    // The container keeps the command's stdio: a file, not a pipe the test would wait on.
    let output = fs::File::create(scratch.path("output")).unwrap();
    let status = runtime
        .command()
        .args(["run", "--detach", "--pid-file"])
        .arg(scratch.path("pid"))
        .arg("--bundle")
        .arg(&bundle.dir)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{:?}",
        fs::read_to_string(scratch.path("output"))
    );
    assert_eq!(runtime.status(&id), "running");
    let pid: i32 = fs::read_to_string(scratch.path("pid"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(runtime.state(&id)["pid"], pid);
    assert_eq!(runtime.run(&["kill", &id, "KILL"]).code, 0);
    runtime.wait_stopped(&id);
    assert_eq!(runtime.run(&["delete", &id]).code, 0);
}

#[test]
fn run_passes_the_signals_it_gets_on_to_the_program() {
    let scratch = Scratch::new("run-signal");
    let runtime = Runtime::new(&scratch);
    // The program is its pid namespace's init, which only a handled signal reaches.
    let bundle = Bundle::new(
        &scratch,
        "bundle",
        &base_config(&[
            "sh",
            "-c",
            "trap 'echo terminated; exit 7' TERM; touch /tmp/ready; while true; do sleep 0.05; done",
        ]),
    );
    let id = format!("run-signal-{}", std::process::id());
    let child = runtime
        .command()
        .args(["run", "--bundle"])
        .arg(&bundle.dir)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = bundle.dir.join("rootfs/tmp/ready");
    assert!(eventually(Duration::from_secs(20), || ready.exists()));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "terminated\n");
}

#[test]
fn run_relays_the_terminal_the_config_asks_for() {
    let scratch = Scratch::new("run-tty");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&[
        "sh",
        "-c",
        "tty; test -t 0 && echo stdin-is-a-terminal; exit 4",
    ]);
    config["process"]["terminal"] = json!(true);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let id = format!("run-tty-{}", std::process::id());
    let line = format!(
        "{} --root {} run --bundle {} {id}",
        runtime_bin(),
        runtime.root.display(),
        bundle.dir.display()
    );
    let outcome = with_terminal(&line);
    assert_eq!(outcome.code, 4, "{outcome:?}");
    assert!(outcome.stdout.contains("/dev/pts/0"), "{outcome:?}");
    assert!(
        outcome.stdout.contains("stdin-is-a-terminal"),
        "{outcome:?}"
    );
    assert_eq!(runtime.run(&["list", "--quiet"]).stdout.trim(), "");

    let detached = run(runtime.command().args([
        "run",
        "--detach",
        "--bundle",
        bundle.dir.to_str().unwrap(),
        &id,
    ]));
    assert_ne!(detached.code, 0);
    assert!(detached.stderr.contains("--console-socket"), "{detached:?}");
    assert_eq!(runtime.run(&["list", "--quiet"]).stdout.trim(), "");
}

#[test]
fn exec_tty_without_a_console_socket_relays_a_terminal() {
    let scratch = Scratch::new("exec-tty");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "100"]));
    let id = format!("exec-tty-{}", std::process::id());
    let created = runtime.create(&id, &bundle, &scratch.path("output"));
    assert_eq!(created.code, 0, "{created:?}");
    assert_eq!(runtime.run(&["start", &id]).code, 0);
    let line = format!(
        "{} --root {} exec --tty {id} sh -c 'tty; test -t 1 && echo stdout-is-a-terminal; exit 5'",
        runtime_bin(),
        runtime.root.display(),
    );
    let outcome = with_terminal(&line);
    assert_eq!(outcome.code, 5, "{outcome:?}");
    assert!(outcome.stdout.contains("/dev/pts/"), "{outcome:?}");
    assert!(
        outcome.stdout.contains("stdout-is-a-terminal"),
        "{outcome:?}"
    );

    let detached = runtime.run(&["exec", "--tty", "--detach", &id, "true"]);
    assert_ne!(detached.code, 0);
    assert!(detached.stderr.contains("--console-socket"), "{detached:?}");
    assert_eq!(runtime.run(&["delete", "--force", &id]).code, 0);
}

/// `--no-pivot`: the rootfs is moved onto `/` and chrooted into instead of pivot_root; the
/// program runs in it with its mounts and masks as with pivot_root.
#[test]
fn run_no_pivot_runs_the_program_in_its_rootfs_with_its_masks() {
    let scratch = Scratch::new("run-no-pivot");
    let runtime = Runtime::new(&scratch);
    let script = "cat /etc/passwd | head -c 5; echo; wc -c < /proc/timer_list; hostname";
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sh", "-c", script]));
    let outcome = runtime.run(&[
        "run",
        "--no-pivot",
        "--bundle",
        bundle.dir.to_str().unwrap(),
        "no-pivot",
    ]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.stdout, "root:\n0\nbox\n", "{outcome:?}");
}

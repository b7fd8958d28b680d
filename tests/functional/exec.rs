use std::io::Write;
use std::process::Stdio;

use crate::support::{running_vm, Feather, ScratchBase};

#[test]
fn exec_joins_the_same_running_vm() {
    let (feather, _base) = running_vm("exec-same");
    // /run is private to the VM and not in its layer: only the same VM sees the file.
    feather.sh("vm", "echo here > /run/marker");
    assert_eq!(
        feather.sh("vm", "cat /run/marker; hostname; cat /proc/1/comm"),
        "here\nvm\nfeather-init\n"
    );
    let ps: serde_json::Value = serde_json::from_str(&feather.ok(&["ps", "vm", "--json"])).unwrap();
    assert_eq!(ps[0]["pid"], 1);
}

#[test]
fn exec_takes_user_environment_and_working_directory() {
    let (feather, _base) = running_vm("exec-opts");
    assert_eq!(
        feather.ok(&["exec", "-u", "nobody", "vm", "--", "id", "-u"]),
        "65534\n"
    );
    assert_eq!(
        feather.ok(&["exec", "-w", "/tmp", "vm", "--", "pwd"]),
        "/tmp\n"
    );
    assert_eq!(
        feather.ok(&[
            "exec",
            "-e",
            "GREETING=hi there",
            "vm",
            "--",
            "sh",
            "-c",
            "echo $GREETING"
        ]),
        "hi there\n"
    );
    assert_eq!(
        feather.ok(&["exec", "vm", "--", "sh", "-c", "echo $container"]),
        "feather\n"
    );
    let missing = feather.run(&["exec", "-u", "nosuchuser", "vm", "--", "true"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("nosuchuser"), "{}", missing.stderr);
}

#[test]
fn exec_passes_stdin_and_exit_codes() {
    let (feather, _base) = running_vm("exec-stdio");
    let mut child = feather
        .command()
        .args([
            "exec",
            "vm",
            "--",
            "sh",
            "-c",
            "read line; echo got:$line; exit 42",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "got:hello\n");
    assert_eq!(output.status.code(), Some(42));
}

#[test]
fn exec_with_a_terminal_gets_one_of_the_vms_own() {
    let (feather, _base) = running_vm("exec-tty");
    let out = feather.ok(&[
        "exec",
        "-t",
        "vm",
        "--",
        "sh",
        "-c",
        "readlink /proc/self/fd/0; test -t 1 && echo is-a-tty",
    ]);
    assert_eq!(out.replace('\r', ""), "/dev/pts/0\nis-a-tty\n");
}

/// `exec -t` opens the VM's terminal from the VM's mounts, then goes back to the host's. Left
/// in the VM's mount namespace, its process held it, and the VM's mounts with it, past the
/// VM's end and its keeper's, which a start of the VM waits for before it mounts the VM's layer
/// (a second overlay of the same layer, which overlayfs warns is undefined).
#[test]
fn exec_with_a_terminal_leaves_the_vm_s_mounts_once_it_has_the_terminal() {
    let (feather, _base) = running_vm("exec-tty-mounts");
    let init = feather.inspect("vm")["state"]["init_pid"].as_i64().unwrap();
    let vm_mounts = std::fs::read_link(format!("/proc/{init}/ns/mnt")).unwrap();
    let host_mounts = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(vm_mounts, host_mounts);
    let mut front = feather
        .command()
        .args(["exec", "-t", "vm", "--", "sh", "-c", "echo up; sleep 100"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(front.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim_end(), "up");
    let front_mounts = std::fs::read_link(format!("/proc/{}/ns/mnt", front.id()));
    let _ = front.kill();
    let _ = front.wait();
    assert_eq!(
        front_mounts.unwrap(),
        host_mounts,
        "the front's mount namespace (the VM's is {vm_mounts:?})"
    );
}

#[test]
fn signals_reach_the_command() {
    let (feather, _base) = running_vm("exec-signal");
    // SIGINT as a terminal's Ctrl-C delivers it to feather (the command runs in a session of
    // its own inside the VM), and SIGTERM as `kill` would: both must reach the command, once.
    for (signal, name) in [
        (nix::sys::signal::Signal::SIGINT, "INT"),
        (nix::sys::signal::Signal::SIGTERM, "TERM"),
    ] {
        let script =
            format!("trap 'echo caught; exit 5' {name}; echo ready; while :; do sleep 0.05; done");
        let mut child = feather
            .command()
            .args(["exec", "vm", "--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 6];
        std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
        assert_eq!(&first, b"ready\n");
        nix::sys::signal::kill(pid, signal).unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        assert_eq!(rest, "caught\n", "{name}");
        assert_eq!(child.wait().unwrap().code(), Some(5), "{name}");
    }
}

#[test]
fn a_command_whose_exec_is_killed_gets_a_hang_up() {
    let (feather, _base) = running_vm("exec-hangup");
    // init forks the command; when the `feather exec` that asked for it dies, the command is
    // told as by a terminal's hang-up.
    let script = "trap 'echo hup > /run/hup; exit 0' HUP; echo ready; while :; do sleep 0.05; done";
    let mut child = feather
        .command()
        .args(["exec", "vm", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    child.kill().unwrap();
    child.wait().unwrap();
    feather.eventually("the command got SIGHUP", || {
        feather.run(&["exec", "vm", "--", "cat", "/run/hup"]).stdout == "hup\n"
    });
}

/// Started with stdin, stdout and stderr closed, the front holds /dev/null in their places, as
/// Rust's runtime (which it starts without) would: no descriptor it opens for its work (the
/// VM's pidfd, init's socket, the command's pipes) is taken for one of them, where its
/// messages and the command's output would be written.
#[test]
fn exec_started_with_closed_stdio_holds_dev_null_in_their_places() {
    let (feather, _base) = running_vm("exec-closed-stdio");
    let mut front = std::process::Command::new("sh")
        .args([
            "-c",
            "exec 0<&- 1>&- 2>&- \"$0\" \"$@\"",
            Feather::bin(),
            "--root",
        ])
        .arg(&feather.root)
        .args([
            "exec",
            "vm",
            "--",
            "sh",
            "-c",
            "touch /run/started; exec sleep 60",
        ])
        .spawn()
        .unwrap();
    feather.eventually("the command runs", || {
        feather
            .run(&["exec", "vm", "--", "test", "-e", "/run/started"])
            .code
            == 0
    });
    let held: Vec<String> = (0..3)
        .map(
            |fd| match std::fs::read_link(format!("/proc/{}/fd/{fd}", front.id())) {
                Ok(target) => target.display().to_string(),
                Err(e) => format!("nothing ({e})"),
            },
        )
        .collect();
    front.kill().unwrap();
    front.wait().unwrap();
    assert_eq!(held, ["/dev/null"; 3]);
}

#[test]
fn exec_into_a_stopped_vm_is_refused() {
    let feather = Feather::new("exec-stopped");
    let base = ScratchBase::new("exec-stopped");
    feather.ok(&["create", "idle", "--base", base.as_str()]);
    let outcome = feather.run(&["exec", "idle", "--", "true"]);
    assert_eq!(outcome.code, 125);
    assert_eq!(
        outcome.stderr,
        "feather: VM idle is not running (start it with `feather start idle`)\n"
    );
}

#[test]
fn commands_get_default_signal_actions() {
    let (feather, _base) = running_vm("exec-sigpipe");
    // With SIGPIPE ignored (as Rust leaves it), `yes` would see EPIPE and report an error
    // instead of dying quietly when `head` exits.
    let outcome = feather.run(&["exec", "vm", "--", "sh", "-c", "yes | head -n 2"]);
    assert_eq!(
        (outcome.stdout.as_str(), outcome.stderr.as_str()),
        ("y\ny\n", "")
    );
    let masks = feather.ok(&[
        "exec",
        "vm",
        "--",
        "grep",
        "-E",
        "^(SigIgn|SigBlk)",
        "/proc/self/status",
    ]);
    assert_eq!(
        masks,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
}

#[test]
fn only_the_command_joins_the_vms_cgroup() {
    let (feather, _base) = running_vm("exec-cgroup");
    let mut relay = feather
        .command()
        .args(["exec", "vm", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    let members = || -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&feather.ok(&["ps", "vm", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    // init, its spawner and the command.
    feather.eventually("the command runs", || members().len() == 3);
    // The command is in the VM's group; the feather process relaying for it is not: it must not
    // count against the VM's limits nor be a candidate for the VM's OOM killer.
    let host_pids: Vec<i64> = members()
        .iter()
        .map(|p| p["host_pid"].as_i64().unwrap())
        .collect();
    assert!(!host_pids.contains(&(relay.id() as i64)), "{host_pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(relay.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(relay.wait().unwrap().code(), Some(128 + 15));
}

/// An exec makes nothing a throw-away VM's teardown could meet: it does not wait for one under
/// way (here one whose keeper lock the test holds, as a finisher would).
#[test]
fn exec_does_not_wait_for_a_throw_away_vms_teardown() {
    let (feather, _base) = running_vm("exec-nowait");
    let aside = feather.root.join("vms/.removing-gone-0123456789abcdef");
    std::fs::create_dir_all(&aside).unwrap();
    let lock = std::fs::File::create(aside.join("keeper.lock")).unwrap();
    lock.lock().unwrap();
    let mut exec = feather
        .command()
        .args(["exec", "vm", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A hang detector, not a speed target: an exec takes milliseconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = exec.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(lock);
    let status = status.unwrap_or_else(|| {
        let _ = exec.wait();
        panic!("exec waited for the teardown of another VM");
    });
    assert!(status.success());
    std::fs::remove_dir_all(&aside).unwrap();
}

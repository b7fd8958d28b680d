use crate::support::{Feather, LoneFeather, ScratchBase};

#[test]
fn create_start_stop_rm_round_trip() {
    let feather = Feather::new("lifecycle");
    feather.ok(&["create", "web1"]);
    assert_eq!(feather.status("web1"), "created");
    feather.ok(&["start", "web1"]);
    assert_eq!(feather.status("web1"), "running");
    let listing: serde_json::Value = serde_json::from_str(&feather.ok(&["ls", "--json"])).unwrap();
    assert_eq!(listing[0]["name"], "web1");
    assert_eq!(listing[0]["status"], "running");
    assert!(listing[0]["processes"].as_u64().unwrap() >= 1);
    let cgroups = feather.cgroup_dirs("web1");
    assert!(
        cgroups.iter().all(|dir| dir.exists()),
        "cgroup made in every hierarchy: {cgroups:?}"
    );

    feather.ok(&["stop", "web1"]);
    assert_eq!(feather.status("web1"), "stopped");
    assert!(
        cgroups.iter().all(|dir| !dir.exists()),
        "stop removed the cgroup"
    );
    assert!(
        !feather.root.join("run/web1").exists(),
        "stop removed the control socket"
    );

    feather.ok(&["rm", "web1"]);
    assert!(!feather.vm_dir("web1").exists());
    assert!(feather.ok(&["ls", "--json"]).trim() == "[]");
}

#[test]
fn a_missing_keeper_binary_is_named_and_nothing_is_left_running() {
    let feather = Feather::new("lone-keeper");
    let lone = LoneFeather::new("keeper");
    let created = lone.run(&feather, &["create", "vm"]);
    assert!(created.status.success(), "{created:?}");
    let started = lone.run(&feather, &["start", "vm"]);
    let e = String::from_utf8_lossy(&started.stderr);
    assert!(!started.status.success(), "{e}");
    let missing = lone.dir.join("feather-keeper");
    assert!(
        e.contains(&format!(
            "cannot start its keeper: {} is missing",
            missing.display()
        )),
        "{e}"
    );
    assert_ne!(feather.status("vm"), "running");
    // With the keeper's binary beside it, the same feather starts the VM, and its init runs
    // that binary too.
    lone.add("feather-keeper");
    let started = lone.run(&feather, &["start", "vm"]);
    assert!(started.status.success(), "{started:?}");
    assert_eq!(feather.status("vm"), "running");
    let init = feather.inspect("vm")["state"]["init_pid"].as_i64().unwrap();
    let command = std::fs::read(format!("/proc/{init}/cmdline")).unwrap();
    let command = String::from_utf8_lossy(&command).replace('\0', " ");
    assert!(
        command.contains("/.feather-init/feather-keeper __init "),
        "{command}"
    );
}

#[test]
fn run_starts_the_vm_and_returns_the_exit_code() {
    let feather = Feather::new("run-exit");
    let base = ScratchBase::new("run-exit");
    feather.ok(&["create", "job", "--base", base.as_str()]);
    assert_eq!(
        feather
            .run(&["run", "job", "--", "sh", "-c", "exit 3"])
            .code,
        3
    );
    assert_eq!(
        feather.status("job"),
        "running",
        "run leaves the VM running"
    );
    assert_eq!(feather.run(&["run", "job", "--", "true"]).code, 0);
    assert_eq!(
        feather
            .run(&["run", "job", "--", "sh", "-c", "kill -9 $$"])
            .code,
        137
    );
    let missing = feather.run(&["run", "job", "--", "no-such-program"]);
    assert_eq!(missing.code, 127);
    assert!(
        missing
            .stderr
            .contains("no-such-program: command not found"),
        "{}",
        missing.stderr
    );
}

#[test]
fn run_creates_a_missing_vm_with_the_given_options() {
    let feather = Feather::new("run-create");
    let base = ScratchBase::new("run-create");
    assert_eq!(
        feather.ok(&[
            "run",
            "--base",
            base.as_str(),
            "--pids",
            "50",
            "fresh",
            "--",
            "echo",
            "made"
        ]),
        "made\n"
    );
    let config = feather.inspect("fresh")["config"].clone();
    assert_eq!(config["limits"]["pids"], 50);
    assert_eq!(config["base"], base.as_str());
}

#[test]
fn run_rm_leaves_nothing_behind() {
    let feather = Feather::new("run-rm");
    let base = ScratchBase::new("run-rm");
    let outcome = feather.run(&[
        "run",
        "--rm",
        "--base",
        base.as_str(),
        "--",
        "sh",
        "-c",
        "echo inside; hostname; exit 7",
    ]);
    assert_eq!(outcome.code, 7, "{}", outcome.stderr);
    assert!(outcome.stdout.starts_with("inside\n"));
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
    let left: Vec<_> = std::fs::read_dir(feather.root.join("vms"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "state left behind: {left:?}");
}

#[test]
fn stop_ends_every_process_of_the_vm() {
    let feather = Feather::new("stop-all");
    let base = ScratchBase::new("stop-all");
    feather.start_over("busy", &base, &[]);
    // Daemons that ignore SIGTERM are killed after the grace period.
    feather.sh(
        "busy",
        "(trap '' TERM; sleep 1000) >/dev/null 2>&1 & sleep 1000 >/dev/null 2>&1 &",
    );
    let before: serde_json::Value =
        serde_json::from_str(&feather.ok(&["ps", "busy", "--json"])).unwrap();
    let host_pids: Vec<i64> = before
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["host_pid"].as_i64().unwrap())
        .collect();
    assert!(host_pids.len() >= 3, "init and two sleeps: {before}");
    feather.ok(&["stop", "--time", "1", "busy"]);
    for pid in host_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived stop"
        );
    }
}

#[test]
fn run_rm_with_a_terminal_gives_one_and_leaves_nothing() {
    let feather = Feather::new("run-rm-tty");
    let base = ScratchBase::new("run-rm-tty");
    let outcome = feather.run(&[
        "run",
        "--rm",
        "-t",
        "--base",
        base.as_str(),
        "--",
        "sh",
        "-c",
        "test -t 0 && echo tty; exit 4",
    ]);
    assert_eq!(
        (outcome.code, outcome.stdout.replace('\r', "")),
        (4, "tty\n".to_owned()),
        "{}",
        outcome.stderr
    );
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
}

#[test]
fn a_throw_away_vm_can_be_listed_entered_and_stopped_while_it_runs() {
    let feather = Feather::new("run-rm-live");
    let base = ScratchBase::new("run-rm-live");
    // `--pids max`: no limit at all (every VM has a pids limit unless told otherwise).
    for (limits, has_cgroup) in [
        (vec!["--pids", "max"], false),
        (vec!["--memory", "64M"], true),
    ] {
        let mut args = vec!["run", "--rm", "--base", base.as_str()];
        args.extend(limits);
        args.extend(["tmp", "--", "sleep", "60"]);
        let mut run = feather.command().args(&args).spawn().unwrap();
        feather.eventually("the throw-away VM runs", || {
            feather
                .run(&["inspect", "tmp"])
                .stdout
                .contains("\"running\"")
        });
        // Without any limit it skips the cgroup (faster start); its processes are found all
        // the same.
        assert_eq!(
            feather.inspect("tmp")["cgroup"]
                .as_array()
                .unwrap()
                .is_empty(),
            !has_cgroup
        );
        // The workload may still be on its way from fork to exec when the VM reports up.
        let commands = || -> Vec<String> {
            let ps: serde_json::Value =
                serde_json::from_str(&feather.ok(&["ps", "tmp", "--json"])).unwrap();
            ps.as_array()
                .unwrap()
                .iter()
                .map(|p| p["command"].as_str().unwrap().to_owned())
                .collect()
        };
        feather.eventually("ps shows init and the command", || {
            commands().len() == 2 && commands()[1] == "sleep 60"
        });
        assert_eq!(feather.sh("tmp", "echo inside"), "inside\n");
        feather.ok(&["stop", "--time", "1", "tmp"]);
        let status = run.wait().unwrap();
        assert_eq!(status.code(), Some(128 + 15), "sleep ended by SIGTERM");
        assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
    }
}

#[test]
fn a_vm_starts_again_right_after_it_stopped() {
    let feather = Feather::new("restart");
    let base = ScratchBase::new("restart");
    feather.ok(&["create", "--net", "none", "again", "--base", base.as_str()]);
    for round in 0..10 {
        feather.ok(&["start", "again"]);
        assert_eq!(
            feather.sh("again", "echo $((1 + 1))"),
            "2\n",
            "round {round}"
        );
        feather.ok(&["stop", "--time", "1", "again"]);
    }
}

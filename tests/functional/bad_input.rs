use std::process::{Command, Stdio};

use crate::support::{Feather, Outcome, ScratchBase};

/// Asserts a one-line error that says `expected`, a non-zero exit, and no VM left behind.
fn refused(feather: &Feather, args: &[&str], expected: &str) {
    let outcome = feather.run(args);
    assert_ne!(outcome.code, 0, "feather {args:?} succeeded");
    assert!(
        outcome.stderr.starts_with("feather: ") || outcome.stderr.starts_with("error: "),
        "{args:?}: {}",
        outcome.stderr
    );
    assert_eq!(
        outcome.stderr.trim_end().lines().count(),
        1,
        "{args:?}: one line, got {:?}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains(expected),
        "{args:?}: {:?} lacks {expected:?}",
        outcome.stderr
    );
}

#[test]
fn invalid_names_are_refused_and_nothing_is_made() {
    let feather = Feather::new("bad-names");
    let long = "a".repeat(49);
    for (name, why) in [
        ("../x", "use only lowercase"),
        ("", "it is empty"),
        (long.as_str(), "longer than 48"),
        ("Web", "use only lowercase"),
        ("x-", "start or end"),
    ] {
        refused(&feather, &["create", name], why);
    }
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
}

#[test]
fn a_duplicate_create_is_refused_and_the_first_vm_is_untouched() {
    let feather = Feather::new("bad-dup");
    let base = ScratchBase::new("bad-dup");
    feather.ok(&["create", "one", "--base", base.as_str(), "--memory", "64M"]);
    refused(&feather, &["create", "one"], "VM one already exists");
    assert_eq!(
        feather.inspect("one")["config"]["limits"]["memory"],
        64 << 20
    );
}

/// `create --start` over a name taken is refused as `create` is, and the VM of that name is
/// not started by it.
#[test]
fn a_duplicate_create_with_start_starts_nothing() {
    let feather = Feather::new("bad-dup-start");
    let base = ScratchBase::new("bad-dup-start");
    feather.ok(&["create", "one", "--base", base.as_str(), "--net", "none"]);
    refused(
        &feather,
        &["create", "--start", "one", "--net", "none"],
        "VM one already exists",
    );
    assert_eq!(feather.status("one"), "created");
}

#[test]
fn a_missing_vm_is_named_by_every_command() {
    let feather = Feather::new("bad-missing");
    for args in [
        vec!["start", "ghost"],
        vec!["stop", "ghost"],
        vec!["rm", "ghost"],
        vec!["exec", "ghost", "--", "true"],
        vec!["ps", "ghost"],
        vec!["inspect", "ghost"],
        vec!["diff", "ghost"],
        vec!["commit", "ghost"],
        vec!["reset", "ghost"],
    ] {
        refused(&feather, &args, "no VM named ghost");
    }
}

#[test]
fn a_missing_base_and_bad_limits_are_refused() {
    let feather = Feather::new("bad-base");
    refused(
        &feather,
        &["create", "x", "--base", "/nonexistent/tree"],
        "base /nonexistent/tree: not a directory",
    );
    refused(
        &feather,
        &["create", "x", "--memory", "lots"],
        "invalid size \"lots\"",
    );
    refused(&feather, &["create", "x", "--cpus", "0"], "--cpus");
    refused(&feather, &["create", "x", "--pids", "0"], "--pids");
    refused(&feather, &["run", "--", "true"], "name the VM");
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
}

#[test]
fn lifecycle_commands_in_the_wrong_state_are_refused() {
    let feather = Feather::new("bad-state");
    let base = ScratchBase::new("bad-state");
    feather.ok(&["create", "vm", "--base", base.as_str()]);
    refused(&feather, &["stop", "vm"], "VM vm is not running");
    refused(
        &feather,
        &["exec", "vm", "--", "true"],
        "VM vm is not running",
    );
    feather.ok(&["start", "vm"]);
    refused(&feather, &["start", "vm"], "is already running");
    refused(&feather, &["rm", "vm"], "VM vm is running (stop it first");
    refused(&feather, &["reset", "vm"], "VM vm is running");
    feather.ok(&["rm", "--force", "vm"]);
}

#[test]
fn a_user_other_than_root_is_told_to_use_root() {
    let feather = Feather::new("bad-user");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            Feather::bin(),
            "--root",
        ])
        .arg(&feather.root)
        .arg("ls")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "feather: feather must run as root (try `sudo feather ...`)\n"
    );
}

#[test]
fn a_base_inside_the_state_folder_is_refused() {
    let feather = Feather::new("bad-base-inside");
    let inside = feather.root.join("tree");
    std::fs::create_dir_all(&inside).unwrap();
    refused(
        &feather,
        &["create", "x", "--base", inside.to_str().unwrap()],
        "lies inside feather's state folder",
    );
}

#[test]
fn a_base_without_the_program_fails_cleanly() {
    let feather = Feather::new("bad-empty-base");
    let empty = ScratchBase::new("bad-empty-base");
    std::fs::remove_dir_all(empty.file("bin")).unwrap();
    let outcome = feather.run(&[
        "run",
        "--rm",
        "--base",
        empty.as_str(),
        "--",
        "/bin/sh",
        "-c",
        "true",
    ]);
    assert_eq!(outcome.code, 127, "{outcome:?}");
    assert_eq!(outcome.stderr, "feather: /bin/sh: command not found\n");
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
}

#[test]
fn output_to_a_reader_that_went_away_ends_quietly() {
    // `feather ls | head -0`: the reader closes before feather writes. Before, println!
    // panicked: status 101 and a backtrace.
    let feather = Feather::new("reader-gone");
    let base = ScratchBase::new("reader-gone");
    feather.ok(&["create", "quiet", "--base", base.as_str()]);
    for args in [&["ls"][..], &["ls", "--json"], &["inspect", "quiet"]] {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let outcome: Outcome = feather
            .command()
            .args(args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap()
            .into();
        assert_eq!(outcome.code, 0, "feather {args:?}: {outcome:?}");
        assert_eq!(outcome.stderr, "", "feather {args:?}: no panic, no message");
    }
}

/// `rm` of several VMs removes every one it can: a running one (without `--force`) and one that
/// does not exist are each named with why, and the others are gone; with `--force` the running
/// one goes too.
#[test]
fn rm_of_several_vms_removes_those_it_can_and_names_the_others() {
    let feather = Feather::new("bad-rm-several");
    let base = ScratchBase::new("bad-rm-several");
    for name in ["a", "b", "c"] {
        feather.ok(&["create", name, "--base", base.as_str()]);
    }
    feather.ok(&["start", "b"]);
    let stderr = feather.fails(&["rm", "a", "b", "ghost", "c"]);
    assert!(
        stderr.contains("2 of the 4 VMs were not removed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("b: VM b is running (stop it first"),
        "{stderr}"
    );
    assert!(stderr.contains("ghost: "), "{stderr}");
    let left: Vec<String> =
        serde_json::from_str::<Vec<serde_json::Value>>(&feather.ok(&["ls", "--json"]))
            .unwrap()
            .iter()
            .map(|vm| vm["name"].as_str().unwrap().to_owned())
            .collect();
    assert_eq!(left, ["b"], "a and c removed, b kept");
    feather.ok(&["rm", "--force", "b"]);
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
}

/// An I/O error names the path and says its cause once (the error's message quotes its source,
/// which the chain of causes would otherwise say again).
#[test]
fn an_io_error_says_its_cause_once() {
    let dir = crate::support::ScratchDir::new("io-once");
    std::fs::create_dir_all(&dir.path).unwrap();
    let file = dir.path.join("file");
    std::fs::write(&file, "not a folder").unwrap();
    let feather = Feather::at(file.join("root"));
    let outcome = feather.run(&["ls"]);
    assert_ne!(outcome.code, 0);
    assert_eq!(
        outcome.stderr.matches("(os error 20)").count(),
        1,
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains(&file.display().to_string()));
}

/// A linger that is not a number of seconds is refused before the throw-away VM is made
/// (the process that lingers later could tell no one).
#[test]
fn a_bad_network_linger_is_refused_naming_it() {
    let feather = Feather::new("bad-linger");
    let out = feather
        .command()
        .env("FEATHER_NETWORK_LINGER", "soon")
        .args(["run", "--rm", "--", "true"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{said}");
    assert!(
        said.contains("FEATHER_NETWORK_LINGER") && said.contains("soon"),
        "{said}"
    );
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
}

/// A caller whose open-file limit is below the descriptor numbers init keeps its sockets at
/// hears the limit and what to do, not a bare EINVAL from deep inside the start; nothing is
/// left, and a VM it could not start stays as it was.
#[test]
fn an_open_file_limit_too_low_for_init_is_named() {
    let feather = Feather::new("bad-nofile");
    let base = ScratchBase::new("bad-nofile");
    feather.ok(&["create", "kept", "--base", base.as_str()]);
    for args in [
        &["run", "--rm", "--base", base.as_str(), "--", "true"][..],
        &["start", "kept"],
    ] {
        let out = Command::new("prlimit")
            .arg("--nofile=64")
            .arg("--")
            .arg(Feather::bin())
            .arg("--root")
            .arg(&feather.root)
            .env(crate::support::NO_POOL, "0")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        // run says its own failure with 125 (its command's statuses are the others).
        let expected = if args[0] == "run" { 125 } else { 1 };
        assert_eq!(out.status.code(), Some(expected), "{args:?}: {said}");
        assert!(
            said.contains("`ulimit -n`) is 64") && said.contains("at least 102"),
            "{args:?}: {said}"
        );
    }
    assert_eq!(feather.status("kept"), "created");
    let names: Vec<String> =
        serde_json::from_str::<Vec<serde_json::Value>>(&feather.ok(&["ls", "--json"]))
            .unwrap()
            .iter()
            .map(|vm| vm["name"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(names, ["kept"]);
}

/// `FEATHER_POOL` other than 0 or 1 (`false`, `no`, ` 0`) is refused, naming it, before
/// anything is made: before, only `0` opted out and anything else silently ran in the pool.
#[test]
fn a_bad_feather_pool_is_refused_naming_it() {
    let feather = Feather::new("bad-pool");
    for value in ["false", " 0", "no"] {
        let out = feather
            .command()
            .env(crate::support::NO_POOL, value)
            .args(["run", "--rm", "--", "true"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{value:?}: {said}");
        assert!(said.contains("FEATHER_POOL"), "{said}");
    }
    assert_eq!(feather.ok(&["ls", "--json"]).trim(), "[]");
    assert!(!feather.root.join("pool/vms").exists());
}

//! Shuttle: application invocation and resource-name transfer. VM `a` (over the host's `/`, so
//! the feather binary is there as `feather-open`) asks to run an application in VM `b` (over a
//! busybox tree) and hands it a file that exists only in `a`'s private layer.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::support::{Feather, Outcome, ScratchBase};

/// Where `a` keeps the files it hands over; created in `a`'s layer only.
const DOCS: &str = "/srv/feather-shuttle-test";

/// Two VMs and a policy; `a` runs, `b` is created but not started (the invocation starts it).
struct Shuttle {
    feather: Feather,
    _base: ScratchBase,
    /// Host folder with the `feather-open` link (and what else the test puts there); `a` sees it
    /// through its lower layer.
    host_dir: HostDir,
}

/// A folder of the test's on the host, removed on drop.
struct HostDir(PathBuf);

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Shuttle {
    /// `policy`: the rules, written before `a` starts (its broker reads them then).
    fn new(label: &str, policy: &str) -> Shuttle {
        let feather = Feather::new(label);
        let base = ScratchBase::new(label);
        let host_dir = HostDir(PathBuf::from(format!(
            "/tmp/feather-tests/open-{label}-{}",
            std::process::id()
        )));
        let _ = fs::remove_dir_all(&host_dir.0);
        fs::create_dir_all(host_dir.0.join("bin")).unwrap();
        symlink(Feather::bin(), host_dir.0.join("bin/feather-open")).unwrap();
        fs::create_dir_all(feather.root.join("policy.d")).unwrap();
        fs::write(feather.root.join("policy.d/10-test.policy"), policy).unwrap();
        feather.ok(&["create", "a", "--net", "none"]);
        feather.ok(&["create", "b", "--base", base.as_str(), "--net", "none"]);
        feather.ok(&["start", "a"]);
        Shuttle {
            feather,
            _base: base,
            host_dir,
        }
    }

    fn feather_open(&self) -> String {
        self.host_dir
            .0
            .join("bin/feather-open")
            .display()
            .to_string()
    }

    /// Runs a shell script in `a`, where `$OPEN` is `feather-open`.
    fn in_a(&self, script: &str) -> Outcome {
        self.feather.run(&[
            "exec",
            "-e",
            &format!("OPEN={}", self.feather_open()),
            "a",
            "--",
            "sh",
            "-c",
            script,
        ])
    }

    fn policy_file(&self) -> String {
        self.feather
            .root
            .join("policy.d/10-test.policy")
            .display()
            .to_string()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.feather.root.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("audit lines are JSON"))
            .collect()
    }

    /// The audit line for `object` of `kind` with `outcome`, if any.
    fn audit_line(&self, kind: &str, object: &str, outcome: &str) -> Option<serde_json::Value> {
        self.audit()
            .into_iter()
            .find(|e| e["kind"] == kind && e["object"] == object && e["outcome"] == outcome)
    }

    fn init_pid(&self, vm: &str) -> i64 {
        self.feather.inspect(vm)["state"]["init_pid"]
            .as_i64()
            .expect("the VM runs")
    }

    /// Whether the process `pid` (as `b` numbers it) runs in `b`: it exists and is no zombie
    /// (one ended but not yet reaped still answers `kill -0`).
    fn alive_in_b(&self, pid: &str) -> bool {
        let stat = self
            .feather
            .run(&["exec", "b", "--", "cat", &format!("/proc/{pid}/stat")]);
        stat.code == 0 && running_state(&stat.stdout)
    }

    /// The hand-over mounts `b` has now.
    fn shared_mounts_in_b(&self) -> Vec<String> {
        fs::read_to_string(format!("/proc/{}/mountinfo", self.init_pid("b")))
            .unwrap()
            .lines()
            .filter(|line| line.contains("/run/feather/shared"))
            .map(str::to_owned)
            .collect()
    }
}

/// The peer groups (`shared:N`, `master:N`) of mountinfo `lines`.
fn peer_groups(lines: &str) -> Vec<String> {
    lines
        .split_whitespace()
        .filter(|field| field.starts_with("shared:") || field.starts_with("master:"))
        .map(|field| field.split(':').nth(1).unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_private_file_of_one_vm_opens_in_another_vms_viewer() {
    let shuttle = Shuttle::new(
        "open-view",
        "invoke viewer a b allow command=\"/bin/sh -c 'echo \\\"path=$0\\\"; cat \\\"$0\\\"; \
         grep feather/shared /proc/self/mountinfo'\"\n\
         files /srv/feather-shuttle-test/** a b allow mode=ro\n\
         invoke xdg-open a b allow command=/bin/cat\n",
    );
    assert_ne!(shuttle.feather.status("b"), "running");
    let opened = shuttle.in_a(&format!(
        "mkdir -p {DOCS} && echo 'only in a' > {DOCS}/note.txt && cd {DOCS} && $OPEN viewer note.txt"
    ));
    assert_eq!(opened.code, 0, "{}{}", opened.stdout, opened.stderr);
    // The file is a's alone: in its layer, not on the host.
    assert!(!Path::new(DOCS).join("note.txt").exists());
    assert!(shuttle
        .feather
        .vm_dir("a")
        .join("upper/srv/feather-shuttle-test/note.txt")
        .exists());
    // b was started for the request, got a rewritten path, and saw a's content there.
    assert_eq!(shuttle.feather.status("b"), "running");
    let lines: Vec<&str> = opened.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", opened.stdout);
    let path = lines[0].strip_prefix("path=").unwrap();
    assert!(
        path.starts_with("/run/feather/shared/") && path.ends_with("/note.txt"),
        "{path}"
    );
    assert_eq!(lines[1], "only in a");
    // Exactly one hand-over mount while it ran, in a peer group of none: a's tree is shared
    // (hiding reaches its every namespace), and a peer of a's mount would carry what is
    // mounted later under either VM's to the other (another hand-over's, writable, say).
    assert!(lines[2].contains("/run/feather/shared/"), "{}", lines[2]);
    let a_groups = peer_groups(
        &fs::read_to_string(format!("/proc/{}/mountinfo", shuttle.init_pid("a"))).unwrap(),
    );
    let handed = peer_groups(lines[2]);
    assert!(
        handed.iter().all(|group| !a_groups.contains(group)),
        "the hand-over is a peer of a's mount: {}",
        lines[2]
    );
    // When the viewer ended the mount went, and so did its folder.
    assert!(shuttle.shared_mounts_in_b().is_empty());
    assert_eq!(
        shuttle
            .feather
            .ok(&["exec", "b", "--", "ls", "-A", "/run/feather/shared"]),
        ""
    );
    // Both decisions are in the audit log, each with its rule.
    let rules = shuttle.policy_file();
    let invoke = shuttle
        .audit_line("invoke", "viewer", "allowed")
        .expect("the invocation is audited");
    assert_eq!(invoke["rule"], format!("{rules}:1"));
    assert_eq!(
        (invoke["source"].as_str(), invoke["target"].as_str()),
        (Some("a"), Some("b"))
    );
    assert!(invoke["detail"]
        .as_str()
        .unwrap()
        .contains("requested by pid"));
    let files = shuttle
        .audit_line("files", &format!("{DOCS}/note.txt"), "allowed")
        .expect("the hand-over is audited");
    assert_eq!(files["rule"], format!("{rules}:2"));
    // The xdg-open hook: first in PATH, it asks for the application `xdg-open`.
    let hook = shuttle.host_dir.0.join("hook");
    fs::create_dir_all(&hook).unwrap();
    symlink(Feather::bin(), hook.join("xdg-open")).unwrap();
    let opened = shuttle.in_a(&format!(
        "PATH={}:$PATH xdg-open {DOCS}/note.txt",
        hook.display()
    ));
    assert_eq!(
        (opened.code, opened.stdout.as_str()),
        (0, "only in a\n"),
        "{}",
        opened.stderr
    );
}

#[test]
fn mode_rw_writes_land_in_the_sources_layer_and_ro_refuses_them() {
    let shuttle = Shuttle::new(
        "open-rw",
        "invoke editor a b allow command=\"/bin/sh -c 'echo \\\"added in b\\\" >> \\\"$0\\\"'\"\n\
         files /srv/feather-shuttle-test/rw/** a b allow mode=rw\n\
         files /srv/feather-shuttle-test/** a b allow mode=ro\n\
         invoke lister a b allow command=\"/bin/sh -c 'echo $0; echo $1; echo $2; echo $(ls $0); echo $(cat $1 $2)'\"\n",
    );
    let setup = format!(
        "mkdir -p {DOCS}/rw {DOCS}/folder/sub && echo first > {DOCS}/rw/doc.txt \
         && echo first > {DOCS}/ro.txt && echo second > {DOCS}/folder/doc.txt"
    );
    assert_eq!(shuttle.in_a(&setup).code, 0);
    let edited = shuttle.in_a(&format!("$OPEN editor {DOCS}/rw/doc.txt"));
    assert_eq!(edited.code, 0, "{}", edited.stderr);
    assert_eq!(
        shuttle.feather.sh("a", &format!("cat {DOCS}/rw/doc.txt")),
        "first\nadded in b\n"
    );
    assert_eq!(
        fs::read_to_string(
            shuttle
                .feather
                .vm_dir("a")
                .join("upper/srv/feather-shuttle-test/rw/doc.txt")
        )
        .unwrap(),
        "first\nadded in b\n"
    );
    // A read-only hand-over: the editor's write fails in b and a's file stays as it was.
    let refused = shuttle.in_a(&format!("$OPEN editor {DOCS}/ro.txt"));
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("Read-only"), "{}", refused.stderr);
    assert_eq!(
        shuttle.feather.sh("a", &format!("cat {DOCS}/ro.txt")),
        "first\n"
    );
    // A folder is handed over whole; two arguments with one name each arrive apart.
    let listed = shuttle.in_a(&format!(
        "$OPEN lister {DOCS}/folder {DOCS}/rw/doc.txt {DOCS}/folder/doc.txt"
    ));
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", listed.stdout);
    assert!(lines[0].ends_with("/folder") && lines[1].ends_with("/doc.txt"));
    assert!(
        lines[2].ends_with("/doc.txt") && lines[1] != lines[2],
        "{}",
        listed.stdout
    );
    assert_eq!(lines[3], "doc.txt sub", "the folder's entries");
    assert_eq!(
        lines[4], "first added in b second",
        "both files, each its own"
    );
    assert!(shuttle.shared_mounts_in_b().is_empty());
}

/// The rules of the hand-over-outlives-its-source tests: `hold` leaves a process behind in
/// `b` that keeps the handed-over file open for writing (its pid in `/tmp/holder.pid`), `view`
/// just reads it; both with a writable hand-over.
const HOLDING_POLICY: &str = "invoke hold a b allow command=\"/bin/sh -c 'exec 3>>\\\"$0\\\"; \
     echo held >&3; busybox setsid sh -c \\\"while :; do sleep 1; done\\\" </dev/null >/dev/null \
     2>&1 & echo $! > /tmp/holder.pid'\"\n\
     invoke view a b allow command=/bin/cat\n\
     files /srv/feather-shuttle-test/** a b allow mode=rw\n";

/// A process of the target that keeps a writable hand-over open after its program ended does
/// not outlive the source: the source's stop ends it (and says so, in its output and in the
/// target's keeper log), so nothing writes the stopped source's layer, and the source's
/// `diff`, start and files are as it left them.
#[test]
fn a_file_held_in_the_target_is_let_go_when_its_source_stops() {
    let shuttle = Shuttle::new("open-held", HOLDING_POLICY);
    let setup = format!("mkdir -p {DOCS} && echo first > {DOCS}/doc.txt");
    assert_eq!(shuttle.in_a(&setup).code, 0);
    let held = shuttle.in_a(&format!("$OPEN hold {DOCS}/doc.txt"));
    assert_eq!(held.code, 0, "{}{}", held.stdout, held.stderr);
    // The program ended and its hand-over was unmounted; the process it left behind holds
    // the file all the same.
    assert!(shuttle.shared_mounts_in_b().is_empty());
    let holder = shuttle.feather.sh("b", "cat /tmp/holder.pid");
    let holder = holder.trim();
    assert!(
        shuttle.alive_in_b(holder),
        "the holder runs before the source stops"
    );
    // A process of b that holds nothing of a's is none of the stop's business.
    shuttle.feather.sh(
        "b",
        "busybox setsid sh -c 'while :; do sleep 1; done' </dev/null >/dev/null 2>&1 & \
         echo $! > /tmp/bystander.pid",
    );
    let bystander = shuttle.feather.sh("b", "cat /tmp/bystander.pid");
    let bystander = bystander.trim();
    assert!(shuttle.alive_in_b(bystander));
    let layer_file = shuttle
        .feather
        .vm_dir("a")
        .join("upper/srv/feather-shuttle-test/doc.txt");
    assert_eq!(fs::read_to_string(&layer_file).unwrap(), "first\nheld\n");

    let stopped = shuttle.feather.run(&["stop", "a"]);
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    assert!(
        !shuttle.alive_in_b(holder),
        "the holder outlived its source's stop"
    );
    assert!(
        shuttle.alive_in_b(bystander),
        "a process holding nothing of a's was ended"
    );
    assert!(
        stopped
            .stderr
            .contains("of VM b that still held files VM a had handed over to it: pid"),
        "the stop says what it ended: {}",
        stopped.stderr
    );
    let log = fs::read_to_string(shuttle.feather.vm_dir("b").join("keeper.log")).unwrap();
    assert!(
        log.contains("VM a stopped: ended"),
        "b's keeper log says why its process ended: {log}"
    );
    // b runs on; a's layer holds what was written while a ran, and a goes on as usual.
    assert_eq!(shuttle.feather.status("b"), "running");
    assert_eq!(fs::read_to_string(&layer_file).unwrap(), "first\nheld\n");
    let diff = shuttle.feather.ok(&["diff", "a"]);
    assert!(diff.contains(&format!("{DOCS}/doc.txt")), "{diff}");
    shuttle.feather.ok(&["start", "a"]);
    assert_eq!(
        shuttle.feather.sh("a", &format!("cat {DOCS}/doc.txt")),
        "first\nheld\n"
    );
}

/// An overlay without a UUID of its own (an upper layer marked impure and lacking
/// `trusted.overlay.uuid`: one an older kernel made, or copied without the attribute) reports
/// its upper folder's filesystem's id, which is the host's, where `b`'s init has its program:
/// that id is never searched for, so the source's stop ends nothing of `b` (it says it could
/// not look), and the source's layer stays refused while the holder lives.
#[test]
fn a_source_whose_overlay_has_no_uuid_of_its_own_ends_nothing_of_the_target() {
    let shuttle = Shuttle::new("open-nouuid", HOLDING_POLICY);
    shuttle.feather.ok(&["stop", "a"]);
    let upper = shuttle.feather.vm_dir("a").join("upper");
    let _ = xattr::remove(&upper, "trusted.overlay.uuid");
    xattr::set(&upper, "trusted.overlay.impure", b"y").unwrap();
    shuttle.feather.ok(&["start", "a"]);
    let setup =
        format!("mkdir -p {DOCS} && echo first > {DOCS}/doc.txt && $OPEN hold {DOCS}/doc.txt");
    let held = shuttle.in_a(&setup);
    assert_eq!(held.code, 0, "{}{}", held.stdout, held.stderr);
    let a_root = format!("/proc/{}/root", shuttle.init_pid("a"));
    let (of_a, of_upper) = (
        nix::sys::statvfs::statvfs(a_root.as_str()).unwrap(),
        nix::sys::statvfs::statvfs(&upper).unwrap(),
    );
    assert_eq!(
        of_a.filesystem_id(),
        of_upper.filesystem_id(),
        "a's overlay has no id of its own"
    );
    let holder = shuttle
        .feather
        .sh("b", "cat /tmp/holder.pid")
        .trim()
        .to_owned();
    let b_init = shuttle.init_pid("b");
    let b_init_program = nix::sys::statvfs::statvfs(format!("/proc/{b_init}/exe").as_str());
    assert_eq!(
        b_init_program.unwrap().filesystem_id(),
        of_upper.filesystem_id(),
        "b's init runs a program of the host's filesystem, which has a's id"
    );
    let stopped = shuttle.feather.run(&["stop", "a"]);
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    assert!(
        running(b_init as i32),
        "b's init was ended: {}",
        stopped.stderr
    );
    assert_eq!(shuttle.feather.status("b"), "running", "{}", stopped.stderr);
    assert!(shuttle.alive_in_b(&holder), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("cannot be told apart"),
        "the stop says it could not look: {}",
        stopped.stderr
    );
    // The kernel's check still guards the layer: refused while the holder lives.
    let refused = shuttle.feather.fails(&["start", "a"]);
    assert!(refused.contains("an overlay of its layer"), "{refused}");
    // The holder and its children (each `sleep` has the file too) end with b.
    shuttle.feather.ok(&["stop", "b"]);
    shuttle.feather.ok(&["start", "a"]);
}

/// Whether the host's process `pid` runs: it exists and is no zombie (one ended but not yet
/// reaped still answers `kill -0`).
fn running(pid: i32) -> bool {
    feather_testkit::stat::runs(pid)
}

/// Whether a `/proc/PID/stat` line is of a process that runs (no zombie, not dead).
fn running_state(stat: &str) -> bool {
    feather_testkit::stat::Stat::parse(stat).is_some_and(|stat| stat.runs())
}

/// `a` hands a file over to `b`'s `hold`, whose process keeps it open, and `a`'s keeper is
/// killed: nothing ended the holder. Returns the holder's pid in `b`.
fn held_and_keeper_killed(shuttle: &Shuttle) -> String {
    let setup =
        format!("mkdir -p {DOCS} && echo first > {DOCS}/doc.txt && $OPEN hold {DOCS}/doc.txt");
    let held = shuttle.in_a(&setup);
    assert_eq!(held.code, 0, "{}{}", held.stdout, held.stderr);
    let holder = shuttle
        .feather
        .sh("b", "cat /tmp/holder.pid")
        .trim()
        .to_owned();
    let keeper = shuttle.feather.kill_keeper("a");
    shuttle.feather.eventually("a's keeper is gone", || {
        !Path::new(&format!("/proc/{keeper}")).exists()
    });
    assert!(shuttle.alive_in_b(&holder), "nothing ended the holder yet");
    holder
}

/// A source whose keeper was killed (here while it ran; during its stop is the same) never
/// ended what its targets hold: the clean-up that its next start does ends it, as the stop
/// would have, and the start then goes on.
#[test]
fn a_source_whose_keeper_died_lets_go_of_its_hand_overs_when_it_is_recovered() {
    let shuttle = Shuttle::new("open-crash", HOLDING_POLICY);
    let holder = held_and_keeper_killed(&shuttle);
    shuttle.feather.ok(&["start", "a"]);
    assert!(
        !shuttle.alive_in_b(&holder),
        "the recovery did not end the holder"
    );
    let log = fs::read_to_string(shuttle.feather.vm_dir("b").join("keeper.log")).unwrap();
    assert!(log.contains("VM a stopped: ended"), "{log}");
    assert_eq!(
        shuttle.feather.sh("a", &format!("cat {DOCS}/doc.txt")),
        "first\nheld\n"
    );
}

/// A source's keeper killed while its stop held a target's group frozen (simulated: the group
/// frozen by hand and marked as the stop marks it) leaves the target frozen: the source's
/// clean-up thaws it, as the mark says the freeze was the source's, and ends the holder.
#[test]
fn a_target_a_killed_stop_left_frozen_is_thawed_by_the_sources_clean_up() {
    let shuttle = Shuttle::new("open-frozen", HOLDING_POLICY);
    let holder = held_and_keeper_killed(&shuttle);
    let group = shuttle
        .feather
        .cgroup_dirs("b")
        .into_iter()
        .find(|dir| dir.join("cgroup.freeze").exists())
        .expect("b has a v2 group");
    let freeze = group.join("cgroup.freeze");
    /// Thaws the group whatever the test's outcome: a frozen VM cannot be stopped.
    struct Thaw(PathBuf);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = fs::write(&self.0, "0");
        }
    }
    let _thaw = Thaw(freeze.clone());
    fs::write(shuttle.feather.vm_dir("a").join("handed-over.frozen.b"), "").unwrap();
    fs::write(&freeze, "1").unwrap();
    shuttle.feather.ok(&["start", "a"]);
    assert_eq!(
        fs::read_to_string(&freeze).unwrap().trim(),
        "0",
        "b was left frozen"
    );
    assert!(!shuttle.alive_in_b(&holder), "the holder was not ended");
    assert!(!shuttle
        .feather
        .vm_dir("a")
        .join("handed-over.frozen.b")
        .exists());
}

/// As above, but the target was since let go to another host by a post-copy migration (its
/// release record, written by hand here): its copy here may run there, so the source's
/// clean-up must leave it frozen. It thawed it: the VM ran at two hosts.
#[test]
fn a_target_let_go_by_a_migration_is_never_thawed_by_the_sources_clean_up() {
    let shuttle = Shuttle::new("open-released", HOLDING_POLICY);
    held_and_keeper_killed(&shuttle);
    let group = shuttle
        .feather
        .cgroup_dirs("b")
        .into_iter()
        .find(|dir| dir.join("cgroup.freeze").exists())
        .expect("b has a v2 group");
    let freeze = group.join("cgroup.freeze");
    let released = shuttle.feather.vm_dir("b").join("released-to");
    /// Lets the group go whatever the test's outcome: a frozen VM cannot be stopped.
    struct Undo(PathBuf, PathBuf);
    impl Drop for Undo {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.1);
            let _ = fs::write(&self.0, "0");
        }
    }
    let _undo = Undo(freeze.clone(), released.clone());
    fs::write(&released, "10.77.9.9:7777\n").unwrap();
    fs::write(shuttle.feather.vm_dir("a").join("handed-over.frozen.b"), "").unwrap();
    fs::write(&freeze, "1").unwrap();
    let started = shuttle.feather.run(&["start", "a"]);
    assert_eq!(
        fs::read_to_string(&freeze).unwrap().trim(),
        "1",
        "b, let go to another host, was thawed here: {}",
        started.stderr
    );
    assert!(
        started.stderr.contains("stays frozen"),
        "{}",
        started.stderr
    );
    assert!(!shuttle
        .feather
        .vm_dir("a")
        .join("handed-over.frozen.b")
        .exists());
}

/// The same source removed instead: its removal ends the holder and goes on.
#[test]
fn a_source_whose_keeper_died_lets_go_of_its_hand_overs_when_it_is_removed() {
    let shuttle = Shuttle::new("open-crash-rm", HOLDING_POLICY);
    let holder = held_and_keeper_killed(&shuttle);
    shuttle.feather.ok(&["rm", "a"]);
    assert!(
        !shuttle.alive_in_b(&holder),
        "the removal did not end the holder"
    );
    assert_eq!(shuttle.feather.status("b"), "running");
}

/// The second guard: while an overlay of a stopped source's layer still lives (here a process
/// of the host holds a file of it, which no target's search finds), the source's start, `diff`
/// and `commit` are refused, naming what holds it; once it is let go, all go on. (The commit
/// names a path that is not among the changes: refused either way, it never writes the host.)
#[test]
fn a_source_whose_old_overlay_lives_is_not_started_beside_it() {
    let shuttle = Shuttle::new("open-alive", HOLDING_POLICY);
    let setup =
        format!("mkdir -p {DOCS} && echo first > {DOCS}/doc.txt && $OPEN view {DOCS}/doc.txt");
    let viewed = shuttle.in_a(&setup);
    assert_eq!(
        (viewed.code, viewed.stdout.as_str()),
        (0, "first\n"),
        "{}",
        viewed.stderr
    );
    let held = fs::File::open(format!(
        "/proc/{}/root{DOCS}/doc.txt",
        shuttle.init_pid("a")
    ))
    .unwrap();
    shuttle.feather.ok(&["stop", "a"]);
    let me = format!("held by pid {}", std::process::id());
    for command in [
        &["start", "a"][..],
        &["diff", "a"],
        &["commit", "a", "/srv/feather-shuttle-test/none"],
    ] {
        let refused = shuttle.feather.fails(command);
        assert!(
            refused.contains("an overlay of its layer") && refused.contains(&me),
            "feather {command:?}: {refused}"
        );
    }
    assert_eq!(shuttle.feather.status("a"), "stopped");
    drop(held);
    shuttle.feather.ok(&["start", "a"]);
    assert_eq!(
        shuttle.feather.sh("a", &format!("cat {DOCS}/doc.txt")),
        "first\n"
    );
}

/// The kernel is asked about a stopped VM's layer only if the VM handed something over (each
/// probe writes a line to the kernel's log, which ordinary commands must not): a VM that handed
/// nothing over is not, and its `diff` goes on even while a host process keeps an old overlay
/// of it (not guarded, as before hand-overs).
#[test]
fn a_vm_that_handed_nothing_over_is_not_asked_about() {
    let shuttle = Shuttle::new("open-unasked", HOLDING_POLICY);
    assert_eq!(
        shuttle
            .in_a(&format!("mkdir -p {DOCS} && echo first > {DOCS}/doc.txt"))
            .code,
        0
    );
    let held = fs::File::open(format!(
        "/proc/{}/root{DOCS}/doc.txt",
        shuttle.init_pid("a")
    ))
    .unwrap();
    let keeper = shuttle.feather.inspect("a")["state"]["keeper_pid"]
        .as_i64()
        .unwrap();
    shuttle.feather.ok(&["stop", "a"]);
    // Its keeper's teardown, after the stop's answer, over (a live keeper is never asked
    // about either).
    shuttle
        .feather
        .eventually("a's keeper is gone", || !running(keeper as i32));
    assert!(!shuttle
        .feather
        .vm_dir("a")
        .join("handed-over.json")
        .exists());
    let diff = shuttle.feather.ok(&["diff", "a"]);
    assert!(diff.contains(&format!("{DOCS}/doc.txt")), "{diff}");
    drop(held);
}

/// The audit line a refusal leaves: kind, object, outcome, and the deciding rule's line.
type Expected<'a> = (&'a str, String, &'a str, Option<usize>);

#[test]
fn refused_requests_open_nothing_in_the_target_and_are_audited() {
    let shuttle = Shuttle::new(
        "open-refuse",
        "invoke viewer a b allow command=/bin/cat\n\
         invoke quiet a b allow command=/bin/true args=none\n\
         files /srv/feather-shuttle-test/secret* a b deny\n\
         files /srv/feather-shuttle-test/** a b allow\n\
         files /tmp/feather-tests/** a b allow\n\
         invoke asked a b ask command=/bin/cat\n",
    );
    // A device node, made on the host where a sees it (a's root may not make devices).
    let device = shuttle.host_dir.0.join("null-device");
    nix::sys::stat::mknod(
        &device,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let setup = format!(
        "mkdir -p {DOCS} /srv/elsewhere && echo doc > {DOCS}/note.txt && echo s > {DOCS}/secret.txt \
         && echo e > /srv/elsewhere/x.txt && ln -s /etc/passwd {DOCS}/passwd-link \
         && ln -s secret.txt {DOCS}/link-to-secret && mkfifo {DOCS}/fifo"
    );
    assert_eq!(shuttle.in_a(&setup).code, 0);
    let rules = shuttle.policy_file();
    let device = device.display().to_string();
    // (arguments, what stderr says, the audit line: kind, object, outcome, deciding rule line)
    let cases: Vec<(String, &str, Expected)> = vec![
        (
            format!("unlisted {DOCS}/note.txt"),
            "no rule allows it",
            ("invoke", "unlisted".into(), "denied", None),
        ),
        (
            "/srv/elsewhere/x.txt".into(),
            "no rule allows it",
            ("files", "/srv/elsewhere/x.txt".into(), "denied", None),
        ),
        (
            format!("{DOCS}/secret.txt"),
            "denied by rule",
            ("files", format!("{DOCS}/secret.txt"), "denied", Some(3)),
        ),
        (
            format!("{DOCS}/../elsewhere/x.txt"),
            "'..'",
            ("invoke", "viewer".into(), "failed", Some(1)),
        ),
        (
            format!("{DOCS}/passwd-link"),
            "leads to /etc/passwd",
            ("files", "/etc/passwd".into(), "denied", None),
        ),
        (
            format!("{DOCS}/link-to-secret"),
            "leads to /srv/feather-shuttle-test/secret.txt",
            ("files", format!("{DOCS}/secret.txt"), "denied", Some(3)),
        ),
        (
            device.clone(),
            "is a device",
            ("invoke", "viewer".into(), "failed", Some(1)),
        ),
        (
            format!("{DOCS}/fifo"),
            "is a FIFO",
            ("invoke", "viewer".into(), "failed", Some(1)),
        ),
        (
            format!("--number {DOCS}/note.txt"),
            "is not a path",
            ("invoke", "viewer".into(), "failed", Some(1)),
        ),
    ];
    for (args, says, (kind, object, outcome, line)) in cases {
        let app = if args.starts_with("unlisted") {
            ""
        } else {
            "viewer "
        };
        let before = shuttle.audit().len();
        let refused = shuttle.in_a(&format!("$OPEN {app}{args}"));
        assert_eq!(
            refused.code, 77,
            "{args}: {}{}",
            refused.stdout, refused.stderr
        );
        assert!(refused.stderr.contains(says), "{args}: {}", refused.stderr);
        assert_eq!(refused.stdout, "", "{args}: nothing ran");
        let new = &shuttle.audit()[before..];
        let entry = new
            .iter()
            .find(|e| {
                e["kind"] == kind && e["object"] == object.as_str() && e["outcome"] == outcome
            })
            .unwrap_or_else(|| panic!("{args}: no {kind} {object} {outcome} in {new:#?}"));
        match line {
            Some(line) => assert_eq!(entry["rule"], format!("{rules}:{line}"), "{args}"),
            None => assert!(entry.get("rule").is_none(), "{args}: {entry}"),
        }
    }
    // A command line in place of an application name never reaches the rules.
    let command = shuttle.in_a("$OPEN /bin/sh -c id");
    assert_eq!(command.code, 77);
    assert!(
        command.stderr.contains("not an application name"),
        "{}",
        command.stderr
    );
    let entry = shuttle.audit_line("invoke", "/bin/sh", "denied").unwrap();
    assert!(entry.get("rule").is_none(), "{entry}");
    // An `ask` rule with no one at a terminal to answer (the VM was started without one).
    let asked = shuttle.in_a(&format!("$OPEN asked {DOCS}/note.txt"));
    assert_eq!(asked.code, 77);
    assert!(
        asked.stderr.contains("asked: no terminal"),
        "{}",
        asked.stderr
    );
    let entry = shuttle.audit_line("invoke", "asked", "denied").unwrap();
    assert_eq!(entry["rule"], format!("{rules}:6"));
    assert_eq!(entry["verdict"], "ask");
    // An application that takes no arguments.
    let extra = shuttle.in_a(&format!("$OPEN quiet {DOCS}/note.txt"));
    assert_eq!(extra.code, 77);
    assert!(extra.stderr.contains("args=none"), "{}", extra.stderr);
    // Nothing reached b: it was never even started.
    assert_ne!(shuttle.feather.status("b"), "running");
}

#[test]
fn output_stdin_and_exit_status_travel_through_the_broker() {
    let shuttle = Shuttle::new(
        "open-stdio",
        "invoke echo a b allow command=/bin/echo args=any\n\
         invoke upper a b allow command=\"/bin/tr a-z A-Z\" args=none\n\
         invoke fail a b allow command=\"/bin/sh -c 'echo oops >&2; exit 3'\" args=none\n\
         invoke whoami a b allow command=\"/bin/id -u\" args=none\n\
         invoke sleeper a b allow command=\"/bin/sleep 1000\" args=none\n\
         invoke fds a b allow command=\"/bin/sh -c 'for fd in 0 1 2; do readlink /proc/self/fd/$fd; done'\" args=none\n",
    );
    shuttle.feather.ok(&["start", "b"]);
    // args=any: passed as they are, options included, nothing handed over.
    let echoed = shuttle.in_a("$OPEN echo --not-a-path /etc/hostname");
    assert_eq!(
        echoed.stdout, "--not-a-path /etc/hostname\n",
        "{}",
        echoed.stderr
    );
    let piped = shuttle.in_a("echo quiet please | $OPEN upper");
    assert_eq!(piped.stdout, "QUIET PLEASE\n", "{}", piped.stderr);
    let failed = shuttle.in_a("$OPEN fail");
    assert_eq!(failed.code, 3);
    assert_eq!(failed.stderr, "oops\n");
    // The program's stdio are the broker's pipes, never the requester's own descriptors.
    let fds = shuttle.in_a("$OPEN fds");
    let kinds: Vec<bool> = fds.stdout.lines().map(|l| l.starts_with("pipe:")).collect();
    assert_eq!(kinds, [true, true, true], "{}{}", fds.stdout, fds.stderr);
    // A requester that goes away ends its program in the target.
    let requester = shuttle.in_a("$OPEN sleeper >/dev/null 2>&1 & echo $!");
    let requester = requester.stdout.trim().to_owned();
    let sleeping = || shuttle.feather.ok(&["ps", "b"]).contains("sleep 1000");
    shuttle
        .feather
        .eventually("the program runs in b", sleeping);
    shuttle.feather.sh("a", &format!("kill {requester}"));
    shuttle
        .feather
        .eventually("the program in b ended", || !sleeping());
    // Each request reads the rules as they are now: a rule removed while the VM runs no
    // longer allows anything.
    let rules = shuttle.feather.root.join("policy.d/10-test.policy");
    let text = fs::read_to_string(&rules).unwrap();
    fs::write(&rules, text.replace("invoke echo", "invoke gone")).unwrap();
    let gone = shuttle.in_a("$OPEN echo hello");
    assert_eq!(gone.code, 77, "{}{}", gone.stdout, gone.stderr);
    fs::write(&rules, text).unwrap();
    // The program runs as the requester's uid.
    let uid = shuttle.feather.ok(&[
        "exec",
        "-u",
        "65534",
        "-e",
        &format!("OPEN={}", shuttle.feather_open()),
        "a",
        "--",
        "sh",
        "-c",
        "$OPEN whoami",
    ]);
    assert_eq!(uid, "65534\n");
}

#[test]
fn a_vm_without_invoke_rules_has_no_shuttle_socket() {
    let shuttle = Shuttle::new("open-none", "files /srv/** a b allow\n");
    let outcome = shuttle.in_a("test -e /run/feather/shuttle.sock || echo absent; $OPEN viewer");
    assert_eq!(outcome.stdout, "absent\n");
    assert_eq!(outcome.code, 125, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("cannot reach the shuttle"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn a_symlink_planted_in_the_target_does_not_redirect_the_hand_over() {
    let shuttle = Shuttle::new(
        "open-planted",
        "invoke viewer a b allow command=/bin/cat\n\
         files /srv/feather-shuttle-test/** a b allow\n",
    );
    assert_eq!(
        shuttle
            .in_a(&format!("mkdir -p {DOCS} && echo doc > {DOCS}/passwd"))
            .code,
        0
    );
    // b's root points the hand-over folder at its /etc, hoping a's file lands on its passwd.
    shuttle.feather.ok(&["start", "b"]);
    shuttle.feather.sh(
        "b",
        "mkdir -p /run/feather && ln -s /etc /run/feather/shared",
    );
    let before = shuttle.feather.sh("b", "cat /etc/passwd");
    let refused = shuttle.in_a(&format!("$OPEN viewer {DOCS}/passwd"));
    assert_eq!(refused.code, 125, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused
            .stderr
            .contains("/run/feather/shared in the target VM"),
        "{}",
        refused.stderr
    );
    assert_eq!(shuttle.feather.sh("b", "cat /etc/passwd"), before);
    assert!(shuttle.shared_mounts_in_b().is_empty());
    let failed = shuttle.audit_line("invoke", "viewer", "failed").unwrap();
    assert!(failed["detail"]
        .as_str()
        .unwrap()
        .contains("/run/feather/shared"));
}

//! Checkpoint and restore of whole VMs with CRIU: a VM's processes, with what they hold in
//! memory, come back where they were — same pids inside, same hostname, same files in /run —
//! kept by a keeper like any running VM. These tests need a working CRIU (setup.sh installs
//! one); without it they fail and say why, they never skip.

use feather_testkit::stat::runs;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    await_line_server, count, python_daemon, received_numbers, redis_cli, start_counting, Feather,
    ScratchBase, TestPort, LINE_CLIENT, LINE_SERVER,
};

/// A running VM to checkpoint, without a network of its own (see
/// a_vm_with_a_private_network_comes_back_with_its_address_and_published_port for one with).
fn offline_vm(label: &str) -> (Feather, ScratchBase) {
    let feather = Feather::new(label);
    let base = ScratchBase::new(label);
    feather.start_over("vm", &base, &["--net", "none"]);
    (feather, base)
}

/// A running VM `vm` whose shell loop counts in memory and writes each value to /run/count
/// every 50 ms, started by a plain `feather exec` as a user would (exec gives it a session
/// inside the VM); its stdio is the VM's /dev/null, as a daemon's would be.
fn counting_vm(label: &str) -> (Feather, ScratchBase) {
    let (feather, base) = offline_vm(label);
    feather.require_criu();
    start_counting(&feather, "vm");
    (feather, base)
}

/// (pid inside the VM, command) of the VM's init, its spawner and the counting loop. The loop's
/// short-lived children are left out: its `sleep` (also in the instant between its fork and
/// its exec, when it still shows the loop's command line) and `ps`'s own `cat`.
fn lasting_processes(feather: &Feather, vm: &str) -> Vec<(i64, String)> {
    let rows: serde_json::Value = serde_json::from_str(&feather.ok(&["ps", vm, "--json"])).unwrap();
    let rows: Vec<(i64, i64, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pid"].as_i64().unwrap(),
                p["host_pid"].as_i64().unwrap(),
                p["command"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let host_pids: Vec<i64> = rows.iter().map(|(_, host, _)| *host).collect();
    rows.iter()
        .filter(|(_, _, command)| !command.starts_with("sleep") && !command.starts_with("cat"))
        // A child of the loop (or one gone already) is one of its passing forks.
        .filter(|(_, host, command)| {
            command.starts_with("/run/.feather-init")
                || live_parent_of(*host).is_some_and(|parent| {
                    !host_pids.contains(&parent)
                        || rows.iter().any(|r| r.1 == parent && r.2 != *command)
                })
        })
        .map(|(pid, _, command)| (*pid, command.clone()))
        .collect()
}

/// The parent of host process `pid`, while it lives.
fn live_parent_of(pid: i64) -> Option<i64> {
    Some(
        feather_testkit::stat::Stat::of(u32::try_from(pid).ok()?)?
            .parent
            .into(),
    )
}

fn state_pid(feather: &Feather, vm: &str, key: &str) -> i64 {
    feather.inspect(vm)["state"][key]
        .as_i64()
        .unwrap_or_else(|| panic!("inspect shows no {key}: {}", feather.inspect(vm)))
}

/// The parent of host process `pid`.
fn parent_of(pid: i64) -> i64 {
    live_parent_of(pid).unwrap_or_else(|| panic!("no process {pid}"))
}

#[test]
fn checkpoint_and_restore_continue_where_the_vm_was() {
    let (feather, _base) = counting_vm("ckpt-restore");
    let processes = lasting_processes(&feather, "vm");
    assert_eq!(
        processes.len(),
        3,
        "init, its spawner and the loop: {processes:?}"
    );
    let old_init = state_pid(&feather, "vm", "init_pid");

    let before = count(&feather, "vm");
    feather.ok(&["checkpoint", "vm"]);
    assert_eq!(feather.status("vm"), "checkpointed");
    assert!(
        !Path::new(&format!("/proc/{old_init}")).exists(),
        "the VM's processes ended with the checkpoint"
    );
    assert!(feather
        .vm_dir("vm")
        .join("checkpoint/inventory.img")
        .exists());
    let not_running = feather.fails(&["exec", "vm", "--", "true"]);
    assert!(not_running.contains("not running"), "{not_running}");
    let reset = feather.fails(&["reset", "vm"]);
    assert!(reset.contains("is checkpointed"), "{reset}");
    let start = feather.fails(&["start", "vm"]);
    assert!(
        start.contains("checkpointed") && start.contains("feather restore vm"),
        "start says how to resume: {start}"
    );

    feather.ok(&["restore", "vm"]);
    assert_eq!(feather.status("vm"), "running");
    let resumed = count(&feather, "vm");
    assert!(
        resumed >= before,
        "the counter resumed from its value ({before}), not from 0: {resumed}"
    );
    feather.eventually("the restored loop counts on", || {
        count(&feather, "vm") > resumed
    });
    assert_eq!(
        lasting_processes(&feather, "vm"),
        processes,
        "same pids inside the VM"
    );
    assert_eq!(feather.sh("vm", "hostname").trim(), "vm");
    let init = state_pid(&feather, "vm", "init_pid");
    assert_eq!(
        parent_of(init),
        state_pid(&feather, "vm", "keeper_pid"),
        "the VM's keeper owns the restored init"
    );

    feather.ok(&["stop", "vm"]);
    assert_eq!(feather.status("vm"), "stopped");
    assert!(!Path::new(&format!("/proc/{init}")).exists());
    feather.ok(&["rm", "vm"]);
    assert!(!feather.vm_dir("vm").exists());
}

/// `feather checkpoint` returns once its keeper has answered (the VM's processes gone, the
/// checkpoint recorded), not after the keeper's last steps (the root's network if unused); the
/// checkpoint it replaced is removed beside CRIU's dump, not after the answer (tens of
/// milliseconds for 64 MB on a disk mounted with `discard`); a `restore` right after waits for
/// the keeper's end itself, says so, and restores the new checkpoint. The keeper is held after
/// its answer for as long as the test likes: a `checkpoint` that waited for its end would fail
/// when its patience ran out (`lifecycle::await_last_keeper`, 60 s), and one that waited without
/// a bound is failed by the test's own bound, far above that.
#[test]
fn a_checkpoint_returns_before_its_keeper_s_last_steps_and_a_restore_right_after_waits_for_them() {
    let feather = Feather::new("ckpt-early");
    feather.require_criu();
    let base = ScratchBase::new("ckpt-early");
    let mut hold = crate::support::RecordHold::after_stop_answer("ckpt-early");
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.ok(&["checkpoint", "vm"]);
    // The restored VM's keeper waits after it answers the next checkpoint.
    hold.run(&feather, &["restore", "vm"]);
    let checkpoint = std::cell::RefCell::new(feather.spawn(&["checkpoint", "vm"]));
    let keeper = hold.await_waiter(&feather, "the keeper waits after its checkpoint's answer");
    feather.eventually_within(
        "checkpoint returns while its keeper waits after its answer",
        Duration::from_secs(180),
        || checkpoint.borrow_mut().try_wait().unwrap().is_some(),
    );
    let checkpointed = checkpoint.into_inner().wait_with_output().unwrap();
    assert!(checkpointed.status.success(), "{checkpointed:?}");
    assert_eq!(
        hold.waiter(),
        Some(keeper),
        "checkpoint returned while its keeper {keeper} still waited before its last steps"
    );
    assert_eq!(feather.status("vm"), "checkpointed");
    feather.eventually_within(
        "the replaced checkpoint is removed while the keeper waits after its answer",
        Duration::from_secs(60),
        || set_aside(&feather, "vm").is_empty(),
    );
    assert_eq!(hold.waiter(), Some(keeper), "the keeper still waits");

    let mut restoring = feather.spawn(&["restore", "vm"]);
    // A restore that went by the record alone would run beside the last keeper; it waits, and
    // says so while the keeper is held (read before the release: its stderr ends only with it).
    let mut said =
        std::io::BufRead::lines(std::io::BufReader::new(restoring.stderr.take().unwrap()))
            .map_while(Result::ok);
    let waiting = format!("waiting for its last keeper, pid {keeper}");
    let first = said.by_ref().find(|line| line.contains(&waiting));
    assert!(first.is_some(), "restore never said it is {waiting}");
    hold.release();
    let rest: Vec<String> = said.collect();
    let restored = restoring.wait().unwrap();
    assert!(restored.success(), "{restored:?}: {rest:?}");
    assert_eq!(feather.status("vm"), "running");
    assert_eq!(feather.sh("vm", "hostname").trim(), "vm");
}

/// The checkpoints of `vm` set aside for removal (`checkpoint.stale-*` in its folder).
fn set_aside(feather: &Feather, vm: &str) -> Vec<String> {
    fs::read_dir(feather.vm_dir(vm))
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
        .filter(|name| name.starts_with("checkpoint.stale-"))
        .collect()
}

/// `feather <command> vm` (`start`, `restore`), whose keeper has the test-only failure `hook`
/// armed while the returned file exists: removed, it is disarmed for that running keeper.
fn keeper_failing(
    feather: &Feather,
    command: &str,
    hook: &str,
) -> (crate::support::ScratchDir, std::path::PathBuf) {
    let armed = crate::support::ScratchDir::new("ckpt-hook");
    let failing = armed.path.join("fail");
    fs::write(&failing, "").unwrap();
    let outcome = feather_testkit::run(feather.command().env(hook, &failing).args([command, "vm"]));
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    (armed, failing)
}

/// A plain checkpoint that fails once the checkpoint it replaces was set aside and its removal
/// started beside the dump (its `layers.json` cannot be written, made to fail by the test-only
/// `FEATHER_TEST_FAIL_LAYERS` in the keeper's environment, as a full disk would) says why, the
/// VM runs on, nothing set aside is left once it has answered, and the same keeper's next
/// checkpoint (the failure disarmed) succeeds and restores.
#[test]
fn a_checkpoint_that_fails_beside_the_replaced_one_s_removal_leaves_the_vm_running_and_nothing_behind(
) {
    let feather = Feather::new("ckpt-layersfail");
    feather.require_criu();
    let base = ScratchBase::new("ckpt-layersfail");
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.ok(&["checkpoint", "vm"]);
    let (_armed, failing) = keeper_failing(&feather, "restore", "FEATHER_TEST_FAIL_LAYERS");

    let said = feather.fails(&["checkpoint", "vm"]);
    assert!(said.contains("FEATHER_TEST_FAIL_LAYERS is set"), "{said}");
    assert_eq!(feather.status("vm"), "running");
    assert_eq!(feather.sh("vm", "echo runs").trim(), "runs");
    assert_eq!(set_aside(&feather, "vm"), Vec::<String>::new());

    fs::remove_file(&failing).unwrap();
    feather.ok(&["checkpoint", "vm"]);
    assert_eq!(feather.status("vm"), "checkpointed");
    assert_eq!(set_aside(&feather, "vm"), Vec::<String>::new());
    feather.ok(&["restore", "vm"]);
    assert_eq!(feather.sh("vm", "echo runs").trim(), "runs");
}

/// A checkpoint's images are flushed to disk before the VM reads as checkpointed, also for a VM
/// with a disk image of its own (`--disk`), whose layer's flush before the record flushes the
/// image and not the filesystem holding the images (review-ckpt31 L5: a power cut after the
/// checkpoint could leave it "checkpointed" with its images cut short). A flush that fails (the
/// test-only `FEATHER_TEST_FAIL_IMAGES_SYNC` in the keeper's environment, as a failing disk)
/// refuses the checkpoint, saying why, and the VM runs on; disarmed, the same keeper's next
/// checkpoint succeeds and restores.
#[test]
fn a_checkpoint_whose_images_cannot_be_flushed_to_disk_is_refused_and_the_vm_runs_on() {
    let feather = Feather::new("ckpt-imagesync");
    feather.require_criu();
    let base = ScratchBase::new("ckpt-imagesync");
    let options = ["--net", "none", "--disk", "16M"];
    feather.ok(&[&["create", "vm", "--base", base.as_str()], &options[..]].concat());
    // Its layer is in the image, off the images' filesystem: they are flushed at `post-dump`.
    // (A root with project quotas keeps the layer on its filesystem: see the test below.)
    assert_eq!(
        disk_mechanism(&feather),
        "image",
        "this host caps the disk otherwise"
    );
    let (_armed, failing) = keeper_failing(&feather, "start", "FEATHER_TEST_FAIL_IMAGES_SYNC");
    feather.sh("vm", "echo kept > /marker");

    let said = feather.fails(&["checkpoint", "vm"]);
    assert!(
        said.contains("cannot flush its checkpoint's images to disk")
            && said.contains("FEATHER_TEST_FAIL_IMAGES_SYNC is set"),
        "{said}"
    );
    assert_eq!(feather.status("vm"), "running");
    assert_eq!(feather.sh("vm", "cat /marker").trim(), "kept");

    fs::remove_file(&failing).unwrap();
    feather.ok(&["checkpoint", "vm"]);
    assert_eq!(feather.status("vm"), "checkpointed");
    feather.ok(&["restore", "vm"]);
    assert_eq!(feather.sh("vm", "cat /marker").trim(), "kept");
}

/// How the VM's disk is capped ("image": a disk image of its own; none: uncapped).
fn disk_mechanism(feather: &Feather) -> String {
    let inspected = feather.inspect("vm");
    inspected["config"]["limits"]["disk"]["by"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A VM whose checkpoint is on its layer's filesystem has its images flushed with the layer,
/// and a `syncfs` after that flush returns a write error the flush met (made to fail by the
/// test-only `FEATHER_TEST_FAIL_IMAGES_SYNC`, as a failing disk would): the checkpoint is
/// refused, saying why, and the VM, whose processes ended with the dump, is recorded stopped,
/// never checkpointed; it starts again.
#[test]
fn a_checkpoint_whose_layer_s_filesystem_cannot_be_flushed_is_not_recorded_checkpointed() {
    let feather = Feather::new("ckpt-layersync");
    feather.require_criu();
    let base = ScratchBase::new("ckpt-layersync");
    feather.ok(&["create", "vm", "--base", base.as_str(), "--net", "none"]);
    assert_ne!(
        disk_mechanism(&feather),
        "image",
        "the images are on the layer's filesystem"
    );
    let (_armed, _failing) = keeper_failing(&feather, "start", "FEATHER_TEST_FAIL_IMAGES_SYNC");

    let said = feather.fails(&["checkpoint", "vm"]);
    assert!(
        said.contains("recorded stopped, not checkpointed")
            && said.contains("FEATHER_TEST_FAIL_IMAGES_SYNC is set"),
        "{said}"
    );
    assert_eq!(feather.status("vm"), "stopped");
    feather.ok(&["start", "vm"]);
    assert_eq!(feather.sh("vm", "echo up").trim(), "up");
}

/// For each mask over a kernel folder, and the read-only tmpfs at /sys/fs/cgroup: where, the
/// mount's filesystem and superblock options as the VM's mountinfo shows them, how many
/// entries it lists, and whether root in the VM can write there.
const MASKS: &str = r#"for p in /proc/acpi /sys/firmware /sys/fs/cgroup; do
  [ -d $p ] || continue
  printf '%s %s %s %s\n' $p "$(grep " $p " /proc/self/mountinfo | sed 's/.* - //; s/,inode64//')" \
    "$(ls -A $p | wc -l)" "$(touch $p/marker 2>/dev/null && echo writable || echo read-only)"
done"#;

/// The masks over kernel folders (/proc/acpi, /sys/firmware) and the read-only tmpfs at
/// /sys/fs/cgroup travel in no archive: the checkpoint lists them and the restoring side makes
/// them anew, as empty read-only tmpfs and as one holding the folders the VM's cgroup
/// hierarchies are bound on. A restored VM has them exactly as a booted one does.
#[test]
fn a_restored_vm_keeps_its_masks_over_kernel_folders() {
    let (feather, _base) = offline_vm("ckpt-masks");
    feather.require_criu();
    let masks = || feather.ok(&["exec", "vm", "--", "sh", "-c", MASKS]);
    let booted = masks();
    assert!(
        booted.contains("/sys/firmware tmpfs tmpfs ro,size=0k,mode=555 0 read-only"),
        "{booted}"
    );
    // CRIU archives the tmpfs holding the VM's data (/dev, /dev/shm, /run), and no mask nor
    // the tmpfs at /sys/fs/cgroup.
    let data_tmpfs = feather.ok(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        "grep ' - tmpfs tmpfs rw' /proc/self/mountinfo | grep -vc ' /sys/fs/cgroup '",
    ]);
    feather.ok(&["checkpoint", "vm"]);
    let images = feather.vm_dir("vm").join("checkpoint");
    let archives = fs::read_dir(&images)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("tmpfs-dev-")
        })
        .count();
    assert_eq!(archives.to_string(), data_tmpfs.trim());
    let listed = fs::read_to_string(images.join("layers.json")).unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["mount_point"] == "/sys/firmware" && l["mask"] == true),
        "{listed}"
    );
    assert!(
        listed.as_array().unwrap().iter().any(|l| {
            l["mount_point"] == "/sys/fs/cgroup"
                && l["cgroup_top"].as_array().is_some_and(|f| !f.is_empty())
        }),
        "{listed}"
    );
    feather.ok(&["restore", "vm"]);
    assert_eq!(masks(), booted);
    // The VM's services still get groups of their own there.
    feather.ok(&["exec", "vm", "--", "mkdir", "/sys/fs/cgroup/pids/unit"]);
    feather.ok(&["exec", "vm", "--", "rmdir", "/sys/fs/cgroup/pids/unit"]);
}

/// A restored VM whose thaw fails (the test-only `FEATHER_TEST_FAIL_RESTORED_THAW` in the
/// keeper's environment, as a `cgroup.freeze` that cannot be written) fails its restore,
/// naming the thaw; it is ended, still frozen, and stays checkpointed: a restore without the
/// failure brings it back, counting on. Before, the failure was only logged: the VM was
/// recorded running and stayed frozen for good.
#[test]
fn a_restored_vm_that_cannot_be_thawed_fails_its_restore_and_stays_checkpointed() {
    let (feather, _base) = counting_vm("ckpt-nothaw");
    feather.ok(&["checkpoint", "vm"]);
    let failed: crate::support::Outcome = feather
        .command()
        .args(["restore", "vm"])
        .env("FEATHER_TEST_FAIL_RESTORED_THAW", "1")
        .output()
        .unwrap()
        .into();
    assert_ne!(failed.code, 0, "{}", failed.stdout);
    assert!(
        failed.stderr.contains("cannot thaw its restored processes")
            && failed
                .stderr
                .contains("FEATHER_TEST_FAIL_RESTORED_THAW is set"),
        "{}",
        failed.stderr
    );
    assert_eq!(feather.status("vm"), "checkpointed");
    feather.ok(&["restore", "vm"]);
    let resumed = count(&feather, "vm");
    feather.eventually("the restored loop counts on", || {
        count(&feather, "vm") > resumed
    });
}

#[test]
fn leave_running_keeps_the_vm_running() {
    let (feather, _base) = counting_vm("ckpt-leave");
    let init = state_pid(&feather, "vm", "init_pid");
    feather.ok(&["checkpoint", "vm", "--leave-running"]);
    assert_eq!(feather.status("vm"), "running");
    assert_eq!(state_pid(&feather, "vm", "init_pid"), init);
    assert!(feather
        .vm_dir("vm")
        .join("checkpoint/inventory.img")
        .exists());
    let after = count(&feather, "vm");
    feather.eventually("the loop counts on", || count(&feather, "vm") > after);
    let refused = feather.fails(&["restore", "vm"]);
    assert!(refused.contains("is running"), "{refused}");
    // Its images stay, but the VM ran on over its layer: they are never restored.
    feather.ok(&["stop", "vm"]);
    let refused = feather.fails(&["restore", "vm"]);
    assert!(
        refused.contains("has run since its last checkpoint") && refused.contains("--export"),
        "{refused}"
    );
    assert_eq!(feather.status("vm"), "stopped");
}

/// A shell of the host's (dash) runs commands one after another in a VM over the host's root.
/// dash starts each command with vfork: until the child executes the command, the shell
/// waits in the kernel (state D), and the cgroup freezer counts it as frozen. A freeze that
/// caught that moment had CRIU stop the child before its exec and then wait for the shell for
/// ever: the checkpoint failed after CRIU's 10 s ("Unseizable non-zombie … state D"), in 1 to 5
/// of 15 checkpoints of such a VM here, and once in a CI run of a restore test whose reader is
/// such a loop. The keeper now freezes the VM at a moment when no process of it waits so.
#[test]
fn a_vm_whose_shell_starts_command_after_command_is_checkpointed_every_time() {
    let feather = Feather::new("ckpt-vfork");
    feather.require_criu();
    feather.ok(&["create", "vm", "--net", "none"]);
    feather.ok(&["start", "vm"]);
    feather.sh(
        "vm",
        "sh -c 'i=0; while true; do nproc; i=$((i+1)); echo $i > /tmp/ran; done' \
         </dev/null >/dev/null 2>&1 &",
    );
    let ran = || feather.sh("vm", "cat /tmp/ran 2>/dev/null; echo");
    feather.eventually("the loop runs", || ran().trim().len() > 1);
    for round in 1..=40 {
        let outcome = feather.run(&["checkpoint", "vm", "--leave-running"]);
        assert_eq!(
            outcome.code, 0,
            "checkpoint {round} of 40 failed: {}",
            outcome.stderr
        );
    }
    assert_eq!(feather.status("vm"), "running");
    let last = ran();
    feather.eventually("the loop runs on", || ran() != last);
}

#[test]
fn an_exported_vm_is_restored_in_another_state_root() {
    let (feather, base) = counting_vm("ckpt-export");
    let archive = feather.root.join("vm.tar.zst");
    let archive = archive.to_str().unwrap();
    let before = count(&feather, "vm");
    feather.ok(&["checkpoint", "vm", "--export", archive]);
    assert_eq!(feather.status("vm"), "checkpointed");
    let bytes = fs::read(archive).unwrap();
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd archive");

    let elsewhere = Feather::new("ckpt-import");
    // The receiver names the tree the VM runs over (security row 66).
    elsewhere.ok(&[
        "restore",
        "vm",
        "--import",
        archive,
        "--base",
        base.as_str(),
    ]);
    assert_eq!(elsewhere.status("vm"), "running");
    let resumed = count(&elsewhere, "vm");
    assert!(
        resumed >= before,
        "resumed at {resumed}, checkpointed at {before}"
    );
    elsewhere.eventually("the imported loop counts on", || {
        count(&elsewhere, "vm") > resumed
    });
    assert_eq!(elsewhere.sh("vm", "hostname").trim(), "vm");
    assert_ne!(
        elsewhere.inspect("vm")["config"]["id"],
        feather.inspect("vm")["config"]["id"],
        "the imported VM gets an id (and cgroup) of its own"
    );
    assert_eq!(
        feather.status("vm"),
        "checkpointed",
        "the original is untouched"
    );

    feather.ok(&["rm", "vm"]);
    assert!(
        !feather.vm_dir("vm").exists(),
        "a checkpointed VM is removed with its images"
    );
    let again = elsewhere.fails(&["restore", "vm", "--import", archive]);
    assert!(again.contains("exists already"), "{again}");
    let damaged = feather.root.join("damaged.tar.zst");
    fs::write(&damaged, b"not an archive").unwrap();
    let bad = Feather::new("ckpt-import-bad");
    let refused = bad.fails(&["restore", "vm", "--import", damaged.to_str().unwrap()]);
    assert!(
        refused.contains("damaged or not a feather archive"),
        "{refused}"
    );
    assert!(
        bad.ok(&["ls", "--json"]).trim() == "[]",
        "nothing half-imported"
    );
}

/// An import holds its staging folder locked until the VM is placed: a command's sweep of
/// dead creates' folders (here `ls`, with the folder made to look long dead) passes over an
/// import whose archive is slow to arrive, and the import completes whole. The archive is held
/// back by a `zstd` on the import's PATH that waits on a pipe the test feeds once the sweep
/// has looked.
#[test]
fn an_import_whose_archive_is_slow_keeps_its_folder_from_the_sweep_of_dead_creates() {
    let (feather, base) = counting_vm("ckpt-slow-export");
    let archive = feather.root.join("vm.tar.zst");
    feather.ok(&["checkpoint", "vm", "--export", archive.to_str().unwrap()]);
    let held = HeldZstd::new();

    let elsewhere = Feather::new("ckpt-slow-import");
    let import = elsewhere
        .command()
        .env("PATH", held.path())
        .args(["restore", "vm", "--import", archive.to_str().unwrap()])
        .args(["--base", base.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let vms = elsewhere.root.join("vms");
    let staging = || {
        fs::read_dir(&vms).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .find(|path| path.to_string_lossy().contains("/.creating-import-vm-"))
        })
    };
    // Its lock taken, and unpacking held (nothing more written into it until the gate opens,
    // which would make it young again): what the sweep is to find.
    elsewhere.eventually("the import locks its staging folder", || {
        staging().is_some_and(|folder| feather_core::lock_holder::holder(&folder).is_some())
    });
    elsewhere.eventually("the import's unpacking waits at the gate", || {
        held.started()
    });
    let staging = staging().unwrap();
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(600);
    fs::File::open(&staging)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    elsewhere.ok(&["ls"]);
    assert!(
        staging.is_dir(),
        "the sweep of dead creates removed the folder of an import alive"
    );

    held.let_go();
    let imported =
        feather_testkit::ended_within(import, Duration::from_secs(120), "the held import");
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    assert_eq!(elsewhere.status("vm"), "running");
    let resumed = count(&elsewhere, "vm");
    elsewhere.eventually("the imported loop counts on", || {
        count(&elsewhere, "vm") > resumed
    });
}

/// A folder for PATH whose `zstd` marks that it started, waits for a line on a pipe the test holds, then runs the
/// host's zstd; the pipe's last writer closing (the test ending, also by failing) lets it go
/// too, and so does a wait of 5 minutes (a test killed before the wrapper opened the pipe).
struct HeldZstd {
    dir: feather_testkit::ScratchDir,
    gate: fs::File,
}

impl HeldZstd {
    fn new() -> HeldZstd {
        let dir = feather_testkit::ScratchDir::new("held-zstd");
        let zstd = Command::new("sh")
            .args(["-c", "command -v zstd"])
            .output()
            .unwrap();
        let zstd = String::from_utf8(zstd.stdout).unwrap();
        let fifo = dir.0.join("gate");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Read and write: opened without waiting for a reader, and the wrapper's `head` waits
        // for a line rather than for a writer.
        let gate = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let wrapper = dir.0.join("zstd");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n: > {}\ntimeout 300 head -n 1 {} > /dev/null\nexec {} \"$@\"\n",
                dir.0.join("started").display(),
                fifo.display(),
                zstd.trim()
            ),
        )
        .unwrap();
        fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        HeldZstd { dir, gate }
    }

    /// PATH with the held zstd first.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.0.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Whether the wrapper has run (and waits at the gate, or has gone through).
    fn started(&self) -> bool {
        self.dir.0.join("started").exists()
    }

    fn let_go(&self) {
        std::io::Write::write_all(&mut &self.gate, b"go\n").unwrap();
    }
}

/// Four shells rewriting /data/count-N without pause, one appending the numbers 1, 2, 3 … to
/// /data/log, a file it keeps open (CRIU records its size), and one making /data/tmp-N and
/// removing the one before: any moment the VM runs moves them. /data is in the VM's layer,
/// which an export archives.
const WRITERS: &str = "for n in 1 2 3 4; do (i=0; while true; do i=$((i+1)); echo $i > /data/count-$n; done) & done; (i=0; exec 3>>/data/log; while true; do i=$((i+1)); echo $i >&3; done) & (i=0; while true; do i=$((i+1)); : > /data/tmp-$i; sleep 0.05; rm -f /data/tmp-$((i-1)); done) &";

/// A running VM `vm` whose [`WRITERS`] write.
fn writing_vm(label: &str) -> (Feather, ScratchBase) {
    let (feather, base) = offline_vm(label);
    feather.require_criu();
    feather.sh(
        "vm",
        &format!("sh -c '{WRITERS}' </dev/null >/dev/null 2>&1 &"),
    );
    feather.eventually("the writers write", || {
        logged(&feather.vm_dir("vm").join("upper/data/log")) > 1000
    });
    (feather, base)
}

/// How many numbers the log at `path` holds, checking that they are 1, 2, 3 … without a gap
/// or a repeat (the last line may be half-written).
fn logged(path: &Path) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let whole = if text.ends_with('\n') {
        &lines[..]
    } else {
        &lines[..lines.len().saturating_sub(1)]
    };
    for (i, line) in whole.iter().enumerate() {
        assert_eq!(
            line.parse::<u64>().ok(),
            Some(i as u64 + 1),
            "{}: line {} is {line:?} (a writer restored from another moment than its log \
             writes numbers again, or skips some)",
            path.display(),
            i + 1
        );
    }
    whole.len() as u64
}

/// How long the [`WRITERS`] may take to be seen going on, on a loaded machine. A rewriter
/// spends most of its time in the kernel truncating its file, with the file empty: ext4 frees
/// the file's block and waits for the disk to discard it (this machine mounts / with
/// `discard`), and for the write-back of the number it throws away, which the close before
/// started (ext4's `auto_da_alloc`). Its pace is the disk's: at load 10-20 one rewrite took up
/// to a second, and a file read empty in 345 of 360 first looks after a restore.
const WRITERS_PATIENCE: Duration = Duration::from_secs(60);

/// Waits until each of the restored [`WRITERS`] of `feather`'s VM `vm` is seen going on: the
/// log writer past the `logged_at` numbers its log held, and each rewriter from one number to
/// a higher one in its /data/count-N. Read from the host, in the VM's layer, every few
/// milliseconds: a rewriter's file holds a number only for moments (see
/// [`WRITERS_PATIENCE`]), and one `feather exec … cat` per look, slow on a loaded machine, saw
/// count-1 change only after up to 9.3 s in 90 restores at load 4-20 (and not within 10 s once
/// in CI), where reads from the host saw all four move within about a second. Fails naming the writers that did not go on and
/// what each process of the VM was doing (one left stopped or frozen by the restore shows
/// there, as one waiting for the disk does).
fn writers_go_on(feather: &Feather, vm: &str, logged_at: u64) {
    let data = feather.vm_dir(vm).join("upper/data");
    let deadline = Instant::now() + WRITERS_PATIENCE;
    let mut log_on = false;
    let mut first: [Option<u64>; 4] = [None; 4];
    let mut counted_on = [false; 4];
    loop {
        log_on = log_on || logged(&data.join("log")) > logged_at;
        for (n, on) in counted_on.iter_mut().enumerate() {
            if let Some(now) = rewritten(&data.join(format!("count-{}", n + 1))) {
                *on |= now > *first[n].get_or_insert(now);
            }
        }
        if log_on && counted_on.iter().all(|&on| on) {
            return;
        }
        if Instant::now() >= deadline {
            let mut still: Vec<String> = (!log_on)
                .then(|| "the log".to_owned())
                .into_iter()
                .collect();
            for (n, on) in counted_on.iter().enumerate() {
                if !on {
                    still.push(match first[n] {
                        Some(number) => format!("count-{} (held only {number})", n + 1),
                        None => format!("count-{} (never held a number)", n + 1),
                    });
                }
            }
            panic!(
                "timed out waiting until the restored writers go on: {} did not within {} s; \
                 the VM's processes (pid, state, where in the kernel):\n{}",
                still.join(", "),
                WRITERS_PATIENCE.as_secs(),
                what_its_processes_do(feather, vm)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The number a rewriter of [`WRITERS`] left in `path`; None while the file is empty (the
/// rewriter truncated it and has not written yet).
fn rewritten(path: &Path) -> Option<u64> {
    fs::read_to_string(path)
        .ok()?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

/// Each process of VM `vm` as the host sees it, a line each: pid, state (T: stopped), the
/// innermost kernel functions it is in (e.g. do_freezer_trap: frozen), its command line; and
/// the group's freezer state.
fn what_its_processes_do(feather: &Feather, vm: &str) -> String {
    let dirs = feather.cgroup_dirs(vm);
    let read = |file: &str| {
        dirs.iter()
            .find_map(|dir| fs::read_to_string(dir.join(file)).ok())
    };
    let mut lines: Vec<String> = read("cgroup.procs")
        .unwrap_or_default()
        .split_whitespace()
        .map(|pid| {
            let proc =
                |file: &str| fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
            let stat = proc("stat");
            let state = stat.rsplit_once(") ").map_or("?", |(_, rest)| &rest[..1]);
            let stack = proc("stack");
            let frames: Vec<&str> = stack
                .lines()
                .filter_map(|frame| frame.split_whitespace().nth(1)?.split('+').next())
                .take(6)
                .collect();
            let command: String = proc("cmdline")
                .replace('\0', " ")
                .chars()
                .take(60)
                .collect();
            format!("{pid} {state} {} [{command}]", frames.join(" < "))
        })
        .collect();
    lines.push(format!(
        "group: {}",
        read("cgroup.events").unwrap_or_default().replace('\n', " ")
    ));
    lines.join("\n")
}

#[test]
fn a_vm_left_running_is_exported_as_it_was_at_its_checkpoint() {
    // The export must hold the VM's layer as it was at the dump: a writer that ran on between
    // the dump and the archive's copy leaves its log longer than CRIU recorded ("File
    // data/log has bad size"), and the restore fails.
    let (feather, base) = writing_vm("ckpt-moment");
    for round in 0..3 {
        let archive = feather.root.join(format!("vm-{round}.tar.zst"));
        let archive = archive.to_str().unwrap();
        feather.ok(&["checkpoint", "vm", "--leave-running", "--export", archive]);
        assert_eq!(feather.status("vm"), "running");

        let elsewhere = Feather::new(&format!("ckpt-moment-{round}"));
        let restored = elsewhere.run(&[
            "restore",
            "vm",
            "--import",
            archive,
            "--base",
            base.as_str(),
        ]);
        assert_eq!(
            restored.code, 0,
            "round {round}: the export restores: {}",
            restored.stderr
        );
        // The restored writers go on: the log writer from the number it was at, in the log as
        // archived (one moment for both), and each rewriter.
        let at = logged(&elsewhere.vm_dir("vm").join("upper/data/log"));
        writers_go_on(&elsewhere, "vm", at);
        // The export's layers were archived while the VM ran, then what changed since: the
        // files removed meanwhile are gone (one or two of the making shell's files are there).
        let made = elsewhere.sh("vm", "ls /data");
        assert!(
            made.lines().filter(|f| f.starts_with("tmp-")).count() <= 2,
            "round {round}: files removed before the dump came back: {made}"
        );
    }
    let after = logged(&feather.vm_dir("vm").join("upper/data/log"));
    feather.eventually_within("the original writes on", WRITERS_PATIENCE, || {
        logged(&feather.vm_dir("vm").join("upper/data/log")) > after
    });
}

/// The CRIU `feather checkpoint` would hand the keeper.
pub(crate) fn criu_path() -> std::path::PathBuf {
    std::env::var_os("FEATHER_CRIU")
        .map(Into::into)
        .unwrap_or_else(|| {
            [
                "/usr/local/lib/feather/criu",
                "/usr/sbin/criu",
                "/usr/local/sbin/criu",
            ]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())
            .expect("a CRIU is installed")
        })
}

/// Asks the keeper at `socket` what `request` asks, the test in the place of `feather
/// checkpoint` or `feather migrate`: it reads the answers itself, or leaves them unread.
fn ask_keeper(
    socket: &Path,
    request: feather_vm::protocol::Request,
) -> feather_vm::protocol::Conversation {
    feather_vm::protocol::Conversation::start(socket, &request, Duration::from_secs(120)).unwrap()
}

/// What `feather migrate` asks for a post-copy dump.
fn post_copy_dump() -> feather_vm::protocol::Request {
    feather_vm::protocol::Request::Checkpoint {
        leave_running: false,
        criu: criu_path(),
        lazy: true,
        hold_frozen: false,
    }
}

/// The host pid of VM `vm`'s keeper.
fn keeper_pid(feather: &Feather) -> i32 {
    state_pid(feather, "vm", "keeper_pid") as i32
}

/// Waits until the [`WRITERS`] of `feather`'s VM `vm` write on (after a dump that failed, say),
/// and checks that it reads as running.
fn the_vm_runs_on(feather: &Feather) {
    let log = feather.vm_dir("vm").join("upper/data/log");
    let after = logged(&log);
    feather.eventually("the VM runs on", || logged(&log) > after);
    assert_eq!(feather.status("vm"), "running");
}

#[test]
fn a_vm_held_frozen_for_an_export_thaws_when_the_asker_dies() {
    use feather_vm::protocol::{Request, Response};
    let (feather, _base) = writing_vm("ckpt-hold");
    let log = feather.vm_dir("vm").join("upper/data/log");
    // What `feather checkpoint --leave-running --export` asks, from an asker that then dies
    // before it has archived the layers (the kernel closes its end, as here).
    let mut asker = ask_keeper(
        &feather.control_socket("vm"),
        Request::Checkpoint {
            leave_running: true,
            criu: criu_path(),
            lazy: false,
            hold_frozen: true,
        },
    );
    assert_eq!(
        asker.answer().unwrap(),
        Response::Checkpointed {
            leave_running: true
        }
    );
    let frozen_at = logged(&log);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(logged(&log), frozen_at, "nothing runs while it is held");
    drop(asker);
    feather.eventually("the VM runs on once its asker is gone", || {
        logged(&log) > frozen_at
    });
    assert_eq!(feather.status("vm"), "running");
}

/// The host pids of the CRIU processes `parent` started (its threads' children).
fn criu_children_of(parent: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{parent}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .flat_map(|task| fs::read_to_string(task.path().join("children")))
        .flat_map(|listed| {
            listed
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<i32>>()
        })
        // By its program: CRIU overwrites its command line (the wrapper's shows only ld.so).
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.to_string_lossy().contains("criu"))
        })
        .collect()
}

/// Ends, by pid, a CRIU the test's keeper left behind, also when the test fails.
struct LeftCriu(Vec<i32>);

impl Drop for LeftCriu {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if runs(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Ends, by pid, the CRIU a test's keeper runs when the test ends (it fails waiting for it to
/// end, say).
struct KeepersCriu(i32);

impl Drop for KeepersCriu {
    fn drop(&mut self) {
        drop(LeftCriu(criu_children_of(self.0)));
    }
}

/// A keeper killed while its CRIU dumps takes that CRIU with it (its parent death signal, as
/// `criu lazy-pages` has for `feather serve`): the VM ended with its keeper (its init's
/// parent death signal), and the CRIU left behind lived on, adopted by the machine's reaper —
/// here, a post-copy dump whose page server waits for requests that never come (its asker
/// holds the connection), it waited for good. The VM reads as crashed and starts again: the crash clean-up thaws
/// the group the keeper froze behind CRIU.
#[test]
fn a_keeper_killed_mid_dump_takes_its_criu_with_it() {
    use feather_vm::protocol::Response;
    let (feather, _base) = offline_vm("ckpt-keeperdies");
    feather.require_criu();
    let keeper = keeper_pid(&feather);
    // What `feather migrate` asks (post-copy), from an asker that then never fetches a page.
    let mut asker = ask_keeper(&feather.control_socket("vm"), post_copy_dump());
    assert_eq!(asker.answer().unwrap(), Response::Dumped);
    let _page_server = asker.passed().expect("the page server's connection");
    let criu = LeftCriu(criu_children_of(keeper));
    assert_eq!(criu.0.len(), 1, "the keeper's criu swrk serves the pages");
    // Killed only once CRIU waits for the first request: killed earlier, between `Dumped` and
    // the keeper's answer to CRIU's ready notice, CRIU reads the end of its RPC socket and
    // ends by itself, death signal or not (review).
    feather.eventually("CRIU's page server waits for a request", || {
        let syscall =
            fs::read_to_string(format!("/proc/{}/syscall", criu.0[0])).unwrap_or_default();
        // recvfrom (x86_64), which CRIU's recv is.
        syscall.starts_with("45 ")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keeper),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    feather.eventually("the keeper's CRIU ends with it", || !runs(criu.0[0]));
    drop(asker);
    feather.eventually("the VM reads as crashed", || {
        feather.status("vm") == "crashed"
    });
    feather.ok(&["start", "vm"]);
    assert_eq!(feather.status("vm"), "running");
    assert_eq!(feather.sh("vm", "echo runs").trim(), "runs");
}

/// A post-copy dump's page server listens nowhere: the keeper gives its CRIU one end of a
/// socket pair and the asker the other, with `Dumped`. Before, CRIU 4.1's page server listened
/// on every address of the keeper's network namespace (the host's) and served the first
/// connection, whoever made it: any local user or remote host could read the VM's memory or
/// fail the migration before `migrate`'s relay connected. Checked while CRIU waits for the
/// first request; then, its asker gone, a request it does not know makes it fail, and the VM
/// runs on.
#[test]
fn a_post_copy_dump_s_page_server_listens_nowhere() {
    use feather_vm::protocol::Response;
    let (feather, _base) = writing_vm("ckpt-psnolisten");
    let keeper = keeper_pid(&feather);
    let mut asker = ask_keeper(&feather.control_socket("vm"), post_copy_dump());
    let _left = KeepersCriu(keeper);
    assert_eq!(asker.answer().unwrap(), Response::Dumped);
    let page_server = std::os::unix::net::UnixStream::from(asker.passed().expect("the connection"));
    let criu = criu_children_of(keeper);
    assert_eq!(criu.len(), 1, "the keeper's criu swrk serves the pages");
    feather.eventually("CRIU's page server waits for a request", || {
        let syscall = fs::read_to_string(format!("/proc/{}/syscall", criu[0])).unwrap_or_default();
        // recvfrom (x86_64, CRIU's recv), or accept/accept4 had it listened.
        ["45 ", "43 ", "288 "]
            .iter()
            .any(|call| syscall.starts_with(call))
    });
    assert_eq!(
        crate::support::listening_tcp_sockets_of(criu[0]),
        Vec::<String>::new()
    );
    // The asker gone first, the keeper thaws the VM it froze behind CRIU (see
    // `settle_source_copy`, where `await_asker` sees the hang-up); the unknown request then
    // fails CRIU's transfer.
    drop(asker);
    feather_migrate::pages::abort(&page_server);
    feather.eventually("the dump has failed and its CRIU ended", || {
        criu_children_of(keeper).is_empty()
    });
    the_vm_runs_on(&feather);
}

/// A post-copy dump whose CRIU did not read the configuration file that gives its page server
/// its connection (made so by the test-only `FEATHER_TEST_CRIU_CONFIG_MISSING` in the keeper's
/// environment, as an LSM denying CRIU its `/proc/self/fd` would) fails, and nothing listens
/// meanwhile: CRIU would have listened on every address, on the port the request names, and
/// served the VM's memory to the first to connect. The VM runs on.
#[test]
fn a_post_copy_dump_whose_criu_did_not_read_its_configuration_fails_and_nothing_listens() {
    use feather_vm::protocol::Response;
    let feather = Feather::new("ckpt-psnoconf");
    let base = ScratchBase::new("ckpt-psnoconf");
    feather.ok(&["create", "vm", "--base", base.as_str(), "--net", "none"]);
    let started = feather
        .command()
        .args(["start", "vm"])
        .env(feather_vm::snapshot::CRIU_CONFIG_MISSING, "1")
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    feather.require_criu();
    feather.sh(
        "vm",
        &format!("sh -c '{WRITERS}' </dev/null >/dev/null 2>&1 &"),
    );
    let log = feather.vm_dir("vm").join("upper/data/log");
    feather.eventually("the writers write", || logged(&log) > 1000);
    let keeper = keeper_pid(&feather);
    let _left = KeepersCriu(keeper);
    let socket = feather.control_socket("vm");
    let (answered, answer) = std::sync::mpsc::channel();
    let asker = std::thread::spawn(move || {
        let mut asker = ask_keeper(&socket, post_copy_dump());
        let _ = answered.send(asker.answer().unwrap());
        asker
    });
    let mut listened = Vec::new();
    let answer = loop {
        for criu in criu_children_of(keeper) {
            listened.extend(crate::support::listening_tcp_sockets_of(criu));
        }
        match answer.recv_timeout(Duration::from_millis(5)) {
            Ok(answer) => break answer,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(e) => panic!("the asker failed: {e}"),
        }
    };
    drop(asker.join().unwrap());
    assert_eq!(listened, Vec::<String>::new(), "CRIU listened");
    let Response::Error { message } = answer else {
        panic!("the dump did not fail: {answer:?}");
    };
    assert!(message.contains("Can't bind page server"), "{message}");
    feather.eventually("the dump's CRIU has ended", || {
        criu_children_of(keeper).is_empty()
    });
    the_vm_runs_on(&feather);
}

/// A post-copy dump whose asker is gone before the keeper could tell it `Dumped` (the write
/// fails: its end of the socket is closed) fails, and the VM runs on: nobody would ever send
/// CRIU's page server a request, the VM's processes seized and frozen behind it.
#[test]
fn a_post_copy_dump_whose_asker_cannot_hear_dumped_fails_and_the_vm_runs_on() {
    let (feather, _base) = writing_vm("ckpt-deafasker");
    let keeper = keeper_pid(&feather);
    // What `feather migrate` asks (post-copy), from an asker gone at once: the request is
    // read from the socket's buffer, the answer cannot be written.
    drop(ask_keeper(&feather.control_socket("vm"), post_copy_dump()));
    let _left = KeepersCriu(keeper);
    feather.eventually("the dump has failed and its CRIU ended", || {
        feather.vm_dir("vm").join("checkpoint/dump.log").exists()
            && criu_children_of(keeper).is_empty()
            && !feather
                .vm_dir("vm")
                .join("checkpoint/inventory.img")
                .exists()
    });
    the_vm_runs_on(&feather);
    assert_eq!(feather.sh("vm", "echo runs").trim(), "runs");
}

#[test]
fn a_resource_criu_cannot_dump_is_named_and_the_vm_keeps_running() {
    let (feather, _base) = counting_vm("ckpt-undumpable");
    // A process of the VM holding a host file, which lies outside every mount of the VM.
    // `feather exec` never passes one in (its stdio is pipes of its own), so the host's root
    // does it by hand: in the VM's cgroups, enter its namespaces (a session of the VM's own,
    // as exec gives) with the file as stdout, and leave a process behind, which init adopts.
    let host_file = feather.root.join("host-file.txt");
    let init = feather.inspect("vm")["state"]["init_pid"].as_i64().unwrap();
    let cgroups: Vec<String> = feather
        .cgroup_dirs("vm")
        .iter()
        .map(|dir| dir.join("cgroup.procs").display().to_string())
        .collect();
    let status = Command::new("sh")
        .args([
            "-c",
            "for procs in $2; do echo $$ > $procs; done; \
             exec nsenter -t \"$1\" -a /bin/busybox setsid sh -c 'sleep 1000 &'",
            "sh",
        ])
        .arg(init.to_string())
        .arg(cgroups.join(" "))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&host_file).unwrap())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let refused = feather.fails(&["checkpoint", "vm"]);
    assert!(
        refused.contains("CRIU cannot checkpoint it")
            && refused.contains(host_file.to_str().unwrap()),
        "the error names the file: {refused}"
    );
    assert!(
        refused.contains("dump.log"),
        "and points to CRIU's log: {refused}"
    );
    assert_eq!(feather.status("vm"), "running");
    let after = count(&feather, "vm");
    feather.eventually("the VM runs on", || count(&feather, "vm") > after);
    assert!(!feather
        .vm_dir("vm")
        .join("checkpoint/inventory.img")
        .exists());
}

#[test]
fn checkpoint_errors_say_what_to_do() {
    let feather = Feather::new("ckpt-errors");
    let base = ScratchBase::new("ckpt-errors");
    feather.ok(&["create", "idle", "--net", "none", "--base", base.as_str()]);
    let not_running = feather.fails(&["checkpoint", "idle"]);
    assert!(
        not_running.contains("VM idle is not running"),
        "{not_running}"
    );
    let nothing = feather.fails(&["restore", "idle"]);
    assert!(
        nothing.contains("has no checkpoint to restore"),
        "{nothing}"
    );

    feather.ok(&["start", "idle"]);
    let missing = feather
        .command()
        .env("FEATHER_CRIU", "/nonexistent/criu")
        .args(["checkpoint", "idle"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_ne!(missing.status.code(), Some(0));
    assert!(
        stderr.contains("CRIU is not installed") && stderr.contains("install-criu"),
        "{stderr}"
    );
    assert_eq!(feather.status("idle"), "running", "the VM keeps running");
    let check = feather
        .command()
        .env("FEATHER_CRIU", "/nonexistent/criu")
        .args(["check", "criu"])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stderr).contains("CRIU is not installed"));
}

/// A VM with a filesystem layered at a mount point whose path is not UTF-8 is not
/// checkpointed: refused before anything is dumped, naming the path escaped, and it runs on.
#[test]
fn a_vm_with_a_mount_point_that_is_not_utf8_is_refused_a_checkpoint_and_runs_on() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    // Its mount at a path that is not UTF-8 is for its own VM alone.
    feather_testkit::own_mount_namespace();
    let feather = Feather::new("ckpt-bytes");
    let mut base = ScratchBase::new("ckpt-bytes");
    base.mount_tmpfs_at(&Path::new("mnt").join(OsStr::from_bytes(b"b\xff")));
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.require_criu();
    let err = feather.fails(&["checkpoint", "vm"]);
    // The path escaped (`\xff`) once: the CLI's escaping of the line leaves backslashes be.
    assert!(
        err.contains(r"/mnt/b\xff is a mount point in the VM whose path is not UTF-8")
            && err.contains("nothing was dumped"),
        "{err}"
    );
    assert_eq!(feather.status("vm"), "running", "the VM keeps running");
    assert_eq!(feather.sh("vm", "echo on"), "on\n");
}

#[test]
fn check_reports_criu_and_the_kernel_features_it_lacks() {
    let feather = Feather::new("ckpt-check");
    let report: serde_json::Value =
        serde_json::from_str(&feather.ok(&["check", "criu", "--json"])).unwrap();
    assert_eq!(report["works"], true, "{report}");
    let version = report["version"].as_str().unwrap();
    let major: u32 = version.split('.').next().unwrap().parse().unwrap();
    assert!(major >= 4, "CRIU 4.1 or newer: {version}");
    let features = report["features"].as_array().unwrap();
    assert!(features
        .iter()
        .any(|f| f["name"] == "clone3_set_tid" && f["supported"] == true));
    let text = feather.ok(&["check", "criu"]);
    assert!(text.contains("works on this kernel"), "{text}");
    assert!(text.contains("mem_dirty_track"), "{text}");
}

const UNIX_SERVER: &str = r#"
import socket
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind("/run/app.sock")
server.listen()
while True:
    connection, _ = server.accept()
    with open("/run/received", "a") as out:
        for line in connection.makefile():
            out.write(line)
            out.flush()
"#;

const UNIX_CLIENT: &str = r#"
import socket, time
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect("/run/app.sock")
i = 0
while True:
    i += 1
    client.sendall(f"{i}\n".encode())
    time.sleep(0.05)
"#;

#[test]
fn a_listening_socket_and_an_established_connection_survive() {
    // Over the host's own root: the VM runs the host's python3.
    let feather = Feather::new("ckpt-unix");
    feather.require_criu();
    feather.ok(&["create", "vm", "--net", "none"]);
    feather.ok(&["start", "vm"]);
    python_daemon(&feather, "vm", UNIX_SERVER, &[]);
    feather.eventually("the server listens", || {
        feather
            .run(&["exec", "vm", "--", "test", "-S", "/run/app.sock"])
            .code
            == 0
    });
    python_daemon(&feather, "vm", UNIX_CLIENT, &[]);
    let received = |feather: &Feather| received_numbers(feather, "vm");
    feather.eventually("the connection carries data", || {
        received(&feather).len() >= 3
    });
    let processes = lasting_processes(&feather, "vm");

    feather.ok(&["checkpoint", "vm"]);
    feather.ok(&["restore", "vm"]);
    let resumed = received(&feather).len();
    feather.eventually("the restored connection carries on", || {
        received(&feather).len() > resumed + 2
    });
    let numbers = received(&feather);
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "one connection from before the checkpoint to after it: the client's count never restarted"
    );
    assert_eq!(lasting_processes(&feather, "vm"), processes);
    // The listening socket still takes connections (queued while the server serves the first).
    feather.ok(&[
        "exec",
        "vm",
        "--",
        "/usr/bin/python3",
        "-c",
        "import socket; c = socket.socket(socket.AF_UNIX); c.connect('/run/app.sock')",
    ]);
}

/// CRIU up to 4.2.1 asks every socket for SO_PASSCRED, which Linux 6.16 and later refuse for
/// IPv4/IPv6 sockets; the shim scripts/install-criu preloads into criu answers as CRIU's own
/// fix does. A TCP server and a connection to it inside the VM come through a checkpoint.
#[test]
fn a_tcp_server_and_an_established_connection_survive() {
    let feather = Feather::new("ckpt-tcp");
    feather.require_criu();
    feather.ok(&["create", "vm", "--net", "none"]);
    feather.ok(&["start", "vm"]);
    python_daemon(&feather, "vm", LINE_SERVER, &[]);
    await_line_server(&feather, "vm");
    python_daemon(&feather, "vm", LINE_CLIENT, &[]);
    let received = |feather: &Feather| received_numbers(feather, "vm");
    feather.eventually("the connection carries data", || {
        received(&feather).len() >= 3
    });

    feather.ok(&["checkpoint", "vm"]);
    feather.ok(&["restore", "vm"]);
    let resumed = received(&feather).len();
    feather.eventually("the restored connection carries on", || {
        received(&feather).len() > resumed + 2
    });
    let numbers = received(&feather);
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "one TCP connection from before the checkpoint to after it"
    );
    // The listening socket still takes connections.
    feather.ok(&[
        "exec",
        "vm",
        "--",
        "/usr/bin/python3",
        "-c",
        "import socket; socket.create_connection(('127.0.0.1', 7000))",
    ]);
}

#[test]
fn a_vm_with_a_private_network_comes_back_with_its_address_and_published_port() {
    // Over the host's own root: the VM runs the host's redis-server, listening on TCP.
    let feather = Feather::new("ckpt-net");
    feather.require_criu();
    let port_held = TestPort::new();
    let port = port_held.port;
    feather.ok(&["create", "db", "--publish", &format!("{port}:6379")]);
    feather.ok(&["start", "db"]);
    feather.sh(
        "db",
        "redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --save '' \
         --appendonly no --daemonize yes --logfile /run/redis.log --enable-debug-command yes",
    );
    let view = feather.inspect("db");
    let address = view["network"]["address"].as_str().unwrap().to_owned();
    let host_end = view["network"]["host_interface"]
        .as_str()
        .unwrap()
        .to_owned();
    let bridge = view["network"]["bridge"].as_str().unwrap().to_owned();
    feather.eventually("redis answers on the VM's address", || {
        redis_cli(None, &address, 6379, &["PING"]).contains("PONG")
    });
    assert_eq!(
        redis_cli(None, &address, 6379, &["DEBUG", "POPULATE", "5000"]),
        "OK\n"
    );
    let digest = redis_cli(None, &address, 6379, &["DEBUG", "DIGEST"]);

    feather.ok(&["checkpoint", "db"]);
    assert_eq!(feather.status("db"), "checkpointed");
    assert!(
        !Path::new("/sys/class/net").join(&host_end).exists(),
        "the VM's veth went with its processes"
    );
    feather.ok(&["restore", "db"]);

    assert_eq!(
        feather.inspect("db")["network"]["address"],
        address.as_str()
    );
    let master = fs::read_link(Path::new("/sys/class/net").join(&host_end).join("master"))
        .expect("the host end of the VM's veth is back");
    assert!(
        master.ends_with(&bridge),
        "the host end is on the state root's bridge: {master:?}"
    );
    assert_eq!(
        redis_cli(None, &address, 6379, &["DEBUG", "DIGEST"]),
        digest,
        "every key, read through the VM's address"
    );
    assert_eq!(redis_cli(None, &address, 6379, &["DBSIZE"]), "5000\n");
    assert_eq!(
        redis_cli(None, "127.0.0.1", port, &["GET", "key:4999"]),
        "value:4999\n",
        "and through the published port"
    );
    assert_eq!(
        feather.sh("db", "grep db /etc/hosts | cut -f1"),
        format!("{address}\n"),
        "the VM's /etc/hosts names its address"
    );
}

/// The keeper holds a default VM's traffic during its dump by bringing the host end of its
/// veth pair down (CRIU's own lock works only in a namespace it dumps), from the start of the
/// dump on; a VM that goes on after it, as one checkpointed with `--leave-running` does, gets
/// its link back: the host end up, the VM's end with its carrier, and a host client's
/// connection to it carrying on, one connection without a gap.
#[test]
fn a_default_vm_checkpointed_and_left_running_keeps_its_link_and_connection() {
    // Over the host's own root, for its python3.
    let feather = Feather::new("ckpt-link");
    feather.require_criu();
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    let view = feather.inspect("vm");
    let address = view["network"]["address"].as_str().unwrap().to_owned();
    let host_end = view["network"]["host_interface"]
        .as_str()
        .unwrap()
        .to_owned();
    python_daemon(&feather, "vm", LINE_SERVER, &[]);
    await_line_server(&feather, "vm");
    let client = Command::new("/usr/bin/python3")
        .args(["-c", LINE_CLIENT, &address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _client = EndedOnDrop(client);
    let received = || received_numbers(&feather, "vm");
    feather.eventually("the host's connection carries data", || {
        received().len() >= 3
    });

    feather.ok(&["checkpoint", "vm", "--leave-running"]);
    assert_eq!(feather.status("vm"), "running");
    let operstate = Path::new("/sys/class/net")
        .join(&host_end)
        .join("operstate");
    let operstate = fs::read_to_string(&operstate).expect("the VM's host end is there");
    assert_eq!(
        operstate.trim(),
        "up",
        "the host end {host_end} is up again"
    );
    assert_eq!(feather.sh("vm", "cat /sys/class/net/eth0/carrier"), "1\n");
    let resumed = received().len();
    feather.eventually("the connection carries on", || {
        received().len() > resumed + 2
    });
    let numbers = received();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "one connection, without a gap or a repeat"
    );
}

/// A process of the test, killed and reaped on drop.
struct EndedOnDrop(std::process::Child);

impl Drop for EndedOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private network's namespace is left out of the dump only while it holds exactly what
/// feather made; the VM's root cannot change it (no CAP_NET_ADMIN, read-only /proc/sys), and a
/// change made from outside (here the host, as something holding CAP_NET_ADMIN there would)
/// makes CRIU dump it whole, so that the restored VM keeps it. Taking every private namespace
/// as made would lose the address and route added here.
#[test]
fn a_private_vm_s_network_changed_since_its_start_is_kept_across_a_checkpoint() {
    let feather = Feather::new("ckpt-netns");
    feather.require_criu();
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    let view = feather.inspect("vm");
    let address = view["network"]["address"].as_str().unwrap().to_owned();
    let gateway = view["network"]["gateway"].as_str().unwrap().to_owned();
    let images = feather.vm_dir("vm").join("checkpoint");

    // The VM's own root cannot change its network.
    let refused = feather.run(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        "ip addr add 192.0.2.99/32 dev eth0 || echo address refused; \
         echo 1 > /proc/sys/net/ipv4/conf/eth0/forwarding || echo sysctl refused",
    ]);
    assert!(
        refused.stdout.contains("address refused") && refused.stdout.contains("sysctl refused"),
        "{refused:?}"
    );

    // As made: not dumped, made anew at the restore, with the VM's address, link-layer
    // address and route.
    feather.ok(&["checkpoint", "vm"]);
    assert!(
        images.join("external-netns").exists(),
        "left out of the dump"
    );
    feather.ok(&["restore", "vm"]);
    let mac = format!(
        "02:66:{}",
        address
            .split('.')
            .map(|b| format!("{:02x}", b.parse::<u8>().unwrap()))
            .collect::<Vec<_>>()
            .join(":")
    );
    let link = feather.sh(
        "vm",
        "ip -br link show eth0; ip -br addr show eth0; ip route",
    );
    assert!(link.contains(&mac), "{link}");
    assert!(link.contains(&format!("{address}/")), "{link}");
    assert!(
        link.contains(&format!("default via {gateway} dev eth0")),
        "{link}"
    );

    // Changed from outside: dumped by CRIU, and the change comes back.
    let init = feather.inspect("vm")["state"]["init_pid"]
        .as_i64()
        .unwrap()
        .to_string();
    for change in [
        "ip addr add 192.0.2.7/32 dev eth0",
        "ip route add 198.51.100.0/24 dev eth0",
    ] {
        let status = Command::new("nsenter")
            .args(["-t", &init, "-n"])
            .args(change.split(' '))
            .status()
            .unwrap();
        assert!(status.success(), "{change}");
    }
    feather.ok(&["checkpoint", "vm"]);
    assert!(!images.join("external-netns").exists(), "dumped");
    let why = fs::read_to_string(images.join("netns-dumped")).unwrap();
    assert!(why.contains("192.0.2.7/32"), "the dump says why: {why}");
    feather.ok(&["restore", "vm"]);
    let restored = feather.sh("vm", "ip -br addr show eth0; ip route");
    assert!(restored.contains("192.0.2.7/32"), "{restored}");
    assert!(restored.contains("198.51.100.0/24 dev eth0"), "{restored}");
    assert!(restored.contains(&format!("{address}/")), "{restored}");
}

/// A restore of a VM whose namespace CRIU dumped joins the root's network (the bridge and
/// tables made, the VM's firewall entries added, its marker `network-attached` written) and
/// lets go of the root's network lock before CRIU makes the VM's veth pair. A removal of the
/// root's network that looked in between found no VM's port on the bridge and took the bridge
/// and tables down under the restore, and CRIU failed ("Can't add interface fth… to bridge …:
/// No such device"): here the root's last other VM stopping, its `rm`, then `network down`
/// (without the restore's marker counted as a user, the stop took the bridge down, and so did
/// `network down` run alone). Held there, the restore keeps the bridge through all three, and
/// its VM comes back on it with its address and firewall entries.
#[test]
fn a_restore_keeps_the_root_s_network_through_removals_before_criu_makes_its_veth() {
    let feather = Feather::new("ckpt-net-removal");
    feather.require_criu();
    for vm in ["vm", "other"] {
        feather.ok(&["create", vm]);
        feather.ok(&["start", vm]);
    }
    let view = feather.inspect("vm");
    let address = view["network"]["address"].as_str().unwrap().to_owned();
    let bridge = view["network"]["bridge"].as_str().unwrap().to_owned();
    let host_end = view["network"]["host_interface"]
        .as_str()
        .unwrap()
        .to_owned();
    // Changed from outside, the VM's namespace is dumped whole: CRIU makes its veth pair.
    crate::support::give_an_address_of_its_own(&feather, "vm");
    feather.ok(&["checkpoint", "vm"]);
    let images = feather.vm_dir("vm").join("checkpoint");
    assert!(!images.join("external-netns").exists(), "dumped");

    let mut hold = crate::support::RecordHold::before_criu("ckpt-net-removal");
    let restoring = hold.restore(&feather, "vm");
    let bridge_there = || Path::new("/sys/class/net").join(&bridge).exists();
    // The root's last other VM: its keeper looks after its stop's answer, finds no other VM's
    // port on the bridge, and takes the network down if nothing else uses it. Its end is
    // waited for (a zombie has ended; it flushes the VM's layer first, seconds on a busy disk).
    let keeper = feather.inspect("other")["state"]["keeper_pid"]
        .as_i64()
        .unwrap();
    feather.ok(&["stop", "other"]);
    let ended = || !runs(keeper);
    feather.eventually_within(
        &format!("keeper {keeper} of the stopped VM ends"),
        std::time::Duration::from_secs(60),
        ended,
    );
    assert!(
        bridge_there(),
        "{bridge} went with the last other VM's stop"
    );
    feather.ok(&["rm", "other"]);
    assert!(bridge_there(), "{bridge} went with the other VM's rm");
    let down = feather.run(&["network", "down"]);
    assert!(
        down.stderr.contains("a VM uses it"),
        "network down leaves it: {down:?}"
    );
    assert!(bridge_there(), "{bridge} went with `network down`");
    hold.release();
    let restored = restoring.wait_with_output().unwrap();
    assert!(restored.status.success(), "{restored:?}");
    assert_eq!(feather.status("vm"), "running");

    let master = fs::read_link(format!("/sys/class/net/{host_end}/master"));
    assert!(
        master.as_ref().is_ok_and(|m| m.ends_with(&bridge)),
        "the restored VM's {host_end} is a port of {bridge}: {master:?}"
    );
    let inside = feather.sh("vm", "ip -br addr show eth0");
    assert!(inside.contains(&format!("{address}/")), "{inside}");
    assert!(inside.contains("192.0.2.7/32"), "{inside}");
    let tables = crate::support::nft_inet_table(&bridge);
    assert!(
        tables.contains(&format!("{address} : jump vm-{host_end}")),
        "the VM's firewall entries: {tables}"
    );
}

#[test]
fn layers_over_other_filesystems_come_back_even_if_the_host_removed_them() {
    let feather = Feather::new("ckpt-layers");
    feather.require_criu();
    let mut base = ScratchBase::new("ckpt-layers");
    let data = base.mount_tmpfs("data");
    fs::write(data.join("host.txt"), "from the host\n").unwrap();
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.sh("vm", "echo mine > /data/vm.txt; cat /data/host.txt");
    feather.sh(
        "vm",
        "sh -c 'while true; do sleep 1; done' </dev/null >/dev/null 2>&1 &",
    );

    feather.ok(&["checkpoint", "vm"]);
    feather.ok(&["restore", "vm"]);
    assert_eq!(
        feather.sh("vm", "cat /data/host.txt /data/vm.txt"),
        "from the host\nmine\n",
        "the layer over the host's filesystem is back, with the VM's change"
    );

    feather.ok(&["checkpoint", "vm"]);
    // The host unmounts and removes the filesystem the layer lay over.
    assert!(Command::new("umount")
        .arg(&data)
        .status()
        .unwrap()
        .success());
    fs::remove_dir(&data).unwrap();
    feather.ok(&["restore", "vm"]);
    assert_eq!(
        feather.sh("vm", "ls /data"),
        "vm.txt\n",
        "the VM keeps its own changes there, over nothing"
    );
}

/// The same, when the host removes the filesystem while the restore mounts the VM's layers:
/// once the keeper found it there, and its child has its own copy of the host's mounts (which
/// the removal of the folder detaches). Before, the restore failed (the lower folder gone); now
/// the layer lies over nothing, as when the filesystem went before the restore.
#[test]
fn a_filesystem_the_host_removes_while_the_restore_mounts_its_layer_is_restored_over_nothing() {
    let feather = Feather::new("ckpt-vanishing");
    feather.require_criu();
    let mut base = ScratchBase::new("ckpt-vanishing");
    let data = base.mount_tmpfs("data");
    fs::write(data.join("host.txt"), "from the host\n").unwrap();
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.sh("vm", "echo mine > /data/vm.txt");
    feather.ok(&["checkpoint", "vm"]);
    let mut hold = crate::support::RecordHold::before_restored_layers("ckpt-vanishing");
    let restoring = hold.restore(&feather, "vm");
    assert!(Command::new("umount")
        .arg(&data)
        .status()
        .unwrap()
        .success());
    fs::remove_dir(&data).unwrap();
    hold.release();
    let restored = restoring.wait_with_output().unwrap();
    assert!(
        restored.status.success(),
        "the restore fails over a filesystem removed meanwhile: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(
        feather.sh("vm", "ls /data"),
        "vm.txt\n",
        "the VM keeps its own changes there, over nothing"
    );
}

/// The record of what a restored layer lies over is confirmed with what the restoring child
/// mounted: a filesystem the host mounts over the layer's folder between the keeper's record
/// and the child's copy of the host's mounts is what the VM sees and what its changes commit
/// into; once it is unmounted, the filesystem the keeper recorded (A-B-A) is refused,
/// untouched. Before, the record named A and the VM's B-era change was committed into A
/// (review lowroots29; a start had this since gl27 L4).
#[test]
fn a_restores_record_of_its_layers_is_what_the_restoring_child_mounted() {
    let feather = Feather::new("ckpt-aba");
    feather.require_criu();
    let mut base = ScratchBase::new("ckpt-aba");
    let a = base.mount_tmpfs("data");
    fs::write(a.join("keep"), "a\n").unwrap();
    feather.start_over("vm", &base, &["--net", "none"]);
    assert_eq!(feather.sh("vm", "cat /data/keep"), "a\n");
    feather.ok(&["checkpoint", "vm"]);
    let mut hold = crate::support::RecordHold::after_restore_record("ckpt-aba");
    let restoring = hold.restore(&feather, "vm");
    let b = base.mount_tmpfs("data");
    fs::write(b.join("keep"), "b\n").unwrap();
    hold.release();
    let restored = restoring.wait_with_output().unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let seen = feather.sh("vm", "cat /data/keep && echo vm > /data/new && echo done");
    assert_eq!(seen, "b\ndone\n");
    feather.ok(&["stop", "vm"]);

    base.unmount(&b);
    crate::support::commit_refused_over_the_first(&feather, "vm", "/data", &a);
}

/// A link put where a restored layer's filesystem was mounted (the filesystem removed, its
/// folder replaced by a link to another tree) while the restore mounts the VM's layers: the
/// layer never lies over the tree the link names, and the restore fails naming the folder.
/// Before, the layer's lower was given to overlayfs by path, and the VM came back over the
/// decoy.
#[test]
fn a_restored_layers_folder_swapped_for_a_link_is_not_followed() {
    let feather = Feather::new("ckpt-swapped");
    feather.require_criu();
    let mut base = ScratchBase::new("ckpt-swapped");
    let decoy = ScratchBase::new("ckpt-swapped-decoy");
    decoy.write("decoy", "the link's tree\n");
    let data = base.mount_tmpfs("data");
    fs::write(data.join("host.txt"), "from the host\n").unwrap();
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.sh("vm", "echo mine > /data/vm.txt");
    feather.ok(&["checkpoint", "vm"]);
    let mut hold = crate::support::RecordHold::before_restored_layers("ckpt-swapped");
    let restoring = hold.restore(&feather, "vm");
    base.unmount(&data);
    fs::remove_dir(&data).unwrap();
    std::os::unix::fs::symlink(decoy.as_str(), &data).unwrap();
    hold.release();
    let restored = restoring.wait_with_output().unwrap();
    fs::remove_file(&data).unwrap();
    let stderr = String::from_utf8_lossy(&restored.stderr);
    assert!(
        !restored.status.success()
            && stderr.contains(&format!(
                "the lower folder of the layer at /data, {} is a link now",
                data.display()
            )),
        "{stderr}"
    );
}

#[test]
fn redis_with_hundreds_of_megabytes_keeps_every_key() {
    // Over the host's own root: the VM runs the host's redis-server, on a unix socket.
    let feather = Feather::new("ckpt-redis");
    feather.require_criu();
    feather.ok(&["create", "db", "--net", "none"]);
    feather.ok(&["start", "db"]);
    feather.sh(
        "db",
        "redis-server --port 0 --unixsocket /run/redis.sock --save '' --appendonly no \
         --daemonize yes --logfile /run/redis.log --enable-debug-command yes",
    );
    let redis = |args: &str| feather.sh("db", &format!("redis-cli -s /run/redis.sock {args}"));
    feather.eventually("redis answers", || {
        feather
            .run(&[
                "exec",
                "db",
                "--",
                "redis-cli",
                "-s",
                "/run/redis.sock",
                "PING",
            ])
            .stdout
            .contains("PONG")
    });
    // 200,000 keys of 1,000 bytes: about 230 MB in redis's memory.
    assert_eq!(redis("DEBUG POPULATE 200000 key 1000"), "OK\n");
    let digest = redis("DEBUG DIGEST");
    assert_eq!(redis("DBSIZE"), "200000\n");
    let pid = redis("INFO server | grep process_id");

    feather.ok(&["checkpoint", "db"]);
    let images = feather.vm_dir("db").join("checkpoint");
    let size: u64 = fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        size > 200 << 20,
        "the images hold redis's memory: {size} bytes"
    );
    feather.ok(&["restore", "db"]);

    assert_eq!(redis("DBSIZE"), "200000\n");
    assert_eq!(redis("DEBUG DIGEST"), digest, "every key and value intact");
    // DEBUG POPULATE pads each value with NUL bytes to its size.
    let value = redis("GET key:199999");
    assert!(
        value.starts_with("value:199999\0") && value.len() == 1001,
        "{}",
        value.len()
    );
    assert_eq!(
        redis("INFO server | grep process_id"),
        pid,
        "the same redis process"
    );
    assert_eq!(redis("SET after restore"), "OK\n", "and it goes on serving");
}

#[test]
fn a_running_exec_is_named_and_the_vm_keeps_running() {
    let (feather, _base) = offline_vm("ckpt-exec");
    feather.require_criu();
    // `feather exec` keeps a connection to the VM's init until its command ends.
    let mut exec = feather
        .command()
        .args(["exec", "vm", "--", "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    feather.eventually("the command runs", || {
        feather
            .sh("vm", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
            .contains("sleep 1000")
    });
    let refused = feather.fails(&["checkpoint", "vm"]);
    let _ = exec.kill();
    let _ = exec.wait();
    assert!(
        refused.contains("a `feather exec` still running"),
        "the error says why: {refused}"
    );
    assert_eq!(feather.status("vm"), "running");
}

#[test]
fn a_vm_on_the_hosts_network_is_refused_plainly_where_landlock_scopes_it() {
    let feather = Feather::new("ckpt-nethost");
    let base = ScratchBase::new("ckpt-nethost");
    feather.start_over("vm", &base, &["--net", "host"]);
    let outcome = feather.run(&["checkpoint", "vm"]);
    if matches!(
        feather_confine::landlock::support(),
        feather_confine::landlock::Support::Scoping { .. }
    ) {
        assert_ne!(outcome.code, 0);
        assert!(
            outcome.stderr.contains("--net host") && outcome.stderr.contains("--net none"),
            "{}",
            outcome.stderr
        );
        assert_eq!(feather.status("vm"), "running");
    }
}

/// CRIU does not recreate Landlock domains: a unit that ran under one (`ProtectSystem=`, …)
/// runs without it after a restore, until it restarts. That is shown, not hidden: `service
/// ls --json` lists its settings as not in force, and its log says why; a restart ends it.
/// A `PrivateTmp=` unit (its process in a mount namespace of its own) comes back with its
/// private `/tmp`. A `SystemCallFilter=` unit comes back under its own filter, above the VM's
/// (the restore checks that feather's filters are at the bottom of every process's stack, and
/// lets the unit's own stand above them).
#[test]
fn a_restored_unit_that_lost_its_landlock_domain_says_so_until_it_restarts() {
    let feather = Feather::new("ckpt-landlock-units");
    feather.require_criu();
    feather.ok(&["create", "vm", "--net", "none"]);
    feather.ok(&["start", "vm"]);
    feather.sh(
        "vm",
        "mkdir -p /etc/systemd/system && \
         printf '[Service]\\nNoNewPrivileges=yes\\nProtectSystem=strict\\nExecStart=/bin/sleep 1000\\n' \
         > /etc/systemd/system/strict.service && \
         printf '[Service]\\nPrivateTmp=yes\\nExecStart=/bin/sh -c \"echo mine > /tmp/mine; exec sleep 1000\"\\n' \
         > /etc/systemd/system/private.service && \
         printf '[Service]\\nSystemCallFilter=~ptrace\\nExecStart=/bin/sleep 999\\n' \
         > /etc/systemd/system/filtered.service",
    );
    feather.ok(&["service", "start", "vm", "strict", "private", "filtered"]);
    let not_applied = |unit: &str| {
        let list: serde_json::Value =
            serde_json::from_str(&feather.ok(&["service", "ls", "vm", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == unit)
            .unwrap_or_else(|| panic!("{unit} not in {list}"))["not_applied"]
            .clone()
    };
    assert_eq!(not_applied("strict.service"), serde_json::json!([]));
    feather.ok(&["checkpoint", "vm"]);
    feather.ok(&["restore", "vm"]);
    let lost = not_applied("strict.service");
    assert!(
        lost.as_array().unwrap().iter().any(|entry| entry
            .as_str()
            .unwrap()
            .starts_with("Service.ProtectSystem (not in force until it restarts")),
        "{lost}"
    );
    let log = feather.sh("vm", "cat /var/log/feather/strict.service.log");
    assert!(
        log.contains("the VM was restored from a checkpoint: ProtectSystem= (not in force"),
        "{log}"
    );
    assert_eq!(not_applied("private.service"), serde_json::json!([]));
    // The private unit's process still sees its own /tmp.
    let private = feather.sh(
        "vm",
        "for p in $(pgrep -x sleep); do cat /proc/$p/root/tmp/mine 2>/dev/null; done; echo end",
    );
    assert!(private.contains("mine\n"), "{private}");
    let filtered = feather.sh(
        "vm",
        "grep Seccomp_filters /proc/$(pgrep -xf '/bin/sleep 999')/status",
    );
    assert!(
        filtered.contains("Seccomp_filters:\t3"),
        "the VM's two and its own: {filtered}"
    );
    feather.ok(&["service", "restart", "vm", "strict"]);
    assert_eq!(not_applied("strict.service"), serde_json::json!([]));
}

/// A throw-away VM's keeper refuses a checkpoint asked of it directly, not only through `feather
/// checkpoint`, whose front refuses it first: the keeper does not wait for init to let go of
/// its boot socket, which CRIU could not dump (review start29 L2).
#[test]
fn a_throw_away_vms_keeper_refuses_a_checkpoint_asked_of_it_directly() {
    use std::io::{BufRead, BufReader};
    let feather = Feather::new("ckpt-run-rm");
    feather.require_criu();
    let mut run = feather
        .command()
        .args([
            "run",
            "--rm",
            "--net",
            "none",
            "--",
            "sh",
            "-c",
            "hostname; exec sleep 60",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut name = String::new();
    BufReader::new(run.stdout.take().unwrap())
        .read_line(&mut name)
        .unwrap();
    let answer = ask_keeper(&feather.control_socket(name.trim()), post_copy_dump()).answer();
    // The run's front passes SIGTERM on to its command, which ends, and the VM with it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    run.wait().unwrap();
    match answer.unwrap() {
        feather_vm::protocol::Response::Error { message } => {
            assert_eq!(message, "a throw-away VM cannot be checkpointed")
        }
        other => panic!("a throw-away VM's keeper answered a checkpoint with {other:?}"),
    }
}

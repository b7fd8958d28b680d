//! `PrivateTmp=`: a unit's processes see folders of their own at `/tmp` and `/var/tmp`, made
//! by the VM's spawner in a mount namespace of their own (crates/feather-vm/src/spawner.rs),
//! and the manager follows them, though they are not its children.

use crate::services::{service, services, vm, write_unit};
use crate::support::Feather;

/// What a unit's process sees of `/tmp` and `/var/tmp`, into its log.
const LOOK: &str = "ExecStart=/bin/sh -c 'for d in /tmp /var/tmp; do \
    test -e $$d/vm-marker && echo $$d sees-vm || echo $$d own; \
    echo unit > $$d/unit-marker; stat -c \"$$d mode %%a\" $$d; done; \
    cat /tmp/from-pre; grep -E \"^(CapEff|Seccomp):\" /proc/self/status'\n";

fn log(feather: &Feather, vm: &str, unit: &str) -> String {
    feather.sh(vm, &format!("cat /var/log/feather/{unit}.service.log"))
}

#[test]
fn services_private_tmp_gives_a_unit_its_own_tmp_and_var_tmp() {
    let feather = Feather::new("svc-privtmp");
    vm(&feather, "pt");
    feather.sh(
        "pt",
        "echo vm > /tmp/vm-marker && echo vm > /var/tmp/vm-marker",
    );
    write_unit(
        &feather,
        "pt",
        "private.service",
        &format!(
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nPrivateTmp=yes\n\
             ExecStartPre=/bin/sh -c 'echo pre-was-here > /tmp/from-pre'\n{LOOK}"
        ),
    );
    write_unit(
        &feather,
        "pt",
        "shared.service",
        &format!(
            "[Service]\nType=oneshot\nRemainAfterExit=yes\n\
             ExecStartPre=/bin/sh -c 'echo pre-was-here > /tmp/from-pre'\n{LOOK}"
        ),
    );
    feather.ok(&["service", "start", "pt", "private"]);
    let private = log(&feather, "pt", "private");
    // Its own folders, sticky and writable by all as systemd makes them, shared by its
    // commands (ExecStartPre='s file is there), and the VM's capability set and filter.
    for line in [
        "/tmp own\n",
        "/var/tmp own\n",
        "/tmp mode 1777\n",
        "/var/tmp mode 1777\n",
        "pre-was-here\n",
        "CapEff:\t00000000a00425fb\n",
        "Seccomp:\t2\n",
    ] {
        assert!(private.contains(line), "{line:?} not in\n{private}");
    }
    // The VM's /tmp has none of it; the unit's folder is shown where systemd puts it.
    let vm_view = feather.sh(
        "pt",
        "ls /tmp/unit-marker /var/tmp/unit-marker 2>&1; \
         cat /tmp/systemd-private-*-private.service/tmp/unit-marker \
             /var/tmp/systemd-private-*-private.service/tmp/unit-marker",
    );
    assert!(
        vm_view.contains("cannot access '/tmp/unit-marker'")
            && vm_view.contains("cannot access '/var/tmp/unit-marker'")
            && vm_view.ends_with("unit\nunit\n"),
        "{vm_view}"
    );
    // Under a Landlock domain of the unit's own (here ProtectSystem=full, as spamd's unit has),
    // its folders stay writable. (The rule that makes them so under ProtectSystem=strict is
    // checked by services_filesystem's `stricttmp`, which fails without it.)
    write_unit(
        &feather,
        "pt",
        "guarded.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nPrivateTmp=yes\nNoNewPrivileges=yes\n\
         ProtectSystem=full\nExecStart=/bin/sh -c 'for d in /tmp /var/tmp; do \
         echo x > $$d/guarded && echo $$d writable; done'\n",
    );
    feather.ok(&["service", "start", "pt", "guarded"]);
    let guarded = log(&feather, "pt", "guarded");
    assert!(
        guarded.contains("/tmp writable\n") && guarded.contains("/var/tmp writable\n"),
        "{guarded}"
    );
    // A unit without it shares the VM's.
    feather.ok(&["service", "start", "pt", "shared"]);
    let shared = log(&feather, "pt", "shared");
    assert!(
        shared.contains("/tmp sees-vm\n") && shared.contains("/var/tmp sees-vm\n"),
        "{shared}"
    );
    let list = services(&feather, "pt");
    assert_eq!(
        service(&list, "private.service")["not_applied"],
        serde_json::json!([])
    );
    // Stopped, its folders go, as systemd removes them.
    feather.ok(&["service", "stop", "pt", "private"]);
    let left = feather.sh(
        "pt",
        "ls -d /tmp/systemd-private-*-private.service /var/tmp/systemd-private-*-private.service \
         2>/dev/null | wc -l",
    );
    assert_eq!(left.trim(), "0", "folders left after the stop");
}

/// The main process of a `PrivateTmp=` unit is the spawner's child, not the manager's: its
/// end is still seen (through its pidfd), with its status, and a restart follows it.
#[test]
fn services_private_tmp_main_process_is_followed_to_its_end() {
    let feather = Feather::new("svc-privtmp-main");
    vm(&feather, "pm");
    write_unit(
        &feather,
        "pm",
        "sleeper.service",
        "[Service]\nPrivateTmp=yes\nExecStart=/bin/sleep 1000\n",
    );
    feather.ok(&["service", "start", "pm", "sleeper"]);
    let list = services(&feather, "pm");
    let sleeper = service(&list, "sleeper.service");
    assert_eq!(sleeper["sub"], "running", "{sleeper}");
    let pid = sleeper["main_pid"].as_i64().unwrap();
    let parent = feather.sh("pm", &format!("awk '{{print $4}}' /proc/{pid}/stat"));
    let spawner = feather.sh("pm", "pgrep -x feather-spawner");
    assert_eq!(parent, spawner, "the main process is the spawner's child");
    feather.sh("pm", &format!("kill -USR1 {pid}"));
    feather.eventually("the unit failed with its main process's signal", || {
        let list = services(&feather, "pm");
        service(&list, "sleeper.service")["state"] == "failed"
    });
    let text = log(&feather, "pm", "sleeper");
    assert!(
        text.contains("main process was killed by SIGUSR1"),
        "{text}"
    );
}

/// Debian's own units that ship `PrivateTmp=true` and that the catalogue starts (apache2,
/// redis-server, memcached) start from the host's files, answer their clients, and each one's
/// main process sees its own folder at `/tmp`, shown in the VM where systemd puts it.
#[test]
fn services_private_tmp_debians_units_answer_with_their_own_tmp() {
    let feather = Feather::new("svc-privtmp-debian");
    vm(&feather, "deb");
    feather.ok(&[
        "service",
        "start",
        "deb",
        "apache2",
        "redis-server",
        "memcached",
    ]);
    assert!(feather
        .sh("deb", "curl -sf http://127.0.0.1/")
        .contains("Apache2 Debian Default Page"));
    assert_eq!(feather.sh("deb", "redis-cli PING"), "PONG\n");
    let version = feather.ok(&[
        "exec",
        "deb",
        "--",
        "bash",
        "-c",
        "exec 3<>/dev/tcp/127.0.0.1/11211 && printf 'version\\r\\nquit\\r\\n' >&3 && timeout 2 cat <&3",
    ]);
    assert!(version.starts_with("VERSION "), "{version}");
    let list = services(&feather, "deb");
    for unit in [
        "apache2.service",
        "redis-server.service",
        "memcached.service",
    ] {
        let entry = service(&list, unit);
        let not_applied = entry["not_applied"].as_array().unwrap();
        assert!(
            !not_applied.contains(&serde_json::json!("Service.PrivateTmp")),
            "{entry}"
        );
        let pid = entry["main_pid"].as_i64().unwrap();
        // What its main process has at /tmp and /var/tmp: binds of its folders (mountinfo,
        // readable also for a unit in a Landlock domain, which keeps /proc/PID/root out of
        // reach), which the VM shows where systemd puts them.
        let binds = feather.sh(
            "deb",
            &format!(
                "awk '$5 == \"/tmp\" || $5 == \"/var/tmp\" {{print $5, $4}}' /proc/{pid}/mountinfo; \
                 ls -d /tmp/systemd-private-*-{unit}/tmp /var/tmp/systemd-private-*-{unit}/tmp"
            ),
        );
        for root in ["/tmp", "/var/tmp"] {
            let bound = binds
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("{root} ")))
                .next_back()
                .unwrap_or_else(|| panic!("{unit}: nothing at {root}: {binds}"));
            assert!(
                bound.contains("/systemd-private-") && bound.ends_with(&format!("-{unit}/tmp")),
                "{unit}: {root} is {bound}: {binds}"
            );
        }
        assert_eq!(binds.matches("/systemd-private-").count(), 4, "{binds}");
    }
}

/// The host pids of VM processes whose command line is `command` (NUL-separated), in the pid
/// namespace of the VM whose init is host pid `init`.
fn host_pids_of(init: &str, command: &[u8]) -> Vec<String> {
    let vm_pids = std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.parse::<u32>().is_ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() == Some(vm_pids.clone())
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .ok()
                    .as_deref()
                    == Some(command)
        })
        .collect()
}

/// Whether the mount namespace of host process `pid` has a mount at `path`.
fn mounted_at(pid: &str, path: &str) -> bool {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

/// A restored VM whose checkpoint lacked masks (kernel interfaces not there at the dump: a
/// migration from another host's kernel; made here by taking them away before it) gets them in
/// every mount namespace, a `PrivateTmp=` unit's too (made private here, so that none reaches
/// it from init's), and is restored. Before, they were added in init's namespace only, and the
/// mount check, which reads every namespace, refused it.
#[test]
fn a_restored_vm_masks_what_its_checkpoint_lacked_in_a_units_namespace_too() {
    let feather = Feather::new("svc-privtmp-masks");
    feather.require_criu();
    vm(&feather, "pm");
    write_unit(
        &feather,
        "pm",
        "sleeper.service",
        "[Service]\nPrivateTmp=yes\nExecStart=/bin/sleep 1000\n",
    );
    feather.ok(&["service", "start", "pm", "sleeper"]);
    let init = || {
        let state = std::fs::read_to_string(feather.vm_dir("pm").join("state.json")).unwrap();
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        state["init_pid"].to_string()
    };
    let sleeper = || {
        let pids = host_pids_of(&init(), b"/bin/sleep\x001000\x00");
        assert_eq!(pids.len(), 1, "the unit's sleep: {pids:?}");
        pids[0].clone()
    };
    let masked: Vec<&str> = ["/proc/interrupts", "/sys/firmware"]
        .into_iter()
        .filter(|p| std::path::Path::new(p).exists())
        .collect();
    assert_eq!(masked.len(), 2, "this test needs a host with both");
    let unit = sleeper();
    assert_ne!(
        std::fs::read_link(format!("/proc/{unit}/ns/mnt")).unwrap(),
        std::fs::read_link(format!("/proc/{}/ns/mnt", init())).unwrap(),
        "the unit has a mount namespace of its own"
    );
    // Taken away in init's namespace, where they are shared: the unit's copies, its slaves,
    // go too (they cannot be unmounted there: copied into a namespace of its own, locked).
    let unmount = std::process::Command::new("nsenter")
        .args(["-t", &init(), "-m", "-p", "umount"])
        .args(&masked)
        .status()
        .unwrap();
    assert!(unmount.success());
    for pid in [unit.clone(), init()] {
        for path in &masked {
            assert!(!mounted_at(&pid, path), "{path} still masked in {pid}");
        }
    }
    // The unit's namespace made private, as its dump then holds it: the masks made in init's
    // at the restore do not reach it, and must be made there too. (A slave, as the spawner
    // makes it, gets them from init's: CRIU restores the propagation.)
    let private = std::process::Command::new("nsenter")
        .args(["-t", &unit, "-m", "--", "mount", "--make-rprivate", "/"])
        .status()
        .unwrap();
    assert!(private.success());
    let shared = std::fs::read_to_string(format!("/proc/{unit}/mountinfo")).unwrap();
    assert!(!shared.contains(" master:"), "{shared}");
    feather.ok(&["checkpoint", "pm"]);
    feather.ok(&["restore", "pm"]);
    assert_eq!(feather.status("pm"), "running");
    for pid in [sleeper(), init()] {
        for path in &masked {
            assert!(mounted_at(&pid, path), "{path} not masked in {pid}");
        }
    }
}

//! The VM's spawner (`PrivateTmp=`, crates/feather-vm/src/spawner.rs) is the one process of a
//! VM that keeps CAP_SYS_ADMIN. The VM's root attacks it: it takes the spawner's socket from
//! the service manager (ptrace-level access, as a tracer of the manager has), sends requests
//! naming other paths, plants links where the unit folders go, and runs a program of its own
//! choosing through it; and it kills it. The VM's root must gain nothing it could not already
//! do, and the units must go on as documented.

use crate::support::Feather;

/// Run as the VM's root. Takes descriptor 101 (the spawner's socket) of the service manager
/// with pidfd_getfd, then tries what argv[1] names and prints what came back.
const ATTACK: &str = r#"import ctypes, json, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
manager = int(open("/run/feather-svc/manager.pid").read())
pidfd = os.pidfd_open(manager)
fd = libc.syscall(438, pidfd, 101, 0)  # pidfd_getfd
if fd < 0:
    print("getfd failed", os.strerror(ctypes.get_errno()))
    sys.exit(1)
spawner = socket.socket(fileno=fd)

def ask(folder):
    spawner.send(json.dumps({"folder": folder}).encode())
    message, fds, _, _ = socket.recv_fds(spawner, 65536, 4)
    return json.loads(message), fds

what = sys.argv[1]
if what == "names":
    for folder in ["../../etc", "systemd-private-x/../../../etc", "..", "/etc"]:
        answer, fds = ask(folder)
        print(folder, "->", json.dumps(answer), len(fds))
elif what == "link":
    answer, fds = ask("systemd-private-planted")
    print("answer", json.dumps(answer))
    channel = socket.socket(fileno=fds[1])
    channel.settimeout(10)
    print("child says", channel.recv(65536).decode())
elif what == "run":
    answer, fds = ask("systemd-private-root")
    print("answer", json.dumps(answer))
    channel = socket.socket(fileno=fds[1])
    channel.settimeout(10)
    out = os.open("/root/spawned.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open("/dev/null", os.O_RDONLY)
    script = ("grep -E '^(CapEff|CapBnd|Seccomp|Seccomp_filters):' /proc/self/status; "
              "mount -t tmpfs none /mnt && echo MOUNTED; "
              "unshare -m true && echo UNSHARED; "
              "echo done")
    plan = {"program": "/bin/sh", "argv": ["sh", "-c", script], "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/", "setup": {"credentials": None, "umask": 18, "limits": [],
            "listen": None, "listen_fds": 0, "cgroup_procs": 0, "drop_capabilities": [],
            "ambient_capabilities": [], "no_new_privileges": False, "seccomp": [],
            "memory_deny_write_execute": False, "landlock": False}}
    socket.send_fds(channel, [json.dumps(plan).encode()], [null, out, out])
    print("reply", repr(channel.recv(65536)))
    for _ in range(100):
        if "done" in open("/root/spawned.out").read():
            break
        time.sleep(0.1)
"#;

fn status_field(text: &str, field: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in {text}"))
}

/// A VM whose service manager runs a `PrivateTmp=` unit (so it holds the spawner's socket),
/// with the attack script at /root/attack.py.
fn vm_with_a_private_tmp_unit(label: &str) -> Feather {
    let feather = Feather::new(label);
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    feather.sh(
        "vm",
        &format!(
            "mkdir -p /etc/systemd/system && \
             printf '[Service]\\nPrivateTmp=yes\\nExecStart=/bin/sleep 1000\\n' \
             > /etc/systemd/system/private.service && \
             printf '[Service]\\nExecStart=/bin/sleep 1000\\n' \
             > /etc/systemd/system/plain.service && \
             cat > /root/attack.py <<'EOF'\n{ATTACK}EOF"
        ),
    );
    feather.ok(&["service", "start", "vm", "private"]);
    feather
}

#[test]
fn the_spawner_refuses_a_request_naming_another_path_before_it_forks() {
    let feather = vm_with_a_private_tmp_unit("spawner-names");
    let out = feather.ok(&["exec", "vm", "--", "python3", "/root/attack.py", "names"]);
    for folder in ["../../etc", "systemd-private-x/../../../etc", "..", "/etc"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{folder} ->")))
            .unwrap_or_else(|| panic!("no answer for {folder}: {out}"));
        // Refused, with no process and no descriptor: the name is checked before any fork.
        assert!(
            line.contains("\"Refused\"")
                && line.contains("is not the name of a unit's private folder")
                && line.ends_with(" 0"),
            "{line}"
        );
    }
}

#[test]
fn a_link_planted_where_a_units_folder_goes_is_never_bound() {
    let feather = vm_with_a_private_tmp_unit("spawner-link");
    // The VM's root plants links to /etc where a unit's private folders would be.
    feather.sh(
        "vm",
        "mkdir -p /tmp/systemd-private-planted /var/tmp/systemd-private-planted && \
         ln -s /etc /tmp/systemd-private-planted/tmp && \
         ln -s /etc /var/tmp/systemd-private-planted/tmp",
    );
    let out = feather.ok(&["exec", "vm", "--", "python3", "/root/attack.py", "link"]);
    // The child could not open its folder without following the link (the link itself is no
    // folder), and says so at once, before any plan came: it never bound /etc over /tmp.
    assert!(out.contains("child says /tmp: Not a directory"), "{out}");
}

#[test]
fn a_process_the_vms_root_gets_from_the_spawner_holds_no_more_than_the_vms_root() {
    let feather = vm_with_a_private_tmp_unit("spawner-gains");
    feather.sh(
        "vm",
        "mkdir -p /tmp/systemd-private-root/tmp /var/tmp/systemd-private-root/tmp",
    );
    let out = feather.ok(&["exec", "vm", "--", "python3", "/root/attack.py", "run"]);
    assert!(
        out.contains("\"Started\"") && out.contains("reply b''"),
        "{out}"
    );
    let spawned = feather.sh("vm", "cat /root/spawned.out");
    let own = feather.ok(&["exec", "vm", "--", "cat", "/proc/self/status"]);
    // The capabilities and filter of every process of the VM: CAP_SYS_ADMIN is gone.
    for field in ["CapEff:", "CapBnd:"] {
        assert_eq!(
            status_field(&spawned, field),
            status_field(&own, field),
            "{field}\n{spawned}"
        );
    }
    assert_eq!(status_field(&spawned, "Seccomp:"), "2", "{spawned}");
    // Under the spawner's two filters, the VM's two, which init compiled for the spawner to
    // install in each process it makes.
    assert_eq!(status_field(&spawned, "Seccomp_filters:"), "4", "{spawned}");
    assert!(
        !spawned.contains("MOUNTED") && !spawned.contains("UNSHARED") && spawned.contains("done"),
        "{spawned}"
    );
}

#[test]
fn the_vms_root_cannot_reach_into_the_spawner() {
    let feather = vm_with_a_private_tmp_unit("spawner-dumpable");
    let out = feather.sh(
        "vm",
        "p=$(pgrep -x feather-spawner); \
         cat /proc/$p/environ >/dev/null 2>&1 && echo environ-read; \
         ls -l /proc/$p/fd/ >/dev/null 2>&1 && echo fds-listed; echo checked",
    );
    assert_eq!(out, "checked\n", "the VM's root reached into the spawner");
}

#[test]
fn a_killed_spawner_fails_only_the_private_tmp_units_and_says_why() {
    let feather = vm_with_a_private_tmp_unit("spawner-killed");
    feather.ok(&["service", "stop", "vm", "private"]);
    feather.sh("vm", "kill -9 $(pgrep -x feather-spawner)");
    feather.ok(&["service", "start", "vm", "plain"]);
    let failed = feather.fails(&["service", "start", "vm", "private"]);
    assert!(
        failed.contains("PrivateTmp=yes needs the VM's spawner, which does not answer")
            && failed.contains("can start again once the VM restarts"),
        "{failed}"
    );
}

/// The spawner's capabilities and filters, as the VM's root reads them (its `/proc` shows
/// them, though it can reach nothing else of the spawner's).
const SPAWNER_STATUS: &str =
    "grep -E '^(CapEff|CapBnd|Seccomp|Seccomp_filters):' /proc/$(pgrep -x feather-spawner)/status";

#[test]
fn a_throw_away_vms_spawner_is_confined_as_a_kept_vms() {
    // A throw-away VM's init runs the keeper's memory and prepares its command as the keeper
    // finishes (a kept VM's re-executes itself): its spawner, which installs the filters init
    // compiled, must end confined the same.
    let feather = Feather::new("spawner-throw-away");
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    let kept = feather.ok(&["exec", "vm", "--", "sh", "-c", SPAWNER_STATUS]);
    let thrown = feather.ok(&["run", "--rm", "--", "sh", "-c", SPAWNER_STATUS]);
    for field in ["CapEff:", "CapBnd:", "Seccomp:", "Seccomp_filters:"] {
        assert_eq!(
            status_field(&thrown, field),
            status_field(&kept, field),
            "{field}\nthrow-away:\n{thrown}\nkept:\n{kept}"
        );
    }
    assert_eq!(status_field(&thrown, "Seccomp:"), "2", "{thrown}");
    assert_eq!(status_field(&thrown, "Seccomp_filters:"), "2", "{thrown}");
}

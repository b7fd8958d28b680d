//! The hardening behind the matrix — seccomp filter, capability set, no no_new_privs — and that
//! it leaves ordinary programs working: a shell pipeline, set-uid `passwd`, `ping` with its
//! file capability, both for `feather exec` and for the programs init starts.

use std::fs;
use std::os::unix::net::UnixListener;

use crate::support::Feather;

fn status_field(text: &str, field: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in {text}"))
}

#[test]
fn every_process_entering_a_vm_runs_under_the_seccomp_filter_without_no_new_privs() {
    let feather = Feather::new("hardening-seccomp");
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    let exec = feather.ok(&["exec", "vm", "--", "cat", "/proc/self/status"]);
    assert_eq!(
        status_field(&exec, "Seccomp:"),
        "2",
        "exec'd programs are filtered"
    );
    assert_eq!(
        status_field(&exec, "NoNewPrivs:"),
        "0",
        "set-uid programs must keep working"
    );
    // init's own workloads (here a throw-away VM's command) inherit init's filter.
    let run = feather.ok(&["run", "--rm", "--", "cat", "/proc/self/status"]);
    assert_eq!(
        status_field(&run, "Seccomp:"),
        "2",
        "init's workloads are filtered"
    );
    assert_eq!(status_field(&run, "NoNewPrivs:"), "0");
    assert_eq!(
        status_field(&run, "CapBnd:"),
        status_field(&exec, "CapBnd:"),
        "one capability set for both"
    );
}

#[test]
fn denied_calls_fail_with_eperm_and_the_program_goes_on() {
    let feather = Feather::new("hardening-eperm");
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    // keyctl needs no capability, so EPERM here is the filter's; the script continues after it.
    let script = "import ctypes, os\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        r = libc.syscall(250, 0, -3, 0, 0, 0)\n\
        print(r, os.strerror(ctypes.get_errno()))\n\
        print('still running')\n";
    let out = feather.ok(&["exec", "vm", "--", "python3", "-c", script]);
    assert_eq!(out, "-1 Operation not permitted\nstill running\n");
    // Tools report a clear error, not a crash.
    let date = feather.run(&["exec", "vm", "--", "date", "-s", "@0"]);
    assert_ne!(date.code, 0);
    assert!(
        date.stderr.contains("Operation not permitted"),
        "{}",
        date.stderr
    );
}

#[test]
fn ordinary_and_set_uid_programs_work_inside_a_hardened_vm() {
    let feather = Feather::new("hardening-programs");
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    assert_eq!(
        feather.ok(&[
            "exec",
            "vm",
            "--",
            "bash",
            "-c",
            "seq 1 100 | grep 7 | wc -l"
        ]),
        "19\n"
    );
    assert_eq!(
        feather.ok(&[
            "exec",
            "vm",
            "--",
            "sh",
            "-c",
            "echo piped | tr a-z A-Z | (read x; echo $x)"
        ]),
        "PIPED\n"
    );
    // passwd is set-uid root: run by nobody, it can read /etc/shadow only if the set-uid bit
    // takes effect (with no_new_privs it prints "never" for the last change).
    let shadow = fs::read_to_string("/etc/shadow").unwrap_or_default();
    let nobody_changed = shadow
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .and_then(|l| l.split(':').nth(2))
        .unwrap_or_default()
        .to_owned();
    let passwd = feather.ok(&[
        "exec", "-u", "nobody", "-w", "/", "vm", "--", "passwd", "-S",
    ]);
    assert!(passwd.starts_with("nobody "), "{passwd}");
    if !nobody_changed.is_empty() {
        assert!(
            !passwd.contains(" never "),
            "set-uid passwd could not read /etc/shadow: {passwd}"
        );
    }
    // ping holds cap_net_raw as a file capability (installed by setup.sh).
    let ping = feather.run(&[
        "exec",
        "-u",
        "nobody",
        "-w",
        "/",
        "vm",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "127.0.0.1",
    ]);
    assert_eq!(
        ping.code, 0,
        "ping as nobody: {}{}",
        ping.stdout, ping.stderr
    );
    assert!(ping.stdout.contains("1 received"), "{}", ping.stdout);
}

#[test]
fn a_host_socket_in_the_lower_layer_refuses_connections_from_a_vm() {
    let feather = Feather::new("hardening-lower-socket");
    let path = format!("/tmp/feather-test-lower-{}.sock", std::process::id());
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind host socket");
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _cleanup = Remove(path.clone());
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('{path}')\n    print('connected')\nexcept OSError as e:\n    print(e.errno == 111 and 'ECONNREFUSED' or e)\n"
    );
    let out = feather.ok(&["exec", "vm", "--", "python3", "-c", &script]);
    assert_eq!(
        out, "ECONNREFUSED\n",
        "the VM sees the socket file but cannot reach the host listener"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing reached the host listener"
    );
}

#[test]
fn the_vm_s_root_cannot_reach_into_its_init() {
    // init holds the exec channel's listener and, in a throw-away VM, briefly its layer; it
    // has the same capabilities as the VM's root, so only its being not dumpable keeps the
    // VM's root out of its descriptors, environment and memory. A process of the VM's own,
    // dumpable, shows the probe reaches where it may.
    let feather = Feather::new("init-undumpable");
    let base = crate::support::ScratchBase::new("init-undumpable");
    feather.start_over("vm", &base, &[]);
    // Each: a descriptor's link, the environment, the memory opened (its first page is
    // unmapped, so nothing is read).
    let probe = |pid: &str| {
        format!(
            "readlink /proc/{pid}/fd/0 >/dev/null 2>&1 && echo fd=reached || echo fd=refused; \
             head -c1 /proc/{pid}/environ >/dev/null 2>&1 && echo environ=reached || echo environ=refused; \
             (: < /proc/{pid}/mem) 2>/dev/null && echo mem=reached || echo mem=refused"
        )
    };
    let init = feather.sh("vm", &probe("1"));
    assert_eq!(init, "fd=refused\nenviron=refused\nmem=refused\n");
    let own = feather.sh("vm", &format!("sleep 30 & {}; kill $!", probe("$!")));
    assert_eq!(own, "fd=reached\nenviron=reached\nmem=reached\n");
}

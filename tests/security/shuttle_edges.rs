//! Shuttle's host-side edges, attacked from a VM's root: the hand-over clean-up (the share
//! helper is host root inside the target VM's mounts), the broker's sockets in a VM, the D-Bus
//! proxy's confinement, and whose identity a channel carries.

use std::fs;
use std::path::Path;

use crate::support::{Feather, HostDir, ScratchBase};

/// Where `a` keeps the file it hands over (in its own layer).
const DOCS: &str = "/srv/feather-shuttle-edges";

/// Whether `/proc/sys/kernel/core_pattern` in the view of process `pid` opens for writing.
/// Nothing is ever written: the file is opened for appending and closed at once.
fn core_pattern_opens_for_writing(pid: i64) -> bool {
    fs::OpenOptions::new()
        .append(true)
        .open(format!("/proc/{pid}/root/proc/sys/kernel/core_pattern"))
        .map(drop)
        .is_ok()
}

fn init_pid(feather: &Feather, vm: &str) -> i64 {
    feather.inspect(vm)["state"]["init_pid"]
        .as_i64()
        .expect("the VM runs")
}

fn host_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.contains("feather/shared") || line.contains(" /proc/sys "))
        .map(str::to_owned)
        .collect()
}

/// The target of a hand-over replaces `/run/feather/shared/<id>` with a symlink to `/proc`
/// (its program does it before it ends, and a loop of b's keeps doing it), the file handed
/// over being named `sys`: the clean-up, host root in b's mounts, must unmount its own mount
/// and nothing else — b's read-only `/proc/sys` stays.
#[test]
fn the_hand_over_clean_up_unmounts_its_own_mount_only() {
    let feather = Feather::new("edges-handover");
    let base = ScratchBase::new("edges-handover");
    let host = HostDir::new("edges-handover");
    let open = host.feather_open();
    feather.write_policy(
        "10-test",
        &format!(
            "invoke swap a b allow command=\"/bin/sh -c 'd=${{0%/*}}; mv $d $d.x 2>/dev/null && ln -s /proc $d; exit 0'\"\n\
             files {DOCS}/** a b allow mode=ro\n"
        ),
    );
    feather.ok(&["create", "a", "--net", "none"]);
    feather.ok(&["create", "b", "--base", base.as_str(), "--net", "none"]);
    feather.ok(&["start", "a"]);
    feather.ok(&["start", "b"]);
    let b = init_pid(&feather, "b");
    assert!(
        !core_pattern_opens_for_writing(b),
        "b's /proc/sys is read-only to begin with"
    );
    let before = host_mounts();
    feather.sh(
        "b",
        "mkdir -p /run/feather/shared; \
         (while :; do for d in /run/feather/shared/a-*; do \
            case $d in *.x) continue;; esac; \
            [ -d \"$d\" ] && [ ! -L \"$d\" ] && mv \"$d\" \"$d.x\" 2>/dev/null && ln -s /proc \"$d\"; \
          done; done) </dev/null >/dev/null 2>&1 &",
    );
    feather.sh("a", &format!("mkdir -p {DOCS} && echo handed > {DOCS}/sys"));
    for round in 0..12 {
        let outcome = feather.run(&[
            "exec",
            "a",
            "--",
            open.as_str(),
            "swap",
            &format!("{DOCS}/sys"),
        ]);
        // The loop may also win before the mount is made (the request then fails): either way
        // the clean-up ran.
        assert!(
            outcome.code == 0 || outcome.code == 125,
            "round {round}: {}{}",
            outcome.stdout,
            outcome.stderr
        );
        assert!(
            !core_pattern_opens_for_writing(b),
            "round {round}: the clean-up unmounted b's read-only /proc/sys"
        );
    }
    let b_mounts = fs::read_to_string(format!("/proc/{b}/mountinfo")).unwrap();
    assert!(
        !b_mounts.contains("feather/shared"),
        "every hand-over mount is gone from b: {b_mounts}"
    );
    assert!(
        b_mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/proc/sys")),
        "b still has its /proc/sys mount: {b_mounts}"
    );
    assert_eq!(host_mounts(), before, "the host's mounts are unchanged");
    assert!(!Path::new("/run/feather/shared").join("sys").exists());
}

/// A unix server in a VM that answers every connection with its peer's uid, gid and
/// supplementary groups (SO_PEERCRED, SO_PEERGROUPS), then closes it.
const WHO_SERVER: &str = r#"
import os, socket, struct, sys
path = sys.argv[1]
os.makedirs(os.path.dirname(path), exist_ok=True)
try:
    os.unlink(path)
except FileNotFoundError:
    pass
server = socket.socket(socket.AF_UNIX)
server.bind(path)
os.chmod(path, int(sys.argv[2], 8))
server.listen(8)
while True:
    client, _ = server.accept()
    _, uid, gid = struct.unpack("3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    raw = client.getsockopt(socket.SOL_SOCKET, 59, 256)  # SO_PEERGROUPS
    groups = sorted(struct.unpack("%dI" % (len(raw) // 4), raw))
    client.sendall(("%d %d %s\n" % (uid, gid, ",".join(map(str, groups)))).encode())
    client.close()
"#;

/// Connects to the unix socket at `path` in `vm` as uid and gid 1234 with group 4321 (or as
/// root) and prints the one line answered (nothing if the connection was closed unanswered).
fn ask_who(feather: &Feather, vm: &str, path: &str, as_user: bool) -> String {
    let client = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect('{path}'); \
         print(s.recv(200).decode().strip())"
    );
    let mut args = vec!["exec", vm, "--"];
    if as_user {
        args.extend([
            "setpriv", "--reuid", "1234", "--regid", "1234", "--groups", "4321",
        ]);
    }
    args.extend(["/usr/bin/python3", "-c", client.as_str()]);
    feather.run(&args).stdout.trim().to_owned()
}

/// A client of a unix channel reaches the target's socket as itself: the server sees its uid,
/// gid and groups, and the socket file's mode applies to it (the keeper's root does not lend
/// it its rights).
#[test]
fn a_unix_channel_carries_the_clients_identity_and_rights() {
    let feather = Feather::new("edges-who");
    feather.write_policy(
        "10-test",
        "ipc unix:/run/who/open.sock a b allow\n\
         ipc unix:/run/who/root.sock a b allow\n",
    );
    feather.ok(&["create", "a", "--net", "none"]);
    feather.ok(&["create", "b", "--net", "none"]);
    feather.ok(&["start", "b"]);
    crate::support::python_daemon(&feather, "b", WHO_SERVER, &["/run/who/open.sock", "777"]);
    crate::support::python_daemon(&feather, "b", WHO_SERVER, &["/run/who/root.sock", "700"]);
    feather.eventually("b's servers listen", || {
        feather
            .run(&[
                "exec",
                "b",
                "--",
                "sh",
                "-c",
                "test -S /run/who/open.sock && test -S /run/who/root.sock",
            ])
            .code
            == 0
    });
    feather.ok(&["start", "a"]);
    assert_eq!(ask_who(&feather, "a", "/run/who/open.sock", false), "0 0 0");
    assert_eq!(
        ask_who(&feather, "a", "/run/who/open.sock", true),
        "1234 1234 4321",
        "the target sees the client's own uid, gid and groups"
    );
    assert_eq!(
        ask_who(&feather, "a", "/run/who/root.sock", true),
        "",
        "a socket only root may use refuses the client, as it would in b itself"
    );
    assert_eq!(ask_who(&feather, "a", "/run/who/root.sock", false), "0 0 0");
}

/// The pid of the `xdg-dbus-proxy` whose command line holds `talk`, if one runs.
fn proxy_pid(talk: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let program = cmdline.split('\0').next()?;
        (program.ends_with("xdg-dbus-proxy") && cmdline.contains(talk)).then_some(pid)
    })
}

/// The value of `field` in /proc/PID/status.
fn status_field(pid: u32, field: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The D-Bus proxy parses what the VM sends: it runs as an unprivileged user, without
/// capabilities, with no_new_privs and a seccomp filter, and sees nothing of the host's files
/// beyond `/usr` and its own folder.
#[test]
fn the_dbus_proxy_runs_confined() {
    let feather = Feather::new("edges-dbus");
    let host = HostDir::new("edges-dbus");
    let marker = host.0.join("marker");
    fs::write(&marker, "the test's own").unwrap();
    let name = format!("org.feather.Edges{}", std::process::id());
    feather.write_policy(
        "10-test",
        &format!("ipc dbus:{name} client bus allow at=/run/edges-bus.sock\n"),
    );
    feather.ok(&["create", "bus"]);
    feather.ok(&["start", "bus"]);
    feather.ok(&["service", "start", "bus", "dbus"]);
    feather.ok(&["create", "client"]);
    feather.ok(&["start", "client"]);
    // The client is uid 1: so is its proxy.
    let as_daemon = ["setpriv", "--reuid", "1", "--regid", "1", "--clear-groups"];
    let pid = first_proxy(&feather, &name, &as_daemon);
    assert_ne!(status_field(pid, "Uid"), "0", "the proxy is not root");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000");
    let view = Path::new("/proc").join(pid.to_string()).join("root");
    assert!(view.join("usr/bin").is_dir(), "it sees /usr");
    for absent in [
        marker.strip_prefix("/").unwrap(),
        Path::new("root"),
        Path::new("etc/passwd"),
        Path::new("tmp"),
        Path::new("var/lib"),
    ] {
        assert!(
            !view.join(absent).exists(),
            "the proxy sees /{}",
            absent.display()
        );
    }
    // Its own pid namespace: it is alone there.
    let nspid = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = nspid.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
}

/// Python in a VM: `count` requests to its broker, each naming an application of `size` bytes.
fn invoke_requests(count: usize, size: usize) -> String {
    format!(
        "import socket, json\n\
         for _ in range({count}):\n\
         \x20   s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
         \x20   s.connect('/run/feather/shuttle.sock')\n\
         \x20   s.recv(65536)\n\
         \x20   s.send(json.dumps({{'version': 1, 'app': 'x' * {size}, 'vm': None, 'args': [], 'cwd': '/'}}).encode())\n\
         \x20   s.recv(65536)\n\
         \x20   s.close()\n\
         print('asked')\n"
    )
}

#[test]
fn a_vm_asking_its_broker_without_end_cannot_fill_the_hosts_disk_through_the_audit_log() {
    use feather_shuttle::audit::{MAX_FIELD, MAX_LOG_BYTES};
    let feather = Feather::new("audit-bound");
    feather.write_policy("invoke", "invoke true a b allow command=\"/bin/true\"\n");
    feather.ok(&["create", "a", "--net", "none"]);
    feather.ok(&["start", "a"]);
    // The log is near its bound already: one line of zeros, a sparse file that takes no disk.
    let log = feather.root.join("audit.log");
    let mut filled = fs::File::create(&log).unwrap();
    filled.set_len(MAX_LOG_BYTES - 10_001).unwrap();
    std::io::Seek::seek(&mut filled, std::io::SeekFrom::End(0)).unwrap();
    std::io::Write::write_all(&mut filled, b"\n").unwrap();
    drop(filled);
    let asked = feather.ok(&[
        "exec",
        "a",
        "--",
        "python3",
        "-c",
        &invoke_requests(40, 60_000),
    ]);
    assert_eq!(asked.trim(), "asked");
    let rotated = feather.root.join("audit.log.1");
    let size = |path: &Path| fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert!(
        size(&log) <= MAX_LOG_BYTES && size(&rotated) <= MAX_LOG_BYTES,
        "the audit log grew past its bound: {} and {} bytes",
        size(&log),
        size(&rotated)
    );
    assert!(rotated.exists(), "the full log was kept as audit.log.1");
    // Each request is recorded, its object cut with its length said; `feather audit` reads
    // both files.
    let audit = feather.ok(&["audit", "-n", "1000", "--json"]);
    let entries: Vec<serde_json::Value> = audit
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let objects: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["object"].as_str())
        .filter(|o| o.starts_with("xxx"))
        .collect();
    assert_eq!(objects.len(), 40, "{audit:.2000}");
    for object in objects {
        assert!(object.len() <= MAX_FIELD + 64, "{} bytes", object.len());
        assert!(object.ends_with("(60000 bytes in all)"), "{object:.60}…");
    }
}

/// The entries of `feather audit --json` (both files of the log).
fn audit_entries(feather: &Feather) -> Vec<serde_json::Value> {
    feather
        .ok(&["audit", "-n", "100000", "--json"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn a_vm_asking_without_end_is_paced_in_the_audit_log_and_the_rest_counted() {
    use feather_shuttle::audit::{PACE_BURST, PACE_PER_SECOND};
    let feather = Feather::new("audit-pace");
    feather.write_policy(
        "invoke",
        "invoke true flood quiet allow command=\"/bin/true\"\n",
    );
    feather.ok(&["create", "flood", "--net", "none"]);
    feather.ok(&["start", "flood"]);
    // 1000 requests the policy denies (no rule for the application), as fast as the broker
    // answers: each one a decision.
    let asking = std::time::Instant::now();
    let asked = feather.ok(&[
        "exec",
        "flood",
        "--",
        "python3",
        "-c",
        &invoke_requests(1000, 8),
    ]);
    let took = asking.elapsed().as_secs_f64();
    assert_eq!(asked.trim(), "asked");
    let from_flood = |entries: &[serde_json::Value], outcome: &str| -> Vec<serde_json::Value> {
        entries
            .iter()
            .filter(|e| e["source"] == "flood" && e["outcome"] == outcome)
            .cloned()
            .collect()
    };
    let written = from_flood(&audit_entries(&feather), "denied").len();
    // Its burst, then its pace (a line of counts before each paced line) while it asked.
    let bound = PACE_BURST as usize + (2.0 * f64::from(PACE_PER_SECOND) * took).ceil() as usize;
    assert!(
        bound < 1000,
        "the broker took {took:.1} s for 1000 requests: too slow to tell pacing from none"
    );
    assert!(
        written <= bound,
        "one VM wrote {written} lines into the shared audit log in {took:.1} s (at most {bound})"
    );
    assert!(written >= PACE_BURST as usize, "{written}");
    // When its broker ends, the decisions held back are written as counts: none is lost.
    feather.ok(&["stop", "flood"]);
    let entries = audit_entries(&feather);
    let counted: u64 = from_flood(&entries, "held")
        .iter()
        .map(|held| {
            let detail = held["detail"].as_str().unwrap();
            detail.split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    let written = from_flood(&entries, "denied").len() as u64;
    assert_eq!(
        written + counted,
        1000,
        "{written} written, {counted} counted"
    );
}

/// Python in a VM: `count` connections to the bus at `at`, each sending a malformed message
/// (the proxy warns about each, on its stderr).
fn malformed_bus_connections(at: &str, count: usize) -> String {
    format!(
        "import socket\n\
         for _ in range({count}):\n\
         \x20   s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         \x20   try:\n\
         \x20       s.connect('{at}')\n\
         \x20       s.sendall(b'\\0AUTH EXTERNAL 30\\r\\nBEGIN\\r\\n' + b'\\xff' * 64)\n\
         \x20       s.recv(100)\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   s.close()\n\
         print('sent')\n"
    )
}

/// Python in a VM: one connection to the bus at `at` that starts to authenticate (as uid 0; the
/// answer does not matter) and prints the first answer (`b''`: closed without one).
fn bus_greeting(at: &str) -> String {
    format!(
        "import socket\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         s.connect('{at}')\n\
         s.sendall(b'\\0AUTH EXTERNAL 30\\r\\n')\n\
         print(repr(s.recv(100)))\n"
    )
}

/// Makes VM `client`'s D-Bus proxy (channel at /run/edges-bus.sock, for `name`) with a first
/// connection, made by `user` (a command prefix such as setpriv, or none: the VM's root), and
/// returns the proxy's pid. The broker splices a connection to the proxy only once the proxy
/// takes connections (`dbus::Proxy::spawn` returns then): any answer to the connection's first
/// line (REJECTED or OK, through the proxy) proves the proxy ran before the call returned, and
/// it runs on until the channel closes. No answer: the broker made none, and the audit log and
/// the keeper's log say why. (A `dbus-send` whose failure was not looked at left no trace.)
fn first_proxy(feather: &Feather, name: &str, user: &[&str]) -> u32 {
    let mut args = vec!["exec", "client", "--"];
    args.extend_from_slice(user);
    let greeting = bus_greeting("/run/edges-bus.sock");
    args.extend_from_slice(&["python3", "-c", &greeting]);
    let greeting = feather.run(&args);
    let answered =
        greeting.code == 0 && greeting.stdout.starts_with("b'") && greeting.stdout.trim() != "b''";
    let why = || {
        let keeper = fs::read_to_string(feather.vm_dir("client").join("keeper.log"));
        format!(
            "{greeting:?}\naudit: {}\nclient's keeper: {keeper:?}",
            feather.run(&["audit", "-n", "20"]).stdout
        )
    };
    assert!(
        answered,
        "the channel's first connection reached no proxy: {}",
        why()
    );
    proxy_pid(&format!("--talk={name}"))
        .unwrap_or_else(|| panic!("the proxy that answered runs no more: {}", why()))
}

#[test]
fn a_vm_cannot_fill_the_hosts_run_folder_through_the_dbus_proxys_log() {
    use feather_shuttle::dbus::LOG_BYTES;
    let feather = Feather::new("edges-dbus-log");
    let name = format!("org.feather.EdgesLog{}", std::process::id());
    feather.write_policy(
        "10-test",
        &format!("ipc dbus:{name} client bus allow at=/run/edges-bus.sock\n"),
    );
    feather.ok(&["create", "bus", "--net", "none"]);
    feather.ok(&["start", "bus"]);
    feather.ok(&["service", "start", "bus", "dbus"]);
    feather.ok(&["create", "client", "--net", "none"]);
    feather.ok(&["start", "client"]);
    let pid = first_proxy(&feather, &name, &[]);
    let sent = feather.ok(&[
        "exec",
        "client",
        "--",
        "python3",
        "-c",
        &malformed_bus_connections("/run/edges-bus.sock", 5000),
    ]);
    assert_eq!(sent.trim(), "sent");
    let shuttle = feather.root.join("run").join("client").join("shuttle");
    let logs: Vec<u64> = fs::read_dir(&shuttle)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    let largest = logs.iter().copied().max().expect("the proxy's log");
    // The warnings filled the log to its bound (so the VM did make it warn), and no further.
    assert!(
        largest > LOG_BYTES - 1000 && largest <= LOG_BYTES,
        "the proxy's log holds {largest} bytes (bound {LOG_BYTES})"
    );
    assert_eq!(
        proxy_pid(&format!("--talk={name}")),
        Some(pid),
        "the proxy runs on"
    );
}

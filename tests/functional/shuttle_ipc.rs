//! Shuttle's IPC channels and dependencies, end to end: a policy file in the state root's
//! `policy.d`, VMs over the host's root running the host's own services, and real clients
//! (psql, redis-cli, dbus-send) inside other VMs. Only what a rule allows crosses; each decision
//! is in the audit log with the rule that made it.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::Feather;

/// Writes `<root>/policy.d/NAME` (whole, then renamed into place, as an editor would).
fn write_policy(feather: &Feather, name: &str, text: &str) {
    let dir = feather.root.join("policy.d");
    std::fs::create_dir_all(&dir).unwrap();
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, dir.join(name)).unwrap();
}

fn audit(feather: &Feather) -> Vec<Value> {
    std::fs::read_to_string(feather.root.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("audit lines are JSON"))
        .collect()
}

/// The audit lines about `source` asking for `object`.
fn decisions(feather: &Feather, source: &str, object: &str) -> Vec<Value> {
    audit(feather)
        .into_iter()
        .filter(|e| e["source"] == source && e["object"] == object)
        .collect()
}

/// psql inside `vm` as root, logging in as postgres at `host` (a socket folder or 127.0.0.1)
/// and `port`.
fn psql(feather: &Feather, vm: &str, host: &str, port: &str, sql: &str) -> crate::support::Outcome {
    feather.run(&[
        "exec", vm, "--", "psql", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres",
        "-Atc", sql,
    ])
}

/// A db VM whose postgres lets anyone in (in its own layer): the tests' clients are web's root,
/// whom peer authentication would refuse, and TCP connections carry no peer at all.
fn trusting_db(feather: &Feather) {
    feather.ok(&["create", "db"]);
    feather.ok(&["start", "db"]);
    feather.sh(
        "db",
        r"sed -i -E 's/(peer|scram-sha-256|md5)[[:space:]]*$/trust/' /etc/postgresql/15/main/pg_hba.conf",
    );
    feather.ok(&["stop", "db"]);
}

/// A `feather exec` left running, killed (by its pid) if the test ends before it does.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Waits up to `within` for the command to end; its exit code, or None if it did not.
    fn ends_within(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

fn spawn(feather: &Feather, args: &[&str]) -> Running {
    Running(
        feather
            .command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn web_reaches_postgres_in_db_only_through_the_allowed_socket_and_port() {
    let feather = Feather::new("shuttle-pg");
    trusting_db(&feather);
    for (vm, tag) in [
        ("web", Some("app")),
        ("stranger", Some("app")),
        ("loner", None),
    ] {
        let mut args = vec!["create", vm];
        args.extend(tag.iter().flat_map(|tag| ["--tag", tag]));
        feather.ok(&args);
    }
    write_policy(
        &feather,
        "10-db.policy",
        "# web may use the database; stranger may not, though it is tagged app too\n\
         ipc tcp:5432 stranger db deny\n\
         ipc unix:/run/postgresql/.s.PGSQL.5432 web db allow start=postgresql@15-main\n\
         ipc tcp:5432 @tag:app db allow at=15432 start=postgresql@15-main\n",
    );
    let rule_file = feather.root.join("policy.d/10-db.policy");
    let rule = |line: usize| format!("{}:{line}", rule_file.display());
    for vm in ["web", "stranger", "loner"] {
        feather.ok(&["start", vm]);
    }
    assert_eq!(feather.status("db"), "stopped");

    // The first connections start db and its postgres, once, and all get their answer.
    let answers = feather.sh(
        "web",
        "for i in 1 2 3; do psql -h /run/postgresql -U postgres -d postgres -Atc \"select $i * 10\" & done; wait",
    );
    let mut answers: Vec<&str> = answers.lines().collect();
    answers.sort();
    assert_eq!(answers, ["10", "20", "30"]);
    assert_eq!(feather.status("db"), "running", "db was started on demand");
    // The allowed port, at the place the rule gives it in web.
    let tcp = psql(&feather, "web", "127.0.0.1", "15432", "select 7");
    assert_eq!(
        (tcp.code, tcp.stdout.as_str()),
        (0, "7\n"),
        "{}",
        tcp.stderr
    );
    let allowed = decisions(&feather, "web", "unix:/run/postgresql/.s.PGSQL.5432");
    assert!(allowed.len() >= 3, "{allowed:?}");
    assert!(allowed
        .iter()
        .all(|e| e["outcome"] == "allowed" && e["rule"] == rule(3) && e["target"] == "db"));
    assert_eq!(decisions(&feather, "web", "tcp:5432")[0]["rule"], rule(4));

    // Every other way is closed: another port, another socket, the deny rule above the allow,
    // a VM no rule names.
    assert_ne!(
        psql(&feather, "web", "127.0.0.1", "5432", "select 1").code,
        0
    );
    assert_ne!(
        psql(&feather, "web", "/run/postgresql", "5433", "select 1").code,
        0,
        "a socket path no rule names"
    );
    let denied = psql(&feather, "stranger", "127.0.0.1", "15432", "select 1");
    assert_ne!(denied.code, 0, "the deny rule above the allow decides");
    let stranger = decisions(&feather, "stranger", "tcp:5432");
    assert_eq!(stranger.len(), 1, "{stranger:?}");
    assert_eq!(
        (
            &stranger[0]["outcome"],
            &stranger[0]["rule"],
            &stranger[0]["verdict"]
        ),
        (&"denied".into(), &rule(2).into(), &"deny".into())
    );
    assert_ne!(
        psql(&feather, "stranger", "/run/postgresql", "5432", "select 1").code,
        0,
        "the socket is web's only"
    );
    for port in ["15432", "5432"] {
        assert_ne!(
            psql(&feather, "loner", "127.0.0.1", port, "select 1").code,
            0
        );
    }
    assert_eq!(
        feather.sh("loner", "ls -A /run/postgresql 2>/dev/null; true"),
        "",
        "a VM no rule names gets no endpoint"
    );
    assert!(audit(&feather).iter().all(|e| e["source"] != "loner"));

    // Removing the rule closes its channel: the live connection ends, the socket goes; the
    // port's rule stays and so does its channel.
    let mut session = spawn(
        &feather,
        &[
            "exec",
            "web",
            "--",
            "psql",
            "-h",
            "/run/postgresql",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-Atc",
            "select pg_sleep(60)",
        ],
    );
    feather.eventually("the long query runs in db", || {
        psql(
            &feather,
            "db",
            "/run/postgresql",
            "5432",
            "select count(*) from pg_stat_activity where query like '%pg_sleep(60)%' and pid <> pg_backend_pid()",
        )
        .stdout
            == "1\n"
    });
    write_policy(
        &feather,
        "10-db.policy",
        "ipc tcp:5432 stranger db deny\n\
         ipc tcp:5432 @tag:app db allow at=15432 start=postgresql@15-main\n",
    );
    let ended = session.ends_within(Duration::from_secs(10));
    assert!(
        ended.is_some_and(|code| code != 0),
        "the live connection was cut: {ended:?}"
    );
    assert_eq!(
        feather.sh("web", "ls -A /run/postgresql"),
        "",
        "the endpoint left web"
    );
    assert_ne!(
        psql(&feather, "web", "/run/postgresql", "5432", "select 1").code,
        0
    );
    let tcp = psql(&feather, "web", "127.0.0.1", "15432", "select 8");
    assert_eq!(tcp.stdout, "8\n", "{}", tcp.stderr);
}

/// Through a unix channel postgres' `peer` authentication sees the client's own user: web's
/// postgres user logs in as postgres with db's pg_hba.conf as installed; web's root does not.
#[test]
fn postgres_peer_authentication_sees_the_clients_user_through_a_unix_channel() {
    let feather = Feather::new("shuttle-peer");
    feather.ok(&["create", "db"]);
    feather.ok(&["create", "web"]);
    write_policy(
        &feather,
        "10-db.policy",
        "ipc unix:/run/postgresql/.s.PGSQL.5432 web db allow start=postgresql@15-main\n",
    );
    feather.ok(&["start", "web"]);
    let as_postgres = feather.run(&[
        "exec",
        "web",
        "--",
        "setpriv",
        "--reuid",
        "postgres",
        "--regid",
        "postgres",
        "--init-groups",
        "psql",
        "-h",
        "/run/postgresql",
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-Atc",
        "select current_user",
    ]);
    assert_eq!(
        (as_postgres.code, as_postgres.stdout.trim()),
        (0, "postgres"),
        "{}",
        as_postgres.stderr
    );
    let as_root = psql(&feather, "web", "/run/postgresql", "5432", "select 1");
    assert_ne!(as_root.code, 0, "{}", as_root.stdout);
    assert!(
        as_root.stderr.contains("Peer authentication failed"),
        "{}",
        as_root.stderr
    );
}

#[test]
fn a_redis_channel_carries_data_both_ways_and_closes_when_its_target_stops() {
    let feather = Feather::new("shuttle-redis");
    feather.ok(&["create", "cache"]);
    feather.ok(&["create", "app"]);
    write_policy(
        &feather,
        "10-cache.policy",
        // @anyvm includes cache itself: its own port 6379 must stay its redis', not become a
        // channel leading back to itself.
        "ipc tcp:6379 @anyvm cache allow start=redis-server\n",
    );
    feather.ok(&["start", "app"]);
    assert_eq!(
        feather.sh("app", "redis-cli -p 6379 ping"),
        "PONG\n",
        "the first connection started cache and its redis"
    );
    assert_eq!(feather.status("cache"), "running");
    let refused = decisions(&feather, "cache", "tcp:6379");
    assert!(
        refused.len() == 1
            && refused[0]["outcome"] == "failed"
            && refused[0]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("channels do not chain")),
        "cache's channel to itself was not opened: {refused:?}"
    );
    // 3 MB each way; the value goes in and comes back byte for byte.
    let same = feather.sh(
        "app",
        "head -c 2300000 /dev/urandom | base64 -w0 > /tmp/big && \
         redis-cli -x set big < /tmp/big >/dev/null && \
         redis-cli --raw get big | head -c $(wc -c < /tmp/big) | cmp - /tmp/big && echo same",
    );
    assert_eq!(same, "same\n");
    assert_eq!(
        feather.sh("cache", "redis-cli strlen big"),
        format!("{}\n", 2_300_000usize.div_ceil(3) * 4),
        "the value is in cache's redis"
    );
    // A client blocked on the channel ends when the target VM stops.
    let mut waiting = spawn(
        &feather,
        &[
            "exec",
            "app",
            "--",
            "redis-cli",
            "-p",
            "6379",
            "blpop",
            "never",
            "0",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(waiting.ends_within(Duration::ZERO).is_none(), "blpop waits");
    feather.ok(&["stop", "cache"]);
    assert!(
        waiting.ends_within(Duration::from_secs(10)).is_some(),
        "the connection into the stopped VM was closed"
    );
}

/// What VM sink serves for the bulk test: on each connection to the unix socket or the port,
/// read everything until the client's end of writing, then answer with its SHA-256 (one line)
/// and the bytes themselves; and a drain that takes whatever comes, for the cut. The folder and
/// the script are made before any server starts (`a && b & c` would put `a && b` in the
/// background beside `c`, and a drain could find no folder to listen in).
///
/// The answer starts a second after the client's end of writing, as a server that computes
/// before it answers would: the relay must keep the way back open while the way there has
/// ended. The answering socats wait 30 s (`-t 30`) for their program after that end: with
/// socat's default of 0.5 s a server socat closes the connection, cleanly and unanswered, when
/// its program is silent that long — which a loaded machine made of the SHA-256 of 16 MB.
const BULK_SERVERS: &str = "mkdir -p /run/big && \
    echo 'f=$(mktemp); cat > $f; sleep 1; sha256sum < $f | cut -c1-64; cat $f; rm -f $f' > /run/big/answer \
    || exit 1; \
    socat -t 30 UNIX-LISTEN:/run/big/answer.sock,fork SYSTEM:'sh /run/big/answer' & \
    socat -t 30 TCP-LISTEN:9000,bind=127.0.0.1,fork,reuseaddr SYSTEM:'sh /run/big/answer' & \
    socat -u UNIX-LISTEN:/run/big/drain.sock,fork OPEN:/dev/null & \
    socat -u TCP-LISTEN:9001,bind=127.0.0.1,fork,reuseaddr OPEN:/dev/null & \
    wait";

/// Sends 16 MB of random bytes from VM src to `address` (socat's), then checks the answer: the
/// server's SHA-256 of what it got, then those bytes, back.
fn bulk_round_trip(feather: &Feather, address: &str) -> String {
    feather.sh(
        "src",
        &format!(
            "head -c 16000000 /dev/urandom > /tmp/in && \
             socat -t 30 - {address} < /tmp/in > /tmp/out && \
             want=$(sha256sum < /tmp/in | cut -c1-64) && got=$(head -n1 /tmp/out) && \
             tail -c +66 /tmp/out | cmp - /tmp/in && [ \"$got\" = \"$want\" ] && echo same"
        ),
    )
}

/// The bulk path between two VMs: many megabytes each way over a unix and a TCP channel arrive
/// intact and in order, the client's end of writing reaches the server (which answers only
/// after it), and removing the rules cuts connections that are carrying bytes at that moment.
#[test]
fn bulk_transfers_cross_intact_both_ways_and_a_removed_rule_cuts_them_mid_stream() {
    let feather = Feather::new("shuttle-bulk");
    feather.ok(&["create", "sink"]);
    feather.ok(&["create", "src"]);
    write_policy(
        &feather,
        "10-bulk.policy",
        "ipc unix:/run/big/answer.sock src sink allow\n\
         ipc tcp:9000 src sink allow\n\
         ipc unix:/run/big/drain.sock src sink allow\n\
         ipc tcp:9001 src sink allow\n",
    );
    feather.ok(&["start", "sink"]);
    let _servers = spawn(&feather, &["exec", "sink", "--", "sh", "-c", BULK_SERVERS]);
    feather.eventually("sink's servers listen", || {
        feather
            .run(&[
                "exec",
                "sink",
                "--",
                "sh",
                "-c",
                "test -S /run/big/answer.sock && test -S /run/big/drain.sock && \
                    [ $(ss -Hltn '( sport = 9000 or sport = 9001 )' | wc -l) = 2 ]",
            ])
            .code
            == 0
    });
    feather.ok(&["start", "src"]);
    assert_eq!(
        bulk_round_trip(&feather, "UNIX-CONNECT:/run/big/answer.sock"),
        "same\n",
        "through the unix channel"
    );
    assert_eq!(
        bulk_round_trip(&feather, "TCP:127.0.0.1:9000"),
        "same\n",
        "through the TCP channel"
    );

    // Endless streams into sink's drains, cut by the rules' removal.
    let mut streams = [
        spawn(
            &feather,
            &[
                "exec",
                "src",
                "--",
                "socat",
                "-u",
                "/dev/zero",
                "UNIX-CONNECT:/run/big/drain.sock",
            ],
        ),
        spawn(
            &feather,
            &[
                "exec",
                "src",
                "--",
                "socat",
                "-u",
                "/dev/zero",
                "TCP:127.0.0.1:9001",
            ],
        ),
    ];
    feather.eventually("both streams were let through", || {
        ["unix:/run/big/drain.sock", "tcp:9001"]
            .iter()
            .all(|object| decisions(&feather, "src", object).len() == 1)
    });
    std::thread::sleep(Duration::from_millis(300));
    for stream in &mut streams {
        assert!(
            stream.ends_within(Duration::ZERO).is_none(),
            "the stream flows"
        );
    }
    write_policy(&feather, "10-bulk.policy", "");
    for (stream, kind) in streams.iter_mut().zip(["unix", "TCP"]) {
        assert!(
            stream.ends_within(Duration::from_secs(10)).is_some(),
            "the {kind} stream was cut when its rule went"
        );
    }
}

/// A D-Bus system bus policy and a program owning two names on it, written into VM `vm`.
fn bus_with_two_names(feather: &Feather, vm: &str) {
    feather.sh(
        vm,
        r#"mkdir -p /etc/dbus-1/system.d && cat > /etc/dbus-1/system.d/feather-test.conf <<'EOF'
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.feather.Allowed"/>
    <allow own="org.feather.Other"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.feather.Allowed"/>
    <allow send_destination="org.feather.Other"/>
  </policy>
</busconfig>
EOF
cat > /etc/feather-names.py <<'EOF'
import dbus, dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib
DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
names = [dbus.service.BusName(n, bus) for n in ("org.feather.Allowed", "org.feather.Other")]
GLib.MainLoop().run()
EOF"#,
    );
    feather.ok(&["service", "start", vm, "dbus"]);
    feather.sh(
        vm,
        "/usr/bin/python3 /etc/feather-names.py >/dev/null 2>&1 </dev/null &",
    );
    feather.eventually("both names are on the bus", || {
        let names = feather.sh(
            vm,
            "dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.ListNames",
        );
        names.contains("org.feather.Allowed") && names.contains("org.feather.Other")
    });
}

#[test]
fn a_dbus_channel_lets_a_vm_talk_to_exactly_the_allowed_name() {
    let feather = Feather::new("shuttle-dbus");
    feather.ok(&["create", "bus"]);
    feather.ok(&["start", "bus"]);
    bus_with_two_names(&feather, "bus");
    feather.ok(&["create", "client"]);
    feather.ok(&["start", "client"]);
    // The rule comes after client started: the policy is watched.
    write_policy(
        &feather,
        "10-bus.policy",
        "ipc dbus:org.feather.Allowed client bus allow at=/run/feather-bus.sock\n",
    );
    feather.eventually("the bus appears in client", || {
        feather
            .run(&[
                "exec",
                "client",
                "--",
                "test",
                "-S",
                "/run/feather-bus.sock",
            ])
            .code
            == 0
    });
    let ping = |name: &str| {
        feather.run(&[
            "exec",
            "client",
            "-e",
            "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/feather-bus.sock",
            "--",
            // A user of the VM (daemon, known to both VMs' passwd): the proxy runs as its
            // client, and as nobody for the VM's root, whose libdbus says uid 0 and is refused.
            "setpriv",
            "--reuid",
            "1",
            "--regid",
            "1",
            "--clear-groups",
            "dbus-send",
            "--system",
            "--print-reply",
            &format!("--dest={name}"),
            "/",
            "org.freedesktop.DBus.Peer.Ping",
        ])
    };
    let allowed = ping("org.feather.Allowed");
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert!(
        allowed.stdout.contains("method return"),
        "{}",
        allowed.stdout
    );
    let other = ping("org.feather.Other");
    assert_ne!(other.code, 0, "{}", other.stdout);
    assert!(
        other.stderr.contains("ServiceUnknown"),
        "the proxy hides the other name: {}",
        other.stderr
    );
    assert!(
        !feather
            .sh("client", "ls /run/dbus 2>/dev/null; true")
            .contains("system_bus_socket"),
        "client has no bus of its own: it reached bus' through the channel"
    );
    let decided = decisions(&feather, "client", "dbus:org.feather.Allowed");
    assert!(!decided.is_empty() && decided.iter().all(|e| e["outcome"] == "allowed"));
    assert!(Path::new(&feather.root).join("audit.log").exists());

    // A rule for the other name, added later: the proxy is made again with both.
    write_policy(
        &feather,
        "10-bus.policy",
        "ipc dbus:org.feather.Allowed client bus allow at=/run/feather-bus.sock
         ipc dbus:org.feather.Other client bus allow at=/run/feather-bus.sock
",
    );
    feather.eventually("the other name is reachable too", || {
        ping("org.feather.Other").code == 0
    });
    assert_eq!(ping("org.feather.Allowed").code, 0);
}

#[test]
fn a_dependency_that_cannot_start_closes_the_connection_and_says_why() {
    let feather = Feather::new("shuttle-nostart");
    feather.ok(&["create", "ghost"]);
    feather.ok(&["create", "idle"]);
    feather.ok(&["create", "app"]);
    write_policy(
        &feather,
        "10.policy",
        "ipc tcp:7777 app ghost allow start=no-such-unit
         ipc tcp:7778 app idle allow
",
    );
    feather.ok(&["start", "app"]);
    for port in ["7777", "7778"] {
        let answer = feather.run(&[
            "exec",
            "app",
            "--",
            "socat",
            "-t",
            "5",
            "-",
            &format!("TCP:127.0.0.1:{port}"),
        ]);
        assert_eq!(answer.stdout, "", "nothing answers on {port}");
    }
    // Each connection: allowed by its rule, then failed, with why.
    let outcomes = |object: &str| -> Vec<(String, String)> {
        decisions(&feather, "app", object)
            .iter()
            .map(|e| {
                (
                    e["outcome"].as_str().unwrap_or_default().to_owned(),
                    e["detail"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let unstartable = outcomes("tcp:7777");
    assert_eq!(unstartable.len(), 2, "{unstartable:?}");
    assert_eq!(unstartable[0].0, "allowed");
    let (outcome, detail) = &unstartable[1];
    assert!(
        outcome == "failed" && detail.contains("no-such-unit") && detail.contains("not installed"),
        "{detail}"
    );
    let not_running = outcomes("tcp:7778");
    assert_eq!(not_running.len(), 2, "{not_running:?}");
    let detail = &not_running[1].1;
    assert!(
        detail.contains("VM idle is not running") && detail.contains("start=UNIT"),
        "{detail}"
    );
    assert_eq!(
        feather.status("idle"),
        "created",
        "no start= starts nothing"
    );
}

/// A unix socket server on the host, in a folder of the test's own: echoes everything it
/// reads once its client has finished writing, then ends the connection.
struct HostEcho {
    dir: std::path::PathBuf,
}

impl HostEcho {
    fn start(label: &str) -> HostEcho {
        let dir =
            std::path::PathBuf::from(format!("/tmp/feather-tests/{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.join("echo.sock")).unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut all = Vec::new();
                if stream.read_to_end(&mut all).is_ok() {
                    let _ = stream.write_all(&all);
                }
            }
        });
        HostEcho { dir }
    }
}

impl Drop for HostEcho {
    fn drop(&mut self) {
        // The listener's thread ends with the test process; its socket file goes now.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_host_socket_reaches_a_vm_at_the_rules_place_and_half_closes_cross() {
    let feather = Feather::new("shuttle-host");
    let echo = HostEcho::start("shuttle-host-echo");
    let socket = echo.dir.join("echo.sock");
    write_policy(
        &feather,
        "10-host.policy",
        &format!(
            "ipc unix:{} web @host allow at=/run/host-echo.sock\n",
            socket.display()
        ),
    );
    feather.ok(&["create", "web"]);
    feather.ok(&["start", "web"]);
    // 4 MB there; the server answers only after it saw the client's end of writing, so the
    // answer coming back at all shows the half-close crossed.
    let same = feather.sh(
        "web",
        "head -c 4000000 /dev/urandom > /tmp/in && \
         socat -t 30 - UNIX-CONNECT:/run/host-echo.sock < /tmp/in > /tmp/out && \
         cmp /tmp/in /tmp/out && echo same",
    );
    assert_eq!(same, "same\n");
    let decided = decisions(&feather, "web", &format!("unix:{}", socket.display()));
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(
        (&decided[0]["target"], &decided[0]["outcome"]),
        (&"@host".into(), &"allowed".into())
    );
    // Only at the rule's place: the host's socket itself, seen through web's lower layer,
    // refuses connections.
    assert_ne!(
        feather
            .run(&[
                "exec",
                "web",
                "--",
                "socat",
                "-u",
                "OPEN:/dev/null",
                &format!("UNIX-CONNECT:{}", socket.display()),
            ])
            .code,
        0
    );
}

/// A throw-away VM's command finds its channels from its first instruction: init starts it only
/// once the broker has opened them (many, here, so that a command started any earlier would
/// look before the last one is there).
#[test]
fn a_throw_away_vms_command_finds_its_channels_at_once() {
    let feather = Feather::new("shuttle-run-rm");
    let echo = HostEcho::start("shuttle-run-rm-echo");
    let socket = echo.dir.join("echo.sock");
    let rules: String = (0..300)
        .map(|i| {
            format!(
                "ipc unix:{} @anyvm @host allow at=/run/echo/{i}.sock\n",
                socket.display()
            )
        })
        .collect();
    // One place per rule: the first rule for a place wins, so these are 300 channels.
    write_policy(&feather, "10-host.policy", &rules);
    let answer = feather.ok(&[
        "run",
        "--rm",
        "--",
        "sh",
        "-c",
        "test -S /run/echo/299.sock && echo hello | socat -t 10 - UNIX-CONNECT:/run/echo/299.sock",
    ]);
    assert_eq!(answer, "hello\n");
}

/// `ask`: the person at the terminal that started the VM answers; a VM started without one
/// gets no for an answer.
#[test]
fn ask_rules_ask_the_terminal_that_started_the_vm() {
    use std::io::{Read, Write};

    let feather = Feather::new("shuttle-ask");
    let echo = HostEcho::start("shuttle-ask-echo");
    let socket = echo.dir.join("echo.sock");
    write_policy(
        &feather,
        "10-ask.policy",
        &format!(
            "ipc unix:{} @anyvm @host ask at=/run/echo.sock\n",
            socket.display()
        ),
    );
    let pty = nix::pty::openpty(None, None).unwrap();
    let terminal = nix::unistd::ttyname(&pty.slave).unwrap();
    // Held open by the test, as the user's shell holds its terminal: the keeper keeps none of
    // `feather start`'s descriptors, and a terminal no one holds reads as hung up.
    let _shell = pty.slave.try_clone().unwrap();
    feather.ok(&["create", "asked"]);
    let started = feather
        .command()
        .args(["start", "asked"])
        .stdin(std::process::Stdio::from(pty.slave))
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    // Held open while questions are asked: a terminal whose master closes is hung up.
    let master = std::fs::File::from(pty.master);
    let connect = "echo hi | socat -t 10 - UNIX-CONNECT:/run/echo.sock";
    for (typed, answer) in [("y\n", "hi\n"), ("n\n", "")] {
        let asking = std::thread::spawn({
            let mut master = master.try_clone().unwrap();
            move || {
                let mut question = Vec::new();
                let mut chunk = [0u8; 256];
                while !String::from_utf8_lossy(&question).contains("Allow? [y/N]") {
                    let read = master.read(&mut chunk).unwrap();
                    question.extend_from_slice(&chunk[..read]);
                }
                master.write_all(typed.as_bytes()).unwrap();
                String::from_utf8_lossy(&question).into_owned()
            }
        });
        let output = feather.run(&["exec", "asked", "--", "sh", "-c", connect]);
        let question = asking.join().unwrap();
        assert!(
            question.contains(&format!("asked asks for ipc unix:{}", socket.display())),
            "{question}"
        );
        assert_eq!(output.stdout, answer, "typed {typed:?}: {output:?}");
    }
    let details: Vec<String> = decisions(&feather, "asked", &format!("unix:{}", socket.display()))
        .iter()
        .map(|e| e["detail"].as_str().unwrap_or_default().to_owned())
        .collect();
    let terminal = terminal.display().to_string();
    assert_eq!(
        details,
        [
            format!("asked: allowed at {terminal}"),
            format!("asked: refused at {terminal}")
        ]
    );
    drop(master);

    // Started with no terminal: nobody to ask, so no.
    feather.ok(&["create", "unasked"]);
    feather.ok(&["start", "unasked"]);
    let output = feather.run(&["exec", "unasked", "--", "sh", "-c", connect]);
    assert_eq!(output.stdout, "");
    let decided = decisions(&feather, "unasked", &format!("unix:{}", socket.display()));
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(
        decided[0]["detail"],
        "asked: no terminal started this VM, and no web view of its state root is open"
    );
    assert_eq!(decided[0]["outcome"], "denied");
}

/// Running VMs cost root no inotify instance: root's are counted across the host
/// (`fs.inotify.max_user_instances`, 128 here), and keepers that each held one for their VM's
/// life (the broker's policy watch) took the last of them from the host's own root daemons
/// and `criu check` at about the 100th VM. Here five VMs, their keepers and every process in
/// them hold none, and each broker sleeps without a timeout (it does not look at the policy
/// on a timer); a rule written after they started, into a policy folder made only then, still
/// reaches each of them, and its removal closes the channel in each.
#[test]
fn running_vms_hold_no_inotify_instance_and_each_still_follows_the_policy() {
    let feather = Feather::new("shuttle-no-inotify");
    let echo = HostEcho::start("shuttle-no-inotify-echo");
    let socket = echo.dir.join("echo.sock");
    let vms = ["a", "b", "c", "d", "e"];
    for vm in vms {
        feather.ok(&["create", vm]);
        feather.ok(&["start", vm]);
    }
    for vm in vms {
        let state = &feather.inspect(vm)["state"];
        let keeper = state["keeper_pid"].as_i64().unwrap() as i32;
        let init = state["init_pid"].as_i64().unwrap() as i32;
        let mut holding: Vec<String> = Vec::new();
        for pid in std::iter::once(keeper).chain(in_pid_namespace_of(init)) {
            let held = inotify_instances(pid);
            if held > 0 {
                holding.push(format!("process {pid} ({held})"));
            }
        }
        assert!(
            holding.is_empty(),
            "VM {vm}'s keeper is {keeper}; these hold inotify instances: {holding:?}"
        );
        // Found awake, or settling a change told (a timed poll), it is looked at again: one
        // that never sleeps without a timeout fails after 10 s.
        feather.eventually(
            &format!("{vm}'s broker waits for a change without a timeout"),
            || shuttle_poll_timeout(keeper) == Some(-1),
        );
    }
    assert!(!feather.root.join("policy.d").exists());
    write_policy(
        &feather,
        "10-host.policy",
        &format!(
            "ipc unix:{} @anyvm @host allow at=/run/echo.sock\n",
            socket.display()
        ),
    );
    let channel_in = |vm: &str| {
        feather
            .run(&["exec", vm, "--", "test", "-S", "/run/echo.sock"])
            .code
            == 0
    };
    for vm in vms {
        feather.eventually(&format!("the channel opens in {vm}"), || channel_in(vm));
    }
    let answer = feather.sh(
        "c",
        "echo hello | socat -t 10 - UNIX-CONNECT:/run/echo.sock",
    );
    assert_eq!(answer, "hello\n");
    write_policy(&feather, "10-host.policy", "");
    for vm in vms {
        feather.eventually(&format!("the channel closes in {vm}"), || !channel_in(vm));
    }
}

/// How many inotify instances process `pid` holds (0 if it is gone).
fn inotify_instances(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify")
                })
                .count()
        })
        .unwrap_or(0)
}

/// The host's pids of the processes in `init`'s pid namespace.
fn in_pid_namespace_of(init: i32) -> Vec<i32> {
    let namespace = std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns == namespace)
        })
        .collect()
}

/// The timeout (ms, -1 for none) of the poll keeper `keeper`'s broker thread sleeps in; None
/// while it is not asleep in poll.
fn shuttle_poll_timeout(keeper: i32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{keeper}/task")).ok()?;
    let thread = tasks.flatten().find(|task| {
        std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm == "shuttle\n")
    })?;
    let syscall = std::fs::read_to_string(thread.path().join("syscall")).ok()?;
    let fields: Vec<&str> = syscall.split_whitespace().collect();
    let argument = |n: usize| u64::from_str_radix(fields.get(n)?.trim_start_matches("0x"), 16).ok();
    // poll(fds, nfds, int timeout) and ppoll(fds, nfds, const struct timespec *timeout).
    let (poll, ppoll) = match std::env::consts::ARCH {
        "x86_64" => (Some("7"), "271"),
        "aarch64" => (None, "73"),
        other => panic!("the poll syscall's number on {other}"),
    };
    match fields.first().copied() {
        Some(number) if Some(number) == poll => Some(argument(3)? as u32 as i32),
        // A null timespec is no timeout; any other, one (its value is in the thread's memory).
        Some(number) if number == ppoll => Some(if argument(3)? == 0 { -1 } else { 0 }),
        _ => None,
    }
}

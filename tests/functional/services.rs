//! Services duplicated from the host's own unit files into VMs: the catalogue, real Debian
//! services (nginx, redis) answering real clients inside a VM, the unit semantics the manager
//! applies, and failure paths reported clearly without disturbing the VM's other services.
//! Units a test needs beyond the host's are written inside the VM (into its own layer), never
//! on the host.

use std::net::TcpStream;
use std::path::Path;

use serde_json::Value;

use crate::support::{Feather, LoneFeather, ScratchBase};

/// A running VM over the host's root, removed with its fixture.
pub(crate) fn vm(feather: &Feather, name: &str) {
    feather.ok(&["create", name]);
    feather.ok(&["start", name]);
}

/// Writes a unit file into the VM's own /etc/systemd/system.
pub(crate) fn write_unit(feather: &Feather, vm: &str, name: &str, text: &str) {
    let script = format!("mkdir -p /etc/systemd/system && cat > /etc/systemd/system/{name}");
    let status = feather
        .command()
        .args(["exec", vm, "--", "sh", "-c", &script])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(status.success(), "writing {name} in {vm}");
}

pub(crate) fn services(feather: &Feather, vm: &str) -> Vec<Value> {
    let text = feather.ok(&["service", "ls", vm, "--json"]);
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn service<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list:?}"))
}

fn host_pid_namespace_of(pid: i64) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn catalog_lists_the_hosts_services_and_says_why_not() {
    let feather = Feather::new("svc-catalog");
    let entries: Value =
        serde_json::from_str(&feather.ok(&["service", "catalog", "--json"])).unwrap();
    let entries = entries.as_array().unwrap();
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from the catalogue"))
    };
    for duplicable in ["nginx.service", "redis-server.service"] {
        assert_eq!(find(duplicable)["duplicable"], true, "{}", find(duplicable));
    }
    assert_eq!(find("nginx.service")["type"], "forking");
    assert_eq!(find("redis-server.service")["type"], "notify");
    let journald = find("systemd-journald.service");
    assert_eq!(journald["duplicable"], false);
    assert!(
        journald["note"].as_str().unwrap().contains("log capture"),
        "{journald}"
    );
    assert!(
        !entries.iter().any(|e| e["name"] == "redis.service"),
        "the alias is listed under redis-server.service"
    );
    let table = feather.ok(&["service", "catalog"]);
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("nginx.service") && l.contains(" yes ")),
        "{table}"
    );
}

#[test]
fn nginx_and_redis_run_in_a_vm_from_the_hosts_units_and_answer_real_clients() {
    let feather = Feather::new("svc-nginx-redis");
    vm(&feather, "web");
    let started = feather.ok(&["service", "start", "web", "nginx", "redis", "--json"]);
    let started: Value = serde_json::from_str(&started).unwrap();
    assert_eq!(
        started.as_array().unwrap().len(),
        2,
        "redis is the alias of redis-server: {started}"
    );
    let list = services(&feather, "web");
    for name in ["nginx.service", "redis-server.service"] {
        let s = service(&list, name);
        assert_eq!(
            (s["state"].as_str(), s["sub"].as_str(), s["ready"].as_bool()),
            (Some("active"), Some("running"), Some(true)),
            "{s}"
        );
        assert!(s["main_pid"].as_i64().unwrap() > 1);
    }
    // redis told the manager it was ready, through NOTIFY_SOCKET.
    assert_eq!(
        service(&list, "redis-server.service")["status_text"],
        "Ready to accept connections"
    );

    // Real clients inside the VM, on the VM's own loopback.
    // By its Server header: the host's /var/www/html/index.html may be apache2's page.
    let page = feather.sh("web", "curl -sfi http://127.0.0.1/");
    assert!(page.contains("Server: nginx"), "{page}");
    assert_eq!(
        feather.sh(
            "web",
            "redis-cli set feather-key private-value && redis-cli get feather-key"
        ),
        "OK\nprivate-value\n"
    );
    // The host's loopback has neither: the VM's network namespace is its own.
    assert!(
        TcpStream::connect("127.0.0.1:6379").is_err(),
        "a redis answers on the host's loopback"
    );

    // They run in the VM's pid namespace, not the host's, under their own users.
    let processes: Value = serde_json::from_str(&feather.ok(&["ps", "web", "--json"])).unwrap();
    let processes = processes.as_array().unwrap();
    let redis = processes
        .iter()
        .find(|p| p["command"].as_str().unwrap().contains("redis-server"))
        .expect("redis in ps");
    assert_ne!(
        host_pid_namespace_of(redis["host_pid"].as_i64().unwrap()),
        host_pid_namespace_of(std::process::id() as i64)
    );
    let redis_uid = feather.sh("web", "id -u redis");
    assert_eq!(
        redis["uid"].to_string(),
        redis_uid.trim(),
        "User=redis applied"
    );
    // RuntimeDirectory=redis with RuntimeDirectoryMode=2755, owned by redis.
    assert_eq!(
        feather.sh("web", "stat -c '%U %a' /run/redis"),
        "redis 2755\n"
    );
    // Per-service logs in the VM.
    assert!(feather
        .sh("web", "cat /var/log/feather/nginx.service.log")
        .contains("start: /usr/sbin/nginx"));

    // Reload: nginx rereads its configuration (changed in the VM only), same main process.
    let main = service(&services(&feather, "web"), "nginx.service")["main_pid"].clone();
    feather.sh(
        "web",
        "printf 'server { listen 8088; return 200 \"reloaded\\\\n\"; }\\n' > /etc/nginx/conf.d/feather-test.conf",
    );
    feather.ok(&["service", "reload", "web", "nginx"]);
    feather.eventually("nginx serves its new configuration", || {
        feather
            .run(&["exec", "web", "--", "curl", "-sf", "http://127.0.0.1:8088/"])
            .stdout
            == "reloaded\n"
    });
    assert_eq!(
        service(&services(&feather, "web"), "nginx.service")["main_pid"],
        main
    );
    assert!(
        !Path::new("/etc/nginx/conf.d/feather-test.conf").exists(),
        "the host's nginx config was touched"
    );
    let e = feather.fails(&["service", "reload", "web", "redis-server"]);
    assert!(e.contains("redis-server.service has no ExecReload="), "{e}");

    // Stop one: the other keeps serving.
    feather.ok(&["service", "stop", "web", "nginx"]);
    let list = services(&feather, "web");
    assert_eq!(service(&list, "nginx.service")["state"], "inactive");
    assert_eq!(service(&list, "redis-server.service")["state"], "active");
    assert_ne!(
        feather
            .run(&["exec", "web", "--", "curl", "-sf", "http://127.0.0.1/"])
            .code,
        0,
        "nginx still answers"
    );
    assert_eq!(
        feather.sh("web", "redis-cli get feather-key"),
        "private-value\n"
    );

    // What the VM's redis saved is in the VM's layer only; the host's data is untouched.
    feather.ok(&["service", "stop", "web", "redis-server"]);
    let saved = std::fs::read(feather.vm_dir("web").join("upper/var/lib/redis/dump.rdb"))
        .expect("redis saved into the VM's layer");
    assert!(String::from_utf8_lossy(&saved).contains("feather-key"));
    let host_dump = std::fs::read("/var/lib/redis/dump.rdb").unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&host_dump).contains("feather-key"),
        "the host's redis data changed"
    );

    let host_pids: Vec<i64> = processes
        .iter()
        .map(|p| p["host_pid"].as_i64().unwrap())
        .collect();
    feather.ok(&["stop", "web"]);
    for pid in host_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} of the VM survived its stop"
        );
    }
}

#[test]
fn unit_settings_are_applied_to_the_service_process() {
    let feather = Feather::new("svc-settings");
    vm(&feather, "cfg");
    feather.sh("cfg", "mkdir -p /etc/feather-test && printf 'FROM_FILE=yes\\nOVERRIDE=file\\n' > /etc/feather-test/env");
    write_unit(
        &feather,
        "cfg",
        "prepare.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'date +%%s%%N > /run/prepared'\n",
    );
    write_unit(
        &feather,
        "cfg",
        "probe@.service",
        "[Unit]\nDescription=probe %i\nRequires=prepare.service\nAfter=prepare.service network-online.target\nWants=network-online.target\n\
         [Service]\nType=notify\nUser=nobody\nRuntimeDirectory=probe-%i\nRuntimeDirectoryMode=0750\nUMask=0077\n\
         Environment=\"GREETING=hello world\" OVERRIDE=unit INSTANCE=%i\nEnvironmentFile=/etc/feather-test/env\nEnvironmentFile=-/etc/feather-test/absent\n\
         WorkingDirectory=/tmp\nLimitNOFILE=1000:2000\n\
         ExecStartPre=/bin/sh -c 'test -e /run/prepared'\n\
         ExecStart=/bin/sh -c 'cd $RUNTIME_DIRECTORY && (id -u; echo \"$GREETING|$OVERRIDE|$FROM_FILE|$INSTANCE|$(pwd)\"; ulimit -n; umask) > out; systemd-notify --ready --status=probing; exec sleep 1000'\n",
    );
    feather.ok(&["service", "start", "cfg", "probe@one.service"]);
    let list = services(&feather, "cfg");
    assert_eq!(
        service(&list, "prepare.service")["sub"],
        "exited",
        "oneshot with RemainAfterExit stays active: {list:?}"
    );
    assert_eq!(service(&list, "prepare.service")["state"], "active");
    let probe = service(&list, "probe@one.service");
    assert_eq!(
        (
            probe["state"].as_str(),
            probe["ready"].as_bool(),
            probe["status_text"].as_str()
        ),
        (Some("active"), Some(true), Some("probing"))
    );
    assert_eq!(probe["pulled_by"], Value::Null);
    assert_eq!(
        service(&list, "prepare.service")["pulled_by"],
        "probe@one.service (requires)"
    );
    let out = feather.sh(
        "cfg",
        "cat /run/probe-one/out; stat -c '%U %a' /run/probe-one",
    );
    assert_eq!(
        out,
        "65534\nhello world|file|yes|one|/run/probe-one\n1000\n0077\nnobody 750\n"
    );

    // Type=forking without PIDFile=: the main process is the one the start left behind, never
    // another unit's (every service is a child of the manager).
    write_unit(
        &feather,
        "cfg",
        "forky.service",
        "[Service]\nType=forking\nExecStart=/bin/sh -c 'sleep 999 & exit 0'\n",
    );
    feather.ok(&["service", "start", "cfg", "forky"]);
    let list = services(&feather, "cfg");
    let forky = service(&list, "forky.service")["main_pid"]
        .as_i64()
        .unwrap();
    assert_ne!(
        Some(forky),
        service(&list, "probe@one.service")["main_pid"].as_i64()
    );
    assert_eq!(
        feather.sh("cfg", &format!("tr '\\0' ' ' < /proc/{forky}/cmdline")),
        "sleep 999 "
    );

    // /dev/log is the manager's: what a unit's processes send there lands in the unit's log;
    // what others send, in syslog.log.
    write_unit(
        &feather,
        "cfg",
        "logme.service",
        "[Service]\nExecStartPre=/usr/bin/logger -t feathertest from-a-start-command\nExecStart=/bin/sleep 1000\n",
    );
    feather.ok(&["service", "start", "cfg", "logme"]);
    feather.sh("cfg", "logger -t outsider from-outside");
    feather.eventually("the messages are filed", || {
        let status = feather.ok(&["service", "status", "cfg", "logme", "-n", "20"]);
        let elsewhere = feather.sh("cfg", "cat /var/log/feather/syslog.log 2>/dev/null");
        status.contains("syslog: ")
            && status.contains("feathertest: from-a-start-command")
            && elsewhere.contains("outsider: from-outside")
            && !elsewhere.contains("from-a-start-command")
    });

    feather.ok(&["service", "stop", "cfg", "prepare.service"]);
    let list = services(&feather, "cfg");
    assert_eq!(
        service(&list, "probe@one.service")["state"],
        "inactive",
        "a unit that requires a stopped one stops too"
    );
    assert_eq!(
        feather.sh("cfg", "test -e /run/probe-one && echo kept || echo removed"),
        "removed\n",
        "RuntimeDirectory= removed at stop"
    );
}

#[test]
fn failures_are_reported_clearly_and_leave_other_services_running() {
    let feather = Feather::new("svc-failures");
    vm(&feather, "bad");
    write_unit(
        &feather,
        "bad",
        "steady.service",
        "[Service]\nExecStart=/bin/sleep 1000\n",
    );
    feather.ok(&["service", "start", "bad", "steady"]);

    write_unit(
        &feather,
        "bad",
        "nobin.service",
        "[Service]\nExecStart=/usr/bin/feather-no-such-program --x\n",
    );
    let e = feather.fails(&["service", "start", "bad", "nobin"]);
    assert!(e.contains("nobin.service failed: its program /usr/bin/feather-no-such-program is not installed in the VM"), "{e}");
    let status = feather.ok(&["service", "status", "bad", "nobin"]);
    assert!(
        status.contains("state: failed") && status.contains("feather-no-such-program"),
        "{status}"
    );

    write_unit(
        &feather,
        "bad",
        "typo.service",
        "[Unit]\nDescription=typo\n[Service]\nType=sometimes\nExecStart=/bin/true\n",
    );
    let e = feather.fails(&["service", "start", "bad", "typo"]);
    assert!(
        e.contains("/etc/systemd/system/typo.service:4: unknown service type Type=sometimes"),
        "{e}"
    );

    write_unit(&feather, "bad", "loop-a.service", "[Unit]\nWants=loop-b.service\nAfter=loop-b.service\n[Service]\nExecStart=/bin/sleep 1000\n");
    write_unit(
        &feather,
        "bad",
        "loop-b.service",
        "[Unit]\nAfter=loop-a.service\n[Service]\nExecStart=/bin/sleep 1000\n",
    );
    let e = feather.fails(&["service", "start", "bad", "loop-a"]);
    assert!(
        e.contains("dependency cycle: ")
            && e.contains("loop-a.service")
            && e.contains("loop-b.service"),
        "{e}"
    );

    write_unit(
        &feather,
        "bad",
        "crash.service",
        "[Unit]\nStartLimitIntervalSec=30\nStartLimitBurst=3\n[Service]\nExecStart=/bin/sh -c 'echo crashing; exit 3'\nRestart=always\nRestartSec=50ms\n",
    );
    // Type=simple is up as soon as its process runs (as in systemd), so the start itself
    // succeeds; the crash loop then ends at the start limit.
    feather.run(&["service", "start", "bad", "crash"]);
    feather.eventually("crash.service hits its start limit", || {
        service(&services(&feather, "bad"), "crash.service")["state"] == "failed"
    });
    let crash = service(&services(&feather, "bad"), "crash.service").clone();
    assert!(
        crash["result"]
            .as_str()
            .unwrap()
            .starts_with("start limit hit"),
        "{crash}"
    );
    let status = feather.ok(&["service", "status", "bad", "crash"]);
    assert!(
        status.contains("result: start limit hit")
            && status.contains("main process exited with status 3"),
        "{status}"
    );
    assert_eq!(crash["state"], "failed");
    assert_eq!(crash["restarts"], 2, "three starts in all: {crash}");
    let log = feather.sh("bad", "cat /var/log/feather/crash.service.log");
    assert_eq!(log.lines().filter(|l| *l == "crashing").count(), 3, "{log}");
    assert_eq!(crash["ready"], false);

    write_unit(
        &feather,
        "bad",
        "needs-missing.service",
        "[Unit]\nRequires=feather-absent.service\n[Service]\nExecStart=/bin/true\n",
    );
    let e = feather.fails(&["service", "start", "bad", "needs-missing"]);
    assert!(
        e.contains("needs-missing.service requires feather-absent.service, which is not available"),
        "{e}"
    );

    // A condition that does not hold skips the unit (not a failure); an assertion fails it.
    write_unit(
        &feather,
        "bad",
        "cond.service",
        "[Unit]\nConditionPathExists=/feather-absent\n[Service]\nExecStart=/bin/sleep 1000\n",
    );
    feather.ok(&["service", "start", "bad", "cond"]);
    let cond = service(&services(&feather, "bad"), "cond.service").clone();
    assert_eq!(cond["state"], "inactive");
    assert_eq!(
        cond["result"],
        "skipped: condition ConditionPathExists=/feather-absent does not hold"
    );
    write_unit(
        &feather,
        "bad",
        "assert.service",
        "[Unit]\nAssertPathExists=/feather-absent\n[Service]\nExecStart=/bin/sleep 1000\n",
    );
    let e = feather.fails(&["service", "start", "bad", "assert"]);
    assert!(
        e.contains(
            "assert.service failed: assertion AssertPathExists=/feather-absent does not hold"
        ),
        "{e}"
    );

    // Requisite= does not start its unit: it must be active already.
    write_unit(
        &feather,
        "bad",
        "needs-steady.service",
        "[Unit]\nRequisite=steady.service cond.service\n[Service]\nExecStart=/bin/sleep 1000\n",
    );
    let e = feather.fails(&["service", "start", "bad", "needs-steady"]);
    assert!(
        e.contains("needs-steady.service failed: its requisite cond.service is not active"),
        "{e}"
    );

    // MAINPID= may name a process that is not the manager's child; its end is still noticed.
    write_unit(
        &feather,
        "bad",
        "grand.service",
        "[Service]\nType=notify\nExecStart=/bin/sh -c 'sleep 1000 & systemd-notify --ready MAINPID=$$!; wait'\n",
    );
    feather.ok(&["service", "start", "bad", "grand"]);
    let main = service(&services(&feather, "bad"), "grand.service")["main_pid"]
        .as_i64()
        .unwrap();
    assert_eq!(
        feather.sh("bad", &format!("tr '\\0' ' ' < /proc/{main}/cmdline")),
        "sleep 1000 "
    );
    feather.sh("bad", &format!("kill {main}"));
    feather.eventually("the end of grand.service's main process is noticed", || {
        service(&services(&feather, "bad"), "grand.service")["state"] == "failed"
    });
    let grand = service(&services(&feather, "bad"), "grand.service").clone();
    assert!(
        grand["result"]
            .as_str()
            .unwrap()
            .contains("not a child of the manager"),
        "{grand}"
    );

    // OnFailure=: a unit that failed for good starts its handler (here after its start limit).
    write_unit(
        &feather,
        "bad",
        "watched.service",
        "[Unit]\nOnFailure=alarm.service\nStartLimitBurst=2\n[Service]\nExecStart=/bin/false\nRestart=on-failure\nRestartSec=10ms\n",
    );
    write_unit(
        &feather,
        "bad",
        "alarm.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo raised > /run/alarm'\n",
    );
    feather.run(&["service", "start", "bad", "watched"]);
    feather.eventually("alarm.service ran", || {
        feather
            .run(&["exec", "bad", "--", "test", "-e", "/run/alarm"])
            .code
            == 0
    });
    assert_eq!(
        service(&services(&feather, "bad"), "watched.service")["state"],
        "failed"
    );

    // Nothing else in the VM was disturbed.
    let steady = service(&services(&feather, "bad"), "steady.service").clone();
    assert_eq!(
        (steady["state"].as_str(), steady["restarts"].as_u64()),
        (Some("active"), Some(0)),
        "{steady}"
    );
    let e = feather.fails(&["service", "stop", "bad", "never-started"]);
    assert!(
        e.contains("never-started.service was not started in this VM"),
        "{e}"
    );
}

#[test]
fn service_commands_on_a_vm_without_services_say_so() {
    let feather = Feather::new("svc-empty");
    vm(&feather, "idle");
    assert_eq!(services(&feather, "idle").len(), 0);
    let e = feather.fails(&["service", "stop", "idle", "nginx"]);
    assert!(e.contains("VM idle runs no services"), "{e}");
    let e = feather.fails(&["service", "start", "nothere", "nginx"]);
    assert!(e.contains("nothere"), "{e}");
    // Services run in VMs over the host's root: a bare tree has no feather to manage them.
    let base = ScratchBase::new("svc-bare");
    feather.ok(&["create", "bare", "--base", base.as_str()]);
    feather.ok(&["start", "bare"]);
    let e = feather.fails(&["service", "start", "bare", "nginx"]);
    assert!(
        e.contains("VM bare cannot run feather's service manager: its base"),
        "{e}"
    );
}

#[test]
fn a_missing_service_manager_binary_is_named_in_the_error() {
    let feather = Feather::new("svc-lone");
    vm(&feather, "lone");
    let lone = LoneFeather::new("svc");
    // `service` runs in feather-full (it reads what the VM's manager says), beside the front.
    lone.add("feather-full");
    let start = || lone.run(&feather, &["service", "start", "lone", "nginx"]);
    let output = start();
    let e = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{e}");
    let missing = lone.dir.join("feather-svcd");
    let expected = format!(
        "VM lone cannot run its service manager: {} is missing",
        missing.display()
    );
    assert!(e.contains(&expected), "{e}");
    // Nothing was started: the VM has no manager and no nginx.
    assert_eq!(services(&feather, "lone").len(), 0);
    let ps = feather.ok(&["ps", "lone"]);
    assert!(
        !ps.contains("nginx") && !ps.contains("feather-svcd"),
        "{ps}"
    );
    // With the manager's binary beside it, the same feather starts the service.
    lone.add("feather-svcd");
    let output = start();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_running(&feather, "lone", "nginx.service");
}

#[test]
fn five_vms_each_run_their_own_nginx_and_redis_with_their_own_data() {
    let feather = Feather::new("svc-five");
    let names = ["dup1", "dup2", "dup3", "dup4", "dup5"];
    for name in names {
        vm(&feather, name);
        feather.ok(&["service", "start", name, "nginx", "redis-server"]);
        feather.sh(name, &format!("redis-cli set owner {name} >/dev/null"));
    }
    // Each VM's redis holds what was written in that VM, and each nginx serves: the same
    // ports, on five loopbacks of their own.
    for name in names {
        assert_eq!(feather.sh(name, "redis-cli get owner"), format!("{name}\n"));
        assert!(feather
            .sh(name, "curl -sfi http://127.0.0.1/")
            .contains("Server: nginx"));
    }
    // A restart gives a new main process that serves again.
    let before = service(&services(&feather, "dup1"), "nginx.service")["main_pid"].clone();
    feather.ok(&["service", "restart", "dup1", "nginx"]);
    let after = service(&services(&feather, "dup1"), "nginx.service").clone();
    assert_eq!(after["state"], "active");
    assert_ne!(after["main_pid"], before, "{after}");
    assert!(feather
        .sh("dup1", "curl -sfi http://127.0.0.1/")
        .contains("Server: nginx"));
}

#[test]
fn vm_stop_stops_services_in_reverse_dependency_order() {
    let feather = Feather::new("svc-stop-order");
    vm(&feather, "ord");
    // Each service notes when it gets SIGTERM, after a delay that is longest for the unit that
    // must stop first: if every process got SIGTERM at once, the order would come out reversed.
    let unit = |me: &str, delay: &str, deps: &str| {
        format!(
            "[Unit]\n{deps}\n[Service]\nExecStart=/bin/sh -c \"trap 'sleep {delay}; echo {me} >> /var/tmp/feather-stop-order; exit 0' TERM; : > /var/tmp/trapped-{me}; while :; do sleep 0.05; done\"\n"
        )
    };
    write_unit(
        &feather,
        "ord",
        "base-layer.service",
        &unit("base-layer", "0", ""),
    );
    write_unit(
        &feather,
        "ord",
        "middle-layer.service",
        &unit(
            "middle-layer",
            "0.2",
            "Requires=base-layer.service\nAfter=base-layer.service",
        ),
    );
    write_unit(
        &feather,
        "ord",
        "top-layer.service",
        &unit(
            "top-layer",
            "0.4",
            "Wants=middle-layer.service\nAfter=middle-layer.service",
        ),
    );
    feather.ok(&["service", "start", "ord", "top-layer"]);
    assert_eq!(services(&feather, "ord").len(), 3);
    // Every trap set before the stop: a SIGTERM that came first ended a unit unnoted.
    let upper = feather.vm_dir("ord").join("upper/var/tmp");
    feather.eventually("the three units set their traps", || {
        ["base-layer", "middle-layer", "top-layer"]
            .iter()
            .all(|me| upper.join(format!("trapped-{me}")).exists())
    });
    feather.ok(&["stop", "ord"]);
    let order = std::fs::read_to_string(
        feather
            .vm_dir("ord")
            .join("upper/var/tmp/feather-stop-order"),
    )
    .unwrap();
    assert_eq!(order, "top-layer\nmiddle-layer\nbase-layer\n");
}

#[test]
fn socket_units_hand_their_sockets_to_the_service() {
    let feather = Feather::new("svc-sockets");
    vm(&feather, "sock");
    write_unit(
        &feather,
        "sock",
        "probe.socket",
        "[Socket]\nListenStream=/run/probe/probe.sock\nListenDatagram=127.0.0.1:7999\nFileDescriptorName=probe\nSocketMode=0600\n",
    );
    write_unit(
        &feather,
        "sock",
        "probe.service",
        "[Service]\nExecStart=/bin/sh -c 'echo \"$LISTEN_FDS $LISTEN_FDNAMES $([ \"$LISTEN_PID\" = $$$$ ] && echo own-pid) $(readlink /proc/$$$$/fd/3 | cut -c1-7) $(readlink /proc/$$$$/fd/4 | cut -c1-7)\" > /run/listen-env.new && mv /run/listen-env.new /run/listen-env; exec sleep 1000'\n",
    );
    // Starting the socket starts the service it activates, after it.
    feather.ok(&["service", "start", "sock", "probe.socket"]);
    let list = services(&feather, "sock");
    assert_eq!(service(&list, "probe.socket")["sub"], "listening");
    assert_eq!(service(&list, "probe.service")["state"], "active");
    // Type=simple is active once its process runs; the probe writes its file a moment later.
    feather.eventually("the probe wrote what it got", || {
        feather
            .run(&["exec", "sock", "--", "test", "-e", "/run/listen-env"])
            .code
            == 0
    });
    assert_eq!(
        feather.sh(
            "sock",
            "cat /run/listen-env; stat -c %a /run/probe/probe.sock"
        ),
        "2 probe:probe own-pid socket: socket:\n600\n"
    );
    // As in systemd, stopping a socket leaves the service it started running.
    feather.ok(&["service", "stop", "sock", "probe.socket"]);
    let list = services(&feather, "sock");
    assert_eq!(service(&list, "probe.socket")["state"], "inactive");
    assert_eq!(service(&list, "probe.service")["state"], "active");
    assert_eq!(
        feather.sh(
            "sock",
            "test -e /run/probe/probe.sock && echo left || echo removed"
        ),
        "removed\n"
    );
}

#[test]
fn each_vm_gets_its_own_dbus_system_bus_from_the_hosts_units() {
    let feather = Feather::new("svc-dbus");
    let get_id = "dbus-send --system --print-reply=literal --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.GetId";
    let mut ids = Vec::new();
    for name in ["bus1", "bus2"] {
        vm(&feather, name);
        // dbus.service requires dbus.socket, whose socket the manager hands to dbus-daemon.
        feather.ok(&["service", "start", name, "dbus"]);
        let list = services(&feather, name);
        assert_eq!(
            service(&list, "dbus.service")["ready"],
            true,
            "READY=1 from dbus-daemon: {list:?}"
        );
        assert_eq!(service(&list, "dbus.socket")["sub"], "listening");
        ids.push(feather.sh(name, get_id).trim().to_owned());
    }
    assert!(ids.iter().all(|id| id.len() == 32), "{ids:?}");
    assert_ne!(ids[0], ids[1], "two VMs, two buses");
}

#[test]
fn logs_show_a_units_output_and_follow_it() {
    use std::io::BufRead;
    let feather = Feather::new("svc-logs");
    vm(&feather, "talk");
    write_unit(
        &feather,
        "talk",
        "talker.service",
        "[Service]\nExecStart=/bin/sh -c 'n=0; while :; do n=$$((n+1)); echo tick $$n; sleep 0.1; done'\n",
    );
    feather.ok(&["service", "start", "talk", "talker"]);
    feather.eventually("talker said something", || {
        feather
            .ok(&["service", "logs", "talk", "talker"])
            .contains("tick 2")
    });
    let last = feather.ok(&["service", "logs", "talk", "talker", "-n", "1"]);
    assert_eq!(last.lines().count(), 1, "{last}");
    let e = feather.fails(&["service", "logs", "talk", "never-installed"]);
    assert!(
        e.contains("unit never-installed.service is not installed"),
        "{e}"
    );
    let e = feather.fails(&["service", "logs", "talk", "nginx"]);
    assert!(e.contains("VM talk: nginx.service has no log yet"), "{e}");

    // -f keeps printing what the service writes.
    let mut follower = feather
        .command()
        .args(["service", "logs", "talk", "talker", "-n", "0", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let first = receiver.recv_timeout(std::time::Duration::from_secs(10));
    let second = receiver.recv_timeout(std::time::Duration::from_secs(10));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = follower.wait();
    let (first, second) = (
        first.expect("a followed line"),
        second.expect("another followed line"),
    );
    assert!(
        first.starts_with("tick ") && second.starts_with("tick ") && first != second,
        "{first} / {second}"
    );
}

#[test]
fn conflicts_stop_the_other_unit_and_binds_to_follows_its_unit_down() {
    let feather = Feather::new("svc-deps");
    vm(&feather, "deps");
    let sleeper = |deps: &str| format!("[Unit]\n{deps}\n[Service]\nExecStart=/bin/sleep 1000\n");
    write_unit(&feather, "deps", "war.service", &sleeper(""));
    write_unit(
        &feather,
        "deps",
        "peace.service",
        &sleeper("Conflicts=war.service"),
    );
    feather.ok(&["service", "start", "deps", "war"]);
    feather.ok(&["service", "start", "deps", "peace"]);
    let list = services(&feather, "deps");
    assert_eq!(service(&list, "peace.service")["state"], "active");
    assert_eq!(
        service(&list, "war.service")["state"],
        "inactive",
        "Conflicts= stops the other"
    );
    // The other way round: war does not list peace, but peace conflicts with war.
    feather.ok(&["service", "start", "deps", "war"]);
    assert_eq!(
        service(&services(&feather, "deps"), "peace.service")["state"],
        "inactive"
    );

    write_unit(&feather, "deps", "anchor.service", &sleeper(""));
    write_unit(
        &feather,
        "deps",
        "boat.service",
        &sleeper("BindsTo=anchor.service\nAfter=anchor.service"),
    );
    feather.ok(&["service", "start", "deps", "boat"]);
    let anchor = service(&services(&feather, "deps"), "anchor.service")["main_pid"]
        .as_i64()
        .unwrap();
    // The anchor ends on its own (not through feather): what is bound to it stops too.
    feather.sh("deps", &format!("kill {anchor}"));
    feather.eventually("boat.service stops with its anchor", || {
        service(&services(&feather, "deps"), "boat.service")["state"] == "inactive"
    });
    let boat = service(&services(&feather, "deps"), "boat.service").clone();
    assert_eq!(
        boat["result"],
        "stopped: anchor.service, which it is bound to (BindsTo=), ended"
    );
}

#[test]
fn a_sysv_init_script_without_a_unit_runs_as_a_service() {
    let feather = Feather::new("svc-sysv");
    vm(&feather, "old");
    let script = r#"#!/bin/sh
### BEGIN INIT INFO
# Provides:          legacyd
# Required-Start:    $network $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: A legacy daemon
### END INIT INFO
case "$1" in
  start) sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /run/legacyd.pid; echo started ;;
  stop) kill "$(cat /run/legacyd.pid)"; rm -f /run/legacyd.pid; echo stopped ;;
esac
"#;
    let status = feather
        .command()
        .args([
            "exec",
            "old",
            "--",
            "sh",
            "-c",
            "cat > /etc/init.d/legacyd && chmod 755 /etc/init.d/legacyd",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(status.success());
    feather.ok(&["service", "start", "old", "legacyd"]);
    let legacy = service(&services(&feather, "old"), "legacyd.service").clone();
    assert_eq!(
        (legacy["state"].as_str(), legacy["sub"].as_str()),
        (Some("active"), Some("exited")),
        "{legacy}"
    );
    assert_eq!(legacy["description"], "A legacy daemon");
    assert!(feather
        .sh("old", "kill -0 $(cat /run/legacyd.pid) && echo running")
        .contains("running"));
    assert!(feather
        .ok(&["service", "logs", "old", "legacyd"])
        .contains("started"));
    feather.ok(&["service", "stop", "old", "legacyd"]);
    assert_eq!(
        service(&services(&feather, "old"), "legacyd.service")["state"],
        "inactive"
    );
    assert!(feather
        .ok(&["service", "logs", "old", "legacyd"])
        .contains("stopped"));
    assert_eq!(
        feather.sh("old", "test -e /run/legacyd.pid && echo left || echo gone"),
        "gone\n"
    );
}

#[test]
fn a_vm_created_with_services_starts_them_whenever_it_starts() {
    let feather = Feather::new("svc-create");
    feather.ok(&["create", "db", "--service", "redis", "--service", "nginx"]);
    assert_eq!(
        feather.inspect("db")["config"]["services"],
        serde_json::json!(["redis-server.service", "nginx.service"]),
        "names as installed: redis is an alias"
    );
    for round in 0..2 {
        assert_eq!(feather.ok(&["start", "db"]), "", "start stays quiet");
        let list = services(&feather, "db");
        for name in ["nginx.service", "redis-server.service"] {
            assert_eq!(
                service(&list, name)["state"],
                "active",
                "round {round}: {list:?}"
            );
        }
        assert_eq!(feather.sh("db", "redis-cli ping"), "PONG\n");
        feather.ok(&["stop", "db"]);
    }
    // Checked at create time, before anything is made.
    let e = feather.fails(&["create", "typo", "--service", "feather-no-such"]);
    assert!(
        e.contains("unit feather-no-such.service is not installed"),
        "{e}"
    );
    let e = feather.fails(&["create", "infra", "--service", "systemd-journald"]);
    assert!(e.contains("host infrastructure"), "{e}");
    assert_eq!(
        feather.ok(&["ls", "--json"]).matches("\"name\"").count(),
        1,
        "only db exists"
    );
}

/// Sends `request` to TCP `port` on the VM's loopback with bash's /dev/tcp and returns what the
/// server answers until it closes (or 2 s pass): a client that needs no extra package.
/// Sends `request` to the VM's 127.0.0.1:`port` and returns what came back. A `Type=simple`
/// service is ready once started, not once listening, so the connection is retried for 5 s.
fn tcp_exchange(feather: &Feather, vm: &str, port: u16, request: &str) -> String {
    let script = format!(
        "for i in $(seq 50); do exec 3<>/dev/tcp/127.0.0.1/{port} && break; sleep 0.1; done 2>/dev/null; \
         printf '{request}' >&3 && timeout 2 cat <&3; true"
    );
    feather.ok(&["exec", vm, "--", "bash", "-c", &script])
}

pub(crate) fn assert_running(feather: &Feather, vm: &str, unit: &str) -> Value {
    let list = services(feather, vm);
    let s = service(&list, unit).clone();
    assert_eq!(
        (s["state"].as_str(), s["sub"].as_str(), s["ready"].as_bool()),
        (Some("active"), Some("running"), Some(true)),
        "{s}"
    );
    s
}

/// psql as the postgres user, from a folder it may enter.
pub(crate) fn psql(feather: &Feather, vm: &str, sql: &str) -> String {
    feather.ok(&[
        "exec", vm, "--", "runuser", "-u", "postgres", "--", "psql", "-q", "-d", "postgres",
        "-Atc", sql,
    ])
}

#[test]
fn postgresql_runs_from_debians_template_unit_and_its_data_stays_in_the_vm() {
    let feather = Feather::new("svc-postgres");
    vm(&feather, "db");
    // postgresql@.service: %I is 15/main (AssertPathExists=/etc/postgresql/%I/postgresql.conf),
    // Type=forking through pg_ctlcluster, PIDFile=/run/postgresql/%i.pid in the /run/postgresql
    // the host's tmpfiles.d asks for.
    feather.ok(&["service", "start", "db", "postgresql@15-main"]);
    let pg = assert_running(&feather, "db", "postgresql@15-main.service");
    assert_eq!(
        feather.sh("db", "head -1 /run/postgresql/15-main.pid"),
        format!("{}\n", pg["main_pid"]),
        "the main process is the one its PIDFile names"
    );
    assert_eq!(
        psql(
            &feather,
            "db",
            "create table feather_private (v text); insert into feather_private values ('in-vm'); select v from feather_private"
        ),
        "in-vm\n"
    );
    assert!(
        TcpStream::connect("127.0.0.1:5432").is_err(),
        "a postgres answers on the host's loopback"
    );
    // A second VM starts from the host's data: the table the first VM made is not there.
    vm(&feather, "other");
    feather.ok(&["service", "start", "other", "postgresql@15-main"]);
    assert_eq!(
        psql(
            &feather,
            "other",
            "select coalesce(to_regclass('feather_private')::text, 'absent')"
        ),
        "absent\n"
    );
    assert!(feather
        .vm_dir("db")
        .join("upper/var/lib/postgresql/15/main")
        .is_dir());
    feather.ok(&["service", "stop", "db", "postgresql@15-main"]);
    assert_eq!(
        service(&services(&feather, "db"), "postgresql@15-main.service")["state"],
        "inactive"
    );
    assert_ne!(
        feather
            .run(&[
                "exec", "db", "--", "runuser", "-u", "postgres", "--", "psql", "-d", "postgres",
                "-c", "select 1"
            ])
            .code,
        0,
        "postgres still answers after its stop"
    );
}

#[test]
fn mariadb_runs_from_the_hosts_unit_and_its_databases_stay_in_the_vm() {
    let feather = Feather::new("svc-mariadb");
    vm(&feather, "db");
    // Type=notify, User=mysql, /run/mysqld from the host's tmpfiles.d.
    feather.ok(&["service", "start", "db", "mariadb"]);
    assert_running(&feather, "db", "mariadb.service");
    assert_eq!(
        feather.sh("db", "mariadb -e 'create database feather_private' && mysql -Nse \"show databases like 'feather_private'\""),
        "feather_private\n"
    );
    assert_eq!(
        feather.sh("db", "mariadb -Nse 'select user()'"),
        "root@localhost\n"
    );
    assert!(feather
        .vm_dir("db")
        .join("upper/var/lib/mysql/feather_private")
        .is_dir());
    assert!(
        !Path::new("/var/lib/mysql/feather_private").exists(),
        "the database was made in the host's data"
    );
    assert!(
        TcpStream::connect("127.0.0.1:3306").is_err(),
        "a mariadb answers on the host's loopback"
    );
    feather.ok(&["service", "stop", "db", "mariadb"]);
    assert_ne!(
        feather
            .run(&["exec", "db", "--", "mariadb", "-e", "select 1"])
            .code,
        0,
        "mariadb still answers after its stop"
    );
}

#[test]
fn rsyslog_in_a_vm_writes_the_vms_syslog_not_the_hosts() {
    let feather = Feather::new("svc-rsyslog");
    vm(&feather, "logs");
    feather.ok(&["service", "start", "logs", "rsyslog"]);
    assert_running(&feather, "logs", "rsyslog.service");
    let message = format!("feather-rsyslog-{}", std::process::id());
    feather.ok(&[
        "exec",
        "logs",
        "--",
        "logger",
        "-t",
        "feather-test",
        &message,
    ]);
    feather.eventually("the message is in the VM's /var/log/syslog", || {
        feather
            .run(&["exec", "logs", "--", "cat", "/var/log/syslog"])
            .stdout
            .contains(&message)
    });
    let host_syslog = std::fs::read_to_string("/var/log/syslog").unwrap_or_default();
    assert!(!host_syslog.contains(&message), "the host's syslog got it");
    assert!(
        std::fs::read_to_string(feather.vm_dir("logs").join("upper/var/log/syslog"))
            .unwrap()
            .contains(&message)
    );
}

#[test]
fn cron_in_a_vm_runs_its_jobs_inside_the_vm() {
    let feather = Feather::new("svc-cron");
    vm(&feather, "jobs");
    // An @reboot job runs when cron starts in a fresh /run (no /run/crond.reboot yet).
    feather.sh(
        "jobs",
        "printf '@reboot root hostname > /run/feather-cron-proof\\n' > /etc/cron.d/feather-test && chmod 644 /etc/cron.d/feather-test",
    );
    feather.ok(&["service", "start", "jobs", "cron"]);
    assert_running(&feather, "jobs", "cron.service");
    feather.eventually("the job ran", || {
        feather
            .run(&["exec", "jobs", "--", "cat", "/run/feather-cron-proof"])
            .stdout
            == "jobs\n"
    });
    assert!(!Path::new("/run/feather-cron-proof").exists());
    assert!(!Path::new("/etc/cron.d/feather-test").exists());
}

#[test]
fn memcached_in_a_vm_stores_and_serves_values() {
    let feather = Feather::new("svc-memcached");
    vm(&feather, "cache");
    feather.ok(&["service", "start", "cache", "memcached"]);
    let memcached = assert_running(&feather, "cache", "memcached.service");
    let answer = tcp_exchange(
        &feather,
        "cache",
        11211,
        "set feather 0 0 7\\r\\nprivate\\r\\nget feather\\r\\nstats\\r\\nquit\\r\\n",
    );
    assert!(
        answer.contains("STORED\r\nVALUE feather 0 7\r\nprivate\r\nEND\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("STAT pid {}\r\n", memcached["main_pid"])),
        "the manager follows memcached itself: {answer}"
    );
    // Its pidfile goes to /run/memcached, which the host's tmpfiles.d asks for.
    assert_eq!(
        feather.sh("cache", "cat /run/memcached/memcached.pid"),
        format!("{}\n", memcached["main_pid"])
    );
    assert!(
        TcpStream::connect("127.0.0.1:11211").is_err(),
        "a memcached answers on the host's loopback"
    );
}

#[test]
fn apache2_in_a_vm_serves_its_pages_through_apachectl() {
    let feather = Feather::new("svc-apache");
    vm(&feather, "web");
    // Type=forking: `apachectl start` exits, the manager follows the apache2 it left.
    feather.ok(&["service", "start", "web", "apache2"]);
    let apache = assert_running(&feather, "web", "apache2.service");
    // The unit names no PIDFile=, so (as under systemd) the start is done once apachectl exits,
    // and the daemon it left writes its pid file a moment later.
    let pid_file = "cat /run/apache2/apache2.pid 2>/dev/null";
    feather.eventually("apache2 writes its pid file", || {
        feather
            .run(&["exec", "web", "--", "sh", "-c", pid_file])
            .code
            == 0
    });
    assert_eq!(
        feather.sh("web", pid_file),
        format!("{}\n", apache["main_pid"])
    );
    let page = feather.sh("web", "curl -sf http://127.0.0.1/");
    assert!(page.contains("Apache2 Debian Default Page"), "{page}");
    feather.sh(
        "web",
        "echo served-from-the-vm > /var/www/html/feather-test.html",
    );
    assert_eq!(
        feather.sh("web", "curl -sf http://127.0.0.1/feather-test.html"),
        "served-from-the-vm\n"
    );
    assert!(!Path::new("/var/www/html/feather-test.html").exists());
    feather.ok(&["service", "stop", "web", "apache2"]);
    assert_ne!(
        feather
            .run(&["exec", "web", "--", "curl", "-sf", "http://127.0.0.1/"])
            .code,
        0,
        "apache2 still answers after its stop"
    );
}

#[test]
fn sshd_in_a_vm_answers_with_its_banner() {
    let feather = Feather::new("svc-sshd");
    vm(&feather, "shell");
    // ssh.service: ExecStartPre=sshd -t, Type=notify, RuntimeDirectory=sshd.
    feather.ok(&["service", "start", "shell", "sshd"]);
    assert_running(&feather, "shell", "ssh.service");
    let banner = tcp_exchange(&feather, "shell", 22, "");
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner:?}");
}

#[test]
fn telnetd_answers_through_inetd_in_a_vm() {
    let feather = Feather::new("svc-telnetd");
    vm(&feather, "old");
    // The host's inetd.conf has telnet off; Debian's own tool turns it on in the VM's copy.
    feather.sh("old", "update-inetd --enable telnet 2>/dev/null; true");
    assert!(feather
        .sh("old", "grep '^telnet' /etc/inetd.conf")
        .contains("/usr/sbin/telnetd"));
    // No unit: the SysV script /etc/init.d/inetutils-inetd.
    feather.ok(&["service", "start", "old", "inetutils-inetd"]);
    // A SysV script is started once it exits (as systemd has it); the inetd it forked binds
    // its ports a moment later.
    let probe = "bash -c 'exec 3<>/dev/tcp/127.0.0.1/23 && timeout 2 head -c 3 <&3 | od -An -tx1'";
    feather.eventually("inetd listens on port 23", || {
        feather.run(&["exec", "old", "--", "sh", "-c", probe]).code == 0
    });
    let answer = feather.sh("old", probe);
    // IAC (0xff) and an option negotiation: telnetd speaking the telnet protocol.
    assert!(answer.trim_start().starts_with("ff f"), "{answer:?}");
    assert!(!std::fs::read_to_string("/etc/inetd.conf")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("telnet")));
}

#[test]
fn apache2_and_mariadb_start_as_one_group_in_one_vm() {
    let feather = Feather::new("svc-group");
    vm(&feather, "lamp");
    write_unit(
        &feather,
        "lamp",
        "feather-lamp.target",
        "[Unit]\nDescription=web and database\nWants=apache2.service mariadb.service\nAfter=apache2.service mariadb.service\n",
    );
    feather.ok(&["service", "start", "lamp", "feather-lamp.target"]);
    assert_running(&feather, "lamp", "apache2.service");
    assert_running(&feather, "lamp", "mariadb.service");
    assert_eq!(
        service(&services(&feather, "lamp"), "feather-lamp.target")["state"],
        "active"
    );
    assert!(feather
        .sh("lamp", "curl -sf http://127.0.0.1/")
        .contains("Apache2"));
    assert_eq!(feather.sh("lamp", "mariadb -Nse 'select 6*7'"), "42\n");
    // Stopping the group's members in reverse order leaves nothing answering.
    feather.ok(&["service", "stop", "lamp", "apache2", "mariadb"]);
    let list = services(&feather, "lamp");
    for unit in ["apache2.service", "mariadb.service"] {
        assert_eq!(service(&list, unit)["state"], "inactive", "{list:?}");
    }
}

#[test]
fn host_and_vm_each_run_redis_on_port_6379_with_their_own_data() {
    // The host's own instance, started by this test on the host's loopback and ended by its pid.
    let data = std::env::temp_dir().join(format!("feather-host-redis-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    let mut host_redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            "6379",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server runs on the host");
    let _stop = HostProcess(&mut host_redis, data);
    let host_cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", "6379"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while host_cli(&["ping"]) != "PONG\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "the host's redis did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(host_cli(&["set", "owner", "host"]), "OK\n");

    let feather = Feather::new("svc-redis-both");
    vm(&feather, "twin");
    feather.ok(&["service", "start", "twin", "redis-server"]);
    assert_eq!(
        feather.sh(
            "twin",
            "redis-cli get owner; redis-cli set owner vm; redis-cli get owner"
        ),
        "\nOK\nvm\n"
    );
    assert_eq!(
        host_cli(&["get", "owner"]),
        "host\n",
        "the host's instance keeps its own data"
    );
}

/// Ends a process this test started, by its pid, and removes its data folder.
struct HostProcess<'a>(&'a mut std::process::Child, std::path::PathBuf);

impl Drop for HostProcess<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

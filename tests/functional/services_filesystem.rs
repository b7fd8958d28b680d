//! The filesystem sandboxing settings (`ProtectSystem=`, `ProtectHome=`, `ReadWritePaths=`,
//! `ReadOnlyPaths=`, `InaccessiblePaths=`, `ProtectControlGroups=`) applied to a unit's
//! processes inside a VM with a Landlock domain of the unit's own: a Python probe writes and
//! reads where each setting protects, from a unit with the setting and from one without.

use crate::services::{service, services, vm, write_unit};
use crate::support::Feather;

/// Tries each access and prints `NAME ok` or `NAME errno N`; `sys.argv[1]` keeps the files
/// of units running at once apart.
const PROBE: &str = r#"import os, sys
me = sys.argv[1]

def check(name, call):
    try:
        call()
        print(name, "ok", flush=True)
    except OSError as e:
        print(name, "errno", e.errno, flush=True)

def write(folder):
    def go():
        path = os.path.join(folder, "probe-" + me)
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
    return go

def read(path):
    return lambda: open(path).read()

def cgroup():
    group = "/sys/fs/cgroup/pids/probe-" + me
    os.mkdir(group)
    os.rmdir(group)

check("write-usr", write("/usr/local"))
check("write-etc", write("/etc"))
check("write-var-tmp", write("/var/tmp"))
check("write-rw", write("/srv/rw"))
check("write-state", write("/var/lib/probe-state"))
check("write-dev", lambda: open("/dev/null", "w").write("x"))
check("read-home", read("/home/probe/secret"))
check("read-root", read("/root/probe-secret"))
check("write-home", write("/home/probe"))
check("read-ro", read("/srv/ro/file"))
check("write-ro", write("/srv/ro"))
check("read-hidden", read("/srv/hidden/secret"))
check("mkdir-cgroup", cgroup)
# ptrace-level access to a process outside the unit's domain: the VM's service manager (the
# VM's init is out of reach of every process of the VM: it is not dumpable).
manager = open("/run/feather-svc/manager.pid").read().strip()
check("read-manager-environ", read("/proc/" + manager + "/environ"))
"#;

const EACCES: i32 = libc::EACCES;

fn log(feather: &Feather, vm: &str, unit: &str) -> String {
    feather.sh(vm, &format!("cat /var/log/feather/{unit}.service.log"))
}

/// What the units' logs say against what each setting must give: every mismatch is kept, so a
/// failure names all of them at once.
#[derive(Default)]
struct Expectations(Vec<String>);

impl Expectations {
    /// Each of `calls` succeeded in `unit`'s log `text`.
    fn allowed(&mut self, text: &str, unit: &str, calls: &[&str]) {
        for call in calls {
            if !text.contains(&format!("{call} ok\n")) {
                self.0.push(format!("{unit}: {call} should succeed"));
            }
        }
    }

    /// Each of `calls` failed with EACCES, Landlock's answer (systemd's read-only mounts
    /// answer EROFS, its inaccessible ones EACCES).
    fn refused(&mut self, text: &str, unit: &str, calls: &[&str]) {
        for call in calls {
            if !text.contains(&format!("{call} errno {EACCES}\n")) {
                self.0
                    .push(format!("{unit}: {call} should fail with EACCES"));
            }
        }
    }

    fn assert_met(self, logs: &str) {
        assert!(self.0.is_empty(), "{:#?}\n{logs}", self.0);
    }
}

#[test]
fn services_filesystem_settings_confine_what_a_unit_reaches() {
    let feather = Feather::new("svc-filesystem");
    vm(&feather, "fs");
    feather.sh(
        "fs",
        &format!(
            "mkdir -p /opt/probe /srv/rw /srv/ro /srv/hidden /home/probe && \
             echo secret > /srv/hidden/secret && echo file > /srv/ro/file && \
             echo secret > /home/probe/secret && echo secret > /root/probe-secret && \
             cat > /opt/probe/fs.py <<'EOF'\n{PROBE}EOF"
        ),
    );
    let nnp = "NoNewPrivileges=yes\n";
    let units: [(&str, String); 12] = [
        ("open", nnp.into()),
        ("yes", format!("{nnp}ProtectSystem=yes\n")),
        // no_new_privs implied by LockPersonality=, as systemd implies it.
        ("full", "LockPersonality=yes\nProtectSystem=full\n".into()),
        (
            "strict",
            format!(
                "{nnp}ProtectSystem=strict\nReadWritePaths=/srv/rw\n\
                 ReadWritePaths=-/srv/absent\nStateDirectory=probe-state\n"
            ),
        ),
        (
            "stricttmp",
            format!("{nnp}ProtectSystem=strict\nPrivateTmp=yes\n"),
        ),
        ("home", format!("{nnp}ProtectHome=yes\n")),
        ("homero", format!("{nnp}ProtectHome=read-only\n")),
        ("ro", format!("{nnp}ReadOnlyPaths=/srv/ro\n")),
        ("hidden", format!("{nnp}InaccessiblePaths=/srv/hidden\n")),
        ("cgroups", format!("{nnp}ProtectControlGroups=yes\n")),
        // Without no_new_privs, Landlock cannot be entered: listed as not applied.
        ("nonnp", "ProtectSystem=strict\n".into()),
        ("plus", format!("{nnp}ProtectSystem=strict\n")),
    ];
    for (name, settings) in &units {
        let plus = if *name == "plus" { "+" } else { "" };
        write_unit(
            &feather,
            "fs",
            &format!("{name}.service"),
            &format!(
                "[Service]\nType=oneshot\nRemainAfterExit=yes\n{settings}\
                 ExecStart={plus}/usr/bin/python3 /opt/probe/fs.py {name}\n"
            ),
        );
    }
    // In force in every VM already (read-only /proc/sys, no /dev/kmsg): applied, and they
    // imply no_new_privs as systemd says.
    write_unit(
        &feather,
        "fs",
        "kernel.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nProtectKernelTunables=yes\n\
         ProtectKernelLogs=yes\nExecStart=/bin/sh -c 'echo 1 > /proc/sys/kernel/ns_last_pid; \
         test -e /dev/kmsg || echo no-kmsg; grep NoNewPrivs /proc/self/status'\n",
    );
    let mut start = vec!["service", "start", "fs", "kernel"];
    start.extend(units.iter().map(|(name, _)| *name));
    feather.ok(&start);
    let text = |unit: &str| log(&feather, "fs", unit);

    let every = [
        "write-usr",
        "write-etc",
        "write-var-tmp",
        "write-rw",
        "write-dev",
        "read-home",
        "read-root",
        "write-home",
        "read-ro",
        "write-ro",
        "read-hidden",
        "mkdir-cgroup",
        "read-manager-environ",
    ];
    let mut checks = Expectations::default();
    for unit in ["open", "nonnp", "plus"] {
        checks.allowed(&text(unit), unit, &every);
    }

    let yes = text("yes");
    checks.refused(&yes, "yes", &["write-usr", "read-manager-environ"]);
    checks.allowed(&yes, "yes", &["write-etc", "write-var-tmp", "read-home"]);

    let full = text("full");
    checks.refused(&full, "full", &["write-usr", "write-etc"]);
    checks.allowed(&full, "full", &["write-var-tmp", "write-rw", "read-home"]);

    let strict = text("strict");
    checks.refused(
        &strict,
        "strict",
        &["write-usr", "write-etc", "write-var-tmp", "write-ro"],
    );
    checks.allowed(
        &strict,
        "strict",
        &[
            "write-rw",
            "write-state",
            "write-dev",
            "read-home",
            "read-ro",
        ],
    );

    let stricttmp = text("stricttmp");
    checks.refused(&stricttmp, "stricttmp", &["write-etc", "write-rw"]);
    checks.allowed(&stricttmp, "stricttmp", &["write-var-tmp"]);

    let home = text("home");
    checks.refused(&home, "home", &["read-home", "read-root", "write-home"]);
    checks.allowed(&home, "home", &["write-var-tmp", "write-etc", "read-ro"]);

    let homero = text("homero");
    checks.refused(&homero, "homero", &["write-home"]);
    checks.allowed(&homero, "homero", &["read-home", "read-root", "write-etc"]);

    let ro = text("ro");
    checks.refused(&ro, "ro", &["write-ro"]);
    checks.allowed(&ro, "ro", &["read-ro", "write-rw", "read-hidden"]);

    let hidden = text("hidden");
    checks.refused(&hidden, "hidden", &["read-hidden"]);
    checks.allowed(
        &hidden,
        "hidden",
        &["read-ro", "write-rw", "write-ro", "write-etc"],
    );

    let cgroups = text("cgroups");
    checks.refused(&cgroups, "cgroups", &["mkdir-cgroup"]);
    checks.allowed(&cgroups, "cgroups", &["write-etc", "write-var-tmp"]);

    let logs: String = units
        .iter()
        .map(|(name, _)| format!("{name}:\n{}", text(name)))
        .collect();
    checks.assert_met(&logs);

    // Applied settings are not listed; the one without no_new_privs says so and why.
    let list = services(&feather, "fs");
    for (name, _) in &units {
        let expected = match *name {
            "nonnp" => serde_json::json!(["Service.ProtectSystem"]),
            _ => serde_json::json!([]),
        };
        assert_eq!(
            service(&list, &format!("{name}.service"))["not_applied"],
            expected,
            "{name}"
        );
    }
    let kernel = text("kernel");
    assert!(
        kernel.contains("Read-only file system")
            && kernel.contains("no-kmsg")
            && kernel.contains("NoNewPrivs:\t1"),
        "{kernel}"
    );
    assert_eq!(
        service(&list, "kernel.service")["not_applied"],
        serde_json::json!([])
    );
    let nonnp = text("nonnp");
    assert!(
        nonnp.contains("ProtectSystem= not applied: a Landlock domain needs no_new_privs"),
        "{nonnp}"
    );
}

#[test]
fn services_filesystem_a_missing_path_fails_the_start_unless_optional() {
    let feather = Feather::new("svc-fs-missing");
    vm(&feather, "fm");
    write_unit(
        &feather,
        "fm",
        "missing.service",
        "[Service]\nType=oneshot\nNoNewPrivileges=yes\nReadOnlyPaths=/srv/absent\n\
         ExecStart=/bin/true\n",
    );
    let failed = feather.fails(&["service", "start", "fm", "missing"]);
    assert!(failed.contains("missing.service failed"), "{failed}");
    let text = log(&feather, "fm", "missing");
    assert!(
        text.contains("ReadOnlyPaths=/srv/absent: No such file or directory")
            && text.contains("prefix it with '-'"),
        "{text}"
    );
}

/// Debian's redis-server.service ships `ProtectSystem=strict`, `ProtectHome=yes` and
/// `ReadWritePaths=-/var/lib/redis -/var/log/redis -/var/run/redis`: redis answers under
/// them and saves into its own folder, but not into a folder its user owns elsewhere.
#[test]
fn services_filesystem_redis_runs_under_its_own_protect_system_strict() {
    let feather = Feather::new("svc-fs-redis");
    vm(&feather, "rd");
    // Let a client move redis's save folder (redis 7 protects `dir` by default), in the VM's
    // own copy of the configuration; and a folder redis's user may write, outside the ones its
    // unit keeps writable.
    feather.sh(
        "rd",
        "echo 'enable-protected-configs yes' >> /etc/redis/redis.conf && \
         mkdir -p /srv/redis-elsewhere && chown redis:redis /srv/redis-elsewhere",
    );
    feather.ok(&["service", "start", "rd", "redis-server"]);
    let cli = |args: &str| feather.sh("rd", &format!("redis-cli {args} 2>&1"));
    feather.eventually("redis answers", || cli("ping").contains("PONG"));
    assert_eq!(cli("set key value"), "OK\n");
    assert_eq!(cli("save"), "OK\n");
    assert!(feather.sh("rd", "ls /var/lib/redis").contains("dump.rdb"));
    assert_eq!(cli("config set dir /srv/redis-elsewhere"), "OK\n");
    let refused = cli("save");
    assert!(refused.contains("ERR"), "{refused}");
    let logged = feather.sh("rd", "cat /var/log/redis/redis-server.log");
    assert!(logged.contains("Permission denied"), "{logged}");
    assert_eq!(feather.sh("rd", "ls -A /srv/redis-elsewhere"), "");
    assert_eq!(cli("config set dir /var/lib/redis"), "OK\n");
    assert_eq!(cli("save"), "OK\n");
    let list = services(&feather, "rd");
    let redis = service(&list, "redis-server.service");
    assert_eq!(redis["state"], "active", "{redis}");
    let not_applied = redis["not_applied"].as_array().unwrap();
    for applied in ["ProtectSystem", "ProtectHome", "ReadWritePaths"] {
        assert!(
            !not_applied.contains(&serde_json::json!(format!("Service.{applied}"))),
            "{applied}: {not_applied:?}"
        );
    }
}

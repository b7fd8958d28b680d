//! The sandboxing settings that systemd makes by checking a call's arguments
//! (`RestrictNamespaces=`, `RestrictRealtime=`, `RestrictSUIDSGID=`,
//! `MemoryDenyWriteExecute=`, `LockPersonality=`, `SystemCallArchitectures=`), applied to a
//! unit's processes inside a VM: a Python probe in the VM makes each call from a unit with the
//! setting and from one without. The same for what `PrivateDevices=`, `ProtectKernelModules=`,
//! `ProtectClock=` and `ProtectHostname=` refuse beyond a mount.

use crate::services::{services, write_unit};
use crate::support::Feather;

/// Makes each call a setting restricts and prints `NAME ok` or `NAME errno N`.
const PROBE: &str = r#"import ctypes, mmap, os, sys, tempfile
libc = ctypes.CDLL(None, use_errno=True)

def check(name, call):
    try:
        call()
        print(name, "ok", flush=True)
    except OSError as e:
        print(name, "errno", e.errno, flush=True)

def c_call(function, *args):
    if function(*args) == -1:
        raise OSError(ctypes.get_errno(), function.__name__)

CLONE_NEWUSER = 0x10000000
PER_LINUX32 = 0x0008
work = tempfile.mkdtemp(dir="/var/tmp")
check("unshare-user", lambda: c_call(libc.unshare, CLONE_NEWUSER))
# Priority 0 is invalid for SCHED_FIFO: the kernel answers EINVAL, a filter EPERM before it.
check("sched-fifo", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(0)))
check("sched-batch", lambda: os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0)))
with open(os.path.join(work, "plain"), "w"):
    pass
check("chmod-suid", lambda: os.chmod(os.path.join(work, "plain"), 0o4755))
check("chmod-plain", lambda: os.chmod(os.path.join(work, "plain"), 0o755))
check("open-sgid", lambda: os.close(os.open(os.path.join(work, "new"), os.O_CREAT | os.O_WRONLY, 0o2755)))
check("mkdir-sgid", lambda: os.mkdir(os.path.join(work, "dir"), 0o2755))
check("mmap-wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close())
check("mmap-w", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE).close())
check("personality", lambda: c_call(libc.personality, PER_LINUX32))
"#;

/// Makes the calls `PrivateDevices=`, `ProtectClock=` and `ProtectHostname=` refuse, and
/// lists `/usr/lib/modules`, and prints the process's filters and no_new_privs. `sethostname` runs in a child in a user and
/// UTS namespace of its own (the VM allows them), where it succeeds without a filter.
const PROTECT_PROBE: &str = r#"import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)

def check(name, call):
    try:
        call()
        print(name, "ok", flush=True)
    except OSError as e:
        print(name, "errno", e.errno, flush=True)

def c_call(function, *args):
    if function(*args) == -1:
        raise OSError(ctypes.get_errno(), function.__name__)

CLONE_NEWUSER = 0x10000000
CLONE_NEWUTS = 0x04000000
# Lowering the I/O privilege level needs no capability: 0 or ENOSYS (a kernel without iopl).
check("iopl", lambda: c_call(libc.iopl, 0))
# Reading the clock's state needs no capability. adjtimex itself, by number: the C library's
# goes through clock_adjtime, which the VM's filter refuses.
SYS_ADJTIMEX = {"x86_64": 159, "aarch64": 171}[os.uname().machine]
check("adjtimex", lambda: c_call(libc.syscall, SYS_ADJTIMEX, ctypes.create_string_buffer(512)))
check("modules", lambda: os.listdir("/usr/lib/modules"))
child = os.fork()
if child == 0:
    try:
        c_call(libc.unshare, CLONE_NEWUSER | CLONE_NEWUTS)
    except OSError as e:
        print("unshare errno", e.errno, flush=True)
        os._exit(1)
    check("sethostname", lambda: c_call(libc.sethostname, b"probe", 5))
    os._exit(0)
os.waitpid(child, 0)
with open("/proc/self/status") as status:
    for line in status:
        if line.startswith(("NoNewPrivs", "Seccomp_filters")):
            print(line.strip(), flush=True)
"#;

/// An i386 system call (`getpid` through `int 0x80`) from a 64-bit process.
const INT80: &str = r#"import ctypes, mmap, os
code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
print("i386 getpid", ctypes.CFUNCTYPE(ctypes.c_int)(address)() == os.getpid(), flush=True)
"#;

fn log(feather: &Feather, vm: &str, unit: &str) -> String {
    feather.sh(vm, &format!("cat /var/log/feather/{unit}.service.log"))
}

fn unit(feather: &Feather, vm: &str, name: &str, settings: &str, commands: &str) {
    write_unit(
        feather,
        vm,
        &format!("{name}.service"),
        &format!("[Service]\nType=oneshot\nRemainAfterExit=yes\n{settings}{commands}"),
    );
}

#[test]
fn services_argument_restrictions_refuse_their_calls() {
    let feather = Feather::new("svc-restrict");
    // User namespaces allowed in the VM, so that RestrictNamespaces= is what refuses one.
    feather.ok(&["create", "rs", "--allow-userns"]);
    feather.ok(&["start", "rs"]);
    feather.sh(
        "rs",
        &format!("mkdir -p /opt/probe && cat > /opt/probe/calls.py <<'EOF'\n{PROBE}EOF"),
    );
    let probe = "ExecStart=/usr/bin/python3 /opt/probe/calls.py\n\
                 ExecStart=/bin/grep NoNewPrivs /proc/self/status\n";
    let units = [
        ("namespaces", "RestrictNamespaces=yes\n"),
        ("notuser", "RestrictNamespaces=~user\n"),
        ("realtime", "RestrictRealtime=yes\n"),
        ("suid", "RestrictSUIDSGID=yes\n"),
        ("wx", "MemoryDenyWriteExecute=yes\n"),
        ("personality", "LockPersonality=yes\n"),
        ("open", ""),
    ];
    for (name, setting) in units {
        unit(&feather, "rs", name, setting, probe);
    }
    // A pipeline forks: clone3 answers ENOSYS under RestrictNamespaces= and the C library
    // falls back to clone, as under systemd.
    unit(
        &feather,
        "rs",
        "forks",
        "RestrictNamespaces=yes\n",
        "ExecStart=/bin/sh -c 'echo forked | cat'\n",
    );
    let mut start = vec!["service", "start", "rs", "forks"];
    start.extend(units.iter().map(|(name, _)| *name));
    feather.ok(&start);

    let open = log(&feather, "rs", "open");
    for call in [
        "unshare-user",
        "sched-batch",
        "chmod-suid",
        "chmod-plain",
        "open-sgid",
        "mkdir-sgid",
        "mmap-wx",
        "mmap-w",
        "personality",
    ] {
        assert!(open.contains(&format!("{call} ok")), "{call}: {open}");
    }
    assert!(open.contains("sched-fifo errno 22"), "{open}");
    assert!(open.contains("NoNewPrivs:\t0"), "{open}");

    let refused = |unit: &str, calls: &[&str], errno: i32| {
        let text = log(&feather, "rs", unit);
        for call in calls {
            assert!(
                text.contains(&format!("{call} errno {errno}")),
                "{unit}: {call}: {text}"
            );
        }
        // Each setting implies no_new_privs, as under systemd without CAP_SYS_ADMIN.
        assert!(text.contains("NoNewPrivs:\t1"), "{unit}: {text}");
        text
    };
    let namespaces = refused("namespaces", &["unshare-user"], libc::EPERM);
    assert!(namespaces.contains("chmod-suid ok"), "{namespaces}");
    refused("notuser", &["unshare-user"], libc::EPERM);
    let realtime = refused("realtime", &["sched-fifo"], libc::EPERM);
    assert!(realtime.contains("sched-batch ok"), "{realtime}");
    let suid = refused(
        "suid",
        &["chmod-suid", "open-sgid", "mkdir-sgid"],
        libc::EPERM,
    );
    assert!(suid.contains("chmod-plain ok"), "{suid}");
    // The kernel's PR_SET_MDWE answers EACCES (Linux 6.3 and later; a filter would say EPERM).
    let wx = refused("wx", &["mmap-wx"], libc::EACCES);
    assert!(wx.contains("mmap-w ok"), "{wx}");
    refused("personality", &["personality"], libc::EPERM);
    assert!(log(&feather, "rs", "forks").contains("forked"));

    // None of them is listed as not applied any more.
    for entry in services(&feather, "rs") {
        assert_eq!(entry["not_applied"], serde_json::json!([]), "{entry}");
    }
}

#[test]
fn services_system_call_architectures_native_ends_i386_calls() {
    let feather = Feather::new("svc-arch");
    crate::services::vm(&feather, "ar");
    feather.sh(
        "ar",
        &format!("mkdir -p /opt/probe && cat > /opt/probe/int80.py <<'EOF'\n{INT80}EOF"),
    );
    unit(
        &feather,
        "ar",
        "native",
        "SystemCallArchitectures=native\n",
        "ExecStart=/usr/bin/python3 /opt/probe/int80.py\n",
    );
    let failed = feather.fails(&["service", "start", "ar", "native"]);
    assert!(failed.contains("native.service failed"), "{failed}");
    let text = log(&feather, "ar", "native");
    assert!(
        text.contains("signal 31") || text.contains("SIGSYS"),
        "{text}"
    );
    assert!(!text.contains("i386 getpid"), "{text}");
    assert!(services(&feather, "ar")
        .iter()
        .all(|s| s["not_applied"] == serde_json::json!([])),);
}

/// The number after `Seccomp_filters:` in a probe's log.
fn filters(text: &str) -> usize {
    text.lines()
        .find_map(|line| line.strip_prefix("Seccomp_filters:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Seccomp_filters line: {text}"))
}

#[test]
fn services_kernel_protections_refuse_their_calls() {
    let feather = Feather::new("svc-protect");
    // User namespaces allowed, so that sethostname can succeed in one without the setting.
    feather.ok(&["create", "pk", "--allow-userns"]);
    feather.ok(&["start", "pk"]);
    feather.sh(
        "pk",
        &format!("mkdir -p /opt/probe && cat > /opt/probe/protect.py <<'EOF'\n{PROTECT_PROBE}EOF"),
    );
    // The host may have none: the VM's layer gets one.
    feather.sh("pk", "mkdir -p /usr/lib/modules/probe");
    let probe = "ExecStart=/usr/bin/python3 /opt/probe/protect.py\n";
    let units = [
        ("devices", "PrivateDevices=yes\n"),
        ("modules", "ProtectKernelModules=yes\n"),
        ("clock", "ProtectClock=yes\n"),
        ("hostname", "ProtectHostname=yes\n"),
        ("open", ""),
    ];
    for (name, setting) in units {
        unit(&feather, "pk", name, setting, probe);
    }
    // The implied no_new_privs is what lets ProtectHome= enter its Landlock domain.
    unit(
        &feather,
        "pk",
        "home",
        "ProtectHostname=yes\nProtectHome=yes\n",
        "ExecStart=/bin/sh -c 'ls /root >/dev/null 2>&1; echo listed $?'\n",
    );
    let mut start = vec!["service", "start", "pk", "home"];
    start.extend(units.iter().map(|(name, _)| *name));
    feather.ok(&start);

    let open = log(&feather, "pk", "open");
    assert!(open.contains("adjtimex ok"), "{open}");
    assert!(open.contains("sethostname ok"), "{open}");
    assert!(open.contains("modules ok"), "{open}");
    // 0, or ENOSYS where the kernel has no iopl: never the filter's EPERM.
    assert!(!open.contains("iopl errno 1\n"), "{open}");
    assert!(open.contains("NoNewPrivs:\t0"), "{open}");

    let protected = |unit: &str| {
        let text = log(&feather, "pk", unit);
        // Each implies no_new_privs, as under systemd without CAP_SYS_ADMIN, and adds one
        // filter of the unit's own.
        assert!(text.contains("NoNewPrivs:\t1"), "{unit}: {text}");
        assert_eq!(filters(&text), filters(&open) + 1, "{unit}: {text}");
        text
    };
    let devices = protected("devices");
    assert!(devices.contains("iopl errno 1\n"), "{devices}");
    assert!(devices.contains("adjtimex ok"), "{devices}");
    // The module calls fail in every VM already (no CAP_SYS_MODULE, the VM's filter): the
    // unit's own filter, and its Landlock domain hiding the modules, are what it adds.
    let modules = protected("modules");
    assert!(modules.contains("adjtimex ok"), "{modules}");
    assert!(
        modules.contains(&format!("modules errno {}\n", libc::EACCES)),
        "{modules}"
    );
    assert!(devices.contains("modules ok"), "{devices}");
    let clock = protected("clock");
    assert!(clock.contains("adjtimex errno 1\n"), "{clock}");
    assert!(clock.contains("sethostname ok"), "{clock}");
    let hostname = protected("hostname");
    assert!(hostname.contains("sethostname errno 1\n"), "{hostname}");
    assert!(hostname.contains("adjtimex ok"), "{hostname}");

    let home = log(&feather, "pk", "home");
    assert!(home.contains("listed 2"), "{home}");
    for entry in services(&feather, "pk") {
        assert_eq!(entry["not_applied"], serde_json::json!([]), "{entry}");
    }
}

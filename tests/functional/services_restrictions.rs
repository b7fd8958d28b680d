//! The sandboxing settings that systemd makes by checking a call's arguments
//! (`RestrictNamespaces=`, `RestrictRealtime=`, `RestrictSUIDSGID=`,
//! `MemoryDenyWriteExecute=`, `LockPersonality=`, `SystemCallArchitectures=`), applied to a
//! unit's processes inside a VM: a Python probe in the VM makes each call from a unit with the
//! setting and from one without.

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

//! A VM's root may make set-user-ID programs and give files capabilities (it holds `CAP_FOWNER`
//! and `CAP_SETFCAP` over its own layer). Committed to the host, they would run there with those
//! privileges, and file capabilities do not even show in `ls -l`: `diff` names them, and
//! `commit` applies them only with `--keep-privileges`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::{Feather, ScratchBase};

#[test]
fn commit_applies_the_privileges_a_vm_gave_its_files_only_when_asked_and_diff_names_them() {
    let feather = Feather::new("commit-privileges");
    let base = ScratchBase::new("commit-privileges");
    base.add_host_program("/usr/sbin/setcap");
    feather.start_over("vm", &base, &[]);
    feather.sh(
        "vm",
        "cp /bin/busybox /bin/as-owner && chmod 4755 /bin/as-owner && \
         cp /bin/busybox /bin/capable && /usr/sbin/setcap cap_sys_admin+ep /bin/capable && \
         echo plain > /data/plain",
    );

    let diff = feather.ok(&["diff", "vm"]);
    let line = |path: &str| diff.lines().find(|l| l.ends_with(path)).unwrap_or_default();
    assert!(line("/bin/as-owner").contains("[set-user-ID] "), "{diff}");
    assert!(
        line("/bin/capable").contains("[file capabilities] "),
        "{diff}"
    );
    assert!(!line("/data/plain").contains('['), "{diff}");
    let json = feather.ok(&["diff", "vm", "--json"]);
    assert!(json.contains(r#""file-capabilities""#), "{json}");

    let refused = feather.fails(&["commit", "vm"]);
    for expected in [
        "/bin/as-owner (set-user-ID)",
        "/bin/capable (file capabilities)",
        "--keep-privileges",
    ] {
        assert!(
            refused.contains(expected),
            "{expected:?} missing: {refused}"
        );
    }
    for path in ["bin/as-owner", "bin/capable", "data/plain"] {
        assert!(!base.file(path).exists(), "{path} was committed: {refused}");
    }

    feather.ok(&["commit", "vm", "/data"]);
    assert_eq!(base.read("data/plain").as_deref(), Some("plain\n"));

    feather.ok(&["commit", "vm", "--keep-privileges"]);
    let mode = fs::metadata(base.file("bin/as-owner"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755);
    let caps = Command::new("getcap")
        .arg(base.file("bin/capable"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&caps.stdout).contains("cap_sys_admin"),
        "{caps:?}"
    );
}

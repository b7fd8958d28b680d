//! The service manager's client runs inside the VM from the VM's own view of feather-svcd's
//! binary, which the VM's root may replace: the host reads its output as hostile and never
//! waits on it without end.

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Feather, ScratchBase};

/// Runs `feather args…`, killing it if it has not ended after `limit` (a hang is a failure
/// here, not a wait for CI's own timeout). Also for `state_root`'s FIFOs.
pub(crate) fn run_at_most(feather: &Feather, args: &[&str], limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = feather
        .command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "feather {args:?} still waited after {limit:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().unwrap(), started.elapsed())
}

#[test]
fn a_service_client_that_never_answers_or_never_ends_does_not_hold_the_host() {
    let feather = Feather::new("svc-client-hang");
    let base = ScratchBase::new("svc-client-hang");
    let svcd = std::path::Path::new(Feather::bin()).with_file_name("feather-svcd");
    let client = base.file(svcd.to_str().unwrap().trim_start_matches('/'));
    std::fs::create_dir_all(client.parent().unwrap()).unwrap();
    // Asked for the list, it answers and leaves a process holding its output open; asked for
    // anything else, it says hello and then nothing, ever.
    let hello = r#"{"line":"hello","version":1}"#;
    let list = r#"{"line":"answer","response":{"result":"list","units":[]}}"#;
    std::fs::write(
        &client,
        format!(
            "#!/bin/sh\nprintf '%s\\n' '{hello}'\n\
             case \"$4\" in\n\
             *list*) printf '%s\\n' '{list}'; sleep 1000 & exit 0;;\n\
             esac\n\
             exec sleep 1000\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).unwrap();
    feather.start_over("vm", &base, &["--net", "none"]);

    let (listed, _) = run_at_most(&feather, &["service", "ls", "vm"], Duration::from_secs(25));
    assert!(
        listed.status.success(),
        "the answer counts, whatever the VM keeps open: {}",
        String::from_utf8_lossy(&listed.stderr)
    );

    let (status, waited) = run_at_most(
        &feather,
        &["service", "status", "vm", "nginx"],
        Duration::from_secs(90),
    );
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success());
    assert!(
        stderr.contains("VM vm: the service client gave no answer within 30 s"),
        "{stderr}"
    );
    assert!(
        waited >= Duration::from_secs(30),
        "it had its time: {waited:?}"
    );
}

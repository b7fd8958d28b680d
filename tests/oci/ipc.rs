//! `feather check ipc` of an OCI container: the IPC probe's matrix with the container as VM A
//! (its agents entered as `feather-oci exec` enters), for a container over the host with
//! feather's confinement on (`org.feather.confine` unset: the default) and, for contrast, off.

use serde_json::{json, Value};

use crate::feather::sibling;
use crate::support::{base_config, run, Bundle, Runtime, Scratch};

/// A running container over the host, as `ctr run` configures one (its own network, pid, ipc
/// and uts namespaces; `/proc/sys` read-only), with `confine` as `org.feather.confine`.
fn started(scratch: &Scratch, runtime: &Runtime, id: &str, confine: Option<&str>) {
    let mut config = base_config(&["sleep", "1000"]);
    config["process"]["env"] = json!(["PATH=/usr/bin:/bin"]);
    config["annotations"] = json!({"org.feather.base": "host"});
    runtime.allow_annotations(&["org.feather.base=host", "org.feather.confine=none"]);
    if let Some(confine) = confine {
        config["annotations"]["org.feather.confine"] = confine.into();
    }
    let bundle = Bundle::new(scratch, id, &config);
    let created = runtime.create(id, &bundle, &scratch.path(&format!("{id}.output")));
    assert_eq!(created.code, 0, "{created:?}");
    assert_eq!(runtime.run(&["start", id]).code, 0);
}

/// `feather check ipc ID --json --runtime-root ROOT`: the exit code and the matrix.
fn probe(scratch: &Scratch, runtime: &Runtime, id: &str) -> (i32, Value) {
    let root = std::fs::canonicalize(&runtime.root).unwrap();
    let outcome = run(std::process::Command::new(sibling("feather"))
        .env("FEATHER_POOL", "0")
        .arg("--root")
        .arg(scratch.path("feather-root"))
        .args(["check", "ipc", id, "--json", "--runtime-root"])
        .arg(root));
    let matrix = serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|e| panic!("check ipc printed no matrix ({e}): {outcome:?}"));
    (outcome.code, matrix)
}

/// The outcome of one cell: `reached`, `refused`, `invisible`, `denied`, `not_applicable`.
fn kind(matrix: &Value, channel: &str, direction: &str) -> String {
    let row = matrix["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["channel"] == channel)
        .unwrap_or_else(|| panic!("no row {channel}"));
    let cell = row["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cell| cell["direction"] == direction)
        .unwrap_or_else(|| panic!("no cell {channel} {direction}"));
    cell["outcome"]["kind"].as_str().unwrap().to_owned()
}

#[test]
fn check_ipc_of_a_confined_oci_container_shows_every_channel_confined() {
    let scratch = Scratch::new("check-ipc");
    let runtime = Runtime::new(&scratch);
    let id = format!("ipc-{}", std::process::id());
    started(&scratch, &runtime, &id, None);

    let (code, matrix) = probe(&scratch, &runtime, &id);
    let notes = matrix["notes"].to_string();
    assert!(
        notes.contains(&format!("VM A is the OCI container {id}")),
        "{notes}"
    );
    assert_eq!(code, 0, "every cell holds its expectation: {matrix:#}");
    // Cross the container's boundary: nothing reaches, in either direction.
    for (channel, direction, expected) in [
        ("sysv-shm", "HostToVm", "invisible"),
        ("posix-mq", "VmToHost", "invisible"),
        ("unix-stream:/tmp", "VmToVm", "invisible"),
        ("unix-abstract", "VmToHost", "refused"),
        ("tcp-loopback", "VmToHost", "refused"),
        ("signal", "VmToHost", "invisible"),
        ("ptrace", "VmToHost", "invisible"),
        // What feather's confinement adds to the config (which has no seccomp profile):
        // its seccomp deny list.
        ("keyring-user", "VmToHost", "denied"),
        ("netlink-uevent", "VmToHost", "denied"),
        ("perf_event_open", "VmToHost", "denied"),
        ("bpf", "VmToHost", "denied"),
        ("userfaultfd", "VmToHost", "denied"),
        ("io_uring", "VmToHost", "denied"),
        ("tiocsti", "VmToHost", "denied"),
        ("sysctl-write", "VmToHost", "denied"),
    ] {
        assert_eq!(
            kind(&matrix, channel, direction),
            expected,
            "{channel} {direction}"
        );
    }
    // Inside the container, between two programs entered into it, IPC works.
    for channel in [
        "sysv-shm",
        "posix-mq",
        "unix-stream:/tmp",
        "unix-abstract",
        "signal",
    ] {
        assert_eq!(kind(&matrix, channel, "InsideVm"), "reached", "{channel}");
    }
    assert_eq!(
        runtime.status(&id),
        "running",
        "the container is left running"
    );

    // The same container without feather's confinement: the config alone (no seccomp
    // profile) lets the host's keyrings, its uevents and perf_event_open through, as under
    // runc, and the matrix says so.
    let open = format!("ipc-open-{}", std::process::id());
    started(&scratch, &runtime, &open, Some("none"));
    let (code, matrix) = probe(&scratch, &runtime, &open);
    assert_ne!(code, 0, "{matrix:#}");
    for channel in ["keyring-user", "netlink-uevent", "perf_event_open"] {
        assert_eq!(kind(&matrix, channel, "VmToHost"), "reached", "{channel}");
    }
}

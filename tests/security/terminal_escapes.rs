//! Text a VM chose (file names, command lines, audit objects) never reaches the
//! administrator's terminal raw: escape sequences and bidi controls are shown, not obeyed,
//! and `--json` keeps the exact text.

use std::collections::BTreeSet;
use std::fs;

use crate::support::{running_vm, terminal_controls, Feather};

/// Names with an erase-line sequence, a newline, a C1 CSI, a right-to-left override, an OSC
/// title change, and a byte that is not UTF-8, as `printf` octal escapes and as bytes.
const NAMES: [(&str, &[u8]); 6] = [
    ("esc\\033[2Kgone", b"esc\x1b[2Kgone"),
    ("new\\nline", b"new\nline"),
    ("csi\\302\\2331m", "csi\u{9b}1m".as_bytes()),
    (
        "bidi\\342\\200\\256txt.exe",
        "bidi\u{202e}txt.exe".as_bytes(),
    ),
    ("title\\033]0;pwned\\007", b"title\x1b]0;pwned\x07"),
    ("bad\\377byte", b"bad\xffbyte"),
];

fn assert_no_controls(what: &str, text: &str) {
    let found = terminal_controls(text);
    assert!(found.is_empty(), "{what} printed raw {found:?}: {text:?}");
}

#[test]
fn diff_and_commit_escape_vm_file_names_and_json_keeps_them_exact() {
    let (feather, base) = running_vm("escape-diff");
    let script: String = NAMES
        .iter()
        .map(|(octal, _)| format!("echo x > \"/data/$(printf '{octal}')\"; "))
        .collect();
    feather.sh("vm", &script);

    let listing = feather.ok(&["diff", "vm"]);
    assert_no_controls("diff", &listing);
    assert_eq!(
        listing.lines().filter(|l| l.contains("/data/")).count(),
        NAMES.len(),
        "one line per change, none split or hidden: {listing}"
    );
    assert!(
        listing.contains("\\x1b[2K") && listing.contains("\\u{202e}") && listing.contains("\\xff")
    );

    let json: serde_json::Value =
        serde_json::from_str(&feather.ok(&["diff", "vm", "--json"])).unwrap();
    let exact: BTreeSet<Vec<u8>> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|change| match change.get("path_bytes") {
            Some(bytes) => bytes
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect(),
            None => change["path"].as_str().unwrap().as_bytes().to_vec(),
        })
        .collect();
    for (_, bytes) in NAMES {
        let mut path = b"/data/".to_vec();
        path.extend_from_slice(bytes);
        assert!(
            exact.contains(&path),
            "--json has {:?} exactly",
            String::from_utf8_lossy(&path)
        );
    }

    let applied = feather.ok(&["commit", "vm"]);
    assert_no_controls("commit", &applied);
    for (_, bytes) in NAMES {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(bytes);
        assert!(
            base.file("data").join(name).exists(),
            "committed under its exact name"
        );
    }
}

#[test]
fn ps_escapes_a_vm_process_command_line() {
    let (feather, _base) = running_vm("escape-ps");
    feather.sh(
        "vm",
        "sh -c 'sleep 1000; true' \"$(printf 'evil\\033[2K\\033]0;pwned\\007\\342\\200\\256\\302\\233')\" \
         </dev/null >/dev/null 2>&1 &",
    );
    feather.eventually("the process runs", || {
        feather.ok(&["ps", "vm", "--json"]).contains("evil")
    });
    let table = feather.ok(&["ps", "vm"]);
    assert_no_controls("ps", &table);
    assert!(table.contains("evil\\x1b[2K"), "{table}");
}

#[test]
fn audit_escapes_what_a_vm_asked_for_and_json_keeps_it_exact() {
    let feather = Feather::new("escape-audit");
    let object = "/run/x\u{1b}[2K\u{9b}31m\u{202e}gnp.exe\nforged line";
    let entry = serde_json::json!({
        "time": "2026-01-01T00:00:00Z",
        "kind": "files",
        "source": "a",
        "target": "b",
        "object": object,
        "verdict": "allow",
        "outcome": "allowed",
        "detail": "opened \u{1b}]0;title\u{7}",
    });
    fs::write(feather.root.join("audit.log"), format!("{entry}\n")).unwrap();
    let shown = feather.ok(&["audit"]);
    assert_no_controls("audit", &shown);
    assert_eq!(shown.lines().count(), 1, "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(feather.ok(&["audit", "--json"]).trim()).unwrap();
    assert_eq!(json["object"], object);
}

#[test]
fn service_commands_escape_what_the_vm_prints_for_them() {
    // `feather service …` runs the service manager's client inside the VM, from the VM's own
    // view of feather-svcd's binary: a VM's root may replace it with anything. Here it answers
    // in the protocol with unit names and results holding escape sequences, a line meant to
    // hide the one before it, and a bidi override; and, asked for a status, with no protocol
    // at all.
    let feather = Feather::new("escape-service");
    let base = crate::support::ScratchBase::new("escape-service");
    let svcd = std::path::Path::new(Feather::bin()).with_file_name("feather-svcd");
    let client = base.file(svcd.to_str().unwrap().trim_start_matches('/'));
    fs::create_dir_all(client.parent().unwrap()).unwrap();
    let unit = r#"{"name":"nginx failed\n\u001b[1A\u001b[2Knginx","state":"active","sub":"running\u001b]0;title\u0007","since_secs":1,"restarts":0,"ready":true,"result":"bidi \u202e ok","not_applied":[]}"#;
    let answer = format!(r#"{{"line":"answer","response":{{"result":"list","units":[{unit}]}}}}"#);
    fs::write(
        &client,
        format!(
            "#!/bin/sh\ncase \"$4\" in\n*status*) printf 'nginx running\\033[2J\\n'; exit 0;;\nesac\n\
             printf '%s\\n' '{{\"line\":\"hello\",\"version\":1}}'\n\
             printf '%s\\n' '{answer}'\n\
             printf 'bidi \\342\\200\\256 and \\033]0;title\\007 on stderr\\n' >&2\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&client, fs::Permissions::from_mode(0o755)).unwrap();
    feather.start_over("vm", &base, &["--net", "none"]);

    let shown = feather.run(&["service", "ls", "vm"]);
    assert_no_controls("service ls (stdout)", &shown.stdout);
    assert_no_controls("service ls (stderr)", &shown.stderr);
    assert!(
        shown.stdout.contains("nginx failed") && shown.stdout.contains("\\x1b[1A"),
        "every name shown, the sequences visible: {shown:?}"
    );
    // --json is for programs: exact, as the client sent it (JSON's own escapes).
    let exact = feather.run(&["service", "ls", "vm", "--json"]);
    let units: serde_json::Value = serde_json::from_str(&exact.stdout).unwrap();
    assert_eq!(
        units[0]["name"], "nginx failed\n\x1b[1A\x1b[2Knginx",
        "{exact:?}"
    );
    // No protocol at all: refused, with what came named (escaped) and what was expected.
    let refused = feather.run(&["service", "status", "vm", "nginx"]);
    assert_no_controls("service status (stderr)", &refused.stderr);
    assert!(
        refused.stderr.contains("expected") && refused.stderr.contains("nginx running"),
        "{refused:?}"
    );
}

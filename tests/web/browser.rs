//! The page in a real browser: each test prepares its state root, serves it, and runs one tour
//! of tests/web/browser.py (Selenium with Debian's chromium and chromedriver) against it.
//! Screenshots go to `FEATHER_WEB_SCREENSHOTS` when it is set (docs/web.md's are made so),
//! otherwise nowhere.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::server::WebServer;
use crate::support::{Feather, HostDir, ScratchBase, TestPort};

/// Runs tour `name` of browser.py with `args` (the login URL added); panics with its report.
fn tour(name: &str, server: &WebServer, mut args: serde_json::Value) {
    args["url"] = json!(server.login_url);
    run_tour(name, args);
}

fn run_tour(name: &str, mut args: serde_json::Value) {
    if let Ok(folder) = std::env::var("FEATHER_WEB_SCREENSHOTS") {
        args["screenshots"] = json!(folder);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/web/browser.py");
    // Debian's own python, whose python3-selenium the set-up installs (a python earlier on
    // PATH, e.g. pyenv's, would not have it).
    let output = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(name)
        .arg(args.to_string())
        .output()
        .expect("python3 runs (sudo ./setup.sh installs python3-selenium and chromium)");
    assert!(
        output.status.success(),
        "browser tour {name}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_person_creates_starts_stops_and_removes_a_vm() {
    let feather = Feather::new("web-vms");
    let server = WebServer::start(&feather);
    tour("vms", &server, json!({}));
    assert_eq!(
        feather.ok(&["ls", "--json"]).trim(),
        "[]",
        "the VM the page made is gone again, and the refused one was never made"
    );
}

#[test]
fn at_phone_width_each_vm_is_a_card() {
    let feather = Feather::new("web-phone");
    feather.ok(&["create", "p1", "--net", "none"]);
    let server = WebServer::start(&feather);
    tour("phone", &server, json!({ "vm": "p1" }));
}

/// What a VM chose — a file name, a command line — is shown as text on the page and never
/// becomes markup; a chosen change is committed to the VM's (scratch) base, and a set-user-ID
/// one only after a confirmation that names it.
#[test]
fn changes_are_shown_as_text_and_a_chosen_one_is_committed() {
    let feather = Feather::new("web-changes");
    let base = ScratchBase::new("web-changes");
    feather.start_over("c1", &base, &["--net", "none"]);
    let hostile = "<img src=x onerror=document.title='pwned'>";
    feather.sh(
        "c1",
        &format!(
            "echo kept > /data/kept.txt; echo left > /data/left.txt; echo x > \"/data/{hostile}\"; \
             cp /bin/busybox /data/as-owner; chmod 4755 /data/as-owner; \
             (sh -c 'sleep 1000; true' '<script>document.title=1</script>' > /dev/null 2>&1 &)"
        ),
    );
    let server = WebServer::start(&feather);
    tour(
        "changes",
        &server,
        json!({ "vm": "c1", "keep": "/data/kept.txt", "hostile": format!("/data/{hostile}"),
                "privileged": "/data/as-owner" }),
    );
    assert_eq!(base.read("data/kept.txt").as_deref(), Some("kept\n"));
    let mode = fs::metadata(base.file("data/as-owner"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o7777,
        0o4755,
        "committed with its set-user-ID bit, as confirmed"
    );
    assert_eq!(
        base.read("data/left.txt"),
        None,
        "only the chosen change was committed"
    );
}

/// Chosen changes of a stopped VM are dropped from its page as `feather reset VM PATH…` drops
/// them, one that commit refuses (written at a host mount mounted after the start) among them,
/// and the others stay. Before, the page could only drop every change, and a change commit
/// refused had no checkbox.
#[test]
fn chosen_changes_are_dropped_from_the_page_and_the_others_kept() {
    let feather = Feather::new("web-drop");
    let mut base = ScratchBase::new("web-drop");
    base.write("data/keep", "base\n");
    feather.start_over("d1", &base, &["--net", "none"]);
    let late = base.mount_tmpfs("mnt/late");
    feather.sh(
        "d1",
        "echo vm > /mnt/late/x; echo gone > /data/dropped.txt; echo kept > /data/kept.txt",
    );
    feather.ok(&["stop", "d1"]);
    let server = WebServer::start(&feather);
    tour(
        "drop",
        &server,
        json!({ "vm": "d1", "refused": "/mnt/late/x", "dropped": "/data/dropped.txt",
                "keep": "/data/kept.txt" }),
    );
    let diff = feather.ok(&["diff", "d1"]);
    assert!(diff.contains("/data/kept.txt"), "{diff}");
    assert!(
        !diff.contains("/data/dropped.txt") && !diff.contains("/mnt/late/x"),
        "{diff}"
    );
    assert_eq!(crate::support::names_in(&late), Vec::<String>::new());
}

/// The Shuttle page: the rule in force with its file and line, the policy check naming it, and
/// a denied request appearing in the audit log while the page is open; `held` lines with a
/// badge of their own, under "only refusals" when they counted one.
#[test]
fn the_shuttle_page_explains_rules_and_follows_the_audit_log() {
    let feather = Feather::new("web-shuttle");
    let host = HostDir::new("web-shuttle");
    let open = host.feather_open();
    fs::create_dir_all(feather.root.join("policy.d")).unwrap();
    fs::write(
        feather.root.join("policy.d/10-web.policy"),
        "invoke viewer a b allow command=/bin/cat\n",
    )
    .unwrap();
    feather.ok(&["create", "a", "--net", "none"]);
    feather.ok(&["create", "b", "--net", "none"]);
    feather.ok(&["start", "a"]);
    // Two VMs' decisions past their pace, counted in `held` lines: one counted refusals, the
    // other none (only refusals shows the first alone).
    let held = |source: &str, counts: &str| {
        json!({
            "time": "2026-12-04T18:00:00Z", "kind": "invoke", "source": source, "target": "-",
            "object": "-", "verdict": "-", "outcome": "held",
            "detail": format!("5 decisions since 2026-12-04T17:59:59Z not written one by one \
                               (more than 10 a second after 200): {counts}"),
        })
        .to_string()
    };
    fs::write(
        feather.root.join("audit.log"),
        format!(
            "{}\n{}\n",
            held("loudvm", "3 allowed, 2 denied, 0 failed"),
            held("quietvm", "5 allowed, 0 denied, 0 failed")
        ),
    )
    .unwrap();
    let server = WebServer::start(&feather);
    let trigger = feather
        .command()
        .args(["exec", "a", "--", &open, "unlisted"])
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    let mut argv = vec![Feather::bin().to_owned()];
    argv.extend(trigger);
    tour(
        "shuttle",
        &server,
        json!({
            "rule_at": "10-web.policy:1",
            "object": "viewer",
            "source": "a",
            "target": "b",
            "trigger": argv,
        }),
    );
}

#[test]
fn the_page_says_when_it_lost_contact() {
    let feather = Feather::new("web-contact");
    let server = WebServer::start(&feather);
    tour(
        "lost_contact",
        &server,
        json!({ "server_pid": server.pid() }),
    );
}

/// Checkpoint and restore from the VM's page: the job's steps arrive live, the restored VM
/// runs its process on, and a restore of a running VM fails with the reason shown.
#[test]
fn a_vm_is_checkpointed_and_restored_from_its_page() {
    let feather = Feather::new("web-checkpoint");
    feather.ok(&["create", "k1", "--net", "none"]);
    feather.ok(&["start", "k1"]);
    feather.sh("k1", "(sleep 1000 > /dev/null 2>&1 &)");
    let server = WebServer::start(&feather);
    tour("checkpoint", &server, json!({ "vm": "k1" }));
    assert!(feather.ok(&["ps", "k1"]).contains("sleep 1000"));
}

/// A VM's services from its page: host units started, a unit's log followed as it writes
/// (its markup shown as text), a unit stopped.
#[test]
fn services_are_started_followed_and_stopped_from_the_page() {
    let feather = Feather::new("web-services");
    feather.ok(&["create", "s1"]);
    feather.ok(&["start", "s1"]);
    let unit = "[Service]\nExecStart=/bin/sh -c 'n=0; while :; do n=$$((n+1)); echo \"tick $$n <b>x</b>\"; sleep 0.2; done'\n";
    let written = feather
        .command()
        .args([
            "exec",
            "s1",
            "--",
            "sh",
            "-c",
            "mkdir -p /etc/systemd/system && cat > /etc/systemd/system/talker.service",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(unit.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(written.success());
    let server = WebServer::start(&feather);
    tour("services", &server, json!({ "vm": "s1" }));
    let list = feather.ok(&["service", "ls", "s1", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let state = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|unit| unit["name"] == name)
            .map(|unit| unit["state"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(state("talker.service").as_deref(), Some("active"), "{list}");
    assert_eq!(
        state("nginx.service").as_deref(),
        Some("inactive"),
        "{list}"
    );
}

/// `feather check ipc` from a VM's page: the matrix appears, every cell holds.
#[test]
fn the_ipc_matrix_of_a_vm_is_probed_from_its_page() {
    let feather = Feather::new("web-ipc");
    feather.ok(&["create", "i1"]);
    feather.ok(&["start", "i1"]);
    let server = WebServer::start(&feather);
    tour("ipc", &server, json!({ "vm": "i1" }));
}

/// A terminal into the VM from its page: a command typed runs in the VM, its exit status
/// comes back when the shell ends.
#[test]
fn a_shell_in_the_vm_runs_in_the_page() {
    let feather = Feather::new("web-terminal");
    feather.ok(&["create", "t1", "--net", "none"]);
    feather.ok(&["start", "t1"]);
    let server = WebServer::start(&feather);
    tour("terminal", &server, json!({ "vm": "t1" }));
}

/// An `ask` rule's question, for a VM started without a terminal, is answered from the page
/// while a web view is open; the audit log says where it was answered.
#[test]
fn an_ask_rule_is_answered_from_the_page() {
    let feather = Feather::new("web-ask");
    let host = HostDir::new("web-ask");
    let open = host.feather_open();
    fs::create_dir_all(feather.root.join("policy.d")).unwrap();
    fs::write(
        feather.root.join("policy.d/10-ask.policy"),
        "invoke viewer a b ask command=/bin/true\n",
    )
    .unwrap();
    feather.ok(&["create", "a", "--net", "none"]);
    feather.ok(&["create", "b", "--net", "none"]);
    feather.ok(&["start", "a"]);
    let server = WebServer::start(&feather);
    let trigger: Vec<String> = std::iter::once(Feather::bin().to_owned())
        .chain(
            feather
                .command()
                .args(["exec", "a", "--", &open, "viewer"])
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned()),
        )
        .collect();
    tour(
        "ask",
        &server,
        json!({ "object": "viewer", "trigger": trigger }),
    );
    let audit = fs::read_to_string(feather.root.join("audit.log")).unwrap();
    assert!(
        audit.contains("asked: allowed from the web view"),
        "the audit says where it was answered: {audit}"
    );
}

/// Review edges23 H2. Cookies do not know ports: when the admin looks at a VM's service
/// published on another port of 127.0.0.1, the browser sends it the web view's session
/// cookie. This server gets it — and with it, as the reviewer did (`/api/session` for the CSRF
/// token, then a commit into the VM's base), nothing: the session's key stays with the page.
/// The page itself still works after a reload and in a new tab.
#[test]
fn a_server_on_another_port_gets_the_cookie_but_not_the_session() {
    let feather = Feather::new("web-other-port");
    let base = ScratchBase::new("web-other-port");
    feather.start_over("c1", &base, &["--net", "none"]);
    feather.sh("c1", "echo stolen > /data/stolen.txt");
    let server = WebServer::start(&feather);
    let (other, caught) = cookie_catcher();
    tour("other_port", &server, json!({ "other": other }));
    let cookie = caught.join().unwrap();
    assert!(
        cookie.contains("feather_session="),
        "the browser sent the other port the session cookie: {cookie:?}"
    );

    let with_cookie = format!("Cookie: {cookie}");
    let session = server.request("GET", "/api/session", &[&with_cookie], "");
    let csrf = serde_json::from_str::<serde_json::Value>(session.json_body())
        .ok()
        .and_then(|answer| answer["csrf"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let commit = server.request(
        "POST",
        "/api/vms/c1/commit",
        &[
            &with_cookie,
            "Content-Type: application/json",
            &format!("X-Feather-Csrf: {csrf}"),
        ],
        r#"{"paths":["/data/stolen.txt"]}"#,
    );
    assert_eq!(
        (session.status, commit.status),
        (401, 401),
        "with the cookie alone: {} / {}",
        session.body,
        commit.body
    );
    assert_eq!(base.read("data/stolen.txt"), None, "nothing was committed");
}

/// A server on a port of its own of 127.0.0.1, as a VM's published service is: answers
/// `<h1>my app</h1>` to the first request it gets and hands over its `Cookie` header.
fn cookie_catcher() -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let caught = std::thread::spawn(move || {
        // A browser may open a connection it sends nothing on (a preconnect): each one is
        // read for a while only, and the listener goes with this thread.
        for stream in listener.incoming().take(10) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            if !head.starts_with("GET ") {
                continue;
            }
            let body = "<h1>my app</h1>";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return head
                .lines()
                .find_map(|line| {
                    line.strip_prefix("Cookie: ")
                        .or(line.strip_prefix("cookie: "))
                })
                .unwrap_or_default()
                .to_owned();
        }
        String::new()
    });
    (url, caught)
}

/// Review fixes23 W1: while `feather web` is not running, a local user listens on its address;
/// the browser visits that server, which leaves a service worker and an `/app.js` cached for a
/// year for the page's origin. The next `feather web` on that address (as a fixed `--listen`
/// gives it): its login link opens the real page — its own script runs (the live feed), the
/// squatter's does not, and no worker is left. Without the login's `Clear-Site-Data`, the
/// cached script ran in the page's origin (and the page never went live), and the worker stayed.
#[test]
fn what_a_server_that_squatted_the_address_left_in_the_browser_is_gone_at_login() {
    let feather = Feather::new("web-squat");
    let profile = HostDir::new("web-squat-profile");
    let port_held = TestPort::new();
    let port = port_held.port;
    let profile_path = profile.0.to_str().unwrap().to_owned();
    run_tour("squat", json!({ "port": port, "profile": profile_path }));
    let server = WebServer::start_at(&feather, &format!("127.0.0.1:{port}"));
    tour("after_squat", &server, json!({ "profile": profile_path }));
}

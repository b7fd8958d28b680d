//! Who may ask the web view anything: every rule is tried from outside, with requests a
//! browser on another site, a stolen link or a VM could make.

use std::process::Command;

use crate::server::{succeeds, WebServer};
use crate::support::{Feather, ScratchBase};

#[test]
fn nothing_answers_without_the_token_and_the_token_works_once() {
    let feather = Feather::new("web-token");
    let server = WebServer::start(&feather);
    for path in ["/", "/api/vms", "/api/events", "/api/session", "/app.js"] {
        let answer = server.request("GET", path, &[], "");
        assert_eq!(
            answer.status, 401,
            "{path} without a session: {}",
            answer.head
        );
    }
    let wrong = server.request("GET", "/login?token=0123abcd", &[], "");
    assert_eq!(wrong.status, 403);
    let forged = server.request("GET", "/api/vms", &["Cookie: feather_session=forged"], "");
    assert_eq!(forged.status, 401);

    let session = server.log_in();
    assert_eq!(
        server
            .request_as(&session, "GET", "/api/vms", &[], "")
            .status,
        200
    );
    let again = server.request("GET", &format!("/login?token={}", server.token()), &[], "");
    assert_eq!(again.status, 403, "a spent login link opens nothing");
}

#[test]
fn the_session_cookie_is_http_only_and_same_site_strict() {
    let feather = Feather::new("web-cookie");
    let server = WebServer::start(&feather);
    let answer = server.request("GET", &format!("/login?token={}", server.token()), &[], "");
    let cookie = answer.header("set-cookie").expect("a cookie");
    assert!(!cookie.contains(&server.token()[..8]), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let page = server.request(
        "GET",
        "/",
        &[&format!("Cookie: {}", cookie.split(';').next().unwrap())],
        "",
    );
    let policy = page.header("content-security-policy").expect("a CSP");
    assert!(
        policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
}

#[test]
fn a_cross_site_request_changes_nothing() {
    let feather = Feather::new("web-csrf");
    let server = WebServer::start(&feather);
    let session = server.log_in();
    let csrf = server.csrf(&session);
    let with_cookie = format!("Cookie: {}", session.cookie);
    let with_key = format!("X-Feather-Session: {}", session.key);
    let json = "Content-Type: application/json";
    let body = r#"{"name":"csrf1","net":"none"}"#;

    // What a form on another site can send: the cookie (if the browser sent it at all), no
    // header of ours.
    let form = server.request(
        "POST",
        "/api/vms",
        &[
            &with_cookie,
            "Content-Type: application/x-www-form-urlencoded",
            "Origin: http://attacker.example",
        ],
        "name=csrf1",
    );
    assert_eq!(
        form.status, 401,
        "a form cannot send the key: {}",
        form.body
    );
    let ours = format!("Origin: {}", session.origin);
    let no_token = server.request(
        "POST",
        "/api/vms",
        &[&with_cookie, &with_key, json, &ours],
        body,
    );
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    let with_token = format!("X-Feather-Csrf: {csrf}");
    // A client that sends no Origin is no browser's page: refused even with key and token.
    let no_origin = server.request(
        "POST",
        "/api/vms",
        &[&with_cookie, &with_key, json, &with_token],
        body,
    );
    assert_eq!(no_origin.status, 403, "{}", no_origin.body);
    let other_origin = server.request(
        "POST",
        "/api/vms",
        &[
            &with_cookie,
            &with_key,
            json,
            &format!("X-Feather-Csrf: {csrf}"),
            "Origin: http://attacker.example",
        ],
        body,
    );
    assert_eq!(other_origin.status, 403, "{}", other_origin.body);
    assert!(
        !feather.ok(&["ls"]).contains("csrf1"),
        "no refused request made a VM"
    );

    let ours = server.request(
        "POST",
        "/api/vms",
        &[&with_cookie, &with_key, json, &with_token, &ours],
        body,
    );
    assert_eq!(ours.status, 200, "{}", ours.body);
    assert!(feather.ok(&["ls"]).contains("csrf1"));
}

#[test]
fn a_rebound_host_name_is_refused() {
    let feather = Feather::new("web-host");
    let server = WebServer::start(&feather);
    let port = server.address.rsplit(':').next().unwrap().to_owned();
    let session = server.log_in();
    let rebound = server.request_as(
        &session,
        "GET",
        "/api/vms",
        &[&format!("Host: attacker.example:{port}")],
        "",
    );
    assert_eq!(rebound.status, 403);
    let login = server.request(
        "GET",
        "/login?token=x",
        &[&format!("Host: attacker.example:{port}")],
        "",
    );
    assert_eq!(login.status, 403);
}

#[test]
fn bad_input_is_refused_naming_what_is_wrong() {
    let feather = Feather::new("web-input");
    let server = WebServer::start(&feather);
    let session = server.log_in();
    let csrf = server.csrf(&session);
    let mut headers = session.headers();
    headers.push("Content-Type: application/json".to_owned());
    headers.push(format!("X-Feather-Csrf: {csrf}"));
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let script_name = server.request("POST", "/api/vms", &headers, r#"{"name":"<script>"}"#);
    assert_eq!(script_name.status, 400, "{}", script_name.body);
    assert!(
        script_name.body.contains("<script>") && script_name.body.contains("name"),
        "{}",
        script_name.body
    );
    assert_eq!(
        script_name.header("content-type"),
        Some("application/json"),
        "errors are JSON, never a page a browser would render"
    );
    let memory = server.request(
        "POST",
        "/api/vms",
        &headers,
        r#"{"name":"m1","memory":"lots"}"#,
    );
    assert_eq!(memory.status, 400);
    assert!(memory.body.contains("lots"), "{}", memory.body);
    let missing = server.request("POST", "/api/vms/nosuch/start", &headers, "");
    assert_eq!(missing.status, 404, "{}", missing.body);
    let unknown_field = server.request(
        "POST",
        "/api/vms",
        &headers,
        r#"{"name":"u1","memroy":"1G"}"#,
    );
    assert_eq!(unknown_field.status, 400, "{}", unknown_field.body);
    assert!(
        unknown_field.body.contains("memroy"),
        "{}",
        unknown_field.body
    );
    assert!(
        feather.ok(&["ls", "--json"]).trim() == "[]",
        "nothing was made"
    );
}

/// A reset drops every change only when asked by `{"all": true}`. A body that lost its paths
/// (none, no content type, malformed, an empty list, a misspelt field) is refused naming what
/// is wrong, and the VM keeps every change. Before, each of these dropped them all.
#[test]
fn a_reset_that_names_no_paths_drops_nothing() {
    let feather = Feather::new("web-reset");
    let base = ScratchBase::new("web-reset");
    feather.start_over("r1", &base, &["--net", "none"]);
    feather.sh("r1", "echo a > /tmp/a; echo b > /tmp/b");
    feather.ok(&["stop", "r1"]);
    let server = WebServer::start(&feather);
    let session = server.log_in();
    let mut plain = session.headers();
    plain.push(format!("X-Feather-Csrf: {}", server.csrf(&session)));
    let mut json = plain.clone();
    json.push("Content-Type: application/json".to_owned());
    let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
    let json: Vec<&str> = json.iter().map(String::as_str).collect();
    let reset =
        |headers: &[&str], body: &str| server.request("POST", "/api/vms/r1/reset", headers, body);
    for (headers, body, named) in [
        (&plain, r#"{"paths":["/tmp/a"]}"#, "Content-Type"),
        (&plain, "", "Content-Type"),
        (&json, "", "JSON"),
        (&json, r#"{"paths":["/tmp/a"]"#, "JSON"),
        (&json, "{}", "neither paths nor all"),
        (&json, r#"{"paths":[]}"#, "empty list"),
        (&json, r#"{"path":["/tmp/a"]}"#, "unknown field `path`"),
        (&json, r#"{"paths":["/tmp/a"],"all":true}"#, "both"),
    ] {
        let refused = reset(headers, body);
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        assert!(refused.body.contains(named), "{body}: {}", refused.body);
        let diff = feather.ok(&["diff", "r1"]);
        assert!(
            diff.contains("/tmp/a") && diff.contains("/tmp/b"),
            "{body} dropped changes: {diff}"
        );
    }
    let one = reset(&json, r#"{"paths":["/tmp/a"]}"#);
    assert_eq!(one.status, 200, "{}", one.body);
    let diff = feather.ok(&["diff", "r1"]);
    assert!(
        !diff.contains("/tmp/a") && diff.contains("/tmp/b"),
        "{diff}"
    );
    let every = reset(&json, r#"{"all":true}"#);
    assert_eq!(every.status, 200, "{}", every.body);
    assert!(!feather.ok(&["diff", "r1"]).contains("/tmp/b"));
}

#[test]
fn it_serves_only_on_loopback() {
    let feather = Feather::new("web-listen");
    let refused = feather.fails(&["web", "--listen", "0.0.0.0:0"]);
    assert!(
        refused.contains("loopback") && refused.contains("0.0.0.0"),
        "{refused}"
    );
}

/// A VM's own processes cannot reach the web view: it listens on the host's loopback, which
/// a VM with a network of its own does not share, and the VM's way to the host (its bridge's
/// address) is refused by the VM network policy.
#[test]
fn a_vm_cannot_reach_the_web_view() {
    let feather = Feather::new("web-vm");
    feather.ok(&["create", "v", "--net", "private"]);
    feather.ok(&["start", "v"]);
    let server = WebServer::start(&feather);
    let port = server.address.rsplit(':').next().unwrap().to_owned();
    let gateway = feather.inspect("v")["network"]["gateway"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            let address = feather.inspect("v")["network"]["address"]
                .as_str()?
                .to_owned();
            let mut octets: Vec<&str> = address.split('.').collect();
            octets[3] = "1";
            Some(octets.join("."))
        })
        .expect("the VM has an address");
    // The host itself reaches it (the probe works).
    assert!(succeeds(Command::new("curl").args([
        "-s",
        "-m",
        "3",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/login?token=x")
    ])));
    for host in ["127.0.0.1".to_owned(), gateway] {
        let url = format!("http://{host}:{port}/login?token=x");
        let reached = feather.run(&[
            "exec",
            "v",
            "--",
            "curl",
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            &url,
        ]);
        assert_ne!(reached.code, 0, "the VM reached {url}");
    }
}

/// Beyond loopback only over TLS, with a warning: in a network namespace of the test's own,
/// on an address other machines could reach, the server refuses to serve plain HTTP, serves
/// HTTPS with the given certificate, and its session cookie is `Secure`.
#[test]
fn beyond_loopback_it_serves_only_over_tls() {
    let feather = Feather::new("web-tls");
    let dir = crate::support::ScratchDir::new("web-tls");
    std::fs::create_dir_all(&dir.path).unwrap();
    let address = "10.213.7.1";
    let (cert, key) = (dir.path.join("cert.pem"), dir.path.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=feather-test"])
        .args(["-addext", &format!("subjectAltName=IP:{address}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // A namespace with an address of its own, gone with the server.
    let in_own_network = |web_args: &str| {
        let script = format!(
            "ip link set lo up && ip link add d0 type veth peer name d1 && ip addr add {address}/24 dev d0 \
             && ip link set d0 up && exec {} --root {} web --listen {address}:0 {web_args}",
            Feather::bin(),
            feather.root.display()
        );
        let mut command = Command::new("unshare");
        command.args(["--net", "sh", "-c", &script]);
        command
    };

    let refused = in_own_network("").output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("TLS") && stderr.contains(address),
        "{stderr}"
    );

    let tls_args = format!("--tls-cert {} --tls-key {}", cert.display(), key.display());
    let mut server = in_own_network(&tls_args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut output = std::io::BufReader::new(server.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut output, &mut first).unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .map(str::to_owned);
    let in_its_network = |args: &[&str]| {
        Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", server.id()))
            .arg("curl")
            .args(["-s", "-m", "5"])
            .args(args)
            .output()
            .unwrap()
    };
    let login = url.as_deref().map(|url| {
        in_its_network(&[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--cacert",
            cert.to_str().unwrap(),
            url,
        ])
    });
    let plain = url.as_deref().map(|url| {
        in_its_network(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url.replace("https://", "http://"),
        ])
    });
    let _ = server.kill();
    let _ = server.wait();
    let mut warning = String::new();
    let _ = std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut warning);

    let url = url.unwrap_or_else(|| panic!("an https URL: {first:?}"));
    assert!(url.starts_with(&format!("https://{address}:")), "{url}");
    let head = String::from_utf8_lossy(&login.unwrap().stdout).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/2 200"),
        "{head}"
    );
    let cookie = head
        .lines()
        .find(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_default();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{head}"
    );
    assert_ne!(
        String::from_utf8_lossy(&plain.unwrap().stdout),
        "200",
        "plain HTTP is not served"
    );
    assert!(
        warning.contains("warning") && warning.contains(address),
        "{warning}"
    );
}

/// A page of another site cannot open a terminal into a VM: the WebSocket's handshake (a GET,
/// which needs no CSRF token) must carry the page's own Origin, and the session's key as a
/// subprotocol (the cookie alone, which a server on another port of the host gets, opens none).
#[test]
fn a_terminal_opens_only_from_the_page_itself() {
    let feather = Feather::new("web-ws");
    feather.ok(&["create", "w", "--net", "none"]);
    feather.ok(&["start", "w"]);
    let server = WebServer::start(&feather);
    let session = server.log_in();
    let with_key = format!("feather-terminal, feather-session.{}", session.key);
    let handshake = |origin: Option<&str>, protocols: Option<&str>| {
        let mut headers = vec![
            format!("Cookie: {}", session.cookie),
            "Upgrade: websocket".to_owned(),
            "Connection: Upgrade".to_owned(),
            "Sec-WebSocket-Version: 13".to_owned(),
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
        ];
        if let Some(origin) = origin {
            headers.push(format!("Origin: {origin}"));
        }
        if let Some(protocols) = protocols {
            headers.push(format!("Sec-WebSocket-Protocol: {protocols}"));
        }
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        // The answer's head is enough: read what came within a moment.
        server.request_head("GET", "/api/vms/w/terminal", &headers)
    };
    let ours = Some(session.origin.as_str());
    let attacker = handshake(Some("http://attacker.example"), Some(&with_key));
    assert!(attacker.starts_with("HTTP/1.1 403"), "{attacker}");
    assert!(handshake(None, Some(&with_key)).starts_with("HTTP/1.1 403"));
    for protocols in [
        None,
        Some("feather-terminal"),
        Some("feather-session.guess"),
    ] {
        let keyless = handshake(ours, protocols);
        assert!(
            keyless.starts_with("HTTP/1.1 401"),
            "{protocols:?}: {keyless}"
        );
    }
    let opened = handshake(ours, Some(&with_key));
    assert!(opened.starts_with("HTTP/1.1 101"), "{opened}");
    assert!(
        opened
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: feather-terminal\r\n"),
        "the answer names the protocol asked for, never the key: {opened}"
    );
}

/// Review edges23 H2: cookies do not know ports, so the browser gives the session cookie to a
/// VM's service published on another port of 127.0.0.1. With the cookie alone — what that
/// server, or any local user it hands it to, has — no API request is answered: not the CSRF
/// token, not a read, not a change, even with a CSRF token and our Origin (both forgeable
/// outside a browser). Only the page's own files, which hold nothing, load with it.
#[test]
fn the_session_cookie_alone_opens_no_api_request() {
    let feather = Feather::new("web-cookie-only");
    let server = WebServer::start(&feather);
    let session = server.log_in();
    let csrf = server.csrf(&session);
    let cookie_only = format!("Cookie: {}", session.cookie);
    // Any path but the page's own files, a route not made yet too.
    for path in [
        "/api/session",
        "/api/vms",
        "/api/events",
        "/api/audit",
        "/no-such-file",
    ] {
        let answer = server.request("GET", path, &[&cookie_only], "");
        assert_eq!(answer.status, 401, "{path}: {}", answer.head);
        assert!(
            answer.body.contains("session key"),
            "{path}: {}",
            answer.body
        );
    }
    let wrong_key = server.request(
        "GET",
        "/api/session",
        &[&cookie_only, "X-Feather-Session: 0123abcd"],
        "",
    );
    assert_eq!(wrong_key.status, 401, "{}", wrong_key.body);
    let change = server.request(
        "POST",
        "/api/vms",
        &[
            &cookie_only,
            "Content-Type: application/json",
            &format!("X-Feather-Csrf: {csrf}"),
            &format!("Origin: {}", session.origin),
        ],
        r#"{"name":"stolen1","net":"none"}"#,
    );
    assert_eq!(change.status, 401, "{}", change.body);
    assert!(!feather.ok(&["ls"]).contains("stolen1"), "nothing was made");
    for path in ["/", "/app.js"] {
        let page = server.request("GET", path, &[&cookie_only], "");
        assert_eq!(page.status, 200, "{path}: {}", page.head);
    }
}

/// Review fixes23 W1–W4, from outside: what keeps a server that held the web view's address
/// before (or holds another name for it) out of the next session.
/// - W1: no answer may be cached, the page's included; the login clears what the origin left
///   in the browser and forbids workers; a login not opened by the browser itself as a window
///   (a service worker's fetch, a frame) is refused and does not spend the token.
/// - W3: the page has a process and a window of its own; every answer, errors too, is for
///   this origin only.
/// - W4: `localhost` (which may be `[::1]`, another listener) is not our address.
/// - W2: the page's paths pass on the cookie alone for reading only.
#[test]
fn no_answer_outlives_the_server_and_only_the_browsers_own_login_opens_a_session() {
    let feather = Feather::new("web-squat");
    let server = WebServer::start(&feather);
    let port = server.address.rsplit(':').next().unwrap().to_owned();
    let login = format!("/login?token={}", server.token());
    let by_a_worker = ["Sec-Fetch-Mode: same-origin", "Sec-Fetch-Dest: empty"];
    let preloaded = [
        "Sec-Fetch-Mode: navigate",
        "Sec-Fetch-Dest: document",
        "Service-Worker-Navigation-Preload: true",
    ];
    let framed = ["Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: iframe"];
    for headers in [&by_a_worker[..], &preloaded, &framed] {
        let refused = server.request("GET", &login, headers, "");
        assert_eq!(refused.status, 403, "{headers:?}: {}", refused.head);
        assert!(
            !refused.body.contains("feather-session"),
            "{}",
            refused.body
        );
    }
    let elsewhere = server.request("GET", &login, &[&format!("Host: localhost:{port}")], "");
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.head);

    let page = server.request(
        "GET",
        &login,
        &["Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: document"],
        "",
    );
    assert_eq!(page.status, 200, "the token is unspent: {}", page.head);
    assert_eq!(
        page.header("clear-site-data"),
        Some(r#""cache", "storage""#)
    );
    assert_eq!(
        page.header("cross-origin-opener-policy"),
        Some("same-origin")
    );
    assert_eq!(page.header("origin-agent-cluster"), Some("?1"));
    let policy = page.header("content-security-policy").expect("a CSP");
    assert!(policy.contains("worker-src 'none'"), "{policy}");
    assert!(
        page.body.contains(r#"src="/app.js" integrity="sha384-"#),
        "{}",
        page.body
    );

    let cookie = page
        .header("set-cookie")
        .and_then(|cookie| cookie.split(';').next())
        .unwrap()
        .to_owned();
    let cookie_only = format!("Cookie: {cookie}");
    let answers = [
        server.request("GET", "/", &[&cookie_only], ""),
        server.request("GET", "/app.js", &[&cookie_only], ""),
        server.request("GET", "/api/session", &[&cookie_only], ""),
        server.request("GET", "/no-such-file", &[], ""),
        server.request("GET", "/login?token=spent", &[], ""),
    ];
    for answer in &answers {
        assert_eq!(
            answer.header("cache-control"),
            Some("no-store"),
            "{}",
            answer.head
        );
        let corp = answer.header("cross-origin-resource-policy");
        assert_eq!(corp, Some("same-origin"), "{}", answer.head);
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        for path in ["/", "/app.js"] {
            let answer = server.request(method, path, &[&cookie_only], "");
            assert_eq!(answer.status, 401, "{method} {path}: {}", answer.head);
        }
    }
}

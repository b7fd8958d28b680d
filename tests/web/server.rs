//! A `feather web` of a test's own, and plain HTTP requests to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use crate::support::Feather;

/// `feather web` serving a test's state root on a free loopback port; ended (by its pid) on drop.
pub struct WebServer {
    child: Child,
    /// Its standard output, kept open for its life (it may print more).
    _output: BufReader<std::process::ChildStdout>,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// The one-time login URL it printed.
    pub login_url: String,
}

impl WebServer {
    pub fn start(feather: &Feather) -> WebServer {
        WebServer::start_at(feather, "127.0.0.1:0")
    }

    /// Serving on `listen` (`ADDR:PORT`).
    pub fn start_at(feather: &Feather, listen: &str) -> WebServer {
        let mut child = feather
            .command()
            .args(["web", "--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("feather web starts");
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        output.read_line(&mut first).unwrap();
        let login_url = first
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("feather web printed its URL: {first:?}"))
            .to_owned();
        let address = login_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        WebServer {
            child,
            _output: output,
            address,
            login_url,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The login URL's token.
    pub fn token(&self) -> &str {
        self.login_url.split("token=").nth(1).unwrap()
    }

    /// One request; `headers` as `Name: value` lines. The answer's status, headers and body.
    pub fn request(&self, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        let mut text = format!(
            "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("host:"))
        {
            text.push_str(&format!("Host: {}\r\n", self.address));
        }
        for header in headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.push_str(body);
        stream.write_all(text.as_bytes()).unwrap();
        // A server that refuses a request may close before reading its body: the reset that
        // follows its answer is no error of the answer.
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        let raw = String::from_utf8_lossy(&bytes).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        Answer {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    /// One request of the page of `session` (its cookie, key and Origin) with `extra` headers.
    pub fn request_as(
        &self,
        session: &Session,
        method: &str,
        path: &str,
        extra: &[&str],
        body: &str,
    ) -> Answer {
        let mut headers = session.headers();
        headers.extend(extra.iter().map(|header| header.to_string()));
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        self.request(method, path, &headers, body)
    }

    /// The status line and headers of one request's answer, without waiting for the
    /// connection to end (a WebSocket's stays open).
    pub fn request_head(&self, method: &str, path: &str, headers: &[&str]) -> String {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.address);
        for header in headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        stream.write_all(text.as_bytes()).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// Logs in with the printed token: the session's cookie (from `Set-Cookie`) and its key
    /// (from the page the login answers), as the browser and the page keep them.
    pub fn log_in(&self) -> Session {
        let answer = self.request("GET", &format!("/login?token={}", self.token()), &[], "");
        assert_eq!(answer.status, 200, "{}", answer.head);
        let cookie = answer
            .header("set-cookie")
            .and_then(|cookie| cookie.split(';').next())
            .expect("a session cookie")
            .to_owned();
        let key = answer
            .body
            .split(r#"<meta name="feather-session" content=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("the page carries the session's key: {}", answer.body))
            .to_owned();
        Session {
            cookie,
            key,
            origin: format!("http://{}", self.address),
        }
    }

    /// The session's CSRF token, as the page reads it.
    pub fn csrf(&self, session: &Session) -> String {
        let answer = self.request_as(session, "GET", "/api/session", &[], "");
        let session: serde_json::Value = serde_json::from_str(answer.json_body()).unwrap();
        session["csrf"].as_str().unwrap().to_owned()
    }
}

/// A logged-in session: the cookie (which the browser sends to every port of the host) and
/// the key (which only the page holds).
pub struct Session {
    /// `feather_session=…`
    pub cookie: String,
    pub key: String,
    /// The page's origin, which browsers send with every change.
    pub origin: String,
}

impl Session {
    /// What a request of the page carries: the cookie, the key and the page's Origin.
    pub fn headers(&self) -> Vec<String> {
        vec![
            format!("Cookie: {}", self.cookie),
            format!("X-Feather-Session: {}", self.key),
            format!("Origin: {}", self.origin),
        ]
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The body without chunked transfer framing, for the JSON answers (sent whole).
    pub fn json_body(&self) -> &str {
        let start = self.body.find(['{', '[']).unwrap_or(0);
        let end = self
            .body
            .rfind(['}', ']'])
            .map_or(self.body.len(), |i| i + 1);
        &self.body[start..end]
    }
}

/// Runs `command` and returns whether it succeeded (for probes that must fail).
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

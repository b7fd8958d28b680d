//! The page: one HTML file, its script and its style, embedded in the binary so that
//! `feather web` needs nothing beside it. The script puts everything it gets from the server
//! into the page as text (`textContent`), never as markup.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");
// xterm.js for the terminal, vendored (assets/vendor/README.md).
const XTERM: &str = include_str!("assets/vendor/xterm.js");
const XTERM_FIT: &str = include_str!("assets/vendor/addon-fit.js");
const XTERM_STYLE: &str = include_str!("assets/vendor/xterm.css");

/// The paths of the page's own files: a browser loads them (navigation, `<script>`, `<link>`)
/// without headers of ours, so the session's cookie alone gets them — they hold nothing a VM
/// could use. Every other path needs the session's key as well (a new route, by default).
pub const FILES: [&str; 6] = [
    "/",
    "/app.js",
    "/app.css",
    "/vendor/xterm.js",
    "/vendor/addon-fit.js",
    "/vendor/xterm.css",
];

/// No other site may frame the page or load scripts into it; it loads only its own files.
const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

pub async fn index() -> impl IntoResponse {
    (
        SECURITY_HEADERS,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX,
    )
}

/// The page as the login answers it: with the session's key for the script to keep
/// (`feather-session` meta element; the key is hex, nothing to escape).
pub fn logged_in(key: &str) -> impl IntoResponse {
    let page = INDEX.replacen(
        "<head>",
        &format!("<head>\n<meta name=\"feather-session\" content=\"{key}\">"),
        1,
    );
    (
        SECURITY_HEADERS,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
}

pub async fn script() -> impl IntoResponse {
    script_file(SCRIPT)
}

pub async fn style() -> impl IntoResponse {
    (
        SECURITY_HEADERS,
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE,
    )
}

pub async fn xterm() -> impl IntoResponse {
    script_file(XTERM)
}

pub async fn xterm_fit() -> impl IntoResponse {
    script_file(XTERM_FIT)
}

pub async fn xterm_style() -> impl IntoResponse {
    (
        SECURITY_HEADERS,
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        XTERM_STYLE,
    )
}

fn script_file(text: &'static str) -> impl IntoResponse {
    (
        SECURITY_HEADERS,
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        text,
    )
}

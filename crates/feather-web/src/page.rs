//! The page: one HTML file, its script and its style, embedded in the binary so that
//! `feather web` needs nothing beside it. The script puts everything it gets from the server
//! into the page as text (`textContent`), never as markup.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use base64::Engine;

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

/// What every answer of the server carries, the API's and its errors included: nothing is
/// kept in any cache (a page or a script a server that squatted this address before left in
/// the browser's cache would run in our origin, review fixes23 W1), no other origin loads it
/// as a subresource, and no type is guessed.
pub const EVERY_ANSWER: [(header::HeaderName, &str); 3] = [
    (header::CACHE_CONTROL, "no-store"),
    (
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

/// The page's own headers. No other site may frame the page or load scripts into it; it loads
/// only its own files and runs no worker (a service worker would outlive the page and answer
/// for it). It keeps no handle to a window that opened it nor that one to it, and asks for a
/// process of its own, apart from the VMs' pages on other ports of the same site (W3).
const SECURITY_HEADERS: [(header::HeaderName, &str); 5] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; worker-src 'none'; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'self'",
    ),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    ),
    (
        header::HeaderName::from_static("origin-agent-cluster"),
        "?1",
    ),
    (header::CACHE_CONTROL, "no-store"),
];

/// What the login answers beside the page: whatever this origin left in the browser before
/// (cached files, a service worker, storage — from a server that held this address while
/// `feather web` did not) is dropped. The browser does so on receiving the answer, before the
/// page's script runs and keeps the new key.
pub const CLEAR_SITE_DATA: (header::HeaderName, &str) = (
    header::HeaderName::from_static("clear-site-data"),
    "\"cache\", \"storage\"",
);

/// The page's files it names by `src=` or `href=`, with their text.
const SUBRESOURCES: [(&str, &str); 5] = [
    ("/vendor/xterm.css", XTERM_STYLE),
    ("/app.css", STYLE),
    ("/vendor/xterm.js", XTERM),
    ("/vendor/addon-fit.js", XTERM_FIT),
    ("/app.js", SCRIPT),
];

/// The page, each of its scripts and styles named with its hash (`integrity=`): the browser
/// runs no other text under that name, whether a cache or a service worker left by an earlier
/// holder of this address serves it (W1).
static PAGE: LazyLock<String> = LazyLock::new(|| {
    SUBRESOURCES
        .iter()
        .fold(INDEX.to_string(), |page, (path, text)| {
            let named = format!("=\"{path}\"");
            assert!(page.contains(&named), "index.html names {path}");
            page.replacen(
                &named,
                &format!("{named} integrity=\"{}\"", integrity(text)),
                1,
            )
        })
});

/// A file's Subresource Integrity value: `sha384-` and its hash in base64.
fn integrity(text: &str) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA384, text.as_bytes());
    format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    )
}

pub async fn index() -> impl IntoResponse {
    (
        SECURITY_HEADERS,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        PAGE.as_str(),
    )
}

/// The page as the login answers it: with the session's key for the script to keep
/// (`feather-session` meta element; the key is hex, nothing to escape), and what this origin
/// left in the browser cleared before the script keeps it ([`CLEAR_SITE_DATA`]).
pub fn logged_in(key: &str) -> impl IntoResponse {
    let page = PAGE.replacen(
        "<head>",
        &format!("<head>\n<meta name=\"feather-session\" content=\"{key}\">"),
        1,
    );
    (
        SECURITY_HEADERS,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            CLEAR_SITE_DATA,
        ],
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

#[cfg(test)]
mod tests {
    use super::*;

    /// W1: every script and style the page loads is named with the hash of our own file, so a
    /// copy a squatter of this address left in the cache (or a worker serves) does not run.
    #[test]
    fn the_page_names_each_script_and_style_by_its_hash() {
        let tags = PAGE
            .split('<')
            .filter(|tag| tag.starts_with("script") || tag.starts_with("link"))
            .collect::<Vec<_>>();
        assert_eq!(tags.len(), SUBRESOURCES.len(), "{tags:?}");
        for (path, text) in SUBRESOURCES {
            let tag = tags
                .iter()
                .find(|tag| tag.contains(&format!("=\"{path}\"")))
                .unwrap_or_else(|| panic!("a tag names {path}"));
            assert!(
                tag.contains(&format!("integrity=\"{}\"", integrity(text))),
                "{tag}"
            );
        }
        // The known hash of the empty string (SHA-384), to check the encoding itself.
        assert_eq!(
            integrity(""),
            "sha384-OLBgp1GsljhM2TJ+sbHjaiH9txEUvgdDTAzHv2P24donTt6/529l+9Ua0vFImLlb"
        );
    }
}

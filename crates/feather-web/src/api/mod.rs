//! The endpoints. Each reads a request, makes one library call — the call the command line
//! makes for the same thing — and answers JSON; the library's blocking work runs off the
//! server's threads.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio_stream::wrappers::{BroadcastStream, WatchStream};
use tokio_stream::{Stream, StreamExt};

use crate::auth::{key_in_protocols, RequestFacts, CSRF_HEADER, KEY_HEADER};
use crate::page;

mod moves;
mod services;
mod shared;
mod shuttle;
mod vms;

use moves::{checkpoint, migrate, restore};
use services::{service_action, service_events, service_logs};
pub use shared::Shared;
use shared::{host_of, Answer, ApiError, AppState};
use shuttle::{answer_ask, audit, policy, policy_check};
use vms::{changes, check_ipc, commit, create, remove, reset, start, stop, terminal, vm, vms};

pub fn router(shared: Arc<Shared>) -> Router {
    // The page's files (page::FILES) need the session's cookie, everything else its key too.
    let guarded = Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/app.css", get(page::style))
        .route("/vendor/xterm.js", get(page::xterm))
        .route("/vendor/addon-fit.js", get(page::xterm_fit))
        .route("/vendor/xterm.css", get(page::xterm_style))
        .route("/api/session", get(session))
        .route("/api/vms", get(vms).post(create))
        .route("/api/vms/{name}", get(vm).delete(remove))
        .route("/api/vms/{name}/changes", get(changes))
        .route("/api/vms/{name}/start", post(start))
        .route("/api/vms/{name}/stop", post(stop))
        .route("/api/vms/{name}/commit", post(commit))
        .route("/api/vms/{name}/reset", post(reset))
        .route("/api/vms/{name}/services", post(service_action))
        .route("/api/vms/{name}/services/events", get(service_events))
        .route("/api/vms/{name}/services/{unit}/logs", get(service_logs))
        .route("/api/vms/{name}/ipc", post(check_ipc))
        .route("/api/vms/{name}/terminal", get(terminal))
        .route("/api/vms/{name}/checkpoint", post(checkpoint))
        .route("/api/vms/{name}/restore", post(restore))
        .route("/api/vms/{name}/migrate", post(migrate))
        .route("/api/policy", get(policy))
        .route("/api/policy/check", get(policy_check))
        .route("/api/audit", get(audit))
        .route("/api/asks/{id}", post(answer_ask))
        .route("/api/events", get(events))
        .layer(middleware::from_fn_with_state(shared.clone(), guard));
    Router::new()
        .route("/login", get(login))
        .merge(guarded)
        .layer(middleware::map_response(every_answer))
        .with_state(shared)
}

/// The headers every answer carries, errors and the API's JSON included ([`page::EVERY_ANSWER`]).
async fn every_answer(mut response: Response) -> Response {
    for (name, value) in page::EVERY_ANSWER {
        response
            .headers_mut()
            .insert(name, header::HeaderValue::from_static(value));
    }
    response
}

/// Whether a request is one of the page's own files, which need the cookie alone: only a GET
/// or HEAD of one (a browser loads them so); anything else sent to their paths needs the key
/// too, like any other request (review fixes23 W2).
fn is_page_file(method: &Method, path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD) && page::FILES.contains(&path)
}

/// Whether the login was asked by the browser itself, opening the link in a window: not by a
/// script's `fetch` (Sec-Fetch-Mode `navigate` no script can set) nor a frame, and not through
/// a service worker's navigation preload — a worker that a server which held this address
/// before left behind would read the key out of the answer (review fixes23 W1). A client that
/// sends no fetch metadata (no browser does so) is taken at its word. A worker that hands on
/// the browser's own request (`fetch(event.request)`) keeps its mode and passes: against that,
/// only a port of its own at each run ([`crate::Options::DEFAULT_LISTEN`]).
fn is_window_navigation(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    !matches!(text("sec-fetch-mode"), Some(mode) if mode != "navigate")
        && !matches!(text("sec-fetch-dest"), Some(dest) if dest != "document")
        && headers.get("service-worker-navigation-preload").is_none()
}

async fn guard(State(shared): AppState, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let facts = RequestFacts {
        host: host_of(headers, request.uri()),
        cookies: text(header::COOKIE),
        origin: text(header::ORIGIN),
        csrf: text(header::HeaderName::from_static(CSRF_HEADER)),
        key: text(header::HeaderName::from_static(KEY_HEADER))
            .or_else(|| text(header::SEC_WEBSOCKET_PROTOCOL).and_then(key_in_protocols)),
        page_file: is_page_file(request.method(), request.uri().path()),
        changes_state: !matches!(*request.method(), Method::GET | Method::HEAD),
    };
    match shared.sessions.check(&facts) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let status = match refusal {
                crate::auth::Refusal::NoSession | crate::auth::Refusal::NoKey => {
                    StatusCode::UNAUTHORIZED
                }
                _ => StatusCode::FORBIDDEN,
            };
            ApiError::new(status, refusal.message()).into_response()
        }
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    token: String,
}

async fn login(
    State(shared): AppState,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<LoginQuery>,
) -> Response {
    let host = host_of(&headers, &uri);
    if !shared.sessions.is_our_host(host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            crate::auth::Refusal::ForeignHost.message(),
        )
        .into_response();
    }
    if !is_window_navigation(&headers) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the login link opens only as a page of its own: open it in the browser's address \
             bar (the token is not spent)",
        )
        .into_response();
    }
    match shared.sessions.log_in(&query.token) {
        // The key goes in the page's body, never in a cookie: the page keeps it where only
        // pages of this very origin (port included) read it.
        Ok(session) => (
            [(header::SET_COOKIE, shared.sessions.cookie(&session.id))],
            page::logged_in(&session.key),
        )
            .into_response(),
        Err(refusal) => ApiError::new(StatusCode::FORBIDDEN, refusal.message()).into_response(),
    }
}

async fn session(State(shared): AppState, headers: HeaderMap) -> Answer {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let csrf = shared
        .sessions
        .csrf_of(text(header::COOKIE.as_str()), text(KEY_HEADER))
        .map_err(|refusal| ApiError::new(StatusCode::UNAUTHORIZED, refusal.message()))?;
    Ok(Json(json!({
        "csrf": csrf,
        "root": shared.root.dir(),
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

/// The page's live feed: `vms` with the whole table when it changed, `audit` with each new
/// decision. A page that stops hearing from it says it lost contact.
async fn events(State(shared): AppState) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // The first value of a fresh gatherer is no table yet: only real tables are sent.
    let table = WatchStream::new(shared.live.table())
        .filter(|table| table.json != "null")
        .map(|table| Event::default().event("vms").data(table.json.clone()));
    let audit = BroadcastStream::new(shared.live.audit()).filter_map(|entry| {
        // A page too slow to keep up misses entries (it can reload the log); it never holds
        // up the others.
        entry
            .ok()
            .map(|json| Event::default().event("audit").data(json.as_str()))
    });
    let asks = WatchStream::new(shared.live.asks())
        .map(|json| Event::default().event("asks").data(json.as_str()));
    let jobs = BroadcastStream::new(shared.jobs.feed()).filter_map(|event| {
        event
            .ok()
            .map(|json| Event::default().event("job").data(json.as_str()))
    });
    let events = table.merge(audit).merge(jobs).merge(asks);
    Sse::new(events.map(Ok)).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// W2: the cookie-only exemption holds for reading the page's files, nothing else.
    #[test]
    fn only_reading_a_page_file_is_one() {
        assert!(is_page_file(&Method::GET, "/"));
        assert!(is_page_file(&Method::HEAD, "/app.js"));
        for method in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
        ] {
            assert!(!is_page_file(&method, "/"), "{method}");
            assert!(!is_page_file(&method, "/app.js"), "{method}");
        }
        assert!(!is_page_file(&Method::GET, "/api/session"));
    }

    /// W1: a service worker left at this origin cannot spend the login link itself — neither
    /// by fetching it nor through a navigation preload — and a frame cannot either.
    #[test]
    fn only_a_window_opening_the_link_logs_in() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, header::HeaderValue::from_static(value));
            }
            map
        };
        let window = [
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ];
        assert!(is_window_navigation(&headers(&window)));
        assert!(is_window_navigation(&headers(&[])));
        for refused in [
            [
                ("sec-fetch-mode", "same-origin"),
                ("sec-fetch-dest", "empty"),
            ],
            [("sec-fetch-mode", "cors"), ("sec-fetch-dest", "document")],
            [("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")],
        ] {
            assert!(!is_window_navigation(&headers(&refused)), "{refused:?}");
        }
        let mut preload = window.to_vec();
        preload.push(("service-worker-navigation-preload", "true"));
        assert!(!is_window_navigation(&headers(&preload)));
    }
}

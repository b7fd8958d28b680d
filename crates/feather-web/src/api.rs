//! The endpoints. Each reads a request, makes one library call — the call the command line
//! makes for the same thing — and answers JSON; the library's blocking work runs off the
//! server's threads.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use feather_core::error::causes;
use feather_core::{StateRoot, VmName};
use feather_shuttle::board::Board;
use feather_shuttle::policy::{policy_dirs, Policy};
use feather_shuttle::view::{self, Explanation, RuleRow};
use feather_shuttle::{Audit, Kind};
use feather_svc::manager::client_protocol::Ask;
use feather_svc::manager::protocol::{FreshState, Response as ManagerAnswer};
use feather_vm::error::VmError;
use feather_vm::options::CreateRequest;
use feather_vm::services::ServicesError;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::{BroadcastStream, WatchStream};
use tokio_stream::{Stream, StreamExt};

use crate::auth::{RequestFacts, Sessions, CSRF_HEADER};
use crate::jobs::{JobError, Jobs};
use crate::live::{read_table, Live};
use crate::page;

/// What every handler shares.
pub struct Shared {
    pub root: StateRoot,
    pub sessions: Sessions,
    pub live: Live,
    pub jobs: Jobs,
}

type AppState = State<Arc<Shared>>;

/// How long `stop` lets a VM's processes end before killing them (the command line's default).
const STOP_GRACE: Duration = Duration::from_secs(10);

pub fn router(shared: Arc<Shared>) -> Router {
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
        .with_state(shared)
}

/// An answer that is an error: its status and a message the page shows.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(error: &(dyn std::error::Error + 'static)) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, causes(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type Answer = Result<Json<Value>, ApiError>;

/// Runs a library call off the server's threads.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(call).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request's worker failed",
        )
    })?
}

fn vm_name(text: &str) -> Result<VmName, ApiError> {
    text.parse()
        .map_err(|e: feather_core::Error| ApiError::bad_request(&e))
}

/// A library error as an answer: a VM that does not exist is 404, anything else the library
/// refused (running, stopped, a conflict) 409, by the error's variant.
fn library<T>(result: feather_vm::error::Result<T>) -> Result<T, ApiError> {
    result.map_err(|e| {
        let status = match &e {
            VmError::Core(feather_core::Error::NotFound(_)) => StatusCode::NOT_FOUND,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, causes(&e))
    })
}

/// The host a request was sent to: its `Host` header, or under HTTP/2 its `:authority`.
fn host_of<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

async fn guard(State(shared): AppState, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let facts = RequestFacts {
        host: host_of(headers, request.uri()),
        cookies: text(header::COOKIE),
        origin: text(header::ORIGIN),
        csrf: headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()),
        changes_state: !matches!(*request.method(), Method::GET | Method::HEAD),
    };
    match shared.sessions.check(&facts) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let status = match refusal {
                crate::auth::Refusal::NoSession => StatusCode::UNAUTHORIZED,
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
    match shared.sessions.log_in(&query.token) {
        Ok(id) => (
            [(header::SET_COOKIE, shared.sessions.cookie(&id))],
            Redirect::to("/"),
        )
            .into_response(),
        Err(refusal) => ApiError::new(StatusCode::FORBIDDEN, refusal.message()).into_response(),
    }
}

async fn session(State(shared): AppState, headers: HeaderMap) -> Answer {
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let csrf = shared
        .sessions
        .csrf_of(cookies)
        .map_err(|refusal| ApiError::new(StatusCode::UNAUTHORIZED, refusal.message()))?;
    Ok(Json(json!({
        "csrf": csrf,
        "root": shared.root.dir(),
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

async fn vms(State(shared): AppState) -> Result<Response, ApiError> {
    let json = blocking(move || Ok(read_table(&shared.root))).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// A new VM: `{"name": …}`, the create options as the command line takes them, and
/// `services` (host units it starts whenever it starts) with `fresh_state`, as `feather create
/// --service … [--fresh-state]` (an unknown field is refused by name: a typo never silently
/// does nothing).
async fn create(
    State(shared): AppState,
    Json(mut new): Json<serde_json::Map<String, Value>>,
) -> Answer {
    let name = match new.remove("name") {
        Some(Value::String(name)) => vm_name(&name)?,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a new VM needs a name",
            ))
        }
    };
    let services: Vec<String> = match new.remove("services") {
        Some(list) => serde_json::from_value(list).map_err(|e| ApiError::bad_request(&e))?,
        None => Vec::new(),
    };
    let fresh_state = matches!(new.remove("fresh_state"), Some(Value::Bool(true)));
    let request: CreateRequest =
        serde_json::from_value(Value::Object(new)).map_err(|e| ApiError::bad_request(&e))?;
    let options = request.options().map_err(|e| ApiError::bad_request(&e))?;
    blocking(move || {
        let base = options.base.clone().unwrap_or_else(|| "/".into());
        let services = feather_vm::services::check_installed(&base, &services)
            .map_err(|e| ApiError::bad_request(&e))?;
        library(feather_vm::lifecycle::create(&shared.root, &name, &options))?;
        feather_vm::services::configure(&shared.root, &name, services, fresh_state)
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, causes(&e)))?;
        Ok(Json(json!({ "created": name.to_string() })))
    })
    .await
}

async fn vm(State(shared): AppState, Path(name): Path<String>) -> Answer {
    let name = vm_name(&name)?;
    blocking(move || {
        let inspection = library(feather_vm::inspect::inspect(&shared.root, &name))?;
        // A stopped VM has no processes to list.
        let processes = feather_vm::inspect::processes(&shared.root, &name).unwrap_or_default();
        Ok(Json(json!({ "vm": inspection, "processes": processes })))
    })
    .await
}

async fn changes(State(shared): AppState, Path(name): Path<String>) -> Answer {
    let name = vm_name(&name)?;
    blocking(move || {
        let changes = library(feather_vm::commit::changes(&shared.root, &name))?;
        Ok(Json(json!({ "changes": changes })))
    })
    .await
}

/// Starts the VM and the services it was created with, as `feather start` does.
async fn start(State(shared): AppState, Path(name): Path<String>) -> Answer {
    let name = vm_name(&name)?;
    blocking(move || {
        let units = feather_vm::services::start(&shared.root, &name).map_err(|e| {
            let status = match &e {
                ServicesError::Core(feather_core::Error::NotFound(_))
                | ServicesError::Vm(VmError::Core(feather_core::Error::NotFound(_))) => {
                    StatusCode::NOT_FOUND
                }
                _ => StatusCode::CONFLICT,
            };
            ApiError::new(status, causes(&e))
        })?;
        let failed: Vec<&str> = feather_vm::services::failures(&units, &[])
            .iter()
            .map(|unit| unit.name.as_str())
            .collect();
        if !failed.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "VM {name} started, but not these services: {}",
                    failed.join(", ")
                ),
            ));
        }
        Ok(Json(
            json!({ "started": name.to_string(), "services": units }),
        ))
    })
    .await
}

async fn stop(State(shared): AppState, Path(name): Path<String>) -> Answer {
    let name = vm_name(&name)?;
    blocking(move || {
        let outcome = library(feather_vm::lifecycle::stop(&shared.root, &name, STOP_GRACE))?;
        Ok(Json(
            json!({ "stopped": name.to_string(), "outcome": outcome }),
        ))
    })
    .await
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove(
    State(shared): AppState,
    Path(name): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Answer {
    let name = vm_name(&name)?;
    blocking(move || {
        library(feather_vm::lifecycle::remove(
            &shared.root,
            &name,
            query.force,
        ))?;
        Ok(Json(json!({ "removed": name.to_string() })))
    })
    .await
}

#[derive(Deserialize)]
struct CommitRequest {
    #[serde(default)]
    paths: Vec<PathBuf>,
    #[serde(default)]
    force: bool,
}

async fn commit(
    State(shared): AppState,
    Path(name): Path<String>,
    Json(request): Json<CommitRequest>,
) -> Answer {
    let name = vm_name(&name)?;
    blocking(move || {
        let applied = library(feather_vm::commit::commit(
            &shared.root,
            &name,
            &request.paths,
            request.force,
        ))?;
        Ok(Json(json!({ "applied": applied })))
    })
    .await
}

async fn reset(State(shared): AppState, Path(name): Path<String>) -> Answer {
    let name = vm_name(&name)?;
    blocking(move || {
        library(feather_vm::commit::reset(&shared.root, &name))?;
        Ok(Json(json!({ "reset": name.to_string() })))
    })
    .await
}

/// What `feather service start|stop|restart|reload VM UNIT…` does, from the page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceAction {
    action: String,
    units: Vec<String>,
}

async fn service_action(
    State(shared): AppState,
    Path(name): Path<String>,
    Json(request): Json<ServiceAction>,
) -> Answer {
    let name = vm_name(&name)?;
    let units = request.units;
    let ask = match request.action.as_str() {
        "start" => Ask::Start {
            units,
            fresh_state: FreshState::No,
        },
        "stop" => Ask::Stop { units },
        "restart" => Ask::Restart { units },
        "reload" => Ask::Reload { units },
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown service action {other:?} (start, stop, restart or reload)"),
            ))
        }
    };
    blocking(move || {
        let answer = feather_vm::services::call(&shared.root, &name, &ask)
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, causes(&e)))?;
        let ManagerAnswer::Done {
            units,
            reload_failed,
        } = answer
        else {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "the service manager answered something else",
            ));
        };
        let failed: Vec<&str> = feather_vm::services::failures(&units, &reload_failed)
            .iter()
            .map(|unit| unit.name.as_str())
            .collect();
        if !failed.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("in VM {name}, these failed: {}", failed.join(", ")),
            ));
        }
        Ok(Json(json!({ "services": units })))
    })
    .await
}

/// A VM's services, pushed as they change while its page is open.
async fn service_events(
    State(shared): AppState,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let name = vm_name(&name)?;
    let services = WatchStream::new(shared.live.services(&name))
        .filter(|json| !json.is_empty())
        .map(|json| Ok(Event::default().event("services").data(json.as_str())));
    Ok(Sse::new(services).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default = "LogQuery::default_lines")]
    lines: usize,
}

impl LogQuery {
    fn default_lines() -> usize {
        100
    }
}

/// A unit's log, its last lines then what it writes, as `service logs -f` follows it. The
/// follower ends at the first line after the page went away.
async fn service_logs(
    State(shared): AppState,
    Path((name, unit)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let name = vm_name(&name)?;
    let (lines, received) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::task::spawn_blocking(move || {
        let mut send = |line: &[u8]| {
            let text = String::from_utf8_lossy(line);
            lines
                .blocking_send(Event::default().event("line").data(text))
                .is_ok()
        };
        if let Err(e) =
            feather_vm::services::logs(&shared.root, &name, &unit, query.lines, true, &mut send)
        {
            let _ = lines.blocking_send(Event::default().event("failed").data(causes(&e)));
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(received).map(Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A terminal into the VM over a WebSocket (see [`crate::terminal`]). The handshake must come
/// from our page: its Origin is checked, since a GET needs no CSRF token.
async fn terminal(
    State(shared): AppState,
    Path(name): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !shared.sessions.is_our_origin(origin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            crate::auth::Refusal::CrossSite.message(),
        ));
    }
    let name = vm_name(&name)?;
    let root = shared.root.clone();
    Ok(upgrade.on_upgrade(move |socket| crate::terminal::relay(root, name, socket)))
}

/// `feather check ipc VM`, as a job: every IPC channel probed across the VM's boundary and
/// inside it. Its result is the matrix with each cell judged by the probe's own rules.
async fn check_ipc(State(shared): AppState, Path(name): Path<String>) -> Answer {
    let name = vm_name(&name)?;
    let agent = feather_ipcprobe::run::agent_program()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, causes(&e)))?;
    if !agent.exists() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "the IPC probe's agent {} is missing; install {} beside feather",
                agent.display(),
                feather_ipcprobe::run::AGENT_PROGRAM
            ),
        ));
    }
    let setup = feather_ipcprobe::run::ProbeSetup {
        agent,
        root: Some(shared.root.dir().to_owned()),
        vm: Some(name.to_string()),
        container: None,
        label: None,
    };
    start_job(&shared, name.as_str(), "check ipc", move |_, _, report| {
        report(feather_vm::checkpoint::Progress::Phase(
            "probing every IPC channel",
        ));
        Ok(judged(&feather_ipcprobe::run::run(&setup)?))
    })
}

/// The matrix as the page shows it: each cell with whether it holds and whether it leaks.
fn judged(matrix: &feather_ipcprobe::matrix::Matrix) -> Value {
    let rows: Vec<Value> = matrix
        .rows
        .iter()
        .map(|row| {
            let cells: Vec<Value> = row
                .cells
                .iter()
                .map(|cell| {
                    json!({
                        "direction": cell.direction.label(),
                        "outcome": cell.outcome,
                        "expect": cell.expect,
                        "rule": cell.rule,
                        "holds": cell.holds(),
                        "leak": cell.is_leak(),
                    })
                })
                .collect();
            json!({ "channel": row.channel, "group": row.group, "by_design": row.by_design, "cells": cells })
        })
        .collect();
    json!({ "matrix": { "rows": rows, "notes": matrix.notes, "failures": matrix.failures().len() } })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointRequest {
    #[serde(default)]
    leave_running: bool,
}

/// Starts `work` as the job `action` on VM `name`; the answer names the job the page follows.
fn start_job(
    shared: &Shared,
    name: &str,
    action: &'static str,
    work: impl FnOnce(&StateRoot, &VmName, crate::jobs::Report<'_>) -> Result<Value, JobError>
        + Send
        + 'static,
) -> Answer {
    let name = vm_name(name)?;
    let root = shared.root.clone();
    let job = shared.jobs.start(name.to_string(), action, move |report| {
        work(&root, &name, report)
    });
    Ok(Json(json!({ "job": job })))
}

/// `feather checkpoint`, as a job whose steps the page follows.
async fn checkpoint(
    State(shared): AppState,
    Path(name): Path<String>,
    Json(request): Json<CheckpointRequest>,
) -> Answer {
    start_job(&shared, &name, "checkpoint", move |root, name, report| {
        let images =
            feather_vm::checkpoint::checkpoint(root, name, request.leave_running, None, report)?;
        Ok(json!({ "images": images }))
    })
}

/// `feather restore`, as a job.
async fn restore(State(shared): AppState, Path(name): Path<String>) -> Answer {
    start_job(&shared, &name, "restore", |root, name, report| {
        report(feather_vm::checkpoint::Progress::Phase(
            "restoring the VM's processes",
        ));
        feather_vm::checkpoint::restore(root, name, None)?;
        Ok(json!({}))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateRequest {
    /// `ADDR:PORT` of the receiving host's `feather serve`.
    to: String,
    /// The token both hosts share.
    token: String,
}

/// `feather migrate`, as a job.
async fn migrate(
    State(shared): AppState,
    Path(name): Path<String>,
    Json(request): Json<MigrateRequest>,
) -> Answer {
    start_job(&shared, &name, "migrate", move |root, name, report| {
        let mode = feather_vm::migration::choose_mode(None)?;
        let moved =
            feather_vm::migration::migrate(root, name, &request.to, &request.token, mode, report)?;
        // bytes, frozen_ms, mode and the pages moved before and after the resume.
        Ok(serde_json::to_value(&moved)?)
    })
}

async fn policy(State(shared): AppState) -> Answer {
    blocking(move || {
        let policy = Policy::load(shared.root.dir()).map_err(|e| ApiError::bad_request(&e))?;
        let rules: Vec<RuleRow> = policy.rules().iter().map(RuleRow::from).collect();
        Ok(Json(
            json!({ "rules": rules, "dirs": policy_dirs(shared.root.dir()) }),
        ))
    })
    .await
}

#[derive(Deserialize)]
struct CheckQuery {
    kind: String,
    #[serde(default)]
    object: String,
    source: String,
    target: String,
}

async fn policy_check(State(shared): AppState, Query(query): Query<CheckQuery>) -> Answer {
    blocking(move || {
        let policy = Policy::load(shared.root.dir()).map_err(|e| ApiError::bad_request(&e))?;
        let kind = Kind::parse(&query.kind).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown kind {:?} (use ipc, invoke or files)", query.kind),
            )
        })?;
        let party =
            |word: &str| view::party(&shared.root, word).map_err(|e| ApiError::bad_request(&e));
        let request = feather_shuttle::Request {
            kind,
            object: query.object,
            source: party(&query.source)?,
            target: party(&query.target)?,
        };
        let (decision, consulted) = policy.explain(&request);
        Ok(Json(json!(Explanation::new(&decision, &consulted))))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AskAnswer {
    allow: bool,
}

/// Answers a question of an `ask` rule waiting on the board (the first answer counts: the
/// terminal's or this one).
async fn answer_ask(
    State(shared): AppState,
    Path(id): Path<String>,
    Json(answer): Json<AskAnswer>,
) -> Answer {
    blocking(move || {
        Board::of(shared.root.dir())
            .answer(&id, answer.allow)
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, causes(&e)))?;
        Ok(Json(json!({ "answered": id, "allow": answer.allow })))
    })
    .await
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default = "AuditQuery::default_lines")]
    lines: usize,
}

impl AuditQuery {
    fn default_lines() -> usize {
        200
    }
}

async fn audit(State(shared): AppState, Query(query): Query<AuditQuery>) -> Answer {
    blocking(move || {
        let entries = Audit::new(shared.root.dir())
            .entries()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, causes(&e)))?;
        let last = &entries[entries.len().saturating_sub(query.lines)..];
        Ok(Json(json!({ "entries": last })))
    })
    .await
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

//! A VM's own endpoints: the table, create, start, stop, remove, its changes on disk with
//! commit and reset, its terminal and its IPC matrix.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use feather_core::error::causes;
use feather_vm::error::VmError;
use feather_vm::options::CreateRequest;
use feather_vm::services::ServicesError;
use serde::Deserialize;
use serde_json::{json, Value};

use super::shared::{blocking, host_of, library, start_job, vm_name, Answer, ApiError, AppState};
use crate::auth::TERMINAL_PROTOCOL;
use crate::live::read_table;

/// How long `stop` lets a VM's processes end before killing them (the command line's default).
const STOP_GRACE: Duration = Duration::from_secs(10);

pub(super) async fn vms(State(shared): AppState) -> Result<Response, ApiError> {
    let json = blocking(move || Ok(read_table(&shared.root))).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// A new VM: `{"name": …}`, the create options as the command line takes them, and
/// `services` (host units it starts whenever it starts) with `fresh_state`, as `feather create
/// --service … [--fresh-state]` (an unknown field is refused by name: a typo never silently
/// does nothing).
pub(super) async fn create(
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

pub(super) async fn vm(State(shared): AppState, Path(name): Path<String>) -> Answer {
    let name = vm_name(&name)?;
    blocking(move || {
        let inspection = library(feather_vm::inspect::inspect(&shared.root, &name))?;
        // A stopped VM has no processes to list.
        let processes = feather_vm::inspect::processes(&shared.root, &name).unwrap_or_default();
        Ok(Json(json!({ "vm": inspection, "processes": processes })))
    })
    .await
}

pub(super) async fn changes(State(shared): AppState, Path(name): Path<String>) -> Answer {
    let name = vm_name(&name)?;
    blocking(move || {
        let changes = library(feather_vm::commit::changes(&shared.root, &name))?;
        Ok(Json(json!({ "changes": changes })))
    })
    .await
}

/// Starts the VM and the services it was created with, as `feather start` does.
pub(super) async fn start(State(shared): AppState, Path(name): Path<String>) -> Answer {
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

pub(super) async fn stop(State(shared): AppState, Path(name): Path<String>) -> Answer {
    let name = vm_name(&name)?;
    blocking(move || {
        let outcome = library(feather_vm::lifecycle::stop(&shared.root, &name, STOP_GRACE))?;
        Ok(Json(
            json!({ "stopped": name.to_string(), "outcome": outcome.to_string() }),
        ))
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

pub(super) async fn remove(
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
pub(super) struct CommitRequest {
    #[serde(default)]
    paths: Vec<PathBuf>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    keep_privileges: bool,
}

pub(super) async fn commit(
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
            feather_vm::commit::Consent {
                force: request.force,
                keep_privileges: request.keep_privileges,
            },
        ))?;
        Ok(Json(json!({ "applied": applied })))
    })
    .await
}

/// What a reset drops: `{"paths": [...]}` (some changes) or `{"all": true}` (every change).
/// Each must be asked for by name, so that a body that lost its paths (a typo, an empty
/// list, no content type) is refused instead of dropping every change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResetRequest {
    #[serde(default)]
    paths: Option<Vec<PathBuf>>,
    #[serde(default)]
    all: bool,
}

/// The changes a [`ResetRequest`] names.
enum ResetScope {
    Every,
    Paths(Vec<PathBuf>),
}

impl ResetRequest {
    fn scope(self) -> Result<ResetScope, ApiError> {
        let refused = |what: &str| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "a reset {what}: send {{\"paths\": [\"/a/path\", …]}} to drop those \
                     changes, or {{\"all\": true}} to drop every change"
                ),
            )
        };
        match (self.paths, self.all) {
            (Some(_), true) => Err(refused("names both paths and all")),
            (Some(paths), false) if paths.is_empty() => {
                Err(refused("names an empty list of paths"))
            }
            (Some(paths), false) => Ok(ResetScope::Paths(paths)),
            (None, true) => Ok(ResetScope::Every),
            (None, false) => Err(refused("names neither paths nor all")),
        }
    }
}

/// Drops the VM's changes at `paths` (as `feather reset VM PATH…`), or every change with
/// `all` (as `feather reset VM`). Any other body (none, no JSON content type, malformed, an
/// unknown field) is refused with 400 and drops nothing.
pub(super) async fn reset(
    State(shared): AppState,
    Path(name): Path<String>,
    request: Result<Json<ResetRequest>, JsonRejection>,
) -> Answer {
    let name = vm_name(&name)?;
    let Json(request) = request.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "a reset needs a JSON body (Content-Type: application/json) naming \
                 {{\"paths\": [...]}} or {{\"all\": true}}: {}",
                rejection.body_text()
            ),
        )
    })?;
    let scope = request.scope()?;
    blocking(move || {
        let paths = match scope {
            ResetScope::Every => {
                library(feather_vm::commit::reset(&shared.root, &name))?;
                Vec::new()
            }
            ResetScope::Paths(paths) => {
                library(feather_vm::commit::reset_paths(&shared.root, &name, &paths))?;
                paths
            }
        };
        Ok(Json(json!({ "reset": name.to_string(), "paths": paths })))
    })
    .await
}

/// A terminal into the VM over a WebSocket (see [`crate::terminal`]). The handshake must come
/// from our page: its Origin is checked, since a GET needs no CSRF token (the session's key,
/// one of its subprotocols, the guard checked). The page asks for [`TERMINAL_PROTOCOL`]
/// beside the key's, and a browser closes a socket whose answer names none it asked for.
pub(super) async fn terminal(
    State(shared): AppState,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !shared
        .sessions
        .is_our_origin(origin, host_of(&headers, &uri))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            crate::auth::Refusal::CrossSite.message(),
        ));
    }
    let name = vm_name(&name)?;
    let root = shared.root.clone();
    Ok(upgrade
        .protocols([TERMINAL_PROTOCOL])
        .on_upgrade(move |socket| crate::terminal::relay(root, name, socket)))
}

/// `feather check ipc VM`, as a job: every IPC channel probed across the VM's boundary and
/// inside it. Its result is the matrix with each cell judged by the probe's own rules.
pub(super) async fn check_ipc(State(shared): AppState, Path(name): Path<String>) -> Answer {
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

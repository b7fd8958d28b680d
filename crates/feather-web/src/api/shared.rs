//! What every endpoint shares: the server's state, the error answer, and running a library
//! call off the server's threads.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use feather_core::error::causes;
use feather_core::{StateRoot, VmName};
use feather_vm::error::VmError;
use serde_json::{json, Value};

use crate::auth::Sessions;
use crate::jobs::{JobError, Jobs};
use crate::live::Live;

/// What every handler shares.
pub struct Shared {
    pub root: StateRoot,
    pub sessions: Sessions,
    pub live: Live,
    pub jobs: Jobs,
}

pub(super) type AppState = State<Arc<Shared>>;

/// An answer that is an error: its status and a message the page shows.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(error: &(dyn std::error::Error + 'static)) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, causes(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub(super) type Answer = Result<Json<Value>, ApiError>;

/// Runs a library call off the server's threads.
pub(super) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(call).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request's worker failed",
        )
    })?
}

pub(super) fn vm_name(text: &str) -> Result<VmName, ApiError> {
    text.parse()
        .map_err(|e: feather_core::Error| ApiError::bad_request(&e))
}

/// A library error as an answer: a VM that does not exist is 404, anything else the library
/// refused (running, stopped, a conflict) 409, by the error's variant.
pub(super) fn library<T>(result: feather_vm::error::Result<T>) -> Result<T, ApiError> {
    result.map_err(|e| {
        let status = match &e {
            VmError::Core(feather_core::Error::NotFound(_)) => StatusCode::NOT_FOUND,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, causes(&e))
    })
}

/// Starts `work` as the job `action` on VM `name`; the answer names the job the page follows.
pub(super) fn start_job(
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

/// The host a request was sent to: its `Host` header, or under HTTP/2 its `:authority`.
pub(super) fn host_of<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

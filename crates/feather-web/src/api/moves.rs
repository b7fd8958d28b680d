//! Checkpoint, restore and migrate: each a job whose progress the page follows.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::shared::{start_job, Answer, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckpointRequest {
    #[serde(default)]
    leave_running: bool,
}

/// `feather checkpoint`, as a job whose steps the page follows.
pub(super) async fn checkpoint(
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
pub(super) async fn restore(State(shared): AppState, Path(name): Path<String>) -> Answer {
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
pub(super) struct MigrateRequest {
    /// `ADDR:PORT` of the receiving host's `feather serve`.
    to: String,
    /// The token both hosts share.
    token: String,
}

/// `feather migrate`, as a job.
pub(super) async fn migrate(
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

//! Shuttle: the rules in force, which rule decides a request, the audit log, and answers to
//! pending asks.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use feather_core::error::causes;
use feather_shuttle::board::Board;
use feather_shuttle::policy::{policy_dirs, Policy};
use feather_shuttle::view::{self, Explanation, RuleRow};
use feather_shuttle::{Audit, Kind};
use serde::Deserialize;
use serde_json::json;

use super::shared::{blocking, Answer, ApiError, AppState};

pub(super) async fn policy(State(shared): AppState) -> Answer {
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
pub(super) struct CheckQuery {
    kind: String,
    #[serde(default)]
    object: String,
    source: String,
    target: String,
}

pub(super) async fn policy_check(
    State(shared): AppState,
    Query(query): Query<CheckQuery>,
) -> Answer {
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
pub(super) struct AskAnswer {
    allow: bool,
}

/// Answers a question of an `ask` rule waiting on the board (the first answer counts: the
/// terminal's or this one).
pub(super) async fn answer_ask(
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
pub(super) struct AuditQuery {
    #[serde(default = "AuditQuery::default_lines")]
    lines: usize,
}

impl AuditQuery {
    fn default_lines() -> usize {
        200
    }
}

pub(super) async fn audit(State(shared): AppState, Query(query): Query<AuditQuery>) -> Answer {
    blocking(move || {
        let entries = Audit::new(shared.root.dir())
            .entries()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, causes(&e)))?;
        let last = &entries[entries.len().saturating_sub(query.lines)..];
        Ok(Json(json!({ "entries": last })))
    })
    .await
}

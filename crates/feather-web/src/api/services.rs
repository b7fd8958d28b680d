//! The services of a VM: start, stop, restart, reload, their live states and logs.

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use feather_core::error::causes;
use feather_svc::manager::client_protocol::Ask;
use feather_svc::manager::protocol::{FreshState, Response as ManagerAnswer};
use serde::Deserialize;
use serde_json::json;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};

use super::shared::{blocking, vm_name, Answer, ApiError, AppState};

/// What `feather service start|stop|restart|reload VM UNIT…` does, from the page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceAction {
    action: String,
    units: Vec<String>,
}

pub(super) async fn service_action(
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
pub(super) async fn service_events(
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
pub(super) struct LogQuery {
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
pub(super) async fn service_logs(
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

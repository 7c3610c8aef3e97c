//! The local HTTP API: health, readiness, the status of every instance, and the
//! details and recent events of one. Every error is JSON `{"error": "…"}`.

use crate::events::{EventEntry, EventLog};
use crate::status::{DesiredInfo, InstanceStatus, StatusBoard};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How many recent events `/v1/instances/{name}` shows.
const INSTANCE_EVENTS: usize = 50;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub node_id: Arc<str>,
    pub started_at: u64,
    pub board: StatusBoard,
    pub events: Arc<EventLog>,
}

/// `GET /v1/status`.
#[derive(Debug, serde::Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub agent_version: &'static str,
    pub agent_started_at: u64,
    /// Same as `/readyz`.
    pub ready: bool,
    pub desired: DesiredInfo,
    pub instances: Vec<InstanceStatus>,
}

/// `GET /v1/instances/{name}`.
#[derive(serde::Serialize)]
struct InstanceDetail {
    #[serde(flatten)]
    status: InstanceStatus,
    events: Vec<EventEntry>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/v1/instances/{name}", get(instance))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.board.ready() {
        return Json(serde_json::json!({ "ready": true })).into_response();
    }
    let desired = state.board.desired();
    let reason = if desired.generation.is_none() {
        match desired.last_rejection {
            Some(r) => format!(
                "no desired state accepted yet; last rejection: {}",
                r.problems.join("; ")
            ),
            None => "no desired state accepted yet".to_string(),
        }
    } else {
        let pending: Vec<String> = state
            .board
            .snapshot()
            .into_iter()
            .filter(|s| !s.reconciled)
            .map(|s| s.name)
            .collect();
        format!("not reconciled yet: {}", pending.join(", "))
    };
    error(StatusCode::SERVICE_UNAVAILABLE, reason)
}

async fn status(State(state): State<ApiState>) -> Json<NodeStatus> {
    Json(NodeStatus {
        node_id: state.node_id.to_string(),
        agent_version: crate::VERSION,
        agent_started_at: state.started_at,
        ready: state.board.ready(),
        desired: state.board.desired(),
        instances: state.board.snapshot(),
    })
}

async fn instance(State(state): State<ApiState>, name: Result<Path<String>, PathRejection>) -> Response {
    let name = match name {
        Ok(Path(name)) => name,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    match state.board.get(&name) {
        Some(status) => Json(InstanceDetail {
            events: state.events.for_instance(&name, INSTANCE_EVENTS),
            status,
        })
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no instance named {name:?} on this node"),
        ),
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

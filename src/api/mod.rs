//! The local HTTP API: health, readiness, the status of every instance, the details
//! and recent events of one, and (standalone, with a bearer token) a desired-state
//! document to apply. Every error is JSON `{"error": "…"}`.

mod backups;

pub use backups::{BYTES_HEADER, SHA256_HEADER};

use crate::desired::{DocumentSource, MAX_DOCUMENT_BYTES};
use crate::events::{EventEntry, EventLog};
use crate::monitoring::observations::{instance_views, HostSample, InstanceView, Observations};
use crate::sources::{Offer, Rejected, SourcesHandle};
use crate::status::{ControllerInfo, DesiredInfo, StatusBoard};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
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
    pub observations: Observations,
    /// Behind `/metrics`.
    pub metrics: Arc<crate::monitoring::metrics::Endpoint>,
    pub events: Arc<EventLog>,
    pub sources: SourcesHandle,
    /// The bearer token of mutating calls; without one they are refused.
    pub token: TokenSlot,
    /// No controller is configured: the local API may set the desired state.
    pub standalone: bool,
    /// `backup_dir` of agent.toml: the backups served.
    pub backup_dir: std::path::PathBuf,
    /// The engine builds: agent.toml's, and the store's.
    pub builds: Arc<crate::artifacts::Builds>,
}

/// The API's bearer token, from `[api] token_file` (read at start and on SIGHUP).
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

/// The token in use (none: mutating calls are refused), replaced when SIGHUP reads a
/// good new one.
pub type TokenSlot = crate::slot::Slot<Option<Token>>;

impl Token {
    /// Reads the token (a secret file: see `secret_file`), at least 16 characters.
    pub fn read(path: &std::path::Path) -> anyhow::Result<Token> {
        let text = crate::secret_file::read(path, "the API token file ([api] token_file)")?;
        let token = text.trim();
        if token.len() < 16 {
            anyhow::bail!(
                "the API token in {} is shorter than 16 characters; use a long random token",
                path.display()
            );
        }
        Ok(Token(Arc::from(token.as_bytes())))
    }

    /// Whether an `Authorization` header carries this token, compared in constant
    /// time.
    fn admits(&self, header: Option<&axum::http::HeaderValue>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(given) = header.and_then(|h| h.as_bytes().strip_prefix(b"Bearer ")) else {
            return false;
        };
        given.ct_eq(&self.0).into()
    }
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
    /// How the conversation with the controller goes; `null` when standalone.
    pub controller: Option<ControllerInfo>,
    /// The last reload of the secret files (SIGHUP); `null` until then.
    pub secret_files: Option<crate::status::SecretFilesInfo>,
    /// The last host sample, preflight findings and the agent's own process; `null`
    /// until the first sample.
    pub host: Option<Arc<HostSample>>,
    /// The engine builds this host has: agent.toml's paths and the store's builds.
    pub engines: Vec<crate::artifacts::EngineBuild>,
    pub instances: Vec<InstanceView>,
}

/// `GET /v1/instances/{name}`.
#[derive(serde::Serialize)]
struct InstanceDetail {
    #[serde(flatten)]
    view: InstanceView,
    /// Every INFO field the engine does not map, as the server wrote it.
    info_raw: Option<std::collections::BTreeMap<String, String>>,
    events: Vec<EventEntry>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/instances/{name}", get(instance))
        .route("/v1/instances/{name}/backups", get(backups::list_backups))
        .route("/v1/instances/{name}/backups/{id}", get(backups::get_backup))
        .route(
            "/v1/desired-state",
            axum::routing::put(put_desired_state).layer(axum::extract::DefaultBodyLimit::max(MAX_DOCUMENT_BYTES)),
        )
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

/// `GET /metrics`: the last samples, Prometheus text.
async fn metrics(State(state): State<ApiState>) -> Response {
    let text = state.metrics.render();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::monitoring::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

async fn status(State(state): State<ApiState>) -> Json<NodeStatus> {
    Json(NodeStatus {
        node_id: state.node_id.to_string(),
        agent_version: crate::VERSION,
        agent_started_at: state.started_at,
        ready: state.board.ready(),
        desired: state.board.desired(),
        controller: state.board.controller(),
        secret_files: state.board.secret_files(),
        host: state.observations.host(),
        engines: state.builds.list(),
        instances: instance_views(&state.board, &state.observations),
    })
}

/// The most events `/v1/events` returns at once.
pub const MAX_EVENTS_PAGE: usize = 1000;

/// `GET /v1/events?instance=<name>&after=<seq>&limit=<n>`: the newest kept events, or
/// the next ones after `seq`, oldest first.
async fn events(State(state): State<ApiState>, uri: Uri) -> Response {
    let mut instance = None;
    let mut after = 0u64;
    let mut limit = 100usize;
    for pair in uri.query().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |why: &str| {
            error(
                StatusCode::BAD_REQUEST,
                format!("query parameter {key}: {value:?} {why}"),
            )
        };
        match key {
            "instance" if crate::spec::valid_name(value) => instance = Some(value.to_string()),
            "instance" => return bad("is not an instance name"),
            "after" => match value.parse() {
                Ok(n) => after = n,
                Err(_) => return bad("is not a number"),
            },
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_EVENTS_PAGE).contains(&n) => limit = n,
                _ => return bad("is not a number from 1 to 1000"),
            },
            _ => return bad("is not a parameter of /v1/events (instance, after, limit)"),
        }
    }
    Json(serde_json::json!({
        "agent_started_at": state.started_at,
        "events": state.events.query(instance.as_deref(), after, limit),
    }))
    .into_response()
}

async fn instance(State(state): State<ApiState>, name: Result<Path<String>, PathRejection>) -> Response {
    let name = match name {
        Ok(Path(name)) => name,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    match state.board.get(&name) {
        Some(status) => {
            let metrics = state.observations.instance(&name);
            Json(InstanceDetail {
                info_raw: metrics.as_ref().and_then(|m| m.info_raw()),
                events: state.events.query(Some(&name), 0, INSTANCE_EVENTS),
                view: InstanceView { status, metrics },
            })
        }
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no instance named {name:?} on this node"),
        ),
    }
}

/// `PUT /v1/desired-state`: a desired-state document, in standalone mode.
async fn put_desired_state(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied.into_response();
    }
    if !state.standalone {
        return error(
            StatusCode::CONFLICT,
            "a controller is configured: it alone sets the desired state of this node",
        );
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    match state.sources.offer(body, DocumentSource::Local).await {
        Ok(Offer::Accepted { generation, revision }) => Json(serde_json::json!({
            "accepted": true, "generation": generation, "revision": revision,
        }))
        .into_response(),
        Ok(Offer::Unchanged { generation }) => Json(serde_json::json!({
            "accepted": true, "generation": generation, "unchanged": true,
        }))
        .into_response(),
        Ok(Offer::Rejected(rejected)) | Err(rejected) => match rejected {
            Rejected::Stale { .. } => error(StatusCode::CONFLICT, rejected.to_string()),
            Rejected::Invalid(problems) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(serde_json::json!({
                    "error": "the document is invalid; nothing changed",
                    "problems": problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })),
            )
                .into_response(),
            Rejected::NotPersisted(reason) => error(StatusCode::SERVICE_UNAVAILABLE, reason),
        },
    }
}

/// Admits a request that carries the API token; refuses every request when no token
/// is configured.
fn authorize(state: &ApiState, headers: &axum::http::HeaderMap) -> Result<(), Refusal> {
    let Some(token) = state.token.get() else {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "this call needs the API token, and no [api] token_file is configured".into(),
        ));
    };
    if !token.admits(headers.get(axum::http::header::AUTHORIZATION)) {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        ));
    }
    Ok(())
}

/// A request refused, before it is turned into its JSON response.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_token_is_a_private_file_of_at_least_16_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = Token::read(&path).err().unwrap().to_string();
        assert!(error.contains("is shorter than 16 characters"), "{error}");
        std::fs::write(&path, "  a-long-random-token-0123  \n").unwrap();
        let token = Token::read(&path).unwrap();
        let header = axum::http::HeaderValue::from_static("Bearer a-long-random-token-0123");
        assert!(token.admits(Some(&header)));
        assert!(!token.admits(Some(&axum::http::HeaderValue::from_static("Bearer a-long"))));
        assert!(!token.admits(None));
        let slot = TokenSlot::new(None);
        assert!(slot.get().is_none());
        slot.replace(Some(token));
        assert!(slot.get().is_some());
    }
}

//! A fake control centre that speaks the controller protocol of `openapi.yaml`
//! (`GET /v1/nodes/{node_id}/desired-state` as a long poll, `POST
//! /v1/nodes/{node_id}/report` with a gzip body), for integration tests that drive an
//! agent through it.
//!
//! The server runs on its own single-threaded tokio runtime on a background thread, so
//! synchronous tests can use it. Everything it receives is recorded behind a mutex and
//! can be inspected from the test thread at any time; documents and faults can be
//! changed at any time. `stop()` (and `Drop`) closes the listener and every connection,
//! held long polls included; `restart()` serves again on the same address with the same
//! recorded state but, like a real controller that restarts, without the reports it
//! held: the agent's next change report is answered 409 and a full one follows.
//!
//! It keeps each node's view as a controller would: a full report replaces it, a
//! change report (`"kind": "delta"`) is applied on it when its `base_seq` is the last
//! report applied, and answered 409 otherwise. [`Controller::reports`] returns that
//! view after each accepted report.
//!
//! Order of checks for every call: the bearer token (401), then an injected fault, then
//! the request itself (400/404/405/413/415). Handlers never panic on bad input.
//!
//! It speaks plain HTTP ([`Controller::start`]) or HTTPS ([`Controller::start_tls`]),
//! optionally requiring a client certificate signed by a given CA (mutual TLS). Both
//! are one code path: a listener that hands axum either the TCP connection or, after a
//! TLS handshake in its own task, the TLS stream over it. A failed handshake (an
//! untrusted or missing client certificate, a client that rejects the server's
//! certificate, plain HTTP on the TLS port, a client silent for
//! [`TLS_HANDSHAKE_TIMEOUT`]) drops the connection and is recorded
//! ([`Controller::tls_failures`]); nothing of it reaches the handlers.

use axum::body::{Body, Bytes};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::serve::IncomingStream;
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use std::collections::HashMap;
use std::future::IntoFuture;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::fs::PermissionsExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Context;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The size of the body of [`Fault::Huge`]: 10.5 MiB, more than the agent's 10 MiB limit.
pub const HUGE_BODY_BYTES: usize = 10 * 1024 * 1024 + 512 * 1024;

/// The generation (and ETag) of the body of [`Fault::Huge`].
pub const HUGE_GENERATION: u64 = 1_000_000_000;

/// The body of [`Fault::Garbage`].
pub const GARBAGE_BODY: &str = "<html><body>502 Bad Gateway</body></html>\n{{{ this is not JSON";

/// How long a TLS client may take to complete its handshake before it is dropped (and
/// recorded as a TLS failure).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The token the test controller accepts, the node it serves, and the agent's API token.
pub const TOKEN: &str = "controller-token-0123456789";
pub const NODE: &str = "test-node";
pub const API_TOKEN: &str = "local-api-token-0123456789";

/// A harness whose agent is controlled by `controller` (fast intervals for tests).
pub fn controlled(controller: &Controller) -> super::Harness {
    let h = super::Harness::new();
    let token = h.path().join("controller.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let api_token = h.path().join("api.token");
    std::fs::write(&api_token, format!("{API_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&api_token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = std::fs::read_to_string(h.config_path())
        .unwrap()
        .replace("[api]\n", "[api]\ntoken_file = \"api.token\"\n");
    config.push_str(&format!(
        "\n[controller]\nurl = \"{}\"\ntoken_file = \"controller.token\"\nreport_interval = \"300ms\"\npoll_wait = \"500ms\"\n",
        controller.url()
    ));
    std::fs::write(h.config_path(), config).unwrap();
    h
}

/// A desired-state document of Redis 7.0 instances: name, port and extra spec fields.
pub fn document(generation: u64, instances: &[(&str, u16, Value)]) -> Value {
    let specs: Vec<Value> = instances
        .iter()
        .map(|(name, port, extra)| {
            let mut spec = serde_json::json!({"name": name, "port": port, "version": "7.0"});
            if let Value::Object(extra) = extra {
                spec.as_object_mut().unwrap().extend(extra.clone());
            }
            spec
        })
        .collect();
    serde_json::json!({"generation": generation, "instances": specs})
}

/// The largest request body the controller reads, and the largest decompressed report.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
const MAX_REPORT_BYTES: u64 = 256 * 1024 * 1024;

/// Misbehaviour to inject. Faults are taken when a request arrives (after the token
/// check); a long poll already held is not affected by a later change of fault.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// Answer every call with this status code (e.g. 500, 503, 401, 403) and a JSON
    /// error body (no body for 1xx/204/304).
    Status(u16),
    /// 503 with `Retry-After: <seconds>`: a controller shedding load.
    Busy(u64),
    /// Accept the request and never answer (until the client gives up or the
    /// controller stops).
    Hang,
    /// 200 with a body that is not JSON ([`GARBAGE_BODY`]), `Content-Type:
    /// application/json`, no ETag.
    Garbage,
    /// 200 with a [`HUGE_BODY_BYTES`] JSON object (a valid document with generation
    /// [`HUGE_GENERATION`] padded by an extra field) and its ETag.
    Huge,
    /// 200 with exactly this body, and an ETag from its top-level "generation" if it is
    /// JSON with one.
    Body(String),
}

/// One `GET …/desired-state` as received.
#[derive(Debug, Clone)]
pub struct PollRecord {
    /// When it arrived.
    pub at: Instant,
    /// The raw `If-None-Match` header, if any (e.g. `"41"` with the quotes).
    pub if_none_match: Option<String>,
    /// The raw `wait` query parameter, if any.
    pub wait: Option<String>,
    /// Whether it carried the right bearer token.
    pub authorized: bool,
    /// The status answered; `None` while held, or if it was never answered (the client
    /// gave up, [`Fault::Hang`], or the controller stopped).
    pub status: Option<u16>,
    /// When it was answered.
    pub answered_at: Option<Instant>,
    /// Every request header (lossy UTF-8), in order.
    pub headers: Vec<(String, String)>,
    /// The certificate (DER) the client authenticated with, over TLS with a client CA.
    pub client_cert: Option<Vec<u8>>,
}

/// One `POST …/report` as received.
#[derive(Debug, Clone)]
pub struct ReportRecord {
    /// When it arrived.
    pub at: Instant,
    /// The size of the body as sent (compressed).
    pub compressed_size: usize,
    /// The raw `Content-Encoding` header, if any.
    pub content_encoding: Option<String>,
    /// The decoded JSON, if the body could be decoded (also for refused reports).
    pub body: Option<Value>,
    /// Why the body could not be decoded.
    pub decode_error: Option<String>,
    /// Whether it carried the right bearer token.
    pub authorized: bool,
    /// The status answered (`None`: never answered). 2xx means accepted.
    pub status: Option<u16>,
    /// The node's view after this report was applied (accepted reports only): the
    /// report's own fields, and the instances, node facts, desired state and host of
    /// the reports before where a change report leaves them out.
    pub view: Option<Value>,
    /// Every request header (lossy UTF-8), in order.
    pub headers: Vec<(String, String)>,
    /// The certificate (DER) the client authenticated with, over TLS with a client CA.
    pub client_cert: Option<Vec<u8>>,
}

impl ReportRecord {
    /// Whether the controller accepted it (2xx).
    pub fn accepted(&self) -> bool {
        matches!(self.status, Some(200..=299))
    }
}

/// A call the controller refused on its own account (not an injected fault): 400, 401,
/// 404, 405, 413, 415.
#[derive(Debug, Clone)]
pub struct RejectionRecord {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub reason: String,
}

/// A TLS handshake that failed: the connection was dropped without a request.
#[derive(Debug, Clone)]
pub struct TlsFailureRecord {
    pub at: Instant,
    /// The client's address.
    pub peer: SocketAddr,
    /// What went wrong, e.g. "peer sent no certificates" or "received fatal alert:
    /// UnknownCA".
    pub error: String,
}

/// The node's current document: its ETag token (the generation, unquoted) and body.
#[derive(Debug, Clone)]
struct StoredDocument {
    etag: Option<String>,
    body: Bytes,
}

#[derive(Default)]
struct NodeState {
    document: Option<StoredDocument>,
    polls: Vec<PollRecord>,
    held: usize,
    reports: Vec<ReportRecord>,
    /// The view built from the reports applied so far (`None`: the next change report
    /// is answered 409).
    view: Option<Value>,
}

#[derive(Default)]
struct Recorded {
    token: String,
    poll_fault: Fault,
    report_fault: Fault,
    nodes: HashMap<String, NodeState>,
    rejections: Vec<RejectionRecord>,
    requests: u64,
    tls_handshakes: u64,
    tls_failures: Vec<TlsFailureRecord>,
}

impl Recorded {
    fn node(&mut self, node: &str) -> &mut NodeState {
        self.nodes.entry(node.to_string()).or_default()
    }
}

struct Shared {
    state: Mutex<Recorded>,
    /// Bumped on every change of a document: held polls re-check theirs.
    changed: tokio::sync::watch::Sender<u64>,
    /// HTTP bytes received and sent on every connection (inside TLS, if any).
    wire_received: std::sync::atomic::AtomicU64,
    wire_sent: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The state, also after a panic elsewhere (a poisoned lock must not hide the
    /// original failure).
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_polls(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// The server while it runs.
struct Running {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How the controller speaks.
#[derive(Clone)]
enum Transport {
    Plain,
    Tls(Arc<rustls::ServerConfig>),
}

/// A fake control centre. See the module documentation.
pub struct Controller {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
    transport: Transport,
    client_auth: bool,
}

impl Controller {
    /// Starts a controller on 127.0.0.1 on a free port (outside the ephemeral range, so
    /// that `restart()` can bind it again) that accepts `Bearer <token>`.
    pub fn start(token: &str) -> Controller {
        let mut last_error = None;
        for _ in 0..20 {
            let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
            match Controller::try_start_on(addr, token) {
                Ok(c) => return c,
                Err(e) => last_error = Some(e),
            }
        }
        panic!("cannot start the fake controller: {last_error:?}");
    }

    /// Starts a controller on `addr` (port 0 picks one); panics if it cannot bind.
    pub fn start_on(addr: SocketAddr, token: &str) -> Controller {
        Controller::try_start_on(addr, token)
            .unwrap_or_else(|e| panic!("cannot start the fake controller on {addr}: {e}"))
    }

    /// Starts a controller on `addr`, or the error of binding it.
    pub fn try_start_on(addr: SocketAddr, token: &str) -> std::io::Result<Controller> {
        Controller::try_start_with(addr, token, Transport::Plain, false)
    }

    /// Starts an HTTPS controller on `addr` with the server certificate chain
    /// `server_cert_pem` (the server's certificate first) and its key `server_key_pem`.
    /// With `client_ca_pem` (one or more CA certificates), every client must present a
    /// certificate signed by one of them, or its handshake fails. Port 0 picks a free
    /// port outside the ephemeral range, as [`Controller::start`] does (so that
    /// `restart()` can bind it again). Panics if the PEM is not a certificate and key,
    /// or if it cannot bind.
    pub fn start_tls(
        addr: SocketAddr,
        token: &str,
        server_cert_pem: &str,
        server_key_pem: &str,
        client_ca_pem: Option<&str>,
    ) -> Controller {
        let config = tls_server_config(server_cert_pem, server_key_pem, client_ca_pem)
            .unwrap_or_else(|e| panic!("cannot configure TLS for the fake controller: {e}"));
        let transport = Transport::Tls(config);
        let client_auth = client_ca_pem.is_some();
        if addr.port() != 0 {
            return Controller::try_start_with(addr, token, transport, client_auth)
                .unwrap_or_else(|e| panic!("cannot start the fake controller on {addr}: {e}"));
        }
        let mut last_error = None;
        for _ in 0..20 {
            let addr = SocketAddr::new(addr.ip(), super::free_port());
            match Controller::try_start_with(addr, token, transport.clone(), client_auth) {
                Ok(c) => return c,
                Err(e) => last_error = Some(e),
            }
        }
        panic!("cannot start the fake controller on {}: {last_error:?}", addr.ip());
    }

    fn try_start_with(
        addr: SocketAddr,
        token: &str,
        transport: Transport,
        client_auth: bool,
    ) -> std::io::Result<Controller> {
        let shared = Arc::new(Shared {
            state: Mutex::new(Recorded {
                token: token.to_string(),
                ..Recorded::default()
            }),
            changed: tokio::sync::watch::Sender::new(0),
            wire_received: Default::default(),
            wire_sent: Default::default(),
        });
        let (running, addr) = serve(addr, shared.clone(), transport.clone())?;
        Ok(Controller {
            addr,
            shared,
            running: Mutex::new(Some(running)),
            transport,
            client_auth,
        })
    }

    /// `http://ip:port`, or `https://ip:port` over TLS (IPv6 in brackets).
    pub fn url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Whether it speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls(_))
    }

    /// Whether it requires a client certificate (HTTPS with a client CA).
    pub fn requires_client_cert(&self) -> bool {
        self.client_auth
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops serving: closes the listener and every connection (held long polls and
    /// hung requests included) and returns once they are closed. Recorded state is
    /// kept. Does nothing if already stopped.
    pub fn stop(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(running) = running {
            running.stop();
        }
    }

    /// Serves again on the same address with the same documents, faults and records
    /// (after [`Controller::stop`]; retries binding for up to 5 s). Does nothing if
    /// running.
    pub fn restart(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_some() {
            return;
        }
        for node in self.shared.lock().nodes.values_mut() {
            node.view = None;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match serve(self.addr, self.shared.clone(), self.transport.clone()) {
                Ok((r, _)) => {
                    *running = Some(r);
                    return;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot restart the fake controller on {}: {e}", self.addr)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Accepts `Bearer <token>` from now on (token rotation).
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.to_string();
    }

    /// Sets the desired-state document of `node` (it should include "generation") and
    /// wakes every held long poll at once. The ETag is the top-level "generation"
    /// (an integer, or a string); without one the document has no ETag and every poll
    /// gets it at once.
    pub fn set_document(&self, node: &str, document: Value) {
        let etag = etag_of(document.get("generation"));
        let body = Bytes::from(serde_json::to_vec(&document).expect("a JSON value serializes"));
        self.store_document(node, Some(StoredDocument { etag, body }));
    }

    /// Sets a document for `node` as raw bytes (need not be JSON) with the ETag token
    /// `generation` (unquoted; `None` for no ETag), and wakes held polls.
    pub fn set_raw_document(&self, node: &str, generation: Option<&str>, body: &str) {
        let document = StoredDocument {
            etag: generation.map(str::to_string),
            body: Bytes::from(body.to_string()),
        };
        self.store_document(node, Some(document));
    }

    /// Removes the document of `node`: its polls are held until `wait`, then 304.
    pub fn clear_document(&self, node: &str) {
        self.store_document(node, None);
    }

    fn store_document(&self, node: &str, document: Option<StoredDocument>) {
        self.shared.lock().node(node).document = document;
        self.shared.wake_polls();
    }

    /// The document of `node` as JSON, if it has one that is JSON.
    pub fn document(&self, node: &str) -> Option<Value> {
        let state = self.shared.lock();
        let document = state.nodes.get(node)?.document.as_ref()?;
        serde_json::from_slice(&document.body).ok()
    }

    /// Injects `fault` into every desired-state request, and into reports where it
    /// applies (`Status` and `Hang`; other faults leave reports working).
    pub fn set_fault(&self, fault: Fault) {
        let report_fault = match fault {
            Fault::Status(_) | Fault::Busy(_) | Fault::Hang => fault.clone(),
            _ => Fault::None,
        };
        let mut state = self.shared.lock();
        state.poll_fault = fault;
        state.report_fault = report_fault;
    }

    /// Injects `fault` into desired-state requests only.
    pub fn set_poll_fault(&self, fault: Fault) {
        self.shared.lock().poll_fault = fault;
    }

    /// Injects `fault` into reports only: `Status(code)` answers `code` (the report is
    /// recorded but not accepted), `Hang` never answers, the others answer 200 with
    /// their body (the report is accepted).
    pub fn set_report_fault(&self, fault: Fault) {
        self.shared.lock().report_fault = fault;
    }

    /// Every desired-state request for `node`, oldest first (also unauthorized and
    /// faulted ones).
    pub fn polls(&self, node: &str) -> Vec<PollRecord> {
        self.shared
            .lock()
            .nodes
            .get(node)
            .map(|n| n.polls.clone())
            .unwrap_or_default()
    }

    /// How many desired-state requests for `node` arrived.
    pub fn poll_count(&self, node: &str) -> usize {
        self.shared.lock().nodes.get(node).map_or(0, |n| n.polls.len())
    }

    /// When each desired-state request for `node` arrived (to see back-off).
    pub fn poll_times(&self, node: &str) -> Vec<Instant> {
        self.polls(node).iter().map(|p| p.at).collect()
    }

    /// The raw `If-None-Match` of each desired-state request for `node`.
    pub fn if_none_match_values(&self, node: &str) -> Vec<Option<String>> {
        self.polls(node).into_iter().map(|p| p.if_none_match).collect()
    }

    /// How many long polls for `node` are held right now.
    pub fn held_polls(&self, node: &str) -> usize {
        self.shared.lock().nodes.get(node).map_or(0, |n| n.held)
    }

    /// Waits until `node` has at least `count` desired-state requests; returns them.
    pub fn wait_for_polls(&self, node: &str, count: usize, timeout: Duration) -> Vec<PollRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let polls = self.polls(node);
            if polls.len() >= count {
                return polls;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {count} polls from {node}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a long poll of `node` is held (the agent waits for a change).
    pub fn wait_for_held_poll(&self, node: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.held_polls(node) == 0 {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for a held poll from {node}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The node's view after each accepted report of `node`, oldest first: what a
    /// controller knows of it then (see [`ReportRecord::view`]).
    pub fn reports(&self, node: &str) -> Vec<Value> {
        self.report_attempts(node)
            .into_iter()
            .filter(ReportRecord::accepted)
            .filter_map(|r| r.view)
            .collect()
    }

    /// The accepted reports of `node` as sent (decoded JSON), oldest first.
    pub fn report_bodies(&self, node: &str) -> Vec<Value> {
        self.report_attempts(node)
            .into_iter()
            .filter(ReportRecord::accepted)
            .filter_map(|r| r.body)
            .collect()
    }

    /// HTTP bytes received from and sent to every client so far (inside TLS, if any):
    /// requests, bodies and answers with their headers.
    pub fn wire_bytes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.shared.wire_received.load(Relaxed),
            self.shared.wire_sent.load(Relaxed),
        )
    }

    /// Forgets the view of `node`: its next change report is answered 409, as by a
    /// controller that wants everything again.
    pub fn forget_view(&self, node: &str) {
        self.shared.lock().node(node).view = None;
    }

    /// How many reports of `node` were accepted.
    pub fn report_count(&self, node: &str) -> usize {
        self.reports(node).len()
    }

    /// The compressed size of each accepted report of `node`.
    pub fn report_sizes(&self, node: &str) -> Vec<usize> {
        self.report_attempts(node)
            .iter()
            .filter(|r| r.accepted())
            .map(|r| r.compressed_size)
            .collect()
    }

    /// When each accepted report of `node` arrived.
    pub fn report_times(&self, node: &str) -> Vec<Instant> {
        self.report_attempts(node)
            .iter()
            .filter(|r| r.accepted())
            .map(|r| r.at)
            .collect()
    }

    /// Every report POST for `node`, accepted or not, oldest first.
    pub fn report_attempts(&self, node: &str) -> Vec<ReportRecord> {
        self.shared
            .lock()
            .nodes
            .get(node)
            .map(|n| n.reports.clone())
            .unwrap_or_default()
    }

    /// Waits for an accepted report of `node` for which `predicate` holds and returns
    /// the first such (oldest first); panics with the last reports on timeout.
    pub fn wait_for_report(&self, node: &str, timeout: Duration, predicate: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_report_since(node, 0, timeout, predicate)
    }

    /// Like [`Controller::wait_for_report`], looking only at accepted reports after the
    /// first `since` (e.g. `report_count(node)` taken before a change).
    pub fn wait_for_report_since(
        &self,
        node: &str,
        since: usize,
        timeout: Duration,
        predicate: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let reports = self.reports(node);
            if let Some(found) = reports.iter().skip(since).find(|r| predicate(r)) {
                return found.clone();
            }
            if Instant::now() > deadline {
                let last: Vec<String> = reports
                    .iter()
                    .rev()
                    .take(3)
                    .rev()
                    .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for a matching report from {node} \
                     ({} accepted, {since} skipped); the last ones:\n{}\n{}",
                    reports.len(),
                    last.join("\n"),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many calls were refused with 401 for a missing or wrong token.
    pub fn unauthorized_count(&self) -> usize {
        self.shared.lock().rejections.iter().filter(|r| r.status == 401).count()
    }

    /// Every call refused by the controller itself (not by an injected fault).
    pub fn rejections(&self) -> Vec<RejectionRecord> {
        self.shared.lock().rejections.clone()
    }

    /// How many HTTP requests arrived in all.
    pub fn request_count(&self) -> u64 {
        self.shared.lock().requests
    }

    /// How many TLS handshakes failed (each a dropped connection).
    pub fn tls_failures(&self) -> usize {
        self.shared.lock().tls_failures.len()
    }

    /// Every failed TLS handshake, oldest first.
    pub fn tls_failure_records(&self) -> Vec<TlsFailureRecord> {
        self.shared.lock().tls_failures.clone()
    }

    /// How many TLS handshakes succeeded (connections, not requests: a client that
    /// keeps its connection alive shakes hands once).
    pub fn tls_handshakes(&self) -> u64 {
        self.shared.lock().tls_handshakes
    }

    /// Waits until at least `count` TLS handshakes have failed; returns them.
    pub fn wait_for_tls_failures(&self, count: usize, timeout: Duration) -> Vec<TlsFailureRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let failures = self.tls_failure_records();
            if failures.len() >= count {
                return failures;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {count} failed TLS handshakes\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A summary of everything recorded, for failure messages.
    pub fn diagnostics(&self) -> String {
        let state = self.shared.lock();
        let mut out = format!(
            "--- fake controller {} (running: {}), {} requests, poll fault {:?}, report fault {:?}\n",
            self.url(),
            self.running.try_lock().map(|r| r.is_some()).unwrap_or(true),
            state.requests,
            abbreviate(&state.poll_fault),
            abbreviate(&state.report_fault),
        );
        if self.is_tls() {
            out.push_str(&format!(
                "--- TLS{}: {} handshakes, {} failed\n",
                if self.client_auth {
                    " with client certificates"
                } else {
                    ""
                },
                state.tls_handshakes,
                state.tls_failures.len()
            ));
            for f in state.tls_failures.iter().rev().take(5).rev() {
                out.push_str(&format!(
                    "    TLS failure {:?} ago from {}: {}\n",
                    f.at.elapsed(),
                    f.peer,
                    f.error
                ));
            }
        }
        let mut nodes: Vec<_> = state.nodes.iter().collect();
        nodes.sort_by(|a, b| a.0.cmp(b.0));
        for (name, node) in nodes {
            let etag = node.document.as_ref().map(|d| d.etag.clone());
            out.push_str(&format!(
                "--- node {name:?}: document etag {etag:?}, {} polls ({} held), {} report posts\n",
                node.polls.len(),
                node.held,
                node.reports.len()
            ));
            for p in node.polls.iter().rev().take(8).rev() {
                out.push_str(&format!(
                    "    poll at +{:?}: If-None-Match {:?}, wait {:?}, authorized {}, status {:?}\n",
                    p.at.elapsed(),
                    p.if_none_match,
                    p.wait,
                    p.authorized,
                    p.status
                ));
            }
            for r in node.reports.iter().rev().take(3).rev() {
                out.push_str(&format!(
                    "    report {:?} ago: {} bytes, status {:?}, error {:?}, body {}\n",
                    r.at.elapsed(),
                    r.compressed_size,
                    r.status,
                    r.decode_error,
                    r.body.as_ref().map(Value::to_string).unwrap_or_default()
                ));
            }
        }
        for r in state.rejections.iter().rev().take(10).rev() {
            out.push_str(&format!(
                "--- rejected {:?} ago: {} {} → {}: {}\n",
                r.at.elapsed(),
                r.method,
                r.path,
                r.status,
                r.reason
            ));
        }
        out
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

fn abbreviate(fault: &Fault) -> String {
    match fault {
        Fault::Body(b) if b.chars().count() > 80 => format!("Body({:?}…)", b.chars().take(80).collect::<String>()),
        other => format!("{other:?}"),
    }
}

/// Binds `addr` and serves on a background thread; returns the handle and the bound
/// address.
fn serve(addr: SocketAddr, shared: Arc<Shared>, transport: Transport) -> std::io::Result<(Running, SocketAddr)> {
    // std sets SO_REUSEADDR on Unix, so a restart can bind while old connections are
    // in TIME_WAIT.
    let listener = StdTcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let thread = std::thread::Builder::new()
        .name(format!("fake-controller-{}", bound.port()))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => Incoming::new(l, transport, shared.clone()),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let app = Router::new()
                    .fallback(handle)
                    .with_state(shared)
                    .into_make_service_with_connect_info::<Peer>();
                tokio::select! {
                    result = axum::serve(listener, app).into_future() => {
                        if let Err(e) = result {
                            eprintln!("fake controller on {bound}: {e}");
                        }
                    }
                    _ = shutdown_rx => {}
                }
            });
            // Dropping the runtime drops every connection task: held polls, hung
            // requests, idle keep-alive connections and TLS handshakes in progress are
            // closed here.
            drop(runtime);
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(std::io::Error::other("the fake controller thread died"));
        }
    }
    Ok((
        Running {
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        },
        bound,
    ))
}

/// The server's TLS configuration: ring, TLS 1.2 and 1.3, HTTP/1.1 by ALPN, and with
/// `client_ca_pem` a client certificate that chains to it required.
fn tls_server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the server certificate is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the server certificate PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the server key: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("the client CA is not PEM: {e}"))?;
                roots.add(cert).map_err(|e| format!("the client CA: {e}"))?;
            }
            if roots.is_empty() {
                return Err("no certificate in the client CA PEM".into());
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("the client certificate verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("the server certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a connection came with: the client's address and, over TLS with a client CA,
/// its certificate (DER). Handlers find it in the request's extensions.
#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    client_cert: Option<Vec<u8>>,
}

impl Connected<IncomingStream<'_, Incoming>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// A connection as axum serves it, counting the bytes that pass.
struct Conn {
    stream: Stream,
    shared: Arc<Shared>,
}

enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl Conn {
    fn sent(&self, poll: &std::task::Poll<std::io::Result<usize>>) {
        if let std::task::Poll::Ready(Ok(n)) = poll {
            self.shared
                .wire_sent
                .fetch_add(*n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        };
        let read = buf.filled().len().saturating_sub(before) as u64;
        this.shared
            .wire_received
            .fetch_add(read, std::sync::atomic::Ordering::Relaxed);
        poll
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        };
        this.sent(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        };
        this.sent(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The listener axum serves: TCP connections as they are, or over TLS once their
/// handshake is done. Handshakes run in tasks of their own, so that a slow or silent
/// client does not hold up the others; a failed one is recorded and its connection
/// dropped.
struct Incoming {
    shared: Arc<Shared>,
    tcp: tokio::net::TcpListener,
    tls: Option<(tokio_rustls::TlsAcceptor, Arc<Shared>)>,
    handshaken_tx: tokio::sync::mpsc::UnboundedSender<(Conn, Peer)>,
    handshaken: tokio::sync::mpsc::UnboundedReceiver<(Conn, Peer)>,
}

impl Incoming {
    fn new(tcp: tokio::net::TcpListener, transport: Transport, shared: Arc<Shared>) -> Incoming {
        let (handshaken_tx, handshaken) = tokio::sync::mpsc::unbounded_channel();
        let tls = match transport {
            Transport::Plain => None,
            Transport::Tls(config) => Some((tokio_rustls::TlsAcceptor::from(config), shared.clone())),
        };
        Incoming {
            shared,
            tcp,
            tls,
            handshaken_tx,
            handshaken,
        }
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        loop {
            // Both branches are cancel-safe.
            tokio::select! {
                accepted = self.tcp.accept() => {
                    let (stream, addr) = match accepted {
                        Ok(accepted) => accepted,
                        // A connection reset before it was accepted, or out of file
                        // descriptors: do not spin.
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    match &self.tls {
                        None => {
                            let conn = Conn { stream: Stream::Plain(stream), shared: self.shared.clone() };
                            return (conn, Peer { addr, client_cert: None });
                        }
                        Some((acceptor, shared)) => {
                            tokio::spawn(handshake(
                                acceptor.clone(),
                                shared.clone(),
                                stream,
                                addr,
                                self.handshaken_tx.clone(),
                            ));
                        }
                    }
                }
                Some(connection) = self.handshaken.recv() => return connection,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.tcp.local_addr()?,
            client_cert: None,
        })
    }
}

/// One TLS handshake: the stream goes to `done`, or the failure is recorded.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    done: tokio::sync::mpsc::UnboundedSender<(Conn, Peer)>,
) {
    let error = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.to_vec());
            shared.lock().tls_handshakes += 1;
            let conn = Conn {
                stream: Stream::Tls(Box::new(tls)),
                shared: shared.clone(),
            };
            let _ = done.send((conn, Peer { addr, client_cert }));
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
    };
    shared.lock().tls_failures.push(TlsFailureRecord {
        at: Instant::now(),
        peer: addr,
        error,
    });
}

enum Route {
    DesiredState(String),
    Report(String),
    BadNodeId,
    Unknown,
}

fn route(path: &str) -> Route {
    let Some(rest) = path.strip_prefix("/v1/nodes/") else {
        return Route::Unknown;
    };
    let Some((node, tail)) = rest.split_once('/') else {
        return Route::Unknown;
    };
    if tail != "desired-state" && tail != "report" {
        return Route::Unknown;
    }
    let Some(node) = percent_decode(node).filter(|n| !n.is_empty()) else {
        return Route::BadNodeId;
    };
    if tail == "report" {
        Route::Report(node)
    } else {
        Route::DesiredState(node)
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let method = parts.method.clone();
    let authorized = authorized(&shared, &parts.headers);
    shared.lock().requests += 1;
    match route(&path) {
        Route::DesiredState(node) if method == Method::GET => poll(&shared, &node, &parts, authorized).await,
        Route::Report(node) if method == Method::POST => report(&shared, &node, &parts, body, authorized).await,
        _ if !authorized => unauthorized(&shared, &method, &path),
        Route::DesiredState(_) => reject(&shared, &method, &path, 405, "use GET"),
        Route::Report(_) => reject(&shared, &method, &path, 405, "use POST"),
        Route::BadNodeId => reject(&shared, &method, &path, 400, "the node id is not valid UTF-8"),
        Route::Unknown => reject(&shared, &method, &path, 404, "no such path"),
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let token = shared.lock().token.clone();
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    // The scheme is case-insensitive (RFC 9110); the token is not.
    value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") && value[7..] == *token.as_bytes()
}

fn unauthorized(shared: &Shared, method: &Method, path: &str) -> Response {
    let mut response = reject(shared, method, path, 401, "missing or wrong bearer token");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// A refusal by the controller itself: recorded, with a JSON error body.
fn reject(shared: &Shared, method: &Method, path: &str, status: u16, reason: &str) -> Response {
    shared.lock().rejections.push(RejectionRecord {
        at: Instant::now(),
        method: method.to_string(),
        path: path.to_string(),
        status,
        reason: reason.to_string(),
    });
    error_response(status, reason)
}

fn error_response(status: u16, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = respond(status, Bytes::from(body), None);
    if !matches!(status, 100..=199 | 204 | 304) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

/// A response with `status` (500 if it is not a valid code), `body` (dropped for
/// 1xx/204/304) and an ETag `"<etag>"` if given and valid.
fn respond(status: u16, body: Bytes, etag: Option<&str>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Body::empty()
    } else {
        Body::from(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(value) = etag.and_then(|e| HeaderValue::from_str(&format!("\"{e}\"")).ok()) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn document_response(status: u16, body: Bytes, etag: Option<&str>) -> Response {
    let mut response = respond(status, body, etag);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A fault's answer to a request that expects a document, or `None` for no fault.
/// `Hang` never returns.
async fn fault_response(fault: &Fault) -> Option<Response> {
    match fault {
        Fault::None => None,
        Fault::Status(code) => Some(error_response(*code, "injected fault")),
        Fault::Busy(seconds) => {
            let mut response = error_response(503, "busy");
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Some(response)
        }
        Fault::Hang => std::future::pending().await,
        Fault::Garbage => Some(document_response(
            200,
            Bytes::from_static(GARBAGE_BODY.as_bytes()),
            None,
        )),
        Fault::Huge => Some(document_response(200, huge_body(), Some(&HUGE_GENERATION.to_string()))),
        Fault::Body(text) => {
            let etag = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| etag_of(v.get("generation")));
            Some(document_response(200, Bytes::from(text.clone()), etag.as_deref()))
        }
    }
}

fn huge_body() -> Bytes {
    static HUGE: OnceLock<Bytes> = OnceLock::new();
    HUGE.get_or_init(|| {
        let head = format!("{{\"generation\":{HUGE_GENERATION},\"instances\":[],\"padding\":\"");
        let tail = "\"}";
        let mut body = Vec::with_capacity(HUGE_BODY_BYTES);
        body.extend_from_slice(head.as_bytes());
        body.resize(HUGE_BODY_BYTES - tail.len(), b'x');
        body.extend_from_slice(tail.as_bytes());
        Bytes::from(body)
    })
    .clone()
}

/// Decrements the held count of a node when a held poll ends, however it ends.
struct HeldGuard<'a> {
    shared: &'a Shared,
    node: &'a str,
}

impl<'a> HeldGuard<'a> {
    fn new(shared: &'a Shared, node: &'a str) -> HeldGuard<'a> {
        shared.lock().node(node).held += 1;
        HeldGuard { shared, node }
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let node = state.node(self.node);
        node.held = node.held.saturating_sub(1);
    }
}

async fn poll(shared: &Shared, node: &str, parts: &axum::http::request::Parts, authorized: bool) -> Response {
    let path = parts.uri.path();
    let wait = query_param(parts.uri.query().unwrap_or(""), "wait");
    let if_none_match = parts
        .headers
        .get(header::IF_NONE_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let (index, fault) = {
        let mut state = shared.lock();
        let fault = state.poll_fault.clone();
        let polls = &mut state.node(node).polls;
        polls.push(PollRecord {
            at: Instant::now(),
            if_none_match: if_none_match.clone(),
            wait: wait.clone(),
            authorized,
            status: None,
            answered_at: None,
            headers: header_list(&parts.headers),
            client_cert: client_cert(parts),
        });
        (polls.len() - 1, fault)
    };
    let response = if !authorized {
        unauthorized(shared, &parts.method, path)
    } else if let Some(response) = fault_response(&fault).await {
        response
    } else {
        match wait.as_deref().map(parse_wait) {
            None => reject(shared, &parts.method, path, 400, "the wait parameter is missing"),
            Some(None) => reject(
                shared,
                &parts.method,
                path,
                400,
                "the wait parameter is not a duration like 30s or 500ms",
            ),
            Some(Some(wait)) => long_poll(shared, node, if_none_match.as_deref(), wait).await,
        }
    };
    let mut state = shared.lock();
    if let Some(record) = state.node(node).polls.get_mut(index) {
        record.status = Some(response.status().as_u16());
        record.answered_at = Some(Instant::now());
    }
    response
}

/// 200 with the node's document if its ETag does not match `if_none_match`, else holds
/// until it changes (200) or `wait` passes (304).
async fn long_poll(shared: &Shared, node: &str, if_none_match: Option<&str>, wait: Duration) -> Response {
    let deadline = tokio::time::Instant::now() + wait;
    let _held = HeldGuard::new(shared, node);
    loop {
        // Subscribe before looking, so that a change in between is not missed.
        let mut changed = shared.changed.subscribe();
        let document = shared.lock().node(node).document.clone();
        if let Some(document) = &document {
            let matches = match (if_none_match, &document.etag) {
                (Some(header), Some(etag)) => etag_matches(header, etag),
                (Some(header), None) => header.trim() == "*",
                (None, _) => false,
            };
            if !matches {
                return document_response(200, document.body.clone(), document.etag.as_deref());
            }
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let etag = document.as_ref().and_then(|d| d.etag.as_deref());
                return respond(304, Bytes::new(), etag);
            }
        }
    }
}

async fn report(
    shared: &Shared,
    node: &str,
    parts: &axum::http::request::Parts,
    body: Body,
    authorized: bool,
) -> Response {
    let path = parts.uri.path();
    let content_encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let (bytes, read_error) = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(bytes) => (bytes, None),
        Err(e) => (Bytes::new(), Some(format!("cannot read the body: {e}"))),
    };
    let gzip = content_encoding
        .as_deref()
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"));
    let decoded = match &read_error {
        Some(e) => Err(e.clone()),
        None if gzip => gunzip_json(&bytes),
        // Not gzip: still try to read it as plain JSON for the record.
        None => serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("not JSON: {e}")),
    };
    let (index, fault) = {
        let mut state = shared.lock();
        let fault = state.report_fault.clone();
        let reports = &mut state.node(node).reports;
        reports.push(ReportRecord {
            at: Instant::now(),
            compressed_size: bytes.len(),
            content_encoding: content_encoding.clone(),
            body: decoded.as_ref().ok().cloned(),
            decode_error: decoded.as_ref().err().cloned(),
            authorized,
            status: None,
            view: None,
            headers: header_list(&parts.headers),
            client_cert: client_cert(parts),
        });
        (reports.len() - 1, fault)
    };
    let response = if !authorized {
        unauthorized(shared, &parts.method, path)
    } else if let Some(response) = fault_response(&fault).await {
        response
    } else if read_error.is_some() {
        reject(shared, &parts.method, path, 413, "the body is too large")
    } else if !gzip {
        reject(
            shared,
            &parts.method,
            path,
            415,
            &format!("Content-Encoding must be gzip, not {content_encoding:?}"),
        )
    } else if let Err(e) = &decoded {
        reject(shared, &parts.method, path, 400, e)
    } else {
        respond(204, Bytes::new(), None)
    };
    let mut state = shared.lock();
    let state = state.node(node);
    let mut status = response.status().as_u16();
    let mut view = None;
    if status == 204 {
        if let Ok(body) = &decoded {
            match apply_report(state.view.as_ref(), body) {
                Some(applied) => view = Some(applied),
                None => status = 409,
            }
        }
    }
    if status == 409 {
        state.view = None;
    } else if view.is_some() {
        state.view = view.clone();
    }
    if let Some(record) = state.reports.get_mut(index) {
        record.status = Some(status);
        record.view = view;
    }
    if status == 409 {
        return respond(409, Bytes::from_static(b"unknown base_seq: send a full report"), None);
    }
    response
}

/// The view after `report` on `view`: a full report (or any body without `"kind":
/// "delta"`) is the new view; a change report is applied on `view` when its `base_seq`
/// is the `seq` of `view`, and is refused (`None`) otherwise.
fn apply_report(view: Option<&Value>, report: &Value) -> Option<Value> {
    if report["kind"] != "delta" {
        return Some(report.clone());
    }
    let view = view?;
    if view["seq"] != report["base_seq"] || report["base_seq"].is_null() {
        return None;
    }
    let mut next = view.clone();
    let fields = next.as_object_mut()?;
    for (key, value) in report.as_object()? {
        if key != "instances" && key != "removed" {
            fields.insert(key.clone(), value.clone());
        }
    }
    let mut instances: std::collections::BTreeMap<String, Value> = view["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i["name"].as_str()?.to_string(), i.clone())))
        .collect();
    for removed in report["removed"].as_array().into_iter().flatten() {
        instances.remove(removed.as_str().unwrap_or_default());
    }
    for changed in report["instances"].as_array().into_iter().flatten() {
        instances.insert(changed["name"].as_str()?.to_string(), changed.clone());
    }
    fields.insert("instances".into(), Value::Array(instances.into_values().collect()));
    Some(next)
}

fn gunzip_json(bytes: &[u8]) -> Result<Value, String> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_REPORT_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("not gzip: {e}"))?;
    if json.len() as u64 > MAX_REPORT_BYTES {
        return Err(format!("more than {MAX_REPORT_BYTES} bytes uncompressed"));
    }
    serde_json::from_slice(&json).map_err(|e| format!("gzip of something that is not JSON: {e}"))
}

/// The client certificate the request's connection authenticated with, if any.
fn client_cert(parts: &axum::http::request::Parts) -> Option<Vec<u8>> {
    parts
        .extensions
        .get::<ConnectInfo<Peer>>()
        .and_then(|info| info.0.client_cert.clone())
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect()
}

/// The ETag token of a document's "generation": an integer as digits, a string as
/// itself (if it can be quoted), anything else none.
fn etag_of(generation: Option<&Value>) -> Option<String> {
    match generation? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.contains('"') && !s.chars().any(char::is_control) => Some(s.clone()),
        _ => None,
    }
}

/// Whether an `If-None-Match` header matches the entity tag `etag` (unquoted): `*`, or
/// one of a comma-separated list of quoted tags (weak `W/"…"` too). An unquoted value
/// is not an entity tag and matches nothing.
pub fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|tag| {
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag == "*" || tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) == Some(etag)
    })
}

/// Parses a `wait` like `30s`, `500ms`, `1.5s`, `2m`, `1h` (at most a day); `None` if
/// it is not one.
pub fn parse_wait(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && (0.0..=86_400.0).contains(&seconds)).then(|| Duration::from_secs_f64(seconds))
}

/// The first value of `name` in a query string (percent-decoded), if any.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key)? == name).then(|| percent_decode(&value.replace('+', " ")).unwrap_or_default())
    })
}

/// Decodes `%XX` escapes; `None` if an escape is malformed or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

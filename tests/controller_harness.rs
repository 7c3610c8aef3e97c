//! Self-tests of the fake control centre in `tests/common/controller.rs`, with a plain
//! HTTP client over `TcpStream`, or over a plain rustls client for HTTPS (no agent
//! involved).

mod common;

use common::controller::{etag_matches, parse_wait, Controller, Fault, GARBAGE_BODY, HUGE_BODY_BYTES, HUGE_GENERATION};
use common::tls::{Ca, Issued};
use flate2::write::GzEncoder;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "controller-test-token-0123456789";
const NODE: &str = "node-a";

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end;
/// an error if no answer comes within `timeout`.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(timeout))?;
    exchange(&mut stream, addr, method, path, headers, body)
}

/// Writes one request with `Connection: close` on `stream` and reads the answer to the
/// end.
fn exchange(
    stream: &mut (impl Read + Write),
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {raw:?}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// `GET /v1/nodes/{node}/desired-state?wait=…` with the token.
fn poll(c: &Controller, node: &str, wait: &str, if_none_match: Option<&str>) -> Answer {
    poll_at(c.addr(), node, wait, if_none_match, Duration::from_secs(5)).expect("poll")
}

fn poll_at(
    addr: SocketAddr,
    node: &str,
    wait: &str,
    if_none_match: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Answer> {
    let auth = bearer();
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(tag) = if_none_match {
        headers.push(("If-None-Match", tag));
    }
    let path = format!("/v1/nodes/{node}/desired-state?wait={wait}");
    call(addr, "GET", &path, &headers, b"", timeout)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn post_report(c: &Controller, node: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let path = format!("/v1/nodes/{node}/report");
    call(c.addr(), "POST", &path, headers, body, Duration::from_secs(5)).expect("post report")
}

fn doc(generation: u64) -> Value {
    json!({"generation": generation, "instances": [{"name": "cache", "port": 7000}]})
}

#[test]
fn a_new_document_is_answered_at_once_with_its_etag() {
    let c = Controller::start(TOKEN);
    assert!(c.url().starts_with("http://127.0.0.1:"), "{}", c.url());
    c.set_document(NODE, doc(7));

    let began = Instant::now();
    let a = poll(&c, NODE, "30s", None);
    assert!(began.elapsed() < Duration::from_secs(1), "took {:?}", began.elapsed());
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("etag"), Some("\"7\""));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.json(), doc(7));

    // An older accepted generation gets the document too.
    let a = poll(&c, NODE, "30s", Some("\"6\""));
    assert_eq!(a.status, 200);
    assert_eq!(a.header("etag"), Some("\"7\""));

    assert_eq!(c.poll_count(NODE), 2);
    assert_eq!(c.if_none_match_values(NODE), vec![None, Some("\"6\"".to_string())]);
    let polls = c.polls(NODE);
    assert!(polls.iter().all(|p| p.authorized && p.status == Some(200)));
    assert_eq!(polls[0].wait.as_deref(), Some("30s"));
    assert_eq!(c.poll_times(NODE).len(), 2);
    assert_eq!(c.held_polls(NODE), 0);
    assert_eq!(c.document(NODE), Some(doc(7)));
    assert_eq!(c.poll_count("another-node"), 0);
}

#[test]
fn a_held_poll_is_answered_at_once_when_the_generation_changes() {
    let c = Controller::start(TOKEN);
    c.set_document(NODE, doc(1));
    let addr = c.addr();
    let client = std::thread::spawn(move || {
        let a = poll_at(addr, NODE, "30s", Some("\"1\""), Duration::from_secs(5));
        (a, Instant::now())
    });
    c.wait_for_held_poll(NODE, Duration::from_secs(2));

    // The same generation, another node's document: still held.
    c.set_document(NODE, json!({"generation": 1, "instances": []}));
    c.set_document("other-node", doc(5));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.held_polls(NODE), 1, "{}", c.diagnostics());

    let changed = Instant::now();
    c.set_document(NODE, doc(2));
    let (answer, answered) = client.join().unwrap();
    let answer = answer.expect("answer");
    let latency = answered - changed;
    assert!(
        latency < Duration::from_millis(100),
        "answered {latency:?} after the change"
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("etag"), Some("\"2\""));
    assert_eq!(answer.json(), doc(2));
    assert_eq!(c.held_polls(NODE), 0);
    assert_eq!(c.polls(NODE)[0].status, Some(200));
}

#[test]
fn a_poll_for_a_node_without_a_document_is_answered_when_one_is_set() {
    let c = Controller::start(TOKEN);
    let addr = c.addr();
    let client = std::thread::spawn(move || poll_at(addr, "fresh", "30s", None, Duration::from_secs(5)));
    c.wait_for_held_poll("fresh", Duration::from_secs(2));
    c.set_document("fresh", doc(0));
    let answer = client.join().unwrap().expect("answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("etag"), Some("\"0\""));
}

#[test]
fn without_a_change_a_poll_gets_304_after_wait() {
    let c = Controller::start(TOKEN);
    c.set_document(NODE, doc(1));
    let began = Instant::now();
    let a = poll(&c, NODE, "300ms", Some("\"1\""));
    let took = began.elapsed();
    assert_eq!(a.status, 304, "{}", a.text());
    assert!(a.body.is_empty());
    assert_eq!(a.header("etag"), Some("\"1\""));
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(800),
        "took {took:?}"
    );

    // No document at all: held, then 304.
    let began = Instant::now();
    let a = poll(&c, "no-document", "200ms", None);
    assert_eq!(a.status, 304);
    assert!(began.elapsed() >= Duration::from_millis(190));
    assert_eq!(c.polls("no-document")[0].status, Some(304));
    assert_eq!(c.held_polls(NODE), 0);
}

#[test]
fn if_none_match_forms() {
    let c = Controller::start(TOKEN);
    c.set_document(NODE, doc(41));
    for tag in ["W/\"41\"", "\"40\", \"41\"", "*"] {
        assert_eq!(poll(&c, NODE, "20ms", Some(tag)).status, 304, "{tag}");
    }
    // An unquoted value is not an entity tag.
    assert_eq!(poll(&c, NODE, "20ms", Some("41")).status, 200);

    assert!(etag_matches("\"41\"", "41"));
    assert!(!etag_matches("\"4\"", "41"));
    assert!(!etag_matches("", "41"));
}

#[test]
fn wait_durations() {
    assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_wait("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_wait("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_wait("0s"), Some(Duration::ZERO));
    for bad in ["", "30", "s", "-1s", "1e3s", "30 s", "10x", "99999h", "1.2.3s"] {
        assert_eq!(parse_wait(bad), None, "{bad:?}");
    }
}

#[test]
fn bad_requests_are_refused_and_recorded() {
    let c = Controller::start(TOKEN);
    let auth = bearer();
    let with_token = [("Authorization", auth.as_str())];
    let get = |path: &str| call(c.addr(), "GET", path, &with_token, b"", Duration::from_secs(2)).unwrap();

    let a = get("/v1/nodes/n/desired-state");
    assert_eq!(a.status, 400);
    assert!(a.json()["error"].as_str().unwrap().contains("wait"));
    assert_eq!(get("/v1/nodes/n/desired-state?wait=soon").status, 400);
    assert_eq!(get("/v1/nodes/n/desired-state?wait=-1s").status, 400);
    assert_eq!(get("/v1/nodes/%ff/desired-state?wait=1s").status, 400);
    assert_eq!(get("/v1/nodes/n/report").status, 405);
    assert_eq!(get("/v1/nodes/n").status, 404);
    assert_eq!(get("/elsewhere").status, 404);
    let a = call(
        c.addr(),
        "POST",
        "/v1/nodes/n/desired-state",
        &with_token,
        b"{}",
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(a.status, 405);

    // A percent-encoded node id is decoded.
    assert_eq!(get("/v1/nodes/node%2Db/desired-state?wait=1ms").status, 304);
    assert_eq!(c.poll_count("node-b"), 1);

    let statuses: Vec<u16> = c.rejections().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![400, 400, 400, 400, 405, 404, 404, 405]);
    assert_eq!(c.unauthorized_count(), 0);
    assert_eq!(c.poll_count("n"), 3, "polls with a bad wait are recorded too");
    assert_eq!(c.request_count(), 9);
}

#[test]
fn calls_without_the_right_token_get_401() {
    let c = Controller::start(TOKEN);
    c.set_document(NODE, doc(3));
    let path = format!("/v1/nodes/{NODE}/desired-state?wait=1s");
    let t = Duration::from_secs(2);

    let a = call(c.addr(), "GET", &path, &[], b"", t).unwrap();
    assert_eq!(a.status, 401);
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    let wrong = call(c.addr(), "GET", &path, &[("Authorization", "Bearer nope")], b"", t).unwrap();
    assert_eq!(wrong.status, 401);
    let basic = format!("Basic {TOKEN}");
    assert_eq!(
        call(c.addr(), "GET", &path, &[("Authorization", &basic)], b"", t)
            .unwrap()
            .status,
        401
    );
    let report = post_report(&c, NODE, &[("Content-Encoding", "gzip")], &gzip(b"{}"));
    assert_eq!(report.status, 401);
    assert_eq!(call(c.addr(), "GET", "/elsewhere", &[], b"", t).unwrap().status, 401);
    assert_eq!(c.unauthorized_count(), 5);
    assert!(c.reports(NODE).is_empty());
    assert!(c.polls(NODE).iter().all(|p| !p.authorized && p.status == Some(401)));

    // The scheme is case-insensitive.
    let lower = format!("bearer {TOKEN}");
    assert_eq!(
        call(c.addr(), "GET", &path, &[("Authorization", &lower)], b"", t)
            .unwrap()
            .status,
        200
    );

    // A rotated token.
    c.set_token("the-next-token-abcdefghijklmnop");
    assert_eq!(poll(&c, NODE, "1s", None).status, 401);
    let next = "Bearer the-next-token-abcdefghijklmnop";
    assert_eq!(
        call(c.addr(), "GET", &path, &[("Authorization", next)], b"", t)
            .unwrap()
            .status,
        200
    );
    assert_eq!(c.unauthorized_count(), 6);
}

#[test]
fn a_gzip_report_is_decoded_and_stored() {
    let c = Controller::start(TOKEN);
    let auth = bearer();
    let gz = [("Authorization", auth.as_str()), ("Content-Encoding", "gzip")];
    let first = json!({"observed_generation": 1, "events": [{"seq": 1}]});
    let second = json!({"observed_generation": 2, "events": []});
    let body = gzip(first.to_string().as_bytes());
    let a = post_report(&c, NODE, &gz, &body);
    assert_eq!(a.status, 204, "{}", a.text());
    assert!(a.body.is_empty());
    assert_eq!(
        post_report(&c, NODE, &gz, &gzip(second.to_string().as_bytes())).status,
        204
    );

    assert_eq!(c.reports(NODE), vec![first.clone(), second.clone()]);
    assert_eq!(c.report_count(NODE), 2);
    assert_eq!(c.report_sizes(NODE)[0], body.len());
    assert_eq!(c.report_times(NODE).len(), 2);
    let found = c.wait_for_report(NODE, Duration::from_secs(1), |r| r["observed_generation"] == 2);
    assert_eq!(found, second);
    let found = c.wait_for_report_since(NODE, 1, Duration::from_secs(1), |r| r["events"].is_array());
    assert_eq!(found, second);

    // Not gzip: 415; gzip that is not gzip, or not JSON: 400. None is stored.
    let plain = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    assert_eq!(post_report(&c, NODE, &plain, first.to_string().as_bytes()).status, 415);
    assert_eq!(post_report(&c, NODE, &gz, b"{\"not\": \"compressed\"}").status, 400);
    assert_eq!(post_report(&c, NODE, &gz, &gzip(b"not json")).status, 400);
    assert_eq!(c.report_count(NODE), 2);
    let attempts = c.report_attempts(NODE);
    assert_eq!(attempts.len(), 5);
    let statuses: Vec<Option<u16>> = attempts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Some(204), Some(204), Some(415), Some(400), Some(400)]);
    assert_eq!(attempts[2].body, Some(first), "a plain JSON body is still recorded");
    assert!(attempts[4].decode_error.as_deref().unwrap().contains("not JSON"));

    // On timeout, wait_for_report panics with the last reports.
    let failure = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.wait_for_report(NODE, Duration::from_millis(50), |r| r["observed_generation"] == 9)
    }))
    .expect_err("no such report");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("\"observed_generation\": 2"), "{message}");
}

#[test]
fn fault_status_applies_to_polls_and_reports() {
    let c = Controller::start(TOKEN);
    c.set_document(NODE, doc(1));
    let auth = bearer();
    let gz = [("Authorization", auth.as_str()), ("Content-Encoding", "gzip")];
    let report = gzip(b"{\"n\": 1}");

    c.set_fault(Fault::Status(503));
    let a = poll(&c, NODE, "30s", None);
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"], "injected fault");
    assert_eq!(post_report(&c, NODE, &gz, &report).status, 503);
    assert!(c.reports(NODE).is_empty(), "a refused report is not accepted");
    assert_eq!(c.report_attempts(NODE)[0].body, Some(json!({"n": 1})));

    c.set_fault(Fault::Status(403));
    assert_eq!(poll(&c, NODE, "30s", None).status, 403);
    assert_eq!(c.unauthorized_count(), 0, "injected statuses are not counted as 401s");

    // Polls only.
    c.set_fault(Fault::None);
    c.set_poll_fault(Fault::Status(500));
    assert_eq!(poll(&c, NODE, "30s", None).status, 500);
    assert_eq!(post_report(&c, NODE, &gz, &report).status, 204);

    // Reports only.
    c.set_poll_fault(Fault::None);
    c.set_report_fault(Fault::Status(502));
    assert_eq!(poll(&c, NODE, "30s", None).status, 200);
    assert_eq!(post_report(&c, NODE, &gz, &report).status, 502);

    c.set_fault(Fault::None);
    assert_eq!(post_report(&c, NODE, &gz, &report).status, 204);
    assert_eq!(c.report_count(NODE), 2);
    let statuses: Vec<u16> = c.polls(NODE).iter().filter_map(|p| p.status).collect();
    assert_eq!(statuses, vec![503, 403, 500, 200]);
}

#[test]
fn fault_garbage_huge_and_body() {
    let c = Controller::start(TOKEN);
    c.set_document(NODE, doc(1));

    c.set_fault(Fault::Garbage);
    let a = poll(&c, NODE, "30s", Some("\"1\""));
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), GARBAGE_BODY);
    assert!(serde_json::from_slice::<Value>(&a.body).is_err());

    c.set_fault(Fault::Huge);
    let a = poll(&c, NODE, "30s", Some("\"1\""));
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), HUGE_BODY_BYTES);
    assert!(a.body.len() > 10 * 1024 * 1024);
    assert_eq!(a.header("etag"), Some(format!("\"{HUGE_GENERATION}\"").as_str()));
    assert_eq!(a.json()["generation"], HUGE_GENERATION);

    let text = "{\"generation\": 12, \"instances\": [], \"surprise\": true}";
    c.set_fault(Fault::Body(text.to_string()));
    let a = poll(&c, NODE, "30s", Some("\"12\""));
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), text);
    assert_eq!(a.header("etag"), Some("\"12\""));
    c.set_fault(Fault::Body("[1, 2".to_string()));
    let a = poll(&c, NODE, "30s", None);
    assert_eq!((a.status, a.text().as_str(), a.header("etag")), (200, "[1, 2", None));

    // Reports still work under these faults.
    let auth = bearer();
    let gz = [("Authorization", auth.as_str()), ("Content-Encoding", "gzip")];
    assert_eq!(post_report(&c, NODE, &gz, &gzip(b"{}")).status, 204);

    c.set_fault(Fault::None);
    let a = poll(&c, NODE, "30s", None);
    assert_eq!((a.status, a.json()), (200, doc(1)));
}

#[test]
fn fault_hang_never_answers() {
    let c = Controller::start(TOKEN);
    c.set_document(NODE, doc(1));
    c.set_fault(Fault::Hang);
    let began = Instant::now();
    let error = poll_at(c.addr(), NODE, "30s", None, Duration::from_millis(300)).expect_err("no answer");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{error:?}"
    );
    assert!(began.elapsed() >= Duration::from_millis(290));
    let polls = c.polls(NODE);
    assert_eq!(polls.len(), 1, "the request was received");
    assert_eq!(polls[0].status, None);

    // Reports hang too.
    let auth = bearer();
    let gz = [("Authorization", auth.as_str()), ("Content-Encoding", "gzip")];
    let path = format!("/v1/nodes/{NODE}/report");
    let result = call(c.addr(), "POST", &path, &gz, &gzip(b"{}"), Duration::from_millis(200));
    assert!(result.is_err(), "{result:?}");
    assert!(c.reports(NODE).is_empty());

    c.set_fault(Fault::None);
    assert_eq!(poll(&c, NODE, "30s", None).status, 200);
}

#[test]
fn stop_closes_held_polls_and_start_on_the_same_address_works() {
    let c = Controller::start(TOKEN);
    let addr = c.addr();
    let held = std::thread::spawn(move || {
        let result = poll_at(addr, NODE, "30s", None, Duration::from_secs(5));
        (result, Instant::now())
    });
    c.wait_for_held_poll(NODE, Duration::from_secs(2));
    c.set_fault(Fault::Hang);
    let hung = std::thread::spawn(move || {
        let result = poll_at(addr, "other", "30s", None, Duration::from_secs(5));
        (result, Instant::now())
    });
    c.wait_for_polls("other", 1, Duration::from_secs(2));

    let stopping = Instant::now();
    c.stop();
    assert!(!c.is_running());
    for client in [held, hung] {
        let (result, at) = client.join().unwrap();
        assert!(result.is_err(), "closed without an answer: {result:?}");
        assert!(
            at - stopping < Duration::from_secs(1),
            "closed {:?} after stop",
            at - stopping
        );
    }
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
    assert_eq!(c.held_polls(NODE), 0);
    c.stop(); // again: nothing

    let d = Controller::start_on(addr, TOKEN);
    assert_eq!(d.addr(), addr);
    assert_eq!(d.url(), format!("http://{addr}"));
    d.set_document(NODE, doc(4));
    let a = poll(&d, NODE, "1s", None);
    assert_eq!((a.status, a.header("etag")), (200, Some("\"4\"")));
    drop(d);
    assert!(TcpStream::connect(addr).is_err(), "drop stops it");
}

#[test]
fn restart_serves_the_same_state_on_the_same_address() {
    let c = Controller::start(TOKEN);
    c.set_document(NODE, doc(9));
    assert_eq!(poll(&c, NODE, "1s", None).status, 200);
    c.stop();
    assert!(poll_at(c.addr(), NODE, "1s", None, Duration::from_secs(1)).is_err());
    c.set_document(NODE, doc(10));
    c.restart();
    assert!(c.is_running());
    let a = poll(&c, NODE, "1s", Some("\"9\""));
    assert_eq!((a.status, a.header("etag")), (200, Some("\"10\"")));
    assert_eq!(
        c.poll_count(NODE),
        2,
        "the poll while stopped never arrived\n{}",
        c.diagnostics()
    );
}

// ----- HTTPS -----

/// A TLS client configuration (ring, like the agent) that trusts `roots` and presents
/// `identity` if given.
fn tls_client(roots: &[&Ca], identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut store = rustls::RootCertStore::empty();
    for ca in roots {
        store.add(CertificateDer::from(ca.der())).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(id.der.clone())],
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    Arc::new(config)
}

/// Like [`call`] over TLS to `server_name` (an IP address or a DNS name).
#[allow(clippy::too_many_arguments)]
fn call_tls(
    config: &Arc<rustls::ClientConfig>,
    server_name: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).expect("a server name");
    let connection = rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(timeout))?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    exchange(&mut stream, addr, method, path, headers, body)
}

/// `GET …/desired-state?wait=…` with the token over TLS to 127.0.0.1.
fn poll_tls(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    node: &str,
    wait: &str,
    timeout: Duration,
) -> std::io::Result<Answer> {
    let auth = bearer();
    let path = format!("/v1/nodes/{node}/desired-state?wait={wait}");
    call_tls(
        config,
        "127.0.0.1",
        addr,
        "GET",
        &path,
        &[("Authorization", auth.as_str())],
        b"",
        timeout,
    )
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[test]
fn https_serves_the_same_protocol() {
    let ca = Ca::new("harness server CA");
    let server = ca.server(&["127.0.0.1", "localhost"]);
    let c = Controller::start_tls(localhost(), TOKEN, &server.cert_pem, &server.key_pem, None);
    assert!(c.url().starts_with("https://127.0.0.1:"), "{}", c.url());
    assert!(c.is_tls() && !c.requires_client_cert());
    c.set_document(NODE, doc(7));
    let client = tls_client(&[&ca], None);
    let t = Duration::from_secs(5);

    let a = poll_tls(&client, c.addr(), NODE, "30s", t).expect("poll over TLS");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("etag"), Some("\"7\""));
    assert_eq!(a.json(), doc(7));
    // By DNS name too, and a held poll answered 304.
    let auth = bearer();
    let path = format!("/v1/nodes/{NODE}/desired-state?wait=200ms");
    let headers = [("Authorization", auth.as_str()), ("If-None-Match", "\"7\"")];
    let a = call_tls(&client, "localhost", c.addr(), "GET", &path, &headers, b"", t).unwrap();
    assert_eq!(a.status, 304, "{}", a.text());
    // A report, and a call without the token.
    let report = json!({"observed_generation": 7});
    let gz = [("Authorization", auth.as_str()), ("Content-Encoding", "gzip")];
    let path = format!("/v1/nodes/{NODE}/report");
    let body = gzip(report.to_string().as_bytes());
    let a = call_tls(&client, "127.0.0.1", c.addr(), "POST", &path, &gz, &body, t).unwrap();
    assert_eq!(a.status, 204, "{}", a.text());
    assert_eq!(c.reports(NODE), vec![report]);
    let a = call_tls(&client, "127.0.0.1", c.addr(), "GET", "/elsewhere", &[], b"", t).unwrap();
    assert_eq!(a.status, 401);

    assert_eq!(c.tls_handshakes(), 4, "{}", c.diagnostics());
    assert_eq!(c.tls_failures(), 0, "{}", c.diagnostics());
    assert!(c.polls(NODE).iter().all(|p| p.client_cert.is_none()));
    assert!(
        c.diagnostics().contains("TLS: 4 handshakes, 0 failed"),
        "{}",
        c.diagnostics()
    );
}

#[test]
fn failed_handshakes_are_recorded_and_do_not_stop_the_server() {
    let ca = Ca::new("harness server CA");
    let server = ca.server(&["127.0.0.1"]);
    let c = Controller::start_tls(localhost(), TOKEN, &server.cert_pem, &server.key_pem, None);
    c.set_document(NODE, doc(1));
    let t = Duration::from_secs(5);

    // A client that does not trust the server's CA gives up in the handshake.
    let stranger = Ca::new("some other CA");
    let error = poll_tls(&tls_client(&[&stranger], None), c.addr(), NODE, "1s", t).expect_err("untrusted");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    let failures = c.wait_for_tls_failures(1, t);
    assert!(failures[0].error.contains("UnknownCA"), "{failures:?}");
    assert_eq!(failures[0].peer.ip(), c.addr().ip());
    // The certificate is for 127.0.0.1, not for localhost.
    let path = format!("/v1/nodes/{NODE}/desired-state?wait=1s");
    let client = tls_client(&[&ca], None);
    let error = call_tls(&client, "localhost", c.addr(), "GET", &path, &[], b"", t).expect_err("wrong name");
    assert!(error.to_string().contains("not valid for name"), "{error}");
    c.wait_for_tls_failures(2, t);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = call(c.addr(), "GET", &path, &[], b"", t);
    assert!(plain.is_err(), "{plain:?}");
    c.wait_for_tls_failures(3, t);
    // A client that connects and says nothing does not hold up others.
    let silent = TcpStream::connect(c.addr()).unwrap();
    let began = Instant::now();
    let a = poll_tls(&client, c.addr(), NODE, "1s", t).expect("a trusting client is served");
    assert_eq!(a.status, 200);
    assert!(began.elapsed() < Duration::from_secs(1), "took {:?}", began.elapsed());
    drop(silent);
    let failures = c.wait_for_tls_failures(4, t);
    assert_eq!(c.tls_failures(), 4, "{failures:?}");
    assert_eq!(c.tls_handshakes(), 1);
    // None of these reached the handlers.
    assert_eq!(c.request_count(), 1);
    assert!(c.diagnostics().contains("TLS failure"), "{}", c.diagnostics());
}

#[test]
fn with_a_client_ca_only_its_certificates_are_let_in() {
    let server_ca = Ca::new("harness server CA");
    let server = server_ca.server(&["127.0.0.1"]);
    let client_ca = Ca::new("harness client CA");
    let c = Controller::start_tls(
        localhost(),
        TOKEN,
        &server.cert_pem,
        &server.key_pem,
        Some(&client_ca.cert_pem()),
    );
    assert!(c.requires_client_cert());
    c.set_document(NODE, doc(3));
    let t = Duration::from_secs(5);

    // No certificate.
    let error = poll_tls(&tls_client(&[&server_ca], None), c.addr(), NODE, "1s", t).expect_err("no certificate");
    let failures = c.wait_for_tls_failures(1, t);
    assert!(
        failures[0].error.contains("no certificates"),
        "{failures:?} (client: {error})"
    );
    // A certificate from another CA, even one the server's CA signed.
    let stranger = Ca::new("harness stranger CA");
    for (n, issuer) in [&stranger, &server_ca].into_iter().enumerate() {
        let foreign = issuer.client("test-node");
        let client = tls_client(&[&server_ca], Some(&foreign));
        let result = poll_tls(&client, c.addr(), NODE, "1s", t);
        assert!(result.is_err(), "{result:?}");
        let failures = c.wait_for_tls_failures(2 + n, t);
        assert!(
            failures[1 + n].error.contains("invalid peer certificate"),
            "{failures:?}"
        );
    }
    assert_eq!(c.poll_count(NODE), 0);

    // A certificate from the client CA.
    let mine = client_ca.client("test-node");
    let a = poll_tls(&tls_client(&[&server_ca], Some(&mine)), c.addr(), NODE, "1s", t).expect("poll");
    assert_eq!((a.status, a.json()), (200, doc(3)));
    assert_eq!(c.polls(NODE)[0].client_cert.as_deref(), Some(mine.der.as_slice()));
    assert_eq!(c.tls_handshakes(), 1);
    assert_eq!(c.tls_failures(), 3);
}

#[test]
fn https_stop_and_restart() {
    let ca = Ca::new("harness server CA");
    let server = ca.server(&["127.0.0.1"]);
    let client_ca = Ca::new("harness client CA");
    let mine = client_ca.client("test-node");
    let c = Controller::start_tls(
        localhost(),
        TOKEN,
        &server.cert_pem,
        &server.key_pem,
        Some(&client_ca.cert_pem()),
    );
    let url = c.url();
    let client = tls_client(&[&ca], Some(&mine));
    let addr = c.addr();
    let held = {
        let client = client.clone();
        std::thread::spawn(move || poll_tls(&client, addr, NODE, "30s", Duration::from_secs(5)))
    };
    c.wait_for_held_poll(NODE, Duration::from_secs(2));
    let stopping = Instant::now();
    c.stop();
    let result = held.join().unwrap();
    assert!(result.is_err(), "closed without an answer: {result:?}");
    assert!(stopping.elapsed() < Duration::from_secs(1));
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");

    c.set_document(NODE, doc(5));
    c.restart();
    assert_eq!(c.url(), url);
    let a = poll_tls(&client, addr, NODE, "1s", Duration::from_secs(5)).expect("served again over TLS");
    assert_eq!((a.status, a.header("etag")), (200, Some("\"5\"")));
    // Still requiring a client certificate.
    assert!(poll_tls(&tls_client(&[&ca], None), addr, NODE, "1s", Duration::from_secs(5)).is_err());
    c.wait_for_tls_failures(1, Duration::from_secs(5));
    assert_eq!(c.tls_handshakes(), 2);
}

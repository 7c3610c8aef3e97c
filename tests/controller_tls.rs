//! The agent's HTTPS to the control centre: the real agent binary against the fake
//! controller serving TLS (`Controller::start_tls`), with a test PKI made in each test
//! (`common::tls`): trusting only `ca_file`, refusing a certificate it cannot verify
//! while it keeps running, mutual TLS with `client_cert` and `client_key`, and TLS
//! files that stop it at start.

mod common;

use common::controller::Controller;
use common::openapi::Spec;
use common::tls::{write_pem, Ca, Issued};
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "controller-token-0123456789";
const NODE: &str = "test-node";

/// The fake controller's address: 127.0.0.1 on a free port.
fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An HTTPS controller with a certificate for 127.0.0.1 from `server_ca`, requiring
/// client certificates from `client_ca` if given.
fn https_controller(server_ca: &Ca, client_ca: Option<&Ca>) -> Controller {
    let server = server_ca.server(&["127.0.0.1"]);
    let client_ca_pem = client_ca.map(Ca::cert_pem);
    let controller = Controller::start_tls(
        localhost(),
        TOKEN,
        &server.cert_pem,
        &server.key_pem,
        client_ca_pem.as_deref(),
    );
    assert!(
        controller.url().starts_with("https://127.0.0.1:"),
        "{}",
        controller.url()
    );
    controller
}

/// A harness whose agent is controlled by `controller` (fast intervals for tests).
/// `tls` writes the agent's TLS files into the harness directory and returns their
/// lines for `[controller]` (paths relative to agent.toml).
fn controlled(controller: &Controller, tls: impl FnOnce(&Path) -> String) -> Harness {
    let h = Harness::new();
    let token = h.path().join("controller.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tls_lines = tls(h.path());
    let mut config = std::fs::read_to_string(h.config_path()).unwrap();
    config.push_str(&format!(
        "\n[controller]\nurl = \"{}\"\ntoken_file = \"controller.token\"\nreport_interval = \"300ms\"\npoll_wait = \"500ms\"\n{tls_lines}",
        controller.url()
    ));
    std::fs::write(h.config_path(), config).unwrap();
    h
}

/// Writes `ca` as `dir/ca.pem`; the `ca_file` line.
fn ca_file(dir: &Path, ca: &Ca) -> String {
    ca.write(dir, "ca.pem");
    "ca_file = \"ca.pem\"\n".to_string()
}

/// Writes `identity` as `dir/client.crt` and `dir/client.key` (0600); the
/// `client_cert` and `client_key` lines.
fn client_identity(dir: &Path, identity: &Issued) -> String {
    identity.write(dir, "client");
    "client_cert = \"client.crt\"\nclient_key = \"client.key\"\n".to_string()
}

/// One Redis instance "a" on `port`, generation 1.
fn document(port: u16) -> Value {
    json!({"generation": 1, "instances": [{"name": "a", "port": port, "version": "7.0"}]})
}

/// Waits until the agent's `controller.poll_error` is set, and returns it.
fn wait_for_poll_error(h: &Harness) -> String {
    h.wait_for("a poll error in /v1/status", Duration::from_secs(10), |h| {
        h.status()["controller"]["poll_error"].is_string()
    });
    h.status()["controller"]["poll_error"].as_str().unwrap().to_string()
}

/// The agent calls the controller in vain: no request got through the handshake, no
/// document is applied, and the agent keeps running and serving its API.
fn assert_nothing_got_through(h: &mut Harness, controller: &Controller, port: u16) {
    // Several report intervals and retries.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        controller.request_count(),
        0,
        "a request got through\n{}",
        controller.diagnostics()
    );
    assert_eq!(controller.tls_handshakes(), 0, "{}", controller.diagnostics());
    // Retried with back-off (polls and reports each from 1 s, doubling), not in a loop.
    let failures = controller.tls_failures();
    assert!(
        (2..30).contains(&failures),
        "{failures} failed handshakes\n{}",
        controller.diagnostics()
    );
    let status = h.status();
    assert!(status["controller"]["report_error"].is_string(), "{status}");
    assert!(status["controller"]["last_poll_ok_ms"].is_null(), "{status}");
    assert!(status["desired"]["generation"].is_null(), "{status}");
    assert_eq!(status["instances"], json!([]), "{status}");
    assert!(listener_pid(port).is_none(), "something listens on the instance's port");
    let exited = h.agent.as_mut().unwrap().try_wait().unwrap();
    assert!(exited.is_none(), "the agent exited: {exited:?}\n{}", h.diagnostics());
    assert_eq!(h.http_get("/healthz").unwrap().0, 200);
}

#[test]
fn https_without_ca_file_on_a_host_without_trust_roots_says_what_to_install() {
    let server_ca = Ca::new("controller CA");
    let controller = https_controller(&server_ca, None);
    let mut h = controlled(&controller, |_| String::new());
    h.without_system_trust_roots();
    let out = run_to_exit(&h);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("install ca-certificates, or name the controller's CA in [controller] ca_file"),
        "{stderr}"
    );
    assert_eq!(controller.tls_failures(), 0, "{}", controller.diagnostics());
}

/// Runs `ker-agent run` in `h`, which must exit within 10 s; its output.
fn run_to_exit(h: &Harness) -> Output {
    let child = Command::new(AGENT)
        .args(["run", "--config"])
        .arg(h.config_path())
        .current_dir(h.path())
        .envs(h.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ker-agent");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiter = std::thread::spawn(move || child.wait_with_output().expect("wait for ker-agent"));
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            send_signal(pid, SIGKILL);
            let output = waiter.join().unwrap();
            panic!(
                "the agent did not exit within 10 s\n--- stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    waiter.join().unwrap()
}

#[test]
fn an_agent_trusting_the_test_ca_is_controlled_over_https() {
    let server_ca = Ca::new("controller CA");
    let controller = https_controller(&server_ca, None);
    let port = free_port();
    controller.set_document(NODE, document(port));
    let mut h = controlled(&controller, |dir| ca_file(dir, &server_ca));
    h.start_agent();
    h.wait_ready("a");
    let report = controller.wait_for_report(NODE, Duration::from_secs(10), |r| {
        r["observed_generation"] == 1
            && r["instances"]
                .as_array()
                .is_some_and(|i| i.len() == 1 && i[0]["ready"] == true)
    });
    Spec::load().check("Report", &report);

    let status = h.status();
    assert!(status["controller"]["poll_error"].is_null(), "{status}");
    assert!(status["controller"]["report_error"].is_null(), "{status}");
    assert!(
        status["controller"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://127.0.0.1:")),
        "{status}"
    );
    assert_eq!(status["desired"]["generation"], 1);
    assert_eq!(controller.tls_failures(), 0, "{}", controller.diagnostics());
    assert!(controller.tls_handshakes() >= 1);
    let polls = controller.polls(NODE);
    assert!(polls.iter().all(|p| p.authorized && p.client_cert.is_none()));
    assert_eq!(polls[0].status, Some(200));
}

#[test]
fn without_ca_file_the_test_ca_is_not_trusted_and_the_agent_keeps_running() {
    let server_ca = Ca::new("controller CA");
    let controller = https_controller(&server_ca, None);
    let port = free_port();
    controller.set_document(NODE, document(port));
    // No ca_file: the system's roots, which do not include the test CA.
    let mut h = controlled(&controller, |_| String::new());
    h.start_agent();
    let error = wait_for_poll_error(&h);
    assert!(error.contains(&controller.url()), "{error}");
    let lower = error.to_lowercase();
    assert!(
        lower.contains("certificate") && (lower.contains("unknownissuer") || lower.contains("unknown issuer")),
        "not a certificate error: {error}"
    );
    assert_nothing_got_through(&mut h, &controller, port);
    let failures = controller.tls_failure_records();
    assert!(failures.iter().all(|f| f.error.contains("UnknownCA")), "{failures:?}");
    // Said loudly, with what to fix.
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    assert!(
        log.contains("TLS with the controller failed; fix [controller] as the error says"),
        "{log}"
    );
    assert!(error.contains("set [controller] ca_file to its CA"), "{error}");
}

#[test]
fn an_agent_without_a_client_certificate_is_refused_by_a_controller_requiring_one() {
    let server_ca = Ca::new("controller CA");
    let client_ca = Ca::new("client CA");
    let controller = https_controller(&server_ca, Some(&client_ca));
    let port = free_port();
    controller.set_document(NODE, document(port));
    let mut h = controlled(&controller, |dir| ca_file(dir, &server_ca));
    h.start_agent();
    let error = wait_for_poll_error(&h);
    assert!(error.contains(&controller.url()), "{error}");
    assert_nothing_got_through(&mut h, &controller, port);
    let failures = controller.tls_failure_records();
    assert!(
        failures.iter().all(|f| f.error.contains("no certificates")),
        "{failures:?}"
    );
}

#[test]
fn an_agent_with_a_client_certificate_from_the_client_ca_is_controlled() {
    let server_ca = Ca::new("controller CA");
    let client_ca = Ca::new("client CA");
    let controller = https_controller(&server_ca, Some(&client_ca));
    let port = free_port();
    controller.set_document(NODE, document(port));
    let identity = client_ca.client(NODE);
    let mut h = controlled(&controller, |dir| {
        let lines = ca_file(dir, &server_ca) + &client_identity(dir, &identity);
        // Readable by the agent's group is allowed.
        std::fs::set_permissions(dir.join("client.key"), std::fs::Permissions::from_mode(0o640)).unwrap();
        lines
    });
    h.start_agent();
    h.wait_ready("a");
    controller.wait_for_report(NODE, Duration::from_secs(10), |r| r["observed_generation"] == 1);
    let status = h.status();
    assert!(status["controller"]["poll_error"].is_null(), "{status}");
    assert_eq!(controller.tls_failures(), 0, "{}", controller.diagnostics());
    // Every call came with the agent's certificate.
    let polls = controller.polls(NODE);
    assert!(
        polls
            .iter()
            .all(|p| p.client_cert.as_deref() == Some(identity.der.as_slice())),
        "{}",
        controller.diagnostics()
    );
    let reports = controller.report_attempts(NODE);
    assert!(!reports.is_empty());
    assert!(reports
        .iter()
        .all(|r| r.client_cert.as_deref() == Some(identity.der.as_slice())));
}

#[test]
fn an_agent_with_a_client_certificate_from_another_ca_is_refused() {
    let server_ca = Ca::new("controller CA");
    let client_ca = Ca::new("client CA");
    let controller = https_controller(&server_ca, Some(&client_ca));
    let port = free_port();
    controller.set_document(NODE, document(port));
    let stranger = Ca::new("another CA");
    let identity = stranger.client(NODE);
    let mut h = controlled(&controller, |dir| {
        ca_file(dir, &server_ca) + &client_identity(dir, &identity)
    });
    h.start_agent();
    wait_for_poll_error(&h);
    assert_nothing_got_through(&mut h, &controller, port);
    let failures = controller.tls_failure_records();
    assert!(
        failures
            .iter()
            .all(|f| f.error.contains("invalid peer certificate") && f.error.contains("UnknownIssuer")),
        "{failures:?}"
    );
}

#[test]
fn a_client_key_readable_by_others_stops_the_agent_at_start() {
    let server_ca = Ca::new("controller CA");
    let client_ca = Ca::new("client CA");
    let controller = https_controller(&server_ca, Some(&client_ca));
    let identity = client_ca.client(NODE);
    let h = controlled(&controller, |dir| {
        let lines = ca_file(dir, &server_ca) + &client_identity(dir, &identity);
        std::fs::set_permissions(dir.join("client.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        lines
    });
    let output = run_to_exit(&h);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let key = h.path().join("client.key");
    assert!(
        stderr.contains(&format!(
            "[controller] client_key {} is accessible to other users",
            key.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("mode 644"), "{stderr}");
    assert_eq!(controller.tls_handshakes() + controller.tls_failures() as u64, 0);
}

#[test]
fn unusable_tls_files_stop_the_agent_at_start() {
    let server_ca = Ca::new("controller CA");
    let client_ca = Ca::new("client CA");
    let controller = https_controller(&server_ca, Some(&client_ca));
    let one = client_ca.client(NODE);
    let other = client_ca.client(NODE);
    let mismatched = Issued {
        key_pem: other.key_pem.clone(),
        ..one.clone()
    };
    type Setup = fn(&Path, &Ca, &Issued, &Issued) -> String;
    let cases: [(&str, Setup, &str); 4] = [
        (
            "a certificate with another certificate's key",
            |dir, ca, _, mismatched| ca_file(dir, ca) + &client_identity(dir, mismatched),
            "cannot build the HTTPS client for the controller",
        ),
        (
            "a CA file that is not PEM",
            |dir, _, one, _| {
                write_pem(dir, "ca.pem", "not a certificate\n", 0o644);
                "ca_file = \"ca.pem\"\n".to_string() + &client_identity(dir, one)
            },
            "[controller] ca_file",
        ),
        (
            "a client key that does not exist",
            |dir, ca, one, _| {
                let lines = ca_file(dir, ca) + &client_identity(dir, one);
                std::fs::remove_file(dir.join("client.key")).unwrap();
                lines
            },
            "cannot read [controller] client_key",
        ),
        (
            "a client key file without a key",
            |dir, ca, one, _| {
                let lines = ca_file(dir, ca) + &client_identity(dir, one);
                write_pem(dir, "client.key", &one.cert_pem, 0o600);
                lines
            },
            "are not a valid PEM certificate and key",
        ),
    ];
    for (what, setup, expected) in cases {
        let h = controlled(&controller, |dir| setup(dir, &server_ca, &one, &mismatched));
        let output = run_to_exit(&h);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(expected), "{what}: {stderr}");
    }
    assert_eq!(controller.tls_handshakes() + controller.tls_failures() as u64, 0);
}

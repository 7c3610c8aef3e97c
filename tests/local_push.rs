//! `PUT /v1/desired-state` in standalone mode: a desired-state document from the local
//! API, against real `redis-server` processes.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const TOKEN: &str = "a-long-random-token-0123456789";

/// A harness whose API has a token file (mode 0600).
fn harness_with_token() -> Harness {
    let h = Harness::with_agent_toml("", "");
    let token = h.path().join("api.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(h.config_path()).unwrap();
    let config = config.replace("[api]\n", "[api]\ntoken_file = \"api.token\"\n");
    std::fs::write(h.config_path(), config).unwrap();
    h
}

fn put(h: &Harness, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let (code, body) = http_send(h.api_port, "PUT", "/v1/desired-state", &headers, body.as_bytes()).unwrap();
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

fn document(generation: u64, instances: &[(&str, u16, &str)]) -> String {
    let specs: Vec<String> = instances
        .iter()
        .map(|(name, port, extra)| format!(r#"{{"name": "{name}", "port": {port}, "version": "7.0"{extra}}}"#))
        .collect();
    format!(r#"{{"generation": {generation}, "instances": [{}]}}"#, specs.join(", "))
}

#[test]
fn documents_create_change_and_remove_instances() {
    let mut h = harness_with_token();
    let (pa, pb) = (free_port(), free_port());
    h.start_agent();

    let (code, body) = put(&h, Some(TOKEN), &document(1, &[("a", pa, ""), ("b", pb, "")]));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["accepted"], true);
    assert_eq!(body["generation"], 1);
    let a = h.wait_ready("a");
    let b = h.wait_ready("b");
    assert!(pong(pa, None) && pong(pb, None));
    let status = h.status();
    assert_eq!(status["desired"]["generation"], 1);
    assert_eq!(status["desired"]["source"], "local");
    // Persisted before it was applied.
    let saved = std::fs::read_to_string(h.path().join("data/desired.json")).unwrap();
    assert!(saved.contains("\"generation\": 1"), "{saved}");

    // The same document again changes nothing.
    let (code, body) = put(&h, Some(TOKEN), &document(1, &[("a", pa, ""), ("b", pb, "")]));
    assert_eq!(
        (code, &body["unchanged"]),
        (200, &serde_json::Value::Bool(true)),
        "{body}"
    );

    // Generation 2 changes a (live) and removes b.
    let (code, body) = put(&h, Some(TOKEN), &document(2, &[("a", pa, r#", "maxmemory": "20mb""#)]));
    assert_eq!(code, 200, "{body}");
    h.wait_for("b removed and a reconfigured", Duration::from_secs(15), |h| {
        h.instance("b").is_null() && config_get(pa, None, "maxmemory") == "20971520"
    });
    assert_eq!(h.instance("a")["pid"], a, "a was restarted for a live change");
    assert!(!alive(b));
    assert_eq!(h.status()["desired"]["generation"], 2);
}

#[test]
fn bad_documents_change_nothing_and_say_why() {
    let mut h = harness_with_token();
    let (pa, pm) = (free_port(), free_port());
    h.manifest("static", pm, "");
    h.start_agent();
    let (code, _) = put(&h, Some(TOKEN), &document(5, &[("a", pa, "")]));
    assert_eq!(code, 200);
    let a = h.wait_ready("a");
    let unchanged = |h: &Harness| {
        assert_eq!(h.instance("a")["pid"], a);
        assert_eq!(h.status()["desired"]["generation"], 5);
    };

    // No or a wrong token.
    assert_eq!(put(&h, None, &document(6, &[])).0, 401);
    assert_eq!(put(&h, Some("wrong-token-of-some-length"), &document(6, &[])).0, 401);
    unchanged(&h);

    // Invalid: every problem with its field.
    let (code, body) = put(
        &h,
        Some(TOKEN),
        r#"{"generation": 6, "instances": [{"name": "a", "port": 80, "version": "7.0", "bogus": 1}]}"#,
    );
    assert_eq!(code, 422, "{body}");
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems.contains(&"local document generation 6: instances[0].port: 80 is outside 1024-65535"),
        "{problems:?}"
    );
    assert!(problems
        .iter()
        .any(|p| p.starts_with("local document generation 6: instances[0].bogus: unknown key")));
    let rejection = &h.status()["desired"]["last_rejection"];
    assert_eq!(rejection["source"], "local");
    unchanged(&h);

    // A name that a manifest declares.
    let (code, body) = put(
        &h,
        Some(TOKEN),
        &document(6, &[("a", pa, ""), ("static", free_port(), "")]),
    );
    assert_eq!(code, 422, "{body}");
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap()
            .contains("\"static\" is already declared"),
        "{body}"
    );
    unchanged(&h);

    // An older generation is ignored and reported.
    let (code, body) = put(&h, Some(TOKEN), &document(4, &[]));
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["error"],
        "generation 4 is older than the accepted generation 5; ignored"
    );
    assert_eq!(h.status()["desired"]["last_rejection"]["generation"], 4);
    unchanged(&h);

    // Not JSON, and a body over the limit.
    let (code, body) = put(&h, Some(TOKEN), "not json");
    assert_eq!(code, 422, "{body}");
    assert!(
        body["problems"][0].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let huge = format!(
        r#"{{"generation": 7, "instances": [], "pad": "{}"}}"#,
        "x".repeat(11 * 1024 * 1024)
    );
    let (code, _) = put(&h, Some(TOKEN), &huge);
    assert_eq!(code, 413);
    unchanged(&h);
    assert!(h.instance("static")["ready"] == true);
}

#[test]
fn the_accepted_document_survives_an_agent_restart() {
    let mut h = harness_with_token();
    let port = free_port();
    h.start_agent();
    assert_eq!(put(&h, Some(TOKEN), &document(3, &[("a", port, "")])).0, 200);
    let pid = h.wait_ready("a");
    h.stop_agent(SIGTERM);
    h.start_agent();
    h.wait_for("a adopted from desired.json", Duration::from_secs(10), |h| {
        h.instance("a")["ready"] == true
    });
    assert_eq!(h.instance("a")["pid"], pid);
    assert_eq!(h.status()["desired"]["generation"], 3);
}

#[test]
fn mutating_calls_need_a_private_token_file() {
    // Without a token file, PUT is refused.
    let mut h = Harness::new();
    h.start_agent();
    let (code, body) = put(&h, Some(TOKEN), &document(1, &[]));
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no [api] token_file"));
    h.stop_agent(SIGTERM);

    // A token file others can read stops the agent from starting, with the reason.
    let h = harness_with_token();
    std::fs::set_permissions(h.path().join("api.token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = h.cli(&["run", "--config", h.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is accessible to other users (mode 644)"), "{stderr}");
}

#[test]
fn sighup_reads_the_api_token_again_and_keeps_the_old_one_when_the_new_file_is_refused() {
    let mut h = harness_with_token();
    let port = free_port();
    h.start_agent();
    assert_eq!(put(&h, Some(TOKEN), &document(1, &[])).0, 200);
    assert!(h.status()["secret_files"].is_null());

    // A new token: in use after SIGHUP, the old one no longer.
    let token_file = h.path().join("api.token");
    let second = "a-second-long-token-9876543210";
    std::fs::write(&token_file, format!("{second}\n")).unwrap();
    h.signal_agent(SIGHUP);
    h.wait_for("the reload", Duration::from_secs(10), |h| {
        !h.status()["secret_files"].is_null()
    });
    assert_eq!(h.status()["secret_files"]["problems"], serde_json::json!([]));
    assert_eq!(put(&h, Some(TOKEN), &document(2, &[])).0, 401);
    assert_eq!(put(&h, Some(second), &document(2, &[("a", port, "")])).0, 200);
    h.wait_ready("a");

    // A file others may read is refused: the second token stays in use, and the
    // status and the events say so.
    std::fs::write(&token_file, "a-third-long-token-000000000000\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = h.status()["secret_files"]["reloaded_at"].clone();
    std::thread::sleep(Duration::from_millis(1100));
    h.signal_agent(SIGHUP);
    h.wait_for("the second reload", Duration::from_secs(10), |h| {
        h.status()["secret_files"]["reloaded_at"] != before
    });
    let problems = h.status()["secret_files"]["problems"].clone();
    assert!(
        problems[0]
            .as_str()
            .unwrap_or_default()
            .contains("is accessible to other users (mode 644)"),
        "{problems}"
    );
    assert_eq!(put(&h, Some(second), &document(3, &[("a", port, "")])).0, 200);
    assert_eq!(
        put(&h, Some("a-third-long-token-000000000000"), &document(4, &[])).0,
        401
    );
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    assert!(log.contains("A secret file was refused on reload"), "{log}");
    // The instance ran on through all of it.
    assert!(pong(port, None));
    let table = String::from_utf8(h.cli(&["status", "--api", &format!("127.0.0.1:{}", h.api_port)]).stdout).unwrap();
    assert!(table.contains("secret files refused at the last reload"), "{table}");
}

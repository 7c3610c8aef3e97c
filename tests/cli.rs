//! The operator's commands against a running agent with real instances: `status`
//! filtered by name and phase, `status --watch` (bounded by `--count`), and `events`
//! of the node or one instance, with `--follow` printing new events as they happen.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn api(h: &Harness) -> String {
    format!("127.0.0.1:{}", h.api_port)
}

/// Runs `ker-agent <line>` (split at spaces) against `h`'s API: exit code, stdout,
/// stderr.
fn run_cli(h: &Harness, line: &str) -> (i32, String, String) {
    let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
    words.splice(1..1, ["--api".to_string(), api(h)]);
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    let out = h.cli(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An agent with a running instance "a" and an instance "b" stopped by its spec.
fn two_instances() -> Harness {
    let mut h = Harness::new();
    h.manifest("a", free_port(), "");
    h.manifest("b", free_port(), "state = \"stopped\"");
    h.start_agent();
    h.wait_ready("a");
    h.wait_for("b stopped", Duration::from_secs(10), |h| {
        h.instance("b")["phase"] == "stopped"
    });
    h
}

#[test]
fn status_filters_by_name_and_phase() {
    let h = two_instances();
    let rows = |out: &str| -> Vec<String> {
        out.lines()
            .skip_while(|l| !l.starts_with("NAME"))
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    };
    let (code, out, err) = run_cli(&h, "status");
    assert_eq!(code, 0, "{err}");
    assert_eq!(rows(&out), ["a", "b"], "{out}");
    let (_, out, _) = run_cli(&h, "status b");
    assert_eq!(rows(&out), ["b"], "{out}");
    let (_, out, _) = run_cli(&h, "status --phase running");
    assert_eq!(rows(&out), ["a"], "{out}");
    let (_, out, _) = run_cli(&h, "status --phase crash-loop,failed");
    assert!(rows(&out).is_empty(), "{out}");
    let (_, out, _) = run_cli(&h, "status --json a");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["instances"].as_array().unwrap().len(), 1);
    assert_eq!(doc["instances"][0]["name"], "a");

    let (code, _, err) = run_cli(&h, "status a nope");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no instance named nope on this node"), "{err}");
    let (code, out, _) = run_cli(&h, "status --watch --count 1 nope");
    assert_eq!(code, 0);
    assert!(
        out.contains("no instance named nope on this node"),
        "said in the frame: {out}"
    );
    let (code, _, err) = run_cli(&h, "status --watch --interval 1ms");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("too short"), "{err}");
}

#[test]
fn status_watch_refreshes_until_its_count() {
    let h = two_instances();
    let began = Instant::now();
    let (code, out, err) = run_cli(&h, "status --watch --interval 200ms --count 3 a");
    assert_eq!(code, 0, "{err}");
    let frames: Vec<&str> = out.lines().filter(|l| l.starts_with("every 200ms: ")).collect();
    assert_eq!(frames.len(), 3, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("a ")).count(), 3, "{out}");
    assert!(!out.contains("\x1b["), "no terminal codes into a pipe: {out:?}");
    assert!(
        began.elapsed() >= Duration::from_millis(400),
        "two waits between three frames"
    );

    // An agent that goes away is reported in the frame, and the watch goes on.
    let mut h = h;
    h.stop_agent(SIGTERM);
    let (code, out, _) = run_cli(&h, "status --watch --interval 100ms --count 2");
    assert_eq!(code, 0);
    assert_eq!(out.matches("cannot reach the agent").count(), 2, "{out}");
}

#[test]
fn events_of_the_node_and_of_one_instance_and_follow() {
    let h = two_instances();
    let api = api(&h);
    let (code, out, err) = run_cli(&h, "events");
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.contains("  a  started  ")), "{out}");
    assert!(
        out.lines().any(|l| l.contains("  -  desired-accepted  ")),
        "node-wide events: {out}"
    );
    let (_, out, _) = run_cli(&h, "events a");
    assert!(!out.is_empty() && out.lines().all(|l| l.contains("  a  ")), "{out}");
    let (_, out, _) = run_cli(&h, "events --limit 1 --json a");
    assert_eq!(out.lines().count(), 1, "{out}");
    let last: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(last["instance"], "a");
    let (code, _, err) = run_cli(&h, "events --limit 0");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--limit"), "{err}");
    // The API says which parameter is wrong, too.
    let (code, _, body) = http_bytes(([127, 0, 0, 1].into(), h.api_port), "/v1/events?limit=5000", &[]).unwrap();
    assert_eq!(code, 400);
    assert!(String::from_utf8_lossy(&body).contains("limit"));
    // A closed output ends a watch quietly: no panic, no message, exit status 0 (and
    // not 124, timeout's, had it kept running).
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "timeout 10 {AGENT} status --api {api} --watch --interval 100ms | head -n 1 >/dev/null; echo ${{PIPESTATUS[0]}}"
        ))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");

    // --follow prints the restart of a killed instance as it happens.
    let mut follow = Command::new(AGENT)
        .args(["events", "--api", &api, "--follow", "--limit", "1", "a"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read on a thread, so that a line that never comes fails the test instead of
    // hanging it.
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |within: Duration| rx.recv_timeout(within).ok();
    let first = next_line(Duration::from_secs(20)).expect("a first event from events --follow within 20 s");
    assert!(first.contains("  a  "), "{first}");
    let pid = h.instance("a")["pid"].as_u64().unwrap() as u32;
    send_signal(pid, SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while let Some(line) = next_line(deadline.saturating_duration_since(Instant::now())) {
        seen.push(line.clone());
        if line.contains("  a  ready  ") {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen.iter().any(|l| l.contains("  a  exited  ")), "{seen:#?}");
    assert!(seen.iter().any(|l| l.contains("  a  started  ")), "{seen:#?}");
    assert!(seen.last().unwrap().contains("  a  ready  "), "{seen:#?}");
}

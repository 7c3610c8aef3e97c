//! Failures around the instances — a binary that cannot run, a record that cannot be
//! written, password files, changes made while the agent was down — against real
//! `redis-server` processes.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// A copy of redis-server that the test can make unusable and usable again.
fn own_redis_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let copy = dir.join("redis-server");
    std::fs::copy(redis_server(), &copy).unwrap();
    copy
}

#[test]
fn a_start_that_fails_is_retried_until_it_works() {
    let bin_dir = tempfile::tempdir().unwrap();
    let binary = own_redis_binary(bin_dir.path());
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut h = Harness::with_agent_toml(&format!("\"copy\" = \"{}\"", binary.display()), "");
    let port = free_port();
    h.manifest_with_version("a", "copy", port, "");
    h.start_agent();
    h.wait_for("a failed start", Duration::from_secs(10), |h| {
        h.instance("a")["phase"] == "failed"
    });
    let a = h.instance("a");
    assert!(a["message"].as_str().unwrap().contains("Permission denied"), "{a}");
    // The agent keeps trying: once the binary can run, the instance comes up.
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.wait_ready("a");
    assert!(pong(port, None));
}

#[test]
fn a_start_whose_record_cannot_be_written_kills_the_process_and_retries() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "");
    h.start_agent();
    let first = h.wait_ready("a");
    // A directory where the record should go: the atomic rename onto it fails.
    let record = h.instance_dir("a").join("instance.json");
    std::fs::remove_file(&record).unwrap();
    std::fs::create_dir(&record).unwrap();
    send_signal(first, SIGKILL);
    h.wait_for("the failed start", Duration::from_secs(10), |h| {
        h.instance("a")["phase"] == "failed"
    });
    let a = h.instance("a");
    let message = a["message"].as_str().unwrap();
    assert!(
        message.contains("instance.json"),
        "the message does not name the record: {a}"
    );
    assert!(message.contains("the started process was killed"), "{a}");
    // No redis-server runs without a record.
    assert_eq!(listener_pid(port), None, "a process without a record holds the port");

    std::fs::remove_dir(&record).unwrap();
    let pid = h.wait_ready("a");
    assert_eq!(listener_pid(port), Some(pid));
    assert!(std::fs::read_to_string(&record)
        .unwrap()
        .contains(&format!("\"pid\": {pid}")));
}

#[test]
fn readyz_is_503_with_the_reason_until_a_desired_state_is_accepted() {
    let mut h = Harness::new();
    h.write_manifest("a", "name = \"a\"\nport = 80\n");
    h.start_agent();
    let (code, body) = h.http_get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("no desired state accepted yet"), "{error}");
    assert!(error.contains("a.toml: port: 80 is outside 1024-65535"), "{error}");

    h.manifest("a", free_port(), "");
    h.signal_agent(SIGHUP);
    h.wait_for("/readyz 200", Duration::from_secs(10), |h| {
        h.http_get("/readyz").is_ok_and(|(code, _)| code == 200)
    });
}

#[test]
fn password_files_are_watched_and_a_rotation_applies_without_a_restart() {
    let mut h = Harness::new();
    let port = free_port();
    let old = "old-Secret-1";
    let new = "new-Secret-2";
    // The manifest names a password file that does not exist yet: rejected.
    let manifest = "password_file = \"a.pw\"\npassword_grace = \"1s\"\n[config]\nsave = \"3600 1\"\n";
    h.manifest("a", port, manifest);
    h.start_agent();
    h.wait_for("the rejection", Duration::from_secs(10), |h| {
        !h.status()["desired"]["last_rejection"].is_null()
    });
    // Creating the file is noticed by the rescan, without SIGHUP.
    std::fs::write(h.manifest_dir().join("a.pw"), format!("{old}\n")).unwrap();
    let first = h.wait_ready("a");
    assert!(pong(port, Some(old)));
    assert!(!pong(port, None));

    // Rotation: live, and after the grace period only the new password works.
    std::fs::write(h.manifest_dir().join("a.pw"), format!("{new}\n")).unwrap();
    h.wait_for("only the new password", Duration::from_secs(15), |_| {
        pong(port, Some(new)) && !pong(port, Some(old))
    });
    assert_eq!(h.instance("a")["pid"], first, "the rotation restarted the instance");

    // Neither password appears anywhere the agent writes for people.
    let (_, detail) = h.http_get("/v1/instances/a").unwrap();
    let everything = format!(
        "{}\n{}\n{}",
        std::fs::read_to_string(h.agent_log()).unwrap(),
        h.status(),
        detail
    );
    for secret in [old, new] {
        assert!(!everything.contains(secret), "{secret} leaked:\n{everything}");
    }
}

#[test]
fn a_spec_changed_while_the_agent_was_down_restarts_the_adopted_process_gracefully() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest(
        "a",
        port,
        "password = \"before\"\n[config]\nsave = \"3600 1\"\ndatabases = \"16\"\n",
    );
    h.start_agent();
    let pid = h.wait_ready("a");
    h.stop_agent(SIGTERM);
    // The password and a key only a restart changes both change while no agent runs.
    h.manifest(
        "a",
        port,
        "password = \"after\"\n[config]\nsave = \"3600 1\"\ndatabases = \"8\"\n",
    );
    h.start_agent();
    h.wait_for("the new process", Duration::from_secs(15), |h| {
        let a = h.instance("a");
        a["ready"] == true && a["pid"].as_u64().is_some_and(|p| p as u32 != pid)
    });
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    let second = log.split("===== agent start #2").nth(1).unwrap();
    assert!(second.contains("Instance adopted."), "{second}");
    // The adopted process was asked with the password it was started with.
    assert_eq!(
        h.instance("a")["last_stop"]["how"],
        "SHUTDOWN SAVE",
        "{}",
        h.instance("a")
    );
    assert!(pong(port, Some("after")));
}

#[test]
fn an_agent_restarted_during_a_crash_loop_keeps_the_counters_and_the_back_off() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("bad", port, "[config]\n\"maxmemory-policy\" = \"no-such-policy\"\n");
    h.start_agent();
    h.wait_for("crash-loop", Duration::from_secs(20), |h| {
        h.instance("bad")["phase"] == "crash-loop"
    });
    let before = h.instance("bad");
    let restarts = before["restarts"].as_u64().unwrap();
    let crashes = before["consecutive_crashes"].as_u64().unwrap();
    h.stop_agent(SIGKILL);
    h.start_agent();
    h.wait_for("the instance seen again", Duration::from_secs(10), |h| {
        h.instance("bad")["restarts"].as_u64().unwrap_or(0) > restarts
    });
    let after = h.instance("bad");
    // The new agent counts on from the old one's crashes (a fresh count would be 0 or 1).
    assert!(
        after["consecutive_crashes"].as_u64().unwrap() >= crashes,
        "crash count lost: {before} -> {after}"
    );
    assert!(
        after["restarts"].as_u64().unwrap() <= restarts + 2,
        "the restart counter was reset or the back-off forgotten: before {before}, after {after}"
    );
}

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
fn a_start_whose_records_cannot_be_written_runs_nothing_and_retries() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "");
    h.start_agent();
    let first = h.wait_ready("a");
    // Directories where the records should go: the atomic renames onto them fail.
    let (record, launch) = (
        h.instance_dir("a").join("instance.json"),
        h.instance_dir("a").join("launch.json"),
    );
    std::fs::remove_file(&record).unwrap();
    std::fs::create_dir(&record).unwrap();
    std::fs::create_dir(&launch).unwrap();
    send_signal(first, SIGKILL);
    let message = |h: &Harness| h.instance("a")["message"].as_str().unwrap_or_default().to_string();
    // No launch record: the server is not started at all.
    h.wait_for("the start refused", Duration::from_secs(10), |h| {
        h.instance("a")["phase"] == "failed" && message(h).contains("launch.json")
    });
    assert!(
        message(&h).contains("the server is not started without its record"),
        "{}",
        message(&h)
    );
    assert_eq!(listener_pid(port), None, "a process without a record holds the port");
    // A launch record but no final record: the started server is killed at once.
    std::fs::remove_dir(&launch).unwrap();
    h.wait_for("the started process killed", Duration::from_secs(20), |h| {
        message(h).contains("instance.json") && message(h).contains("the started process was killed")
    });
    assert_eq!(listener_pid(port), None, "a process without a record holds the port");

    std::fs::remove_dir(&record).unwrap();
    let pid = h.wait_ready("a");
    assert_eq!(listener_pid(port), Some(pid));
    assert!(std::fs::read_to_string(&record)
        .unwrap()
        .contains(&format!("\"pid\": {pid}")));
    assert!(!launch.exists(), "the launch record stays after the start");
}

/// What an agent killed between spawning a server and recording its pid leaves: the
/// record it wrote before the spawn (no pid; the data directory and the moment of the
/// start) and, if the spawn happened, a server running in that directory. The
/// previous process of the instance is killed first, so that only the new one exists.
fn interrupted_start(h: &Harness, name: &str, spawned: bool) -> Option<std::process::Child> {
    let dir = h.instance_dir(name);
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("instance.json")).unwrap()).unwrap();
    send_signal(record["pid"].as_u64().unwrap() as u32, SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    record["pid"] = serde_json::json!(0);
    record["start_ticks"] = serde_json::json!(0);
    record["launch"] = serde_json::json!({
        "working_dir": dir.join("data"),
        "not_before_ticks": (uptime * 100.0) as u64 - 1,
    });
    std::fs::write(dir.join("launch.json"), record.to_string()).unwrap();
    std::fs::remove_file(dir.join("instance.json")).unwrap();
    spawned.then(|| spawn_like_the_agent(h, name))
}

/// Waits until `port` answers PING, or fails with `what`.
fn wait_pong(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !pong(port, None) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// redis-server started for instance `name` as the agent starts it: its config file,
/// its data directory as working directory, in a session of its own.
fn spawn_like_the_agent(h: &Harness, name: &str) -> std::process::Child {
    let dir = h.instance_dir(name);
    std::process::Command::new("setsid")
        .arg(redis_server())
        .arg(dir.join("redis.conf"))
        .current_dir(dir.join("data"))
        .env_clear()
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// An agent with instance `a` running, killed: returns the harness, the port and
/// the pid of `a`'s server.
fn agent_killed_with_a_running() -> (Harness, u16, u32) {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "");
    h.start_agent();
    let pid = h.wait_ready("a");
    h.stop_agent(SIGKILL);
    (h, port, pid)
}

#[test]
fn a_server_whose_pid_was_never_recorded_is_found_and_adopted() {
    let (mut h, port, _) = agent_killed_with_a_running();
    let child = interrupted_start(&h, "a", true);
    let pid = child.as_ref().unwrap().id();
    wait_pong(port, "the unrecorded server did not start");

    h.start_agent();
    assert_eq!(h.wait_ready("a"), pid, "the unrecorded server was not adopted");
    let a = h.instance("a");
    assert_ne!(a["phase"], "conflict", "{a}");
    assert_eq!(a["restarts"], 0, "{a}");
    assert_eq!(count_events(&h, "a", "started"), 0, "{:?}", events(&h, "a"));
    let record = std::fs::read_to_string(h.instance_dir("a").join("instance.json")).unwrap();
    assert!(record.contains(&format!("\"pid\": {pid}")), "{record}");
    assert!(!h.instance_dir("a").join("launch.json").exists());
    // The completed record proves ownership to the next agent the usual way.
    h.stop_agent(SIGTERM);
    h.start_agent();
    assert_eq!(h.wait_ready("a"), pid);
}

#[test]
fn a_restart_after_a_crash_that_the_agent_did_not_record_is_found_and_adopted() {
    // The agent dies; its instance crashes and was already restarted by it, but the
    // record still names the crashed process (the restart writes it after the spawn).
    let (mut h, port, old) = agent_killed_with_a_running();
    send_signal(old, SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    let mut child = spawn_like_the_agent(&h, "a");
    let pid = child.id();
    wait_pong(port, "the replacement did not start");
    // A forked child of the server (a background save) runs in the same directory
    // from the same binary: it is not the server.
    let mut conn = redis(port, None).unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("rdb-key-save-delay")
        .arg("1000000")
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("SET").arg("k").arg("v").query::<()>(&mut conn).unwrap();
    redis::cmd("BGSAVE").query::<String>(&mut conn).unwrap();

    h.start_agent();
    assert_eq!(h.wait_ready("a"), pid, "the replacement was not adopted");
    assert_eq!(
        count_events(&h, "a", "record-unverifiable"),
        0,
        "the background save was taken for a second server: {:?}",
        events(&h, "a")
    );
    let a = h.instance("a");
    assert_ne!(a["phase"], "conflict", "{a}");
    assert_eq!(count_events(&h, "a", "started"), 0, "{:?}", events(&h, "a"));
    let record = std::fs::read_to_string(h.instance_dir("a").join("instance.json")).unwrap();
    assert!(record.contains(&format!("\"pid\": {pid}")), "{record}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_start_recorded_but_never_spawned_starts_once_and_is_no_crash() {
    let (mut h, _, old) = agent_killed_with_a_running();
    interrupted_start(&h, "a", false);

    h.start_agent();
    let pid = h.wait_ready("a");
    assert_ne!(pid, old);
    let a = h.instance("a");
    assert_eq!(a["restarts"], 0, "an interrupted start counted as a crash: {a}");
    assert_eq!(a["consecutive_crashes"], 0, "{a}");
    assert_eq!(count_events(&h, "a", "started"), 1, "{:?}", events(&h, "a"));
    let stale = events(&h, "a")
        .into_iter()
        .find(|(kind, _)| kind == "record-stale")
        .map(|(_, message)| message)
        .unwrap_or_default();
    assert!(
        stale.contains("no process of its binary runs in its data directory"),
        "{stale}"
    );
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
    std::fs::set_permissions(h.manifest_dir().join("a.pw"), std::fs::Permissions::from_mode(0o600)).unwrap();
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
    assert_secrets_hidden(&h, &[old, new], &[]);
}

#[test]
fn a_spec_changed_while_the_agent_was_down_restarts_the_adopted_process_gracefully() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest(
        "a",
        port,
        "password = \"before-pw-33a1\"\n[config]\nsave = \"3600 1\"\ndatabases = \"16\"\n",
    );
    h.start_agent();
    let pid = h.wait_ready("a");
    h.stop_agent(SIGTERM);
    // The password and a key only a restart changes both change while no agent runs.
    h.manifest(
        "a",
        port,
        "password = \"after-pw-8e02\"\n[config]\nsave = \"3600 1\"\ndatabases = \"8\"\n",
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
    assert!(pong(port, Some("after-pw-8e02")));
    assert_secrets_hidden(&h, &["before-pw-33a1", "after-pw-8e02"], &[]);
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

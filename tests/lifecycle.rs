//! Declared changes against real `redis-server` processes: stop, removal, spec
//! changes, invalid manifests, crash loops and stop timeouts.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn state_stopped_saves_data_with_shutdown_save_and_leaves_nothing_running() {
    const PW: &str = "stopped-test-pw-91d0";
    let mut h = Harness::new();
    let port = free_port();
    h.manifest(
        "a",
        port,
        &format!("password = \"{PW}\"\n[config]\nsave = \"3600 1\"\n"),
    );
    h.start_agent();
    let pid = h.wait_ready("a");
    let mut conn = redis(port, Some(PW)).unwrap();
    redis::cmd("SET").arg("k").arg("v").query::<()>(&mut conn).unwrap();
    drop(conn);

    h.manifest(
        "a",
        port,
        &format!("password = \"{PW}\"\nstate = \"stopped\"\n[config]\nsave = \"3600 1\"\n"),
    );
    h.signal_agent(SIGHUP);
    h.wait_for("a stopped", Duration::from_secs(15), |h| {
        h.instance("a")["phase"] == "stopped"
    });
    let a = h.instance("a");
    assert_eq!(a["last_stop"]["how"], "SHUTDOWN SAVE", "{a}");
    assert_eq!(a["last_stop"]["forced"], false, "{a}");
    assert_eq!(a["pid"], serde_json::Value::Null);
    assert!(!alive(pid), "pid {pid} still running");
    assert!(!pong(port, Some(PW)));
    let dump = h.instance_dir("a").join("data/dump.rdb");
    assert!(dump.is_file(), "no {}", dump.display());
    assert!(!h.instance_dir("a").join("instance.json").exists());
    let log = std::fs::read_to_string(h.instance_log("a")).unwrap();
    assert!(log.contains("User requested shutdown"), "{log}");
    assert!(log.contains("DB saved on disk"), "{log}");

    // Running again: the data comes back from the RDB file.
    h.manifest(
        "a",
        port,
        &format!("password = \"{PW}\"\n[config]\nsave = \"3600 1\"\n"),
    );
    h.signal_agent(SIGHUP);
    h.wait_ready("a");
    let mut conn = redis(port, Some(PW)).unwrap();
    assert_eq!(redis::cmd("GET").arg("k").query::<String>(&mut conn).unwrap(), "v");
    assert_secrets_hidden(&h, &[PW], &[]);
}

#[test]
fn a_cache_without_persistence_stops_with_shutdown_nosave() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("c", port, "[config]\nsave = \"\"\nappendonly = false\n");
    h.start_agent();
    let pid = h.wait_ready("c");
    h.manifest(
        "c",
        port,
        "state = \"stopped\"\n[config]\nsave = \"\"\nappendonly = false\n",
    );
    // No SIGHUP: the rescan notices the change.
    h.wait_for("c stopped", Duration::from_secs(15), |h| {
        h.instance("c")["phase"] == "stopped"
    });
    assert_eq!(h.instance("c")["last_stop"]["how"], "SHUTDOWN NOSAVE");
    assert!(!alive(pid));
    assert!(!h.instance_dir("c").join("data/dump.rdb").exists());
}

#[test]
fn a_removed_manifest_stops_the_instance_and_keeps_its_data() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("gone", port, "");
    h.manifest("stays", free_port(), "");
    h.start_agent();
    let pid = h.wait_ready("gone");
    let stays = h.wait_ready("stays");
    h.remove_manifest("gone");
    h.signal_agent(SIGHUP);
    h.wait_for("gone to disappear from the status", Duration::from_secs(15), |h| {
        h.instance("gone").is_null()
    });
    assert!(!alive(pid));
    assert!(
        h.instance_dir("gone").join("data").is_dir(),
        "the data directory was deleted"
    );
    assert_eq!(h.instance("stays")["pid"], stays, "an unrelated instance was touched");
}

#[test]
fn an_instance_removed_while_the_agent_was_down_is_stopped() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("old", port, "");
    h.start_agent();
    let pid = h.wait_ready("old");
    h.stop_agent(SIGTERM);
    h.remove_manifest("old");
    h.start_agent();
    h.wait_for("the undeclared instance to be stopped", Duration::from_secs(15), |_| {
        !alive(pid)
    });
    h.wait_for("old to disappear from the status", Duration::from_secs(5), |h| {
        h.instance("old").is_null()
    });
    assert!(h.instance_dir("old").join("data").is_dir());
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    assert!(log.contains("Found the record of an undeclared instance"), "{log}");
}

#[test]
fn an_invalid_manifest_is_rejected_as_a_whole_and_changes_nothing() {
    let mut h = Harness::new();
    let (pa, pb) = (free_port(), free_port());
    h.manifest("a", pa, "");
    h.manifest("b", pb, "");
    h.start_agent();
    let a = h.wait_ready("a");
    let b = h.wait_ready("b");

    // One good change (one that restarts a) and one bad file: neither may be applied.
    h.manifest("a", pa, "[config]\ndatabases = \"20\"");
    h.write_manifest(
        "bad",
        "name = \"bad\"\nport = 80\nversion = \"7.0\"\nbogus = 1\n[config]\ndir = \"/tmp\"\n",
    );

    let out = h.cli(&["check", "--config", h.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad = h.manifest_dir().join("bad.toml").display().to_string();
    for expected in [
        format!("{bad}: port: 80 is outside 1024-65535"),
        format!("{bad}: bogus: unknown key"),
        format!("{bad}: config.dir: not allowed under [config]"),
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    h.signal_agent(SIGHUP);
    h.wait_for("the rejection in /v1/status", Duration::from_secs(10), |h| {
        !h.status()["desired"]["last_rejection"].is_null()
    });
    let status = h.status();
    let problems = status["desired"]["last_rejection"]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().starts_with(&format!("{bad}: port:"))),
        "{status}"
    );
    assert_eq!(status["desired"]["revision"], 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(h.instance("a")["pid"], a, "a was restarted by a rejected document");
    assert_eq!(h.instance("b")["pid"], b);
    assert!(h.instance("bad").is_null());

    // Fixing the bad file applies the whole set.
    h.remove_manifest("bad");
    h.signal_agent(SIGHUP);
    h.wait_for(
        "a restarted with the now-accepted change",
        Duration::from_secs(15),
        |h| {
            let i = h.instance("a");
            i["ready"] == true && i["pid"].as_u64().is_some_and(|p| p as u32 != a)
        },
    );
    let status = h.status();
    assert!(status["desired"]["last_rejection"].is_null(), "{status}");
    assert_eq!(status["desired"]["revision"], 2);
    assert_eq!(h.instance("b")["pid"], b);
}

#[test]
fn an_agent_started_with_invalid_manifests_keeps_the_last_accepted_state() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "");
    h.start_agent();
    let pid = h.wait_ready("a");
    h.stop_agent(SIGTERM);
    h.write_manifest("a", "name = \"a\"\nport = \"not a port\"\n");
    h.start_agent();
    h.wait_for("a adopted from desired.json", Duration::from_secs(10), |h| {
        h.instance("a")["ready"] == true
    });
    assert_eq!(h.instance("a")["pid"], pid);
    let status = h.status();
    assert!(!status["desired"]["last_rejection"].is_null(), "{status}");
}

#[test]
fn a_server_that_exits_at_once_goes_into_a_crash_loop_with_growing_backoff() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("bad", port, "[config]\n\"maxmemory-policy\" = \"no-such-policy\"\n");
    h.start_agent();
    h.wait_for("crash-loop", Duration::from_secs(20), |h| {
        h.instance("bad")["phase"] == "crash-loop"
    });
    // Let a few more restarts happen to see the delays grow.
    h.wait_for("5 restarts, then waiting in crash-loop", Duration::from_secs(30), |h| {
        let bad = h.instance("bad");
        bad["restarts"].as_u64().unwrap_or(0) >= 5 && bad["phase"] == "crash-loop"
    });
    let bad = h.instance("bad");
    let message = bad["message"].as_str().unwrap();
    assert!(message.contains("exit code 1"), "{bad}");
    assert!(
        message.contains("maxmemory-policy"),
        "the log lines are not in the message: {bad}"
    );
    let (_, body) = h.http_get("/v1/instances/bad").unwrap();
    let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
    let starts: Vec<u64> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "started")
        .map(|e| e["at_ms"].as_u64().unwrap())
        .collect();
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 4, "{gaps:?}");
    // 0 s, ~0.5 s, ~1 s, ~2 s (±20 % jitter): each gap clearly longer than the one before.
    for w in gaps.windows(2).skip(1) {
        assert!(w[1] > w[0], "back-off does not grow: {gaps:?}");
    }
    assert!(gaps[0] < 300, "first restart not immediate: {gaps:?}");
}

#[test]
fn a_server_that_does_not_stop_is_killed_after_the_stop_timeout() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("hung", port, "stop_timeout = \"1s\"");
    h.start_agent();
    let pid = h.wait_ready("hung");
    send_signal(pid, SIGSTOP);
    h.manifest("hung", port, "stop_timeout = \"1s\"\nstate = \"stopped\"");
    h.signal_agent(SIGHUP);
    h.wait_for("hung stopped", Duration::from_secs(20), |h| {
        h.instance("hung")["phase"] == "stopped"
    });
    let hung = h.instance("hung");
    assert_eq!(hung["last_stop"]["forced"], true, "{hung}");
    assert!(
        hung["last_stop"]["how"]
            .as_str()
            .unwrap()
            .starts_with("SIGKILL after 1s"),
        "{hung}"
    );
    assert!(!alive(pid));
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    assert!(log.contains("Instance killed after stop timeout."), "{log}");
}

#[test]
fn readyz_turns_ready_after_the_first_reconcile_and_the_agent_stops_fast() {
    let mut h = Harness::new();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        h.manifest(&format!("r{i}"), *port, "");
    }
    h.start_agent();
    h.wait_for("/readyz 200", Duration::from_secs(20), |h| {
        h.http_get("/readyz").is_ok_and(|r| r.0 == 200)
    });
    for i in 0..3 {
        assert_eq!(h.instance(&format!("r{i}"))["ready"], true);
    }
    let took = h.stop_agent(SIGTERM);
    assert!(took < Duration::from_secs(2), "agent took {took:?} to stop");
    for port in ports {
        assert!(pong(port, None));
    }
}

#[test]
fn check_accepts_the_shipped_example() {
    let out = std::process::Command::new(AGENT)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/agent.toml"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 instance(s) ok"));
}

#[test]
fn check_finds_token_files_that_run_would_refuse() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new();
    let controller_token = h.path().join("controller.token");
    std::fs::write(&controller_token, "secret\n").unwrap();
    std::fs::set_permissions(&controller_token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let api_token = h.path().join("api.token");
    std::fs::write(&api_token, "\n").unwrap();
    std::fs::set_permissions(&api_token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(h.config_path())
        .unwrap()
        .replace("[api]\n", "[api]\ntoken_file = \"api.token\"\n")
        + "\n[controller]\nurl = \"http://127.0.0.1:1\"\ntoken_file = \"controller.token\"\n";
    std::fs::write(h.config_path(), config).unwrap();
    let check = |h: &Harness| h.cli(&["check", "--config", h.config_path().to_str().unwrap()]);

    let out = check(&h);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "[controller] token_file {} is accessible to other users (mode 644)",
        controller_token.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    let expected = format!("the API token file ([api] token_file) {} is empty", api_token.display());
    assert!(stderr.contains(&expected), "{stderr}");

    std::fs::set_permissions(&controller_token, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&api_token, "api-secret-0123456789\n").unwrap();
    let out = check(&h);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn run_with_an_invalid_config_exits_64_naming_the_field() {
    let h = Harness::new();
    std::fs::write(h.config_path(), "[api]\nlisten = \"nowhere\"\n").unwrap();
    let out = h.cli(&["run", "--config", h.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent.toml: api.listen: \"nowhere\" is not an address:port"),
        "{stderr}"
    );
    assert!(
        stderr.contains("agent.toml: engines: no engine binary is allowed"),
        "{stderr}"
    );
}

#[test]
fn a_second_agent_on_the_same_data_dir_refuses_to_start() {
    let mut h = Harness::new();
    h.manifest("a", free_port(), "");
    h.start_agent();
    let pid = h.wait_ready("a");
    let out = h.cli(&["run", "--config", h.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "another ker-agent (pid {}) is already running with data_dir",
        h.agent_pid()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(h.instance("a")["pid"], pid);
}

#[test]
fn a_server_loading_its_dataset_is_starting_not_failed() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest(
        "big",
        port,
        "[config]\n\"enable-debug-command\" = \"local\"\nsave = \"\"\n",
    );
    h.start_agent();
    let first = h.wait_ready("big");
    // ~1.5 M keys make a dataset that takes about a second to load.
    let mut conn = redis(port, None).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(1_500_000)
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("SAVE").query::<()>(&mut conn).unwrap();
    drop(conn);
    send_signal(first, SIGKILL);
    h.wait_for("the restarted server to report loading", Duration::from_secs(20), |h| {
        let i = h.instance("big");
        i["phase"] == "starting" && i["message"] == "loading the dataset"
    });
    assert_eq!(h.instance("big")["ready"], false);
    let pid = h.wait_ready("big");
    assert_ne!(pid, first);
    let mut conn = redis(port, None).unwrap();
    assert_eq!(redis::cmd("DBSIZE").query::<u64>(&mut conn).unwrap(), 1_500_000);
    let (_, body) = h.http_get("/v1/instances/big").unwrap();
    assert!(body.contains("\"kind\":\"loading\""), "{body}");
    // Loading was waited out: the only exit is the kill above.
    assert_eq!(body.matches("\"kind\":\"exited\"").count(), 1, "{body}");
}

#[test]
fn replica_of_and_password_make_a_working_replica() {
    const PW: &str = "replica-test-pw-5c1e";
    let mut h = Harness::new();
    let (master, replica) = (free_port(), free_port());
    h.manifest("m", master, &format!("password = \"{PW}\""));
    h.manifest(
        "r",
        replica,
        &format!("password = \"{PW}\"\nreplica_of = \"127.0.0.1:{master}\"\n[limits]\noom_score_adj = 300"),
    );
    h.start_agent();
    h.wait_ready("m");
    let replica_pid = h.wait_ready("r");
    let mut conn = redis(master, Some(PW)).unwrap();
    redis::cmd("SET")
        .arg("k")
        .arg("from-master")
        .query::<()>(&mut conn)
        .unwrap();
    // masterauth lets the replica authenticate; the master delays the first sync a bit.
    h.wait_for("the key on the replica", Duration::from_secs(30), |_| {
        redis(replica, Some(PW))
            .and_then(|mut c| redis::cmd("GET").arg("k").query::<Option<String>>(&mut c))
            .is_ok_and(|v| v.as_deref() == Some("from-master"))
    });
    let oom = std::fs::read_to_string(format!("/proc/{replica_pid}/oom_score_adj")).unwrap();
    assert_eq!(oom.trim(), "300");
    // The monitors authenticate too: both healthy, the replica seen as one, and the
    // password nowhere in what the agent says.
    h.wait_for("both healthy, r as a replica", Duration::from_secs(10), |h| {
        h.instance("m")["health"]["status"] == "ok"
            && h.instance("r")["health"]["status"] == "ok"
            && h.instance("r")["health"]["observed_role"] == "replica"
    });
    assert_secrets_hidden(&h, &[PW], &[]);
    // The search finds what is there: the master's address is in the status.
    let found = std::panic::catch_unwind(|| assert_secrets_hidden(&h, &[&format!("127.0.0.1:{master}")], &[]));
    assert!(found.is_err(), "assert_secrets_hidden finds nothing");
}

#[test]
fn the_agent_stops_fast_in_the_middle_of_a_hung_stop_and_the_next_one_finishes_it() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "stop_timeout = \"30s\"");
    h.start_agent();
    let pid = h.wait_ready("a");
    send_signal(pid, SIGSTOP);
    h.manifest("a", port, "stop_timeout = \"30s\"\nstate = \"stopped\"");
    h.signal_agent(SIGHUP);
    h.wait_for("a stopping", Duration::from_secs(10), |h| {
        h.instance("a")["phase"] == "stopping"
    });
    let took = h.stop_agent(SIGTERM);
    assert!(
        took < Duration::from_secs(2),
        "the agent took {took:?} to stop during a hung stop"
    );
    assert!(alive(pid), "the instance was killed with the agent");

    send_signal(pid, SIGCONT);
    h.start_agent();
    h.wait_for("the stop finished by the next agent", Duration::from_secs(20), |h| {
        h.instance("a")["phase"] == "stopped" && !alive(pid)
    });
    assert!(!pong(port, None));
}

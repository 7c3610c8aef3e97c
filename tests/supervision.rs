//! The supervision core against real `redis-server` processes: bring-up, restarts
//! after kill -9, adoption across agent restarts, ownership proof, port conflicts.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn three_instances_come_up_from_manifests() {
    let mut h = Harness::new();
    let ports = [free_port(), free_port(), free_port()];
    for (i, port) in ports.iter().enumerate() {
        h.manifest(&format!("r{i}"), *port, "");
    }
    h.start_agent();
    for (i, port) in ports.iter().enumerate() {
        let pid = h.wait_ready(&format!("r{i}"));
        assert!(pong(*port, None), "r{i} on {port} does not answer PING");
        assert_eq!(
            listener_pid(*port),
            Some(pid),
            "r{i}: the listener is not the reported pid"
        );
        let record = std::fs::read_to_string(h.instance_dir(&format!("r{i}")).join("instance.json")).unwrap();
        assert!(record.contains(&format!("\"pid\": {pid}")), "{record}");
    }
    let (code, _) = h.http_get("/readyz").unwrap();
    assert_eq!(code, 200);
}

#[test]
fn a_killed_instance_is_restarted_at_once() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "");
    h.start_agent();
    let first = h.wait_ready("a");
    send_signal(first, SIGKILL);
    h.wait_for("a new pid answering PING", Duration::from_secs(10), |h| {
        let i = h.instance("a");
        i["ready"] == true && i["pid"].as_u64().is_some_and(|p| p as u32 != first)
    });
    let second = h.instance("a")["pid"].as_u64().unwrap() as u32;
    assert!(pong(port, None));
    assert_eq!(listener_pid(port), Some(second));
    let a = h.instance("a");
    assert_eq!(a["restarts"], 1, "{a}");
    assert_eq!(a["last_exit"]["exit"]["signal"], 9, "{a}");
}

/// Stops the agent with `signal`, checks every instance still answers, starts it again
/// and checks that the same processes were adopted with their restart counters.
fn agent_restart_keeps_instances(signal: i32) {
    let mut h = Harness::new();
    let ports = [free_port(), free_port()];
    h.manifest("a", ports[0], "");
    h.manifest("b", ports[1], "password = \"pw-b-adoption-4417\"");
    h.start_agent();
    let a1 = h.wait_ready("a");
    let b1 = h.wait_ready("b");
    // One crash first, so that there is a counter to keep.
    send_signal(a1, SIGKILL);
    h.wait_for("a restarted", Duration::from_secs(10), |h| {
        h.instance("a")["ready"] == true && h.instance("a")["pid"].as_u64() != Some(a1 as u64)
    });
    let a2 = h.instance("a")["pid"].as_u64().unwrap() as u32;

    let took = h.stop_agent(signal);
    if signal != SIGKILL {
        assert!(took < Duration::from_secs(2), "the agent took {took:?} to stop");
        assert!(h.last_exit.unwrap().success(), "agent exit: {:?}", h.last_exit);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(pong(ports[0], None), "a died with the agent");
    assert!(pong(ports[1], Some("pw-b-adoption-4417")), "b died with the agent");
    assert!(alive(a2) && alive(b1));

    h.start_agent();
    h.wait_for("both adopted and ready", Duration::from_secs(10), |h| {
        h.instance("a")["ready"] == true && h.instance("b")["ready"] == true
    });
    let a = h.instance("a");
    let b = h.instance("b");
    assert_eq!(a["pid"], a2, "a was not adopted: {a}");
    assert_eq!(b["pid"], b1, "b was not adopted: {b}");
    assert_eq!(a["restarts"], 1, "{a}");
    assert_eq!(b["restarts"], 0, "{b}");
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    let second_run = log.split("===== agent start #2").nth(1).unwrap();
    assert!(second_run.contains("Instance adopted."), "{second_run}");
    assert!(
        !second_run.contains("Instance started."),
        "an instance was restarted:\n{second_run}"
    );
    // Adopted processes are still supervised: a kill is noticed without a child wait.
    send_signal(b1, SIGKILL);
    h.wait_for("b restarted after adoption", Duration::from_secs(10), |h| {
        let b = h.instance("b");
        b["ready"] == true && b["pid"].as_u64().is_some_and(|p| p as u32 != b1)
    });
    assert_eq!(h.instance("b")["restarts"], 1);
    assert_secrets_hidden(&h, &["pw-b-adoption-4417"], &[]);
}

#[test]
fn sigterm_of_the_agent_leaves_instances_running_and_they_are_adopted() {
    agent_restart_keeps_instances(SIGTERM);
}

#[test]
fn sigint_of_the_agent_leaves_instances_running_and_they_are_adopted() {
    agent_restart_keeps_instances(SIGINT);
}

#[test]
fn kill_9_of_the_agent_leaves_instances_running_and_they_are_adopted() {
    agent_restart_keeps_instances(SIGKILL);
}

/// Replaces the record of `name` so that it points at `pid` with the given start
/// ticks, keeping the other fields.
fn forge_record(h: &Harness, name: &str, pid: u32, start_ticks: u64) {
    let path = h.instance_dir(name).join("instance.json");
    let mut record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record["pid"] = pid.into();
    record["start_ticks"] = start_ticks.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
}

#[test]
fn a_record_pointing_at_another_process_is_not_trusted() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "");
    h.start_agent();
    let original = h.wait_ready("a");
    h.stop_agent(SIGKILL);
    send_signal(original, SIGKILL);
    h.wait_for("the instance to die", Duration::from_secs(5), |_| !alive(original));

    // An unrelated process now "has" the pid: same start time, different executable.
    let mut stranger = std::process::Command::new("sleep")
        .arg("300")
        .current_dir(h.path())
        .spawn()
        .unwrap();
    let stranger_pid = stranger.id();
    let ticks = ker_agent::procfs::read_stat(stranger_pid).unwrap().unwrap().start_ticks;
    forge_record(&h, "a", stranger_pid, ticks);

    h.start_agent();
    let new_pid = h.wait_ready("a");
    assert_ne!(new_pid, stranger_pid);
    assert!(pong(port, None));
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the unrelated process was signalled"
    );
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    assert!(log.contains("runs /usr/bin/sleep instead of"), "{log}");

    // The same with a start time that does not match (a reused pid).
    h.stop_agent(SIGTERM);
    send_signal(new_pid, SIGKILL);
    h.wait_for("the instance to die", Duration::from_secs(5), |_| !alive(new_pid));
    forge_record(&h, "a", stranger_pid, ticks + 1);
    h.start_agent();
    let third = h.wait_ready("a");
    assert_ne!(third, stranger_pid);
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the unrelated process was signalled"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
}

#[test]
fn a_foreign_listener_is_a_conflict_and_is_left_alone() {
    let mut h = Harness::new();
    let port = free_port();
    // Someone else's redis-server on the wanted port.
    let mut foreign = foreign_redis(h.path(), port, None);
    h.manifest("a", port, "");
    h.start_agent();
    h.wait_for("a conflict", Duration::from_secs(10), |h| {
        h.instance("a")["phase"] == "conflict"
    });
    let a = h.instance("a");
    let message = a["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("port {port} is held by pid {}", foreign.id())),
        "{a}"
    );
    assert_eq!(a["pid"], serde_json::Value::Null);
    // /readyz: a conflict is a settled outcome of the first reconcile.
    assert_eq!(h.http_get("/readyz").unwrap().0, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert!(foreign.try_wait().unwrap().is_none(), "the foreign server was stopped");
    assert!(pong(port, None));

    // Once it goes away, the instance starts.
    foreign.kill().unwrap();
    foreign.wait().unwrap();
    let pid = h.wait_ready("a");
    assert_eq!(listener_pid(port), Some(pid));
}

#[test]
fn instances_get_their_own_session_limits_and_a_clean_environment() {
    // A wrapper binary records the environment it was given, then becomes redis-server
    // (redis-server overwrites its own /proc/<pid>/environ with its process title).
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("redis-env-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nenv > \"{}/env.txt\"\nexec {} \"$@\"\n",
            dir.path().display(),
            redis_server().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut h = Harness::with_agent_toml(&format!("\"env\" = \"{}\"", wrapper.display()), "");
    let port = free_port();
    h.manifest_with_version("a", "env", port, "[limits]\nnofile = 4000\n");
    h.start_agent();
    let pid = h.wait_ready("a");
    let stat = ker_agent::procfs::read_stat(pid).unwrap().unwrap();
    assert_eq!(stat.session, pid as i32, "not a session leader");
    let environ = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
    let mut names: Vec<&str> = environ
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    names.sort();
    // Only the allow-list (PATH, and LANG/LC_ALL/TZ when set) plus what sh adds itself.
    for name in &names {
        assert!(
            ["PATH", "LANG", "LC_ALL", "TZ", "PWD", "SHLVL", "_"].contains(name),
            "unexpected {name} in {environ}"
        );
    }
    assert!(names.contains(&"PATH"), "{environ}");
    assert!(
        !environ.contains("KER_TEST_MARKER"),
        "agent environment leaked: {environ}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert!(
        nofile.split_whitespace().filter(|w| *w == "4000").count() == 2,
        "{nofile}"
    );
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert_eq!(stdin, std::path::PathBuf::from("/dev/null"));

    // No descriptor of the agent (its API socket, its log) reached the instance.
    let targets = |pid: u32| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .collect()
    };
    let agent_fds: Vec<_> = targets(h.agent_pid())
        .into_iter()
        .filter(|t| {
            t.to_string_lossy().starts_with("socket:")
                || t.to_string_lossy().starts_with("pipe:")
                || t == &h.agent_log()
        })
        .collect();
    let instance_fds = targets(pid);
    for fd in &agent_fds {
        assert!(
            !instance_fds.contains(fd),
            "instance inherited {fd:?}: {instance_fds:?}"
        );
    }
}

#[test]
fn the_status_command_shows_the_table_and_json() {
    let mut h = Harness::new();
    // Neither the agent nor `status` needs trust roots to speak plain HTTP.
    h.without_system_trust_roots();
    let port = free_port();
    h.manifest("cache-1", port, "");
    h.start_agent();
    let pid = h.wait_ready("cache-1");
    h.wait_for("a health verdict", Duration::from_secs(5), |h| {
        h.instance("cache-1")["health"]["status"] == "ok"
    });
    let api = format!("127.0.0.1:{}", h.api_port);
    let out = h.cli(&["status", "--api", &api]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let header = text.lines().find(|l| l.starts_with("NAME")).unwrap();
    for column in [
        "NAME", "ENGINE", "PORT", "PHASE", "READY", "PID", "RESTARTS", "UPTIME", "HEALTH", "ROLE", "MESSAGE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = text.lines().find(|l| l.starts_with("cache-1")).unwrap();
    let words: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &words[..7],
        [
            "cache-1",
            "redis",
            &port.to_string(),
            "running",
            "yes",
            &pid.to_string(),
            "0"
        ]
    );
    assert_eq!(words.get(8), Some(&"ok"), "{row}");
    assert_eq!(words.get(9), Some(&"master"), "{row}");

    let out = h.cli(&["status", "--api", &api, "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["instances"][0]["pid"], pid);

    let out = h.cli(&["status", "--api", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the agent at http://127.0.0.1:1/v1/status"));

    let (code, body) = h.http_get("/v1/instances/nope").unwrap();
    assert_eq!(code, 404);
    assert_eq!(body, r#"{"error":"no instance named \"nope\" on this node"}"#);
    let (code, body) = h.http_get("/v1/instances/cache-1").unwrap();
    assert_eq!(code, 200);
    let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(detail["events"][0]["kind"], "started", "{detail}");
}

//! Spec changes applied to running `redis-server` processes: live `CONFIG SET` where
//! Redis allows it, one graceful restart where it does not (naming the key), drift set
//! back, replication switched with `REPLICAOF`, passwords rotated with a grace period,
//! and restarts asked for with `restart_epoch` or a new version, exactly once.

mod common;

use common::controller::{controlled, document, Controller, NODE};
use common::*;
use serde_json::json;
use std::time::Duration;

const SIGHUP: i32 = 1;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;

/// A harness whose agent checks for drift every second.
fn fast_drift() -> Harness {
    Harness::with_agent_toml("", "\n[monitoring]\ndrift_interval = \"1s\"")
}

fn rendered(h: &Harness, name: &str) -> String {
    std::fs::read_to_string(h.instance_dir(name).join("redis.conf")).unwrap()
}

/// Declares a new spec for instance `name` and tells the agent at once.
fn respec(h: &Harness, name: &str, port: u16, extra: &str) {
    h.manifest(name, port, extra);
    h.signal_agent(SIGHUP);
}

/// Waits until instance `name` runs as a new, ready process instead of `old`; returns
/// the new pid.
/// How many times the instance's server started, from its own log: this counts
/// restarts across agents.
fn server_starts(h: &Harness, name: &str) -> usize {
    std::fs::read_to_string(h.instance_log(name))
        .unwrap_or_default()
        .matches("Ready to accept connections")
        .count()
}

#[test]
fn live_keys_change_without_a_restart_and_the_rendered_file_follows() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest(
        "a",
        port,
        "maxmemory = \"64mb\"\n[config]\n\"maxmemory-policy\" = \"allkeys-lru\"\n\"hz\" = \"20\"",
    );
    h.start_agent();
    let pid = h.wait_ready("a");

    respec(
        &h,
        "a",
        port,
        "maxmemory = \"128mb\"\n[config]\n\"maxmemory-policy\" = \"volatile-lru\"\n\"hz\" = \"20\"",
    );
    h.wait_for("the reconfigured event", Duration::from_secs(10), |h| {
        count_events(h, "a", "reconfigured") == 1
    });
    assert_eq!(config_get(port, None, "maxmemory-policy"), "volatile-lru");
    assert_eq!(config_get(port, None, "maxmemory"), "134217728");
    assert_eq!(h.instance("a")["pid"], pid, "the instance was restarted");
    let file = rendered(&h, "a");
    assert!(file.contains("maxmemory-policy \"volatile-lru\""), "{file}");
    assert!(file.contains("maxmemory \"134217728\""), "{file}");
    let message = &events(&h, "a")
        .into_iter()
        .find(|(k, _)| k == "reconfigured")
        .unwrap()
        .1;
    assert!(
        message.contains("maxmemory-policy = \"volatile-lru\"") && message.contains("maxmemory = \"134217728\""),
        "{message}"
    );

    // A key the spec no longer sets goes back to Redis's default, live too.
    respec(&h, "a", port, "maxmemory = \"128mb\"\n[config]\n\"hz\" = \"20\"");
    h.wait_for("the policy back at its default", Duration::from_secs(10), |_| {
        config_get(port, None, "maxmemory-policy") == "noeviction"
    });
    h.wait_for("the file without the key", Duration::from_secs(5), |h| {
        !rendered(h, "a").contains("maxmemory-policy")
    });

    // The record says what the process runs with now: a new agent adopts it as it is.
    h.stop_agent(SIGTERM);
    h.start_agent();
    assert_eq!(h.wait_ready("a"), pid);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(h.instance("a")["pid"], pid);
    assert_eq!(count_events(&h, "a", "stopping"), 0, "{:?}", events(&h, "a"));
    assert_eq!(server_starts(&h, "a"), 1);
}

#[test]
fn an_immutable_key_restarts_once_and_the_event_names_it() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "[config]\n\"databases\" = \"16\"");
    h.start_agent();
    let pid = h.wait_ready("a");

    respec(&h, "a", port, "[config]\n\"databases\" = \"32\"\n\"hz\" = \"15\"");
    h.wait_restarted("a", pid);
    assert_eq!(config_get(port, None, "databases"), "32");
    assert_eq!(config_get(port, None, "hz"), "15");
    let stopping: Vec<String> = events(&h, "a")
        .into_iter()
        .filter(|(k, _)| k == "stopping")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(stopping.len(), 1, "{stopping:?}");
    assert!(
        stopping[0].contains("databases \"16\" → \"32\" (cannot change at runtime)"),
        "{stopping:?}"
    );
    assert!(!stopping[0].contains("hz"), "hz changes live: {stopping:?}");
    // Exactly one restart, and a graceful one.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server_starts(&h, "a"), 2);
    assert_eq!(h.instance("a")["restarts"], 0, "a requested restart is not a crash");
    assert!(
        h.instance("a")["last_stop"]["how"]
            .as_str()
            .is_some_and(|how| how.starts_with("SHUTDOWN")),
        "{}",
        h.instance("a")
    );
}

#[test]
fn a_value_changed_by_hand_is_set_back_within_one_drift_cycle() {
    let mut h = fast_drift();
    let port = free_port();
    h.manifest(
        "a",
        port,
        "password = \"drift-pw-1\"\n[config]\n\"maxmemory-policy\" = \"allkeys-lru\"",
    );
    h.start_agent();
    let pid = h.wait_ready("a");
    let pw = Some("drift-pw-1");

    config_set(port, pw, "maxmemory-policy", "noeviction");
    let changed = std::time::Instant::now();
    h.wait_for("the policy set back", Duration::from_secs(5), |_| {
        config_get(port, pw, "maxmemory-policy") == "allkeys-lru"
    });
    // One cycle is a second; allow the check itself and a busy machine.
    assert!(
        changed.elapsed() < Duration::from_secs(3),
        "took {:?}",
        changed.elapsed()
    );
    h.wait_for("the drift event", Duration::from_secs(5), |h| {
        events(h, "a").iter().any(|(k, m)| {
            k == "drift-corrected" && m == "drift corrected: maxmemory-policy, was noeviction, now allkeys-lru"
        })
    });

    // A password changed by hand is set back too, and the event shows neither value.
    config_set(port, pw, "requirepass", "intruder-pw-2");
    h.wait_for("the spec's password back", Duration::from_secs(5), |_| {
        pong(port, pw) && !pong(port, Some("intruder-pw-2"))
    });
    let all = format!("{:?}", events(&h, "a"));
    assert!(all.contains("drift corrected: password"), "{all}");
    assert!(!all.contains("intruder-pw-2") && !all.contains("drift-pw-1"), "{all}");

    // A master made a replica by hand is made a master again.
    let nowhere = free_port();
    let mut conn = redis(port, pw).unwrap();
    redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(nowhere)
        .query::<()>(&mut conn)
        .unwrap();
    h.wait_for("a master again", Duration::from_secs(6), |h| {
        events(h, "a").iter().any(|(k, m)| {
            k == "drift-corrected"
                && *m == format!("drift corrected: replica_of, was replica of 127.0.0.1:{nowhere}, now master")
        })
    });
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn).unwrap();
    assert_eq!(role.first(), Some(&redis::Value::BulkString(b"master".to_vec())));

    // Values Redis normalises (sizes, case) are not drift.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count_events(&h, "a", "drift-corrected"), 3, "{:?}", events(&h, "a"));
    assert_eq!(h.instance("a")["pid"], pid);
    assert_secrets_hidden(&h, &["drift-pw-1", "intruder-pw-2"], &[]);
}

#[test]
fn replica_of_set_switched_and_removed_without_restarts() {
    let mut h = Harness::new();
    let (m1, m2, r) = (free_port(), free_port(), free_port());
    // No 5-second wait before a diskless full sync.
    let fast_sync = "[config]\n\"repl-diskless-sync-delay\" = \"0\"";
    h.manifest("m1", m1, fast_sync);
    h.manifest("m2", m2, fast_sync);
    h.manifest("r", r, "");
    h.start_agent();
    h.wait_ready("m1");
    h.wait_ready("m2");
    let pid = h.wait_ready("r");
    for (port, value) in [(m1, "from-m1"), (m2, "from-m2")] {
        let mut conn = redis(port, None).unwrap();
        redis::cmd("SET").arg("k").arg(value).query::<()>(&mut conn).unwrap();
    }
    let value_on_r = || {
        redis(r, None)
            .and_then(|mut c| redis::cmd("GET").arg("k").query::<Option<String>>(&mut c))
            .ok()
            .flatten()
    };

    for (master, value) in [(m1, "from-m1"), (m2, "from-m2")] {
        respec(&h, "r", r, &format!("replica_of = \"127.0.0.1:{master}\""));
        h.wait_for(&format!("r replicating {value}"), Duration::from_secs(20), |h| {
            let replication = &h.instance("r")["health"]["replication"];
            value_on_r().as_deref() == Some(value)
                && replication["master"] == format!("127.0.0.1:{master}")
                && replication["link_up"] == true
        });
        assert_eq!(h.instance("r")["health"]["observed_role"], "replica");
        let replication = &h.instance("r")["health"]["replication"];
        assert!(replication["master_last_io_seconds"].is_i64(), "no lag: {replication}");
        assert_eq!(h.instance("r")["pid"], pid, "r was restarted");
        let name = if master == m1 { "m1" } else { "m2" };
        h.wait_for("the master listing r", Duration::from_secs(10), |h| {
            h.instance(name)["health"]["replication"]["replicas"]
                .as_array()
                .is_some_and(|list| list.iter().any(|l| l["port"] == r && l["lag_seconds"].is_u64()))
        });
    }

    respec(&h, "r", r, "");
    h.wait_for("r a master again", Duration::from_secs(10), |h| {
        h.instance("r")["health"]["observed_role"] == "master"
    });
    let mut conn = redis(r, None).unwrap();
    redis::cmd("SET").arg("k").arg("own").query::<()>(&mut conn).unwrap();
    assert_eq!(value_on_r().as_deref(), Some("own"));
    assert_eq!(h.instance("r")["pid"], pid, "r was restarted");
    assert_eq!(server_starts(&h, "r"), 1);
}

#[test]
fn a_password_rotation_keeps_the_old_password_for_the_grace_period_only() {
    let controller = Controller::start(common::controller::TOKEN);
    let mut h = controlled(&controller);
    let (m, r) = (free_port(), free_port());
    let (old, new) = ("rotate-old-9f3a", "rotate-new-7c1e");
    let spec = |password: &str, replica: bool| {
        let mut spec = json!({
            "password": password,
            "password_grace": "4s",
            "config": {"repl-diskless-sync-delay": "0"}
        });
        if replica {
            spec["replica_of"] = json!(format!("127.0.0.1:{m}"));
        }
        spec
    };
    controller.set_document(
        NODE,
        document(1, &[("m", m, spec(old, false)), ("r", r, spec(old, true))]),
    );
    h.start_agent();
    let master_pid = h.wait_ready("m");
    let replica_pid = h.wait_ready("r");
    let mut conn = redis(m, Some(old)).unwrap();
    redis::cmd("SET").arg("k").arg("1").query::<()>(&mut conn).unwrap();
    h.wait_for("the replica linked", Duration::from_secs(20), |h| {
        h.instance("r")["health"]["replication"]["link_up"] == true
    });

    controller.set_document(
        NODE,
        document(2, &[("m", m, spec(new, false)), ("r", r, spec(new, true))]),
    );
    h.wait_for("the new password on m", Duration::from_secs(10), |_| pong(m, Some(new)));
    let rotated = std::time::Instant::now();
    // Both work during the grace period…
    assert!(pong(m, Some(old)), "the old password stopped working at once");
    assert!(pong(m, Some(new)));
    h.wait_for("the new password on r", Duration::from_secs(10), |_| pong(r, Some(new)));
    assert!(rotated.elapsed() < Duration::from_secs(3), "too slow to test the grace");
    assert!(pong(r, Some(old)));
    // …and only the new one after it.
    h.wait_for("the grace period over on m", Duration::from_secs(10), |h| {
        count_events(h, "m", "password-grace-ended") == 1
    });
    assert!(rotated.elapsed() >= Duration::from_secs(3), "grace ended early");
    let refused = redis(m, Some(old)).and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == redis::ErrorKind::AuthenticationFailed),
        "{refused:?}"
    );
    assert!(pong(m, Some(new)));
    h.wait_for("the grace period over on r", Duration::from_secs(10), |_| {
        !pong(r, Some(old))
    });

    // The replica stayed linked, and links again with the new password when the
    // master drops it.
    assert_eq!(h.instance("r")["health"]["replication"]["link_up"], true);
    let mut conn = redis(m, Some(new)).unwrap();
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query::<u64>(&mut conn)
        .unwrap();
    redis::cmd("SET").arg("k").arg("2").query::<()>(&mut conn).unwrap();
    h.wait_for(
        "the replica relinked with the new password",
        Duration::from_secs(20),
        |_| {
            redis(r, Some(new))
                .and_then(|mut c| redis::cmd("GET").arg("k").query::<Option<String>>(&mut c))
                .is_ok_and(|v| v.as_deref() == Some("2"))
        },
    );
    assert_eq!(h.instance("m")["pid"], master_pid);
    assert_eq!(h.instance("r")["pid"], replica_pid);

    // Neither password anywhere the agent writes or reports.
    controller.wait_for_report(NODE, Duration::from_secs(10), |r| r["observed_generation"] == 2);
    let reports = serde_json::to_string(&controller.reports(NODE)).unwrap();
    assert_secrets_hidden(&h, &[old, new], &[("the reports", reports)]);
    let (_, detail) = h.http_get("/v1/instances/m").unwrap();
    assert!(detail.contains("password-changed"), "{detail}");
}

#[test]
fn raising_restart_epoch_restarts_exactly_once_even_if_the_agent_dies_meanwhile() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "restart_epoch = 0");
    h.start_agent();
    let first = h.wait_ready("a");

    respec(&h, "a", port, "restart_epoch = 1");
    let second = h.wait_restarted("a", first);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.instance("a")["pid"], second);
    assert_eq!(server_starts(&h, "a"), 2);

    // The agent dies while the server is stopping (the server is frozen, so the stop
    // cannot finish before the agent is gone), and the server finishes exiting with
    // no agent watching. The next agent starts it once, and does not call it a crash.
    send_signal(second, SIGSTOP);
    respec(&h, "a", port, "restart_epoch = 2");
    h.wait_for("the stop requested", Duration::from_secs(20), |h| {
        count_events(h, "a", "stop-requested") == 2
    });
    h.stop_agent(SIGKILL);
    send_signal(second, SIGCONT);
    h.wait_for("the frozen server to finish exiting", Duration::from_secs(20), |_| {
        !alive(second)
    });
    h.start_agent();
    let third = h.wait_ready("a");
    assert_ne!(third, second);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.instance("a")["pid"], third);
    assert_eq!(server_starts(&h, "a"), 3);
    assert_eq!(h.instance("a")["restarts"], 0, "{}", h.instance("a"));

    // The agent dies right after raising: the record still says epoch 2, so the next
    // agent restarts it, once.
    h.manifest("a", port, "restart_epoch = 3");
    h.stop_agent(SIGKILL);
    h.start_agent();
    let fourth = h.wait_restarted("a", third);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.instance("a")["pid"], fourth);
    assert_eq!(server_starts(&h, "a"), 4);
}

#[test]
fn a_new_version_restarts_onto_its_binary() {
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("redis-server-7.0-b");
    std::fs::copy(redis_server(), &copy).unwrap();
    let mut h = Harness::with_agent_toml(&format!("\"7.0-b\" = \"{}\"", copy.display()), "");
    let port = free_port();
    h.manifest("a", port, "");
    h.start_agent();
    let pid = h.wait_ready("a");
    let exe = |pid: u64| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe(pid as u64), std::fs::canonicalize(redis_server()).unwrap());

    h.manifest_with_version("a", "7.0-b", port, "");
    h.signal_agent(SIGHUP);
    h.wait_for("a on the new binary", Duration::from_secs(20), |h| {
        let i = h.instance("a");
        i["pid"] != pid && i["ready"] == true && i["version"] == "7.0-b"
    });
    let new_pid = h.wait_ready("a");
    assert_eq!(exe(new_pid as u64), copy);
    let stopping = events(&h, "a");
    assert!(
        stopping
            .iter()
            .any(|(k, m)| k == "stopping" && m.contains("version \"7.0\" → \"7.0-b\"")),
        "{stopping:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server_starts(&h, "a"), 2);
}

#[test]
fn a_change_the_server_refuses_live_restarts_for_it_once() {
    let mut h = fast_drift();
    let port = free_port();
    // With 1024 open files, Redis cannot take 4000 clients at runtime (it says "The
    // operating system is not able to handle the specified number of clients"); at a
    // start it lowers maxclients to what the limit allows and runs.
    h.manifest("a", port, "[config]\nmaxclients = \"900\"\n[limits]\nnofile = 1024");
    h.start_agent();
    let pid = h.wait_ready("a");

    respec(
        &h,
        "a",
        port,
        "[config]\nmaxclients = \"4000\"\n[limits]\nnofile = 1024",
    );
    h.wait_restarted("a", pid);
    let all = events(&h, "a");
    assert!(
        all.iter()
            .any(|(k, m)| k == "config-refused" && m.contains("CONFIG SET maxclients refused")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|(k, m)| k == "stopping" && m.contains("maxclients (refused live:")),
        "{all:?}"
    );
    // The restarted server still cannot have 4000 clients: the drift check says so
    // once, not every cycle.
    h.wait_for("the uncorrected drift reported", Duration::from_secs(5), |h| {
        count_events(h, "a", "drift-uncorrected") == 1
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count_events(&h, "a", "drift-uncorrected"), 1);
    assert_eq!(server_starts(&h, "a"), 2);
}

#[test]
fn a_restart_during_a_password_grace_period_gives_the_previous_password_back_until_it_ends() {
    let mut h = Harness::new();
    let port = free_port();
    let (old, new) = ("grace-old-41c2", "grace-new-8d0e");
    respec_before_start(&h, port, old);
    h.start_agent();
    let first = h.wait_ready("a");
    respec(
        &h,
        "a",
        port,
        &format!("password = \"{new}\"\npassword_grace = \"15s\""),
    );
    h.wait_for("the new password", Duration::from_secs(10), |_| pong(port, Some(new)));
    let rotated = std::time::Instant::now();
    assert!(pong(port, Some(old)));

    // The server crashes during the grace period: its replacement takes both.
    send_signal(first, SIGKILL);
    let second = h.wait_restarted("a", first);
    h.wait_for("the previous password back", Duration::from_secs(5), |_| {
        pong(port, Some(old))
    });
    assert!(pong(port, Some(new)));

    // The agent restarts too, then the server crashes again: the record carried the
    // previous password and the end of the grace period to the new agent.
    h.stop_agent(SIGKILL);
    h.start_agent();
    assert_eq!(h.wait_ready("a"), second);
    send_signal(second, SIGKILL);
    h.wait_restarted("a", second);
    h.wait_for("the previous password back again", Duration::from_secs(5), |_| {
        pong(port, Some(old))
    });
    assert!(
        rotated.elapsed() < Duration::from_secs(13),
        "too slow to test the grace"
    );

    // And it ends on time.
    h.wait_for("the grace period over", Duration::from_secs(20), |_| {
        !pong(port, Some(old))
    });
    assert!(rotated.elapsed() >= Duration::from_secs(14), "grace ended early");
    assert!(pong(port, Some(new)));
    // The record forgets it just after the server does.
    let record = h.instance_dir("a").join("instance.json");
    h.wait_for(
        "the record without the previous password",
        Duration::from_secs(5),
        |_| !std::fs::read_to_string(&record).unwrap().contains(old),
    );
    assert_secrets_hidden(&h, &[old, new], &[]);
}

fn respec_before_start(h: &Harness, port: u16, password: &str) {
    h.manifest(
        "a",
        port,
        &format!("password = \"{password}\"\npassword_grace = \"15s\""),
    );
}

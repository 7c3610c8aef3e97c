//! The agent with real `pika` processes: lifecycle and ports, crash restarts and a
//! crash loop, adoption, data across a stop, live and restart-only changes and drift,
//! replication and promotion, passwords, exposure, a mixed Redis and Pika node, and
//! metrics.
//!
//! They need a Pika 4.x binary: `PIKA_BIN`, else `pika` on `PATH` (found by
//! `build.rs`). Without one every test here is reported as ignored, by name; the Redis
//! tests never are.

mod common;

use common::controller::{controlled, document, Controller, NODE};
use common::pika::*;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const SIGHUP: i32 = 1;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// The addresses listening on TCP `port`, from `/proc/net/tcp` (IPv4).
fn listen_addresses(port: u16) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (address, state) = (fields.get(1)?, fields.get(3)?);
            let (ip, p) = address.split_once(':')?;
            if *state != "0A" || u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            let ip = u32::from_str_radix(ip, 16).ok()?;
            Some(std::net::Ipv4Addr::from(ip.swap_bytes()).to_string())
        })
        .collect()
}

fn kill_9(pid: u32) {
    send_signal(pid, SIGKILL);
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_listens_where_it_should_gets_its_open_files_and_keeps_its_data_when_removed() {
    let mut h = harness();
    let port = pika_port();
    pika_manifest(&h, "p", port, "", "");
    h.start_agent();
    let pid = wait_pika_ready(&h, "p");
    assert!(pong(port, None));

    // Three ports, all Pika's: the client and rsync ports on the bind address only,
    // the replication port on every address whatever the config says.
    for p in [port, port + 2000, port + 10_001] {
        assert_eq!(listener_pid(p), Some(pid), "port {p}");
    }
    assert_eq!(listen_addresses(port), ["127.0.0.1"]);
    assert_eq!(listen_addresses(port + 10_001), ["127.0.0.1"]);
    assert_eq!(listen_addresses(port + 2000), ["0.0.0.0"]);
    let conf = std::fs::read_to_string(h.instance_dir("p").join("pika.conf")).unwrap();
    assert!(conf.contains("\nnetwork-interface : lo\n"), "{conf}");

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(
        open_files.split_whitespace().skip(3).take(2).collect::<Vec<_>>(),
        ["6000", "6000"],
        "maxclients 1000 + 5000: {open_files}"
    );

    // The exposure is said once for the instance, in the status, under the status
    // table, and in the host's preflight findings.
    let exposure = h.instance("p")["exposure"].as_str().unwrap_or_default().to_string();
    assert!(
        exposure.starts_with(&format!("port {} (replication) listens on all addresses", port + 2000)),
        "{exposure}"
    );
    let table = String::from_utf8(h.cli(&["status", "--api", &format!("127.0.0.1:{}", h.api_port)]).stdout).unwrap();
    assert!(
        table.contains(&format!("exposed ports:\n  p: port {} (replication)", port + 2000)),
        "{table}"
    );
    h.wait_for("the port-exposed finding", Duration::from_secs(20), |h| {
        h.status()["host"]["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| {
                f["code"] == "port-exposed"
                    && f["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(&format!("p ({})", port + 2000))
            })
    });

    // Some data, then the manifest goes: a graceful stop, and the data stays.
    set(port, None, "kept", "yes");
    h.remove_manifest("p");
    h.signal_agent(SIGHUP);
    h.wait_for("p gone", PIKA_STOP, |h| h.instance("p").is_null());
    assert!(!alive(pid));
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    let stopped = log
        .lines()
        .find(|l| l.contains("Instance stopped.") && l.contains("instance=\"p\""))
        .unwrap_or_else(|| panic!("no stop in the agent log:\n{log}"));
    assert!(stopped.contains("how=\"SIGTERM\""), "{stopped}");
    let db = h.instance_dir("p").join("data/db");
    assert!(
        std::fs::read_dir(&db).is_ok_and(|mut d| d.next().is_some()),
        "{} is gone or empty",
        db.display()
    );
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn a_killed_pika_restarts_and_a_crash_loop_shows_pikas_own_words() {
    let mut h = harness();
    let port = pika_port();
    pika_manifest(&h, "p", port, "", "");
    h.start_agent();
    let pid = wait_pika_ready(&h, "p");

    kill_9(pid);
    h.wait_for("a new pid answering PING", PIKA_START, |h| {
        let i = h.instance("p");
        i["ready"] == true && i["pid"] != pid && pong(port, None)
    });
    assert_eq!(h.instance("p")["restarts"], 1);

    // A setting Pika refuses at start (databases is 1 to 8): it aborts every time.
    pika_manifest(&h, "p", port, "", "databases = 9");
    h.signal_agent(SIGHUP);
    h.wait_for("a crash loop", Duration::from_secs(60), |h| {
        h.instance("p")["phase"] == "crash-loop"
    });
    let message = h.instance("p")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("killed by SIGABRT"), "{message}");
    assert!(
        message.contains("config databases error, limit [1 ~ 8], the actual is: 9"),
        "Pika's own log line is not in the message: {message}"
    );
    // Only the last start's lines: one fatal line, not one per crash.
    assert_eq!(message.matches("config databases error").count(), 1, "{message}");

    // Fixed: it runs again.
    pika_manifest(&h, "p", port, "", "");
    h.signal_agent(SIGHUP);
    wait_pika_ready(&h, "p");
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_is_adopted_after_the_agent_stops_and_after_it_is_killed() {
    let mut h = harness();
    let port = pika_port();
    pika_manifest(&h, "p", port, "", "");
    h.start_agent();
    let pid = wait_pika_ready(&h, "p");

    for signal in [SIGTERM, SIGKILL] {
        h.stop_agent(signal);
        assert!(pong(port, None), "the agent's exit (signal {signal}) stopped Pika");
        h.start_agent();
        assert_eq!(wait_pika_ready(&h, "p"), pid, "after signal {signal}");
        assert_eq!(count_events(&h, "p", "adopted"), 1, "{:?}", events(&h, "p"));
        assert_eq!(count_events(&h, "p", "started"), 0, "{:?}", events(&h, "p"));
    }
    assert_eq!(h.instance("p")["restarts"], 0);
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_keeps_its_data_across_a_graceful_stop_and_the_stop_says_how_long_it_took() {
    let mut h = harness();
    let port = pika_port();
    pika_manifest(&h, "p", port, "", "");
    h.start_agent();
    let pid = wait_pika_ready(&h, "p");
    let mut conn = redis(port, None).unwrap();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
    }
    pipe.cmd("HSET").arg("h").arg("f").arg("v").ignore();
    pipe.query::<()>(&mut conn).unwrap();
    drop(conn);

    pika_manifest(&h, "p", port, "state = \"stopped\"", "");
    h.signal_agent(SIGHUP);
    h.wait_for("p stopped", PIKA_STOP, |h| h.instance("p")["phase"] == "stopped");
    assert!(!alive(pid));
    let stop = &h.instance("p")["last_stop"];
    assert_eq!(stop["how"], "SIGTERM", "{stop}");
    assert_eq!(stop["forced"], false, "{stop}");
    let took_ms = stop["took_ms"].as_u64().unwrap();
    // Pika looks at the stop request every 5 s and then tears its threads down.
    assert!((1_000..30_000).contains(&took_ms), "{stop}");
    let stopped = events(&h, "p")
        .into_iter()
        .find(|(kind, _)| kind == "stopped")
        .map(|(_, message)| message)
        .unwrap();
    assert!(
        stopped.contains(&format!("pid {pid} stopped by SIGTERM in {}s", took_ms / 1000)),
        "{stopped} ({took_ms} ms)"
    );
    eprintln!("Pika stopped in {took_ms} ms");

    pika_manifest(&h, "p", port, "", "");
    h.signal_agent(SIGHUP);
    wait_pika_ready(&h, "p");
    let mut conn = redis(port, None).unwrap();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("GET").arg(format!("key:{i}"));
    }
    let values: Vec<Option<u32>> = pipe.query(&mut conn).unwrap();
    assert_eq!(values, (0..1000).map(Some).collect::<Vec<_>>());
    let field: Option<String> = redis::cmd("HGET").arg("h").arg("f").query(&mut conn).unwrap();
    assert_eq!(field.as_deref(), Some("v"));
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_live_keys_change_live_a_restart_key_restarts_once_and_drift_is_set_back() {
    let mut h = harness();
    let port = pika_port();
    pika_manifest(&h, "p", port, "", "slowlog-log-slower-than = 10000");
    h.start_agent();
    let pid = wait_pika_ready(&h, "p");

    pika_manifest(&h, "p", port, "", "slowlog-log-slower-than = 2500");
    h.signal_agent(SIGHUP);
    h.wait_for("the live change", Duration::from_secs(10), |h| {
        count_events(h, "p", "reconfigured") == 1
    });
    assert_eq!(config_get(port, None, "slowlog-log-slower-than"), "2500");
    assert_eq!(h.instance("p")["pid"], pid, "a live key restarted Pika");
    let file = std::fs::read_to_string(h.instance_dir("p").join("pika.conf")).unwrap();
    assert!(file.contains("\nslowlog-log-slower-than : 2500\n"), "{file}");

    // Changed behind the agent's back: set back.
    let mut conn = redis(port, None).unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg("7")
        .query::<()>(&mut conn)
        .unwrap();
    h.wait_for("the drift set back", Duration::from_secs(10), |h| {
        count_events(h, "p", "drift-corrected") == 1
    });
    assert_eq!(config_get(port, None, "slowlog-log-slower-than"), "2500");
    let drift = events(&h, "p")
        .into_iter()
        .find(|(kind, _)| kind == "drift-corrected")
        .unwrap()
        .1;
    assert!(drift.contains("slowlog-log-slower-than, was 7, now 2500"), "{drift}");

    // A key Pika reads only at start: one restart that names it.
    pika_manifest(&h, "p", port, "", "slowlog-log-slower-than = 2500\nthread-num = 2");
    h.signal_agent(SIGHUP);
    h.wait_for("p restarted", PIKA_STOP + PIKA_START, |h| {
        let i = h.instance("p");
        i["pid"] != pid && i["ready"] == true
    });
    assert_eq!(config_get(port, None, "thread-num"), "2");
    let stopping = events(&h, "p")
        .into_iter()
        .filter(|(kind, _)| kind == "stopping")
        .map(|(_, message)| message)
        .collect::<Vec<_>>();
    assert_eq!(stopping.len(), 1, "{stopping:?}");
    assert!(stopping[0].contains("thread-num \"1\" → \"2\""), "{stopping:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count_events(&h, "p", "started"), 2, "{:?}", events(&h, "p"));
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_replicates_survives_a_master_restart_and_is_promoted() {
    let mut h = harness();
    let (m, r) = (pika_port(), pika_port());
    pika_manifest(&h, "m", m, "", "");
    pika_manifest(&h, "r", r, "", "");
    h.start_agent();
    let master_pid = wait_pika_ready(&h, "m");
    let pid = wait_pika_ready(&h, "r");
    set(m, None, "k", "from-m");

    pika_manifest(&h, "r", r, &format!("replica_of = \"127.0.0.1:{m}\""), "");
    h.signal_agent(SIGHUP);
    h.wait_for("r replicating", Duration::from_secs(60), |h| {
        let health = &h.instance("r")["health"];
        health["observed_role"] == "replica"
            && health["replication"]["link_up"] == true
            && get(r, None, "k").as_deref() == Some("from-m")
    });
    assert_eq!(h.instance("r")["pid"], pid, "SLAVEOF restarted the replica");
    let replication = &h.instance("r")["health"]["replication"];
    assert_eq!(replication["master"], format!("127.0.0.1:{m}"), "{replication}");
    h.wait_for("m lists its replica", Duration::from_secs(10), |h| {
        h.instance("m")["health"]["replication"]["replicas"]
            .as_array()
            .is_some_and(|list| list.iter().any(|l| l["port"] == r))
    });
    let table = String::from_utf8(h.cli(&["status", "--api", &format!("127.0.0.1:{}", h.api_port)]).stdout).unwrap();
    let row = table.lines().find(|l| l.starts_with("r ")).unwrap_or_default();
    assert!(row.split_whitespace().any(|cell| cell == "replica"), "{table}");

    // The master restarts (a key Pika reads only at start): it keeps its replication
    // id, so the replica syncs with it again.
    pika_manifest(&h, "m", m, "", "thread-num = 2");
    h.signal_agent(SIGHUP);
    h.wait_for("m restarted", PIKA_STOP + PIKA_START, |h| {
        let i = h.instance("m");
        i["pid"] != master_pid && i["ready"] == true
    });
    let conf = std::fs::read_to_string(h.instance_dir("m").join("pika.conf")).unwrap();
    assert!(conf.contains("\nreplication-id : "), "{conf}");
    set(m, None, "k", "after-restart");
    h.wait_for("r synced with the restarted master", Duration::from_secs(60), |_| {
        get(r, None, "k").as_deref() == Some("after-restart")
    });

    // Promoted: a master that takes writes, without a restart.
    pika_manifest(&h, "r", r, "", "");
    h.signal_agent(SIGHUP);
    h.wait_for("r a master again", Duration::from_secs(20), |h| {
        h.instance("r")["health"]["observed_role"] == "master"
    });
    set(r, None, "k", "written-on-r");
    assert_eq!(get(r, None, "k").as_deref(), Some("written-on-r"));
    assert_eq!(h.instance("r")["pid"], pid);
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_passwords_have_no_bypass_rotate_with_a_grace_period_and_are_never_shown() {
    let controller = Controller::start(common::controller::TOKEN);
    let mut h = controlled(&controller);
    let config = std::fs::read_to_string(h.config_path()).unwrap() + &pika_versions();
    std::fs::write(h.config_path(), config).unwrap();
    let (port, q) = (pika_port(), pika_port());
    let (old, new) = ("pika-old-3b7e", "pika-new-5d2c");
    let spec = |password: Option<&str>| {
        let mut spec = json!({"engine": "pika", "version": "4.0", "password_grace": "4s",
                              "config": {"maxclients": "1000"}});
        if let Some(password) = password {
            spec["password"] = json!(password);
        }
        spec
    };
    // q starts without a password and gets one while it runs.
    controller.set_document(NODE, document(1, &[("p", port, spec(Some(old))), ("q", q, spec(None))]));
    h.start_agent();
    let pid = wait_pika_ready(&h, "p");
    wait_pika_ready(&h, "q");
    assert!(pong(q, None));
    assert!(pong(port, Some(old)));
    assert!(!pong(port, None), "no password needed");
    assert!(!pong(port, Some("anything-else")), "AUTH with any password gets in");
    assert_ne!(config_get(port, Some(old), "userpass"), "");
    set(port, Some(old), "k", "1");

    controller.set_document(
        NODE,
        document(2, &[("p", port, spec(Some(new))), ("q", q, spec(Some(new)))]),
    );
    h.wait_for("the new password", Duration::from_secs(10), |_| pong(port, Some(new)));
    let rotated = Instant::now();
    // The old password still works during the grace period, as Pika's non-admin user…
    assert!(pong(port, Some(old)), "the old password stopped working at once");
    assert_eq!(get(port, Some(old), "k").as_deref(), Some("1"));
    assert!(rotated.elapsed() < Duration::from_secs(3), "too slow to test the grace");
    let message = h.instance("p")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("password grace period"), "{message}");
    // …and not after it; nor does any other password get in.
    h.wait_for("the grace period over", Duration::from_secs(10), |h| {
        count_events(h, "p", "password-grace-ended") == 1
    });
    assert!(rotated.elapsed() >= Duration::from_secs(3), "grace ended early");
    assert!(!pong(port, Some(old)), "the old password works after the grace period");
    assert!(!pong(port, Some("anything-else")));
    assert!(!pong(port, None));
    assert!(pong(port, Some(new)));
    assert_eq!(h.instance("p")["pid"], pid, "a password change restarted Pika");
    // A password set on a running Pika leaves no bypass either (Pika's non-admin user
    // would otherwise still take any password).
    h.wait_for("q's password", Duration::from_secs(10), |_| pong(q, Some(new)));
    assert!(!pong(q, None), "q needs no password");
    assert!(!pong(q, Some("anything-else")), "AUTH with any password gets into q");

    // Neither password anywhere the agent writes or reports.
    controller.wait_for_report(NODE, Duration::from_secs(10), |r| r["observed_generation"] == 2);
    let reports = serde_json::to_string(&controller.reports(NODE)).unwrap();
    // Pika's own log files besides its stderr (the instance's log file).
    let mut pika_files = String::new();
    for entry in std::fs::read_dir(h.instance_dir("p").join("data/log")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            pika_files += &String::from_utf8_lossy(&std::fs::read(&path).unwrap());
        }
    }
    assert_secrets_hidden(
        &h,
        &[old, new],
        &[("the reports", reports), ("Pika's log files", pika_files)],
    );
    let (_, detail) = h.http_get("/v1/instances/p").unwrap();
    assert!(detail.contains("password-changed"), "{detail}");
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn redis_and_pika_run_side_by_side_and_a_redis_port_inside_pikas_is_refused() {
    let mut h = harness();
    let (p, r) = (pika_port(), free_port());
    pika_manifest(&h, "p", p, "", "");
    h.manifest("r", r, "");
    h.start_agent();
    wait_pika_ready(&h, "p");
    h.wait_ready("r");
    assert!(pong(p, None) && pong(r, None));
    assert!(h.instance("r")["exposure"].is_null());

    // A Redis instance on Pika's replication port: the whole state is refused, and
    // nothing changes.
    h.manifest("x-clash", p + 2000, "");
    let check = h.cli(&["check", "--config", "agent.toml"]);
    let said = String::from_utf8_lossy(&check.stdout).to_string() + &String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(64), "{said}");
    let expected = format!(
        "port: {} is already used by instance \"p\", a pika instance on {p} that also listens on it",
        p + 2000
    );
    assert!(said.contains(&expected), "{said}");
    h.signal_agent(SIGHUP);
    h.wait_for("the rejection", Duration::from_secs(10), |h| {
        h.status()["desired"]["last_rejection"]["problems"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p.as_str().unwrap_or_default().contains(&expected)))
    });
    assert!(h.instance("x-clash").is_null());
    assert!(pong(p, None) && pong(r, None));
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_metrics_use_the_common_families_and_add_its_own() {
    let mut h = harness();
    let (m, r) = (pika_port(), pika_port());
    pika_manifest(&h, "m", m, "", "");
    pika_manifest(&h, "r", r, &format!("replica_of = \"127.0.0.1:{m}\""), "");
    h.start_agent();
    wait_pika_ready(&h, "m");
    wait_pika_ready(&h, "r");
    let mut conn = redis(m, None).unwrap();
    for i in 0..100 {
        redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query::<()>(&mut conn)
            .unwrap();
    }
    // Pika counts keys only in a scan it is asked for; the agent never asks.
    redis::cmd("INFO")
        .arg("keyspace")
        .arg("1")
        .query::<String>(&mut conn)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = h.http_get("/metrics").unwrap();
        let has = |start: &str, value: &str| {
            text.lines()
                .any(|l| l.starts_with(start) && l.rsplit(' ').next() == Some(value))
        };
        if has("redis_master_link_up{name=\"r\",", "1.0") && has("redis_db_keys{name=\"m\",db=\"db0\"}", "100.0") {
            break;
        }
        assert!(Instant::now() < deadline, "no link or key count in /metrics:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, text) = h.http_get("/metrics").unwrap();
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start:?} in:\n{text}"))
    };
    assert!(value("redis_connected_clients{name=\"m\"}") >= 1.0);
    assert!(value("redis_commands_processed_total{name=\"m\"}") >= 100.0);
    assert!(value("redis_memory_used_bytes{name=\"m\"}") > 0.0);
    assert!(value("redis_db_size_bytes{name=\"m\"}") > 0.0, "bytes on disk");
    assert_eq!(value("pika_compaction_in_progress{name=\"m\"}"), 0.0);
    assert_eq!(value("redis_connected_slaves{name=\"m\"}"), 1.0);
    assert!(
        text.lines()
            .any(|l| l.starts_with("redis_instance_info{") && l.contains("name=\"r\"") && l.contains("role=\"slave\"")),
        "{text}"
    );
}

//! Health and metrics with real servers: a stopped process turns unhealthy and
//! recovers, a replica whose master goes away degrades, memory pressure shows, and
//! `/metrics` parses as Prometheus text with every family for every instance, and the
//! agent raises its open-files limit and says when the hard one is too low.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The health object of instance `name` (`Null` when there is none).
fn health(h: &Harness, name: &str) -> Value {
    h.instance(name)["health"].clone()
}

/// Full samples every second instead of every 10 s.
fn sample_every_second(h: &Harness) {
    let config = std::fs::read_to_string(h.config_path()).unwrap() + "\n[monitoring]\nmetrics_interval = \"1s\"\n";
    std::fs::write(h.config_path(), config).unwrap();
}

fn wait_health(h: &Harness, name: &str, status: &str, within: Duration) -> Value {
    h.wait_for(&format!("{name} to be {status}"), within, |h| {
        health(h, name)["status"] == status
    });
    health(h, name)
}

#[test]
fn a_stopped_process_is_unhealthy_within_three_intervals_and_recovers() {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "");
    h.start_agent();
    let pid = h.wait_ready("a");
    let ok = wait_health(&h, "a", "ok", Duration::from_secs(5));
    assert_eq!(ok["answering"], true, "{ok}");
    assert_eq!(ok["observed_role"], "master", "{ok}");
    assert!(ok["ping_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{ok}");

    send_signal(pid, SIGSTOP);
    let stopped = Instant::now();
    // Default health interval: 1 s. Unhealthy within 3 intervals (+ slack for a busy
    // test machine).
    let unhealthy = wait_health(&h, "a", "unhealthy", Duration::from_millis(4000));
    let took = stopped.elapsed();
    assert_eq!(unhealthy["answering"], false, "{unhealthy}");
    assert!(
        unhealthy["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("no answer to") && r.contains(&port.to_string())),
        "{unhealthy}"
    );
    let status = h.instance("a");
    assert_eq!(status["ready"], false, "{status}");
    assert_eq!(
        status["pid"], pid,
        "the agent must not restart a stopped process: {status}"
    );
    // The agent itself stays responsive while the instance hangs.
    let asked = Instant::now();
    assert_eq!(h.http_get("/healthz").unwrap().0, 200);
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "healthz took {:?}",
        asked.elapsed()
    );
    let (code, metrics) = h.http_get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("redis_up{name=\"a\"} 0"), "{metrics}");

    send_signal(pid, SIGCONT);
    let ok = wait_health(&h, "a", "ok", Duration::from_secs(15));
    assert_eq!(ok["answering"], true, "{ok}");
    assert_eq!(h.instance("a")["ready"], true);
    assert_eq!(h.instance("a")["pid"], pid);
    eprintln!("unhealthy {took:?} after SIGSTOP");

    let (_, body) = h.http_get("/v1/instances/a").unwrap();
    let detail: Value = serde_json::from_str(&body).unwrap();
    // The INFO fields without a typed one, as the server wrote them.
    assert!(detail["info_raw"]["used_memory_human"].is_string(), "{detail}");
    assert!(
        detail["info_raw"]["used_memory"].is_null(),
        "typed fields are not repeated: {detail}"
    );
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "health-changed")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(kinds.iter().any(|m| m.contains("→ unhealthy")), "{detail}");
    assert!(kinds.last().is_some_and(|m| m.contains("→ ok")), "{detail}");
}

#[test]
fn a_replica_whose_master_stops_is_degraded() {
    let mut h = Harness::new();
    sample_every_second(&h);
    let (pm, pr) = (free_port(), free_port());
    // No delay before the master's first sync, so the link comes up at once.
    let no_delay = "[config]\n\"repl-diskless-sync-delay\" = \"0\"\n";
    h.manifest("m", pm, no_delay);
    h.manifest("r", pr, &format!("replica_of = \"127.0.0.1:{pm}\"\n{no_delay}"));
    h.start_agent();
    h.wait_ready("m");
    h.wait_ready("r");
    h.wait_for("the replica's link to be up", Duration::from_secs(20), |h| {
        h.instance("r")["metrics"]["server"]["master_link_up"] == true && health(h, "r")["status"] == "ok"
    });
    let r = h.instance("r");
    assert_eq!(r["health"]["observed_role"], "replica", "{r}");
    assert_eq!(r["metrics"]["server"]["master_port"], pm, "{r}");
    h.wait_for("the master to list its replica", Duration::from_secs(5), |h| {
        let replica = &h.instance("m")["metrics"]["server"]["replicas"][0];
        replica["port"] == pr && replica["state"] == "online"
    });
    let m = h.instance("m");
    assert_eq!(m["metrics"]["server"]["connected_replicas"], 1, "{m}");
    assert_eq!(m["metrics"]["server"]["replicas"][0]["state"], "online", "{m}");

    h.manifest("m", pm, &format!("state = \"stopped\"\n{no_delay}"));
    h.signal_agent(SIGHUP);
    let degraded = wait_health(&h, "r", "degraded", Duration::from_secs(10));
    assert_eq!(
        degraded["reasons"][0],
        format!("the replication link to the master 127.0.0.1:{pm} is down"),
        "{degraded}"
    );
    // Still serving reads: degraded, not unhealthy.
    assert_eq!(degraded["answering"], true);
    assert_eq!(h.instance("r")["ready"], true);
    // A stopped instance has no health and no metrics.
    h.wait_for("m to be stopped", Duration::from_secs(10), |h| {
        h.instance("m")["phase"] == "stopped"
    });
    h.wait_for("m's health to be cleared", Duration::from_secs(5), |h| {
        h.instance("m")["health"].is_null() && h.instance("m")["metrics"].is_null()
    });

    h.manifest("m", pm, no_delay);
    h.signal_agent(SIGHUP);
    wait_health(&h, "r", "ok", Duration::from_secs(20));
}

#[test]
fn a_replica_whose_master_is_killed_is_degraded() {
    let mut h = Harness::new();
    // A master outside the agent's care, so that killing it is not undone at once.
    let master_dir = h.path().join("foreign-master");
    std::fs::create_dir_all(&master_dir).unwrap();
    let pm = free_port();
    let mut master = foreign_redis(&master_dir, pm, None);
    let mut c = redis(pm, None).unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("repl-diskless-sync-delay")
        .arg("0")
        .query(&mut c)
        .unwrap();
    let pr = free_port();
    h.manifest("r", pr, &format!("replica_of = \"127.0.0.1:{pm}\""));
    h.start_agent();
    h.wait_ready("r");
    wait_health(&h, "r", "ok", Duration::from_secs(20));

    master.kill().unwrap();
    master.wait().unwrap();
    let degraded = wait_health(&h, "r", "degraded", Duration::from_secs(10));
    assert_eq!(
        degraded["reasons"][0],
        format!("the replication link to the master 127.0.0.1:{pm} is down"),
        "{degraded}"
    );
    let (_, text) = h.http_get("/metrics").unwrap();
    let scrape = parse(&text);
    let link = scrape
        .samples
        .iter()
        .find(|s| s.metric == "redis_master_link_up" && s.labels.get("name") == Some("r"));
    // The metrics sample may predate the kill by up to a metrics interval; the label
    // set is what matters here.
    let link = link.unwrap_or_else(|| panic!("no redis_master_link_up for r in\n{text}"));
    assert_eq!(link.labels.get("master_port"), Some(pm.to_string().as_str()));
}

#[test]
fn memory_pressure_shows_in_health_and_metrics() {
    let mut h = Harness::new();
    sample_every_second(&h);
    let port = free_port();
    h.manifest("full", port, "maxmemory = \"4mb\"");
    h.start_agent();
    h.wait_ready("full");
    wait_health(&h, "full", "ok", Duration::from_secs(5));

    let mut c = redis(port, None).unwrap();
    let value = "x".repeat(16 * 1024);
    for i in 0.. {
        let info: String = redis::cmd("INFO").arg("memory").query(&mut c).unwrap();
        let used: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if used as f64 >= 4.0 * 1024.0 * 1024.0 * 0.93 {
            break;
        }
        // noeviction: a write past maxmemory fails, which is fine here.
        let _: redis::RedisResult<()> = redis::cmd("SET").arg(format!("k{i}")).arg(&value).query(&mut c);
        assert!(i < 10_000, "could not fill the instance");
    }
    let degraded = wait_health(&h, "full", "degraded", Duration::from_secs(5));
    assert!(
        degraded["reasons"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .is_some_and(|r| r.starts_with("memory pressure: used_memory"))),
        "{degraded}"
    );
    h.wait_for("a metrics sample with the data", Duration::from_secs(5), |h| {
        h.instance("full")["metrics"]["server"]["keyspace"][0]["keys"]
            .as_u64()
            .is_some_and(|k| k > 100)
    });
    let server = h.instance("full")["metrics"]["server"].clone();
    let used = server["used_memory_bytes"].as_u64().unwrap();
    let max = server["maxmemory_bytes"].as_u64().unwrap();
    assert_eq!(max, 4 * 1024 * 1024);
    assert!(used as f64 >= max as f64 * 0.9, "{server}");
    let (_, text) = h.http_get("/metrics").unwrap();
    let families = parse(&text);
    let gauge = |name: &str| sample(&families, name, "full");
    assert_eq!(gauge("redis_memory_max_bytes"), max as f64);
    assert!(gauge("redis_memory_used_bytes") >= max as f64 * 0.9);
    assert_eq!(gauge("ker_agent_instance_health"), 1.0);
}

/// The samples of a Prometheus text body.
fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{text}"))
}

/// The value of `metric{name="instance"}` (the first such series).
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, instance: &str) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("name") == Some(instance))
        .unwrap_or_else(|| panic!("no {metric}{{name=\"{instance}\"}}"));
    match found.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{metric}: unexpected value {other:?}"),
    }
}

#[test]
fn metrics_parse_and_have_every_family_for_every_instance() {
    let mut h = Harness::new();
    sample_every_second(&h);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        h.manifest(&format!("i{i}"), *port, "");
    }
    h.start_agent();
    for i in 0..3 {
        h.wait_ready(&format!("i{i}"));
    }
    // Some traffic, so counters move.
    let mut c = redis(ports[0], None).unwrap();
    for i in 0..50 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut c).unwrap();
    }
    h.wait_for("metrics and host samples", Duration::from_secs(15), |h| {
        let status = h.status();
        !status["host"].is_null()
            && status["instances"][0]["metrics"]["server"]["keyspace"][0]["keys"] == 50
            && status["instances"]
                .as_array()
                .is_some_and(|l| l.iter().all(|i| !i["metrics"].is_null() && !i["health"].is_null()))
    });

    let started = Instant::now();
    let (code, text) = h.http_get("/metrics").unwrap();
    eprintln!("/metrics answered in {:?} ({} bytes)", started.elapsed(), text.len());
    assert_eq!(code, 200);
    let scrape = parse(&text);
    for i in 0..3 {
        let name = format!("i{i}");
        for metric in [
            "redis_up",
            "redis_instance_info",
            "redis_uptime_in_seconds",
            "redis_memory_used_bytes",
            "redis_memory_used_rss_bytes",
            "redis_memory_max_bytes",
            "redis_mem_fragmentation_ratio",
            "redis_connected_clients",
            "redis_blocked_clients",
            "redis_commands_processed_total",
            "redis_net_input_bytes_total",
            "redis_net_output_bytes_total",
            "redis_keyspace_hits_total",
            "redis_keyspace_misses_total",
            "redis_expired_keys_total",
            "redis_evicted_keys_total",
            "redis_rdb_last_save_timestamp_seconds",
            "redis_rdb_changes_since_last_save",
            "redis_connected_slaves",
            "redis_master_repl_offset",
            "redis_cpu_sys_seconds_total",
            "redis_cpu_user_seconds_total",
            "ker_agent_instance_restarts_total",
            "ker_agent_instance_ready",
            "ker_agent_instance_health",
            "ker_instance_process_resident_memory_bytes",
            "ker_instance_process_cpu_seconds_total",
            "ker_instance_process_open_fds",
            "ker_instance_process_threads",
        ] {
            sample(&scrape, metric, &name);
        }
        assert_eq!(sample(&scrape, "redis_up", &name), 1.0);
    }
    let keys = scrape
        .samples
        .iter()
        .find(|s| s.metric == "redis_db_keys" && s.labels.get("name") == Some("i0"))
        .expect("redis_db_keys for i0");
    assert_eq!(keys.labels.get("db"), Some("db0"));
    assert!(
        matches!(keys.value, prometheus_parse::Value::Gauge(v) if v == 50.0),
        "{keys:?}"
    );
    assert!(sample(&scrape, "redis_commands_processed_total", "i0") >= 50.0);
    for metric in [
        "ker_host_memory_total_bytes",
        "ker_host_load1",
        "ker_host_cpu_usage_ratio",
        "ker_host_filesystem_avail_bytes",
        "ker_agent_process_resident_memory_bytes",
        "ker_agent_process_cpu_seconds_total",
        "ker_agent_reconcile_duration_seconds_count",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric == metric),
            "no {metric} in\n{text}"
        );
    }
    // Types as redis_exporter declares them.
    for (family, kind) in [
        ("redis_commands_processed_total", "counter"),
        ("redis_memory_used_bytes", "gauge"),
        ("redis_up", "gauge"),
        ("redis_db_keys", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} is not a {kind}"
        );
    }
}

/// The `Max open files` soft and hard limits of `pid`.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[3].to_string(), words[4].to_string())
}

#[test]
fn the_agent_raises_its_open_files_limit_and_says_when_the_hard_one_is_too_low() {
    let mut h = Harness::new();
    sample_every_second(&h);
    for i in 0..10 {
        h.manifest(&format!("r{i}"), free_port(), "[config]\nsave = \"\"\n");
    }
    // Started with a soft limit of 256 under a hard one of 4096.
    h.wrapper = ["prlimit", "--nofile=256:4096", "--"].map(String::from).to_vec();
    h.start_agent();
    for i in 0..10 {
        h.wait_ready(&format!("r{i}"));
    }
    let pid = h.agent_pid();
    assert_eq!(
        open_files_limits(pid),
        ("4096".into(), "4096".into()),
        "the soft limit was not raised"
    );
    let codes = |h: &Harness| -> Vec<String> {
        h.status()["host"]["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| f["code"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    h.wait_for("a host sample", Duration::from_secs(10), |h| {
        !h.status()["host"].is_null()
    });
    assert!(
        !codes(&h).contains(&"agent-nofile-low".to_string()),
        "{}",
        h.status()["host"]
    );

    // The hard limit lowered under the agent's feet, under 64 + 6 per instance = 124.
    let lowered = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=100:100"])
        .status()
        .unwrap();
    assert!(lowered.success());
    h.wait_for("the agent-nofile-low finding", Duration::from_secs(10), |h| {
        codes(h).contains(&"agent-nofile-low".to_string())
    });
    let findings = h.status()["host"]["findings"].to_string();
    assert!(
        findings.contains(
            "the agent's own open-files limit (RLIMIT_NOFILE) is 100, and it needs about 124 for 10 instances"
        ) && findings.contains("raise LimitNOFILE= in the agent's systemd unit to at least 124"),
        "{findings}"
    );
    let metrics = h.http_get("/metrics").unwrap().1;
    assert!(
        metrics.contains("ker_host_preflight_finding{code=\"agent-nofile-low\"} 1"),
        "{metrics}"
    );

    // `check` says it before the agent starts, from the limit it would run with.
    let check = |limit: &str| {
        let mut command = std::process::Command::new("prlimit");
        command
            .arg(format!("--nofile={limit}"))
            .args(["--", AGENT, "check", "--config"])
            .arg(h.config_path())
            .current_dir(h.path());
        command.output().unwrap()
    };
    let low = check("100:100");
    let stderr = String::from_utf8_lossy(&low.stderr);
    assert!(low.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: the hard open-files limit here is 100 (ulimit -Hn), and the agent needs about 124 open files \
             for 10 instance(s) (6 per instance, plus 64): raise LimitNOFILE= in ker-agent.service"
        ),
        "{stderr}"
    );
    // A host driven by a controller has no manifests: the instances it would run are
    // those of the last accepted document in desired.json.
    let controlled = h.path().join("controlled");
    std::fs::create_dir_all(&controlled).unwrap();
    let instances: Vec<serde_json::Value> = (0..20)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "port": 42000 + i, "version": "7.0"}))
        .collect();
    std::fs::write(
        controlled.join("desired.json"),
        serde_json::json!({"revision": 1, "document": {"generation": 1, "source": "controller", "instances": instances}, "manifests": []})
            .to_string(),
    )
    .unwrap();
    let config = std::fs::read_to_string(h.config_path())
        .unwrap()
        .replace("manifest_dir = \"instances.d\"\n", "")
        .replace("data_dir = \"data\"", "data_dir = \"controlled\"");
    std::fs::write(h.path().join("controlled.toml"), config).unwrap();
    let mut command = std::process::Command::new("prlimit");
    command
        .args(["--nofile=100:100", "--", AGENT, "check", "--config"])
        .arg(h.path().join("controlled.toml"))
        .current_dir(h.path());
    let controlled_check = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&controlled_check.stderr);
    assert!(controlled_check.status.success(), "{stderr}");
    assert!(
        stderr.contains("the agent needs about 184 open files for 20 instance(s)"),
        "{stderr}"
    );

    let enough = check("256:4096");
    assert!(enough.status.success());
    assert!(
        !String::from_utf8_lossy(&enough.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&enough.stderr)
    );
}

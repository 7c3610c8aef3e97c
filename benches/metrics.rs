//! Health and metrics benchmark: the real `ker-agent` (release build) with 100 real
//! `redis-server` instances, side by side in one run with redis_exporter (Debian's
//! `prometheus-redis-exporter`) scraping the same 100 instances. Measures:
//!
//! 1. agent CPU per instance per metrics sweep (every tick a full sample: PING + INFO),
//!    and what each sweep costs the servers (commands, connections, INFO's own time
//!    from `INFO commandstats`); the same for redis_exporter scraping each instance;
//! 2. the agent's total CPU with the defaults (health every 1 s, metrics every 10 s,
//!    drift checks every 30 s, reports to a test controller), and again with drift
//!    checks and the controller off, which is the monitoring alone and gives the cost
//!    of a drift check (with its share of the reports) by difference;
//! 3. `/metrics` latency with 100 instances.
//!
//! Run with `cargo bench --bench metrics`. Knobs: `BENCH_INSTANCES` (100),
//! `BENCH_SWEEP_SECS` (30), `BENCH_IDLE_SECS` (60), `BENCH_SCRAPES` (200),
//! `REDIS_EXPORTER` (`/usr/bin/prometheus-redis-exporter`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{cpu_ms, env_number as num, free_port, redis, Harness};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the servers did, summed over `ports`: (INFO calls, INFO µs, all commands,
/// connections received). Read with `INFO commandstats` / `INFO stats`, whose own
/// calls are subtracted by the caller (they are counted too).
#[derive(Debug, Default, Clone, Copy)]
struct ServerSide {
    info_calls: f64,
    info_usec: f64,
    commands: f64,
    connections: f64,
}

fn server_side(ports: &[u16]) -> ServerSide {
    let mut total = ServerSide::default();
    for port in ports {
        let mut c = redis(*port, None).unwrap();
        let stats: String = ::redis::cmd("INFO").arg("commandstats").query(&mut c).unwrap();
        for line in stats.lines() {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let field = |key: &str| -> f64 {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0)
            };
            let calls = field("calls=");
            total.commands += calls;
            if name == "cmdstat_info" {
                total.info_calls += calls;
                total.info_usec += field("usec=");
            }
        }
        let info: String = ::redis::cmd("INFO").arg("stats").query(&mut c).unwrap();
        total.connections += info
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    total
}

fn delta(a: ServerSide, b: ServerSide, ports: usize) -> ServerSide {
    // Each reading itself costs, per port, one connection and two INFO calls (the
    // second is counted by the next reading).
    let n = ports as f64;
    ServerSide {
        info_calls: b.info_calls - a.info_calls - 2.0 * n,
        info_usec: b.info_usec - a.info_usec,
        commands: b.commands - a.commands - 2.0 * n,
        connections: b.connections - a.connections - n,
    }
}

/// The token of the test controller the all-defaults run reports to.
const CONTROLLER_TOKEN: &str = "metrics-bench-controller-token-0123";

/// Sets `[monitoring]`; drift checks every `drift` (the default when `None`); with a
/// `controller` URL, a `[controller]` with the default intervals.
fn configure(h: &Harness, health: &str, metrics: &str, drift: Option<&str>, controller: Option<&str>) {
    let config = std::fs::read_to_string(h.config_path()).unwrap();
    let base = config.split("\n[monitoring]").next().unwrap().to_string();
    let drift = drift.map_or(String::new(), |d| format!("drift_interval = \"{d}\"\n"));
    let controller = controller.map_or(String::new(), |url| {
        let token = h.path().join("controller.token");
        std::fs::write(&token, format!("{CONTROLLER_TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        format!("[controller]\nurl = \"{url}\"\ntoken_file = \"controller.token\"\n")
    });
    std::fs::write(
        h.config_path(),
        format!(
            "{base}\n[monitoring]\nhealth_interval = \"{health}\"\nmetrics_interval = \"{metrics}\"\n{drift}{controller}"
        ),
    )
    .unwrap();
}

/// The agent's CPU in ms over `secs` with the given monitoring, the servers' side,
/// and the time it took.
fn idle_run(
    h: &mut Harness,
    instances: usize,
    ports: &[u16],
    secs: u64,
    drift: Option<&str>,
    controller: Option<&str>,
) -> (f64, ServerSide, Duration) {
    h.stop_agent(common::SIGTERM);
    configure(h, "1s", "10s", drift, controller);
    start_and_wait(h, instances);
    std::thread::sleep(Duration::from_secs(3));
    let pid = h.agent_pid();
    let (cpu0, side0, t0) = (cpu_ms(pid), server_side(ports), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (cpu1, side1, elapsed) = (cpu_ms(pid), server_side(ports), t0.elapsed());
    (cpu1 - cpu0, delta(side0, side1, instances), elapsed)
}

fn start_and_wait(h: &mut Harness, instances: usize) {
    h.start_agent();
    // Answering, not `ok`: with a thousand instances sampled every second on two
    // cores, PING takes over 100 ms and health says `degraded`.
    h.wait_for("every instance answering and sampled", Duration::from_secs(120), |h| {
        // A status that does not come within the harness's 5 s is asked again.
        let Ok((200, body)) = h.http_get("/v1/status") else {
            return false;
        };
        let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
        status["instances"].as_array().is_some_and(|list| {
            list.len() == instances
                && list
                    .iter()
                    .all(|i| i["health"]["answering"] == true && !i["metrics"].is_null())
        })
    });
}

/// One HTTP GET on 127.0.0.1:`port`; the body length.
fn get(port: u16, path: &str) -> usize {
    let (code, body) = common::http_send_to(std::net::Ipv4Addr::LOCALHOST.into(), port, "GET", path, &[], b"").unwrap();
    assert_eq!(code, 200, "GET {path}: {body}");
    body.len()
}

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let instances = num("BENCH_INSTANCES", 100) as usize;
    let sweep_secs = num("BENCH_SWEEP_SECS", 30);
    let idle_secs = num("BENCH_IDLE_SECS", 60);
    let scrapes = num("BENCH_SCRAPES", 200) as usize;
    let exporter_bin =
        std::env::var("REDIS_EXPORTER").unwrap_or_else(|_| "/usr/bin/prometheus-redis-exporter".to_string());
    assert!(
        std::path::Path::new(&exporter_bin).is_file(),
        "{exporter_bin} is missing: apt-get install -y prometheus-redis-exporter (or set REDIS_EXPORTER)"
    );
    println!("== ker-agent health and metrics benchmark ==");
    println!("command:      cargo bench --bench metrics");
    println!("agent binary: {}", common::AGENT);
    println!("exporter:     {exporter_bin}");
    println!("instances:    {instances}");

    let mut h = Harness::new();
    let ports: Vec<u16> = (0..instances).map(|_| free_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        h.manifest(&format!("r{i:03}"), *port, "[config]\nsave = \"\"\n");
    }

    // 1. Every tick a full sweep: CPU per instance per sweep, and the servers' side.
    configure(&h, "1s", "1s", Some("1h"), None);
    start_and_wait(&mut h, instances);
    std::thread::sleep(Duration::from_secs(2));
    let pid = h.agent_pid();
    let (cpu0, side0, t0) = (cpu_ms(pid), server_side(&ports), Instant::now());
    std::thread::sleep(Duration::from_secs(sweep_secs));
    let (cpu1, side1, elapsed) = (cpu_ms(pid), server_side(&ports), t0.elapsed());
    let sweeps = elapsed.as_secs_f64(); // one per second
    let agent_sweep = delta(side0, side1, instances);
    let per_instance_sweep_ms = (cpu1 - cpu0) / (instances as f64 * sweeps);
    let per_sweep = |v: f64| v / (instances as f64 * sweeps);

    // 3. /metrics latency, from the last sweep (and below at the defaults).
    let metrics_times = |api: u16| {
        let mut times: Vec<Duration> = (0..50)
            .map(|_| {
                let t = Instant::now();
                get(api, "/metrics");
                t.elapsed()
            })
            .collect();
        times.sort();
        times
    };
    let times = metrics_times(h.api_port);
    let metrics_bytes = get(h.api_port, "/metrics");

    // 2. The defaults: health every second, metrics every 10 s, drift checks, reports
    // to a test controller (nothing declared there: the instances come from the
    // manifests); then monitoring alone, without drift checks or a controller.
    let controller = common::controller::Controller::start(CONTROLLER_TOKEN);
    controller.set_document("test-node", serde_json::json!({"generation": 1, "instances": []}));
    let (all_cpu, all_side, all_elapsed) = idle_run(
        &mut h,
        instances,
        &ports,
        idle_secs,
        None,
        Some(controller.url().as_str()),
    );
    let reports = controller.report_count("test-node");
    let default_times = metrics_times(h.api_port);
    let all_share = all_cpu / (all_elapsed.as_secs_f64() * 1000.0) * 100.0;
    let (idle_cpu, idle_side, idle_elapsed) = idle_run(&mut h, instances, &ports, idle_secs, Some("1h"), None);
    let idle_share = idle_cpu / (idle_elapsed.as_secs_f64() * 1000.0) * 100.0;
    let pid = h.agent_pid();
    let drift_interval = ker_agent::config::MonitoringConfig::default().drift_interval;
    let drift_checks = instances as f64 * all_elapsed.as_secs_f64() / drift_interval.as_secs_f64();
    let drift_check_ms = (all_cpu / all_elapsed.as_secs_f64() - idle_cpu / idle_elapsed.as_secs_f64())
        * all_elapsed.as_secs_f64()
        / drift_checks;
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();

    // redis_exporter scraping the same instances, one target per request (its
    // multi-target endpoint), as Prometheus would.
    let exporter_port = free_port();
    let exporter = Exporter(
        Command::new(&exporter_bin)
            .args(["-web.listen-address", &format!("127.0.0.1:{exporter_port}")])
            .args(["-redis.addr", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis_exporter"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::http_send_to(
        std::net::Ipv4Addr::LOCALHOST.into(),
        exporter_port,
        "GET",
        "/",
        &[],
        b"",
    )
    .is_err()
    {
        assert!(Instant::now() < deadline, "redis_exporter did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let scrape = |port: u16| get(exporter_port, &format!("/scrape?target=redis://127.0.0.1:{port}"));
    for port in &ports {
        scrape(*port); // warm up
    }
    let exporter_pid = exporter.0.id();
    let (e_cpu0, e_side0, e_t0) = (cpu_ms(exporter_pid), server_side(&ports), Instant::now());
    let mut done = 0;
    while done < scrapes {
        scrape(ports[done % ports.len()]);
        done += 1;
    }
    let (e_cpu1, e_side1, e_elapsed) = (cpu_ms(exporter_pid), server_side(&ports), e_t0.elapsed());
    let e_side = delta(e_side0, e_side1, instances);
    let exporter_per_scrape_ms = (e_cpu1 - e_cpu0) / done as f64;
    let per_scrape = |v: f64| v / done as f64;
    drop(exporter);

    println!();
    println!("| measurement | ker-agent | redis_exporter | target |");
    println!("|---|---|---|---|");
    println!(
        "| CPU per instance per metrics sweep | {:.3} ms ({instances} instances, a full sweep every 1 s for {:.0} s) | {:.2} ms ({done} scrapes in {:.1} s) | ≤ 0.1 ms: {} |",
        per_instance_sweep_ms,
        sweeps,
        exporter_per_scrape_ms,
        e_elapsed.as_secs_f64(),
        if per_instance_sweep_ms <= 0.1 { "met" } else { "MISSED" }
    );
    // At the defaults, each instance gets 9 health probes and 1 full sample per 10 s:
    // B = (9 H + F) / 10, with F the full sweep above; so a health probe costs
    // H = (10 B - F) / 9, and the metrics part of a sweep is F - H.
    let defaults_per_instance_s = idle_cpu / (instances as f64 * idle_elapsed.as_secs_f64());
    let health_probe_ms = (10.0 * defaults_per_instance_s - per_instance_sweep_ms) / 9.0;
    println!(
        "| … of which a health probe / the metrics part | {:.3} ms / {:.3} ms (from the two runs) | | |",
        health_probe_ms,
        per_instance_sweep_ms - health_probe_ms
    );
    println!(
        "| server side per sweep | {:.2} INFO, {:.2} commands, {:.3} new connections, INFO {:.0} µs | {:.2} INFO, {:.2} commands, {:.2} new connections, INFO {:.0} µs | one INFO on a kept connection |",
        per_sweep(agent_sweep.info_calls),
        per_sweep(agent_sweep.commands),
        per_sweep(agent_sweep.connections),
        agent_sweep.info_usec / agent_sweep.info_calls.max(1.0),
        per_scrape(e_side.info_calls),
        per_scrape(e_side.commands),
        per_scrape(e_side.connections),
        e_side.info_usec / e_side.info_calls.max(1.0),
    );
    println!(
        "| agent CPU, monitoring alone (health 1 s, metrics 10 s; no drift checks, no controller), {:.0} s | {:.0} ms = {:.3} % of one core (RSS {rss_kb}) | | |",
        idle_elapsed.as_secs_f64(),
        idle_cpu,
        idle_share,
    );
    println!(
        "| agent CPU, all defaults (drift checks every {} s, {reports} reports to a test controller), {:.0} s | {:.0} ms = {:.3} % of one core; a drift check and its share of the reports {:.3} ms (by difference; {:.2} commands per instance per second) | | ≤ 0.7 %: {} |",
        drift_interval.as_secs(),
        all_elapsed.as_secs_f64(),
        all_cpu,
        all_share,
        drift_check_ms,
        all_side.commands / (instances as f64 * all_elapsed.as_secs_f64()),
        if all_share <= 0.7 { "met" } else { "MISSED" }
    );
    println!(
        "| … server side per instance per second | {:.2} INFO, {:.2} commands, {:.3} new connections | | |",
        idle_side.info_calls / (instances as f64 * idle_elapsed.as_secs_f64()),
        idle_side.commands / (instances as f64 * idle_elapsed.as_secs_f64()),
        idle_side.connections / (instances as f64 * idle_elapsed.as_secs_f64()),
    );
    println!(
        "| /metrics with {instances} instances ({metrics_bytes} bytes) | median {:.2} ms, max {:.2} ms (n=50) | | ≤ 5 ms: {} |",
        times[times.len() / 2].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0,
        if times[times.len() / 2] <= Duration::from_millis(5) { "met" } else { "MISSED" }
    );
    println!(
        "| /metrics with {instances} instances at the defaults | median {:.2} ms, max {:.2} ms (n=50) | | ≤ 10 ms at 1,000: {} |",
        default_times[default_times.len() / 2].as_secs_f64() * 1000.0,
        default_times[default_times.len() - 1].as_secs_f64() * 1000.0,
        if default_times[default_times.len() / 2] <= Duration::from_millis(10) { "met" } else { "MISSED" }
    );
}

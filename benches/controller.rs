//! Controller benchmark: the real `ker-agent` binary (release build) controlled by the
//! test controller, with 200 real `redis-server` instances. Measures:
//!
//! 1. the compressed size per instance of a full report (target ≤ 2 KB), and the
//!    uncompressed size, with every instance's health and metrics in it;
//! 2. the agent's CPU per full report (a full report every second for 20 s);
//! 3. at rest with the defaults (health every 1 s, metrics every 10 s, a report every
//!    10 s, a full one every 5 min, a poll held 30 s) over `BENCH_IDLE_SECS` (600):
//!    the HTTP bytes between the agent and the controller per instance per hour
//!    (target ≤ 10 KB), the report bodies alone, the kinds of reports, and the
//!    agent's CPU.
//!
//! Run with `cargo bench --bench controller`. `BENCH_INSTANCES` (200) and
//! `BENCH_IDLE_SECS` (600) change the sizes.

#[path = "../tests/common/mod.rs"]
mod common;

use common::controller::Controller;
use common::{cpu_ms, env_number as num, free_port, Harness};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const TOKEN: &str = "controller-bench-token-0123456789";
const NODE: &str = "test-node";
/// For parts 1 and 2, each instance is sampled once, at the start, and then not again
/// for the run: the reports carry full health and metrics, and the CPU measured is
/// the controller work, not the monitors' (`benches/metrics.rs` measures those).
const SAMPLED_ONCE: &str = "[monitoring]\nhealth_interval = \"1h\"\nmetrics_interval = \"1h\"\n";

/// Points the agent of `h` at `controller`; `intervals` are `[controller]` lines,
/// `monitoring` a `[monitoring]` section (empty: the defaults).
fn configure(h: &Harness, controller: &Controller, intervals: &str, monitoring: &str) {
    let token = h.path().join("controller.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(h.config_path()).unwrap();
    let base = config.split("\n[controller]").next().unwrap().to_string();
    let base = base.split("[monitoring]").next().unwrap().to_string();
    std::fs::write(
        h.config_path(),
        format!(
            "{base}\n[controller]\nurl = \"{}\"\ntoken_file = \"controller.token\"\n{intervals}\n{monitoring}",
            controller.url()
        ),
    )
    .unwrap();
}

fn main() {
    let instances = num("BENCH_INSTANCES", 200) as usize;
    let idle = Duration::from_secs(num("BENCH_IDLE_SECS", 600));
    println!("== ker-agent controller benchmark ==");
    println!("command:      cargo bench --bench controller");
    println!("agent binary: {}", common::AGENT);
    println!("instances:    {instances}");

    let controller = Controller::start(TOKEN);
    let mut h = Harness::new();
    let every_second = "report_interval = \"1s\"\nfull_report_interval = \"1s\"\npoll_wait = \"30s\"";
    configure(&h, &controller, every_second, SAMPLED_ONCE);
    let specs: Vec<Value> = (0..instances)
        .map(|i| {
            json!({"name": format!("r{i:03}"), "port": free_port(), "version": "7.0",
                   "maxmemory": "16mb", "config": {"save": "", "maxmemory-policy": "allkeys-lru"}})
        })
        .collect();
    controller.set_document(NODE, json!({"generation": 1, "instances": specs}));
    h.start_agent();
    let began = Instant::now();
    h.wait_for("every instance ready", Duration::from_secs(120), |h| {
        h.status()["instances"].as_array().is_some_and(|list| {
            list.len() == instances && list.iter().all(|i| i["ready"] == true && !i["metrics"].is_null())
        })
    });
    println!(
        "all {instances} instances ready after {:.1} s",
        began.elapsed().as_secs_f64()
    );

    // 1 and 2: a full report every second for 20 s.
    std::thread::sleep(Duration::from_secs(2));
    let pid = h.agent_pid();
    let (reports0, cpu0) = (controller.report_count(NODE), cpu_ms(pid));
    std::thread::sleep(Duration::from_secs(20));
    let (reports1, cpu1) = (controller.report_count(NODE), cpu_ms(pid));
    let sent = reports1 - reports0;
    let sizes = controller.report_sizes(NODE);
    let recent: Vec<usize> = sizes[sizes.len().saturating_sub(sent)..].to_vec();
    let compressed = recent.iter().sum::<usize>() as f64 / recent.len().max(1) as f64;
    let last = controller.report_bodies(NODE).pop().unwrap();
    assert_eq!(last["kind"], "full");
    let uncompressed = serde_json::to_vec(&last).unwrap().len() as f64;
    let per_report = (cpu1 - cpu0) / sent.max(1) as f64;

    // 3: at rest with the defaults, nothing changing.
    h.stop_agent(common::SIGTERM);
    configure(&h, &controller, "", "");
    h.start_agent();
    h.wait_for("the instances adopted", Duration::from_secs(60), |h| {
        h.status()["instances"]
            .as_array()
            .is_some_and(|list| list.len() == instances && list.iter().all(|i| i["ready"] == true))
    });
    std::thread::sleep(Duration::from_secs(5));
    let pid = h.agent_pid();
    let attempts0 = controller.report_attempts(NODE).len();
    let (polls0, idle0, wire0) = (controller.poll_count(NODE), cpu_ms(pid), controller.wire_bytes());
    std::thread::sleep(idle);
    let (polls1, idle1, wire1) = (controller.poll_count(NODE), cpu_ms(pid), controller.wire_bytes());
    let window: Vec<_> = controller.report_attempts(NODE)[attempts0..].to_vec();
    let kind = |k: &str| {
        window
            .iter()
            .filter(|r| r.accepted() && r.body.as_ref().is_some_and(|b| b["kind"] == k))
            .collect::<Vec<_>>()
    };
    let (fulls, deltas) = (kind("full"), kind("delta"));
    let bodies: usize = window.iter().map(|r| r.compressed_size).sum();
    let wire = (wire1.0 - wire0.0) + (wire1.1 - wire0.1);
    let hours = idle.as_secs_f64() / 3600.0;
    let per_instance_hour = |bytes: f64| bytes / instances as f64 / hours;
    let mean = |list: &[&common::controller::ReportRecord]| {
        list.iter().map(|r| r.compressed_size).sum::<usize>() as f64 / list.len().max(1) as f64
    };
    let wire_rate = per_instance_hour(wire as f64);

    println!();
    println!("measurement                                   | result                            | target");
    println!("----------------------------------------------|-----------------------------------|----------------");
    println!(
        "full report size, {instances} instances, gzip     | {:.0} bytes = {:.0} B/instance      | ≤ 2048 B/instance: {}",
        compressed,
        compressed / instances as f64,
        if compressed / instances as f64 <= 2048.0 { "met" } else { "MISSED" }
    );
    println!(
        "full report size, uncompressed                | {:.0} bytes = {:.0} B/instance     |",
        uncompressed,
        uncompressed / instances as f64
    );
    println!("agent CPU per full report ({sent} in 20 s)       | {per_report:.2} ms (all agent work / reports) |");
    println!(
        "at rest, {} s: HTTP bytes both ways             | {wire} bytes = {:.0} B/instance/hour  | ≤ 10240: {}",
        idle.as_secs(),
        wire_rate,
        if wire_rate <= 10240.0 { "met" } else { "MISSED" }
    );
    println!(
        "at rest: report bodies (gzip)                 | {bodies} bytes = {:.0} B/instance/hour |",
        per_instance_hour(bodies as f64)
    );
    println!(
        "at rest: reports                              | {} full (mean {:.0} B), {} delta (mean {:.0} B), {} refused |",
        fulls.len(),
        mean(&fulls),
        deltas.len(),
        mean(&deltas),
        window.len() - fulls.len() - deltas.len()
    );
    println!(
        "at rest: agent CPU ({} polls)                  | {:.0} ms = {:.3} % of one core  |",
        polls1 - polls0,
        idle1 - idle0,
        (idle1 - idle0) / idle.as_millis() as f64 * 100.0
    );
    // The last full report really carries every instance, with its health and metrics.
    let reported = last["instances"].as_array().unwrap();
    assert_eq!(reported.len(), instances);
    assert!(reported
        .iter()
        .all(|i| !i["metrics"].is_null() && !i["health"].is_null()));
    // And the controller's view at the end of the quiet window still does.
    let view = controller.reports(NODE).pop().unwrap();
    assert_eq!(view["instances"].as_array().unwrap().len(), instances);
}

//! Controller benchmark: the real `ker-agent` binary (release build) controlled by the
//! test controller, with 200 real `redis-server` instances. Measures:
//!
//! 1. the compressed report size per instance (target ≤ 2 KB), and the uncompressed
//!    size, with every instance's health and metrics in it;
//! 2. the agent's CPU per report (reports every second for 20 s);
//! 3. the agent's CPU over 60 s of an idle long poll (defaults: a report every 10 s, a
//!    poll held 30 s) with nothing changing.
//!
//! Run with `cargo bench --bench controller`. `BENCH_INSTANCES` (200) and
//! `BENCH_IDLE_SECS` (60) change the sizes.

#[path = "../tests/common/mod.rs"]
mod common;

use common::controller::Controller;
use common::{cpu_ms, env_number as num, free_port, Harness};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const TOKEN: &str = "controller-bench-token-0123456789";
const NODE: &str = "test-node";
/// Each instance is sampled once, at the start, and then not again for the run: the
/// reports carry full health and metrics, and the CPU measured is the controller
/// work, not the monitors' (`benches/metrics.rs` measures those).
const MONITORING: &str = "[monitoring]\nhealth_interval = \"1h\"\nmetrics_interval = \"1h\"\n";

fn configure(h: &Harness, controller: &Controller, report_interval: &str, poll_wait: &str) {
    let token = h.path().join("controller.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(h.config_path()).unwrap();
    let base = config.split("\n[controller]").next().unwrap().to_string();
    let base = base.split("[monitoring]").next().unwrap().to_string();
    std::fs::write(
        h.config_path(),
        format!(
            "{base}\n[controller]\nurl = \"{}\"\ntoken_file = \"controller.token\"\nreport_interval = \"{report_interval}\"\npoll_wait = \"{poll_wait}\"\n{MONITORING}",
            controller.url()
        ),
    )
    .unwrap();
}

fn main() {
    let instances = num("BENCH_INSTANCES", 200) as usize;
    let idle = Duration::from_secs(num("BENCH_IDLE_SECS", 60));
    println!("== ker-agent controller benchmark ==");
    println!("command:      cargo bench --bench controller");
    println!("agent binary: {}", common::AGENT);
    println!("instances:    {instances}");

    let controller = Controller::start(TOKEN);
    let mut h = Harness::new();
    configure(&h, &controller, "1s", "30s");
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

    // 1 and 2: reports every second for 20 s.
    std::thread::sleep(Duration::from_secs(2));
    let pid = h.agent_pid();
    let (reports0, cpu0) = (controller.report_count(NODE), cpu_ms(pid));
    std::thread::sleep(Duration::from_secs(20));
    let (reports1, cpu1) = (controller.report_count(NODE), cpu_ms(pid));
    let sent = reports1 - reports0;
    let sizes = controller.report_sizes(NODE);
    let recent: Vec<usize> = sizes[sizes.len().saturating_sub(sent)..].to_vec();
    let compressed = recent.iter().sum::<usize>() as f64 / recent.len().max(1) as f64;
    let last = controller.reports(NODE).pop().unwrap();
    let uncompressed = serde_json::to_vec(&last).unwrap().len() as f64;
    let per_report = (cpu1 - cpu0) / sent.max(1) as f64;

    // 3: an idle agent with the defaults, nothing changing.
    h.stop_agent(common::SIGTERM);
    configure(&h, &controller, "10s", "30s");
    h.start_agent();
    h.wait_for("the instances adopted", Duration::from_secs(60), |h| {
        h.status()["instances"]
            .as_array()
            .is_some_and(|list| list.len() == instances && list.iter().all(|i| i["ready"] == true))
    });
    std::thread::sleep(Duration::from_secs(5));
    let pid = h.agent_pid();
    let (polls0, reports0, idle0) = (controller.poll_count(NODE), controller.report_count(NODE), cpu_ms(pid));
    std::thread::sleep(idle);
    let (polls1, reports1, idle1) = (controller.poll_count(NODE), controller.report_count(NODE), cpu_ms(pid));

    println!();
    println!("measurement                                   | result                            | target");
    println!("----------------------------------------------|-----------------------------------|----------------");
    println!(
        "report size, {instances} instances, gzip          | {:.0} bytes = {:.0} B/instance      | ≤ 2048 B/instance: {}",
        compressed,
        compressed / instances as f64,
        if compressed / instances as f64 <= 2048.0 { "met" } else { "MISSED" }
    );
    println!(
        "report size, uncompressed                     | {:.0} bytes = {:.0} B/instance     |",
        uncompressed,
        uncompressed / instances as f64
    );
    println!("agent CPU per report ({sent} reports in 20 s)    | {per_report:.2} ms (all agent work / reports) |");
    println!(
        "idle agent CPU over {} s ({} polls, {} reports) | {:.0} ms = {:.3} % of one core      |",
        idle.as_secs(),
        polls1 - polls0,
        reports1 - reports0,
        idle1 - idle0,
        (idle1 - idle0) / idle.as_millis() as f64 * 100.0
    );
    // The report really carries every instance, with its health and metrics.
    let reported = last["instances"].as_array().unwrap();
    assert_eq!(reported.len(), instances);
    assert!(reported
        .iter()
        .all(|i| !i["metrics"].is_null() && !i["health"].is_null()));
}

//! Herd benchmark: what a controller meets when it comes back. `BENCH_AGENTS` (200)
//! real `ker-agent` processes (release build), each with its own data directory, node
//! id and one real `redis-server`, are controlled by one test controller with the
//! defaults (a report every 10 s, a full one every 5 min, a poll held 30 s). Once every
//! agent reports, the benchmark counts the requests the controller receives each
//! second for 30 s, stops the controller for `BENCH_OUTAGE_SECS` (30), starts it again
//! without the reports it held (as a restarted controller: each agent's next change
//! report is answered 409 and a full one follows), and counts again for
//! `BENCH_AFTER_SECS` (120).
//!
//! It prints the curve (requests per second around the outage), the peak against the
//! steady rate, and when each agent was reporting again (its first accepted report
//! after the controller came back), and fails when the bounds stated in BENCHMARKS.md
//! are not met.
//!
//! Run with `cargo bench --bench herd`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::controller::Controller;
use common::{env_number as num, free_port, Harness};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const TOKEN: &str = "controller-herd-token-0123456789";

/// The bounds this benchmark holds the agents to (BENCHMARKS.md states them): the
/// busiest second after the controller comes back stays under this many requests
/// per agent...
const PEAK_PER_AGENT: f64 = 0.5;
/// ...and every agent reports again within this long.
const BACK_WITHIN: Duration = Duration::from_secs(75);

fn main() {
    let agents = num("BENCH_AGENTS", 200) as usize;
    let outage = Duration::from_secs(num("BENCH_OUTAGE_SECS", 30));
    let after = Duration::from_secs(num("BENCH_AFTER_SECS", 120));
    println!("== ker-agent herd benchmark ==");
    println!("command:      cargo bench --bench herd");
    println!("agent binary: {}", common::AGENT);
    println!("agents:       {agents}, outage {} s", outage.as_secs());

    let controller = Controller::start(TOKEN);
    let began = Instant::now();
    let mut fleet: Vec<(String, Harness)> = Vec::with_capacity(agents);
    for i in 0..agents {
        let node = format!("herd-{i:03}");
        let mut h = Harness::new();
        let token = h.path().join("controller.token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = std::fs::read_to_string(h.config_path())
            .unwrap()
            .replace("node_id = \"test-node\"", &format!("node_id = \"{node}\""));
        std::fs::write(
            h.config_path(),
            format!(
                "{config}\n[controller]\nurl = \"{}\"\ntoken_file = \"controller.token\"\n",
                controller.url()
            ),
        )
        .unwrap();
        controller.set_document(
            &node,
            json!({"generation": 1, "instances": [{"name": "r", "port": free_port(), "version": "7.0",
                   "maxmemory": "8mb", "config": {"save": ""}}]}),
        );
        // Info, not the tests' debug: 200 agents logging every probe would be the load.
        h.env.push(("KER_AGENT_LOG", "info".into()));
        h.start_agent();
        fleet.push((node, h));
    }
    let reporting = |node: &str| {
        controller
            .reports(node)
            .last()
            .is_some_and(|r| r["instances"][0]["ready"] == true)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !fleet.iter().all(|(node, _)| reporting(node)) {
        assert!(
            Instant::now() < deadline,
            "not every agent reported a ready instance in 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "all {agents} agents reporting a ready instance after {:.1} s",
        began.elapsed().as_secs_f64()
    );

    // Steady state, then the outage, then the return.
    std::thread::sleep(Duration::from_secs(15));
    let steady_from = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let stopped = Instant::now();
    controller.stop();
    std::thread::sleep(outage);
    controller.restart();
    let back = Instant::now();
    std::thread::sleep(after);

    // Every request the controller received, by node.
    let mut times: Vec<Instant> = Vec::new();
    let mut refused = 0;
    let mut fulls = 0;
    let mut again: Vec<Duration> = Vec::with_capacity(agents);
    for (node, _) in &fleet {
        times.extend(controller.polls(node).iter().map(|p| p.at));
        let reports = controller.report_attempts(node);
        times.extend(reports.iter().map(|r| r.at));
        let after_back: Vec<_> = reports.iter().filter(|r| r.at >= back).collect();
        refused += after_back.iter().filter(|r| r.status == Some(409)).count();
        fulls += after_back
            .iter()
            .filter(|r| r.accepted() && r.body.as_ref().is_some_and(|b| b["kind"] == "full"))
            .count();
        match after_back.iter().find(|r| r.accepted()) {
            Some(first) => again.push(first.at.duration_since(back)),
            None => panic!(
                "{node} did not report in the {} s after the controller came back",
                after.as_secs()
            ),
        }
    }
    let count = |from: Instant, to: Instant| times.iter().filter(|t| **t >= from && **t < to).count();
    let steady = count(steady_from, stopped) as f64 / 30.0;
    let per_second: Vec<usize> = (0..after.as_secs())
        .map(|s| {
            let from = back + Duration::from_secs(s);
            count(from, from + Duration::from_secs(1))
        })
        .collect();
    let peak = per_second.iter().copied().max().unwrap_or(0);
    let peak_at = per_second.iter().position(|n| *n == peak).unwrap_or(0);
    again.sort();
    let quantile = |q: f64| again[((again.len() - 1) as f64 * q).round() as usize];

    println!();
    println!("requests per second at the controller after it came back (second: count):");
    for (row, chunk) in per_second.chunks(10).enumerate() {
        let cells: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{:>3}:{n:>4}", row * 10 + i))
            .collect();
        println!("  {}", cells.join(" "));
    }
    println!();
    println!("measurement                                  | result");
    println!("---------------------------------------------|------------------------------");
    println!("steady rate before the outage (30 s)         | {steady:.1} requests/s");
    println!(
        "busiest second after the return             | {peak} requests (second {peak_at}) = {:.2}/agent, {:.1}x steady; bound {:.0}: {}",
        peak as f64 / agents as f64,
        peak as f64 / steady.max(0.1),
        PEAK_PER_AGENT * agents as f64,
        if peak as f64 <= PEAK_PER_AGENT * agents as f64 { "met" } else { "MISSED" }
    );
    println!(
        "requests in the first 10 s / 60 s after     | {} / {}",
        per_second.iter().take(10).sum::<usize>(),
        per_second.iter().take(60).sum::<usize>()
    );
    println!("deltas refused (409) / full reports after   | {refused} / {fulls}");
    println!(
        "reporting again: median, p90, last          | {:.1} s, {:.1} s, {:.1} s; bound {} s: {}",
        quantile(0.5).as_secs_f64(),
        quantile(0.9).as_secs_f64(),
        quantile(1.0).as_secs_f64(),
        BACK_WITHIN.as_secs(),
        if quantile(1.0) <= BACK_WITHIN { "met" } else { "MISSED" }
    );
    assert!(
        peak as f64 <= PEAK_PER_AGENT * agents as f64,
        "the busiest second had {peak} requests"
    );
    assert!(
        quantile(1.0) <= BACK_WITHIN,
        "an agent took {:?} to report again",
        quantile(1.0)
    );
}

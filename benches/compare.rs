//! The agent next to supervisord (Debian's `supervisor`), in one run, keeping the same
//! `BENCH_INSTANCES` (100) real `redis-server` processes (the same flags: a port on
//! 127.0.0.1, no persistence, each in its own directory). For each:
//!
//! 1. start from nothing to every server answering PING;
//! 2. kill -9 of a server → PONG from its replacement (`BENCH_KILLS`, 10, median);
//! 3. the supervisor's RSS and CPU at rest over `BENCH_REST_SECS` (60), with the
//!    agent's defaults (health every 1 s, metrics every 10 s, drift checks every 30 s)
//!    while supervisord only waits for exits; and the servers' own CPU meanwhile;
//! 4. with supervisord keeping the servers, redis_exporter (Debian's
//!    `prometheus-redis-exporter`) scraping each of them every 10 s (the agent's
//!    metrics interval) through its multi-target endpoint, for the same time.
//!
//! Then it prints the ratios agent / supervisord and the per-instance figures.
//! supervisord does less: no health, metrics, adoption or reconfiguration; the
//! comparison shows what those cost, and redis_exporter what metrics alone cost.
//!
//! Run with `cargo bench --bench compare` (`apt-get install -y supervisor
//! prometheus-redis-exporter` first).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{cpu_ms, env_number as num, free_port, listener_pid, pong, redis_server, Harness};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SUPERVISORD: &str = "/usr/bin/supervisord";

/// What one supervisor did.
struct Measured {
    start: Duration,
    kill_to_pong: Vec<Duration>,
    rss_kb: u64,
    rest_cpu_ms: f64,
    /// The servers' own CPU over the same time.
    servers_cpu_ms: f64,
    /// redis_exporter beside it, if it was measured.
    exporter: Option<ExporterRun>,
}

/// redis_exporter scraping every server every [`SCRAPE_INTERVAL`].
struct ExporterRun {
    rss_kb: u64,
    cpu_ms: f64,
    scrapes: usize,
}

/// How often redis_exporter is asked about each server: the agent's metrics interval.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(10);

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Waits until every port answers PING.
fn wait_all_pong(ports: &[u16], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut waiting: Vec<u16> = ports.to_vec();
    while !waiting.is_empty() {
        assert!(Instant::now() < deadline, "{} servers not answering", waiting.len());
        waiting.retain(|p| !pong(*p, None));
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Kills the server on each of `ports` in turn and times its replacement's PONG.
fn kills(ports: &[u16], count: usize) -> Vec<Duration> {
    ports
        .iter()
        .take(count)
        .map(|port| {
            let old = listener_pid(*port).expect("a server on the port");
            let killed = Instant::now();
            common::send_signal(old, common::SIGKILL);
            loop {
                assert!(killed.elapsed() < Duration::from_secs(30), "no replacement on {port}");
                if pong(*port, None) && listener_pid(*port).is_some_and(|p| p != old) {
                    break killed.elapsed();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .collect()
}

/// The children of `pid` (the servers a supervisor started).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The CPU of the processes of `pids` that still run (a process that exits in between
/// is left out of both readings).
fn cpu_of(pids: &[u32]) -> std::collections::HashMap<u32, f64> {
    pids.iter()
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        .map(|pid| (*pid, cpu_ms(*pid)))
        .collect()
}

/// RSS, CPU of `pid` and the CPU of its servers over `rest`, after `settle`.
fn at_rest(pid: u32, settle: Duration, rest: Duration) -> (u64, f64, f64) {
    std::thread::sleep(settle);
    let servers = children(pid);
    let (before, servers_before) = (cpu_ms(pid), cpu_of(&servers));
    std::thread::sleep(rest);
    let (after, servers_after) = (cpu_ms(pid), cpu_of(&servers));
    let servers_cpu = servers_after
        .iter()
        .filter_map(|(pid, after)| servers_before.get(pid).map(|before| after - before))
        .sum();
    (rss_kb(pid), after - before, servers_cpu)
}

/// redis_exporter scraping each of `ports` every [`SCRAPE_INTERVAL`] for `rest`, one
/// target per request (its multi-target endpoint), as Prometheus would.
fn exporter(ports: &[u16], rest: Duration) -> ExporterRun {
    let binary = std::env::var("REDIS_EXPORTER").unwrap_or_else(|_| "/usr/bin/prometheus-redis-exporter".to_string());
    assert!(
        Path::new(&binary).is_file(),
        "{binary} is missing: apt-get install -y prometheus-redis-exporter (or set REDIS_EXPORTER)"
    );
    let port = free_port();
    let mut child = Command::new(&binary)
        .args(["-web.listen-address", &format!("127.0.0.1:{port}")])
        .args(["-redis.addr", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis_exporter");
    let get = |path: &str| common::http_send_to(std::net::Ipv4Addr::LOCALHOST.into(), port, "GET", path, &[], b"");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get("/").is_err() {
        assert!(Instant::now() < deadline, "redis_exporter did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let scrape = |target: u16| {
        let (code, _) = get(&format!("/scrape?target=redis://127.0.0.1:{target}")).expect("scrape");
        assert_eq!(code, 200, "redis_exporter scraping {target}");
    };
    // One round first: connections and caches as in a steady state.
    ports.iter().for_each(|p| scrape(*p));
    let pid = child.id();
    let (began, before) = (Instant::now(), cpu_ms(pid));
    let gap = SCRAPE_INTERVAL.div_f64(ports.len() as f64);
    let mut scrapes = 0;
    while began.elapsed() < rest {
        scrape(ports[scrapes % ports.len()]);
        scrapes += 1;
        let next = gap * scrapes as u32;
        if let Some(wait) = next.checked_sub(began.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let run = ExporterRun {
        rss_kb: rss_kb(pid),
        cpu_ms: cpu_ms(pid) - before,
        scrapes,
    };
    let _ = child.kill();
    let _ = child.wait();
    run
}

/// With every server up under supervisor `pid`: the kills, then the rest; then
/// `stop` stops the supervisor and what still listens on `ports` is killed (the
/// servers outlive their supervisor).
fn measure_running(
    start: Duration,
    pid: u32,
    ports: &[u16],
    kill_count: usize,
    rest: Duration,
    with_exporter: bool,
    stop: impl FnOnce(),
) -> Measured {
    let kill_to_pong = kills(ports, kill_count);
    let (rss_kb, rest_cpu_ms, servers_cpu_ms) = at_rest(pid, Duration::from_secs(10), rest);
    let exporter = with_exporter.then(|| exporter(ports, rest));
    stop();
    for port in ports {
        if let Some(pid) = listener_pid(*port) {
            common::send_signal(pid, common::SIGKILL);
        }
    }
    Measured {
        start,
        kill_to_pong,
        rss_kb,
        rest_cpu_ms,
        servers_cpu_ms,
        exporter,
    }
}

fn agent(ports: &[u16], kill_count: usize, rest: Duration) -> Measured {
    let mut h = Harness::new();
    h.env.push(("KER_AGENT_LOG", "info".into()));
    for (i, port) in ports.iter().enumerate() {
        h.manifest(
            &format!("r{i:04}"),
            *port,
            "[config]\nsave = \"\"\nappendonly = \"no\"\n",
        );
    }
    let began = Instant::now();
    h.start_agent();
    wait_all_pong(ports, Duration::from_secs(300));
    let start = began.elapsed();
    // Every server ready in the agent's eyes, before a kill can be a first crash.
    h.wait_for("every instance ready", Duration::from_secs(120), |h| {
        h.status()["instances"]
            .as_array()
            .is_some_and(|l| l.len() == ports.len() && l.iter().all(|i| i["ready"] == true))
    });
    let pid = h.agent_pid();
    measure_running(start, pid, ports, kill_count, rest, false, || {
        h.stop_agent(common::SIGTERM);
    })
}

fn supervisord_config(dir: &Path, ports: &[u16]) -> String {
    let d = dir.display();
    let mut text = format!(
        "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\n\
         [unix_http_server]\nfile={d}/supervisor.sock\n\
         [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
    );
    for (i, port) in ports.iter().enumerate() {
        let data = dir.join(format!("r{i:04}"));
        std::fs::create_dir_all(&data).unwrap();
        text.push_str(&format!(
            "[program:r{i:04}]\ncommand={} --port {port} --bind 127.0.0.1 --save \"\" --appendonly no --dir {}\n\
             autorestart=true\nstartsecs=1\nstdout_logfile={d}/r{i:04}.log\nredirect_stderr=true\n",
            redis_server().display(),
            data.display()
        ));
    }
    text
}

fn supervisord(ports: &[u16], kill_count: usize, rest: Duration) -> Measured {
    assert!(
        Path::new(SUPERVISORD).is_file(),
        "{SUPERVISORD} not found: apt-get install -y supervisor"
    );
    let dir = tempfile::Builder::new()
        .prefix("ker-agent-supervisord-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("supervisord.conf");
    std::fs::write(&config, supervisord_config(dir.path(), ports)).unwrap();
    let began = Instant::now();
    let mut child: Child = Command::new(SUPERVISORD)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_all_pong(ports, Duration::from_secs(300));
    let start = began.elapsed();
    // A program counts as started after startsecs (1 s): kills before that are
    // start failures to supervisord, with their own back-off.
    std::thread::sleep(Duration::from_secs(2));
    let pid = child.id();
    measure_running(start, pid, ports, kill_count, rest, true, || {
        common::send_signal(pid, common::SIGTERM);
        let _ = child.wait();
    })
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn main() {
    let n = num("BENCH_INSTANCES", 100) as usize;
    let kill_count = (num("BENCH_KILLS", 10) as usize).min(n);
    let rest = Duration::from_secs(num("BENCH_REST_SECS", 60));
    println!("== ker-agent next to supervisord ==");
    println!("command:      BENCH_INSTANCES={n} cargo bench --bench compare");
    println!("agent binary: {}", common::AGENT);
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let s = supervisord(&ports, kill_count, rest);
    let a = agent(&ports, kill_count, rest);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |cpu: f64| cpu / rest.as_millis() as f64 * 100.0;
    println!();
    println!("{n} instances               | ker-agent        | supervisord      | ratio");
    println!("----------------------------|------------------|------------------|------");
    println!(
        "start → all PONG            | {:>10.0} ms    | {:>10.0} ms    | {:.2}",
        ms(a.start),
        ms(s.start),
        ms(a.start) / ms(s.start)
    );
    println!(
        "kill -9 → PONG (median {kill_count})    | {:>10.1} ms    | {:>10.1} ms    | {:.2}",
        ms(median(&a.kill_to_pong)),
        ms(median(&s.kill_to_pong)),
        ms(median(&a.kill_to_pong)) / ms(median(&s.kill_to_pong))
    );
    println!(
        "RSS at rest                 | {:>10.1} MB    | {:>10.1} MB    | {:.2}",
        a.rss_kb as f64 / 1024.0,
        s.rss_kb as f64 / 1024.0,
        a.rss_kb as f64 / s.rss_kb as f64
    );
    println!(
        "CPU at rest ({} s)          | {:>10.3} %     | {:>10.3} %     | {:.2}",
        rest.as_secs(),
        pct(a.rest_cpu_ms),
        pct(s.rest_cpu_ms),
        a.rest_cpu_ms / s.rest_cpu_ms.max(1.0)
    );
    println!(
        "the {n} servers' own CPU     | {:>10.1} %     | {:>10.1} %     |",
        pct(a.servers_cpu_ms),
        pct(s.servers_cpu_ms)
    );
    let per = |v: f64| v / n as f64;
    println!();
    println!("per instance                | ker-agent        | supervisord      | redis_exporter");
    println!("----------------------------|------------------|------------------|---------------");
    let e = s.exporter.as_ref().expect("redis_exporter measured beside supervisord");
    println!(
        "CPU at rest                 | {:>10.4} %     | {:>10.4} %     | {:.4} % ({} scrapes, one per server every {} s)",
        per(pct(a.rest_cpu_ms)),
        per(pct(s.rest_cpu_ms)),
        per(pct(e.cpu_ms)),
        e.scrapes,
        SCRAPE_INTERVAL.as_secs()
    );
    println!(
        "RSS                         | {:>10.1} KB    | {:>10.1} KB    | {:.1} KB",
        per(a.rss_kb as f64),
        per(s.rss_kb as f64),
        per(e.rss_kb as f64)
    );
    println!(
        "a server's own CPU          | {:>10.4} %     | {:>10.4} %     |",
        per(pct(a.servers_cpu_ms)),
        per(pct(s.servers_cpu_ms))
    );
    println!();
    println!(
        "redis_exporter: CPU {:.3} % of a core, RSS {:.1} MB ({} scrapes in {} s)",
        pct(e.cpu_ms),
        e.rss_kb as f64 / 1024.0,
        e.scrapes,
        rest.as_secs()
    );
}

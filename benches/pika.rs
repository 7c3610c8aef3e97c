//! Pika benchmark: the release build of `ker-agent` against a real Pika, next to the
//! same Pika started and stopped directly, in one run. Three numbers:
//!
//! 1. kill -9 of an instance → PONG from the new pid (agent), next to Pika's own exec
//!    → PONG on the same data and config (baseline);
//! 2. the graceful stop of an idle Pika: the agent's stop (`state = "stopped"`, as its
//!    stop event reports it) next to Pika's own SIGTERM → exit;
//! 3. the same with a loaded Pika (`BENCH_KEYS` keys, 1,000,000 by default).
//!
//! Run with `cargo bench --bench pika`. It needs a Pika binary: `PIKA_BIN`, else
//! `pika` on `PATH`. Knobs (environment): `BENCH_KILLS` (8), `BENCH_STOPS` (3),
//! `BENCH_KEYS` (1000000). Every process it starts is killed at the end (the harness
//! kills whatever runs from its temporary directory).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{log_timestamp, pika_port, wall_seconds_of_day, Harness, SIGHUP, SIGKILL, SIGTERM};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start or a stop may take before the benchmark gives up.
const LIMIT: Duration = Duration::from_secs(120);

fn pika_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PIKA_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("pika"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            eprintln!("no pika binary: set PIKA_BIN or put pika on PATH");
            std::process::exit(2)
        })
}

fn num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn manifest(h: &Harness, name: &str, port: u16, state: &str) {
    h.write_manifest(
        name,
        &format!(
            "name = \"{name}\"\nengine = \"pika\"\nversion = \"4.0\"\nport = {port}\nstate = \"{state}\"\n\
             [config]\nmaxclients = 1000\n"
        ),
    );
}

/// The pid of the Pika answering on `port`, once it answers PING.
fn answering_pid(port: u16) -> Option<u32> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(200)).ok()?;
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let pong: String = redis::cmd("PING").query(&mut conn).ok()?;
    if pong != "PONG" {
        return None;
    }
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until a Pika other than `old` answers on `port`; returns when.
fn wait_new_pid(port: u16, old: Option<u32>) -> (Instant, u32) {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(pid) = answering_pid(port).filter(|pid| Some(*pid) != old) {
            return (Instant::now(), pid);
        }
        assert!(Instant::now() < deadline, "nothing new answered on {port}");
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid and a signal number has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Pika started directly, on the agent's config file for an instance.
fn bare_pika(bin: &Path, config: &Path, cwd: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(bin)
        .arg("-c")
        .arg(config)
        .current_dir(cwd)
        .env_clear()
        .env("GLOG_minloglevel", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start pika")
}

/// SIGTERM → exit of a child, as waitpid sees it.
fn sigterm_to_exit(child: &mut Child) -> Duration {
    let began = Instant::now();
    kill(child.id(), SIGTERM);
    loop {
        if child.try_wait().unwrap().is_some() {
            return began.elapsed();
        }
        assert!(began.elapsed() < LIMIT, "pika did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Stops instance `name` through the agent; returns the stop's own duration as the
/// agent reports it (`last_stop.took_ms`).
fn agent_stop(h: &Harness, name: &str, port: u16) -> Duration {
    manifest(h, name, port, "stopped");
    h.signal_agent(SIGHUP);
    h.wait_for(&format!("{name} stopped"), LIMIT, |h| {
        h.instance(name)["phase"] == "stopped"
    });
    let stop = &h.instance(name)["last_stop"];
    assert_eq!(stop["forced"], false, "{stop}");
    Duration::from_millis(stop["took_ms"].as_u64().unwrap())
}

fn agent_start(h: &Harness, name: &str, port: u16) -> u32 {
    manifest(h, name, port, "running");
    h.signal_agent(SIGHUP);
    h.wait_for(&format!("{name} ready"), LIMIT, |h| {
        let i = h.instance(name);
        i["phase"] == "running" && i["ready"] == true
    });
    h.instance(name)["pid"].as_u64().unwrap() as u32
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    format!(
        "median {median:.1} ms, min {:.1}, max {:.1} (n={})",
        values[0],
        values[values.len() - 1],
        values.len()
    )
}

fn main() {
    let bin = pika_bin();
    let kills = num("BENCH_KILLS", 8);
    let stops = num("BENCH_STOPS", 3);
    let keys = num("BENCH_KEYS", 1_000_000);
    let version = Command::new(&bin)
        .arg("-v")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let version = String::from_utf8_lossy(&version);
    let version = version.lines().find(|l| l.starts_with("pika_version")).unwrap_or("?");
    println!("pika: {} ({version})", bin.display());

    let mut h = Harness::with_agent_toml(
        "",
        &format!("\n[engines.pika.versions]\n\"4.0\" = \"{}\"\n", bin.display()),
    );

    // 1. kill -9 → PONG. Each instance is killed once: only a first crash restarts at
    // once (later ones wait for the back-off).
    let ports: Vec<u16> = (0..kills).map(|_| pika_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        manifest(&h, &format!("k{i}"), *port, "running");
    }
    h.start_agent();
    for i in 0..kills {
        h.wait_for(&format!("k{i} ready"), LIMIT, |h| {
            h.instance(&format!("k{i}"))["ready"] == true
        });
    }
    let (mut agent_kill, mut noticed, mut started) = (Vec::new(), Vec::new(), Vec::new());
    for (i, port) in ports.iter().enumerate() {
        let pid = h.instance(&format!("k{i}"))["pid"].as_u64().unwrap() as u32;
        let wall = wall_seconds_of_day();
        let began = Instant::now();
        kill(pid, SIGKILL);
        let (at, _) = wait_new_pid(*port, Some(pid));
        agent_kill.push(ms(at - began));
        // Where the time went, from the agent's log.
        let log = std::fs::read_to_string(h.agent_log()).unwrap_or_default();
        let after_kill = |needle: &str| {
            log.lines()
                .filter(|l| l.contains(needle) && l.contains(&format!("instance=\"k{i}\"")))
                .filter_map(log_timestamp)
                .map(|t| (t - wall) * 1000.0)
                .find(|t| *t >= 0.0)
        };
        noticed.extend(after_kill("Instance exited."));
        started.extend(after_kill("Instance started."));
    }
    // Baseline: Pika's own exec → PONG, on k0's config and data (stopped by the agent).
    let k0 = h.instance_dir("k0");
    let bare_log = h.path().join("bare.log");
    let bare_k0 = || bare_pika(&bin, &k0.join("pika.conf"), &k0.join("data"), &bare_log);
    agent_stop(&h, "k0", ports[0]);
    let mut own_start = Vec::new();
    for _ in 0..kills {
        let began = Instant::now();
        let mut child = bare_k0();
        let (at, _) = wait_new_pid(ports[0], None);
        own_start.push(ms(at - began));
        kill(child.id(), SIGKILL);
        let _ = child.wait();
    }
    println!(
        "1. kill -9 → PONG from the new pid, agent: {}",
        summary(&mut agent_kill)
    );
    println!("1.   kill → exit noticed (agent log):      {}", summary(&mut noticed));
    println!("1.   kill → new Pika exec'd (agent log):   {}", summary(&mut started));
    println!("1. Pika's own exec → PONG (baseline):   {}", summary(&mut own_start));

    // 2. Idle stop: the agent's, then Pika's own, alternating.
    let (mut agent_idle, mut own_idle) = (Vec::new(), Vec::new());
    agent_start(&h, "k0", ports[0]);
    for _ in 0..stops {
        agent_idle.push(ms(agent_stop(&h, "k0", ports[0])));
        let mut child = bare_k0();
        wait_new_pid(ports[0], None);
        own_idle.push(ms(sigterm_to_exit(&mut child)));
        agent_start(&h, "k0", ports[0]);
    }
    println!("2. idle stop, agent (stop event):        {}", summary(&mut agent_idle));
    println!("2. idle, Pika's own SIGTERM → exit:      {}", summary(&mut own_idle));

    // 3. Loaded stop.
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{}/", ports[0]))
        .unwrap()
        .get_connection()
        .unwrap();
    let loading = Instant::now();
    let value = "v".repeat(64);
    for batch in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in batch {
            pipe.cmd("SET").arg(format!("key:{i:08}")).arg(&value).ignore();
        }
        pipe.query::<()>(&mut conn).unwrap();
    }
    drop(conn);
    println!("3. {keys} keys written in {:.1} s", loading.elapsed().as_secs_f64());
    let (mut agent_loaded, mut own_loaded, mut own_loaded_start) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..stops {
        agent_loaded.push(ms(agent_stop(&h, "k0", ports[0])));
        let began = Instant::now();
        let mut child = bare_k0();
        let (at, _) = wait_new_pid(ports[0], None);
        own_loaded_start.push(ms(at - began));
        own_loaded.push(ms(sigterm_to_exit(&mut child)));
        agent_start(&h, "k0", ports[0]);
    }
    println!(
        "3. loaded ({keys} keys, {} MB on disk):",
        dir_bytes(&k0.join("data/db")) >> 20
    );
    println!(
        "3. loaded stop, agent (stop event):      {}",
        summary(&mut agent_loaded)
    );
    println!("3. loaded, Pika's own SIGTERM → exit:    {}", summary(&mut own_loaded));
    println!(
        "3. loaded, Pika's own exec → PONG:       {}",
        summary(&mut own_loaded_start)
    );
    h.stop_agent(SIGTERM);
}

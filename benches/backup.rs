//! Backup and restore benchmark: the release build of `ker-agent` with a real
//! `redis-server` holding about 1 GB, next to doing the same by hand, in one run.
//!
//! 1. Redis's own `BGSAVE` of the dataset, asked for directly and followed through
//!    `INFO persistence` (baseline), next to the agent's backup asked for by
//!    `backup_epoch` (its `duration_ms`: free-space check, the same BGSAVE followed,
//!    link, SHA-256, `redis-check-rdb`, commit), with the agent's own CPU and that of
//!    its `redis-check-rdb` child over the backup;
//! 2. a new instance seeded from that backup over the agent's API (`restore_from =
//!    { url, sha256 }`): manifest change → PONG with every key loaded, next to copying
//!    the RDB by hand into a fresh directory and starting `redis-server` on it.
//!
//! Run with `cargo bench --bench backup`. Knobs (environment): `BENCH_KEYS` (1000000)
//! and `BENCH_VALUE_BYTES` (1000): random values, so that the RDB is as large as the
//! dataset. Every process it starts is killed at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{
    cpu_ms, env_number, free_port, log_timestamp, redis, spawn_foreign_redis, wall_seconds_of_day, Harness, SIGHUP,
};
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(600);

/// CPU of the waited-for children of `pid` (cutime + cstime), in ms.
fn children_cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[13].parse::<f64>().unwrap() + fields[14].parse::<f64>().unwrap();
    ticks * 1000.0 / ker_agent::sys::clock_ticks_per_second() as f64
}

fn info_field(conn: &mut redis::Connection, section: &str, key: &str) -> String {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Writes `keys` keys of `value_bytes` random bytes each.
fn fill(port: u16, keys: usize, value_bytes: usize) {
    let mut conn = redis(port, None).unwrap();
    let mut value = vec![0u8; value_bytes];
    for batch in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in batch {
            fastrand::fill(&mut value);
            pipe.cmd("SET").arg(format!("key:{i}")).arg(&value[..]).ignore();
        }
        pipe.query::<()>(&mut conn).unwrap();
    }
}

/// Redis's own BGSAVE, asked for directly, to its end.
fn bare_bgsave(port: u16) -> Duration {
    let mut conn = redis(port, None).unwrap();
    let before: u64 = info_field(&mut conn, "persistence", "rdb_last_save_time")
        .parse()
        .unwrap();
    let began = Instant::now();
    let reply: String = redis::cmd("BGSAVE").query(&mut conn).unwrap();
    assert!(reply.contains("started"), "BGSAVE: {reply}");
    let mut seen_running = false;
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let in_progress = info_field(&mut conn, "persistence", "rdb_bgsave_in_progress") == "1";
        seen_running |= in_progress;
        let last: u64 = info_field(&mut conn, "persistence", "rdb_last_save_time")
            .parse()
            .unwrap();
        // Its end: seen running and no longer, or a newer save time.
        if !in_progress && (seen_running || last > before) {
            assert_eq!(info_field(&mut conn, "persistence", "rdb_last_bgsave_status"), "ok");
            return began.elapsed();
        }
        assert!(began.elapsed() < LIMIT, "BGSAVE did not end");
    }
}

/// Waits until the server on `port` answers PING (not LOADING) with `keys` keys.
fn wait_loaded(port: u16, keys: u64, began: Instant) -> Duration {
    loop {
        let loaded = redis(port, None).ok().and_then(|mut conn| {
            let pong: String = redis::cmd("PING").query(&mut conn).ok()?;
            let size: u64 = redis::cmd("DBSIZE").query(&mut conn).ok()?;
            (pong == "PONG" && size == keys).then_some(())
        });
        if loaded.is_some() {
            return began.elapsed();
        }
        assert!(began.elapsed() < LIMIT, "nothing loaded on {port}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let keys = env_number("BENCH_KEYS", 1_000_000) as usize;
    let value_bytes = env_number("BENCH_VALUE_BYTES", 1000) as usize;
    let mut h = Harness::new();
    h.use_api_token();
    h.append_agent_toml("[backup]\nfetch_token_file = \"api.token\"\n");
    let (port, port_copy, port_hand) = (free_port(), free_port(), free_port());
    // No automatic saves: every snapshot in the run is one the benchmark asked for.
    h.manifest("big", port, "[config]\nsave = \"\"\n");
    h.start_agent();
    h.wait_ready("big");

    let began = Instant::now();
    fill(port, keys, value_bytes);
    let mut conn = redis(port, None).unwrap();
    let used: u64 = info_field(&mut conn, "memory", "used_memory").parse().unwrap();
    println!(
        "dataset: {keys} keys of {value_bytes} random bytes, used_memory {:.2} GB, written in {}",
        used as f64 / 1e9,
        secs(began.elapsed())
    );

    // 1. Backup.
    let bare = bare_bgsave(port);
    let rdb = std::fs::metadata(h.instance_dir("big").join("data/dump.rdb"))
        .unwrap()
        .len();
    println!(
        "Redis's own BGSAVE → done: {} (RDB {:.2} GB)",
        secs(bare),
        rdb as f64 / 1e9
    );
    let agent = h.agent_pid();
    // The agent's CPU when idle, over as long as the backup is expected to take.
    let idle_window = bare + Duration::from_secs(3);
    let idle_before = cpu_ms(agent);
    std::thread::sleep(idle_window);
    let idle_ms = cpu_ms(agent) - idle_before;
    let (cpu_before, children_before) = (cpu_ms(agent), children_cpu_ms(agent));
    let asked = Instant::now();
    h.manifest("big", port, "backup_epoch = 1\n[config]\nsave = \"\"\n");
    h.signal_agent(SIGHUP);
    let backup = common::wait_backup(&h, "big", 1, LIMIT);
    let wall = asked.elapsed();
    let (cpu, children) = (cpu_ms(agent) - cpu_before, children_cpu_ms(agent) - children_before);
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    let stage = |message: &str| {
        log.lines()
            .find(|l| l.contains(message) && l.contains("instance=\"big\""))
            .and_then(|l| l.split("took_ms=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| secs(Duration::from_millis(ms)))
            .unwrap_or_default()
    };
    println!(
        "agent backup stages (from its log): snapshot written at {}, copied, hashed and checked at {}",
        stage("Snapshot written."),
        stage("Backup copied and checked.")
    );
    let took = Duration::from_millis(backup["duration_ms"].as_u64().unwrap());
    println!(
        "agent backup: duration_ms {} (SIGHUP → listed {}), {} keys, {:.2} GB, sha256 {}",
        secs(took),
        secs(wall),
        backup["keys"],
        backup["bytes"].as_u64().unwrap() as f64 / 1e9,
        backup["sha256"].as_str().unwrap()
    );
    println!(
        "agent beyond BGSAVE: {} wall; agent CPU {:.0} ms over the backup ({:.0} ms when idle for {}), redis-check-rdb CPU {:.0} ms",
        secs(took.saturating_sub(bare)),
        cpu,
        idle_ms,
        secs(idle_window),
        children
    );

    // 2. Restore: seed a new instance over the API, then the same by hand.
    let id = backup["id"].as_str().unwrap();
    let sha = backup["sha256"].as_str().unwrap();
    let url = format!("http://127.0.0.1:{}/v1/instances/big/backups/{id}", h.api_addr().1);
    let asked = Instant::now();
    let asked_wall = wall_seconds_of_day();
    h.manifest(
        "copy",
        port_copy,
        &format!("restore_from = {{ url = \"{url}\", sha256 = \"{sha}\" }}\n[config]\nsave = \"\"\n"),
    );
    h.signal_agent(SIGHUP);
    let seeded = wait_loaded(port_copy, keys as u64, asked);
    // When the data was in place, from the agent's log.
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    let placed = log
        .lines()
        .find(|l| l.contains("Instance data restored.") && l.contains("instance=\"copy\""))
        .and_then(log_timestamp)
        .map(|t| Duration::from_secs_f64((t - asked_wall).max(0.0)));
    println!(
        "agent seed over its API: manifest → PONG with {keys} keys: {}; of which fetched, hashed, checked and placed: {}, then start and load: {}",
        secs(seeded),
        placed.map(secs).unwrap_or_default(),
        placed.map(|p| secs(seeded.saturating_sub(p))).unwrap_or_default()
    );

    let hand_dir = h.path().join("by-hand");
    std::fs::create_dir_all(&hand_dir).unwrap();
    let source = h.path().join(format!("data/backups/big/{id}.rdb"));
    let began = Instant::now();
    let copied = Command::new("cp")
        .arg(&source)
        .arg(hand_dir.join("dump.rdb"))
        .status()
        .unwrap();
    assert!(copied.success());
    let copy_time = began.elapsed();
    let mut server = spawn_foreign_redis(&hand_dir, port_hand, None);
    let by_hand = wait_loaded(port_hand, keys as u64, began);
    let _ = server.kill();
    let _ = server.wait();
    println!(
        "by hand: cp + redis-server → PONG with {keys} keys: {} (cp {})",
        secs(by_hand),
        secs(copy_time)
    );
}

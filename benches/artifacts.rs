//! Engine builds from the artifact store: the release build of `ker-agent`, a test
//! store over HTTPS on loopback (test CA, a key made by minisign), archives of the
//! installed `redis-server` padded with random bytes to a chosen size.
//!
//! 1. For each run, a new instance naming a new version: from the SIGHUP that makes the
//!    agent read its manifest to PONG on the new build, split into download (manifest,
//!    signature, archive), verification (signature, fields, the archive's SHA-256
//!    compared), unpack (with fsync and rename) — from the agent's own "Engine build
//!    installed." line — and the rest (the worker's wake-up, the start, the first PONG).
//! 2. The agent's RSS sampled every 2 ms over the fetch, before and at its peak, for the
//!    archive of run 1 and for one ten times larger: a streamed download does not
//!    grow with the archive.
//!
//! Run with `cargo bench --bench artifacts`. Knobs (environment): `BENCH_ARCHIVE_MB`
//! (10), `BENCH_RUNS` (5). Every process it starts is killed at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use common::store::{self, Signer, Store};
use common::tls::Ca;
use common::{env_number, free_port, pong, Harness, SIGHUP};
use std::time::{Duration, Instant};

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// An archive of about `mb` MB: redis-server (compressed) plus random padding.
fn archive_of(mb: u64) -> Vec<u8> {
    let bare = store::redis_archive(0).len() as u64;
    store::redis_archive((mb << 20).saturating_sub(bare) as usize)
}

/// `field=<n>` of the agent's "Engine build installed." line for `version`.
fn installed_field(h: &Harness, version: &str, field: &str) -> Option<f64> {
    let log = std::fs::read_to_string(h.agent_log()).ok()?;
    let line = log
        .lines()
        .find(|l| l.contains("Engine build installed.") && l.contains(&format!("version={version} ")))?;
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{field}=")))?;
    value.parse().ok()
}

struct Run {
    total_ms: f64,
    download_ms: f64,
    verify_ms: f64,
    unpack_ms: f64,
    rss_before_kb: u64,
    rss_peak_kb: u64,
}

/// Declares instance `name` on a new port with `version`, reloads, and waits for PONG
/// from the new build while sampling the agent's RSS.
fn run_once(h: &Harness, name: &str, version: &str) -> Run {
    let port = free_port();
    let pid = h.agent_pid();
    let rss_before_kb = rss_kb(pid);
    h.manifest_with_version(name, version, port, "");
    let began = Instant::now();
    h.signal_agent(SIGHUP);
    let mut rss_peak_kb = rss_before_kb;
    let exe = h
        .path()
        .join("data/engines/redis")
        .join(version)
        .join("bin/redis-server");
    loop {
        rss_peak_kb = rss_peak_kb.max(rss_kb(pid));
        let on_build = common::listener_pid(port)
            .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
            .is_some_and(|e| e == exe);
        if on_build && pong(port, None) {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "{name} never answered on {version}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let total_ms = began.elapsed().as_secs_f64() * 1000.0;
    let field = |f| installed_field(h, version, f).unwrap_or(f64::NAN);
    Run {
        total_ms,
        download_ms: field("download_ms"),
        verify_ms: field("verify_ms"),
        unpack_ms: field("unpack_ms"),
        rss_before_kb,
        rss_peak_kb,
    }
}

fn main() {
    let mb = env_number("BENCH_ARCHIVE_MB", 10);
    let runs = env_number("BENCH_RUNS", 5);
    let mut h = Harness::new();
    let ca = Ca::new("bench store CA");
    let store = Store::start(&ca);
    let signer = Signer::new(h.path(), "bench");
    store::trust(&h, &store, &ca, &signer, "");
    let archive = archive_of(mb);
    let large = archive_of(mb * 10);
    for i in 0..runs {
        store.publish("redis", &format!("9.{i}"), &archive, "bin/redis-server", &signer);
    }
    store.publish("redis", "9.large", &large, "bin/redis-server", &signer);
    h.start_agent();
    // The agent's steady state before the first fetch.
    std::thread::sleep(Duration::from_secs(2));

    println!(
        "archive: {:.1} MB ({} bytes), {} runs, loopback HTTPS; times in ms",
        archive.len() as f64 / 1e6,
        archive.len(),
        runs
    );
    println!("| run | total → PONG | download | verify | unpack | start + rest | RSS before → peak (MB) |");
    println!("|---|---|---|---|---|---|---|");
    for i in 0..runs {
        let r = run_once(&h, &format!("b{i}"), &format!("9.{i}"));
        let rest = r.total_ms - r.download_ms - r.verify_ms - r.unpack_ms;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} → {:.1} |",
            i + 1,
            r.total_ms,
            r.download_ms,
            r.verify_ms,
            r.unpack_ms,
            rest,
            r.rss_before_kb as f64 / 1024.0,
            r.rss_peak_kb as f64 / 1024.0
        );
    }
    let r = run_once(&h, "large", "9.large");
    println!(
        "archive of {:.1} MB: total {:.0} ms (download {:.0}, verify {:.0}, unpack {:.0}); RSS {:.1} → {:.1} MB",
        large.len() as f64 / 1e6,
        r.total_ms,
        r.download_ms,
        r.verify_ms,
        r.unpack_ms,
        r.rss_before_kb as f64 / 1024.0,
        r.rss_peak_kb as f64 / 1024.0
    );
    assert_eq!(store.requests("redis-9.large.tar.gz"), 1);
}

//! Stops that keep data: a server that cannot save is not killed (unless its spec says
//! so), a blocked stop says why and how to fix it and finishes once the save works,
//! the stop timeout fits the dataset, and a stop shows the save it waits for. Against
//! real `redis-server` processes.
//!
//! A save is made to fail without root tricks: a directory named like the file Redis
//! saves into (`temp-<pid>.rdb`) makes its `fopen` fail with "Is a directory".

mod common;

use common::*;
use std::time::{Duration, Instant};

/// A persisting instance `a` on `port` with `top` (top-level keys), ready, with a key
/// written; returns its pid.
fn persisting(h: &mut Harness, port: u16, top: &str) -> u32 {
    h.manifest("a", port, &format!("{top}\n[config]\nsave = \"3600 1\"\n"));
    h.start_agent();
    let pid = h.wait_ready("a");
    let mut conn = redis(port, None).unwrap();
    redis::cmd("SET")
        .arg("k")
        .arg("unsaved")
        .query::<()>(&mut conn)
        .unwrap();
    pid
}

/// Makes the next save of process `pid` fail; returns what undoes it.
fn break_saves(h: &Harness, pid: u32) -> std::path::PathBuf {
    let blocker = h.instance_dir("a").join("data").join(format!("temp-{pid}.rdb"));
    std::fs::create_dir(&blocker).unwrap();
    blocker
}

/// A persisting instance whose stop (timeout 2 s) is blocked by a failing save:
/// the harness, its port, its pid and what unblocks it.
fn blocked_stop() -> (Harness, u16, u32, std::path::PathBuf) {
    let mut h = Harness::new();
    let port = free_port();
    let pid = persisting(&mut h, port, "stop_timeout = \"2s\"");
    let blocker = break_saves(&h, pid);
    h.manifest(
        "a",
        port,
        "state = \"stopped\"\nstop_timeout = \"2s\"\n[config]\nsave = \"3600 1\"",
    );
    h.signal_agent(SIGHUP);
    h.wait_for("the stop blocked", Duration::from_secs(10), |h| {
        message(h).contains("blocked for")
    });
    (h, port, pid, blocker)
}

fn message(h: &Harness) -> String {
    h.instance("a")["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_server_that_cannot_save_keeps_running_until_the_save_works() {
    let (h, port, pid, blocker) = blocked_stop();
    let said = message(&h);
    assert!(said.contains("SHUTDOWN SAVE refused"), "{said}");
    assert!(
        said.contains("Is a directory"),
        "the server's own words are missing: {said}"
    );
    assert!(said.contains("on_save_failure = \"kill\""), "{said}");
    assert!(
        said.contains(&h.instance_dir("a").join("data").display().to_string()),
        "{said}"
    );
    assert_eq!(count_events(&h, "a", "stop-blocked"), 1, "{:?}", events(&h, "a"));

    // Well past the stop timeout: alive, serving, nothing lost.
    std::thread::sleep(Duration::from_secs(4));
    assert!(alive(pid), "the server was killed with its unsaved writes");
    assert_eq!(h.instance("a")["phase"], "stopping");
    let value: Option<String> = redis(port, None)
        .and_then(|mut c| redis::cmd("GET").arg("k").query(&mut c))
        .unwrap();
    assert_eq!(value.as_deref(), Some("unsaved"));
    // Said once, not at every try.
    assert_eq!(count_events(&h, "a", "stop-refused"), 1, "{:?}", events(&h, "a"));

    // Fixed: the next try saves and stops it.
    std::fs::remove_dir(&blocker).unwrap();
    h.wait_for("the stop done", Duration::from_secs(15), |h| {
        h.instance("a")["phase"] == "stopped"
    });
    assert!(!alive(pid));
    let stop = &h.instance("a")["last_stop"];
    assert_eq!(stop["forced"], false, "{stop}");
    assert!(
        stop["how"].as_str().unwrap().starts_with("SHUTDOWN SAVE (after "),
        "{stop}"
    );
    let dump = std::fs::read(h.instance_dir("a").join("data/dump.rdb")).unwrap();
    assert!(dump.windows(7).any(|w| w == b"unsaved"), "the write is not in dump.rdb");
}

#[test]
fn on_save_failure_kill_stops_a_cache_that_cannot_save_at_the_timeout() {
    let mut h = Harness::new();
    let port = free_port();
    let top = "stop_timeout = \"2s\"\non_save_failure = \"kill\"";
    let pid = persisting(&mut h, port, top);
    break_saves(&h, pid);
    let began = Instant::now();
    h.manifest(
        "a",
        port,
        &format!("state = \"stopped\"\n{top}\n[config]\nsave = \"3600 1\""),
    );
    h.signal_agent(SIGHUP);
    h.wait_for("the kill", Duration::from_secs(15), |h| {
        h.instance("a")["phase"] == "stopped"
    });
    assert!(began.elapsed() >= Duration::from_secs(2));
    let stop = &h.instance("a")["last_stop"];
    assert_eq!(stop["forced"], true, "{stop}");
    assert!(
        stop["how"]
            .as_str()
            .unwrap()
            .starts_with("SIGKILL after 2s (SHUTDOWN SAVE refused"),
        "{stop}"
    );
    assert_eq!(count_events(&h, "a", "stop-blocked"), 0);
}

#[test]
fn a_blocked_stop_is_called_off_when_the_instance_is_wanted_running_again() {
    let (h, port, pid, blocker) = blocked_stop();

    // The operator takes the stop back: the server runs on as it is.
    h.manifest("a", port, "stop_timeout = \"2s\"\n[config]\nsave = \"3600 1\"");
    h.signal_agent(SIGHUP);
    assert_eq!(h.wait_ready("a"), pid);
    assert_eq!(count_events(&h, "a", "stop-cancelled"), 1, "{:?}", events(&h, "a"));
    std::fs::remove_dir(&blocker).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(h.instance("a")["pid"], pid, "the stop went on after all");
    assert_eq!(h.instance("a")["phase"], "running");
}

#[test]
fn the_stop_timeout_fits_the_dataset_and_a_stop_shows_its_save() {
    let mut h = Harness::with_agent_toml("", "\n[monitoring]\nmetrics_interval = \"2s\"");
    let port = free_port();
    persisting(&mut h, port, "");
    let a = h.instance("a");
    assert_eq!(a["stop_timeout_seconds"], 60, "{a}");
    h.wait_for("a timeout derived from a sample", Duration::from_secs(10), |h| {
        h.instance("a")["stop_timeout_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("derived from") && r.contains("used memory"))
    });

    // A save that takes about 4 s (Redis waits 0.2 s per key): the stop says so.
    let mut conn = redis(port, None).unwrap();
    for i in 0..20 {
        redis::cmd("SET")
            .arg(format!("key:{i}"))
            .arg(i)
            .query::<()>(&mut conn)
            .unwrap();
    }
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("rdb-key-save-delay")
        .arg("200000")
        .query::<()>(&mut conn)
        .unwrap();
    h.manifest("a", port, "state = \"stopped\"\n[config]\nsave = \"3600 1\"");
    h.signal_agent(SIGHUP);
    h.wait_for("the save in the status", Duration::from_secs(10), |h| {
        message(h).contains("saving: ")
    });
    let said = message(&h);
    assert!(said.contains("with SHUTDOWN SAVE, saving: "), "{said}");
    assert!(said.contains("SIGKILL in "), "{said}");
    h.wait_for("the stop done", Duration::from_secs(30), |h| {
        h.instance("a")["phase"] == "stopped"
    });
    assert_eq!(h.instance("a")["last_stop"]["forced"], false);

    // A spec that sets its own timeout shows it.
    h.manifest("a", port, "state = \"stopped\"\nstop_timeout = \"90s\"");
    h.signal_agent(SIGHUP);
    h.wait_for("the spec's timeout", Duration::from_secs(10), |h| {
        h.instance("a")["stop_timeout_seconds"] == 90
    });
    assert_eq!(h.instance("a")["stop_timeout_reason"], "the spec's stop_timeout");
}

//! Engine builds from a trusted artifact store: a test store over HTTPS (test CA),
//! serving archives of the installed `redis-server` signed with a key made by
//! minisign in the test. A new version is fetched, verified, unpacked and run, and
//! reused by a restarted agent without a fetch; a running instance moves onto a new
//! build with one graceful restart and its data; every refusal (tampered archive,
//! changed manifest, unknown key, truncated download, traversal, 404, store down, no
//! room) keeps the old version running, and a crash meanwhile restarts it on what it
//! ran (a deliberate start waits); ten instances share one download; unused
//! builds are removed, used ones kept; reports carry the wait; a real Pika moves onto
//! a store build with its data.

mod common;

use common::store::{self, Entry, Signer, Store};
use common::tls::Ca;
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A store with its CA and signing key, and a harness whose agent trusts both.
struct Setup {
    h: Harness,
    store: Store,
    signer: Signer,
    _ca: Ca,
}

fn setup(keep_unused: &str) -> Setup {
    let h = Harness::new();
    let ca = Ca::new("artifact store CA");
    let store = Store::start(&ca);
    let signer = Signer::new(h.path(), "store");
    store::trust(&h, &store, &ca, &signer, &format!("keep_unused = \"{keep_unused}\""));
    Setup {
        h,
        store,
        signer,
        _ca: ca,
    }
}

impl Setup {
    /// Publishes a good build of redis `version` (its archive padded by `extra` bytes).
    fn publish(&self, version: &str, extra: usize) {
        self.store.publish(
            "redis",
            version,
            &store::redis_archive(extra),
            "bin/redis-server",
            &self.signer,
        );
    }

    fn build_dir(&self, version: &str) -> PathBuf {
        self.h.path().join("data/engines/redis").join(version)
    }
}

fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

fn engine_entry(h: &Harness, version: &str) -> Option<Value> {
    h.status()["engines"]
        .as_array()?
        .iter()
        .find(|e| e["version"] == version)
        .cloned()
}

/// Waits until the instance's build wait failed with an error containing `reason`.
fn wait_refused(h: &Harness, name: &str, version: &str, reason: &str) -> Value {
    h.wait_for_value(
        &format!("{name}: version {version} refused for {reason:?}"),
        WAIT,
        |h| {
            let build = h.instance(name)["build"].clone();
            (build["version"] == version
                && build["state"] == "failed"
                && build["error"].as_str().is_some_and(|e| e.contains(reason)))
            .then_some(build)
        },
    )
}

/// An agent whose instance "a" runs agent.toml's 7.0: its port and pid.
fn running_on_local_build() -> (Setup, u16, u32) {
    let mut s = setup("7d");
    let port = free_port();
    s.h.manifest("a", port, "");
    s.h.start_agent();
    let pid = s.h.wait_ready("a");
    (s, port, pid)
}

/// An agent whose instance "a" runs from the store's build of 7.9: its port and pid.
fn running_on_store_build() -> (Setup, u16, u32) {
    let mut s = setup("7d");
    s.publish("7.9", 0);
    let port = free_port();
    s.h.manifest_with_version("a", "7.9", port, "");
    s.h.start_agent();
    let pid = s.h.wait_ready("a");
    (s, port, pid)
}

#[test]
fn a_new_version_is_fetched_verified_run_and_reused_after_an_agent_restart() {
    let (mut s, port, pid) = running_on_store_build();
    let dir = s.build_dir("7.9");
    assert_eq!(exe_of(pid), dir.join("bin/redis-server"));
    assert!(pong(port, None));
    let entry = engine_entry(&s.h, "7.9").expect("7.9 listed in /v1/status engines");
    assert_eq!(entry["origin"], "store", "{entry}");
    assert_eq!(entry["state"], "ready", "{entry}");
    let archive = std::fs::read(s.store.version_dir("redis", "7.9").join("redis-7.9.tar.gz")).unwrap();
    assert_eq!(entry["sha256"], store::sha256_hex(&archive), "{entry}");
    assert!(
        entry["url"].as_str().unwrap().ends_with("/redis/7.9/manifest.json"),
        "{entry}"
    );
    assert_eq!(engine_entry(&s.h, "7.0").unwrap()["origin"], "agent.toml");
    assert_eq!(count_events(&s.h, "a", "build-awaited"), 1);
    assert_eq!(count_events(&s.h, "a", "build-ready"), 1);
    assert_eq!(s.store.requests("redis-7.9.tar.gz"), 1);
    // Nothing left beside the build: no download, no partial directory.
    let mut names: Vec<String> = std::fs::read_dir(s.h.path().join("data/engines/redis"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["7.9"]);
    assert_eq!(
        std::fs::read_dir(s.h.path().join("data/engines/.downloads"))
            .unwrap()
            .count(),
        0
    );

    // A restarted agent adopts the process and finds the build on disk: the store
    // may be gone.
    s.store.set_down(true);
    s.h.stop_agent(SIGTERM);
    s.h.start_agent();
    assert_eq!(s.h.wait_ready("a"), pid, "adopted, not restarted");
    let entry = s.h.wait_for_value("7.9 ready again", WAIT, |h| {
        engine_entry(h, "7.9").filter(|e| e["state"] == "ready")
    });
    assert_eq!(entry["sha256"], store::sha256_hex(&archive));
    assert_eq!(s.store.requests("redis-7.9.tar.gz"), 1, "no second download");

    // A restart of the process uses the build too.
    send_signal(pid, SIGKILL);
    let new_pid = s.h.wait_restarted("a", pid);
    assert_eq!(exe_of(new_pid), dir.join("bin/redis-server"));
    assert_eq!(s.store.requests("manifest.json"), 1);
}

#[test]
fn a_version_change_moves_a_running_instance_with_one_graceful_restart_and_its_data() {
    let mut s = setup("7d");
    // 8 MB of padding, sent at 4 MB/s: the old version is seen running meanwhile.
    s.publish("7.9", 8 << 20);
    s.store.throttle("redis-7.9.tar.gz", 4 << 20);
    let port = free_port();
    s.h.manifest("a", port, "");
    s.h.start_agent();
    let old = s.h.wait_ready("a");
    fill_keys(&mut redis(port, None).unwrap(), 500, "kept-");

    s.h.manifest_with_version("a", "7.9", port, "");
    s.h.signal_agent(SIGHUP);
    let during = s.h.wait_for_value("progress while the old version runs", WAIT, |h| {
        let i = h.instance("a");
        (i["build"]["state"] == "fetching" && i["build"]["bytes"].as_u64().unwrap_or(0) > 0).then_some(i)
    });
    assert_eq!(during["phase"], "running", "{during}");
    assert_eq!(during["version"], "7.0", "what runs: {during}");
    assert_eq!(during["pid"], old, "{during}");
    assert!(during["build"]["total_bytes"].as_u64().unwrap() > 8 << 20, "{during}");
    assert!(during["build"]["percent"].as_u64().unwrap() <= 100, "{during}");
    assert!(
        during["message"].as_str().unwrap().contains("keeps running"),
        "{during}"
    );

    let new = s.h.wait_restarted("a", old);
    s.h.wait_ready("a");
    assert_eq!(exe_of(new), s.build_dir("7.9").join("bin/redis-server"));
    let i = s.h.instance("a");
    assert_eq!(i["version"], "7.9", "{i}");
    assert!(i["build"].is_null(), "{i}");
    let mut conn = redis(port, None).unwrap();
    let kept: usize = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(kept, 500, "the data moved with the instance");
    // One graceful stop (SHUTDOWN), one start.
    assert_eq!(count_events(&s.h, "a", "stopped"), 1, "{:?}", events(&s.h, "a"));
    assert_eq!(count_events(&s.h, "a", "started"), 2, "{:?}", events(&s.h, "a"));
    assert_eq!(count_events(&s.h, "a", "killed-after-timeout"), 0);
}

#[test]
fn every_refusal_keeps_the_old_version_running_and_leaves_nothing() {
    let (s, port, pid) = running_on_local_build();
    let good = store::redis_archive(0);
    let other = Signer::new(s.h.path(), "stranger");

    // A tampered archive: the manifest's checksum no longer matches.
    s.publish("7.1", 0);
    std::fs::write(
        s.store.version_dir("redis", "7.1").join("redis-7.1.tar.gz"),
        store::redis_archive(10),
    )
    .unwrap();
    // A manifest changed after it was signed.
    s.publish("7.2", 0);
    let manifest = s.store.manifest_path("redis", "7.2");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("bin/redis-server", "bin/sh")).unwrap();
    // Signed by a key the agent does not trust.
    s.store.publish("redis", "7.3", &good, "bin/redis-server", &other);
    // A truncated download.
    s.publish("7.4", 0);
    s.store.truncate("redis-7.4.tar.gz", 1000);
    // An archive whose entry leaves the build, correctly signed.
    let evil = store::tar_gz(&[
        Entry::File("bin/redis-server", std::fs::read(redis_server()).unwrap(), 0o755),
        Entry::File("../../../../evil", b"x".to_vec(), 0o644),
    ]);
    s.store.publish("redis", "7.5", &evil, "bin/redis-server", &s.signer);
    // A link leaving it.
    let link = store::tar_gz(&[Entry::Dir("bin"), Entry::Symlink("bin/redis-server", "/bin/sh")]);
    s.store.publish("redis", "7.6", &link, "bin/redis-server", &s.signer);
    // 7.7 is not published at all: 404.

    let cases = [
        ("7.1", "has SHA-256"),
        ("7.2", "changed after it was signed"),
        ("7.3", "not in [artifacts] public_keys"),
        ("7.4", "truncated"),
        ("7.5", "not a relative path inside the build"),
        ("7.6", "a link that leads out of the build"),
        ("7.7", "answered 404"),
    ];
    for (version, reason) in cases {
        s.h.manifest_with_version("a", version, port, "");
        s.h.signal_agent(SIGHUP);
        let build = wait_refused(&s.h, "a", version, reason);
        let i = s.h.instance("a");
        assert_eq!(i["pid"], pid, "{version}: {i}");
        assert_eq!(i["phase"], "running", "{version}: {i}");
        assert_eq!(i["version"], "7.0", "{version}: {i}");
        assert!(build["next_attempt_at_ms"].as_u64().is_some(), "{build}");
        assert!(pong(port, None), "{version}");
        assert!(!s.build_dir(version).exists(), "{version}: nothing placed");
    }
    assert!(count_events(&s.h, "a", "build-unavailable") >= cases.len());
    assert!(!s.h.path().join("evil").exists() && !PathBuf::from("/evil").exists());
    let leftovers: Vec<_> = std::fs::read_dir(s.h.path().join("data/engines/redis"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The store down: refused as unreachable; the retry after it is back succeeds.
    s.store.set_down(true);
    s.h.manifest_with_version("a", "7.8", port, "");
    s.h.signal_agent(SIGHUP);
    let first = wait_refused(&s.h, "a", "7.8", "unreachable");
    assert_eq!(s.h.instance("a")["pid"], pid);
    s.publish("7.8", 0);
    s.store.set_down(false);
    let new = s.h.wait_restarted("a", pid);
    assert_eq!(exe_of(new), s.build_dir("7.8").join("bin/redis-server"));
    assert!(first["attempts"].as_u64().unwrap() >= 1, "{first}");
}

#[test]
fn ten_instances_wanting_one_version_share_one_download() {
    let mut s = setup("7d");
    s.publish("7.9", 4 << 20);
    s.store.throttle("redis-7.9.tar.gz", 2 << 20);
    let ports: Vec<u16> = (0..10).map(|_| free_port()).collect();
    for (i, port) in ports.iter().enumerate() {
        s.h.manifest_with_version(&format!("i{i}"), "7.9", *port, "");
    }
    s.h.start_agent();
    let seen = s.h.wait_for_value("an instance fetching, with its percent", WAIT, |h| {
        let i = h.instance("i3");
        (i["phase"] == "fetching" && i["build"]["percent"].as_u64().is_some()).then_some(i)
    });
    assert!(seen["message"].as_str().unwrap().contains("fetching"), "{seen}");
    for i in 0..10 {
        s.h.wait_ready(&format!("i{i}"));
    }
    assert_eq!(s.store.requests("redis-7.9.tar.gz"), 1, "{:?}", s.store.request_log());
    assert_eq!(s.store.requests("manifest.json"), 1);
}

#[test]
fn an_unused_build_is_removed_and_one_in_use_is_kept() {
    let mut s = setup("2s");
    s.publish("7.8", 0);
    s.publish("7.9", 0);
    let (pa, pb) = (free_port(), free_port());
    s.h.manifest_with_version("a", "7.9", pa, "");
    s.h.manifest_with_version("b", "7.8", pb, "");
    s.h.start_agent();
    s.h.wait_ready("a");
    let old_b = s.h.wait_ready("b");
    s.h.manifest("b", pb, "");
    s.h.signal_agent(SIGHUP);
    s.h.wait_restarted("b", old_b);
    s.h.wait_for("7.8 removed once unused for 2s", WAIT, |s2| {
        engine_entry(s2, "7.8").is_none() && !s2.path().join("data/engines/redis/7.8").exists()
    });
    // 7.9 is in use: kept well past keep_unused.
    std::thread::sleep(Duration::from_secs(5));
    assert!(s.build_dir("7.9").join("bin/redis-server").is_file());
    assert_eq!(engine_entry(&s.h, "7.9").unwrap()["state"], "ready");
    assert!(pong(pa, None));
    // Wanted again: fetched again.
    s.h.manifest_with_version("b", "7.8", pb, "");
    s.h.signal_agent(SIGHUP);
    s.h.wait_for("b back on 7.8", WAIT, |h| {
        h.instance("b")["version"] == "7.8" && pong(pb, None)
    });
    assert_eq!(s.store.requests("redis-7.8.tar.gz"), 2);
}

#[test]
fn a_download_that_would_not_fit_is_refused_before_writing() {
    let mut s = setup("7d");
    // 40 MB of incompressible padding, into 32 MB.
    s.publish("7.9", 40 << 20);
    let engines = s.h.path().join("data/engines");
    let _mount = common::mount::Mount::tmpfs(&engines, "32m");
    let port = free_port();
    s.h.manifest_with_version("a", "7.9", port, "");
    s.h.start_agent();
    let build = wait_refused(&s.h, "a", "7.9", "not enough for it unpacked");
    assert!(
        build["error"]
            .as_str()
            .unwrap()
            .contains(&engines.display().to_string()),
        "{build}"
    );
    let i = s.h.instance("a");
    assert_eq!(i["phase"], "failed", "{i}");
    assert!(i["pid"].is_null(), "{i}");
    assert!(!s.build_dir("7.9").exists());
}

#[test]
fn check_validates_the_store_settings() {
    let h = Harness::new();
    h.append_agent_toml("[artifacts]\nurl = \"http://store.example\"\npublic_keys = [\"RWQnot-a-key\"]\n");
    let out = h.cli(&["check", "--config", h.config_path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("artifacts.url: \"http://store.example\": plain http is allowed only to a loopback address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("artifacts.public_keys: \"RWQnot-a-key\" is not a minisign public key"),
        "{stderr}"
    );

    let h = Harness::new();
    let signer = Signer::new(h.path(), "k");
    h.append_agent_toml(&format!(
        "[artifacts]\nurl = \"https://127.0.0.1:1/\"\npublic_keys = [\"{}\"]\nca_file = \"missing-ca.pem\"\n",
        signer.public_key()
    ));
    let out = h.cli(&["check", "--config", h.config_path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("cannot read [artifacts] ca_file"), "{stderr}");
    assert!(stderr.contains("missing-ca.pem"), "{stderr}");
}

#[test]
fn a_build_no_longer_signed_by_a_trusted_key_is_kept_but_never_started() {
    let (mut s, port, pid) = running_on_store_build();

    // The store's key is no longer trusted: another one is.
    s.h.stop_agent(SIGTERM);
    let other = Signer::new(s.h.path(), "rotated");
    let config = std::fs::read_to_string(s.h.config_path()).unwrap();
    std::fs::write(
        s.h.config_path(),
        config.replace(&s.signer.public_key(), &other.public_key()),
    )
    .unwrap();
    s.h.start_agent();
    // The running process is adopted and left alone; its build is refused, not deleted.
    assert_eq!(s.h.wait_ready("a"), pid);
    let entry = s.h.wait_for_value("7.9 refused", WAIT, |h| {
        engine_entry(h, "7.9").filter(|e| e["state"] == "failed")
    });
    let error = entry["error"].as_str().unwrap();
    assert!(error.contains("not in [artifacts] public_keys"), "{entry}");
    assert!(error.contains("remove the directory to fetch it again"), "{entry}");
    assert!(s.build_dir("7.9").join("bin/redis-server").is_file());

    // A restart asked for is held: the process keeps running the build it has.
    s.h.manifest_with_version("a", "7.9", port, "restart_epoch = 1\n");
    s.h.signal_agent(SIGHUP);
    let i = s.h.wait_for_value("the restart held for the refused build", WAIT, |h| {
        let i = h.instance("a");
        (i["build"]["state"] == "failed").then_some(i)
    });
    assert_eq!(i["pid"], pid, "{i}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.h.instance("a")["pid"], pid);
    assert!(pong(port, None));

    // A crash is not restarted from the untrusted build.
    send_signal(pid, SIGKILL);
    let i = s.h.wait_for_value("a failed on its refused build", WAIT, |h| {
        let i = h.instance("a");
        (i["phase"] == "failed" && i["build"]["state"] == "failed").then_some(i)
    });
    assert!(i["pid"].is_null(), "{i}");
    assert!(i["message"].as_str().unwrap().contains("is refused"), "{i}");
    assert!(listener_pid(port).is_none());
    assert_eq!(s.store.requests("redis-7.9.tar.gz"), 1, "not fetched again over it");
}

#[test]
fn a_running_instance_keeps_its_upkeep_while_its_build_is_unavailable() {
    let mut s = setup("7d");
    s.h.append_agent_toml("[monitoring]\ndrift_interval = \"1s\"\n");
    let port = free_port();
    let config = "[config]\n\"maxmemory-policy\" = \"allkeys-lru\"\n";
    s.h.manifest("a", port, config);
    s.h.start_agent();
    let pid = s.h.wait_ready("a");
    // 7.7 is not in the store.
    s.h.manifest_with_version("a", "7.7", port, config);
    s.h.signal_agent(SIGHUP);
    wait_refused(&s.h, "a", "7.7", "answered 404");
    config_set(port, None, "maxmemory-policy", "noeviction");
    s.h.wait_for("the hand-made change set back", WAIT, |_| {
        config_get(port, None, "maxmemory-policy") == "allkeys-lru"
    });
    assert_eq!(s.h.instance("a")["pid"], pid);
}

#[test]
fn a_crash_while_the_new_build_is_unavailable_restarts_on_the_build_it_ran() {
    let (s, port, old) = running_on_local_build();
    fill_keys(&mut redis(port, None).unwrap(), 100, "kept-");
    let _: () = redis::cmd("SAVE").query(&mut redis(port, None).unwrap()).unwrap();
    // 7.9 is not in the store yet.
    s.h.manifest_with_version("a", "7.9", port, "");
    s.h.signal_agent(SIGHUP);
    wait_refused(&s.h, "a", "7.9", "answered 404");

    send_signal(old, SIGKILL);
    let fallback = s.h.wait_restarted("a", old);
    assert_eq!(exe_of(fallback), std::fs::canonicalize(redis_server()).unwrap());
    let i = s.h.instance("a");
    assert_eq!(i["version"], "7.0", "restarted on what it ran: {i}");
    assert_eq!(i["build"]["version"], "7.9", "still awaiting 7.9: {i}");
    assert!(i["message"].as_str().unwrap().contains("keeps running"), "{i}");
    assert_eq!(i["restarts"], 1, "{i}");
    let kept: usize = redis::cmd("DBSIZE").query(&mut redis(port, None).unwrap()).unwrap();
    assert_eq!(kept, 100, "its data came back with it");
    assert_eq!(count_events(&s.h, "a", "build-fallback"), 1, "{:?}", events(&s.h, "a"));

    // Published: a retry fetches it, and the instance moves on with one restart.
    s.publish("7.9", 0);
    let moved = s.h.wait_for_value("a on 7.9", WAIT, |h| {
        let i = h.instance("a");
        (i["version"] == "7.9" && i["ready"] == true && i["pid"] != fallback).then_some(i)
    });
    let new = moved["pid"].as_u64().unwrap() as u32;
    assert_eq!(exe_of(new), s.build_dir("7.9").join("bin/redis-server"));
    assert!(moved["build"].is_null(), "{moved}");
    assert_eq!(count_events(&s.h, "a", "build-fallback"), 1, "{:?}", events(&s.h, "a"));
}

#[test]
fn a_process_that_died_while_the_agent_was_down_restarts_on_the_store_build_it_ran() {
    let (mut s, port, old) = running_on_store_build();
    s.h.manifest_with_version("a", "8.0", port, "");
    s.h.signal_agent(SIGHUP);
    wait_refused(&s.h, "a", "8.0", "answered 404");
    s.h.stop_agent(SIGTERM);
    send_signal(old, SIGKILL);
    // The new agent finds the record of a dead process: a crash. The build it ran is
    // looked for on disk first (nothing in memory yet), then started.
    s.h.start_agent();
    let fallback = s.h.wait_restarted("a", old);
    assert_eq!(exe_of(fallback), s.build_dir("7.9").join("bin/redis-server"));
    let i = s.h.instance("a");
    assert_eq!(i["version"], "7.9", "{i}");
    assert_eq!(i["build"]["version"], "8.0", "{i}");
    assert_eq!(count_events(&s.h, "a", "build-fallback"), 1, "{:?}", events(&s.h, "a"));
    assert_eq!(
        s.store.requests("redis-7.9.tar.gz"),
        1,
        "found on disk, not fetched again"
    );
}

#[test]
fn a_stopped_instance_started_while_its_build_is_unavailable_waits_for_it() {
    let (s, port, _) = running_on_local_build();
    s.h.manifest("a", port, "state = \"stopped\"\n");
    s.h.signal_agent(SIGHUP);
    s.h.wait_for("a stopped", WAIT, |h| h.instance("a")["phase"] == "stopped");
    // A deliberate start asks for 7.9, which is not in the store: no fallback.
    s.h.manifest_with_version("a", "7.9", port, "");
    s.h.signal_agent(SIGHUP);
    wait_refused(&s.h, "a", "7.9", "answered 404");
    let i = s.h.instance("a");
    assert_eq!(i["version"], "7.9", "the declared version while nothing runs: {i}");
    assert_eq!(i["phase"], "failed", "{i}");
    assert!(i["pid"].is_null(), "{i}");
    assert!(listener_pid(port).is_none());
    assert_eq!(count_events(&s.h, "a", "build-fallback"), 0, "{:?}", events(&s.h, "a"));
}

#[test]
fn an_instance_stopped_after_its_crash_is_not_restarted_on_the_old_build() {
    let (s, port, mut pid) = running_on_local_build();
    // Three quick crashes, then a fourth: its restart waits 1.6-2.4 s of back-off,
    // and the instance is declared stopped meanwhile.
    for _ in 0..3 {
        send_signal(pid, SIGKILL);
        pid = s.h.wait_restarted("a", pid);
    }
    send_signal(pid, SIGKILL);
    s.h.wait_for("the fourth exit seen", WAIT, |h| count_events(h, "a", "exited") == 4);
    s.h.manifest("a", port, "state = \"stopped\"\n");
    s.h.signal_agent(SIGHUP);
    s.h.wait_for("a stopped", WAIT, |h| h.instance("a")["phase"] == "stopped");
    assert_eq!(count_events(&s.h, "a", "started"), 4, "{:?}", events(&s.h, "a"));
    // Started deliberately on 7.9 (not in the store): it waits for 7.9 instead of
    // coming back on 7.0.
    s.h.manifest_with_version("a", "7.9", port, "");
    s.h.signal_agent(SIGHUP);
    wait_refused(&s.h, "a", "7.9", "answered 404");
    let i = s.h.instance("a");
    assert!(i["pid"].is_null(), "{i}");
    assert!(listener_pid(port).is_none());
    assert_eq!(count_events(&s.h, "a", "build-fallback"), 0, "{:?}", events(&s.h, "a"));
}

#[test]
fn reports_carry_the_wait_and_its_progress() {
    use common::controller::{controlled, document, Controller, NODE, TOKEN};
    let controller = Controller::start(TOKEN);
    let mut h = controlled(&controller);
    let ca = Ca::new("reported store CA");
    let store = Store::start(&ca);
    let signer = Signer::new(h.path(), "store");
    store::trust(&h, &store, &ca, &signer, "");
    // About 3 s of download: several tenths reported.
    store.publish(
        "redis",
        "7.9",
        &store::redis_archive(6 << 20),
        "bin/redis-server",
        &signer,
    );
    store.throttle("redis-7.9.tar.gz", 2 << 20);
    let port = free_port();
    controller.set_document(NODE, document(1, &[("a", port, serde_json::json!({"version": "7.9"}))]));
    h.start_agent();
    h.wait_ready("a");
    let seen: Vec<Value> = controller
        .reports(NODE)
        .iter()
        .filter_map(|view| {
            view["instances"]
                .as_array()?
                .iter()
                .find(|i| i["name"] == "a" && i["phase"] == "fetching")
                .cloned()
        })
        .collect();
    let percents: std::collections::BTreeSet<u64> =
        seen.iter().filter_map(|i| i["build"]["percent"].as_u64()).collect();
    assert!(
        percents.len() >= 2,
        "progress reported in steps: {percents:?} in {seen:#?}"
    );
    assert!(seen.iter().all(|i| i["build"]["version"] == "7.9"), "{seen:#?}");
    assert!(pong(port, None));
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn a_pika_instance_moves_onto_a_store_build_with_its_data() {
    use common::pika::{get, pika_manifest, set, wait_pika_ready, PIKA_START, PIKA_STOP};
    let mut s = setup("7d");
    s.h.append_agent_toml(&format!(
        "[engines.pika.versions]\n\"4.0\" = \"{}\"\n",
        common::pika::pika_bin()
    ));
    let pika = std::fs::read(common::pika::pika_bin()).unwrap();
    let archive = store::tar_gz(&[Entry::Dir("bin"), Entry::File("bin/pika", pika, 0o755)]);
    s.store.publish("pika", "4.0.1", &archive, "bin/pika", &s.signer);
    let port = common::pika_port();
    pika_manifest(&s.h, "p", port, "", "");
    s.h.start_agent();
    let old = wait_pika_ready(&s.h, "p");
    set(port, None, "kept", "across the move");

    s.h.write_manifest(
        "p",
        &format!("name = \"p\"\nengine = \"pika\"\nversion = \"4.0.1\"\nport = {port}\n[config]\nmaxclients = 1000\n"),
    );
    s.h.signal_agent(SIGHUP);
    s.h.wait_for("p on the store's 4.0.1", PIKA_STOP + PIKA_START + WAIT, |h| {
        let i = h.instance("p");
        i["version"] == "4.0.1" && i["ready"] == true && i["pid"] != old
    });
    let pid = s.h.instance("p")["pid"].as_u64().unwrap() as u32;
    assert_eq!(exe_of(pid), s.h.path().join("data/engines/pika/4.0.1/bin/pika"));
    assert_eq!(get(port, None, "kept").as_deref(), Some("across the move"));
    assert_eq!(count_events(&s.h, "p", "build-ready"), 1);
}

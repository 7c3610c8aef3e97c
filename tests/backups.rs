//! Backups and restores against real `redis-server` processes: a backup asked for by
//! `backup_epoch`, checked by `redis-check-rdb`, listed and served by the API; the
//! schedule and its retention; a failing BGSAVE; restores into an empty data
//! directory, and never over data; a restore that would not fit, refused before a
//! byte is written.

mod common;

use common::mount::Mount;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BACKUP_WAIT: Duration = Duration::from_secs(30);

fn fill(port: u16, keys: usize) {
    fill_keys(&mut redis(port, None).unwrap(), keys, "value-");
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Declares `name` on `port` with `backup_epoch = epoch` (and `extra`), reloads, and
/// waits for the backup.
fn backup_now(h: &Harness, name: &str, port: u16, epoch: u64, extra: &str) -> Value {
    h.manifest(name, port, &format!("backup_epoch = {epoch}\n{extra}"));
    h.signal_agent(SIGHUP);
    wait_backup(h, name, epoch, BACKUP_WAIT)
}

fn backup_dir(h: &Harness, name: &str) -> PathBuf {
    h.path().join("data/backups").join(name)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_requested_backup_is_checked_listed_served_and_the_schedule_keeps_two() {
    let mut h = Harness::new();
    h.use_api_token();
    let port = free_port();
    h.manifest("a", port, "");
    h.start_agent();
    h.wait_ready("a");
    fill(port, 1000);

    let backup = backup_now(&h, "a", port, 1, "");
    assert_eq!(backup["keys"], 1000, "{backup}");
    let id = backup["id"].as_str().unwrap().to_string();
    let file = backup_dir(&h, "a").join(format!("{id}.rdb"));
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(backup["bytes"], bytes.len() as u64);
    assert_eq!(backup["sha256"], sha256_hex(&bytes));
    let check = std::process::Command::new("redis-check-rdb")
        .arg(&file)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    assert!(String::from_utf8_lossy(&check.stdout).contains("[info] 1000 keys read"));
    let description: Value = serde_json::from_slice(&std::fs::read(file.with_extension("json")).unwrap()).unwrap();
    assert_eq!(
        description["server_version"].as_str().map(|v| v.starts_with("7.")),
        Some(true)
    );
    assert!(count_events(&h, "a", "backup-succeeded") >= 1);

    // The API lists and serves it, with the token only.
    let auth = format!("Bearer {API_TOKEN}");
    let (code, _, _) = http_bytes(h.api_addr(), "/v1/instances/a/backups", &[]).unwrap();
    assert_eq!(code, 401);
    let (code, _, body) = http_bytes(h.api_addr(), "/v1/instances/a/backups", &[("Authorization", &auth)]).unwrap();
    assert_eq!(code, 200);
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list[0]["id"], id.as_str(), "{list}");
    let path = format!("/v1/instances/a/backups/{id}");
    let (code, headers, served) = http_bytes(h.api_addr(), &path, &[("Authorization", &auth)]).unwrap();
    assert_eq!(code, 200);
    assert_eq!(served, bytes);
    let header = headers
        .iter()
        .find(|(k, _)| k == "x-backup-sha256")
        .map(|(_, v)| v.clone());
    assert_eq!(header.as_deref(), backup["sha256"].as_str());
    let (code, _, _) = http_bytes(
        h.api_addr(),
        "/v1/instances/a/backups/nope",
        &[("Authorization", &auth)],
    )
    .unwrap();
    assert_eq!(code, 404);
    let metrics = h.http_get("/metrics").unwrap().1;
    assert!(
        metrics.contains("ker_agent_backup_last_success_timestamp_seconds{name=\"a\"}"),
        "{metrics}"
    );

    // A schedule every second with two kept: older ones are deleted.
    h.manifest("a", port, "backup_epoch = 1\n[backup]\ninterval = \"1s\"\nkeep = 2\n");
    h.signal_agent(SIGHUP);
    h.wait_for("two more backups and the oldest deleted", BACKUP_WAIT, |h| {
        count_events(h, "a", "backup-succeeded") >= 4 && count_events(h, "a", "backup-pruned") >= 2
    });
    h.manifest("a", port, "backup_epoch = 1\n");
    h.signal_agent(SIGHUP);
    std::thread::sleep(Duration::from_secs(2));
    let files = files_in(&backup_dir(&h, "a"));
    let rdbs = files.iter().filter(|f| f.ends_with(".rdb")).count();
    let jsons = files.iter().filter(|f| f.ends_with(".json")).count();
    assert_eq!((rdbs, jsons), (2, 2), "{files:?}");
    assert!(!files.iter().any(|f| f.starts_with('.')), "{files:?}");
    assert_eq!(h.instance("a")["backups"].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_failing_bgsave_fails_the_backup_with_the_servers_reason_and_leaves_nothing() {
    let mut h = Harness::new();
    let port = free_port();
    // Read-only before the server starts: it works in its data directory by its
    // working directory, which a later mount would not cover.
    let data = h.instance_dir("a").join("data");
    std::fs::create_dir_all(&data).unwrap();
    let read_only = Mount::read_only(&data);
    h.manifest("a", port, "");
    h.start_agent();
    h.wait_ready("a");
    fill(port, 100);

    h.manifest("a", port, "backup_epoch = 1\n");
    h.signal_agent(SIGHUP);
    let failure = h.wait_for_value("the backup to fail", BACKUP_WAIT, |h| {
        let failure = h.instance("a")["backup"]["last_failure"].clone();
        (!failure.is_null()).then_some(failure)
    });
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("background save failed"), "{error}");
    assert!(error.contains("Read-only file system"), "{error}");
    assert!(failure["retry_at"].as_u64() > failure["at"].as_u64(), "{failure}");
    assert_eq!(count_events(&h, "a", "backup-failed"), 1);
    let left = files_in(&backup_dir(&h, "a"));
    assert!(left.is_empty(), "{left:?}");
    let a = h.instance("a");
    assert_eq!(a["backups"], serde_json::json!([]), "{a}");
    assert_eq!(a["ready"], true, "the instance keeps running: {a}");
    assert_eq!(a["backup"]["failures"], 1);
    drop(read_only);
}

fn dbsize(port: u16) -> u64 {
    let mut conn = redis(port, None).unwrap();
    redis::cmd("DBSIZE").query(&mut conn).unwrap()
}

#[test]
fn restores_seed_an_empty_instance_refuse_a_wrong_checksum_and_never_overwrite_data() {
    let mut h = Harness::new();
    h.use_api_token();
    h.append_agent_toml("[backup]\nfetch_token_file = \"api.token\"\n");
    let (port_a, port_b) = (free_port(), free_port());
    h.manifest("a", port_a, "");
    h.start_agent();
    let pid_a = h.wait_ready("a");
    fill(port_a, 500);
    let backup = backup_now(&h, "a", port_a, 1, "");
    let (id, sha) = (backup["id"].as_str().unwrap(), backup["sha256"].as_str().unwrap());
    let url = format!("http://127.0.0.1:{}/v1/instances/a/backups/{id}", h.api_addr().1);

    // A URL's query may hold a secret: a failed fetch never shows it, nor keeps it.
    let port_q = free_port();
    h.manifest(
        "q",
        port_q,
        &format!("restore_from = {{ url = \"http://127.0.0.1:1/x.rdb?sig=SECRET-Q\", sha256 = \"{sha}\" }}\n"),
    );
    h.signal_agent(SIGHUP);
    let failed = h.wait_for_value("q's fetch to fail", BACKUP_WAIT, |h| {
        h.instance("q")["restore"]["error"].as_str().map(str::to_string)
    });
    assert!(failed.contains("cannot fetch http://127.0.0.1:1/x.rdb"), "{failed}");
    let kept = std::fs::read_to_string(h.instance_dir("q").join("restore.json")).unwrap_or_default();
    assert_secrets_hidden(&h, &["SECRET-Q"], &[("q's restore.json", kept)]);
    h.remove_manifest("q");

    // A wrong checksum: refused, reported, nothing started.
    let wrong = "0".repeat(64);
    h.manifest(
        "b",
        port_b,
        &format!("restore_from = {{ url = \"{url}\", sha256 = \"{wrong}\" }}\n"),
    );
    h.signal_agent(SIGHUP);
    let failed = h.wait_for_value("b's restore to fail", BACKUP_WAIT, |h| {
        let r = h.instance("b")["restore"].clone();
        r["error"].as_str().map(str::to_string)
    });
    assert!(
        failed.contains(&format!("SHA-256 {sha}")) && failed.contains("refused"),
        "{failed}"
    );
    assert!(!failed.contains(API_TOKEN));
    let b = h.instance("b");
    assert_eq!(b["pid"], Value::Null, "{b}");
    assert!(!pong(port_b, None));
    assert!(count_events(&h, "b", "restore-failed") >= 1);
    assert!(!h.instance_dir("b").join("data/dump.rdb").exists());

    // The right one: b starts with a's keys.
    h.manifest(
        "b",
        port_b,
        &format!("restore_from = {{ url = \"{url}\", sha256 = \"{sha}\" }}\n"),
    );
    h.signal_agent(SIGHUP);
    h.wait_ready("b");
    assert_eq!(dbsize(port_b), 500);
    let mut conn = redis(port_b, None).unwrap();
    assert_eq!(
        redis::cmd("GET").arg("key:7").query::<String>(&mut conn).unwrap(),
        "value-7"
    );
    let restored = h.instance("b")["restore"].clone();
    assert_eq!(restored["sha256"], sha, "{restored}");
    assert_eq!(restored["error"], Value::Null);
    assert_eq!(restored["set_aside"], Value::Null);
    assert!(restored["source"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/backups/{id}")));

    // restore_from alone never overwrites data: a keeps what it has.
    let mut conn = redis(port_a, None).unwrap();
    redis::cmd("SET").arg("after").arg("1").query::<()>(&mut conn).unwrap();
    h.manifest("a", port_a, &format!("backup_epoch = 1\nrestore_from = \"{id}\"\n"));
    h.signal_agent(SIGHUP);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.instance("a")["pid"], pid_a);
    assert_eq!(dbsize(port_a), 501);
    // Not at a restart either: the start finds data and leaves it.
    h.manifest(
        "a",
        port_a,
        &format!("backup_epoch = 1\nrestart_epoch = 1\nrestore_from = \"{id}\"\n"),
    );
    h.signal_agent(SIGHUP);
    let pid_a = h.wait_restarted("a", pid_a);
    assert_eq!(dbsize(port_a), 501);
    assert_eq!(count_events(&h, "a", "restored"), 0);

    // A raised restore_epoch does: a stops, its data goes aside, the backup comes back.
    h.manifest(
        "a",
        port_a,
        &format!("backup_epoch = 1\nrestart_epoch = 1\nrestore_from = \"{id}\"\nrestore_epoch = 1\n"),
    );
    h.signal_agent(SIGHUP);
    let new_pid = h.wait_restarted("a", pid_a);
    assert_ne!(new_pid, pid_a);
    assert_eq!(dbsize(port_a), 500);
    let restored = h.instance("a")["restore"].clone();
    let aside = PathBuf::from(restored["set_aside"].as_str().unwrap_or_else(|| panic!("{restored}")));
    assert!(aside.join("dump.rdb").is_file(), "{}", aside.display());
    assert_eq!(restored["epoch"], 1);
    assert_eq!(count_events(&h, "a", "restored"), 1);
    // Answered once: the next SIGHUP restarts nothing.
    h.signal_agent(SIGHUP);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(h.instance("a")["pid"], new_pid);
}

/// The sequence number of `name`'s first event of `kind`.
fn first_seq(h: &Harness, name: &str, kind: &str) -> u64 {
    let (_, body) = h.http_get(&format!("/v1/instances/{name}")).unwrap();
    let detail: Value = serde_json::from_str(&body).unwrap();
    let events = detail["events"].as_array().cloned().unwrap_or_default();
    let found = events
        .iter()
        .find(|e| e["kind"] == kind)
        .and_then(|e| e["seq"].as_u64());
    found.unwrap_or_else(|| panic!("no {kind} event of {name}: {events:?}"))
}

#[test]
fn the_node_runs_no_more_backups_at_once_than_max_concurrent() {
    let mut h = Harness::new();
    h.append_agent_toml("[backup]\nmax_concurrent = 1\n");
    let (port_a, port_b) = (free_port(), free_port());
    h.manifest("a", port_a, "");
    h.manifest("b", port_b, "");
    h.start_agent();
    h.wait_ready("a");
    h.wait_ready("b");
    fill(port_a, 20_000);
    fill(port_b, 20_000);
    h.manifest("a", port_a, "backup_epoch = 1\n");
    h.manifest("b", port_b, "backup_epoch = 1\n");
    h.signal_agent(SIGHUP);
    wait_backup(&h, "a", 1, BACKUP_WAIT);
    wait_backup(&h, "b", 1, BACKUP_WAIT);
    // One slot: whichever went second started only after the first was kept.
    let (a_started, a_done) = (
        first_seq(&h, "a", "backup-started"),
        first_seq(&h, "a", "backup-succeeded"),
    );
    let (b_started, b_done) = (
        first_seq(&h, "b", "backup-started"),
        first_seq(&h, "b", "backup-succeeded"),
    );
    assert!(
        a_done < b_started || b_done < a_started,
        "a: started {a_started}, kept {a_done}; b: started {b_started}, kept {b_done}"
    );
}

fn info_field(port: u16, section: &str, key: &str) -> String {
    let mut conn = redis(port, None).unwrap();
    let info: String = redis::cmd("INFO").arg(section).query(&mut conn).unwrap();
    let line = info.lines().find_map(|l| l.strip_prefix(&format!("{key}:")));
    line.unwrap_or_else(|| panic!("no {key} in {info}")).trim().to_string()
}

#[test]
fn a_backup_that_would_not_fit_is_refused_before_the_server_forks() {
    let mut h = Harness::new();
    let port = free_port();
    // A 2.5 MB data directory: room for one 1.5 MB snapshot, not for a second beside
    // it (Redis writes the new one before it replaces the old).
    let data = h.instance_dir("a").join("data");
    let _tmpfs = Mount::tmpfs(&data, "2500k");
    h.manifest("a", port, "");
    h.start_agent();
    h.wait_ready("a");
    let mut conn = redis(port, None).unwrap();
    let mut pipe = redis::pipe();
    for i in 0..1500 {
        // Hashes do not compress: about 1 KB per key in the RDB.
        let value: String = (0..16).map(|j| sha256_hex(format!("{i}.{j}").as_bytes())).collect();
        pipe.cmd("SET").arg(format!("key:{i}")).arg(value).ignore();
    }
    pipe.query::<()>(&mut conn).unwrap();
    let first = backup_now(&h, "a", port, 1, "");
    assert!(first["bytes"].as_u64() > Some(1_400_000), "{first}");
    let saves = info_field(port, "persistence", "rdb_saves");

    h.manifest("a", port, "backup_epoch = 2\n");
    h.signal_agent(SIGHUP);
    let failure = h.wait_for_value("the second backup to be refused", BACKUP_WAIT, |h| {
        let failure = h.instance("a")["backup"]["last_failure"].clone();
        failure["error"].as_str().map(str::to_string)
    });
    assert!(failure.contains("free on the filesystem of"), "{failure}");
    assert!(failure.contains(&data.display().to_string()), "{failure}");
    assert!(
        failure.contains("the server writes a new snapshot beside the old one"),
        "{failure}"
    );
    assert_eq!(
        info_field(port, "persistence", "rdb_saves"),
        saves,
        "the server was asked to save"
    );
    let files = files_in(&backup_dir(&h, "a"));
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(h.instance("a")["backups"].as_array().map(Vec::len), Some(1));
}

/// A server that answers every request with the headers of a backup far too large to
/// fit, and no body.
fn huge_backup_server(sha: &str) -> u16 {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000000000000\r\nX-Backup-Sha256: {sha}\r\n\r\n"
    );
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = (&stream).write_all(head.as_bytes());
            // Holds the connection: nothing more comes.
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    port
}

#[test]
fn a_restore_that_would_not_fit_is_refused_before_anything_is_written() {
    let mut h = Harness::new();
    let sha = "ab".repeat(32);
    let source = huge_backup_server(&sha);
    let port = free_port();
    h.manifest(
        "b",
        port,
        &format!("restore_from = {{ url = \"http://127.0.0.1:{source}/big.rdb\", sha256 = \"{sha}\" }}\n"),
    );
    h.start_agent();
    let failed = h.wait_for_value("the restore to be refused", BACKUP_WAIT, |h| {
        h.instance("b")["restore"]["error"].as_str().map(str::to_string)
    });
    assert!(
        failed.contains("holds 909.5 TiB") && failed.contains("is free on the filesystem of"),
        "{failed}"
    );
    assert_eq!(h.instance("b")["pid"], Value::Null);
    assert!(!pong(port, None));
    assert!(!h.instance_dir("b").join(".restore-staged").exists());
    assert!(!h.instance_dir("b").join("data/dump.rdb").exists());
}

//! Backups and restores of real `pika` processes: a backup is Pika's dump directory
//! (a RocksDB checkpoint per database and its `info`), copied with a manifest of every
//! file's checksum; a new instance seeded from it, on this host and from another
//! agent's API, answers with every key; data is never overwritten.
//!
//! Without a Pika binary every test here is reported as ignored, by name.

mod common;

use common::pika::*;
use common::*;
use serde_json::Value;
use std::time::Duration;

const BACKUP_WAIT: Duration = Duration::from_secs(60);

fn fill(port: u16, keys: usize) {
    fill_keys(&mut redis(port, None).unwrap(), keys, "value-");
}

fn keys_of(port: u16) -> usize {
    let mut conn = redis(port, None).unwrap();
    redis::cmd("KEYS")
        .arg("*")
        .query::<Vec<String>>(&mut conn)
        .unwrap()
        .len()
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn a_pika_dump_is_backed_up_with_its_manifest_and_seeds_a_new_instance() {
    let mut h = harness();
    h.use_api_token();
    h.append_agent_toml("[backup]\nfetch_token_file = \"api.token\"\n");
    let (port_a, port_b) = (pika_port(), pika_port());
    pika_manifest(&h, "a", port_a, "", "");
    h.start_agent();
    wait_pika_ready(&h, "a");
    fill(port_a, 2000);

    pika_manifest(&h, "a", port_a, "backup_epoch = 1", "");
    h.signal_agent(SIGHUP);
    let backup = wait_backup(&h, "a", 1, BACKUP_WAIT);
    let id = backup["id"].as_str().unwrap().to_string();
    let dir = h.path().join("data/backups/a").join(format!("{id}.dump"));
    assert!(dir.join("db0/info").is_file(), "{}", dir.display());
    let description: Value =
        serde_json::from_slice(&std::fs::read(h.path().join(format!("data/backups/a/{id}.json"))).unwrap()).unwrap();
    let files = description["files"].as_array().unwrap();
    assert!(files.len() > 3, "{description}");
    let total: u64 = files.iter().map(|f| f["bytes"].as_u64().unwrap()).sum();
    assert_eq!(backup["bytes"], total);
    assert!(
        description["server_version"].as_str().unwrap().starts_with("4."),
        "{description}"
    );

    // The API serves it as a tar stream with the manifest's checksum.
    let auth = format!("Bearer {API_TOKEN}");
    let path = format!("/v1/instances/a/backups/{id}");
    let (code, headers, tar) = http_bytes(h.api_addr(), &path, &[("Authorization", &auth)]).unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&tar));
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(header("x-backup-sha256").as_deref(), backup["sha256"].as_str());
    assert_eq!(header("content-type").as_deref(), Some("application/x-tar"));
    let listing = std::process::Command::new("tar")
        .args(["-tvf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut tar_process| {
            use std::io::Write;
            tar_process.stdin.take().unwrap().write_all(&tar)?;
            tar_process.wait_with_output()
        })
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert_eq!(listing.lines().count(), files.len(), "{listing}");
    assert!(listing.contains("db0/info"), "{listing}");

    // A new instance seeded from that URL answers with every key; a wrong checksum
    // is refused first, and nothing starts.
    let url = format!("http://127.0.0.1:{}{path}", h.api_addr().1);
    let seed = |sha: &str| format!("restore_from = {{ url = \"{url}\", sha256 = \"{sha}\" }}");
    pika_manifest(&h, "b", port_b, &seed(&"0".repeat(64)), "");
    h.signal_agent(SIGHUP);
    let failed = h.wait_for_value("b's restore to fail", BACKUP_WAIT, |h| {
        h.instance("b")["restore"]["error"].as_str().map(str::to_string)
    });
    assert!(failed.contains("refused"), "{failed}");
    assert_eq!(h.instance("b")["pid"], Value::Null);
    assert!(!h.instance_dir("b").join("data/db/db0").exists());

    // A backup changed on the server's disk (same size, one byte): the header still
    // announces the right checksum, so it is the manifest of what was unpacked that
    // refuses it; nothing starts and nothing staged is left. (`db0/info` is a copy
    // Pika wrote for its dump, not linked to a live table.)
    let info = dir.join("db0/info");
    let original = std::fs::read(&info).unwrap();
    let mut changed = original.clone();
    changed[0] ^= 1;
    std::fs::write(&info, &changed).unwrap();
    let sha = backup["sha256"].as_str().unwrap();
    pika_manifest(&h, "b", port_b, &seed(sha), "");
    h.signal_agent(SIGHUP);
    let failed = h.wait_for_value("b's restore of a changed dump to fail", BACKUP_WAIT, |h| {
        h.instance("b")["restore"]["error"]
            .as_str()
            .filter(|e| e.contains("have SHA-256"))
            .map(str::to_string)
    });
    assert!(
        failed.contains(&format!("restore_from asks for {sha}: refused")),
        "{failed}"
    );
    assert_eq!(h.instance("b")["pid"], Value::Null);
    assert!(!h.instance_dir("b").join("data/db/db0").exists());
    assert!(!h.instance_dir("b").join(".restore-staged").exists());
    std::fs::write(&info, &original).unwrap();

    // The backup whole again: b is seeded (the same spec, on its next attempt).
    pika_manifest(&h, "b", port_b, &seed(backup["sha256"].as_str().unwrap()), "");
    h.signal_agent(SIGHUP);
    wait_pika_ready(&h, "b");
    assert_eq!(keys_of(port_b), 2000);
    assert_eq!(get(port_b, None, "key:1999").as_deref(), Some("value-1999"));
    let restored = h.instance("b")["restore"].clone();
    assert_eq!(restored["sha256"], backup["sha256"], "{restored}");
    assert_eq!(restored["error"], Value::Null, "{restored}");

    // restore_from alone never overwrites a's data; a raised restore_epoch stops a,
    // keeps its data aside and brings the backup back.
    set(port_a, None, "after", "1");
    let pid_a = h.instance("a")["pid"].as_u64().unwrap();
    pika_manifest(
        &h,
        "a",
        port_a,
        &format!("backup_epoch = 1\nrestore_from = \"{id}\""),
        "",
    );
    h.signal_agent(SIGHUP);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.instance("a")["pid"], pid_a);
    assert_eq!(get(port_a, None, "after").as_deref(), Some("1"));
    pika_manifest(
        &h,
        "a",
        port_a,
        &format!("backup_epoch = 1\nrestore_from = \"{id}\"\nrestore_epoch = 1"),
        "",
    );
    h.signal_agent(SIGHUP);
    h.wait_for("a restarted on its backup", PIKA_STOP + PIKA_START, |h| {
        let i = h.instance("a");
        i["ready"] == true && i["pid"].as_u64().is_some_and(|p| p != pid_a) && i["restore"]["epoch"] == 1
    });
    assert_eq!(get(port_a, None, "after"), None);
    assert_eq!(keys_of(port_a), 2000);
    let restored = h.instance("a")["restore"].clone();
    let aside = std::path::PathBuf::from(restored["set_aside"].as_str().unwrap_or_else(|| panic!("{restored}")));
    assert!(aside.join("db/db0").is_dir(), "{}", aside.display());
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn a_pika_save_that_cannot_write_its_dump_fails_the_backup_and_leaves_nothing() {
    let mut h = harness();
    let port = pika_port();
    pika_manifest(&h, "p", port, "", "");
    h.start_agent();
    wait_pika_ready(&h, "p");
    fill(port, 100);
    // Pika writes its dumps by their absolute path: a mount over it after the start
    // is seen.
    let dumps = h.instance_dir("p").join("data/dump");
    std::fs::create_dir_all(&dumps).unwrap();
    let read_only = common::mount::Mount::read_only(&dumps);

    pika_manifest(&h, "p", port, "backup_epoch = 1", "");
    h.signal_agent(SIGHUP);
    let failure = h.wait_for_value("the backup to fail", BACKUP_WAIT, |h| {
        let failure = h.instance("p")["backup"]["last_failure"].clone();
        (!failure.is_null()).then_some(failure)
    });
    let error = failure["error"].as_str().unwrap().to_string();
    assert!(error.contains("without writing a snapshot"), "{error}");
    // Pika's own words, from its log.
    assert!(error.contains("create new backup failed"), "{error}");
    let left: Vec<_> = std::fs::read_dir(h.path().join("data/backups/p"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let p = h.instance("p");
    assert_eq!(p["backups"], serde_json::json!([]), "{p}");
    assert_eq!(p["ready"], true, "the instance keeps running: {p}");
    drop(read_only);

    // Writable again: the retry succeeds.
    h.wait_for_value("the retried backup", Duration::from_secs(90), |h| {
        let i = h.instance("p");
        (i["backup"]["completed_epoch"] == 1).then(|| i["backups"][0].clone())
    });
}

//! Checks of the fake artifact store harness itself (`tests/common/store.rs`), with
//! `curl` as the client: a published manifest is served with its signature, missing
//! paths are 404, other methods 405, faults (truncation, throttling, down) do what they
//! say, and the archive builders emit what the download tests rely on.

mod common;

use common::store::{redis_archive, tar_gz, Entry, Signer, Store};
use common::tls::Ca;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `curl` trusting `ca`, with `args`, on `url` as it is (no `..` squashing).
fn curl(ca: &Path, args: &[&str], url: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--path-as-is", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(args)
        .arg(url)
        .output()
        .expect("run curl (apt-get install -y curl)")
}

/// GET `url` → (curl's exit code, HTTP status, announced Content-Length, body).
fn get(ca: &Path, url: &str) -> (i32, u16, Option<usize>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let out = curl(
        ca,
        &["-D", headers.to_str().unwrap(), "-o", body.to_str().unwrap()],
        url,
    );
    let head = std::fs::read_to_string(&headers).unwrap_or_default();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    });
    (
        out.status.code().unwrap_or(-1),
        status,
        length,
        std::fs::read(&body).unwrap_or_default(),
    )
}

#[test]
fn serves_signed_manifests_404s_and_faults() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("store harness CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let signer = Signer::new(dir.path(), "release");
    assert!(signer.public_key().starts_with("RW"), "{}", signer.public_key());

    let store = Store::start(&ca);
    let archive = redis_archive(64 * 1024);
    store.publish("redis", "7.9", &archive, "bin/redis-server", &signer);

    // The manifest: 200 with its bytes, naming the archive by its real digest.
    let url = format!("{}/redis/7.9/manifest.json", store.url());
    let (code, status, length, body) = get(&ca_file, &url);
    assert_eq!((code, status), (0, 200));
    let on_disk = std::fs::read(store.manifest_path("redis", "7.9")).unwrap();
    assert_eq!(body, on_disk);
    assert_eq!(length, Some(on_disk.len()));
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["archive"], "redis-7.9.tar.gz");
    assert_eq!(manifest["sha256"], common::store::sha256_hex(&archive));
    assert_eq!(manifest["executable"], "bin/redis-server");

    // Its signature verifies with minisign and the signer's public key.
    let (_, status, _, sig) = get(&ca_file, &format!("{url}.minisig"));
    assert_eq!(status, 200);
    let fetched = dir.path().join("manifest.json");
    std::fs::write(&fetched, &body).unwrap();
    std::fs::write(dir.path().join("manifest.json.minisig"), &sig).unwrap();
    let verify = Command::new("minisign")
        .args(["-V", "-p"])
        .arg(signer.pub_file())
        .arg("-m")
        .arg(&fetched)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    // … and not with another key.
    let other = Signer::new(dir.path(), "other");
    assert!(!other.verifies(&fetched));

    // Missing paths and escapes are 404, other methods 405.
    for missing in ["/redis/7.8/manifest.json", "/redis/../redis/7.9/manifest.json", "/"] {
        let (_, status, _, _) = get(&ca_file, &format!("{}{missing}", store.url()));
        assert_eq!(status, 404, "{missing}");
    }
    let post = curl(&ca_file, &["-X", "POST", "-o", "/dev/null", "-w", "%{http_code}"], &url);
    assert_eq!(String::from_utf8_lossy(&post.stdout), "405");

    // A truncated archive: the full Content-Length, fewer bytes, a failed transfer.
    let archive_url = format!("{}/redis/7.9/redis-7.9.tar.gz", store.url());
    store.truncate("redis-7.9.tar.gz", 1000);
    let (code, status, length, body) = get(&ca_file, &archive_url);
    assert_eq!(status, 200);
    assert_eq!(length, Some(archive.len()));
    assert_eq!(body, archive[..1000]);
    assert_ne!(code, 0, "curl took a truncated body for complete");

    // Throttled: about 32 KiB at 64 KiB/s takes about half a second.
    store.clear_faults();
    std::fs::write(
        store.version_dir("redis", "7.9").join("small.bin"),
        vec![7u8; 32 * 1024],
    )
    .unwrap();
    store.throttle("small.bin", 64 * 1024);
    let began = Instant::now();
    let (code, _, _, body) = get(&ca_file, &format!("{}/redis/7.9/small.bin", store.url()));
    assert_eq!((code, body.len()), (0, 32 * 1024));
    assert!(began.elapsed() >= Duration::from_millis(350), "{:?}", began.elapsed());

    // Whole again after clear_faults.
    store.clear_faults();
    let (code, _, _, body) = get(&ca_file, &archive_url);
    assert_eq!(code, 0);
    assert_eq!(body, archive);
    assert_eq!(store.requests("redis-7.9.tar.gz"), 2);
    // GETs are counted whether found or not: the manifest, the 7.8 one, the `..` one.
    assert_eq!(store.requests("manifest.json"), 3);
    assert_eq!(store.requests("7.8/manifest.json"), 1);

    // Going down cuts a throttled transfer in flight.
    store.throttle("small.bin", 16 * 1024);
    let small_url = format!("{}/redis/7.9/small.bin", store.url());
    let in_flight = {
        let ca_file = ca_file.clone();
        std::thread::spawn(move || get(&ca_file, &small_url))
    };
    std::thread::sleep(Duration::from_millis(300));
    store.set_down(true);
    let (code, status, _, body) = in_flight.join().unwrap();
    assert_eq!(status, 200);
    assert_ne!(code, 0);
    assert!(body.len() < 32 * 1024, "{}", body.len());
    store.set_down(false);
    store.clear_faults();

    // Down: no connection gets through; up again: served.
    store.set_down(true);
    let (code, status, _, _) = get(&ca_file, &url);
    assert_ne!(code, 0);
    assert_eq!(status, 0);
    store.set_down(false);
    let (code, status, _, _) = get(&ca_file, &url);
    assert_eq!((code, status), (0, 200));
}

#[test]
fn archives_hold_what_they_say() {
    let archive = redis_archive(10_000);
    assert!(archive.len() > 10_000, "the padding is not incompressible");
    let mut names = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mode = entry.header().mode().unwrap();
        if path == "bin/redis-server" {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            assert_eq!(bytes, std::fs::read(common::redis_server()).unwrap());
        }
        names.push((path, mode));
    }
    assert_eq!(
        names,
        [
            ("bin/".to_string(), 0o755),
            ("bin/redis-server".to_string(), 0o755),
            ("share/".to_string(), 0o755),
            ("share/padding.bin".to_string(), 0o644),
        ]
    );

    // Hostile entries are written as they are.
    let hostile = tar_gz(&[
        Entry::File("../evil", b"x".to_vec(), 0o644),
        Entry::File("/etc/x", b"y".to_vec(), 0o644),
        Entry::Symlink("bin/out", "../../../etc/passwd"),
        Entry::HardLink("bin/hard", "/etc/shadow"),
        Entry::Dir("bin/"),
    ]);
    let mut seen = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&hostile[..]));
    for entry in tar.entries().unwrap() {
        let entry = entry.unwrap();
        let header = entry.header();
        let name = String::from_utf8_lossy(&header.as_old().name)
            .trim_end_matches('\0')
            .to_string();
        let link = header
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        seen.push((name, header.entry_type(), link));
    }
    assert_eq!(
        seen,
        [
            ("../evil".into(), tar::EntryType::Regular, String::new()),
            ("/etc/x".into(), tar::EntryType::Regular, String::new()),
            ("bin/out".into(), tar::EntryType::Symlink, "../../../etc/passwd".into()),
            ("bin/hard".into(), tar::EntryType::Link, "/etc/shadow".into()),
            ("bin/".into(), tar::EntryType::Directory, String::new()),
        ]
    );
}

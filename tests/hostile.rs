//! Hostile input: a table of bad desired-state documents and manifests, each with the
//! error it must get. Every one is rejected as a whole, and afterwards the files on
//! disk and the running instances are byte-for-byte and pid-for-pid what they were.
//! Against real `redis-server` processes; the tally is printed.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOKEN: &str = "a-long-random-token-0123456789";

fn harness_with_token() -> Harness {
    // A Pika version to name; no Pika is ever started (every Pika spec here is refused).
    let pika = format!(
        "\n[engines.pika.versions]\n\"4.0\" = \"{}\"\n",
        redis_server().display()
    );
    let h = Harness::with_agent_toml("", &pika);
    let token = h.path().join("api.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(h.config_path())
        .unwrap()
        .replace("[api]\n", "[api]\ntoken_file = \"api.token\"\n");
    std::fs::write(h.config_path(), config).unwrap();
    h
}

/// `PUT /v1/desired-state` with `body`: the status code and every problem (or the
/// error) as one text.
fn put(h: &Harness, body: &[u8]) -> (u16, String) {
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
    let (code, body) = http_send(h.api_port, "PUT", "/v1/desired-state", &headers, body).unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    let said = match (&json["problems"], &json["error"]) {
        (serde_json::Value::Array(problems), _) => problems
            .iter()
            .map(|p| p.as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        (_, serde_json::Value::String(error)) => error.clone(),
        _ => json.to_string(),
    };
    (code, said)
}

/// A document with the one instance `a` as accepted, plus `extra` (a JSON object
/// text) as a second instance.
fn with_instance(a_port: u16, extra: &str) -> String {
    format!(r#"{{"generation": 9, "instances": [{{"name": "a", "port": {a_port}, "version": "7.0"}}, {extra}]}}"#)
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                all.insert(path, bytes);
            }
        }
    }
    all
}

/// What must not change: the agent's state files and the instances' config files and
/// records (not their data, which the servers write), and the instances' pids.
fn snapshot(h: &Harness) -> (BTreeMap<PathBuf, Vec<u8>>, serde_json::Value) {
    let state: BTreeMap<PathBuf, Vec<u8>> = files(&h.path().join("data"))
        .into_iter()
        // The servers' own data (they write it) and the lock are not the agent's state.
        .filter(|(path, _)| {
            let text = path.to_string_lossy();
            !text.contains("/instances/a/data/")
                && !text.contains("/instances/m/data/")
                && !text.ends_with("agent.lock")
        })
        .collect();
    assert!(state.keys().any(|p| p.ends_with("desired.json")), "{:?}", state.keys());
    assert!(
        state.keys().any(|p| p.ends_with("instances/a/instance.json")),
        "{:?}",
        state.keys()
    );
    assert!(
        state.keys().any(|p| p.ends_with("instances/m/redis.conf")),
        "{:?}",
        state.keys()
    );
    let pids = serde_json::json!({
        "a": h.instance("a")["pid"],
        "m": h.instance("m")["pid"],
    });
    (state, pids)
}

#[test]
fn hostile_documents_and_manifests_are_rejected_and_change_nothing() {
    let mut h = harness_with_token();
    let (pa, pm) = (free_port(), free_port());
    // A manifest and a document instance, both running.
    h.manifest("m", pm, "");
    h.start_agent();
    let accepted = format!(r#"{{"generation": 8, "instances": [{{"name": "a", "port": {pa}, "version": "7.0"}}]}}"#);
    assert_eq!(put(&h, accepted.as_bytes()).0, 200);
    h.wait_ready("a");
    h.wait_ready("m");
    let api = h.api_port;
    let before = snapshot(&h);
    let p = free_port();
    let mut tried = 0;

    // Documents: (what, body, expected code, a text the answer must contain).
    let long_name = "n".repeat(64);
    let deep = format!("{}1{}", "[".repeat(2000), "]".repeat(2000));
    let documents: Vec<(&str, Vec<u8>, u16, String)> = vec![
        ("path traversal in a name", with_instance(pa, &format!(r#"{{"name": "../etc", "port": {p}}}"#)).into(), 422,
            "instances[1].name: \"../etc\" is not a valid name".into()),
        ("a slash in a name", with_instance(pa, &format!(r#"{{"name": "a/b", "port": {p}}}"#)).into(), 422,
            "instances[1].name: \"a/b\" is not a valid name".into()),
        ("an upper-case name", with_instance(pa, &format!(r#"{{"name": "Cache", "port": {p}}}"#)).into(), 422,
            "instances[1].name: \"Cache\" is not a valid name".into()),
        ("an empty name", with_instance(pa, &format!(r#"{{"name": "", "port": {p}}}"#)).into(), 422,
            "instances[1].name: \"\" is not a valid name".into()),
        ("a 64-character name", with_instance(pa, &format!(r#"{{"name": "{long_name}", "port": {p}}}"#)).into(), 422,
            format!("instances[1].name: \"{long_name}\" is not a valid name")),
        ("a name that is not ASCII", with_instance(pa, &format!(r#"{{"name": "cäche", "port": {p}}}"#)).into(), 422,
            "instances[1].name: \"cäche\" is not a valid name".into()),
        ("a duplicate name", with_instance(pa, &format!(r#"{{"name": "a", "port": {p}}}"#)).into(), 422,
            "instances[1].name: \"a\" is already declared in local document generation 9 instances[0]".into()),
        ("a name a manifest declares", with_instance(pa, &format!(r#"{{"name": "m", "port": {p}}}"#)).into(), 422,
            "\"m\" is already declared".into()),
        ("a newline in a config value", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "config": {{"maxmemory-policy": "noeviction\nslaveof 10.0.0.1 6379"}}}}"#)).into(), 422,
            "instances[1].config.maxmemory-policy: contains the control character '\\n'".into()),
        ("a NUL in a config value", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "config": {{"hz": "10\u0000"}}}}"#)).into(), 422,
            "instances[1].config.hz: contains the control character".into()),
        ("a carriage return in a password", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "password": "pw\rrequirepass x"}}"#)).into(), 422,
            "instances[1].password: contains a control character".into()),
        ("a quote and a newline in a config key", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "config": {{"hz\"\ninclude /etc/passwd": "1"}}}}"#)).into(), 422,
            "instances[1].config.\"hz\\\"\\ninclude /etc/passwd\": key contains the control character '\\n'".into()),
        ("dir", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "config": {{"dir": "/etc"}}}}"#)).into(), 422,
            "instances[1].config.dir: not allowed under [config]: the agent owns the data directory".into()),
        ("include", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "config": {{"include": "/etc/passwd"}}}}"#)).into(), 422,
            "instances[1].config.include: not allowed under [config]: the agent renders the whole config file".into()),
        ("loadmodule", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "config": {{"loadmodule": "/tmp/evil.so"}}}}"#)).into(), 422,
            "instances[1].config.loadmodule: not allowed under [config]: loading modules is not allowed".into()),
        ("rename-command", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "config": {{"rename-command": "CONFIG \"\""}}}}"#)).into(), 422,
            "instances[1].config.rename-command: not allowed under [config]: the agent needs the server's commands under their own names".into()),
        ("logfile", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "config": {{"logfile": "/etc/cron.d/x"}}}}"#)).into(), 422,
            "instances[1].config.logfile: not allowed under [config]: the agent owns the log file".into()),
        ("a Pika path key", with_instance(pa, &format!(r#"{{"name": "x", "engine": "pika", "version": "4.0", "port": {p}, "config": {{"db-path": "/etc/"}}}}"#)).into(), 422,
            "instances[1].config.db-path: not allowed under [config]: the agent owns the data directory".into()),
        ("a password file in a document", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "password_file": "/etc/shadow"}}"#)).into(), 422,
            "instances[1].password_file: not allowed in a desired-state document: it names a path on the host".into()),
        ("port 0", with_instance(pa, r#"{"name": "x", "port": 0}"#).into(), 422,
            "instances[1].port: 0 is outside 1024-65535".into()),
        ("a privileged port", with_instance(pa, r#"{"name": "x", "port": 22}"#).into(), 422,
            "instances[1].port: 22 is outside 1024-65535".into()),
        ("port 65536", with_instance(pa, r#"{"name": "x", "port": 65536}"#).into(), 422,
            "instances[1].port: 65536 is outside 1024-65535".into()),
        ("a negative port", with_instance(pa, r#"{"name": "x", "port": -6379}"#).into(), 422,
            "instances[1].port: expected a non-negative integer, found -6379".into()),
        ("a port given as text", with_instance(pa, r#"{"name": "x", "port": "6379"}"#).into(), 422,
            "instances[1].port: expected a non-negative integer, found a string".into()),
        ("a port clash", with_instance(pa, &format!(r#"{{"name": "x", "port": {pa}}}"#)).into(), 422,
            format!("instances[1].port: {pa} is already used by instance \"a\"")),
        ("a port inside Pika's", with_instance(pa, &format!(r#"{{"name": "x", "engine": "pika", "version": "4.0", "port": {}, "config": {{"maxclients": "1000"}}}}"#, pa - 2000)).into(), 422,
            format!("{pa} (a pika instance on {} also listens on it) is already used by instance \"a\"", pa - 2000)),
        ("the API's port", with_instance(pa, &format!(r#"{{"name": "x", "port": {api}}}"#)).into(), 422,
            format!("instances[1].port: {api} is the agent's own API port")),
        ("an unknown engine", with_instance(pa, &format!(r#"{{"name": "x", "engine": "memcached", "port": {p}}}"#)).into(), 422,
            "instances[1].engine: \"memcached\" is not an engine".into()),
        ("a version not in agent.toml", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "version": "9.9"}}"#)).into(), 422,
            "instances[1].version: \"9.9\" is not an allowed redis version (agent.toml [engines.redis.versions] allows: \"7.0\")".into()),
        ("a binary path as the version", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "version": "/bin/sh"}}"#)).into(), 422,
            "instances[1].version: \"/bin/sh\" is not an allowed redis version".into()),
        ("an unknown field", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "binary": "/bin/sh"}}"#)).into(), 422,
            "instances[1].binary: unknown key".into()),
        ("a huge maxmemory", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "maxmemory": "99999999999999999999gb"}}"#)).into(), 422,
            "instances[1].maxmemory: \"99999999999999999999gb\" is not a size".into()),
        ("a negative restart_epoch", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "restart_epoch": -1}}"#)).into(), 422,
            "instances[1].restart_epoch: expected a non-negative integer, found -1".into()),
        ("a huge restart_epoch", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "restart_epoch": 1e300}}"#)).into(), 422,
            "instances[1].restart_epoch: expected a non-negative integer, found 1e+300".into()),
        ("an oom_score_adj out of range", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "limits": {{"oom_score_adj": 5000}}}}"#)).into(), 422,
            "instances[1].limits.oom_score_adj: 5000 is outside -1000..1000".into()),
        ("a config value that is a list", with_instance(pa, &format!(r#"{{"name": "x", "port": {p}, "config": {{"save": ["1", "2"]}}}}"#)).into(), 422,
            "instances[1].config.save: expected a string, integer or boolean, found a list".into()),
        ("deep nesting", format!(r#"{{"generation": 9, "instances": {deep}}}"#).into(), 422,
            "not valid JSON".into()),
        ("instances that are not a list", br#"{"generation": 9, "instances": {"name": "a"}}"#.to_vec(), 422,
            "instances: expected a list, found a table".into()),
        ("a generation given as text", br#"{"generation": "9", "instances": []}"#.to_vec(), 422,
            "local document: generation: expected a non-negative integer".into()),
        ("invalid UTF-8", b"{\"generation\": 9, \"instances\": [{\"name\": \"\xff\xfe\"}]}".to_vec(), 422,
            "not valid JSON".into()),
        ("an empty body", Vec::new(), 422, "not valid JSON".into()),
        ("an empty object", b"{}".to_vec(), 422, "local document: generation: missing (required)".into()),
        ("a 10 MB body", format!(r#"{{"generation": 9, "instances": [], "pad": "{}"}}"#, "x".repeat(10 << 20)).into(), 413,
            String::new()),
    ];
    let mut wrong = Vec::new();
    for (what, body, code, expected) in &documents {
        let (got, said) = put(&h, body);
        if got != *code || !said.contains(expected.as_str()) {
            wrong.push(format!("{what}: expected {code} {expected:?}, got {got}:\n{said}"));
        }
        tried += 1;
    }

    // Manifests: (what, file content, a text the rejection must contain).
    let world_readable = h.manifest_dir().join("x.pw");
    std::fs::write(&world_readable, "secret\n").unwrap();
    std::fs::set_permissions(&world_readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let manifests: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "not TOML",
            b"name = \"x\nport = ".to_vec(),
            "x.toml: line 1: invalid basic string".into(),
        ),
        (
            "a traversal name",
            format!("name = \"../../etc/x\"\nport = {p}\n").into(),
            "x.toml: name: \"../../etc/x\" is not a valid name".into(),
        ),
        (
            "a newline in a config value",
            format!("name = \"x\"\nport = {p}\n[config]\nhz = \"10\\nslaveof 1.2.3.4 5\"\n").into(),
            "x.toml: config.hz: contains the control character '\\n', which is not allowed".into(),
        ),
        (
            "include",
            format!("name = \"x\"\nport = {p}\n[config]\ninclude = \"/etc/passwd\"\n").into(),
            "x.toml: config.include: not allowed under [config]: the agent renders the whole config file".into(),
        ),
        (
            "a port clash with a document's instance",
            format!("name = \"x\"\nport = {pa}\n").into(),
            format!("x.toml: port: {pa} is already used by instance \"a\" (local document generation 8 instances[0])"),
        ),
        (
            "a world-readable password file",
            format!("name = \"x\"\nport = {p}\npassword_file = \"x.pw\"\n").into(),
            "x.pw is accessible to other users (mode 644); make it 0600 or 0640 (chmod o-rwx)".into(),
        ),
        (
            "a binary path as the version",
            format!("name = \"x\"\nport = {p}\nversion = \"/usr/bin/redis-server\"\n").into(),
            "x.toml: version: \"/usr/bin/redis-server\" is not an allowed redis version".into(),
        ),
        (
            "invalid UTF-8",
            b"name = \"\xff\"\nport = 7000\n".to_vec(),
            "x.toml: -: cannot read: stream did not contain valid UTF-8".into(),
        ),
        (
            "a huge number",
            format!("name = \"x\"\nport = {p}\nrestart_epoch = 99999999999999999999999\n").into(),
            "x.toml: line 3: invalid type: integer `99999999999999999999999`".into(),
        ),
    ];
    let rejections = |h: &Harness| h.status()["desired"]["last_rejection"].clone();
    for (what, content, expected) in &manifests {
        let previous = rejections(&h);
        std::fs::write(h.manifest_dir().join("x.toml"), content).unwrap();
        h.signal_agent(SIGHUP);
        h.wait_for(what, Duration::from_secs(10), |h| {
            rejections(h) != previous && !rejections(h).is_null()
        });
        let said: Vec<String> = rejections(&h)["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p.as_str().unwrap_or_default().to_string())
            .collect();
        let said = said.join("\n");
        if !said.contains(expected.as_str()) {
            wrong.push(format!("{what}: expected {expected:?}, got:\n{said}"));
        }
        std::fs::remove_file(h.manifest_dir().join("x.toml")).unwrap();
        tried += 1;
    }
    h.signal_agent(SIGHUP);
    std::thread::sleep(Duration::from_millis(500));

    assert!(
        wrong.is_empty(),
        "{} of {tried} answers were not the expected ones:\n\n{}",
        wrong.len(),
        wrong.join("\n\n")
    );
    let after = snapshot(&h);
    assert_eq!(before.1, after.1, "an instance was restarted");
    assert_eq!(
        before.0.keys().collect::<Vec<_>>(),
        after.0.keys().collect::<Vec<_>>(),
        "files came or went"
    );
    for (path, bytes) in &before.0 {
        assert!(after.0.get(path) == Some(bytes), "{} changed", path.display());
    }
    assert!(pong(pa, None) && pong(pm, None));
    eprintln!(
        "hostile input: {tried} tried ({} documents, {} manifests), {tried} rejected, 0 files changed, 0 restarts",
        documents.len(),
        manifests.len()
    );
}

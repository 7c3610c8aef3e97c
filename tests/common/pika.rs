//! Helpers for the tests that run a real Pika: finding the binary, an agent.toml that
//! allows it, a manifest Pika can start with, and waiting for it.

use super::*;

/// Pika looks at a stop request every 5 s and takes 8–15 s to exit.
pub const PIKA_STOP: Duration = Duration::from_secs(40);
/// Pika answers within about 100 ms of its start when its database is small.
pub const PIKA_START: Duration = Duration::from_secs(20);

pub fn pika_bin() -> String {
    // Found by build.rs: PIKA_BIN, else `pika` on PATH.
    let bin = option_env!("KER_AGENT_TEST_PIKA_BIN").unwrap_or_default();
    assert!(
        std::path::Path::new(bin).is_file(),
        "PIKA_BIN={bin:?} is not a file: point it at a pika 4.x binary"
    );
    bin.to_string()
}

pub fn pika_versions() -> String {
    format!("\n[engines.pika.versions]\n\"4.0\" = \"{}\"\n", pika_bin())
}

/// A harness whose agent.toml allows Pika "4.0" and checks for drift every second.
pub fn harness() -> Harness {
    Harness::with_agent_toml(
        "",
        &format!("{}\n[monitoring]\ndrift_interval = \"1s\"\n", pika_versions()),
    )
}

/// Declares Pika instance `name` on `port` with a small `maxclients` (Pika needs
/// `maxclients + 5000` open files), top-level keys `top` and `[config]` keys `config`.
pub fn pika_manifest(h: &Harness, name: &str, port: u16, top: &str, config: &str) {
    h.write_manifest(
        name,
        &format!(
            "name = \"{name}\"\nengine = \"pika\"\nversion = \"4.0\"\nport = {port}\n{top}\n[config]\nmaxclients = 1000\n{config}\n"
        ),
    );
}

pub fn wait_pika_ready(h: &Harness, name: &str) -> u32 {
    h.wait_for(&format!("{name} running and ready"), PIKA_START, |h| {
        let i = h.instance(name);
        i["phase"] == "running" && i["ready"] == true
    });
    h.instance(name)["pid"].as_u64().expect("pid") as u32
}

pub fn set(port: u16, password: Option<&str>, key: &str, value: &str) {
    let mut conn = redis(port, password).unwrap();
    redis::cmd("SET").arg(key).arg(value).query::<()>(&mut conn).unwrap();
}

pub fn get(port: u16, password: Option<&str>, key: &str) -> Option<String> {
    redis(port, password)
        .and_then(|mut c| redis::cmd("GET").arg(key).query::<Option<String>>(&mut c))
        .ok()
        .flatten()
}

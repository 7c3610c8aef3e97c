//! The agent with real `pika` processes: lifecycle, adoption, live `CONFIG SET`, a
//! restart-required key, `SLAVEOF` between two instances, and a password with no
//! `AUTH` bypass.
//!
//! They need a Pika binary: `PIKA_BIN=/path/to/pika cargo test --test pika`. Without
//! `PIKA_BIN` every test here is reported as ignored, by name (see `build.rs`); the
//! Redis tests never are.

mod common;

use common::*;
use std::net::TcpListener;
use std::time::Duration;

const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

fn pika_bin() -> String {
    // Found by build.rs: PIKA_BIN, else `pika` on PATH.
    let bin = option_env!("KER_AGENT_TEST_PIKA_BIN").unwrap_or_default();
    assert!(
        std::path::Path::new(bin).is_file(),
        "PIKA_BIN={bin:?} is not a file: point it at a pika 4.x binary"
    );
    bin.to_string()
}

/// A harness whose agent.toml allows Pika "4.0" = `$PIKA_BIN`.
fn harness() -> Harness {
    Harness::with_agent_toml("", &format!("\n[engines.pika.versions]\n\"4.0\" = \"{}\"", pika_bin()))
}

/// A port whose replication (+2000) and rsync (+10001) ports are free too.
fn pika_port() -> u16 {
    loop {
        let port = free_port();
        if [port + 2000, port + 10_001]
            .iter()
            .all(|p| TcpListener::bind(("0.0.0.0", *p)).is_ok())
        {
            return port;
        }
    }
}

/// Declares Pika instance `name` on `port` with a small `maxclients` (Pika needs
/// `maxclients + 5000` open files) and `extra` lines: top-level keys, then `[config]`
/// keys.
fn pika_manifest(h: &Harness, name: &str, port: u16, top: &str, config: &str) {
    h.write_manifest(
        name,
        &format!(
            "name = \"{name}\"\nengine = \"pika\"\nversion = \"4.0\"\nport = {port}\n{top}\n[config]\nmaxclients = 1000\n{config}\n"
        ),
    );
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_starts_is_adopted_and_stops_by_sigterm_without_sigkill() {
    let mut h = harness();
    let port = pika_port();
    pika_manifest(&h, "p", port, "", "");
    h.start_agent();
    let pid = h.wait_ready("p");
    assert!(pong(port, None));
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert!(open_files.contains("6000"), "{open_files}");

    // A new agent adopts the running Pika: same pid.
    h.stop_agent(SIGTERM);
    assert!(pong(port, None), "stopping the agent stopped Pika");
    h.start_agent();
    assert_eq!(h.wait_ready("p"), pid);

    pika_manifest(&h, "p", port, "state = \"stopped\"", "");
    h.signal_agent(SIGHUP);
    h.wait_for("p stopped", Duration::from_secs(40), |h| {
        h.instance("p")["phase"] == "stopped"
    });
    let stop = &h.instance("p")["last_stop"];
    assert_eq!(stop["how"], "SIGTERM", "{stop}");
    assert_eq!(stop["forced"], false, "{stop}");
    assert!(!alive(pid));
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_live_keys_change_without_a_restart_and_thread_num_restarts() {
    let mut h = harness();
    let port = pika_port();
    pika_manifest(&h, "p", port, "", "timeout = 60");
    h.start_agent();
    let pid = h.wait_ready("p");

    pika_manifest(&h, "p", port, "", "timeout = 120");
    h.signal_agent(SIGHUP);
    h.wait_for("timeout 120", Duration::from_secs(10), |_| {
        config_get(port, None, "timeout") == "120"
    });
    assert_eq!(h.instance("p")["pid"], pid, "a live key restarted Pika");
    let file = std::fs::read_to_string(h.instance_dir("p").join("pika.conf")).unwrap();
    assert!(file.contains("timeout : 120"), "{file}");

    pika_manifest(&h, "p", port, "", "timeout = 120\nthread-num = 2");
    h.signal_agent(SIGHUP);
    h.wait_for("p restarted", Duration::from_secs(60), |h| {
        let i = h.instance("p");
        i["pid"] != pid && i["ready"] == true
    });
    assert_eq!(config_get(port, None, "thread-num"), "2");
    let (_, detail) = h.http_get("/v1/instances/p").unwrap();
    assert!(
        detail.contains("thread-num"),
        "the restart does not name the key: {detail}"
    );
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_slaveof_between_two_instances() {
    let mut h = harness();
    let (m, r) = (pika_port(), pika_port());
    pika_manifest(&h, "m", m, "", "");
    pika_manifest(&h, "r", r, "", "");
    h.start_agent();
    h.wait_ready("m");
    let pid = h.wait_ready("r");
    let mut conn = redis(m, None).unwrap();
    redis::cmd("SET").arg("k").arg("from-m").query::<()>(&mut conn).unwrap();

    pika_manifest(&h, "r", r, &format!("replica_of = \"127.0.0.1:{m}\""), "");
    h.signal_agent(SIGHUP);
    h.wait_for("r replicating", Duration::from_secs(60), |h| {
        h.instance("r")["health"]["observed_role"] == "replica"
            && redis(r, None)
                .and_then(|mut c| redis::cmd("GET").arg("k").query::<Option<String>>(&mut c))
                .is_ok_and(|v| v.as_deref() == Some("from-m"))
    });
    assert_eq!(h.instance("r")["pid"], pid, "SLAVEOF restarted the replica");

    pika_manifest(&h, "r", r, "", "");
    h.signal_agent(SIGHUP);
    h.wait_for("r a master again", Duration::from_secs(20), |h| {
        h.instance("r")["health"]["observed_role"] == "master"
    });
    assert_eq!(h.instance("r")["pid"], pid);
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn pika_password_has_no_auth_bypass() {
    let mut h = harness();
    let port = pika_port();
    pika_manifest(&h, "p", port, "password = \"pika-secret-1\"", "");
    h.start_agent();
    h.wait_ready("p");
    assert!(pong(port, Some("pika-secret-1")));
    assert!(!pong(port, None), "no password needed");
    assert!(!pong(port, Some("anything-else")), "AUTH with any password gets in");
    assert_ne!(config_get(port, Some("pika-secret-1"), "userpass"), "");
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    assert!(!log.contains("pika-secret-1"));
}

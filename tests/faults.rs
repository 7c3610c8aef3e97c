//! Faults around a running agent: a full disk, a read-only data directory, a binary
//! that exits at once or is missing, a frozen server, a controller that hangs, resets
//! or trickles. Each fault gets a precise message naming the instance and the path or
//! address, supervision goes on, and a bystander instance keeps its pid and answers
//! throughout. Against real `redis-server` processes and real mounts (root); each test
//! prints the checks it made.

mod common;

use common::controller::{controlled, document, Controller, Fault, NODE, TOKEN};
use common::mount::Mount;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts what a test checked, and prints it at the end.
struct Tally {
    fault: &'static str,
    checks: u32,
}

impl Tally {
    fn new(fault: &'static str) -> Tally {
        Tally { fault, checks: 0 }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        assert!(ok, "fault '{}': {}", self.fault, what());
        self.checks += 1;
    }

    fn done(self) {
        println!("fault '{}': {} checks held", self.fault, self.checks);
    }
}

/// An instance that must not notice the fault: same pid, answering, ready.
struct Bystander {
    port: u16,
    pid: u32,
}

impl Bystander {
    fn declare(h: &Harness) -> u16 {
        let port = free_port();
        h.manifest("bystander", port, "");
        port
    }

    fn ready(h: &Harness, port: u16) -> Bystander {
        Bystander {
            port,
            pid: h.wait_ready("bystander"),
        }
    }

    fn untouched(&self, h: &Harness, tally: &mut Tally) {
        let now = h.instance("bystander");
        tally.check(now["pid"] == self.pid, || format!("the bystander was restarted: {now}"));
        tally.check(now["ready"] == true, || format!("the bystander is not ready: {now}"));
        tally.check(pong(self.port, None), || "the bystander does not answer PING".into());
    }
}

/// Fills the file system holding `dir` until a write fails with ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Small writes too, until not one byte fits.
    while file.write(&[0u8; 512]).map(|n| n > 0).unwrap_or(false) {}
    filler
}

fn message(h: &Harness, name: &str) -> String {
    h.instance(name)["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_full_disk_keeps_the_old_files_reports_the_path_and_supervision_goes_on() {
    let mut tally = Tally::new("disk full");
    let mut h = Harness::new();
    let data = h.path().join("data");
    let _tmpfs = Mount::tmpfs(&data, "4m");
    let port = free_port();
    h.manifest("a", port, "");
    let bystander_port = Bystander::declare(&h);
    h.start_agent();
    let a = h.wait_ready("a");
    let bystander = Bystander::ready(&h, bystander_port);
    let desired = data.join("desired.json");
    let before = std::fs::read(&desired).unwrap();
    let record = h.instance_dir("bystander").join("instance.json");
    let record_before = std::fs::read(&record).unwrap();
    let filler = fill(&data);

    // A new desired state that cannot be persisted is not applied.
    h.manifest("a", port, "[config]\nhz = \"20\"\n");
    h.wait_for("the change refused", Duration::from_secs(10), |h| {
        !h.status()["desired"]["last_rejection"].is_null()
    });
    let rejection = h.status()["desired"]["last_rejection"].to_string();
    tally.check(
        rejection.contains("cannot be persisted, so it is not applied")
            && rejection.contains(&desired.display().to_string())
            && rejection.contains("No space left on device"),
        || format!("the rejection does not say what and where: {rejection}"),
    );
    tally.check(std::fs::read(&desired).unwrap() == before, || {
        "desired.json changed on a full disk".into()
    });
    tally.check(config_get(port, None, "hz") == "10", || {
        "the change was applied unpersisted".into()
    });

    // A crash: the restart needs its records, which cannot be written (the one
    // before the spawn may still fit in a page the file system holds; the one after
    // does not, and the started process is killed).
    send_signal(a, SIGKILL);
    h.wait_for("the restart refused", Duration::from_secs(10), |h| {
        message(h, "a").contains("No space left on device")
    });
    let said = message(&h, "a");
    let named = |file: &str| said.contains(&h.instance_dir("a").join(file).display().to_string());
    tally.check(
        (named("launch.json") && said.contains("the server is not started without its record"))
            || (named("instance.json") && said.contains("the started process was killed")),
        || format!("the refused start does not say what and where: {said}"),
    );
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    let said_again = log.matches("cannot be persisted, so it is not applied").count();
    tally.check(said_again == 2, || {
        format!("the refused change is logged {said_again} times, not once (line and event)")
    });
    tally.check(listener_pid(port).is_none(), || {
        "a server runs without its record".into()
    });
    tally.check(std::fs::read(&record).unwrap() == record_before, || {
        "the bystander's record changed".into()
    });
    bystander.untouched(&h, &mut tally);

    // Space again: the restart goes through (after its back-off), and the refused
    // change applies.
    std::fs::remove_file(filler).unwrap();
    let mut pid = 0;
    h.wait_for("a running again", Duration::from_secs(60), |h| {
        let i = h.instance("a");
        pid = i["pid"].as_u64().unwrap_or_default() as u32;
        i["ready"] == true && pid != a
    });
    tally.check(pong(port, None), || "the replaced server does not answer".into());
    h.wait_for("the change applied", Duration::from_secs(15), |_| {
        config_get(port, None, "hz") == "20"
    });
    tally.check(
        std::fs::read_to_string(&desired).unwrap().contains("\"hz\": \"20\""),
        || "desired.json does not hold the change".into(),
    );
    bystander.untouched(&h, &mut tally);
    tally.done();
}

/// An agent running `a` and a bystander: the harness, `a`'s port and pid, and the
/// bystander.
fn a_and_a_bystander() -> (Harness, u16, u32, Bystander) {
    let mut h = Harness::new();
    let port = free_port();
    h.manifest("a", port, "");
    let bystander_port = Bystander::declare(&h);
    h.start_agent();
    let a = h.wait_ready("a");
    let bystander = Bystander::ready(&h, bystander_port);
    (h, port, a, bystander)
}

#[test]
fn a_read_only_data_directory_is_named_and_the_other_instances_are_untouched() {
    let mut tally = Tally::new("read-only data directory");
    let (h, port, a, bystander) = a_and_a_bystander();
    let dir = h.instance_dir("a");
    let mount = Mount::read_only(&dir);
    send_signal(a, SIGKILL);
    h.wait_for("the restart refused", Duration::from_secs(10), |h| {
        message(h, "a").contains("Read-only file system")
    });
    let said = message(&h, "a");
    tally.check(said.contains(&dir.display().to_string()), || {
        format!("the message does not name the directory: {said}")
    });
    tally.check(h.instance("a")["phase"] == "failed", || format!("{}", h.instance("a")));
    tally.check(listener_pid(port).is_none(), || {
        "a server runs without its record".into()
    });
    bystander.untouched(&h, &mut tally);
    drop(mount);
    h.wait_restarted("a", a);
    tally.check(pong(port, None), || "a did not come back".into());
    bystander.untouched(&h, &mut tally);
    tally.done();
}

#[test]
fn a_binary_that_exits_at_once_loops_with_its_words_and_a_missing_one_is_named() {
    let mut tally = Tally::new("binary exits at once / missing");
    let bin = tempfile::tempdir().unwrap();
    let exits = bin.path().join("exits-at-once");
    std::fs::write(
        &exits,
        "#!/bin/sh\necho 'FATAL: cannot open the data file' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&exits, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let missing = bin.path().join("not-installed/redis-server");
    let mut h = Harness::with_agent_toml(
        &format!(
            "\"exits\" = \"{}\"\n\"missing\" = \"{}\"",
            exits.display(),
            missing.display()
        ),
        "",
    );
    let (pe, pm) = (free_port(), free_port());
    h.manifest_with_version("e", "exits", pe, "");
    h.manifest_with_version("m", "missing", pm, "");
    let bystander_port = Bystander::declare(&h);
    h.start_agent();
    let bystander = Bystander::ready(&h, bystander_port);

    h.wait_for("e in a crash loop", Duration::from_secs(20), |h| {
        h.instance("e")["phase"] == "crash-loop"
    });
    let said = message(&h, "e");
    tally.check(said.contains("FATAL: cannot open the data file"), || {
        format!("the crash loop does not show the server's words: {said}")
    });
    tally.check(said.contains("exit code 3"), || {
        format!("the crash loop does not show the exit status: {said}")
    });
    h.wait_for("m failed", Duration::from_secs(10), |h| {
        h.instance("m")["phase"] == "failed"
    });
    let said = message(&h, "m");
    tally.check(said.contains(&missing.display().to_string()), || {
        format!("the failed start does not name the binary: {said}")
    });
    let log = std::fs::read_to_string(h.agent_log()).unwrap();
    tally.check(
        log.contains(&missing.display().to_string()) && log.contains("does not exist"),
        || "the agent did not warn at start that the binary is missing".into(),
    );
    bystander.untouched(&h, &mut tally);

    // Installed later: the instance starts without anyone touching the agent.
    std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
    std::fs::copy(redis_server(), &missing).unwrap();
    h.wait_for("m running", Duration::from_secs(60), |h| {
        h.instance("m")["ready"] == true
    });
    tally.check(pong(pm, None), || "m does not answer".into());
    bystander.untouched(&h, &mut tally);
    tally.done();
}

#[test]
fn a_frozen_server_is_unhealthy_with_the_reason_and_nothing_else_waits_for_it() {
    let mut tally = Tally::new("server frozen with SIGSTOP");
    let (h, port, a, bystander) = a_and_a_bystander();
    send_signal(a, SIGSTOP);
    h.wait_for("a unhealthy", Duration::from_secs(15), |h| {
        h.instance("a")["health"]["status"] == "unhealthy"
    });
    let health = h.instance("a")["health"].to_string();
    tally.check(
        health.contains(&format!("127.0.0.1:{port}")) && health.contains("did not answer"),
        || format!("the reason does not say what and where: {health}"),
    );
    // The API and /metrics answer at once while a's probes hang; the node stays ready
    // (readiness is about reconciling, not about the instances' health).
    for path in ["/v1/status", "/metrics", "/v1/instances/a", "/readyz"] {
        let began = Instant::now();
        let (code, _) = h.http_get(path).unwrap();
        let took = began.elapsed();
        tally.check(code == 200, || format!("{path}: {code}"));
        tally.check(took < Duration::from_millis(500), || format!("{path} took {took:?}"));
    }
    tally.check(h.instance("a")["pid"] == a, || "the frozen server was replaced".into());
    bystander.untouched(&h, &mut tally);
    send_signal(a, SIGCONT);
    h.wait_for("a healthy again", Duration::from_secs(15), |h| {
        h.instance("a")["health"]["status"] == "ok"
    });
    tally.check(h.instance("a")["pid"] == a && h.instance("a")["restarts"] == 0, || {
        format!("{}", h.instance("a"))
    });
    bystander.untouched(&h, &mut tally);
    tally.done();
}

/// A peer that takes over the controller's address while the controller is down:
/// it accepts connections and misbehaves.
struct BadPeer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Reads the request and closes the connection with a TCP reset.
    Reset,
    /// Answers one byte a second, for ever.
    Trickle,
}

impl BadPeer {
    fn start(addr: SocketAddr, how: Misbehaviour) -> BadPeer {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let flag = flag.clone();
                        std::thread::spawn(move || misbehave(stream, how, &flag));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        BadPeer {
            stop,
            thread: Some(thread),
            addr,
        }
    }
}

impl Drop for BadPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.addr;
    }
}

fn misbehave(mut stream: std::net::TcpStream, how: Misbehaviour, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf);
    match how {
        Misbehaviour::Reset => {
            // SO_LINGER 0: close() sends RST instead of FIN.
            let sock = socket2::SockRef::from(&stream);
            let _ = sock.set_linger(Some(Duration::ZERO));
        }
        Misbehaviour::Trickle => {
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
                .iter()
                .cycle()
            {
                if stop.load(Ordering::SeqCst) || stream.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[test]
fn a_controller_that_hangs_resets_or_trickles_times_out_and_supervision_goes_on() {
    let mut tally = Tally::new("controller hangs / resets / trickles");
    let controller = Controller::start(TOKEN);
    let mut h = controlled(&controller);
    let port = free_port();
    let bystander_port = free_port();
    controller.set_document(
        NODE,
        document(1, &[("a", port, json!({})), ("bystander", bystander_port, json!({}))]),
    );
    h.start_agent();
    let mut a = h.wait_ready("a");
    let bystander = Bystander::ready(&h, bystander_port);
    let url = controller.url();
    let poll_error = |h: &Harness| {
        h.status()["controller"]["poll_error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // Each fault in turn: the agent notices it with a message naming the controller,
    // and a crash meanwhile is handled as usual. Hang: the controller accepts and
    // never answers. Reset and trickle: a peer on its address while it is down.
    let faults = [
        ("hang", None, "did not answer within"),
        (
            "reset",
            Some(Misbehaviour::Reset),
            "connection closed before message completed",
        ),
        ("trickle", Some(Misbehaviour::Trickle), "did not answer within"),
    ];
    for (name, misbehaviour, expected) in faults {
        let began = Instant::now();
        let peer = match misbehaviour {
            None => {
                controller.set_fault(Fault::Hang);
                None
            }
            Some(how) => {
                controller.stop();
                Some(BadPeer::start(controller.addr(), how))
            }
        };
        h.wait_for(&format!("the {name} noticed"), Duration::from_secs(40), |h| {
            poll_error(h).contains(expected)
        });
        let noticed = began.elapsed();
        let said = poll_error(&h);
        tally.check(
            said.starts_with(&url) || said.starts_with(&format!("cannot reach {url}")),
            || format!("{name}: the error does not lead with the controller's address: {said}"),
        );
        tally.check(said.matches(&url).count() == 1, || {
            format!("{name}: the address is repeated: {said}")
        });
        // The poll's own timeout (its wait, 500 ms here, plus a 5 s margin) bounds
        // how long a silent or trickling controller holds it.
        tally.check(noticed < Duration::from_secs(12), || {
            format!("{name}: noticed after {noticed:?}")
        });
        send_signal(a, SIGKILL);
        a = h.wait_restarted("a", a);
        bystander.untouched(&h, &mut tally);
        drop(peer);
        controller.set_fault(Fault::None);
        if !controller.is_running() {
            controller.restart();
        }
        h.wait_for(
            &format!("polls healthy after the {name}"),
            Duration::from_secs(40),
            |h| h.status()["controller"]["poll_error"].is_null(),
        );
    }
    tally.done();
}

//! Test harness: runs the real `ker-agent` binary against real `redis-server`
//! processes, each test in its own temporary directory with its own ports. On a
//! failing test it prints the agent's command, directory, exit status, log and last
//! status; on drop it kills every process started from its directory (agents leave
//! instances running by design).

#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub mod controller;
pub mod mount;
pub mod netns;
pub mod openapi;
pub mod pika;
pub mod store;
pub mod tls;

pub const AGENT: &str = env!("CARGO_BIN_EXE_ker-agent");

/// The redis-server the tests use: `$REDIS_SERVER` or Debian's.
pub fn redis_server() -> PathBuf {
    let path = std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"));
    assert!(
        path.is_file(),
        "{} not found: install it (apt-get install -y redis-server) or set REDIS_SERVER",
        path.display()
    );
    path
}

/// A TCP port that is free now, outside the ephemeral range so that client sockets
/// do not take it. Ports are handed out from a per-process random start.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20000 + (std::process::id() % 500) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32000, "ran out of test ports");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// A port for a Pika instance: free, and so are its replication (+2000) and rsync
/// (+10001) ports, on every address.
pub fn pika_port() -> u16 {
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

/// One agent set-up in a temporary directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    /// Where the agent's API listens: 127.0.0.1, or its host's address in a network.
    pub api_host: std::net::IpAddr,
    /// The network namespace the agent runs in, if placed in a network host.
    pub netns: Option<String>,
    pub agent: Option<Child>,
    pub last_exit: Option<ExitStatus>,
    /// Extra environment for every agent and CLI run.
    pub env: Vec<(&'static str, std::ffi::OsString)>,
    /// A command the agent runs under (it must exec the agent, so that the pid is the
    /// agent's), e.g. `prlimit --nofile=256:4096 --`.
    pub wrapper: Vec<String>,
    starts: u32,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_agent_toml("", "")
    }

    /// A harness whose agent.toml gets `extra_versions` lines in
    /// `[engines.redis.versions]` and `extra_instances` lines in `[instances]`.
    pub fn with_agent_toml(extra_versions: &str, extra_instances: &str) -> Harness {
        let dir = tempfile::Builder::new()
            .prefix("ker-agent-test-")
            .tempdir()
            .expect("temp dir");
        let api_port = free_port();
        let h = Harness {
            dir,
            api_port,
            api_host: std::net::Ipv4Addr::LOCALHOST.into(),
            netns: None,
            agent: None,
            last_exit: None,
            env: Vec::new(),
            wrapper: Vec::new(),
            starts: 0,
        };
        std::fs::create_dir_all(h.manifest_dir()).unwrap();
        let config = format!(
            "node_id = \"test-node\"\n\
             data_dir = \"data\"\n\
             manifest_dir = \"instances.d\"\n\
             [engines.redis.versions]\n\
             \"7.0\" = \"{}\"\n\
             {extra_versions}\n\
             [api]\n\
             listen = \"127.0.0.1:{api_port}\"\n\
             [instances]\n\
             log_dir = \"log\"\n\
             {extra_instances}\n",
            redis_server().display()
        );
        std::fs::write(h.config_path(), config).unwrap();
        h
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("agent.toml")
    }

    pub fn manifest_dir(&self) -> PathBuf {
        self.path().join("instances.d")
    }

    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.path().join("data/instances").join(name)
    }

    pub fn instance_log(&self, name: &str) -> PathBuf {
        self.path().join("log").join(format!("{name}.log"))
    }

    pub fn agent_log(&self) -> PathBuf {
        self.path().join("agent.log")
    }

    /// Writes `instances.d/<name>.toml` for a Redis instance on `port`, with `extra`
    /// TOML lines (top-level keys first, then tables).
    pub fn manifest(&self, name: &str, port: u16, extra: &str) {
        self.manifest_with_version(name, "7.0", port, extra);
    }

    /// Like [`Harness::manifest`] with another allowed version.
    pub fn manifest_with_version(&self, name: &str, version: &str, port: u16, extra: &str) {
        let text = format!("name = \"{name}\"\nengine = \"redis\"\nversion = \"{version}\"\nport = {port}\n{extra}\n");
        self.write_manifest(name, &text);
    }

    pub fn write_manifest(&self, name: &str, text: &str) {
        // Written to a temp name and renamed, as configuration tools do.
        let tmp = self.manifest_dir().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifest_dir().join(format!("{name}.toml"))).unwrap();
    }

    pub fn remove_manifest(&self, name: &str) {
        std::fs::remove_file(self.manifest_dir().join(format!("{name}.toml"))).unwrap();
    }

    /// Runs `ker-agent <args>` to completion.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(AGENT)
            .args(args)
            .current_dir(self.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run ker-agent")
    }

    /// Runs the agent and CLI as on a host without ca-certificates: the system trust
    /// store (found through `SSL_CERT_FILE`/`SSL_CERT_DIR`) is empty.
    pub fn without_system_trust_roots(&mut self) {
        let empty = self.path().join("no-trust-roots");
        std::fs::create_dir_all(&empty).unwrap();
        self.env.push(("SSL_CERT_FILE", empty.join("none.pem").into()));
        self.env.push(("SSL_CERT_DIR", empty.into()));
    }

    /// Makes this harness's agent a host of `net`: it runs in host `i`'s network
    /// namespace, its API and instances listen on the host's address (reached through
    /// the test process's link, see `Network::attach_test_process`), and its node id
    /// is `node_id`.
    pub fn place_in(&mut self, net: &netns::Network, i: usize, node_id: &str) {
        let ip = net.host_ip(i);
        let config = std::fs::read_to_string(self.config_path())
            .unwrap()
            .replace("node_id = \"test-node\"", &format!("node_id = \"{node_id}\""))
            .replace("listen = \"127.0.0.1:", &format!("listen = \"{ip}:"))
            .replace("log_dir = \"log\"", &format!("log_dir = \"log\"\nbind = [\"{ip}\"]"));
        std::fs::write(self.config_path(), config).unwrap();
        self.api_host = ip.into();
        self.netns = Some(net.name(i).to_string());
    }

    /// Starts `ker-agent run` (in its network host when placed in one) and waits until
    /// its API answers.
    pub fn start_agent(&mut self) {
        let mut command = match &self.netns {
            Some(name) => {
                let mut c = Command::new(netns::ip());
                c.args(["netns", "exec", name]).arg(AGENT);
                c
            }
            None => match self.wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(AGENT);
                    c
                }
                None => Command::new(AGENT),
            },
        };
        assert!(self.agent.is_none(), "agent already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log())
            .unwrap();
        writeln!(&log, "===== agent start #{} =====", self.starts).unwrap();
        let child = command
            .args(["run", "--config"])
            .arg(self.config_path())
            .current_dir(self.path())
            .env("KER_AGENT_LOG", "debug")
            .env("KER_TEST_MARKER", "must-not-reach-instances")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ker-agent");
        self.agent = Some(child);
        self.wait_for("the agent's API to answer /healthz", Duration::from_secs(10), |h| {
            h.http_get("/healthz").map(|(code, _)| code == 200).unwrap_or(false)
        });
    }

    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("agent running").id()
    }

    /// Sends `signal` to the agent.
    pub fn signal_agent(&self, signal: i32) {
        send_signal(self.agent_pid(), signal);
    }

    /// Sends `signal` to the agent and waits for it to exit; returns how long it took.
    pub fn stop_agent(&mut self, signal: i32) -> Duration {
        let began = Instant::now();
        self.signal_agent(signal);
        let mut child = self.agent.take().expect("agent running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.last_exit = Some(status);
                return began.elapsed();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent did not exit within 10 s after signal {signal}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `GET path` on the agent's API → (status code, body).
    pub fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_send_to(self.api_host, self.api_port, "GET", path, &[], b"")
    }

    /// `/v1/status` as JSON.
    pub fn status(&self) -> Value {
        let (code, body) = self
            .http_get("/v1/status")
            .unwrap_or_else(|e| panic!("GET /v1/status: {e}\n{}", self.diagnostics()));
        assert_eq!(code, 200, "GET /v1/status: {body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// The status of one instance from `/v1/status`, or `Null`.
    pub fn instance(&self, name: &str) -> Value {
        self.status()["instances"]
            .as_array()
            .and_then(|list| list.iter().find(|i| i["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    /// Waits until instance `name` is running and ready; returns its pid.
    pub fn wait_ready(&self, name: &str) -> u32 {
        let mut pid = None;
        self.wait_for(
            &format!("{name} to be running and ready"),
            Duration::from_secs(20),
            |h| {
                let i = h.instance(name);
                pid = (i["phase"] == "running" && i["ready"] == true)
                    .then(|| i["pid"].as_u64())
                    .flatten();
                pid.is_some()
            },
        );
        pid.unwrap_or_default() as u32
    }

    /// Waits until instance `name` runs and is ready with a pid other than `old`;
    /// returns it.
    pub fn wait_restarted(&self, name: &str, old: u32) -> u32 {
        let mut pid = None;
        self.wait_for(&format!("{name} restarted"), Duration::from_secs(20), |h| {
            let i = h.instance(name);
            pid = (i["phase"] == "running" && i["ready"] == true && i["pid"] != old)
                .then(|| i["pid"].as_u64())
                .flatten();
            pid.is_some()
        });
        pid.unwrap_or_default() as u32
    }

    /// Polls `condition` every 20 ms until it holds, or fails the test with diagnostics.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut condition: impl FnMut(&Harness) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if condition(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out after {timeout:?} waiting for {what}\n{}", self.diagnostics());
    }

    /// Polls `find` every 20 ms until it finds something, or fails the test with
    /// diagnostics.
    pub fn wait_for_value<T>(&self, what: &str, timeout: Duration, mut find: impl FnMut(&Harness) -> Option<T>) -> T {
        let mut found = None;
        self.wait_for(what, timeout, |h| {
            found = find(h);
            found.is_some()
        });
        // wait_for returns only once `find` found something.
        found.expect("found")
    }

    /// Everything useful to understand a failure.
    pub fn diagnostics(&self) -> String {
        let log = std::fs::read_to_string(self.agent_log()).unwrap_or_else(|e| format!("(no agent log: {e})"));
        let status = http_send_to(self.api_host, self.api_port, "GET", "/v1/status", &[], b"")
            .map(|(_, body)| body)
            .unwrap_or_else(|e| format!("(no status: {e})"));
        format!(
            "--- command: {AGENT} run --config {}\n--- dir: {}\n--- agent exit: {:?}\n--- agent log:\n{log}\n--- last status:\n{status}\n",
            self.config_path().display(),
            self.path().display(),
            self.last_exit,
        )
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Instances outlive agents by design: kill everything started from this directory.
        kill_processes_mentioning(self.path());
    }
}

/// The events of instance `name` as `(kind, message)`, oldest first.
/// Fails the test when any of `secrets` shows anywhere the agent writes or serves for
/// people: its log, every instance's log file, `/v1/status`, `/v1/instances/<name>`
/// of every instance (with its events), `/metrics`, and `more` (e.g. the reports a
/// test controller received). Returns how many places were searched.
pub fn assert_secrets_hidden(h: &Harness, secrets: &[&str], more: &[(&str, String)]) -> usize {
    let mut places: Vec<(String, String)> = vec![(
        "the agent log".into(),
        std::fs::read_to_string(h.agent_log()).unwrap_or_default(),
    )];
    if let Ok(entries) = std::fs::read_dir(h.path().join("log")) {
        for entry in entries.flatten() {
            let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap_or_default()).into_owned();
            places.push((entry.path().display().to_string(), text));
        }
    }
    let status = h.status();
    for name in status["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
    {
        let path = format!("/v1/instances/{name}");
        let (_, detail) = h.http_get(&path).unwrap();
        places.push((path, detail));
    }
    places.push(("/v1/status".into(), status.to_string()));
    places.push(("/metrics".into(), h.http_get("/metrics").unwrap().1));
    places.extend(more.iter().map(|(what, text)| (what.to_string(), text.clone())));
    for (what, text) in &places {
        for secret in secrets {
            assert!(!secret.is_empty());
            if let Some(at) = text.find(secret) {
                let bytes = &text.as_bytes()[at.saturating_sub(200)..(at + 100).min(text.len())];
                panic!("{what} shows a secret: …{}…", String::from_utf8_lossy(bytes));
            }
        }
    }
    places.len()
}

pub fn events(h: &Harness, name: &str) -> Vec<(String, String)> {
    let (_, body) = h.http_get(&format!("/v1/instances/{name}")).unwrap();
    let detail: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    detail["events"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    (
                        e["kind"].as_str().unwrap_or_default().to_string(),
                        e["message"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn count_events(h: &Harness, name: &str, kind: &str) -> usize {
    events(h, name).iter().filter(|(k, _)| k == kind).count()
}

/// SIGKILLs every process whose command line or working directory mentions `dir`,
/// and waits for them to go. (redis-server rewrites its command line to show its
/// address, but its working directory is its data directory.)
pub fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let pids: Vec<u32> = processes()
        .into_iter()
        .filter(|(pid, cmdline)| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            *pid != std::process::id() && (cmdline.contains(&needle) || cwd.starts_with(&needle))
        })
        .map(|(pid, _)| pid)
        .collect();
    for pid in &pids {
        send_signal(*pid, SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every process with its command line (NULs as spaces).
pub fn processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&bytes).replace('\0', " ");
            out.push((pid, cmdline));
        }
    }
    out
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match ker_agent::procfs::read_stat(pid) {
        Ok(Some(stat)) => stat.state != 'Z' && stat.state != 'X',
        _ => false,
    }
}

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGINT: i32 = 2;
pub const SIGHUP: i32 = 1;
pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;

/// Sends a signal with `kill(1)`, so that the tests need no unsafe code.
pub fn send_signal(pid: u32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .expect("run kill");
}

/// A minimal HTTP/1.0 client: enough for the agent's JSON API.
pub fn http_request(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_send(port, method, path, &[], b"")
}

/// An HTTP/1.0 request with extra headers and a body → (status code, body).
pub fn http_send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    http_send_to(std::net::Ipv4Addr::LOCALHOST.into(), port, method, path, headers, body)
}

/// [`http_send`] to another address.
pub fn http_send_to(
    host: std::net::IpAddr,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&(host, port).into(), Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A synchronous Redis connection to `127.0.0.1:port`.
pub fn redis(port: u16, password: Option<&str>) -> redis::RedisResult<redis::Connection> {
    let url = match password {
        Some(pw) => format!("redis://:{pw}@127.0.0.1:{port}/"),
        None => format!("redis://127.0.0.1:{port}/"),
    };
    let client = redis::Client::open(url)?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(conn)
}

/// `CONFIG GET key` on `127.0.0.1:port`: the value, empty when the server does not
/// know the key.
pub fn config_get(port: u16, password: Option<&str>, key: &str) -> String {
    let mut conn = redis(port, password).unwrap();
    let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(key).query(&mut conn).unwrap();
    pair.get(1).cloned().unwrap_or_default()
}

/// `CONFIG SET key value` on the server at `127.0.0.1:port`, by hand.
pub fn config_set(port: u16, password: Option<&str>, key: &str, value: &str) {
    let mut conn = redis(port, password).unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(key)
        .arg(value)
        .query::<()>(&mut conn)
        .unwrap();
}

/// Whether `127.0.0.1:port` answers PING with PONG.
pub fn pong(port: u16, password: Option<&str>) -> bool {
    redis(port, password)
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .map(|r| r == "PONG")
        .unwrap_or(false)
}

/// The pid of the process listening on `port`, from /proc.
pub fn listener_pid(port: u16) -> Option<u32> {
    ker_agent::ports::find_listener(port).and_then(|h| h.pid)
}

/// A redis-server started by the test, not by an agent, in `dir`; returns once it
/// answers PING.
pub fn foreign_redis(dir: &Path, port: u16, password: Option<&str>) -> Child {
    let child = spawn_foreign_redis(dir, port, password);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pong(port, password) {
        assert!(Instant::now() < deadline, "the test's own redis-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Starts a redis-server of the test's own in `dir` (no saves, no AOF), without
/// waiting for it.
pub fn spawn_foreign_redis(dir: &Path, port: u16, password: Option<&str>) -> Child {
    let mut command = Command::new(redis_server());
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null());
    if let Some(password) = password {
        command.args(["--requirepass", password]);
    }
    command.spawn().expect("start redis-server")
}

/// A number from the environment (benchmark knobs), or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU time (user + system) of `pid` in milliseconds, from `/proc/<pid>/stat`.
pub fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks * 1000.0 / ker_agent::sys::clock_ticks_per_second() as f64
}

/// The UTC time of day now, in seconds (for comparing with log timestamps).
pub fn wall_seconds_of_day() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() % 86400.0)
        .unwrap_or(0.0)
}

/// The UTC time of day of a tracing log line (`2025-01-01T12:34:56.123456Z  INFO …`).
pub fn log_timestamp(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The API token tests configure with [`Harness::use_api_token`].
pub const API_TOKEN: &str = "local-api-token-0123456789";

impl Harness {
    /// Configures `[api] token_file` with [`API_TOKEN`] (before the agent starts).
    pub fn use_api_token(&self) {
        use std::os::unix::fs::PermissionsExt;
        let token = self.path().join("api.token");
        std::fs::write(&token, format!("{API_TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = std::fs::read_to_string(self.config_path()).unwrap();
        std::fs::write(
            self.config_path(),
            config.replace("[api]\n", "[api]\ntoken_file = \"api.token\"\n"),
        )
        .unwrap();
    }

    /// Adds sections to the end of agent.toml (before the agent starts).
    pub fn append_agent_toml(&self, sections: &str) {
        let config = std::fs::read_to_string(self.config_path()).unwrap();
        std::fs::write(self.config_path(), format!("{config}\n{sections}\n")).unwrap();
    }

    /// The agent's address for [`http_bytes`].
    pub fn api_addr(&self) -> (std::net::IpAddr, u16) {
        (self.api_host, self.api_port)
    }
}

/// A response's status code, headers (names lower-cased) and body.
pub type RawResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// A GET that keeps the body as bytes.
pub fn http_bytes(addr: (std::net::IpAddr, u16), path: &str, headers: &[(&str, &str)]) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line: {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((code, headers, response[split + 4..].to_vec()))
}

/// Sets `key:<i>` to `<value_prefix><i>` for i in 0..keys, in one pipeline.
pub fn fill_keys(conn: &mut redis::Connection, keys: usize, value_prefix: &str) {
    let mut pipe = redis::pipe();
    for i in 0..keys {
        pipe.cmd("SET")
            .arg(format!("key:{i}"))
            .arg(format!("{value_prefix}{i}"))
            .ignore();
    }
    pipe.query::<()>(conn).unwrap();
}

/// The newest backup of `name` in the status, once one answers `backup_epoch = epoch`.
pub fn wait_backup(h: &Harness, name: &str, epoch: u64, timeout: Duration) -> Value {
    h.wait_for_value(&format!("a backup of {name} for epoch {epoch}"), timeout, |h| {
        let i = h.instance(name);
        (i["backup"]["completed_epoch"].as_u64() >= Some(epoch))
            .then(|| i["backups"][0].clone())
            .filter(|b| !b.is_null())
    })
}

//! Supervision benchmark: the real `ker-agent` binary (release build) against real
//! `redis-server` processes, compared with redis-server started directly, all in one
//! run. Four numbers:
//!
//! 1. kill -9 of an instance → PONG from the new process (agent), next to redis-server's
//!    own exec → PONG (baseline); every kill is an instance's first crash, half of them
//!    of a process the agent started, half of one it adopted;
//! 2. 100 instances from an empty data dir → all answering PING, agent vs. a plain spawn
//!    loop (ratio);
//! 3. agent restart with 100 running instances → /readyz 200, every process adopted,
//!    none restarted;
//! 4. the agent's RSS with 100 instances.
//!
//! Run with `cargo bench --bench supervision`. Knobs (environment): `BENCH_KILLS` (30),
//! `BENCH_INSTANCES` (100), `BENCH_START_REPS` (3), `BENCH_RESTART_REPS` (5),
//! `BENCH_STEADY_SECS` (5), `BENCH_AGENT_LOG` (`info`), `BENCH_ONLY` (`kill,start,
//! restart`, comma-separated). `REDIS_SERVER` picks another redis-server.
//!
//! Every process the benchmark starts is killed at the end, also on a panic (a panic
//! hook; the release profile aborts): agents first, so that none restarts an instance,
//! then every process whose working directory or command line is inside one of the
//! benchmark's directories (redis-server rewrites its command line).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{free_port, http_request, log_timestamp, redis_server, wall_seconds_of_day, Harness, AGENT, SIGTERM};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------
// Settings

struct Settings {
    kills: usize,
    instances: usize,
    start_reps: usize,
    restart_reps: usize,
    steady: Duration,
    agent_log: String,
    only: Vec<String>,
}

impl Settings {
    fn from_env() -> Settings {
        let num = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        Settings {
            kills: num("BENCH_KILLS", 30),
            instances: num("BENCH_INSTANCES", 100),
            start_reps: num("BENCH_START_REPS", 3),
            restart_reps: num("BENCH_RESTART_REPS", 5),
            steady: Duration::from_secs(num("BENCH_STEADY_SECS", 5) as u64),
            agent_log: std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            only: std::env::var("BENCH_ONLY")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_else(|_| vec!["kill".into(), "start".into(), "restart".into()]),
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}

/// Sleep between two connection attempts while waiting for one port.
const POLL_ONE: Duration = Duration::from_micros(200);
/// Sleep between two sweeps over many ports.
const POLL_MANY: Duration = Duration::from_micros(500);
/// Interval of /readyz polls.
const POLL_READYZ: Duration = Duration::from_millis(2);

// ---------------------------------------------------------------------------------
// Cleanup: every directory the benchmark works in is registered; processes whose
// working directory or command line is inside one are killed at the end and on panic.

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register_dir(dir: &Path) {
    DIRS.lock().unwrap_or_else(|p| p.into_inner()).push(dir.to_path_buf());
}

/// SIGKILLs every process (but this one) whose cwd or command line is inside `dir`,
/// agents first (so that none restarts an instance), and waits until they are gone.
fn kill_under(dir: &Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let mut agents = Vec::new();
    let mut others = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = fs::read_link(entry.path().join("cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(&needle) {
            if cmdline.contains("ker-agent") {
                agents.push(pid);
            } else {
                others.push(pid);
            }
        }
    }
    for group in [&agents, &others] {
        for pid in group.iter() {
            raw_kill(*pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while group.iter().any(|p| common::alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    agents.len() + others.len()
}

fn cleanup_all() {
    let dirs = DIRS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for dir in dirs.iter().rev() {
        kill_under(dir);
    }
}

fn raw_kill(pid: u32, signal: i32) -> bool {
    // SAFETY: kill(2) takes a pid and a signal number; no memory is involved.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// An agent set-up (the test harness) whose processes are all killed on drop.
struct AgentRun {
    h: Harness,
    starts: u32,
}

impl AgentRun {
    fn new() -> AgentRun {
        let h = Harness::new();
        register_dir(h.path());
        AgentRun { h, starts: 0 }
    }

    /// Starts `ker-agent run` without waiting for anything. Returns the instant and
    /// the wall-clock time (seconds of the UTC day) just before the spawn.
    fn spawn(&mut self, level: &str) -> (Instant, f64) {
        assert!(self.h.agent.is_none(), "agent already running");
        self.starts += 1;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.h.agent_log())
            .unwrap();
        writeln!(&log, "===== bench agent start #{} =====", self.starts).unwrap();
        let mut command = Command::new(AGENT);
        command
            .args(["run", "--config"])
            .arg(self.h.config_path())
            .current_dir(self.h.path())
            .env("KER_AGENT_LOG", level)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let (t0, wall) = (Instant::now(), wall_seconds_of_day());
        self.h.agent = Some(command.spawn().expect("start ker-agent"));
        (t0, wall)
    }

    fn agent_pid(&self) -> u32 {
        self.h.agent_pid()
    }

    /// Waits until the agent's API answers (the harness's status calls fail before).
    fn wait_api(&self) {
        self.h.wait_for("the agent's API", Duration::from_secs(10), |h| {
            h.http_get("/healthz").is_ok_and(|(code, _)| code == 200)
        });
    }

    /// The log lines of agent start number `start` (1-based), with their timestamps.
    fn log_section(&self, start: u32) -> Vec<(f64, String)> {
        let text = fs::read_to_string(self.h.agent_log()).unwrap_or_default();
        let marker = format!("===== bench agent start #{start} =====");
        let mut inside = false;
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with("===== bench agent start #") {
                inside = line == marker;
                continue;
            }
            if inside {
                if let Some(ts) = log_timestamp(line) {
                    out.push((ts, line.to_string()));
                }
            }
        }
        out
    }
}

impl AgentRun {
    /// Kills the agent, then every instance; the directory stays.
    fn kill_processes(&mut self) {
        if let Some(mut child) = self.h.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_under(self.h.path());
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        self.kill_processes();
    }
}

// ---------------------------------------------------------------------------------
// Redis protocol, by hand: one fresh connection per attempt, as cheap as possible.

/// Connects to `127.0.0.1:port` and sends PING; the connection if the answer is PONG.
fn try_pong(port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n").ok()?;
    let mut buf = [0u8; 128];
    let mut n = 0;
    loop {
        let r = s.read(&mut buf[n..]).ok()?;
        if r == 0 {
            return None;
        }
        n += r;
        if buf[..n].ends_with(b"\r\n") || n == buf.len() {
            break;
        }
    }
    (&buf[..n] == b"+PONG\r\n").then_some(s)
}

/// `INFO server` → `process_id` on an open connection.
fn server_pid(s: &mut TcpStream) -> Option<u32> {
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        if data.first() != Some(&b'$') {
            return None;
        }
        let len: usize = std::str::from_utf8(&data[1..eol]).ok()?.parse().ok()?;
        if data.len() >= eol + 2 + len {
            let body = String::from_utf8_lossy(&data[eol + 2..eol + 2 + len]).into_owned();
            return body
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|v| v.trim().parse().ok());
        }
    }
}

/// Waits until `port` answers PONG from a process other than `old_pid`; returns the
/// instant of the PONG and the answering pid.
fn wait_pong_from_new_pid(port: u16, old_pid: Option<u32>, timeout: Duration) -> (Instant, u32) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(mut s) = try_pong(port) {
            let at = Instant::now();
            if let Some(pid) = server_pid(&mut s) {
                if Some(pid) != old_pid {
                    return (at, pid);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "port {port}: no PONG from a new process within {timeout:?}"
        );
        std::thread::sleep(POLL_ONE);
    }
}

/// The pid answering on `port`, via INFO.
fn pid_on(port: u16) -> Option<u32> {
    try_pong(port).and_then(|mut s| server_pid(&mut s))
}

/// What `wait_all` saw.
struct AllReady {
    /// When the last port answered PONG.
    all_pong: Instant,
    /// When the agent's API first answered (any status), if it was polled.
    api_up: Option<Instant>,
    /// When /readyz first answered 200, if it was polled.
    readyz: Option<Instant>,
}

/// Waits until every port answers PONG, and, with `api_port`, until /readyz is 200.
/// Ports are swept in order and a sweep stops at the first one not answering, so that
/// polling costs one refused connect per sweep instead of one per pending port: the
/// machine has two cores, and a heavier poller would slow what it measures. The cost
/// is a small lag when many ports become ready at once (each PONG takes ~50 µs).
fn wait_all(ports: &[u16], api_port: Option<u16>, timeout: Duration) -> AllReady {
    let deadline = Instant::now() + timeout;
    let mut next = 0;
    let mut all_pong = None;
    let mut api_up = None;
    let mut readyz = None;
    let mut last_readyz_poll: Option<Instant> = None;
    loop {
        while all_pong.is_none() && next < ports.len() {
            if try_pong(ports[next]).is_none() {
                break;
            }
            next += 1;
            if next == ports.len() {
                all_pong = Some(Instant::now());
            }
        }
        if let (Some(api), None) = (api_port, readyz) {
            if last_readyz_poll.is_none_or(|t| t.elapsed() >= POLL_READYZ) {
                last_readyz_poll = Some(Instant::now());
                if let Ok((code, _)) = http_request(api, "GET", "/readyz") {
                    let at = Instant::now();
                    api_up.get_or_insert(at);
                    if code == 200 {
                        readyz = Some(at);
                    }
                }
            }
        }
        if let Some(all_pong) = all_pong {
            if api_port.is_none() || readyz.is_some() {
                return AllReady {
                    all_pong,
                    api_up,
                    readyz,
                };
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {next}/{} ports answer PONG, readyz {:?}",
            ports.len(),
            readyz.is_some()
        );
        std::thread::sleep(POLL_MANY);
    }
}

/// Waits until /readyz answers 200; returns (API first answered, 200).
fn wait_readyz(api_port: u16, timeout: Duration) -> (Instant, Instant) {
    let deadline = Instant::now() + timeout;
    let mut api_up = None;
    loop {
        if let Ok((code, _)) = http_request(api_port, "GET", "/readyz") {
            let at = Instant::now();
            let up = *api_up.get_or_insert(at);
            if code == 200 {
                return (up, at);
            }
        }
        assert!(Instant::now() < deadline, "/readyz not 200 within {timeout:?}");
        std::thread::sleep(POLL_READYZ);
    }
}

// ---------------------------------------------------------------------------------
// Small helpers

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Milliseconds from `wall0` to the first/last log line containing `needle`.
fn log_offsets(lines: &[(f64, String)], needle: &str, wall0: f64) -> (Option<f64>, Option<f64>, usize) {
    let hits: Vec<f64> = lines
        .iter()
        .filter(|(_, l)| l.contains(needle))
        .map(|(t, _)| ((t - wall0).rem_euclid(86400.0)) * 1000.0)
        .collect();
    (hits.first().copied(), hits.last().copied(), hits.len())
}

/// Seconds east of UTC of the local time zone, in which redis-server writes its log.
fn local_utc_offset() -> f64 {
    // SAFETY: time(NULL) and localtime_r with valid pointers to locals.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0.0;
        }
        tm.tm_gmtoff as f64
    }
}

/// The UTC time of day of a redis-server log line (`123:C 25 Nov 2026 15:27:35.649 # …`)
/// and its pid.
fn redis_log_line(line: &str, utc_offset: f64) -> Option<(u32, f64)> {
    let (pid, rest) = line.split_once(':')?;
    let pid = pid.trim().parse().ok()?;
    let time = rest.split_whitespace().nth(4)?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    Some((pid, (h * 3600.0 + m * 60.0 + sec - utc_offset).rem_euclid(86400.0)))
}

/// From redis-server's own logs (ms resolution), in ms after `wall0`: when each server
/// began ("Redis is starting") and was ready ("Ready to accept connections"). Only
/// lines of `pid` when given.
fn redis_log_times(logs: &[PathBuf], wall0: f64, pid: Option<u32>) -> (Vec<f64>, Vec<f64>) {
    let offset = local_utc_offset();
    let (mut starting, mut ready) = (Vec::new(), Vec::new());
    for log in logs {
        let text = fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let Some((line_pid, t)) = redis_log_line(line, offset) else {
                continue;
            };
            if pid.is_some_and(|p| p != line_pid) {
                continue;
            }
            let at = (t - wall0).rem_euclid(86400.0) * 1000.0;
            if line.contains("Redis is starting") {
                starting.push(at);
            } else if line.contains("Ready to accept connections") {
                ready.push(at);
            }
        }
    }
    (starting, ready)
}

fn first_last(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        "-".into()
    } else {
        format!("{min:.0}…{max:.0}")
    }
}

/// CPU time (user, system) of a process so far, in ms.
fn cpu_ms(pid: u32) -> (f64, f64) {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(after) = text.rfind(')').map(|i| &text[i + 1..]) else {
        return (0.0, 0.0);
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick_ms = 1000.0 / ker_agent::sys::clock_ticks_per_second() as f64;
    let get = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0) * tick_ms;
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    (get(14 - 3), get(15 - 3))
}

struct Stats {
    n: usize,
    median: f64,
    p90: f64,
    min: f64,
    max: f64,
}

fn stats(values: &[f64]) -> Stats {
    assert!(!values.is_empty());
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    // Nearest rank.
    let p90 = v[((0.9 * n as f64).ceil() as usize).clamp(1, n) - 1];
    Stats {
        n,
        median,
        p90,
        min: v[0],
        max: v[n - 1],
    }
}

fn median(values: &[f64]) -> f64 {
    stats(values).median
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// `VmRSS`, `VmHWM`, `RssAnon`, `RssFile` in kB and `Threads` of a process.
fn memory(pid: u32) -> BTreeMap<String, u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            ["VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "Threads", "VmSize"]
                .contains(&k)
                .then(|| Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?)))
                .flatten()
        })
        .collect()
}

fn fmt_memory(m: &BTreeMap<String, u64>) -> String {
    let mb = |k: &str| {
        m.get(k)
            .map(|v| format!("{:.1}", *v as f64 / 1024.0))
            .unwrap_or_default()
    };
    format!(
        "VmRSS {} MB, VmHWM {} MB (RssAnon {}, RssFile {}), {} threads",
        mb("VmRSS"),
        mb("VmHWM"),
        mb("RssAnon"),
        mb("RssFile"),
        m.get("Threads").copied().unwrap_or(0)
    )
}

fn sync_disks() {
    // SAFETY: sync(2) has no arguments and no preconditions.
    unsafe { libc::sync() };
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// redis-server processes on the machine that this benchmark did not start.
fn foreign_redis_servers() -> usize {
    let dirs = DIRS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim() != "redis-server" {
                return false;
            }
            let cwd = fs::read_link(e.path().join("cwd"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            !dirs.iter().any(|d| cwd.starts_with(&*d.to_string_lossy()))
        })
        .count()
}

/// Total CPU time (user + system, in clock ticks) of every process, from /proc/stat.
fn busy_ticks() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// How busy the machine is (0..=100 % of all cores) over `window`, before a measurement.
fn background_busy(window: Duration) -> f64 {
    let (b0, t0) = busy_ticks();
    std::thread::sleep(window);
    let (b1, t1) = busy_ticks();
    if t1 == t0 {
        0.0
    } else {
        (b1 - b0) as f64 * 100.0 / (t1 - t0) as f64
    }
}

// ---------------------------------------------------------------------------------
// Direct redis-server

/// A set of redis-server processes started directly, killed on drop.
struct Direct {
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Direct {
    fn new() -> Direct {
        let dir = tempfile::Builder::new()
            .prefix("ker-agent-bench-direct-")
            .tempdir()
            .expect("temp dir");
        register_dir(dir.path());
        Direct {
            dir,
            children: Vec::new(),
        }
    }

    /// Starts one redis-server the way the agent does, minus the agent's bookkeeping:
    /// own directory, a config file with port, bind, dir and logfile, stdout and
    /// stderr appended to the log.
    fn spawn_with_config(&mut self, name: &str, port: u16) {
        let idir = self.dir.path().join(name);
        let data = idir.join("data");
        fs::create_dir_all(&data).unwrap();
        let log = idir.join("redis.log");
        let conf = idir.join("redis.conf");
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir \"{}\"\nlogfile \"{}\"\ndaemonize no\nsupervised no\n",
                data.display(),
                log.display()
            ),
        )
        .unwrap();
        let out = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(redis_server())
            .arg(&conf)
            .current_dir(&data)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn redis-server");
        self.children.push(child);
    }

    /// `redis-server --port P --save '' --appendonly no`, plus bind, dir and logfile.
    fn spawn_with_args(&mut self, port: u16) -> u32 {
        let data = self.dir.path().join("args");
        fs::create_dir_all(&data).unwrap();
        let child = Command::new(redis_server())
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ])
            .arg("--dir")
            .arg(&data)
            .arg("--logfile")
            .arg(data.join("redis.log"))
            .current_dir(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn kill_all(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.kill_all();
        kill_under(self.dir.path());
    }
}

// ---------------------------------------------------------------------------------
// 1. kill -9 → PONG

struct KillResult {
    baseline: Vec<f64>,
    child: Vec<f64>,
    adopted: Vec<f64>,
    /// Per kill, from the agent's log: kill → "Instance exited.", → "Instance
    /// started." (after the crash; logged after the record is written), → our PONG.
    detect: Vec<f64>,
    respawn: Vec<f64>,
    started_to_pong: Vec<f64>,
    /// Per kill, from the new redis-server's log (ms resolution): kill → "Redis is
    /// starting" (just after exec and dynamic linking).
    kill_to_exec: Vec<f64>,
    /// The same for the baseline: spawn → "Redis is starting".
    spawn_to_starting: Vec<f64>,
    few_instances_memory: BTreeMap<String, u64>,
}

/// The agent's restart back-off is zero only for the first crash after a stable run
/// (`CrashHistory`), so killing the same process 30 times in a row would measure the
/// back-off. Each kill therefore gets a fresh agent (crash history is per agent run):
/// even rounds kill a process the agent started itself (child: exit seen by SIGCHLD /
/// waitpid), odd rounds one it adopted (exit seen by pidfd). Baseline rounds
/// (redis-server exec → PONG) are interleaved so that both see the same conditions.
fn bench_kill(s: &Settings) -> KillResult {
    let mut run = AgentRun::new();
    let base_port = free_port();
    let mut direct = Direct::new();
    let mut result = KillResult {
        baseline: Vec::new(),
        child: Vec::new(),
        adopted: Vec::new(),
        detect: Vec::new(),
        respawn: Vec::new(),
        started_to_pong: Vec::new(),
        kill_to_exec: Vec::new(),
        spawn_to_starting: Vec::new(),
        few_instances_memory: BTreeMap::new(),
    };
    // (agent start number, instance, wall clock at the kill, instant of the kill,
    // instant of PONG, new pid)
    let mut kills: Vec<(u32, String, f64, Instant, Instant, u32)> = Vec::new();
    for round in 0..s.kills {
        // Baseline: exec → PONG of redis-server itself.
        let (t0, wall) = (Instant::now(), wall_seconds_of_day());
        let pid = direct.spawn_with_args(base_port);
        let (pong_at, answered) = wait_pong_from_new_pid(base_port, None, Duration::from_secs(10));
        assert_eq!(answered, pid, "baseline: PONG from another process");
        result.baseline.push(ms(pong_at - t0));
        direct.kill_all();
        let log = direct.dir.path().join("args").join("redis.log");
        if let Some(starting) = redis_log_times(&[log], wall, Some(pid)).0.first() {
            result.spawn_to_starting.push(*starting);
        }

        // Every kill must be an instance's first crash: the agent restarts at once
        // only then (later crashes within 60 s wait for the back-off, and the crash
        // count survives agent restarts). So each round declares two new instances:
        // one is killed while this agent's own child, the other after the next agent
        // adopted it.
        let (child, adopted) = (format!("c{round}"), format!("a{round}"));
        let (child_port, adopted_port) = (free_port(), free_port());
        run.h.manifest(&child, child_port, "");
        run.h.manifest(&adopted, adopted_port, "");
        for (name, port, is_adopted) in [(&child, child_port, false), (&adopted, adopted_port, true)] {
            // A fresh agent: it starts the new instances, or adopts them.
            if run.h.agent.is_some() {
                run.h.stop_agent(SIGTERM);
            }
            run.spawn(&s.agent_log);
            run.wait_api();
            run.h
                .wait_for("the round's instances ready", Duration::from_secs(20), |h| {
                    [&child, &adopted].iter().all(|n| {
                        let i = h.instance(n);
                        i["ready"] == true && i["phase"] == "running"
                    })
                });
            let pid = run.h.instance(name)["pid"].as_u64().unwrap() as u32;
            assert_eq!(pid_on(port), Some(pid), "the agent's pid does not answer on {port}");
            let log = run.log_section(run.starts);
            let was_adopted = log
                .iter()
                .any(|(_, l)| l.contains("Instance adopted.") && l.contains(&format!("instance=\"{name}\"")));
            assert_eq!(
                was_adopted, is_adopted,
                "{name}: adopted {was_adopted}, expected {is_adopted}"
            );
            if round == 0 && is_adopted {
                result.few_instances_memory = memory(run.agent_pid());
            }
            // Let the agent go idle.
            std::thread::sleep(Duration::from_millis(50));

            let wall = wall_seconds_of_day();
            let t0 = Instant::now();
            assert!(raw_kill(pid, libc::SIGKILL), "kill {pid}");
            let (pong_at, new_pid) = wait_pong_from_new_pid(port, Some(pid), Duration::from_secs(10));
            assert_ne!(new_pid, pid);
            let took = ms(pong_at - t0);
            if is_adopted {
                result.adopted.push(took);
            } else {
                result.child.push(took);
            }
            kills.push((run.starts, name.clone(), wall, t0, pong_at, new_pid));
            // The agent sees the new process ready too before the next kill.
            run.h
                .wait_for("the instance ready again", Duration::from_secs(10), |h| {
                    let i = h.instance(name);
                    i["ready"] == true && i["pid"].as_u64() == Some(new_pid as u64)
                });
        }
    }
    run.h.stop_agent(SIGTERM);

    for (start, name, wall, t0, pong_at, new_pid) in kills {
        let instance_log = run.h.instance_log(&name);
        let (starting, _) = redis_log_times(std::slice::from_ref(&instance_log), wall, Some(new_pid));
        if let Some(exec) = starting.first() {
            result.kill_to_exec.push(*exec);
        }
        let tag = format!("instance=\"{name}\"");
        let lines: Vec<(f64, String)> = run
            .log_section(start)
            .into_iter()
            .filter(|(_, l)| l.contains(&tag))
            .collect();
        let exited = log_offsets(&lines, "Instance exited.", wall).0;
        let restarted = lines
            .iter()
            .filter(|(_, l)| l.contains("Instance started.") && l.contains("after_crash=true"))
            .map(|(t, _)| (t - wall).rem_euclid(86400.0) * 1000.0)
            .next();
        if let (Some(e), Some(r)) = (exited, restarted) {
            result.detect.push(e);
            result.respawn.push(r - e);
            result.started_to_pong.push(ms(pong_at - t0) - r);
        }
    }
    result
}

// ---------------------------------------------------------------------------------
// 2. 100 instances from an empty data dir

struct StartRun {
    all_pong: f64,
    api_up: Option<f64>,
    readyz: Option<f64>,
    /// From the agent's log (ms after spawn): API listening, first and last
    /// "Instance started.", last "Instance ready.".
    log_api: Option<f64>,
    log_first_started: Option<f64>,
    log_last_started: Option<f64>,
    log_last_ready: Option<f64>,
    /// Direct only: how long the spawn loop took.
    spawn_loop: Option<f64>,
    busy_before: f64,
    /// From the redis-server logs: "Redis is starting" and "Ready to accept
    /// connections", first…last, ms after the start.
    redis_starting: String,
    redis_ready: String,
    /// Agent only: its CPU time (user, system) when all were ready, ms.
    agent_cpu: Option<(f64, f64)>,
}

fn start_direct(ports: &[u16]) -> (StartRun, Direct) {
    let busy_before = background_busy(Duration::from_millis(500));
    sync_disks();
    let mut direct = Direct::new();
    let (t0, wall) = (Instant::now(), wall_seconds_of_day());
    for (i, port) in ports.iter().enumerate() {
        direct.spawn_with_config(&format!("i{i:03}"), *port);
    }
    let spawned = Instant::now();
    let seen = wait_all(ports, None, Duration::from_secs(60));
    let logs: Vec<PathBuf> = (0..ports.len())
        .map(|i| direct.dir.path().join(format!("i{i:03}")).join("redis.log"))
        .collect();
    let (starting, ready) = redis_log_times(&logs, wall, None);
    let run = StartRun {
        all_pong: ms(seen.all_pong - t0),
        api_up: None,
        readyz: None,
        log_api: None,
        log_first_started: None,
        log_last_started: None,
        log_last_ready: None,
        spawn_loop: Some(ms(spawned - t0)),
        busy_before,
        redis_starting: first_last(&starting),
        redis_ready: first_last(&ready),
        agent_cpu: None,
    };
    (run, direct)
}

fn start_agent(s: &Settings, ports: &[u16]) -> (StartRun, AgentRun) {
    let mut run = AgentRun::new();
    for (i, port) in ports.iter().enumerate() {
        run.h.manifest(&format!("i{i:03}"), *port, "");
    }
    let busy_before = background_busy(Duration::from_millis(500));
    sync_disks();
    let (t0, wall) = run.spawn(&s.agent_log);
    let seen = wait_all(ports, Some(run.h.api_port), Duration::from_secs(60));
    let agent_cpu = cpu_ms(run.agent_pid());
    let logs: Vec<PathBuf> = (0..ports.len())
        .map(|i| run.h.instance_log(&format!("i{i:03}")))
        .collect();
    let (starting, ready) = redis_log_times(&logs, wall, None);
    let lines = run.log_section(run.starts);
    let (first_started, last_started, n_started) = log_offsets(&lines, "Instance started.", wall);
    let (_, last_ready, n_ready) = log_offsets(&lines, "Instance ready.", wall);
    assert_eq!(n_started, ports.len(), "every instance started once");
    assert_eq!(n_ready, ports.len(), "every instance ready once");
    let result = StartRun {
        all_pong: ms(seen.all_pong - t0),
        api_up: seen.api_up.map(|t| ms(t - t0)),
        readyz: seen.readyz.map(|t| ms(t - t0)),
        log_api: log_offsets(&lines, "API listening.", wall).0,
        log_first_started: first_started,
        log_last_started: last_started,
        log_last_ready: last_ready,
        spawn_loop: None,
        busy_before,
        redis_starting: first_last(&starting),
        redis_ready: first_last(&ready),
        agent_cpu: Some(agent_cpu),
    };
    (result, run)
}

// ---------------------------------------------------------------------------------
// 3. agent restart with 100 running instances

struct RestartRun {
    stop: f64,
    api_up: f64,
    readyz: f64,
    log_api: Option<f64>,
    log_last_adopted: Option<f64>,
    log_last_ready: Option<f64>,
    adopted: usize,
    started: usize,
    agent_cpu: (f64, f64),
}

/// (pid, restarts) of every instance, from /v1/status.
fn instance_pids(run: &AgentRun) -> BTreeMap<String, (u64, u64)> {
    run.h.status()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                (i["pid"].as_u64().unwrap_or(0), i["restarts"].as_u64().unwrap_or(0)),
            )
        })
        .collect()
}

fn start_ticks(pid: u64) -> Option<u64> {
    ker_agent::procfs::read_stat(pid as u32)
        .ok()
        .flatten()
        .map(|s| s.start_ticks)
}

fn restart_agent(s: &Settings, run: &mut AgentRun, n: usize) -> RestartRun {
    let before = instance_pids(run);
    assert_eq!(before.len(), n);
    assert!(before.values().all(|(pid, _)| *pid > 0), "an instance has no pid");
    let stop = ms(run.h.stop_agent(SIGTERM));
    let ticks: BTreeMap<u64, Option<u64>> = before.values().map(|(pid, _)| (*pid, start_ticks(*pid))).collect();
    assert!(ticks.values().all(Option::is_some), "an instance died with the agent");
    std::thread::sleep(Duration::from_millis(200));
    let _ = background_busy(Duration::from_millis(300));

    let (t0, wall) = run.spawn(&s.agent_log);
    let (api_up, ready) = wait_readyz(run.h.api_port, Duration::from_secs(30));
    let agent_cpu = cpu_ms(run.agent_pid());
    let after = instance_pids(run);
    assert_eq!(
        before, after,
        "pids or restart counters changed across the agent restart"
    );
    for (pid, t) in &ticks {
        assert_eq!(start_ticks(*pid), *t, "pid {pid} is another process now");
    }
    let lines = run.log_section(run.starts);
    let (_, last_adopted, adopted) = log_offsets(&lines, "Instance adopted.", wall);
    let (_, _, started) = log_offsets(&lines, "Instance started.", wall);
    RestartRun {
        stop,
        api_up: ms(api_up - t0),
        readyz: ms(ready - t0),
        log_api: log_offsets(&lines, "API listening.", wall).0,
        log_last_adopted: last_adopted,
        log_last_ready: log_offsets(&lines, "Instance ready.", wall).1,
        adopted,
        started,
        agent_cpu,
    }
}

// ---------------------------------------------------------------------------------

fn main() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        cleanup_all();
    }));

    let s = Settings::from_env();
    let argv: Vec<String> = std::env::args().collect();
    println!("== ker-agent supervision benchmark ==");
    println!("command:      cargo bench --bench supervision");
    println!("bench argv:   {}", argv.join(" "));
    println!(
        "agent binary: {AGENT} ({})",
        if AGENT.contains("/release/") {
            "release profile"
        } else {
            "NOT a release build"
        }
    );
    println!(
        "redis-server: {} ({})",
        redis_server().display(),
        command_output(&redis_server().to_string_lossy(), &["--version"])
    );
    println!(
        "host:         {} cores, kernel {}, load {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        command_output("uname", &["-r"]),
        loadavg()
    );
    let head = command_output("git", &["rev-parse", "--short", "HEAD"]);
    println!(
        "source:       {} {}",
        if head.is_empty() { "(not a git checkout)" } else { &head },
        if head.is_empty() {
            ""
        } else if command_output("git", &["status", "--porcelain", "--", "src"]).is_empty() {
            "(src clean)"
        } else {
            "(src has uncommitted changes)"
        }
    );
    println!(
        "settings:     kills={} instances={} start_reps={} restart_reps={} steady={}s agent_log={}",
        s.kills,
        s.instances,
        s.start_reps,
        s.restart_reps,
        s.steady.as_secs(),
        s.agent_log
    );
    println!(
        "noise:        {} redis-server processes not started by this benchmark; machine {:.0}% busy (1 s)",
        foreign_redis_servers(),
        background_busy(Duration::from_secs(1))
    );
    assert!(
        cfg!(not(debug_assertions)) || std::env::var_os("BENCH_ALLOW_DEBUG").is_some(),
        "run with `cargo bench` (release profile)"
    );
    println!();

    let mut table: Vec<(String, String, String)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // 1.
    if s.runs("kill") {
        eprintln!("[1/4] kill -9 → PONG, {} rounds each …", s.kills);
        let k = bench_kill(&s);
        let b = stats(&k.baseline);
        let all: Vec<f64> = k.child.iter().chain(&k.adopted).copied().collect();
        let a = stats(&all);
        let c = stats(&k.child);
        let d = stats(&k.adopted);
        let row = |st: &Stats| {
            format!(
                "median {:.1}, p90 {:.1}, max {:.1} ms (n={})",
                st.median, st.p90, st.max, st.n
            )
        };
        table.push(("1  redis-server exec → PONG (baseline)".into(), row(&b), String::new()));
        table.push((
            "1  agent: kill -9 → PONG, new pid (all)".into(),
            row(&a),
            format!("median ≤ 25 ms: {}", verdict(a.median <= 25.0)),
        ));
        table.push(("     … process started by this agent".into(), row(&c), String::new()));
        table.push(("     … process adopted by this agent".into(), row(&d), String::new()));
        if !k.detect.is_empty() {
            notes.push(format!(
                "1: from the agent log (median ms): kill → \"Instance exited.\" {:.1}; → \"Instance started.\" +{:.1}; → PONG +{:.1} (baseline exec → PONG {:.1}; min {:.1})",
                median(&k.detect),
                median(&k.respawn),
                median(&k.started_to_pong),
                b.median,
                b.min,
            ));
        }
        if !k.kill_to_exec.is_empty() {
            notes.push(format!(
                "1: from the redis-server logs (ms resolution, median): kill → \"Redis is starting\" {:.0} ms; baseline spawn → \"Redis is starting\" {:.0} ms; so kill → exec ≈ {:.0} ms",
                median(&k.kill_to_exec),
                median(&k.spawn_to_starting),
                median(&k.kill_to_exec) - median(&k.spawn_to_starting)
            ));
        }
        notes.push(format!(
            "1: agent with 2 instances: {}",
            fmt_memory(&k.few_instances_memory)
        ));
    }

    // 2.
    let n = s.instances;
    let mut live: Option<AgentRun> = None;
    // Directories of finished runs, deleted only at the end: ext4 makes inode
    // allocation slower for a few minutes after many deletions (it skips recently
    // deleted inodes), which would make every run slower than the one before.
    let mut graveyard: Vec<Box<dyn std::any::Any>> = Vec::new();
    if s.runs("start") || s.runs("restart") {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut direct_runs = Vec::new();
        let mut agent_runs = Vec::new();
        let reps = if s.runs("start") { s.start_reps } else { 0 };
        for rep in 0..reps {
            let order = if rep % 2 == 0 {
                ["direct", "agent"]
            } else {
                ["agent", "direct"]
            };
            for which in order {
                eprintln!("[2/4] {n} instances from scratch, rep {}/{reps}: {which} …", rep + 1);
                if let Some(mut old) = live.take() {
                    old.kill_processes(); // frees the ports
                    graveyard.push(Box::new(old));
                }
                if which == "direct" {
                    let (r, mut d) = start_direct(&ports);
                    d.kill_all();
                    graveyard.push(Box::new(d));
                    direct_runs.push(r);
                } else {
                    let (r, a) = start_agent(&s, &ports);
                    agent_runs.push(r);
                    live = Some(a);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        if !direct_runs.is_empty() {
            let dm = median(&direct_runs.iter().map(|r| r.all_pong).collect::<Vec<_>>());
            let am = median(&agent_runs.iter().map(|r| r.all_pong).collect::<Vec<_>>());
            let rm = median(&agent_runs.iter().filter_map(|r| r.readyz).collect::<Vec<_>>());
            let list = |v: Vec<f64>| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
            table.push((
                format!("2  {n} × redis-server directly → all PONG"),
                format!(
                    "median {dm:.0} ms ({})",
                    list(direct_runs.iter().map(|r| r.all_pong).collect())
                ),
                String::new(),
            ));
            table.push((
                format!("2  agent, empty data dir → all {n} PONG"),
                format!(
                    "median {am:.0} ms ({})",
                    list(agent_runs.iter().map(|r| r.all_pong).collect())
                ),
                String::new(),
            ));
            table.push((
                "2  agent → /readyz 200".into(),
                format!(
                    "median {rm:.0} ms ({})",
                    list(agent_runs.iter().filter_map(|r| r.readyz).collect())
                ),
                String::new(),
            ));
            table.push((
                "2  ratio agent / direct (all PONG; readyz)".into(),
                format!("{:.2}; {:.2}", am / dm, rm / dm),
                format!("ratio ≤ 1.2: {}", verdict(am / dm <= 1.2)),
            ));
            for (i, r) in direct_runs.iter().enumerate() {
                notes.push(format!(
                    "2: direct run {}: spawn loop {:.0} ms, redis logs: starting {}, ready {}; all PONG {:.0} ms (machine {:.0}% busy before)",
                    i + 1,
                    r.spawn_loop.unwrap_or(0.0),
                    r.redis_starting,
                    r.redis_ready,
                    r.all_pong,
                    r.busy_before
                ));
            }
            for (i, r) in agent_runs.iter().enumerate() {
                notes.push(format!(
                    "2: agent run {}: API listening {} ms (answers {}), \"Instance started.\" {}…{}, last \"Instance ready.\" {}, redis logs: starting {}, ready {}; all PONG {:.0}, readyz {} ms; agent CPU {:.0} ms user + {:.0} ms sys (machine {:.0}% busy before)",
                    i + 1,
                    fmt_opt(r.log_api),
                    fmt_opt(r.api_up),
                    fmt_opt(r.log_first_started),
                    fmt_opt(r.log_last_started),
                    fmt_opt(r.log_last_ready),
                    r.redis_starting,
                    r.redis_ready,
                    r.all_pong,
                    fmt_opt(r.readyz),
                    r.agent_cpu.map_or(0.0, |c| c.0),
                    r.agent_cpu.map_or(0.0, |c| c.1),
                    r.busy_before
                ));
            }
        }

        if live.is_none() && s.runs("restart") {
            eprintln!("[2/4] {n} instances for the restart measurement …");
            live = Some(start_agent(&s, &ports).1);
        }
    }

    // 4. (with the agent of the last start run, before the restarts)
    if let Some(run) = live.as_mut() {
        let pid = run.agent_pid();
        let at_ready = memory(pid);
        eprintln!("[4/4] RSS: {}s of steady state …", s.steady.as_secs());
        std::thread::sleep(s.steady);
        let steady = memory(pid);
        let rss = steady.get("VmRSS").copied().unwrap_or(0) as f64 / 1024.0;
        let hwm = steady.get("VmHWM").copied().unwrap_or(0) as f64 / 1024.0;
        table.push((
            format!("4  agent RSS, {n} instances, at ready"),
            fmt_memory(&at_ready),
            String::new(),
        ));
        // The targets: 15 MB at 100 instances, 25 MB at 500, 40 MB at 1,000.
        let target = match n {
            0..=100 => 15.0,
            101..=500 => 25.0,
            _ => 40.0,
        };
        table.push((
            format!("4  agent RSS, {n} instances, +{}s steady", s.steady.as_secs()),
            fmt_memory(&steady),
            format!(
                "VmRSS ≤ {target} MB: {}; VmHWM ≤ {target} MB: {}",
                verdict(rss <= target),
                verdict(hwm <= target)
            ),
        ));
    }

    // 3.
    if let (true, Some(run)) = (s.runs("restart"), live.as_mut()) {
        let mut runs = Vec::new();
        for rep in 0..s.restart_reps {
            eprintln!(
                "[3/4] agent restart with {n} instances, rep {}/{} …",
                rep + 1,
                s.restart_reps
            );
            runs.push(restart_agent(&s, run, n));
        }
        if !runs.is_empty() {
            let st = stats(&runs.iter().map(|r| r.readyz).collect::<Vec<_>>());
            let all_ok = runs.iter().all(|r| r.adopted == n && r.started == 0);
            table.push((
                format!("3  agent restart, {n} running → /readyz 200"),
                format!(
                    "median {:.0}, max {:.0} ms (n={}); adopted {}/{n}, restarted 0: {}",
                    st.median,
                    st.max,
                    st.n,
                    runs.iter().map(|r| r.adopted).min().unwrap_or(0),
                    if all_ok { "yes" } else { "NO" }
                ),
                format!(
                    "≤ 300 ms: median {}, max {}",
                    verdict(st.median <= 300.0),
                    verdict(st.max <= 300.0)
                ),
            ));
            for (i, r) in runs.iter().enumerate() {
                notes.push(format!(
                    "3: restart {}: SIGTERM → exit {:.0} ms; spawn → API listening {} (answers {:.1}), last adopted {}, last ready (log) {}, readyz 200 {:.1} ms; adopted {}, started {}; agent CPU {:.0} ms user + {:.0} ms sys",
                    i + 1,
                    r.stop,
                    fmt_opt(r.log_api),
                    r.api_up,
                    fmt_opt(r.log_last_adopted),
                    fmt_opt(r.log_last_ready),
                    r.readyz,
                    r.adopted,
                    r.started,
                    r.agent_cpu.0,
                    r.agent_cpu.1
                ));
            }
            let pid = run.agent_pid();
            std::thread::sleep(s.steady);
            table.push((
                format!("4  adopting agent RSS, {n} instances, +{}s", s.steady.as_secs()),
                fmt_memory(&memory(pid)),
                String::new(),
            ));
        }
    }
    drop(live);
    drop(graveyard);

    println!("{:<46} | {:<72} | target", "measurement", "result");
    println!("{}", "-".repeat(46 + 3 + 72 + 3 + 30));
    for (what, result, target) in &table {
        println!("{what:<46} | {result:<72} | {target}");
    }
    println!();
    for note in &notes {
        println!("{note}");
    }
    cleanup_all();
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

//! Several "hosts" on one machine, each a Linux network namespace with its own IPv4
//! address, all plugged into one bridge, so that multi-host scenarios (a control
//! centre on one host, agents on others, a Redis master on host A replicating to a
//! replica on host B) run over real TCP between distinct addresses.
//!
//! Layout of a [`Network`] with id `kerat-<pid>-<n>`:
//!
//! ```text
//!  netns kerat-<pid>-<n>-sw   bridge br0, ports h0, h1, ... (no address)
//!  netns kerat-<pid>-<n>-h<i> eth0 = 10.<a>.<b>.<i+2>/24 (veth peer of h<i>), lo up
//! ```
//!
//! The root namespace's networking is not touched unless a test asks for it with
//! [`Network::attach_test_process`] (which gives the test process `.1` on the bridge,
//! for a server inside the test); otherwise it has no address in, and no route to, the
//! hosts' subnet; run clients inside a host with [`Network::command`] (or
//! [`Network::can_connect`]).
//! Every host has its own port space, so fixed ports (6379, ...) never collide with
//! other tests. A process in host `i` may bind to [`Network::host_ip`]`(i)`, 0.0.0.0
//! or 127.0.0.1 (the latter reachable only from inside host `i`); a redis-server
//! bound to a host address without a password needs `--protected-mode no`.
//!
//! Needs root (CI runs as root) and iproute2's `ip`. Dropping a [`Network`] (also
//! while panicking) SIGKILLs every process left in its namespaces and deletes them;
//! namespaces left by crashed earlier runs are removed by the first [`Network::new`]
//! of a process (see [`remove_leftovers`]).

use super::alive;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// Prefix of every namespace this module creates: `kerat-<pid>-<n>-{sw,h<i>}`.
pub const PREFIX: &str = "kerat-";

/// Hosts get .2 ..= .254 of their /24.
pub const MAX_HOSTS: usize = 253;

/// Prefix length of every Network's subnet.
pub const PREFIX_LEN: u8 = 24;

/// Name of each host's interface (inside the host's namespace).
pub const HOST_IFACE: &str = "eth0";

/// Where iproute2 names network namespaces.
const NETNS_DIR: &str = "/var/run/netns";

/// How long cleanup waits for killed processes to leave a namespace.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A set of hosts (network namespaces) on one bridge; torn down on drop.
pub struct Network {
    id: String,
    subnet: [u8; 3],
    switch: String,
    hosts: Vec<String>,
    /// Namespaces created so far, in creation order: what Drop removes.
    created: Vec<String>,
    /// The test process's side of the link made by `attach_test_process`.
    attached: Option<String>,
}

impl Network {
    /// Creates `hosts` (1 ..= 253) fresh hosts named `kerat-<pid>-<n>-h<i>` on a
    /// bridge in namespace `kerat-<pid>-<n>-sw`, host `i` at `10.<a>.<b>.<i+2>/24`.
    /// Panics with the failing `ip` command and its stderr if anything goes wrong
    /// (after removing what it had created).
    pub fn new(hosts: usize) -> Network {
        assert!(
            (1..=MAX_HOSTS).contains(&hosts),
            "Network::new({hosts}): between 1 and {MAX_HOSTS} hosts"
        );
        prepare();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let id = format!("{PREFIX}{pid}-{n}");
        // A /24 per Network: distinct within a process (up to 64 at a time) and, in
        // practice, between processes. Not needed for isolation (each Network is its
        // own layer-2 segment with no route out), only to keep addresses unambiguous
        // in logs.
        let index = (pid % 1024) * 64 + n % 64;
        let subnet = [10, (index >> 8) as u8, (index & 0xff) as u8];
        let mut net = Network {
            switch: format!("{id}-sw"),
            hosts: (0..hosts).map(|i| format!("{id}-h{i}")).collect(),
            id,
            subnet,
            created: Vec::new(),
            attached: None,
        };
        // From here on a panic drops `net`, which removes what was created.
        let switch = net.switch.clone();
        net.add_namespace(&switch);
        run_ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        run_ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for i in 0..hosts {
            let host = net.hosts[i].clone();
            let port = format!("h{i}");
            let addr = format!("{}/{PREFIX_LEN}", net.host_ip(i));
            net.add_namespace(&host);
            // The veth pair is created in the switch namespace with its peer moved
            // straight into the host: nothing ever appears in the root namespace.
            run_ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", HOST_IFACE, "netns", &host,
            ]);
            run_ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            run_ip(&["-n", &host, "addr", "add", &addr, "dev", HOST_IFACE]);
            run_ip(&["-n", &host, "link", "set", HOST_IFACE, "up"]);
        }
        net
    }

    fn add_namespace(&mut self, name: &str) {
        // Serialised within the process: the first `ip netns add` on a machine sets up
        // the /run/netns mount, which is racy between concurrent first calls.
        static CREATE: Mutex<()> = Mutex::new(());
        {
            let _guard = CREATE.lock().unwrap_or_else(|e| e.into_inner());
            run_ip(&["netns", "add", name]);
        }
        self.created.push(name.to_string());
        run_ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// Plugs the test process's own namespace into the bridge at `10.<a>.<b>.1`, so
    /// that a server running inside the test (a test controller) is one more host on
    /// the network. The veth pair goes away with the switch namespace on drop.
    pub fn attach_test_process(&mut self) -> Ipv4Addr {
        let switch = self.switch.clone();
        let ip = Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 1);
        // Unique in the root namespace, at most 15 characters.
        let n = self.id.rsplit('-').next().unwrap_or("0");
        let outer = format!("kr{}x{n}", std::process::id() % 100_000);
        let me = std::process::id().to_string();
        run_ip(&[
            "-n", &switch, "link", "add", "up0", "type", "veth", "peer", "name", &outer, "netns", &me,
        ]);
        self.attached = Some(outer.clone());
        run_ip(&["-n", &switch, "link", "set", "up0", "master", "br0", "up"]);
        run_ip(&["addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", &outer]);
        run_ip(&["link", "set", &outer, "up"]);
        ip
    }

    /// `kerat-<pid>-<n>`: the common prefix of this Network's namespaces.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Name of host `i`'s network namespace (`kerat-<pid>-<n>-h<i>`).
    pub fn name(&self, i: usize) -> &str {
        self.check(i);
        &self.hosts[i]
    }

    /// Name of the namespace holding the bridge (`kerat-<pid>-<n>-sw`).
    pub fn switch_name(&self) -> &str {
        &self.switch
    }

    /// All namespaces of this Network: the switch, then the hosts.
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.switch.clone())
            .chain(self.hosts.iter().cloned())
            .collect()
    }

    /// Host `i`'s address: `10.<a>.<b>.<i+2>`.
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        self.check(i);
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, (i + 2) as u8)
    }

    /// The network address of this Network's /24, `10.<a>.<b>.0`.
    pub fn subnet(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 0)
    }

    /// `ip netns exec <name(i)> <program>`: add args, env, stdio, current_dir and
    /// spawn. `ip` execs the program in place, so `Child::id()` is the program's pid
    /// and killing the Child kills the program. (If the program does not exist, the
    /// spawn succeeds and `ip` exits with status 255 and a message on stderr.)
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(ip());
        cmd.args(["netns", "exec", self.name(i)]).arg(program);
        cmd
    }

    /// Whether a TCP connection from inside host `from` to `addr` succeeds within
    /// 2 s (uses bash's /dev/tcp and coreutils' timeout, both on every Debian).
    pub fn can_connect(&self, from: usize, addr: SocketAddrV4) -> bool {
        let status = self
            .command(from, "timeout")
            .args(["2", "bash", "-c", "exec 3<>\"/dev/tcp/$0/$1\""])
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("run `ip netns exec {} timeout ...`: {e}", self.name(from)));
        status.success()
    }

    /// Waits until [`Network::can_connect`]`(from, addr)`, or panics after `timeout`.
    pub fn wait_connectable(&self, from: usize, addr: SocketAddrV4, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.can_connect(from, addr) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {addr} to accept connections from host {from} ({})",
                self.name(from)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the processes currently in host `i`'s namespace.
    pub fn pids(&self, i: usize) -> Vec<u32> {
        netns_pids(self.name(i)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn check(&self, i: usize) {
        assert!(
            i < self.hosts.len(),
            "host {i} out of range: {} has {} hosts",
            self.id,
            self.hosts.len()
        );
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // The test process's side of its link, if attached (namespace teardown is
        // asynchronous, so the link would linger for a while).
        if let Some(outer) = self.attached.take() {
            if let Err(e) = ip_output(&["link", "del", &outer]) {
                eprintln!("netns harness: removing {outer}: {e}");
            }
        }
        // Hosts first, then the switch: the reverse of creation order.
        let names: Vec<String> = self.created.iter().rev().cloned().collect();
        if let Err(e) = destroy(&names) {
            // Never panic here: this also runs while a failing test unwinds.
            eprintln!("netns harness: cleanup of {} incomplete: {e}", self.id);
        }
    }
}

/// Checks for `ip` and, once per process, removes the namespaces of crashed earlier
/// runs, including ones named after this very pid (a reused pid: this process has
/// created none yet). Called by [`Network::new`].
pub fn prepare() {
    // Outside the Once, so that a missing `ip` fails every test with the same message
    // (a panic inside call_once would poison it).
    ip();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let me = std::process::id();
        if let Err(e) = remove_namespaces_of(|pid| pid == me || !alive(pid)) {
            eprintln!("netns harness: removing leftovers: {e}");
        }
    });
}

/// Removes the namespaces named `kerat-<pid>-...` whose `pid` is no longer alive
/// (left by a crashed or killed test process): kills the processes in them, then
/// deletes them. Returns the names removed.
pub fn remove_leftovers() -> Vec<String> {
    remove_namespaces_of(|pid| !alive(pid)).unwrap_or_else(|e| panic!("removing leftover namespaces: {e}"))
}

fn remove_namespaces_of(stale: impl Fn(u32) -> bool) -> Result<Vec<String>, String> {
    let names: Vec<String> = list_namespaces()?
        .into_iter()
        .filter(|name| creator_pid(name).is_some_and(&stale))
        .collect();
    if !names.is_empty() {
        eprintln!("netns harness: removing leftover namespaces {names:?}");
        destroy(&names)?;
    }
    Ok(names)
}

/// The pid in `kerat-<pid>-<n>-...`.
fn creator_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Names from `ip netns list` (lines are `name` or `name (id: N)`).
pub fn list_namespaces() -> Result<Vec<String>, String> {
    Ok(ip_output(&["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// `ip netns pids <name>`.
fn netns_pids(name: &str) -> Result<Vec<u32>, String> {
    let out = ip_output(&["netns", "pids", name])?;
    Ok(out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
}

/// SIGKILLs every process in `names` until none is left (processes may fork while
/// being killed), then deletes the namespaces. Deleting a namespace with processes in
/// it would only unname it and leave them running, so the killing comes first. Goes
/// on after errors and reports them all.
fn destroy(names: &[String]) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut gone: Vec<&String> = Vec::new();
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let mut pids = Vec::new();
        for name in names {
            if gone.contains(&name) {
                continue;
            }
            match netns_pids(name) {
                Ok(p) => pids.extend(p),
                // Already deleted (e.g. by a concurrent leftover clean-up).
                Err(_) if !Path::new(NETNS_DIR).join(name).exists() => gone.push(name),
                Err(e) => {
                    errors.push(e);
                    gone.push(name);
                }
            }
        }
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            errors.push(format!("processes {pids:?} still alive {KILL_TIMEOUT:?} after SIGKILL"));
            break;
        }
        kill(&pids);
        std::thread::sleep(Duration::from_millis(5));
    }
    for name in names {
        if let Err(e) = ip_output(&["netns", "delete", name]) {
            if Path::new(NETNS_DIR).join(name).exists() {
                errors.push(e);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn kill(pids: &[u32]) {
    // kill(1) rather than kill(2), so that the tests need no unsafe code.
    let result = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = result {
        eprintln!("netns harness: run `kill -KILL {pids:?}`: {e}");
    }
}

/// iproute2's `ip`: from PATH, else the usual sbin locations (root's PATH may lack
/// them). Panics, saying how to install it, if there is none.
pub fn ip() -> &'static Path {
    static IP: OnceLock<PathBuf> = OnceLock::new();
    IP.get_or_init(|| {
        let from_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join("ip")).collect::<Vec<_>>())
            .unwrap_or_default();
        from_path
            .into_iter()
            .chain(["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].map(PathBuf::from))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "iproute2's `ip` not found (in PATH, /usr/sbin, /sbin, /usr/bin, /bin): the multi-host tests \
                     need it; install it with `apt-get install -y iproute2`"
                )
            })
    })
}

/// Runs `ip <args>`; its stdout, or an error naming the command, its status and stderr.
fn ip_output(args: &[&str]) -> Result<String, String> {
    let shown = format!("{} {}", ip().display(), args.join(" "));
    let out = Command::new(ip())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{shown}` could not run: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hint = if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
        " (network namespaces need root: CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    } else {
        ""
    };
    Err(format!(
        "`{shown}` failed ({}): {}{hint}",
        out.status,
        stderr.trim_end()
    ))
}

/// Like [`ip_output`], panicking on failure.
fn run_ip(args: &[&str]) {
    if let Err(e) = ip_output(args) {
        panic!("netns harness: {e}");
    }
}

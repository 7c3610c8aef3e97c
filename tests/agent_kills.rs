//! The agent SIGKILLed at random moments while a stream of changes (create, stop,
//! start, a live key, a restart key, a port, remove) goes through it, and restarted
//! each time. Every few kills, and at the end, the suite waits for the declared state
//! and checks it: every declared instance converged, exactly one server per declared
//! port and nothing running that is not declared, no conflict, no data lost, no data
//! directory lost; then it kills the agent once more with nothing in flight and checks
//! that the next one adopts every server without a restart.
//!
//! A fixed seed reproduces a run. `cargo test` runs a short one; the full one is
//! `KILLS_INSTANCES=50 KILLS=100 cargo test --release --test agent_kills -- --nocapture`
//! (`KILLS_SEED` picks another stream). Against real `redis-server` processes.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// splitmix64: a tiny, good-enough generator whose stream a seed fixes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }
}

/// What one instance is declared as.
#[derive(Debug, Clone, PartialEq)]
struct Declared {
    port: u16,
    running: bool,
    hz: u32,
    databases: u32,
}

/// The declared state, and everything ever declared.
struct Model {
    declared: BTreeMap<String, Declared>,
    ever: BTreeSet<String>,
    /// The value of the key `marker` written into an instance; it must survive.
    markers: BTreeMap<String, String>,
    pool: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Create,
    Stop,
    Start,
    LiveKey,
    RestartKey,
    Port,
    Remove,
}

const CHANGES: [Change; 7] = [
    Change::Create,
    Change::Stop,
    Change::Start,
    Change::LiveKey,
    Change::RestartKey,
    Change::Port,
    Change::Remove,
];

impl Model {
    /// Declares `name` running on a new port with the defaults.
    fn declare(&mut self, name: &str) {
        let fresh = Declared {
            port: free_port(),
            running: true,
            hz: 10,
            databases: 16,
        };
        self.declared.insert(name.to_string(), fresh);
        self.ever.insert(name.to_string());
    }

    fn write(&self, h: &Harness, name: &str) {
        let d = &self.declared[name];
        let state = if d.running { "running" } else { "stopped" };
        h.manifest(
            name,
            d.port,
            &format!(
                "state = \"{state}\"\n[config]\nhz = \"{}\"\ndatabases = \"{}\"",
                d.hz, d.databases
            ),
        );
    }

    fn names(&self, running: Option<bool>) -> Vec<String> {
        self.declared
            .iter()
            .filter(|(_, d)| running.is_none_or(|r| d.running == r))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Applies one random change to the manifests; returns what it did.
    fn change(&mut self, h: &Harness, rng: &mut Rng, tally: &mut BTreeMap<&'static str, u32>) {
        let change = CHANGES[rng.below(CHANGES.len() as u64) as usize];
        let absent: Vec<String> = self
            .pool
            .iter()
            .filter(|n| !self.declared.contains_key(*n))
            .cloned()
            .collect();
        let (name, what) = match change {
            Change::Create => {
                let Some(name) = rng.pick(&absent).cloned() else { return };
                self.declare(&name);
                (name, "create")
            }
            Change::Remove => {
                let Some(name) = rng.pick(&self.names(None)).cloned() else {
                    return;
                };
                self.declared.remove(&name);
                h.remove_manifest(&name);
                *tally.entry("remove").or_default() += 1;
                return;
            }
            Change::Stop | Change::Start => {
                let Some(name) = rng.pick(&self.names(None)).cloned() else {
                    return;
                };
                let running = matches!(change, Change::Start);
                self.declared.get_mut(&name).unwrap().running = running;
                (name, if running { "start" } else { "stop" })
            }
            Change::LiveKey => {
                let Some(name) = rng.pick(&self.names(None)).cloned() else {
                    return;
                };
                self.declared.get_mut(&name).unwrap().hz = 10 + rng.below(40) as u32;
                (name, "live key")
            }
            Change::RestartKey => {
                let Some(name) = rng.pick(&self.names(None)).cloned() else {
                    return;
                };
                self.declared.get_mut(&name).unwrap().databases = 16 + rng.below(16) as u32;
                (name, "restart key")
            }
            Change::Port => {
                let Some(name) = rng.pick(&self.names(None)).cloned() else {
                    return;
                };
                self.declared.get_mut(&name).unwrap().port = free_port();
                (name, "port")
            }
        };
        self.write(h, &name);
        *tally.entry(what).or_default() += 1;
    }
}

/// The servers running from the harness's instance directories, by instance name
/// (forked children of a server, such as a background save, left out).
fn servers(h: &Harness) -> BTreeMap<String, Vec<u32>> {
    let root = h.path().join("data/instances");
    let under: BTreeMap<u32, String> = processes()
        .into_iter()
        .filter_map(|(pid, _)| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            let rel = cwd.strip_prefix(&root).ok()?;
            let name = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
            alive(pid).then_some((pid, name))
        })
        .collect();
    let mut by_name: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (pid, name) in &under {
        let parent = parent_pid(*pid).unwrap_or_default();
        if !under.contains_key(&parent) {
            by_name.entry(name.clone()).or_default().push(*pid);
        }
    }
    by_name
}

/// The parent of `pid`: field 4 of `/proc/<pid>/stat`, after the command name.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Whether the agent and the servers show exactly the declared state.
fn converged(h: &Harness, model: &Model) -> Result<(), String> {
    let status = h.status();
    let listed = status["instances"].as_array().cloned().unwrap_or_default();
    let by_name: BTreeMap<String, serde_json::Value> = listed
        .into_iter()
        .map(|i| (i["name"].as_str().unwrap_or_default().to_string(), i))
        .collect();
    if let Some((name, _)) = by_name.iter().find(|(_, i)| i["phase"] == "conflict") {
        return Err(format!("{name} is in conflict: {}", by_name[name]));
    }
    let names: BTreeSet<&String> = model.declared.keys().collect();
    if by_name.keys().collect::<BTreeSet<_>>() != names {
        return Err(format!("the agent lists {:?}", by_name.keys().collect::<Vec<_>>()));
    }
    let running = servers(h);
    for (name, d) in &model.declared {
        let i = &by_name[name];
        let pids = running.get(name).cloned().unwrap_or_default();
        if d.running {
            if i["phase"] != "running" || i["ready"] != true || i["port"] != d.port {
                return Err(format!("{name} not yet running as declared: {i}"));
            }
            if pids.len() != 1 || i["pid"] != pids[0] || listener_pid(d.port) != Some(pids[0]) {
                return Err(format!("{name}: servers {pids:?}, status {i}"));
            }
            for (key, want) in [("hz", d.hz), ("databases", d.databases)] {
                let got = config_get(d.port, None, key);
                if got != want.to_string() {
                    return Err(format!("{name}: {key} is {got}, declared {want}"));
                }
            }
        } else if i["phase"] != "stopped" || !pids.is_empty() {
            return Err(format!("{name} not yet stopped: servers {pids:?}, status {i}"));
        }
    }
    if let Some((name, pids)) = running
        .iter()
        .find(|(n, _)| !model.declared.get(*n).is_some_and(|d| d.running))
    {
        return Err(format!("{name} runs ({pids:?}) but is not declared running"));
    }
    Ok(())
}

fn wait_converged(h: &Harness, model: &Model, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match converged(h, model) {
            Ok(()) => return,
            Err(e) if e.contains("conflict") => panic!("{what}: {e}\n{}", h.diagnostics()),
            Err(e) if Instant::now() > deadline => panic!("{what}: not converged in 120 s: {e}\n{}", h.diagnostics()),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The data written into every running instance is still there; instances without
/// a marker get one.
fn check_markers(model: &mut Model, round: usize) {
    for name in model.names(Some(true)) {
        let port = model.declared[&name].port;
        let mut conn = redis(port, None).unwrap();
        let got: Option<String> = redis::cmd("GET").arg("marker").query(&mut conn).unwrap();
        match model.markers.get(&name) {
            Some(want) => assert_eq!(got.as_ref(), Some(want), "{name}: the data written at {want} is lost"),
            None => {
                let value = format!("{name}@round{round}");
                redis::cmd("SET")
                    .arg("marker")
                    .arg(&value)
                    .query::<()>(&mut conn)
                    .unwrap();
                model.markers.insert(name, value);
            }
        }
    }
}

/// Quiet round: converge, check, then one more kill with nothing in flight, and the
/// next agent must adopt every server as it is.
fn quiet_round(h: &mut Harness, model: &mut Model, round: usize) {
    wait_converged(h, model, &format!("round {round}"));
    check_markers(model, round);
    for name in &model.ever {
        let dir = h.instance_dir(name);
        assert!(Path::new(&dir).is_dir(), "{name}: its data directory is gone");
    }
    let before = servers(h);
    h.stop_agent(SIGKILL);
    h.start_agent();
    wait_converged(h, model, &format!("round {round}, after a quiet kill"));
    assert_eq!(
        servers(h),
        before,
        "round {round}: the adopting agent restarted a server"
    );
    for name in model.names(Some(true)) {
        assert_eq!(
            count_events(h, &name, "started"),
            0,
            "round {round}: {name} was started by adoption: {:?}",
            events(h, &name)
        );
    }
}

#[test]
fn the_agent_killed_at_random_moments_loses_duplicates_and_leaks_nothing() {
    let instances = env_number("KILLS_INSTANCES", 12) as usize;
    let kills = env_number("KILLS", 16) as usize;
    let seed = env_number("KILLS_SEED", 20_261_129);
    let mut rng = Rng(seed);
    let mut h = Harness::new();
    let pool: Vec<String> = (0..instances + instances / 5).map(|i| format!("i{i:03}")).collect();
    let mut model = Model {
        declared: BTreeMap::new(),
        ever: BTreeSet::new(),
        markers: BTreeMap::new(),
        pool: pool.clone(),
    };
    for name in pool.iter().take(instances) {
        model.declare(name);
        model.write(&h, name);
    }
    let began = Instant::now();
    h.start_agent();
    quiet_round(&mut h, &mut model, 0);

    let mut tally: BTreeMap<&'static str, u32> = BTreeMap::new();
    let (mut quiet_rounds, mut killed) = (1, 1);
    for kill in 1..=kills {
        let changes = 1 + rng.below(3);
        for _ in 0..changes {
            model.change(&h, &mut rng, &mut tally);
        }
        // Mostly told at once (SIGHUP), sometimes left to the 2 s rescan; killed
        // anywhere from at once to well into the work.
        if rng.below(5) > 0 {
            h.signal_agent(SIGHUP);
        }
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        h.stop_agent(SIGKILL);
        killed += 1;
        h.start_agent();
        if kill % 10 == 0 || kill == kills {
            quiet_round(&mut h, &mut model, kill);
            quiet_rounds += 1;
            killed += 1;
        }
    }
    let changes: u32 = tally.values().sum();
    println!(
        "agent kills (seed {seed}): {killed} SIGKILLs of the agent ({kills} during changes, {quiet_rounds} quiet), \
         {changes} changes {tally:?}, {} instances declared at the end ({} running), {} ever, \
         {quiet_rounds} checks: 0 not converged, 0 duplicate or undeclared servers, 0 conflicts, \
         0 restarted by adoption, 0 data or data directories lost; {:.0} s",
        model.declared.len(),
        model.names(Some(true)).len(),
        model.ever.len(),
        began.elapsed().as_secs_f64()
    );
}

//! Everything that differs between server families sits behind the [`Engine`] trait:
//! which `[config]` keys are allowed, the ports an instance occupies, the config file
//! and command line, readiness, the graceful stop, and live reconfiguration (which
//! keys can change at runtime, `CONFIG SET`, the replication command, passwords).
//!
//! Architecture invariant: only `engine/` knows a Redis or Pika config key or command.
//! The supervisor drives every engine through this trait alone.

mod client;
mod commands;
pub mod info;
mod pika;
mod redis;
mod redis_defaults;
mod session;
mod snapshot;
mod stats;

pub use client::{ClientError, Connection, Target};
pub use info::{pika_stats, pika_stats_typed, redis_stats, redis_stats_typed};
pub use pika::PikaEngine;
pub use redis::RedisEngine;
pub use session::Session;
pub use snapshot::{BackupShape, Persistence, SnapshotStart};
pub use stats::{DbKeys, ObservedRole, ReplicaLink, ServerStats};

use crate::spec::{InstanceSpec, ReplicaOf, Secret};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// A boxed future, so that the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The family of an instance's binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Redis,
    Pika,
}

impl EngineKind {
    pub const ALL: [EngineKind; 2] = [EngineKind::Redis, EngineKind::Pika];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Redis => "redis",
            EngineKind::Pika => "pika",
        }
    }

    pub fn parse(text: &str) -> Option<EngineKind> {
        EngineKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an instance's files live; the agent owns all of these paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `data_dir/instances/<name>/`: config file and record.
    pub instance_dir: PathBuf,
    /// `instance_dir/data/`: the server's own data.
    pub data_dir: PathBuf,
    /// The rendered config file.
    pub config_file: PathBuf,
    /// `log_dir/<name>.log`.
    pub log_file: PathBuf,
    /// Addresses the instance listens on.
    pub bind: Vec<IpAddr>,
    /// The network interface that holds the first of `bind`'s IPv4 addresses (a
    /// non-loopback one if any), for servers that listen on an interface rather than
    /// an address (Pika's `network-interface`); `None` when `bind` includes all
    /// addresses or the engine does not need it.
    pub bind_interface: Option<String>,
}

/// How a graceful stop was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopRequest {
    /// The server accepted a stop command (e.g. `SHUTDOWN SAVE`).
    Sent { command: String },
    /// The server answered the stop command with an error and keeps running.
    Refused { command: String, error: String },
    /// The server could not be reached or the engine stops by signal: the caller
    /// sends SIGTERM.
    Signal { reason: String },
}

/// What a readiness probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Answers `PING` with `PONG`.
    Ready,
    /// Up, but not serving yet (e.g. `-LOADING`); the text says why.
    Starting(String),
    /// Not answering (yet): connection refused, timeout, auth failure…
    Unreachable(String),
}

/// How much a monitor sample asks of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// PING and the few INFO fields health needs (every health interval).
    Health,
    /// PING and one full INFO (every metrics interval).
    Full,
}

/// One monitor sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The round trip of the probe's PING. It is pipelined with the INFO, which the
    /// server answers in the same write, so it includes INFO's own time (tens of µs).
    pub ping: std::time::Duration,
    /// What INFO said (typed fields only; `raw` stays empty); with [`Depth::Health`]
    /// only the sections health needs.
    pub stats: ServerStats,
    /// The INFO reply itself, for [`Engine::info_raw`] when someone asks.
    pub reply: Vec<u8>,
}

/// A port that listens on all addresses whatever the agent's `bind` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnboundPort {
    pub port: u16,
    /// What it is for: `replication`.
    pub purpose: &'static str,
    /// Why it is not bound as asked.
    pub why: &'static str,
}

/// What an operator must know about the ports of an instance on `port` that listen on
/// all addresses although the agent's `bind` names only some; `None` when there are
/// none, or when `bind` includes all addresses anyway.
pub fn exposure(engine: &dyn Engine, port: u16, bind: &[IpAddr]) -> Option<String> {
    if bind.iter().any(IpAddr::is_unspecified) {
        return None;
    }
    let ports = engine.unbound_ports(port);
    let first = ports.first()?;
    let list: Vec<String> = ports.iter().map(|p| format!("{} ({})", p.port, p.purpose)).collect();
    Some(format!(
        "port {} listens on all addresses whatever [instances] bind says ({}): firewall it so that only this \
         instance's replicas can reach it",
        list.join(", "),
        first.why
    ))
}

/// What a save in progress has written, for the status of a stop that waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveProgress {
    pub written_bytes: u64,
    /// The size of the last complete save, when there is one.
    pub previous_bytes: Option<u64>,
}

/// What an instance asks of the host, for the preflight checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNeeds {
    /// The listen backlog it asks the kernel for.
    pub listen_backlog: u64,
    /// Open files it needs.
    pub nofile: u64,
}

/// What a spec asks the server itself to be, under the engine's own key names: the
/// part of a spec that reconfiguration compares and applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Config keys and values as the config file holds them (the spec's `[config]`
    /// and fields such as `maxmemory` that map onto a key).
    pub config: BTreeMap<String, String>,
    pub replica_of: Option<ReplicaOf>,
    pub password: Option<Secret>,
}

/// What a running server has of what a spec sets (see [`Engine::read_current`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    pub config: BTreeMap<String, String>,
    /// Whether exactly the passwords asked about are valid; `None` when not asked.
    pub passwords_match: Option<bool>,
}

/// Whether a config key can change while the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    /// `CONFIG SET` changes it.
    Live,
    /// Only a restart changes it.
    Restart,
}

/// What the server made of a `CONFIG SET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOutcome {
    /// Accepted; `now` is what `CONFIG GET` reads back.
    Applied { now: String },
    /// Refused, with the server's reason.
    Refused { reason: String },
}

/// Whether `got` (what `CONFIG GET` reads) is the value `wanted` (what a spec says).
/// Servers normalise what they are given: case (`ALLKEYS-LRU`), sizes (`1mb` reads
/// back as `1048576`), and lists that a partial value extends
/// (`client-output-buffer-limit "normal 0 0 0"` reads back with every class). So the
/// words of `wanted`, each lower-cased and with sizes in bytes (as `size` reads them),
/// must appear as one run in the words of `got`.
pub fn values_match(wanted: &str, got: &str, size: fn(&str) -> Option<u64>) -> bool {
    let words = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .map(|word| {
                let lower = word.to_ascii_lowercase();
                match size(&lower) {
                    Some(bytes) if lower.starts_with(|c: char| c.is_ascii_digit()) => bytes.to_string(),
                    _ => lower,
                }
            })
            .collect()
    };
    let (wanted, got) = (words(wanted), words(got));
    if wanted.is_empty() || got.is_empty() {
        return wanted.is_empty() && got.is_empty();
    }
    got.windows(wanted.len()).any(|run| run == wanted.as_slice())
}

/// One server family.
pub trait Engine: Send + Sync + 'static {
    fn kind(&self) -> EngineKind;

    /// Problems of a spec that only this engine knows, as `(field, message)`;
    /// `nofile_hard_limit` is the agent's own hard limit of open files, which a child
    /// cannot exceed.
    fn spec_problems(&self, spec: &InstanceSpec, nofile_hard_limit: u64) -> Vec<(String, String)> {
        let _ = (spec, nofile_hard_limit);
        Vec::new()
    }

    /// The shortest stop timeout that does not cut a healthy, stopping server short.
    fn min_stop_timeout(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// `RLIMIT_NOFILE` for the server's process; `None` keeps the agent's.
    fn child_nofile(&self, spec: &InstanceSpec) -> Option<u64> {
        spec.limits.nofile
    }

    /// Whether `seen`, the master as the server reports it (`host:port`), is `wanted`.
    fn is_master(&self, wanted: &ReplicaOf, seen: &str) -> bool {
        wanted.to_string() == seen
    }

    /// Whether `got`, as `CONFIG GET` reads it, is the value `wanted` a spec sets.
    fn same_value(&self, wanted: &str, got: &str) -> bool {
        values_match(wanted, got, |w| crate::units::parse_size(w).ok())
    }

    /// Directories inside the instance's data directory that the server expects to
    /// exist (the agent creates them before a start).
    fn data_dirs(&self, layout: &Layout) -> Vec<PathBuf> {
        let _ = layout;
        Vec::new()
    }

    /// What a password grace period means for this engine, when it is not simply
    /// "both passwords work".
    fn password_grace_note(&self) -> Option<&'static str> {
        None
    }

    /// File name of the rendered config inside the instance directory.
    fn config_file_name(&self) -> &'static str;

    /// Why `key` may not appear under a spec's `[config]`, if it may not. `key` is
    /// lower-case.
    fn refuse_config_key(&self, key: &str) -> Option<String>;

    /// Why the server's config file cannot hold `value` (a `[config]` value or the
    /// password) as it is, if it cannot. Never echoes the value.
    fn refuse_config_value(&self, value: &str) -> Option<&'static str> {
        let _ = value;
        None
    }

    /// Every TCP port an instance on `port` occupies.
    fn ports(&self, port: u16) -> Vec<u16>;

    /// Ports of an instance on `port` that listen on all addresses whatever the
    /// agent's `bind` says, each with what it is for and why.
    fn unbound_ports(&self, port: u16) -> Vec<UnboundPort> {
        let _ = port;
        Vec::new()
    }

    /// The server settings `spec` asks for.
    fn settings(&self, spec: &InstanceSpec) -> Settings;

    /// The config file for `spec`, with the agent-owned settings of `layout`.
    /// `previous` is the file as it is now: a server that writes into its own config
    /// file (Pika, about its replication) keeps what it wrote.
    fn render_config(&self, spec: &InstanceSpec, layout: &Layout, previous: Option<&str>) -> String;

    /// Whether the server listens on a network interface rather than on addresses, so
    /// that [`Layout::bind_interface`] must be found before a start.
    fn binds_by_interface(&self) -> bool {
        false
    }

    /// The address the agent talks to the server on, out of the agent's `bind`
    /// addresses.
    fn client_address(&self, bind: &[IpAddr]) -> Option<IpAddr> {
        bind.first().copied()
    }

    /// The settings a config file rendered by [`Engine::render_config`] holds: what a
    /// process started from it, or reconfigured to match it, runs with.
    fn rendered_settings(&self, config_text: &str) -> Settings;

    /// Whether `key` (lower-case) can change at runtime.
    fn mutability(&self, key: &str) -> Mutability;

    /// The value `key` has when no spec sets it, when the agent knows it: a key removed
    /// from a spec is set back to it.
    fn default_value(&self, key: &str) -> Option<&'static str>;

    /// The command-line arguments, after the binary.
    fn args(&self, layout: &Layout) -> Vec<OsString>;

    /// Environment variables the server is started with (the agent clears the rest).
    fn env(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// One readiness probe: ready only when the target's own process answers.
    fn probe<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Readiness>;

    /// What an instance of `spec` asks of the host.
    fn host_needs(&self, spec: &InstanceSpec) -> HostNeeds;

    /// Every field of an INFO reply that has no typed field, as the server wrote it.
    /// Computed only when asked (`/v1/instances/{name}`): collecting them on every
    /// sample cost more than everything else a sample does.
    fn info_raw(&self, reply: &[u8]) -> std::collections::BTreeMap<String, String>;

    /// Checks that the server on `session` is process `pid`.
    fn verify_pid<'a>(&'a self, session: &'a mut Session, pid: u32) -> BoxFuture<'a, Result<(), ClientError>>;

    /// One monitor sample on a kept session: PING and INFO as deep as `depth`,
    /// pipelined.
    fn sample<'a>(&'a self, session: &'a mut Session, depth: Depth) -> BoxFuture<'a, Result<Sample, ClientError>>;

    /// How far the save that a stop of process `pid` waits for has got, from the files
    /// in the instance's data directory (blocking file work); `None` when no save is
    /// running or the engine cannot tell.
    fn save_progress(&self, data_dir: &Path, pid: u32) -> Option<SaveProgress> {
        let _ = (data_dir, pid);
        None
    }

    /// What a backup of this engine is: one file or a directory.
    fn backup_shape(&self) -> BackupShape;

    /// Asks the server for a snapshot of its dataset on disk (in the background).
    fn start_snapshot<'a>(&'a self, session: &'a mut Session) -> BoxFuture<'a, Result<SnapshotStart, ClientError>>;

    /// Where the server's snapshots stand (`data_dir` is the instance's, for a server
    /// whose snapshots say it only through their files).
    fn persistence<'a>(
        &'a self,
        session: &'a mut Session,
        data_dir: &'a Path,
    ) -> BoxFuture<'a, Result<Persistence, ClientError>>;

    /// The file or directory the server's last complete snapshot is in, inside
    /// `data_dir`.
    fn snapshot_path<'a>(
        &'a self,
        session: &'a mut Session,
        data_dir: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, ClientError>>;

    /// Where a backup goes in an empty data directory so that a server of `spec` loads
    /// it when it starts.
    fn restore_path(&self, spec: &InstanceSpec, data_dir: &Path) -> PathBuf;

    /// What in `data_dir` is data (blocking file work): a restore never goes where
    /// there is any. Empty when the directory is missing.
    fn data_files(&self, data_dir: &Path) -> std::io::Result<Vec<String>> {
        names_in(data_dir, "")
    }

    /// Asks the server to stop gracefully.
    fn request_stop<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, StopRequest>;

    /// `CONFIG SET key value`, then `CONFIG GET key` to read back what the server
    /// made of it. An error reply to the set is a [`SetOutcome::Refused`].
    fn config_set<'a>(
        &'a self,
        session: &'a mut Session,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<SetOutcome, ClientError>>;

    /// What the server runs with of what a spec sets, in one round trip: the values
    /// of `keys` (a key the server does not know is left out) and, when `passwords`
    /// is given (at most one: outside a grace period), whether the server's password
    /// and `masterauth` are that one (or none).
    /// (Its master is in every health probe, so it is not asked for again.)
    fn read_current<'a>(
        &'a self,
        session: &'a mut Session,
        keys: &'a [&'a str],
        passwords: Option<&'a [Secret]>,
    ) -> BoxFuture<'a, Result<Current, ClientError>>;

    /// Makes the server a replica of `master`, or a master when `None`, without a
    /// restart.
    fn set_master<'a>(
        &'a self,
        session: &'a mut Session,
        master: Option<&'a ReplicaOf>,
    ) -> BoxFuture<'a, Result<(), ClientError>>;

    /// Makes exactly `passwords` valid for clients (none: no password), in one step
    /// so that no client sees a moment without its password; the first one is also
    /// what the server authenticates to its master with.
    fn set_passwords<'a>(
        &'a self,
        session: &'a mut Session,
        passwords: &'a [Secret],
    ) -> BoxFuture<'a, Result<(), ClientError>>;
}

static REDIS: RedisEngine = RedisEngine;
static PIKA: PikaEngine = PikaEngine;

/// The engine for `kind`, if this build supports it.
pub fn for_kind(kind: EngineKind) -> Option<&'static dyn Engine> {
    match kind {
        EngineKind::Redis => Some(&REDIS),
        EngineKind::Pika => Some(&PIKA),
    }
}

/// The names in `dir`, each after `prefix`; none when it is missing (blocking).
pub fn names_in(dir: &Path, prefix: &str) -> std::io::Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.map(|e| format!("{prefix}{}", e.file_name().to_string_lossy())))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The layout of instance `name` under the agent's directories.
pub fn layout(engine: &dyn Engine, instances_dir: &Path, log_dir: &Path, name: &str, bind: &[IpAddr]) -> Layout {
    let instance_dir = instances_dir.join(name);
    Layout {
        data_dir: instance_dir.join("data"),
        config_file: instance_dir.join(engine.config_file_name()),
        log_file: log_dir.join(format!("{name}.log")),
        bind: bind.to_vec(),
        bind_interface: None,
        instance_dir,
    }
}

#[cfg(test)]
mod tests {
    fn values_match(wanted: &str, got: &str) -> bool {
        super::values_match(wanted, got, |w| crate::units::parse_size(w).ok())
    }

    #[test]
    fn values_match_the_way_servers_read_them_back() {
        assert!(values_match("allkeys-lru", "allkeys-lru"));
        assert!(values_match("ALLKEYS-LRU", "allkeys-lru"));
        assert!(values_match("1mb", "1048576"));
        assert!(values_match("3600 1 300 100", "3600 1 300 100"));
        assert!(values_match("normal 0 0 0", "normal 0 0 0 slave 268435456 67108864 60"));
        assert!(values_match("", ""));
        assert!(!values_match("allkeys-lru", "noeviction"));
        assert!(!values_match("", "3600 1"));
        assert!(!values_match("3600 1", ""));
        assert!(!values_match("10", "100"));
    }
}

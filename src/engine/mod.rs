//! Everything that differs between server families sits behind the [`Engine`] trait:
//! which `[config]` keys are allowed, the ports an instance occupies, the config file
//! and command line, readiness, and the graceful stop.
//!
//! Architecture invariant: only `engine/` knows a Redis or Pika config key or command.
//! The supervisor drives every engine through this trait alone.

mod client;
pub mod info;
mod redis;
mod session;
mod stats;

pub use client::{ClientError, Connection, Target};
pub use info::{pika_stats, redis_stats, redis_stats_typed};
pub use redis::RedisEngine;
pub use session::Session;
pub use stats::{DbKeys, ObservedRole, ReplicaLink, ServerStats};

use crate::spec::{InstanceSpec, Secret};
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

/// What an instance asks of the host, for the preflight checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNeeds {
    /// The listen backlog it asks the kernel for.
    pub listen_backlog: u64,
    /// Open files it needs.
    pub nofile: u64,
}

/// One server family.
pub trait Engine: Send + Sync + 'static {
    fn kind(&self) -> EngineKind;

    /// File name of the rendered config inside the instance directory.
    fn config_file_name(&self) -> &'static str;

    /// Why `key` may not appear under a spec's `[config]`, if it may not. `key` is
    /// lower-case.
    fn refuse_config_key(&self, key: &str) -> Option<String>;

    /// Every TCP port an instance on `port` occupies.
    fn ports(&self, port: u16) -> Vec<u16>;

    /// The config file for `spec`, with the agent-owned settings of `layout`.
    fn render_config(&self, spec: &InstanceSpec, layout: &Layout) -> String;

    /// The command-line arguments, after the binary.
    fn args(&self, layout: &Layout) -> Vec<OsString>;

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

    /// Asks the server to stop gracefully.
    fn request_stop<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, StopRequest>;

    /// The password a server started from the rendered config file `config_text` runs
    /// with (an adopted process may have been started with an older spec).
    fn configured_password(&self, config_text: &str) -> Option<Secret>;
}

static REDIS: RedisEngine = RedisEngine;

/// The engine for `kind`, if this build supports it.
pub fn for_kind(kind: EngineKind) -> Option<&'static dyn Engine> {
    match kind {
        EngineKind::Redis => Some(&REDIS),
        EngineKind::Pika => None,
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
        instance_dir,
    }
}

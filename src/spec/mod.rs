//! The instance spec: the desired configuration of one instance, parsed and checked
//! field by field from a manifest (TOML) or a desired-state document (JSON).
//!
//! Checks that need the whole document (duplicate names and ports) are in `desired`.

mod backup;

pub use backup::{valid_backup_id, BackupFields, RestoreSource};

use crate::config::AgentConfig;
use crate::engine::{self, EngineKind};
use crate::problem::{control_character, Checker, Fields};
use crate::units;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A password. Its `Debug` and `Display` never show it (invariant 6); only
/// [`Secret::expose`] does, for the config file and `AUTH`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: &str) -> Secret {
        Secret(Arc::from(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Whether an instance should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
}

/// `replica_of = "host:port"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaOf {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ReplicaOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What a stop does when the server keeps refusing to save (a full disk, a data
/// directory it cannot write): `SHUTDOWN SAVE` fails and the server keeps running with
/// its unsaved writes, as Redis itself does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnSaveFailure {
    /// Keep the server running and report the stop as blocked until the save works
    /// (space freed, permissions fixed) or the spec says `kill`.
    #[default]
    KeepRunning,
    /// Kill the server at the stop timeout: its unsaved writes are lost (caches).
    Kill,
}

/// `[limits]` of a spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub nofile: Option<u64>,
    pub oom_score_adj: Option<i32>,
}

/// A validated instance spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    pub name: String,
    pub engine: EngineKind,
    pub version: String,
    pub port: u16,
    pub state: RunState,
    pub maxmemory: Option<u64>,
    /// The password, from `password` or read from `password_file`.
    pub password: Option<Secret>,
    pub replica_of: Option<ReplicaOf>,
    pub restart_epoch: u64,
    /// Overrides `[instances] stop_timeout` of agent.toml.
    pub stop_timeout: Option<Duration>,
    /// What a stop does when the server cannot save its data.
    pub on_save_failure: OnSaveFailure,
    /// How long the old password keeps working after a change; overrides
    /// `[instances] password_grace` of agent.toml.
    pub password_grace: Option<Duration>,
    /// `[config]`: engine keys (lower-case) and their values as text.
    pub config: BTreeMap<String, String>,
    pub limits: Limits,
    /// Backups and restores; none of it is part of the config hash.
    pub backup: BackupFields,
}

const FIELDS: &[&str] = &[
    "name",
    "engine",
    "version",
    "port",
    "state",
    "maxmemory",
    "password",
    "password_file",
    "replica_of",
    "restart_epoch",
    "stop_timeout",
    "on_save_failure",
    "password_grace",
    "config",
    "limits",
    "backup_epoch",
    "backup",
    "restore_from",
    "restore_epoch",
];

/// What parsing a spec needs to know about the node.
pub struct SpecContext<'a> {
    pub config: &'a AgentConfig,
    /// Directory that relative `password_file` paths are resolved against.
    pub base_dir: Option<&'a Path>,
    /// Whether the spec may name host paths (`password_file`): yes in a manifest on
    /// the host, never in a document from elsewhere (invariant 3).
    pub paths_allowed: bool,
}

impl InstanceSpec {
    /// Parses one spec, adding every problem to `c`. `path` prefixes field names
    /// (`""` for a manifest file, `instances[3]` in a document).
    pub fn parse(map: &Map<String, Value>, path: &str, ctx: &SpecContext<'_>, c: &mut Checker) -> Option<InstanceSpec> {
        let before = c.problems.len();
        let f = c.table(map, path, FIELDS);

        let name = c.required_string(&f, "name");
        if let Some(name) = &name {
            if !valid_name(name) {
                c.problem(
                    f.path("name"),
                    format!("{name:?} is not a valid name: use 1-63 characters a-z, 0-9 and '-', starting with a letter or digit"),
                );
            }
        }

        let engine = match c.string(&f, "engine") {
            None if !f.has("engine") => Some(EngineKind::Redis),
            None => None,
            Some(text) => match EngineKind::parse(&text) {
                Some(kind) if engine::for_kind(kind).is_some() => Some(kind),
                Some(kind) => {
                    c.problem(
                        f.path("engine"),
                        format!("engine {kind} is not supported by this version of ker-agent"),
                    );
                    None
                }
                None => {
                    c.problem(
                        f.path("engine"),
                        format!("{text:?} is not an engine: use \"redis\" or \"pika\""),
                    );
                    None
                }
            },
        };

        let version = engine.and_then(|kind| parse_version(kind, &f, ctx.config, c));

        let port = port_field(&f, "port", c, true);

        let state = match c.string(&f, "state").as_deref() {
            None => RunState::Running,
            Some("running") => RunState::Running,
            Some("stopped") => RunState::Stopped,
            Some(other) => {
                c.problem(
                    f.path("state"),
                    format!("{other:?} is not a state: use \"running\" or \"stopped\""),
                );
                RunState::Running
            }
        };

        let maxmemory = size_field(&f, "maxmemory", c);

        let password = parse_password(&f, ctx, c);
        if let (Some(password), Some(engine)) = (&password, engine.and_then(engine::for_kind)) {
            if let Some(why) = engine.refuse_config_value(password.expose()) {
                let field = if f.map.contains_key("password") {
                    "password"
                } else {
                    "password_file"
                };
                c.problem(f.path(field), format!("the password {why}"));
            }
        }

        let replica_of = c
            .string(&f, "replica_of")
            .and_then(|text| match parse_host_port(&text) {
                Ok(r) => Some(r),
                Err(e) => {
                    c.problem(f.path("replica_of"), e);
                    None
                }
            });

        let restart_epoch = c.unsigned(&f, "restart_epoch").unwrap_or(0);

        let stop_timeout = c.duration(&f, "stop_timeout");
        let on_save_failure = match c.string(&f, "on_save_failure").as_deref() {
            None | Some("keep-running") => OnSaveFailure::KeepRunning,
            Some("kill") => OnSaveFailure::Kill,
            Some(other) => {
                c.problem(
                    f.path("on_save_failure"),
                    format!("{other:?} is not an action: use \"keep-running\" (the default) or \"kill\""),
                );
                OnSaveFailure::KeepRunning
            }
        };
        let password_grace = c.duration(&f, "password_grace");

        let config = parse_engine_config(&f, engine.and_then(engine::for_kind), c);

        let limits = parse_limits(&f, c);
        let backup = backup::parse(&f, c);

        if c.problems.len() > before {
            return None;
        }
        let spec = InstanceSpec {
            name: name?,
            engine: engine?,
            version: version?,
            port: port?,
            state,
            maxmemory,
            password,
            replica_of,
            restart_epoch,
            stop_timeout,
            on_save_failure,
            password_grace,
            config,
            limits,
            backup,
        };
        // What only the engine knows (Pika's ports and open files, for one).
        let hard_limit = crate::sys::nofile_limits().map_or(u64::MAX, |(_, hard)| hard);
        for (field, message) in engine::for_kind(spec.engine)?.spec_problems(&spec, hard_limit) {
            let path = field
                .split('.')
                .fold(path.to_string(), |p, part| crate::problem::join(&p, part));
            c.problem(path, message);
        }
        (c.problems.len() == before).then_some(spec)
    }

    /// A hash of everything in the spec that the running process depends on. A process
    /// started from a spec with another hash must be reconfigured or restarted.
    ///
    /// Architecture invariant: the encoding is explicit and stable, and a field at its
    /// default adds nothing, so that an agent upgrade that adds spec fields does not
    /// change the hash of existing instances (and so never restarts them).
    pub fn config_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |key: &str, value: &str| {
            h.update(key.as_bytes());
            h.update([0]);
            h.update(value.as_bytes());
            h.update([0]);
        };
        field("engine", self.engine.as_str());
        field("version", &self.version);
        field("port", &self.port.to_string());
        if let Some(m) = self.maxmemory {
            field("maxmemory", &m.to_string());
        }
        if let Some(p) = &self.password {
            field("password", p.expose());
        }
        if let Some(r) = &self.replica_of {
            field("replica_of", &r.to_string());
        }
        if self.restart_epoch != 0 {
            field("restart_epoch", &self.restart_epoch.to_string());
        }
        for (k, v) in &self.config {
            field(&format!("config.{k}"), v);
        }
        if let Some(n) = self.limits.nofile {
            field("limits.nofile", &n.to_string());
        }
        if let Some(o) = self.limits.oom_score_adj {
            field("limits.oom_score_adj", &o.to_string());
        }
        let digest = h.finalize();
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// A minimal running Redis spec, for tests.
    #[cfg(test)]
    pub fn example(name: &str, port: u16) -> InstanceSpec {
        InstanceSpec {
            name: name.to_string(),
            engine: EngineKind::Redis,
            version: "7.0".into(),
            port,
            state: RunState::Running,
            maxmemory: None,
            password: None,
            replica_of: None,
            restart_epoch: 0,
            stop_timeout: None,
            on_save_failure: OnSaveFailure::KeepRunning,
            password_grace: None,
            config: BTreeMap::new(),
            limits: Limits::default(),
            backup: BackupFields::default(),
        }
    }
}

/// `[a-z0-9][a-z0-9-]{0,62}`.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn parse_version(kind: EngineKind, f: &Fields<'_>, config: &AgentConfig, c: &mut Checker) -> Option<String> {
    let allowed = config.versions(kind);
    match c.string(f, "version") {
        Some(v) if allowed.contains(&v.as_str()) => Some(v),
        // Not listed locally: the trusted store is asked for it once the state is
        // accepted; here it need only be a name that is safe as a path component.
        Some(v) if config.artifacts.is_some() => match crate::artifacts::version_problem(&v) {
            None => Some(v),
            Some(why) => {
                c.problem(f.path("version"), format!("{v:?} {why}"));
                None
            }
        },
        Some(v) => {
            c.problem(
                f.path("version"),
                format!(
                    "{v:?} is not an allowed {kind} version (agent.toml [engines.{kind}.versions] allows: {}), \
                     and agent.toml names no [artifacts] store",
                    list_or_none(&allowed)
                ),
            );
            None
        }
        None if f.has("version") => None,
        None => match allowed.as_slice() {
            [only] if config.artifacts.is_none() => Some(only.to_string()),
            _ => {
                c.problem(
                    f.path("version"),
                    format!(
                        "missing: agent.toml allows more or less than one {kind} version ({}){}, so the spec must name one",
                        list_or_none(&allowed),
                        if config.artifacts.is_some() { " and a store" } else { "" }
                    ),
                );
                None
            }
        },
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")
    }
}

fn port_field(f: &Fields<'_>, key: &str, c: &mut Checker, required: bool) -> Option<u16> {
    if required && !f.has(key) {
        c.problem(f.path(key), "missing (required)");
        return None;
    }
    let n = c.unsigned(f, key)?;
    match u16::try_from(n) {
        Ok(port) if port >= 1024 => Some(port),
        _ => {
            c.problem(f.path(key), format!("{n} is outside 1024-65535"));
            None
        }
    }
}

fn size_field(f: &Fields<'_>, key: &str, c: &mut Checker) -> Option<u64> {
    match f.map.get(key)? {
        Value::String(_) => {
            let text = c.string(f, key)?;
            match units::parse_size(&text) {
                Ok(n) => Some(n),
                Err(e) => {
                    c.problem(f.path(key), e);
                    None
                }
            }
        }
        Value::Number(_) => c.unsigned(f, key),
        other => {
            c.problem(
                f.path(key),
                format!(
                    "expected a size such as \"256mb\", found {}",
                    crate::problem::kind(other)
                ),
            );
            None
        }
    }
}

fn parse_password(f: &Fields<'_>, ctx: &SpecContext<'_>, c: &mut Checker) -> Option<Secret> {
    let inline = match f.map.get("password") {
        None => None,
        Some(Value::String(s)) => {
            if control_character(s).is_some() {
                // The message must not echo the password.
                c.problem(f.path("password"), "contains a control character, which is not allowed");
                None
            } else if s.is_empty() {
                c.problem(f.path("password"), "must not be empty (leave it out for no password)");
                None
            } else {
                Some(Secret::new(s))
            }
        }
        Some(other) => {
            c.problem(
                f.path("password"),
                format!("expected a string, found {}", crate::problem::kind(other)),
            );
            None
        }
    };
    if f.has("password_file") && !ctx.paths_allowed {
        c.problem(
            f.path("password_file"),
            "not allowed in a desired-state document: it names a path on the host; send `password` instead",
        );
        return None;
    }
    let file = c.string(f, "password_file");
    if f.has("password") && f.has("password_file") {
        c.problem(
            f.path("password_file"),
            "set either `password` or `password_file`, not both",
        );
        return None;
    }
    let Some(file) = file else {
        return inline;
    };
    let mut path = PathBuf::from(&file);
    if path.is_relative() {
        match ctx.base_dir {
            Some(base) => path = base.join(path),
            None => {
                c.problem(f.path("password_file"), format!("{file:?} must be an absolute path"));
                return None;
            }
        }
    }
    match crate::secret_file::read(&path, "password file") {
        Ok(text) => {
            let password = text.trim_end_matches(['\n', '\r']);
            if control_character(password).is_some() {
                c.problem(
                    f.path("password_file"),
                    format!("{} holds a control character, which is not allowed", path.display()),
                );
                None
            } else {
                Some(Secret::new(password))
            }
        }
        Err(e) => {
            c.problem(f.path("password_file"), e.to_string());
            None
        }
    }
}

/// Parses `host:port` or `[ipv6]:port`.
pub fn parse_host_port(text: &str) -> Result<ReplicaOf, String> {
    let bad = || format!("{text:?} is not host:port (e.g. \"10.0.0.5:6379\" or \"[fd00::5]:6379\")");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, rest) = rest.split_once(']').ok_or_else(bad)?;
        (host, rest.strip_prefix(':').ok_or_else(bad)?)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    let port: u16 = port.parse().map_err(|_| bad())?;
    if !host_ok || port == 0 {
        return Err(bad());
    }
    Ok(ReplicaOf {
        host: host.to_string(),
        port,
    })
}

/// `[config]`: scalar values without control characters; when the engine is known,
/// also the keys it refuses.
fn parse_engine_config(
    f: &Fields<'_>,
    engine: Option<&dyn engine::Engine>,
    c: &mut Checker,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(table) = c.subtable(f, "config") else {
        return out;
    };
    for (key, value) in table {
        let field = crate::problem::join(&f.path("config"), key);
        let lower = key.to_ascii_lowercase();
        if let Some(problem) = control_character(key) {
            c.problem(field, format!("key {problem}"));
            continue;
        }
        if let Some(why) = engine.and_then(|e| e.refuse_config_key(&lower)) {
            c.problem(field, format!("not allowed under [config]: {why}"));
            continue;
        }
        let text = match value {
            Value::String(s) => match control_character(s) {
                Some(problem) => {
                    c.problem(field, problem);
                    continue;
                }
                None => s.clone(),
            },
            Value::Bool(true) => "yes".into(),
            Value::Bool(false) => "no".into(),
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            other => {
                c.problem(
                    field,
                    format!(
                        "expected a string, integer or boolean, found {}",
                        crate::problem::kind(other)
                    ),
                );
                continue;
            }
        };
        if let Some(why) = engine.and_then(|e| e.refuse_config_value(&text)) {
            c.problem(field, format!("the value {why}"));
            continue;
        }
        if out.insert(lower.clone(), text).is_some() {
            c.problem(field, format!("{lower:?} is set twice (keys are case-insensitive)"));
        }
    }
    out
}

fn parse_limits(f: &Fields<'_>, c: &mut Checker) -> Limits {
    let mut limits = Limits::default();
    let Some(table) = c.subtable(f, "limits") else {
        return limits;
    };
    let lf = c.table(table, &f.path("limits"), &["nofile", "oom_score_adj"]);
    if let Some(n) = c.unsigned(&lf, "nofile") {
        if (64..=(1 << 30)).contains(&n) {
            limits.nofile = Some(n);
        } else {
            c.problem(lf.path("nofile"), format!("{n} is outside 64-1073741824"));
        }
    }
    if let Some(n) = c.integer(&lf, "oom_score_adj") {
        match i32::try_from(n) {
            Ok(v) if (-1000..=1000).contains(&v) => limits.oom_score_adj = Some(v),
            _ => c.problem(lf.path("oom_score_adj"), format!("{n} is outside -1000..1000")),
        }
    }
    limits
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::parse_toml;

    pub fn test_config() -> AgentConfig {
        let doc = parse_toml(
            "node_id = \"n\"\n[engines.redis.versions]\n\"7.0\" = \"/bin/sh\"\n\"7.2\" = \"/bin/sh\"\n[engines.pika.versions]\n\"4.0\" = \"/bin/sh\"\n",
            "agent.toml",
        )
        .unwrap();
        AgentConfig::from_document(&doc, "agent.toml", Path::new("/k/agent.toml"), Path::new("/k")).unwrap()
    }

    fn parse(text: &str) -> Result<InstanceSpec, Vec<String>> {
        let config = test_config();
        let ctx = SpecContext {
            config: &config,
            base_dir: None,
            paths_allowed: true,
        };
        let map = parse_toml(text, "a.toml").map_err(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let mut c = Checker::new("a.toml");
        InstanceSpec::parse(&map, "", &ctx, &mut c).ok_or_else(|| c.problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn backup_and_restore_fields() {
        let spec = parse(
            "name = \"a\"\nversion = \"7.0\"\nport = 7000\nbackup_epoch = 3\nrestore_epoch = 1\nrestore_from = \"20261129T172115Z\"\n[backup]\ninterval = \"6h\"\nkeep = 2\n",
        )
        .unwrap();
        assert_eq!(spec.backup.backup_epoch, 3);
        assert_eq!(spec.backup.restore_epoch, 1);
        assert_eq!(
            spec.backup.restore_from,
            Some(RestoreSource::Local {
                id: "20261129T172115Z".into()
            })
        );
        let schedule = spec.backup.schedule.over(crate::config::BackupSchedule::default());
        assert_eq!(schedule.interval, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(schedule.keep, 2);
        // None of it restarts anything.
        assert_eq!(
            spec.config_hash(),
            parse("name = \"a\"\nversion = \"7.0\"\nport = 7000\n")
                .unwrap()
                .config_hash()
        );

        let remote = parse(&format!(
            "name = \"a\"\nversion = \"7.0\"\nport = 7000\nrestore_from = {{ url = \"http://10.0.0.5:9737/v1/instances/a/backups/x\", sha256 = \"{}\" }}\n",
            "AB".repeat(32)
        ))
        .unwrap();
        assert_eq!(
            remote.backup.restore_from.as_ref().and_then(|r| r.sha256()),
            Some("ab".repeat(32).as_str())
        );

        let problems = parse(
            "name = \"a\"\nversion = \"7.0\"\nport = 7000\nrestore_from = \"../x\"\n[backup]\nkeep = 0\nevery = 1\ninterval = \"500000000000y\"\n",
        )
        .unwrap_err();
        crate::problem::assert_problems(
            &problems,
            &[
                "a.toml: restore_from: \"../x\" is not a backup id",
                "a.toml: backup.keep: 0 is not between 1 and 10000",
                "a.toml: backup.every: unknown key",
                "a.toml: backup.interval: must be at most 366d",
            ],
        );
        let problems =
            parse("name = \"a\"\nversion = \"7.0\"\nport = 7000\nrestore_from = { url = \"file:///etc/passwd\", sha256 = \"12\" }\n")
                .unwrap_err();
        crate::problem::assert_problems(
            &problems,
            &[
                "a.toml: restore_from.url: scheme \"file\" is not http or https",
                "a.toml: restore_from.sha256: expected 64 hexadecimal digits",
            ],
        );
        let problems = parse(
            "name = \"a\"\nversion = \"7.0\"\nport = 7000\nrestore_from = \"x\"\n[config]\nappendonly = \"yes\"\n",
        )
        .unwrap_err();
        crate::problem::assert_problems(
            &problems,
            &["a.toml: restore_from: a restore places an RDB, which Redis ignores"],
        );
    }

    #[test]
    fn full_spec() {
        let spec = parse(
            r#"
            name = "cache-1"
            engine = "redis"
            version = "7.0"
            port = 6380
            state = "stopped"
            maxmemory = "256mb"
            password = "s3cret"
            replica_of = "10.0.0.5:6379"
            restart_epoch = 2
            stop_timeout = "30s"
            on_save_failure = "kill"
            password_grace = "2m"
            [config]
            "maxmemory-policy" = "allkeys-lru"
            appendonly = true
            hz = 20
            [limits]
            nofile = 65536
            oom_score_adj = -100
            "#,
        )
        .unwrap();
        assert_eq!(spec.name, "cache-1");
        assert_eq!(spec.state, RunState::Stopped);
        assert_eq!(spec.maxmemory, Some(256 << 20));
        assert_eq!(spec.password, Some(Secret::new("s3cret")));
        assert_eq!(spec.replica_of.as_ref().unwrap().to_string(), "10.0.0.5:6379");
        assert_eq!(spec.config["appendonly"], "yes");
        assert_eq!(spec.config["hz"], "20");
        assert_eq!(spec.limits.nofile, Some(65536));
        assert_eq!(spec.limits.oom_score_adj, Some(-100));
        assert_eq!(spec.on_save_failure, OnSaveFailure::Kill);
        assert_eq!(spec.password_grace, Some(Duration::from_secs(120)));
        assert_eq!(spec.stop_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let problems = parse(
            r#"
            name = "Cache_1"
            version = "7.0"
            port = 80
            state = "paused"
            maxmemory = "lots"
            password = "a"
            password_file = "/x"
            replica_of = "nohost"
            typo = 1
            [config]
            port = 1
            dir = "/tmp"
            "maxmemory-policy" = "a\nb"
            [limits]
            nofile = 1
            oom_score_adj = 5000
            "#,
        )
        .unwrap_err();
        let expect = [
            "a.toml: name: \"Cache_1\" is not a valid name",
            "a.toml: port: 80 is outside 1024-65535",
            "a.toml: state: \"paused\" is not a state",
            "a.toml: maxmemory: \"lots\" is not a size",
            "a.toml: password_file: set either `password` or `password_file`, not both",
            "a.toml: replica_of: \"nohost\" is not host:port",
            "a.toml: typo: unknown key",
            "a.toml: config.port: not allowed under [config]: the agent owns it",
            "a.toml: config.dir: not allowed under [config]",
            "a.toml: config.maxmemory-policy: contains the control character '\\n'",
            "a.toml: limits.nofile: 1 is outside",
            "a.toml: limits.oom_score_adj: 5000 is outside",
        ];
        crate::problem::assert_problems(&problems, &expect);
    }

    #[test]
    fn pika_values_and_passwords_cannot_begin_or_end_with_a_space() {
        let problems = parse(
            "name = \"a\"\nengine = \"pika\"\nport = 9221\npassword = \" secret\"\n[config]\nthread-num = \"4 \"\nslowlog-log-slower-than = \"10000\"\n",
        )
        .unwrap_err();
        let expect = [
            "a.toml: password: the password begins or ends with a space or tab, which Pika's config file cannot hold",
            "a.toml: config.thread-num: the value begins or ends with a space or tab, which Pika's config file cannot hold",
        ];
        crate::problem::assert_problems(&problems, &expect);
        assert!(!problems.iter().any(|p| p.contains("secret")), "{problems:?}");
        // Redis quotes its values: the same spaces are fine there.
        let redis =
            parse("name = \"a\"\nversion = \"7.0\"\nport = 7000\npassword = \" secret \"\n[config]\nsave = \" \"\n");
        assert!(redis.is_ok(), "{redis:?}");
    }

    #[test]
    fn an_unknown_engine_still_gets_its_config_values_checked() {
        let problems =
            parse("name = \"a\"\nengine = \"memcached\"\nport = 7000\n[config]\nx = \"a\\u0000b\"\n").unwrap_err();
        assert!(
            problems[0].starts_with("a.toml: engine: \"memcached\" is not an engine"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("a.toml: config.x: contains the control character"),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn version_must_be_allowed_and_is_required_when_ambiguous() {
        let problems = parse("name = \"a\"\nport = 7000\nversion = \"6.2\"\n").unwrap_err();
        assert!(
            problems[0].contains("\"6.2\" is not an allowed redis version"),
            "{problems:?}"
        );
        assert!(problems[0].contains("\"7.0\", \"7.2\""), "{problems:?}");
        let problems = parse("name = \"a\"\nport = 7000\n").unwrap_err();
        assert!(problems[0].starts_with("a.toml: version: missing"), "{problems:?}");
    }

    #[test]
    fn password_never_appears_in_problems() {
        let problems =
            parse("name = \"a\"\nport = 7000\nversion = \"7.0\"\npassword = \"hunter2\\u0007\"\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].contains("hunter2"), "{problems:?}");
        assert!(format!("{:?}", Secret::new("hunter2")) == "Secret(<redacted>)");
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "from-file\n").unwrap();
        let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
        std::fs::set_permissions(dir.path().join("pw"), private).unwrap();
        let config = test_config();
        let ctx = SpecContext {
            config: &config,
            base_dir: Some(dir.path()),
            paths_allowed: true,
        };
        let map = parse_toml(
            "name = \"a\"\nport = 7000\nversion = \"7.0\"\npassword_file = \"pw\"\n",
            "a.toml",
        )
        .unwrap();
        let mut c = Checker::new("a.toml");
        let spec = InstanceSpec::parse(&map, "", &ctx, &mut c).unwrap();
        assert_eq!(spec.password, Some(Secret::new("from-file")));

        // Readable by other users: refused, as every secret file.
        let public = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644);
        std::fs::set_permissions(dir.path().join("pw"), public).unwrap();
        let mut c = Checker::new("a.toml");
        assert!(InstanceSpec::parse(&map, "", &ctx, &mut c).is_none());
        assert!(
            c.problems[0]
                .message
                .contains("is accessible to other users (mode 644)"),
            "{:?}",
            c.problems
        );

        let map = parse_toml(
            "name = \"a\"\nport = 7000\nversion = \"7.0\"\npassword_file = \"missing\"\n",
            "a.toml",
        )
        .unwrap();
        let mut c = Checker::new("a.toml");
        assert!(InstanceSpec::parse(&map, "", &ctx, &mut c).is_none());
        assert!(c.problems[0].message.starts_with("cannot read "), "{:?}", c.problems);
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,20}".prop_map(Value::String),
            "[0-9]{1,6}(k|kb|m|mb|g|gb|s|ms)?".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_-]{1,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any document, of any shape, is either a spec or a list of problems: never a
        /// panic, and never a spec with problems.
        #[test]
        fn parsing_never_panics(
            fields in proptest::collection::btree_map(
                proptest::sample::select(FIELDS.iter().map(|s| s.to_string()).chain(["bogus".to_string()]).collect::<Vec<_>>()),
                json_value(),
                0..10,
            )
        ) {
            let config = test_config();
            let ctx = SpecContext { config: &config, base_dir: None, paths_allowed: false };
            let map: Map<String, Value> = fields.into_iter().collect();
            let mut c = Checker::new("x");
            let spec = InstanceSpec::parse(&map, "", &ctx, &mut c);
            proptest::prop_assert!(spec.is_some() == c.problems.is_empty());
            for p in &c.problems {
                proptest::prop_assert!(!p.field.is_empty());
            }
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("a"));
        assert!(valid_name("0cache-1"));
        assert!(valid_name(&"a".repeat(63)));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(!valid_name("-a"));
        assert!(!valid_name("A"));
        assert!(!valid_name(""));
        assert!(!valid_name("a_b"));
        assert!(!valid_name("a.b"));
    }

    #[test]
    fn host_port() {
        assert_eq!(parse_host_port("h:1").unwrap().to_string(), "h:1");
        assert_eq!(parse_host_port("[fd00::5]:6379").unwrap().host, "fd00::5");
        assert!(parse_host_port("fd00::5:6379").is_err());
        assert!(parse_host_port("h:0").is_err());
        assert!(parse_host_port("h:99999").is_err());
        assert!(parse_host_port(":1").is_err());
        assert!(parse_host_port("a b:1").is_err());
    }

    #[test]
    fn config_hash_is_stable_and_ignores_state_and_timeouts() {
        let spec = InstanceSpec::example("a", 7000);
        // Pinned: a change of this value restarts every instance on agent upgrade.
        assert_eq!(spec.config_hash(), spec.config_hash());
        let pinned = spec.config_hash();
        let mut stopped = spec.clone();
        stopped.state = RunState::Stopped;
        stopped.stop_timeout = Some(Duration::from_secs(1));
        stopped.password_grace = Some(Duration::from_secs(1));
        assert_eq!(stopped.config_hash(), pinned);
        let mut changed = spec.clone();
        changed.config.insert("hz".into(), "20".into());
        assert_ne!(changed.config_hash(), pinned);
        let mut epoch = spec.clone();
        epoch.restart_epoch = 1;
        assert_ne!(epoch.config_hash(), pinned);
        assert_eq!(pinned, "47a48cc253f3106dbc0e4bc3b86c1a79");
    }
}

//! The `redis-server` engine: which keys a spec may set, `redis.conf` rendering, the
//! command line, readiness (`PING` → `PONG`, `-LOADING` is "starting"), the graceful
//! stop (`SHUTDOWN SAVE` when the server persists, `SHUTDOWN NOSAVE` when not) and live
//! reconfiguration (`CONFIG SET`, `REPLICAOF`, the default user's passwords).

use super::client::{ClientError, Connection, Target};
use super::commands::{config_get_all, info_text, ping_and_encoded, replicate, set_and_read_back, ConfigRead};
use super::redis_defaults::{DEFAULTS, IMMUTABLE};
use super::session::{encode, Session};
use super::snapshot::{self, BackupShape, Persistence, SnapshotStart};
use super::{
    BoxFuture, Current, Depth, Engine, EngineKind, HostNeeds, Layout, Mutability, Readiness, Sample, SetOutcome,
    Settings, StopRequest,
};
use crate::spec::{InstanceSpec, ReplicaOf, Secret};
use redis::Value;
use std::ffi::OsString;
use std::fmt::Write;
use std::sync::LazyLock;

/// `redis-server` 7.x.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisEngine;

/// Keys the agent sets itself, or that would let a spec escape the agent's control.
const REFUSED: &[(&str, &str)] = &[
    ("port", "the agent owns it: use the spec's `port`"),
    ("bind", "the agent owns it: set [instances] bind in agent.toml"),
    ("dir", "the agent owns the data directory"),
    ("logfile", "the agent owns the log file"),
    ("pidfile", "the agent records the pid itself"),
    ("daemonize", "the agent runs the server in the foreground"),
    ("supervised", "the agent supervises the server itself"),
    ("include", "the agent renders the whole config file"),
    ("unixsocket", "the agent owns the server's sockets"),
    ("unixsocketperm", "the agent owns the server's sockets"),
    ("tls-port", "the agent plans the server's ports"),
    ("cluster-port", "the agent plans the server's ports"),
    ("maxmemory", "use the spec's `maxmemory`"),
    ("requirepass", "use the spec's `password` or `password_file`"),
    ("masterauth", "use the spec's `password` or `password_file`"),
    ("replicaof", "use the spec's `replica_of`"),
    ("slaveof", "use the spec's `replica_of`"),
    ("loadmodule", "loading modules is not allowed"),
    ("enable-module-command", "loading modules is not allowed"),
    (
        "enable-protected-configs",
        "it would allow changing agent-owned paths at runtime",
    ),
    (
        "rename-command",
        "the agent needs the server's commands under their own names",
    ),
    ("aclfile", "a spec never names a path on the host"),
    ("cluster-config-file", "a spec never names a path on the host"),
    ("tls-cert-file", "a spec never names a path on the host"),
    ("tls-key-file", "a spec never names a path on the host"),
    ("tls-client-cert-file", "a spec never names a path on the host"),
    ("tls-client-key-file", "a spec never names a path on the host"),
    ("tls-ca-cert-file", "a spec never names a path on the host"),
    ("tls-ca-cert-dir", "a spec never names a path on the host"),
    ("tls-dh-params-file", "a spec never names a path on the host"),
    (
        "tls-key-file-pass",
        "a spec never names a TLS key file, so it has no key password either",
    ),
    (
        "tls-client-key-file-pass",
        "a spec never names a TLS key file, so it has no key password either",
    ),
];

/// Keys of `redis.conf` that the agent writes itself; what is left of a rendered file
/// without them (and without the password and replication lines) is the spec's.
const AGENT_OWNED: &[&str] = &["port", "bind", "dir", "logfile", "daemonize", "supervised"];

/// The INFO sections health reads: loading and save status, role and link,
/// memory, rejected connections.
const HEALTH_SECTIONS: [&str; 4] = ["persistence", "replication", "memory", "stats"];

/// PING and the INFO a health probe asks for (the sections health reads: a fraction
/// of a full INFO), encoded once: it goes to every instance every second.
static HEALTH_PROBE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut info = redis::cmd("INFO");
    for section in HEALTH_SECTIONS {
        info.arg(section);
    }
    encode(&[redis::cmd("PING"), info])
});

/// PING and the full INFO of a metrics sample, encoded once.
static FULL_PROBE: LazyLock<Vec<u8>> = LazyLock::new(|| encode(&[redis::cmd("PING"), redis::cmd("INFO")]));

impl Engine for RedisEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Redis
    }

    fn spec_problems(&self, spec: &InstanceSpec, _nofile_hard_limit: u64) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Some(name) = spec.config.get("dbfilename") {
            if snapshot::rdb_file(std::path::Path::new("."), name).is_none() {
                problems.push((
                    "config.dbfilename".into(),
                    format!("{name:?} is not a file name (the agent owns the directory)"),
                ));
            }
        }
        // With AOF on, Redis loads its AOF at a start and ignores an RDB: a restored
        // RDB would be silently skipped and the server would start empty.
        let aof = spec
            .config
            .get("appendonly")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
        if aof && spec.backup.restore_from.is_some() {
            problems.push((
                "restore_from".into(),
                "a restore places an RDB, which Redis ignores with appendonly yes: restore with appendonly no, then turn it on (a live change)".into(),
            ));
        }
        problems
    }

    fn config_file_name(&self) -> &'static str {
        "redis.conf"
    }

    fn refuse_config_key(&self, key: &str) -> Option<String> {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Some("not a Redis config key (letters, digits and `-` only)".into());
        }
        REFUSED
            .iter()
            .find(|(refused, _)| *refused == key)
            .map(|(_, why)| (*why).to_string())
    }

    fn ports(&self, port: u16) -> Vec<u16> {
        vec![port]
    }

    fn settings(&self, spec: &InstanceSpec) -> Settings {
        let mut config = spec.config.clone();
        if let Some(bytes) = spec.maxmemory {
            config.insert("maxmemory".into(), bytes.to_string());
        }
        Settings {
            config,
            replica_of: spec.replica_of.clone(),
            password: spec.password.clone(),
        }
    }

    fn render_config(&self, spec: &InstanceSpec, layout: &Layout, _previous: Option<&str>) -> String {
        let settings = self.settings(spec);
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(out, "# Rendered by ker-agent for instance {:?}.", spec.name);
        let _ = writeln!(
            out,
            "# Do not edit: the agent rewrites this file; change the instance's spec."
        );
        if !settings.config.is_empty() {
            let _ = writeln!(out, "\n# The spec's settings");
            for (key, value) in &settings.config {
                let _ = writeln!(out, "{key} {}", quote(value));
            }
        }
        if let Some(password) = &settings.password {
            let _ = writeln!(out, "requirepass {}", quote(password.expose()));
            // Replicas authenticate to their master with the same password.
            let _ = writeln!(out, "masterauth {}", quote(password.expose()));
        }
        if let Some(master) = &settings.replica_of {
            let _ = writeln!(out, "replicaof {} {}", quote(&master.host), master.port);
        }
        // Agent-owned settings come last so that nothing above can override them.
        let _ = writeln!(out, "\n# Owned by the agent");
        let _ = writeln!(out, "port {}", spec.port);
        let bind: Vec<String> = layout.bind.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "bind {}", bind.join(" "));
        let _ = writeln!(out, "dir {}", quote(&layout.data_dir.to_string_lossy()));
        let _ = writeln!(out, "logfile {}", quote(&layout.log_file.to_string_lossy()));
        let _ = writeln!(out, "daemonize no");
        let _ = writeln!(out, "supervised no");
        out
    }

    fn rendered_settings(&self, config_text: &str) -> Settings {
        let mut settings = Settings::default();
        for args in config_text.lines().filter_map(split_config_line) {
            match args.as_slice() {
                [key, ..] if key.starts_with('#') => {}
                [key, value] if key == "requirepass" => settings.password = Some(Secret::new(value)),
                [key, _] if key == "masterauth" => {}
                [key, host, port] if key == "replicaof" => {
                    settings.replica_of = port.parse().ok().map(|port| ReplicaOf {
                        host: host.clone(),
                        port,
                    })
                }
                [key, value] if !AGENT_OWNED.contains(&key.as_str()) => {
                    settings.config.insert(key.clone(), value.clone());
                }
                _ => {}
            }
        }
        settings
    }

    fn mutability(&self, key: &str) -> Mutability {
        if IMMUTABLE.contains(&key) {
            Mutability::Restart
        } else {
            Mutability::Live
        }
    }

    fn default_value(&self, key: &str) -> Option<&'static str> {
        DEFAULTS
            .binary_search_by(|(k, _)| (*k).cmp(key))
            .ok()
            .map(|i| DEFAULTS[i].1)
    }

    fn args(&self, layout: &Layout) -> Vec<OsString> {
        vec![layout.config_file.clone().into_os_string()]
    }

    fn probe<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Readiness> {
        Box::pin(super::session::ping_readiness(target))
    }

    fn host_needs(&self, spec: &InstanceSpec) -> HostNeeds {
        let number = |key: &str, default: u64| {
            spec.config
                .get(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        HostNeeds {
            listen_backlog: number("tcp-backlog", 511),
            // Redis reserves 32 descriptors beyond its clients for itself.
            nofile: spec.limits.nofile.unwrap_or(number("maxclients", 10_000) + 32),
        }
    }

    fn info_raw(&self, reply: &[u8]) -> std::collections::BTreeMap<String, String> {
        super::redis_stats(reply).raw
    }

    fn verify_pid<'a>(&'a self, session: &'a mut Session, pid: u32) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(session.verify_pid(pid))
    }

    fn sample<'a>(&'a self, session: &'a mut Session, depth: Depth) -> BoxFuture<'a, Result<Sample, ClientError>> {
        Box::pin(async move {
            let request: &[u8] = match depth {
                Depth::Health => &HEALTH_PROBE,
                Depth::Full => &FULL_PROBE,
            };
            let (ping, mut replies) = ping_and_encoded(session, request, 2).await?;
            let reply = match replies.pop().unwrap_or(Value::Nil) {
                // Redis before 7.0 takes one section at a time and refuses this INFO;
                // those get the full one.
                Value::ServerError(_) if depth == Depth::Health => {
                    let mut replies = session.pipeline("INFO", &[redis::cmd("INFO")]).await?;
                    info_text(session, replies.pop())?
                }
                other => info_text(session, Some(other))?,
            };
            Ok(Sample {
                ping,
                stats: super::redis_stats_typed(&reply),
                reply,
            })
        })
    }

    /// Redis saves into `temp-<pid>.rdb` and, once complete, renames it over its
    /// `dbfilename` (`dump.rdb` unless the spec names another: then the size of the
    /// last save is not known).
    fn save_progress(&self, data_dir: &std::path::Path, pid: u32) -> Option<super::SaveProgress> {
        let written = std::fs::metadata(data_dir.join(format!("temp-{pid}.rdb"))).ok()?.len();
        let previous = std::fs::metadata(data_dir.join("dump.rdb")).ok().map(|m| m.len());
        Some(super::SaveProgress {
            written_bytes: written,
            previous_bytes: previous,
        })
    }

    fn backup_shape(&self) -> BackupShape {
        BackupShape::File { extension: "rdb" }
    }

    fn start_snapshot<'a>(&'a self, session: &'a mut Session) -> BoxFuture<'a, Result<SnapshotStart, ClientError>> {
        Box::pin(snapshot::start_bgsave(session, true))
    }

    fn persistence<'a>(
        &'a self,
        session: &'a mut Session,
        _data_dir: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<Persistence, ClientError>> {
        Box::pin(snapshot::redis_persistence(session))
    }

    fn snapshot_path<'a>(
        &'a self,
        session: &'a mut Session,
        data_dir: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<std::path::PathBuf, ClientError>> {
        Box::pin(snapshot::redis_snapshot_path(session, data_dir))
    }

    /// The spec's `dbfilename`, or Redis's default. (Redis with `appendonly yes`
    /// loads its AOF, not this file: the spec check refuses a restore into one.)
    fn restore_path(&self, spec: &InstanceSpec, data_dir: &std::path::Path) -> std::path::PathBuf {
        spec.config
            .get("dbfilename")
            .and_then(|name| snapshot::rdb_file(data_dir, name))
            .unwrap_or_else(|| data_dir.join("dump.rdb"))
    }

    fn request_stop<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, StopRequest> {
        Box::pin(async move {
            let mut conn = match Connection::open(target).await {
                Ok(conn) => conn,
                Err(e) => return StopRequest::Signal { reason: e.to_string() },
            };
            // SHUTDOWN goes only to the process the agent owns; anything else (a
            // stranger on the port, no password) is stopped through its pidfd.
            if let Err(e) = conn.verify_pid(target.pid).await {
                return StopRequest::Signal { reason: e.to_string() };
            }
            // Ask the running server, not the spec: save points or AOF may have been
            // changed at runtime. When unsure, save: nothing is lost that way.
            let persists = persistence(&mut conn).await.unwrap_or(true);
            let command = if persists { "SHUTDOWN SAVE" } else { "SHUTDOWN NOSAVE" };
            match conn.call(command, &[]).await {
                // A successful SHUTDOWN never replies: the server closes the connection.
                Err(ClientError::Io { .. }) | Err(ClientError::Timeout { .. }) => StopRequest::Sent {
                    command: command.to_string(),
                },
                Err(e) if e.is_auth() => StopRequest::Signal { reason: e.to_string() },
                Err(e) => StopRequest::Refused {
                    command: command.to_string(),
                    error: e.to_string(),
                },
                Ok(reply) => StopRequest::Refused {
                    command: command.to_string(),
                    error: format!("unexpected reply {reply:?}"),
                },
            }
        })
    }

    fn config_set<'a>(
        &'a self,
        session: &'a mut Session,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<SetOutcome, ClientError>> {
        Box::pin(set_and_read_back(session, key, value))
    }

    fn read_current<'a>(
        &'a self,
        session: &'a mut Session,
        keys: &'a [&'a str],
        passwords: Option<&'a [Secret]>,
    ) -> BoxFuture<'a, Result<Current, ClientError>> {
        Box::pin(async move {
            // `ACL GETUSER` would list every password, but costs the server 0.3 ms per
            // call; `requirepass` (set with every change of passwords) costs 8 µs.
            let password_keys: &[&str] = if passwords.is_some() {
                &["requirepass", "masterauth"]
            } else {
                &[]
            };
            let ConfigRead { config, extra, .. } = config_get_all(session, keys, password_keys, &[]).await?;
            let mut current = Current {
                config,
                ..Current::default()
            };
            if let Some(passwords) = passwords {
                let first = passwords.first().map_or("", Secret::expose);
                let is_first = |key: &str| extra.get(key).map(String::as_str) == Some(first);
                current.passwords_match =
                    Some(passwords.len() <= 1 && is_first("requirepass") && is_first("masterauth"));
            }
            Ok(current)
        })
    }

    fn set_master<'a>(
        &'a self,
        session: &'a mut Session,
        master: Option<&'a ReplicaOf>,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(replicate(session, "REPLICAOF", master))
    }

    fn set_passwords<'a>(
        &'a self,
        session: &'a mut Session,
        passwords: &'a [Secret],
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            // The ACL sets the default user's passwords; `requirepass` is set too so
            // that CONFIG GET tells the truth (it skips the setter when the value is
            // unchanged, so it alone cannot drop a second password). MULTI makes it one
            // step: no client finds its password missing in between.
            let first = passwords.first().map_or("", Secret::expose);
            let mut commands = vec![redis::cmd("MULTI")];
            let mut requirepass = redis::cmd("CONFIG");
            requirepass.arg("SET").arg("requirepass").arg(first);
            commands.push(requirepass);
            let mut acl = redis::cmd("ACL");
            acl.arg("SETUSER").arg("default").arg("resetpass");
            if passwords.is_empty() {
                acl.arg("nopass");
            }
            for password in passwords {
                acl.arg(format!(">{}", password.expose()));
            }
            commands.push(acl);
            let mut masterauth = redis::cmd("CONFIG");
            masterauth.arg("SET").arg("masterauth").arg(first);
            commands.push(masterauth);
            commands.push(redis::cmd("EXEC"));
            let replies = session.pipeline("CONFIG SET requirepass", &commands).await?;
            // Never show the replies themselves: an error may quote its arguments.
            match replies.last() {
                Some(Value::Array(results)) if results.len() == commands.len() - 2 => {
                    match results.iter().find(|r| matches!(r, Value::ServerError(_))) {
                        Some(Value::ServerError(error)) => {
                            Err(session.unexpected("CONFIG SET requirepass", format!("refused ({})", error.code())))
                        }
                        _ => Ok(()),
                    }
                }
                _ => Err(session.unexpected("CONFIG SET requirepass", "the transaction was not executed".into())),
            }
        })
    }
}

/// Whether the server writes its data to disk: save points or `appendonly yes`.
async fn persistence(conn: &mut Connection) -> Result<bool, ClientError> {
    let save = conn.config_get("save").await?.unwrap_or_default();
    let aof = conn.config_get("appendonly").await?.unwrap_or_default();
    Ok(!save.trim().is_empty() || aof.eq_ignore_ascii_case("yes"))
}

/// Quotes a value for `redis.conf`, which Redis splits like a shell line: inside double
/// quotes, `\` and `"` are escaped. Values never hold control characters (validation
/// refuses them), so nothing else needs escaping.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Splits one line of `redis.conf` the way Redis does (`sdssplitargs`) for the quoting
/// the renderer uses. Returns `None` on unbalanced quotes.
pub fn split_config_line(line: &str) -> Option<Vec<String>> {
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Some(args);
        };
        let mut current = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => current.push(chars.next()?),
                    '"' => break,
                    c => current.push(c),
                }
            }
            // A closing quote must be followed by a space or the end of the line.
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                current.push(c);
                chars.next();
            }
        }
        args.push(current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ReplicaOf, Secret};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn layout() -> Layout {
        Layout {
            instance_dir: PathBuf::from("/var/lib/ker-agent/instances/cache-1"),
            data_dir: PathBuf::from("/var/lib/ker-agent/instances/cache-1/data"),
            config_file: PathBuf::from("/var/lib/ker-agent/instances/cache-1/redis.conf"),
            log_file: PathBuf::from("/var/log/ker-agent/cache-1.log"),
            bind: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            bind_interface: None,
        }
    }

    /// The directives of a rendered file, as Redis would read them.
    fn directives(text: &str) -> Vec<Vec<String>> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| split_config_line(l).expect("unbalanced line"))
            .collect()
    }

    #[test]
    fn renders_agent_owned_keys_last_and_spec_fields() {
        let mut spec = InstanceSpec::example("cache-1", 6380);
        spec.maxmemory = Some(256 * 1024 * 1024);
        spec.password = Some(Secret::new("p\"w \\d"));
        spec.replica_of = Some(ReplicaOf {
            host: "10.0.0.5".into(),
            port: 6379,
        });
        spec.config.insert("maxmemory-policy".into(), "allkeys-lru".into());
        spec.config.insert("save".into(), "3600 1 300 100".into());
        let text = RedisEngine.render_config(&spec, &layout(), None);
        let d = directives(&text);
        let find = |k: &str| d.iter().find(|l| l[0] == k).cloned().unwrap_or_default();
        assert_eq!(find("port"), ["port", "6380"]);
        assert_eq!(find("bind"), ["bind", "127.0.0.1", "::1"]);
        assert_eq!(find("dir"), ["dir", "/var/lib/ker-agent/instances/cache-1/data"]);
        assert_eq!(find("daemonize"), ["daemonize", "no"]);
        assert_eq!(find("maxmemory"), ["maxmemory", "268435456"]);
        assert_eq!(find("requirepass"), ["requirepass", "p\"w \\d"]);
        assert_eq!(find("masterauth"), ["masterauth", "p\"w \\d"]);
        assert_eq!(find("replicaof"), ["replicaof", "10.0.0.5", "6379"]);
        assert_eq!(find("maxmemory-policy"), ["maxmemory-policy", "allkeys-lru"]);
        assert_eq!(find("save"), ["save", "3600 1 300 100"]);
        assert!(!d.iter().any(|l| l[0] == "pidfile"));
        let port_line = d.iter().position(|l| l[0] == "port").unwrap();
        let policy_line = d.iter().position(|l| l[0] == "maxmemory-policy").unwrap();
        assert!(policy_line < port_line, "spec keys must come before agent-owned keys");
    }

    #[test]
    fn the_settings_are_read_back_from_the_rendered_file() {
        let mut spec = InstanceSpec::example("a", 7000);
        spec.password = Some(Secret::new("p\"w \\d"));
        spec.maxmemory = Some(1024);
        spec.replica_of = Some(ReplicaOf {
            host: "::1".into(),
            port: 6379,
        });
        spec.config.insert("save".into(), "".into());
        spec.config.insert("maxmemory-policy".into(), "allkeys-lru".into());
        let text = RedisEngine.render_config(&spec, &layout(), None);
        let settings = RedisEngine.rendered_settings(&text);
        assert_eq!(settings, RedisEngine.settings(&spec));
        assert_eq!(settings.password, Some(Secret::new("p\"w \\d")));
        assert_eq!(settings.config.get("maxmemory").map(String::as_str), Some("1024"));
        assert_eq!(RedisEngine.rendered_settings("port 1\n"), Settings::default());
    }

    #[test]
    fn immutable_keys_need_a_restart_and_defaults_are_known() {
        for key in ["databases", "io-threads", "cluster-enabled", "daemonize", "tcp-backlog"] {
            assert_eq!(RedisEngine.mutability(key), Mutability::Restart, "{key}");
        }
        for key in ["maxmemory-policy", "maxmemory", "save", "appendonly", "hz", "port"] {
            assert_eq!(RedisEngine.mutability(key), Mutability::Live, "{key}");
        }
        assert_eq!(RedisEngine.default_value("maxmemory-policy"), Some("noeviction"));
        assert_eq!(RedisEngine.default_value("save"), Some("3600 1 300 100 60 10000"));
        assert_eq!(RedisEngine.default_value("no-such-key"), None);
    }

    /// The tables agree with a real server's `CONFIG GET *`: every default is what
    /// the server reported (but `save`, which that server had set to ""), and every
    /// key a spec may set and the server knows is in one table or the other.
    #[test]
    fn the_defaults_table_matches_a_real_server() {
        let fixture = include_str!("../../tests/fixtures/redis/config-get-all.txt");
        let lines: Vec<&str> = fixture.split('\n').collect();
        let real: BTreeMap<&str, &str> = lines.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        assert!(DEFAULTS.windows(2).all(|w| w[0].0 < w[1].0), "DEFAULTS must be sorted");
        for (key, value) in DEFAULTS {
            if *key != "save" {
                assert_eq!(real.get(key), Some(value), "{key}");
            }
        }
        for key in real.keys() {
            if RedisEngine.refuse_config_key(key).is_none() {
                assert!(
                    IMMUTABLE.contains(key) || RedisEngine.default_value(key).is_some(),
                    "{key} is in neither table"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn any_value_without_control_characters_round_trips(value in "[^\\p{Cc}]{0,40}") {
            let line = format!("key {}", quote(&value));
            let args = split_config_line(&line).unwrap();
            prop_assert_eq!(args, vec!["key".to_string(), value]);
        }
    }
}

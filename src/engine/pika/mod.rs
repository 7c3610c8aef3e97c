//! The `pika` engine (Pika 4.x): a complete `pika.conf` (`config_file.rs`, from the
//! key tables of `keys.rs`), `pika -c <file>`, three ports per instance (one of them on
//! all addresses whatever the config says), the open-files limit Pika insists on,
//! readiness by `PING`, the stop by SIGTERM (Pika looks at it every 5 s), `SLAVEOF` for
//! replication, and one admin password plus a non-admin ACL user (`limit`) that must
//! never be left without a password. The facts behind each choice, all checked on a
//! real Pika 4.0.1, are in the comments; Pika speaks the Redis protocol but is not
//! Redis.

mod config_file;
mod keys;
mod snapshot;

use super::client::{ClientError, Target};
use super::commands::{config_get_all, expect_ok, info_text, ping_and, replicate, set_and_read_back};
use super::session::Session;
use super::{
    BoxFuture, Current, Depth, Engine, EngineKind, HostNeeds, Layout, Mutability, Readiness, Sample, SetOutcome,
    Settings, StopRequest, UnboundPort,
};
use crate::digest::sha256_hex;
use crate::spec::{InstanceSpec, ReplicaOf, Secret};
use config_file::{user_password, DATA_DIRS};
use keys::{BASE, DEFAULTS, LIVE};
use redis::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::time::Duration;

/// Pika 4.x.
#[derive(Debug, Clone, Copy, Default)]
pub struct PikaEngine;

/// Pika aborts at start unless its open-files limit is at least `maxclients` plus this.
const NOFILE_BEYOND_MAXCLIENTS: u64 = 5000;
/// `maxclients` when the config file does not set it.
const DEFAULT_MAXCLIENTS: u64 = 20_000;
/// Pika looks for a stop request every 5 s and then joins its threads: 10 or 13 s from
/// SIGTERM to exit, idle or with a million keys (BENCHMARKS.md). A shorter stop
/// timeout would SIGKILL healthy instances.
const MIN_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The highest port whose `port + 10001` (rsync) still exists.
const MAX_PORT: u16 = u16::MAX - 10_001;

/// Keys the agent sets itself, or that would let a spec escape the agent's control.
const REFUSED: &[(&str, &str)] = &[
    ("port", "the agent owns it: use the spec's `port`"),
    ("daemonize", "the agent runs the server in the foreground"),
    ("db-path", "the agent owns the data directory"),
    ("log-path", "the agent owns the log directory"),
    ("dump-path", "the agent owns the data directory"),
    ("db-sync-path", "the agent owns the data directory"),
    ("pidfile", "the agent records the pid itself"),
    ("requirepass", "use the spec's `password` or `password_file`"),
    ("masterauth", "use the spec's `password` or `password_file`"),
    (
        "userpass",
        "the agent sets it, so that no AUTH with any password gets in",
    ),
    ("slaveof", "use the spec's `replica_of`"),
    ("network-interface", "the agent plans the instance's addresses"),
    ("aclfile", "a spec never names a path on the host"),
    (
        "rename-command",
        "the agent needs the server's commands under their own names",
    ),
    ("run-id", "the server sets it"),
    ("replication-id", "the server sets it"),
    ("internal-used-unfinished-full-sync", "the server sets it"),
];

impl Engine for PikaEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Pika
    }

    fn spec_problems(&self, spec: &InstanceSpec, nofile_hard_limit: u64) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| problems.push((field.to_string(), message));
        if spec.port > MAX_PORT {
            problem(
                "port",
                format!("Pika also listens on port + 2000 and port + 10001, so the port must be at most {MAX_PORT}"),
            );
        }
        if spec.maxmemory.is_some() {
            problem(
                "maxmemory",
                "Pika keeps its data on disk and has no such limit; size its memory under [config] \
                 (write-buffer-size, cache-maxmemory)"
                    .into(),
            );
        }
        if let Some(timeout) = spec.stop_timeout.filter(|t| *t < MIN_STOP_TIMEOUT) {
            problem(
                "stop_timeout",
                format!(
                    "{} is too short for Pika, which looks for a stop every 5 s and takes up to about 13 s to \
                     exit: at least {}s, or a healthy Pika would be killed",
                    humantime::format_duration(timeout),
                    MIN_STOP_TIMEOUT.as_secs()
                ),
            );
        }
        for (key, value) in &spec.config {
            if value.trim() != value {
                problem(
                    &format!("config.{key}"),
                    "Pika trims the spaces around a value: write it without them".into(),
                );
            }
        }
        let needed = match maxclients(spec) {
            Ok(maxclients) => maxclients + NOFILE_BEYOND_MAXCLIENTS,
            Err(message) => {
                problem("config.maxclients", message);
                return problems;
            }
        };
        match spec.limits.nofile {
            Some(nofile) if nofile < needed => problem(
                "limits.nofile",
                format!("Pika needs at least maxclients + {NOFILE_BEYOND_MAXCLIENTS} = {needed} open files"),
            ),
            _ => {}
        }
        let nofile = spec.limits.nofile.unwrap_or(0).max(needed);
        if nofile > nofile_hard_limit {
            problem(
                if spec.limits.nofile.is_some_and(|n| n > needed) {
                    "limits.nofile"
                } else {
                    "config.maxclients"
                },
                format!(
                    "Pika would need {nofile} open files, above the agent's hard limit of {nofile_hard_limit}: \
                     lower maxclients, or raise the agent's limit (LimitNOFILE= of its systemd unit)"
                ),
            );
        }
        problems
    }

    fn min_stop_timeout(&self) -> Duration {
        MIN_STOP_TIMEOUT
    }

    fn child_nofile(&self, spec: &InstanceSpec) -> Option<u64> {
        let needed = maxclients(spec).unwrap_or(DEFAULT_MAXCLIENTS) + NOFILE_BEYOND_MAXCLIENTS;
        Some(spec.limits.nofile.unwrap_or(0).max(needed))
    }

    /// Pika's `master_host` is the host's own idea of the master's address (seen: the
    /// replica's own address), not the one `SLAVEOF` was given: only the port can be
    /// compared.
    fn is_master(&self, wanted: &ReplicaOf, seen: &str) -> bool {
        seen.rsplit_once(':')
            .is_some_and(|(_, port)| port == wanted.port.to_string())
    }

    fn same_value(&self, wanted: &str, got: &str) -> bool {
        super::values_match(wanted, got, pika_size)
    }

    fn data_dirs(&self, layout: &Layout) -> Vec<std::path::PathBuf> {
        DATA_DIRS.iter().map(|(_, dir)| layout.data_dir.join(dir)).collect()
    }

    fn password_grace_note(&self) -> Option<&'static str> {
        Some(
            "Pika has one admin password: until the grace period ends the previous one still works, as Pika's \
             non-admin user (userpass), which may run every command not in userblacklist",
        )
    }

    fn config_file_name(&self) -> &'static str {
        "pika.conf"
    }

    fn refuse_config_key(&self, key: &str) -> Option<String> {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Some("not a Pika config key (letters, digits, `-` and `_` only)".into());
        }
        REFUSED
            .iter()
            .find(|(refused, _)| *refused == key)
            .map(|(_, why)| (*why).to_string())
    }

    fn refuse_config_value(&self, value: &str) -> Option<&'static str> {
        // Pika's config reader skips the spaces before a value; a value read back
        // shorter than written would be another value (another password).
        (value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']))
            .then_some("begins or ends with a space or tab, which Pika's config file cannot hold")
    }

    fn ports(&self, port: u16) -> Vec<u16> {
        // Replication on port + 2000, rsync on port + 10001.
        [Some(port), port.checked_add(2000), port.checked_add(10_001)]
            .into_iter()
            .flatten()
            .collect()
    }

    fn unbound_ports(&self, port: u16) -> Vec<UnboundPort> {
        port.checked_add(2000)
            .map(|port| UnboundPort {
                port,
                purpose: "replication",
                why: "Pika 4.0 binds its replication port to 0.0.0.0, whatever network-interface says",
            })
            .into_iter()
            .collect()
    }

    fn settings(&self, spec: &InstanceSpec) -> Settings {
        Settings {
            config: spec.config.clone(),
            replica_of: spec.replica_of.clone(),
            password: spec.password.clone(),
        }
    }

    fn render_config(&self, spec: &InstanceSpec, layout: &Layout, previous: Option<&str>) -> String {
        config_file::render(spec, layout, previous)
    }

    fn rendered_settings(&self, config_text: &str) -> Settings {
        config_file::rendered_settings(config_text)
    }

    /// Pika listens on 127.0.0.1 and the first address of `network-interface`, or on
    /// all addresses without it (and then also needs a default route or an `eth0` to
    /// start at all).
    fn binds_by_interface(&self) -> bool {
        true
    }

    /// Pika listens on IPv4 only: the first IPv4 bind address (an unspecified one means
    /// loopback, where Pika always listens).
    fn client_address(&self, bind: &[IpAddr]) -> Option<IpAddr> {
        bind.iter().find(|ip| ip.is_ipv4()).map(|ip| {
            if ip.is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                *ip
            }
        })
    }

    fn mutability(&self, key: &str) -> Mutability {
        if LIVE.binary_search(&key).is_ok() {
            Mutability::Live
        } else {
            Mutability::Restart
        }
    }

    fn default_value(&self, key: &str) -> Option<&'static str> {
        let find = |table: &'static [(&'static str, &'static str)]| {
            table.binary_search_by(|(k, _)| (*k).cmp(key)).ok().map(|i| table[i].1)
        };
        find(DEFAULTS).or_else(|| find(BASE))
    }

    fn args(&self, layout: &Layout) -> Vec<OsString> {
        vec!["-c".into(), layout.config_file.clone().into_os_string()]
    }

    /// Pika prints its whole config, passwords included, at its start, as INFO lines
    /// logged before it sets glog up, which go to stderr (the instance's log). glog
    /// reads its threshold from GLOG_minloglevel until Pika sets it to 0 once set up:
    /// that start dump is left out, fatal start errors still appear, and everything
    /// Pika logs afterwards is kept.
    fn env(&self) -> &'static [(&'static str, &'static str)] {
        &[("GLOG_minloglevel", "1")]
    }

    fn probe<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Readiness> {
        // Pika binds its port only once its databases are open: no LOADING state.
        Box::pin(super::session::ping_readiness(target))
    }

    fn host_needs(&self, spec: &InstanceSpec) -> HostNeeds {
        HostNeeds {
            // Pika 4.0.1 listens with a backlog of 1024 (seen with `ss -ltn`).
            listen_backlog: 1024,
            nofile: self
                .child_nofile(spec)
                .unwrap_or(DEFAULT_MAXCLIENTS + NOFILE_BEYOND_MAXCLIENTS),
        }
    }

    fn info_raw(&self, reply: &[u8]) -> BTreeMap<String, String> {
        super::pika_stats(reply).raw
    }

    fn verify_pid<'a>(&'a self, session: &'a mut Session, pid: u32) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(session.verify_pid(pid))
    }

    fn sample<'a>(&'a self, session: &'a mut Session, depth: Depth) -> BoxFuture<'a, Result<Sample, ClientError>> {
        Box::pin(async move {
            // Plain INFO: server, data, clients, stats, cpu, replication; its keyspace
            // section has no counts. A full sample adds `INFO keyspace 0`: the counts of
            // Pika's last key scan, without starting one (`INFO keyspace 1` would start
            // a full scan, which the agent never does).
            let mut commands = vec![redis::cmd("INFO")];
            if depth == Depth::Full {
                let mut keyspace = redis::cmd("INFO");
                keyspace.arg("keyspace").arg("0");
                commands.push(keyspace);
            }
            let (ping, replies) = ping_and(session, commands).await?;
            let mut reply = Vec::new();
            for part in replies {
                if !reply.is_empty() {
                    reply.extend_from_slice(b"\r\n");
                }
                reply.extend(info_text(session, Some(part))?);
            }
            Ok(Sample {
                ping,
                stats: super::pika_stats_typed(&reply),
                reply,
            })
        })
    }

    fn backup_shape(&self) -> crate::engine::BackupShape {
        crate::engine::BackupShape::Directory
    }

    fn start_snapshot<'a>(
        &'a self,
        session: &'a mut Session,
    ) -> BoxFuture<'a, Result<crate::engine::SnapshotStart, ClientError>> {
        // Pika 4.0 has no `BGSAVE SCHEDULE`.
        Box::pin(crate::engine::snapshot::start_bgsave(session, false))
    }

    fn persistence<'a>(
        &'a self,
        session: &'a mut Session,
        data_dir: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<crate::engine::Persistence, ClientError>> {
        Box::pin(snapshot::persistence(session, data_dir))
    }

    fn snapshot_path<'a>(
        &'a self,
        session: &'a mut Session,
        data_dir: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<std::path::PathBuf, ClientError>> {
        Box::pin(snapshot::snapshot_path(session, data_dir))
    }

    /// The databases of a dump go where Pika keeps its databases (`db-path`).
    fn restore_path(&self, _spec: &InstanceSpec, data_dir: &std::path::Path) -> std::path::PathBuf {
        data_dir.join("db")
    }

    /// Pika creates its directories at every start; only what is in `db/` is data.
    fn data_files(&self, data_dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        crate::engine::names_in(&data_dir.join("db"), "db/")
    }

    fn request_stop<'a>(&'a self, _target: &'a Target) -> BoxFuture<'a, StopRequest> {
        // SIGTERM and SHUTDOWN do the same in Pika (a flag its main loop reads every
        // 5 s); the signal needs no connection and no password.
        Box::pin(async {
            StopRequest::Signal {
                reason: "Pika stops on SIGTERM".into(),
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
            let (password_keys, others): (&[&str], Vec<redis::Cmd>) = match passwords {
                // CONFIG GET userpass shows the file's value, not what the non-admin
                // user accepts: ACL GETUSER does (as SHA-256 digests).
                Some(_) => (&["requirepass", "masterauth"], vec![acl_getuser_limit()]),
                None => (&[], Vec::new()),
            };
            let read = config_get_all(session, keys, password_keys, &others).await?;
            let mut current = Current {
                config: read.config,
                ..Current::default()
            };
            if let Some(passwords) = passwords {
                let get = |key: &str| read.extra.get(key).cloned().unwrap_or_default();
                current.passwords_match = Some(match passwords {
                    [] => get("requirepass").is_empty() && get("masterauth").is_empty(),
                    [only] => {
                        get("requirepass") == only.expose()
                            && get("masterauth") == only.expose()
                            && read.others.first().and_then(limit_user_digests)
                                == Some(vec![sha256_hex(user_password(only).as_bytes())])
                    }
                    _ => false,
                });
            }
            Ok(current)
        })
    }

    fn set_master<'a>(
        &'a self,
        session: &'a mut Session,
        master: Option<&'a ReplicaOf>,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        // Pika has no REPLICAOF.
        Box::pin(replicate(session, "SLAVEOF", master))
    }

    fn set_passwords<'a>(
        &'a self,
        session: &'a mut Session,
        passwords: &'a [Secret],
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            // Pika has one admin password. A second one (the previous, during a grace
            // period) becomes the non-admin user's; otherwise that is a secret nobody
            // knows, so that no AUTH bypass exists. The non-admin user goes first: the
            // previous password then works throughout.
            //
            // Pika 4.0 reads `userpass` into its non-admin ACL user ("limit") only at
            // start; `CONFIG SET userpass` changes nothing but the value CONFIG GET
            // shows. So the user is changed with ACL SETUSER, and userpass is set too
            // for Pika's own rewrites of its file.
            let (admin, user) = match passwords {
                [] => (String::new(), String::new()),
                [only] => (only.expose().to_string(), user_password(only)),
                [new, previous, ..] => (new.expose().to_string(), previous.expose().to_string()),
            };
            let set = |key: &str, value: &str| {
                let mut set = redis::cmd("CONFIG");
                set.arg("SET").arg(key).arg(value);
                set
            };
            let mut limit = redis::cmd("ACL");
            limit.arg("SETUSER").arg(LIMIT_USER).arg("resetpass");
            if user.is_empty() {
                // No admin password either: nothing to log in to.
                limit.arg("nopass");
            } else {
                limit.arg(format!(">{user}"));
            }
            let commands = [
                limit,
                set("userpass", &user),
                set("requirepass", &admin),
                set("masterauth", &admin),
            ];
            let replies = session.pipeline("CONFIG SET requirepass", &commands).await?;
            // Never show the replies themselves: an error may quote its arguments.
            for reply in &replies {
                if let Value::ServerError(error) = reply {
                    return Err(session.unexpected("CONFIG SET requirepass", format!("refused ({})", error.code())));
                }
                expect_ok(session, "CONFIG SET requirepass", Some(reply))?;
            }
            Ok(())
        })
    }
}

/// Pika's non-admin ACL user, whose password is `userpass`.
const LIMIT_USER: &str = "limit";

fn acl_getuser_limit() -> redis::Cmd {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("GETUSER").arg(LIMIT_USER);
    cmd
}

/// The password digests of an `ACL GETUSER` reply (`flags … passwords [digest…] …`);
/// `None` when the reply has no passwords field.
fn limit_user_digests(reply: &Value) -> Option<Vec<String>> {
    let Value::Array(fields) = reply else {
        return None;
    };
    let at = fields
        .chunks_exact(2)
        .find(|pair| crate::engine::client::as_text(&pair[0]).as_deref() == Some("passwords"))?;
    match &at[1] {
        Value::Array(digests) => Some(digests.iter().filter_map(crate::engine::client::as_text).collect()),
        _ => None,
    }
}

/// `maxclients` of a spec: its `[config]` value or Pika's default.
fn maxclients(spec: &InstanceSpec) -> Result<u64, String> {
    match spec.config.get("maxclients") {
        None => Ok(DEFAULT_MAXCLIENTS),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a number of clients")),
    }
}

/// A Pika size (`256M`, `4k`): K, M and G are powers of 1024; plain digits are bytes.
fn pika_size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let (digits, scale) = match lower.as_bytes().last()? {
        b'k' => (&lower[..lower.len() - 1], 1u64 << 10),
        b'm' => (&lower[..lower.len() - 1], 1 << 20),
        b'g' => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    pub(super) fn layout() -> Layout {
        Layout {
            instance_dir: PathBuf::from("/var/lib/ker-agent/instances/p"),
            data_dir: PathBuf::from("/var/lib/ker-agent/instances/p/data"),
            config_file: PathBuf::from("/var/lib/ker-agent/instances/p/pika.conf"),
            log_file: PathBuf::from("/var/log/ker-agent/p.log"),
            bind: vec!["127.0.0.1".parse().unwrap()],
            bind_interface: Some("lo".into()),
        }
    }

    pub(super) fn spec() -> InstanceSpec {
        let mut spec = InstanceSpec::example("p", 9221);
        spec.engine = EngineKind::Pika;
        spec.version = "4.0".into();
        spec.config.insert("maxclients".into(), "1000".into());
        spec
    }

    #[test]
    fn command_line_names_the_rendered_file() {
        assert_eq!(
            PikaEngine.args(&layout()),
            ["-c", "/var/lib/ker-agent/instances/p/pika.conf"]
        );
    }

    #[test]
    fn three_ports_per_instance() {
        assert_eq!(PikaEngine.ports(9221), [9221, 11221, 19222]);
        assert_eq!(PikaEngine.ports(65000), [65000], "ports past 65535 do not exist");
    }

    #[test]
    fn spec_problems_name_the_field_and_the_fix() {
        let hard = 1 << 20;
        assert!(PikaEngine.spec_problems(&spec(), hard).is_empty());

        let mut bad = spec();
        bad.port = 60000;
        bad.maxmemory = Some(1);
        bad.stop_timeout = Some(Duration::from_secs(10));
        bad.config.insert("timeout".into(), " 5".into());
        bad.limits.nofile = Some(2000);
        let fields: Vec<String> = PikaEngine
            .spec_problems(&bad, hard)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            ["port", "maxmemory", "stop_timeout", "config.timeout", "limits.nofile"]
        );

        // Pika's default maxclients (20000) needs 25000 open files.
        let mut default = spec();
        default.config.remove("maxclients");
        assert_eq!(PikaEngine.child_nofile(&default), Some(25_000));
        let problems = PikaEngine.spec_problems(&default, 20_000);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "config.maxclients");
        assert!(
            problems[0]
                .1
                .contains("25000 open files, above the agent's hard limit of 20000"),
            "{problems:?}"
        );

        let mut nan = spec();
        nan.config.insert("maxclients".into(), "many".into());
        assert_eq!(PikaEngine.spec_problems(&nan, hard)[0].0, "config.maxclients");
    }

    #[test]
    fn the_child_gets_enough_open_files() {
        let mut spec = spec();
        assert_eq!(PikaEngine.child_nofile(&spec), Some(6000));
        spec.limits.nofile = Some(100_000);
        assert_eq!(PikaEngine.child_nofile(&spec), Some(100_000));
        assert_eq!(PikaEngine.host_needs(&spec).nofile, 100_000);
    }

    #[test]
    fn live_keys_and_defaults_agree_with_a_real_server() {
        let fixture = include_str!("../../../tests/fixtures/pika/config-get-all.txt");
        let lines: Vec<&str> = fixture.split('\n').collect();
        let real: BTreeMap<&str, &str> = lines.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        assert!(LIVE.windows(2).all(|w| w[0] < w[1]), "LIVE must be sorted");
        assert!(DEFAULTS.windows(2).all(|w| w[0].0 < w[1].0), "DEFAULTS must be sorted");
        for (key, value) in DEFAULTS {
            assert_eq!(real.get(key), Some(value), "{key}");
            assert_eq!(PikaEngine.mutability(key), Mutability::Live, "{key}");
        }
        for key in ["timeout", "slowlog-max-len", "write-buffer-size", "cache-maxmemory"] {
            assert_eq!(PikaEngine.mutability(key), Mutability::Live, "{key}");
        }
        // Only a restart changes these; maxclients could kill Pika when set live.
        for key in [
            "thread-num",
            "databases",
            "db-instance-num",
            "compression",
            "maxclients",
            "slow-cmd-pool",
        ] {
            assert_eq!(PikaEngine.mutability(key), Mutability::Restart, "{key}");
        }
        assert_eq!(PikaEngine.default_value("timeout"), Some("60"));
        assert_eq!(PikaEngine.default_value("write-buffer-size"), Some("268435456"));
        assert_eq!(PikaEngine.default_value("thread-num"), Some("1"));
        assert_eq!(PikaEngine.default_value("acllog-max-len"), None);
    }

    #[test]
    fn refused_keys_and_key_syntax() {
        for key in [
            "port",
            "db-path",
            "log-path",
            "userpass",
            "requirepass",
            "slaveof",
            "network-interface",
        ] {
            assert!(PikaEngine.refuse_config_key(key).is_some(), "{key}");
        }
        for key in ["timeout", "disable_auto_compactions", "thread-num", "maxclients"] {
            assert_eq!(PikaEngine.refuse_config_key(key), None, "{key}");
        }
        assert!(PikaEngine.refuse_config_key("a b").is_some());
    }

    #[test]
    fn masters_compare_by_port_because_pika_reports_its_own_idea_of_the_host() {
        let wanted = ReplicaOf {
            host: "127.0.0.1".into(),
            port: 9301,
        };
        // From info-replica-up.txt: master_host is the host's address.
        assert!(PikaEngine.is_master(&wanted, "192.0.2.2:9301"));
        assert!(!PikaEngine.is_master(&wanted, "192.0.2.2:9302"));
    }

    #[test]
    fn the_limit_users_passwords_come_from_acl_getuser() {
        // `ACL GETUSER limit` of a real Pika 4.0.1 after `ACL SETUSER limit resetpass >userA`.
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            text("flags"),
            Value::Array(vec![text("on")]),
            text("passwords"),
            Value::Array(vec![text(
                "b6e3dc0ff5a19566dca703f84a2c09bdd5dd22891e09b9fb3fc436c5be9ecf9c",
            )]),
            text("commands"),
            text("+@all"),
            text("key"),
            text("~*"),
            text("channels"),
            text("&*"),
            text("selectors"),
            Value::Array(vec![]),
        ]);
        assert_eq!(limit_user_digests(&reply), Some(vec![sha256_hex(b"userA")]));
        assert_eq!(limit_user_digests(&Value::Nil), None);
        assert_eq!(limit_user_digests(&Value::Array(vec![text("flags")])), None);
    }

    #[test]
    fn pika_sizes_are_powers_of_1024() {
        assert!(PikaEngine.same_value("20M", "20971520"));
        assert!(PikaEngine.same_value("4k", "4096"));
        assert!(PikaEngine.same_value("yes", "YES"));
        assert!(!PikaEngine.same_value("20M", "20000000"));
        assert_eq!(pika_size("1g"), Some(1 << 30));
        assert_eq!(pika_size("x"), None);
    }
}

//! `agent.toml`: parsed and validated as a whole into [`AgentConfig`].
//!
//! Relative paths are resolved against the directory of the config file, so an example
//! config works from any working directory. Unknown keys are errors.

mod artifacts;
mod backup;

pub use artifacts::ArtifactsConfig;
pub use backup::{parse_schedule as parse_backup_schedule, BackupConfig, BackupSchedule, ScheduleOverride};

use crate::engine::EngineKind;
use crate::problem::{Checker, Problem};
use crate::units;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/ker-agent";
pub const DEFAULT_LOG_DIR: &str = "/var/log/ker-agent";
pub const DEFAULT_API_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9737);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_PASSWORD_GRACE: Duration = Duration::from_secs(60);

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The file it was read from.
    pub path: PathBuf,
    pub node_id: String,
    /// Instances live in `data_dir/instances/<name>/`.
    pub data_dir: PathBuf,
    /// Static instance manifests (`*.toml`), if any.
    pub manifest_dir: Option<PathBuf>,
    /// The allow-list of binaries: engine → version → absolute path (invariant 3).
    pub engines: BTreeMap<EngineKind, BTreeMap<String, PathBuf>>,
    pub api: ApiConfig,
    pub instances: InstanceDefaults,
    /// The control centre; `None` runs standalone (manifests and the local API).
    pub controller: Option<ControllerConfig>,
    pub monitoring: MonitoringConfig,
    /// Backups live in `backup_dir/<name>/` (default `data_dir/backups`).
    pub backup_dir: PathBuf,
    pub backup: BackupConfig,
    /// The trusted store of engine builds, for versions `engines` does not list.
    pub artifacts: Option<ArtifactsConfig>,
}

/// `[monitoring]`: how often instances are probed and sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitoringConfig {
    /// PING and the INFO fields health needs, on a kept connection.
    pub health_interval: Duration,
    /// One full INFO per instance, process and host metrics.
    pub metrics_interval: Duration,
    /// How often the values a spec sets are compared with the running server's and
    /// set back when someone changed them.
    pub drift_interval: Duration,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            health_interval: Duration::from_secs(1),
            metrics_interval: Duration::from_secs(10),
            // Drift is someone's `CONFIG SET` by hand: rare, and set back within 30 s.
            // Every 5 s cost 0.17 % of a core per 100 instances, for nothing most days.
            drift_interval: Duration::from_secs(30),
        }
    }
}

/// `[controller]`: where the desired state comes from and reports go.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// `https://…`, or `http://` to a loopback address only.
    pub url: reqwest::Url,
    pub token_file: PathBuf,
    /// Trust only this CA (PEM) instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    pub report_interval: Duration,
    /// How often a report carries everything, not only what changed since the last
    /// accepted one.
    pub full_report_interval: Duration,
    /// How long the controller may hold a desired-state request.
    pub poll_wait: Duration,
}

pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_FULL_REPORT_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(30);

/// Parses `[controller]`.
fn parse_controller(
    table: &Map<String, Value>,
    c: &mut Checker,
    resolve: &dyn Fn(String) -> PathBuf,
) -> Option<ControllerConfig> {
    let fields = c.table(
        table,
        "controller",
        &[
            "url",
            "token_file",
            "ca_file",
            "client_cert",
            "client_key",
            "report_interval",
            "full_report_interval",
            "poll_wait",
        ],
    );
    let before = c.problems.len();
    let url = c
        .required_string(&fields, "url")
        .and_then(|text| match store_url(&text) {
            Ok(url) => Some(url),
            Err(why) => {
                c.problem(fields.path("url"), why);
                None
            }
        });
    let token_file = c.required_string(&fields, "token_file").map(resolve);
    let ca_file = c.string(&fields, "ca_file").map(resolve);
    let cert = c.string(&fields, "client_cert").map(resolve);
    let key = c.string(&fields, "client_key").map(resolve);
    let client_identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            c.problem(
                fields.path("client_key"),
                "set both client_cert and client_key, or neither",
            );
            None
        }
    };
    let mut duration = |key: &str, default: Duration| match c.string(&fields, key) {
        Some(text) => match units::parse_duration(&text) {
            Ok(d) if d >= Duration::from_millis(100) => d,
            Ok(_) => {
                c.problem(fields.path(key), format!("{text:?} is too short (at least 100ms)"));
                default
            }
            Err(e) => {
                c.problem(fields.path(key), e);
                default
            }
        },
        None => default,
    };
    let report_interval = duration("report_interval", DEFAULT_REPORT_INTERVAL);
    let full_report_interval = duration("full_report_interval", DEFAULT_FULL_REPORT_INTERVAL);
    let poll_wait = duration("poll_wait", DEFAULT_POLL_WAIT);
    if full_report_interval < report_interval {
        c.problem(
            fields.path("full_report_interval"),
            format!(
                "{} is shorter than report_interval ({})",
                units::format_duration_short(full_report_interval),
                units::format_duration_short(report_interval)
            ),
        );
    }
    if c.problems.len() > before {
        return None;
    }
    Some(ControllerConfig {
        url: url?,
        token_file: token_file?,
        ca_file,
        client_identity,
        report_interval,
        full_report_interval,
        poll_wait,
    })
}

fn parse_monitoring(table: &Map<String, Value>, c: &mut Checker) -> MonitoringConfig {
    let fields = c.table(
        table,
        "monitoring",
        &["health_interval", "metrics_interval", "drift_interval"],
    );
    let mut config = MonitoringConfig::default();
    let mut duration = |key: &str, default: Duration, min: Duration| match c.string(&fields, key) {
        Some(text) => match units::parse_duration(&text) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                c.problem(
                    fields.path(key),
                    format!("{text:?} is too short (at least {})", humantime::format_duration(min)),
                );
                default
            }
            Err(e) => {
                c.problem(fields.path(key), e);
                default
            }
        },
        None => default,
    };
    config.health_interval = duration("health_interval", config.health_interval, Duration::from_millis(100));
    config.metrics_interval = duration("metrics_interval", config.metrics_interval, Duration::from_secs(1));
    config.drift_interval = duration("drift_interval", config.drift_interval, Duration::from_millis(500));
    if config.metrics_interval < config.health_interval {
        c.problem(
            fields.path("metrics_interval"),
            "must not be shorter than health_interval (a metrics sample is also a health probe)",
        );
    }
    config
}

/// Whether a URL's host is a loopback address (or `localhost`).
/// A URL the agent fetches from: `https://…`, or `http://` to a loopback address only.
fn store_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{text:?}: plain http is allowed only to a loopback address; use https"
        )),
        other => Err(format!("{text:?}: scheme {other:?} is not https")),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Bearer token for mutating calls.
    pub token_file: Option<PathBuf>,
}

/// Settings that apply to every instance on the node.
#[derive(Debug, Clone)]
pub struct InstanceDefaults {
    /// Addresses instances listen on. The agent talks to an instance on the first one
    /// (a wildcard is reached over loopback).
    pub bind: Vec<IpAddr>,
    /// Each instance logs to `log_dir/<name>.log`.
    pub log_dir: PathBuf,
    /// How long a graceful stop may take before SIGKILL, unless a spec says otherwise.
    pub stop_timeout: Duration,
    /// How long an instance's old password keeps working after a change, unless a
    /// spec says otherwise.
    pub password_grace: Duration,
    /// `[instances.backup]`: the schedule of instances whose spec has none.
    pub backup: BackupSchedule,
}

impl AgentConfig {
    /// Reads and validates `path`. On failure returns every problem found.
    pub fn load(path: &Path) -> Result<AgentConfig, Vec<Problem>> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Problem {
                file: file.clone(),
                field: "-".into(),
                message: format!("cannot read: {e}"),
            }]
        })?;
        let doc = parse_toml(&text, &file)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        Self::from_document(&doc, &file, path, &base)
    }

    /// Validates a parsed document; `base` resolves relative paths.
    pub fn from_document(
        doc: &Map<String, Value>,
        file: &str,
        path: &Path,
        base: &Path,
    ) -> Result<AgentConfig, Vec<Problem>> {
        let mut c = Checker::new(file);
        let top = c.table(
            doc,
            "",
            &[
                "node_id",
                "data_dir",
                "manifest_dir",
                "engines",
                "api",
                "instances",
                "controller",
                "monitoring",
                "backup_dir",
                "backup",
                "artifacts",
            ],
        );
        let node_id = match c.string(&top, "node_id") {
            Some(id) if id.trim().is_empty() => {
                c.problem("node_id", "must not be empty");
                None
            }
            Some(id) => Some(id),
            None => crate::procfs::hostname().or_else(|| {
                if !top.has("node_id") {
                    c.problem("node_id", "not set and the host name cannot be read");
                }
                None
            }),
        };
        let resolve = |p: String| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let data_dir = c
            .string(&top, "data_dir")
            .map(resolve)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let manifest_dir = c.string(&top, "manifest_dir").map(resolve);
        let backup_dir = c
            .string(&top, "backup_dir")
            .map(resolve)
            .unwrap_or_else(|| data_dir.join("backups"));

        let mut engines = BTreeMap::new();
        if let Some(table) = c.subtable(&top, "engines") {
            let names: Vec<&str> = EngineKind::ALL.iter().map(|k| k.as_str()).collect();
            let engine_fields = c.table(table, "engines", &names);
            for kind in EngineKind::ALL {
                let Some(engine) = c.subtable(&engine_fields, kind.as_str()) else {
                    continue;
                };
                let path = format!("engines.{}", kind.as_str());
                let fields = c.table(engine, &path, &["versions"]);
                let Some(versions) = c.subtable(&fields, "versions") else {
                    c.problem(fields.path("versions"), "missing (required)");
                    continue;
                };
                let mut allowed = BTreeMap::new();
                for (version, binary) in versions {
                    let field = crate::problem::join(&format!("{path}.versions"), version);
                    if let Some(problem) = crate::problem::control_character(version) {
                        c.problem(field.clone(), format!("version name {problem}"));
                        continue;
                    }
                    match binary.as_str() {
                        Some(binary) if crate::problem::control_character(binary).is_some() => {
                            c.problem(field, "path contains a control character");
                        }
                        Some(binary) if !Path::new(binary).is_absolute() => {
                            c.problem(field, format!("{binary:?} must be an absolute path"));
                        }
                        Some(binary) => {
                            allowed.insert(version.clone(), PathBuf::from(binary));
                        }
                        None => c.problem(field, "expected the path of the binary as a string"),
                    }
                }
                engines.insert(kind, allowed);
            }
        }
        let artifacts = c
            .subtable(&top, "artifacts")
            .and_then(|table| artifacts::parse_artifacts(table, &mut c, &resolve));
        if engines.values().all(BTreeMap::is_empty)
            && !top.has("artifacts")
            && !c.problems.iter().any(|p| p.field.starts_with("engines"))
        {
            c.problem(
                "engines",
                "no engine binary is allowed; add e.g. [engines.redis.versions] \"7.0\" = \"/usr/bin/redis-server\", or an [artifacts] store",
            );
        }

        let mut api = ApiConfig {
            listen: DEFAULT_API_LISTEN,
            token_file: None,
        };
        if let Some(table) = c.subtable(&top, "api") {
            let fields = c.table(table, "api", &["listen", "token_file"]);
            if let Some(listen) = c.string(&fields, "listen") {
                match listen.parse() {
                    Ok(addr) => api.listen = addr,
                    Err(_) => c.problem(
                        fields.path("listen"),
                        format!("{listen:?} is not an address:port such as \"127.0.0.1:9737\""),
                    ),
                }
            }
            api.token_file = c.string(&fields, "token_file").map(resolve);
        }

        let mut instances = InstanceDefaults {
            bind: vec![IpAddr::from([127, 0, 0, 1])],
            log_dir: PathBuf::from(DEFAULT_LOG_DIR),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            password_grace: DEFAULT_PASSWORD_GRACE,
            backup: BackupSchedule::default(),
        };
        if let Some(table) = c.subtable(&top, "instances") {
            let fields = c.table(
                table,
                "instances",
                &["bind", "log_dir", "stop_timeout", "password_grace", "backup"],
            );
            if let Some(table) = c.subtable(&fields, "backup") {
                instances.backup = backup::parse_schedule(table, "instances.backup", &mut c).over(instances.backup);
            }
            if let Some(list) = c.string_list(&fields, "bind") {
                let mut bind = Vec::new();
                for (i, addr) in list.iter().enumerate() {
                    match addr.parse::<IpAddr>() {
                        Ok(ip) => bind.push(ip),
                        Err(_) => c.problem(
                            format!("{}[{i}]", fields.path("bind")),
                            format!("{addr:?} is not an IP address"),
                        ),
                    }
                }
                if list.is_empty() {
                    c.problem(fields.path("bind"), "must name at least one address");
                }
                instances.bind = bind;
            }
            if let Some(dir) = c.string(&fields, "log_dir") {
                instances.log_dir = resolve(dir);
            }
            for (key, slot) in [
                ("stop_timeout", &mut instances.stop_timeout),
                ("password_grace", &mut instances.password_grace),
            ] {
                if let Some(text) = c.string(&fields, key) {
                    match units::parse_duration(&text) {
                        Ok(d) => *slot = d,
                        Err(e) => c.problem(fields.path(key), e),
                    }
                }
            }
        }

        let controller = c
            .subtable(&top, "controller")
            .and_then(|table| parse_controller(table, &mut c, &resolve));
        let monitoring = match c.subtable(&top, "monitoring") {
            Some(table) => parse_monitoring(table, &mut c),
            None => MonitoringConfig::default(),
        };
        let backup = match c.subtable(&top, "backup") {
            Some(table) => backup::parse_backup(table, &mut c, &resolve),
            None => BackupConfig::default(),
        };

        if !c.problems.is_empty() {
            return Err(c.problems);
        }
        Ok(AgentConfig {
            path: path.to_path_buf(),
            node_id: node_id.unwrap_or_default(),
            data_dir,
            manifest_dir,
            engines,
            api,
            instances,
            controller,
            monitoring,
            backup_dir,
            backup,
            artifacts,
        })
    }

    /// The allowed binaries that do not exist (yet). `check` reports them as problems;
    /// `run` only warns, so that one version that is not installed yet does not leave
    /// every other instance unsupervised: instances of that version fail to start, and
    /// are retried.
    pub fn missing_binaries(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (kind, versions) in &self.engines {
            for (version, binary) in versions {
                if !binary.is_file() {
                    problems.push(Problem {
                        file: self.path.display().to_string(),
                        field: crate::problem::join(&format!("engines.{kind}.versions"), version),
                        message: format!("{} does not exist or is not a file", binary.display()),
                    });
                }
            }
        }
        problems
    }

    /// The binary allowed for `engine` at `version`.
    pub fn binary(&self, engine: EngineKind, version: &str) -> Option<&Path> {
        self.engines.get(&engine)?.get(version).map(PathBuf::as_path)
    }

    /// The versions allowed for `engine`, in order.
    pub fn versions(&self, engine: EngineKind) -> Vec<&str> {
        self.engines
            .get(&engine)
            .map(|v| v.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Where builds fetched from the artifact store live: `engines/<engine>/<version>/`.
    pub fn engines_dir(&self) -> PathBuf {
        self.data_dir.join("engines")
    }

    pub fn instances_dir(&self) -> PathBuf {
        self.data_dir.join("instances")
    }

    /// Where instance `name`'s backups live.
    pub fn backups_of(&self, name: &str) -> PathBuf {
        self.backup_dir.join(name)
    }

    pub fn desired_state_path(&self) -> PathBuf {
        self.data_dir.join("desired.json")
    }
}

/// Parses TOML text into a JSON-like tree that the validators walk. A syntax error is
/// one problem that names the line.
pub fn parse_toml(text: &str, file: &str) -> Result<Map<String, Value>, Vec<Problem>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        vec![Problem {
            file: file.to_string(),
            field: line.map_or("-".to_string(), |l| format!("line {l}")),
            message: e.message().trim().to_string(),
        }]
    })?;
    match serde_json::to_value(table) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(vec![Problem {
            file: file.to_string(),
            field: "-".into(),
            message: "not a TOML table".into(),
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AgentConfig, Vec<Problem>> {
        let doc = parse_toml(text, "agent.toml")?;
        AgentConfig::from_document(&doc, "agent.toml", Path::new("/etc/k/agent.toml"), Path::new("/etc/k"))
    }

    fn messages(r: Result<AgentConfig, Vec<Problem>>) -> Vec<String> {
        r.unwrap_err().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn monitoring_intervals() {
        let base = "[engines.redis.versions]\n\"7.0\" = \"/bin/sh\"\n";
        assert_eq!(load(base).unwrap().monitoring, MonitoringConfig::default());
        let config = load(&format!(
            "{base}[monitoring]\nhealth_interval = \"500ms\"\nmetrics_interval = \"5s\"\ndrift_interval = \"2s\"\n"
        ))
        .unwrap();
        assert_eq!(config.monitoring.health_interval, Duration::from_millis(500));
        assert_eq!(config.monitoring.metrics_interval, Duration::from_secs(5));
        assert_eq!(config.monitoring.drift_interval, Duration::from_secs(2));
        let problems = messages(load(&format!(
            "{base}[monitoring]\nhealth_interval = \"10ms\"\nmetrics_interval = \"2s\"\nother = 1\n"
        )));
        crate::problem::assert_problems(
            &problems,
            &[
                "agent.toml: monitoring.health_interval: \"10ms\" is too short (at least 100ms)",
                "agent.toml: monitoring.other: unknown key",
            ],
        );
        let problems = messages(load(&format!(
            "{base}[monitoring]\nhealth_interval = \"5s\"\nmetrics_interval = \"2s\"\n"
        )));
        crate::problem::assert_problems(
            &problems,
            &["agent.toml: monitoring.metrics_interval: must not be shorter than health_interval (a metrics sample is also a health probe)"],
        );
    }

    #[test]
    fn full_config() {
        let config = load(
            r#"
            node_id = "n1"
            data_dir = "var"
            manifest_dir = "/etc/k/instances.d"
            [engines.redis.versions]
            "7.0" = "/bin/sh"
            [api]
            listen = "127.0.0.1:0"
            [instances]
            bind = ["127.0.0.1", "::1"]
            log_dir = "log"
            stop_timeout = "5s"
            password_grace = "10s"
            [instances.backup]
            interval = "6h"
            keep = 2
            [backup]
            max_concurrent = 1
            fetch_token_file = "fetch.token"
            "#,
        )
        .unwrap();
        assert_eq!(config.node_id, "n1");
        assert_eq!(config.data_dir, PathBuf::from("/etc/k/var"));
        assert_eq!(config.instances.log_dir, PathBuf::from("/etc/k/log"));
        assert_eq!(config.instances.stop_timeout, Duration::from_secs(5));
        assert_eq!(config.instances.password_grace, Duration::from_secs(10));
        assert_eq!(config.binary(EngineKind::Redis, "7.0"), Some(Path::new("/bin/sh")));
        assert_eq!(config.api.listen.port(), 0);
        assert_eq!(config.instances.bind.len(), 2);
        assert_eq!(config.backup_dir, PathBuf::from("/etc/k/var/backups"));
        assert_eq!(config.instances.backup.interval, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(config.instances.backup.keep, 2);
        assert_eq!(config.backup.max_concurrent, 1);
        assert_eq!(
            config.backup.fetch_token_file,
            Some(PathBuf::from("/etc/k/fetch.token"))
        );
        assert_eq!(config.backup.check_rdb, PathBuf::from("/usr/bin/redis-check-rdb"));
    }

    #[test]
    fn every_problem_is_reported() {
        let problems = messages(load(
            r#"
            nodeid = "typo"
            [engines.redis.versions]
            "7.0" = "relative/redis-server"
            "7.2" = "/does/not/exist"
            [api]
            listen = "localhost"
            [instances]
            stop_timeout = "soon"
            bind = ["nowhere"]
            [backup]
            timeout = "500000000000y"
            "#,
        ));
        let expect = [
            "agent.toml: nodeid: unknown key",
            "agent.toml: engines.redis.versions.\"7.0\": \"relative/redis-server\" must be an absolute path",
            "agent.toml: api.listen: \"localhost\" is not an address:port",
            "agent.toml: instances.stop_timeout: \"soon\" is not a duration",
            "agent.toml: instances.bind[0]: \"nowhere\" is not an IP address",
            "agent.toml: backup.timeout: must be more than 0s and at most 7d",
        ];
        crate::problem::assert_problems(&problems, &expect);
    }

    #[test]
    fn missing_binaries_are_listed_separately() {
        let config = load("[engines.redis.versions]\n\"7.0\" = \"/bin/sh\"\n\"7.2\" = \"/does/not/exist\"\n").unwrap();
        let missing: Vec<String> = config.missing_binaries().iter().map(ToString::to_string).collect();
        assert_eq!(
            missing,
            ["/etc/k/agent.toml: engines.redis.versions.\"7.2\": /does/not/exist does not exist or is not a file"]
        );
    }

    #[test]
    fn syntax_error_names_the_line() {
        let problems = messages(load("node_id = \"a\"\n[api\nlisten = 1\n"));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("agent.toml: line 2: "), "{problems:?}");
    }

    #[test]
    fn no_engine_is_an_error() {
        let problems = messages(load("node_id = \"a\"\n"));
        assert!(
            problems[0].starts_with("agent.toml: engines: no engine binary"),
            "{problems:?}"
        );
    }

    proptest::proptest! {
        /// Arbitrary text is a config or a list of problems, never a panic.
        #[test]
        fn any_text_is_handled(text in "(node_id|data_dir|engines|api|listen|\\[|\\]|=|\"|\\.|[a-z0-9 ]|\n){0,80}") {
            let _ = load(&text);
        }
    }

    #[test]
    fn controller_section() {
        let base = "[engines.redis.versions]\n\"7.0\" = \"/bin/sh\"\n[controller]\n";
        let config = load(&format!(
            "{base}url = \"https://cc.example:8443\"\ntoken_file = \"cc.token\"\nreport_interval = \"5s\"\n"
        ))
        .unwrap();
        let controller = config.controller.unwrap();
        assert_eq!(controller.url.as_str(), "https://cc.example:8443/");
        assert_eq!(controller.token_file, PathBuf::from("/etc/k/cc.token"));
        assert_eq!(controller.report_interval, Duration::from_secs(5));
        assert_eq!(controller.poll_wait, DEFAULT_POLL_WAIT);
        assert_eq!(controller.full_report_interval, DEFAULT_FULL_REPORT_INTERVAL);
        crate::problem::assert_problems(
            &messages(load(&format!(
                "{base}url = \"https://cc\"\ntoken_file = \"t\"\nfull_report_interval = \"5s\"\n"
            ))),
            &["agent.toml: controller.full_report_interval: 5s is shorter than report_interval (10s)"],
        );
        assert!(load(&format!("{base}url = \"http://127.0.0.1:8080\"\ntoken_file = \"t\"\n")).is_ok());
        assert!(load(&format!("{base}url = \"http://[::1]:8080\"\ntoken_file = \"t\"\n")).is_ok());
        crate::problem::assert_problems(
            &messages(load(&format!(
                "{base}url = \"http://cc.example\"\nclient_cert = \"c.pem\"\nreport_interval = \"1ms\"\n"
            ))),
            &[
                "agent.toml: controller.url: \"http://cc.example\": plain http is allowed only to a loopback address",
                "agent.toml: controller.token_file: missing (required)",
                "agent.toml: controller.client_key: set both client_cert and client_key, or neither",
                "agent.toml: controller.report_interval: \"1ms\" is too short",
            ],
        );
    }
}

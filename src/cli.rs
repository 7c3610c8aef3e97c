//! The command line: `run`, `check`, `status` and `version`. Each command returns the
//! process exit code; `main` only hands it to the OS.

use crate::config::AgentConfig;
use crate::problem::Problem;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for a usage or configuration error (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for a failure while running.
pub const EXIT_FAILURE: u8 = 1;

pub const DEFAULT_CONFIG: &str = "/etc/ker-agent/agent.toml";

#[derive(Debug, Parser)]
#[command(
    name = "ker-agent",
    about = "Node agent for Redis/Pika instances",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (logs to stderr).
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the config and every manifest; exit 0, or 64 listing every problem.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the instances of a running agent.
    Status {
        /// Address of the agent's API.
        #[arg(long, default_value = "127.0.0.1:9737")]
        api: String,
        /// Print the raw JSON status document.
        #[arg(long)]
        json: bool,
    },
    /// Print the version.
    Version,
}

/// Parses the command line; a usage error exits 64, `--help` exits 0.
pub fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// Loads agent.toml, printing every problem on failure.
pub fn load_config(path: &std::path::Path) -> Result<AgentConfig, ExitCode> {
    AgentConfig::load(path).map_err(|problems| {
        print_problems(&problems);
        ExitCode::from(EXIT_USAGE)
    })
}

fn print_problems(problems: &[Problem]) {
    for problem in problems {
        eprintln!("{problem}");
    }
}

/// `ker-agent check`.
pub fn check(config_path: &std::path::Path) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let missing = config.missing_binaries();
    if !missing.is_empty() {
        print_problems(&missing);
        return ExitCode::from(EXIT_USAGE);
    }
    // The files `run` reads before it starts anything: a token readable by others,
    // an empty token or a broken certificate is found here, not at the next restart.
    let secrets = [
        config
            .controller
            .as_ref()
            .map(|c| crate::controller::Client::new(c, &config.node_id).map(drop)),
        config
            .api
            .token_file
            .as_ref()
            .map(|path| crate::api::Token::read(path).map(drop)),
        // The store's CA, read as the fetches will read it (its keys were parsed
        // with agent.toml).
        config.artifacts.as_ref().map(|store| {
            crate::artifacts::fetch::StoreClient::new(store)
                .map(drop)
                .map_err(anyhow::Error::from)
        }),
    ];
    let secret_errors: Vec<anyhow::Error> = secrets.into_iter().flatten().filter_map(Result::err).collect();
    if !secret_errors.is_empty() {
        for error in &secret_errors {
            eprintln!("{}: {error:#}", config_path.display());
        }
        return ExitCode::from(EXIT_USAGE);
    }
    let Some(dir) = &config.manifest_dir else {
        println!("{}: ok (no manifest_dir)", config_path.display());
        warn_files_limit(&config, 0);
        return ExitCode::SUCCESS;
    };
    match crate::desired::load_manifests(dir, &config) {
        Ok(manifests) => {
            println!(
                "{}: ok; {}: {} instance(s) ok",
                config_path.display(),
                dir.display(),
                manifests.len()
            );
            warn_files_limit(&config, manifests.len());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            print_problems(&problems);
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The unit `check` compares the open-files limit of, under systemd.
const UNIT: &str = "ker-agent.service";

/// Warns (on stderr; the configuration is still valid) when the agent would run with
/// fewer open files than it needs for the declared instances: those of the manifests
/// and of the last accepted document in `desired.json`. Under systemd the limit is the
/// unit's `LimitNOFILE=`, anywhere else the hard limit of this process (the agent
/// raises its soft limit to the hard one).
fn warn_files_limit(config: &AgentConfig, manifests: usize) {
    let documented = match crate::desired::load_persisted(&config.desired_state_path(), config) {
        Ok(Some((inputs, _))) => inputs.document.map_or(0, |d| d.instances.len()),
        _ => 0,
    };
    let instances = manifests + documented;
    let need = crate::monitoring::host::agent_nofile_need(instances);
    let (limit, source) = match unit_files_limit() {
        Some(limit) => (limit, format!("{UNIT} runs the agent with LimitNOFILE={limit}")),
        None => match crate::sys::nofile_limits() {
            Ok((_, hard)) => (hard, format!("the hard open-files limit here is {hard} (ulimit -Hn)")),
            Err(_) => return,
        },
    };
    if limit < need {
        eprintln!(
            "warning: {source}, and the agent needs about {need} open files for {instances} instance(s) \
             ({} per instance, plus {}): raise LimitNOFILE= in {UNIT} (systemctl edit {UNIT}) to at least {need}",
            crate::monitoring::host::AGENT_FILES_PER_INSTANCE,
            crate::monitoring::host::AGENT_FILES_BASE,
        );
    }
}

/// The `LimitNOFILE=` of [`UNIT`] when systemd runs this host and knows the unit.
fn unit_files_limit() -> Option<u64> {
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let mut child = std::process::Command::new("systemctl")
        .args(["show", "--property=LoadState,LimitNOFILE", UNIT])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // systemctl answers at once; a hung bus must not hang `check`.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut text).ok()?;
    unit_limit_from_show(&text)
}

/// `LimitNOFILE` from `systemctl show` output, when the unit is loaded (for a unit it
/// does not know, systemctl shows the defaults).
fn unit_limit_from_show(text: &str) -> Option<u64> {
    let property = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(str::trim)
    };
    if property("LoadState")? != "loaded" {
        return None;
    }
    match property("LimitNOFILE")? {
        "infinity" => Some(u64::MAX),
        value => value.parse().ok(),
    }
}

/// One row of the status table, read from `/v1/status`.
#[derive(Debug, serde::Deserialize)]
struct Row {
    name: String,
    engine: String,
    port: u16,
    phase: String,
    ready: bool,
    pid: Option<u32>,
    restarts: u64,
    uptime_seconds: Option<u64>,
    #[serde(default)]
    next_restart_at_ms: Option<u64>,
    message: String,
    #[serde(default)]
    exposure: Option<String>,
    #[serde(default)]
    health: Option<HealthRow>,
}

/// The part of an instance's health the table shows.
#[derive(Debug, serde::Deserialize)]
struct HealthRow {
    status: String,
    #[serde(default)]
    reasons: Vec<String>,
    #[serde(default)]
    observed_role: Option<String>,
    #[serde(default)]
    replication: Option<ReplicationRow>,
}

#[derive(Debug, serde::Deserialize)]
struct ReplicationRow {
    #[serde(default)]
    link_up: Option<bool>,
}

impl HealthRow {
    /// `master`, `replica`, or `replica (link down)`, as the server reports it.
    fn role(&self) -> String {
        let link_down = self.replication.as_ref().is_some_and(|r| r.link_up == Some(false));
        match self.observed_role.as_deref() {
            Some("replica") if link_down => "replica (link down)".into(),
            Some(role) => role.to_string(),
            None => "-".into(),
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct StatusDoc {
    node_id: String,
    ready: bool,
    desired: serde_json::Value,
    #[serde(default)]
    secret_files: Option<SecretFilesRow>,
    instances: Vec<Row>,
}

#[derive(Debug, serde::Deserialize)]
struct SecretFilesRow {
    #[serde(default)]
    problems: Vec<String>,
}

/// `ker-agent status`.
pub async fn status(api: &str, json: bool) -> ExitCode {
    match fetch_status(api).await {
        Ok(body) if json => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok(body) => match serde_json::from_str::<StatusDoc>(&body) {
            Ok(doc) => {
                print!("{}", render_table(&doc));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ker-agent: error: the agent at {api} sent a status this version cannot read: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Err(e) => {
            eprintln!("ker-agent: error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn fetch_status(api: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let url = if api.starts_with("http://") || api.starts_with("https://") {
        format!("{}/v1/status", api.trim_end_matches('/'))
    } else {
        format!("http://{api}/v1/status")
    };
    // The local API is plain HTTP: no trust roots are needed, and asking for the
    // system's would fail on hosts without ca-certificates.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_certs_only(Vec::new())
        .build()
        .context("cannot build an HTTP client")?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach the agent at {url} (is it running? see --api)"))?;
    let code = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("cannot read the answer of {url}"))?;
    if !code.is_success() {
        anyhow::bail!("{url} answered {code}: {body}");
    }
    Ok(body)
}

fn render_table(doc: &StatusDoc) -> String {
    let mut rows = vec![[
        "NAME", "ENGINE", "PORT", "PHASE", "READY", "PID", "RESTARTS", "UPTIME", "HEALTH", "ROLE", "MESSAGE",
    ]
    .map(String::from)];
    for r in &doc.instances {
        rows.push([
            r.name.clone(),
            r.engine.clone(),
            r.port.to_string(),
            r.phase.clone(),
            if r.ready { "yes" } else { "no" }.to_string(),
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.restarts.to_string(),
            r.uptime_seconds.map_or("-".into(), |s| {
                crate::units::format_duration_short(Duration::from_secs(s))
            }),
            r.health.as_ref().map_or("-".into(), |h| h.status.clone()),
            r.health.as_ref().map_or("-".into(), HealthRow::role),
            match r.next_restart_at_ms {
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(crate::process::unix_now_millis()));
                    format!(
                        "{} (restart in {})",
                        r.message,
                        crate::units::format_duration_short(wait)
                    )
                }
                None => r.message.clone(),
            }
            .replace('\n', " ")
                + &r.health
                    .as_ref()
                    .filter(|h| !h.reasons.is_empty())
                    .map_or(String::new(), |h| format!(" [{}]", h.reasons.join("; "))),
        ]);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let number = |key: &str| doc.desired.get(key).and_then(|g| g.as_u64());
    let mut out = format!(
        "node {}: {}, desired state {}{}\n",
        doc.node_id,
        if doc.ready { "ready" } else { "not ready" },
        number("revision").map_or("none accepted".into(), |r| format!("revision {r}")),
        number("generation").map_or(String::new(), |g| format!(" (document generation {g})")),
    );
    if let Some(rejection) = doc.desired.get("last_rejection").filter(|r| !r.is_null()) {
        out.push_str("last rejected desired state:\n");
        for problem in rejection["problems"].as_array().into_iter().flatten() {
            out.push_str(&format!("  {}\n", problem.as_str().unwrap_or_default()));
        }
    }
    if let Some(secrets) = doc.secret_files.as_ref().filter(|s| !s.problems.is_empty()) {
        out.push_str("secret files refused at the last reload (the previous ones stay in use):\n");
        for problem in &secrets.problems {
            out.push_str(&format!("  {problem}\n"));
        }
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == columns {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    // Said once per instance, below the table: it would fill every row of a column.
    let exposed: Vec<&Row> = doc.instances.iter().filter(|r| r.exposure.is_some()).collect();
    if !exposed.is_empty() {
        out.push_str("exposed ports:\n");
        for row in exposed {
            out.push_str(&format!(
                "  {}: {}\n",
                row.name,
                row.exposure.as_deref().unwrap_or_default()
            ));
        }
    }
    out
}

/// Sets up logging to stderr: `KER_AGENT_LOG` (e.g. `info`, `debug`,
/// `ker_agent=debug,info`) chooses what is shown; the default is `info`.
pub fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("KER_AGENT_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // Under systemd, journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.without_time())
            .init();
    } else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_limit_is_read_only_when_systemd_knows_the_unit() {
        assert_eq!(
            unit_limit_from_show("LoadState=loaded\nLimitNOFILE=1048576\n"),
            Some(1_048_576)
        );
        assert_eq!(
            unit_limit_from_show("LimitNOFILE=infinity\nLoadState=loaded\n"),
            Some(u64::MAX)
        );
        assert_eq!(unit_limit_from_show("LoadState=not-found\nLimitNOFILE=524288\n"), None);
        assert_eq!(unit_limit_from_show("LoadState=loaded\nLimitNOFILE=lots\n"), None);
        assert_eq!(unit_limit_from_show(""), None);
    }

    #[test]
    fn table_lists_every_instance_with_aligned_columns() {
        let doc: StatusDoc = serde_json::from_value(serde_json::json!({
            "node_id": "n1", "ready": true,
            "desired": {"revision": 4, "generation": 2, "last_rejection": {"problems": ["a.toml: port: 1 is outside 1024-65535"]}},
            "instances": [
                {"name": "cache-1", "engine": "redis", "port": 6380, "phase": "running", "ready": true,
                 "pid": 42, "restarts": 1, "uptime_seconds": 61, "message": "",
                 "health": {"status": "degraded", "reasons": ["PING took 150 ms"], "observed_role": "replica",
                            "replication": {"master": "10.0.0.1:6379", "link_up": false, "replicas": []}}},
                {"name": "b", "engine": "redis", "port": 6381, "phase": "crash-loop", "ready": false,
                 "pid": null, "restarts": 7, "uptime_seconds": null, "message": "exit code 1"},
                {"name": "p", "engine": "pika", "port": 9221, "phase": "pending", "ready": false,
                 "pid": null, "restarts": 0, "uptime_seconds": null, "message": "",
                 "exposure": "port 11221 (replication) listens on all addresses"}
            ]
        }))
        .unwrap();
        let table = render_table(&doc);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "node n1: ready, desired state revision 4 (document generation 2)"
        );
        assert_eq!(lines[2], "  a.toml: port: 1 is outside 1024-65535");
        assert!(
            lines[3].starts_with(
                "NAME     ENGINE  PORT  PHASE       READY  PID  RESTARTS  UPTIME  HEALTH    ROLE                 MESSAGE"
            ),
            "{table}"
        );
        assert!(
            lines[4]
                == "cache-1  redis   6380  running     yes    42   1         1m1s    degraded  replica (link down)   [PING took 150 ms]",
            "{table}"
        );
        assert!(
            lines[5] == "b        redis   6381  crash-loop  no     -    7         -       -         -                    exit code 1",
            "{table}"
        );
        assert_eq!(lines[7], "exposed ports:", "{table}");
        assert_eq!(
            lines[8], "  p: port 11221 (replication) listens on all addresses",
            "{table}"
        );
        assert_eq!(lines.len(), 9, "{table}");
    }
}

//! The command line: `run`, `check`, `status`, `events` and `version`. Each command
//! returns the process exit code; `main` only hands it to the OS. `check.rs` validates
//! a configuration, `status.rs` and `events.rs` read a running agent's API.

mod check;
mod events;
mod status;

pub use check::check;
pub use events::{events, EventsArgs};
pub use status::{status, StatusArgs};

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
/// Where `status` and `events` find the agent's API unless told.
pub const DEFAULT_API: &str = "127.0.0.1:9737";

/// A refresh interval: a duration of at least 100 ms.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = crate::units::parse_duration(text)?;
    if interval < Duration::from_millis(100) {
        return Err(format!("{text:?} is too short (at least 100ms)"));
    }
    Ok(interval)
}

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
        /// Show only these instances (by name).
        names: Vec<String>,
        /// Address of the agent's API.
        #[arg(long, default_value = DEFAULT_API)]
        api: String,
        /// Show only instances in these phases (comma-separated or repeated), e.g.
        /// `--phase crash-loop,failed`.
        #[arg(long, value_delimiter = ',')]
        phase: Vec<String>,
        /// Print the raw JSON status document (filtered like the table).
        #[arg(long)]
        json: bool,
        /// Refresh the table in place until interrupted.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes, e.g. "2s", "500ms".
        #[arg(long, default_value = "2s", value_parser = parse_interval)]
        interval: Duration,
        /// With --watch: stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print the recent events of the node, or of one instance, newest last.
    Events {
        /// Only this instance's events.
        name: Option<String>,
        /// Address of the agent's API.
        #[arg(long, default_value = DEFAULT_API)]
        api: String,
        /// How many recent events to print first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Keep printing new events as they happen, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// One JSON object per line instead of text.
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

/// GETs `path` of the agent's API at `api` (`host:port`, or a URL), within 5 s; the
/// body of a success, or an error that names the URL.
async fn get(api: &str, path: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let url = if api.starts_with("http://") || api.starts_with("https://") {
        format!("{}{path}", api.trim_end_matches('/'))
    } else {
        format!("http://{api}{path}")
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
        anyhow::bail!("{url} answered {code}: {}", body.trim());
    }
    Ok(body)
}

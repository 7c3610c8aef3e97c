//! The command line: `run`, `check`, `status`, `events`, `version` and `generate`. Each command
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
    version,
    about = "Node agent for Redis/Pika instances",
    long_about = "Node agent for Redis/Pika instances. On every host of a fleet it starts, stops and \
                  reconfigures the local redis-server and pika processes as its desired state says \
                  (manifests in manifest_dir, the local API, or a control centre), keeps them alive, \
                  takes their backups, and reports their health and metrics.",
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
        /// The agent's configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the config and every manifest; exit 0, or 64 listing every problem.
    Check {
        /// The configuration file to check (its manifest_dir too).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the instances of a running agent.
    Status(StatusArgs),
    /// Print the recent events of the node, or of one instance, newest last.
    Events(EventsArgs),
    /// Print the version.
    Version,
    /// Print the manual page (roff) or a shell's completion script, made from these
    /// very definitions; the packages install them.
    Generate {
        #[arg(value_enum)]
        what: Generated,
    },
}

/// What `ker-agent generate` prints.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Generated {
    /// The manual page, ker-agent(1), in roff.
    Man,
    Bash,
    Zsh,
    Fish,
}

/// The manual page: name, synopsis and description, then every command with its own
/// help (in one page: `man ker-agent` is where people look), then files, environment
/// and exit codes.
fn man_page(mut command: clap::Command, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    command.build();
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in command.get_subcommands_mut().filter(|sub| sub.get_name() != "help") {
        let name = sub.get_name().to_string();
        let help = sub.render_long_help().to_string();
        writeln!(out, ".SS \"ker\\-agent {}\"", roff_escape(&name))?;
        writeln!(out, ".nf")?;
        for line in help.lines() {
            writeln!(out, "{}", roff_line(line))?;
        }
        writeln!(out, ".fi")?;
    }
    out.write_all(MAN_TAIL.as_bytes())?;
    man.render_version_section(out)
}

/// The sections after the commands, in roff.
const MAN_TAIL: &str = r#".SH FILES
.TP
/etc/ker\-agent/agent.toml
The configuration (see \fBker\-agent check\fR).
.TP
/etc/ker\-agent/instances.d/*.toml
Instance manifests, read at start, on SIGHUP and every few seconds.
.TP
/var/lib/ker\-agent
data_dir: instances and their records, desired.json, engine builds from the artifact store, backups.
.TP
/var/log/ker\-agent
The instances' logs.
.SH ENVIRONMENT
.TP
KER_AGENT_LOG
The log level, e.g. \fBinfo\fR (the default), \fBdebug\fR, \fBker_agent=debug,info\fR.
.SH SIGNALS
.TP
SIGHUP
Read the manifests and the secret files again.
.TP
SIGTERM, SIGINT
Stop the agent; the instances keep running.
.SH EXIT STATUS
0 on success, 1 on a failure while running, 64 for an invalid configuration or usage.
.SH SEE ALSO
/usr/share/doc/ker\-agent/README.md
"#;

/// Text safe inside a roff line: backslashes and hyphens escaped.
fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// A line of text for a no-fill block: escaped, and never read as a request.
fn roff_line(line: &str) -> String {
    let escaped = roff_escape(line);
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// `ker-agent generate`: writes the manual page or a completion script to `out`.
pub fn generate(what: Generated, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let shell = match what {
        Generated::Man => return man_page(command, out),
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command, "ker-agent", out);
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(what: Generated) -> String {
        let mut out = Vec::new();
        generate(what, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_manual_page_has_every_command_with_its_options() {
        let man = generated(Generated::Man);
        assert!(man.starts_with(".ie"), "roff");
        for command in ["run", "check", "status", "events", "version", "generate"] {
            assert!(
                man.contains(&format!(".SS \"ker\\-agent {command}\"")),
                "{command} in:\n{man}"
            );
        }
        assert!(!man.contains(".SS \"ker\\-agent help\""));
        for option in ["\\-\\-watch", "\\-\\-follow", "\\-\\-phase", "\\-\\-config"] {
            assert!(man.contains(option), "{option}");
        }
        for section in [".SH FILES", ".SH ENVIRONMENT", ".SH EXIT STATUS"] {
            assert!(man.contains(section), "{section}");
        }
        // No line of help text may be read as a roff request.
        let mut in_text = false;
        for line in man.lines() {
            match line {
                ".nf" => in_text = true,
                ".fi" => in_text = false,
                _ if in_text => assert!(!line.starts_with('.') && !line.starts_with('\''), "{line}"),
                _ => {}
            }
        }
    }

    #[test]
    fn completions_know_the_commands_and_options() {
        for (what, marker) in [
            (Generated::Bash, "complete -F"),
            (Generated::Zsh, "#compdef ker-agent"),
            (Generated::Fish, "complete -c ker-agent"),
        ] {
            let script = generated(what);
            assert!(script.contains(marker), "{what:?}");
            for word in ["status", "events", "watch", "follow"] {
                assert!(script.contains(word), "{what:?} lacks {word}");
            }
        }
    }
}

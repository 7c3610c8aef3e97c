//! `ker-agent status`: the instances of a running agent, as a table (or its JSON).

use super::EXIT_FAILURE;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

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

/// What `ker-agent status` was asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Show only these instances (by name).
    pub names: Vec<String>,
    /// Address of the agent's API.
    #[arg(long, default_value = super::DEFAULT_API)]
    pub api: String,
    /// Show only instances in these phases (comma-separated or repeated), e.g.
    /// `--phase crash-loop,failed`.
    #[arg(long = "phase", value_name = "PHASE", value_delimiter = ',')]
    pub phases: Vec<String>,
    /// Print the raw JSON status document (filtered like the table).
    #[arg(long)]
    pub json: bool,
    /// Refresh the table in place until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch refreshes, e.g. "2s", "500ms".
    #[arg(long, default_value = "2s", value_parser = super::parse_interval)]
    pub interval: Duration,
    /// With --watch: stop after this many refreshes.
    #[arg(long)]
    pub count: Option<u64>,
}

/// `ker-agent status`.
pub async fn status(args: &StatusArgs) -> ExitCode {
    if !args.watch {
        return match frame(args).await {
            Ok(text) => {
                // A closed output (`| head`) is not an error worth a message.
                let _ = write_out(&text);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ker-agent: error: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    let terminal = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    loop {
        let text = match frame(args).await {
            Ok(text) => text,
            // The agent may be restarting: say so and look again.
            Err(e) => format!("ker-agent: error: {e:#}\n"),
        };
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let header = format!(
            "every {}: {now} (Ctrl-C to stop)\n",
            crate::units::format_duration_short(args.interval)
        );
        // In place on a terminal; one frame after another elsewhere (a pipe, a log).
        let clear = if terminal { "\x1b[H\x1b[2J" } else { "" };
        let gap = if terminal { "" } else { "\n" };
        if write_out(&format!("{clear}{header}{text}{gap}")).is_err() {
            // Whoever watched is gone.
            return ExitCode::SUCCESS;
        }
        shown += 1;
        if args.count.is_some_and(|count| shown >= count) {
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(args.interval).await;
    }
}

/// Writes `text` to stdout and flushes it; an error when stdout is closed (`print!`
/// would panic).
fn write_out(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// One status, filtered, as text (a table, or JSON).
async fn frame(args: &StatusArgs) -> anyhow::Result<String> {
    let body = super::get(&args.api, "/v1/status").await?;
    let mut doc: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("the agent at {} sent a status that is not JSON: {e}", args.api))?;
    let missing = filter(&mut doc, &args.names, &args.phases);
    let missing = if missing.is_empty() {
        String::new()
    } else if args.watch {
        // It may be declared while the watch goes on: said in every frame.
        format!("no instance named {} on this node\n", missing.join(", "))
    } else {
        anyhow::bail!("no instance named {} on this node", missing.join(", "));
    };
    if args.json {
        // stdout stays one JSON document per frame.
        eprint!("{missing}");
        return Ok(format!("{doc}\n"));
    }
    let doc: StatusDoc = serde_json::from_value(doc)
        .map_err(|e| anyhow::anyhow!("the agent at {} sent a status this version cannot read: {e}", args.api))?;
    Ok(format!("{missing}{}", render_table(&doc)))
}

/// Keeps the instances of `doc` that `names` and `phases` select (each, when not
/// empty); returns the names asked for that the node does not have.
fn filter(doc: &mut serde_json::Value, names: &[String], phases: &[String]) -> Vec<String> {
    let Some(instances) = doc.get_mut("instances").and_then(|i| i.as_array_mut()) else {
        return Vec::new();
    };
    let missing = names
        .iter()
        .filter(|name| !instances.iter().any(|i| i["name"] == name.as_str()))
        .cloned()
        .collect();
    instances.retain(|i| {
        let named = names.is_empty() || names.iter().any(|n| i["name"] == n.as_str());
        let phased = phases.is_empty() || phases.iter().any(|p| i["phase"] == p.as_str());
        named && phased
    });
    missing
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

#[cfg(test)]
mod tests {
    use super::*;

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

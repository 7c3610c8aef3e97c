//! `ker-agent events [NAME]`: the recent events of the node or of one instance, newest
//! last, from the agent's `/v1/events`; with `--follow`, new ones as they happen.

use super::EXIT_FAILURE;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// How often `--follow` asks for new events.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// What `ker-agent events` was asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Only this instance's events.
    pub name: Option<String>,
    /// Address of the agent's API.
    #[arg(long, default_value = super::DEFAULT_API)]
    pub api: String,
    /// How many recent events to print first (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    /// Keep printing new events as they happen, until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One event as `/v1/events` serves it.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Entry {
    seq: u64,
    at_ms: u64,
    instance: String,
    kind: String,
    message: String,
}

#[derive(Debug, serde::Deserialize)]
struct Page {
    events: Vec<Entry>,
    /// Tells an agent that restarted (and counts its events from 1 again).
    agent_started_at: u64,
}

/// `ker-agent events`.
pub async fn events(args: &EventsArgs) -> ExitCode {
    let mut after = 0;
    let mut started_at = None;
    let mut limit = usize::from(args.limit);
    loop {
        // A full page after a point may have more behind it: then ask again at once.
        let mut more = false;
        match page(args, after, limit).await {
            Ok(page) => {
                if started_at.is_some_and(|s| s != page.agent_started_at) {
                    // On stderr: stdout stays one event per line (JSON with --json).
                    eprintln!("ker-agent: the agent restarted; its events start again");
                    started_at = Some(page.agent_started_at);
                    after = 0;
                    continue;
                }
                started_at = Some(page.agent_started_at);
                more = after > 0 && page.events.len() >= limit;
                // Everything new from now on (the first page had the last `--limit`).
                limit = crate::api::MAX_EVENTS_PAGE;
                let mut out = std::io::stdout().lock();
                for entry in &page.events {
                    if writeln!(out, "{}", line(entry, args.json)).is_err() {
                        // Whoever read the output is gone (`| head`): nothing to do.
                        return ExitCode::SUCCESS;
                    }
                    after = after.max(entry.seq);
                }
                if out.flush().is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) if !args.follow => {
                eprintln!("ker-agent: error: {e:#}");
                return ExitCode::from(EXIT_FAILURE);
            }
            // Following: the agent may be restarting; look again.
            Err(e) => eprintln!("ker-agent: error: {e:#}"),
        }
        if !args.follow {
            return ExitCode::SUCCESS;
        }
        if !more {
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
}

async fn page(args: &EventsArgs, after: u64, limit: usize) -> anyhow::Result<Page> {
    let mut path = format!("/v1/events?after={after}&limit={limit}");
    if let Some(name) = &args.name {
        path.push_str(&format!("&instance={name}"));
    }
    let body = super::get(&args.api, &path).await?;
    serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("the agent at {} sent events this version cannot read: {e}", args.api))
}

/// `<time>  <instance>  <kind>  <message>`, or the entry as JSON.
fn line(entry: &Entry, json: bool) -> String {
    if json {
        return serde_json::to_string(entry).unwrap_or_default();
    }
    let at = std::time::UNIX_EPOCH + Duration::from_millis(entry.at_ms);
    let instance = if entry.instance.is_empty() {
        "-"
    } else {
        &entry.instance
    };
    format!(
        "{}  {instance}  {}  {}",
        humantime::format_rfc3339_millis(at),
        entry.kind,
        entry.message.replace('\n', " ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_when_what_and_to_whom() {
        let entry = Entry {
            seq: 3,
            at_ms: 1_795_989_776_123,
            instance: "cache-1".into(),
            kind: "started".into(),
            message: "started as pid 42\n(restart after a crash)".into(),
        };
        assert_eq!(
            line(&entry, false),
            "2026-11-29T22:02:56.123Z  cache-1  started  started as pid 42 (restart after a crash)"
        );
        let node = Entry {
            instance: String::new(),
            ..entry
        };
        assert!(line(&node, false).contains("Z  -  started"));
        let json: serde_json::Value = serde_json::from_str(&line(&node, true)).unwrap();
        assert_eq!(json["seq"], 3);
    }
}

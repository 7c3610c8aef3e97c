//! Reports to the controller: node facts, the desired-state bookkeeping, every
//! instance's status and the events not yet in an accepted report, gzip-compressed.
//! Sent every report interval and at once after a change of phase.

use super::{Backoff, FailureLog};
use crate::events::EventLog;
use crate::observations::Observations;
use crate::status::StatusBoard;
use flate2::write::GzEncoder;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The most events one report carries; the rest follow in the next one.
const EVENTS_PER_REPORT: usize = 500;
/// After a change of phase, wait this long for more changes before reporting.
const CHANGE_DEBOUNCE: Duration = Duration::from_millis(100);

/// What the controller learns about the node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeFacts {
    pub node_id: String,
    pub hostname: String,
    pub agent_version: &'static str,
    pub kernel: String,
    pub cpus: usize,
    pub memory_bytes: u64,
    pub boot_id: String,
    pub agent_started_at: u64,
}

/// Reads the node's facts from the kernel.
pub fn node_facts(node_id: &str, boot_id: &str, started_at: u64) -> NodeFacts {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let memory_kb = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    NodeFacts {
        node_id: node_id.to_string(),
        hostname: crate::procfs::hostname().unwrap_or_default(),
        agent_version: crate::VERSION,
        kernel: read("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: memory_kb * 1024,
        boot_id: boot_id.to_string(),
        agent_started_at: started_at,
    }
}

/// What a report is made of.
#[derive(Clone)]
pub struct ReportInputs {
    pub facts: NodeFacts,
    pub board: StatusBoard,
    pub observations: Observations,
    pub events: Arc<EventLog>,
    pub telemetry: Arc<crate::metrics::Telemetry>,
}

/// One report, serialized straight from the snapshots (no intermediate JSON tree:
/// with 200 instances and their metrics that tree cost more than the compression).
#[derive(serde::Serialize)]
pub struct Report<'a> {
    node: &'a NodeFacts,
    observed_generation: Option<u64>,
    desired: crate::status::DesiredInfo,
    host: Option<Arc<crate::observations::HostSample>>,
    instances: Vec<crate::observations::InstanceView>,
    events: Vec<crate::events::EventEntry>,
    events_dropped: u64,
    sent_at_ms: u64,
}

/// A report, and the sequence number of its last event (to acknowledge).
pub fn build(inputs: &ReportInputs) -> (Report<'_>, Option<u64>) {
    let ReportInputs {
        facts,
        board,
        observations,
        events,
        ..
    } = inputs;
    let desired = board.desired();
    let (events, dropped) = events.unreported(EVENTS_PER_REPORT);
    let last_seq = events.last().map(|e| e.seq);
    let report = Report {
        node: facts,
        observed_generation: desired.generation,
        desired,
        host: observations.host(),
        instances: crate::observations::instance_views(board, observations),
        events,
        events_dropped: dropped,
        sent_at_ms: crate::process::unix_now_millis(),
    };
    (report, last_seq)
}

/// The JSON body of a report, gzip-compressed.
pub fn gzip(report: &Report<'_>) -> Vec<u8> {
    use std::io::Write;
    // Serialized first and compressed in one write: serde_json writes in tiny pieces,
    // and each write into the encoder costs a compressor call (30x slower that way).
    // Level 1: reports compress ~25:1 at any level, and the default level cost three
    // times the CPU for a few percent.
    let json = serde_json::to_vec(report).unwrap_or_default();
    let mut encoder = GzEncoder::new(Vec::with_capacity(json.len() / 8), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(&json);
    encoder.finish().unwrap_or_default()
}

/// Reports every `interval` and after every change of phase, until `shutdown`.
pub(super) async fn report_loop(
    slot: super::ClientSlot,
    inputs: ReportInputs,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let (board, events) = (&inputs.board, &inputs.events);
    let changes = board.changes();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::default();
    let mut log = FailureLog::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = changes.notified() => {
                tokio::select! {
                    _ = tokio::time::sleep(CHANGE_DEBOUNCE) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            _ = shutdown.cancelled() => return,
        }
        // Send until one is accepted; every attempt carries the current state.
        loop {
            let (body, last_seq) = build(&inputs);
            let compressed = gzip(&body);
            let size = compressed.len() as u64;
            let client = slot.get();
            let sent = tokio::select! {
                sent = client.report(compressed) => sent,
                _ = shutdown.cancelled() => return,
            };
            match sent {
                Ok(()) => {
                    if let Some(seq) = last_seq {
                        events.ack(seq);
                    }
                    inputs.telemetry.report_bytes.inc_by(size);
                    backoff.reset();
                    log.succeeded("report");
                    board.controller_reported(None);
                    break;
                }
                Err(error) => {
                    inputs.telemetry.controller_failed("report");
                    let delay = backoff.next(fastrand::f64());
                    log.failed("report", &error, delay, backoff.failures());
                    board.controller_reported(Some(error.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
        ticker.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use std::io::Read;

    #[test]
    fn a_report_carries_unacknowledged_events_in_order_and_compresses() {
        let board = StatusBoard::default();
        board.accepted(3, Some(9), "controller");
        let events = EventLog::new(3);
        for pid in 1..=5 {
            events.emit(
                "a",
                Event::Started {
                    pid,
                    after_crash: false,
                },
            );
        }
        let inputs = ReportInputs {
            facts: node_facts("n1", "boot", 1),
            board,
            observations: Observations::default(),
            events: Arc::new(events),
            telemetry: Arc::default(),
        };
        let events = &inputs.events;
        let (report, last) = build(&inputs);
        let body = serde_json::to_value(&report).unwrap();
        assert_eq!(body["observed_generation"], 9);
        assert_eq!(body["node"]["node_id"], "n1");
        assert!(body["node"]["cpus"].as_u64().unwrap() >= 1);
        let seqs: Vec<u64> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(body["events_dropped"], 2);
        events.ack(last.unwrap());
        let (report, last) = build(&inputs);
        let body = serde_json::to_value(&report).unwrap();
        assert_eq!(body["events"].as_array().unwrap().len(), 0);
        assert_eq!(last, None);

        let compressed = gzip(&report);
        let mut text = String::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), body);
    }
}

//! Reports to the controller: node facts, the desired-state bookkeeping, every
//! instance's status and the events not yet in an accepted report, gzip-compressed.
//! Sent every report interval and at once after a change of phase, health or role.
//!
//! Most reports are *deltas*: only the instances whose status changed since the last
//! accepted report (the *base*), readings that move at every probe (uptime, PING
//! time, lags) aside. A full report goes first, every `full_report_interval`, and
//! whenever the controller answers a delta 409 (it does not hold the base). This is
//! what keeps a fleet's reports affordable: at rest a delta is a few hundred bytes
//! whatever the number of instances.

use super::{Backoff, CallError, FailureLog, Reported};
use crate::events::EventLog;
use crate::monitoring::observations::Observations;
use crate::status::StatusBoard;
use flate2::write::GzEncoder;
use std::collections::BTreeMap;
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
    pub telemetry: Arc<crate::monitoring::metrics::Telemetry>,
}

/// Whether a report carries everything or only what changed since the last accepted
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Delta,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Delta => "delta",
        }
    }
}

/// What the controller holds after the last accepted report, as signatures: a change
/// report sends what differs from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseline {
    /// The accepted report it is.
    seq: u64,
    /// Each instance's status without its readings.
    instances: BTreeMap<String, u64>,
    desired: u64,
    /// The host's preflight findings.
    findings: u64,
}

/// One report, serialized straight from the snapshots (no intermediate JSON tree:
/// with 200 instances and their metrics that tree cost more than the compression).
/// A full report carries every field; a delta leaves out the node facts, and the
/// desired-state bookkeeping and the host sample while they are as in its base.
#[derive(serde::Serialize)]
pub struct Report<'a> {
    kind: Kind,
    /// This report's number in the agent's run (`node.agent_started_at`), from 1.
    seq: u64,
    /// A delta's base: the accepted report it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    base_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a NodeFacts>,
    observed_generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    desired: Option<crate::status::DesiredInfo>,
    /// Left out (the outer `None`) of a delta while the findings are as in its base;
    /// `null` before the first host sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<Option<Arc<crate::monitoring::observations::HostSample>>>,
    /// Full: every instance. Delta: those whose status (its readings aside) changed
    /// since the base, or that are new, each whole with its last metrics.
    instances: Vec<crate::monitoring::observations::InstanceView>,
    /// Delta: instances in the base that are gone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed: Vec<String>,
    events: Vec<crate::events::EventEntry>,
    events_dropped: u64,
    sent_at_ms: u64,
}

/// A built report: what to send, the last event in it (to acknowledge), and the
/// baseline it leaves at the controller once accepted.
pub struct Built<'a> {
    pub report: Report<'a>,
    pub last_event: Option<u64>,
    pub baseline: Baseline,
}

/// Builds report `seq`: a delta on `base`, or a full report without one.
pub fn build<'a>(inputs: &'a ReportInputs, seq: u64, base: Option<&Baseline>) -> Built<'a> {
    let ReportInputs {
        facts,
        board,
        observations,
        events,
        ..
    } = inputs;
    let desired = board.desired();
    let host = observations.host();
    let mut views = crate::monitoring::observations::instance_views(board, observations);
    let baseline = Baseline {
        seq,
        instances: views
            .iter()
            .map(|view| (view.status.name.clone(), signature(&view.status.without_readings())))
            .collect(),
        desired: signature(&desired),
        findings: host.as_ref().map_or(0, |h| signature(&h.findings)),
    };
    let (events, dropped) = events.unreported(EVENTS_PER_REPORT);
    let last_event = events.last().map(|e| e.seq);
    let mut removed = Vec::new();
    if let Some(base) = base {
        views.retain(|view| base.instances.get(&view.status.name) != baseline.instances.get(&view.status.name));
        removed = base
            .instances
            .keys()
            .filter(|name| !baseline.instances.contains_key(*name))
            .cloned()
            .collect();
    }
    let report = Report {
        kind: if base.is_some() { Kind::Delta } else { Kind::Full },
        seq,
        base_seq: base.map(|b| b.seq),
        node: base.is_none().then_some(facts),
        observed_generation: desired.generation,
        desired: base.is_none_or(|b| b.desired != baseline.desired).then_some(desired),
        host: base.is_none_or(|b| b.findings != baseline.findings).then_some(host),
        instances: views,
        removed,
        events,
        events_dropped: dropped,
        sent_at_ms: crate::process::unix_now_millis(),
    };
    Built {
        report,
        last_event,
        baseline,
    }
}

/// A stable digest of a value's JSON form.
fn signature<T: serde::Serialize>(value: &T) -> u64 {
    use std::hash::Hasher;
    /// Feeds serde_json's output straight into the hasher, without a buffer.
    struct Feed(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for Feed {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut feed = Feed(Default::default());
    // Writing into a hasher cannot fail, and these values always serialize.
    let _ = serde_json::to_writer(&mut feed, value);
    feed.0.finish()
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

/// How often reports go out.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// A report (a delta, usually) every this long.
    pub interval: Duration,
    /// A full report at least every this long.
    pub full_interval: Duration,
}

/// Reports every `interval` and after every change of phase, health or role, until
/// `shutdown`: a full report first, after `full_interval` and whenever the controller
/// asks (409), and otherwise what changed since the last accepted one.
pub(super) async fn report_loop(
    slot: super::ClientSlot,
    inputs: ReportInputs,
    cadence: Cadence,
    shutdown: CancellationToken,
) {
    let (board, events) = (&inputs.board, &inputs.events);
    let changes = board.changes();
    let mut ticker = tokio::time::interval(cadence.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::default();
    let mut log = FailureLog::default();
    // What the controller holds; `None`: the next report is full.
    let mut base: Option<Baseline> = None;
    let mut full_due = tokio::time::Instant::now();
    let mut seq = 0u64;
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
        if tokio::time::Instant::now() >= full_due {
            base = None;
        }
        // Send until one is accepted; every attempt carries the current state.
        loop {
            seq += 1;
            let built = build(&inputs, seq, base.as_ref());
            let kind = built.report.kind;
            let compressed = gzip(&built.report);
            drop(built.report);
            let size = compressed.len() as u64;
            let client = slot.get();
            let sent = tokio::select! {
                sent = client.report(compressed) => sent,
                _ = shutdown.cancelled() => return,
            };
            // 409 to a full report: nothing the agent can send would do.
            let sent = match sent {
                Ok(Reported::WantsFull) if kind == Kind::Full => Err(CallError::Status {
                    url: client.url().to_string(),
                    status: 409,
                    body: "the controller refused a full report as if it were a change report".into(),
                }),
                sent => sent,
            };
            match sent {
                Ok(Reported::Accepted) => {
                    if let Some(seq) = built.last_event {
                        events.ack(seq);
                    }
                    inputs.telemetry.report_accepted(kind.as_str(), size);
                    backoff.reset();
                    log.succeeded("report");
                    board.controller_reported(None);
                    base = Some(built.baseline);
                    if kind == Kind::Full {
                        full_due = tokio::time::Instant::now() + cadence.full_interval;
                    }
                    break;
                }
                // The controller lacks the base: a full report now, without back-off
                // (agents are already spread by their own report timers).
                Ok(Reported::WantsFull) => {
                    tracing::info!(
                        base_seq = base.as_ref().map(|b| b.seq),
                        "The controller asked for a full report."
                    );
                    base = None;
                }
                Err(error) => {
                    inputs.telemetry.controller_failed("report");
                    let delay = backoff.after(&error, fastrand::f64());
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
        let built = build(&inputs, 1, None);
        let body = serde_json::to_value(&built.report).unwrap();
        assert_eq!(body["kind"], "full");
        assert_eq!(body["seq"], 1);
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
        events.ack(built.last_event.unwrap());
        let built = build(&inputs, 2, None);
        let report = built.report;
        let body = serde_json::to_value(&report).unwrap();
        assert_eq!(body["events"].as_array().unwrap().len(), 0);
        assert_eq!(built.last_event, None);

        let compressed = gzip(&report);
        let mut text = String::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), body);
    }

    fn status(name: &str, phase: crate::status::Phase) -> crate::status::InstanceStatus {
        let spec = crate::spec::InstanceSpec::example(name, 7000);
        let mut status = crate::status::InstanceStatus::pending(name, &spec);
        status.phase = phase;
        status
    }

    #[test]
    fn a_delta_carries_only_what_changed_since_its_base() {
        use crate::status::Phase;
        let board = StatusBoard::default();
        board.accepted(3, Some(9), "controller");
        for name in ["a", "b", "c"] {
            board.publish(status(name, Phase::Running));
        }
        let inputs = ReportInputs {
            facts: node_facts("n1", "boot", 1),
            board: board.clone(),
            observations: Observations::default(),
            events: Arc::new(EventLog::new(10)),
            telemetry: Arc::default(),
        };
        let full = build(&inputs, 1, None);
        let base = full.baseline;
        assert_eq!(base.instances.len(), 3);

        // Nothing changed but the readings: an empty delta, without node, desired or host.
        let mut a = status("a", Phase::Running);
        a.started_at = Some(1);
        board.publish(a.clone());
        let moved = build(&inputs, 2, Some(&base)).baseline;
        let mut a_later = a.clone();
        a_later.uptime_seconds = Some(99);
        a_later.stop_timeout_reason = "derived from 977.9 KiB used memory".into();
        assert_eq!(a.without_readings(), a_later.without_readings());
        let quiet = build(&inputs, 3, Some(&moved));
        let body = serde_json::to_value(&quiet.report).unwrap();
        assert_eq!(body["kind"], "delta");
        assert_eq!(body["base_seq"], 2);
        assert_eq!(body["instances"], serde_json::json!([]));
        assert_eq!(body["observed_generation"], 9);
        for absent in ["node", "desired", "host", "removed"] {
            assert!(body.get(absent).is_none(), "{absent} in {body}");
        }
        assert_eq!(quiet.baseline.instances, moved.instances);

        // b changes phase, c goes, d comes.
        board.publish(status("b", Phase::Backoff));
        board.remove("c");
        board.publish(status("d", Phase::Starting));
        let delta = build(&inputs, 4, Some(&quiet.baseline));
        let body = serde_json::to_value(&delta.report).unwrap();
        let names: Vec<&str> = body["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["b", "d"]);
        assert_eq!(body["removed"], serde_json::json!(["c"]));
        assert_eq!(body["instances"][0]["phase"], "backoff");

        // A new desired state is carried, once.
        board.accepted(4, Some(10), "controller");
        let body = serde_json::to_value(build(&inputs, 5, Some(&delta.baseline)).report).unwrap();
        assert_eq!(body["desired"]["generation"], 10);
        assert_eq!(body["observed_generation"], 10);
    }
}

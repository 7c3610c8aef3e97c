//! `GET /metrics`: the last samples in the Prometheus text format (0.0.4).
//!
//! A scrape never talks to a server: it copies what the monitors and the host
//! sampler last saw. The instances' lines come pre-rendered from their samples
//! (`exposition`); the agent's own counters, its process and the host go through a
//! prometheus-client registry, a few dozen lines. Host metrics are `ker_host_*`, the
//! agent's own `ker_agent_*`.

use crate::monitoring::exposition::{self, PROCESS_FAMILIES};
use crate::monitoring::observations::{HostSample, Observations};
use crate::status::StatusBoard;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt::Error;
use std::sync::Arc;

/// The agent's own counters and timings, updated where things happen.
#[derive(Debug)]
pub struct Telemetry {
    /// Time of one worker decision (`reconcile` and what it led to).
    pub reconcile_seconds: Histogram,
    /// Failed calls to the controller, by call (`poll`, `report`).
    pub controller_failures: Family<[(&'static str, &'static str); 1], Counter>,
    /// Compressed bytes of the reports the controller accepted.
    pub report_bytes: Counter,
    /// Reports the controller accepted, by kind (`full`, `delta`).
    pub reports: Family<[(&'static str, &'static str); 1], Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            // 100 µs … ~3 s: a decision is usually microseconds; a stop can take long.
            reconcile_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 4.0, 9,
            )),
            controller_failures: Family::default(),
            report_bytes: Counter::default(),
            reports: Family::default(),
        }
    }
}

impl Telemetry {
    pub fn controller_failed(&self, call: &'static str) {
        self.controller_failures.get_or_create(&[("call", call)]).inc();
    }

    /// The controller accepted a report of `kind` and `bytes` (compressed).
    pub fn report_accepted(&self, kind: &'static str, bytes: u64) {
        self.reports.get_or_create(&[("kind", kind)]).inc();
        self.report_bytes.inc_by(bytes);
    }
}

/// What a scrape reads: the registry, the status board and the last samples.
pub struct Endpoint {
    registry: Registry,
    board: StatusBoard,
    observations: Observations,
    /// The last scrape's text, reused by the next one once it has been sent: a new
    /// 2.3 MB buffer at 1,000 instances is 600 page faults, 2 ms of a scrape.
    last: std::sync::Mutex<Option<Arc<Vec<u8>>>>,
}

/// A scrape's text, shared with the response that sends it.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("metrics::Endpoint")
    }
}

impl Endpoint {
    pub fn new(board: StatusBoard, observations: Observations, telemetry: &Arc<Telemetry>) -> Endpoint {
        let mut registry = Registry::default();
        registry.register(
            "ker_agent_reconcile_duration_seconds",
            "Time of one instance worker decision and its action",
            telemetry.reconcile_seconds.clone(),
        );
        registry.register(
            "ker_agent_controller_request_failures",
            "Failed calls to the controller, by call",
            telemetry.controller_failures.clone(),
        );
        registry.register(
            "ker_agent_report_bytes",
            "Compressed bytes of reports the controller accepted",
            telemetry.report_bytes.clone(),
        );
        registry.register(
            "ker_agent_reports",
            "Reports the controller accepted, by kind (full, delta)",
            telemetry.reports.clone(),
        );
        registry.register_collector(Box::new(Host {
            observations: observations.clone(),
        }));
        registry.register_collector(Box::new(Node { board: board.clone() }));
        Endpoint {
            registry,
            board,
            observations,
            last: std::sync::Mutex::new(None),
        }
    }

    /// The whole exposition (UTF-8), in the last scrape's buffer when its response
    /// is gone.
    pub fn render(&self) -> bytes::Bytes {
        let views = self.board.agent_views();
        let mut head = String::with_capacity(16 * 1024 + exposition::statuses_len(&views));
        // Writing into a String cannot fail; a collector error leaves a partial text,
        // which is still better than none.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut head, &self.registry);
        exposition::append_statuses(&mut head, &views);
        drop(views);
        exposition::append_backups(&mut head, &self.board.backup_views());
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut out = match last.and_then(|text| Arc::try_unwrap(text).ok()) {
            Some(mut out) => {
                out.clear();
                out
            }
            None => Vec::new(),
        };
        self.observations.with_lines(|lines| {
            let size = head.len() + lines.len_hint();
            // Far more room than needed (instances went away) is given back.
            if out.capacity() > 2 * size {
                out = Vec::new();
            }
            out.reserve(size);
            out.extend_from_slice(head.as_bytes());
            lines.append_to(&mut out);
        });
        let text = Arc::new(out);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(text.clone());
        bytes::Bytes::from_owner(Shared(text))
    }
}

/// The content type of [`Endpoint::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Encodes what the status board says of the node as a whole: a rejected desired
/// state, the controller's last successful calls.
struct Node {
    board: StatusBoard,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Node")
    }
}

impl prometheus_client::collector::Collector for Node {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let rejected = u64::from(self.board.desired().last_rejection.is_some());
        family(
            &mut encoder,
            "ker_agent_desired_state_rejected",
            "Whether the last desired state offered was rejected (the one before stays applied)",
            MetricType::Gauge,
            [(NO_LABELS, rejected)],
        )?;
        if let Some(controller) = self.board.controller() {
            // 0 until the first success: an agent that never reached its controller
            // looks as stale as one that lost it.
            let seconds = |ms: Option<u64>| ms.map_or(0.0, |ms| ms as f64 / 1000.0);
            family(
                &mut encoder,
                "ker_agent_controller_last_success_timestamp_seconds",
                "When a call to the controller last succeeded, by call (poll, report); 0 before the first",
                MetricType::Gauge,
                [
                    ([("call", "poll")], seconds(controller.last_poll_ok_ms)),
                    ([("call", "report")], seconds(controller.last_report_ok_ms)),
                ],
            )?;
        }
        Ok(())
    }
}

/// Encodes the agent's process and the host's last sample.
struct Host {
    observations: Observations,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

/// The label set of a family with one series.
const NO_LABELS: [(&str, &str); 0] = [];

/// One family: a descriptor, then one sample per label set.
fn family<L: EncodeLabelSet, V: EncodeGaugeValue + prometheus_client::encoding::EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Result<(), Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, V, f64>(&value, None)?,
            _ => sample.encode_gauge(&value)?,
        }
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Host {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let host = self.observations.host();
        let e = &mut encoder;
        let agent = host.as_ref().and_then(|h| h.agent.as_ref());
        for (_, name, help, counter, read) in PROCESS_FAMILIES {
            let kind = if *counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            family(
                e,
                name,
                &format!("{help} of the agent"),
                kind,
                agent.map(|p| (NO_LABELS, read(p))),
            )?;
        }
        self.host(e, host.as_deref())
    }
}

impl Host {
    fn host(&self, e: &mut DescriptorEncoder, host: Option<&HostSample>) -> Result<(), Error> {
        let Some(sample) = host else {
            return Ok(());
        };
        let m = &sample.metrics;
        family(
            e,
            "ker_host_cpu_usage_ratio",
            "CPU busy share since the previous sample, all cores",
            MetricType::Gauge,
            [(NO_LABELS, f64::from(m.cpu_usage_percent) / 100.0)],
        )?;
        family(
            e,
            "ker_host_cpu_core_usage_ratio",
            "CPU busy share since the previous sample, per core",
            MetricType::Gauge,
            m.cpu_usage_percent_per_core
                .iter()
                .enumerate()
                .map(|(i, p)| ([("cpu", i.to_string())], f64::from(*p) / 100.0)),
        )?;
        if let Some(load) = &m.load_average {
            for (name, value) in [("1", load.one), ("5", load.five), ("15", load.fifteen)] {
                family(
                    e,
                    &format!("ker_host_load{name}"),
                    &format!("Load average over {name} minute(s)"),
                    MetricType::Gauge,
                    [(NO_LABELS, value)],
                )?;
            }
        }
        if let Some(memory) = &m.memory {
            let rows = [
                ("ker_host_memory_total_bytes", "Memory size", memory.total_bytes),
                (
                    "ker_host_memory_available_bytes",
                    "Memory available",
                    memory.available_bytes,
                ),
                ("ker_host_memory_used_bytes", "Memory used", memory.used_bytes),
                ("ker_host_swap_total_bytes", "Swap size", memory.swap_total_bytes),
                ("ker_host_swap_used_bytes", "Swap used", memory.swap_used_bytes),
            ];
            for (name, help, value) in rows {
                family(e, name, help, MetricType::Gauge, [(NO_LABELS, value as f64)])?;
            }
        }
        if let Some(fs) = &m.filesystem {
            let path = fs.path.display().to_string();
            let rows = [
                (
                    "ker_host_filesystem_size_bytes",
                    "Size of the filesystem holding data_dir",
                    fs.total_bytes,
                ),
                (
                    "ker_host_filesystem_avail_bytes",
                    "Space available to the agent there",
                    fs.available_bytes,
                ),
                ("ker_host_filesystem_files", "Inodes there", fs.inodes_total),
                ("ker_host_filesystem_files_free", "Free inodes there", fs.inodes_free),
            ];
            for (name, help, value) in rows {
                family(
                    e,
                    name,
                    help,
                    MetricType::Gauge,
                    [([("path", path.as_str())], value as f64)],
                )?;
            }
        }
        family(
            e,
            "ker_host_network_receive_bytes",
            "Bytes received, per interface",
            MetricType::Counter,
            m.network.iter().map(|n| ([("device", n.name.as_str())], n.rx_bytes)),
        )?;
        family(
            e,
            "ker_host_network_transmit_bytes",
            "Bytes sent, per interface",
            MetricType::Counter,
            m.network.iter().map(|n| ([("device", n.name.as_str())], n.tx_bytes)),
        )?;
        family(
            e,
            "ker_host_preflight_finding",
            "Host settings that hurt Redis/Pika (1 per finding; see /v1/status for the message)",
            MetricType::Gauge,
            sample.findings.iter().map(|f| ([("code", f.code)], 1u32)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitoring::observations::InstanceMetrics;

    /// A Pika instance's sample, from a real Pika's INFO, exported under the common
    /// names and Pika's own.
    #[test]
    fn a_pika_sample_maps_onto_the_common_names_and_its_own() {
        let reply = include_str!("../../tests/fixtures/pika/info-master.txt").replace('\n', "\r\n");
        let board = StatusBoard::default();
        let mut spec = crate::spec::InstanceSpec::example("p", 9221);
        spec.engine = crate::engine::EngineKind::Pika;
        board.publish(crate::status::InstanceStatus::pending("p", &spec));
        let observations = Observations::default();
        observations.set_instance(
            "p",
            InstanceMetrics::new(
                1,
                crate::engine::pika_stats(reply.as_bytes()),
                None,
                crate::engine::EngineKind::Pika,
                reply.as_bytes(),
            ),
        );
        let text = Endpoint::new(board, observations, &Arc::new(Telemetry::default())).render();
        let text = String::from_utf8(text.to_vec()).expect("the exposition is UTF-8");
        for line in [
            "redis_db_size_bytes{name=\"p\"} ",
            "pika_compaction_in_progress{name=\"p\"} 0",
            "redis_connected_clients{name=\"p\"} ",
            "redis_commands_processed_total{name=\"p\"} ",
            "redis_net_input_bytes_total{name=\"p\"} ",
        ] {
            assert!(text.lines().any(|l| l.starts_with(line)), "no {line:?} in:\n{text}");
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("redis_instance_info{") && l.contains("role=\"master\"")),
            "{text}"
        );
    }
    /// A board and samples covering every family: a master with a replica and
    /// keys, replicas up and down, Pika, a process, every health, a stopped
    /// instance, and a name that needs escaping.
    fn scrape_setup() -> (StatusBoard, Observations) {
        use crate::monitoring::health::HealthStatus;
        let board = StatusBoard::default();
        let observations = Observations::default();
        let crlf = |s: &str| s.replace('\n', "\r\n");
        let cases: [(&str, crate::engine::EngineKind, String); 6] = [
            (
                "all",
                crate::engine::EngineKind::Redis,
                crlf(include_str!("../../tests/fixtures/redis/info-all.txt")),
            ),
            (
                "master",
                crate::engine::EngineKind::Redis,
                crlf(include_str!(
                    "../../tests/fixtures/redis/info-replication-master-with-replica.txt"
                )),
            ),
            (
                "replica",
                crate::engine::EngineKind::Redis,
                crlf(include_str!("../../tests/fixtures/redis/info-replica-up.txt")),
            ),
            (
                "q\"\\x",
                crate::engine::EngineKind::Redis,
                crlf(include_str!("../../tests/fixtures/redis/info-replica-down.txt")),
            ),
            (
                "p",
                crate::engine::EngineKind::Pika,
                crlf(include_str!("../../tests/fixtures/pika/info-all.txt")),
            ),
            (
                "pr",
                crate::engine::EngineKind::Pika,
                crlf(include_str!("../../tests/fixtures/pika/info-replica-up.txt")),
            ),
        ];
        let verdicts = [HealthStatus::Ok, HealthStatus::Degraded, HealthStatus::Unhealthy];
        for (i, (name, engine, reply)) in cases.iter().enumerate() {
            let mut spec = crate::spec::InstanceSpec::example(name, 7000 + i as u16);
            spec.engine = *engine;
            let mut status = crate::status::InstanceStatus::pending(name, &spec);
            status.phase = crate::status::Phase::Running;
            status.ready = i % 2 == 0;
            status.restarts = i as u64;
            board.publish(status);
            board.set_health(
                name,
                Some(crate::status::Health {
                    status: verdicts[i % 3],
                    reasons: Vec::new(),
                    answering: i != 3,
                    ping_ms: (i != 3).then_some(0.25 * i as f64),
                    observed_role: None,
                    replication: None,
                    checked_at_ms: 1,
                    sent_at_ms: 1,
                }),
            );
            let stats = match engine {
                crate::engine::EngineKind::Pika => crate::engine::pika_stats(reply.as_bytes()),
                _ => crate::engine::redis_stats(reply.as_bytes()),
            };
            let process = (i % 2 == 1).then(|| crate::procfs::ProcessMetrics {
                rss_bytes: 1 << 20,
                anon_bytes: 1 << 19,
                cpu_seconds: 1.5 * i as f64,
                open_fds: 10 + i as u64,
                threads: 4,
            });
            observations.set_instance(
                name,
                InstanceMetrics::new(1_700_000_000_000, stats, process, *engine, reply.as_bytes()),
            );
        }
        // A verdict whose instance is gone (the monitor's last word racing the
        // removal) shows nowhere, before and between the names.
        for ghost in ["a-ghost", "pa-ghost"] {
            let mut verdict = board.health("all").expect("a verdict");
            verdict.status = HealthStatus::Unhealthy;
            board.set_health(ghost, Some(verdict));
        }
        let mut stopped = crate::spec::InstanceSpec::example("stopped", 7100);
        stopped.state = crate::spec::RunState::Stopped;
        board.publish(crate::status::InstanceStatus::pending("stopped", &stopped));
        (board, observations)
    }

    /// The pre-rendered scrape says line for line what prometheus-client's encoder
    /// said of the same board and samples (`scrape-reference.txt`, written by the
    /// encoder this replaced), in an order where every family's lines stay together.
    #[test]
    fn a_rejected_state_and_the_controller_calls_are_exposed() {
        let board = StatusBoard::default();
        let endpoint = Endpoint::new(board.clone(), Observations::default(), &Arc::new(Telemetry::default()));
        let text = String::from_utf8(endpoint.render().to_vec()).unwrap();
        assert!(text.contains("\nker_agent_desired_state_rejected 0\n"), "{text}");
        assert!(
            !text.contains("ker_agent_controller_last_success"),
            "standalone: {text}"
        );

        board.rejected("manifests", None, vec!["a.toml: port: 1 is outside 1024-65535".into()]);
        board.controller_configured("https://cc.example");
        board.controller_polled(None);
        let text = String::from_utf8(endpoint.render().to_vec()).unwrap();
        assert!(text.contains("\nker_agent_desired_state_rejected 1\n"), "{text}");
        let line = |call: &str| {
            let prefix = format!("ker_agent_controller_last_success_timestamp_seconds{{call=\"{call}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse::<f64>().ok())
        };
        let now = crate::process::unix_now() as f64;
        assert!(line("poll").is_some_and(|t| (now - t).abs() < 5.0), "{text}");
        assert_eq!(line("report"), Some(0.0), "never reported: {text}");
        board.clear_rejection();
        let text = String::from_utf8(endpoint.render().to_vec()).unwrap();
        assert!(text.contains("\nker_agent_desired_state_rejected 0\n"), "{text}");
    }

    #[test]
    fn a_scrape_says_what_the_reference_encoder_said() {
        let (board, observations) = scrape_setup();
        let text = Endpoint::new(board, observations, &Arc::new(Telemetry::default())).render();
        let text = String::from_utf8(text.to_vec()).expect("the exposition is UTF-8");
        let reference = include_str!("../../tests/fixtures/metrics/scrape-reference.txt");
        let sorted = |text: &str| {
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with("redis_start_time_seconds{"))
                .map(str::to_string)
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&text), sorted(reference), "{text}");
        // The start time is the sample's time less the uptime (35 s in Pika's INFO).
        assert!(
            text.contains("redis_start_time_seconds{name=\"p\"} 1699999965.0\n"),
            "{text}"
        );
        // Every family once, its lines right after its descriptor.
        let mut seen = std::collections::BTreeSet::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap_or_default();
                assert!(seen.insert(current.to_string()), "{current} twice in:\n{text}");
            } else if !line.starts_with('#') {
                let metric = line.split(['{', ' ']).next().unwrap_or_default();
                assert!(
                    metric.starts_with(current),
                    "{metric} outside its family ({current}) in:\n{text}"
                );
            }
        }
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())));
        assert!(parsed.is_ok(), "{text}");
    }

    /// Each instance's backups: the newest kept one, the failures and whether one runs,
    /// every family once with its lines after it.
    #[test]
    fn backups_are_exported_per_instance() {
        use crate::status::{BackupActivity, BackupInfo, BackupStatus};
        let board = StatusBoard::default();
        let newest = BackupInfo {
            id: "20261129T120000Z".into(),
            at: 1_795_000_000,
            bytes: 4096,
            sha256: "ab".repeat(32),
            keys: Some(3),
            duration_ms: 1500,
        };
        let saving = BackupStatus {
            activity: BackupActivity::Saving,
            failures: 2,
            ..BackupStatus::default()
        };
        board.set_backups("a", saving, vec![newest]);
        board.set_backups("b", BackupStatus::default(), Vec::new());
        let text = Endpoint::new(board, Observations::default(), &Arc::new(Telemetry::default())).render();
        let text = String::from_utf8(text.to_vec()).unwrap();
        for line in [
            "ker_agent_backup_last_success_timestamp_seconds{name=\"a\"} 1795000000\n",
            "ker_agent_backup_last_size_bytes{name=\"a\"} 4096\n",
            "ker_agent_backup_last_duration_seconds{name=\"a\"} 1.5\n",
            "ker_agent_backup_failures_total{name=\"a\"} 2\n",
            "ker_agent_backup_failures_total{name=\"b\"} 0\n",
            "ker_agent_backup_in_progress{name=\"a\"} 1\n",
            "ker_agent_backup_in_progress{name=\"b\"} 0\n",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("ker_agent_backup_last_size_bytes{name=\"b\"}"), "{text}");
        assert_eq!(text.matches("# TYPE ker_agent_backup_").count(), 5, "{text}");
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())));
        assert!(parsed.is_ok(), "{text}");
    }

    /// A scrape reuses the previous one's buffer once its response is gone, and never
    /// while it is still being sent.
    #[test]
    fn a_scrape_reuses_the_last_buffer_once_it_was_sent() {
        let (board, observations) = scrape_setup();
        let endpoint = Endpoint::new(board, observations, &Arc::new(Telemetry::default()));
        let first = endpoint.render();
        let (address, text) = (first.as_ptr(), first.to_vec());
        let second = endpoint.render();
        assert_ne!(second.as_ptr(), address, "the first response still holds it");
        assert_eq!(second.to_vec(), text);
        drop(first);
        drop(second);
        let third = endpoint.render();
        assert!(third.len() > 10_000);
        let again = endpoint.render();
        drop(third);
        let fourth = endpoint.render();
        assert_ne!(again.as_ptr(), fourth.as_ptr());
        assert_eq!(again.to_vec(), fourth.to_vec());
        let reused = fourth.as_ptr();
        drop(fourth);
        assert_eq!(endpoint.render().as_ptr(), reused);
    }
}

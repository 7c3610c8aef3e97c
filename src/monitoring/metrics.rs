//! `GET /metrics`: the last samples in the Prometheus text format (prometheus-client).
//!
//! Instance metrics carry redis_exporter's names and types (`redis_up`,
//! `redis_memory_used_bytes`, `redis_commands_processed_total`, …) plus a `name` label,
//! so dashboards built for redis_exporter work; host metrics are `ker_host_*`, the
//! agent's own `ker_agent_*`. Everything is read from the status board and the
//! observations store: a scrape never talks to a server.

use crate::engine::ServerStats;
use crate::monitoring::health::HealthStatus;
use crate::monitoring::observations::{HostSample, Observations};
use crate::process::unix_now;
use crate::status::{Phase, StatusBoard};
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt::Error;

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

/// Builds the registry behind `/metrics`.
pub fn registry(board: StatusBoard, observations: Observations, telemetry: &std::sync::Arc<Telemetry>) -> Registry {
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
    registry.register_collector(Box::new(Snapshot { board, observations }));
    registry
}

/// Renders the registry as Prometheus text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(64 * 1024);
    // Writing into a String cannot fail; a collector error leaves a partial text,
    // which is still better than none.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
    text
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Encodes the board and the last samples on every scrape.
struct Snapshot {
    board: StatusBoard,
    observations: Observations,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
}

/// The label set of a family with one series.
const NO_LABELS: [(&str, &str); 0] = [];

/// A label set with owned values.
type Labels<const N: usize> = [(&'static str, String); N];

/// Every instance's last sample, by name.
type Samples = std::collections::BTreeMap<String, std::sync::Arc<crate::monitoring::observations::InstanceMetrics>>;

type Field = fn(&ServerStats) -> Option<f64>;

fn flag(value: Option<bool>) -> Option<f64> {
    value.map(|b| if b { 1.0 } else { 0.0 })
}

/// INFO fields exported as gauges, with redis_exporter's names.
const GAUGES: &[(&str, &str, Field)] = &[
    ("redis_uptime_in_seconds", "uptime_in_seconds", |s| {
        s.uptime_seconds.map(|v| v as f64)
    }),
    ("redis_process_id", "process_id", |s| s.process_id.map(f64::from)),
    ("redis_memory_used_bytes", "used_memory", |s| {
        s.used_memory_bytes.map(|v| v as f64)
    }),
    ("redis_memory_used_rss_bytes", "used_memory_rss", |s| {
        s.used_memory_rss_bytes.map(|v| v as f64)
    }),
    ("redis_memory_used_peak_bytes", "used_memory_peak", |s| {
        s.used_memory_peak_bytes.map(|v| v as f64)
    }),
    ("redis_mem_fragmentation_ratio", "mem_fragmentation_ratio", |s| {
        s.mem_fragmentation_ratio
    }),
    ("redis_memory_max_bytes", "maxmemory", |s| {
        s.maxmemory_bytes.map(|v| v as f64)
    }),
    ("redis_connected_clients", "connected_clients", |s| {
        s.connected_clients.map(|v| v as f64)
    }),
    ("redis_blocked_clients", "blocked_clients", |s| {
        s.blocked_clients.map(|v| v as f64)
    }),
    ("redis_config_maxclients", "maxclients", |s| {
        s.maxclients.map(|v| v as f64)
    }),
    ("redis_instantaneous_ops_per_sec", "instantaneous_ops_per_sec", |s| {
        s.instantaneous_ops_per_sec.map(|v| v as f64)
    }),
    ("redis_loading_dump_file", "loading", |s| flag(s.loading)),
    (
        "redis_rdb_changes_since_last_save",
        "rdb_changes_since_last_save",
        |s| s.rdb_changes_since_last_save.map(|v| v as f64),
    ),
    ("redis_rdb_bgsave_in_progress", "rdb_bgsave_in_progress", |s| {
        flag(s.rdb_bgsave_in_progress)
    }),
    ("redis_rdb_last_save_timestamp_seconds", "rdb_last_save_time", |s| {
        s.rdb_last_save_time.map(|v| v as f64)
    }),
    ("redis_rdb_last_bgsave_status", "rdb_last_bgsave_status", |s| {
        flag(s.rdb_last_bgsave_ok)
    }),
    ("redis_aof_enabled", "aof_enabled", |s| flag(s.aof_enabled)),
    ("redis_aof_rewrite_in_progress", "aof_rewrite_in_progress", |s| {
        flag(s.aof_rewrite_in_progress)
    }),
    ("redis_aof_last_write_status", "aof_last_write_status", |s| {
        flag(s.aof_last_write_ok)
    }),
    ("redis_connected_slaves", "connected_slaves", |s| {
        s.connected_replicas.map(|v| v as f64)
    }),
    ("redis_master_repl_offset", "master_repl_offset", |s| {
        s.master_repl_offset.map(|v| v as f64)
    }),
    ("redis_db_size_bytes", "db_size (Pika: bytes on disk)", |s| {
        s.disk_used_bytes.map(|v| v as f64)
    }),
    ("pika_compaction_in_progress", "is_compact (Pika)", |s| {
        flag(s.compaction_in_progress)
    }),
];

/// INFO fields exported as counters; the names get `_total`.
const COUNTERS: &[(&str, &str, Field)] = &[
    ("redis_commands_processed", "total_commands_processed", |s| {
        s.total_commands_processed.map(|v| v as f64)
    }),
    ("redis_connections_received", "total_connections_received", |s| {
        s.total_connections_received.map(|v| v as f64)
    }),
    ("redis_rejected_connections", "rejected_connections", |s| {
        s.rejected_connections.map(|v| v as f64)
    }),
    ("redis_net_input_bytes", "total_net_input_bytes", |s| {
        s.net_input_bytes.map(|v| v as f64)
    }),
    ("redis_net_output_bytes", "total_net_output_bytes", |s| {
        s.net_output_bytes.map(|v| v as f64)
    }),
    ("redis_keyspace_hits", "keyspace_hits", |s| {
        s.keyspace_hits.map(|v| v as f64)
    }),
    ("redis_keyspace_misses", "keyspace_misses", |s| {
        s.keyspace_misses.map(|v| v as f64)
    }),
    ("redis_expired_keys", "expired_keys", |s| {
        s.expired_keys.map(|v| v as f64)
    }),
    ("redis_evicted_keys", "evicted_keys", |s| {
        s.evicted_keys.map(|v| v as f64)
    }),
    ("redis_cpu_sys_seconds", "used_cpu_sys", |s| s.cpu_sys_seconds),
    ("redis_cpu_user_seconds", "used_cpu_user", |s| s.cpu_user_seconds),
    ("redis_cpu_sys_children_seconds", "used_cpu_sys_children", |s| {
        s.cpu_sys_children_seconds
    }),
    ("redis_cpu_user_children_seconds", "used_cpu_user_children", |s| {
        s.cpu_user_children_seconds
    }),
];

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

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let statuses = self.board.snapshot();
        let samples = self.observations.instances();
        let e = &mut encoder;

        // Whether each instance answers, as redis_exporter's `redis_up`: an instance
        // that should run but does not is down.
        family(
            e,
            "redis_up",
            "Whether the instance answers its health probe",
            MetricType::Gauge,
            statuses
                .iter()
                .filter(|s| s.want == crate::status::Want::Running)
                .map(|s| {
                    let up = s.health.as_ref().is_some_and(|h| h.answering) && s.phase == Phase::Running;
                    ([("name", s.name.as_str())], u32::from(up))
                }),
        )?;
        let servers: Vec<(&str, &ServerStats)> = samples.iter().map(|(name, m)| (name.as_str(), &m.server)).collect();
        let info = servers.iter().map(|(name, s)| {
            let role = match s.role {
                Some(crate::engine::ObservedRole::Master) => "master",
                Some(crate::engine::ObservedRole::Replica) => "slave",
                None => "",
            };
            let labels = vec![
                ("name", (*name).to_string()),
                ("role", role.to_string()),
                ("redis_version", s.version.clone().unwrap_or_default()),
                ("maxmemory_policy", s.maxmemory_policy.clone().unwrap_or_default()),
                ("process_id", s.process_id.map(|p| p.to_string()).unwrap_or_default()),
            ];
            (labels, 1u32)
        });
        family(
            e,
            "redis_instance_info",
            "Information about the server",
            MetricType::Gauge,
            info,
        )?;
        let now = unix_now() as f64;
        family(
            e,
            "redis_start_time_seconds",
            "Start time of the server since the Unix epoch in seconds",
            MetricType::Gauge,
            servers
                .iter()
                .filter_map(|(name, s)| Some(([("name", *name)], now - s.uptime_seconds? as f64))),
        )?;
        for (metric, field, read) in GAUGES {
            family(
                e,
                metric,
                &format!("INFO {field}"),
                MetricType::Gauge,
                servers
                    .iter()
                    .filter_map(|(name, s)| Some(([("name", *name)], read(s)?))),
            )?;
        }
        for (metric, field, read) in COUNTERS {
            family(
                e,
                metric,
                &format!("INFO {field}"),
                MetricType::Counter,
                servers
                    .iter()
                    .filter_map(|(name, s)| Some(([("name", *name)], read(s)?))),
            )?;
        }
        self.replication(e, &servers)?;
        self.keyspace(e, &servers)?;
        self.agent_view(e, &statuses)?;
        let host = self.observations.host();
        self.processes(e, &samples, host.as_deref())?;
        self.host(e, host.as_deref())?;
        Ok(())
    }
}

impl Snapshot {
    fn replication(&self, e: &mut DescriptorEncoder, servers: &[(&str, &ServerStats)]) -> Result<(), Error> {
        let replicas: Vec<(&str, &ServerStats, Labels<3>)> = servers
            .iter()
            .filter(|(_, s)| s.role == Some(crate::engine::ObservedRole::Replica))
            .map(|(name, s)| {
                let labels = [
                    ("name", (*name).to_string()),
                    ("master_host", s.master_host.clone().unwrap_or_default()),
                    ("master_port", s.master_port.map(|p| p.to_string()).unwrap_or_default()),
                ];
                (*name, *s, labels)
            })
            .collect();
        let per_replica = |read: fn(&ServerStats) -> Option<f64>| {
            replicas
                .iter()
                .filter_map(move |(_, s, labels)| Some((labels.clone(), read(s)?)))
        };
        family(
            e,
            "redis_master_link_up",
            "Whether the replica's link to its master is up",
            MetricType::Gauge,
            per_replica(|s| flag(s.master_link_up)),
        )?;
        family(
            e,
            "redis_master_last_io_seconds_ago",
            "Seconds since the replica last heard from its master",
            MetricType::Gauge,
            per_replica(|s| s.master_last_io_seconds_ago.map(|v| v as f64)),
        )?;
        family(
            e,
            "redis_master_sync_in_progress",
            "Whether the replica is syncing from its master",
            MetricType::Gauge,
            per_replica(|s| flag(s.master_sync_in_progress)),
        )?;
        family(
            e,
            "redis_slave_repl_offset",
            "Replication offset of the replica",
            MetricType::Gauge,
            per_replica(|s| s.replica_repl_offset.map(|v| v as f64)),
        )?;
        let links: Vec<([(&str, String); 4], &crate::engine::ReplicaLink)> = servers
            .iter()
            .flat_map(|(name, s)| {
                s.replicas.iter().map(move |r| {
                    let labels = [
                        ("name", (*name).to_string()),
                        ("slave_ip", r.ip.clone()),
                        ("slave_port", r.port.to_string()),
                        ("slave_state", r.state.clone()),
                    ];
                    (labels, r)
                })
            })
            .collect();
        family(
            e,
            "redis_connected_slave_offset_bytes",
            "Offset acknowledged by each connected replica",
            MetricType::Gauge,
            links.iter().map(|(labels, r)| (labels.clone(), r.offset as f64)),
        )?;
        family(
            e,
            "redis_connected_slave_lag_seconds",
            "Seconds since each connected replica's last acknowledgement",
            MetricType::Gauge,
            links
                .iter()
                .filter_map(|(labels, r)| Some((labels.clone(), r.lag_seconds? as f64))),
        )?;
        Ok(())
    }

    fn keyspace(&self, e: &mut DescriptorEncoder, servers: &[(&str, &ServerStats)]) -> Result<(), Error> {
        let dbs: Vec<([(&str, String); 2], &crate::engine::DbKeys)> = servers
            .iter()
            .flat_map(|(name, s)| {
                s.keyspace
                    .iter()
                    .map(move |db| ([("name", (*name).to_string()), ("db", format!("db{}", db.db))], db))
            })
            .collect();
        family(
            e,
            "redis_db_keys",
            "Total number of keys by DB",
            MetricType::Gauge,
            dbs.iter().map(|(labels, db)| (labels.clone(), db.keys as f64)),
        )?;
        family(
            e,
            "redis_db_keys_expiring",
            "Total number of expiring keys by DB",
            MetricType::Gauge,
            dbs.iter().map(|(labels, db)| (labels.clone(), db.expires as f64)),
        )?;
        family(
            e,
            "redis_db_avg_ttl_seconds",
            "Avg TTL in seconds",
            MetricType::Gauge,
            dbs.iter()
                .filter_map(|(labels, db)| Some((labels.clone(), db.avg_ttl_ms? as f64 / 1000.0))),
        )
    }

    /// What only the agent knows: phases, health, restarts.
    fn agent_view(&self, e: &mut DescriptorEncoder, statuses: &[crate::status::InstanceStatus]) -> Result<(), Error> {
        family(
            e,
            "ker_agent_instance_restarts",
            "Restarts after unexpected exits, kept across agent restarts",
            MetricType::Counter,
            statuses.iter().map(|s| ([("name", s.name.as_str())], s.restarts)),
        )?;
        family(
            e,
            "ker_agent_instance_phase",
            "The instance's phase (1 for the current one)",
            MetricType::Gauge,
            statuses
                .iter()
                .map(|s| ([("name", s.name.as_str()), ("phase", s.phase.as_str())], 1u32)),
        )?;
        family(
            e,
            "ker_agent_instance_ready",
            "Whether the instance is ready",
            MetricType::Gauge,
            statuses
                .iter()
                .map(|s| ([("name", s.name.as_str())], u32::from(s.ready))),
        )?;
        family(
            e,
            "ker_agent_instance_health",
            "Health of the instance: 0 ok, 1 degraded, 2 unhealthy",
            MetricType::Gauge,
            statuses.iter().filter_map(|s| {
                let level = match s.health.as_ref()?.status {
                    HealthStatus::Ok => 0u32,
                    HealthStatus::Degraded => 1,
                    HealthStatus::Unhealthy => 2,
                };
                Some(([("name", s.name.as_str())], level))
            }),
        )?;
        family(
            e,
            "ker_agent_instance_ping_seconds",
            "PING round trip of the last health probe",
            MetricType::Gauge,
            statuses
                .iter()
                .filter_map(|s| Some(([("name", s.name.as_str())], s.health.as_ref()?.ping_ms? / 1000.0))),
        )
    }

    /// The instances' processes and the agent's own, from /proc.
    fn processes(&self, e: &mut DescriptorEncoder, samples: &Samples, host: Option<&HostSample>) -> Result<(), Error> {
        let agent = host.and_then(|h| h.agent.as_ref());
        type Read = fn(&crate::procfs::ProcessMetrics) -> f64;
        let families: [(&str, &str, MetricType, Read); 5] = [
            ("resident_memory_bytes", "Resident memory", MetricType::Gauge, |p| {
                p.rss_bytes as f64
            }),
            (
                "anonymous_memory_bytes",
                "Anonymous resident memory (RssAnon)",
                MetricType::Gauge,
                |p| p.anon_bytes as f64,
            ),
            ("cpu_seconds", "CPU time, user and system", MetricType::Counter, |p| {
                p.cpu_seconds
            }),
            ("open_fds", "Open file descriptors", MetricType::Gauge, |p| {
                p.open_fds as f64
            }),
            ("threads", "Threads", MetricType::Gauge, |p| p.threads as f64),
        ];
        for (suffix, help, kind, read) in families {
            family(
                e,
                &format!("ker_instance_process_{suffix}"),
                &format!("{help} of the instance's process"),
                kind,
                samples
                    .iter()
                    .filter_map(|(name, m)| Some(([("name", name.as_str())], read(m.process.as_ref()?)))),
            )?;
            family(
                e,
                &format!("ker_agent_process_{suffix}"),
                &format!("{help} of the agent"),
                kind,
                agent.map(|p| (NO_LABELS, read(p))),
            )?;
        }
        Ok(())
    }

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
            InstanceMetrics {
                sampled_at_ms: 1,
                server: crate::engine::pika_stats(reply.as_bytes()),
                process: None,
                engine: crate::engine::EngineKind::Pika,
                info_reply: crate::monitoring::observations::KeptReply::keep(reply.as_bytes()),
            },
        );
        let text = render(&registry(
            board,
            observations,
            &std::sync::Arc::new(Telemetry::default()),
        ));
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
}

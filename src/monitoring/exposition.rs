//! The instances' part of `/metrics` in the Prometheus text format, rendered when a
//! sample is taken rather than at every scrape.
//!
//! At 1,000 instances a scrape is 2.3 MB of text: 60 families of one to a few lines
//! per instance. Encoding all of it at every scrape (label escaping, number
//! formatting) cost 12–18 ms of a core. Here each instance's lines are rendered once
//! per sample, family by family ([`render_instance_family`]), into the store that
//! `lines` keeps for scrapes. What changes between samples, the agent's own view of
//! each instance (phase, readiness, health), is a few short lines rendered at the
//! scrape ([`append_statuses`]).
//!
//! Instance metrics carry redis_exporter's names and types (`redis_up`,
//! `redis_memory_used_bytes`, `redis_commands_processed_total`, …) plus a `name`
//! label, so dashboards built for redis_exporter work.

use crate::engine::{DbKeys, ObservedRole, ReplicaLink, ServerStats};
use crate::monitoring::health::HealthStatus;
use crate::procfs::ProcessMetrics;
use crate::status::{AgentView, BackupView, Phase};
use std::sync::LazyLock;

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    /// What the text format 0.0.4 adds to a family's name: `_total` for counters.
    fn suffix(self) -> &'static str {
        match self {
            Kind::Gauge => "",
            Kind::Counter => "_total",
        }
    }
}

/// One family's descriptor, its `# HELP` and `# TYPE` lines, as prometheus-client
/// writes them in the text format 0.0.4: a counter's family is named with `_total`.
fn descriptor(name: &str, help: &str, kind: Kind) -> String {
    let suffix = kind.suffix();
    let kind = match kind {
        Kind::Gauge => "gauge",
        Kind::Counter => "counter",
    };
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    format!("# HELP {name}{suffix} {help}\n# TYPE {name}{suffix} {kind}\n")
}

/// A sample's value: integers as integers, the rest as floats (as prometheus-client
/// writes them).
#[derive(Debug, Clone, Copy)]
enum Value {
    Float(f64),
    Integer(u64),
}

/// Writes one sample line: `name[suffix]{labels} value`.
fn write_line(out: &mut String, name: &str, suffix: &str, labels: &[(&str, &str)], value: Value) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    match value {
        Value::Float(v) if v.is_finite() => out.push_str(dtoa::Buffer::new().format_finite(v)),
        Value::Float(v) if v.is_nan() => out.push_str("NaN"),
        Value::Float(v) if v > 0.0 => out.push_str("+Inf"),
        Value::Float(_) => out.push_str("-Inf"),
        Value::Integer(v) => out.push_str(itoa::Buffer::new().format(v)),
    }
    out.push('\n');
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn label_value(out: &mut String, value: &str) {
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Reads one INFO field of a sample.
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

/// INFO fields exported as counters; the samples' names get `_total`.
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

/// Reads one figure of a database's keyspace line.
type DbField = fn(&DbKeys) -> Option<f64>;

/// Where a family's samples come from in an instance's sample.
#[derive(Clone, Copy)]
enum Source {
    /// `redis_instance_info`: the value 1, the facts in labels.
    Info,
    /// When the server started: the sample's time less its uptime.
    StartTime,
    /// One INFO field.
    Field(Field),
    /// One INFO field of a replica, with its master in labels.
    Replica(Field),
    /// One line per replica a master reports.
    ReplicaLink(fn(&ReplicaLink) -> Option<f64>),
    /// One line per database with keys.
    Db(DbField),
    /// The instance's process, from /proc.
    Process(fn(&ProcessMetrics) -> f64),
}

/// A family of per-instance samples.
struct Family {
    name: &'static str,
    kind: Kind,
    /// Its `# HELP` and `# TYPE` lines.
    descriptor: String,
    source: Source,
}

impl Family {
    fn new(name: &'static str, help: &str, kind: Kind, source: Source) -> Family {
        Family {
            name,
            kind,
            descriptor: descriptor(name, help, kind),
            source,
        }
    }

    /// Writes this family's lines for one instance.
    fn render(&self, out: &mut String, name: &str, sample: &Sample<'_>) {
        let suffix = self.kind.suffix();
        let server = sample.server;
        let mut line = |labels: &[(&str, &str)], value: Value| {
            write_line(out, self.name, suffix, labels, value);
        };
        match self.source {
            Source::Info => {
                let role = match server.role {
                    Some(ObservedRole::Master) => "master",
                    Some(ObservedRole::Replica) => "slave",
                    None => "",
                };
                let pid = server.process_id.map(|p| p.to_string()).unwrap_or_default();
                let labels = [
                    ("name", name),
                    ("role", role),
                    ("redis_version", server.version.as_deref().unwrap_or_default()),
                    (
                        "maxmemory_policy",
                        server.maxmemory_policy.as_deref().unwrap_or_default(),
                    ),
                    ("process_id", pid.as_str()),
                ];
                line(&labels, Value::Integer(1));
            }
            Source::StartTime => {
                if let Some(uptime) = server.uptime_seconds {
                    let sampled_at = sample.sampled_at_ms / 1000;
                    line(
                        &[("name", name)],
                        Value::Float(sampled_at.saturating_sub(uptime) as f64),
                    );
                }
            }
            Source::Field(read) => {
                if let Some(value) = read(server) {
                    line(&[("name", name)], Value::Float(value));
                }
            }
            Source::Replica(read) => {
                if server.role != Some(ObservedRole::Replica) {
                    return;
                }
                if let Some(value) = read(server) {
                    let port = server.master_port.map(|p| p.to_string()).unwrap_or_default();
                    let labels = [
                        ("name", name),
                        ("master_host", server.master_host.as_deref().unwrap_or_default()),
                        ("master_port", port.as_str()),
                    ];
                    line(&labels, Value::Float(value));
                }
            }
            Source::ReplicaLink(read) => {
                for replica in &server.replicas {
                    if let Some(value) = read(replica) {
                        let port = replica.port.to_string();
                        let labels = [
                            ("name", name),
                            ("slave_ip", replica.ip.as_str()),
                            ("slave_port", port.as_str()),
                            ("slave_state", replica.state.as_str()),
                        ];
                        line(&labels, Value::Float(value));
                    }
                }
            }
            Source::Db(read) => {
                for db in &server.keyspace {
                    if let Some(value) = read(db) {
                        let label = format!("db{}", db.db);
                        line(&[("name", name), ("db", label.as_str())], Value::Float(value));
                    }
                }
            }
            Source::Process(read) => {
                if let Some(process) = sample.process {
                    line(&[("name", name)], Value::Float(read(process)));
                }
            }
        }
    }
}

/// What one instance's families are rendered from.
pub struct Sample<'a> {
    /// When it was taken, milliseconds since the Unix epoch.
    pub sampled_at_ms: u64,
    pub server: &'a ServerStats,
    pub process: Option<&'a ProcessMetrics>,
}

/// Every family of per-instance samples, in the order a scrape writes them.
static FAMILIES: LazyLock<Vec<Family>> = LazyLock::new(|| {
    let mut families = vec![
        Family::new(
            "redis_instance_info",
            "Information about the server",
            Kind::Gauge,
            Source::Info,
        ),
        Family::new(
            "redis_start_time_seconds",
            "Start time of the server since the Unix epoch in seconds",
            Kind::Gauge,
            Source::StartTime,
        ),
    ];
    for (name, field, read) in GAUGES {
        families.push(Family::new(
            name,
            &format!("INFO {field}"),
            Kind::Gauge,
            Source::Field(*read),
        ));
    }
    for (name, field, read) in COUNTERS {
        families.push(Family::new(
            name,
            &format!("INFO {field}"),
            Kind::Counter,
            Source::Field(*read),
        ));
    }
    let replica: [(&'static str, &str, Field); 4] = [
        (
            "redis_master_link_up",
            "Whether the replica's link to its master is up",
            |s| flag(s.master_link_up),
        ),
        (
            "redis_master_last_io_seconds_ago",
            "Seconds since the replica last heard from its master",
            |s| s.master_last_io_seconds_ago.map(|v| v as f64),
        ),
        (
            "redis_master_sync_in_progress",
            "Whether the replica is syncing from its master",
            |s| flag(s.master_sync_in_progress),
        ),
        ("redis_slave_repl_offset", "Replication offset of the replica", |s| {
            s.replica_repl_offset.map(|v| v as f64)
        }),
    ];
    for (name, help, read) in replica {
        families.push(Family::new(name, help, Kind::Gauge, Source::Replica(read)));
    }
    families.push(Family::new(
        "redis_connected_slave_offset_bytes",
        "Offset acknowledged by each connected replica",
        Kind::Gauge,
        Source::ReplicaLink(|r| Some(r.offset as f64)),
    ));
    families.push(Family::new(
        "redis_connected_slave_lag_seconds",
        "Seconds since each connected replica's last acknowledgement",
        Kind::Gauge,
        Source::ReplicaLink(|r| r.lag_seconds.map(|v| v as f64)),
    ));
    let dbs: [(&'static str, &str, DbField); 3] = [
        ("redis_db_keys", "Total number of keys by DB", |db| Some(db.keys as f64)),
        ("redis_db_keys_expiring", "Total number of expiring keys by DB", |db| {
            Some(db.expires as f64)
        }),
        ("redis_db_avg_ttl_seconds", "Avg TTL in seconds", |db| {
            db.avg_ttl_ms.map(|ms| ms as f64 / 1000.0)
        }),
    ];
    for (name, help, read) in dbs {
        families.push(Family::new(name, help, Kind::Gauge, Source::Db(read)));
    }
    for (instance, _, help, counter, read) in PROCESS_FAMILIES {
        let kind = if *counter { Kind::Counter } else { Kind::Gauge };
        families.push(Family::new(
            instance,
            &format!("{help} of the instance's process"),
            kind,
            Source::Process(*read),
        ));
    }
    families
});

/// A process's families from /proc, for the instances' processes and the agent's
/// own: the instance family's name, the agent's, help, whether a counter, and how to
/// read it.
pub type ProcessFamily = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    fn(&ProcessMetrics) -> f64,
);

pub const PROCESS_FAMILIES: &[ProcessFamily] = &[
    (
        "ker_instance_process_resident_memory_bytes",
        "ker_agent_process_resident_memory_bytes",
        "Resident memory",
        false,
        |p| p.rss_bytes as f64,
    ),
    (
        "ker_instance_process_anonymous_memory_bytes",
        "ker_agent_process_anonymous_memory_bytes",
        "Anonymous resident memory (RssAnon)",
        false,
        |p| p.anon_bytes as f64,
    ),
    (
        "ker_instance_process_cpu_seconds",
        "ker_agent_process_cpu_seconds",
        "CPU time, user and system",
        true,
        |p| p.cpu_seconds,
    ),
    (
        "ker_instance_process_open_fds",
        "ker_agent_process_open_fds",
        "Open file descriptors",
        false,
        |p| p.open_fds as f64,
    ),
    (
        "ker_instance_process_threads",
        "ker_agent_process_threads",
        "Threads",
        false,
        |p| p.threads as f64,
    ),
];

/// How many per-instance families there are.
pub fn instance_families() -> usize {
    FAMILIES.len()
}

/// Family `k`'s `# HELP` and `# TYPE` lines (empty past the last family).
pub fn instance_descriptor(k: usize) -> &'static str {
    FAMILIES.get(k).map_or("", |f| f.descriptor.as_str())
}

/// Appends family `k`'s lines for instance `name` (none past the last family).
pub fn render_instance_family(k: usize, out: &mut String, name: &str, sample: &Sample<'_>) {
    if let Some(family) = FAMILIES.get(k) {
        family.render(out, name, sample);
    }
}

/// The families from the agent's view, their descriptors: `redis_up` as
/// redis_exporter's (an instance that should run but does not answer is down), then
/// `ker_agent_instance_*`.
static AGENT_VIEW: LazyLock<[String; 6]> = LazyLock::new(|| {
    [
        descriptor("redis_up", "Whether the instance answers its health probe", Kind::Gauge),
        descriptor(
            "ker_agent_instance_restarts",
            "Restarts after unexpected exits, kept across agent restarts",
            Kind::Counter,
        ),
        descriptor(
            "ker_agent_instance_phase",
            "The instance's phase (1 for the current one)",
            Kind::Gauge,
        ),
        descriptor("ker_agent_instance_ready", "Whether the instance is ready", Kind::Gauge),
        descriptor(
            "ker_agent_instance_health",
            "Health of the instance: 0 ok, 1 degraded, 2 unhealthy",
            Kind::Gauge,
        ),
        descriptor(
            "ker_agent_instance_ping_seconds",
            "PING round trip of the last health probe",
            Kind::Gauge,
        ),
    ]
});

/// Appends the families of the agent's view of each instance in `views`.
pub fn append_statuses(out: &mut String, views: &[AgentView]) {
    let [up, restarts, phase, ready, health, ping] = &*AGENT_VIEW;
    out.push_str(up);
    for v in views.iter().filter(|v| v.wanted) {
        let answering = v.health.is_some_and(|(_, answering, _)| answering);
        let up = u64::from(answering && v.phase == Phase::Running);
        write_line(out, "redis_up", "", &[("name", &v.name)], Value::Integer(up));
    }
    out.push_str(restarts);
    for v in views {
        let restarts = Value::Integer(v.restarts);
        write_line(
            out,
            "ker_agent_instance_restarts",
            Kind::Counter.suffix(),
            &[("name", &v.name)],
            restarts,
        );
    }
    out.push_str(phase);
    for v in views {
        let labels = [("name", v.name.as_str()), ("phase", v.phase.as_str())];
        write_line(out, "ker_agent_instance_phase", "", &labels, Value::Integer(1));
    }
    out.push_str(ready);
    for v in views {
        let ready = Value::Integer(u64::from(v.ready));
        write_line(out, "ker_agent_instance_ready", "", &[("name", &v.name)], ready);
    }
    out.push_str(health);
    for v in views {
        if let Some((status, _, _)) = v.health {
            let level = match status {
                HealthStatus::Ok => 0,
                HealthStatus::Degraded => 1,
                HealthStatus::Unhealthy => 2,
            };
            let level = Value::Integer(level);
            write_line(out, "ker_agent_instance_health", "", &[("name", &v.name)], level);
        }
    }
    out.push_str(ping);
    for v in views {
        if let Some((_, _, Some(ms))) = v.health {
            let seconds = Value::Float(ms / 1000.0);
            write_line(
                out,
                "ker_agent_instance_ping_seconds",
                "",
                &[("name", &v.name)],
                seconds,
            );
        }
    }
}

/// The backup families, in [`append_backups`]'s order.
static BACKUP: LazyLock<[String; 5]> = LazyLock::new(|| {
    [
        descriptor(
            "ker_agent_backup_last_success_timestamp_seconds",
            "When the newest kept backup's snapshot was taken",
            Kind::Gauge,
        ),
        descriptor(
            "ker_agent_backup_last_size_bytes",
            "Size of the newest kept backup",
            Kind::Gauge,
        ),
        descriptor(
            "ker_agent_backup_last_duration_seconds",
            "How long the newest kept backup took, from the request to the verified copy",
            Kind::Gauge,
        ),
        descriptor(
            "ker_agent_backup_failures",
            "Failed backups since the agent started",
            Kind::Counter,
        ),
        descriptor(
            "ker_agent_backup_in_progress",
            "Whether a backup of the instance is queued or running",
            Kind::Gauge,
        ),
    ]
});

/// Appends the backup families for every instance's keeper in `views` (nothing when
/// there are none).
pub fn append_backups(out: &mut String, views: &[BackupView]) {
    if views.is_empty() {
        return;
    }
    let [success, size, duration, failures, running] = &*BACKUP;
    let newest = || views.iter().filter_map(|v| Some((v.name.as_str(), v.newest.as_ref()?)));
    let mut family = |head: &str, name: &str, suffix: &str, rows: &mut dyn Iterator<Item = (&str, Value)>| {
        out.push_str(head);
        for (instance, value) in rows {
            write_line(out, name, suffix, &[("name", instance)], value);
        }
    };
    family(
        success,
        "ker_agent_backup_last_success_timestamp_seconds",
        "",
        &mut newest().map(|(n, b)| (n, Value::Integer(b.at))),
    );
    family(
        size,
        "ker_agent_backup_last_size_bytes",
        "",
        &mut newest().map(|(n, b)| (n, Value::Integer(b.bytes))),
    );
    family(
        duration,
        "ker_agent_backup_last_duration_seconds",
        "",
        &mut newest().map(|(n, b)| (n, Value::Float(b.duration_ms as f64 / 1000.0))),
    );
    family(
        failures,
        "ker_agent_backup_failures",
        Kind::Counter.suffix(),
        &mut views.iter().map(|v| (v.name.as_str(), Value::Integer(v.failures))),
    );
    family(
        running,
        "ker_agent_backup_in_progress",
        "",
        &mut views
            .iter()
            .map(|v| (v.name.as_str(), Value::Integer(u64::from(v.busy)))),
    );
}

/// About the bytes [`append_statuses`] writes for `views` (to size the buffer once).
pub fn statuses_len(views: &[AgentView]) -> usize {
    AGENT_VIEW.iter().map(String::len).sum::<usize>() + views.iter().map(|v| 6 * (v.name.len() + 48)).sum::<usize>()
}

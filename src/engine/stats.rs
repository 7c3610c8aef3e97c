//! What one `INFO` reply says, in engine-neutral names and types. Each engine maps its
//! own field names onto [`ServerStats`] (see `info.rs`: `redis_stats`, `pika_stats`);
//! everything else in the agent (health, metrics, reports) reads only these names.

use std::collections::BTreeMap;

/// A server's role as it reports it (not as declared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservedRole {
    Master,
    Replica,
}

/// One replica as its master lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaLink {
    pub ip: String,
    pub port: u16,
    /// As the master reports it (Redis: `online`, `wait_bgsave`, `send_bulk`…); empty
    /// when the engine reports none (Pika).
    pub state: String,
    /// Replication offset the replica acknowledged; 0 when the engine reports none
    /// (Pika).
    pub offset: u64,
    /// Seconds since the replica's last acknowledgement; `None` when not reported in
    /// seconds (Pika reports a per-database lag in binlog bytes, kept in `raw`).
    pub lag_seconds: Option<u64>,
}

/// Keys of one logical database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DbKeys {
    pub db: u32,
    pub keys: u64,
    pub expires: u64,
    pub avg_ttl_ms: Option<u64>,
}

/// Typed fields of an `INFO` reply. Every field is optional: an engine or version may
/// not report it, and a malformed value is left out (and kept in `raw`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ServerStats {
    // Server.
    pub version: Option<String>,
    pub process_id: Option<u32>,
    pub uptime_seconds: Option<u64>,
    // Memory.
    pub used_memory_bytes: Option<u64>,
    pub used_memory_rss_bytes: Option<u64>,
    pub used_memory_peak_bytes: Option<u64>,
    pub mem_fragmentation_ratio: Option<f64>,
    /// 0 means no limit.
    pub maxmemory_bytes: Option<u64>,
    pub maxmemory_policy: Option<String>,
    // Clients.
    pub connected_clients: Option<u64>,
    pub blocked_clients: Option<u64>,
    pub maxclients: Option<u64>,
    // Stats.
    pub instantaneous_ops_per_sec: Option<u64>,
    pub total_commands_processed: Option<u64>,
    pub total_connections_received: Option<u64>,
    pub rejected_connections: Option<u64>,
    pub net_input_bytes: Option<u64>,
    pub net_output_bytes: Option<u64>,
    pub keyspace_hits: Option<u64>,
    pub keyspace_misses: Option<u64>,
    pub expired_keys: Option<u64>,
    pub evicted_keys: Option<u64>,
    // Persistence.
    pub loading: Option<bool>,
    pub rdb_changes_since_last_save: Option<u64>,
    pub rdb_bgsave_in_progress: Option<bool>,
    /// Unix seconds.
    pub rdb_last_save_time: Option<u64>,
    pub rdb_last_bgsave_ok: Option<bool>,
    /// How long the last background save took, in seconds; -1 when there was none.
    pub rdb_last_bgsave_seconds: Option<i64>,
    pub aof_enabled: Option<bool>,
    pub aof_rewrite_in_progress: Option<bool>,
    pub aof_last_write_ok: Option<bool>,
    /// Bytes on disk (Pika's `db_size`).
    pub disk_used_bytes: Option<u64>,
    /// A manual or scheduled compaction is running (Pika's `is_compact`).
    pub compaction_in_progress: Option<bool>,
    // Replication.
    pub role: Option<ObservedRole>,
    pub master_host: Option<String>,
    pub master_port: Option<u16>,
    pub master_link_up: Option<bool>,
    pub master_last_io_seconds_ago: Option<i64>,
    pub master_sync_in_progress: Option<bool>,
    pub connected_replicas: Option<u64>,
    pub master_repl_offset: Option<u64>,
    pub replica_repl_offset: Option<u64>,
    pub replicas: Vec<ReplicaLink>,
    // CPU, in seconds.
    pub cpu_sys_seconds: Option<f64>,
    pub cpu_user_seconds: Option<f64>,
    pub cpu_sys_children_seconds: Option<f64>,
    pub cpu_user_children_seconds: Option<f64>,
    // Keyspace.
    pub keyspace: Vec<DbKeys>,
    /// Every field the engine did not map, as the server wrote it (`section` is not
    /// part of the key; the value is trimmed). A key the server repeats (Pika's `db0`)
    /// keeps every value, joined by `\n`; a line that is not `key:value` is a key with
    /// an empty value. Not serialized with the typed fields: it is large, and only
    /// `/v1/instances/{name}` shows it.
    #[serde(skip)]
    pub raw: BTreeMap<String, String>,
}

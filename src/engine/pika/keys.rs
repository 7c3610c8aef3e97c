//! What Pika 4.0 knows about its own config keys: the complete default file it needs
//! ([`BASE`]), which keys `CONFIG SET` changes at runtime ([`LIVE`], from Pika's source
//! and a real server's replies; everything else answers "Unsupported CONFIG parameter"
//! and needs a restart), what `CONFIG SET` takes to put a live key back to its default
//! ([`DEFAULTS`]), and the keys Pika writes into its file itself ([`SERVER_OWNED`]).
//! A test holds all of it against a real Pika 4.0.1's `CONFIG GET *`
//! (`tests/fixtures/pika/config-get-all.txt`).
//!
//! `maxclients` changes at runtime too, but `CONFIG SET maxclients N` aborts Pika when
//! `N + 5000` exceeds its open-files limit, which is fixed at its start: the agent
//! changes it with a restart, which also raises the limit.

/// Keys `CONFIG SET` changes at runtime, sorted.
pub const LIVE: &[&str] = &[
    "acl-pubsub-default",
    "acllog-max-len",
    "arena-block-size",
    "cache-lfu-decay-time",
    "cache-maxmemory",
    "cache-maxmemory-policy",
    "cache-maxmemory-samples",
    "cache-model",
    "cache-num",
    "cache-type",
    "compact-cron",
    "compact-interval",
    "db-sync-speed",
    "delayed-write-rate",
    "disable_auto_compactions",
    "level0-file-num-compaction-trigger",
    "level0-slowdown-writes-trigger",
    "level0-stop-writes-trigger",
    "max-background-compactions",
    "max-background-jobs",
    "max-cache-files",
    "max-client-response-size",
    "max-compaction-bytes",
    "max-conn-rbuf-size",
    "max-rsync-parallel-num",
    "max-total-wal-size",
    "max-write-buffer-num",
    "rate-limiter-bandwidth",
    "rsync-timeout-ms",
    "slave-priority",
    "slow-cmd-list",
    "slowlog-log-slower-than",
    "slowlog-max-len",
    "slowlog-write-errorlog",
    "sync-window-size",
    "throttle-bytes-per-second",
    "timeout",
    "userblacklist",
    "write-binlog",
    "write-buffer-size",
];

/// What `CONFIG SET` takes to set a live key back to its default, where that is not
/// its line in [`BASE`] (values Pika normalises or derives, and live keys the default
/// file does not have), as a real Pika 4.0.1's `CONFIG GET *` reports them; sorted.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("acl-pubsub-default", "resetchannels"),
    ("arena-block-size", "33554432"),
    ("cache-type", "string,set,zset,list,hash,bit"),
    ("compact-cron", ""),
    ("compact-interval", ""),
    ("db-sync-speed", "1024"),
    ("max-compaction-bytes", "524288000"),
    ("rate-limiter-bandwidth", "1099511627776"),
    ("userblacklist", ""),
    ("write-buffer-size", "268435456"),
];

/// Every key Pika 4.0 reads at its start, with the value of the release's own default
/// `pika.conf`, sorted by key. Pika reads only its config file and aborts at start when
/// some keys are absent (`db-instance-num load error`); others, when absent, get values
/// unlike the release's defaults (12 worker threads, no compression, no cache). So the
/// agent writes all of these, and a spec's `[config]` key replaces its line.
///
/// Left out: the paths, `port`, `daemonize`, `pidfile` and `network-interface`, which
/// the agent owns; the passwords and `slaveof`, which come from the spec; and the keys
/// Pika writes itself ([`SERVER_OWNED`]).
pub const BASE: &[(&str, &str)] = &[
    ("admin-cmd-list", "info, ping, monitor"),
    ("admin-thread-pool-size", "2"),
    // Empty: Pika derives it from write-buffer-size.
    ("arena-block-size", ""),
    ("binlog-file-size", "104857600"),
    ("cache-lfu-decay-time", "1"),
    ("cache-maxmemory", "10737418240"),
    ("cache-maxmemory-policy", "1"),
    ("cache-maxmemory-samples", "5"),
    ("cache-model", "1"),
    ("cache-num", "16"),
    ("cache-type", "string, set, zset, list, hash, bit"),
    ("compression", "snappy"),
    ("consensus-level", "0"),
    ("databases", "1"),
    ("db-instance-num", "3"),
    ("db-statistics-level", "2"),
    ("db-sync-speed", "-1"),
    ("default-slot-num", "1024"),
    ("delayed-write-rate", "0"),
    ("disable_auto_compactions", "false"),
    ("dump-expire", "0"),
    ("dump-prefix", ""),
    ("enable-db-statistics", "no"),
    ("expire-logs-days", "7"),
    ("expire-logs-nums", "10"),
    ("instance-mode", "classic"),
    ("level0-file-num-compaction-trigger", "4"),
    ("level0-slowdown-writes-trigger", "20"),
    ("level0-stop-writes-trigger", "36"),
    ("log-retention-time", "7"),
    ("max-background-compactions", "-1"),
    ("max-background-flushes", "-1"),
    ("max-background-jobs", "3"),
    ("max-bytes-for-level-multiplier", "10"),
    ("max-cache-files", "5000"),
    ("max-cache-statistic-keys", "0"),
    ("max-client-response-size", "1073741824"),
    ("max-compaction-bytes", "-1"),
    ("max-conn-rbuf-size", "268435456"),
    ("max-rsync-parallel-num", "4"),
    ("max-subcompactions", "1"),
    ("max-total-wal-size", "1073741824"),
    ("max-write-buffer-num", "2"),
    ("max-write-buffer-size", "10737418240"),
    ("maxclients", "20000"),
    ("min-write-buffer-number-to-merge", "1"),
    ("replication-num", "0"),
    // The release's file says `86400 * 7;` and `86400 * 3;`, which Pika reads as
    // 86400 (it parses the leading number).
    ("rocksdb-periodic-second", "86400"),
    ("rocksdb-ttl-second", "86400"),
    ("root-connection-num", "2"),
    ("rsync-timeout-ms", "1000"),
    ("rtc-cache-read", "yes"),
    ("slave-priority", "100"),
    ("slotmigrate", "no"),
    ("slotmigrate-thread-num", "1"),
    ("slow-cmd-list", ""),
    ("slow-cmd-pool", "no"),
    ("slow-cmd-thread-pool-size", "1"),
    ("slowlog-log-slower-than", "10000"),
    ("slowlog-max-len", "128"),
    ("slowlog-write-errorlog", "no"),
    ("small-compaction-duration-threshold", "10000"),
    ("small-compaction-threshold", "5000"),
    ("sync-binlog-thread-num", "1"),
    ("sync-thread-num", "6"),
    ("sync-window-size", "9000"),
    ("target-file-size-base", "20M"),
    ("thread-migrate-keys-num", "64"),
    ("thread-num", "1"),
    ("thread-pool-size", "12"),
    ("throttle-bytes-per-second", "207200000"),
    ("timeout", "60"),
    // Rewrites data written by Pika 4.0.0 into 4.0.1's format at every start.
    ("wash-data", "true"),
    ("write-binlog", "yes"),
    ("write-buffer-size", "256M"),
    ("zset-cache-field-num-per-key", "512"),
    ("zset-cache-start-direction", "0"),
];

/// Keys Pika writes into its own config file while it runs (on its first replication
/// handshake, a full sync, or `CONFIG REWRITE`): its replication id, which master and
/// replicas must share or the replica refuses to sync, its run id, and the databases
/// of an unfinished full sync. The agent keeps their values when it renders the file
/// again: a restarted master that lost its replication id makes up a new one, and its
/// replicas then never sync again.
pub const SERVER_OWNED: &[&str] = &["internal-used-unfinished-full-sync", "replication-id", "run-id"];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A real Pika 4.0.1's `CONFIG GET *`, started from the release's default file
    /// with `maxclients : 10000`.
    fn real() -> BTreeMap<&'static str, &'static str> {
        let fixture = include_str!("../../../tests/fixtures/pika/config-get-all.txt");
        let lines: Vec<&str> = fixture.split('\n').collect();
        lines.chunks_exact(2).map(|p| (p[0], p[1])).collect()
    }

    #[test]
    fn base_is_the_release_default_as_a_real_server_reports_it() {
        assert!(BASE.windows(2).all(|w| w[0].0 < w[1].0), "BASE must be sorted");
        let real = real();
        // What the server reports differently from what the file says: normalised or
        // derived values, and the capture's own maxclients.
        let reported_as: BTreeMap<&str, &str> = BTreeMap::from([
            ("admin-cmd-list", "monitor,ping,info"),
            ("arena-block-size", "33554432"),
            ("cache-type", "string,set,zset,list,hash,bit"),
            ("db-sync-speed", "1024"),
            ("max-compaction-bytes", "524288000"),
            ("maxclients", "10000"),
            ("target-file-size-base", "20971520"),
            ("write-buffer-size", "268435456"),
        ]);
        // Keys Pika reads at start but does not list in CONFIG GET.
        let unlisted = [
            "db-instance-num",
            "log-retention-time",
            "max-subcompactions",
            "rocksdb-periodic-second",
            "rocksdb-ttl-second",
            "rsync-timeout-ms",
            "rtc-cache-read",
            "wash-data",
        ];
        for (key, value) in BASE {
            match real.get(key) {
                Some(got) => assert_eq!(got, reported_as.get(key).unwrap_or(value), "{key}"),
                None => assert!(unlisted.contains(key), "{key} is not a key of Pika 4.0"),
            }
        }
        for key in SERVER_OWNED
            .iter()
            .filter(|k| **k != "internal-used-unfinished-full-sync")
        {
            assert!(real.contains_key(key), "{key}");
        }
        // Every live key has a known default, so a removed one goes back to it without
        // a restart; acllog-max-len is neither in the file nor in CONFIG GET.
        for key in LIVE.iter().filter(|k| **k != "acllog-max-len") {
            assert!(
                BASE.iter().any(|(k, _)| k == key) || DEFAULTS.iter().any(|(k, _)| k == key),
                "{key}"
            );
        }
    }
}

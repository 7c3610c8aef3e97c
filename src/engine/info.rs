//! The `INFO` reply of Redis and Pika: a parser of its text format ([`lines`]) and the
//! two mappings onto the engine-neutral [`ServerStats`] ([`redis_stats`],
//! [`pika_stats`]).
//!
//! The agent reads `INFO` from every instance every second, a hundred instances per
//! host, so the parser is an iterator of borrowed lines that allocates nothing, and each
//! mapper fills [`ServerStats`] in one pass with a `match` on the key. Only what is
//! kept as text allocates: `version`, `master_host`, replica addresses and `raw`.
//!
//! Input is the reply's bytes, as the RESP bulk string carried them. Neither server
//! promises UTF-8 (`os:`, `config_file:`, `executable:` come from the system), so the
//! mappers decode with [`String::from_utf8_lossy`]: valid UTF-8, the normal case, is
//! borrowed as is; an invalid byte becomes U+FFFD, which no typed field parses, so that
//! value ends up in `raw`. Nothing here panics on any input.
//!
//! The format: lines separated by CRLF (LF accepted), `key:value` where the first `:`
//! splits and later ones belong to the value, `# Section` headers, empty lines. Pika
//! adds a qualifier to a header (`# Replication(MASTER)`), writes comments that look
//! like headers (`# Time:2026-11-25 14:30:50`, `# Start async statistics`,
//! `#instance0_RocksDB`), repeats keys (`db0` twice on a replica) and writes lines that
//! are not `key:value` (`db0 Strings_keys=3, expires=0, invalid_keys=0`).

use super::stats::{DbKeys, ObservedRole, ReplicaLink, ServerStats};
use std::collections::BTreeMap;
use std::str::FromStr;

/// One meaningful line of an `INFO` reply: not empty, not a header or comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoLine<'a> {
    /// Name of the last `# Section` header, without a qualifier in parentheses (Pika's
    /// `# Replication(MASTER)` gives `Replication`); empty before the first header.
    pub section: &'a str,
    /// The text before the first `:`, trimmed; for a line without `:`, the whole line.
    pub key: &'a str,
    /// The text after the first `:`, trimmed; `None` for a line without `:` (Pika's
    /// `db0 Strings_keys=3, …`).
    pub value: Option<&'a str>,
}

/// The lines of an `INFO` reply, in order. Borrowed from `text`; allocates nothing.
pub fn lines(text: &str) -> InfoLines<'_> {
    InfoLines {
        rest: text,
        section: "",
    }
}

/// Iterator returned by [`lines`].
#[derive(Debug, Clone)]
pub struct InfoLines<'a> {
    rest: &'a str,
    section: &'a str,
}

impl<'a> Iterator for InfoLines<'a> {
    type Item = InfoLine<'a>;

    fn next(&mut self) -> Option<InfoLine<'a>> {
        while !self.rest.is_empty() {
            // memchr: core's char search is slow on many short lines, and this runs
            // for every instance every second.
            let (line, rest) = match memchr::memchr(b'\n', self.rest.as_bytes()) {
                Some(at) => (&self.rest[..at], &self.rest[at + 1..]),
                None => (self.rest, ""),
            };
            self.rest = rest;
            // Trimming removes the CR of CRLF too, and Pika's space after some colons
            // (`pika_build_compile_date: 2026-…`) is trimmed from the value below.
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(name) = section_name(comment) {
                    self.section = name;
                }
                continue;
            }
            let split = memchr::memchr(b':', line.as_bytes()).map(|at| (&line[..at], &line[at + 1..]));
            return Some(match split {
                Some((key, value)) if !key.trim_ascii().is_empty() => InfoLine {
                    section: self.section,
                    key: key.trim_ascii(),
                    value: Some(value.trim_ascii()),
                },
                _ => InfoLine {
                    section: self.section,
                    key: line,
                    value: None,
                },
            });
        }
        None
    }
}

/// The reply as text: borrowed when it is UTF-8 (always, from a real server), with
/// invalid bytes replaced otherwise. `from_utf8` first: it is much faster than the
/// lossy decoder on the common case.
fn decode(reply: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(reply) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(reply),
    }
}

/// The section named by a `#` line, or `None` for a comment. A header is `# Name` or
/// `# Name(qualifier)` with `Name` of letters, digits and `_`: this tells Pika's
/// `# Replication(Master && SLAVE)` (a header) from `# Duration: 0s` or
/// `# Use "info keyspace 1" …` (comments) without a list of known names.
fn section_name(after_hash: &str) -> Option<&str> {
    let body = after_hash.strip_prefix(' ')?;
    let name = match body.split_once('(') {
        Some((name, qualifier)) if qualifier.ends_with(')') => name,
        Some(_) => return None,
        None => body,
    };
    let is_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    is_name.then_some(name)
}

/// Maps a Redis 7.0 `INFO` reply (any sections) onto [`ServerStats`].
///
/// Names: `slave_repl_offset` → `replica_repl_offset`, `connected_slaves` →
/// `connected_replicas`, `slaveN:` lines → `replicas`, `dbN:` lines of `# Keyspace` →
/// `keyspace`, `total_net_*_bytes` → `net_*_bytes`, `used_cpu_*` → `cpu_*_seconds`;
/// `ok`/`err`, `up`/`down` and `0`/`1` become booleans. Every other line, and every
/// value a typed field cannot take, is kept in `raw`.
pub fn redis_stats(reply: &[u8]) -> ServerStats {
    redis_stats_with(reply, true)
}

/// [`redis_stats`] without `raw`: the health probe every second needs only the typed
/// fields, and collecting the rest was most of its cost.
pub fn redis_stats_typed(reply: &[u8]) -> ServerStats {
    redis_stats_with(reply, false)
}

fn redis_stats_with(reply: &[u8], with_raw: bool) -> ServerStats {
    let text = decode(reply);
    let mut stats = ServerStats::default();
    for line in lines(&text) {
        let mapped = match line.value {
            Some(value) => map_redis(&mut stats, line.section, line.key, value),
            None => false,
        };
        if !mapped && with_raw {
            keep_raw(&mut stats.raw, line.key, line.value.unwrap_or(""));
        }
    }
    stats
}

/// Fills the typed field for one Redis line; `false` when the line is not mapped or
/// its value is malformed (the caller keeps it in `raw`).
fn map_redis(s: &mut ServerStats, section: &str, key: &str, v: &str) -> bool {
    match key {
        "redis_version" => text(&mut s.version, v),
        "process_id" => typed(&mut s.process_id, num(v)),
        "uptime_in_seconds" => typed(&mut s.uptime_seconds, num(v)),
        "used_memory" => typed(&mut s.used_memory_bytes, num(v)),
        "used_memory_rss" => typed(&mut s.used_memory_rss_bytes, num(v)),
        "used_memory_peak" => typed(&mut s.used_memory_peak_bytes, num(v)),
        "mem_fragmentation_ratio" => typed(&mut s.mem_fragmentation_ratio, float(v)),
        "maxmemory" => typed(&mut s.maxmemory_bytes, num(v)),
        "maxmemory_policy" => text(&mut s.maxmemory_policy, v),
        "connected_clients" => typed(&mut s.connected_clients, num(v)),
        "blocked_clients" => typed(&mut s.blocked_clients, num(v)),
        "maxclients" => typed(&mut s.maxclients, num(v)),
        "instantaneous_ops_per_sec" => typed(&mut s.instantaneous_ops_per_sec, num(v)),
        "total_commands_processed" => typed(&mut s.total_commands_processed, num(v)),
        "total_connections_received" => typed(&mut s.total_connections_received, num(v)),
        "rejected_connections" => typed(&mut s.rejected_connections, num(v)),
        "total_net_input_bytes" => typed(&mut s.net_input_bytes, num(v)),
        "total_net_output_bytes" => typed(&mut s.net_output_bytes, num(v)),
        "keyspace_hits" => typed(&mut s.keyspace_hits, num(v)),
        "keyspace_misses" => typed(&mut s.keyspace_misses, num(v)),
        "expired_keys" => typed(&mut s.expired_keys, num(v)),
        "evicted_keys" => typed(&mut s.evicted_keys, num(v)),
        "loading" => typed(&mut s.loading, zero_one(v)),
        "rdb_changes_since_last_save" => typed(&mut s.rdb_changes_since_last_save, num(v)),
        "rdb_bgsave_in_progress" => typed(&mut s.rdb_bgsave_in_progress, zero_one(v)),
        "rdb_last_save_time" => typed(&mut s.rdb_last_save_time, num(v)),
        "rdb_last_bgsave_status" => typed(&mut s.rdb_last_bgsave_ok, ok_err(v)),
        "rdb_last_bgsave_time_sec" => typed(&mut s.rdb_last_bgsave_seconds, num(v)),
        "aof_enabled" => typed(&mut s.aof_enabled, zero_one(v)),
        "aof_rewrite_in_progress" => typed(&mut s.aof_rewrite_in_progress, zero_one(v)),
        "aof_last_write_status" => typed(&mut s.aof_last_write_ok, ok_err(v)),
        "role" => typed(
            &mut s.role,
            match v {
                "master" => Some(ObservedRole::Master),
                "slave" => Some(ObservedRole::Replica),
                _ => None,
            },
        ),
        "master_host" => text(&mut s.master_host, v),
        "master_port" => typed(&mut s.master_port, num(v)),
        "master_link_status" => typed(&mut s.master_link_up, up_down(v)),
        "master_last_io_seconds_ago" => typed(&mut s.master_last_io_seconds_ago, num(v)),
        "master_sync_in_progress" => typed(&mut s.master_sync_in_progress, zero_one(v)),
        "connected_slaves" => typed(&mut s.connected_replicas, num(v)),
        "master_repl_offset" => typed(&mut s.master_repl_offset, num(v)),
        "slave_repl_offset" => typed(&mut s.replica_repl_offset, num(v)),
        "used_cpu_sys" => typed(&mut s.cpu_sys_seconds, float(v)),
        "used_cpu_user" => typed(&mut s.cpu_user_seconds, float(v)),
        "used_cpu_sys_children" => typed(&mut s.cpu_sys_children_seconds, float(v)),
        "used_cpu_user_children" => typed(&mut s.cpu_user_children_seconds, float(v)),
        _ if is_replica_key(key) => push(&mut s.replicas, replica_link(v, true)),
        // `dbN:` only means key counts under `# Keyspace`.
        _ if section == "Keyspace" => match db_index(key) {
            Some(db) => push(&mut s.keyspace, redis_db_keys(db, v)),
            None => false,
        },
        _ => false,
    }
}

/// Maps a Pika 4.0 `INFO` reply (any sections) onto [`ServerStats`].
///
/// Pika names what Redis also has the same way (`used_memory`, `connected_clients`,
/// `total_net_input_bytes`, `used_cpu_*`, `role`, `master_link_status`, …); besides:
/// - `pika_version` → `version`; `db_size` (bytes of the database directory) →
///   `disk_used_bytes`; `is_bgsaving:Yes|No` → `rdb_bgsave_in_progress`.
/// - `role:master&&slave` (a replica that has replicas) → [`ObservedRole::Replica`].
/// - `slave_repl_offset` is the server's own binlog position (file number × binlog
///   file size + offset), printed on masters too: it becomes `master_repl_offset` on a
///   master and `replica_repl_offset` on a replica. It is not comparable with a Redis
///   offset.
/// - `slaveN:ip=…,port=…,conn_fd=…,lag=(db0:0)` → `replicas` with an empty `state`, a
///   zero `offset` and no `lag_seconds` (Pika's lag is per database, in binlog bytes);
///   the line is also kept in `raw`.
/// - Key counts only appear after `INFO keyspace 1` started a scan, as
///   `dbN <Type>_keys=K, expires=E, invalid_keys=I` lines: the types are summed per
///   database into `keyspace` (no `avg_ttl_ms`); they are as old as that scan.
/// - `master_host` is the host's own address, not the one given to `SLAVEOF` (a Pika
///   quirk). Pika has no loading state and reports no `loading`, `maxclients` or
///   persistence status: those stay `None`.
///
/// Everything else, including the repeated `db0` of a replica (values joined by a
/// newline), is kept in `raw`.
pub fn pika_stats(reply: &[u8]) -> ServerStats {
    pika_stats_with(reply, true)
}

/// [`pika_stats`] without `raw`, for the monitor's samples (as
/// [`redis_stats_typed`]): the untyped fields are parsed from the kept reply when
/// someone asks.
pub fn pika_stats_typed(reply: &[u8]) -> ServerStats {
    pika_stats_with(reply, false)
}

fn pika_stats_with(reply: &[u8], with_raw: bool) -> ServerStats {
    let text = decode(reply);
    let mut stats = ServerStats::default();
    // Which field `slave_repl_offset` fills depends on `role`, which may come later.
    let mut own_offset: Option<(u64, &str)> = None;
    for line in lines(&text) {
        let mapped = match line.value {
            Some(value) if line.key == "slave_repl_offset" => match num(value) {
                Some(offset) => {
                    own_offset = Some((offset, value));
                    true
                }
                None => false,
            },
            Some(value) => map_pika(&mut stats, line.key, value),
            None if line.section == "Keyspace" => match pika_db_keys(line.key) {
                Some((db, keys, expires)) => {
                    add_keys(&mut stats.keyspace, db, keys, expires);
                    true
                }
                None => false,
            },
            None => false,
        };
        if !mapped && with_raw {
            keep_raw(&mut stats.raw, line.key, line.value.unwrap_or(""));
        }
    }
    if let Some((offset, value)) = own_offset {
        match stats.role {
            Some(ObservedRole::Master) => stats.master_repl_offset = Some(offset),
            Some(ObservedRole::Replica) => stats.replica_repl_offset = Some(offset),
            None if with_raw => keep_raw(&mut stats.raw, "slave_repl_offset", value),
            None => {}
        }
    }
    stats
}

/// Fills the typed field for one Pika `key:value` line; `false` when the line is not
/// (fully) mapped or its value is malformed (the caller keeps it in `raw`).
fn map_pika(s: &mut ServerStats, key: &str, v: &str) -> bool {
    match key {
        "pika_version" => text(&mut s.version, v),
        "process_id" => typed(&mut s.process_id, num(v)),
        "uptime_in_seconds" => typed(&mut s.uptime_seconds, num(v)),
        "used_memory" => typed(&mut s.used_memory_bytes, num(v)),
        "db_size" => typed(&mut s.disk_used_bytes, num(v)),
        "connected_clients" => typed(&mut s.connected_clients, num(v)),
        "maxclients" => typed(&mut s.maxclients, num(v)),
        "instantaneous_ops_per_sec" => typed(&mut s.instantaneous_ops_per_sec, num(v)),
        "total_commands_processed" => typed(&mut s.total_commands_processed, num(v)),
        "total_connections_received" => typed(&mut s.total_connections_received, num(v)),
        "rejected_connections" => typed(&mut s.rejected_connections, num(v)),
        "total_net_input_bytes" => typed(&mut s.net_input_bytes, num(v)),
        "total_net_output_bytes" => typed(&mut s.net_output_bytes, num(v)),
        "keyspace_hits" => typed(&mut s.keyspace_hits, num(v)),
        "keyspace_misses" => typed(&mut s.keyspace_misses, num(v)),
        "is_bgsaving" => typed(
            &mut s.rdb_bgsave_in_progress,
            match v {
                "Yes" => Some(true),
                "No" => Some(false),
                _ => None,
            },
        ),
        "is_compact" => typed(
            &mut s.compaction_in_progress,
            match v {
                "Yes" => Some(true),
                "No" => Some(false),
                _ => None,
            },
        ),
        "role" => typed(
            &mut s.role,
            match v {
                "master" => Some(ObservedRole::Master),
                "slave" | "master&&slave" => Some(ObservedRole::Replica),
                _ => None,
            },
        ),
        "master_host" => text(&mut s.master_host, v),
        "master_port" => typed(&mut s.master_port, num(v)),
        "master_link_status" => typed(&mut s.master_link_up, up_down(v)),
        "connected_slaves" => typed(&mut s.connected_replicas, num(v)),
        "used_cpu_sys" => typed(&mut s.cpu_sys_seconds, float(v)),
        "used_cpu_user" => typed(&mut s.cpu_user_seconds, float(v)),
        "used_cpu_sys_children" => typed(&mut s.cpu_sys_children_seconds, float(v)),
        "used_cpu_user_children" => typed(&mut s.cpu_user_children_seconds, float(v)),
        _ if is_replica_key(key) => {
            // conn_fd and the per-database lag have no typed field: keep the line too.
            push(&mut s.replicas, replica_link(v, false));
            false
        }
        _ => false,
    }
}

/// Keeps an unmapped value. A repeated key (Pika's `db0` on a replica) keeps every
/// value, joined by a newline, which no `INFO` value contains.
fn keep_raw(raw: &mut BTreeMap<String, String>, key: &str, value: &str) {
    match raw.get_mut(key) {
        Some(existing) => {
            existing.push('\n');
            existing.push_str(value);
        }
        None => {
            raw.insert(key.to_owned(), value.to_owned());
        }
    }
}

/// Stores a parsed value; `false` (keep the text in `raw`) when it did not parse.
fn typed<T>(slot: &mut Option<T>, parsed: Option<T>) -> bool {
    let ok = parsed.is_some();
    if ok {
        *slot = parsed;
    }
    ok
}

/// Stores a text value; an empty one says nothing and stays in `raw`.
fn text(slot: &mut Option<String>, value: &str) -> bool {
    let ok = !value.is_empty();
    if ok {
        *slot = Some(value.to_owned());
    }
    ok
}

fn push<T>(list: &mut Vec<T>, item: Option<T>) -> bool {
    match item {
        Some(item) => {
            list.push(item);
            true
        }
        None => false,
    }
}

fn num<T: FromStr>(value: &str) -> Option<T> {
    value.parse().ok()
}

/// A finite float: `inf` or `nan` would say nothing useful and do not survive JSON.
fn float(value: &str) -> Option<f64> {
    value.parse::<f64>().ok().filter(|f| f.is_finite())
}

fn zero_one(value: &str) -> Option<bool> {
    match value {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn ok_err(value: &str) -> Option<bool> {
    match value {
        "ok" => Some(true),
        "err" => Some(false),
        _ => None,
    }
}

fn up_down(value: &str) -> Option<bool> {
    match value {
        "up" => Some(true),
        "down" => Some(false),
        _ => None,
    }
}

/// `slave0`, `slave12`, …: one connected replica, as its master lists it.
fn is_replica_key(key: &str) -> bool {
    key.strip_prefix("slave")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `db0` → 0. Only digits: `u32::from_str` would also take `+0`.
fn db_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("db")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The `name=value` pairs of a comma-separated value such as
/// `ip=127.0.0.1,port=7602,state=online`.
fn pairs(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value
        .split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(name, value)| (name.trim_ascii(), value.trim_ascii()))
}

/// A `slaveN:` value. Redis (`strict`) must give `ip`, `port`, `state` and `offset`;
/// Pika gives only `ip` and `port`. `lag` is seconds in Redis; Pika's per-database
/// `lag=(db0:0)` does not parse and leaves `lag_seconds` empty.
fn replica_link(value: &str, strict: bool) -> Option<ReplicaLink> {
    let (mut ip, mut port, mut state, mut offset, mut lag) = (None, None, None, None, None);
    for (name, value) in pairs(value) {
        match name {
            "ip" => ip = Some(value),
            "port" => port = Some(num::<u16>(value)?),
            "state" => state = Some(value),
            "offset" => offset = Some(num::<u64>(value)?),
            "lag" => lag = num::<u64>(value),
            _ => {}
        }
    }
    if strict && (state.is_none() || offset.is_none()) {
        return None;
    }
    Some(ReplicaLink {
        ip: ip.filter(|ip| !ip.is_empty())?.to_owned(),
        port: port?,
        state: state.unwrap_or_default().to_owned(),
        offset: offset.unwrap_or(0),
        lag_seconds: lag,
    })
}

/// A Redis keyspace value `keys=4,expires=1,avg_ttl=3599000` (later versions add
/// fields, which are ignored).
fn redis_db_keys(db: u32, value: &str) -> Option<DbKeys> {
    let (mut keys, mut expires, mut avg_ttl_ms) = (None, None, None);
    for (name, value) in pairs(value) {
        match name {
            "keys" => keys = Some(num(value)?),
            "expires" => expires = Some(num(value)?),
            "avg_ttl" => avg_ttl_ms = Some(num(value)?),
            _ => {}
        }
    }
    Some(DbKeys {
        db,
        keys: keys?,
        expires: expires?,
        avg_ttl_ms,
    })
}

/// A Pika key-count line `db0 Strings_keys=3, expires=0, invalid_keys=0` → (db, keys,
/// expires).
fn pika_db_keys(line: &str) -> Option<(u32, u64, u64)> {
    let (db, rest) = line.split_once(' ')?;
    let db = db_index(db)?;
    let mut fields = pairs(rest);
    let (kind, keys) = fields.next()?;
    if !kind.ends_with("_keys") {
        return None;
    }
    let (name, expires) = fields.next()?;
    if name != "expires" {
        return None;
    }
    Some((db, num(keys)?, num(expires)?))
}

/// Adds one Pika type's counts to its database (saturating: a count is never worth a
/// panic or a wrap).
fn add_keys(keyspace: &mut Vec<DbKeys>, db: u32, keys: u64, expires: u64) {
    match keyspace.iter_mut().find(|d| d.db == db) {
        Some(entry) => {
            entry.keys = entry.keys.saturating_add(keys);
            entry.expires = entry.expires.saturating_add(expires);
        }
        None => keyspace.push(DbKeys {
            db,
            keys,
            expires,
            avg_ttl_ms: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REDIS_MASTER: &str = include_str!("../../tests/fixtures/redis/info-master.txt");
    const REDIS_ALL: &str = include_str!("../../tests/fixtures/redis/info-all.txt");
    const REDIS_LOADING: &str = include_str!("../../tests/fixtures/redis/info-loading.txt");
    const REDIS_PERSISTENCE_LOADING: &str = include_str!("../../tests/fixtures/redis/info-persistence-loading.txt");
    const REDIS_REPLICA_UP: &str = include_str!("../../tests/fixtures/redis/info-replica-up.txt");
    const REDIS_REPLICA_DOWN: &str = include_str!("../../tests/fixtures/redis/info-replica-down.txt");
    const REDIS_REPL_MASTER: &str = include_str!("../../tests/fixtures/redis/info-replication-master-with-replica.txt");
    const REDIS_REPL_UP: &str = include_str!("../../tests/fixtures/redis/info-replication-replica-up.txt");
    const REDIS_REPL_DOWN: &str = include_str!("../../tests/fixtures/redis/info-replication-replica-down.txt");
    const PIKA_MASTER: &str = include_str!("../../tests/fixtures/pika/info-master.txt");
    const PIKA_ALL: &str = include_str!("../../tests/fixtures/pika/info-all.txt");
    const PIKA_KEYSPACE: &str = include_str!("../../tests/fixtures/pika/info-keyspace-1.txt");
    const PIKA_REPLICA_UP: &str = include_str!("../../tests/fixtures/pika/info-replica-up.txt");
    const PIKA_REPLICA_DOWN: &str = include_str!("../../tests/fixtures/pika/info-replica-down.txt");
    const PIKA_REPL_MASTER: &str = include_str!("../../tests/fixtures/pika/info-replication-master-with-replica.txt");
    const PIKA_REPL_UP: &str = include_str!("../../tests/fixtures/pika/info-replication-replica-up.txt");
    const PIKA_REPL_DOWN: &str = include_str!("../../tests/fixtures/pika/info-replication-replica-down.txt");

    #[test]
    fn typed_parses_are_the_full_ones_without_raw() {
        for (fixture, typed, full) in [
            (
                REDIS_ALL,
                redis_stats_typed as fn(&[u8]) -> ServerStats,
                redis_stats as fn(&[u8]) -> ServerStats,
            ),
            (PIKA_ALL, pika_stats_typed, pika_stats),
            (PIKA_REPLICA_UP, pika_stats_typed, pika_stats),
        ] {
            for text in both_endings(fixture) {
                let mut expected = full(text.as_bytes());
                assert!(!expected.raw.is_empty());
                expected.raw.clear();
                assert_eq!(typed(text.as_bytes()), expected);
            }
        }
    }

    /// The fixture as saved (LF) and as the server sends it (CRLF).
    fn both_endings(fixture: &str) -> [String; 2] {
        [fixture.to_owned(), fixture.replace('\n', "\r\n")]
    }

    fn redis(fixture: &str) -> [ServerStats; 2] {
        both_endings(fixture).map(|text| redis_stats(text.as_bytes()))
    }

    fn pika(fixture: &str) -> [ServerStats; 2] {
        both_endings(fixture).map(|text| pika_stats(text.as_bytes()))
    }

    /// Keys every mapper turns into a typed field: none of them may reach `raw` from a
    /// real reply (that would mean a value did not parse).
    const MAPPED_KEYS: &[&str] = &[
        "redis_version",
        "pika_version",
        "process_id",
        "uptime_in_seconds",
        "used_memory",
        "used_memory_rss",
        "used_memory_peak",
        "mem_fragmentation_ratio",
        "maxmemory",
        "maxmemory_policy",
        "connected_clients",
        "blocked_clients",
        "maxclients",
        "instantaneous_ops_per_sec",
        "total_commands_processed",
        "total_connections_received",
        "rejected_connections",
        "total_net_input_bytes",
        "total_net_output_bytes",
        "keyspace_hits",
        "keyspace_misses",
        "expired_keys",
        "evicted_keys",
        "loading",
        "rdb_changes_since_last_save",
        "rdb_bgsave_in_progress",
        "rdb_last_save_time",
        "rdb_last_bgsave_status",
        "rdb_last_bgsave_time_sec",
        "aof_enabled",
        "aof_rewrite_in_progress",
        "aof_last_write_status",
        "db_size",
        "is_bgsaving",
        "is_compact",
        "role",
        "master_host",
        "master_port",
        "master_link_status",
        "master_last_io_seconds_ago",
        "master_sync_in_progress",
        "connected_slaves",
        "master_repl_offset",
        "slave_repl_offset",
        "used_cpu_sys",
        "used_cpu_user",
        "used_cpu_sys_children",
        "used_cpu_user_children",
    ];

    fn assert_no_mapped_key_in_raw(stats: &ServerStats) {
        for key in MAPPED_KEYS {
            assert!(
                !stats.raw.contains_key(*key),
                "{key} = {:?} went to raw",
                stats.raw[*key]
            );
        }
    }

    #[test]
    fn lines_split_sections_keys_and_values() {
        let text = "# Server\r\nredis_version:7.0.15\r\nos:Linux 6.1 x86_64\r\n\r\n# Replication(Master && SLAVE)\n\
                    role:master&&slave\nslaveof: 1.2.3.4:9221 \n# Keyspace\n# Time:2026-11-25 14:30:50\n\
                    # Duration: 0s\n#instance0_RocksDB\ndb0 Strings_keys=3, expires=0\n:odd\nlast:";
        let got: Vec<_> = lines(text).map(|l| (l.section, l.key, l.value)).collect();
        assert_eq!(
            got,
            [
                ("Server", "redis_version", Some("7.0.15")),
                ("Server", "os", Some("Linux 6.1 x86_64")),
                ("Replication", "role", Some("master&&slave")),
                ("Replication", "slaveof", Some("1.2.3.4:9221")),
                ("Keyspace", "db0 Strings_keys=3, expires=0", None),
                ("Keyspace", ":odd", None),
                ("Keyspace", "last", Some("")),
            ]
        );
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("\r\n\n# Server\r\n").count(), 0);
        assert_eq!(lines("k:v").next().map(|l| l.section), Some(""));
    }

    #[test]
    fn redis_master() {
        for s in redis(REDIS_MASTER) {
            assert_eq!(s.version.as_deref(), Some("7.0.15"));
            assert_eq!(s.process_id, Some(32452));
            assert_eq!(s.uptime_seconds, Some(0));
            assert_eq!(s.used_memory_bytes, Some(991_512));
            assert_eq!(s.used_memory_rss_bytes, Some(11_964_416));
            assert_eq!(s.used_memory_peak_bytes, Some(991_512));
            assert_eq!(s.mem_fragmentation_ratio, Some(13.65));
            assert_eq!(s.maxmemory_bytes, Some(0));
            assert_eq!(s.maxmemory_policy.as_deref(), Some("noeviction"));
            assert_eq!(s.connected_clients, Some(1));
            assert_eq!(s.blocked_clients, Some(0));
            assert_eq!(s.maxclients, Some(10_000));
            assert_eq!(s.total_connections_received, Some(8));
            assert_eq!(s.total_commands_processed, Some(7));
            assert_eq!(s.instantaneous_ops_per_sec, Some(0));
            assert_eq!(s.net_input_bytes, Some(226));
            assert_eq!(s.net_output_bytes, Some(38));
            assert_eq!(s.rejected_connections, Some(0));
            assert_eq!(s.keyspace_hits, Some(0));
            assert_eq!(s.keyspace_misses, Some(0));
            assert_eq!(s.expired_keys, Some(0));
            assert_eq!(s.evicted_keys, Some(0));
            assert_eq!(s.loading, Some(false));
            assert_eq!(s.rdb_changes_since_last_save, Some(5));
            assert_eq!(s.rdb_bgsave_in_progress, Some(false));
            assert_eq!(s.rdb_last_save_time, Some(1_795_617_225));
            assert_eq!(s.rdb_last_bgsave_ok, Some(true));
            assert_eq!(s.rdb_last_bgsave_seconds, Some(-1));
            assert_eq!(s.aof_enabled, Some(false));
            assert_eq!(s.aof_rewrite_in_progress, Some(false));
            assert_eq!(s.aof_last_write_ok, Some(true));
            assert_eq!(s.role, Some(ObservedRole::Master));
            assert_eq!(s.master_host, None);
            assert_eq!(s.master_link_up, None);
            assert_eq!(s.connected_replicas, Some(0));
            assert_eq!(s.master_repl_offset, Some(0));
            assert_eq!(s.replica_repl_offset, None);
            assert!(s.replicas.is_empty());
            assert_eq!(s.cpu_sys_seconds, Some(0.008539));
            assert_eq!(s.cpu_user_seconds, Some(0.0));
            assert_eq!(s.cpu_sys_children_seconds, Some(0.0));
            assert_eq!(s.cpu_user_children_seconds, Some(0.0));
            assert_eq!(s.disk_used_bytes, None);
            assert_eq!(
                s.keyspace,
                [DbKeys {
                    db: 0,
                    keys: 5,
                    expires: 1,
                    avg_ttl_ms: Some(0)
                }]
            );
            assert_eq!(s.raw.get("used_memory_human").map(String::as_str), Some("968.27K"));
            assert_eq!(
                s.raw.get("executable").map(String::as_str),
                Some("/usr/bin/redis-server")
            );
            assert_eq!(s.raw.get("config_file").map(String::as_str), Some(""));
            assert!(!s.raw.contains_key("db0"));
            assert_no_mapped_key_in_raw(&s);
        }
    }

    #[test]
    fn redis_all_sections() {
        for s in redis(REDIS_ALL) {
            assert_eq!(s.used_memory_bytes, Some(1_016_336));
            assert_eq!(s.keyspace.first().map(|d| (d.keys, d.expires)), Some((5, 1)));
            assert_eq!(
                s.raw.get("cmdstat_set").map(String::as_str),
                Some("calls=4,usec=21,usec_per_call=5.25,rejected_calls=0,failed_calls=0")
            );
            assert_eq!(s.raw.get("cluster_enabled").map(String::as_str), Some("0"));
            assert_no_mapped_key_in_raw(&s);
        }
    }

    #[test]
    fn redis_loading() {
        for s in redis(REDIS_LOADING) {
            assert_eq!(s.loading, Some(true));
            assert_eq!(s.used_memory_bytes, Some(48_974_648));
            assert_eq!(s.keyspace.first().map(|d| d.keys), Some(159_768));
            assert_eq!(s.raw.get("loading_eta_seconds").map(String::as_str), Some("1"));
            assert_no_mapped_key_in_raw(&s);
        }
        for s in redis(REDIS_PERSISTENCE_LOADING) {
            assert_eq!(s.loading, Some(true));
            assert_eq!(s.rdb_last_save_time, Some(1_795_617_727));
            assert_eq!(s.used_memory_bytes, None);
            assert_eq!(s.role, None);
        }
    }

    #[test]
    fn redis_replica_link_up_and_down() {
        for s in redis(REDIS_REPLICA_UP).into_iter().chain(redis(REDIS_REPL_UP)) {
            assert_eq!(s.role, Some(ObservedRole::Replica));
            assert_eq!(s.master_host.as_deref(), Some("127.0.0.1"));
            assert_eq!(s.master_port, Some(7601));
            assert_eq!(s.master_link_up, Some(true));
            assert_eq!(s.master_last_io_seconds_ago, Some(0));
            assert_eq!(s.master_sync_in_progress, Some(false));
            assert_eq!(s.replica_repl_offset, Some(76));
            assert_eq!(s.master_repl_offset, Some(76));
            assert_no_mapped_key_in_raw(&s);
        }
        for s in redis(REDIS_REPLICA_UP) {
            assert_eq!(s.process_id, Some(842));
            assert_eq!(s.used_memory_bytes, Some(1_154_064));
            assert_eq!(s.keyspace_hits, Some(1));
            assert_eq!(s.keyspace.first().map(|d| d.keys), Some(6));
        }
        for s in redis(REDIS_REPLICA_DOWN).into_iter().chain(redis(REDIS_REPL_DOWN)) {
            assert_eq!(s.role, Some(ObservedRole::Replica));
            assert_eq!(s.master_link_up, Some(false));
            assert_eq!(s.master_last_io_seconds_ago, Some(-1));
            assert_eq!(
                s.raw.get("master_link_down_since_seconds").map(String::as_str),
                Some("16")
            );
            assert_no_mapped_key_in_raw(&s);
        }
    }

    #[test]
    fn redis_master_lists_its_replica() {
        for s in redis(REDIS_REPL_MASTER) {
            assert_eq!(s.role, Some(ObservedRole::Master));
            assert_eq!(s.connected_replicas, Some(1));
            assert_eq!(s.master_repl_offset, Some(76));
            assert_eq!(
                s.replicas,
                [ReplicaLink {
                    ip: "127.0.0.1".into(),
                    port: 7602,
                    state: "online".into(),
                    offset: 62,
                    lag_seconds: Some(0),
                }]
            );
            assert!(!s.raw.contains_key("slave0"));
        }
    }

    #[test]
    fn pika_master() {
        for s in pika(PIKA_MASTER) {
            assert_eq!(s.version.as_deref(), Some("4.0.0"));
            assert_eq!(s.process_id, Some(20453));
            assert_eq!(s.uptime_seconds, Some(5));
            assert_eq!(s.disk_used_bytes, Some(432_918));
            assert_eq!(s.used_memory_bytes, Some(43_008));
            assert_eq!(s.connected_clients, Some(1));
            assert_eq!(s.total_connections_received, Some(8));
            assert_eq!(s.instantaneous_ops_per_sec, Some(0));
            assert_eq!(s.total_commands_processed, Some(7));
            assert_eq!(s.net_input_bytes, Some(176));
            assert_eq!(s.net_output_bytes, Some(33));
            assert_eq!(s.rdb_bgsave_in_progress, Some(false));
            assert_eq!(s.cpu_sys_seconds, Some(0.04));
            assert_eq!(s.cpu_user_seconds, Some(0.04));
            assert_eq!(s.cpu_sys_children_seconds, Some(0.0));
            assert_eq!(s.role, Some(ObservedRole::Master));
            assert_eq!(s.connected_replicas, Some(0));
            assert_eq!(s.master_repl_offset, Some(302));
            assert_eq!(s.replica_repl_offset, None);
            assert_eq!(s.loading, None);
            assert!(s.keyspace.is_empty(), "no key counts without INFO keyspace 1");
            assert_eq!(
                s.raw.get("pika_build_compile_date").map(String::as_str),
                Some("2026-11-25 14:08:22")
            );
            assert_eq!(s.raw.get("db_fatal").map(String::as_str), Some("0"));
            assert_eq!(
                s.raw.get("db0").map(String::as_str),
                Some("binlog_offset=0 302,safety_purge=none")
            );
            assert_no_mapped_key_in_raw(&s);
        }
    }

    #[test]
    fn pika_replica_up_and_down() {
        for s in pika(PIKA_REPLICA_UP).into_iter().chain(pika(PIKA_REPL_UP)) {
            assert_eq!(s.role, Some(ObservedRole::Replica));
            assert_eq!(s.master_host.as_deref(), Some("192.0.2.2"));
            assert_eq!(s.master_port, Some(9301));
            assert_eq!(s.master_link_up, Some(true));
            assert_eq!(s.replica_repl_offset, Some(381));
            assert_eq!(s.master_repl_offset, None);
            // The repeated key keeps both values.
            assert_eq!(
                s.raw.get("db0").map(String::as_str),
                Some("connected\nbinlog_offset=0 381,safety_purge=none")
            );
            assert_no_mapped_key_in_raw(&s);
        }
        for s in pika(PIKA_REPLICA_UP) {
            assert_eq!(s.disk_used_bytes, Some(432_918));
            assert_eq!(s.used_memory_bytes, Some(49_400));
            assert_eq!(s.instantaneous_ops_per_sec, Some(1));
        }
        for s in pika(PIKA_REPLICA_DOWN).into_iter().chain(pika(PIKA_REPL_DOWN)) {
            assert_eq!(s.role, Some(ObservedRole::Replica));
            assert_eq!(s.master_link_up, Some(false));
            assert_eq!(s.raw.get("db_repl_state").map(String::as_str), Some("(db0:NoConnect)"));
            assert_eq!(
                s.raw.get("db0").map(String::as_str),
                Some("no_connect\nbinlog_offset=0 381,safety_purge=none")
            );
            assert_no_mapped_key_in_raw(&s);
        }
    }

    #[test]
    fn pika_master_lists_its_replica() {
        for s in pika(PIKA_REPL_MASTER) {
            assert_eq!(s.role, Some(ObservedRole::Master));
            assert_eq!(s.connected_replicas, Some(1));
            assert_eq!(s.master_repl_offset, Some(381));
            assert_eq!(
                s.replicas,
                [ReplicaLink {
                    ip: "192.0.2.2".into(),
                    port: 9311,
                    state: String::new(),
                    offset: 0,
                    lag_seconds: None,
                }]
            );
            assert_eq!(
                s.raw.get("slave0").map(String::as_str),
                Some("ip=192.0.2.2,port=9311,conn_fd=73,lag=(db0:0)")
            );
        }
    }

    #[test]
    fn pika_key_counts_are_summed_per_database() {
        for s in pika(PIKA_KEYSPACE).into_iter().chain(pika(PIKA_ALL)) {
            assert_eq!(
                s.keyspace,
                [DbKeys {
                    db: 0,
                    keys: 4,
                    expires: 0,
                    avg_ttl_ms: None
                }]
            );
            assert!(!s.raw.keys().any(|k| k.starts_with("db0 ")), "{:?}", s.raw.keys());
        }
        for s in pika(PIKA_ALL) {
            assert_eq!(s.uptime_seconds, Some(35));
            assert_eq!(s.disk_used_bytes, Some(432_918));
            assert_eq!(s.raw.get("cache_status").map(String::as_str), Some("Ok"));
            assert_eq!(s.raw.get("instance2_estimate_num_keys").map(String::as_str), Some("4"));
            assert_eq!(
                s.raw.get("hset").map(String::as_str),
                Some("calls=1, usec=0.21, usec_per_call=0.21")
            );
            assert_no_mapped_key_in_raw(&s);
        }
    }

    #[test]
    fn pika_chained_replica_and_unknown_role() {
        let s = pika_stats(b"# Replication(Master && SLAVE)\r\nrole:master&&slave\r\nslave_repl_offset:9\r\n");
        assert_eq!(s.role, Some(ObservedRole::Replica));
        assert_eq!(s.replica_repl_offset, Some(9));
        // Without a role the offset cannot be placed: it stays raw.
        let s = pika_stats(b"slave_repl_offset:9\r\n");
        assert_eq!((s.master_repl_offset, s.replica_repl_offset), (None, None));
        assert_eq!(s.raw.get("slave_repl_offset").map(String::as_str), Some("9"));
    }

    #[test]
    fn malformed_values_stay_raw() {
        let text = "used_memory:12abc\r\nloading:yes\r\nrole:sentinel\r\nmaster_port:70000\r\n\
                    mem_fragmentation_ratio:nan\r\nslave0:ip=1.2.3.4,port=x,state=online,offset=1\r\n\
                    slave1:ip=1.2.3.4,port=1\r\n# Keyspace\r\ndb0:keys=-1,expires=0\r\ndbx:keys=1,expires=0\r\n\
                    redis_version:\r\nused_memory_rss:\u{fffd}\r\n";
        let s = redis_stats(text.as_bytes());
        assert_eq!(s.used_memory_bytes, None);
        assert_eq!(s.loading, None);
        assert_eq!(s.role, None);
        assert_eq!(s.master_port, None);
        assert_eq!(s.mem_fragmentation_ratio, None);
        assert_eq!(s.version, None);
        assert_eq!(s.used_memory_rss_bytes, None);
        assert!(s.replicas.is_empty());
        assert!(s.keyspace.is_empty());
        for (key, value) in [
            ("used_memory", "12abc"),
            ("loading", "yes"),
            ("role", "sentinel"),
            ("master_port", "70000"),
            ("mem_fragmentation_ratio", "nan"),
            ("slave0", "ip=1.2.3.4,port=x,state=online,offset=1"),
            ("slave1", "ip=1.2.3.4,port=1"),
            ("db0", "keys=-1,expires=0"),
            ("dbx", "keys=1,expires=0"),
            ("redis_version", ""),
            ("used_memory_rss", "\u{fffd}"),
        ] {
            assert_eq!(s.raw.get(key).map(String::as_str), Some(value), "{key}");
        }
        // `db0:` outside `# Keyspace` is not a key count.
        let s = redis_stats(b"# Replication\r\ndb0:keys=1,expires=0\r\n");
        assert!(s.keyspace.is_empty());
    }

    #[test]
    fn invalid_utf8_only_spoils_its_own_value() {
        let mut reply = b"# Server\r\nos:Linux \xff\xfe\r\nused_memory:\xff1\r\nprocess_id:7\r\n".to_vec();
        reply.extend_from_slice(b"used_memory_rss:10\r\n");
        let s = redis_stats(&reply);
        assert_eq!(s.process_id, Some(7));
        assert_eq!(s.used_memory_rss_bytes, Some(10));
        assert_eq!(s.used_memory_bytes, None);
        assert_eq!(s.raw.get("used_memory").map(String::as_str), Some("\u{fffd}1"));
        assert_eq!(s.raw.get("os").map(String::as_str), Some("Linux \u{fffd}\u{fffd}"));
    }

    /// Renders a well-formed reply, in the server's own layout.
    fn render(sections: &[(&str, Vec<(String, String)>)], crlf: bool) -> String {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut out = String::new();
        for (name, fields) in sections {
            out.push_str(&format!("# {name}{eol}"));
            for (k, v) in fields {
                out.push_str(&format!("{k}:{v}{eol}"));
            }
            out.push_str(eol);
        }
        out
    }

    fn field(key: &str, value: impl ToString) -> (String, String) {
        (key.to_owned(), value.to_string())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = redis_stats(&bytes);
            let _ = pika_stats(&bytes);
        }

        #[test]
        fn info_like_text_never_panics(text in "([#a-z0-9_:=,() .\r\n-]|slave0:|db0|# Keyspace\n|role:|\u{e9}){0,80}") {
            let _ = lines(&text).count();
            let _ = redis_stats(text.as_bytes());
            let _ = pika_stats(text.as_bytes());
        }

        #[test]
        fn redis_typed_values_round_trip(
            used_memory in any::<u64>(),
            pid in any::<u32>(),
            io_ago in any::<i64>(),
            port in any::<u16>(),
            replica in any::<bool>(),
            link_up in any::<bool>(),
            loading in any::<bool>(),
            ratio in 0.0f64..1.0e6,
            keyspace in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()), 0..4),
            extra in proptest::collection::btree_map("x_[a-z0-9_]{0,12}", "[ -~]{0,20}", 0..5),
            crlf in any::<bool>(),
        ) {
            // Later duplicates of a db would be two entries; keep each db once.
            let mut keyspace = keyspace;
            keyspace.sort_by_key(|k| k.0);
            keyspace.dedup_by_key(|k| k.0);
            let mut server = vec![field("redis_version", "7.0.15"), field("process_id", pid)];
            server.extend(extra.iter().map(|(k, v)| field(k, v)));
            let text = render(&[
                ("Server", server),
                ("Memory", vec![field("used_memory", used_memory), field("mem_fragmentation_ratio", ratio)]),
                ("Persistence", vec![field("loading", u8::from(loading))]),
                ("Replication", vec![
                    field("role", if replica { "slave" } else { "master" }),
                    field("master_port", port),
                    field("master_link_status", if link_up { "up" } else { "down" }),
                    field("master_last_io_seconds_ago", io_ago),
                ]),
                ("Keyspace", keyspace.iter()
                    .map(|(db, k, e, t)| field(&format!("db{db}"), format!("keys={k},expires={e},avg_ttl={t}")))
                    .collect()),
            ], crlf);
            let s = redis_stats(text.as_bytes());
            prop_assert_eq!(s.version.as_deref(), Some("7.0.15"));
            prop_assert_eq!(s.process_id, Some(pid));
            prop_assert_eq!(s.used_memory_bytes, Some(used_memory));
            prop_assert_eq!(s.mem_fragmentation_ratio, Some(ratio));
            prop_assert_eq!(s.loading, Some(loading));
            prop_assert_eq!(s.role, Some(if replica { ObservedRole::Replica } else { ObservedRole::Master }));
            prop_assert_eq!(s.master_port, Some(port));
            prop_assert_eq!(s.master_link_up, Some(link_up));
            prop_assert_eq!(s.master_last_io_seconds_ago, Some(io_ago));
            let expected: Vec<DbKeys> = keyspace.iter()
                .map(|&(db, keys, expires, ttl)| DbKeys { db, keys, expires, avg_ttl_ms: Some(ttl) })
                .collect();
            prop_assert_eq!(&s.keyspace, &expected);
            let expected_raw: BTreeMap<String, String> =
                extra.iter().map(|(k, v)| (k.clone(), v.trim_ascii().to_owned())).collect();
            prop_assert_eq!(&s.raw, &expected_raw);
        }

        #[test]
        fn pika_typed_values_round_trip(
            db_size in any::<u64>(),
            offset in any::<u64>(),
            replica in any::<bool>(),
            counts in proptest::collection::vec((0u64..1 << 40, 0u64..1 << 40), 1..6),
            crlf in any::<bool>(),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut text = render(&[
                ("Data", vec![field("db_size", db_size)]),
                (if replica { "Replication(SLAVE)" } else { "Replication(MASTER)" }, vec![
                    field("role", if replica { "slave" } else { "master" }),
                    field("slave_repl_offset", offset),
                ]),
            ], crlf);
            text.push_str(&format!("# Keyspace{eol}# Start async statistics{eol}# Time:0{eol}"));
            for (i, (keys, expires)) in counts.iter().enumerate() {
                text.push_str(&format!("db3 Type{i}_keys={keys}, expires={expires}, invalid_keys=0{eol}"));
            }
            let s = pika_stats(text.as_bytes());
            prop_assert_eq!(s.disk_used_bytes, Some(db_size));
            if replica {
                prop_assert_eq!((s.master_repl_offset, s.replica_repl_offset), (None, Some(offset)));
            } else {
                prop_assert_eq!((s.master_repl_offset, s.replica_repl_offset), (Some(offset), None));
            }
            let keys = counts.iter().map(|c| c.0).sum();
            let expires = counts.iter().map(|c| c.1).sum();
            prop_assert_eq!(s.keyspace, vec![DbKeys { db: 3, keys, expires, avg_ttl_ms: None }]);
            prop_assert!(s.raw.is_empty(), "{:?}", s.raw);
        }
    }
}

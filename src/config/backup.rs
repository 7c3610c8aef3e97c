//! `[backup]` and `[instances.backup]` of agent.toml: where backups go, how many may
//! run at once, how they are checked, and the schedule every instance gets unless its
//! spec says otherwise.

use crate::problem::Checker;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Backups one instance keeps unless its spec or `[instances.backup]` says otherwise.
pub const DEFAULT_KEEP: u32 = 7;
/// Backups the node takes at once: each forks a server and writes its whole dataset.
pub const DEFAULT_MAX_CONCURRENT: u32 = 2;
/// How long one backup may take, from the request to the verified copy.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bounds that keep every time computed from them far from overflowing (a backup
/// longer than a week is stuck; a schedule rarer than yearly is none).
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);
const MAX_INTERVAL: Duration = Duration::from_secs(366 * 86_400);
pub const DEFAULT_CHECK_RDB: &str = "/usr/bin/redis-check-rdb";

/// `[backup]`: node-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    pub max_concurrent: u32,
    /// Redis's own checker (Debian's redis-tools), run on every RDB before it counts.
    pub check_rdb: PathBuf,
    /// The token this agent sends when it fetches a backup from another agent.
    pub fetch_token_file: Option<PathBuf>,
    pub timeout: Duration,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            check_rdb: PathBuf::from(DEFAULT_CHECK_RDB),
            fetch_token_file: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A backup schedule: `interval` (none: only on request) and how many to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSchedule {
    pub interval: Option<Duration>,
    pub keep: u32,
}

impl Default for BackupSchedule {
    fn default() -> Self {
        BackupSchedule {
            interval: None,
            keep: DEFAULT_KEEP,
        }
    }
}

/// A schedule table (`[instances.backup]` of agent.toml, a spec's `[backup]`): each
/// field it sets overrides the one below it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScheduleOverride {
    /// `Some(None)`: no schedule (`interval = "0s"`), whatever is below.
    pub interval: Option<Option<Duration>>,
    pub keep: Option<u32>,
}

impl ScheduleOverride {
    /// The schedule that applies over `below`.
    pub fn over(&self, below: BackupSchedule) -> BackupSchedule {
        BackupSchedule {
            interval: self.interval.unwrap_or(below.interval),
            keep: self.keep.unwrap_or(below.keep),
        }
    }
}

/// Parses `[backup]`.
pub fn parse_backup(table: &Map<String, Value>, c: &mut Checker, resolve: &dyn Fn(String) -> PathBuf) -> BackupConfig {
    let fields = c.table(
        table,
        "backup",
        &["max_concurrent", "check_rdb", "fetch_token_file", "timeout"],
    );
    let mut config = BackupConfig::default();
    if let Some(n) = c.unsigned(&fields, "max_concurrent") {
        match u32::try_from(n) {
            Ok(n) if n >= 1 => config.max_concurrent = n,
            _ => c.problem(
                fields.path("max_concurrent"),
                format!("{n} is not between 1 and 4294967295"),
            ),
        }
    }
    if let Some(path) = c.string(&fields, "check_rdb") {
        config.check_rdb = resolve(path);
    }
    config.fetch_token_file = c.string(&fields, "fetch_token_file").map(resolve);
    if let Some(timeout) = c.duration(&fields, "timeout") {
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            c.problem(fields.path("timeout"), "must be more than 0s and at most 7d");
        } else {
            config.timeout = timeout;
        }
    }
    config
}

/// Parses a schedule table at `path`. An interval of `0s` means no schedule.
pub fn parse_schedule(table: &Map<String, Value>, path: &str, c: &mut Checker) -> ScheduleOverride {
    let fields = c.table(table, path, &["interval", "keep"]);
    let interval = c.duration(&fields, "interval").and_then(|d| {
        if d > MAX_INTERVAL {
            c.problem(fields.path("interval"), "must be at most 366d");
            return None;
        }
        Some((!d.is_zero()).then_some(d))
    });
    let keep = c.unsigned(&fields, "keep").and_then(|n| match u32::try_from(n) {
        Ok(n) if (1..=10_000).contains(&n) => Some(n),
        _ => {
            c.problem(
                fields.path("keep"),
                format!("{n} is not between 1 and 10000 (the last good backup is never deleted)"),
            );
            None
        }
    });
    ScheduleOverride { interval, keep }
}

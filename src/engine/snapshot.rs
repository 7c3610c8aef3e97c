//! Snapshots for backups: asking a server for a consistent copy of its dataset on
//! disk, following it to the end, and finding the file it wrote; and where a backup
//! goes so that a server loads it at its start.
//!
//! The types are engine-neutral; so is `BGSAVE`, which both engines answer alike. The
//! Redis commands are here (`INFO persistence`, `CONFIG GET dbfilename`), the Pika
//! ones in `pika/`.

use super::client::{as_text, info_field, ClientError};
use super::session::{server_error_text, Session};
use redis::Value;
use std::path::{Path, PathBuf};

/// The form a backup of an engine takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupShape {
    /// One file (Redis's RDB), with this extension.
    File { extension: &'static str },
    /// A directory of files (Pika's dump: a RocksDB checkpoint and its `info`).
    Directory,
}

/// How the server took a request for a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotStart {
    /// A new one started.
    Started,
    /// One was already running: it is the one to wait for.
    AlreadyRunning,
    /// It starts once another background job ends (Redis's AOF rewrite).
    Scheduled,
}

/// Where the server's snapshots stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    pub in_progress: bool,
    /// Whether the last background save succeeded.
    pub last_ok: bool,
    /// When the last successful save was taken, seconds since the Unix epoch.
    pub last_save_time: u64,
    /// How long the last successful save took, when the server says.
    pub last_duration_sec: Option<u64>,
    /// The server's own version (`redis_version`, `pika_version`).
    pub server_version: String,
}

/// `BGSAVE`, or `BGSAVE SCHEDULE` where the server has it (Redis: a running AOF
/// rewrite then delays the save instead of refusing it). Redis and Pika answer alike:
/// an error saying a save is "already" running, or a status line.
pub async fn start_bgsave(session: &mut Session, schedule: bool) -> Result<SnapshotStart, ClientError> {
    let mut bgsave = redis::cmd("BGSAVE");
    if schedule {
        bgsave.arg("SCHEDULE");
    }
    let reply = session.pipeline("BGSAVE", &[bgsave]).await?;
    match reply.first() {
        Some(Value::ServerError(error)) => {
            let text = server_error_text(error);
            if text.contains("already") {
                Ok(SnapshotStart::AlreadyRunning)
            } else {
                Err(session.unexpected("BGSAVE", text))
            }
        }
        Some(other) => match as_text(other) {
            Some(text) if text.contains("scheduled") => Ok(SnapshotStart::Scheduled),
            Some(_) => Ok(SnapshotStart::Started),
            None => Err(session.unexpected("BGSAVE", format!("answered {other:?}"))),
        },
        None => Err(session.unexpected("BGSAVE", "no reply".into())),
    }
}

/// `INFO persistence` and `INFO server`, in one exchange.
pub async fn redis_persistence(session: &mut Session) -> Result<Persistence, ClientError> {
    let mut info = redis::cmd("INFO");
    info.arg("persistence").arg("server");
    let mut replies = session.pipeline("INFO", &[info]).await?;
    let text = super::commands::info_text(session, replies.pop())?;
    let text = String::from_utf8_lossy(&text);
    parse_redis_persistence(&text).ok_or_else(|| {
        session.unexpected(
            "INFO",
            "no rdb_bgsave_in_progress, rdb_last_bgsave_status or rdb_last_save_time in INFO persistence".into(),
        )
    })
}

/// The fields of Redis's `INFO persistence` (and `redis_version`) a backup follows.
pub fn parse_redis_persistence(text: &str) -> Option<Persistence> {
    Some(Persistence {
        in_progress: info_field(text, "rdb_bgsave_in_progress")? == "1",
        last_ok: info_field(text, "rdb_last_bgsave_status")? == "ok",
        last_save_time: info_field(text, "rdb_last_save_time")?.parse().ok()?,
        // -1 before the first save.
        last_duration_sec: info_field(text, "rdb_last_bgsave_time_sec").and_then(|v| v.parse().ok()),
        server_version: info_field(text, "redis_version").unwrap_or("unknown").to_string(),
    })
}

/// The RDB file of the server's last save: `dir` is the agent's, `dbfilename` the
/// server's to say.
pub async fn redis_snapshot_path(session: &mut Session, data_dir: &Path) -> Result<PathBuf, ClientError> {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg("dbfilename");
    let replies = session.pipeline("CONFIG GET", &[get]).await?;
    let values = super::commands::config_values(replies.first().unwrap_or(&Value::Nil));
    let name = values.get("dbfilename").map_or("dump.rdb", String::as_str);
    rdb_file(data_dir, name)
        .ok_or_else(|| session.unexpected("CONFIG GET", format!("dbfilename {name:?} is not a file name")))
}

/// `data_dir/name`, when `name` is a plain file name.
pub fn rdb_file(data_dir: &Path, name: &str) -> Option<PathBuf> {
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    plain.then(|| data_dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistence_from_a_real_reply() {
        let text = include_str!("../../tests/fixtures/redis/info-all.txt");
        let p = parse_redis_persistence(text).unwrap();
        assert!(!p.in_progress);
        assert!(p.last_ok);
        assert!(p.last_save_time > 1_600_000_000);
        assert!(p.server_version.starts_with("7.0"));
        assert_eq!(parse_redis_persistence("# Persistence\r\nloading:0\r\n"), None);
    }

    #[test]
    fn dbfilename_must_be_a_plain_name() {
        let dir = Path::new("/d");
        assert_eq!(rdb_file(dir, "dump.rdb"), Some(PathBuf::from("/d/dump.rdb")));
        for bad in ["", ".", "..", "../x.rdb", "a/b"] {
            assert_eq!(rdb_file(dir, bad), None, "{bad:?}");
        }
    }
}

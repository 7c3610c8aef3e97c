//! Pika's snapshots: `BGSAVE` writes a RocksDB checkpoint of every database, with an
//! `info` file (the binlog position it matches), into `dump-path/<prefix><YYYYMMDD>/`
//! — a directory a later save the same day replaces. `INFO` says `is_bgsaving:Yes`
//! while one runs; Pika keeps no "last save" status, so the dump's `info` file, written
//! last, says when the last one completed.

use crate::engine::client::{info_field, ClientError};
use crate::engine::session::Session;
use crate::engine::snapshot::Persistence;
use std::path::{Path, PathBuf};

/// The dump directory inside the data directory (`dump-path` of the rendered file).
pub const DUMP_DIR: &str = "dump";

pub async fn persistence(session: &mut Session, data_dir: &Path) -> Result<Persistence, ClientError> {
    let mut info = redis::cmd("INFO");
    info.arg("all");
    let mut replies = session.pipeline("INFO", &[info]).await?;
    let text = crate::engine::commands::info_text(session, replies.pop())?;
    let text = String::from_utf8_lossy(&text);
    let in_progress = info_field(&text, "is_bgsaving")
        .ok_or_else(|| session.unexpected("INFO", "no is_bgsaving in INFO".into()))?
        .starts_with("Yes");
    let dumps = data_dir.join(DUMP_DIR);
    let latest = crate::blocking::run("look at Pika's dumps", move || latest_dump(&dumps));
    let last_save_time = latest
        .await
        .map_err(|reason| session.unexpected("INFO", reason))?
        .map_or(0, |(_, at)| at);
    Ok(Persistence {
        in_progress,
        last_ok: true,
        last_save_time,
        last_duration_sec: None,
        server_version: info_field(&text, "pika_version").unwrap_or("unknown").to_string(),
    })
}

pub async fn snapshot_path(session: &Session, data_dir: &Path) -> Result<PathBuf, ClientError> {
    let dumps = data_dir.join(DUMP_DIR);
    let shown = dumps.display().to_string();
    let latest = crate::blocking::run("look at Pika's dumps", move || latest_dump(&dumps));
    latest
        .await
        .map_err(|reason| session.unexpected("BGSAVE", reason))?
        .map(|(path, _)| path)
        .ok_or_else(|| session.unexpected("BGSAVE", format!("no complete dump in {shown}")))
}

/// The newest dump under `dumps` that is complete (has its `info` files), with the
/// time its newest `info` file was written.
fn latest_dump(dumps: &Path) -> Option<(PathBuf, u64)> {
    let mut best: Option<(PathBuf, u64)> = None;
    for entry in std::fs::read_dir(dumps).ok()?.flatten() {
        let path = entry.path();
        let Some(written) = info_written(&path) else {
            continue;
        };
        if best.as_ref().is_none_or(|(_, at)| written > *at) {
            best = Some((path, written));
        }
    }
    best
}

/// When the newest `db*/info` file in one dump was written; `None` when there is none.
fn info_written(dump: &Path) -> Option<u64> {
    std::fs::read_dir(dump)
        .ok()?
        .flatten()
        .filter_map(|db| std::fs::metadata(db.path().join("info")).ok()?.modified().ok())
        .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_complete_dump_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let dumps = dir.path();
        std::fs::create_dir_all(dumps.join("20261128/db0")).unwrap();
        std::fs::write(dumps.join("20261128/db0/info"), "0s\n").unwrap();
        // Being written: no info yet.
        std::fs::create_dir_all(dumps.join("20261129/db0/0")).unwrap();
        let (path, at) = latest_dump(dumps).unwrap();
        assert_eq!(path, dumps.join("20261128"));
        assert!(at > 1_600_000_000);
        assert_eq!(latest_dump(&dumps.join("missing")), None);
    }
}

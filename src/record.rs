//! `instance.json`: what the agent knows about the process it started for an
//! instance. It is the agent's proof of ownership (invariant 1): a later agent adopts
//! the process only if pid, start time, executable and boot all still match.

use crate::atomic_file::Durability;
use crate::engine::EngineKind;
use std::io;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "instance.json";

/// The record of a started process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceRecord {
    pub pid: u32,
    /// Start time after boot, in clock ticks (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    /// The boot the start time belongs to.
    pub boot_id: String,
    /// The executable as `/proc/<pid>/exe` named it right after the start.
    pub executable: PathBuf,
    /// [`crate::spec::InstanceSpec::config_hash`] of the spec the process runs with:
    /// the one it was started with, or the one live changes last brought it to.
    pub config_hash: String,
    /// Wall-clock start, seconds since the Unix epoch.
    pub started_at: u64,
    /// Restarts after crashes so far, carried across agent restarts.
    pub restarts: u64,
    /// Unexpected exits in a row before this start, so that an agent restarted during a
    /// crash loop keeps backing off.
    #[serde(default)]
    pub consecutive_crashes: u32,
    /// Where the agent reaches the process (an address it binds, and its port).
    #[serde(default)]
    pub address: Option<std::net::SocketAddr>,
    pub engine: EngineKind,
    pub version: String,
    pub port: u16,
    /// The spec's `restart_epoch` when the process started.
    #[serde(default)]
    pub restart_epoch: u64,
    /// The spec's `[limits]` the process started with.
    #[serde(default)]
    pub nofile: Option<u64>,
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// Until when (milliseconds since the Unix epoch) the previous password stays
    /// valid after a change, so that an agent restarted meanwhile ends the grace
    /// period on time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_grace_until_ms: Option<u64>,
    /// The agent asked the process to stop: an exit that a later agent finds is not a
    /// crash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
}

/// A record that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid record: {source}")]
    Invalid { path: PathBuf, source: serde_json::Error },
}

pub fn path(instance_dir: &Path) -> PathBuf {
    instance_dir.join(FILE_NAME)
}

/// Reads the record of an instance; `Ok(None)` when there is none.
pub fn read(instance_dir: &Path) -> Result<Option<InstanceRecord>, RecordError> {
    let path = path(instance_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RecordError::Read { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| RecordError::Invalid { path, source })
}

/// Writes the record atomically.
pub fn write(instance_dir: &Path, record: &InstanceRecord) -> Result<(), crate::atomic_file::WriteError> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| crate::atomic_file::WriteError {
        path: path(instance_dir),
        step: "serialize",
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    // A record is worthless after a reboot (its boot id no longer matches), so it
    // only has to survive a crash of the agent: no fsync.
    crate::atomic_file::write(&path(instance_dir), &bytes, 0o600, Durability::UntilReboot)
}

/// Removes the record; a missing one is fine.
pub fn remove(instance_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(path(instance_dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Names of the instances that have a record under `instances_dir`.
pub fn recorded_names(instances_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(instances_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join(FILE_NAME).is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| crate::spec::valid_name(n))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let record = InstanceRecord {
            pid: 42,
            start_ticks: 7,
            boot_id: "b".into(),
            executable: "/usr/bin/redis-server".into(),
            config_hash: "h".into(),
            started_at: 1,
            restarts: 2,
            consecutive_crashes: 1,
            address: Some("127.0.0.1:7000".parse().unwrap()),
            engine: EngineKind::Redis,
            restart_epoch: 3,
            nofile: Some(1024),
            oom_score_adj: None,
            password_grace_until_ms: Some(5),
            stopping: true,
            version: "7.0".into(),
            port: 7000,
        };
        write(dir.path(), &record).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(record));
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        let error = read(dir.path()).unwrap_err().to_string();
        assert!(error.contains("instance.json is not a valid record"), "{error}");
    }
}

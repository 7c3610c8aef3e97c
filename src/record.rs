//! `instance.json`: what the agent knows about the process it started for an
//! instance. It is the agent's proof of ownership (invariant 1): a later agent adopts
//! the process only if pid, start time, executable and boot all still match.
//!
//! No server runs before a record that finds it is on disk. A start writes
//! `instance.json` after the spawn, with the pid and start time; before the spawn it
//! writes `launch.json`: a record without a pid but with a [`LaunchMark`] (the working
//! directory the process gets, which is the instance's own data directory, and the
//! moment before which it cannot have started), removed once `instance.json` is
//! written. An agent killed in between leaves a launch record whose mark finds the
//! process, if the start got that far. A restart after a crash writes no launch
//! record: the record of the crashed process carries the same mark, and the process
//! that replaced it is the one that started after it. (Two files, so that neither
//! write replaces an existing file, which costs a flush on ext4; and not a token in the
//! process's environment, which redis-server overwrites with its process title.)

use crate::atomic_file::Durability;
use crate::engine::EngineKind;
use std::io;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "instance.json";
/// The record written before a spawn.
pub const LAUNCH_FILE_NAME: &str = "launch.json";

/// The record of a started process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceRecord {
    /// 0 in a record written before the spawn: the process, if any, is found by
    /// `launch`.
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
    /// The previous password during a grace period, so that a process started (or an
    /// agent restarted) before the grace period ends gives it back. The file is 0600,
    /// like the rendered config that holds the current password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_grace_previous: Option<StoredSecret>,
    /// The agent asked the process to stop: an exit that a later agent finds is not a
    /// crash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
    /// Written before the spawn: how a later agent finds the process if this one dies
    /// before it records the pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchMark>,
}

/// A password in a record: serialized as its text, shown by `Debug` as redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSecret(pub crate::spec::Secret);

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for StoredSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.expose())
    }
}

impl<'de> serde::Deserialize<'de> for StoredSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(StoredSecret(crate::spec::Secret::new(&text)))
    }
}

/// What identifies the process of a start whose pid was not recorded yet: started
/// from the recorded executable, in the instance's own data directory (no other
/// process of the agent's user starts there), on this boot, not before
/// `not_before_ticks`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LaunchMark {
    pub working_dir: PathBuf,
    /// Clock ticks after boot, comparable with `/proc/<pid>/stat`'s start time.
    pub not_before_ticks: u64,
}

impl InstanceRecord {
    /// Whether this record was written before its process was started: the start may
    /// have been interrupted before or after the spawn.
    pub fn is_pending(&self) -> bool {
        self.pid == 0
    }
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

/// Reads the record of an instance: the launch record when there is one (a start in
/// progress, or interrupted), else `instance.json`; `Ok(None)` when there is none.
pub fn read(instance_dir: &Path) -> Result<Option<InstanceRecord>, RecordError> {
    match read_file(&instance_dir.join(LAUNCH_FILE_NAME))? {
        Some(launch) => Ok(Some(launch)),
        None => read_file(&path(instance_dir)),
    }
}

fn read_file(path: &Path) -> Result<Option<InstanceRecord>, RecordError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RecordError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| RecordError::Invalid {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes the record of a started process atomically, then removes the launch record.
pub fn write(instance_dir: &Path, record: &InstanceRecord) -> Result<(), crate::atomic_file::WriteError> {
    write_file(&path(instance_dir), record)?;
    remove_file(&instance_dir.join(LAUNCH_FILE_NAME)).map_err(|source| crate::atomic_file::WriteError {
        path: instance_dir.join(LAUNCH_FILE_NAME),
        step: "remove",
        source,
    })
}

/// Writes the record of a start about to happen (no pid yet) atomically.
pub fn write_launch(instance_dir: &Path, record: &InstanceRecord) -> Result<(), crate::atomic_file::WriteError> {
    write_file(&instance_dir.join(LAUNCH_FILE_NAME), record)
}

fn write_file(path: &Path, record: &InstanceRecord) -> Result<(), crate::atomic_file::WriteError> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| crate::atomic_file::WriteError {
        path: path.to_path_buf(),
        step: "serialize",
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    // A record is worthless after a reboot (its boot id no longer matches), so it
    // only has to survive a crash of the agent: no fsync.
    crate::atomic_file::write(path, &bytes, 0o600, Durability::UntilReboot)
}

/// Removes the records (both files); missing ones are fine.
pub fn remove(instance_dir: &Path) -> io::Result<()> {
    remove_file(&instance_dir.join(LAUNCH_FILE_NAME))?;
    remove_file(&path(instance_dir))
}

fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The names of the instances that have a record (or a launch record) under
/// `instances_dir`, sorted.
pub fn recorded_names(instances_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(instances_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join(FILE_NAME).is_file() || e.path().join(LAUNCH_FILE_NAME).is_file())
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
            password_grace_previous: Some(StoredSecret(crate::spec::Secret::new("old-pw"))),
            stopping: true,
            version: "7.0".into(),
            port: 7000,
            launch: Some(LaunchMark {
                working_dir: "/var/lib/ker-agent/instances/a/data".into(),
                not_before_ticks: 99,
            }),
        };
        assert!(!record.is_pending());
        // A start: the launch record first, then the record, which replaces it.
        let launch = InstanceRecord {
            pid: 0,
            start_ticks: 0,
            ..record.clone()
        };
        write_launch(dir.path(), &launch).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(launch.clone()));
        assert!(read(dir.path()).unwrap().unwrap().is_pending());
        write(dir.path(), &record).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(record.clone()));
        assert!(!dir.path().join(LAUNCH_FILE_NAME).exists());
        // A launch record written after a record (the next start) is what counts.
        write_launch(dir.path(), &launch).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(launch));
        remove(dir.path()).unwrap();
        assert!(!dir.path().join(LAUNCH_FILE_NAME).exists());
        // An instance with only a launch record is an instance with a record.
        let instances = tempfile::tempdir().unwrap();
        std::fs::create_dir(instances.path().join("a")).unwrap();
        write_launch(&instances.path().join("a"), &record).unwrap();
        assert_eq!(recorded_names(instances.path()), ["a"]);
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

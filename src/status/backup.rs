//! What the status says about an instance's backups: the ones kept, the one in
//! progress, the last failure, and the last restore. Written by the instance's backup
//! keeper (and its worker, for restores), read by the API, the reports and `/metrics`.

/// One kept backup, as listed by `GET /v1/instances/{name}/backups` and in reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupInfo {
    pub id: String,
    /// When the snapshot was taken (the server's fork), seconds since the Unix epoch.
    pub at: u64,
    pub bytes: u64,
    /// SHA-256 of the RDB file, or of a directory backup's manifest.
    pub sha256: String,
    /// Keys in the backup, as the checker counted them; `None` when unknown.
    pub keys: Option<u64>,
    /// From the request to the verified copy.
    pub duration_ms: u64,
}

/// What an instance's backup keeper is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupActivity {
    #[default]
    Idle,
    /// Due, but the instance is not running and ready.
    Pending,
    /// Waiting for one of the node's concurrent backup slots.
    Queued,
    /// The server is writing its snapshot.
    Saving,
    /// The snapshot is being copied into the backup directory and hashed.
    Copying,
    /// The copy is being checked.
    Verifying,
}

/// The last failed backup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupFailure {
    pub at: u64,
    pub error: String,
    /// When it is tried again, seconds since the Unix epoch.
    pub retry_at: u64,
}

/// An instance's backups as its keeper last published them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackupStatus {
    pub activity: BackupActivity,
    /// Bytes copied so far while copying or verifying.
    pub progress_bytes: Option<u64>,
    /// The spec's `backup_epoch`, and the highest one a kept backup answered.
    pub requested_epoch: u64,
    pub completed_epoch: u64,
    /// When the schedule asks for the next one, seconds since the Unix epoch.
    pub next_at: Option<u64>,
    pub last_failure: Option<BackupFailure>,
    /// Failed backups since the agent started.
    pub failures: u64,
}

/// What `/metrics` shows of an instance's backups, copied at each scrape.
#[derive(Debug, Clone)]
pub struct BackupView {
    pub name: String,
    /// A backup is queued or running.
    pub busy: bool,
    pub failures: u64,
    pub newest: Option<BackupInfo>,
}

/// The last restore of an instance's data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreOutcome {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The backup id, or the URL without its query.
    pub source: String,
    pub sha256: String,
    pub bytes: u64,
    /// The `restore_epoch` it answered.
    pub epoch: u64,
    /// Where the data that was there went, when there was any.
    pub set_aside: Option<String>,
    /// Why it failed; `None` when the data was placed.
    pub error: Option<String>,
}

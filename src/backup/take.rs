//! One backup, from the request to a verified copy in the store: check the free
//! space, ask the server for a snapshot and follow it to its end, copy it out
//! (linked when it can be), check it, and only then make it visible. Any failure
//! leaves nothing behind but its reason.

use super::copy;
use super::store::{manifest_sha256, Metadata, Store};
use super::verify;
use crate::config::BackupConfig;
use crate::engine::{BackupShape, Engine, Persistence, Session, SnapshotStart, Target};
use crate::process::unix_now;
use crate::status::{BackupActivity, BackupInfo};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a running snapshot is looked at: soon at first (a small dataset saves in
/// milliseconds), then four times a second (an `INFO persistence` costs the server
/// microseconds, and a backup should not wait long after its save).
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(250);

/// What a backup in progress is doing, for the status.
#[derive(Debug, Default)]
pub struct Progress {
    activity: Mutex<Option<BackupActivity>>,
    pub bytes: AtomicU64,
}

impl Progress {
    pub fn set(&self, activity: BackupActivity) {
        *self.activity.lock().unwrap_or_else(|p| p.into_inner()) = Some(activity);
    }

    pub fn activity(&self) -> Option<BackupActivity> {
        *self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Everything one backup needs.
pub struct Job {
    pub name: String,
    pub engine: &'static dyn Engine,
    pub target: Target,
    pub data_dir: PathBuf,
    /// Where the server keeps its last snapshot (a file for Redis): its size is the
    /// space a new one needs.
    pub snapshot_file: PathBuf,
    pub log_file: PathBuf,
    pub store: Store,
    pub epoch: u64,
    pub settings: BackupConfig,
    /// The size of the newest kept backup, when there is one.
    pub last_bytes: Option<u64>,
}

/// Takes one backup.
pub async fn take(job: &Job, progress: &Progress) -> Result<Metadata, String> {
    let began = Instant::now();
    let deadline = began + job.settings.timeout;
    let log_offset = prepare(job).await?;
    let mut session = Session::open(&job.target).await.map_err(|e| e.to_string())?;
    session.verify_pid(job.target.pid).await.map_err(|e| e.to_string())?;

    progress.set(BackupActivity::Saving);
    let before = job
        .engine
        .persistence(&mut session, &job.data_dir)
        .await
        .map_err(|e| e.to_string())?;
    let requested_at = unix_now();
    let start = job
        .engine
        .start_snapshot(&mut session)
        .await
        .map_err(|e| e.to_string())?;
    let saved = match follow(job, &mut session, start, &before, requested_at, deadline).await {
        Ok(saved) => saved,
        Err(e) => {
            let log_file = job.log_file.clone();
            let reason = crate::blocking::run("read the server's log", move || server_reason(&log_file, log_offset));
            return Err(match reason.await.ok().flatten() {
                Some(reason) => format!("{e}; the server's log says: {reason}"),
                None => e,
            });
        }
    };
    tracing::debug!(
        message = "Snapshot written.",
        instance = job.name.as_str(),
        took_ms = began.elapsed().as_millis() as u64
    );
    let source = job
        .engine
        .snapshot_path(&mut session, &job.data_dir)
        .await
        .map_err(|e| e.to_string())?;

    progress.set(BackupActivity::Copying);
    let shape = job.engine.backup_shape();
    let fallback_at = saved
        .last_save_time
        .saturating_sub(saved.last_duration_sec.unwrap_or(0));
    let store = job.store.clone();
    let id = crate::blocking::run("name the backup", move || store.new_id(fallback_at)).await?;
    let partial = job.store.partial_path(&id, shape);
    let (bytes, sha256, files, facts) =
        match copy_and_check(job, &mut session, &saved, &source, &partial, progress, deadline).await {
            Ok(done) => done,
            Err(e) => {
                let partial = partial.clone();
                let _ =
                    crate::blocking::run("remove a partial backup", move || super::store::remove_any(&partial)).await;
                return Err(e);
            }
        };
    tracing::debug!(
        message = "Backup copied and checked.",
        instance = job.name.as_str(),
        took_ms = began.elapsed().as_millis() as u64
    );
    let meta = Metadata {
        info: BackupInfo {
            id: id.clone(),
            at: facts.and_then(|f| f.created_at).unwrap_or(fallback_at),
            bytes,
            sha256,
            keys: facts.and_then(|f| f.keys),
            duration_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
        },
        engine: job.engine.kind(),
        server_version: saved.server_version.clone(),
        epoch: job.epoch,
        data: Store::data_name(&id, shape),
        files,
    };
    let (store, committed) = (job.store.clone(), meta.clone());
    let commit = crate::blocking::run("commit the backup", move || {
        let result = store.commit(&partial, &committed);
        if result.is_err() {
            let _ = super::store::remove_any(&partial);
        }
        result.map_err(|e| e.to_string())
    });
    commit.await??;
    Ok(meta)
}

/// Before the server is asked for anything: refuses when the snapshot would not fit
/// (the server writes a whole new one beside the old in the data directory, and a
/// backup directory on another filesystem needs a copy of it), creates the backup
/// directory, and returns where the server's log ends now.
async fn prepare(job: &Job) -> Result<u64, String> {
    let (data_dir, snapshot_file, log_file) = (job.data_dir.clone(), job.snapshot_file.clone(), job.log_file.clone());
    let (store, last_bytes) = (job.store.clone(), job.last_bytes);
    let prepared = crate::blocking::run("prepare the backup", move || -> Result<u64, String> {
        use std::os::unix::fs::MetadataExt;
        let on_disk = std::fs::metadata(&snapshot_file)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let needed = on_disk.max(last_bytes).unwrap_or(0);
        let free = |path: &Path| {
            crate::sys::statvfs(path)
                .map(|s| s.available_bytes)
                .map_err(|e| format!("cannot statvfs {}: {e}", path.display()))
        };
        let short = |path: &Path, free: u64, what: &str| {
            format!(
                "only {} free on the filesystem of {}, and the last snapshot was {}: {what}",
                crate::units::format_bytes(free),
                path.display(),
                crate::units::format_bytes(needed)
            )
        };
        let data_free = free(&data_dir)?;
        if data_free < needed {
            return Err(short(
                &data_dir,
                data_free,
                "the server writes a new snapshot beside the old one",
            ));
        }
        // The backup directory may not exist yet: its nearest existing parent decides.
        let backup_dir = store.dir();
        let existing = backup_dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
        let device = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        if device(existing) != device(&data_dir) {
            let backup_free = free(existing)?;
            if backup_free < needed {
                return Err(short(existing, backup_free, "the backup directory needs a copy of it"));
            }
        }
        store.create().map_err(|e| e.to_string())?;
        Ok(std::fs::metadata(&log_file).map_or(0, |m| m.len()))
    });
    prepared.await?
}

/// Follows the snapshot until it is complete, and returns the persistence state that
/// says so.
async fn follow(
    job: &Job,
    session: &mut Session,
    start: SnapshotStart,
    before: &Persistence,
    requested_at: u64,
    deadline: Instant,
) -> Result<Persistence, String> {
    // A snapshot still to begin (scheduled behind an AOF rewrite) must be seen running,
    // or its save time seen to move, before its end can be told from the last one's.
    let mut seen_running = start != SnapshotStart::Scheduled;
    let mut delay = POLL_FIRST;
    loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(POLL_MAX);
        let now = job
            .engine
            .persistence(session, &job.data_dir)
            .await
            .map_err(|e| e.to_string())?;
        if now.in_progress {
            seen_running = true;
        } else {
            let saved =
                now.last_save_time >= requested_at && (seen_running || now.last_save_time != before.last_save_time);
            if saved && now.last_ok {
                return Ok(now);
            }
            if seen_running {
                return Err(if now.last_ok {
                    "the server's background save ended without writing a snapshot".into()
                } else {
                    "the server's background save failed".into()
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the snapshot did not complete within {}s ([backup] timeout)",
                job.settings.timeout.as_secs()
            ));
        }
    }
}

type Copied = (u64, String, Vec<super::store::FileSum>, Option<verify::RdbFacts>);
type Hashed = (u64, String, Vec<super::store::FileSum>);

/// Copies the snapshot to `partial` and checks it. An RDB that can be hard-linked is
/// whole at once, so `redis-check-rdb` reads it while the agent hashes it; a copy is
/// checked once it is complete.
async fn copy_and_check(
    job: &Job,
    session: &mut Session,
    saved: &Persistence,
    source: &Path,
    partial: &Path,
    progress: &Progress,
    deadline: Instant,
) -> Result<Copied, String> {
    let shape = job.engine.backup_shape();
    let rdb = matches!(shape, BackupShape::File { extension: "rdb" });
    let linked_bytes = match shape {
        BackupShape::File { .. } => {
            let (from, to) = (source.to_path_buf(), partial.to_path_buf());
            crate::blocking::run("link the snapshot", move || copy::link(&from, &to)).await?
        }
        BackupShape::Directory => None,
    };
    let copy_progress = Arc::new(AtomicU64::new(0));
    let (from, to, counter) = (source.to_path_buf(), partial.to_path_buf(), copy_progress.clone());
    let work = tokio::task::spawn_blocking(move || match shape {
        BackupShape::File { .. } if linked_bytes.is_some() => {
            copy::hash_file(&to, &counter).map(|(bytes, sha)| (bytes, sha, Vec::new()))
        }
        BackupShape::File { .. } => copy::copy_file(&from, &to, &counter).map(|(bytes, sha)| (bytes, sha, Vec::new())),
        BackupShape::Directory => copy::tree(&from, &to, copy::Placement::LinkOrCopy, &counter).map(|files| {
            let bytes = files.iter().map(|f| f.bytes).sum();
            (bytes, manifest_sha256(&files), files)
        }),
    });
    let hashing = wait_copy(job, work, &copy_progress, progress, deadline);
    // The first failure of the two ends the other (the checker is killed when its
    // future is dropped).
    let ((bytes, sha256, files), early_check) = match linked_bytes.filter(|_| rdb) {
        Some(bytes) => {
            let check = verify::check_rdb(&job.settings.check_rdb, partial, check_timeout(bytes, deadline));
            let (hashed, checked) = tokio::try_join!(hashing, check)?;
            (hashed, Some(checked))
        }
        None => (hashing.await?, None),
    };
    if let BackupShape::Directory = shape {
        // A directory is copied file by file: a save that began meanwhile may have
        // replaced some of them.
        let after = job
            .engine
            .persistence(session, &job.data_dir)
            .await
            .map_err(|e| e.to_string())?;
        if after.in_progress || after.last_save_time != saved.last_save_time {
            return Err("another save began while the snapshot was copied; the copy may mix two snapshots".into());
        }
    }
    progress.set(BackupActivity::Verifying);
    let facts = match early_check {
        Some(checked) => Some(checked),
        None if rdb => Some(verify::check_rdb(&job.settings.check_rdb, partial, check_timeout(bytes, deadline)).await?),
        None => None,
    };
    Ok((bytes, sha256, files, facts))
}

/// How long checking `bytes` may take: the checker's own limit, within what is left of
/// the backup's.
fn check_timeout(bytes: u64, deadline: Instant) -> Duration {
    verify::timeout_for(bytes).min(deadline.saturating_duration_since(Instant::now()))
}

/// Waits for the copy (or hash) on the blocking pool, publishing its progress.
async fn wait_copy(
    job: &Job,
    mut work: tokio::task::JoinHandle<Result<Hashed, copy::CopyError>>,
    copy_progress: &AtomicU64,
    progress: &Progress,
    deadline: Instant,
) -> Result<Hashed, String> {
    let copied = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                progress.bytes.store(copy_progress.load(Ordering::Relaxed), Ordering::Relaxed);
                if Instant::now() >= deadline {
                    // The blocking copy cannot be stopped: the caller removes what it
                    // has written (a file goes on into an unlinked inode; a tree's next
                    // file fails on its missing directory).
                    return Err(format!("the copy did not complete within {}s ([backup] timeout)", job.settings.timeout.as_secs()));
                }
            }
        }
    };
    copied
        .map_err(|e| format!("the copy failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// The lines the server logged about a failed save since `offset`.
fn server_reason(log_file: &Path, offset: u64) -> Option<String> {
    let lines = crate::procfs::tail_lines(log_file, offset, 20).ok()?;
    let relevant: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            lower.contains("error") || lower.contains("fail") || lower.contains("can't") || lower.contains("cannot")
        })
        .collect();
    let text = relevant
        .iter()
        .rev()
        .take(2)
        .rev()
        .copied()
        .collect::<Vec<_>>()
        .join(" / ");
    (!text.is_empty()).then_some(text)
}

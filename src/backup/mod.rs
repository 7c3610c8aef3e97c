//! Backups: each instance has a *keeper*, a task beside its worker and monitor, that
//! takes a backup when the spec's `backup_epoch` rises above the last one kept or
//! its schedule is due, while the instance runs and is ready; keeps the newest
//! `keep`; and publishes what it does to the status. A backup never blocks
//! supervision or health: the keeper has its own connection, and at most
//! `[backup] max_concurrent` backups run on the node at once (each forks a server and
//! writes its whole dataset).
//!
//! `store` owns the files of `backup_dir/<name>/`, `take` one backup from request to
//! verified copy, `copy` and `verify` its file work and its check; `restore` places a
//! backup in an empty data directory, `fetch` brings one from another host.

mod copy;
pub mod restore;
pub mod store;
mod take;
mod verify;

use crate::config::AgentConfig;
use crate::engine::{self, Engine};
use crate::events::{Event, EventLog};
use crate::monitoring::monitor::MonitorTarget;
use crate::process::unix_now;
use crate::spec::InstanceSpec;
use crate::status::{BackupActivity, BackupFailure, BackupInfo, BackupStatus, StatusBoard};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Metadata, Store};
use tokio::sync::{watch, Semaphore};

/// A failed backup is tried again after this, doubling up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(1800);
/// An instance with a schedule and no backup yet takes its first within this, at a
/// random moment: a fleet given a schedule at once does not fork everywhere at once.
const FIRST_SPREAD: Duration = Duration::from_secs(300);
/// How often the status shows a running backup's progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What every keeper shares.
pub struct BackupContext {
    pub config: Arc<AgentConfig>,
    pub board: StatusBoard,
    pub events: Arc<EventLog>,
    /// The node's concurrent backups.
    pub slots: Arc<Semaphore>,
}

impl BackupContext {
    pub fn new(config: Arc<AgentConfig>, board: StatusBoard, events: Arc<EventLog>) -> BackupContext {
        let slots = usize::try_from(config.backup.max_concurrent).unwrap_or(1);
        BackupContext {
            config,
            board,
            events,
            slots: Arc::new(Semaphore::new(slots)),
        }
    }
}

/// Why a backup is due, if it is.
fn due(spec: &InstanceSpec, schedule_at: Option<u64>, completed_epoch: u64, now: u64) -> Option<String> {
    if spec.backup.backup_epoch > completed_epoch {
        return Some(format!("backup_epoch {} asked for", spec.backup.backup_epoch));
    }
    schedule_at.filter(|at| *at <= now).map(|_| "scheduled".to_string())
}

/// The keeper of instance `name`'s backups. It ends when its worker does (the target
/// channel closes) or the instance is no longer declared.
pub async fn run(
    name: String,
    mut specs: watch::Receiver<Option<Arc<InstanceSpec>>>,
    mut targets: watch::Receiver<Option<MonitorTarget>>,
    ctx: Arc<BackupContext>,
) {
    let store = Store::new(ctx.config.backups_of(&name));
    let mut kept = match list_and_clean(&store).await {
        Ok(kept) => kept,
        Err(error) => {
            tracing::warn!(instance = %name, %error, "Cannot read the backup directory; starting with none listed.");
            Vec::new()
        }
    };
    let first_at = unix_now() + FIRST_SPREAD.mul_f64(fastrand::f64()).as_secs();
    let mut status = BackupStatus {
        activity: BackupActivity::Idle,
        progress_bytes: None,
        requested_epoch: 0,
        completed_epoch: completed_epoch(&kept),
        next_at: None,
        last_failure: None,
        failures: 0,
        newest: kept.first().map(|m| m.info.clone()),
    };
    let mut retry: Option<(Instant, Duration)> = None;
    loop {
        let Some(spec) = specs.borrow_and_update().clone() else {
            return;
        };
        let schedule = spec.backup.schedule.over(ctx.config.instances.backup);
        status.requested_epoch = spec.backup.backup_epoch;
        status.completed_epoch = completed_epoch(&kept);
        status.next_at = schedule
            .interval
            .map(|every| kept.first().map_or(first_at, |m| m.info.at + every.as_secs()));
        let now = unix_now();
        let why = due(&spec, status.next_at, status.completed_epoch, now);
        let target = targets.borrow_and_update().clone();
        let retry_wait = retry.map(|(at, _)| at).filter(|at| *at > Instant::now());
        status.activity = match (&why, &target) {
            (Some(_), None) => BackupActivity::Pending,
            _ => BackupActivity::Idle,
        };
        status.progress_bytes = None;
        publish(&ctx, &name, &status, &kept);

        if let (Some(why), Some(target), None) = (&why, &target, retry_wait) {
            let outcome = backup_once(&ctx, &name, &spec, target, &store, &kept, why, &mut status).await;
            match outcome {
                Some(Ok(meta)) => {
                    retry = None;
                    status.last_failure = None;
                    kept = after_success(&ctx, &name, &store, meta, schedule.keep).await;
                    status.newest = kept.first().map(|m| m.info.clone());
                }
                Some(Err(error)) => {
                    let delay = retry.map_or(RETRY_FIRST, |(_, d)| (d * 2).min(RETRY_MAX));
                    retry = Some((Instant::now() + delay, delay));
                    status.failures += 1;
                    status.last_failure = Some(BackupFailure {
                        at: unix_now(),
                        error: error.clone(),
                        retry_at: unix_now() + delay.as_secs(),
                    });
                    ctx.events.emit(&name, Event::BackupFailed { error, retry_in: delay });
                }
                // The worker is gone.
                None => return,
            }
            continue;
        }

        // Nothing to do now: wait for a new spec, a process that becomes ready (or
        // goes), the schedule or the retry.
        let wake_at = [
            retry_wait,
            status
                .next_at
                .map(|at| Instant::now() + Duration::from_secs(at.saturating_sub(now))),
        ]
        .into_iter()
        .flatten()
        .min();
        let timer = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = specs.changed() => if changed.is_err() { return },
            changed = targets.changed() => if changed.is_err() { return },
            _ = timer => {}
        }
    }
}

/// One backup with its queueing and progress; `None` when the worker went away
/// while it waited for a slot.
#[allow(clippy::too_many_arguments)]
async fn backup_once(
    ctx: &BackupContext,
    name: &str,
    spec: &InstanceSpec,
    target: &MonitorTarget,
    store: &Store,
    kept: &[Metadata],
    why: &str,
    status: &mut BackupStatus,
) -> Option<Result<Metadata, String>> {
    status.activity = BackupActivity::Queued;
    publish(ctx, name, status, kept);
    let _slot = ctx.slots.clone().acquire_owned().await.ok()?;
    ctx.events.emit(name, Event::BackupStarted { why: why.to_string() });
    let engine: &'static dyn Engine = target.engine;
    let layout = engine::layout(
        engine,
        &ctx.config.instances_dir(),
        &ctx.config.instances.log_dir,
        name,
        &ctx.config.instances.bind,
    );
    let restore_path = engine.restore_path(spec, &layout.data_dir);
    let on_disk = std::fs::metadata(&restore_path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let job = take::Job {
        engine,
        target: target.target.clone(),
        data_dir: layout.data_dir,
        log_file: layout.log_file,
        store: store.clone(),
        epoch: spec.backup.backup_epoch,
        settings: ctx.config.backup.clone(),
        last_bytes: on_disk.max(kept.first().map(|m| m.info.bytes)),
    };
    let progress = take::Progress::default();
    let work = take::take(&job, &progress);
    tokio::pin!(work);
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            result = &mut work => return Some(result),
            _ = ticks.tick() => {
                status.activity = progress.activity().unwrap_or(BackupActivity::Saving);
                let bytes = progress.bytes.load(std::sync::atomic::Ordering::Relaxed);
                status.progress_bytes = (bytes > 0).then_some(bytes);
                publish(ctx, name, status, kept);
            }
        }
    }
}

/// Announces a kept backup, applies the retention and lists what is kept now.
async fn after_success(ctx: &BackupContext, name: &str, store: &Store, meta: Metadata, keep: u32) -> Vec<Metadata> {
    ctx.events.emit(
        name,
        Event::BackupSucceeded {
            id: meta.info.id.clone(),
            bytes: meta.info.bytes,
            keys: meta.info.keys,
            took: Duration::from_millis(meta.info.duration_ms),
        },
    );
    let pruning = store.clone();
    match tokio::task::spawn_blocking(move || pruning.prune(keep)).await {
        Ok(Ok(deleted)) => {
            for id in deleted {
                ctx.events.emit(name, Event::BackupPruned { id });
            }
        }
        Ok(Err(error)) => tracing::warn!(instance = %name, %error, "Cannot delete an old backup."),
        Err(error) => tracing::warn!(instance = %name, %error, "Cannot delete an old backup."),
    }
    match list_and_clean(store).await {
        Ok(kept) => kept,
        Err(error) => {
            tracing::warn!(instance = %name, %error, "Cannot list the backups.");
            vec![meta]
        }
    }
}

/// The backups kept, after removing what interrupted ones left.
async fn list_and_clean(store: &Store) -> Result<Vec<Metadata>, String> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store.clean().map_err(|e| e.to_string())?;
        store.list().map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn completed_epoch(kept: &[Metadata]) -> u64 {
    kept.iter().map(|m| m.epoch).max().unwrap_or(0)
}

fn publish(ctx: &BackupContext, name: &str, status: &BackupStatus, kept: &[Metadata]) {
    let infos: Vec<BackupInfo> = kept.iter().map(|m| m.info.clone()).collect();
    ctx.board.set_backups(name, status.clone(), infos);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_due_for_a_raised_epoch_or_the_schedule() {
        let mut spec = InstanceSpec::example("c", 7000);
        assert_eq!(due(&spec, None, 0, 100), None);
        assert_eq!(due(&spec, Some(101), 0, 100), None);
        assert_eq!(due(&spec, Some(100), 0, 100).as_deref(), Some("scheduled"));
        spec.backup.backup_epoch = 2;
        assert_eq!(due(&spec, None, 1, 100).as_deref(), Some("backup_epoch 2 asked for"));
        assert_eq!(due(&spec, None, 2, 100), None);
        assert_eq!(due(&spec, None, 3, 100), None);
    }
}

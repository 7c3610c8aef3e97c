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

pub mod archive;
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
    // At an agent's start, a thousand first listings would compete with the adoptions
    // and readiness probes still under way; nothing can be backed up before then.
    Box::pin(ctx.board.wait_ready(ctx.config.monitoring.metrics_interval)).await;
    let store = Store::new(ctx.config.backups_of(&name));
    // The futures of the rare steps are boxed: the keeper of an instance that is
    // never backed up then holds only its loop (a thousand keepers idle in it).
    let kept = match Box::pin(list_and_clean(&store)).await {
        Ok(kept) => kept,
        Err(error) => {
            tracing::warn!(instance = %name, %error, "Cannot read the backup directory; starting with none listed.");
            Vec::new()
        }
    };
    let mut keeper = Keeper {
        ctx,
        name,
        store,
        kept,
        status: BackupStatus::default(),
        first_at: unix_now() + FIRST_SPREAD.mul_f64(fastrand::f64()).as_secs(),
        retry: None,
    };
    loop {
        // Only the wake-up time is held across the wait: a thousand keepers of
        // instances that are never backed up sit in it.
        let wake_at = match keeper.next_step(&mut specs, &mut targets) {
            Step::Stop => return,
            Step::Backup { spec, target, why } => {
                Box::pin(keeper.backup_and_record(spec, target, why)).await;
                continue;
            }
            Step::Wait { until } => until,
        };
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

/// What a keeper does next.
enum Step {
    /// The instance is no longer declared.
    Stop,
    Backup {
        spec: Arc<InstanceSpec>,
        target: MonitorTarget,
        why: String,
    },
    /// Nothing to do before a new spec, a process that becomes ready (or goes), or
    /// this time (the schedule or the retry).
    Wait { until: Option<Instant> },
}

/// One instance's backups, as its keeper tracks them.
struct Keeper {
    ctx: Arc<BackupContext>,
    name: String,
    store: Store,
    /// What `store` holds, newest first.
    kept: Vec<Metadata>,
    status: BackupStatus,
    /// When the schedule's first backup is due when there is none yet: a random
    /// moment within `FIRST_SPREAD` of the keeper's start.
    first_at: u64,
    /// After a failure: when to try again, and the delay that led there.
    retry: Option<(Instant, Duration)>,
}

impl Keeper {
    /// Looks at the spec, the process and the time, and publishes where the backups
    /// stand.
    fn next_step(
        &mut self,
        specs: &mut watch::Receiver<Option<Arc<InstanceSpec>>>,
        targets: &mut watch::Receiver<Option<MonitorTarget>>,
    ) -> Step {
        let Some(spec) = specs.borrow_and_update().clone() else {
            return Step::Stop;
        };
        let schedule = spec.backup.schedule.over(self.ctx.config.instances.backup);
        let status = &mut self.status;
        status.requested_epoch = spec.backup.backup_epoch;
        status.completed_epoch = self.kept.iter().map(|m| m.epoch).max().unwrap_or(0);
        status.next_at = schedule
            .interval
            .map(|every| self.kept.first().map_or(self.first_at, |m| m.info.at + every.as_secs()));
        let now = unix_now();
        let why = due(&spec, status.next_at, status.completed_epoch, now);
        let target = targets.borrow_and_update().clone();
        let retry_wait = self.retry.map(|(at, _)| at).filter(|at| *at > Instant::now());
        status.activity = match (&why, &target) {
            (Some(_), None) => BackupActivity::Pending,
            _ => BackupActivity::Idle,
        };
        status.progress_bytes = None;
        self.publish();
        if let (Some(why), Some(target), None) = (why, target, retry_wait) {
            return Step::Backup { spec, target, why };
        }
        let scheduled = self
            .status
            .next_at
            .map(|at| Instant::now() + Duration::from_secs(at.saturating_sub(now)));
        Step::Wait {
            until: [retry_wait, scheduled].into_iter().flatten().min(),
        }
    }

    /// One backup and what follows it: the retention after a success, the back-off
    /// after a failure.
    async fn backup_and_record(&mut self, spec: Arc<InstanceSpec>, target: MonitorTarget, why: String) {
        let keep = spec.backup.schedule.over(self.ctx.config.instances.backup).keep;
        match self.backup_once(&spec, &target, &why).await {
            Ok(meta) => {
                self.retry = None;
                self.status.last_failure = None;
                self.after_success(meta, keep).await;
            }
            Err(error) => {
                let delay = self.retry.map_or(RETRY_FIRST, |(_, d)| (d * 2).min(RETRY_MAX));
                self.retry = Some((Instant::now() + delay, delay));
                self.status.failures += 1;
                self.status.last_failure = Some(BackupFailure {
                    at: unix_now(),
                    error: error.clone(),
                    retry_at: unix_now() + delay.as_secs(),
                });
                self.emit(Event::BackupFailed { error, retry_in: delay });
            }
        }
    }

    fn emit(&self, event: Event) {
        self.ctx.events.emit(&self.name, event);
    }

    fn publish(&self) {
        let infos: Vec<BackupInfo> = self.kept.iter().map(|m| m.info.clone()).collect();
        self.ctx.board.set_backups(&self.name, self.status.clone(), infos);
    }

    /// One backup, with its wait for a slot and its progress in the status. (A backup
    /// queued for an instance that is going away fails once its turn comes: the
    /// process no longer answers.)
    async fn backup_once(
        &mut self,
        spec: &InstanceSpec,
        target: &MonitorTarget,
        why: &str,
    ) -> Result<Metadata, String> {
        self.status.activity = BackupActivity::Queued;
        self.publish();
        let slots = self.ctx.slots.clone();
        // The semaphore is never closed.
        let _slot = slots.acquire_owned().await.map_err(|e| e.to_string())?;
        self.emit(Event::BackupStarted { why: why.to_string() });
        let engine: &'static dyn Engine = target.engine;
        let config = &self.ctx.config;
        let layout = engine::layout(
            engine,
            &config.instances_dir(),
            &config.instances.log_dir,
            &self.name,
            &config.instances.bind,
        );
        let job = take::Job {
            name: self.name.clone(),
            engine,
            target: target.target.clone(),
            snapshot_file: engine.restore_path(spec, &layout.data_dir),
            data_dir: layout.data_dir,
            log_file: layout.log_file,
            store: self.store.clone(),
            epoch: spec.backup.backup_epoch,
            settings: config.backup.clone(),
            last_bytes: self.kept.first().map(|m| m.info.bytes),
        };
        let progress = take::Progress::default();
        let work = take::take(&job, &progress);
        tokio::pin!(work);
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = ticks.tick() => {
                    self.status.activity = progress.activity().unwrap_or(BackupActivity::Saving);
                    let bytes = progress.bytes.load(std::sync::atomic::Ordering::Relaxed);
                    self.status.progress_bytes = (bytes > 0).then_some(bytes);
                    self.publish();
                }
            }
        }
    }

    /// Announces a kept backup and applies the retention.
    async fn after_success(&mut self, meta: Metadata, keep: u32) {
        self.emit(Event::BackupSucceeded {
            id: meta.info.id.clone(),
            bytes: meta.info.bytes,
            keys: meta.info.keys,
            took: Duration::from_millis(meta.info.duration_ms),
        });
        let store = self.store.clone();
        let pruned = crate::blocking::run("apply the backup retention", move || {
            store.prune(keep).map_err(|e| e.to_string())
        })
        .await
        .and_then(|r| r);
        match pruned {
            Ok((kept, deleted)) => {
                self.kept = kept;
                for id in deleted {
                    self.emit(Event::BackupPruned { id });
                }
            }
            Err(error) => {
                tracing::warn!(instance = %self.name, %error, "Cannot apply the backup retention.");
                self.kept.insert(0, meta);
            }
        }
    }
}

/// The backups kept, after removing what interrupted ones left.
async fn list_and_clean(store: &Store) -> Result<Vec<Metadata>, String> {
    let store = store.clone();
    let listed = crate::blocking::run("list the backups", move || {
        store.clean().map_err(|e| e.to_string())?;
        store.list().map_err(|e| e.to_string())
    });
    listed.await?
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

    /// Every instance has a keeper, and most sit idle in its loop: the rare steps are
    /// boxed so that the loop stays small (3.6 KB before; 0.8 KB at this writing).
    #[test]
    fn an_idle_keeper_is_small() {
        let (_specs_tx, specs) = watch::channel(None);
        let (_targets_tx, targets) = watch::channel(None);
        let config = Arc::new(crate::spec::tests::test_config());
        let events = Arc::new(EventLog::new(10));
        let ctx = Arc::new(BackupContext::new(config, StatusBoard::default(), events));
        let keeper = run("a".into(), specs, targets, ctx);
        let size = std::mem::size_of_val(&keeper);
        assert!(size <= 1024, "a keeper's future is {size} bytes");
    }
}

//! What the agent observed: one [`InstanceStatus`] per instance, published by its
//! worker into the shared [`StatusBoard`], and the state of the desired-state inputs.
//! The local API (and later the reports) read snapshots of it.

use crate::engine::{EngineKind, ObservedRole};
mod backup;

pub use backup::{BackupActivity, BackupFailure, BackupInfo, BackupStatus, BackupView, RestoreOutcome};

use crate::monitoring::health::HealthStatus;
use crate::process::{unix_now, unix_now_millis, Exit};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Declared, not acted on yet.
    Pending,
    /// Process started or adopted, not answering PING yet (or loading its dataset).
    Starting,
    /// Running and answering PING.
    Running,
    /// Exited unexpectedly (or failed to start); restarting after a back-off delay.
    Backoff,
    /// Crashed several times in a row; still restarting, with growing delays.
    CrashLoop,
    /// A graceful stop is in progress.
    Stopping,
    /// Not running, as desired.
    Stopped,
    /// Another process holds the port; the agent waits for it to go away.
    Conflict,
    /// Could not be started (e.g. the binary or a directory is missing); retried with
    /// back-off.
    Failed,
    /// Waiting for its engine build from the artifact store (see `build`).
    Fetching,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Backoff => "backoff",
            Phase::CrashLoop => "crash-loop",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Conflict => "conflict",
            Phase::Failed => "failed",
            Phase::Fetching => "fetching",
        }
    }
}

/// What is desired of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Want {
    Running,
    Stopped,
    /// No longer declared: stop it, then forget it.
    Removed,
}

/// A declared replication role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Replica,
}

impl Role {
    pub fn of(spec: &crate::spec::InstanceSpec) -> Role {
        if spec.replica_of.is_some() {
            Role::Replica
        } else {
            Role::Master
        }
    }
}

/// How the last stop went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StopOutcome {
    /// `SHUTDOWN SAVE`, `SHUTDOWN NOSAVE`, `SIGTERM`, or `SIGKILL after timeout`.
    pub how: String,
    /// True when the process had to be killed.
    pub forced: bool,
    pub at: u64,
    pub took_ms: u64,
}

/// How the last unexpected exit went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExitOutcome {
    pub exit: Exit,
    pub at: u64,
}

/// The observed state of one instance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub engine: EngineKind,
    pub version: String,
    pub port: u16,
    pub want: Want,
    /// The declared role: `replica` with `replica_of`, else `master`.
    pub role: Option<Role>,
    pub phase: Phase,
    pub ready: bool,
    pub pid: Option<u32>,
    /// Restarts after unexpected exits, kept across agent restarts.
    pub restarts: u64,
    /// Consecutive unexpected exits without a stable run in between.
    pub consecutive_crashes: u32,
    /// Process start, seconds since the Unix epoch.
    pub started_at: Option<u64>,
    pub uptime_seconds: Option<u64>,
    pub last_exit: Option<ExitOutcome>,
    pub last_stop: Option<StopOutcome>,
    /// When the next restart attempt is due, milliseconds since the Unix epoch.
    pub next_restart_at_ms: Option<u64>,
    /// Set once the worker has brought the instance to a settled phase.
    pub reconciled: bool,
    /// How long a graceful stop may take before SIGKILL (the next stop's, or the one in
    /// progress), and where that comes from: the spec, or derived from the dataset.
    pub stop_timeout_seconds: u64,
    pub stop_timeout_reason: String,
    /// Human-readable detail: why not ready, conflict holder, last log lines…
    pub message: String,
    /// Ports of the instance that listen on all addresses although the agent's `bind`
    /// names only some (Pika's replication port), and what to do; `None` when none do.
    pub exposure: Option<String>,
    /// The monitor's last verdict while the process runs; `None` before the first
    /// probe and while it is not running.
    pub health: Option<Health>,
    /// The backup keeper's state; `None` before it first looked.
    pub backup: Option<BackupStatus>,
    /// The backups kept on this host, newest first.
    pub backups: Vec<BackupInfo>,
    /// The last restore of the instance's data, kept across agent restarts.
    pub restore: Option<RestoreOutcome>,
    /// The wait for the spec's engine build from the artifact store; `None` when the
    /// build is at hand.
    pub build: Option<BuildWait>,
}

/// An instance's wait for the engine build its spec names, from the artifact store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildWait {
    pub version: String,
    /// `checking` (looking on disk), `fetching` or `failed`.
    pub state: &'static str,
    /// Bytes of the archive downloaded so far.
    pub bytes: Option<u64>,
    /// The archive's size, as the store announced it.
    pub total_bytes: Option<u64>,
    /// 0–100, when the size is known.
    pub percent: Option<u8>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// When the next attempt is made (milliseconds since the Unix epoch).
    pub next_attempt_at_ms: Option<u64>,
}

/// What `/metrics` shows of an instance from the agent's own view, copied at each
/// scrape (it changes between samples) without the rest of its status.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub name: String,
    /// Whether the instance should run (only those count in `redis_up`).
    pub wanted: bool,
    pub phase: Phase,
    /// As in [`InstanceStatus::ready`]: not while the last probe went unanswered.
    pub ready: bool,
    pub restarts: u64,
    /// The last verdict: its status, whether the probe was answered, the PING time.
    pub health: Option<(HealthStatus, bool, Option<f64>)>,
}

/// The monitor's last verdict on a running instance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Why it is not `ok`; empty when it is.
    pub reasons: Vec<String>,
    /// Whether the last probe was answered. While it is not, the instance is not
    /// `ready` either.
    pub answering: bool,
    /// PING round trip of the last answered probe, in milliseconds (pipelined with
    /// the probe's INFO, so it includes INFO's own time).
    pub ping_ms: Option<f64>,
    /// The role the server itself reports.
    pub observed_role: Option<ObservedRole>,
    /// Replication as the server reports it.
    pub replication: Option<Replication>,
    /// When the probe ended, milliseconds since the Unix epoch.
    pub checked_at_ms: u64,
    /// When the probe was sent: only a probe sent after a change can show it (the
    /// server may answer an earlier one before the change and the answer arrive
    /// after it).
    #[serde(skip)]
    pub sent_at_ms: u64,
}

/// Replication as a server reports it: a replica's master and link, a master's
/// replicas.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Replication {
    /// A replica's master, `host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Whether a replica's link to its master is up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_up: Option<bool>,
    /// Seconds since a replica last heard from its master (its lag when the master
    /// writes; a quiet master pings every 10 s by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_last_io_seconds: Option<i64>,
    /// A replica is loading a full copy from its master.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_in_progress: Option<bool>,
    /// A master's replicas, each with its state and lag.
    pub replicas: Vec<crate::engine::ReplicaLink>,
}

impl Replication {
    pub fn of(stats: &crate::engine::ServerStats) -> Replication {
        let master = match (&stats.master_host, stats.master_port) {
            (Some(host), Some(port)) => Some(
                crate::spec::ReplicaOf {
                    host: host.clone(),
                    port,
                }
                .to_string(),
            ),
            _ => None,
        };
        Replication {
            master,
            link_up: stats.master_link_up,
            master_last_io_seconds: stats.master_last_io_seconds_ago,
            sync_in_progress: stats.master_sync_in_progress,
            replicas: stats.replicas.clone(),
        }
    }
}

impl InstanceStatus {
    /// A declared instance its worker has not acted on yet.
    pub fn pending(name: &str, spec: &crate::spec::InstanceSpec) -> InstanceStatus {
        InstanceStatus {
            name: name.to_string(),
            engine: spec.engine,
            version: spec.version.clone(),
            port: spec.port,
            want: match spec.state {
                crate::spec::RunState::Running => Want::Running,
                crate::spec::RunState::Stopped => Want::Stopped,
            },
            role: Some(Role::of(spec)),
            phase: Phase::Pending,
            ready: false,
            pid: None,
            restarts: 0,
            consecutive_crashes: 0,
            started_at: None,
            uptime_seconds: None,
            last_exit: None,
            last_stop: None,
            next_restart_at_ms: None,
            reconciled: false,
            stop_timeout_seconds: spec.stop_timeout.map_or(0, |t| t.as_secs()),
            stop_timeout_reason: String::new(),
            message: String::new(),
            exposure: None,
            health: None,
            backup: None,
            backups: Vec::new(),
            restore: None,
            build: None,
        }
    }

    /// The status without the readings that change at every probe or sample (uptime,
    /// PING time, the probe's time, replication lags and offsets, the used memory
    /// quoted in the stop timeout's reason; the timeout itself counts): what a change
    /// report compares.
    pub fn without_readings(&self) -> InstanceStatus {
        let mut status = self.clone();
        status.uptime_seconds = None;
        if let Some(backup) = status.backup.as_mut() {
            backup.progress_bytes = None;
        }
        status.stop_timeout_reason.clear();
        if let Some(build) = status.build.as_mut() {
            // A report goes at every tenth of a download, not at every chunk.
            build.bytes = None;
            build.percent = build.percent.map(|p| p / 10 * 10);
        }
        if let Some(health) = status.health.as_mut() {
            health.ping_ms = None;
            health.checked_at_ms = 0;
            health.sent_at_ms = 0;
            if let Some(replication) = health.replication.as_mut() {
                replication.master_last_io_seconds = None;
                for replica in &mut replication.replicas {
                    replica.offset = 0;
                    replica.lag_seconds = None;
                }
            }
        }
        status
    }

    /// Fills the fields computed from the current time, the monitor's verdict and the
    /// backup keeper's state.
    fn with_live(mut self, now_s: u64, health: Option<&Health>, backups: Option<&Backups>) -> InstanceStatus {
        self.uptime_seconds = self.started_at.map(|s| now_s.saturating_sub(s));
        self.health = health.cloned();
        if let Some(backups) = backups {
            self.backup = Some(backups.status.clone());
            self.backups = backups.kept.clone();
        }
        if health.is_some_and(|h| !h.answering) {
            self.ready = false;
        }
        self
    }
}

/// The last desired state that was rejected, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejection {
    /// `manifests`, `local` or `controller`.
    pub source: String,
    /// The generation of a rejected document, when it had one.
    pub generation: Option<u64>,
    pub at: u64,
    /// Every problem as `file: field: what is wrong`, or the reason.
    pub problems: Vec<String>,
}

/// Bookkeeping of the desired state, for `/v1/status` and `/readyz`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DesiredInfo {
    /// Counts the accepted changes; `None` until a desired state is accepted.
    pub revision: Option<u64>,
    /// Generation of the accepted document (controller or local API), if any.
    pub generation: Option<u64>,
    /// Where the last accepted change came from.
    pub source: Option<String>,
    pub accepted_at: Option<u64>,
    pub last_rejection: Option<Rejection>,
}

/// How the conversation with the controller goes, for `/v1/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ControllerInfo {
    pub url: String,
    /// When a desired-state poll last ended well (milliseconds since the epoch).
    pub last_poll_ok_ms: Option<u64>,
    /// When a report was last accepted.
    pub last_report_ok_ms: Option<u64>,
    /// The last failure, while calls fail; `None` once they work again.
    pub poll_error: Option<String>,
    pub report_error: Option<String>,
}

/// The last reload of the secret files (SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretFilesInfo {
    /// Seconds since the Unix epoch.
    pub reloaded_at: u64,
    /// The files refused (the previous ones stay in use), each with why.
    pub problems: Vec<String>,
}

/// Shared, lock-protected status of every instance. Locks are held only to copy.
#[derive(Clone, Default)]
pub struct StatusBoard {
    instances: Arc<Mutex<Instances>>,
    /// Kept apart from `instances`: workers publish whole statuses, monitors verdicts.
    health: Arc<Mutex<BTreeMap<String, Health>>>,
    /// Kept apart too: backup keepers publish these.
    backups: Arc<Mutex<BTreeMap<String, Backups>>>,
    desired: Arc<Mutex<DesiredInfo>>,
    controller: Arc<Mutex<Option<ControllerInfo>>>,
    secret_files: Arc<Mutex<Option<SecretFilesInfo>>>,
    /// Woken when an instance's phase, readiness, role or health changes (reports go out
    /// at once).
    changes: Arc<tokio::sync::Notify>,
    /// Whether the node is ready (see [`StatusBoard::ready`]), for those who wait for it.
    ready: Arc<watch::Sender<bool>>,
}

/// What a backup keeper publishes.
#[derive(Debug, Clone)]
struct Backups {
    status: BackupStatus,
    kept: Vec<BackupInfo>,
}

/// Every instance's status, with how many are not reconciled yet: kept as statuses
/// change, so that readiness does not walk a thousand of them at every question.
#[derive(Default)]
struct Instances {
    map: BTreeMap<String, InstanceStatus>,
    unreconciled: usize,
}

impl Instances {
    fn insert(&mut self, status: InstanceStatus) -> Option<InstanceStatus> {
        self.unreconciled += usize::from(!status.reconciled);
        let old = self.map.insert(status.name.clone(), status);
        self.unreconciled -= usize::from(old.as_ref().is_some_and(|o| !o.reconciled));
        old
    }

    fn remove(&mut self, name: &str) -> Option<InstanceStatus> {
        let old = self.map.remove(name);
        self.unreconciled -= usize::from(old.as_ref().is_some_and(|o| !o.reconciled));
        old
    }
}

impl StatusBoard {
    pub fn publish(&self, status: InstanceStatus) {
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        let changed = instances.map.get(&status.name).is_none_or(|old| {
            old.phase != status.phase || old.ready != status.ready || old.pid != status.pid || old.role != status.role
        });
        instances.insert(status);
        self.refresh_ready(&instances);
        drop(instances);
        if changed {
            self.changes.notify_one();
        }
    }

    pub fn remove(&self, name: &str) {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.backups.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        let removed = instances.remove(name).is_some();
        self.refresh_ready(&instances);
        drop(instances);
        if removed {
            self.changes.notify_one();
        }
    }

    /// Recomputes readiness; called with the instances locked, so that two changes
    /// cannot publish their verdicts out of order.
    fn refresh_ready(&self, instances: &Instances) {
        let accepted = self
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .revision
            .is_some();
        let ready = accepted && instances.unreconciled == 0;
        self.ready
            .send_if_modified(|old| std::mem::replace(old, ready) != ready);
    }

    /// Waits until the node is ready, at most `within`.
    pub async fn wait_ready(&self, within: Duration) {
        let mut ready = self.ready.subscribe();
        let _ = tokio::time::timeout(within, ready.wait_for(|ready| *ready)).await;
    }

    /// Records the monitor's verdict on `name` (`None`: not probed, e.g. stopped).
    /// A change of status, answering, observed role, master or link wakes the reporter.
    pub fn set_health(&self, name: &str, health: Option<Health>) {
        let mut map = self.health.lock().unwrap_or_else(|p| p.into_inner());
        // Compared in place, then moved in: this runs for every instance every second.
        let changed = match (map.get_mut(name), health) {
            (Some(slot), Some(new)) => {
                let changed = slot.status != new.status
                    || slot.answering != new.answering
                    || slot.observed_role != new.observed_role
                    || slot.replication.as_ref().map(|r| (&r.master, r.link_up))
                        != new.replication.as_ref().map(|r| (&r.master, r.link_up));
                *slot = new;
                changed
            }
            (None, Some(new)) => {
                map.insert(name.to_string(), new);
                true
            }
            (Some(_), None) => {
                map.remove(name);
                true
            }
            (None, None) => false,
        };
        drop(map);
        if changed {
            self.changes.notify_one();
        }
    }

    /// Every instance's [`AgentView`], sorted by name: a scrape's copy, a few fields
    /// each rather than whole statuses.
    pub fn agent_views(&self) -> Vec<AgentView> {
        let mut views: Vec<AgentView> = {
            let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
            instances
                .map
                .values()
                .map(|s| AgentView {
                    name: s.name.clone(),
                    wanted: s.want == Want::Running,
                    phase: s.phase,
                    ready: s.ready,
                    restarts: s.restarts,
                    health: None,
                })
                .collect()
        };
        // Both maps are sorted by name: one walk through each, no look-ups.
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let mut verdicts = health.iter().peekable();
        for view in &mut views {
            while verdicts
                .next_if(|(name, _)| name.as_str() < view.name.as_str())
                .is_some()
            {}
            if let Some((_, h)) = verdicts.next_if(|(name, _)| **name == view.name) {
                view.health = Some((h.status, h.answering, h.ping_ms));
                view.ready &= h.answering;
            }
        }
        views
    }

    /// Records what `name`'s backup keeper is doing and which backups it keeps. A new
    /// kept list or a failure wakes the reporter.
    pub fn set_backups(&self, name: &str, status: BackupStatus, kept: Vec<BackupInfo>) {
        let mut map = self.backups.lock().unwrap_or_else(|p| p.into_inner());
        let changed = map
            .get(name)
            .is_none_or(|old| old.kept != kept || old.status.last_failure != status.last_failure);
        map.insert(name.to_string(), Backups { status, kept });
        drop(map);
        if changed {
            self.changes.notify_one();
        }
    }

    /// The backups `name` keeps, newest first (`None`: no such instance's keeper).
    pub fn backups(&self, name: &str) -> Option<Vec<BackupInfo>> {
        let map = self.backups.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).map(|b| b.kept.clone())
    }

    /// Every keeper's state, by name, for `/metrics`.
    pub fn backup_views(&self) -> Vec<BackupView> {
        let map = self.backups.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(name, b)| BackupView {
                name: name.clone(),
                busy: !matches!(b.status.activity, BackupActivity::Idle | BackupActivity::Pending),
                failures: b.status.failures,
                newest: b.kept.first().cloned(),
            })
            .collect()
    }

    /// The monitor's last verdict on `name`.
    pub fn health(&self, name: &str) -> Option<Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Notified when an instance's phase, readiness, pid or declared role changes, its
    /// health verdict, answering, observed role or replication link changes, or it goes
    /// away.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changes.clone()
    }

    /// Starts tracking the controller at `url`.
    pub fn controller_configured(&self, url: &str) {
        *self.controller.lock().unwrap_or_else(|p| p.into_inner()) = Some(ControllerInfo {
            url: url.to_string(),
            ..ControllerInfo::default()
        });
    }

    /// A desired-state poll ended; `error` when it failed.
    pub fn controller_polled(&self, error: Option<String>) {
        if let Some(info) = self.controller.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            if error.is_none() {
                info.last_poll_ok_ms = Some(unix_now_millis());
            }
            info.poll_error = error;
        }
    }

    /// A report was sent; `error` when it was not accepted.
    pub fn controller_reported(&self, error: Option<String>) {
        if let Some(info) = self.controller.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            if error.is_none() {
                info.last_report_ok_ms = Some(unix_now_millis());
            }
            info.report_error = error;
        }
    }

    /// SIGHUP read the secret files again; `problems` are the ones refused.
    pub fn secret_files_reloaded(&self, problems: Vec<String>) {
        *self.secret_files.lock().unwrap_or_else(|p| p.into_inner()) = Some(SecretFilesInfo {
            reloaded_at: unix_now(),
            problems,
        });
    }

    pub fn secret_files(&self) -> Option<SecretFilesInfo> {
        self.secret_files.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn controller(&self) -> Option<ControllerInfo> {
        self.controller.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every instance, sorted by name.
    pub fn snapshot(&self) -> Vec<InstanceStatus> {
        let now = unix_now();
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let backups = self.backups.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances
            .map
            .values()
            .cloned()
            .map(|s| {
                let (h, b) = (health.get(&s.name), backups.get(&s.name));
                s.with_live(now, h, b)
            })
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<InstanceStatus> {
        let now = unix_now();
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        let backups = self
            .backups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances
            .map
            .get(name)
            .cloned()
            .map(|s| s.with_live(now, health.as_ref(), backups.as_ref()))
    }

    pub fn desired(&self) -> DesiredInfo {
        self.desired.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn accepted(&self, revision: u64, generation: Option<u64>, source: &str) {
        let mut d = self.desired.lock().unwrap_or_else(|p| p.into_inner());
        d.revision = Some(revision);
        d.generation = generation;
        d.source = Some(source.to_string());
        d.accepted_at = Some(unix_now());
        drop(d);
        // Lock order: instances, then desired (as in `publish`).
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh_ready(&instances);
    }

    /// The inputs are valid again: forget the last rejection.
    pub fn clear_rejection(&self) {
        self.desired.lock().unwrap_or_else(|p| p.into_inner()).last_rejection = None;
    }

    /// Notes a rejection; false when it is the one already noted (the same inputs
    /// offered again), whose `at` stays the first time.
    pub fn rejected(&self, source: &str, generation: Option<u64>, problems: Vec<String>) -> bool {
        let mut d = self.desired.lock().unwrap_or_else(|p| p.into_inner());
        let again = d
            .last_rejection
            .as_ref()
            .is_some_and(|r| r.source == source && r.generation == generation && r.problems == problems);
        if again {
            return false;
        }
        d.last_rejection = Some(Rejection {
            source: source.to_string(),
            generation,
            at: unix_now(),
            problems,
        });
        true
    }

    /// Ready when a desired state was accepted and every instance has been reconciled
    /// once.
    pub fn ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Milliseconds until `at_ms`, for display.
    pub fn millis_until(at_ms: u64) -> u64 {
        at_ms.saturating_sub(unix_now_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::InstanceSpec;

    fn status(name: &str, reconciled: bool) -> InstanceStatus {
        let mut status = InstanceStatus::pending(name, &InstanceSpec::example(name, 7000));
        status.reconciled = reconciled;
        status
    }

    #[test]
    fn ready_counts_the_instances_not_reconciled_as_they_change() {
        let board = StatusBoard::default();
        board.publish(status("a", false));
        board.publish(status("b", true));
        assert!(!board.ready(), "no desired state accepted yet");
        board.accepted(1, None, "manifests");
        assert!(!board.ready(), "a is not reconciled");
        // Published again unreconciled: still counted once.
        board.publish(status("a", false));
        board.publish(status("a", true));
        assert!(board.ready());
        board.publish(status("c", false));
        assert!(!board.ready());
        board.remove("c");
        assert!(board.ready(), "a removed instance no longer counts");
    }

    #[tokio::test]
    async fn waiting_for_readiness_ends_when_ready_or_after_the_bound() {
        let board = StatusBoard::default();
        board.publish(status("a", false));
        board.accepted(1, None, "manifests");
        let began = std::time::Instant::now();
        board.wait_ready(Duration::from_millis(50)).await;
        assert!(
            began.elapsed() >= Duration::from_millis(50),
            "not ready: waits the bound"
        );
        let waiter = {
            let board = board.clone();
            tokio::spawn(async move { board.wait_ready(Duration::from_secs(30)).await })
        };
        board.publish(status("a", true));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the wait ends once the node is ready")
            .expect("the waiter does not panic");
    }
}

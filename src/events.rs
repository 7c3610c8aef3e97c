//! One type per thing that happens to an instance or to the desired state. Emitting
//! an event logs it as key/value fields and keeps it in a bounded in-memory history
//! (newest last; the oldest are dropped), which the local API shows per instance.

use crate::process::{unix_now_millis, Exit};
use crate::units::format_duration_short;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tracing::{error, info, warn};

/// Something that happened.
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        pid: u32,
        after_crash: bool,
    },
    Ready {
        pid: u32,
        after: Duration,
    },
    Loading {
        pid: u32,
    },
    Adopted {
        pid: u32,
        running_for: Duration,
    },
    RecordStale {
        reason: String,
    },
    RecordUnreadable {
        error: String,
    },
    RecordUnverifiable {
        reason: String,
    },
    Exited {
        pid: u32,
        exit: Exit,
        ran_for: Duration,
    },
    RestartScheduled {
        delay: Duration,
        consecutive: u32,
    },
    StartFailed {
        error: String,
    },
    Conflict {
        holder: String,
    },
    ConflictCleared,
    Stopping {
        pid: u32,
        reason: String,
    },
    StopRequested {
        pid: u32,
        method: String,
    },
    StopRefused {
        command: String,
        error: String,
    },
    Stopped {
        pid: u32,
        how: String,
        took: Duration,
    },
    /// The stop timeout passed while the server kept refusing to save: it keeps
    /// running with its unsaved writes (`on_save_failure = "keep-running"`).
    StopBlocked {
        pid: u32,
        error: String,
    },
    /// A blocked stop was called off: the instance is wanted running as it is.
    StopCancelled {
        pid: u32,
    },
    KilledAfterTimeout {
        pid: u32,
        timeout: Duration,
    },
    ConfigWriteFailed {
        error: String,
    },
    DesiredAccepted {
        revision: u64,
        generation: Option<u64>,
        instances: usize,
    },
    DesiredRejected {
        problems: usize,
        first: String,
    },
    /// SIGHUP read a secret file again and refused the new content; the old one stays
    /// in use.
    SecretFileRefused {
        error: String,
    },
    /// SIGHUP read the secret files again and uses them.
    SecretFilesReloaded {
        /// Which: `[api] token_file`, `[controller] files`.
        what: String,
    },
    HealthChanged {
        from: Option<crate::monitoring::health::HealthStatus>,
        to: crate::monitoring::health::HealthStatus,
        reasons: String,
    },
    /// Spec changes applied to the running process without a restart; each entry
    /// names a key and its new value (never a password).
    Reconfigured {
        changes: Vec<String>,
    },
    /// The server refused a live change, so the change needs a restart.
    ConfigRefused {
        key: String,
        reason: String,
    },
    /// The server accepted a change but reads back another value.
    ConfigUnverified {
        key: String,
        wanted: String,
        got: String,
    },
    /// Live changes could not be applied (the server did not answer); retried.
    ReconfigureFailed {
        error: String,
    },
    /// A value the spec sets was changed behind the agent's back and is set back.
    DriftCorrected {
        key: String,
        was: String,
        now: String,
    },
    /// A drifted value that could not be set back.
    DriftUncorrected {
        key: String,
        error: String,
    },
    /// A new password is in force; the previous one keeps working for `grace`.
    PasswordChanged {
        grace: Duration,
    },
    /// The grace period ended: only the current password works.
    PasswordGraceEnded,
    /// A backup began (`why`: the epoch asked for, or the schedule).
    BackupStarted {
        why: String,
    },
    /// A backup is complete, verified and kept.
    BackupSucceeded {
        id: String,
        bytes: u64,
        keys: Option<u64>,
        took: Duration,
    },
    /// A backup failed; nothing of it is kept. It is tried again after `retry_in`.
    BackupFailed {
        error: String,
        retry_in: Duration,
    },
    /// An older backup was deleted to keep the newest ones.
    BackupPruned {
        id: String,
    },
    /// An instance's data was placed from a backup before its start.
    Restored {
        source: String,
        /// Where the data that was there went (a restore asked for by `restore_epoch`).
        set_aside: Option<String>,
    },
    /// A restore failed; nothing was started from it.
    RestoreFailed {
        source: String,
        error: String,
    },
    /// The spec names an engine version whose build is not at hand: the instance waits
    /// for it from the artifact store (a running process keeps running meanwhile).
    BuildAwaited {
        version: String,
    },
    /// The awaited build is in place and verified.
    BuildReady {
        version: String,
        executable: String,
    },
    /// The awaited build could not be had; it is tried again after `retry_in`.
    BuildUnavailable {
        version: String,
        error: String,
        retry_in: Duration,
    },
    /// The process crashed while the build of `awaited` is not at hand: it restarts on
    /// `version`, the build it ran.
    BuildFallback {
        version: String,
        awaited: String,
    },
}

impl Event {
    /// A stable, short name of the event kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Started { .. } => "started",
            Event::Ready { .. } => "ready",
            Event::Loading { .. } => "loading",
            Event::Adopted { .. } => "adopted",
            Event::RecordStale { .. } => "record-stale",
            Event::RecordUnreadable { .. } => "record-unreadable",
            Event::RecordUnverifiable { .. } => "record-unverifiable",
            Event::Exited { .. } => "exited",
            Event::RestartScheduled { .. } => "restart-scheduled",
            Event::StartFailed { .. } => "start-failed",
            Event::Conflict { .. } => "conflict",
            Event::ConflictCleared => "conflict-cleared",
            Event::Stopping { .. } => "stopping",
            Event::StopRequested { .. } => "stop-requested",
            Event::StopRefused { .. } => "stop-refused",
            Event::Stopped { .. } => "stopped",
            Event::StopBlocked { .. } => "stop-blocked",
            Event::StopCancelled { .. } => "stop-cancelled",
            Event::KilledAfterTimeout { .. } => "killed-after-timeout",
            Event::ConfigWriteFailed { .. } => "config-write-failed",
            Event::DesiredAccepted { .. } => "desired-accepted",
            Event::DesiredRejected { .. } => "desired-rejected",
            Event::SecretFileRefused { .. } => "secret-file-refused",
            Event::SecretFilesReloaded { .. } => "secret-files-reloaded",
            Event::HealthChanged { .. } => "health-changed",
            Event::Reconfigured { .. } => "reconfigured",
            Event::ConfigRefused { .. } => "config-refused",
            Event::ConfigUnverified { .. } => "config-unverified",
            Event::ReconfigureFailed { .. } => "reconfigure-failed",
            Event::DriftCorrected { .. } => "drift-corrected",
            Event::DriftUncorrected { .. } => "drift-uncorrected",
            Event::PasswordChanged { .. } => "password-changed",
            Event::PasswordGraceEnded => "password-grace-ended",
            Event::BackupStarted { .. } => "backup-started",
            Event::BackupSucceeded { .. } => "backup-succeeded",
            Event::BackupFailed { .. } => "backup-failed",
            Event::BackupPruned { .. } => "backup-pruned",
            Event::Restored { .. } => "restored",
            Event::RestoreFailed { .. } => "restore-failed",
            Event::BuildAwaited { .. } => "build-awaited",
            Event::BuildFallback { .. } => "build-fallback",
            Event::BuildReady { .. } => "build-ready",
            Event::BuildUnavailable { .. } => "build-unavailable",
        }
    }

    /// A one-line description for the API.
    pub fn describe(&self) -> String {
        match self {
            Event::Started { pid, after_crash } => {
                format!(
                    "started as pid {pid}{}",
                    if *after_crash { " (restart after a crash)" } else { "" }
                )
            }
            Event::Ready { pid, after } => format!("pid {pid} answers PING after {}", format_duration_short(*after)),
            Event::Loading { pid } => format!("pid {pid} is loading its dataset"),
            Event::Adopted { pid, running_for } => {
                format!("adopted running pid {pid} (up {})", format_duration_short(*running_for))
            }
            Event::RecordStale { reason } => format!("record does not match a live process: {reason}"),
            Event::RecordUnreadable { error } => format!("record unreadable: {error}"),
            Event::RecordUnverifiable { reason } => {
                format!("record names a live process that cannot be verified: {reason}")
            }
            Event::Exited { pid, exit, ran_for } => {
                format!(
                    "pid {pid} exited unexpectedly ({exit}) after {}",
                    format_duration_short(*ran_for)
                )
            }
            Event::RestartScheduled { delay, consecutive } => {
                format!(
                    "restarting in {} (crash {consecutive} in a row)",
                    format_duration_short(*delay)
                )
            }
            Event::StartFailed { error } => format!("start failed: {error}"),
            Event::Conflict { holder } => format!("conflict: {holder}; it is not ours and is left alone"),
            Event::ConflictCleared => "conflict cleared: the port is free".into(),
            Event::Stopping { pid, reason } => format!("stopping pid {pid} ({reason})"),
            Event::StopRequested { pid, method } => format!("asked pid {pid} to stop with {method}"),
            Event::StopRefused { command, error } => format!("{command} refused: {error}"),
            Event::StopBlocked { pid, error } => format!(
                "stop of pid {pid} blocked: {error}; it keeps running with its unsaved writes until a save works"
            ),
            Event::StopCancelled { pid } => format!("blocked stop of pid {pid} called off: it is wanted running"),
            Event::Stopped { pid, how, took } => {
                format!("pid {pid} stopped by {how} in {}", format_duration_short(*took))
            }
            Event::KilledAfterTimeout { pid, timeout } => {
                format!(
                    "pid {pid} still running {} after the stop request: SIGKILL",
                    format_duration_short(*timeout)
                )
            }
            Event::ConfigWriteFailed { error } => format!("cannot write the config: {error}"),
            Event::DesiredAccepted {
                revision,
                generation,
                instances,
            } => match generation {
                Some(g) => {
                    format!("desired state revision {revision} (generation {g}) accepted ({instances} instances)")
                }
                None => format!("desired state revision {revision} accepted ({instances} instances)"),
            },
            Event::DesiredRejected { problems, first } => {
                format!("desired state rejected ({problems} problems; first: {first})")
            }
            Event::SecretFileRefused { error } => format!("{error}; the previous one stays in use"),
            Event::SecretFilesReloaded { what } => format!("read again and in use: {what}"),
            Event::HealthChanged { from, to, reasons } => {
                let from = from.map_or("unknown", |f| f.as_str());
                match reasons.is_empty() {
                    true => format!("health {from} → {}", to.as_str()),
                    false => format!("health {from} → {}: {reasons}", to.as_str()),
                }
            }
            Event::Reconfigured { changes } => format!("reconfigured without a restart: {}", changes.join("; ")),
            Event::ConfigRefused { key, reason } => {
                format!("CONFIG SET {key} refused ({reason}): the change needs a restart")
            }
            Event::ConfigUnverified { key, wanted, got } => {
                format!("{key} set to {wanted:?} but CONFIG GET reads {got:?}")
            }
            Event::ReconfigureFailed { error } => format!("live changes not applied: {error}; retrying"),
            Event::DriftCorrected { key, was, now } => format!("drift corrected: {key}, was {was}, now {now}"),
            Event::DriftUncorrected { key, error } => format!("drift not corrected: {key}: {error}"),
            Event::PasswordChanged { grace } => format!(
                "password changed; the previous one keeps working for {}",
                format_duration_short(*grace)
            ),
            Event::PasswordGraceEnded => "password grace period ended: only the current password works".into(),
            Event::BackupStarted { why } => format!("backup started ({why})"),
            Event::BackupSucceeded { id, bytes, keys, took } => format!(
                "backup {id} kept: {bytes} bytes, {} keys, in {}",
                keys.map_or("unknown".to_string(), |k| k.to_string()),
                format_duration_short(*took)
            ),
            Event::BackupFailed { error, retry_in } => {
                format!(
                    "backup failed: {error}; trying again in {}",
                    format_duration_short(*retry_in)
                )
            }
            Event::BackupPruned { id } => format!("backup {id} deleted (older than the ones kept)"),
            Event::Restored { source, set_aside } => match set_aside {
                Some(aside) => format!("data restored from {source}; the data that was there is kept in {aside}"),
                None => format!("data restored from {source} into an empty data directory"),
            },
            Event::RestoreFailed { source, error } => format!("restore from {source} failed: {error}"),
            Event::BuildAwaited { version } => {
                format!("waiting for the build of version {version:?} from the artifact store")
            }
            Event::BuildReady { version, executable } => format!("build of version {version:?} ready: {executable}"),
            Event::BuildUnavailable {
                version,
                error,
                retry_in,
            } => format!(
                "build of version {version:?} not available: {error}; trying again in {}",
                format_duration_short(*retry_in)
            ),
            Event::BuildFallback { version, awaited } => format!(
                "restarting on version {version:?}, the build it ran, until the build of version {awaited:?} is ready"
            ),
        }
    }

    /// Logs the event as key/value fields; text values are quoted (recorded as `&str`)
    /// so that a log parser can split them.
    fn log(&self, instance: &str) {
        match self {
            Event::Started { pid, after_crash } => info!(instance, pid, after_crash, "Instance started."),
            Event::Ready { pid, after } => info!(instance, pid, after_ms = after.as_millis() as u64, "Instance ready."),
            Event::Loading { pid } => info!(instance, pid, "Instance loading its dataset."),
            Event::Adopted { pid, running_for } => {
                info!(
                    instance,
                    pid,
                    running_for_s = running_for.as_secs(),
                    "Instance adopted."
                )
            }
            Event::RecordStale { reason } => {
                warn!(
                    instance,
                    reason = reason.as_str(),
                    "Instance record stale; the process is gone."
                )
            }
            Event::RecordUnreadable { error } => {
                error!(
                    instance,
                    error = error.as_str(),
                    "Instance record unreadable; set aside."
                )
            }
            Event::RecordUnverifiable { reason } => error!(
                instance,
                reason = reason.as_str(),
                "Instance record names a process that cannot be verified; leaving it alone."
            ),
            Event::Exited { pid, exit, ran_for } => warn!(
                instance,
                pid,
                exit = exit.to_string().as_str(),
                ran_for_s = ran_for.as_secs(),
                "Instance exited."
            ),
            Event::RestartScheduled { delay, consecutive } => {
                info!(
                    instance,
                    delay_ms = delay.as_millis() as u64,
                    consecutive,
                    "Instance restarting."
                )
            }
            Event::StartFailed { error } => error!(instance, error = error.as_str(), "Instance failed to start."),
            Event::Conflict { holder } => warn!(
                instance,
                holder = holder.as_str(),
                "Instance port conflict; not signalling a foreign process."
            ),
            Event::ConflictCleared => info!(instance, "Instance port conflict cleared."),
            Event::Stopping { pid, reason } => info!(instance, pid, reason = reason.as_str(), "Instance stopping."),
            Event::StopRequested { pid, method } => {
                info!(instance, pid, method = method.as_str(), "Instance asked to stop.")
            }
            Event::StopRefused { command, error } => warn!(
                instance,
                command = command.as_str(),
                error = error.as_str(),
                "Instance refused to stop."
            ),
            Event::Stopped { pid, how, took } => info!(
                instance,
                pid,
                how = how.as_str(),
                took_ms = took.as_millis() as u64,
                "Instance stopped."
            ),
            Event::StopBlocked { pid, error } => error!(
                instance,
                pid,
                error = error.as_str(),
                "Instance stop blocked: it cannot save and keeps running with its unsaved writes."
            ),
            Event::StopCancelled { pid } => info!(instance, pid, "Blocked stop called off; the instance runs on."),
            Event::KilledAfterTimeout { pid, timeout } => {
                warn!(
                    instance,
                    pid,
                    timeout_s = timeout.as_secs(),
                    "Instance killed after stop timeout."
                )
            }
            Event::ConfigWriteFailed { error } => {
                error!(instance, error = error.as_str(), "Instance config not written.")
            }
            Event::DesiredAccepted {
                revision,
                generation,
                instances,
            } => info!(revision, generation, instances, "Desired state accepted."),
            Event::DesiredRejected { problems, first } => {
                error!(
                    problems,
                    first = first.as_str(),
                    "Desired state rejected; nothing changed."
                )
            }
            Event::SecretFileRefused { error } => error!(
                error = error.as_str(),
                "A secret file was refused on reload; the previous one stays in use."
            ),
            Event::SecretFilesReloaded { what } => info!(what = what.as_str(), "Secret files read again and in use."),
            Event::HealthChanged { from, to, reasons } => {
                let from = from.map_or("unknown", |f| f.as_str());
                match to {
                    crate::monitoring::health::HealthStatus::Ok => {
                        info!(instance, from, to = to.as_str(), "Instance health changed.")
                    }
                    _ => warn!(
                        instance,
                        from,
                        to = to.as_str(),
                        reasons = reasons.as_str(),
                        "Instance health changed."
                    ),
                }
            }
            Event::Reconfigured { changes } => {
                info!(
                    instance,
                    changes = changes.join("; ").as_str(),
                    "Instance reconfigured live."
                )
            }
            Event::ConfigRefused { key, reason } => warn!(
                instance,
                key = key.as_str(),
                reason = reason.as_str(),
                "Instance refused a live change; restarting it for the change."
            ),
            Event::ConfigUnverified { key, wanted, got } => warn!(
                instance,
                key = key.as_str(),
                wanted = wanted.as_str(),
                got = got.as_str(),
                "Instance reads back another value than was set."
            ),
            Event::ReconfigureFailed { error } => {
                warn!(
                    instance,
                    error = error.as_str(),
                    "Instance live changes not applied; retrying."
                )
            }
            Event::DriftCorrected { key, was, now } => warn!(
                instance,
                key = key.as_str(),
                was = was.as_str(),
                now = now.as_str(),
                "Instance config drift corrected."
            ),
            Event::DriftUncorrected { key, error } => warn!(
                instance,
                key = key.as_str(),
                error = error.as_str(),
                "Instance config drift not corrected."
            ),
            Event::PasswordChanged { grace } => {
                info!(instance, grace_s = grace.as_secs(), "Instance password changed.")
            }
            Event::PasswordGraceEnded => info!(instance, "Instance password grace period ended."),
            Event::BackupStarted { why } => info!(instance, why = why.as_str(), "Backup started."),
            Event::BackupSucceeded { id, bytes, keys, took } => info!(
                instance,
                id = id.as_str(),
                bytes,
                keys,
                took_ms = took.as_millis() as u64,
                "Backup kept."
            ),
            Event::BackupFailed { error, retry_in } => error!(
                instance,
                error = error.as_str(),
                retry_in_s = retry_in.as_secs(),
                "Backup failed."
            ),
            Event::BackupPruned { id } => info!(instance, id = id.as_str(), "Backup deleted (retention)."),
            Event::Restored { source, set_aside } => info!(
                instance,
                source = source.as_str(),
                set_aside = set_aside.as_deref(),
                "Instance data restored."
            ),
            Event::RestoreFailed { source, error } => error!(
                instance,
                source = source.as_str(),
                error = error.as_str(),
                "Restore failed; the instance starts on its own data if it has any."
            ),
            Event::BuildAwaited { version } => info!(
                instance,
                version = version.as_str(),
                "Waiting for the engine build from the artifact store."
            ),
            Event::BuildReady { version, executable } => info!(
                instance,
                version = version.as_str(),
                executable = executable.as_str(),
                "Engine build ready."
            ),
            Event::BuildUnavailable {
                version,
                error,
                retry_in,
            } => error!(
                instance,
                version = version.as_str(),
                error = error.as_str(),
                retry_in_ms = retry_in.as_millis() as u64,
                "Engine build not available; the instance keeps what it runs."
            ),
            Event::BuildFallback { version, awaited } => warn!(
                instance,
                version = version.as_str(),
                awaited = awaited.as_str(),
                "Instance restarts on the build it ran; the declared version's build is not at hand."
            ),
        }
    }
}

/// An event as kept in the history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventEntry {
    /// Increases by one per event since the agent started.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The instance, or empty for node-wide events.
    pub instance: String,
    pub kind: &'static str,
    pub message: String,
}

/// The bounded event history.
pub struct EventLog {
    inner: Mutex<History>,
    /// How many events are kept: at least `base`, more for many instances (`fit`).
    capacity: std::sync::atomic::AtomicUsize,
    base: usize,
}

/// Events kept per declared instance: an agent's start alone leaves two or three for
/// each (adopted or started, ready, a first health verdict), and a controller that is
/// away must still get them when it is back.
pub const KEPT_PER_INSTANCE: usize = 4;

struct History {
    entries: VecDeque<EventEntry>,
    next_seq: u64,
    /// The last sequence number a report delivered.
    acked: u64,
    /// Events dropped from the full history before a report delivered them.
    dropped_unreported: u64,
}

impl EventLog {
    pub fn new(capacity: usize) -> EventLog {
        EventLog {
            inner: Mutex::new(History {
                entries: VecDeque::with_capacity(capacity.min(1024)),
                next_seq: 1,
                acked: 0,
                dropped_unreported: 0,
            }),
            capacity: capacity.into(),
            base: capacity,
        }
    }

    /// Keeps room for the events of `instances` declared instances, never less than
    /// the capacity the log was made with.
    pub fn fit(&self, instances: usize) {
        let capacity = self.base.max(instances.saturating_mul(KEPT_PER_INSTANCE));
        self.capacity.store(capacity, std::sync::atomic::Ordering::Relaxed);
    }

    /// Logs `event` and keeps it.
    pub fn emit(&self, instance: &str, event: Event) {
        event.log(instance);
        // Thousands are kept: without the room `format!` leaves for growth.
        let mut message = event.describe();
        message.shrink_to_fit();
        let mut history = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = EventEntry {
            seq: history.next_seq,
            at_ms: unix_now_millis(),
            instance: instance.to_string(),
            kind: event.kind(),
            message,
        };
        history.next_seq += 1;
        let capacity = self.capacity.load(std::sync::atomic::Ordering::Relaxed).max(1);
        while history.entries.len() >= capacity {
            let Some(dropped) = history.entries.pop_front() else {
                break;
            };
            if dropped.seq > history.acked {
                history.dropped_unreported += 1;
            }
        }
        history.entries.push_back(entry);
    }

    /// The events no accepted report has carried yet, oldest first, at most `limit`;
    /// and how many such events were dropped because the history was full.
    pub fn unreported(&self, limit: usize) -> (Vec<EventEntry>, u64) {
        let history = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let events = history
            .entries
            .iter()
            .filter(|e| e.seq > history.acked)
            .take(limit)
            .cloned()
            .collect();
        (events, history.dropped_unreported)
    }

    /// A report carrying the events up to `seq` was accepted.
    pub fn ack(&self, seq: u64) {
        let mut history = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        history.acked = history.acked.max(seq);
    }

    /// Kept events of `instance`, or of every instance and the node, oldest first, at
    /// most `limit`: from the start (`after` 0), the newest; after the event `after`,
    /// the next ones, so that a reader paging on misses none.
    pub fn query(&self, instance: Option<&str>, after: u64, limit: usize) -> Vec<EventEntry> {
        let history = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = |e: &&EventEntry| instance.is_none_or(|name| e.instance == name);
        if after == 0 {
            let mut out: Vec<EventEntry> = history
                .entries
                .iter()
                .rev()
                .filter(wanted)
                .take(limit)
                .cloned()
                .collect();
            out.reverse();
            return out;
        }
        history
            .entries
            .iter()
            .skip_while(|e| e.seq <= after)
            .filter(wanted)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_gives_the_newest_or_the_next_after_a_point_oldest_first() {
        let log = EventLog::new(10);
        for pid in 0..6 {
            let name = if pid % 2 == 0 { "a" } else { "b" };
            log.emit(
                name,
                Event::Started {
                    pid,
                    after_crash: false,
                },
            );
        }
        let seqs = |events: Vec<EventEntry>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let all = seqs(log.query(None, 0, 100));
        assert_eq!(all.len(), 6);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(seqs(log.query(None, 0, 2)), all[4..]);
        assert_eq!(seqs(log.query(None, all[3], 100)), all[4..]);
        // After a point, the next ones: a reader paging on misses none.
        assert_eq!(seqs(log.query(None, all[1], 2)), all[2..4]);
        let of_a = log.query(Some("a"), 0, 100);
        assert_eq!(of_a.len(), 3);
        assert!(of_a.iter().all(|e| e.instance == "a"));
        assert!(log.query(None, all[5], 100).is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let log = EventLog::new(3);
        for pid in 0..5 {
            log.emit(
                "a",
                Event::Started {
                    pid,
                    after_crash: false,
                },
            );
        }
        log.emit("b", Event::ConflictCleared);
        let a = log.query(Some("a"), 0, 10);
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].message, "started as pid 4");
        assert_eq!(log.query(Some("a"), 0, 10)[0].message, "started as pid 3");
        assert_eq!(log.query(Some("b"), 0, 10)[0].kind, "conflict-cleared");
    }

    #[test]
    fn history_grows_with_the_declared_instances_and_shrinks_back() {
        let log = EventLog::new(3);
        log.fit(2);
        let start = |pid| Event::Started {
            pid,
            after_crash: false,
        };
        for pid in 0..10 {
            log.emit("a", start(pid));
        }
        // Two instances: room for 2 × KEPT_PER_INSTANCE, none of them reported yet.
        let (kept, dropped) = log.unreported(100);
        assert_eq!(kept.len(), 2 * KEPT_PER_INSTANCE);
        assert_eq!(dropped, (10 - 2 * KEPT_PER_INSTANCE) as u64);
        // Fewer instances: back to the base, the oldest go at the next event.
        log.fit(0);
        log.emit("a", start(10));
        let kept = log.query(Some("a"), 0, 100);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[2].message, "started as pid 10");
    }
}

//! The worker's side of live reconfiguration: how the live process differs from its
//! spec, applying changes without a restart (then the rendered file and the record),
//! and the upkeep of a running instance (drift checks, the end of a password grace
//! period). The decisions are `changes::diff` and `live`'s; this is where the worker's
//! state and the instance's files follow them.

use super::{earliest, Grace, Worker, RECONFIGURE_RETRY_FIRST, RECONFIGURE_RETRY_MAX};
use crate::engine::{self, ClientError, Engine, Session};
use crate::events::Event;
use crate::process::unix_now_millis;
use crate::record::{self, InstanceRecord};
use crate::spec::{InstanceSpec, Secret};
use crate::supervisor::changes::{self, Changes};
use crate::supervisor::live;
use crate::supervisor::plan::{Desired, Live};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Worker {
    /// The live process as the planner sees it: the config hash it runs with, and
    /// when that differs from the desired one, whether the differences need a restart.
    pub(super) fn live_view(&self, spec: Option<&InstanceSpec>, desired: &Desired) -> Option<Live> {
        let process = self.process.as_ref()?;
        let record = process.record();
        let mut restart = Vec::new();
        if let (Some(spec), Desired::Running { config_hash }) = (spec, desired) {
            if *config_hash != record.config_hash {
                if let Some(engine) = engine::for_kind(record.engine) {
                    let running = changes::Running::new(record, self.running_settings.clone());
                    restart = changes::diff(engine, &running, spec).restart;
                }
                if let Some((hash, keys)) = &self.refused {
                    if hash == config_hash {
                        restart.extend(keys.iter().cloned());
                    }
                }
            }
        }
        Some(Live {
            config_hash: record.config_hash.clone(),
            restart,
            asked: spec.and_then(|spec| self.restore_asked(spec)).into_iter().collect(),
            ready: self.ready,
            reconfigure_not_before: self.reconfigure_not_before,
        })
    }

    /// Forgets what the worker knew about the live process's configuration and its
    /// connection to it: the process is gone or about to be replaced.
    pub(super) fn forget_live_state(&mut self) {
        self.running_settings = None;
        self.refused = None;
        self.reconfigure_not_before = None;
        self.reconfigure_delay = RECONFIGURE_RETRY_FIRST;
        self.admin = None;
        // A grace period runs on through a restart: the next process gets the previous
        // password back (`upkeep`).
        if let Some(grace) = &mut self.grace {
            grace.applied_pid = None;
        }
        self.next_drift_check = None;
        self.drift_failure = None;
        self.uncorrected.clear();
        self.changed_at_ms = unix_now_millis();
    }

    /// The worker's connection to the live process, opened (and the process
    /// verified) when there is none.
    pub(super) async fn admin_session(&mut self) -> Result<(&'static dyn Engine, &mut Session), ClientError> {
        let Some(process) = self.process.as_ref() else {
            return Err(ClientError::Connect {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                reason: "no running process".into(),
            });
        };
        let target = self.target(process);
        let Some(engine) = engine::for_kind(process.record().engine) else {
            return Err(ClientError::Connect {
                addr: target.addr,
                reason: format!("engine {} is not supported", process.record().engine),
            });
        };
        let session = match self.admin.take() {
            Some(session) => session,
            None => {
                let mut session = Session::open(&target).await?;
                engine.verify_pid(&mut session, target.pid).await?;
                session
            }
        };
        Ok((engine, self.admin.insert(session)))
    }

    /// Applies the spec's changes to the live process without a restart: passwords
    /// first (a replica's `masterauth` before it connects), then config keys and the
    /// master. Then the rendered file and the record say what it runs with, so that a
    /// later restart keeps the same values. A key the server refuses makes the change
    /// a restart.
    pub(super) async fn reconfigure(&mut self, spec: &Arc<InstanceSpec>) {
        let Some(record) = self.process.as_ref().map(|p| p.record().clone()) else {
            return;
        };
        let Some(engine) = engine::for_kind(record.engine) else {
            return;
        };
        let running = changes::Running::new(&record, self.running_settings.clone());
        let changes = changes::diff(engine, &running, spec);
        if changes.needs_restart() {
            return;
        }
        let config_hash = spec.config_hash();
        let result = self.apply_live(spec, &changes).await;
        // Done (or partly done): only probes sent from now on show it.
        self.changed_at_ms = unix_now_millis();
        match result {
            Err(error) => {
                self.admin = None;
                self.emit(Event::ReconfigureFailed { error });
                self.retry_reconfigure_later();
            }
            Ok(applied) => {
                for event in applied.events {
                    self.emit(event);
                }
                if !applied.refused.is_empty() {
                    let mut keys = Vec::new();
                    for (key, reason) in applied.refused {
                        keys.push(format!("{key} (refused live: {reason})"));
                        self.emit(Event::ConfigRefused { key, reason });
                    }
                    self.refused = Some((config_hash, keys));
                    return;
                }
                self.running_settings = Some(engine.settings(spec));
                if let Err(error) = self.note_reconfigured(spec, &config_hash).await {
                    self.emit(Event::ConfigWriteFailed { error });
                    return self.retry_reconfigure_later();
                }
                self.reconfigure_not_before = None;
                self.reconfigure_delay = RECONFIGURE_RETRY_FIRST;
                if !applied.changes.is_empty() {
                    self.emit(Event::Reconfigured {
                        changes: applied.changes,
                    });
                }
            }
        }
    }

    /// Live changes failed: the planner tries again after a delay that doubles.
    fn retry_reconfigure_later(&mut self) {
        self.reconfigure_not_before = Some(Instant::now() + self.reconfigure_delay);
        self.reconfigure_delay = (self.reconfigure_delay * 2).min(RECONFIGURE_RETRY_MAX);
    }

    /// Talks to the server for [`Worker::reconfigure`]; the error says what failed.
    pub(super) async fn apply_live(&mut self, spec: &InstanceSpec, changes: &Changes) -> Result<live::Applied, String> {
        let mut password_change = None;
        if let Some(new) = &changes.password {
            let old = self.auth.clone();
            let grace = spec.password_grace.unwrap_or(self.ctx.config.instances.password_grace);
            let passwords: Vec<Secret> = match (&old, new) {
                (Some(old), Some(new)) if !grace.is_zero() && old != new => {
                    // The record learns of the grace period first: an agent restarted
                    // in the middle must still end it.
                    let until_ms = unix_now_millis() + grace.as_millis() as u64;
                    let previous = record::StoredSecret(old.clone());
                    self.write_record(|r| {
                        r.password_grace_until_ms = Some(until_ms);
                        r.password_grace_previous = Some(previous);
                    })
                    .await?;
                    self.grace = Some(Grace {
                        until_ms,
                        previous: Some(old.clone()),
                        applied_pid: self.process.as_ref().map(|p| p.pid()),
                    });
                    password_change = Some(grace);
                    vec![new.clone(), old.clone()]
                }
                (_, new) => {
                    self.grace = None;
                    new.iter().cloned().collect()
                }
            };
            let (engine, session) = self.admin_session().await.map_err(|e| e.to_string())?;
            engine
                .set_passwords(session, &passwords)
                .await
                .map_err(|e| e.to_string())?;
            self.auth = new.clone();
        }
        let (engine, session) = self.admin_session().await.map_err(|e| e.to_string())?;
        let mut applied = live::apply(engine, session, changes).await.map_err(|e| e.to_string())?;
        match (&changes.password, password_change) {
            (Some(_), Some(grace)) => {
                applied
                    .changes
                    .push("password (the previous one keeps working for the grace period)".into());
                self.emit(Event::PasswordChanged { grace });
            }
            (Some(Some(_)), None) => applied.changes.push("password".into()),
            (Some(None), None) => applied.changes.push("password removed".into()),
            (None, _) => {}
        }
        if changes.restart_epoch_lowered {
            applied
                .changes
                .push(format!("restart_epoch lowered to {}", spec.restart_epoch));
        }
        Ok(applied)
    }

    /// Rewrites the rendered config file for `spec` and records that the process now
    /// runs with it.
    pub(super) async fn note_reconfigured(&mut self, spec: &InstanceSpec, config_hash: &str) -> Result<(), String> {
        let engine = engine::for_kind(spec.engine).ok_or("engine not supported")?;
        self.write_config(engine, spec, self.layout(engine), None).await?;
        let (hash, epoch) = (config_hash.to_string(), spec.restart_epoch);
        self.write_record(move |r| {
            r.config_hash = hash;
            r.restart_epoch = epoch;
        })
        .await
    }

    /// Changes the live process's record and writes it; the change is kept only when
    /// the write succeeds.
    pub(super) async fn write_record(&mut self, change: impl FnOnce(&mut InstanceRecord)) -> Result<(), String> {
        let Some(process) = self.process.as_ref() else {
            return Err("no running process".into());
        };
        let mut record = process.record().clone();
        change(&mut record);
        self.persist_record(record.clone()).await?;
        if let Some(process) = self.process.as_mut() {
            *process.record_mut() = record;
        }
        Ok(())
    }

    /// While the process runs as desired and answers: ends a password grace period
    /// that is over, and checks for drift when one is due. Returns when to look again.
    pub(super) async fn upkeep(&mut self, spec: &InstanceSpec) -> Option<Instant> {
        if self.process.is_none() || !self.ready {
            return None;
        }
        let now = Instant::now();
        if self.grace_left().is_some_and(|left| left.is_zero()) {
            self.end_grace().await;
        } else {
            self.restore_grace().await;
        }
        // Drift checks keep the monitors' beat: the runtime wakes once for all
        // instances rather than once per instance.
        let (origin, interval) = (self.ctx.monitor.origin, self.ctx.config.monitoring.drift_interval);
        let next_beat = || crate::monitoring::monitor::next_beat(origin, interval);
        match self.next_drift_check {
            Some(at) if at <= now => {
                self.check_drift(spec).await;
                self.next_drift_check = Some(next_beat());
            }
            Some(_) => {}
            None => self.next_drift_check = Some(next_beat()),
        }
        // A grace period still running after its end failed to end: retried in a
        // second, not spun on.
        let grace_end = self.grace_left().map(|left| {
            let wait = if left.is_zero() { Duration::from_secs(1) } else { left };
            Instant::now() + wait
        });
        // The status quotes the stop timeout derived from the last sample: looked at
        // again half a health interval after each metrics beat (once the sample has
        // landed), however long the drift interval.
        let monitoring = &self.ctx.config.monitoring;
        let refresh =
            crate::monitoring::monitor::next_beat(origin + monitoring.health_interval / 2, monitoring.metrics_interval);
        earliest(earliest(self.next_drift_check, grace_end), Some(refresh))
    }

    /// How long the current password grace period has left (zero once it is over).
    fn grace_left(&self) -> Option<Duration> {
        let grace = self.grace.as_ref()?;
        Some(Duration::from_millis(grace.until_ms.saturating_sub(unix_now_millis())))
    }

    /// A process started during a grace period has only the current password (its
    /// config file's): give it the previous one back until the grace period ends.
    async fn restore_grace(&mut self) {
        let pid = self.process.as_ref().map(|p| p.pid());
        let Some(previous) = self
            .grace
            .as_ref()
            .filter(|g| g.applied_pid != pid)
            .and_then(|g| g.previous.clone())
        else {
            return;
        };
        let passwords: Vec<Secret> = self.auth.iter().cloned().chain([previous]).collect();
        match self.apply_passwords(&passwords).await {
            Ok(()) => {
                if let Some(grace) = &mut self.grace {
                    grace.applied_pid = pid;
                }
                tracing::info!(instance = %self.name, "The previous password works again until the grace period ends.");
            }
            Err(error) => {
                tracing::warn!(instance = %self.name, %error, "Cannot give the previous password back for the grace period; retrying.");
            }
        }
    }

    /// Makes exactly `passwords` valid on the live process; a failure drops the kept
    /// connection, so that the next try opens a new one.
    async fn apply_passwords(&mut self, passwords: &[Secret]) -> Result<(), ClientError> {
        let result = match self.admin_session().await {
            Ok((engine, session)) => engine.set_passwords(session, passwords).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.admin = None;
        }
        result
    }

    /// Only the current password works from now on.
    pub(super) async fn end_grace(&mut self) {
        let passwords: Vec<Secret> = self.auth.iter().cloned().collect();
        if let Err(error) = self.apply_passwords(&passwords).await {
            tracing::warn!(instance = %self.name, %error, "Cannot end the password grace period; retrying.");
            return;
        }
        let cleared = self
            .write_record(|r| {
                r.password_grace_until_ms = None;
                r.password_grace_previous = None;
            })
            .await;
        if let Err(error) = cleared {
            tracing::warn!(instance = %self.name, %error, "Cannot note the end of the password grace period.");
        }
        self.grace = None;
        self.emit(Event::PasswordGraceEnded);
    }

    /// Sets back whatever the server runs with that differs from the spec.
    pub(super) async fn check_drift(&mut self, spec: &InstanceSpec) {
        let Some(engine) = engine::for_kind(spec.engine) else {
            return;
        };
        let settings = engine.settings(spec);
        // During a grace period the server holds two passwords on purpose.
        let passwords: Option<Vec<Secret>> = self.grace.is_none().then(|| self.auth.iter().cloned().collect());
        // The master is in every health probe: the last one tells, if it was sent
        // after the agent last changed the process.
        let observed_master = self
            .ctx
            .board
            .health(&self.name)
            .filter(|h| h.sent_at_ms > self.changed_at_ms)
            .and_then(|h| match h.observed_role? {
                engine::ObservedRole::Master => Some(None),
                engine::ObservedRole::Replica => Some(h.replication?.master),
            });
        let check = live::DriftCheck {
            settings: &settings,
            passwords: passwords.as_deref(),
            observed_master,
        };
        if !check.needs_server(engine) {
            return;
        }
        let result = match self.admin_session().await {
            Ok((engine, session)) => live::correct_drift(engine, session, &check).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(events) => {
                if self.drift_failure.take().is_some() {
                    tracing::info!(instance = %self.name, "Drift check works again.");
                }
                for event in events {
                    // A value the server keeps refusing is reported once, not every
                    // cycle, until it is corrected or the process changes.
                    match &event {
                        Event::DriftUncorrected { key, .. } if !self.uncorrected.insert(key.clone()) => continue,
                        Event::DriftCorrected { key, .. } => {
                            self.uncorrected.remove(key);
                            if key == "replica_of" {
                                // The role changed: earlier probes no longer tell.
                                self.changed_at_ms = unix_now_millis();
                            }
                        }
                        _ => {}
                    }
                    self.emit(event);
                }
            }
            Err(error) => {
                self.admin = None;
                let error = error.to_string();
                if self.drift_failure.as_ref() != Some(&error) {
                    tracing::warn!(instance = %self.name, error = error.as_str(), "Drift check failed.");
                }
                self.drift_failure = Some(error);
            }
        }
    }
}

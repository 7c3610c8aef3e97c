//! The worker's graceful stop: the engine's stop request (asked again while the server
//! refuses), the save it waits for and how far it got, the stop timeout (the spec's, or
//! one derived from the dataset: `supervisor::stop`), and what a server that cannot
//! save gets. Redis refuses to exit when its last save fails; so does the agent unless
//! the spec says `on_save_failure = "kill"`: the server keeps running with its unsaved
//! writes, the stop is reported as blocked with the server's own words and the fix,
//! and the next try after the fix saves and stops it.

use super::{blocking, desired_of, Stopping, Worker, STOP_RETRY};
use crate::engine::{self, Engine, StopRequest};
use crate::events::Event;
use crate::process::{unix_now, Process};
use crate::procfs;
use crate::spec::{InstanceSpec, OnSaveFailure};
use crate::status::StopOutcome;
use crate::supervisor::plan::{Desired, StopReason};
use crate::supervisor::stop::{self, StopTimeout};
use crate::sys;
use crate::units::format_duration_short;
use std::time::{Duration, Instant};

/// How often a stop in progress looks at the save and updates its status.
const PROGRESS_TICK: Duration = Duration::from_secs(1);
/// How many of the server's own log lines a blocked stop quotes.
const BLOCKED_LOG_LINES: usize = 3;

impl Worker {
    /// The stop timeout for `spec` (or, for an undeclared instance, the agent's),
    /// from the last sample of the instance's dataset.
    pub(super) fn stop_timeout(&self, spec: Option<&InstanceSpec>, engine: Option<&dyn Engine>) -> StopTimeout {
        let sample = self.ctx.monitor.observations.instance(&self.name);
        stop::stop_timeout(
            spec.and_then(|s| s.stop_timeout),
            self.ctx.config.instances.stop_timeout,
            engine.map_or(Duration::ZERO, |e| e.min_stop_timeout()),
            sample.as_ref().map(|m| &m.server),
        )
    }

    /// Stops the process gracefully. Returns false when the agent shut down meanwhile;
    /// the process is then left as it is, with its record, and the next agent finishes
    /// the job.
    pub(super) async fn stop(&mut self, reason: StopReason, spec: Option<&InstanceSpec>) -> bool {
        let Some(mut process) = self.process.take() else {
            return true;
        };
        let began = Instant::now();
        let pid = process.pid();
        let engine: Option<&'static dyn Engine> = engine::for_kind(process.record().engine);
        let StopTimeout { timeout, .. } = self.stop_timeout(spec, engine);
        let deadline = began + timeout;
        let mut on_save_failure = spec.map_or(OnSaveFailure::KeepRunning, |s| s.on_save_failure);
        let target = self.target(&process);
        let data_dir = self.instance_dir().join("data");
        // The server's own words about a failing save come after this.
        let log_offset = std::fs::metadata(self.log_file()).map_or(0, |m| m.len());
        self.stopping = Some(Stopping {
            pid,
            port: process.record().port,
            message: format!("stopping ({})", reason.describe()),
        });
        self.publish_current();
        self.emit(Event::Stopping {
            pid,
            reason: reason.describe(),
        });
        self.admin = None;
        // A later agent that finds the process gone then knows it was asked to stop.
        if let Err(error) = self.write_stopping(&mut process, true).await {
            tracing::warn!(instance = %self.name, %error, "Cannot note the stop in the record.");
        }

        // Ask, and ask again while the server refuses (a failing save may succeed once
        // space is freed), until the process exits.
        let mut how = String::new();
        let mut refusal: Option<String> = None;
        // What the server's log says about the last refusal, read once per refusal.
        let mut server_says = String::new();
        let mut next_request = Some(Instant::now());
        let mut blocked_since: Option<Instant> = None;
        let exited = loop {
            if next_request.is_some_and(|at| at <= Instant::now()) {
                let request = match engine {
                    Some(engine) => tokio::select! {
                        request = engine.request_stop(&target) => request,
                        _ = self.shutdown.cancelled() => return self.abandon_stop(process),
                    },
                    None => StopRequest::Signal {
                        reason: "no engine".into(),
                    },
                };
                let first = how.is_empty();
                next_request = None;
                match request {
                    StopRequest::Sent { command } => {
                        refusal = None;
                        how = command;
                    }
                    StopRequest::Refused { command, error } => {
                        let text = format!("{command} refused: {error}");
                        // Said once per reason, not every few seconds of a long block.
                        if refusal.as_ref() != Some(&text) {
                            self.emit(Event::StopRefused {
                                command: command.clone(),
                                error,
                            });
                        }
                        refusal = Some(text);
                        server_says = self.log_since(log_offset).await;
                        how = command;
                        next_request = Some(Instant::now() + STOP_RETRY);
                    }
                    StopRequest::Signal { reason: why } => {
                        tracing::info!(instance = %self.name, pid, reason = why.as_str(), "Stop command not possible; sending SIGTERM.");
                        if let Err(e) = process.signal(sys::SIGTERM) {
                            tracing::warn!(instance = %self.name, pid, error = %e, "SIGTERM failed.");
                        }
                        how = "SIGTERM".to_string();
                    }
                }
                if first || refusal.is_none() {
                    self.emit(Event::StopRequested {
                        pid,
                        method: how.clone(),
                    });
                }
            }
            let now = Instant::now();
            if blocked_since.is_none() && now >= deadline {
                match (&refusal, on_save_failure) {
                    (Some(error), OnSaveFailure::KeepRunning) => {
                        blocked_since = Some(now);
                        let error = format!("{error}{server_says}");
                        self.emit(Event::StopBlocked { pid, error });
                    }
                    _ => break false,
                }
            }
            let message = match (blocked_since, &refusal) {
                (Some(since), Some(refusal)) => format!(
                    "stop ({}) blocked for {}: {refusal}{}; the server keeps running with its unsaved writes: \
                     free space on the filesystem of {} or fix its permissions, and the next try (every {}s) saves \
                     and stops it, or set on_save_failure = \"kill\" to stop it without saving",
                    reason.describe(),
                    format_duration_short(since.elapsed()),
                    server_says,
                    data_dir.display(),
                    STOP_RETRY.as_secs()
                ),
                (_, Some(refusal)) => format!(
                    "stopping ({}): {refusal}; retrying (stop timeout in {})",
                    reason.describe(),
                    format_duration_short(deadline.saturating_duration_since(now))
                ),
                (_, None) => {
                    let progress = self.save_progress(engine, &data_dir, pid).await;
                    format!(
                        "stopping ({}) with {how}{}; SIGKILL in {}",
                        reason.describe(),
                        progress.map_or(String::new(), |p| format!(", {}", stop::describe(&p))),
                        format_duration_short(deadline.saturating_duration_since(now))
                    )
                }
            };
            if let Some(stopping) = &mut self.stopping {
                stopping.message = message;
            }
            self.publish_current();
            let mut wake = now + PROGRESS_TICK;
            if let Some(at) = next_request {
                wake = wake.min(at);
            }
            if blocked_since.is_none() {
                wake = wake.min(deadline);
            }
            let (specs, shutdown) = (&mut self.specs, &self.shutdown);
            tokio::select! {
                _ = process.wait() => break true,
                _ = tokio::time::sleep_until(wake.into()) => {}
                changed = specs.changed(), if blocked_since.is_some() => {
                    if changed.is_err() {
                        // The supervisor is gone: the agent is shutting down.
                        return self.abandon_stop(process);
                    }
                    let spec = self.specs.borrow_and_update().clone();
                    if let Some(spec) = &spec {
                        on_save_failure = spec.on_save_failure;
                    }
                    // Wanted running exactly as it runs: nothing to stop for any more.
                    if let Desired::Running { config_hash } = desired_of(spec.as_deref()) {
                        if config_hash == process.record().config_hash {
                            return self.cancel_stop(process).await;
                        }
                    }
                    if on_save_failure == OnSaveFailure::Kill {
                        break false;
                    }
                }
                _ = shutdown.cancelled() => return self.abandon_stop(process),
            }
        };
        let (how, forced) = if exited {
            let how = match blocked_since {
                Some(since) => format!("{how} (after {} blocked)", format_duration_short(since.elapsed())),
                None => how,
            };
            (how, false)
        } else {
            self.emit(Event::KilledAfterTimeout { pid, timeout });
            if let Err(e) = process.signal(sys::SIGKILL) {
                tracing::warn!(instance = %self.name, pid, error = %e, "SIGKILL failed.");
            }
            // SIGKILL cannot be ignored, but a process in uninterruptible sleep takes
            // its time: wait, and keep saying so, rather than forget a live process.
            loop {
                tokio::select! {
                    _ = process.wait() => break,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {
                        tracing::error!(instance = %self.name, pid, "Process still alive after SIGKILL; waiting.");
                    }
                    _ = self.shutdown.cancelled() => return self.abandon_stop(process),
                }
            }
            let why = refusal.unwrap_or_else(|| format!("{how} did not finish"));
            (format!("SIGKILL after {}s ({why})", timeout.as_secs()), true)
        };
        let took = began.elapsed();
        self.emit(Event::Stopped {
            pid,
            how: how.clone(),
            took,
        });
        self.remove_records("the process stopped").await;
        self.last_stop = Some(StopOutcome {
            how,
            forced,
            at: unix_now(),
            took_ms: took.as_millis() as u64,
        });
        self.stopping = None;
        self.ready = false;
        self.loading = false;
        self.auth = None;
        self.forget_live_state();
        self.drift = None;
        self.restart_not_before = None;
        self.restart_pending = None;
        true
    }

    /// The agent is shutting down during a stop: leave the process as it is (its record
    /// stays, so the next agent adopts it and finishes the job).
    fn abandon_stop(&mut self, process: Process) -> bool {
        self.process = Some(process);
        self.stopping = None;
        false
    }

    /// A blocked stop is no longer wanted: the process runs on as the live one.
    async fn cancel_stop(&mut self, mut process: Process) -> bool {
        if let Err(error) = self.write_stopping(&mut process, false).await {
            tracing::warn!(instance = %self.name, %error, "Cannot note in the record that the stop was called off.");
        }
        self.emit(Event::StopCancelled { pid: process.pid() });
        self.process = Some(process);
        self.stopping = None;
        self.ready = false;
        self.probe_delay = Duration::ZERO;
        self.probe_began = Instant::now();
        true
    }

    /// Marks the record of `process` as stopping (or not) on disk.
    async fn write_stopping(&self, process: &mut Process, stopping: bool) -> Result<(), String> {
        process.record_mut().stopping = stopping;
        self.persist_record(process.record().clone()).await
    }

    /// How far the save of a stopping server has got (file work off the runtime).
    async fn save_progress(
        &self,
        engine: Option<&'static dyn Engine>,
        data_dir: &std::path::Path,
        pid: u32,
    ) -> Option<engine::SaveProgress> {
        let (engine, data_dir) = (engine?, data_dir.to_path_buf());
        blocking("look at the save in progress", move || {
            engine.save_progress(&data_dir, pid)
        })
        .await
        .ok()
        .flatten()
    }

    /// `; the server's log says: <last lines>` for what the server wrote since `offset`.
    async fn log_since(&self, offset: u64) -> String {
        let path = self.log_file();
        let lines = blocking("read the instance's log", move || {
            procfs::tail_lines(&path, offset, BLOCKED_LOG_LINES).unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        let lines: Vec<String> = lines
            .iter()
            .map(|line| super::redact(line, self.auth.as_ref()))
            .collect();
        if lines.is_empty() {
            String::new()
        } else {
            format!("; the server's log says: {}", lines.join(" | "))
        }
    }
}

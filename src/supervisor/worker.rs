//! One task per instance. The worker owns the instance's process: it adopts it from
//! its record or starts it, notices its exit at once, restarts it with back-off,
//! stops it gracefully, and publishes its status. Each turn of its loop observes,
//! asks the pure planner what to do, does it, and waits for the next event: a new
//! spec, the process's exit, a readiness probe, a timer, or the agent's shutdown.

use super::plan::{self, Action, CrashHistory, Desired, Observed, StopReason};
use crate::config::AgentConfig;
use crate::engine::{self, Engine, EngineKind, Layout, Readiness, StopRequest, Target};
use crate::events::{Event, EventLog};
use crate::ports::{self, PortHolder};
use crate::process::{unix_now, unix_now_millis, Adoption, Exit, Launch, Process};
use crate::procfs;
use crate::record::{self, InstanceRecord};
use crate::spec::{InstanceSpec, RunState};
use crate::status::{ExitOutcome, InstanceStatus, Phase, StatusBoard, StopOutcome, Want};
use crate::sys::{self, ChildSetup};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How soon a port held by a foreign process is looked at again: quickly at first (a
/// process that is exiting frees its port within milliseconds), then every 2 s.
const CONFLICT_RECHECK_FIRST: Duration = Duration::from_millis(50);
const CONFLICT_RECHECK_MAX: Duration = Duration::from_secs(2);
/// Limit for connecting to an instance and for each reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Readiness probes start this fast (redis-server answers ~7 ms after exec)…
const PROBE_FIRST: Duration = Duration::from_millis(2);
/// …and slow down to this while a server is not answering or loading.
const PROBE_MAX: Duration = Duration::from_millis(200);
/// How many log lines the status shows after a crash.
const LOG_TAIL_LINES: usize = 5;

/// What every worker shares.
pub struct WorkerContext {
    pub config: Arc<AgentConfig>,
    pub board: StatusBoard,
    pub events: Arc<EventLog>,
    pub boot_id: String,
}

/// A spec sent to a worker; `None` means the instance is no longer declared.
pub type SpecSlot = Option<Arc<InstanceSpec>>;

/// What woke the worker up.
enum Wake {
    Shutdown,
    SpecChanged,
    Exited(Exit),
    Probed(Readiness),
    Timer,
}

/// Whether a stop ran to its end.
enum Flow {
    Continue,
    Cancelled,
}

pub struct Worker {
    name: String,
    ctx: Arc<WorkerContext>,
    specs: watch::Receiver<SpecSlot>,
    shutdown: CancellationToken,
    /// Engine, version and port, from the spec or (for an undeclared instance) its record.
    identity: Option<(EngineKind, String, u16)>,
    process: Option<Process>,
    /// The spec the live process was started (or adopted) with.
    current: Option<Arc<InstanceSpec>>,
    ready: bool,
    loading: bool,
    probe_delay: Duration,
    /// When readiness probing began (start or adoption), for the "ready after" event.
    probe_began: Instant,
    last_probe_error: Option<String>,
    crashes: CrashHistory,
    restart_not_before: Option<Instant>,
    restart_at_ms: Option<u64>,
    /// The next start follows an unexpected exit and counts as a restart.
    restart_pending: bool,
    restarts: u64,
    last_exit: Option<ExitOutcome>,
    last_stop: Option<StopOutcome>,
    log_tail: Vec<String>,
    conflict: Option<PortHolder>,
    /// Delay before the next look at a conflict.
    conflict_recheck: Duration,
    /// The record names a live process the agent cannot verify (see `Adoption`).
    unverified: Option<String>,
    failure: Option<String>,
    stopping: Option<String>,
    /// The pid being stopped, shown while the process is out of `process`.
    stopping_pid: Option<u32>,
    reconciled: bool,
    last_desired_hash: Option<String>,
}

impl Worker {
    pub fn new(
        name: String,
        ctx: Arc<WorkerContext>,
        specs: watch::Receiver<SpecSlot>,
        shutdown: CancellationToken,
    ) -> Worker {
        Worker {
            name,
            ctx,
            specs,
            shutdown,
            identity: None,
            process: None,
            current: None,
            ready: false,
            loading: false,
            probe_delay: PROBE_FIRST,
            probe_began: Instant::now(),
            last_probe_error: None,
            crashes: CrashHistory::default(),
            restart_not_before: None,
            restart_at_ms: None,
            restart_pending: false,
            restarts: 0,
            last_exit: None,
            last_stop: None,
            log_tail: Vec::new(),
            conflict: None,
            conflict_recheck: CONFLICT_RECHECK_FIRST,
            unverified: None,
            failure: None,
            stopping: None,
            stopping_pid: None,
            reconciled: false,
            last_desired_hash: None,
        }
    }

    fn emit(&self, event: Event) {
        self.ctx.events.emit(&self.name, event);
    }

    fn instance_dir(&self) -> PathBuf {
        self.ctx.config.instances_dir().join(&self.name)
    }

    pub async fn run(mut self) {
        let initial = self.specs.borrow().clone();
        self.adopt(initial.as_ref());
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let spec = self.specs.borrow_and_update().clone();
            if let Some(spec) = &spec {
                self.identity = Some((spec.engine, spec.version.clone(), spec.port));
            }
            let desired = desired_of(spec.as_deref());
            if let Desired::Running { config_hash } = &desired {
                // A changed spec gets a fresh start instead of waiting out a back-off
                // earned by the old one (which may be exactly what was fixed).
                if self.last_desired_hash.as_ref().is_some_and(|h| h != config_hash) {
                    self.restart_not_before = None;
                    self.restart_at_ms = None;
                    self.crashes.reset();
                }
                self.last_desired_hash = Some(config_hash.clone());
            }
            if self.unverified.is_some() && self.process.is_none() {
                // Maybe the agent can read the process now (or it is gone).
                self.adopt(spec.as_ref());
            }
            let now = Instant::now();
            let blocked = self.unverified.is_some() || self.check_ports(spec.as_deref(), &desired, now);
            let observed = Observed {
                running: self.process.as_ref().map(|p| p.record().config_hash.clone()),
                restart_not_before: self.restart_not_before,
                blocked,
            };
            let mut wake_at = None;
            match plan::reconcile(&desired, &observed, now) {
                Action::Idle => {}
                Action::Start => {
                    if let Some(spec) = &spec {
                        self.start(spec).await;
                    }
                }
                Action::WaitUntil(at) => wake_at = Some(at),
                Action::Conflict => {
                    wake_at = Some(now + self.conflict_recheck);
                    self.conflict_recheck = (self.conflict_recheck * 2).min(CONFLICT_RECHECK_MAX);
                }
                Action::Stop(reason) => match self.stop(reason, spec.as_deref()).await {
                    Flow::Continue => continue,
                    Flow::Cancelled => return,
                },
                Action::Finish => {
                    self.ctx.board.remove(&self.name);
                    return;
                }
            }
            self.publish(&desired);

            let wake = self.next_wake(wake_at).await;
            match wake {
                Wake::Shutdown => return,
                Wake::SpecChanged | Wake::Timer => {}
                Wake::Exited(exit) => self.on_exit(exit),
                Wake::Probed(readiness) => self.on_probe(readiness),
            }
        }
    }

    /// Waits for the next thing that needs a decision.
    async fn next_wake(&mut self, wake_at: Option<Instant>) -> Wake {
        let probe = self.readiness_probe();
        let timer = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let (process, specs, shutdown) = (&mut self.process, &mut self.specs, &self.shutdown);
        let exit = async move {
            match process.as_mut() {
                Some(process) => process.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Wake::Shutdown,
            exit = exit => Wake::Exited(exit),
            changed = specs.changed() => match changed {
                Ok(()) => Wake::SpecChanged,
                // The supervisor is gone: the agent is shutting down.
                Err(_) => Wake::Shutdown,
            },
            readiness = probe => Wake::Probed(readiness),
            _ = timer => Wake::Timer,
        }
    }

    /// A readiness probe after the current probe delay, while the process is not ready.
    fn readiness_probe(&self) -> impl std::future::Future<Output = Readiness> + 'static {
        let target = match (&self.process, self.ready, self.identity.as_ref()) {
            (Some(process), false, Some((kind, _, _))) => engine::for_kind(*kind).map(|engine| {
                (
                    engine,
                    Target {
                        port: process.record().port,
                        password: self.current.as_ref().and_then(|s| s.password.clone()),
                        timeout: CALL_TIMEOUT,
                    },
                )
            }),
            _ => None,
        };
        let delay = self.probe_delay;
        async move {
            match target {
                Some((engine, target)) => {
                    tokio::time::sleep(delay).await;
                    engine.probe(&target).await
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Adopts the instance's process from its record, if the record proves it ours.
    fn adopt(&mut self, spec: Option<&Arc<InstanceSpec>>) {
        let dir = self.instance_dir();
        let record = match record::read(&dir) {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(error) => {
                self.emit(Event::RecordUnreadable {
                    error: error.to_string(),
                });
                // Keep it for a human to look at, out of the way of the next start.
                let path = record::path(&dir);
                let _ = std::fs::rename(&path, path.with_extension("json.unreadable"));
                return;
            }
        };
        self.restarts = record.restarts;
        if self.identity.is_none() {
            self.identity = Some((record.engine, record.version.clone(), record.port));
        }
        match Process::adopt(&record, &self.ctx.boot_id) {
            Adoption::Adopted(process) => {
                self.emit(Event::Adopted {
                    pid: process.pid(),
                    running_for: process.running_for(),
                });
                // Best guess for the password the process runs with: the declared one.
                self.current = spec.cloned();
                self.process = Some(*process);
                self.unverified = None;
                self.ready = false;
                self.probe_delay = Duration::ZERO;
                self.probe_began = Instant::now();
            }
            Adoption::Gone(reason) => {
                self.unverified = None;
                self.emit(Event::RecordStale { reason });
                if let Err(e) = record::remove(&dir) {
                    tracing::warn!(instance = %self.name, error = %e, "Cannot remove stale record.");
                }
            }
            Adoption::Unverifiable(reason) => {
                if self.unverified.as_ref() != Some(&reason) {
                    self.emit(Event::RecordUnverifiable { reason: reason.clone() });
                }
                self.unverified = Some(reason);
            }
        }
    }

    /// Whether a foreign process holds one of the ports, checked only when a start is
    /// about to happen.
    fn check_ports(&mut self, spec: Option<&InstanceSpec>, desired: &Desired, now: Instant) -> bool {
        let due = self.restart_not_before.is_none_or(|at| at <= now);
        let (Some(spec), Desired::Running { .. }, None, true) = (spec, desired, &self.process, due) else {
            return false;
        };
        let holder = engine::for_kind(spec.engine)
            .map(|e| e.ports(spec.port))
            .unwrap_or_default()
            .into_iter()
            .find_map(ports::find_listener);
        match (&holder, &self.conflict) {
            (Some(h), Some(old)) if h == old => {}
            (Some(h), _) => self.emit(Event::Conflict { holder: h.to_string() }),
            (None, Some(_)) => self.emit(Event::ConflictCleared),
            (None, None) => {}
        }
        if holder.is_none() {
            self.conflict_recheck = CONFLICT_RECHECK_FIRST;
        }
        self.conflict = holder;
        self.conflict.is_some()
    }

    async fn start(&mut self, spec: &Arc<InstanceSpec>) {
        let config = &self.ctx.config;
        let Some(engine) = engine::for_kind(spec.engine) else {
            return self.start_failed(format!("engine {} is not supported", spec.engine));
        };
        let Some(binary) = config.binary(spec.engine, &spec.version).map(PathBuf::from) else {
            return self.start_failed(format!(
                "{} version {:?} is not in agent.toml",
                spec.engine, spec.version
            ));
        };
        let layout = engine::layout(
            engine,
            &config.instances_dir(),
            &config.instances.log_dir,
            &self.name,
            &config.instances.bind,
        );
        let rendered = engine.render_config(spec, &layout);
        let prepared = {
            let layout = layout.clone();
            tokio::task::spawn_blocking(move || prepare_files(&layout, &rendered)).await
        };
        match prepared {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                self.emit(Event::ConfigWriteFailed { error: error.clone() });
                return self.start_failed(error);
            }
            Err(join) => return self.start_failed(format!("file preparation did not finish: {join}")),
        }

        let after_crash = self.restart_pending;
        let base = InstanceRecord {
            pid: 0,
            start_ticks: 0,
            boot_id: String::new(),
            executable: PathBuf::new(),
            config_hash: spec.config_hash(),
            started_at: 0,
            restarts: self.restarts + u64::from(after_crash),
            engine: spec.engine,
            version: spec.version.clone(),
            port: spec.port,
        };
        let launch = Launch {
            binary: &binary,
            args: engine.args(&layout),
            working_dir: &layout.data_dir,
            log_file: &layout.log_file,
            setup: ChildSetup {
                nofile: spec.limits.nofile,
                oom_score_adj: spec.limits.oom_score_adj,
            },
        };
        let process = match Process::spawn(launch, &self.ctx.boot_id, base) {
            Ok(process) => process,
            Err(error) => return self.start_failed(error.to_string()),
        };
        // The record is the proof of ownership a later agent needs: write it before
        // anything else can happen.
        let record = process.record().clone();
        let dir = layout.instance_dir.clone();
        match tokio::task::spawn_blocking(move || record::write(&dir, &record)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(
                instance = %self.name,
                %error,
                "Cannot write the instance record; a restarted agent will not be able to adopt this process."
            ),
            Err(join) => tracing::error!(instance = %self.name, error = %join, "Record write did not finish."),
        }
        self.restarts = process.record().restarts;
        self.restart_pending = false;
        self.emit(Event::Started {
            pid: process.pid(),
            after_crash,
        });
        self.process = Some(process);
        self.current = Some(spec.clone());
        self.ready = false;
        self.loading = false;
        self.probe_delay = PROBE_FIRST;
        self.probe_began = Instant::now();
        self.last_probe_error = None;
        self.failure = None;
        self.restart_not_before = None;
        self.restart_at_ms = None;
    }

    /// A start that did not produce a process counts like a crash for the back-off.
    fn start_failed(&mut self, error: String) {
        self.emit(Event::StartFailed { error: error.clone() });
        self.failure = Some(error);
        let delay = self.crashes.on_crash(Duration::ZERO, fastrand::f64());
        self.schedule_restart(delay);
    }

    fn schedule_restart(&mut self, delay: Duration) {
        self.restart_not_before = Some(Instant::now() + delay);
        self.restart_at_ms = Some(unix_now_millis() + delay.as_millis() as u64);
        self.emit(Event::RestartScheduled {
            delay,
            consecutive: self.crashes.consecutive,
        });
    }

    fn on_exit(&mut self, exit: Exit) {
        let Some(process) = self.process.take() else {
            return;
        };
        let ran_for = process.running_for();
        self.emit(Event::Exited {
            pid: process.pid(),
            exit,
            ran_for,
        });
        self.last_exit = Some(ExitOutcome { exit, at: unix_now() });
        self.log_tail = procfs::tail_lines(&self.log_file(), LOG_TAIL_LINES).unwrap_or_default();
        self.ready = false;
        self.loading = false;
        self.restart_pending = true;
        let delay = self.crashes.on_crash(ran_for, fastrand::f64());
        // An immediate restart overwrites the record; removing it first would only
        // delay the restart. A stale record is harmless: its pid fails the proof.
        if !delay.is_zero() {
            if let Err(e) = record::remove(&self.instance_dir()) {
                tracing::warn!(instance = %self.name, error = %e, "Cannot remove the record of an exited process.");
            }
        }
        self.schedule_restart(delay);
    }

    fn on_probe(&mut self, readiness: Readiness) {
        let Some(pid) = self.process.as_ref().map(Process::pid) else {
            return;
        };
        match readiness {
            Readiness::Ready => {
                let after = self.probe_began.elapsed();
                self.ready = true;
                self.loading = false;
                self.last_probe_error = None;
                self.conflict = None;
                self.log_tail.clear();
                self.emit(Event::Ready { pid, after });
            }
            Readiness::Starting(_) => {
                if !self.loading {
                    self.emit(Event::Loading { pid });
                }
                self.loading = true;
                self.probe_delay = (self.probe_delay * 2).clamp(PROBE_FIRST, PROBE_MAX);
            }
            Readiness::Unreachable(error) => {
                self.last_probe_error = Some(error);
                self.probe_delay = self.probe_delay.mul_f64(1.5).clamp(PROBE_FIRST, PROBE_MAX);
            }
        }
    }

    /// Stops the process gracefully, then by SIGKILL after the stop timeout.
    async fn stop(&mut self, reason: StopReason, spec: Option<&InstanceSpec>) -> Flow {
        let Some(mut process) = self.process.take() else {
            return Flow::Continue;
        };
        let pid = process.pid();
        let timeout = spec
            .and_then(|s| s.stop_timeout)
            .or_else(|| self.current.as_ref().and_then(|s| s.stop_timeout))
            .unwrap_or(self.ctx.config.instances.stop_timeout);
        let target = Target {
            port: process.record().port,
            password: self.current.as_ref().and_then(|s| s.password.clone()),
            timeout: CALL_TIMEOUT,
        };
        let engine: Option<&dyn Engine> = engine::for_kind(process.record().engine);
        self.stopping = Some(format!("stopping ({})", reason.as_str()));
        self.stopping_pid = Some(pid);
        self.publish_current();
        let began = Instant::now();

        let request = match engine {
            Some(engine) => tokio::select! {
                request = engine.request_stop(&target) => request,
                _ = self.shutdown.cancelled() => return self.abandon_stop(process),
            },
            None => StopRequest::Signal {
                reason: "no engine".into(),
            },
        };
        let method = match &request {
            StopRequest::Sent { command } => command.clone(),
            StopRequest::Refused { command, error } => {
                self.emit(Event::StopRefused {
                    command: command.clone(),
                    error: error.clone(),
                });
                command.clone()
            }
            StopRequest::Signal { reason: why } => {
                tracing::info!(instance = %self.name, pid, reason = %why, "Stop command not possible; sending SIGTERM.");
                if let Err(e) = process.signal(sys::SIGTERM) {
                    tracing::warn!(instance = %self.name, pid, error = %e, "SIGTERM failed.");
                }
                "SIGTERM".to_string()
            }
        };
        self.emit(Event::Stopping {
            pid,
            reason: reason.as_str(),
            method: method.clone(),
        });
        self.stopping = Some(format!("stopping ({}) with {method}", reason.as_str()));
        self.publish_current();

        let exited = tokio::select! {
            _ = process.wait() => true,
            _ = tokio::time::sleep(timeout) => false,
            _ = self.shutdown.cancelled() => return self.abandon_stop(process),
        };
        let (how, forced) = if exited {
            (method, false)
        } else {
            self.emit(Event::KilledAfterTimeout { pid, timeout });
            if let Err(e) = process.signal(sys::SIGKILL) {
                tracing::warn!(instance = %self.name, pid, error = %e, "SIGKILL failed.");
            }
            tokio::select! {
                _ = process.wait() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    tracing::error!(instance = %self.name, pid, "Process still alive 5 s after SIGKILL.");
                }
                _ = self.shutdown.cancelled() => return self.abandon_stop(process),
            }
            (
                format!("SIGKILL after {}s ({method} did not finish)", timeout.as_secs()),
                true,
            )
        };
        let took = began.elapsed();
        self.emit(Event::Stopped {
            pid,
            how: how.clone(),
            took,
        });
        if let Err(e) = record::remove(&self.instance_dir()) {
            tracing::warn!(instance = %self.name, error = %e, "Cannot remove the record of a stopped process.");
        }
        self.last_stop = Some(StopOutcome {
            how,
            forced,
            at: unix_now(),
            took_ms: took.as_millis() as u64,
        });
        self.stopping = None;
        self.stopping_pid = None;
        self.ready = false;
        self.loading = false;
        self.current = None;
        self.restart_not_before = None;
        self.restart_at_ms = None;
        self.restart_pending = false;
        Flow::Continue
    }

    /// The agent is shutting down during a stop: leave the process as it is (its record
    /// stays, so the next agent adopts it and finishes the job).
    fn abandon_stop(&mut self, process: Process) -> Flow {
        self.process = Some(process);
        self.stopping = None;
        self.stopping_pid = None;
        Flow::Cancelled
    }

    fn log_file(&self) -> PathBuf {
        self.ctx.config.instances.log_dir.join(format!("{}.log", self.name))
    }

    fn publish_current(&mut self) {
        let spec = self.specs.borrow().clone();
        self.publish(&desired_of(spec.as_deref()));
    }

    /// Publishes the status derived from what the worker knows.
    fn publish(&mut self, desired: &Desired) {
        let Some((engine, version, port)) = self.identity.clone() else {
            return;
        };
        let want = match desired {
            Desired::Removed => Want::Removed,
            Desired::Stopped => Want::Stopped,
            Desired::Running { .. } => Want::Running,
        };
        let phase = self.phase(want);
        if !matches!(phase, Phase::Pending | Phase::Starting | Phase::Stopping) {
            self.reconciled = true;
        }
        let status = InstanceStatus {
            name: self.name.clone(),
            engine,
            version,
            port,
            want,
            phase,
            ready: self.ready && self.process.is_some(),
            pid: self.process.as_ref().map(Process::pid).or(self.stopping_pid),
            restarts: self.restarts,
            consecutive_crashes: self.crashes.consecutive,
            started_at: self.process.as_ref().map(|p| p.record().started_at),
            uptime_seconds: None,
            last_exit: self.last_exit.clone(),
            last_stop: self.last_stop.clone(),
            next_restart_at_ms: if self.process.is_none() && want == Want::Running {
                self.restart_at_ms
            } else {
                None
            },
            reconciled: self.reconciled,
            message: self.message(phase),
        };
        self.ctx.board.publish(status);
    }

    fn phase(&self, want: Want) -> Phase {
        if self.stopping.is_some() {
            return Phase::Stopping;
        }
        if self.process.is_some() {
            return if self.ready { Phase::Running } else { Phase::Starting };
        }
        match want {
            Want::Stopped | Want::Removed => Phase::Stopped,
            Want::Running if self.conflict.is_some() || self.unverified.is_some() => Phase::Conflict,
            Want::Running if self.failure.is_some() => Phase::Failed,
            Want::Running if self.crashes.in_crash_loop() => Phase::CrashLoop,
            Want::Running if self.restart_not_before.is_some() => Phase::Backoff,
            Want::Running => Phase::Pending,
        }
    }

    fn message(&self, phase: Phase) -> String {
        let restart_in = || {
            self.restart_at_ms
                .map(|at| {
                    let ms = StatusBoard::millis_until(at);
                    format!("restarting in {:.1}s", ms as f64 / 1000.0)
                })
                .unwrap_or_default()
        };
        let tail = || {
            if self.log_tail.is_empty() {
                String::new()
            } else {
                format!("; last log lines: {}", self.log_tail.join(" | "))
            }
        };
        match phase {
            Phase::Pending => String::new(),
            Phase::Starting if self.loading => "loading the dataset".into(),
            Phase::Starting => match &self.last_probe_error {
                Some(e) => format!("waiting for PONG: {e}"),
                None => "waiting for PONG".into(),
            },
            Phase::Running => String::new(),
            Phase::Stopping => self.stopping.clone().unwrap_or_default(),
            Phase::Stopped => match &self.last_stop {
                Some(stop) => format!("stopped by {}", stop.how),
                None => String::new(),
            },
            Phase::Conflict => match (&self.unverified, &self.conflict) {
                (Some(reason), _) => format!(
                    "the recorded process cannot be verified ({reason}); it is left alone and no second server is started"
                ),
                (None, Some(holder)) => format!("{holder}; it is not an instance of this agent and is left alone"),
                (None, None) => String::new(),
            },
            Phase::Failed => format!("{}; {}", self.failure.clone().unwrap_or_default(), restart_in()),
            Phase::Backoff | Phase::CrashLoop => {
                let exit = self
                    .last_exit
                    .as_ref()
                    .map(|e| e.exit.to_string())
                    .unwrap_or_else(|| "exited".into());
                let prefix = if phase == Phase::CrashLoop {
                    format!("crashed {} times in a row, last: ", self.crashes.consecutive)
                } else {
                    String::new()
                };
                format!("{prefix}{exit}; {}{}", restart_in(), tail())
            }
        }
    }
}

fn desired_of(spec: Option<&InstanceSpec>) -> Desired {
    match spec {
        None => Desired::Removed,
        Some(spec) if spec.state == RunState::Stopped => Desired::Stopped,
        Some(spec) => Desired::Running {
            config_hash: spec.config_hash(),
        },
    }
}

/// Creates the instance's directories and writes its config file atomically.
fn prepare_files(layout: &Layout, rendered: &str) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o750);
    for dir in [&layout.instance_dir, &layout.data_dir] {
        builder
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if let Some(log_dir) = layout.log_file.parent() {
        builder
            .create(log_dir)
            .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    }
    // A restart after a crash usually finds the file as it should be: skipping the
    // write (and its fsyncs) keeps the restart fast.
    if std::fs::read(&layout.config_file).is_ok_and(|current| current == rendered.as_bytes()) {
        return Ok(());
    }
    // 0600: the file may hold the instance's password.
    crate::atomic_file::write(
        &layout.config_file,
        rendered.as_bytes(),
        0o600,
        crate::atomic_file::Durability::UntilReboot,
    )
    .map_err(|e| e.to_string())
}

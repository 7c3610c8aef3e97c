//! One task per instance. The worker owns the instance's process: it adopts it from
//! its record or starts it, notices its exit at once, restarts it with back-off,
//! stops it gracefully, and publishes its status. Each turn of its loop observes,
//! asks the pure planner what to do, does it, and waits for the next event: a new
//! spec, the process's exit, a readiness probe, a timer, or the agent's shutdown.
//!
//! The loop and the crash handling are here; `start` adopts and starts the process,
//! `reconfigure` changes it live, `stop` stops it, `publish` says what it all looks like.

use super::plan::{self, Action, CrashHistory, Desired, Observed};
use crate::config::AgentConfig;
use crate::engine::{self, Engine, EngineKind, Layout, Readiness, Session, Settings, Target};
use crate::events::{Event, EventLog};
use crate::monitoring::monitor::MonitorTarget;
use crate::ports::{self, PortHolder};
use crate::process::{unix_now, unix_now_millis, Adoption, Exit, Launch, Process};
use crate::procfs;
use crate::record::{self, InstanceRecord, RecordError};
use crate::spec::{InstanceSpec, RunState, Secret};
use crate::status::{ExitOutcome, InstanceStatus, Phase, StatusBoard, StopOutcome, Want};
use crate::sys::{self, ChildSetup};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::blocking::{run as blocking, DISK_TIMEOUT};

mod build;
mod publish;
mod reconfigure;
mod restore;
mod start;
mod stop;

use publish::redact;

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
/// A stop request the server refused (e.g. a failing save) is repeated this often
/// until the stop timeout.
const STOP_RETRY: Duration = Duration::from_secs(5);
/// How many log lines the status shows after a crash.
const LOG_TAIL_LINES: usize = 5;
/// Live changes that could not be applied are retried after this, doubling up to
/// `RECONFIGURE_RETRY_MAX`.
const RECONFIGURE_RETRY_FIRST: Duration = Duration::from_secs(1);
const RECONFIGURE_RETRY_MAX: Duration = Duration::from_secs(30);
/// While waiting for a build, the worker also looks again this often (its progress
/// wakes it sooner).
const BUILD_WAIT_RECHECK: Duration = Duration::from_secs(60);

/// What every worker shares.
pub struct WorkerContext {
    pub config: Arc<AgentConfig>,
    pub board: StatusBoard,
    pub events: Arc<EventLog>,
    pub boot_id: String,
    pub monitor: Arc<crate::monitoring::monitor::MonitorContext>,
    pub telemetry: Arc<crate::monitoring::metrics::Telemetry>,
    /// What the instances' backup keepers share.
    pub backups: Arc<crate::backup::BackupContext>,
    /// The engine builds, agent.toml's and the store's.
    pub builds: Arc<crate::artifacts::Builds>,
    /// Every declared instance's spec, as last accepted (read by the host sampler).
    pub declared: watch::Sender<Arc<std::collections::BTreeMap<String, Arc<InstanceSpec>>>>,
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

/// The previous password still works until `until_ms` (milliseconds since the Unix
/// epoch).
struct Grace {
    until_ms: u64,
    /// The previous password, when known (a record written before this was kept
    /// lacks it).
    previous: Option<Secret>,
    /// The process that holds both passwords; another one (a restart during the grace
    /// period) gets the previous one back.
    applied_pid: Option<u32>,
}

/// A stop in progress, for the status while the process is being stopped.
struct Stopping {
    pid: u32,
    port: u16,
    message: String,
}

pub struct Worker {
    name: String,
    ctx: Arc<WorkerContext>,
    specs: watch::Receiver<SpecSlot>,
    shutdown: CancellationToken,
    /// Engine, version and port, from the spec or (for an undeclared instance) its record.
    identity: Option<(EngineKind, String, u16)>,
    process: Option<Process>,
    /// The password the live process runs with (the declared one may be newer).
    auth: Option<Secret>,
    ready: bool,
    loading: bool,
    probe_delay: Duration,
    /// When readiness probing began (start or adoption), for the "ready after" event.
    probe_began: Instant,
    last_probe_error: Option<String>,
    crashes: CrashHistory,
    restart_not_before: Option<Instant>,
    /// The next start follows an unexpected exit and counts as a restart; what the
    /// process that exited ran (while the declared version's build is awaited, the
    /// restart is on that).
    restart_pending: Option<build::Ran>,
    restarts: u64,
    last_exit: Option<ExitOutcome>,
    last_stop: Option<StopOutcome>,
    log_tail: Vec<String>,
    /// The length of the instance's log file when the live process started (0 when
    /// adopted): what it wrote comes after.
    log_offset: u64,
    conflict: Option<PortHolder>,
    /// Delay before the next look at a conflict.
    conflict_recheck: Duration,
    /// The record names a live process the agent cannot verify (see `Adoption`).
    unverified: Option<String>,
    failure: Option<String>,
    /// A difference between the running process and what the agent would start now
    /// that does not restart it (e.g. agent.toml names another binary for the version).
    drift: Option<String>,
    stopping: Option<Stopping>,
    reconciled: bool,
    /// The config hash (and restore source) of the spec last wanted running.
    last_desired_hash: Option<String>,
    /// The process the instance's monitor watches (set while running and ready).
    monitor: watch::Sender<Option<MonitorTarget>>,
    /// What the live process runs with (from its rendered config file, then kept up
    /// to date by live changes); `None` when unknown.
    running_settings: Option<Settings>,
    /// Keys the server refused to change live, for the spec with this config hash:
    /// they need a restart.
    refused: Option<(String, Vec<String>)>,
    reconfigure_not_before: Option<Instant>,
    reconfigure_delay: Duration,
    /// The worker's own connection to the live process, for changes and drift checks.
    admin: Option<Session>,
    grace: Option<Grace>,
    next_drift_check: Option<Instant>,
    /// Why the last drift check could not talk to the server (logged once).
    drift_failure: Option<String>,
    /// Keys whose drift could not be set back, already reported for this process.
    uncorrected: std::collections::BTreeSet<String>,
    /// When the agent last changed the process (started, adopted, reconfigured it),
    /// in milliseconds since the Unix epoch: a health probe from before says nothing
    /// about what it runs with now.
    changed_at_ms: u64,
    /// The last restore of the instance's data, or the last failed attempt (from
    /// `restore.json`, read once a spec names a `restore_from`).
    restore: Option<crate::status::RestoreOutcome>,
    restore_loaded: bool,
    /// The wait for the spec's build from the artifact store, while there is one.
    build_wait: Option<crate::status::BuildWait>,
    /// That build's progress, to wake on.
    build_changes: Option<watch::Receiver<crate::artifacts::BuildState>>,
    /// The progress of the build a pending restart ran while it is being looked for,
    /// to wake on (for one turn).
    ran_changes: Option<watch::Receiver<crate::artifacts::BuildState>>,
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
            auth: None,
            ready: false,
            loading: false,
            probe_delay: PROBE_FIRST,
            probe_began: Instant::now(),
            last_probe_error: None,
            crashes: CrashHistory::default(),
            restart_not_before: None,
            restart_pending: None,
            restarts: 0,
            last_exit: None,
            last_stop: None,
            log_tail: Vec::new(),
            log_offset: 0,
            conflict: None,
            conflict_recheck: CONFLICT_RECHECK_FIRST,
            unverified: None,
            failure: None,
            drift: None,
            stopping: None,
            reconciled: false,
            last_desired_hash: None,
            monitor: watch::Sender::new(None),
            running_settings: None,
            refused: None,
            reconfigure_not_before: None,
            reconfigure_delay: RECONFIGURE_RETRY_FIRST,
            admin: None,
            grace: None,
            next_drift_check: None,
            drift_failure: None,
            uncorrected: Default::default(),
            changed_at_ms: 0,
            restore: None,
            restore_loaded: false,
            build_wait: None,
            build_changes: None,
            ran_changes: None,
        }
    }

    fn emit(&self, event: Event) {
        self.ctx.events.emit(&self.name, event);
    }

    fn instance_dir(&self) -> PathBuf {
        self.ctx.config.instances_dir().join(&self.name)
    }

    fn log_file(&self) -> PathBuf {
        self.ctx.config.instances.log_dir.join(format!("{}.log", self.name))
    }

    /// Writes `record` as the instance's record (file work off the runtime).
    async fn persist_record(&self, record: InstanceRecord) -> Result<(), String> {
        let dir = self.instance_dir();
        blocking("write the instance record", move || record::write(&dir, &record))
            .await
            .and_then(|r| r.map_err(|e| e.to_string()))
    }

    /// Removes the instance's records; a failure is logged with `why` they went.
    async fn remove_records(&self, why: &str) {
        let dir = self.instance_dir();
        let removed = blocking("remove the instance record", move || record::remove(&dir))
            .await
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(error) = removed {
            tracing::warn!(instance = %self.name, %error, why, "Cannot remove the instance record.");
        }
    }

    /// The worker's loop, until its instance is removed and stopped or the agent shuts
    /// down. The worker is boxed, and the loop awaits its rare, large steps (adopt,
    /// start, stop, changes, upkeep) boxed too, so that what stays allocated for each
    /// instance between events is the worker and its wait, not room for the largest of
    /// those steps: at a thousand instances that is megabytes.
    pub async fn run(mut self: Box<Self>) {
        // The monitor ends when this worker (and so `self.monitor`) is dropped.
        tokio::spawn(crate::monitoring::monitor::run(
            self.name.clone(),
            self.monitor.subscribe(),
            self.ctx.monitor.clone(),
        ));
        // So does the backup keeper.
        tokio::spawn(crate::backup::run(
            self.name.clone(),
            self.specs.clone(),
            self.monitor.subscribe(),
            self.ctx.backups.clone(),
        ));
        let initial = self.specs.borrow().clone();
        Box::pin(self.adopt(initial.as_ref())).await;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            // Set by `fallback_spec` for the wait of the turn that asked.
            self.ran_changes = None;
            let spec = self.specs.borrow_and_update().clone();
            if let Some(spec) = &spec {
                self.identity = Some((spec.engine, spec.version.clone(), spec.port));
            }
            let desired = desired_of(spec.as_deref());
            if !matches!(desired, Desired::Running { .. }) {
                // Not wanted running: the next start is a deliberate one, not a restart
                // after the last crash.
                self.restart_pending = None;
            }
            if let (Desired::Running { config_hash }, Some(spec)) = (&desired, &spec) {
                // A changed spec gets a fresh start instead of waiting out a back-off
                // earned by the old one (which may be exactly what was fixed); so does
                // another source to restore from.
                let starts_from = format!("{config_hash} {:?}", spec.backup.restore_from);
                if self.last_desired_hash.as_ref().is_some_and(|h| *h != starts_from) {
                    self.restart_not_before = None;
                    self.crashes.reset();
                }
                self.last_desired_hash = Some(starts_from);
            }
            if self.unverified.is_some() && self.process.is_none() {
                // Maybe the agent can read the process now (or it is gone).
                Box::pin(self.adopt(spec.as_ref())).await;
            }
            if spec.as_ref().is_some_and(|s| s.backup.restore_from.is_some()) && !self.restore_loaded {
                Box::pin(self.load_restore()).await;
            }
            let now = Instant::now();
            let blocked = self.unverified.is_some() || self.check_ports(spec.as_deref(), &desired, now).await;
            let observed = Observed {
                running: self.live_view(spec.as_deref(), &desired),
                restart_not_before: self.restart_not_before,
                blocked,
            };
            let mut wake_at = None;
            // A start or a change waits for the spec's build; a running process keeps
            // running meanwhile, and stops are never held up.
            let runs_declared = |spec: &InstanceSpec| {
                self.process
                    .as_ref()
                    .is_some_and(|p| p.record().engine == spec.engine && p.record().version == spec.version)
            };
            let mut action = plan::reconcile(&desired, &observed, now);
            // A restart of a process that runs the declared version needs its build
            // still at hand too (it may have been refused since).
            let restarts = matches!(action, Action::Stop(plan::StopReason::Restart(_)));
            let build_wait = match (&desired, &spec) {
                (Desired::Running { .. }, Some(spec)) if restarts || !runs_declared(spec) => self.build_gate(spec),
                _ => {
                    self.build_wait = None;
                    self.build_changes = None;
                    None
                }
            };
            // What a start starts: the declared spec, or after a crash while its build
            // is awaited, the same at the version the process ran.
            let mut start_spec = spec.clone();
            if let Some(retry_at) = build_wait {
                let fallback = match (&action, &spec) {
                    (Action::Start, Some(spec)) => self.fallback_spec(spec),
                    _ => None,
                };
                if let Some(fallback) = fallback {
                    start_spec = Some(fallback);
                } else if matches!(action, Action::Start | Action::Stop(plan::StopReason::Restart(_))) {
                    // Only what would need the new build waits; the running process
                    // keeps its upkeep (drift, password grace, stable-run check).
                    let upkeep = match (&spec, &self.process) {
                        (Some(spec), Some(_)) => Box::pin(self.upkeep(spec)).await,
                        _ => None,
                    };
                    let recheck = retry_at.unwrap_or(now + BUILD_WAIT_RECHECK);
                    action = Action::WaitUntil(earliest(Some(recheck), upkeep).unwrap_or(recheck));
                }
                wake_at = retry_at;
            }
            match action {
                Action::Idle => {
                    let upkeep = match &spec {
                        Some(spec) => Box::pin(self.upkeep(spec)).await,
                        None => None,
                    };
                    wake_at = earliest(wake_at, earliest(self.stable_run_check(), upkeep));
                }
                Action::Reconfigure => {
                    if let Some(spec) = &spec {
                        Box::pin(self.reconfigure(spec)).await;
                    }
                    continue;
                }
                Action::Start => {
                    if let Some(spec) = &start_spec {
                        Box::pin(self.start(spec)).await;
                    }
                    if self.process.is_none() {
                        // The start failed; the back-off decides when to try again.
                        continue;
                    }
                }
                Action::WaitUntil(at) => wake_at = Some(at),
                Action::Conflict => {
                    wake_at = Some(now + self.conflict_recheck);
                    self.conflict_recheck = (self.conflict_recheck * 2).min(CONFLICT_RECHECK_MAX);
                }
                Action::Stop(reason) => {
                    if Box::pin(self.stop(reason, spec.as_deref())).await {
                        continue;
                    }
                    return;
                }
                Action::Finish => {
                    self.ctx.board.remove(&self.name);
                    return;
                }
            }
            self.publish(&desired);
            self.ctx
                .telemetry
                .reconcile_seconds
                .observe(now.elapsed().as_secs_f64());

            match self.next_wake(wake_at).await {
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
        let build = async {
            match self.build_changes.as_mut() {
                // A sender gone (the entry was swept) is a change too: ask again.
                Some(changes) => {
                    let _ = changes.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        let ran_build = async {
            match self.ran_changes.as_mut() {
                Some(changes) => {
                    // Unlike the awaited build's, this one is not asked for again at
                    // every turn: a sender gone (the entry was swept) wakes no more.
                    if changes.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
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
            _ = build => Wake::Timer,
            _ = ran_build => Wake::Timer,
            _ = timer => Wake::Timer,
        }
    }

    /// Where and as whom the agent talks to the live process.
    fn target(&self, process: &Process) -> Target {
        let record = process.record();
        let bind = self.ctx.config.instances.bind.first().copied();
        let addr = record
            .address
            .unwrap_or_else(|| Target::address(bind.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()), record.port));
        Target {
            addr,
            password: self.auth.clone(),
            timeout: CALL_TIMEOUT,
            pid: process.pid(),
        }
    }

    /// A readiness probe after the current probe delay, while the process is not ready.
    fn readiness_probe(&self) -> impl std::future::Future<Output = Readiness> + 'static {
        let target = match (&self.process, self.ready) {
            (Some(process), false) => {
                engine::for_kind(process.record().engine).map(|engine| (engine, self.target(process)))
            }
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

    fn schedule_restart(&mut self, delay: Duration) {
        self.restart_not_before = Some(Instant::now() + delay);
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
        // The record stays: the next start overwrites it, and until then it carries the
        // restart counter and crash count to an agent that restarts in between (its pid
        // fails the ownership proof, so it cannot cause harm).
        self.last_exit = Some(ExitOutcome { exit, at: unix_now() });
        self.log_tail = procfs::tail_lines(&self.log_file(), self.log_offset, LOG_TAIL_LINES)
            .unwrap_or_default()
            .into_iter()
            .map(|line| redact(&line, self.auth.as_ref()))
            .collect();
        self.ready = false;
        self.loading = false;
        self.forget_live_state();
        self.restart_pending = Some(build::Ran::of(process.record()));
        let delay = self.crashes.on_crash(ran_for, fastrand::f64());
        self.schedule_restart(delay);
    }

    fn on_probe(&mut self, readiness: Readiness) {
        let Some(pid) = self.process.as_ref().map(Process::pid) else {
            return;
        };
        match readiness {
            Readiness::Ready => {
                self.ready = true;
                self.loading = false;
                self.last_probe_error = None;
                self.conflict = None;
                self.log_tail.clear();
                self.emit(Event::Ready {
                    pid,
                    after: self.probe_began.elapsed(),
                });
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

    /// While a process that crashed before runs and is ready: when to forget the
    /// earlier crashes (a stable run).
    fn stable_run_check(&mut self) -> Option<Instant> {
        let process = self
            .process
            .as_ref()
            .filter(|_| self.ready && self.crashes.consecutive > 0)?;
        let ran = process.running_for();
        if ran >= CrashHistory::STABLE_AFTER {
            self.crashes.reset();
            return None;
        }
        Some(Instant::now() + (CrashHistory::STABLE_AFTER - ran))
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instance has a worker, and most sit waiting between events: the worker is
    /// boxed and its rare steps too, so that the loop holds little more than its wait
    /// (5.5 KB with the worker inside, twice over, and room for a start; 1.4 KB at
    /// this writing, beside the boxed worker).
    #[tokio::test]
    async fn a_waiting_worker_is_small() {
        let config = Arc::new(crate::spec::tests::test_config());
        let board = StatusBoard::default();
        let events = Arc::new(EventLog::new(10));
        let ctx = Arc::new(WorkerContext {
            builds: crate::artifacts::Builds::new(config.clone()),
            backups: Arc::new(crate::backup::BackupContext::new(
                config.clone(),
                board.clone(),
                events.clone(),
            )),
            telemetry: Arc::default(),
            declared: watch::Sender::new(Arc::default()),
            config,
            board: board.clone(),
            events: events.clone(),
            boot_id: "boot".into(),
            monitor: Arc::new(crate::monitoring::monitor::MonitorContext {
                board,
                observations: Default::default(),
                events,
                health_interval: Duration::from_secs(1),
                metrics_interval: Duration::from_secs(1),
                origin: Instant::now(),
            }),
        });
        let (_specs_tx, specs) = watch::channel(None);
        let worker = Box::new(Worker::new("a".into(), ctx, specs, CancellationToken::new()));
        let size = std::mem::size_of_val(&worker.run());
        // Room for another compiler's layout; a step awaited unboxed again goes past it.
        assert!(size <= 2048, "a worker's loop is {size} bytes");
    }
}

//! One task per instance. The worker owns the instance's process: it adopts it from
//! its record or starts it, notices its exit at once, restarts it with back-off,
//! stops it gracefully, and publishes its status. Each turn of its loop observes,
//! asks the pure planner what to do, does it, and waits for the next event: a new
//! spec, the process's exit, a readiness probe, a timer, or the agent's shutdown.

use super::plan::{self, Action, CrashHistory, Desired, Observed};
use crate::config::AgentConfig;
use crate::engine::{self, Engine, EngineKind, Layout, Readiness, Session, Settings, Target};
use crate::events::{Event, EventLog};
use crate::monitor::MonitorTarget;
use crate::ports::{self, PortHolder};
use crate::process::{unix_now, unix_now_millis, Adoption, Exit, Launch, Process};
use crate::procfs;
use crate::record::{self, InstanceRecord, RecordError};
use crate::spec::{InstanceSpec, RunState, Secret};
use crate::status::{ExitOutcome, InstanceStatus, Phase, StatusBoard, StopOutcome, Want};
use crate::sys::{self, ChildSetup};
use std::path::PathBuf;

mod reconfigure;
mod stop;
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
/// Limit for file work (directories, config, record, /proc scans).
const DISK_TIMEOUT: Duration = Duration::from_secs(10);
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

/// What every worker shares.
pub struct WorkerContext {
    pub config: Arc<AgentConfig>,
    pub board: StatusBoard,
    pub events: Arc<EventLog>,
    pub boot_id: String,
    pub monitor: Arc<crate::monitor::MonitorContext>,
    pub telemetry: Arc<crate::metrics::Telemetry>,
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
    /// The next start follows an unexpected exit and counts as a restart.
    restart_pending: bool,
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
            restart_pending: false,
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

    pub async fn run(mut self) {
        // The monitor ends when this worker (and so `self.monitor`) is dropped.
        tokio::spawn(crate::monitor::run(
            self.name.clone(),
            self.monitor.subscribe(),
            self.ctx.monitor.clone(),
        ));
        let initial = self.specs.borrow().clone();
        self.adopt(initial.as_ref()).await;
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
                    self.crashes.reset();
                }
                self.last_desired_hash = Some(config_hash.clone());
            }
            if self.unverified.is_some() && self.process.is_none() {
                // Maybe the agent can read the process now (or it is gone).
                self.adopt(spec.as_ref()).await;
            }
            let now = Instant::now();
            let blocked = self.unverified.is_some() || self.check_ports(spec.as_deref(), &desired, now).await;
            let observed = Observed {
                running: self.live_view(spec.as_deref(), &desired),
                restart_not_before: self.restart_not_before,
                blocked,
            };
            let mut wake_at = None;
            match plan::reconcile(&desired, &observed, now) {
                Action::Idle => {
                    let upkeep = match &spec {
                        Some(spec) => self.upkeep(spec).await,
                        None => None,
                    };
                    wake_at = earliest(self.stable_run_check(), upkeep);
                }
                Action::Reconfigure => {
                    if let Some(spec) = &spec {
                        self.reconfigure(spec).await;
                    }
                    continue;
                }
                Action::Start => {
                    if let Some(spec) = &spec {
                        self.start(spec).await;
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
                    if self.stop(reason, spec.as_deref()).await {
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

    /// Adopts the instance's process from its record, if the record proves it ours.
    async fn adopt(&mut self, spec: Option<&Arc<InstanceSpec>>) {
        let dir = self.instance_dir();
        let read = {
            let dir = dir.clone();
            blocking("read the instance record", move || record::read(&dir)).await
        };
        let record = match read {
            Ok(Ok(Some(record))) => record,
            Ok(Ok(None)) => return,
            Ok(Err(RecordError::Invalid { path, source })) => {
                self.emit(Event::RecordUnreadable {
                    error: format!("{} is not a valid record: {source}", path.display()),
                });
                // Keep it for a human to look at, out of the way of the next start.
                let _ = std::fs::rename(&path, path.with_extension("json.unreadable"));
                return;
            }
            // Cannot read it now (EMFILE, EIO, a hung disk…): keep it, look again.
            Ok(Err(error)) => return self.set_unverified(error.to_string()),
            Err(error) => return self.set_unverified(error),
        };
        self.restarts = record.restarts;
        if self.identity.is_none() {
            self.identity = Some((record.engine, record.version.clone(), record.port));
        }
        let boot_id = self.ctx.boot_id.clone();
        let adoption = {
            let record = record.clone();
            blocking("verify the recorded process", move || Process::adopt(&record, &boot_id)).await
        };
        match adoption {
            Ok(Adoption::Adopted(mut process)) => {
                // A process that runs exactly the declared spec runs its epoch and
                // limits too (records written before they were recorded lack them).
                if let Some(spec) = spec.filter(|s| s.config_hash() == record.config_hash) {
                    let nofile = engine::for_kind(spec.engine).and_then(|e| e.child_nofile(spec));
                    let record = process.record_mut();
                    record.restart_epoch = spec.restart_epoch;
                    record.nofile = nofile;
                    record.oom_score_adj = spec.limits.oom_score_adj;
                }
                if process.pid() != record.pid {
                    // A start the previous agent did not finish recording: the process
                    // was found by the record's launch mark; its record now names it.
                    if let Err(error) = self.persist_record(process.record().clone()).await {
                        tracing::warn!(instance = %self.name, %error, "Cannot complete the record of an adopted process; its launch mark still finds it.");
                    }
                }
                self.emit(Event::Adopted {
                    pid: process.pid(),
                    running_for: process.running_for(),
                });
                self.changed_at_ms = unix_now_millis();
                self.running_settings = self.rendered_settings(&process).await;
                let declared = spec.and_then(|s| s.password.clone());
                self.auth = self
                    .running_settings
                    .as_ref()
                    .map_or(declared.clone(), |s| s.password.clone().or(declared));
                self.grace = record.password_grace_until_ms.map(|until_ms| Grace {
                    until_ms,
                    previous: record.password_grace_previous.clone().map(|p| p.0),
                    applied_pid: Some(process.pid()),
                });
                self.drift = self.binary_drift(&process);
                self.crashes.consecutive = record.consecutive_crashes;
                self.process = Some(*process);
                self.log_offset = 0;
                self.unverified = None;
                self.ready = false;
                self.probe_delay = Duration::ZERO;
                self.probe_began = Instant::now();
            }
            Ok(Adoption::Gone(reason)) => {
                self.unverified = None;
                let rebooted = record.boot_id != self.ctx.boot_id;
                let wanted = spec.is_some_and(|s| s.state == RunState::Running);
                self.emit(Event::RecordStale { reason });
                // A process the previous agent was stopping did not crash, and neither
                // did a start it did not get to finish.
                if !rebooted && wanted && !record.stopping && !record.is_pending() {
                    // It died while no agent was watching, or while this agent was
                    // between two starts: an unexpected exit like any other. How long
                    // it ran is not known; its age is the best guess.
                    self.crashes.consecutive = record.consecutive_crashes;
                    let age = Duration::from_secs(unix_now().saturating_sub(record.started_at));
                    let delay = self.crashes.on_crash(age, fastrand::f64());
                    self.restart_pending = true;
                    self.schedule_restart(delay);
                }
                self.remove_records("its process is gone").await;
            }
            Ok(Adoption::Unverifiable(reason)) => self.set_unverified(reason),
            Err(error) => self.set_unverified(error),
        }
    }

    fn set_unverified(&mut self, reason: String) {
        if self.unverified.as_ref() != Some(&reason) {
            self.emit(Event::RecordUnverifiable { reason: reason.clone() });
        }
        self.unverified = Some(reason);
    }

    /// What an adopted process runs with: its rendered config file says so (an
    /// adopted process may have been started or reconfigured for an older spec).
    async fn rendered_settings(&self, process: &Process) -> Option<Settings> {
        let engine = engine::for_kind(process.record().engine)?;
        let path = self.instance_dir().join(engine.config_file_name());
        match blocking("read the rendered config", move || std::fs::read_to_string(path)).await {
            Ok(Ok(text)) => Some(engine.rendered_settings(&text)),
            Ok(Err(error)) => {
                tracing::warn!(instance = %self.name, %error, "Cannot read the rendered config; live changes will set every key again.");
                None
            }
            Err(error) => {
                tracing::warn!(instance = %self.name, %error, "Cannot read the rendered config; live changes will set every key again.");
                None
            }
        }
    }

    /// Whether agent.toml now names another binary for the version an adopted process
    /// runs; that does not restart it (invariant 2), but the status says so.
    fn binary_drift(&self, process: &Process) -> Option<String> {
        let record = process.record();
        let allowed = self.ctx.config.binary(record.engine, &record.version)?;
        let allowed = std::fs::canonicalize(allowed).unwrap_or_else(|_| allowed.to_path_buf());
        (allowed != record.executable).then(|| {
            format!(
                "runs {}, agent.toml now allows {} for version {:?}: it applies at the next restart (raise restart_epoch)",
                record.executable.display(),
                allowed.display(),
                record.version
            )
        })
    }

    /// Whether a foreign process holds one of the ports, checked only when a start is
    /// about to happen. The bind probe is cheap; naming the holder is not, so it is done
    /// once per conflict, off the runtime's threads.
    async fn check_ports(&mut self, spec: Option<&InstanceSpec>, desired: &Desired, now: Instant) -> bool {
        let due = self.restart_not_before.is_none_or(|at| at <= now);
        let (Some(spec), Desired::Running { .. }, None, true) = (spec, desired, &self.process, due) else {
            return false;
        };
        let taken: Vec<u16> = engine::for_kind(spec.engine)
            .map(|e| e.ports(spec.port))
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !ports::is_free(*p))
            .collect();
        let holder = match (taken.first(), &self.conflict) {
            (None, _) => None,
            (Some(port), Some(known)) if known.port == *port => Some(known.clone()),
            (Some(&port), _) => blocking("find the holder of a port", move || ports::holder(port))
                .await
                .unwrap_or(Some(PortHolder {
                    port,
                    pid: None,
                    comm: None,
                })),
        };
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
        let after_crash = self.restart_pending;
        let layout = self.layout(engine);
        let address = engine
            .client_address(&config.instances.bind)
            .map(|ip| Target::address(ip, spec.port));
        let not_before_ticks = match procfs::ticks_since_boot() {
            // The uptime is rounded down to hundredths of a second: one tick of margin.
            Ok(ticks) => ticks.saturating_sub(1),
            Err(error) => return self.start_failed(format!("cannot read /proc/uptime: {error}")),
        };
        let base = InstanceRecord {
            pid: 0,
            start_ticks: 0,
            boot_id: self.ctx.boot_id.clone(),
            executable: binary.clone(),
            config_hash: spec.config_hash(),
            started_at: 0,
            restarts: self.restarts + u64::from(after_crash),
            consecutive_crashes: self.crashes.consecutive,
            address,
            engine: spec.engine,
            version: spec.version.clone(),
            port: spec.port,
            restart_epoch: spec.restart_epoch,
            nofile: engine.child_nofile(spec),
            oom_score_adj: spec.limits.oom_score_adj,
            // A grace period outlives a restart: the record carries it to a next agent.
            password_grace_until_ms: self.grace.as_ref().map(|g| g.until_ms),
            password_grace_previous: self
                .grace
                .as_ref()
                .and_then(|g| g.previous.clone())
                .map(record::StoredSecret),
            stopping: false,
            launch: Some(record::LaunchMark {
                working_dir: layout.data_dir.clone(),
                not_before_ticks,
            }),
        };
        // A record that finds the process goes to disk before the spawn (see `record`):
        // an agent killed at any moment from here on leaves a record that finds it.
        let layout = match self.write_config(engine, spec, layout, Some(base.clone())).await {
            Ok(layout) => layout,
            Err(error) => {
                self.emit(Event::ConfigWriteFailed { error: error.clone() });
                return self.start_failed(error);
            }
        };

        let launch = Launch {
            binary: &binary,
            args: engine.args(&layout),
            working_dir: &layout.data_dir,
            log_file: &layout.log_file,
            env: engine.env(),
            setup: ChildSetup {
                nofile: engine.child_nofile(spec),
                oom_score_adj: spec.limits.oom_score_adj,
            },
        };
        // What the process writes to its log comes after this; a crash shows only that.
        // (A stat, like the spawn itself, does not wait on anything slow.)
        let log_offset = std::fs::metadata(&layout.log_file).map_or(0, |m| m.len());
        let mut process = match Process::spawn(launch, &self.ctx.boot_id, base) {
            Ok(process) => process,
            Err(error) => {
                // Nothing runs: the record written for the start has nothing to find.
                self.remove_records("the start failed").await;
                return self.start_failed(error.to_string());
            }
        };
        // The record is the proof of ownership a later agent needs. Without it, the
        // process would become a stranger on its own port: better not to run it.
        if let Err(error) = self.persist_record(process.record().clone()).await {
            let _ = process.signal(sys::SIGKILL);
            let _ = tokio::time::timeout(DISK_TIMEOUT, process.wait()).await;
            return self.start_failed(format!("{error}; the started process was killed"));
        }
        self.restarts = process.record().restarts;
        self.restart_pending = false;
        self.emit(Event::Started {
            pid: process.pid(),
            after_crash,
        });
        self.process = Some(process);
        self.log_offset = log_offset;
        self.auth = spec.password.clone();
        self.forget_live_state();
        self.running_settings = Some(engine.settings(spec));
        self.drift = None;
        self.ready = false;
        self.loading = false;
        self.probe_delay = PROBE_FIRST;
        self.probe_began = Instant::now();
        self.last_probe_error = None;
        self.failure = None;
        self.restart_not_before = None;
    }

    /// Where the instance's files are, for `engine`.
    fn layout(&self, engine: &dyn Engine) -> Layout {
        let config = &self.ctx.config;
        engine::layout(
            engine,
            &config.instances_dir(),
            &config.instances.log_dir,
            &self.name,
            &config.instances.bind,
        )
    }

    /// Creates the instance's directories and writes its config file for `spec` (and,
    /// before a start, the `pending` record) in `layout`, with the interface it binds to
    /// found; returns the layout.
    async fn write_config(
        &self,
        engine: &'static dyn Engine,
        spec: &InstanceSpec,
        mut layout: Layout,
        pending: Option<InstanceRecord>,
    ) -> Result<Layout, String> {
        let spec = spec.clone();
        blocking("write the instance's config", move || {
            if engine.binds_by_interface() {
                layout.bind_interface = crate::host::bind_interface(&layout.bind)?;
            }
            prepare_files(engine, &spec, &layout)?;
            if let Some(pending) = pending.filter(|p| !record_marks(&layout.instance_dir, p)) {
                record::write_launch(&layout.instance_dir, &pending)
                    .map_err(|e| format!("{e}; the server is not started without its record"))?;
            }
            Ok(layout)
        })
        .await?
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
        self.restart_pending = true;
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

    fn publish_current(&mut self) {
        let spec = self.specs.borrow().clone();
        self.publish(&desired_of(spec.as_deref()));
    }

    /// Publishes the status derived from what the worker knows.
    fn publish(&mut self, desired: &Desired) {
        let Some((engine, version, declared_port)) = self.identity.clone() else {
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
        // The port of the live process, which may differ from a newly declared one.
        let port = self
            .process
            .as_ref()
            .map(|p| p.record().port)
            .or(self.stopping.as_ref().map(|s| s.port))
            .unwrap_or(declared_port);
        let next_restart_at_ms = match (&self.process, want, self.restart_not_before) {
            (None, Want::Running, Some(at)) => {
                Some(unix_now_millis() + at.saturating_duration_since(Instant::now()).as_millis() as u64)
            }
            _ => None,
        };
        let stop_timeout = {
            let spec = self.specs.borrow().clone();
            self.stop_timeout(spec.as_deref(), engine::for_kind(engine))
        };
        let status = InstanceStatus {
            name: self.name.clone(),
            engine,
            version,
            port,
            want,
            role: self.specs.borrow().as_deref().map(crate::status::Role::of),
            phase,
            ready: self.ready && self.process.is_some(),
            pid: self
                .process
                .as_ref()
                .map(Process::pid)
                .or(self.stopping.as_ref().map(|s| s.pid)),
            restarts: self.restarts,
            consecutive_crashes: self.crashes.consecutive,
            started_at: self.process.as_ref().map(|p| p.record().started_at),
            uptime_seconds: None,
            last_exit: self.last_exit.clone(),
            last_stop: self.last_stop.clone(),
            next_restart_at_ms,
            reconciled: self.reconciled,
            stop_timeout_seconds: stop_timeout.timeout.as_secs(),
            stop_timeout_reason: stop_timeout.reason,
            message: self.message(phase),
            exposure: engine::for_kind(engine).and_then(|e| engine::exposure(e, port, &self.ctx.config.instances.bind)),
            health: None,
        };
        self.ctx.board.publish(status);
        self.update_monitor();
    }

    /// Points the monitor at the live process once it is ready, and away from it
    /// otherwise.
    fn update_monitor(&self) {
        let next = match (&self.process, self.ready, self.stopping.is_some()) {
            (Some(process), true, false) => engine::for_kind(process.record().engine).map(|engine| MonitorTarget {
                engine,
                target: self.target(process),
                declared: self
                    .specs
                    .borrow()
                    .as_deref()
                    .map_or(crate::status::Role::Master, crate::status::Role::of),
            }),
            _ => None,
        };
        self.monitor.send_if_modified(|current| {
            let same = match (current.as_ref(), next.as_ref()) {
                (Some(a), Some(b)) => a.same(b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                *current = next;
            }
            !same
        });
    }

    fn phase(&self, want: Want) -> Phase {
        if self.stopping.is_some() {
            return Phase::Stopping;
        }
        if self.process.is_some() {
            return if self.ready { Phase::Running } else { Phase::Starting };
        }
        if self.unverified.is_some() {
            return Phase::Conflict;
        }
        match want {
            Want::Stopped | Want::Removed => Phase::Stopped,
            Want::Running if self.conflict.is_some() => Phase::Conflict,
            Want::Running if self.failure.is_some() => Phase::Failed,
            Want::Running if self.crashes.in_crash_loop() => Phase::CrashLoop,
            Want::Running if self.restart_not_before.is_some() => Phase::Backoff,
            Want::Running => Phase::Pending,
        }
    }

    fn message(&self, phase: Phase) -> String {
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
            Phase::Running => {
                let grace = self.grace.as_ref().map(|g| {
                    let until = std::time::UNIX_EPOCH + Duration::from_millis(g.until_ms);
                    let note = self
                        .process
                        .as_ref()
                        .and_then(|p| engine::for_kind(p.record().engine))
                        .and_then(|e| e.password_grace_note())
                        .map_or(String::new(), |note| format!(" ({note})"));
                    format!(
                        "password grace period: the previous password keeps working until {}{note}",
                        humantime::format_rfc3339_seconds(until)
                    )
                });
                [self.drift.clone(), grace].into_iter().flatten().collect::<Vec<_>>().join("; ")
            }
            Phase::Stopping => self.stopping.as_ref().map(|s| s.message.clone()).unwrap_or_default(),
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
            Phase::Failed => format!(
                "start failed: {}; retrying with back-off",
                self.failure.clone().unwrap_or_default()
            ),
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
                format!("{prefix}{exit}; waiting to restart{}", tail())
            }
        }
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

/// Runs file or /proc work off the runtime's threads, with a time limit. The error
/// says what could not be done.
async fn blocking<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    match tokio::time::timeout(DISK_TIMEOUT, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(join)) => Err(format!("cannot {what}: {join}")),
        Err(_) => Err(format!(
            "cannot {what}: no answer within {}s (hung disk?)",
            DISK_TIMEOUT.as_secs()
        )),
    }
}

/// Replaces the password in a log line: redis-server echoes offending config lines.
fn redact(line: &str, password: Option<&Secret>) -> String {
    match password {
        Some(p) if !p.expose().is_empty() => line.replace(p.expose(), "<redacted>"),
        _ => line.to_string(),
    }
}

/// Whether the record on disk already finds the process a start with `pending` is
/// about to spawn, so that the start need not write one first: the record of a process
/// that is gone (after a crash) whose launch mark names the same data directory and
/// executable (see `Process::adopt`). A crash restart then costs no extra write.
fn record_marks(instance_dir: &std::path::Path, pending: &InstanceRecord) -> bool {
    let Ok(Some(on_disk)) = record::read(instance_dir) else {
        return false;
    };
    let same_binary = || {
        let canonical = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        canonical(&on_disk.executable) == canonical(&pending.executable)
    };
    !on_disk.is_pending()
        && on_disk.boot_id == pending.boot_id
        && on_disk.launch.as_ref().map(|m| &m.working_dir) == pending.launch.as_ref().map(|m| &m.working_dir)
        && same_binary()
}

/// Creates the instance's directories (and the engine's own in its data directory)
/// and writes its config file for `spec` atomically, unless it already says that.
fn prepare_files(engine: &dyn Engine, spec: &InstanceSpec, layout: &Layout) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o750);
    let log_dir = layout.log_file.parent().unwrap_or(&layout.instance_dir);
    let own = [
        layout.instance_dir.clone(),
        layout.data_dir.clone(),
        log_dir.to_path_buf(),
    ];
    for dir in own.into_iter().chain(engine.data_dirs(layout)) {
        builder
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // The server may have written into its file (Pika, about its replication).
    let previous = match std::fs::read_to_string(&layout.config_file) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(format!("cannot read {}: {error}", layout.config_file.display())),
    };
    let rendered = engine.render_config(spec, layout, previous.as_deref());
    // A restart after a crash usually finds the file as it should be: skipping the
    // write keeps the restart fast.
    if previous.as_deref() == Some(rendered.as_str()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_log_lines() {
        let pw = Secret::new("s3cret");
        assert_eq!(
            redact(">>> 'requirepass \"s3cret\" x'", Some(&pw)),
            ">>> 'requirepass \"<redacted>\" x'"
        );
        assert_eq!(redact("nothing here", Some(&pw)), "nothing here");
        assert_eq!(redact("s3cret", None), "s3cret");
    }
}

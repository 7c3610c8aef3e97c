//! One monitor task per instance, beside its worker. While the worker says the process
//! runs and is ready, the monitor keeps one authenticated connection to it and every
//! `health_interval` sends PING and asks for the INFO fields health needs; every
//! `metrics_interval` that INFO is the full one, and the process is read from /proc.
//! The verdict goes to the status board, the sample to the observations store.
//!
//! The monitor never changes anything: it only looks. A broken connection is dropped
//! and opened again with back-off, and each probe is bounded by the health interval,
//! so a stopped (SIGSTOP) server turns unhealthy instead of stalling the monitor.

use crate::engine::{Depth, Engine, Session, Target};
use crate::events::{Event, EventLog};
use crate::monitoring::health::{self, Probe};
use crate::monitoring::observations::{InstanceMetrics, Observations};
use crate::process::unix_now_millis;
use crate::status::{Health, Role, StatusBoard};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The shortest time a probe waits for an answer, whatever the interval.
const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(100);

/// Longest wait between two connection attempts to an instance that refuses them.
const RECONNECT_MAX: Duration = Duration::from_secs(8);

/// What the worker hands its monitor: the live process to watch.
#[derive(Clone)]
pub struct MonitorTarget {
    pub engine: &'static dyn Engine,
    pub target: Target,
    pub declared: Role,
}

impl MonitorTarget {
    /// Whether `other` is the same process reached the same way.
    pub fn same(&self, other: &MonitorTarget) -> bool {
        self.target.pid == other.target.pid
            && self.target.addr == other.target.addr
            && self.target.password == other.target.password
            && self.declared == other.declared
            && self.engine.kind() == other.engine.kind()
    }
}

/// What every monitor shares.
pub struct MonitorContext {
    pub board: StatusBoard,
    pub observations: Observations,
    pub events: Arc<EventLog>,
    pub health_interval: Duration,
    pub metrics_interval: Duration,
    /// The beat every monitor ticks on.
    pub origin: Instant,
}

/// The first multiple of `interval` after `origin` that is still ahead.
pub fn next_beat(origin: Instant, interval: Duration) -> Instant {
    let now = Instant::now();
    let interval_ns = interval.as_nanos().max(1);
    let since = now.saturating_duration_since(origin).as_nanos();
    let beats = since / interval_ns + 1;
    let ahead = u64::try_from(beats * interval_ns).unwrap_or(u64::MAX);
    origin + Duration::from_nanos(ahead)
}

/// Runs until the worker drops its end of `targets`.
pub async fn run(name: String, mut targets: watch::Receiver<Option<MonitorTarget>>, ctx: Arc<MonitorContext>) {
    loop {
        let current = targets.borrow_and_update().clone();
        match current {
            Some(target) => watch_process(&name, &target, &mut targets, &ctx).await,
            None => forget(&name, &ctx),
        }
        if targets.changed().await.is_err() {
            forget(&name, &ctx);
            return;
        }
    }
}

/// Clears what the monitor said about `name`: it is not probed any more.
fn forget(name: &str, ctx: &MonitorContext) {
    ctx.board.set_health(name, None);
    ctx.observations.clear_instance(name);
}

/// Probes `target` until the worker names another target (or none).
async fn watch_process(
    name: &str,
    target: &MonitorTarget,
    targets: &mut watch::Receiver<Option<MonitorTarget>>,
    ctx: &MonitorContext,
) {
    let mut watch = Watch::new(target, ctx.health_interval);
    let mut context = health::Context {
        declared: Some(target.declared),
        ..health::Context::default()
    };
    // Every monitor ticks on the same beat (multiples of the interval since the
    // agent's start): the runtime then wakes once per interval for all instances
    // instead of once per instance, which is most of the monitors' cost.
    let mut ticker = tokio::time::interval_at(next_beat(ctx.origin, ctx.health_interval).into(), ctx.health_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The first probe goes out at once, so health and metrics exist from the start.
    let mut first = true;
    // The first probe is a full sample, so metrics exist from the start.
    let mut last_full: Option<Instant> = None;
    let mut last_status = None;
    // At an agent's start hundreds of instances are adopted or started at once; their
    // first probes wait until the node is ready (at most one metrics interval) instead
    // of competing with the adoptions and readiness probes still under way.
    tokio::select! {
        biased;
        _ = target_changed(targets) => return,
        _ = ctx.board.wait_ready(ctx.metrics_interval) => {}
    }
    loop {
        tokio::select! {
            biased;
            _ = target_changed(targets) => return,
            _ = ticker.tick(), if !first => {}
            _ = std::future::ready(()), if first => first = false,
        }
        let full = last_full.is_none_or(|at| at.elapsed() + ctx.health_interval / 2 >= ctx.metrics_interval);
        let depth = if full { Depth::Full } else { Depth::Health };
        let sent_at_ms = unix_now_millis();
        // Boxed: the monitor spends its life waiting for the next tick, and its future
        // would otherwise keep room for a probe's connection in every instance.
        let probe = Box::pin(watch.probe(depth)).await;
        if full {
            last_full = Some(Instant::now());
        }
        context.unanswered = match probe {
            Probe::Answered { .. } | Probe::Loading => 0,
            _ => context.unanswered + 1,
        };
        let verdict = health::evaluate(&probe, &context);
        let (ping_ms, observed_role, replication) = match &probe {
            Probe::Answered { ping, stats } => (
                Some(ping.as_secs_f64() * 1000.0),
                stats.role,
                Some(crate::status::Replication::of(stats)),
            ),
            _ => (None, None, None),
        };
        let answering = matches!(probe, Probe::Answered { .. } | Probe::Loading);
        let health = Health {
            status: verdict.status,
            reasons: verdict.reasons.clone(),
            answering,
            ping_ms,
            observed_role,
            replication,
            checked_at_ms: unix_now_millis(),
            sent_at_ms,
        };
        ctx.board.set_health(name, Some(health));
        // A first verdict of `ok` is the expected start, not news.
        let news = match last_status {
            Some(last) => last != verdict.status,
            None => verdict.status != health::HealthStatus::Ok,
        };
        if news {
            ctx.events.emit(
                name,
                Event::HealthChanged {
                    from: last_status,
                    to: verdict.status,
                    reasons: verdict.reasons.join("; "),
                },
            );
        }
        last_status = Some(verdict.status);
        if let Probe::Answered { stats, .. } = probe {
            context.previous_rejected = stats.rejected_connections;
            if full {
                let pid = target.target.pid;
                let sample = InstanceMetrics::new(
                    unix_now_millis(),
                    *stats,
                    watch.process_metrics(pid),
                    target.engine.kind(),
                    &std::mem::take(&mut watch.last_reply),
                );
                ctx.observations.set_instance(name, sample);
            }
        }
    }
}

/// Resolves when the worker names a new target (or none, or is gone), leaving the
/// change for the caller (`run`) to see: it decides.
async fn target_changed(targets: &mut watch::Receiver<Option<MonitorTarget>>) {
    if targets.changed().await.is_ok() {
        targets.mark_changed();
    }
}

/// The kept connection to one process, opened on demand with back-off.
struct Watch<'a> {
    target: &'a MonitorTarget,
    /// Each call's limit: half the health interval (see `Watch::new`).
    call_target: Target,
    connection: Option<Session>,
    next_attempt: Instant,
    backoff: Duration,
    last_error: String,
    /// The INFO reply of the last answered full sample, until it is kept.
    last_reply: Vec<u8>,
    /// The process's `/proc` files, opened at the first metrics sample.
    process_files: Option<crate::procfs::ProcessFiles>,
}

impl<'a> Watch<'a> {
    fn new(target: &'a MonitorTarget, interval: Duration) -> Watch<'a> {
        let mut call_target = target.target.clone();
        // No answer within half an interval is a miss: two misses (unhealthy) then
        // take at most three intervals from the moment the server stops answering.
        call_target.timeout = (interval / 2).max(MIN_CALL_TIMEOUT).min(target.target.timeout);
        Watch {
            target,
            call_target,
            connection: None,
            next_attempt: Instant::now(),
            backoff: interval,
            last_error: String::new(),
            last_reply: Vec::new(),
            process_files: None,
        }
    }

    /// The process's resource usage; `None` when /proc cannot tell (it is logged at
    /// debug level: the health probe says more about a dying process).
    fn process_metrics(&mut self, pid: u32) -> Option<crate::procfs::ProcessMetrics> {
        let mut files = match self.process_files.take() {
            Some(files) => files,
            None => crate::procfs::ProcessFiles::open(pid)
                .map_err(|error| tracing::debug!(%error, "Cannot open the instance's /proc files."))
                .ok()?,
        };
        match files.sample() {
            Ok(metrics) => {
                self.process_files = Some(files);
                Some(metrics)
            }
            Err(error) => {
                tracing::debug!(%error, "Cannot read the instance's /proc files.");
                None
            }
        }
    }

    async fn probe(&mut self, depth: Depth) -> Probe {
        if self.connection.is_none() {
            if Instant::now() < self.next_attempt {
                return Probe::Failed(format!("not connected: {}", self.last_error));
            }
            match self.connect().await {
                Ok(connection) => {
                    self.connection = Some(connection);
                    self.backoff = self.call_target.timeout;
                }
                Err(error) => {
                    let probe = classify(&error);
                    self.last_error = error.to_string();
                    self.next_attempt = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
                    return probe;
                }
            }
        }
        let Some(connection) = self.connection.as_mut() else {
            return Probe::Failed("not connected".into());
        };
        // Each exchange has its own timeout; this bounds the probe.
        let limit = self.call_target.timeout * 2;
        let sampled = tokio::time::timeout(limit, self.target.engine.sample(connection, depth)).await;
        match sampled {
            Ok(Ok(sample)) => {
                // A full sample's reply is kept for `info_raw`; a health probe's (its
                // sections only) is of no use once parsed.
                if depth == Depth::Full {
                    self.last_reply = sample.reply;
                }
                Probe::Answered {
                    ping: sample.ping,
                    stats: Box::new(sample.stats),
                }
            }
            Ok(Err(error)) => {
                let probe = classify(&error);
                if !matches!(probe, Probe::Loading) {
                    // A late reply to a timed-out call could be read as the answer to
                    // the next one; a fresh connection cannot mix them up.
                    self.connection = None;
                }
                self.last_error = error.to_string();
                probe
            }
            Err(_) => {
                self.connection = None;
                self.last_error = format!("{} did not answer within {limit:?}", self.call_target.addr);
                Probe::Failed(self.last_error.clone())
            }
        }
    }

    async fn connect(&self) -> Result<Session, crate::engine::ClientError> {
        let mut session = Session::open(&self.call_target).await?;
        // Only the process the worker watches is judged, never a stranger on its port.
        self.target
            .engine
            .verify_pid(&mut session, self.call_target.pid)
            .await?;
        Ok(session)
    }
}

fn classify(error: &crate::engine::ClientError) -> Probe {
    if error.is_loading() {
        Probe::Loading
    } else if error.is_auth() {
        Probe::AuthFailed(error.to_string())
    } else {
        Probe::Failed(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ready instance has a monitor waiting for its next tick: the probe is
    /// boxed so that the wait does not keep room for it (1.6 KB before; 1.2 KB at
    /// this writing).
    #[test]
    fn a_waiting_monitor_is_small() {
        let (_targets_tx, targets) = watch::channel(None);
        let ctx = Arc::new(MonitorContext {
            board: StatusBoard::default(),
            observations: Observations::default(),
            events: Arc::new(EventLog::new(10)),
            health_interval: Duration::from_secs(1),
            metrics_interval: Duration::from_secs(1),
            origin: Instant::now(),
        });
        let size = std::mem::size_of_val(&run("a".into(), targets, ctx));
        // Room for another compiler's layout; the probe unboxed again goes past it.
        assert!(size <= 1536, "a monitor's future is {size} bytes");
    }
}

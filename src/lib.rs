//! ker-agent: the node agent of a Redis/Pika service platform. It makes the instances
//! declared for this node exist, keeps them alive, survives its own restarts without
//! touching them, stops them gracefully, and reports what is.
//!
//! [`run`] is the daemon; `main.rs` only parses the command line, sets up logging
//! and calls it with a shutdown token.

pub mod api;
pub mod artifacts;
pub mod atomic_file;
pub mod backup;
pub mod blocking;
pub mod cli;
pub mod config;
pub mod controller;
pub mod desired;
pub mod digest;
pub mod engine;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod https;
pub mod monitoring;
pub mod ports;
pub mod problem;
pub mod process;
pub mod procfs;
pub mod record;
pub mod secret_file;
pub mod slot;
pub mod sources;
pub mod spec;
pub mod status;
pub mod supervisor;
pub mod sys;
pub mod units;

use anyhow::Context;
use config::AgentConfig;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the agent until `shutdown` is cancelled. Instances keep running when it
/// returns (invariant 2).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Installed first: SIGHUP's default action would end the agent.
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    for missing in config.missing_binaries() {
        tracing::warn!(
            problem = missing.to_string().as_str(),
            "An allowed engine binary is missing; instances of that version cannot start."
        );
    }
    let config = Arc::new(config);
    create_dir(&config.data_dir)?;
    let _lock = lock_data_dir(&config.data_dir)?;
    create_dir(&config.instances_dir())?;
    create_dir(&config.instances.log_dir)?;
    let boot_id = procfs::boot_id().context("cannot read the boot id from /proc/sys/kernel/random/boot_id")?;
    let started_at = process::unix_now();
    // Built (and its files checked) before anything starts: a wrong token file or CA
    // is a configuration error to fix, not something to retry.
    let controller_client = match &config.controller {
        Some(controller) => Some(controller::Client::new(controller, &config.node_id)?),
        None => None,
    };
    let api_token = api::TokenSlot::new(match &config.api.token_file {
        Some(path) => Some(api::Token::read(path)?),
        None => None,
    });
    let controller_client = controller_client.map(|client| controller::ClientSlot::new(Arc::new(client)));
    if let Some(store) = &config.artifacts {
        artifacts::fetch::StoreClient::new(store)?;
    }

    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} ([api] listen in {})",
                config.api.listen,
                config.path.display()
            )
        })?;
    let address = listener.local_addr().context("cannot read the API's local address")?;
    tracing::info!(%address, node_id = %config.node_id, version = VERSION, "API listening.");

    let board = status::StatusBoard::default();
    let events = Arc::new(events::EventLog::new(1000));
    let observations = monitoring::observations::Observations::default();
    let telemetry = Arc::new(monitoring::metrics::Telemetry::default());
    let (declared, declared_rx) = tokio::sync::watch::channel(Arc::default());
    let builds = artifacts::Builds::new(config.clone());
    if config.artifacts.is_some() {
        builds.clean_leftovers().await;
        builds.load_installed().await;
        tokio::spawn(
            builds
                .clone()
                .housekeeping(declared.subscribe(), shutdown.child_token()),
        );
    }
    let ctx = Arc::new(supervisor::WorkerContext {
        builds: builds.clone(),
        backups: Arc::new(backup::BackupContext::new(
            config.clone(),
            board.clone(),
            events.clone(),
        )),
        telemetry: telemetry.clone(),
        declared,
        config: config.clone(),
        board: board.clone(),
        events: events.clone(),
        boot_id: boot_id.clone(),
        monitor: Arc::new(monitoring::monitor::MonitorContext {
            board: board.clone(),
            observations: observations.clone(),
            events: events.clone(),
            health_interval: config.monitoring.health_interval,
            metrics_interval: config.monitoring.metrics_interval,
            origin: std::time::Instant::now(),
        }),
    });
    let (supervisor, supervisor_task) = supervisor::Supervisor::spawn(ctx, shutdown.child_token());
    let watchdog_supervisor = supervisor.clone();

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(
        "starting: reading the desired state, adopting instances",
    )]);
    let sources = sources::Sources::new(config.clone(), board.clone(), events.clone());
    let (sources, sources_task) = sources::spawn(sources, supervisor);
    // The last accepted state is applied before the controller is asked (static
    // stability): the controller may be gone.
    sources.initial().await;
    let mut controller_tasks = Vec::new();
    if let (Some(controller), Some(client)) = (&config.controller, &controller_client) {
        board.controller_configured(controller.url.as_str());
        controller_tasks = controller::spawn(
            client.clone(),
            sources.clone(),
            controller::ReportInputs {
                facts: controller::node_facts(&config.node_id, &boot_id, started_at),
                board: board.clone(),
                observations: observations.clone(),
                events: events.clone(),
                telemetry: telemetry.clone(),
            },
            controller::Cadence {
                interval: controller.report_interval,
                full_interval: controller.full_report_interval,
            },
            shutdown.clone(),
        );
    }

    let host_task = tokio::spawn(monitoring::host::sample_loop(
        config.clone(),
        declared_rx,
        observations.clone(),
        shutdown.clone(),
    ));

    let api_state = api::ApiState {
        node_id: Arc::from(config.node_id.as_str()),
        started_at,
        board: board.clone(),
        observations: observations.clone(),
        metrics: Arc::new(monitoring::metrics::Endpoint::new(
            board.clone(),
            observations.clone(),
            &telemetry,
        )),
        events: events.clone(),
        sources: sources.clone(),
        token: api_token.clone(),
        backup_dir: config.backup_dir.clone(),
        standalone: config.controller.is_none(),
        builds,
    };
    let api_task = tokio::spawn(api::serve(listener, api_state, shutdown.clone()));
    // systemd (Type=notify) learns that the agent is up: the config and the last
    // accepted desired state are loaded, every instance has its worker (adopting or
    // starting it), and the API listens.
    let mut status_line = service_status(&board);
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status_line),
    ]);

    let mut rescan = tokio::time::interval(sources::RESCAN_INTERVAL);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await;
    // With WatchdogSec= in the unit, systemd restarts an agent whose supervision
    // hangs (which is safe: instances are adopted). The ping goes out only when this
    // loop runs (it also awaits every reload of the sources) and the supervisor task
    // answers in time: a timer alone would keep pinging for a stuck agent.
    let watchdog_period = sd_notify::watchdog_enabled().map(|timeout| timeout / 3);
    let mut watchdog = tokio::time::interval(watchdog_period.unwrap_or(std::time::Duration::from_secs(3600)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = watchdog.tick(), if watchdog_period.is_some() => {
                let period = watchdog_period.unwrap_or_default();
                if watchdog_supervisor.answers_within(period).await {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!(waited_ms = period.as_millis() as u64, "The supervisor does not answer; not pinging the watchdog.");
                }
            }
            _ = hangup.recv() => {
                // systemd (`systemctl reload`) learns when the reload is done.
                let mut reloading = vec![sd_notify::NotifyState::Reloading];
                reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                let _ = sd_notify::notify(&reloading);
                tracing::info!("SIGHUP: reading the manifests and the secret files again.");
                reload_secret_files(&config, &api_token, controller_client.as_ref(), &board, &events).await;
                sources.reload(true).await;
                status_line = service_status(&board);
                let _ = sd_notify::notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status(&status_line),
                ]);
            }
            _ = rescan.tick() => {
                sources.reload(false).await;
                let line = service_status(&board);
                if line != status_line {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
                    status_line = line;
                }
            }
        }
    }
    for task in controller_tasks {
        let _ = task.await;
    }
    drop(sources);
    sources_task.abort();

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("Shutting down; instances keep running.");
    let _ = supervisor_task.await;
    host_task.abort();
    match tokio::time::timeout(std::time::Duration::from_millis(300), api_task).await {
        Ok(Ok(Err(error))) => tracing::warn!(%error, "API server error."),
        Err(_) => tracing::debug!("API connections still open at shutdown; dropped."),
        _ => {}
    }
    Ok(())
}

/// SIGHUP: reads the API token, the controller token, CA and client key and
/// certificate again. A file that is refused (unreadable, readable by other users,
/// broken) keeps the previous one in use, and is reported: logged, as an event for the
/// controller, and in `/v1/status`.
async fn reload_secret_files(
    config: &Arc<config::AgentConfig>,
    api_token: &api::TokenSlot,
    controller: Option<&controller::ClientSlot>,
    board: &status::StatusBoard,
    events: &events::EventLog,
) {
    let read = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let token = config.api.token_file.as_ref().map(|path| api::Token::read(path));
            let client = config
                .controller
                .as_ref()
                .map(|c| controller::Client::new(c, &config.node_id));
            (token, client)
        })
    };
    let (token, client) = match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => (Some(Err(anyhow::anyhow!("{error}"))), None),
        Err(_) => (
            Some(Err(anyhow::anyhow!(
                "the secret files could not be read within 10 s (hung disk?)"
            ))),
            None,
        ),
    };
    let (mut problems, mut reloaded) = (Vec::new(), Vec::new());
    match token {
        Some(Ok(token)) => {
            api_token.replace(Some(token));
            reloaded.push("[api] token_file");
        }
        Some(Err(error)) => problems.push(format!("{error:#}")),
        None => {}
    }
    match (client, controller) {
        (Some(Ok(client)), Some(slot)) => {
            slot.replace(Arc::new(client));
            reloaded.push("[controller] token_file, ca_file, client_cert and client_key");
        }
        (Some(Err(error)), _) => problems.push(format!("{error:#}")),
        _ => {}
    }
    for problem in &problems {
        events.emit("", events::Event::SecretFileRefused { error: problem.clone() });
    }
    if !reloaded.is_empty() {
        events.emit(
            "",
            events::Event::SecretFilesReloaded {
                what: reloaded.join("; "),
            },
        );
    }
    board.secret_files_reloaded(problems);
}

/// The one-line summary `systemctl status` shows (`STATUS=`).
fn service_status(board: &status::StatusBoard) -> String {
    let instances = board.snapshot();
    let count = |phase: status::Phase| instances.iter().filter(|i| i.phase == phase).count();
    let ready = instances.iter().filter(|i| i.ready).count();
    let troubled = instances
        .iter()
        .filter(|i| {
            matches!(
                i.phase,
                status::Phase::CrashLoop | status::Phase::Failed | status::Phase::Conflict | status::Phase::Backoff
            )
        })
        .count();
    let mut line = format!(
        "{} instances: {} running ({ready} ready), {} starting, {} stopped",
        instances.len(),
        count(status::Phase::Running),
        count(status::Phase::Starting) + count(status::Phase::Pending),
        count(status::Phase::Stopped),
    );
    if troubled > 0 {
        line.push_str(&format!(", {troubled} failing (see ker-agent status)"));
    }
    if let Some(controller) = board.controller() {
        match (&controller.poll_error, &controller.report_error) {
            (None, None) => line.push_str("; controller ok"),
            _ => line.push_str("; controller unreachable (running on the last desired state)"),
        }
    }
    line
}

/// Makes sure only one agent works on a data directory: two would fight over every
/// instance. The lock is released when the agent exits, however it exits.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join("agent.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if !sys::try_lock_exclusive(&file).with_context(|| format!("cannot lock {}", path.display()))? {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        anyhow::bail!(
            "another ker-agent (pid {}) is already running with data_dir {}",
            holder.trim(),
            data_dir.display()
        );
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    written.with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

fn create_dir(path: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create directory {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_status_counts_phases_and_the_controller() {
        let board = status::StatusBoard::default();
        assert_eq!(
            service_status(&board),
            "0 instances: 0 running (0 ready), 0 starting, 0 stopped"
        );
        for (name, phase, ready) in [
            ("a", status::Phase::Running, true),
            ("b", status::Phase::Running, false),
            ("c", status::Phase::CrashLoop, false),
            ("d", status::Phase::Stopped, false),
        ] {
            let mut s = status::InstanceStatus::pending(name, &spec::InstanceSpec::example(name, 7000));
            s.phase = phase;
            s.ready = ready;
            board.publish(s);
        }
        board.controller_configured("https://cc");
        board.controller_polled(Some("timeout".into()));
        assert_eq!(
            service_status(&board),
            "4 instances: 2 running (1 ready), 0 starting, 1 stopped, 1 failing (see ker-agent status); \
             controller unreachable (running on the last desired state)"
        );
    }
}

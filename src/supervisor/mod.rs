//! The supervisor: turns each accepted desired state into one worker task per
//! instance. It diffs names only; each worker gets its new spec through a watch
//! channel and decides on its own what that means for its process.
//!
//! At the first accepted state it also looks for records of instances that are no
//! longer declared (removed while the agent was down) and gives each a worker that
//! stops it.

mod changes;
mod live;
pub mod plan;
mod stop;
mod worker;

pub use worker::WorkerContext;

use crate::desired::DesiredState;
use crate::events::Event;
use crate::spec::InstanceSpec;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use worker::{SpecSlot, Worker};

/// How long the supervisor waits for its workers when the agent shuts down. Workers
/// return at once on shutdown; this only bounds the wait.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// What the supervisor task is asked to do.
enum Command {
    Apply(DesiredState),
    /// Answer when this command's turn comes: proof that the task is not stuck.
    Ping(tokio::sync::oneshot::Sender<()>),
}

/// A handle to send desired states to the supervisor task.
#[derive(Clone)]
pub struct SupervisorHandle {
    tx: mpsc::Sender<Command>,
}

impl SupervisorHandle {
    /// Hands over an accepted (and already persisted) desired state.
    pub async fn apply(&self, state: DesiredState) {
        // The supervisor only stops receiving when the agent shuts down.
        let _ = self.tx.send(Command::Apply(state)).await;
    }

    /// Whether the supervisor task answers within `timeout` (for the systemd watchdog).
    pub async fn answers_within(&self, timeout: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let asked = async { self.tx.send(Command::Ping(tx)).await.is_ok() && rx.await.is_ok() };
        tokio::time::timeout(timeout, asked).await.unwrap_or(false)
    }
}

pub struct Supervisor {
    ctx: Arc<WorkerContext>,
    shutdown: CancellationToken,
    workers: BTreeMap<String, watch::Sender<SpecSlot>>,
    tasks: JoinSet<()>,
    /// Which instance each worker task serves.
    task_names: HashMap<tokio::task::Id, String>,
    desired: BTreeMap<String, Arc<InstanceSpec>>,
    orphans_checked: bool,
}

impl Supervisor {
    /// Starts the supervisor task.
    pub fn spawn(
        ctx: Arc<WorkerContext>,
        shutdown: CancellationToken,
    ) -> (SupervisorHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(8);
        let supervisor = Supervisor {
            ctx,
            shutdown,
            workers: BTreeMap::new(),
            tasks: JoinSet::new(),
            task_names: HashMap::new(),
            desired: BTreeMap::new(),
            orphans_checked: false,
        };
        (SupervisorHandle { tx }, tokio::spawn(supervisor.run(rx)))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                command = rx.recv() => match command {
                    Some(Command::Apply(state)) => self.apply(state),
                    Some(Command::Ping(answer)) => {
                        let _ = answer.send(());
                    }
                    None => break,
                },
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => match done {
                    Ok((id, ())) => self.worker_finished(id),
                    Err(error) => {
                        let id = error.id();
                        let name = self.task_names.get(&id).cloned().unwrap_or_default();
                        tracing::error!(instance = name.as_str(), error = error.to_string().as_str(), "Instance worker failed; starting a new one.");
                        self.worker_finished(id);
                    }
                },
            }
        }
        let tasks = &mut self.tasks;
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("Some instance workers did not finish in time; leaving them.");
        }
    }

    fn apply(&mut self, state: DesiredState) {
        let specs = state.specs();
        for (name, spec) in &specs {
            match self.workers.get(name) {
                Some(tx) => {
                    tx.send_if_modified(|slot| {
                        let changed = slot.as_deref() != Some(spec.as_ref());
                        if changed {
                            *slot = Some(spec.clone());
                        }
                        changed
                    });
                }
                None => self.start_worker(name.clone(), Some(spec.clone())),
            }
        }
        for (name, tx) in &self.workers {
            if !specs.contains_key(name) {
                tx.send_if_modified(|slot| slot.take().is_some());
            }
        }
        self.ctx.events.fit(specs.len());
        self.ctx.declared.send_replace(Arc::new(specs.clone()));
        self.desired = specs;
        if !self.orphans_checked {
            self.orphans_checked = true;
            for name in crate::record::recorded_names(&self.ctx.config.instances_dir()) {
                if !self.desired.contains_key(&name) && !self.workers.contains_key(&name) {
                    tracing::info!(instance = %name, "Found the record of an undeclared instance; it will be stopped.");
                    self.start_worker(name, None);
                }
            }
        }
        self.ctx.board.accepted(state.revision, state.generation, state.source);
        self.ctx.events.emit(
            "",
            Event::DesiredAccepted {
                revision: state.revision,
                generation: state.generation,
                instances: state.instances.len(),
            },
        );
    }

    fn start_worker(&mut self, name: String, spec: SpecSlot) {
        if let Some(spec) = &spec {
            // Shown as pending until the worker's first decision.
            self.ctx
                .board
                .publish(crate::status::InstanceStatus::pending(&name, spec));
        }
        let (tx, rx) = watch::channel(spec);
        let worker = Worker::new(name.clone(), self.ctx.clone(), rx, self.shutdown.child_token());
        let handle = self.tasks.spawn(Box::new(worker).run());
        self.task_names.insert(handle.id(), name.clone());
        self.workers.insert(name, tx);
    }

    /// A worker ended: its instance was removed and stopped, or the agent shuts down.
    /// If the instance was declared again meanwhile, it gets a new worker.
    fn worker_finished(&mut self, id: tokio::task::Id) {
        let Some(name) = self.task_names.remove(&id) else {
            return;
        };
        self.workers.remove(&name);
        if let Some(spec) = self.desired.get(&name).cloned() {
            if !self.shutdown.is_cancelled() {
                self.start_worker(name, Some(spec));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchdog is pinged only for a supervisor task that takes its commands.
    #[tokio::test]
    async fn only_a_supervisor_that_takes_its_commands_answers() {
        // Stuck: the channel is open, but nothing reads it.
        let (tx, _stuck) = mpsc::channel(8);
        let stuck = SupervisorHandle { tx };
        assert!(!stuck.answers_within(Duration::from_millis(50)).await);

        // Gone.
        let (tx, rx) = mpsc::channel::<Command>(8);
        drop(rx);
        assert!(!SupervisorHandle { tx }.answers_within(Duration::from_secs(1)).await);

        // Working: a loop that answers pings as the supervisor's does.
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(command) = rx.recv().await {
                if let Command::Ping(answer) = command {
                    let _ = answer.send(());
                }
            }
        });
        assert!(SupervisorHandle { tx }.answers_within(Duration::from_secs(1)).await);
    }
}

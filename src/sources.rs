//! Where the desired state comes from, and the one place that decides to accept it.
//!
//! The sources are the static manifests (read at start, on SIGHUP and when a rescan
//! sees a file change) and desired-state documents (from `PUT /v1/desired-state` in
//! standalone mode, later from the controller). Every change is merged with the other
//! input, validated as a whole, persisted to `desired.json`, and only then handed to the
//! supervisor; a rejected change changes nothing and is shown in the status.
//!
//! One task owns the sources, so that changes are accepted and applied in order.

use crate::config::AgentConfig;
use crate::desired::{self, DesiredState, Document, DocumentSource, Fingerprint, Inputs};
use crate::events::{Event, EventLog};
use crate::problem::Problem;
use crate::status::StatusBoard;
use crate::supervisor::SupervisorHandle;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often the manifest directory is looked at for changes.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Limit for reading the sources and persisting a change (a hung disk must not stall
/// the agent).
const READ_LIMIT: Duration = Duration::from_secs(30);

/// What became of an offered document.
#[derive(Debug)]
pub enum Offer {
    /// Accepted and applied; the new revision.
    Accepted { generation: u64, revision: u64 },
    /// The same generation with the same content as the accepted one: nothing to do.
    Unchanged { generation: u64 },
    /// Rejected; nothing changed.
    Rejected(Rejected),
}

/// Why an offered document was rejected.
#[derive(Debug)]
pub enum Rejected {
    /// Its generation is lower than the accepted one.
    Stale { offered: u64, accepted: u64 },
    /// Invalid, or it clashes with the manifests.
    Invalid(Vec<Problem>),
    /// It could not be persisted, so it was not applied.
    NotPersisted(String),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::Stale { offered, accepted } => write!(
                f,
                "generation {offered} is older than the accepted generation {accepted}; ignored"
            ),
            Rejected::Invalid(problems) => write!(
                f,
                "{} problem(s): {}",
                problems.len(),
                problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ),
            Rejected::NotPersisted(error) => write!(f, "{error}"),
        }
    }
}

/// The inputs, and what the agent knows about them.
pub struct Sources {
    config: Arc<AgentConfig>,
    board: StatusBoard,
    events: Arc<EventLog>,
    accepted: Option<Inputs>,
    revision: u64,
    fingerprint: Option<Fingerprint>,
    /// Password files the manifests name, watched like the manifests themselves.
    password_files: Vec<PathBuf>,
}

impl Sources {
    pub fn new(config: Arc<AgentConfig>, board: StatusBoard, events: Arc<EventLog>) -> Sources {
        Sources {
            config,
            board,
            events,
            accepted: None,
            revision: 0,
            fingerprint: None,
            password_files: Vec::new(),
        }
    }

    /// The desired state to start with: the last accepted inputs from `desired.json`,
    /// with the manifests as they are now when they are valid.
    pub fn initial(&mut self) -> Option<DesiredState> {
        let path = self.config.desired_state_path();
        match desired::load_persisted(&path, &self.config) {
            Ok(Some((inputs, revision))) => {
                self.accepted = Some(inputs);
                self.revision = revision;
            }
            Ok(None) => {}
            Err(problems) => tracing::error!(
                path = %path.display(),
                problems = join(&problems).as_str(),
                "The last accepted desired state cannot be used."
            ),
        }
        if let Some(state) = self.reload_manifests(true) {
            return Some(state);
        }
        let inputs = self.accepted.clone()?;
        tracing::warn!(revision = self.revision, "Using the last accepted desired state.");
        inputs.merge(&self.config, self.revision, "desired.json").ok()
    }

    /// Reads the manifests again when `force` is set or a file changed. Returns a new
    /// desired state to apply, or `None` when nothing is to change.
    pub fn reload_manifests(&mut self, force: bool) -> Option<DesiredState> {
        let document = self.accepted.as_ref().and_then(|i| i.document.clone());
        let Some(dir) = self.config.manifest_dir.clone() else {
            // No manifests: the inputs are the document alone (or nothing yet, which is
            // an accepted, empty state).
            if self.accepted.is_none() && force {
                return self.accept(Inputs::default(), "manifests").ok();
            }
            return force.then(|| self.current("manifests")).flatten();
        };
        let fingerprint = desired::fingerprint(&dir, &self.password_files);
        if !force && self.fingerprint.as_ref() == Some(&fingerprint) {
            return None;
        }
        self.fingerprint = Some(fingerprint);
        let mut password_files = Vec::new();
        let loaded = desired::load_manifests_watching(&dir, &self.config, &mut password_files);
        if password_files != self.password_files {
            // Watch what the manifests name now (a password file that does not exist
            // yet included), and take their current state as the baseline.
            self.password_files = password_files;
            self.fingerprint = Some(desired::fingerprint(&dir, &self.password_files));
        }
        let manifests = match loaded {
            Ok(manifests) => manifests,
            Err(problems) => {
                self.reject("manifests", None, &problems);
                return None;
            }
        };
        let inputs = Inputs { document, manifests };
        if self.accepted.as_ref().is_some_and(|a| a.specs() == inputs.specs()) {
            // Nothing changed (a touch, or an error fixed back to what runs).
            self.board.clear_rejection();
            return force.then(|| self.current("manifests")).flatten();
        }
        match self.accept(inputs, "manifests") {
            Ok(state) => Some(state),
            Err(Rejected::Invalid(problems)) => {
                self.reject("manifests", None, &problems);
                None
            }
            Err(other) => {
                // Try again at the next rescan, not only after the next edit.
                self.fingerprint = None;
                self.reject_reason("manifests", None, &other.to_string());
                None
            }
        }
    }

    /// A document from the local API or the controller.
    pub fn offer(&mut self, document: Document) -> (Offer, Option<DesiredState>) {
        let source = document.source.as_str();
        let generation = document.generation;
        if let Some(accepted) = self.accepted.as_ref().and_then(|i| i.document.as_ref()) {
            if generation < accepted.generation {
                let rejected = Rejected::Stale {
                    offered: generation,
                    accepted: accepted.generation,
                };
                self.reject_reason(source, Some(generation), &rejected.to_string());
                return (Offer::Rejected(rejected), None);
            }
            let same = accepted.instances.len() == document.instances.len()
                && accepted
                    .instances
                    .iter()
                    .zip(&document.instances)
                    .all(|(a, b)| a.spec == b.spec);
            if generation == accepted.generation && same {
                return (Offer::Unchanged { generation }, None);
            }
        }
        let manifests = self.accepted.as_ref().map(|i| i.manifests.clone()).unwrap_or_default();
        let inputs = Inputs {
            document: Some(document),
            manifests,
        };
        match self.accept(inputs, source) {
            Ok(state) => (
                Offer::Accepted {
                    generation,
                    revision: state.revision,
                },
                Some(state),
            ),
            Err(rejected) => {
                match &rejected {
                    Rejected::Invalid(problems) => self.reject(source, Some(generation), problems),
                    other => self.reject_reason(source, Some(generation), &other.to_string()),
                }
                (Offer::Rejected(rejected), None)
            }
        }
    }

    /// A document that failed validation before it could be offered; `claimed` is the
    /// generation it claims, if it could be read.
    pub fn invalid(&mut self, source: DocumentSource, claimed: Option<u64>, problems: &[Problem]) {
        self.reject(source.as_str(), claimed, problems);
    }

    /// Merges, persists and takes `inputs` as the accepted ones.
    fn accept(&mut self, inputs: Inputs, source: &'static str) -> Result<DesiredState, Rejected> {
        let revision = self.revision + 1;
        let state = inputs
            .merge(&self.config, revision, source)
            .map_err(Rejected::Invalid)?;
        desired::persist(&inputs, revision, &self.config.desired_state_path()).map_err(|error| {
            Rejected::NotPersisted(format!(
                "the new desired state cannot be persisted, so it is not applied: {error}"
            ))
        })?;
        self.accepted = Some(inputs);
        self.revision = revision;
        self.board.clear_rejection();
        Ok(state)
    }

    /// The accepted state again (to re-apply it unchanged).
    fn current(&self, source: &'static str) -> Option<DesiredState> {
        self.accepted.as_ref()?.merge(&self.config, self.revision, source).ok()
    }

    fn reject(&self, source: &str, generation: Option<u64>, problems: &[Problem]) {
        let listed = problems.iter().map(ToString::to_string).collect();
        self.board.rejected(source, generation, listed);
        for problem in problems {
            tracing::error!(source, problem = problem.to_string().as_str(), "Desired-state problem.");
        }
        self.events.emit(
            "",
            Event::DesiredRejected {
                problems: problems.len(),
                first: problems.first().map(ToString::to_string).unwrap_or_default(),
            },
        );
    }

    fn reject_reason(&self, source: &str, generation: Option<u64>, reason: &str) {
        let new = self.board.rejected(source, generation, vec![reason.to_string()]);
        // The manifests are offered again at every rescan after a failure that was not
        // theirs (a full disk): said once, not every two seconds.
        if !new && source == "manifests" {
            return;
        }
        tracing::error!(source, reason, "Desired state rejected; nothing changed.");
        self.events.emit(
            "",
            Event::DesiredRejected {
                problems: 1,
                first: reason.to_string(),
            },
        );
    }
}

fn join(problems: &[Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A request to the sources task.
enum Request {
    Initial,
    Reload {
        force: bool,
    },
    Offer {
        bytes: bytes::Bytes,
        source: DocumentSource,
        reply: oneshot::Sender<Result<Offer, Rejected>>,
    },
}

/// Sends work to the task that owns the sources.
#[derive(Clone)]
pub struct SourcesHandle {
    tx: mpsc::Sender<Request>,
}

impl SourcesHandle {
    /// Reads the initial desired state and applies it.
    pub async fn initial(&self) {
        let _ = self.tx.send(Request::Initial).await;
    }

    /// Re-reads the manifests (always when `force`, else when a file changed).
    pub async fn reload(&self, force: bool) {
        let _ = self.tx.send(Request::Reload { force }).await;
    }

    /// Offers a document; the answer says whether it was accepted and applied.
    pub async fn offer(&self, bytes: bytes::Bytes, source: DocumentSource) -> Result<Offer, Rejected> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Request::Offer { bytes, source, reply }).await.is_err() {
            return Err(Rejected::NotPersisted("the agent is shutting down".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Rejected::NotPersisted("the agent is shutting down".into())))
    }
}

/// Starts the task that owns `sources` and hands accepted states to `supervisor`, in
/// the order they were accepted.
pub fn spawn(sources: Sources, supervisor: SupervisorHandle) -> (SourcesHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Request>(16);
    let config = sources.config.clone();
    let sources = Arc::new(Mutex::new(sources));
    let task = tokio::spawn(async move {
        while let Some(request) = rx.recv().await {
            let sources = sources.clone();
            let config = config.clone();
            // File work happens off the runtime's threads, within a time limit.
            let work = tokio::task::spawn_blocking(move || {
                let mut sources = sources.lock().unwrap_or_else(|p| p.into_inner());
                match request {
                    Request::Initial => (sources.initial(), None),
                    Request::Reload { force } => (sources.reload_manifests(force), None),
                    Request::Offer { bytes, source, reply } => match desired::parse_document(&bytes, source, &config) {
                        Err(problems) => {
                            sources.invalid(source, desired::claimed_generation(&bytes), &problems);
                            (None, Some((reply, Err(Rejected::Invalid(problems)))))
                        }
                        Ok(document) => {
                            let (offer, state) = sources.offer(document);
                            let answer = match offer {
                                Offer::Rejected(rejected) => Err(rejected),
                                other => Ok(other),
                            };
                            (state, Some((reply, answer)))
                        }
                    },
                }
            });
            match tokio::time::timeout(READ_LIMIT, work).await {
                Ok(Ok((state, reply))) => {
                    if let Some(state) = state {
                        supervisor.apply(state).await;
                    }
                    // Answer after the supervisor has the state: the caller may look at
                    // the status next.
                    if let Some((reply, answer)) = reply {
                        let _ = reply.send(answer);
                    }
                }
                Ok(Err(error)) => {
                    tracing::error!(error = error.to_string().as_str(), "Reading the desired state failed.")
                }
                Err(_) => tracing::error!(
                    limit_s = READ_LIMIT.as_secs(),
                    "Reading the desired state did not finish in time; is the disk hung?"
                ),
            }
        }
    });
    (SourcesHandle { tx }, task)
}

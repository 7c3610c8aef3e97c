//! The static-manifest source of desired state: reads `manifest_dir` at start, on
//! SIGHUP and when a rescan sees a file change, validates the whole set, persists an
//! accepted set to `desired.json` before handing it on, and records rejections.
//!
//! Without valid manifests at start, the last accepted state (`desired.json`) is used,
//! so instances stay supervised while someone fixes the files.

use crate::config::AgentConfig;
use crate::desired::{self, DesiredState, Fingerprint, Source};
use crate::events::{Event, EventLog};
use crate::problem::Problem;
use crate::status::StatusBoard;
use std::path::PathBuf;
use std::sync::Arc;

/// How often the manifest directory is looked at for changes.
pub const RESCAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

pub struct ManifestSource {
    config: Arc<AgentConfig>,
    board: StatusBoard,
    events: Arc<EventLog>,
    accepted: Option<DesiredState>,
    fingerprint: Option<Fingerprint>,
    /// Password files the manifests name, watched like the manifests themselves.
    password_files: Vec<PathBuf>,
}

impl ManifestSource {
    pub fn new(config: Arc<AgentConfig>, board: StatusBoard, events: Arc<EventLog>) -> ManifestSource {
        ManifestSource {
            config,
            board,
            events,
            accepted: None,
            fingerprint: None,
            password_files: Vec::new(),
        }
    }

    /// The desired state to start with: the manifests when they are valid, else the
    /// last accepted state from `desired.json`, else nothing.
    pub fn initial(&mut self) -> Option<DesiredState> {
        match desired::load_persisted(&self.config.desired_state_path(), &self.config) {
            Ok(persisted) => self.accepted = persisted,
            Err(problems) => {
                tracing::error!(
                    path = %self.config.desired_state_path().display(),
                    problems = %join(&problems),
                    "The last accepted desired state cannot be used."
                );
            }
        }
        let from_manifests = self.reload(true);
        if from_manifests.is_some() {
            return from_manifests;
        }
        match &self.accepted {
            Some(state) => {
                tracing::warn!(
                    generation = state.generation,
                    "Using the last accepted desired state until the manifests are valid again."
                );
                Some(state.clone())
            }
            None => None,
        }
    }

    /// Reads the manifests again when `force` is set or a file changed. Returns a new
    /// desired state to apply, or `None` when nothing is to change.
    pub fn reload(&mut self, force: bool) -> Option<DesiredState> {
        let Some(dir) = self.config.manifest_dir.clone() else {
            // Standalone without manifests: nothing is declared, unless an earlier
            // state was accepted, which stays.
            if self.accepted.is_none() && force {
                let empty = DesiredState {
                    generation: 0,
                    source: Source::Manifests,
                    instances: Vec::new(),
                };
                self.accepted = Some(empty.clone());
                return Some(empty);
            }
            return None;
        };
        let fingerprint = desired::fingerprint(&dir, &self.password_files);
        if !force && self.fingerprint.as_ref() == Some(&fingerprint) {
            return None;
        }
        self.fingerprint = Some(fingerprint);
        let next_generation = self.accepted.as_ref().map_or(1, |s| s.generation + 1);
        let mut password_files = Vec::new();
        let loaded = desired::load_manifests_watching(&dir, &self.config, next_generation, &mut password_files);
        if password_files != self.password_files {
            // Watch what the manifests name now (a password file that does not exist
            // yet included), and take their current state as the baseline.
            self.password_files = password_files;
            self.fingerprint = Some(desired::fingerprint(&dir, &self.password_files));
        }
        let state = match loaded {
            Ok(state) => state,
            Err(problems) => {
                self.reject(&problems);
                return None;
            }
        };
        self.board.clear_rejection();
        if let Some(accepted) = &self.accepted {
            if accepted.same_instances(&state) {
                // Nothing changed (a touch, or an error fixed back to what runs).
                return force.then(|| accepted.clone());
            }
        }
        if let Err(error) = desired::persist(&state, &self.config.desired_state_path()) {
            // Try again at the next rescan, not only after the next edit.
            self.fingerprint = None;
            let problem = Problem {
                file: self.config.desired_state_path().display().to_string(),
                field: "-".into(),
                message: format!("the new desired state cannot be persisted, so it is not applied: {error}"),
            };
            self.reject(&[problem]);
            return None;
        }
        self.accepted = Some(state.clone());
        Some(state)
    }

    fn reject(&self, problems: &[Problem]) {
        for problem in problems {
            tracing::error!(problem = problem.to_string().as_str(), "Manifest problem.");
        }
        self.events.emit(
            "",
            Event::DesiredRejected {
                problems: problems.len(),
                first: problems.first().map(ToString::to_string).unwrap_or_default(),
            },
        );
        self.board.rejected("manifests", problems);
    }
}

fn join(problems: &[Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

//! The wait for an engine build from the artifact store. Before a start or a change
//! of a running process, the worker asks for its spec's build; while the build is
//! being looked for, fetched, or failed, nothing is started or restarted: a process
//! that runs keeps running its old build, and the status shows the wait (phase
//! `fetching` when nothing runs) with its progress. A process that crashes meanwhile
//! restarts on the build it ran, if that is still at hand.

use super::*;
use crate::artifacts::{BuildState, Wanted};
use crate::record::InstanceRecord;
use crate::status::BuildWait;

impl Worker {
    /// `None` when the build of `spec`'s version is at hand (or is agent.toml's to
    /// name); otherwise the wait is noted for the status, the worker wakes when the
    /// build's state changes, and at the returned time for a retry after a failure.
    pub(super) fn build_gate(&mut self, spec: &InstanceSpec) -> Option<Option<Instant>> {
        let mut receiver = match self.ctx.builds.want(spec.engine, &spec.version) {
            Wanted::Local(_) | Wanted::Unknown => {
                self.build_done(None);
                return None;
            }
            Wanted::Store(receiver) => receiver,
        };
        let state = receiver.borrow_and_update().clone();
        let mut wait = BuildWait {
            version: spec.version.clone(),
            state: "checking",
            bytes: None,
            total_bytes: None,
            percent: None,
            error: None,
            attempts: 0,
            next_attempt_at_ms: None,
        };
        let mut wake_at = None;
        match state {
            BuildState::Ready(installed) => {
                self.build_done(Some(&installed.executable));
                return None;
            }
            BuildState::Checking => {}
            BuildState::Fetching { bytes, total_bytes } => {
                wait.state = "fetching";
                wait.bytes = Some(bytes);
                wait.total_bytes = total_bytes;
                wait.percent = total_bytes.filter(|t| *t > 0).map(|t| (bytes.min(t) * 100 / t) as u8);
            }
            BuildState::Failed {
                error,
                attempts,
                retry_at,
            } => {
                let retry_in = retry_at.saturating_duration_since(Instant::now());
                let new_failure = self
                    .build_wait
                    .as_ref()
                    .is_none_or(|w| w.attempts != attempts || w.error.as_deref() != Some(error.as_str()));
                if new_failure {
                    self.emit(Event::BuildUnavailable {
                        version: spec.version.clone(),
                        error: error.clone(),
                        retry_in,
                    });
                }
                wait.state = "failed";
                wait.error = Some(error);
                wait.attempts = attempts;
                wait.next_attempt_at_ms = Some(unix_now_millis() + retry_in.as_millis() as u64);
                wake_at = Some(retry_at);
            }
        }
        if self.build_wait.as_ref().is_none_or(|w| w.version != spec.version) {
            self.emit(Event::BuildAwaited {
                version: spec.version.clone(),
            });
        }
        self.build_wait = Some(wait);
        self.build_changes = Some(receiver);
        Some(wake_at)
    }

    /// The wait (if any) is over.
    fn build_done(&mut self, executable: Option<&std::path::Path>) {
        self.build_changes = None;
        if let Some(wait) = self.build_wait.take() {
            if let Some(executable) = executable {
                self.emit(Event::BuildReady {
                    version: wait.version,
                    executable: executable.display().to_string(),
                });
            }
        }
    }

    /// After a crash while the declared version's build is awaited: `spec` at the
    /// version the process ran, to restart on meanwhile. Keeping an instance up
    /// matters more than its moving on; the move happens, with one graceful restart,
    /// once the awaited build is ready. Only when the declared spec differs from what
    /// ran by its version alone (anything else new might not suit the old version),
    /// and never for a deliberate start (not after a crash). A kept build no longer on
    /// disk is asked for again (found or fetched), and the worker wakes when it is.
    pub(super) fn fallback_spec(&mut self, spec: &InstanceSpec) -> Option<Arc<InstanceSpec>> {
        let ran = self.restart_pending.as_ref()?;
        if ran.version == spec.version {
            return None;
        }
        let fallback = InstanceSpec {
            version: ran.version.clone(),
            ..spec.clone()
        };
        // The hash covers the engine too.
        if fallback.config_hash() != ran.config_hash {
            return None;
        }
        match self.ctx.builds.want(fallback.engine, &fallback.version) {
            Wanted::Local(_) => {}
            Wanted::Unknown => return None,
            Wanted::Store(mut receiver) => {
                if !matches!(*receiver.borrow_and_update(), BuildState::Ready(_)) {
                    self.ran_changes = Some(receiver);
                    return None;
                }
            }
        }
        self.emit(Event::BuildFallback {
            version: fallback.version.clone(),
            awaited: spec.version.clone(),
        });
        Some(Arc::new(fallback))
    }
}

/// What a process that exited ran.
pub(super) struct Ran {
    version: String,
    /// Its spec's [`InstanceSpec::config_hash`], as its record says.
    config_hash: String,
}

impl Ran {
    pub(super) fn of(record: &InstanceRecord) -> Ran {
        Ran {
            version: record.version.clone(),
            config_hash: record.config_hash.clone(),
        }
    }
}

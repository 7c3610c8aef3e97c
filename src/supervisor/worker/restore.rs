//! Restores, as the worker sees them: before a start, the spec's `restore_from` is
//! placed when the data directory holds no data, or when a raised `restore_epoch` asks
//! for it over data (which is moved aside, and the running process stopped first).

use super::{blocking, Worker};
use crate::backup::restore;
use crate::engine::{Engine, Layout};
use crate::events::Event;
use crate::spec::InstanceSpec;
use crate::status::RestoreOutcome;

impl Worker {
    /// Reads the last restore from disk, once.
    pub(super) async fn load_restore(&mut self) {
        let dir = self.instance_dir();
        if let Ok(last) = blocking("read the last restore", move || restore::last(&dir)).await {
            self.restore = last;
        }
        self.restore_loaded = true;
    }

    /// Keeps `outcome` as the instance's last restore, in memory and on disk: a restore
    /// over data that is asked for by an epoch is answered once, also across agent
    /// restarts, whether it worked or not.
    async fn remember_restore(&mut self, outcome: RestoreOutcome) {
        let (dir, kept) = (self.instance_dir(), outcome.clone());
        let written = blocking("write restore.json", move || restore::remember(&dir, &kept)).await;
        if let Err(error) = written.and_then(|r| r) {
            tracing::warn!(instance = %self.name, %error, "Cannot keep the last restore; a raised restore_epoch may be answered again after an agent restart.");
        }
        self.restore = Some(outcome);
    }

    /// A raised `restore_epoch` the last restore has not answered: why the running
    /// process must stop first.
    pub(super) fn restore_asked(&self, spec: &InstanceSpec) -> Option<String> {
        spec.backup.restore_from.as_ref()?;
        let answered = self.restore.as_ref().map_or(0, |r| r.epoch);
        (spec.backup.restore_epoch > answered).then(|| format!("restore_epoch {} asked for", spec.backup.restore_epoch))
    }

    /// Before a start: places `restore_from` when it applies. An error means nothing
    /// may start (an instance with no data would start empty).
    pub(super) async fn restore_before_start(
        &mut self,
        spec: &InstanceSpec,
        engine: &'static dyn Engine,
        layout: &Layout,
    ) -> Result<(), String> {
        let Some(source) = &spec.backup.restore_from else {
            return Ok(());
        };
        let data_dir = layout.data_dir.clone();
        let found = blocking("look into the data directory", move || engine.data_files(&data_dir))
            .await?
            .map_err(|e| format!("cannot read {}: {e}", layout.data_dir.display()))?;
        let explicit = self.restore_asked(spec).is_some();
        if !found.is_empty() && !explicit {
            // Data is never overwritten by restore_from alone.
            return Ok(());
        }
        let request = restore::Request {
            name: &self.name,
            engine,
            source,
            instance_dir: self.instance_dir(),
            data_dir: layout.data_dir.clone(),
            target: engine.restore_path(spec, &layout.data_dir),
            epoch: spec.backup.restore_epoch,
            set_aside: !found.is_empty(),
        };
        // Boxed: a download's future is large, and a worker waits in it rarely.
        match Box::pin(restore::restore(&self.ctx.config, &request)).await {
            Ok(outcome) => {
                self.emit(Event::Restored {
                    source: outcome.source.clone(),
                    set_aside: outcome.set_aside.clone(),
                });
                self.remember_restore(outcome).await;
                Ok(())
            }
            Err(error) => {
                self.emit(Event::RestoreFailed {
                    source: source.to_string(),
                    error: error.clone(),
                });
                let failed = RestoreOutcome {
                    at: crate::process::unix_now(),
                    source: source.to_string(),
                    sha256: source.sha256().unwrap_or_default().to_string(),
                    bytes: 0,
                    epoch: spec.backup.restore_epoch,
                    set_aside: None,
                    error: Some(error.clone()),
                };
                if found.is_empty() {
                    // Nothing to start on: the start fails and is tried again, and the
                    // epoch stays unanswered.
                    let epoch = self.restore.as_ref().map_or(0, |r| r.epoch);
                    self.remember_restore(RestoreOutcome { epoch, ..failed }).await;
                    Err(error)
                } else {
                    // The data is still in place (nothing is moved before the backup
                    // is staged and checked): the instance starts on it, and this
                    // epoch is not asked for again.
                    self.remember_restore(failed).await;
                    Ok(())
                }
            }
        }
    }
}

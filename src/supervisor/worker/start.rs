//! Adoption and starts: proving that a running process is the instance's (its record,
//! its binary, its rendered settings), and starting a new one, its files and its
//! records written around the spawn so that an agent killed at any moment leaves
//! nothing it cannot prove its own.

use super::*;

impl Worker {
    /// Adopts the instance's process from its record, if the record proves it ours.
    pub(super) async fn adopt(&mut self, spec: Option<&Arc<InstanceSpec>>) {
        // Everything adoption reads (the record, /proc, the rendered config, the
        // binary agent.toml names) in one trip off the runtime's threads: at an agent
        // restart a thousand workers adopt at once, and each trip is a hand-off
        // between threads.
        let examined = {
            let (dir, boot_id, config) = (self.instance_dir(), self.ctx.boot_id.clone(), self.ctx.config.clone());
            blocking("verify the recorded process", move || examine(&dir, &boot_id, &config)).await
        };
        let Examined {
            record,
            adoption,
            rendered,
            allowed_binary,
        } = match examined {
            Ok(Ok(Some(examined))) => examined,
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
        match adoption {
            Adoption::Adopted(mut process) => {
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
                self.running_settings = match (engine::for_kind(record.engine), rendered) {
                    (Some(engine), Some(Ok(text))) => Some(engine.rendered_settings(&text)),
                    (_, Some(Err(error))) => {
                        tracing::warn!(instance = %self.name, %error, "Cannot read the rendered config; live changes will set every key again.");
                        None
                    }
                    _ => None,
                };
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
                self.drift = binary_drift(&process, allowed_binary.as_deref());
                self.crashes.consecutive = record.consecutive_crashes;
                self.process = Some(*process);
                self.log_offset = 0;
                self.unverified = None;
                self.ready = false;
                self.probe_delay = Duration::ZERO;
                self.probe_began = Instant::now();
            }
            Adoption::Gone(reason) => {
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
                    self.restart_pending = Some(super::build::Ran::of(&record));
                    self.schedule_restart(delay);
                }
                self.remove_records("its process is gone").await;
            }
            Adoption::Unverifiable(reason) => self.set_unverified(reason),
        }
    }

    pub(super) fn set_unverified(&mut self, reason: String) {
        if self.unverified.as_ref() != Some(&reason) {
            self.emit(Event::RecordUnverifiable { reason: reason.clone() });
        }
        self.unverified = Some(reason);
    }

    /// Whether a foreign process holds one of the ports, checked only when a start is
    /// about to happen. The bind probe is cheap; naming the holder is not, so it is done
    /// once per conflict, off the runtime's threads.
    pub(super) async fn check_ports(&mut self, spec: Option<&InstanceSpec>, desired: &Desired, now: Instant) -> bool {
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

    pub(super) async fn start(&mut self, spec: &Arc<InstanceSpec>) {
        let config = self.ctx.config.clone();
        let Some(engine) = engine::for_kind(spec.engine) else {
            return self.start_failed(format!("engine {} is not supported", spec.engine));
        };
        let Some(binary) = self.ctx.builds.executable(spec.engine, &spec.version) else {
            return self.start_failed(format!(
                "{} version {:?} is neither in agent.toml nor a build from the artifact store",
                spec.engine, spec.version
            ));
        };
        let after_crash = self.restart_pending.is_some();
        let layout = self.layout(engine);
        if let Err(error) = self.restore_before_start(spec, engine, &layout).await {
            return self.start_failed(format!("restore: {error}"));
        }
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
        self.restart_pending = None;
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
    pub(super) fn layout(&self, engine: &dyn Engine) -> Layout {
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
    pub(super) async fn write_config(
        &self,
        engine: &'static dyn Engine,
        spec: &InstanceSpec,
        mut layout: Layout,
        pending: Option<InstanceRecord>,
    ) -> Result<Layout, String> {
        let spec = spec.clone();
        blocking("write the instance's config", move || {
            if engine.binds_by_interface() {
                layout.bind_interface = crate::monitoring::host::bind_interface(&layout.bind)?;
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
    pub(super) fn start_failed(&mut self, error: String) {
        self.emit(Event::StartFailed { error: error.clone() });
        self.failure = Some(error);
        let delay = self.crashes.on_crash(Duration::ZERO, fastrand::f64());
        self.schedule_restart(delay);
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

/// What [`examine`] found for an adoption.
struct Examined {
    record: InstanceRecord,
    adoption: Adoption,
    /// The rendered config file's text, read only for an adopted process.
    rendered: Option<std::io::Result<String>>,
    /// The binary agent.toml now names for the record's engine and version, its
    /// symbolic links resolved.
    allowed_binary: Option<PathBuf>,
}

/// Reads the instance's record and, when there is one, checks its process
/// (`Process::adopt`) and reads what an adopted process needs. `Ok(None)`: no record.
fn examine(
    instance_dir: &std::path::Path,
    boot_id: &str,
    config: &AgentConfig,
) -> Result<Option<Examined>, RecordError> {
    let Some(record) = record::read(instance_dir)? else {
        return Ok(None);
    };
    let adoption = Process::adopt(&record, boot_id);
    let adopted = matches!(adoption, Adoption::Adopted(_));
    let rendered = engine::for_kind(record.engine)
        .filter(|_| adopted)
        .map(|engine| std::fs::read_to_string(instance_dir.join(engine.config_file_name())));
    let allowed_binary = config
        .binary(record.engine, &record.version)
        .filter(|_| adopted)
        .map(|allowed| std::fs::canonicalize(allowed).unwrap_or_else(|_| allowed.to_path_buf()));
    Ok(Some(Examined {
        record,
        adoption,
        rendered,
        allowed_binary,
    }))
}

/// Whether agent.toml now names another binary (`allowed`) for the version an adopted
/// process runs; that does not restart it (invariant 2), but the status says so.
fn binary_drift(process: &Process, allowed: Option<&std::path::Path>) -> Option<String> {
    let record = process.record();
    let allowed = allowed?;
    (allowed != record.executable).then(|| {
        format!(
            "runs {}, agent.toml now allows {} for version {:?}: it applies at the next restart (raise restart_epoch)",
            record.executable.display(),
            allowed.display(),
            record.version
        )
    })
}

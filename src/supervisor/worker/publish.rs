//! What the worker publishes: the instance's status on the board (phase, message,
//! exits, stops, the last log lines with the password redacted) and the process the
//! monitor should probe.

use super::*;

impl Worker {
    pub(super) fn publish_current(&mut self) {
        let spec = self.specs.borrow().clone();
        self.publish(&desired_of(spec.as_deref()));
    }

    /// Publishes the status derived from what the worker knows.
    pub(super) fn publish(&mut self, desired: &Desired) {
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
        // What runs, which may not be what is declared yet (a build being fetched).
        let version = self.process.as_ref().map_or(version, |p| p.record().version.clone());
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
            backup: None,
            backups: Vec::new(),
            restore: self.restore.clone(),
            build: self.build_wait.clone(),
        };
        self.ctx.board.publish(status);
        self.update_monitor();
    }

    /// Points the monitor at the live process once it is ready, and away from it
    /// otherwise.
    pub(super) fn update_monitor(&self) {
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

    pub(super) fn phase(&self, want: Want) -> Phase {
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
            Want::Running if self.build_wait.as_ref().is_some_and(|w| w.state == "failed") => Phase::Failed,
            Want::Running if self.build_wait.is_some() => Phase::Fetching,
            Want::Running if self.failure.is_some() => Phase::Failed,
            Want::Running if self.crashes.in_crash_loop() => Phase::CrashLoop,
            Want::Running if self.restart_not_before.is_some() => Phase::Backoff,
            Want::Running => Phase::Pending,
        }
    }

    pub(super) fn message(&self, phase: Phase) -> String {
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
                [self.drift.clone(), grace, self.build_note()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            Phase::Fetching => self.build_note().unwrap_or_default(),
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
            Phase::Failed if self.failure.is_none() => self.build_note().unwrap_or_default(),
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

impl Worker {
    /// What the wait for a build looks like, in words.
    fn build_note(&self) -> Option<String> {
        let wait = self.build_wait.as_ref()?;
        let running = self.process.as_ref().map_or(String::new(), |p| {
            format!("version {:?} keeps running; ", p.record().version)
        });
        let what = format!("the build of version {:?} from the artifact store", wait.version);
        // No byte counts or countdowns: the message is part of what a report compares,
        // and `build` carries the numbers.
        Some(match (wait.state, &wait.error) {
            ("failed", Some(error)) => format!("{running}{what} is not available: {error}; tried again with back-off"),
            ("fetching", _) => format!("{running}fetching {what}"),
            _ => format!("{running}looking for {what}"),
        })
    }
}

/// Replaces the password in a log line: redis-server echoes offending config lines.
pub(super) fn redact(line: &str, password: Option<&Secret>) -> String {
    match password {
        Some(p) if !p.expose().is_empty() => line.replace(p.expose(), "<redacted>"),
        _ => line.to_string(),
    }
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

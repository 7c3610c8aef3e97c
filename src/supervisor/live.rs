//! Talking to a running server to change it without a restart: applying a spec's
//! live changes and setting back values that drifted. These functions only talk to
//! the server through the [`Engine`] and say what happened; the worker decides what
//! that means for the instance (events, the record, the rendered file, a restart).

use super::changes::Changes;
use crate::engine::{ClientError, Engine, Mutability, Session, SetOutcome, Settings};
use crate::events::Event;
use crate::spec::Secret;

/// What applying live changes did.
#[derive(Debug, Default)]
pub struct Applied {
    /// What changed, one entry per key (`maxmemory-policy = "allkeys-lru"`).
    pub changes: Vec<String>,
    /// Keys the server refused, with its reason: they need a restart.
    pub refused: Vec<(String, String)>,
    /// Events to emit (unverified values).
    pub events: Vec<Event>,
}

/// Sets every changed key and the master. Passwords are the caller's (their grace
/// period needs the record written first).
pub async fn apply(engine: &dyn Engine, session: &mut Session, changes: &Changes) -> Result<Applied, ClientError> {
    let mut applied = Applied::default();
    for (key, value) in &changes.config {
        match engine.config_set(session, key, value).await? {
            SetOutcome::Applied { now } => {
                if !engine.same_value(value, &now) {
                    applied.events.push(Event::ConfigUnverified {
                        key: key.clone(),
                        wanted: value.clone(),
                        got: now,
                    });
                }
                applied.changes.push(format!("{key} = {value:?}"));
            }
            SetOutcome::Refused { reason } => applied.refused.push((key.clone(), reason)),
        }
    }
    if let Some(master) = &changes.replica_of {
        engine.set_master(session, master.as_ref()).await?;
        applied.changes.push(match master {
            Some(master) => format!("replica of {master}"),
            None => "master (replication stopped)".into(),
        });
    }
    Ok(applied)
}

/// What a drift check compares the server with.
pub struct DriftCheck<'a> {
    pub settings: &'a Settings,
    /// The passwords that must be valid; `None` skips them (during a grace period
    /// the server holds two on purpose).
    pub passwords: Option<&'a [Secret]>,
    /// The master the last health probe saw (`Some(None)`: a master), if that probe
    /// was sent after the last change.
    pub observed_master: Option<Option<String>>,
}

impl DriftCheck<'_> {
    /// The config keys to compare: those the spec sets that can change live.
    fn keys(&self, engine: &dyn Engine) -> Vec<&str> {
        self.settings
            .config
            .keys()
            .map(String::as_str)
            .filter(|key| engine.mutability(key) == Mutability::Live)
            .collect()
    }

    /// Whether the health probe saw another master than the spec's.
    fn master_drifted(&self, engine: &dyn Engine) -> bool {
        match (&self.observed_master, &self.settings.replica_of) {
            (None, _) => false,
            (Some(None), wanted) => wanted.is_some(),
            (Some(Some(_)), None) => true,
            (Some(Some(seen)), Some(wanted)) => !engine.is_master(wanted, seen),
        }
    }

    /// Whether the check has to talk to the server at all.
    pub fn needs_server(&self, engine: &dyn Engine) -> bool {
        !self.keys(engine).is_empty() || self.passwords.is_some() || self.master_drifted(engine)
    }
}

/// Compares what the server runs with to the check's settings and sets back whatever
/// differs: the live config keys, the master, and the passwords. Returns one event per
/// difference found.
pub async fn correct_drift(
    engine: &dyn Engine,
    session: &mut Session,
    check: &DriftCheck<'_>,
) -> Result<Vec<Event>, ClientError> {
    let mut events = Vec::new();
    let (settings, passwords) = (check.settings, check.passwords);
    let keys = check.keys(engine);
    let current = engine.read_current(session, &keys, passwords).await?;
    for key in keys {
        let (Some(wanted), Some(was)) = (settings.config.get(key), current.config.get(key)) else {
            continue;
        };
        if engine.same_value(wanted, was) {
            continue;
        }
        match engine.config_set(session, key, wanted).await? {
            SetOutcome::Applied { now } => events.push(Event::DriftCorrected {
                key: key.to_string(),
                was: was.clone(),
                now,
            }),
            SetOutcome::Refused { reason } => events.push(Event::DriftUncorrected {
                key: key.to_string(),
                error: reason,
            }),
        }
    }

    if check.master_drifted(engine) {
        engine.set_master(session, settings.replica_of.as_ref()).await?;
        let describe = |m: Option<String>| match m {
            Some(m) => format!("replica of {m}"),
            None => "master".to_string(),
        };
        events.push(Event::DriftCorrected {
            key: "replica_of".into(),
            was: describe(check.observed_master.clone().flatten()),
            now: describe(settings.replica_of.as_ref().map(ToString::to_string)),
        });
    }

    if let (Some(passwords), Some(false)) = (passwords, current.passwords_match) {
        engine.set_passwords(session, passwords).await?;
        // Never the values: only that they were not the spec's.
        events.push(Event::DriftCorrected {
            key: "password".into(),
            was: "not the spec's".into(),
            now: "the spec's".into(),
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{self, EngineKind};
    use crate::spec::ReplicaOf;

    #[test]
    fn a_check_talks_to_the_server_only_when_there_is_something_to_compare() {
        let redis = engine::for_kind(EngineKind::Redis).unwrap();
        let mut settings = Settings::default();
        let check = |settings: &Settings, seen: Option<Option<&str>>| {
            let check = DriftCheck {
                settings,
                passwords: None,
                observed_master: seen.map(|m| m.map(str::to_string)),
            };
            (check.needs_server(redis), check.master_drifted(redis))
        };
        assert_eq!(check(&settings, None), (false, false));
        assert_eq!(check(&settings, Some(None)), (false, false));
        assert_eq!(check(&settings, Some(Some("10.0.0.1:6379"))), (true, true));
        settings.replica_of = Some(ReplicaOf {
            host: "10.0.0.1".into(),
            port: 6379,
        });
        assert_eq!(check(&settings, Some(Some("10.0.0.1:6379"))), (false, false));
        assert_eq!(check(&settings, Some(None)), (true, true));
        // Keys that cannot change live are not compared.
        settings.config.insert("databases".into(), "4".into());
        assert_eq!(check(&settings, None), (false, false));
        settings.config.insert("hz".into(), "20".into());
        assert_eq!(check(&settings, None), (true, false));
    }
}

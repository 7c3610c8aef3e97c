//! Talking to a running server to change it without a restart: applying a spec's
//! live changes and setting back values that drifted. These functions only talk to
//! the server through the [`Engine`] and say what happened; the worker decides what
//! that means for the instance (events, the record, the rendered file, a restart).

use super::changes::Changes;
use crate::engine::{values_match, ClientError, Engine, Mutability, Session, SetOutcome, Settings};
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
                if !values_match(value, &now) {
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

/// Compares what the server runs with to `settings` and sets back whatever differs:
/// the live config keys, the master, and (when `passwords` is given) the passwords.
/// Returns one event per difference found.
pub async fn correct_drift(
    engine: &dyn Engine,
    session: &mut Session,
    settings: &Settings,
    passwords: Option<&[Secret]>,
) -> Result<Vec<Event>, ClientError> {
    let mut events = Vec::new();
    let keys: Vec<&str> = settings
        .config
        .keys()
        .map(String::as_str)
        .filter(|key| engine.mutability(key) == Mutability::Live)
        .collect();
    let current = engine.config_get(session, &keys).await?;
    for key in keys {
        let (Some(wanted), Some(was)) = (settings.config.get(key), current.get(key)) else {
            continue;
        };
        if values_match(wanted, was) {
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

    let master = engine.master(session).await?;
    if master != settings.replica_of {
        engine.set_master(session, settings.replica_of.as_ref()).await?;
        let describe = |m: &Option<crate::spec::ReplicaOf>| match m {
            Some(m) => format!("replica of {m}"),
            None => "master".to_string(),
        };
        events.push(Event::DriftCorrected {
            key: "replica_of".into(),
            was: describe(&master),
            now: describe(&settings.replica_of),
        });
    }

    if let Some(passwords) = passwords {
        if !engine.passwords_are(session, passwords).await? {
            engine.set_passwords(session, passwords).await?;
            // Never the values: only that they were not the spec's.
            events.push(Event::DriftCorrected {
                key: "password".into(),
                was: "not the spec's".into(),
                now: "the spec's".into(),
            });
        }
    }
    Ok(events)
}

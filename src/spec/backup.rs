//! The backup and restore fields of a spec: `backup_epoch`, `[backup]` (a schedule),
//! `restore_from` (a local backup id, or a URL with its SHA-256) and `restore_epoch`.
//!
//! None of them is part of the config hash: asking for a backup or a restore never
//! changes what the server runs with.

use crate::config::ScheduleOverride;
use crate::problem::{Checker, Fields};
use serde_json::Value;
use std::fmt;

/// Where a restore takes its data from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreSource {
    /// A backup of this instance on this host, by id.
    Local { id: String },
    /// A backup served over HTTP(S): another agent's `/v1/instances/{name}/backups/{id}`
    /// or any server. The checksum comes with the request, so what arrives is what
    /// was asked for, whoever served it.
    Remote { url: reqwest::Url, sha256: String },
}

impl fmt::Display for RestoreSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreSource::Local { id } => write!(f, "backup {id}"),
            // Without its query: a server may take a credential there.
            RestoreSource::Remote { url, .. } => {
                let mut shown = url.clone();
                shown.set_query(None);
                let _ = shown.set_password(None);
                write!(f, "{shown}")
            }
        }
    }
}

impl RestoreSource {
    /// The SHA-256 a placed backup must have, when the request names one.
    pub fn sha256(&self) -> Option<&str> {
        match self {
            RestoreSource::Local { .. } => None,
            RestoreSource::Remote { sha256, .. } => Some(sha256),
        }
    }
}

/// The backup and restore fields of one spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupFields {
    /// Raising it asks for one backup.
    pub backup_epoch: u64,
    pub schedule: ScheduleOverride,
    pub restore_from: Option<RestoreSource>,
    /// Raising it asks for a restore from `restore_from` even into data.
    pub restore_epoch: u64,
}

/// Parses the fields, adding every problem to `c`.
pub fn parse(f: &Fields<'_>, c: &mut Checker) -> BackupFields {
    let mut fields = BackupFields {
        backup_epoch: c.unsigned(f, "backup_epoch").unwrap_or(0),
        restore_epoch: c.unsigned(f, "restore_epoch").unwrap_or(0),
        ..BackupFields::default()
    };
    if let Some(table) = c.subtable(f, "backup") {
        fields.schedule = crate::config::parse_backup_schedule(table, &f.path("backup"), c);
    }
    fields.restore_from = restore_source(f, c);
    fields
}

fn restore_source(f: &Fields<'_>, c: &mut Checker) -> Option<RestoreSource> {
    match f.map.get("restore_from") {
        None => None,
        Some(Value::String(_)) => {
            let id = c.string(f, "restore_from")?;
            if valid_backup_id(&id) {
                Some(RestoreSource::Local { id })
            } else {
                c.problem(
                    f.path("restore_from"),
                    format!("{id:?} is not a backup id (1-64 characters A-Z, a-z, 0-9 and '-'); a backup elsewhere is {{ url = \"…\", sha256 = \"…\" }}"),
                );
                None
            }
        }
        Some(Value::Object(map)) => {
            let path = f.path("restore_from");
            let rf = c.table(map, &path, &["url", "sha256"]);
            let url = c
                .required_string(&rf, "url")
                .and_then(|text| match reqwest::Url::parse(&text) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
                    Ok(url) => {
                        c.problem(
                            rf.path("url"),
                            format!("scheme {:?} is not http or https", url.scheme()),
                        );
                        None
                    }
                    Err(e) => {
                        c.problem(rf.path("url"), format!("not a URL: {e}"));
                        None
                    }
                });
            let sha256 = c.required_string(&rf, "sha256").and_then(|text| {
                let lower = text.to_ascii_lowercase();
                if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Some(lower)
                } else {
                    c.problem(
                        rf.path("sha256"),
                        "expected 64 hexadecimal digits (the SHA-256 of the backup)",
                    );
                    None
                }
            });
            Some(RestoreSource::Remote {
                url: url?,
                sha256: sha256?,
            })
        }
        Some(other) => {
            c.problem(
                f.path("restore_from"),
                format!(
                    "expected a backup id or {{ url, sha256 }}, found {}",
                    crate::problem::kind(other)
                ),
            );
            None
        }
    }
}

/// A backup id: `[A-Za-z0-9][A-Za-z0-9-]{0,63}`. Ids are file names and URL path
/// segments, so nothing else is allowed.
pub fn valid_backup_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=64).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_are_safe_file_names() {
        assert!(valid_backup_id("20261129T172115Z"));
        assert!(valid_backup_id("20261129T172115Z-2"));
        for bad in ["", "-a", "../x", "a/b", "a.rdb", "a b", &"a".repeat(65)] {
            assert!(!valid_backup_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_remote_source_never_shows_its_query_or_password() {
        let source = RestoreSource::Remote {
            url: reqwest::Url::parse("https://u:secret@h:1/b/x?token=t").unwrap(),
            sha256: "0".repeat(64),
        };
        assert_eq!(source.to_string(), "https://u@h:1/b/x");
    }
}

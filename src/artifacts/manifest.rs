//! An artifact's `manifest.json`: which engine and version it is, the archive beside
//! it with its SHA-256, and the executable's path inside the archive. Read only after
//! its signature verified; still, every field is checked, because the names in it
//! become paths on this host.

use crate::engine::EngineKind;
use std::path::{Component, Path};

/// A verified manifest's contents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ArtifactManifest {
    pub engine: String,
    pub version: String,
    /// The archive's file name, beside the manifest (a `.tar.gz`).
    pub archive: String,
    /// The archive's SHA-256, lower-case hex.
    pub sha256: String,
    /// The executable's path inside the archive.
    pub executable: String,
}

/// A manifest that cannot be used, saying which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{what} is not a manifest: {reason}")]
    Syntax { what: String, reason: String },
    #[error("{what}: {field} is {found:?}, and {expected:?} was asked for")]
    Other {
        what: String,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error("{what}: {field} {value:?} {why}")]
    Field {
        what: String,
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

/// Parses the manifest `bytes` (named `what` in errors) for `engine` `version`.
pub fn parse(what: &str, bytes: &[u8], engine: EngineKind, version: &str) -> Result<ArtifactManifest, ManifestError> {
    let manifest: ArtifactManifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    let other = |field, found: &str, expected: &str| ManifestError::Other {
        what: what.to_string(),
        field,
        found: found.to_string(),
        expected: expected.to_string(),
    };
    let bad = |field, value: &str, why| ManifestError::Field {
        what: what.to_string(),
        field,
        value: value.to_string(),
        why,
    };
    if manifest.engine != engine.as_str() {
        return Err(other("engine", &manifest.engine, engine.as_str()));
    }
    if manifest.version != version {
        return Err(other("version", &manifest.version, version));
    }
    let archive = &manifest.archive;
    if !plain_name(archive) {
        return Err(bad("archive", archive, "is not a plain file name beside the manifest"));
    }
    if !archive.ends_with(".tar.gz") {
        return Err(bad("archive", archive, "is not a .tar.gz"));
    }
    let sha = &manifest.sha256;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(bad("sha256", sha, "is not 64 lower-case hexadecimal digits"));
    }
    if !inside_path(&manifest.executable) {
        return Err(bad(
            "executable",
            &manifest.executable,
            "is not a relative path inside the archive",
        ));
    }
    Ok(manifest)
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(char::is_control)
}

fn inside_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 1024
        && !path.chars().any(char::is_control)
        && !path.split('/').any(|part| part.is_empty() || part == ".")
        && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &[u8] = include_bytes!("../../tests/fixtures/artifacts/manifest.json");

    #[test]
    fn the_fixture_manifest_is_read() {
        let m = parse("manifest.json", MANIFEST, EngineKind::Redis, "7.2").unwrap();
        assert_eq!(m.archive, "redis-7.2.tar.gz");
        assert_eq!(m.executable, "bin/redis-server");
    }

    #[test]
    fn every_field_is_checked() {
        let wrong_version = parse("m", MANIFEST, EngineKind::Redis, "7.0").unwrap_err();
        assert_eq!(
            wrong_version.to_string(),
            "m: version is \"7.2\", and \"7.0\" was asked for"
        );
        assert!(parse("m", MANIFEST, EngineKind::Pika, "7.2")
            .unwrap_err()
            .to_string()
            .contains("engine is \"redis\""));
        let with = |field: &str, value: &str| {
            let mut json: serde_json::Value = serde_json::from_slice(MANIFEST).unwrap();
            json[field] = value.into();
            parse("m", json.to_string().as_bytes(), EngineKind::Redis, "7.2")
        };
        for (field, value) in [
            ("archive", "../redis.tar.gz"),
            ("archive", "redis.zip"),
            ("archive", "a\nb.tar.gz"),
            ("sha256", "ABC"),
            ("sha256", &"A".repeat(64)),
            ("executable", "/usr/bin/redis-server"),
            ("executable", "bin/../../x"),
            ("executable", ""),
            ("executable", "./bin/x"),
        ] {
            let error = with(field, value).unwrap_err();
            assert!(
                error.to_string().starts_with(&format!("m: {field} ")),
                "{field}={value:?}: {error}"
            );
        }
        assert!(matches!(
            parse("m", b"{\"engine\": 1}", EngineKind::Redis, "7.2"),
            Err(ManifestError::Syntax { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_handled(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse("m", &bytes, EngineKind::Redis, "7.2");
        }
    }
}

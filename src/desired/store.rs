//! `data_dir/desired.json`: the last accepted inputs, written atomically and fsynced
//! before they are applied, and read back (and validated again) at start.

use super::{document, Declared, DocumentSource, Inputs};
use crate::config::AgentConfig;
use crate::problem::{Checker, Problem};
use crate::spec::{InstanceSpec, SpecContext};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

/// Writes the accepted inputs and their revision to `path`, readable by the owner
/// only (specs may hold passwords).
pub fn persist(inputs: &Inputs, revision: u64, path: &Path) -> Result<(), crate::atomic_file::WriteError> {
    let doc = json!({
        "revision": revision,
        "document": inputs.document.as_ref().map(document::Document::to_json),
        "manifests": inputs.manifests.iter().map(|d| json!({
            "file": d.file,
            "spec": Value::Object(d.raw.clone()),
        })).collect::<Vec<_>>(),
    });
    let mut bytes = serde_json::to_vec_pretty(&doc).map_err(|e| crate::atomic_file::WriteError {
        path: path.to_path_buf(),
        step: "serialize",
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    crate::atomic_file::write(path, &bytes, 0o600, crate::atomic_file::Durability::Durable)
}

/// Reads the last accepted inputs and revision back. `Ok(None)` when there are none
/// yet. Everything is validated again: agent.toml may have changed since.
pub fn load_persisted(path: &Path, config: &AgentConfig) -> Result<Option<(Inputs, u64)>, Vec<Problem>> {
    let file = path.display().to_string();
    let fail = |message: String| {
        vec![Problem {
            file: file.clone(),
            field: "-".into(),
            message,
        }]
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(format!("cannot read: {e}"))),
    };
    let doc: Value = serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let revision = doc["revision"]
        .as_u64()
        .ok_or_else(|| fail("no revision (written by another version of ker-agent?)".into()))?;
    let document = match &doc["document"] {
        Value::Null => None,
        Value::Object(map) => {
            let source: DocumentSource = serde_json::from_value(map.get("source").cloned().unwrap_or_default())
                .map_err(|e| fail(format!("document.source: {e}")))?;
            Some(document::from_map(map, source, config)?)
        }
        _ => return Err(fail("document: expected an object".into())),
    };
    let ctx = SpecContext {
        config,
        base_dir: config.manifest_dir.as_deref(),
        paths_allowed: true,
    };
    let mut manifests = Vec::new();
    let mut c = Checker::new(file.clone());
    for (i, item) in doc["manifests"].as_array().into_iter().flatten().enumerate() {
        let Some(raw) = item["spec"].as_object() else {
            c.problem(format!("manifests[{i}]"), "not a spec");
            continue;
        };
        if let Some(spec) = InstanceSpec::parse(raw, &format!("manifests[{i}]"), &ctx, &mut c) {
            manifests.push(Declared {
                file: item["file"].as_str().unwrap_or(&file).to_string(),
                path: String::new(),
                raw: raw.clone(),
                spec: Arc::new(spec),
            });
        }
    }
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let inputs = Inputs { document, manifests };
    inputs.merge(config, revision, "desired.json")?;
    Ok(Some((inputs, revision)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{load_manifests, parse_document};
    use crate::spec::tests::test_config;

    #[test]
    fn inputs_round_trip_through_desired_json() {
        let config = test_config();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.toml"),
            "name = \"m\"\nport = 7001\nversion = \"7.0\"\n",
        )
        .unwrap();
        let inputs = Inputs {
            document: Some(
                parse_document(
                    br#"{"generation": 9, "instances": [{"name": "d", "port": 7002, "version": "7.0", "password": "pw"}]}"#,
                    DocumentSource::Controller,
                    &config,
                )
                .unwrap(),
            ),
            manifests: load_manifests(dir.path(), &config).unwrap(),
        };
        let path = dir.path().join("desired.json");
        persist(&inputs, 5, &path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let (back, revision) = load_persisted(&path, &config).unwrap().unwrap();
        assert_eq!(revision, 5);
        assert_eq!(back.specs(), inputs.specs());
        assert_eq!(back.document.unwrap().generation, 9);
        assert_eq!(back.manifests[0].file, dir.path().join("m.toml").display().to_string());
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.json");
        std::fs::write(&path, "{").unwrap();
        let problems = load_persisted(&path, &test_config()).unwrap_err();
        assert!(
            problems[0].to_string().contains("desired.json: -: not valid JSON"),
            "{problems:?}"
        );
        assert!(load_persisted(&dir.path().join("none.json"), &test_config())
            .unwrap()
            .is_none());
    }
}

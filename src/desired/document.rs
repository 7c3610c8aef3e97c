//! The desired-state document: `{"generation": N, "instances": [spec, …]}`, the same
//! from the controller and from `PUT /v1/desired-state`. Every problem is reported with
//! its field (`instances[3].port`).

use super::Declared;
use crate::config::AgentConfig;
use crate::problem::{Checker, Problem};
use crate::spec::{InstanceSpec, SpecContext};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The largest document the agent reads (a few hundred specs are a few hundred KB).
pub const MAX_DOCUMENT_BYTES: usize = 10 * 1024 * 1024;

/// Who sent a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentSource {
    Controller,
    /// `PUT /v1/desired-state` on the local API (standalone mode).
    Local,
}

impl DocumentSource {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentSource::Controller => "controller",
            DocumentSource::Local => "local",
        }
    }
}

/// A validated document.
#[derive(Debug, Clone)]
pub struct Document {
    pub generation: u64,
    pub source: DocumentSource,
    pub instances: Vec<Declared>,
}

impl Document {
    /// The document as JSON, as it was received (for `desired.json`).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "generation": self.generation,
            "source": self.source,
            "instances": self.instances.iter().map(|d| Value::Object(d.raw.clone())).collect::<Vec<_>>(),
        })
    }
}

/// The generation a document claims, read without validating the rest (to report a
/// rejection with it, and to not fetch the same invalid document again).
pub fn claimed_generation(bytes: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Claim {
        generation: u64,
    }
    serde_json::from_slice::<Claim>(bytes).ok().map(|c| c.generation)
}

/// Parses and validates a document. Specs in it may not name host paths
/// (`password_file`): the controller never names a path (invariant 3).
pub fn parse_document(bytes: &[u8], source: DocumentSource, config: &AgentConfig) -> Result<Document, Vec<Problem>> {
    let label = |generation: Option<u64>| match generation {
        Some(g) => format!("{} document generation {g}", source.as_str()),
        None => format!("{} document", source.as_str()),
    };
    let one = |file: String, field: &str, message: String| {
        vec![Problem {
            file,
            field: field.to_string(),
            message,
        }]
    };
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(one(
            label(None),
            "-",
            format!("{} bytes is more than the limit of {MAX_DOCUMENT_BYTES}", bytes.len()),
        ));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| one(label(None), "-", format!("not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(one(label(None), "-", "expected a JSON object".into()));
    };
    from_map(&map, source, config)
}

/// Validates a parsed document (also used for the copy in `desired.json`).
pub(super) fn from_map(
    map: &Map<String, Value>,
    source: DocumentSource,
    config: &AgentConfig,
) -> Result<Document, Vec<Problem>> {
    let generation = map.get("generation").and_then(Value::as_u64);
    let file = match generation {
        Some(g) => format!("{} document generation {g}", source.as_str()),
        None => format!("{} document", source.as_str()),
    };
    let mut c = Checker::new(file.clone());
    let top = c.table(map, "", &["generation", "instances", "source"]);
    if generation.is_none() {
        match map.get("generation") {
            None => c.problem("generation", "missing (required)"),
            Some(_) => c.problem("generation", "expected a non-negative integer"),
        }
    }
    let ctx = SpecContext {
        config,
        base_dir: None,
        paths_allowed: false,
    };
    let mut instances = Vec::new();
    match top.map.get("instances") {
        None => c.problem("instances", "missing (required; [] for no instances)"),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("instances[{i}]");
                let Value::Object(raw) = item else {
                    c.problem(path, "expected a spec object");
                    continue;
                };
                if let Some(spec) = InstanceSpec::parse(raw, &path, &ctx, &mut c) {
                    instances.push(Declared {
                        file: file.clone(),
                        path,
                        raw: raw.clone(),
                        spec: Arc::new(spec),
                    });
                }
            }
        }
        Some(other) => c.problem(
            "instances",
            format!("expected a list, found {}", crate::problem::kind(other)),
        ),
    }
    c.problems.extend(super::check_set(&instances, config));
    match (generation, c.problems.is_empty()) {
        (Some(generation), true) => Ok(Document {
            generation,
            source,
            instances,
        }),
        _ => Err(c.problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::test_config;

    fn problems(text: &str) -> Vec<String> {
        parse_document(text.as_bytes(), DocumentSource::Controller, &test_config())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_claimed_generation_is_read_from_any_document() {
        assert_eq!(
            claimed_generation(br#"{"generation": 7, "instances": "junk"}"#),
            Some(7)
        );
        assert_eq!(claimed_generation(b"junk"), None);
        assert_eq!(claimed_generation(br#"{"generation": -1}"#), None);
    }

    #[test]
    fn a_valid_document() {
        let doc = parse_document(
            br#"{"generation": 7, "instances": [
                {"name": "a", "port": 7001, "version": "7.0", "maxmemory": "10mb", "config": {"hz": 20}},
                {"name": "b", "port": 7002, "version": "7.0", "state": "stopped", "password": "pw"}
            ]}"#,
            DocumentSource::Local,
            &test_config(),
        )
        .unwrap();
        assert_eq!(doc.generation, 7);
        assert_eq!(doc.instances.len(), 2);
        assert_eq!(doc.instances[1].origin(), "local document generation 7 instances[1]");
        assert_eq!(doc.instances[0].spec.config["hz"], "20");
    }

    #[test]
    fn every_problem_names_its_field() {
        crate::problem::assert_problems(
            &problems(
                r#"{"generation": 3, "extra": 1, "instances": [
                    {"name": "a", "port": 7001, "version": "7.0"},
                    {"name": "b", "port": 7002, "version": "7.0", "password_file": "/etc/shadow"},
                    {"name": "a", "port": 7003, "version": "7.0"},
                    7,
                    {"name": "c", "port": 80, "version": "7.0"}
                ]}"#,
            ),
            &[
                "controller document generation 3: extra: unknown key",
                "controller document generation 3: instances[1].password_file: not allowed in a desired-state document",
                "controller document generation 3: instances[2].name: \"a\" is already declared in controller document generation 3 instances[0]",
                "controller document generation 3: instances[3]: expected a spec object",
                "controller document generation 3: instances[4].port: 80 is outside 1024-65535",
            ],
        );
    }

    #[test]
    fn malformed_documents_are_one_clear_problem() {
        assert_eq!(
            problems("not json")[0].split(": ").take(2).collect::<Vec<_>>(),
            ["controller document", "-"]
        );
        assert!(problems("not json")[0].contains("not valid JSON"));
        assert!(problems("[1]")[0].ends_with("expected a JSON object"));
        crate::problem::assert_problems(
            &problems(r#"{"instances": []}"#),
            &["controller document: generation: missing (required)"],
        );
        crate::problem::assert_problems(
            &problems(r#"{"generation": -1, "instances": {}}"#),
            &[
                "controller document: generation: expected a non-negative integer",
                "controller document: instances: expected a list, found a table",
            ],
        );
        let huge = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        let error = parse_document(&huge, DocumentSource::Controller, &test_config()).unwrap_err();
        assert!(error[0].message.contains("more than the limit"), "{error:?}");
    }
}

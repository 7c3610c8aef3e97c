//! The desired state of the node, validated as a whole (invariant 4) and persisted
//! atomically to `data_dir/desired.json` before it is applied, so that the agent keeps
//! running the last accepted state without its sources (invariant 7).
//!
//! It is made of two inputs: the last accepted desired-state *document* (from the
//! controller or the local API: `{ generation, instances }`) and the static
//! *manifests* of `manifest_dir`. They are merged; a name or port used by both
//! rejects the change that caused it.

mod document;
mod manifests;
mod store;

pub use document::{claimed_generation, parse_document, Document, DocumentSource, MAX_DOCUMENT_BYTES};
pub use manifests::{fingerprint, load_manifests, load_manifests_watching, manifest_files, FileStamp, Fingerprint};
pub use store::{load_persisted, persist};

use crate::config::AgentConfig;
use crate::engine;
use crate::problem::Problem;
use crate::spec::InstanceSpec;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One spec and where it was declared.
#[derive(Clone)]
pub struct Declared {
    /// The manifest file, or the document (`controller document generation 4`).
    pub file: String,
    /// The spec's place in that file: empty for a manifest, `instances[3]` in a
    /// document.
    pub path: String,
    /// The spec as written, kept to persist it.
    pub raw: Map<String, Value>,
    pub spec: Arc<InstanceSpec>,
}

impl std::fmt::Debug for Declared {
    /// Without `raw`: it holds the password as written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Declared")
            .field("file", &self.file)
            .field("path", &self.path)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// What the desired state is made of.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The last accepted document, if any.
    pub document: Option<Document>,
    /// The static manifests.
    pub manifests: Vec<Declared>,
}

impl Inputs {
    /// Every declared spec, document first.
    pub fn declared(&self) -> impl Iterator<Item = &Declared> {
        self.document
            .iter()
            .flat_map(|d| d.instances.iter())
            .chain(self.manifests.iter())
    }

    /// The specs by name.
    pub fn specs(&self) -> BTreeMap<String, Arc<InstanceSpec>> {
        self.declared().map(|d| (d.spec.name.clone(), d.spec.clone())).collect()
    }

    /// Checks the merged set; on success the desired state it makes.
    pub fn merge(
        &self,
        config: &AgentConfig,
        revision: u64,
        source: &'static str,
    ) -> Result<DesiredState, Vec<Problem>> {
        let all: Vec<Declared> = self.declared().cloned().collect();
        let problems = check_set(&all, config);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(DesiredState {
            revision,
            generation: self.document.as_ref().map(|d| d.generation),
            source,
            instances: all,
        })
    }
}

/// A validated desired state, as handed to the supervisor.
#[derive(Debug, Clone)]
pub struct DesiredState {
    /// Counts accepted changes on this node, whatever their source.
    pub revision: u64,
    /// The generation of the document in it, if any (what the controller sees as
    /// `observed_generation`).
    pub generation: Option<u64>,
    /// Where the last accepted change came from: `manifests`, `controller`, `local`.
    pub source: &'static str,
    pub instances: Vec<Declared>,
}

impl DesiredState {
    /// The specs by name.
    pub fn specs(&self) -> BTreeMap<String, Arc<InstanceSpec>> {
        self.instances
            .iter()
            .map(|d| (d.spec.name.clone(), d.spec.clone()))
            .collect()
    }
}

/// Checks what only the whole set of specs can show: duplicate names, and ports that
/// overlap between instances or with the agent's own API.
pub fn check_set(instances: &[Declared], config: &AgentConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    // Each port taken so far: by which instance (its origin, engine and main port).
    let mut ports: BTreeMap<u16, (&str, String, engine::EngineKind, u16)> = BTreeMap::new();
    let api_port = config.api.listen.port();
    for declared in instances {
        let spec = &declared.spec;
        let mut problem = |name: &str, message: String| {
            problems.push(Problem {
                file: declared.file.clone(),
                field: crate::problem::join(&declared.path, name),
                message,
            })
        };
        let origin = declared.origin();
        if let Some(first) = names.insert(&spec.name, origin.clone()) {
            problem("name", format!("{:?} is already declared in {first}", spec.name));
            continue;
        }
        let Some(engine) = engine::for_kind(spec.engine) else {
            continue;
        };
        for port in engine.ports(spec.port) {
            if port == api_port && api_port != 0 {
                problem("port", format!("{port} is the agent's own API port ([api] listen)"));
            }
            if let Some((other, origin, other_engine, other_port)) = ports.get(&port) {
                let what = if port == spec.port {
                    format!("{port}")
                } else {
                    format!(
                        "{port} (a {} instance on {} also listens on it)",
                        spec.engine, spec.port
                    )
                };
                let by = if port == *other_port {
                    format!("instance {other:?} ({origin})")
                } else {
                    format!("instance {other:?}, a {other_engine} instance on {other_port} that also listens on it ({origin})")
                };
                problem("port", format!("{what} is already used by {by}"));
            } else {
                ports.insert(port, (&spec.name, origin.clone(), spec.engine, spec.port));
            }
        }
    }
    problems
}

impl Declared {
    /// Where the spec was declared, for messages: the manifest file, or the document
    /// and the spec's index in it.
    pub fn origin(&self) -> String {
        if self.path.is_empty() {
            self.file.clone()
        } else {
            format!("{} {}", self.file, self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::test_config;

    #[test]
    fn a_name_in_both_a_document_and_a_manifest_is_rejected_naming_both() {
        let config = test_config();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "name = \"a\"\nport = 7001\nversion = \"7.0\"\n",
        )
        .unwrap();
        let manifests = load_manifests(dir.path(), &config).unwrap();
        let document = parse_document(
            br#"{"generation": 4, "instances": [{"name": "b", "port": 7002, "version": "7.0"}, {"name": "a", "port": 7003, "version": "7.0"}]}"#,
            DocumentSource::Controller,
            &config,
        )
        .unwrap();
        let inputs = Inputs {
            document: Some(document),
            manifests,
        };
        let problems: Vec<String> = inputs
            .merge(&config, 1, "controller")
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        let manifest = dir.path().join("a.toml").display().to_string();
        assert_eq!(
            problems,
            [format!(
                "{manifest}: name: \"a\" is already declared in controller document generation 4 instances[1]"
            )]
        );
    }

    /// The problems of a document of `(name, engine, port)` specs.
    fn port_problems(specs: &[(&str, &str, u16)]) -> Vec<String> {
        let instances: Vec<String> = specs
            .iter()
            .map(|(name, engine, port)| match *engine {
                "pika" => format!(
                    r#"{{"name": "{name}", "engine": "pika", "port": {port}, "config": {{"maxclients": 100}}}}"#
                ),
                _ => format!(r#"{{"name": "{name}", "engine": "{engine}", "port": {port}, "version": "7.0"}}"#),
            })
            .collect();
        let body = format!(r#"{{"generation": 1, "instances": [{}]}}"#, instances.join(", "));
        match parse_document(body.as_bytes(), DocumentSource::Controller, &test_config()) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect(),
        }
    }

    #[test]
    fn pika_reserves_three_ports_and_overlaps_are_named_both_ways() {
        assert_eq!(
            port_problems(&[("p", "pika", 9221), ("r", "redis", 11221)]),
            ["instances[1].port: 11221 is already used by instance \"p\", a pika instance on 9221 that also listens on it (controller document generation 1 instances[0])"]
        );
        assert_eq!(
            port_problems(&[("r", "redis", 19222), ("p", "pika", 9221)]),
            ["instances[1].port: 19222 (a pika instance on 9221 also listens on it) is already used by instance \"r\" (controller document generation 1 instances[0])"]
        );
        assert!(port_problems(&[("p", "pika", 9221), ("q", "pika", 9222), ("r", "redis", 11220)]).is_empty());
        assert_eq!(
            port_problems(&[("p", "pika", 9221), ("q", "pika", 11221)]).len(),
            1,
            "q's own port is p's replication port"
        );
    }
}

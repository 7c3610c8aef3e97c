//! The desired state of the node: `{ generation, instances }`, validated as a whole
//! (invariant 4) and persisted atomically to `data_dir/desired.json` before it is
//! applied, so that the agent keeps running the last accepted state without its
//! sources (invariant 7).

use crate::config::AgentConfig;
use crate::engine;
use crate::problem::{Checker, Problem};
use crate::spec::{InstanceSpec, SpecContext};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a desired state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The static manifests in `manifest_dir`.
    Manifests,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Manifests => "manifests",
        }
    }
}

/// One spec and where it was declared.
#[derive(Clone)]
pub struct Declared {
    /// The manifest file or document path, for messages.
    pub origin: String,
    /// The spec as written, kept to persist it.
    pub raw: Map<String, Value>,
    pub spec: Arc<InstanceSpec>,
}

impl std::fmt::Debug for Declared {
    /// Without `raw`: it holds the password as written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Declared")
            .field("origin", &self.origin)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// A validated desired state.
#[derive(Debug, Clone)]
pub struct DesiredState {
    pub generation: u64,
    pub source: Source,
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

    /// Whether `other` declares exactly the same instances.
    pub fn same_instances(&self, other: &DesiredState) -> bool {
        self.specs() == other.specs()
    }
}

/// Checks what only the whole set of specs can show: duplicate names, and ports that
/// overlap between instances or with the agent's own API.
pub fn check_set(instances: &[Declared], config: &AgentConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let mut ports: BTreeMap<u16, (&str, &str)> = BTreeMap::new();
    let api_port = config.api.listen.port();
    for declared in instances {
        let spec = &declared.spec;
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                file: declared.origin.clone(),
                field: field.to_string(),
                message,
            })
        };
        if let Some(first) = names.insert(&spec.name, &declared.origin) {
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
            if let Some((other, origin)) = ports.get(&port) {
                let what = if port == spec.port {
                    format!("{port}")
                } else {
                    format!("{port} (used by a {} instance on {})", spec.engine, spec.port)
                };
                problem(
                    "port",
                    format!("{what} is already used by instance {other:?} ({origin})"),
                );
            } else {
                ports.insert(port, (&spec.name, &declared.origin));
            }
        }
    }
    problems
}

/// Reads every `*.toml` in `dir` (sorted by file name; hidden files skipped) into a
/// desired state. Any problem in any file rejects the whole set.
pub fn load_manifests(dir: &Path, config: &AgentConfig, generation: u64) -> Result<DesiredState, Vec<Problem>> {
    load_manifests_watching(dir, config, generation, &mut Vec::new())
}

/// [`load_manifests`], also collecting the password files the manifests name (whether
/// they are valid or not), so that a reload can watch them for changes.
pub fn load_manifests_watching(
    dir: &Path,
    config: &AgentConfig,
    generation: u64,
    password_files: &mut Vec<PathBuf>,
) -> Result<DesiredState, Vec<Problem>> {
    let files = manifest_files(dir).map_err(|e| {
        vec![Problem {
            file: dir.display().to_string(),
            field: "-".into(),
            message: format!("cannot read the manifest directory: {e}"),
        }]
    })?;
    let ctx = SpecContext {
        config,
        base_dir: Some(dir),
    };
    let mut problems = Vec::new();
    let mut instances = Vec::new();
    for file in files {
        let origin = file.display().to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                problems.push(Problem {
                    file: origin,
                    field: "-".into(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let raw = match crate::config::parse_toml(&text, &origin) {
            Ok(raw) => raw,
            Err(mut p) => {
                problems.append(&mut p);
                continue;
            }
        };
        if let Some(file) = raw.get("password_file").and_then(Value::as_str) {
            password_files.push(dir.join(file));
        }
        let mut c = Checker::new(origin.clone());
        match InstanceSpec::parse(&raw, "", &ctx, &mut c) {
            Some(spec) => instances.push(Declared {
                origin,
                raw,
                spec: Arc::new(spec),
            }),
            None => problems.append(&mut c.problems),
        }
    }
    problems.extend(check_set(&instances, config));
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(DesiredState {
        generation,
        source: Source::Manifests,
        instances,
    })
}

/// The manifest files of `dir`, sorted.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || !name.ends_with(".toml") || !path.is_file() {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// Size, modification time (seconds, nanoseconds) and inode of a file.
pub type FileStamp = (u64, i64, i64, u64);
/// Every input file with its stamp (`None`: unreadable or gone).
pub type Fingerprint = Vec<(PathBuf, Option<FileStamp>)>;

/// What changes in the inputs of a desired state: the manifest files and the
/// password files the specs read. Compared between rescans to notice edits.
pub fn fingerprint(dir: &Path, extra: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let mut paths = manifest_files(dir).unwrap_or_default();
    paths.extend(extra.iter().cloned());
    paths
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p)
                .ok()
                .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
            (p, meta)
        })
        .collect()
}

/// Writes `state` to `path` atomically, readable by the owner only (specs may hold
/// passwords).
pub fn persist(state: &DesiredState, path: &Path) -> Result<(), crate::atomic_file::WriteError> {
    let doc = json!({
        "generation": state.generation,
        "source": state.source,
        "instances": state.instances.iter().map(|d| json!({
            "origin": d.origin,
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

/// Reads the last accepted state back. `Ok(None)` when there is none yet. The specs
/// are validated again: agent.toml may have changed since.
pub fn load_persisted(path: &Path, config: &AgentConfig) -> Result<Option<DesiredState>, Vec<Problem>> {
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
    let generation = doc["generation"].as_u64().ok_or_else(|| fail("no generation".into()))?;
    let source: Source =
        serde_json::from_value(doc["source"].clone()).map_err(|e| fail(format!("unknown source: {e}")))?;
    let base_dir = config.manifest_dir.as_deref();
    let ctx = SpecContext { config, base_dir };
    let mut c = Checker::new(file.clone());
    let mut instances = Vec::new();
    for (i, item) in doc["instances"].as_array().into_iter().flatten().enumerate() {
        let origin = item["origin"].as_str().unwrap_or(&file).to_string();
        let Some(raw) = item["spec"].as_object() else {
            c.problem(format!("instances[{i}]"), "not a spec");
            continue;
        };
        if let Some(spec) = InstanceSpec::parse(raw, &format!("instances[{i}]"), &ctx, &mut c) {
            instances.push(Declared {
                origin,
                raw: raw.clone(),
                spec: Arc::new(spec),
            });
        }
    }
    c.problems.extend(check_set(&instances, config));
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Some(DesiredState {
        generation,
        source,
        instances,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::test_config;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn loads_manifests_and_round_trips_through_desired_json() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "name = \"a\"\nport = 7001\nversion = \"7.0\"\n");
        write(
            dir.path(),
            "b.toml",
            "name = \"b\"\nport = 7002\nversion = \"7.0\"\npassword = \"pw\"\n",
        );
        write(dir.path(), ".a.toml.swp", "garbage");
        write(dir.path(), "README", "garbage");
        let config = test_config();
        let state = load_manifests(dir.path(), &config, 3).unwrap();
        assert_eq!(state.instances.len(), 2);
        let path = dir.path().join("desired.json");
        persist(&state, &path).unwrap();
        let back = load_persisted(&path, &config).unwrap().unwrap();
        assert_eq!(back.generation, 3);
        assert!(back.same_instances(&state));
    }

    #[test]
    fn duplicates_reject_the_whole_set_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "name = \"a\"\nport = 7001\nversion = \"7.0\"\n");
        write(dir.path(), "b.toml", "name = \"a\"\nport = 7002\nversion = \"7.0\"\n");
        write(dir.path(), "c.toml", "name = \"c\"\nport = 7001\nversion = \"7.0\"\n");
        let problems: Vec<String> = load_manifests(dir.path(), &test_config(), 1)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        let a = dir.path().join("a.toml").display().to_string();
        assert!(
            problems
                .iter()
                .any(|p| p.ends_with(&format!("b.toml: name: \"a\" is already declared in {a}"))),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("c.toml: port: 7001 is already used by instance \"a\"")),
            "{problems:#?}"
        );
        assert_eq!(problems.len(), 2);
    }

    #[test]
    fn api_port_is_reserved() {
        let mut config = test_config();
        config.api.listen = "127.0.0.1:7001".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "name = \"a\"\nport = 7001\nversion = \"7.0\"\n");
        let problems = load_manifests(dir.path(), &config, 1).unwrap_err();
        assert!(problems[0].message.contains("agent's own API port"), "{problems:?}");
    }

    #[test]
    fn missing_dir_is_one_problem() {
        let problems = load_manifests(Path::new("/nonexistent/dir"), &test_config(), 1).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0]
            .to_string()
            .starts_with("/nonexistent/dir: -: cannot read the manifest directory"));
    }
}

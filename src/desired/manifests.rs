//! The static manifests: one TOML file per instance in `manifest_dir`.

use super::{check_set, Declared};
use crate::config::AgentConfig;
use crate::problem::{Checker, Problem};
use crate::spec::{InstanceSpec, SpecContext};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads every `*.toml` in `dir` (sorted by file name; hidden files skipped). Any
/// problem in any file rejects the whole set.
pub fn load_manifests(dir: &Path, config: &AgentConfig) -> Result<Vec<Declared>, Vec<Problem>> {
    load_manifests_watching(dir, config, &mut Vec::new())
}

/// [`load_manifests`], also collecting the password files the manifests name (whether
/// they are valid or not), so that a reload can watch them for changes.
pub fn load_manifests_watching(
    dir: &Path,
    config: &AgentConfig,
    password_files: &mut Vec<PathBuf>,
) -> Result<Vec<Declared>, Vec<Problem>> {
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
        paths_allowed: true,
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
                file: origin,
                path: String::new(),
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
    Ok(instances)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::test_config;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_every_toml_file_and_skips_others() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "name = \"a\"\nport = 7001\nversion = \"7.0\"\n");
        write(
            dir.path(),
            "b.toml",
            "name = \"b\"\nport = 7002\nversion = \"7.0\"\npassword_file = \"b.pw\"\n",
        );
        write(dir.path(), "b.pw", "pw\n");
        std::fs::set_permissions(
            dir.path().join("b.pw"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        write(dir.path(), ".a.toml.swp", "garbage");
        write(dir.path(), "README", "garbage");
        let mut password_files = Vec::new();
        let declared = load_manifests_watching(dir.path(), &test_config(), &mut password_files).unwrap();
        assert_eq!(declared.len(), 2);
        assert_eq!(password_files, [dir.path().join("b.pw")]);
    }

    #[test]
    fn duplicates_reject_the_whole_set_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "name = \"a\"\nport = 7001\nversion = \"7.0\"\n");
        write(dir.path(), "b.toml", "name = \"a\"\nport = 7002\nversion = \"7.0\"\n");
        write(dir.path(), "c.toml", "name = \"c\"\nport = 7001\nversion = \"7.0\"\n");
        let problems: Vec<String> = load_manifests(dir.path(), &test_config())
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
        let problems = load_manifests(dir.path(), &config).unwrap_err();
        assert!(problems[0].message.contains("agent's own API port"), "{problems:?}");
    }

    #[test]
    fn missing_dir_is_one_problem() {
        let problems = load_manifests(Path::new("/nonexistent/dir"), &test_config()).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0]
            .to_string()
            .starts_with("/nonexistent/dir: -: cannot read the manifest directory"));
    }
}

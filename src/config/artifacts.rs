//! `[artifacts]` of agent.toml: the trusted store engine builds are fetched from, the
//! keys their manifests must be signed by, and how long an unused build is kept.

use crate::artifacts::signature::TrustedKeys;
use crate::problem::Checker;
use crate::units;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// How long a build no instance uses stays on disk.
pub const DEFAULT_KEEP_UNUSED: Duration = Duration::from_secs(7 * 86_400);
/// How long one fetch (manifest, signature and archive) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Bounds that keep every time computed from them far from overflowing.
const MAX_KEEP_UNUSED: Duration = Duration::from_secs(366 * 86_400);
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// `[artifacts]`: a store of signed engine builds.
#[derive(Debug, Clone)]
pub struct ArtifactsConfig {
    /// `https://…`, or `http://` to a loopback address only; `{url}/{engine}/{version}/`
    /// holds a build.
    pub url: reqwest::Url,
    /// The minisign public keys a manifest must be signed by (one of them).
    pub keys: TrustedKeys,
    /// Trust only this CA (PEM) instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// A build no declared instance and no process has used for this long is removed.
    pub keep_unused: Duration,
    /// The limit for one whole fetch of a version.
    pub timeout: Duration,
}

impl ArtifactsConfig {
    /// The URL of `file` of `engine` `version` in the store.
    pub fn file_url(&self, engine: &str, version: &str, file: &str) -> reqwest::Url {
        let mut url = self.url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend([engine, version, file]);
        }
        url
    }
}

/// Parses `[artifacts]`; `None` after a problem (recorded in `c`).
pub fn parse_artifacts(
    table: &Map<String, Value>,
    c: &mut Checker,
    resolve: &dyn Fn(String) -> PathBuf,
) -> Option<ArtifactsConfig> {
    let fields = c.table(
        table,
        "artifacts",
        &["url", "public_keys", "ca_file", "keep_unused", "timeout"],
    );
    let before = c.problems.len();
    let url = c
        .required_string(&fields, "url")
        .and_then(|text| match super::store_url(&text) {
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                c.problem(
                    fields.path("url"),
                    format!("{text:?}: a store URL has no query or fragment"),
                );
                None
            }
            Ok(url) => Some(url),
            Err(why) => {
                c.problem(fields.path("url"), why);
                None
            }
        });
    let keys = match c.string_list(&fields, "public_keys") {
        Some(list) => match TrustedKeys::parse(list.iter().map(String::as_str)) {
            Ok(keys) => Some(keys),
            Err(error) => {
                c.problem(fields.path("public_keys"), error.to_string());
                None
            }
        },
        None => {
            if !fields.has("public_keys") {
                c.problem(
                    fields.path("public_keys"),
                    "missing (required): the minisign public keys the store's manifests are signed by",
                );
            }
            None
        }
    };
    let ca_file = c.string(&fields, "ca_file").map(resolve);
    let mut bounded = |key: &str, default: Duration, max: Duration| match c.duration(&fields, key) {
        Some(d) if d.is_zero() || d > max => {
            c.problem(
                fields.path(key),
                format!("must be more than 0 and at most {}", units::format_duration_short(max)),
            );
            default
        }
        Some(d) => d,
        None => default,
    };
    let keep_unused = bounded("keep_unused", DEFAULT_KEEP_UNUSED, MAX_KEEP_UNUSED);
    let timeout = bounded("timeout", DEFAULT_TIMEOUT, MAX_TIMEOUT);
    if c.problems.len() > before {
        return None;
    }
    Some(ArtifactsConfig {
        url: url?,
        keys: keys?,
        ca_file,
        keep_unused,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse_toml, AgentConfig};
    use std::path::Path;

    const KEY: &str = "RWQW/hR/HSluTj5lKkqt4rSBC5n7jWCkZvqnU+/+8bTERk1e9JlDRDHz";

    fn load(text: &str) -> Result<AgentConfig, Vec<String>> {
        let doc = parse_toml(text, "agent.toml").map_err(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        AgentConfig::from_document(&doc, "agent.toml", Path::new("/etc/k/agent.toml"), Path::new("/etc/k"))
            .map_err(|p| p.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_store_alone_is_enough_engines() {
        let config = load(&format!(
            "[artifacts]\nurl = \"https://store.example/builds/\"\npublic_keys = [\"{KEY}\"]\nca_file = \"ca.pem\"\nkeep_unused = \"1d\"\n"
        ))
        .unwrap();
        let artifacts = config.artifacts.unwrap();
        assert_eq!(artifacts.ca_file.as_deref(), Some(Path::new("/etc/k/ca.pem")));
        assert_eq!(artifacts.keep_unused.as_secs(), 86_400);
        assert_eq!(
            artifacts.file_url("redis", "7.2", "manifest.json").as_str(),
            "https://store.example/builds/redis/7.2/manifest.json"
        );
    }

    #[test]
    fn url_without_trailing_slash_keeps_its_path() {
        let config = load(&format!(
            "[artifacts]\nurl = \"http://127.0.0.1:8080/store\"\npublic_keys = [\"{KEY}\"]\n"
        ))
        .unwrap();
        assert_eq!(
            config.artifacts.unwrap().file_url("pika", "4.0.1", "p.tar.gz").as_str(),
            "http://127.0.0.1:8080/store/pika/4.0.1/p.tar.gz"
        );
    }

    #[test]
    fn every_problem_is_named() {
        let problems = load(
            "[artifacts]\nurl = \"http://store.example/\"\npublic_keys = [\"not a key\"]\nkeep_unused = \"0s\"\ntimeout = \"2d\"\nextra = 1\n",
        )
        .unwrap_err();
        crate::problem::assert_problems(
            &problems,
            &[
                "agent.toml: artifacts.extra: unknown key",
                "agent.toml: artifacts.url: \"http://store.example/\": plain http is allowed only to a loopback address; use https",
                "agent.toml: artifacts.public_keys: \"not a key\" is not a minisign public key",
                "agent.toml: artifacts.keep_unused: must be more than 0 and at most 366d",
                "agent.toml: artifacts.timeout: must be more than 0 and at most 1d",
            ],
        );
    }

    #[test]
    fn keys_are_required() {
        let problems = load("[artifacts]\nurl = \"https://s/\"\n").unwrap_err();
        crate::problem::assert_problems(&problems, &["agent.toml: artifacts.public_keys: missing (required)"]);
    }
}

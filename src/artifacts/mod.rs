//! Engine builds delivered to the host: a version of Redis or Pika that agent.toml does
//! not list is looked up in a trusted artifact store (`[artifacts]`), where
//! `{url}/{engine}/{version}/manifest.json` names an archive and its SHA-256 and is
//! signed with minisign (`manifest.json.minisig`) by one of the keys agent.toml
//! trusts. The controller names versions, never paths or binaries: nothing from the
//! store is used before its signature and every checksum are verified.
//!
//! `builds` is what the rest of the agent sees: which executable a version runs
//! from, and for a version from the store, its progress. `fetch` calls the store,
//! `signature` and `manifest` check what it serves, `install` places a build.

pub mod builds;
pub mod fetch;
pub mod install;
pub mod manifest;
pub mod signature;

pub use builds::{BuildState, Builds, EngineBuild, Wanted};

/// Why `version` cannot name a build from the store (it becomes a directory name),
/// or `None`: 1 to 64 of `[0-9A-Za-z._+-]`, starting with a letter or digit.
pub fn version_problem(version: &str) -> Option<&'static str> {
    let mut chars = version.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Some("must start with a letter or digit");
    }
    if version.len() > 64 {
        return Some("is longer than 64 characters");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')) {
        return Some("may hold only letters, digits and . _ + -");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::version_problem;

    #[test]
    fn versions_are_safe_directory_names() {
        for ok in ["7.2", "7.2.4", "4.0.1-rc1", "v8", "7.2+build.5"] {
            assert_eq!(version_problem(ok), None, "{ok}");
        }
        for bad in ["", "..", ".7", "/bin/sh", "7/2", "a b", "-1", &"9".repeat(65), "7.2\n"] {
            assert!(version_problem(bad).is_some(), "{bad:?}");
        }
    }
}

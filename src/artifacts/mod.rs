//! Engine builds delivered to the host: a version of Redis or Pika that agent.toml does
//! not list is looked up in a trusted artifact store (`[artifacts]`), where
//! `{url}/{engine}/{version}/manifest.json` names an archive and its SHA-256 and is
//! signed with minisign (`manifest.json.minisig`) by one of the keys agent.toml
//! trusts. The controller names versions, never paths or binaries: nothing from the
//! store is used before its signature and every checksum are verified.
//!
//! So far this holds the checks (`manifest`, `signature`) and the placing of a
//! downloaded build (`install`); the fetching and the instance's wait for its build
//! are not wired in yet, and `[artifacts]` is not read.

pub mod install;
pub mod manifest;
pub mod signature;

//! `pika.conf` as the agent writes it and as Pika reads it.
//!
//! Pika reads its settings only from this file and needs it complete, so the file has
//! four sections, each marked by a comment line that Pika keeps when it rewrites the
//! file itself:
//!
//! 1. Pika 4.0's defaults ([`BASE`]) for every key the spec does not set;
//! 2. the spec's settings, passwords and master;
//! 3. the settings the agent owns (port, paths, the interface to listen on);
//! 4. what Pika wrote into the previous file about its replication ([`SERVER_OWNED`]).
//!
//! Every key appears once: Pika reads the first line of a key and ignores later ones.

use super::keys::{BASE, SERVER_OWNED};
use crate::engine::{Layout, Settings};
use crate::spec::{InstanceSpec, Secret};
use sha2::{Digest, Sha256};
use std::fmt::Write;

const DEFAULTS_HEADER: &str = "# Pika 4.0's defaults, for the keys the spec does not set";
const SPEC_HEADER: &str = "# The spec's settings";
const AGENT_HEADER: &str = "# Owned by the agent";
const SERVER_HEADER: &str = "# Written by Pika itself; kept when the agent renders this file again";

/// Keys of `pika.conf` that the agent writes itself.
pub const AGENT_OWNED: &[&str] = &[
    "port",
    "daemonize",
    "db-path",
    "log-path",
    "dump-path",
    "db-sync-path",
    "pidfile",
    "network-interface",
];

/// Directories in the data directory, in the order of their keys.
pub const DATA_DIRS: [(&str, &str); 4] = [
    ("db-path", "db"),
    ("log-path", "log"),
    ("dump-path", "dump"),
    ("db-sync-path", "dbsync"),
];

/// The config file for `spec`. `previous` is the file as it is now, which Pika may
/// have written its replication state into; `interface` is the network interface
/// Pika listens on (`None`: all addresses).
pub fn render(spec: &InstanceSpec, layout: &Layout, previous: Option<&str>) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "# Rendered by ker-agent for instance {:?}.", spec.name);
    let _ = writeln!(
        out,
        "# Do not edit: the agent rewrites this file; change the instance's spec."
    );

    let _ = writeln!(out, "\n{DEFAULTS_HEADER}");
    for (key, value) in BASE.iter().filter(|(key, _)| !spec.config.contains_key(*key)) {
        let _ = writeln!(out, "{key} : {value}");
    }

    let _ = writeln!(out, "\n{SPEC_HEADER}");
    for (key, value) in &spec.config {
        let _ = writeln!(out, "{key} : {value}");
    }
    if let Some(password) = &spec.password {
        let _ = writeln!(out, "requirepass : {}", password.expose());
        let _ = writeln!(out, "masterauth : {}", password.expose());
        // While userpass is empty, AUTH with *any* password gets in.
        let _ = writeln!(out, "userpass : {}", user_password(password));
    }
    if let Some(master) = &spec.replica_of {
        let _ = writeln!(out, "slaveof : {master}");
    }

    let _ = writeln!(out, "\n{AGENT_HEADER}");
    let _ = writeln!(out, "port : {}", spec.port);
    let _ = writeln!(out, "daemonize : no");
    if let Some(interface) = &layout.bind_interface {
        let _ = writeln!(out, "network-interface : {interface}");
    }
    // Pika wants its directories with a trailing slash.
    for (key, dir) in DATA_DIRS {
        let _ = writeln!(out, "{key} : {}/", layout.data_dir.join(dir).to_string_lossy());
    }
    // Not written with `daemonize : no`; named so that no default path is used.
    let _ = writeln!(out, "pidfile : {}/pika.pid", layout.instance_dir.to_string_lossy());

    let kept: Vec<(&str, &str)> = previous
        .map(|text| {
            SERVER_OWNED
                .iter()
                .filter_map(|key| first_value(text, key).map(|value| (*key, value)))
                .filter(|(_, value)| !value.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !kept.is_empty() {
        let _ = writeln!(out, "\n{SERVER_HEADER}");
        for (key, value) in kept {
            let _ = writeln!(out, "{key} : {value}");
        }
    }
    out
}

/// What a file written by [`render`] sets of a spec: the keys of its spec section, the
/// password and the master. Lines Pika appended itself (after a comment of its own)
/// and the other sections are not the spec's.
pub fn rendered_settings(text: &str) -> Settings {
    let mut settings = Settings::default();
    let mut in_spec = false;
    for line in text.lines() {
        if line.starts_with('#') {
            in_spec = line == SPEC_HEADER;
            continue;
        }
        let Some((key, value)) = split_config_line(line) else {
            continue;
        };
        match key {
            "requirepass" => settings.password = Some(Secret::new(value)),
            "slaveof" => settings.replica_of = crate::spec::parse_host_port(value).ok(),
            "masterauth" | "userpass" => {}
            key if in_spec && !AGENT_OWNED.contains(&key) && !SERVER_OWNED.contains(&key) => {
                settings.config.insert(key.to_string(), value.to_string());
            }
            _ => {}
        }
    }
    settings
}

/// The value of the first line that sets `key`, as Pika reads it.
fn first_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(split_config_line)
        .find(|(k, _)| *k == key)
        .map(|(_, value)| value)
}

/// One line of `pika.conf` as Pika reads it: `#` in the first column is a comment, the
/// first `:` splits, and key and value are trimmed. `None` for comments and blank or
/// malformed lines.
pub fn split_config_line(line: &str) -> Option<(&str, &str)> {
    if line.starts_with('#') {
        return None;
    }
    let (key, value) = line.split_once(':')?;
    let key = key.trim();
    (!key.is_empty()).then_some((key, value.trim()))
}

/// The non-admin user's password when only one password is valid: derived from the
/// admin password, so that the rendered file does not change from render to render,
/// and unknown to anyone who does not know the admin password.
pub fn user_password(password: &Secret) -> String {
    let digest = Sha256::new()
        .chain_update(b"ker-agent pika userpass\0")
        .chain_update(password.expose().as_bytes())
        .finalize();
    crate::digest::hex(&digest)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{layout, spec};
    use super::*;
    use crate::spec::ReplicaOf;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The settings as Pika 4.0's own parser reads a file: per line, `#` in the first
    /// column makes a comment; CR and LF are dropped; a space is dropped until the
    /// value has a character; the first `:` splits. The first line of a key wins.
    fn pika_reads(text: &str) -> BTreeMap<String, String> {
        let mut read = BTreeMap::new();
        for line in text.split_inclusive('\n') {
            if line.starts_with('#') {
                continue;
            }
            let (mut name, mut value, mut split) = (String::new(), String::new(), false);
            for c in line.chars() {
                match c {
                    '\r' | '\n' => {}
                    ' ' if value.is_empty() => {}
                    ':' if !split => split = true,
                    c if split => value.push(c),
                    c => name.push(c),
                }
            }
            if split {
                read.entry(name).or_insert(value);
            }
        }
        read
    }

    #[test]
    fn the_file_is_complete_and_each_key_appears_once() {
        let text = render(&spec(), &layout(), None);
        let lines: Vec<(&str, &str)> = text.lines().filter_map(split_config_line).collect();
        let keys: std::collections::BTreeSet<&str> = lines.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys.len(), lines.len(), "a key appears twice:\n{text}");
        let read = pika_reads(&text);
        for (key, value) in BASE.iter().filter(|(key, _)| *key != "maxclients") {
            assert_eq!(read.get(*key).map(String::as_str), Some(*value), "{key}");
        }
        // Without it Pika aborts at start: `db-instance-num load error`.
        assert_eq!(read["db-instance-num"], "3");
        assert_eq!(read["maxclients"], "1000", "the spec's value replaces the default");
        assert_eq!(read["port"], "9221");
        assert_eq!(read["daemonize"], "no");
        assert_eq!(read["network-interface"], "lo");
        assert_eq!(read["db-path"], "/var/lib/ker-agent/instances/p/data/db/");
        assert_eq!(read["log-path"], "/var/lib/ker-agent/instances/p/data/log/");
        assert_eq!(read["dump-path"], "/var/lib/ker-agent/instances/p/data/dump/");
        assert_eq!(read["db-sync-path"], "/var/lib/ker-agent/instances/p/data/dbsync/");
        assert_eq!(read["pidfile"], "/var/lib/ker-agent/instances/p/pika.pid");
        assert!(
            !read.contains_key("requirepass") && !read.contains_key("userpass"),
            "{text}"
        );

        let mut everywhere = layout();
        everywhere.bind_interface = None;
        assert!(!pika_reads(&render(&spec(), &everywhere, None)).contains_key("network-interface"));
    }

    #[test]
    fn passwords_master_and_colons_in_values() {
        let mut spec = spec();
        spec.password = Some(Secret::new("pw:with colon"));
        spec.replica_of = Some(ReplicaOf {
            host: "10.0.0.5".into(),
            port: 9221,
        });
        let read = pika_reads(&render(&spec, &layout(), None));
        // Later colons belong to the value.
        assert_eq!(read["requirepass"], "pw:with colon");
        assert_eq!(read["masterauth"], "pw:with colon");
        assert_eq!(read["slaveof"], "10.0.0.5:9221");
        // No AUTH bypass: userpass is set, and is not the password.
        assert_eq!(read["userpass"].len(), 64);
        assert_eq!(read["userpass"], user_password(&Secret::new("pw:with colon")));
    }

    #[test]
    fn what_pika_wrote_about_its_replication_is_kept() {
        let first = render(&spec(), &layout(), None);
        // Pika's own rewrite: values set in place, new keys after a comment of its own.
        let written_by_pika = format!(
            "{first}# Generated by ReplicationID CONFIG REWRITE\nreplication-id : 4f2a\nrun-id : {}\n\
             internal-used-unfinished-full-sync : \nzset_cache_field_num_per_key : 512\n",
            "a".repeat(40)
        );
        let mut changed = spec();
        changed.config.insert("timeout".into(), "120".into());
        let again = render(&changed, &layout(), Some(&written_by_pika));
        let read = pika_reads(&again);
        assert_eq!(read["replication-id"], "4f2a");
        assert_eq!(read["run-id"], "a".repeat(40));
        assert_eq!(read["timeout"], "120");
        assert!(
            !read.contains_key("internal-used-unfinished-full-sync"),
            "empty values are not kept"
        );
        assert!(!read.contains_key("zset_cache_field_num_per_key"));
        // Rendering again keeps them again, and changes nothing.
        assert_eq!(render(&changed, &layout(), Some(&again)), again);
        // What Pika appended is not the spec's, and the defaults are not either.
        assert_eq!(
            rendered_settings(&written_by_pika),
            Settings {
                config: spec().config,
                ..Settings::default()
            }
        );
    }

    #[test]
    fn comments_only_in_the_first_column() {
        assert_eq!(split_config_line("# port : 1"), None);
        assert_eq!(
            split_config_line("port : 1 # not a comment"),
            Some(("port", "1 # not a comment"))
        );
        assert_eq!(
            split_config_line("slaveof : 1.2.3.4:9221"),
            Some(("slaveof", "1.2.3.4:9221"))
        );
        assert_eq!(split_config_line("userpass :"), Some(("userpass", "")));
        assert_eq!(split_config_line(""), None);
        assert_eq!(
            pika_reads("a b : c d \r\n#x : y\n"),
            BTreeMap::from([("ab".into(), "c d ".into())])
        );
    }

    proptest! {
        /// Whatever a spec sets is what Pika reads from the rendered file, and comes back
        /// from it as the spec's settings.
        #[test]
        fn rendering_round_trips(
            config in proptest::collection::btree_map("[a-z][a-z0-9_-]{0,12}", "[^\\p{Cc}\\s]([^\\p{Cc}]{0,20}[^\\p{Cc}\\s])?", 0..6),
            base_keys in proptest::collection::btree_map(0..BASE.len(), "[a-z0-9]{1,8}", 0..4),
            password in proptest::option::of("[^\\p{Cc}\\s]{1,20}"),
            master in proptest::option::of(1024u16..55000),
        ) {
            let mut spec = spec();
            let engine = super::super::PikaEngine;
            spec.config = config
                .into_iter()
                .chain(base_keys.into_iter().map(|(i, v)| (BASE[i].0.to_string(), v)))
                .filter(|(k, _)| crate::engine::Engine::refuse_config_key(&engine, k).is_none())
                .collect();
            spec.password = password.as_deref().map(Secret::new);
            spec.replica_of = master.map(|port| ReplicaOf { host: "10.1.2.3".into(), port });
            let text = render(&spec, &layout(), None);
            let read = pika_reads(&text);
            for (key, value) in &spec.config {
                prop_assert_eq!(read.get(key), Some(value));
            }
            prop_assert_eq!(rendered_settings(&text), crate::engine::Engine::settings(&engine, &spec));
        }
    }
}

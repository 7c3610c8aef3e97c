//! The bodies of the fuzz targets in `fuzz/`, here so that `cargo test` replays every
//! saved input through the same code (`tests/fuzz_corpus.rs`). Each takes arbitrary
//! bytes and must return without a panic; the renderer target also checks that a
//! rendered config file reads back as the settings it was rendered from.

use crate::config::{parse_toml, AgentConfig};
use crate::desired::{parse_document, DocumentSource};
use crate::engine::{self, info};
use crate::problem::Checker;
use crate::spec::{InstanceSpec, SpecContext};
use serde_json::{json, Map, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::OnceLock;

/// The agent.toml every target validates against: both engines, two Redis versions.
fn config() -> &'static AgentConfig {
    static CONFIG: OnceLock<AgentConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let text = "node_id = \"fuzz\"\n\
                    [engines.redis.versions]\n\"7.0\" = \"/usr/bin/redis-server\"\n\"7.2\" = \"/usr/bin/redis-server\"\n\
                    [engines.pika.versions]\n\"4.0\" = \"/usr/local/bin/pika\"\n";
        let doc = parse_toml(text, "agent.toml").unwrap_or_default();
        // A fixed, valid text: validated by `fuzz_configuration_is_valid` below.
        AgentConfig::from_document(&doc, "agent.toml", Path::new("/fuzz/agent.toml"), Path::new("/fuzz"))
            .unwrap_or_else(|p| panic!("the fuzz agent.toml is invalid: {p:?}"))
    })
}

/// A desired-state document from the network: parsed and validated.
pub fn document(data: &[u8]) {
    let _ = parse_document(data, DocumentSource::Local, config());
}

/// A manifest file: TOML, then the spec checks.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(map) = parse_toml(text, "fuzz.toml") else {
        return;
    };
    let ctx = SpecContext {
        config: config(),
        base_dir: Some(Path::new("/fuzz/instances.d")),
        paths_allowed: true,
    };
    let mut checker = Checker::new("fuzz.toml");
    let _ = InstanceSpec::parse(&map, "", &ctx, &mut checker);
}

/// An INFO reply, as Redis and as Pika.
pub fn info(data: &[u8]) {
    let _ = info::redis_stats(data);
    let _ = info::redis_stats_typed(data);
    let _ = info::pika_stats(data);
    if let Ok(text) = std::str::from_utf8(data) {
        for _ in info::lines(text) {}
    }
}

/// `[config]` keys and values from the input (NUL-separated strings, in pairs) in a
/// Redis and a Pika instance of a document. A document the validator accepts renders
/// to a config file that reads back as exactly the settings asked for: no value can
/// inject a line, a key or a quote.
pub fn render(data: &[u8]) {
    let strings: Vec<String> = data
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let mut config_map = Map::new();
    for pair in strings.chunks(2) {
        if let [key, value] = pair {
            config_map.insert(key.clone(), Value::String(value.clone()));
        }
    }
    let password = strings.last().cloned().unwrap_or_default();
    for (engine, version, port) in [("redis", "7.0", 7000), ("pika", "4.0", 9221)] {
        let mut instance = json!({
            "name": "f", "engine": engine, "version": version, "port": port,
            "config": Value::Object(config_map.clone()),
        });
        if !password.is_empty() {
            instance["password"] = Value::String(password.clone());
        }
        let doc = json!({"generation": 1, "instances": [instance]});
        let Ok(bytes) = serde_json::to_vec(&doc) else {
            continue;
        };
        let Ok(document) = parse_document(&bytes, DocumentSource::Local, config()) else {
            continue;
        };
        for declared in &document.instances {
            round_trip(&declared.spec);
        }
    }
}

fn round_trip(spec: &InstanceSpec) {
    let Some(engine) = engine::for_kind(spec.engine) else {
        return;
    };
    let bind = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let mut layout = engine::layout(
        engine,
        Path::new("/fuzz/data/instances"),
        Path::new("/fuzz/log"),
        &spec.name,
        &bind,
    );
    layout.bind_interface = Some("lo".into());
    let text = engine.render_config(spec, &layout, None);
    let read_back = engine.rendered_settings(&text);
    assert_eq!(
        read_back,
        engine.settings(spec),
        "the rendered config file does not read back as the spec:\n{text}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_configuration_is_valid() {
        assert_eq!(config().versions(crate::engine::EngineKind::Redis), vec!["7.0", "7.2"]);
    }

    #[test]
    fn a_valid_document_round_trips() {
        render(&[b"maxmemory-policy\0allkeys-lru\0hz\0".as_slice(), b"15\0secret"].concat());
    }
}

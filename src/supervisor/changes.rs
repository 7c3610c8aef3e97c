//! `diff(running, spec) -> Changes`: the pure answer to "what must happen for this
//! running process to match this spec?" Each difference is either applied live
//! (`CONFIG SET`, the replication command, the passwords) or needs a restart, and a
//! restart always says which keys forced it.
//!
//! The running side is what the instance record says the process started with
//! (version, port, restart epoch, limits) and what its rendered config file says it
//! runs with now (the file is rewritten after every live change).

use crate::engine::{Engine, EngineKind, Mutability, Settings};
use crate::record::InstanceRecord;
use crate::spec::{InstanceSpec, ReplicaOf, Secret};

/// What the live process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub engine: EngineKind,
    pub version: String,
    pub port: u16,
    pub restart_epoch: u64,
    pub nofile: Option<u64>,
    pub oom_score_adj: Option<i32>,
    /// From the rendered config file; `None` when it could not be read.
    pub settings: Option<Settings>,
}

impl Running {
    pub fn new(record: &InstanceRecord, settings: Option<Settings>) -> Running {
        Running {
            engine: record.engine,
            version: record.version.clone(),
            port: record.port,
            restart_epoch: record.restart_epoch,
            nofile: record.nofile,
            oom_score_adj: record.oom_score_adj,
            settings,
        }
    }
}

/// The differences between a running process and a spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Why a restart is needed (`databases: "16" → "32"`); empty when none is.
    pub restart: Vec<String>,
    /// Keys to set live, with their new value (the default of a key the spec no
    /// longer sets).
    pub config: Vec<(String, String)>,
    /// `Some` when the master changes (`Some(None)`: become a master).
    pub replica_of: Option<Option<ReplicaOf>>,
    /// `Some` when the password changes (`Some(None)`: no password any more).
    pub password: Option<Option<Secret>>,
    /// The restart epoch went down: noted, nothing to restart.
    pub restart_epoch_lowered: bool,
}

impl Changes {
    pub fn needs_restart(&self) -> bool {
        !self.restart.is_empty()
    }

    /// Whether nothing has to be done to the process.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.restart.is_empty()
            && self.config.is_empty()
            && self.replica_of.is_none()
            && self.password.is_none()
            && !self.restart_epoch_lowered
    }
}

/// What it takes for `running` to match `spec`.
pub fn diff(engine: &dyn Engine, running: &Running, spec: &InstanceSpec) -> Changes {
    let mut changes = Changes::default();
    let restart = &mut changes.restart;
    if running.engine != spec.engine {
        restart.push(format!("engine {} → {}", running.engine, spec.engine));
    }
    if running.version != spec.version {
        restart.push(format!("version {:?} → {:?}", running.version, spec.version));
    }
    if running.port != spec.port {
        restart.push(format!("port {} → {}", running.port, spec.port));
    }
    if spec.restart_epoch > running.restart_epoch {
        restart.push(format!(
            "restart_epoch {} → {}",
            running.restart_epoch, spec.restart_epoch
        ));
    }
    changes.restart_epoch_lowered = spec.restart_epoch < running.restart_epoch;
    let nofile = engine.child_nofile(spec);
    if running.nofile != nofile {
        restart.push(format!("open files {} → {}", show(running.nofile), show(nofile)));
    }
    if running.oom_score_adj != spec.limits.oom_score_adj {
        restart.push(format!(
            "limits.oom_score_adj {} → {}",
            show(running.oom_score_adj),
            show(spec.limits.oom_score_adj)
        ));
    }

    let wanted = engine.settings(spec);
    let Some(current) = &running.settings else {
        // What the process runs with is unknown: set every live key again (setting a
        // key to its value changes nothing), and let the drift check see the rest.
        changes.config = wanted
            .config
            .iter()
            .filter(|(key, _)| engine.mutability(key) == Mutability::Live)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        return changes;
    };
    for (key, value) in &wanted.config {
        let old = current.config.get(key);
        if old == Some(value) {
            continue;
        }
        // A key the process runs without has its default: a spec that now names the
        // default changes nothing.
        let default = engine.default_value(key);
        if old.is_none() && default.is_some_and(|d| is_default(engine, value, d)) {
            continue;
        }
        match engine.mutability(key) {
            Mutability::Live => changes.config.push((key.clone(), value.clone())),
            Mutability::Restart => changes.restart.push(format!(
                "{key} {} → {value:?} (cannot change at runtime)",
                match (old, default) {
                    (Some(old), _) => format!("{old:?}"),
                    (None, Some(default)) => format!("{default:?}"),
                    (None, None) => "unset".to_string(),
                }
            )),
        }
    }
    for (key, old) in &current.config {
        if wanted.config.contains_key(key) {
            continue;
        }
        // Back to its default: nothing to do when it was set to the default.
        if engine.default_value(key).is_some_and(|d| is_default(engine, old, d)) {
            continue;
        }
        match (engine.mutability(key), engine.default_value(key)) {
            (Mutability::Live, Some(default)) => changes.config.push((key.clone(), default.to_string())),
            (Mutability::Live, None) => changes
                .restart
                .push(format!("{key} {old:?} → unset (its default is not known to the agent)")),
            (Mutability::Restart, Some(default)) => changes.restart.push(format!(
                "{key} {old:?} → {default:?}, its default (cannot change at runtime)"
            )),
            (Mutability::Restart, None) => changes
                .restart
                .push(format!("{key} {old:?} → unset (cannot change at runtime)")),
        }
    }
    if current.replica_of != wanted.replica_of {
        changes.replica_of = Some(wanted.replica_of.clone());
    }
    if current.password != wanted.password {
        changes.password = Some(wanted.password.clone());
    }
    changes
}

/// Whether `value` is the key's `default`, as the server reads both: the same words
/// (`same_value` alone also accepts a part of a list, which a default is not).
fn is_default(engine: &dyn Engine, value: &str, default: &str) -> bool {
    engine.same_value(value, default) && engine.same_value(default, value)
}

fn show<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or("unset".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine;
    use proptest::prelude::*;

    fn redis() -> &'static dyn Engine {
        engine::for_kind(EngineKind::Redis).unwrap()
    }

    fn running_as(spec: &InstanceSpec) -> Running {
        Running {
            engine: spec.engine,
            version: spec.version.clone(),
            port: spec.port,
            restart_epoch: spec.restart_epoch,
            nofile: redis().child_nofile(spec),
            oom_score_adj: spec.limits.oom_score_adj,
            settings: Some(redis().settings(spec)),
        }
    }

    fn with(spec: &InstanceSpec, key: &str, value: &str) -> InstanceSpec {
        let mut spec = spec.clone();
        spec.config.insert(key.into(), value.into());
        spec
    }

    #[test]
    fn a_key_at_its_default_is_the_same_as_no_key() {
        let pika = engine::for_kind(EngineKind::Pika).unwrap();
        let mut base = InstanceSpec::example("p", 9221);
        base.engine = EngineKind::Pika;
        base.config.insert("maxclients".into(), "1000".into());
        let running = Running {
            nofile: pika.child_nofile(&base),
            settings: Some(pika.settings(&base)),
            ..running_as(&base)
        };
        // Naming Pika's default (thread-num 1, write-buffer-size 256M) restarts nothing.
        let named = with(&with(&base, "thread-num", "1"), "write-buffer-size", "256M");
        assert!(
            diff(pika, &running, &named).is_empty(),
            "{:?}",
            diff(pika, &running, &named)
        );
        let changes = diff(pika, &running, &with(&base, "thread-num", "2"));
        assert_eq!(changes.restart, ["thread-num \"1\" → \"2\" (cannot change at runtime)"]);
        // And dropping a key that was at its default neither.
        let running_named = Running {
            settings: Some(pika.settings(&named)),
            ..running.clone()
        };
        assert!(diff(pika, &running_named, &base).is_empty());
        let running_two = Running {
            settings: Some(pika.settings(&with(&base, "thread-num", "2"))),
            ..running
        };
        // A part of a default list is not the default.
        let redis_base = InstanceSpec::example("a", 7000);
        let changes = diff(redis(), &running_as(&redis_base), &with(&redis_base, "save", "3600 1"));
        assert_eq!(changes.config, [("save".to_string(), "3600 1".to_string())]);
        assert_eq!(
            diff(pika, &running_two, &base).restart,
            ["thread-num \"2\" → \"1\", its default (cannot change at runtime)"]
        );
    }

    #[test]
    fn live_keys_are_set_and_immutable_keys_restart_naming_the_key() {
        let base = with(&InstanceSpec::example("a", 7000), "maxmemory-policy", "allkeys-lru");
        let running = running_as(&base);
        assert!(diff(redis(), &running, &base).is_empty());

        let mut live = with(&base, "maxmemory-policy", "volatile-lru");
        live.maxmemory = Some(1 << 20);
        let changes = diff(redis(), &running, &live);
        assert!(!changes.needs_restart());
        assert_eq!(
            changes.config,
            [
                ("maxmemory".to_string(), "1048576".to_string()),
                ("maxmemory-policy".to_string(), "volatile-lru".to_string())
            ]
        );

        let changes = diff(redis(), &running, &with(&base, "databases", "32"));
        assert_eq!(changes.restart, ["databases unset → \"32\" (cannot change at runtime)"]);
    }

    #[test]
    fn a_removed_key_goes_back_to_its_default() {
        let base = with(&InstanceSpec::example("a", 7000), "maxmemory-policy", "allkeys-lru");
        let changes = diff(redis(), &running_as(&base), &InstanceSpec::example("a", 7000));
        assert_eq!(
            changes.config,
            [("maxmemory-policy".to_string(), "noeviction".to_string())]
        );
        assert!(!changes.needs_restart());

        let base = with(&InstanceSpec::example("a", 7000), "no-such-key", "1");
        let changes = diff(redis(), &running_as(&base), &InstanceSpec::example("a", 7000));
        assert!(changes.needs_restart(), "{changes:?}");
    }

    #[test]
    fn version_port_epoch_and_limits_restart() {
        let base = InstanceSpec::example("a", 7000);
        let running = running_as(&base);
        let mut spec = base.clone();
        spec.version = "7.2".into();
        spec.port = 7001;
        spec.restart_epoch = 1;
        spec.limits.nofile = Some(4096);
        let restart = diff(redis(), &running, &spec).restart;
        assert_eq!(
            restart,
            [
                "version \"7.0\" → \"7.2\"",
                "port 7000 → 7001",
                "restart_epoch 0 → 1",
                "open files unset → 4096"
            ]
        );

        // Lowering the epoch restarts nothing: only raising it asks for a restart.
        let mut raised = base.clone();
        raised.restart_epoch = 5;
        let changes = diff(redis(), &running_as(&raised), &base);
        assert!(!changes.needs_restart());
        assert!(changes.restart_epoch_lowered);
    }

    #[test]
    fn replication_and_password_change_live() {
        let base = InstanceSpec::example("a", 7000);
        let mut spec = base.clone();
        spec.replica_of = Some(ReplicaOf {
            host: "10.0.0.1".into(),
            port: 6379,
        });
        spec.password = Some(Secret::new("new"));
        let changes = diff(redis(), &running_as(&base), &spec);
        assert!(!changes.needs_restart());
        assert_eq!(changes.replica_of, Some(spec.replica_of.clone()));
        assert_eq!(changes.password, Some(Some(Secret::new("new"))));
        let back = diff(redis(), &running_as(&spec), &base);
        assert_eq!(back.replica_of, Some(None));
        assert_eq!(back.password, Some(None));
    }

    #[test]
    fn unknown_running_settings_reapply_live_keys_only() {
        let spec = with(&with(&InstanceSpec::example("a", 7000), "databases", "4"), "hz", "20");
        let mut running = running_as(&spec);
        running.settings = None;
        let changes = diff(redis(), &running, &spec);
        assert_eq!(changes.config, [("hz".to_string(), "20".to_string())]);
        assert!(!changes.needs_restart());
    }

    fn without_defaults(mut settings: Settings) -> Settings {
        settings
            .config
            .retain(|k, v| !redis().default_value(k).is_some_and(|d| is_default(redis(), v, d)));
        settings
    }

    fn spec_strategy() -> impl Strategy<Value = InstanceSpec> {
        let keys = prop::sample::select(vec!["hz", "maxmemory-policy", "databases", "save", "io-threads"]);
        (
            proptest::collection::btree_map(keys, "[a-z0-9]{1,4}|10|noeviction|3600 1", 0..4),
            proptest::option::of(0u64..4),
            0u64..3,
            proptest::option::of("[ab]{1,2}"),
            proptest::option::of(6000u16..6003),
        )
            .prop_map(|(config, maxmemory, epoch, password, master)| {
                let mut spec = InstanceSpec::example("a", 7000);
                spec.config = config.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                spec.maxmemory = maxmemory;
                spec.restart_epoch = epoch;
                spec.password = password.as_deref().map(Secret::new);
                spec.replica_of = master.map(|port| ReplicaOf {
                    host: "10.0.0.1".into(),
                    port,
                });
                spec
            })
    }

    proptest! {
        /// Applying the live changes (or restarting) brings the process to the spec:
        /// after that, `diff` finds nothing, and the rendered file read back gives the
        /// same settings.
        #[test]
        fn applying_the_changes_converges(from in spec_strategy(), to in spec_strategy()) {
            let changes = diff(redis(), &running_as(&from), &to);
            let mut settings = redis().settings(&from);
            if !changes.needs_restart() {
                for (key, value) in &changes.config {
                    settings.config.insert(key.clone(), value.clone());
                }
                // A key set back to its default is no longer the spec's.
                settings.config.retain(|k, _| redis().settings(&to).config.contains_key(k));
                if let Some(master) = &changes.replica_of {
                    settings.replica_of = master.clone();
                }
                if let Some(password) = &changes.password {
                    settings.password = password.clone();
                }
                // A key at its default is the same as no key.
                prop_assert_eq!(without_defaults(settings), without_defaults(redis().settings(&to)));
            }
            prop_assert!(diff(redis(), &running_as(&to), &to).is_empty());
            let layout = crate::engine::layout(redis(), "/d".as_ref(), "/l".as_ref(), "a", &["127.0.0.1".parse().unwrap()]);
            let rendered = redis().render_config(&to, &layout, None);
            prop_assert_eq!(redis().rendered_settings(&rendered), redis().settings(&to));
        }
    }
}

//! The health of one running instance, from what its last probe found: `ok`,
//! `degraded` (serving, but something needs a look) or `unhealthy` (not serving), with
//! every reason. A pure function of the probe, the previous probe and what is
//! declared, so every rule is unit-tested without a server.

use crate::engine::{ObservedRole, ServerStats};
use crate::status::Role;
use std::time::Duration;

/// A PING slower than this is worth a look.
pub const SLOW_PING: Duration = Duration::from_millis(100);
/// `used_memory` at or above this share of `maxmemory` is memory pressure: the next
/// writes evict keys or fail.
pub const MEMORY_PRESSURE: f64 = 0.9;
/// A replica that heard nothing from its master for this long is behind. Masters ping
/// their replicas every 10 s by default, so anything shorter would flap.
pub const MASTER_SILENT_SECONDS: i64 = 30;
/// Probes in a row without an answer before the instance counts as unhealthy.
pub const UNANSWERED_UNHEALTHY: u32 = 2;

/// How an instance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// PING answered; the INFO fields read with it.
    Answered { ping: Duration, stats: Box<ServerStats> },
    /// The server answers, but is loading its dataset.
    Loading,
    /// The server rejects the agent's credentials.
    AuthFailed(String),
    /// No usable answer: timeout, refused or dropped connection, error reply.
    Failed(String),
}

/// What [`evaluate`] looks at besides the probe.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The declared role, if any.
    pub declared: Option<Role>,
    /// Probes in a row without an answer, this one included.
    pub unanswered: u32,
    /// `rejected_connections` at the previous answered probe.
    pub previous_rejected: Option<u64>,
}

/// The verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: HealthStatus,
    pub reasons: Vec<String>,
}

/// Judges one probe.
pub fn evaluate(probe: &Probe, context: &Context) -> Verdict {
    let mut verdict = Verdict {
        status: HealthStatus::Ok,
        reasons: Vec::new(),
    };
    let mut flag = |status: HealthStatus, reason: String| {
        verdict.status = verdict.status.max(status);
        verdict.reasons.push(reason);
    };
    match probe {
        Probe::Loading => flag(HealthStatus::Unhealthy, "loading its dataset, not serving yet".into()),
        Probe::AuthFailed(error) => flag(
            HealthStatus::Unhealthy,
            format!("the agent cannot authenticate: {error}"),
        ),
        Probe::Failed(error) => {
            let status = if context.unanswered >= UNANSWERED_UNHEALTHY {
                HealthStatus::Unhealthy
            } else {
                HealthStatus::Degraded
            };
            let times = match context.unanswered {
                0 | 1 => "the last probe".to_string(),
                n => format!("{n} probes in a row"),
            };
            flag(status, format!("no answer to {times}: {error}"));
        }
        Probe::Answered { ping, stats } => {
            if *ping >= SLOW_PING {
                flag(HealthStatus::Degraded, format!("PING took {} ms", ping.as_millis()));
            }
            judge_stats(stats, context, &mut flag);
        }
    }
    verdict
}

fn judge_stats(stats: &ServerStats, context: &Context, flag: &mut impl FnMut(HealthStatus, String)) {
    if stats.loading == Some(true) {
        flag(HealthStatus::Unhealthy, "loading its dataset, not serving yet".into());
    }
    if stats.rdb_last_bgsave_ok == Some(false) {
        flag(
            HealthStatus::Degraded,
            "the last background save (RDB) failed; see the instance log".into(),
        );
    }
    if stats.aof_last_write_ok == Some(false) {
        flag(
            HealthStatus::Degraded,
            "the last append-only file write failed; see the instance log".into(),
        );
    }
    match (context.declared, stats.role) {
        (Some(Role::Replica), Some(ObservedRole::Master)) => flag(
            HealthStatus::Degraded,
            "declared a replica, but the server is a master".into(),
        ),
        (Some(Role::Master), Some(ObservedRole::Replica)) => flag(
            HealthStatus::Degraded,
            "declared a master, but the server is a replica".into(),
        ),
        _ => {}
    }
    if stats.role == Some(ObservedRole::Replica) {
        let master = match (&stats.master_host, stats.master_port) {
            (Some(host), Some(port)) => format!(" {host}:{port}"),
            _ => String::new(),
        };
        if stats.master_link_up == Some(false) {
            let sync = if stats.master_sync_in_progress == Some(true) {
                " (initial sync in progress)"
            } else {
                ""
            };
            flag(
                HealthStatus::Degraded,
                format!("the replication link to the master{master} is down{sync}"),
            );
        } else if let Some(silent) = stats.master_last_io_seconds_ago.filter(|s| *s >= MASTER_SILENT_SECONDS) {
            flag(
                HealthStatus::Degraded,
                format!("nothing heard from the master{master} for {silent} s"),
            );
        }
    }
    if let (Some(used), Some(max)) = (stats.used_memory_bytes, stats.maxmemory_bytes) {
        if max > 0 && used as f64 >= max as f64 * MEMORY_PRESSURE {
            flag(
                HealthStatus::Degraded,
                format!(
                    "memory pressure: used_memory {used} bytes is {:.0}% of maxmemory {max}",
                    used as f64 * 100.0 / max as f64
                ),
            );
        }
    }
    if let (Some(now), Some(before)) = (stats.rejected_connections, context.previous_rejected) {
        if now > before {
            flag(
                HealthStatus::Degraded,
                format!(
                    "{} connection(s) rejected since the last probe (maxclients reached)",
                    now - before
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn answered(stats: ServerStats) -> Probe {
        Probe::Answered {
            ping: Duration::from_micros(200),
            stats: Box::new(stats),
        }
    }

    fn master() -> ServerStats {
        ServerStats {
            role: Some(ObservedRole::Master),
            loading: Some(false),
            rdb_last_bgsave_ok: Some(true),
            aof_last_write_ok: Some(true),
            used_memory_bytes: Some(1_000_000),
            maxmemory_bytes: Some(0),
            rejected_connections: Some(0),
            ..ServerStats::default()
        }
    }

    fn replica(link_up: bool) -> ServerStats {
        ServerStats {
            role: Some(ObservedRole::Replica),
            master_host: Some("10.0.0.5".into()),
            master_port: Some(6379),
            master_link_up: Some(link_up),
            master_last_io_seconds_ago: Some(if link_up { 1 } else { -1 }),
            ..master()
        }
    }

    fn judge(probe: Probe, context: Context) -> Verdict {
        evaluate(&probe, &context)
    }

    #[test]
    fn a_quiet_master_is_ok() {
        let v = judge(
            answered(master()),
            Context {
                declared: Some(Role::Master),
                ..Context::default()
            },
        );
        assert_eq!(
            v,
            Verdict {
                status: HealthStatus::Ok,
                reasons: vec![]
            }
        );
    }

    #[test]
    fn unanswered_probes_degrade_then_make_unhealthy() {
        let failed = || Probe::Failed("127.0.0.1:7001 did not answer PING within 1s".into());
        let one = judge(
            failed(),
            Context {
                unanswered: 1,
                ..Context::default()
            },
        );
        assert_eq!(one.status, HealthStatus::Degraded);
        assert_eq!(
            one.reasons,
            ["no answer to the last probe: 127.0.0.1:7001 did not answer PING within 1s"]
        );
        let two = judge(
            failed(),
            Context {
                unanswered: 2,
                ..Context::default()
            },
        );
        assert_eq!(two.status, HealthStatus::Unhealthy);
        assert!(two.reasons[0].starts_with("no answer to 2 probes in a row"), "{two:?}");
    }

    #[test]
    fn loading_and_auth_failures_are_unhealthy() {
        assert_eq!(
            judge(Probe::Loading, Context::default()).status,
            HealthStatus::Unhealthy
        );
        let loading = ServerStats {
            loading: Some(true),
            ..master()
        };
        assert_eq!(
            judge(answered(loading), Context::default()).status,
            HealthStatus::Unhealthy
        );
        let auth = judge(Probe::AuthFailed("WRONGPASS".into()), Context::default());
        assert_eq!(auth.status, HealthStatus::Unhealthy);
        assert!(auth.reasons[0].contains("cannot authenticate"));
    }

    #[test]
    fn persistence_errors_degrade() {
        let rdb = ServerStats {
            rdb_last_bgsave_ok: Some(false),
            ..master()
        };
        let v = judge(answered(rdb), Context::default());
        assert_eq!(v.status, HealthStatus::Degraded);
        assert!(v.reasons[0].contains("background save"), "{v:?}");
        let aof = ServerStats {
            aof_last_write_ok: Some(false),
            ..master()
        };
        assert!(judge(answered(aof), Context::default()).reasons[0].contains("append-only"));
    }

    #[test]
    fn replication_problems_degrade() {
        let declared = Context {
            declared: Some(Role::Replica),
            ..Context::default()
        };
        assert_eq!(
            judge(answered(replica(true)), declared.clone()).status,
            HealthStatus::Ok
        );
        let down = judge(answered(replica(false)), declared.clone());
        assert_eq!(down.status, HealthStatus::Degraded);
        assert_eq!(
            down.reasons,
            ["the replication link to the master 10.0.0.5:6379 is down"]
        );
        let silent = ServerStats {
            master_last_io_seconds_ago: Some(45),
            ..replica(true)
        };
        let v = judge(answered(silent), declared.clone());
        assert_eq!(v.reasons, ["nothing heard from the master 10.0.0.5:6379 for 45 s"]);
        let v = judge(answered(master()), declared);
        assert_eq!(v.reasons, ["declared a replica, but the server is a master"]);
        let v = judge(
            answered(replica(true)),
            Context {
                declared: Some(Role::Master),
                ..Context::default()
            },
        );
        assert_eq!(v.reasons, ["declared a master, but the server is a replica"]);
    }

    #[test]
    fn memory_pressure_and_rejected_connections_degrade() {
        let full = ServerStats {
            used_memory_bytes: Some(95),
            maxmemory_bytes: Some(100),
            ..master()
        };
        let v = judge(answered(full), Context::default());
        assert_eq!(v.status, HealthStatus::Degraded);
        assert!(v.reasons[0].starts_with("memory pressure: used_memory 95 bytes is 95% of maxmemory 100"));
        let roomy = ServerStats {
            used_memory_bytes: Some(89),
            maxmemory_bytes: Some(100),
            ..master()
        };
        assert_eq!(judge(answered(roomy), Context::default()).status, HealthStatus::Ok);

        let rejected = ServerStats {
            rejected_connections: Some(7),
            ..master()
        };
        let first = Context {
            previous_rejected: None,
            ..Context::default()
        };
        assert_eq!(judge(answered(rejected.clone()), first).status, HealthStatus::Ok);
        let v = judge(
            answered(rejected.clone()),
            Context {
                previous_rejected: Some(4),
                ..Context::default()
            },
        );
        assert_eq!(
            v.reasons,
            ["3 connection(s) rejected since the last probe (maxclients reached)"]
        );
        let same = Context {
            previous_rejected: Some(7),
            ..Context::default()
        };
        assert_eq!(judge(answered(rejected), same).status, HealthStatus::Ok);
    }

    #[test]
    fn a_slow_ping_degrades() {
        let slow = Probe::Answered {
            ping: Duration::from_millis(150),
            stats: Box::new(master()),
        };
        assert_eq!(judge(slow, Context::default()).reasons, ["PING took 150 ms"]);
    }

    proptest! {
        /// Whatever the fields say, the verdict is ok exactly when there is no reason,
        /// and never panics.
        #[test]
        fn the_status_matches_the_reasons(
            used in proptest::option::of(any::<u64>()),
            max in proptest::option::of(any::<u64>()),
            rejected in proptest::option::of(any::<u64>()),
            previous in proptest::option::of(any::<u64>()),
            silent in proptest::option::of(any::<i64>()),
            link in proptest::option::of(any::<bool>()),
            unanswered in 0u32..5,
            failed in any::<bool>(),
        ) {
            let stats = ServerStats {
                used_memory_bytes: used,
                maxmemory_bytes: max,
                rejected_connections: rejected,
                master_last_io_seconds_ago: silent,
                master_link_up: link,
                role: Some(ObservedRole::Replica),
                ..ServerStats::default()
            };
            let probe = if failed { Probe::Failed("x".into()) } else { answered(stats) };
            let v = evaluate(&probe, &Context { declared: Some(Role::Replica), unanswered, previous_rejected: previous });
            prop_assert_eq!(v.status == HealthStatus::Ok, v.reasons.is_empty());
        }
    }
}

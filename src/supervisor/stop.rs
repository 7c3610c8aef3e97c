//! How long a graceful stop may take before SIGKILL, and what a stop in progress
//! says about the save it waits for. Pure: the worker's `stop` does the waiting.
//!
//! A stop timeout that does not fit the data kills a server in the middle of its last
//! save. Where the spec sets none, the timeout is derived from the dataset: the last
//! background save's duration and the used memory (a save writes about that much),
//! twice over and with a margin, at least `[instances] stop_timeout` and at most
//! [`DERIVED_CAP`].

use crate::engine::{SaveProgress, ServerStats};
use crate::units::{format_bytes, format_duration_short};
use std::time::Duration;

/// The longest stop timeout the agent derives by itself (a spec may set more).
pub const DERIVED_CAP: Duration = Duration::from_secs(30 * 60);
/// The write rate assumed for a save that has no recent duration to go by.
const ASSUMED_SAVE_BYTES_PER_SECOND: u64 = 50 << 20;
/// Added to every derived timeout: the server also flushes, closes and exits.
const MARGIN: Duration = Duration::from_secs(10);

/// The stop timeout of an instance, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopTimeout {
    pub timeout: Duration,
    /// `spec stop_timeout`, `[instances] stop_timeout …`, or how it was derived.
    pub reason: String,
}

/// The stop timeout for an instance whose spec sets `spec_timeout`, on an agent whose
/// `[instances] stop_timeout` is `agent_default`, of an engine that needs at least
/// `engine_min`, with `stats` from its last sample.
pub fn stop_timeout(
    spec_timeout: Option<Duration>,
    agent_default: Duration,
    engine_min: Duration,
    stats: Option<&ServerStats>,
) -> StopTimeout {
    if let Some(timeout) = spec_timeout {
        return StopTimeout {
            timeout: timeout.max(engine_min),
            reason: "the spec's stop_timeout".into(),
        };
    }
    let floor = agent_default.max(engine_min);
    let last_save = stats
        .and_then(|s| s.rdb_last_bgsave_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs);
    let memory = stats.and_then(|s| s.used_memory_bytes);
    if last_save.is_none() && memory.is_none() {
        return StopTimeout {
            timeout: floor,
            reason: "[instances] stop_timeout (nothing known of the dataset yet)".into(),
        };
    }
    let writing = Duration::from_secs(memory.unwrap_or(0) / ASSUMED_SAVE_BYTES_PER_SECOND);
    let save = last_save.unwrap_or_default().max(writing);
    let derived = (save * 2 + MARGIN).clamp(floor, DERIVED_CAP.max(floor));
    let mut known = Vec::new();
    if let Some(bytes) = memory {
        known.push(format!("{} used memory", format_bytes(bytes)));
    }
    if let Some(save) = last_save {
        known.push(format!("a {} last save", format_duration_short(save)));
    }
    StopTimeout {
        timeout: derived,
        reason: format!(
            "derived from {} (at least {}, at most {})",
            known.join(" and "),
            format_duration_short(floor),
            format_duration_short(DERIVED_CAP.max(floor))
        ),
    }
}

/// `saving: 812.0 MiB written (the last save was 1.1 GiB)`.
pub fn describe(progress: &SaveProgress) -> String {
    match progress.previous_bytes.filter(|b| *b > 0) {
        Some(previous) => format!(
            "saving: {} written (the last save was {})",
            format_bytes(progress.written_bytes),
            format_bytes(previous)
        ),
        None => format!("saving: {} written", format_bytes(progress.written_bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(memory: Option<u64>, last_save: Option<i64>) -> ServerStats {
        ServerStats {
            used_memory_bytes: memory,
            rdb_last_bgsave_seconds: last_save,
            ..ServerStats::default()
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_spec_wins_but_never_below_what_the_engine_needs() {
        let t = stop_timeout(Some(Duration::from_secs(5)), MINUTE, Duration::ZERO, None);
        assert_eq!(t.timeout, Duration::from_secs(5));
        assert_eq!(t.reason, "the spec's stop_timeout");
        let t = stop_timeout(Some(Duration::from_secs(5)), MINUTE, Duration::from_secs(30), None);
        assert_eq!(t.timeout, Duration::from_secs(30));
    }

    #[test]
    fn a_small_dataset_gets_the_agent_default() {
        let t = stop_timeout(None, MINUTE, Duration::ZERO, Some(&stats(Some(1 << 20), Some(0))));
        assert_eq!(t.timeout, MINUTE);
        assert_eq!(
            t.reason,
            "derived from 1.0 MiB used memory and a 0s last save (at least 1m0s, at most 30m0s)"
        );
        let t = stop_timeout(None, MINUTE, Duration::ZERO, None);
        assert_eq!(t.timeout, MINUTE);
        assert!(t.reason.contains("nothing known"), "{}", t.reason);
        // -1: Redis has not saved yet; the memory alone decides.
        let t = stop_timeout(None, MINUTE, Duration::ZERO, Some(&stats(Some(1 << 20), Some(-1))));
        assert_eq!(t.timeout, MINUTE);
        assert!(!t.reason.contains("last save"), "{}", t.reason);
    }

    #[test]
    fn a_large_dataset_gets_twice_its_save_time_up_to_the_cap() {
        // The last save took 100 s: 2 × 100 + 10.
        let t = stop_timeout(None, MINUTE, Duration::ZERO, Some(&stats(Some(1 << 30), Some(100))));
        assert_eq!(t.timeout, Duration::from_secs(210));
        // 10 GiB at 50 MiB/s is 204 s, longer than the last save of 30 s.
        let t = stop_timeout(None, MINUTE, Duration::ZERO, Some(&stats(Some(10 << 30), Some(30))));
        assert_eq!(t.timeout, Duration::from_secs(2 * 204 + 10));
        let t = stop_timeout(None, MINUTE, Duration::ZERO, Some(&stats(Some(1 << 40), None)));
        assert_eq!(t.timeout, DERIVED_CAP);
        // A floor above the cap wins.
        let hour = Duration::from_secs(3600);
        assert_eq!(
            stop_timeout(None, hour, Duration::ZERO, Some(&stats(Some(1), None))).timeout,
            hour
        );
    }

    #[test]
    fn progress_and_sizes_read_well() {
        let p = SaveProgress {
            written_bytes: 812 << 20,
            previous_bytes: Some(1100 << 20),
        };
        assert_eq!(describe(&p), "saving: 812.0 MiB written (the last save was 1.1 GiB)");
        let p = SaveProgress {
            written_bytes: 10,
            previous_bytes: None,
        };
        assert_eq!(describe(&p), "saving: 10 B written");
    }
}

//! `reconcile(desired, observed) -> Action`: the pure decision of what to do next for
//! one instance. It never needs to know why it runs (a spec change, an exit, a timer),
//! and running it again on the same inputs gives the same answer.

use std::time::{Duration, Instant};

/// What is desired of the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// Not declared any more.
    Removed,
    Stopped,
    /// Running with this config hash.
    Running {
        config_hash: String,
    },
}

/// The live process, as far as planning needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// The config hash of the spec the process runs with.
    pub config_hash: String,
    /// Why the differences from the desired spec need a restart (see
    /// `changes::diff`); empty when they can all be applied live.
    pub restart: Vec<String>,
    /// Restarts asked for whatever the config (a raised `restore_epoch`: the data is
    /// placed while the process is down), each with why; answered once, by a start.
    pub asked: Vec<String>,
    /// Whether the process answers, so that live changes can be applied.
    pub ready: bool,
    /// After a failed attempt to apply live changes: not before this.
    pub reconfigure_not_before: Option<Instant>,
}

/// What the worker observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The live process, if there is one.
    pub running: Option<Live>,
    /// When a restart after a crash is allowed (back-off), if one is pending.
    pub restart_not_before: Option<Instant>,
    /// A process the agent does not own stands in the way: a foreign listener on one
    /// of the ports, or a live process that the record names but that the agent cannot
    /// verify. It must not be touched, and no second server may be started.
    pub blocked: bool,
}

/// Why a process is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Removed,
    StateStopped,
    /// The spec changed in ways the running process cannot take live (each named):
    /// stop, then start.
    Restart(Vec<String>),
}

impl StopReason {
    pub fn describe(&self) -> String {
        match self {
            StopReason::Removed => "removed from the desired state".into(),
            StopReason::StateStopped => "state = stopped".into(),
            StopReason::Restart(why) => format!("restart required by {}", why.join("; ")),
        }
    }
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Everything is as desired; wait for something to change.
    Idle,
    Start,
    /// Start once the back-off delay has passed.
    WaitUntil(Instant),
    /// A process the agent does not own is in the way: report it, leave it alone, look
    /// again later.
    Conflict,
    Stop(StopReason),
    /// Apply the spec's changes to the running process without a restart.
    Reconfigure,
    /// Removed and nothing runs: the worker ends.
    Finish,
}

/// Decides the next step.
pub fn reconcile(desired: &Desired, observed: &Observed, now: Instant) -> Action {
    match (desired, &observed.running) {
        (Desired::Removed, Some(_)) => Action::Stop(StopReason::Removed),
        (Desired::Removed, None) => Action::Finish,
        (Desired::Stopped, Some(_)) => Action::Stop(StopReason::StateStopped),
        (Desired::Stopped, None) => Action::Idle,
        (Desired::Running { .. }, Some(live)) if !live.asked.is_empty() => {
            Action::Stop(StopReason::Restart(live.asked.clone()))
        }
        (Desired::Running { config_hash }, Some(live)) if live.config_hash == *config_hash => Action::Idle,
        (Desired::Running { .. }, Some(live)) if !live.restart.is_empty() => {
            Action::Stop(StopReason::Restart(live.restart.clone()))
        }
        // Live changes need a server that answers; the readiness probe wakes the worker.
        (Desired::Running { .. }, Some(live)) if !live.ready => Action::Idle,
        (Desired::Running { .. }, Some(live)) => match live.reconfigure_not_before {
            Some(at) if at > now => Action::WaitUntil(at),
            _ => Action::Reconfigure,
        },
        (Desired::Running { .. }, None) => match observed.restart_not_before {
            Some(at) if at > now => Action::WaitUntil(at),
            _ if observed.blocked => Action::Conflict,
            _ => Action::Start,
        },
    }
}

/// Restart back-off after unexpected exits: the first restart is immediate, then
/// the delay doubles from `BASE` up to `CAP`, with ±20 % jitter so that instances that
/// crashed together do not restart in lock-step. A run of `STABLE_AFTER` or longer
/// forgets earlier crashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashHistory {
    /// Unexpected exits in a row without a stable run in between.
    pub consecutive: u32,
}

impl CrashHistory {
    pub const BASE: Duration = Duration::from_millis(500);
    pub const CAP: Duration = Duration::from_secs(60);
    pub const STABLE_AFTER: Duration = Duration::from_secs(60);
    /// From this many crashes in a row the phase is `crash-loop`.
    pub const CRASH_LOOP_AFTER: u32 = 3;

    /// Records an unexpected exit after a run of `ran_for`; returns the delay before
    /// the next start. `jitter` is in `[0, 1)`.
    pub fn on_crash(&mut self, ran_for: Duration, jitter: f64) -> Duration {
        if ran_for >= Self::STABLE_AFTER {
            self.consecutive = 0;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        Self::delay(self.consecutive, jitter)
    }

    /// The delay before restart number `consecutive` (1-based).
    pub fn delay(consecutive: u32, jitter: f64) -> Duration {
        if consecutive <= 1 {
            return Duration::ZERO;
        }
        let doublings = (consecutive - 2).min(16);
        let base = Self::BASE.saturating_mul(1 << doublings).min(Self::CAP);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        base.mul_f64(factor).min(Self::CAP)
    }

    pub fn in_crash_loop(&self) -> bool {
        self.consecutive >= Self::CRASH_LOOP_AFTER
    }

    /// A stable run was observed.
    pub fn reset(&mut self) {
        self.consecutive = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn running(hash: &str) -> Desired {
        Desired::Running {
            config_hash: hash.into(),
        }
    }

    fn live(hash: &str) -> Live {
        Live {
            config_hash: hash.into(),
            restart: Vec::new(),
            asked: Vec::new(),
            ready: true,
            reconfigure_not_before: None,
        }
    }

    fn observed(running: Option<&str>) -> Observed {
        Observed {
            running: running.map(live),
            restart_not_before: None,
            blocked: false,
        }
    }

    #[test]
    fn decisions() {
        let now = Instant::now();
        assert_eq!(reconcile(&running("a"), &observed(None), now), Action::Start);
        assert_eq!(reconcile(&running("a"), &observed(Some("a")), now), Action::Idle);
        assert_eq!(reconcile(&running("b"), &observed(Some("a")), now), Action::Reconfigure);
        let mut o = observed(Some("a"));
        o.running.as_mut().unwrap().restart = vec!["databases".into()];
        assert_eq!(
            reconcile(&running("b"), &o, now),
            Action::Stop(StopReason::Restart(vec!["databases".into()]))
        );
        let mut o = observed(Some("a"));
        o.running.as_mut().unwrap().ready = false;
        assert_eq!(reconcile(&running("b"), &o, now), Action::Idle);
        let retry = now + Duration::from_secs(1);
        o.running.as_mut().unwrap().ready = true;
        o.running.as_mut().unwrap().reconfigure_not_before = Some(retry);
        assert_eq!(reconcile(&running("b"), &o, now), Action::WaitUntil(retry));
        assert_eq!(reconcile(&running("b"), &o, retry), Action::Reconfigure);
        assert_eq!(
            reconcile(&Desired::Stopped, &observed(Some("a")), now),
            Action::Stop(StopReason::StateStopped)
        );
        assert_eq!(reconcile(&Desired::Stopped, &observed(None), now), Action::Idle);
        assert_eq!(
            reconcile(&Desired::Removed, &observed(Some("a")), now),
            Action::Stop(StopReason::Removed)
        );
        assert_eq!(reconcile(&Desired::Removed, &observed(None), now), Action::Finish);

        let later = now + Duration::from_secs(1);
        let mut o = observed(None);
        o.restart_not_before = Some(later);
        o.blocked = true;
        assert_eq!(reconcile(&running("a"), &o, now), Action::WaitUntil(later));
        assert_eq!(reconcile(&running("a"), &o, later), Action::Conflict);
        o.blocked = false;
        assert_eq!(reconcile(&running("a"), &o, later), Action::Start);

        // A restart asked for (a restore) comes first, even with nothing else to do;
        // a stopped or removed instance just stops.
        let mut o = observed(Some("a"));
        o.running.as_mut().unwrap().asked = vec!["restore_epoch 1 asked for".into()];
        let asked = Action::Stop(StopReason::Restart(vec!["restore_epoch 1 asked for".into()]));
        assert_eq!(reconcile(&running("a"), &o, now), asked);
        assert_eq!(reconcile(&running("b"), &o, now), asked);
        assert_eq!(
            reconcile(&Desired::Stopped, &o, now),
            Action::Stop(StopReason::StateStopped)
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_and_resets_after_a_stable_run() {
        let mut h = CrashHistory::default();
        let delays: Vec<Duration> = (0..12).map(|_| h.on_crash(Duration::from_secs(1), 0.5)).collect();
        assert_eq!(delays[0], Duration::ZERO, "first restart is immediate");
        assert_eq!(delays[1], Duration::from_millis(500));
        assert_eq!(delays[2], Duration::from_secs(1));
        assert_eq!(delays[3], Duration::from_secs(2));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), CrashHistory::CAP);
        assert!(h.in_crash_loop());
        assert_eq!(h.on_crash(CrashHistory::STABLE_AFTER, 0.5), Duration::ZERO);
        assert!(!h.in_crash_loop());
    }

    /// A model of what executing an action does to the observed state.
    fn execute(action: &Action, desired: &Desired, o: &mut Observed, now: &mut Instant) {
        match action {
            Action::Start => {
                if let Desired::Running { config_hash } = desired {
                    o.running = Some(live(config_hash));
                }
                o.restart_not_before = None;
            }
            Action::Reconfigure => {
                if let (Desired::Running { config_hash }, Some(running)) = (desired, o.running.as_mut()) {
                    running.config_hash = config_hash.clone();
                }
            }
            Action::Stop(_) => o.running = None,
            Action::WaitUntil(at) => *now = *at,
            // The foreign process goes away eventually.
            Action::Conflict => o.blocked = false,
            Action::Idle | Action::Finish => {}
        }
    }

    fn desired_strategy() -> impl Strategy<Value = Desired> {
        prop_oneof![
            Just(Desired::Removed),
            Just(Desired::Stopped),
            "[ab]".prop_map(|h| Desired::Running { config_hash: h }),
        ]
    }

    proptest! {
        /// From any observed state, executing the plan converges to Idle or Finish in a
        /// few steps, and once there the answer does not change (idempotence).
        #[test]
        fn converges_and_is_idempotent(
            desired in desired_strategy(),
            running in proptest::option::of(("[ab]", any::<bool>(), any::<bool>())),
            backoff_ms in proptest::option::of(0u64..5000),
            blocked: bool,
        ) {
            let mut now = Instant::now();
            let mut o = Observed {
                // A process that needs a restart for the spec it runs with, or that
                // can take the other spec live; one may also be asked to restart.
                running: running.map(|(hash, needs_restart, asked)| Live {
                    restart: if needs_restart { vec!["databases".into()] } else { Vec::new() },
                    asked: if asked { vec!["restore_epoch 1 asked for".into()] } else { Vec::new() },
                    ..live(&hash)
                }),
                restart_not_before: backoff_ms.map(|ms| now + Duration::from_millis(ms)),
                blocked,
            };
            let mut steps = 0;
            loop {
                let action = reconcile(&desired, &o, now);
                if matches!(action, Action::Idle | Action::Finish) {
                    prop_assert_eq!(reconcile(&desired, &o, now), action);
                    break;
                }
                execute(&action, &desired, &mut o, &mut now);
                steps += 1;
                prop_assert!(steps <= 4, "did not converge: {:?} {:?}", desired, o);
            }
            match desired {
                Desired::Running { config_hash } => {
                    prop_assert_eq!(o.running.map(|r| r.config_hash), Some(config_hash))
                }
                _ => prop_assert_eq!(o.running, None),
            }
        }

        #[test]
        fn delay_is_bounded(n in 0u32..1000, jitter in 0.0f64..1.0) {
            prop_assert!(CrashHistory::delay(n, jitter) <= CrashHistory::CAP);
        }
    }
}

//! Controlled remotely: the agent long-polls its desired state from the control
//! centre and posts reports of what is. The control centre is never needed to keep
//! running: without it, the last accepted state stays applied and supervised
//! (invariant 7), and every failure is retried with exponential back-off and full
//! jitter so that thousands of agents do not hammer a controller that comes back.

mod client;
mod report;

pub use client::{CallError, Client, Poll, Reported};
pub use report::{node_facts, Cadence, NodeFacts, ReportInputs};

use crate::desired::DocumentSource;
use crate::sources::{Offer, Rejected, SourcesHandle};
use crate::status::StatusBoard;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exponential back-off with full jitter: after `n` failures in a row, a random delay
/// in `[0, min(CAP, BASE · 2ⁿ)]`.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const BASE: Duration = Duration::from_secs(1);
    pub const CAP: Duration = Duration::from_secs(60);

    /// The delay before the next attempt, and counts the failure.
    pub fn next(&mut self, jitter: f64) -> Duration {
        let ceiling = Self::BASE.saturating_mul(1 << self.failures.min(16)).min(Self::CAP);
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// The delay before the next attempt after `error`: the back-off, or, when the
    /// controller asked for a pause (`Retry-After`), that pause stretched by up to half
    /// again at random, so that agents told the same do not come back together.
    pub fn after(&mut self, error: &CallError, jitter: f64) -> Duration {
        let delay = self.next(jitter);
        match error.retry_after() {
            Some(asked) => delay.max(asked + asked.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)),
            None => delay,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Logs a failure loudly once per change of its text, quietly while it repeats.
#[derive(Default)]
struct FailureLog {
    last: Option<String>,
}

impl FailureLog {
    fn failed(&mut self, what: &'static str, error: &CallError, delay: Duration, failures: u32) {
        let text = error.to_string();
        if self.last.as_deref() != Some(text.as_str()) {
            match error {
                CallError::Unauthorized { .. } => tracing::error!(
                    call = what,
                    error = text.as_str(),
                    "The controller refused the agent's token; fix [controller] token_file (retrying with back-off)."
                ),
                CallError::Tls { .. } => tracing::error!(
                    call = what,
                    error = text.as_str(),
                    "TLS with the controller failed; fix [controller] as the error says (retrying with back-off)."
                ),
                _ => tracing::warn!(call = what, error = text.as_str(), "Controller call failed."),
            }
        }
        tracing::info!(
            call = what,
            failures,
            retry_in_ms = delay.as_millis() as u64,
            "Controller back-off."
        );
        self.last = Some(text);
    }

    fn succeeded(&mut self, what: &'static str) {
        if self.last.take().is_some() {
            tracing::info!(call = what, "Controller reachable again.");
        }
    }
}

/// The controller client in use. SIGHUP builds a new one from the same token, CA and
/// key files; calls already under way finish with the one they started with.
pub type ClientSlot = crate::slot::Slot<Arc<Client>>;

/// Starts the long poll and the reports. They end when `shutdown` is cancelled.
pub fn spawn(
    client: ClientSlot,
    sources: SourcesHandle,
    report: ReportInputs,
    cadence: Cadence,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(poll_loop(
            client.clone(),
            sources,
            report.board.clone(),
            report.telemetry.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(report::report_loop(client, report, cadence, shutdown)),
    ]
}

/// Long-polls the desired state for as long as the agent runs.
async fn poll_loop(
    slot: ClientSlot,
    sources: SourcesHandle,
    board: StatusBoard,
    telemetry: Arc<crate::monitoring::metrics::Telemetry>,
    shutdown: CancellationToken,
) {
    // The generation last received (accepted or not): sent as If-None-Match, so that the
    // controller holds the request instead of sending the same document again.
    let mut seen = board.desired().generation;
    let mut backoff = Backoff::default();
    let mut log = FailureLog::default();
    loop {
        let client = slot.get();
        let polled = tokio::select! {
            polled = client.poll(seen) => polled,
            _ = shutdown.cancelled() => return,
        };
        let failure = match polled {
            Ok(Poll::Unchanged) => None,
            Ok(Poll::Document(bytes)) => {
                let claimed = crate::desired::claimed_generation(&bytes);
                let again = claimed.is_some() && claimed == seen;
                match sources.offer(bytes, DocumentSource::Controller).await {
                    Ok(Offer::Accepted { generation, .. }) => {
                        seen = Some(generation);
                        None
                    }
                    Ok(Offer::Unchanged { generation }) if again => Some(CallError::Status {
                        url: client.url().to_string(),
                        status: 200,
                        body: format!(
                            "the controller sent generation {generation} again although the agent has it (If-None-Match)"
                        ),
                    }),
                    Ok(Offer::Unchanged { generation }) => {
                        seen = Some(generation);
                        None
                    }
                    Ok(Offer::Rejected(rejected)) | Err(rejected) => match (rejected, claimed) {
                        // Reported in the status; wait for a newer generation.
                        (Rejected::Stale { offered, .. }, _) => {
                            seen = Some(offered);
                            None
                        }
                        (Rejected::Invalid(_), Some(generation)) if !again => {
                            seen = Some(generation);
                            None
                        }
                        (rejected, _) => Some(CallError::Read {
                            url: client.url().to_string(),
                            reason: rejected.to_string(),
                        }),
                    },
                }
            }
            Err(error) => Some(error),
        };
        match failure {
            None => {
                backoff.reset();
                log.succeeded("desired-state");
                board.controller_polled(None);
            }
            Some(error) => {
                let delay = backoff.after(&error, fastrand::f64());
                telemetry.controller_failed("poll");
                log.failed("desired-state", &error, delay, backoff.failures());
                board.controller_polled(Some(error.to_string()));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_has_full_jitter_and_a_cap() {
        let mut b = Backoff::default();
        assert_eq!(b.next(1.0), Duration::from_secs(1));
        assert_eq!(b.next(1.0), Duration::from_secs(2));
        assert_eq!(b.next(0.5), Duration::from_secs(2));
        assert_eq!(b.next(0.0), Duration::ZERO);
        for _ in 0..40 {
            assert!(b.next(1.0) <= Backoff::CAP);
        }
        assert_eq!(b.next(1.0), Backoff::CAP);
        b.reset();
        assert_eq!(b.next(1.0), Backoff::BASE);
    }

    #[test]
    fn a_retry_after_is_honoured_and_spread() {
        let busy = CallError::Busy {
            url: "u".into(),
            status: 503,
            retry_after_s: 30,
        };
        let mut b = Backoff::default();
        assert_eq!(b.after(&busy, 0.0), Duration::from_secs(30));
        assert_eq!(b.after(&busy, 1.0), Duration::from_secs(45));
        let refused = CallError::Unreachable {
            url: "u".into(),
            reason: "r".into(),
        };
        assert_eq!(b.after(&refused, 1.0), Duration::from_secs(4));
        assert_eq!(b.failures(), 3);
    }
}

//! The last metrics samples: per instance (its server's INFO fields and its process),
//! the host's, and the agent's own process. Monitors and the host sampler write them;
//! `/v1/status`, the reports and `/metrics` read them. Nothing here talks to a
//! server: readers always get the last sweep, never a live scrape.

use crate::engine::ServerStats;
use crate::monitoring::exposition::Sample;
use crate::monitoring::host::{Finding, HostMetrics};
use crate::monitoring::lines::InstanceLines;
use crate::procfs::ProcessMetrics;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The last full sample of one instance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceMetrics {
    /// When it was taken, milliseconds since the Unix epoch.
    pub sampled_at_ms: u64,
    /// The server's own view (one INFO).
    pub server: ServerStats,
    /// The process, from /proc; `None` when it could not be read.
    pub process: Option<ProcessMetrics>,
    /// The engine and the INFO reply, for the fields without a typed field.
    #[serde(skip)]
    pub engine: crate::engine::EngineKind,
    #[serde(skip)]
    pub info_reply: KeptReply,
}

impl InstanceMetrics {
    /// The sample taken at `sampled_at_ms` from an INFO `reply` (parsed into
    /// `server`) and the process.
    pub fn new(
        sampled_at_ms: u64,
        server: ServerStats,
        process: Option<ProcessMetrics>,
        engine: crate::engine::EngineKind,
        reply: &[u8],
    ) -> InstanceMetrics {
        InstanceMetrics {
            sampled_at_ms,
            server,
            process,
            engine,
            info_reply: KeptReply::keep(reply),
        }
    }

    /// The INFO fields without a typed field (parsed on demand).
    pub fn info_raw(&self) -> Option<BTreeMap<String, String>> {
        let reply = self.info_reply.text();
        crate::engine::for_kind(self.engine).map(|engine| engine.info_raw(&reply))
    }
}

/// An INFO reply kept until the next sample, LZ4-compressed: it is read only when
/// someone asks for one instance's untyped fields, and kept this way it costs about
/// 3.1 KB per instance instead of 5.5 KB (a Redis 7.0 INFO), for 13 µs per sample
/// (deflate would keep 2.3 KB for 200 µs).
#[derive(Debug, Clone, Default)]
pub struct KeptReply(Vec<u8>);

impl KeptReply {
    pub fn keep(reply: &[u8]) -> KeptReply {
        let mut kept = lz4_flex::block::compress_prepend_size(reply);
        kept.shrink_to_fit();
        KeptReply(kept)
    }

    /// The reply as it came; empty if it cannot be decompressed (it always can: the
    /// agent compressed it).
    pub fn text(&self) -> Vec<u8> {
        // The size comes first (4 bytes, little-endian); an INFO is kilobytes, and a
        // size past a megabyte would only be a wrong buffer, not worth allocating.
        let size = match self.0.get(..4) {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
            _ => return Vec::new(),
        };
        if size > 1 << 20 {
            return Vec::new();
        }
        lz4_flex::block::decompress_size_prepended(&self.0).unwrap_or_default()
    }

    /// Its size as kept.
    pub fn kept_bytes(&self) -> usize {
        self.0.len()
    }
}

/// The last host sample and what preflight found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostSample {
    pub sampled_at_ms: u64,
    pub metrics: HostMetrics,
    pub findings: Vec<Finding>,
    /// The agent's own process.
    pub agent: Option<ProcessMetrics>,
}

/// Shared store of the last samples.
#[derive(Clone, Default)]
pub struct Observations {
    instances: Arc<Mutex<BTreeMap<String, Arc<InstanceMetrics>>>>,
    /// The same samples as `/metrics` lines, kept for scrapes.
    lines: Arc<Mutex<InstanceLines>>,
    host: Arc<Mutex<Option<Arc<HostSample>>>>,
}

impl Observations {
    pub fn set_instance(&self, name: &str, metrics: InstanceMetrics) {
        let sample = Sample {
            sampled_at_ms: metrics.sampled_at_ms,
            server: &metrics.server,
            process: metrics.process.as_ref(),
        };
        lock(&self.lines).replace(name, &sample);
        lock(&self.instances).insert(name.to_string(), Arc::new(metrics));
    }

    /// Forgets an instance's samples (it stopped or is gone): stale numbers must not
    /// look current.
    pub fn clear_instance(&self, name: &str) {
        lock(&self.instances).remove(name);
        lock(&self.lines).remove(name);
    }

    /// Calls `read` with the instances' `/metrics` lines.
    pub fn with_lines<T>(&self, read: impl FnOnce(&InstanceLines) -> T) -> T {
        read(&lock(&self.lines))
    }

    pub fn instance(&self, name: &str) -> Option<Arc<InstanceMetrics>> {
        lock(&self.instances).get(name).cloned()
    }

    /// Every instance's last sample, by name.
    pub fn instances(&self) -> BTreeMap<String, Arc<InstanceMetrics>> {
        lock(&self.instances).clone()
    }

    pub fn set_host(&self, sample: HostSample) {
        *lock(&self.host) = Some(Arc::new(sample));
    }

    pub fn host(&self) -> Option<Arc<HostSample>> {
        lock(&self.host).clone()
    }
}

/// Locks a mutex, recovering from a panicked holder: the data are plain values that
/// are replaced whole, so they cannot be half-written.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An instance's status with its last metrics sample, as `/v1/status` and the
/// reports show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceView {
    #[serde(flatten)]
    pub status: crate::status::InstanceStatus,
    /// The last metrics sample while the process runs; `null` otherwise.
    pub metrics: Option<Arc<InstanceMetrics>>,
}

/// Every instance on `board` with its last sample, sorted by name.
pub fn instance_views(board: &crate::status::StatusBoard, observations: &Observations) -> Vec<InstanceView> {
    let samples = observations.instances();
    board
        .snapshot()
        .into_iter()
        .map(|status| InstanceView {
            metrics: samples.get(&status.name).cloned(),
            status,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_reply_comes_back_as_it_was_and_smaller() {
        let reply = include_str!("../../tests/fixtures/redis/info-all.txt").replace('\n', "\r\n");
        let kept = KeptReply::keep(reply.as_bytes());
        assert_eq!(kept.text(), reply.as_bytes());
        assert!(
            kept.kept_bytes() * 5 < reply.len() * 3,
            "{} of {}",
            kept.kept_bytes(),
            reply.len()
        );
        assert_eq!(KeptReply::default().text(), b"");
        let mut truncated = kept.clone();
        truncated.0.truncate(100);
        assert_eq!(truncated.text(), b"");
        assert_eq!(KeptReply(b"\xff\xff\xff\xffhuge".to_vec()).text(), b"");
    }
}

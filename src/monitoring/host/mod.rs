//! The host the instances run on: resource metrics ([`HostSampler`]), the preflight
//! findings about kernel settings and limits that hurt the instances (`preflight.rs`),
//! and which network interface holds an address (`interfaces.rs`).
//!
//! Metrics and findings are sampled every `metrics_interval` and served from the last
//! sample, so they are built to be cheap: each sample reads `/proc/stat`,
//! `/proc/meminfo`, `/proc/loadavg`, `/proc/uptime` and `/proc/net/dev` once and calls
//! `statvfs` once. Nothing here panics or fails as a whole: what cannot be read is
//! left out of the sample and described, with its path, in `errors` (metrics) or in a
//! finding (preflight). All of it is blocking file work: call it on the blocking pool.

mod interfaces;
mod preflight;

pub use interfaces::bind_interface;
use preflight::shorten;
pub use preflight::{
    agent_nofile_need, preflight, read_preflight_input, thp_mode, Finding, InstanceNeeds, PreflightInput,
    AGENT_FILES_BASE, AGENT_FILES_PER_INSTANCE,
};

use serde::Serialize;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;
use sysinfo::System;

/// Takes host samples. Keeps the previous CPU counters, which CPU usage needs.
pub struct HostSampler {
    /// Only CPU and memory are refreshed: sysinfo's network refresh opens seven files
    /// per interface and its disk list statvfs's every mount, where `/proc/net/dev`
    /// and one `statvfs` suffice.
    system: System,
    /// Reused for every `/proc` file so that steady-state samples do not allocate for
    /// reading.
    buf: String,
    /// Taken right after the first CPU reading.
    created: Instant,
    /// Whether a second CPU reading has been taken. Until then sysinfo's total is the
    /// average since boot while its per-core values are 0, so both are reported as 0.
    cpu_ready: bool,
}

impl Default for HostSampler {
    fn default() -> Self {
        HostSampler::new()
    }
}

/// One host sample. Counters (network bytes) are cumulative since boot; rates are
/// for the consumer to compute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostMetrics {
    /// Busy share of all CPUs (0–100) between the previous sample (or the creation of
    /// the sampler) and this one. CPU usage is a difference of two readings of
    /// `/proc/stat`, so a sample taken less than 200 ms after the previous one repeats
    /// the previous value, and one taken that soon after [`HostSampler::new`] is 0 (as
    /// are the per-core values).
    pub cpu_usage_percent: f32,
    /// The same per logical CPU, in the kernel's order (`cpu0`, `cpu1`, …).
    pub cpu_usage_percent_per_core: Vec<f32>,
    /// `None` when `/proc/loadavg` could not be read (see `errors`).
    pub load_average: Option<LoadAverage>,
    /// `None` when `/proc/meminfo` could not be read (see `errors`). In a container
    /// without lxcfs these are the host's numbers, not the container's limit.
    pub memory: Option<MemoryMetrics>,
    /// The filesystem holding `data_dir`; `None` when `statvfs` failed (see `errors`).
    pub filesystem: Option<FilesystemMetrics>,
    /// Every interface of the agent's network namespace, including `lo`.
    pub network: Vec<InterfaceMetrics>,
    /// `None` when `/proc/uptime` could not be read (see `errors`).
    pub uptime_seconds: Option<u64>,
    /// What could not be read, each naming the path. Empty normally.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryMetrics {
    pub total_bytes: u64,
    /// `MemAvailable`: what can be allocated without swapping, page cache included.
    pub available_bytes: u64,
    /// Total minus available.
    pub used_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilesystemMetrics {
    /// The path asked about (`data_dir`), not the mount point.
    pub path: PathBuf,
    pub total_bytes: u64,
    /// Writable by an unprivileged process (the root reserve excluded).
    pub available_bytes: u64,
    /// 0 on filesystems without a fixed inode table (btrfs, some network mounts).
    pub inodes_total: u64,
    pub inodes_free: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceMetrics {
    pub name: String,
    /// Bytes received since the interface appeared (cumulative counter).
    pub rx_bytes: u64,
    /// Bytes sent since the interface appeared (cumulative counter).
    pub tx_bytes: u64,
}

const PROC_STAT: &str = "/proc/stat";
const PROC_MEMINFO: &str = "/proc/meminfo";
const PROC_LOADAVG: &str = "/proc/loadavg";
const PROC_UPTIME: &str = "/proc/uptime";
const PROC_NET_DEV: &str = "/proc/net/dev";

impl HostSampler {
    /// Creates a sampler and takes the first CPU reading, so that the first
    /// [`sample`](Self::sample) (normally one `metrics_interval` later) already reports
    /// real CPU usage.
    pub fn new() -> HostSampler {
        let mut system = System::new();
        system.refresh_cpu_usage();
        HostSampler {
            system,
            buf: String::new(),
            // After the reading: sysinfo skips readings less than
            // MINIMUM_CPU_UPDATE_INTERVAL after its last one, so once this much time
            // has passed since `created`, the next refresh is certainly a real one.
            created: Instant::now(),
            cpu_ready: false,
        }
    }

    /// Samples the host now; `data_dir` selects the filesystem reported.
    pub fn sample(&mut self, data_dir: &Path) -> HostMetrics {
        let mut errors = Vec::new();

        // sysinfo swallows read errors and leaves the CPU list empty or the memory at
        // 0, so those are the signs that the file could not be read.
        self.cpu_ready = self.cpu_ready || self.created.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;
        self.system.refresh_cpu_usage();
        let ready = self.cpu_ready;
        let usage = |value: f32| if ready { percent(value) } else { 0.0 };
        let cpu_usage_percent_per_core: Vec<f32> =
            self.system.cpus().iter().map(|cpu| usage(cpu.cpu_usage())).collect();
        if cpu_usage_percent_per_core.is_empty() {
            errors.push(format!("cannot read {PROC_STAT}: no CPU lines"));
        }
        let cpu_usage_percent = usage(self.system.global_cpu_usage());

        self.system.refresh_memory();
        let memory = if self.system.total_memory() == 0 {
            errors.push(format!("cannot read {PROC_MEMINFO}: no MemTotal"));
            None
        } else {
            // Subtractions saturate: the kernel reads these fields at slightly
            // different moments, and a wrapped u64 would be absurd.
            let total = self.system.total_memory();
            let available = self.system.available_memory();
            let swap_total = self.system.total_swap();
            Some(MemoryMetrics {
                total_bytes: total,
                available_bytes: available,
                used_bytes: total.saturating_sub(available),
                swap_total_bytes: swap_total,
                swap_used_bytes: swap_total.saturating_sub(self.system.free_swap()),
            })
        };

        let load_average = self.read_parsed(PROC_LOADAVG, parse_loadavg, &mut errors);
        let uptime_seconds = self.read_parsed(PROC_UPTIME, parse_uptime, &mut errors);
        let network = self
            .read_parsed(PROC_NET_DEV, |text| Some(parse_net_dev(text)), &mut errors)
            .map(|(interfaces, bad_lines)| {
                if let Some(line) = bad_lines.first() {
                    errors.push(format!("{PROC_NET_DEV}: unexpected line '{line}'"));
                }
                interfaces
            })
            .unwrap_or_default();

        let filesystem = match crate::sys::statvfs(data_dir) {
            Ok(stats) => Some(FilesystemMetrics {
                path: data_dir.to_path_buf(),
                total_bytes: stats.total_bytes,
                available_bytes: stats.available_bytes,
                inodes_total: stats.inodes_total,
                inodes_free: stats.inodes_free,
            }),
            Err(error) => {
                errors.push(format!("cannot statvfs {}: {error}", data_dir.display()));
                None
            }
        };

        HostMetrics {
            cpu_usage_percent,
            cpu_usage_percent_per_core,
            load_average,
            memory,
            filesystem,
            network,
            uptime_seconds,
            errors,
        }
    }

    /// Reads a small `/proc` file into the reused buffer and parses it; a failure is
    /// recorded in `errors` with the path.
    fn read_parsed<T>(
        &mut self,
        path: &str,
        parse: impl FnOnce(&str) -> Option<T>,
        errors: &mut Vec<String>,
    ) -> Option<T> {
        self.buf.clear();
        if let Err(error) = fs::File::open(path).and_then(|mut file| file.read_to_string(&mut self.buf)) {
            errors.push(format!("cannot read {path}: {error}"));
            return None;
        }
        let parsed = parse(&self.buf);
        if parsed.is_none() {
            errors.push(format!("{path}: unexpected format"));
        }
        parsed
    }
}

/// sysinfo computes usage as a ratio; a NaN (no ticks elapsed) or a rounding excess
/// would be nonsense in a report.
fn percent(value: f32) -> f32 {
    if value.is_finite() {
        value.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

/// `/proc/loadavg`: `0.52 0.58 0.59 1/467 12345`.
fn parse_loadavg(text: &str) -> Option<LoadAverage> {
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<f64>().ok().filter(|v| v.is_finite()));
    Some(LoadAverage {
        one: fields.next()??,
        five: fields.next()??,
        fifteen: fields.next()??,
    })
}

/// `/proc/uptime`: `12345.67 54321.00` (uptime, idle time of all CPUs), in seconds.
fn parse_uptime(text: &str) -> Option<u64> {
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    // `as` truncates to whole seconds and saturates; the filter keeps out NaN and
    // negative values, which would otherwise become 0 silently.
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds as u64)
}

/// `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets … (8 receive
/// fields) tx_bytes …`. Returns the interfaces and the lines that could not be parsed
/// (skipped rather than failing the whole list).
fn parse_net_dev(text: &str) -> (Vec<InterfaceMetrics>, Vec<String>) {
    let mut interfaces = Vec::new();
    let mut bad_lines = Vec::new();
    // Header lines have no ':'; interface names cannot contain one.
    for line in text.lines().filter(|line| line.contains(':')) {
        let parsed = line.split_once(':').and_then(|(name, counters)| {
            let mut fields = counters.split_whitespace();
            let rx_bytes = fields.next()?.parse().ok()?;
            // Fields 1..=7 are the other receive counters; field 8 is tx_bytes.
            let tx_bytes = fields.nth(7)?.parse().ok()?;
            Some(InterfaceMetrics {
                name: name.trim().to_string(),
                rx_bytes,
                tx_bytes,
            })
        });
        match parsed {
            Some(interface) => interfaces.push(interface),
            None => bad_lines.push(shorten(line)),
        }
    }
    (interfaces, bad_lines)
}

/// Samples the host, the preflight and the agent's own process every
/// `metrics_interval` into `observations`, on the blocking pool, until `shutdown`.
pub async fn sample_loop(
    config: std::sync::Arc<crate::config::AgentConfig>,
    declared: tokio::sync::watch::Receiver<
        std::sync::Arc<std::collections::BTreeMap<String, std::sync::Arc<crate::spec::InstanceSpec>>>,
    >,
    observations: crate::monitoring::observations::Observations,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut sampler = Some(HostSampler::new());
    let mut reported: Vec<String> = Vec::new();
    let mut ticker = tokio::time::interval(config.monitoring.metrics_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; CPU usage needs a second reading, so wait a little
    // for a useful first sample.
    ticker.tick().await;
    tokio::select! {
        _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
        _ = shutdown.cancelled() => return,
    }
    loop {
        let needs = instance_needs(&declared.borrow(), &observations, &config.instances.bind);
        let Some(mut taken) = sampler.take() else {
            return;
        };
        let data_dir = config.data_dir.clone();
        let work = tokio::task::spawn_blocking(move || {
            let metrics = taken.sample(&data_dir);
            let findings = preflight(&read_preflight_input(&data_dir, needs));
            let agent = crate::procfs::process_metrics(std::process::id()).ok();
            (taken, metrics, findings, agent)
        });
        let (taken, metrics, findings, agent) = tokio::select! {
            done = work => match done {
                Ok(done) => done,
                Err(error) => {
                    tracing::error!(%error, "Host sampling failed; it stops until the agent restarts.");
                    return;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        sampler = Some(taken);
        // Said once, when it appears: each finding stays visible in the status.
        for finding in &findings {
            if !reported.contains(&finding.message) {
                tracing::warn!(
                    code = finding.code,
                    finding = finding.message.as_str(),
                    "Host preflight finding."
                );
            }
        }
        reported = findings.iter().map(|f| f.message.clone()).collect();
        observations.set_host(crate::monitoring::observations::HostSample {
            sampled_at_ms: crate::process::unix_now_millis(),
            metrics,
            findings,
            agent,
        });
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// What each declared instance asks of the host; the dataset size is its last
/// `used_memory` (or bytes on disk, for Pika), 0 before the first sample.
fn instance_needs(
    declared: &std::collections::BTreeMap<String, std::sync::Arc<crate::spec::InstanceSpec>>,
    observations: &crate::monitoring::observations::Observations,
    bind: &[std::net::IpAddr],
) -> Vec<InstanceNeeds> {
    declared
        .iter()
        .filter_map(|(name, spec)| {
            let engine = crate::engine::for_kind(spec.engine)?;
            let needs = engine.host_needs(spec);
            let dataset_bytes = observations
                .instance(name)
                .and_then(|m| m.server.disk_used_bytes.or(m.server.used_memory_bytes))
                .unwrap_or(0);
            Some(InstanceNeeds {
                name: name.clone(),
                tcp_backlog: needs.listen_backlog,
                nofile: needs.nofile,
                dataset_bytes,
                unbound_ports: if bind.iter().any(std::net::IpAddr::is_unspecified) {
                    Vec::new()
                } else {
                    engine.unbound_ports(spec.port)
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_of_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = HostSampler::new();
        let sample = sampler.sample(dir.path());
        assert!(sample.errors.is_empty(), "{:?}", sample.errors);
        let memory = sample.memory.unwrap();
        assert!(memory.total_bytes > 0);
        assert!(memory.available_bytes <= memory.total_bytes);
        assert_eq!(memory.used_bytes, memory.total_bytes - memory.available_bytes);
        let filesystem = sample.filesystem.as_ref().unwrap();
        assert!(filesystem.total_bytes > 0);
        assert!(filesystem.available_bytes <= filesystem.total_bytes);
        assert_eq!(filesystem.path, dir.path());
        assert!(!sample.cpu_usage_percent_per_core.is_empty());
        assert!((0.0..=100.0).contains(&sample.cpu_usage_percent));
        assert!(sample.load_average.is_some());
        assert!(sample.uptime_seconds.is_some_and(|s| s > 0));
        assert!(sample.network.iter().any(|i| i.name == "lo"), "{:?}", sample.network);
        serde_json::to_string(&sample).unwrap();

        // Sampled at once: no second CPU reading yet.
        assert_eq!(sample.cpu_usage_percent, 0.0);
        assert!(sample.cpu_usage_percent_per_core.iter().all(|p| *p == 0.0));
        // Busy for longer than sysinfo's minimum interval: now there is a real reading.
        let until = Instant::now() + sysinfo::MINIMUM_CPU_UPDATE_INTERVAL * 2;
        let mut sink = 0u64;
        while Instant::now() < until {
            sink = std::hint::black_box(sink.wrapping_add(1));
        }
        let sample = sampler.sample(dir.path());
        assert!(sample.cpu_usage_percent > 0.0, "{sample:?}");
        assert!(sample.cpu_usage_percent_per_core.iter().any(|p| *p > 0.0), "{sample:?}");

        let missing = dir.path().join("missing");
        let sample = sampler.sample(&missing);
        assert_eq!(sample.filesystem, None);
        assert_eq!(sample.errors.len(), 1, "{:?}", sample.errors);
        assert!(
            sample.errors[0].contains(&missing.display().to_string()),
            "{:?}",
            sample.errors
        );
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(
            parse_loadavg("0.52 0.58 1.59 1/467 12345\n"),
            Some(LoadAverage {
                one: 0.52,
                five: 0.58,
                fifteen: 1.59
            })
        );
        assert_eq!(parse_loadavg("0.52 0.58"), None);
        assert_eq!(parse_loadavg("0.52 x 0.1"), None);
        assert_eq!(parse_loadavg("NaN 1 1"), None);
        assert_eq!(parse_uptime("12345.67 54321.00\n"), Some(12345));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("-1 0"), None);

        let net_dev = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 1234      10    0    0    0     0          0         0     1234      10    0    0    0     0       0          0\n  \
eth0:99 1 0 0 0 0 0 0 77 1 0 0 0 0 0 0\n  \
bad0: 1 2 3\n";
        let (interfaces, bad) = parse_net_dev(net_dev);
        assert_eq!(
            interfaces,
            vec![
                InterfaceMetrics {
                    name: "lo".into(),
                    rx_bytes: 1234,
                    tx_bytes: 1234
                },
                InterfaceMetrics {
                    name: "eth0".into(),
                    rx_bytes: 99,
                    tx_bytes: 77
                },
            ]
        );
        assert_eq!(bad, vec!["  bad0: 1 2 3".to_string()]);
    }

    #[test]
    fn percent_is_bounded() {
        assert_eq!(percent(f32::NAN), 0.0);
        assert_eq!(percent(100.5), 100.0);
    }
}

//! The host the instances run on: resource metrics ([`HostSampler`]) and preflight
//! findings, kernel settings and limits that hurt Redis (`preflight`).
//!
//! Both are sampled every `metrics_interval` and served from the last sample, so they
//! are built to be cheap: each sample reads `/proc/stat`, `/proc/meminfo`,
//! `/proc/loadavg`, `/proc/uptime` and `/proc/net/dev` once and calls `statvfs` once.
//! Nothing here panics or fails as a whole: what cannot be read is left out of the
//! sample and described, with its path, in `errors` (metrics) or in a finding
//! (preflight). All of it is blocking file work: call it on the blocking pool.
//!
//! Reading and evaluating the preflight are separate ([`read_preflight_input`],
//! [`preflight`]) so the rules are unit-tested on plain values.

use serde::Serialize;
use std::fs;
use std::io::{self, Read};
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

// ---------------------------------------------------------------------------------
// Preflight.

/// Where the transparent hugepage mode is read from.
pub const THP_PATH: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
pub const OVERCOMMIT_PATH: &str = "/proc/sys/vm/overcommit_memory";
pub const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";

/// What one declared instance needs from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceNeeds {
    pub name: String,
    /// The listen backlog it asks for (`tcp-backlog`; Redis's default is 511).
    pub tcp_backlog: u64,
    /// The `RLIMIT_NOFILE` the agent will give it.
    pub nofile: u64,
    /// Estimated dataset size (`used_memory`), which a save writes to disk.
    pub dataset_bytes: u64,
}

/// What the preflight checks look at. `None` means unknown (the file does not exist,
/// as in many containers) and yields no finding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreflightInput {
    /// The content of [`THP_PATH`], e.g. `always madvise [never]`.
    pub transparent_hugepage: Option<String>,
    /// `vm.overcommit_memory`: 0 heuristic, 1 always, 2 never (strict accounting).
    pub overcommit_memory: Option<u32>,
    /// `net.core.somaxconn`: the kernel's cap on every listen backlog.
    pub somaxconn: Option<u64>,
    /// The agent's own `RLIMIT_NOFILE` soft limit, for the report.
    pub nofile_soft: Option<u64>,
    /// The agent's hard `RLIMIT_NOFILE`: the most it can give an instance.
    pub nofile_hard: Option<u64>,
    pub data_dir: PathBuf,
    pub data_dir_available_bytes: Option<u64>,
    pub instances: Vec<InstanceNeeds>,
    /// Files that exist but could not be read or parsed, each message naming the path.
    pub unreadable: Vec<String>,
}

/// One thing on the host that is likely to hurt the instances, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier: `thp-enabled`, `overcommit-memory`, `somaxconn-low`,
    /// `nofile-low`, `disk-space-low`, `preflight-unreadable`.
    pub code: &'static str,
    /// What is wrong, why it matters, and the command or setting that fixes it.
    pub message: String,
}

/// Reads the kernel settings and limits the preflight looks at. Never fails: a missing
/// file is "unknown"; any other failure is kept in `unreadable`.
pub fn read_preflight_input(data_dir: &Path, instances: Vec<InstanceNeeds>) -> PreflightInput {
    read_preflight_input_under(Path::new("/"), data_dir, instances)
}

/// [`read_preflight_input`] with the kernel files under `root` instead of `/`, for tests.
fn read_preflight_input_under(root: &Path, data_dir: &Path, instances: Vec<InstanceNeeds>) -> PreflightInput {
    let mut unreadable = Vec::new();
    let mut read = |path: &str| -> Option<(PathBuf, String)> {
        let full = root.join(path.trim_start_matches('/'));
        match fs::read_to_string(&full) {
            Ok(text) => Some((full, text)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => {
                unreadable.push(format!("cannot read {}: {error}", full.display()));
                None
            }
        }
    };
    let transparent_hugepage = read(THP_PATH).map(|(_, text)| text.trim().to_string());
    let overcommit = read(OVERCOMMIT_PATH);
    let somaxconn = read(SOMAXCONN_PATH);

    let mut parse_number = |file: Option<(PathBuf, String)>| -> Option<u64> {
        let (path, text) = file?;
        let parsed = text.trim().parse().ok();
        if parsed.is_none() {
            unreadable.push(format!(
                "{}: unexpected content '{}', expected a number",
                path.display(),
                shorten(text.trim())
            ));
        }
        parsed
    };
    // overcommit_memory is 0, 1 or 2; a larger number is kept and reported as "not 1".
    let overcommit_memory = parse_number(overcommit).map(|v| u32::try_from(v).unwrap_or(u32::MAX));
    let somaxconn = parse_number(somaxconn);

    let (nofile_soft, nofile_hard) = match crate::sys::nofile_limits() {
        Ok((soft, hard)) => (Some(soft), Some(hard)),
        Err(error) => {
            unreadable.push(format!("cannot read the agent's RLIMIT_NOFILE (getrlimit): {error}"));
            (None, None)
        }
    };
    let data_dir_available_bytes = match crate::sys::statvfs(data_dir) {
        Ok(stats) => Some(stats.available_bytes),
        // Not created yet: nothing to say about its filesystem.
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => {
            unreadable.push(format!("cannot statvfs {}: {error}", data_dir.display()));
            None
        }
    };

    PreflightInput {
        transparent_hugepage,
        overcommit_memory,
        somaxconn,
        nofile_soft,
        nofile_hard,
        data_dir: data_dir.to_path_buf(),
        data_dir_available_bytes,
        instances,
        unreadable,
    }
}

/// The selected mode of a transparent hugepage file: the word in brackets
/// (`always madvise [never]` → `never`). `None` when there is no bracketed word.
pub fn thp_mode(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let rest = text.get(start..)?;
    let mode = rest.get(..rest.find(']')?)?;
    (!mode.is_empty() && !mode.contains(char::is_whitespace)).then_some(mode)
}

/// Evaluates the preflight rules. Pure: the same input gives the same findings, in a
/// fixed order.
pub fn preflight(input: &PreflightInput) -> Vec<Finding> {
    let mut findings: Vec<Finding> = input
        .unreadable
        .iter()
        .map(|problem| Finding {
            code: "preflight-unreadable",
            message: problem.clone(),
        })
        .collect();

    if let Some(text) = &input.transparent_hugepage {
        match thp_mode(text) {
            // Redis forks to save; with THP every page touched after the fork is
            // copied as 2 MiB instead of 4 KiB, and compaction stalls add latency.
            Some("always") => findings.push(Finding {
                code: "thp-enabled",
                message: format!(
                    "transparent huge pages are 'always'; Redis latency and memory suffer during saves: \
                     echo never > {THP_PATH} (and add transparent_hugepage=never to the kernel command line)"
                ),
            }),
            Some(_) => {}
            None => findings.push(Finding {
                code: "preflight-unreadable",
                message: format!(
                    "{THP_PATH}: unexpected content '{}', expected the selected mode in brackets like 'always madvise [never]'",
                    shorten(text)
                ),
            }),
        }
    }

    if let Some(mode) = input.overcommit_memory.filter(|mode| *mode != 1) {
        let meaning = match mode {
            0 => "0 (heuristic)",
            2 => "2 (strict accounting)",
            _ => "not 1",
        };
        findings.push(Finding {
            code: "overcommit-memory",
            message: format!(
                "vm.overcommit_memory is {meaning}; the fork for a background save or a full resync can fail \
                 when memory is short: sysctl -w vm.overcommit_memory=1 (and persist it in /etc/sysctl.d/)"
            ),
        });
    }

    if let Some(somaxconn) = input.somaxconn {
        let short: Vec<(&str, u64)> = input
            .instances
            .iter()
            .filter(|i| i.tcp_backlog > somaxconn)
            .map(|i| (i.name.as_str(), i.tcp_backlog))
            .collect();
        if let Some(wanted) = short.iter().map(|(_, backlog)| *backlog).max() {
            findings.push(Finding {
                code: "somaxconn-low",
                message: format!(
                    "net.core.somaxconn is {somaxconn}, lower than the tcp-backlog of {}; the kernel silently \
                     shortens the listen queue and drops connections in bursts: sysctl -w net.core.somaxconn={wanted} \
                     (and persist it in /etc/sysctl.d/)",
                    name_list(&short)
                ),
            });
        }
    }

    if let Some(hard) = input.nofile_hard {
        let short: Vec<(&str, u64)> = input
            .instances
            .iter()
            .filter(|i| i.nofile > hard)
            .map(|i| (i.name.as_str(), i.nofile))
            .collect();
        if let Some(wanted) = short.iter().map(|(_, nofile)| *nofile).max() {
            findings.push(Finding {
                code: "nofile-low",
                message: format!(
                    "the agent's hard open-files limit (RLIMIT_NOFILE) is {hard}, below what {} want; they get at \
                     most {hard} and refuse clients beyond it: raise LimitNOFILE= in the agent's systemd unit to at \
                     least {wanted} and restart the agent",
                    name_list(&short)
                ),
            });
        }
    }

    if let Some(available) = input.data_dir_available_bytes {
        // A save writes a complete new RDB (or rewritten AOF) before it replaces the
        // old file, so each instance needs about its dataset free; all of them may
        // save at once (e.g. after a restart of the host).
        let needed = input
            .instances
            .iter()
            .fold(0u64, |sum, i| sum.saturating_add(i.dataset_bytes));
        if available < needed {
            findings.push(Finding {
                code: "disk-space-low",
                message: format!(
                    "{} has {} available, less than the {} the instances' datasets add up to; a save or AOF rewrite \
                     writes a full copy before replacing the old file and can fail with 'No space left on device': \
                     free space on that filesystem or move data_dir to a larger one",
                    input.data_dir.display(),
                    format_bytes(available),
                    format_bytes(needed)
                ),
            });
        }
    }
    findings
}

/// `a (511), b (511) and 98 more instances`: names with their value, at most five,
/// so that a message stays readable with a hundred instances.
fn name_list(items: &[(&str, u64)]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<String> = items
        .iter()
        .take(SHOWN)
        .map(|(name, value)| format!("{name} ({value})"))
        .collect();
    let noun = if items.len() == 1 { "instance" } else { "instances" };
    match items.len().saturating_sub(SHOWN) {
        0 => format!("{noun} {}", shown.join(", ")),
        more => format!("{noun} {} and {more} more", shown.join(", ")),
    }
}

/// Sizes in binary units with one decimal: `1.5 GiB`.
fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // f64 loses precision only beyond 2^53 bytes, far below what one decimal shows.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// Cuts unexpected file content for a message: a kernel file is short, but a message
/// must stay one line.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    let mut short: String = text
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX).is_some() {
        short.push('…');
    }
    short
}

/// Samples the host, the preflight and the agent's own process every
/// `metrics_interval` into `observations`, on the blocking pool, until `shutdown`.
pub async fn sample_loop(
    config: std::sync::Arc<crate::config::AgentConfig>,
    declared: tokio::sync::watch::Receiver<
        std::sync::Arc<std::collections::BTreeMap<String, std::sync::Arc<crate::spec::InstanceSpec>>>,
    >,
    observations: crate::observations::Observations,
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
        let needs = instance_needs(&declared.borrow(), &observations);
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
        observations.set_host(crate::observations::HostSample {
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
    observations: &crate::observations::Observations,
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
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(name: &str, tcp_backlog: u64, nofile: u64, dataset_bytes: u64) -> InstanceNeeds {
        InstanceNeeds {
            name: name.to_string(),
            tcp_backlog,
            nofile,
            dataset_bytes,
        }
    }

    /// A host with nothing to complain about.
    fn healthy() -> PreflightInput {
        PreflightInput {
            transparent_hugepage: Some("always madvise [never]".to_string()),
            overcommit_memory: Some(1),
            somaxconn: Some(4096),
            nofile_soft: Some(1024),
            nofile_hard: Some(524_288),
            data_dir: PathBuf::from("/var/lib/ker-agent"),
            data_dir_available_bytes: Some(100 << 30),
            instances: vec![need("a", 511, 10_032, 1 << 30), need("b", 511, 10_032, 2 << 30)],
            unreadable: Vec::new(),
        }
    }

    fn codes(input: &PreflightInput) -> Vec<&'static str> {
        preflight(input).into_iter().map(|f| f.code).collect()
    }

    fn only(input: &PreflightInput, code: &str) -> Finding {
        let findings = preflight(input);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].code, code, "{findings:?}");
        findings.into_iter().next().unwrap()
    }

    #[test]
    fn healthy_host_has_no_findings() {
        assert_eq!(preflight(&healthy()), vec![]);
    }

    #[test]
    fn unknown_everything_has_no_findings() {
        let input = PreflightInput {
            instances: healthy().instances,
            ..PreflightInput::default()
        };
        assert_eq!(preflight(&input), vec![]);
    }

    #[test]
    fn thp_mode_is_the_bracketed_word() {
        assert_eq!(thp_mode("always madvise [never]"), Some("never"));
        assert_eq!(thp_mode("[always] madvise never\n"), Some("always"));
        assert_eq!(thp_mode("always [madvise] never"), Some("madvise"));
        assert_eq!(thp_mode("always madvise never"), None);
        assert_eq!(thp_mode("[]"), None);
        assert_eq!(thp_mode("[always"), None);
        assert_eq!(thp_mode("] ["), None);
        assert_eq!(thp_mode("[a b]"), None);
        assert_eq!(thp_mode(""), None);
        assert_eq!(thp_mode("[é]"), Some("é"));
    }

    #[test]
    fn thp_always_fires_madvise_and_never_do_not() {
        let mut input = healthy();
        input.transparent_hugepage = Some("[always] madvise never".to_string());
        let finding = only(&input, "thp-enabled");
        assert!(finding.message.contains("'always'"), "{}", finding.message);
        assert!(finding.message.contains(THP_PATH), "{}", finding.message);
        input.transparent_hugepage = Some("always [madvise] never".to_string());
        assert_eq!(codes(&input), Vec::<&str>::new());
    }

    #[test]
    fn thp_garbage_names_the_path() {
        let mut input = healthy();
        input.transparent_hugepage = Some("what\nis this".to_string());
        let finding = only(&input, "preflight-unreadable");
        assert!(finding.message.contains(THP_PATH), "{}", finding.message);
        assert!(!finding.message.contains('\n'), "{}", finding.message);
    }

    #[test]
    fn overcommit_other_than_1_fires() {
        let mut input = healthy();
        for (mode, words) in [(0, "heuristic"), (2, "strict"), (7, "not 1")] {
            input.overcommit_memory = Some(mode);
            let finding = only(&input, "overcommit-memory");
            assert!(finding.message.contains(words), "{}", finding.message);
            assert!(
                finding.message.contains("vm.overcommit_memory=1"),
                "{}",
                finding.message
            );
        }
    }

    #[test]
    fn somaxconn_below_a_backlog_fires() {
        let mut input = healthy();
        input.somaxconn = Some(511);
        assert_eq!(codes(&input), Vec::<&str>::new(), "equal is enough");
        input.somaxconn = Some(128);
        input.instances.push(need("c", 100, 1024, 0));
        let finding = only(&input, "somaxconn-low");
        assert!(
            finding.message.contains("instances a (511), b (511);"),
            "{}",
            finding.message
        );
        assert!(!finding.message.contains("c (100)"), "{}", finding.message);
        assert!(
            finding.message.contains("net.core.somaxconn=511"),
            "{}",
            finding.message
        );
    }

    #[test]
    fn long_instance_lists_are_cut() {
        let mut input = healthy();
        input.somaxconn = Some(128);
        input.instances = (0..100).map(|i| need(&format!("r{i}"), 511, 1024, 0)).collect();
        let finding = only(&input, "somaxconn-low");
        assert!(finding.message.contains("r4 (511) and 95 more"), "{}", finding.message);
        assert!(!finding.message.contains("r5 "), "{}", finding.message);
    }

    #[test]
    fn nofile_hard_limit_below_a_need_fires() {
        let mut input = healthy();
        input.nofile_hard = Some(10_032);
        assert_eq!(codes(&input), Vec::<&str>::new(), "equal is enough");
        input.nofile_hard = Some(4096);
        input.instances[1].nofile = 20_000;
        let finding = only(&input, "nofile-low");
        assert!(finding.message.contains("is 4096"), "{}", finding.message);
        assert!(finding.message.contains("a (10032), b (20000)"), "{}", finding.message);
        assert!(finding.message.contains("at least 20000"), "{}", finding.message);
        // The soft limit is not what the agent hands out.
        let mut input = healthy();
        input.nofile_soft = Some(256);
        assert_eq!(codes(&input), Vec::<&str>::new());
    }

    #[test]
    fn disk_below_the_datasets_fires() {
        let mut input = healthy();
        input.data_dir_available_bytes = Some(3 << 30);
        assert_eq!(codes(&input), Vec::<&str>::new(), "equal is enough");
        input.data_dir_available_bytes = Some((3 << 30) - 1);
        let finding = only(&input, "disk-space-low");
        assert!(
            finding.message.contains("/var/lib/ker-agent has 3.0 GiB"),
            "{}",
            finding.message
        );
        assert!(finding.message.contains("the 3.0 GiB"), "{}", finding.message);
        // Absurd estimates saturate instead of overflowing.
        input.instances = vec![need("a", 511, 1, u64::MAX), need("b", 511, 1, u64::MAX)];
        assert_eq!(codes(&input), vec!["disk-space-low"]);
    }

    #[test]
    fn unreadable_files_become_findings() {
        let mut input = healthy();
        input.unreadable = vec!["cannot read /proc/sys/vm/overcommit_memory: Permission denied".to_string()];
        let finding = only(&input, "preflight-unreadable");
        assert!(finding.message.contains("/proc/sys/vm/overcommit_memory"));
    }

    #[test]
    fn findings_serialize_with_code_and_message() {
        let mut input = healthy();
        input.overcommit_memory = Some(0);
        let json = serde_json::to_value(preflight(&input)).unwrap();
        assert_eq!(json[0]["code"], "overcommit-memory");
        assert!(json[0]["message"].is_string());
    }

    #[test]
    fn missing_kernel_files_are_unknown() {
        let root = tempfile::tempdir().unwrap();
        let input = read_preflight_input_under(root.path(), root.path(), vec![]);
        assert_eq!(input.transparent_hugepage, None);
        assert_eq!(input.overcommit_memory, None);
        assert_eq!(input.somaxconn, None);
        assert!(input.unreadable.is_empty(), "{:?}", input.unreadable);
        assert!(input.nofile_hard.is_some());
        assert!(input.data_dir_available_bytes.is_some());
        assert_eq!(preflight(&input), vec![]);

        // A data_dir that does not exist yet is unknown too.
        let input = read_preflight_input_under(root.path(), &root.path().join("missing"), vec![]);
        assert_eq!(input.data_dir_available_bytes, None);
        assert!(input.unreadable.is_empty(), "{:?}", input.unreadable);
    }

    #[test]
    fn kernel_files_are_read_and_garbage_names_the_path() {
        let root = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let full = root.path().join(path.trim_start_matches('/'));
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, text).unwrap();
        };
        write(THP_PATH, "[always] madvise never\n");
        write(OVERCOMMIT_PATH, "0\n");
        write(SOMAXCONN_PATH, "4096\n");
        let input = read_preflight_input_under(root.path(), root.path(), vec![]);
        assert_eq!(input.transparent_hugepage.as_deref(), Some("[always] madvise never"));
        assert_eq!(input.overcommit_memory, Some(0));
        assert_eq!(input.somaxconn, Some(4096));
        assert_eq!(codes(&input), vec!["thp-enabled", "overcommit-memory"]);

        write(SOMAXCONN_PATH, "lots\n");
        let input = read_preflight_input_under(root.path(), root.path(), vec![]);
        assert_eq!(input.somaxconn, None);
        assert_eq!(input.unreadable.len(), 1, "{:?}", input.unreadable);
        assert!(input.unreadable[0].contains("proc/sys/net/core/somaxconn: unexpected content 'lots'"));
    }

    #[test]
    fn this_host_can_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let input = read_preflight_input(dir.path(), vec![need("a", 511, 1024, 0)]);
        assert!(input.unreadable.is_empty(), "{:?}", input.unreadable);
        assert!(input.data_dir_available_bytes.is_some());
        // Whatever this host's settings are, evaluating them works.
        let _ = preflight(&input);
    }

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
    fn helpers() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
        assert_eq!(format_bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(percent(f32::NAN), 0.0);
        assert_eq!(percent(100.5), 100.0);
        assert_eq!(shorten(&"x".repeat(200)).chars().count(), 81);
        assert_eq!(name_list(&[("a", 1)]), "instance a (1)");
    }
}

//! Preflight: kernel settings, limits and exposures on this host that are likely to
//! hurt the instances, each as a [`Finding`] that says what to do. Reading the host
//! ([`read_preflight_input`]) and evaluating the rules ([`preflight`]) are separate, so
//! the rules are unit-tested on plain values.

use serde::Serialize;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
    /// Its ports that listen on all addresses although the agent's `bind` names only
    /// some (empty when `bind` includes all addresses).
    pub unbound_ports: Vec<crate::engine::UnboundPort>,
}

/// Open files the agent holds per instance: the process's pidfd, the monitor's and
/// the worker's connections, and `/proc/<pid>/{stat,statm,fd}` kept open for the
/// process metrics (6 per instance measured at 100, 500 and 1,000 instances).
pub const AGENT_FILES_PER_INSTANCE: u64 = 6;
/// Open files the agent holds whatever the instances: runtime, logs, the API's and
/// the controller's connections, files being written (13 measured; room to spare).
pub const AGENT_FILES_BASE: u64 = 64;

/// The open files the agent needs for `instances` instances.
pub fn agent_nofile_need(instances: usize) -> u64 {
    AGENT_FILES_BASE + AGENT_FILES_PER_INSTANCE * instances as u64
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
    /// `nofile-low`, `agent-nofile-low`, `disk-space-low`, `port-exposed`, `preflight-unreadable`.
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

    if let Some(soft) = input.nofile_soft {
        let need = agent_nofile_need(input.instances.len());
        if need > soft {
            findings.push(Finding {
                code: "agent-nofile-low",
                message: format!(
                    "the agent's own open-files limit (RLIMIT_NOFILE) is {soft}, and it needs about {need} for {} \
                     instances ({AGENT_FILES_PER_INSTANCE} per instance: a process handle, two connections and three \
                     /proc files, plus {AGENT_FILES_BASE}): past the limit it cannot start, watch or probe more \
                     instances; raise LimitNOFILE= in the agent's systemd unit to at least {need} and restart the \
                     agent",
                    input.instances.len()
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
                    crate::units::format_bytes(available),
                    crate::units::format_bytes(needed)
                ),
            });
        }
    }
    let exposed: Vec<(&str, u64)> = input
        .instances
        .iter()
        .flat_map(|i| i.unbound_ports.iter().map(|p| (i.name.as_str(), u64::from(p.port))))
        .collect();
    if let Some(why) = input
        .instances
        .iter()
        .flat_map(|i| &i.unbound_ports)
        .map(|p| p.why)
        .next()
    {
        findings.push(Finding {
            code: "port-exposed",
            message: format!(
                "{} listen on all addresses whatever [instances] bind says ({why}): firewall these ports so \
                 that only the instances' replicas can reach them",
                port_list(&exposed)
            ),
        });
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

/// `ports of instance p (11221)` or `ports of instances p (11221), q (11222)`, cut
/// like [`name_list`].
fn port_list(items: &[(&str, u64)]) -> String {
    format!("ports of {}", name_list(items))
}

/// Cuts unexpected file content for a message: a kernel file is short, but a message
/// must stay one line.
pub(super) fn shorten(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn need(name: &str, tcp_backlog: u64, nofile: u64, dataset_bytes: u64) -> InstanceNeeds {
        InstanceNeeds {
            name: name.to_string(),
            tcp_backlog,
            nofile,
            dataset_bytes,
            unbound_ports: Vec::new(),
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
    fn the_agents_own_limit_below_its_need_for_the_instances_fires() {
        let mut input = healthy();
        input.nofile_soft = Some(1024);
        input.instances = (0..200).map(|i| need(&format!("i{i}"), 511, 10_032, 0)).collect();
        let finding = only(&input, "agent-nofile-low").message;
        assert!(
            finding.starts_with(
                "the agent's own open-files limit (RLIMIT_NOFILE) is 1024, and it needs about 1264 for 200 instances"
            ),
            "{finding}"
        );
        input.nofile_soft = Some(1264);
        assert!(!codes(&input).contains(&"agent-nofile-low"));
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
    fn ports_on_all_addresses_fire_once_with_every_port() {
        let mut input = healthy();
        let replication = crate::engine::UnboundPort {
            port: 11221,
            purpose: "replication",
            why: "bound to 0.0.0.0",
        };
        input.instances[0].unbound_ports = vec![replication];
        input.instances[1].unbound_ports = vec![crate::engine::UnboundPort {
            port: 11222,
            ..replication
        }];
        let finding = only(&input, "port-exposed");
        assert!(
            finding
                .message
                .starts_with("ports of instances a (11221), b (11222) listen on all addresses"),
            "{}",
            finding.message
        );
        assert!(finding.message.contains("(bound to 0.0.0.0)"), "{}", finding.message);
        assert!(finding.message.contains("firewall"), "{}", finding.message);
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
    fn helpers() {
        assert_eq!(shorten(&"x".repeat(200)).chars().count(), 81);
        assert_eq!(name_list(&[("a", 1)]), "instance a (1)");
    }
}

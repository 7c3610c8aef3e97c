//! Reads what the agent needs to know about processes from `/proc`: a process's
//! identity (start time, executable, state) to prove it is the one the agent started,
//! the boot id, the host name, the tail of a log file, and a process's resource usage
//! ([`process_metrics`]).
//!
//! Parsing is separated from reading so that the parsers are unit-tested on text.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state: `R`, `S`, `D`, `Z` (zombie), `T`, …
    pub state: char,
    /// Session id: equals the pid for a session leader.
    pub session: i32,
    /// Start time after boot, in clock ticks. With the boot id it names one process.
    pub start_ticks: u64,
}

/// Parses the content of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so the fields after it
/// are found from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state); field N is at index N - 3.
    let state = fields.first()?.chars().next()?;
    let session = fields.get(6 - 3)?.parse().ok()?;
    let start_ticks = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat {
        state,
        session,
        start_ticks,
    })
}

/// Reads `/proc/<pid>/stat`. `Ok(None)` when there is no such process; text that
/// cannot be parsed is an error, not "no process".
pub fn read_stat(pid: u32) -> io::Result<Option<ProcStat>> {
    let path = format!("/proc/{pid}/stat");
    match fs::read_to_string(&path) {
        Ok(text) => parse_stat(&text)
            .map(Some)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: unexpected format"))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// The executable of a process, as the kernel names it. A binary replaced on disk
/// since the process started (a package upgrade) is shown with a ` (deleted)` suffix,
/// which is removed: the process is still the one that was started from that path.
pub fn read_exe(pid: u32) -> io::Result<PathBuf> {
    let target = fs::read_link(format!("/proc/{pid}/exe"))?;
    Ok(strip_deleted(target))
}

fn strip_deleted(path: PathBuf) -> PathBuf {
    match path.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(stripped) => PathBuf::from(stripped),
        None => path,
    }
}

/// The processes whose working directory is `dir` (as the kernel names it: absolute,
/// symbolic links resolved). Processes that cannot be read (another user's, or gone
/// meanwhile) are skipped: an instance runs as the agent's user. Reads a link of every
/// process: only for the rare recovery of an interrupted start.
pub fn processes_in(dir: &Path) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        else {
            continue;
        };
        if fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// Clock ticks since boot now, in the unit of `/proc/<pid>/stat`'s start time, from
/// `/proc/uptime` (whose hundredths of a second are rounded down).
pub fn ticks_since_boot() -> io::Result<u64> {
    let text = fs::read_to_string("/proc/uptime")?;
    let uptime: f64 = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/uptime: unexpected format"))?;
    Ok((uptime * crate::sys::clock_ticks_per_second() as f64) as u64)
}

/// When a process started, in seconds since the Unix epoch, from its start time in
/// clock ticks after boot (`/proc/<pid>/stat` field 22).
pub fn started_at(start_ticks: u64) -> Option<u64> {
    let age_ticks = ticks_since_boot().ok()?.saturating_sub(start_ticks);
    let age = age_ticks / crate::sys::clock_ticks_per_second();
    Some(crate::process::unix_now().saturating_sub(age))
}

/// The short command name of a process (`/proc/<pid>/comm`), for messages.
pub fn read_comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// This boot's id: process start times are only comparable within one boot.
pub fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// The host name from the kernel, the default node id.
pub fn hostname() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The last lines of a log file written since byte `since` (its length when the
/// process that writes it started), reading at most the last 8 KiB. A file shorter
/// than `since` was truncated (log rotation): its end is read.
pub fn tail_lines(path: &Path, since: u64, lines: usize) -> io::Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 8 * 1024;
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    let window_start = len.saturating_sub(WINDOW);
    let start = if since <= len {
        since.max(window_start)
    } else {
        window_start
    };
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.take(WINDOW).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut tail: Vec<String> = text
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(lines)
        .map(str::to_string)
        .collect();
    tail.reverse();
    Ok(tail)
}

/// A failure to read what `/proc` says about a process. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum ProcfsError {
    /// The process does not exist (any more): a definite answer, unlike `Read`.
    #[error("no such process: {path} does not exist")]
    NoProcess { path: String },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: unexpected format")]
    Format { path: String },
}

impl ProcfsError {
    /// Maps a read error: `NotFound` and `ESRCH` (the process exited between two
    /// reads) mean "no such process".
    fn from_io(path: String, source: io::Error) -> ProcfsError {
        if source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(crate::sys::ESRCH) {
            ProcfsError::NoProcess { path }
        } else {
            ProcfsError::Read { path, source }
        }
    }
}

/// Resource usage of one process, for metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProcessMetrics {
    /// Resident memory (`statm` resident, as `VmRSS`). 0 for a zombie.
    pub rss_bytes: u64,
    /// Resident anonymous memory (`statm` resident - shared, as `RssAnon`): the dataset
    /// and buffers, without the mapped binary and libraries.
    pub anon_bytes: u64,
    /// User plus system CPU time since the process started (all threads, not children).
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub threads: u64,
}

/// The CPU-time and thread fields of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatUsage {
    utime_ticks: u64,
    stime_ticks: u64,
    threads: u64,
}

/// Like [`parse_stat`], for the fields [`process_metrics`] needs.
fn parse_stat_usage(text: &str) -> Option<StatUsage> {
    let after_comm = text.get(text.rfind(')')? + 1..)?;
    // after_comm starts at field 3 (state); field N is the (N - 3)th. Walked without
    // collecting: this runs for every instance every metrics interval.
    let mut fields = after_comm.split_ascii_whitespace();
    let utime_ticks = fields.nth(14 - 3)?.parse().ok()?;
    let stime_ticks = fields.next()?.parse().ok()?;
    let threads = fields.nth(20 - 15 - 1)?.parse().ok()?;
    Some(StatUsage {
        utime_ticks,
        stime_ticks,
        threads,
    })
}

/// Resident and anonymous memory from `/proc/<pid>/statm` (`size resident shared …`
/// in pages), in bytes: anonymous = resident - shared (file-backed and shmem), which is
/// `RssAnon` of `/proc/<pid>/status` without generating that much longer file.
fn parse_statm(text: &str, page_size: u64) -> Option<(u64, u64)> {
    let mut fields = text.split_ascii_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    Some((
        resident.saturating_mul(page_size),
        resident.saturating_sub(shared).saturating_mul(page_size),
    ))
}

fn count_dir_entries(dir: &str) -> Result<u64, ProcfsError> {
    let mut count = 0u64;
    for entry in fs::read_dir(dir).map_err(|e| ProcfsError::from_io(dir.to_string(), e))? {
        entry.map_err(|e| ProcfsError::from_io(dir.to_string(), e))?;
        count += 1;
    }
    Ok(count)
}

/// The `/proc` files of one process, kept open between samples: a sample is then two
/// `pread`s and an `fstat` instead of three path walks, opens and closes (this runs
/// for every instance every metrics interval). The files stay bound to the process
/// they were opened for: once it exits, reads fail instead of reading a successor
/// that reuses the pid.
pub struct ProcessFiles {
    pid: u32,
    stat: fs::File,
    statm: fs::File,
    fd_dir: fs::File,
    buf: Vec<u8>,
}

impl ProcessFiles {
    pub fn open(pid: u32) -> Result<ProcessFiles, ProcfsError> {
        let open = |name: &str| {
            let path = format!("/proc/{pid}/{name}");
            fs::File::open(&path).map_err(|e| ProcfsError::from_io(path, e))
        };
        Ok(ProcessFiles {
            pid,
            stat: open("stat")?,
            statm: open("statm")?,
            fd_dir: open("fd")?,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Like [`process_metrics`], from the open files.
    pub fn sample(&mut self) -> Result<ProcessMetrics, ProcfsError> {
        let pid = self.pid;
        let usage = {
            let text = read_at_start(&self.stat, &mut self.buf)
                .map_err(|e| ProcfsError::from_io(format!("/proc/{pid}/stat"), e))?;
            parse_stat_usage(text).ok_or_else(|| ProcfsError::Format {
                path: format!("/proc/{pid}/stat"),
            })?
        };
        let (rss_bytes, anon_bytes) = {
            let text = read_at_start(&self.statm, &mut self.buf)
                .map_err(|e| ProcfsError::from_io(format!("/proc/{pid}/statm"), e))?;
            parse_statm(text, crate::sys::page_size()).ok_or_else(|| ProcfsError::Format {
                path: format!("/proc/{pid}/statm"),
            })?
        };
        // Since Linux 6.2 the size of `/proc/<pid>/fd` is the number of descriptors: one
        // fstat instead of a readdir that allocates per entry (a busy Redis has one per
        // client). Older kernels report 0, and then the directory is counted.
        let size = self
            .fd_dir
            .metadata()
            .map_err(|e| ProcfsError::from_io(format!("/proc/{pid}/fd"), e))?
            .len();
        let open_fds = if size > 0 {
            size
        } else {
            count_dir_entries(&format!("/proc/{pid}/fd"))?
        };
        Ok(usage.into_metrics(rss_bytes, anon_bytes, open_fds))
    }
}

/// Reads a whole `/proc` file from offset 0 into `buf`, as text.
fn read_at_start<'b>(file: &fs::File, buf: &'b mut Vec<u8>) -> io::Result<&'b str> {
    use std::os::unix::fs::FileExt;
    buf.clear();
    let mut chunk = [0u8; 512];
    loop {
        let read = file.read_at(&mut chunk, buf.len() as u64)?;
        if read == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..read]);
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "larger than 64 KiB"));
        }
    }
    std::str::from_utf8(buf).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Resource usage of process `pid`, once (see [`ProcessFiles`]). Blocking file work:
/// call it on the blocking pool. Counting descriptors needs the process's uid or
/// `CAP_SYS_PTRACE`, which the agent has for the instances it started.
pub fn process_metrics(pid: u32) -> Result<ProcessMetrics, ProcfsError> {
    ProcessFiles::open(pid)?.sample()
}

impl StatUsage {
    fn into_metrics(self, rss_bytes: u64, anon_bytes: u64, open_fds: u64) -> ProcessMetrics {
        // Precision: f64 is exact for tick counts below 2^53, i.e. millions of years.
        let ticks = self.utime_ticks.saturating_add(self.stime_ticks);
        ProcessMetrics {
            rss_bytes,
            anon_bytes,
            cpu_seconds: ticks as f64 / crate::sys::clock_ticks_per_second() as f64,
            open_fds,
            threads: self.threads,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_found_by_working_directory_and_start_after_a_moment() {
        let dir = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(dir.path()).unwrap();
        let before = ticks_since_boot().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .current_dir(&dir)
            .spawn()
            .unwrap();
        let pid = child.id();
        assert_eq!(processes_in(&dir).unwrap(), [pid]);
        let stat = read_stat(pid).unwrap().unwrap();
        assert!(stat.start_ticks + 1 >= before, "{} < {before}", stat.start_ticks);
        assert!(
            started_at(stat.start_ticks)
                .unwrap()
                .abs_diff(crate::process::unix_now())
                <= 2
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(processes_in(&dir).unwrap().is_empty());
    }

    #[test]
    fn log_tails_show_only_what_the_last_process_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("p.log");
        fs::write(&log, "old 1\nold 2\n\n").unwrap();
        let since = fs::metadata(&log).unwrap().len();
        let mut text = fs::read_to_string(&log).unwrap();
        text.push_str("F fatal error\n*** Check failure stack trace: ***\n");
        fs::write(&log, &text).unwrap();
        assert_eq!(
            tail_lines(&log, since, 5).unwrap(),
            ["F fatal error", "*** Check failure stack trace: ***"]
        );
        assert_eq!(
            tail_lines(&log, 0, 2).unwrap(),
            ["F fatal error", "*** Check failure stack trace: ***"]
        );
        assert_eq!(tail_lines(&log, 0, 5).unwrap().len(), 4);
        // Rotated (truncated) since: its end is read.
        fs::write(&log, "new\n").unwrap();
        assert_eq!(tail_lines(&log, since, 5).unwrap(), ["new"]);
        assert!(tail_lines(&dir.path().join("missing"), 0, 5).is_err());
    }

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let text = "4242 (redis (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 5 0 987654 12345 678 18446744073709551615 1 1 0 0 0 0 0 4097 17664 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.session, 4242);
        assert_eq!(stat.start_ticks, 987654);
    }

    #[test]
    fn stat_of_this_process_is_readable() {
        let stat = read_stat(std::process::id()).unwrap().unwrap();
        assert!(stat.start_ticks > 0);
        assert_ne!(stat.state, 'Z');
    }

    #[test]
    fn truncated_stat_is_none_not_a_panic() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
        assert_eq!(parse_stat("1 (x"), None);
    }

    #[test]
    fn deleted_suffix_is_removed() {
        assert_eq!(
            strip_deleted(PathBuf::from("/usr/bin/redis-server (deleted)")),
            PathBuf::from("/usr/bin/redis-server")
        );
        assert_eq!(
            strip_deleted(PathBuf::from("/usr/bin/redis-server")),
            PathBuf::from("/usr/bin/redis-server")
        );
    }

    const STAT: &str = "4242 (redis (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 5 0 987654 12345 678 18446744073709551615 1 1 0 0 0 0 0 4097 17664 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_usage_fields() {
        let usage = parse_stat_usage(STAT).unwrap();
        assert_eq!(
            usage,
            StatUsage {
                utime_ticks: 5,
                stime_ticks: 3,
                threads: 5
            }
        );
        assert_eq!(parse_stat_usage(""), None);
        assert_eq!(parse_stat_usage("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_usage("1 (x) S 1 1 1 0 -1 0 0 0 0 0 x 3 0 0 20 0 5"), None);
    }

    #[test]
    fn kept_files_sample_like_a_fresh_read() {
        let mut files = ProcessFiles::open(std::process::id()).unwrap();
        for _ in 0..2 {
            let kept = files.sample().unwrap();
            let fresh = process_metrics(std::process::id()).unwrap();
            assert_eq!(kept.threads, fresh.threads);
            assert!(
                kept.rss_bytes > 0 && kept.anon_bytes > 0 && kept.anon_bytes <= kept.rss_bytes,
                "{kept:?}"
            );
            assert!(kept.open_fds >= 3, "{kept:?}");
            assert!(kept.cpu_seconds <= fresh.cpu_seconds, "{kept:?} {fresh:?}");
        }
        assert!(matches!(
            ProcessFiles::open(999_999_999),
            Err(ProcfsError::NoProcess { .. })
        ));
    }

    #[test]
    fn statm_memory_fields() {
        assert_eq!(
            parse_statm("5000 512 256 100 0 800 0\n", 4096),
            Some((512 * 4096, 256 * 4096))
        );
        // More shared than resident cannot happen, and must not underflow.
        assert_eq!(parse_statm("1 1 2 0 0 0 0", 4096), Some((4096, 0)));
        assert_eq!(parse_statm("", 4096), None);
        assert_eq!(parse_statm("1 x 2", 4096), None);
    }

    #[test]
    fn metrics_of_this_process_are_plausible() {
        let pid = std::process::id();
        let first = process_metrics(pid).unwrap();
        assert!(first.rss_bytes > 0, "{first:?}");
        assert!(first.anon_bytes > 0 && first.anon_bytes <= first.rss_bytes, "{first:?}");
        assert!(first.threads >= 1, "{first:?}");
        assert!(first.open_fds >= 3, "{first:?}");
        let counted = count_dir_entries(&format!("/proc/{pid}/fd")).unwrap();
        // Other tests open and close files concurrently: only roughly equal.
        assert!(
            counted >= 3 && counted.abs_diff(first.open_fds) < 64,
            "{counted} vs {first:?}"
        );

        // Burn CPU until the kernel's tick accounting shows it (10 ms per tick), with
        // a generous deadline so a loaded machine does not make this flaky.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut sink = 0u64;
        let later = loop {
            for i in 0..1_000_000u64 {
                sink = std::hint::black_box(sink.wrapping_mul(31).wrapping_add(i));
            }
            let now = process_metrics(pid).unwrap();
            if now.cpu_seconds > first.cpu_seconds || std::time::Instant::now() > deadline {
                break now;
            }
        };
        assert!(later.cpu_seconds > first.cpu_seconds, "{first:?} then {later:?}");
    }

    #[test]
    fn metrics_of_a_missing_process_name_the_path() {
        // Above the kernel's pid_max limit (4194304), so never a real process.
        let error = process_metrics(999_999_999).unwrap_err();
        assert!(matches!(error, ProcfsError::NoProcess { .. }), "{error:?}");
        assert!(error.to_string().contains("/proc/999999999/stat"), "{error}");
    }
}

//! Reads what the agent needs to know about processes from `/proc`: a process's
//! identity (start time, executable, state) to prove it is the one the agent started,
//! the boot id, the host name, and the tail of a log file.
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

/// The last lines of a log file, reading at most the last 8 KiB.
pub fn tail_lines(path: &Path, lines: usize) -> io::Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 8 * 1024;
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! One running instance process, started by this agent or adopted from a record,
//! behind one type: wait for its exit at once (child wait or pidfd readiness, never a
//! polling loop) and send it signals through a pidfd, which cannot hit a reused pid.

use crate::procfs;
use crate::record::InstanceRecord;
use crate::sys::{self, ChildSetup, PidFd};
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Environment variables passed through to instances; everything else is cleared.
const PASSED_ENV: &[&str] = &["LANG", "LC_ALL", "TZ"];
const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// An adopted process is not the agent's child, so its status cannot be read.
    Unknown,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => write!(f, "killed by {}", sys::signal_name(*signal)),
            Exit::Unknown => f.write_str("exit status unknown (adopted process)"),
        }
    }
}

/// A failed start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot open log file {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("cannot start {binary}: {source}")]
    Exec { binary: PathBuf, source: io::Error },
    #[error("started {binary} as pid {pid} but cannot read its identity from /proc: {reason}")]
    Identity { binary: PathBuf, pid: u32, reason: String },
}

/// What to start.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub args: Vec<std::ffi::OsString>,
    pub working_dir: &'a Path,
    pub log_file: &'a Path,
    /// Environment the server needs, beyond `PATH` and the few variables passed on.
    pub env: &'static [(&'static str, &'static str)],
    pub setup: ChildSetup,
}

/// A live instance process.
pub struct Process {
    pid: u32,
    pidfd: PidFd,
    /// Started by this agent (so it can be reaped and its status read), not adopted.
    own_child: bool,
    record: InstanceRecord,
}

/// What a record turned out to be.
pub enum Adoption {
    Adopted(Box<Process>),
    /// The recorded process is gone (or the pid now belongs to another process).
    Gone(String),
    /// The process exists but the agent cannot read enough of it to prove it is the
    /// recorded one (e.g. `/proc/<pid>/exe` is not readable with the agent's
    /// privileges). It is neither adopted nor forgotten.
    Unverifiable(String),
}

/// Why a record check failed.
enum CheckFailure {
    Gone(String),
    Unverifiable(String),
}

impl Process {
    /// Starts a new process in its own session, with a cleared environment, stdin from
    /// /dev/null and stdout/stderr appended to the instance's log. Returns it with a
    /// record (everything but `config_hash` and `restarts`, which the caller sets).
    pub fn spawn(launch: Launch<'_>, boot_id: &str, base: InstanceRecord) -> Result<Process, SpawnError> {
        let log_error = |source| SpawnError::Log {
            path: launch.log_file.to_path_buf(),
            source,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(launch.log_file)
            .map_err(log_error)?;
        let stdin = std::fs::File::open("/dev/null").map_err(|source| SpawnError::Log {
            path: PathBuf::from("/dev/null"),
            source,
        })?;
        let mut env: Vec<(String, std::ffi::OsString)> = vec![("PATH".into(), CHILD_PATH.into())];
        for name in PASSED_ENV {
            if let Some(value) = std::env::var_os(name) {
                env.push(((*name).to_string(), value));
            }
        }
        env.extend(
            launch
                .env
                .iter()
                .map(|(name, value)| ((*name).to_string(), (*value).into())),
        );
        let (stdin, stdout): (std::os::fd::OwnedFd, std::os::fd::OwnedFd) = (stdin.into(), log.into());
        let spawned = sys::spawn(&sys::Command {
            program: launch.binary,
            args: &launch.args,
            env: &env,
            cwd: launch.working_dir,
            stdin: &stdin,
            stdout: &stdout,
            stderr: &stdout,
            setup: &launch.setup,
        })
        .map_err(|source| SpawnError::Exec {
            binary: launch.binary.to_path_buf(),
            source,
        })?;
        let pid = spawned.pid;
        // The child is not reaped until this agent waits for it, so its pid cannot be
        // reused between the spawn and these reads.
        let identity = (|| {
            let stat = procfs::read_stat(pid)
                .map_err(|e| format!("/proc/{pid}/stat: {e}"))?
                .ok_or_else(|| format!("/proc/{pid}/stat: no such process"))?;
            let executable = match procfs::read_exe(pid) {
                Ok(executable) => executable,
                // A child that exited at once is a zombie until this agent reaps it,
                // and a zombie has no exe link. It is the binary just exec'd; its
                // exit is then noticed and reported like any other.
                Err(_) if procfs::read_stat(pid).ok().flatten().is_some_and(|s| s.state == 'Z') => {
                    std::fs::canonicalize(launch.binary).unwrap_or_else(|_| launch.binary.to_path_buf())
                }
                Err(e) => return Err(format!("/proc/{pid}/exe: {e}")),
            };
            Ok::<_, String>((stat, executable))
        })();
        let (stat, executable) = match identity {
            Ok(identity) => identity,
            Err(reason) => {
                // A process the agent cannot prove it owns must not outlive this call:
                // it would hold the port and the data directory unsupervised. It is
                // not reaped yet, so the signal cannot reach anything else.
                let _ = spawned.pidfd.send_signal(sys::SIGKILL);
                return Err(SpawnError::Identity {
                    binary: launch.binary.to_path_buf(),
                    pid,
                    reason,
                });
            }
        };
        let record = InstanceRecord {
            pid,
            start_ticks: stat.start_ticks,
            boot_id: boot_id.to_string(),
            executable,
            started_at: unix_now(),
            ..base
        };
        Ok(Process {
            pid,
            pidfd: spawned.pidfd,
            own_child: true,
            record,
        })
    }

    /// Adopts the process of `record` if it provably is the one the record was written
    /// for: same boot, pid alive and not a zombie, same start time, same executable.
    ///
    /// A start the previous agent did not get to record is found by the record's
    /// launch mark: for a record written before its spawn, the process the mark finds;
    /// for the record of a process that is gone, the one that replaced it (a restart
    /// after a crash rewrites the record only after its spawn). The adopted process's
    /// record then names it.
    pub fn adopt(record: &InstanceRecord, boot_id: &str) -> Adoption {
        if record.boot_id != boot_id {
            return Adoption::Gone("the host rebooted since the record was written".into());
        }
        if record.is_pending() {
            let not_before = record.launch.as_ref().map_or(0, |m| m.not_before_ticks);
            return match find_launched(record, not_before) {
                Ok(Some(found)) => Process::adopt_exact(&found),
                Ok(None) => Adoption::Gone(
                    "the agent stopped before the start it recorded got as far as the server (no process of its \
                     binary runs in its data directory)"
                        .into(),
                ),
                Err(reason) => Adoption::Unverifiable(reason),
            };
        }
        match Process::adopt_exact(record) {
            Adoption::Gone(reason) if record.launch.is_some() => match find_launched(record, record.start_ticks) {
                Ok(Some(found)) => Process::adopt_exact(&found),
                Ok(None) => Adoption::Gone(reason),
                Err(why) => Adoption::Unverifiable(format!("{reason}, and {why}")),
            },
            adoption => adoption,
        }
    }

    /// [`Process::adopt`] of exactly the recorded pid.
    fn adopt_exact(record: &InstanceRecord) -> Adoption {
        let pid = record.pid;
        let check = |with_executable: bool| -> Result<(), CheckFailure> {
            // Only a definite answer ("no such process", another start time, another
            // executable) makes the process gone; any other error (EMFILE, EACCES, EIO…)
            // proves nothing either way, and the record is kept for another look.
            let unreadable = |what: &str, e: std::io::Error| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    CheckFailure::Gone(format!("pid {pid} no longer exists"))
                } else {
                    CheckFailure::Unverifiable(format!("cannot read /proc/{pid}/{what}: {e}"))
                }
            };
            let stat = procfs::read_stat(pid)
                .map_err(|e| unreadable("stat", e))?
                .ok_or_else(|| CheckFailure::Gone(format!("pid {pid} no longer exists")))?;
            if stat.state == 'Z' || stat.state == 'X' {
                return Err(CheckFailure::Gone(format!("pid {pid} has exited")));
            }
            if stat.start_ticks != record.start_ticks {
                return Err(CheckFailure::Gone(format!(
                    "pid {pid} is another process now (started at tick {}, recorded {})",
                    stat.start_ticks, record.start_ticks
                )));
            }
            if !with_executable {
                return Ok(());
            }
            let exe = procfs::read_exe(pid).map_err(|e| unreadable("exe", e))?;
            if exe != record.executable {
                return Err(CheckFailure::Gone(format!(
                    "pid {pid} runs {} instead of {}",
                    exe.display(),
                    record.executable.display()
                )));
            }
            Ok(())
        };
        let verdict = |failure| match failure {
            CheckFailure::Gone(reason) => Adoption::Gone(reason),
            CheckFailure::Unverifiable(reason) => Adoption::Unverifiable(reason),
        };
        if let Err(failure) = check(true) {
            return verdict(failure);
        }
        let pidfd = match PidFd::open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(sys::ESRCH) => {
                return Adoption::Gone(format!("pid {pid} no longer exists"))
            }
            Err(e) => return Adoption::Unverifiable(format!("pidfd_open({pid}): {e}")),
        };
        // The pidfd now pins this very process; checking again closes the window in
        // which the pid could have been reused before it was opened. The same start
        // time is the same process, whose executable was checked above (a server does
        // not exec).
        if let Err(failure) = check(false) {
            return verdict(failure);
        }
        Adoption::Adopted(Box::new(Process {
            pid,
            pidfd,
            own_child: false,
            record: record.clone(),
        }))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn record(&self) -> &InstanceRecord {
        &self.record
    }

    /// The record, to note what the process now runs with after a live change. Its
    /// identity (pid, start time, executable, boot) is the proof of ownership and is
    /// never changed.
    pub fn record_mut(&mut self) -> &mut InstanceRecord {
        &mut self.record
    }

    /// How long the process has been running.
    pub fn running_for(&self) -> Duration {
        Duration::from_secs(unix_now().saturating_sub(self.record.started_at))
    }

    /// Waits until the process exits. Cancel-safe: it can be raced against other events
    /// and called again.
    pub async fn wait(&mut self) -> Exit {
        loop {
            // A pidfd becomes readable when its process exits.
            if self.pidfd.exited().await.is_err() {
                // Readiness cannot be watched (not expected to happen): fall back to
                // asking the kernel whether the process still exists, once a second.
                while self.signal(0).is_ok() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if !self.own_child {
                // Not the agent's child: its parent (init) reaps it and reads its status.
                return Exit::Unknown;
            }
            match self.pidfd.try_reap() {
                Ok(Some(sys::ExitStatus::Code(code))) => return Exit::Code(code),
                Ok(Some(sys::ExitStatus::Signal(signal))) => return Exit::Signal(signal),
                // Readable but not reapable yet (not expected): look again shortly.
                Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => return Exit::Unknown,
            }
        }
    }

    /// Sends `signal` to exactly this process.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        self.pidfd.send_signal(signal)
    }
}

/// The process of a start that `record`'s launch mark describes: the one session
/// leader (the agent starts servers in their own session; a server's forked children,
/// such as a background save, are not leaders) of the recorded executable that runs in
/// the instance's data directory and started at or after `not_before` (clock ticks
/// after boot), other than the recorded pid, with its pid, start time and executable
/// filled in. `Ok(None)` when there is none: the spawn never happened, or the process
/// has exited. A spawn the previous agent was in the middle of when it died finishes
/// its exec within microseconds; one look again after a pause covers it.
fn find_launched(record: &InstanceRecord, not_before: u64) -> Result<Option<InstanceRecord>, String> {
    let Some(mark) = &record.launch else {
        return Ok(None);
    };
    // The kernel names a working directory with its links resolved.
    let dir = std::fs::canonicalize(&mark.working_dir).unwrap_or_else(|_| mark.working_dir.clone());
    let executable = std::fs::canonicalize(&record.executable).unwrap_or_else(|_| record.executable.clone());
    for look in 0..2 {
        if look > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut found = Vec::new();
        for pid in procfs::processes_in(&dir).map_err(|e| format!("cannot read /proc: {e}"))? {
            let Ok(Some(stat)) = procfs::read_stat(pid) else {
                continue;
            };
            if pid != record.pid
                && i64::from(stat.session) == i64::from(pid)
                && stat.start_ticks >= not_before
                && !matches!(stat.state, 'Z' | 'X')
                && procfs::read_exe(pid).is_ok_and(|exe| exe == executable)
            {
                found.push((pid, stat.start_ticks));
            }
        }
        match found.as_slice() {
            [] => continue,
            [(pid, start_ticks)] => {
                return Ok(Some(InstanceRecord {
                    pid: *pid,
                    start_ticks: *start_ticks,
                    executable,
                    started_at: procfs::started_at(*start_ticks).unwrap_or_else(unix_now),
                    ..record.clone()
                }))
            }
            many => {
                return Err(format!(
                    "{} processes of {} run in {} since the start was recorded ({:?}); none is adopted",
                    many.len(),
                    executable.display(),
                    dir.display(),
                    many.iter().map(|(pid, _)| pid).collect::<Vec<_>>()
                ))
            }
        }
    }
    Ok(None)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

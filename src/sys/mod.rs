//! The only module that calls libc: starting instances (`spawn`), pidfds, a file lock
//! and a few process-wide facts. Every `unsafe` block of the crate lives here, each with
//! a `// SAFETY:` comment; everything else uses the safe functions below.

mod spawn;

pub use spawn::{spawn, ChildSetup, Command, Spawned};

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A pidfd: a handle that keeps naming one process even after its pid is reused,
/// registered with the async runtime so that its exit can be awaited.
pub struct PidFd {
    fd: AsyncFd<OwnedFd>,
}

impl PidFd {
    /// Opens a pidfd for `pid`. Must be called inside the tokio runtime.
    pub fn open(pid: u32) -> io::Result<PidFd> {
        let pid =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd =
            libc::c_int::try_from(fd).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pidfd out of range"))?;
        // SAFETY: fd is a freshly opened descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        PidFd::from_owned(owned)
    }

    /// Takes a pidfd the kernel returned (e.g. from `clone(CLONE_PIDFD)`).
    fn from_owned(owned: OwnedFd) -> io::Result<PidFd> {
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays
        // open and names the same pidfd until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        Ok(PidFd { fd })
    }

    /// Reaps the process if it is this agent's child and has exited: `Ok(Some(status))`
    /// with the exit code or the signal, `Ok(None)` while it runs. `ECHILD` for a
    /// process the agent did not start.
    pub fn try_reap(&self) -> io::Result<Option<ExitStatus>> {
        // SAFETY: siginfo_t is plain data that waitid fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on an open pidfd, writing into `info`.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.fd.get_ref().as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: after a successful waitid, si_pid and si_status are the fields of a
        // child event; si_pid 0 means nothing had exited yet (WNOHANG).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        Ok(Some(if info.si_code == libc::CLD_EXITED {
            ExitStatus::Code(status)
        } else {
            ExitStatus::Signal(status)
        }))
    }

    /// Resolves when the process has exited (the pidfd turns readable).
    pub async fn exited(&self) -> io::Result<()> {
        self.fd.readable().await.map(|_guard| ())
    }

    /// Sends `signal` to the process. Unlike kill(2) this can never hit another
    /// process that was given the same pid later. Signal 0 only checks that the
    /// process still exists.
    pub fn send_signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: the descriptor is open for the duration of the call; a null siginfo
        // is allowed and means "as if sent by kill(2)".
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0 as libc::c_uint,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Clock ticks per second, the unit of the start time in `/proc/<pid>/stat`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// The memory page size, the unit of `/proc/<pid>/statm`.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// Takes an exclusive lock on `file` without waiting. `Ok(false)` when another
/// process holds it. The lock lasts as long as the file stays open.
pub fn try_lock_exclusive(file: &std::fs::File) -> io::Result<bool> {
    // SAFETY: flock only takes a descriptor that `file` keeps open during the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

/// What `statvfs(3)` says about the filesystem that holds a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub total_bytes: u64,
    /// Bytes an unprivileged process may still write: the blocks reserved for root
    /// (ext4's 5 %) are not counted, since instances do not run as root.
    pub available_bytes: u64,
    /// 0 on filesystems without a fixed inode table (btrfs, some network mounts).
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// Space and inodes of the filesystem that holds `path`. The caller adds the path to
/// the error.
pub fn statvfs(path: &std::path::Path) -> io::Result<FsStats> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: libc::statvfs is plain data (integers only), for which all zeroes is valid.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and outlives the call; `stats` is a valid,
    // exclusively borrowed out-parameter of the right type.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // f_frsize is the unit of the block counts; a few old filesystems leave it 0 and
    // mean f_bsize.
    let block = match to_u64(stats.f_frsize) {
        0 => to_u64(stats.f_bsize),
        frsize => frsize,
    };
    Ok(FsStats {
        total_bytes: to_u64(stats.f_blocks).saturating_mul(block),
        available_bytes: to_u64(stats.f_bavail).saturating_mul(block),
        inodes_total: to_u64(stats.f_files),
        inodes_free: to_u64(stats.f_ffree),
    })
}

/// Caps glibc's malloc at `arenas` arenas. By default each thread that allocates may
/// get an arena of its own (up to eight per core), and every arena keeps the memory
/// freed into it: with the runtime's worker and blocking threads, that was about 3 MB
/// of the agent's RSS at 500 instances (BENCHMARKS.md). Call before other threads
/// start. False when glibc refused (the default then stays).
#[cfg(target_env = "gnu")]
pub fn limit_malloc_arenas(arenas: i32) -> bool {
    // SAFETY: mallopt only changes a tunable of the allocator; it takes no pointer.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

/// Other C libraries have their own allocators: nothing to cap.
#[cfg(not(target_env = "gnu"))]
pub fn limit_malloc_arenas(_arenas: i32) -> bool {
    true
}

/// Fixes the size from which glibc's malloc maps memory of its own (and unmaps it
/// when freed) at `bytes`. By default that threshold rises to the size of every
/// mapped block freed, up to 32 MB: after the first `/metrics` scrape of a thousand
/// instances (2.3 MB) or a full report, those buffers came from the heap and their
/// memory stayed with the agent. False when glibc refused.
#[cfg(target_env = "gnu")]
pub fn fix_malloc_mmap_threshold(bytes: i32) -> bool {
    // SAFETY: mallopt only changes a tunable of the allocator; it takes no pointer.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
}

/// Other C libraries have their own allocators: nothing to fix.
#[cfg(not(target_env = "gnu"))]
pub fn fix_malloc_mmap_threshold(_bytes: i32) -> bool {
    true
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (capped at 2^20 when
/// the hard limit is unlimited) and returns (before, after). The agent holds a few
/// files per instance, and a soft limit of 1,024 (a shell's default) would stop it
/// at about 160 instances; the hard limit is the one its unit sets.
pub fn raise_nofile_soft_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile_limits()?;
    let target = hard.min(1 << 20);
    if soft >= target {
        return Ok((soft, soft));
    }
    let limit = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: if hard == u64::MAX {
            libc::RLIM_INFINITY
        } else {
            hard as libc::rlim_t
        },
    };
    // SAFETY: setrlimit only reads `limit`, a valid rlimit that lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((soft, target))
}

/// This process's `RLIMIT_NOFILE`: (soft, hard). "Unlimited" is `u64::MAX`.
pub fn nofile_limits() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into `limit`, a valid exclusively borrowed rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let convert = |value: libc::rlim_t| {
        if value == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            to_u64(value)
        }
    };
    Ok((convert(limit.rlim_cur), convert(limit.rlim_max)))
}

/// Widens the libc integer types whose width differs between targets (u32 or u64)
/// without an `as` cast that clippy flags as unnecessary on 64-bit targets.
fn to_u64<T: Into<u64>>(value: T) -> u64 {
    value.into()
}

/// Name of a signal number, for logs and status ("SIGKILL").
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

pub use libc::{ESRCH, SIGKILL, SIGTERM};

//! The only module that calls libc: child set-up between fork and exec, pidfds, and a
//! few process-wide facts. Every `unsafe` block of the crate lives here, each with a
//! `// SAFETY:` comment; everything else uses the safe functions below.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What the agent sets up in a child after fork and before exec.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// Soft and hard `RLIMIT_NOFILE` for the child.
    pub nofile: Option<u64>,
    /// Value written to `/proc/self/oom_score_adj` in the child.
    pub oom_score_adj: Option<i32>,
}

/// Makes `command` start its child in a new session (so it outlives the agent and gets
/// none of the agent's terminal signals), with the limits of `setup`, without the
/// agent's ambient capabilities, and with every inherited file descriptor above stderr
/// marked close-on-exec.
///
/// Errors in the child (for example a limit above the hard limit) make the spawn fail
/// with that error in the parent.
pub fn configure_child(command: &mut tokio::process::Command, setup: &ChildSetup) {
    // Everything the closure needs is prepared here, before fork: after fork only
    // async-signal-safe calls are allowed, so no allocation happens in the child.
    let nofile = setup.nofile;
    let oom = setup.oom_score_adj.map(|value| {
        (
            // The literal has no interior NUL, so CString::new cannot fail.
            CString::new("/proc/self/oom_score_adj").unwrap_or_default(),
            value.to_string().into_bytes(),
        )
    });
    let child_setup = move || -> io::Result<()> {
        // SAFETY: setsid has no memory-safety preconditions; it fails only if the
        // child already leads a process group, which a freshly forked child does not.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(limit) = nofile {
            let rlim = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            // SAFETY: rlim is a valid, initialised rlimit that outlives the call.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some((path, value)) = &oom {
            // SAFETY: path is a valid NUL-terminated string prepared before fork; open,
            // write and close are async-signal-safe.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: value points to value.len() initialised bytes; fd is open.
            let written = unsafe { libc::write(fd, value.as_ptr().cast(), value.len()) };
            let write_error = io::Error::last_os_error();
            // SAFETY: fd was opened above and is closed exactly once.
            unsafe { libc::close(fd) };
            if written < 0 {
                return Err(write_error);
            }
        }
        // The agent may hold ambient capabilities (CAP_SYS_RESOURCE under systemd) to set
        // the limits above; the instance gets none of them.
        // SAFETY: prctl with PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Mark every descriptor above stderr close-on-exec rather than closing it: the
        // standard library still needs its own (already close-on-exec) pipe to report
        // an exec failure to the parent.
        // SAFETY: close_range only changes descriptor flags; the range and flag are valid.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure only performs async-signal-safe system calls on data prepared
    // before fork, and does not allocate, lock or touch the parent's threads.
    unsafe {
        command.pre_exec(child_setup);
    }
}

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
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays
        // open and names the same pidfd until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        Ok(PidFd { fd })
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

/// Clock ticks per second, the unit of the start time in `/proc/<pid>/stat`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
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

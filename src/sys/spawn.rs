//! Starting an instance: `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` and a small
//! child function that sets the process up and execs the binary — what glibc's
//! posix_spawn does, plus the set-up posix_spawn cannot do (resource limits,
//! oom_score_adj, dropping ambient capabilities) *in the child, before exec*.
//!
//! Why not fork: the agent's memory is marked copy-on-write on every fork, and the
//! agent then takes a page fault for every page it writes. With a hundred instances
//! starting at once that was about half of the agent's CPU. A vfork-style child shares
//! the agent's memory and the calling thread waits until it has exec'd, so nothing is
//! copied.
//!
//! The child runs on its own stack in the agent's address space: it only reads the
//! `ChildArgs` prepared before the clone, calls async-signal-safe functions, and
//! reports a failure by writing into `ChildArgs` before `_exit`.

use super::PidFd;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What the child sets up before exec.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// Soft and hard `RLIMIT_NOFILE` for the child.
    pub nofile: Option<u64>,
    /// Value written to `/proc/self/oom_score_adj` in the child.
    pub oom_score_adj: Option<i32>,
}

/// A process to start.
pub struct Command<'a> {
    pub program: &'a Path,
    pub args: &'a [std::ffi::OsString],
    /// `NAME=value` pairs; nothing else is passed.
    pub env: &'a [(String, std::ffi::OsString)],
    pub cwd: &'a Path,
    pub stdin: &'a OwnedFd,
    pub stdout: &'a OwnedFd,
    pub stderr: &'a OwnedFd,
    pub setup: &'a ChildSetup,
}

/// A started child: its pid and a pidfd for it (not yet reaped).
pub struct Spawned {
    pub pid: u32,
    pub pidfd: PidFd,
}

/// The step of the child's set-up that failed, for the error message.
const STEPS: [&str; 9] = [
    "",
    "setsid",
    "dup2",
    "chdir",
    "setrlimit(RLIMIT_NOFILE)",
    "write /proc/self/oom_score_adj",
    "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
    "close_range",
    "execve",
];

/// Everything the child reads, prepared before the clone. `#[repr(C)]` and plain data
/// only: the child must not touch anything that allocates or locks.
#[repr(C)]
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    fds: [RawFd; 3],
    has_nofile: bool,
    nofile: libc::rlimit,
    oom_path: *const libc::c_char,
    oom_value: *const u8,
    oom_len: usize,
    /// The signal mask the exec'd program starts with (empty).
    mask: libc::sigset_t,
    /// Set by the child on failure: the step (index into `STEPS`) and errno.
    failed_step: usize,
    errno: libc::c_int,
}

/// Size of the child's stack; the child function and the libc calls it makes need a
/// few kilobytes.
const STACK_SIZE: usize = 256 * 1024;

/// Starts `command` in a new session, with its stdio, working directory, environment
/// and limits, without the agent's ambient capabilities, and with every other
/// descriptor closed at exec. Returns once the child has exec'd (or failed to).
pub fn spawn(command: &Command<'_>) -> io::Result<Spawned> {
    let cstring = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in argument"))
    };
    let program = cstring(command.program.as_os_str())?;
    let mut argv_owned = vec![program.clone()];
    for arg in command.args {
        argv_owned.push(cstring(arg)?);
    }
    let env_owned: Vec<CString> = command
        .env
        .iter()
        .map(|(k, v)| {
            let mut pair = std::ffi::OsString::from(format!("{k}="));
            pair.push(v);
            cstring(&pair)
        })
        .collect::<io::Result<_>>()?;
    let cwd = cstring(command.cwd.as_os_str())?;
    let argv: Vec<*const libc::c_char> = argv_owned
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env_owned
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let oom_path = c"/proc/self/oom_score_adj";
    let oom_value = command.setup.oom_score_adj.map(|v| v.to_string().into_bytes());

    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `empty` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut empty) };
    let nofile = command.setup.nofile.unwrap_or(0) as libc::rlim_t;
    let mut args = ChildArgs {
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ptr(),
        fds: [
            command.stdin.as_raw_fd(),
            command.stdout.as_raw_fd(),
            command.stderr.as_raw_fd(),
        ],
        has_nofile: command.setup.nofile.is_some(),
        nofile: libc::rlimit {
            rlim_cur: nofile,
            rlim_max: nofile,
        },
        oom_path: if oom_value.is_some() {
            oom_path.as_ptr()
        } else {
            std::ptr::null()
        },
        oom_value: oom_value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr()),
        oom_len: oom_value.as_ref().map_or(0, Vec::len),
        mask: empty,
        failed_step: 0,
        errno: 0,
    };

    // One page below the stack that is never accessible.
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let guard_size = usize::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096);
    // SAFETY: an anonymous private mapping of a guard page plus STACK_SIZE bytes,
    // checked below; the guard page at the bottom turns an overflow of the child's
    // stack into a fault instead of a write into the agent's memory.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            guard_size + STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the first page of the mapping made above.
    if unsafe { libc::mprotect(stack, guard_size, libc::PROT_NONE) } < 0 {
        let error = io::Error::last_os_error();
        // SAFETY: unmaps the mapping made above, unused.
        unsafe { libc::munmap(stack, guard_size + STACK_SIZE) };
        return Err(error);
    }

    // No signal handler may run in the child before it has reset the handlers: block
    // every signal in this thread for the duration of the clone (the child inherits
    // the mask and restores `args.mask` just before exec).
    // SAFETY: plain sigset_t values, initialised by sigfillset / written by the call.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
    }
    let mut pidfd: libc::c_int = -1;
    // SAFETY: the stack is a fresh mapping (it grows down, so the top is passed); the
    // child only reads `args` and writes its failure fields, while this thread is
    // suspended (CLONE_VFORK) until the child has exec'd or exited, so `args`, the
    // strings it points to and the stack outlive every use. CLONE_PIDFD stores the
    // new pidfd in `pidfd` (the parent_tid argument).
    let pid = unsafe {
        libc::clone(
            child_main,
            (stack as *mut u8).add(guard_size + STACK_SIZE) as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            &mut args as *mut ChildArgs as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above; unmaps the stack mapped above, which the
    // child no longer uses (it has exec'd or exited when clone returns).
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut());
        libc::munmap(stack, guard_size + STACK_SIZE);
    }
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: the kernel returned a new pidfd owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // The child wrote into `args` through the pointer given to clone.
    // SAFETY: `args` is a live local; a volatile read makes the child's write visible.
    let failed_step = unsafe { std::ptr::read_volatile(&args.failed_step) };
    if failed_step != 0 {
        // The child exited with 127 without exec'ing: reap it, report why.
        let mut status = 0;
        // SAFETY: waits for our own, already exited child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let step = STEPS.get(failed_step).copied().unwrap_or("set-up");
        let error = io::Error::from_raw_os_error(args.errno);
        return Err(io::Error::new(error.kind(), format!("{step}: {error}")));
    }
    let pid = u32::try_from(pid).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative pid"))?;
    Ok(Spawned {
        pid,
        pidfd: PidFd::from_owned(owned)?,
    })
}

/// The child: runs on its own stack inside the agent's memory until execve.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` of `spawn`, alive while this child runs (the
    // parent thread is suspended until exec or exit).
    let args = unsafe { &mut *(arg as *mut ChildArgs) };
    /// Records which step failed with which errno, and ends the child.
    fn fail(args: &mut ChildArgs, step: usize) -> ! {
        args.failed_step = step;
        // SAFETY: reads the errno the failed call just set; no other effect.
        args.errno = unsafe { *libc::__errno_location() };
        // SAFETY: _exit ends the child without running the agent's atexit handlers or
        // flushing its stdio buffers, which belong to the parent.
        unsafe { libc::_exit(127) }
    }
    // SAFETY (whole block): async-signal-safe system calls on the prepared, valid
    // pointers in `args`; nothing allocates, locks or unwinds.
    unsafe {
        // The handler table is the child's own copy (no CLONE_SIGHAND): put every
        // signal back to its default, so that the agent's handlers never run here and
        // the program starts like from a shell.
        for signal in 1..libc::SIGRTMAX() {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
        if libc::setsid() < 0 {
            fail(args, 1);
        }
        for (target, fd) in args.fds.into_iter().enumerate() {
            let target = target as RawFd;
            if fd == target {
                // Already in place: only clear close-on-exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    fail(args, 2);
                }
            } else if libc::dup2(fd, target) < 0 {
                fail(args, 2);
            }
        }
        if libc::chdir(args.cwd) < 0 {
            fail(args, 3);
        }
        if args.has_nofile && libc::setrlimit(libc::RLIMIT_NOFILE, &args.nofile) < 0 {
            fail(args, 4);
        }
        if !args.oom_path.is_null() {
            let fd = libc::open(args.oom_path, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, args.oom_value.cast(), args.oom_len) < 0 {
                fail(args, 5);
            }
            libc::close(fd);
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) < 0
        {
            fail(args, 6);
        }
        // Every descriptor above stderr (the agent's sockets, files, the pidfds of
        // other instances) is closed by exec.
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) < 0
        {
            fail(args, 7);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &args.mask, std::ptr::null_mut());
        libc::execve(args.program, args.argv, args.envp);
        fail(args, 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn spawn_in(program: &str, cwd: &str, setup: ChildSetup) -> io::Result<Spawned> {
        let null = devnull();
        spawn(&Command {
            program: Path::new(program),
            args: &["-c".into(), "exit 7".into()],
            env: &[("PATH".into(), "/usr/bin:/bin".into())],
            cwd: Path::new(cwd),
            stdin: &null,
            stdout: &null,
            stderr: &null,
            setup: &setup,
        })
    }

    #[tokio::test]
    async fn a_child_runs_and_its_exit_code_is_reaped() {
        let child = spawn_in("/bin/sh", "/", ChildSetup::default()).unwrap();
        child.pidfd.exited().await.unwrap();
        assert_eq!(child.pidfd.try_reap().unwrap(), Some(super::super::ExitStatus::Code(7)));
    }

    #[tokio::test]
    async fn failures_before_exec_name_the_step() {
        let error = spawn_in("/bin/sh", "/no/such/dir", ChildSetup::default())
            .err()
            .unwrap();
        assert!(error.to_string().starts_with("chdir: "), "{error}");
        let error = spawn_in("/no/such/binary", "/", ChildSetup::default()).err().unwrap();
        assert!(error.to_string().starts_with("execve: "), "{error}");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        let error = spawn_in(
            "/bin/sh",
            "/",
            ChildSetup {
                oom_score_adj: Some(5000),
                ..ChildSetup::default()
            },
        )
        .err()
        .unwrap();
        assert!(
            error.to_string().starts_with("write /proc/self/oom_score_adj: "),
            "{error}"
        );
    }
}

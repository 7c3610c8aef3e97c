//! Mounts made by tests (root only): a tmpfs of a given size, a directory
//! bind-mounted read-only on itself. Each is undone when its guard is dropped.

use super::kill_processes_mentioning;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mount the test made; on drop, the processes inside are killed and it is
/// unmounted (lazily, should one be slow to go).
pub struct Mount(PathBuf);

impl Mount {
    pub fn tmpfs(at: &Path, size: &str) -> Mount {
        assert_eq!(
            unsafe_free_euid(),
            0,
            "these tests mount file systems: run them as root"
        );
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &at.to_string_lossy(),
            ],
        );
        Mount(at.to_path_buf())
    }

    /// `at` bind-mounted on itself read-only.
    pub fn read_only(at: &Path) -> Mount {
        let p = at.to_string_lossy();
        run("mount", &["--bind", &p, &p]);
        run("mount", &["-o", "remount,bind,ro", &p]);
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Servers still inside (a failed test) would lose their path to the harness,
        // which finds what to kill by working directory: they go first.
        kill_processes_mentioning(&self.0);
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The effective user id, from /proc (no unsafe code in tests).
fn unsafe_free_euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap()
}

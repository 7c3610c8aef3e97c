//! Finds a Pika binary for the tests that need a real Pika: `PIKA_BIN`, else `pika` on
//! `PATH`. When one is found it sets `cfg(pika)` and `PIKA_BIN` for the tests;
//! without one they are reported as ignored, by name.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pika)");
    println!("cargo::rerun-if-env-changed=PIKA_BIN");
    println!("cargo::rerun-if-env-changed=PATH");
    match find_pika() {
        Some(bin) => {
            println!("cargo::rerun-if-changed={}", bin.display());
            println!("cargo::rustc-cfg=pika");
            println!("cargo::rustc-env=KER_AGENT_TEST_PIKA_BIN={}", bin.display());
        }
        None => {
            // Look again when a `pika` appears in one of these directories.
            for dir in path_dirs().filter(|dir| dir.is_dir()) {
                println!("cargo::rerun-if-changed={}", dir.display());
            }
        }
    }
}

fn find_pika() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("PIKA_BIN").filter(|bin| !bin.is_empty()) {
        // A PIKA_BIN that names nothing is a mistake the tests report.
        return Some(PathBuf::from(bin));
    }
    path_dirs().map(|dir| dir.join("pika")).find(|bin| is_executable(bin))
}

fn path_dirs() -> impl Iterator<Item = PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).collect::<Vec<_>>().into_iter()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

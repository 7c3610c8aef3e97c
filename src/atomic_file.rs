//! Atomic replacement of state and config files (invariant 5): write a temporary file
//! in the same directory, rename it over the target. A crash or a full disk at any
//! moment leaves the old file or the new one, never a mix of both.
//!
//! Whether the new file must also survive a power loss is the caller's choice
//! ([`Durability`]): fsyncs cost milliseconds each, and a hundred instances start at
//! once.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A failed atomic write, naming the file and the step that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {step}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    pub step: &'static str,
    #[source]
    pub source: io::Error,
}

/// How long a written file must last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Across power loss and kernel crashes: the file and the directory entry are
    /// fsynced. For state that outlives a reboot (`desired.json`).
    Durable,
    /// Across crashes of the agent only (the page cache keeps it). For files that are
    /// worthless after a reboot anyway: instance records (their boot id no longer
    /// matches) and rendered configs (rendered again before every start).
    UntilReboot,
}

/// Replaces `path` with `contents`, atomically, with permission bits `mode`.
pub fn write(path: &Path, contents: &[u8], mode: u32, durability: Durability) -> Result<(), WriteError> {
    let fail = |step: &'static str| {
        let path = path.to_path_buf();
        move |source| WriteError { path, step, source }
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))
        .map_err(fail("check path"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp.{}.{:08x}", std::process::id(), fastrand::u32(..)));
    let temp = dir.join(temp_name);

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(fail("create temporary file"))?;
        file.write_all(contents).map_err(fail("write"))?;
        if durability == Durability::Durable {
            file.sync_all().map_err(fail("fsync"))?;
        }
        drop(file);
        fs::rename(&temp, path).map_err(fail("rename"))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
        return result;
    }
    if durability == Durability::UntilReboot {
        return Ok(());
    }
    // The rename is durable only once the directory entry is on disk.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("fsync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"one", 0o600, Durability::Durable).unwrap();
        write(&path, b"two", 0o600, Durability::UntilReboot).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failure_names_the_path_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("x.json");
        let error = write(&path, b"x", 0o600, Durability::Durable).unwrap_err();
        assert!(error.to_string().contains("missing-dir/x.json"), "{error}");

        // A target that is a directory cannot be replaced: the old one stays.
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"keep").unwrap();
        assert!(write(&target, b"new", 0o600, Durability::UntilReboot).is_err());
        assert_eq!(fs::read(target.join("keep")).unwrap(), b"keep");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "temp file left");
    }
}

//! Files that hold secrets: the API and controller tokens, the controller's client
//! key, instances' password files. One rule for all of them: no other user may read
//! one, and no one but its owner may change it. Whoever reads the API token can replace
//! every instance on the node; whoever can write it can lock its operators out.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a secret file was not read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read {what} {}: {source}", .path.display())]
    Read {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {} is {why} (mode {mode:o}); make it 0600 or 0640 ({fix})", .path.display())]
    Exposed {
        what: String,
        path: PathBuf,
        mode: u32,
        why: &'static str,
        fix: &'static str,
    },
    #[error("{what} {} is empty", .path.display())]
    Empty { what: String, path: PathBuf },
}

/// Reads the secret file `path`, named `what` in messages (e.g. `[controller]
/// token_file`), refusing it when other users may read or use it or its group may
/// change it; leading and trailing whitespace is the caller's to trim.
pub fn read(path: &Path, what: &str) -> Result<String, SecretFileError> {
    let read_error = |source| SecretFileError::Read {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(read_error)?.permissions().mode() & 0o7777;
    if let Some((why, fix)) = exposure(mode) {
        return Err(SecretFileError::Exposed {
            what: what.to_string(),
            path: path.to_path_buf(),
            mode: mode & 0o777,
            why,
            fix,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    if text.trim().is_empty() {
        return Err(SecretFileError::Empty {
            what: what.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// What is wrong with a secret file's mode, and the fix; `None` when nothing is.
fn exposure(mode: u32) -> Option<(&'static str, &'static str)> {
    if mode & 0o007 != 0 {
        Some(("accessible to other users", "chmod o-rwx"))
    } else if mode & 0o020 != 0 {
        Some(("writable by its group", "chmod g-w"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_writes_and_only_owner_and_group_read() {
        for mode in [0o600, 0o640, 0o400, 0o440, 0o700] {
            assert_eq!(exposure(mode), None, "{mode:o}");
        }
        for mode in [0o604, 0o602, 0o601, 0o644, 0o666] {
            assert_eq!(
                exposure(mode).map(|e| e.0),
                Some("accessible to other users"),
                "{mode:o}"
            );
        }
        for mode in [0o660, 0o620, 0o670] {
            assert_eq!(exposure(mode).map(|e| e.0), Some("writable by its group"), "{mode:o}");
        }
    }

    #[test]
    fn errors_name_the_file_what_it_is_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "secret-value\n").unwrap();
        let chmod = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        chmod(0o640);
        assert_eq!(read(&path, "[api] token_file").unwrap(), "secret-value\n");
        chmod(0o660);
        let error = read(&path, "[api] token_file").unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "[api] token_file {} is writable by its group (mode 660); make it 0600 or 0640 (chmod g-w)",
                path.display()
            )
        );
        chmod(0o644);
        let error = read(&path, "[api] token_file").unwrap_err().to_string();
        assert!(error.contains("is accessible to other users (mode 644)"), "{error}");
        chmod(0o600);
        std::fs::write(&path, " \n").unwrap();
        assert!(read(&path, "x").unwrap_err().to_string().ends_with("is empty"));
        let missing = read(&dir.path().join("missing"), "x").unwrap_err().to_string();
        assert!(
            missing.starts_with("cannot read x ") && missing.contains("missing"),
            "{missing}"
        );
    }
}

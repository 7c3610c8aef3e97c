//! A directory backup (Pika's dump) as one stream, to serve it to another host and to
//! unpack it there: a tar (ustar) of its files, in the order of its manifest. The
//! archive carries no checksum of its own: the receiving side hashes every file it
//! unpacks and compares the manifest of what it got with the SHA-256 it was asked
//! for, so any change on the way, and anything missing or added, is refused.
//!
//! Unpacking takes regular files and directories only, at relative paths that stay
//! inside the target: an archive from elsewhere can neither link nor write out of it.

use super::copy;
use super::store::FileSum;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::AtomicU64;

/// A failed step of writing or unpacking an archive, naming the path or the entry.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Copy(#[from] copy::CopyError),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is {found} bytes, and the backup's manifest says {expected}: the backup changed on disk")]
    Changed { path: PathBuf, found: u64, expected: u64 },
    #[error("the archive's entry {entry:?} is refused: {why}")]
    Refused { entry: String, why: &'static str },
    #[error("cannot read the archive: {0}")]
    Read(#[source] io::Error),
}

/// Writes the files of the backup in `dir` (its manifest's `files`) to `out` as a tar
/// stream, with fixed owner, mode and time, so that one backup is always the same
/// bytes.
pub fn write(dir: &Path, files: &[FileSum], out: impl Write) -> Result<(), ArchiveError> {
    let mut builder = tar::Builder::new(out);
    let mut sorted: Vec<&FileSum> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let sink = |source| ArchiveError::Io {
        what: "send",
        path: dir.to_path_buf(),
        source,
    };
    for file in sorted {
        let path = dir.join(&file.path);
        let input = std::fs::File::open(&path).map_err(|source| ArchiveError::Io {
            what: "open",
            path: path.clone(),
            source,
        })?;
        let found = input
            .metadata()
            .map_err(|source| ArchiveError::Io {
                what: "stat",
                path: path.clone(),
                source,
            })?
            .len();
        if found != file.bytes {
            return Err(ArchiveError::Changed {
                path,
                found,
                expected: file.bytes,
            });
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(file.bytes);
        header.set_mode(0o640);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        // Reads exactly the size in the header, whatever happens to the file.
        builder
            .append_data(&mut header, &file.path, input.take(file.bytes))
            .map_err(sink)?;
    }
    builder.into_inner().and_then(|mut out| out.flush()).map_err(sink)
}

/// Unpacks the tar stream `input` into the new directory `into` (which must not
/// exist), hashing every file; returns what it holds. `progress` counts the bytes.
pub fn unpack(input: impl Read, into: &Path, progress: &AtomicU64) -> Result<Vec<FileSum>, ArchiveError> {
    create_dir(into)?;
    let mut archive = tar::Archive::new(input);
    let mut files = Vec::new();
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |why| ArchiveError::Refused {
            entry: raw.clone(),
            why,
        };
        let relative = inside(&raw).ok_or_else(|| refuse("not a relative path inside the backup"))?;
        let path = into.join(&relative);
        match entry.header().entry_type() {
            tar::EntryType::Directory => create_dirs(into, &relative)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = relative.parent() {
                    create_dirs(into, parent)?;
                }
                let (bytes, sha256) = copy::write_new(&mut entry, Path::new(&raw), &path, progress)?;
                files.push(FileSum {
                    path: relative.to_string_lossy().into_owned(),
                    bytes,
                    sha256,
                });
            }
            _ => return Err(refuse("neither a file nor a directory")),
        }
    }
    Ok(files)
}

/// `raw` as a path of normal components only (no root, `.`, `..` or empty name).
fn inside(raw: &str) -> Option<PathBuf> {
    let trimmed = raw.trim_end_matches('/');
    let path = Path::new(trimmed);
    let normal = !trimmed.is_empty()
        && !trimmed.contains('\0')
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && !trimmed.split('/').any(|part| part.is_empty() || part == ".");
    normal.then(|| path.to_path_buf())
}

fn create_dir(path: &Path) -> Result<(), ArchiveError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o750)
        .create(path)
        .map_err(|source| ArchiveError::Io {
            what: "create",
            path: path.to_path_buf(),
            source,
        })
}

/// Creates `relative` and its parents under `root`, each a real directory: one that
/// exists must not be anything else (an earlier entry cannot have made it a link,
/// since only files and directories are taken, but the check costs nothing).
fn create_dirs(root: &Path, relative: &Path) -> Result<(), ArchiveError> {
    let mut path = root.to_path_buf();
    for part in relative.components() {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ArchiveError::Refused {
                    entry: relative.display().to_string(),
                    why: "a directory where the archive has a file",
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir(&path)?,
            Err(source) => {
                return Err(ArchiveError::Io {
                    what: "stat",
                    path,
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::store::manifest_sha256;
    use super::*;

    fn dump(dir: &Path) -> Vec<FileSum> {
        let source = dir.join("dump");
        std::fs::create_dir_all(source.join("db0/0")).unwrap();
        std::fs::write(source.join("db0/info"), b"0s\n192.0.2.2\n").unwrap();
        std::fs::write(source.join("db0/0/CURRENT"), b"MANIFEST-000005\n").unwrap();
        std::fs::write(source.join("db0/0/000021.sst"), vec![7u8; 3000]).unwrap();
        copy::tree(&source, &dir.join("backup"), copy::Placement::Copy, &AtomicU64::new(0)).unwrap()
    }

    #[test]
    fn a_written_archive_unpacks_to_the_same_manifest_and_is_always_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let files = dump(dir.path());
        let mut first = Vec::new();
        write(&dir.path().join("backup"), &files, &mut first).unwrap();
        let mut again = Vec::new();
        write(&dir.path().join("backup"), &files, &mut again).unwrap();
        assert_eq!(first, again);
        let progress = AtomicU64::new(0);
        let got = unpack(&first[..], &dir.path().join("out"), &progress).unwrap();
        assert_eq!(manifest_sha256(&got), manifest_sha256(&files));
        assert_eq!(progress.into_inner(), 3000 + 16 + 13);
        assert_eq!(
            std::fs::read(dir.path().join("out/db0/info")).unwrap(),
            b"0s\n192.0.2.2\n"
        );
        // The target must be new.
        assert!(unpack(&first[..], &dir.path().join("out"), &AtomicU64::new(0)).is_err());
    }

    #[test]
    fn a_file_that_changed_size_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let files = dump(dir.path());
        std::fs::write(dir.path().join("backup/db0/info"), b"0s\n").unwrap();
        let error = write(&dir.path().join("backup"), &files, io::sink()).unwrap_err();
        assert!(error.to_string().contains("db0/info is 3 bytes"), "{error}");
    }

    #[test]
    fn a_truncated_archive_fails() {
        let dir = tempfile::tempdir().unwrap();
        let files = dump(dir.path());
        let mut bytes = Vec::new();
        write(&dir.path().join("backup"), &files, &mut bytes).unwrap();
        let cut = &bytes[..bytes.len() / 2];
        let result = unpack(cut, &dir.path().join("out"), &AtomicU64::new(0));
        // Either the stream fails, or what it holds is not the backup.
        if let Ok(got) = result {
            assert_ne!(manifest_sha256(&got), manifest_sha256(&files));
        }
    }

    fn archive_with(path: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.set_size(if kind == tar::EntryType::Regular { 2 } else { 0 });
        header.set_entry_type(kind);
        header.set_mode(0o644);
        if let Some(target) = link {
            header.set_link_name(target).unwrap();
        }
        // Written by hand: the builder itself refuses some of these paths.
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        if kind == tar::EntryType::Regular {
            let mut block = vec![0u8; 512];
            block[..2].copy_from_slice(b"hi");
            bytes.extend(block);
        }
        bytes.extend(vec![0u8; 1024]);
        bytes
    }

    #[test]
    fn entries_that_would_leave_the_target_or_link_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("../escape", tar::EntryType::Regular, None),
            ("/etc/escape", tar::EntryType::Regular, None),
            ("db0/../../escape", tar::EntryType::Regular, None),
            ("db0/link", tar::EntryType::Symlink, Some("/etc/passwd")),
            ("db0/hard", tar::EntryType::Link, Some("/etc/passwd")),
            ("db0/fifo", tar::EntryType::Fifo, None),
        ];
        for (i, (path, kind, link)) in cases.into_iter().enumerate() {
            let into = dir.path().join(format!("out{i}"));
            let error = unpack(&archive_with(path, kind, link)[..], &into, &AtomicU64::new(0)).unwrap_err();
            assert!(error.to_string().contains("is refused"), "{path}: {error}");
        }
        assert!(!dir.path().join("escape").exists());
        let fine = unpack(
            &archive_with("db0/ok", tar::EntryType::Regular, None)[..],
            &dir.path().join("fine"),
            &AtomicU64::new(0),
        )
        .unwrap();
        assert_eq!(fine[0].path, "db0/ok");
        assert_eq!(std::fs::read(dir.path().join("fine/db0/ok")).unwrap(), b"hi");
    }

    #[test]
    fn only_normal_relative_paths_are_inside() {
        assert_eq!(inside("db0/0/CURRENT"), Some(PathBuf::from("db0/0/CURRENT")));
        assert_eq!(inside("db0/"), Some(PathBuf::from("db0")));
        for bad in ["", "/", "/a", "../a", "a/../b", "./a", "a//b", "a/./b", ".."] {
            assert_eq!(inside(bad), None, "{bad:?}");
        }
    }
}

//! A directory backup (Pika's dump) as one stream, to serve it to another host and to
//! unpack it there: a tar of its files, in the order of its manifest. The archive
//! carries no checksum of its own: the receiving side hashes every file it unpacks and
//! compares the manifest of what it got with the SHA-256 it was asked for, so any
//! change on the way, and any file missing or added, is refused. (Directories are not
//! in the manifest: an empty one is neither sent nor checked.)
//!
//! Unpacking takes plain entries only — regular files and directories, at relative
//! paths of at most 100 bytes without control characters, that stay inside the target
//! — so an archive from elsewhere can neither link nor write out of it, nor make the
//! agent read a long-name or extended header of any size into memory. A name with a
//! line break could forge lines of the manifest; none is taken or sent.

use super::copy;
use super::store::FileSum;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The longest path an entry may have: a plain tar header's name field.
const MAX_PATH: usize = 100;

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
/// bytes. After a failure nothing more is written — not even the end-of-archive
/// marker — so a reader sees a broken archive, never a shorter one.
pub fn write(dir: &Path, files: &[FileSum], out: impl Write) -> Result<(), ArchiveError> {
    let blown = Arc::new(AtomicBool::new(false));
    let mut builder = tar::Builder::new(Fused {
        inner: out,
        blown: blown.clone(),
    });
    let sink = |source| ArchiveError::Io {
        what: "send",
        path: dir.to_path_buf(),
        source,
    };
    let result = append_all(&mut builder, dir, files).and_then(|()| {
        builder.finish().map_err(sink)?;
        builder.get_mut().flush().map_err(sink)
    });
    if result.is_err() {
        // The builder, dropped next, would finish the archive.
        blown.store(true, Ordering::Relaxed);
    }
    result
}

fn append_all<W: Write>(builder: &mut tar::Builder<W>, dir: &Path, files: &[FileSum]) -> Result<(), ArchiveError> {
    let mut sorted: Vec<&FileSum> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let sink = |source| ArchiveError::Io {
        what: "send",
        path: dir.to_path_buf(),
        source,
    };
    for file in sorted {
        if inside(&file.path).is_none() {
            return Err(ArchiveError::Refused {
                entry: file.path.clone(),
                why: "not a plain relative path of at most 100 bytes",
            });
        }
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
        let exact = Exact {
            inner: input.take(file.bytes),
            left: file.bytes,
        };
        builder.append_data(&mut header, &file.path, exact).map_err(sink)?;
    }
    Ok(())
}

/// A writer that refuses every write once `blown` is set.
struct Fused<W> {
    inner: W,
    blown: Arc<AtomicBool>,
}

impl<W: Write> Write for Fused<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.blown.load(Ordering::Relaxed) {
            return Err(io::Error::other("the archive was abandoned"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.blown.load(Ordering::Relaxed) {
            return Err(io::Error::other("the archive was abandoned"));
        }
        self.inner.flush()
    }
}

/// A reader of exactly `left` bytes: a file that ends early (it shrank after its
/// size was read) is an error, not a shorter entry that would shift the archive.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended {} bytes short of its size", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Unpacks the tar stream `input` into the new directory `into` (which must not
/// exist), hashing every file; returns what it holds. `progress` counts the bytes.
pub fn unpack(input: impl Read, into: &Path, progress: &AtomicU64) -> Result<Vec<FileSum>, ArchiveError> {
    create_dir(into)?;
    let mut archive = tar::Archive::new(input);
    let mut files = Vec::new();
    // Raw: long names and extended headers come as entries of their own (refused
    // below) instead of being read whole, whatever size their header claims.
    for entry in archive.entries().map_err(ArchiveError::Read)?.raw(true) {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |why| ArchiveError::Refused {
            entry: raw.clone(),
            why,
        };
        let relative = inside(&raw).ok_or_else(|| refuse("not a plain relative path of at most 100 bytes"))?;
        let path = into.join(&relative);
        match entry.header().entry_type() {
            tar::EntryType::Directory => create_dirs(into, &relative)?,
            tar::EntryType::Regular => {
                if let Some(parent) = relative.parent() {
                    create_dirs(into, parent)?;
                }
                let size = entry.size();
                let (bytes, sha256) = copy::write_new(&mut entry, Path::new(&raw), &path, progress)?;
                if bytes != size {
                    return Err(refuse("the archive ends inside it"));
                }
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

/// `raw` as a path of normal components only (no root, `.`, `..` or empty name), at
/// most 100 bytes, without control characters.
fn inside(raw: &str) -> Option<PathBuf> {
    let trimmed = raw.trim_end_matches('/');
    let path = Path::new(trimmed);
    let normal = !trimmed.is_empty()
        && trimmed.len() <= MAX_PATH
        && !trimmed.chars().any(char::is_control)
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
    fn a_failed_send_never_ends_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = dump(dir.path());
        files.sort_by(|a, b| a.path.cmp(&b.path));
        // The last file is gone: what was sent before it must not read as a whole
        // archive of fewer files.
        std::fs::remove_file(dir.path().join("backup").join(&files[2].path)).unwrap();
        let mut bytes = Vec::new();
        assert!(write(&dir.path().join("backup"), &files, &mut bytes).is_err());
        // No end-of-archive marker (two zero blocks) after the last whole entry.
        assert!(
            !bytes.is_empty() && !bytes.ends_with(&[0u8; 1024]),
            "{} bytes",
            bytes.len()
        );
    }

    #[test]
    fn a_file_that_ends_early_is_an_error() {
        let mut exact = Exact {
            inner: &b"abc"[..],
            left: 5,
        };
        let mut out = Vec::new();
        let error = exact.read_to_end(&mut out).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_truncated_archive_fails() {
        let dir = tempfile::tempdir().unwrap();
        let files = dump(dir.path());
        let mut bytes = Vec::new();
        write(&dir.path().join("backup"), &files, &mut bytes).unwrap();
        let cut = &bytes[..bytes.len() / 2];
        let result = unpack(cut, &dir.path().join("out"), &AtomicU64::new(0));
        // The cut is inside the 3,000-byte table: the stream fails (a short file must
        // never pass as a whole one, whatever the manifest check would say later).
        let error = result
            .map(|got| manifest_sha256(&got) == manifest_sha256(&files))
            .unwrap_err();
        assert!(error.to_string().contains("the archive ends inside it"), "{error}");
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
            ("db0/x\n0000  1  db0/y", tar::EntryType::Regular, None),
            ("././@LongLink", tar::EntryType::GNULongName, None),
            ("pax", tar::EntryType::XHeader, None),
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
        let long = "d/".repeat(50) + "x";
        for bad in [
            "", "/", "/a", "../a", "a/../b", "./a", "a//b", "a/./b", "..", "a\nb", "a\rb", "a\0b", &long,
        ] {
            assert_eq!(inside(bad), None, "{bad:?}");
        }
    }
}

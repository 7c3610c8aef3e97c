//! Copying a snapshot out of a data directory, hashing it on the way (blocking file
//! work, run on the blocking pool). A file on the same filesystem is hard-linked:
//! the server never writes into a snapshot it has finished (Redis renames a new RDB
//! over the old one; Pika replaces a whole dump directory, whose files are RocksDB's
//! immutable tables or fresh copies), so the link keeps exactly the snapshot that was
//! taken, and costs no space or copying. Otherwise the bytes are copied. A restore
//! always copies: the server appends to some of the files it loads.

use super::store::FileSum;
use crate::digest::hex;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const CHUNK: usize = 1 << 20;

/// A failed copy, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}: {source}")]
pub struct CopyError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn fail<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> CopyError + 'p {
    move |source| CopyError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Places `source` (a file) at `to`, linked or copied, and returns its size and
/// SHA-256. `progress` counts the bytes read.
pub fn file(source: &Path, to: &Path, progress: &AtomicU64) -> Result<(u64, String), CopyError> {
    match link(source, to) {
        Some(_) => hash_file(to, progress),
        None => copy_file(source, to, progress),
    }
}

/// Hard-links `source` at `to`; returns its size, or `None` when it cannot be linked
/// (another filesystem, or one without links), and it must be copied instead.
pub fn link(source: &Path, to: &Path) -> Option<u64> {
    std::fs::hard_link(source, to).ok()?;
    match std::fs::metadata(to) {
        Ok(m) => Some(m.len()),
        Err(_) => {
            let _ = std::fs::remove_file(to);
            None
        }
    }
}

/// The size and SHA-256 of a file.
pub fn hash_file(path: &Path, progress: &AtomicU64) -> Result<(u64, String), CopyError> {
    let mut input = File::open(path).map_err(fail("open", path))?;
    pump(&mut input, path, None, progress)
}

/// Copies a file to `to` (created, mode 0640), hashing it on the way, and syncs it.
pub fn copy_file(source: &Path, to: &Path, progress: &AtomicU64) -> Result<(u64, String), CopyError> {
    let mut input = File::open(source).map_err(fail("open", source))?;
    write_new(&mut input, source, to, progress)
}

/// Writes what `input` (read from `from`, named in errors) holds to the new file `to`
/// (mode 0640), hashing it on the way, and syncs it; returns its size and SHA-256.
pub fn write_new(
    input: &mut impl Read,
    from: &Path,
    to: &Path,
    progress: &AtomicU64,
) -> Result<(u64, String), CopyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(to)
        .map_err(fail("create", to))?;
    let done = pump(input, from, Some((&mut output, to)), progress)?;
    output.sync_all().map_err(fail("sync", to))?;
    Ok(done)
}

/// Reads `input` (at `path`) to its end, hashing it and writing it to `output` if
/// given; returns its size and SHA-256. `progress` counts the bytes read.
fn pump(
    input: &mut impl Read,
    path: &Path,
    mut output: Option<(&mut File, &Path)>,
    progress: &AtomicU64,
) -> Result<(u64, String), CopyError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; CHUNK];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buffer).map_err(fail("read", path))?;
        if n == 0 {
            return Ok((total, hex(&hasher.finalize())));
        }
        hasher.update(&buffer[..n]);
        if let Some((file, to)) = output.as_mut() {
            file.write_all(&buffer[..n]).map_err(fail("write", to))?;
        }
        total += n as u64;
        progress.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// How the files of a tree are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Hard-linked where the filesystem allows, else copied (out of a snapshot).
    LinkOrCopy,
    /// Always copied (into a data directory).
    Copy,
}

/// Places the directory tree `source` at `to` (regular files and directories only: a
/// snapshot has nothing else, and a link could lead out of it), with every file's
/// size and SHA-256.
pub fn tree(source: &Path, to: &Path, placement: Placement, progress: &AtomicU64) -> Result<Vec<FileSum>, CopyError> {
    let mut sums = Vec::new();
    copy_tree(source, to, "", placement, progress, &mut sums)?;
    Ok(sums)
}

fn copy_tree(
    source: &Path,
    to: &Path,
    prefix: &str,
    placement: Placement,
    progress: &AtomicU64,
    sums: &mut Vec<FileSum>,
) -> Result<(), CopyError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o750)
        .create(to)
        .map_err(fail("create", to))?;
    for entry in std::fs::read_dir(source).map_err(fail("read", source))? {
        let entry = entry.map_err(fail("read", source))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(fail("stat", &path))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(fail("copy", &path)(io::Error::other("the name is not UTF-8")));
        };
        let relative = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if kind.is_dir() {
            copy_tree(&path, &to.join(&name), &relative, placement, progress, sums)?;
        } else if kind.is_file() {
            let (bytes, sha256) = match placement {
                Placement::LinkOrCopy => file(&path, &to.join(&name), progress)?,
                Placement::Copy => copy_file(&path, &to.join(&name), progress)?,
            };
            sums.push(FileSum {
                path: relative,
                bytes,
                sha256,
            });
        } else {
            return Err(fail("copy", &path)(io::Error::other("neither a file nor a directory")));
        }
    }
    File::open(to).and_then(|d| d.sync_all()).map_err(fail("sync", to))?;
    Ok(())
}

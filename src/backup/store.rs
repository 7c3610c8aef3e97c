//! The files of `backup_dir/<name>/`: each backup is its data (`<id>.rdb`, or a
//! directory `<id>.dump/`) and, written last, its description `<id>.json`. A backup
//! without its description is not one: a crash in between leaves data that the next
//! clean-up removes. Data is built under a `.partial-` name and renamed into place
//! only when complete; the description is written atomically.
//!
//! Architecture invariant: nothing here deletes the newest backup.

use crate::atomic_file::{self, Durability};
use crate::engine::{BackupShape, EngineKind};
use crate::status::BackupInfo;
use std::io;
use std::path::{Path, PathBuf};

/// Prefix of data being written.
const PARTIAL: &str = ".partial-";

/// One backup's description, `<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    #[serde(flatten)]
    pub info: BackupInfo,
    pub engine: EngineKind,
    /// The server's version that wrote it (`redis_version`, `pika_version`).
    pub server_version: String,
    /// The `backup_epoch` it answered (0 for a scheduled one).
    pub epoch: u64,
    /// The data's name beside this file.
    pub data: String,
    /// A directory backup's files, each with its size and SHA-256; `info.sha256` is
    /// the SHA-256 of [`manifest_text`] of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSum>,
}

/// One file of a directory backup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileSum {
    /// Relative to the backup's directory, `/`-separated.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The text a directory backup's checksum is taken over: one line per file,
/// `<sha256>  <bytes>  <path>`, sorted by path.
pub fn manifest_text(files: &[FileSum]) -> String {
    let mut sorted: Vec<&FileSum> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    sorted
        .iter()
        .map(|f| format!("{}  {}  {}\n", f.sha256, f.bytes, f.path))
        .collect()
}

/// A directory backup's checksum: the SHA-256 of [`manifest_text`].
pub fn manifest_sha256(files: &[FileSum]) -> String {
    crate::digest::sha256_hex(manifest_text(files).as_bytes())
}

/// A failed step on a backup directory, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Write(#[from] atomic_file::WriteError),
}

fn io_error<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StoreError + 'p {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One instance's backup directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name of a backup's data for an engine of `shape`.
    pub fn data_name(id: &str, shape: BackupShape) -> String {
        match shape {
            BackupShape::File { extension } => format!("{id}.{extension}"),
            BackupShape::Directory => format!("{id}.dump"),
        }
    }

    /// Where a backup's data is built before it is complete.
    pub fn partial_path(&self, id: &str, shape: BackupShape) -> PathBuf {
        self.dir.join(format!("{PARTIAL}{}", Store::data_name(id, shape)))
    }

    /// Creates the directory (mode 0750: backups hold every key of the instance).
    pub fn create(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&self.dir)
            .map_err(io_error("create", &self.dir))
    }

    /// Every complete backup, newest first.
    pub fn list(&self) -> Result<Vec<Metadata>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("read", &self.dir)(e)),
        };
        let mut kept = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("read", &self.dir))?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                kept.extend(self.get(id)?);
            }
        }
        kept.sort_by(|a, b| (b.info.at, &b.info.id).cmp(&(a.info.at, &a.info.id)));
        Ok(kept)
    }

    /// Backup `id`, when it is one: its description parses, is of that id, and names
    /// the data an engine's backup has beside it, which exists. (A description that is
    /// not one is left for an operator to look at rather than deleted.)
    pub fn get(&self, id: &str) -> Result<Option<Metadata>, StoreError> {
        if !crate::spec::valid_backup_id(id) {
            return Ok(None);
        }
        let path = self.dir.join(format!("{id}.json"));
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        let Ok(meta) = serde_json::from_slice::<Metadata>(&text) else {
            return Ok(None);
        };
        let data = crate::engine::for_kind(meta.engine).map(|e| Store::data_name(id, e.backup_shape()));
        let whole = meta.info.id == id && data.as_ref() == Some(&meta.data) && self.dir.join(&meta.data).exists();
        Ok(whole.then_some(meta))
    }

    /// The path of a backup's data.
    pub fn data_path(&self, meta: &Metadata) -> PathBuf {
        self.dir.join(&meta.data)
    }

    /// A new id for a snapshot taken at `at` (seconds since the Unix epoch): its UTC
    /// time, with a suffix when that is taken.
    pub fn new_id(&self, at: u64) -> String {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at);
        let base: String = humantime::format_rfc3339_seconds(time)
            .to_string()
            .chars()
            .filter(|c| *c != '-' && *c != ':')
            .collect();
        let taken = |id: &str| {
            std::fs::read_dir(&self.dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&format!("{id}."))))
                })
                .unwrap_or(false)
        };
        if !taken(&base) {
            return base;
        }
        (2..)
            .map(|n| format!("{base}-{n}"))
            .find(|id| !taken(id))
            .unwrap_or(base)
    }

    /// Makes a complete backup visible: the data built at `partial` is renamed into
    /// place, then the description is written. Both survive a power loss.
    pub fn commit(&self, partial: &Path, meta: &Metadata) -> Result<(), StoreError> {
        let data = self.dir.join(&meta.data);
        std::fs::rename(partial, &data).map_err(io_error("rename into place", partial))?;
        let text = serde_json::to_vec_pretty(meta).map_err(|e| StoreError::Io {
            what: "encode",
            path: self.dir.join(format!("{}.json", meta.info.id)),
            source: io::Error::other(e),
        })?;
        let json = self.dir.join(format!("{}.json", meta.info.id));
        atomic_file::write(&json, &text, 0o640, Durability::Durable)?;
        Ok(())
    }

    /// Deletes all but the newest `keep` backups (at least one is always kept); returns
    /// the ones kept and the ids deleted. The description goes first: a crash in
    /// between leaves data without one, which [`Store::clean`] removes.
    pub fn prune(&self, keep: u32) -> Result<(Vec<Metadata>, Vec<String>), StoreError> {
        let mut kept = self.list()?;
        let keep = usize::try_from(keep.max(1)).unwrap_or(usize::MAX);
        let mut deleted = Vec::new();
        for meta in kept.split_off(keep.min(kept.len())) {
            let json = self.dir.join(format!("{}.json", meta.info.id));
            std::fs::remove_file(&json).map_err(io_error("delete", &json))?;
            remove_any(&self.dir.join(&meta.data))?;
            deleted.push(meta.info.id);
        }
        Ok((kept, deleted))
    }

    /// Removes what an interrupted backup left: data being built, and data without a
    /// description. Returns what it removed.
    pub fn clean(&self) -> Result<Vec<String>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("read", &self.dir)(e)),
        };
        let described: Vec<String> = self.list()?.into_iter().map(|m| m.data).collect();
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let partial = name.starts_with(PARTIAL);
            let data = name.ends_with(".rdb") || name.ends_with(".dump");
            if partial || (data && !described.contains(&name)) {
                remove_any(&entry.path())?;
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

/// Removes a file or a directory tree.
pub fn remove_any(path: &Path) -> Result<(), StoreError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(io_error("delete", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RDB: BackupShape = BackupShape::File { extension: "rdb" };

    fn meta(store: &Store, at: u64) -> Metadata {
        let id = store.new_id(at);
        Metadata {
            info: BackupInfo {
                id: id.clone(),
                at,
                bytes: 3,
                sha256: "0".repeat(64),
                keys: Some(1),
                duration_ms: 5,
            },
            engine: EngineKind::Redis,
            server_version: "7.0.15".into(),
            epoch: 0,
            data: Store::data_name(&id, RDB),
            files: Vec::new(),
        }
    }

    fn add(store: &Store, at: u64) -> String {
        let m = meta(store, at);
        let partial = store.partial_path(&m.info.id, RDB);
        std::fs::write(&partial, "rdb").unwrap();
        store.commit(&partial, &m).unwrap();
        m.info.id
    }

    #[test]
    fn ids_are_utc_times_made_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        assert_eq!(store.new_id(1_795_617_225), "20261125T143345Z");
        let first = add(&store, 1_795_617_225);
        let second = add(&store, 1_795_617_225);
        assert_eq!(second, format!("{first}-2"));
        assert!(crate::spec::valid_backup_id(&second));
    }

    #[test]
    fn newest_first_and_pruning_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        let ids: Vec<String> = [100, 300, 200].iter().map(|at| add(&store, *at)).collect();
        let listed: Vec<String> = store.list().unwrap().into_iter().map(|m| m.info.id).collect();
        assert_eq!(listed, [ids[1].clone(), ids[2].clone(), ids[0].clone()]);
        assert_eq!(store.prune(2).unwrap().1, [ids[0].clone()]);
        let (kept, deleted) = store.prune(0).unwrap();
        assert_eq!(deleted, [ids[2].clone()]);
        assert_eq!(kept, store.list().unwrap());
        assert_eq!(kept.len(), 1);
        assert!(store.prune(0).unwrap().1.is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn interrupted_backups_are_not_listed_and_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        let good = add(&store, 100);
        std::fs::write(store.partial_path("x", RDB), "half").unwrap();
        std::fs::write(dir.path().join("20200101T000000Z.rdb"), "no description").unwrap();
        std::fs::write(dir.path().join("20200101T000001Z.json"), "{ not json").unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        let mut removed = store.clean().unwrap();
        removed.sort();
        assert_eq!(removed, [".partial-x.rdb", "20200101T000000Z.rdb"]);
        assert_eq!(store.get(&good).unwrap().unwrap().info.id, good);
        assert_eq!(store.get("../etc").unwrap(), None);
    }

    #[test]
    fn a_directory_backup_checksum_covers_every_file() {
        let a = FileSum {
            path: "db0/info".into(),
            bytes: 2,
            sha256: "ab".into(),
        };
        let b = FileSum {
            path: "db0/0/CURRENT".into(),
            bytes: 16,
            sha256: "cd".into(),
        };
        assert_eq!(
            manifest_text(&[a.clone(), b.clone()]),
            "cd  16  db0/0/CURRENT\nab  2  db0/info\n"
        );
        assert_eq!(
            manifest_text(&[a, b.clone()]),
            manifest_text(&[
                b.clone(),
                FileSum {
                    path: "db0/info".into(),
                    bytes: 2,
                    sha256: "ab".into()
                }
            ])
        );
    }
}

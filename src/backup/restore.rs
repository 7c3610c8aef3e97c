//! Placing a backup in an instance's data directory before its start. The backup is
//! first *staged* beside the data directory — copied from this host's backups, or
//! downloaded — and its SHA-256 checked against what was asked for (and an RDB checked
//! by `redis-check-rdb`); only then is anything in the data directory touched. Data
//! already there is never overwritten: an explicit restore (`restore_epoch`) moves it
//! aside first, and it is kept.
//!
//! `instance_dir/restore.json` keeps the last restore (or failed attempt), which the
//! worker writes, so that a raised `restore_epoch` is answered once, also across
//! agent restarts.

use super::archive;
use super::copy;
use super::store::{manifest_sha256, remove_any, Store};
use super::verify;
use crate::atomic_file::{self, Durability};
use crate::config::AgentConfig;
use crate::engine::{BackupShape, Engine};
use crate::process::unix_now;
use crate::spec::RestoreSource;
use crate::status::RestoreOutcome;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// The file that keeps the last restore.
pub const RESTORE_FILE: &str = "restore.json";
/// Where a backup is staged, in the instance directory.
const STAGED: &str = ".restore-staged";
/// Limit for connecting to the server that holds a backup, and for each read.
const FETCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FETCH_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The last restore of the instance in `instance_dir`, if any.
pub fn last(instance_dir: &Path) -> Option<RestoreOutcome> {
    let text = std::fs::read(instance_dir.join(RESTORE_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Keeps `outcome` as the last restore (blocking file work).
pub fn remember(instance_dir: &Path, outcome: &RestoreOutcome) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(outcome).map_err(|e| e.to_string())?;
    atomic_file::write(&instance_dir.join(RESTORE_FILE), &text, 0o600, Durability::Durable).map_err(|e| e.to_string())
}

/// What one restore needs.
pub struct Request<'a> {
    pub name: &'a str,
    pub engine: &'static dyn Engine,
    pub source: &'a RestoreSource,
    pub instance_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Where the backup goes: the file or directory the server loads at its start.
    pub target: PathBuf,
    pub epoch: u64,
    /// Data is there and the restore was asked for explicitly: it is moved aside.
    pub set_aside: bool,
}

/// Stages, checks and places the backup; returns what was done.
pub async fn restore(config: &AgentConfig, request: &Request<'_>) -> Result<RestoreOutcome, String> {
    let deadline = Instant::now() + config.backup.timeout;
    let staged = request.instance_dir.join(STAGED);
    let (dir, leftover) = (request.instance_dir.clone(), staged.clone());
    let prepared = crate::blocking::run("prepare the restore", move || -> Result<(), String> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // What an interrupted restore staged.
        remove_any(&leftover).map_err(|e| e.to_string())
    });
    prepared.await??;
    let result = stage_and_place(config, request, &staged, deadline).await;
    let leftover = staged.clone();
    let _ = crate::blocking::run("remove the staged backup", move || remove_any(&leftover)).await;
    result
}

async fn stage_and_place(
    config: &AgentConfig,
    request: &Request<'_>,
    staged: &Path,
    deadline: Instant,
) -> Result<RestoreOutcome, String> {
    let shape = request.engine.backup_shape();
    let (bytes, sha256) = match request.source {
        RestoreSource::Local { id } => stage_local(config, request.name, id, shape, staged, deadline).await?,
        RestoreSource::Remote { url, sha256 } => fetch(config, url, sha256, shape, staged, deadline).await?,
    };
    if let BackupShape::File { extension: "rdb" } = shape {
        verify::check_rdb(&config.backup.check_rdb, staged, verify::timeout_for(bytes)).await?;
    }
    let (staged, data_dir, target) = (staged.to_path_buf(), request.data_dir.clone(), request.target.clone());
    let aside = request
        .set_aside
        .then(|| request.instance_dir.join(format!("data.before-restore-{}", unix_now())));
    let aside_shown = aside.as_ref().map(|p| p.display().to_string());
    let placed = crate::blocking::run("place the backup", move || {
        place(&staged, &data_dir, &target, aside.as_deref())
    });
    placed.await??;
    let outcome = RestoreOutcome {
        at: unix_now(),
        source: request.source.to_string(),
        sha256,
        bytes,
        epoch: request.epoch,
        set_aside: aside_shown,
        error: None,
    };
    Ok(outcome)
}

/// Copies backup `id` of instance `name` on this host to `staged`, checking it still
/// has the checksum it was taken with.
async fn stage_local(
    config: &AgentConfig,
    name: &str,
    id: &str,
    shape: BackupShape,
    staged: &Path,
    deadline: Instant,
) -> Result<(u64, String), String> {
    let store = Store::new(config.backups_of(name));
    let (shown, id, staged) = (id.to_string(), id.to_string(), staged.to_path_buf());
    let work = tokio::task::spawn_blocking(move || -> Result<(u64, String), String> {
        let meta = store.get(&id).map_err(|e| e.to_string())?.ok_or_else(|| {
            format!(
                "there is no backup {id:?} of this instance in {} (restore_from names a backup id on this host)",
                store.dir().display()
            )
        })?;
        let progress = AtomicU64::new(0);
        let source = store.data_path(&meta);
        let (bytes, sha256) = match shape {
            BackupShape::File { .. } => copy::copy_file(&source, &staged, &progress).map_err(|e| e.to_string())?,
            BackupShape::Directory => {
                let files =
                    copy::tree(&source, &staged, copy::Placement::Copy, &progress).map_err(|e| e.to_string())?;
                (files.iter().map(|f| f.bytes).sum(), manifest_sha256(&files))
            }
        };
        if sha256 != meta.info.sha256 {
            return Err(format!(
                "backup {id} in {} no longer has the SHA-256 it was taken with ({sha256}, was {}): it was changed or damaged on disk",
                store.dir().display(),
                meta.info.sha256
            ));
        }
        Ok((bytes, sha256))
    });
    match tokio::time::timeout_at(deadline.into(), work).await {
        Ok(copied) => copied.map_err(|e| format!("cannot copy the backup: {e}"))?,
        Err(_) => Err(format!(
            "the copy of backup {shown} did not complete within {}s ([backup] timeout)",
            config.backup.timeout.as_secs()
        )),
    }
}

/// Downloads `url` to `staged`, hashing on the way: a file backup as it comes, a
/// directory backup from its tar stream (see [`archive`]). Refuses anything but
/// exactly the backup with `sha256`.
async fn fetch(
    config: &AgentConfig,
    url: &reqwest::Url,
    sha256: &str,
    shape: BackupShape,
    staged: &Path,
    deadline: Instant,
) -> Result<(u64, String), String> {
    let shown = RestoreSource::Remote {
        url: url.clone(),
        sha256: sha256.to_string(),
    }
    .to_string();
    let response = open(config, url, sha256, &shown).await?;
    // What the source says the backup holds: more is refused, and it must fit.
    let announced = response
        .headers()
        .get(crate::api::BYTES_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .or(response.content_length());
    if let Some(bytes) = announced {
        check_room(staged, bytes, &shown).await?;
    }
    let (bytes, got) = match shape {
        BackupShape::File { .. } => download_file(config, response, &shown, staged, announced, deadline).await?,
        BackupShape::Directory => download_tree(config, response, &shown, staged, announced, deadline).await?,
    };
    if got != sha256 {
        return Err(format!(
            "the {bytes} bytes from {shown} have SHA-256 {got}, and restore_from asks for {sha256}: refused"
        ));
    }
    Ok((bytes, got))
}

/// Refuses a download of `bytes` that would not fit beside the instance's data.
async fn check_room(staged: &Path, bytes: u64, shown: &str) -> Result<(), String> {
    let dir = staged.parent().unwrap_or(Path::new("/")).to_path_buf();
    let shown_dir = dir.display().to_string();
    let free = crate::blocking::run("look at the free space", move || crate::sys::statvfs(&dir))
        .await?
        .map_err(|e| format!("cannot statvfs {shown_dir}: {e}"))?
        .available_bytes;
    if free < bytes {
        return Err(format!(
            "{shown} holds {}, and only {} is free on the filesystem of {shown_dir}",
            crate::units::format_bytes(bytes),
            crate::units::format_bytes(free)
        ));
    }
    Ok(())
}

/// More bytes than the source announced: refused as soon as they arrive.
fn too_many(shown: &str, announced: u64) -> String {
    format!("{shown} sends more than the {announced} bytes it announced: refused")
}

/// Sends the request (with the fetch token) and checks the answer's status and the
/// checksum it announces.
async fn open(
    config: &AgentConfig,
    url: &reqwest::Url,
    sha256: &str,
    shown: &str,
) -> Result<reqwest::Response, String> {
    let builder = reqwest::Client::builder()
        .connect_timeout(FETCH_CONNECT_TIMEOUT)
        .read_timeout(FETCH_READ_TIMEOUT)
        .user_agent(concat!("ker-agent/", env!("CARGO_PKG_VERSION")))
        // A redirect could take the token elsewhere.
        .redirect(reqwest::redirect::Policy::none());
    let client = crate::https::trusting(builder, url.scheme(), None, "")?
        .build()
        .map_err(|e| format!("cannot build an HTTP client for {shown}: {e}"))?;
    let mut request = client.get(url.clone());
    if let Some(path) = &config.backup.fetch_token_file {
        let token = crate::secret_file::read(path, "the backup fetch token ([backup] fetch_token_file)")
            .map_err(|e| e.to_string())?;
        request = request.bearer_auth(token.trim());
    }
    // reqwest's errors name the URL with its query, which may hold a secret: `shown`
    // names it without.
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot fetch {shown}: {}", e.without_url()))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(300).collect();
        return Err(format!("{shown} answered {status}: {}", body.trim()));
    }
    if let Some(served) = response
        .headers()
        .get(crate::api::SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        if !served.eq_ignore_ascii_case(sha256) {
            return Err(format!(
                "{shown} serves a backup with SHA-256 {served}, and restore_from asks for {sha256}: refused"
            ));
        }
    }
    Ok(response)
}

/// The next chunk of the body, within the deadline; `None` at its end.
async fn next_chunk(
    config: &AgentConfig,
    response: &mut reqwest::Response,
    shown: &str,
    bytes: u64,
    deadline: Instant,
) -> Result<Option<bytes::Bytes>, String> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, response.chunk()).await {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(e)) => Err(format!(
            "the download of {shown} failed after {bytes} bytes: {}",
            e.without_url()
        )),
        Err(_) => Err(format!(
            "the download of {shown} did not complete within {}s ([backup] timeout)",
            config.backup.timeout.as_secs()
        )),
    }
}

/// Writes the body to the file `staged`; returns its size and SHA-256.
async fn download_file(
    config: &AgentConfig,
    mut response: reqwest::Response,
    shown: &str,
    staged: &Path,
    announced: Option<u64>,
    deadline: Instant,
) -> Result<(u64, String), String> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(staged)
        .await
        .map_err(|e| format!("cannot create {}: {e}", staged.display()))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = next_chunk(config, &mut response, shown, bytes, deadline).await? {
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        if announced.is_some_and(|limit| bytes > limit) {
            return Err(too_many(shown, announced.unwrap_or_default()));
        }
        // Into the page cache; the file is synced once, at the end.
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", staged.display()))?;
    }
    file.sync_all()
        .await
        .map_err(|e| format!("cannot sync {}: {e}", staged.display()))?;
    Ok((bytes, crate::digest::hex(&hasher.finalize())))
}

/// Unpacks the body, a tar stream, into the directory `staged` as it comes: the
/// bytes go through a pipe to the unpacker on the blocking pool, so that neither the
/// archive nor the backup is ever held in memory. Returns the files' total size and
/// the SHA-256 of their manifest.
async fn download_tree(
    config: &AgentConfig,
    mut response: reqwest::Response,
    shown: &str,
    staged: &Path,
    announced: Option<u64>,
    deadline: Instant,
) -> Result<(u64, String), String> {
    let (mut sender, receiver) =
        tokio::net::unix::pipe::pipe().map_err(|e| format!("cannot make a pipe for the download of {shown}: {e}"))?;
    let reader = receiver
        .into_blocking_fd()
        .map_err(|e| format!("cannot make a pipe for the download of {shown}: {e}"))?;
    let into = staged.to_path_buf();
    let unpacked_bytes = Arc::new(AtomicU64::new(0));
    let counter = unpacked_bytes.clone();
    let mut unpacker =
        tokio::task::spawn_blocking(move || archive::unpack(std::fs::File::from(reader), &into, &counter));
    let timed_out = || {
        format!(
            "the download of {shown} did not complete within {}s ([backup] timeout)",
            config.backup.timeout.as_secs()
        )
    };
    let mut received = 0u64;
    let mut sent = Ok(());
    loop {
        match next_chunk(config, &mut response, shown, received, deadline).await {
            Ok(Some(chunk)) => {
                received += chunk.len() as u64;
                if announced.is_some_and(|limit| unpacked_bytes.load(Ordering::Relaxed) > limit) {
                    sent = Err(too_many(shown, announced.unwrap_or_default()));
                    break;
                }
                // Fails only when the unpacker stopped (its error says why); waits
                // while it is behind, within the deadline.
                match tokio::time::timeout_at(deadline.into(), sender.write_all(&chunk)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        sent = Err(timed_out());
                        break;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                sent = Err(e);
                break;
            }
        }
    }
    // The end of the stream for the unpacker, also after a failure: it then stops at
    // its next read.
    drop(sender);
    let unpacked = match tokio::time::timeout_at(deadline.into(), &mut unpacker).await {
        Ok(joined) => joined.map_err(|e| format!("the unpacking of {shown} failed: {e}"))?,
        Err(_) => return Err(timed_out()),
    };
    sent?;
    let files = unpacked.map_err(|e| format!("the backup from {shown} cannot be unpacked: {e}"))?;
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    if announced.is_some_and(|limit| bytes > limit) {
        return Err(too_many(shown, announced.unwrap_or_default()));
    }
    Ok((bytes, manifest_sha256(&files)))
}

/// Moves the data directory aside (when `aside` is given) and renames the staged
/// backup to `target` inside a data directory that exists.
fn place(staged: &Path, data_dir: &Path, target: &Path, aside: Option<&Path>) -> Result<(), String> {
    if let Some(aside) = aside {
        std::fs::rename(data_dir, aside)
            .map_err(|e| format!("cannot move {} aside to {}: {e}", data_dir.display(), aside.display()))?;
    }
    let placed = put(staged, data_dir, target);
    if let (Err(error), Some(aside)) = (&placed, aside) {
        // The data goes back where it was, so that the instance starts on it.
        let _ = std::fs::remove_dir_all(data_dir);
        if let Err(e) = std::fs::rename(aside, data_dir) {
            return Err(format!(
                "{error}; and the data moved aside to {} cannot go back to {}: {e}",
                aside.display(),
                data_dir.display()
            ));
        }
    }
    placed
}

/// Renames the staged backup to `target` inside `data_dir` (created when missing).
fn put(staged: &Path, data_dir: &Path, target: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::rename(staged, target).map_err(|e| format!("cannot place the backup at {}: {e}", target.display()))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", data_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_moved_aside_goes_back_when_the_backup_cannot_be_placed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("dump.rdb"), b"old").unwrap();
        let aside = dir.path().join("data.before-restore-1");
        // Nothing staged: the rename into place fails.
        let error = place(&dir.path().join("missing"), &data, &data.join("dump.rdb"), Some(&aside)).unwrap_err();
        assert!(error.contains("cannot place the backup"), "{error}");
        assert_eq!(std::fs::read(data.join("dump.rdb")).unwrap(), b"old");
        assert!(!aside.exists());
    }
}

//! The builds this host runs, by engine and version: the binaries agent.toml lists,
//! and the builds fetched from the trusted store (`[artifacts]`) into
//! `data_dir/engines/<engine>/<version>/`.
//!
//! A worker asks [`Builds::want`] for its spec's version on every turn. A version
//! agent.toml lists answers at once; any other gets one entry per version, however
//! many instances want it, with a watch channel that says where its build is:
//! looked for on disk, being fetched (bytes and total), ready, or failed (with the
//! reason and when it is tried again, with back-off). One task per version does the
//! looking and fetching; failures are retried when an instance still wants it after
//! the back-off. Housekeeping removes builds no declared instance and no process has
//! used for `[artifacts] keep_unused`; a build in use is never removed.

use super::fetch::{FetchError, StoreClient};
use super::install::{self, InstallError, Installed, Signed};
use super::manifest::{self, ManifestError};
use super::signature::SignatureError;
use crate::config::{AgentConfig, ArtifactsConfig};
use crate::engine::EngineKind;
use crate::spec::InstanceSpec;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A manifest or a signature larger than this is refused.
const MAX_MANIFEST_BYTES: u64 = 64 << 10;
const MAX_SIGNATURE_BYTES: u64 = 4 << 10;
/// Retries of a failed fetch: 2 s, doubling up to 5 min, each with ±25 % jitter.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Where archives are downloaded to, under the engines directory.
const DOWNLOADS: &str = ".downloads";

pub type BuildKey = (EngineKind, String);

/// Where a store build is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildState {
    /// Being looked for on disk.
    Checking,
    /// Being downloaded: bytes so far, and the total the store announced.
    Fetching { bytes: u64, total_bytes: Option<u64> },
    /// In place, verified.
    Ready(Arc<Installed>),
    /// The last attempt failed; the next one is made at `retry_at` if still wanted.
    Failed {
        error: String,
        attempts: u32,
        retry_at: Instant,
    },
}

/// What [`Builds::want`] answers.
pub enum Wanted {
    /// agent.toml lists the version: this binary.
    Local(PathBuf),
    /// Neither agent.toml nor a store has it (no `[artifacts]`).
    Unknown,
    /// The store's build, as it progresses.
    Store(watch::Receiver<BuildState>),
}

/// Why a build could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("{0}")]
    Disk(String),
    #[error("fetching {engine} {version} from {url} took longer than {seconds}s ([artifacts] timeout)")]
    Timeout {
        engine: EngineKind,
        version: String,
        url: String,
        seconds: u64,
    },
}

struct Entry {
    state: watch::Sender<BuildState>,
    /// When an instance last asked for it.
    last_wanted: Instant,
    attempts: u32,
    /// A task is looking for or fetching it.
    busy: bool,
}

impl Entry {
    /// A version first heard of at `now`: to be looked for.
    fn new(now: Instant, busy: bool) -> Entry {
        Entry {
            state: watch::Sender::new(BuildState::Checking),
            last_wanted: now,
            attempts: 0,
            busy,
        }
    }
}

/// One engine build as `/v1/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineBuild {
    pub engine: EngineKind,
    pub version: String,
    /// `agent.toml` (a path it lists) or `store`.
    pub origin: &'static str,
    /// `ready`, `checking`, `fetching` or `failed`.
    pub state: &'static str,
    pub executable: Option<PathBuf>,
    /// The manifest's URL, for a store build.
    pub url: Option<String>,
    /// The archive's SHA-256 from the signed manifest, for a store build.
    pub sha256: Option<String>,
    pub error: Option<String>,
}

/// The host's engine builds; see the module documentation.
pub struct Builds {
    config: Arc<AgentConfig>,
    entries: Mutex<HashMap<BuildKey, Entry>>,
}

/// The timings of one fetch, logged when its build is in place.
#[derive(Debug, Default, Clone, Copy)]
struct Timings {
    download: Duration,
    verify: Duration,
    unpack: Duration,
    bytes: u64,
}

impl Builds {
    pub fn new(config: Arc<AgentConfig>) -> Arc<Builds> {
        Arc::new(Builds {
            config,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn store(&self) -> Option<&ArtifactsConfig> {
        self.config.artifacts.as_ref()
    }

    fn engines_dir(&self) -> PathBuf {
        self.config.engines_dir()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<BuildKey, Entry>> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The build for `engine` `version`; for a store build, starts looking for it
    /// (or fetching it again once a failure's back-off passed) when nothing is under way.
    pub fn want(self: &Arc<Self>, engine: EngineKind, version: &str) -> Wanted {
        if let Some(path) = self.config.binary(engine, version) {
            return Wanted::Local(path.to_path_buf());
        }
        if self.store().is_none() {
            return Wanted::Unknown;
        }
        let key = (engine, version.to_string());
        let now = Instant::now();
        let mut entries = self.entries();
        let entry = entries.entry(key.clone()).or_insert_with(|| Entry::new(now, false));
        entry.last_wanted = now;
        let start = match &*entry.state.borrow() {
            BuildState::Ready(_) | BuildState::Fetching { .. } => false,
            BuildState::Checking => !entry.busy,
            BuildState::Failed { retry_at, .. } => !entry.busy && now >= *retry_at,
        };
        if start {
            entry.busy = true;
            if entry.attempts > 0 {
                entry.state.send_replace(BuildState::Checking);
            }
            tokio::spawn(self.clone().obtain(key));
        }
        Wanted::Store(entry.state.subscribe())
    }

    /// The executable for `engine` `version`, if agent.toml lists it or its store build
    /// is ready.
    pub fn executable(&self, engine: EngineKind, version: &str) -> Option<PathBuf> {
        if let Some(path) = self.config.binary(engine, version) {
            return Some(path.to_path_buf());
        }
        let entries = self.entries();
        let entry = entries.get(&(engine, version.to_string()))?;
        let state = entry.state.borrow();
        let executable = match &*state {
            BuildState::Ready(installed) => installed.executable.clone(),
            _ => return None,
        };
        drop(state);
        if executable.is_file() {
            return Some(executable);
        }
        // Removed behind the agent's back: looked for again at the next `want`.
        tracing::warn!(message = "Engine build gone from disk.", %engine, %version, executable = %executable.display());
        entry.state.send_replace(BuildState::Checking);
        None
    }

    /// Registers every store build on disk, so that the status lists them from the
    /// start (each is read back and checked, never fetched).
    pub async fn load_installed(self: &Arc<Self>) {
        let dir = self.engines_dir();
        let found = crate::blocking::run("list engine builds", move || installed_builds(&dir)).await;
        let keys = match found.and_then(|r| r) {
            Ok(keys) => keys,
            Err(error) => {
                tracing::warn!(message = "Cannot list the engine builds.", %error);
                return;
            }
        };
        for (engine, version) in keys {
            if self.config.binary(engine, &version).is_none() {
                drop(self.want(engine, &version));
            }
        }
    }

    /// Every build agent.toml lists, and every store build known, in order.
    pub fn list(&self) -> Vec<EngineBuild> {
        let mut out = Vec::new();
        for (engine, versions) in &self.config.engines {
            for (version, path) in versions {
                out.push(EngineBuild {
                    engine: *engine,
                    version: version.clone(),
                    origin: "agent.toml",
                    state: "ready",
                    executable: Some(path.clone()),
                    url: None,
                    sha256: None,
                    error: None,
                });
            }
        }
        let entries = self.entries();
        let mut store: Vec<EngineBuild> = entries
            .iter()
            .map(|((engine, version), entry)| {
                let state = entry.state.borrow();
                let mut build = EngineBuild {
                    engine: *engine,
                    version: version.clone(),
                    origin: "store",
                    state: "checking",
                    executable: None,
                    url: None,
                    sha256: None,
                    error: None,
                };
                match &*state {
                    BuildState::Checking => {}
                    BuildState::Fetching { .. } => build.state = "fetching",
                    BuildState::Ready(installed) => {
                        build.state = "ready";
                        build.executable = Some(installed.executable.clone());
                        build.url = Some(installed.origin.clone());
                        build.sha256 = Some(installed.sha256.clone());
                    }
                    BuildState::Failed { error, .. } => {
                        build.state = "failed";
                        build.error = Some(error.clone());
                    }
                }
                build
            })
            .collect();
        drop(entries);
        store.sort_by(|a, b| (a.engine, &a.version).cmp(&(b.engine, &b.version)));
        out.extend(store);
        out
    }

    /// Looks for the build on disk, else fetches it; publishes the outcome.
    async fn obtain(self: Arc<Self>, key: BuildKey) {
        let Some(sender) = self.entries().get(&key).map(|e| e.state.clone()) else {
            return;
        };
        let timeout = self.store().map_or(Duration::from_secs(60), |s| s.timeout);
        let (engine, version) = (key.0, key.1.clone());
        let result = match tokio::time::timeout(timeout, self.find_or_fetch(engine, &version, &sender)).await {
            Ok(result) => result,
            Err(_) => Err(BuildError::Timeout {
                engine,
                version: version.clone(),
                url: self.store().map_or(String::new(), |s| {
                    s.file_url(engine.as_str(), &version, "manifest.json").to_string()
                }),
                seconds: timeout.as_secs(),
            }),
        };
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(&key) else {
            return;
        };
        entry.busy = false;
        match result {
            Ok(installed) => {
                entry.attempts = 0;
                entry.state.send_replace(BuildState::Ready(Arc::new(installed)));
            }
            Err(error) => {
                entry.attempts += 1;
                let delay = retry_delay(entry.attempts, fastrand::f64());
                let error = error.to_string();
                tracing::warn!(
                    message = "Engine build not available.",
                    %engine,
                    %version,
                    attempts = entry.attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    %error
                );
                entry.state.send_replace(BuildState::Failed {
                    error,
                    attempts: entry.attempts,
                    retry_at: Instant::now() + delay,
                });
            }
        }
    }

    async fn find_or_fetch(
        &self,
        engine: EngineKind,
        version: &str,
        sender: &watch::Sender<BuildState>,
    ) -> Result<Installed, BuildError> {
        let Some(store) = self.store() else {
            return Err(BuildError::Disk("no [artifacts] store".into()));
        };
        let engines_dir = self.engines_dir();
        let keys = store.keys.clone();
        let found = {
            let (dir, version) = (engines_dir.clone(), version.to_string());
            blocking("look for an installed build", move || {
                install::read_installed(&dir, engine, &version, &keys)
            })
            .await?
        };
        match found {
            Ok(Some(installed)) => return Ok(installed),
            Ok(None) => {}
            // Damaged, or signed by a key no longer trusted. A process may still run
            // from it: it is neither used nor deleted, and the operator decides.
            Err(error) => {
                let dir = install::build_dir(&engines_dir, engine.as_str(), version);
                return Err(BuildError::Disk(format!(
                    "the build in {} is refused: {error} (remove the directory to fetch it again)",
                    dir.display()
                )));
            }
        }
        let (installed, timings) = self.fetch(store, engine, version, sender).await?;
        tracing::info!(
            message = "Engine build installed.",
            %engine,
            %version,
            sha256 = %installed.sha256,
            bytes = timings.bytes,
            download_ms = timings.download.as_millis() as u64,
            verify_ms = timings.verify.as_millis() as u64,
            unpack_ms = timings.unpack.as_millis() as u64,
            dir = %installed.dir.display()
        );
        Ok(installed)
    }

    async fn fetch(
        &self,
        store: &ArtifactsConfig,
        engine: EngineKind,
        version: &str,
        sender: &watch::Sender<BuildState>,
    ) -> Result<(Installed, Timings), BuildError> {
        let mut timings = Timings::default();
        let began = Instant::now();
        let client = StoreClient::new(store)?;
        let manifest_url = store.file_url(engine.as_str(), version, "manifest.json");
        let signature_url = store.file_url(engine.as_str(), version, "manifest.json.minisig");
        let bytes = client.small(&manifest_url, MAX_MANIFEST_BYTES).await?;
        let signature = client.small(&signature_url, MAX_SIGNATURE_BYTES).await?;
        let mut download_time = began.elapsed();
        let verifying = Instant::now();
        let signature = String::from_utf8_lossy(&signature).into_owned();
        let what = manifest_url.to_string();
        store.keys.verify(&what, &bytes, &signature)?;
        let manifest = manifest::parse(&what, &bytes, engine, version)?;
        let mut verify_time = verifying.elapsed();

        let downloads = self.engines_dir().join(DOWNLOADS);
        let dir = downloads.clone();
        blocking("create the downloads directory", move || {
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
        })
        .await??;
        let archive = downloads.join(format!(
            "{engine}-{version}-{}-{}.tar.gz",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _cleanup = RemoveOnDrop(archive.clone());
        let archive_url = store.file_url(engine.as_str(), version, &manifest.archive);
        let downloading = Instant::now();
        let mut last_sent = 0u64;
        let downloaded = client
            .download(&archive_url, &archive, |bytes, total_bytes| {
                // Every 1 % or 1 MiB: enough for a progress bar, few wake-ups.
                let step = total_bytes.map_or(1 << 20, |t| (t / 100).clamp(64 << 10, 1 << 20));
                if bytes == 0 || bytes - last_sent >= step || Some(bytes) == total_bytes {
                    last_sent = bytes;
                    sender.send_replace(BuildState::Fetching { bytes, total_bytes });
                }
            })
            .await?;
        download_time += downloading.elapsed();
        timings.bytes = downloaded.bytes;
        let verifying = Instant::now();
        install::check_checksum(&archive, &downloaded.sha256, &manifest)?;
        verify_time += verifying.elapsed();

        let unpacking = Instant::now();
        let signed = Signed {
            manifest: bytes,
            signature,
            origin: what,
        };
        let engines_dir = self.engines_dir();
        let path = archive.clone();
        // Dropped with this future (the fetch's time ran out): the unpacking stops.
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = cancel.0.clone();
        let installed =
            tokio::task::spawn_blocking(move || install::place(&path, &manifest, &signed, &engines_dir, &flag))
                .await
                .map_err(|e| BuildError::Disk(format!("the unpacking of {} failed: {e}", archive.display())))??;
        drop(cancel);
        timings.unpack = unpacking.elapsed();
        timings.download = download_time;
        timings.verify = verify_time;
        Ok((installed, timings))
    }

    /// Removes leftovers of an earlier agent: partial builds, downloads, removals.
    pub async fn clean_leftovers(&self) {
        let dir = self.engines_dir();
        let result = crate::blocking::run("clean the engines directory", move || clean(&dir)).await;
        if let Err(error) = result.and_then(|r| r) {
            tracing::warn!(message = "Cannot clean the engines directory.", %error);
        }
    }

    /// Removes store builds nobody has used for `[artifacts] keep_unused`, until
    /// `shutdown`.
    pub async fn housekeeping(
        self: Arc<Self>,
        declared: watch::Receiver<Arc<BTreeMap<String, Arc<InstanceSpec>>>>,
        shutdown: CancellationToken,
    ) {
        let Some(keep) = self.store().map(|s| s.keep_unused) else {
            return;
        };
        let every = (keep / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let mut unused_since: HashMap<BuildKey, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let wanted: HashSet<BuildKey> = declared
                .borrow()
                .values()
                .map(|spec| (spec.engine, spec.version.clone()))
                .collect();
            if let Err(error) = self.sweep(&wanted, &declared, &mut unused_since, keep).await {
                tracing::warn!(message = "Cannot sweep unused engine builds.", %error);
            }
        }
    }

    /// One pass of housekeeping: `wanted` are the declared instances' builds.
    async fn sweep(
        self: &Arc<Self>,
        wanted: &HashSet<BuildKey>,
        declared: &watch::Receiver<Arc<BTreeMap<String, Arc<InstanceSpec>>>>,
        unused_since: &mut HashMap<BuildKey, Instant>,
        keep: Duration,
    ) -> Result<(), String> {
        let engines_dir = self.engines_dir();
        let instances_dir = self.config.instances_dir();
        let (on_disk, running) = crate::blocking::run("list engine builds and instance records", move || {
            Ok::<_, String>((installed_builds(&engines_dir)?, recorded_builds(&instances_dir)?))
        })
        .await??;
        let now = Instant::now();
        // A version that failed or was never found, and that no spec names any more,
        // leaves the list.
        self.entries().retain(|key, entry| {
            entry.busy || wanted.contains(key) || matches!(*entry.state.borrow(), BuildState::Ready(_))
        });
        unused_since.retain(|key, _| on_disk.contains(key));
        for key in on_disk {
            if self.config.binary(key.0, &key.1).is_some() || wanted.contains(&key) || running.contains(&key) {
                unused_since.remove(&key);
                continue;
            }
            let since = *unused_since.entry(key.clone()).or_insert(now);
            if now.duration_since(since) < keep {
                continue;
            }
            // Marked under the lock (busy, checking): an instance that asks for it
            // meanwhile waits instead of starting it, and it is looked for again once
            // the directory has gone.
            let marked_at = {
                let mut entries = self.entries();
                let recent = entries
                    .get(&key)
                    .is_some_and(|e| e.busy || now.duration_since(e.last_wanted) < keep);
                // Declared since the listing began?
                let declared_now = declared
                    .borrow()
                    .values()
                    .any(|spec| spec.engine == key.0 && spec.version == key.1);
                if recent || declared_now {
                    continue;
                }
                let marked_at = Instant::now();
                let entry = entries
                    .entry(key.clone())
                    .or_insert_with(|| Entry::new(marked_at, true));
                entry.busy = true;
                entry.state.send_replace(BuildState::Checking);
                marked_at
            };
            unused_since.remove(&key);
            let dir = install::build_dir(&self.engines_dir(), key.0.as_str(), &key.1);
            let aside = dir.with_file_name(format!(".removing-{}-{}", key.1, fastrand::u64(..)));
            let moved = {
                let (dir, aside) = (dir.clone(), aside.clone());
                crate::blocking::run("move an unused build aside", move || {
                    std::fs::rename(&dir, &aside).map_err(|e| format!("cannot move {} aside: {e}", dir.display()))
                })
                .await
                .and_then(|r| r)
            };
            {
                let mut entries = self.entries();
                let wanted_meanwhile = entries.get(&key).is_some_and(|e| e.last_wanted > marked_at);
                if moved.is_ok() && !wanted_meanwhile {
                    entries.remove(&key);
                } else {
                    // Still there (the move failed), or wanted again: found or fetched anew.
                    tokio::spawn(self.clone().obtain(key.clone()));
                }
            }
            moved?;
            let shown = aside.display().to_string();
            crate::blocking::run("remove an unused build", move || remove_build(&aside)).await??;
            tracing::info!(
                message = "Unused engine build removed.",
                engine = %key.0,
                version = %key.1,
                unused_for_s = keep.as_secs(),
                removed = %shown
            );
        }
        Ok(())
    }
}

/// The delay before attempt `attempts + 1`, `jitter` in [0, 1).
fn retry_delay(attempts: u32, jitter: f64) -> Duration {
    let base = RETRY_FIRST
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(RETRY_MAX);
    base.mul_f64(0.75 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// Blocking file work for builds: the 10 s limit of short steps.
async fn blocking<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> Result<T, BuildError> {
    crate::blocking::run(what, work).await.map_err(BuildError::Disk)
}

impl From<String> for BuildError {
    fn from(reason: String) -> Self {
        BuildError::Disk(reason)
    }
}

fn remove_build(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", dir.display())),
    }
}

/// Stops an unpacking on the blocking pool when the fetch that waits for it is dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Deletes a download when the fetch ends, whichever way.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The store builds in place: `engines/<engine>/<version>/` for a known engine.
fn installed_builds(engines_dir: &Path) -> Result<HashSet<BuildKey>, String> {
    let mut out = HashSet::new();
    for engine in EngineKind::ALL {
        let dir = engines_dir.join(engine.as_str());
        let names = crate::engine::names_in(&dir, "").map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        out.extend(names.into_iter().filter(|n| !n.starts_with('.')).map(|n| (engine, n)));
    }
    Ok(out)
}

/// The engine and version of every instance record: a process may run from a build
/// whatever the desired state says. Any record that cannot be read fails the whole
/// listing, so that a build is never taken for unused by mistake.
fn recorded_builds(instances_dir: &Path) -> Result<HashSet<BuildKey>, String> {
    let names = crate::engine::names_in(instances_dir, "")
        .map_err(|e| format!("cannot list {}: {e}", instances_dir.display()))?;
    let mut out = HashSet::new();
    for name in names {
        let dir = instances_dir.join(&name);
        if !dir.is_dir() {
            continue;
        }
        if let Some(record) = crate::record::read(&dir).map_err(|e| e.to_string())? {
            out.insert((record.engine, record.version));
        }
    }
    Ok(out)
}

/// Removes `.partial-*` and `.removing-*` builds and old downloads.
fn clean(engines_dir: &Path) -> Result<(), String> {
    let _ = remove_build(&engines_dir.join(DOWNLOADS));
    for engine in EngineKind::ALL {
        let dir = engines_dir.join(engine.as_str());
        let names = crate::engine::names_in(&dir, "").map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for name in names {
            if name.starts_with(".partial-") || name.starts_with(".removing-") {
                remove_build(&dir.join(name))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_within_bounds() {
        assert_eq!(retry_delay(1, 0.5), RETRY_FIRST);
        assert_eq!(retry_delay(2, 0.5), RETRY_FIRST * 2);
        assert_eq!(retry_delay(40, 0.5), RETRY_MAX);
        assert!(retry_delay(1, 0.0) >= RETRY_FIRST.mul_f64(0.75));
        assert!(retry_delay(u32::MAX, 1.0) <= RETRY_MAX.mul_f64(1.25));
    }
}

//! A fake artifact store for the tests of engine downloads: an HTTPS server on
//! 127.0.0.1 that serves the files of a directory with the store's layout
//!
//! ```text
//! {url}/{engine}/{version}/manifest.json
//! {url}/{engine}/{version}/manifest.json.minisig
//! {url}/{engine}/{version}/<archive file name>
//! ```
//!
//! with injectable faults (down, truncated bodies, throttled bodies) and a request
//! log; minisign key pairs made in the test with Debian's `minisign` tool
//! ([`Signer`]); and `.tar.gz` builders, both for a well-formed redis build
//! ([`redis_archive`]) and for hostile archives with `..`, absolute paths and links
//! pointing out ([`tar_gz`]).
//!
//! ```ignore
//! let ca = tls::Ca::new("store CA");
//! let store = Store::start(&ca);
//! let signer = Signer::new(dir, "release");
//! store.publish("redis", "7.9", &redis_archive(0), "bin/redis-server", &signer);
//! // agent.toml: [artifacts] url = store.url(), public_keys = [signer.public_key()]
//! store.throttle("redis-7.9.tar.gz", 64 * 1024);
//! assert_eq!(store.requests("redis-7.9.tar.gz"), 1);
//! ```
//!
//! The server is a hand-written HTTP/1.1 server over tokio-rustls on its own tokio
//! runtime thread (like the fake controller's), one request per connection
//! (`Connection: close`): GET of a file → 200 `application/octet-stream` with its
//! `Content-Length`; a missing file → 404; any other method → 405.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a client may take to finish its TLS handshake or send its request head.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head the store reads.
const MAX_HEAD: usize = 16 * 1024;
/// The pace of a throttled body: one chunk per tick.
const THROTTLE_TICK: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------------

/// A minisign key pair without a password, made by the `minisign` tool in `dir`:
/// `<name>.pub` and `<name>.key`.
pub struct Signer {
    pub_file: PathBuf,
    key_file: PathBuf,
}

impl Signer {
    /// Generates `dir/<name>.pub` and `dir/<name>.key` with
    /// `minisign -G -f -W -p … -s …` (`-W`: no password, `-f`: overwrite a pair
    /// left there).
    pub fn new(dir: &Path, name: &str) -> Signer {
        let pub_file = dir.join(format!("{name}.pub"));
        let key_file = dir.join(format!("{name}.key"));
        let output = minisign()
            .args(["-G", "-f", "-W", "-p"])
            .arg(&pub_file)
            .arg("-s")
            .arg(&key_file)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run minisign -G: {e}"));
        assert!(
            output.status.success(),
            "minisign -G failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Signer { pub_file, key_file }
    }

    /// The public key as agent.toml takes it: the base64 line of the `.pub` file (its
    /// second line).
    pub fn public_key(&self) -> String {
        let text =
            std::fs::read_to_string(&self.pub_file).unwrap_or_else(|e| panic!("read {}: {e}", self.pub_file.display()));
        text.lines()
            .nth(1)
            .unwrap_or_else(|| panic!("{} has no key line: {text:?}", self.pub_file.display()))
            .trim()
            .to_string()
    }

    /// The `.pub` file (an untrusted comment line, then the key line).
    pub fn pub_file(&self) -> PathBuf {
        self.pub_file.clone()
    }

    /// The secret key file (not encrypted).
    pub fn key_file(&self) -> PathBuf {
        self.key_file.clone()
    }

    /// Signs `file` into `<file>.minisig`, prehashed (minisign 0.11's default), with
    /// minisign's default trusted comment (timestamp and file name).
    pub fn sign(&self, file: &Path) {
        self.sign_with(file, None);
    }

    /// Like [`Signer::sign`] with `trusted_comment` as the signed comment.
    pub fn sign_with_comment(&self, file: &Path, trusted_comment: &str) {
        self.sign_with(file, Some(trusted_comment));
    }

    fn sign_with(&self, file: &Path, trusted_comment: Option<&str>) {
        let mut command = minisign();
        command.arg("-S").arg("-s").arg(&self.key_file);
        if let Some(comment) = trusted_comment {
            command.args(["-t", comment]);
        }
        let output = command
            .arg("-m")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run minisign -S: {e}"));
        assert!(
            output.status.success(),
            "minisign -S -m {} failed ({}): {}",
            file.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Whether `minisign -V` accepts `<file>.minisig` for `file` with this key.
    pub fn verifies(&self, file: &Path) -> bool {
        minisign()
            .arg("-V")
            .arg("-p")
            .arg(&self.pub_file)
            .arg("-m")
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

/// The `minisign` tool; panics with how to install it when it is missing.
pub fn minisign() -> Command {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("minisign").is_file()))
        .unwrap_or(false);
    assert!(found, "minisign not found: install it (apt-get install -y minisign)");
    Command::new("minisign")
}

// ---------------------------------------------------------------------------------
// Archives
// ---------------------------------------------------------------------------------

/// One entry of a hand-made archive. Paths are written into the header as they are
/// (up to 99 bytes), so `..`, absolute paths and links pointing out really appear.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory (mode 0755).
    Dir(&'static str),
    /// A regular file with its bytes and mode.
    File(&'static str, Vec<u8>, u32),
    /// A symbolic link: (path, target).
    Symlink(&'static str, &'static str),
    /// A hard link: (path, target).
    HardLink(&'static str, &'static str),
}

/// A `.tar.gz` of a redis build: `bin/` (0755), `bin/redis-server` (0755, the bytes
/// of the tests' redis-server) and, when `extra_bytes` > 0, `share/padding.bin` with
/// that many random (incompressible) bytes, so an archive of about a chosen size can
/// be made.
pub fn redis_archive(extra_bytes: usize) -> Vec<u8> {
    let server = super::redis_server();
    let bytes = std::fs::read(&server).unwrap_or_else(|e| panic!("read {}: {e}", server.display()));
    let mut entries = vec![Entry::Dir("bin/"), Entry::File("bin/redis-server", bytes, 0o755)];
    if extra_bytes > 0 {
        let mut padding = vec![0u8; extra_bytes];
        fastrand::fill(&mut padding);
        entries.push(Entry::Dir("share/"));
        entries.push(Entry::File("share/padding.bin", padding, 0o644));
    }
    tar_gz(&entries)
}

/// A `.tar.gz` of `entries` in order, with raw GNU headers (owner 0:0, a fixed mtime).
pub fn tar_gz(entries: &[Entry]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for entry in entries {
        let (path, kind, mode, link, data): (&str, tar::EntryType, u32, Option<&str>, &[u8]) = match entry {
            Entry::Dir(path) => (path, tar::EntryType::Directory, 0o755, None, &[]),
            Entry::File(path, data, mode) => (path, tar::EntryType::Regular, *mode, None, data),
            Entry::Symlink(path, target) => (path, tar::EntryType::Symlink, 0o777, Some(target), &[]),
            Entry::HardLink(path, target) => (path, tar::EntryType::Link, 0o644, Some(target), &[]),
        };
        let mut header = tar::Header::new_gnu();
        copy_name(&mut header.as_old_mut().name, path);
        if let Some(target) = link {
            copy_name(&mut header.as_old_mut().linkname, target);
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).expect("append a tar entry");
    }
    builder
        .into_inner()
        .and_then(|encoder| encoder.finish())
        .expect("finish the archive")
}

/// Writes `name` into a NUL-padded header field, as it is.
fn copy_name(field: &mut [u8; 100], name: &str) {
    assert!(
        name.len() < field.len(),
        "{name:?} is too long for a plain tar header (at most 99 bytes)"
    );
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
}

/// The lower-case hex SHA-256 of `bytes`, as manifests carry it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A manifest's JSON, in the fixtures' style:
/// `{"engine": …, "version": …, "archive": …, "sha256": …, "executable": …}`.
pub fn manifest_json(engine: &str, version: &str, archive: &str, sha256: &str, executable: &str) -> String {
    let s = |v: &str| serde_json::Value::from(v).to_string();
    format!(
        "{{\"engine\": {}, \"version\": {}, \"archive\": {}, \"sha256\": {}, \"executable\": {}}}",
        s(engine),
        s(version),
        s(archive),
        s(sha256),
        s(executable)
    )
}

// ---------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------

/// One request the store received.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    /// The path without its query.
    pub path: String,
    /// The status answered (0 when the client went away before an answer).
    pub status: u16,
}

#[derive(Default)]
struct Faults {
    /// (path suffix, body bytes sent).
    truncate: Vec<(String, usize)>,
    /// (path suffix, bytes per second).
    throttle: Vec<(String, usize)>,
}

struct Shared {
    root: PathBuf,
    down: AtomicBool,
    faults: Mutex<Faults>,
    requests: Mutex<Vec<RequestRecord>>,
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fake artifact store. See the module documentation.
pub struct Store {
    /// The temporary directory served, when the store owns it (removed on drop, after
    /// the server thread has stopped).
    _dir: Option<tempfile::TempDir>,
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Store {
    /// Starts a store on 127.0.0.1 on a free port with a server certificate for
    /// "127.0.0.1" and "localhost" issued by `ca`, serving a temporary directory it
    /// owns (removed on drop).
    pub fn start(ca: &super::tls::Ca) -> Store {
        let dir = tempfile::Builder::new()
            .prefix("ker-agent-store-")
            .tempdir()
            .expect("temp dir for the store");
        let root = dir.path().to_path_buf();
        Store::start_with(ca, root, Some(dir))
    }

    /// Like [`Store::start`], serving `root` (created if missing, left on drop).
    pub fn start_in(ca: &super::tls::Ca, root: &Path) -> Store {
        std::fs::create_dir_all(root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        Store::start_with(ca, root.to_path_buf(), None)
    }

    fn start_with(ca: &super::tls::Ca, root: PathBuf, dir: Option<tempfile::TempDir>) -> Store {
        let issued = ca.server(&["127.0.0.1", "localhost"]);
        let config = tls_server_config(&issued.cert_pem, &issued.key_pem)
            .unwrap_or_else(|e| panic!("cannot configure TLS for the fake store: {e}"));
        let shared = Arc::new(Shared {
            root,
            down: AtomicBool::new(false),
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Vec::new()),
        });
        let mut last_error = None;
        for _ in 0..20 {
            let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
            match serve(addr, shared.clone(), config.clone()) {
                Ok((shutdown, thread)) => {
                    return Store {
                        _dir: dir,
                        addr,
                        ca_pem: ca.cert_pem(),
                        shared,
                        shutdown: Some(shutdown),
                        thread: Some(thread),
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        panic!("cannot start the fake store: {last_error:?}");
    }

    /// `https://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory served.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The CA certificate (PEM) its server certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The directory of one build: `root/<engine>/<version>` (created).
    pub fn version_dir(&self, engine: &str, version: &str) -> PathBuf {
        let dir = self.root().join(engine).join(version);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        dir
    }

    /// Publishes a build: `archive` as `<engine>-<version>.tar.gz`, a manifest naming
    /// it with its real SHA-256 and `executable`, and the manifest's signature by
    /// `signer`.
    pub fn publish(&self, engine: &str, version: &str, archive: &[u8], executable: &str, signer: &Signer) {
        let name = format!("{engine}-{version}.tar.gz");
        let manifest = manifest_json(engine, version, &name, &sha256_hex(archive), executable);
        self.publish_manifest(engine, version, &manifest, Some(archive), &name, signer);
    }

    /// Publishes a hand-made (e.g. lying) `manifest_json` signed by `signer`, and, with
    /// `archive`, writes it as `archive_name` (otherwise leaves whatever is there).
    pub fn publish_manifest(
        &self,
        engine: &str,
        version: &str,
        manifest_json: &str,
        archive: Option<&[u8]>,
        archive_name: &str,
        signer: &Signer,
    ) {
        let dir = self.version_dir(engine, version);
        if let Some(bytes) = archive {
            write(&dir.join(archive_name), bytes);
        }
        let manifest = self.manifest_path(engine, version);
        write(&manifest, manifest_json.as_bytes());
        signer.sign(&manifest);
    }

    /// `root/<engine>/<version>/manifest.json`.
    pub fn manifest_path(&self, engine: &str, version: &str) -> PathBuf {
        self.root().join(engine).join(version).join("manifest.json")
    }

    /// The number of GETs whose path ends with `path_suffix`.
    pub fn requests(&self, path_suffix: &str) -> usize {
        self.shared
            .log()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(path_suffix))
            .count()
    }

    /// Every request so far, oldest first.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.log().clone()
    }

    /// While down, connections are closed as soon as they are accepted (no TLS), and
    /// throttled bodies in flight are cut off (without a TLS close).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// GETs of paths ending with `path_suffix` announce the full `Content-Length` but
    /// send only the first `send_bytes` bytes of the body, then close.
    pub fn truncate(&self, path_suffix: &str, send_bytes: usize) {
        self.shared
            .faults()
            .truncate
            .push((path_suffix.to_string(), send_bytes));
    }

    /// GETs of paths ending with `path_suffix` send their body in small chunks at about
    /// `bytes_per_second` (at least one byte per 50 ms tick).
    pub fn throttle(&self, path_suffix: &str, bytes_per_second: usize) {
        self.shared
            .faults()
            .throttle
            .push((path_suffix.to_string(), bytes_per_second));
    }

    /// Removes every truncation and throttle (not `set_down`).
    pub fn clear_faults(&self) {
        *self.shared.faults() = Faults::default();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes `bytes` to `path` through a temporary name and a rename, so the server never
/// serves half a file.
fn write(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// The server's TLS configuration: ring, TLS 1.2 and 1.3, HTTP/1.1 by ALPN, no client
/// certificates. (The fake controller's, without client authentication.)
fn tls_server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the server certificate is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the server certificate PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the server key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the server certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds `addr` and serves on a thread with its own runtime; returns the shutdown
/// sender and the thread.
fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)> {
    let listener = StdTcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let thread = std::thread::Builder::new()
        .name(format!("fake-store-{}", addr.port()))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                tokio::select! {
                    _ = accept_loop(listener, acceptor, shared) => {}
                    _ = shutdown_rx => {}
                }
            });
            // Dropping the runtime drops every connection task: transfers in flight
            // are cut off here.
            drop(runtime);
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((shutdown_tx, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(std::io::Error::other("the fake store thread died"))
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.down.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        tokio::spawn(connection(stream, acceptor.clone(), shared.clone()));
    }
}

/// One request on one connection.
async fn connection(stream: tokio::net::TcpStream, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    let Ok(Ok(mut tls)) = tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(stream)).await else {
        return;
    };
    let Ok(Some(head)) = tokio::time::timeout(CLIENT_TIMEOUT, read_head(&mut tls))
        .await
        .unwrap_or(Ok(None))
    else {
        return;
    };
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default();
    let path = target.split(['?', '#']).next().unwrap_or_default().to_string();
    let index = {
        let mut log = shared.log();
        log.push(RequestRecord {
            method: method.clone(),
            path: path.clone(),
            status: 0,
        });
        log.len() - 1
    };
    let set_status = |status: u16| shared.log()[index].status = status;

    if method != "GET" {
        set_status(405);
        let _ = respond_short(&mut tls, "405 Method Not Allowed", "Allow: GET\r\n", "only GET\n").await;
        return;
    }
    let Some(body) = resolve(&shared.root, &path).and_then(|file| std::fs::read(file).ok()) else {
        set_status(404);
        let _ = respond_short(&mut tls, "404 Not Found", "", "not found\n").await;
        return;
    };
    set_status(200);
    let (truncate, throttle) = {
        let faults = shared.faults();
        let find = |list: &[(String, usize)]| list.iter().rev().find(|(s, _)| path.ends_with(s)).map(|(_, n)| *n);
        (find(&faults.truncate), find(&faults.throttle))
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let send = &body[..truncate.unwrap_or(body.len()).min(body.len())];
    let result = async {
        tls.write_all(head.as_bytes()).await?;
        match throttle {
            None => tls.write_all(send).await?,
            Some(bytes_per_second) => {
                let chunk = (bytes_per_second / (1000 / THROTTLE_TICK.as_millis() as usize)).max(1);
                for piece in send.chunks(chunk) {
                    if shared.down.load(Ordering::SeqCst) {
                        // The store "died": cut the connection without a TLS close.
                        return Err(std::io::Error::other("store down"));
                    }
                    tls.write_all(piece).await?;
                    tls.flush().await?;
                    tokio::time::sleep(THROTTLE_TICK).await;
                }
            }
        }
        tls.flush().await?;
        tls.shutdown().await
    };
    let _ = result.await;
}

/// Reads the request head (up to the blank line); `None` when the client closed first
/// or sent too much.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// A short answer with a text body.
async fn respond_short<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    extra_headers: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// The file under `root` that `path` names, if it is a plain relative path to a file.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let relative = path.strip_prefix('/')?;
    let mut file = root.to_path_buf();
    for segment in relative.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.contains('\\') {
            return None;
        }
        file.push(segment);
    }
    file.is_file().then_some(file)
}

/// Points `h`'s agent at `store`: writes `ca`'s certificate beside agent.toml and adds
/// an `[artifacts]` section trusting `signer`'s key, with `extra` lines in it.
pub fn trust(h: &super::Harness, store: &Store, ca: &super::tls::Ca, signer: &Signer, extra: &str) {
    let ca_file = ca.write(h.path(), "store-ca.pem");
    h.append_agent_toml(&format!(
        "[artifacts]\nurl = \"{}\"\npublic_keys = [\"{}\"]\nca_file = \"{}\"\n{extra}\n",
        store.url(),
        signer.public_key(),
        ca_file.display()
    ));
}

//! The artifact store, as the agent calls it: small files (a manifest and its
//! signature) read whole within a size limit, and an archive streamed to a file and
//! hashed on the way, never held in memory. Every call has a connect and a read
//! timeout; the caller bounds the whole fetch.

use crate::config::ArtifactsConfig;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait for the next bytes of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// An archive larger than this is refused: no engine build comes near it.
pub const MAX_ARCHIVE_BYTES: u64 = 2 << 30;
/// Free space left on the engines' filesystem after the archive and its unpacked
/// files (counted as three times the archive) are written.
const SPARE_BYTES: u64 = super::install::MIN_FREE_BYTES;
/// Without an announced size, the free space is looked at every this many bytes.
const ROOM_CHECK_EVERY: u64 = 16 << 20;

/// A failed call to the store, naming the URL (and the file, for a local failure).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot build an HTTP client for the artifact store: {0}")]
    Client(String),
    #[error("the artifact store is unreachable at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}{body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url} is larger than {limit} bytes: refused")]
    TooLarge { url: String, limit: u64 },
    #[error("{url} ended after {got} of the {announced} bytes it announced: the download is truncated{reason}")]
    Truncated {
        url: String,
        got: u64,
        announced: u64,
        reason: String,
    },
    #[error("the download of {url} failed after {got} bytes: {reason}")]
    Interrupted { url: String, got: u64, reason: String },
    #[error(
        "{url} is {needed} bytes and {dir} has {available} bytes free, \
         not enough for it unpacked: refused before writing"
    )]
    NoRoom {
        url: String,
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a finished download wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: u64,
    pub sha256: String,
}

/// The store's HTTP client.
pub struct StoreClient {
    http: reqwest::Client,
}

impl StoreClient {
    /// Builds the client, reading `[artifacts] ca_file` when set.
    pub fn new(config: &ArtifactsConfig) -> Result<StoreClient, FetchError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("ker-agent/", env!("CARGO_PKG_VERSION")))
            .https_only(config.url.scheme() == "https")
            // What is fetched is judged by its signature, not its address; still, a
            // store that sends the agent elsewhere is misconfigured.
            .redirect(reqwest::redirect::Policy::none());
        let builder = crate::https::trusting(
            builder,
            config.url.scheme(),
            config.ca_file.as_deref(),
            "[artifacts] ca_file",
        )
        .map_err(FetchError::Client)?;
        let http = builder.build().map_err(|e| {
            FetchError::Client(format!(
                "{e} (for the system's trust roots install ca-certificates, or name the store's CA in [artifacts] ca_file)"
            ))
        })?;
        Ok(StoreClient { http })
    }

    async fn get(&self, url: &reqwest::Url) -> Result<reqwest::Response, FetchError> {
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| FetchError::Unreachable {
                url: url.to_string(),
                reason: chain(&e.without_url()),
            })?;
        let status = response.status();
        if !status.is_success() {
            // The first bytes of the body say enough; the rest is not read.
            let mut response = response;
            let mut head = Vec::new();
            while head.len() < 1024 {
                match response.chunk().await {
                    Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            let body = String::from_utf8_lossy(&head);
            let body: String = body.trim().chars().filter(|c| !c.is_control()).take(200).collect();
            return Err(FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                body: if body.is_empty() {
                    String::new()
                } else {
                    format!(": {body}")
                },
            });
        }
        Ok(response)
    }

    /// A small file, whole, refused beyond `limit` bytes.
    pub async fn small(&self, url: &reqwest::Url, limit: u64) -> Result<Vec<u8>, FetchError> {
        let mut response = self.get(url).await?;
        let too_large = || FetchError::TooLarge {
            url: url.to_string(),
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = next_chunk(&mut response, url, body.len() as u64).await? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > limit {
                return Err(too_large());
            }
        }
        Ok(body)
    }

    /// Streams `url` into the new file `to`, hashing it on the way; `progress` hears
    /// the bytes so far and the announced total. The file is synced before this
    /// returns. A response longer or shorter than it announced is refused.
    pub async fn download(
        &self,
        url: &reqwest::Url,
        to: &Path,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<Downloaded, FetchError> {
        let mut response = self.get(url).await?;
        let announced = response.content_length();
        if announced.is_some_and(|n| n > MAX_ARCHIVE_BYTES) {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit: MAX_ARCHIVE_BYTES,
            });
        }
        let dir = to.parent().unwrap_or(to);
        let room = |needed: u64| -> Result<(), FetchError> {
            let stats = crate::sys::statvfs(dir).map_err(|source| FetchError::Io {
                what: "statvfs",
                path: dir.to_path_buf(),
                source,
            })?;
            if stats.available_bytes < needed {
                return Err(FetchError::NoRoom {
                    url: url.to_string(),
                    dir: dir.to_path_buf(),
                    needed,
                    available: stats.available_bytes,
                });
            }
            Ok(())
        };
        if let Some(announced) = announced {
            room(announced.saturating_mul(3).saturating_add(SPARE_BYTES))?;
        }
        let io = |what, source| FetchError::Io {
            what,
            path: to.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .await
            .map_err(|e| io("create", e))?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        progress(0, announced);
        loop {
            let chunk = match next_chunk(&mut response, url, bytes).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(FetchError::Interrupted { reason, .. }) if announced.is_some() => {
                    return Err(FetchError::Truncated {
                        url: url.to_string(),
                        got: bytes,
                        announced: announced.unwrap_or_default(),
                        reason: format!(" ({reason})"),
                    })
                }
                Err(error) => return Err(error),
            };
            let before = bytes;
            bytes += chunk.len() as u64;
            if announced.is_none() && before / ROOM_CHECK_EVERY != bytes / ROOM_CHECK_EVERY {
                room(SPARE_BYTES)?;
            }
            if bytes > announced.unwrap_or(MAX_ARCHIVE_BYTES) {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                    limit: announced.unwrap_or(MAX_ARCHIVE_BYTES),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| io("write", e))?;
            progress(bytes, announced);
        }
        if let Some(announced) = announced.filter(|n| bytes < *n) {
            return Err(FetchError::Truncated {
                url: url.to_string(),
                got: bytes,
                announced,
                reason: String::new(),
            });
        }
        file.sync_all().await.map_err(|e| io("sync", e))?;
        Ok(Downloaded {
            bytes,
            sha256: crate::digest::hex(&hasher.finalize()),
        })
    }
}

async fn next_chunk(
    response: &mut reqwest::Response,
    url: &reqwest::Url,
    got: u64,
) -> Result<Option<bytes::Bytes>, FetchError> {
    response.chunk().await.map_err(|e| FetchError::Interrupted {
        url: url.to_string(),
        got,
        reason: chain(&e.without_url()),
    })
}

/// An error with its sources, once each: reqwest's own text says little ("error
/// sending request"); the reason (refused, a certificate) is further down.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

//! `GET /v1/instances/{name}/backups` (the list, newest first) and
//! `GET /v1/instances/{name}/backups/{id}` (the backup's bytes, streamed, with its
//! SHA-256 in `X-Backup-Sha256`; a directory backup as a tar stream, see
//! `backup::archive`): how another host's agent fetches a backup to
//! restore from, without shell access. Both need the API token: a backup holds every
//! key of the instance. Read from the backup directory itself, so that the backups of
//! an instance no longer declared here can still be fetched.

use super::{authorize, error, ApiState, Refusal};
use crate::backup::store::{Metadata, Store, StoreError};
use crate::status::BackupInfo;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The header that carries a backup's SHA-256 (lower-case hex).
pub const SHA256_HEADER: &str = "x-backup-sha256";
/// The header that carries a backup's size in bytes (of its files, for a directory
/// backup, whose tar stream has no length ahead): a fetching agent refuses more, and
/// checks that it fits first.
pub const BYTES_HEADER: &str = "x-backup-bytes";

/// Directory backups sent at once. Each holds a blocking thread while its client
/// reads (the tar is written into a pipe), and a client that stops reading holds it
/// until it goes: a few at most, so that the agent's file work always has threads.
const TREE_SENDS: usize = 4;
static TREE_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(TREE_SENDS);

fn store(state: &ApiState, name: &str) -> Result<Store, Refusal> {
    if !crate::spec::valid_name(name) {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("{name:?} is not an instance name"),
        ));
    }
    Ok(Store::new(state.backup_dir.join(name)))
}

/// Reads from `store` off the runtime.
async fn read<T: Send + 'static>(
    store: &Store,
    read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Refusal> {
    let (dir, store) = (store.dir().display().to_string(), store.clone());
    match crate::blocking::run(&format!("read {dir}"), move || read(&store)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(Refusal(StatusCode::SERVICE_UNAVAILABLE, e)),
    }
}

pub async fn list_backups(
    State(state): State<ApiState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied.into_response();
    }
    let name = match name {
        Ok(Path(name)) => name,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let store = match store(&state, &name) {
        Ok(store) => store,
        Err(refusal) => return refusal.into_response(),
    };
    match read(&store, Store::list).await {
        Ok(list) => Json(list.into_iter().map(|m| m.info).collect::<Vec<BackupInfo>>()).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

pub async fn get_backup(
    State(state): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    if let Err(denied) = authorize(&state, &headers) {
        return denied.into_response();
    }
    let (name, id) = match path {
        Ok(Path(pair)) => pair,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let store = match store(&state, &name) {
        Ok(store) => store,
        Err(refusal) => return refusal.into_response(),
    };
    let wanted = id.clone();
    let meta = match read(&store, move |store| store.get(&wanted)).await {
        Ok(Some(meta)) => meta,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("instance {name:?} has no backup {id:?} on this node"),
            )
        }
        Err(refusal) => return refusal.into_response(),
    };
    let path = store.data_path(&meta);
    let shape = crate::engine::for_kind(meta.engine).map(|e| e.backup_shape());
    if shape == Some(crate::engine::BackupShape::Directory) {
        return serve_tree(&name, path, meta);
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot open {}: {e}", path.display()),
            )
        }
    };
    if file.metadata().await.is_ok_and(|m| m.is_dir()) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("backup {id:?} at {} is a directory without a manifest", path.display()),
        );
    }
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, meta.info.bytes.to_string()),
            (header::HeaderName::from_static(SHA256_HEADER), meta.info.sha256.clone()),
        ],
        body,
    )
        .into_response()
}

/// Streams a directory backup as a tar archive, written on the blocking pool into a
/// pipe whose other end is the body. A failure while writing ends the body with an
/// error, so the client sees a broken transfer rather than a short archive.
fn serve_tree(name: &str, dir: std::path::PathBuf, meta: Metadata) -> Response {
    let Ok(slot) = TREE_SLOTS.try_acquire() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{TREE_SENDS} directory backups are being sent already; try again later"),
        );
    };
    let pipe = tokio::net::unix::pipe::pipe().and_then(|(sender, receiver)| Ok((sender.into_blocking_fd()?, receiver)));
    let (writer, reader) = match pipe {
        Ok(pair) => pair,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot make a pipe to send {}: {e}", dir.display()),
            )
        }
    };
    let (instance, id) = (name.to_string(), meta.info.id.clone());
    let files = meta.files;
    let writing = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        crate::backup::archive::write(
            &dir,
            &files,
            std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::from(writer)),
        )
    });
    let end = futures_util::stream::once(async move {
        let failure = match writing.await {
            Ok(Ok(())) => return None,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(message = "Sending a backup failed.", %instance, %id, error = %failure);
        Some(Err(std::io::Error::other(failure)))
    });
    let body = futures_util::StreamExt::chain(
        tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024),
        futures_util::StreamExt::filter_map(end, futures_util::future::ready),
    );
    (
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::HeaderName::from_static(BYTES_HEADER),
                meta.info.bytes.to_string(),
            ),
            (header::HeaderName::from_static(SHA256_HEADER), meta.info.sha256),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

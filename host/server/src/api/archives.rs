//! The archive files in the data dir's `archives/` directory (what `POST
//! /v1/archive` writes): list them, download one, delete one once it is
//! kept elsewhere. For an operator who reaches the server only through
//! the API.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use tokio::io::AsyncReadExt as _;

use crate::api::AuthErrors;
use crate::app::App;
use crate::auth::{Admin, Reader};
use crate::error::{ApiError, ErrorBody};
use crate::extract::Path;
use crate::jobs::ARCHIVES;
use crate::views::{ArchiveFile, ArchiveFiles};

/// Whether `name` is one the server gives a finished archive:
/// `log-SECONDS-ID.toka-archive` (no separator, no `.partial`).
fn is_archive_name(name: &str) -> bool {
    let Some(stem) = name
        .strip_prefix("log-")
        .and_then(|n| n.strip_suffix(".toka-archive"))
    else {
        return false;
    };
    let mut parts = stem.split('-');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// The data dir's archives directory; `409 cannot_archive` without one.
fn directory(app: &App) -> Result<PathBuf, ApiError> {
    app.config
        .data_dir
        .as_ref()
        .map(|data| data.join(ARCHIVES))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "cannot_archive",
                "this server has no data dir to keep archives in",
            )
        })
}

/// The archive file `name`, which must exist.
fn file(app: &App, name: &str) -> Result<PathBuf, ApiError> {
    let missing = || {
        ApiError::not_found(format!(
            "no archive `{}` in the data dir's archives directory (moved, deleted, or never made)",
            toka_host::clip(name, 80)
        ))
    };
    if !is_archive_name(name) {
        return Err(missing());
    }
    let path = directory(app)?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing())
    }
}

/// The finished archives in the data dir's `archives` directory, oldest
/// first (files an archive job is still writing are not listed).
#[utoipa::path(get, path = "/v1/archive/files", tag = "log", security(("bearer" = [])),
    responses((status = 200, description = "The archive files", body = ArchiveFiles),
        (status = 409, description = "This server has no data dir (`cannot_archive`)", body = ErrorBody),
        AuthErrors))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _who: Reader,
) -> Result<axum::Json<ArchiveFiles>, ApiError> {
    let dir = directory(&app)?;
    let listed = tokio::task::spawn_blocking(move || {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut items: Vec<(u64, u64, ArchiveFile)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let meta = entry.metadata().ok().filter(std::fs::Metadata::is_file)?;
                is_archive_name(&name).then_some(())?;
                // Made at SECONDS, as job ID: the order they were made in.
                let mut numbers = name["log-".len()..name.len() - ".toka-archive".len()]
                    .split('-')
                    .map(|n| n.parse::<u64>().unwrap_or(0));
                let (seconds, id) = (numbers.next()?, numbers.next()?);
                Some((
                    seconds,
                    id,
                    ArchiveFile {
                        name,
                        bytes: meta.len(),
                    },
                ))
            })
            .collect();
        items.sort_by_key(|(seconds, id, _)| (*seconds, *id));
        items.into_iter().map(|(_, _, file)| file).collect()
    })
    .await
    .map_err(|e| ApiError::internal(format!("listing the archives panicked: {e}")))?;
    Ok(axum::Json(ArchiveFiles { items: listed }))
}

/// Downloads an archive file (`application/octet-stream`). Needs
/// `operator admin`: an archive holds every record it archived.
#[utoipa::path(get, path = "/v1/archive/files/{name}", tag = "log", security(("bearer" = [])),
    params(("name" = String, Path, description = "The file's name, as listed")),
    responses((status = 200, description = "The archive's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such archive file", body = ErrorBody),
        (status = 409, description = "This server has no data dir (`cannot_archive`)", body = ErrorBody),
        AuthErrors))]
pub(crate) async fn download(
    State(app): State<Arc<App>>,
    _who: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let path = file(&app, &name)?;
    let opened = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("opening archive `{name}`: {e}")))?;
    let len = opened
        .metadata()
        .await
        .map_err(|e| ApiError::internal(format!("reading archive `{name}`: {e}")))?
        .len();
    // Read in chunks as the client takes them; a read error ends the body
    // (the client sees fewer bytes than the length said).
    let chunks = futures_util::stream::unfold(Some(opened), |file| async move {
        let mut file = file?;
        let mut buf = vec![0; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        )
        .body(Body::from_stream(chunks))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Deletes an archive file, once it is kept elsewhere (and checked there:
/// `toka verify --archive FILE`). The records it holds are in no other
/// copy the server has. Needs `operator admin`.
#[utoipa::path(delete, path = "/v1/archive/files/{name}", tag = "log", security(("bearer" = [])),
    params(("name" = String, Path, description = "The file's name, as listed")),
    responses((status = 200, description = "Deleted: the file as it was", body = ArchiveFile),
        (status = 404, description = "No such archive file", body = ErrorBody),
        (status = 409, description = "This server has no data dir (`cannot_archive`)", body = ErrorBody),
        AuthErrors))]
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    _who: Admin,
    Path(name): Path<String>,
) -> Result<axum::Json<ArchiveFile>, ApiError> {
    let path = file(&app, &name)?;
    let bytes = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
    tokio::fs::remove_file(&path)
        .await
        .map_err(|e| ApiError::internal(format!("deleting archive `{name}`: {e}")))?;
    Ok(axum::Json(ArchiveFile { name, bytes }))
}

#[cfg(test)]
mod tests {
    use super::is_archive_name;

    #[test]
    fn only_the_names_the_server_gives_finished_archives_are_served() {
        assert!(is_archive_name("log-1764999999-3.toka-archive"));
        for name in [
            "log-1-2.toka-archive.partial",
            "../toka.redb",
            "log-1-2.toka-archive/../../x",
            "log--2.toka-archive",
            "log-1-2-3.toka-archive",
            "log-a-2.toka-archive",
            "notes.txt",
            "log-1-2.toka-archive\0",
        ] {
            assert!(!is_archive_name(name), "{name:?}");
        }
    }
}

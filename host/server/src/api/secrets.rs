//! Secrets: set, list and remove the values the host injects into agents'
//! outbound requests (docs/capabilities.md). Every endpoint needs
//! `operator admin`; a value goes in and never comes out.

use std::sync::Arc;

use axum::extract::State;
use toka_host::{SecretError, SecretInfo};

use crate::api::{AuthErrors, BodyErrors};
use crate::app::App;
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path};
use crate::views::{SecretRequest, SecretView};

/// The secrets, by name, without their values.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", security(("bearer" = [])),
    responses((status = 200, description = "The secrets (names, lengths, when set)", body = Vec<SecretView>), AuthErrors))]
pub(crate) async fn list(State(app): State<Arc<App>>, _who: Admin) -> axum::Json<Vec<SecretView>> {
    axum::Json(app.host.secrets().list().into_iter().map(view).collect())
}

/// Sets (or replaces) a secret. The answer names it; the value is never
/// returned by any endpoint.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", security(("bearer" = [])),
    params(("name" = String, Path, description = "The secret's name")),
    request_body = SecretRequest,
    responses((status = 200, description = "Set", body = SecretView), BodyErrors, AuthErrors))]
pub(crate) async fn set(
    State(app): State<Arc<App>>,
    _who: Admin,
    Path(name): Path<String>,
    Json(request): Json<SecretRequest>,
) -> Result<axum::Json<SecretView>, ApiError> {
    let written = {
        let (app, name) = (Arc::clone(&app), name.clone());
        // The file is written and synced: off the async threads.
        tokio::task::spawn_blocking(move || app.host.secrets().set(&name, &request.value))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    };
    written.map_err(secret_error)?;
    app.host
        .secrets()
        .list()
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| axum::Json(view(s)))
        .ok_or_else(|| ApiError::internal("the secret just set is not listed"))
}

/// Removes a secret (requests that need it are refused from now on).
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", security(("bearer" = [])),
    params(("name" = String, Path, description = "The secret's name")),
    responses((status = 200, description = "Removed", body = SecretView),
        (status = 404, description = "No such secret", body = ErrorBody), AuthErrors))]
pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    _who: Admin,
    Path(name): Path<String>,
) -> Result<axum::Json<SecretView>, ApiError> {
    let secrets = app.host.secrets();
    let info = secrets
        .list()
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            ApiError::not_found(format!("no secret named {}", toka_host::clip(&name, 100)))
        })?;
    secrets.remove(&name).map_err(secret_error)?;
    Ok(axum::Json(view(info)))
}

fn view(info: SecretInfo) -> SecretView {
    SecretView {
        name: info.name,
        len: info.len as u64,
        set_at: info.set_at,
    }
}

fn secret_error(e: SecretError) -> ApiError {
    match e {
        SecretError::BadName(_) => ApiError::unprocessable("invalid_name", e.to_string()),
        SecretError::BadValue { .. } => ApiError::unprocessable("invalid_value", e.to_string()),
        SecretError::Unknown(_) => ApiError::not_found(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

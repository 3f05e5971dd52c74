//! Components: upload (install), list, get, remove.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use toka_kernel::{ComponentSpec, Digest};
use utoipa::IntoParams;

use crate::api::{AuthErrors, Paging};
use crate::app::App;
use crate::auth::{Reader, Writer};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};
use crate::uploads::Uploader;
use crate::views::{ComponentPage, ComponentView};

/// Where an upload is installed.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InstallQuery {
    /// The name to install it under.
    name: String,
}

/// Uploads and installs a component (the `.wasm` bytes as the body),
/// validated exactly as `toka run` validates one. Installing bytes that
/// are installed already changes nothing (200).
#[utoipa::path(post, path = "/v1/components", tag = "components", security(("bearer" = [])),
    params(InstallQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component's bytes"),
    responses(
        (status = 201, description = "Installed", body = ComponentView),
        (status = 200, description = "Already installed", body = ComponentView),
        (status = 400, description = "No name given", body = ErrorBody),
        (status = 413, description = "Larger than the server accepts", body = ErrorBody),
        (status = 422, description = "Not a component this host can run as an agent (the reason is the CLI's)", body = ErrorBody),
        AuthErrors))]
pub(crate) async fn install(
    State(app): State<Arc<App>>,
    who: Uploader<1>,
    Query(query): Query<InstallQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, axum::Json<ComponentView>), ApiError> {
    let bytes = body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_body"
        };
        ApiError::new(status, code, e.body_text())
    })?;
    if bytes.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_component",
            "the body is empty: send the component's bytes",
        ));
    }
    let digest = Digest::of(&bytes);
    if let Some(existing) = app.host.state(|s| s.component(&digest).cloned()).await {
        return Ok((StatusCode::OK, axum::Json(view(&existing))));
    }
    let _compiling = app
        .compile
        .acquire()
        .await
        .map_err(|_| ApiError::stopping())?;
    let digest = app
        .host
        .as_operator(who.operator.token)
        .install(&query.name, bytes.to_vec())
        .await?;
    let installed = app
        .host
        .state(|s| s.component(&digest).cloned())
        .await
        .ok_or_else(|| ApiError::internal("the installed component is not in the state"))?;
    Ok((StatusCode::CREATED, axum::Json(view(&installed))))
}

/// A page of components.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Components after this digest (a `next_cursor`).
    cursor: Option<String>,
    /// How many (1 to 1000, default 100).
    limit: Option<usize>,
}

/// Lists installed components, by digest.
#[utoipa::path(get, path = "/v1/components", tag = "components", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, description = "A page of components", body = ComponentPage),
        (status = 400, description = "A malformed query", body = ErrorBody), AuthErrors))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _who: Reader,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<ComponentPage>, ApiError> {
    let paging = Paging::new(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(|c| crate::error::parse_id::<Digest>("component", c))
        .transpose()?;
    let (items, next_cursor) = app
        .host
        .state(|s| {
            paging.page(
                s.components()
                    .filter(|c| after.is_none_or(|a| c.digest > a))
                    .map(view),
                |c| c.digest.clone(),
            )
        })
        .await;
    Ok(axum::Json(ComponentPage { items, next_cursor }))
}

/// One component, by installed name or digest.
#[utoipa::path(get, path = "/v1/components/{component}", tag = "components", security(("bearer" = [])),
    params(("component" = String, Path, description = "An installed name or a 64-hex-digit digest")),
    responses((status = 200, description = "The component", body = ComponentView),
        (status = 404, description = "No such component", body = ErrorBody), AuthErrors))]
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    _who: Reader,
    Path(component): Path<String>,
) -> Result<axum::Json<ComponentView>, ApiError> {
    find(&app, &component).await.map(|c| axum::Json(view(&c)))
}

/// Removes a component no agent runs any more (by installed name or
/// digest): it can no longer be spawned, and its bytes leave the store with
/// the archive that takes this removal (`POST /v1/archive`).
#[utoipa::path(delete, path = "/v1/components/{component}", tag = "components", security(("bearer" = [])),
    params(("component" = String, Path, description = "An installed name or a 64-hex-digit digest")),
    responses((status = 200, description = "Removed: the component as it was", body = ComponentView),
        (status = 404, description = "No such component", body = ErrorBody),
        (status = 409, description = "A package ships it, or an agent that is not terminated runs it (the message names one)", body = ErrorBody),
        AuthErrors))]
pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    who: Writer,
    Path(component): Path<String>,
) -> Result<axum::Json<ComponentView>, ApiError> {
    let found = find(&app, &component).await?;
    app.host
        .as_operator(who.token)
        .remove_component(found.digest)
        .await?;
    Ok(axum::Json(view(&found)))
}

/// The component `component` names: a digest, else an installed name.
async fn find(app: &App, component: &str) -> Result<ComponentSpec, ApiError> {
    let found = app.host.state(|s| s.component_by(component).cloned()).await;
    found.ok_or_else(|| {
        ApiError::not_found(format!(
            "no component `{}` is installed",
            toka_host::clip(component, 80)
        ))
    })
}

pub(crate) fn view(c: &ComponentSpec) -> ComponentView {
    ComponentView {
        digest: c.digest.to_string(),
        name: c.name.clone(),
        size: c.size,
    }
}

//! Packages and the trust store: trust and remove publishers, review an
//! uploaded package, install it with an approval, list and uninstall
//! packages. Every change needs `operator admin`; listing needs `read`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use toka_host::{Approval, Installed, PublisherKey, Review, Right};
use toka_kernel::{PackageRecord, WorldState};

use crate::api::{AuthErrors, BodyErrors};
use crate::app::App;
use crate::auth::{Admin, Reader};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path};
use crate::uploads::Uploader;
use crate::views::{
    Distrusted, InstalledView, PackageView, PublisherView, ReviewView, TrustRequest,
};

/// The trusted publishers, by name, with their packages.
#[utoipa::path(get, path = "/v1/publishers", tag = "packages", security(("bearer" = [])),
    responses((status = 200, description = "The trust store", body = Vec<PublisherView>), AuthErrors))]
pub(crate) async fn publishers(
    State(app): State<Arc<App>>,
    _who: Reader,
) -> axum::Json<Vec<PublisherView>> {
    axum::Json(app.host.state(publisher_views).await)
}

/// Trusts a publisher's key under a name (recorded in the log).
#[utoipa::path(post, path = "/v1/publishers", tag = "packages", security(("bearer" = [])),
    request_body = TrustRequest,
    responses((status = 201, description = "Trusted", body = PublisherView),
        (status = 409, description = "The name or the key is trusted already", body = ErrorBody),
        BodyErrors, AuthErrors))]
pub(crate) async fn trust(
    State(app): State<Arc<App>>,
    who: Admin,
    Json(request): Json<TrustRequest>,
) -> Result<(StatusCode, axum::Json<PublisherView>), ApiError> {
    let bytes = from_hex(&request.key)
        .ok_or_else(|| ApiError::unprocessable("invalid_key", "`key` is not hex"))?;
    let key =
        PublisherKey::from_bytes(&bytes).map_err(|e| ApiError::unprocessable("invalid_key", e))?;
    app.host
        .as_operator(who.token)
        .trust(&request.name, &key)
        .await?;
    let view = app
        .host
        .state(|s| {
            publisher_views(s)
                .into_iter()
                .find(|p| p.name == request.name)
        })
        .await
        .ok_or_else(|| ApiError::internal("the trusted publisher is not in the state"))?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// Stops trusting a publisher: its packages' install tokens are revoked,
/// in one record.
#[utoipa::path(delete, path = "/v1/publishers/{name}", tag = "packages", security(("bearer" = [])),
    params(("name" = String, Path, description = "The publisher's trust-store name")),
    responses((status = 200, description = "Removed", body = Distrusted),
        (status = 404, description = "No such publisher", body = ErrorBody), AuthErrors))]
pub(crate) async fn distrust(
    State(app): State<Arc<App>>,
    who: Admin,
    Path(name): Path<String>,
) -> Result<axum::Json<Distrusted>, ApiError> {
    let packages = app.host.as_operator(who.token).distrust(&name).await?;
    Ok(axum::Json(Distrusted { name, packages }))
}

/// The installed packages, by name.
#[utoipa::path(get, path = "/v1/packages", tag = "packages", security(("bearer" = [])),
    responses((status = 200, description = "The installed packages", body = Vec<PackageView>), AuthErrors))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _who: Reader,
) -> axum::Json<Vec<PackageView>> {
    axum::Json(
        app.host
            .state(|s| s.packages().map(package_view).collect())
            .await,
    )
}

/// Reviews an uploaded package (the `.wasm` bytes as the body) against
/// the trust store, recording nothing: who signed it, what it requests,
/// what an upgrade requests anew.
#[utoipa::path(post, path = "/v1/packages/review", tag = "packages", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The package's bytes"),
    responses((status = 200, description = "What it is and asks for", body = ReviewView),
        (status = 413, description = "Larger than the server accepts", body = ErrorBody),
        (status = 422, description = "Not a signed package by a trusted publisher (the reason is named)", body = ErrorBody),
        AuthErrors))]
pub(crate) async fn review(
    State(app): State<Arc<App>>,
    who: Uploader<2>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::Json<ReviewView>, ApiError> {
    let bytes = body_bytes(body)?;
    let review = reviewed(&app, who.operator, bytes).await?;
    Ok(axum::Json(review_view(&review)))
}

/// Installs (or upgrades) an uploaded package with an approval:
/// `?approve=RIGHT` (repeatable) grants those of the requested rights (or
/// narrower ones), `?yes=true` every requested one; with neither, only
/// what the installed version already holds (an upgrade requesting
/// nothing new). The install token is the request met with the approval,
/// bound to the component.
#[utoipa::path(post, path = "/v1/packages", tag = "packages", security(("bearer" = [])),
    params(
        ("approve" = Option<Vec<String>>, Query, description = "A right to grant (repeatable)"),
        ("yes" = Option<bool>, Query, description = "Grant every requested right")),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The package's bytes"),
    responses((status = 201, description = "Installed", body = InstalledView),
        (status = 409, description = "The same version is installed", body = ErrorBody),
        (status = 413, description = "Larger than the server accepts", body = ErrorBody),
        (status = 422, description = "Not a signed package by a trusted publisher, not an agent, or an approval that widens or is missing (named)", body = ErrorBody),
        AuthErrors))]
pub(crate) async fn install(
    State(app): State<Arc<App>>,
    uploader: Uploader<2>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, axum::Json<InstalledView>), ApiError> {
    let who = uploader.operator.clone();
    let approval = approval(query.as_deref().unwrap_or(""))?;
    let bytes = body_bytes(body)?;
    let review = reviewed(&app, who.clone(), bytes).await?;
    let _compiling = app
        .compile
        .acquire()
        .await
        .map_err(|_| ApiError::stopping())?;
    let installed = app
        .host
        .as_operator(who.token)
        .install_package(&review, &approval)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(installed_view(&installed))))
}

/// Uninstalls a package: its agents are terminated and its install token
/// revoked.
#[utoipa::path(delete, path = "/v1/packages/{name}", tag = "packages", security(("bearer" = [])),
    params(("name" = String, Path, description = "The package's name")),
    responses((status = 200, description = "Uninstalled: the package as it was", body = PackageView),
        (status = 404, description = "No such package", body = ErrorBody), AuthErrors))]
pub(crate) async fn uninstall(
    State(app): State<Arc<App>>,
    who: Admin,
    Path(name): Path<String>,
) -> Result<axum::Json<PackageView>, ApiError> {
    let view = app.host.state(|s| s.package(&name).map(package_view)).await;
    app.host.as_operator(who.token).uninstall(&name).await?;
    view.map(axum::Json)
        .ok_or_else(|| ApiError::internal("the uninstalled package was not in the state"))
}

/// A package checked against the trust store, off the async threads, one
/// at a time (see [`App::reviews`]).
async fn reviewed(app: &Arc<App>, who: Admin, bytes: Bytes) -> Result<Review, ApiError> {
    let turn = Arc::clone(&app.reviews)
        .acquire_owned()
        .await
        .map_err(|_| ApiError::stopping())?;
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        app.host.as_operator(who.token).review(bytes.to_vec())
    })
    .await
    .map_err(|e| ApiError::internal(format!("reviewing the package panicked: {e}")))?
    .map_err(ApiError::from)
}

fn body_bytes(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, ApiError> {
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
            "invalid_package",
            "the body is empty: send the package's bytes",
        ));
    }
    Ok(bytes)
}

/// The approval a query names: `approve=RIGHT` (repeatable) or `yes=true`.
fn approval(query: &str) -> Result<Approval, ApiError> {
    let mut rights = Vec::new();
    let mut yes = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "approve" => rights.push(
                value
                    .parse::<Right>()
                    .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?,
            ),
            "yes" => {
                yes = value.parse().map_err(|_| {
                    ApiError::bad_request("invalid_query", "`yes` is `true` or `false`")
                })?;
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter `{other}` (approve, yes)"),
                ));
            }
        }
    }
    match (yes, rights.is_empty()) {
        (true, false) => Err(ApiError::bad_request(
            "invalid_query",
            "give either `yes` or `approve`, not both",
        )),
        (true, true) => Ok(Approval::All),
        (false, true) => Ok(Approval::Held),
        (false, false) => Ok(Approval::Rights(rights)),
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// What the API (and the CLI) shows of a review.
#[must_use]
pub fn review_view(review: &Review) -> ReviewView {
    let manifest = review.package().manifest();
    ReviewView {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        publisher: review.publisher().to_owned(),
        description: manifest.description.clone(),
        digest: review.package().digest().to_string(),
        signed_hash: review.package().signed_hash(),
        requested: strings(review.requested()),
        budgets: strings(review.budgets()),
        previous: review.previous().map(|p| p.version.clone()),
        new_rights: strings(&review.new_rights()),
    }
}

/// What the API (and the CLI) shows of an install.
#[must_use]
pub fn installed_view(installed: &Installed) -> InstalledView {
    InstalledView {
        package: package_view(&installed.record),
        granted: strings(&installed.granted),
        previous: installed.previous.clone(),
        rebound: installed.rebound,
    }
}

/// An installed package as the API shows it.
#[must_use]
pub fn package_view(p: &PackageRecord) -> PackageView {
    PackageView {
        name: p.name.clone(),
        version: p.version.clone(),
        publisher: p.publisher.clone(),
        component: p.component.to_string(),
        signed_hash: p.signed_hash.clone(),
        approved: p.approved.clone(),
        token: p.token.to_string(),
    }
}

fn publisher_views(state: &WorldState) -> Vec<PublisherView> {
    state
        .publishers()
        .map(|p| PublisherView {
            name: p.name.clone(),
            key: toka_kernel::to_hex(&p.key),
            fingerprint: PublisherKey::from_bytes(&p.key)
                .map_or_else(|_| String::new(), |k| k.fingerprint()),
            packages: state
                .packages()
                .filter(|pkg| pkg.publisher == p.name)
                .map(|pkg| pkg.name.clone())
                .collect(),
        })
        .collect()
}

//! Serving the cells of a cluster from one address: `/cells/{n}/...` goes to
//! cell n's own router — the whole single-host API and dashboard, unchanged
//! — while a cell this host does not serve answers `307` to the host that
//! does (from the cluster's leases), or `503 cell_unavailable` when none
//! does yet. `GET /cells` lists the cells this host serves. A host of one
//! cell ([`OneCell`]) serves it at its root and under `/cells/{n}/` alike
//! and answers the same way for the others.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use toka_host::{EventStore, Host};
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::app::App;
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::serve::{ServeError, app, router, stop_host};

/// Where a cell is served, when this host does not serve it: its owner's
/// base URL.
pub type OwnerOf = Box<dyn Fn(u32) -> Option<String> + Send + Sync>;

/// How long an owner looked up for a cell served elsewhere is answered
/// from memory: requests for other cells cost one lookup per cell per
/// period, however many come.
const OWNER_FRESH: Duration = Duration::from_secs(1);

/// The cells one server serves, each with its own host; cells come and go
/// as leases are won and lost.
pub struct Cells {
    config: ServeConfig,
    /// How many cells the cluster has: `/cells/{n}` beyond is not found.
    total: u32,
    owners: Arc<Owners>,
    closing: watch::Receiver<bool>,
    close: watch::Sender<bool>,
    served: RwLock<BTreeMap<u32, Served>>,
}

struct Served {
    app: Arc<App>,
    router: Router,
    host: Arc<Host>,
    /// Ends this cell's event streams when it is removed.
    close: watch::Sender<bool>,
}

impl std::fmt::Debug for Cells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cells")
            .field("served", &self.served())
            .finish_non_exhaustive()
    }
}

impl Cells {
    /// No cells yet, of a cluster of `total`; every cell's API is
    /// configured by `config` (its data dir, if any, is not registered in:
    /// the CLI's local client speaks to a single host). `owner_of` says
    /// where a cell not served here is.
    #[must_use]
    pub fn new(config: ServeConfig, total: u32, owner_of: OwnerOf) -> Arc<Cells> {
        let (close, closing) = watch::channel(false);
        Arc::new(Cells {
            config,
            total,
            owners: Owners::new(owner_of),
            closing,
            close,
            served: RwLock::default(),
        })
    }

    /// The cells served here, ascending.
    #[must_use]
    pub fn served(&self) -> Vec<u32> {
        self.read().keys().copied().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, Served>> {
        self.served.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `cell` with `host` (opened over `store`) from now on.
    ///
    /// # Errors
    ///
    /// [`ServeError`] when the store records no usable root key.
    pub fn add(&self, cell: u32, host: Host, store: Arc<dyn EventStore>) -> Result<(), ServeError> {
        let host = Arc::new(host);
        let (close, closing) = watch::channel(*self.closing.borrow());
        // The server's own closing ends this cell's streams too (and this
        // task ends with the cell's).
        let mut server_closing = self.closing.clone();
        let mut cell_closing = close.subscribe();
        let cell_close = close.clone();
        tokio::spawn(async move {
            tokio::select! {
                closed = server_closing.wait_for(|c| *c) => if closed.is_ok() {
                    cell_close.send_replace(true);
                },
                _ = cell_closing.wait_for(|c| *c) => {}
            }
        });
        let mut config = self.config.clone();
        config.data_dir = None;
        let app = app(Arc::clone(&host), store, config, closing)?;
        let router = router(&app);
        self.served
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                cell,
                Served {
                    app,
                    router,
                    host,
                    close,
                },
            );
        Ok(())
    }

    /// Stops serving `cell`: new requests go elsewhere at once; running
    /// tasks get `grace`, then its host stops (what was still running runs
    /// again wherever the cell goes next).
    ///
    /// # Errors
    ///
    /// [`ServeError::Host`] when the host does not stop cleanly.
    pub async fn remove(&self, cell: u32, grace: Duration) -> Result<(), ServeError> {
        let removed = self
            .served
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&cell);
        let Some(served) = removed else {
            return Ok(());
        };
        served.close.send_replace(true);
        let still_running = served.host.drain(grace).await;
        if still_running > 0 {
            tracing::warn!(
                cell,
                tasks = still_running,
                "tasks still running when the cell left this host run again where it goes"
            );
        }
        drop(served.app);
        drop(served.router);
        stop_host(served.host).await
    }

    /// Ends every cell's event streams (the server is shutting down).
    pub(crate) fn close(&self) {
        self.close.send_replace(true);
    }

    /// The router of the cells: `/cells/{n}/...` to cell n, `/cells` to the
    /// list.
    pub(crate) fn router(self: &Arc<Cells>) -> Router {
        Router::new()
            .fallback(dispatch)
            .with_state(Arc::clone(self))
    }
}

/// Where cells not served here are: their owners' base URLs, each looked
/// up at most once per [`OWNER_FRESH`] (requests wait for the one lookup
/// in progress), so requests for other cells cost the cluster one lookup
/// per cell per period, however many come.
struct Owners {
    owner_of: OwnerOf,
    /// The owners last looked up, by cell, with when.
    known: tokio::sync::Mutex<BTreeMap<u32, (Instant, Option<String>)>>,
}

impl Owners {
    fn new(owner_of: OwnerOf) -> Arc<Owners> {
        Arc::new(Owners {
            owner_of,
            known: tokio::sync::Mutex::default(),
        })
    }

    async fn owner(self: &Arc<Owners>, cell: u32) -> Option<String> {
        let mut known = self.known.lock().await;
        if let Some((at, owner)) = known.get(&cell)
            && at.elapsed() < OWNER_FRESH
        {
            return owner.clone();
        }
        let owner = tokio::task::spawn_blocking({
            let owners = Arc::clone(self);
            move || (owners.owner_of)(cell)
        })
        .await
        .ok()
        .flatten();
        known.insert(cell, (Instant::now(), owner.clone()));
        owner
    }

    /// The answer to a request for `rest` (path and query) of `cell`, which
    /// is not served here: `307` to `/cells/{cell}{rest}` at its owner, or
    /// `503` while no host serves it.
    async fn elsewhere(self: &Arc<Owners>, cell: u32, rest: &str) -> Response {
        match self.owner(cell).await {
            Some(url) => (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, format!("{url}/cells/{cell}{rest}"))],
                ApiError::new(
                    StatusCode::TEMPORARY_REDIRECT,
                    "cell_elsewhere",
                    format!("cell {cell} is served at {url}"),
                ),
            )
                .into_response(),
            None => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cell_unavailable",
                format!("no host serves cell {cell} right now; try again in a few seconds"),
            )
            .into_response(),
        }
    }
}

/// `/cells/{n}{inner}`: the cell's number and the rest of the path, or the
/// answer when `path` names no cell of `total`.
fn cell_path(path: &str, total: u32) -> Result<(u32, &str), Box<Response>> {
    let rest = path.strip_prefix("/cells/").unwrap_or(path);
    let (number, inner) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Ok(cell) = number.parse::<u32>() else {
        let answer = ApiError::not_found(format!("`{number}` is not a cell number"));
        return Err(Box::new(answer.into_response()));
    };
    if cell >= total {
        return Err(Box::new(
            ApiError::not_found(format!("no cell {cell}: the cluster has cells 0..{total}"))
                .into_response(),
        ));
    }
    if inner.is_empty() {
        // The dashboard's links are relative to `/cells/{n}/`.
        return Err(Box::new(
            (
                StatusCode::PERMANENT_REDIRECT,
                [(header::LOCATION, format!("/cells/{cell}/"))],
            )
                .into_response(),
        ));
    }
    Ok((cell, inner))
}

/// Hands `request` to `router` with its path and query set to `path_and_query`.
async fn forward(router: Router, mut request: Request, path_and_query: &str) -> Response {
    let Ok(uri) = path_and_query.parse() else {
        return ApiError::not_found("not a valid path").into_response();
    };
    *request.uri_mut() = uri;
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The front of a host serving one cell of a cluster (`toka serve
/// --cluster --cell N`): the cell's API and dashboard at the root and at
/// `/cells/N/`, as a host serving its share has them; a request for
/// another cell (`/cells/M/...`, or an agent or task whose id names cell M)
/// answers where to go, as [`Cells`] does.
pub struct OneCell {
    cell: u32,
    total: u32,
    owners: Arc<Owners>,
}

impl std::fmt::Debug for OneCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneCell")
            .field("cell", &self.cell)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl OneCell {
    /// The front of cell `cell` of a cluster of `total`; `owner_of` says
    /// where another cell is.
    #[must_use]
    pub fn new(cell: u32, total: u32, owner_of: OwnerOf) -> Arc<OneCell> {
        Arc::new(OneCell {
            cell,
            total,
            owners: Owners::new(owner_of),
        })
    }

    /// `router` (the cell's whole API) behind this front.
    pub(crate) fn wrap(self: &Arc<OneCell>, router: Router) -> Router {
        Router::new()
            .fallback(one_cell)
            .with_state((Arc::clone(self), router))
    }
}

/// Sends a request to the cell's router, or says where another cell is.
async fn one_cell(
    State((front, router)): State<(Arc<OneCell>, Router)>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_owned();
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if path == "/cells" || path == "/cells/" {
        return axum::Json(serde_json::json!({ "cells": [front.cell] })).into_response();
    }
    let inner = if path.starts_with("/cells/") {
        match cell_path(&path, front.total) {
            Ok((cell, inner)) if cell == front.cell => inner,
            Ok((cell, inner)) => {
                return front
                    .owners
                    .elsewhere(cell, &format!("{inner}{query}"))
                    .await;
            }
            Err(answer) => return *answer,
        }
    } else {
        &path
    };
    if let Some(home) = home_of(request.method(), inner, front.total)
        && home != front.cell
    {
        return front
            .owners
            .elsewhere(home, &format!("{inner}{query}"))
            .await;
    }
    let to = format!("{inner}{query}");
    forward(router, request, &to).await
}

/// The cell an API path's agent or task lives in, by its id (whose first
/// four hex digits are its cell): `/v1/agents/{id}...`, `/v1/tasks/{id}...`.
/// `None` for other paths, ids of no cell of the cluster, and scheduling
/// (`POST /v1/agents/{id}/tasks` sends the task from the cell asked).
fn home_of(method: &axum::http::Method, path: &str, total: u32) -> Option<u32> {
    let rest = path
        .strip_prefix("/v1/agents/")
        .or_else(|| path.strip_prefix("/v1/tasks/"))?;
    let (id, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if method == axum::http::Method::POST && tail == "/tasks" {
        return None;
    }
    let id: toka_kernel::EntityId = id.parse().ok()?;
    let home = u32::from(id.cell());
    (home < total).then_some(home)
}

/// Sends a request to its cell's router, or says where the cell is.
async fn dispatch(State(cells): State<Arc<Cells>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/cells" || path == "/cells/" {
        let served = cells.served();
        return axum::Json(serde_json::json!({ "cells": served })).into_response();
    }
    if !path.starts_with("/cells/") {
        return ApiError::not_found(
            "this host serves cells of a cluster: ask /cells/{n}/v1/... (GET /cells lists them)",
        )
        .into_response();
    }
    let (cell, inner) = match cell_path(&path, cells.total) {
        Ok(place) => place,
        Err(answer) => return *answer,
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let Some(home) = home_of(request.method(), inner, cells.total)
        && home != cell
    {
        // An agent or task of another cell: ask that cell (this host's
        // `/cells/{m}`, which says where it is when not here).
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("/cells/{home}{inner}{query}"))],
            ApiError::new(
                StatusCode::TEMPORARY_REDIRECT,
                "cell_elsewhere",
                format!("it lives in cell {home}"),
            ),
        )
            .into_response();
    }
    let router = cells.read().get(&cell).map(|s| s.router.clone());
    let rest = format!("{inner}{query}");
    match router {
        Some(router) => forward(router, request, &rest).await,
        None => cells.owners.elsewhere(cell, &rest).await,
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt as _;

    use super::{OneCell, home_of};

    /// What the front of cell 1 of 4 answers `method path`: the status,
    /// the `Location`, and the path the cell's own router was given.
    async fn ask(method: Method, path: &str) -> (StatusCode, Option<String>, String) {
        let inner = Router::new()
            .fallback(|request: axum::extract::Request| async move { request.uri().to_string() });
        let front = OneCell::new(
            1,
            4,
            Box::new(|cell| (cell == 2).then(|| "http://owner:9".to_owned())),
        );
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let answer = front.wrap(inner).oneshot(request).await.unwrap();
        let status = answer.status();
        let location = answer
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(answer.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, location, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_host_of_one_cell_serves_it_at_its_root_and_under_cells_n_and_says_where_others_are()
    {
        let agent = "0002aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let own = "0001aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for (path, given) in [
            ("/v1/status", "/v1/status"),
            ("/cells/1/v1/status?x=1", "/v1/status?x=1"),
            (
                &format!("/v1/agents/{own}") as &str,
                &format!("/v1/agents/{own}") as &str,
            ),
        ] {
            let (status, _, body) = ask(Method::GET, path).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, given), "{path}");
        }
        let (_, _, cells) = ask(Method::GET, "/cells").await;
        assert_eq!(cells, r#"{"cells":[1]}"#);
        // Another cell, by number or by an id: its owner, under /cells/2.
        for (path, to) in [
            (
                "/cells/2/v1/status",
                "http://owner:9/cells/2/v1/status".to_owned(),
            ),
            (
                &format!("/v1/agents/{agent}/state?k=v") as &str,
                format!("http://owner:9/cells/2/v1/agents/{agent}/state?k=v"),
            ),
        ] {
            let (status, location, _) = ask(Method::GET, path).await;
            assert_eq!(status, StatusCode::TEMPORARY_REDIRECT, "{path}");
            assert_eq!(location.as_deref(), Some(to.as_str()));
        }
        // Scheduling on another cell's agent is sent from here.
        let schedule = format!("/v1/agents/{agent}/tasks");
        let (status, _, body) = ask(Method::POST, &schedule).await;
        assert_eq!((status, body), (StatusCode::OK, schedule));
        // A cell nobody serves; a cell the cluster does not have.
        let (status, _, body) = ask(Method::GET, "/cells/3/v1/status").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no host serves cell 3"), "{body}");
        let (status, _, body) = ask(Method::GET, "/cells/9/v1/status").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body.contains("no cell 9: the cluster has cells 0..4"),
            "{body}"
        );
    }

    #[test]
    fn an_agent_or_task_path_names_the_cell_its_id_carries() {
        let agent = "0002aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for path in [
            format!("/v1/agents/{agent}"),
            format!("/v1/agents/{agent}/state"),
            format!("/v1/tasks/{agent}"),
        ] {
            assert_eq!(home_of(&Method::GET, &path, 4), Some(2), "{path}");
        }
        // Terminating goes to the agent's cell; scheduling is sent from here.
        let terminate = format!("/v1/agents/{agent}/terminate");
        assert_eq!(home_of(&Method::POST, &terminate, 4), Some(2));
        let schedule = format!("/v1/agents/{agent}/tasks");
        assert_eq!(home_of(&Method::POST, &schedule, 4), None);
        assert_eq!(home_of(&Method::GET, &schedule, 4), Some(2));
        // No cell of the cluster, not an id, not an entity's path.
        assert_eq!(
            home_of(&Method::GET, &format!("/v1/agents/{agent}"), 2),
            None
        );
        assert_eq!(home_of(&Method::GET, "/v1/agents/not-an-id", 4), None);
        assert_eq!(home_of(&Method::GET, "/v1/agents", 4), None);
        assert_eq!(home_of(&Method::GET, "/v1/status", 4), None);
    }
}

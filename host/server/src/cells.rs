//! Serving the cells of a cluster from one address: `/cells/{n}/...` goes to
//! cell n's own router — the whole single-host API and dashboard, unchanged
//! — while a cell this host does not serve answers `307` to the host that
//! does (from the cluster's leases), or `503 cell_unavailable` when none
//! does yet. `GET /cells` lists the cells this host serves.

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
    owner_of: OwnerOf,
    /// The owners last looked up, by cell, with when.
    owners: tokio::sync::Mutex<BTreeMap<u32, (Instant, Option<String>)>>,
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
            owner_of,
            owners: tokio::sync::Mutex::default(),
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

    /// Where `cell` is served when not here: looked up at most once per
    /// [`OWNER_FRESH`] (requests wait for the one lookup in progress).
    async fn owner(self: &Arc<Cells>, cell: u32) -> Option<String> {
        let mut owners = self.owners.lock().await;
        if let Some((at, owner)) = owners.get(&cell)
            && at.elapsed() < OWNER_FRESH
        {
            return owner.clone();
        }
        let owner = tokio::task::spawn_blocking({
            let cells = Arc::clone(self);
            move || (cells.owner_of)(cell)
        })
        .await
        .ok()
        .flatten();
        owners.insert(cell, (Instant::now(), owner.clone()));
        owner
    }

    /// The router of the cells: `/cells/{n}/...` to cell n, `/cells` to the
    /// list.
    pub(crate) fn router(self: &Arc<Cells>) -> Router {
        Router::new()
            .fallback(dispatch)
            .with_state(Arc::clone(self))
    }
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
async fn dispatch(State(cells): State<Arc<Cells>>, mut request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/cells" || path == "/cells/" {
        let served = cells.served();
        return axum::Json(serde_json::json!({ "cells": served })).into_response();
    }
    let Some(rest) = path.strip_prefix("/cells/") else {
        return ApiError::not_found(
            "this host serves cells of a cluster: ask /cells/{n}/v1/... (GET /cells lists them)",
        )
        .into_response();
    };
    let (number, inner) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Ok(cell) = number.parse::<u32>() else {
        return ApiError::not_found(format!("`{number}` is not a cell number")).into_response();
    };
    if cell >= cells.total {
        return ApiError::not_found(format!(
            "no cell {cell}: the cluster has cells 0..{}",
            cells.total
        ))
        .into_response();
    }
    if inner.is_empty() {
        // The dashboard's links are relative to `/cells/{n}/`.
        return (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, format!("/cells/{cell}/"))],
        )
            .into_response();
    }
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
    let Some(router) = router else {
        return match cells.owner(cell).await {
            Some(url) => (
                StatusCode::TEMPORARY_REDIRECT,
                [(
                    header::LOCATION,
                    format!("{url}/cells/{cell}{inner}{query}"),
                )],
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
        };
    };
    let Ok(uri) = format!("{inner}{query}").parse() else {
        return ApiError::not_found("not a valid path").into_response();
    };
    *request.uri_mut() = uri;
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::home_of;

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

//! Running the server: bind (refusing a non-loopback address without TLS),
//! register in the data dir, serve until SIGTERM or SIGINT, then shut down
//! gracefully: stop accepting, end the event streams, let running tasks
//! finish within the grace period, commit, and stop the host.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use toka_host::{EventStore, Host, HostError, OperatorLevel};
use tokio::sync::watch;

use crate::app::App;
use crate::config::ServeConfig;
use crate::connections::{Admission, Admit, Listener, Peer};
use crate::error::ApiError;
use crate::registration::Registration;

/// Why a server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A non-loopback address without TLS.
    #[error(
        "refusing to listen on {0} without TLS: operator tokens would cross the network in the clear; give --tls-cert and --tls-key, or --insecure"
    )]
    NeedsTls(SocketAddr),
    /// The certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why, e.g. "address already in use".
        reason: String,
    },
    /// The registration files cannot be written.
    #[error("registering the server in the data dir: {0}")]
    Register(String),
    /// The host failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Http(String),
}

/// A server that is listening (see [`Server::bind`]).
#[derive(Debug)]
pub struct Server {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    config: ServeConfig,
    /// Set for a host of one cell of a cluster: the front that says where
    /// the other cells are.
    front: Option<Arc<crate::cells::OneCell>>,
    /// The connections it holds.
    connections: Arc<Admission>,
}

impl Server {
    /// Checks the configuration and binds the address; nothing is written
    /// yet.
    ///
    /// # Errors
    ///
    /// [`ServeError::NeedsTls`], [`ServeError::Tls`] or [`ServeError::Bind`].
    pub async fn bind(config: ServeConfig) -> Result<Server, ServeError> {
        let addr = config.listen;
        if !addr.ip().is_loopback() && config.tls.is_none() && !config.insecure {
            return Err(ServeError::NeedsTls(addr));
        }
        let tls = match &config.tls {
            Some((certificate, key)) => {
                install_crypto();
                let loaded = axum_server::tls_rustls::RustlsConfig::from_pem_file(certificate, key)
                    .await
                    .map_err(|e| {
                        ServeError::Tls(format!(
                            "{} / {}: {e}",
                            certificate.display(),
                            key.display()
                        ))
                    })?;
                // The server speaks HTTP/1.1 only (see `serve_http`): it
                // must not offer h2 in the handshake.
                let mut only_http1 = (*loaded.get_inner()).clone();
                only_http1.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(axum_server::tls_rustls::RustlsConfig::from_config(
                    Arc::new(only_http1),
                ))
            }
            None => None,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(|e| ServeError::Bind {
            addr,
            reason: e.to_string(),
        })?;
        let addr = listener.local_addr().map_err(|e| ServeError::Bind {
            addr,
            reason: e.to_string(),
        })?;
        let (max, fewer) = crate::connections::fit_to_open_files(config.max_connections);
        if let Some(why) = fewer {
            tracing::warn!("{why}");
        }
        let connections = Admission::new(max, config.max_connections_per_client);
        Ok(Server {
            listener,
            addr,
            tls,
            config,
            front: None,
            connections,
        })
    }

    /// Serves one cell of a cluster behind `front`: its API at the root and
    /// at `/cells/N/`, and where to go for the other cells.
    #[must_use]
    pub fn in_cell(mut self, front: Arc<crate::cells::OneCell>) -> Server {
        self.front = Some(front);
        self
    }

    /// The address it listens on (with the port chosen, for port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL a local client reaches it at.
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let host = if self.addr.ip().is_unspecified() {
            match self.addr {
                SocketAddr::V4(_) => "127.0.0.1".to_owned(),
                SocketAddr::V6(_) => "[::1]".to_owned(),
            }
        } else {
            match self.addr {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            }
        };
        format!("{scheme}://{host}:{}", self.addr.port())
    }

    /// Serves `host` (opened over `store`) until `stop` resolves (e.g. a
    /// signal) or the host stops by itself (its log failed: a full disk),
    /// then shuts down gracefully and stops the host.
    ///
    /// # Errors
    ///
    /// [`ServeError`] when registering, serving or stopping fails, and
    /// [`HostError::Stopped`] with the reason when the host stopped by
    /// itself (a server whose log cannot be written does not go on
    /// answering as if it could).
    pub async fn run(
        self,
        host: Host,
        store: Arc<dyn EventStore>,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let url = self.url();
        let Server {
            listener,
            tls,
            config,
            front,
            connections,
            ..
        } = self;
        let data_dir = config.data_dir.clone();
        let grace = config.grace;
        let host_stopped = host.stopped();
        let host = Arc::new(host);
        if let Some(dir) = &data_dir {
            let admin = host.mint(&[OperatorLevel::Admin.right()], &[], None)?;
            let registration = Registration {
                url: url.clone(),
                pid: std::process::id(),
                certificate: config.tls.as_ref().map(|(c, _)| c.clone()),
            };
            registration
                .write(dir, &admin.to_base64())
                .map_err(ServeError::Register)?;
        }
        let (closing_tx, closing) = watch::channel(false);
        let app = app(Arc::clone(&host), store, config, closing)?;
        app.count_connections(Arc::clone(&connections));
        let retention = tokio::spawn(crate::retention::run(Arc::clone(&app)));
        let handle = axum_server::Handle::<Peer>::new();
        let routes = match &front {
            Some(front) => front.wrap(router(&app)),
            None => router(&app),
        };
        let served = serve_http(listener, tls, connections, routes, handle.clone());
        tracing::info!(%url, "serving");
        let failed = tokio::select! {
            // The caller's stop first: one that watches the host too (a
            // cell's, which steps down) says why when both are ready.
            biased;
            () = stop => None,
            stopped = host_stopped => Some(stopped),
        };
        match &failed {
            None => tracing::info!("shutting down"),
            Some(stopped) => tracing::error!(%stopped, "shutting down"),
        }
        // Streams end, new connections are refused, requests in flight get
        // the grace period; running tasks too.
        closing_tx.send_replace(true);
        handle.graceful_shutdown(Some(grace));
        let still_running = host.drain(grace).await;
        if still_running > 0 {
            tracing::warn!(
                tasks = still_running,
                "tasks still running after the grace period run again at the next start"
            );
        }
        // Whatever serving ended with, the jobs stop and the host stops.
        let result = served
            .await
            .map_err(|e| ServeError::Http(e.to_string()))
            .and_then(|served| served.map_err(ServeError::Http));
        // The retention policies end with the server (one forgetting
        // finishes its record first; an archive job is stopped below).
        if let Err(e) = retention.await {
            tracing::warn!(error = %e, "the retention policies ended abnormally");
        }
        // An archive being written stops before its cut (the file goes, the
        // log stays as it is); one past its cut finishes deleting.
        if !app.archives.stop(ARCHIVE_STOP).await {
            tracing::warn!(
                "the archive job did not end in time; the next start finishes what its cut began"
            );
        }
        drop(app);
        if let Some(dir) = &data_dir {
            Registration::remove(dir);
        }
        stop_host(host).await?;
        match failed {
            Some(stopped) => Err(HostError::Stopped(stopped).into()),
            None => result,
        }
    }
}

/// Serves `router` on `listener`, holding its connections to
/// `connections` (see [`crate::connections`]), until `handle` shuts it
/// down. HTTP/1.1 only: an HTTP/2 connection carries many requests at
/// once and hyper has no idle timeout for it, so one connection could be
/// held for ever and the per-connection bounds would not bound requests.
/// Every client of the API (the CLI, browsers, the cluster's hosts)
/// speaks HTTP/1.1.
fn serve_http(
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    connections: Arc<Admission>,
    router: Router,
    handle: axum_server::Handle<Peer>,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let admit = Admit;
    tokio::spawn(async move {
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|e| e.to_string())?;
        let mut server =
            axum_server::Server::<Peer>::from_listener(Listener::new(listener, connections))
                .handle(handle)
                .http1_only()
                .first_request_timeout(crate::connections::FIRST_REQUEST);
        server
            .http_builder()
            .http1()
            .header_read_timeout(crate::connections::IDLE);
        match tls {
            Some(tls) => {
                let tls = axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(admit);
                server.acceptor(tls).serve(service).await
            }
            None => server.acceptor(admit).serve(service).await,
        }
        .map_err(|e| e.to_string())
    })
}

impl Server {
    /// Serves the cells in `cells` (they come and go while it runs) until
    /// `stop` resolves; then ends their event streams and stops accepting
    /// requests, giving those in flight the grace period. The cells stay:
    /// the caller removes them (and releases their leases).
    ///
    /// # Errors
    ///
    /// [`ServeError::Http`] when serving fails.
    pub async fn run_cells(
        self,
        cells: Arc<crate::cells::Cells>,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let url = self.url();
        let Server {
            listener,
            tls,
            config,
            connections,
            ..
        } = self;
        let handle = axum_server::Handle::<Peer>::new();
        let served = serve_http(listener, tls, connections, cells.router(), handle.clone());
        tracing::info!(%url, "serving cells");
        stop.await;
        cells.close();
        handle.graceful_shutdown(Some(config.grace));
        served
            .await
            .map_err(|e| ServeError::Http(e.to_string()))?
            .map_err(ServeError::Http)
    }
}

/// How long a stopping server waits for an archive job past its cut to
/// finish deleting what it archived.
const ARCHIVE_STOP: Duration = Duration::from_secs(120);

/// Stops the host once the last request holding it is done.
pub(crate) async fn stop_host(mut host: Arc<Host>) -> Result<(), ServeError> {
    for _ in 0..100 {
        match Arc::try_unwrap(host) {
            Ok(host) => return Ok(host.shutdown().await?),
            Err(shared) => host = shared,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still held (a request still reading the log back on a blocking
    // thread): dropping it does not wait for the writer; everything
    // acknowledged was durable already.
    drop(host);
    Ok(())
}

/// The data dir's root public key, as the store records it.
/// The API's state for `host`, opened over `store`: its root key and
/// limits are the store's.
pub(crate) fn app(
    host: Arc<Host>,
    store: Arc<dyn EventStore>,
    config: ServeConfig,
    closing: watch::Receiver<bool>,
) -> Result<Arc<App>, ServeError> {
    let root = store_root(&*store)?;
    let limits = store.limits().map_err(|e| ServeError::Host(e.into()))?;
    Ok(Arc::new(App::new(
        host, store, root, limits, config, closing,
    )))
}

fn store_root(store: &dyn EventStore) -> Result<toka_host::PublicKey, ServeError> {
    let bytes = store
        .root_public_key()
        .map_err(|e| ServeError::Host(e.into()))?
        .ok_or_else(|| ServeError::Register("the data dir records no root public key".into()))?;
    toka_host::PublicKey::from_bytes(&bytes, toka_host::Algorithm::Ed25519)
        .map_err(|e| ServeError::Register(format!("the data dir's root public key: {e}")))
}

/// The whole router: the API, its OpenAPI document, the dashboard, and
/// JSON answers for unknown routes.
pub(crate) fn router(app: &Arc<App>) -> Router {
    let (api, openapi) = crate::api::routes(app);
    let openapi = Arc::new(openapi);
    api.route(
        "/v1/openapi.json",
        axum::routing::get(move || {
            let openapi = Arc::clone(&openapi);
            async move { axum::Json((*openapi).clone()) }
        }),
    )
    .merge(crate::dashboard::routes())
    .fallback(|| async { ApiError::not_found("no such endpoint (see /v1/openapi.json)") })
    .method_not_allowed_fallback(|| async {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method (see /v1/openapi.json)",
        )
    })
    .layer(axum::middleware::from_fn_with_state(
        Arc::clone(app),
        crate::oversize::refuse_oversize,
    ))
    .layer(axum::middleware::from_fn(crate::pace::paced))
    .with_state(Arc::clone(app))
}

/// rustls's process-wide crypto provider (ring), once.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

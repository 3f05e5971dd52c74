//! The connection to a NATS JetStream cluster, and the layout every host
//! agrees on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use toka_kernel::Limits;

/// The KV bucket holding the cluster's configuration (`config`).
pub(crate) const CONFIG_BUCKET: &str = "toka_cluster";
/// The key of [`ClusterConfig`] in [`CONFIG_BUCKET`].
pub(crate) const CONFIG_KEY: &str = "config";
/// How long a request to NATS may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one attempt to connect to a server waits for it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long reading the cluster's configuration is tried before it fails.
const CONFIG_PATIENCE: Duration = Duration::from_secs(30);

/// What `toka cluster init` records once, and every host reads: fixed for
/// the cluster's life.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterConfig {
    /// How many cells the cluster has (`0..cells`).
    pub cells: u32,
    /// JetStream replicas of every stream and bucket (1, or 3 on a 3-node
    /// cluster).
    pub replicas: u32,
    /// The cluster's root public key (32 bytes): every cell's tokens are
    /// rooted in it.
    pub root_public_key: Vec<u8>,
    /// The kernel limits every cell's log is written under.
    pub limits: Limits,
    /// Each cell's id (what the host derives outbound idempotency keys
    /// from), by cell number.
    pub cell_ids: Vec<[u8; 16]>,
    /// A lease's time to live, in milliseconds: a cell whose owner stopped
    /// renewing is free again after at most this long.
    pub lease_ttl_ms: u64,
}

impl ClusterConfig {
    /// A configuration for a new cluster: `cells` cells, each with a fresh
    /// random id, under the default kernel limits.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Invalid`] when the system has no randomness to give.
    pub fn new(
        cells: u32,
        replicas: u32,
        root_public_key: Vec<u8>,
        lease_ttl: Duration,
    ) -> Result<ClusterConfig, ClusterError> {
        let cell_ids = (0..cells.min(MAX_CELLS))
            .map(|_| crate::store::event_store::random_data_id())
            .collect::<Result<_, _>>()
            .map_err(|e| ClusterError::Invalid(format!("no randomness for cell ids: {e}")))?;
        Ok(ClusterConfig {
            cells,
            replicas,
            root_public_key,
            limits: Limits::default(),
            cell_ids,
            lease_ttl_ms: u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// A lease's time to live.
    #[must_use]
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}

/// Why the cluster cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The servers could not be reached.
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect {
        /// The URLs given.
        urls: String,
        /// Why.
        reason: String,
    },
    /// `toka cluster init` has not been run against these servers.
    #[error(
        "no Toka cluster at {urls} (no `{CONFIG_BUCKET}` configuration); `toka cluster init --cells N` creates one"
    )]
    NotInitialized {
        /// The URLs given.
        urls: String,
    },
    /// `toka cluster init` ran twice.
    #[error("a Toka cluster already exists at {urls} with {cells} cells; it is not changed")]
    AlreadyInitialized {
        /// The URLs given.
        urls: String,
        /// The recorded number of cells.
        cells: u32,
    },
    /// A cell number outside the cluster.
    #[error("no cell {cell}: the cluster has cells 0..{cells}")]
    NoSuchCell {
        /// The cell asked for.
        cell: u32,
        /// How many there are.
        cells: u32,
    },
    /// Bad arguments to `init`.
    #[error("{0}")]
    Invalid(String),
    /// JetStream refused or failed a request.
    #[error("NATS JetStream: {what}: {reason}")]
    JetStream {
        /// What was being done.
        what: String,
        /// The server's or client's message.
        reason: String,
    },
}

impl ClusterError {
    pub(crate) fn js(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        ClusterError::JetStream {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// A connection to a NATS JetStream cluster, with a runtime of its own so
/// the synchronous [`EventStore`](crate::EventStore) seam can wait on it
/// from any thread.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Option<tokio::runtime::Runtime>,
    urls: String,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime inside another one panics; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("urls", &self.inner.urls)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to the NATS servers at `urls` (comma-separated
    /// `nats://HOST:PORT`), retrying for up to `patience` while none
    /// answers. `name` names this connection in the servers' monitoring.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Connect`] when no server answers in time.
    pub fn connect(urls: &str, name: &str, patience: Duration) -> Result<Cluster, ClusterError> {
        let fail = |reason: String| ClusterError::Connect {
            urls: urls.to_owned(),
            reason,
        };
        let addrs: Vec<async_nats::ServerAddr> = urls
            .split(',')
            .map(|u| u.trim().parse().map_err(|e| fail(format!("{u}: {e}"))))
            .collect::<Result<_, _>>()?;
        if addrs.is_empty() {
            return Err(fail("no URL given".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("toka-nats")
            .enable_all()
            .build()
            .map_err(|e| fail(format!("starting its runtime: {e}")))?;
        let name = name.to_owned();
        let connecting =
            runtime.spawn(async move { connect_within(&addrs, &name, patience).await });
        let client = match outside(|| runtime.block_on(connecting)) {
            Ok(Ok(client)) => client,
            failed => {
                // Dropping a runtime inside another one panics; this does not.
                runtime.shutdown_background();
                return Err(fail(match failed {
                    Ok(Err(reason)) => reason,
                    Err(join) => join.to_string(),
                    Ok(Ok(_)) => unreachable!("matched above"),
                }));
            }
        };
        // The context spawns a task of its own: on this runtime, whichever
        // the caller is in.
        let js = {
            let _entered = runtime.enter();
            jetstream::ContextBuilder::new()
                .timeout(REQUEST_TIMEOUT)
                .build(client.clone())
        };
        Ok(Cluster {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                urls: urls.to_owned(),
                client,
                js,
            }),
        })
    }

    /// The URLs this connection was made with.
    #[must_use]
    pub fn urls(&self) -> &str {
        &self.inner.urls
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.inner.js
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Runs `future` on the connection's runtime and waits for it, from any
    /// thread (inside another runtime too).
    pub(crate) fn block<F>(&self, future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let runtime = self
            .inner
            .runtime
            .as_ref()
            .expect("dropped only with the last handle");
        outside(|| runtime.block_on(future))
    }

    /// Spawns `future` on the connection's runtime.
    pub(crate) fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self
            .inner
            .runtime
            .as_ref()
            .expect("dropped only with the last handle");
        runtime.spawn(future)
    }

    /// Publishes `payload` on `subject` (core NATS: at most once).
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the connection is closed.
    pub async fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), ClusterError> {
        self.inner
            .client
            .publish(subject, payload.into())
            .await
            .map_err(|e| ClusterError::js("publishing", e))
    }

    /// The subject a cell's committed events are published on.
    #[must_use]
    pub fn events_subject(cell: u32) -> String {
        format!("toka.events.{cell}")
    }

    /// The recorded configuration.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NotInitialized`] when there is none.
    pub fn config(&self) -> Result<ClusterConfig, ClusterError> {
        let not = || ClusterError::NotInitialized {
            urls: self.urls().to_owned(),
        };
        let started = std::time::Instant::now();
        loop {
            let read = self.block(async {
                let bucket = self
                    .js()
                    .get_key_value(CONFIG_BUCKET)
                    .await
                    .map_err(|e| ClusterError::js("opening the configuration", e))?;
                bucket
                    .get(CONFIG_KEY)
                    .await
                    .map_err(|e| ClusterError::js("reading the configuration", e))
            });
            let error = match read {
                Ok(Some(bytes)) => {
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| ClusterError::js("decoding the configuration", e));
                }
                Ok(None) => return Err(not()),
                Err(e) => e,
            };
            // "stream not found": there is no such bucket. Anything else
            // (a node's failure moving the bucket's leader) is tried again.
            if error.to_string().contains("not found") {
                return Err(not());
            }
            // A NATS node's failure can take the bucket's leader (or the
            // meta leader) with it: elections take seconds, longer on a
            // loaded machine.
            if started.elapsed() > CONFIG_PATIENCE {
                return Err(error);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A stream read by sequence number: on disk, and nothing in it deleted
/// or purged behind its readers' backs.
pub(crate) fn kept_stream(
    name: String,
    subject: String,
    replicas: usize,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name,
        subjects: vec![subject],
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// Creates a KV bucket keeping one value per key, entries expiring after
/// `max_age` (zero: never). The stream is made here, in the layout of a KV
/// bucket, rather than by `create_key_value`, which first asks for account
/// information in a shape NATS 2.9 servers (Debian's) do not send.
pub(crate) async fn create_kv(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<jetstream::kv::Store, String> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.get_key_value(bucket).await.map_err(|e| e.to_string())
}

/// The most cells a cluster can have.
pub const MAX_CELLS: u32 = 1024;

/// Connects to one of `addrs`, trying again while none answers, for up to
/// `patience`; the error says how long it tried and the last failure (or,
/// at once, why a server that answered refused: credentials, TLS).
/// Once connected, the client reconnects by itself after a server is lost.
/// (async-nats's own `retry_on_initial_connect` would return at once and
/// let the first request time out, naming neither the servers nor why.)
async fn connect_within(
    addrs: &[async_nats::ServerAddr],
    name: &str,
    patience: Duration,
) -> Result<async_nats::Client, String> {
    const FIRST_PAUSE: Duration = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = FIRST_PAUSE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT.min(left).max(Duration::from_millis(100)))
            .request_timeout(Some(REQUEST_TIMEOUT));
        // An attempt tries every server (and every address of each), so
        // it is held to the time left as a whole.
        let failed = match tokio::time::timeout(left, options.connect(addrs.to_vec())).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => {
                use async_nats::ConnectErrorKind as Kind;
                if matches!(
                    e.kind(),
                    Kind::Authentication | Kind::AuthorizationViolation | Kind::Tls
                ) {
                    // A server answered: waiting changes nothing.
                    return Err(e.to_string());
                }
                e.to_string()
            }
            Err(_) => "timed out".to_owned(),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if pause == FIRST_PAUSE && !left.is_zero() {
            tracing::warn!(error = %failed, "no NATS server answers yet; trying again for up to {patience:.0?}");
        } else {
            tracing::debug!(error = %failed, ?left, "no NATS server answers yet");
        }
        tokio::time::sleep(pause.min(left)).await;
        // No attempt without time left for it: the last one's reason is
        // the one to give.
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "no server answered within {patience:.0?}; the last attempt: {failed}"
            ));
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Runs `f` where blocking is allowed: on a scoped thread of its own when
/// called from inside a tokio runtime (where `block_on` would panic).
fn outside<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(f)
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    } else {
        f()
    }
}

//! Cell ownership: a lease in a JetStream KV bucket whose entries expire.
//!
//! A host acquires a cell by creating its key (refused while another holds
//! it), renews it by updating it with the revision it last wrote (refused
//! once anyone else wrote it), and releases it by deleting it. The bucket's
//! `max_age` is the lease's time to live: a key not renewed within it
//! disappears and another host can create it. A holder treats its lease as
//! valid only until half the time to live after it last *sent* a renewal
//! that succeeded, so it stops serving before the lease can expire; the
//! fence message a new owner appends (see [`CellStore`](super::cell_store))
//! refuses whatever a holder that could not stop in time still appends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use tokio::sync::watch;

use super::connection::{Cluster, ClusterError};

/// The KV bucket of leases: key `cell-<n>`, value a [`Holder`].
const LEASE_BUCKET: &str = "toka_leases";

/// Who holds a lease (the key's value).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// The holding host's name (unique per process).
    pub host: String,
    /// Where the holding host serves its API, if it does.
    pub url: Option<String>,
}

/// A held lease on one cell. Renewed in the background until released or
/// lost.
#[derive(Debug)]
pub struct Lease {
    cell: u32,
    bucket: kv::Store,
    cluster: Cluster,
    guard: LeaseGuard,
    revision: Arc<Mutex<u64>>,
    renewer: tokio::task::JoinHandle<()>,
}

/// What a lease's users check: whether it is still valid, and a signal
/// when it is lost.
#[derive(Debug, Clone)]
pub struct LeaseGuard {
    state: Arc<GuardState>,
}

#[derive(Debug)]
struct GuardState {
    valid_until: Mutex<Instant>,
    lost: watch::Sender<Option<String>>,
    /// The revision the lease was acquired at: names this ownership.
    epoch: u64,
}

impl LeaseGuard {
    /// Whether the lease is still safely held (a holder may act on the cell).
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.state.lost.borrow().is_none()
            && Instant::now()
                < *self
                    .state
                    .valid_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves with the reason once the lease is lost (or was).
    pub async fn lost(&self) -> String {
        let mut rx = self.state.lost.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            let until = *self
                .state
                .valid_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return "the lease's renewer stopped".into();
                },
                () = tokio::time::sleep_until(until.into()) => {
                    if Instant::now() >= *self.state.valid_until.lock().unwrap_or_else(|e| e.into_inner()) {
                        return "the lease could not be renewed in time".into();
                    }
                }
            }
        }
    }

    /// The lease's revision when it was acquired: names this ownership.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    fn lose(&self, reason: String) {
        self.state.lost.send_if_modified(|lost| {
            if lost.is_none() {
                *lost = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

fn key(cell: u32) -> String {
    format!("cell-{cell}")
}

/// Creates the lease bucket, entries expiring after `ttl`.
pub(crate) async fn create_bucket(
    js: &jetstream::Context,
    replicas: usize,
    ttl: Duration,
) -> Result<(), ClusterError> {
    super::connection::create_kv(js, LEASE_BUCKET, replicas, ttl)
        .await
        .map_err(|e| ClusterError::js("creating the lease bucket", e))?;
    Ok(())
}

async fn bucket(cluster: &Cluster) -> Result<kv::Store, ClusterError> {
    cluster
        .js()
        .get_key_value(LEASE_BUCKET)
        .await
        .map_err(|e| ClusterError::js("opening the lease bucket", e))
}

/// Who holds `cell`'s lease now, if anyone.
///
/// # Errors
///
/// [`ClusterError::JetStream`] when the bucket cannot be read.
pub fn holder(cluster: &Cluster, cell: u32) -> Result<Option<Holder>, ClusterError> {
    cluster.block(async {
        let bucket = bucket(cluster).await?;
        let entry = bucket
            .get(key(cell))
            .await
            .map_err(|e| ClusterError::js("reading a lease", e))?;
        Ok(entry.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    })
}

/// Says `holder` is alive for one lease TTL (the bucket's entries expire):
/// hosts spread the cells by how many are alive.
///
/// # Errors
///
/// [`ClusterError::JetStream`] when the bucket cannot be written.
pub fn announce(cluster: &Cluster, holder: &Holder) -> Result<(), ClusterError> {
    let value = serde_json::to_vec(holder).map_err(|e| ClusterError::js("encoding a host", e))?;
    cluster.block(async {
        bucket(cluster)
            .await?
            .put(format!("host-{}", holder.host), value.into())
            .await
            .map(drop)
            .map_err(|e| ClusterError::js("announcing a host", e))
    })
}

/// The hosts that announced themselves within the last lease TTL.
///
/// # Errors
///
/// [`ClusterError::JetStream`] when the bucket cannot be read.
pub fn hosts(cluster: &Cluster) -> Result<Vec<Holder>, ClusterError> {
    use futures_util::StreamExt as _;
    // Listing keys goes through a consumer, which a NATS node's failure
    // can leave hanging: bounded, a round without an answer is skipped.
    let listed = cluster.block(tokio::time::timeout(LISTING, async {
        let bucket = bucket(cluster).await?;
        let mut keys = bucket
            .keys()
            .await
            .map_err(|e| ClusterError::js("listing hosts", e))?;
        // The listing's consumer starts over when it misses a message (a
        // loaded server, a NATS node's failure): a key may come twice.
        let mut listed = std::collections::BTreeSet::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| ClusterError::js("listing hosts", e))?;
            if key.starts_with("host-") {
                listed.insert(key);
            }
        }
        let mut hosts = Vec::new();
        for key in listed {
            let value = bucket
                .get(&key)
                .await
                .map_err(|e| ClusterError::js("reading a host", e))?;
            if let Some(holder) = value.and_then(|v| serde_json::from_slice(&v).ok()) {
                hosts.push(holder);
            }
        }
        Ok(hosts)
    }));
    listed.unwrap_or_else(|_| {
        Err(ClusterError::js(
            "listing hosts",
            format!("no answer within {LISTING:?}"),
        ))
    })
}

/// How long listing the hosts alive may take.
const LISTING: Duration = Duration::from_secs(5);

impl Lease {
    /// Tries to acquire `cell`'s lease for `holder`, its time to live `ttl`
    /// (the bucket's, recorded in the cluster's configuration). `None` when
    /// another host holds it.
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when JetStream fails.
    pub fn try_acquire(
        cluster: &Cluster,
        cell: u32,
        holder: &Holder,
        ttl: Duration,
    ) -> Result<Option<Lease>, ClusterError> {
        let value: bytes::Bytes = serde_json::to_vec(holder)
            .map_err(|e| ClusterError::js("encoding a lease", e))?
            .into();
        let mut sent = Instant::now();
        let acquired = cluster.block(async {
            let bucket = bucket(cluster).await?;
            match bucket.create(key(cell), value.clone()).await {
                Ok(revision) => Ok(Some((bucket, revision))),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // An earlier attempt whose answer was lost may have
                    // created it: then it is ours, valid from a renewal.
                    let Some(landed) = ours(&bucket, &key(cell), &value).await else {
                        return Ok(None);
                    };
                    sent = Instant::now();
                    match bucket.update(key(cell), value.clone(), landed).await {
                        Ok(revision) => Ok(Some((bucket, revision))),
                        Err(_) => Ok(None),
                    }
                }
                Err(e) => Err(ClusterError::js("acquiring a lease", e)),
            }
        })?;
        let Some((bucket, revision)) = acquired else {
            return Ok(None);
        };
        let guard = LeaseGuard {
            state: Arc::new(GuardState {
                valid_until: Mutex::new(sent + ttl / 2),
                lost: watch::channel(None).0,
                epoch: revision,
            }),
        };
        let revision = Arc::new(Mutex::new(revision));
        let renewer = cluster.spawn(renew(
            bucket.clone(),
            key(cell),
            value,
            ttl,
            guard.clone(),
            Arc::clone(&revision),
        ));
        Ok(Some(Lease {
            cell,
            bucket,
            cluster: cluster.clone(),
            guard,
            revision,
            renewer,
        }))
    }

    /// The cell.
    #[must_use]
    pub fn cell(&self) -> u32 {
        self.cell
    }

    /// What the lease's users check.
    #[must_use]
    pub fn guard(&self) -> LeaseGuard {
        self.guard.clone()
    }

    /// Stops renewing and deletes the key (if still ours), so another host
    /// can take the cell at once.
    pub fn release(self) {
        self.renewer.abort();
        self.guard.lose("released".into());
        let revision = *self.revision.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = self.bucket.clone();
        let _ = self.cluster.block(async move {
            bucket
                .delete_expect_revision(key(self.cell), Some(revision))
                .await
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// The revision of `key` when its entry holds `value` (this holder's), as
/// written by a create or an update of its own; `None` otherwise or when it
/// cannot be read.
async fn ours(bucket: &kv::Store, key: &str, value: &[u8]) -> Option<u64> {
    let entry = bucket.entry(key).await.ok()??;
    (entry.operation == kv::Operation::Put && entry.value.as_ref() == value)
        .then_some(entry.revision)
}

/// Renews the lease every quarter of its time to live until it is lost; a
/// renewal that failed (a NATS node went away, its streams elect leaders)
/// is tried again every twentieth of it, while the lease is still valid.
async fn renew(
    bucket: kv::Store,
    key: String,
    value: bytes::Bytes,
    ttl: Duration,
    guard: LeaseGuard,
    revision: Arc<Mutex<u64>>,
) {
    let mut wait = ttl / 4;
    loop {
        tokio::time::sleep(wait).await;
        wait = ttl / 4;
        let sent = Instant::now();
        let valid_until = *guard
            .state
            .valid_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if sent >= valid_until {
            guard.lose("the lease could not be renewed in time".into());
            return;
        }
        let current = *revision.lock().unwrap_or_else(|e| e.into_inner());
        let update = async {
            match bucket.update(&key, value.clone(), current).await {
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // A renewal whose answer was lost may have landed: the
                    // entry is then still ours, one revision on.
                    match ours(&bucket, &key, &value).await {
                        Some(landed) if landed > current => {
                            bucket.update(&key, value.clone(), landed).await
                        }
                        _ => Err(e),
                    }
                }
                other => other,
            }
        };
        match tokio::time::timeout(valid_until - sent, update).await {
            Ok(Ok(next)) => {
                *revision.lock().unwrap_or_else(|e| e.into_inner()) = next;
                *guard
                    .state
                    .valid_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = sent + ttl / 2;
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                guard.lose("another host took the cell's lease".into());
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, %key, "renewing the lease failed; retrying");
                wait = ttl / 20;
            }
            Err(_) => {
                guard.lose("the lease could not be renewed in time".into());
                return;
            }
        }
    }
}

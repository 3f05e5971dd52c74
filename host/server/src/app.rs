//! What every request handler shares: the host, the store it reads the log
//! from, the limiters and the jobs.

use std::sync::Arc;

use toka_host::{EventStore, Host, PublicKey};
use toka_kernel::Digest;
use tokio::sync::{Semaphore, watch};

use crate::auth::{Seen, Tickets};
use crate::config::ServeConfig;
use crate::held::Bounded;
use crate::jobs::Jobs;
use crate::rate::Limiter;
use crate::views::{ArchiveJob, VerifyJob};

/// One token family holds at most this fraction of the event streams.
const STREAM_SHARE: usize = 4;

/// Requests waiting for a task to end at once (each holds a waiter and a
/// copy of the task's description), all token families together ...
const MAX_WAITS: usize = 4096;
/// ... and per family; one past either is refused (429).
const WAITS_PER_FAMILY: usize = 256;

/// Replays of the log (and pages of raw records) for read clients at
/// once.
const LOG_READ_TURNS: usize = 2;

/// Event streams keeping their place in the log between reads while they
/// catch up, all token families together ...
const KEPT_READERS: usize = 4;
/// ... and per family.
const KEPT_READERS_PER_FAMILY: usize = 1;

/// The server's shared state.
pub(crate) struct App {
    pub(crate) host: Arc<Host>,
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) root: PublicKey,
    /// The data dir's kernel limits.
    pub(crate) limits: toka_kernel::Limits,
    pub(crate) config: ServeConfig,
    /// Requests per operator token.
    pub(crate) per_token: Limiter<Digest>,
    /// Failed authentications and new tokens per client network.
    pub(crate) strangers: Limiter<crate::origin::Network>,
    pub(crate) seen: Seen,
    pub(crate) tickets: Tickets,
    pub(crate) verify: Arc<Jobs<VerifyJob>>,
    /// Archives of the log (`POST /v1/archive`).
    pub(crate) archives: Arc<Jobs<ArchiveJob>>,
    /// One install at a time: compiling is the most expensive thing a
    /// `write` operator can ask for (the host also compiles one component
    /// at a time, each to its end even when its client went away).
    pub(crate) compile: Semaphore,
    /// One package review (its signatures checked against each trusted
    /// key) at a time, held by the review itself: a client that goes away
    /// leaves it running to its end, and the next one waits for it.
    pub(crate) reviews: Arc<Semaphore>,
    /// Turns for reading the log back (a replay from a snapshot): they
    /// take turns rather than each taking a core, one per token family at
    /// a time.
    pub(crate) log_reads: crate::readers::ReplayTurns,
    /// The low-priority threads those replays run on, one per turn, and
    /// one more: the state's encoding and counts always have a thread the
    /// replays do not hold.
    pub(crate) log_readers: crate::readers::LogReaders,
    /// Places for open event streams, all token families together and
    /// per family.
    pub(crate) streams: Arc<Bounded<Digest>>,
    /// Places for a catching-up stream's reader kept between its reads:
    /// a reader is the whole state at its place in the log (up to the
    /// state budget), and a `read` client could open 64 streams. A stream
    /// without a place places a reader anew at each read (a replay from
    /// the snapshot before it, in its turn) and keeps none.
    pub(crate) kept_readers: Arc<Bounded<Digest>>,
    /// Places for requests waiting for a task to end (`?wait=`), all
    /// token families together and per family.
    pub(crate) waits: Arc<Bounded<Digest>>,
    /// Places for uploads in progress (see [`crate::uploads`]).
    pub(crate) uploads: crate::uploads::Uploads,
    /// The last `/v1/log/state` answer (its JSON) and the sequence number
    /// of the head it is the state after: one encoding at a time, shared
    /// by every request it is new enough for. At 100 000 agents the state
    /// is ~20 MB; a `read` client asking in parallel must not have the
    /// server encode and hold a copy per request.
    pub(crate) encoded_state: tokio::sync::Mutex<Option<(u64, axum::body::Bytes)>>,
    /// The census `/v1/status` and `/metrics` report, of the state it
    /// counts.
    pub(crate) census: PerState<crate::api::system::Census>,
    /// The index the filtered agent list walks, of the state it indexes
    /// (see [`crate::api::index`]).
    pub(crate) agent_index: PerState<Arc<crate::api::index::AgentIndex>>,
    /// Turns true when the server shuts down: streams end.
    pub(crate) closing: watch::Receiver<bool>,
    /// The connections the server holds, when it serves this app alone
    /// (not one cell among others): `/metrics` shows them.
    connections: std::sync::OnceLock<Arc<crate::connections::Admission>>,
}

impl App {
    pub(crate) fn new(
        host: Arc<Host>,
        store: Arc<dyn EventStore>,
        root: PublicKey,
        limits: toka_kernel::Limits,
        config: ServeConfig,
        closing: watch::Receiver<bool>,
    ) -> Self {
        Self {
            per_token: Limiter::new(config.rate),
            strangers: Limiter::new(config.strangers),
            streams: Bounded::new(config.max_streams, config.max_streams / STREAM_SHARE),
            waits: Bounded::new(MAX_WAITS, WAITS_PER_FAMILY),
            kept_readers: Bounded::new(KEPT_READERS, KEPT_READERS_PER_FAMILY),
            uploads: crate::uploads::Uploads::new(),
            host,
            store,
            root,
            limits,
            config,
            seen: Seen::default(),
            tickets: Tickets::default(),
            verify: Arc::default(),
            archives: Arc::default(),
            compile: Semaphore::new(1),
            reviews: Arc::new(Semaphore::new(1)),
            log_reads: crate::readers::ReplayTurns::new(LOG_READ_TURNS),
            log_readers: crate::readers::LogReaders::new(LOG_READ_TURNS + 1),
            encoded_state: tokio::sync::Mutex::new(None),
            census: PerState::default(),
            agent_index: PerState::default(),
            closing,
            connections: std::sync::OnceLock::new(),
        }
    }

    /// Runs `read` (a replay of the log, a page of records) on the log
    /// readers' threads, once `token`'s family has a turn at reading the
    /// log; `None` when the turns are closed (the server stops). The job
    /// holds the turn until it is done, even if the client went away
    /// meanwhile: a client that asks and hangs up cannot queue more.
    pub(crate) async fn read_log<R: Send + 'static>(
        &self,
        token: &toka_host::Token,
        read: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let turn = self.log_reads.take(crate::auth::family(token)).await?;
        Some(
            self.log_readers
                .run(move || {
                    let _turn = turn;
                    read()
                })
                .await,
        )
    }

    /// Shows `connections` in `/metrics`: the server serves this app alone.
    pub(crate) fn count_connections(&self, connections: Arc<crate::connections::Admission>) {
        let _ = self.connections.set(connections);
    }

    /// Connections held now, and refused or closed to make room since the
    /// start, if counted here.
    pub(crate) fn connections(&self) -> Option<crate::connections::Counts> {
        self.connections.get().map(|c| c.counts())
    }

    /// Whether the server is shutting down.
    pub(crate) fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }
}

/// A value computed from the committed state, kept with the head of the
/// state it was computed from: computed once per state, one at a time,
/// however many requests ask (a walk of every agent, which any `read`
/// client may make the server do as often as its rate allows).
pub(crate) struct PerState<T>(tokio::sync::Mutex<Option<(u64, T)>>);

impl<T> Default for PerState<T> {
    fn default() -> Self {
        Self(tokio::sync::Mutex::new(None))
    }
}

impl<T: Clone + Send + 'static> PerState<T> {
    /// The value for the state after record `head`: the kept one if it is
    /// of that state, else `compute`d on a log reader's thread (a walk of
    /// every agent takes milliseconds at 100 000; not on the runtime's
    /// threads, where agents run) and kept.
    pub(crate) async fn get(
        &self,
        head: u64,
        readers: &crate::readers::LogReaders,
        compute: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let mut kept = self.0.lock().await;
        if let Some((seq, value)) = &*kept
            && *seq == head
        {
            return value.clone();
        }
        let value = readers.run(compute).await;
        *kept = Some((head, value.clone()));
        value
    }
}

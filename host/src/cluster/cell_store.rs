//! A cell's log on JetStream, as an [`EventStore`].
//!
//! - The log: stream `TOKA_CELL_<n>`, one subject `toka.cell.<n>.log`. Each
//!   committed batch is ONE message (so a batch is all or nothing), published
//!   with `Nats-Expected-Last-Subject-Sequence` = the last message this host
//!   knows: a host that lost the cell cannot append (JetStream refuses), and
//!   nothing is visible before JetStream acknowledged it.
//! - A new owner first appends an [`Message::Owner`] fence, which moves the
//!   subject's sequence past whatever a former owner knows.
//! - Blobs, tokens, snapshots and batches too large for one message live in
//!   the stream `TOKA_CELL_<n>_OBJECTS`, named `blob.<digest>`,
//!   `token.<digest>`, `snap.<seq>` and `batch.<digest>`: an object is
//!   chunks of 256 KiB, each the last message on subject
//!   `toka.cell.<n>.obj.<name>.<i>`, chunk 0 written last with the count and
//!   the digest of the whole. They are read by subject and listed from the
//!   stream's subjects — no consumer, which a NATS node's failure can leave
//!   hanging (JetStream's own object store lists through one).
//!   Content-addressed objects are written before the message that refers
//!   to them; a snapshot only after the records it follows are acknowledged.
//!
//! Opening a cell indexes where each batch is and which record ended each
//! task. It reads the log after its newest snapshot first (found by a
//! binary search on the messages' chain heads): a new owner serves once
//! that tail is read, however long the log is. The rest is read in the
//! background; a reader of records before the tail, or of a task that
//! ended there, waits for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use async_nats::jetstream::{self, stream::Stream};
use toka_kernel::{ChainHead, Digest, Limits, TaskId};

use super::connection::{Cluster, ClusterConfig, ClusterError, kept_stream};
use super::lease::LeaseGuard;
use crate::store::event_store::{
    Anchor, Batch, Cut, EventStore, Records, SNAPSHOTS_LOOKED_AT, StoreError, snapshot_dropped,
};

/// How long a read, or the fence, is tried again when it got no answer.
/// A killed NATS node's streams stay without a leader for seconds, and
/// each attempt waits up to 5 s for its answer: 10 s (two attempts) was
/// too short for a `verify` right after a kill.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// Log messages read ahead at a time when a cell is opened.
const PREFETCH: u64 = 1024;
/// Requests in flight while reading ahead.
const IN_FLIGHT: usize = 64;
/// At most this much of the log read ahead (a message is up to
/// `max_payload`, 1 MiB by default).
const PREFETCH_BYTES: usize = 64 << 20;

/// What one message of a cell's log holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Message {
    /// A committed batch.
    Batch {
        /// `(seq, record bytes)`, ascending and contiguous.
        records: Vec<(u64, Vec<u8>)>,
        /// Tasks the batch ended.
        task_ends: Vec<(TaskId, u64)>,
        /// The chain head after the batch.
        head: ChainHead,
    },
    /// A batch too large for one message: its [`Message::Batch`] is the
    /// object `batch.<digest>`.
    Stored {
        /// The digest of the encoded batch.
        digest: Digest,
        /// The chain head after the batch.
        head: ChainHead,
    },
    /// A host took the cell over here (the fence).
    Owner {
        /// The host.
        host: String,
        /// Its lease's epoch.
        epoch: u64,
        /// The chain head it took over at.
        head: ChainHead,
    },
}

impl Message {
    fn head(&self) -> ChainHead {
        match self {
            Message::Batch { head, .. }
            | Message::Stored { head, .. }
            | Message::Owner { head, .. } => *head,
        }
    }
}

fn stream_name(cell: u32) -> String {
    format!("TOKA_CELL_{cell}")
}

fn subject(cell: u32) -> String {
    format!("toka.cell.{cell}.log")
}

fn objects_name(cell: u32) -> String {
    format!("TOKA_CELL_{cell}_OBJECTS")
}

fn objects_subject(cell: u32) -> String {
    format!("toka.cell.{cell}.obj")
}

/// An object's chunk size: well below NATS's default 1 MiB message limit.
const CHUNK: usize = 256 * 1024;
/// The most chunks an object has (1 GiB): a larger count is not one this
/// host wrote.
const MAX_CHUNKS: usize = (1 << 30) / CHUNK;
/// Headers of an object's first chunk.
const CHUNKS: &str = "Toka-Chunks";
const DIGEST: &str = "Toka-Digest";

/// Creates cell `cell`'s log stream and object stream.
pub(crate) async fn create_cell(
    js: &jetstream::Context,
    cell: u32,
    replicas: usize,
) -> Result<(), ClusterError> {
    js.create_stream(kept_stream(stream_name(cell), subject(cell), replicas))
        .await
        .map_err(|e| ClusterError::js(format!("creating cell {cell}'s stream"), e))?;
    js.get_or_create_stream(jetstream::stream::Config {
        name: objects_name(cell),
        subjects: vec![format!("{}.>", objects_subject(cell))],
        // An object's chunk is the last message on its subject.
        max_messages_per_subject: 1,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::js(format!("creating cell {cell}'s object stream"), e))?;
    Ok(())
}

/// One cell's log, blobs, tokens and snapshots on JetStream.
pub struct CellStore {
    cluster: Cluster,
    cell: u32,
    config: ClusterConfig,
    stream: Stream,
    /// The stream of blobs, tokens, snapshots and oversized batches.
    objects: Stream,
    /// Set when this store may append: the lease it appends under.
    guard: Option<LeaseGuard>,
    /// The largest message the servers take.
    max_payload: usize,
    /// Shared with the reader of the log's beginning, while it runs.
    index: Arc<Index>,
}

/// What reading the log taught, and a signal when its beginning is read.
#[derive(Debug, Default)]
struct Index {
    tail: Mutex<Tail>,
    /// Notified when [`Tail::older`] changes.
    older_read: Condvar,
    /// Held while a snapshot is stored: the writer's (with a batch), the
    /// snapshot replica's and an operator's may overlap, and each updates
    /// the list of snapshots it read before.
    snapshot_writes: Mutex<()>,
}

/// Where the index of the log's beginning stands.
#[derive(Debug, Default)]
enum Older {
    /// All of the log is indexed.
    #[default]
    Read,
    /// The messages before the tail's are being read in the background.
    Reading,
    /// Reading the messages up to this one failed: the next reader that
    /// needs them reads them itself.
    Failed(u64),
}

/// What reading the log taught, kept up to date by appends.
#[derive(Debug, Default)]
struct Tail {
    /// The subject's last message sequence (0: none).
    last_message: u64,
    head: ChainHead,
    /// `(last record seq, message sequence)` of every batch, ascending.
    batches: Vec<(u64, u64)>,
    task_ends: HashMap<TaskId, u64>,
    /// The owner's snapshots, once listed (it writes every later one).
    snapshots: Option<Vec<u64>>,
    /// The first record `batches` and `task_ends` cover (1 once `older`
    /// is read).
    covers_from: u64,
    older: Older,
}

/// What reading a range of log messages found.
#[derive(Debug, Default)]
struct Indexed {
    batches: Vec<(u64, u64)>,
    task_ends: HashMap<TaskId, u64>,
    head: ChainHead,
    last_message: u64,
}

impl std::fmt::Debug for CellStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellStore")
            .field("cluster", &self.cluster)
            .field("cell", &self.cell)
            .finish_non_exhaustive()
    }
}

impl CellStore {
    /// Opens cell `cell` to read it.
    ///
    /// # Errors
    ///
    /// [`ClusterError`] when the cluster is not initialized, has no such
    /// cell, or the log cannot be read.
    pub fn open_read_only(cluster: &Cluster, cell: u32) -> Result<CellStore, ClusterError> {
        let config = cluster.config()?;
        if cell >= config.cells {
            return Err(ClusterError::NoSuchCell {
                cell,
                cells: config.cells,
            });
        }
        let max_payload = cluster.client().server_info().max_payload;
        let (stream, objects) = retrying(|| {
            cluster.block(async {
                let js = cluster.js();
                let stream = js
                    .get_stream(stream_name(cell))
                    .await
                    .map_err(|e| ClusterError::js(format!("opening cell {cell}'s stream"), e))?;
                let objects = js.get_stream(objects_name(cell)).await.map_err(|e| {
                    ClusterError::js(format!("opening cell {cell}'s object stream"), e)
                })?;
                Ok::<_, ClusterError>((stream, objects))
            })
        })?;
        let store = CellStore {
            cluster: cluster.clone(),
            cell,
            config,
            stream,
            objects,
            guard: None,
            max_payload,
            index: Arc::default(),
        };
        store.open_index()?;
        Ok(store)
    }

    /// Indexes the log after the newest snapshot, and starts reading the
    /// messages before it in the background.
    fn open_index(&self) -> Result<(), ClusterError> {
        let read = |e: StoreError| ClusterError::js(format!("reading cell {}'s log", self.cell), e);
        let (first, last) = retrying(|| {
            self.cluster.block(async {
                let mut stream = self.stream.clone();
                stream
                    .info()
                    .await
                    .map(|info| (info.state.first_sequence.max(1), info.state.last_sequence))
            })
        })
        .map_err(|e| ClusterError::js(format!("reading cell {}'s stream", self.cell), e))?;
        let newest = self.list_snapshots().map_err(read)?.last().copied();
        let start = match newest {
            Some(snapshot) if last >= first => {
                self.first_after(snapshot, first, last).map_err(read)?
            }
            _ => first,
        };
        if start > first {
            let before = self.message(start - 1).map_err(read)?.head();
            let mut tail = self.lock();
            tail.last_message = start - 1;
            tail.head = before;
            tail.covers_from = before.seq + 1;
            tail.older = Older::Reading;
        }
        self.index()?;
        if start > first {
            let reader = self.reader();
            let to = start - 1;
            std::thread::Builder::new()
                .name(format!("toka-cell-{}-index", self.cell))
                .spawn(move || {
                    let older = reader.read_range(1, to, ChainHead::default(), true);
                    // Nobody to tell once the store is gone.
                    if Arc::strong_count(&reader.index) > 1 {
                        reader.older_read(to, older.map_err(|e| e.to_string()));
                    }
                })
                .map_err(|e| ClusterError::js("starting the log's reader".to_owned(), e))?;
        }
        Ok(())
    }

    /// The first message (of `first..=last`) whose chain head is past
    /// record `seq`, or `last + 1`: heads grow with the message sequence.
    fn first_after(&self, seq: u64, first: u64, last: u64) -> Result<u64, StoreError> {
        let (mut low, mut high) = (first, last + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.message(middle)?.head().seq > seq {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        Ok(low)
    }

    /// A read-only handle on the same log and index (for the background
    /// reader).
    fn reader(&self) -> CellStore {
        CellStore {
            cluster: self.cluster.clone(),
            cell: self.cell,
            config: self.config.clone(),
            stream: self.stream.clone(),
            objects: self.objects.clone(),
            guard: None,
            max_payload: self.max_payload,
            index: Arc::clone(&self.index),
        }
    }

    /// Takes in the index of messages up to `to`, read after the tail's.
    fn older_read(&self, to: u64, older: Result<Indexed, String>) {
        let mut tail = self.lock();
        match older {
            Ok(older) => {
                let mut batches = older.batches;
                batches.append(&mut tail.batches);
                tail.batches = batches;
                for (task, seq) in older.task_ends {
                    tail.task_ends.entry(task).or_insert(seq);
                }
                tail.covers_from = 1;
                tail.older = Older::Read;
            }
            Err(reason) => {
                tracing::warn!(cell = self.cell, %reason, "reading the log before the newest snapshot failed; it is read again when needed");
                tail.older = Older::Failed(to);
            }
        }
        drop(tail);
        self.index.older_read.notify_all();
    }

    /// Waits until the whole log is indexed (reading its beginning here if
    /// the background reader failed).
    fn all_indexed(&self) -> Result<(), StoreError> {
        let mut tail = self.lock();
        loop {
            match &tail.older {
                Older::Read => return Ok(()),
                Older::Reading => {
                    tail = self
                        .index
                        .older_read
                        .wait(tail)
                        .unwrap_or_else(|e| e.into_inner());
                }
                Older::Failed(to) => {
                    let to = *to;
                    tail.older = Older::Reading;
                    drop(tail);
                    let older = self.read_range(1, to, ChainHead::default(), false);
                    let failed = older.as_ref().err().map(ToString::to_string);
                    self.older_read(to, older.map_err(|e| e.to_string()));
                    if let Some(reason) = failed {
                        return Err(
                            self.backend("reading the log before its newest snapshot", reason)
                        );
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Opens cell `cell` to append under `lease` (held by `host`): reads the
    /// log, then appends the fence that refuses any former owner's appends.
    ///
    /// # Errors
    ///
    /// [`ClusterError`] as for [`CellStore::open_read_only`], and when the
    /// fence cannot be appended while the lease is valid.
    pub fn open(
        cluster: &Cluster,
        cell: u32,
        host: &str,
        lease: LeaseGuard,
    ) -> Result<CellStore, ClusterError> {
        let mut store = Self::open_read_only(cluster, cell)?;
        // A cluster created before cells sent each other anything has no
        // inbox streams: the owner makes its cell's.
        let replicas = store.config.replicas as usize;
        retrying(|| cluster.block(super::mail::create_inbox(cluster.js(), cell, replicas)))?;
        loop {
            let (last, head) = {
                let tail = store.lock();
                (tail.last_message, tail.head)
            };
            let fence = Message::Owner {
                host: host.to_owned(),
                epoch: lease.epoch(),
                head,
            };
            match store.publish(&fence, last) {
                Ok(seq) => {
                    store.lock().last_message = seq;
                    store.guard = Some(lease);
                    return Ok(store);
                }
                // A former owner's batch landed after the log was read (it
                // was in flight when its lease ran out): read it too, and
                // fence after it.
                Err(StoreError::Fenced { .. }) if lease.is_valid() => store.index()?,
                Err(e) => return Err(ClusterError::js(format!("fencing cell {cell}"), e)),
            }
        }
    }

    /// The cell.
    #[must_use]
    pub fn cell(&self) -> u32 {
        self.cell
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.index.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backend(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            path: PathBuf::from(self.location()),
            message: format!("{what}: {e}"),
        }
    }

    fn corrupt(&self, what: String, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: PathBuf::from(self.location()),
            what,
            reason: e.to_string(),
        }
    }

    /// Reads the log from the first message not read yet to the end: where
    /// each batch is, the head, task ends.
    fn index(&self) -> Result<(), ClusterError> {
        let last = retrying(|| {
            self.cluster.block(async {
                let mut stream = self.stream.clone();
                stream.info().await.map(|info| info.state.last_sequence)
            })
        })
        .map_err(|e| ClusterError::js(format!("reading cell {}'s stream", self.cell), e))?;
        let mut tail = self.lock();
        let read = self.read_range(tail.last_message + 1, last, tail.head, false)?;
        tail.batches.extend(read.batches);
        tail.task_ends.extend(read.task_ends);
        if read.last_message > 0 {
            tail.head = read.head;
            tail.last_message = read.last_message;
        }
        Ok(())
    }

    /// Reads log messages `from..=to`, the head before them being `head`;
    /// in the `background`, it gives up once the store it reads for is
    /// gone.
    fn read_range(
        &self,
        from: u64,
        to: u64,
        mut head: ChainHead,
        background: bool,
    ) -> Result<Indexed, ClusterError> {
        let read = |e: StoreError| ClusterError::js(format!("reading cell {}'s log", self.cell), e);
        let mut indexed = Indexed::default();
        let mut fetched = std::collections::VecDeque::new();
        for seq in from..=to {
            if background && Arc::strong_count(&self.index) == 1 {
                return Err(ClusterError::js(
                    format!("reading cell {}'s log", self.cell),
                    "the cell was closed",
                ));
            }
            if fetched.is_empty() {
                fetched = self.prefetch(seq, to);
            }
            let message = match fetched.pop_front() {
                Some(message) => message,
                None => self.message(seq).map_err(read)?,
            };
            let next = message.head();
            if let Message::Batch { task_ends, .. } = self.resolve(message).map_err(read)? {
                indexed.task_ends.extend(task_ends);
            }
            if next.seq > head.seq {
                indexed.batches.push((next.seq, seq));
            }
            head = next;
            indexed.last_message = seq;
        }
        indexed.head = head;
        Ok(indexed)
    }

    /// The messages from stream sequence `from` on (at most [`PREFETCH`]
    /// and about [`PREFETCH_BYTES`], none after `last`), read with
    /// [`IN_FLIGHT`] requests at a time: the
    /// log is read at the pace of the server, not of one round trip per
    /// message. Stops at the first that cannot be read or decoded (the
    /// caller reads that one on its own, retrying, and says what is wrong).
    fn prefetch(&self, from: u64, last: u64) -> std::collections::VecDeque<Message> {
        use futures_util::StreamExt as _;
        let to = last.min(from.saturating_add(PREFETCH - 1));
        self.cluster.block(async {
            let mut replies = futures_util::stream::iter(from..=to)
                .map(|seq| self.stream.get_raw_message(seq))
                .buffered(IN_FLIGHT);
            let mut messages = std::collections::VecDeque::new();
            let mut bytes = 0;
            while let Some(Ok(raw)) = replies.next().await {
                let Ok(message) = postcard::from_bytes(&raw.payload) else {
                    break;
                };
                messages.push_back(message);
                bytes += raw.payload.len();
                if bytes >= PREFETCH_BYTES {
                    break;
                }
            }
            messages
        })
    }

    /// The message at stream sequence `seq`.
    fn message(&self, seq: u64) -> Result<Message, StoreError> {
        let raw = retrying(|| self.cluster.block(self.stream.get_raw_message(seq)))
            .map_err(|e| self.backend(&format!("reading log message {seq}"), e))?;
        postcard::from_bytes(&raw.payload)
            .map_err(|e| self.corrupt(format!("log message {seq}"), e))
    }

    /// A [`Message::Stored`] batch's contents; any other message as it is.
    fn resolve(&self, message: Message) -> Result<Message, StoreError> {
        let Message::Stored { digest, .. } = message else {
            return Ok(message);
        };
        let name = format!("batch.{digest}");
        let bytes = self
            .object(&name)?
            .ok_or_else(|| self.corrupt(name.clone(), "missing"))?;
        if Digest::of(&bytes) != digest {
            return Err(self.corrupt(name, "does not match its digest"));
        }
        postcard::from_bytes(&bytes).map_err(|e| self.corrupt(name, e))
    }

    /// Publishes `message` after message `last`; its stream sequence.
    ///
    /// A publish that failed without an answer (a NATS node went away) is
    /// sent again, with the same `Nats-Msg-Id` — the chain head it ends
    /// at, unique to its contents — so JetStream stores it once even when
    /// the first attempt landed: while the lease is valid (a NATS node's
    /// failure moves stream leaders in seconds), or for [`RETRY_FOR`]
    /// without one.
    fn publish(&self, message: &Message, last: u64) -> Result<u64, StoreError> {
        let payload: bytes::Bytes = postcard::to_allocvec(message)
            .map_err(|e| self.backend("encoding", e))?
            .into();
        let head = message.head();
        let id = match message {
            Message::Owner { epoch, .. } => format!("{}-owner-{epoch}", self.cell),
            _ => format!("{}-{}-{}", self.cell, head.seq, head.hash),
        };
        let started = std::time::Instant::now();
        loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(&id)
                .expected_last_subject_sequence(last);
            let ack = self.cluster.block(async {
                self.cluster
                    .js()
                    .send_publish(subject(self.cell), publish)
                    .await?
                    .await
            });
            let e = match ack {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) => e,
            };
            if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
                // An earlier attempt that got no answer may have landed
                // (JetStream checks the expected sequence before its
                // duplicate window after a leader change): then the last
                // message is ours.
                if let Some(seq) = self.last_is(&id) {
                    return Ok(seq);
                }
                return Err(StoreError::Fenced {
                    path: PathBuf::from(self.location()),
                    reason: "another host appended to the cell: it took the cell over".into(),
                });
            }
            let retry = match &self.guard {
                Some(guard) => guard.is_valid(),
                None => started.elapsed() < RETRY_FOR,
            };
            if !retry {
                return Err(self.backend("appending to the log", e));
            }
            tracing::warn!(error = %e, cell = self.cell, "appending to the log failed; sending it again");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The stream sequence of the cell's last log message, if its
    /// `Nats-Msg-Id` is `id`.
    fn last_is(&self, id: &str) -> Option<u64> {
        let last = retrying(|| {
            self.cluster.block(
                self.stream
                    .get_last_raw_message_by_subject(&subject(self.cell)),
            )
        })
        .ok()?;
        let theirs = last.headers.get(async_nats::header::NATS_MESSAGE_ID)?;
        (theirs.as_str() == id).then_some(last.sequence)
    }

    /// The subject of chunk `chunk` of object `name`.
    fn chunk_subject(&self, name: &str, chunk: usize) -> String {
        format!("{}.{name}.{chunk}", objects_subject(self.cell))
    }

    /// An object: chunk 0 names how many chunks there are and the digest
    /// of the whole; each chunk is the last message on its subject, read
    /// by subject (no consumer, so a NATS node's failure only delays it).
    fn object(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = |e: &dyn std::fmt::Display| self.backend(&format!("reading {name}"), e);
        retrying(|| {
            self.cluster.block(async {
                let first = match self
                    .objects
                    .get_last_raw_message_by_subject(&self.chunk_subject(name, 0))
                    .await
                {
                    Ok(first) => first,
                    Err(e)
                        if e.kind()
                            == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                    {
                        return Ok(None);
                    }
                    Err(e) => return Err(read(&e)),
                };
                let header = |key: &str| {
                    first
                        .headers
                        .get(key)
                        .map(|v| v.as_str().to_owned())
                        .ok_or_else(|| self.corrupt(name.to_owned(), format!("no {key} header")))
                };
                let chunks: usize = header(CHUNKS)?
                    .parse()
                    .map_err(|e| self.corrupt(name.to_owned(), e))?;
                if chunks == 0 || chunks > MAX_CHUNKS {
                    return Err(self.corrupt(
                        name.to_owned(),
                        format!("{chunks} chunks (at most {MAX_CHUNKS})"),
                    ));
                }
                let digest: Digest = header(DIGEST)?
                    .parse()
                    .map_err(|e| self.corrupt(name.to_owned(), e))?;
                let mut bytes = first.payload.to_vec();
                for chunk in 1..chunks {
                    let next = self
                        .objects
                        .get_last_raw_message_by_subject(&self.chunk_subject(name, chunk))
                        .await
                        .map_err(|e| read(&e))?;
                    if next.payload.len() > CHUNK {
                        return Err(self.corrupt(name.to_owned(), "a chunk is too large"));
                    }
                    bytes.extend_from_slice(&next.payload);
                }
                if Digest::of(&bytes) != digest {
                    return Err(self.corrupt(name.to_owned(), "does not match its digest"));
                }
                Ok(Some(bytes))
            })
        })
    }

    /// Writes an object: the chunks after the first, then the first, which
    /// makes it visible.
    fn put_object(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![bytes]
        } else {
            bytes.chunks(CHUNK).collect()
        };
        let digest = Digest::of(bytes);
        // Writing a chunk again replaces it (one message per subject).
        self.writing(|| {
            self.cluster.block(async {
                for (i, chunk) in chunks.iter().enumerate().skip(1).chain([(0, &chunks[0])]) {
                    let mut message =
                        jetstream::message::PublishMessage::build().payload(chunk.to_vec().into());
                    if i == 0 {
                        message = message
                            .header(CHUNKS, chunks.len().to_string())
                            .header(DIGEST, digest.to_string());
                    }
                    self.cluster
                        .js()
                        .send_publish(self.chunk_subject(name, i), message)
                        .await
                        .map_err(|e| self.backend(&format!("writing {name}"), e))?
                        .await
                        .map_err(|e| self.backend(&format!("writing {name}"), e))?;
                }
                Ok(())
            })
        })
    }

    /// Runs an idempotent write again after a failure (a NATS node went
    /// away) while the lease is valid, or for [`RETRY_FOR`] without one.
    fn writing<T>(
        &self,
        mut write: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        loop {
            let e = match write() {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let retry = match &self.guard {
                Some(guard) => guard.is_valid(),
                None => started.elapsed() < RETRY_FOR,
            };
            if !retry {
                return Err(e);
            }
            tracing::warn!(error = %e, cell = self.cell, "writing to the cell failed; writing again");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The names of the objects starting with `prefix` (`kind.`), from the
    /// stream's subjects.
    fn object_names(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        use futures_util::TryStreamExt as _;
        let base = format!("{}.", objects_subject(self.cell));
        let filter = format!("{base}{prefix}*.0");
        retrying(|| {
            self.cluster.block(async {
                let subjects: Vec<(String, usize)> = self
                    .objects
                    .info_with_subjects(&filter)
                    .await
                    .map_err(|e| self.backend("listing objects", e))?
                    .try_collect()
                    .await
                    .map_err(|e| self.backend("listing objects", e))?;
                Ok(subjects
                    .into_iter()
                    .filter_map(|(subject, _)| {
                        Some(subject.strip_prefix(&base)?.strip_suffix(".0")?.to_owned())
                    })
                    .collect())
            })
        })
    }

    /// Deletes an object (every chunk).
    fn delete_object(&self, name: &str) -> Result<(), StoreError> {
        let filter = format!("{}.{name}.>", objects_subject(self.cell));
        self.writing(|| {
            self.cluster
                .block(async { self.objects.purge().filter(filter.clone()).await })
                .map(drop)
                .map_err(|e| self.backend(&format!("deleting {name}"), e))
        })
    }

    fn check_lease(&self) -> Result<(), StoreError> {
        match &self.guard {
            Some(guard) if guard.is_valid() => Ok(()),
            Some(_) => Err(StoreError::Fenced {
                path: PathBuf::from(self.location()),
                reason: "this host's lease on the cell ran out".into(),
            }),
            None => Err(self.backend("appending", "the cell was opened read-only")),
        }
    }

    fn keep_snapshots(&self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let _one_at_a_time = self
            .index
            .snapshot_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut snapshots = self.snapshots()?;
        self.put_object(&format!("snap.{seq:020}"), bytes)?;
        if !snapshots.contains(&seq) {
            snapshots.push(seq);
            snapshots.sort_unstable();
        }
        let newest = &snapshots[snapshots.len().saturating_sub(SNAPSHOTS_LOOKED_AT)..];
        if let Some(old) = snapshot_dropped(newest, None, bytes.len()) {
            self.delete_object(&format!("snap.{old:020}"))?;
            snapshots.retain(|s| *s != old);
        }
        self.lock().snapshots = Some(snapshots);
        Ok(())
    }

    /// The snapshots in the object stream, listed.
    fn list_snapshots(&self) -> Result<Vec<u64>, StoreError> {
        let mut seqs: Vec<u64> = self
            .object_names("snap.")?
            .iter()
            .filter_map(|name| name.strip_prefix("snap.")?.parse().ok())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }
}

/// Whether a read's error is corrupt data (not worth reading again).
fn is_corrupt<E: std::fmt::Display>(e: &E) -> bool {
    e.to_string().contains(": corrupt ")
}

/// Runs a read again while it fails, for up to [`RETRY_FOR`]: reads are
/// idempotent, and a NATS node's failure moves stream leaders in seconds.
fn retrying<T, E: std::fmt::Display>(mut read: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let started = std::time::Instant::now();
    loop {
        match read() {
            Ok(value) => return Ok(value),
            // Corrupt data stays corrupt: only what may pass is read again.
            Err(e) if started.elapsed() < RETRY_FOR && !is_corrupt(&e) => {
                tracing::warn!(error = %e, "reading a cell failed; reading again");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

impl EventStore for CellStore {
    fn append(&self, batch: Batch) -> Result<(), StoreError> {
        self.check_lease()?;
        for (digest, bytes) in &batch.blobs {
            self.put_object(&format!("blob.{digest}"), bytes)?;
        }
        for (digest, bytes) in &batch.tokens {
            self.put_object(&format!("token.{digest}"), bytes)?;
        }
        let head = batch.head;
        let last_record = batch.records.last().map(|(seq, _)| *seq);
        if let Some(last_record) = last_record {
            let message = Message::Batch {
                records: batch.records,
                task_ends: batch.task_ends.clone(),
                head,
            };
            let encoded =
                postcard::to_allocvec(&message).map_err(|e| self.backend("encoding", e))?;
            // Room for the headers and the protocol's own.
            let message = if encoded.len() + 1024 > self.max_payload {
                let digest = Digest::of(&encoded);
                self.put_object(&format!("batch.{digest}"), &encoded)?;
                Message::Stored { digest, head }
            } else {
                message
            };
            let last = self.lock().last_message;
            // The lease again: writing the objects took time.
            self.check_lease()?;
            let seq = self.publish(&message, last)?;
            let mut tail = self.lock();
            tail.last_message = seq;
            tail.head = head;
            tail.batches.push((last_record, seq));
            tail.task_ends.extend(batch.task_ends);
        }
        if let Some((seq, bytes)) = batch.snapshot {
            self.keep_snapshots(seq, &bytes)?;
        }
        Ok(())
    }

    fn records(&self, from: u64) -> Result<Records<'_>, StoreError> {
        if self.guard.is_none() {
            // A reader: the owner may have appended since.
            self.index()
                .map_err(|e| self.backend("reading the log", e))?;
        }
        if from < self.lock().covers_from {
            self.all_indexed()?;
        }
        let messages: Vec<u64> = {
            let tail = self.lock();
            let start = tail.batches.partition_point(|(last, _)| *last < from);
            tail.batches[start..].iter().map(|(_, seq)| *seq).collect()
        };
        let iter = messages.into_iter().flat_map(move |seq| {
            let batch = self.message(seq).and_then(|m| self.resolve(m));
            let records: Vec<Result<(u64, Vec<u8>), StoreError>> = match batch {
                Ok(Message::Batch { records, .. }) => records
                    .into_iter()
                    .filter(|(s, _)| *s >= from)
                    .map(Ok)
                    .collect(),
                Ok(_) => vec![Err(
                    self.corrupt(format!("log message {seq}"), "not a batch")
                )],
                Err(e) => vec![Err(e)],
            };
            records
        });
        Ok(Box::new(iter))
    }

    fn task_end(&self, task: TaskId) -> Result<Option<u64>, StoreError> {
        let (found, all) = {
            let tail = self.lock();
            let found = tail.task_ends.get(&task).copied();
            (found, matches!(tail.older, Older::Read))
        };
        if found.is_some() || all {
            return Ok(found);
        }
        // It may have ended before the newest snapshot.
        self.all_indexed()?;
        Ok(self.lock().task_ends.get(&task).copied())
    }

    fn snapshots(&self) -> Result<Vec<u64>, StoreError> {
        if self.guard.is_none() {
            // A reader: the owner may have written some since.
            return self.list_snapshots();
        }
        if let Some(known) = self.lock().snapshots.clone() {
            return Ok(known);
        }
        let listed = self.list_snapshots()?;
        self.lock().snapshots = Some(listed.clone());
        Ok(listed)
    }

    fn snapshot(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.object(&format!("snap.{seq:020}"))
    }

    fn put_snapshot(&self, seq: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.check_lease()?;
        self.keep_snapshots(seq, &bytes)
    }

    fn head(&self) -> Result<ChainHead, StoreError> {
        if self.guard.is_none() {
            self.index()
                .map_err(|e| self.backend("reading the log", e))?;
        }
        Ok(self.lock().head)
    }

    fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        self.object(&format!("blob.{digest}"))
    }

    fn token(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        self.object(&format!("token.{digest}"))
    }

    fn find_token(
        &self,
        wanted: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Option<Digest>, StoreError> {
        for name in self.object_names("token.")? {
            let Some(digest) = name.strip_prefix("token.").and_then(|d| d.parse().ok()) else {
                continue;
            };
            if let Some(bytes) = self.object(&name)?
                && wanted(&bytes)
            {
                return Ok(Some(digest));
            }
        }
        Ok(None)
    }

    fn anchor(&self) -> Result<Option<Anchor>, StoreError> {
        Ok(None)
    }

    fn cut(&self, _cut: Cut) -> Result<(), StoreError> {
        Err(self.backend(
            "archiving",
            "a cell of a cluster cannot be archived yet (JetStream keeps its log)",
        ))
    }

    fn blob_digests(&self) -> Result<Vec<Digest>, StoreError> {
        Ok(self
            .object_names("blob.")?
            .iter()
            .filter_map(|name| name.strip_prefix("blob.")?.parse().ok())
            .collect())
    }

    fn root_public_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(Some(self.config.root_public_key.clone()))
    }

    fn data_id(&self) -> Result<Option<[u8; 16]>, StoreError> {
        Ok(self.config.cell_ids.get(self.cell as usize).copied())
    }

    fn limits(&self) -> Result<Limits, StoreError> {
        Ok(self.config.limits.clone())
    }

    fn location(&self) -> String {
        format!("{} cell {}", self.cluster.urls(), self.cell)
    }

    fn cell(&self) -> Option<toka_kernel::Cell> {
        // Both are below MAX_CELLS (checked when the cluster was created).
        Some(toka_kernel::Cell {
            index: u16::try_from(self.cell).ok()?,
            cells: u16::try_from(self.config.cells).ok()?,
        })
    }
}

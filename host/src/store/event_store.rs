//! Where the log lives: the `EventStore` trait and what it stores.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use toka_kernel::{ChainHead, Digest, Limits, TaskId};

/// The newest snapshots a store always keeps (besides the anchor's).
pub const SNAPSHOTS_KEPT: usize = 2;

/// How many of the newest snapshots a store passes to [`snapshot_dropped`]
/// (it decides about the one just past the newest [`SNAPSHOTS_KEPT`],
/// against the one before it).
pub const SNAPSHOTS_LOOKED_AT: usize = SNAPSHOTS_KEPT + 2;

/// Older snapshots are kept as *checkpoints* at least one record apart per
/// this many bytes of snapshot (see [`snapshot_dropped`]).
pub const CHECKPOINT_BYTES_PER_RECORD: usize = 16;

/// The snapshot to drop, if any, once one of `bytes` bytes was written:
/// `newest` are the stored snapshots' sequence numbers, ascending, the new
/// one last — the newest [`SNAPSHOTS_LOOKED_AT`] when there are that many
/// (more are not looked at).
///
/// Kept: the anchor's, the newest [`SNAPSHOTS_KEPT`], and, of the older
/// ones, each at least `bytes` / [`CHECKPOINT_BYTES_PER_RECORD`] records
/// after the previous one kept. So reading the log from any place replays
/// at most that many records (or the snapshot interval, if larger) from
/// the checkpoint before it, however long the log is; with records of
/// ~150 bytes the checkpoints take well under a tenth of the log's bytes.
/// Each write decides about one snapshot: the one that just stopped being
/// among the newest, against the checkpoint before it.
#[must_use]
pub fn snapshot_dropped(newest: &[u64], anchor: Option<u64>, bytes: usize) -> Option<u64> {
    let gap = u64::try_from(bytes / CHECKPOINT_BYTES_PER_RECORD)
        .unwrap_or(u64::MAX)
        .max(1);
    let older = newest.len().checked_sub(SNAPSHOTS_KEPT + 1)?;
    let candidate = newest[older];
    let previous = older.checked_sub(1).map_or(0, |i| newest[i]);
    (Some(candidate) != anchor && candidate - previous < gap).then_some(candidate)
}

/// The layout version of a data dir: tables, meta keys and their encodings.
/// Bumped when a release changes them; a store refuses to open a newer one.
///
/// - 1: the whole log from record 1.
/// - 2: a log whose beginning was archived: it starts at an [`Anchor`]
///   (`meta.anchor`). A store is marked 2 only when it is first archived, so
///   releases that read 1 keep opening every store that never was.
/// - 3: the log in frames of consecutive records (one row per batch, not
///   per record), with or without an anchor. A store in 1 or 2 is read as
///   it is and moved to 3 when first opened for writing.
pub const DATA_FORMAT: u16 = 3;

/// Rows [`EventStore::drop_archived`] is asked to delete per transaction:
/// a writer appending meanwhile waits for one such transaction at most.
pub(crate) const DROP_CHUNK: usize = 1024;

/// Where a store's log starts once its beginning was archived
/// (`toka archive`): the snapshot it is verified and recovered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anchor {
    /// The anchor snapshot: the state after this record. Kept until the
    /// next archive moves the anchor, whatever newer snapshots are written.
    pub snapshot: u64,
    /// The first record kept: `snapshot + 1`, or earlier when tasks were
    /// running at the snapshot (their journals refer to their records).
    pub kept_from: u64,
}

/// What [`EventStore::cut`] does, in one transaction.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The new anchor.
    pub anchor: Anchor,
    /// The anchor snapshot's bytes (stored under `anchor.snapshot`).
    pub snapshot: Vec<u8>,
    /// Blobs nothing kept refers to any more, to delete.
    pub blobs: Vec<Digest>,
    /// Tokens nothing kept refers to any more, to delete.
    pub tokens: Vec<Digest>,
}

/// A group of records committed together, with the blobs they reference.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// `(seq, record bytes)`, ascending and contiguous.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Content-addressed blobs (component bytes) first referenced here.
    pub blobs: Vec<(Digest, Arc<[u8]>)>,
    /// Capability tokens first referenced here, by the digest of their bytes.
    pub tokens: Vec<(Digest, Arc<[u8]>)>,
    /// A snapshot of the state after the last record, `(seq, bytes)`.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Tasks that ended in this batch, with the record that ended each:
    /// the index behind [`EventStore::task_end`].
    pub task_ends: Vec<(TaskId, u64)>,
    /// The chain head after the last record.
    pub head: ChainHead,
}

impl Batch {
    /// Whether there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.blobs.is_empty()
            && self.tokens.is_empty()
            && self.snapshot.is_none()
    }
}

/// An iterator over stored records, `(seq, bytes)` in ascending order.
pub type Records<'a> = Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + 'a>;

/// The durable home of the log, the blobs and the tokens.
///
/// `append` is called by one writer at a time; reads may come from any thread.
/// [`MemoryStore`](crate::MemoryStore) is for tests, [`RedbStore`](crate::RedbStore)
/// is the real thing.
pub trait EventStore: Send + Sync + 'static {
    /// Writes a batch in one durable transaction: all of it or none of it.
    /// Takes the batch by value, so a store may keep its buffers.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write or the commit fails; nothing of the batch
    /// is then stored.
    fn append(&self, batch: Batch) -> Result<(), StoreError>;

    /// The records from sequence number `from` on.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn records(&self, from: u64) -> Result<Records<'_>, StoreError>;

    /// Calls `each` with the records from sequence number `from` on, in
    /// order, until it breaks: [`EventStore::records`] without copying each
    /// record out of the store where the store can lend it (recovery and
    /// replay read every record once).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn each_record(
        &self,
        from: u64,
        each: &mut dyn FnMut(u64, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        for entry in self.records(from)? {
            let (seq, bytes) = entry?;
            if each(seq, &bytes).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// One record, by sequence number.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn record(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .records(seq)?
            .next()
            .transpose()?
            .filter(|(s, _)| *s == seq)
            .map(|(_, bytes)| bytes))
    }

    /// The record that ended `task` (completed or failed it), if it ended.
    /// Finished tasks leave the world state; this index finds them in the
    /// log.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn task_end(&self, task: TaskId) -> Result<Option<u64>, StoreError>;

    /// The sequence numbers of the stored snapshots, ascending.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn snapshots(&self) -> Result<Vec<u64>, StoreError>;

    /// The newest stored snapshot's sequence number below `below`: where a
    /// reader of the log from `below` starts (without listing them all).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn snapshot_below(&self, below: u64) -> Result<Option<u64>, StoreError> {
        Ok(self.snapshots()?.into_iter().rev().find(|s| *s < below))
    }

    /// The snapshot taken after record `seq`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn snapshot(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores a snapshot taken after record `seq` (which must be durable)
    /// and drops the older one [`snapshot_dropped`] names.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails.
    fn put_snapshot(&self, seq: u64, bytes: Vec<u8>) -> Result<(), StoreError>;

    /// The chain head stored beside the log: the last committed record.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn head(&self) -> Result<ChainHead, StoreError>;

    /// A stored blob (component bytes), by digest.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError>;

    /// A stored token, by the digest of its bytes.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn token(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError>;

    /// The first stored token (in the store's order) that `wanted` picks,
    /// by its digest: the tokens are read one at a time, never all held at
    /// once (a host stores one per agent it ever spawned).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn find_token(
        &self,
        wanted: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Option<Digest>, StoreError>;

    /// Where the log starts, if its beginning was archived; `None` for a log
    /// that starts at record 1.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn anchor(&self) -> Result<Option<Anchor>, StoreError>;

    /// Drops the beginning of the log once it is archived, in one durable
    /// transaction: stores the anchor snapshot and the anchor, deletes the
    /// listed blobs, and makes the records before `kept_from` and the
    /// snapshots before the anchor's unreachable. A store may leave
    /// deleting their bytes (and the records' task-end index entries) to
    /// [`EventStore::drop_archived`], so that the transaction stays short
    /// whatever was archived.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails; nothing is then changed.
    fn cut(&self, cut: Cut) -> Result<(), StoreError>;

    /// Deletes what [`EventStore::cut`] left of the records before the
    /// anchor's `kept_from` and of the snapshots before the anchor's, in
    /// durable transactions of at most `chunk` rows each (one snapshot
    /// each; a writer appending meanwhile waits for one at most),
    /// calling `each` with the time each took. Returns the rows deleted.
    /// Also finishes a deletion a crash interrupted.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when a write fails; the rows deleted so far stay
    /// deleted, the rest is deleted by the next call.
    fn drop_archived(
        &self,
        chunk: usize,
        each: &mut dyn FnMut(std::time::Duration),
    ) -> Result<u64, StoreError> {
        let _ = (chunk, each);
        Ok(0)
    }

    /// The digests of every stored blob.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn blob_digests(&self) -> Result<Vec<Digest>, StoreError>;

    /// The root public key (32 bytes) the data dir was created for, if it
    /// records one. A host refuses to open it with another root key.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn root_public_key(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// The data dir's id: a random value recorded when the store was
    /// created (or first opened by a release that records one), so that
    /// what the host derives from it — the `Idempotency-Key` of an outbound
    /// request — never collides with another installation's. `None` for a
    /// store opened read-only that has none yet.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn data_id(&self) -> Result<Option<[u8; 16]>, StoreError>;

    /// The kernel limits the log was written under (fixed at creation).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    fn limits(&self) -> Result<Limits, StoreError>;

    /// Where the store lives, for messages (e.g. the redb file's path).
    fn location(&self) -> String;

    /// The bytes still free where the store writes (the file system of a
    /// redb file), if it can tell: below the host's reserve, agents'
    /// operations are refused. `None` by default (a store in memory).
    fn free_space(&self) -> Option<u64> {
        None
    }

    /// The cell of a cluster whose log this is, if it is one: the kernel
    /// then mints ids carrying it and sends tasks for other cells' agents,
    /// on every replay as when first written.
    fn cell(&self) -> Option<toka_kernel::Cell> {
        None
    }
}

/// Why the store failed. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file exists but is not a Toka store.
    #[error("{path}: not a Toka data file: {reason}")]
    NotToka {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The store was written by a newer release.
    #[error(
        "{path}: written by a newer Toka (data format {found}; this build reads up to {supported}); upgrade toka to open it"
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The format in the file.
        found: u16,
        /// [`DATA_FORMAT`].
        supported: u16,
    },
    /// Another process has the store open.
    #[error("{path}: in use by another toka process")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The file was not closed cleanly (the writer crashed) and must be
    /// repaired by opening it for writing.
    #[error(
        "{path}: needs a repair after a crash; open it for writing once (any command that writes does)"
    )]
    NeedsRepair {
        /// The file.
        path: PathBuf,
    },
    /// Stored data does not decode.
    #[error("{path}: corrupt {what}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Why it does not decode.
        reason: String,
    },
    /// A replicated log refused the append: another host owns the cell now
    /// (or this host's lease ran out). This host must stop.
    #[error("{path}: fenced: {reason}; this host stops serving it")]
    Fenced {
        /// The cell.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The storage engine or the disk failed.
    #[error("{path}: {message}")]
    Backend {
        /// The file.
        path: PathBuf,
        /// The engine's message.
        message: String,
    },
}

/// A store as the capability gate's source of token bytes.
pub(crate) struct StoreTokens(pub(crate) Arc<dyn EventStore>);

impl crate::capability::gate::TokenSource for StoreTokens {
    fn token_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>, String> {
        self.0.token(digest).map_err(|e| e.to_string())
    }
}

/// A fresh random data-dir id, from the operating system.
pub(crate) fn random_data_id() -> Result<[u8; 16], getrandom::Error> {
    let mut id = [0; 16];
    getrandom::fill(&mut id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::{SNAPSHOTS_LOOKED_AT, snapshot_dropped};

    /// The snapshots kept when one of `bytes` bytes is written at each of
    /// `seqs`, in turn.
    fn kept(seqs: impl IntoIterator<Item = u64>, anchor: Option<u64>, bytes: usize) -> Vec<u64> {
        let mut kept = Vec::new();
        for seq in seqs {
            kept.push(seq);
            let from = kept.len().saturating_sub(SNAPSHOTS_LOOKED_AT);
            if let Some(dropped) = snapshot_dropped(&kept[from..], anchor, bytes) {
                kept.retain(|s| *s != dropped);
            }
        }
        kept
    }

    #[test]
    fn small_snapshots_are_all_kept_as_checkpoints() {
        // 16 KiB: checkpoints at least 1 024 records apart.
        let seqs: Vec<u64> = (1..=50).map(|i| i * 10_000).collect();
        assert_eq!(kept(seqs.clone(), None, 16 << 10), seqs);
    }

    #[test]
    fn large_snapshots_thin_out_but_the_newest_and_the_anchor_stay() {
        // 1.6 MB: checkpoints at least 100 000 records apart.
        let seqs = (3..=30).map(|i| i * 10_000);
        assert_eq!(
            kept(seqs, Some(30_000), 1_600_000),
            vec![30_000, 130_000, 230_000, 290_000, 300_000]
        );
        // Fewer than three: nothing to decide.
        assert_eq!(snapshot_dropped(&[10, 20], None, 1 << 30), None);
    }
}

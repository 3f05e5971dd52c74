//! An in-memory `EventStore`, for tests and benchmarks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use toka_kernel::{ChainHead, Digest, Limits, TaskId};

use crate::store::event_store::{
    Anchor, Batch, Cut, EventStore, Records, SNAPSHOTS_LOOKED_AT, StoreError, snapshot_dropped,
};

/// An [`EventStore`] in memory: nothing survives the process.
///
/// Clones share the same storage, so a test can keep one to inspect what a
/// host wrote, or reopen a host on it to test a restart.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Ascending by seq (the writer appends in order).
    records: Vec<(u64, Vec<u8>)>,
    blobs: BTreeMap<Digest, Vec<u8>>,
    tokens: BTreeMap<Digest, Vec<u8>>,
    snapshots: BTreeMap<u64, Vec<u8>>,
    task_ends: BTreeMap<TaskId, u64>,
    head: ChainHead,
    anchor: Option<Anchor>,
    limits: Limits,
    data_id: [u8; 16],
    cell: Option<toka_kernel::Cell>,
}

impl MemoryStore {
    /// An empty store whose log is written under `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self::with_cell(limits, None)
    }

    /// An empty store of a cluster cell's log (see [`EventStore::cell`]):
    /// for tests of what crosses cells without JetStream.
    #[must_use]
    pub fn in_cell(limits: Limits, cell: toka_kernel::Cell) -> Self {
        Self::with_cell(limits, Some(cell))
    }

    fn with_cell(limits: Limits, cell: Option<toka_kernel::Cell>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                records: Vec::new(),
                blobs: BTreeMap::new(),
                tokens: BTreeMap::new(),
                snapshots: BTreeMap::new(),
                task_ends: BTreeMap::new(),
                head: ChainHead::default(),
                anchor: None,
                limits,
                data_id: crate::store::event_store::random_data_id()
                    .expect("the operating system provides randomness"),
                cell,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn keep_snapshot(&mut self, seq: u64, bytes: Vec<u8>) {
        // Recovery starts at the anchor: one at or before it is of no use.
        if self.anchor.is_some_and(|a| seq <= a.snapshot) {
            return;
        }
        let len = bytes.len();
        self.snapshots.insert(seq, bytes);
        let mut newest: Vec<u64> = self
            .snapshots
            .keys()
            .rev()
            .take(SNAPSHOTS_LOOKED_AT)
            .copied()
            .collect();
        newest.reverse();
        if let Some(old) = snapshot_dropped(&newest, self.anchor.map(|a| a.snapshot), len) {
            self.snapshots.remove(&old);
        }
    }
}

impl EventStore for MemoryStore {
    fn append(&self, batch: Batch) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if !batch.records.is_empty() {
            inner.head = batch.head;
        }
        inner.records.extend(batch.records);
        for (digest, bytes) in batch.blobs {
            inner.blobs.entry(digest).or_insert_with(|| bytes.to_vec());
        }
        for (digest, bytes) in batch.tokens {
            inner.tokens.entry(digest).or_insert_with(|| bytes.to_vec());
        }
        if let Some((seq, bytes)) = batch.snapshot {
            inner.keep_snapshot(seq, bytes);
        }
        inner.task_ends.extend(batch.task_ends);
        Ok(())
    }

    fn task_end(&self, task: TaskId) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().task_ends.get(&task).copied())
    }

    fn snapshots(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.lock().snapshots.keys().copied().collect())
    }

    fn snapshot(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().snapshots.get(&seq).cloned())
    }

    fn put_snapshot(&self, seq: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.lock().keep_snapshot(seq, bytes);
        Ok(())
    }

    fn records(&self, from: u64) -> Result<Records<'_>, StoreError> {
        let inner = self.lock();
        let start = inner.records.partition_point(|(seq, _)| *seq < from);
        let records: Vec<_> = inner.records[start..]
            .iter()
            .map(|(seq, bytes)| Ok((*seq, bytes.clone())))
            .collect();
        Ok(Box::new(records.into_iter()))
    }

    fn head(&self) -> Result<ChainHead, StoreError> {
        Ok(self.lock().head)
    }

    fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().blobs.get(digest).cloned())
    }

    fn token(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().tokens.get(digest).cloned())
    }

    fn find_token(
        &self,
        wanted: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Option<Digest>, StoreError> {
        Ok(self
            .lock()
            .tokens
            .iter()
            .find_map(|(digest, bytes)| wanted(bytes).then_some(*digest)))
    }

    fn anchor(&self) -> Result<Option<Anchor>, StoreError> {
        Ok(self.lock().anchor)
    }

    fn cut(&self, cut: Cut) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let Anchor {
            snapshot,
            kept_from,
        } = cut.anchor;
        inner.anchor = Some(cut.anchor);
        inner.snapshots.insert(snapshot, cut.snapshot);
        inner.snapshots.retain(|seq, _| *seq >= snapshot);
        inner.records.retain(|(seq, _)| *seq >= kept_from);
        inner.task_ends.retain(|_, seq| *seq >= kept_from);
        for digest in &cut.blobs {
            inner.blobs.remove(digest);
        }
        for digest in &cut.tokens {
            inner.tokens.remove(digest);
        }
        Ok(())
    }

    fn blob_digests(&self) -> Result<Vec<Digest>, StoreError> {
        Ok(self.lock().blobs.keys().copied().collect())
    }

    fn root_public_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }

    fn data_id(&self) -> Result<Option<[u8; 16]>, StoreError> {
        Ok(Some(self.lock().data_id))
    }

    fn limits(&self) -> Result<Limits, StoreError> {
        Ok(self.lock().limits.clone())
    }

    fn cell(&self) -> Option<toka_kernel::Cell> {
        self.lock().cell
    }

    fn location(&self) -> String {
        "memory".into()
    }
}

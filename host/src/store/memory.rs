//! An in-memory `EventStore`, for tests and benchmarks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use toka_kernel::{ChainHead, Digest, Limits, TaskId};

use crate::store::event_store::{
    Anchor, Batch, Cut, EventStore, Records, SNAPSHOTS_LOOKED_AT, StoreError, snapshot_dropped,
};

/// Bytes of records [`MemoryStore`]'s `records` copies under its lock at a
/// time (at least one record).
const READ_BATCH_BYTES: usize = 1 << 20;

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
    records: Log,
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
                records: Log::default(),
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

/// Bytes of the chunks a [`Log`] packs records into (a larger record gets a
/// chunk of its own size).
const CHUNK_BYTES: usize = 1 << 20;

/// The log's records, packed into chunks of [`CHUNK_BYTES`] as redb packs
/// them into frames: a record's bytes are copied in and the writer's buffer
/// is freed. Kept one allocation each, every record's buffer would come
/// from fresh pages, the page fault paid by the thread that sealed it (an
/// agent's, in the benchmarks of the data path).
#[derive(Debug, Default)]
struct Log {
    /// The sequence number of the first record kept.
    first: u64,
    chunks: Vec<Vec<u8>>,
    /// Each record's place, in order: its chunk and its byte range there.
    places: Vec<(usize, std::ops::Range<usize>)>,
}

impl Log {
    /// Appends the record `seq`, the one after the last (the writer appends
    /// in order, without gaps).
    fn push(&mut self, seq: u64, bytes: &[u8]) {
        if self.places.is_empty() {
            self.first = seq;
        }
        debug_assert_eq!(seq, self.first + self.places.len() as u64);
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= bytes.len());
        if !fits {
            self.chunks
                .push(Vec::with_capacity(CHUNK_BYTES.max(bytes.len())));
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        let start = chunk.len();
        chunk.extend_from_slice(bytes);
        self.places.push((index, start..chunk.len()));
    }

    /// The record `seq`, if kept.
    fn get(&self, seq: u64) -> Option<&[u8]> {
        let index = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        let (chunk, range) = self.places.get(index)?;
        Some(&self.chunks[*chunk][range.clone()])
    }

    /// The records from `from` on, in order.
    fn from(&self, from: u64) -> impl Iterator<Item = (u64, &[u8])> {
        let skip = usize::try_from(from.saturating_sub(self.first)).unwrap_or(usize::MAX);
        self.places
            .iter()
            .enumerate()
            .skip(skip)
            .map(|(i, (chunk, range))| (self.first + i as u64, &self.chunks[*chunk][range.clone()]))
    }

    /// Drops the records before `kept_from`, packing the rest again.
    fn drop_before(&mut self, kept_from: u64) {
        let mut kept = Log::default();
        for (seq, bytes) in self.from(kept_from) {
            kept.push(seq, bytes);
        }
        *self = kept;
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
        for (seq, bytes) in &batch.records {
            inner.records.push(*seq, bytes);
        }
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
        // Copied out a batch at a time, each under the lock: a reader
        // holds about a batch, not the log's tail, and the writer waits
        // for one batch's copy at most.
        let mut next = from;
        let mut batch = Vec::new().into_iter();
        Ok(Box::new(std::iter::from_fn(move || {
            if batch.len() == 0 {
                let inner = self.lock();
                let mut bytes = 0;
                let copied: Vec<(u64, Vec<u8>)> = inner
                    .records
                    .from(next)
                    .take_while(|(_, record)| {
                        let more = bytes < READ_BATCH_BYTES;
                        bytes += record.len();
                        more
                    })
                    .map(|(seq, record)| (seq, record.to_vec()))
                    .collect();
                next = copied.last()?.0 + 1;
                batch = copied.into_iter();
            }
            batch.next().map(Ok)
        })))
    }

    fn record(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().records.get(seq).map(<[u8]>::to_vec))
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
        inner.records.drop_before(kept_from);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of varied sizes, some larger than a chunk.
    fn records() -> Vec<(u64, Vec<u8>)> {
        (1..=40u64)
            .map(|seq| {
                let len = if seq % 13 == 0 {
                    CHUNK_BYTES + 7
                } else {
                    (seq as usize * 37_001) % 300_000
                };
                (seq, vec![seq as u8; len])
            })
            .collect()
    }

    #[test]
    fn the_log_gives_back_each_record_as_appended() {
        let mut log = Log::default();
        for (seq, bytes) in &records() {
            log.push(*seq, bytes);
        }
        assert!(log.chunks.len() > 3, "the records span several chunks");
        for (seq, bytes) in &records() {
            assert_eq!(log.get(*seq), Some(bytes.as_slice()), "record {seq}");
        }
        assert_eq!(log.get(0), None);
        assert_eq!(log.get(41), None);
        let tail: Vec<_> = log.from(30).map(|(seq, b)| (seq, b.to_vec())).collect();
        assert_eq!(tail, records()[29..]);
        assert_eq!(log.from(0).count(), 40);
        assert_eq!(log.from(41).count(), 0);
    }

    #[test]
    fn dropping_the_oldest_records_keeps_the_rest() {
        let mut log = Log::default();
        for (seq, bytes) in &records() {
            log.push(*seq, bytes);
        }
        log.drop_before(27);
        assert_eq!(log.get(26), None);
        let kept: Vec<_> = log.from(1).map(|(seq, b)| (seq, b.to_vec())).collect();
        assert_eq!(kept, records()[26..]);
        log.push(41, b"next");
        assert_eq!(log.get(41), Some(&b"next"[..]));
        log.drop_before(100);
        assert_eq!(log.from(1).count(), 0);
        log.push(100, b"after");
        assert_eq!(log.get(100), Some(&b"after"[..]));
    }

    #[test]
    fn a_store_reads_back_what_batches_appended() {
        let store = MemoryStore::new(Limits::default());
        for chunk in records().chunks(7) {
            let batch = Batch {
                records: chunk.to_vec(),
                ..Batch::default()
            };
            store.append(batch).unwrap();
        }
        let read: Vec<_> = store.records(5).unwrap().map(Result::unwrap).collect();
        assert_eq!(read, records()[4..]);
        assert_eq!(store.record(13).unwrap(), Some(records()[12].1.clone()));
        assert_eq!(store.record(99).unwrap(), None);
    }

    #[test]
    fn a_reader_copies_the_log_a_batch_at_a_time() {
        let store = MemoryStore::new(Limits::default());
        store
            .append(Batch {
                records: records(),
                ..Batch::default()
            })
            .unwrap();
        let mut reader = store.records(1).unwrap();
        assert_eq!(reader.next().unwrap().unwrap(), records()[0]);
        // A record appended while it reads is read too: the reader did not
        // copy the log's tail when it started.
        let late = (41, b"late".to_vec());
        store
            .append(Batch {
                records: vec![late.clone()],
                ..Batch::default()
            })
            .unwrap();
        let rest: Vec<_> = reader.map(Result::unwrap).collect();
        assert_eq!(rest.len(), 40);
        assert_eq!(rest[..39], records()[1..]);
        assert_eq!(rest[39], late);
    }
}

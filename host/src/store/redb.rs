//! The durable `EventStore`: one redb file.
//!
//! Tables (the data-dir format, version [`DATA_FORMAT`]; see docs/format.md):
//!
//! | table       | key        | value                                        |
//! |-------------|------------|----------------------------------------------|
//! | `log`       | `u64` seq  | a frame of consecutive log records from that seq (`frame.rs`) |
//! | `meta`      | `&str`     | `magic` = `toka`, `format` (u16 LE), `head` (postcard `ChainHead`), `limits` (postcard `Limits`), `root_public_key` (32 bytes), `created_by`, `data_id`, `anchor` (postcard `Anchor`, once archived) |
//! | `blobs`     | `[u8; 32]` | component bytes, by BLAKE3 digest            |
//! | `tokens`    | `[u8; 32]` | capability token bytes, by BLAKE3 digest     |
//! | `snapshots` | `u64` seq  | the state after that record (see `snapshot.rs`) |
//!
//! Data formats 1 and 2 kept one `events` row per record (`u64` seq → the
//! record's bytes); a store in either is read as it is, and moved into
//! frames when it is first opened for writing ([`RedbStore::open`]).
//!
//! Every append is one write transaction with immediate durability. The
//! file is opened in redb's single-writer mode: one process (the host)
//! writes, and any number of processes may open it read-only at the same
//! time and follow its commits (`toka events --follow`, `toka state`).

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use redb::{
    ConcurrencyMode, Database, DatabaseError, Durability, ReadOnlyDatabase, ReadTransaction,
    ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageBackend, TableDefinition,
    TableError,
};
use toka_kernel::{ChainHead, Digest, Limits, TaskId};

use crate::store::event_store::{
    Anchor, Batch, Cut, DATA_FORMAT, DROP_CHUNK, EventStore, Records, SNAPSHOTS_LOOKED_AT,
    StoreError, snapshot_dropped,
};
use crate::store::frame;

/// The log: frames of consecutive records, by the first one's seq.
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// The log in data formats 1 and 2: one row per record.
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
/// The first data format with the log in frames.
const FRAMES_FORMAT: u16 = 3;
/// Records moved into frames per transaction when a store is migrated.
const MIGRATE_RECORDS: usize = 100_000;
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const BLOBS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("blobs");
const TOKENS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("tokens");
const SNAPSHOTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("snapshots");
/// Task id (big-endian) → the record that ended the task.
const TASK_ENDS: TableDefinition<'_, &[u8; 16], u64> = TableDefinition::new("task_ends");

const MAGIC: &[u8] = b"toka";

/// An [`EventStore`] in a redb file.
pub struct RedbStore {
    db: Db,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.db {
            Db::Write(_) => "write",
            Db::Read(_) => "read-only",
        };
        write!(f, "RedbStore({}, {mode})", self.path.display())
    }
}

enum Db {
    Write(Database),
    Read(ReadOnlyDatabase),
}

/// Bytes of pages redb keeps in memory. Its default is 1 GiB, which a
/// write flood fills with pages nobody reads again; the host reads the log
/// back only to recover, verify and answer re-runs.
const CACHE_BYTES: usize = 64 << 20;

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder
        .set_concurrency_mode(ConcurrencyMode::SingleWriter)
        .set_cache_size(CACHE_BYTES);
    builder
}

impl RedbStore {
    /// Creates a new store at `path` (which must not exist) for a log written
    /// under `limits`, whose tokens are rooted in `root_public_key`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the file exists or cannot be written. On error no
    /// file is left behind.
    pub fn create(
        path: &Path,
        limits: &Limits,
        root_public_key: &[u8],
    ) -> Result<Self, StoreError> {
        if path.exists() {
            return Err(backend(
                path,
                "refusing to create a store over an existing file",
            ));
        }
        let result = builder()
            .create(path)
            .map_err(|e| open_error(path, e))
            .and_then(|db| Self::init(Db::Write(db), path, limits, root_public_key));
        if result.is_err() {
            // Nothing half-written: the file is either complete or absent.
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Opens an existing store for writing (one writer at a time).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotToka`] for a file that is not a Toka store,
    /// [`StoreError::NewerFormat`] for one written by a newer release,
    /// [`StoreError::InUse`] when another process writes to it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = builder().open(path).map_err(|e| open_error(path, e))?;
        let store = Self::checked(Db::Write(db), path)?;
        store.finish_dropping()?;
        Ok(store)
    }

    /// Finishes deleting what an archive's cut dropped when a crash
    /// interrupted it (see [`EventStore::drop_archived`]): a frame before
    /// the anchor's `kept_from` or a snapshot before its snapshot is left.
    fn finish_dropping(&self) -> Result<(), StoreError> {
        let p = &self.path;
        let left = {
            let tx = self.read()?;
            let Some(anchor) = anchor_in(p, &tx)? else {
                return Ok(());
            };
            let frames = match optional_table(p, &tx, LOG)? {
                Some(log) => log
                    .range(..anchor.kept_from)
                    .map_err(|e| backend(p, e))?
                    .next()
                    .is_some(),
                None => false,
            };
            let snapshots = match optional_table(p, &tx, SNAPSHOTS)? {
                Some(table) => table
                    .range(..anchor.snapshot)
                    .map_err(|e| backend(p, e))?
                    .next()
                    .is_some(),
                None => false,
            };
            frames || snapshots
        };
        if left {
            let rows = self.drop_archived(DROP_CHUNK, &mut |_| {})?;
            tracing::info!(rows, store = %p.display(), "deleted the archived rows an interrupted archive left");
        }
        Ok(())
    }

    /// Opens an existing store read-only, alongside a writer if there is one.
    ///
    /// # Errors
    ///
    /// As [`RedbStore::open`], except that a running writer is no obstacle.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let db = builder()
            .open_read_only(path)
            .map_err(|e| open_error(path, e))?;
        Self::checked(Db::Read(db), path)
    }

    /// A store over any redb storage backend (e.g. one that injects faults),
    /// created empty when `init` is given, else opened. `label` names it in
    /// errors.
    ///
    /// # Errors
    ///
    /// As [`RedbStore::create`] and [`RedbStore::open`].
    pub fn with_backend(
        backend: impl StorageBackend,
        label: &str,
        init: Option<(&Limits, &[u8])>,
    ) -> Result<Self, StoreError> {
        let path = PathBuf::from(label);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|e| open_error(&path, e))?;
        match init {
            Some((limits, root)) => Self::init(Db::Write(db), &path, limits, root),
            None => Self::checked(Db::Write(db), &path),
        }
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn checked(db: Db, path: &Path) -> Result<Self, StoreError> {
        let store = Self {
            db,
            path: path.to_owned(),
        };
        let format = store.check_meta()?;
        if matches!(store.db, Db::Write(_)) {
            if store.meta_bytes("data_id")?.is_none() {
                // A data dir created before it had an id gets one now.
                store.put_meta("data_id", &new_data_id()?)?;
            }
            if format < FRAMES_FORMAT {
                store.migrate_to_frames()?;
            }
        }
        Ok(store)
    }

    /// Moves a log of one row per record (data formats 1 and 2) into
    /// frames, [`MIGRATE_RECORDS`] at a time: each transaction moves the
    /// oldest rows left, so every commit holds the whole log (frames, then
    /// rows) and an interrupted migration goes on at the next open. The
    /// last one drops the old table and marks the store [`DATA_FORMAT`].
    fn migrate_to_frames(&self) -> Result<(), StoreError> {
        let p = &self.path;
        let mut buf = Vec::with_capacity(frame::FRAME_BYTES);
        let mut moved = 0u64;
        let total = match optional_table(p, &self.read()?, EVENTS)? {
            Some(events) => events.len().map_err(|e| backend(p, e))?,
            None => 0,
        };
        if total > 0 {
            tracing::warn!(
                records = total,
                store = %p.display(),
                "moving the log into frames (data format {DATA_FORMAT}); once, before the store is used"
            );
        }
        loop {
            let mut tx = self.writer()?.begin_write().map_err(|e| backend(p, e))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| backend(p, e))?;
            let done = {
                let mut events = tx.open_table(EVENTS).map_err(|e| backend(p, e))?;
                let rows: Vec<(u64, Vec<u8>)> = events
                    .iter()
                    .map_err(|e| backend(p, e))?
                    .take(MIGRATE_RECORDS)
                    .map(|entry| entry.map(|(k, v)| (k.value(), v.value().to_vec())))
                    .collect::<Result<_, _>>()
                    .map_err(|e| backend(p, e))?;
                if let Some(&(last, _)) = rows.last() {
                    let mut log = tx.open_table(LOG).map_err(|e| backend(p, e))?;
                    frame::encode(&rows, &mut buf, |first, bytes| {
                        log.insert(first, bytes).map(drop)
                    })
                    .map_err(|e| backend(p, e))?;
                    events
                        .retain_in(..=last, |_, _| false)
                        .map_err(|e| backend(p, e))?;
                    moved += rows.len() as u64;
                    tracing::info!(moved, of = total, "records moved into frames");
                }
                rows.is_empty()
            };
            if done {
                tx.delete_table(EVENTS).map_err(|e| backend(p, e))?;
                tx.open_table(LOG).map_err(|e| backend(p, e))?;
                tx.open_table(META)
                    .map_err(|e| backend(p, e))?
                    .insert("format", &DATA_FORMAT.to_le_bytes()[..])
                    .map_err(|e| backend(p, e))?;
            }
            tx.commit().map_err(|e| backend(p, e))?;
            if done {
                return Ok(());
            }
        }
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let p = &self.path;
        let mut tx = self.writer()?.begin_write().map_err(|e| backend(p, e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| backend(p, e))?;
        tx.open_table(META)
            .map_err(|e| backend(p, e))?
            .insert(key, value)
            .map_err(|e| backend(p, e))?;
        tx.commit().map_err(|e| backend(p, e))
    }

    fn writer(&self) -> Result<&Database, StoreError> {
        match &self.db {
            Db::Write(db) => Ok(db),
            Db::Read(_) => Err(backend(&self.path, "the store was opened read-only")),
        }
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        match &self.db {
            Db::Write(db) => db.begin_read(),
            Db::Read(db) => db.begin_read(),
        }
        .map_err(|e| backend(&self.path, e))
    }

    fn init(
        db: Db,
        path: &Path,
        limits: &Limits,
        root_public_key: &[u8],
    ) -> Result<Self, StoreError> {
        let store = Self {
            db,
            path: path.to_owned(),
        };
        let p = &store.path;
        let mut tx = store.writer()?.begin_write().map_err(|e| backend(p, e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| backend(p, e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| backend(p, e))?;
            let limits = postcard::to_allocvec(limits).map_err(|e| backend(p, e))?;
            let head = postcard::to_allocvec(&ChainHead::default()).map_err(|e| backend(p, e))?;
            let created_by = concat!("toka ", env!("CARGO_PKG_VERSION"));
            for (key, value) in [
                ("magic", MAGIC),
                ("format", &DATA_FORMAT.to_le_bytes()[..]),
                ("limits", &limits),
                ("head", &head),
                ("root_public_key", root_public_key),
                ("created_by", created_by.as_bytes()),
                ("data_id", &new_data_id()?[..]),
            ] {
                meta.insert(key, value).map_err(|e| backend(p, e))?;
            }
            tx.open_table(LOG).map_err(|e| backend(p, e))?;
            tx.open_table(BLOBS).map_err(|e| backend(p, e))?;
            tx.open_table(TOKENS).map_err(|e| backend(p, e))?;
            tx.open_table(SNAPSHOTS).map_err(|e| backend(p, e))?;
        }
        tx.commit().map_err(|e| backend(p, e))?;
        Ok(store)
    }

    /// Checks that this is a Toka store this build reads; returns its data
    /// format.
    fn check_meta(&self) -> Result<u16, StoreError> {
        let p = &self.path;
        let not_toka = |reason: &str| StoreError::NotToka {
            path: p.clone(),
            reason: reason.into(),
        };
        let tx = self.read()?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => {
                return Err(not_toka("a redb file without Toka's metadata"));
            }
            Err(e) => return Err(backend(p, e)),
        };
        let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta
                .get(key)
                .map_err(|e| backend(p, e))?
                .map(|v| v.value().to_vec()))
        };
        if get("magic")?.as_deref() != Some(MAGIC) {
            return Err(not_toka("a redb file without Toka's metadata"));
        }
        let format = get("format")?
            .and_then(|v| <[u8; 2]>::try_from(v.as_slice()).ok())
            .map(u16::from_le_bytes)
            .ok_or_else(|| not_toka("its format version is missing"))?;
        if format > DATA_FORMAT {
            return Err(StoreError::NewerFormat {
                path: p.clone(),
                found: format,
                supported: DATA_FORMAT,
            });
        }
        Ok(format)
    }

    fn meta_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let meta = tx.open_table(META).map_err(|e| backend(p, e))?;
        Ok(meta
            .get(key)
            .map_err(|e| backend(p, e))?
            .map(|v| v.value().to_vec()))
    }

    fn meta_value<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T, StoreError> {
        let p = &self.path;
        let value = self
            .meta_bytes(key)?
            .ok_or_else(|| corrupt(p, key, "missing"))?;
        postcard::from_bytes(&value).map_err(|e| corrupt(p, key, e))
    }

    fn by_digest(
        &self,
        table: TableDefinition<'_, &[u8; 32], &[u8]>,
        digest: &Digest,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let table = tx.open_table(table).map_err(|e| backend(p, e))?;
        Ok(table
            .get(digest.as_bytes())
            .map_err(|e| backend(p, e))?
            .map(|v| v.value().to_vec()))
    }

    /// Compacts the file, giving back the space of deleted records (after
    /// an archive). Returns whether anything was compacted.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store is read-only or compaction fails.
    pub fn compact(&mut self) -> Result<bool, StoreError> {
        let p = self.path.clone();
        match &mut self.db {
            Db::Write(db) => db.compact().map_err(|e| backend(&p, e)),
            Db::Read(_) => Err(backend(&p, "the store was opened read-only")),
        }
    }

    /// Runs `f` in a durable write transaction of its own, then calls
    /// `each` with the time it took.
    fn in_short_transaction(
        &self,
        each: &mut dyn FnMut(std::time::Duration),
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let p = &self.path;
        let started = std::time::Instant::now();
        let mut tx = self.writer()?.begin_write().map_err(|e| backend(p, e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| backend(p, e))?;
        f(&tx)?;
        tx.commit().map_err(|e| backend(p, e))?;
        each(started.elapsed());
        Ok(())
    }

    /// Writes a snapshot inside an open write transaction, dropping old ones
    /// (but never the anchor's).
    fn write_snapshot(
        &self,
        tx: &redb::WriteTransaction,
        seq: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let p = &self.path;
        let anchor = {
            let meta = tx.open_table(META).map_err(|e| backend(p, e))?;
            let value = meta.get("anchor").map_err(|e| backend(p, e))?;
            value
                .map(|v| postcard::from_bytes::<Anchor>(v.value()))
                .transpose()
                .map_err(|e| corrupt(p, "anchor", e))?
        };
        // One at or before the anchor (taken while an archive was cut) is
        // of no use: recovery starts at the anchor.
        if anchor.is_some_and(|a| seq <= a.snapshot) {
            return Ok(());
        }
        let mut table = tx.open_table(SNAPSHOTS).map_err(|e| backend(p, e))?;
        table.insert(seq, bytes).map_err(|e| backend(p, e))?;
        // The newest few only: each holds a whole snapshot.
        let mut newest: Vec<u64> = table
            .iter()
            .map_err(|e| backend(p, e))?
            .rev()
            .take(SNAPSHOTS_LOOKED_AT)
            .map(|entry| entry.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()
            .map_err(|e| backend(p, e))?;
        newest.reverse();
        if let Some(old) = snapshot_dropped(&newest, anchor.map(|a| a.snapshot), bytes.len()) {
            table.remove(old).map_err(|e| backend(p, e))?;
        }
        Ok(())
    }
}

/// `table` in `tx`, or `None` while the data dir has none (nothing was
/// stored in it yet, or it predates the table).
fn optional_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    path: &Path,
    tx: &ReadTransaction,
    table: TableDefinition<'static, K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match tx.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(backend(path, e)),
    }
}

impl EventStore for RedbStore {
    fn append(&self, batch: Batch) -> Result<(), StoreError> {
        let p = &self.path;
        let mut tx = self.writer()?.begin_write().map_err(|e| backend(p, e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| backend(p, e))?;
        {
            if !batch.records.is_empty() {
                let mut log = tx.open_table(LOG).map_err(|e| backend(p, e))?;
                let mut buf = Vec::with_capacity(frame::FRAME_BYTES);
                frame::encode(&batch.records, &mut buf, |first, bytes| {
                    log.insert(first, bytes).map(drop)
                })
                .map_err(|e| backend(p, e))?;
            }
            for (table, items) in [(BLOBS, &batch.blobs), (TOKENS, &batch.tokens)] {
                if items.is_empty() {
                    continue;
                }
                let mut table = tx.open_table(table).map_err(|e| backend(p, e))?;
                for (digest, bytes) in items {
                    table
                        .insert(digest.as_bytes(), &bytes[..])
                        .map_err(|e| backend(p, e))?;
                }
            }
            if !batch.task_ends.is_empty() {
                let mut ends = tx.open_table(TASK_ENDS).map_err(|e| backend(p, e))?;
                for (task, seq) in &batch.task_ends {
                    ends.insert(&task.as_u128().to_be_bytes(), *seq)
                        .map_err(|e| backend(p, e))?;
                }
            }
            if !batch.records.is_empty() {
                let mut meta = tx.open_table(META).map_err(|e| backend(p, e))?;
                let head = postcard::to_allocvec(&batch.head).map_err(|e| backend(p, e))?;
                meta.insert("head", head.as_slice())
                    .map_err(|e| backend(p, e))?;
            }
        }
        if let Some((seq, bytes)) = &batch.snapshot {
            self.write_snapshot(&tx, *seq, bytes)?;
        }
        tx.commit().map_err(|e| backend(p, e))
    }

    fn records(&self, from: u64) -> Result<Records<'_>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let from = from.max(kept_from(p, &tx)?);
        let framed = match optional_table(p, &tx, LOG)? {
            Some(log) => {
                let start = frame_holding(p, &log, from)?.map_or(from, |(first, _)| first);
                Some(FrameRecords {
                    frames: log.range(start..).map_err(|e| backend(p, e))?,
                    frame: None,
                    from,
                    path: p.clone(),
                    failed: false,
                })
            }
            None => None,
        };
        // A store not moved into frames yet (read-only, or interrupted):
        // its rows follow the frames.
        let rows = match optional_table(p, &tx, EVENTS)? {
            Some(events) => {
                let p = p.clone();
                let range = events.range(from..).map_err(|e| backend(&p, e))?;
                Some(range.map(move |entry| {
                    entry
                        .map(|(k, v)| (k.value(), v.value().to_vec()))
                        .map_err(|e| backend(&p, e))
                }))
            }
            None => None,
        };
        Ok(Box::new(
            framed
                .into_iter()
                .flatten()
                .chain(rows.into_iter().flatten()),
        ))
    }

    fn each_record(
        &self,
        from: u64,
        each: &mut dyn FnMut(u64, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let from = from.max(kept_from(p, &tx)?);
        if let Some(log) = optional_table(p, &tx, LOG)? {
            let start = frame_holding(p, &log, from)?.map_or(from, |(first, _)| first);
            for entry in log.range(start..).map_err(|e| backend(p, e))? {
                let (first, frame) = entry.map_err(|e| backend(p, e))?;
                let first = first.value();
                let (mut seq, mut at) = (first, 0);
                while let Some(record) = frame::next(frame.value(), &mut at) {
                    let record = record.map_err(|e| torn(p, first, e))?;
                    if seq >= from && each(seq, record).is_break() {
                        return Ok(());
                    }
                    seq += 1;
                }
            }
        }
        // A store not moved into frames yet: its rows follow the frames.
        if let Some(events) = optional_table(p, &tx, EVENTS)? {
            for entry in events.range(from..).map_err(|e| backend(p, e))? {
                let (seq, record) = entry.map_err(|e| backend(p, e))?;
                if each(seq.value(), record.value()).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn record(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        if seq < kept_from(p, &tx)? {
            return Ok(None);
        }
        if let Some(log) = optional_table(p, &tx, LOG)?
            && let Some((first, frame)) = frame_holding(p, &log, seq)?
        {
            let found = frame::nth(frame.value(), seq - first)
                .map_err(|e| torn(p, first, e))?
                .map(<[u8]>::to_vec);
            if found.is_some() {
                return Ok(found);
            }
        }
        let Some(events) = optional_table(p, &tx, EVENTS)? else {
            return Ok(None);
        };
        Ok(events
            .get(seq)
            .map_err(|e| backend(p, e))?
            .map(|v| v.value().to_vec()))
    }

    fn head(&self) -> Result<ChainHead, StoreError> {
        self.meta_value("head")
    }

    fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        self.by_digest(BLOBS, digest)
    }

    fn token(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        self.by_digest(TOKENS, digest)
    }

    fn find_token(
        &self,
        wanted: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Option<Digest>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let table = tx.open_table(TOKENS).map_err(|e| backend(p, e))?;
        for entry in table.iter().map_err(|e| backend(p, e))? {
            let (k, v) = entry.map_err(|e| backend(p, e))?;
            if wanted(v.value()) {
                return Ok(Some(Digest(*k.value())));
            }
        }
        Ok(None)
    }

    fn task_end(&self, task: TaskId) -> Result<Option<u64>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        // A data dir from before the index: nothing indexed yet.
        let Some(table) = optional_table(p, &tx, TASK_ENDS)? else {
            return Ok(None);
        };
        let end = table
            .get(&task.as_u128().to_be_bytes())
            .map_err(|e| backend(p, e))?
            .map(|v| v.value());
        // An end in the archived part of the log is gone with it.
        let kept_from = kept_from(p, &tx)?;
        Ok(end.filter(|seq| *seq >= kept_from))
    }

    fn snapshots(&self) -> Result<Vec<u64>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let Some(table) = optional_table(p, &tx, SNAPSHOTS)? else {
            return Ok(Vec::new());
        };
        table
            .range(oldest_snapshot(p, &tx)?..)
            .map_err(|e| backend(p, e))?
            .map(|entry| entry.map(|(k, _)| k.value()).map_err(|e| backend(p, e)))
            .collect()
    }

    fn snapshot_below(&self, below: u64) -> Result<Option<u64>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let Some(table) = optional_table(p, &tx, SNAPSHOTS)? else {
            return Ok(None);
        };
        let oldest = oldest_snapshot(p, &tx)?;
        if below <= oldest {
            return Ok(None);
        }
        let newest = table
            .range(oldest..below)
            .map_err(|e| backend(p, e))?
            .next_back()
            .transpose()
            .map_err(|e| backend(p, e))?;
        Ok(newest.map(|(k, _)| k.value()))
    }

    fn snapshot(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let Some(table) = optional_table(p, &tx, SNAPSHOTS)? else {
            return Ok(None);
        };
        if seq < oldest_snapshot(p, &tx)? {
            return Ok(None);
        }
        Ok(table
            .get(seq)
            .map_err(|e| backend(p, e))?
            .map(|v| v.value().to_vec()))
    }

    fn put_snapshot(&self, seq: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        let p = &self.path;
        let mut tx = self.writer()?.begin_write().map_err(|e| backend(p, e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| backend(p, e))?;
        self.write_snapshot(&tx, seq, &bytes)?;
        tx.commit().map_err(|e| backend(p, e))
    }

    fn anchor(&self) -> Result<Option<Anchor>, StoreError> {
        self.meta_bytes("anchor")?
            .map(|v| postcard::from_bytes(&v).map_err(|e| corrupt(&self.path, "anchor", e)))
            .transpose()
    }

    fn cut(&self, cut: Cut) -> Result<(), StoreError> {
        let p = &self.path;
        let Anchor {
            snapshot,
            kept_from,
        } = cut.anchor;
        let mut tx = self.writer()?.begin_write().map_err(|e| backend(p, e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| backend(p, e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| backend(p, e))?;
            let anchor = postcard::to_allocvec(&cut.anchor).map_err(|e| backend(p, e))?;
            meta.insert("anchor", anchor.as_slice())
                .map_err(|e| backend(p, e))?;
            meta.insert("format", &DATA_FORMAT.to_le_bytes()[..])
                .map_err(|e| backend(p, e))?;
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(|e| backend(p, e))?;
            snapshots
                .insert(snapshot, cut.snapshot.as_slice())
                .map_err(|e| backend(p, e))?;
            trim_log(p, &tx, kept_from)?;
            for (table, digests) in [(BLOBS, &cut.blobs), (TOKENS, &cut.tokens)] {
                let mut table = tx.open_table(table).map_err(|e| backend(p, e))?;
                for digest in digests {
                    table.remove(digest.as_bytes()).map_err(|e| backend(p, e))?;
                }
            }
        }
        tx.commit().map_err(|e| backend(p, e))
    }

    fn drop_archived(
        &self,
        chunk: usize,
        each: &mut dyn FnMut(std::time::Duration),
    ) -> Result<u64, StoreError> {
        let p = &self.path;
        let Some(anchor) = self.anchor()? else {
            return Ok(0);
        };
        let kept_from = anchor.kept_from;
        // Found in a read transaction (a writer appending meanwhile is not
        // held up), deleted in short write transactions. Nothing is added
        // before `kept_from` once the anchor is stored.
        let (frames, ends, snapshots) = {
            let tx = self.read()?;
            let frames: Vec<u64> = match optional_table(p, &tx, LOG)? {
                Some(log) => log
                    .range(..kept_from)
                    .map_err(|e| backend(p, e))?
                    .map(|entry| entry.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| backend(p, e))?,
                None => Vec::new(),
            };
            let ends: Vec<[u8; 16]> = match optional_table(p, &tx, TASK_ENDS)? {
                Some(ends) => ends
                    .iter()
                    .map_err(|e| backend(p, e))?
                    .filter_map(|entry| match entry {
                        Ok((task, seq)) => (seq.value() < kept_from).then(|| Ok(*task.value())),
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| backend(p, e))?,
                None => Vec::new(),
            };
            let snapshots: Vec<u64> = match optional_table(p, &tx, SNAPSHOTS)? {
                Some(table) => table
                    .range(..anchor.snapshot)
                    .map_err(|e| backend(p, e))?
                    .map(|entry| entry.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| backend(p, e))?,
                None => Vec::new(),
            };
            (frames, ends, snapshots)
        };
        let chunk = chunk.max(1);
        // Task ends first, then frames, then snapshots: while anything is
        // left, a frame or a snapshot is, which opening for writing looks
        // for (`finish_dropping`).
        for ends in ends.chunks(chunk) {
            self.in_short_transaction(each, |tx| {
                let mut table = tx.open_table(TASK_ENDS).map_err(|e| backend(p, e))?;
                ends.iter()
                    .try_for_each(|task| table.remove(task).map(drop))
                    .map_err(|e| backend(p, e))
            })?;
        }
        for frames in frames.chunks(chunk) {
            self.in_short_transaction(each, |tx| {
                let mut log = tx.open_table(LOG).map_err(|e| backend(p, e))?;
                frames
                    .iter()
                    .try_for_each(|first| log.remove(*first).map(drop))
                    .map_err(|e| backend(p, e))
            })?;
        }
        // A snapshot can be megabytes: one per transaction.
        for seq in &snapshots {
            self.in_short_transaction(each, |tx| {
                let mut table = tx.open_table(SNAPSHOTS).map_err(|e| backend(p, e))?;
                table.remove(*seq).map(drop).map_err(|e| backend(p, e))
            })?;
        }
        Ok((frames.len() + ends.len() + snapshots.len()) as u64)
    }

    fn blob_digests(&self) -> Result<Vec<Digest>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let table = tx.open_table(BLOBS).map_err(|e| backend(p, e))?;
        table
            .iter()
            .map_err(|e| backend(p, e))?
            .map(|entry| {
                entry
                    .map(|(k, _)| Digest(*k.value()))
                    .map_err(|e| backend(p, e))
            })
            .collect()
    }

    fn root_public_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta_bytes("root_public_key")
    }

    fn data_id(&self) -> Result<Option<[u8; 16]>, StoreError> {
        self.meta_bytes("data_id")?
            .map(|v| {
                <[u8; 16]>::try_from(v.as_slice())
                    .map_err(|_| corrupt(&self.path, "data_id", "not 16 bytes"))
            })
            .transpose()
    }

    fn limits(&self) -> Result<Limits, StoreError> {
        self.meta_value("limits")
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    #[cfg(unix)]
    fn free_space(&self) -> Option<u64> {
        // Space an unprivileged writer may use (root's reserve excluded).
        let fs = rustix::fs::statvfs(&self.path).ok()?;
        Some(fs.f_bavail.saturating_mul(fs.f_frsize))
    }
}

/// The anchor of the log in `tx`, once it is archived.
fn anchor_in(p: &Path, tx: &ReadTransaction) -> Result<Option<Anchor>, StoreError> {
    let Some(meta) = optional_table(p, tx, META)? else {
        return Ok(None);
    };
    let Some(value) = meta.get("anchor").map_err(|e| backend(p, e))? else {
        return Ok(None);
    };
    postcard::from_bytes::<Anchor>(value.value())
        .map(Some)
        .map_err(|e| corrupt(p, "anchor", e))
}

/// The first record the log in `tx` keeps (1 until it is archived): the
/// frames before it are archived, and may not all be deleted yet (see
/// [`EventStore::drop_archived`]).
fn kept_from(p: &Path, tx: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(anchor_in(p, tx)?.map_or(1, |a| a.kept_from))
}

/// The oldest snapshot the store in `tx` keeps: the anchor's (0 until the
/// log is archived); older ones wait for [`EventStore::drop_archived`].
fn oldest_snapshot(p: &Path, tx: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(anchor_in(p, tx)?.map_or(0, |a| a.snapshot))
}

/// A frame's bytes, read in place.
type FrameBytes<'t> = redb::AccessGuard<'t, &'static [u8]>;

/// The frame that holds record `seq` if the log has it: the last frame
/// starting at or before it (its first seq and its bytes).
fn frame_holding<'t>(
    p: &Path,
    log: &'t impl ReadableTable<u64, &'static [u8]>,
    seq: u64,
) -> Result<Option<(u64, FrameBytes<'t>)>, StoreError> {
    Ok(log
        .range(..=seq)
        .map_err(|e| backend(p, e))?
        .next_back()
        .transpose()
        .map_err(|e| backend(p, e))?
        .map(|(first, frame)| (first.value(), frame)))
}

/// Cuts the frame that holds `kept_from` there: its records before it are
/// deleted, and it is stored again under `kept_from`, so every frame before
/// `kept_from` holds archived records only (deleted by
/// [`EventStore::drop_archived`]).
fn trim_log(p: &Path, tx: &redb::WriteTransaction, kept_from: u64) -> Result<(), StoreError> {
    let mut log = tx.open_table(LOG).map_err(|e| backend(p, e))?;
    let holding =
        frame_holding(p, &log, kept_from)?.map(|(first, frame)| (first, frame.value().to_vec()));
    let Some((first, frame)) = holding else {
        return Ok(());
    };
    if first < kept_from {
        let kept = frame::tail(&frame, kept_from - first).map_err(|e| torn(p, first, e))?;
        log.remove(first).map_err(|e| backend(p, e))?;
        if !kept.is_empty() {
            log.insert(kept_from, kept).map_err(|e| backend(p, e))?;
        }
    }
    Ok(())
}

/// The records of the frames in a range, from seq `from` on. Ends after
/// the first error.
struct FrameRecords {
    frames: redb::Range<'static, u64, &'static [u8]>,
    frame: Option<Frame>,
    from: u64,
    path: PathBuf,
    /// A frame did not read: nothing more is read.
    failed: bool,
}

/// The frame [`FrameRecords`] is reading.
struct Frame {
    bytes: FrameBytes<'static>,
    /// Its first record's seq.
    first: u64,
    /// The seq of its next record, and where that record starts.
    seq: u64,
    at: usize,
}

impl Iterator for FrameRecords {
    type Item = Result<(u64, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(f) = &mut self.frame {
                match frame::next(f.bytes.value(), &mut f.at) {
                    Some(Ok(record)) => {
                        let seq = f.seq;
                        f.seq += 1;
                        if seq >= self.from {
                            return Some(Ok((seq, record.to_vec())));
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        let error = torn(&self.path, f.first, e);
                        self.frame = None;
                        self.failed = true;
                        return Some(Err(error));
                    }
                    None => self.frame = None,
                }
            }
            if self.failed {
                return None;
            }
            match self.frames.next()? {
                Ok((first, bytes)) => {
                    let first = first.value();
                    self.frame = Some(Frame {
                        bytes,
                        first,
                        seq: first,
                        at: 0,
                    });
                }
                Err(e) => return Some(Err(backend(&self.path, e))),
            }
        }
    }
}

fn torn(path: &Path, first: u64, e: frame::Torn) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        what: format!("the log's frame at record {first}"),
        reason: e.to_string(),
    }
}

fn backend(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn corrupt(path: &Path, what: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        what: format!("meta `{what}`"),
        reason: reason.to_string(),
    }
}

/// A random data-dir id (see [`EventStore::data_id`]).
fn new_data_id() -> Result<[u8; 16], StoreError> {
    crate::store::event_store::random_data_id().map_err(|e| StoreError::Backend {
        path: PathBuf::new(),
        message: format!("no randomness for the data dir's id: {e}"),
    })
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::InUse {
                path: path.to_owned(),
            }
        }
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == io::ErrorKind::InvalidData =>
        {
            StoreError::NotToka {
                path: path.to_owned(),
                reason: format!("not a redb database ({io})"),
            }
        }
        DatabaseError::RepairAborted => StoreError::NeedsRepair {
            path: path.to_owned(),
        },
        DatabaseError::UpgradeRequired(v) => StoreError::NotToka {
            path: path.to_owned(),
            reason: format!("written in redb file format {v}, which this build does not read"),
        },
        other => backend(path, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Record `seq`'s bytes: distinct, of varying length, some longer than
    /// a frame.
    fn bytes(seq: u64) -> Vec<u8> {
        let len = if seq.is_multiple_of(500) {
            frame::FRAME_BYTES + 3
        } else {
            (seq % 211) as usize
        };
        let mut b = seq.to_le_bytes().to_vec();
        b.resize(8 + len, seq as u8);
        b
    }

    /// A store at `dir` holding records 1..=`n`, appended in batches of
    /// varying size.
    fn store(dir: &Path, n: u64) -> RedbStore {
        let store =
            RedbStore::create(&dir.join("toka.redb"), &Limits::default(), &[7; 32]).unwrap();
        let mut seq = 1;
        let mut size = 1;
        while seq <= n {
            let records: Vec<(u64, Vec<u8>)> = (seq..(seq + size).min(n + 1))
                .map(|s| (s, bytes(s)))
                .collect();
            seq += records.len() as u64;
            size = size * 3 % 1_000 + 1;
            store
                .append(Batch {
                    records,
                    head: ChainHead {
                        seq: seq - 1,
                        hash: Digest::ZERO,
                    },
                    ..Batch::default()
                })
                .unwrap();
        }
        store
    }

    /// The records from `from` on, read both ways (they must agree).
    fn all(store: &RedbStore, from: u64) -> Vec<(u64, Vec<u8>)> {
        let read: Vec<_> = store.records(from).unwrap().map(Result::unwrap).collect();
        let mut lent = Vec::new();
        store
            .each_record(from, &mut |seq, bytes| {
                lent.push((seq, bytes.to_vec()));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(lent, read, "each_record and records from {from}");
        read
    }

    fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        range.map(|s| (s, bytes(s))).collect()
    }

    #[test]
    fn find_token_stops_at_the_first_token_picked() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 1);
        let tokens: Vec<(Digest, std::sync::Arc<[u8]>)> = (0..5u8)
            .map(|i| (Digest::of(&[i]), std::sync::Arc::from(vec![i; 3])))
            .collect();
        store
            .append(Batch {
                tokens: tokens.clone(),
                head: store.head().unwrap(),
                ..Batch::default()
            })
            .unwrap();
        let mut looked = 0;
        let found = store
            .find_token(&mut |bytes| {
                looked += 1;
                bytes[0] == 3
            })
            .unwrap();
        assert_eq!(found, Some(tokens[3].0));
        // Read in the order of their digests, none after the one picked.
        let before = tokens.iter().filter(|(d, _)| *d < tokens[3].0).count();
        assert_eq!(looked, before + 1);
        assert_eq!(store.find_token(&mut |_| false).unwrap(), None);
    }

    #[test]
    fn every_record_reads_back_from_its_frame_from_any_place() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3_000;
        let store = store(dir.path(), n);
        let frames = store
            .read()
            .unwrap()
            .open_table(LOG)
            .unwrap()
            .len()
            .unwrap();
        assert!(frames < n / 10, "{frames} frames for {n} records");
        assert_eq!(all(&store, 0), expected(1..=n));
        for from in [1, 2, 499, 500, 501, 1_234, n, n + 1] {
            assert_eq!(all(&store, from), expected(from..=n), "from {from}");
        }
        for seq in 1..=n {
            assert_eq!(store.record(seq).unwrap(), Some(bytes(seq)), "record {seq}");
        }
        let mut seen = Vec::new();
        store
            .each_record(700, &mut |seq, _| {
                seen.push(seq);
                if seq == 1_100 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(seen, (700..=1_100).collect::<Vec<_>>(), "stops where told");
        assert_eq!(store.record(0).unwrap(), None);
        assert_eq!(store.record(n + 1).unwrap(), None);
    }

    #[test]
    fn frames_fill_the_pages_they_take() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            RedbStore::create(&dir.path().join("toka.redb"), &Limits::default(), &[7; 32]).unwrap();
        for batch in 0..50u64 {
            let records = (1..=1_000)
                .map(|i| (batch * 1_000 + i, vec![7; 150]))
                .collect();
            store
                .append(Batch {
                    records,
                    ..Batch::default()
                })
                .unwrap();
        }
        let Db::Write(db) = &store.db else {
            unreachable!("created for writing")
        };
        let stats = db.begin_write().unwrap().stats().unwrap();
        assert!(
            stats.fragmented_bytes() * 4 < stats.stored_bytes(),
            "{} bytes unused in the pages of {} stored",
            stats.fragmented_bytes(),
            stats.stored_bytes()
        );
    }

    /// Cuts `store`'s log at `seq`: the anchor snapshot is after it, the
    /// records kept start there.
    fn cut_at(store: &RedbStore, seq: u64) {
        store
            .cut(Cut {
                anchor: Anchor {
                    snapshot: seq,
                    kept_from: seq,
                },
                snapshot: vec![1],
                blobs: Vec::new(),
                tokens: Vec::new(),
            })
            .unwrap();
    }

    #[test]
    fn a_cut_inside_a_frame_keeps_exactly_the_records_from_kept_from() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2_000;
        let store = store(dir.path(), n);
        for kept_from in [3, 777, 778, 1_500] {
            cut_at(&store, kept_from);
            assert_eq!(
                all(&store, 1),
                expected(kept_from..=n),
                "kept from {kept_from}"
            );
            assert_eq!(store.record(kept_from - 1).unwrap(), None);
            assert_eq!(store.record(kept_from).unwrap(), Some(bytes(kept_from)));
        }
    }

    #[test]
    fn what_a_cut_archived_is_never_read_and_is_deleted_in_short_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2_000;
        let store = store(dir.path(), n);
        let task = |seq: u64| toka_kernel::TaskId::from_u128(u128::from(seq));
        store
            .append(Batch {
                task_ends: vec![(task(10), 10), (task(1_999), 1_999)],
                ..Batch::default()
            })
            .unwrap();
        let frames = |store: &RedbStore| {
            let tx = store.read().unwrap();
            tx.open_table(LOG).unwrap().len().unwrap()
        };
        store.put_snapshot(100, vec![1]).unwrap();
        store.put_snapshot(1_800, vec![2]).unwrap();
        let before = frames(&store);
        let kept_from = 1_500;
        cut_at(&store, kept_from);
        // The cut's own transaction only trims the frame holding
        // `kept_from`: the frames before it wait, unread.
        let left = frames(&store);
        assert!(left > 20 && left <= before + 1, "{before} -> {left}");
        assert_eq!(all(&store, 1), expected(kept_from..=n));
        assert_eq!(store.record(10).unwrap(), None);
        assert_eq!(store.task_end(task(10)).unwrap(), None);
        assert_eq!(store.snapshots().unwrap(), [1_500, 1_800]);
        assert_eq!(store.snapshot(100).unwrap(), None);
        assert_eq!(store.snapshot_below(1_500).unwrap(), None);
        assert_eq!(store.snapshot_below(1_501).unwrap(), Some(1_500));
        let mut chunks = 0;
        let dropped = store.drop_archived(7, &mut |_| chunks += 1).unwrap();
        let gone = left - frames(&store);
        assert_eq!(dropped, gone + 2, "the frames, one task end, one snapshot");
        assert_eq!(chunks, gone.div_ceil(7) + 2);
        let tx = store.read().unwrap();
        let raw: Vec<u64> = tx
            .open_table(SNAPSHOTS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value())
            .collect();
        assert_eq!(raw, [1_500, 1_800], "the older snapshot is deleted");
        drop(tx);
        assert_eq!(all(&store, 1), expected(kept_from..=n));
        assert_eq!(store.task_end(task(10)).unwrap(), None);
        assert_eq!(store.task_end(task(1_999)).unwrap(), Some(1_999));
        assert_eq!(store.drop_archived(7, &mut |_| {}).unwrap(), 0, "done");
    }

    #[test]
    fn opening_for_writing_finishes_a_deletion_a_crash_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 2_000);
        store.put_snapshot(100, vec![1]).unwrap();
        cut_at(&store, 1_500);
        // The crash: nothing of what the cut dropped was deleted yet.
        drop(store);
        let store = RedbStore::open(&dir.path().join("toka.redb")).unwrap();
        assert_eq!(
            store.drop_archived(7, &mut |_| {}).unwrap(),
            0,
            "done at open"
        );
        assert_eq!(all(&store, 1), expected(1_500..=2_000));
    }

    #[test]
    fn a_torn_frame_is_named_as_corrupt_and_ends_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("toka.redb");
        drop(store(dir.path(), 300));
        let db = Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        let first = {
            let mut log = tx.open_table(LOG).unwrap();
            let (first, mut frame) = {
                let (k, v) = log.range(..=150).unwrap().next_back().unwrap().unwrap();
                (k.value(), v.value().to_vec())
            };
            // The first record's length now runs past the frame's end.
            frame[..4].copy_from_slice(&u32::MAX.to_le_bytes());
            log.insert(first, frame.as_slice()).unwrap();
            first
        };
        tx.commit().unwrap();
        drop(db);
        let store = RedbStore::open_read_only(&path).unwrap();
        let mut lent = 0;
        let error = store
            .each_record(1, &mut |_, _| {
                lent += 1;
                ControlFlow::Continue(())
            })
            .unwrap_err();
        assert_eq!(lent, first - 1);
        assert!(error.to_string().contains("frame"), "{error}");
        let read: Vec<_> = store.records(1).unwrap().collect();
        let (last, rest) = read.split_last().unwrap();
        assert!(rest.iter().all(Result::is_ok));
        assert_eq!(
            rest.len() as u64,
            first - 1,
            "every record before the torn frame"
        );
        let message = last.as_ref().unwrap_err().to_string();
        assert!(
            message.contains(&format!("the log's frame at record {first}")),
            "{message}"
        );
        assert!(
            store
                .record(first)
                .unwrap_err()
                .to_string()
                .contains("frame")
        );
        assert_eq!(store.record(first - 1).unwrap(), Some(bytes(first - 1)));
    }

    /// Rewrites the store at `path` in data format 1 (one `events` row per
    /// record), leaving records `..=framed` in frames as a migration
    /// interrupted there would.
    fn to_rows(path: &Path, framed: u64) {
        let db = Database::open(path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let rows: Vec<(u64, Vec<u8>)> = {
                let log = tx.open_table(LOG).unwrap();
                let mut rows = Vec::new();
                for entry in log.iter().unwrap() {
                    let (first, frame) = entry.unwrap();
                    let mut at = 0;
                    let mut seq = first.value();
                    while let Some(record) = frame::next(frame.value(), &mut at) {
                        rows.push((seq, record.unwrap().to_vec()));
                        seq += 1;
                    }
                }
                rows
            };
            let mut log = tx.open_table(LOG).unwrap();
            log.retain(|_, _| false).unwrap();
            let (framed, rows): (Vec<_>, Vec<_>) =
                rows.into_iter().partition(|(s, _)| *s <= framed);
            frame::encode::<redb::StorageError>(&framed, &mut Vec::new(), |first, bytes| {
                log.insert(first, bytes).map(drop)
            })
            .unwrap();
            let mut events = tx.open_table(EVENTS).unwrap();
            for (seq, bytes) in &rows {
                events.insert(*seq, bytes.as_slice()).unwrap();
            }
            tx.open_table(META)
                .unwrap()
                .insert("format", &1u16.to_le_bytes()[..])
                .unwrap();
        }
        tx.commit().unwrap();
    }

    fn format(store: &RedbStore) -> u16 {
        let bytes = store.meta_bytes("format").unwrap().unwrap();
        u16::from_le_bytes(bytes.try_into().unwrap())
    }

    #[test]
    fn a_log_of_rows_is_read_as_it_is_and_moved_into_frames_when_opened_for_writing() {
        let n = 1_200;
        for framed in [0, 600] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("toka.redb");
            drop(store(dir.path(), n));
            to_rows(&path, framed);

            let reader = RedbStore::open_read_only(&path).unwrap();
            assert_eq!(format(&reader), 1, "a reader does not migrate");
            assert_eq!(all(&reader, 1), expected(1..=n));
            assert_eq!(all(&reader, 900), expected(900..=n));
            assert_eq!(reader.record(5).unwrap(), Some(bytes(5)));
            assert_eq!(reader.record(1_000).unwrap(), Some(bytes(1_000)));
            drop(reader);

            let writer = RedbStore::open(&path).unwrap();
            assert_eq!(format(&writer), DATA_FORMAT);
            let tx = writer.read().unwrap();
            assert!(optional_table(&path, &tx, EVENTS).unwrap().is_none());
            drop(tx);
            assert_eq!(all(&writer, 1), expected(1..=n), "moved from {framed}");
            writer
                .append(Batch {
                    records: vec![(n + 1, bytes(n + 1))],
                    ..Batch::default()
                })
                .unwrap();
            assert_eq!(all(&writer, n - 1), expected(n - 1..=n + 1));
        }
    }
}

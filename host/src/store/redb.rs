//! The durable `EventStore`: one redb file.
//!
//! Tables (the data-dir format, version [`DATA_FORMAT`]; see docs/format.md):
//!
//! | table       | key        | value                                        |
//! |-------------|------------|----------------------------------------------|
//! | `events`    | `u64` seq  | a log record (`toka_kernel::Record` bytes)   |
//! | `meta`      | `&str`     | `magic` = `toka`, `format` (u16 LE), `head` (postcard `ChainHead`), `limits` (postcard `Limits`), `root_public_key` (32 bytes), `created_by`, `data_id`, `anchor` (postcard `Anchor`, once archived) |
//! | `blobs`     | `[u8; 32]` | component bytes, by BLAKE3 digest            |
//! | `tokens`    | `[u8; 32]` | capability token bytes, by BLAKE3 digest     |
//! | `snapshots` | `u64` seq  | the state after that record (see `snapshot.rs`) |
//!
//! Every append is one write transaction with immediate durability. The
//! file is opened in redb's single-writer mode: one process (the host)
//! writes, and any number of processes may open it read-only at the same
//! time and follow its commits (`toka events --follow`, `toka state`).

use std::io;
use std::path::{Path, PathBuf};

use redb::{
    ConcurrencyMode, Database, DatabaseError, Durability, ReadOnlyDatabase, ReadTransaction,
    ReadableDatabase, ReadableTable, StorageBackend, TableDefinition, TableError,
};
use toka_kernel::{ChainHead, Digest, Limits, TaskId};

use crate::store::event_store::{
    Anchor, Batch, Cut, DATA_FORMAT, EventStore, Records, SNAPSHOTS_LOOKED_AT, StoreError,
    snapshot_dropped,
};

/// The data format a new store is written in: the whole log, readable by
/// every release (an archive marks it [`DATA_FORMAT`]).
const WHOLE_LOG_FORMAT: u16 = 1;

const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
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
        Self::checked(Db::Write(db), path)
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
        store.check_meta()?;
        if matches!(store.db, Db::Write(_)) && store.meta_bytes("data_id")?.is_none() {
            // A data dir created before it had an id gets one now.
            store.put_meta("data_id", &new_data_id()?)?;
        }
        Ok(store)
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
                ("format", &WHOLE_LOG_FORMAT.to_le_bytes()[..]),
                ("limits", &limits),
                ("head", &head),
                ("root_public_key", root_public_key),
                ("created_by", created_by.as_bytes()),
                ("data_id", &new_data_id()?[..]),
            ] {
                meta.insert(key, value).map_err(|e| backend(p, e))?;
            }
            tx.open_table(EVENTS).map_err(|e| backend(p, e))?;
            tx.open_table(BLOBS).map_err(|e| backend(p, e))?;
            tx.open_table(TOKENS).map_err(|e| backend(p, e))?;
            tx.open_table(SNAPSHOTS).map_err(|e| backend(p, e))?;
        }
        tx.commit().map_err(|e| backend(p, e))?;
        Ok(store)
    }

    fn check_meta(&self) -> Result<(), StoreError> {
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
        Ok(())
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
            let mut events = tx.open_table(EVENTS).map_err(|e| backend(p, e))?;
            for (seq, bytes) in &batch.records {
                events
                    .insert(*seq, bytes.as_slice())
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
        let p = self.path.clone();
        let tx = self.read()?;
        let table = tx.open_table(EVENTS).map_err(|e| backend(&p, e))?;
        let range = table.range(from..).map_err(|e| backend(&p, e))?;
        Ok(Box::new(range.map(move |entry| {
            entry
                .map(|(k, v)| (k.value(), v.value().to_vec()))
                .map_err(|e| backend(&p, e))
        })))
    }

    fn record(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let table = tx.open_table(EVENTS).map_err(|e| backend(p, e))?;
        Ok(table
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

    fn tokens(&self) -> Result<Vec<(Digest, Vec<u8>)>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let table = tx.open_table(TOKENS).map_err(|e| backend(p, e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| backend(p, e))? {
            let (k, v) = entry.map_err(|e| backend(p, e))?;
            out.push((Digest(*k.value()), v.value().to_vec()));
        }
        Ok(out)
    }

    fn task_end(&self, task: TaskId) -> Result<Option<u64>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        // A data dir from before the index: nothing indexed yet.
        let Some(table) = optional_table(p, &tx, TASK_ENDS)? else {
            return Ok(None);
        };
        Ok(table
            .get(&task.as_u128().to_be_bytes())
            .map_err(|e| backend(p, e))?
            .map(|v| v.value()))
    }

    fn snapshots(&self) -> Result<Vec<u64>, StoreError> {
        let p = &self.path;
        let tx = self.read()?;
        let Some(table) = optional_table(p, &tx, SNAPSHOTS)? else {
            return Ok(Vec::new());
        };
        table
            .iter()
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
        let newest = table
            .range(..below)
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
            snapshots
                .retain_in(..snapshot, |_, _| false)
                .map_err(|e| backend(p, e))?;
            tx.open_table(EVENTS)
                .map_err(|e| backend(p, e))?
                .retain_in(..kept_from, |_, _| false)
                .map_err(|e| backend(p, e))?;
            tx.open_table(TASK_ENDS)
                .map_err(|e| backend(p, e))?
                .retain(|_, seq| seq >= kept_from)
                .map_err(|e| backend(p, e))?;
            let mut blobs = tx.open_table(BLOBS).map_err(|e| backend(p, e))?;
            for digest in &cut.blobs {
                blobs.remove(digest.as_bytes()).map_err(|e| backend(p, e))?;
            }
        }
        tx.commit().map_err(|e| backend(p, e))
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

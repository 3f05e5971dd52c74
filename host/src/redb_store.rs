//! The durable `EventStore`: one redb file.
//!
//! Tables (the data-dir format, version [`DATA_FORMAT`]):
//!
//! | table    | key        | value                                        |
//! |----------|------------|----------------------------------------------|
//! | `events` | `u64` seq  | a log record (`toka_kernel::Record` bytes)   |
//! | `meta`   | `&str`     | `magic` = `toka`, `format` (u16 LE), `head` (postcard `ChainHead`), `limits` (postcard `Limits`), `root_public_key` (32 bytes), `created_by` |
//! | `blobs`  | `[u8; 32]` | component bytes, by BLAKE3 digest            |
//! | `tokens` | `[u8; 32]` | capability token bytes, by BLAKE3 digest     |
//!
//! Every append is one write transaction with immediate durability.

use std::io;
use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    TableError,
};
use toka_kernel::{ChainHead, Digest, Limits};

use crate::event_store::{Batch, DATA_FORMAT, EventStore, Records, StoreError};

const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const BLOBS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("blobs");
const TOKENS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("tokens");

const MAGIC: &[u8] = b"toka";

/// An [`EventStore`] in a redb file.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
    path: PathBuf,
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
        let result = Database::create(path)
            .map_err(|e| open_error(path, e))
            .and_then(|db| {
                let store = Self {
                    db,
                    path: path.to_owned(),
                };
                store.init(limits, root_public_key)?;
                Ok(store)
            });
        if result.is_err() {
            // Nothing half-written: the file is either complete or absent.
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Opens an existing store.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotToka`] for a file that is not a Toka store,
    /// [`StoreError::NewerFormat`] for one written by a newer release,
    /// [`StoreError::InUse`] when another process has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::open(path).map_err(|e| open_error(path, e))?;
        let store = Self {
            db,
            path: path.to_owned(),
        };
        store.check_meta()?;
        Ok(store)
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init(&self, limits: &Limits, root_public_key: &[u8]) -> Result<(), StoreError> {
        let p = &self.path;
        let mut tx = self.db.begin_write().map_err(|e| backend(p, e))?;
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
            ] {
                meta.insert(key, value).map_err(|e| backend(p, e))?;
            }
            tx.open_table(EVENTS).map_err(|e| backend(p, e))?;
            tx.open_table(BLOBS).map_err(|e| backend(p, e))?;
            tx.open_table(TOKENS).map_err(|e| backend(p, e))?;
        }
        tx.commit().map_err(|e| backend(p, e))
    }

    fn check_meta(&self) -> Result<(), StoreError> {
        let p = &self.path;
        let not_toka = |reason: &str| StoreError::NotToka {
            path: p.clone(),
            reason: reason.into(),
        };
        let tx = self.db.begin_read().map_err(|e| backend(p, e))?;
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

    fn meta_value<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T, StoreError> {
        let p = &self.path;
        let tx = self.db.begin_read().map_err(|e| backend(p, e))?;
        let meta = tx.open_table(META).map_err(|e| backend(p, e))?;
        let value = meta
            .get(key)
            .map_err(|e| backend(p, e))?
            .ok_or_else(|| corrupt(p, key, "missing"))?;
        postcard::from_bytes(value.value()).map_err(|e| corrupt(p, key, e))
    }

    fn by_digest(
        &self,
        table: TableDefinition<'_, &[u8; 32], &[u8]>,
        digest: &Digest,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let p = &self.path;
        let tx = self.db.begin_read().map_err(|e| backend(p, e))?;
        let table = tx.open_table(table).map_err(|e| backend(p, e))?;
        Ok(table
            .get(digest.as_bytes())
            .map_err(|e| backend(p, e))?
            .map(|v| v.value().to_vec()))
    }
}

impl EventStore for RedbStore {
    fn append(&self, batch: Batch) -> Result<(), StoreError> {
        let p = &self.path;
        let mut tx = self.db.begin_write().map_err(|e| backend(p, e))?;
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
            if !batch.records.is_empty() {
                let mut meta = tx.open_table(META).map_err(|e| backend(p, e))?;
                let head = postcard::to_allocvec(&batch.head).map_err(|e| backend(p, e))?;
                meta.insert("head", head.as_slice())
                    .map_err(|e| backend(p, e))?;
            }
        }
        tx.commit().map_err(|e| backend(p, e))
    }

    fn records(&self, from: u64) -> Result<Records<'_>, StoreError> {
        let p = self.path.clone();
        let tx = self.db.begin_read().map_err(|e| backend(&p, e))?;
        let table = tx.open_table(EVENTS).map_err(|e| backend(&p, e))?;
        let range = table.range(from..).map_err(|e| backend(&p, e))?;
        Ok(Box::new(range.map(move |entry| {
            entry
                .map(|(k, v)| (k.value(), v.value().to_vec()))
                .map_err(|e| backend(&p, e))
        })))
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
        let tx = self.db.begin_read().map_err(|e| backend(p, e))?;
        let table = tx.open_table(TOKENS).map_err(|e| backend(p, e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| backend(p, e))? {
            let (k, v) = entry.map_err(|e| backend(p, e))?;
            out.push((Digest(*k.value()), v.value().to_vec()));
        }
        Ok(out)
    }

    fn root_public_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let p = &self.path;
        let tx = self.db.begin_read().map_err(|e| backend(p, e))?;
        let meta = tx.open_table(META).map_err(|e| backend(p, e))?;
        Ok(meta
            .get("root_public_key")
            .map_err(|e| backend(p, e))?
            .map(|v| v.value().to_vec()))
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

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_owned(),
        },
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == io::ErrorKind::InvalidData =>
        {
            StoreError::NotToka {
                path: path.to_owned(),
                reason: format!("not a redb database ({io})"),
            }
        }
        DatabaseError::UpgradeRequired(v) => StoreError::NotToka {
            path: path.to_owned(),
            reason: format!("written in redb file format {v}, which this build does not read"),
        },
        other => backend(path, other),
    }
}

//! The data directory: where a host keeps its redb file (and its root key).

use std::fs;
use std::path::{Path, PathBuf};

use toka_kernel::Limits;

use crate::capability::root_key::{KeyError, RootKey};
use crate::store::event_store::StoreError;
use crate::store::redb::RedbStore;

/// A Toka data directory: `toka.redb` (the log, blobs and tokens),
/// `root.key` (the root signing key, mode 0600, unless the operator keeps the
/// key elsewhere and passes `--root-key`), and `secrets.json` (the secrets
/// the host injects into outbound requests, mode 0600; see
/// [`SecretStore`](crate::SecretStore)).
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

/// Why a data dir cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Nothing has run there yet (for commands that only read).
    #[error(
        "no Toka data dir at {0} (nothing has run there yet; `toka run` or `toka demo` creates one)"
    )]
    Missing(PathBuf),
    /// The path is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// A non-empty directory without `toka.redb`.
    #[error(
        "{0} is not a Toka data dir (it has no toka.redb and is not empty); pass --data with a new or empty directory"
    )]
    Foreign(PathBuf),
    /// The directory could not be created or read.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store inside failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The root key could not be read or created.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl DataDir {
    /// The file holding the log.
    pub const DB_FILE: &'static str = "toka.redb";
    /// The file holding the root key, when the data dir keeps its own.
    pub const KEY_FILE: &'static str = "root.key";

    /// A data dir at `path` (nothing is touched yet).
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The redb file.
    #[must_use]
    pub fn db_path(&self) -> PathBuf {
        self.path.join(Self::DB_FILE)
    }

    /// The root key file.
    #[must_use]
    pub fn key_path(&self) -> PathBuf {
        self.path.join(Self::KEY_FILE)
    }

    /// The root key: from `explicit` if given (it is never copied into the
    /// data dir), else the data dir's `root.key`, created (with the
    /// directory) on first use when `create` is set.
    ///
    /// # Errors
    ///
    /// [`DataDirError`] when the key cannot be read or created, or the
    /// directory is not a usable data dir.
    pub fn root_key(&self, explicit: Option<&Path>, create: bool) -> Result<RootKey, DataDirError> {
        if let Some(path) = explicit {
            return Ok(RootKey::load(path)?);
        }
        let path = self.key_path();
        if !create || path.exists() {
            return Ok(RootKey::load(&path)?);
        }
        if !self.exists() {
            self.check_usable()?;
        }
        fs::create_dir_all(&self.path).map_err(|source| DataDirError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(RootKey::load_or_create(&path)?.0)
    }

    /// Whether the directory holds a store.
    #[must_use]
    pub fn exists(&self) -> bool {
        self.db_path().is_file()
    }

    /// Opens the store, creating the directory and an empty store (written
    /// under `limits`, for tokens rooted in `root`) when the directory is new
    /// or holds nothing but its root key.
    ///
    /// # Errors
    ///
    /// [`DataDirError`] naming the problem; on error nothing was created.
    pub fn open_or_create(
        &self,
        limits: &Limits,
        root: &RootKey,
    ) -> Result<RedbStore, DataDirError> {
        if self.exists() {
            return Ok(RedbStore::open(&self.db_path())?);
        }
        self.check_usable()?;
        let created_dir = !self.path.exists();
        fs::create_dir_all(&self.path).map_err(|source| DataDirError::Io {
            path: self.path.clone(),
            source,
        })?;
        RedbStore::create(&self.db_path(), limits, &root.public().to_bytes()).map_err(|e| {
            if created_dir {
                let _ = fs::remove_dir(&self.path);
            }
            e.into()
        })
    }

    /// Opens an existing store for writing.
    ///
    /// # Errors
    ///
    /// [`DataDirError::Missing`] when there is none, or why it does not open.
    pub fn open_existing(&self) -> Result<RedbStore, DataDirError> {
        self.check_exists()?;
        Ok(RedbStore::open(&self.db_path())?)
    }

    /// Opens an existing store read-only: it may be open for writing by a
    /// running host at the same time.
    ///
    /// # Errors
    ///
    /// [`DataDirError::Missing`] when there is none, or why it does not open.
    pub fn open_read_only(&self) -> Result<RedbStore, DataDirError> {
        self.check_exists()?;
        match RedbStore::open_read_only(&self.db_path()) {
            // The last writer crashed. With no writer running, opening for
            // writing repairs the file (redb's commits are atomic, so only
            // uncommitted work is lost); read through that handle.
            Err(StoreError::NeedsRepair { .. }) => {
                tracing::info!(path = %self.db_path().display(), "repairing after a crash");
                Ok(RedbStore::open(&self.db_path())?)
            }
            other => Ok(other?),
        }
    }

    fn check_exists(&self) -> Result<(), DataDirError> {
        if self.exists() {
            return Ok(());
        }
        if self.path.exists() {
            self.check_usable()?;
        }
        Err(DataDirError::Missing(self.path.clone()))
    }

    /// A directory without a store may become one only if it holds nothing
    /// but (perhaps) its root key and its secrets.
    fn check_usable(&self) -> Result<(), DataDirError> {
        if !self.path.exists() {
            return Ok(());
        }
        if !self.path.is_dir() {
            return Err(DataDirError::NotADirectory(self.path.clone()));
        }
        let entries = fs::read_dir(&self.path).map_err(|source| DataDirError::Io {
            path: self.path.clone(),
            source,
        })?;
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            if name != Self::KEY_FILE && name != crate::store::secrets::SecretStore::FILE {
                return Err(DataDirError::Foreign(self.path.clone()));
            }
        }
        Ok(())
    }
}

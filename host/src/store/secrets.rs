//! Secrets: values the host injects into an agent's outbound requests,
//! which the agent never sees and the log never holds.
//!
//! They live in the data dir, in `secrets.json`, readable only by its owner
//! (mode 0600; the host refuses a file others can read). Each change
//! re-reads the file and rewrites it whole: a temporary file, synced,
//! renamed over the old one, so a crash leaves either the old set or the
//! new one. A running host sees a change another process made (`toka
//! secret set` beside `toka run`) at the next request: it re-reads the file
//! when its modification time or length changed.
//!
//! A right binds a secret to a host (`secret NAME HOST [HEADER]`, see
//! [`Right`](crate::Right)); the host injects it into requests to that host
//! (see docs/capabilities.md).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::capability::rights::{MAX_SECRET_NAME, is_secret_name};

/// The longest secret value, in bytes.
pub const MAX_SECRET_VALUE: usize = 8 * 1024;

/// A data dir's secrets (or, for tests, secrets kept in memory only).
#[derive(Debug)]
pub struct SecretStore {
    /// The file, or `None` in memory.
    path: Option<PathBuf>,
    values: RwLock<Loaded>,
}

/// The secrets as last read, and the file's stamp then.
#[derive(Debug, Default)]
struct Loaded {
    secrets: BTreeMap<String, Stored>,
    stamp: Option<(std::time::SystemTime, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    value: String,
    /// When it was set, in milliseconds since the Unix epoch.
    set_at: u64,
}

#[derive(Serialize, Deserialize)]
struct File {
    format: u16,
    secrets: BTreeMap<String, Stored>,
}

/// A secret as listed: its name, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// The name rights bind.
    pub name: String,
    /// The value's length in bytes.
    pub len: usize,
    /// When it was set, in milliseconds since the Unix epoch.
    pub set_at: u64,
}

/// Why a secret cannot be stored, read or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The name is not one a secret may have.
    #[error("`{0}` is not a secret name (1 to {MAX_SECRET_NAME} letters, digits, `_`, `-` or `.`)")]
    BadName(String),
    /// The value is empty, too long, or holds bytes a header cannot carry.
    #[error("the value of secret {name} {problem}")]
    BadValue {
        /// The secret.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No secret by that name.
    #[error("no secret named {0} (`toka secret list` shows them)")]
    Unknown(String),
    /// The file is readable by others than its owner.
    #[error("{path} is readable by others than its owner (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a secrets file.
    #[error("{path} is not a Toka secrets file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl SecretStore {
    /// The file holding a data dir's secrets.
    pub const FILE: &'static str = "secrets.json";

    /// The secrets of the data dir at `dir` (none yet when it has no
    /// secrets file).
    ///
    /// # Errors
    ///
    /// [`SecretError::Exposed`] when others can read the file,
    /// [`SecretError::Corrupt`] or [`SecretError::Io`] when it cannot be read.
    pub fn open(dir: &Path) -> Result<SecretStore, SecretError> {
        let path = dir.join(Self::FILE);
        let loaded = read(&path)?;
        Ok(SecretStore {
            path: Some(path),
            values: RwLock::new(loaded),
        })
    }

    /// Secrets kept in memory only (for tests and embedding programs).
    #[must_use]
    pub fn in_memory() -> SecretStore {
        SecretStore {
            path: None,
            values: RwLock::default(),
        }
    }

    /// Sets (or replaces) secret `name`, stamped with the time now. The
    /// file is written before this returns.
    ///
    /// # Errors
    ///
    /// [`SecretError::BadName`], [`SecretError::BadValue`] (empty, longer
    /// than [`MAX_SECRET_VALUE`], or not printable: a header carries it), or
    /// [`SecretError::Io`]; on error nothing changed.
    pub fn set(&self, name: &str, value: &str) -> Result<(), SecretError> {
        check_secret_name(name)?;
        check_value(name, value)?;
        let set_at = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.change(|secrets| {
            secrets.insert(
                name.to_owned(),
                Stored {
                    value: value.to_owned(),
                    set_at,
                },
            );
            Ok(())
        })
    }

    /// Removes secret `name`.
    ///
    /// # Errors
    ///
    /// [`SecretError::Unknown`] when there is none, [`SecretError::Io`] when
    /// the file cannot be written (the secret then stays).
    pub fn remove(&self, name: &str) -> Result<(), SecretError> {
        self.change(|secrets| {
            secrets
                .remove(name)
                .map(drop)
                .ok_or_else(|| SecretError::Unknown(crate::text::clip(name, 100)))
        })
    }

    /// Applies `edit` to the secrets as the file holds them now, and
    /// writes the result.
    fn change(
        &self,
        edit: impl FnOnce(&mut BTreeMap<String, Stored>) -> Result<(), SecretError>,
    ) -> Result<(), SecretError> {
        let mut values = self.values.write().unwrap_or_else(|e| e.into_inner());
        let mut next = match &self.path {
            Some(path) => read(path)?.secrets,
            None => values.secrets.clone(),
        };
        edit(&mut next)?;
        self.persist(&next)?;
        *values = match &self.path {
            Some(path) => read(path)?,
            None => Loaded {
                secrets: next,
                stamp: None,
            },
        };
        Ok(())
    }

    /// Re-reads the file if another process changed it since.
    fn refresh(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let now = stamp(path);
        if self.values.read().unwrap_or_else(|e| e.into_inner()).stamp == now {
            return;
        }
        match read(path) {
            Ok(loaded) => *self.values.write().unwrap_or_else(|e| e.into_inner()) = loaded,
            Err(e) => tracing::warn!(error = %e, "secrets not re-read; the ones read before stay"),
        }
    }

    /// The secrets, by name, without their values.
    #[must_use]
    pub fn list(&self) -> Vec<SecretInfo> {
        self.refresh();
        self.values
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .secrets
            .iter()
            .map(|(name, stored)| SecretInfo {
                name: name.clone(),
                len: stored.value.len(),
                set_at: stored.set_at,
            })
            .collect()
    }

    /// The value of secret `name`, for injection.
    pub(crate) fn value(&self, name: &str) -> Option<Arc<str>> {
        self.refresh();
        self.values
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .secrets
            .get(name)
            .map(|s| Arc::from(s.value.as_str()))
    }

    fn persist(&self, values: &BTreeMap<String, Stored>) -> Result<(), SecretError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| SecretError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&File {
            format: 1,
            secrets: values.clone(),
        })
        .expect("secrets are strings: JSON encodes them");
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io)?;
        // A name of its own: two writers never share a temporary file.
        let temp = path.with_extension(format!(
            "json.{}.{}.tmp",
            std::process::id(),
            toka_kernel::to_hex(
                &crate::store::event_store::random_data_id().unwrap_or_default()[..4]
            )
        ));
        let written = (|| {
            let mut file = private_file(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&temp, path)?;
            // The rename is durable once the directory is.
            fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.map_err(io)
    }
}

/// The secrets in the file at `path` (none if there is no file), checked.
fn read(path: &Path) -> Result<Loaded, SecretError> {
    let corrupt = |reason: String| SecretError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let stamp = stamp(path);
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(source) => {
            return Err(SecretError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    check_private(path)?;
    let file: File = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.format != 1 {
        return Err(corrupt(format!("format {} is not supported", file.format)));
    }
    for (name, stored) in &file.secrets {
        check_secret_name(name).map_err(|e| corrupt(e.to_string()))?;
        check_value(name, &stored.value).map_err(|e| corrupt(e.to_string()))?;
    }
    Ok(Loaded {
        secrets: file.secrets,
        stamp,
    })
}

/// The file's modification time and length, to notice changes.
fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Whether `name` may name a secret.
///
/// # Errors
///
/// [`SecretError::BadName`] naming it.
pub fn check_secret_name(name: &str) -> Result<(), SecretError> {
    if is_secret_name(name) {
        Ok(())
    } else {
        Err(SecretError::BadName(crate::text::clip(name, 100)))
    }
}

fn check_value(name: &str, value: &str) -> Result<(), SecretError> {
    let bad = |problem: &str| SecretError::BadValue {
        name: name.to_owned(),
        problem: problem.to_owned(),
    };
    if value.is_empty() {
        return Err(bad("is empty"));
    }
    if value.len() > MAX_SECRET_VALUE {
        return Err(bad(&format!(
            "is {} bytes, the limit is {MAX_SECRET_VALUE}",
            value.len()
        )));
    }
    // It goes into a header: visible ASCII and inner spaces only.
    if !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(bad(
            "holds a byte an HTTP header cannot carry (only printable ASCII)",
        ));
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err(bad("starts or ends with a space"));
    }
    Ok(())
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(path)
        .map_err(|source| SecretError::Io {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), SecretError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_persist_privately_and_list_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open(dir.path()).unwrap();
        store.set("OPENAI_API_KEY", "sk-test-123").unwrap();
        store.set("other", "x").unwrap();
        store.remove("other").unwrap();
        let again = SecretStore::open(dir.path()).unwrap();
        let listed = again.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].name.as_str(), listed[0].len),
            ("OPENAI_API_KEY", 11)
        );
        assert!(listed[0].set_at > 1_700_000_000_000);
        // A change by another writer is seen at the next read.
        store.set("LATER", "y").unwrap();
        assert_eq!(again.value("LATER").as_deref(), Some("y"));
        assert_eq!(
            again.value("OPENAI_API_KEY").as_deref(),
            Some("sk-test-123")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(SecretStore::FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [SecretStore::FILE], "no temporary file is left");
    }

    #[test]
    fn bad_names_values_and_exposed_files_are_refused() {
        let store = SecretStore::in_memory();
        assert!(matches!(
            store.set("has space", "v"),
            Err(SecretError::BadName(_))
        ));
        assert!(matches!(
            store.set("k", ""),
            Err(SecretError::BadValue { .. })
        ));
        assert!(matches!(
            store.set("k", "line\nbreak"),
            Err(SecretError::BadValue { .. })
        ));
        assert!(matches!(store.remove("nope"), Err(SecretError::Unknown(_))));
        assert!(store.list().is_empty());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let dir = tempfile::tempdir().unwrap();
            SecretStore::open(dir.path())
                .unwrap()
                .set("k", "v")
                .unwrap();
            let file = dir.path().join(SecretStore::FILE);
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
            let err = SecretStore::open(dir.path()).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
            // A value edited by hand into something a header cannot carry.
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
            fs::write(
                &file,
                r#"{"format":1,"secrets":{"k":{"value":"a\nb","set_at":0}}}"#,
            )
            .unwrap();
            let err = SecretStore::open(dir.path()).unwrap_err();
            assert!(err.to_string().contains("not a Toka secrets file"), "{err}");
        }
    }
}

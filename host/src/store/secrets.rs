//! Secrets: values the host injects into an agent's outbound requests,
//! which the agent never sees and the log never holds.
//!
//! They live in the data dir, in `secrets.json`, readable only by its owner
//! (mode 0600; the host refuses a file others can read). Each change
//! rewrites the file whole: a temporary file, synced, renamed over the old
//! one, so a crash leaves either the old set or the new one.
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
    values: RwLock<BTreeMap<String, Stored>>,
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
        let io = |source| SecretError::Io {
            path: path.clone(),
            source,
        };
        let values = match fs::read(&path) {
            Ok(bytes) => {
                check_private(&path)?;
                let file: File =
                    serde_json::from_slice(&bytes).map_err(|e| SecretError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if file.format != 1 {
                    return Err(SecretError::Corrupt {
                        path,
                        reason: format!("format {} is not supported", file.format),
                    });
                }
                file.secrets
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e)),
        };
        Ok(SecretStore {
            path: Some(path),
            values: RwLock::new(values),
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

    /// Sets (or replaces) secret `name`; `now` is when, in milliseconds
    /// since the Unix epoch. The file is written before this returns.
    ///
    /// # Errors
    ///
    /// [`SecretError::BadName`], [`SecretError::BadValue`] (empty, longer
    /// than [`MAX_SECRET_VALUE`], or not printable: a header carries it), or
    /// [`SecretError::Io`]; on error nothing changed.
    pub fn set(&self, name: &str, value: &str, now: u64) -> Result<(), SecretError> {
        check_name(name)?;
        check_value(name, value)?;
        let mut values = self.values.write().unwrap_or_else(|e| e.into_inner());
        let mut next = values.clone();
        next.insert(
            name.to_owned(),
            Stored {
                value: value.to_owned(),
                set_at: now,
            },
        );
        self.persist(&next)?;
        *values = next;
        Ok(())
    }

    /// Removes secret `name`.
    ///
    /// # Errors
    ///
    /// [`SecretError::Unknown`] when there is none, [`SecretError::Io`] when
    /// the file cannot be written (the secret then stays).
    pub fn remove(&self, name: &str) -> Result<(), SecretError> {
        let mut values = self.values.write().unwrap_or_else(|e| e.into_inner());
        if !values.contains_key(name) {
            return Err(SecretError::Unknown(crate::text::clip(name, 100)));
        }
        let mut next = values.clone();
        next.remove(name);
        self.persist(&next)?;
        *values = next;
        Ok(())
    }

    /// The secrets, by name, without their values.
    #[must_use]
    pub fn list(&self) -> Vec<SecretInfo> {
        self.values
            .read()
            .unwrap_or_else(|e| e.into_inner())
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
        self.values
            .read()
            .unwrap_or_else(|e| e.into_inner())
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
        let temp = path.with_extension("json.tmp");
        let _ = fs::remove_file(&temp);
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

/// Whether `name` may name a secret.
///
/// # Errors
///
/// [`SecretError::BadName`] naming it.
pub fn check_secret_name(name: &str) -> Result<(), SecretError> {
    check_name(name)
}

fn check_name(name: &str) -> Result<(), SecretError> {
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
        store.set("OPENAI_API_KEY", "sk-test-123", 1).unwrap();
        store.set("other", "x", 2).unwrap();
        store.remove("other").unwrap();
        let again = SecretStore::open(dir.path()).unwrap();
        assert_eq!(
            again.list(),
            [SecretInfo {
                name: "OPENAI_API_KEY".into(),
                len: 11,
                set_at: 1
            }]
        );
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
        assert!(!dir.path().join("secrets.json.tmp").exists());
    }

    #[test]
    fn bad_names_values_and_exposed_files_are_refused() {
        let store = SecretStore::in_memory();
        assert!(matches!(
            store.set("has space", "v", 0),
            Err(SecretError::BadName(_))
        ));
        assert!(matches!(
            store.set("k", "", 0),
            Err(SecretError::BadValue { .. })
        ));
        assert!(matches!(
            store.set("k", "line\nbreak", 0),
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
                .set("k", "v", 0)
                .unwrap();
            let file = dir.path().join(SecretStore::FILE);
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
            let err = SecretStore::open(dir.path()).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }
}

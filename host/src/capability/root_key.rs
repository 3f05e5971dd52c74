//! The host's root signing key.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use biscuit_auth::{KeyPair, PrivateKey, PublicKey};

/// The ed25519 key pair every token the host accepts is rooted in.
///
/// On disk it is one line, `ed25519-private/<64 hex digits>`: the format the
/// reference `biscuit` command-line tool reads with `--private-key-file`, so
/// an operator can mint tokens for Toka with that tool. Raw 32-byte files are
/// read too.
pub struct RootKey {
    pair: KeyPair,
}

/// Why a root key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Other users may read the key file: anyone who can read it can mint
    /// tokens with every right.
    #[error(
        "{path}: the root key is readable by other users (mode {mode:o}); restrict it with `chmod 600 {path}`"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a private key.
    #[error(
        "{path}: not an ed25519 private key (expected `ed25519-private/<64 hex digits>` or 32 raw bytes)"
    )]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
}

impl RootKey {
    /// A new random key.
    #[must_use]
    pub fn generate() -> Self {
        Self {
            pair: KeyPair::new(),
        }
    }

    /// Reads a key file.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the file is missing, unreadable, or not a key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        refuse_if_readable_by_others(path)?;
        let bytes = fs::read(path).map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })?;
        let malformed = || KeyError::Malformed {
            path: path.to_owned(),
        };
        let private = match std::str::from_utf8(&bytes) {
            Ok(text) if text.trim().starts_with("ed25519-private/") => {
                text.trim().parse::<PrivateKey>().map_err(|_| malformed())?
            }
            _ if bytes.len() == 32 => {
                PrivateKey::from_bytes(&bytes, biscuit_auth::Algorithm::Ed25519)
                    .map_err(|_| malformed())?
            }
            _ => return Err(malformed()),
        };
        Ok(Self {
            pair: KeyPair::from(&private),
        })
    }

    /// Reads the key file, or creates one (mode 0600) if there is none.
    /// Returns whether it was created.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the file cannot be read, written, or parsed.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let key = Self::generate();
        match key.write_new(path) {
            Ok(()) => Ok((key, true)),
            // Another process created it first: use theirs.
            Err(KeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok((Self::load(path)?, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the key to a new file only its owner can read.
    fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        let text = format!("{}\n", self.pair.private().to_prefixed_string());
        if let Err(e) = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
        {
            drop(file);
            let _ = fs::remove_file(path);
            return Err(io(e));
        }
        // The new name must survive a crash too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| KeyError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The public key.
    #[must_use]
    pub fn public(&self) -> PublicKey {
        self.pair.public()
    }

    /// The public key as `ed25519/<64 hex digits>`, the `biscuit` tool's format.
    #[must_use]
    pub fn public_string(&self) -> String {
        self.pair.public().to_string()
    }

    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }

    /// A secret derived from the private key for `context` (e.g. the key of
    /// the guests' per-task randomness): stable for this key, unknowable
    /// without it.
    pub(crate) fn derive_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.pair.private().to_bytes())
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private half.
        write!(f, "RootKey({})", self.public_string())
    }
}

/// Refuses a key file that users other than its owner may read.
#[cfg(unix)]
fn refuse_if_readable_by_others(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_readable_by_others(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let (key, created) = RootKey::load_or_create(&path).unwrap();
        assert!(created);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("ed25519-private/") && text.ends_with('\n'));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (again, created) = RootKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.public(), key.public());
        assert!(key.public_string().starts_with("ed25519/"));
    }

    #[test]
    fn raw_bytes_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.key");
        let key = RootKey::generate();
        write_private(&raw, key.pair.private().to_bytes().as_slice());
        assert_eq!(RootKey::load(&raw).unwrap().public(), key.public());
        let bad = dir.path().join("bad.key");
        write_private(&bad, b"hello");
        assert!(matches!(
            RootKey::load(&bad),
            Err(KeyError::Malformed { .. })
        ));
    }

    fn write_private(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_refused() {
        // Regression: a world-readable key only got a warning.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        RootKey::load_or_create(&path).unwrap();
        for mode in [0o644, 0o640, 0o604] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = RootKey::load(&path).unwrap_err();
            assert!(matches!(err, KeyError::TooOpen { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
            assert!(RootKey::load_or_create(&path).is_err());
        }
    }
}

//! How a running server tells the CLI where it is: `server.json` (its
//! address, process id, and certificate) and `operator.token` (an `admin`
//! operator token for local commands), both in the data dir, both readable
//! by the owner only. The server writes them once it listens and removes
//! them when it stops; a CLI command that finds them talks to the server
//! instead of opening the store (whose file lock the server holds).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file naming the server that holds a data dir.
pub const SERVER_FILE: &str = "server.json";
/// The file holding the server's local `admin` operator token.
pub const TOKEN_FILE: &str = "operator.token";

/// What `server.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The base URL a local client reaches the server at, e.g.
    /// `http://127.0.0.1:7878`.
    pub url: String,
    /// The server's process id.
    pub pid: u32,
    /// The PEM certificate to trust, when the server speaks TLS.
    pub certificate: Option<PathBuf>,
}

impl Registration {
    /// Reads the registration and the local operator token of the server
    /// holding `data_dir`, if one registered (it may have died since:
    /// callers check that it answers).
    ///
    /// # Errors
    ///
    /// A message naming the file when it exists but cannot be read.
    pub fn read(data_dir: &Path) -> Result<Option<(Registration, String)>, String> {
        let path = data_dir.join(SERVER_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // No server here (and none can be where there is no directory).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let registration: Registration = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a server registration: {e}", path.display()))?;
        let token_path = data_dir.join(TOKEN_FILE);
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| format!("{}: {e}", token_path.display()))?;
        Ok(Some((registration, token.trim().to_owned())))
    }

    /// Writes the registration and the token, owner-only, each replaced
    /// in one rename so a reader never sees half a file.
    ///
    /// # Errors
    ///
    /// The I/O error, naming the file.
    pub fn write(&self, data_dir: &Path, token: &str) -> Result<(), String> {
        write_private(&data_dir.join(TOKEN_FILE), token.as_bytes())?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        write_private(&data_dir.join(SERVER_FILE), &json)
    }

    /// Removes both files, if they still describe this process.
    pub fn remove(data_dir: &Path) {
        if let Ok(Some((registration, _))) = Registration::read(data_dir)
            && registration.pid == std::process::id()
        {
            let _ = std::fs::remove_file(data_dir.join(SERVER_FILE));
            let _ = std::fs::remove_file(data_dir.join(TOKEN_FILE));
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let temp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&temp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_round_trips_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let registration = Registration {
            url: "http://127.0.0.1:1".into(),
            pid: std::process::id(),
            certificate: None,
        };
        registration.write(dir.path(), "TOKEN\n").unwrap();
        let (read, token) = Registration::read(dir.path()).unwrap().unwrap();
        assert_eq!(read, registration);
        assert_eq!(token, "TOKEN");
        #[cfg(unix)]
        for file in [SERVER_FILE, TOKEN_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{file} is readable by others");
        }
        Registration::remove(dir.path());
        assert_eq!(Registration::read(dir.path()).unwrap(), None);
    }
}

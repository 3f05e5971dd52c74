//! Errors of the host library.

use toka_kernel::{KernelError, ReplayError};

use crate::components::ComponentError;
use crate::data_dir::DataDirError;
use crate::event_store::StoreError;
use crate::sequencer::Stopped;
use crate::token::TokenError;

/// Why a host operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The component cannot run as an agent.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// The kernel refused the operation (nothing changed).
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data dir cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The stored log does not verify.
    #[error("the log does not verify: {0}")]
    Replay(#[from] ReplayError),
    /// The log's last record is not the head stored beside it: records
    /// were removed or added behind the host's back.
    #[error(
        "the log ends at record {found} but the store's head says {expected}: records are missing or were added outside toka"
    )]
    HeadMismatch {
        /// The head stored beside the log.
        expected: u64,
        /// Where the log actually ends.
        found: u64,
    },
    /// A capability token is not usable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The data dir was created for another root key.
    #[error(
        "the root key ({given}) is not the one this data dir was created with ({stored}); pass its key with --root-key"
    )]
    RootKeyMismatch {
        /// The data dir's root public key.
        stored: String,
        /// The root public key given.
        given: String,
    },
    /// No stored token carries the revocation id.
    #[error(
        "no token in this data dir has revocation id {0} (see `toka token inspect`; --force revokes it anyway)"
    )]
    UnknownRevocationId(String),
    /// A stored snapshot does not match the log.
    #[error("the snapshot at record {seq} does not match the log: {reason}")]
    SnapshotMismatch {
        /// The snapshot's sequence number.
        seq: u64,
        /// What does not match.
        reason: String,
    },
    /// The host stopped (its log writer failed, or it is shutting down).
    #[error(transparent)]
    Stopped(#[from] Stopped),
    /// Setting up wasmtime failed.
    #[error("wasmtime: {0}")]
    Wasmtime(String),
    /// An `fs.*` right would cover or reach into a path the host keeps to
    /// itself (the data dir, the root key, secrets).
    #[error(transparent)]
    ProtectedPath(#[from] crate::sandbox::ProtectedPathError),
    /// A thread could not be started.
    #[error("starting a host thread: {0}")]
    Thread(#[from] std::io::Error),
}

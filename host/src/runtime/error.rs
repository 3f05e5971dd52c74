//! Errors of the host library.

use toka_kernel::KernelError;

use crate::capability::policy::Denied;
use crate::capability::token::TokenError;
use crate::log::LogError;
use crate::runtime::sequencer::{Declined, Stopped};
use crate::sandbox::components::ComponentError;
use crate::store::data_dir::DataDirError;
use crate::store::event_store::StoreError;

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
    /// The stored log could not be read back.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A capability token is not usable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// An operator's token does not allow the command (now: revoked,
    /// expired, or too low a level); nothing was applied.
    #[error("not allowed: {0}")]
    Denied(#[from] Denied),
    /// Rights given to an agent that only operators may hold.
    #[error("`{0}` is an operator right: operators hold it to call the API, agents never do")]
    OperatorRight(String),
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
    /// The host stopped (its log writer failed, or it is shutting down).
    #[error(transparent)]
    Stopped(#[from] Stopped),
    /// Setting up wasmtime failed.
    #[error("wasmtime: {0}")]
    Wasmtime(String),
    /// An `fs.*` right would cover or reach into a path the host keeps to
    /// itself (the data dir, the root key, secrets).
    #[error(transparent)]
    ProtectedPath(#[from] crate::sandbox::dirs::ProtectedPathError),
    /// A package cannot be installed or run as asked.
    #[error(transparent)]
    Package(#[from] crate::package::signed::PackageError),
    /// An API client's command would hold more of the host's memory for
    /// agent state than it may (a root agent past the state budget, a task
    /// past the budget or the share the operators' tasks hold together);
    /// nothing was applied.
    #[error(transparent)]
    StateBudget(crate::StateRefusal),
    /// An API client's install would take the disk's free space below the
    /// reserve the host keeps for its own records
    /// ([`HostConfig::disk_reserve`](crate::HostConfig::disk_reserve));
    /// nothing was applied.
    #[error("{0}")]
    DiskReserve(String),
    /// A thread could not be started.
    #[error("starting a host thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl From<Declined> for HostError {
    fn from(d: Declined) -> Self {
        match d {
            Declined::Denied(denied) => HostError::Denied(denied),
            Declined::Kernel(e) => HostError::Kernel(e),
            Declined::StateBudget(why) => HostError::StateBudget(why),
            Declined::DiskReserve(why) => HostError::DiskReserve(why),
        }
    }
}

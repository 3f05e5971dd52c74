//! Reading a log back, in one place: rebuilding the kernel (recovery), the
//! events from a point on, full verification, and the authorization audit.

pub(crate) mod archive;
pub(crate) mod audit;
pub(crate) mod committed;
pub(crate) mod recovery;
pub(crate) mod verify;

use toka_kernel::ReplayError;

use crate::store::event_store::StoreError;

/// Why a stored log could not be read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record does not verify or replay; names the first bad one.
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
    /// A journaled response's body is missing or does not match its
    /// digest.
    #[error("the response recorded at {seq} does not verify: {reason}")]
    BodyMismatch {
        /// The response record's sequence number.
        seq: u64,
        /// What does not match.
        reason: String,
    },
    /// A record was asked for that is in the archived part of the log.
    #[error(
        "record {seq} is archived: the live log starts at record {first} (`toka verify --archive FILE` checks the archive)"
    )]
    Archived {
        /// The record asked for.
        seq: u64,
        /// The first record after the anchor.
        first: u64,
    },
    /// A stored snapshot does not match the log.
    #[error("the snapshot at record {seq} does not match the log: {reason}")]
    SnapshotMismatch {
        /// The snapshot's sequence number.
        seq: u64,
        /// What does not match.
        reason: String,
    },
}

/// Reads the whole log with `read`, again when its beginning was archived
/// meanwhile (a running host's archive, which drops what `read` was
/// reading): at most three times, then the error stands.
pub(crate) fn read_whole<T>(
    store: &dyn crate::store::event_store::EventStore,
    mut read: impl FnMut() -> Result<T, LogError>,
) -> Result<T, LogError> {
    let mut tries = 0;
    loop {
        let anchor = store.anchor()?;
        match read() {
            Err(e) if tries < 2 && store.anchor()? != anchor => {
                tracing::info!(error = %e, "the log was archived while it was read; reading it again");
                tries += 1;
            }
            done => return done,
        }
    }
}

//! Verifying a stored log: every record, the head, and every snapshot.

use toka_kernel::{Digest, Event};

use crate::log::LogError;
use crate::log::recovery::{origin, replay_with};
use crate::store::event_store::EventStore;

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records replayed.
    pub records: u64,
    /// The digest of the state after the last record.
    pub state_digest: Digest,
    /// Snapshots compared with the replayed state.
    pub snapshots: usize,
    /// Journaled response bodies checked against their digests.
    pub bodies: u64,
    /// The snapshot the check started from, when the log's beginning is
    /// archived (`toka archive`): the records up to it are checked by
    /// [`verify_archive`](crate::verify_archive), not here.
    pub anchor: Option<u64>,
}

/// Replays the whole log from its first record (or from its anchor
/// snapshot, once its beginning is archived), checking every record's hash
/// and link, that the log ends at the stored head, and that every stored
/// snapshot holds exactly the replayed state (and chain head) at its
/// sequence number, and that every journaled response body is stored and
/// hashes to the digest its record names.
///
/// # Errors
///
/// [`LogError::Replay`] naming the first bad record,
/// [`LogError::HeadMismatch`], or [`LogError::SnapshotMismatch`] naming the
/// first snapshot that does not match the log, [`LogError::BodyMismatch`]
/// naming the first response whose body is missing or altered.
pub fn verify(store: &dyn EventStore) -> Result<Verified, LogError> {
    verify_reporting(store, &mut |_, _| {})
}

/// Records between two calls of a progress callback.
pub const PROGRESS_EVERY: u64 = 10_000;

/// [`verify`], calling `progress(done, total)` every [`PROGRESS_EVERY`]
/// records and once at the end (`total`: the stored head's sequence
/// number when it started). A running host may archive the log meanwhile:
/// it is then read again from the new anchor.
///
/// # Errors
///
/// As [`verify`].
pub fn verify_reporting(
    store: &dyn EventStore,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verified, LogError> {
    crate::log::read_whole(store, || verify_once(store, progress))
}

fn verify_once(
    store: &dyn EventStore,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verified, LogError> {
    let total = store.head()?.seq;
    let (kernel, anchor) = origin(store)?;
    let mut expected = std::collections::BTreeMap::new();
    for seq in store.snapshots()? {
        if Some(seq) == anchor.map(|a| a.snapshot) {
            continue;
        }
        let bytes = store
            .snapshot(seq)?
            .ok_or_else(|| LogError::SnapshotMismatch {
                seq,
                reason: "it is listed but its bytes are missing".into(),
            })?;
        let snapshot = crate::store::snapshot::decode(&bytes)
            .map_err(|reason| LogError::SnapshotMismatch { seq, reason })?;
        // Compared as this release encodes a state: a snapshot written by
        // an older release decodes (and converts) to the same state.
        let digest = snapshot.state.digest();
        expected.insert(seq, (snapshot.head, digest));
    }
    let mut mismatch = None;
    let mut bad_body = None;
    let mut bodies = 0;
    let mut checked = 0;
    let kernel = replay_with(
        store,
        kernel,
        |_, _| {},
        |kernel, applied| {
            if applied.seq % PROGRESS_EVERY == 0 {
                progress(applied.seq, total);
            }
            for (digest, len) in response_bodies(&applied.events) {
                if bad_body.is_none() {
                    bodies += 1;
                    bad_body = check_body(store, &digest, len)
                        .err()
                        .map(|reason| (applied.seq, reason));
                }
            }
            if let Some((head, digest)) = expected.get(&applied.seq)
                && mismatch.is_none()
            {
                checked += 1;
                if *head != kernel.head() {
                    mismatch = Some((applied.seq, "its chain head is not the log's".to_owned()));
                } else if *digest != kernel.state().digest() {
                    mismatch = Some((
                        applied.seq,
                        "its state is not the state the log replays to".to_owned(),
                    ));
                }
            }
        },
    )?;
    if let Some((seq, reason)) = mismatch {
        return Err(LogError::SnapshotMismatch { seq, reason });
    }
    if let Some((seq, reason)) = bad_body {
        return Err(LogError::BodyMismatch { seq, reason });
    }
    if let Some((seq, _)) = expected.range(kernel.head().seq + 1..).next() {
        return Err(LogError::SnapshotMismatch {
            seq: *seq,
            reason: "it is past the end of the log".into(),
        });
    }
    progress(kernel.head().seq, total);
    Ok(Verified {
        records: kernel.head().seq,
        state_digest: kernel.state().digest(),
        snapshots: checked,
        bodies,
        anchor: anchor.map(|a| a.snapshot),
    })
}

/// The response bodies `events` journaled: `(digest, length)`.
pub(crate) fn response_bodies(events: &[Event]) -> impl Iterator<Item = (Digest, u64)> + '_ {
    events.iter().filter_map(|event| match event {
        Event::HttpResponded {
            body: Some(digest),
            body_len,
            ..
        } => Some((*digest, *body_len)),
        _ => None,
    })
}

/// Whether the blob `digest` is stored, `len` bytes long, and hashes to it.
fn check_body(store: &dyn EventStore, digest: &Digest, len: u64) -> Result<(), String> {
    checked_body(store, digest, len).map(drop)
}

/// The blob `digest`, if it is stored, `len` bytes long, and hashes to it.
pub(crate) fn checked_body(
    store: &dyn EventStore,
    digest: &Digest,
    len: u64,
) -> Result<Vec<u8>, String> {
    let bytes = store
        .blob(digest)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("its body {} is missing", digest.short()))?;
    if bytes.len() as u64 != len || Digest::of(&bytes) != *digest {
        return Err(format!(
            "its body {} does not hash to its digest (altered?)",
            digest.short()
        ));
    }
    Ok(bytes)
}

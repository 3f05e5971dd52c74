//! Reading a log back: rebuilding the kernel at start-up (from the newest
//! snapshot and the tail), replaying it record by record, and reading the
//! committed events from a sequence number on.

use std::ops::ControlFlow;

use toka_kernel::{Kernel, Limits, Record, Registry, ReplayError, ReplayErrorKind};

use crate::log::LogError;
use crate::log::committed::CommittedRecord;
use crate::store::event_store::{Anchor, EventStore};

/// Rebuilds the kernel from a stored log, verifying every record, and calls
/// `on_record` with each applied record (its events included) in order.
///
/// Checks each record's hash, its link to the previous one, that the kernel
/// accepts its command, that its key in the store is its sequence number, and
/// finally that the log ends at the head stored beside it.
///
/// # Errors
///
/// [`LogError::Replay`] naming the first bad record, [`LogError::HeadMismatch`]
/// when records are missing at the end, [`LogError::Store`] when the store
/// cannot be read.
pub fn replay(
    store: &dyn EventStore,
    mut on_record: impl FnMut(&toka_kernel::Applied),
) -> Result<Kernel, LogError> {
    let kernel = Kernel::with_registry(store.limits()?, Registry::new()).in_cell(store.cell());
    replay_with(store, kernel, |_, _| {}, |_, applied| on_record(applied))
}

/// Rebuilds the kernel for a host: from the newest snapshot that loads, then
/// the log after it (or the whole log when there is none). Returns the
/// kernel and the snapshot's sequence number (0: none).
///
/// This is the start-up path: it checks the chain's structure — every
/// record in sequence, each linked to the previous record's hash, the last
/// one at the head stored beside the log — and applies each command, but
/// does not recompute hashes; the store is trusted for content, as it is for
/// snapshots. [`verify`](crate::verify) (`toka verify`) recomputes every hash
/// and checks every snapshot against the full replay.
///
/// # Errors
///
/// As [`replay`]. A snapshot that does not load is skipped with a warning.
pub fn recover(store: &dyn EventStore) -> Result<(Kernel, u64), LogError> {
    recover_sized(store).map(|(kernel, start)| (kernel, start.seq))
}

/// Where [`recover`] started: the snapshot it loaded (`seq` 0 and `len` 0:
/// none).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Start {
    /// The snapshot's sequence number.
    pub(crate) seq: u64,
    /// Its size in bytes.
    pub(crate) len: usize,
}

/// [`recover`], also saying how big the snapshot it started from was.
pub(crate) fn recover_sized(store: &dyn EventStore) -> Result<(Kernel, Start), LogError> {
    let (kernel, start) = newest_state(store)?;
    let kernel = restore(store, kernel)?;
    // Recovery runs before anyone writes: the log ends at its head.
    let stored = store.head()?;
    if stored != kernel.head() {
        return Err(LogError::HeadMismatch {
            expected: stored.seq,
            found: kernel.head().seq,
        });
    }
    Ok((kernel, start))
}

/// [`recover`] on a store its host's writer may be appending to meanwhile:
/// the kernel at the end of the records it read, which may be before the
/// head stored by then. The caller continues it with what was appended
/// since.
///
/// # Errors
///
/// As [`recover`], but the log ending before the stored head is no error.
pub(crate) fn recover_live(store: &dyn EventStore) -> Result<Kernel, LogError> {
    // The host may archive the log under it too.
    crate::log::read_whole(store, || {
        let (kernel, _) = newest_state(store)?;
        restore(store, kernel)
    })
}

/// The state of the newest snapshot that loads (or the empty state when
/// there is none), to continue with the records after it.
fn newest_state(store: &dyn EventStore) -> Result<(Kernel, Start), LogError> {
    let limits: Limits = store.limits()?;
    let mut below = u64::MAX;
    while let Some(seq) = store.snapshot_below(below)? {
        below = seq;
        let Some(bytes) = store.snapshot(seq)? else {
            continue;
        };
        match crate::store::snapshot::decode(&bytes) {
            Ok(s) if s.head.seq == seq => {
                let kernel = Kernel::from_snapshot(s.state, s.head, limits, Registry::new())
                    .in_cell(store.cell());
                let start = Start {
                    seq,
                    len: bytes.len(),
                };
                return Ok((kernel, start));
            }
            Ok(_) => tracing::warn!(seq, "ignoring a snapshot stored under another seq"),
            Err(e) => tracing::warn!(seq, error = %e, "ignoring a snapshot that does not load"),
        }
    }
    if let Some(anchor) = store.anchor()? {
        return Err(LogError::SnapshotMismatch {
            seq: anchor.snapshot,
            reason: "the log before it is archived and neither it nor a newer snapshot loads"
                .into(),
        });
    }
    let kernel = Kernel::with_registry(limits, Registry::new()).in_cell(store.cell());
    Ok((kernel, Start::default()))
}

/// Where a full check of the stored log starts: the anchor snapshot when
/// the log's beginning was archived (see [`Anchor`]), else the empty
/// kernel before record 1. Checks that the records kept before the anchor
/// (those of tasks running at it) are intact and chain into it.
///
/// # Errors
///
/// [`LogError::SnapshotMismatch`] when the anchor snapshot is missing or
/// does not load, [`LogError::Replay`] or [`LogError::HeadMismatch`] when a
/// kept record is altered or missing.
pub fn origin(store: &dyn EventStore) -> Result<(Kernel, Option<Anchor>), LogError> {
    let limits = store.limits()?;
    let Some(anchor) = store.anchor()? else {
        return Ok((
            Kernel::with_registry(limits, Registry::new()).in_cell(store.cell()),
            None,
        ));
    };
    let bad = |reason: String| LogError::SnapshotMismatch {
        seq: anchor.snapshot,
        reason,
    };
    let bytes = store
        .snapshot(anchor.snapshot)?
        .ok_or_else(|| bad("the log starts at it, but it is missing".into()))?;
    let start = crate::store::snapshot::decode(&bytes).map_err(bad)?;
    if start.head.seq != anchor.snapshot {
        return Err(bad("it is the state after another record".into()));
    }
    let kernel = Kernel::from_snapshot(start.state, start.head, limits, Registry::new())
        .in_cell(store.cell());
    // The kept records before the anchor: each intact, in sequence, and
    // linked, the last one being the anchor's head.
    let mut last = None;
    for entry in store.records(anchor.kept_from)? {
        let (seq, bytes) = entry?;
        if seq > anchor.snapshot {
            break;
        }
        let broken = |kind| ReplayError { seq, kind };
        let record = Record::decode(&bytes).map_err(|e| broken(ReplayErrorKind::Record(e)))?;
        let expected = last.map_or(anchor.kept_from, |(s, _)| s + 1);
        if record.seq != seq || seq != expected {
            return Err(LogError::HeadMismatch {
                expected,
                found: seq,
            });
        }
        if let Some((_, hash)) = last
            && record.prev_hash != hash
        {
            return Err(broken(ReplayErrorKind::BrokenChain {
                expected: hash,
                found: record.prev_hash,
            })
            .into());
        }
        last = Some((seq, record.hash));
    }
    if anchor.kept_from <= anchor.snapshot && last != Some((start.head.seq, start.head.hash)) {
        return Err(bad(
            "the records kept before it do not end at its chain head".into(),
        ));
    }
    Ok((kernel, Some(anchor)))
}

/// Calls `f` with each stored record from `from` on, with its events, in
/// order, until it returns false: replays from the newest snapshot before
/// `from` (or from the start) without emitting, then emits.
///
/// # Errors
///
/// As [`recover`].
pub fn read_events(
    store: &dyn EventStore,
    from: u64,
    f: impl FnMut(CommittedRecord) -> bool,
) -> Result<(), LogError> {
    LogReader::new(store, from)?.read(store, u64::MAX, f)
}

/// A place in the log, with the state there, to read records with their
/// events from: positioning costs a replay from the newest snapshot before
/// it (or from the start); each record after that costs its own replay, so
/// a reader that keeps its place reads the log in linear time.
#[derive(Debug)]
pub struct LogReader {
    kernel: Kernel,
}

impl LogReader {
    /// A reader whose next record is `from` (or the first there is, for 0:
    /// the one after the anchor, once the log's beginning is archived).
    ///
    /// # Errors
    ///
    /// As [`recover`]; [`LogError::Archived`] when `from` is in the
    /// archived part of the log.
    pub fn new(store: &dyn EventStore, from: u64) -> Result<LogReader, LogError> {
        // A running host may archive the log while the reader is placed.
        crate::log::read_whole(store, || Self::placed(store, from))
    }

    fn placed(store: &dyn EventStore, from: u64) -> Result<LogReader, LogError> {
        let limits = store.limits()?;
        let from = match store.anchor()? {
            Some(anchor) if from == 0 => anchor.snapshot + 1,
            Some(anchor) if from <= anchor.snapshot => {
                return Err(LogError::Archived {
                    seq: from,
                    first: anchor.snapshot + 1,
                });
            }
            _ => from,
        };
        let mut kernel = None;
        let mut below = from;
        while let Some(seq) = store.snapshot_below(below)? {
            below = seq;
            if let Some(bytes) = store.snapshot(seq)?
                && let Ok(s) = crate::store::snapshot::decode(&bytes)
                && s.head.seq == seq
            {
                kernel = Some(
                    Kernel::from_snapshot(s.state, s.head, limits.clone(), Registry::new())
                        .in_cell(store.cell()),
                );
                break;
            }
        }
        let mut kernel = kernel.unwrap_or_else(|| {
            Kernel::with_registry(limits, Registry::new()).in_cell(store.cell())
        });
        walk(store, kernel.head().seq + 1, |seq, bytes| {
            if seq >= from {
                return Ok(false);
            }
            kernel.restore(bytes)?;
            Ok(true)
        })?;
        Ok(LogReader { kernel })
    }

    /// The sequence number of the next record it reads.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.kernel.head().seq + 1
    }

    /// Calls `f` with each stored record from the reader's place on, with
    /// its events, up to `upto`, until `f` returns false; the reader then
    /// stands after the last record `f` was given.
    ///
    /// # Errors
    ///
    /// [`LogError`] when the store cannot be read or a record does not
    /// replay; [`LogError::Archived`] when the records it was to read next
    /// were archived since it was made.
    pub fn read(
        &mut self,
        store: &dyn EventStore,
        upto: u64,
        f: impl FnMut(CommittedRecord) -> bool,
    ) -> Result<(), LogError> {
        self.read_within(store, upto, usize::MAX, f)
    }

    /// As [`LogReader::read`], but stops after the record that brings
    /// those read to `max_bytes` as stored (at least one is read): what a
    /// caller holding what it read holds at most is then about that (an
    /// agent's observation, say, may be 1 MiB).
    ///
    /// # Errors
    ///
    /// As [`LogReader::read`].
    pub fn read_within(
        &mut self,
        store: &dyn EventStore,
        upto: u64,
        max_bytes: usize,
        mut f: impl FnMut(CommittedRecord) -> bool,
    ) -> Result<(), LogError> {
        let mut read = 0usize;
        walk(store, self.next_seq(), |seq, bytes| {
            if seq > upto {
                return Ok(false);
            }
            let next = self.next_seq();
            if seq != next {
                // The records it was to read next were archived under it.
                let first = store.anchor()?.map_or(seq, |a| a.snapshot + 1);
                return Err(LogError::Archived { seq: next, first });
            }
            let applied = self.kernel.replay(bytes)?;
            read = read.saturating_add(bytes.len());
            let more = f(CommittedRecord {
                seq: applied.seq,
                origin: applied.origin,
                time: applied.time,
                cause: applied.cause,
                events: applied.events,
            });
            Ok(more && read < max_bytes)
        })
    }
}

/// Continues `kernel` with the stored records after its head, on the
/// start-up path (see [`recover`]), to the end of what it reads.
fn restore(store: &dyn EventStore, mut kernel: Kernel) -> Result<Kernel, LogError> {
    walk(store, kernel.head().seq + 1, |key, bytes| {
        let expected = kernel.head().seq + 1;
        if key != expected {
            return Err(LogError::HeadMismatch {
                expected,
                found: key,
            });
        }
        kernel.restore(bytes)?;
        Ok(true)
    })?;
    Ok(kernel)
}

/// Calls `f` with each stored record from `from` on, lent by the store
/// ([`EventStore::each_record`]), until it returns `Ok(false)` or an error.
fn walk(
    store: &dyn EventStore,
    from: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<bool, LogError>,
) -> Result<(), LogError> {
    let mut failed = None;
    store.each_record(from, &mut |seq, bytes| match f(seq, bytes) {
        Ok(true) => ControlFlow::Continue(()),
        Ok(false) => ControlFlow::Break(()),
        Err(e) => {
            failed = Some(e);
            ControlFlow::Break(())
        }
    })?;
    failed.map_or(Ok(()), Err)
}

/// Continues `kernel` with the stored records after its head, calling
/// `before` with the kernel as it stands before each record (for the
/// auditor, which needs the state a decision was made in) and `after` once
/// it is applied.
pub(crate) fn replay_with(
    store: &dyn EventStore,
    mut kernel: Kernel,
    mut before: impl FnMut(&Kernel, &[u8]),
    mut after: impl FnMut(&Kernel, &toka_kernel::Applied),
) -> Result<Kernel, LogError> {
    // A running host may commit while this reads: replay what it
    // committed meanwhile too, until the log ends at the stored head.
    loop {
        let before_pass = kernel.head().seq;
        walk(store, kernel.head().seq + 1, |key, bytes| {
            before(&kernel, bytes);
            let applied = kernel.replay(bytes)?;
            if applied.seq != key {
                return Err(LogError::HeadMismatch {
                    expected: key,
                    found: applied.seq,
                });
            }
            after(&kernel, &applied);
            Ok(true)
        })?;
        let stored = store.head()?;
        if stored == kernel.head() {
            return Ok(kernel);
        }
        // The head is stored in the transaction that appends the records:
        // one past the replay means more was committed; anything else is
        // a log that does not end where its head says.
        if stored.seq <= kernel.head().seq || kernel.head().seq == before_pass {
            return Err(LogError::HeadMismatch {
                expected: stored.seq,
                found: kernel.head().seq,
            });
        }
    }
}

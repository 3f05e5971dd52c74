//! Retention: moving the beginning of a log to an archive file the operator
//! keeps, and checking such archives against the live log.
//!
//! `toka archive` replays and verifies the log up to the cut, writes those
//! records (and the response bodies they reference) to the archive, and only
//! once the archive is synced drops them from the live store, which then
//! starts at an [`Anchor`]: the snapshot at the cut. Records of tasks still
//! running at the cut stay live (their journals refer to them), and so does
//! every blob the state or a kept record refers to.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use toka_kernel::{
    Digest, HttpOutcome, Kernel, Operation, Record, Registry, ReplayError, ReplayErrorKind,
    TaskStatus,
};

use crate::log::LogError;
use crate::log::recovery::origin;
use crate::log::verify::response_bodies;
use crate::store::archive_file::{
    ARCHIVE_VERSION, ArchiveFileError, ArchiveReader, ArchiveWriter, End, Frame, Header,
};
use crate::store::event_store::{Anchor, Cut, EventStore, StoreError};
use crate::store::snapshot;

/// What [`archive`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// The archive file.
    pub file: PathBuf,
    /// The first record in it.
    pub first: u64,
    /// The last record in it: the new anchor.
    pub last: u64,
    /// Response bodies in it.
    pub bodies: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Where the live log starts now.
    pub anchor: Anchor,
    /// Blobs deleted from the live store because nothing kept refers to
    /// them any more.
    pub blobs_dropped: usize,
}

/// What [`verify_archive`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveVerified {
    /// The first record in the archive.
    pub first: u64,
    /// The last record in the archive.
    pub last: u64,
    /// Response bodies checked against their digests.
    pub bodies: u64,
    /// Whether the archive ends exactly at the live log's anchor.
    pub meets_anchor: bool,
}

/// Why an archive could not be made or checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// There is nothing before the cut that is not archived already.
    #[error("nothing to archive: {0}")]
    Nothing(String),
    /// The archive file could not be written or read, or is damaged.
    #[error(transparent)]
    File(#[from] ArchiveFileError),
    /// The archive does not hold what it claims, or does not belong to
    /// this log.
    #[error("{path}: {reason}")]
    Mismatch {
        /// The archive file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// The live log does not verify (nothing was archived).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Archives the log up to `keep` records before its head into the new file
/// `to`, then drops what was archived from the live store (see the module
/// docs). The store must not be written meanwhile: open it for writing, so
/// no host runs on it.
///
/// Calls `progress(done, total)` every
/// [`PROGRESS_EVERY`](crate::PROGRESS_EVERY) records.
///
/// # Errors
///
/// [`ArchiveError::Nothing`] when there is nothing to archive,
/// [`ArchiveError::File`] when `to` exists or cannot be written, and
/// [`ArchiveError::Log`] when the log does not verify; in every case the
/// store is unchanged and no file is left behind.
pub fn archive(
    store: &dyn EventStore,
    to: &Path,
    keep: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Archived, ArchiveError> {
    if to.exists() {
        return Err(ArchiveFileError::Exists { path: to.into() }.into());
    }
    let head = store.head()?.seq;
    let cut = head.saturating_sub(keep);
    let (mut kernel, anchor) = origin(store)?;
    let floor = anchor.map_or(0, |a| a.snapshot);
    if cut <= floor {
        return Err(ArchiveError::Nothing(match anchor {
            Some(_) => format!(
                "the live log starts after record {floor} and keeping {keep} of its {} records leaves none to archive",
                head - floor
            ),
            None => format!("the log has {head} records and {keep} are to be kept"),
        }));
    }
    let start = anchor.is_some().then(|| snapshot::encode(&kernel));
    let mut out = ArchiveWriter::create(to)?;
    out.write(&Frame::Header(Header {
        version: ARCHIVE_VERSION,
        data_id: store.data_id()?.unwrap_or_default(),
        limits: store.limits()?,
        start,
        first: floor + 1,
        last: cut,
    }))?;
    // Response bodies by the record that references them.
    let mut bodies: BTreeMap<u64, Vec<(Digest, u64)>> = BTreeMap::new();
    let mut at_cut = None;
    for entry in store.records(floor + 1)? {
        let (seq, bytes) = entry?;
        let applied = kernel.replay(&bytes).map_err(LogError::from)?;
        if applied.seq != seq {
            return Err(LogError::HeadMismatch {
                expected: seq,
                found: applied.seq,
            }
            .into());
        }
        for body in response_bodies(&applied.events) {
            bodies.entry(seq).or_default().push(body);
        }
        if seq <= cut {
            out.write(&Frame::Record { seq, bytes })?;
        }
        if seq == cut {
            at_cut = Some((snapshot::encode(&kernel), kept_from(&kernel)));
        }
        if seq % crate::log::verify::PROGRESS_EVERY == 0 {
            progress(seq, head);
        }
    }
    let stored = store.head()?;
    if stored != kernel.head() {
        return Err(LogError::HeadMismatch {
            expected: stored.seq,
            found: kernel.head().seq,
        }
        .into());
    }
    let Some((snapshot_bytes, kept_from)) = at_cut else {
        return Err(LogError::HeadMismatch {
            expected: cut,
            found: kernel.head().seq,
        }
        .into());
    };
    let (cut_head, cut_state) = snapshot::decode(&snapshot_bytes)
        .map(|s| (s.head, s.state.digest()))
        .map_err(|reason| LogError::SnapshotMismatch { seq: cut, reason })?;
    let mut written = HashSet::new();
    for (seq, digest, len) in bodies
        .range(..=cut)
        .flat_map(|(seq, list)| list.iter().map(move |(d, l)| (*seq, *d, *l)))
    {
        if !written.insert(digest) {
            continue;
        }
        let bytes = crate::log::verify::checked_body(store, &digest, len)
            .map_err(|reason| LogError::BodyMismatch { seq, reason })?;
        out.write(&Frame::Blob { digest, bytes })?;
    }
    let size = out.finish(End {
        head: cut_head,
        state: cut_state,
        records: cut - floor,
        blobs: written.len() as u64,
        hash: Digest([0; 32]),
    })?;
    progress(head, head);

    // What the live store keeps refers to these blobs; the rest goes.
    let state = kernel.state();
    let mut referenced: HashSet<Digest> = state.components().map(|c| c.digest).collect();
    referenced.extend(state.agents().map(|(_, a)| a.component));
    referenced.extend(
        bodies
            .range(kept_from..)
            .flat_map(|(_, list)| list.iter().map(|(d, _)| *d)),
    );
    // Records kept from before the previous anchor (tasks running at it and
    // still running now) were not replayed: their bodies, from their ops.
    for entry in store.records(kept_from)? {
        let (seq, bytes) = entry?;
        if seq > floor {
            break;
        }
        let record = Record::decode(&bytes).map_err(|e| {
            LogError::from(ReplayError {
                seq,
                kind: ReplayErrorKind::Record(e),
            })
        })?;
        if let Operation::HttpResponse { outcome, .. } = record.command.op
            && let HttpOutcome::Response { body, .. } = *outcome
        {
            referenced.insert(body);
        }
    }
    let dropped: Vec<Digest> = store
        .blob_digests()?
        .into_iter()
        .filter(|d| !referenced.contains(d))
        .collect();
    let anchor = Anchor {
        snapshot: cut,
        kept_from,
    };
    let blobs_dropped = dropped.len();
    store.cut(Cut {
        anchor,
        snapshot: snapshot_bytes,
        blobs: dropped,
    })?;
    Ok(Archived {
        file: to.to_owned(),
        first: floor + 1,
        last: cut,
        bodies: written.len() as u64,
        bytes: size,
        anchor,
        blobs_dropped,
    })
}

/// The first record the live log must keep after a cut at the kernel's
/// head: the start of the earliest task still running (its journal refers
/// to its records), or the record after the cut.
fn kept_from(kernel: &Kernel) -> u64 {
    kernel
        .state()
        .tasks()
        .filter_map(|(_, task)| match &task.status {
            TaskStatus::Running(run) => Some(run.started_seq),
            TaskStatus::Queued => None,
        })
        .min()
        .unwrap_or(kernel.head().seq + 1)
        .min(kernel.head().seq + 1)
}

/// Checks archives written by [`archive`], oldest first: each one's hash,
/// that it belongs to this store's data dir, that its records replay (from
/// the start, or from the previous archive's end), that every response
/// body it references is in it and hashes to its digest, and that it ends
/// where it says. When the last one ends at the live log's anchor, its
/// state is compared with the anchor snapshot's.
///
/// Returns what each archive held, in order.
///
/// # Errors
///
/// [`ArchiveError::File`] for a file that is not a whole archive,
/// [`ArchiveError::Mismatch`] naming the first thing that does not check.
pub fn verify_archive(
    store: &dyn EventStore,
    files: &[PathBuf],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<ArchiveVerified>, ArchiveError> {
    let limits = store.limits()?;
    let data_id = store.data_id()?.unwrap_or_default();
    let anchor = store.anchor()?;
    let mut previous: Option<Kernel> = None;
    let mut checked = Vec::new();
    for path in files {
        let mismatch = |reason: String| ArchiveError::Mismatch {
            path: path.clone(),
            reason,
        };
        let (mut reader, header) = ArchiveReader::open(path)?;
        if header.data_id != data_id {
            return Err(mismatch("it was archived from another data dir".into()));
        }
        if header.limits != limits {
            return Err(mismatch(
                "its limits are not the ones this log is written under".into(),
            ));
        }
        let mut kernel = match (&header.start, previous.take()) {
            (None, None) => {
                Kernel::with_registry(limits.clone(), Registry::new()).in_cell(store.cell())
            }
            (None, Some(before)) => {
                return Err(mismatch(format!(
                    "it does not continue the archive before it (that one ends at record {}, this one starts at record 1)",
                    before.head().seq
                )));
            }
            (Some(bytes), before) => {
                let start = snapshot::decode(bytes)
                    .map_err(|e| mismatch(format!("its start snapshot: {e}")))?;
                if let Some(before) = before
                    && (before.head() != start.head
                        || before.state().digest() != start.state.digest())
                {
                    return Err(mismatch(format!(
                        "it does not continue the archive before it (that one ends at record {}, this one starts after record {})",
                        before.head().seq,
                        start.head.seq
                    )));
                }
                Kernel::from_snapshot(start.state, start.head, limits.clone(), Registry::new())
                    .in_cell(store.cell())
            }
        };
        if kernel.head().seq + 1 != header.first {
            return Err(mismatch(format!(
                "its header says it starts at record {} but its start state is after record {}",
                header.first,
                kernel.head().seq
            )));
        }
        let mut wanted: BTreeMap<Digest, (u64, u64)> = BTreeMap::new();
        let mut bodies = 0;
        let end = loop {
            match reader.next()? {
                Frame::Record { seq, bytes } => {
                    let applied = kernel.replay(&bytes).map_err(|e| mismatch(e.to_string()))?;
                    if applied.seq != seq {
                        return Err(mismatch(format!(
                            "record {} is stored as record {seq}",
                            applied.seq
                        )));
                    }
                    for (digest, len) in response_bodies(&applied.events) {
                        wanted.entry(digest).or_insert((seq, len));
                    }
                    if seq % crate::log::verify::PROGRESS_EVERY == 0 {
                        progress(seq, header.last);
                    }
                }
                Frame::Blob { digest, bytes } => {
                    let Some((seq, len)) = wanted.remove(&digest) else {
                        return Err(mismatch(format!(
                            "it holds a body {} no record references",
                            digest.short()
                        )));
                    };
                    if bytes.len() as u64 != len || Digest::of(&bytes) != digest {
                        return Err(mismatch(format!(
                            "the body of the response at record {seq} does not hash to its digest (altered?)"
                        )));
                    }
                    bodies += 1;
                }
                Frame::End(end) => break end,
                Frame::Header(_) => return Err(mismatch("a second header".into())),
            }
        };
        if let Some((digest, (seq, _))) = wanted.into_iter().next() {
            return Err(mismatch(format!(
                "the body {} of the response at record {seq} is missing",
                digest.short()
            )));
        }
        if end.head != kernel.head() || kernel.head().seq != header.last {
            return Err(mismatch(format!(
                "its records end at record {} but it says {}",
                kernel.head().seq,
                header.last
            )));
        }
        if end.state != kernel.state().digest() {
            return Err(mismatch(
                "the state its records replay to is not the state at its end".into(),
            ));
        }
        progress(header.last, header.last);
        checked.push(ArchiveVerified {
            first: header.first,
            last: header.last,
            bodies,
            meets_anchor: false,
        });
        previous = Some(kernel);
    }
    if let (Some(anchor), Some(kernel), Some(last)) = (anchor, previous, checked.last_mut())
        && last.last == anchor.snapshot
    {
        let (live, _) = origin(store)?;
        if live.head() != kernel.head() || live.state().digest() != kernel.state().digest() {
            return Err(ArchiveError::Mismatch {
                path: files.last().cloned().unwrap_or_default(),
                reason: format!(
                    "it ends at record {} but not in the state of the live log's anchor snapshot",
                    anchor.snapshot
                ),
            });
        }
        last.meets_anchor = true;
    }
    Ok(checked)
}

//! Retention: moving the beginning of a log to an archive file the operator
//! keeps, and checking such archives against the live log.
//!
//! `toka archive` replays and verifies the log up to the cut, writes those
//! records (and the response bodies they reference) to the archive, and only
//! once the archive is synced drops them from the live store, which then
//! starts at an [`Anchor`]: the snapshot at the cut. Records of tasks still
//! running at the cut stay live (their journals refer to them), and so does
//! every blob the state or a kept record refers to. The capability tokens
//! of agents and packages gone by the cut (forgotten, uninstalled) are
//! deleted with them: every spawn stores its agent's token, so without it
//! a host spawning agents and forgetting them grew its store for ever.
//!
//! A running host archives too ([`Host::archive`](crate::Host::archive)):
//! the archive is written while the host appends, and only the cut (a
//! short transaction storing the anchor) holds its log writer back; the
//! store then deletes the archived records in short transactions
//! ([`EventStore::drop_archived`]).

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use toka_kernel::{
    Digest, Event, HttpOutcome, Kernel, Operation, Record, Registry, ReplayError, ReplayErrorKind,
    TaskStatus, WorldState,
};

use crate::log::LogError;
use crate::log::recovery::origin;
use crate::log::verify::response_bodies;
use crate::store::archive_file::{
    ARCHIVE_VERSION, ArchiveFileError, ArchiveReader, ArchiveWriter, End, Frame, Header,
};
use crate::store::event_store::{Anchor, Cut, DROP_CHUNK, EventStore, StoreError};
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
    /// Tokens deleted from the live store: those of agents and packages
    /// the archived records knew that are gone by the cut (forgotten,
    /// uninstalled), which nothing kept refers to.
    pub tokens_dropped: usize,
    /// The longest a running host's log writer waited for the archive:
    /// for the cut (storing the anchor), or for one of the short
    /// transactions that then delete what was archived.
    pub writer_wait: std::time::Duration,
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
    /// This log cannot be archived (a cluster cell's).
    #[error("cannot archive: {0}")]
    Unsupported(String),
    /// An archive of this log is being made already.
    #[error("an archive of this log is being made already; try again when it is done")]
    Busy,
    /// Whoever asked stopped it before the cut (a server stopping): the
    /// store is unchanged and no file is left.
    #[error("stopped before the cut: nothing was archived")]
    Stopped,
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
/// docs). No host may write to the store meanwhile (open it for writing):
/// a running host archives with [`Host::archive`](crate::Host::archive).
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
    let mut going_on = |done, total| {
        progress(done, total);
        ControlFlow::Continue(())
    };
    let mut archived = write(store, to, keep, &mut going_on)?.cut(store)?;
    delete_archived(store, &mut archived);
    Ok(archived)
}

/// Deletes what `archived`'s cut left of the archived records, in short
/// transactions, noting the longest in [`Archived::writer_wait`]. A
/// failure is only logged: the archive is made and the cut done, and the
/// next archive (or opening the store for writing) deletes what is left.
pub(crate) fn delete_archived(store: &dyn EventStore, archived: &mut Archived) {
    let mut longest = archived.writer_wait;
    match store.drop_archived(DROP_CHUNK, &mut |took| longest = longest.max(took)) {
        Ok(rows) => tracing::debug!(rows, "deleted the archived records"),
        Err(e) => tracing::warn!(
            error = %e,
            "deleting the archived records failed; the next archive or start deletes what is left"
        ),
    }
    archived.writer_wait = longest;
}

/// An archive written and synced whose records are still in the live
/// store: [`Written::cut`] drops them. Dropped without a cut, it deletes
/// the file.
#[derive(Debug)]
pub(crate) struct Written {
    /// The file; `None` once the cut took it over.
    file: Option<PathBuf>,
    first: u64,
    /// The last record archived: the new anchor.
    last: u64,
    bodies: u64,
    bytes: u64,
    /// The state after `last`, encoded: the anchor snapshot.
    snapshot: Vec<u8>,
    /// The first record the live log keeps (see [`kept_from`]).
    kept_from: u64,
    /// Blobs the live log refers to: the components installed in the state
    /// at `last`, and what the records kept refer to, up to `looked`.
    referenced: HashSet<Digest>,
    /// The tokens of the agents and packages the archived records knew:
    /// in the state they start from, or spawned and installed by them.
    /// Operators' tokens are never among them (an agent's token cannot
    /// carry an operator's rights).
    known_tokens: HashSet<Digest>,
    /// Agents' and packages' tokens the live log refers to: those in the
    /// state at `last`, and those the records kept spawn or install with,
    /// up to `looked`.
    kept_tokens: HashSet<Digest>,
    /// The next record kept to look at ([`Written::look`]).
    looked: u64,
}

/// Writes the records up to `keep` records before the store's head (as it
/// is when called) to the new archive file `to`, checking each one by
/// replaying it, with the response bodies they reference. The store is
/// only read: appends may go on meanwhile.
///
/// # Errors
///
/// As [`archive`]; no file is left behind.
pub(crate) fn write(
    store: &dyn EventStore,
    to: &Path,
    keep: u64,
    progress: &mut dyn FnMut(u64, u64) -> ControlFlow<()>,
) -> Result<Written, ArchiveError> {
    if store.cell().is_some() {
        return Err(ArchiveError::Unsupported(
            "a cell of a cluster cannot be archived (JetStream keeps its log)".into(),
        ));
    }
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
    let mut known_tokens = tokens_of(kernel.state());
    let mut out = ArchiveWriter::create(to)?;
    out.write(&Frame::Header(Header {
        version: ARCHIVE_VERSION,
        data_id: store.data_id()?.unwrap_or_default(),
        limits: store.limits()?,
        start,
        first: floor + 1,
        last: cut,
    }))?;
    // Response bodies, each with the first record that references it.
    let mut bodies: Vec<(u64, Digest, u64)> = Vec::new();
    let mut seen = HashSet::new();
    for entry in store.records(floor + 1)? {
        let (seq, bytes) = entry?;
        if seq > cut {
            break;
        }
        let applied = kernel.replay(&bytes).map_err(LogError::from)?;
        if applied.seq != seq {
            return Err(LogError::HeadMismatch {
                expected: seq,
                found: applied.seq,
            }
            .into());
        }
        for (digest, len) in response_bodies(&applied.events) {
            if seen.insert(digest) {
                bodies.push((seq, digest, len));
            }
        }
        known_tokens.extend(applied.events.iter().filter_map(|event| match event {
            Event::AgentSpawned { spec, .. } => Some(spec.token),
            Event::PackageInstalled { package, .. } => Some(package.token),
            Event::AgentRebound { token, .. } => Some(*token),
            _ => None,
        }));
        out.write(&Frame::Record { seq, bytes })?;
        if seq % crate::log::verify::PROGRESS_EVERY == 0 && progress(seq, cut).is_break() {
            return Err(ArchiveError::Stopped);
        }
    }
    if kernel.head().seq != cut {
        return Err(LogError::HeadMismatch {
            expected: cut,
            found: kernel.head().seq,
        }
        .into());
    }
    for (seq, digest, len) in &bodies {
        let bytes = crate::log::verify::checked_body(store, digest, *len)
            .map_err(|reason| LogError::BodyMismatch { seq: *seq, reason })?;
        out.write(&Frame::Blob {
            digest: *digest,
            bytes,
        })?;
    }
    let state = kernel.state();
    // Every agent that is not terminated runs an installed component; a
    // removed component's bytes are needed by nothing the live log keeps.
    let components: HashSet<Digest> = state.components().map(|c| c.digest).collect();
    let bytes = out.finish(End {
        head: kernel.head(),
        state: state.digest(),
        records: cut - floor,
        blobs: bodies.len() as u64,
        hash: Digest([0; 32]),
    })?;
    let written = Written {
        file: Some(to.to_owned()),
        first: floor + 1,
        last: cut,
        bodies: bodies.len() as u64,
        bytes,
        snapshot: snapshot::encode(&kernel),
        kept_from: kept_from(&kernel),
        looked: kept_from(&kernel),
        referenced: components,
        known_tokens,
        kept_tokens: tokens_of(state),
    };
    // Asked to stop now, the written file goes with `written`.
    match progress(cut, cut) {
        ControlFlow::Continue(()) => Ok(written),
        ControlFlow::Break(()) => Err(ArchiveError::Stopped),
    }
}

impl Written {
    /// Reads the records kept that were not looked at yet, noting the
    /// blobs they refer to (bodies of responses, and components installed
    /// after the cut) and the agents' and packages' tokens they name. A
    /// running host looks once before it holds its writer back for the
    /// cut, so that the cut looks only at what was appended since.
    ///
    /// # Errors
    ///
    /// When the store cannot be read or a record does not decode.
    pub(crate) fn look(&mut self, store: &dyn EventStore) -> Result<(), ArchiveError> {
        for entry in store.records(self.looked)? {
            let (seq, bytes) = entry?;
            let record = Record::decode(&bytes).map_err(|e| {
                LogError::from(ReplayError {
                    seq,
                    kind: ReplayErrorKind::Record(e),
                })
            })?;
            match record.command.op {
                Operation::HttpResponse { outcome, .. } => {
                    if let HttpOutcome::Response { body, .. } = *outcome {
                        self.referenced.insert(body);
                    }
                }
                Operation::InstallComponent { component } => {
                    self.referenced.insert(component.digest);
                }
                Operation::InstallPackage { component, package } => {
                    self.referenced.insert(component.digest);
                    self.kept_tokens.insert(package.token);
                }
                op => {
                    if let Some(spec) = op.spawned() {
                        self.kept_tokens.insert(spec.token);
                    }
                }
            }
            self.looked = seq + 1;
        }
        Ok(())
    }

    /// Drops the archived records from the live store, which then starts
    /// at the anchor snapshot, with the blobs and the tokens nothing it
    /// keeps refers to (it first [looks](Written::look) at the records not
    /// looked at yet). No record may be appended while this runs (a
    /// running host holds its writer back): a record appended between that
    /// look and the cut could refer to a blob the cut deletes. (A record
    /// applied but not yet appended that spawns an agent with a token the
    /// cut deletes stores it again: every spawn stores its token.)
    ///
    /// # Errors
    ///
    /// [`ArchiveError::Store`] or [`ArchiveError::Log`] when the store
    /// cannot be read or cut; the store is unchanged and the file deleted.
    pub(crate) fn cut(mut self, store: &dyn EventStore) -> Result<Archived, ArchiveError> {
        let started = std::time::Instant::now();
        let anchor = Anchor {
            snapshot: self.last,
            kept_from: self.kept_from,
        };
        self.look(store)?;
        let dropped: Vec<Digest> = store
            .blob_digests()?
            .into_iter()
            .filter(|d| !self.referenced.contains(d))
            .collect();
        let blobs_dropped = dropped.len();
        let tokens: Vec<Digest> = self
            .known_tokens
            .difference(&self.kept_tokens)
            .copied()
            .collect();
        let tokens_dropped = tokens.len();
        store.cut(Cut {
            anchor,
            snapshot: std::mem::take(&mut self.snapshot),
            blobs: dropped,
            tokens,
        })?;
        Ok(Archived {
            file: self.file.take().unwrap_or_default(),
            first: self.first,
            last: self.last,
            bodies: self.bodies,
            bytes: self.bytes,
            anchor,
            blobs_dropped,
            tokens_dropped,
            writer_wait: started.elapsed(),
        })
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        // Not cut: the log still holds these records, the file goes.
        if let Some(file) = self.file.take()
            && let Err(e) = std::fs::remove_file(&file)
        {
            tracing::warn!(file = %file.display(), error = %e, "removing an archive that was not cut");
        }
    }
}

/// The tokens `state`'s agents (terminated ones too, until forgotten) and
/// installed packages hold.
fn tokens_of(state: &WorldState) -> HashSet<Digest> {
    let agents = state.agents().map(|(_, agent)| agent.token);
    agents.chain(state.packages().map(|p| p.token)).collect()
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use toka_kernel::{
        Command, ComponentSpec, Digest, EntityId, Kernel, Limits, Operation, Timestamp,
    };

    use crate::log::LogError;
    use crate::log::archive::{verify_archive, write};
    use crate::store::event_store::{Batch, EventStore};
    use crate::store::memory::MemoryStore;

    /// A batch installing a component of `bytes` (its blob goes with it),
    /// with `orphan` blobs no record refers to.
    /// A progress that never stops the archive.
    fn go_on(_: u64, _: u64) -> std::ops::ControlFlow<()> {
        std::ops::ControlFlow::Continue(())
    }

    fn install(kernel: &mut Kernel, bytes: &[u8], orphan: &[&[u8]]) -> Batch {
        let digest = Digest::of(bytes);
        let component = Box::new(ComponentSpec {
            digest,
            name: format!("component-{}", kernel.head().seq),
            size: bytes.len() as u64,
        });
        let applied = kernel
            .apply(Command::system(
                EntityId::SYSTEM,
                Timestamp(kernel.head().seq),
                Operation::InstallComponent { component },
            ))
            .unwrap();
        let mut batch = Batch::default();
        batch.records.push((applied.seq, applied.bytes));
        batch.blobs.push((digest, Arc::from(bytes)));
        for blob in orphan {
            batch.blobs.push((Digest::of(blob), Arc::from(*blob)));
        }
        batch.head = kernel.head();
        batch
    }

    #[test]
    fn a_cut_keeps_the_blobs_of_records_appended_after_the_archive_was_written() {
        let store = MemoryStore::new(Limits::default());
        let mut kernel = Kernel::new(Limits::default());
        store
            .append(install(&mut kernel, b"before", &[b"orphan"]))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("a");
        let written = write(&store, &to, 0, &mut go_on).unwrap();
        // A running host goes on appending until the cut holds its writer
        // back: this record's component is in no state the archive saw.
        store.append(install(&mut kernel, b"after", &[])).unwrap();
        let archived = written.cut(&store).unwrap();
        assert_eq!((archived.first, archived.last), (1, 1));
        assert_eq!(archived.blobs_dropped, 1, "only the orphan goes");
        let blobs = store.blob_digests().unwrap();
        assert!(
            blobs.contains(&Digest::of(b"before")),
            "in the state at the cut"
        );
        assert!(
            blobs.contains(&Digest::of(b"after")),
            "installed after the cut"
        );
        assert!(!blobs.contains(&Digest::of(b"orphan")));
        let checked = verify_archive(&store, &[to], &mut |_, _| {}).unwrap();
        assert!(checked[0].meets_anchor, "{checked:?}");
        crate::log::verify::verify(&store).unwrap();
    }

    /// A record removing the component of `bytes`.
    fn remove(kernel: &mut Kernel, bytes: &[u8]) -> Batch {
        let applied = kernel
            .apply(Command::system(
                EntityId::SYSTEM,
                Timestamp(kernel.head().seq),
                Operation::RemoveComponent {
                    component: Digest::of(bytes),
                },
            ))
            .unwrap();
        let mut batch = Batch::default();
        batch.records.push((applied.seq, applied.bytes));
        batch.head = kernel.head();
        batch
    }

    #[test]
    fn a_removed_component_s_bytes_go_with_the_archive_that_takes_its_removal() {
        let store = MemoryStore::new(Limits::default());
        let mut kernel = Kernel::new(Limits::default());
        for batch in [
            install(&mut kernel, b"kept", &[]),
            install(&mut kernel, b"removed", &[]),
            remove(&mut kernel, b"removed"),
            install(&mut kernel, b"late", &[]),
            remove(&mut kernel, b"late"),
        ] {
            store.append(batch).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let blobs = |store: &MemoryStore| {
            let mut names: Vec<&str> = [b"kept" as &[u8], b"removed", b"late"]
                .into_iter()
                .filter(|b| store.blob_digests().unwrap().contains(&Digest::of(b)))
                .map(|b| std::str::from_utf8(b).unwrap())
                .collect();
            names.sort_unstable();
            names
        };
        // The cut after the first removal: the second component's install
        // is kept, so are its bytes.
        let archived = write(&store, &dir.path().join("a"), 2, &mut go_on)
            .unwrap()
            .cut(&store)
            .unwrap();
        assert_eq!((archived.last, archived.blobs_dropped), (3, 1));
        assert_eq!(blobs(&store), ["kept", "late"]);
        let archived = write(&store, &dir.path().join("b"), 0, &mut go_on)
            .unwrap()
            .cut(&store)
            .unwrap();
        assert_eq!((archived.last, archived.blobs_dropped), (5, 1));
        assert_eq!(blobs(&store), ["kept"]);
        crate::log::verify::verify(&store).unwrap();
    }

    /// A batch of one record applying `op`, by the system or, with
    /// `operator`, by the operator whose token has that digest; `tokens`
    /// are stored with it.
    fn by(kernel: &mut Kernel, op: Operation, operator: Option<Digest>, tokens: &[&[u8]]) -> Batch {
        let mut command = Command::system(EntityId::SYSTEM, Timestamp(kernel.head().seq), op);
        if let Some(digest) = operator {
            command.auth = toka_kernel::Authorization::Operator(digest);
        }
        let applied = kernel.apply(command).unwrap();
        let mut batch = Batch::default();
        batch.records.push((applied.seq, applied.bytes));
        for token in tokens {
            batch.tokens.push((Digest::of(token), Arc::from(*token)));
        }
        batch.head = kernel.head();
        batch
    }

    /// A batch spawning an agent named `name` holding the token `token`.
    fn spawn(kernel: &mut Kernel, name: &str, token: &[u8]) -> (Batch, EntityId) {
        let spec = Box::new(toka_kernel::AgentSpec {
            component: Digest::of(b"agent"),
            name: name.into(),
            token: Digest::of(token),
            rights: Vec::new(),
        });
        let batch = by(kernel, Operation::SpawnAgent { spec }, None, &[token]);
        let id = kernel
            .state()
            .agents()
            .find(|(_, a)| a.name == name)
            .map(|(id, _)| id)
            .unwrap();
        (batch, id)
    }

    /// A batch terminating `agent`, then one forgetting the terminated.
    fn forget(kernel: &mut Kernel, agent: EntityId) -> [Batch; 2] {
        let reason = "done".to_owned();
        let terminate = by(
            kernel,
            Operation::TerminateAgent { agent, reason },
            None,
            &[],
        );
        [
            terminate,
            by(kernel, Operation::ForgetTerminated, None, &[]),
        ]
    }

    #[test]
    fn the_tokens_of_agents_forgotten_by_the_cut_go_with_it() {
        let store = MemoryStore::new(Limits::default());
        let mut kernel = Kernel::new(Limits::default());
        store.append(install(&mut kernel, b"agent", &[])).unwrap();
        let (a, _) = spawn(&mut kernel, "a", b"token a");
        let (b, b_id) = spawn(&mut kernel, "b", b"token b");
        let (c, c_id) = spawn(&mut kernel, "c", b"token c");
        for batch in [a, b, c] {
            store.append(batch).unwrap();
        }
        for batch in forget(&mut kernel, b_id)
            .into_iter()
            .chain(forget(&mut kernel, c_id))
        {
            store.append(batch).unwrap();
        }
        // An operator's command, storing the operator's token.
        let op = Operation::InstallComponent {
            component: Box::new(ComponentSpec {
                digest: Digest::of(b"tool"),
                name: "tool".into(),
                size: 4,
            }),
        };
        let operator = Some(Digest::of(b"operator"));
        let mut batch = by(&mut kernel, op, operator, &[b"operator"]);
        batch
            .blobs
            .push((Digest::of(b"tool"), Arc::from(&b"tool"[..])));
        store.append(batch).unwrap();
        let cut = kernel.head().seq;
        // Kept: an agent spawned after the cut with the token of one
        // forgotten before it (an operator spawns many with one token).
        let (d, d_id) = spawn(&mut kernel, "d", b"token c");
        store.append(d).unwrap();
        let stored = |store: &MemoryStore| {
            let names = ["token a", "token b", "token c", "operator"];
            names
                .into_iter()
                .filter(|t| store.token(&Digest::of(t.as_bytes())).unwrap().is_some())
                .collect::<Vec<_>>()
        };
        let dir = tempfile::tempdir().unwrap();
        let archived = write(&store, &dir.path().join("a"), 1, &mut go_on)
            .unwrap()
            .cut(&store)
            .unwrap();
        assert_eq!((archived.last, archived.tokens_dropped), (cut, 1));
        assert_eq!(stored(&store), ["token a", "token c", "operator"]);
        // The next archive takes the forgetting of `d`: its token goes
        // then; the operator's never does.
        for batch in forget(&mut kernel, d_id) {
            store.append(batch).unwrap();
        }
        let archived = write(&store, &dir.path().join("b"), 0, &mut go_on)
            .unwrap()
            .cut(&store)
            .unwrap();
        assert_eq!(archived.tokens_dropped, 1);
        assert_eq!(stored(&store), ["token a", "operator"]);
        crate::log::verify::verify(&store).unwrap();
    }

    #[test]
    fn a_reader_whose_next_records_were_archived_under_it_is_told_so() {
        let store = MemoryStore::new(Limits::default());
        let mut kernel = Kernel::new(Limits::default());
        store.append(install(&mut kernel, b"one", &[])).unwrap();
        let mut reader = crate::log::recovery::LogReader::new(&store, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(&store, &dir.path().join("a"), 0, &mut go_on)
            .unwrap()
            .cut(&store)
            .unwrap();
        store.append(install(&mut kernel, b"two", &[])).unwrap();
        let read = reader.read(&store, u64::MAX, |_| true);
        assert!(
            matches!(read, Err(LogError::Archived { seq: 1, first: 2 })),
            "{read:?}"
        );
    }

    #[test]
    fn a_whole_read_overlapping_an_archive_is_read_again_but_a_bad_log_fails_once() {
        let store = MemoryStore::new(Limits::default());
        let mut kernel = Kernel::new(Limits::default());
        store.append(install(&mut kernel, b"one", &[])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut reads = 0;
        let read = crate::log::read_whole(&store, || {
            reads += 1;
            if reads == 1 {
                // A running host archives while the first read goes on.
                write(&store, &dir.path().join("a"), 0, &mut go_on)
                    .unwrap()
                    .cut(&store)
                    .unwrap();
                return Err(LogError::HeadMismatch {
                    expected: 1,
                    found: 0,
                });
            }
            crate::log::verify::verify(&store)
        });
        assert_eq!(read.unwrap().anchor, Some(1));
        assert_eq!(reads, 2);
        reads = 0;
        let failed: Result<(), _> = crate::log::read_whole(&store, || {
            reads += 1;
            Err(LogError::HeadMismatch {
                expected: 1,
                found: 0,
            })
        });
        assert!(failed.is_err());
        assert_eq!(reads, 1, "nothing was archived meanwhile: the error stands");
    }

    #[test]
    fn an_archive_not_cut_leaves_no_file_and_the_store_unchanged() {
        let store = MemoryStore::new(Limits::default());
        let mut kernel = Kernel::new(Limits::default());
        store.append(install(&mut kernel, b"one", &[])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("a");
        drop(write(&store, &to, 0, &mut go_on).unwrap());
        assert!(!to.exists(), "the file of an archive never cut is removed");
        assert_eq!(store.anchor().unwrap(), None);
        assert_eq!(store.records(1).unwrap().count(), 1);
    }
}

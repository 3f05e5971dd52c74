//! The log writer: a thread that commits pending batches, then publishes them.
//!
//! The writer takes whatever is pending as one batch, commits it to the
//! [`EventStore`] in one durable transaction, and only then publishes the
//! batch (bus, scheduler) and advances the committed sequence number. While
//! it commits, new operations accumulate into the next batch: group commit
//! emerges from load, and persistence overlaps execution. The pending batch
//! is bounded in records and in bytes; submitters wait for the writer when
//! it is full, so a flood slows the guest instead of growing the host.
//!
//! Any failure here — the store, a snapshot that cannot be encoded, a panic
//! — stops the host with the reason; every waiter wakes and sees it, and
//! whoever receives the published batches is told that nothing more comes.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::core::{Sequencer, Shared, State, Stopped};
use super::replica::Replica;
use crate::log::committed::{Committed, CommittedRecord};
use crate::store::event_store::{Batch, EventStore};

/// A writer woken for a batch smaller than this lingers first ...
const LINGER_BELOW: usize = 64;
/// ... this long, so a steady trickle of operations commits in groups
/// instead of paying a thread wake-up per operation — unless someone waits
/// for the batch to be durable (an outbound request, a caller of
/// `schedule`), or it ends a task someone waits for (see
/// `Sequencer::awaiting_ends`): then it commits at once.
const LINGER: Duration = Duration::from_micros(100);

/// Called by the writer with each durable batch, before the committed
/// sequence number advances.
pub(crate) type OnCommit = Box<dyn FnMut(Arc<Committed>) + Send>;

/// Called once when the writer has ended, closed or failed (after the
/// host's stop reason is set): no batch comes after it.
pub(crate) type OnEnd = Box<dyn FnOnce() + Send>;

impl Sequencer {
    /// Runs `f` while no batch is being appended: the writer waits for it
    /// (operations go on piling up in its pending batch, within its
    /// bounds).
    pub(crate) fn without_appends<R>(&self, f: impl FnOnce() -> R) -> R {
        let _alone = self
            .shared
            .appending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f()
    }

    /// Starts the writer thread over `store`.
    pub(crate) fn start_writer(
        &self,
        store: Arc<dyn EventStore>,
        on_commit: OnCommit,
        on_end: OnEnd,
    ) -> std::io::Result<JoinHandle<()>> {
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name("toka-log-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| write_until_closed(&shared, &store, on_commit));
                match std::panic::catch_unwind(run) {
                    Ok(Ok(())) => {}
                    Ok(Err(stopped)) => {
                        tracing::error!(reason = %stopped.0, "the log writer failed; the host stops");
                        shared.fail(stopped);
                    }
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic".to_owned());
                        tracing::error!(%what, "the log writer panicked; the host stops");
                        shared.fail(Stopped(format!("the log writer panicked: {what}")));
                    }
                }
                on_end();
            })
    }
}

fn write_until_closed(
    shared: &Arc<Shared>,
    store: &Arc<dyn EventStore>,
    mut on_commit: OnCommit,
) -> Result<(), Stopped> {
    // Started once the state is large; `None` again if it fails.
    let mut replica: Option<Replica> = None;
    let mut replica_failed = false;
    let result = loop {
        let next = match shared.next_batch(replica.as_ref()) {
            Ok(Some(next)) => next,
            Ok(None) => break Ok(()),
            Err(stopped) => break Err(stopped),
        };
        let Next {
            mut batch,
            records,
            view,
            snapshot,
            large,
        } = next;
        let head = batch.head;
        let last = head.seq;
        batch.task_ends.extend(task_ends(&records));
        let handed = replica.as_ref().map(|_| batch.records.clone());
        let snapshotted = batch.snapshot.is_some();
        let started = std::time::Instant::now();
        let appended = {
            let _alone = shared.appending.lock().unwrap_or_else(|e| e.into_inner());
            store.append(batch)
        };
        if let Err(e) = appended {
            break Err(Stopped(format!("committing the log failed: {e}")));
        }
        shared.disk.check(|| store.free_space());
        if snapshotted {
            shared.metrics.snapshots.stored(false);
        }
        shared.metrics.committed(&records, started.elapsed());
        if let Some(view) = view {
            *shared.view.lock().unwrap_or_else(|e| e.into_inner()) = (head, view);
        }
        // Handed to the replica before it is visible, so a reader asking
        // the replica for the state gets at least what is committed.
        match (&replica, handed) {
            (Some(running), Some(handed)) => {
                let fed = running.feed(handed) && snapshot.is_none_or(|at| running.snapshot(at));
                if !fed {
                    shared.set_replica(None);
                    replica = None;
                    replica_failed = true;
                }
            }
            // Between two appends: the replica recovers what is stored,
            // and is handed every batch appended from now on.
            _ if large && !replica_failed => match start_replica(shared, store) {
                Ok(started) => {
                    shared.set_replica(Some(started.handle()));
                    replica = Some(started);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the snapshot replica; snapshots are taken under the lock");
                    replica_failed = true;
                }
            },
            _ => {}
        }
        // Durable first, then visible: actors woken below already see the
        // new committed number.
        shared.committed.send_replace(last);
        if !records.is_empty() {
            on_commit(Arc::new(Committed { records }));
        }
        shared.published.send_replace(last);
    };
    // Readers copy under the lock again; the replica finishes what it was
    // handed (dropped here, before the writer is done with the store).
    shared.set_replica(None);
    drop(replica);
    result
}

/// Starts a snapshot replica over `store` that hands its copies of the
/// state to `shared`'s readers.
fn start_replica(shared: &Arc<Shared>, store: &Arc<dyn EventStore>) -> std::io::Result<Replica> {
    let readers = Arc::clone(shared);
    Replica::start(
        Arc::clone(store),
        Arc::clone(&shared.metrics.snapshots),
        Box::new(move |copy| readers.publish_view(copy)),
    )
}

/// The tasks the records end, with the record that ends each.
fn task_ends(records: &[CommittedRecord]) -> impl Iterator<Item = (toka_kernel::TaskId, u64)> + '_ {
    records.iter().flat_map(|record| {
        record.events.iter().filter_map(move |event| match event {
            toka_kernel::Event::TaskCompleted { task, .. }
            | toka_kernel::Event::TaskFailed { task, .. } => Some((*task, record.seq)),
            _ => None,
        })
    })
}

/// A batch to write, with what goes with it.
struct Next {
    batch: Batch,
    records: Vec<CommittedRecord>,
    /// A copy of the state at the batch's head, when a reader asked for one.
    view: Option<Arc<toka_kernel::WorldState>>,
    /// A snapshot at this head is due, for the replica to take.
    snapshot: Option<u64>,
    /// The last snapshot was large: a replica should take the next ones.
    large: bool,
}

impl Shared {
    /// Blocks until there is a batch to write; `None` once closing and
    /// drained. A snapshot due with it is encoded here, under the lock,
    /// unless a `replica` takes it.
    fn next_batch(&self, replica: Option<&Replica>) -> Result<Option<Next>, Stopped> {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        let mut lingered = false;
        loop {
            if !core.pending.is_empty() {
                if core.pending_records.len() < LINGER_BELOW
                    && !core.closing
                    && !core.hurry
                    && !lingered
                {
                    lingered = true;
                    core.writer = State::Lingering;
                    core = self
                        .work
                        .wait_timeout(core, LINGER)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
                core.writer = State::Busy;
                core.hurry = false;
                core.pending_bytes = 0;
                let mut batch = std::mem::take(&mut core.pending);
                let records = std::mem::take(&mut core.pending_records);
                // The next batch is likely about this one's size: room for
                // it now spares the submitters regrowing from empty.
                core.pending.records.reserve(batch.records.len());
                core.pending_records.reserve(records.len());
                // Everything applied is in this batch, so the kernel's state
                // is the state at its head: the moment for a snapshot.
                let head = batch.head.seq;
                let mut snapshot = None;
                if core.snapshots.due(head) {
                    if let Some(replica) = replica {
                        let len = replica
                            .last_len()
                            .unwrap_or_else(|| core.snapshots.last_len());
                        core.snapshots.taken(head, len);
                        snapshot = Some(head);
                    } else {
                        let bytes = crate::store::snapshot::encode(&core.kernel);
                        core.snapshots.taken(head, bytes.len());
                        batch.snapshot = Some((head, bytes));
                    }
                }
                // A reader's copy waits for its turn (the reader asks again).
                let view = (self.view_wait().is_zero()
                    && self
                        .want_view
                        .swap(false, std::sync::atomic::Ordering::SeqCst))
                .then(|| self.copy_view(&core.kernel));
                return Ok(Some(Next {
                    batch,
                    records,
                    view,
                    snapshot,
                    large: core.snapshots.large(),
                }));
            }
            if core.closing {
                return Ok(None);
            }
            core.writer = State::Idle;
            core = self.work.wait(core).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Stops the host with `reason` and wakes everyone waiting on it.
    pub(super) fn fail(&self, reason: Stopped) {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        if core.stopped.is_none() || core.closing {
            core.stopped = Some(reason);
        }
        self.any_stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        core.closing = true;
        drop(core);
        // Wake everyone waiting on either number so they see the stop.
        self.committed.send_modify(|_| {});
        self.published.send_modify(|_| {});
    }
}

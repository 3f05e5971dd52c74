//! The snapshot replica: snapshots of a large state, taken off the lock.
//!
//! Encoding a snapshot costs in proportion to the state (at 100 000 agents
//! tens of milliseconds), and the kernel must not change meanwhile: taken
//! by the writer, it held the sequencer's lock, and every agent's operation
//! waited. Once the state is large (see [`LARGE_STATE`]) the writer starts
//! a replica instead: a thread with a kernel of its own, recovered from the
//! store (the newest snapshot and the log after it), then fed the records
//! of every batch the writer commits, in order. When a snapshot is due the
//! writer asks the replica for one at that batch's head; the replica
//! encodes its own state there and stores it in a transaction of its own.
//! No lock of the host is held for any of it. The price: a second copy of
//! the state in memory, and each record applied a second time (without
//! re-checking its hash) on the replica's thread.
//!
//! Readers of the committed state (see `views`) ask the replica too while
//! it runs: it copies its own state for them, at the head of the last
//! batch handed over, which is at least what was committed when they
//! asked (the writer hands a batch over before it makes it visible).
//!
//! The writer hands records over without waiting unless the replica is more
//! than [`MAX_QUEUED_BYTES`] behind (it catches up quickly: applying a
//! record costs a fraction of what producing it did). A replica that fails
//! (it cannot recover, a record does not apply, a snapshot cannot be
//! stored) logs why and stops; the writer then snapshots under the lock as
//! before.
//!
//! [`LARGE_STATE`]: super::snapshots::LARGE_STATE

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use toka_kernel::{ChainHead, Kernel};

use crate::runtime::metrics::SnapshotCounts;
use crate::store::event_store::EventStore;

/// The most record bytes handed over and not yet applied before the
/// writer waits for the replica.
const MAX_QUEUED_BYTES: usize = 64 << 20;

/// What the writer hands over, in commit order.
enum Feed {
    /// A committed batch's records, `(seq, bytes)`.
    Records(Vec<(u64, Vec<u8>)>),
    /// Store a snapshot of the state after this record.
    Snapshot(u64),
    /// Copy the state for readers.
    View,
    /// Store a snapshot of the state now, answering `(seq, len)`.
    SnapshotNow(tokio::sync::oneshot::Sender<Result<(u64, usize), String>>),
}

/// A copy of the state for readers: the head it is the state after, the
/// state, and the time the copy took.
pub(super) type ViewCopy = (ChainHead, Arc<toka_kernel::WorldState>, Duration);

/// Where the replica hands its copies of the state for readers; `None`
/// when it stops (the readers waiting for a copy are to look elsewhere).
pub(super) type PublishView = Box<dyn Fn(Option<ViewCopy>) + Send>;

/// The hand-over between the writer and the replica's thread.
#[derive(Default)]
struct Queue {
    inner: Mutex<Queued>,
    /// Signalled when something is queued, taken, or either side stops.
    changed: Condvar,
}

#[derive(Default)]
struct Queued {
    feeds: VecDeque<Feed>,
    bytes: usize,
    /// The writer hands over nothing more: finish the queue and stop.
    closed: bool,
    /// The replica stopped (failed): hand over nothing more.
    stopped: bool,
    /// A [`Feed::View`] is queued: readers asking meanwhile share it.
    view_asked: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running replica, owned by the writer thread. Dropping it lets the
/// replica finish what was handed over (the snapshots asked for included)
/// and waits for its thread: the store is then no longer in its hands.
pub(super) struct Replica {
    queue: Arc<Queue>,
    /// Size of the replica's newest snapshot (0 before the first).
    last_len: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Replica {
    /// Starts a replica of the state in `store`. Call it between two
    /// appends and hand over every batch appended after: the replica
    /// recovers from what is stored, and skips the records it already has.
    pub(super) fn start(
        store: Arc<dyn EventStore>,
        counts: Arc<SnapshotCounts>,
        publish: PublishView,
    ) -> std::io::Result<Replica> {
        let queue = Arc::new(Queue::default());
        let last_len = Arc::new(AtomicU64::new(0));
        let thread = {
            let (queue, last_len) = (Arc::clone(&queue), Arc::clone(&last_len));
            std::thread::Builder::new()
                .name("toka-snapshots".into())
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| {
                        replicate(&*store, &queue, &last_len, &counts, &publish)
                    });
                    let failure = match std::panic::catch_unwind(run) {
                        Ok(result) => result.err(),
                        Err(_) => Some("it panicked".to_owned()),
                    };
                    if let Some(reason) = failure {
                        tracing::warn!(
                            %reason,
                            "the snapshot replica stopped; snapshots are taken under the lock again"
                        );
                    }
                    {
                        let mut queued = queue.lock();
                        queued.stopped = true;
                        queued.feeds.clear();
                        queued.bytes = 0;
                        queue.changed.notify_all();
                    }
                    publish(None);
                })?
        };
        Ok(Replica {
            queue,
            last_len,
            thread: Some(thread),
        })
    }

    /// Hands over a committed batch's records; false when the replica has
    /// stopped. Waits while the replica is [`MAX_QUEUED_BYTES`] behind.
    pub(super) fn feed(&self, records: Vec<(u64, Vec<u8>)>) -> bool {
        let bytes = records.iter().map(|(_, r)| r.len()).sum();
        let mut queued = self.queue.lock();
        while queued.bytes > MAX_QUEUED_BYTES && !queued.stopped {
            queued = self
                .queue
                .changed
                .wait(queued)
                .unwrap_or_else(|e| e.into_inner());
        }
        push(&self.queue, queued, Feed::Records(records), bytes)
    }

    /// Asks for a snapshot after record `head` (handed over already);
    /// false when the replica has stopped.
    pub(super) fn snapshot(&self, head: u64) -> bool {
        push(&self.queue, self.queue.lock(), Feed::Snapshot(head), 0)
    }

    /// A handle for others to ask this replica: readers for copies of
    /// the state, operators for a snapshot.
    pub(super) fn handle(&self) -> Handle {
        Handle(Arc::clone(&self.queue))
    }

    /// Size of the replica's newest snapshot, once it has stored one.
    pub(super) fn last_len(&self) -> Option<usize> {
        match self.last_len.load(Ordering::Relaxed) {
            0 => None,
            len => usize::try_from(len).ok(),
        }
    }
}

/// Queues `feed` (`bytes` of records); false when the replica stopped.
fn push(queue: &Queue, mut queued: MutexGuard<'_, Queued>, feed: Feed, bytes: usize) -> bool {
    if queued.stopped {
        return false;
    }
    queued.feeds.push_back(feed);
    queued.bytes += bytes;
    queue.changed.notify_all();
    true
}

/// Others' way to a running replica (see [`Replica::handle`]).
pub(super) struct Handle(Arc<Queue>);

impl Handle {
    /// Asks for a copy of the state after everything handed over so far
    /// (shared with the readers who asked before it was made); false when
    /// the replica has stopped or is finishing.
    pub(super) fn view(&self) -> bool {
        let mut queued = self.0.lock();
        if queued.closed {
            return false;
        }
        if queued.view_asked && !queued.stopped {
            return true;
        }
        queued.view_asked = true;
        push(&self.0, queued, Feed::View, 0)
    }

    /// Asks for a snapshot of the state after everything handed over so
    /// far; `None` when the replica has stopped or is finishing. The
    /// answer is dropped unsent if the replica stops first.
    pub(super) fn snapshot_now(
        &self,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(u64, usize), String>>> {
        let queued = self.0.lock();
        if queued.closed {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        push(&self.0, queued, Feed::SnapshotNow(tx), 0).then_some(rx)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        {
            let mut queued = self.queue.lock();
            queued.closed = true;
            self.queue.changed.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// The replica's thread: recover, then apply and snapshot as handed over,
/// until the writer closes the queue.
fn replicate(
    store: &dyn EventStore,
    queue: &Queue,
    last_len: &AtomicU64,
    counts: &SnapshotCounts,
    publish: &PublishView,
) -> Result<(), String> {
    let mut kernel = crate::log::recovery::recover_live(store)
        .map_err(|e| format!("recovering the state failed: {e}"))?;
    loop {
        let feed = {
            let mut queued = queue.lock();
            loop {
                if let Some(feed) = queued.feeds.pop_front() {
                    match &feed {
                        Feed::Records(records) => {
                            queued.bytes -= records.iter().map(|(_, r)| r.len()).sum::<usize>();
                            queue.changed.notify_all();
                        }
                        Feed::View => queued.view_asked = false,
                        Feed::Snapshot(_) | Feed::SnapshotNow(_) => {}
                    }
                    break feed;
                }
                if queued.closed {
                    return Ok(());
                }
                queued = queue
                    .changed
                    .wait(queued)
                    .unwrap_or_else(|e| e.into_inner());
            }
        };
        match feed {
            Feed::Records(records) => apply(&mut kernel, &records)?,
            Feed::Snapshot(head) => {
                if kernel.head().seq != head {
                    return Err(format!(
                        "asked for a snapshot after record {head}, the replica is at {}",
                        kernel.head().seq
                    ));
                }
                snapshot(store, &kernel, last_len, counts)?;
            }
            Feed::SnapshotNow(answer) => {
                let taken = snapshot(store, &kernel, last_len, counts);
                let failed = taken.as_ref().err().cloned();
                answer.send(taken.map(|len| (kernel.head().seq, len))).ok();
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            Feed::View => {
                let started = Instant::now();
                let state = Arc::new(kernel.state().clone());
                publish(Some((kernel.head(), state, started.elapsed())));
            }
        }
    }
}

/// Encodes and stores a snapshot of `kernel`'s state; its size.
fn snapshot(
    store: &dyn EventStore,
    kernel: &Kernel,
    last_len: &AtomicU64,
    counts: &SnapshotCounts,
) -> Result<usize, String> {
    let head = kernel.head().seq;
    let bytes = crate::store::snapshot::encode(kernel);
    let len = bytes.len();
    last_len.store(len as u64, Ordering::Relaxed);
    store
        .put_snapshot(head, bytes)
        .map_err(|e| format!("storing the snapshot after record {head} failed: {e}"))?;
    counts.stored(true);
    Ok(len)
}

/// Applies a committed batch's records the replica does not have yet.
fn apply(kernel: &mut Kernel, records: &[(u64, Vec<u8>)]) -> Result<(), String> {
    for (seq, bytes) in records {
        if *seq <= kernel.head().seq {
            continue;
        }
        kernel
            .restore(bytes)
            .map_err(|e| format!("record {seq} does not apply: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, mpsc};
    use std::time::{Duration, Instant};

    use toka_kernel::{
        Command, ComponentSpec, Digest, EntityId, Kernel, Limits, Operation, Timestamp,
    };

    use crate::runtime::metrics::SnapshotCounts;
    use crate::runtime::sequencer::replica::{Replica, ViewCopy};
    use crate::store::event_store::{Batch, EventStore};
    use crate::store::memory::MemoryStore;

    /// The next `n` records of `kernel`'s log, as one batch.
    fn batch(kernel: &mut Kernel, n: u64) -> Batch {
        let mut batch = Batch::default();
        for _ in 0..n {
            let i = kernel.head().seq;
            let component = Box::new(ComponentSpec {
                digest: Digest::of(&i.to_le_bytes()),
                name: format!("component-{i}"),
                size: 1,
            });
            let command = Command::system(
                EntityId::SYSTEM,
                Timestamp(i),
                Operation::InstallComponent { component },
            );
            let applied = kernel.apply(command).unwrap();
            batch.records.push((applied.seq, applied.bytes));
        }
        batch.head = kernel.head();
        batch
    }

    /// A replica over `store`, and what it publishes for readers.
    fn start(store: &Arc<MemoryStore>) -> (Replica, mpsc::Receiver<Option<ViewCopy>>) {
        let (tx, rx) = mpsc::channel();
        let publish = move |copy| tx.send(copy).unwrap_or_default();
        let replica = Replica::start(
            Arc::clone(store) as Arc<dyn EventStore>,
            Arc::new(SnapshotCounts::default()),
            Box::new(publish),
        )
        .unwrap();
        (replica, rx)
    }

    #[test]
    fn a_replica_recovers_what_is_stored_applies_what_it_is_handed_and_snapshots_there() {
        let store = Arc::new(MemoryStore::new(Limits::default()));
        let mut kernel = Kernel::new(Limits::default());
        store.append(batch(&mut kernel, 10)).unwrap();
        let (replica, published) = start(&store);
        // Appended while the replica recovers: it may have read these
        // from the store already, and skips what it has.
        for _ in 0..3 {
            let next = batch(&mut kernel, 5);
            store.append(next.clone()).unwrap();
            assert!(replica.feed(next.records));
        }
        assert!(replica.snapshot(25));
        // A reader's copy: of the state after everything handed over.
        assert!(replica.handle().view());
        let (head, state, _) = published.recv().unwrap().expect("a copy");
        assert_eq!(
            (head, state.digest()),
            (kernel.head(), kernel.state().digest())
        );
        // Dropping it lets it finish: the snapshot asked for is stored.
        drop(replica);
        let stored = store.snapshot(25).unwrap().expect("the replica stored it");
        let snapshot = crate::store::snapshot::decode(&stored).unwrap();
        assert_eq!(snapshot.head, kernel.head());
        assert_eq!(snapshot.state.digest(), kernel.state().digest());
    }

    #[test]
    fn a_replica_handed_a_gap_stops_and_stores_nothing() {
        let store = Arc::new(MemoryStore::new(Limits::default()));
        let mut kernel = Kernel::new(Limits::default());
        store.append(batch(&mut kernel, 10)).unwrap();
        let (replica, published) = start(&store);
        let _never_handed = batch(&mut kernel, 5);
        assert!(replica.feed(batch(&mut kernel, 5).records));
        // Refused from when it stops (it cannot apply record 16 after 10).
        let deadline = Instant::now() + Duration::from_secs(60);
        while replica.snapshot(20) {
            assert!(Instant::now() < deadline, "the replica never stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Readers waiting for a copy are told none is coming.
        assert!(published.recv().unwrap().is_none());
        assert!(!replica.handle().view());
        assert!(replica.handle().snapshot_now().is_none());
        drop(replica);
        assert_eq!(store.snapshot(20).unwrap(), None);
    }
}

//! The sequencer: the one writer of the kernel, and the log writer behind it.
//!
//! Every command passes through [`Sequencer`] under one lock, so the lock's
//! order is the log's total order: stamp the logical time, apply through the
//! kernel, append the sealed record to the pending batch, answer the caller.
//! A guest's `submit` returns right there — applied, not yet durable — with no
//! hand-off to another thread, which keeps the per-operation cost near the
//! kernel's own.
//!
//! A dedicated writer thread takes whatever is pending as one batch, commits
//! it to the [`EventStore`] in one durable transaction, and only then
//! publishes the batch (bus, scheduler) and advances the committed sequence
//! number. While it commits, new operations accumulate into the next batch:
//! group commit emerges from load, and persistence overlaps execution. When
//! the pending batch grows past a bound, submitters wait for the writer.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use toka_kernel::{
    AgentId, AgentSpec, Applied, Authorization, Command, Digest, EntityId, EntityKind, Event,
    Kernel, KernelError, OpKey, Operation,
};
use tokio::sync::watch;

use crate::bus::{Committed, CommittedRecord};
use crate::clock::Clock;
use crate::event_store::{Batch, EventStore};

/// Submitters wait once this many records are pending.
const MAX_PENDING_RECORDS: usize = 16 * 1024;
/// A writer woken for a batch smaller than this lingers first ...
const LINGER_BELOW: usize = 64;
/// ... this long, so a steady trickle of operations commits in groups
/// instead of paying a thread wake-up per operation.
const LINGER: Duration = Duration::from_micros(100);
/// ... or once the pending records hold this many bytes.
const MAX_PENDING_BYTES: usize = 64 << 20;

/// The host stopped accepting operations (the log writer failed, or the host
/// is shutting down); carries the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the host stopped: {0}")]
pub struct Stopped(pub String);

/// What a caller learns when its operation is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    pub(crate) seq: u64,
    /// The agent or task the operation created.
    pub(crate) created: Option<EntityId>,
}

/// An agent's request, before the sequencer resolves what needs the state.
#[derive(Debug)]
pub(crate) enum Request {
    /// A kernel operation as is.
    Op(Operation),
    /// A spawn naming a component by name or digest and the rights to delegate.
    Spawn {
        component: String,
        name: String,
        rights: Vec<String>,
    },
}

#[derive(Clone)]
pub(crate) struct Sequencer {
    shared: Arc<Shared>,
}

struct Shared {
    core: Mutex<Core>,
    /// Wakes the writer when there is something pending (or on close).
    work: Condvar,
    /// The highest durable sequence number.
    committed: watch::Sender<u64>,
    /// The highest sequence number whose batch was also published (bus,
    /// scheduler); trails `committed` by the publishing step.
    published: watch::Sender<u64>,
}

/// What the log writer is doing; submitters wake it only when it is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Waiting for work: the next submitter must notify it.
    Idle,
    /// Gathering a batch on purpose; it wakes by itself.
    Lingering,
    /// Committing; it looks for more work before it sleeps.
    Busy,
}

struct Core {
    writer: Writer,
    kernel: Kernel,
    clock: Arc<dyn Clock>,
    pending: Batch,
    pending_records: Vec<CommittedRecord>,
    pending_bytes: usize,
    stopped: Option<Stopped>,
    closing: bool,
}

/// Called by the writer with each durable batch, before the committed
/// sequence number advances.
pub(crate) type OnCommit = Box<dyn FnMut(Arc<Committed>) + Send>;

impl Sequencer {
    /// A sequencer continuing from `kernel` (already replayed from the log).
    pub(crate) fn new(kernel: Kernel, clock: Arc<dyn Clock>) -> Self {
        let head = kernel.head().seq;
        Self {
            shared: Arc::new(Shared {
                core: Mutex::new(Core {
                    writer: Writer::Busy,
                    kernel,
                    clock,
                    pending: Batch::default(),
                    pending_records: Vec::new(),
                    pending_bytes: 0,
                    stopped: None,
                    closing: false,
                }),
                work: Condvar::new(),
                committed: watch::Sender::new(head),
                published: watch::Sender::new(head),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would leave the kernel mid-apply;
        // apply validates before it mutates, so the state is still whole.
        self.shared.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the kernel (its state includes applied, not yet durable
    /// operations).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Kernel) -> R) -> R {
        f(&self.lock().kernel)
    }

    /// Applies an agent's request, authorized by the token the agent is bound to.
    ///
    /// The outer error means the host stopped; the inner one that the
    /// operation was refused (nothing changed).
    pub(crate) async fn submit_agent(
        &self,
        agent: AgentId,
        cause: Option<OpKey>,
        request: Request,
    ) -> Result<Result<Receipt, KernelError>, Stopped> {
        let mut core = self.lock_with_room().await?;
        let op = match request {
            Request::Op(op) => op,
            Request::Spawn {
                component,
                name,
                rights: _,
            } => {
                let token = match core.kernel.state().agent(agent) {
                    Some(a) => a.token,
                    None => return Ok(Err(unknown_agent(agent))),
                };
                match core.resolve_component(&component) {
                    Ok(component) => Operation::SpawnAgent {
                        spec: AgentSpec {
                            component,
                            name,
                            token,
                        },
                    },
                    Err(e) => return Ok(Err(e)),
                }
            }
        };
        let command = Command {
            origin: agent,
            time: core.stamp(),
            auth: Authorization::Token,
            cause,
            op,
        };
        let result = core.apply(command, None);
        self.release(core);
        Ok(result)
    }

    /// Applies a command the host issues on its own authority (operator
    /// commands, task lifecycle records), with a blob to store beside it.
    pub(crate) async fn submit_system(
        &self,
        origin: EntityId,
        op: Operation,
        blob: Option<(Digest, Arc<[u8]>)>,
    ) -> Result<Result<Receipt, KernelError>, Stopped> {
        let mut core = self.lock_with_room().await?;
        let command = Command::system(origin, core.stamp(), op);
        let result = core.apply(command, blob);
        self.release(core);
        Ok(result)
    }

    /// Locks the core once the pending batch is below its bounds (waiting
    /// for the writer otherwise).
    async fn lock_with_room(&self) -> Result<MutexGuard<'_, Core>, Stopped> {
        loop {
            {
                let core = self.lock();
                core.check_running()?;
                if !core.is_full() {
                    return Ok(core);
                }
            }
            // Subscribe first, then re-check, so a commit in between is not missed.
            let mut rx = self.shared.committed.subscribe();
            if !self.lock().is_full() {
                continue;
            }
            if rx.changed().await.is_err() {
                return Err(Stopped("the log writer is gone".into()));
            }
        }
    }

    /// Unlocks the core, waking the writer if it sleeps with work pending.
    fn release(&self, core: MutexGuard<'_, Core>) {
        let wake = core.writer == Writer::Idle && !core.pending.is_empty();
        drop(core);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Waits until the record at `seq` is durable.
    pub(crate) async fn wait_durable(&self, seq: u64) -> Result<(), Stopped> {
        let mut rx = self.shared.committed.subscribe();
        loop {
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            self.lock().check_running()?;
            if rx.changed().await.is_err() {
                return Err(Stopped("the log writer is gone".into()));
            }
        }
    }

    /// The highest durable sequence number.
    pub(crate) fn committed(&self) -> u64 {
        *self.shared.committed.borrow()
    }

    /// A receiver of the highest published sequence number.
    pub(crate) fn published(&self) -> watch::Receiver<u64> {
        self.shared.published.subscribe()
    }

    /// Why the host stopped, if it did.
    pub(crate) fn stopped(&self) -> Option<Stopped> {
        self.lock().stopped.clone()
    }

    /// Stops accepting operations; the writer commits what is pending and exits.
    pub(crate) fn close(&self) {
        let mut core = self.lock();
        core.closing = true;
        if core.stopped.is_none() {
            core.stopped = Some(Stopped("the host is shutting down".into()));
        }
        drop(core);
        self.shared.work.notify_all();
    }

    /// Starts the writer thread over `store`.
    pub(crate) fn start_writer(
        &self,
        store: Arc<dyn EventStore>,
        mut on_commit: OnCommit,
    ) -> std::io::Result<JoinHandle<()>> {
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name("toka-log-writer".into())
            .spawn(move || {
                while let Some((batch, records)) = shared.next_batch() {
                    let last = batch.head.seq;
                    if let Err(e) = store.append(batch) {
                        tracing::error!(error = %e, "committing the log failed; the host stops");
                        shared.fail(Stopped(format!("committing the log failed: {e}")));
                        return;
                    }
                    // Durable first, then visible: actors woken below already
                    // see the new committed number.
                    shared.committed.send_replace(last);
                    if !records.is_empty() {
                        on_commit(Arc::new(Committed { records }));
                    }
                    shared.published.send_replace(last);
                }
            })
    }
}

impl Shared {
    /// Blocks until there is a batch to write; `None` once closing and drained.
    fn next_batch(&self) -> Option<(Batch, Vec<CommittedRecord>)> {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        let mut lingered = false;
        loop {
            if !core.pending.is_empty() {
                if core.pending_records.len() < LINGER_BELOW && !core.closing && !lingered {
                    lingered = true;
                    core.writer = Writer::Lingering;
                    core = self
                        .work
                        .wait_timeout(core, LINGER)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
                core.writer = Writer::Busy;
                core.pending_bytes = 0;
                let batch = std::mem::take(&mut core.pending);
                let records = std::mem::take(&mut core.pending_records);
                return Some((batch, records));
            }
            if core.closing {
                return None;
            }
            core.writer = Writer::Idle;
            core = self.work.wait(core).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn fail(&self, reason: Stopped) {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        core.stopped = Some(reason);
        drop(core);
        // Wake everyone waiting on either number so they see the stop.
        self.committed.send_modify(|_| {});
        self.published.send_modify(|_| {});
    }
}

impl Core {
    fn check_running(&self) -> Result<(), Stopped> {
        match &self.stopped {
            Some(stopped) => Err(stopped.clone()),
            None => Ok(()),
        }
    }

    fn is_full(&self) -> bool {
        self.pending_records.len() >= MAX_PENDING_RECORDS || self.pending_bytes >= MAX_PENDING_BYTES
    }

    /// The next logical time: the clock, but never before the last stamp.
    fn stamp(&self) -> toka_kernel::Timestamp {
        self.clock.now().max(self.kernel.state().time())
    }

    /// A component by name, or by its 64-hex-digit digest.
    fn resolve_component(&self, component: &str) -> Result<Digest, KernelError> {
        let state = self.kernel.state();
        if let Ok(digest) = component.parse::<Digest>()
            && state.component(&digest).is_some()
        {
            return Ok(digest);
        }
        state
            .component_named(component)
            .map(|c| c.digest)
            .ok_or_else(|| KernelError::UnknownEntity {
                kind: EntityKind::Component,
                id: format!("`{component}` (no component of that name is installed)"),
            })
    }

    fn apply(
        &mut self,
        command: Command,
        blob: Option<(Digest, Arc<[u8]>)>,
    ) -> Result<Receipt, KernelError> {
        let Applied {
            seq,
            origin,
            time,
            bytes,
            events,
            ..
        } = self.kernel.apply(command)?;
        let receipt = Receipt {
            seq,
            created: created(&events),
        };
        self.pending_bytes += bytes.len() + blob.as_ref().map_or(0, |(_, b)| b.len());
        self.pending.records.push((seq, bytes));
        self.pending.blobs.extend(blob);
        self.pending.head = self.kernel.head();
        self.pending_records.push(CommittedRecord {
            seq,
            origin,
            time,
            events,
        });
        Ok(receipt)
    }
}

/// The entity a command created, for the receipt.
fn created(events: &[Event]) -> Option<EntityId> {
    events.iter().find_map(|e| match e {
        Event::AgentSpawned { agent, .. } => Some(*agent),
        Event::TaskScheduled { task, .. } => Some(*task),
        _ => None,
    })
}

fn unknown_agent(agent: AgentId) -> KernelError {
    KernelError::UnknownEntity {
        kind: EntityKind::Agent,
        id: agent.to_string(),
    }
}

//! The sequencer: the one writer of the kernel, and the log writer behind it.
//!
//! Every command passes through [`Sequencer`] under one lock, so the lock's
//! order is the log's total order: stamp the logical time, authorize the
//! operation against the agent's token (in that same order, so a revocation
//! applied before an operation denies it), apply through the kernel, append
//! the sealed record to the pending batch, answer the caller. A guest's
//! `submit` returns right there — applied, not yet durable — with no hand-off
//! to another thread, which keeps the per-operation cost near the kernel's.
//!
//! A dedicated writer thread takes whatever is pending as one batch, commits
//! it to the [`EventStore`] in one durable transaction, and only then
//! publishes the batch (bus, scheduler) and advances the committed sequence
//! number. While it commits, new operations accumulate into the next batch:
//! group commit emerges from load, and persistence overlaps execution. When
//! the pending batch grows past a bound, submitters wait for the writer.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use toka_kernel::{
    AgentId, AgentSpec, Applied, Authorization, Command, Denial, Digest, EntityId, EntityKind,
    Event, Kernel, KernelError, Limit, OpKey, OpKind, Operation, TaskId, Timestamp,
};
use tokio::sync::watch;

use crate::budget::{Budget, BudgetError};
use crate::bus::{Committed, CommittedRecord};
use crate::clock::Clock;
use crate::event_store::{Batch, EventStore};
use crate::gate::{Check, Gate, check_for};
use crate::host::clip;
use crate::rights::{Right, RightError};
use crate::token::Token;

/// Submitters wait once this many records are pending ...
const MAX_PENDING_RECORDS: usize = 16 * 1024;
/// ... or once the pending records hold this many bytes.
const MAX_PENDING_BYTES: usize = 64 << 20;
/// A writer woken for a batch smaller than this lingers first ...
const LINGER_BELOW: usize = 64;
/// ... this long, so a steady trickle of operations commits in groups
/// instead of paying a thread wake-up per operation.
const LINGER: Duration = Duration::from_micros(100);
/// Denials recorded per agent per minute of logical time; the rest are only
/// returned to the agent, so a hostile agent cannot flood the log.
const DENIALS_PER_MINUTE: u32 = 20;

/// The host stopped accepting operations (the log writer failed, or the host
/// is shutting down); carries the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the host stopped: {0}")]
pub struct Stopped(pub String);

/// Why an agent's call must end its task rather than return an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Halt {
    /// The host stopped.
    Stopped(Stopped),
    /// A re-run task submitted another operation than the log holds for
    /// that position; the message names both.
    Diverged(String),
}

impl From<Stopped> for Halt {
    fn from(s: Stopped) -> Self {
        Halt::Stopped(s)
    }
}

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
    /// A spawn, as the agent asked for it.
    Spawn(Spawn),
}

/// A spawn naming a component by name or digest, the rights to delegate and
/// the child's budgets, as text.
#[derive(Debug)]
pub(crate) struct Spawn {
    pub(crate) component: String,
    pub(crate) name: String,
    pub(crate) rights: Vec<String>,
    pub(crate) budgets: Vec<String>,
}

/// What a system command brings along into the store.
#[derive(Debug, Default)]
pub(crate) struct Attachments {
    /// Component bytes, by digest.
    pub(crate) blob: Option<(Digest, Arc<[u8]>)>,
    /// A token the command binds to a new agent.
    pub(crate) token: Option<Token>,
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
    gate: Gate,
    /// Where re-run tasks find the operations they already applied.
    store: Arc<dyn EventStore>,
    /// Write a snapshot with the batch that passes this many records since
    /// the last one (0: never).
    snapshot_every: u64,
    last_snapshot: u64,
    /// See `HostConfig::skip_gate_for_benchmarks`.
    skip_gate: bool,
    clock: Arc<dyn Clock>,
    pending: Batch,
    pending_records: Vec<CommittedRecord>,
    pending_bytes: usize,
    /// Per agent: the minute of logical time and the denials recorded in it.
    denials: HashMap<AgentId, (u64, u32)>,
    stopped: Option<Stopped>,
    closing: bool,
}

/// Called by the writer with each durable batch, before the committed
/// sequence number advances.
pub(crate) type OnCommit = Box<dyn FnMut(Arc<Committed>) + Send>;

impl Sequencer {
    /// A sequencer continuing from `kernel` (already replayed from the log).
    pub(crate) fn new(
        kernel: Kernel,
        gate: Gate,
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        options: Options,
    ) -> Self {
        let head = kernel.head().seq;
        Self {
            shared: Arc::new(Shared {
                core: Mutex::new(Core {
                    writer: Writer::Busy,
                    kernel,
                    gate,
                    store,
                    snapshot_every: options.snapshot_every,
                    last_snapshot: options.last_snapshot,
                    skip_gate: options.skip_gate,
                    clock,
                    pending: Batch::default(),
                    pending_records: Vec::new(),
                    pending_bytes: 0,
                    denials: HashMap::new(),
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

    /// The logical time a command submitted now would get.
    pub(crate) fn now(&self) -> Timestamp {
        self.lock().stamp()
    }

    /// The token with this digest, verified.
    pub(crate) fn token(&self, digest: &Digest) -> Result<Token, String> {
        self.lock().gate.token(digest).cloned()
    }

    /// Authorizes an effect outside the log for `agent` — opening a host
    /// directory, an HTTP request — against its token now (revocation and
    /// expiry included). With `record`, a denial is recorded as for an
    /// operation (rate-limited).
    ///
    /// # Errors
    ///
    /// Why not, naming the missing right.
    pub(crate) fn authorize_effect(
        &self,
        agent: AgentId,
        check: &Check,
        record: bool,
    ) -> Result<(), String> {
        let mut core = self.lock();
        let token = core
            .kernel
            .state()
            .agent(agent)
            .map(|a| a.token)
            .ok_or_else(|| format!("agent {agent} is gone"))?;
        let time = core.stamp();
        let decision = {
            let core = &mut *core;
            core.gate
                .authorize(token, agent, check, time, core.kernel.state())
        };
        if let Err(reason) = &decision
            && record
        {
            core.record_denial(agent, check, false, reason, time);
        }
        self.release(core);
        decision
    }

    /// Authorizes and applies an agent's request, or, for an operation a
    /// re-run task already applied, answers it from the log.
    ///
    /// The outer error ends the agent's task; the inner one is a refusal the
    /// agent sees (nothing changed, a denial may be recorded).
    pub(crate) async fn submit_agent(
        &self,
        agent: AgentId,
        cause: Option<OpKey>,
        request: Request,
    ) -> Result<Result<Receipt, KernelError>, Halt> {
        let mut core = self.lock_with_room().await?;
        if let Some(key) = cause
            && let Some(entry) = core.journal_entry(key)
        {
            let answer = core.replay(key, entry, &request);
            drop(core);
            return answer.map(Ok).map_err(Halt::Diverged);
        }
        let result = core.submit_agent(agent, cause, request);
        self.release(core);
        Ok(result)
    }

    /// The agent's state value at `key`, as the task at `position` saw it
    /// (before its operation `position.index`, if it already applied that).
    pub(crate) fn state_value(
        &self,
        agent: AgentId,
        position: Option<OpKey>,
        key: &str,
    ) -> Option<Vec<u8>> {
        self.read(|kernel| {
            let state = kernel.state();
            if let Some(prior) = priors(state, position).find(|p| p.key == key) {
                return prior.value.clone();
            }
            state.agent(agent)?.state.get(key).cloned()
        })
    }

    /// The agent's state keys, as the task at `position` saw them.
    pub(crate) fn state_keys(&self, agent: AgentId, position: Option<OpKey>) -> Vec<String> {
        self.read(|kernel| {
            let state = kernel.state();
            let mut keys: std::collections::BTreeSet<String> = state
                .agent(agent)
                .map(|a| a.state.keys().cloned().collect())
                .unwrap_or_default();
            let mut seen = std::collections::BTreeSet::new();
            for prior in priors(state, position) {
                if seen.insert(prior.key.clone()) {
                    match prior.value {
                        Some(_) => keys.insert(prior.key.clone()),
                        None => keys.remove(&prior.key),
                    };
                }
            }
            keys.into_iter().collect()
        })
    }

    /// The start of the running task `task` (for its clocks).
    pub(crate) fn run_started_at(&self, task: TaskId) -> Option<Timestamp> {
        self.read(|k| k.state().task(task)?.status.run().map(|r| r.started_at))
    }

    /// Writes a snapshot of the state at the log's head, once everything
    /// applied is durable; returns its sequence number.
    pub(crate) async fn snapshot_now(&self) -> Result<u64, Halt> {
        loop {
            let head = self.read(|k| k.head().seq);
            self.wait_durable(head).await?;
            let mut core = self.lock();
            core.check_running()?;
            if !core.pending.is_empty() || core.kernel.head().seq != head {
                continue;
            }
            let bytes = crate::snapshot::encode(&core.kernel);
            core.last_snapshot = head;
            let store = Arc::clone(&core.store);
            drop(core);
            store
                .put_snapshot(head, bytes)
                .map_err(|e| Halt::Stopped(Stopped(format!("writing the snapshot failed: {e}"))))?;
            return Ok(head);
        }
    }

    /// Applies a command the host issues on its own authority (operator
    /// commands, task lifecycle records), storing `attachments` with it.
    pub(crate) async fn submit_system(
        &self,
        origin: EntityId,
        op: Operation,
        attachments: Attachments,
    ) -> Result<Result<Receipt, KernelError>, Stopped> {
        let mut core = self.lock_with_room().await?;
        let command = Command::system(origin, core.stamp(), op);
        if let Some(token) = &attachments.token {
            core.gate.admit(token.clone());
        }
        let result = core.apply(command, attachments);
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
        self.shared.published.send_modify(|_| {});
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
                let mut batch = std::mem::take(&mut core.pending);
                let records = std::mem::take(&mut core.pending_records);
                // Everything applied is in this batch, so the kernel's state
                // is the state at its head: the moment for a snapshot.
                let head = batch.head.seq;
                if core.snapshot_every > 0 && head >= core.last_snapshot + core.snapshot_every {
                    batch.snapshot = Some((head, crate::snapshot::encode(&core.kernel)));
                    core.last_snapshot = head;
                }
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

/// What a sequencer is configured with besides its parts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    pub(crate) snapshot_every: u64,
    /// Sequence number of the newest snapshot at start.
    pub(crate) last_snapshot: u64,
    pub(crate) skip_gate: bool,
}

/// The priors of a running task's operations from `position` on: how the
/// state it touched looked before them.
fn priors(
    state: &toka_kernel::WorldState,
    position: Option<OpKey>,
) -> impl Iterator<Item = &toka_kernel::Prior> {
    position
        .and_then(|p| {
            let run = state.task(p.task)?.status.run()?;
            Some(run.journal.iter().skip(p.index as usize))
        })
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.prior.as_ref())
}

impl Core {
    /// The journal entry for `key`, when its task already applied that operation.
    fn journal_entry(&self, key: OpKey) -> Option<toka_kernel::JournalEntry> {
        let run = self.kernel.state().task(key.task)?.status.run()?;
        run.journal.get(key.index as usize).cloned()
    }

    /// Answers a re-run's operation from the log, if it is the one recorded.
    fn replay(
        &self,
        key: OpKey,
        entry: toka_kernel::JournalEntry,
        request: &Request,
    ) -> Result<Receipt, String> {
        let recorded = self
            .store
            .record(entry.seq)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("record {} is missing from the store", entry.seq))
            .and_then(|bytes| toka_kernel::Record::decode(&bytes).map_err(|e| e.to_string()))
            .map_err(|e| {
                format!(
                    "cannot read operation {} of task {}: {e}",
                    key.index, key.task
                )
            })?;
        let same = match (request, &recorded.command.op) {
            (Request::Op(op), recorded) => op == recorded,
            (
                Request::Spawn(Spawn {
                    component,
                    name,
                    rights,
                    budgets: _,
                }),
                Operation::SpawnAgent { spec },
            ) => {
                let names_it = *component == spec.component.to_string()
                    || self
                        .kernel
                        .state()
                        .component(&spec.component)
                        .is_some_and(|c| c.name == *component);
                let normalized: Result<Vec<String>, _> = rights
                    .iter()
                    .map(|r| r.parse::<Right>().map(|r| r.to_string()))
                    .collect();
                names_it && *name == spec.name && normalized.is_ok_and(|r| r == spec.rights)
            }
            _ => false,
        };
        if !same {
            return Err(format!(
                "the re-run diverged at operation {} of task {}: the log has {}, the re-run submitted {}",
                key.index,
                key.task,
                describe(&recorded.command.op),
                describe_request(request)
            ));
        }
        Ok(Receipt {
            seq: entry.seq,
            created: entry.created,
        })
    }

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
    fn stamp(&self) -> Timestamp {
        self.clock.now().max(self.kernel.state().time())
    }

    fn submit_agent(
        &mut self,
        agent: AgentId,
        cause: Option<OpKey>,
        request: Request,
    ) -> Result<Receipt, KernelError> {
        let token = self
            .kernel
            .state()
            .agent(agent)
            .map(|a| a.token)
            .ok_or_else(|| unknown(EntityKind::Agent, agent))?;
        let time = self.stamp();
        let mut attachments = Attachments::default();
        let op = match request {
            Request::Op(op) => {
                if !self.skip_gate
                    && let Some(check) = check_for(&op, agent, self.kernel.state())
                {
                    self.authorize(agent, token, op.kind(), &check, false, time)?;
                }
                op
            }
            Request::Spawn(spawn) => {
                let (op, child) = self.prepare_spawn(agent, token, time, spawn)?;
                attachments.token = Some(child);
                op
            }
        };
        let command = Command {
            origin: agent,
            time,
            auth: Authorization::Token,
            cause,
            op,
        };
        self.apply(command, attachments)
    }

    /// Authorizes a spawn and the delegation of each right, and makes the
    /// child's token: the parent's restricted to exactly those rights.
    fn prepare_spawn(
        &mut self,
        parent: AgentId,
        token: Digest,
        time: Timestamp,
        spawn: Spawn,
    ) -> Result<(Operation, Token), KernelError> {
        let Spawn {
            component,
            name,
            rights,
            budgets,
        } = spawn;
        const KIND: OpKind = OpKind::SpawnAgent;
        let invalid = |message: String| KernelError::InvalidOperation {
            operation: KIND,
            message,
        };
        let digest = self.resolve_component(&component)?;
        let rights: Vec<Right> = rights
            .iter()
            .map(|r| r.parse().map_err(|e: RightError| invalid(e.to_string())))
            .collect::<Result<_, _>>()?;
        let budgets: Vec<Budget> = budgets
            .iter()
            .map(|b| b.parse().map_err(|e: BudgetError| invalid(e.to_string())))
            .collect::<Result<_, _>>()?;
        let mut op = Operation::SpawnAgent {
            spec: AgentSpec {
                component: digest,
                name,
                token: Digest::ZERO,
                rights: rights.iter().map(Right::to_string).collect(),
            },
        };
        if let Some(check) = check_for(&op, parent, self.kernel.state()) {
            self.authorize(parent, token, KIND, &check, false, time)?;
        }
        for right in &rights {
            let check = Check::literal(right.op().name(), right.target());
            self.authorize(parent, token, KIND, &check, true, time)?;
        }
        let child = self
            .gate
            .token(&token)
            .and_then(|parent| {
                parent
                    .attenuate(&rights, &budgets)
                    .map_err(|e| e.to_string())
            })
            .map_err(|message| invalid(format!("could not make the child's token: {message}")))?;
        let max = self.gate.max_token();
        if child.bytes().len() > max {
            return Err(KernelError::LimitExceeded {
                limit: Limit::Token,
                max: max as u64,
                actual: child.bytes().len() as u64,
            });
        }
        if let Operation::SpawnAgent { spec } = &mut op {
            spec.token = child.digest();
        }
        self.gate.admit(child.clone());
        Ok((op, child))
    }

    /// Asks the gate; on a denial records it (rate-limited) and returns the
    /// error for the agent.
    fn authorize(
        &mut self,
        agent: AgentId,
        token: Digest,
        kind: OpKind,
        check: &Check,
        delegation: bool,
        time: Timestamp,
    ) -> Result<(), KernelError> {
        let Err(reason) = self
            .gate
            .authorize(token, agent, check, time, self.kernel.state())
        else {
            return Ok(());
        };
        let reason = if delegation {
            let right = match check.primary() {
                "" => check.operation.to_owned(),
                target => format!("{} {target}", check.operation),
            };
            format!("cannot delegate `{right}`: {reason}")
        } else {
            reason
        };
        self.record_denial(agent, check, delegation, &reason, time);
        Err(KernelError::CapabilityDenied {
            origin: agent,
            operation: kind,
            reason,
        })
    }

    fn record_denial(
        &mut self,
        agent: AgentId,
        check: &Check,
        delegation: bool,
        reason: &str,
        time: Timestamp,
    ) {
        let minute = time.0 / 60_000;
        let count = self.denials.entry(agent).or_insert((minute, 0));
        if count.0 != minute {
            *count = (minute, 0);
        }
        count.1 += 1;
        if count.1 > DENIALS_PER_MINUTE {
            if count.1 == DENIALS_PER_MINUTE + 1 {
                tracing::warn!(agent = %agent.short(), "more denials this minute; they are not recorded");
            }
            return;
        }
        let max = self.kernel.limits().max_reason as usize;
        let denial = Denial {
            operation: check.operation.to_owned(),
            targets: check.targets.clone(),
            delegation,
            reason: clip(reason, max),
        };
        let command = Command::system(agent, time, Operation::RecordDenial { denial });
        if let Err(e) = self.apply(command, Attachments::default()) {
            tracing::warn!(agent = %agent.short(), error = %e, "could not record a denial");
        }
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
            .ok_or_else(|| {
                unknown(
                    EntityKind::Component,
                    format!("`{component}` (no component of that name is installed)"),
                )
            })
    }

    fn apply(
        &mut self,
        command: Command,
        attachments: Attachments,
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
        self.pending_bytes += bytes.len();
        self.pending.records.push((seq, bytes));
        if let Some((digest, blob)) = attachments.blob {
            self.pending_bytes += blob.len();
            self.pending.blobs.push((digest, blob));
        }
        if let Some(token) = attachments.token {
            self.pending
                .tokens
                .push((token.digest(), Arc::clone(token.bytes())));
        }
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

fn unknown(kind: EntityKind, id: impl std::fmt::Display) -> KernelError {
    KernelError::UnknownEntity {
        kind,
        id: id.to_string(),
    }
}

/// An operation, briefly, for divergence messages.
fn describe(op: &Operation) -> String {
    clip(&format!("{op:?}"), 300)
}

fn describe_request(request: &Request) -> String {
    match request {
        Request::Op(op) => describe(op),
        Request::Spawn(spawn) => clip(&format!("{spawn:?}"), 300),
    }
}

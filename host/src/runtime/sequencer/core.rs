//! The core of the sequencer: the lock, the kernel and the gate behind it,
//! the pending batch, and the paths an operation takes through them.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use toka_kernel::{
    AgentId, Applied, Authorization, ChainHead, Command, Digest, EntityId, EntityKind, Event,
    IdHash, Kernel, KernelError, OpKey, Operation, Quota, Refusal, RefusalKind, TaskId, Timestamp,
};
use tokio::sync::watch;

use crate::capability::gate::{Asked, Gate, Undecided};
use crate::capability::policy::{Check, Denied, check_for};
use crate::capability::token::Token;
use crate::log::committed::CommittedRecord;
use crate::runtime::clock::Clock;
use crate::store::event_store::{Batch, EventStore};

use super::awaited::{AwaitingEnds, EndsAwaited};
use super::snapshots::SnapshotPolicy;
use super::state_budget::{StateBudget, StateRefusal};
use super::views::ViewBudget;

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

/// What an agent learns when its operation is refused: nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The category.
    pub(crate) kind: RefusalKind,
    /// For a person, without the category.
    pub(crate) message: String,
    /// The quota it ran into, if that was the reason: the task ends.
    pub(crate) quota: Option<Quota>,
}

impl From<StateRefusal> for Refused {
    /// The refusal as an agent is told it: without what all trees hold
    /// together when the host's budget was the bound (what other tenants
    /// hold is not the agent's to learn; its own tree's figures are).
    fn from(e: StateRefusal) -> Self {
        let message = match e {
            StateRefusal::Host { growth, .. } => format!(
                "the host's memory for agent state is spent: {} more does not fit",
                crate::text::Size(growth)
            ),
            other => other.to_string(),
        };
        Refused {
            kind: RefusalKind::LimitExceeded,
            message,
            quota: None,
        }
    }
}

impl From<KernelError> for Refused {
    fn from(e: KernelError) -> Self {
        let (kind, message) = match &e {
            KernelError::CapabilityDenied {
                operation, reason, ..
            } => (
                RefusalKind::CapabilityDenied,
                format!("{operation}: {reason}"),
            ),
            KernelError::UnknownEntity { kind, id } => {
                (RefusalKind::UnknownEntity, format!("no {kind} {id}"))
            }
            KernelError::LimitExceeded { limit, max, actual } => (
                RefusalKind::LimitExceeded,
                format!("{limit} would be {actual}, the limit is {max}"),
            ),
            KernelError::UnsupportedOperation { family } => (
                RefusalKind::Unsupported,
                format!("no handler is registered for extension family `{family}`"),
            ),
            KernelError::InvalidOperation { operation, message } => (
                RefusalKind::InvalidOperation,
                format!("{operation}: {message}"),
            ),
            KernelError::QuotaExceeded { .. } => (RefusalKind::QuotaExceeded, e.to_string()),
            other => (RefusalKind::Other, other.to_string()),
        };
        let quota = match e {
            KernelError::QuotaExceeded { quota, .. } => Some(quota),
            _ => None,
        };
        Refused {
            kind,
            message,
            quota,
        }
    }
}

/// An agent's request, before the sequencer resolves what needs the state.
#[derive(Debug)]
pub(crate) enum Request {
    /// A kernel operation as is.
    Op(Operation),
    /// A spawn, as the agent asked for it.
    Spawn(Spawn),
}

/// An agent's request handed back by [`Core::submit_agent`], nothing done:
/// the gate has no decision for its check yet.
pub(super) struct Deferred {
    /// What deciding the check needs, away from the lock.
    pub(super) undecided: Box<Undecided>,
    /// The request, to submit again once the decision is kept.
    pub(super) request: Request,
}

/// Why [`Core::try_submit_agent`] applied nothing.
enum Unsubmitted {
    /// Refused, with what was asked.
    Refused(Refused, RefusedAsk),
    /// Handed back to decide its check away from the lock.
    Deferred(Box<Deferred>),
}

/// What a refused request was, for the digest a re-run of its task meets
/// the refusal by (see [`request_digest`]).
enum RefusedAsk {
    /// Its digest: the kernel took the operation and encoded it, or it is
    /// a spawn (a few names to hash).
    Digest(Digest),
    /// The request itself, to hash away from the lock: an observation may
    /// be 1 MiB, and a refusal costs the agent nothing but its pace.
    Request(Box<Request>),
}

/// What [`Core::submit_agent`] answered.
pub(super) struct Answered {
    /// The receipt, or the refusal.
    pub(super) result: Result<Receipt, Refused>,
    /// A refusal of a running task's request, to keep for its re-run once
    /// the request is hashed away from the lock (see
    /// [`Core::remember_refusal`]).
    pub(super) remember: Option<(TaskId, Box<Request>)>,
}

/// What a system command brings along into the store.
#[derive(Debug, Default)]
pub(crate) struct Attachments {
    /// Component bytes, by digest.
    pub(crate) blob: Option<(Digest, Arc<[u8]>)>,
    /// A token the command binds to a new agent.
    pub(crate) token: Option<Token>,
    /// The operator's token that made the command, when the store may not
    /// have it yet.
    pub(crate) operator: Option<Token>,
}

/// Who a command from outside the agents comes from.
#[derive(Debug, Clone)]
pub(crate) enum By {
    /// The host's own caller (the CLI, a program embedding the library).
    Host,
    /// An API client with this operator token: the sequencer checks it
    /// for the level the operation needs, in order with everything else,
    /// and the record names it.
    Operator(Box<Token>),
}

/// Why an operator's command was not applied (nothing was).
#[derive(Debug)]
pub(crate) enum Declined {
    /// The token does not allow it (now: revoked, expired, too low a level).
    Denied(Denied),
    /// The kernel refused it.
    Kernel(KernelError),
    /// It would hold more of the state budget than an API client may.
    StateBudget(StateRefusal),
    /// It would store bytes past the disk's reserve (the reason).
    DiskReserve(String),
}

impl From<KernelError> for Declined {
    fn from(e: KernelError) -> Self {
        Declined::Kernel(e)
    }
}

/// Operator tokens the core remembers having attached to a batch; past
/// this many it forgets them and attaches again (the store keeps one copy).
const STORED_OPERATORS_KEPT: usize = 4096;

/// Submitters wait once this many records are pending ...
pub(crate) const MAX_PENDING_RECORDS: usize = 16 * 1024;
/// ... or once the pending batch holds this many bytes.
pub(crate) const MAX_PENDING_BYTES: usize = 16 << 20;

/// What the log writer is doing; submitters wake it only when it is idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Waiting for work: the next submitter must notify it.
    Idle,
    /// Gathering a batch on purpose; it wakes by itself.
    Lingering,
    /// Committing; it looks for more work before it sleeps.
    Busy,
}

/// Why a call into an agent's instance is no longer wanted
/// ([`Sequencer::still_wanted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unwanted {
    /// The host is stopping, the agent was terminated, or the task ended
    /// from outside: what ended it is recorded already (or the task runs
    /// again when the host opens).
    Abandoned,
    /// The agent's token no longer stands (the reason: revoked or
    /// expired): the task is to fail.
    Withdrawn(String),
}

/// A spawn naming a component by name or digest, the rights to delegate and
/// the child's budgets, as text.
pub(crate) struct Spawn {
    pub(crate) component: String,
    pub(crate) name: String,
    pub(crate) rights: Vec<String>,
    pub(crate) budgets: Vec<String>,
    /// The child's token, made outside the sequencer's lock from the
    /// parent's token with this digest (used only if the parent still
    /// holds that token when the spawn is applied).
    pub(crate) child: Option<Box<(Digest, Token)>>,
}

impl Spawn {
    /// The child's token: `parent` restricted to exactly the rights and
    /// budgets this spawn names.
    ///
    /// # Errors
    ///
    /// When a right or budget does not parse or biscuit refuses the block.
    fn child_token(&self, parent: &Token) -> Result<Token, String> {
        use crate::capability::budget::{Budget, BudgetError};
        use crate::capability::rights::{Right, RightError};
        let rights: Vec<Right> = self
            .rights
            .iter()
            .map(|r| r.parse().map_err(|e: RightError| e.to_string()))
            .collect::<Result<_, _>>()?;
        let budgets: Vec<Budget> = self
            .budgets
            .iter()
            .map(|b| b.parse().map_err(|e: BudgetError| e.to_string()))
            .collect::<Result<_, _>>()?;
        parent
            .attenuate(&rights, &budgets)
            .map_err(|e| e.to_string())
    }
}

impl std::fmt::Debug for Spawn {
    /// What the agent asked for (the token made for it is not part of it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawn")
            .field("component", &self.component)
            .field("name", &self.name)
            .field("rights", &self.rights)
            .field("budgets", &self.budgets)
            .finish_non_exhaustive()
    }
}

/// The denials recorded per agent in the current minute of logical time
/// (only agents denied in it are held: the map starts over each minute).
#[derive(Debug, Default)]
pub(crate) struct Denials {
    pub(super) minute: u64,
    pub(super) counts: HashMap<AgentId, u32, IdHash>,
}

/// The digest a refusal is recorded under: what the agent asked for. For
/// an operation, the BLAKE3 of its canonical encoding (what the kernel
/// keeps of a rejected one: [`toka_kernel::Kernel::rejected_operation`]),
/// so an applied operation never pays for it.
pub(crate) fn request_digest(request: &Request) -> Digest {
    match request {
        Request::Op(op) => op_digest(op),
        Request::Spawn(spawn) => spawn_digest(spawn),
    }
}

/// See [`request_digest`].
pub(crate) fn op_digest(op: &Operation) -> Digest {
    Digest::of(
        &postcard::to_allocvec(op).expect("operations are plain data: postcard encodes them"),
    )
}

/// See [`request_digest`].
pub(crate) fn spawn_digest(s: &Spawn) -> Digest {
    let bytes = postcard::to_allocvec(&(&s.component, &s.name, &s.rights, &s.budgets))
        .expect("strings: postcard encodes them");
    Digest::of(&bytes)
}

#[derive(Clone)]
pub(crate) struct Sequencer {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) core: Mutex<Core>,
    /// The state as of a committed batch, `(its head's seq, state)`, for
    /// readers outside the host (see [`Sequencer::committed_state`]).
    pub(super) view: Mutex<(ChainHead, Arc<toka_kernel::WorldState>)>,
    /// A reader waits for a newer view: the writer captures the state with
    /// its next batch.
    pub(super) want_view: std::sync::atomic::AtomicBool,
    /// When the next view may be copied (see [`ViewBudget`]).
    pub(super) view_budget: Mutex<ViewBudget>,
    /// The snapshot replica, while one runs: it copies views and takes
    /// snapshots asked for off the lock.
    pub(super) replica: Mutex<Option<super::replica::Handle>>,
    /// [`Core::ends_awaited`], kept without the lock.
    pub(super) ends_awaited: Arc<EndsAwaited>,
    /// Wakes the readers waiting for a copy from the replica.
    pub(super) replica_copied: tokio::sync::Notify,
    /// Set, under the lock, when `Core::stopped` is: whether the host
    /// stopped, read without the lock (actors ask before every task).
    pub(super) any_stop: std::sync::atomic::AtomicBool,
    /// Wakes the writer when there is something pending (or on close).
    pub(super) work: Condvar,
    /// The highest durable sequence number.
    pub(super) committed: watch::Sender<u64>,
    /// The highest sequence number whose batch was also published (bus,
    /// scheduler); trails `committed` by the publishing step.
    pub(super) published: watch::Sender<u64>,
    /// Commit counters, updated by the writer.
    pub(super) metrics: crate::runtime::metrics::Metrics,
    /// The disk's free space, checked by the writer after commits.
    pub(super) disk: Arc<super::disk::DiskWatch>,
    /// Held by the writer while it appends a batch; held instead to change
    /// the store under the writer (an archive's cut).
    pub(super) appending: Mutex<()>,
}

impl Shared {
    /// How long until a view may be copied.
    pub(super) fn view_wait(&self) -> std::time::Duration {
        self.view_budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wait(std::time::Instant::now())
    }

    /// Sets (or clears) the replica readers and operators ask.
    pub(super) fn set_replica(&self, replica: Option<super::replica::Handle>) {
        *self.replica.lock().unwrap_or_else(|e| e.into_inner()) = replica;
    }

    /// The replica, if one runs.
    fn replica(&self) -> MutexGuard<'_, Option<super::replica::Handle>> {
        self.replica.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a view the replica copied (`None`: it stopped), charging the
    /// copy's time to the view budget, and wakes the readers waiting.
    pub(super) fn publish_view(&self, copy: Option<super::replica::ViewCopy>) {
        if let Some((head, state, took)) = copy {
            self.view_budget
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .copied(took, std::time::Instant::now());
            let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
            if view.0.seq < head.seq {
                *view = (head, state);
            }
        }
        self.replica_copied.notify_waiters();
    }

    /// Copies `kernel`'s state for readers (the caller holds the lock),
    /// charging the copy's time to the view budget.
    pub(super) fn copy_view(&self, kernel: &Kernel) -> Arc<toka_kernel::WorldState> {
        let started = std::time::Instant::now();
        let state = Arc::new(kernel.state().clone());
        let now = std::time::Instant::now();
        self.view_budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .copied(now - started, now);
        state
    }
}

pub(super) struct Core {
    pub(super) writer: State,
    pub(super) kernel: Kernel,
    pub(super) gate: Gate,
    /// Where re-run tasks find the operations they already applied.
    pub(super) store: Arc<dyn EventStore>,
    /// When the writer snapshots the state.
    pub(super) snapshots: SnapshotPolicy,
    /// Skips the gate (only the benchmarks' feature sets it).
    pub(super) skip_gate: bool,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) pending: Batch,
    pub(super) pending_records: Vec<CommittedRecord>,
    /// Bytes held by the pending batch: records, blobs, and the events'
    /// copies of the payloads.
    pub(super) pending_bytes: usize,
    /// Per running task: what was refused since its last applied operation.
    pub(super) refusals: HashMap<TaskId, Vec<Refusal>, IdHash>,
    /// The state writes of re-run tasks, by key.
    pub(super) rewrites: super::rewrites::Rewrites,
    pub(super) denials: Denials,
    /// What each tree holds in the kernel's state, and the bounds.
    pub(super) state_budget: StateBudget,
    /// Below its reserve, agents' operations are refused.
    pub(super) disk: Arc<super::disk::DiskWatch>,
    /// Operator tokens already attached to a batch (see [`By::Operator`]).
    pub(super) stored_operators: std::collections::HashSet<Digest, IdHash>,
    pub(super) stopped: Option<Stopped>,
    pub(super) closing: bool,
    /// Someone waits for the pending batch to be durable (an outbound
    /// request, a caller of `wait_durable`), or it ends a task someone
    /// waits for: the writer commits it without lingering.
    pub(super) hurry: bool,
    /// The tasks callers wait for the end of now (see
    /// [`Sequencer::awaiting_ends`]).
    pub(super) ends_awaited: Arc<EndsAwaited>,
}

/// What a sequencer is configured with besides its parts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(crate) snapshot_every: u64,
    /// The newest snapshot at start.
    pub(crate) last_snapshot: crate::log::recovery::Start,
    pub(crate) skip_gate: bool,
    /// The agents' state: the bytes all trees may hold, and one tree
    /// (see [`StateBudget`]).
    pub(crate) state_budget: (u64, u64),
    /// Free disk space the host keeps for its own records (see
    /// [`super::disk`]; 0: none).
    pub(crate) disk_reserve: u64,
}

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
        let ends_awaited = Arc::<EndsAwaited>::default();
        let view = (kernel.head(), Arc::new(kernel.state().clone()));
        let gate_counts = gate.counts();
        let (total, per_tree) = options.state_budget;
        let state_budget = StateBudget::new(total, per_tree, kernel.state(), kernel.cell());
        let disk = Arc::new(super::disk::DiskWatch::new(options.disk_reserve));
        disk.check(|| store.free_space());
        Self {
            shared: Arc::new(Shared {
                ends_awaited: Arc::clone(&ends_awaited),
                view: Mutex::new(view),
                want_view: std::sync::atomic::AtomicBool::new(false),
                view_budget: Mutex::new(ViewBudget::default()),
                replica: Mutex::new(None),
                replica_copied: tokio::sync::Notify::new(),
                core: Mutex::new(Core {
                    writer: State::Busy,
                    kernel,
                    gate,
                    store,
                    snapshots: SnapshotPolicy::new(
                        options.snapshot_every,
                        options.last_snapshot.seq,
                        options.last_snapshot.len,
                    ),
                    skip_gate: options.skip_gate,
                    clock,
                    pending: Batch::default(),
                    pending_records: Vec::new(),
                    pending_bytes: 0,
                    refusals: HashMap::default(),
                    rewrites: super::rewrites::Rewrites::default(),
                    denials: Denials::default(),
                    state_budget,
                    disk: Arc::clone(&disk),
                    stored_operators: std::collections::HashSet::default(),
                    stopped: None,
                    closing: false,
                    hurry: false,
                    ends_awaited,
                }),
                any_stop: std::sync::atomic::AtomicBool::new(false),
                work: Condvar::new(),
                committed: watch::Sender::new(head),
                published: watch::Sender::new(head),
                metrics: crate::runtime::metrics::Metrics::new(gate_counts),
                disk,
                appending: Mutex::new(()),
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would leave the kernel mid-apply;
        // apply validates before it mutates, so the state is still whole.
        self.shared.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the kernel (its state includes applied, not yet durable
    /// operations).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Kernel) -> R) -> R {
        f(&self.lock().kernel)
    }

    /// The state as of a committed batch, at least as new as everything
    /// committed when called: cloned once when the host is idle, else
    /// captured by the writer with its next batch; copies are spaced so
    /// they hold the lock for a bounded share of the time (see
    /// [`ViewBudget`]).
    pub(crate) async fn committed_state(&self) -> Arc<toka_kernel::WorldState> {
        self.committed_view().await.1
    }

    /// [`Sequencer::committed_state`] with the chain head it is the state
    /// after.
    pub(crate) async fn committed_view(&self) -> (ChainHead, Arc<toka_kernel::WorldState>) {
        use std::sync::atomic::Ordering;
        let target = self.committed();
        let mut rx = self.shared.committed.subscribe();
        loop {
            let view = self
                .shared
                .view
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if view.0.seq >= target {
                return view;
            }
            let wait = self.shared.view_wait();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
                continue;
            }
            // A large state: the replica copies it, and no lock is held.
            let copied = self.shared.replica_copied.notified();
            tokio::pin!(copied);
            copied.as_mut().enable();
            if self.shared.replica().as_ref().is_some_and(|r| r.view()) {
                copied.await;
                continue;
            }
            {
                let core = self.lock();
                let head = core.kernel.head();
                // Nothing applied beyond what is committed (or the writer is
                // gone): the kernel's state is the committed one.
                if head.seq == self.committed() || core.stopped.is_some() {
                    let state = self.shared.copy_view(&core.kernel);
                    drop(core);
                    let mut view = self.shared.view.lock().unwrap_or_else(|e| e.into_inner());
                    if view.0.seq < head.seq {
                        *view = (head, Arc::clone(&state));
                    }
                    return (head, state);
                }
                self.shared.want_view.store(true, Ordering::SeqCst);
            }
            if rx.changed().await.is_err() {
                return view;
            }
        }
    }

    /// The host's counters so far.
    pub(crate) fn metrics(&self) -> crate::runtime::metrics::HostMetrics {
        self.shared.metrics.get()
    }

    /// What the agents hold in the kernel's state, and the bounds.
    pub(crate) fn state_usage(&self) -> super::StateUsage {
        self.lock().state_budget.usage()
    }

    /// The disk's free space as the writer last saw it (if the store can
    /// tell), and the reserve kept.
    pub(crate) fn disk(&self) -> (Option<u64>, u64) {
        (self.shared.disk.free(), self.shared.disk.reserve())
    }

    /// How long `agent`'s next task waits before the host asks again, if
    /// it may not start now: the records the host writes for a task (its
    /// start, its output: up to the kernel's output limit) are charged to
    /// the agent's tree into debt, never refused, so a task starts only
    /// once the tree is out of log-bytes debt. (An agent that queued a
    /// thousand tasks each returning 1 MiB wrote them all at once.)
    pub(crate) fn task_hold(&self, agent: AgentId) -> Option<std::time::Duration> {
        /// The most a held task waits before the host looks again. The
        /// debt shrinks with time alone (the rules are adopted when the
        /// host opens); the host's drain and stop wake held tasks
        /// (`HostInner::held`), and terminating, quarantining or setting
        /// the budgets of the agent nudge its own (`Roster::nudge`), so
        /// this is a backstop: for budgets set wider on an ancestor, or a
        /// clock that jumped.
        const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_secs(60);
        let core = self.lock();
        let debt = core.kernel.state().log_debt_ms(agent, core.stamp());
        (debt > 0).then(|| core.clock.real_wait(debt).min(LOOK_AGAIN))
    }

    /// Why `agent`'s next task fails instead of starting, if it does: the
    /// lifetime log-bytes quota of its account or an ancestor's is spent.
    pub(crate) fn log_total_spent(&self, agent: AgentId) -> Option<String> {
        self.read(|kernel| kernel.state().log_total_spent(agent))
            .map(|spent| spent.to_string())
    }

    /// Why what agents write is refused now, if it is: the disk is below
    /// its reserve (a task's output among it: the task fails instead).
    pub(crate) fn disk_refusal(&self) -> Option<String> {
        self.shared.disk.refusal()
    }

    /// The logical time a command submitted now would get.
    pub(crate) fn now(&self) -> Timestamp {
        self.lock().stamp()
    }

    /// The token with this digest, verified.
    pub(crate) fn token(
        &self,
        digest: &Digest,
    ) -> Result<Token, crate::capability::token::TokenError> {
        let verifier = {
            let mut core = self.lock();
            match core.gate.verifier(digest) {
                None => return core.gate.token(digest).cloned(),
                Some(verifier) => verifier,
            }
        };
        // Verified outside the lock (see `lock_for`).
        let token = verifier.verify()?;
        self.lock().gate.admit(token.clone());
        Ok(token)
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
    ) -> Result<(), Denied> {
        if let Some(len) = check.oversized() {
            return Err(Denied(format!(
                "the name is {len} bytes, over the limit of {}",
                crate::capability::policy::MAX_TARGET
            )));
        }
        let mut core = self.lock();
        let token = core
            .kernel
            .state()
            .agent(agent)
            .filter(|a| !a.is_terminated())
            .map(|a| a.token)
            .ok_or_else(|| Denied(format!("agent {agent} is gone")))?;
        let time = core.stamp();
        let decision = {
            let core = &mut *core;
            core.gate
                .authorize(token, agent, check, time, core.kernel.state())
        };
        if let Err(reason) = &decision
            && record
        {
            core.record_denial(agent, check, false, &reason.0, time);
        }
        self.release(core);
        decision
    }

    /// A future resolving once everything applied until now is durable.
    pub(crate) fn durable_now(&self) -> impl Future<Output = Result<(), Stopped>> + Send + 'static {
        let head = self.read(|k| k.head().seq);
        let this = self.clone();
        async move { this.wait_durable(head).await }
    }

    /// Authorizes and applies an agent's request, or, for an operation a
    /// re-run task already applied or had refused, answers it from the log.
    ///
    /// The outer error ends the agent's task; the inner one is a refusal the
    /// agent sees (nothing changed, a denial may be recorded).
    pub(crate) async fn submit_agent(
        &self,
        agent: AgentId,
        cause: Option<OpKey>,
        request: Request,
    ) -> Result<Result<Receipt, Refused>, Halt> {
        let request = match request {
            Request::Spawn(spawn) => Request::Spawn(self.with_child_token(agent, spawn).await?),
            other => other,
        };
        let answered = self
            .submit_deciding(agent, cause, request, |core, request| {
                cause.and_then(|key| core.journal_answer(key, request))
            })
            .await?;
        match answered {
            Ok(result) => Ok(result),
            Err(journaled) => journaled.map_err(Halt::Diverged),
        }
    }

    /// Submits `agent`'s request under the lock, unless `answered`, asked
    /// under the lock first, answers it. A check the gate has no decision
    /// for is decided away from the lock (the authorizer takes tens of µs)
    /// and the request submitted again; should the decision not serve (the
    /// logical second moved on, for a token that reads the time), the next
    /// pass decides under the lock.
    pub(super) async fn submit_deciding<A>(
        &self,
        agent: AgentId,
        cause: Option<OpKey>,
        mut request: Request,
        answered: impl Fn(&Core, &Request) -> Option<A>,
    ) -> Result<Result<Result<Receipt, Refused>, A>, Stopped> {
        let (mut decided, mut away) = (None, true);
        loop {
            let mut core = self.lock_for(agent).await?;
            if let Some(decided) = decided.take() {
                core.gate.settle(decided);
            }
            if let Some(answer) = answered(&core, &request) {
                drop(core);
                return Ok(Err(answer));
            }
            match core.submit_agent(agent, cause, request, away) {
                Ok(Answered { result, remember }) => {
                    self.release(core);
                    if let (Err(refused), Some((task, asked))) = (&result, remember) {
                        // The task waits for this answer: nothing it does
                        // comes between.
                        let digest = request_digest(&asked);
                        self.lock().remember_refusal(task, digest, refused);
                    }
                    return Ok(Ok(result));
                }
                Err(deferred) => {
                    drop(core);
                    let Deferred {
                        undecided,
                        request: again,
                    } = *deferred;
                    decided = Some(undecided.decide());
                    (request, away) = (again, false);
                }
            }
        }
    }

    /// The start of the running task `task` (for its clocks).
    pub(crate) fn run_started_at(&self, task: TaskId) -> Option<Timestamp> {
        self.read(|k| k.state().task(task)?.status.run().map(|r| r.started_at))
    }

    /// Whether an instance of `agent` running `task` (or, for `None`, its
    /// `init`) should go on: the host is not stopping, the agent is active
    /// with `task` as its running task (not terminated, or the task failed
    /// from outside, meanwhile), and its token still stands (not revoked,
    /// not expired: see [`Gate::still_stands`]).
    pub(crate) fn still_wanted(
        &self,
        agent: AgentId,
        task: Option<TaskId>,
    ) -> Result<(), Unwanted> {
        let mut guard = self.lock();
        let time = guard.stamp();
        let core = &mut *guard;
        if core.stopped.is_some() {
            return Err(Unwanted::Abandoned);
        }
        let Some(token) = core
            .kernel
            .state()
            .agent(agent)
            .filter(|a| a.is_active() && task.is_none_or(|task| a.running == Some(task)))
            .map(|a| a.token)
        else {
            return Err(Unwanted::Abandoned);
        };
        if core.skip_gate {
            return Ok(());
        }
        core.gate
            .still_stands(&token, time, core.kernel.state())
            .map_err(|denied| Unwanted::Withdrawn(denied.0))
    }

    /// Whether `agent`'s token still stands now (not revoked, not
    /// expired), verifying it first, outside the lock, when the gate does
    /// not hold it (after a restart, or forgotten): `Err` with the reason
    /// when it does not. `Ok` when the host stops or the agent is unknown
    /// (others report those).
    pub(crate) async fn token_stands(&self, agent: AgentId) -> Result<(), String> {
        let Ok(mut guard) = self.lock_for(agent).await else {
            return Ok(());
        };
        let time = guard.stamp();
        let core = &mut *guard;
        match core.kernel.state().agent(agent) {
            Some(a) if !core.skip_gate => core
                .gate
                .still_stands(&a.token, time, core.kernel.state())
                .map_err(|denied| denied.0),
            _ => Ok(()),
        }
    }

    /// Writes a snapshot of the state at the log's head, once everything
    /// applied is durable; returns its sequence number.
    pub(crate) async fn snapshot_now(&self) -> Result<u64, Stopped> {
        let failed = |e| Stopped(format!("writing the snapshot failed: {e}"));
        // A large state: the replica takes it, holding no lock.
        let head = self.read(|k| k.head().seq);
        self.wait_durable(head).await?;
        let asked = self
            .shared
            .replica()
            .as_ref()
            .and_then(|r| r.snapshot_now());
        if let Some(answer) = asked {
            match answer.await {
                Ok(Ok((seq, len))) => {
                    self.lock().snapshots.taken(seq, len);
                    return Ok(seq);
                }
                Ok(Err(e)) => return Err(failed(e)),
                // It stopped first: under the lock, below.
                Err(_) => {}
            }
        }
        loop {
            let head = self.read(|k| k.head().seq);
            self.wait_durable(head).await?;
            let mut core = self.lock();
            core.check_running()?;
            if !core.pending.is_empty() || core.kernel.head().seq != head {
                continue;
            }
            let bytes = crate::store::snapshot::encode(&core.kernel);
            core.snapshots.taken(head, bytes.len());
            let store = Arc::clone(&core.store);
            drop(core);
            store
                .put_snapshot(head, bytes)
                .map_err(|e| failed(e.to_string()))?;
            self.shared.metrics.snapshots.stored(false);
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

    /// Takes in what another cell sent: [`Operation::DeliverTask`], or
    /// [`Operation::RefuseDelivery`] when the task would pass the state
    /// budget (asked under the same lock, against the state as applied).
    pub(crate) async fn deliver(
        &self,
        delivery: toka_kernel::Delivery,
    ) -> Result<Result<Receipt, KernelError>, Stopped> {
        let mut core = self.lock_with_room().await?;
        let delivery = Box::new(delivery);
        let op = match core
            .state_budget
            .admit_delivery(core.kernel.state(), &delivery)
        {
            Ok(()) => Operation::DeliverTask { delivery },
            Err(refused) => Operation::RefuseDelivery {
                delivery,
                reason: crate::text::clip(
                    &refused.to_string(),
                    core.kernel.limits().max_reason as usize,
                ),
            },
        };
        let command = Command::system(EntityId::SYSTEM, core.stamp(), op);
        let result = core.apply(command, Attachments::default());
        self.release(core);
        Ok(result)
    }

    /// Applies a command of the host's caller or of an operator (checked
    /// for the level the operation needs), storing `attachments` with it.
    pub(crate) async fn submit_by(
        &self,
        by: &By,
        op: Operation,
        attachments: Attachments,
    ) -> Result<Result<Receipt, Declined>, Stopped> {
        let submitted = self.submit_by_if(by, op, attachments, |_| true).await?;
        Ok(submitted.map(|receipt| receipt.expect("always wanted")))
    }

    /// As [`Sequencer::submit_by`], unless `wanted`, asked about the state
    /// as applied under the same lock, says the command would change
    /// nothing: then nothing is applied or written (`None`).
    pub(crate) async fn submit_by_if(
        &self,
        by: &By,
        op: Operation,
        attachments: Attachments,
        wanted: impl FnOnce(&mut toka_kernel::Kernel) -> bool,
    ) -> Result<Result<Option<Receipt>, Declined>, Stopped> {
        self.decide_ahead(by, crate::capability::policy::operator_level_for(&op));
        let mut core = self.lock_with_room().await?;
        if !wanted(&mut core.kernel) {
            self.release(core);
            return Ok(Ok(None));
        }
        let time = core.stamp();
        let result =
            core.command_by(by, time, op, attachments)
                .and_then(|(command, attachments)| {
                    core.apply(command, attachments).map_err(Declined::Kernel)
                });
        self.release(core);
        Ok(result.map(Some))
    }

    /// Spawns a root agent on the authority of `by`, bound to `token`
    /// (admitted before), with its budgets recorded in the same batch.
    pub(crate) async fn spawn_root(
        &self,
        by: &By,
        spec: toka_kernel::AgentSpec,
        token: Token,
        budgets: toka_kernel::Budgets,
    ) -> Result<Result<Receipt, Declined>, Stopped> {
        // What `operator_level_for` asks of a `SpawnAgent`.
        self.decide_ahead(by, Some(crate::capability::rights::OperatorLevel::Write));
        let mut core = self.lock_with_room().await?;
        let result = core.spawn_root(by, spec, token, budgets);
        self.release(core);
        Ok(result)
    }

    /// Whether `token` allows `level` now: its operator right, expiry and
    /// revocation against the state as applied. Decisions are cached by the
    /// gate; one it has not made yet (for a token whose checks read the
    /// time, once a second) is made away from the lock, as agents' are: a
    /// token's holder chooses what its blocks cost (within
    /// [`Token::check_shape`]), and every API request presents one.
    pub(crate) fn authorize_operator(
        &self,
        token: &Token,
        level: crate::capability::rights::OperatorLevel,
    ) -> Result<(), Denied> {
        let check = crate::capability::policy::operator_check(level);
        let asked = {
            let mut guard = self.lock();
            let core = &mut *guard;
            let time = core.stamp();
            let digest = token.digest();
            if !core.gate.knows(&digest) {
                core.gate.admit(token.clone());
            }
            core.gate
                .ask(digest, EntityId::SYSTEM, &check, time, core.kernel.state())
        };
        match asked {
            Asked::Answered(decision) => decision,
            Asked::Undecided(undecided) => {
                let decided = undecided.decide();
                let decision = decided.decision();
                self.lock().gate.settle(decided);
                decision
            }
        }
    }

    /// Decides an operator's check for `level` away from the lock (see
    /// [`Sequencer::authorize_operator`]), so that the same check made
    /// again under the lock, as the command is applied, finds the decision
    /// the gate keeps: a token's holder chooses what deciding it costs.
    fn decide_ahead(&self, by: &By, level: Option<crate::capability::rights::OperatorLevel>) {
        if let (By::Operator(token), Some(level)) = (by, level) {
            // Allowed or denied, the decision is kept; the check under the
            // lock answers the command with it.
            let _ = self.authorize_operator(token, level);
        }
    }

    /// `spawn` with the child's token made (signing takes ~50 µs) outside
    /// the lock; unchanged if the parent's token cannot be had or the
    /// spawn does not parse (applying it reports why).
    async fn with_child_token(&self, agent: AgentId, mut spawn: Spawn) -> Result<Spawn, Stopped> {
        let core = self.lock_for(agent).await?;
        let parent = core.kernel.state().agent(agent).map(|a| a.token);
        let parent = parent.and_then(|digest| {
            let mut core = core;
            core.gate.token(&digest).ok().map(|t| (digest, t.clone()))
        });
        if let Some((digest, parent)) = parent {
            spawn.child = spawn
                .child_token(&parent)
                .ok()
                .map(|child| Box::new((digest, child)));
        }
        Ok(spawn)
    }

    /// [`Sequencer::lock_with_room`] for an operation of `agent`: if the
    /// gate does not hold the agent's token verified (it never did, or
    /// forgot it), it is read and verified first, outside the lock and on
    /// a blocking thread, so others' operations go on meanwhile
    /// (signatures take ~100 µs; a cell store's read is a JetStream round
    /// trip, which must not hold a runtime worker).
    async fn lock_for(&self, agent: AgentId) -> Result<MutexGuard<'_, Core>, Stopped> {
        let verifier = {
            let core = self.lock_with_room().await?;
            let verifier = core
                .kernel
                .state()
                .agent(agent)
                .and_then(|a| core.gate.verifier(&a.token));
            match verifier {
                Some(verifier) => verifier,
                None => return Ok(core),
            }
        };
        // A failure is found again, and reported, by the gate.
        if let Ok(Ok(token)) = tokio::task::spawn_blocking(move || verifier.verify()).await {
            self.lock().gate.admit(token);
        }
        self.lock_with_room().await
    }

    /// Locks the core once the pending batch is below its bounds (waiting
    /// for the writer otherwise).
    pub(super) async fn lock_with_room(&self) -> Result<MutexGuard<'_, Core>, Stopped> {
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

    /// Unlocks the core, waking the writer if it sleeps with work pending,
    /// or lingers when that work is not to wait (see [`Sequencer::hurry`]).
    pub(super) fn release(&self, core: MutexGuard<'_, Core>) {
        let wake = match core.writer {
            State::Idle => !core.pending.is_empty(),
            State::Lingering => core.hurry,
            State::Busy => false,
        };
        drop(core);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Waits until the record at `seq` is durable (the writer stops
    /// lingering for it).
    pub(crate) async fn wait_durable(&self, seq: u64) -> Result<(), Stopped> {
        if *self.shared.committed.borrow() < seq {
            self.hurry();
        }
        self.wait_until(&self.shared.committed, seq).await
    }

    /// Marks a caller waiting for `task` to end until the guard drops:
    /// meanwhile its end is committed without lingering (the ends of tasks
    /// nobody waits for keep being gathered into larger batches, however
    /// long a caller waits).
    pub(crate) fn awaiting_ends(&self, task: TaskId) -> AwaitingEnds {
        self.shared.ends_awaited.wait(task)
    }

    /// Has the writer commit what is pending without lingering: someone
    /// will wait for it soon (an outbound request after a response).
    pub(crate) fn hurry(&self) {
        let mut core = self.lock();
        core.hurry = true;
        let wake = core.writer == State::Lingering;
        drop(core);
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Waits until the record at `seq` is durable and published.
    pub(crate) async fn wait_published(&self, seq: u64) -> Result<(), Stopped> {
        self.wait_until(&self.shared.published, seq).await
    }

    /// Waits until `mark` (committed or published) reaches `seq`, or the
    /// host stops.
    async fn wait_until(&self, mark: &watch::Sender<u64>, seq: u64) -> Result<(), Stopped> {
        let mut rx = mark.subscribe();
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
        if !self
            .shared
            .any_stop
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return None;
        }
        self.lock().stopped.clone()
    }

    /// Stops accepting operations; the writer commits what is pending and exits.
    pub(crate) fn close(&self) {
        let mut core = self.lock();
        core.closing = true;
        if core.stopped.is_none() {
            core.stopped = Some(Stopped("the host is shutting down".into()));
        }
        self.shared
            .any_stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        drop(core);
        self.shared.work.notify_all();
        self.shared.published.send_modify(|_| {});
    }
}

impl Core {
    pub(super) fn check_running(&self) -> Result<(), Stopped> {
        match &self.stopped {
            Some(stopped) => Err(stopped.clone()),
            None => Ok(()),
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.pending_records.len() >= MAX_PENDING_RECORDS || self.pending_bytes >= MAX_PENDING_BYTES
    }

    /// The next logical time: the clock, but never before the last stamp.
    pub(super) fn stamp(&self) -> Timestamp {
        self.clock.now().max(self.kernel.state().time())
    }

    /// Authorizes and applies `agent`'s request, or refuses it (a denial
    /// is recorded, a quota hit too). With `away`, a request whose check
    /// the gate has no decision for is handed back undecided instead,
    /// nothing done (see [`Sequencer::submit_deciding`]).
    pub(super) fn submit_agent(
        &mut self,
        agent: AgentId,
        cause: Option<OpKey>,
        request: Request,
        away: bool,
    ) -> Result<Answered, Box<Deferred>> {
        match self.try_submit_agent(agent, cause, request, away) {
            Ok(receipt) => {
                if let Some(key) = cause
                    && !self.refusals.is_empty()
                {
                    self.record_refusals(agent, key.task);
                }
                Ok(Answered {
                    result: Ok(receipt),
                    remember: None,
                })
            }
            Err(Unsubmitted::Deferred(deferred)) => Err(deferred),
            Err(Unsubmitted::Refused(refused, asked)) => {
                let mut remember = None;
                if let Some(quota) = refused.quota {
                    // Recorded once: the quota ends the agent's task.
                    let reason = crate::text::clip(
                        &refused.message,
                        self.kernel.limits().max_reason as usize,
                    );
                    let time = self.stamp();
                    let hit = Operation::RecordQuotaHit {
                        agent,
                        quota,
                        reason,
                    };
                    if let Err(e) =
                        self.apply(Command::system(agent, time, hit), Attachments::default())
                    {
                        tracing::warn!(agent = %agent.short(), error = %e, "could not record a quota hit");
                    }
                } else if let Some(key) = cause {
                    match asked {
                        RefusedAsk::Digest(digest) => {
                            self.remember_refusal(key.task, digest, &refused)
                        }
                        RefusedAsk::Request(request) => remember = Some((key.task, request)),
                    }
                }
                Ok(Answered {
                    result: Err(refused),
                    remember,
                })
            }
        }
    }

    /// Authorizes and applies an agent's request. A refusal comes with
    /// what was asked: the request itself where it is still whole (hashed
    /// only then, away from the lock: see [`request_digest`]).
    fn try_submit_agent(
        &mut self,
        agent: AgentId,
        cause: Option<OpKey>,
        request: Request,
        away: bool,
    ) -> Result<Receipt, Unsubmitted> {
        let Some(token) = self.kernel.state().agent(agent).map(|a| a.token) else {
            return Err(Unsubmitted::Refused(
                unknown(EntityKind::Agent, agent).into(),
                RefusedAsk::Request(Box::new(request)),
            ));
        };
        if let Some(message) = self.disk.refusal() {
            let refused = Refused {
                kind: RefusalKind::LimitExceeded,
                message,
                quota: None,
            };
            return Err(Unsubmitted::Refused(
                refused,
                RefusedAsk::Request(Box::new(request)),
            ));
        }
        let time = self.stamp();
        match request {
            Request::Op(op) => {
                if !self.skip_gate
                    && let Some(check) = check_for(&op, agent, self.kernel.state())
                {
                    match self.authorize_op(agent, token, op.kind(), &check, time, away) {
                        Ok(None) => {}
                        Ok(Some(undecided)) => {
                            return Err(Unsubmitted::Deferred(Box::new(Deferred {
                                undecided,
                                request: Request::Op(op),
                            })));
                        }
                        Err(e) => {
                            let asked = RefusedAsk::Request(Box::new(Request::Op(op)));
                            return Err(Unsubmitted::Refused(e.into(), asked));
                        }
                    }
                }
                if let Err(e) = self
                    .state_budget
                    .admit_op(self.kernel.state(), agent, cause, &op)
                {
                    return Err(Unsubmitted::Refused(
                        e.into(),
                        RefusedAsk::Request(Box::new(Request::Op(op))),
                    ));
                }
                let command = Command {
                    origin: agent,
                    time,
                    auth: Authorization::Token,
                    cause,
                    op,
                };
                self.apply(command, Attachments::default()).map_err(|e| {
                    let digest = Digest::of(self.kernel.rejected_operation());
                    Unsubmitted::Refused(e.into(), RefusedAsk::Digest(digest))
                })
            }
            Request::Spawn(request) => {
                let digest = spawn_digest(&request);
                let refused =
                    |e: KernelError| Unsubmitted::Refused(e.into(), RefusedAsk::Digest(digest));
                // Before the child's token is minted: a tree at its share
                // makes the host spend nothing on a spawn.
                if let Err(e) = self
                    .state_budget
                    .admit_spawn(self.kernel.state(), agent, cause)
                {
                    return Err(Unsubmitted::Refused(e.into(), RefusedAsk::Digest(digest)));
                }
                let prepared = self
                    .prepare_spawn(agent, token, time, request)
                    .map_err(refused)?;
                let command = Command {
                    origin: agent,
                    time,
                    auth: Authorization::Token,
                    cause,
                    op: prepared.op,
                };
                let attachments = Attachments {
                    token: Some(prepared.child),
                    ..Attachments::default()
                };
                let receipt = self.apply(command, attachments).map_err(refused)?;
                self.set_budgets(receipt, prepared.budgets, time);
                Ok(receipt)
            }
        }
    }

    /// Checks an operator's token for `level` at `time`.
    pub(super) fn authorize_operator(
        &mut self,
        token: &Token,
        level: crate::capability::rights::OperatorLevel,
        time: Timestamp,
    ) -> Result<(), Denied> {
        let digest = token.digest();
        if !self.gate.knows(&digest) {
            self.gate.admit(token.clone());
        }
        let check = crate::capability::policy::operator_check(level);
        self.gate
            .authorize(digest, EntityId::SYSTEM, &check, time, self.kernel.state())
    }

    /// The command `by` makes of `op` at `time`, checked: an operator's
    /// token must allow the level `op` needs; the token goes with the first
    /// batch that names it.
    pub(super) fn command_by(
        &mut self,
        by: &By,
        time: Timestamp,
        op: Operation,
        mut attachments: Attachments,
    ) -> Result<(Command, Attachments), Declined> {
        let auth = match by {
            By::Host => Authorization::System,
            By::Operator(token) => {
                let level =
                    crate::capability::policy::operator_level_for(&op).ok_or_else(|| {
                        Declined::Denied(Denied(format!("operators may not {}", op.kind())))
                    })?;
                self.authorize_operator(token, level, time)
                    .map_err(Declined::Denied)?;
                self.state_budget
                    .admit_operator(self.kernel.state(), &op)
                    .map_err(Declined::StateBudget)?;
                if let Some((_, blob)) = &attachments.blob
                    && let Some(why) = self.disk.refusal_of(blob.len() as u64)
                {
                    return Err(Declined::DiskReserve(why));
                }
                let digest = token.digest();
                // Stored with the first command of it that is applied (a
                // rejected one stores nothing; see `apply`).
                if !self.stored_operators.contains(&digest) {
                    attachments.operator = Some((**token).clone());
                }
                Authorization::Operator(digest)
            }
        };
        let command = Command {
            origin: EntityId::SYSTEM,
            time,
            auth,
            cause: None,
            op,
        };
        Ok((command, attachments))
    }

    /// Asks the gate; on a denial records it (rate-limited) and returns the
    /// error for the agent.
    pub(super) fn authorize(
        &mut self,
        agent: AgentId,
        token: Digest,
        kind: toka_kernel::OpKind,
        check: &Check,
        delegating: Option<&crate::capability::rights::Right>,
        time: Timestamp,
    ) -> Result<(), KernelError> {
        oversized(check)?;
        self.gate
            .authorize(token, agent, check, time, self.kernel.state())
            .map_err(|reason| self.denied(agent, kind, check, delegating, reason, time))
    }

    /// [`Core::authorize`] for an agent's operation; with `away`, a check
    /// the gate has no decision for is handed back to be decided away
    /// from the lock.
    fn authorize_op(
        &mut self,
        agent: AgentId,
        token: Digest,
        kind: toka_kernel::OpKind,
        check: &Check,
        time: Timestamp,
        away: bool,
    ) -> Result<Option<Box<Undecided>>, KernelError> {
        if !away {
            return self
                .authorize(agent, token, kind, check, None, time)
                .map(|()| None);
        }
        oversized(check)?;
        match self
            .gate
            .ask(token, agent, check, time, self.kernel.state())
        {
            Asked::Answered(Ok(())) => Ok(None),
            Asked::Answered(Err(reason)) => {
                Err(self.denied(agent, kind, check, None, reason, time))
            }
            Asked::Undecided(undecided) => Ok(Some(undecided)),
        }
    }

    /// Records a denial (rate-limited); the error for the agent.
    fn denied(
        &mut self,
        agent: AgentId,
        kind: toka_kernel::OpKind,
        check: &Check,
        delegating: Option<&crate::capability::rights::Right>,
        reason: Denied,
        time: Timestamp,
    ) -> KernelError {
        let reason = match delegating {
            Some(right) => format!("cannot delegate `{right}`: {reason}"),
            None => reason.0,
        };
        self.record_denial(agent, check, delegating.is_some(), &reason, time);
        KernelError::CapabilityDenied {
            origin: agent,
            operation: kind,
            reason,
        }
    }

    pub(super) fn apply(
        &mut self,
        command: Command,
        attachments: Attachments,
    ) -> Result<Receipt, KernelError> {
        // The state budget needs what a state write replaces.
        let state_before = match &command.op {
            Operation::PutState { .. } | Operation::DeleteState { .. } => self
                .kernel
                .state()
                .agent(command.origin)
                .map(|a| (command.origin, a.state_bytes)),
            _ => None,
        };
        let applied = self.kernel.apply(command)?;
        self.state_budget
            .applied(self.kernel.state(), state_before, &applied);
        let Applied {
            seq,
            origin,
            time,
            cause,
            bytes,
            events,
            ..
        } = applied;
        for event in &events {
            if let toka_kernel::Event::TaskCompleted { task, .. }
            | toka_kernel::Event::TaskFailed { task, .. } = event
            {
                // The refusals kept for a task's re-run go once it ended:
                // by its own end, or failed by another operation (its
                // agent terminated).
                self.refusals.remove(task);
                // Someone waits for this task's end (`Host::wait_task`,
                // an API client): the writer commits it without
                // lingering. Ends nobody waits for keep being gathered
                // into larger batches.
                if self.ends_awaited.awaited(*task) {
                    self.hurry = true;
                }
            }
        }
        let receipt = Receipt {
            seq,
            created: created(&events),
        };
        // The events hold the payloads the record also holds: count both.
        self.pending_bytes += 2 * bytes.len();
        self.snapshots.logged(bytes.len());
        self.pending.records.push((seq, bytes));
        if let Some((digest, blob)) = attachments.blob {
            self.pending_bytes += blob.len();
            self.pending.blobs.push((digest, blob));
        }
        if let Some(operator) = &attachments.operator {
            if self.stored_operators.len() >= STORED_OPERATORS_KEPT {
                self.stored_operators.clear();
            }
            self.stored_operators.insert(operator.digest());
        }
        for token in attachments.token.into_iter().chain(attachments.operator) {
            self.pending_bytes += token.bytes().len();
            self.pending
                .tokens
                .push((token.digest(), Arc::clone(token.bytes())));
        }
        self.pending.head = self.kernel.head();
        self.pending_records.push(CommittedRecord {
            seq,
            origin,
            time,
            cause,
            events,
        });
        Ok(receipt)
    }
}

/// The entity a command created, for the receipt.
fn created(events: &[Event]) -> Option<EntityId> {
    events.iter().find_map(Event::created)
}

/// Refuses a check naming a target over [`MAX_TARGET`] bytes, before the
/// gate (and unrecorded: a record names what was checked).
///
/// [`MAX_TARGET`]: crate::capability::policy::MAX_TARGET
fn oversized(check: &Check) -> Result<(), KernelError> {
    match check.oversized() {
        Some(len) => Err(KernelError::LimitExceeded {
            limit: toka_kernel::Limit::Name,
            max: crate::capability::policy::MAX_TARGET as u64,
            actual: len as u64,
        }),
        None => Ok(()),
    }
}

pub(super) fn unknown(kind: EntityKind, id: impl std::fmt::Display) -> KernelError {
    KernelError::UnknownEntity {
        kind,
        id: id.to_string(),
    }
}

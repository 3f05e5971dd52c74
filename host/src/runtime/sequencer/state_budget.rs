//! The kernel's state in memory: what agents keep there, under one budget
//! shared between agent trees.
//!
//! An agent's own state is bounded by the kernel's limits (16 MiB by
//! default, 1 024 queued tasks of 4 KiB), and how fast a tree writes is
//! bounded by its quotas; but nothing in the kernel bounds what a tree
//! holds in all: an agent allowed to spawn children with `state` can have
//! each fill its 16 MiB, or queue tasks on children that wait for a place;
//! and an agent's record (and its state) stays after it terminates, so
//! spawning and terminating children grows the state until the operator
//! forgets the terminated ones (`toka agent forget`); and a running task
//! keeps a journal entry for each of its operations until it ends (for a
//! re-run), with a copy of what each first write of a key replaced and an
//! entry for each HTTP request it made: up to 100 000 operations a task,
//! and a tree runs hundreds of tasks at once.
//! All of it lives in the host's memory (up to three times: the kernel's, the
//! readers' committed view, the snapshot replica's) and in every snapshot.
//!
//! So the sequencer counts, per tree (an agent the operator spawned, with
//! all its descendants), the bytes of its agents' state keys and values,
//! a fixed charge for each agent record, each task not yet ended (its
//! description and a fixed charge, counted to the tree of the agent that
//! scheduled it; the operators' tasks count as one more tree's, not
//! towards the target's share, so a client allowed to schedule cannot use
//! up a tree's share for it), and each running task's journal (counted to
//! the tree of the agent running it), and in a cluster's cell each task
//! for another cell's agent until it is handed to JetStream. It refuses an
//! agent's operation (a state write, spawn or scheduling, or any operation
//! of a task for its journal's entry) that grows its tree past the
//! tree's share ([`HostConfig::state_budget`](crate::HostConfig::state_budget))
//! or all trees past the budget. The refusal is the agent's to handle
//! (`limit-exceeded`); deleting keys and ending tasks give bytes back. The
//! count is derived from the kernel's state when the host opens and kept
//! with each command applied, so it agrees with the state it counts. An
//! API client's root agent past the budget, and its task past the budget
//! or the operators' share, are refused too; the host's own caller's
//! commands are counted, never refused. In a cluster's cell, the tasks
//! other cells' agents send count together as one more tree (their trees
//! are not here; an operator's count with the operators' tasks): one past
//! the budget or that share is taken in as refused
//! ([`Operation::RefuseDelivery`]).

use std::collections::{BTreeMap, HashMap};

use toka_kernel::{
    AgentId, Applied, Cell, Delivery, EntityId, Event, IdHash, JournalEntry, MAX_OUTBOX_PER_AGENT,
    OpKey, Operation, Parcel, Replaced, Run, TaskId, TaskSpec, WorldState,
};

use crate::sandbox::places::tree_of;
use crate::sandbox::shares::{Over, Shares};
use crate::text::Size;

/// What one agent record costs besides its state, counted once like a
/// state byte: the kernel's record with the replica's copy measures
/// 0.7–1.4 KiB (BENCHMARKS.md, "scale"); the host's RSS grew 1.8–3 KB per
/// spawned and terminated agent (README, "Many agents").
pub(crate) const AGENT_RECORD_BYTES: u64 = 1024;

/// What one task record costs besides its description (the record, the
/// queue's entry).
pub(crate) const TASK_RECORD_BYTES: u64 = 256;

/// What a task holds: its description and the record.
fn task_bytes(spec: &TaskSpec) -> u64 {
    TASK_RECORD_BYTES + spec.description.len() as u64
}

/// What one entry of a running task's journal holds (see
/// [`toka_kernel::Run`]): 24 bytes, and the journal's spare room.
const JOURNAL_ENTRY_BYTES: u64 = 32;

/// What a run of refused operations before an entry holds in the journal
/// (a [`toka_kernel::Gap`]).
const JOURNAL_GAP_BYTES: u64 = 32;

/// What an entry holds besides, when its operation created an agent or a
/// task or wrote state: the boxes of what it did, without the key and the
/// value they copy.
const JOURNAL_DID_BYTES: u64 = 128;

/// What the kernel holds for each HTTP request of a running task besides
/// its journal entry, for a re-run: an [`toka_kernel::Exchange`] of 56
/// bytes under a 20-byte key in an ordered map (~130 bytes with the map's
/// nodes).
const EXCHANGE_BYTES: u64 = 128;

/// What `entry` holds, besides [`JOURNAL_ENTRY_BYTES`]: for a task's first
/// write of a key, the key twice (the task's set of written keys holds
/// one) and the value it replaced; for a later write, the key.
fn did_bytes(entry: &JournalEntry) -> u64 {
    match entry.prior() {
        Replaced::First(prior) => {
            let value = prior.value.as_ref().map_or(0, Vec::len);
            JOURNAL_DID_BYTES + 2 * prior.key.len() as u64 + value as u64
        }
        Replaced::Rewrite(rewrite) => JOURNAL_DID_BYTES + rewrite.key.len() as u64,
        _ if entry.created().is_some() => JOURNAL_DID_BYTES,
        _ => 0,
    }
}

/// What the journal of `task`, running as `run`, holds: its entries, its
/// gaps and its HTTP requests.
fn journal_bytes(state: &WorldState, task: TaskId, run: &Run) -> u64 {
    let entries = run
        .journal
        .iter()
        .map(|e| JOURNAL_ENTRY_BYTES + did_bytes(e))
        .sum::<u64>();
    entries
        + JOURNAL_GAP_BYTES * run.gaps.len() as u64
        + EXCHANGE_BYTES * state.exchanges_of(task) as u64
}

/// The journal of the task `key` names, while it runs.
fn running(state: &WorldState, key: OpKey) -> Option<&Run> {
    state.task(key.task).and_then(|t| t.status.run())
}

/// What the journal of the task `cause` names will hold more once
/// `agent`'s `op` is applied as its operation: an entry, and for a state
/// write or an operation that creates a task, what the entry keeps (see
/// [`did_bytes`]; a key's first write is taken to be one unless the task
/// wrote the key). For a task not running, the kernel refuses `op`.
fn journal_growth(state: &WorldState, agent: AgentId, cause: OpKey, op: &Operation) -> u64 {
    let did = match op {
        Operation::PutState { key, .. } | Operation::DeleteState { key } => {
            if running(state, cause).is_some_and(|run| run.wrote(key)) {
                JOURNAL_DID_BYTES + key.len() as u64
            } else {
                let old = state.agent(agent).and_then(|a| a.state.get(key));
                JOURNAL_DID_BYTES + 2 * key.len() as u64 + old.map_or(0, |v| v.len() as u64)
            }
        }
        Operation::ScheduleTask { .. } | Operation::ScheduleTaskOnce { .. } => JOURNAL_DID_BYTES,
        _ => 0,
    };
    JOURNAL_ENTRY_BYTES + did
}

/// The most tasks one tree's agents may have waiting in a cell's outbox
/// together: one agent's worth ([`MAX_OUTBOX_PER_AGENT`], the kernel's
/// bound per agent). The outbox holds [`toka_kernel::MAX_OUTBOX`] in all:
/// without it, one tree of 16 agents filled it, and every other tree's
/// (and the operators') tasks for other cells were refused until the host
/// had handed them on.
pub(crate) const OUTBOX_PER_TREE: usize = MAX_OUTBOX_PER_AGENT;

/// What a task scheduled `by` is counted to: the tree of the agent that
/// scheduled it; for the operators' tasks, [`EntityId::SYSTEM`] (one more
/// tree); for a task an agent of another cell sent (it is not in this
/// state), [`OTHER_CELLS`] (one more tree, all other cells together).
fn counted_to(state: &WorldState, by: EntityId) -> AgentId {
    if by != EntityId::SYSTEM && state.agent(by).is_none() {
        OTHER_CELLS
    } else {
        tree_of(state, by)
    }
}

/// The id the tasks other cells' agents sent are counted under: all ones,
/// whose cell (the top 16 bits) no cluster has, and which an id minted
/// outside a cluster is with a chance of 2^-128.
const OTHER_CELLS: AgentId = EntityId::from_u128(u128::MAX);

/// Bytes the agents' state holds, per tree and in all, and the bounds.
#[derive(Debug)]
pub(crate) struct StateBudget {
    /// What each tree holds, and the bounds.
    shares: Shares,
    /// The tasks not yet ended: the tree each is counted to, and its bytes.
    tasks: HashMap<TaskId, (AgentId, u64), IdHash>,
    /// The running tasks' journals: the tree each is counted to (its
    /// agent's), and its bytes.
    journals: HashMap<TaskId, (AgentId, u64), IdHash>,
    /// The tasks in a cluster's cell's outbox, for agents of other cells,
    /// by the record that put each there: the tree each is counted to,
    /// and its bytes, until the host hands them to JetStream.
    outbox: BTreeMap<u64, (AgentId, u64)>,
    /// How many of the outbox's tasks each tree has there.
    outbox_of: HashMap<AgentId, usize, IdHash>,
    /// The cell this is, in a cluster.
    cell: Option<Cell>,
}

/// A growth the state budget refused (see
/// [`HostConfig::state_budget`](crate::HostConfig::state_budget)): which
/// bound, the growth asked for, the bound and what is held. An agent is
/// told it in words (`limit-exceeded`); an API client gets it as
/// [`HostError::StateBudget`](crate::HostError::StateBudget); another
/// cell's task refused with it is recorded with it in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateRefusal {
    /// All trees together would pass the budget.
    #[error(
        "the host's memory for agent state is spent: {} more would pass its budget of {} ({} held)",
        Size(*growth),
        Size(*budget),
        Size(*held)
    )]
    Host {
        /// The growth asked for.
        growth: u64,
        /// The budget ([`HostConfig::state_budget`](crate::HostConfig::state_budget)).
        budget: u64,
        /// Held by all trees.
        held: u64,
    },
    /// The agent's tree would pass its share.
    #[error(
        "the agent's tree holds its share of the host's memory for agent state: {} more would pass the share of {} ({} held by the tree: its agents' state, {} per agent not forgotten, its tasks not yet ended, its running tasks' journals)",
        Size(*growth),
        Size(*share),
        Size(*held),
        Size(AGENT_RECORD_BYTES)
    )]
    Tree {
        /// The growth asked for.
        growth: u64,
        /// The most one tree holds.
        share: u64,
        /// Held by the tree.
        held: u64,
    },
    /// The agent's tree has as many tasks waiting in the cell's outbox as
    /// one tree may (256: one agent's worth, [`toka_kernel::MAX_OUTBOX_PER_AGENT`]).
    #[error(
        "the agent's tree has {held} tasks waiting to be sent to other cells, the most one tree may have; they leave as the host hands them to JetStream"
    )]
    Outbox {
        /// The tree's tasks in the outbox.
        held: usize,
    },
    /// The tasks other cells' agents sent would pass one tree's share.
    #[error(
        "the tasks other cells sent hold their share of this cell's memory for agent state: {} more would pass the share of {} ({} held by their tasks not yet ended)",
        Size(*growth),
        Size(*share),
        Size(*held)
    )]
    OtherCells {
        /// The growth asked for.
        growth: u64,
        /// The most one tree holds.
        share: u64,
        /// Held by the tasks other cells sent.
        held: u64,
    },
    /// The tasks API clients queued would pass one tree's share.
    #[error(
        "the tasks operators queued hold their share of the host's memory for agent state: {} more would pass the share of {} ({} held by operators' tasks not yet ended); wait for some to end",
        Size(*growth),
        Size(*share),
        Size(*held)
    )]
    Operators {
        /// The growth asked for.
        growth: u64,
        /// The most one tree holds.
        share: u64,
        /// Held by the operators' tasks.
        held: u64,
    },
}

/// The refusal of a `growth` that would pass `over`.
fn refusal(over: Over, growth: u64) -> StateRefusal {
    match over {
        Over::Total { total, held } => StateRefusal::Host {
            growth,
            budget: total,
            held,
        },
        Over::Share { share, held } => StateRefusal::Tree {
            growth,
            share,
            held,
        },
    }
}

/// The agents' state at one moment (see [`Host::state_usage`](crate::Host::state_usage)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateUsage {
    /// Bytes all trees' agents may hold in the kernel's state together
    /// ([`HostConfig::state_budget`](crate::HostConfig::state_budget)).
    pub budget: u64,
    /// Bytes one tree may hold.
    pub per_tree: u64,
    /// Bytes held now: state keys and values, a fixed charge per agent
    /// record, the tasks not yet ended, and the running tasks' journals.
    pub held: u64,
}

impl StateBudget {
    /// A budget of `total` bytes, at most `per_tree` of them (at most
    /// `total`) held by one tree, counting what `state`, of the cluster's
    /// cell `cell` if any, holds already.
    pub(crate) fn new(
        total: u64,
        per_tree: u64,
        state: &WorldState,
        cell: Option<Cell>,
    ) -> StateBudget {
        let mut budget = StateBudget {
            shares: Shares::new(total, per_tree),
            tasks: HashMap::default(),
            journals: HashMap::default(),
            outbox: BTreeMap::new(),
            outbox_of: HashMap::default(),
            cell,
        };
        // An agent's id is higher than its parent's, so in id order a
        // parent's tree is known when its children come; the walk up is
        // for an order no valid state has.
        let mut trees: HashMap<AgentId, AgentId, IdHash> =
            HashMap::with_capacity_and_hasher(state.agents().len(), IdHash);
        for (id, agent) in state.agents() {
            let tree = match trees.get(&agent.parent) {
                Some(tree) => *tree,
                None => tree_of(state, id),
            };
            trees.insert(id, tree);
            budget
                .shares
                .add(tree, AGENT_RECORD_BYTES + agent.state_bytes);
        }
        for (task, record) in state.tasks() {
            let tree = trees
                .get(&record.by)
                .copied()
                .unwrap_or_else(|| counted_to(state, record.by));
            let bytes = task_bytes(&record.spec);
            budget.shares.add(tree, bytes);
            budget.tasks.insert(task, (tree, bytes));
            if let Some(run) = record.status.run() {
                let tree = trees
                    .get(&record.agent)
                    .copied()
                    .unwrap_or_else(|| tree_of(state, record.agent));
                let bytes = journal_bytes(state, task, run);
                budget.shares.add(tree, bytes);
                budget.journals.insert(task, (tree, bytes));
            }
        }
        for (seq, parcel) in state.outbox() {
            if let Parcel::Task(sent) = parcel {
                budget.sent(state, seq, sent.by, &sent.spec);
            }
        }
        budget
    }

    /// Refuses `agent`'s operation `op`, made by its running task `cause`
    /// names (if any), when what it would add passes the budget or its
    /// tree's share: a state write that grows the agent's state, a task it
    /// schedules, the task's journal entry (less what a state write
    /// frees), an HTTP request's exchange; and a task for another cell's
    /// agent when its tree has [`OUTBOX_PER_TREE`] in the outbox. A delete
    /// of a key the agent holds frees all but a few hundred bytes of what
    /// its entry holds (the entry, the key): it is refused only once the
    /// tree is past its share, so an agent whose tree is at its share can
    /// still clear its state in a task.
    ///
    /// # Errors
    ///
    /// [`StateRefusal`] when the budget or the tree's share would be passed.
    pub(crate) fn admit_op(
        &self,
        state: &WorldState,
        agent: AgentId,
        cause: Option<OpKey>,
        op: &Operation,
    ) -> Result<(), StateRefusal> {
        let journal = cause.map_or(0, |key| journal_growth(state, agent, key, op));
        let old = |key: &str| state.agent(agent).and_then(|a| a.state.get(key));
        // What the operation adds to the agent's state, and what it frees.
        let (adds, frees) = match op {
            Operation::PutState { key, value } => match old(key) {
                Some(old) => (value.len() as u64, old.len() as u64),
                None => ((key.len() + value.len()) as u64, 0),
            },
            Operation::DeleteState { key } => {
                (0, old(key).map_or(0, |v| (key.len() + v.len()) as u64))
            }
            Operation::ScheduleTask { spec, .. } | Operation::ScheduleTaskOnce { spec, .. } => {
                (task_bytes(spec), 0)
            }
            // Made outside the task's operations (it takes no entry), kept
            // with its journal.
            Operation::HttpRequest { .. } => (EXCHANGE_BYTES, 0),
            _ => (0, 0),
        };
        let growth = (adds + journal).saturating_sub(frees);
        if growth == 0 {
            return Ok(());
        }
        let tree = self.tree_running(state, agent, cause.map(|key| key.task));
        if let Operation::ScheduleTask { agent: target, .. }
        | Operation::ScheduleTaskOnce { agent: target, .. } = op
            && self.cell.is_some_and(|cell| target.cell() != cell.index)
        {
            let held = self.outbox_of.get(&tree).copied().unwrap_or(0);
            if held >= OUTBOX_PER_TREE {
                return Err(StateRefusal::Outbox { held });
            }
        }
        if matches!(op, Operation::DeleteState { .. }) && frees > 0 {
            return self
                .shares
                .check(tree, 0)
                .map_err(|over| refusal(over, growth));
        }
        self.admit(tree, growth)
    }

    /// The tree of `agent`, running `task` (if any): the
    /// one its journal is counted to, without a walk up the tree once the
    /// task has an entry.
    fn tree_running(&self, state: &WorldState, agent: AgentId, task: Option<TaskId>) -> AgentId {
        task.and_then(|task| self.journals.get(&task))
            .map_or_else(|| tree_of(state, agent), |(tree, _)| *tree)
    }

    /// Refuses an API client's command that would hold more than the
    /// budget allows: a root agent (its record, in a tree of its own) past
    /// the budget; a task past the budget or the operators' share (their
    /// tasks count to no agent's tree: together they are held to one
    /// tree's share). The host's own caller is never refused.
    ///
    /// # Errors
    ///
    /// [`StateRefusal`] when the bound would be passed.
    pub(crate) fn admit_operator(
        &self,
        state: &WorldState,
        op: &Operation,
    ) -> Result<(), StateRefusal> {
        match op {
            // A key scheduled under before: the kernel answers with that
            // task (or refuses the key's reuse); nothing grows.
            Operation::ScheduleTaskOnce { key, .. } if state.scheduled_under(key).is_some() => {
                Ok(())
            }
            // A tree of its own, holding nothing yet: only the budget can
            // be passed.
            Operation::SpawnAgent { .. } | Operation::SpawnAgentSized { .. } => self
                .shares
                .check_total(AGENT_RECORD_BYTES)
                .map_err(|over| refusal(over, AGENT_RECORD_BYTES)),
            // For an agent not here (unknown: the kernel refuses; in
            // another cell of a cluster: the task waits in the outbox,
            // which the kernel bounds) or terminated, the kernel answers.
            Operation::ScheduleTask { agent, .. } | Operation::ScheduleTaskOnce { agent, .. }
                if state.agent(*agent).is_none_or(|a| a.is_terminated()) =>
            {
                Ok(())
            }
            // The operators' tasks are counted as one more tree's.
            Operation::ScheduleTask { spec, .. } | Operation::ScheduleTaskOnce { spec, .. } => {
                let growth = task_bytes(spec);
                self.shares
                    .check(EntityId::SYSTEM, growth)
                    .map_err(|over| match over {
                        Over::Share { share, held } => StateRefusal::Operators {
                            growth,
                            share,
                            held,
                        },
                        total => refusal(total, growth),
                    })
            }
            _ => Ok(()),
        }
    }

    /// Refuses a task another cell sent (in `delivery`) that would pass the
    /// budget or the share of what other cells' agents sent (of the
    /// operators' tasks, if an operator scheduled it there). A change of the configuration,
    /// and a task the kernel refuses anyway (for an agent not here or
    /// terminated, or a task known already), pass.
    ///
    /// # Errors
    ///
    /// [`StateRefusal`] when the bound would be passed.
    pub(crate) fn admit_delivery(
        &self,
        state: &WorldState,
        delivery: &Delivery,
    ) -> Result<(), StateRefusal> {
        let Parcel::Task(sent) = &delivery.parcel else {
            return Ok(());
        };
        if state.agent(sent.agent).is_none_or(|a| a.is_terminated())
            || state.task(sent.task).is_some()
        {
            return Ok(());
        }
        let growth = task_bytes(&sent.spec);
        self.shares
            .check(counted_to(state, sent.by), growth)
            .map_err(|over| match over {
                Over::Share { share, held } if sent.by == EntityId::SYSTEM => {
                    StateRefusal::Operators {
                        growth,
                        share,
                        held,
                    }
                }
                Over::Share { share, held } => StateRefusal::OtherCells {
                    growth,
                    share,
                    held,
                },
                total => refusal(total, growth),
            })
    }

    /// Refuses a spawn by `agent` (by its running task `cause` names, if
    /// any) when one more agent record, and the task's journal entry,
    /// pass the budget or its tree's share (checked before the child's
    /// token is minted, so a tree at its share makes the host spend
    /// nothing on it).
    ///
    /// # Errors
    ///
    /// [`StateRefusal`] when the budget or the tree's share would be passed.
    pub(crate) fn admit_spawn(
        &self,
        state: &WorldState,
        agent: AgentId,
        cause: Option<OpKey>,
    ) -> Result<(), StateRefusal> {
        let journal = cause.map_or(0, |_| JOURNAL_ENTRY_BYTES + JOURNAL_DID_BYTES);
        self.admit(
            self.tree_running(state, agent, cause.map(|key| key.task)),
            AGENT_RECORD_BYTES + journal,
        )
    }

    /// Counts what the `applied` command changed, with `state` after it:
    /// a state write or delete (`state_before`: its agent and the agent's
    /// state bytes before), a spawn, a task scheduled or ended, the entry
    /// of a running task's journal.
    pub(crate) fn applied(
        &mut self,
        state: &WorldState,
        state_before: Option<(AgentId, u64)>,
        applied: &Applied,
    ) {
        if let Some(key) = applied.cause {
            self.journaled(state, applied.origin, key, applied.seq);
        }
        let events = &applied.events;
        if let Some((agent, before)) = state_before {
            let after = state.agent(agent).map_or(0, |a| a.state_bytes);
            let tree = tree_of(state, agent);
            if after >= before {
                self.shares.add(tree, after - before);
            } else {
                self.shares.sub(tree, before - after);
            }
        }
        for event in events {
            match event {
                Event::AgentSpawned { agent, .. } => {
                    self.shares.add(tree_of(state, *agent), AGENT_RECORD_BYTES);
                }
                Event::AgentForgotten {
                    root, state_bytes, ..
                } => {
                    self.shares.sub(*root, AGENT_RECORD_BYTES + state_bytes);
                }
                Event::TaskScheduled { task, by, spec, .. } => {
                    self.scheduled(state, *task, *by, spec);
                }
                Event::TaskSent { by, spec, .. } => self.sent(state, applied.seq, *by, spec),
                Event::TasksSent { through, .. } => {
                    let kept = self.outbox.split_off(&through.saturating_add(1));
                    for (tree, bytes) in std::mem::replace(&mut self.outbox, kept).into_values() {
                        self.shares.sub(tree, bytes);
                        if let Some(held) = self.outbox_of.get_mut(&tree) {
                            *held -= 1;
                            if *held == 0 {
                                self.outbox_of.remove(&tree);
                            }
                        }
                    }
                }
                Event::HttpRequested { agent, task, .. } => {
                    self.journal_grew(state, *agent, *task, EXCHANGE_BYTES);
                }
                Event::TaskCompleted { task, .. } | Event::TaskFailed { task, .. } => {
                    let ended = [self.tasks.remove(task), self.journals.remove(task)];
                    for (tree, bytes) in ended.into_iter().flatten() {
                        self.shares.sub(tree, bytes);
                    }
                }
                _ => {}
            }
        }
    }

    /// Counts the entry `agent`'s operation applied as record `seq` added
    /// to the journal of the task `key` names, if it is still running.
    fn journaled(&mut self, state: &WorldState, agent: AgentId, key: OpKey, seq: u64) {
        let Some(run) = running(state, key) else {
            return;
        };
        let Some(entry) = run.journal.last().filter(|e| e.seq == seq) else {
            return;
        };
        let gap = run.gaps.last().is_some_and(|g| g.seq == seq);
        let bytes =
            JOURNAL_ENTRY_BYTES + did_bytes(entry) + if gap { JOURNAL_GAP_BYTES } else { 0 };
        self.journal_grew(state, agent, key.task, bytes);
    }

    /// Counts `bytes` more held for the journal of `agent`'s running task
    /// `task`.
    fn journal_grew(&mut self, state: &WorldState, agent: AgentId, task: TaskId, bytes: u64) {
        let tree = self.tree_running(state, agent, Some(task));
        self.shares.add(tree, bytes);
        self.journals.entry(task).or_insert((tree, 0)).1 += bytes;
    }

    /// Counts `task`, scheduled `by` an agent, an operator or another cell
    /// (see [`counted_to`]).
    fn scheduled(&mut self, state: &WorldState, task: TaskId, by: EntityId, spec: &TaskSpec) {
        let (tree, bytes) = (counted_to(state, by), task_bytes(spec));
        self.shares.add(tree, bytes);
        self.tasks.insert(task, (tree, bytes));
    }

    /// Counts the task record `seq` put in the outbox, scheduled `by` an
    /// agent or an operator for an agent of another cell.
    fn sent(&mut self, state: &WorldState, seq: u64, by: EntityId, spec: &TaskSpec) {
        let (tree, bytes) = (counted_to(state, by), task_bytes(spec));
        self.shares.add(tree, bytes);
        self.outbox.insert(seq, (tree, bytes));
        *self.outbox_of.entry(tree).or_default() += 1;
    }

    /// Whether `tree` may hold `growth` more bytes.
    fn admit(&self, tree: AgentId, growth: u64) -> Result<(), StateRefusal> {
        self.shares
            .check(tree, growth)
            .map_err(|over| refusal(over, growth))
    }

    /// The bounds and what is held.
    pub(crate) fn usage(&self) -> StateUsage {
        let figures = self.shares.figures();
        StateUsage {
            budget: figures.total,
            per_tree: figures.per_tree,
            held: figures.held,
        }
    }
}

/// An eighth of the memory this process may use where it can be read (the
/// memory budget's default is half; the host holds the state up to three
/// times): the default budget.
pub(crate) fn default_budget() -> u64 {
    crate::sandbox::memory::default_budget() / 4
}

#[cfg(test)]
mod tests {
    use toka_kernel::{
        AgentSpec, ComponentSpec, Digest, EntityId, Event, OpKey, Operation, WorldState,
    };

    use crate::runtime::sequencer::state_budget::{
        AGENT_RECORD_BYTES, EXCHANGE_BYTES, JOURNAL_DID_BYTES, JOURNAL_ENTRY_BYTES,
        OUTBOX_PER_TREE, StateBudget, StateRefusal, TASK_RECORD_BYTES,
    };

    /// The component every test agent runs.
    fn component() -> Digest {
        Digest::of(b"c")
    }

    /// Installing [`component`].
    fn install_op() -> Operation {
        Operation::InstallComponent {
            component: Box::new(ComponentSpec {
                digest: component(),
                name: "c".into(),
                size: 1,
            }),
        }
    }

    /// Spawning an agent `name` of [`component`].
    fn spawn_op(name: &str) -> Operation {
        Operation::SpawnAgent {
            spec: Box::new(AgentSpec {
                component: component(),
                name: name.into(),
                token: Digest::of(name.as_bytes()),
                rights: Vec::new(),
            }),
        }
    }

    #[test]
    fn a_refusal_names_the_bound_and_what_is_held() {
        let (a, b) = (EntityId::from_u128(1), EntityId::from_u128(2));
        let mut budget = StateBudget::new(10_000, 6_000, &WorldState::default(), None);
        budget.shares.add(a, 5_000);
        assert_eq!(
            budget.admit(a, 1_001),
            Err(StateRefusal::Tree {
                growth: 1_001,
                share: 6_000,
                held: 5_000
            })
        );
        budget.shares.add(b, 4_000);
        assert_eq!(
            budget.admit(b, 1_001),
            Err(StateRefusal::Host {
                growth: 1_001,
                budget: 10_000,
                held: 9_000
            })
        );
        assert!(
            StateRefusal::Tree {
                growth: 60 << 10,
                share: 1 << 20,
                held: 1000 << 10
            }
            .to_string()
            .contains("60KiB more would pass the share of 1MiB (1000KiB held by the tree")
        );
    }

    #[test]
    fn api_clients_are_held_to_the_budget_and_their_tasks_to_one_share() {
        use toka_kernel::{Command, Kernel, Limits, TaskSpec, Timestamp};
        let mut kernel = Kernel::new(Limits::default());
        let mut apply = |op: Operation| {
            kernel
                .apply(Command::system(EntityId::SYSTEM, Timestamp(1), op))
                .unwrap()
                .events
                .iter()
                .find_map(Event::created)
        };
        apply(install_op());
        let spawn = spawn_op("a");
        let agent = apply(spawn.clone()).unwrap();
        let task = |agent: EntityId, bytes: usize| Operation::ScheduleTask {
            agent,
            spec: TaskSpec {
                description: "x".repeat(bytes),
            },
        };
        let keyed = Operation::ScheduleTaskOnce {
            key: "k".into(),
            agent,
            spec: TaskSpec {
                description: "x".repeat(1_000),
            },
        };
        apply(keyed.clone());
        let state = kernel.state();

        let mut budget = StateBudget::new(10_000, 6_000, &WorldState::default(), None);
        assert_eq!(budget.admit_operator(state, &task(agent, 100)), Ok(()));
        // The operators' tasks hold 5 000 of their share of 6 000.
        budget.shares.add(EntityId::SYSTEM, 5_000);
        let growth = TASK_RECORD_BYTES + 1_000;
        let operators = StateRefusal::Operators {
            growth,
            share: 6_000,
            held: 5_000,
        };
        assert_eq!(
            budget.admit_operator(state, &task(agent, 1_000)),
            Err(operators.clone())
        );
        assert!(operators.to_string().contains("wait for some to end"));
        // A key scheduled under before holds nothing more; an agent not
        // here is the kernel's to answer.
        assert_eq!(budget.admit_operator(state, &keyed), Ok(()));
        let elsewhere = EntityId::from_u128(u128::MAX);
        assert_eq!(
            budget.admit_operator(state, &task(elsewhere, 1_000)),
            Ok(())
        );
        // Agents hold the rest: a root agent would pass the budget.
        budget.shares.add(agent, 4_500);
        assert_eq!(
            budget.admit_operator(state, &spawn),
            Err(StateRefusal::Host {
                growth: AGENT_RECORD_BYTES,
                budget: 10_000,
                held: 9_500
            })
        );
        // Other operations are not the budget's concern.
        let terminate = Operation::TerminateAgent {
            agent,
            reason: "r".into(),
        };
        assert_eq!(budget.admit_operator(state, &terminate), Ok(()));
    }

    #[test]
    fn what_a_state_holds_is_counted_under_each_agents_tree() {
        use toka_kernel::{
            Command, HttpFailure, HttpOutcome, HttpRequest, Kernel, Limits, TaskId, TaskSpec,
            Timestamp,
        };
        let mut kernel = Kernel::new(Limits::default());
        // Counted as the sequencer counts, command by command.
        let mut counted = StateBudget::new(u64::MAX, u64::MAX, kernel.state(), kernel.cell());
        let mut apply = |cause: Option<OpKey>, origin: EntityId, op: Operation| {
            let before = match &op {
                Operation::PutState { .. } | Operation::DeleteState { .. } => kernel
                    .state()
                    .agent(origin)
                    .map(|a| (origin, a.state_bytes)),
                _ => None,
            };
            let command = Command {
                cause,
                ..Command::system(origin, Timestamp(1), op)
            };
            let applied = kernel.apply(command).unwrap();
            counted.applied(kernel.state(), before, &applied);
            applied.events.iter().find_map(Event::created)
        };
        let spawn = spawn_op;
        let put = |key: &str, len: usize| Operation::PutState {
            key: key.into(),
            value: vec![0; len],
        };
        // An HTTP request is made outside the task's operations (it takes
        // no entry); what the kernel keeps of it goes with the task.
        let request = |task: TaskId, index: u32| Operation::HttpRequest {
            task,
            index,
            request: Box::new(HttpRequest {
                method: "GET".into(),
                url: "http://example.test/".into(),
                headers: Digest::of(b""),
                body: Digest::of(b""),
                body_len: 0,
            }),
        };
        let schedule = |agent: EntityId, description: &str| Operation::ScheduleTask {
            agent,
            spec: TaskSpec {
                description: description.into(),
            },
        };
        apply(None, EntityId::SYSTEM, install_op());
        let root = apply(None, EntityId::SYSTEM, spawn("root")).unwrap();
        let child = apply(None, root, spawn("child")).unwrap();
        let grandchild = apply(None, child, spawn("grandchild")).unwrap();
        let other = apply(None, EntityId::SYSTEM, spawn("other")).unwrap();
        apply(None, grandchild, put("k", 100));
        apply(None, grandchild, put("k", 50));
        apply(None, root, put("ab", 10));
        apply(None, root, put("gone", 1_000));
        apply(None, root, Operation::DeleteState { key: "gone".into() });
        apply(None, other, put("x", 1));
        // By an agent: its tree's; by the operator: not the target's.
        apply(None, child, schedule(other, "abcd"));
        apply(None, EntityId::SYSTEM, schedule(other, "ab"));
        let done = apply(None, EntityId::SYSTEM, schedule(root, "done")).unwrap();
        apply(None, root, Operation::StartTask { task: done });
        apply(
            None,
            root,
            Operation::CompleteTask {
                task: done,
                output: Vec::new(),
            },
        );

        // A running task's journal is counted to the tree of the agent
        // running it, entry by entry, until the task ends.
        let running = apply(None, EntityId::SYSTEM, schedule(child, "run")).unwrap();
        apply(None, child, Operation::StartTask { task: running });
        let by = |index| {
            Some(OpKey {
                task: running,
                index,
            })
        };
        apply(by(0), child, put("j", 10));
        apply(by(1), child, put("j", 20));
        apply(
            by(2),
            child,
            Operation::EmitObservation {
                topic: None,
                data: vec![1],
            },
        );
        apply(None, child, request(running, 0));
        apply(
            None,
            child,
            Operation::HttpResponse {
                task: running,
                index: 0,
                outcome: Box::new(HttpOutcome::Failed {
                    failure: HttpFailure::Timeout,
                    message: "slow".into(),
                }),
                secret: None,
            },
        );
        let ended = apply(None, EntityId::SYSTEM, schedule(root, "ended")).unwrap();
        apply(None, root, Operation::StartTask { task: ended });
        apply(
            Some(OpKey {
                task: ended,
                index: 0,
            }),
            root,
            put("y", 1),
        );
        apply(None, root, request(ended, 0));
        apply(
            None,
            root,
            Operation::FailTask {
                task: ended,
                reason: "gone".into(),
            },
        );

        // Forgotten once terminated: its record and state are given back.
        apply(
            None,
            EntityId::SYSTEM,
            Operation::TerminateAgent {
                agent: grandchild,
                reason: "done".into(),
            },
        );
        apply(None, EntityId::SYSTEM, Operation::ForgetTerminated);
        assert!(kernel.state().agent(grandchild).is_none());

        let task = |len: u64| TASK_RECORD_BYTES + len;
        let journal = 3 * JOURNAL_ENTRY_BYTES + 2 * JOURNAL_DID_BYTES + 2 + 1 + EXCHANGE_BYTES;
        let root_holds = 2 * AGENT_RECORD_BYTES + 12 + 21 + 2 + task(4) + journal;
        let other_holds = AGENT_RECORD_BYTES + 2;
        let operator_holds = task(2) + task(3);
        let derived = StateBudget::new(u64::MAX, u64::MAX, kernel.state(), kernel.cell());
        for budget in [&counted, &derived] {
            assert_eq!(budget.shares.held_by(root), root_holds);
            assert_eq!(budget.shares.held_by(other), other_holds);
            assert_eq!(budget.shares.held_by(EntityId::SYSTEM), operator_holds);
            assert_eq!(
                budget.usage().held,
                root_holds + other_holds + operator_holds
            );
            assert_eq!(budget.tasks.len(), 3);
            assert_eq!(budget.journals.len(), 1);
        }

        // The task's next operation needs room for its entry, and a first
        // write of a key for what the entry keeps of it.
        let state = kernel.state();
        let tight = StateBudget::new(u64::MAX, root_holds + 170, state, None);
        let observe = Operation::EmitObservation {
            topic: None,
            data: Vec::new(),
        };
        assert_eq!(tight.admit_op(state, child, by(3), &observe), Ok(()));
        assert_eq!(tight.admit_op(state, child, by(3), &put("j", 20)), Ok(()));
        // The key and value, and the entry with the key twice.
        let first = 7 + 1 + JOURNAL_ENTRY_BYTES + JOURNAL_DID_BYTES + 2 * 7;
        assert_eq!(
            tight.admit_op(state, child, by(3), &put("new-key", 1)),
            Err(StateRefusal::Tree {
                growth: first,
                share: root_holds + 170,
                held: root_holds
            })
        );
        // Outside a task (the agent's `init`) there is no entry.
        assert_eq!(tight.admit_op(state, child, None, &observe), Ok(()));
        // A tree at its share still deletes what it holds, in a task; one
        // past it does not.
        let delete = Operation::DeleteState { key: "j".into() };
        let full = StateBudget::new(u64::MAX, root_holds, state, None);
        assert_eq!(full.admit_op(state, child, by(3), &delete), Ok(()));
        assert!(full.admit_op(state, child, by(3), &observe).is_err());
        let over = StateBudget::new(u64::MAX, root_holds - 1, state, None);
        assert!(over.admit_op(state, child, by(3), &delete).is_err());
        // A request needs room for its exchange.
        assert_eq!(
            full.admit_op(state, child, None, &request(running, 1)),
            Err(StateRefusal::Tree {
                growth: EXCHANGE_BYTES,
                share: root_holds,
                held: root_holds
            })
        );
        assert_eq!(
            tight.admit_op(state, child, None, &request(running, 1)),
            Ok(())
        );
    }

    #[test]
    fn tasks_for_other_cells_are_counted_until_handed_to_jetstream() {
        use toka_kernel::{Cell, Command, Kernel, Limits, TaskSpec, Timestamp};
        let cell = Cell { index: 0, cells: 2 };
        let mut kernel = Kernel::new(Limits::default()).in_cell(Some(cell));
        let mut counted = StateBudget::new(u64::MAX, u64::MAX, kernel.state(), kernel.cell());
        let apply =
            |kernel: &mut Kernel, counted: &mut StateBudget, origin: EntityId, op: Operation| {
                let applied = kernel
                    .apply(Command::system(origin, Timestamp(1), op))
                    .unwrap();
                counted.applied(kernel.state(), None, &applied);
                (applied.seq, applied.events.iter().find_map(Event::created))
            };
        apply(&mut kernel, &mut counted, EntityId::SYSTEM, install_op());
        let (_, root) = apply(
            &mut kernel,
            &mut counted,
            EntityId::SYSTEM,
            spawn_op("root"),
        );
        let root = root.unwrap();
        // An agent of cell 1 (the top 16 bits of its id).
        let remote = EntityId::from_u128((1u128 << 112) | 7);
        let schedule = |description: &str| Operation::ScheduleTask {
            agent: remote,
            spec: TaskSpec {
                description: description.into(),
            },
        };
        let (first, _) = apply(&mut kernel, &mut counted, root, schedule("abcd"));
        apply(&mut kernel, &mut counted, EntityId::SYSTEM, schedule("ab"));
        assert_eq!(kernel.state().outbox().len(), 2);
        let task = |len: u64| TASK_RECORD_BYTES + len;
        let holds =
            |budget: &StateBudget| [root, EntityId::SYSTEM].map(|tree| budget.shares.held_by(tree));
        let derived = StateBudget::new(u64::MAX, u64::MAX, kernel.state(), kernel.cell());
        for budget in [&counted, &derived] {
            assert_eq!(holds(budget), [AGENT_RECORD_BYTES + task(4), task(2)]);
        }

        // Handed on in order: the root's first, then the operator's.
        let hand_on = |kernel: &mut Kernel, counted: &mut StateBudget, through: u64| {
            apply(
                kernel,
                counted,
                EntityId::SYSTEM,
                Operation::MarkSent { through },
            );
        };
        hand_on(&mut kernel, &mut counted, first);
        let derived = StateBudget::new(u64::MAX, u64::MAX, kernel.state(), kernel.cell());
        for budget in [&counted, &derived] {
            assert_eq!(holds(budget), [AGENT_RECORD_BYTES, task(2)]);
        }
        let head = kernel.head().seq;
        hand_on(&mut kernel, &mut counted, head);
        assert_eq!(kernel.state().outbox().len(), 0);
        assert_eq!(holds(&counted), [AGENT_RECORD_BYTES, 0]);
        assert_eq!(counted.usage().held, AGENT_RECORD_BYTES);

        // A tree's agents together have one agent's worth of the outbox.
        let (_, child) = apply(&mut kernel, &mut counted, root, spawn_op("child"));
        let child = child.unwrap();
        for n in 0..OUTBOX_PER_TREE {
            let by = if n % 2 == 0 { root } else { child };
            assert_eq!(
                counted.admit_op(kernel.state(), by, None, &schedule("t")),
                Ok(())
            );
            apply(&mut kernel, &mut counted, by, schedule("t"));
        }
        let refused = Err(StateRefusal::Outbox {
            held: OUTBOX_PER_TREE,
        });
        let derived = StateBudget::new(u64::MAX, u64::MAX, kernel.state(), kernel.cell());
        for (budget, by) in [(&counted, root), (&counted, child), (&derived, child)] {
            assert_eq!(
                budget.admit_op(kernel.state(), by, None, &schedule("t")),
                refused
            );
        }
        // A task for an agent of its own cell is not held to it.
        let local = Operation::ScheduleTask {
            agent: child,
            spec: TaskSpec {
                description: "here".into(),
            },
        };
        assert_eq!(counted.admit_op(kernel.state(), root, None, &local), Ok(()));
        // Handed on, they leave room again.
        let head = kernel.head().seq;
        hand_on(&mut kernel, &mut counted, head);
        assert_eq!(
            counted.admit_op(kernel.state(), child, None, &schedule("t")),
            Ok(())
        );
        assert!(counted.outbox_of.is_empty());
    }
}

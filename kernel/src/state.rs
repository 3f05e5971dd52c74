//! The world state: everything the kernel knows, in ordered maps only.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::command::Timestamp;
use crate::http::Exchange;
use crate::id::{AgentId, Digest, EntityId, TaskId};
use crate::idempotency::Idempotency;
use crate::mail::{Mail, Parcel};
use crate::operation::{ComponentSpec, TaskSpec};
use crate::package::{PackageRecord, Publisher};
use crate::quota::Account;
use crate::rules::{Budgets, Rules};

/// Whether an agent still takes tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentStatus {
    /// Runs tasks.
    Active,
    /// Stopped for good; its tasks failed.
    Terminated {
        /// Why.
        reason: String,
    },
    /// Faulted too often: it takes tasks into its queue but runs none until
    /// an operator resumes it.
    Quarantined {
        /// Why.
        reason: String,
    },
}

/// One agent, as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentRecord {
    /// Display name.
    pub name: String,
    /// Digest of the component it runs.
    pub component: Digest,
    /// Its parent, or [`EntityId::SYSTEM`].
    pub parent: EntityId,
    /// Digest of the token it is bound to.
    pub token: Digest,
    /// Active or terminated.
    pub status: AgentStatus,
    /// Tasks waiting, oldest first.
    pub queue: VecDeque<TaskId>,
    /// The task it is running, if any.
    pub running: Option<TaskId>,
    /// Tasks it completed.
    pub completed: u64,
    /// Tasks of it that failed.
    pub failed: u64,
    /// Faults in a row (a completed task resets it).
    pub consecutive_faults: u32,
    /// Its durable key/value namespace.
    #[serde(with = "crate::serde_bytes::map")]
    pub state: BTreeMap<String, Vec<u8>>,
    /// Bytes of keys plus values in `state`.
    pub state_bytes: u64,
    /// How many spawns separate it from the operator (a root agent: 0).
    pub depth: u32,
    /// Its children that are not terminated.
    pub live_children: u32,
    /// Its own limits below the rules' quotas (from its token's budgets).
    pub budgets: Option<Box<Budgets>>,
    /// What it and its descendants have spent.
    pub account: Account,
}

impl AgentRecord {
    /// Whether the agent is [`AgentStatus::Active`].
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.status == AgentStatus::Active
    }

    /// Whether the agent is [`AgentStatus::Terminated`].
    #[must_use]
    pub fn is_terminated(&self) -> bool {
        matches!(self.status, AgentStatus::Terminated { .. })
    }
}

/// Where a task is in its lifecycle. Finished tasks leave the state; their
/// outcome lives in the log and in their agent's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// In its agent's queue.
    Queued,
    /// Running.
    Running(Run),
}

impl TaskStatus {
    /// The run, if the task is running.
    #[must_use]
    pub fn run(&self) -> Option<&Run> {
        match self {
            TaskStatus::Running(run) => Some(run),
            TaskStatus::Queued => None,
        }
    }
}

/// A running task: when it started, and what each of its operations did.
///
/// The journal is what makes a re-run after a crash apply each operation
/// exactly once: the host answers a re-run's operation `i` from entry `i`
/// instead of applying it again, and answers the agent's state reads as they
/// were at that point, from what each write replaced ([`Replaced`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RunWire")]
#[non_exhaustive]
pub struct Run {
    /// Sequence number of the `StartTask` record.
    pub started_seq: u64,
    /// Logical time of the `StartTask` record: what the task's clock reads.
    pub started_at: Timestamp,
    /// One entry per operation of the task that was applied, in order.
    pub journal: Vec<JournalEntry>,
    /// Runs of indices whose operations were refused, in order (from rules
    /// version 2 on; before, a refused operation took no index).
    pub gaps: Vec<Gap>,
    /// The index the task's next operation must carry in its
    /// [`OpKey`](crate::OpKey): every operation the task submitted so far,
    /// applied or refused.
    pub next_index: u32,
    /// The state keys the journal wrote (derived from it, not encoded).
    #[serde(skip)]
    written: BTreeSet<String>,
}

/// [`Run`] as encoded: the same fields without what is derived.
#[derive(Deserialize)]
struct RunWire {
    started_seq: u64,
    started_at: Timestamp,
    journal: Vec<JournalEntry>,
    gaps: Vec<Gap>,
    next_index: u32,
}

impl From<RunWire> for Run {
    fn from(wire: RunWire) -> Run {
        let mut run = Run::started(wire.started_seq, wire.started_at);
        run.gaps = wire.gaps;
        run.next_index = wire.next_index;
        for entry in wire.journal {
            run.push(entry);
        }
        run
    }
}

impl Run {
    /// A task that started at record `seq`, at logical time `at`.
    pub(crate) fn started(seq: u64, at: Timestamp) -> Run {
        Run {
            started_seq: seq,
            started_at: at,
            journal: Vec::new(),
            gaps: Vec::new(),
            next_index: 0,
            written: BTreeSet::new(),
        }
    }

    /// Appends an entry.
    pub(crate) fn push(&mut self, entry: JournalEntry) {
        let key = match entry.prior() {
            Replaced::First(prior) => Some(&prior.key),
            Replaced::Rewrite(rewrite) => Some(&rewrite.key),
            Replaced::Nothing => None,
        };
        // Most writes of a task rewrite a key it wrote: no copy of it then.
        if let Some(key) = key
            && !self.written.contains(key)
        {
            self.written.insert(key.clone());
        }
        self.journal.push(entry);
    }

    /// Turns a journal as snapshot format 6 and older kept it (a copy of
    /// what every write replaced) into what this release computes from the
    /// same log: a later write of a key the task wrote keeps no copy.
    pub(crate) fn drop_copied_priors(&mut self) {
        let mut seen = BTreeSet::new();
        for entry in &mut self.journal {
            let Replaced::First(prior) = entry.prior() else {
                continue;
            };
            if !seen.insert(prior.key.clone()) {
                let rewrite = Replaced::Rewrite(Box::new(Rewrite {
                    key: prior.key.clone(),
                    existed: prior.value.is_some(),
                }));
                entry.set_prior(rewrite);
            }
        }
    }

    /// Whether one of the task's operations wrote `key`.
    #[must_use]
    pub fn wrote(&self, key: &str) -> bool {
        self.written.contains(key)
    }

    /// The journal entry of the operation at `index`, if it was applied.
    #[must_use]
    pub fn entry(&self, index: u32) -> Option<&JournalEntry> {
        let at = self.journal.partition_point(|e| e.index < index);
        self.journal.get(at).filter(|e| e.index == index)
    }

    /// The gap holding `index`, if the operation there was refused.
    #[must_use]
    pub fn gap(&self, index: u32) -> Option<&Gap> {
        let at = self.gaps.partition_point(|g| g.first + g.count <= index);
        self.gaps.get(at).filter(|g| g.first <= index)
    }
}

/// Operations of a task that were refused: the indices an applied
/// operation skipped. A re-run of the task gets refusals at the same
/// indices, so every later operation keeps its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The index of the first refused operation.
    pub first: u32,
    /// How many indices in a row were refused.
    pub count: u32,
    /// The record of the applied operation that followed them.
    pub seq: u64,
    /// The record that lists what was refused and why
    /// ([`Operation::RecordRefusals`](crate::Operation::RecordRefusals)),
    /// when the host recorded it.
    pub details: Option<u64>,
}

/// What one operation of a running task did.
///
/// A running task keeps one per operation, so the common entry (an
/// operation that created nothing and wrote no state) is 24 bytes: what
/// else an operation did is boxed. Encoded as the four fields `index`,
/// `seq`, `created`, `prior`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "JournalEntryWire<Option<EntityId>, Replaced>")]
pub struct JournalEntry {
    /// The operation's index in its task (its [`OpKey`](crate::OpKey) index).
    pub index: u32,
    /// Its record's sequence number.
    pub seq: u64,
    /// What it created or replaced, when either.
    did: Option<Box<Did>>,
}

/// What an operation created or replaced (see [`JournalEntry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Did {
    created: Option<EntityId>,
    prior: Replaced,
}

/// What an entry of an operation that created nothing and wrote no state
/// replaced.
static NOTHING: Replaced = Replaced::Nothing;

impl JournalEntry {
    /// The entry of the operation at `index`, applied as record `seq`,
    /// which created `created` and replaced `prior`.
    #[must_use]
    pub fn new(index: u32, seq: u64, created: Option<EntityId>, prior: Replaced) -> JournalEntry {
        let did = (created.is_some() || !matches!(prior, Replaced::Nothing))
            .then(|| Box::new(Did { created, prior }));
        JournalEntry { index, seq, did }
    }

    /// The agent or task the operation created, if any.
    #[must_use]
    pub fn created(&self) -> Option<EntityId> {
        self.did.as_ref().and_then(|d| d.created)
    }

    /// For a state put or delete: what it replaced.
    #[must_use]
    pub fn prior(&self) -> &Replaced {
        self.did.as_ref().map_or(&NOTHING, |d| &d.prior)
    }

    /// Replaces what the entry says the operation replaced.
    pub(crate) fn set_prior(&mut self, prior: Replaced) {
        *self = JournalEntry::new(self.index, self.seq, self.created(), prior);
    }
}

/// [`JournalEntry`] as encoded.
#[derive(Serialize, Deserialize)]
#[serde(rename = "JournalEntry")]
struct JournalEntryWire<C, P> {
    index: u32,
    seq: u64,
    created: C,
    prior: P,
}

impl From<JournalEntryWire<Option<EntityId>, Replaced>> for JournalEntry {
    fn from(wire: JournalEntryWire<Option<EntityId>, Replaced>) -> JournalEntry {
        JournalEntry::new(wire.index, wire.seq, wire.created, wire.prior)
    }
}

impl Serialize for JournalEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        JournalEntryWire {
            index: self.index,
            seq: self.seq,
            created: self.created(),
            prior: self.prior(),
        }
        .serialize(serializer)
    }
}

/// What a state write inside a task replaced: enough to answer a re-run's
/// reads as they were before it.
///
/// A running task keeps an entry per operation (up to
/// [`Limits::max_ops_per_task`](crate::Limits::max_ops_per_task)), so only
/// a key's first write in the task keeps the value it replaced (part of
/// the agent's state when the task started, so bounded by
/// [`Limits::max_state_bytes`](crate::Limits::max_state_bytes)); a later
/// write keeps the key, its value before being what the task's previous
/// write of it put, which the log holds. A write of the key outside the
/// task in between (the agent's `init` in a new instance) makes the next
/// one a first write again.
///
/// Encoded as `Option<Box<Prior>>` was (0: none, 1: a prior), plus 2.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Replaced {
    /// The operation wrote no state.
    #[default]
    Nothing,
    /// The task's first write of the key: the value before the task wrote it.
    First(Box<Prior>),
    /// A later write of a key the task wrote before.
    Rewrite(Box<Rewrite>),
}

/// A key of an agent's state and its value before an operation changed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prior {
    /// The key.
    pub key: String,
    /// Its value before (`None`: it did not exist).
    #[serde(with = "crate::serde_bytes::option")]
    pub value: Option<Vec<u8>>,
}

/// A write of a key its task wrote before: the value it replaced is what
/// the task's previous write of the key put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    /// The key.
    pub key: String,
    /// Whether the key existed before (the previous write put a value; it
    /// did not delete it).
    pub existed: bool,
}

/// One unfinished task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The agent that runs it.
    pub agent: AgentId,
    /// Who scheduled it.
    pub by: EntityId,
    /// What to do.
    pub spec: TaskSpec,
    /// Queued or running.
    pub status: TaskStatus,
    /// Sequence number of the record that scheduled it. The host starts a
    /// task only once that record is durable.
    pub scheduled_seq: u64,
}

/// Everything the kernel knows.
///
/// Only ordered collections, so the canonical encoding, and with it
/// [`WorldState::digest`], is a function of the content alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldState {
    pub(crate) agents: BTreeMap<AgentId, AgentRecord>,
    pub(crate) tasks: BTreeMap<TaskId, TaskRecord>,
    pub(crate) components: BTreeMap<Digest, ComponentSpec>,
    /// Component name → digest of the latest install under that name.
    pub(crate) component_names: BTreeMap<String, Digest>,
    pub(crate) revoked: BTreeSet<Vec<u8>>,
    pub(crate) extensions: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Counter behind every derived id.
    pub(crate) next_id: u64,
    /// The logical time of the last applied command.
    pub(crate) time: Timestamp,
    /// The rules in force; `None` for a log written before rules were
    /// recorded (version 1 applies).
    pub(crate) rules: Option<Rules>,
    /// Agents that are not terminated.
    pub(crate) live_agents: u64,
    /// The most recent idempotency keys and what they scheduled. Last, so
    /// a state encoded before it existed is this encoding's prefix (see
    /// [`WorldState::from_bytes_v2`]).
    pub(crate) idempotency: Idempotency,
    /// The trust store: publishers by name. After the keys, so a state
    /// encoded before packages existed is this encoding's prefix (see
    /// [`WorldState::from_bytes_v3`]).
    pub(crate) publishers: BTreeMap<String, Publisher>,
    /// Installed packages, by name.
    pub(crate) packages: BTreeMap<String, PackageRecord>,
    /// The journaled HTTP requests of running tasks, by (task, request
    /// index). After the packages, so a state encoded before requests were
    /// journaled is this encoding's prefix (see
    /// [`WorldState::from_bytes_v4`]).
    pub(crate) exchanges: BTreeMap<(TaskId, u32), Exchange>,
    /// Tasks sent to and taken from other cells of a cluster. After the
    /// journaled requests, so a state encoded before cells exchanged tasks
    /// is this encoding's prefix (see [`WorldState::from_bytes_v5`]).
    pub(crate) mail: Mail,
    /// Per running task: keys its task wrote that the agent wrote since
    /// outside the task (its `init`, which runs outside any task, in a new
    /// instance between attempts): the task's next write of such a key
    /// keeps a copy of what it replaces ([`Replaced::First`]), which is not
    /// what the task's previous write put. Last, so a state encoded before
    /// it is this encoding's prefix (see [`WorldState::from_bytes_v6`]).
    pub(crate) overwritten: BTreeMap<TaskId, BTreeSet<String>>,
}

impl WorldState {
    /// The BLAKE3 digest of the canonical postcard encoding of the state.
    #[must_use]
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }

    /// The canonical postcard encoding (what [`WorldState::digest`] hashes and
    /// what a snapshot stores).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect(
            "the state is plain data (ordered maps, strings, integers): postcard encodes it",
        )
    }

    /// Decodes [`WorldState::to_bytes`].
    ///
    /// # Errors
    ///
    /// The postcard error when the bytes are not a state.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Decodes a state encoded before idempotency keys were kept (snapshot
    /// format 2): that encoding is this one's prefix, without keys,
    /// publishers or packages.
    ///
    /// # Errors
    ///
    /// The postcard error when the bytes are not such a state.
    pub fn from_bytes_v2(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let none = postcard::to_allocvec(&Idempotency::default())?;
        Self::from_bytes_v3(&[bytes, &none].concat())
    }

    /// Decodes a state encoded before packages existed (snapshot format 3):
    /// that encoding is this one's prefix, without publishers or packages.
    ///
    /// # Errors
    ///
    /// The postcard error when the bytes are not such a state.
    pub fn from_bytes_v3(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let none = postcard::to_allocvec(&(
            BTreeMap::<String, Publisher>::new(),
            BTreeMap::<String, PackageRecord>::new(),
        ))?;
        Self::from_bytes_v4(&[bytes, &none].concat())
    }

    /// Decodes a state encoded before HTTP requests were journaled
    /// (snapshot format 4): that encoding is this one's prefix, without
    /// the journaled requests.
    ///
    /// # Errors
    ///
    /// The postcard error when the bytes are not such a state.
    pub fn from_bytes_v4(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let none = postcard::to_allocvec(&BTreeMap::<(TaskId, u32), Exchange>::new())?;
        Self::from_bytes_v5(&[bytes, &none].concat())
    }

    /// Decodes a state encoded before cells exchanged tasks (snapshot
    /// format 5): that encoding is this one's prefix, without mail.
    ///
    /// # Errors
    ///
    /// The postcard error when the bytes are not such a state.
    pub fn from_bytes_v5(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let none = postcard::to_allocvec(&Mail::default())?;
        Self::from_bytes_v6(&[bytes, &none].concat())
    }

    /// Decodes a state encoded before keys written outside a running task
    /// were kept (snapshot format 6): that encoding is this one's prefix.
    /// Its journals copied what every write replaced; they decode to what
    /// this release keeps (see [`Run`]).
    ///
    /// # Errors
    ///
    /// The postcard error when the bytes are not such a state.
    pub fn from_bytes_v6(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let none = postcard::to_allocvec(&BTreeMap::<TaskId, BTreeSet<String>>::new())?;
        let mut state: WorldState = postcard::from_bytes(&[bytes, &none].concat())?;
        state.drop_copied_priors();
        Ok(state)
    }

    /// See [`Run::drop_copied_priors`].
    pub(crate) fn drop_copied_priors(&mut self) {
        for task in self.tasks.values_mut() {
            if let TaskStatus::Running(run) = &mut task.status {
                run.drop_copied_priors();
            }
        }
    }

    /// What waits in this cell's outbox to be sent to other cells (tasks,
    /// changes of the configuration), by the sequence number of the record
    /// that sent it (see [`Parcel`]).
    pub fn outbox(&self) -> impl ExactSizeIterator<Item = (u64, &Parcel)> {
        self.mail.outbox.iter().map(|(seq, o)| (*seq, o))
    }

    /// Whether the task of `from_cell`'s record `from_seq` was taken into
    /// this cell already.
    #[must_use]
    pub fn delivered(&self, from_cell: u16, from_seq: u64) -> bool {
        self.mail.taken(from_cell, from_seq)
    }

    /// Where this cell reads its inbox stream on: the position after the
    /// last task it took.
    #[must_use]
    pub fn inbox_read_from(&self) -> u64 {
        self.mail.read_from()
    }

    /// The task scheduled under an idempotency key, if the key is among the
    /// most recent ones (see
    /// [`Operation::ScheduleTaskOnce`](crate::Operation::ScheduleTaskOnce)).
    #[must_use]
    pub fn scheduled_under(&self, key: &str) -> Option<TaskId> {
        self.idempotency.get(key).map(|s| s.task)
    }

    /// How many idempotency keys the state remembers.
    #[must_use]
    pub fn idempotency_keys(&self) -> usize {
        self.idempotency.len()
    }

    /// Decodes a state encoded by a release before rules were recorded
    /// (snapshot format 1), filling in what that release did not keep.
    ///
    /// # Errors
    ///
    /// The postcard error when the bytes are not such a state.
    pub fn from_bytes_v1(bytes: &[u8]) -> Result<Self, postcard::Error> {
        crate::legacy::state_v1(bytes)
    }

    /// One agent.
    #[must_use]
    pub fn agent(&self, id: AgentId) -> Option<&AgentRecord> {
        self.agents.get(&id)
    }

    /// All agents, by id.
    pub fn agents(&self) -> impl ExactSizeIterator<Item = (AgentId, &AgentRecord)> {
        self.agents.iter().map(|(id, a)| (*id, a))
    }

    /// The agents after `after` (all of them for `None`), by id: a page's
    /// walk starts where the last one ended instead of at the first agent.
    pub fn agents_after(
        &self,
        after: Option<AgentId>,
    ) -> impl Iterator<Item = (AgentId, &AgentRecord)> {
        entries_after(&self.agents, after)
    }

    /// One unfinished task.
    #[must_use]
    pub fn task(&self, id: TaskId) -> Option<&TaskRecord> {
        self.tasks.get(&id)
    }

    /// All unfinished tasks, by id.
    pub fn tasks(&self) -> impl ExactSizeIterator<Item = (TaskId, &TaskRecord)> {
        self.tasks.iter().map(|(id, t)| (*id, t))
    }

    /// The unfinished tasks after `after` (all of them for `None`), by id.
    pub fn tasks_after(
        &self,
        after: Option<TaskId>,
    ) -> impl Iterator<Item = (TaskId, &TaskRecord)> {
        entries_after(&self.tasks, after)
    }

    /// One installed component.
    #[must_use]
    pub fn component(&self, digest: &Digest) -> Option<&ComponentSpec> {
        self.components.get(digest)
    }

    /// The latest component installed under `name`.
    #[must_use]
    pub fn component_named(&self, name: &str) -> Option<&ComponentSpec> {
        self.component_names
            .get(name)
            .and_then(|d| self.components.get(d))
    }

    /// The installed component `which` names: its digest (64 hex digits),
    /// else the latest installed under that name.
    #[must_use]
    pub fn component_by(&self, which: &str) -> Option<&ComponentSpec> {
        which
            .parse::<Digest>()
            .ok()
            .and_then(|d| self.components.get(&d))
            .or_else(|| self.component_named(which))
    }

    /// All installed components, by digest.
    pub fn components(&self) -> impl ExactSizeIterator<Item = &ComponentSpec> {
        self.components.values()
    }

    /// The logical time of the last applied command.
    #[must_use]
    pub fn time(&self) -> Timestamp {
        self.time
    }

    /// How many revocation ids have been revoked (it only ever grows).
    #[must_use]
    pub fn revocation_count(&self) -> usize {
        self.revoked.len()
    }

    /// Whether `revocation_id` has been revoked.
    #[must_use]
    pub fn is_revoked(&self, revocation_id: &[u8]) -> bool {
        self.revoked.contains(revocation_id)
    }

    /// The rules in force (`None`: the log predates recorded rules and
    /// version 1 applies).
    #[must_use]
    pub fn rules(&self) -> Option<&Rules> {
        self.rules.as_ref()
    }

    /// The version of the rules in force.
    #[must_use]
    pub fn rules_version(&self) -> u32 {
        self.rules.as_ref().map_or(1, |r| r.version)
    }

    /// How many agents are not terminated.
    #[must_use]
    pub fn live_agents(&self) -> u64 {
        self.live_agents
    }

    /// The namespace of an extension family.
    #[must_use]
    pub fn extension_store(&self, family: &str) -> Option<&BTreeMap<Vec<u8>, Vec<u8>>> {
        self.extensions.get(family)
    }
}

/// The entries of `map` after key `after` (all of them for `None`), in
/// key order.
fn entries_after<K: Ord + Copy, V>(
    map: &BTreeMap<K, V>,
    after: Option<K>,
) -> impl Iterator<Item = (K, &V)> {
    use std::ops::Bound::{Excluded, Unbounded};
    let from = after.map_or(Unbounded, Excluded);
    map.range((from, Unbounded)).map(|(k, v)| (*k, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(key: &str, value: Option<Vec<u8>>) -> Replaced {
        Replaced::First(Box::new(Prior {
            key: key.into(),
            value,
        }))
    }

    fn rewrite(key: &str, existed: bool) -> Replaced {
        Replaced::Rewrite(Box::new(Rewrite {
            key: key.into(),
            existed,
        }))
    }

    fn entry(index: u32, prior: Replaced) -> JournalEntry {
        JournalEntry::new(index, 10 + u64::from(index), None, prior)
    }

    #[test]
    fn a_journal_as_format_6_kept_it_decodes_to_what_this_release_keeps() {
        // Snapshot format 6 copied what every write replaced.
        let mut old = Run::started(9, Timestamp(5));
        old.journal = vec![
            entry(0, first("k", None)),
            entry(1, first("k", Some(vec![7; 100]))),
            entry(2, Replaced::Nothing),
            entry(3, first("j", Some(vec![1]))),
            entry(4, first("k", None)),
        ];
        old.next_index = 5;
        let mut decoded: Run = postcard::from_bytes(&postcard::to_allocvec(&old).unwrap()).unwrap();
        decoded.drop_copied_priors();
        let mut expected = Run::started(9, Timestamp(5));
        for e in [
            entry(0, first("k", None)),
            entry(1, rewrite("k", true)),
            entry(2, Replaced::Nothing),
            entry(3, first("j", Some(vec![1]))),
            entry(4, rewrite("k", false)),
        ] {
            expected.push(e);
        }
        expected.next_index = 5;
        assert_eq!(decoded, expected);
        assert!(decoded.wrote("k") && decoded.wrote("j"));
        // What this release writes decodes to itself.
        let again: Run = postcard::from_bytes(&postcard::to_allocvec(&decoded).unwrap()).unwrap();
        assert_eq!(again, decoded);
    }

    #[test]
    fn what_a_write_replaced_is_encoded_as_the_optional_prior_was() {
        let prior = Prior {
            key: "k".into(),
            value: Some(vec![1, 2]),
        };
        assert_eq!(bytes(&Replaced::Nothing), bytes(&None::<Box<Prior>>));
        assert_eq!(
            bytes(&Replaced::First(Box::new(prior.clone()))),
            bytes(&Some(Box::new(prior)))
        );
    }

    #[test]
    fn a_journal_entry_is_encoded_as_its_four_fields_and_kept_in_24_bytes() {
        /// The entry as releases before the boxed form encoded it.
        #[derive(Serialize)]
        struct Fields {
            index: u32,
            seq: u64,
            created: Option<EntityId>,
            prior: Replaced,
        }
        let task = Some(EntityId::derive(None, "task", EntityId::SYSTEM, 3));
        for (created, prior) in [
            (None, Replaced::Nothing),
            (task, Replaced::Nothing),
            (None, first("k", Some(vec![1, 2]))),
            (task, rewrite("k", true)),
        ] {
            let entry = JournalEntry::new(7, 1_000_000, created, prior.clone());
            assert_eq!((entry.created(), entry.prior()), (created, &prior));
            let encoded = bytes(&entry);
            assert_eq!(
                encoded,
                bytes(&Fields {
                    index: 7,
                    seq: 1_000_000,
                    created,
                    prior,
                })
            );
            let decoded: JournalEntry = postcard::from_bytes(&encoded).unwrap();
            assert_eq!(decoded, entry);
        }
        // One per operation of every running task: the plain one stays small.
        assert_eq!(std::mem::size_of::<JournalEntry>(), 24);
    }

    fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
        postcard::to_allocvec(value).unwrap()
    }
}

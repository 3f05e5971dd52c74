//! Decoding what older releases wrote.
//!
//! Snapshot format 1 holds the world state as releases before recorded
//! rules encoded it: no rules, no spawn depths, child counts or accounts, no
//! refusal gaps or journal indices. These mirrors decode that layout; the
//! conversion fills in what can be derived from it, exactly as replaying
//! the same log in this release computes it, so a converted snapshot and a
//! replay of the log agree.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Deserialize;

use crate::command::Timestamp;
use crate::id::{AgentId, Digest, EntityId, TaskId};
use crate::operation::{ComponentSpec, TaskSpec};
use crate::quota::Account;
use crate::state::{
    AgentRecord, AgentStatus, JournalEntry, Prior, Replaced, Run, TaskRecord, TaskStatus,
    WorldState,
};

#[derive(Deserialize)]
struct WorldStateV1 {
    agents: BTreeMap<AgentId, AgentRecordV1>,
    tasks: BTreeMap<TaskId, TaskRecordV1>,
    components: BTreeMap<Digest, ComponentSpec>,
    component_names: BTreeMap<String, Digest>,
    revoked: BTreeSet<Vec<u8>>,
    extensions: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    next_id: u64,
    time: Timestamp,
}

#[derive(Deserialize)]
struct AgentRecordV1 {
    name: String,
    component: Digest,
    parent: EntityId,
    token: Digest,
    status: AgentStatus,
    queue: VecDeque<TaskId>,
    running: Option<TaskId>,
    completed: u64,
    failed: u64,
    consecutive_faults: u32,
    #[serde(with = "crate::serde_bytes::map")]
    state: BTreeMap<String, Vec<u8>>,
    state_bytes: u64,
}

#[derive(Deserialize)]
struct TaskRecordV1 {
    agent: AgentId,
    by: EntityId,
    spec: TaskSpec,
    status: TaskStatusV1,
    scheduled_seq: u64,
}

#[derive(Deserialize)]
enum TaskStatusV1 {
    Queued,
    Running(RunV1),
}

#[derive(Deserialize)]
struct RunV1 {
    started_seq: u64,
    started_at: Timestamp,
    journal: Vec<JournalEntryV1>,
}

#[derive(Deserialize)]
struct JournalEntryV1 {
    seq: u64,
    created: Option<EntityId>,
    prior: Option<Prior>,
}

/// Decodes a format-1 state and derives what this release keeps besides.
pub(crate) fn state_v1(bytes: &[u8]) -> Result<WorldState, postcard::Error> {
    let old: WorldStateV1 = postcard::from_bytes(bytes)?;
    let depth_of = |mut id: AgentId| {
        let mut depth = 0u32;
        while let Some(parent) = old.agents.get(&id).map(|a| a.parent) {
            if parent == EntityId::SYSTEM || !old.agents.contains_key(&parent) {
                break;
            }
            depth += 1;
            id = parent;
        }
        depth
    };
    let mut live_children: BTreeMap<AgentId, u32> = BTreeMap::new();
    let mut live_agents = 0u64;
    for a in old.agents.values() {
        if !matches!(a.status, AgentStatus::Terminated { .. }) {
            live_agents += 1;
            if a.parent != EntityId::SYSTEM {
                *live_children.entry(a.parent).or_default() += 1;
            }
        }
    }
    let agents = old
        .agents
        .iter()
        .map(|(id, a)| {
            let record = AgentRecord {
                name: a.name.clone(),
                component: a.component,
                parent: a.parent,
                token: a.token,
                status: a.status.clone(),
                queue: a.queue.clone(),
                running: a.running,
                completed: a.completed,
                failed: a.failed,
                consecutive_faults: a.consecutive_faults,
                state: a.state.clone(),
                state_bytes: a.state_bytes,
                depth: depth_of(*id),
                live_children: live_children.get(id).copied().unwrap_or(0),
                budgets: None,
                account: Account::default(),
            };
            (*id, record)
        })
        .collect();
    let tasks = old
        .tasks
        .into_iter()
        .map(|(id, t)| {
            let status = match t.status {
                TaskStatusV1::Queued => TaskStatus::Queued,
                TaskStatusV1::Running(run) => {
                    let next_index = u32::try_from(run.journal.len())
                        .expect("a task's journal is bounded by max_ops_per_task, a u32");
                    let mut converted = Run::started(run.started_seq, run.started_at);
                    converted.next_index = next_index;
                    for (e, index) in run.journal.into_iter().zip(0..) {
                        converted.push(JournalEntry::new(
                            index,
                            e.seq,
                            e.created,
                            e.prior
                                .map_or(Replaced::Nothing, |p| Replaced::First(Box::new(p))),
                        ));
                    }
                    TaskStatus::Running(converted)
                }
            };
            let record = TaskRecord {
                agent: t.agent,
                by: t.by,
                spec: t.spec,
                status,
                scheduled_seq: t.scheduled_seq,
            };
            (id, record)
        })
        .collect();
    let mut state = WorldState {
        agents,
        tasks,
        components: old.components,
        component_names: old.component_names,
        revoked: old.revoked,
        extensions: old.extensions,
        next_id: old.next_id,
        time: old.time,
        rules: None,
        live_agents,
        idempotency: crate::idempotency::Idempotency::default(),
        publishers: Default::default(),
        packages: Default::default(),
        exchanges: Default::default(),
        mail: Default::default(),
        overwritten: Default::default(),
    };
    state.drop_copied_priors();
    Ok(state)
}

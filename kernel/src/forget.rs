//! Forgetting terminated agents: a host that spawns and terminates agents
//! for months would otherwise keep every record (and its state) for ever.

use std::collections::BTreeSet;

use crate::apply::denied;
use crate::error::KernelError;
use crate::event::Event;
use crate::id::{AgentId, EntityId};
use crate::operation::OpKind;
use crate::state::WorldState;

/// The most agents one [`Operation::ForgetTerminated`](crate::Operation::ForgetTerminated)
/// forgets (one event each): the host repeats it until it forgets fewer.
pub const FORGOTTEN_PER_RECORD: usize = 4096;

impl WorldState {
    /// The agents [`Operation::ForgetTerminated`](crate::Operation::ForgetTerminated)
    /// would forget now, in the order it would: every terminated agent none
    /// of whose descendants is alive and that scheduled no task still
    /// unfinished (whole dead subtrees, so no record left names a parent,
    /// or a task its scheduler, that is gone, and every agent that is not
    /// terminated keeps its ancestors: its quotas are charged to them), the
    /// deepest first, at most [`FORGOTTEN_PER_RECORD`]. One pass over the
    /// agents; empty when there is nothing to forget.
    #[must_use]
    pub fn forgettable(&self) -> Vec<AgentId> {
        // Kept: the agents that are not terminated, and those that
        // scheduled a task not yet ended (the host counts a task to its
        // scheduler's tree), with all their ancestors.
        let live = self
            .agents
            .iter()
            .filter(|(_, a)| !a.is_terminated())
            .map(|(id, _)| *id);
        let schedulers = self.tasks.values().map(|t| t.by);
        let mut kept: BTreeSet<AgentId> = BTreeSet::new();
        for id in live.chain(schedulers) {
            // Up to the first ancestor already kept (so each record is
            // walked over once), or the top.
            let mut next = self.agents.contains_key(&id).then_some(id);
            while let Some(at) = next {
                if !kept.insert(at) {
                    break;
                }
                next = self
                    .agents
                    .get(&at)
                    .map(|a| a.parent)
                    .filter(|p| *p != EntityId::SYSTEM);
            }
        }
        // Deepest first, and at most so many: what is left of a dead
        // subtree keeps its ancestors for the next record (a parent is
        // taken only once every deeper agent is).
        let mut dead: Vec<(u32, AgentId)> = self
            .agents
            .iter()
            .filter(|(id, _)| !kept.contains(id))
            .map(|(id, agent)| (agent.depth, *id))
            .collect();
        dead.sort_unstable_by_key(|(depth, id)| (std::cmp::Reverse(*depth), *id));
        dead.into_iter()
            .take(FORGOTTEN_PER_RECORD)
            .map(|(_, id)| id)
            .collect()
    }

    /// Removes the agents [`WorldState::forgettable`] names, one
    /// `agent_forgotten` event each.
    pub(crate) fn forget_terminated(
        &mut self,
        origin: EntityId,
    ) -> Result<Vec<Event>, KernelError> {
        if origin != EntityId::SYSTEM {
            return Err(denied(
                origin,
                OpKind::ForgetTerminated,
                "only the operator forgets agents",
            ));
        }
        let forgotten: Vec<Event> = self
            .forgettable()
            .into_iter()
            .map(|id| Event::AgentForgotten {
                agent: id,
                root: self.root_of(id),
                state_bytes: self.agents[&id].state_bytes,
            })
            .collect();
        for event in &forgotten {
            if let Event::AgentForgotten { agent, .. } = event {
                self.agents.remove(agent);
            }
        }
        Ok(forgotten)
    }

    /// The root of `agent`'s tree: its topmost ancestor that is an agent.
    fn root_of(&self, agent: AgentId) -> AgentId {
        let mut root = agent;
        // The walk ends at the top; the bound only guards against a cycle
        // no valid state holds.
        for _ in 0..self.agents.len() {
            match self.agents.get(&root).map(|a| a.parent) {
                Some(parent) if parent != EntityId::SYSTEM && self.agents.contains_key(&parent) => {
                    root = parent;
                }
                _ => break,
            }
        }
        root
    }
}

//! Forgetting terminated agents: a host that spawns and terminates agents
//! for months would otherwise keep every record (and its state) for ever.

use crate::apply::denied;
use crate::error::KernelError;
use crate::event::Event;
use crate::id::{AgentId, EntityId, IdHash};
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
    #[expect(
        clippy::disallowed_types,
        reason = "scratch sets of one call, keyed with a fixed hasher; what leaves is sorted"
    )]
    pub fn forgettable(&self) -> Vec<AgentId> {
        // Kept: the agents that are not terminated, and those that
        // scheduled a task not yet ended (the host counts a task to its
        // scheduler's tree), with all their ancestors. Only the terminated
        // agents are candidates: one pass over the agents notes them (with
        // their parents and depths) and the parents of the others; the
        // walks up from those then stay within the terminated ones.
        if self.live_agents >= self.agents.len() as u64 {
            // None is terminated (a host forgetting on a timer asks often).
            return Vec::new();
        }
        let mut terminated: std::collections::HashMap<AgentId, (EntityId, u32), IdHash> =
            std::collections::HashMap::default();
        let mut parents_of_live = Vec::new();
        for (id, agent) in &self.agents {
            if agent.is_terminated() {
                terminated.insert(*id, (agent.parent, agent.depth));
            } else if agent.parent != EntityId::SYSTEM {
                parents_of_live.push(agent.parent);
            }
        }
        let mut kept: std::collections::HashSet<AgentId, IdHash> =
            std::collections::HashSet::default();
        let schedulers = self.tasks.values().map(|t| t.by);
        for mut at in parents_of_live.into_iter().chain(schedulers) {
            // Up to the first agent that is not terminated (it is kept,
            // and walks on from itself), or noted already (its walk went
            // on from it), or the top.
            while let Some((parent, _)) = terminated.get(&at) {
                if !kept.insert(at) {
                    break;
                }
                at = *parent;
            }
        }
        // Deepest first, and at most so many: what is left of a dead
        // subtree keeps its ancestors for the next record (a parent is
        // taken only once every deeper agent is).
        let mut dead: Vec<(std::cmp::Reverse<u32>, AgentId)> = terminated
            .into_iter()
            .filter(|(id, _)| !kept.contains(id))
            .map(|(id, (_, depth))| (std::cmp::Reverse(depth), id))
            .collect();
        if dead.len() > FORGOTTEN_PER_RECORD {
            dead.select_nth_unstable(FORGOTTEN_PER_RECORD);
            dead.truncate(FORGOTTEN_PER_RECORD);
        }
        dead.sort_unstable();
        dead.into_iter().map(|(_, id)| id).collect()
    }

    /// Removes the agents [`WorldState::forgettable`] names (`known`, when
    /// the caller has them for this state already), one `agent_forgotten`
    /// event each.
    pub(crate) fn forget_terminated(
        &mut self,
        origin: EntityId,
        known: Option<&[AgentId]>,
    ) -> Result<Vec<Event>, KernelError> {
        if origin != EntityId::SYSTEM {
            return Err(denied(
                origin,
                OpKind::ForgetTerminated,
                "only the operator forgets agents",
            ));
        }
        let found;
        let forgettable = match known {
            Some(known) => known,
            None => {
                found = self.forgettable();
                &found
            }
        };
        let forgotten: Vec<Event> = forgettable
            .iter()
            .map(|&id| Event::AgentForgotten {
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

//! The kernel's state in memory: what agents keep there, under one budget
//! shared between agent trees.
//!
//! An agent's own state is bounded by the kernel's limits (16 MiB by
//! default), and how fast a tree writes is bounded by its quotas; but
//! nothing in the kernel bounds what a tree holds in all: an agent allowed
//! to spawn children with `state` can have each fill its 16 MiB, and an
//! agent's record (and its state) stays after it terminates, so spawning
//! and terminating children grows the state without end. Both live in the
//! host's memory (twice: the replica keeps a copy) and in every snapshot.
//!
//! So the sequencer counts, per tree (an agent the operator spawned, with
//! all its descendants), the bytes of its agents' state keys and values
//! plus a fixed charge for each agent record, and refuses an agent's state
//! write that grows its tree past the tree's share
//! ([`HostConfig::state_budget`](crate::HostConfig::state_budget)) or all
//! trees past the budget, and a spawn likewise. The refusal is the
//! agent's to handle (`limit-exceeded`); deleting keys gives bytes back.
//! The count is derived from the kernel's state (when the host opens) and
//! kept with each command applied, so it agrees with the state it counts;
//! the operator's own commands are counted, never refused.

use std::collections::HashMap;

use toka_kernel::{AgentId, WorldState};

use crate::runtime::places::tree_of;
use crate::text::Size;

/// What one agent record costs besides its state: the kernel's record and
/// the replica's copy of it measure 0.7–1.4 KiB (BENCHMARKS.md, "scale").
pub(crate) const AGENT_RECORD_BYTES: u64 = 1024;

/// Bytes the agents' state holds, per tree and in all, and the bounds.
#[derive(Debug)]
pub(crate) struct StateBudget {
    /// The most all trees hold together.
    total: u64,
    /// The most one tree holds.
    per_tree: u64,
    /// Held by all trees.
    all: u64,
    /// Held per tree.
    by_tree: HashMap<AgentId, u64>,
}

/// A growth the budget refused, in words (what the agent is told).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
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
        /// [`StateBudget`]'s total.
        budget: u64,
        /// Held by all trees.
        held: u64,
    },
    /// The agent's tree would pass its share.
    #[error(
        "the agent's tree holds its share of the host's memory for agent state: {} more would pass the share of {} ({} held by the tree: its agents' state and {} per agent ever spawned)",
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
    /// Bytes held now: state keys and values, and a fixed charge per
    /// agent record.
    pub held: u64,
}

impl StateBudget {
    /// A budget of `total` bytes, at most `per_tree` of them (at most
    /// `total`) held by one tree, counting what `state` holds already.
    pub(crate) fn new(total: u64, per_tree: u64, state: &WorldState) -> StateBudget {
        let mut budget = StateBudget {
            total,
            per_tree: per_tree.min(total),
            all: 0,
            by_tree: HashMap::new(),
        };
        for (id, agent) in state.agents() {
            budget.grow(tree_of(state, id), AGENT_RECORD_BYTES + agent.state_bytes);
        }
        budget
    }

    /// Whether `tree` may hold `growth` more bytes.
    ///
    /// # Errors
    ///
    /// [`Refused`] when the budget or the tree's share would be passed.
    pub(crate) fn admit(&self, tree: AgentId, growth: u64) -> Result<(), Refused> {
        let held = self.by_tree.get(&tree).copied().unwrap_or(0);
        if self.all.saturating_add(growth) > self.total {
            return Err(Refused::Host {
                growth,
                budget: self.total,
                held: self.all,
            });
        }
        if held.saturating_add(growth) > self.per_tree {
            return Err(Refused::Tree {
                growth,
                share: self.per_tree,
                held,
            });
        }
        Ok(())
    }

    /// Counts `bytes` more held by `tree` (applied: never refused).
    pub(crate) fn grow(&mut self, tree: AgentId, bytes: u64) {
        self.all = self.all.saturating_add(bytes);
        let held = self.by_tree.entry(tree).or_default();
        *held = held.saturating_add(bytes);
    }

    /// Counts `bytes` fewer held by `tree`.
    pub(crate) fn shrink(&mut self, tree: AgentId, bytes: u64) {
        self.all = self.all.saturating_sub(bytes);
        if let Some(held) = self.by_tree.get_mut(&tree) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.by_tree.remove(&tree);
            }
        }
    }

    /// The bounds and what is held.
    pub(crate) fn usage(&self) -> StateUsage {
        StateUsage {
            budget: self.total,
            per_tree: self.per_tree,
            held: self.all,
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
    use toka_kernel::{EntityId, WorldState};

    use crate::runtime::sequencer::state_budget::{AGENT_RECORD_BYTES, Refused, StateBudget};

    #[test]
    fn a_tree_is_held_to_its_share_and_all_trees_to_the_budget() {
        let (a, b) = (EntityId::from_u128(1), EntityId::from_u128(2));
        let mut budget = StateBudget::new(10_000, 6_000, &WorldState::default());
        budget.grow(a, 5_000);
        budget.admit(a, 1_000).unwrap();
        assert_eq!(
            budget.admit(a, 1_001),
            Err(Refused::Tree {
                growth: 1_001,
                share: 6_000,
                held: 5_000
            })
        );
        budget.grow(b, 4_000);
        assert_eq!(
            budget.admit(b, 1_001),
            Err(Refused::Host {
                growth: 1_001,
                budget: 10_000,
                held: 9_000
            })
        );
        budget.shrink(a, 5_000);
        budget.admit(b, 2_000).unwrap();
        assert_eq!(budget.usage().held, 4_000);
        assert!(
            Refused::Tree {
                growth: 60 << 10,
                share: 1 << 20,
                held: 1000 << 10
            }
            .to_string()
            .contains("60KiB more would pass the share of 1MiB (1000KiB held by the tree")
        );
    }

    #[test]
    fn what_a_state_holds_is_counted_under_each_agents_tree() {
        use toka_kernel::{
            AgentSpec, Command, ComponentSpec, Digest, Event, Kernel, Limits, Operation, Timestamp,
        };
        let mut kernel = Kernel::new(Limits::default());
        let mut apply = |origin: EntityId, op: Operation| {
            let applied = kernel
                .apply(Command::system(origin, Timestamp(1), op))
                .unwrap();
            match applied.events.first() {
                Some(Event::AgentSpawned { agent, .. }) => *agent,
                _ => origin,
            }
        };
        let component = Digest::of(b"c");
        let spawn = |name: &str| Operation::SpawnAgent {
            spec: Box::new(AgentSpec {
                component,
                name: name.into(),
                token: Digest::of(name.as_bytes()),
                rights: Vec::new(),
            }),
        };
        let put = |key: &str, len: usize| Operation::PutState {
            key: key.into(),
            value: vec![0; len],
        };
        apply(
            EntityId::SYSTEM,
            Operation::InstallComponent {
                component: Box::new(ComponentSpec {
                    digest: component,
                    name: "c".into(),
                    size: 1,
                }),
            },
        );
        let root = apply(EntityId::SYSTEM, spawn("root"));
        let child = apply(root, spawn("child"));
        let grandchild = apply(child, spawn("grandchild"));
        let other = apply(EntityId::SYSTEM, spawn("other"));
        apply(grandchild, put("k", 100));
        apply(root, put("ab", 10));
        apply(other, put("x", 1));
        let budget = StateBudget::new(u64::MAX, u64::MAX, kernel.state());
        assert_eq!(budget.by_tree[&root], 3 * AGENT_RECORD_BYTES + 101 + 12);
        assert_eq!(budget.by_tree[&other], AGENT_RECORD_BYTES + 2);
        assert_eq!(budget.usage().held, 4 * AGENT_RECORD_BYTES + 115);
    }

    #[test]
    fn a_share_is_never_more_than_the_budget() {
        let budget = StateBudget::new(1_000, 5_000, &WorldState::default());
        assert_eq!(budget.usage().per_tree, 1_000);
    }
}

//! How fast an agent may do what is not an operation but takes the
//! sequencer's lock, which every other agent's operations wait for.
//!
//! - **Reading its own state.** `get-state` and `state-keys` are not
//!   logged, counted per task, or rate-limited as operations are, but each
//!   copies what it returns out of the kernel's state under the lock.
//!   Before this pace, one agent listing its 4 096 keys of 200 bytes again
//!   and again halved the throughput of a thousand busy neighbours
//!   (BENCHMARKS.md, "busy"). What an agent reads is charged to a bucket
//!   of [`AgentLimits::state_read_bytes_per_second`](crate::AgentLimits::state_read_bytes_per_second).
//! - **Being refused.** An operation the gate or the kernel refuses is not
//!   applied, so no quota of operations counts it; but it was decided
//!   under the lock (a name the agent made up, an extension family or an
//!   HTTP host, is decided each time: its denial is not cached), its
//!   payload encoded and hashed. Each refusal is charged to a bucket of
//!   [`AgentLimits::refusals_per_second`](crate::AgentLimits::refusals_per_second).
//!
//! Each bucket holds a second's worth at once (an agent reading its whole
//! state now and then, or refused now and then, never waits); past it, the
//! agent's call waits until the bucket has paid for it, holding no lock
//! meanwhile.
//!
//! Each charge is paid into the agent's bucket and into its tree's (the
//! agent the operator spawned and all its descendants), which holds
//! [`TREE_FACTOR`] times an agent's pace: without it, a tree of many
//! agents would read and be refused as many times over.
//!
//! The paces outlive the agent's instance: an instance dropped (a fault, a
//! cold agent's instance let go, a token change) leaves buckets not yet
//! full in [`Kept`], and the agent's next instance goes on from them, so
//! faulting on purpose does not buy a fresh second's worth. A tree's
//! buckets live as long as one of its agents' paces does.
//!
//! The buckets themselves are [`Buckets`] of [`Pace`] (in the sandbox,
//! whose HTTP gate pays refusals into them too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use toka_kernel::AgentId;
use tokio::time::Instant;

use crate::sandbox::pace::unpoisoned;
pub(crate) use crate::sandbox::pace::{Buckets, Pace, pause, refused};

/// What an agent's reads cost it, in bytes: what is copied, and for each
/// key listed an allocation's worth (each key is copied on its own under
/// the lock: at 32 bytes, a lister of keys of 1 to 3 bytes took a third of
/// a thousand busy agents' throughput; BENCHMARKS.md, "Listing short
/// keys") ...
pub(crate) const PER_ITEM: u64 = 128;

/// ... and more for each read (each takes the lock): at the default pace
/// an agent reads at most 65 536 times a second.
pub(crate) const PER_READ: u64 = 1024;

/// How many agents' paces a tree's agents may spend together. The tree's
/// buckets are made with the pace of the first of its agents to start an
/// instance (the paces are the host's, the same for every agent: a token's
/// budgets do not narrow them).
pub(crate) const TREE_FACTOR: u64 = 4;

/// An agent's paces.
#[derive(Debug, Clone)]
pub(crate) struct Paces {
    /// Bytes of its state read.
    pub(crate) reads: Buckets,
    /// Operations and HTTP requests refused: shared with the instance's
    /// HTTP gate, whose requests are decided in tasks of their own.
    pub(crate) refusals: Buckets,
    /// Bytes of `kernel.log` lines forwarded to the host's log (a line
    /// past the pace is dropped, not waited for).
    pub(crate) logs: Buckets,
}

impl Paces {
    fn are_full(&self, now: Instant) -> bool {
        self.reads.are_full(now) && self.refusals.are_full(now) && self.logs.are_full(now)
    }
}

/// The paces of agents whose instance was dropped before their buckets
/// (or their tree's) were full again, and the trees' buckets. Each agent's
/// entry is forgotten once its buckets are full (within a second and what
/// the last charge owed), so the register holds about the instances
/// dropped in the last second or two.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    paces: Mutex<Register>,
}

#[derive(Debug, Default)]
struct Register {
    by_agent: HashMap<AgentId, Paces, toka_kernel::IdHash>,
    /// Entries held when `by_agent` is next swept of full buckets.
    sweep_at: usize,
    /// Each tree's buckets, while an agent's paces hold them.
    trees: HashMap<AgentId, TreeBuckets, toka_kernel::IdHash>,
    /// Entries held when `trees` is next swept of buckets nobody holds.
    trees_sweep_at: usize,
}

/// A tree's buckets, held by its agents' [`Buckets`].
#[derive(Debug)]
struct TreeBuckets {
    reads: Weak<Mutex<Pace>>,
    refusals: Weak<Mutex<Pace>>,
    logs: Weak<Mutex<Pace>>,
}

/// A tree's buckets, held.
type Held = [Arc<Mutex<Pace>>; 3];

/// The fewest entries a sweep waits for.
const SWEEP_AT: usize = 1024;

impl Kept {
    /// `agent`'s paces as its last instance left them, or new ones of
    /// `limits` paid into the buckets of its tree `tree`.
    pub(crate) fn take(&self, agent: AgentId, tree: AgentId, limits: &crate::AgentLimits) -> Paces {
        let mut register = self.lock();
        if let Some(kept) = register.by_agent.remove(&agent) {
            return kept;
        }
        let [reads, refusals, logs] = register.tree(tree, limits);
        Paces {
            reads: Buckets::new(Pace::new(limits.state_read_bytes_per_second), reads),
            refusals: Buckets::new(Pace::new(limits.refusals_per_second), refusals),
            logs: Buckets::new(Pace::new(limits.log_bytes_per_second), logs),
        }
    }

    /// Keeps the paces of `agent`'s instance, dropped, unless its buckets
    /// and its tree's are full again.
    pub(crate) fn keep(&self, agent: AgentId, paces: Paces) {
        let now = Instant::now();
        if paces.are_full(now) {
            return;
        }
        let mut register = self.lock();
        if register.by_agent.len() >= register.sweep_at.max(SWEEP_AT) {
            register.by_agent.retain(|_, p| !p.are_full(now));
            // Twice what is left: sweeps cost O(1) for each entry kept.
            register.sweep_at = 2 * register.by_agent.len();
        }
        register.by_agent.insert(agent, paces);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Register> {
        unpoisoned(&self.paces)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_agent.len()
    }
}

impl Register {
    /// The buckets of `tree` (reads, refusals, logs), made of `limits` if
    /// no agent holds them.
    fn tree(&mut self, tree: AgentId, limits: &crate::AgentLimits) -> Held {
        let held = self
            .trees
            .get(&tree)
            .and_then(|t| Some([t.reads.upgrade()?, t.refusals.upgrade()?, t.logs.upgrade()?]));
        if let Some(held) = held {
            return held;
        }
        if self.trees.len() >= self.trees_sweep_at.max(SWEEP_AT) {
            self.trees.retain(|_, t| t.reads.strong_count() > 0);
            self.trees_sweep_at = 2 * self.trees.len();
        }
        let bucket = |per_second: u64| {
            Arc::new(Mutex::new(Pace::new(
                per_second.saturating_mul(TREE_FACTOR),
            )))
        };
        let held = [
            bucket(limits.state_read_bytes_per_second),
            bucket(limits.refusals_per_second),
            bucket(limits.log_bytes_per_second),
        ];
        let [reads, refusals, logs] = held.each_ref().map(Arc::downgrade);
        self.trees.insert(
            tree,
            TreeBuckets {
                reads,
                refusals,
                logs,
            },
        );
        held
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use toka_kernel::EntityId;

    use super::{Kept, SWEEP_AT, TREE_FACTOR};
    use crate::AgentLimits;

    fn limits() -> AgentLimits {
        AgentLimits {
            state_read_bytes_per_second: 1000,
            refusals_per_second: 10,
            ..AgentLimits::default()
        }
    }

    fn id(n: u128) -> EntityId {
        EntityId::from_u128(n)
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_s_next_instance_goes_on_from_the_paces_its_last_left() {
        let kept = Kept::default();
        let (agent, tree) = (id(7), id(1));
        let paces = kept.take(agent, tree, &limits());
        assert_eq!(paces.reads.charge(1500), Duration::from_millis(500));
        assert_eq!(paces.refusals.charge(12), Duration::from_millis(200));
        // The instance is dropped (it faulted): the next one still owes.
        kept.keep(agent, paces);
        let next = kept.take(agent, tree, &limits());
        assert_eq!(next.reads.charge(0), Duration::from_millis(500));
        assert_eq!(next.refusals.charge(0), Duration::from_millis(200));
        // Another agent of another tree starts with a second's worth.
        let other = kept.take(id(8), id(2), &limits());
        assert_eq!(other.reads.charge(1000), Duration::ZERO);
        // Buckets full again are not kept: new ones are the same.
        tokio::time::advance(Duration::from_secs(2)).await;
        kept.keep(agent, next);
        assert_eq!(kept.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tree_s_agents_share_its_buckets() {
        let kept = Kept::default();
        let tree = id(1);
        let agents: Vec<_> = (10..20)
            .map(|n| kept.take(id(n), tree, &limits()))
            .collect();
        // Each agent may be refused 10 times at once; the tree 40: the
        // first four agents spend it, the fifth waits for the tree.
        for paces in &agents[..4] {
            assert_eq!(paces.refusals.charge(10), Duration::ZERO);
        }
        assert_eq!(
            agents[4].refusals.charge(4),
            Duration::from_millis(100),
            "the tree pays {} a second",
            10 * TREE_FACTOR
        );
        // Reads are the tree's too; another tree is not.
        assert_eq!(agents[5].reads.charge(1000), Duration::ZERO);
        let other = kept.take(id(30), id(2), &limits());
        assert_eq!(other.refusals.charge(10), Duration::ZERO);
        // The tree's buckets outlive its instances while they owe: every
        // agent's own bucket full again, the tree's not yet.
        tokio::time::advance(Duration::from_millis(1050)).await;
        for (n, paces) in (10..20).zip(agents) {
            kept.keep(id(n), paces);
        }
        // A newcomer pays into them, whatever its own pace (the tree's
        // was made with its first agent's).
        let generous = AgentLimits {
            refusals_per_second: 1000,
            ..limits()
        };
        let again = kept.take(id(40), tree, &generous);
        assert_eq!(again.refusals.charge(40), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn the_register_forgets_buckets_once_full() {
        let kept = Kept::default();
        let owing = |n: u128| {
            let paces = kept.take(id(n), id(n), &limits());
            paces.refusals.charge(20);
            paces
        };
        for i in 0..SWEEP_AT as u128 {
            kept.keep(id(i), owing(i));
        }
        assert_eq!(kept.len(), SWEEP_AT);
        // Two seconds on, every bucket is full again: the next keep sweeps
        // them out, and holds only its own.
        tokio::time::advance(Duration::from_secs(2)).await;
        kept.keep(id(u128::MAX), owing(u128::MAX));
        assert_eq!(kept.len(), 1);
        // The trees' buckets nobody holds are swept once as many trees
        // are made again.
        for i in 0..=SWEEP_AT as u128 {
            drop(kept.take(id(i), id(SWEEP_AT as u128 + i), &limits()));
        }
        let trees = kept.lock().trees.len();
        assert!(trees < 10, "{trees} trees' buckets kept");
    }
}

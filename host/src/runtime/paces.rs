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
//! The paces outlive the agent's instance: an instance dropped (a fault, a
//! cold agent's instance let go, a token change) leaves buckets not yet
//! full in [`Kept`], and the agent's next instance goes on from them, so
//! faulting on purpose does not buy a fresh second's worth.
//!
//! The bucket itself is [`Pace`] (in the sandbox, whose HTTP gate pays
//! refusals into it too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use toka_kernel::AgentId;
use tokio::time::Instant;

use crate::sandbox::pace::unpoisoned;
pub(crate) use crate::sandbox::pace::{Pace, pause, refused};

/// What an agent's reads cost it, in bytes: what is copied, a little for
/// each key listed ...
pub(crate) const PER_ITEM: u64 = 32;

/// ... and more for each read (each takes the lock): at the default pace
/// an agent reads at most 65 536 times a second.
pub(crate) const PER_READ: u64 = 1024;

/// An agent's paces.
#[derive(Debug, Clone)]
pub(crate) struct Paces {
    /// Bytes of its state read.
    pub(crate) reads: Pace,
    /// Operations and HTTP requests refused: shared with the instance's
    /// HTTP gate, whose requests are decided in tasks of their own.
    pub(crate) refusals: Arc<Mutex<Pace>>,
}

impl Paces {
    /// New paces of `limits`, full.
    pub(crate) fn new(limits: &crate::AgentLimits) -> Self {
        Self {
            reads: Pace::new(limits.state_read_bytes_per_second),
            refusals: Arc::new(Mutex::new(Pace::new(limits.refusals_per_second))),
        }
    }

    fn are_full(&self, now: Instant) -> bool {
        self.reads.is_full(now) && unpoisoned(&self.refusals).is_full(now)
    }
}

/// The paces of agents whose instance was dropped before their buckets
/// were full again. Each entry is forgotten once its buckets are full
/// (within a second and what the last charge owed), so the register holds
/// about the instances dropped in the last second or two.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    paces: Mutex<Register>,
}

#[derive(Debug, Default)]
struct Register {
    by_agent: HashMap<AgentId, Paces>,
    /// Entries held when the register is next swept of full buckets.
    sweep_at: usize,
}

/// The fewest entries a sweep waits for.
const SWEEP_AT: usize = 1024;

impl Kept {
    /// `agent`'s paces as its last instance left them, or new ones of
    /// `limits`.
    pub(crate) fn take(&self, agent: AgentId, limits: &crate::AgentLimits) -> Paces {
        let kept = self.lock().by_agent.remove(&agent);
        kept.unwrap_or_else(|| Paces::new(limits))
    }

    /// Keeps the paces of `agent`'s instance, dropped, unless its buckets
    /// are full again.
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use toka_kernel::EntityId;

    use super::{Kept, Paces, SWEEP_AT};
    use crate::AgentLimits;

    fn limits() -> AgentLimits {
        AgentLimits {
            state_read_bytes_per_second: 1000,
            refusals_per_second: 10,
            ..AgentLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_s_next_instance_goes_on_from_the_paces_its_last_left() {
        let kept = Kept::default();
        let agent = EntityId::from_u128(7);
        let mut paces = kept.take(agent, &limits());
        assert_eq!(paces.reads.charge(1500), Duration::from_millis(500));
        assert_eq!(
            paces.refusals.lock().unwrap().charge(12),
            Duration::from_millis(200)
        );
        // The instance is dropped (it faulted): the next one still owes.
        kept.keep(agent, paces);
        let mut next = kept.take(agent, &limits());
        assert_eq!(next.reads.charge(0), Duration::from_millis(500));
        assert_eq!(
            next.refusals.lock().unwrap().charge(0),
            Duration::from_millis(200)
        );
        // Another agent starts with a second's worth.
        let mut other = kept.take(EntityId::from_u128(8), &limits());
        assert_eq!(other.reads.charge(1000), Duration::ZERO);
        // Buckets full again are not kept: new ones are the same.
        tokio::time::advance(Duration::from_secs(2)).await;
        kept.keep(agent, next);
        assert_eq!(kept.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_register_forgets_buckets_once_full() {
        let kept = Kept::default();
        let owing = || {
            let paces = Paces::new(&limits());
            paces.refusals.lock().unwrap().charge(20);
            paces
        };
        for i in 0..SWEEP_AT as u128 {
            kept.keep(EntityId::from_u128(i), owing());
        }
        assert_eq!(kept.len(), SWEEP_AT);
        // Two seconds on, every bucket is full again: the next keep sweeps
        // them out, and holds only its own.
        tokio::time::advance(Duration::from_secs(2)).await;
        kept.keep(EntityId::from_u128(u128::MAX), owing());
        assert_eq!(kept.len(), 1);
    }
}

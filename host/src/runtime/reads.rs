//! How fast an agent may read its own state.
//!
//! `get-state` and `state-keys` are not operations: they are not logged,
//! counted per task, or rate-limited as operations are. But each one
//! copies what it returns out of the kernel's state under the sequencer's
//! lock, which every other agent's operations wait for. Before this pace,
//! one agent listing its 4 096 keys of 200 bytes again and again halved
//! the throughput of a thousand busy neighbours (BENCHMARKS.md, "busy").
//! Now what an agent reads is charged to a bucket of
//! [`AgentLimits::state_read_bytes_per_second`](crate::AgentLimits::state_read_bytes_per_second)
//! (a second's worth at once, so an agent reading its whole state now and
//! then never waits); past it, the read waits until the bucket has paid
//! for it, holding no lock meanwhile.

//!
//! The pace outlives the agent's instance: an instance dropped (a fault, a
//! cold agent's instance let go, a token change) leaves a bucket not yet
//! full in [`Kept`], and the agent's next instance goes on from it, so
//! faulting on purpose does not buy a fresh second's worth.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use toka_kernel::AgentId;
use tokio::time::Instant;

/// What an agent's reads cost it, in bytes: what is copied, a little for
/// each key listed ...
pub(crate) const PER_ITEM: u64 = 32;

/// ... and more for each read (each takes the lock): at the default pace
/// an agent reads at most 65 536 times a second.
pub(crate) const PER_READ: u64 = 1024;

/// A bucket of bytes an agent may read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadPace {
    per_second: f64,
    /// Bytes it may read now (below zero: owed).
    left: f64,
    at: Instant,
}

impl ReadPace {
    /// `per_second` bytes a second (at least 1), a second's worth at once.
    pub(crate) fn new(per_second: u64) -> Self {
        let per_second = per_second.max(1) as f64;
        Self {
            per_second,
            left: per_second,
            at: Instant::now(),
        }
    }

    /// Whether the bucket is full again at `now` (the agent owes nothing
    /// and has a second's worth: a new bucket would be the same).
    fn is_full(&self, now: Instant) -> bool {
        self.left + now.duration_since(self.at).as_secs_f64() * self.per_second >= self.per_second
    }

    /// Charges a read of `bytes`; how long the reader waits before it goes
    /// on (zero while the bucket holds enough).
    pub(crate) fn charge(&mut self, bytes: u64) -> Duration {
        let now = Instant::now();
        let refilled = now.duration_since(self.at).as_secs_f64() * self.per_second;
        self.left = (self.left + refilled).min(self.per_second) - bytes as f64;
        self.at = now;
        if self.left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.left / self.per_second)
        }
    }
}

/// The paces of agents whose instance was dropped before their bucket was
/// full again. Each entry is forgotten once its bucket is full (within a
/// second and what the last read owed), so the register holds about the
/// instances dropped in the last second or two.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    paces: Mutex<Paces>,
}

#[derive(Debug, Default)]
struct Paces {
    by_agent: HashMap<AgentId, ReadPace>,
    /// Entries held when the register is next swept of full buckets.
    sweep_at: usize,
}

/// The fewest entries a sweep waits for.
const SWEEP_AT: usize = 1024;

impl Kept {
    /// `agent`'s pace as its last instance left it, or a new one of
    /// `per_second`.
    pub(crate) fn take(&self, agent: AgentId, per_second: u64) -> ReadPace {
        let kept = self.lock().by_agent.remove(&agent);
        kept.unwrap_or_else(|| ReadPace::new(per_second))
    }

    /// Keeps the pace of `agent`'s instance, dropped, unless its bucket is
    /// full again.
    pub(crate) fn keep(&self, agent: AgentId, pace: ReadPace) {
        let now = Instant::now();
        if pace.is_full(now) {
            return;
        }
        let mut paces = self.lock();
        if paces.by_agent.len() >= paces.sweep_at.max(SWEEP_AT) {
            paces.by_agent.retain(|_, p| !p.is_full(now));
            // Twice what is left: sweeps cost O(1) for each entry kept.
            paces.sweep_at = 2 * paces.by_agent.len();
        }
        paces.by_agent.insert(agent, pace);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Paces> {
        self.paces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    use super::{Kept, ReadPace, SWEEP_AT};

    #[tokio::test(start_paused = true)]
    async fn reads_wait_once_past_a_second_s_worth() {
        let mut pace = ReadPace::new(1000);
        assert_eq!(pace.charge(600), Duration::ZERO);
        assert_eq!(pace.charge(400), Duration::ZERO);
        // Owing 500 bytes at 1 000 a second.
        assert_eq!(pace.charge(500), Duration::from_millis(500));
        // Having waited, it owes nothing; a second later it has a second's
        // worth again, and no more.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(pace.charge(0), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(pace.charge(1000), Duration::ZERO);
        assert_eq!(pace.charge(1), Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_s_next_instance_goes_on_from_the_pace_its_last_left() {
        let kept = Kept::default();
        let agent = EntityId::from_u128(7);
        let mut pace = kept.take(agent, 1000);
        assert_eq!(pace.charge(1500), Duration::from_millis(500));
        // The instance is dropped (it faulted): the next one still owes.
        kept.keep(agent, pace);
        let mut next = kept.take(agent, 1000);
        assert_eq!(next.charge(0), Duration::from_millis(500));
        // Another agent starts with a second's worth.
        assert_eq!(
            kept.take(EntityId::from_u128(8), 1000).charge(1000),
            Duration::ZERO
        );
        // A bucket full again is not kept: a new one is the same.
        tokio::time::advance(Duration::from_secs(2)).await;
        kept.keep(agent, next);
        assert_eq!(kept.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_register_forgets_buckets_once_full() {
        let kept = Kept::default();
        for i in 0..SWEEP_AT as u128 {
            let mut pace = ReadPace::new(1000);
            pace.charge(2000);
            kept.keep(EntityId::from_u128(i), pace);
        }
        assert_eq!(kept.len(), SWEEP_AT);
        // Two seconds on, every bucket is full again: the next keep sweeps
        // them out, and holds only its own.
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut pace = ReadPace::new(1000);
        pace.charge(2000);
        kept.keep(EntityId::from_u128(u128::MAX), pace);
        assert_eq!(kept.len(), 1);
    }
}

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

use std::time::Duration;

use tokio::time::Instant;

/// What an agent's reads cost it, in bytes: what is copied, a little for
/// each key listed ...
pub(crate) const PER_ITEM: u64 = 32;

/// ... and more for each read (each takes the lock): at the default pace
/// an agent reads at most 65 536 times a second.
pub(crate) const PER_READ: u64 = 1024;

/// A bucket of bytes an agent may read.
#[derive(Debug)]
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ReadPace;

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
}

//! A bucket of what an agent may spend a second: bytes of its state read,
//! refusals (see `runtime::paces`, which keeps an agent's buckets past its
//! instances).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A bucket of what an agent may spend a second (bytes read, refusals).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    per_second: f64,
    /// What it may spend now (below zero: owed).
    left: f64,
    at: Instant,
}

impl Pace {
    /// `per_second` a second (at least 1), a second's worth at once.
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
    pub(crate) fn is_full(&self, now: Instant) -> bool {
        self.left + now.duration_since(self.at).as_secs_f64() * self.per_second >= self.per_second
    }

    /// Charges `spent`; how long the agent waits before it goes on (zero
    /// while the bucket holds enough).
    pub(crate) fn charge(&mut self, spent: u64) -> Duration {
        let now = Instant::now();
        let refilled = now.duration_since(self.at).as_secs_f64() * self.per_second;
        self.left = (self.left + refilled).min(self.per_second) - spent as f64;
        self.at = now;
        if self.left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.left / self.per_second)
        }
    }
}

/// Charges a refusal to `refusals`, and waits as long as it says.
pub(crate) async fn refused(refusals: &Mutex<Pace>) {
    let wait = unpoisoned(refusals).charge(1);
    pause(wait).await;
}

/// Waits as long as a charge said (returns at once for zero).
pub(crate) async fn pause(wait: Duration) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// `mutex` locked, even if a holder panicked (a bucket's numbers are
/// always whole).
pub(crate) fn unpoisoned<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Pace;

    #[tokio::test(start_paused = true)]
    async fn a_charge_waits_once_past_a_second_s_worth() {
        let mut pace = Pace::new(1000);
        assert_eq!(pace.charge(600), Duration::ZERO);
        assert_eq!(pace.charge(400), Duration::ZERO);
        // Owing 500 at 1 000 a second.
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

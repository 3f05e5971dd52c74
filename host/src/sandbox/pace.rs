//! Buckets of what an agent may spend a second: bytes of its state read,
//! refusals (see `runtime::paces`, which keeps an agent's buckets past its
//! instances and shares a tree's among its agents).

use std::sync::{Arc, Mutex};
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
        self.refill();
        self.left -= spent as f64;
        if self.left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.left / self.per_second)
        }
    }
}

impl Pace {
    /// Adds what the time since the last charge paid for, up to a
    /// second's worth.
    fn refill(&mut self) {
        let now = Instant::now();
        let refilled = now.duration_since(self.at).as_secs_f64() * self.per_second;
        self.left = (self.left + refilled).min(self.per_second);
        self.at = now;
    }

    /// Whether the bucket holds `spent` now.
    fn holds(&mut self, spent: u64) -> bool {
        self.refill();
        self.left >= spent as f64
    }
}

/// Where one kind of spending is charged: the agent's own bucket and its
/// tree's, which all the tree's agents share (an agent may spend its own
/// pace only while its tree has some left, so spawning children does not
/// multiply what a tree may spend).
#[derive(Debug, Clone)]
pub(crate) struct Buckets {
    own: Arc<Mutex<Pace>>,
    tree: Arc<Mutex<Pace>>,
}

impl Buckets {
    /// The agent's bucket `own`, full, and its tree's `tree`.
    pub(crate) fn new(own: Pace, tree: Arc<Mutex<Pace>>) -> Self {
        Self {
            own: Arc::new(Mutex::new(own)),
            tree,
        }
    }

    /// Charges `spent` to both buckets; how long the agent waits (the
    /// longer of what each says).
    pub(crate) fn charge(&self, spent: u64) -> Duration {
        let own = unpoisoned(&self.own).charge(spent);
        own.max(unpoisoned(&self.tree).charge(spent))
    }

    /// Spends `spent` from both buckets if both hold it now, else nothing
    /// (for what is dropped past the pace rather than waited for); whether
    /// it did.
    pub(crate) fn try_spend(&self, spent: u64) -> bool {
        let mut own = unpoisoned(&self.own);
        let mut tree = unpoisoned(&self.tree);
        if !(own.holds(spent) && tree.holds(spent)) {
            return false;
        }
        own.left -= spent as f64;
        tree.left -= spent as f64;
        true
    }

    /// Whether the agent's bucket and its tree's are full at `now`.
    pub(crate) fn are_full(&self, now: Instant) -> bool {
        unpoisoned(&self.own).is_full(now) && unpoisoned(&self.tree).is_full(now)
    }
}

/// Charges a refusal to `refusals`, and waits as long as it says.
pub(crate) async fn refused(refusals: &Buckets) {
    pause(refusals.charge(1)).await;
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

    use std::sync::{Arc, Mutex};

    use super::{Buckets, Pace};

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

    #[tokio::test(start_paused = true)]
    async fn a_spend_past_either_bucket_takes_nothing() {
        let tree = Arc::new(Mutex::new(Pace::new(150)));
        let (first, second) = (
            Buckets::new(Pace::new(100), Arc::clone(&tree)),
            Buckets::new(Pace::new(100), tree),
        );
        assert!(first.try_spend(100));
        // Past its own bucket: nothing spent, from either.
        assert!(!first.try_spend(1));
        assert!(second.try_spend(50));
        // Past the tree's (its own holds it): nothing spent.
        assert!(!second.try_spend(1));
        tokio::time::advance(Duration::from_millis(100)).await;
        // A tenth of a second pays 15 to the tree.
        assert!(second.try_spend(15));
        assert!(!second.try_spend(1));
    }
}

//! How often readers may have the committed state copied.
//!
//! A reader of the committed state (`Host::state`: the API's status,
//! metrics, packages, `/v1/log/state`) gets a copy of the whole state,
//! taken under the sequencer's lock while the state is small, and by the
//! snapshot replica from its own kernel once it is large (see `replica`):
//! at 100 000 agents a copy takes milliseconds, and under the lock every
//! agent's operation would wait meanwhile. A client with the least rights
//! polling the status in a loop would otherwise have the host copy its
//! state at every commit. Copies are spaced so they take at most
//! [`SHARE`] of the time (of the lock, or of the replica's core): after a
//! copy that took `d`, the next one waits `d × (1 − SHARE) / SHARE`. A
//! small state copies in microseconds, so the spacing is then
//! microseconds too; readers waiting meanwhile share the next copy, and
//! each still sees everything that was durable when it asked.

use std::time::{Duration, Instant};

/// The most of the time copies for readers may take.
pub(super) const SHARE: f64 = 0.05;

/// When the next copy of the state for readers may be taken.
#[derive(Debug, Default)]
pub(super) struct ViewBudget {
    next: Option<Instant>,
}

impl ViewBudget {
    /// How long until a copy may be taken, from `now` (zero: now).
    pub(super) fn wait(&self, now: Instant) -> Duration {
        self.next
            .map_or(Duration::ZERO, |next| next.saturating_duration_since(now))
    }

    /// A copy that took `took` ended at `now`.
    pub(super) fn copied(&mut self, took: Duration, now: Instant) {
        self.next = Some(now + took.mul_f64((1.0 - SHARE) / SHARE));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::runtime::sequencer::views::{SHARE, ViewBudget};

    #[test]
    fn copies_hold_the_lock_for_a_bounded_share_of_the_time() {
        let mut budget = ViewBudget::default();
        let start = Instant::now();
        assert_eq!(budget.wait(start), Duration::ZERO, "the first copy at once");
        // A reader asking as fast as it can, copies taking 10 ms each: from
        // the end of the first copy on, ...
        let took = Duration::from_millis(10);
        let first = start + took;
        budget.copied(took, first);
        let (mut now, mut copies) = (first, 0u32);
        while now < first + Duration::from_secs(10) {
            now += budget.wait(now);
            now += took;
            budget.copied(took, now);
            copies += 1;
        }
        // ... the lock is held for SHARE of the time at most.
        let held = took * copies;
        let share = held.as_secs_f64() / (now - first).as_secs_f64();
        assert!(share <= SHARE + 1e-9, "held {share:.3} of the time");
        assert!(copies >= 45, "still about five copies a second: {copies}");
    }

    #[test]
    fn a_small_state_is_copied_again_almost_at_once() {
        let mut budget = ViewBudget::default();
        let now = Instant::now();
        budget.copied(Duration::from_micros(2), now);
        assert!(budget.wait(now) <= Duration::from_micros(40));
    }
}

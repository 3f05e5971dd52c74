//! Warnings whose number others decide (refused tasks from other cells,
//! refused connections), logged at most once a period with a count of
//! those left out, so that no one outside decides how fast the log grows.

use std::time::Duration;

use tokio::time::Instant;

/// One warning per period at most, counting those left out.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// At most one warning `every` this long.
    #[must_use]
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            unlogged: 0,
        }
    }

    /// `Some(how many were left out since the last one)` when a warning
    /// may be logged now; otherwise counts it as left out.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + self.every) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Throttle;

    #[tokio::test(start_paused = true)]
    async fn a_flood_logs_one_warning_per_period_and_counts_the_rest() {
        let every = Duration::from_secs(10);
        let mut warn = Throttle::new(every);
        assert_eq!(warn.allow(), Some(0), "the first one is logged");
        let logged = (0..1_000).filter(|_| warn.allow().is_some()).count();
        assert_eq!(logged, 0, "none more within the period");
        tokio::time::advance(every).await;
        assert_eq!(
            warn.allow(),
            Some(1_000),
            "the next says how many were left out"
        );
        assert_eq!(warn.allow(), None);
    }
}

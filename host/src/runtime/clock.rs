//! Where logical time comes from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use toka_kernel::Timestamp;

/// The host's source of logical time. The sequencer stamps each command
/// with `max(previous stamp, clock.now())`, so stamps never decrease even if
/// the clock does; the stamp is recorded, so replay never asks the clock.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Timestamp;

    /// How long the host may wait, in real time, for this clock to move
    /// `ms` milliseconds on (a task held until its tree's log-bytes debt
    /// is paid waits this long before it looks again). By default a
    /// second at most, for a clock that may move at any moment (a test's
    /// [`ManualClock`]); all of it for one that follows real time.
    fn real_wait(&self, ms: u64) -> Duration {
        Duration::from_millis(ms).min(Duration::from_secs(1))
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Timestamp(ms)
    }

    fn real_wait(&self, ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

/// A clock that moves only when told to: for tests of time-dependent
/// behaviour such as token expiry. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `ms` milliseconds since the epoch.
    #[must_use]
    pub fn at(ms: u64) -> Self {
        Self {
            ms: Arc::new(AtomicU64::new(ms)),
        }
    }

    /// Sets the time.
    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, ms: u64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.ms.load(Ordering::SeqCst))
    }
}

//! The disk's free space, watched by the log writer, and the reserve the
//! host keeps on it for its own records.
//!
//! Every operation an agent makes is a record on disk. Quotas bound how fast
//! a tree writes, but an agent that reschedules itself writes for ever, and
//! when the disk is full the host can no longer commit anything: it stops.
//! So once the free space falls below the reserve, agents' operations are
//! refused (as `limit-exceeded`, journaled like any refusal): the host stays
//! up, its own records (the refusals, tasks that fail, the operator's
//! commands) still fit, and reads go on while an operator frees space or
//! archives the log. Agents' operations are taken again as soon as the
//! writer sees the space back. An API client's install (a component's
//! bytes, up to 64 MiB each, kept beside the log) that would take the
//! free space below the reserve is refused too; the host's own caller is
//! never refused.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::text::Size;

/// How often the writer asks the store for the free space (a `statvfs`).
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Free space as last seen, against the reserve.
#[derive(Debug)]
pub(crate) struct DiskWatch {
    /// Bytes the host keeps for its own records (0: no reserve).
    reserve: u64,
    /// Free bytes when last checked; `u64::MAX` when unknown (a store not
    /// on a disk, or one that cannot tell).
    free: AtomicU64,
    /// When it was last checked.
    checked: Mutex<Option<Instant>>,
}

impl DiskWatch {
    /// A watch keeping `reserve` bytes free, nothing seen yet.
    pub(crate) fn new(reserve: u64) -> Self {
        Self {
            reserve,
            free: AtomicU64::new(u64::MAX),
            checked: Mutex::new(None),
        }
    }

    /// Records the free space from `read`, at most every [`CHECK_EVERY`]
    /// (it is called after every commit).
    pub(crate) fn check(&self, read: impl FnOnce() -> Option<u64>) {
        if self.reserve == 0 {
            return;
        }
        let now = Instant::now();
        {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            if checked.is_some_and(|at| now.duration_since(at) < CHECK_EVERY) {
                return;
            }
            *checked = Some(now);
        }
        self.free
            .store(read().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The bytes kept free.
    pub(crate) fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Free bytes as last seen, if known.
    pub(crate) fn free(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|f| *f != u64::MAX)
    }

    /// Why an agent's operation is refused now, if it is: the free space
    /// is below the reserve.
    pub(crate) fn refusal(&self) -> Option<String> {
        let free = self.free()?;
        (free < self.reserve).then(|| {
            format!(
                "the host's disk is nearly full: {} free, and the host keeps {} for its own records; agents' operations are refused until space is freed",
                Size(free),
                Size(self.reserve)
            )
        })
    }

    /// Why an API client's command storing `bytes` (a component's) is
    /// refused now, if it is: they would take the free space below the
    /// reserve.
    pub(crate) fn refusal_of(&self, bytes: u64) -> Option<String> {
        let free = self.free()?;
        (free.saturating_sub(bytes) < self.reserve).then(|| {
            format!(
                "the host's disk is nearly full: {} free, and the host keeps {} for its own records; {} more is refused until space is freed",
                Size(free),
                Size(self.reserve),
                Size(bytes)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::runtime::sequencer::disk::{CHECK_EVERY, DiskWatch};

    #[test]
    fn operations_are_refused_below_the_reserve_and_taken_again_above_it() {
        let watch = DiskWatch::new(100 << 20);
        assert_eq!(watch.refusal(), None, "nothing seen yet");
        watch.check(|| Some(99 << 20));
        let refusal = watch.refusal().expect("below the reserve");
        assert!(
            refusal.contains("99MiB free, and the host keeps 100MiB"),
            "{refusal}"
        );
        // Checked at most every 200 ms: a check right after reads nothing.
        watch.check(|| panic!("read again within the interval"));
        std::thread::sleep(CHECK_EVERY);
        watch.check(|| Some(100 << 20));
        assert_eq!(watch.refusal(), None);
        std::thread::sleep(CHECK_EVERY);
        watch.check(|| None);
        assert_eq!(watch.refusal(), None, "a store that cannot tell");
        let off = DiskWatch::new(0);
        off.check(|| panic!("no reserve: never read"));
        assert_eq!(off.refusal(), None);
        assert_eq!(off.refusal_of(u64::MAX), None);
    }

    #[test]
    fn bytes_that_would_take_the_free_space_below_the_reserve_are_refused() {
        let watch = DiskWatch::new(100 << 20);
        watch.check(|| Some(164 << 20));
        assert_eq!(watch.refusal_of(64 << 20), None);
        let refused = watch.refusal_of((64 << 20) + 1).expect("past the reserve");
        assert!(
            refused.contains("164MiB free, and the host keeps 100MiB"),
            "{refused}"
        );
    }
}

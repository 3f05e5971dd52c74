//! When the writer snapshots the state.
//!
//! A snapshot is due with the batch that passes `every` records since the
//! last one, so recovery replays a bounded tail. Encoding the state costs
//! a core in proportion to its size, so a state larger than
//! [`LARGE_STATE`] is also held back until the log has grown by that
//! state's size since its last snapshot: what snapshots cost stays
//! proportional to what is logged, whatever the number of agents (at
//! 100 000 agents the state is ~12 MiB: one snapshot per ~12 MiB of log
//! instead of one per 10 000 records), and recovery replays at most as
//! many log bytes as loading the snapshot reads. A small state is encoded
//! by the writer under the sequencer's lock and written with the batch; a
//! large one by the snapshot replica, off the lock (see `replica`).

/// A snapshot at least this big is taken no more often than once per its
/// own size of log bytes.
pub(super) const LARGE_STATE: u64 = 1 << 20;

/// Counts what was logged since the last snapshot and says when the next
/// one is due.
#[derive(Debug, Clone, Copy)]
pub(super) struct SnapshotPolicy {
    /// Records between snapshots, at least (0: never).
    every: u64,
    /// Sequence number of the last snapshot.
    last: u64,
    /// Bytes of records logged since the last snapshot.
    logged: u64,
    /// Size of the last snapshot this host wrote (0 before the first).
    last_len: u64,
}

impl SnapshotPolicy {
    /// Snapshots every `every` records (0: never), the newest being at
    /// `last` and `last_len` bytes long (0: none).
    pub(super) fn new(every: u64, last: u64, last_len: usize) -> Self {
        Self {
            every,
            last,
            logged: 0,
            last_len: last_len as u64,
        }
    }

    /// Whether snapshots are taken and the last one was at least
    /// [`LARGE_STATE`] big.
    pub(super) fn large(&self) -> bool {
        self.every > 0 && self.last_len >= LARGE_STATE
    }

    /// Size of the last snapshot (0 before the first).
    pub(super) fn last_len(&self) -> usize {
        usize::try_from(self.last_len).unwrap_or(usize::MAX)
    }

    /// A record of `bytes` was applied.
    pub(super) fn logged(&mut self, bytes: usize) {
        self.logged = self.logged.saturating_add(bytes as u64);
    }

    /// Is a snapshot at `head` due?
    pub(super) fn due(&self, head: u64) -> bool {
        self.every > 0
            && head >= self.last.saturating_add(self.every)
            && (self.last_len < LARGE_STATE || self.logged >= self.last_len)
    }

    /// A snapshot of `len` bytes was taken at `head` (one older than the
    /// last changes nothing).
    pub(super) fn taken(&mut self, head: u64, len: usize) {
        if head < self.last {
            return;
        }
        self.last = head;
        self.logged = 0;
        self.last_len = len as u64;
    }
}

#[cfg(test)]
mod tests {
    use crate::runtime::sequencer::snapshots::{LARGE_STATE, SnapshotPolicy};

    #[test]
    fn a_small_state_is_snapshotted_every_n_records() {
        let mut policy = SnapshotPolicy::new(100, 0, 0);
        assert!(!policy.due(99));
        assert!(policy.due(100));
        policy.taken(100, 4096);
        assert!(!policy.due(199));
        assert!(policy.due(200), "a small state waits for records only");
        assert!(
            !SnapshotPolicy::new(0, 0, 0).due(u64::MAX),
            "0 turns them off"
        );
        let big = 2 * LARGE_STATE as usize;
        assert!(SnapshotPolicy::new(100, 0, big).large());
        assert!(
            !SnapshotPolicy::new(0, 0, big).large(),
            "no replica when snapshots are off"
        );
    }

    #[test]
    fn a_large_state_waits_until_the_log_has_grown_by_its_size() {
        let big = 3 * LARGE_STATE as usize;
        let mut policy = SnapshotPolicy::new(100, 0, 0);
        policy.taken(100, big);
        for _ in 0..200 {
            policy.logged(1_000);
        }
        assert!(!policy.due(300), "200 kB logged, the state is 3 MiB");
        for _ in 0..3_000 {
            policy.logged(1_000);
        }
        assert!(policy.due(3_300));
        policy.taken(3_300, big);
        assert!(!policy.due(3_400), "the count starts again");
        // One asked for at an older head (queued before this one) changes
        // nothing.
        for _ in 0..3_200 {
            policy.logged(1_000);
        }
        policy.taken(3_200, 4096);
        assert!(policy.due(6_300) && policy.large());
    }
}

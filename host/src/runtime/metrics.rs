//! What the host counts while it runs: commits (batch sizes, latency) and
//! committed events by kind. Read with [`Host::metrics`](crate::Host::metrics);
//! the counts start at zero when the host opens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::capability::gate::GateCounts;
use crate::log::committed::CommittedRecord;

/// Upper bounds of the batch-size buckets, in records.
const BATCH_BOUNDS: [f64; 10] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262_144.0,
];

/// Upper bounds of the commit-latency buckets, in seconds.
const LATENCY_BOUNDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A histogram with fixed buckets, Prometheus style: `counts[i]` is the
/// number of observations `<= bounds[i]` (cumulative), `count` includes
/// those above the last bound.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Histogram {
    /// Upper bounds of the buckets, ascending.
    pub bounds: Vec<f64>,
    /// Cumulative counts per bucket.
    pub counts: Vec<u64>,
    /// The sum of all observations.
    pub sum: f64,
    /// The number of observations.
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// A copy of the host's counters (see [`Host::metrics`](crate::Host::metrics)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HostMetrics {
    /// Records committed since the host opened.
    pub records: u64,
    /// Batches committed since the host opened.
    pub batches: u64,
    /// Records per committed batch.
    pub batch_records: Histogram,
    /// Seconds each batch took to commit (the store's write and sync).
    pub commit_seconds: Histogram,
    /// Committed events by kind (`task_completed`, `capability_denied`,
    /// ...), only kinds seen so far.
    pub events: Vec<(&'static str, u64)>,
    /// Tokens whose signatures the gate verified (read from the store:
    /// tokens the host makes are kept verified from their making).
    pub tokens_verified: u64,
    /// Tokens the gate took into its verified set (made here or verified).
    pub tokens_admitted: u64,
    /// Capability checks (one per operation, more for a spawn's rights).
    pub checks: u64,
    /// Checks that ran the biscuit authorizer; the others were answered
    /// from the gate's caches.
    pub authorizations: u64,
    /// Snapshots of the state the host stored since it opened.
    pub snapshots: u64,
    /// Of those, the ones encoded off the sequencer's lock (by the
    /// snapshot replica, once the state is large): the others held every
    /// agent's operations while they were encoded.
    pub snapshots_off_lock: u64,
}

impl HostMetrics {
    /// How many events of `kind` were committed since the host opened.
    #[must_use]
    pub fn events_of(&self, kind: &str) -> u64 {
        self.events
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

/// The live counters: commits, updated by the log writer once per batch,
/// the gate's, and the snapshots'.
#[derive(Debug)]
pub(crate) struct Metrics {
    commits: Mutex<HostMetrics>,
    gate: Arc<GateCounts>,
    pub(crate) snapshots: Arc<SnapshotCounts>,
}

/// Snapshots stored, counted by whoever stores them.
#[derive(Debug, Default)]
pub(crate) struct SnapshotCounts {
    /// Encoded under the sequencer's lock.
    locked: AtomicU64,
    /// Encoded off the lock.
    off_lock: AtomicU64,
}

impl SnapshotCounts {
    /// A snapshot was stored; `off_lock`: encoded without the sequencer's
    /// lock.
    pub(crate) fn stored(&self, off_lock: bool) {
        let counter = if off_lock {
            &self.off_lock
        } else {
            &self.locked
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub(crate) fn new(gate: Arc<GateCounts>) -> Self {
        let commits = Mutex::new(HostMetrics {
            records: 0,
            batches: 0,
            batch_records: Histogram::new(&BATCH_BOUNDS),
            commit_seconds: Histogram::new(&LATENCY_BOUNDS),
            events: Vec::new(),
            tokens_verified: 0,
            tokens_admitted: 0,
            checks: 0,
            authorizations: 0,
            snapshots: 0,
            snapshots_off_lock: 0,
        });
        Self {
            commits,
            gate,
            snapshots: Arc::default(),
        }
    }

    /// Counts a committed batch.
    pub(crate) fn committed(&self, records: &[CommittedRecord], took: Duration) {
        let mut m = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        m.records += records.len() as u64;
        m.batches += 1;
        m.batch_records.observe(records.len() as f64);
        m.commit_seconds.observe(took.as_secs_f64());
        for event in records.iter().flat_map(|r| &r.events) {
            let kind = event.kind();
            match m.events.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => m.events.push((kind, 1)),
            }
        }
    }

    pub(crate) fn get(&self) -> HostMetrics {
        let mut m = self
            .commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        m.tokens_verified = read(&self.gate.verified);
        m.tokens_admitted = read(&self.gate.admitted);
        m.checks = read(&self.gate.checks);
        m.authorizations = read(&self.gate.authorized);
        m.snapshots_off_lock = read(&self.snapshots.off_lock);
        m.snapshots = read(&self.snapshots.locked) + m.snapshots_off_lock;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 3]);
        assert_eq!(h.count, 4);
        assert!((h.sum - 56.5).abs() < 1e-9);
    }
}

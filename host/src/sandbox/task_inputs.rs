//! The clocks and randomness a guest sees: deterministic per task.
//!
//! A task that runs again after a crash must submit the same operations, so
//! nothing it reads may differ between the runs. The wall clock reads the
//! task's start time (the logical time of its `StartTask` record) plus one
//! microsecond per read; the monotonic clock counts from zero, one
//! microsecond per read; random bytes (both WASI's secure and insecure ones)
//! are a BLAKE3 stream keyed by a host secret and the task id, so they are
//! the same on a re-run and unpredictable to anyone without the root key.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand_core::TryRng;
use toka_kernel::{EntityId, Timestamp};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// Shared by the clocks and the random source of one agent's WASI context;
/// reset at the start of each task (and for `init`).
#[derive(Clone)]
pub(crate) struct TaskInputs {
    inner: Arc<Mutex<Inputs>>,
    key: [u8; 32],
}

struct Inputs {
    start: Timestamp,
    wall_reads: u64,
    monotonic_reads: u64,
    random: Stream,
}

/// A BLAKE3 output stream read a block at a time: the reader computes a
/// whole block for each read, and WASI asks for random bytes one `u32` per
/// byte. The bytes are the stream's, in order, however they are asked for.
struct Stream {
    reader: blake3::OutputReader,
    block: [u8; STREAM_BLOCK],
    /// Bytes of `block` handed out.
    used: usize,
}

/// Bytes of the stream read at once (four BLAKE3 blocks).
const STREAM_BLOCK: usize = 256;

impl Stream {
    fn new(reader: blake3::OutputReader) -> Self {
        Self {
            reader,
            block: [0; STREAM_BLOCK],
            used: STREAM_BLOCK,
        }
    }

    fn fill(&mut self, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            if self.used == STREAM_BLOCK {
                self.reader.fill(&mut self.block);
                self.used = 0;
            }
            let n = dst.len().min(STREAM_BLOCK - self.used);
            dst[..n].copy_from_slice(&self.block[self.used..self.used + n]);
            self.used += n;
            dst = &mut dst[n..];
        }
    }
}

/// Bytes one call for random bytes may ask for (WASI's default is 64 MiB,
/// made a byte at a time in one host call that nothing interrupts: seconds
/// of a worker thread, and the bytes outside the agent's memory). More
/// traps.
pub(crate) const MAX_RANDOM_BYTES: u64 = 1 << 20;

impl TaskInputs {
    /// Inputs keyed by `key` (a host secret), positioned for `init`.
    pub(crate) fn new(key: [u8; 32], agent: EntityId) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inputs {
                start: Timestamp(0),
                wall_reads: 0,
                monotonic_reads: 0,
                random: stream(&key, b"init", agent),
            })),
            key,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inputs> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Restarts every input for `task`, started at `start`.
    pub(crate) fn begin(&self, task: EntityId, start: Timestamp) {
        let mut inputs = self.lock();
        inputs.start = start;
        inputs.wall_reads = 0;
        inputs.monotonic_reads = 0;
        inputs.random = stream(&self.key, b"task", task);
    }

    pub(crate) fn wall_clock(&self) -> WallClock {
        WallClock(self.clone())
    }

    pub(crate) fn monotonic_clock(&self) -> MonotonicClock {
        MonotonicClock(self.clone())
    }

    pub(crate) fn random(&self) -> Random {
        Random(self.clone())
    }
}

fn stream(key: &[u8; 32], what: &[u8], id: EntityId) -> Stream {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(what);
    hasher.update(&id.as_u128().to_be_bytes());
    Stream::new(hasher.finalize_xof())
}

/// The task's wall clock.
pub(crate) struct WallClock(TaskInputs);

impl HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }

    fn now(&self) -> Duration {
        let mut inputs = self.0.lock();
        inputs.wall_reads += 1;
        Duration::from_millis(inputs.start.0) + Duration::from_micros(inputs.wall_reads)
    }
}

/// The task's monotonic clock, in nanoseconds.
pub(crate) struct MonotonicClock(TaskInputs);

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1_000
    }

    fn now(&self) -> u64 {
        let mut inputs = self.0.lock();
        inputs.monotonic_reads += 1;
        inputs.monotonic_reads * 1_000
    }
}

/// The task's random bytes.
pub(crate) struct Random(TaskInputs);

impl TryRng for Random {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.lock().random.fill(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_the_stream_s_however_they_are_asked_for() {
        let inputs = TaskInputs::new([3; 32], EntityId::from_u128(1));
        inputs.begin(EntityId::from_u128(9), Timestamp(0));
        let mut random = inputs.random();
        // One byte at a time, then a run across several blocks.
        let mut asked = vec![0u8; 1000];
        for byte in &mut asked[..300] {
            let mut one = [0u8];
            random.try_fill_bytes(&mut one).unwrap();
            *byte = one[0];
        }
        random.try_fill_bytes(&mut asked[300..]).unwrap();
        let mut whole = vec![0u8; 1000];
        let mut hasher = blake3::Hasher::new_keyed(&[3; 32]);
        hasher.update(b"task");
        hasher.update(&9u128.to_be_bytes());
        hasher.finalize_xof().fill(&mut whole);
        assert_eq!(asked, whole);
    }

    #[test]
    fn a_task_sees_the_same_inputs_every_time_it_runs() {
        let read = |inputs: &TaskInputs| {
            let mut random = inputs.random();
            (
                inputs.wall_clock().now(),
                inputs.wall_clock().now(),
                inputs.monotonic_clock().now(),
                random.try_next_u64().unwrap(),
            )
        };
        let task = EntityId::from_u128(7);
        let start = Timestamp(1_800_000_000_000);
        let first = TaskInputs::new([1; 32], EntityId::from_u128(1));
        first.begin(task, start);
        let a = read(&first);
        // Another instance (after a restart), same task: the same inputs.
        let second = TaskInputs::new([1; 32], EntityId::from_u128(1));
        second.begin(task, start);
        assert_eq!(read(&second), a);
        assert_eq!(
            a.0,
            Duration::from_millis(start.0) + Duration::from_micros(1)
        );
        assert!(a.1 > a.0, "the wall clock moves forward");
        // Another task or another key: other random bytes.
        second.begin(EntityId::from_u128(8), start);
        assert_ne!(read(&second).3, a.3);
        let other_key = TaskInputs::new([2; 32], EntityId::from_u128(1));
        other_key.begin(task, start);
        assert_ne!(read(&other_key).3, a.3);
    }
}

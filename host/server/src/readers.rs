//! Where read clients' replays of the log run: a page of events from the
//! middle of the log, or an event stream catching up, replays the records
//! from the newest snapshot before it — seconds of CPU on a long log, and
//! any client with a `read` token may ask for one after another. They run
//! on a few threads of their own at a low scheduling priority (nice 10 on
//! Linux): on a busy machine they get the CPU that agents, the log writer
//! and the API's other requests leave, not an equal share of it; on an
//! idle one they run at full speed. The turns in front of them
//! ([`ReplayTurns`]: a few in all, one per family of tokens) keep a
//! client that gave up from leaving work queued here, and one client from
//! holding them all. Pages of raw records (`/v1/log/records`, up to 4 MiB
//! read and encoded each) take the same turns and run here; so do the
//! committed state's encodings and counts a read client asks for
//! (`/v1/log/state`, the census, the agent index), without a turn.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, mpsc};

use toka_kernel::Digest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// A replay to run.
type Job = Box<dyn FnOnce() + Send>;

/// The nice value of the readers' threads: what the Linux scheduler weighs
/// at about a tenth of a thread at the default 0.
const NICE: i32 = 10;

/// Threads that run read clients' replays at a low priority.
#[derive(Debug)]
pub(crate) struct LogReaders {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl LogReaders {
    /// `threads` threads (at least one), which end when this is dropped.
    pub(crate) fn new(threads: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("toka-log-reader-{n}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(mpsc::RecvError) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start a log reader thread");
            }
        }
        Self {
            jobs: Mutex::new(jobs),
        }
    }

    /// Runs `replay` on a reader thread and returns what it returns (or
    /// here, should no reader thread run); a panic in it goes on in the
    /// caller, as if it had run here.
    pub(crate) async fn run<R: Send + 'static>(
        &self,
        replay: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                replay,
            )));
        });
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job);
        if let Err(mpsc::SendError(job)) = sent {
            job();
        }
        match answered.await {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // A job is dropped unrun only with its thread, which ends only
            // once this (its sender) is gone.
            Err(_) => unreachable!("a log reader answers every job it takes"),
        }
    }
}

/// Turns at replaying the log: a few at once in all, and one at a time
/// per family of operator tokens ([`family`](crate::auth::family)), so
/// one client asking without pause cannot hold every turn and keep other
/// clients' pages waiting.
#[derive(Debug)]
pub(crate) struct ReplayTurns {
    all: Arc<Semaphore>,
    /// Per family waiting for or holding a turn (dropped once none is).
    families: Mutex<HashMap<Digest, Arc<Semaphore>>>,
}

/// A turn at replaying the log, given back when dropped.
#[derive(Debug)]
pub(crate) struct ReplayTurn {
    _family: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl ReplayTurns {
    /// `turns` at once in all.
    pub(crate) fn new(turns: usize) -> Self {
        Self {
            all: Arc::new(Semaphore::new(turns)),
            families: Mutex::default(),
        }
    }

    /// A turn for `family`, once its last one is given back and one of all
    /// is free; `None` when the turns are closed.
    pub(crate) async fn take(&self, family: Digest) -> Option<ReplayTurn> {
        let mine = {
            let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
            // Families nobody holds or waits for go (a handful at most
            // are in the map: those with a request in flight).
            families.retain(|_, turn| Arc::strong_count(turn) > 1);
            Arc::clone(
                families
                    .entry(family)
                    .or_insert_with(|| Arc::new(Semaphore::new(1))),
            )
        };
        let family = mine.acquire_owned().await.ok()?;
        let all = Arc::clone(&self.all).acquire_owned().await.ok()?;
        Some(ReplayTurn {
            _family: family,
            _all: all,
        })
    }
}

/// Lowers the calling thread's scheduling priority (on Linux the nice
/// value is per thread); elsewhere, or when refused, it runs as it is.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        tracing::warn!(error = %e, "could not lower a log reader's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replays_run_on_threads_of_lower_priority_and_a_panic_reaches_the_caller() {
        let base = rustix::process::getpriority_process(None).unwrap();
        let readers = LogReaders::new(2);
        let (name, nice) = readers
            .run(|| {
                let name = std::thread::current().name().map(str::to_owned);
                (name, rustix::process::getpriority_process(None).unwrap())
            })
            .await;
        assert!(name.unwrap().starts_with("toka-log-reader-"));
        if cfg!(target_os = "linux") {
            // At least as nice as NICE (a process already nicer stays so).
            assert!(nice >= NICE, "{nice}");
            // The caller's own thread is left as it was.
            assert_eq!(rustix::process::getpriority_process(None).unwrap(), base);
        }
        // A panic goes on in the caller; the thread goes on serving.
        let one = Arc::new(LogReaders::new(1));
        for _ in 0..3 {
            let one = Arc::clone(&one);
            let panicked = tokio::spawn(async move {
                one.run(|| panic!("a replay that fails")).await;
            });
            assert!(panicked.await.unwrap_err().is_panic());
        }
        let thread = one
            .run(|| std::thread::current().name().map(str::to_owned))
            .await;
        assert_eq!(thread.as_deref(), Some("toka-log-reader-0"));
        assert_eq!(readers.run(|| 2 + 2).await, 4);
    }

    #[tokio::test]
    async fn a_family_holds_one_replay_turn_at_a_time() {
        let turns = Arc::new(ReplayTurns::new(2));
        let (greedy, other) = (Digest::of(b"greedy"), Digest::of(b"other"));
        let first = turns.take(greedy).await.unwrap();
        // The same family's second request waits for its first...
        let waiting = tokio::spawn({
            let turns = Arc::clone(&turns);
            async move { turns.take(greedy).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // ...while another family takes the other turn at once.
        let second = turns.take(other).await.unwrap();
        drop(first);
        waiting.await.unwrap().unwrap();
        drop(second);
        // Nothing held: the families are let go at the next take.
        drop(turns.take(other).await.unwrap());
        assert_eq!(turns.families.lock().unwrap().len(), 1);
    }
}

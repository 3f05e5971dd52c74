//! The tasks callers wait for the end of: the writer commits such a
//! task's end without lingering (see `Sequencer::awaiting_ends`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use toka_kernel::TaskId;

/// The tasks callers wait for the end of, each with how many wait.
#[derive(Debug, Default)]
pub(crate) struct EndsAwaited {
    /// How many callers wait, looked at without the lock.
    waiting: AtomicUsize,
    /// Each awaited task, with how many callers wait for it; ordered, not
    /// hashed: callers name the ids.
    tasks: Mutex<BTreeMap<TaskId, usize>>,
}

impl EndsAwaited {
    fn tasks(&self) -> MutexGuard<'_, BTreeMap<TaskId, usize>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a caller waiting for `task` to end, until the guard drops.
    pub(crate) fn wait(self: &Arc<Self>, task: TaskId) -> AwaitingEnds {
        *self.tasks().entry(task).or_default() += 1;
        self.waiting.fetch_add(1, Ordering::Relaxed);
        AwaitingEnds {
            ends: Arc::clone(self),
            task,
        }
    }

    /// Whether a caller waits for `task`'s end.
    pub(crate) fn awaited(&self, task: TaskId) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0 && self.tasks().contains_key(&task)
    }
}

/// A caller waiting for a task to end (see [`EndsAwaited::wait`]).
#[derive(Debug)]
pub(crate) struct AwaitingEnds {
    ends: Arc<EndsAwaited>,
    task: TaskId,
}

impl Drop for AwaitingEnds {
    fn drop(&mut self) {
        let mut tasks = self.ends.tasks();
        if let Some(count) = tasks.get_mut(&self.task) {
            *count -= 1;
            if *count == 0 {
                tasks.remove(&self.task);
            }
        }
        self.ends.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use toka_kernel::TaskId;

    use crate::runtime::sequencer::awaited::EndsAwaited;

    #[test]
    fn a_task_s_end_is_awaited_while_one_of_its_callers_waits() {
        let ends = Arc::new(EndsAwaited::default());
        let (a, b) = (TaskId::from_u128(1), TaskId::from_u128(2));
        assert!(!ends.awaited(a));
        let first = ends.wait(a);
        let second = ends.wait(a);
        // A caller waiting for one task does not hurry another's end.
        assert!(ends.awaited(a));
        assert!(!ends.awaited(b));
        drop(first);
        assert!(ends.awaited(a), "one caller still waits");
        drop(second);
        assert!(!ends.awaited(a));
        assert!(ends.tasks().is_empty());
        assert_eq!(ends.waiting.load(Ordering::Relaxed), 0);
    }
}

//! Tasks as a caller sees them: queued, running or ended, and waiting for
//! one to end.
//!
//! Unfinished tasks are in the world state; a finished task leaves it, and
//! the store's index ([`EventStore::task_end`](crate::EventStore::task_end))
//! names the record that ended it. Waiters register here and the router
//! wakes them with each committed batch, so a waiter costs nothing until
//! its task ends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use toka_kernel::{AgentId, Event, IdHash, TaskId, TaskStatus, WorldState};
use tokio::sync::oneshot;

use crate::log::committed::CommittedRecord;

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// In its agent's queue.
    Queued,
    /// Its agent is running it.
    Running,
    /// It finished with this output.
    Completed {
        /// The agent's output bytes.
        output: Vec<u8>,
    },
    /// It failed (the agent returned an error, trapped, was terminated...).
    Failed {
        /// Why, for a person.
        reason: String,
    },
}

impl TaskState {
    /// Whether the task ended (completed or failed).
    #[must_use]
    pub fn is_end(&self) -> bool {
        matches!(self, TaskState::Completed { .. } | TaskState::Failed { .. })
    }

    /// `queued`, `running`, `completed` or `failed`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Completed { .. } => "completed",
            TaskState::Failed { .. } => "failed",
        }
    }
}

/// Where a task is (see [`Host::find_task`](crate::Host::find_task)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFound {
    /// Held in memory: queued, running, or among the recently ended.
    Held(TaskInfo),
    /// Ended longer ago: [`Host::task_from_log`](crate::Host::task_from_log)
    /// reads it back.
    InLog,
    /// Never scheduled (or ended before the index of task ends existed).
    Unknown,
}

/// One task (see [`Host::task`](crate::Host::task)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskInfo {
    /// The task.
    pub id: TaskId,
    /// The agent that runs it.
    pub agent: AgentId,
    /// Where it is.
    pub state: TaskState,
    /// What to do (known while the task is unfinished).
    pub description: Option<String>,
    /// The record that scheduled it (known while the task is unfinished).
    pub scheduled_seq: Option<u64>,
    /// The record that ended it.
    pub ended_seq: Option<u64>,
}

impl TaskInfo {
    /// The task as the state has it, if it is unfinished.
    pub(crate) fn unfinished(state: &WorldState, id: TaskId) -> Option<TaskInfo> {
        let task = state.task(id)?;
        Some(TaskInfo {
            id,
            agent: task.agent,
            state: match task.status {
                TaskStatus::Queued => TaskState::Queued,
                TaskStatus::Running(_) => TaskState::Running,
            },
            description: Some(task.spec.description.clone()),
            scheduled_seq: Some(task.scheduled_seq),
            ended_seq: None,
        })
    }

    /// The task `event` ends, if it ends one.
    pub(crate) fn ended(seq: u64, event: &Event) -> Option<TaskInfo> {
        let (id, agent, state) = match event {
            Event::TaskCompleted {
                task,
                agent,
                output,
            } => (
                *task,
                *agent,
                TaskState::Completed {
                    output: output.clone(),
                },
            ),
            Event::TaskFailed {
                task,
                agent,
                reason,
            } => (
                *task,
                *agent,
                TaskState::Failed {
                    reason: reason.clone(),
                },
            ),
            _ => return None,
        };
        Some(TaskInfo {
            id,
            agent,
            state,
            description: None,
            scheduled_seq: None,
            ended_seq: Some(seq),
        })
    }
}

/// Callers waiting for tasks to end.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// Keyed by ids clients name (before they are known to be tasks'):
    /// hashed with a random key, not [`IdHash`].
    waiting: Mutex<HashMap<TaskId, Vec<oneshot::Sender<TaskInfo>>>>,
    /// How many tasks have waiters: the router skips the lock at zero.
    tasks: AtomicUsize,
    /// The tasks that ended last, so asking for a task that just ended
    /// does not read the log back.
    recent: Mutex<RecentEnds>,
    /// Nothing more will be committed: a new waiter is told at once.
    closed: AtomicBool,
}

/// How many ended tasks [`Waiters`] remembers.
const RECENT_ENDS: usize = 8192;
/// The largest output (or failure reason) remembered with an ended task; a
/// task with a larger one is read back from the log when asked for.
const RECENT_OUTPUT_MAX: usize = 4096;

/// The most recent ends, oldest first; bounded.
#[derive(Debug, Default)]
struct RecentEnds {
    by_task: HashMap<TaskId, TaskInfo, IdHash>,
    order: std::collections::VecDeque<TaskId>,
}

impl RecentEnds {
    fn remember(&mut self, info: TaskInfo) {
        let size = match &info.state {
            TaskState::Completed { output } => output.len(),
            TaskState::Failed { reason } => reason.len(),
            _ => 0,
        };
        if size > RECENT_OUTPUT_MAX {
            return;
        }
        if self.order.len() >= RECENT_ENDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_task.remove(&oldest);
        }
        self.order.push_back(info.id);
        self.by_task.insert(info.id, info);
    }
}

impl Waiters {
    /// Registers a waiter for `task`.
    pub(crate) fn wait(&self, task: TaskId) -> oneshot::Receiver<TaskInfo> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.lock();
        if self.closed.load(Ordering::Acquire) {
            return rx;
        }
        let list = waiting.entry(task).or_default();
        // Waiters that gave up (timed out) are dropped as new ones come.
        list.retain(|w| !w.is_closed());
        list.push(tx);
        self.tasks.store(waiting.len(), Ordering::Release);
        rx
    }

    /// Forgets the waiters of `task` that gave up.
    pub(crate) fn gave_up(&self, task: TaskId) {
        let mut waiting = self.lock();
        if let Some(list) = waiting.get_mut(&task) {
            list.retain(|w| !w.is_closed());
            if list.is_empty() {
                waiting.remove(&task);
            }
        }
        self.tasks.store(waiting.len(), Ordering::Release);
    }

    /// Wakes the waiters of the tasks these committed records end, and
    /// remembers the ends.
    pub(crate) fn committed(&self, records: &[CommittedRecord]) {
        let mut ended = records.iter().flat_map(|record| {
            record
                .events
                .iter()
                .filter_map(|event| TaskInfo::ended(record.seq, event))
        });
        let Some(first) = ended.next() else {
            return;
        };
        let ended: Vec<TaskInfo> = std::iter::once(first).chain(ended).collect();
        if self.tasks.load(Ordering::Acquire) > 0 {
            let mut waiting = self.lock();
            for info in &ended {
                if let Some(list) = waiting.remove(&info.id) {
                    for waiter in list {
                        let _ = waiter.send(info.clone());
                    }
                }
            }
            self.tasks.store(waiting.len(), Ordering::Release);
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for info in ended {
            recent.remember(info);
        }
    }

    /// Nothing more will be committed: every waiter, and every later one,
    /// is told at once (its receiver ends without a task).
    pub(crate) fn close(&self) {
        let mut waiting = self.lock();
        self.closed.store(true, Ordering::Release);
        waiting.clear();
        self.tasks.store(0, Ordering::Release);
    }

    /// A task that ended recently, as it ended.
    pub(crate) fn recently_ended(&self, task: TaskId) -> Option<TaskInfo> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.by_task.get(&task).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Vec<oneshot::Sender<TaskInfo>>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

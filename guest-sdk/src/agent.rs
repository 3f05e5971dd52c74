//! The `Agent` trait and the glue `export_agent!` expands to.

use std::cell::RefCell;

use crate::bindings::toka::agent::types as wit;
use crate::context::Context;
use crate::id::TaskId;

/// A task handed to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task's id.
    pub id: TaskId,
    /// What to do.
    pub description: String,
}

/// An agent: one value per instance, handling one task at a time.
///
/// Export the type with [`export_agent!`](crate::export_agent). Returning
/// `Err` fails the task with that reason; a panic fails it too (the host
/// records the trap). Keep durable data in [`Context::put`]: the host may
/// re-create the instance (after a fault or a restart), and fields are lost
/// then.
pub trait Agent: Default + 'static {
    /// Called once per instance, before any task. The default does nothing.
    ///
    /// # Errors
    ///
    /// A reason; the host records it as a fault of the agent.
    fn init(&mut self, ctx: &mut Context) -> Result<(), String> {
        let _ = ctx;
        Ok(())
    }

    /// Handles one task and returns its output (≤ 1 MiB).
    ///
    /// # Errors
    ///
    /// A reason, recorded in the log as the task's failure.
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String>;
}

/// The `init` export: makes the agent value and calls [`Agent::init`].
#[doc(hidden)]
pub fn init<A: Agent>(cell: &RefCell<Option<A>>) -> Result<(), String> {
    let mut slot = cell.borrow_mut();
    slot.get_or_insert_with(A::default)
        .init(&mut Context::new())
}

/// The `handle-task` export: calls [`Agent::handle_task`] on the agent value
/// (made on first use if the host skipped `init`).
#[doc(hidden)]
pub fn handle_task<A: Agent>(
    cell: &RefCell<Option<A>>,
    task: wit::Task,
) -> Result<Vec<u8>, String> {
    let mut slot = cell.borrow_mut();
    let task = Task {
        id: task.id.into(),
        description: task.description,
    };
    slot.get_or_insert_with(A::default)
        .handle_task(&mut Context::new(), task)
}

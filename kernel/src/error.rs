//! Why the kernel rejects a command.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::Timestamp;
use crate::id::{EntityId, TaskId};
use crate::limits::Limit;
use crate::operation::OpKind;
use crate::rules::Quota;

/// The kinds of entity an [`KernelError::UnknownEntity`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs, reason = "the names say it")]
pub enum EntityKind {
    Agent,
    Task,
    Component,
    Publisher,
    Package,
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntityKind::Agent => "agent",
            EntityKind::Task => "task",
            EntityKind::Component => "component",
            EntityKind::Publisher => "publisher",
            EntityKind::Package => "package",
        })
    }
}

/// Why [`Kernel::apply`](crate::Kernel::apply) rejected a command. A rejected
/// command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The origin may not submit this operation at all, whatever its token
    /// says (e.g. an agent submitting a host-only operation, or a token that
    /// is not the one the agent is bound to).
    #[error("capability denied: {origin} may not {operation}: {reason}")]
    CapabilityDenied {
        /// Who asked.
        origin: EntityId,
        /// What they asked for.
        operation: OpKind,
        /// Why not.
        reason: String,
    },
    /// The operation names an entity that does not exist (or no longer does:
    /// finished tasks leave the state).
    #[error("unknown {kind} {id}")]
    UnknownEntity {
        /// Agent, task or component.
        kind: EntityKind,
        /// The id or digest, as text.
        id: String,
    },
    /// The operation is not valid in the current state.
    #[error("invalid {operation}: {message}")]
    InvalidOperation {
        /// The operation.
        operation: OpKind,
        /// What is wrong, for a person.
        message: String,
    },
    /// No handler is registered for the extension family.
    #[error("unsupported operation: no handler registered for extension family `{family}`")]
    UnsupportedOperation {
        /// The family named by the operation.
        family: String,
    },
    /// A size or count limit would be exceeded.
    #[error("{limit} limit exceeded: {actual} > {max}")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The limit's value.
        max: u64,
        /// The value the operation would have produced.
        actual: u64,
    },
    /// An agent, or its tree through this ancestor, would spend more than
    /// a quota allows.
    #[error("quota exceeded: {quota} of agent {agent} would be {wanted}, the limit is {limit}")]
    QuotaExceeded {
        /// The agent whose account cannot pay: the origin or an ancestor.
        agent: EntityId,
        /// Which quota.
        quota: Quota,
        /// The quota's value.
        limit: u64,
        /// What the operation would have made of it.
        wanted: u64,
    },
    /// A task was already scheduled under this idempotency key
    /// ([`Operation::ScheduleTaskOnce`](crate::Operation::ScheduleTaskOnce)):
    /// a retry of the same request is answered with `task`; a different
    /// request under the same key is a mistake of the client.
    #[error("{}", already_scheduled(key, task, *same_request))]
    AlreadyScheduled {
        /// The key.
        key: String,
        /// The task scheduled under it.
        task: TaskId,
        /// Whether the request (agent and description) is the one that
        /// scheduled the task.
        same_request: bool,
    },
    /// The command's logical time is before the previous command's.
    #[error("logical time went backwards: {time} is before {last}")]
    TimeWentBackwards {
        /// The previous command's time.
        last: Timestamp,
        /// This command's time.
        time: Timestamp,
    },
}

fn already_scheduled(key: &str, task: &TaskId, same_request: bool) -> String {
    if same_request {
        format!("idempotency key {key:?} already scheduled task {task}")
    } else {
        format!(
            "idempotency key {key:?} was used for task {task} with a different agent or description"
        )
    }
}

impl KernelError {
    pub(crate) fn invalid(operation: OpKind, message: impl Into<String>) -> Self {
        KernelError::InvalidOperation {
            operation,
            message: message.into(),
        }
    }

    pub(crate) fn unknown(kind: EntityKind, id: impl fmt::Display) -> Self {
        KernelError::UnknownEntity {
            kind,
            id: id.to_string(),
        }
    }
}

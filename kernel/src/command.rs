//! Commands: an operation plus everything the kernel needs to apply it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{EntityId, TaskId};
use crate::operation::Operation;

/// A logical timestamp assigned by the host, in milliseconds since the Unix
/// epoch.
///
/// The kernel never reads a clock: the host stamps each command, the kernel
/// checks that stamps never decrease, and the stamp is recorded in the log so
/// replay sees the same time.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// What allowed a command: the record an auditor re-checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Authorization {
    /// The host acting on its own authority: operator commands and the task
    /// lifecycle records it writes on an agent's behalf.
    System,
    /// The capability token the origin agent is bound to (named by digest in
    /// its [`AgentSpec`](crate::AgentSpec), so an auditor finds it from the log
    /// alone). Not repeated in every record: it would add a third BLAKE3
    /// block to the hash of a small record.
    Token,
    /// An operator's token, by the digest of its bytes (stored beside the
    /// log, as agents' tokens are): a command an API client made. The
    /// origin is [`EntityId::SYSTEM`]; the host checked the token's
    /// operator right before it applied the command, and an auditor
    /// re-checks it from the log.
    Operator(crate::id::Digest),
}

/// The position of an operation inside a task: the key that makes re-running
/// a task after a crash apply each operation exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpKey {
    /// The running task that submitted the operation.
    pub task: TaskId,
    /// 0 for the task's first operation, then 1, 2, ...
    pub index: u32,
}

/// An operation with its origin, time, authorization and cause: the input of
/// [`Kernel::apply`](crate::Kernel::apply) and the content of a log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Who asks: an agent, or [`EntityId::SYSTEM`].
    pub origin: EntityId,
    /// The host-assigned logical time; never less than the previous command's.
    pub time: Timestamp,
    /// What allowed it.
    pub auth: Authorization,
    /// The task and index that produced it, when an agent submits it while
    /// running a task.
    pub cause: Option<OpKey>,
    /// What to do.
    pub op: Operation,
}

impl Command {
    /// A command the host issues on its own authority, outside any task.
    #[must_use]
    pub fn system(origin: EntityId, time: Timestamp, op: Operation) -> Self {
        Self {
            origin,
            time,
            auth: Authorization::System,
            cause: None,
            op,
        }
    }
}

//! Size and count limits the kernel enforces, kept in one place.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every size and count limit of the kernel, with documented defaults.
///
/// Limits are part of the deterministic configuration: a log must be replayed
/// with the limits it was written under (the host stores them next to the
/// log), otherwise a record accepted then could be rejected now.
///
/// # Examples
///
/// ```
/// use toka_kernel::Limits;
///
/// let limits = Limits { max_queue: 16, ..Limits::default() };
/// assert_eq!(limits.max_task_description, 4096);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes of a task description. Default 4 KiB.
    pub max_task_description: u32,
    /// Bytes of an agent's or a component's display name. Default 256 B.
    pub max_name: u32,
    /// Bytes of one observation's data. Default 1 MiB.
    pub max_observation: u32,
    /// Bytes of an observation topic. Default 256 B.
    pub max_topic: u32,
    /// Bytes of a capability token. Default 8 KiB. The kernel never sees
    /// token bytes; the host enforces this one, and it lives here so every
    /// limit has one home.
    pub max_token: u32,
    /// Bytes of a key in an agent's state namespace. Default 256 B.
    pub max_state_key: u32,
    /// Bytes of one value in an agent's state namespace. Default 64 KiB.
    pub max_state_value: u32,
    /// Keys in one agent's state namespace. Default 4096.
    pub max_state_keys: u32,
    /// Total bytes (keys plus values) in one agent's state namespace.
    /// Default 16 MiB.
    pub max_state_bytes: u64,
    /// Tasks queued for one agent (not counting the running one). Default 1024.
    pub max_queue: u32,
    /// Bytes of a task's output. Default 1 MiB.
    pub max_output: u32,
    /// Bytes of a failure, fault, termination or denial reason. Default 4 KiB.
    pub max_reason: u32,
    /// Bytes of an extension operation's payload. Default 64 KiB.
    pub max_extension_payload: u32,
    /// Operations one task may submit. Default 100 000.
    pub max_ops_per_task: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_task_description: 4 * 1024,
            max_name: 256,
            max_observation: 1024 * 1024,
            max_topic: 256,
            max_token: 8 * 1024,
            max_state_key: 256,
            max_state_value: 64 * 1024,
            max_state_keys: 4096,
            max_state_bytes: 16 * 1024 * 1024,
            max_queue: 1024,
            max_output: 1024 * 1024,
            max_reason: 4 * 1024,
            max_extension_payload: 64 * 1024,
            max_ops_per_task: 100_000,
        }
    }
}

/// Which limit a [`KernelError::LimitExceeded`](crate::KernelError::LimitExceeded) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Limit {
    /// [`Limits::max_task_description`].
    TaskDescription,
    /// [`Limits::max_name`].
    Name,
    /// [`Limits::max_observation`].
    Observation,
    /// [`Limits::max_topic`].
    Topic,
    /// [`Limits::max_token`].
    Token,
    /// [`Limits::max_state_key`].
    StateKey,
    /// [`Limits::max_state_value`].
    StateValue,
    /// [`Limits::max_state_keys`].
    StateKeys,
    /// [`Limits::max_state_bytes`].
    StateBytes,
    /// [`Limits::max_queue`].
    Queue,
    /// [`Limits::max_output`].
    Output,
    /// [`Limits::max_reason`].
    Reason,
    /// [`Limits::max_extension_payload`].
    ExtensionPayload,
    /// [`Limits::max_ops_per_task`].
    OpsPerTask,
    /// [`MAX_OUTBOX`](crate::MAX_OUTBOX): tasks for other cells not yet
    /// handed to JetStream.
    Outbox,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::TaskDescription => "task description size",
            Limit::Name => "name size",
            Limit::Observation => "observation size",
            Limit::Topic => "topic size",
            Limit::Token => "token size",
            Limit::StateKey => "state key size",
            Limit::StateValue => "state value size",
            Limit::StateKeys => "state key count",
            Limit::StateBytes => "state size",
            Limit::Queue => "task queue length",
            Limit::Output => "task output size",
            Limit::Reason => "reason size",
            Limit::ExtensionPayload => "extension payload size",
            Limit::OpsPerTask => "operations per task",
            Limit::Outbox => "tasks waiting to be sent to other cells",
        })
    }
}

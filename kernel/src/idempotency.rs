//! Idempotency keys: a client's retried request schedules a task once.
//!
//! [`Operation::ScheduleTaskOnce`](crate::Operation::ScheduleTaskOnce)
//! carries a key the client chose. The state remembers, for the most recent
//! [`IDEMPOTENCY_KEYS_KEPT`] keys, the task each one scheduled and a digest
//! of the request (agent and description); a second command with a known
//! key is rejected with
//! [`KernelError::AlreadyScheduled`](crate::KernelError::AlreadyScheduled),
//! which names the task, so the host answers a retry without writing
//! anything. The oldest key is forgotten when a new one would pass the
//! bound: memory stays bounded whatever clients send.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, Digest, TaskId};

/// How many idempotency keys the state remembers (the most recent ones).
pub const IDEMPOTENCY_KEYS_KEPT: usize = 16_384;

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The keys the state remembers, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Idempotency {
    by_key: BTreeMap<String, Scheduled>,
    order: VecDeque<String>,
}

/// What a key scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Scheduled {
    pub(crate) task: TaskId,
    /// The digest of the request, see [`request_digest`].
    pub(crate) request: Digest,
}

impl Idempotency {
    pub(crate) fn get(&self, key: &str) -> Option<&Scheduled> {
        self.by_key.get(key)
    }

    /// Remembers `key`, forgetting the oldest key past the bound.
    pub(crate) fn insert(&mut self, key: String, scheduled: Scheduled) {
        if self.order.len() >= IDEMPOTENCY_KEYS_KEPT
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_key.remove(&oldest);
        }
        self.order.push_back(key.clone());
        self.by_key.insert(key, scheduled);
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// The digest that tells a retry (same agent, same description) from a
/// different request under the same key.
pub(crate) fn request_digest(agent: AgentId, description: &str) -> Digest {
    let mut bytes = Vec::with_capacity(16 + description.len());
    bytes.extend_from_slice(&agent.as_u128().to_be_bytes());
    bytes.extend_from_slice(description.as_bytes());
    Digest::of(&bytes)
}

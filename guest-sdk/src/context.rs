//! The agent's handle on the host: submit operations, read state, log.

use crate::bindings::toka::agent::{kernel, types as wit};
use crate::error::Error;
use crate::id::{AgentId, EntityId, TaskId};

/// An operation, for [`Context::submit`]. The other [`Context`] methods are
/// shorthands for these.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Emit an observation (right `observe`).
    Observe {
        /// An optional topic (≤ 256 B).
        topic: Option<String>,
        /// The data (≤ 1 MiB).
        data: Vec<u8>,
    },
    /// Queue a task for an agent (right `schedule TARGET`).
    Schedule {
        /// The agent that will run it.
        agent: AgentId,
        /// What to do (≤ 4 KiB).
        description: String,
    },
    /// Start a sub-agent (right `spawn COMPONENT`).
    Spawn {
        /// An installed component, by name or 64-hex-digit digest.
        component: String,
        /// A display name (≤ 256 B).
        name: String,
        /// The rights to delegate; each must be one this agent holds.
        rights: Vec<String>,
        /// Budgets for the child, e.g. `memory=16MiB` (never more than this
        /// agent's own).
        budgets: Vec<String>,
    },
    /// Stop an agent (right `terminate TARGET`).
    Terminate {
        /// The agent.
        agent: AgentId,
    },
    /// Put a key in this agent's state (right `state`).
    Put {
        /// The key (1..=256 B).
        key: String,
        /// The value (≤ 64 KiB).
        value: Vec<u8>,
    },
    /// Delete a key from this agent's state (right `state`).
    Delete {
        /// The key.
        key: String,
    },
    /// An operation of an extension family the host registered.
    Extension {
        /// The family.
        family: String,
        /// The family's opcode.
        opcode: u32,
        /// The payload.
        payload: Vec<u8>,
    },
}

impl From<Operation> for wit::Operation {
    fn from(op: Operation) -> Self {
        match op {
            Operation::Observe { topic, data } => {
                wit::Operation::Observe(wit::Observation { topic, data })
            }
            Operation::Schedule { agent, description } => {
                wit::Operation::ScheduleTask(wit::Schedule {
                    agent: agent.into(),
                    description,
                })
            }
            Operation::Spawn {
                component,
                name,
                rights,
                budgets,
            } => wit::Operation::SpawnAgent(wit::Spawn {
                component,
                name,
                rights,
                budgets,
            }),
            Operation::Terminate { agent } => wit::Operation::TerminateAgent(agent.into()),
            Operation::Put { key, value } => {
                wit::Operation::PutState(wit::StateEntry { key, value })
            }
            Operation::Delete { key } => wit::Operation::DeleteState(key),
            Operation::Extension {
                family,
                opcode,
                payload,
            } => wit::Operation::Extension(wit::ExtensionCall {
                family,
                opcode,
                payload,
            }),
        }
    }
}

/// Proof that the host applied an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The operation's position in the host's log.
    pub seq: u64,
    /// The agent or task the operation created, if any.
    pub created: Option<EntityId>,
}

impl From<wit::Receipt> for Receipt {
    fn from(r: wit::Receipt) -> Self {
        Self {
            seq: r.seq,
            created: r.created.map(EntityId::from),
        }
    }
}

/// Severity of a [`Context::log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[allow(missing_docs, reason = "the names say it")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl From<Level> for wit::LogLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => wit::LogLevel::Trace,
            Level::Debug => wit::LogLevel::Debug,
            Level::Info => wit::LogLevel::Info,
            Level::Warn => wit::LogLevel::Warn,
            Level::Error => wit::LogLevel::Error,
        }
    }
}

/// The agent's handle on the host, passed to [`Agent`](crate::Agent) methods.
///
/// Every method that changes something submits one operation and returns
/// once the host applied it (or refused it, with an [`Error`] naming why).
#[derive(Debug)]
pub struct Context {
    _private: (),
}

impl Context {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// This agent's id.
    #[must_use]
    pub fn id(&self) -> AgentId {
        kernel::self_id().into()
    }

    /// Submits any operation.
    ///
    /// # Errors
    ///
    /// The host's [`Error`] when it refused the operation.
    pub fn submit(&mut self, op: Operation) -> Result<Receipt, Error> {
        kernel::submit(&op.into())
            .map(Receipt::from)
            .map_err(Error::from)
    }

    /// Emits `data` (often text) as an observation without a topic.
    ///
    /// # Errors
    ///
    /// [`Error::CapabilityDenied`] without the `observe` right;
    /// [`Error::LimitExceeded`] above 1 MiB.
    pub fn observe(&mut self, data: impl AsRef<[u8]>) -> Result<Receipt, Error> {
        self.submit(Operation::Observe {
            topic: None,
            data: data.as_ref().to_vec(),
        })
    }

    /// Emits an observation under `topic`.
    ///
    /// # Errors
    ///
    /// As [`Context::observe`].
    pub fn observe_topic(&mut self, topic: &str, data: impl AsRef<[u8]>) -> Result<Receipt, Error> {
        self.submit(Operation::Observe {
            topic: Some(topic.to_owned()),
            data: data.as_ref().to_vec(),
        })
    }

    /// Queues a task for `agent` and returns the new task's id.
    ///
    /// # Errors
    ///
    /// [`Error::CapabilityDenied`] without `schedule` for that agent;
    /// [`Error::UnknownEntity`] for an unknown agent; [`Error::LimitExceeded`]
    /// when its queue is full.
    pub fn schedule(&mut self, agent: AgentId, description: &str) -> Result<TaskId, Error> {
        let receipt = self.submit(Operation::Schedule {
            agent,
            description: description.to_owned(),
        })?;
        created(receipt).map(TaskId::from)
    }

    /// Spawns a sub-agent running the installed `component`, delegating
    /// `rights` (each one this agent must hold), and returns its id.
    ///
    /// # Errors
    ///
    /// [`Error::CapabilityDenied`] without `spawn COMPONENT` or when a right
    /// to delegate is not held; [`Error::UnknownEntity`] for a component that
    /// is not installed.
    pub fn spawn(
        &mut self,
        component: &str,
        name: &str,
        rights: &[&str],
    ) -> Result<AgentId, Error> {
        self.spawn_within(component, name, rights, &[])
    }

    /// Like [`Context::spawn`], and the child runs within `budgets`, e.g.
    /// `["memory=16MiB", "deadline=5s"]`: each budget is the smaller of the
    /// one given and this agent's own.
    ///
    /// # Errors
    ///
    /// As [`Context::spawn`]; [`Error::InvalidOperation`] for a budget that
    /// does not parse.
    pub fn spawn_within(
        &mut self,
        component: &str,
        name: &str,
        rights: &[&str],
        budgets: &[&str],
    ) -> Result<AgentId, Error> {
        let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        let receipt = self.submit(Operation::Spawn {
            component: component.to_owned(),
            name: name.to_owned(),
            rights: owned(rights),
            budgets: owned(budgets),
        })?;
        created(receipt).map(AgentId::from)
    }

    /// Terminates `agent`; its unfinished tasks fail.
    ///
    /// # Errors
    ///
    /// [`Error::CapabilityDenied`] without `terminate` for that agent.
    pub fn terminate(&mut self, agent: AgentId) -> Result<(), Error> {
        self.submit(Operation::Terminate { agent }).map(drop)
    }

    /// Puts `key` in this agent's durable state.
    ///
    /// # Errors
    ///
    /// [`Error::CapabilityDenied`] without `state`; [`Error::LimitExceeded`]
    /// past the key, value or namespace limits.
    pub fn put(&mut self, key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        self.submit(Operation::Put {
            key: key.to_owned(),
            value: value.as_ref().to_vec(),
        })
        .map(drop)
    }

    /// Deletes `key` from this agent's state (a missing key is fine).
    ///
    /// # Errors
    ///
    /// [`Error::CapabilityDenied`] without `state`.
    pub fn delete(&mut self, key: &str) -> Result<(), Error> {
        self.submit(Operation::Delete {
            key: key.to_owned(),
        })
        .map(drop)
    }

    /// Reads `key` from this agent's state, including its own writes that
    /// are applied but not yet durable.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        kernel::get_state(key)
    }

    /// Reads a `u64` stored with [`Context::put_u64`]; `None` when the key is
    /// missing or does not hold 8 bytes.
    #[must_use]
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        decode_u64(&self.get(key)?)
    }

    /// Puts a `u64` (8 little-endian bytes).
    ///
    /// # Errors
    ///
    /// As [`Context::put`].
    pub fn put_u64(&mut self, key: &str, value: u64) -> Result<(), Error> {
        self.put(key, value.to_le_bytes())
    }

    /// The keys of this agent's state, in order.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        kernel::state_keys()
    }

    /// Writes a line to the host's log (not the durable event log).
    pub fn log(&self, level: Level, message: &str) {
        kernel::log(level.into(), message);
    }
}

fn created(receipt: Receipt) -> Result<EntityId, Error> {
    receipt
        .created
        .ok_or_else(|| Error::Other("the host returned no id for a created entity".into()))
}

pub(crate) fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_values_decode_only_from_8_bytes() {
        assert_eq!(decode_u64(&42u64.to_le_bytes()), Some(42));
        assert_eq!(decode_u64(&[1, 2, 3]), None);
        assert_eq!(decode_u64(&[]), None);
    }

    #[test]
    fn operations_map_onto_the_wit_variant() {
        let agent = AgentId::from_u128(1 << 64 | 2);
        match wit::Operation::from(Operation::Schedule {
            agent,
            description: "d".into(),
        }) {
            wit::Operation::ScheduleTask(s) => {
                assert_eq!(
                    (s.agent.hi, s.agent.lo, s.description.as_str()),
                    (1, 2, "d")
                );
            }
            other => panic!("wrong variant {other:?}"),
        }
        match wit::Operation::from(Operation::Spawn {
            component: "worker".into(),
            name: "w1".into(),
            rights: vec!["observe".into()],
            budgets: vec!["memory=1MiB".into()],
        }) {
            wit::Operation::SpawnAgent(s) => {
                assert_eq!((s.component.as_str(), s.name.as_str()), ("worker", "w1"));
                assert_eq!(s.rights, vec!["observe".to_owned()]);
                assert_eq!(s.budgets, vec!["memory=1MiB".to_owned()]);
            }
            other => panic!("wrong variant {other:?}"),
        }
    }
}

//! The pure, deterministic core of Toka.
//!
//! Every effect in a Toka host is an [`Operation`]. The host wraps it in a
//! [`Command`] (origin, logical time, authorization, cause) and hands it to
//! [`Kernel::apply`], which validates it against the [`WorldState`], mutates
//! the state, returns the [`Event`]s, and seals the command into the next
//! [`Record`] of a hash-chained log. [`replay_log`] rebuilds a kernel from
//! such a log and checks every link.
//!
//! The crate has no I/O, no clock, no randomness and nothing async; its maps
//! are ordered, so the same commands give byte-identical records and state on
//! every machine. `clippy.toml` bans the clock and hash-ordered collections.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

mod apply;
mod command;
mod component;
mod error;
mod event;
mod extension;
mod forget;
mod http;
mod id;
mod idempotency;
mod kernel;
mod legacy;
mod limits;
mod mail;
mod operation;
mod package;
mod quota;
mod record;
mod rules;
mod serde_bytes;
mod state;

pub use apply::{MAX_REFUSAL_RUNS, validate_name};
pub use command::{Authorization, Command, OpKey, Timestamp};
pub use error::{EntityKind, KernelError};
pub use event::Event;
pub use extension::{ExtensionCall, ExtensionEffects, OpcodeHandler, Registry};
pub use forget::FORGOTTEN_PER_RECORD;
pub use http::{
    Exchange, HttpFailure, HttpOutcome, HttpRequest, MAX_METHOD, MAX_REQUESTS_PER_TASK,
    MAX_RESPONSE_HEADERS, MAX_URL,
};
pub use id::{AgentId, Digest, EntityId, IdHash, IdHasher, ParseIdError, TaskId, to_hex};
pub use idempotency::{IDEMPOTENCY_KEYS_KEPT, MAX_IDEMPOTENCY_KEY};
pub use kernel::{Applied, Kernel, ReplayError, ReplayErrorKind, replay_log};
pub use limits::{Limit, Limits};
pub use mail::{
    CONFIG_CELL, Cell, Change, Delivery, MAX_OUTBOX, MAX_OUTBOX_PER_AGENT, Outgoing, Parcel,
};
pub use operation::{
    AgentSpec, ComponentSpec, Denial, OpKind, Operation, Refusal, RefusalKind, TaskSpec,
};
pub use package::{MAX_MANIFEST, MAX_PACKAGE_RIGHTS, PackageRecord, Publisher};
pub use quota::{Account, Bucket};
pub use record::{ChainHead, FORMAT_VERSION, Record, RecordError};
pub use rules::{Budgets, Quota, Quotas, RULES_VERSION, Rate, Rules};
pub use state::{
    AgentRecord, AgentStatus, Gap, JournalEntry, Prior, Replaced, Rewrite, Run, TaskRecord,
    TaskStatus, WorldState,
};

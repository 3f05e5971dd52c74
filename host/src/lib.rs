//! The Toka host: runs WebAssembly agents against the deterministic kernel.
//!
//! A [`Host`] opens an [`EventStore`] (a [`RedbStore`] file in a [`DataDir`],
//! or a [`MemoryStore`] in tests), replays and verifies its log, and runs
//! agents — `wasm32-wasip2` components of the `toka:agent` world — as actors
//! on tokio. Every operation an agent submits goes through one sequencer,
//! which applies it with [`toka_kernel::Kernel`] in one total order; a writer
//! thread commits the resulting records in durable batches, and only then
//! are they published ([`Host::subscribe`]) and acted on.

#![warn(clippy::unwrap_used)]
#![deny(missing_docs)]

mod actor;
mod agent_ctx;
mod audit;
#[doc(hidden)]
pub mod bench_support;
mod bindings;
mod budget;
mod bus;
mod capture;
mod clock;
mod components;
mod data_dir;
mod error;
mod event_store;
mod gate;
mod host;
mod http_gate;
mod limits;
mod memory_store;
mod redb_store;
mod rights;
mod root_key;
mod sandbox;
mod sequencer;
mod snapshot;
mod task_inputs;
mod token;
mod units;
mod verify;

pub use audit::{AuditMismatch, AuditReport, audit};
pub use budget::{Budget, BudgetError};
pub use bus::{Committed, CommittedRecord, Subscription};
pub use clock::{Clock, ManualClock, SystemClock};
pub use components::ComponentError;
pub use data_dir::{DataDir, DataDirError};
pub use error::HostError;
pub use event_store::{Batch, DATA_FORMAT, EventStore, Records, SNAPSHOTS_KEPT, StoreError};
pub use host::{Grant, Host, HostConfig, read_events, recover, replay};
pub use limits::AgentLimits;
pub use memory_store::MemoryStore;
pub use redb_store::RedbStore;
pub use rights::{Right, RightError, RightOp};
pub use root_key::{KeyError, RootKey};
pub use sandbox::{ProtectedPathError, check_fs_right};
pub use sequencer::Stopped;
pub use token::{Inspection, Token, TokenError};
pub use units::{parse_duration, parse_size};
pub use verify::{Verified, verify};

//! The sequencer: the one writer of the kernel, and the log writer behind it.
//!
//! Every command passes through [`Sequencer`] under one lock, so the lock's
//! order is the log's total order: stamp the logical time, authorize the
//! operation against the agent's token (in that same order, so a revocation
//! applied before an operation denies it), apply through the kernel, append
//! the sealed record to the pending batch, answer the caller. A guest's
//! `submit` returns right there — applied, not yet durable — with no hand-off
//! to another thread, which keeps the per-operation cost near the kernel's.
//!
//! The concepts around that core each have a file:
//! - `writer`: the thread that commits pending batches and then publishes
//!   them; group commit emerges from load, and submitters wait when the
//!   pending batch is full (in records or bytes).
//! - `journal`: answering a re-run task's operations from the log, and
//!   recording what was refused so the answers stay the same.
//! - `rewrites`: a re-run task's state writes by key, so its reads see the
//!   state as the first run did.
//! - `spawn`: spawning and delegation (the child's token, its budgets).
//! - `denials`: recording denials, rate-limited.
//! - `snapshots`: when the writer snapshots the state.
//! - `state_budget`: what each tree of agents holds in the kernel's state,
//!   under the host's budget.
//! - `replica`: the thread that snapshots a large state, off the lock.
//! - `views`: how often readers may have the committed state copied.
//! - `http`: journaling outbound HTTP requests and their responses.
//! - `awaited`: the tasks callers wait for the end of (their ends commit
//!   without lingering).

mod awaited;
mod core;
mod denials;
mod disk;
mod http;
mod journal;
mod replica;
mod rewrites;
mod snapshots;
mod spawn;
mod state_budget;
mod views;
mod writer;

pub use core::Stopped;
pub(crate) use core::{
    Attachments, By, Declined, Halt, Options, Receipt, Refused, Request, Sequencer, Spawn, Unwanted,
};
pub(crate) use state_budget::{AGENT_RECORD_BYTES, default_budget as default_state_budget};
pub use state_budget::{StateRefusal, StateUsage};

//! The sandbox: what one agent's instance may use, and nothing else.
//!
//! - `limits`: the per-agent limits ([`AgentLimits`]) a host applies and
//!   tokens narrow;
//! - `limiter`: memories, tables and instances counted against them, and
//!   the failures a guest call ends with, in words;
//! - `dirs`: the host directories a token opens, never the host's own files;
//! - `http`: outgoing `wasi:http`, authorized per request;
//! - `capture`, `task_inputs`: bounded stdout/stderr, and the clocks and
//!   randomness a task sees (deterministic per task);
//! - `components`, `bindings`: validating and compiling agent components
//!   against the `toka:agent` world.
//!
//! The sandbox asks the runtime for two things only, through [`Effects`]:
//! authorizing an effect against an agent's token now, and waiting until
//! what an agent did so far is durable.

pub(crate) mod bindings;
pub(crate) mod capture;
pub(crate) mod components;
pub(crate) mod dirs;
pub(crate) mod http;
pub(crate) mod limiter;
pub(crate) mod limits;
pub(crate) mod task_inputs;

use std::future::Future;
use std::pin::Pin;

use toka_kernel::AgentId;

use crate::capability::policy::{Check, Denied};

/// What the sandbox needs from the host that runs it.
pub(crate) trait Effects: Send + Sync + 'static {
    /// Authorizes an effect outside the log for `agent` (opening a host
    /// directory, an HTTP request) against its token now, revocation and
    /// expiry included; with `record`, a denial is recorded (rate-limited).
    ///
    /// # Errors
    ///
    /// Why not, naming the missing right.
    fn authorize(&self, agent: AgentId, check: &Check, record: bool) -> Result<(), Denied>;

    /// A future that resolves once everything applied until now is durable
    /// (before an effect leaves the host).
    fn durable(&self) -> Pin<Box<dyn Future<Output = Result<(), HostGone>> + Send>>;
}

/// The host stopped before it could do what was asked; carries why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the host stopped: {0}")]
pub(crate) struct HostGone(pub(crate) String);

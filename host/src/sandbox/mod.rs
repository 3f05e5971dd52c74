//! The sandbox: what one agent's instance may use, and nothing else.
//!
//! - `limits`: the per-agent limits ([`AgentLimits`](crate::AgentLimits)) a host applies and
//!   tokens narrow;
//! - `limiter`: memories, tables and instances counted against them, and
//!   the failures a guest call ends with, in words;
//! - `memory`: the live instances' memories together, under the host's
//!   budget; `shares` the accounting of bytes held by trees of agents under
//!   one total, which the state budget uses too;
//! - `dirs`: the host directories a token opens, never the host's own files;
//! - `http`: outgoing `wasi:http`, authorized per request and journaled,
//!   with secrets injected for bound hosts; `redact` keeps their values out
//!   of what the agent reads and the log holds; `held` bounds what header
//!   maps and requests hold in the host's memory, and charges it;
//! - `capture`, `task_inputs`: bounded stdout/stderr, and the clocks and
//!   randomness a task sees (deterministic per task);
//! - `pace`: a bucket of what an agent may spend a second (state read,
//!   refusals: its HTTP requests' too);
//! - `components`, `bindings`: validating and compiling agent components
//!   against the `toka:agent` world.
//!
//! The sandbox asks the runtime for what only the runtime knows, through
//! [`Effects`]: authorizing an effect against an agent's token now, waiting
//! until what an agent did so far is durable, journaling an outbound
//! request and its response, and the secret to inject into one.

pub(crate) mod bindings;
pub(crate) mod capture;
pub(crate) mod components;
pub(crate) mod dirs;
pub(crate) mod held;
pub(crate) mod http;
pub(crate) mod limiter;
pub(crate) mod limits;
pub(crate) mod memory;
pub(crate) mod pace;
pub(crate) mod places;
pub(crate) mod redact;
pub(crate) mod send;
pub(crate) mod shares;
pub(crate) mod task_inputs;

use std::future::Future;
use std::pin::Pin;

use toka_kernel::{AgentId, HttpOutcome, HttpRequest, TaskId};

use crate::capability::policy::{Check, Denied};

/// A boxed future the runtime answers with.
pub(crate) type Answer<T> = Pin<Box<dyn Future<Output = Result<T, HostGone>> + Send>>;

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
    fn durable(&self) -> Answer<()>;

    /// Journals request `index` of `agent`'s running `task` (authorizing
    /// it in the log's order), or, when a run before this one journaled
    /// it, says what the journal holds.
    fn journal_request(
        &self,
        agent: AgentId,
        task: TaskId,
        index: u32,
        request: HttpRequest,
    ) -> Answer<Journaled>;

    /// Records what came back for request `index` of `task` (`body` is the
    /// blob a response's digest names), and which secret went with it;
    /// `Err` says why it could not be recorded (the agent must not get it
    /// then).
    fn record_response(
        &self,
        agent: AgentId,
        task: TaskId,
        index: u32,
        outcome: HttpOutcome,
        secret: Option<String>,
        body: Vec<u8>,
    ) -> Answer<Result<(), String>>;

    /// The host's places for open outbound connections, shared by all
    /// agents, fairly between trees.
    fn connections(&self) -> std::sync::Arc<places::Places>;

    /// The secret to inject into `agent`'s request to `host`:`port` over
    /// `scheme`, if its token binds one there.
    ///
    /// # Errors
    ///
    /// Why the request may not go out: the bound secret is not set, or
    /// would travel in clear text.
    fn injection(
        &self,
        agent: AgentId,
        scheme: &str,
        host: &str,
        port: u16,
    ) -> Result<Option<Injection>, String>;

    /// The values of the secrets `agent`'s token binds to any host (those
    /// set on this host): what is redacted from every response it gets,
    /// whether or not its request carried one (a server may store a
    /// secret sent to it and show it to a later request).
    fn bound_secrets(&self, agent: AgentId) -> Vec<std::sync::Arc<str>>;

    /// Whether `agent`'s token names `host` (as the URL writes it, lower
    /// case) in an `http` right of its own, `http HOST` or `http
    /// HOST:PORT` with `port`, rather than granting it through `http *`:
    /// an address inside the host's networks written in a URL is reached
    /// only then (see [`crate::sandbox::send`]).
    fn names_host(&self, agent: AgentId, host: &str, port: u16) -> bool;

    /// The data dir's id (what idempotency keys are derived from).
    fn data_id(&self) -> [u8; 16];
}

/// What the journal says about a request.
#[derive(Debug)]
pub(crate) enum Journaled {
    /// Send it: journaled now, or journaled by an earlier run that got no
    /// answer.
    Send,
    /// An earlier run got this answer: give it again, send nothing.
    Answered {
        /// The recorded outcome.
        outcome: HttpOutcome,
        /// The response body (empty for a failure).
        body: Vec<u8>,
    },
    /// The gate or the kernel refused it.
    Refused {
        /// Why, for a person.
        message: String,
        /// Whether the gate denied it (a missing right).
        denied: bool,
        /// Whether it ran into a quota (the task ends).
        quota: bool,
    },
    /// The re-run sent another request than the log has at this index, or
    /// the journal cannot answer: the task fails with this.
    Diverged(String),
}

/// A secret to inject into one request.
#[derive(Clone)]
pub(crate) struct Injection {
    /// The secret's name (what the log records).
    pub(crate) name: String,
    /// The header it goes into (lower case).
    pub(crate) header: String,
    /// The header's value (e.g. `Bearer VALUE`).
    pub(crate) value: String,
    /// The secret itself, to redact from what comes back.
    pub(crate) secret: std::sync::Arc<str>,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("name", &self.name)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// The host stopped before it could do what was asked; carries why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the host stopped: {0}")]
pub(crate) struct HostGone(pub(crate) String);

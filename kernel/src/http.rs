//! Outbound HTTP requests, journaled: what a task asked the network, and
//! what came back.
//!
//! A task's requests are numbered in the order the agent makes them (the
//! *request index*, its own counter beside the operation index). Each one is
//! two records:
//! - [`Operation::HttpRequest`](crate::Operation::HttpRequest), the agent's
//!   own operation, authorized like every other (`http HOST`), applied
//!   before the request leaves the host: method, URL, and digests of the
//!   headers (as the agent set them, before the host injected any secret)
//!   and of the body;
//! - [`Operation::HttpResponse`](crate::Operation::HttpResponse), the host's
//!   record of the answer: status, headers and the body's digest (the body
//!   is a blob beside the log, charged to the agent's log bytes), or why
//!   there was none.
//!
//! While the task runs, the state maps each `(task, request index)` to its
//! [`Exchange`], so a re-run after a crash finds the recorded answer (and
//! sends nothing), or finds a request without one (and sends it again, with
//! the same idempotency key). The entries go when the task ends.

use serde::{Deserialize, Serialize};

use crate::apply::{Env, check_size};
use crate::error::{EntityKind, KernelError};
use crate::event::Event;
use crate::id::{AgentId, Digest, EntityId, TaskId};
use crate::limits::Limit;
use crate::operation::OpKind;
use crate::state::{TaskStatus, WorldState};

/// The longest URL a request may have, in bytes.
pub const MAX_URL: usize = 8 * 1024;

/// The longest method name, in bytes.
pub const MAX_METHOD: usize = 16;

/// The most bytes of response headers a record may hold (names and values).
pub const MAX_RESPONSE_HEADERS: usize = 64 * 1024;

/// The most requests one task may make (its request index stays below):
/// the state keeps an entry per request while the task runs.
pub const MAX_REQUESTS_PER_TASK: u32 = 10_000;

/// A request as journaled: enough to tell whether a re-run sends the same
/// one, nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The absolute URL.
    pub url: String,
    /// The BLAKE3 digest of the headers the agent set, in order (see the
    /// host's request digest).
    pub headers: Digest,
    /// The BLAKE3 digest of the body.
    pub body: Digest,
    /// The body's length in bytes.
    pub body_len: u64,
}

/// What came back for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpOutcome {
    /// A response, complete.
    Response {
        /// The status code.
        status: u16,
        /// The headers, in order, with secrets redacted.
        headers: Vec<(String, String)>,
        /// The digest of the body (with secrets redacted), stored as a blob.
        body: Digest,
        /// The body's length in bytes.
        body_len: u64,
    },
    /// No response the agent can have: the connection failed, it timed out,
    /// the response was over the size limit, the secret was missing, ...
    Failed {
        /// The kind of failure, what the agent's `wasi:http` error is.
        failure: HttpFailure,
        /// What happened, for a person.
        message: String,
    },
}

/// Why a request got no response (the agent sees a `wasi:http` error code
/// per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpFailure {
    /// The host name did not resolve.
    Dns,
    /// The connection was refused or reset.
    Connection,
    /// No answer in time.
    Timeout,
    /// The response was larger than the host's limit.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The server's answer was not valid HTTP.
    Protocol,
    /// The host refused to send it (a secret bound to the host is not set,
    /// or would be sent in clear text; the name resolves only to addresses
    /// inside the host's networks).
    Refused,
    /// Anything else.
    Other,
}

impl HttpFailure {
    /// The failure's name, as `toka events` prints it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            HttpFailure::Dns => "dns",
            HttpFailure::Connection => "connection",
            HttpFailure::Timeout => "timeout",
            HttpFailure::TooLarge { .. } => "too large",
            HttpFailure::Protocol => "protocol",
            HttpFailure::Refused => "refused",
            HttpFailure::Other => "other",
        }
    }
}

/// A journaled request of a running task: its record, and its response's
/// once recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// The sequence number of the request's record.
    pub request: u64,
    /// The request's [`HttpRequest::digest`]: a re-run's request is the
    /// same when its digest is.
    pub digest: Digest,
    /// The sequence number of the response's record, once there is one.
    pub response: Option<u64>,
}

impl HttpRequest {
    /// The BLAKE3 digest of the request's canonical encoding.
    #[must_use]
    pub fn digest(&self) -> Digest {
        Digest::of(
            &postcard::to_allocvec(self).expect("a request is plain data: postcard encodes it"),
        )
    }
}

impl HttpOutcome {
    /// The bytes the outcome's body blob holds (charged to the agent).
    #[must_use]
    pub fn body_len(&self) -> u64 {
        match self {
            HttpOutcome::Response { body_len, .. } => *body_len,
            HttpOutcome::Failed { .. } => 0,
        }
    }
}

impl WorldState {
    /// The journaled request `index` of the running task `task`, if any.
    #[must_use]
    pub fn exchange(&self, task: TaskId, index: u32) -> Option<Exchange> {
        self.exchanges.get(&(task, index)).copied()
    }

    /// Journaled requests of running tasks, in all.
    #[must_use]
    pub fn exchange_count(&self) -> usize {
        self.exchanges.len()
    }

    /// Journaled requests of the running task `task`.
    #[must_use]
    pub fn exchanges_of(&self, task: TaskId) -> usize {
        self.exchanges.range((task, 0)..=(task, u32::MAX)).count()
    }

    pub(crate) fn http_request(
        &mut self,
        origin: EntityId,
        task: TaskId,
        index: u32,
        request: HttpRequest,
        seq: u64,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::HttpRequest;
        if request.method.is_empty()
            || request.method.len() > MAX_METHOD
            || !request
                .method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "`{}` is not an HTTP method",
                    request.method.chars().take(MAX_METHOD).collect::<String>()
                ),
            ));
        }
        if request.url.len() > MAX_URL {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "the URL is {} bytes, the limit is {MAX_URL}",
                    request.url.len()
                ),
            ));
        }
        if index >= MAX_REQUESTS_PER_TASK {
            return Err(KernelError::invalid(
                KIND,
                format!("a task makes at most {MAX_REQUESTS_PER_TASK} requests"),
            ));
        }
        let agent = self.running_task_of(origin, task, KIND)?;
        if self.exchanges.contains_key(&(task, index)) {
            return Err(KernelError::invalid(
                KIND,
                format!("request {index} of task {task} is journaled already"),
            ));
        }
        self.exchanges.insert(
            (task, index),
            Exchange {
                request: seq,
                digest: request.digest(),
                response: None,
            },
        );
        Ok(vec![Event::HttpRequested {
            agent,
            task,
            index,
            method: request.method,
            url: request.url,
        }])
    }

    pub(crate) fn http_response(
        &mut self,
        origin: EntityId,
        task: TaskId,
        index: u32,
        outcome: &HttpOutcome,
        secret: Option<String>,
        env: &Env<'_>,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::HttpResponse;
        let (limits, seq) = (env.limits, env.seq);
        let (status, body, failure) = match outcome {
            HttpOutcome::Response {
                status,
                headers,
                body,
                ..
            } => {
                let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
                if bytes > MAX_RESPONSE_HEADERS {
                    return Err(KernelError::invalid(
                        KIND,
                        format!(
                            "the headers are {bytes} bytes, the limit is {MAX_RESPONSE_HEADERS}"
                        ),
                    ));
                }
                (Some(*status), Some(*body), None)
            }
            HttpOutcome::Failed { failure, message } => {
                check_size(Limit::Reason, limits.max_reason, message.len())?;
                (None, None, Some(format!("{}: {message}", failure.name())))
            }
        };
        if let Some(name) = &secret {
            check_size(Limit::Name, limits.max_name, name.len())?;
        }
        let agent = self.running_task_of(origin, task, KIND)?;
        let exchange = self.exchanges.get_mut(&(task, index)).ok_or_else(|| {
            KernelError::invalid(
                KIND,
                format!("task {task} has no journaled request {index}"),
            )
        })?;
        if exchange.response.is_some() {
            return Err(KernelError::invalid(
                KIND,
                format!("request {index} of task {task} has its response already"),
            ));
        }
        exchange.response = Some(seq);
        Ok(vec![Event::HttpResponded {
            agent,
            task,
            index,
            status,
            body,
            body_len: outcome.body_len(),
            failure,
            secret,
        }])
    }

    /// The agent of `task`, which must be running and belong to `origin`.
    fn running_task_of(
        &self,
        origin: EntityId,
        task: TaskId,
        kind: OpKind,
    ) -> Result<AgentId, KernelError> {
        let record = self
            .tasks
            .get(&task)
            .ok_or_else(|| KernelError::unknown(EntityKind::Task, task))?;
        if record.agent != origin {
            return Err(KernelError::CapabilityDenied {
                origin,
                operation: kind,
                reason: format!("task {task} belongs to agent {}", record.agent),
            });
        }
        if !matches!(record.status, TaskStatus::Running(_)) {
            return Err(KernelError::invalid(
                kind,
                format!("task {task} is not running"),
            ));
        }
        Ok(record.agent)
    }

    /// Forgets the journaled requests of a task that ended.
    pub(crate) fn forget_exchanges(&mut self, task: TaskId) {
        if self.exchanges.is_empty() {
            return;
        }
        let ended: Vec<(TaskId, u32)> = self
            .exchanges
            .range((task, 0)..=(task, u32::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in ended {
            self.exchanges.remove(&key);
        }
    }
}

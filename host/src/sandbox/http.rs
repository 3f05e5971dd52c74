//! Outgoing HTTP (`wasi:http`): authorized, journaled, with secrets the
//! agent never sees.
//!
//! Each request a task makes gets the task's next *request index* when the
//! agent hands it over, and then, in order:
//! 1. its body is read (up to [`AgentLimits::http_request_bytes`]) and it is
//!    journaled as an `HttpRequest` operation: method, URL, and digests of
//!    the agent's headers and body. The gate authorizes it like any
//!    operation (`http HOST:PORT` or `http HOST`); a refusal is recorded and
//!    the agent gets `HTTP-request-denied`, with no connection made;
//! 2. a re-run of the task after a crash finds the request in the journal:
//!    the same request gets the recorded answer without touching the network;
//!    another request at that index fails the task as diverged;
//! 3. it waits until everything applied before it is durable: nothing the
//!    task did before the request can be lost once the world saw it (the
//!    request's own record commits while it is out; lost in a crash, the
//!    request is sent again, with the same key);
//! 4. the host injects the secret the agent's token binds to the host (over
//!    the agent's own header of that name), and an `Idempotency-Key` derived
//!    from the data dir's id, the task, the index and the request's digests
//!    — the same on every attempt, so a server that honours it sees one call;
//! 5. the response is read whole (up to [`AgentLimits::http_response_bytes`],
//!    within [`AgentLimits::http_timeout`]), the secret redacted from it,
//!    recorded (`HttpResponse`, the body a blob), and handed to the agent.
//!
//! A failure (no connection, a timeout, a response over the limit) is
//! recorded too, so a re-run gets the same error. An agent has at most
//! [`AgentLimits::http_in_flight`] requests outstanding, each until it drops
//! the response; one more fails at once (`connection-limit-reached`, nothing
//! journaled: its index stays unused). A request whose task ended, or must
//! stop (diverged, out of quota), goes no further; and a refusal for a
//! quota ends the task, as for any operation.
//!
//! The bodies an exchange holds in the host's memory (room for the
//! largest request body while the agent writes it, then the body's own
//! bytes while it is out, and room for the largest response; then the
//! response's, until the agent drops it) are charged to the host's
//! memory for agents, under the agent's tree, as its linear memories are:
//! an agent cannot park responses there past its tree's share. When the
//! budget has no room, the task stops before the request is journaled, as
//! the host's condition (it is tried again later).
//!
//! An agent whose token binds a secret asks for plain answers
//! (`accept-encoding: identity`, no `range`; no `TRACE` carrying the
//! secret), whether or not the request carries one: a server may show a
//! later request what an earlier one sent it, and an encoded answer could
//! hide the secret from redaction, so it is refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use toka_kernel::{
    AgentId, Digest, HttpFailure, HttpOutcome, HttpRequest, MAX_RESPONSE_HEADERS, TaskId,
};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks};

use crate::sandbox::pace::Buckets;

use crate::sandbox::limits::AgentLimits;
use crate::sandbox::memory::{Charge, HostFailure, Reserved};
use crate::sandbox::redact::Redactor;
use crate::sandbox::{Effects, Injection, Journaled};

/// What a running task's requests share with the task: which run of which
/// task they belong to, and why the task must stop, when it must.
#[derive(Debug, Default)]
pub(crate) struct TaskLine {
    inner: Mutex<Line>,
    /// Whether `inner.stop` is set: what the op path reads, without the
    /// lock.
    stopping: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Line {
    /// Bumped at every start and end of a task: a request of an earlier
    /// run goes no further.
    generation: u64,
    task: Option<TaskId>,
    stop: Option<Stop>,
}

/// Why a task must stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A re-run asked for something else than the log has.
    Diverged(String),
    /// The agent ran into a quota (recorded by the sequencer).
    Quota(String),
    /// The host could not hold what a request needed (its memory for
    /// agents, or the tree's share of it, is spent): the host's condition.
    Host(HostFailure),
}

impl TaskLine {
    fn lock(&self) -> std::sync::MutexGuard<'_, Line> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A task starts: its requests are numbered from 0.
    pub(crate) fn begin(&self, task: TaskId) {
        let mut line = self.lock();
        line.generation += 1;
        line.task = Some(task);
        line.stop = None;
        self.stopping
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The task ended: its requests still out go no further; why it had
    /// to stop, if it had to.
    pub(crate) fn end(&self) -> Option<Stop> {
        let mut line = self.lock();
        line.generation += 1;
        line.task = None;
        self.stopping
            .store(false, std::sync::atomic::Ordering::Release);
        line.stop.take()
    }

    /// Why the running task must stop, if it must (one atomic load when it
    /// need not: this is on every operation's path).
    pub(crate) fn stopped(&self) -> Option<Stop> {
        if !self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.lock().stop.clone()
    }

    /// Records why the task must stop (the first reason wins).
    pub(crate) fn stop(&self, stop: Stop) {
        self.lock().stop.get_or_insert(stop);
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The current run, if a task runs and must not stop.
    fn current(&self) -> Option<(u64, TaskId)> {
        let line = self.lock();
        match (&line.task, &line.stop) {
            (Some(task), None) => Some((line.generation, *task)),
            _ => None,
        }
    }

    /// Whether run `generation` is still the current one.
    fn is_current(&self, generation: u64) -> bool {
        let line = self.lock();
        line.generation == generation && line.stop.is_none()
    }

    /// Stops run `generation`, if it is still the current one.
    fn stop_run(&self, generation: u64, stop: Stop) {
        let mut line = self.lock();
        if line.generation == generation {
            line.stop.get_or_insert(stop);
            self.stopping
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// A store's `wasi:http` state: the context, the gate, and the room its
/// header maps, URLs and unsent bodies take.
pub(crate) struct HttpGate {
    pub(crate) ctx: WasiHttpCtx,
    pub(crate) hooks: Hooks,
    pub(crate) held: crate::sandbox::held::Held,
}

/// The hooks that gate, journal and send each request.
pub(crate) struct Hooks {
    agent: AgentId,
    effects: Arc<dyn Effects>,
    line: Arc<TaskLine>,
    /// The index the running task's next request gets.
    next: u32,
    generation: u64,
    limits: HttpLimits,
    /// Places for outstanding requests ([`AgentLimits::http_in_flight`]).
    in_flight: Arc<tokio::sync::Semaphore>,
    /// How many places `in_flight` was made with.
    in_flight_limit: usize,
    /// The agent's (and its tree's) pace of refusals, which a refused
    /// request pays into (see `runtime::paces`).
    refusals: Buckets,
    /// Where the bodies exchanges hold are charged.
    memory: Charge,
}

#[derive(Debug, Clone, Copy)]
struct HttpLimits {
    request_bytes: u64,
    response_bytes: u64,
    timeout: Duration,
    /// The kernel's limit on a recorded message.
    max_reason: usize,
}

impl HttpGate {
    pub(crate) fn new(
        agent: AgentId,
        effects: Arc<dyn Effects>,
        limits: &AgentLimits,
        max_reason: usize,
        line: Arc<TaskLine>,
        refusals: Buckets,
        memory: Charge,
    ) -> Self {
        let mut ctx = WasiHttpCtx::new();
        ctx.set_field_size_limit(crate::sandbox::held::HEADER_MAP_BYTES);
        Self {
            ctx,
            held: crate::sandbox::held::Held::new(&memory),
            hooks: Hooks {
                agent,
                effects,
                line,
                next: 0,
                generation: 0,
                limits: HttpLimits {
                    request_bytes: limits.http_request_bytes,
                    response_bytes: limits.http_response_bytes,
                    timeout: limits.http_timeout,
                    max_reason,
                },
                in_flight: Arc::new(tokio::sync::Semaphore::new(limits.http_in_flight)),
                in_flight_limit: limits.http_in_flight,
                refusals,
                memory,
            },
        }
    }
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl Hooks {
    /// Requests the agent has outstanding (handed over, their response
    /// not dropped yet).
    pub(crate) fn outstanding(&self) -> usize {
        self.in_flight_limit - self.in_flight.available_permits()
    }
}

impl WasiHttpHooks for Hooks {
    /// A write to a request's body takes at most this much at once, and
    /// the body buffers at most two writes until the request is sent:
    /// `wasi:http`'s 1 MiB let an agent park 2 MiB in the host per unsent
    /// body.
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        crate::sandbox::held::BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let agent = self.agent;
        // The index is taken now, in the order the agent makes requests.
        let position = self.line.current().map(|(generation, task)| {
            if generation != self.generation {
                self.generation = generation;
                self.next = 0;
            }
            let index = self.next;
            self.next += 1;
            (generation, task, index)
        });
        // Taken now, held until the agent drops the response: an agent
        // cannot pile up requests or responses the host would hold.
        let permit = Arc::clone(&self.in_flight).try_acquire_owned();
        let outgoing = Outgoing {
            agent,
            effects: Arc::clone(&self.effects),
            line: Arc::clone(&self.line),
            limits: self.limits,
            refusals: self.refusals.clone(),
            memory: self.memory.clone(),
        };
        Box::new(async move {
            let Some((generation, task, index)) = position else {
                tracing::info!(agent = %agent.short(), "HTTP request outside a running task refused");
                return Err(Error::HttpRequestDenied);
            };
            let Ok(permit) = permit else {
                tracing::info!(agent = %agent.short(), "too many HTTP requests outstanding");
                return Err(Error::ConnectionLimitReached);
            };
            let response = outgoing
                .run(generation, task, index, request, options, permit)
                .await?;
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

/// One request, from the agent's hands to its answer.
struct Outgoing {
    agent: AgentId,
    effects: Arc<dyn Effects>,
    line: Arc<TaskLine>,
    limits: HttpLimits,
    refusals: Buckets,
    memory: Charge,
}

impl Outgoing {
    async fn run(
        self,
        generation: u64,
        task: TaskId,
        index: u32,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        permit: OwnedSemaphorePermit,
    ) -> Result<http::Response<WasiBody>, Error> {
        let agent = self.agent;
        let ended = || Error::InternalError(Some(format!("task {task} ended")));
        // Room for the request's body while it is read and out (the agent
        // may take its time writing it), and for the largest response: a
        // response is never refused after it is recorded.
        let mut memory = match self.memory.reserve(
            self.limits
                .request_bytes
                .saturating_add(self.limits.response_bytes),
        ) {
            Ok(reserved) => reserved,
            Err(refused) => {
                let failure = HostFailure::from(refused).context("holding an HTTP exchange");
                tracing::warn!(agent = %agent.short(), reason = %failure.reason, "HTTP request stopped");
                self.line.stop_run(generation, Stop::Host(failure));
                // The task fails with the figures (in the log, for the
                // operator); the guest, which may hold no right to read
                // them, learns nothing of other trees' memory.
                return Err(Error::InternalError(Some(
                    "the host cannot hold this request now".to_owned(),
                )));
            }
        };
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, self.limits.request_bytes as usize)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => {
                return Err(Error::HttpRequestBodySize(Some(self.limits.request_bytes)));
            }
            Err(e) => {
                return Err(Error::InternalError(Some(format!(
                    "reading the request body: {e}"
                ))));
            }
        };
        memory.shrink_to((body.len() as u64).saturating_add(self.limits.response_bytes));
        let journaled = HttpRequest {
            method: parts.method.as_str().to_owned(),
            url: parts.uri.to_string(),
            headers: headers_digest(&parts.headers),
            body: Digest::of(&body),
            body_len: body.len() as u64,
        };
        let key = idempotency_key(&self.effects.data_id(), task, index, &journaled);
        let gone = |e: crate::sandbox::HostGone| Error::InternalError(Some(e.to_string()));
        if !self.line.is_current(generation) {
            return Err(ended());
        }
        // Everything the task did before this request, durable before it
        // leaves; the request's own record commits while it is out (lost
        // in a crash, it is sent again with the same key).
        let durable = self.effects.durable();
        match self
            .effects
            .journal_request(agent, task, index, journaled)
            .await
            .map_err(gone)?
        {
            Journaled::Send => {}
            Journaled::Answered { outcome, body } => {
                memory.shrink_to(body.len() as u64);
                return answer(outcome, body, permit, memory);
            }
            Journaled::Refused {
                message,
                denied,
                quota,
            } => {
                tracing::info!(agent = %agent.short(), url = %parts.uri, %message, "HTTP request refused");
                // Decided under the sequencer's lock: paced as the agent's
                // other refusals are (holding nothing of the budget).
                drop(memory);
                crate::sandbox::pace::refused(&self.refusals).await;
                if quota {
                    // The task ends: a runaway must not keep asking.
                    self.line.stop_run(generation, Stop::Quota(message.clone()));
                }
                return Err(if denied {
                    Error::HttpRequestDenied
                } else {
                    Error::InternalError(Some(message))
                });
            }
            Journaled::Diverged(why) => {
                self.line.stop_run(generation, Stop::Diverged(why.clone()));
                return Err(Error::InternalError(Some(why)));
            }
        }
        durable.await.map_err(gone)?;
        // The task may have ended meanwhile: nothing leaves for it then.
        if !self.line.is_current(generation) {
            return Err(ended());
        }
        let (outcome, body, secret) = self.send(parts, body, &key, options).await;
        match self
            .effects
            .record_response(agent, task, index, outcome.clone(), secret, body.clone())
            .await
            .map_err(gone)?
        {
            Ok(()) => {
                memory.shrink_to(body.len() as u64);
                answer(outcome, body, permit, memory)
            }
            // Never an answer the log does not have.
            Err(why) => Err(Error::InternalError(Some(why))),
        }
    }

    /// Sends the request (secret and idempotency key added), reads the
    /// response; what to record and answer, and the secret's name.
    async fn send(
        &self,
        mut parts: http::request::Parts,
        body: Bytes,
        key: &str,
        options: Option<RequestOptions>,
    ) -> (HttpOutcome, Vec<u8>, Option<String>) {
        let max_reason = self.limits.max_reason;
        let failed = |failure, message: String| {
            (
                HttpOutcome::Failed {
                    failure,
                    message: crate::text::clip(&message, max_reason.min(1024)),
                },
                Vec::new(),
            )
        };
        // No scheme counts as clear text.
        let scheme = parts.uri.scheme_str().unwrap_or("http").to_owned();
        let Some((host, port)) = crate::capability::policy::destination(&parts.uri) else {
            let (o, b) = failed(HttpFailure::Other, "the URL names no host".into());
            return (o, b, None);
        };
        let injection = match self.effects.injection(self.agent, &scheme, &host, port) {
            Ok(injection) => injection,
            Err(why) => {
                let (o, b) = failed(HttpFailure::Refused, why);
                return (o, b, None);
            }
        };
        let secret = injection.as_ref().map(|i| i.name.clone());
        if let Some(injection) = &injection
            && let Err(why) = carry_secret(&mut parts, injection)
        {
            let (o, b) = failed(HttpFailure::Refused, why);
            return (o, b, secret);
        }
        // Every secret the agent's token binds, not only the one this
        // request carries: a server may show a later request what an
        // earlier one sent it. An agent holding any asks for answers it
        // can be kept out of.
        let mut secrets = self.effects.bound_secrets(self.agent);
        secrets.extend(injection.as_ref().map(|i| Arc::clone(&i.secret)));
        if !secrets.is_empty() {
            ask_plain(&mut parts);
        }
        parts.headers.insert(
            http::HeaderName::from_static("idempotency-key"),
            http::HeaderValue::from_str(key).expect("hex digits"),
        );
        let request = http::Request::from_parts(parts, Full::new(body));
        let options = capped(options, self.limits.timeout);
        let named = self.effects.names_host(self.agent, &host, port);
        let limit = self.limits.response_bytes;
        let connections = self.effects.connections();
        let tree = self.memory.tree;
        let exchange = async {
            // The host's own bound on open connections, for all agents,
            // shared between trees.
            let _place = connections
                .take(tree)
                .await
                .map_err(|stopping| (HttpFailure::Other, stopping))?;
            let sent = crate::sandbox::send::send(request, &options, named).await?;
            let between = options.between_bytes_timeout.unwrap_or(self.limits.timeout);
            let body = read_body(sent.body, limit, between).await?;
            Ok((sent.head, body))
        };
        let (head, body) = match tokio::time::timeout(self.limits.timeout, exchange).await {
            Ok(Ok(response)) => response,
            Ok(Err((failure, message))) => {
                let (o, b) = failed(failure, message);
                return (o, b, secret);
            }
            Err(_) => {
                let (o, b) = failed(
                    HttpFailure::Timeout,
                    format!("no complete response within {:?}", self.limits.timeout),
                );
                return (o, b, secret);
            }
        };
        let redactor = (!secrets.is_empty()).then(|| Redactor::of(secrets.iter().map(|s| &**s)));
        if let Some(redactor) = &redactor
            && let Some(encoding) = encoded(&head.headers)
        {
            // The value is the server's: it could echo the secret.
            let (o, b) = failed(
                HttpFailure::Protocol,
                format!(
                    "the response is encoded ({}); a response to an agent holding a secret must be plain, so the secret can be kept out of it",
                    redactor.redact_str(&encoding)
                ),
            );
            return (o, b, secret);
        }
        let body = match &redactor {
            Some(r) => r.redact(&body).unwrap_or_else(|| body.to_vec()),
            None => body.to_vec(),
        };
        let headers: Vec<(String, String)> = head
            .headers
            .iter()
            .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes());
                let value = match &redactor {
                    Some(r) => r.redact_str(&value),
                    None => value.into_owned(),
                };
                (name.as_str().to_owned(), value)
            })
            .collect();
        let header_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        if header_bytes > MAX_RESPONSE_HEADERS {
            let (o, b) = failed(
                HttpFailure::TooLarge {
                    limit: MAX_RESPONSE_HEADERS as u64,
                },
                format!(
                    "the response's headers are {header_bytes} bytes, the limit is {MAX_RESPONSE_HEADERS}"
                ),
            );
            return (o, b, secret);
        }
        (
            HttpOutcome::Response {
                status: head.status.as_u16(),
                headers,
                body: Digest::of(&body),
                body_len: body.len() as u64,
            },
            body,
            secret,
        )
    }
}

/// The encoding a response's body came in, if any but plain: any
/// `Content-Encoding` value but `identity` (every line of it, each item
/// of a list), any `Transfer-Encoding` but `chunked` (which the client
/// undoes) or `identity`. A body in such an encoding is stored as it came,
/// where a secret it holds is not found to be redacted.
fn encoded(headers: &http::HeaderMap) -> Option<String> {
    let items = |name, plain: &'static [&'static str]| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|value| value.as_bytes().split(|b| *b == b','))
            .map(|item| String::from_utf8_lossy(item.trim_ascii()).into_owned())
            .filter(move |item| {
                !item.is_empty() && !plain.iter().any(|p| item.eq_ignore_ascii_case(p))
            })
    };
    items(http::header::CONTENT_ENCODING, &["identity"])
        .chain(items(
            http::header::TRANSFER_ENCODING,
            &["chunked", "identity"],
        ))
        .next()
}

/// Headers that describe one connection, not the response: not recorded
/// (the recorded body is whole; `content-length` is set from it).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Puts the secret into the request, refusing `TRACE` (which echoes the
/// request) and `CONNECT`.
fn carry_secret(parts: &mut http::request::Parts, injection: &Injection) -> Result<(), String> {
    if matches!(parts.method, http::Method::TRACE | http::Method::CONNECT) {
        return Err(format!(
            "a {} request may not carry secret {}",
            parts.method, injection.name
        ));
    }
    let name = http::HeaderName::from_bytes(injection.header.as_bytes())
        .map_err(|_| format!("`{}` is not a header name", injection.header))?;
    let mut value = http::HeaderValue::from_str(&injection.value)
        .map_err(|_| format!("secret {} cannot go into a header", injection.name))?;
    value.set_sensitive(true);
    parts.headers.insert(name, value);
    Ok(())
}

/// Asks for an answer the host can redact a secret from: no compression,
/// no ranges (a window the agent could slide over a secret the server
/// shows).
fn ask_plain(parts: &mut http::request::Parts) {
    for header in [
        http::header::ACCEPT_ENCODING,
        http::header::RANGE,
        http::header::TE,
    ] {
        parts.headers.remove(header);
    }
    parts.headers.insert(
        http::header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("identity"),
    );
}

/// A response body that holds the agent's in-flight place, and its bytes
/// in the host's memory for agents, until the agent drops it.
struct Held {
    body: Full<Bytes>,
    _permit: OwnedSemaphorePermit,
    _memory: Reserved,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A response's body, whole: at most `limit` bytes, each frame within
/// `between` of the one before.
async fn read_body(
    mut body: hyper::body::Incoming,
    limit: u64,
    between: Duration,
) -> Result<Bytes, (HttpFailure, String)> {
    let mut read = Vec::new();
    loop {
        let frame = tokio::time::timeout(between, body.frame())
            .await
            .map_err(|_| {
                (
                    HttpFailure::Timeout,
                    format!(
                        "no byte of the response's body within {between:?} (after {} bytes)",
                        read.len()
                    ),
                )
            })?;
        let Some(frame) = frame else {
            return Ok(Bytes::from(read));
        };
        let frame = frame.map_err(|e| crate::sandbox::send::hyper_failure(&e))?;
        if let Ok(data) = frame.into_data() {
            if (read.len() + data.len()) as u64 > limit {
                return Err((
                    HttpFailure::TooLarge { limit },
                    format!("the response is larger than the limit of {limit} bytes"),
                ));
            }
            read.extend_from_slice(&data);
        }
    }
}

/// The agent's answer for an outcome (the same on a first run and a
/// re-run: both come from what is recorded).
fn answer(
    outcome: HttpOutcome,
    body: Vec<u8>,
    permit: OwnedSemaphorePermit,
    memory: Reserved,
) -> Result<http::Response<WasiBody>, Error> {
    let (status, headers) = match outcome {
        HttpOutcome::Response {
            status, headers, ..
        } => (status, headers),
        HttpOutcome::Failed { failure, message } => return Err(error_of(failure, message)),
    };
    let mut response = http::Response::builder().status(status);
    for (name, value) in &headers {
        response = response.header(name.as_str(), value.as_str());
    }
    response = response.header(http::header::CONTENT_LENGTH, body.len());
    response
        .body(
            Held {
                body: Full::new(Bytes::from(body)),
                _permit: permit,
                _memory: memory,
            }
            .map_err(|never| match never {})
            .boxed_unsync(),
        )
        .map_err(|e| Error::InternalError(Some(format!("a recorded response is invalid: {e}"))))
}

/// The `wasi:http` error an agent sees for a recorded failure.
fn error_of(failure: HttpFailure, message: String) -> Error {
    match failure {
        HttpFailure::Dns => Error::DestinationNotFound,
        HttpFailure::Connection => Error::ConnectionRefused,
        HttpFailure::Timeout => Error::ConnectionReadTimeout,
        HttpFailure::TooLarge { limit } => Error::HttpResponseBodySize(Some(limit)),
        HttpFailure::Protocol => Error::HttpProtocolError,
        HttpFailure::Refused => Error::HttpRequestDenied,
        HttpFailure::Other => Error::InternalError(Some(message)),
    }
}

/// The agent's request options, none longer than the host's timeout.
fn capped(options: Option<RequestOptions>, timeout: Duration) -> RequestOptions {
    let options = options.unwrap_or_default();
    let cap = |d: Option<Duration>| Some(d.map_or(timeout, |d| d.min(timeout)));
    RequestOptions {
        connect_timeout: cap(options.connect_timeout),
        first_byte_timeout: cap(options.first_byte_timeout),
        between_bytes_timeout: cap(options.between_bytes_timeout),
    }
}

/// The digest of the agent's headers, in order: what a re-run must set
/// again to send the same request.
fn headers_digest(headers: &http::HeaderMap) -> Digest {
    let mut hasher = blake3::Hasher::new();
    for (name, value) in headers {
        for part in [name.as_str().as_bytes(), value.as_bytes()] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    Digest(*hasher.finalize().as_bytes())
}

/// The `Idempotency-Key` of request `index` of `task` on the data dir with
/// id `data_id`: the same on every attempt of the same request, different
/// across data dirs (and for another request at the same index, should two
/// copies of one data dir go separate ways).
pub(crate) fn idempotency_key(
    data_id: &[u8; 16],
    task: TaskId,
    index: u32,
    request: &HttpRequest,
) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("toka 2026-12 outbound idempotency key");
    hasher.update(data_id);
    hasher.update(&task.as_u128().to_be_bytes());
    hasher.update(&index.to_be_bytes());
    for part in [request.method.as_bytes(), request.url.as_bytes()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(request.headers.as_bytes());
    hasher.update(request.body.as_bytes());
    toka_kernel::to_hex(&hasher.finalize().as_bytes()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_differ_by_data_dir_task_index_and_request() {
        let task = TaskId::from_u128(7);
        let request = HttpRequest {
            method: "POST".into(),
            url: "https://api.example.com/v1/x".into(),
            headers: Digest::of(b"h"),
            body: Digest::of(b"b"),
            body_len: 1,
        };
        let key = |id: u8, task, index, request: &HttpRequest| {
            idempotency_key(&[id; 16], task, index, request)
        };
        let first = key(1, task, 0, &request);
        assert_eq!(first, key(1, task, 0, &request.clone()));
        assert_eq!(first.len(), 32);
        assert_ne!(first, key(2, task, 0, &request));
        assert_ne!(first, key(1, task, 1, &request));
        assert_ne!(first, key(1, TaskId::from_u128(8), 0, &request));
        let other = HttpRequest {
            body: Digest::of(b"c"),
            ..request.clone()
        };
        assert_ne!(first, key(1, task, 0, &other));
    }

    #[test]
    fn a_request_carrying_a_secret_replaces_the_agent_s_header_and_asks_for_a_plain_answer() {
        let injection = Injection {
            name: "K".into(),
            header: "authorization".into(),
            value: "Bearer v".into(),
            secret: Arc::from("v"),
        };
        let request = http::Request::get("https://api.example.com/")
            .header("accept-encoding", "gzip")
            .header("range", "bytes=0-3")
            .header("authorization", "Bearer mine")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        carry_secret(&mut parts, &injection).unwrap();
        ask_plain(&mut parts);
        assert_eq!(parts.headers["accept-encoding"], "identity");
        assert!(parts.headers.get("range").is_none());
        assert_eq!(parts.headers.get_all("authorization").iter().count(), 1);
        assert_eq!(parts.headers["authorization"], "Bearer v");
        let (mut trace, ()) = http::Request::builder()
            .method("TRACE")
            .uri("https://api.example.com/")
            .body(())
            .unwrap()
            .into_parts();
        assert!(
            carry_secret(&mut trace, &injection)
                .unwrap_err()
                .contains("TRACE")
        );
    }

    #[test]
    fn a_body_in_any_encoding_but_plain_is_told() {
        let headers = |lines: &[(&str, &str)]| {
            let mut map = http::HeaderMap::new();
            for (name, value) in lines {
                map.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            map
        };
        let plain = [
            vec![],
            vec![("content-encoding", "identity")],
            vec![("transfer-encoding", "chunked")],
            vec![
                ("content-encoding", "Identity"),
                ("transfer-encoding", "identity, chunked"),
            ],
        ];
        for lines in plain {
            assert_eq!(encoded(&headers(&lines)), None, "{lines:?}");
        }
        // A second line, an item of a list, the transfer's encoding.
        let told = [
            (vec![("content-encoding", "gzip")], "gzip"),
            (
                vec![
                    ("content-encoding", "identity"),
                    ("content-encoding", "gzip"),
                ],
                "gzip",
            ),
            (vec![("content-encoding", "identity, br")], "br"),
            (vec![("transfer-encoding", "gzip, chunked")], "gzip"),
        ];
        for (lines, encoding) in told {
            assert_eq!(
                encoded(&headers(&lines)).as_deref(),
                Some(encoding),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn header_digests_see_names_values_and_order() {
        let mut a = http::HeaderMap::new();
        a.insert("x-a", "1".parse().unwrap());
        a.insert("x-b", "2".parse().unwrap());
        let mut b = http::HeaderMap::new();
        b.insert("x-a", "12".parse().unwrap());
        let mut c = http::HeaderMap::new();
        c.insert("x-b", "2".parse().unwrap());
        c.insert("x-a", "1".parse().unwrap());
        assert_ne!(headers_digest(&a), headers_digest(&b));
        assert_ne!(headers_digest(&a), headers_digest(&c));
        assert_eq!(headers_digest(&a), headers_digest(&a.clone()));
    }

    #[test]
    fn request_options_never_exceed_the_host_timeout() {
        let cap = Duration::from_secs(5);
        let options = capped(
            Some(RequestOptions {
                connect_timeout: Some(Duration::from_secs(1)),
                first_byte_timeout: Some(Duration::from_secs(60)),
                between_bytes_timeout: None,
            }),
            cap,
        );
        assert_eq!(options.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(options.first_byte_timeout, Some(cap));
        assert_eq!(options.between_bytes_timeout, Some(cap));
    }

    #[test]
    fn recorded_failures_answer_with_their_wasi_error() {
        let limit = 1 << 20;
        let places = Arc::new(tokio::sync::Semaphore::new(2));
        let permit = || Arc::clone(&places).try_acquire_owned().unwrap();
        let budget = crate::sandbox::memory::MemoryBudget::new(1 << 20, 1 << 20);
        let memory = |bytes| {
            let charge = Charge {
                budget: Arc::clone(&budget),
                tree: toka_kernel::EntityId::from_u128(1),
            };
            charge.reserve(bytes).unwrap()
        };
        assert!(matches!(
            answer(
                HttpOutcome::Failed {
                    failure: HttpFailure::TooLarge { limit },
                    message: "big".into()
                },
                Vec::new(),
                permit(),
                memory(0),
            ),
            Err(Error::HttpResponseBodySize(Some(l))) if l == limit
        ));
        let ok = answer(
            HttpOutcome::Response {
                status: 201,
                headers: vec![("x-a".into(), "1".into())],
                body: Digest::of(b"hi"),
                body_len: 2,
            },
            b"hi".to_vec(),
            permit(),
            memory(2),
        )
        .unwrap();
        // The response holds its place, and its bytes, until the agent
        // drops it.
        assert_eq!(places.available_permits(), 1);
        assert_eq!(budget.usage().in_use, 2);
        assert_eq!(ok.status(), 201);
        assert_eq!(ok.headers()["content-length"], "2");
        drop(ok);
        assert_eq!(places.available_permits(), 2);
        assert_eq!(budget.usage().in_use, 0);
    }
}

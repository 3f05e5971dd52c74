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
//! 3. it waits until everything applied so far is durable (the request
//!    record included): nothing is sent that the log could lose;
//! 4. the host injects the secret the agent's token binds to the host (over
//!    the agent's own header of that name), and an `Idempotency-Key` derived
//!    from the data dir's id, the task and the index — the same on every
//!    attempt, so a server that honours it sees one call;
//! 5. the response is read whole (up to [`AgentLimits::http_response_bytes`],
//!    within [`AgentLimits::http_timeout`]), the secret redacted from it,
//!    recorded (`HttpResponse`, the body a blob), and handed to the agent.
//!
//! A failure (no connection, a timeout, a response over the limit) is
//! recorded too, so a re-run gets the same error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use toka_kernel::{AgentId, Digest, HttpFailure, HttpOutcome, HttpRequest, TaskId};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks};

use crate::sandbox::limits::AgentLimits;
use crate::sandbox::redact::Redactor;
use crate::sandbox::{Effects, Injection, Journaled};

/// Why a re-run of the running task diverged, when it did: set by a
/// request's future, read when the task ends.
pub(crate) type Divergence = Arc<Mutex<Option<String>>>;

/// A store's `wasi:http` state: the context and the gate.
pub(crate) struct HttpGate {
    pub(crate) ctx: WasiHttpCtx,
    pub(crate) hooks: Hooks,
}

/// The hooks that gate, journal and send each request.
pub(crate) struct Hooks {
    agent: AgentId,
    effects: Arc<dyn Effects>,
    /// The running task and the index its next request gets.
    cursor: Option<(TaskId, u32)>,
    diverged: Divergence,
    limits: HttpLimits,
}

#[derive(Debug, Clone, Copy)]
struct HttpLimits {
    request_bytes: u64,
    response_bytes: u64,
    timeout: Duration,
}

impl HttpGate {
    pub(crate) fn new(
        agent: AgentId,
        effects: Arc<dyn Effects>,
        limits: &AgentLimits,
        diverged: Divergence,
    ) -> Self {
        Self {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                agent,
                effects,
                cursor: None,
                diverged,
                limits: HttpLimits {
                    request_bytes: limits.http_request_bytes,
                    response_bytes: limits.http_response_bytes,
                    timeout: limits.http_timeout,
                },
            },
        }
    }

    /// Requests from now on belong to `task` (numbered from 0), or to no
    /// task (`None`: they are refused).
    pub(crate) fn set_task(&mut self, task: Option<TaskId>) {
        self.hooks.cursor = task.map(|t| (t, 0));
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

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let agent = self.agent;
        // The index is taken now, in the order the agent makes requests.
        let position = self.cursor.as_mut().map(|(task, index)| {
            let position = (*task, *index);
            *index += 1;
            position
        });
        let exchange = Exchange {
            agent,
            effects: Arc::clone(&self.effects),
            diverged: Arc::clone(&self.diverged),
            limits: self.limits,
        };
        Box::new(async move {
            let Some((task, index)) = position else {
                tracing::info!(agent = %agent.short(), "HTTP request outside a task refused");
                return Err(Error::HttpRequestDenied);
            };
            let response = exchange.run(task, index, request, options).await?;
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

/// One request, from the agent's hands to its answer.
struct Exchange {
    agent: AgentId,
    effects: Arc<dyn Effects>,
    diverged: Divergence,
    limits: HttpLimits,
}

impl Exchange {
    async fn run(
        self,
        task: TaskId,
        index: u32,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let agent = self.agent;
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, self.limits.request_bytes as usize)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return Err(Error::HttpRequestBodySize(Some(self.limits.request_bytes))),
        };
        let journaled = HttpRequest {
            method: parts.method.as_str().to_owned(),
            url: parts.uri.to_string(),
            headers: headers_digest(&parts.headers),
            body: Digest::of(&body),
            body_len: body.len() as u64,
        };
        let gone = |e: crate::sandbox::HostGone| Error::InternalError(Some(e.to_string()));
        match self
            .effects
            .journal_request(agent, task, index, journaled)
            .await
            .map_err(gone)?
        {
            Journaled::Send => {}
            Journaled::Answered { outcome, body } => return answer(outcome, body),
            Journaled::Refused(reason) => {
                tracing::info!(agent = %agent.short(), url = %parts.uri, %reason, "HTTP request refused");
                return Err(Error::HttpRequestDenied);
            }
            Journaled::Diverged(why) => {
                *self.diverged.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                return Err(Error::InternalError(Some(why)));
            }
        }
        self.effects.durable().await.map_err(gone)?;

        let (outcome, body, secret) = self.send(task, index, parts, body, options).await;
        self.effects
            .record_response(agent, task, index, outcome.clone(), secret, body.clone())
            .await
            .map_err(gone)?;
        answer(outcome, body)
    }

    /// Sends the request (secret and idempotency key added), reads the
    /// response; what to record and answer, and the secret's name.
    async fn send(
        &self,
        task: TaskId,
        index: u32,
        mut parts: http::request::Parts,
        body: Bytes,
        options: Option<RequestOptions>,
    ) -> (HttpOutcome, Vec<u8>, Option<String>) {
        let failed = |failure, message: String| {
            (
                HttpOutcome::Failed {
                    failure,
                    message: crate::text::clip(&message, 1024),
                },
                Vec::new(),
            )
        };
        let scheme = parts.uri.scheme_str().unwrap_or("https").to_owned();
        let Some((host, port)) =
            crate::capability::policy::http_destination(&parts.uri.to_string())
        else {
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
        if let Some(Injection { header, value, .. }) = &injection {
            let name = http::HeaderName::from_bytes(header.as_bytes())
                .expect("bindings hold header names (checked when the right is parsed)");
            let mut value = http::HeaderValue::from_str(value)
                .expect("secrets hold printable ASCII (checked when they are set)");
            value.set_sensitive(true);
            parts.headers.insert(name, value);
        }
        let key = idempotency_key(&self.effects.data_id(), task, index);
        parts.headers.insert(
            http::HeaderName::from_static("idempotency-key"),
            http::HeaderValue::from_str(&key).expect("hex digits"),
        );
        let request =
            http::Request::from_parts(parts, Full::new(body).map_err(|never| match never {}));
        let options = capped(options, self.limits.timeout);
        let limit = self.limits.response_bytes;
        let exchange = async {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options))
                .await
                .map_err(|e| failure_of(&e))?;
            // The connection's I/O, driven while the body is read (and
            // dropped with it).
            let io = AbortOnDrop(tokio::spawn(io));
            let (head, body) = response.into_parts();
            let read = Limited::new(body, limit as usize).collect().await;
            drop(io);
            let body = match read {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return Err(match e.downcast::<Error>() {
                        Ok(e) => failure_of(&e),
                        Err(_) => (
                            HttpFailure::TooLarge { limit },
                            format!("the response is larger than the limit of {limit} bytes"),
                        ),
                    });
                }
            };
            Ok((head, body))
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
        let redactor = injection.as_ref().map(|i| Redactor::new(&i.secret));
        let body = match &redactor {
            Some(r) => r.redact(&body).unwrap_or_else(|| body.to_vec()),
            None => body.to_vec(),
        };
        let headers = head
            .headers
            .iter()
            .filter(|(name, _)| *name != http::header::CONTENT_LENGTH)
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes());
                let value = match &redactor {
                    Some(r) => r.redact_str(&value),
                    None => value.into_owned(),
                };
                (name.as_str().to_owned(), value)
            })
            .collect();
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

/// A spawned task, aborted when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The agent's answer for an outcome (the same on a first run and a
/// re-run: both come from what is recorded).
fn answer(outcome: HttpOutcome, body: Vec<u8>) -> Result<http::Response<WasiBody>, Error> {
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
            Full::new(Bytes::from(body))
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

/// What to record for an error of the exchange.
fn failure_of(e: &Error) -> (HttpFailure, String) {
    let failure = match e {
        Error::DnsTimeout
        | Error::DnsError { .. }
        | Error::DestinationNotFound
        | Error::InvalidDnsNameError(_) => HttpFailure::Dns,
        Error::Connect(_)
        | Error::ConnectionRefused
        | Error::ConnectionTerminated
        | Error::DestinationUnavailable
        | Error::DestinationIpProhibited
        | Error::DestinationIpUnroutable => HttpFailure::Connection,
        Error::ConnectionTimeout
        | Error::ConnectionReadTimeout
        | Error::ConnectionWriteTimeout
        | Error::HttpResponseTimeout => HttpFailure::Timeout,
        Error::Hyper(_) | Error::HttpProtocolError | Error::HttpResponseIncomplete => {
            HttpFailure::Protocol
        }
        _ => HttpFailure::Other,
    };
    (failure, e.to_string())
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
/// id `data_id`: the same on every attempt, different across data dirs.
pub(crate) fn idempotency_key(data_id: &[u8; 16], task: TaskId, index: u32) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("toka 2026-12 outbound idempotency key");
    hasher.update(data_id);
    hasher.update(&task.as_u128().to_be_bytes());
    hasher.update(&index.to_be_bytes());
    toka_kernel::to_hex(&hasher.finalize().as_bytes()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_differ_by_data_dir_task_and_index() {
        let task = TaskId::from_u128(7);
        let key = idempotency_key(&[1; 16], task, 0);
        assert_eq!(key, idempotency_key(&[1; 16], task, 0));
        assert_eq!(key.len(), 32);
        assert_ne!(key, idempotency_key(&[2; 16], task, 0));
        assert_ne!(key, idempotency_key(&[1; 16], task, 1));
        assert_ne!(key, idempotency_key(&[1; 16], TaskId::from_u128(8), 0));
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
        assert!(matches!(
            answer(
                HttpOutcome::Failed {
                    failure: HttpFailure::TooLarge { limit },
                    message: "big".into()
                },
                Vec::new()
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
        )
        .unwrap();
        assert_eq!(ok.status(), 201);
        assert_eq!(ok.headers()["content-length"], "2");
    }
}

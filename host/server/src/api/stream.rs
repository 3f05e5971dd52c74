//! The live event stream: Server-Sent Events, one message per committed
//! record (`event: record`, `id:` its sequence number, `data:` the record's
//! events that pass the filters), so a client that reconnects with
//! `Last-Event-ID` continues after the last record it received — whole
//! records, no gaps, no duplicates.
//!
//! The stream follows the host's bus. When a consumer reads slower than
//! the host commits, the bus moves on without it (it is bounded) and the
//! stream continues from the log on disk until it catches up: a slow
//! consumer is late, never missing anything. Only committed records are
//! streamed.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header;
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};
use toka_host::{CommittedRecord, Subscription};
use toka_kernel::Digest;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use crate::api::AuthErrors;
use crate::api::log::Filter;
use crate::app::App;
use crate::auth::{Reader, TICKET_LIFETIME, bearer, unauthenticated};
use crate::error::{ApiError, ErrorBody};
use crate::events::event_view;
use crate::extract::Query;
use crate::held::{Over, Place};
use crate::views::{EventView, Ticket};

/// Records read from the log at a time while catching up (what one stream
/// holds in memory at most, besides the batch the bus hands it) ...
const CATCH_UP: usize = 256;
/// ... and no more once they hold this many bytes as stored (an
/// observation may be 1 MiB).
const CATCH_UP_BYTES: usize = 4 << 20;

/// How long a stream may be quiet before it sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often a stream checks that its token is still good.
const RECHECK_TOKEN: Duration = Duration::from_secs(1);

/// Filters, where to start, and the ticket of a client without headers.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamQuery {
    /// Start at this sequence number (default: the next record committed;
    /// a `Last-Event-ID` header wins).
    from: Option<u64>,
    /// Only events about this agent (or submitted by it).
    agent: Option<String>,
    /// Only events of these kinds, comma-separated.
    kind: Option<String>,
    /// A ticket from `POST /v1/events/tickets`, instead of the
    /// Authorization header.
    ticket: Option<String>,
}

/// One SSE message: a committed record's events that pass the filters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamRecord {
    /// The record's sequence number (also the message's `id`).
    pub seq: u64,
    /// Its events that pass the filters, in order.
    pub events: Vec<EventView>,
}

/// Follows the log as Server-Sent Events (see the module docs). Send
/// `Last-Event-ID` to resume after a record.
#[utoipa::path(get, path = "/v1/events/stream", tag = "log", security(("bearer" = [])),
    params(StreamQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this record")),
    responses((status = 200, description = "`text/event-stream`: `event: record`, `id: SEQ`, `data:` a StreamRecord", body = StreamRecord, content_type = "text/event-stream"),
        (status = 400, description = "A malformed query or Last-Event-ID", body = ErrorBody),
        (status = 410, description = "`from` or Last-Event-ID is in the archived part of the log (`archived`)", body = ErrorBody),
        (status = 503, description = "Too many streams open", body = ErrorBody),
        AuthErrors))]
pub(crate) async fn stream(
    State(app): State<Arc<App>>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let client = crate::auth::client(&parts);
    let token = match &query.ticket {
        Some(ticket) if !headers.contains_key(axum::http::header::AUTHORIZATION) => {
            let token = app
                .tickets
                .redeem(ticket)
                .ok_or_else(|| unauthenticated("the ticket is unknown, used or expired"))?;
            // Checked again: the token may have been revoked since.
            app.host
                .authorize_operator(&token, toka_host::OperatorLevel::Read)
                .map_err(|d| {
                    ApiError::new(
                        axum::http::StatusCode::FORBIDDEN,
                        "forbidden",
                        d.to_string(),
                    )
                })?;
            token
        }
        _ => {
            let presented = bearer(&parts)?;
            app.authenticate(presented.as_bytes(), client, toka_host::OperatorLevel::Read)?
        }
    };
    let filter = Filter::new(query.agent.as_deref(), query.kind.as_deref())?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(id) => Some(
            id.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        "Last-Event-ID must be a sequence number",
                    )
                })?,
        ),
    };
    let place = app
        .streams
        .take(crate::auth::family(&token))
        .map_err(|over| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                match over {
                    Over::All(_) => {
                        "too many event streams are open; try again later".to_owned()
                    }
                    Over::Holder(most) => format!(
                        "this token and those attenuated from its root hold {most} event streams, the most one may; close one"
                    ),
                },
            )
        })?;
    // Subscribed before reading the head: nothing committed in between
    // is missed.
    let subscription = app.host.subscribe();
    let next = match (resume, query.from) {
        (Some(last), _) => last.saturating_add(1),
        (None, Some(from)) => from.max(1),
        (None, None) => crate::api::system::head(&app).seq + 1,
    };
    let start = app.host.log_start()?;
    if next < start {
        return Err(ApiError::new(
            axum::http::StatusCode::GONE,
            "archived",
            format!(
                "record {next} is archived: the live log starts at record {start}; stream from there or from now"
            ),
        ));
    }
    let follower = Follower {
        app: Arc::clone(&app),
        subscription,
        next,
        filter,
        ready: Vec::new(),
        sent: Instant::now(),
        catching_up: true,
        token,
        checked: Instant::now(),
        reader: None,
        keeps: None,
        closing: app.closing.clone(),
        _place: place,
    };
    // The messages are written here (not with axum's `Sse`, which makes a
    // body frame of every message): one frame holds every message that is
    // ready, a whole bus batch or a whole read from the log.
    let chunks = futures_util::stream::unfold(follower, |mut f| async move {
        let chunk = f.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), f))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

/// Where one stream is.
struct Follower {
    app: Arc<App>,
    subscription: Subscription,
    /// The next record to send.
    next: u64,
    filter: Filter,
    /// Messages ready to send, as SSE text.
    ready: Vec<u8>,
    /// When the stream last sent something (a keep-alive comment goes out
    /// after a quiet while).
    sent: Instant,
    /// Reading the log (from disk) rather than the bus.
    catching_up: bool,
    /// The operator token that opened the stream, and when it was last
    /// found still good: a stream ends soon after its token is revoked or
    /// expires.
    token: toka_host::Token,
    checked: Instant,
    /// Its place in the log while it reads from there, kept between
    /// reads only with a place for it.
    reader: Option<toka_host::LogReader>,
    keeps: Option<Place<Digest>>,
    closing: tokio::sync::watch::Receiver<bool>,
    _place: Place<Digest>,
}

impl Follower {
    /// The next messages, as SSE text; `None` ends the stream (the host
    /// or the server stops, the token is no longer good, or the log cannot
    /// be read).
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            if *self.closing.borrow() {
                return None;
            }
            if self.checked.elapsed() >= RECHECK_TOKEN {
                self.app
                    .host
                    .authorize_operator(&self.token, toka_host::OperatorLevel::Read)
                    .ok()?;
                self.checked = Instant::now();
            }
            if !self.ready.is_empty() {
                self.sent = Instant::now();
                return Some(std::mem::take(&mut self.ready));
            }
            if self.sent.elapsed() >= KEEP_ALIVE {
                self.sent = Instant::now();
                return Some(b": keep-alive\n\n".to_vec());
            }
            if self.catching_up {
                let read = self.read_log(u64::MAX).await?;
                if read == 0 {
                    // Caught up: the bus from here; the reader's state is
                    // memory the stream no longer needs.
                    self.catching_up = false;
                    self.let_go();
                }
                continue;
            }
            let received = tokio::select! {
                r = self.subscription.recv() => r,
                _ = self.closing.changed() => return None,
                () = tokio::time::sleep(RECHECK_TOKEN) => continue,
            };
            match received {
                Ok(batch) => {
                    let first = batch.records.first().map_or(self.next, |r| r.seq);
                    // Records between where this stream is and the batch:
                    // from the log, all of them.
                    while self.next < first {
                        if self.read_log(first).await? == 0 {
                            return None;
                        }
                    }
                    self.let_go();
                    for record in &batch.records {
                        self.push(record);
                    }
                }
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Reads committed records from `self.next` up to (not including)
    /// `before` from the log; how many it read. The stream keeps its place
    /// in the log while it catches up, so reading on costs only the new
    /// records; log reads of all streams and requests take turns.
    async fn read_log(&mut self, before: u64) -> Option<usize> {
        if self.next >= before {
            return Some(0);
        }
        let app = Arc::clone(&self.app);
        let host = Arc::clone(&app.host);
        let from = self.next;
        let reader = self.reader.take().filter(|r| r.next_seq() == from);
        let (reader, records) = app
            .read_log(&self.token, move || {
                let mut reader = match reader {
                    Some(reader) => reader,
                    None => host.log_reader(from)?,
                };
                let limit = usize::try_from(before - from)
                    .unwrap_or(usize::MAX)
                    .min(CATCH_UP);
                let records = host.read_log_within(&mut reader, limit, CATCH_UP_BYTES)?;
                Ok::<_, toka_host::HostError>((reader, records))
            })
            .await?
            .ok()?;
        // Kept for the next read only with a place: a reader holds a copy
        // of the whole state.
        if self.keeps.is_none() {
            self.keeps = app.kept_readers.take(crate::auth::family(&self.token)).ok();
        }
        if self.keeps.is_some() {
            self.reader = Some(reader);
        }
        for record in &records {
            self.push(record);
        }
        Some(records.len())
    }

    /// Drops the reader, and its place.
    fn let_go(&mut self) {
        self.reader = None;
        self.keeps = None;
    }

    /// Queues a record's message, if it is the next one and any of its
    /// events passes the filters.
    fn push(&mut self, record: &CommittedRecord) {
        if record.seq < self.next {
            return;
        }
        self.next = record.seq + 1;
        let events: Vec<EventView> = record
            .events
            .iter()
            .filter(|e| self.filter.keeps(record, e))
            .map(|e| event_view(record, e))
            .collect();
        if events.is_empty() {
            return;
        }
        let message = StreamRecord {
            seq: record.seq,
            events,
        };
        // Compact JSON has no raw line breaks: one `data:` line.
        let start = self.ready.len();
        let _ = write!(self.ready, "event: record\nid: {}\ndata: ", record.seq);
        if serde_json::to_writer(&mut self.ready, &message).is_ok() {
            self.ready.extend_from_slice(b"\n\n");
        } else {
            self.ready.truncate(start);
        }
    }
}

/// A single-use ticket to open the stream without a header (for
/// `EventSource`), good for 30 seconds; the token stays out of URLs.
#[utoipa::path(post, path = "/v1/events/tickets", tag = "log", security(("bearer" = [])),
    responses((status = 201, description = "A ticket", body = Ticket), AuthErrors))]
pub(crate) async fn ticket(
    State(app): State<Arc<App>>,
    who: Reader,
) -> Result<(axum::http::StatusCode, axum::Json<Ticket>), ApiError> {
    let ticket = app.tickets.issue(who.token)?;
    Ok((
        axum::http::StatusCode::CREATED,
        axum::Json(Ticket {
            ticket,
            expires_in_seconds: TICKET_LIFETIME.as_secs(),
        }),
    ))
}

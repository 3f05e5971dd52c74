//! The log: events (filtered, paged), raw records and the encoded state
//! (for clients that replay the log themselves), verification jobs and
//! snapshots.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use serde::Deserialize;
use toka_kernel::EntityId;
use utoipa::IntoParams;

use crate::api::system::head;
use crate::api::{AuthErrors, BodyErrors};
use crate::app::App;
use crate::auth::{Admin, Reader};
use crate::error::{ApiError, ErrorBody, parse_id};
use crate::events::{agents_of, event_view};
use crate::extract::{MaybeJson, Path, Query};
use crate::views::{
    ArchiveJob, ArchiveRequest, EncodedState, EventPage, EventView, Head, RawRecord, RecordPage,
    SnapshotTaken, VerifyJob, VerifyRequest,
};

/// Records one events request reads at most (with filters, a page may
/// hold fewer events than asked for, even none; follow `next_from`).
const SCAN_PER_REQUEST: usize = 1000;

/// Bytes of raw records one page holds at most.
const RECORD_PAGE_BYTES: usize = 4 << 20;

/// A page of events is read from records holding at most about this
/// many bytes (the record that passes it is the last): an observation
/// may be 1 MiB, and 1 000 of them must not be read and encoded for one
/// request. The page's events also end once they take this many bytes as
/// JSON (a record's events stay together, so one record's may pass it): an
/// observation of control characters takes six bytes for each as JSON
/// text, so 4 MiB of records made 24 MiB of JSON.
const EVENT_PAGE_BYTES: usize = 4 << 20;

/// Filters and where to start.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// The first sequence number to read (default 1).
    from: Option<u64>,
    /// Events at most (1 to 1000, default 100); a page also ends after
    /// the record that brings the records read to 4 MiB, or its events to
    /// 4 MiB as JSON.
    limit: Option<usize>,
    /// Only events about this agent (or submitted by it).
    agent: Option<String>,
    /// Only events of these kinds, comma-separated (e.g.
    /// `capability_denied,agent_quarantined`).
    kind: Option<String>,
}

/// What an events request or stream keeps.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) agent: Option<EntityId>,
    pub(crate) kinds: Option<Vec<String>>,
}

impl Filter {
    pub(crate) fn new(agent: Option<&str>, kind: Option<&str>) -> Result<Filter, ApiError> {
        let agent = agent
            .map(|a| parse_id::<EntityId>("agent", a))
            .transpose()?;
        let kinds = kind.map(|k| {
            k.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()
        });
        Ok(Filter { agent, kinds })
    }

    pub(crate) fn keeps(
        &self,
        record: &toka_host::CommittedRecord,
        event: &toka_kernel::Event,
    ) -> bool {
        if let Some(kinds) = &self.kinds
            && !kinds.iter().any(|k| k == event.kind())
        {
            return false;
        }
        match self.agent {
            None => true,
            Some(agent) => record.origin == agent || agents_of(event).contains(&agent),
        }
    }
}

/// Committed events from a sequence number on, filtered by agent and
/// kind, in log order.
#[utoipa::path(get, path = "/v1/events", tag = "log", security(("bearer" = [])),
    params(EventsQuery),
    responses((status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 410, description = "`from` is in the archived part of the log (`archived`)", body = ErrorBody),
        AuthErrors))]
pub(crate) async fn events(
    State(app): State<Arc<App>>,
    who: Reader,
    Query(query): Query<EventsQuery>,
) -> Result<axum::Json<EventPage>, ApiError> {
    let limit = crate::api::Paging::new(query.limit)?.limit;
    let filter = Filter::new(query.agent.as_deref(), query.kind.as_deref())?;
    // 0: the first record there is (after the anchor, once archived).
    let from = query.from.unwrap_or(0);
    let host = Arc::clone(&app.host);
    let records = app
        .read_log(&who.token, move || {
            let mut reader = host.log_reader(from)?;
            host.read_log_within(&mut reader, SCAN_PER_REQUEST, EVENT_PAGE_BYTES)
        })
        .await
        .ok_or_else(ApiError::stopping)??;
    let head = head(&app).seq;
    let mut events: Vec<EventView> = Vec::new();
    let (mut next_from, mut sent) = (None, 0);
    for record in &records {
        let kept: Vec<EventView> = record
            .events
            .iter()
            .filter(|e| filter.keeps(record, e))
            .map(|e| event_view(record, e))
            .collect();
        let bytes: usize = kept.iter().map(json_bytes).sum();
        // A record's events stay together on one page.
        if !events.is_empty()
            && (events.len() + kept.len() > limit || sent + bytes > EVENT_PAGE_BYTES)
        {
            next_from = Some(record.seq);
            break;
        }
        sent += bytes;
        events.extend(kept);
    }
    if next_from.is_none()
        && let Some(last) = records.last()
        && last.seq < head
    {
        next_from = Some(last.seq + 1);
    }
    Ok(axum::Json(EventPage {
        events,
        next_from,
        head,
    }))
}

/// The bytes `view` takes as JSON (counted, not written).
fn json_bytes(view: &EventView) -> usize {
    /// Counts what is written to it.
    struct Counted(usize);
    impl std::io::Write for Counted {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counted = Counted(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counted, view);
    counted.0
}

/// Where raw records start.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RecordsQuery {
    /// The first sequence number (default: the first record stored).
    from: Option<u64>,
    /// Records at most (1 to 1000, default 100; a page also stops at 4 MiB).
    limit: Option<usize>,
}

/// Committed records as stored (postcard, base64): for tools that replay
/// and check the log themselves, as `toka events` does.
#[utoipa::path(get, path = "/v1/log/records", tag = "log", security(("bearer" = [])),
    params(RecordsQuery),
    responses((status = 200, description = "A page of records", body = RecordPage),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 410, description = "`from` is in the archived part of the log (`archived`)", body = ErrorBody),
        AuthErrors))]
pub(crate) async fn records(
    State(app): State<Arc<App>>,
    who: Reader,
    Query(query): Query<RecordsQuery>,
) -> Result<axum::Json<RecordPage>, ApiError> {
    let limit = crate::api::Paging::new(query.limit)?.limit;
    // By default the first record stored (some before the anchor may be
    // kept, once the log's beginning is archived).
    let from = query.from.unwrap_or(0);
    let store = Arc::clone(&app.store);
    if let Some(anchor) = store
        .anchor()
        .map_err(|e| ApiError::internal(e.to_string()))?
        && from != 0
        && from < anchor.kept_from
    {
        return Err(ApiError::new(
            axum::http::StatusCode::GONE,
            "archived",
            format!(
                "record {from} is archived: the records stored start at {}",
                anchor.kept_from
            ),
        ));
    }
    let head = head(&app);
    // Up to 4 MiB read and encoded: a read client asking again and again
    // takes turns with the replays, on the readers' threads.
    let records = app
        .read_log(&who.token, move || -> Result<Vec<RawRecord>, ApiError> {
            let mut out = Vec::new();
            let mut bytes = 0;
            for entry in store
                .records(from)
                .map_err(|e| ApiError::internal(e.to_string()))?
            {
                let (seq, record) = entry.map_err(|e| ApiError::internal(e.to_string()))?;
                // Only what the head (read first) covers: committed records.
                if seq > head.seq
                    || out.len() >= limit
                    || (bytes > 0 && bytes + record.len() > RECORD_PAGE_BYTES)
                {
                    break;
                }
                bytes += record.len();
                out.push(RawRecord {
                    seq,
                    bytes: base64::engine::general_purpose::STANDARD.encode(&record),
                });
            }
            Ok(out)
        })
        .await
        .ok_or_else(ApiError::stopping)??;
    Ok(axum::Json(RecordPage { records, head }))
}

/// The committed state encoded as a snapshot, with the head it is the
/// state after: a client replays `/v1/log/records` from there. Requests
/// take turns, and share an answer that holds everything durable when
/// each asked (see [`App::encoded_state`]).
#[utoipa::path(get, path = "/v1/log/state", tag = "log", security(("bearer" = [])),
    responses((status = 200, description = "The committed state", body = EncodedState), AuthErrors))]
pub(crate) async fn state(
    State(app): State<Arc<App>>,
    _who: Reader,
) -> Result<
    (
        [(axum::http::HeaderName, &'static str); 1],
        axum::body::Bytes,
    ),
    ApiError,
> {
    let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
    // Everything durable now must be in the answer (unknown: encode anew).
    let durable = app.store.head().map_or(u64::MAX, |h| h.seq);
    let mut last = app.encoded_state.lock().await;
    if let Some((seq, body)) = &*last
        && *seq >= durable
    {
        return Ok((json, body.clone()));
    }
    // Encoding a large state takes a while (~20 MB at 100 000 agents): on
    // a reader's thread, not one of the runtime's (agents run there).
    let (head, state) = app.host.committed_view().await;
    let (limits, cell) = (app.limits.clone(), app.host.cell().map(Into::into));
    let body = app
        .log_readers
        .run(move || {
            let bytes = toka_host::encode_snapshot(head, &state);
            serde_json::to_vec(&EncodedState {
                head: Head {
                    seq: head.seq,
                    hash: head.hash.to_string(),
                },
                snapshot: base64::engine::general_purpose::STANDARD.encode(&bytes),
                limits,
                cell,
            })
        })
        .await
        .map_err(|e| ApiError::internal(format!("encoding the state failed: {e}")))?;
    let body = axum::body::Bytes::from(body);
    *last = Some((head.seq, body.clone()));
    Ok((json, body))
}

/// Starts verifying the log (every record's hash and link, the head, the
/// snapshots; with `auth`, every authorization decision). Needs `operator
/// admin` (it replays the whole log); one runs at a time: asking while one
/// runs answers with it.
#[utoipa::path(post, path = "/v1/verify", tag = "log", security(("bearer" = [])),
    request_body(content = VerifyRequest, description = "Options (optional)"),
    responses((status = 202, description = "Started, or already running", body = VerifyJob),
        BodyErrors, AuthErrors))]
pub(crate) async fn start_verify(
    State(app): State<Arc<App>>,
    _who: Admin,
    MaybeJson(request): MaybeJson<VerifyRequest>,
) -> (StatusCode, axum::Json<VerifyJob>) {
    let auth = request.is_some_and(|r| r.auth);
    let job = app.verify.start(Arc::clone(&app.store), app.root, auth);
    (StatusCode::ACCEPTED, axum::Json(job))
}

/// The latest verification, running or done.
#[utoipa::path(get, path = "/v1/verify", tag = "log", security(("bearer" = [])),
    responses((status = 200, description = "The latest verification", body = VerifyJob),
        (status = 404, description = "None ran yet", body = ErrorBody), AuthErrors))]
pub(crate) async fn latest_verify(
    State(app): State<Arc<App>>,
    _who: Reader,
) -> Result<axum::Json<VerifyJob>, ApiError> {
    app.verify
        .latest()
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found("no verification ran yet: POST /v1/verify starts one"))
}

/// One verification, by id.
#[utoipa::path(get, path = "/v1/verify/{id}", tag = "log", security(("bearer" = [])),
    params(("id" = u64, Path, description = "The job's id")),
    responses((status = 200, description = "The verification", body = VerifyJob),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 404, description = "No such job (only the last few are kept)", body = ErrorBody), AuthErrors))]
pub(crate) async fn get_verify(
    State(app): State<Arc<App>>,
    _who: Reader,
    Path(id): Path<u64>,
) -> Result<axum::Json<VerifyJob>, ApiError> {
    app.verify
        .get(id)
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("no verification {id}")))
}

/// Starts archiving the log while the host runs: the records up to `keep`
/// before the head go to a new file in the data dir's `archives`
/// directory, then leave the live log, which starts at a snapshot after
/// them (as `toka archive` does offline). Needs `operator admin`; one runs
/// at a time.
#[utoipa::path(post, path = "/v1/archive", tag = "log", security(("bearer" = [])),
    request_body(content = ArchiveRequest, description = "Options (optional)"),
    responses((status = 202, description = "Started", body = ArchiveJob),
        (status = 409, description = "One is running (`archiving`), or this server cannot archive: it has no data dir, or serves a cluster cell (`cannot_archive`)", body = ErrorBody),
        BodyErrors, AuthErrors))]
pub(crate) async fn start_archive(
    State(app): State<Arc<App>>,
    _who: Admin,
    MaybeJson(request): MaybeJson<ArchiveRequest>,
) -> Result<(StatusCode, axum::Json<ArchiveJob>), ApiError> {
    let keep = request.map_or(0, |r| r.keep);
    let cannot = |why: &str| ApiError::new(StatusCode::CONFLICT, "cannot_archive", why);
    if app.store.cell().is_some() {
        return Err(cannot(
            "a cell of a cluster cannot be archived (JetStream keeps its log)",
        ));
    }
    let Some(data) = &app.config.data_dir else {
        return Err(cannot("this server has no data dir to write archives into"));
    };
    let job = app
        .archives
        .start(Arc::clone(&app.host), data, keep)
        .map_err(|running| {
            ApiError::new(
                StatusCode::CONFLICT,
                "archiving",
                format!(
                    "archive {} is being made; GET /v1/archive/{} reports on it",
                    running.id, running.id
                ),
            )
        })?;
    Ok((StatusCode::ACCEPTED, axum::Json(job)))
}

/// The latest archive, being made or made.
#[utoipa::path(get, path = "/v1/archive", tag = "log", security(("bearer" = [])),
    responses((status = 200, description = "The latest archive", body = ArchiveJob),
        (status = 404, description = "None was made yet", body = ErrorBody), AuthErrors))]
pub(crate) async fn latest_archive(
    State(app): State<Arc<App>>,
    _who: Reader,
) -> Result<axum::Json<ArchiveJob>, ApiError> {
    app.archives
        .latest()
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found("no archive was made yet: POST /v1/archive starts one"))
}

/// One archive, by id.
#[utoipa::path(get, path = "/v1/archive/{id}", tag = "log", security(("bearer" = [])),
    params(("id" = u64, Path, description = "The job's id")),
    responses((status = 200, description = "The archive", body = ArchiveJob),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 404, description = "No such job (only the last few are kept)", body = ErrorBody), AuthErrors))]
pub(crate) async fn get_archive(
    State(app): State<Arc<App>>,
    _who: Reader,
    Path(id): Path<u64>,
) -> Result<axum::Json<ArchiveJob>, ApiError> {
    app.archives
        .get(id)
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("no archive job {id}")))
}

/// Writes a snapshot of the state now (recovery then replays only what
/// follows it).
#[utoipa::path(post, path = "/v1/snapshot", tag = "log", security(("bearer" = [])),
    responses((status = 200, description = "Written", body = SnapshotTaken), AuthErrors))]
pub(crate) async fn snapshot(
    State(app): State<Arc<App>>,
    _who: Admin,
) -> Result<axum::Json<SnapshotTaken>, ApiError> {
    let seq = app.host.snapshot().await?;
    Ok(axum::Json(SnapshotTaken { seq }))
}

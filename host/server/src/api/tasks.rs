//! Tasks: schedule onto an agent (once per `Idempotency-Key`), list the
//! unfinished ones, get one and wait for it to end.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use toka_host::{TaskFound, TaskInfo, TaskState, Token};
use toka_kernel::{AgentId, EntityId, TaskId, TaskStatus, WorldState, to_hex};
use utoipa::IntoParams;

use crate::api::{AuthErrors, BodyErrors, Paging, json_len};
use crate::app::App;
use crate::auth::{Reader, Writer, family};
use crate::error::{ApiError, ErrorBody, parse_id};
use crate::extract::{Json, Path, Query};
use crate::held::Over;
use crate::views::{ScheduleRequest, TaskPage, TaskView};

/// Queues a task for an agent. With an `Idempotency-Key` header, a retried
/// request schedules once: the retry gets the same task (200), and the key
/// is recorded in the log.
#[utoipa::path(post, path = "/v1/agents/{id}/tasks", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The agent's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Schedules once per key (printable, at most 255 bytes)")),
    request_body = ScheduleRequest,
    responses((status = 201, description = "Scheduled", body = TaskView),
        (status = 200, description = "Scheduled before under this idempotency key", body = TaskView),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "The agent is terminated, or the key was used for another request", body = ErrorBody),
        (status = 507, description = "The state budget is spent, or the tasks operators queued hold their share of it (`state_budget`): wait for some to end", body = ErrorBody),
        BodyErrors, AuthErrors))]
pub(crate) async fn schedule(
    State(app): State<Arc<App>>,
    who: Writer,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(request): Json<ScheduleRequest>,
) -> Result<(StatusCode, axum::Json<TaskView>), ApiError> {
    let agent = parse_id::<EntityId>("agent", &id)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::bad_request("invalid_header", "the Idempotency-Key header is not text")
        })?),
    };
    let token = who.token.clone();
    let acting = app.host.as_operator(who.token);
    let (task, created) = match key {
        Some(key) => {
            acting
                .schedule_once(key, agent, &request.description)
                .await?
        }
        None => (acting.schedule(agent, &request.description).await?, true),
    };
    // A task for an agent of another cell of the cluster is sent there:
    // this cell knows only that it left.
    let sent = app
        .host
        .cell()
        .is_some_and(|cell| cell.index != agent.cell());
    if created || sent {
        // Just scheduled (or sent): no need to read it back.
        let view = TaskView {
            id: task.to_string(),
            agent: agent.to_string(),
            status: if sent { "sent" } else { "queued" }.into(),
            description: Some(request.description),
            output: None,
            output_hex: None,
            reason: None,
            scheduled_seq: None,
            ended_seq: None,
        };
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((status, axum::Json(view)));
    }
    let found = app.host.find_task(task).await?;
    let info = read_found(&app, &token, task, found)
        .await?
        .ok_or_else(|| {
            ApiError::internal(format!(
                "task {task} is neither in the state nor in the log"
            ))
        })?;
    Ok((StatusCode::OK, axum::Json(view(&info))))
}

/// Filters and a page of unfinished tasks.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only tasks of this agent.
    agent: Option<String>,
    /// Only `queued` or only `running` tasks.
    status: Option<String>,
    /// Tasks after this id (a `next_cursor`).
    cursor: Option<String>,
    /// How many (1 to 1000, default 100); a page also ends after the task
    /// that brings its descriptions, as sent, to 1 MiB.
    limit: Option<usize>,
}

/// The bytes of descriptions (as sent) a page of tasks holds at most (the
/// task that passes it is the last): a description may be 4 KiB, six
/// times that escaped, and 1 000 of them must not be encoded for one
/// request.
const TASK_PAGE_BYTES: usize = 1 << 20;

/// Lists unfinished (queued and running) tasks, by id. Ended tasks leave
/// the list; `GET /v1/tasks/{id}` still finds them.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, description = "A page of tasks", body = TaskPage),
        (status = 400, description = "A malformed query", body = ErrorBody), AuthErrors))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _who: Reader,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<TaskPage>, ApiError> {
    let paging = Paging::new(query.limit)?;
    let running = match query.status.as_deref() {
        None => None,
        Some("queued") => Some(false),
        Some("running") => Some(true),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "status must be `queued` or `running` (ended tasks are not listed)",
            ));
        }
    };
    let agent = query
        .agent
        .as_deref()
        .map(|a| parse_id::<EntityId>("agent", a))
        .transpose()?;
    let after = query
        .cursor
        .as_deref()
        .map(|c| parse_id::<TaskId>("task", c))
        .transpose()?;
    let (items, next_cursor) = app
        .host
        .state(|s| {
            let entry = |(id, t): (TaskId, &toka_kernel::TaskRecord)| {
                let matches = agent.is_none_or(|a| t.agent == a)
                    && running.is_none_or(|r| r == matches!(t.status, TaskStatus::Running(_)));
                (id, matches.then(|| unfinished_view(s, id)).flatten())
            };
            let size = |v: &TaskView| v.description.as_deref().map_or(0, json_len);
            let cursor = |id: TaskId| id.to_string();
            match agent {
                // One agent's unfinished tasks are its queue and the one it
                // runs (at most `max_queue` + 1): no walk of every task.
                Some(agent) => {
                    let tasks = agent_tasks(s, agent, after)
                        .into_iter()
                        .filter_map(|id| s.task(id).map(|t| (id, t)));
                    paging.page_walk_bytes(TASK_PAGE_BYTES, size, tasks.map(entry), cursor)
                }
                None => paging.page_walk_bytes(
                    TASK_PAGE_BYTES,
                    size,
                    s.tasks_after(after).map(entry),
                    cursor,
                ),
            }
        })
        .await;
    Ok(axum::Json(TaskPage { items, next_cursor }))
}

/// `agent`'s unfinished tasks after `after`, in id order.
fn agent_tasks(s: &WorldState, agent: AgentId, after: Option<TaskId>) -> Vec<TaskId> {
    let mut ids: Vec<TaskId> = s.agent(agent).map_or_else(Vec::new, |a| {
        a.queue
            .iter()
            .copied()
            .chain(a.running)
            .filter(|id| after.is_none_or(|after| *id > after))
            .collect()
    });
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// How long to wait.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct GetQuery {
    /// Wait up to this long for the task to end (`30s`, `500ms`, `2m`; at
    /// most the server's limit, 60 s by default), then answer with it as
    /// it is. A token family's 257th wait at once (or the server's 4 097th)
    /// is refused (`429`, `Retry-After`).
    wait: Option<String>,
}

/// One task, queued, running or ended; with `?wait=`, once it ended or
/// the wait is over.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, description = "The task's id"), GetQuery),
    responses((status = 200, description = "The task", body = TaskView),
        (status = 400, description = "A malformed id or wait", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody), AuthErrors))]
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    who: Reader,
    Path(id): Path<String>,
    Query(query): Query<GetQuery>,
) -> Result<axum::Json<TaskView>, ApiError> {
    let task = parse_id::<TaskId>("task", &id)?;
    let wait = match query.wait.as_deref() {
        None => None,
        Some(text) => Some(parse_wait(text, app.config.max_wait)?),
    };
    let found = match wait {
        Some(wait) if !wait.is_zero() => {
            // A wait holds a place, all clients together and per token
            // family.
            let _place = app.waits.take(family(&who.token)).map_err(|over| {
                ApiError::too_many(
                    match over {
                        Over::All(most) => format!(
                            "{most} requests wait for tasks already, the most the server holds; ask again, or without wait"
                        ),
                        Over::Holder(most) => format!(
                            "this token and those attenuated from its root have {most} requests waiting for tasks, the most one may; ask again, or without wait"
                        ),
                    },
                    1,
                )
            })?;
            app.host.wait_for_task(task, wait).await?
        }
        _ => app.host.find_task(task).await?,
    };
    read_found(&app, &who.token, task, found)
        .await?
        .map(|i| axum::Json(view(&i)))
        .ok_or_else(|| ApiError::not_found(format!("no task {task}")))
}

/// The task `found` says where to read. One that ended long ago is read
/// back by replaying the log from a snapshot: that takes the token
/// family's turn on the log readers' threads, as a page of events does,
/// not a thread that serves every client.
async fn read_found(
    app: &App,
    token: &Token,
    task: TaskId,
    found: TaskFound,
) -> Result<Option<TaskInfo>, ApiError> {
    Ok(match found {
        TaskFound::Held(info) => Some(info),
        TaskFound::Unknown => None,
        TaskFound::InLog => {
            let host = Arc::clone(&app.host);
            app.read_log(token, move || host.task_from_log(task))
                .await
                .ok_or_else(ApiError::stopping)??
        }
    })
}

fn parse_wait(text: &str, max: Duration) -> Result<Duration, ApiError> {
    let wait = match text.strip_suffix("ms") {
        Some(ms) => ms.parse::<u64>().ok().map(Duration::from_millis),
        None => toka_host::parse_duration(text).ok(),
    }
    .ok_or_else(|| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "wait `{}` is not a duration like 30s, 500ms or 2m",
                toka_host::clip(text, 40)
            ),
        )
    })?;
    if wait > max {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("wait is at most {} s", max.as_secs()),
        ));
    }
    Ok(wait)
}

/// An unfinished task as the API shows it.
pub(crate) fn unfinished_view(state: &WorldState, task: TaskId) -> Option<TaskView> {
    let record = state.task(task)?;
    Some(TaskView {
        id: task.to_string(),
        agent: record.agent.to_string(),
        status: match record.status {
            TaskStatus::Queued => "queued",
            TaskStatus::Running(_) => "running",
        }
        .into(),
        description: Some(record.spec.description.clone()),
        output: None,
        output_hex: None,
        reason: None,
        scheduled_seq: Some(record.scheduled_seq),
        ended_seq: None,
    })
}

/// A task as the API shows it.
pub(crate) fn view(info: &TaskInfo) -> TaskView {
    let (mut output, mut output_hex, mut reason) = (None, None, None);
    match &info.state {
        TaskState::Completed { output: bytes } => match std::str::from_utf8(bytes) {
            Ok(text) => output = Some(text.to_owned()),
            Err(_) => output_hex = Some(to_hex(bytes)),
        },
        TaskState::Failed { reason: why } => reason = Some(why.clone()),
        TaskState::Queued | TaskState::Running => {}
    }
    TaskView {
        id: info.id.to_string(),
        agent: info.agent.to_string(),
        status: info.state.name().into(),
        description: info.description.clone(),
        output,
        output_hex,
        reason,
        scheduled_seq: info.scheduled_seq,
        ended_seq: info.ended_seq,
    }
}

#[cfg(test)]
mod tests {
    use toka_kernel::{
        AgentSpec, Command, ComponentSpec, Digest, EntityId, Event, Kernel, Limits, Operation,
        TaskId, TaskSpec, Timestamp,
    };

    use crate::api::tasks::agent_tasks;

    #[test]
    fn an_agent_s_tasks_are_its_queue_and_its_running_one_in_id_order() {
        let mut kernel = Kernel::new(Limits::default());
        let mut apply = |origin, op| {
            kernel
                .apply(Command::system(origin, Timestamp(1), op))
                .unwrap()
                .events
        };
        let digest = Digest::of(b"c");
        apply(
            EntityId::SYSTEM,
            Operation::InstallComponent {
                component: Box::new(ComponentSpec {
                    digest,
                    name: "c".into(),
                    size: 1,
                }),
            },
        );
        let mut spawn = |name: &str| {
            let spec = AgentSpec {
                component: digest,
                name: name.into(),
                token: Digest::of(name.as_bytes()),
                rights: Vec::new(),
            };
            match apply(
                EntityId::SYSTEM,
                Operation::SpawnAgent {
                    spec: Box::new(spec),
                },
            )[..]
            {
                [Event::AgentSpawned { agent, .. }, ..] => agent,
                ref other => panic!("not spawned: {other:?}"),
            }
        };
        let (agent, other) = (spawn("a"), spawn("b"));
        let mut schedule = |to| {
            let spec = TaskSpec {
                description: "t".into(),
            };
            match apply(
                EntityId::SYSTEM,
                Operation::ScheduleTask { agent: to, spec },
            )[..]
            {
                [Event::TaskScheduled { task, .. }, ..] => task,
                ref other => panic!("not scheduled: {other:?}"),
            }
        };
        let mut mine: Vec<TaskId> = (0..5).map(|_| schedule(agent)).collect();
        schedule(other);
        apply(agent, Operation::StartTask { task: mine[0] });
        mine.sort_unstable();

        let state = kernel.state();
        assert_eq!(agent_tasks(state, agent, None), mine, "the running one too");
        assert_eq!(agent_tasks(state, agent, Some(mine[1])), mine[2..]);
        assert_eq!(
            agent_tasks(state, agent, Some(mine[4])),
            Vec::<TaskId>::new()
        );
        assert_eq!(
            agent_tasks(state, EntityId::SYSTEM, None),
            Vec::<TaskId>::new()
        );
    }
}

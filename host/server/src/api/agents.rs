//! Agents: spawn, list, get, terminate, resume, and their state.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use toka_host::{Budget, Grant, Right, Token};
use toka_kernel::{AgentId, AgentRecord, AgentStatus, Digest, EntityId, WorldState, to_hex};
use utoipa::IntoParams;

use crate::api::index::{AgentFilter, agent_index, status_name};
use crate::api::tasks::unfinished_view;
use crate::api::{AuthErrors, BodyErrors, Paging, json_len};
use crate::app::App;
use crate::auth::{Admin, Reader, Writer};
use crate::error::{ApiError, ErrorBody, parse_id};
use crate::extract::{Json, MaybeJson, Path, Query};
use crate::views::{
    AgentDetail, AgentPage, AgentView, ForgottenView, Grants, PackageLabel, SpawnRequest,
    StateEntry, StatePage, TerminateRequest,
};

/// Spawns a root agent. With `rights` the host mints its token (needs
/// `operator admin`); with `token` it is bound to that token (`operator
/// write`).
#[utoipa::path(post, path = "/v1/agents", tag = "agents", security(("bearer" = [])),
    request_body = SpawnRequest,
    responses((status = 201, description = "Spawned", body = AgentView),
        (status = 404, description = "No such component", body = ErrorBody),
        (status = 507, description = "The host's state budget is spent (`state_budget`): terminate and forget agents first", body = ErrorBody),
        BodyErrors, AuthErrors))]
pub(crate) async fn spawn(
    State(app): State<Arc<App>>,
    who: Writer,
    Json(request): Json<SpawnRequest>,
) -> Result<(StatusCode, axum::Json<AgentView>), ApiError> {
    if let Some(package) = &request.package {
        if !request.component.is_empty() || request.token.is_some() {
            return Err(ApiError::unprocessable(
                "invalid_body",
                "a package's agent runs its component with its install token: give no `component` or `token`",
            ));
        }
        let rights = parse_all::<Right>(&request.rights)?;
        let budgets = parse_all::<Budget>(&request.budgets)?;
        let agent = app
            .host
            .as_operator(who.token)
            .spawn_package(
                package,
                &request.name,
                (!rights.is_empty()).then_some(rights.as_slice()),
                &budgets,
            )
            .await?;
        let view = agent_or_404(&app, agent).await?;
        return Ok((StatusCode::CREATED, axum::Json(view)));
    }
    let grant = match (&request.token, request.rights.is_empty()) {
        (Some(_), false) => {
            return Err(ApiError::unprocessable(
                "invalid_body",
                "give either `rights` (the host mints a token) or `token`, not both",
            ));
        }
        (Some(token), true) => {
            if !request.budgets.is_empty() {
                return Err(ApiError::unprocessable(
                    "invalid_body",
                    "`budgets` go with `rights`; narrow a token with POST /v1/tokens/attenuate",
                ));
            }
            Grant::Token(token.as_bytes().to_vec())
        }
        (None, true) => {
            return Err(ApiError::unprocessable(
                "invalid_body",
                "give the agent `rights` (the host mints a token) or a `token`",
            ));
        }
        (None, false) => Grant::Budgeted {
            rights: parse_all::<Right>(&request.rights)?,
            budgets: parse_all::<Budget>(&request.budgets)?,
        },
    };
    let component = app
        .host
        .state(|s| {
            request
                .component
                .parse::<Digest>()
                .ok()
                .filter(|d| s.component(d).is_some())
                .or_else(|| s.component_named(&request.component).map(|c| c.digest))
        })
        .await
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no component `{}` is installed",
                toka_host::clip(&request.component, 80)
            ))
        })?;
    let agent = app
        .host
        .as_operator(who.token)
        .spawn(component, &request.name, grant)
        .await?;
    let view = agent_or_404(&app, agent).await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// Parses each item, or answers 422 naming the bad one.
pub(crate) fn parse_all<T: std::str::FromStr>(items: &[String]) -> Result<Vec<T>, ApiError>
where
    T::Err: std::fmt::Display,
{
    items
        .iter()
        .map(|item| {
            item.parse::<T>()
                .map_err(|e| ApiError::unprocessable("invalid_body", e.to_string()))
        })
        .collect()
}

/// Filters and a page of agents.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only agents with this status: `active`, `quarantined`, `terminated`.
    status: Option<String>,
    /// Only children of this agent (`system` for root agents).
    parent: Option<String>,
    /// Only agents running this component (name or digest).
    component: Option<String>,
    /// Agents after this id (a `next_cursor`).
    cursor: Option<String>,
    /// How many (1 to 1000, default 100).
    limit: Option<usize>,
}

/// Lists agents, by id.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, description = "A page of agents", body = AgentPage),
        (status = 400, description = "A malformed query", body = ErrorBody), AuthErrors))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _who: Reader,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<AgentPage>, ApiError> {
    let paging = Paging::new(query.limit)?;
    if let Some(status) = &query.status
        && !matches!(status.as_str(), "active" | "quarantined" | "terminated")
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "status must be `active`, `quarantined` or `terminated`",
        ));
    }
    let parent = match query.parent.as_deref() {
        None => None,
        Some("system") => Some(EntityId::SYSTEM),
        Some(id) => Some(parse_id::<EntityId>("agent", id)?),
    };
    let after = query
        .cursor
        .as_deref()
        .map(|c| parse_id::<EntityId>("agent", c))
        .transpose()?;
    let (head, s) = app.host.committed_view().await;
    let filter = AgentFilter {
        parent,
        component: query.component.as_deref().map(|c| {
            c.parse::<Digest>()
                .ok()
                .or_else(|| s.component_named(c).map(|spec| spec.digest))
        }),
        status: query.status.as_deref(),
    };
    let index = agent_index(&app, head.seq, &s, &filter).await;
    let entry = |(id, a): (AgentId, &AgentRecord)| (id, filter.matches(a).then(|| view(id, a, &s)));
    let (items, next_cursor) = match index.as_deref().and_then(|i| i.candidates(&filter)) {
        // Only the agents one of the filters selects, from the cursor on.
        Some(ids) => {
            let start = after.map_or(0, |a| ids.partition_point(|id| *id <= a));
            let agents = ids[start..]
                .iter()
                .filter_map(|id| s.agent(*id).map(|a| (*id, a)));
            paging.page_walk(agents.map(entry), |id| id.to_string())
        }
        None => paging.page_walk(s.agents_after(after).map(entry), |id| id.to_string()),
    };
    Ok(axum::Json(AgentPage { items, next_cursor }))
}

/// The tasks an agent's detail shows at most (a queue holds up to 1 024,
/// each with a description of up to 4 KiB: all of them are a page of
/// `GET /v1/tasks?agent=`).
const DETAIL_TASKS: usize = 100;
/// The state keys an agent's detail shows at most.
const DETAIL_KEYS: usize = 1000;

/// One agent: its record, unfinished tasks, state keys and grants.
#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "The agent's id (32 hex digits)")),
    responses((status = 200, description = "The agent", body = AgentDetail),
        (status = 400, description = "Not an agent id", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody), AuthErrors))]
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    _who: Reader,
    Path(id): Path<String>,
) -> Result<axum::Json<AgentDetail>, ApiError> {
    let agent = parse_id::<EntityId>("agent", &id)?;
    let found = app
        .host
        .state(|s| {
            let a = s.agent(agent)?;
            let tasks: Vec<_> = a
                .running
                .iter()
                .chain(a.queue.iter())
                .take(DETAIL_TASKS)
                .filter_map(|t| unfinished_view(s, *t))
                .collect();
            let keys = a.state.keys().take(DETAIL_KEYS).cloned().collect();
            Some((view(agent, a, s), tasks, keys, a.token))
        })
        .await;
    let Some((agent, tasks, keys, token)) = found else {
        return Err(ApiError::not_found(format!("no agent {agent}")));
    };
    let grants = match app.host.token(&token) {
        Ok(token) => {
            let revoked = app
                .host
                .state(|s| token.revocation_ids().iter().any(|id| s.is_revoked(id)))
                .await;
            grants(&token, revoked)
        }
        Err(_) => Grants::default(),
    };
    Ok(axum::Json(AgentDetail {
        agent,
        tasks,
        keys,
        grants,
    }))
}

/// What a token grants, read from it.
pub(crate) fn grants(token: &Token, revoked: bool) -> Grants {
    Grants {
        rights: token
            .authority_rights()
            .iter()
            .map(ToString::to_string)
            .collect(),
        delegated: token.delegated_rights(),
        budgets: token
            .budgets()
            .map(|b| b.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        revocation_ids: token.revocation_ids().iter().map(|id| to_hex(id)).collect(),
        revoked,
    }
}

/// Terminates an agent: its queued and running tasks fail.
#[utoipa::path(post, path = "/v1/agents/{id}/terminate", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "The agent's id")),
    request_body(content = TerminateRequest, description = "Why (optional)"),
    responses((status = 200, description = "Terminated", body = AgentView),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "Already terminated", body = ErrorBody),
        BodyErrors, AuthErrors))]
pub(crate) async fn terminate(
    State(app): State<Arc<App>>,
    who: Writer,
    Path(id): Path<String>,
    MaybeJson(request): MaybeJson<TerminateRequest>,
) -> Result<axum::Json<AgentView>, ApiError> {
    let agent = parse_id::<EntityId>("agent", &id)?;
    let reason = request
        .and_then(|r| r.reason)
        .unwrap_or_else(|| "terminated by an operator".into());
    app.host
        .as_operator(who.token)
        .terminate(agent, &reason)
        .await?;
    agent_or_404(&app, agent).await.map(axum::Json)
}

/// Forgets every terminated agent none of whose descendants is alive
/// (nor a task it scheduled unfinished):
/// their records and state leave the state (`GET /v1/agents/{id}` answers
/// 404 for them from then on); their history stays in the log. Needs
/// `operator admin`.
#[utoipa::path(post, path = "/v1/agents/forget", tag = "agents", security(("bearer" = [])),
    responses((status = 200, description = "Forgotten: how many, and the state they held", body = ForgottenView),
        AuthErrors))]
pub(crate) async fn forget(
    State(app): State<Arc<App>>,
    who: Admin,
) -> Result<axum::Json<ForgottenView>, ApiError> {
    let forgotten = app.host.as_operator(who.token).forget_terminated().await?;
    Ok(axum::Json(ForgottenView {
        agents: forgotten.agents,
        state_bytes: forgotten.state_bytes,
    }))
}

/// Lets a quarantined agent run tasks again.
#[utoipa::path(post, path = "/v1/agents/{id}/resume", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "The agent's id")),
    responses((status = 200, description = "Resumed", body = AgentView),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "Not quarantined", body = ErrorBody), AuthErrors))]
pub(crate) async fn resume(
    State(app): State<Arc<App>>,
    who: Writer,
    Path(id): Path<String>,
) -> Result<axum::Json<AgentView>, ApiError> {
    let agent = parse_id::<EntityId>("agent", &id)?;
    app.host.as_operator(who.token).resume_agent(agent).await?;
    agent_or_404(&app, agent).await.map(axum::Json)
}

/// A page of an agent's state.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StateQuery {
    /// Keys after this one (a `next_cursor`).
    cursor: Option<String>,
    /// How many (1 to 1000, default 100); a page also ends after the value
    /// that brings its keys and values, as sent, to 1 MiB.
    limit: Option<usize>,
}

/// The bytes of keys and values (as sent: hex doubles a value that is not
/// text) a page of an agent's state holds at most (the entry that passes
/// it is the last): a value may be 64 KiB, 128 KiB as hex, and 1 000 of
/// them must not be encoded for one request.
const STATE_PAGE_BYTES: usize = 1 << 20;

/// An agent's state: its keys and values, by key.
#[utoipa::path(get, path = "/v1/agents/{id}/state", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "The agent's id"), StateQuery),
    responses((status = 200, description = "A page of keys and values", body = StatePage),
        (status = 400, description = "A malformed id or query", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody), AuthErrors))]
pub(crate) async fn state(
    State(app): State<Arc<App>>,
    _who: Reader,
    Path(id): Path<String>,
    Query(query): Query<StateQuery>,
) -> Result<axum::Json<StatePage>, ApiError> {
    let agent = parse_id::<EntityId>("agent", &id)?;
    let paging = Paging::new(query.limit)?;
    let page = app
        .host
        .state(|s| {
            let a = s.agent(agent)?;
            Some(state_page(
                &a.state,
                query.cursor.as_deref(),
                paging,
                STATE_PAGE_BYTES,
            ))
        })
        .await;
    let (items, next_cursor) =
        page.ok_or_else(|| ApiError::not_found(format!("no agent {agent}")))?;
    Ok(axum::Json(StatePage { items, next_cursor }))
}

/// A page of `state` after `cursor`, ending after the entry that brings
/// its keys and values, as sent, to `max_bytes`. It starts at the cursor
/// without walking the keys before it, and encodes only what it sends.
fn state_page(
    state: &BTreeMap<String, Vec<u8>>,
    cursor: Option<&str>,
    paging: Paging,
    max_bytes: usize,
) -> (Vec<StateEntry>, Option<String>) {
    let after = cursor.map_or(Bound::Unbounded, Bound::Excluded);
    let (page, next) = paging.page_within(
        state.range::<str, _>((after, Bound::Unbounded)),
        max_bytes,
        |(k, v)| json_len(k) + sent_size(v),
        |(k, _)| (*k).clone(),
    );
    (page.into_iter().map(|(k, v)| entry(k, v)).collect(), next)
}

/// The bytes a value takes as sent: as text (escaped), or twice as many
/// as hex.
fn sent_size(value: &[u8]) -> usize {
    match std::str::from_utf8(value) {
        Ok(text) => json_len(text),
        Err(_) => 2 * value.len(),
    }
}

fn entry(key: &str, value: &[u8]) -> StateEntry {
    let (text, hex) = match std::str::from_utf8(value) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(to_hex(value))),
    };
    StateEntry {
        key: key.to_owned(),
        value: text,
        value_hex: hex,
        size: value.len() as u64,
    }
}

async fn agent_or_404(app: &App, agent: AgentId) -> Result<AgentView, ApiError> {
    app.host
        .state(|s| s.agent(agent).map(|a| view(agent, a, s)))
        .await
        .ok_or_else(|| ApiError::not_found(format!("no agent {agent}")))
}

/// An agent as lists show it.
pub(crate) fn view(id: AgentId, a: &AgentRecord, state: &WorldState) -> AgentView {
    let reason = match &a.status {
        AgentStatus::Active => None,
        AgentStatus::Quarantined { reason } | AgentStatus::Terminated { reason } => {
            Some(reason.clone())
        }
    };
    AgentView {
        id: id.to_string(),
        name: a.name.clone(),
        parent: (a.parent != EntityId::SYSTEM).then(|| a.parent.to_string()),
        component: a.component.to_string(),
        status: status_name(&a.status).into(),
        reason,
        queued: a.queue.len() as u64,
        running: a.running.map(|t| t.to_string()),
        completed: a.completed,
        failed: a.failed,
        consecutive_faults: a.consecutive_faults,
        state_keys: a.state.len() as u64,
        state_bytes: a.state_bytes,
        token: a.token.to_string(),
        package: state.package_of(&a.component).map(|p| PackageLabel {
            name: p.name.clone(),
            version: p.version.clone(),
            publisher: p.publisher.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{Paging, state_page};

    /// Pages through `state` to its end: the keys of each page.
    fn pages(state: &BTreeMap<String, Vec<u8>>, limit: usize, max: usize) -> Vec<Vec<String>> {
        let (mut pages, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let (items, next) = state_page(state, cursor.as_deref(), Paging { limit }, max);
            pages.push(items.into_iter().map(|e| e.key).collect());
            match next {
                Some(next) => cursor = Some(next),
                None => return pages,
            }
        }
    }

    #[test]
    fn a_state_page_goes_on_from_its_cursor() {
        let state: BTreeMap<String, Vec<u8>> =
            (0..7).map(|i| (format!("k{i}"), b"v".to_vec())).collect();
        let keys = |r: std::ops::Range<usize>| r.map(|i| format!("k{i}")).collect::<Vec<_>>();
        assert_eq!(
            pages(&state, 3, usize::MAX),
            [keys(0..3), keys(3..6), keys(6..7)]
        );
        // A cursor between keys (one deleted since) goes on after it.
        let (items, _) = state_page(&state, Some("k2x"), Paging { limit: 2 }, usize::MAX);
        let got: Vec<_> = items.into_iter().map(|e| e.key).collect();
        assert_eq!(got, keys(3..5));
    }

    #[test]
    fn a_state_page_counts_its_values_as_sent() {
        // Keys of 2 bytes; values of 10 bytes, text or not (20 as hex).
        let mut state = BTreeMap::new();
        state.insert("a1".to_owned(), vec![b'x'; 10]);
        state.insert("a2".to_owned(), vec![0xff; 10]);
        state.insert("a3".to_owned(), vec![b'x'; 10]);
        state.insert("a4".to_owned(), vec![0xff; 10]);
        // 12 + 22 = 34 passes 30 at the second entry (counted raw, 12 + 12
        // would not, and the page would hold three); then 12 + 22 again.
        let got = pages(&state, 1000, 30);
        assert_eq!(got, [vec!["a1", "a2"], vec!["a3", "a4"]]);
        assert_eq!(pages(&BTreeMap::new(), 10, 30), [Vec::<String>::new()]);
        // Text that escapes counts as escaped: ten control bytes are 60.
        state.insert("a0".to_owned(), vec![1; 10]);
        assert_eq!(pages(&state, 1000, 30)[0], ["a0"]);
        state.remove("a0");
        let (items, _) = state_page(&state, None, Paging { limit: 1000 }, 30);
        assert_eq!(items[1].value_hex.as_deref(), Some("ffffffffffffffffffff"));
        assert_eq!(items[1].size, 10);
    }
}

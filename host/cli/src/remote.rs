//! The commands that write, when a server holds the data dir: they go
//! through its API (with the local admin token it registered) instead of
//! opening the store, and print what they print locally. The log is read
//! back as records and replayed here, so what is printed comes from the
//! same committed events either way.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use toka_kernel::{Applied, Event, Kernel, Registry, WorldState};
use toka_server::client::{Client, ClientError};
use toka_server::views::{
    AgentView, ComponentView, Distrusted, EncodedState, ForgottenView, InstalledView, PackageView,
    PublisherView, RecordPage, ReviewView, RevokeRequest, Revoked, ScheduleRequest, SnapshotTaken,
    SpawnRequest, TaskView, TrustRequest,
};

use crate::drive::{Bounds, Ending};
use crate::output::out;
use crate::render::Names;
use crate::run::Report;
use crate::{CliResult, Failure};

/// How often a command following the log asks for new records.
const POLL: Duration = Duration::from_millis(50);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            // The server refused the input: the input was wrong.
            ClientError::Api { status, .. } if (400..500).contains(&status) && status != 429 => {
                Failure::input(e)
            }
            other => Failure::work(other),
        }
    }
}

/// The server's committed log, replayed here as it grows.
pub(crate) struct Follower<'c> {
    client: &'c Client,
    kernel: Kernel,
}

impl<'c> Follower<'c> {
    /// Starts from the server's committed state.
    pub(crate) async fn new(client: &'c Client) -> Result<Follower<'c>, Failure> {
        let encoded: EncodedState = client.get("/v1/log/state").await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&encoded.snapshot)
            .map_err(|e| Failure::work(format!("the server's state is not base64: {e}")))?;
        let (head, state) = toka_host::decode_snapshot(&bytes)
            .map_err(|e| Failure::work(format!("the server's state does not decode: {e}")))?;
        Ok(Follower {
            client,
            kernel: Kernel::from_snapshot(state, head, encoded.limits, Registry::new())
                .in_cell(encoded.cell.map(Into::into)),
        })
    }

    /// The state after the records replayed so far.
    pub(crate) fn state(&self) -> &WorldState {
        self.kernel.state()
    }

    /// Replays every record committed since, calling `f` with each.
    pub(crate) async fn catch_up(&mut self, mut f: impl FnMut(&Applied)) -> Result<(), Failure> {
        loop {
            let from = self.kernel.head().seq + 1;
            let page: RecordPage = self
                .client
                .get(&format!("/v1/log/records?from={from}&limit=1000"))
                .await?;
            for record in &page.records {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&record.bytes)
                    .map_err(|e| {
                        Failure::work(format!("record {}: not base64: {e}", record.seq))
                    })?;
                let applied = self
                    .kernel
                    .replay(&bytes)
                    .map_err(|e| Failure::work(format!("the log does not verify: {e}")))?;
                f(&applied);
            }
            if page.records.is_empty() || self.kernel.head().seq >= page.head.seq {
                return Ok(());
            }
        }
    }
}

/// What `toka run` asks the server for.
pub(crate) struct RunRequest<'a> {
    pub(crate) name: &'a str,
    pub(crate) bytes: Vec<u8>,
    /// Other components to install first: (spec, (name, bytes)).
    pub(crate) extra: Vec<(String, (String, Vec<u8>))>,
    /// A token (base64), or `rights` and `budgets`.
    pub(crate) grant: Option<String>,
    pub(crate) rights: Vec<String>,
    pub(crate) budgets: Vec<String>,
    pub(crate) tasks: &'a [String],
    pub(crate) bounds: Bounds,
}

/// `toka run NAME` of an installed package through the server: spawn (or
/// reuse) its agent with its install token, then as [`run`].
pub(crate) async fn run_package(
    client: &Client,
    package: &str,
    name: &str,
    rights: Vec<String>,
    budgets: Vec<String>,
    tasks: &[String],
    bounds: Bounds,
) -> CliResult {
    let started = Instant::now();
    let follower = Follower::new(client).await?;
    let component = follower
        .state()
        .package(package)
        .map(|p| p.component)
        .ok_or_else(|| Failure::input(toka_host::PackageError::NotInstalled(package.to_owned())))?;
    let reuse = rights.is_empty() && budgets.is_empty();
    let existing = if reuse {
        crate::run::find_root_agent(follower.state(), name, component)?
    } else {
        None
    };
    let agent = match existing {
        Some(agent) => agent,
        None => {
            let spawned: AgentView = client
                .post(
                    "/v1/agents",
                    &SpawnRequest {
                        component: String::new(),
                        package: Some(package.to_owned()),
                        name: name.to_owned(),
                        rights,
                        budgets,
                        token: None,
                    },
                )
                .await?;
            parse_id(&spawned.id)?
        }
    };
    work(client, follower, agent, name, tasks, bounds, started).await
}

/// `toka run` through the server: install, spawn (or reuse), schedule, and
/// print what happens until the host is idle or a bound stops the run (the
/// server keeps running what is left).
pub(crate) async fn run(client: &Client, request: RunRequest<'_>) -> CliResult {
    let started = Instant::now();
    let installed: ComponentView = install(client, request.name, request.bytes).await?;
    for (spec, (name, bytes)) in request.extra {
        install(client, &name, bytes).await.map_err(|e| Failure {
            message: format!("{spec}: {}", e.message),
            ..e
        })?;
    }
    let digest: toka_kernel::Digest = installed.digest.parse().map_err(|e| {
        Failure::work(format!(
            "the server named a digest that does not parse: {e}"
        ))
    })?;
    let follower = Follower::new(client).await?;
    let explicit =
        request.grant.is_some() || !request.rights.is_empty() || !request.budgets.is_empty();
    let existing = if explicit {
        None
    } else {
        crate::run::find_root_agent(follower.state(), request.name, digest)?
    };
    let agent = match existing {
        Some(agent) => agent,
        None => {
            let rights = if request.grant.is_none() && request.rights.is_empty() {
                toka_host::Right::defaults()
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            } else {
                request.rights
            };
            let spawned: AgentView = client
                .post(
                    "/v1/agents",
                    &SpawnRequest {
                        component: installed.digest.clone(),
                        package: None,
                        name: request.name.to_owned(),
                        rights: if request.grant.is_some() {
                            Vec::new()
                        } else {
                            rights
                        },
                        budgets: request.budgets,
                        token: request.grant,
                    },
                )
                .await?;
            parse_id(&spawned.id)?
        }
    };
    work(
        client,
        follower,
        agent,
        request.name,
        request.tasks,
        request.bounds,
        started,
    )
    .await
}

/// Schedules `tasks` for `agent` and prints what happens until the host is
/// idle or a bound stops the run.
async fn work(
    client: &Client,
    mut follower: Follower<'_>,
    agent: toka_kernel::AgentId,
    name: &str,
    tasks: &[String],
    bounds: Bounds,
    started: Instant,
) -> CliResult {
    let mut report = Report::new(Names::from_state(follower.state()));
    for text in tasks {
        let task: TaskView = client
            .post(
                &format!("/v1/agents/{agent}/tasks"),
                &ScheduleRequest {
                    description: text.clone(),
                },
            )
            .await?;
        report.pending.insert(parse_id(&task.id)?, text.clone());
    }
    let ending = follow_until(
        &mut follower,
        bounds,
        started,
        |events| {
            report.events(events);
        },
        |_| false,
    )
    .await?;
    Ok(report.finish(ending, name, agent, tasks.is_empty()))
}

async fn install(client: &Client, name: &str, bytes: Vec<u8>) -> Result<ComponentView, Failure> {
    let name = percent(name);
    Ok(client
        .post_bytes(&format!("/v1/components?name={name}"), bytes)
        .await?)
}

/// Follows the log, calling `on_events` with each record's events, until
/// no task is left to run (or `done` says so), or a bound stops it.
async fn follow_until(
    follower: &mut Follower<'_>,
    bounds: Bounds,
    started: Instant,
    mut on_events: impl FnMut(&[Event]),
    done: impl Fn(&WorldState) -> bool,
) -> Result<Ending, Failure> {
    let mut tasks_started = 0u64;
    loop {
        follower
            .catch_up(|applied| {
                tasks_started += applied
                    .events
                    .iter()
                    .filter(|e| matches!(e, Event::TaskStarted { .. }))
                    .count() as u64;
                on_events(&applied.events);
            })
            .await?;
        let state = follower.state();
        if bounds.max_tasks > 0 && tasks_started >= bounds.max_tasks {
            return Ok(Ending::MaxTasks(tasks_started));
        }
        if done(state) || idle(state) {
            return Ok(Ending::Idle {
                waiting: waiting(state),
            });
        }
        if let Some(timeout) = bounds.timeout
            && started.elapsed() >= timeout
        {
            return Ok(Ending::Timeout(timeout));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// No task runs, and only quarantined agents have tasks queued.
fn idle(state: &WorldState) -> bool {
    state.agents().all(|(_, a)| {
        a.running.is_none()
            && (a.queue.is_empty()
                || matches!(a.status, toka_kernel::AgentStatus::Quarantined { .. }))
    })
}

/// Tasks queued for quarantined agents.
fn waiting(state: &WorldState) -> usize {
    state
        .agents()
        .filter(|(_, a)| matches!(a.status, toka_kernel::AgentStatus::Quarantined { .. }))
        .map(|(_, a)| a.queue.len())
        .sum()
}

/// `toka token revoke` through the server.
pub(crate) async fn revoke(client: &Client, id: &str, force: bool) -> CliResult {
    let _: Revoked = client
        .post(
            "/v1/tokens/revoke",
            &RevokeRequest {
                revocation_id: Some(id.to_owned()),
                token: None,
                force,
            },
        )
        .await?;
    out!("revoked {id}");
    Ok(ExitCode::SUCCESS)
}

/// `toka snapshot` through the server.
pub(crate) async fn snapshot(client: &Client) -> CliResult {
    let taken: SnapshotTaken = client.post("/v1/snapshot", &serde_json::json!({})).await?;
    out!("snapshot written at record {}", taken.seq);
    Ok(ExitCode::SUCCESS)
}

/// `toka agent resume` through the server: resumes, then reports the
/// agent's queued tasks as they run, as the local command does.
pub(crate) async fn resume(client: &Client, which: &str) -> CliResult {
    let started = Instant::now();
    let mut follower = Follower::new(client).await?;
    let agent = crate::agent::find(follower.state(), which)?;
    let _: AgentView = client
        .post(
            &format!("/v1/agents/{agent}/resume"),
            &serde_json::json!({}),
        )
        .await?;
    follower.catch_up(|_| {}).await?;
    let queued = follower.state().agent(agent).map_or(0, |a| a.queue.len());
    out!("resumed agent {agent}; {queued} queued task(s) to run");
    let mut tally = crate::agent::Tally::new(agent);
    let agent_done = |s: &WorldState| {
        s.agent(agent).is_none_or(|a| {
            (a.queue.is_empty() && a.running.is_none())
                || matches!(a.status, toka_kernel::AgentStatus::Quarantined { .. })
        })
    };
    follow_until(
        &mut follower,
        Bounds::NONE,
        started,
        |events| tally.events(events),
        agent_done,
    )
    .await?;
    Ok(tally.finish())
}

fn parse_id<T: std::str::FromStr>(text: &str) -> Result<T, Failure>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| {
        Failure::work(format!(
            "the server named an id that does not parse: {text}: {e}"
        ))
    })
}

/// `text` as a URL query value.
pub(crate) fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `toka trust add` through the server.
pub(crate) async fn trust(
    client: &Client,
    name: &str,
    key: &toka_host::PublisherKey,
) -> Result<(), Failure> {
    let request = TrustRequest {
        name: name.to_owned(),
        key: toka_kernel::to_hex(&key.to_bytes()),
    };
    let _: PublisherView = client.post("/v1/publishers", &request).await?;
    Ok(())
}

/// `toka trust remove` through the server: the packages removed with it.
pub(crate) async fn distrust(client: &Client, name: &str) -> Result<Vec<String>, Failure> {
    let path = format!("/v1/publishers/{}", percent(name));
    let removed: Distrusted = client.delete(&path).await?;
    Ok(removed.packages)
}

/// The server's review of a package (`toka install`'s first step).
pub(crate) async fn review(client: &Client, bytes: &[u8]) -> Result<ReviewView, Failure> {
    Ok(client
        .post_bytes("/v1/packages/review", bytes.to_vec())
        .await?)
}

/// `toka install` through the server, with the approval given.
pub(crate) async fn install_package(
    client: &Client,
    bytes: Vec<u8>,
    approval: &toka_host::Approval,
) -> Result<InstalledView, Failure> {
    let query = match approval {
        toka_host::Approval::All => "?yes=true".to_owned(),
        toka_host::Approval::Held => String::new(),
        toka_host::Approval::Rights(rights) => {
            let pairs: Vec<String> = rights
                .iter()
                .map(|r| format!("approve={}", percent(&r.to_string())))
                .collect();
            format!("?{}", pairs.join("&"))
        }
    };
    Ok(client
        .post_bytes(&format!("/v1/packages{query}"), bytes)
        .await?)
}

/// `toka uninstall` through the server.
/// `POST /v1/agents/forget`.
pub(crate) async fn forget(client: &Client) -> Result<ForgottenView, Failure> {
    Ok(client
        .post("/v1/agents/forget", &serde_json::json!({}))
        .await?)
}

/// `DELETE /v1/components/{which}`: the component as it was.
pub(crate) async fn remove_component(
    client: &Client,
    which: &str,
) -> Result<ComponentView, Failure> {
    Ok(client
        .delete(&format!("/v1/components/{}", percent(which)))
        .await?)
}

pub(crate) async fn uninstall(client: &Client, name: &str) -> Result<(), Failure> {
    let path = format!("/v1/packages/{}", percent(name));
    let _: PackageView = client.delete(&path).await?;
    Ok(())
}

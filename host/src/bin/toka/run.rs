//! `toka run`: install an agent, give it tasks, run until idle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use toka_host::{Budget, Grant, Right};
use toka_kernel::{AgentStatus, Digest, EntityId, Event, TaskId};

use crate::output::out;
use crate::render::{Names, one_line};
use crate::{CliResult, Failure, Place, drive};

/// Arguments of `toka run`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A `.wasm` component, or the name of a bundled example (hello, planner,
    /// worker, counter).
    agent: String,
    /// A task for the agent (repeatable; run in order).
    #[arg(long = "task", value_name = "TEXT")]
    tasks: Vec<String>,
    /// The agent's name. Default: the file name without `.wasm`. A running
    /// root agent of the same name and component is reused, so its state
    /// carries over between runs.
    #[arg(long)]
    name: Option<String>,
    /// Another component to install first, e.g. one the agent spawns
    /// (repeatable; a path or a bundled name). `planner` brings `worker`.
    #[arg(long = "with", value_name = "COMPONENT")]
    with: Vec<String>,
    /// The agent's capability token: a file with a token rooted in this data
    /// dir's key (base64, as `toka token issue` or `biscuit generate` print it).
    #[arg(long, value_name = "FILE", conflicts_with = "grants")]
    token: Option<PathBuf>,
    /// A right to grant the agent (repeatable), e.g. `--grant observe --grant
    /// "schedule self"`. Without --token or --grant: observe, state, schedule self.
    #[arg(long = "grant", value_name = "RIGHT", id = "grants")]
    grants: Vec<String>,
    /// A budget for the agent's token (repeatable): `memory=SIZE`, `fuel=N`,
    /// `deadline=DURATION`, `observations=SIZE`. With --token, attenuate the
    /// token instead (`toka token attenuate --budget`).
    #[arg(long = "budget", value_name = "NAME=VALUE", conflicts_with = "token")]
    budgets: Vec<String>,
}

pub(crate) async fn main(place: &Place, args: Args) -> CliResult {
    let (default_name, bytes) = load(&args.agent)?;
    let mut extra = Vec::new();
    let mut specs: Vec<&str> = args.with.iter().map(String::as_str).collect();
    specs.extend(companion(&args.agent));
    for spec in specs {
        extra.push(load(spec)?);
    }
    let name = args.name.unwrap_or(default_name);
    let grant = grant(args.token.as_deref(), &args.grants, &args.budgets)?;

    let opened = drive::open(place).await?;
    let host = &opened.host;
    let installed = async {
        for (extra_name, extra_bytes) in extra {
            host.install(&extra_name, extra_bytes).await?;
        }
        host.install(&name, bytes).await
    }
    .await;
    let digest = match installed {
        Ok(digest) => digest,
        Err(e) => {
            drive::discard(opened, place).await;
            return Err(Failure::input(format!("{}: {e}", args.agent)));
        }
    };

    // Reuse the running agent (and its token) unless told which token to use.
    let existing = if grant.is_none() {
        match find_root_agent(host, &name, digest) {
            Ok(found) => found,
            Err(e) => {
                opened.host.shutdown().await?;
                return Err(e);
            }
        }
    } else {
        None
    };
    let agent = match existing {
        Some(agent) => agent,
        None => {
            let grant = grant.unwrap_or_else(|| Grant::Rights(Right::defaults()));
            match host.spawn(digest, &name, grant).await {
                Ok(agent) => agent,
                Err(e) => {
                    drive::discard(opened, place).await;
                    return Err(e.into());
                }
            }
        }
    };
    let mut rx = host.subscribe();
    let mut pending: BTreeMap<TaskId, String> = BTreeMap::new();
    for text in &args.tasks {
        pending.insert(host.schedule(agent, text).await?, text.clone());
    }

    let mut names = host.state(Names::from_state);
    let mut failed = 0;
    drive::until_idle(host, &mut rx, |batch| {
        for record in &batch.records {
            for event in &record.events {
                names.learn(event);
                match event {
                    Event::ObservationEmitted { agent, data, .. } => {
                        out!("{}: {}", names.who(*agent), one_line(data, usize::MAX));
                    }
                    Event::TaskFailed { task, reason, .. } if pending.contains_key(task) => {
                        failed += 1;
                        eprintln!(
                            "task {} ({:?}) failed: {reason}",
                            task.short(),
                            pending[task]
                        );
                    }
                    Event::AgentQuarantined { agent: a, reason } if *a == agent => {
                        eprintln!(
                            "agent {name} ({agent}) is quarantined: {reason}; its queued tasks wait until `toka agent resume {agent}`"
                        );
                    }
                    _ => {}
                }
            }
        }
    })
    .await?;
    opened.host.shutdown().await?;
    if args.tasks.is_empty() {
        eprintln!("agent {name} ({agent}) is ready; give it work with --task");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The token the agent gets, from --token or --grant and --budget (`None`:
/// none given).
fn grant(
    token: Option<&Path>,
    grants: &[String],
    budgets: &[String],
) -> Result<Option<Grant>, Failure> {
    if let Some(path) = token {
        let bytes =
            std::fs::read(path).map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
        return Ok(Some(Grant::Token(bytes)));
    }
    if grants.is_empty() && budgets.is_empty() {
        return Ok(None);
    }
    let mut rights = grants
        .iter()
        .map(|g| g.parse::<Right>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::input)?;
    if rights.is_empty() {
        rights = Right::defaults();
    }
    let budgets = budgets
        .iter()
        .map(|b| b.parse::<Budget>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::input)?;
    Ok(Some(Grant::Budgeted { rights, budgets }))
}

/// Reads a component from a path, or takes a bundled one by name.
fn load(spec: &str) -> Result<(String, Vec<u8>), Failure> {
    let path = Path::new(spec);
    if path.exists() {
        let bytes = std::fs::read(path).map_err(|e| Failure::input(format!("{spec}: {e}")))?;
        let name = path
            .file_stem()
            .map_or_else(|| spec.to_owned(), |s| s.to_string_lossy().into_owned());
        return Ok((name, bytes));
    }
    if let Some(bytes) = toka_agents::bundled(spec) {
        return Ok((spec.to_owned(), bytes.to_vec()));
    }
    let bundled: Vec<&str> = toka_agents::BUNDLED.iter().map(|(n, _)| *n).collect();
    if spec.contains(['/', '\\']) || spec.ends_with(".wasm") {
        return Err(Failure::input(format!("{spec}: no such file")));
    }
    Err(Failure::input(format!(
        "{spec}: no such file, and no bundled agent of that name (bundled: {})",
        bundled.join(", ")
    )))
}

/// The bundled component a bundled agent needs besides itself.
fn companion<'a>(agent: &str) -> Option<&'a str> {
    (agent == "planner").then_some("worker")
}

/// A live agent the operator started with this name and component; an
/// error when it is quarantined (it would not run the tasks).
fn find_root_agent(
    host: &toka_host::Host,
    name: &str,
    component: Digest,
) -> Result<Option<EntityId>, Failure> {
    let found = host.state(|s| {
        s.agents()
            .find(|(_, a)| {
                a.parent == EntityId::SYSTEM
                    && !a.is_terminated()
                    && a.name == name
                    && a.component == component
            })
            .map(|(id, a)| (id, a.status.clone()))
    });
    match found {
        Some((id, AgentStatus::Quarantined { reason })) => Err(Failure::work(format!(
            "agent {name} ({id}) is quarantined ({reason}); `toka agent resume {id}` lets it run again"
        ))),
        other => Ok(other.map(|(id, _)| id)),
    }
}

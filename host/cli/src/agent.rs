//! `toka agent`: operator actions on agents.

use std::process::ExitCode;

use toka_host::Host;
use toka_kernel::{AgentId, AgentStatus, EntityId, Event};

use crate::output::out;
use crate::{CliResult, Failure, Place, drive};

/// `toka agent` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Let a quarantined agent run tasks again, and run the tasks queued for
    /// it meanwhile.
    Resume {
        /// The agent: its id (32 hex digits, or a unique prefix of at least
        /// 8), or its name if no other live agent has it.
        agent: String,
    },
}

pub(crate) async fn main(place: &Place, command: Command) -> CliResult {
    match command {
        Command::Resume { agent } => resume(place, &agent).await,
    }
}

async fn resume(place: &Place, which: &str) -> CliResult {
    if !place.dir().exists() {
        return Err(Failure::input(toka_host::DataDirError::Missing(
            place.data.clone(),
        )));
    }
    let opened = drive::open(place).await?;
    let host = &opened.host;
    let agent = match find(host, which).await {
        Ok(agent) => agent,
        Err(e) => {
            opened.host.shutdown().await?;
            return Err(e);
        }
    };
    let mut rx = opened.start();
    if let Err(e) = host.resume_agent(agent).await {
        opened.host.shutdown().await?;
        return Err(Failure::input(e));
    }
    let queued = host
        .state(|s| s.agent(agent).map_or(0, |a| a.queue.len()))
        .await;
    out!("resumed agent {agent}; {queued} queued task(s) to run");
    let (mut completed, mut failed) = (0, 0);
    drive::until_idle(host, &mut rx, drive::Bounds::NONE, |batch| {
        for event in batch.records.iter().flat_map(|r| &r.events) {
            match event {
                Event::TaskCompleted { agent: a, .. } if *a == agent => completed += 1,
                Event::TaskFailed {
                    agent: a,
                    task,
                    reason,
                } if *a == agent => {
                    failed += 1;
                    eprintln!("task {} failed: {reason}", task.short());
                }
                Event::AgentQuarantined { agent: a, reason } if *a == agent => {
                    eprintln!("agent {} is quarantined again: {reason}", a.short());
                }
                _ => {}
            }
        }
    })
    .await?;
    opened.host.shutdown().await?;
    out!("{completed} completed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The agent `which` names: an id, a unique id prefix, or a unique name
/// among agents that are not terminated.
async fn find(host: &Host, which: &str) -> Result<AgentId, Failure> {
    if let Ok(id) = which.parse::<EntityId>() {
        return Ok(id);
    }
    let which_lower = which.to_ascii_lowercase();
    let matches: Vec<(AgentId, String, String)> = host
        .state(|s| {
            s.agents()
                .filter(|(_, a)| !matches!(a.status, AgentStatus::Terminated { .. }))
                .filter(|(id, a)| {
                    a.name == which
                        || (which.len() >= 8
                            && which.bytes().all(|b| b.is_ascii_hexdigit())
                            && id.to_string().starts_with(&which_lower))
                })
                .map(|(id, a)| (id, a.name.clone(), crate::render::status(&a.status)))
                .collect()
        })
        .await;
    match matches.as_slice() {
        [(id, _, _)] => Ok(*id),
        [] => Err(Failure::input(format!(
            "no live agent is named or has an id starting with `{which}` (see `toka state`)"
        ))),
        many => Err(Failure::input(format!(
            "`{which}` names {} agents; give the id: {}",
            many.len(),
            many.iter()
                .map(|(id, name, status)| format!("{id} ({name}, {status})"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

//! `toka agent`: operator actions on agents.

use std::process::ExitCode;

use toka_kernel::{AgentId, AgentStatus, EntityId, Event, WorldState};

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
    /// Forget every terminated agent none of whose descendants is alive
    /// (nor a task it scheduled unfinished):
    /// their records and state leave the state (and the state budget);
    /// their history stays in the log (`toka events`, archives).
    Forget,
}

pub(crate) async fn main(place: &Place, command: Command) -> CliResult {
    match command {
        Command::Resume { agent } => resume(place, &agent).await,
        Command::Forget => forget(place).await,
    }
}

async fn forget(place: &Place) -> CliResult {
    let (agents, state_bytes) = if let Some(client) = drive::server(place).await? {
        let forgotten = crate::remote::forget(&client).await?;
        (forgotten.agents, forgotten.state_bytes)
    } else {
        if !place.dir().exists() {
            return Err(Failure::input(toka_host::DataDirError::Missing(
                place.data.clone(),
            )));
        }
        let opened = drive::open(place).await?;
        let result = opened.host.as_host().forget_terminated().await;
        let forgotten =
            crate::install::finish(opened, place, result.map_err(Failure::from)).await?;
        (forgotten.agents, forgotten.state_bytes)
    };
    out!(
        "forgot {agents} terminated agent(s) and the {} of state they held",
        toka_host::approx_size(state_bytes)
    );
    Ok(ExitCode::SUCCESS)
}

async fn resume(place: &Place, which: &str) -> CliResult {
    if let Some(client) = drive::server(place).await? {
        return crate::remote::resume(&client, which).await;
    }
    if !place.dir().exists() {
        return Err(Failure::input(toka_host::DataDirError::Missing(
            place.data.clone(),
        )));
    }
    let opened = drive::open(place).await?;
    let host = &opened.host;
    let agent = match host.state(|s| find(s, which)).await {
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
    let mut tally = Tally::new(agent);
    drive::until_idle(host, &mut rx, drive::Bounds::NONE, |batch| {
        for record in &batch.records {
            tally.events(&record.events);
        }
    })
    .await?;
    opened.host.shutdown().await?;
    Ok(tally.finish())
}

/// What a resumed agent's tasks did, as they are reported.
pub(crate) struct Tally {
    agent: AgentId,
    completed: u64,
    failed: u64,
}

impl Tally {
    pub(crate) fn new(agent: AgentId) -> Self {
        Self {
            agent,
            completed: 0,
            failed: 0,
        }
    }

    /// Counts (and reports failures among) one record's events.
    pub(crate) fn events(&mut self, events: &[Event]) {
        let agent = self.agent;
        for event in events {
            match event {
                Event::TaskCompleted { agent: a, .. } if *a == agent => self.completed += 1,
                Event::TaskFailed {
                    agent: a,
                    task,
                    reason,
                } if *a == agent => {
                    self.failed += 1;
                    eprintln!("task {} failed: {reason}", task.short());
                }
                Event::AgentQuarantined { agent: a, reason } if *a == agent => {
                    eprintln!("agent {} is quarantined again: {reason}", a.short());
                }
                _ => {}
            }
        }
    }

    /// The last line and the exit code.
    pub(crate) fn finish(self) -> ExitCode {
        out!("{} completed, {} failed", self.completed, self.failed);
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// The agent `which` names: an id, a unique id prefix, or a unique name
/// among agents that are not terminated.
pub(crate) fn find(state: &WorldState, which: &str) -> Result<AgentId, Failure> {
    if let Ok(id) = which.parse::<EntityId>() {
        return Ok(id);
    }
    let which_lower = which.to_ascii_lowercase();
    let matches: Vec<(AgentId, String, String)> = state
        .agents()
        .filter(|(_, a)| !matches!(a.status, AgentStatus::Terminated { .. }))
        .filter(|(id, a)| {
            a.name == which
                || (which.len() >= 8
                    && which.bytes().all(|b| b.is_ascii_hexdigit())
                    && id.to_string().starts_with(&which_lower))
        })
        .map(|(id, a)| (id, a.name.clone(), crate::render::status(&a.status)))
        .collect();
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

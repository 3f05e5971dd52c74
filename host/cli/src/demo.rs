//! `toka demo`: the bundled planner/worker scenario.

use std::process::ExitCode;

use toka_host::{Grant, Right};
use toka_kernel::{EntityId, Event};

use crate::output::out;
use crate::render::{self, Names};
use crate::{CliResult, Failure, Place, drive};

/// Arguments of `toka demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How many worker sub-agents the planner uses.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=16))]
    workers: u8,
}

/// The job the planner splits across its workers.
const ITEMS: &[&str] = &[
    "survey WebAssembly component sandboxes",
    "summarize biscuit capability tokens",
    "compare durable execution logs",
    "list attack surfaces of plugin hosts",
    "draft a threat model for third-party agents",
    "collect redb durability guarantees",
    "outline a benchmark plan",
    "write the executive summary",
];

/// What the operator grants the planner: it may spawn workers, schedule
/// onto its own children, observe, and keep state. It delegates only
/// `observe` to each worker.
const PLANNER_RIGHTS: &[&str] = &["observe", "state", "spawn worker", "schedule children"];

pub(crate) async fn main(place: &Place, args: Args) -> CliResult {
    let workers = usize::from(args.workers);
    if let Some(server) = drive::server(place).await? {
        return Err(Failure::input(format!(
            "a server at {} holds {}: run the demo on another --data",
            server.base(),
            place.data.display()
        )));
    }
    let opened = drive::open(place).await?;
    let host = &opened.host;
    out!(
        "toka demo: a planner splits a job across {workers} worker agents; log: {}",
        place.dir().db_path().display()
    );
    let mut rx = opened.start();
    let mut names = host.state(Names::from_state).await;

    host.install("worker", bundled("worker")?.to_vec()).await?;
    let planner_component = host
        .install("planner", bundled("planner")?.to_vec())
        .await?;
    let planner = match host
        .state(|s| {
            s.agents()
                .find(|(_, a)| {
                    a.parent == EntityId::SYSTEM
                        && a.is_active()
                        && a.name == "planner"
                        && a.component == planner_component
                })
                .map(|(id, _)| id)
        })
        .await
    {
        Some(id) => id,
        None => {
            let rights = PLANNER_RIGHTS
                .iter()
                .map(|r| r.parse::<Right>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(Failure::work)?;
            host.spawn(planner_component, "planner", Grant::Rights(rights))
                .await?
        }
    };
    let items = &ITEMS[..(workers * 2).min(ITEMS.len())];
    let job = format!("workers={workers}: {}", items.join("; "));
    host.schedule(planner, &job).await?;

    let (mut completed, mut failed, mut first) = (0, 0, None);
    drive::until_idle(host, &mut rx, drive::Bounds::NONE, |batch| {
        for record in &batch.records {
            first.get_or_insert(record.seq);
            for event in &record.events {
                names.learn(event);
                match event {
                    Event::TaskCompleted { .. } => completed += 1,
                    Event::TaskFailed { .. } => failed += 1,
                    _ => {}
                }
                out!(
                    "{}",
                    render::human(record.seq, record.origin, event, &names)
                );
            }
        }
    })
    .await?;
    let head = host.head();
    opened.host.shutdown().await?;
    out!(
        "demo finished: {completed} tasks completed, {failed} failed; the log now has {} records (this run wrote #{}..#{}).",
        head.seq,
        first.unwrap_or(head.seq),
        head.seq
    );
    out!("check it with `toka verify`; read it with `toka events` or `toka state`.");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn bundled(name: &str) -> Result<&'static [u8], Failure> {
    toka_agents::bundled(name)
        .ok_or_else(|| Failure::work(format!("the bundled `{name}` agent is missing")))
}

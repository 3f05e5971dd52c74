//! `toka state`: the agents, their tasks and state.

use std::process::ExitCode;

use serde_json::json;
use toka_kernel::{EntityId, Kernel};

use crate::output::out;
use crate::render::{self, Names};

use crate::{CliResult, Failure, Place};

/// Arguments of `toka state`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `toka replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The last record to apply.
    #[arg(long, value_name = "SEQ")]
    to: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn main(place: &Place, args: Args) -> CliResult {
    let store = crate::cluster::read_store(place)?;
    let store = &*store;
    // From the newest snapshot and the tail, as a host recovers.
    let (kernel, _) = toka_host::recover(store)?;
    print(&kernel, args.json);
    Ok(ExitCode::SUCCESS)
}

/// `toka replay --to SEQ`: the state after record SEQ, from the log alone.
pub(crate) fn replay(place: &Place, args: ReplayArgs) -> CliResult {
    let store = crate::cluster::read_store(place)?;
    let store = &*store;
    let head = store.head().map_err(Failure::input)?;
    if args.to > head.seq {
        return Err(Failure::input(format!(
            "the log ends at record {}; there is no record {}",
            head.seq, args.to
        )));
    }
    // From the anchor snapshot when the log's beginning is archived.
    let (mut kernel, anchor) = toka_host::origin(store)?;
    if anchor.is_some() && args.to < kernel.head().seq {
        return Err(Failure::input(toka_host::LogError::Archived {
            seq: args.to,
            first: kernel.head().seq + 1,
        }));
    }
    for entry in store
        .records(kernel.head().seq + 1)
        .map_err(Failure::input)?
    {
        let (seq, bytes) = entry.map_err(Failure::input)?;
        if seq > args.to {
            break;
        }
        kernel
            .replay(&bytes)
            .map_err(|e| Failure::work(format!("the log does not verify: {e}")))?;
    }
    print(&kernel, args.json);
    Ok(ExitCode::SUCCESS)
}

/// `toka snapshot`: write a snapshot at the head.
pub(crate) async fn snapshot(place: &Place) -> CliResult {
    if let Some(client) = crate::drive::server(place).await? {
        return crate::remote::snapshot(&client).await;
    }
    if !place.dir().exists() {
        return Err(crate::Failure::input(toka_host::DataDirError::Missing(
            place.data.clone(),
        )));
    }
    let opened = crate::drive::open(place).await?;
    let taken = opened.host.snapshot().await;
    opened.host.shutdown().await?;
    out!("snapshot written at record {}", taken?);
    Ok(ExitCode::SUCCESS)
}

fn print(kernel: &Kernel, json: bool) {
    if json {
        out!("{}", as_json(kernel));
    } else {
        print_table(kernel);
    }
}

fn as_json(kernel: &Kernel) -> serde_json::Value {
    let state = kernel.state();
    let agents: Vec<_> = state
        .agents()
        .map(|(id, a)| {
            json!({
                "id": id.to_string(),
                "name": a.name,
                "parent": a.parent.to_string(),
                "component": a.component.to_string(),
                "token": a.token.to_string(),
                "status": render::status(&a.status),
                "queued": a.queue.len(),
                "running": a.running.map(|t| t.to_string()),
                "completed": a.completed,
                "failed": a.failed,
                "consecutive_faults": a.consecutive_faults,
                "state_keys": a.state.keys().collect::<Vec<_>>(),
                "state_bytes": a.state_bytes,
            })
        })
        .collect();
    let components: Vec<_> = state
        .components()
        .map(|c| json!({"digest": c.digest.to_string(), "name": c.name, "size": c.size}))
        .collect();
    json!({
        "head": {"seq": kernel.head().seq, "hash": kernel.head().hash.to_string()},
        "state_digest": state.digest().to_string(),
        "agents": agents,
        "components": components,
    })
}

fn print_table(kernel: &Kernel) {
    let state = kernel.state();
    let names = Names::from_state(state);
    out!("agents: {}", state.agents().len());
    for (id, a) in state.agents() {
        let parent = if a.parent == EntityId::SYSTEM {
            "operator".to_owned()
        } else {
            names.who(a.parent)
        };
        let running = a.running.map_or_else(|| "-".to_owned(), |t| t.short());
        let keys: Vec<String> = a.state.keys().map(|k| render::text(k)).collect();
        out!(
            "  {} {:<14} {:<10} parent {:<12} queued {:<3} running {:<8} completed {:<4} failed {:<4} state [{}]",
            id.short(),
            render::text(&a.name),
            render::text(&render::status(&a.status)),
            parent,
            a.queue.len(),
            running,
            a.completed,
            a.failed,
            keys.join(", ")
        );
    }
    out!("components: {}", state.components().len());
    for c in state.components() {
        out!(
            "  {} {:<14} {}",
            render::short(&c.digest),
            render::text(&c.name),
            render::size(c.size)
        );
    }
    out!(
        "log: {} records, head {}",
        kernel.head().seq,
        kernel.head().hash.short()
    );
}

//! `toka state`: the agents, their tasks and state.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;
use toka_kernel::{EntityId, Kernel};

use crate::output::out;
use crate::render::{self, Names};
use crate::{CliResult, Failure};

/// Arguments of `toka state`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn main(data: &Path, args: Args) -> CliResult {
    let store = toka_host::DataDir::new(data)
        .open_existing()
        .map_err(Failure::input)?;
    let kernel = toka_host::replay(&store, |_| {})?;
    if args.json {
        out!("{}", as_json(&kernel));
    } else {
        print_table(&kernel);
    }
    Ok(ExitCode::SUCCESS)
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
        let keys: Vec<&str> = a.state.keys().map(String::as_str).collect();
        out!(
            "  {} {:<14} {:<10} parent {:<12} queued {:<3} running {:<8} completed {:<4} failed {:<4} state [{}]",
            id.short(),
            a.name,
            render::status(&a.status),
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
            c.name,
            render::size(c.size)
        );
    }
    out!(
        "log: {} records, head {}",
        kernel.head().seq,
        kernel.head().hash.short()
    );
}

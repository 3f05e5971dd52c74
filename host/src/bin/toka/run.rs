//! `toka run`: install an agent, give it tasks, run until idle.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use toka_kernel::{Digest, EntityId, Event, TaskId};

use crate::render::{Names, one_line};
use crate::{CliResult, Failure, drive};

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
}

pub(crate) async fn main(data: &Path, args: Args) -> CliResult {
    let (default_name, bytes) = load(&args.agent)?;
    let mut extra = Vec::new();
    let mut specs: Vec<&str> = args.with.iter().map(String::as_str).collect();
    specs.extend(companion(&args.agent));
    for spec in specs {
        extra.push(load(spec)?);
    }
    let name = args.name.unwrap_or(default_name);

    let (host, created) = drive::open(data).await?;
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
            drive::discard(host, data, created).await;
            return Err(Failure::input(format!("{}: {e}", args.agent)));
        }
    };

    let agent = match find_root_agent(&host, &name, digest) {
        Some(agent) => agent,
        None => host.spawn(digest, &name).await?,
    };
    let mut rx = host.subscribe();
    let mut pending: BTreeMap<TaskId, String> = BTreeMap::new();
    for text in &args.tasks {
        pending.insert(host.schedule(agent, text).await?, text.clone());
    }

    let mut names = host.state(Names::from_state);
    let mut failed = 0;
    drive::until_idle(&host, &mut rx, |batch| {
        for record in &batch.records {
            for event in &record.events {
                names.learn(event);
                match event {
                    Event::ObservationEmitted { agent, data, .. } => {
                        println!("{}: {}", names.who(*agent), one_line(data, usize::MAX));
                    }
                    Event::TaskFailed { task, reason, .. } if pending.contains_key(task) => {
                        failed += 1;
                        eprintln!(
                            "task {} ({:?}) failed: {reason}",
                            task.short(),
                            pending[task]
                        );
                    }
                    _ => {}
                }
            }
        }
    })
    .await?;
    host.shutdown().await?;
    if args.tasks.is_empty() {
        eprintln!("agent {name} ({agent}) is ready; give it work with --task");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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

/// A running agent the operator started with this name and component.
fn find_root_agent(host: &toka_host::Host, name: &str, component: Digest) -> Option<EntityId> {
    host.state(|s| {
        s.agents()
            .find(|(_, a)| {
                a.parent == EntityId::SYSTEM
                    && a.is_active()
                    && a.name == name
                    && a.component == component
            })
            .map(|(id, _)| id)
    })
}

//! `toka demo`: the bundled planner/worker scenario.

use std::process::ExitCode;

use toka_host::{Grant, Right};
use toka_kernel::{EntityId, Event};

use crate::output::out;
use crate::render::{self, Names, text};
use crate::{CliResult, Failure, Place, drive};

/// Arguments of `toka demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How many worker sub-agents the planner uses.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=16))]
    workers: u8,
    /// Run the `llm-planner` against this OpenAI-compatible endpoint, as
    /// OpenAI clients take it (e.g. `http://127.0.0.1:8080/v1`), instead
    /// of the offline rule-based planner.
    #[arg(long, value_name = "BASE_URL")]
    llm: Option<String>,
    /// The model to ask (with --llm).
    #[arg(long, default_value = "gpt-4o-mini", requires = "llm")]
    model: String,
    /// The secret holding the endpoint's key (with --llm; `toka secret set
    /// NAME` stores it). An endpoint that needs no key works without one.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "OPENAI_API_KEY",
        requires = "llm"
    )]
    llm_secret: String,
    /// The goal the llm-planner plans (with --llm).
    #[arg(
        long,
        requires = "llm",
        default_value = "Write a short field guide to running untrusted AI agents safely"
    )]
    goal: String,
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
    let llm = match &args.llm {
        Some(base_url) => Some(Llm::of(base_url)?),
        None => None,
    };
    let opened = drive::open(place).await?;
    let host = &opened.host;
    let mut rx = opened.start();
    let mut names = host.state(Names::from_state).await;

    host.install("worker", bundled("worker")?.to_vec()).await?;
    let (name, component, rights, job) = if let Some(llm) = &llm {
        let mut rights: Vec<String> = LLM_PLANNER_RIGHTS.iter().map(|r| (*r).to_owned()).collect();
        rights.push(format!("http {}", llm.authority));
        let keyed = host
            .secrets()
            .list()
            .iter()
            .any(|s| s.name == args.llm_secret);
        if keyed {
            rights.push(format!("secret {} {}", args.llm_secret, llm.authority));
        }
        out!(
            "toka demo: llm-planner plans with {} at {} ({}); workers do the steps; log: {}",
            text(&args.model),
            text(&llm.base_url),
            if keyed {
                format!(
                    "key: secret {}, injected by the host",
                    text(&args.llm_secret)
                )
            } else {
                format!(
                    "no secret {} set: requests carry no key",
                    text(&args.llm_secret)
                )
            },
            place.dir().db_path().display()
        );
        let goal = serde_json::json!({
            "goal": args.goal,
            "base_url": llm.base_url,
            "model": args.model,
            "workers": workers,
        });
        let component = host
            .install("llm-planner", bundled("llm-planner")?.to_vec())
            .await?;
        // One planner per endpoint: its token names the endpoint's host.
        (
            format!("llm-planner {}", llm.authority),
            component,
            rights,
            goal.to_string(),
        )
    } else {
        out!(
            "toka demo: a planner splits a job across {workers} worker agents; log: {}",
            place.dir().db_path().display()
        );
        let component = host
            .install("planner", bundled("planner")?.to_vec())
            .await?;
        let items = &ITEMS[..(workers * 2).min(ITEMS.len())];
        let job = format!("workers={workers}: {}", items.join("; "));
        let rights = PLANNER_RIGHTS.iter().map(|r| (*r).to_owned()).collect();
        ("planner".to_owned(), component, rights, job)
    };
    let planner = match host
        .state(|s| {
            s.agents()
                .find(|(_, a)| {
                    a.parent == EntityId::SYSTEM
                        && a.is_active()
                        && a.name == name
                        && a.component == component
                })
                .map(|(id, _)| id)
        })
        .await
    {
        Some(id) => id,
        None => {
            let rights = rights
                .iter()
                .map(|r| r.parse::<Right>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(Failure::work)?;
            host.spawn(component, &name, Grant::Rights(rights)).await?
        }
    };
    host.schedule(planner, &job).await?;

    let (mut completed, mut failed, mut first, mut summary) = (0, 0, None, None);
    drive::until_idle(host, &mut rx, drive::Bounds::NONE, |batch| {
        for record in &batch.records {
            first.get_or_insert(record.seq);
            for event in &record.events {
                names.learn(event);
                match event {
                    Event::TaskCompleted { .. } => completed += 1,
                    Event::TaskFailed { .. } => failed += 1,
                    Event::ObservationEmitted {
                        agent,
                        topic: Some(topic),
                        data,
                    } if *agent == planner && topic == "summary" => {
                        summary = Some(String::from_utf8_lossy(data).into_owned());
                    }
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
    if let Some(summary) = summary {
        out!("summary: {}", text(&summary));
    }
    out!("check it with `toka verify`; read it with `toka events` or `toka state`.");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What the operator grants the llm-planner besides `http` for its
/// endpoint (and `secret` for the endpoint's key): it spawns workers,
/// schedules onto them, observes and keeps state. Its workers report back
/// by scheduling onto it; a right's target is relative to its holder, so
/// only `schedule *` covers the planner's id for a worker, and the planner
/// delegates each worker that id alone (with `observe`): never `http` or
/// the secret.
const LLM_PLANNER_RIGHTS: &[&str] = &["observe", "state", "spawn worker", "schedule *"];

/// An LLM endpoint: its base URL and the `HOST:PORT` rights name.
struct Llm {
    base_url: String,
    authority: String,
}

impl Llm {
    fn of(base_url: &str) -> Result<Llm, Failure> {
        let bad = |why: &str| {
            Failure::input(format!(
                "--llm {}: {why} (e.g. http://127.0.0.1:8080/v1)",
                text(base_url)
            ))
        };
        let uri: http::Uri = base_url.parse().map_err(|_| bad("not a URL"))?;
        let port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            _ => return Err(bad("not an http:// or https:// URL")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority.host().to_ascii_lowercase();
        Ok(Llm {
            base_url: base_url.trim_end_matches('/').to_owned(),
            authority: format!("{host}:{}", authority.port_u16().unwrap_or(port)),
        })
    }
}

fn bundled(name: &str) -> Result<&'static [u8], Failure> {
    toka_agents::bundled(name)
        .ok_or_else(|| Failure::work(format!("the bundled `{name}` agent is missing")))
}

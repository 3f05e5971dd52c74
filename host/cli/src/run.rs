//! `toka run`: install an agent, give it tasks, run until idle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use toka_host::{Budget, Grant, Right};
use toka_kernel::{AgentStatus, Digest, EntityId, Event, TaskId, WorldState};

use crate::output::out;
use crate::render::{Names, one_line, text};
use crate::{CliResult, Failure, Place, drive};

/// Arguments of `toka run`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// An installed package's name (it runs with its install token), a
    /// `.wasm` component (it runs on your own authority: --grant or
    /// --token), or the name of a bundled example (hello, planner, worker,
    /// counter).
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
    /// Stop after this many tasks have run (0: no limit); what is left runs
    /// on the next `toka run`.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_tasks: u64,
    /// Stop after this long (0: no limit); what is left runs on the next
    /// `toka run`.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    timeout: std::time::Duration,
}

/// A duration, or `0` (no unit needed) for no limit.
fn parse_timeout(text: &str) -> Result<std::time::Duration, toka_host::UnitError> {
    if text.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    toka_host::parse_duration(text)
}

pub(crate) async fn main(place: &Place, args: Args) -> CliResult {
    if !Path::new(&args.agent).exists()
        && let Some(package) = installed_package(place, &args.agent).await?
    {
        return run_package(place, args, &package).await;
    }
    // Everything that can be checked without the data dir is checked first.
    let (default_name, bytes) = load(&args.agent)?;
    if let Ok(package) = toka_host::Package::read(bytes.clone()) {
        eprintln!(
            "note: {} is package {} {}; `toka run` of a file runs it on your own authority (--grant or --token), not with its manifest's rights; `toka install` it to run it with the rights you approve",
            args.agent,
            text(&package.manifest().name),
            text(&package.manifest().version)
        );
    }
    let mut extra = Vec::new();
    let mut specs: Vec<&str> = args.with.iter().map(String::as_str).collect();
    specs.extend(companion(&args.agent));
    for spec in specs {
        extra.push((spec.to_owned(), load(spec)?));
    }
    let name = args.name.unwrap_or(default_name);
    toka_kernel::validate_name("agent", &name, &toka_kernel::Limits::default())
        .map_err(Failure::input)?;
    let grant = grant(args.token.as_deref(), &args.grants, &args.budgets)?;
    let bounds = drive::Bounds {
        max_tasks: args.max_tasks,
        timeout: (!args.timeout.is_zero()).then_some(args.timeout),
    };

    if let Some(client) = drive::server(place).await? {
        let request = crate::remote::RunRequest {
            name: &name,
            bytes,
            extra,
            grant: args.token.as_deref().map(read_token_text).transpose()?,
            rights: args.grants.clone(),
            budgets: args.budgets.clone(),
            tasks: &args.tasks,
            bounds,
        };
        return crate::remote::run(&client, request).await;
    }

    let opened = drive::open(place).await?;
    let host = &opened.host;
    // Then what needs the host — every component and the token — before
    // anything is recorded, so bad input leaves the log as it was.
    let checked = async {
        for (spec, (_, extra_bytes)) in &extra {
            host.validate(extra_bytes)
                .await
                .map_err(|e| Failure::input(format!("{spec}: {e}")))?;
        }
        host.validate(&bytes)
            .await
            .map_err(|e| Failure::input(format!("{}: {e}", args.agent)))?;
        if let Some(grant) = &grant {
            host.check_grant(grant).map_err(Failure::from)?;
        }
        Ok::<(), Failure>(())
    }
    .await;
    if let Err(e) = checked {
        drive::discard(opened, place).await;
        return Err(e);
    }
    for (_, (extra_name, extra_bytes)) in extra {
        host.install(&extra_name, extra_bytes).await?;
    }
    let digest = host.install(&name, bytes).await?;

    // Reuse the running agent (and its token) unless told which token to use.
    let existing = if grant.is_none() {
        match host.state(|s| find_root_agent(s, &name, digest)).await {
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
                    opened.host.shutdown().await?;
                    return Err(e.into());
                }
            }
        }
    };
    work(opened, agent, &name, &args.tasks, bounds).await
}

/// Schedules `tasks` for `agent` and prints what happens until the host is
/// idle or a bound stops the run.
async fn work(
    opened: drive::Opened,
    agent: EntityId,
    name: &str,
    tasks: &[String],
    bounds: drive::Bounds,
) -> CliResult {
    let host = &opened.host;
    let mut rx = opened.start();
    let mut report = Report::new(host.state(Names::from_state).await);
    for text in tasks {
        report
            .pending
            .insert(host.schedule(agent, text).await?, text.clone());
    }
    let ending = drive::until_idle(host, &mut rx, bounds, |batch| {
        for record in &batch.records {
            report.events(&record.events);
        }
    })
    .await?;
    opened.host.shutdown().await?;
    Ok(report.finish(ending, name, agent, tasks.is_empty()))
}

/// The installed package named `spec`, if the data dir has one (asked of
/// the server when one holds the data dir).
async fn installed_package(place: &Place, spec: &str) -> Result<Option<String>, Failure> {
    if spec.contains(['/', '\\']) || spec.ends_with(".wasm") {
        return Ok(None);
    }
    if let Some(client) = drive::server(place).await? {
        let packages: Vec<toka_server::views::PackageView> = client.get("/v1/packages").await?;
        return Ok(packages
            .iter()
            .any(|p| p.name == spec)
            .then(|| spec.to_owned()));
    }
    if !place.dir().exists() {
        return Ok(None);
    }
    let store = place.dir().open_read_only().map_err(Failure::input)?;
    let (kernel, _) = toka_host::recover(&store)?;
    Ok(kernel.state().package(spec).map(|p| p.name.clone()))
}

/// `toka run NAME` of an installed package: its agent runs the package's
/// component with its install token (attenuated to --grant/--budget when
/// given; a right it does not hold is refused by name).
async fn run_package(place: &Place, args: Args, package: &str) -> CliResult {
    if args.token.is_some() || !args.with.is_empty() {
        return Err(Failure::input(format!(
            "package `{package}` runs with its install token: --token and --with are for components you run on your own authority"
        )));
    }
    let name = args.name.unwrap_or_else(|| package.to_owned());
    toka_kernel::validate_name("agent", &name, &toka_kernel::Limits::default())
        .map_err(Failure::input)?;
    let rights = args
        .grants
        .iter()
        .map(|g| g.parse::<Right>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::input)?;
    let budgets = args
        .budgets
        .iter()
        .map(|b| b.parse::<Budget>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::input)?;
    let bounds = drive::Bounds {
        max_tasks: args.max_tasks,
        timeout: (!args.timeout.is_zero()).then_some(args.timeout),
    };
    if let Some(client) = drive::server(place).await? {
        return crate::remote::run_package(
            &client,
            package,
            &name,
            args.grants,
            args.budgets,
            &args.tasks,
            bounds,
        )
        .await;
    }
    let opened = drive::open(place).await?;
    let host = &opened.host;
    let reuse = rights.is_empty() && budgets.is_empty();
    let agent = async {
        let component = host
            .state(|s| s.package(package).map(|p| p.component))
            .await
            .ok_or_else(|| Failure::input(toka_host::PackageError::NotInstalled(package.into())))?;
        if reuse && let Some(agent) = host.state(|s| find_root_agent(s, &name, component)).await? {
            return Ok(agent);
        }
        let rights = (!rights.is_empty()).then_some(rights.as_slice());
        host.as_host()
            .spawn_package(package, &name, rights, &budgets)
            .await
            .map_err(Failure::from)
    }
    .await;
    match agent {
        Ok(agent) => work(opened, agent, &name, &args.tasks, bounds).await,
        Err(e) => {
            opened.host.shutdown().await?;
            Err(e)
        }
    }
}

/// What a run prints as its agents work, the same whether the host is
/// this process or a server: observations on stdout, failures and
/// quarantines on stderr.
pub(crate) struct Report {
    names: Names,
    /// The tasks this run scheduled, with their text.
    pub(crate) pending: BTreeMap<TaskId, String>,
    failed: u64,
}

impl Report {
    pub(crate) fn new(names: Names) -> Self {
        Self {
            names,
            pending: BTreeMap::new(),
            failed: 0,
        }
    }

    /// Prints what `events` (one committed record's) say.
    pub(crate) fn events(&mut self, events: &[Event]) {
        let names = &mut self.names;
        for event in events {
            names.learn(event);
            match event {
                Event::ObservationEmitted { agent, data, .. } => {
                    out!("{}: {}", names.who(*agent), one_line(data, usize::MAX));
                }
                // Every failure counts: this run's tasks, what they caused,
                // and tasks re-run after a crash.
                Event::TaskFailed {
                    task,
                    agent: a,
                    reason,
                } => {
                    self.failed += 1;
                    let what = self
                        .pending
                        .get(task)
                        .map_or_else(String::new, |text| format!(" ({text:?})"));
                    eprintln!(
                        "task {}{what} of {} failed: {}",
                        task.short(),
                        names.who(*a),
                        text(reason)
                    );
                }
                Event::AgentQuarantined { agent: a, reason } => {
                    eprintln!(
                        "agent {} ({a}) is quarantined: {}; its queued tasks wait until `toka agent resume {a}`",
                        names.who(*a),
                        text(reason)
                    );
                }
                _ => {}
            }
        }
    }

    /// The run's last words and exit code.
    pub(crate) fn finish(
        self,
        ending: drive::Ending,
        name: &str,
        agent: EntityId,
        no_tasks: bool,
    ) -> ExitCode {
        if let Some(line) = ending.explain() {
            eprintln!("{line}");
        }
        if no_tasks && !ending.cut_short() {
            eprintln!(
                "agent {} ({agent}) is ready; give it work with --task",
                text(name)
            );
        }
        if self.failed == 0 && !ending.cut_short() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// A token file's text (base64), as the API takes it; a raw token is
/// encoded.
fn read_token_text(path: &Path) -> Result<String, Failure> {
    let bytes =
        std::fs::read(path).map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
    Ok(match std::str::from_utf8(&bytes) {
        Ok(text) if !text.trim().is_empty() && text.trim().is_ascii() => text.trim().to_owned(),
        _ => base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, &bytes),
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
pub(crate) fn find_root_agent(
    state: &WorldState,
    name: &str,
    component: Digest,
) -> Result<Option<EntityId>, Failure> {
    let found = state.agents().find(|(_, a)| {
        a.parent == EntityId::SYSTEM
            && !a.is_terminated()
            && a.name == name
            && a.component == component
    });
    match found {
        Some((id, a)) => match &a.status {
            AgentStatus::Quarantined { reason } => Err(Failure::work(format!(
                "agent {} ({id}) is quarantined ({}); `toka agent resume {id}` lets it run again",
                text(name),
                text(reason)
            ))),
            _ => Ok(Some(id)),
        },
        None => Ok(None),
    }
}

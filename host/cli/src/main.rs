//! `toka`: run WebAssembly agents on a durable, capability-checked kernel.

mod agent;
mod archive;
mod cluster;
mod component;
mod demo;
mod drive;
mod events;
mod install;
mod output;
mod package;
mod remote;
mod render;
mod run;
mod secret;
mod serve;
mod state;
mod token;
mod verify;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Records are built on the agents' threads and freed on the log writer's;
/// glibc's arenas contend on that, mimalloc does not (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run WebAssembly agents on a deterministic kernel with a durable log.
#[derive(Debug, Parser)]
#[command(name = "toka", version, about, max_term_width = 100)]
struct Cli {
    /// The data directory: the log (toka.redb) and, unless --root-key is
    /// given, the root key (root.key) live here.
    #[arg(long, global = true, env = "TOKA_DATA", default_value = "./toka-data")]
    data: PathBuf,

    /// The root key file (`ed25519-private/<hex>`, as the `biscuit` tool
    /// writes it). Default: root.key in the data dir, created on first use.
    #[arg(long, global = true, env = "TOKA_ROOT_KEY", value_name = "FILE")]
    root_key: Option<PathBuf>,

    /// Snapshot the state every N records, so recovery replays only the tail
    /// (0: never); a state over 1 MiB waits until as many log bytes as its
    /// own size have passed.
    #[arg(
        long,
        global = true,
        env = "TOKA_SNAPSHOT_EVERY",
        value_name = "N",
        default_value_t = 10_000
    )]
    snapshot_every: u64,

    /// Work against a Toka cluster on these NATS servers
    /// (`nats://HOST:PORT,...`) instead of a local data dir: `cluster`,
    /// `serve`, `verify`, `events`, `state` and `replay` take it (the data
    /// dir then holds only this host's root key, secrets and server
    /// registration).
    #[arg(long, global = true, env = "TOKA_CLUSTER", value_name = "URLS")]
    cluster: Option<String>,

    /// The cell of the cluster a command works on.
    #[arg(long, global = true, env = "TOKA_CELL", value_name = "N")]
    cell: Option<u32>,

    /// With --cluster: a PEM certificate to trust when a command talks to
    /// the API of a host serving with TLS (one with a self-signed
    /// certificate, or a private CA's).
    #[arg(long, global = true, env = "TOKA_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    #[command(flatten)]
    limits: LimitArgs,

    #[command(subcommand)]
    command: Command,
}

/// Sandbox limits for every agent this command runs (a token's budgets can
/// only lower them). Defaults: AgentLimits in the library docs.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Sandbox limits")]
struct LimitArgs {
    /// Bytes of each linear memory of an agent (default 64MiB).
    #[arg(long, global = true, env = "TOKA_MEMORY", value_name = "SIZE", value_parser = toka_host::parse_size)]
    memory: Option<u64>,
    /// Bytes of linear memory all agents' live instances may hold together
    /// (default: half the machine's memory, or of a container's limit); one tree of agents holds at
    /// most three quarters of it. A growth past it fails the task as the host's
    /// condition, not the agent's fault.
    #[arg(long, global = true, env = "TOKA_MEMORY_BUDGET", value_name = "SIZE", value_parser = parse_budget)]
    memory_budget: Option<u64>,
    /// Bytes all agents may hold in the kernel's state together: their state
    /// keys and values, 1KiB per agent record and its tasks (default: an eighth of the
    /// machine's memory, or of a container's limit); one tree of agents holds
    /// at most three quarters of it. A state write, spawn or task past it is refused.
    #[arg(long, global = true, env = "TOKA_STATE_BUDGET", value_name = "SIZE", value_parser = parse_budget)]
    state_budget: Option<u64>,
    /// Free disk space the host keeps for its own records (default 256MiB;
    /// 0: none): while the data dir's file system has less, agents'
    /// operations are refused instead of the disk filling up and the host
    /// stopping.
    #[arg(long, global = true, env = "TOKA_DISK_RESERVE", value_name = "SIZE", value_parser = toka_host::parse_size)]
    disk_reserve: Option<u64>,
    /// Bytes of compiled code the host keeps for installed components
    /// (default 512MiB): past it, the least recently used component's code
    /// is let go and compiled again when an agent of it next starts.
    #[arg(long, global = true, env = "TOKA_COMPILED_CODE", value_name = "SIZE", value_parser = toka_host::parse_size)]
    compiled_code: Option<u64>,
    /// Fuel per task: meters every agent deterministically (default: no fuel
    /// metering, which is faster; the deadline still stops a runaway task).
    #[arg(long, global = true, env = "TOKA_FUEL", value_name = "N")]
    fuel: Option<u64>,
    /// Wall-clock time per task (default 30s).
    #[arg(long, global = true, env = "TOKA_DEADLINE", value_name = "DURATION", value_parser = toka_host::parse_duration)]
    deadline: Option<Duration>,
    /// Faults in a row after which an agent is quarantined (default 3; 0: never).
    #[arg(long, global = true, env = "TOKA_QUARANTINE_AFTER", value_name = "N")]
    quarantine_after: Option<u32>,
    /// Bytes of one outbound HTTP response an agent may get, which the
    /// journal keeps (default 1MiB); a larger one is refused.
    #[arg(long, global = true, env = "TOKA_HTTP_RESPONSE_LIMIT", value_name = "SIZE", value_parser = toka_host::parse_size)]
    http_response_limit: Option<u64>,
    /// Time for one outbound HTTP request (default 60s).
    #[arg(long, global = true, env = "TOKA_HTTP_TIMEOUT", value_name = "DURATION", value_parser = toka_host::parse_duration)]
    http_timeout: Option<Duration>,
}

/// A memory budget: a size, and not 0 (no agent could start).
fn parse_budget(text: &str) -> Result<u64, String> {
    match toka_host::parse_size(text).map_err(|e| e.to_string())? {
        0 => Err("a budget of 0 bytes would run no agent".into()),
        bytes => Ok(bytes),
    }
}

impl LimitArgs {
    fn apply(&self) -> toka_host::AgentLimits {
        let mut limits = toka_host::AgentLimits::default();
        if let Some(memory) = self.memory {
            limits.memory_bytes = memory;
        }
        if self.fuel.is_some() {
            limits.fuel_per_task = self.fuel;
        }
        if let Some(deadline) = self.deadline {
            limits.deadline_per_task = deadline;
        }
        if let Some(n) = self.quarantine_after {
            limits.quarantine_after = n;
        }
        if let Some(bytes) = self.http_response_limit {
            limits.http_response_bytes = bytes;
        }
        if let Some(timeout) = self.http_timeout {
            limits.http_timeout = timeout;
        }
        limits
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bundled planner/worker scenario and print what happens.
    Demo(demo::Args),
    /// Install an agent, give it tasks, and run until it is idle.
    Run(run::Args),
    /// Print the event log, or follow it as a running host writes it.
    Events(events::Args),
    /// Print the agents, their tasks and state.
    State(state::Args),
    /// Print the state as it was after a given record.
    Replay(state::ReplayArgs),
    /// Write a snapshot of the state now (recovery replays only what follows).
    Snapshot,
    /// Replay the log and check every record and the final state.
    Verify(verify::Args),
    /// Move the log up to a cut to an archive file you keep, and drop it
    /// from the live store (through `toka serve` when one runs on the data
    /// dir: agents run on meanwhile).
    Archive(archive::Args),
    /// Issue, attenuate, inspect and revoke capability tokens.
    #[command(subcommand)]
    Token(token::Command),
    /// Manage agents: resume a quarantined one, forget terminated ones.
    #[command(subcommand)]
    Agent(agent::Command),
    /// Manage installed components: remove one no agent runs any more.
    #[command(subcommand)]
    Component(component::Command),
    /// Publisher tools: keys, and building, inspecting and verifying signed
    /// agent packages (docs/packages.md).
    #[command(subcommand)]
    Package(package::Command),
    /// The trust store: the publishers whose signed packages may be
    /// installed (docs/packages.md).
    #[command(subcommand)]
    Trust(install::TrustCommand),
    /// Install (or upgrade) a signed package from a trusted publisher, with
    /// the rights you approve.
    Install(install::InstallArgs),
    /// Uninstall a package: its agents are terminated and its install token
    /// revoked.
    Uninstall(install::UninstallArgs),
    /// Secrets the host injects into agents' outbound requests (`secret
    /// NAME HOST` rights); agents never see them.
    #[command(subcommand)]
    Secret(secret::Command),
    /// Serve the data dir: a long-running host with an HTTP API, a live
    /// event stream and a dashboard (docs/api.md).
    Serve(serve::Args),
    /// Cells on NATS JetStream: create a cluster, see who owns which cell
    /// (with --cluster).
    #[command(subcommand)]
    Cluster(cluster::Command),
}

/// Where the CLI finds its data dir and root key.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub(crate) data: PathBuf,
    pub(crate) root_key: Option<PathBuf>,
    pub(crate) snapshot_every: u64,
    pub(crate) agent_limits: toka_host::AgentLimits,
    /// The memory budget for all agents, with --memory-budget.
    pub(crate) memory_budget: Option<u64>,
    /// The state budget for all agents, with --state-budget.
    pub(crate) state_budget: Option<u64>,
    /// The free disk space kept, with --disk-reserve.
    pub(crate) disk_reserve: Option<u64>,
    /// The compiled code kept, with --compiled-code.
    pub(crate) compiled_code: Option<u64>,
    /// The cluster's NATS URLs, with --cluster.
    pub(crate) cluster: Option<String>,
    /// The cell, with --cell.
    pub(crate) cell: Option<u32>,
    /// A certificate to trust, with --tls-ca.
    pub(crate) tls_ca: Option<PathBuf>,
}

impl Place {
    pub(crate) fn dir(&self) -> toka_host::DataDir {
        toka_host::DataDir::new(&self.data)
    }

    /// The host configuration every command that opens a host uses: the
    /// limits given, and the paths no agent may reach (the data dir, the
    /// root key file).
    pub(crate) fn host_config(&self) -> toka_host::HostConfig {
        let mut config = toka_host::HostConfig::new();
        config
            .snapshot_every(self.snapshot_every)
            .agent_limits(self.agent_limits.clone())
            .protected_paths(self.protected_paths());
        if let Some(bytes) = self.memory_budget {
            config.memory_budget(bytes);
        }
        if let Some(bytes) = self.state_budget {
            config.state_budget(bytes);
        }
        if let Some(bytes) = self.disk_reserve {
            config.disk_reserve(bytes);
        }
        if let Some(bytes) = self.compiled_code {
            config.compiled_code(usize::try_from(bytes).unwrap_or(usize::MAX));
        }
        config
    }

    /// The data dir and the root key file.
    pub(crate) fn protected_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.data.clone()];
        paths.extend(self.root_key.clone());
        paths
    }

    /// The root key; created in the data dir on first use if `create`.
    pub(crate) fn root_key(&self, create: bool) -> Result<toka_host::RootKey, Failure> {
        self.dir()
            .root_key(self.root_key.as_deref(), create)
            .map_err(Failure::input)
    }
}

/// A failure to report: one line on stderr and an exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    /// 1: the work failed (a task, a verification); 2: bad usage or input.
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    /// Bad input: a missing file, not a component, an unusable data dir, ...
    pub(crate) fn input(message: impl std::fmt::Display) -> Self {
        Self {
            code: 2,
            message: message.to_string(),
        }
    }

    /// The work itself failed.
    pub(crate) fn work(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
}

impl From<toka_host::HostError> for Failure {
    fn from(e: toka_host::HostError) -> Self {
        use toka_host::HostError as E;
        match e {
            E::Component(_)
            | E::DataDir(_)
            | E::Store(_)
            | E::Log(_)
            | E::Token(_)
            | E::RootKeyMismatch { .. }
            | E::UnknownRevocationId(_)
            | E::ProtectedPath(_)
            | E::Package(_)
            // The kernel refusing an operator's own command (a name, an
            // unknown agent): the input was wrong.
            | E::Kernel(_) => Failure::input(e),
            other => Failure::work(other),
        }
    }
}

impl From<toka_host::LogError> for Failure {
    fn from(e: toka_host::LogError) -> Self {
        // A log that cannot be read back is the data dir's problem: input.
        Failure::input(e)
    }
}

pub(crate) type CliResult = Result<ExitCode, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let place = Place {
        data: cli.data,
        root_key: cli.root_key,
        snapshot_every: cli.snapshot_every,
        agent_limits: cli.limits.apply(),
        memory_budget: cli.limits.memory_budget,
        state_budget: cli.limits.state_budget,
        disk_reserve: cli.limits.disk_reserve,
        compiled_code: cli.limits.compiled_code,
        cluster: cli.cluster,
        cell: cli.cell,
        tls_ca: cli.tls_ca,
    };
    // With --cluster, a command that writes goes through the API of the
    // host serving the cell; secrets stay per host, archives per data dir.
    if place.cluster.is_some()
        && matches!(
            cli.command,
            Command::Demo(_) | Command::Archive(_) | Command::Secret(_)
        )
    {
        eprintln!(
            "error: with --cluster, `demo`, `archive` and `secret` do not apply: secrets live in each host's data dir (set them there), a cell's log is JetStream's"
        );
        return ExitCode::from(2);
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo::main(&place, args).await,
            Command::Run(args) => run::main(&place, args).await,
            Command::Events(args) => events::main(&place, args).await,
            Command::State(args) => state::main(&place, args),
            Command::Replay(args) => state::replay(&place, args),
            Command::Snapshot => state::snapshot(&place).await,
            Command::Verify(args) => verify::main(&place, args),
            Command::Archive(args) => archive::main(&place, args).await,
            Command::Token(command) => token::main(&place, command).await,
            Command::Agent(command) => agent::main(&place, command).await,
            Command::Component(command) => component::main(&place, command).await,
            Command::Serve(args) => serve::main(&place, args).await,
            Command::Package(command) => package::main(&place, command),
            Command::Trust(command) => install::trust(&place, command).await,
            Command::Install(args) => install::install(&place, args).await,
            Command::Uninstall(args) => install::uninstall(&place, args).await,
            Command::Secret(command) => secret::main(&place, command).await,
            Command::Cluster(command) => cluster::main(&place, command),
        }
    });
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

//! `toka cluster` and the cluster side of `serve` and `verify`: cells on
//! NATS JetStream (toka_host's `cluster` module, DESIGN.md §17).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use toka_host::{CellStore, Cluster, ClusterConfig, Holder, Lease};

use crate::output::out;
use crate::{CliResult, Failure, Place};

/// How long a command waits for some NATS server to answer.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// `toka cluster`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a cluster on the NATS servers of --cluster: every cell's
    /// stream and object store, the lease bucket, and the recorded
    /// configuration (cells, replicas, the root public key, lease TTL).
    Init(InitArgs),
    /// Show the cluster's configuration and who owns each cell.
    Status,
}

/// Arguments of `toka cluster init`.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// How many cells (units of total order) the cluster has; fixed.
    #[arg(long, value_name = "N")]
    cells: u32,
    /// JetStream replicas of every stream and bucket: 1, or 3 on a 3-node
    /// NATS cluster.
    #[arg(long, value_name = "R", default_value_t = 1)]
    replicas: u32,
    /// A cell lease's time to live: a host that stops renewing loses its
    /// cells after at most this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = toka_host::parse_duration)]
    lease_ttl: Duration,
}

/// The cluster URLs, or the error a command that needs them gives.
pub(crate) fn urls(place: &Place) -> Result<&str, Failure> {
    place
        .cluster
        .as_deref()
        .ok_or_else(|| Failure::input("this command needs --cluster URLS (or TOKA_CLUSTER)"))
}

/// Connects to the cluster of --cluster.
pub(crate) fn connect(place: &Place) -> Result<Cluster, Failure> {
    let name = format!("toka-{}", std::process::id());
    Cluster::connect(urls(place)?, &name, CONNECT_PATIENCE).map_err(Failure::input)
}

pub(crate) fn main(place: &Place, command: Command) -> CliResult {
    let cluster = connect(place)?;
    match command {
        Command::Init(args) => init(place, &cluster, &args),
        Command::Status => status(&cluster),
    }
}

fn init(place: &Place, cluster: &Cluster, args: &InitArgs) -> CliResult {
    let root = place.root_key(true)?;
    let config = ClusterConfig::new(
        args.cells,
        args.replicas,
        root.public().to_bytes().to_vec(),
        args.lease_ttl,
    )
    .map_err(Failure::work)?;
    cluster.init(&config).map_err(Failure::input)?;
    out!(
        "cluster created at {}: {} cells, {} replica(s), lease TTL {} ms, root key {}",
        cluster.urls(),
        config.cells,
        config.replicas,
        config.lease_ttl_ms,
        root.public_string()
    );
    Ok(ExitCode::SUCCESS)
}

fn status(cluster: &Cluster) -> CliResult {
    let config = cluster.config().map_err(Failure::input)?;
    out!(
        "cluster {}: {} cells, {} replica(s), lease TTL {} ms",
        cluster.urls(),
        config.cells,
        config.replicas,
        config.lease_ttl_ms
    );
    for cell in 0..config.cells {
        match toka_host::holder(cluster, cell).map_err(Failure::work)? {
            Some(holder) => out!(
                "cell {cell}: owned by {}{}",
                holder.host,
                holder.url.map(|u| format!(" at {u}")).unwrap_or_default()
            ),
            None => out!("cell {cell}: free"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The cell a cluster command works on.
pub(crate) fn cell(place: &Place) -> Result<u32, Failure> {
    place
        .cell
        .ok_or_else(|| Failure::input("this command needs --cell N (or TOKA_CELL) with --cluster"))
}

/// The cells `verify --cluster` checks: --cell, or all of them.
pub(crate) fn cells(place: &Place, cluster: &Cluster) -> Result<Vec<u32>, Failure> {
    let config = cluster.config().map_err(Failure::input)?;
    match place.cell {
        Some(cell) if cell >= config.cells => Err(Failure::input(format!(
            "no cell {cell}: the cluster has cells 0..{}",
            config.cells
        ))),
        Some(cell) => Ok(vec![cell]),
        None => Ok((0..config.cells).collect()),
    }
}

/// `toka serve --cluster URLS --cell N`: waits for the cell's lease, fences
/// the cell, recovers it and serves it until stopped or until the lease is
/// lost (then it steps down and exits 1: a supervisor restarts it as a
/// standby).
pub(crate) async fn serve(
    place: &Place,
    mut config: toka_server::ServeConfig,
    grace: Duration,
) -> CliResult {
    let cluster = connect(place)?;
    let cell = cell(place)?;
    let cluster_config = cluster.config().map_err(Failure::input)?;
    if cell >= cluster_config.cells {
        return Err(Failure::input(format!(
            "no cell {cell}: the cluster has cells 0..{}",
            cluster_config.cells
        )));
    }
    let ttl = cluster_config.lease_ttl();
    // What is still running when the lease goes must stop well before it
    // can expire.
    config.grace(grace.min(ttl / 4));
    let root = place.root_key(false)?;
    // The host's own dir: its server registration and secrets.
    std::fs::create_dir_all(&place.data)
        .map_err(|e| Failure::input(format!("{}: {e}", place.data.display())))?;
    // Bind first: a bad address takes no lease.
    let server = toka_server::Server::bind(config)
        .await
        .map_err(Failure::input)?;
    let host_name = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "toka".into()),
        std::process::id()
    );
    let holder = Holder {
        host: host_name.clone(),
        url: Some(server.url()),
    };
    let lease = tokio::select! {
        lease = acquire(&cluster, cell, &holder, ttl) => lease?,
        () = toka_server::signal() => return Ok(ExitCode::SUCCESS),
    };
    let guard = lease.guard();
    let opened = {
        let (cluster, host_name, guard) = (cluster.clone(), host_name.clone(), guard.clone());
        tokio::task::spawn_blocking(move || CellStore::open(&cluster, cell, &host_name, guard))
            .await
            .map_err(|e| Failure::work(format!("opening the cell: {e}")))?
    };
    let store = Arc::new(opened.map_err(Failure::work)?);
    let secrets = toka_host::SecretStore::open(&place.data).map_err(Failure::input)?;
    let mut host_config = place.host_config();
    host_config.secrets(Arc::new(secrets));
    let host = toka_host::Host::open(Arc::clone(&store) as _, root, host_config).await?;
    eprintln!(
        "toka: serving cell {cell} of {} at {} as {host_name} (lease TTL {} ms)",
        cluster.urls(),
        server.url(),
        ttl.as_millis()
    );
    let stepped_down = Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = {
        let stepped_down = Arc::clone(&stepped_down);
        let guard = guard.clone();
        let host_stopped = host.stopped();
        async move {
            let reason = tokio::select! {
                () = toka_server::signal() => return,
                reason = guard.lost() => reason,
                // The cell's log refused an append (fenced), or it failed.
                stopped = host_stopped => stopped.0,
            };
            *stepped_down.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        }
    };
    let served = server.run(host, store as _, stop).await;
    let reason = stepped_down
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(reason) = reason {
        return Err(Failure::work(format!(
            "stepped down from cell {cell}: {reason}"
        )));
    }
    served.map_err(Failure::work)?;
    // A clean stop hands the cell over at once.
    tokio::task::spawn_blocking(move || lease.release())
        .await
        .map_err(|e| Failure::work(format!("releasing the lease: {e}")))?;
    eprintln!("toka: stopped; cell {cell} released; everything acknowledged is in its log");
    Ok(ExitCode::SUCCESS)
}

/// Waits until the lease is ours, saying once who holds it meanwhile.
async fn acquire(
    cluster: &Cluster,
    cell: u32,
    holder: &Holder,
    ttl: Duration,
) -> Result<Lease, Failure> {
    let mut told = false;
    loop {
        let attempt = {
            let (cluster, holder) = (cluster.clone(), holder.clone());
            tokio::task::spawn_blocking(move || Lease::try_acquire(&cluster, cell, &holder, ttl))
                .await
                .map_err(|e| Failure::work(format!("acquiring the lease: {e}")))?
        };
        if let Some(lease) = attempt.map_err(Failure::work)? {
            return Ok(lease);
        }
        if !told {
            told = true;
            let current = toka_host::holder(cluster, cell).ok().flatten();
            eprintln!(
                "toka: cell {cell} is owned by {}; standing by until its lease is free",
                current.map_or_else(|| "another host".to_owned(), |h| h.host)
            );
        }
        tokio::time::sleep(ttl / 10).await;
    }
}

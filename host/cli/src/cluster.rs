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

/// How long `serve` waits for one: a host may start beside its servers.
const SERVE_PATIENCE: Duration = Duration::from_secs(60);

/// `toka cluster`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a cluster on the NATS servers of --cluster: every cell's
    /// log and object streams, the lease bucket, and the recorded
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
    connect_within(place, CONNECT_PATIENCE)
}

fn connect_within(place: &Place, patience: Duration) -> Result<Cluster, Failure> {
    let name = format!("toka-{}", std::process::id());
    Cluster::connect(urls(place)?, &name, patience).map_err(Failure::input)
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

/// The store the read-only commands read: cell --cell of --cluster, or the
/// data dir's.
pub(crate) fn read_store(place: &Place) -> Result<Box<dyn toka_host::EventStore>, Failure> {
    if place.cluster.is_none() {
        let store = toka_host::DataDir::new(&place.data)
            .open_read_only()
            .map_err(Failure::input)?;
        return Ok(Box::new(store));
    }
    let cluster = connect(place)?;
    let store = CellStore::open_read_only(&cluster, cell(place)?).map_err(Failure::input)?;
    Ok(Box::new(store))
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

/// With `--cluster`, the commands that write go through the API of the
/// host serving `--cell` (cell 0, the configuration cell, without one),
/// found from the cell's lease, with an operator token minted for the
/// call from the cluster's key (`--root-key`): the cell's client.
///
/// # Errors
///
/// [`Failure`] when the cluster or the key cannot be reached, or no host
/// serves the cell right now.
pub(crate) async fn cell_client(place: &Place) -> Result<toka_server::client::Client, Failure> {
    let cluster = connect(place)?;
    let cell = place.cell.unwrap_or(u32::from(toka_kernel::CONFIG_CELL));
    let total = cluster.config().map_err(Failure::input)?.cells;
    if cell >= total {
        return Err(Failure::input(format!(
            "no cell {cell}: the cluster has cells 0..{total}"
        )));
    }
    let owner = tokio::task::spawn_blocking(move || toka_host::holder(&cluster, cell))
        .await
        .map_err(|e| Failure::work(format!("reading the lease: {e}")))?
        .map_err(Failure::work)?
        .and_then(|holder| holder.url)
        .ok_or_else(|| {
            Failure::work(format!(
                "no host serves cell {cell} right now; try again in a few seconds"
            ))
        })?;
    let root = place.root_key(false)?;
    // For this command only: `run` follows its tasks' records for as long
    // as they run (the longest a command waits by default).
    let expires = std::time::SystemTime::now() + Duration::from_secs(600);
    let token = toka_host::Token::issue(
        &root,
        &[toka_host::OperatorLevel::Admin.right()],
        &[],
        Some(expires),
    )
    .map_err(Failure::work)?
    .to_base64();
    let client = |base: &str| {
        toka_server::client::Client::new(base, &token, place.tls_ca.as_deref())
            .map_err(Failure::input)
    };
    // Every host of a cluster has its cells under /cells/N (a host of one
    // cell, `--cell`, at its root too).
    client(&format!("{owner}/cells/{cell}"))
}

/// Where a cell is served: its lease holder's API.
fn owner_of(cluster: &Cluster) -> toka_server::OwnerOf {
    let cluster = cluster.clone();
    Box::new(move |cell| {
        toka_host::holder(&cluster, cell)
            .ok()
            .flatten()
            .and_then(|h| h.url)
    })
}

/// `toka serve --cluster URLS [--cell N]`: with `--cell`, serves that one
/// cell (standing by until its lease is free); without, serves its share of
/// all the cells, spread with the other hosts.
pub(crate) async fn serve(
    place: &Place,
    mut config: toka_server::ServeConfig,
    grace: Duration,
    advertise: Option<String>,
) -> CliResult {
    let cluster = connect_within(place, SERVE_PATIENCE)?;
    let cluster_config = cluster.config().map_err(Failure::input)?;
    let ttl = cluster_config.lease_ttl();
    // What is still running when a lease goes must stop well before it
    // can expire.
    let grace = grace.min(ttl / 4);
    config.grace(grace);
    // The cluster's root key file must be there before any lease is taken.
    place.root_key(false)?;
    // The host's own dir: its server registration and secrets.
    std::fs::create_dir_all(&place.data)
        .map_err(|e| Failure::input(format!("{}: {e}", place.data.display())))?;
    // Unique to this process (a lease's value says whose it is; machines
    // without HOSTNAME and with equal pids must not look alike).
    let host_name = {
        use std::hash::{BuildHasher as _, Hasher as _};
        let nonce = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "toka".into()),
            std::process::id(),
            nonce as u32
        )
    };
    let cell = match place.cell {
        Some(cell) if cell >= cluster_config.cells => {
            return Err(Failure::input(format!(
                "no cell {cell}: the cluster has cells 0..{}",
                cluster_config.cells
            )));
        }
        Some(cell) => cell,
        None => {
            let cells = Spread {
                place,
                cluster: &cluster,
                host_name: &host_name,
                total: cluster_config.cells,
                ttl,
                grace,
            };
            return cells.serve(config, advertise).await;
        }
    };
    // Bind first: a bad address takes no lease.
    let front = toka_server::OneCell::new(cell, cluster_config.cells, owner_of(&cluster));
    let server = toka_server::Server::bind(config)
        .await
        .map_err(Failure::input)?
        .in_cell(front);
    let url = advertise.unwrap_or_else(|| server.url());
    let holder = Holder {
        host: host_name.clone(),
        url: Some(url.clone()),
    };
    let lease = tokio::select! {
        lease = acquire(&cluster, cell, &holder, ttl) => lease?,
        () = toka_server::signal() => return Ok(ExitCode::SUCCESS),
    };
    let guard = lease.guard();
    let (host, store) = open_cell(place, &cluster, cell, &host_name, &guard).await?;
    let services = CellServices::start(&cluster, cell, &host);
    // What other cells sent while no host served this one (a revocation
    // among it) is in the cell before anything is served.
    tokio::select! {
        () = services.caught_up() => {}
        reason = guard.lost() => {
            return Err(Failure::work(format!("stepped down from cell {cell}: {reason}")));
        }
        () = toka_server::signal() => return Ok(ExitCode::SUCCESS),
    }
    eprintln!(
        "toka: serving cell {cell} of {} at {url} as {host_name} (lease TTL {} ms)",
        cluster.urls(),
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
    drop(services);
    // The host stopping by itself (its log fenced it) is a step down too,
    // whichever of the two saw it first.
    let reason = stepped_down
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .or_else(|| match &served {
            Err(toka_server::ServeError::Host(toka_host::HostError::Stopped(stopped))) => {
                Some(stopped.0.clone())
            }
            _ => None,
        });
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

/// Opens cell `cell` under `guard`: fences it, then recovers its host.
async fn open_cell(
    place: &Place,
    cluster: &Cluster,
    cell: u32,
    host_name: &str,
    guard: &toka_host::LeaseGuard,
) -> Result<(toka_host::Host, Arc<CellStore>), Failure> {
    let root = place.root_key(false)?;
    let opened = {
        let (cluster, host_name, guard) = (cluster.clone(), host_name.to_owned(), guard.clone());
        tokio::task::spawn_blocking(move || CellStore::open(&cluster, cell, &host_name, guard))
            .await
            .map_err(|e| Failure::work(format!("opening the cell: {e}")))?
    };
    let store = Arc::new(opened.map_err(Failure::work)?);
    let secrets = toka_host::SecretStore::open(&place.data).map_err(Failure::input)?;
    let mut host_config = place.host_config();
    host_config.secrets(Arc::new(secrets));
    let host = toka_host::Host::open(Arc::clone(&store) as _, root, host_config).await?;
    Ok((host, store))
}

/// A host serving its share of a cluster's cells: `ceil(cells / hosts
/// alive)`. Every quarter lease TTL it says it is alive, lets go of cells
/// whose lease it lost (or whose log fenced it), hands one cell over when it
/// has more than its share (a host joined), and takes free cells while it
/// has fewer (a host left or died).
struct Spread<'a> {
    place: &'a Place,
    cluster: &'a Cluster,
    host_name: &'a str,
    total: u32,
    ttl: Duration,
    grace: Duration,
}

/// A cell served by a [`Spread`] host.
struct Owned {
    lease: Lease,
    services: CellServices,
    stopped: tokio::task::JoinHandle<toka_host::Stopped>,
}

impl Spread<'_> {
    async fn serve(
        &self,
        config: toka_server::ServeConfig,
        advertise: Option<String>,
    ) -> CliResult {
        let server = toka_server::Server::bind(config.clone())
            .await
            .map_err(Failure::input)?;
        let url = advertise.unwrap_or_else(|| server.url());
        let holder = Holder {
            host: self.host_name.to_owned(),
            url: Some(url.clone()),
        };
        let cells = toka_server::Cells::new(config, self.total, owner_of(self.cluster));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run_cells(Arc::clone(&cells), async move {
            let _ = stop_rx.await;
        }));
        eprintln!(
            "toka: serving cells of {} at {url}/cells/N/ as {} (lease TTL {} ms)",
            self.cluster.urls(),
            self.host_name,
            self.ttl.as_millis()
        );
        let mut owned = std::collections::BTreeMap::<u32, Owned>::new();
        let signal = toka_server::signal();
        tokio::pin!(signal);
        let result = loop {
            if let Err(e) = self.round(&holder, &cells, &mut owned).await {
                break Err(e);
            }
            tokio::select! {
                () = &mut signal => break Ok(()),
                () = tokio::time::sleep(self.ttl / 4) => {}
            }
        };
        let _ = stop_tx.send(());
        let served = running.await;
        for (cell, entry) in std::mem::take(&mut owned) {
            self.let_go(&cells, cell, entry, true).await;
        }
        result?;
        served
            .map_err(|e| Failure::work(format!("the server: {e}")))?
            .map_err(Failure::work)?;
        eprintln!(
            "toka: stopped; its cells are released; everything acknowledged is in their logs"
        );
        Ok(ExitCode::SUCCESS)
    }

    /// One round of keeping the share.
    async fn round(
        &self,
        holder: &Holder,
        cells: &Arc<toka_server::Cells>,
        owned: &mut std::collections::BTreeMap<u32, Owned>,
    ) -> Result<(), Failure> {
        let alive = {
            let (cluster, holder) = (self.cluster.clone(), holder.clone());
            tokio::task::spawn_blocking(move || {
                toka_host::announce(&cluster, &holder)?;
                toka_host::hosts(&cluster)
            })
            .await
            .map_err(|e| Failure::work(format!("announcing: {e}")))?
        };
        let alive = match alive {
            Ok(hosts) => hosts.len().max(1),
            Err(e) => {
                tracing::warn!(error = %e, "the cluster did not answer; keeping what this host serves");
                return Ok(());
            }
        };
        // Cells lost: the lease ran out, or the cell's log fenced the host.
        let lost: Vec<u32> = owned
            .iter()
            .filter(|(_, o)| !o.lease.guard().is_valid() || o.stopped.is_finished())
            .map(|(cell, _)| *cell)
            .collect();
        for cell in lost {
            if let Some(entry) = owned.remove(&cell) {
                eprintln!(
                    "toka: stepped down from cell {cell}: its lease or its log is no longer this host's"
                );
                self.let_go(cells, cell, entry, false).await;
            }
        }
        let share = (self.total as usize).div_ceil(alive);
        if owned.len() > share {
            if let Some((&cell, _)) = owned.iter().next_back()
                && let Some(entry) = owned.remove(&cell)
            {
                eprintln!(
                    "toka: handing cell {cell} over ({alive} hosts share {} cells)",
                    self.total
                );
                self.let_go(cells, cell, entry, true).await;
            }
            return Ok(());
        }
        // Free cells, starting at a place of this host's own so hosts that
        // start together do not all race for cell 0.
        let start = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.host_name.hash(&mut hasher);
            u32::try_from(hasher.finish() % u64::from(self.total)).unwrap_or(0)
        };
        for offset in 0..self.total {
            if owned.len() >= share {
                break;
            }
            let cell = (start + offset) % self.total;
            if owned.contains_key(&cell) {
                continue;
            }
            let attempt = {
                let (cluster, holder, ttl) = (self.cluster.clone(), holder.clone(), self.ttl);
                tokio::task::spawn_blocking(move || {
                    Lease::try_acquire(&cluster, cell, &holder, ttl)
                })
                .await
                .map_err(|e| Failure::work(format!("acquiring a lease: {e}")))?
            };
            let Ok(Some(lease)) = attempt else {
                continue;
            };
            let opened = open_cell(
                self.place,
                self.cluster,
                cell,
                self.host_name,
                &lease.guard(),
            )
            .await;
            let (host, store) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    eprintln!("toka: cell {cell} could not be opened: {}", e.message);
                    let _ = tokio::task::spawn_blocking(move || lease.release()).await;
                    continue;
                }
            };
            let services = CellServices::start(self.cluster, cell, &host);
            if tokio::time::timeout(self.ttl, services.caught_up())
                .await
                .is_err()
            {
                eprintln!("toka: cell {cell}'s inbox could not be read; letting the cell go");
                drop(services);
                let _ = host.shutdown().await;
                let _ = tokio::task::spawn_blocking(move || lease.release()).await;
                continue;
            }
            let stopped = tokio::spawn(host.stopped());
            cells.add(cell, host, store as _).map_err(Failure::work)?;
            eprintln!("toka: serving cell {cell}");
            owned.insert(
                cell,
                Owned {
                    lease,
                    services,
                    stopped,
                },
            );
        }
        Ok(())
    }

    /// Stops serving `cell`; releases its lease when it is still ours.
    async fn let_go(&self, cells: &toka_server::Cells, cell: u32, entry: Owned, release: bool) {
        let grace = if release { self.grace } else { Duration::ZERO };
        if let Err(e) = cells.remove(cell, grace).await {
            tracing::warn!(error = %e, cell, "stopping the cell's host");
        }
        drop(entry.services);
        entry.stopped.abort();
        if release {
            let lease = entry.lease;
            let _ = tokio::task::spawn_blocking(move || lease.release()).await;
        }
    }
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
        match attempt {
            Ok(Some(lease)) => return Ok(lease),
            Ok(None) => {}
            // A NATS node's failure: try again, as a standby does.
            Err(e) => tracing::warn!(error = %e, cell, "acquiring the lease failed; trying again"),
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

/// What runs beside a cell's host while it serves the cell: its events
/// published for the outside, its tasks for other cells forwarded and
/// those for it taken in. Stopped when dropped.
struct CellServices {
    publisher: tokio::task::JoinHandle<()>,
    mailroom: Option<toka_host::Mailroom>,
}

impl CellServices {
    fn start(cluster: &Cluster, cell: u32, host: &toka_host::Host) -> CellServices {
        CellServices {
            publisher: publish_events(cluster, cell, host.subscribe()),
            mailroom: toka_host::Mailroom::start(cluster, host.mail()),
        }
    }

    /// Once the cell took in what its inbox held (see
    /// [`toka_host::Mailroom::caught_up`]).
    async fn caught_up(&self) {
        if let Some(mailroom) = &self.mailroom {
            mailroom.caught_up().await;
        }
    }
}

impl Drop for CellServices {
    fn drop(&mut self) {
        self.publisher.abort();
    }
}

/// Publishes every committed event of the cell on `toka.events.<cell>`, one
/// JSON message per event (as the API shows it, with its record's `seq`).
/// Core NATS delivers at most once: a consumer that finds a gap in `seq`
/// reads the log (`toka --cluster .. events --from SEQ`).
fn publish_events(
    cluster: &Cluster,
    cell: u32,
    mut committed: toka_host::Subscription,
) -> tokio::task::JoinHandle<()> {
    use tokio::sync::broadcast::error::RecvError;
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let subject = Cluster::events_subject(cell);
        loop {
            let batch = match committed.recv().await {
                Ok(batch) => batch,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        batches = n,
                        cell,
                        "event publishing fell behind and skipped batches"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            for record in &batch.records {
                for event in &record.events {
                    let view = toka_server::event_view(record, event);
                    let Ok(json) = serde_json::to_vec(&view) else {
                        continue;
                    };
                    if let Err(e) = cluster.publish(subject.clone(), json).await {
                        tracing::warn!(error = %e, cell, "publishing an event failed");
                    }
                }
            }
        }
    })
}

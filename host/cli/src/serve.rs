//! `toka serve`: the host as a long-running service (see the toka-server
//! crate and docs/api.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use toka_server::{ServeConfig, Server};

use crate::{CliResult, Failure, Place, drive};

/// Arguments of `toka serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The address to listen on. Anything but loopback needs --tls-cert and
    /// --tls-key (or --insecure).
    #[arg(long, value_name = "ADDR", default_value = toka_server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// A PEM certificate (chain) to speak HTTPS with.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS (operator tokens then
    /// cross the network in the clear).
    #[arg(long)]
    insecure: bool,
    /// On SIGTERM or SIGINT, how long running tasks and requests get to
    /// finish; what is still running then runs again at the next start.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = toka_host::parse_duration)]
    grace: Duration,
    /// With --cluster: the base URL other hosts and clients reach this
    /// host's API at, recorded in the leases of the cells it serves (where
    /// requests for them are redirected). Default: the address it listens
    /// on — give this when that is 0.0.0.0, behind a NAT, or not the name
    /// the TLS certificate holds.
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// The largest component upload accepted.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = toka_host::parse_size)]
    max_component: u64,
    /// Connections held at once, all clients together: one more is closed
    /// as soon as it is accepted, and so is one that sends no request
    /// within 10 s of opening or 30 s of its last answer (fewer when the
    /// process's limit of open files leaves the host less than 512).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Connections held at once from one client (an IPv4 address, an IPv6
    /// /64); behind a proxy every client is the proxy: raise it there.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_client: u32,
    /// Forget terminated agents this often (as `toka agent forget`):
    /// their records and state leave the state, their history stays in
    /// the log. Default: only when asked.
    #[arg(long, value_name = "DURATION", value_parser = toka_host::parse_duration)]
    forget_terminated_every: Option<Duration>,
    /// Archive the log this often (as `POST /v1/archive`): into a new file
    /// in the data dir's `archives/` directory, which stays until you take
    /// it away (download it and delete it: `GET` and `DELETE
    /// /v1/archive/files/NAME`). Default: only when asked.
    #[arg(long, value_name = "DURATION", value_parser = toka_host::parse_duration)]
    archive_every: Option<Duration>,
    /// With --archive-every: records before the head each archive keeps in
    /// the live log.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "archive_every"
    )]
    archive_keep: u64,
}

pub(crate) async fn main(place: &Place, args: Args) -> CliResult {
    if place.cluster.is_some() {
        let advertise = advertised(args.advertise.as_deref(), args.tls_cert.is_some())?;
        if args.archive_every.is_some() {
            return Err(Failure::input(
                "--archive-every is for a host with a log of its own: a cluster cell's log is JetStream's",
            ));
        }
        if args.forget_terminated_every.is_some() {
            return Err(Failure::input(
                "--forget-terminated-every is for a host serving its own data dir; a cluster's cells forget through `POST /v1/agents/forget`",
            ));
        }
        return crate::cluster::serve(place, config(place, &args), args.grace, advertise).await;
    }
    if args.advertise.is_some() {
        return Err(Failure::input(
            "--advertise is for a host of a cluster (with --cluster): the URL its leases record",
        ));
    }
    if let Some(server) = drive::server(place).await? {
        return Err(Failure::input(format!(
            "a server already holds {} at {}",
            place.data.display(),
            server.base()
        )));
    }
    let config = config(place, &args);
    // Bind before opening the data dir: a bad address writes nothing.
    let server = Server::bind(config).await.map_err(Failure::input)?;
    let opened = drive::open(place).await?;
    opened.host.start_agents();
    eprintln!(
        "toka: serving {} at {} (dashboard: {}/; stop with Ctrl-C or SIGTERM)",
        place.data.display(),
        server.url(),
        server.url()
    );
    server
        .run(opened.host, opened.store, toka_server::signal())
        .await
        .map_err(Failure::work)?;
    eprintln!("toka: stopped; everything acknowledged is in the log");
    Ok(ExitCode::SUCCESS)
}

/// `--advertise URL`, checked: an `http://` or `https://` base URL (the
/// scheme the server speaks), without a path.
fn advertised(url: Option<&str>, tls: bool) -> Result<Option<String>, Failure> {
    let Some(url) = url else {
        return Ok(None);
    };
    let scheme = if tls { "https://" } else { "http://" };
    let bad = |why: &str| Failure::input(format!("--advertise {url}: {why}"));
    let rest = url.strip_prefix(scheme).ok_or_else(|| {
        bad(&format!(
            "it must start with {scheme} (the scheme this host speaks)"
        ))
    })?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@'])
        || authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("it must be a base URL: scheme, host and port, no path"));
    }
    Ok(Some(format!("{scheme}{authority}")))
}

/// The server's configuration from the arguments.
fn config(place: &Place, args: &Args) -> ServeConfig {
    let mut config = ServeConfig::new(args.listen);
    config
        .insecure(args.insecure)
        .grace(args.grace)
        .max_component(usize::try_from(args.max_component).unwrap_or(usize::MAX))
        .max_connections(args.max_connections as usize)
        .max_connections_per_client(args.max_connections_per_client as usize)
        .register_in(place.data.clone());
    if let Some(every) = args.forget_terminated_every {
        config.forget_terminated_every(every);
    }
    if let Some(every) = args.archive_every {
        config.archive_every(every, args.archive_keep);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls(cert.clone(), key.clone());
    }
    config
}

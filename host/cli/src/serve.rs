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
    /// The largest component upload accepted.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = toka_host::parse_size)]
    max_component: u64,
}

pub(crate) async fn main(place: &Place, args: Args) -> CliResult {
    if place.cluster.is_some() {
        return crate::cluster::serve(place, config(place, &args), args.grace).await;
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

/// The server's configuration from the arguments.
fn config(place: &Place, args: &Args) -> ServeConfig {
    let mut config = ServeConfig::new(args.listen);
    config
        .insecure(args.insecure)
        .grace(args.grace)
        .max_component(usize::try_from(args.max_component).unwrap_or(usize::MAX))
        .register_in(place.data.clone());
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls(cert.clone(), key.clone());
    }
    config
}

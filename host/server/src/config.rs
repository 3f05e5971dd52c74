//! How a server is set up: where it listens, TLS, and its limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::rate::Rate;

/// A server's configuration, built with setters; every limit has a
/// documented default.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) insecure: bool,
    pub(crate) grace: Duration,
    pub(crate) max_body: usize,
    pub(crate) max_component: usize,
    pub(crate) rate: Rate,
    pub(crate) strangers: Rate,
    pub(crate) max_streams: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_client: usize,
    pub(crate) max_wait: Duration,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) forget_every: Option<Duration>,
    pub(crate) archive_every: Option<Duration>,
    pub(crate) archive_keep: u64,
}

/// The address `toka serve` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

impl ServeConfig {
    /// Listens on `listen`, with every other setting at its default.
    #[must_use]
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            insecure: false,
            grace: Duration::from_secs(10),
            max_body: 1 << 20,
            max_component: 64 << 20,
            rate: Rate::per_second(1000.0),
            strangers: Rate {
                per_second: 10.0,
                burst: 50.0,
            },
            max_streams: 256,
            max_connections: 1024,
            max_connections_per_client: 128,
            max_wait: Duration::from_secs(60),
            data_dir: None,
            forget_every: None,
            archive_every: None,
            archive_keep: 0,
        }
    }

    /// Speaks TLS with this PEM certificate (chain) and private key.
    /// Required to listen on an address other than loopback (unless
    /// [`ServeConfig::insecure`]).
    pub fn tls(&mut self, certificate: PathBuf, key: PathBuf) -> &mut Self {
        self.tls = Some((certificate, key));
        self
    }

    /// Allows plain HTTP on a non-loopback address (tokens then cross the
    /// network in the clear). Default: refused.
    pub fn insecure(&mut self, insecure: bool) -> &mut Self {
        self.insecure = insecure;
        self
    }

    /// How long a graceful shutdown lets running tasks finish. Default 10 s.
    pub fn grace(&mut self, grace: Duration) -> &mut Self {
        self.grace = grace;
        self
    }

    /// The largest JSON body accepted. Default 1 MiB.
    pub fn max_body(&mut self, bytes: usize) -> &mut Self {
        self.max_body = bytes;
        self
    }

    /// The largest component upload accepted. Default 64 MiB.
    pub fn max_component(&mut self, bytes: usize) -> &mut Self {
        self.max_component = bytes;
        self
    }

    /// Requests per operator token. Default 1000/s, bursts of 2000.
    pub fn rate(&mut self, rate: Rate) -> &mut Self {
        self.rate = rate;
        self
    }

    /// Per client network (an IPv4 address, or an IPv6 /48): requests
    /// whose token fails, and tokens the server has not verified before
    /// (each costs a signature check). Default 10/s, bursts of 50.
    pub fn strangers(&mut self, rate: Rate) -> &mut Self {
        self.strangers = rate;
        self
    }

    /// Event streams open at once, all clients together; a quarter of
    /// them (at least one) by one token and those attenuated from its
    /// root. Default 256.
    pub fn max_streams(&mut self, streams: usize) -> &mut Self {
        self.max_streams = streams;
        self
    }

    /// Connections held at once, all clients together. A connection past
    /// it takes the place of an idle connection of the network holding
    /// the most, when that network holds at least two more than the
    /// newcomer's, or else is closed as soon as it is accepted; a
    /// connection that sends no whole request head within 10 s of opening
    /// or 30 s of its last answer is closed, and so is one whose client
    /// reads its answers too slowly (docs/api.md, "Connections"). Fewer when the process's limit of open files (raised to
    /// its hard limit when the server binds) leaves the host less than
    /// 512 (the server then says so). Default 1 024.
    pub fn max_connections(&mut self, connections: usize) -> &mut Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Connections held at once from one client: an IPv4 address, or an
    /// IPv6 /64. Behind a proxy every client is the proxy's address: raise
    /// it there. Default 128 (at most [`ServeConfig::max_connections`]).
    pub fn max_connections_per_client(&mut self, connections: usize) -> &mut Self {
        self.max_connections_per_client = connections.max(1);
        self
    }

    /// The longest `?wait=` a request may ask for. Default 60 s.
    pub fn max_wait(&mut self, wait: Duration) -> &mut Self {
        self.max_wait = wait;
        self
    }

    /// Forgets terminated agents every `every` (at least a second), as
    /// `POST /v1/agents/forget` does: those none of whose descendants is
    /// alive (nor a task they scheduled unfinished) leave the state and
    /// the API's answers; their history stays in the log. Default: never
    /// (the operator forgets them).
    pub fn forget_terminated_every(&mut self, every: Duration) -> &mut Self {
        self.forget_every = Some(every);
        self
    }

    /// Archives the log every `every` (at least a second), as `POST
    /// /v1/archive` with `keep` does: the records up to `keep` before the
    /// head go to a new file in the data dir's `archives` directory and
    /// leave the live store. Skipped while an archive is being made; a
    /// server without a data dir of its own (a cluster cell) does not
    /// archive. The files stay until the operator takes them away
    /// (`GET`/`DELETE /v1/archive/files/{name}`). Default: never.
    pub fn archive_every(&mut self, every: Duration, keep: u64) -> &mut Self {
        self.archive_every = Some(every);
        self.archive_keep = keep;
        self
    }

    /// The data dir to register the server in (`server.json`,
    /// `operator.token`), so CLI commands find it. Default: none.
    pub fn register_in(&mut self, data_dir: PathBuf) -> &mut Self {
        self.data_dir = Some(data_dir);
        self
    }
}

//! Who may hold a connection to the server, and for how long.
//!
//! Opening a TCP connection needs no token, and each one the server holds
//! costs it a file descriptor and a task. Before these bounds, a client
//! with no rights at all could open connections and send nothing on them:
//! the server held each one for ever, and with the process's limit of open
//! files (1 024 is common) reached it could accept no other client, while
//! the host needs descriptors of its own (agents' outgoing HTTP, archive
//! files). Now:
//!
//! - at most [`ServeConfig::max_connections`] connections are held at
//!   once, and at most [`ServeConfig::max_connections_per_client`] from one
//!   client (an IPv4 address, or an IPv6 /64; see [`crate::origin`]); a
//!   connection past either is closed as soon as it is accepted, with a
//!   warning at most every [`WARN_EVERY`]; so is one past the [`OPENING`]
//!   rate of its network (an IPv4 address, or an IPv6 /48: an accept and a
//!   TLS handshake cost the server whether or not a request follows);
//! - when the server holds its most, a newcomer takes the place of an idle
//!   connection of the network (an IPv4 address, an IPv6 /48) holding the
//!   most, if that network holds at least two more than the newcomer's
//!   (see [`crate::evict`]): the first clients to come cannot keep later
//!   ones out by holding idle keep-alive connections;
//! - a connection that has not sent a whole request head within
//!   [`FIRST_REQUEST`] of opening (after the TLS handshake, which has 10 s
//!   of its own), or within [`IDLE`] of its last answer, is closed. A
//!   response being sent (an event stream, a long poll) is not idle, but
//!   one the client reads nothing of for [`WRITE_STALL`] fails and its
//!   connection closes.
//!
//! [`ServeConfig::max_connections`]: crate::ServeConfig::max_connections
//! [`ServeConfig::max_connections_per_client`]: crate::ServeConfig::max_connections_per_client

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use toka_host::Throttle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::evict::{GaveWay, Seat, Table, Tracked};
use crate::held::Over;
use crate::origin::{Client, Network};
use crate::rate::{Limiter, Rate};

/// How long a new connection has to send its first request head.
pub(crate) const FIRST_REQUEST: Duration = Duration::from_secs(10);

/// How long a connection may wait between an answer and the next request
/// head (and take to send a head).
pub(crate) const IDLE: Duration = Duration::from_secs(30);

/// How long an answer may wait for the client to read any of it: a client
/// that stops reading would otherwise hold the connection, and the answer
/// in the server's memory, for ever.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// How long, in all, a connection's writes may wait for its client to read
/// before any pace is asked; then a second more for every
/// [`MIN_WRITE_RATE`] bytes written. A client reading a byte now and then
/// would otherwise keep its answers, and its connection busy (never giving
/// way), as long as it liked.
const WRITE_GRACE: Duration = Duration::from_secs(30);

/// The slowest average a client may read its answers at, in bytes a second.
const MIN_WRITE_RATE: u64 = 64 << 10;

/// At most one warning about refused connections this often: clients
/// decide how many come, and must not decide how fast the log grows.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Open files the server leaves to the host (its log, archive files,
/// agents' outgoing connections, the runtime) when it fits its
/// connections into the process's limit.
const KEPT_FOR_THE_HOST: u64 = 512;

impl crate::evict::Grouped for Client {
    type Group = Network;

    fn group(&self) -> Network {
        self.network()
    }
}

/// New connections one network may open: each costs an accept and, with
/// TLS, a handshake (a signature: CPU), however soon it closes. Clients
/// keep their connections open for many requests.
const OPENING: Rate = Rate {
    per_second: 100.0,
    burst: 500.0,
};

/// The connections held and the bounds on them.
#[derive(Debug)]
pub(crate) struct Admission {
    held: Arc<Table<Client>>,
    opening: Limiter<Network>,
    refused: AtomicU64,
    warned: Mutex<Throttle>,
    warned_gave_way: Mutex<Throttle>,
}

/// The connections the server holds, and what it did with the ones it
/// did not, since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Held now (those closing after giving way included).
    pub(crate) held: usize,
    /// Closed as soon as they were accepted.
    pub(crate) refused: u64,
    /// Idle ones closed to make room for another client's.
    pub(crate) gave_way: u64,
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A bound on the connections held.
    Held(Over),
    /// The client opens them faster than [`OPENING`].
    TooFast,
}

impl Admission {
    /// At most `max` connections, `per_client` of them from one client.
    pub(crate) fn new(max: usize, per_client: usize) -> Arc<Admission> {
        Arc::new(Admission {
            held: Table::new(max, per_client),
            opening: Limiter::new(OPENING),
            refused: AtomicU64::new(0),
            warned: Mutex::new(Throttle::new(WARN_EVERY)),
            warned_gave_way: Mutex::new(Throttle::new(WARN_EVERY)),
        })
    }

    /// A place for a connection from `ip`, given back when dropped.
    fn admit(&self, ip: IpAddr) -> Result<Seat<Client>, Refusal> {
        let client = Client::of(ip);
        self.opening
            .take(client.network())
            .map_err(|_| Refusal::TooFast)?;
        let (held, gave_way) = self.held.take(client).map_err(Refusal::Held)?;
        if let Some(GaveWay { network_held }) = gave_way
            && let Some(left_out) = allow(&self.warned_gave_way)
        {
            tracing::warn!(
                network_held,
                gave_way_since_last_warning = left_out,
                "the server holds its most connections ({}): closed an idle one of the network holding the most (an IPv4 address, an IPv6 /48) to make room for another client",
                self.held.max()
            );
        }
        Ok(held)
    }

    /// Counts a refusal; warns now and then.
    fn refused(&self, why: Refusal) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(left_out) = allow(&self.warned) {
            tracing::warn!(
                reason = %refusal(why),
                refused_since_last_warning = left_out,
                "closed a connection as soon as it was accepted"
            );
        }
    }

    /// What the server holds and did since it started.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            held: self.held.count(),
            refused: self.refused.load(Ordering::Relaxed),
            gave_way: self.held.evicted(),
        }
    }
}

/// Whether a throttled warning may be given now; if so, how many were
/// left out since the last.
fn allow(throttle: &Mutex<Throttle>) -> Option<u64> {
    throttle.lock().unwrap_or_else(|e| e.into_inner()).allow()
}

/// Why a connection was closed at once, in words.
fn refusal(why: Refusal) -> String {
    match why {
        Refusal::Held(Over::All(max)) => {
            format!("the server holds its most connections ({max})")
        }
        Refusal::Held(Over::Holder(max)) => {
            format!("the client holds its most connections ({max})")
        }
        Refusal::TooFast => format!(
            "the client's network opens connections faster than {} a second",
            OPENING.per_second
        ),
    }
}

/// Where a connection comes from, as the server's listener gives it:
/// [`Listener`] admits a connection before the server sees it, so one it
/// refuses costs an accept and a close, and no task of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(SocketAddr);

impl axum_server::Address for Peer {
    type Stream = Admitted;
    type Listener = Listener;
}

/// The address handlers see (`ConnectInfo<SocketAddr>`).
impl axum::extract::connect_info::Connected<Peer> for SocketAddr {
    fn connect_info(peer: Peer) -> SocketAddr {
        peer.0
    }
}

/// The server's listener: accepts connections and holds each to an
/// [`Admission`], closing those past a bound at once.
#[derive(Debug)]
pub(crate) struct Listener {
    tcp: tokio::net::TcpListener,
    admission: Arc<Admission>,
}

impl Listener {
    /// `tcp`, admitting to `admission`.
    pub(crate) fn new(tcp: tokio::net::TcpListener, admission: Arc<Admission>) -> Self {
        Self { tcp, admission }
    }
}

impl axum_server::AddrListener<Admitted, Peer> for Listener {
    async fn bind_to(_: Peer) -> io::Result<Self> {
        // The server is always made from a listener bound beforehand.
        Err(io::Error::other("a Listener is made with Listener::new"))
    }

    async fn accept_stream(&self) -> io::Result<(Admitted, Peer)> {
        loop {
            let (stream, peer) = self.tcp.accept().await?;
            match self.admission.admit(peer.ip()) {
                Ok(held) => return Ok((Admitted { stream, held }, Peer(peer))),
                // Dropping the stream closes it.
                Err(why) => self.admission.refused(why),
            }
        }
    }

    fn get_local_addr(&self) -> io::Result<Peer> {
        self.tcp.local_addr().map(Peer)
    }
}

/// A connection the listener admitted, with its place.
#[derive(Debug)]
pub(crate) struct Admitted {
    stream: TcpStream,
    held: Seat<Client>,
}

/// The acceptor (before the TLS handshake, when there is one) that makes
/// an admitted connection [`Counted`], and its requests [`Tracked`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admit;

impl<S> Accept<Admitted, S> for Admit {
    type Stream = Counted;
    type Service = Tracked<S, Client>;
    type Future = std::future::Ready<io::Result<(Counted, Self::Service)>>;

    fn accept(&self, admitted: Admitted, service: S) -> Self::Future {
        let held = Arc::new(admitted.held);
        std::future::ready(Ok((
            Counted::new(admitted.stream, Arc::clone(&held)),
            Tracked::new(service, held),
        )))
    }
}

/// A connection holding its place. Its writes must make progress (see
/// [`WRITE_STALL`] and [`WRITE_GRACE`]); one told to give way reads the
/// end of its stream, and its writes fail.
#[derive(Debug)]
pub(crate) struct Counted<S = TcpStream> {
    stream: S,
    held: Arc<Seat<Client>>,
    /// Bytes written to the client so far.
    written: u64,
    /// Time spent waiting for the client to read so far (not counting a
    /// wait going on).
    waited: Duration,
    /// Since when a write waits for the client to read, if one does.
    waiting_since: Option<Instant>,
    /// Wakes the write at its deadline while it waits.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Counted<S> {
    fn new(stream: S, held: Arc<Seat<Client>>) -> Self {
        Self {
            stream,
            held,
            written: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// `result` of a write (of `bytes` written, once ready) as the client's
    /// pace allows: while it waits, the connection's deadline runs, and a
    /// write waiting past it is an error.
    fn paced<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
        bytes: impl Fn(&T) -> u64,
    ) -> Poll<io::Result<T>> {
        if self.held.conn().gave_way(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection gave way to another client's",
            )));
        }
        let now = Instant::now();
        if let Poll::Ready(result) = result {
            if let Some(since) = self.waiting_since.take() {
                self.waited += now - since;
            }
            if let Ok(value) = &result {
                self.written = self.written.saturating_add(bytes(value));
            }
            return Poll::Ready(result);
        }
        let since = *self.waiting_since.get_or_insert(now);
        let allowed =
            WRITE_GRACE + Duration::from_secs_f64(self.written as f64 / MIN_WRITE_RATE as f64);
        let stalled = since + WRITE_STALL;
        let slow = since + allowed.saturating_sub(self.waited);
        let deadline = stalled.min(slow);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if now < deadline && timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            if stalled <= slow {
                "the client read nothing of its answer for 30 s"
            } else {
                "the client read its answers too slowly"
            },
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.held.conn().gave_way(cx) {
            // The end of the stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.paced(cx, written, |n| *n as u64)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        self.paced(cx, flushed, |()| 0)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.paced(cx, written, |n| *n as u64)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The most connections the server may hold: `wanted`, or fewer when the
/// process's limit of open files (raised to its hard limit first, where
/// the system has one) would leave the host less than
/// [`KEPT_FOR_THE_HOST`] beside them and those closing after giving way.
/// With the reason, when fewer.
pub(crate) fn fit_to_open_files(wanted: usize) -> (usize, Option<String>) {
    let Some(limit) = raise_open_files() else {
        return (wanted, None);
    };
    let room = usize::try_from(limit.saturating_sub(KEPT_FOR_THE_HOST)).unwrap_or(usize::MAX);
    // Those closing after giving way hold their files a moment too.
    let holds = |max: usize| max.saturating_add(crate::evict::max_closing(max));
    if holds(wanted) <= room {
        return (wanted, None);
    }
    // The most `max` with `holds(max) <= room`.
    let fitted = if room >= 16 * 17 {
        room / 17 * 16
    } else {
        room.saturating_sub(16)
    }
    .max(16);
    (
        fitted,
        Some(format!(
            "the process may open {limit} files, so the server holds at most {fitted} connections instead of {wanted} ({KEPT_FOR_THE_HOST} kept for the host); raise the limit (ulimit -n) to hold more"
        )),
    )
}

/// Raises the soft limit of open files to the hard one (or, where that
/// is refused — an unlimited hard limit is above what the kernel allows —
/// to the highest of a few common ceilings it takes); the limit then.
#[cfg(unix)]
fn raise_open_files() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // No soft limit: nothing to fit into.
    let soft = limit.current?;
    let hard = limit.maximum.unwrap_or(u64::MAX);
    // Highest first; once one is no higher than the soft limit, stop.
    for wanted in [limit.maximum, Some(1 << 20), Some(1 << 16), Some(10_240)]
        .into_iter()
        .flatten()
    {
        let wanted = wanted.min(hard);
        if wanted <= soft {
            break;
        }
        let raised = Rlimit {
            current: Some(wanted),
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Some(wanted);
        }
    }
    Some(soft)
}

#[cfg(not(unix))]
fn raise_open_files() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::Admission;

    #[test]
    fn connections_are_counted_per_client_and_refusals_counted() {
        let admission = Admission::new(3, 2);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        let refused = admission.admit(a).unwrap_err();
        admission.refused(refused);
        assert_eq!(
            super::refusal(refused),
            "the client holds its most connections (2)"
        );
        assert_eq!(
            (admission.counts().held, admission.counts().refused),
            (2, 1)
        );
        drop(first);
        assert_eq!(
            (admission.counts().held, admission.counts().refused),
            (1, 1)
        );
    }

    #[test]
    fn a_client_opening_connections_fast_is_refused_past_its_burst() {
        let admission = Admission::new(1000, 1000);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        // Each closed at once: only the rate of opening bounds it.
        let opened = (0..1000).take_while(|_| admission.admit(a).is_ok()).count();
        // The burst, and what came back meanwhile (a stalled machine
        // gives some back): never all.
        assert!((500..1000).contains(&opened), "{opened}");
        let refused = admission.admit(a).unwrap_err();
        assert_eq!(
            super::refusal(refused),
            "the client's network opens connections faster than 100 a second"
        );
        assert!(admission.admit(b).is_ok(), "others open theirs");
    }

    /// A connection whose client is an in-memory pipe holding 64 KiB (its
    /// wake-ups are the runtime's own, so a paused clock sees them all).
    fn piped(admission: &Admission) -> (super::Counted<DuplexStream>, DuplexStream) {
        let (server, client) = tokio::io::duplex(64 << 10);
        let held = std::sync::Arc::new(admission.admit(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap());
        (super::Counted::new(server, held), client)
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_reads_nothing_of_fails_after_the_stall() {
        let admission = Admission::new(1, 1);
        let (mut counted, _client) = piped(&admission);
        let started = tokio::time::Instant::now();
        let chunk = vec![0u8; 1 << 20];
        let failed = loop {
            if let Err(e) = counted.write(&chunk).await {
                break e;
            }
        };
        assert_eq!(failed.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(
            failed.to_string(),
            "the client read nothing of its answer for 30 s"
        );
        assert!(started.elapsed() >= super::WRITE_STALL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_reading_its_answer_a_little_now_and_then_is_cut() {
        let admission = Admission::new(1, 1);
        let (mut counted, mut client) = piped(&admission);
        // 4 KiB every 20 s: progress within every stall, far below the pace.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4 << 10];
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(20)).await;
                if client.read_exact(&mut buf).await.is_err() {
                    return;
                }
            }
        });
        let started = tokio::time::Instant::now();
        let chunk = vec![0u8; 4 << 10];
        let failed = tokio::time::timeout(std::time::Duration::from_secs(3600), async {
            loop {
                if let Err(e) = counted.write(&chunk).await {
                    break e;
                }
            }
        })
        .await
        .expect("cut within the hour");
        assert_eq!(failed.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(failed.to_string(), "the client read its answers too slowly");
        // Not before the grace.
        assert!(started.elapsed() >= super::WRITE_GRACE);
        reader.abort();
    }

    #[tokio::test]
    async fn a_connection_told_to_give_way_reads_the_end_and_cannot_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        // The server holds 2, both of one client's: a newcomer of another
        // client takes the place of the longest idle, this one.
        let admission = Admission::new(2, 2);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let mut counted =
            super::Counted::new(stream, std::sync::Arc::new(admission.admit(a).unwrap()));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let _younger = admission.admit(a).unwrap();
        let _newcomer = admission
            .admit(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
            .unwrap();
        assert_eq!(admission.counts().gave_way, 1);
        let mut buf = [0u8; 1];
        assert_eq!(counted.read(&mut buf).await.unwrap(), 0, "the end");
        let refused = counted.write(b"x").await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionAborted);
    }
}

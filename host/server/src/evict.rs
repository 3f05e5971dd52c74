//! The connections the server holds, and which one gives way when it
//! holds its most.
//!
//! A bound on the connections held, alone, lets the first clients to come
//! keep every later one out: a few addresses, each holding its share of
//! keep-alive connections and sending a request on each now and then, held
//! them all. So when the server holds its most, a newcomer takes the place
//! of an *idle* connection (no request in progress, no answer being sent)
//! of the network holding the most — if that network holds at least two
//! more than the newcomer's, so that places only ever move towards even
//! shares. A network ([`Grouped::Group`]) is an IPv4 address or an IPv6
//! /48: one host may be given a whole /48, and would otherwise spread its
//! connections one per /64 where none could be taken. Within the network,
//! the client holding the most gives way, its longest idle connection
//! first. The one given way reads the end of its
//! stream and hyper closes it; until it has, it is still counted, and at
//! most [`Table::max_closing`] may be closing at once.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};

use crate::held::Over;

/// How many connections may be closing at once, having given way, besides
/// `max` held.
pub(crate) fn max_closing(max: usize) -> usize {
    (max / 16).max(16)
}

/// A client as the table counts it, and the network it belongs to (whose
/// connections are compared when one must give way).
pub(crate) trait Grouped: Hash + Eq + Copy + std::fmt::Debug {
    /// The network.
    type Group: Hash + Eq + Copy + std::fmt::Debug;
    /// The network of this client.
    fn group(&self) -> Self::Group;
}

/// The connections held, by client.
#[derive(Debug)]
pub(crate) struct Table<K: Grouped> {
    max: usize,
    per_client: usize,
    /// Since when idle times are counted.
    epoch: Instant,
    open: Mutex<Open<K>>,
    evicted: AtomicU64,
}

#[derive(Debug)]
struct Open<K: Grouped> {
    next: u64,
    conns: HashMap<u64, Arc<Conn<K>>>,
    /// Clients holding at least one (none with zero).
    by_client: HashMap<K, usize>,
    /// Networks holding at least one (none with zero).
    by_group: HashMap<K::Group, usize>,
    /// Connections told to give way that have not closed yet (no longer
    /// counted in `by_client` and `by_group`).
    closing: usize,
}

/// What a connection tells the table about itself.
#[derive(Debug)]
pub(crate) struct Conn<K> {
    client: K,
    /// Requests in progress, each until its answer is sent (or dropped).
    busy: AtomicUsize,
    /// When it last became idle, in milliseconds after the table's epoch.
    idle_since: AtomicU64,
    evicted: AtomicBool,
    /// Woken when the connection is told to give way.
    reader: Mutex<Option<Waker>>,
}

/// A connection's seat in the table; given back when dropped.
#[derive(Debug)]
pub(crate) struct Seat<K: Grouped> {
    table: Arc<Table<K>>,
    id: u64,
    conn: Arc<Conn<K>>,
}

/// A connection that gave way to a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GaveWay {
    /// How many its network held, with it.
    pub(crate) network_held: usize,
}

impl<K: Grouped> Table<K> {
    /// At most `max` (at least 1) held, `per_client` (at least 1, at most
    /// `max`) by one client.
    pub(crate) fn new(max: usize, per_client: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            max,
            per_client: per_client.clamp(1, max),
            epoch: Instant::now(),
            open: Mutex::new(Open {
                next: 0,
                conns: HashMap::new(),
                by_client: HashMap::new(),
                by_group: HashMap::new(),
                closing: 0,
            }),
            evicted: AtomicU64::new(0),
        })
    }

    /// The most connections held, not counting those closing.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// How many connections may be closing at once, having given way: the
    /// server holds at most `max` and these.
    pub(crate) fn max_closing(&self) -> usize {
        max_closing(self.max)
    }

    fn open(&self) -> MutexGuard<'_, Open<K>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A place for a connection of `client`: a free one, or that of an idle
    /// connection of the network holding the most (which is told to
    /// close), unless a bound is passed and none may give way.
    pub(crate) fn take(self: &Arc<Self>, client: K) -> Result<(Seat<K>, Option<GaveWay>), Over> {
        let mut open = self.open();
        if count(&open.by_client, &client) >= self.per_client {
            return Err(Over::Holder(self.per_client));
        }
        let ours = count(&open.by_group, &client.group());
        let mut gave_way = None;
        if open.conns.len() - open.closing >= self.max {
            // No network holds two more than this one's: none gives way
            // (known without looking at every connection).
            let most = open.by_group.values().copied().max().unwrap_or(0);
            if open.closing >= self.max_closing() || most < ours + 2 {
                return Err(Over::All(self.max));
            }
            let victim = open
                .conns
                .values()
                .filter(|c| c.is_idle())
                .filter_map(|c| {
                    let theirs = count(&open.by_group, &c.client.group());
                    (theirs >= ours + 2).then(|| {
                        let client = count(&open.by_client, &c.client);
                        let since = c.idle_since.load(Ordering::Relaxed);
                        ((theirs, client, Reverse(since)), c)
                    })
                })
                .max_by_key(|(key, _)| *key)
                .map(|((theirs, ..), c)| (theirs, Arc::clone(c)));
            let Some((theirs, victim)) = victim else {
                return Err(Over::All(self.max));
            };
            // It no longer counts as its client's: it is leaving.
            victim.give_way();
            open.closing += 1;
            open.leave(victim.client);
            self.evicted.fetch_add(1, Ordering::Relaxed);
            gave_way = Some(GaveWay {
                network_held: theirs,
            });
        }
        let id = open.next;
        open.next += 1;
        let conn = Arc::new(Conn {
            client,
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now()),
            evicted: AtomicBool::new(false),
            reader: Mutex::new(None),
        });
        open.conns.insert(id, Arc::clone(&conn));
        *open.by_client.entry(client).or_default() += 1;
        *open.by_group.entry(client.group()).or_default() += 1;
        Ok((
            Seat {
                table: Arc::clone(self),
                id,
                conn,
            },
            gave_way,
        ))
    }

    /// How many connections are held now (those closing included).
    pub(crate) fn count(&self) -> usize {
        self.open().conns.len()
    }

    /// How many gave way to a newcomer since the table was made.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl<K> Conn<K> {
    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0 && !self.evicted.load(Ordering::Acquire)
    }

    /// Tells the connection to close: its reader is woken and reads the end.
    fn give_way(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// Whether the connection was told to give way; if not, `cx` is woken
    /// when it is.
    pub(crate) fn gave_way(&self, cx: &Context<'_>) -> bool {
        {
            // The waker is kept before the flag is read: `give_way` sets the
            // flag before it takes the waker, so one of the two sees the other.
            let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
            if !reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *reader = Some(cx.waker().clone());
            }
        }
        self.evicted.load(Ordering::SeqCst)
    }
}

impl<K: Grouped> Seat<K> {
    /// What the connection tells the table.
    pub(crate) fn conn(&self) -> &Arc<Conn<K>> {
        &self.conn
    }
}

impl<K: Grouped> Drop for Seat<K> {
    fn drop(&mut self) {
        let mut open = self.table.open();
        open.conns.remove(&self.id);
        // Told to give way (under the same lock): already left its client.
        if self.conn.evicted.load(Ordering::SeqCst) {
            open.closing -= 1;
        } else {
            open.leave(self.conn.client);
        }
    }
}

impl<K: Grouped> Open<K> {
    /// One connection of `client` (and its network) fewer.
    fn leave(&mut self, client: K) {
        fewer(&mut self.by_client, client);
        fewer(&mut self.by_group, client.group());
    }
}

/// How many `key` holds.
fn count<T: Hash + Eq>(counts: &HashMap<T, usize>, key: &T) -> usize {
    counts.get(key).copied().unwrap_or(0)
}

/// One fewer for `key`; none kept at zero.
fn fewer<T: Hash + Eq>(counts: &mut HashMap<T, usize>, key: T) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

/// A request in progress on a connection, until its answer is sent.
#[derive(Debug)]
struct Busy<K: Grouped> {
    table: Arc<Table<K>>,
    conn: Arc<Conn<K>>,
}

impl<K: Grouped> Busy<K> {
    fn new(held: &Seat<K>) -> Self {
        held.conn.busy.fetch_add(1, Ordering::AcqRel);
        Self {
            table: Arc::clone(&held.table),
            conn: Arc::clone(&held.conn),
        }
    }
}

impl<K: Grouped> Drop for Busy<K> {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.table.now(), Ordering::Relaxed);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's service: each request keeps the connection busy until
/// its answer's body is sent or dropped.
#[derive(Debug, Clone)]
pub(crate) struct Tracked<S, K: Grouped> {
    inner: S,
    held: Arc<Seat<K>>,
}

impl<S, K: Grouped> Tracked<S, K> {
    /// `inner`, for the connection holding `held`.
    pub(crate) fn new(inner: S, held: Arc<Seat<K>>) -> Self {
        Self { inner, held }
    }
}

impl<S, R, B, K> tower::Service<R> for Tracked<S, K>
where
    S: tower::Service<R, Response = axum::http::Response<B>>,
    S::Future: Send + 'static,
    B: Body + Unpin + Send + 'static,
    K: Grouped + Send + Sync + 'static,
    K::Group: Send + Sync,
{
    type Response = axum::http::Response<Answer<B, K>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let busy = Busy::new(&self.held);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| Answer { body, _busy: busy }))
        })
    }
}

/// An answer's body, keeping its connection busy until it is dropped.
#[derive(Debug)]
pub(crate) struct Answer<B, K: Grouped> {
    body: B,
    _busy: Busy<K>,
}

impl<B: Body + Unpin, K: Grouped> Body for Answer<B, K> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::{Busy, GaveWay, Grouped, Table};
    use crate::held::Over;

    /// Each client its own network.
    impl Grouped for char {
        type Group = char;
        fn group(&self) -> char {
            *self
        }
    }

    impl Grouped for u32 {
        type Group = u32;
        fn group(&self) -> u32 {
            *self
        }
    }

    /// A client (the second) in a network (the first).
    impl Grouped for (u8, u8) {
        type Group = u8;
        fn group(&self) -> u8 {
            self.0
        }
    }

    #[test]
    fn a_newcomer_takes_the_place_of_an_idle_connection_of_the_client_holding_most() {
        let table = Table::new(4, 4);
        let a: Vec<_> = (0..3).map(|_| table.take('a').unwrap().0).collect();
        let (_b, gave_way) = table.take('b').unwrap();
        assert_eq!(gave_way, None, "a free place");
        // Full: `a` holds 3, `c` none.
        let (_c, gave_way) = table.take('c').unwrap();
        assert_eq!(gave_way, Some(GaveWay { network_held: 3 }));
        let told = || {
            a.iter()
                .filter(|h| h.conn.evicted.load(Ordering::SeqCst))
                .count()
        };
        assert_eq!(told(), 1);
        // Until it closes it is counted, but no longer as `a`'s.
        assert_eq!(table.count(), 5);
        let (_d, gave_way) = table.take('d').unwrap();
        assert_eq!(gave_way, Some(GaveWay { network_held: 2 }));
        assert_eq!(told(), 2);
        // Every client holds one: none gives way.
        assert_eq!(table.take('e').unwrap_err(), Over::All(4));
        drop(a);
        assert_eq!(table.count(), 3);
        assert_eq!(table.open().closing, 0);
        assert_eq!(table.evicted(), 2);
    }

    #[test]
    fn only_so_many_may_be_closing_at_once() {
        let table = Table::new(32, 32);
        let _a: Vec<_> = (0..32).map(|_| table.take(0u32).unwrap().0).collect();
        let _newcomers: Vec<_> = (1..=16).map(|c| table.take(c).unwrap()).collect();
        // `0` still holds 16 idle ones, but 16 are closing.
        assert_eq!(table.max_closing(), 16);
        assert_eq!(table.take(17).unwrap_err(), Over::All(32));
    }

    #[test]
    fn a_network_spread_one_connection_per_client_still_gives_way() {
        let table = Table::new(8, 8);
        // Network 1 spreads its 8 over 8 clients, one each.
        let spread: Vec<_> = (0..8).map(|c| table.take((1, c)).unwrap().0).collect();
        let (_newcomer, gave_way) = table.take((2, 0)).unwrap();
        assert_eq!(gave_way, Some(GaveWay { network_held: 8 }));
        // Within a network, the client holding the most gives way first.
        let table = Table::new(4, 4);
        let _one = table.take((1, 0)).unwrap();
        let two = [table.take((1, 1)).unwrap().0, table.take((1, 1)).unwrap().0];
        let _three = table.take((1, 2)).unwrap();
        assert_eq!(
            table.take((2, 0)).unwrap().1,
            Some(GaveWay { network_held: 4 })
        );
        let told = |held: &[super::Seat<(u8, u8)>]| {
            held.iter()
                .filter(|h| h.conn.evicted.load(Ordering::SeqCst))
                .count()
        };
        assert_eq!(told(&two), 1);
        assert_eq!(told(&spread), 1);
    }

    #[test]
    fn places_move_only_towards_even_shares_and_busy_connections_stay() {
        let table = Table::new(3, 3);
        let a1 = table.take('a').unwrap().0;
        let a2 = table.take('a').unwrap().0;
        let _b = table.take('b').unwrap().0;
        // `a` holds 2, `b` 1: `b` taking one of `a`'s would not even them.
        assert_eq!(table.take('b').unwrap_err(), Over::All(3));
        // `a`'s connections busy: neither gives way to `c`.
        let busy = [Busy::new(&a1), Busy::new(&a2)];
        assert_eq!(table.take('c').unwrap_err(), Over::All(3));
        // One idle again (the longest idle would go first): it gives way.
        drop(busy);
        let (_c, gave_way) = table.take('c').unwrap();
        assert_eq!(gave_way, Some(GaveWay { network_held: 2 }));
        // Each client's own bound still holds.
        let table = Table::new(10, 2);
        let _x = [table.take('x').unwrap(), table.take('x').unwrap()];
        assert_eq!(table.take('x').unwrap_err(), Over::Holder(2));
    }

    #[tokio::test]
    async fn a_connection_told_to_give_way_is_woken() {
        let table = Table::new(2, 2);
        let (first, _) = table.take('a').unwrap();
        let (second, _) = table.take('a').unwrap();
        let _busy = Busy::new(&second);
        let conn = std::sync::Arc::clone(first.conn());
        let waiting = tokio::spawn(std::future::poll_fn(move |cx| {
            if conn.gave_way(cx) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        }));
        tokio::task::yield_now().await;
        let (_second, gave_way) = table.take('b').unwrap();
        assert_eq!(gave_way, Some(GaveWay { network_held: 2 }));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }
}

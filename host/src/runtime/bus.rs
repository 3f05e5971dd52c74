//! What the host publishes once a batch is durable, and the bus that
//! carries it to subscribers.
//!
//! The bus keeps the committed batches some subscriber has not received
//! yet, in a ring bounded in bytes (and in batches), so a flood of large
//! observations cannot grow the host: a subscriber that falls behind further
//! than the ring reaches is told how many batches it missed
//! ([`RecvError::Lagged`]) and continues with the oldest batch still held;
//! everything it missed is in the log. A batch every subscriber has received
//! (or any batch, when nobody subscribes) is let go at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use toka_kernel::Event;

use crate::log::committed::Committed;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;

/// Roughly the bytes a batch holds: its payloads and a fixed cost per
/// event.
fn approx_bytes(batch: &Committed) -> usize {
    {
        batch
            .records
            .iter()
            .flat_map(|r| &r.events)
            .map(|e| {
                64 + match e {
                    Event::ObservationEmitted { data, topic, .. } => {
                        data.len() + topic.as_ref().map_or(0, String::len)
                    }
                    Event::TaskCompleted { output, .. } => output.len(),
                    Event::StatePut { key, value, .. } => key.len() + value.len(),
                    Event::TaskScheduled { spec, .. } => spec.description.len(),
                    Event::TaskFailed { reason, .. }
                    | Event::AgentFaulted { reason, .. }
                    | Event::AgentTerminated { reason, .. }
                    | Event::AgentQuarantined { reason, .. }
                    | Event::QuotaExceeded { reason, .. }
                    | Event::HostCondition { reason, .. } => reason.len(),
                    Event::ExtensionApplied { output, .. } => output.len(),
                    _ => 0,
                }
            })
            .sum()
    }
}

/// Bytes of committed batches the bus keeps for subscribers that are behind.
const MAX_BYTES: usize = 32 << 20;
/// Batches it keeps, whatever their size.
const MAX_BATCHES: usize = 4096;

/// The publishing side: a ring of recent batches.
#[derive(Debug)]
pub(crate) struct Bus {
    ring: Mutex<Ring>,
    /// The number of batches ever published; subscribers wait on it.
    published: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Ring {
    batches: VecDeque<(Arc<Committed>, usize)>,
    /// The number of the oldest batch held.
    first: u64,
    bytes: usize,
    closed: bool,
    /// Each live subscription's next batch number, by slot (`None`: free).
    cursors: Vec<Option<u64>>,
}

impl Ring {
    /// The number of the next batch to be published.
    fn next(&self) -> u64 {
        self.first + self.batches.len() as u64
    }

    /// Drops the oldest batches: past the bounds, and those every
    /// subscriber has received.
    fn trim(&mut self) {
        let needed = self.cursors.iter().flatten().copied().min();
        while let Some((_, bytes)) = self.batches.front() {
            let received = needed.is_none_or(|next| next > self.first);
            let over = self.batches.len() > MAX_BATCHES
                || (self.bytes > MAX_BYTES && self.batches.len() > 1);
            if !received && !over {
                break;
            }
            self.bytes -= bytes;
            self.batches.pop_front();
            self.first += 1;
        }
    }
}

impl Bus {
    pub(crate) fn new() -> Self {
        Self {
            ring: Mutex::new(Ring::default()),
            published: watch::Sender::new(0),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a durable batch, dropping the oldest ones past the bounds.
    pub(crate) fn send(&self, batch: Arc<Committed>) {
        let bytes = approx_bytes(&batch);
        let mut ring = self.ring();
        ring.batches.push_back((batch, bytes));
        ring.bytes += bytes;
        ring.trim();
        let next = ring.next();
        drop(ring);
        self.published.send_replace(next);
    }

    /// Ends every subscription once it has read what is held.
    pub(crate) fn close(&self) {
        self.ring().closed = true;
        self.published.send_modify(|_| {});
    }

    /// A subscription to every batch published from now on.
    pub(crate) fn subscribe(self: &Arc<Self>) -> Subscription {
        let mut ring = self.ring();
        let next = ring.next();
        let slot = match ring.cursors.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                ring.cursors.push(None);
                ring.cursors.len() - 1
            }
        };
        ring.cursors[slot] = Some(next);
        drop(ring);
        Subscription {
            bus: Arc::clone(self),
            slot,
            next,
            published: self.published.subscribe(),
        }
    }
}

/// Receives the committed batches of a host, in log order (see
/// [`Host::subscribe`](crate::Host::subscribe)).
#[derive(Debug)]
pub struct Subscription {
    bus: Arc<Bus>,
    /// Where the ring keeps this subscription's position.
    slot: usize,
    /// The number of the next batch to receive.
    next: u64,
    published: watch::Receiver<u64>,
}

impl Subscription {
    /// The next batch, waiting for it.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] with the number of batches this subscriber
    /// fell behind by (the next call continues with the oldest batch the
    /// bus still holds; `toka events` and the log have the rest), or
    /// [`RecvError::Closed`] once the host has stopped and everything held
    /// was received.
    pub async fn recv(&mut self) -> Result<Arc<Committed>, RecvError> {
        loop {
            match self.try_recv() {
                Ok(batch) => return Ok(batch),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                Err(TryRecvError::Empty) => {
                    if self.published.changed().await.is_err() {
                        return Err(RecvError::Closed);
                    }
                }
            }
        }
    }

    /// The next batch if one is there.
    ///
    /// # Errors
    ///
    /// As [`Subscription::recv`], or [`TryRecvError::Empty`] when nothing
    /// new has been published.
    pub fn try_recv(&mut self) -> Result<Arc<Committed>, TryRecvError> {
        let mut ring = self.bus.ring();
        if self.next < ring.first {
            let missed = ring.first - self.next;
            self.next = ring.first;
            ring.cursors[self.slot] = Some(self.next);
            return Err(TryRecvError::Lagged(missed));
        }
        let at = usize::try_from(self.next - ring.first).unwrap_or(usize::MAX);
        match ring.batches.get(at) {
            Some((batch, _)) => {
                let batch = Arc::clone(batch);
                self.next += 1;
                ring.cursors[self.slot] = Some(self.next);
                if at == 0 {
                    ring.trim();
                }
                Ok(batch)
            }
            None if ring.closed => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut ring = self.bus.ring();
        ring.cursors[self.slot] = None;
        ring.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::committed::CommittedRecord;
    use toka_kernel::{EntityId, Timestamp};

    fn batch(seq: u64, bytes: usize) -> Arc<Committed> {
        Arc::new(Committed {
            records: vec![CommittedRecord {
                seq,
                origin: EntityId::SYSTEM,
                time: Timestamp(0),
                cause: None,
                events: vec![Event::ObservationEmitted {
                    agent: EntityId::SYSTEM,
                    topic: None,
                    data: vec![0; bytes],
                }],
            }],
        })
    }

    #[test]
    fn a_slow_subscriber_lags_instead_of_growing_the_host() {
        let bus = Arc::new(Bus::new());
        let mut slow = bus.subscribe();
        // Four times what the bus holds, in 1 MiB batches.
        for seq in 0..128 {
            bus.send(batch(seq, 1 << 20));
        }
        assert!(bus.ring().bytes <= MAX_BYTES);
        let Err(TryRecvError::Lagged(missed)) = slow.try_recv() else {
            panic!("the slow subscriber did not lag");
        };
        let first = slow.try_recv().unwrap().records[0].seq;
        assert_eq!(first, missed, "it continues with the oldest batch held");
        let mut last = first;
        while let Ok(batch) = slow.try_recv() {
            assert_eq!(batch.records[0].seq, last + 1, "in order, no gaps");
            last += 1;
        }
        assert_eq!(last, 127);
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(
            bus.ring().batches.len(),
            0,
            "what every subscriber received is let go"
        );
        bus.close();
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Closed)));
    }

    #[test]
    fn batches_are_kept_only_for_subscribers_that_still_need_them() {
        let bus = Arc::new(Bus::new());
        bus.send(batch(1, 10));
        assert_eq!(
            bus.ring().batches.len(),
            0,
            "nobody subscribes: nothing kept"
        );
        let mut fast = bus.subscribe();
        let mut slow = bus.subscribe();
        bus.send(batch(2, 10));
        bus.send(batch(3, 10));
        assert_eq!(fast.try_recv().unwrap().records[0].seq, 2);
        assert_eq!(fast.try_recv().unwrap().records[0].seq, 3);
        assert_eq!(bus.ring().batches.len(), 2, "the slow one still needs both");
        assert_eq!(slow.try_recv().unwrap().records[0].seq, 2);
        assert_eq!(bus.ring().batches.len(), 1);
        drop(slow);
        assert_eq!(
            bus.ring().batches.len(),
            0,
            "a dropped subscription holds nothing"
        );
        bus.send(batch(4, 10));
        assert_eq!(fast.try_recv().unwrap().records[0].seq, 4);
        let late = bus.subscribe();
        assert!(
            matches!({ late }.try_recv(), Err(TryRecvError::Empty)),
            "a new subscriber starts at the next batch"
        );
    }

    #[tokio::test]
    async fn recv_waits_for_the_next_batch() {
        let bus = Arc::new(Bus::new());
        let mut sub = bus.subscribe();
        let sender = Arc::clone(&bus);
        let waiter = tokio::spawn(async move { sub.recv().await.map(|b| b.records[0].seq) });
        tokio::task::yield_now().await;
        sender.send(batch(7, 1));
        assert_eq!(waiter.await.unwrap().unwrap(), 7);
    }
}

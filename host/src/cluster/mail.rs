//! Tasks and configuration across cells on JetStream (see
//! [`toka_kernel::Parcel`]).
//!
//! Each cell has an inbox stream, `TOKA_INBOX_<n>`, subjects
//! `toka.inbox.<n>.<origin cell>`. A cell's host runs two carriers:
//!
//! - the *forwarder* publishes the cell's outbox (durable records only) in
//!   order, one parcel at a time (a task to its agent's cell, a change of
//!   the configuration to every other cell), each with `Nats-Msg-Id` =
//!   origin cell and record, re-sent until JetStream acknowledges it; then
//!   it records
//!   [`Operation::MarkSent`](toka_kernel::Operation::MarkSent). A host that
//!   dies in between leaves the parcels in the outbox; the next owner sends
//!   them again and JetStream's duplicate window (or the target's record of
//!   what it took) drops the copies.
//! - the *receiver* reads the cell's inbox stream by sequence number from
//!   where the cell's state says it stopped and takes each parcel with
//!   [`Operation::DeliverTask`](toka_kernel::Operation::DeliverTask) (or,
//!   a task past the cell's state budget,
//!   [`Operation::RefuseDelivery`](toka_kernel::Operation::RefuseDelivery)),
//!   which remembers the last record taken from each origin cell: a copy is
//!   skipped, never applied twice. It asks for up to [`READ_AHEAD`]
//!   messages at once and takes each in without waiting for the log;
//!   once it took in everything the stream holds, it waits until the log
//!   holds what it took, then purges the stream of it (a host that dies
//!   before reads it again, and the next owner skips what its log holds).
//!   A message the stream should hold (its sequence is between the
//!   stream's first and last) but its leader says it lacks is asked for
//!   again, not skipped: a leader just elected may not have applied it
//!   yet. Only after [`GIVE_UP_ON_HOLE`] is it taken for deleted by
//!   something other than Toka, skipped, and logged as an error.

use std::time::Duration;

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use toka_kernel::{Cell, Delivery, Parcel};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::connection::{Cluster, ClusterError, kept_stream};
use crate::runtime::error::HostError;
use crate::runtime::mail::CellMail;
use crate::throttle::Throttle;

/// Parcels forwarded before one `MarkSent` record.
const BATCH: usize = 256;
/// How long a carrier waits without a wake-up before it looks again, and
/// after a failure before it tries again.
const IDLE: Duration = Duration::from_millis(500);

/// How long the receiver asks again for a message its stream should hold
/// (its sequence is between the stream's first and last) before it skips
/// it as deleted by something other than Toka.
const GIVE_UP_ON_HOLE: Duration = Duration::from_secs(60);
/// How soon it asks again.
const RETRY_MISSING: Duration = Duration::from_millis(100);

/// Inbox messages asked for at once: the receiver takes them in one after
/// another, and each waits for the log only when the stream is caught up
/// with (before it is purged). Up to 64 × 4 KiB tasks in flight.
const READ_AHEAD: u64 = 64;

/// At most one warning this often about tasks the cell refused or could
/// not take: agents of other cells decide how many such tasks arrive, and
/// must not decide how fast the host's log grows.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Cell `cell`'s inbox stream.
pub(crate) fn inbox_stream(cell: u32) -> String {
    format!("TOKA_INBOX_{cell}")
}

/// The subject what `from` sends `cell` is published on.
fn inbox_subject(cell: u16, from: u16) -> String {
    format!("toka.inbox.{cell}.{from}")
}

/// The core NATS subject a sender wakes cell `cell`'s receiver on, once
/// JetStream stored a parcel for it.
fn ready_subject(cell: u16) -> String {
    format!("toka.inbox-ready.{cell}")
}

/// Creates cell `cell`'s inbox stream.
pub(crate) async fn create_inbox(
    js: &jetstream::Context,
    cell: u32,
    replicas: usize,
) -> Result<(), ClusterError> {
    // Purged by the receiver up to what the cell took in (its log holds
    // each parcel it took): the inbox holds what is on its way, not the
    // cluster's history.
    let config = jetstream::stream::Config {
        deny_purge: false,
        ..kept_stream(inbox_stream(cell), format!("toka.inbox.{cell}.*"), replicas)
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| ClusterError::js(format!("creating cell {cell}'s inbox stream"), e))?;
    Ok(())
}

/// A parcel on the wire (postcard).
#[derive(Debug, Serialize, Deserialize)]
struct Letter {
    from_cell: u16,
    from_seq: u64,
    parcel: Parcel,
}

/// A cell host's two carriers; both stop when this is dropped, or when
/// the host stops.
#[derive(Debug)]
pub struct Mailroom {
    carriers: [JoinHandle<()>; 2],
    /// Set once the receiver took in everything its inbox held when it
    /// started.
    caught_up: watch::Receiver<bool>,
}

impl Drop for Mailroom {
    fn drop(&mut self) {
        for carrier in &self.carriers {
            carrier.abort();
        }
    }
}

impl Mailroom {
    /// Starts forwarding the cell's outbox and taking in its inbox, on the
    /// current tokio runtime. `None` when the host's log is no cell's.
    #[must_use]
    pub fn start(cluster: &Cluster, mail: CellMail) -> Option<Mailroom> {
        let cell = mail.cell()?;
        let (done, caught_up) = watch::channel(false);
        let forward = tokio::spawn(forward(cluster.clone(), mail.clone(), cell));
        let receive = tokio::spawn(receive(cluster.clone(), mail, cell, done));
        Some(Mailroom {
            carriers: [forward, receive],
            caught_up,
        })
    }

    /// Resolves once the cell took in everything its inbox held when the
    /// mailroom started — among it the configuration changes (revocations)
    /// made while no host served the cell: a host serves the cell only
    /// after.
    pub async fn caught_up(&self) {
        let mut caught_up = self.caught_up.clone();
        // The sender lives as long as the receiver: an error means it ended
        // (the host stopped), and then nothing is served anyway.
        let _ = caught_up.wait_for(|done| *done).await;
    }
}

/// Waits for a committed batch or [`IDLE`]; false once the host stopped.
async fn next_batch(seen: &mut tokio::sync::watch::Receiver<u64>) -> bool {
    tokio::select! {
        changed = seen.changed() => changed.is_ok(),
        () = tokio::time::sleep(IDLE) => true,
    }
}

/// The forwarder: the outbox, in order, to the target cells' inboxes.
async fn forward(cluster: Cluster, mail: CellMail, cell: Cell) {
    let mut seen = mail.watch();
    loop {
        let pending = mail.outbox(BATCH);
        let Some(&(through, _)) = pending.last() else {
            if !next_batch(&mut seen).await {
                return;
            }
            continue;
        };
        for (from_seq, parcel) in pending {
            let targets: Vec<u16> = parcel.targets(cell).collect();
            let letter = Letter {
                from_cell: cell.index,
                from_seq,
                parcel,
            };
            for target in targets {
                send(&cluster, target, &letter).await;
            }
        }
        match mail.mark_sent(through).await {
            Ok(()) => {}
            Err(HostError::Stopped(_)) => return,
            Err(e) => {
                tracing::warn!(error = %e, cell = cell.index, "recording sent tasks failed");
                tokio::time::sleep(IDLE).await;
            }
        }
    }
}

/// Publishes `letter` to cell `target`'s inbox until JetStream acknowledges
/// it (the same `Nats-Msg-Id` every time: it is stored once).
async fn send(cluster: &Cluster, target: u16, letter: &Letter) {
    let payload: bytes::Bytes = postcard::to_allocvec(letter)
        .expect("a letter is plain data")
        .into();
    let id = format!("{}-{}", letter.from_cell, letter.from_seq);
    let subject = inbox_subject(target, letter.from_cell);
    let mut failures = 0u32;
    loop {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(&id);
        let acked = async {
            cluster
                .js()
                .send_publish(subject.clone(), publish)
                .await?
                .await
        }
        .await;
        match acked {
            Ok(_) => {
                // The target's receiver is woken once the parcel is stored
                // (a lost wake-up costs it IDLE).
                let _ = cluster
                    .client()
                    .publish(ready_subject(target), bytes::Bytes::new())
                    .await;
                return;
            }
            Err(e) => {
                failures += 1;
                // Once, then every 20th: a missing stream (a target cell
                // that is down, a cluster created before tasks crossed
                // cells) retries for as long as it takes.
                if failures % 20 == 1 {
                    tracing::warn!(error = %e, %subject, failures, "sending to another cell failed; trying again");
                }
                tokio::time::sleep(IDLE).await;
            }
        }
    }
}

/// The receiver: the cell's inbox stream, in order, into the cell.
async fn receive(cluster: Cluster, mail: CellMail, cell: Cell, done: watch::Sender<bool>) {
    let name = inbox_stream(u32::from(cell.index));
    let stream = loop {
        match cluster.js().get_stream(&name).await {
            Ok(stream) => break stream,
            Err(e) => {
                tracing::warn!(error = %e, stream = %name, "the cell's inbox stream cannot be read; trying again");
                tokio::time::sleep(IDLE * 10).await;
            }
        }
    };
    // Everything the inbox holds now is taken in before the host serves.
    let end = loop {
        match bounds(&stream).await {
            Some((_, last)) => break last,
            None => tokio::time::sleep(IDLE).await,
        }
    };
    // Senders say when a parcel is stored: a wake-up, no more (a missed one
    // costs IDLE).
    let mut wake = cluster
        .client()
        .subscribe(ready_subject(cell.index))
        .await
        .ok();
    let mut next = mail.inbox_read_from();
    // The last sequence the stream said it held: messages up to it are
    // asked for together.
    let mut held = end;
    let mut seen = mail.watch();
    // Since when the message at `next` is missing though the stream's last
    // sequence is past it, and whether that was logged.
    let mut missing_since: Option<(tokio::time::Instant, bool)> = None;
    // What a former owner took but had not purged yet goes at the first
    // purge.
    let mut purge = Purge::new();
    // The record of the last parcel taken in, until it is known durable:
    // the stream is purged only of what the log holds.
    let mut unflushed = None;
    let mut warn = Throttle::new(WARN_EVERY);
    loop {
        if next > end {
            done.send_replace(true);
        }
        if next > held {
            match bounds(&stream).await {
                // Purged: taken in (or skipped) by this cell before.
                Some((first, _)) if next < first => {
                    next = first;
                    continue;
                }
                Some((_, last)) => held = last,
                None => {}
            }
        }
        if next <= held {
            match read(&stream, &mail, cell, &mut next, held, &mut warn).await {
                Read::All(taken) => {
                    unflushed = taken.or(unflushed);
                    missing_since = None;
                    continue;
                }
                Read::Stopped => return,
                Read::Failed(taken, e) => {
                    unflushed = taken.or(unflushed);
                    if e.kind() != jetstream::stream::RawMessageErrorKind::NoMessageFound {
                        tracing::warn!(error = %e, cell = cell.index, position = next, "reading the inbox failed");
                    } else {
                        match bounds(&stream).await {
                            Some((first, _)) if next < first => {
                                next = first;
                                missing_since = None;
                                continue;
                            }
                            // The stream holds it, but its leader did not
                            // say so: it may have been stored between the
                            // two questions (asked again at once), or a
                            // leader just elected may not have applied it
                            // yet (asked again, never skipped on one
                            // answer).
                            Some((_, last)) if next <= last => {
                                held = last;
                                let Some((since, warned)) = &mut missing_since else {
                                    missing_since = Some((tokio::time::Instant::now(), false));
                                    continue;
                                };
                                if !*warned {
                                    *warned = true;
                                    tracing::warn!(
                                        cell = cell.index,
                                        position = next,
                                        last,
                                        "an inbox message the stream holds was not found; asking again"
                                    );
                                }
                                if since.elapsed() >= GIVE_UP_ON_HOLE {
                                    // Not made by Toka: something outside
                                    // it deleted a message of the stream.
                                    tracing::error!(
                                        cell = cell.index,
                                        position = next,
                                        "an inbox message is missing from the stream; skipped"
                                    );
                                    missing_since = None;
                                    next += 1;
                                    continue;
                                }
                                tokio::time::sleep(RETRY_MISSING).await;
                                continue;
                            }
                            Some((_, last)) => held = last,
                            None => {}
                        }
                    }
                }
            }
        }
        if next > held {
            // Everything the stream holds was taken in: it is purged of it
            // once the log holds it. NATS servers before 2.9.18 replay a
            // purge below a sequence, when a node restarts, as a purge of
            // all the stream held at the time (nats-server#4196): a purge
            // with messages still waiting would lose them on that node.
            if let Some(seq) = unflushed.take()
                && mail.durable(seq).await.is_err()
            {
                return;
            }
            purge.up_to(&stream, next, cell).await;
        }
        let woken = async {
            match wake.as_mut() {
                Some(wake) => {
                    futures_util::StreamExt::next(wake).await;
                }
                None => std::future::pending().await,
            }
        };
        // The host's commits are no reason to look again, only its end.
        let stopped = async { while seen.changed().await.is_ok() {} };
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(IDLE) => {}
            () = stopped => return,
        }
    }
}

/// How a run of reads ended.
enum Read {
    /// Every message asked for was taken in (or skipped); the record of
    /// the last one taken in, if any.
    All(Option<u64>),
    /// The message at the place reached could not be read; the record of
    /// the last one taken in before it, if any.
    Failed(Option<u64>, jetstream::stream::RawMessageError),
    /// The host stopped.
    Stopped,
}

/// Reads the inbox messages from `next` to `held` (at most [`READ_AHEAD`]),
/// all asked for at once, and takes them in in order, moving `next` past
/// each; stops at the first that cannot be read.
async fn read(
    stream: &jetstream::stream::Stream,
    mail: &CellMail,
    cell: Cell,
    next: &mut u64,
    held: u64,
    warn: &mut Throttle,
) -> Read {
    let ahead = (held + 1 - *next).min(READ_AHEAD);
    let mut messages = futures_util::StreamExt::buffered(
        futures_util::StreamExt::map(futures_util::stream::iter(*next..*next + ahead), |seq| {
            stream.get_raw_message(seq)
        }),
        usize::try_from(ahead).unwrap_or(1),
    );
    let mut taken = None;
    while let Some(result) = futures_util::StreamExt::next(&mut messages).await {
        match result {
            Ok(raw) => match take_in(mail, cell, *next, &raw, warn).await {
                Ok(seq) => {
                    taken = seq.or(taken);
                    *next += 1;
                }
                Err(()) => return Read::Stopped,
            },
            Err(e) => return Read::Failed(taken, e),
        }
    }
    Read::All(taken)
}

/// Takes in the inbox message at `position`: the record that took it
/// (none when it was skipped: a copy, or not a parcel of its origin), or
/// `Err` once the host stopped.
async fn take_in(
    mail: &CellMail,
    cell: Cell,
    position: u64,
    raw: &jetstream::message::StreamMessage,
    warn: &mut Throttle,
) -> Result<Option<u64>, ()> {
    let letter = match postcard::from_bytes::<Letter>(&raw.payload) {
        // Each origin publishes on its own subject.
        Ok(letter) if raw.subject.as_str() == inbox_subject(cell.index, letter.from_cell) => letter,
        Ok(letter) => {
            tracing::warn!(cell = cell.index, position, from = letter.from_cell, subject = %raw.subject, "an inbox message names another origin than its subject; skipped");
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!(error = %e, cell = cell.index, position, "an inbox message is not a parcel; skipped");
            return Ok(None);
        }
    };
    if mail.taken(letter.from_cell, letter.from_seq) {
        return Ok(None);
    }
    let delivery = Delivery {
        from_cell: letter.from_cell,
        from_seq: letter.from_seq,
        position,
        parcel: letter.parcel,
    };
    match mail.take_in(delivery).await {
        Ok(taken) => {
            if !taken.queued
                && let Some(unlogged) = warn.allow()
            {
                tracing::warn!(
                    cell = cell.index,
                    position,
                    from = letter.from_cell,
                    unlogged,
                    "a task another cell sent was refused (its task_refused event says why; `unlogged`: refusals and failures not logged since the last warning)"
                );
            }
            Ok(Some(taken.seq))
        }
        Err(HostError::Kernel(e)) => {
            if let Some(unlogged) = warn.allow() {
                tracing::warn!(error = %e, cell = cell.index, position, unlogged, "an inbox parcel was not taken");
            }
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(error = %e, cell = cell.index, "the inbox stopped");
            Err(())
        }
    }
}

/// Purging the inbox stream of what the cell took in: its log holds each
/// parcel it took (and a copy sent again is recognised by the cell's state,
/// not by the stream), so the stream keeps only what is on its way.
struct Purge {
    /// Every message below this one is purged.
    below: u64,
    /// Not asked again before this, after the stream refused (one created
    /// before inboxes were purged denies it; a stream between leaders
    /// refuses for a moment).
    refused_until: Option<tokio::time::Instant>,
    /// Refusals in a row: each doubles the wait, from 1 s to 5 minutes;
    /// the first is logged as a warning.
    refusals: u32,
}

impl Purge {
    fn new() -> Purge {
        Purge {
            below: 1,
            refused_until: None,
            refusals: 0,
        }
    }

    /// Purges the messages below `next`: all of them taken in, and the
    /// log holding them (the receiver waits for it first).
    async fn up_to(&mut self, stream: &jetstream::stream::Stream, next: u64, cell: Cell) {
        let now = tokio::time::Instant::now();
        if next <= self.below || self.refused_until.is_some_and(|until| now < until) {
            return;
        }
        match stream.purge().sequence(next).await {
            Ok(_) => {
                self.below = next;
                self.refused_until = None;
                self.refusals = 0;
            }
            // The stream said no.
            Err(e) if matches!(e.kind(), jetstream::stream::PurgeErrorKind::JetStream(_)) => {
                if self.refusals == 0 {
                    tracing::warn!(error = %e, cell = cell.index, "the inbox stream refused a purge; it keeps what the cell took in until a purge succeeds");
                }
                let wait =
                    Duration::from_secs(1 << self.refusals.min(9)).min(Duration::from_secs(300));
                self.refused_until = Some(now + wait);
                self.refusals = self.refusals.saturating_add(1);
            }
            // No answer: tried again at the next idle round.
            Err(e) => tracing::debug!(error = %e, cell = cell.index, "purging the inbox failed"),
        }
    }
}

/// The stream's first and last sequence numbers, if they can be read
/// (first is last + 1 when it is empty).
async fn bounds(stream: &jetstream::stream::Stream) -> Option<(u64, u64)> {
    let mut stream = stream.clone();
    stream
        .info()
        .await
        .ok()
        .map(|info| (info.state.first_sequence, info.state.last_sequence))
}

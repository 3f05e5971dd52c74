//! Cells on NATS JetStream (DESIGN.md §17): the log of a *cell* — one
//! sequencer, one log, one total order, what a data dir is on one machine —
//! kept on a JetStream stream, so any host of the cluster can load any cell.
//!
//! - [`Cluster`](connection::Cluster): the connection, and the layout every host agrees on
//!   (stream, bucket and subject names; the cluster's recorded
//!   configuration).
//! - [`CellStore`](cell_store::CellStore): a cell's log as an [`EventStore`](crate::EventStore):
//!   a batch is one JetStream message published with the expected last
//!   sequence of the cell's subject, so a host that lost the cell cannot
//!   append (fencing); blobs, tokens, snapshots and oversized batches live in
//!   the cell's object stream.
//! - [`Lease`](lease::Lease): who owns a cell, a key in a JetStream KV bucket whose
//!   entries expire (the lease's time to live); hosts announce themselves
//!   in the same bucket, so each can take its share of the cells.
//! - [`Mailroom`](mail::Mailroom): tasks across cells — a cell's outbox forwarded to the
//!   other cells' inbox streams, its own inbox taken into its log.

pub(crate) mod cell_store;
pub(crate) mod connection;
pub(crate) mod lease;
pub(crate) mod mail;
pub(crate) mod setup;

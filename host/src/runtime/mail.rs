//! A host's side of what crosses cells (tasks, see
//! [`toka_kernel::Outgoing`]; changes of the configuration, see
//! [`toka_kernel::Change`]): what the cluster's carriers read from and
//! record into a cell's host.

use std::sync::Arc;

use toka_kernel::{Cell, Delivery, EntityId, Operation, Parcel};

use crate::runtime::error::HostError;
use crate::runtime::inner::HostInner;
use crate::runtime::sequencer::Attachments;

/// A handle on a cell host's mail (from [`Host::mail`](crate::Host::mail)):
/// its outbox to forward and its inbox to take in. It outlives no host's
/// work: once the host stops, every call fails with
/// [`HostError::Stopped`].
#[derive(Clone)]
pub struct CellMail {
    inner: Arc<HostInner>,
}

impl std::fmt::Debug for CellMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellMail")
            .field("cell", &self.cell())
            .finish_non_exhaustive()
    }
}

impl CellMail {
    pub(crate) fn new(inner: Arc<HostInner>) -> CellMail {
        CellMail { inner }
    }

    /// The cell the host's log is, if it is one's.
    #[must_use]
    pub fn cell(&self) -> Option<Cell> {
        self.inner.store.cell()
    }

    /// Up to `limit` of the outbox's parcels in order, only durable ones:
    /// (the sequence number of the record that sent it, the parcel).
    #[must_use]
    pub fn outbox(&self, limit: usize) -> Vec<(u64, Parcel)> {
        let sequencer = &self.inner.sequencer;
        let durable = sequencer.committed();
        sequencer.read(|kernel| {
            kernel
                .state()
                .outbox()
                .take_while(|(seq, _)| *seq <= durable)
                .take(limit)
                .map(|(seq, parcel)| (seq, parcel.clone()))
                .collect()
        })
    }

    /// Whether what `from_cell`'s record `from_seq` sent was taken into
    /// this cell.
    #[must_use]
    pub fn taken(&self, from_cell: u16, from_seq: u64) -> bool {
        self.inner
            .sequencer
            .read(|kernel| kernel.state().delivered(from_cell, from_seq))
    }

    /// Where the cell reads its inbox on: after the last parcel it took.
    #[must_use]
    pub fn inbox_read_from(&self) -> u64 {
        self.inner
            .sequencer
            .read(|kernel| kernel.state().inbox_read_from())
    }

    /// A receiver of the last committed sequence number: a carrier waits
    /// on it for work (it closes when the host stops).
    #[must_use]
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.sequencer.published()
    }

    /// Records that the outbox was handed to JetStream up to record
    /// `through`; returns once durable.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the outbox holds nothing up to `through`;
    /// [`HostError::Stopped`] when the host stopped.
    pub async fn mark_sent(&self, through: u64) -> Result<(), HostError> {
        let sequencer = &self.inner.sequencer;
        let receipt = sequencer
            .submit_system(
                EntityId::SYSTEM,
                Operation::MarkSent { through },
                Attachments::default(),
            )
            .await??;
        sequencer.wait_durable(receipt.seq).await?;
        Ok(())
    }

    /// Takes in what another cell sent (a task queued for its agent, a
    /// change of the configuration applied, or either recorded as
    /// refused; a task that would pass the host's state budget is refused,
    /// see [`HostConfig::state_budget`](crate::HostConfig::state_budget));
    /// returns once durable: false when it was a task and the cell refused
    /// it (its `task_refused` event says why).
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when it was taken before or is not this
    /// cell's; [`HostError::Stopped`] when the host stopped.
    pub async fn deliver(&self, delivery: Delivery) -> Result<bool, HostError> {
        let taken = self.take_in(delivery).await?;
        self.durable(taken.seq).await?;
        Ok(taken.queued)
    }

    /// As [`CellMail::deliver`], but returns once applied: the receiver
    /// takes a run of parcels in and waits for the log once, with
    /// [`CellMail::durable`] for the last one, before the stream is purged
    /// of them (a host that dies before reads them again).
    ///
    /// # Errors
    ///
    /// As [`CellMail::deliver`].
    pub(crate) async fn take_in(&self, delivery: Delivery) -> Result<Taken, HostError> {
        let task = matches!(delivery.parcel, Parcel::Task(_));
        let receipt = self.inner.sequencer.deliver(delivery).await??;
        Ok(Taken {
            seq: receipt.seq,
            queued: !task || receipt.created.is_some(),
        })
    }

    /// Waits until the record at `seq` is durable.
    ///
    /// # Errors
    ///
    /// [`HostError::Stopped`] when the host stopped.
    pub(crate) async fn durable(&self, seq: u64) -> Result<(), HostError> {
        Ok(self.inner.sequencer.wait_durable(seq).await?)
    }
}

/// A parcel taken in ([`CellMail::take_in`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken {
    /// The record that took it.
    pub(crate) seq: u64,
    /// False when it was a task and the cell refused it.
    pub(crate) queued: bool,
}

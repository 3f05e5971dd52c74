//! A committed record as readers see it: where it is in the log, who
//! submitted it when, and what it did.

use toka_kernel::{EntityId, Event, OpKey, Timestamp};

/// One committed record: the command's origin and time, and its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedRecord {
    /// Position in the log.
    pub seq: u64,
    /// Who submitted the command.
    pub origin: EntityId,
    /// The command's logical time.
    pub time: Timestamp,
    /// The task and operation index, when an agent submitted it in a task.
    pub cause: Option<OpKey>,
    /// What the command did.
    pub events: Vec<Event>,
}

/// A batch of records that is durable: published on the host's bus (see
/// [`Host::subscribe`](crate::Host::subscribe)) only after its commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The records, in log order.
    pub records: Vec<CommittedRecord>,
}

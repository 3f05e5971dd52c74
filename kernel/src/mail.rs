//! Tasks across the cells of a cluster.
//!
//! A cell's kernel knows only its own agents. A task scheduled for an agent
//! whose id names another cell ([`EntityId::cell`]) is *sent*: the record
//! that schedules it puts it in the cell's outbox (state, so it survives a
//! failover) and mints its task id in the target cell's id space. The host
//! hands the outbox to JetStream in order ([`Operation::MarkSent`] empties
//! it up to a sequence number once JetStream acknowledged); the target's
//! host applies each one it receives with [`Operation::DeliverTask`], which
//! remembers the last sequence number taken from each origin cell, so a
//! task re-sent after a failover is applied once. A delivery that cannot be
//! queued (no such agent, a full queue) is consumed all the same and
//! recorded as [`Event::TaskRefused`](crate::Event::TaskRefused).
//!
//! [`Operation::MarkSent`]: crate::Operation::MarkSent
//! [`Operation::DeliverTask`]: crate::Operation::DeliverTask

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, EntityId, TaskId};
use crate::operation::TaskSpec;

/// The most tasks a cell's outbox holds: beyond it, scheduling into other
/// cells is refused ([`Limit::Outbox`](crate::Limit::Outbox)) until the
/// host has handed the outbox to JetStream.
pub const MAX_OUTBOX: usize = 4096;

/// The cell of a cluster a log belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cell {
    /// The cell's index: the top 16 bits of every id it mints.
    pub index: u16,
    /// How many cells the cluster has (`index < cells`).
    pub cells: u16,
}

/// A task scheduled in one cell for an agent of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Its id, in the target cell's id space.
    pub task: TaskId,
    /// The agent that will run it (its id names the target cell).
    pub agent: AgentId,
    /// Who scheduled it, in the origin cell.
    pub by: EntityId,
    /// What to do.
    pub spec: TaskSpec,
}

/// A task another cell sent, as the target cell applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The cell that sent it.
    pub from_cell: u16,
    /// The sequence number of the record that scheduled it there.
    pub from_seq: u64,
    /// Where it is in the target cell's inbox stream (JetStream's sequence
    /// number): where the target's host reads on after a restart.
    pub position: u64,
    /// The task.
    pub task: Outgoing,
}

/// The last task taken from one origin cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Received {
    /// Its sequence number in the origin cell.
    pub(crate) seq: u64,
    /// Its position in this cell's inbox stream.
    pub(crate) position: u64,
}

/// A cell's mail: what it sends and what it has taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mail {
    /// Tasks for other cells not yet handed to JetStream, by the sequence
    /// number of the record that scheduled them.
    pub(crate) outbox: BTreeMap<u64, Outgoing>,
    /// The last task taken from each origin cell.
    pub(crate) inbox: BTreeMap<u16, Received>,
}

impl Mail {
    /// Whether the task from `from_cell`'s record `from_seq` was taken
    /// already (tasks of one origin arrive in its log's order).
    pub(crate) fn taken(&self, from_cell: u16, from_seq: u64) -> bool {
        self.inbox
            .get(&from_cell)
            .is_some_and(|last| from_seq <= last.seq)
    }

    /// Where to read the inbox stream on: after the last position taken.
    pub(crate) fn read_from(&self) -> u64 {
        self.inbox.values().map(|r| r.position).max().unwrap_or(0) + 1
    }
}

//! Tasks and configuration across the cells of a cluster.
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
//! recorded as [`crate::Event::TaskRefused`]; so is one the host refuses
//! ([`Operation::RefuseDelivery`]: its memory for agent state would pass
//! its budget).
//!
//! The cluster's configuration — revocations and the trust store — is
//! changed in one cell, [`CONFIG_CELL`], and nowhere else: each change is
//! applied there and put in its outbox for every other cell, which applies
//! it when it takes it in, in the configuration cell's order.
//!
//! [`Operation::MarkSent`]: crate::Operation::MarkSent
//! [`Operation::DeliverTask`]: crate::Operation::DeliverTask
//! [`Operation::RefuseDelivery`]: crate::Operation::RefuseDelivery

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::apply::{Env, check_count, check_size};
use crate::error::{EntityKind, KernelError};
use crate::event::Event;
use crate::id::{AgentId, EntityId, TaskId};
use crate::limits::{Limit, Limits};
use crate::operation::{OpKind, TaskSpec};
use crate::package::Publisher;
use crate::state::WorldState;

/// The most tasks a cell's outbox holds: beyond it, scheduling into other
/// cells is refused ([`crate::Limit::Outbox`]) until the
/// host has handed the outbox to JetStream.
pub const MAX_OUTBOX: usize = 4096;

/// The most tasks one agent may have waiting in its cell's outbox (the
/// operators' share is [`MAX_OUTBOX`]).
pub const MAX_OUTBOX_PER_AGENT: usize = 256;

/// The cell where a cluster's configuration (revocations, the trust
/// store) is changed; every other cell applies what it sends.
pub const CONFIG_CELL: u16 = 0;

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

/// A change of the cluster's configuration, made in [`CONFIG_CELL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Revoke every token carrying this revocation id.
    Revoke {
        /// The revocation id.
        revocation_id: Vec<u8>,
    },
    /// Add a publisher to the trust store.
    Trust {
        /// The publisher and its key.
        publisher: Publisher,
    },
    /// Remove a publisher from the trust store (its packages' install
    /// tokens are revoked).
    Distrust {
        /// The publisher's trust-store name.
        name: String,
    },
}

/// What one cell sends others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Parcel {
    /// A task for one agent of the cell its id names.
    Task(Outgoing),
    /// A change of the configuration, from [`CONFIG_CELL`] to every other
    /// cell.
    Config(Change),
}

impl Parcel {
    /// The cells it goes to, of `cell`'s cluster.
    pub fn targets(&self, cell: Cell) -> impl Iterator<Item = u16> + '_ {
        let (first, end) = match self {
            Parcel::Task(task) => (task.agent.cell(), task.agent.cell() + 1),
            Parcel::Config(_) => (0, cell.cells),
        };
        (first..end).filter(move |target| *target != cell.index)
    }
}

/// What another cell sent, as the target cell applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The cell that sent it.
    pub from_cell: u16,
    /// The sequence number of the record that scheduled it there.
    pub from_seq: u64,
    /// Where it is in the target cell's inbox stream (JetStream's sequence
    /// number): where the target's host reads on after a restart.
    pub position: u64,
    /// What was sent.
    pub parcel: Parcel,
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
    /// What waits to be handed to JetStream for other cells, by the
    /// sequence number of the record that sent it.
    pub(crate) outbox: BTreeMap<u64, Parcel>,
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

impl WorldState {
    /// A task for `agent` of another cell: minted in that cell's id space
    /// and put in the outbox.
    pub(crate) fn send_task(
        &mut self,
        origin: EntityId,
        agent: AgentId,
        spec: TaskSpec,
        cell: Cell,
        seq: u64,
    ) -> Result<Vec<Event>, KernelError> {
        let target = agent.cell();
        if target >= cell.cells {
            // An id naming a cell the cluster does not have names no agent.
            return Err(KernelError::unknown(EntityKind::Agent, agent));
        }
        check_count(
            Limit::Outbox,
            MAX_OUTBOX as u64,
            self.mail.outbox.len() as u64 + 1,
        )?;
        if origin != EntityId::SYSTEM {
            // One agent cannot fill the outbox for every other.
            let own = self
                .mail
                .outbox
                .values()
                .filter(|p| matches!(p, Parcel::Task(t) if t.by == origin))
                .count();
            check_count(Limit::Outbox, MAX_OUTBOX_PER_AGENT as u64, own as u64 + 1)?;
        }
        // The origin cell is part of the domain: two cells never mint the
        // same id in a third one's space (nor does the target itself, whose
        // own tasks have the domain "task").
        let domain = format!("task from cell {}", cell.index);
        let task = self.next_id(Some(target), &domain, origin);
        self.mail.outbox.insert(
            seq,
            Parcel::Task(Outgoing {
                task,
                agent,
                by: origin,
                spec: spec.clone(),
            }),
        );
        Ok(vec![Event::TaskSent {
            task,
            agent,
            by: origin,
            spec,
        }])
    }

    /// A change of the configuration submitted here: in a cluster, only the
    /// configuration cell takes it, and sends it to every other cell.
    ///
    /// A stored record of a change in another cell still replays: cells
    /// written before the configuration cell existed took changes
    /// themselves, and their logs stay readable (such a change stays in
    /// its cell; it is not sent anywhere).
    pub(crate) fn configure(
        &mut self,
        change: Change,
        env: &Env<'_>,
    ) -> Result<Vec<Event>, KernelError> {
        let cell = env.cell;
        if let Some(cell) = cell
            && cell.index != CONFIG_CELL
            && !env.recorded
        {
            return Err(KernelError::invalid(
                change.kind(),
                format!(
                    "revocations and the trust store of a cluster are changed in cell {CONFIG_CELL}, which applies them in every cell; this is cell {}",
                    cell.index
                ),
            ));
        }
        let events = self.change(change.clone(), env.limits)?;
        if cell.is_some_and(|c| c.index == CONFIG_CELL && c.cells > 1) {
            // Not held to MAX_OUTBOX: the configuration always goes out.
            self.mail.outbox.insert(env.seq, Parcel::Config(change));
        }
        Ok(events)
    }

    /// Applies a change of the configuration.
    fn change(&mut self, change: Change, limits: &Limits) -> Result<Vec<Event>, KernelError> {
        match change {
            Change::Revoke { revocation_id } => self.revoke(revocation_id),
            Change::Trust { publisher } => self.trust_publisher(publisher, limits),
            Change::Distrust { name } => self.distrust_publisher(name),
        }
    }

    /// [`Operation::MarkSent`](crate::Operation::MarkSent): the outbox up
    /// to `through` was sent.
    pub(crate) fn mark_sent(&mut self, through: u64) -> Result<Vec<Event>, KernelError> {
        if self.mail.outbox.range(..=through).next().is_none() {
            return Err(KernelError::invalid(
                OpKind::MarkSent,
                format!("the outbox holds nothing up to record {through}"),
            ));
        }
        let kept = self.mail.outbox.split_off(&through.saturating_add(1));
        let sent = std::mem::replace(&mut self.mail.outbox, kept);
        Ok(vec![Event::TasksSent {
            through,
            count: u32::try_from(sent.len()).unwrap_or(u32::MAX),
        }])
    }

    /// [`Operation::DeliverTask`](crate::Operation::DeliverTask): takes in
    /// what another cell sent — queues a task, applies a change of the
    /// configuration — or records why it cannot; either way it is taken
    /// once.
    pub(crate) fn deliver(
        &mut self,
        delivery: Delivery,
        env: &Env<'_>,
    ) -> Result<Vec<Event>, KernelError> {
        let (cell, from_cell, from_seq, parcel) = self.take(OpKind::DeliverTask, delivery, env)?;
        match parcel {
            Parcel::Task(sent) => Ok(self.deliver_task(sent, from_cell, cell, env)),
            Parcel::Config(change) => Ok(self.change(change, env.limits).unwrap_or_else(|e| {
                vec![Event::ChangeRefused {
                    from_seq,
                    reason: e.to_string(),
                }]
            })),
        }
    }

    /// [`Operation::RefuseDelivery`](crate::Operation::RefuseDelivery):
    /// takes in a task another cell sent without queuing it, for the
    /// host's `reason`.
    pub(crate) fn refuse_delivery(
        &mut self,
        delivery: Delivery,
        reason: String,
        env: &Env<'_>,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::RefuseDelivery;
        check_size(Limit::Reason, env.limits.max_reason, reason.len())?;
        if matches!(delivery.parcel, Parcel::Config(_)) {
            return Err(KernelError::invalid(
                KIND,
                "a change of the configuration is applied in every cell, never refused",
            ));
        }
        let (_, from_cell, _, parcel) = self.take(KIND, delivery, env)?;
        let Parcel::Task(sent) = parcel else {
            unreachable!("a change was turned away above");
        };
        Ok(vec![Event::TaskRefused {
            task: sent.task,
            agent: sent.agent,
            by: sent.by,
            from_cell,
            reason,
        }])
    }

    /// Checks that `delivery` is this cell's to take and was not taken
    /// before, and remembers it as taken: this cell, the origin cell, the
    /// origin's record, and what was sent.
    fn take(
        &mut self,
        kind: OpKind,
        delivery: Delivery,
        env: &Env<'_>,
    ) -> Result<(Cell, u16, u64, Parcel), KernelError> {
        let Some(cell) = env.cell else {
            return Err(KernelError::invalid(
                kind,
                "this log is not a cluster cell's",
            ));
        };
        let Delivery {
            from_cell,
            from_seq,
            position,
            parcel,
        } = delivery;
        if from_cell == cell.index || from_cell >= cell.cells {
            return Err(KernelError::invalid(
                kind,
                format!("cell {from_cell} cannot send to cell {}", cell.index),
            ));
        }
        if self.mail.taken(from_cell, from_seq) || position < self.mail.read_from() {
            return Err(KernelError::invalid(
                kind,
                format!(
                    "what cell {from_cell}'s record {from_seq} sent (inbox position {position}) was taken already"
                ),
            ));
        }
        match &parcel {
            Parcel::Task(sent) if sent.task.cell() != cell.index => {
                return Err(KernelError::invalid(
                    kind,
                    format!("task {} is not one of cell {}'s", sent.task, cell.index),
                ));
            }
            Parcel::Config(_) if from_cell != CONFIG_CELL => {
                return Err(KernelError::invalid(
                    kind,
                    format!("cell {from_cell} is not the configuration cell"),
                ));
            }
            _ => {}
        }
        self.mail.inbox.insert(
            from_cell,
            Received {
                seq: from_seq,
                position,
            },
        );
        Ok((cell, from_cell, from_seq, parcel))
    }

    /// Queues a task another cell sent, or says why not.
    fn deliver_task(
        &mut self,
        sent: Outgoing,
        from_cell: u16,
        cell: Cell,
        env: &Env<'_>,
    ) -> Vec<Event> {
        let Outgoing {
            task,
            agent,
            by,
            spec,
        } = sent;
        let refused = |reason: String| {
            vec![Event::TaskRefused {
                task,
                agent,
                by,
                from_cell,
                reason,
            }]
        };
        if let Err(e) = check_size(
            Limit::TaskDescription,
            env.limits.max_task_description,
            spec.description.len(),
        ) {
            return refused(e.to_string());
        }
        if agent.cell() != cell.index {
            return refused(format!("agent {agent} is not in cell {}", cell.index));
        }
        if self.tasks.contains_key(&task) {
            return refused(format!("task {task} exists already"));
        }
        if let Err(e) = self.check_queueable(agent, env.limits) {
            return refused(e.to_string());
        }
        self.enqueue(task, agent, by, spec, env.seq)
    }
}

impl Change {
    /// The operation that makes this change.
    pub(crate) const fn kind(&self) -> OpKind {
        match self {
            Change::Revoke { .. } => OpKind::RevokeToken,
            Change::Trust { .. } => OpKind::TrustPublisher,
            Change::Distrust { .. } => OpKind::DistrustPublisher,
        }
    }
}

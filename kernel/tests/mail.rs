//! Tasks and configuration across the cells of a cluster: sent from one
//! cell's outbox, taken into another's log once, refused (and consumed)
//! when they cannot be applied; every rejection changes nothing.

mod common;

use common::{World, scheduled, spawned, spec};
use toka_kernel::{
    Authorization, Cell, Change, Delivery, EntityId, EntityKind, Event, Kernel, KernelError, Limit,
    Limits, MAX_OUTBOX, MAX_OUTBOX_PER_AGENT, OpKind, Operation, Outgoing, Parcel, Registry,
    TaskSpec, WorldState, replay_log,
};

fn cell(index: u16) -> Option<Cell> {
    Some(Cell { index, cells: 3 })
}

fn world_in(index: u16) -> World {
    World::with_kernel(Kernel::new(Limits::default()).in_cell(cell(index)))
}

fn task_spec(text: &str) -> TaskSpec {
    TaskSpec {
        description: text.to_owned(),
    }
}

/// Sends a task from `from` to `agent`: the record's sequence number and
/// the task as it waits in the outbox.
fn send(from: &mut World, agent: EntityId, text: &str) -> (u64, Outgoing) {
    let applied = from
        .system(Operation::ScheduleTask {
            agent,
            spec: task_spec(text),
        })
        .expect("send");
    let [Event::TaskSent { task, .. }] = applied.events.as_slice() else {
        panic!("expected one TaskSent, got {:?}", applied.events);
    };
    let (seq, outgoing) = from
        .kernel
        .state()
        .outbox()
        .find_map(|(seq, p)| match p {
            Parcel::Task(o) if o.task == *task => Some((seq, o.clone())),
            _ => None,
        })
        .expect("in the outbox");
    assert_eq!(seq, applied.seq);
    (seq, outgoing)
}

fn delivery(from_cell: u16, from_seq: u64, position: u64, task: Outgoing) -> Operation {
    parcel(from_cell, from_seq, position, Parcel::Task(task))
}

fn parcel(from_cell: u16, from_seq: u64, position: u64, parcel: Parcel) -> Operation {
    Operation::DeliverTask {
        delivery: Box::new(Delivery {
            from_cell,
            from_seq,
            position,
            parcel,
        }),
    }
}

#[test]
fn a_task_for_another_cell_s_agent_is_sent_then_queued_there_once() {
    let (mut a, mut b) = (world_in(0), world_in(1));
    let agent = b.spawn_root("worker");
    assert_eq!(agent.cell(), 1);

    let (seq, outgoing) = send(&mut a, agent, "job");
    assert_eq!(outgoing.agent, agent);
    assert_eq!(outgoing.by, EntityId::SYSTEM);
    assert_eq!(outgoing.task.cell(), 1, "minted in the target's id space");
    assert!(a.kernel.state().task(outgoing.task).is_none());

    let applied = b.system(delivery(0, seq, 1, outgoing.clone())).unwrap();
    assert_eq!(scheduled(&applied.events), outgoing.task);
    assert_eq!(
        b.kernel.state().agent(agent).unwrap().queue,
        std::collections::VecDeque::from([outgoing.task])
    );
    assert!(b.kernel.state().delivered(0, seq));
    assert_eq!(b.kernel.state().inbox_read_from(), 2);

    // The same task again — re-sent after a failover, at a later position
    // or the same — is refused and changes nothing.
    for position in [1, 2, 7] {
        b.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            delivery(0, seq, position, outgoing.clone()),
            KernelError::InvalidOperation {
                operation: OpKind::DeliverTask,
                message: format!(
                    "what cell 0's record {seq} sent (inbox position {position}) was taken already"
                ),
            },
        );
    }

    // The origin empties its outbox once, up to the record.
    let sent = a.system(Operation::MarkSent { through: seq }).unwrap();
    assert_eq!(
        sent.events,
        vec![Event::TasksSent {
            through: seq,
            count: 1
        }]
    );
    assert_eq!(a.kernel.state().outbox().len(), 0);
    a.assert_rejected(
        EntityId::SYSTEM,
        Authorization::System,
        Operation::MarkSent { through: seq },
        KernelError::InvalidOperation {
            operation: OpKind::MarkSent,
            message: format!("the outbox holds nothing up to record {seq}"),
        },
    );

    // Both logs replay to the same state in their cells.
    for w in [&a, &b] {
        let mut replayed = Kernel::new(Limits::default()).in_cell(w.kernel.cell());
        for record in &w.log {
            replayed.replay(record).unwrap();
        }
        assert_eq!(replayed.state(), w.kernel.state());
        // Without its cell, the log does not replay: the cell is part of it.
        assert!(replay_log(&w.log, Limits::default(), Registry::new()).is_err());
    }
}

#[test]
fn two_cells_never_mint_the_same_task_in_a_third() {
    let (mut a, mut b, mut c) = (world_in(0), world_in(1), world_in(2));
    let agent = c.spawn_root("worker");
    let (_, from_a) = send(&mut a, agent, "x");
    let (_, from_b) = send(&mut b, agent, "x");
    let own = c.schedule(agent, "x");
    assert_ne!(from_a.task, from_b.task);
    assert!(own != from_a.task && own != from_b.task);
    assert!(
        [from_a.task, from_b.task, own]
            .iter()
            .all(|t| t.cell() == 2)
    );
}

#[test]
fn a_delivery_that_cannot_be_queued_is_refused_and_consumed() {
    let (mut a, mut b) = (world_in(0), world_in(1));
    b.spawn_root("worker");
    // An id in cell 1 that names no agent there.
    let nobody = EntityId::from_u128((1u128 << 112) | 42);
    let (seq, outgoing) = send(&mut a, nobody, "lost");
    let applied = b.system(delivery(0, seq, 1, outgoing.clone())).unwrap();
    assert_eq!(
        applied.events,
        vec![Event::TaskRefused {
            task: outgoing.task,
            agent: nobody,
            by: EntityId::SYSTEM,
            from_cell: 0,
            reason: format!("unknown agent {nobody}"),
        }]
    );
    assert!(b.kernel.state().task(outgoing.task).is_none());
    assert!(b.kernel.state().delivered(0, seq), "consumed, never again");
}

#[test]
fn a_full_queue_refuses_a_delivery_without_losing_the_inbox_place() {
    let mut a = world_in(0);
    let mut b = World::with_kernel(
        Kernel::new(Limits {
            max_queue: 1,
            ..Limits::default()
        })
        .in_cell(cell(1)),
    );
    let agent = b.spawn_root("worker");
    b.schedule(agent, "fills the queue");
    let (seq, outgoing) = send(&mut a, agent, "one too many");
    let applied = b.system(delivery(0, seq, 1, outgoing)).unwrap();
    assert!(
        matches!(&applied.events[..], [Event::TaskRefused { reason, .. }] if reason.contains("task queue length")),
        "{:?}",
        applied.events
    );
    assert_eq!(b.kernel.state().inbox_read_from(), 2);
}

#[test]
fn a_delivery_the_host_refuses_is_consumed_with_its_reason_and_queues_nothing() {
    let (mut a, mut b) = (world_in(0), world_in(1));
    let agent = b.spawn_root("worker");
    let (seq, outgoing) = send(&mut a, agent, "too much");
    let refuse = |position: u64, reason: &str, parcel: Parcel| Operation::RefuseDelivery {
        delivery: Box::new(Delivery {
            from_cell: 0,
            from_seq: seq,
            position,
            parcel,
        }),
        reason: reason.to_owned(),
    };
    let invalid = |message: &str| KernelError::InvalidOperation {
        operation: OpKind::RefuseDelivery,
        message: message.to_owned(),
    };
    // A change of the configuration holds in every cell: never refused.
    b.assert_rejected(
        EntityId::SYSTEM,
        Authorization::System,
        refuse(
            1,
            "no",
            Parcel::Config(Change::Revoke {
                revocation_id: vec![1],
            }),
        ),
        invalid("a change of the configuration is applied in every cell, never refused"),
    );
    // A reason is bounded like every other.
    let long = "x".repeat(Limits::default().max_reason as usize + 1);
    assert!(matches!(
        b.system(refuse(1, &long, Parcel::Task(outgoing.clone()))),
        Err(KernelError::LimitExceeded {
            limit: Limit::Reason,
            ..
        })
    ));
    // Only the host refuses.
    b.assert_rejected(
        agent,
        Authorization::Token,
        refuse(1, "no", Parcel::Task(outgoing.clone())),
        KernelError::CapabilityDenied {
            origin: agent,
            operation: OpKind::RefuseDelivery,
            reason: "only the host may submit this operation".into(),
        },
    );

    let applied = b
        .system(refuse(
            1,
            "the budget is spent",
            Parcel::Task(outgoing.clone()),
        ))
        .unwrap();
    assert_eq!(
        applied.events,
        vec![Event::TaskRefused {
            task: outgoing.task,
            agent,
            by: EntityId::SYSTEM,
            from_cell: 0,
            reason: "the budget is spent".to_owned(),
        }]
    );
    assert!(b.kernel.state().task(outgoing.task).is_none());
    assert!(b.kernel.state().agent(agent).unwrap().queue.is_empty());
    assert_eq!(b.kernel.state().inbox_read_from(), 2);
    // Taken once: neither delivered nor refused again.
    let taken = format!("what cell 0's record {seq} sent (inbox position 1) was taken already");
    b.assert_rejected(
        EntityId::SYSTEM,
        Authorization::System,
        delivery(0, seq, 1, outgoing.clone()),
        KernelError::InvalidOperation {
            operation: OpKind::DeliverTask,
            message: taken.clone(),
        },
    );
    b.assert_rejected(
        EntityId::SYSTEM,
        Authorization::System,
        refuse(1, "again", Parcel::Task(outgoing)),
        invalid(&taken),
    );
    // The log replays to the same state.
    let mut replayed = Kernel::new(Limits::default()).in_cell(b.kernel.cell());
    for record in &b.log {
        replayed.replay(record).unwrap();
    }
    assert_eq!(replayed.state(), b.kernel.state());
}

#[test]
fn deliveries_out_of_place_are_refused_and_change_nothing() {
    let (mut a, mut b) = (world_in(0), world_in(1));
    let agent = b.spawn_root("worker");
    let (seq, outgoing) = send(&mut a, agent, "t");
    let sys = Authorization::System;
    let invalid = |message: String| KernelError::InvalidOperation {
        operation: OpKind::DeliverTask,
        message,
    };
    // From itself, or from a cell the cluster does not have.
    for from in [1, 3, u16::MAX] {
        b.assert_rejected(
            EntityId::SYSTEM,
            sys,
            delivery(from, seq, 1, outgoing.clone()),
            invalid(format!("cell {from} cannot send to cell 1")),
        );
    }
    // A task minted for another cell.
    let mut elsewhere = outgoing.clone();
    elsewhere.task = EntityId::from_u128(2u128 << 112);
    b.assert_rejected(
        EntityId::SYSTEM,
        sys,
        delivery(0, seq, 1, elsewhere.clone()),
        invalid(format!("task {} is not one of cell 1's", elsewhere.task)),
    );
    // A task id the cell has already: consumed as refused, never queued
    // twice.
    let own = b.schedule(agent, "own");
    let mut clash = outgoing.clone();
    clash.task = own;
    let refused = b.system(delivery(0, seq, 1, clash)).unwrap();
    assert!(
        matches!(&refused.events[..], [Event::TaskRefused { reason, .. }] if *reason == format!("task {own} exists already")),
        "{:?}",
        refused.events
    );
    assert_eq!(b.kernel.state().agent(agent).unwrap().queue.len(), 1);
    // Only the host delivers: an agent cannot, nor can an operator.
    b.assert_rejected(
        agent,
        Authorization::Token,
        delivery(0, seq, 1, outgoing.clone()),
        KernelError::CapabilityDenied {
            origin: agent,
            operation: OpKind::DeliverTask,
            reason: "only the host may submit this operation".into(),
        },
    );
    // A single host's log has no inbox.
    let mut single = World::new();
    single.assert_rejected(
        EntityId::SYSTEM,
        sys,
        delivery(0, seq, 1, outgoing),
        invalid("this log is not a cluster cell's".into()),
    );
}

#[test]
fn sending_is_refused_for_a_missing_cell_and_beyond_the_outbox_limit() {
    let mut a = world_in(0);
    let beyond = EntityId::from_u128((3u128 << 112) | 7);
    a.assert_rejected(
        EntityId::SYSTEM,
        Authorization::System,
        Operation::ScheduleTask {
            agent: beyond,
            spec: task_spec("t"),
        },
        KernelError::UnknownEntity {
            kind: EntityKind::Agent,
            id: beyond.to_string(),
        },
    );
    let target = EntityId::from_u128((1u128 << 112) | 7);
    for i in 0..MAX_OUTBOX {
        send(&mut a, target, &i.to_string());
    }
    a.assert_rejected(
        EntityId::SYSTEM,
        Authorization::System,
        Operation::ScheduleTask {
            agent: target,
            spec: task_spec("one more"),
        },
        KernelError::LimitExceeded {
            limit: Limit::Outbox,
            max: MAX_OUTBOX as u64,
            actual: MAX_OUTBOX as u64 + 1,
        },
    );
    // Handing half of it over makes room again.
    let half = a.kernel.state().outbox().nth(MAX_OUTBOX / 2 - 1).unwrap().0;
    let sent = a.system(Operation::MarkSent { through: half }).unwrap();
    assert_eq!(
        sent.events,
        vec![Event::TasksSent {
            through: half,
            count: (MAX_OUTBOX / 2) as u32
        }]
    );
    send(&mut a, target, "fits");
}

#[test]
fn an_agent_in_a_cell_sends_and_a_single_host_never_does() {
    // On a single host, an id's top bits mean nothing: no outbox.
    let mut single = World::new();
    let far = EntityId::from_u128((5u128 << 112) | 9);
    let err = single
        .system(Operation::ScheduleTask {
            agent: far,
            spec: task_spec("t"),
        })
        .unwrap_err();
    assert_eq!(
        err,
        KernelError::UnknownEntity {
            kind: EntityKind::Agent,
            id: far.to_string(),
        }
    );
    assert_eq!(single.kernel.state().outbox().len(), 0);
    // An agent in a cell sends like the system does; the task names it.
    let mut a = world_in(0);
    let component = a.install("c");
    let spawned_event = a
        .system(Operation::SpawnAgent {
            spec: Box::new(spec(component, "sender")),
        })
        .unwrap();
    let sender = spawned(&spawned_event.events);
    let target = EntityId::from_u128((2u128 << 112) | 1);
    let applied = a
        .agent(
            sender,
            Operation::ScheduleTask {
                agent: target,
                spec: task_spec("hi"),
            },
        )
        .unwrap();
    assert!(matches!(&applied.events[..], [Event::TaskSent { by, .. }] if *by == sender));
    // One agent's share of the outbox is bounded; the operators' is not
    // taken by it.
    for i in 1..MAX_OUTBOX_PER_AGENT {
        a.agent(
            sender,
            Operation::ScheduleTask {
                agent: target,
                spec: task_spec(&i.to_string()),
            },
        )
        .unwrap();
    }
    a.assert_rejected(
        sender,
        Authorization::Token,
        Operation::ScheduleTask {
            agent: target,
            spec: task_spec("one more"),
        },
        KernelError::LimitExceeded {
            limit: Limit::Outbox,
            max: MAX_OUTBOX_PER_AGENT as u64,
            actual: MAX_OUTBOX_PER_AGENT as u64 + 1,
        },
    );
    send(&mut a, target, "the operator still sends");
}

#[test]
fn a_state_encoded_before_cells_exchanged_tasks_still_decodes() {
    let mut world = World::new();
    let agent = world.spawn_root("planner");
    world.schedule(agent, "plan");
    let state = world.kernel.state().clone();
    let bytes = state.to_bytes();
    // Format 5 had no mail at the end: two bytes (two empty maps) less.
    let v5 = &bytes[..bytes.len() - 2];
    assert_eq!(WorldState::from_bytes_v5(v5).unwrap(), state);
}

#[test]
fn the_configuration_is_changed_in_cell_0_and_applied_once_in_every_other() {
    let (mut zero, mut one, mut two) = (world_in(0), world_in(1), world_in(2));
    let id = b"revocation id of a token".to_vec();
    // Only the configuration cell takes a change.
    for op in [
        Operation::RevokeToken {
            revocation_id: id.clone(),
        },
        Operation::DistrustPublisher { name: "p".into() },
    ] {
        let kind = op.kind();
        one.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            op,
            KernelError::InvalidOperation {
                operation: kind,
                message: "revocations and the trust store of a cluster are changed in cell 0, which applies them in every cell; this is cell 1".into(),
            },
        );
    }
    let applied = zero
        .system(Operation::RevokeToken {
            revocation_id: id.clone(),
        })
        .unwrap();
    assert!(zero.kernel.state().is_revoked(&id));
    let sent: Vec<(u64, Parcel)> = zero
        .kernel
        .state()
        .outbox()
        .map(|(seq, p)| (seq, p.clone()))
        .collect();
    let change = Change::Revoke {
        revocation_id: id.clone(),
    };
    assert_eq!(sent, vec![(applied.seq, Parcel::Config(change.clone()))]);
    let cell = Cell { index: 0, cells: 3 };
    assert_eq!(
        Parcel::Config(change.clone())
            .targets(cell)
            .collect::<Vec<_>>(),
        [1, 2]
    );

    for target in [&mut one, &mut two] {
        let taken = target
            .system(parcel(0, applied.seq, 1, Parcel::Config(change.clone())))
            .unwrap();
        assert_eq!(
            taken.events,
            vec![Event::TokenRevoked {
                revocation_id: id.clone()
            }]
        );
        assert!(target.kernel.state().is_revoked(&id));
        // Once.
        target.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            parcel(0, applied.seq, 2, Parcel::Config(change.clone())),
            KernelError::InvalidOperation {
                operation: OpKind::DeliverTask,
                message: format!(
                    "what cell 0's record {} sent (inbox position 2) was taken already",
                    applied.seq
                ),
            },
        );
    }
    // Only the configuration cell sends changes.
    let mut other = world_in(2);
    other.assert_rejected(
        EntityId::SYSTEM,
        Authorization::System,
        parcel(1, 5, 1, Parcel::Config(change)),
        KernelError::InvalidOperation {
            operation: OpKind::DeliverTask,
            message: "cell 1 is not the configuration cell".into(),
        },
    );
    // A change that does not apply is consumed and says why.
    let refused = other
        .system(parcel(
            0,
            9,
            1,
            Parcel::Config(Change::Distrust {
                name: "nobody".into(),
            }),
        ))
        .unwrap();
    assert_eq!(
        refused.events,
        vec![Event::ChangeRefused {
            from_seq: 9,
            reason: "unknown publisher nobody".into(),
        }]
    );
    assert!(other.kernel.state().delivered(0, 9));
    // A cluster of one cell has nobody to send to.
    let mut alone = World::with_kernel(
        Kernel::new(Limits::default()).in_cell(Some(Cell { index: 0, cells: 1 })),
    );
    alone
        .system(Operation::RevokeToken { revocation_id: id })
        .unwrap();
    assert_eq!(alone.kernel.state().outbox().len(), 0);
}

#[test]
fn a_change_recorded_in_another_cell_before_the_configuration_cell_still_replays() {
    // A cell's log written before cell 0 was the configuration cell: a
    // revocation and a trusted publisher's removal taken in cell 1 itself.
    let mut before = World::with_kernel(Kernel::new(Limits::default()));
    let id = b"revocation id of a token".to_vec();
    before
        .system(Operation::RevokeToken {
            revocation_id: id.clone(),
        })
        .unwrap();
    let mut now = world_in(1);
    for bytes in &before.log {
        now.kernel.replay(bytes).unwrap();
    }
    assert!(now.kernel.state().is_revoked(&id));
    // It stays in its cell: nothing is sent.
    assert_eq!(now.kernel.state().outbox().count(), 0);
    // The start-up path takes it too; a new change is still refused.
    let mut started = World::with_kernel(Kernel::new(Limits::default()).in_cell(cell(1)));
    for bytes in &before.log {
        started.kernel.restore(bytes).unwrap();
    }
    assert!(started.kernel.state().is_revoked(&id));
    let op = Operation::RevokeToken {
        revocation_id: b"another".to_vec(),
    };
    assert!(matches!(
        started.system(op),
        Err(KernelError::InvalidOperation { .. })
    ));
}

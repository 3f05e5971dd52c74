//! The hash chain: replay reproduces the live kernel, and any change to the
//! stored bytes is caught at the first bad record.

mod common;

use common::World;
use toka_kernel::{
    Digest, Event, FORMAT_VERSION, Limits, OpKey, Operation, Record, RecordError, Registry,
    ReplayErrorKind, TaskSpec, replay_log,
};

/// A varied log: installs, a root agent spawning a child, tasks with
/// observations and state, a revocation.
fn sample() -> World {
    let mut w = World::new();
    let planner = w.spawn_root("planner");
    let worker_component = w.install("worker");
    let worker = common::spawned(
        &w.agent(
            planner,
            Operation::SpawnAgent {
                spec: Box::new(common::spec(worker_component, "w")),
            },
        )
        .unwrap()
        .events,
    );
    for i in 0..4u8 {
        let task = common::scheduled(
            &w.agent(
                planner,
                Operation::ScheduleTask {
                    agent: worker,
                    spec: TaskSpec {
                        description: format!("task {i}"),
                    },
                },
            )
            .unwrap()
            .events,
        );
        w.start(worker, task);
        w.agent_in(
            worker,
            Some(OpKey { task, index: 0 }),
            Operation::EmitObservation {
                topic: Some("progress".into()),
                data: format!("step {i}").into_bytes(),
            },
        )
        .unwrap();
        w.agent_in(
            worker,
            Some(OpKey { task, index: 1 }),
            Operation::PutState {
                key: "n".into(),
                value: vec![i],
            },
        )
        .unwrap();
        w.host_for(
            worker,
            Operation::CompleteTask {
                task,
                output: vec![i],
            },
        )
        .unwrap();
    }
    w.system(Operation::RevokeToken {
        revocation_id: vec![3; 64],
    })
    .unwrap();
    w
}

fn replay(log: &[Vec<u8>]) -> Result<toka_kernel::Kernel, toka_kernel::ReplayError> {
    replay_log(log, Limits::default(), Registry::new())
}

#[test]
fn replay_reproduces_head_state_and_events() {
    let w = sample();
    assert!(w.log.len() > 20, "the sample log should be varied");
    let replayed = replay(&w.log).unwrap();
    assert_eq!(replayed.head(), w.kernel.head());
    assert_eq!(replayed.state(), w.kernel.state());
    assert_eq!(replayed.state().digest(), w.kernel.state().digest());

    // Events are a function of the log: replaying record by record gives the
    // same events the live kernel emitted.
    let mut fresh = toka_kernel::Kernel::new(Limits::default());
    let mut live = toka_kernel::Kernel::new(Limits::default());
    for bytes in &w.log {
        let replayed = fresh.replay(bytes).unwrap();
        let command = Record::decode(bytes).unwrap().command;
        let applied = live.apply(command).unwrap();
        assert_eq!(replayed.events, applied.events);
        assert_eq!(&applied.bytes, bytes);
    }
}

#[test]
fn records_decode_to_what_was_sealed() {
    let mut w = World::new();
    let component = w.install("c");
    let applied = w
        .system(Operation::SpawnAgent {
            spec: Box::new(common::spec(component, "a")),
        })
        .unwrap();
    let decoded = Record::decode(&applied.bytes).unwrap();
    assert_eq!(decoded.version, FORMAT_VERSION);
    assert_eq!((decoded.seq, applied.seq), (2, 2));
    assert_eq!(decoded.hash, applied.hash);
    assert_eq!(decoded.hash, w.kernel.head().hash);
    assert_eq!(
        decoded.command.op,
        Operation::SpawnAgent {
            spec: Box::new(common::spec(component, "a"))
        }
    );
    assert!(matches!(applied.events[..], [Event::AgentSpawned { .. }]));
}

#[test]
fn flipping_any_byte_of_any_record_names_that_record() {
    let w = sample();
    for (i, record) in w.log.iter().enumerate() {
        let seq = i as u64 + 1;
        for pos in 0..record.len() {
            for mask in [0x01u8, 0x80] {
                let mut log = w.log.clone();
                log[i][pos] ^= mask;
                let err = match replay(&log) {
                    Ok(_) => panic!("flip {mask:#x} at byte {pos} of record {seq} went unnoticed"),
                    Err(e) => e,
                };
                assert_eq!(err.seq, seq, "byte {pos} of record {seq}: {err}");
            }
        }
    }
}

#[test]
fn dropped_duplicated_and_reordered_records_are_caught() {
    let w = sample();
    let mut dropped = w.log.clone();
    dropped.remove(5);
    let err = replay(&dropped).unwrap_err();
    assert_eq!(err.seq, 6);
    assert_eq!(
        err.kind,
        ReplayErrorKind::Seq {
            expected: 6,
            found: 7
        }
    );

    let mut duplicated = w.log.clone();
    duplicated.insert(5, w.log[4].clone());
    assert_eq!(replay(&duplicated).unwrap_err().seq, 6);

    let mut swapped = w.log.clone();
    swapped.swap(3, 4);
    assert_eq!(replay(&swapped).unwrap_err().seq, 4);
}

#[test]
fn a_rewritten_record_with_a_fresh_hash_breaks_the_next_link() {
    // An attacker who re-seals a record after changing it cannot re-seal the
    // rest of the chain without the next record failing its prev_hash check.
    let w = sample();
    let target = 7;
    let mut forged = Record::decode(&w.log[target]).unwrap();
    forged.command.time.0 += 1;
    let mut kernel = replay(&w.log[..target]).unwrap();
    let resealed = kernel.apply(forged.command).unwrap().bytes;
    let mut log = w.log.clone();
    log[target] = resealed;
    let err = replay(&log).unwrap_err();
    assert_eq!(err.seq, target as u64 + 2);
    assert!(matches!(err.kind, ReplayErrorKind::BrokenChain { .. }));

    // A forged last record replays, but the head no longer matches the one
    // the store keeps beside the log.
    let last = w.log.len() - 1;
    let mut forged = Record::decode(&w.log[last]).unwrap();
    forged.command.time.0 += 1;
    let mut kernel = replay(&w.log[..last]).unwrap();
    let mut log = w.log.clone();
    log[last] = kernel.apply(forged.command).unwrap().bytes;
    assert_ne!(replay(&log).unwrap().head(), w.kernel.head());
}

#[test]
fn records_from_a_newer_format_are_refused_by_version() {
    let w = sample();
    let mut record = w.log[0].clone();
    record[0] = (FORMAT_VERSION + 1) as u8;
    // Re-seal the hash so only the version is "wrong".
    let body_len = record.len() - 32;
    let hash = Digest::of(&record[..body_len]);
    record[body_len..].copy_from_slice(hash.as_bytes());
    assert_eq!(
        Record::decode(&record).unwrap_err(),
        RecordError::UnsupportedVersion {
            found: FORMAT_VERSION + 1,
            supported: FORMAT_VERSION
        }
    );
}

#[test]
fn truncated_records_are_refused() {
    let w = sample();
    for len in [0, 1, 20, w.log[0].len() - 1] {
        let err = Record::decode(&w.log[0][..len]).unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::Truncated { .. } | RecordError::HashMismatch { .. }
            ),
            "{len} bytes: {err}"
        );
    }
}

/// Guards the record size a format change could silently grow: a 32-byte
/// observation inside a task (with a large sequence number) keeps its body
/// within two 64-byte BLAKE3 blocks.
#[test]
fn a_small_observation_record_hashes_in_two_blake3_blocks() {
    let mut w = World::new();
    let agent = w.spawn_root("a");
    let task = w.schedule(agent, "t");
    w.start(agent, task);
    let applied = w
        .agent_in(
            agent,
            Some(OpKey { task, index: 0 }),
            Operation::EmitObservation {
                topic: None,
                data: vec![7; 32],
            },
        )
        .unwrap();
    let body = applied.bytes.len() - 32;
    // A seq of a billion adds 3 bytes to the varint of this early record.
    assert!(body + 3 <= 128, "body is {body} bytes");
}

#[test]
fn restore_rebuilds_the_same_state_and_still_checks_the_chain() {
    let w = sample();
    let mut restored = toka_kernel::Kernel::new(Limits::default());
    for bytes in &w.log {
        restored.restore(bytes).unwrap();
    }
    assert_eq!(restored.head(), w.kernel.head());
    assert_eq!(restored.state(), w.kernel.state());

    // Out of place or unlinked records are refused even on the fast path.
    let mut kernel = toka_kernel::Kernel::new(Limits::default());
    kernel.restore(&w.log[0]).unwrap();
    let err = kernel.restore(&w.log[2]).unwrap_err();
    assert_eq!(
        (err.seq, matches!(err.kind, ReplayErrorKind::Seq { .. })),
        (2, true)
    );
}

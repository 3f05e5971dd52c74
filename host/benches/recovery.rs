//! Recovery against a raw read of the same log, side by side in one run.
//!
//! `cargo bench -p toka-host --bench recovery`
//!
//! For logs of 100 000 and 400 000 records (32-byte observations inside
//! tasks, in a redb file): reading every record raw; recovering without a
//! snapshot (replay and verify every record); recovering from a snapshot at
//! the head. Goals (issue 5): recovery ≤ 2× the raw read; with a snapshot,
//! start-up independent of the log's length.

#![allow(missing_docs, reason = "criterion generates the bench entry points")]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use toka_host::{Batch, EventStore, RedbStore, RootKey};
use toka_kernel::{
    AgentSpec, Authorization, ChainHead, Command, ComponentSpec, Digest, EntityId, Event, Kernel,
    Limits, OpKey, Operation, TaskSpec, Timestamp,
};

/// The allocator the `toka` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A redb log of `n` records, and the kernel that wrote it.
fn log(n: u64) -> (tempfile::TempDir, RedbStore, Kernel) {
    let dir = tempfile::tempdir().unwrap();
    let root = RootKey::generate();
    let store = RedbStore::create(
        &dir.path().join("toka.redb"),
        &Limits::default(),
        &root.public().to_bytes(),
    )
    .unwrap();
    let mut kernel = Kernel::new(Limits::default());
    let mut batch = Batch::default();
    let (t, digest, token) = (Timestamp(1), Digest::of(b"bench"), Digest::of(b"token"));
    let apply = |kernel: &mut Kernel, batch: &mut Batch, cmd| {
        let applied = kernel.apply(cmd).unwrap();
        batch.records.push((applied.seq, applied.bytes));
        applied.events
    };
    let system = |op| Command::system(EntityId::SYSTEM, t, op);
    apply(
        &mut kernel,
        &mut batch,
        system(Operation::InstallComponent {
            component: Box::new(ComponentSpec {
                digest,
                name: "bench".into(),
                size: 1,
            }),
        }),
    );
    let Event::AgentSpawned { agent, .. } = apply(
        &mut kernel,
        &mut batch,
        system(Operation::SpawnAgent {
            spec: Box::new(AgentSpec {
                component: digest,
                name: "bench".into(),
                token,
                rights: Vec::new(),
            }),
        }),
    )[0] else {
        unreachable!()
    };
    while kernel.head().seq < n {
        let Event::TaskScheduled { task, .. } = apply(
            &mut kernel,
            &mut batch,
            system(Operation::ScheduleTask {
                agent,
                spec: TaskSpec {
                    description: "observe".into(),
                },
            }),
        )[0] else {
            unreachable!()
        };
        apply(
            &mut kernel,
            &mut batch,
            Command::system(agent, t, Operation::StartTask { task }),
        );
        for index in 0..1_000u32 {
            apply(
                &mut kernel,
                &mut batch,
                Command {
                    origin: agent,
                    time: t,
                    auth: Authorization::Token,
                    cause: Some(OpKey { task, index }),
                    op: Operation::EmitObservation {
                        topic: None,
                        data: vec![7; 32],
                    },
                },
            );
        }
        apply(
            &mut kernel,
            &mut batch,
            Command::system(
                agent,
                t,
                Operation::CompleteTask {
                    task,
                    output: Vec::new(),
                },
            ),
        );
        if batch.records.len() >= 10_000 {
            batch.head = kernel.head();
            store.append(std::mem::take(&mut batch)).unwrap();
        }
    }
    batch.head = kernel.head();
    store.append(batch).unwrap();
    (dir, store, kernel)
}

fn recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    for n in [100_000u64, 400_000] {
        let (_dir, store, kernel) = log(n);
        let records = kernel.head().seq;
        group.throughput(Throughput::Elements(records));
        // Reading as recovery reads: each record lent by the store.
        group.bench_function(format!("{n}: raw read"), |b| {
            b.iter(|| {
                let mut bytes = 0usize;
                store
                    .each_record(1, &mut |_, record| {
                        bytes += black_box(record).len();
                        std::ops::ControlFlow::Continue(())
                    })
                    .unwrap();
                black_box(bytes)
            });
        });
        group.bench_function(format!("{n}: recover, no snapshot"), |b| {
            b.iter(|| {
                let (recovered, from) = toka_host::recover(&store).unwrap();
                assert_eq!((recovered.head(), from), (kernel.head(), 0));
            });
        });
        // A snapshot at the head: only the tail (nothing) is replayed.
        let head: ChainHead = kernel.head();
        store
            .put_snapshot(head.seq, toka_host::bench_support::snapshot_bytes(&kernel))
            .unwrap();
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{n}: recover from a snapshot at the head"), |b| {
            b.iter(|| {
                let (recovered, from) = toka_host::recover(&store).unwrap();
                assert_eq!((recovered.head(), from), (head, head.seq));
            });
        });
    }
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);

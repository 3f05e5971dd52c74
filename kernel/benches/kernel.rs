//! Kernel throughput: apply+hash per small command, and replay of a 1M-record log.
//!
//! `cargo bench -p toka-kernel`. Goal: apply+hash of a small command ≤ 0.5 µs,
//! well under a batched durable redb append (~2.5 µs per event at batch 1000).

#![allow(missing_docs, reason = "criterion generates the bench entry points")]
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark has nothing better to do with a setup error"
)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use toka_kernel::{
    AgentId, AgentSpec, Authorization, Command, ComponentSpec, Digest, EntityId, Event, Kernel,
    Limits, Operation, Registry, TaskSpec, Timestamp, replay_log,
};

/// A kernel with one installed component and one agent, and the two records
/// that set it up.
fn kernel_with_agent() -> (Kernel, AgentId, Vec<Vec<u8>>) {
    let mut kernel = Kernel::new(Limits::default());
    let digest = Digest::of(b"bench");
    let mut log = Vec::new();
    let mut events = Vec::new();
    for op in [
        Operation::InstallComponent {
            component: Box::new(ComponentSpec {
                digest,
                name: "bench".into(),
                size: 5,
            }),
        },
        Operation::SpawnAgent {
            spec: Box::new(AgentSpec {
                component: digest,
                name: "bench".into(),
                token: Digest::of(b"token"),
                rights: Vec::new(),
            }),
        },
    ] {
        let applied = kernel
            .apply(Command::system(EntityId::SYSTEM, Timestamp(1), op))
            .unwrap();
        log.push(applied.bytes);
        events = applied.events;
    }
    let Event::AgentSpawned { agent, .. } = events[0] else {
        unreachable!()
    };
    (kernel, agent, log)
}

fn agent_command(agent: AgentId, op: Operation) -> Command {
    Command {
        origin: agent,
        time: Timestamp(2),
        auth: Authorization::Token,
        cause: None,
        op,
    }
}

fn apply_small(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply+hash");
    group.throughput(Throughput::Elements(1));

    let (mut kernel, agent, _) = kernel_with_agent();
    let observe = agent_command(
        agent,
        Operation::EmitObservation {
            topic: None,
            data: vec![7; 32],
        },
    );
    group.bench_function("observation 32 B", |b| {
        b.iter_batched(
            || observe.clone(),
            |cmd| black_box(kernel.apply(cmd).unwrap()),
            BatchSize::SmallInput,
        );
    });

    let put = agent_command(
        agent,
        Operation::PutState {
            key: "count".into(),
            value: vec![1; 8],
        },
    );
    group.bench_function("state put 8 B", |b| {
        b.iter_batched(
            || put.clone(),
            |cmd| black_box(kernel.apply(cmd).unwrap()),
            BatchSize::SmallInput,
        );
    });

    // One task through its whole lifecycle: schedule, start, complete.
    group.throughput(Throughput::Elements(3));
    let schedule = Command::system(
        EntityId::SYSTEM,
        Timestamp(3),
        Operation::ScheduleTask {
            agent,
            spec: TaskSpec {
                description: "summarize chunk 1".into(),
            },
        },
    );
    group.bench_function("task lifecycle (3 commands)", |b| {
        b.iter(|| {
            let applied = kernel.apply(schedule.clone()).unwrap();
            let Event::TaskScheduled { task, .. } = applied.events[0] else {
                unreachable!()
            };
            let host = |op| Command::system(agent, Timestamp(3), op);
            kernel.apply(host(Operation::StartTask { task })).unwrap();
            black_box(
                kernel
                    .apply(host(Operation::CompleteTask {
                        task,
                        output: b"ok".to_vec(),
                    }))
                    .unwrap(),
            )
        });
    });
    group.finish();
}

fn replay_1m(c: &mut Criterion) {
    const RECORDS: u64 = 1_000_000;
    let (mut kernel, agent, mut log) = kernel_with_agent();
    for i in log.len() as u64..RECORDS {
        let op = if i % 4 == 0 {
            Operation::PutState {
                key: format!("k{}", i % 64),
                value: i.to_le_bytes().to_vec(),
            }
        } else {
            Operation::EmitObservation {
                topic: None,
                data: vec![(i % 251) as u8; 32],
            }
        };
        log.push(kernel.apply(agent_command(agent, op)).unwrap().bytes);
    }

    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("1M records", |b| {
        b.iter(|| {
            let replayed = replay_log(&log, Limits::default(), Registry::new()).unwrap();
            assert_eq!(replayed.head(), kernel.head());
            black_box(replayed)
        });
    });
    group.finish();
}

criterion_group!(benches, apply_small, replay_1m);
criterion_main!(benches);

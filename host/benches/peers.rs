//! Toka's side of the peer benchmark (issue 15): one task making N host
//! calls with an 8-byte payload, N = 1 000 and 10 000, as the Extism plugin
//! in `bench/peers/extism` does. `bench/peers/run` runs both and prints the
//! ratio.
//!
//! `cargo bench -p toka-host --bench peers`
//!
//! The `test-bench` agent runs `observe N 8` on a real host: every call an
//! operation authorized against the agent's token, applied by the kernel,
//! and (with redb) durable before the task's end is; on a memory store
//! the same without the disk. A round schedules the task and waits until
//! the host is idle (the task's records committed and published). Prints
//! per N and store the median of 7 rounds in µs per host call.

#![allow(missing_docs, reason = "a bench binary")]

use std::sync::Arc;
use std::time::Instant;

use toka_host::{DataDir, EventStore, Grant, Host, HostConfig, MemoryStore};
use toka_kernel::{Limits, Quotas, Rate, Rules};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `cargo test --benches` runs this without `--bench`: a smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        for durable in [true, false] {
            for n in if full { [1_000, 10_000] } else { [10, 100] } {
                let per_call = rounds(durable, n, if full { 7 } else { 1 }).await;
                let store = if durable { "redb, durable" } else { "memory" };
                println!("toka host call ({store}), N={n}: {per_call:.3} µs/call");
            }
        }
    });
}

/// The median of `count` rounds of one `observe N 8` task, in µs per call.
async fn rounds(durable: bool, n: u64, count: usize) -> f64 {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = DataDir::new(dir.path());
    let root = data.root_key(None, true).expect("a root key");
    let store: Arc<dyn EventStore> = if durable {
        Arc::new(
            data.open_or_create(&Limits::default(), &root)
                .expect("a data dir"),
        )
    } else {
        Arc::new(MemoryStore::new(Limits::default()))
    };
    // Quotas charged as usual, at rates no round meets.
    let huge = Rate::new(u64::MAX >> 1, u64::MAX >> 1);
    let mut config = HostConfig::new();
    config.rules(Rules {
        quotas: Quotas {
            log_bytes: huge,
            ops: huge,
            tasks: huge,
            ..Quotas::UNLIMITED
        },
        ..Rules::default()
    });
    let host = Host::open(store, root, config).await.expect("a host");
    let bytes = std::fs::read(toka_agents::path("test-bench").expect("test-bench agent"))
        .expect("read the agent");
    let component = host.install("test-bench", bytes).await.expect("install");
    let agent = host
        .spawn(
            component,
            "peer",
            Grant::Rights(vec!["observe".parse().expect("a right")]),
        )
        .await
        .expect("spawn");
    let task = format!("observe {n} 8");
    let round = || async {
        let start = Instant::now();
        host.schedule(agent, &task).await.expect("schedule");
        host.run_until_idle().await.expect("run");
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    // Warm up (the instance is made once, then kept warm).
    round().await;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        times.push(round().await);
    }
    let failed = host.state(|s| s.agent(agent).map_or(0, |a| a.failed)).await;
    assert_eq!(failed, 0, "a bench task failed; the figures would be wrong");
    host.shutdown().await.expect("shutdown");
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

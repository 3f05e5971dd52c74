//! What a reader polling the committed state costs the agents.
//!
//! `cargo bench -p toka-host --bench reader`
//!
//! One agent (`test-bench`) submits observations through the real host on
//! a memory store beside `TOKA_READER_AGENTS` idle agents (default 100 000),
//! first alone, then while a reader asks for the committed state in a loop
//! (`Host::state`, what the API's status, metrics and `/v1/log/state`
//! read: a client with the least rights can poll them). Prints the time
//! per operation both ways and how many reads were answered. Goal: the
//! reader slows the agent by at most the views' share of the lock (5 %,
//! `host/src/runtime/sequencer/views.rs`), whatever the state's size.

#![allow(missing_docs, reason = "a bench binary")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use toka_host::bench_support::{quota_free_config, time_observations};
use toka_host::{Grant, Host, MemoryStore, RootKey};
use toka_kernel::Limits;

/// The allocator the `toka` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this
    // without it: a smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let (idle, ops) = if full {
        (
            env("TOKA_READER_AGENTS", 100_000),
            env("TOKA_READER_OPS", 1_000_000),
        )
    } else {
        (100, 10_000)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let config = quota_free_config();
        let store = Arc::new(MemoryStore::new(Limits::default()));
        let host = Arc::new(
            Host::open(store, RootKey::generate(), config)
                .await
                .expect("open a host"),
        );
        let wasm = std::fs::read(toka_agents::path("test-bench").expect("test-bench agent"))
            .expect("read the agent");
        let component = host.install("bench", wasm).await.expect("install");
        let observe = || Grant::Rights(vec!["observe".parse().expect("a right")]);
        let started = Instant::now();
        for i in 0..idle {
            host.spawn(component, &format!("idle-{i}"), observe())
                .await
                .expect("spawn an idle agent");
        }
        let spawned = started.elapsed();
        let agent = host
            .spawn(component, "bench", observe())
            .await
            .expect("spawn");
        time_observations(&host, agent, 1_000).await;

        let alone = time_observations(&host, agent, ops).await;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (host, stop) = (Arc::clone(&host), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(host.state(|s| s.agents().len()).await);
                    reads += 1;
                }
                reads
            })
        };
        let read = time_observations(&host, agent, ops).await;
        stop.store(true, Ordering::Relaxed);
        let reads = reader.await.expect("the reader");

        let per_op = |d: std::time::Duration| d.as_nanos() as f64 / ops as f64;
        println!(
            "idle agents:            {idle} (spawned in {:.1} s)",
            spawned.as_secs_f64()
        );
        println!("op, alone:              {:.0} ns", per_op(alone));
        println!(
            "op, beside a reader:    {:.0} ns ({reads} reads answered, {:.1}/s)",
            per_op(read),
            reads as f64 / read.as_secs_f64()
        );
        println!(
            "slowdown:               {:.2}x",
            per_op(read) / per_op(alone)
        );
        Arc::into_inner(host)
            .expect("the only handle")
            .shutdown()
            .await
            .expect("shut down");
    });
}

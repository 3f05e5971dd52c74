//! Runs N observations of the `test-bench` agent through a host on an
//! in-memory store (the data path of `cargo bench --bench host`'s
//! `toka/memory`), for a profiler to look at.
//!
//! The machine's clocks are noisy; instruction counts are not. The cost of
//! one operation, in instructions, is the difference between two runs
//! divided by the difference in operations (so that the compile of the
//! component and the host's start cancel out):
//!
//! ```text
//! cargo build --profile bench -p toka-host --example ops
//! valgrind --tool=callgrind --callgrind-out-file=a.out target/release/examples/ops 1000
//! valgrind --tool=callgrind --callgrind-out-file=b.out target/release/examples/ops 100000
//! ```
//!
//! and `callgrind_annotate` of each names where they go. BENCHMARKS.md,
//! "Instructions per operation", has the figures.
//!
//! `ops N --audit` then re-runs every recorded authorization decision of
//! that log ([`toka_host::audit`], what `toka verify --auth` does) and
//! says how long it took.

#![allow(missing_docs, reason = "an example")]

use std::sync::Arc;

use toka_host::bench_support::{quota_free_config, time_observations};
use toka_host::{Grant, Host, MemoryStore, RootKey};
use toka_kernel::Limits;

/// The allocator the `toka` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (ops, audit) = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => (100_000, false),
        [n] | [n, "--audit"] if n.parse::<u64>().is_ok_and(|n| n > 0) => {
            (n.parse().unwrap_or_default(), args.len() == 2)
        }
        _ => {
            eprintln!(
                "usage: ops [N [--audit]]: N, the number of operations, is a positive integer"
            );
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let store = Arc::new(MemoryStore::new(Limits::default()));
        let root = RootKey::generate();
        let public = root.public();
        let host = Host::open(Arc::clone(&store) as _, root, quota_free_config())
            .await
            .expect("a host");
        let path = toka_agents::path("test-bench").expect("the test-bench agent");
        let bytes = std::fs::read(path).expect("read the test-bench agent");
        let component = host.install("bench", bytes).await.expect("install");
        let rights = Grant::Rights(vec!["observe".parse().expect("a right")]);
        let agent = host.spawn(component, "bench", rights).await.expect("spawn");
        let took = time_observations(&host, agent, ops).await;
        println!("{ops} operations in {took:?}");
        host.shutdown().await.expect("shut down");
        if audit {
            let start = std::time::Instant::now();
            let report = toka_host::audit(store.as_ref(), public).expect("the log audits");
            let took = start.elapsed();
            assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
            println!(
                "audited {} records ({} allowed decisions) in {took:?}",
                report.records, report.allowed
            );
        }
    });
}

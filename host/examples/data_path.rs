//! Runs observations through a host on a memory store and prints the time
//! per operation: the data path of `cargo bench -p toka-host --bench host`
//! (`toka/memory`) without criterion's set-up around it, for a profiler.
//!
//! `cargo run --profile bench -p toka-host --features bench --example data_path -- [OPS]`
//! (default 2 000 000), e.g. under `perf record --call-graph dwarf`.

use std::sync::Arc;

use toka_host::bench_support::{quota_free_config, time_observations};
use toka_host::{EventStore, Grant, Host, MemoryStore, RootKey};
use toka_kernel::Limits;

/// The allocator the `toka` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let ops: u64 = match std::env::args().nth(1).map(|s| s.parse()) {
        None => 2_000_000,
        Some(Ok(ops)) if ops > 0 => ops,
        Some(_) => {
            eprintln!("error: OPS is a positive number of operations");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new(Limits::default()));
        let host = Host::open(store, RootKey::generate(), quota_free_config())
            .await
            .expect("open a host");
        let bytes = std::fs::read(toka_agents::path("test-bench").expect("the test-bench agent"))
            .expect("read the test-bench agent");
        let component = host.install("bench", bytes).await.expect("install");
        let grant = Grant::Rights(vec!["observe".parse().expect("a right")]);
        let agent = host.spawn(component, "bench", grant).await.expect("spawn");
        // Warm: the instance made, its code touched.
        time_observations(&host, agent, 10_000).await;
        let elapsed = time_observations(&host, agent, ops).await;
        println!(
            "{ops} observations: {:.1} ns/op",
            elapsed.as_nanos() as f64 / ops as f64
        );
        host.shutdown().await.expect("shut down");
    });
}

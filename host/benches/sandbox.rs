//! What the sandbox's CPU limits cost, side by side in one run.
//!
//! `cargo bench -p toka-host --bench sandbox`
//!
//! The `test-bench` agent's `compute N` task (pure guest CPU: an integer hash
//! loop, no host calls) under four engine configurations: no limits; fuel
//! metering; epoch interruption (a 10 ms ticker, the guest yielding at each
//! tick, as Toka runs guests); both. Goal (issue 6): the default
//! configuration costs ≤ 15% over no limits.

#![allow(missing_docs, reason = "criterion generates the bench entry points")]
#![allow(unreachable_pub, reason = "bindgen output in a bench crate")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod guest {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agent",
        imports: { "toka:agent/kernel.submit": async | trappable, default: trappable },
        exports: { default: async },
    });
}

/// A host that answers every call and does nothing else (it links
/// `wasi:http`, which `test-bench` imports for `get`, and never uses it).
struct Ctx {
    wasi: WasiCtx,
    http: wasmtime_wasi_http::WasiHttpCtx,
    table: ResourceTable,
}

impl wasmtime_wasi_http::WasiHttpView for Ctx {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl guest::toka::agent::types::Host for Ctx {}
impl guest::toka::agent::kernel::Host for Ctx {
    async fn submit(
        &mut self,
        _op: guest::toka::agent::types::Operation,
    ) -> wasmtime::Result<
        Result<guest::toka::agent::types::Receipt, guest::toka::agent::types::Error>,
    > {
        Ok(Ok(guest::toka::agent::types::Receipt {
            seq: 0,
            created: None,
        }))
    }
    fn self_id(&mut self) -> wasmtime::Result<guest::toka::agent::types::EntityId> {
        Ok(guest::toka::agent::types::EntityId { hi: 0, lo: 1 })
    }
    fn get_state(&mut self, _key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn state_keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(Vec::new())
    }
    fn log(&mut self, _l: guest::toka::agent::types::LogLevel, _m: String) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// The workloads: a dependency chain, a sort, and text work.
const WORKLOADS: [(&str, &str, u64); 3] = [
    ("hash chain, 20M steps", "compute 20000000", 20_000_000),
    ("sort 1M numbers", "sort 1000000", 1_000_000),
    ("count 500k words", "words 500000", 500_000),
];

fn sandbox(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bytes = std::fs::read(toka_agents::path("test-bench").unwrap()).unwrap();
    for (workload, description, elements) in WORKLOADS {
        let mut group = c.benchmark_group(workload);
        group.sample_size(20);
        group.throughput(Throughput::Elements(elements));
        for (name, fuel, epochs) in [
            ("no limits", false, false),
            ("fuel", true, false),
            ("epochs", false, true),
            ("fuel + epochs", true, true),
        ] {
            let mut config = Config::new();
            config.consume_fuel(fuel).epoch_interruption(epochs);
            let engine = Engine::new(&config).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let ticker = epochs.then(|| {
                let (engine, stop) = (engine.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                        engine.increment_epoch();
                    }
                })
            });
            let component = Component::new(&engine, &bytes).unwrap();
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
            guest::Agent::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).unwrap();
            let pre = guest::AgentPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
            let mut store = Store::new(
                &engine,
                Ctx {
                    wasi: WasiCtx::builder().build(),
                    http: wasmtime_wasi_http::WasiHttpCtx::new(),
                    table: ResourceTable::new(),
                },
            );
            if fuel {
                store.set_fuel(u64::MAX).unwrap();
            }
            if epochs {
                store.epoch_deadline_async_yield_and_update(1);
            }
            let agent = rt.block_on(pre.instantiate_async(&mut store)).unwrap();
            let task = guest::toka::agent::types::Task {
                id: guest::toka::agent::types::EntityId { hi: 0, lo: 2 },
                description: description.to_owned(),
            };
            group.bench_function(name, |b| {
                b.iter(|| {
                    rt.block_on(
                        agent
                            .toka_agent_handler()
                            .call_handle_task(&mut store, &task),
                    )
                    .unwrap()
                    .unwrap()
                });
            });
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = ticker {
                t.join().unwrap();
            }
        }
        group.finish();
    }
}

criterion_group!(benches, sandbox);
criterion_main!(benches);

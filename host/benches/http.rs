//! Outbound HTTP, side by side in one run (issue 14).
//!
//! `cargo bench -p toka-host --bench http`
//!
//! The `test-bench` agent's `get N URL` task (N `GET`s of a 2-byte body
//! from a loopback server, one connection each, as `wasi:http` makes them):
//! - `plain`: the component in bare wasmtime with wasmtime-wasi-http's own
//!   `send_request` — no journal, no gate;
//! - `journaled`: the same task in a Toka host on a redb data dir: each
//!   request authorized and journaled, durable before it leaves, its
//!   response recorded;
//! - `journaled-in-memory`: the same on an in-memory store — the journal's
//!   own cost, without the fsync that makes each request durable;
//! - `journal-answer`: a re-run after a crash getting the same N responses
//!   from the journal (the sequencer's answer for each request, as the
//!   sandbox asks for it), no network.
//!
//! Goals: journaled ≤ 1.5× plain; a journal answer ≥ 20× faster than the
//! network round trip.

#![allow(missing_docs, reason = "criterion generates the bench entry points")]
#![allow(unreachable_pub, reason = "bindgen output in a bench crate")]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use toka_host::{DataDir, Grant, Host, HostConfig, Right};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: u64 = 100;

mod guest {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agent",
        imports: { "toka:agent/kernel.submit": async | trappable, default: trappable },
        exports: { default: async },
    });
}

struct DefaultHooks;
impl WasiHttpHooks for DefaultHooks {}

struct Ctx {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: DefaultHooks,
    table: ResourceTable,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Ctx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
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
        Ok(Err(guest::toka::agent::types::Error::Unsupported(
            "no kernel".into(),
        )))
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
    fn log(
        &mut self,
        _level: guest::toka::agent::types::LogLevel,
        _message: String,
    ) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// A loopback server answering `200 ok` to each connection (`hold`: never
/// answering, counting arrivals).
fn server(hold: bool) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let arrived = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&arrived);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            count.fetch_add(1, Ordering::SeqCst);
            if hold {
                held.push(stream);
                continue;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (port, arrived)
}

fn bench_http(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bytes = std::fs::read(toka_agents::path("test-bench").unwrap()).unwrap();
    let (port, _) = server(false);
    let url = format!("http://127.0.0.1:{port}/x");
    let task = format!("get {N} {url}");
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(N));
    group.sample_size(10);

    // Plain: bare wasmtime and wasmtime-wasi-http.
    let mut config = Config::new();
    config.wasm_component_model(true);
    let engine = Engine::new(&config).unwrap();
    let component = Component::new(&engine, &bytes).unwrap();
    let mut linker: Linker<Ctx> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    guest::Agent::add_to_linker::<_, HasSelf<_>>(&mut linker, |ctx| ctx).unwrap();
    let pre = guest::AgentPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    group.bench_function("plain", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let ctx = Ctx {
                    wasi: WasiCtx::builder().build(),
                    http: WasiHttpCtx::new(),
                    hooks: DefaultHooks,
                    table: ResourceTable::new(),
                };
                let mut store = Store::new(&engine, ctx);
                let agent = pre.instantiate_async(&mut store).await.unwrap();
                let done = agent
                    .toka_agent_handler()
                    .call_handle_task(
                        &mut store,
                        &guest::toka::agent::types::Task {
                            id: guest::toka::agent::types::EntityId { hi: 0, lo: 2 },
                            description: task.clone(),
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(done, Ok(b"200".to_vec()), "{N} bodies of 2 bytes");
            })
        });
    });

    // Journaled: the same task in a Toka host on redb.
    let dir = tempfile::tempdir().unwrap();
    let (host, agent) = runtime.block_on(host_with_agent(&dir.path().join("data"), &bytes));
    group.bench_function("journaled", |b| {
        b.iter(|| runtime.block_on(run_task(&host, agent, &task)));
    });
    runtime.block_on(host.shutdown()).unwrap();

    // The same on an in-memory store: the journal's own cost, without the
    // fsyncs that make each request durable before it leaves.
    let host = runtime.block_on(async {
        let store: Arc<dyn toka_host::EventStore> =
            Arc::new(toka_host::MemoryStore::new(toka_kernel::Limits::default()));
        Host::open(store, toka_host::RootKey::generate(), HostConfig::new())
            .await
            .unwrap()
    });
    let agent = runtime.block_on(spawn_bench(&host, &bytes));
    group.bench_function("journaled-in-memory", |b| {
        b.iter(|| runtime.block_on(run_task(&host, agent, &task)));
    });
    runtime.block_on(host.shutdown()).unwrap();

    // Journal answers: a task that made N requests and then waits for one
    // that never comes back is interrupted; the host opens again with its
    // agents stopped, and the re-run's N requests are answered.
    let (hold, arrived) = server(true);
    let data = dir.path().join("rerun");
    let (host, agent) = runtime.block_on(host_with_agent(&data, &bytes));
    let pending = runtime.block_on(host.schedule(
        agent,
        &format!("get {N} {url} http://127.0.0.1:{hold}/hold"),
    ));
    let pending = pending.unwrap();
    let started = Instant::now();
    while arrived.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(120), "never held");
        std::thread::sleep(Duration::from_millis(10));
    }
    runtime.block_on(host.shutdown()).unwrap();
    // The abandoned task still holds the file until its held request times
    // out: the re-run opens a copy (as a restarted process would find it).
    let copy = dir.path().join("rerun-copy");
    std::fs::create_dir(&copy).unwrap();
    for file in [DataDir::DB_FILE, DataDir::KEY_FILE] {
        std::fs::copy(data.join(file), copy.join(file)).unwrap();
    }
    let host = runtime.block_on(open(&copy, false));
    let requests = host.bench_journaled_requests(pending).unwrap();
    assert_eq!(requests.len() as u64, N + 1, "N answered, one waiting");
    let answered: Vec<_> = requests[..N as usize].to_vec();
    group.bench_function("journal-answer", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for (index, request) in &answered {
                    let len = host
                        .bench_journal_answer(agent, pending, *index, request.clone())
                        .await
                        .unwrap();
                    assert_eq!(len, 2);
                }
            })
        });
    });
    group.finish();
    runtime.block_on(host.shutdown()).unwrap();
}

async fn open(data: &std::path::Path, start: bool) -> Host {
    let dir = DataDir::new(data);
    let root = dir.root_key(None, true).unwrap();
    let store = dir
        .open_or_create(&toka_kernel::Limits::default(), &root)
        .unwrap();
    let mut config = HostConfig::new();
    config.start_agents(start);
    Host::open(Arc::new(store), root, config).await.unwrap()
}

/// A host on `data` with the test-bench agent.
async fn host_with_agent(data: &std::path::Path, bytes: &[u8]) -> (Host, toka_kernel::AgentId) {
    let host = open(data, true).await;
    let agent = spawn_bench(&host, bytes).await;
    (host, agent)
}

/// Installs the test-bench agent and spawns it, allowed to reach any
/// loopback port.
async fn spawn_bench(host: &Host, bytes: &[u8]) -> toka_kernel::AgentId {
    let component = host.install("test-bench", bytes.to_vec()).await.unwrap();
    let mut rights = Right::defaults();
    rights.push("http 127.0.0.1".parse().unwrap());
    host.spawn(component, "bench", Grant::Rights(rights))
        .await
        .unwrap()
}

/// Schedules `task` and waits until it completed.
async fn run_task(host: &Host, agent: toka_kernel::AgentId, task: &str) {
    let id = host.schedule(agent, task).await.unwrap();
    let info = host
        .wait_task(id, Duration::from_secs(120))
        .await
        .unwrap()
        .expect("the task ends");
    assert!(
        matches!(info.state, toka_host::TaskState::Completed { .. }),
        "{info:?}"
    );
}

criterion_group!(benches, bench_http);
criterion_main!(benches);

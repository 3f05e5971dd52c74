//! The service side by side with the library, in one run.
//!
//! `cargo bench -p toka-server --bench serve`
//!
//! - tasks: callers (1, 10, 100), each with its own `hello` agent, schedule
//!   a task and wait for it to complete, again and again: (a) in-process
//!   through the `Host` API (`schedule`, `wait_task`), (b) through the HTTP
//!   API on loopback (`POST /v1/agents/{id}/tasks`, `GET
//!   /v1/tasks/{id}?wait=30s`). Tasks completed per second and the p50/p99
//!   of schedule-to-completed. Both durable on redb. Goal: (b) ≥ 50% of (a)
//!   at the same concurrency.
//! - stream: one SSE consumer reading records of one observation each, (c)
//!   from the log (a consumer catching up from record 1) and (d) live, as a
//!   `test-bench` agent commits them. Goal: ≥ 100 000 events/s.
//! - readers: agents' operations alone and beside four `read` clients
//!   asking for pages from the middle of the log (each a replay of 100 000
//!   records): the replays run at a low priority, so the agents keep
//!   their pace.
//!
//! `-- tasks`, `-- stream` or `-- readers` runs only that part.
//!
//! It prints a table (no criterion: the figures are rates and percentiles
//! of whole runs).

#![allow(missing_docs, reason = "a bench binary")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use toka_host::{EventStore, Grant, Host, HostConfig, RedbStore, RootKey};
use toka_kernel::{AgentId, Limits};
use toka_server::{ServeConfig, Server};

/// A host on a fresh redb file, with quotas that a benchmark never meets.
async fn host() -> (tempfile::TempDir, Arc<RedbStore>, Host) {
    let dir = tempfile::tempdir().unwrap();
    let root = RootKey::generate();
    let store = Arc::new(
        RedbStore::create(
            &dir.path().join("toka.redb"),
            &Limits::default(),
            &root.public().to_bytes(),
        )
        .unwrap(),
    );
    let host = Host::open(Arc::clone(&store) as Arc<dyn EventStore>, root, config())
        .await
        .unwrap();
    (dir, store, host)
}

/// Quotas that a benchmark never meets; no snapshots.
fn config() -> HostConfig {
    let huge = toka_kernel::Rate::new(u64::MAX >> 1, u64::MAX >> 1);
    let mut config = HostConfig::new();
    config
        .rules(toka_kernel::Rules {
            quotas: toka_kernel::Quotas {
                log_bytes: huge,
                ops: huge,
                tasks: huge,
                log_bytes_total: None,
                tasks_total: None,
            },
            ..toka_kernel::Rules::default()
        })
        .snapshot_every(0);
    config
}

async fn agents(host: &Host, component: &str, n: usize) -> Vec<AgentId> {
    let bytes = toka_agents::bundled(component)
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| std::fs::read(toka_agents::path(component).unwrap()).unwrap());
    let digest = host.install(component, bytes).await.unwrap();
    let mut agents = Vec::new();
    for i in 0..n {
        let grant = Grant::Rights(vec!["observe".parse().unwrap()]);
        agents.push(host.spawn(digest, &format!("a{i}"), grant).await.unwrap());
    }
    agents
}

/// Tasks per second and the latencies, sorted.
struct Measured {
    per_second: f64,
    latencies: Vec<Duration>,
}

impl Measured {
    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

async fn measure<F, Fut>(callers: usize, per_caller: usize, call: F) -> Measured
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let mut handles = Vec::new();
    for caller in 0..callers {
        let call = call.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_caller);
            for i in 0..per_caller {
                let t = Instant::now();
                call(caller, i).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Measured {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies,
    }
}

async fn in_process(callers: usize, per_caller: usize) -> Measured {
    let (_dir, _store, host) = host().await;
    let host = Arc::new(host);
    let agents = Arc::new(agents(&host, "hello", callers).await);
    let h = Arc::clone(&host);
    let measured = measure(callers, per_caller, move |caller, i| {
        let host = Arc::clone(&h);
        let agents = Arc::clone(&agents);
        async move {
            let task = host
                .schedule(agents[caller], &format!("t{i}"))
                .await
                .unwrap();
            let info = host.wait_task(task, Duration::from_secs(30)).await.unwrap();
            assert!(
                info.is_some_and(|t| matches!(t.state, toka_host::TaskState::Completed { .. }))
            );
        }
    })
    .await;
    Arc::try_unwrap(host)
        .ok()
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    measured
}

/// A server on loopback over a fresh host; its URL and admin token.
async fn serve(
    host: Host,
    store: Arc<dyn EventStore>,
) -> (
    String,
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
    tempfile::TempDir,
) {
    let registered = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap());
    config
        .register_in(registered.path().to_owned())
        .rate(toka_server::Rate::per_second(1e9))
        // Every caller is one client here (loopback), each with a long
        // poll and a request at once.
        .max_connections_per_client(1024);
    let server = Server::bind(config).await.unwrap();
    let url = server.url();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        server
            .run(host, store, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let token = loop {
        if let Ok(Some((_, token))) =
            toka_server::registration::Registration::read(registered.path())
        {
            break token;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    (url, token, stop, running, registered)
}

async fn over_http(callers: usize, per_caller: usize) -> Measured {
    let (_dir, store, host) = host().await;
    let agents = Arc::new(agents(&host, "hello", callers).await);
    let (url, token, stop, running, _registered) = serve(host, store).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let measured = measure(callers, per_caller, move |caller, i| {
        let http = http.clone();
        let url = url.clone();
        let token = token.clone();
        let agent = agents[caller];
        async move { run_over_http(&http, &url, &token, agent, &format!("t{i}")).await }
    })
    .await;
    stop.send(()).unwrap();
    running.await.unwrap();
    measured
}

/// Sends `request` with `token`; its JSON answer.
async fn answer(request: reqwest::RequestBuilder, token: &str) -> Value {
    request
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Schedules `description` for `agent` through the API; the answer.
async fn schedule_over_http(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    agent: AgentId,
    description: &str,
) -> Value {
    let request = http
        .post(format!("{url}/v1/agents/{agent}/tasks"))
        .json(&json!({"description": description}));
    answer(request, token).await
}

/// Waits (up to 60 s) for the task `task` (an answer of
/// [`schedule_over_http`]) to end; how it ended.
async fn wait_over_http(http: &reqwest::Client, url: &str, token: &str, task: &Value) -> Value {
    let id = task["id"].as_str().unwrap();
    answer(http.get(format!("{url}/v1/tasks/{id}?wait=60s")), token).await
}

/// Schedules `description` for `agent` through the API and waits (up to
/// 60 s) for it to complete.
async fn run_over_http(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    agent: AgentId,
    description: &str,
) {
    let task = schedule_over_http(http, url, token, agent, description).await;
    let done = wait_over_http(http, url, token, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
}

/// Events per second one SSE consumer receives: `n` observations, read
/// from the log (`live` false: committed before the consumer connects) or
/// live, as they are committed.
async fn stream(n: u64, live: bool) -> f64 {
    let (_dir, store, host) = host().await;
    let agent = agents(&host, "test-bench", 1).await[0];
    let (url, token, stop, running, _registered) = serve(host, store).await;
    let http = reqwest::Client::new();
    let get = |path: String| http.get(format!("{url}{path}")).bearer_auth(&token).send();
    let from = get("/v1/status".into())
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["head"]["seq"]
        .as_u64()
        .unwrap()
        + 1;
    // Tasks of at most 50 000 observations (under the per-task operation
    // limit); then wait for the last.
    let produce = {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let mut left = n;
            let mut last = Value::Null;
            while left > 0 {
                let count = left.min(50_000);
                left -= count;
                let description = format!("observe {count}");
                last = schedule_over_http(&http, &url, &token, agent, &description).await;
            }
            wait_over_http(&http, &url, &token, &last).await;
        }
    };
    let producing = if live {
        Some(produce)
    } else {
        produce.await;
        None
    };
    let response = get(format!(
        "/v1/events/stream?from={from}&kind=observation_emitted"
    ))
    .await
    .unwrap();
    let producing = producing.map(tokio::spawn);
    let started = Instant::now();
    let mut body = response.bytes_stream();
    let mut events = 0u64;
    let mut carry = Vec::new();
    while events < n {
        let chunk = body.next().await.unwrap().unwrap();
        carry.extend_from_slice(&chunk);
        // Whole messages; an observation record carries one event.
        let mut start = 0;
        while let Some(end) = carry[start..].windows(2).position(|w| w == b"\n\n") {
            if carry[start..start + end].starts_with(b"event: record") {
                events += 1;
            }
            start += end + 2;
        }
        carry.drain(..start);
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    drop(body);
    if let Some(producing) = producing {
        producing.await.unwrap();
    }
    stop.send(()).unwrap();
    running.await.unwrap();
    rate
}

/// Agents' operations while `readers` clients with a `read` token ask
/// for a page of events from the middle of a 200 000-record log again and
/// again (each page a replay of the 100 000 records before it: no
/// snapshot), on redb in memory (`/dev/shm` where there is one: what is
/// shared is the CPU, not the disk): the agents' operations per second
/// (four agents running `observe 50000` at once through the API, eight
/// times over: both cores busy), and the readers' pages per second.
async fn beside_log_readers(readers: usize) -> (f64, f64) {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let root = RootKey::generate();
    let store: Arc<dyn EventStore> = Arc::new(
        RedbStore::create(
            &dir.path().join("toka.redb"),
            &Limits::default(),
            &root.public().to_bytes(),
        )
        .unwrap(),
    );
    let host = Host::open(Arc::clone(&store), root, config())
        .await
        .unwrap();
    let busy = agents(&host, "test-bench", 4).await;
    for agent in &busy {
        let task = host.schedule(*agent, "observe 50000").await.unwrap();
        host.wait_task(task, Duration::from_secs(120))
            .await
            .unwrap();
    }
    let (url, token, stop, running, _registered) = serve(host, store).await;
    let http = reqwest::Client::new();
    let reader: String = http
        .post(format!("{url}/v1/tokens"))
        .bearer_auth(&token)
        .json(&json!({"operator": "read"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reading = Arc::new(AtomicBool::new(true));
    let pages = Arc::new(AtomicU64::new(0));
    let mut hostile = Vec::new();
    for _ in 0..readers {
        let (http, url, reader) = (http.clone(), url.clone(), reader.clone());
        let (reading, pages) = (Arc::clone(&reading), Arc::clone(&pages));
        hostile.push(tokio::spawn(async move {
            while reading.load(Ordering::Relaxed) {
                let page = http
                    .get(format!("{url}/v1/events?from=100000&limit=10"))
                    .bearer_auth(&reader)
                    .send()
                    .await
                    .unwrap();
                assert!(page.status().is_success(), "{}", page.status());
                page.bytes().await.unwrap();
                pages.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Rounds of the four agents running `observe 50000` at once (both
    // cores busy).
    const ROUNDS: usize = 8;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let mut round = Vec::new();
        for agent in &busy {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            let agent = *agent;
            round.push(tokio::spawn(async move {
                run_over_http(&http, &url, &token, agent, "observe 50000").await;
            }));
        }
        for task in round {
            task.await.unwrap();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops_per_second = (ROUNDS * 4 * 50_000) as f64 / elapsed;
    let pages_per_second = pages.load(Ordering::Relaxed) as f64 / elapsed;
    reading.store(false, Ordering::Relaxed);
    for reader in hostile {
        reader.await.unwrap();
    }
    stop.send(()).unwrap();
    running.await.unwrap();
    (ops_per_second, pages_per_second)
}

fn main() {
    toka_server::install_crypto();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `-- readers` (or `tasks`, `stream`): only those parts.
    let parts = ["tasks", "stream", "readers"];
    let asked: Vec<String> = std::env::args()
        .filter(|a| parts.contains(&a.as_str()))
        .collect();
    let part = |name: &str| asked.is_empty() || asked.iter().any(|a| a == name);
    runtime.block_on(async {
        if part("tasks") {
            tasks().await;
        }
        if part("stream") {
            streams().await;
        }
        if part("readers") {
            readers().await;
        }
    });
}

/// Tasks through the library and through the HTTP API, side by side.
async fn tasks() {
    println!("tasks scheduled and completed, each caller waiting for its task (redb, durable)");
    println!(
        "| callers | in-process tasks/s | p50 | p99 | HTTP tasks/s | p50 | p99 | HTTP / in-process |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (callers, per_caller) in [(1, 300), (10, 100), (100, 20)] {
        let a = in_process(callers, per_caller).await;
        let b = over_http(callers, per_caller).await;
        println!(
            "| {callers} | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {:.2} ms | {:.2} ms | {:.0}% |",
            a.per_second,
            ms(a.percentile(0.5)),
            ms(a.percentile(0.99)),
            b.per_second,
            ms(b.percentile(0.5)),
            ms(b.percentile(0.99)),
            100.0 * b.per_second / a.per_second
        );
    }
}

/// One SSE consumer, from the log and live.
async fn streams() {
    println!();
    println!("one SSE consumer, one observation per record");
    println!("| what | events/s |");
    println!("|---|---|");
    let n = 200_000;
    println!(
        "| from the log ({n} records) | {:.0} |",
        stream(n, false).await
    );
    println!(
        "| live, as committed ({n} records) | {:.0} |",
        stream(n, true).await
    );
}

/// Agents' tasks beside read clients replaying the log.
async fn readers() {
    println!();
    println!(
        "four agents' operations beside read clients paging from the middle of a 200 000-record log (redb on tmpfs, no snapshot)"
    );
    println!("| read clients | agents' ops/s | their pages/s |");
    println!("|---|---|---|");
    for readers in [0, 4] {
        let (ops, pages) = beside_log_readers(readers).await;
        println!("| {readers} | {ops:.0} | {pages:.1} |");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

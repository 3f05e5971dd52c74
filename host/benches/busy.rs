//! A thousand agents busy at once (issue 15): does every agent make
//! progress beside a CPU-heavy and an op-heavy neighbour, and how spread
//! are task latencies?
//!
//! `cargo bench -p toka-host --bench busy` (1 000 agents × 5 tasks; set
//! `TOKA_BUSY_AGENTS` and `TOKA_BUSY_TASKS` for others).
//!
//! A real host on a redb data dir (durable, every operation authorized),
//! with its default places for instances (512, fewer than the busy
//! agents, so actors take turns). Each busy agent (`test-bench`, holding
//! `observe`) runs its tasks one after another, closed loop: schedule
//! `observe 20`, wait for it to end, schedule the next. Beside them, all
//! the time, a hog runs `compute 100000000` tasks (CPU, no operations), a
//! chatty agent runs `observe 5000` tasks (operations), and a lister runs
//! `keys 4096 1000` tasks (it lists its 4 096 keys of 200 bytes a thousand
//! times: reads, which take the host's lock and are not operations; its
//! keys are put before), each again as soon as the last one ended
//! (`TOKA_BUSY_LISTER=0`: no lister; `TOKA_BUSY_READ_PACE=0`: its reads
//! unpaced, as before `runtime::reads`; `TOKA_BUSY_SHORT_KEYS=1`: its keys
//! of 1 to 3 bytes, where the copying is mostly one allocation a key).
//!
//! A task's latency is from its scheduling (the call returned) to its end
//! as `Host::wait_task` reports it. Prints p50, p90, p99 and the largest,
//! p99 / p50, tasks per second, and how many tasks the neighbours ran.

#![allow(missing_docs, reason = "a bench binary")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use toka_host::{Grant, Host, HostConfig, Right};
use toka_kernel::{AgentId, Quotas, Rules};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The longest a bench task may take before the run is called stuck.
const STUCK: Duration = Duration::from_secs(600);

fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is a count")))
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this
    // without it: a smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let agents = if full {
        count("TOKA_BUSY_AGENTS", 1_000)
    } else {
        20
    };
    let tasks = if full { count("TOKA_BUSY_TASKS", 5) } else { 2 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(agents, tasks, full));
}

async fn run(agents: usize, tasks: usize, full: bool) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (store, root) = toka_host::bench_support::data_dir(dir.path());
    let mut config = HostConfig::new();
    config.rules(Rules {
        quotas: Quotas::UNLIMITED,
        ..Rules::default()
    });
    // `TOKA_BUSY_READ_PACE=0`: reads of an agent's state unpaced, as before
    // they were (to compare).
    if count("TOKA_BUSY_READ_PACE", 1) == 0 {
        config.agent_limits(toka_host::AgentLimits {
            state_read_bytes_per_second: u64::MAX,
            ..toka_host::AgentLimits::default()
        });
    }
    let host = Arc::new(
        Host::open(Arc::new(store), root, config)
            .await
            .expect("a host"),
    );
    let bytes = std::fs::read(toka_agents::path("test-bench").expect("test-bench agent"))
        .expect("read the agent");
    let component = host.install("test-bench", bytes).await.expect("install");
    let observe: Right = "observe".parse().expect("a right");
    let spawn = |name: String| {
        let host = Arc::clone(&host);
        let observe = observe.clone();
        async move {
            host.spawn(component, &name, Grant::Rights(vec![observe]))
                .await
                .expect("spawn")
        }
    };
    let mut busy = Vec::with_capacity(agents);
    for i in 0..agents {
        busy.push(spawn(format!("busy-{i}")).await);
    }
    let hog = spawn("hog".into()).await;
    let chatty = spawn("chatty".into()).await;
    let lister = host
        .spawn(
            component,
            "lister",
            Grant::Rights(vec![observe.clone(), "state".parse().expect("a right")]),
        )
        .await
        .expect("spawn");
    let with_lister = count("TOKA_BUSY_LISTER", 1) != 0;
    // Its keys are put before the run: it only lists them then (fewer in
    // a smoke run).
    // `TOKA_BUSY_SHORT_KEYS=1`: keys of 1 to 3 bytes, not 200.
    let short = count("TOKA_BUSY_SHORT_KEYS", 0) != 0;
    let (fill, list) = match (full, short) {
        (true, false) => ("keys 4096 0", "keys 4096 1000"),
        (true, true) => ("keys 4096 0 short", "keys 4096 1000 short"),
        (false, _) => ("keys 256 0", "keys 256 10"),
    };
    let filled = host.schedule(lister, fill).await.expect("schedule");
    host.wait_task(filled, STUCK).await.expect("wait");
    host.run_until_idle().await.expect("idle");

    let done = Arc::new(AtomicBool::new(false));
    let neighbour = |agent: AgentId, task: &'static str| {
        let (host, done) = (Arc::clone(&host), Arc::clone(&done));
        let ran = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&ran);
        let handle = tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let id = host.schedule(agent, task).await.expect("schedule");
                host.wait_task(id, STUCK).await.expect("wait");
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        (handle, ran)
    };
    let (hog_loop, hog_ran) = neighbour(hog, "compute 100000000");
    let (chatty_loop, chatty_ran) = neighbour(chatty, "observe 5000");
    let lister_loop = with_lister.then(|| neighbour(lister, list));

    let started = Instant::now();
    let mut loops = Vec::with_capacity(agents);
    for agent in busy {
        let host = Arc::clone(&host);
        loops.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(tasks);
            for _ in 0..tasks {
                let scheduled = Instant::now();
                let id = host.schedule(agent, "observe 20").await.expect("schedule");
                let info = host
                    .wait_task(id, STUCK)
                    .await
                    .expect("wait")
                    .expect("the task");
                assert!(
                    info.state.is_end(),
                    "a busy agent's task did not end within {STUCK:?}: {}",
                    info.state.name()
                );
                latencies.push(scheduled.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(agents * tasks);
    for l in loops {
        latencies.extend(l.await.expect("a busy agent's loop"));
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    hog_loop.await.expect("the hog's loop");
    chatty_loop.await.expect("the chatty agent's loop");
    let lister_ran = match lister_loop {
        Some((handle, ran)) => {
            handle.await.expect("the lister's loop");
            Some(ran.load(Ordering::SeqCst))
        }
        None => None,
    };
    host.run_until_idle().await.expect("idle");
    let (completed, failed) = host
        .state(|s| {
            s.agents()
                .fold((0, 0), |(c, f), (_, a)| (c + a.completed, f + a.failed))
        })
        .await;

    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len());
        latencies[i - 1]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p90, p99) = (at(0.50), at(0.90), at(0.99));
    println!(
        "busy agents:        {agents} × {tasks} tasks `observe 20`, beside a hog (`compute 100000000`), a chatty agent (`observe 5000`){}",
        if with_lister {
            " and a lister (`keys 4096 1000`)"
        } else {
            ""
        }
    );
    println!(
        "busy tasks:         {} in {:.1} s ({:.0} tasks/s)",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency:            p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; p99/p50 {:.1}",
        ms(p50),
        ms(p90),
        ms(p99),
        ms(*latencies.last().expect("latencies")),
        p99.as_secs_f64() / p50.as_secs_f64()
    );
    println!(
        "neighbours ran:     hog {} tasks, chatty {} tasks{}",
        hog_ran.load(Ordering::SeqCst),
        chatty_ran.load(Ordering::SeqCst),
        lister_ran.map_or_else(String::new, |n| format!(", lister {n} tasks"))
    );
    println!("tasks in all:       {completed} completed, {failed} failed");
    assert_eq!(failed, 0, "no task fails");
    Arc::into_inner(host)
        .expect("the only handle")
        .shutdown()
        .await
        .expect("shutdown");
}

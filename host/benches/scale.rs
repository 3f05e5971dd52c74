//! Many agents on one host (issue 15): spawn + first task, memory per
//! idle agent, and the gate's work per spawned agent.
//!
//! `cargo bench -p toka-host --bench scale` (100 000 agents; set
//! `TOKA_SCALE_AGENTS` for another count).
//!
//! A real host on a redb data dir (durable, every operation authorized)
//! with the `test-bench` component. Spawners (root agents holding
//! `spawn test-bench` and `schedule children`) run `spawn 1000 PREFIX`
//! tasks: each spawns 1 000 children holding only `observe` and gives each
//! the task `observe 1`. The run ends when every child completed its task.
//! Quotas are unlimited (a tree is charged to its root, and the default
//! task rate of a root is 500/s): what is measured is the host, not a quota.
//!
//! The bench keeps at most 8 000 children spawned and not yet done (a
//! steady arrival of agents); `TOKA_SCALE_WINDOW=burst` schedules every
//! spawner task at once instead (a backlog of all the children: the gate
//! keeps 16 384 tokens verified, so most children's tokens are verified
//! again when they run), or a number sets another window.
//! `TOKA_SCALE_ALLOCATOR=on-demand` runs it without wasmtime's pooling
//! allocator (the host's default is pooling).
//!
//! Prints: agents per second (spawn + first task, wall clock), RSS before,
//! after and at peak, bytes of kernel state per agent (the snapshot's
//! size), host bytes per idle agent (RSS growth per agent, after the
//! run), the token verifications and uncached authorizations per
//! spawned agent, and the data dir's size on disk.

#![allow(missing_docs, reason = "a bench binary")]

use std::sync::Arc;
use std::time::Instant;

use toka_host::{Grant, Host, HostConfig, Right};
use toka_kernel::{Quotas, Rules};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Children per spawner task.
const PER_TASK: u64 = 1_000;
/// Children spawned and not yet done, at most (`TOKA_SCALE_WINDOW`).
const WINDOW: u64 = 8_000;
/// Spawner agents (each under the kernel's live-children limit).
const SPAWNERS: u64 = 8;

fn main() {
    let agents: u64 = std::env::var("TOKA_SCALE_AGENTS")
        .ok()
        .map(|v| v.parse().expect("TOKA_SCALE_AGENTS is a count"))
        .unwrap_or(100_000);
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this
    // without it: a smoke run then.
    let agents = if std::env::args().any(|a| a == "--bench") {
        agents
    } else {
        2 * PER_TASK
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(agents));
}

async fn run(agents: u64) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (store, root) = toka_host::bench_support::data_dir(dir.path());
    let mut config = HostConfig::new();
    let pooling = std::env::var("TOKA_SCALE_ALLOCATOR").as_deref() != Ok("on-demand");
    let window = match std::env::var("TOKA_SCALE_WINDOW").as_deref() {
        Ok("burst") => None,
        Ok(n) => Some(
            n.parse::<u64>()
                .expect("TOKA_SCALE_WINDOW is a count or `burst`"),
        ),
        Err(_) => Some(WINDOW),
    };
    config.pooling(pooling);
    config.rules(Rules {
        quotas: Quotas::UNLIMITED,
        ..Rules::default()
    });
    let host = Host::open(Arc::new(store), root, config)
        .await
        .expect("a host");
    let bytes = std::fs::read(toka_agents::path("test-bench").expect("test-bench agent"))
        .expect("read the agent");
    let component = host.install("test-bench", bytes).await.expect("install");
    let rights: Vec<Right> = ["observe", "spawn test-bench", "schedule children"]
        .iter()
        .map(|r| r.parse().expect("a right"))
        .collect();
    let mut spawners = Vec::new();
    for i in 0..SPAWNERS {
        spawners.push(
            host.spawn(
                component,
                &format!("spawner-{i}"),
                Grant::Rights(rights.clone()),
            )
            .await
            .expect("spawn a spawner"),
        );
    }
    host.run_until_idle().await.expect("idle");
    let before = Memory::now();
    let metrics_before = host.metrics();

    let started = Instant::now();
    let tasks = agents.div_ceil(PER_TASK);
    let completed = |host: &Host| {
        host.metrics().events_of("task_completed") - metrics_before.events_of("task_completed")
    };
    let mut spawned = 0;
    for t in 0..tasks {
        // Children spawned but not yet done stay within the window (each
        // spawner task counts as one of them).
        while window.is_some_and(|w| spawned + t > completed(&host) + w) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let n = PER_TASK.min(agents - t * PER_TASK);
        let spawner = spawners[(t % SPAWNERS) as usize];
        host.schedule(spawner, &format!("spawn {n} t{t}"))
            .await
            .expect("schedule a spawner task");
        spawned += n;
    }
    host.run_until_idle().await.expect("run until idle");
    let elapsed = started.elapsed();
    let after = Memory::now();
    let metrics = host.metrics();

    let (completed, failed, live) = host
        .state(|s| {
            let (mut completed, mut failed) = (0, 0);
            for (_, a) in s.agents() {
                if spawners.contains(&a.parent) {
                    completed += a.completed;
                    failed += a.failed;
                }
            }
            (completed, failed, s.live_agents())
        })
        .await;
    let (_, state) = host.encoded_state().await;
    host.shutdown().await.expect("shut down");
    assert_eq!(
        (completed, failed),
        (agents, 0),
        "every child completes its task; the figures would be wrong otherwise"
    );

    let per_agent = |n: u64| n as f64 / agents as f64;
    println!("agents:                         {agents} (+{SPAWNERS} spawners), {live} live");
    println!(
        "instance allocator:             {}",
        if pooling { "pooling" } else { "on-demand" }
    );
    match window {
        Some(w) => println!("children in flight:             at most {w}"),
        None => println!("children in flight:             all (one burst)"),
    }
    println!(
        "spawn + first task:             {:.2} s, {:.0} agents/s",
        elapsed.as_secs_f64(),
        agents as f64 / elapsed.as_secs_f64()
    );
    println!(
        "RSS before / after / peak:      {} / {} / {} MiB",
        before.rss >> 20,
        after.rss >> 20,
        after.peak >> 20
    );
    println!(
        "kernel state per agent:         {:.0} bytes (snapshot {} KiB)",
        per_agent(state.len() as u64),
        state.len() >> 10
    );
    println!(
        "host RSS growth per agent:      {:.0} bytes",
        per_agent(after.rss.saturating_sub(before.rss))
    );
    println!(
        "tokens verified per agent:      {:.3}",
        per_agent(metrics.tokens_verified - metrics_before.tokens_verified)
    );
    println!(
        "authorizations per agent:       {:.3} uncached ({:.3} checks)",
        per_agent(metrics.authorizations - metrics_before.authorizations),
        per_agent(metrics.checks - metrics_before.checks)
    );
    println!(
        "records per agent:              {:.2}",
        per_agent(metrics.records - metrics_before.records)
    );
    let batches = metrics.batches - metrics_before.batches;
    let commit_seconds = metrics.commit_seconds.sum - metrics_before.commit_seconds.sum;
    println!(
        "log commits:                    {batches}, {:.0} records each, {:.2} ms each",
        (metrics.records - metrics_before.records) as f64 / batches.max(1) as f64,
        1e3 * commit_seconds / batches.max(1) as f64
    );
    println!(
        "data dir on disk:               {} MiB",
        dir_bytes(dir.path()) >> 20
    );
}

/// Bytes of the files directly in `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("the data dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum()
}

/// The process's resident memory now and at its peak, from /proc.
struct Memory {
    rss: u64,
    peak: u64,
}

impl Memory {
    fn now() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib << 10)
        };
        Self {
            rss: field("VmRSS:"),
            peak: field("VmHWM:"),
        }
    }
}

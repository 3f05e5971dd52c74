//! Agents that all grow their memory at once: what the host holds with and
//! without its memory budget (`HostConfig::memory_budget`).
//!
//! `cargo bench -p toka-host --bench hogs` (200 agents, a 1 GiB budget; set
//! `TOKA_HOGS_AGENTS` and `TOKA_HOGS_BUDGET` for others).
//!
//! Each agent (`hostile-memory`, its own tree, the default 64 MiB limit)
//! runs `grow`: it allocates and touches 1 MiB after 1 MiB until a growth
//! fails. All are scheduled at once on a host with its default 512 places.
//! Each budget runs in a process of its own (this binary again), so each
//! peak RSS (`VmHWM`) is that run's alone: first with no budget (what the
//! host held before it had one), then with the budget. Prints, per run, the
//! peak RSS, the most the instances held together (`Host::memory`), the
//! time until every task ended, and how the tasks failed.

#![allow(missing_docs, reason = "a bench binary")]

use std::sync::Arc;
use std::time::Instant;

use toka_host::{Grant, Host, HostConfig, Right};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The environment variable that makes this binary one run.
const RUN: &str = "TOKA_HOGS_RUN";

fn main() {
    if let Ok(budget) = std::env::var(RUN) {
        let agents = std::env::var("TOKA_HOGS_AGENTS")
            .expect("set by the parent")
            .parse()
            .expect("a count");
        let budget = (budget != "none").then(|| budget.parse().expect("bytes"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(run(agents, budget));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this
    // without it: a smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let agents = match std::env::var("TOKA_HOGS_AGENTS") {
        Ok(n) => n.parse::<usize>().expect("TOKA_HOGS_AGENTS is a count"),
        Err(_) if full => 200,
        Err(_) => 8,
    };
    let budget = match std::env::var("TOKA_HOGS_BUDGET") {
        Ok(size) => toka_host::parse_size(&size).expect("TOKA_HOGS_BUDGET is a size"),
        Err(_) if full => 1 << 30,
        Err(_) => 32 << 20,
    };
    println!(
        "hogs:               {agents} agents growing at once, 64 MiB each at most; places 512"
    );
    for run in ["none".to_owned(), budget.to_string()] {
        let status = std::process::Command::new(std::env::current_exe().expect("this binary"))
            .env(RUN, &run)
            .env("TOKA_HOGS_AGENTS", agents.to_string())
            .status()
            .expect("run this binary again");
        assert!(status.success(), "the run with budget {run} failed");
    }
}

/// Peak resident set size of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

async fn run(agents: usize, budget: Option<u64>) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (store, root) = toka_host::bench_support::data_dir(dir.path());
    let mut config = HostConfig::new();
    // No budget: as large as can be.
    config.memory_budget(budget.unwrap_or(u64::MAX));
    let host = Host::open(Arc::new(store), root, config)
        .await
        .expect("a host");
    let bytes = std::fs::read(toka_agents::path("hostile-memory").expect("hostile-memory agent"))
        .expect("read the agent");
    let component = host
        .install("hostile-memory", bytes)
        .await
        .expect("install");
    let observe: Right = "observe".parse().expect("a right");
    let mut hogs = Vec::with_capacity(agents);
    for i in 0..agents {
        let grant = Grant::Rights(vec![observe.clone()]);
        hogs.push(
            host.spawn(component, &format!("hog-{i}"), grant)
                .await
                .expect("spawn"),
        );
    }
    host.run_until_idle().await.expect("idle");
    let before = peak_rss();
    let started = Instant::now();
    for &hog in &hogs {
        host.schedule(hog, "grow").await.expect("schedule");
    }
    host.run_until_idle().await.expect("idle");
    let elapsed = started.elapsed();
    let memory = host.memory();
    let metrics = host.metrics();
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let label = budget.map_or_else(|| "none".to_owned(), |b| format!("{:.0} MiB", mib(b)));
    println!(
        "budget {label:>9}:   peak RSS {:.0} MiB (before the tasks {:.0} MiB), instances held at most {:.0} MiB, {:.1} s; tasks failed {}, host conditions {}",
        mib(peak_rss()),
        mib(before),
        mib(memory.peak),
        elapsed.as_secs_f64(),
        metrics.events_of("task_failed"),
        metrics.events_of("host_condition"),
    );
    if let Some(budget) = budget {
        assert!(
            memory.peak <= budget,
            "the instances held more than the budget"
        );
    }
    assert_eq!(memory.in_use, 0, "every instance gave its memory back");
    host.shutdown().await.expect("shutdown");
}

//! Costs as the log grows (issue 15): do they stay flat from 10⁵ to 10⁷
//! records?
//!
//! `cargo bench -p toka-host --bench growth` (up to 10 000 000 records; set
//! `TOKA_GROWTH_RECORDS` for another largest size).
//!
//! A real host on a redb data dir (durable, every operation authorized,
//! a snapshot every 10 000 records as by default) with 1 000 `test-bench`
//! agents: the state stays the same size while the log grows (the agents
//! run `observe 10000` tasks in turn). At 10⁵, 10⁶ and 10⁷ records it
//! measures, each the median of 5:
//!
//! - an agent's operation: one `observe 10000` task, per operation;
//! - an operator's operation: scheduling a task (durable) — what `toka
//!   agent resume` and every other operator command cost on a running host;
//! - a page of `toka events --from`: 100 records, from 5 000 records back
//!   and from the middle of the log (a replay from the checkpoint before
//!   it);
//! - the committed state (what `toka state` reads on a running host);
//! - start-up: opening the data dir and the host (the newest snapshot and
//!   the log after it), as `toka state` and `toka agent resume` do without
//!   a running host;
//!
//! and prints them, with the RSS, the redb file's size and the snapshots it
//! keeps (checkpoints included), as a Markdown table. Then it archives the
//! whole log while eight agents write to it (`toka archive` through a
//! running server) and prints what that took, how long the cut held the
//! log writer back, the archive's size, the data dir's before and after
//! an offline compaction, and `toka verify` from the anchor.

#![allow(missing_docs, reason = "a bench binary")]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use toka_host::{DataDir, EventStore, Grant, Host, HostConfig};
use toka_kernel::{AgentId, Quotas, Rules};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AGENTS: usize = 1_000;
const OPS_PER_TASK: u64 = 10_000;

fn main() {
    // `cargo test --benches` runs this without `--bench`: a smoke run then.
    let full = std::env::args().any(|a| a == "--bench");
    let largest: u64 = if full {
        std::env::var("TOKA_GROWTH_RECORDS")
            .ok()
            .map(|v| v.parse().expect("TOKA_GROWTH_RECORDS is a count"))
            .unwrap_or(10_000_000)
    } else {
        30_000
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(largest, if full { AGENTS } else { 10 }));
}

fn config() -> HostConfig {
    // Up to 4 000 tasks of 10 000 operations are queued at once while the
    // log grows, and running tasks take turns: a task's wall-clock
    // deadline (30 s by default) counts its turns waiting too, which at
    // 10⁷ records failed some. The bench measures growth, not deadlines.
    let limits = toka_host::AgentLimits {
        deadline_per_task: Duration::from_secs(3600),
        ..toka_host::AgentLimits::default()
    };
    let mut config = HostConfig::new();
    config
        .rules(Rules {
            quotas: Quotas::UNLIMITED,
            ..Rules::default()
        })
        .agent_limits(limits);
    config
}

async fn open(path: &Path) -> Host {
    let (store, root) = toka_host::bench_support::data_dir(path);
    Host::open(Arc::new(store), root, config())
        .await
        .expect("a host")
}

/// The median of 5 timings of `f`.
async fn median<F: Future<Output = ()>>(mut f: impl FnMut() -> F) -> Duration {
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let start = Instant::now();
        f().await;
        times.push(start.elapsed());
    }
    times.sort_unstable();
    times[2]
}

async fn run(largest: u64, agents: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("data");
    let mut host = open(&path).await;
    let bytes = std::fs::read(toka_agents::path("test-bench").expect("test-bench agent"))
        .expect("read the agent");
    let component = host.install("test-bench", bytes).await.expect("install");
    let observe = Grant::Rights(vec!["observe".parse().expect("a right")]);
    let mut ids: Vec<AgentId> = Vec::with_capacity(agents);
    for i in 0..agents {
        ids.push(
            host.spawn(component, &format!("agent-{i}"), observe.clone())
                .await
                .expect("spawn"),
        );
    }
    let work = format!("observe {OPS_PER_TASK}");
    let mut next = 0;
    println!(
        "| records | op | operator op | page back | page mid | state | start-up | RSS | redb file | snapshots kept |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let sizes: Vec<u64> = [100_000, 1_000_000, 10_000_000]
        .into_iter()
        .filter(|s| *s < largest)
        .chain([largest])
        .collect();
    for size in sizes {
        let phase = host.head().seq + 1;
        // Grow the log to `size` records, the agents taking turns.
        while host.head().seq < size {
            let left = size - host.head().seq;
            let tasks = (left / OPS_PER_TASK).clamp(1, agents as u64 * 4);
            for _ in 0..tasks {
                host.schedule(ids[next % agents], &work)
                    .await
                    .expect("schedule");
                next += 1;
            }
            host.run_until_idle().await.expect("run");
        }
        let records = host.head().seq;
        let op = median(|| {
            let (host, agent, work) = (&host, ids[next % agents], &work);
            async move {
                host.schedule(agent, work).await.expect("schedule");
                host.run_until_idle().await.expect("run");
            }
        })
        .await
            / OPS_PER_TASK as u32;
        // Scheduling returns once its record is durable.
        let operator = median(|| {
            let (host, agent) = (&host, ids[0]);
            async move {
                host.schedule(agent, "none").await.expect("schedule");
            }
        })
        .await;
        host.run_until_idle().await.expect("run");
        no_failures(&host, phase);
        let head = host.head().seq;
        let page = |from: u64| {
            let host = &host;
            move || async move {
                let page = host.log_events(from, 100).expect("a page");
                assert_eq!(page.len(), 100);
            }
        };
        let back = median(page(head - 5_000)).await;
        let middle = median(page(head / 2)).await;
        let state = median(|| {
            let host = &host;
            async move {
                let (_, bytes) = host.encoded_state().await;
                assert!(!bytes.is_empty());
            }
        })
        .await;
        host.shutdown().await.expect("shutdown");
        let (kept, kept_bytes) = snapshots(&path);
        let startup = median(|| {
            let path = &path;
            async move {
                open(path).await.shutdown().await.expect("shutdown");
            }
        })
        .await;
        host = open(&path).await;
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
        println!(
            "| {records} | {:.2} µs | {} | {} | {} | {} | {} | {} MiB | {} MiB | {kept} ({:.1} MiB) |",
            op.as_secs_f64() * 1e6,
            ms(operator),
            ms(back),
            ms(middle),
            ms(state),
            ms(startup),
            rss_mib(),
            std::fs::metadata(path.join(DataDir::DB_FILE)).map_or(0, |m| m.len() >> 20),
            kept_bytes as f64 / f64::from(1 << 20),
        );
    }
    retention(host, &ids, &path).await;
}

/// The snapshots the data dir keeps: how many, and their bytes.
fn snapshots(path: &Path) -> (usize, usize) {
    let store = DataDir::new(path).open_existing().expect("the data dir");
    let seqs = store.snapshots().expect("the snapshots");
    let bytes = seqs
        .iter()
        .map(|seq| {
            store
                .snapshot(*seq)
                .expect("a snapshot")
                .map_or(0, |b| b.len())
        })
        .sum();
    (seqs.len(), bytes)
}

/// Archives the whole log while agents write to it (`toka archive`
/// through a running server), as a host that ran for months would, then
/// compacts the data dir offline, and prints what each took and what the
/// live data dir keeps.
async fn retention(host: Host, ids: &[AgentId], path: &Path) {
    let db = path.join(DataDir::DB_FILE);
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len() >> 20);
    let before = size(&db);
    let to = path.with_extension("archive");
    // The host was opened again: its first task compiles the component.
    host.schedule(ids[0], "observe 1").await.expect("schedule");
    host.run_until_idle().await.expect("run");
    for agent in ids.iter().take(8) {
        host.schedule(*agent, &format!("observe {OPS_PER_TASK}"))
            .await
            .expect("schedule");
    }
    let head = host.head().seq;
    let start = Instant::now();
    let archived = tokio::task::block_in_place(|| {
        host.archive(&to, 0, &mut |_, _| std::ops::ControlFlow::Continue(()))
    })
    .expect("archive");
    let took = start.elapsed();
    let meanwhile = host.head().seq - head;
    host.run_until_idle().await.expect("run");
    // Those tasks' records before the cut are in the archive.
    no_failures(&host, host.log_start().expect("the log's start"));
    host.shutdown().await.expect("shutdown");
    let mut store = DataDir::new(path).open_existing().expect("the data dir");
    let start = Instant::now();
    store.compact().expect("compact");
    let compacted = start.elapsed();
    let start = Instant::now();
    let verified = toka_host::verify(&store).expect("the anchored log verifies");
    let verify = start.elapsed();
    assert_eq!(verified.anchor, Some(archived.last));
    println!();
    println!(
        "| archived records | archive, agents running | writer waited | their ops meanwhile | compact, offline | archive file | redb before | redb after | verify after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.1} s | {:.0} ms | {meanwhile} | {:.1} s | {} MiB | {before} MiB | {} MiB | {:.2} ms |",
        archived.last,
        took.as_secs_f64(),
        archived.writer_wait.as_secs_f64() * 1e3,
        compacted.as_secs_f64(),
        archived.bytes >> 20,
        size(&db),
        verify.as_secs_f64() * 1e3,
    );
}

/// Panics naming why tasks failed among the records from `from` on: a
/// failed task makes every figure wrong.
fn no_failures(host: &Host, from: u64) {
    let mut reasons = Vec::new();
    let mut next = from;
    loop {
        let page = host.log_events(next, 10_000).expect("read the log");
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for record in &page {
            for event in &record.events {
                if let toka_kernel::Event::TaskFailed { reason, .. } = event {
                    reasons.push(format!("record {}: {reason}", record.seq));
                }
            }
        }
    }
    assert!(
        reasons.is_empty(),
        "{} tasks failed; the figures would be wrong. First: {:?}",
        reasons.len(),
        &reasons[..reasons.len().min(3)]
    );
}

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 10)
}

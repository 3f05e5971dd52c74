//! A cell's log on NATS JetStream beside redb (issue 16): what one durable
//! append costs, by batch size, on redb, on JetStream R1 (one node) and on
//! JetStream R3 (a 3-node cluster on loopback), all on this machine.
//!
//! `cargo bench -p toka-host --bench cluster` (needs `nats-server` on PATH).
//!
//! Each store gets batches of 1, 16 and 256 records of 128 bytes, appended
//! one after another as the log writer does (each durable before the next);
//! it prints the median latency of an append and the records per second,
//! as a Markdown table. Then, on a 2-cell cluster (R1 and R3), a task
//! scheduled in cell 0 for a `counter` agent of cell 1: the time from the
//! schedule until cell 1 committed its completion (outbox, JetStream,
//! inbox, the agent's run), one task at a time; and 2 000 tasks at once:
//! how fast cell 0 forwards them, and how fast cell 1 takes in what its
//! inbox holds when its mailroom starts (as a host taking a cell over).

#![allow(missing_docs, reason = "a bench binary")]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use toka_host::{
    Batch, CellStore, Cluster, ClusterConfig, EventStore, Grant, Holder, Host, HostConfig, Lease,
    Mailroom, RedbStore, RootKey,
};
use toka_kernel::{ChainHead, Digest, Event, Limits};

const BATCHES: [usize; 3] = [1, 16, 256];
const RECORD: usize = 128;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `nodes` nats-server processes routed to each other; their client URLs.
fn nats(nodes: usize, dir: &std::path::Path) -> (Vec<Child>, String) {
    let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
    let children = (0..nodes)
        .map(|i| {
            let mut command = Command::new("nats-server");
            command
                .args(["-js", "-a", "127.0.0.1", "-n", &format!("n{i}")])
                .args(["-p", &ports[i].to_string()])
                .arg("-sd")
                .arg(dir.join(format!("n{i}")))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if nodes > 1 {
                let others: Vec<String> = (0..nodes)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                    .collect();
                command
                    .args(["--cluster_name", "bench"])
                    .args(["--cluster", &format!("nats://127.0.0.1:{}", routes[i])])
                    .args(["--routes", &others.join(",")]);
            }
            command.spawn().expect("nats-server on PATH")
        })
        .collect();
    let urls = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    (children, urls)
}

/// A fresh cluster of `cells` cells on `nodes` nodes (replicas = nodes).
fn cluster(
    nodes: usize,
    cells: u32,
    dir: &std::path::Path,
    root: &RootKey,
) -> (Vec<Child>, Cluster) {
    let (children, urls) = nats(nodes, dir);
    let cluster = Cluster::connect(&urls, "bench", Duration::from_secs(30)).unwrap();
    let config = ClusterConfig::new(
        cells,
        u32::try_from(nodes).unwrap(),
        root.public().to_bytes().to_vec(),
        Duration::from_secs(30),
    )
    .unwrap();
    let started = Instant::now();
    while let Err(e) = cluster.init(&config) {
        assert!(started.elapsed() < Duration::from_secs(60), "{e}");
        std::thread::sleep(Duration::from_millis(500));
    }
    (children, cluster)
}

/// Cell `cell`'s store, under a lease of its own.
fn open(cluster: &Cluster, cell: u32) -> (Lease, CellStore) {
    let holder = Holder {
        host: format!("bench-{cell}"),
        url: None,
    };
    let ttl = cluster.config().unwrap().lease_ttl();
    let lease = Lease::try_acquire(cluster, cell, &holder, ttl)
        .unwrap()
        .unwrap();
    let store = CellStore::open(cluster, cell, &holder.host, lease.guard()).unwrap();
    (lease, store)
}

/// A cell store on a fresh one-cell cluster of `nodes` nodes.
fn cell(
    nodes: usize,
    dir: &std::path::Path,
    root: &RootKey,
) -> (Vec<Child>, Cluster, Lease, CellStore) {
    let (children, cluster) = cluster(nodes, 1, dir, root);
    let (lease, store) = open(&cluster, 0);
    (children, cluster, lease, store)
}

/// The log messages of the cell whose opening is measured.
const OPENED: usize = 20_000;

/// Opens cell 0 read-only: how long until it could serve, and until all
/// of its log is indexed (reading from record 1 waits for that).
fn open_cell(cluster: &Cluster) -> (Duration, Duration) {
    let started = Instant::now();
    let reader = CellStore::open_read_only(cluster, 0).unwrap();
    let serving = started.elapsed();
    let first = reader.records(1).unwrap().next().unwrap().unwrap();
    assert_eq!(first.0, 1);
    (serving, started.elapsed())
}

fn stop(children: &mut [Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Two hosts, of cells 0 and 1, with their mailrooms; `2 × tasks` tasks
/// for a counter of cell 1, from cell 0 then from cell 1: each latency.
async fn measure(
    cluster: &Cluster,
    key: &std::path::Path,
    tasks: usize,
) -> (Vec<Duration>, (Duration, Duration)) {
    let mut hosts = Vec::new();
    let mut kept = Vec::new();
    for cell in 0..2 {
        let (lease, store) = open(cluster, cell);
        let (root, _) = RootKey::load_or_create(key).unwrap();
        let host = Host::open(Arc::new(store), root, HostConfig::new())
            .await
            .unwrap();
        kept.push((lease, Mailroom::start(cluster, host.mail())));
        hosts.push(host);
    }
    let bytes = std::fs::read(toka_agents::path("counter").unwrap()).unwrap();
    let component = hosts[1].install("counter", bytes).await.unwrap();
    let rights = ["state", "observe"].map(|r| r.parse().unwrap()).to_vec();
    let counter = hosts[1]
        .spawn(component, "counter", Grant::Rights(rights))
        .await
        .unwrap();
    let mut took = Vec::with_capacity(2 * tasks);
    for i in 0..2 * tasks {
        // From cell 0, then (for comparison) from cell 1 itself.
        let from = &hosts[i / tasks];
        let mut committed = hosts[1].subscribe();
        let started = Instant::now();
        let task = from.schedule(counter, "1").await.unwrap();
        while !completes(&committed.recv().await.unwrap(), task) {}
        took.push(started.elapsed());
    }
    let flood = flood(cluster, &hosts, &mut kept[1].1, counter).await;
    for host in hosts {
        host.shutdown().await.unwrap();
    }
    for (lease, mailroom) in kept {
        drop(mailroom);
        lease.release();
    }
    (took, flood)
}

/// Tasks sent at once in the flood.
const FLOOD: usize = 2_000;

/// [`FLOOD`] tasks scheduled in cell 0 for `counter` in cell 1 while
/// cell 1 takes nothing in (its mailroom stopped): how long until cell 0
/// forwarded them all (scheduling as fast as its outbox bound lets it);
/// then cell 1's mailroom started again: how long until it took every one
/// in (queued or refused), as a host taking a cell over catches up.
async fn flood(
    cluster: &Cluster,
    hosts: &[Host],
    mailroom: &mut Option<Mailroom>,
    counter: toka_kernel::EntityId,
) -> (Duration, Duration) {
    *mailroom = None;
    let mut sent = hosts[0].subscribe();
    let started = Instant::now();
    let forwarding = async {
        let mut forwarded = 0;
        while forwarded < FLOOD {
            let batch = sent.recv().await.unwrap();
            for event in batch.records.iter().flat_map(|record| &record.events) {
                if let Event::TasksSent { count, .. } = event {
                    forwarded += *count as usize;
                }
            }
        }
    };
    let scheduling = async {
        let mut scheduled = 0;
        while scheduled < FLOOD {
            match hosts[0].schedule(counter, "1").await {
                Ok(_) => scheduled += 1,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::join!(forwarding, scheduling);
    let forwarded = started.elapsed();
    let mut committed = hosts[1].subscribe();
    let started = Instant::now();
    *mailroom = Mailroom::start(cluster, hosts[1].mail());
    let mut taken = 0;
    while taken < FLOOD {
        let batch = committed.recv().await.unwrap();
        taken += batch
            .records
            .iter()
            .flat_map(|record| &record.events)
            .filter(|e| matches!(e, Event::TaskScheduled { .. } | Event::TaskRefused { .. }))
            .count();
    }
    (forwarded, started.elapsed())
}

/// Whether `batch` completes `task`.
fn completes(batch: &toka_host::Committed, task: toka_kernel::TaskId) -> bool {
    batch.records.iter().any(|record| {
        record
            .events
            .iter()
            .any(|e| matches!(e, Event::TaskCompleted { task: t, .. } if *t == task))
    })
}

/// `tasks` tasks sent from cell 0 to a counter in cell 1, one at a time,
/// then `tasks` scheduled in cell 1 itself, on a 2-cell cluster of `nodes`
/// nodes: the latencies from scheduling until cell 1 committed the task's
/// completion.
fn cross_cell(nodes: usize, tasks: usize) -> (Vec<Duration>, Vec<Duration>, (Duration, Duration)) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("root.key");
    let (root, _) = RootKey::load_or_create(&key).unwrap();
    let (mut children, cluster) = cluster(nodes, 2, dir.path(), &root);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (took, flood) = runtime.block_on(measure(&cluster, &key, tasks));
    stop(&mut children);
    let local = took[tasks..].to_vec();
    let mut cross = took;
    cross.truncate(tasks);
    (cross, local, flood)
}

/// Appends `rounds` batches of `size` records after the store's head; the
/// median append latency.
fn appends(store: &dyn EventStore, size: usize, rounds: usize) -> Duration {
    let mut head = store.head().unwrap();
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let records: Vec<(u64, Vec<u8>)> = (1..=size as u64)
            .map(|i| (head.seq + i, vec![7; RECORD]))
            .collect();
        head = ChainHead {
            seq: head.seq + size as u64,
            hash: Digest::of(&head.seq.to_be_bytes()),
        };
        let batch = Batch {
            records,
            head,
            ..Batch::default()
        };
        let started = Instant::now();
        store.append(batch).unwrap();
        took.push(started.elapsed());
    }
    took.sort_unstable();
    took[took.len() / 2]
}

fn row(name: &str, store: &dyn EventStore) {
    for size in BATCHES {
        let rounds = if size >= 256 { 100 } else { 300 };
        let median = appends(store, size, rounds);
        let per_second = size as f64 / median.as_secs_f64();
        println!(
            "| {name} | {size} | {:.2} ms | {:.0} |",
            median.as_secs_f64() * 1e3,
            per_second
        );
    }
}

fn main() {
    let root = RootKey::generate();
    println!("| store | records per append | median append (durable) | records/s |");
    println!("|---|---|---|---|");
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::create(
        &dir.path().join("toka.redb"),
        &Limits::default(),
        &root.public().to_bytes(),
    )
    .unwrap();
    row("redb (fsync)", &redb);
    let mut opened = None;
    for nodes in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let (mut children, cluster, lease, store) = cell(nodes, dir.path(), &root);
        row(&format!("JetStream R{nodes}"), &store);
        if nodes == 1 {
            // Grow the log to OPENED messages (700 so far), then open it as
            // a host taking the cell over reads it.
            appends(&store, 1, OPENED - 700);
            let whole = open_cell(&cluster);
            // A snapshot 100 messages before the end: opening reads the
            // tail after it, and the rest in the background.
            let head = store.head().unwrap();
            store.put_snapshot(head.seq, vec![0; 1024]).unwrap();
            appends(&store, 1, 100);
            opened = Some((whole, open_cell(&cluster)));
        }
        drop(store);
        lease.release();
        stop(&mut children);
    }
    if let Some(((whole, _), (tail, all))) = opened {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        println!();
        println!(
            "opening a cell of {OPENED} log messages (R1, read-only, as a new owner reads it): {} without a snapshot; {} with one 100 messages before the end ({} until the messages before it are indexed too)",
            ms(whole),
            ms(tail),
            ms(all)
        );
    }
    println!();
    println!("| task for a counter in cell 1, until completed | median | p90 | max |");
    println!("|---|---|---|---|");
    let mut floods = Vec::new();
    for nodes in [1, 3] {
        let (cross, local, flood) = cross_cell(nodes, 200);
        floods.push((nodes, flood));
        for (what, mut took) in [("sent from cell 0", cross), ("scheduled in cell 1", local)] {
            took.sort_unstable();
            let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
            println!(
                "| JetStream R{nodes}, {what} | {} | {} | {} |",
                ms(took[took.len() / 2]),
                ms(took[took.len() * 9 / 10]),
                ms(took[took.len() - 1])
            );
        }
    }
    println!();
    println!(
        "| {FLOOD} tasks for cell 1 | cell 0 forwarding them | tasks/s | cell 1 taking them in (from a stopped inbox) | tasks/s |"
    );
    println!("|---|---|---|---|---|");
    for (nodes, (forwarded, taken)) in floods {
        let rate = |d: Duration| FLOOD as f64 / d.as_secs_f64();
        println!(
            "| JetStream R{nodes} | {:.0} ms | {:.0} | {:.0} ms | {:.0} |",
            forwarded.as_secs_f64() * 1e3,
            rate(forwarded),
            taken.as_secs_f64() * 1e3,
            rate(taken)
        );
    }
}

//! A cell's log on NATS JetStream beside redb (issue 16): what one durable
//! append costs, by batch size, on redb, on JetStream R1 (one node) and on
//! JetStream R3 (a 3-node cluster on loopback), all on this machine.
//!
//! `cargo bench -p toka-host --bench cluster` (needs `nats-server` on PATH).
//!
//! Each store gets batches of 1, 16 and 256 records of 128 bytes, appended
//! one after another as the log writer does (each durable before the next);
//! it prints the median latency of an append and the records per second,
//! as a Markdown table.

#![allow(missing_docs, reason = "a bench binary")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use toka_host::{
    Batch, CellStore, Cluster, ClusterConfig, EventStore, Holder, Lease, RedbStore, RootKey,
};
use toka_kernel::{ChainHead, Digest, Limits};

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

/// A cell store on a fresh cluster of `nodes` nodes (replicas = nodes).
fn cell(nodes: usize, dir: &std::path::Path, root: &RootKey) -> (Vec<Child>, Lease, CellStore) {
    let (children, urls) = nats(nodes, dir);
    let cluster = Cluster::connect(&urls, "bench", Duration::from_secs(30)).unwrap();
    let config = ClusterConfig::new(
        1,
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
    let holder = Holder {
        host: "bench".into(),
        url: None,
    };
    let lease = Lease::try_acquire(&cluster, 0, &holder, config.lease_ttl())
        .unwrap()
        .unwrap();
    let store = CellStore::open(&cluster, 0, "bench", lease.guard()).unwrap();
    (children, lease, store)
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
    for nodes in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let (mut children, lease, store) = cell(nodes, dir.path(), &root);
        row(&format!("JetStream R{nodes}"), &store);
        drop(store);
        lease.release();
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

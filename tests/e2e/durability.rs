//! Durable before visible: nothing reaches the bus before its batch is
//! committed to the store.

use std::sync::Arc;

use toka_host::{EventStore, Host, HostConfig, MemoryStore, RedbStore, RootKey};
use toka_kernel::{Event, Limits};

use crate::{agent_bytes, grant, temp_data};

/// Runs the planner/worker scenario on `store` and checks, for every batch
/// the bus delivers, that the store already holds it.
async fn check_store(store: Arc<dyn EventStore>, root: RootKey) {
    let host = Host::open(Arc::clone(&store), root, HostConfig::default())
        .await
        .unwrap();
    let mut rx = host.subscribe();
    let opened_at = host.head().seq;
    let checker = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut seen = opened_at;
            let mut completed = 0;
            while let Ok(batch) = rx.recv().await {
                let last = batch.records.last().expect("batches are not empty").seq;
                let durable = store.head().unwrap().seq;
                assert!(
                    durable >= last,
                    "batch up to #{last} published while the store ends at #{durable}"
                );
                for record in &batch.records {
                    assert_eq!(
                        record.seq,
                        seen + 1,
                        "the bus delivers every record once, in order"
                    );
                    seen = record.seq;
                    completed += record
                        .events
                        .iter()
                        .filter(|e| matches!(e, Event::TaskCompleted { .. }))
                        .count();
                }
            }
            (seen, completed)
        })
    };

    host.install("worker", agent_bytes("worker")).await.unwrap();
    let planner = host
        .install("planner", agent_bytes("planner"))
        .await
        .unwrap();
    let planner = host
        .spawn(
            planner,
            "planner",
            grant(&["observe", "state", "spawn worker", "schedule children"]),
        )
        .await
        .unwrap();
    host.schedule(planner, "workers=3: a; b; c; d; e; f; g; h; i")
        .await
        .unwrap();
    host.run_until_idle().await.unwrap();
    let head = host.head().seq;
    host.shutdown().await.unwrap();
    let (seen, completed) = checker.await.unwrap();
    assert_eq!(seen, head, "every record was published");
    assert_eq!(completed, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_only_carries_committed_batches_redb() {
    let (_tmp, data) = temp_data();
    std::fs::create_dir_all(&data).unwrap();
    let root = RootKey::generate();
    let store = RedbStore::create(
        &data.join("toka.redb"),
        &Limits::default(),
        &root.public().to_bytes(),
    )
    .unwrap();
    check_store(Arc::new(store), root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_only_carries_committed_batches_memory() {
    check_store(
        Arc::new(MemoryStore::new(Limits::default())),
        RootKey::generate(),
    )
    .await;
}

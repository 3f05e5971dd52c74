//! State survives a restart of the host.

use toka_kernel::{EntityId, Event};

use crate::{agent_bytes, grant, open_host, temp_data, toka};

/// The count the `counter` agent keeps, as the host's state shows it.
async fn count(host: &toka_host::Host, agent: EntityId) -> u64 {
    host.state(|s| {
        let bytes = s.agent(agent).expect("agent").state.get("count").cloned();
        u64::from_le_bytes(bytes.expect("count key").try_into().expect("8 bytes"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_continues_from_its_count_after_the_host_reopens() {
    let (_tmp, data) = temp_data();
    let (agent, digest_before) = {
        let host = open_host(&data).await;
        let component = host
            .install("counter", agent_bytes("counter"))
            .await
            .unwrap();
        let agent = host
            .spawn(component, "counter", grant(&["observe", "state"]))
            .await
            .unwrap();
        for step in ["5", "", "10"] {
            host.schedule(agent, step).await.unwrap();
        }
        host.run_until_idle().await.unwrap();
        assert_eq!(count(&host, agent).await, 16);
        let digest = host.state(|s| s.digest()).await;
        host.shutdown().await.unwrap();
        (agent, digest)
    };

    // A new host on the same file rebuilds the same state from the log ...
    let host = open_host(&data).await;
    assert_eq!(host.state(|s| s.digest()).await, digest_before);
    assert_eq!(count(&host, agent).await, 16);

    // ... and the agent picks up from there.
    let mut rx = host.subscribe();
    let task = host.schedule(agent, "4").await.unwrap();
    host.run_until_idle().await.unwrap();
    assert_eq!(count(&host, agent).await, 20);
    let mut output = None;
    while let Ok(batch) = rx.try_recv() {
        for record in &batch.records {
            for event in &record.events {
                if let Event::TaskCompleted {
                    task: t, output: o, ..
                } = event
                    && *t == task
                {
                    output = Some(String::from_utf8(o.clone()).unwrap());
                }
            }
        }
    }
    assert_eq!(output.as_deref(), Some("20"));
    host.shutdown().await.unwrap();
}

#[test]
fn toka_run_reuses_the_agent_so_its_count_carries_over() {
    let (_tmp, data) = temp_data();
    let first = toka(&data, &["run", "counter", "--task", "5"]);
    assert_eq!(first.ok(), "counter: count = 5\n");
    let second = toka(&data, &["run", "counter", "--task", "2"]);
    assert_eq!(second.ok(), "counter: count = 7\n");
    let verify = toka(&data, &["verify"]);
    assert!(verify.ok().starts_with("ok "), "{}", verify.stdout);
}

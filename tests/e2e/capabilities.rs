//! Every operation passes a biscuit capability check: with real compiled
//! agents (`test-probe` performs the operation its task names) in a real host.

use std::time::{Duration, UNIX_EPOCH};

use toka_host::{DataDir, Grant, Host, HostConfig, HostError, ManualClock, Token};
use toka_kernel::{EntityId, Event};

use crate::{agent_bytes, grant, open_host, open_host_with, outcome, temp_data};

/// A host with the probe installed under the name `probe`.
async fn host_with_probe(data: &std::path::Path) -> (Host, toka_kernel::Digest) {
    let host = open_host(data).await;
    let probe = host
        .install("probe", agent_bytes("test-probe"))
        .await
        .unwrap();
    (host, probe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_spawn_cannot_spawn() {
    let (_tmp, data) = temp_data();
    let (host, probe) = host_with_probe(&data).await;
    let agent = host
        .spawn(probe, "p", grant(&["observe", "state", "schedule self"]))
        .await
        .unwrap();
    let mut rx = host.subscribe();
    let err = outcome(&host, agent, "spawn probe child observe")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "capability denied: spawn_agent: missing right `spawn probe`"
    );
    assert_eq!(
        host.state(|s| s.agents().len()).await,
        1,
        "no child was spawned"
    );

    // The denial is in the log, against the agent, naming what was checked.
    let mut recorded = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        for record in &batch.records {
            for event in &record.events {
                if let Event::CapabilityDenied { agent: a, denial } = event {
                    recorded.push((*a, denial.clone()));
                }
            }
        }
    }
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let (who, denial) = &recorded[0];
    assert_eq!(*who, agent);
    assert_eq!(denial.operation, "spawn");
    assert_eq!(denial.targets[0], "probe");
    assert!(!denial.delegation);
    assert_eq!(denial.reason, "missing right `spawn probe`");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_use_a_right_its_parent_did_not_delegate() {
    let (_tmp, data) = temp_data();
    let (host, probe) = host_with_probe(&data).await;
    let parent = host
        .spawn(
            probe,
            "parent",
            grant(&["observe", "state", "spawn probe", "schedule children"]),
        )
        .await
        .unwrap();
    let child: EntityId = outcome(&host, parent, "spawn probe child observe")
        .await
        .unwrap()
        .parse()
        .unwrap();
    let record = host
        .state(|s| s.agent(child).cloned())
        .await
        .expect("child exists");
    assert_eq!(record.parent, parent);

    // Delegated: observe works; the parent may schedule onto its child.
    assert_eq!(
        outcome(&host, child, "observe hello").await,
        Ok("observed".into())
    );
    let scheduled = outcome(
        &host,
        parent,
        &format!("schedule {child} observe from parent"),
    )
    .await;
    assert!(scheduled.is_ok(), "{scheduled:?}");

    // Not delegated: the parent holds `state`, the child does not.
    assert_eq!(
        outcome(&host, child, "put k v").await,
        Err("capability denied: put_state: right `state` was not delegated to this agent".into())
    );
    // Not held by anyone here: the child cannot schedule onto its parent.
    let err = outcome(&host, child, &format!("schedule {parent} x"))
        .await
        .unwrap_err();
    assert!(
        err.contains("was not delegated") || err.contains("missing right"),
        "{err}"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_cannot_delegate_what_it_lacks() {
    let (_tmp, data) = temp_data();
    let (host, probe) = host_with_probe(&data).await;
    let parent = host
        .spawn(
            probe,
            "parent",
            grant(&["observe", "spawn probe", "schedule children"]),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome(&host, parent, "spawn probe child observe,state").await,
        Err(
            "capability denied: spawn_agent: cannot delegate `state`: missing right `state`".into()
        )
    );
    // `schedule children` does not cover delegating `schedule *`.
    let err = outcome(&host, parent, "spawn probe child schedule *")
        .await
        .unwrap_err();
    assert!(err.contains("cannot delegate `schedule *`"), "{err}");
    assert_eq!(
        host.state(|s| s.agents().len()).await,
        1,
        "no child was spawned"
    );
    // Regression: targets are relative to the holder, so `schedule
    // children` in the child's hands reaches the parent's grandchildren,
    // which the parent itself may not schedule: handing it over widens.
    let err = outcome(&host, parent, "spawn probe child schedule children")
        .await
        .unwrap_err();
    assert!(
        err.contains("cannot delegate `schedule children`: missing right `schedule *`"),
        "{err}"
    );
    // What it holds, as it reads for the child, it may delegate: the child
    // is one of its children, so the child may schedule itself.
    assert!(
        outcome(&host, parent, "spawn probe child observe,schedule self")
            .await
            .is_ok()
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegating_a_relative_right_never_widens() {
    // Regression: `schedule self` was checked literally, so a parent that
    // may only schedule itself could hand a child the right to schedule
    // the child — a target the parent lacked.
    let (_tmp, data) = temp_data();
    let (host, probe) = host_with_probe(&data).await;
    let parent = host
        .spawn(
            probe,
            "parent",
            grant(&["observe", "spawn probe", "schedule self"]),
        )
        .await
        .unwrap();
    let err = outcome(&host, parent, "spawn probe child schedule self")
        .await
        .unwrap_err();
    assert!(
        err.contains("cannot delegate `schedule self`: missing right `schedule children`"),
        "{err}"
    );
    assert_eq!(
        host.state(|s| s.agents().len()).await,
        1,
        "no child was spawned"
    );
    // The denial is in the log, and the audit agrees with it.
    let denied = host.state(|s| s.agents().len()).await;
    assert_eq!(denied, 1);
    host.shutdown().await.unwrap();
    let store = toka_host::DataDir::new(&data).open_read_only().unwrap();
    let root = toka_host::DataDir::new(&data)
        .root_key(None, false)
        .unwrap();
    let report = toka_host::audit(&store, root.public()).unwrap();
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert!(report.denied >= 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_checked_in_logical_time() {
    let (_tmp, data) = temp_data();
    let start: u64 = 1_800_000_000_000; // 2027-01-15, in ms
    let clock = ManualClock::at(start);
    let host = open_host_with(
        &data,
        HostConfig::new()
            .clock(std::sync::Arc::new(clock.clone()))
            .clone(),
    )
    .await;
    let probe = host
        .install("probe", agent_bytes("test-probe"))
        .await
        .unwrap();
    let root = DataDir::new(&data).root_key(None, false).unwrap();
    let expires = UNIX_EPOCH + Duration::from_millis(start) + Duration::from_secs(3600);
    let token = Token::issue(&root, &["observe".parse().unwrap()], &[], Some(expires)).unwrap();
    let agent = host
        .spawn(probe, "p", Grant::Token(token.to_base64().into_bytes()))
        .await
        .unwrap();

    assert_eq!(
        outcome(&host, agent, "observe before").await,
        Ok("observed".into())
    );
    clock.advance(2 * 3600 * 1000);
    // Expired at the host's logical time: the task fails without running.
    let err = outcome(&host, agent, "observe after").await.unwrap_err();
    assert!(
        err.starts_with("the agent's token was withdrawn: the token has expired"),
        "{err}"
    );

    // An expired token is refused up front rather than bound to a new agent.
    let refused = host
        .spawn(probe, "late", Grant::Token(token.to_base64().into_bytes()))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().starts_with("the token has expired"),
        "{refused}"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_parents_token_stops_it_and_its_children() {
    let (_tmp, data) = temp_data();
    let (host, probe) = host_with_probe(&data).await;
    let parent = host
        .spawn(probe, "parent", grant(&["observe", "spawn probe"]))
        .await
        .unwrap();
    let child: EntityId = outcome(&host, parent, "spawn probe child observe")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(outcome(&host, child, "observe ok").await.is_ok());

    let parent_token = host.state(|s| s.agent(parent).unwrap().token).await;
    let authority_id = host.token(&parent_token).unwrap().revocation_ids()[0].clone();
    host.revoke(authority_id.clone(), false).await.unwrap();
    for agent in [child, parent] {
        assert_eq!(
            outcome(&host, agent, "observe now").await,
            Err("the agent's token was withdrawn: the token has been revoked".into())
        );
    }

    // Revoking again, or an id no token has, is refused and changes nothing.
    let head = host.head();
    assert!(host.revoke(authority_id, false).await.is_err());
    let unknown = host.revoke(vec![7; 64], false).await.unwrap_err();
    assert!(
        unknown
            .to_string()
            .starts_with("no token in this data dir has revocation id 0707"),
        "{unknown}"
    );
    assert_eq!(host.head(), head);
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_revocation_id_is_looked_for_without_verifying_a_token_again() {
    // Regression: an id no stored token carries was then looked for in the
    // token of every agent in the state, each verified again (a signature
    // check, ~0.1 ms, on the runtime's thread) and admitted to the gate's
    // cache, where it pushed out the tokens running agents use.
    let (_tmp, data) = temp_data();
    let (host, probe) = host_with_probe(&data).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let agent = host
            .spawn(probe, &format!("agent-{n}"), grant(&["observe"]))
            .await
            .unwrap();
        let token = host.state(|s| s.agent(agent).unwrap().token).await;
        ids.push(host.token(&token).unwrap().revocation_ids()[0].clone());
    }
    host.shutdown().await.unwrap();
    // A host opened again has verified none of them yet.
    let host = open_host(&data).await;
    let before = host.metrics().tokens_verified;
    let unknown = host.revoke(vec![7; 64], false).await.unwrap_err();
    assert!(
        matches!(&unknown, HostError::UnknownRevocationId(id) if *id == "07".repeat(64)),
        "{unknown}"
    );
    assert_eq!(host.metrics().tokens_verified, before);
    // A stored agent's id is found, also without verifying its token.
    host.revoke(ids[13].clone(), false).await.unwrap();
    assert_eq!(host.metrics().tokens_verified, before);
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_from_the_documented_datalog_is_accepted_and_enforced() {
    let (_tmp, data) = temp_data();
    let (host, probe) = host_with_probe(&data).await;
    // Exactly what `biscuit generate --private-key-file toka-data/root.key FILE`
    // does: read the key file as hex text, build the authority block from the
    // Datalog, sign with the key.
    let key_text = std::fs::read_to_string(DataDir::new(&data).key_path()).unwrap();
    let private: biscuit_auth::PrivateKey = key_text.trim().parse().unwrap();
    let datalog = include_str!("../../docs/examples/operator-token.datalog");
    let token = biscuit_auth::Biscuit::builder()
        .code(datalog)
        .unwrap()
        .build(&biscuit_auth::KeyPair::from(&private))
        .unwrap();
    let agent = host
        .spawn(
            probe,
            "p",
            Grant::Token(token.to_base64().unwrap().into_bytes()),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome(&host, agent, "observe hi").await,
        Ok("observed".into())
    );
    assert!(
        outcome(&host, agent, &format!("schedule {agent} observe again"))
            .await
            .is_ok()
    );
    assert_eq!(
        outcome(&host, agent, "put k v").await,
        Err("capability denied: put_state: missing right `state`".into())
    );
    host.shutdown().await.unwrap();
}

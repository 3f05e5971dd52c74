//! The demo scenario end to end: its events in order, and a log that verifies.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{events_json, temp_data, toka};

fn str_field<'a>(event: &'a Value, key: &str) -> &'a str {
    event[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {event}"))
}

#[test]
fn demo_runs_the_planner_and_workers_and_the_log_tells_it_in_order() {
    let (_tmp, data) = temp_data();
    let run = toka(&data, &["demo", "--workers", "2"]);
    let stdout = run.ok();
    assert!(
        stdout.contains("demo finished: 5 tasks completed, 0 failed"),
        "{stdout}"
    );

    let events = events_json(&data);
    let kinds: Vec<&str> = events.iter().map(|e| str_field(e, "kind")).collect();
    // The rules the log is written under, the operator's part, then the
    // planner's task, in this exact order.
    assert_eq!(
        kinds[..10],
        [
            "rules_adopted",
            "component_installed",
            "component_installed",
            "agent_spawned",
            "task_scheduled",
            "task_started",
            "agent_spawned",
            "agent_spawned",
            "state_put",
            "task_scheduled",
        ]
    );
    let system = "0".repeat(32);
    let planner = str_field(&events[3], "agent");
    assert_eq!(str_field(&events[3], "parent"), system);
    assert_eq!(str_field(&events[3], "name"), "planner");
    for worker in &events[6..8] {
        assert_eq!(
            str_field(worker, "parent"),
            planner,
            "workers are the planner's children"
        );
        assert_eq!(str_field(worker, "origin"), planner);
    }

    // Every event has the common fields; task and agent events their own.
    let mut last_seq = 0;
    for e in &events {
        let seq = e["seq"].as_u64().expect("seq");
        assert!(seq >= last_seq, "events are in log order");
        last_seq = seq;
        str_field(e, "origin");
        match str_field(e, "kind") {
            k if k.starts_with("task_") => {
                str_field(e, "task");
                str_field(e, "agent");
            }
            "agent_spawned" => {
                str_field(e, "agent");
                str_field(e, "parent");
            }
            _ => {}
        }
    }

    // Each task goes scheduled → started → completed, and each agent starts
    // its tasks in the order they were scheduled (FIFO).
    let mut scheduled: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut started: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut stage: BTreeMap<&str, &str> = BTreeMap::new();
    for e in &events {
        let kind = str_field(e, "kind");
        if !kind.starts_with("task_") {
            continue;
        }
        let (task, agent) = (str_field(e, "task"), str_field(e, "agent"));
        let before = stage.insert(task, kind);
        match kind {
            "task_scheduled" => {
                assert_eq!(before, None);
                scheduled.entry(agent).or_default().push(task);
            }
            "task_started" => {
                assert_eq!(before, Some("task_scheduled"));
                started.entry(agent).or_default().push(task);
            }
            "task_completed" => assert_eq!(before, Some("task_started")),
            other => panic!("unexpected {other} in the demo: {e}"),
        }
    }
    assert_eq!(scheduled, started, "FIFO per agent");
    assert_eq!(stage.len(), 5, "1 planner task + 4 work items");
    assert!(stage.values().all(|s| *s == "task_completed"));
    let observations = events
        .iter()
        .filter(|e| str_field(e, "kind") == "observation_emitted")
        .count();
    assert_eq!(
        observations, 5,
        "the planner and each work item report once"
    );

    // The log verifies, and verify names the last record and the state digest.
    let verify = toka(&data, &["verify"]);
    let line = verify.ok().trim();
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts[..2], ["ok", &last_seq.to_string()], "{line}");
    assert_eq!(parts[2].len(), 64, "{line}");
}

#[test]
fn state_lists_the_agents_and_their_counts() {
    let (_tmp, data) = temp_data();
    toka(&data, &["demo", "--workers", "2"]).ok();
    let state: Value =
        serde_json::from_str(toka(&data, &["state", "--json"]).ok()).expect("state is JSON");
    let agents = state["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 3);
    let planner = agents
        .iter()
        .find(|a| a["name"] == "planner")
        .expect("planner");
    assert_eq!(planner["completed"], 1);
    assert_eq!(planner["state_keys"], serde_json::json!(["workers"]));
    let done: u64 = agents
        .iter()
        .filter(|a| a["name"].as_str().is_some_and(|n| n.starts_with("worker-")))
        .map(|a| a["completed"].as_u64().expect("count"))
        .sum();
    assert_eq!(done, 4);
    assert!(
        agents
            .iter()
            .all(|a| a["status"] == "active" && a["queued"] == 0)
    );

    let table = toka(&data, &["state"]);
    assert!(table.ok().contains("agents: 3"), "{}", table.stdout);
}

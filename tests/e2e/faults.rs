//! A guest that returns an error or traps fails its task with the reason
//! recorded, and the host goes on.

use serde_json::Value;

use crate::{agent_path, events_json, temp_data, toka};

fn failures(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "task_failed")
        .map(|e| e["reason"].as_str().expect("reason").to_owned())
        .collect()
}

#[test]
fn errors_and_traps_fail_the_task_and_the_next_task_still_runs() {
    let (_tmp, data) = temp_data();
    let agent = agent_path("test-faulty");
    let run = toka(
        &data,
        &[
            "run", agent, "--task", "error", "--task", "panic", "--task", "abort", "--task", "fine",
        ],
    );
    assert_eq!(run.code, 1, "a failed task makes `run` exit 1: {run:#?}");
    assert_eq!(run.stdout, "test_faulty: ok: fine\n");
    assert!(
        run.stderr.contains("failed: asked to fail"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("guest panicked: asked to panic"),
        "{}",
        run.stderr
    );

    let events = events_json(&data);
    let reasons = failures(&events);
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0], "asked to fail");
    assert!(
        reasons[1].starts_with("trapped: ")
            && reasons[1].ends_with("(guest panicked: asked to panic)"),
        "{}",
        reasons[1]
    );
    assert!(reasons[2].starts_with("trapped: "), "{}", reasons[2]);

    // Traps (not plain errors) are recorded as faults of the agent.
    let faults: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "agent_faulted")
        .map(|e| e["consecutive"].as_u64().expect("consecutive"))
        .collect();
    assert_eq!(faults, [1, 2]);

    // After the traps the agent was re-instantiated and finished its work.
    let completed: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "task_completed")
        .map(|e| e["output"].as_str().expect("output"))
        .collect();
    assert_eq!(completed, ["fine"]);
    toka(&data, &["verify"]).ok();
}

#[test]
fn output_flooding_is_cut_not_fatal() {
    let (_tmp, data) = temp_data();
    let run = toka(
        &data,
        &["run", agent_path("test-faulty"), "--task", "print 1000000"],
    );
    assert_eq!(run.ok(), "test_faulty: ok: print 1000000\n");
}

//! Forgetting terminated agents: whole dead subtrees leave the state; an
//! agent that is not terminated keeps its ancestors.

mod common;

use std::collections::BTreeMap;

use common::{World, spawned};
use toka_kernel::{AgentId, Event, KernelError, Operation, Rules};

fn terminate(w: &mut World, agent: AgentId) {
    w.system(Operation::TerminateAgent {
        agent,
        reason: "done".into(),
    })
    .unwrap();
}

/// agent → (root, state bytes) of each forgotten one.
fn forget(w: &mut World) -> BTreeMap<AgentId, (AgentId, u64)> {
    w.system(Operation::ForgetTerminated)
        .unwrap()
        .events
        .into_iter()
        .map(|e| match e {
            Event::AgentForgotten {
                agent,
                root,
                state_bytes,
            } => (agent, (root, state_bytes)),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn dead_subtrees_are_forgotten_and_the_living_keep_their_ancestors() {
    let mut w = World::new();
    w.system(Operation::AdoptRules {
        rules: Box::new(Rules::default()),
    })
    .unwrap();
    // a (live) → b (terminated) → c (live): a and b stay, for c.
    let a = w.spawn_root("a");
    let b = w.spawn_child(a, "b");
    let c = w.spawn_child(b, "c");
    terminate(&mut w, b);
    // d (terminated) → e, f (terminated): all three go; e kept state.
    let d = w.spawn_root("d");
    let e = w.spawn_child(d, "e");
    let f = w.spawn_child(d, "f");
    w.agent(
        e,
        Operation::PutState {
            key: "k".into(),
            value: b"value".to_vec(),
        },
    )
    .unwrap();
    for agent in [e, f, d] {
        terminate(&mut w, agent);
    }
    // g terminated alone; h terminated with a live child i.
    let g = w.spawn_root("g");
    terminate(&mut w, g);
    let h = w.spawn_root("h");
    let i = w.spawn_child(h, "i");
    terminate(&mut w, h);

    let forgotten = forget(&mut w);
    assert_eq!(
        forgotten,
        BTreeMap::from([(d, (d, 0)), (e, (d, 6)), (f, (d, 0)), (g, (g, 0))])
    );
    let state = w.kernel.state();
    for agent in [a, b, c, h, i] {
        assert!(state.agent(agent).is_some(), "{agent} kept");
    }
    for agent in [d, e, f, g] {
        assert!(state.agent(agent).is_none(), "{agent} forgotten");
    }
    assert_eq!(state.live_agents(), 3);
    // c's operations are still charged up its line, to b and a; d is
    // unknown now.
    let spent = |w: &World, x: AgentId| w.kernel.state().agent(x).unwrap().account.log_bytes_total;
    let before = (spent(&w, a), spent(&w, b));
    w.agent(
        c,
        Operation::EmitObservation {
            topic: None,
            data: b"x".to_vec(),
        },
    )
    .unwrap();
    assert!(spent(&w, a) > before.0 && spent(&w, b) > before.1);
    let unknown = w
        .system(Operation::TerminateAgent {
            agent: d,
            reason: "again".into(),
        })
        .unwrap_err();
    assert!(
        matches!(unknown, KernelError::UnknownEntity { .. }),
        "{unknown}"
    );
    // Nothing more to forget until something else ends.
    assert!(forget(&mut w).is_empty());
    terminate(&mut w, i);
    assert_eq!(forget(&mut w).into_keys().collect::<Vec<_>>(), [h, i]);
    // A replay of the log reaches the same state.
    w.assert_replays();
}

#[test]
fn an_agent_whose_task_has_not_ended_is_kept_until_it_ends() {
    let mut w = World::new();
    let x = w.spawn_root("x");
    let y = w.spawn_root("y");
    let task = common::scheduled(
        &w.agent(
            x,
            Operation::ScheduleTask {
                agent: y,
                spec: toka_kernel::TaskSpec {
                    description: "later".into(),
                },
            },
        )
        .unwrap()
        .events,
    );
    terminate(&mut w, x);
    assert!(forget(&mut w).is_empty(), "y's queued task names x");
    w.start(y, task);
    w.host_for(
        y,
        Operation::CompleteTask {
            task,
            output: Vec::new(),
        },
    )
    .unwrap();
    assert_eq!(forget(&mut w).into_keys().collect::<Vec<_>>(), [x]);
}

#[test]
fn one_record_forgets_a_bounded_number_the_deepest_first() {
    let mut w = World::new();
    let root = w.spawn_root("root");
    let component = w.install("leaf");
    for i in 0..toka_kernel::FORGOTTEN_PER_RECORD {
        let applied = w
            .agent(
                root,
                Operation::SpawnAgent {
                    spec: Box::new(common::spec(component, &format!("leaf-{i}"))),
                },
            )
            .unwrap();
        terminate(&mut w, spawned(&applied.events));
    }
    terminate(&mut w, root);
    let first = forget(&mut w);
    assert_eq!(first.len(), toka_kernel::FORGOTTEN_PER_RECORD);
    assert!(!first.contains_key(&root), "its children went first");
    // What is left of the subtree kept its root; the next record takes it.
    assert!(w.kernel.state().agent(root).is_some());
    assert_eq!(forget(&mut w), BTreeMap::from([(root, (root, 0))]));
    assert!(forget(&mut w).is_empty());
}

#[test]
fn only_the_operator_forgets() {
    let mut w = World::new();
    let a = w.spawn_root("a");
    let refused = w.agent(a, Operation::ForgetTerminated).unwrap_err();
    assert!(
        matches!(refused, KernelError::CapabilityDenied { .. }),
        "{refused}"
    );
    let by_host_for_agent = w.host_for(a, Operation::ForgetTerminated).unwrap_err();
    assert!(
        matches!(by_host_for_agent, KernelError::CapabilityDenied { .. }),
        "{by_host_for_agent}"
    );
}

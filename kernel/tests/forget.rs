//! Forgetting terminated agents: whole dead subtrees leave the state; an
//! agent that is not terminated keeps its ancestors.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{World, spawned};
use proptest::prelude::*;
use toka_kernel::{
    AgentId, EntityId, Event, FORGOTTEN_PER_RECORD, KernelError, Operation, Rules, TaskSpec,
    WorldState,
};

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
fn a_record_forgets_what_the_kernel_found_for_its_state_only() {
    let mut w = World::new();
    let a = w.spawn_root("a");
    let b = w.spawn_child(a, "b");
    let c = w.spawn_root("c");
    terminate(&mut w, b);
    // Found now, and kept for the record applied next...
    assert_eq!(w.kernel.forgettable(), [b]);
    // ...which is not the forget: c's termination changes what there is
    // to forget, and what was found before it is not used.
    terminate(&mut w, c);
    assert_eq!(
        forget(&mut w).into_keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([b, c])
    );
    // Found for the state the forget applies to: used as found.
    terminate(&mut w, a);
    assert_eq!(w.kernel.forgettable(), [a]);
    assert_eq!(forget(&mut w).into_keys().collect::<Vec<_>>(), [a]);
    assert!(w.kernel.forgettable().is_empty());
    w.assert_replays();
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

/// [`WorldState::forgettable`] as its definition reads, the slow way: the
/// agents kept are those not terminated and those that scheduled a task
/// not ended, with every ancestor of theirs; the rest go, the deepest
/// first (then by id), at most [`FORGOTTEN_PER_RECORD`].
fn forgettable_by_definition(state: &WorldState) -> Vec<AgentId> {
    let schedulers: BTreeSet<EntityId> = state.tasks().map(|(_, t)| t.by).collect();
    let mut kept = BTreeSet::new();
    for (id, agent) in state.agents() {
        if agent.is_terminated() && !schedulers.contains(&id) {
            continue;
        }
        let mut at = Some(id);
        while let Some(this) = at {
            kept.insert(this);
            at = state
                .agent(this)
                .map(|a| a.parent)
                .filter(|p| state.agent(*p).is_some());
        }
    }
    let mut dead: Vec<(std::cmp::Reverse<u32>, AgentId)> = state
        .agents()
        .filter(|(id, _)| !kept.contains(id))
        .map(|(id, a)| (std::cmp::Reverse(a.depth), id))
        .collect();
    dead.sort();
    dead.into_iter()
        .take(FORGOTTEN_PER_RECORD)
        .map(|(_, id)| id)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Forests of agents, some terminated, some having scheduled tasks
    /// onto others: every record forgets what the definition says, until
    /// nothing is left to forget.
    #[test]
    fn what_is_forgotten_is_what_the_definition_names(
        agents in proptest::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 1..40),
        tasks in proptest::collection::vec(
            (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
            0..10,
        ),
        terminated in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let mut w = World::new();
        let mut ids: Vec<AgentId> = Vec::new();
        for (i, (parent, root)) in agents.iter().enumerate() {
            let name = format!("a{i}");
            let id = if *root || ids.is_empty() {
                w.spawn_root(&name)
            } else {
                w.spawn_child(ids[parent.index(ids.len())], &name)
            };
            ids.push(id);
        }
        for (by, onto) in &tasks {
            let (by, onto) = (ids[by.index(ids.len())], ids[onto.index(ids.len())]);
            let op = Operation::ScheduleTask {
                agent: onto,
                spec: TaskSpec { description: "t".into() },
            };
            w.agent(by, op).unwrap();
        }
        for agent in &terminated {
            let agent = ids[agent.index(ids.len())];
            if !w.kernel.state().agent(agent).unwrap().is_terminated() {
                terminate(&mut w, agent);
            }
        }
        for round in 0.. {
            let expected = forgettable_by_definition(w.kernel.state());
            prop_assert_eq!(w.kernel.state().forgettable(), expected.clone());
            // Every other record is applied with what the kernel found
            // for it beforehand, as a host asks first.
            if round % 2 == 1 {
                prop_assert_eq!(w.kernel.forgettable(), expected.as_slice());
            }
            if expected.is_empty() {
                break;
            }
            let forgotten: BTreeSet<AgentId> = forget(&mut w).into_keys().collect();
            prop_assert_eq!(forgotten, expected.into_iter().collect::<BTreeSet<_>>());
        }
        w.assert_replays();
    }
}

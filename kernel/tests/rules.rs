//! Rules version 2: quotas charged to agent trees, live-agent limits, spawn
//! depth, printable names and journaled refusals — and logs without rules
//! keep replaying as they were written.

mod common;

use common::{World, spawned};
use toka_kernel::{
    Authorization, Budgets, Digest, EntityId, Event, KernelError, Limits, OpKey, Operation, Quota,
    Quotas, RULES_VERSION, Rate, Refusal, RefusalKind, Rules, TaskSpec, replay_log,
};

fn observe(text: &str) -> Operation {
    Operation::EmitObservation {
        topic: None,
        data: text.as_bytes().to_vec(),
    }
}

fn adopt(w: &mut World, rules: Rules) {
    w.system(Operation::AdoptRules {
        rules: Box::new(rules),
    })
    .expect("adopt rules");
}

fn rules_with(quotas: Quotas) -> Rules {
    Rules {
        quotas,
        ..Rules::default()
    }
}

/// Applies an agent's op at a fixed logical time.
fn at(w: &mut World, agent: EntityId, ms: u64, op: Operation) -> Result<(), KernelError> {
    w.now = ms.max(w.now);
    w.kernel
        .apply(toka_kernel::Command {
            origin: agent,
            time: toka_kernel::Timestamp(ms.max(w.now)),
            auth: Authorization::Token,
            cause: None,
            op,
        })
        .map(|applied| w.log.push(applied.bytes))
}

#[test]
fn a_log_without_rules_keeps_version_1_and_adopting_is_recorded() {
    let mut w = World::new();
    assert_eq!(w.kernel.state().rules_version(), 1);
    // Version 1 took any name; the log must replay as it was written.
    let odd = w.spawn_root("bell\u{7}");
    assert!(w.kernel.state().agent(odd).is_some());
    let applied = w
        .system(Operation::AdoptRules {
            rules: Box::new(Rules::default()),
        })
        .unwrap();
    assert_eq!(
        applied.events,
        vec![Event::RulesAdopted {
            rules: Rules::default()
        }]
    );
    assert_eq!(w.kernel.state().rules_version(), RULES_VERSION);
    let replayed = replay_log(&w.log, Limits::default(), Default::default()).unwrap();
    assert_eq!(replayed.state().digest(), w.kernel.state().digest());
}

#[test]
fn rules_cannot_go_back_or_come_from_an_agent_or_the_future() {
    let mut w = World::new();
    let agent = w.spawn_root("a");
    adopt(&mut w, Rules::default());
    // Below 2, back to an older version, or newer than this kernel.
    for version in [1, RULES_VERSION - 1, RULES_VERSION + 1] {
        let err = w
            .system(Operation::AdoptRules {
                rules: Box::new(Rules {
                    version,
                    ..Rules::default()
                }),
            })
            .unwrap_err();
        assert!(err.to_string().contains("cannot be adopted"), "{err}");
    }
    let err = w
        .host_for(
            agent,
            Operation::AdoptRules {
                rules: Box::new(Rules::default()),
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("only the host adopts rules"),
        "{err}"
    );
}

#[test]
fn names_are_printable_and_not_reserved_under_version_2() {
    let mut w = World::new();
    adopt(&mut w, Rules::default());
    let component = w.install("c");
    for (name, problem) in [
        ("bell\u{7}", "control character"),
        ("esc\u{1b}[31m", "control character"),
        ("Operator", "reserved"),
        (" system ", "reserved"),
    ] {
        let err = w
            .system(Operation::SpawnAgent {
                spec: Box::new(common::spec(component, name)),
            })
            .unwrap_err();
        assert!(err.to_string().contains(problem), "{name:?}: {err}");
    }
    let err = w
        .system(Operation::InstallComponent {
            component: Box::new(toka_kernel::ComponentSpec {
                digest: Digest::of(b"x"),
                name: "new\nline".into(),
                size: 1,
            }),
        })
        .unwrap_err();
    assert!(err.to_string().contains("control character"), "{err}");
}

#[test]
fn an_agents_operations_are_refused_past_its_rate_and_host_records_still_apply() {
    let mut w = World::new();
    let agent = w.spawn_root("a");
    adopt(
        &mut w,
        rules_with(Quotas {
            ops: Rate::new(10, 5),
            ..Quotas::UNLIMITED
        }),
    );
    for _ in 0..5 {
        at(&mut w, agent, 10_000, observe("x")).unwrap();
    }
    let before = (w.kernel.state().clone(), w.kernel.head());
    let err = at(&mut w, agent, 10_000, observe("x")).unwrap_err();
    assert_eq!(
        err,
        KernelError::QuotaExceeded {
            agent,
            quota: Quota::Ops,
            limit: 5,
            wanted: 6
        }
    );
    assert_eq!((w.kernel.state().clone(), w.kernel.head()), before);
    // The host's records about the agent do not count as its operations.
    let task = w.schedule(agent, "t");
    w.start(agent, task);
    // 100 ms at 10/s gives back one operation.
    at(&mut w, agent, 10_100, observe("x")).unwrap();
    assert!(at(&mut w, agent, 10_100, observe("x")).is_err());
}

#[test]
fn a_tree_shares_its_roots_quota() {
    let mut w = World::new();
    adopt(
        &mut w,
        rules_with(Quotas {
            tasks: Rate::new(1, 3),
            ..Quotas::UNLIMITED
        }),
    );
    let root = w.spawn_root("root");
    let a = w.spawn_child(root, "a");
    let b = w.spawn_child(root, "b");
    let schedule = |agent| Operation::ScheduleTask {
        agent,
        spec: TaskSpec {
            description: "t".into(),
        },
    };
    at(&mut w, a, 50_000, schedule(a)).unwrap();
    at(&mut w, a, 50_000, schedule(a)).unwrap();
    at(&mut w, b, 50_000, schedule(b)).unwrap();
    // b has spent one of its own three, but the root's three are gone.
    let err = at(&mut w, b, 50_000, schedule(b)).unwrap_err();
    assert_eq!(
        err,
        KernelError::QuotaExceeded {
            agent: root,
            quota: Quota::Tasks,
            limit: 3,
            wanted: 4
        }
    );
    assert!(at(&mut w, root, 50_000, schedule(root)).is_err());
}

#[test]
fn budgets_narrow_an_agents_quotas() {
    let mut w = World::new();
    adopt(&mut w, rules_with(Quotas::UNLIMITED));
    let agent = w.spawn_root("a");
    w.system(Operation::SetBudgets {
        agent,
        budgets: Box::new(Budgets {
            tasks_total: Some(2),
            ..Budgets::default()
        }),
    })
    .unwrap();
    let schedule = Operation::ScheduleTask {
        agent,
        spec: TaskSpec {
            description: "t".into(),
        },
    };
    w.agent(agent, schedule.clone()).unwrap();
    w.agent(agent, schedule.clone()).unwrap();
    let err = w.agent(agent, schedule).unwrap_err();
    assert_eq!(
        err,
        KernelError::QuotaExceeded {
            agent,
            quota: Quota::TasksTotal,
            limit: 2,
            wanted: 3
        }
    );
}

#[test]
fn log_bytes_are_charged_by_record_size() {
    let mut w = World::new();
    adopt(
        &mut w,
        rules_with(Quotas {
            log_bytes_total: Some(1_000),
            ..Quotas::UNLIMITED
        }),
    );
    let agent = w.spawn_root("a");
    at(&mut w, agent, 5_000, observe(&"x".repeat(600))).unwrap();
    let err = at(&mut w, agent, 5_000, observe(&"x".repeat(600))).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::QuotaExceeded {
                quota: Quota::LogBytesTotal,
                limit: 1_000,
                ..
            }
        ),
        "{err}"
    );
    let account = w.kernel.state().agent(agent).unwrap().account;
    assert!(account.log_bytes_total > 600, "{account:?}");
}

/// A child's token is stored beside the spawn's record; a spawn that
/// carries its size charges the spawning agent's tree for it as log bytes
/// (a spawn recorded without it, as before, charges the record alone).
#[test]
fn a_spawn_pays_for_the_token_stored_beside_its_record() {
    let mut w = World::new();
    adopt(
        &mut w,
        rules_with(Quotas {
            log_bytes_total: Some(20_000),
            ..Quotas::UNLIMITED
        }),
    );
    let root = w.spawn_root("root");
    let component = w.install("c");
    let sized = |name: &str| Operation::SpawnAgentSized {
        spec: Box::new(common::spec(component, name)),
        token_bytes: 8_192,
    };
    let spent = |w: &World| {
        w.kernel
            .state()
            .agent(root)
            .unwrap()
            .account
            .log_bytes_total
    };
    let before = spent(&w);
    spawned(&w.agent(root, sized("a")).unwrap().events);
    let first = spent(&w) - before;
    assert!(first > 8_192 && first < 8_192 + 400, "{first}");
    spawned(&w.agent(root, sized("b")).unwrap().events);
    // A third would pass 20 000 bytes: refused, and nothing is spawned.
    let err = w.agent(root, sized("c")).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::QuotaExceeded {
                quota: Quota::LogBytesTotal,
                limit: 20_000,
                agent,
                ..
            } if agent == root
        ),
        "{err}"
    );
    assert_eq!(w.kernel.state().agent(root).unwrap().live_children, 2);
    // The same spawn recorded without the token's size pays for its record.
    let unsized_spawn = Operation::SpawnAgent {
        spec: Box::new(common::spec(component, "d")),
    };
    let before = spent(&w);
    spawned(&w.agent(root, unsized_spawn).unwrap().events);
    assert!(spent(&w) - before < 400, "{}", spent(&w) - before);
    // A replay of the log charges the same.
    let replayed = replay_log(&w.log, Limits::default(), Default::default()).unwrap();
    assert_eq!(
        replayed.state().agent(root).unwrap().account,
        w.kernel.state().agent(root).unwrap().account
    );
}

#[test]
fn live_children_depth_and_live_agents_are_limited() {
    let mut w = World::new();
    adopt(
        &mut w,
        Rules {
            max_children: 2,
            max_depth: 2,
            max_live_agents: 5,
            ..rules_with(Quotas::UNLIMITED)
        },
    );
    let root = w.spawn_root("root");
    let a = w.spawn_child(root, "a");
    w.spawn_child(root, "b");
    let component = w.install("c");
    let spawn = |name: &str| Operation::SpawnAgent {
        spec: Box::new(common::spec(component, name)),
    };
    let err = w.agent(root, spawn("c")).unwrap_err();
    assert!(
        matches!(err, KernelError::QuotaExceeded { quota: Quota::Children, agent, .. } if agent == root),
        "{err}"
    );
    // Terminating a child frees its place.
    w.system(Operation::TerminateAgent {
        agent: a,
        reason: "done".into(),
    })
    .unwrap();
    assert_eq!(w.kernel.state().agent(root).unwrap().live_children, 1);
    let c = spawned(&w.agent(root, spawn("c")).unwrap().events);
    let grandchild = spawned(&w.agent(c, spawn("gc")).unwrap().events);
    assert_eq!(w.kernel.state().agent(grandchild).unwrap().depth, 2);
    let err = w.agent(grandchild, spawn("too deep")).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::QuotaExceeded {
                quota: Quota::Depth,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(w.kernel.state().live_agents(), 4);
    w.spawn_root("fifth");
    let err = w.system(spawn("sixth")).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::QuotaExceeded {
                quota: Quota::LiveAgents,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn refused_operations_keep_their_indices_and_their_details_are_recorded() {
    let mut w = World::new();
    let agent = w.spawn_root("a");
    let task = w.schedule(agent, "t");
    w.start(agent, task);
    let key = |index| Some(OpKey { task, index });
    // Version 1: a refused operation took no index.
    assert!(w.agent_in(agent, key(1), observe("skips")).is_err());
    adopt(&mut w, rules_with(Quotas::UNLIMITED));

    w.agent_in(agent, key(0), observe("first")).unwrap();
    // Indices 1..4 were refused; the operation at 4 applies and records the gap.
    let after = w.agent_in(agent, key(4), observe("after")).unwrap();
    assert!(
        w.agent_in(agent, key(4), observe("again")).is_err(),
        "indices never go back"
    );
    let refusal = |count| Refusal {
        count,
        request: Digest::of(b"denied op"),
        kind: RefusalKind::CapabilityDenied,
        message: "missing right".into(),
    };
    let details = |first, refusals| Operation::RecordRefusals {
        task,
        first,
        refusals,
    };
    for (bad, problem) in [
        (
            details(2, vec![refusal(3)]),
            "skipped no operations at index 2",
        ),
        (details(1, vec![refusal(2)]), "the record lists 2"),
        (details(1, vec![refusal(1); 17]), "1 to 16 refusals"),
        (details(1, vec![refusal(0), refusal(3)]), "at least 1"),
    ] {
        let err = w.host_for(agent, bad).unwrap_err();
        assert!(err.to_string().contains(problem), "{problem}: {err}");
    }
    let other = w.spawn_root("other");
    assert!(w.host_for(other, details(1, vec![refusal(3)])).is_err());
    let recorded = w
        .host_for(agent, details(1, vec![refusal(1), refusal(2)]))
        .unwrap();
    assert_eq!(
        recorded.events,
        vec![Event::RefusalsRecorded {
            task,
            agent,
            first: 1,
            count: 3
        }]
    );
    let err = w.host_for(agent, details(1, vec![refusal(3)])).unwrap_err();
    assert!(err.to_string().contains("already recorded"), "{err}");

    let run = w
        .kernel
        .state()
        .task(task)
        .unwrap()
        .status
        .run()
        .unwrap()
        .clone();
    assert_eq!(run.next_index, 5);
    assert_eq!(run.entry(4).map(|e| e.seq), Some(after.seq));
    for index in 1..4 {
        assert!(run.entry(index).is_none());
        let gap = run.gap(index).unwrap();
        assert_eq!((gap.seq, gap.details), (after.seq, Some(recorded.seq)));
    }
    assert!(run.gap(0).is_none() && run.gap(4).is_none());
    let replayed = replay_log(&w.log, Limits::default(), Default::default()).unwrap();
    assert_eq!(replayed.state().digest(), w.kernel.state().digest());
}

#[test]
fn a_rejected_commands_operation_is_kept_in_its_canonical_encoding() {
    let mut w = World::new();
    let agent = w.spawn_root("a");
    let op = Operation::ScheduleTask {
        agent: EntityId::from_u128(77),
        spec: TaskSpec {
            description: "nobody".into(),
        },
    };
    let task = w.schedule(agent, "t");
    w.start(agent, task);
    assert!(
        w.agent_in(agent, Some(OpKey { task, index: 0 }), op.clone())
            .is_err()
    );
    assert_eq!(
        w.kernel.rejected_operation(),
        postcard::to_allocvec(&op).unwrap().as_slice()
    );
    w.agent_in(agent, Some(OpKey { task, index: 0 }), observe("ok"))
        .unwrap();
    assert!(w.kernel.rejected_operation().is_empty());
}

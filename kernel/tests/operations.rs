//! One test group per operation family: the emitted events and the resulting
//! state, the rejections and that a rejection changes nothing.

mod common;

use common::{World, scheduled, spawned, spec};
use toka_kernel::{
    AgentStatus, Applied, Authorization, ComponentSpec, Denial, Digest, EntityId, EntityKind,
    Event, ExtensionCall, ExtensionEffects, JournalEntry, Kernel, KernelError, Limit, Limits,
    OpKey, OpKind, OpcodeHandler, Operation, Prior, Registry, Replaced, Rewrite, TaskSpec,
    TaskStatus, Timestamp,
};

fn task_spec(text: &str) -> TaskSpec {
    TaskSpec {
        description: text.to_owned(),
    }
}

mod tasks {
    use super::*;

    #[test]
    fn schedule_queues_the_task_and_emits_task_scheduled() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let applied = w
            .system(Operation::ScheduleTask {
                agent,
                spec: task_spec("do it"),
            })
            .unwrap();
        let task = scheduled(&applied.events);
        assert_eq!(
            applied.events,
            vec![Event::TaskScheduled {
                task,
                agent,
                by: EntityId::SYSTEM,
                spec: task_spec("do it"),
            }]
        );
        let record = w.kernel.state().task(task).unwrap();
        assert_eq!(record.status, TaskStatus::Queued);
        assert_eq!(record.scheduled_seq, applied.seq);
        assert_eq!(
            w.kernel.state().agent(agent).unwrap().queue,
            std::collections::VecDeque::from([task])
        );
    }

    #[test]
    fn lifecycle_scheduled_started_completed() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let task = w.schedule(agent, "t");

        let started = w.host_for(agent, Operation::StartTask { task }).unwrap();
        assert_eq!(started.events, vec![Event::TaskStarted { task, agent }]);
        let status = w.kernel.state().task(task).unwrap().status.clone();
        let run = status.run().expect("running");
        assert_eq!(
            (run.started_seq, run.started_at),
            (started.seq, started.time)
        );
        assert!(run.journal.is_empty());
        assert_eq!(w.kernel.state().agent(agent).unwrap().running, Some(task));

        let done = w
            .host_for(
                agent,
                Operation::CompleteTask {
                    task,
                    output: b"out".to_vec(),
                },
            )
            .unwrap();
        assert_eq!(
            done.events,
            vec![Event::TaskCompleted {
                task,
                agent,
                output: b"out".to_vec()
            }]
        );
        let a = w.kernel.state().agent(agent).unwrap();
        assert_eq!((a.running, a.completed, a.failed), (None, 1, 0));
        assert!(
            w.kernel.state().task(task).is_none(),
            "finished tasks leave the state"
        );
    }

    #[test]
    fn a_queued_or_running_task_can_fail() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let running = w.schedule(agent, "1");
        let queued = w.schedule(agent, "2");
        w.start(agent, running);

        let failed = w
            .host_for(
                agent,
                Operation::FailTask {
                    task: queued,
                    reason: "no".into(),
                },
            )
            .unwrap();
        assert_eq!(
            failed.events,
            vec![Event::TaskFailed {
                task: queued,
                agent,
                reason: "no".into()
            }]
        );
        w.host_for(
            agent,
            Operation::FailTask {
                task: running,
                reason: "trap".into(),
            },
        )
        .unwrap();
        let a = w.kernel.state().agent(agent).unwrap();
        assert!(a.queue.is_empty());
        assert_eq!((a.running, a.failed), (None, 2));
    }

    #[test]
    fn illegal_transitions_are_rejected() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let first = w.schedule(agent, "1");
        let second = w.schedule(agent, "2");
        let sys = Authorization::System;

        // Scheduled → completed skips started.
        w.assert_rejected(
            agent,
            sys,
            Operation::CompleteTask {
                task: first,
                output: vec![],
            },
            KernelError::InvalidOperation {
                operation: OpKind::CompleteTask,
                message: format!("task {first} is queued, not running"),
            },
        );
        // FIFO: the second task cannot start before the first.
        w.assert_rejected(
            agent,
            sys,
            Operation::StartTask { task: second },
            KernelError::InvalidOperation {
                operation: OpKind::StartTask,
                message: format!("task {second} is not at the head of agent {agent}'s queue"),
            },
        );
        w.start(agent, first);
        // Started twice.
        w.assert_rejected(
            agent,
            sys,
            Operation::StartTask { task: first },
            KernelError::InvalidOperation {
                operation: OpKind::StartTask,
                message: format!("task {first} is already running"),
            },
        );
        // One task at a time per agent.
        w.assert_rejected(
            agent,
            sys,
            Operation::StartTask { task: second },
            KernelError::InvalidOperation {
                operation: OpKind::StartTask,
                message: format!("agent {agent} is already running task {first}"),
            },
        );
        w.host_for(
            agent,
            Operation::CompleteTask {
                task: first,
                output: vec![],
            },
        )
        .unwrap();
        // Completed twice: finished tasks are gone.
        w.assert_rejected(
            agent,
            sys,
            Operation::CompleteTask {
                task: first,
                output: vec![],
            },
            KernelError::UnknownEntity {
                kind: EntityKind::Task,
                id: first.to_string(),
            },
        );
    }

    #[test]
    fn another_agent_cannot_drive_a_task() {
        let mut w = World::new();
        let owner = w.spawn_root("owner");
        let other = w.spawn_root("other");
        let task = w.schedule(owner, "t");
        w.assert_rejected(
            other,
            Authorization::System,
            Operation::StartTask { task },
            KernelError::CapabilityDenied {
                origin: other,
                operation: OpKind::StartTask,
                reason: format!("task {task} belongs to agent {owner}"),
            },
        );
    }

    #[test]
    fn agents_cannot_submit_lifecycle_operations_themselves() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let task = w.schedule(agent, "t");
        let token = w.token_of(agent);
        w.assert_rejected(
            agent,
            token,
            Operation::StartTask { task },
            KernelError::CapabilityDenied {
                origin: agent,
                operation: OpKind::StartTask,
                reason: "only the host may submit this operation".into(),
            },
        );
    }

    #[test]
    fn schedule_checks_target_description_and_queue() {
        let mut w = World::with_limits(Limits {
            max_queue: 2,
            ..Limits::default()
        });
        let agent = w.spawn_root("a");
        let nobody = EntityId::from_u128(42);
        let sys = Authorization::System;
        w.assert_rejected(
            EntityId::SYSTEM,
            sys,
            Operation::ScheduleTask {
                agent: nobody,
                spec: task_spec("t"),
            },
            KernelError::UnknownEntity {
                kind: EntityKind::Agent,
                id: nobody.to_string(),
            },
        );
        w.assert_rejected(
            EntityId::SYSTEM,
            sys,
            Operation::ScheduleTask {
                agent,
                spec: task_spec(&"x".repeat(4097)),
            },
            KernelError::LimitExceeded {
                limit: Limit::TaskDescription,
                max: 4096,
                actual: 4097,
            },
        );
        w.schedule(agent, "1");
        w.schedule(agent, "2");
        w.assert_rejected(
            EntityId::SYSTEM,
            sys,
            Operation::ScheduleTask {
                agent,
                spec: task_spec("3"),
            },
            KernelError::LimitExceeded {
                limit: Limit::Queue,
                max: 2,
                actual: 3,
            },
        );
    }

    #[test]
    fn task_ids_are_derived_deterministically() {
        let run = || {
            let mut w = World::new();
            let agent = w.spawn_root("a");
            (agent, w.schedule(agent, "1"), w.schedule(agent, "1"))
        };
        let (a1, t1, t2) = run();
        assert_ne!(t1, t2, "two tasks with the same text get distinct ids");
        assert_eq!(run(), (a1, t1, t2), "the same commands give the same ids");
    }

    #[test]
    fn operations_inside_a_task_carry_consecutive_indices() {
        let mut w = World::with_limits(Limits {
            max_ops_per_task: 2,
            ..Limits::default()
        });
        let agent = w.spawn_root("a");
        let task = w.schedule(agent, "t");
        w.start(agent, task);
        let observe = || Operation::EmitObservation {
            topic: None,
            data: b"x".to_vec(),
        };

        w.agent_in(agent, Some(OpKey { task, index: 0 }), observe())
            .unwrap();
        let err = w
            .agent_in(agent, Some(OpKey { task, index: 0 }), observe())
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::InvalidOperation {
                operation: OpKind::EmitObservation,
                message: format!("task {task} expects operation index 1, got 0"),
            }
        );
        w.agent_in(agent, Some(OpKey { task, index: 1 }), observe())
            .unwrap();
        let journal = &w
            .kernel
            .state()
            .task(task)
            .unwrap()
            .status
            .run()
            .unwrap()
            .journal;
        assert_eq!(journal.len(), 2);
        let err = w
            .agent_in(agent, Some(OpKey { task, index: 2 }), observe())
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::LimitExceeded {
                limit: Limit::OpsPerTask,
                max: 2,
                actual: 3
            }
        );
    }
}

mod journal {
    use super::*;

    #[test]
    fn a_running_task_journals_each_operation_with_what_it_created_and_replaced() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let task = w.schedule(agent, "t");
        w.start(agent, task);
        let at = |index| Some(OpKey { task, index });
        w.agent(
            agent,
            Operation::PutState {
                key: "k".into(),
                value: vec![1],
            },
        )
        .unwrap(); // outside the task: not journaled
        let put = w
            .agent_in(
                agent,
                at(0),
                Operation::PutState {
                    key: "k".into(),
                    value: vec![2],
                },
            )
            .unwrap();
        let scheduled = w
            .agent_in(
                agent,
                at(1),
                Operation::ScheduleTask {
                    agent,
                    spec: task_spec("next"),
                },
            )
            .unwrap();
        let deleted = w
            .agent_in(agent, at(2), Operation::DeleteState { key: "new".into() })
            .unwrap();
        // Later writes of a key the task wrote keep no copy of what they
        // replace (the log has what the task put), only whether it existed.
        let rewrites: Vec<u64> = [
            Operation::PutState {
                key: "k".into(),
                value: vec![3; 1000],
            },
            Operation::DeleteState { key: "k".into() },
            Operation::PutState {
                key: "k".into(),
                value: vec![4],
            },
        ]
        .into_iter()
        .zip(3..)
        .map(|(op, index)| w.agent_in(agent, at(index), op).unwrap().seq)
        .collect();
        let journal = w
            .kernel
            .state()
            .task(task)
            .unwrap()
            .status
            .run()
            .unwrap()
            .journal
            .clone();
        assert_eq!(
            journal,
            vec![
                JournalEntry::new(
                    0,
                    put.seq,
                    None,
                    Replaced::First(Box::new(Prior {
                        key: "k".into(),
                        value: Some(vec![1])
                    })),
                ),
                JournalEntry::new(
                    1,
                    scheduled.seq,
                    Some(common::scheduled(&scheduled.events)),
                    Replaced::Nothing,
                ),
                JournalEntry::new(
                    2,
                    deleted.seq,
                    None,
                    Replaced::First(Box::new(Prior {
                        key: "new".into(),
                        value: None
                    })),
                ),
                JournalEntry::new(
                    3,
                    rewrites[0],
                    None,
                    Replaced::Rewrite(Box::new(Rewrite {
                        key: "k".into(),
                        existed: true
                    })),
                ),
                JournalEntry::new(
                    4,
                    rewrites[1],
                    None,
                    Replaced::Rewrite(Box::new(Rewrite {
                        key: "k".into(),
                        existed: true
                    })),
                ),
                JournalEntry::new(
                    5,
                    rewrites[2],
                    None,
                    Replaced::Rewrite(Box::new(Rewrite {
                        key: "k".into(),
                        existed: false
                    })),
                ),
            ]
        );
        let run = w.kernel.state().task(task).unwrap().status.run().unwrap();
        assert!(run.wrote("k") && run.wrote("new") && !run.wrote("other"));
        // The journal leaves the state with the task.
        w.host_for(
            agent,
            Operation::CompleteTask {
                task,
                output: vec![],
            },
        )
        .unwrap();
        assert!(w.kernel.state().task(task).is_none());
    }

    #[test]
    fn a_write_outside_the_task_makes_the_tasks_next_write_of_the_key_a_first_one() {
        // The agent's `init` runs outside any task, in a new instance
        // between attempts: what the task's next write replaces is then
        // not what its previous write put, so it keeps a copy.
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let task = w.schedule(agent, "t");
        w.start(agent, task);
        let put = |w: &mut World, index: Option<u32>, value: u8| {
            let op = Operation::PutState {
                key: "k".into(),
                value: vec![value],
            };
            match index {
                Some(index) => w.agent_in(agent, Some(OpKey { task, index }), op),
                None => w.agent(agent, op),
            }
            .unwrap()
        };
        put(&mut w, Some(0), 1);
        put(&mut w, None, 2);
        put(&mut w, Some(1), 3);
        put(&mut w, Some(2), 4);
        let run = w.kernel.state().task(task).unwrap().status.run().unwrap();
        let priors: Vec<Replaced> = run.journal.iter().map(|e| e.prior().clone()).collect();
        let first = |value: Option<Vec<u8>>| {
            Replaced::First(Box::new(Prior {
                key: "k".into(),
                value,
            }))
        };
        assert_eq!(
            priors,
            [
                first(None),
                first(Some(vec![2])),
                Replaced::Rewrite(Box::new(Rewrite {
                    key: "k".into(),
                    existed: true
                })),
            ]
        );
        // The state decodes to itself (the mark is part of it).
        let state = w.kernel.state();
        assert_eq!(
            &toka_kernel::WorldState::from_bytes(&state.to_bytes()).unwrap(),
            state
        );
    }

    #[test]
    fn a_task_overwriting_a_key_keeps_no_copy_of_what_it_replaced() {
        // A hostile task overwriting one key with large values: only the
        // value it first replaced is kept for a re-run, whatever it writes.
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let task = w.schedule(agent, "t");
        w.start(agent, task);
        let before = w.kernel.state().to_bytes().len();
        for index in 0..300u32 {
            w.agent_in(
                agent,
                Some(OpKey { task, index }),
                Operation::PutState {
                    key: "k".into(),
                    value: vec![index.to_le_bytes()[0]; 60 << 10],
                },
            )
            .unwrap();
        }
        let grown = w.kernel.state().to_bytes().len() - before;
        // The agent's one value, and a few bytes per journal entry (each
        // copied value would add 60 KiB: 18 MB for these 300).
        assert!(
            grown < (60 << 10) + 300 * 32,
            "the state grew by {grown} bytes"
        );
    }
}

mod agents {
    use super::*;

    #[test]
    fn a_walk_after_an_id_starts_past_it() {
        let mut w = World::new();
        let mut agents: Vec<_> = ["a", "b", "c"].map(|n| w.spawn_root(n)).into();
        agents.sort();
        let tasks: Vec<_> = agents.iter().map(|a| w.schedule(*a, "t")).collect();
        let state = w.kernel.state();
        let ids = |after| {
            state
                .agents_after(after)
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(None), agents);
        assert_eq!(ids(Some(agents[0])), agents[1..]);
        assert_eq!(ids(Some(agents[2])), []);
        let mut sorted = tasks.clone();
        sorted.sort();
        let after_first: Vec<_> = state
            .tasks_after(Some(sorted[0]))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(after_first, sorted[1..]);
        assert_eq!(state.tasks_after(None).count(), tasks.len());
    }

    #[test]
    fn spawn_creates_a_child_of_the_origin() {
        let mut w = World::new();
        let parent = w.spawn_root("parent");
        let component = w.install("worker");
        let applied = w
            .agent(
                parent,
                Operation::SpawnAgent {
                    spec: Box::new(spec(component, "w1")),
                },
            )
            .unwrap();
        let child = spawned(&applied.events);
        assert_eq!(
            applied.events,
            vec![Event::AgentSpawned {
                agent: child,
                parent,
                spec: spec(component, "w1"),
            }]
        );
        let record = w.kernel.state().agent(child).unwrap();
        assert_eq!(record.parent, parent);
        assert_eq!(record.name, "w1");
        assert_eq!(record.status, AgentStatus::Active);
        assert_eq!(record.token, spec(component, "w1").token);
    }

    #[test]
    fn spawn_needs_an_installed_component_and_a_sane_name() {
        let mut w = World::new();
        let missing = Digest::of(b"nothing");
        let sys = Authorization::System;
        w.assert_rejected(
            EntityId::SYSTEM,
            sys,
            Operation::SpawnAgent {
                spec: Box::new(spec(missing, "x")),
            },
            KernelError::UnknownEntity {
                kind: EntityKind::Component,
                id: missing.to_string(),
            },
        );
        let component = w.install("c");
        w.assert_rejected(
            EntityId::SYSTEM,
            sys,
            Operation::SpawnAgent {
                spec: Box::new(spec(component, " ")),
            },
            KernelError::InvalidOperation {
                operation: OpKind::SpawnAgent,
                message: "agent name is empty".into(),
            },
        );
        w.assert_rejected(
            EntityId::SYSTEM,
            sys,
            Operation::SpawnAgent {
                spec: Box::new(spec(component, &"n".repeat(257))),
            },
            KernelError::LimitExceeded {
                limit: Limit::Name,
                max: 256,
                actual: 257,
            },
        );
    }

    #[test]
    fn terminate_fails_running_and_queued_tasks() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let running = w.schedule(agent, "1");
        let queued = w.schedule(agent, "2");
        w.start(agent, running);

        let applied = w
            .system(Operation::TerminateAgent {
                agent,
                reason: "bye".into(),
            })
            .unwrap();
        assert_eq!(
            applied.events,
            vec![
                Event::AgentTerminated {
                    agent,
                    by: EntityId::SYSTEM,
                    reason: "bye".into()
                },
                Event::TaskFailed {
                    task: running,
                    agent,
                    reason: "agent terminated: bye".into()
                },
                Event::TaskFailed {
                    task: queued,
                    agent,
                    reason: "agent terminated: bye".into()
                },
            ]
        );
        let a = w.kernel.state().agent(agent).unwrap();
        assert_eq!(
            a.status,
            AgentStatus::Terminated {
                reason: "bye".into()
            }
        );
        assert_eq!((a.running, a.queue.len(), a.failed), (None, 0, 2));
        assert_eq!(w.kernel.state().tasks().len(), 0);
    }

    #[test]
    fn a_terminated_agent_can_do_nothing_more() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        w.system(Operation::TerminateAgent {
            agent,
            reason: "r".into(),
        })
        .unwrap();
        let token = w.token_of(agent);
        w.assert_rejected(
            agent,
            token,
            Operation::EmitObservation {
                topic: None,
                data: vec![],
            },
            KernelError::InvalidOperation {
                operation: OpKind::EmitObservation,
                message: format!("agent {agent} is terminated"),
            },
        );
        w.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            Operation::ScheduleTask {
                agent,
                spec: task_spec("t"),
            },
            KernelError::InvalidOperation {
                operation: OpKind::ScheduleTask,
                message: format!("agent {agent} is terminated"),
            },
        );
        w.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            Operation::TerminateAgent {
                agent,
                reason: "again".into(),
            },
            KernelError::InvalidOperation {
                operation: OpKind::TerminateAgent,
                message: format!("agent {agent} is terminated"),
            },
        );
    }

    #[test]
    fn faults_count_in_a_row_and_a_completed_task_resets_them() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        for n in 1..=2 {
            let applied = w
                .host_for(
                    agent,
                    Operation::RecordFault {
                        agent,
                        reason: "trap".into(),
                    },
                )
                .unwrap();
            assert_eq!(
                applied.events,
                vec![Event::AgentFaulted {
                    agent,
                    reason: "trap".into(),
                    consecutive: n
                }]
            );
        }
        let task = w.schedule(agent, "t");
        w.start(agent, task);
        w.host_for(
            agent,
            Operation::CompleteTask {
                task,
                output: vec![],
            },
        )
        .unwrap();
        assert_eq!(w.kernel.state().agent(agent).unwrap().consecutive_faults, 0);
    }

    #[test]
    fn a_quarantined_agent_queues_tasks_but_runs_none_until_resumed() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let applied = w
            .system(Operation::QuarantineAgent {
                agent,
                reason: "3 faults in a row".into(),
            })
            .unwrap();
        assert_eq!(
            applied.events,
            vec![Event::AgentQuarantined {
                agent,
                reason: "3 faults in a row".into()
            }]
        );
        let task = w.schedule(agent, "waits");
        w.assert_rejected(
            agent,
            Authorization::System,
            Operation::StartTask { task },
            KernelError::InvalidOperation {
                operation: OpKind::StartTask,
                message: format!("agent {agent} is quarantined"),
            },
        );
        let token = w.token_of(agent);
        w.assert_rejected(
            agent,
            token,
            Operation::EmitObservation {
                topic: None,
                data: vec![],
            },
            KernelError::InvalidOperation {
                operation: OpKind::EmitObservation,
                message: format!("agent {agent} is terminated"),
            },
        );
        let resumed = w.system(Operation::ResumeAgent { agent }).unwrap();
        assert_eq!(resumed.events, vec![Event::AgentResumed { agent }]);
        assert_eq!(w.kernel.state().agent(agent).unwrap().consecutive_faults, 0);
        w.start(agent, task);
        w.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            Operation::ResumeAgent { agent },
            KernelError::InvalidOperation {
                operation: OpKind::ResumeAgent,
                message: format!("agent {agent} is not quarantined"),
            },
        );
    }

    #[test]
    fn the_system_acts_without_a_token() {
        let mut w = World::new();
        w.assert_rejected(
            EntityId::SYSTEM,
            Authorization::Token,
            Operation::EmitObservation {
                topic: None,
                data: vec![],
            },
            KernelError::CapabilityDenied {
                origin: EntityId::SYSTEM,
                operation: OpKind::EmitObservation,
                reason: "the system acts on its own authority, not with a token".into(),
            },
        );
    }
}

mod observations {
    use super::*;

    #[test]
    fn emit_produces_the_observation() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let applied = w
            .agent(
                agent,
                Operation::EmitObservation {
                    topic: Some("greeting".into()),
                    data: b"hi".to_vec(),
                },
            )
            .unwrap();
        assert_eq!(
            applied.events,
            vec![Event::ObservationEmitted {
                agent,
                topic: Some("greeting".into()),
                data: b"hi".to_vec()
            }]
        );
    }

    #[test]
    fn oversized_observations_and_topics_are_rejected() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let token = w.token_of(agent);
        w.assert_rejected(
            agent,
            token,
            Operation::EmitObservation {
                topic: None,
                data: vec![0; 1024 * 1024 + 1],
            },
            KernelError::LimitExceeded {
                limit: Limit::Observation,
                max: 1024 * 1024,
                actual: 1024 * 1024 + 1,
            },
        );
        w.assert_rejected(
            agent,
            token,
            Operation::EmitObservation {
                topic: Some("t".repeat(300)),
                data: vec![],
            },
            KernelError::LimitExceeded {
                limit: Limit::Topic,
                max: 256,
                actual: 300,
            },
        );
    }
}

mod state {
    use super::*;

    #[test]
    fn put_and_delete_update_the_namespace_and_its_size() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let put = w
            .agent(
                agent,
                Operation::PutState {
                    key: "count".into(),
                    value: vec![1, 2, 3],
                },
            )
            .unwrap();
        assert_eq!(
            put.events,
            vec![Event::StatePut {
                agent,
                key: "count".into(),
                value: vec![1, 2, 3]
            }]
        );
        w.agent(
            agent,
            Operation::PutState {
                key: "count".into(),
                value: vec![9],
            },
        )
        .unwrap();
        let a = w.kernel.state().agent(agent).unwrap();
        assert_eq!(a.state.get("count"), Some(&vec![9]));
        assert_eq!(a.state_bytes, 6);

        let deleted = w
            .agent(
                agent,
                Operation::DeleteState {
                    key: "count".into(),
                },
            )
            .unwrap();
        assert_eq!(
            deleted.events,
            vec![Event::StateDeleted {
                agent,
                key: "count".into(),
                existed: true
            }]
        );
        let again = w
            .agent(
                agent,
                Operation::DeleteState {
                    key: "count".into(),
                },
            )
            .unwrap();
        assert_eq!(
            again.events,
            vec![Event::StateDeleted {
                agent,
                key: "count".into(),
                existed: false
            }]
        );
        assert_eq!(w.kernel.state().agent(agent).unwrap().state_bytes, 0);
    }

    #[test]
    fn namespaces_are_per_agent() {
        let mut w = World::new();
        let a = w.spawn_root("a");
        let b = w.spawn_root("b");
        w.agent(
            a,
            Operation::PutState {
                key: "k".into(),
                value: vec![1],
            },
        )
        .unwrap();
        assert!(w.kernel.state().agent(b).unwrap().state.is_empty());
        w.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            Operation::PutState {
                key: "k".into(),
                value: vec![],
            },
            KernelError::InvalidOperation {
                operation: OpKind::PutState,
                message: "the system has no state namespace".into(),
            },
        );
    }

    #[test]
    fn state_limits_hold() {
        let mut w = World::with_limits(Limits {
            max_state_keys: 2,
            max_state_bytes: 20,
            max_state_value: 10,
            max_state_key: 4,
            ..Limits::default()
        });
        let agent = w.spawn_root("a");
        let token = w.token_of(agent);
        let put = |k: &str, n: usize| Operation::PutState {
            key: k.into(),
            value: vec![0; n],
        };
        w.assert_rejected(
            agent,
            token,
            put("", 1),
            KernelError::InvalidOperation {
                operation: OpKind::PutState,
                message: "state keys are not empty".into(),
            },
        );
        w.assert_rejected(
            agent,
            token,
            put("long!", 1),
            KernelError::LimitExceeded {
                limit: Limit::StateKey,
                max: 4,
                actual: 5,
            },
        );
        w.assert_rejected(
            agent,
            token,
            put("k", 11),
            KernelError::LimitExceeded {
                limit: Limit::StateValue,
                max: 10,
                actual: 11,
            },
        );
        w.agent(agent, put("a", 9)).unwrap(); // 10 bytes
        w.assert_rejected(
            agent,
            token,
            put("b", 10),
            KernelError::LimitExceeded {
                limit: Limit::StateBytes,
                max: 20,
                actual: 21,
            },
        );
        w.agent(agent, put("b", 1)).unwrap();
        w.assert_rejected(
            agent,
            token,
            put("c", 1),
            KernelError::LimitExceeded {
                limit: Limit::StateKeys,
                max: 2,
                actual: 3,
            },
        );
        // Overwriting an existing key is sized by the difference.
        w.agent(agent, put("a", 10)).unwrap();
        assert_eq!(w.kernel.state().agent(agent).unwrap().state_bytes, 13);
    }
}

mod capabilities {
    use super::*;

    #[test]
    fn revoke_records_the_id_once() {
        let mut w = World::new();
        let applied = w
            .system(Operation::RevokeToken {
                revocation_id: vec![7; 64],
            })
            .unwrap();
        assert_eq!(
            applied.events,
            vec![Event::TokenRevoked {
                revocation_id: vec![7; 64]
            }]
        );
        assert!(w.kernel.state().is_revoked(&[7; 64]));
        w.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            Operation::RevokeToken {
                revocation_id: vec![7; 64],
            },
            KernelError::InvalidOperation {
                operation: OpKind::RevokeToken,
                message: "already revoked".into(),
            },
        );
        w.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            Operation::RevokeToken {
                revocation_id: vec![],
            },
            KernelError::InvalidOperation {
                operation: OpKind::RevokeToken,
                message: "a revocation id has 1 to 256 bytes, got 0".into(),
            },
        );
    }

    #[test]
    fn a_denial_is_recorded_against_the_denied_agent() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let denial = Denial {
            operation: "spawn".into(),
            targets: vec!["worker".into()],
            delegation: false,
            reason: "missing right spawn worker".into(),
        };
        let applied = w
            .host_for(
                agent,
                Operation::RecordDenial {
                    denial: Box::new(denial.clone()),
                },
            )
            .unwrap();
        assert_eq!(
            applied.events,
            vec![Event::CapabilityDenied { agent, denial }]
        );
    }

    #[test]
    fn agents_cannot_revoke() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let token = w.token_of(agent);
        w.assert_rejected(
            agent,
            token,
            Operation::RevokeToken {
                revocation_id: vec![1],
            },
            KernelError::CapabilityDenied {
                origin: agent,
                operation: OpKind::RevokeToken,
                reason: "only the host may submit this operation".into(),
            },
        );
    }
}

mod components {
    use super::*;

    #[test]
    fn install_registers_by_digest_and_name() {
        let mut w = World::new();
        let v1 = ComponentSpec {
            digest: Digest::of(b"v1"),
            name: "worker".into(),
            size: 2,
        };
        let applied = w
            .system(Operation::InstallComponent {
                component: Box::new(v1.clone()),
            })
            .unwrap();
        assert_eq!(
            applied.events,
            vec![Event::ComponentInstalled {
                component: v1.clone()
            }]
        );
        let v2 = ComponentSpec {
            digest: Digest::of(b"v2"),
            ..v1.clone()
        };
        w.system(Operation::InstallComponent {
            component: Box::new(v2.clone()),
        })
        .unwrap();
        assert_eq!(w.kernel.state().component(&v1.digest), Some(&v1));
        assert_eq!(w.kernel.state().component_named("worker"), Some(&v2));
        w.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            Operation::InstallComponent {
                component: Box::new(v1.clone()),
            },
            KernelError::InvalidOperation {
                operation: OpKind::InstallComponent,
                message: format!(
                    "component {} is already installed as `worker`",
                    v1.digest.short()
                ),
            },
        );
    }

    #[test]
    fn only_the_operator_installs() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        w.assert_rejected(
            agent,
            Authorization::System,
            Operation::InstallComponent {
                component: Box::new(ComponentSpec {
                    digest: Digest::of(b"x"),
                    name: "x".into(),
                    size: 1,
                }),
            },
            KernelError::CapabilityDenied {
                origin: agent,
                operation: OpKind::InstallComponent,
                reason: "only the operator installs components".into(),
            },
        );
    }
}

mod extension {
    use super::*;

    /// Adds the payload's first byte to a counter; rejects an empty payload.
    struct Adder;

    impl OpcodeHandler for Adder {
        fn handle(&self, call: &ExtensionCall<'_>) -> Result<ExtensionEffects, KernelError> {
            let Some(&n) = call.payload.first() else {
                return Err(KernelError::InvalidOperation {
                    operation: OpKind::Extension,
                    message: "empty payload".into(),
                });
            };
            let total = call.store.get(&b"total"[..]).map_or(0, |v| v[0]) + n;
            Ok(ExtensionEffects {
                writes: vec![(b"total".to_vec(), Some(vec![total]))],
                output: vec![total],
            })
        }
    }

    fn world() -> World {
        let mut registry = Registry::new();
        registry.register("adder", Adder);
        World::with_kernel(Kernel::with_registry(Limits::default(), registry))
    }

    #[test]
    fn a_registered_handler_decides_and_the_kernel_applies() {
        let mut w = world();
        let add = |n| Operation::Extension {
            family: "adder".into(),
            opcode: 1,
            payload: vec![n],
        };
        w.system(add(2)).unwrap();
        let applied = w.system(add(3)).unwrap();
        assert_eq!(
            applied.events,
            vec![Event::ExtensionApplied {
                family: "adder".into(),
                opcode: 1,
                output: vec![5]
            }]
        );
        assert_eq!(
            w.kernel.state().extension_store("adder").unwrap()[&b"total"[..]],
            vec![5]
        );
    }

    #[test]
    fn unknown_families_and_handler_errors_change_nothing() {
        let mut w = world();
        w.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            Operation::Extension {
                family: "nope".into(),
                opcode: 0,
                payload: vec![],
            },
            KernelError::UnsupportedOperation {
                family: "nope".into(),
            },
        );
        w.assert_rejected(
            EntityId::SYSTEM,
            Authorization::System,
            Operation::Extension {
                family: "adder".into(),
                opcode: 0,
                payload: vec![],
            },
            KernelError::InvalidOperation {
                operation: OpKind::Extension,
                message: "empty payload".into(),
            },
        );
    }
}

mod time {
    use super::*;

    #[test]
    fn logical_time_never_goes_backwards() {
        let mut w = World::new();
        w.now = 10;
        w.install("c");
        let before = w.kernel.state().clone();
        w.now = 5;
        let err = w
            .system(Operation::RevokeToken {
                revocation_id: vec![1],
            })
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::TimeWentBackwards {
                last: Timestamp(11),
                time: Timestamp(6)
            }
        );
        assert_eq!(w.kernel.state(), &before);
        // Equal times are fine: several commands can share a millisecond.
        w.now = 10;
        w.system(Operation::RevokeToken {
            revocation_id: vec![1],
        })
        .unwrap();
        assert_eq!(w.kernel.state().time(), Timestamp(11));
    }
}

mod idempotency {
    use super::*;

    fn once(w: &mut World, key: &str, agent: EntityId, text: &str) -> Result<Applied, KernelError> {
        w.system(Operation::ScheduleTaskOnce {
            key: key.to_owned(),
            agent,
            spec: task_spec(text),
        })
    }

    #[test]
    fn a_key_schedules_once_and_names_the_task_on_a_retry() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let first = once(&mut w, "order-1", agent, "ship it").unwrap();
        let task = scheduled(&first.events);
        assert_eq!(w.kernel.state().scheduled_under("order-1"), Some(task));
        let before = (w.kernel.state().clone(), w.kernel.head());
        assert_eq!(
            once(&mut w, "order-1", agent, "ship it").unwrap_err(),
            KernelError::AlreadyScheduled {
                key: "order-1".into(),
                task,
                same_request: true,
            }
        );
        // Another request under the same key is told apart.
        assert_eq!(
            once(&mut w, "order-1", agent, "ship it twice").unwrap_err(),
            KernelError::AlreadyScheduled {
                key: "order-1".into(),
                task,
                same_request: false,
            }
        );
        assert_eq!((w.kernel.state().clone(), w.kernel.head()), before);
        // Another key schedules another task.
        let second = once(&mut w, "order-2", agent, "ship it").unwrap();
        assert_ne!(scheduled(&second.events), task);
    }

    #[test]
    fn bad_keys_are_refused_and_memory_stays_bounded() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        for key in [
            String::new(),
            "k".repeat(toka_kernel::MAX_IDEMPOTENCY_KEY + 1),
            "a\nb".into(),
        ] {
            let before = w.kernel.head();
            assert!(once(&mut w, &key, agent, "x").is_err(), "{key:?} was taken");
            assert_eq!(w.kernel.head(), before);
        }
        // Only the most recent keys are kept; the oldest is forgotten.
        let mut w = World::with_limits(Limits {
            max_queue: u32::MAX,
            ..Limits::default()
        });
        let agent = w.spawn_root("a");
        let kept = toka_kernel::IDEMPOTENCY_KEYS_KEPT;
        for i in 0..=kept {
            once(&mut w, &format!("k{i}"), agent, "x").unwrap();
        }
        assert_eq!(w.kernel.state().idempotency_keys(), kept);
        assert_eq!(w.kernel.state().scheduled_under("k0"), None);
        assert!(
            w.kernel
                .state()
                .scheduled_under(&format!("k{kept}"))
                .is_some()
        );
    }

    #[test]
    fn keys_survive_a_replay_of_the_log() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let task = scheduled(&once(&mut w, "k", agent, "x").unwrap().events);
        let mut replayed = Kernel::new(Limits::default());
        for bytes in &w.log {
            replayed.replay(bytes).unwrap();
        }
        assert_eq!(replayed.state().scheduled_under("k"), Some(task));
        assert_eq!(replayed.state(), w.kernel.state());
    }
}

mod operators {
    use super::*;

    fn by_operator(w: &mut World, origin: EntityId, op: Operation) -> Result<Applied, KernelError> {
        let time = Timestamp(w.kernel.head().seq + 1_000);
        w.apply(toka_kernel::Command {
            origin,
            time,
            auth: Authorization::Operator(Digest::of(b"operator token")),
            cause: None,
            op,
        })
    }

    #[test]
    fn an_operator_acts_as_the_system_on_operator_operations_only() {
        let mut w = World::new();
        let agent = w.spawn_root("a");
        let applied = by_operator(
            &mut w,
            EntityId::SYSTEM,
            Operation::ScheduleTask {
                agent,
                spec: task_spec("from the API"),
            },
        )
        .unwrap();
        let task = scheduled(&applied.events);
        // The record keeps which operator token authorized it.
        let record = toka_kernel::Record::decode(&applied.bytes).unwrap();
        assert_eq!(
            record.command.auth,
            Authorization::Operator(Digest::of(b"operator token"))
        );
        // Not the task lifecycle, not on an agent's behalf.
        let before = w.kernel.head();
        let start = by_operator(&mut w, EntityId::SYSTEM, Operation::StartTask { task });
        assert!(
            matches!(start, Err(KernelError::CapabilityDenied { .. })),
            "{start:?}"
        );
        let behalf = by_operator(
            &mut w,
            agent,
            Operation::ScheduleTask {
                agent,
                spec: task_spec("as the agent"),
            },
        );
        assert!(
            matches!(behalf, Err(KernelError::CapabilityDenied { .. })),
            "{behalf:?}"
        );
        assert_eq!(w.kernel.head(), before);
    }
}

#[test]
fn a_journal_entry_of_an_operation_that_writes_no_state_is_small() {
    // A running task keeps an entry per operation, up to
    // `max_ops_per_task` (100 000): with the prior inline an entry took 96
    // bytes, 9.6 MB for one task of an agent holding only `observe`.
    assert!(std::mem::size_of::<JournalEntry>() <= 64);
}

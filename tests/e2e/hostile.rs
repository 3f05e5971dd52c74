//! The hostile-agent suite: real compiled agents (`agents/hostile-*`) attack
//! a real host on a real redb file. Each test asserts the exact outcome: the
//! attack is contained, the log records a clear reason, another agent's
//! tasks are still served, and the log verifies afterwards.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use toka_host::{AgentLimits, Budget, EventStore, Grant, RedbStore};
use toka_kernel::{AgentId, AgentStatus, EntityId, Event, TaskId, TaskStatus};

use crate::{Arena, Logged, agent_bytes, grant, outcome, temp_data, toka};

/// The failure reasons recorded for `agent`'s tasks, in log order.
fn failures(events: &[Logged], agent: AgentId) -> Vec<String> {
    events
        .iter()
        .filter_map(|l| match &l.event {
            Event::TaskFailed {
                agent: a, reason, ..
            } if *a == agent => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// The denials recorded against `agent`: `(operation, first target, reason)`.
fn denials(events: &[Logged], agent: AgentId) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter_map(|l| match &l.event {
            Event::CapabilityDenied { agent: a, denial } if *a == agent => Some((
                denial.operation.clone(),
                denial.targets.first().cloned().unwrap_or_default(),
                denial.reason.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn limits(f: impl FnOnce(&mut AgentLimits)) -> AgentLimits {
    let mut limits = AgentLimits::default();
    f(&mut limits);
    limits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_at_its_deadline_while_others_are_served() {
    // Long enough for the bystander's task on a slow, loaded machine.
    let arena = Arena::with_limits(limits(|l| l.deadline_per_task = Duration::from_secs(8))).await;
    let spin = arena.agent("hostile-spin", grant(&["observe"])).await;
    let mut rx = arena.host.subscribe();
    let looping = arena.host.schedule(spin, "spin").await.unwrap();
    let served = arena
        .host
        .schedule(arena.bystander, "while it spins")
        .await
        .unwrap();
    // The bystander's task finishes while the loop is still running.
    'wait: loop {
        let batch = rx.recv().await.expect("the bus runs");
        for record in &batch.records {
            for event in &record.events {
                match event {
                    Event::TaskCompleted { task, .. } if *task == served => break 'wait,
                    Event::TaskFailed { task, .. } if *task == looping => {
                        panic!("the loop ended before the bystander was served")
                    }
                    _ => {}
                }
            }
        }
    }
    arena.host.run_until_idle().await.unwrap();
    // The agent itself is fine afterwards: a fresh instance runs its next task.
    assert_eq!(outcome(&arena.host, spin, "ok").await, Ok("ok".to_owned()));

    let events = arena.finish().await;
    assert_eq!(
        failures(&events, spin),
        ["deadline exceeded: the task ran longer than 8s"]
    );
    assert!(events.iter().any(|l| matches!(
        &l.event,
        Event::AgentFaulted { agent, consecutive: 1, .. } if *agent == spin
    )));
}

/// Schedules `spin` for `agent` and returns once it runs, with a receiver
/// subscribed before it was scheduled.
async fn spinning(arena: &Arena, agent: AgentId) -> (TaskId, toka_host::Subscription) {
    let mut rx = arena.host.subscribe();
    let task = arena.host.schedule(agent, "spin").await.unwrap();
    loop {
        let batch = rx.recv().await.expect("the bus runs");
        if batch
            .records
            .iter()
            .flat_map(|r| &r.events)
            .any(|e| matches!(e, Event::TaskStarted { task: t, .. } if *t == task))
        {
            return (task, rx);
        }
    }
}

/// Revokes `agent`'s token (its authority block's revocation id).
async fn revoke_token_of(host: &toka_host::Host, agent: AgentId) {
    let digest = host.state(|s| s.agent(agent).unwrap().token).await;
    let id = host.token(&digest).unwrap().revocation_ids()[0].clone();
    host.revoke(id, false).await.unwrap();
}

/// How `task` ended, waiting at most 20 s (its deadline is far later).
async fn ended(rx: &mut toka_host::Subscription, task: TaskId) -> Result<String, String> {
    let wait = async {
        loop {
            let batch = rx.recv().await.expect("the bus runs");
            if let Some(outcome) = crate::find_outcome(&batch.records, task) {
                return outcome;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("the task ended well before its deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computing_task_ends_soon_after_its_agents_token_is_revoked_or_expires() {
    // Regression: a task computing without operations ran on after its
    // token was revoked or expired, holding its place and a CPU, until its
    // deadline (here 300 s): only an operation or an open directory found
    // the token withdrawn.
    let start: u64 = 1_800_000_000_000; // 2027-01-15, in ms
    let clock = toka_host::ManualClock::at(start);
    let arena = Arena::new(
        toka_host::HostConfig::new()
            .agent_limits(limits(|l| l.deadline_per_task = Duration::from_secs(300)))
            .clock(Arc::new(clock.clone()))
            .clone(),
    )
    .await;

    // Revoked while it spins.
    let revoked = arena.agent("hostile-spin", grant(&["observe"])).await;
    let (task, mut rx) = spinning(&arena, revoked).await;
    revoke_token_of(&arena.host, revoked).await;
    let reason = "the agent's token was withdrawn: the token has been revoked";
    assert_eq!(ended(&mut rx, task).await, Err(reason.to_owned()));
    // Its next task is failed without running.
    assert_eq!(
        outcome(&arena.host, revoked, "ok").await,
        Err(reason.to_owned())
    );

    // Expires while it spins (the host's logical clock passes the expiry).
    let root = toka_host::DataDir::new(&arena.data)
        .root_key(None, false)
        .unwrap();
    let expires = std::time::UNIX_EPOCH + Duration::from_millis(start + 3_600_000);
    let token =
        toka_host::Token::issue(&root, &["observe".parse().unwrap()], &[], Some(expires)).unwrap();
    let expiring = arena
        .agent_named(
            "hostile-spin",
            "expiring",
            Grant::Token(token.to_base64().into_bytes()),
        )
        .await;
    let (task, mut rx) = spinning(&arena, expiring).await;
    clock.advance(2 * 3_600_000);
    let reason = ended(&mut rx, task).await.unwrap_err();
    assert!(
        reason.starts_with("the agent's token was withdrawn: the token has expired"),
        "{reason}"
    );

    // Neither is the agent's fault; the bystander was served throughout.
    let events = arena.finish().await;
    assert_eq!(
        count(&events, |e| matches!(e, Event::AgentFaulted { .. })),
        0
    );
    assert_eq!(failures(&events, revoked).len(), 2);
    assert_eq!(failures(&events, expiring).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_operations_are_denied_after_a_revocation_fails_for_the_revocation() {
    // Regression: an operation denied by the revocation before the host
    // looked made the agent's own failure the reason (or, when it
    // trapped at the refusal, a fault counted against it).
    let arena =
        Arena::with_limits(limits(|l| l.deadline_per_task = Duration::from_secs(300))).await;
    let reason = "the agent's token was withdrawn: the token has been revoked";
    for (name, task) in [("returns", "observe-spin"), ("traps", "observe-spin-panic")] {
        let agent = arena
            .agent_named("hostile-spin", name, grant(&["observe"]))
            .await;
        let mut rx = arena.host.subscribe();
        let id = arena.host.schedule(agent, task).await.unwrap();
        // Wait for its operations, then revoke its token.
        'observing: loop {
            let batch = rx.recv().await.expect("the bus runs");
            for event in batch.records.iter().flat_map(|r| &r.events) {
                if matches!(event, Event::ObservationEmitted { agent: a, .. } if *a == agent) {
                    break 'observing;
                }
            }
        }
        revoke_token_of(&arena.host, agent).await;
        assert_eq!(ended(&mut rx, id).await, Err(reason.to_owned()), "{task}");
    }
    let events = arena.finish().await;
    assert_eq!(
        count(&events, |e| matches!(e, Event::AgentFaulted { .. })),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agents_tasks_fail_without_running_after_a_restart() {
    // Regression: after a restart the gate holds no token verified, and
    // the check before a task let a revoked agent's task run.
    let (_tmp, data) = temp_data();
    let host = crate::open_host(&data).await;
    let component = host
        .install("hostile-spin", agent_bytes("hostile-spin"))
        .await
        .unwrap();
    let agent = host
        .spawn(component, "revoked", grant(&["observe"]))
        .await
        .unwrap();
    revoke_token_of(&host, agent).await;
    host.shutdown().await.unwrap();

    let host = crate::open_host(&data).await;
    assert_eq!(
        outcome(&host, agent, "ok").await,
        Err("the agent's token was withdrawn: the token has been revoked".to_owned())
    );
    let started = host
        .log_events(1, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|r| &r.events)
        .filter(|e| matches!(e, Event::TaskStarted { agent: a, .. } if *a == agent))
        .count();
    assert_eq!(started, 0, "the task was started");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_stops_loops_deterministically_and_repeated_faults_quarantine_the_agent() {
    let arena = Arena::with_limits(limits(|l| {
        l.fuel_per_task = Some(5_000_000);
        l.quarantine_after = 3;
    }))
    .await;
    let spin = arena.agent("hostile-spin", grant(&["observe"])).await;
    for task in ["spin", "spin", "spin", "ok"] {
        arena.host.schedule(spin, task).await.unwrap();
    }
    arena.host.run_until_idle().await.unwrap();

    // Quarantined after the third fault: `ok` waits in the queue, and so
    // does anything scheduled now.
    let (status, queued) = arena
        .host
        .state(|s| {
            let a = s.agent(spin).unwrap();
            (a.status.clone(), a.queue.len())
        })
        .await;
    let reason =
        "3 faults in a row; the last: out of fuel: the task used all 5000000 units of its fuel";
    assert_eq!(
        status,
        AgentStatus::Quarantined {
            reason: reason.to_owned()
        }
    );
    assert_eq!(queued, 1);
    arena.bystander_serves().await;
    let later: TaskId = arena.host.schedule(spin, "ok").await.unwrap();
    arena.host.run_until_idle().await.unwrap();
    assert_eq!(
        arena
            .host
            .state(|s| s.agent(spin).unwrap().queue.len())
            .await,
        2
    );

    // The operator resumes it; the queued tasks run.
    arena.host.resume_agent(spin).await.unwrap();
    arena.host.run_until_idle().await.unwrap();
    let record = arena.host.state(|s| s.agent(spin).cloned()).await.unwrap();
    assert_eq!(record.status, AgentStatus::Active);
    assert_eq!((record.completed, record.failed), (2, 3));
    assert!(
        arena.host.state(|s| s.task(later).is_none()).await,
        "finished"
    );

    let events = arena.finish().await;
    assert_eq!(
        failures(&events, spin),
        ["out of fuel: the task used all 5000000 units of its fuel"; 3]
    );
    let quarantine: Vec<_> = events
        .iter()
        .filter_map(|l| match &l.event {
            Event::AgentQuarantined { agent, reason } if *agent == spin => {
                Some((l.origin, reason.as_str()))
            }
            Event::AgentResumed { agent } if *agent == spin => Some((l.origin, "resumed")),
            _ => None,
        })
        .collect();
    assert_eq!(
        quarantine,
        // The host records the quarantine about the agent; the operator
        // resumes it.
        [(spin, reason), (EntityId::SYSTEM, "resumed")]
    );
}

const MIB: u64 = 1 << 20;

/// A `hostile-flood` that may schedule tasks for itself (`outputs N`,
/// each `output` ending with 1 MiB), held to `budget`.
async fn outputs_agent(arena: &Arena, budget: Budget) -> AgentId {
    arena
        .agent(
            "hostile-flood",
            Grant::Budgeted {
                rights: ["observe", "schedule self"]
                    .map(|r| r.parse().unwrap())
                    .to_vec(),
                budgets: vec![budget],
            },
        )
        .await
}

/// Whether `event` is one of `agent`'s `output` tasks completing.
fn is_output_of(event: &Event, agent: AgentId) -> bool {
    matches!(event, Event::TaskCompleted { agent: a, output, .. } if *a == agent && output.len() as u64 == MIB)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_outputs_cannot_outrun_the_tree_s_log_quota() {
    // Regression (audit): the host's records for a task (its output among
    // them) are charged to the agent's tree into debt, never refused, and
    // the next task started all the same: an agent that queued tasks each
    // ending with 1 MiB wrote them all at once, past its quota (and past
    // the disk's reserve, until the disk filled and the host stopped). A
    // task now starts only once the tree is out of debt.
    let clock = toka_host::ManualClock::at(1_800_000_000_000);
    let arena = Arena::new(
        toka_host::HostConfig::new()
            .clock(Arc::new(clock.clone()))
            .clone(),
    )
    .await;
    // 256 KiB a second; the rules' 16 s of burst: 4 MiB.
    let flood = outputs_agent(&arena, Budget::LogRate(MIB / 4)).await;
    let mut rx = arena.host.subscribe();
    let outputs = Arc::new(AtomicU64::new(0));
    let counting = {
        let outputs = Arc::clone(&outputs);
        tokio::spawn(async move {
            while let Ok(batch) = rx.recv().await {
                let ended = batch
                    .records
                    .iter()
                    .flat_map(|r| &r.events)
                    .filter(|e| is_output_of(e, flood))
                    .count();
                outputs.fetch_add(ended as u64, Ordering::SeqCst);
            }
        })
    };
    arena.host.schedule(flood, "outputs 12").await.unwrap();
    let at_least = |n: u64| {
        let outputs = Arc::clone(&outputs);
        async move {
            let give_up = std::time::Instant::now() + Duration::from_secs(60);
            while outputs.load(Ordering::SeqCst) < n {
                assert!(
                    std::time::Instant::now() < give_up,
                    "{n} outputs never came"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // The logical clock stands still: no debt is paid. The burst's worth
    // ends (4 MiB: the fifth task puts the tree in debt), and nothing more
    // starts however long the host runs.
    at_least(4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burst = outputs.load(Ordering::SeqCst);
    assert!((4..=5).contains(&burst), "{burst} outputs of 1 MiB at once");
    // Two seconds pay half a mebibyte: the tree is out of debt, one more
    // task starts, and its output puts the tree in debt again.
    clock.advance(2_000);
    at_least(burst + 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(outputs.load(Ordering::SeqCst), burst + 1);
    // Nothing is lost: with time, every task runs (at most the burst's
    // worth at a time).
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while outputs.load(Ordering::SeqCst) < 12 {
        assert!(std::time::Instant::now() < give_up, "{outputs:?} outputs");
        clock.advance(4_000);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let events = arena.finish().await;
    counting.abort();
    assert_eq!(count(&events, |e| is_output_of(e, flood)), 12);
}

/// An agent whose second task is held for its tree's log-bytes debt, on a
/// wall clock, for minutes: it ran `outputs 2` and one `output` (1 MiB at
/// 4 KiB a second), and its actor waits.
async fn held_for_minutes(arena: &Arena) -> AgentId {
    let flood = outputs_agent(arena, Budget::LogRate(4 << 10)).await;
    arena.host.schedule(flood, "outputs 2").await.unwrap();
    let check = within("the first output never ended", 60);
    while arena
        .host
        .state(|s| s.agent(flood).unwrap().completed)
        .await
        < 2
    {
        check();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (completed, queued) = arena
        .host
        .state(|s| {
            let completed = s.agent(flood).unwrap().completed;
            let queued = s
                .tasks()
                .filter(|(_, t)| t.agent == flood && t.status == TaskStatus::Queued)
                .count();
            (completed, queued)
        })
        .await;
    assert_eq!((completed, queued), (2, 1), "the second output is held");
    assert_eq!(arena.host.running_actors(), 1, "its actor waits");
    flood
}

/// A check that fails, saying `what`, once `secs` have passed.
fn within(what: &'static str, secs: u64) -> impl Fn() {
    let give_up = std::time::Instant::now() + Duration::from_secs(secs);
    move || assert!(std::time::Instant::now() < give_up, "{what}")
}

/// Waits until no actor runs, failing with `what` after 20 s (the held
/// actor's backstop is 60 s).
async fn actors_end(arena: &Arena, what: &'static str) {
    let check = within(what, 20);
    while arena.host.running_actors() > 0 {
        check();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_the_actor_of_a_task_held_for_its_tree_s_log_debt() {
    // A task held until its tree's log-bytes debt is paid sleeps the whole
    // debt on a wall clock (here minutes; it looked again every second
    // before, a lock and a walk up the tree each time). A drain or stop
    // must still end its actor at once.
    let arena = Arena::new(toka_host::HostConfig::new()).await;
    held_for_minutes(&arena).await;
    assert_eq!(arena.host.drain(Duration::from_secs(10)).await, 0);
    actors_end(&arena, "the held task's actor did not end after the drain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_an_agent_ends_the_actor_of_its_held_task() {
    // The held actor sleeps its debt; terminating its agent (or
    // quarantining it, or setting its budgets) nudges it to look again,
    // so it ends, and its warm instance goes, now rather than after the
    // backstop.
    let arena = Arena::new(toka_host::HostConfig::new()).await;
    let flood = held_for_minutes(&arena).await;
    arena.host.terminate(flood, "enough").await.unwrap();
    actors_end(
        &arena,
        "the held task's actor did not end after its agent was terminated",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_starts_once_the_agent_s_lifetime_log_bytes_are_spent() {
    // Regression: a task's output is charged into debt, never refused, and
    // the lifetime total (`log=SIZE`) held nothing back: an agent past it
    // had each queued task's 1 MiB written all the same.
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let flood = outputs_agent(&arena, Budget::LogBytes(64 << 10)).await;
    assert_eq!(
        outcome(&arena.host, flood, "outputs 5").await,
        Ok("scheduled 5".to_owned())
    );
    arena.host.run_until_idle().await.unwrap();
    let events = arena.finish().await;
    // The first output passes the total (it is charged into debt); the
    // four tasks queued behind it fail without running.
    let outputs = count(&events, |e| is_output_of(e, flood));
    assert_eq!(outputs, 1);
    let spent: Vec<&String> = events
        .iter()
        .filter_map(|l| match &l.event {
            Event::TaskFailed { agent, reason, .. } if agent == &flood => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(spent.len(), 4, "{spent:?}");
    assert!(
        spent.iter().all(
            |r| r.starts_with("quota exceeded: log bytes in all of agent ")
                && r.ends_with("the limit is 65536")
        ),
        "{spent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_pays_for_the_tokens_of_the_children_it_spawns() {
    // Regression: a spawn's record names its child's token by digest, and
    // the token (its parent's and one block more, up to 8 KiB) is stored
    // beside it charged to no one: a tree spawning and terminating
    // children wrote more than its `log` quota let it.
    let limit = 256u64 << 10;
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let churner = arena
        .agent(
            "hostile-flood",
            Grant::Budgeted {
                rights: ["observe", "spawn hello", "terminate children"]
                    .iter()
                    .map(|r| r.parse().unwrap())
                    .collect(),
                budgets: vec![Budget::LogBytes(limit)],
            },
        )
        .await;
    let err = outcome(&arena.host, churner, "churn").await.unwrap_err();
    assert!(
        err.starts_with("quota exceeded: log bytes in all of agent ")
            && err.ends_with(&format!("the limit is {limit}")),
        "{err}"
    );
    // What the log and the token store hold for the churner: its own
    // records, and the tokens of the children it spawned.
    let (mut records, mut tokens, mut children) = (0u64, 0u64, 0u64);
    toka_host::replay(&*arena.store, |applied| {
        if applied.origin == churner {
            records += applied.bytes.len() as u64;
        }
        for event in &applied.events {
            if let Event::AgentSpawned { parent, spec, .. } = event
                && *parent == churner
            {
                let token = arena.store.token(&spec.token).unwrap().unwrap();
                tokens += token.len() as u64;
                children += 1;
            }
        }
    })
    .unwrap();
    let charged = arena
        .host
        .state(|s| s.agent(churner).unwrap().account.log_bytes_total)
        .await;
    assert!(children > 10, "{children} children");
    // Both were charged, and together they stayed within the quota.
    assert!(
        records + tokens <= charged && records + tokens <= limit,
        "{children} children: records {records} B and tokens {tokens} B, charged {charged} B of {limit}"
    );
    arena.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_memory_growth_traps_at_the_tokens_memory_budget() {
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let hog = arena
        .agent(
            "hostile-memory",
            Grant::Budgeted {
                rights: vec!["observe".parse().unwrap()],
                budgets: vec![Budget::Memory(16 << 20)],
            },
        )
        .await;
    let err = outcome(&arena.host, hog, "grow").await.unwrap_err();
    assert!(
        err.starts_with("out of memory: growing linear memory to ")
            && err.ends_with(" passes the limit of 16MiB"),
        "{err}"
    );
    arena.bystander_serves().await;
    assert_eq!(outcome(&arena.host, hog, "ok").await, Ok("ok".to_owned()));
    let events = arena.finish().await;
    assert_eq!(failures(&events, hog), [err]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_maps_and_unsent_bodies_an_agent_holds_are_charged_to_its_tree_s_share_of_memory() {
    // Header maps, requests' URLs and unsent bodies live in the host's
    // memory: up to 4 MiB of maps an instance, 2.7 MiB of bodies, and a
    // tree holds hundreds of instances. They are charged to the host's
    // memory for agents, under the tree's share, as linear memories are.
    // Here a budget of 16 MiB and a tree's share of one place of 8, but at
    // least what one agent may hold: 3 MiB, 128 KiB for an exchange and
    // 64 KiB for a request it makes.
    let mut config = toka_host::HostConfig::new();
    config
        .agent_limits(limits(|l| {
            l.memory_bytes = 3 << 20;
            l.http_request_bytes = 64 << 10;
            l.http_response_bytes = 64 << 10;
        }))
        .memory_budget(16 << 20)
        .max_instances(8)
        .places_per_tree(1);
    let arena = Arena::new(config).await;
    let hoarder = arena.agent("hostile-http", grant(&["observe"])).await;
    let before = arena.host.memory();
    assert_eq!(
        outcome(&arena.host, hoarder, "hoard 10 15").await,
        Ok("10".to_owned())
    );
    let memory = arena.host.memory();
    assert!(
        memory.peak >= before.in_use + 10 * 15 * 1000,
        "ten maps of 15 KB were charged: {before:?} then {memory:?}"
    );
    // 230 more (3.7 MB, within what one instance may hold): past the
    // tree's share. The task stops as the host's condition (not the
    // agent's fault), is tried again, and fails naming the share; so does
    // one holding 80 unsent bodies (2.5 MiB).
    for hoard in ["hoard 230 15", "hoard-bodies 80"] {
        let reason = outcome(&arena.host, hoarder, hoard)
            .await
            .expect_err("the hoard completed");
        assert!(
            reason.starts_with("the host could not run the task: holding HTTP headers and unsent bodies: the agent's tree holds its share of the host's memory for agents: ")
                && reason.contains("would pass the share of 3264KiB"),
            "{hoard}: {reason}"
        );
    }
    // Each attempt's instance went, and what its maps held with it.
    let after = arena.host.memory();
    assert!(after.in_use <= before.in_use, "{before:?} then {after:?}");
    arena.bystander_serves().await;
    assert_eq!(
        outcome(&arena.host, hoarder, "hoard 10 15").await,
        Ok("10".to_owned()),
        "within its share, the agent's next task runs"
    );
    arena.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hogs_within_their_own_limits_are_bounded_together_by_the_hosts_memory_budget() {
    // Six agents (six trees) that may each grow to 32 MiB, 192 MiB in
    // all, on a host that gives all its agents 24 MiB: each grows until
    // the budget refuses, at the same time as the others.
    let budget = 24u64 << 20;
    let mut config = toka_host::HostConfig::new();
    config
        .agent_limits(limits(|l| l.memory_bytes = 32 << 20))
        .memory_budget(budget)
        .warm_instances(0);
    let arena = Arena::new(config).await;
    let mut hogs = Vec::new();
    for n in 0..6 {
        let name = format!("hog-{n}");
        hogs.push(
            arena
                .agent_named("hostile-memory", &name, grant(&["observe"]))
                .await,
        );
    }
    for &hog in &hogs {
        arena.host.schedule(hog, "grow").await.unwrap();
    }
    arena.host.run_until_idle().await.unwrap();
    let memory = arena.host.memory();
    assert_eq!(memory.budget, budget);
    assert!(
        memory.peak <= budget && memory.peak > budget - (4 << 20),
        "the hogs held {} together at most",
        memory.peak
    );
    // Every instance is gone, and its memory given back.
    assert_eq!(memory.in_use, 0);
    arena.bystander_serves().await;
    // Not their fault: each hog is active and runs its next task.
    for &hog in &hogs {
        assert_eq!(outcome(&arena.host, hog, "ok").await, Ok("ok".to_owned()));
    }
    let events = arena.finish().await;
    for &hog in &hogs {
        // Within its own limit, past the host's: the host's condition.
        let [err] = &failures(&events, hog)[..] else {
            panic!("one failure each: {:?}", failures(&events, hog))
        };
        assert!(
            err.starts_with("the host could not run the task: ")
                && err.contains("the host's memory for agents is spent: growing by ")
                && err.contains(" would pass its budget of 24MiB ("),
            "{err}"
        );
        assert_eq!(
            count(
                &events,
                |e| matches!(e, Event::HostCondition { agent, .. } if *agent == hog)
            ),
            3,
            "each hog's task was tried three times"
        );
        assert_eq!(
            count(
                &events,
                |e| matches!(e, Event::AgentFaulted { agent, .. } if *agent == hog)
            ),
            0
        );
    }
}

/// What the agents hold in the kernel's state, counted afresh from it (as
/// a host opening the data dir counts it): keys, values, 1 KiB a record,
/// and 256 B and the description a task not yet ended.
async fn state_held(arena: &Arena) -> u64 {
    arena
        .host
        .state(|s| {
            let agents: u64 = s.agents().map(|(_, a)| 1024 + a.state_bytes).sum();
            let tasks: u64 = s
                .tasks()
                .map(|(_, t)| 256 + t.spec.description.len() as u64)
                .sum();
            agents + tasks
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_cannot_fill_the_hosts_memory_with_its_agents_state() {
    // Each agent's state is bounded (16 MiB), but a tree is not by the
    // kernel: children with `state` each fill theirs. 32 MiB for all
    // agents' state, 24 MiB (three quarters) for one tree.
    let budget = 32u64 << 20;
    let mut config = toka_host::HostConfig::new();
    config.state_budget(budget);
    let arena = Arena::new(config).await;
    let spawner = arena
        .agent(
            "hostile-flood",
            grant(&[
                "observe",
                "state",
                "spawn hostile-flood",
                "schedule children",
            ]),
        )
        .await;
    assert_eq!(
        outcome(&arena.host, spawner, "spawn-fill 3").await,
        Ok("spawned 3".to_owned())
    );
    arena.host.run_until_idle().await.unwrap();
    let usage = arena.host.state_usage();
    assert_eq!((usage.budget, usage.per_tree), (budget, 24 << 20));
    // The bystander's record, and the spawner's tree at its share, less
    // what the tasks' journals held while they ran (~170 B a write, ~410
    // writes).
    let tree = usage.held - 1024;
    assert!(
        tree <= 24 << 20 && tree > (24 << 20) - (61 << 10) - (100 << 10),
        "the tree holds {tree}"
    );
    assert_eq!(usage.held, state_held(&arena).await);

    // Another tree gets what is left of the budget, not its own 16 MiB.
    let other = arena
        .agent_named("hostile-flood", "other", grant(&["observe", "state"]))
        .await;
    let err = outcome(&arena.host, other, "fill-state").await.unwrap_err();
    // Not what the other trees hold, nor the budget: not the agent's to
    // learn.
    assert!(
        err.contains("the host's memory for agent state is spent: ")
            && err.ends_with(" more does not fit")
            && !err.contains("32MiB"),
        "{err}"
    );
    let full = arena.host.state_usage().held;
    assert!(full <= budget && full > budget - (61 << 10), "{full}");
    // Deleting gives the bytes back.
    let cleared = outcome(&arena.host, other, "clear-state").await.unwrap();
    assert!(cleared.starts_with("deleted "), "{cleared}");
    assert_eq!(arena.host.state_usage().held, usage.held + 1024);
    assert_eq!(arena.host.state_usage().held, state_held(&arena).await);
    arena.bystander_serves().await;

    let events = arena.finish().await;
    let children: Vec<AgentId> = events
        .iter()
        .filter_map(|l| match &l.event {
            Event::AgentSpawned { agent, parent, .. } if *parent == spawner => Some(*agent),
            _ => None,
        })
        .collect();
    assert_eq!(children.len(), 3);
    let reasons: Vec<String> = children
        .iter()
        .flat_map(|c| failures(&events, *c))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r
            .contains("the agent's tree holds its share of the host's memory for agent state: ")
            && r.contains(" would pass the share of 24MiB (")),
        "{reasons:?}"
    );
    // A refusal the agent handles: no fault, no quota hit.
    assert_eq!(
        count(&events, |e| matches!(
            e,
            Event::AgentFaulted { .. } | Event::QuotaExceeded { .. }
        )),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawning_and_terminating_children_cannot_grow_the_state_without_end() {
    // A terminated agent's record stays in the kernel's state (and in the
    // host's memory): spawning and terminating children, each within every
    // live-children limit, grew the state without end.
    let budget = 256u64 << 10;
    let mut config = toka_host::HostConfig::new();
    config.state_budget(budget);
    let arena = Arena::new(config).await;
    let churner = arena
        .agent(
            "hostile-flood",
            grant(&["observe", "spawn hello", "terminate children"]),
        )
        .await;
    let err = outcome(&arena.host, churner, "churn").await.unwrap_err();
    // The bystander's record, the churner's, its running task (256 B and
    // its 5 bytes), and the 213 children it could, each with the task's
    // journal entries of its spawn (160 B) and its termination (32 B).
    assert!(
        err.starts_with("refused after 213: ")
            && err.ends_with("the host's memory for agent state is spent: 1184B more does not fit"),
        "{err}"
    );
    // The task ended, and its journal with it: the records stay.
    assert_eq!(arena.host.state_usage().held, (2 + 213) << 10);
    assert_eq!(state_held(&arena).await, (2 + 213) << 10);
    arena.bystander_serves().await;
    arena.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_count_against_the_state_budget_until_they_end() {
    // Tasks not yet ended live in the kernel's state: 1 024 of 4 KiB may
    // wait for each agent, on agents waiting for a place.
    let budget = 128u64 << 10;
    let mut config = toka_host::HostConfig::new();
    config.state_budget(budget);
    let arena = Arena::new(config).await;
    let flood = arena
        .agent("hostile-flood", grant(&["observe", "schedule self"]))
        .await;
    let err = outcome(&arena.host, flood, "queue").await.unwrap_err();
    // Two agent records (1 KiB each), the running `queue` task (256 B and
    // its 5 bytes), then 256 B and 4 bytes a `noop` with the running
    // task's journal entry for it (160 B): 306 of them.
    assert!(
        err.starts_with("refused after 306: ")
            && err.ends_with("the host's memory for agent state is spent: 420B more does not fit"),
        "{err}"
    );
    // The queued tasks run, end, and give their bytes back.
    arena.host.run_until_idle().await.unwrap();
    assert_eq!(arena.host.state_usage().held, 2 << 10);
    assert_eq!(state_held(&arena).await, 2 << 10);
    arena.bystander_serves().await;
    let events = arena.finish().await;
    assert_eq!(
        count(
            &events,
            |e| matches!(e, Event::TaskCompleted { agent, .. } if *agent == flood)
        ),
        306
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_client_cannot_pass_the_state_budget() {
    use toka_host::{DataDir, Host, HostConfig, HostError, OperatorLevel, StateRefusal};

    // Agents not started: every task scheduled stays queued, held in the
    // kernel's state until it ends.
    let (_tmp, data) = temp_data();
    let dir = DataDir::new(&data);
    let root = dir.root_key(None, true).unwrap();
    let store: Arc<dyn EventStore> = Arc::new(
        dir.open_or_create(&toka_kernel::Limits::default(), &root)
            .unwrap(),
    );
    let budget = 64u64 << 10;
    let mut config = HostConfig::new();
    config.state_budget(budget).start_agents(false);
    let host = Host::open(store, root, config).await.unwrap();
    let hello = host.install("hello", agent_bytes("hello")).await.unwrap();
    let agent = host.spawn(hello, "a", grant(&["observe"])).await.unwrap();
    let client = |level: OperatorLevel| host.mint(&[level.right()], &[], None).unwrap();
    let writer = host.as_operator(client(OperatorLevel::Write));

    // A write client queues 4 KiB tasks until the budget is spent: one
    // agent record (1 KiB) and 15 tasks of 256 B and 4 000 bytes fit.
    let description = "x".repeat(4000);
    let (first, _) = writer
        .schedule_once("k", agent, &description)
        .await
        .unwrap();
    let mut queued = 1;
    let refusal = loop {
        match writer.schedule(agent, &description).await {
            Ok(_) => queued += 1,
            Err(e) => break e,
        }
        assert!(queued <= 64, "never refused");
    };
    assert_eq!(queued, 15);
    assert!(
        matches!(
            &refusal,
            HostError::StateBudget(StateRefusal::Host {
                growth: 4256,
                budget: 65_536,
                held: 64_864,
                ..
            })
        ),
        "{refusal:?}"
    );
    assert!(
        refusal.to_string().starts_with("the host's memory for agent state is spent: 4256B more would pass its budget of 64KiB (64864B held)"),
        "{refusal}"
    );
    // A retry under a key scheduled before holds nothing more: answered.
    assert_eq!(
        writer
            .schedule_once("k", agent, &description)
            .await
            .unwrap(),
        (first, false)
    );
    // Nor may an admin client add a root agent now.
    let admin = host.as_operator(client(OperatorLevel::Admin));
    let spawned = admin.spawn(hello, "b", grant(&["observe"])).await;
    assert!(
        matches!(
            &spawned,
            Err(HostError::StateBudget(StateRefusal::Host {
                growth: 1024,
                ..
            }))
        ),
        "{spawned:?}"
    );
    // The host's own caller is never refused (it is the machine's owner).
    host.schedule(agent, &description).await.unwrap();
    assert!(host.state_usage().held > budget);

    // The tasks run and end; the client may queue again.
    host.start_agents();
    host.run_until_idle().await.unwrap();
    assert_eq!(host.state_usage().held, 1 << 10);
    writer.schedule(agent, &description).await.unwrap();
    host.run_until_idle().await.unwrap();
    host.shutdown().await.unwrap();
}

/// Hands `host` (cell 1's) what cell `from`'s record `seq` sent, as the
/// receiver does at the next place in its inbox: a task of 4 000 bytes for
/// `agent`, scheduled by `by` there (its id in cell 1's space, as the
/// sender mints it). Whether it was queued.
async fn deliver(
    host: &toka_host::Host,
    agent: AgentId,
    from: u16,
    seq: u64,
    by: EntityId,
) -> Result<bool, toka_host::HostError> {
    use toka_kernel::{Delivery, Outgoing, Parcel, TaskSpec};
    let mail = host.mail();
    let task = EntityId::from_u128((1u128 << 112) | (u128::from(from) << 64) | u128::from(seq));
    mail.deliver(Delivery {
        from_cell: from,
        from_seq: seq,
        position: mail.inbox_read_from(),
        parcel: Parcel::Task(Outgoing {
            task,
            agent,
            by,
            spec: TaskSpec {
                description: "x".repeat(4000),
            },
        }),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_cell_cannot_fill_a_cell_s_state_budget() {
    use toka_host::{Host, HostConfig, HostError, MemoryStore, RootKey};
    use toka_kernel::{Cell, Limits};

    // Cell 1 of 3 (its log in memory; what JetStream carries is handed to
    // it as the receiver does), agents not started: every task taken in
    // stays queued. Agents' state is bounded to 4 KiB each, so one tree's
    // share is three quarters of the 256 KiB budget.
    let limits = Limits {
        max_state_bytes: 4096,
        ..Limits::default()
    };
    let store = Arc::new(MemoryStore::in_cell(limits, Cell { index: 1, cells: 3 }));
    let (budget, share) = (256u64 << 10, 192u64 << 10);
    let (_tmp, keys) = temp_data();
    std::fs::create_dir_all(&keys).unwrap();
    let key = keys.join("root.key");
    RootKey::load_or_create(&key).unwrap();
    let open = || async {
        let mut config = HostConfig::new();
        config.state_budget(budget).start_agents(false);
        let root = RootKey::load(&key).unwrap();
        Host::open(store.clone(), root, config).await.unwrap()
    };
    let host = open().await;
    let hello = host.install("hello", agent_bytes("hello")).await.unwrap();
    let agent = host.spawn(hello, "a", grant(&["observe"])).await.unwrap();
    assert_eq!(agent.cell(), 1);
    let task_bytes = 256 + 4000;
    // Cell 0's agents (an id in its space, different for each task): the
    // tasks all other cells' agents send are held together to one tree's
    // share here.
    let mut taken = 0;
    for seq in 1.. {
        let by = EntityId::from_u128(u128::from(seq) << 8 | 7);
        if !deliver(&host, agent, 0, seq, by).await.unwrap() {
            break;
        }
        taken += 1;
        assert!(taken <= 100, "never refused");
    }
    assert_eq!(taken, share / task_bytes);
    // Reopened, the host counts what other cells' tasks hold as before:
    // the next is refused again, by the share, and so is cell 2's.
    let usage = host.state_usage();
    host.shutdown().await.unwrap();
    let host = open().await;
    assert_eq!(host.state_usage(), usage);
    let by = EntityId::from_u128(7);
    assert!(!deliver(&host, agent, 0, taken + 2, by).await.unwrap());
    let from_two = EntityId::from_u128((2u128 << 112) | 1);
    assert!(!deliver(&host, agent, 2, 1, from_two).await.unwrap());
    // The operators' tasks (sent from another cell's API) are the
    // operators' share; they fill what is left of the budget (the agent's
    // record, 1 KiB, holds some of it), then are refused by it.
    let held = host.state_usage().held;
    let mut more = 0;
    for seq in 2.. {
        if !deliver(&host, agent, 2, seq, EntityId::SYSTEM)
            .await
            .unwrap()
        {
            break;
        }
        more += 1;
        assert!(more <= 100, "never refused");
    }
    assert_eq!(more, (budget - held) / task_bytes);
    assert!(host.state_usage().held <= budget);

    // Each refusal is in the log with its reason, and the deliveries are
    // taken once: none comes again.
    let reasons: Vec<(u16, String)> = host
        .log_events(1, usize::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|r| r.events)
        .filter_map(|e| match e {
            Event::TaskRefused {
                from_cell, reason, ..
            } => Some((from_cell, reason)),
            _ => None,
        })
        .collect();
    let cells: Vec<u16> = reasons.iter().map(|(cell, _)| *cell).collect();
    assert_eq!(cells, [0, 0, 2, 2], "{reasons:?}");
    for (_, reason) in &reasons[..3] {
        assert!(
            reason.starts_with(&format!(
                "the tasks other cells sent hold their share of this cell's memory for agent state: 4256B more would pass the share of 192KiB ({}B held",
                taken * task_bytes
            )),
            "{reason}"
        );
    }
    assert!(
        reasons[3].1.starts_with(
            "the host's memory for agent state is spent: 4256B more would pass its budget of 256KiB"
        ),
        "{reasons:?}"
    );
    let again = deliver(&host, agent, 0, taken + 1, by).await;
    assert!(
        matches!(&again, Err(HostError::Kernel(e)) if e.to_string().contains("was taken already")),
        "{again:?}"
    );

    // The agent runs what was queued; the budget is free again, and the
    // next task from cell 0 is queued.
    host.start_agents();
    host.run_until_idle().await.unwrap();
    assert_eq!(host.state_usage().held, 1 << 10);
    assert!(deliver(&host, agent, 0, 2_000, by).await.unwrap());
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_park_host_memory_in_resources() {
    // `wasi:http` header maps and requests live in the host's memory, and
    // any agent may make them (no right needed): before these bounds, one
    // agent holding 100 000 maps of 128 KiB parked 12 GiB in the host.
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let hoarder = arena.agent("hostile-http", grant(&["observe"])).await;
    assert_eq!(
        outcome(&arena.host, hoarder, "hoard 300 1").await,
        Err("too many host resources: an instance may hold 256 at once (files, streams, pollables, HTTP requests and header maps)".to_owned())
    );
    assert_eq!(
        outcome(&arena.host, hoarder, "hoard 1 64").await,
        Err(
            "HTTP headers too large: a header map the agent makes may hold 16KiB (in memory)"
                .to_owned()
        )
    );
    // A request keeps its method, path and authority in the host: an
    // extension method is at most 64 bytes, a path or authority 8 KiB.
    for (part, len, answer) in [
        ("method", 64, "set"),
        ("method", 65, "refused"),
        ("method", 1_000_000, "refused"),
        ("path", 8192, "set"),
        ("path", 8193, "refused"),
        ("authority", 8192, "set"),
        ("authority", 8193, "refused"),
    ] {
        assert_eq!(
            outcome(&arena.host, hoarder, &format!("set {part} {len}")).await,
            Ok(answer.to_owned()),
            "a {part} of {len} bytes"
        );
    }
    // More than one call may hand the host at all (an observation and
    // 1 MiB): not copied into the host, the task traps.
    let huge = outcome(&arena.host, hoarder, "set method 10000000").await;
    assert!(
        huge.as_ref().is_err_and(
            |e| e.contains("too much data is being copied between the host and the guest")
        ),
        "{huge:?}"
    );
    // Random bytes are made in the host's memory, in one call nothing
    // interrupts (WASI's default allows 64 MiB, a byte at a time: seconds
    // of a worker thread): at most 1 MiB a call.
    assert_eq!(
        outcome(&arena.host, hoarder, "random 1048576").await,
        Ok("1048576".to_owned())
    );
    let random = outcome(&arena.host, hoarder, "random 67108864").await;
    assert!(
        random
            .as_ref()
            .is_err_and(|e| e.contains("requested len 67108864 exceeds limit 1048576")),
        "{random:?}"
    );
    arena.bystander_serves().await;
    // Within the bounds, the same calls work; the instance keeps what it
    // made until it ends.
    assert_eq!(
        outcome(&arena.host, hoarder, "hoard 4 1").await,
        Ok("4".to_owned())
    );
    assert_eq!(
        outcome(&arena.host, hoarder, "hoard 4 1").await,
        Ok("8".to_owned()),
        "an instance holding a few resources is kept warm"
    );
    assert_eq!(
        outcome(&arena.host, hoarder, "hoard 200 8").await,
        Ok("208".to_owned())
    );
    // One holding many is not kept: the agent cannot park them on the host
    // by going idle. Its next task has a fresh instance.
    assert_eq!(
        outcome(&arena.host, hoarder, "hoard 1 1").await,
        Ok("1".to_owned())
    );
    // An unsent body buffers two writes of 16 KiB at most (1 MiB each
    // before): what the host took for 10 bodies written without end.
    let taken: u64 = outcome(&arena.host, hoarder, "hoard-bodies 10")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10 * 2 * (16 << 10)).contains(&taken), "{taken}");
    let events = arena.finish().await;
    // The two bounds above, and the traps.
    assert_eq!(failures(&events, hoarder).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_finds_nothing_an_earlier_one_left_in_its_slot() {
    // One place and no warm instances: the second agent's instance takes
    // the slot (memory, stack) the first one's left. The pooling allocator
    // keeps a slot's first pages resident and resets only those an instance
    // touched: what one agent wrote must not be there for the next.
    let mut config = toka_host::HostConfig::new();
    config.max_instances(1).warm_instances(0);
    let arena = Arena::new(config).await;
    let component = arena
        .host
        .install("hostile-memory", agent_bytes("hostile-memory"))
        .await
        .unwrap();
    let spawn = |name: &'static str| arena.host.spawn(component, name, grant(&["observe"]));
    let writer = spawn("writer").await.unwrap();
    let reader = spawn("reader").await.unwrap();
    // The writer's tasks answer a byte count.
    let host = &arena.host;
    let bytes = |task: &'static str| async move {
        let answer = outcome(host, writer, task).await.unwrap();
        answer.parse::<usize>().unwrap()
    };
    // The scan sees a pattern where there is one.
    let seen = bytes("residue check").await;
    assert!(seen > 900 << 10, "the scan saw {seen} bytes of a pattern");
    for round in 0..3 {
        let written = bytes("residue fill").await;
        assert!(written > 2 << 20, "round {round}: wrote {written} bytes");
        assert_eq!(
            outcome(&arena.host, reader, "residue scan").await,
            Ok("0".to_owned()),
            "round {round}: the reader found what the writer left"
        );
    }
    arena.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_exhausts_the_guest_stack_not_the_host() {
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let deep = arena.agent("hostile-recursion", grant(&["observe"])).await;
    assert_eq!(
        outcome(&arena.host, deep, "recurse").await,
        Err("call stack exhausted (recursion too deep)".to_owned())
    );
    assert_eq!(outcome(&arena.host, deep, "ok").await, Ok("ok".to_owned()));
    let events = arena.finish().await;
    assert_eq!(
        failures(&events, deep),
        ["call stack exhausted (recursion too deep)"]
    );
}

/// How many events match `pred`.
fn count(events: &[Logged], pred: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|l| pred(&l.event)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_writing_made_up_keys_stops_at_twice_the_keys_an_agent_holds() {
    // The kernel keeps, for each key a running task writes, what the write
    // replaced (for a re-run), until the task ends. A task deleting made-up
    // keys of 256 bytes wrote a new one each time: before the bound, up to
    // 100 000 (~70 MB held for one task, outside the state budget).
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let flood = arena.agent("hostile-flood", grant(&["state"])).await;
    let err = outcome(&arena.host, flood, "delete-made-up")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "refused after 8192: limit exceeded: distinct state keys written in one task would be 8193, the limit is 8192 (2 times the keys an agent may hold: the host remembers each until the task ends)"
    );
    // The next task starts counting again.
    let again = outcome(&arena.host, flood, "delete-made-up")
        .await
        .unwrap_err();
    assert!(again.starts_with("refused after 8192: "), "{again}");
    arena.bystander_serves().await;
    arena.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_rewriting_one_key_holds_its_journal_within_its_tree_s_share() {
    // A running task keeps an entry for each of its operations until it
    // ends (for a re-run), with the key each state write names: 100 000
    // rewrites of a 256-byte key held ~40 MB outside every budget, and a
    // tree runs hundreds of tasks at once. 32 MiB for all agents' state,
    // 24 MiB (three quarters) for one tree.
    let mut config = toka_host::HostConfig::new();
    config.state_budget(32 << 20);
    let arena = Arena::new(config).await;
    let writer = arena.agent("hostile-flood", grant(&["state"])).await;
    let idle = arena.host.state_usage().held;
    for _ in 0..2 {
        let err = outcome(&arena.host, writer, "rewrite").await.unwrap_err();
        assert!(
            err.contains("the agent's tree holds its share of the host's memory for agent state")
                && err.contains("its running tasks' journals"),
            "{err}"
        );
        // Each rewrite's entry counts 416 bytes (with the key): ~60 000
        // fit in the tree's share (all 100 000 before).
        let done: u64 = err["refused after ".len()..err.find(':').unwrap()]
            .parse()
            .unwrap();
        assert!((50_000..70_000).contains(&done), "{err}");
        // The journal is given back when the task ends; the key stays.
        let usage = arena.host.state_usage();
        assert_eq!(usage.held, idle + 256 + 8);
        assert_eq!(usage.held, state_held(&arena).await);
    }
    arena.bystander_serves().await;
    arena.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_operations_stops_at_the_per_task_limit() {
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let flood = arena.agent("hostile-flood", grant(&["observe"])).await;
    let err = outcome(&arena.host, flood, "ops").await.unwrap_err();
    assert_eq!(
        err,
        "refused after 100000: limit exceeded: operations per task would be 100001, the limit is 100000"
    );
    let events = arena.finish().await;
    assert_eq!(
        count(
            &events,
            |e| matches!(e, Event::ObservationEmitted { agent, .. } if *agent == flood)
        ),
        100_000
    );
    assert_eq!(failures(&events, flood), [err]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_tasks_stops_at_the_queue_limit() {
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let flood = arena
        .agent("hostile-flood", grant(&["observe", "schedule self"]))
        .await;
    let err = outcome(&arena.host, flood, "queue").await.unwrap_err();
    assert_eq!(
        err,
        "refused after 1024: limit exceeded: task queue length would be 1025, the limit is 1024"
    );
    // The 1024 queued tasks ran.
    let record = arena.host.state(|s| s.agent(flood).cloned()).await.unwrap();
    assert_eq!((record.completed, record.failed), (1024, 1));
    arena.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_size_observations_and_state_values_are_refused() {
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let flood = arena
        .agent(
            "hostile-flood",
            Grant::Budgeted {
                rights: vec!["observe".parse().unwrap(), "state".parse().unwrap()],
                budgets: vec![Budget::ObservationBytes(2 << 20)],
            },
        )
        .await;
    assert_eq!(
        outcome(&arena.host, flood, "big-observation").await,
        Err("limit exceeded: observation size would be 2097152, the limit is 1048576".to_owned())
    );
    assert_eq!(
        outcome(&arena.host, flood, "big-state").await,
        Err("limit exceeded: state value size would be 131072, the limit is 65536".to_owned())
    );
    // The token's budget: 2 MiB of observations per task, i.e. four of 512 KiB.
    assert_eq!(
        outcome(&arena.host, flood, "observation-bytes").await,
        Err("refused after 4: limit exceeded: observation bytes per task would be 2621440, the limit is 2097152".to_owned())
    );
    let filled = outcome(&arena.host, flood, "fill-state").await.unwrap_err();
    let puts: usize = filled
        .strip_prefix("refused after ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{filled}"));
    assert!(
        filled.contains("limit exceeded: state size would be ")
            && filled.ends_with("the limit is 16777216"),
        "{filled}"
    );
    let state_bytes = arena
        .host
        .state(|s| s.agent(flood).unwrap().state_bytes)
        .await;
    assert!(state_bytes <= 16 << 20 && state_bytes > (16 << 20) - (61 << 10));

    let events = arena.finish().await;
    let observed: Vec<usize> = events
        .iter()
        .filter_map(|l| match &l.event {
            Event::ObservationEmitted { agent, data, .. } if *agent == flood => Some(data.len()),
            _ => None,
        })
        .collect();
    assert_eq!(observed, [512 << 10; 4], "only what fit the budget");
    assert_eq!(
        count(
            &events,
            |e| matches!(e, Event::StatePut { agent, .. } if *agent == flood)
        ),
        puts
    );
    assert_eq!(failures(&events, flood).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_environment_are_invisible_without_rights() {
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let snoop = arena.agent("hostile-snoop", grant(&["observe"])).await;
    let read = outcome(&arena.host, snoop, "read /etc/passwd")
        .await
        .unwrap_err();
    assert!(read.starts_with("read /etc/passwd: "), "{read}");
    let list = outcome(&arena.host, snoop, "list /").await.unwrap_err();
    assert!(list.starts_with("list /: "), "{list}");
    let list = outcome(&arena.host, snoop, "list .").await.unwrap_err();
    assert!(list.starts_with("list .: "), "{list}");
    // The test process has PATH, HOME, CARGO_*...; the agent sees none.
    assert!(std::env::vars().next().is_some());
    assert_eq!(outcome(&arena.host, snoop, "env").await, Ok(String::new()));
    let events = arena.finish().await;
    assert_eq!(failures(&events, snoop).len(), 3);
}

/// `content` written to `path`, the parent dirs created.
fn put_file(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_reachable_only_inside_granted_dirs() {
    let outside = tempfile::tempdir().unwrap();
    let outside = outside.path().canonicalize().unwrap();
    let shared = outside.join("shared");
    let work = outside.join("work");
    put_file(&shared.join("notes.txt"), "shared notes");
    put_file(&outside.join("secret.txt"), "do not read");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::symlink(&outside, work.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), work.join("secret-link")).unwrap();

    let arena = Arena::with_limits(AgentLimits::default()).await;
    let rights = [
        format!("fs.read {}", shared.display()),
        format!("fs.write {}", work.display()),
    ];
    let rights: Vec<&str> = rights.iter().map(String::as_str).collect();
    let snoop = arena.agent("hostile-snoop", grant(&rights)).await;
    let run = |task: String| {
        let host = &arena.host;
        async move { outcome(host, snoop, &task).await }
    };
    let (s, w, o) = (shared.display(), work.display(), outside.display());

    // What was granted works.
    assert_eq!(
        run(format!("read {s}/notes.txt")).await,
        Ok("shared notes".to_owned())
    );
    assert_eq!(
        run(format!("write {w}/out.txt made here")).await,
        Ok(format!("wrote {w}/out.txt"))
    );
    assert_eq!(
        std::fs::read_to_string(work.join("out.txt")).unwrap(),
        "made here"
    );
    assert_eq!(
        run(format!("list {w}")).await,
        Ok("escape\nout.txt\nsecret-link".to_owned())
    );

    // Everything else fails, and nothing appears outside the granted dirs.
    let attempts = [
        format!("write {s}/new.txt read-only dir"),
        format!("write {o}/new.txt not granted"),
        format!("write {w}/../new.txt dot-dot"),
        format!("write {w}/escape/new.txt through a symlink"),
        format!("read {w}/../secret.txt"),
        format!("read {w}/escape/secret.txt"),
        format!("read {w}/secret-link"),
        format!("read {o}/secret.txt"),
        format!("list {o}"),
    ];
    for attempt in &attempts {
        let verb = attempt.split(' ').next().unwrap();
        let path = attempt.split(' ').nth(1).unwrap();
        let err = run(attempt.clone()).await.unwrap_err();
        assert!(
            err.starts_with(&format!("{verb} {path}: ")),
            "{attempt}: {err}"
        );
    }
    assert!(!shared.join("new.txt").exists());
    assert!(!outside.join("new.txt").exists());
    let events = arena.finish().await;
    assert_eq!(failures(&events, snoop).len(), attempts.len());
}

/// A one-shot HTTP server on 127.0.0.1: answers `200 hello` to each
/// connection and counts them; with `durable`, records the store's durable
/// head as each request arrives.
struct Server {
    port: u16,
    connections: Arc<AtomicU64>,
    durable_at_request: Arc<AtomicU64>,
}

impl Server {
    fn start(store: Option<Arc<RedbStore>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicU64::new(0));
        let durable_at_request = Arc::new(AtomicU64::new(0));
        let (count, durable) = (Arc::clone(&connections), Arc::clone(&durable_at_request));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                if let Some(store) = &store {
                    durable.store(store.head().unwrap().seq, Ordering::SeqCst);
                }
                answer(&mut stream);
            }
        });
        Self {
            port,
            connections,
            durable_at_request,
        }
    }
}

fn answer(stream: &mut TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reaches_only_granted_hosts_and_only_after_pending_ops_are_durable() {
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let granted = Server::start(Some(Arc::clone(&arena.store)));
    let other = Server::start(None);
    let right = format!("http 127.0.0.1:{}", granted.port);
    let http = arena
        .agent("hostile-http", grant(&["observe", &right]))
        .await;

    assert_eq!(
        outcome(
            &arena.host,
            http,
            &format!("get 127.0.0.1:{} /x", granted.port)
        )
        .await,
        Ok("200 hello".to_owned())
    );
    for authority in [
        format!("127.0.0.1:{}", other.port),
        format!("localhost:{}", granted.port),
    ] {
        assert_eq!(
            outcome(&arena.host, http, &format!("get {authority} /x")).await,
            Err("request failed: ErrorCode::HttpRequestDenied".to_owned())
        );
    }
    // `http *` grants every host, but no address inside the host's
    // networks: the loopback server is reached only through a right that
    // names it.
    let anywhere = arena
        .agent("hostile-http", grant(&["observe", "http *"]))
        .await;
    assert_eq!(
        outcome(
            &arena.host,
            anywhere,
            &format!("get 127.0.0.1:{} /x", other.port)
        )
        .await,
        Err("request failed: ErrorCode::HttpRequestDenied".to_owned())
    );
    assert_eq!(granted.connections.load(Ordering::SeqCst), 1);
    assert_eq!(other.connections.load(Ordering::SeqCst), 0, "no connection");
    arena.bystander_serves().await;

    let durable = granted.durable_at_request.load(Ordering::SeqCst);
    let events = arena.finish().await;
    // The observation made just before the request was durable when the
    // request arrived.
    let requesting = format!("requesting 127.0.0.1:{}", granted.port);
    let observed_at = events
        .iter()
        .find_map(|l| match &l.event {
            Event::ObservationEmitted { data, .. } if *data == requesting.as_bytes() => Some(l.seq),
            _ => None,
        })
        .expect("the observation is in the log");
    assert!(durable >= observed_at, "durable {durable} < {observed_at}");
    let refused: Vec<&str> = events
        .iter()
        .filter_map(|l| match &l.event {
            Event::HttpResponded {
                agent,
                failure: Some(failure),
                ..
            } if *agent == anywhere => Some(failure.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        refused,
        [format!(
            "refused: 127.0.0.1 is inside the host's networks: a request reaches it only when a right of the agent's own names it (`http 127.0.0.1:{}`), not through `http *`",
            other.port
        )]
    );
    assert_eq!(
        denials(&events, http),
        [
            (
                "http".to_owned(),
                format!("127.0.0.1:{}", other.port),
                format!("missing right `http 127.0.0.1:{}`", other.port)
            ),
            (
                "http".to_owned(),
                format!("localhost:{}", granted.port),
                format!("missing right `http localhost:{}`", granted.port)
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_importing_sockets_is_refused_at_install() {
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let err = arena
        .host
        .install("sockets", agent_bytes("hostile-sockets"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("imports wasi:sockets/"), "{err}");
    assert!(err.ends_with("which the host does not provide"), "{err}");
    assert!(
        arena
            .host
            .state(|s| s.component_named("sockets").is_none())
            .await
    );
    arena.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_reach_beyond_its_token() {
    let arena = Arena::with_limits(AgentLimits::default()).await;
    let victim = arena.bystander;
    arena
        .host
        .install("hostile-memory", agent_bytes("hostile-memory"))
        .await
        .unwrap();
    let rights = [
        "observe",
        "state",
        "spawn hostile-memory",
        "schedule children",
    ];
    let attacker = arena
        .agent(
            "hostile-escalate",
            Grant::Budgeted {
                rights: rights.iter().map(|r| r.parse().unwrap()).collect(),
                budgets: vec![Budget::Memory(16 << 20)],
            },
        )
        .await;
    let agents_before = arena.host.state(|s| s.agents().len()).await;

    assert_eq!(
        outcome(&arena.host, attacker, "spawn-more hostile-memory").await,
        Err(
            "capability denied: spawn_agent: cannot delegate `spawn *`: missing right `spawn *`"
                .to_owned()
        )
    );
    // Whether a component is installed is not the attacker's to learn: one
    // it may not spawn is refused alike, installed (its own) or not (an
    // unknown name was told `unknown`).
    let own = arena
        .host
        .state(move |s| s.agent(attacker).map(|a| a.component.to_string()))
        .await
        .unwrap();
    // By digest too: the denial names the digest, not the name it is of.
    for component in ["hostile-escalate", "no-such-component", &own] {
        assert_eq!(
            outcome(&arena.host, attacker, &format!("spawn-more {component}")).await,
            Err(format!(
                "capability denied: spawn_agent: missing right `spawn {component}`"
            ))
        );
    }
    assert_eq!(
        outcome(&arena.host, attacker, &format!("schedule {victim}")).await,
        Err(format!(
            "capability denied: schedule_task: missing right `schedule {victim}`"
        ))
    );
    assert_eq!(
        outcome(&arena.host, attacker, &format!("terminate {victim}")).await,
        Err(format!(
            "capability denied: terminate_agent: missing right `terminate {victim}`"
        ))
    );
    assert_eq!(
        outcome(&arena.host, attacker, &format!("impersonate {victim}")).await,
        Err(format!(
            "extension call refused: capability denied: extension: missing right `extension agent`; wrote ../{victim}/owned in my own state"
        ))
    );
    assert_eq!(arena.host.state(|s| s.agents().len()).await, agents_before);

    // A child asking for a 4 GiB budget gets its parent's 16 MiB.
    let spawned = outcome(&arena.host, attacker, "spawn-bigger hostile-memory")
        .await
        .unwrap();
    let child: AgentId = spawned.strip_prefix("spawned ").unwrap().parse().unwrap();
    arena.host.run_until_idle().await.unwrap();

    arena.bystander_serves().await;
    let (victim_record, attacker_state) = arena
        .host
        .state(|s| {
            (
                s.agent(victim).cloned().unwrap(),
                s.agent(attacker)
                    .unwrap()
                    .state
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        })
        .await;
    assert!(victim_record.is_active());
    assert!(
        victim_record.state.is_empty(),
        "the victim's state is untouched"
    );
    assert_eq!(attacker_state, [format!("../{victim}/owned")]);

    let events = arena.finish().await;
    let child_failure = failures(&events, child);
    assert_eq!(child_failure.len(), 1);
    assert!(
        child_failure[0].ends_with("passes the limit of 16MiB"),
        "{child_failure:?}"
    );
    // Nothing in the log happened to the victim at the attacker's hand.
    for l in &events {
        if l.origin == attacker {
            let touches_victim = match &l.event {
                Event::TaskScheduled { agent, .. }
                | Event::AgentTerminated { agent, .. }
                | Event::StatePut { agent, .. } => *agent == victim,
                _ => false,
            };
            assert!(!touches_victim, "{:?}", l.event);
        }
    }
    let denied: Vec<String> = denials(&events, attacker)
        .into_iter()
        .map(|(op, _, _)| op)
        .collect();
    assert_eq!(
        denied,
        [
            "spawn",
            "spawn",
            "spawn",
            "spawn",
            "schedule",
            "terminate",
            "extension"
        ]
    );
}

#[test]
fn toka_agent_resume_lets_a_quarantined_agent_run_again() {
    let (_tmp, data) = temp_data();
    let spin = crate::agent_path("hostile-spin");
    let run = toka(
        &data,
        &[
            "--fuel",
            "1000000",
            "--quarantine-after",
            "2",
            "run",
            spin,
            "--task",
            "spin",
            "--task",
            "spin",
            "--task",
            "ok",
        ],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let failed = run
        .stderr
        .matches("failed: out of fuel: the task used all 1000000 units of its fuel")
        .count();
    assert_eq!(failed, 2, "{run:?}");
    assert!(
        run.stderr
            .contains(") is quarantined: 2 faults in a row; the last: out of fuel"),
        "{run:?}"
    );
    let state = toka(&data, &["state"]);
    assert!(state.ok().contains("quarantined"), "{state:?}");

    let resumed = toka(
        &data,
        &["--fuel", "1000000", "agent", "resume", "hostile_spin"],
    );
    let lines: Vec<&str> = resumed.ok().lines().collect();
    assert_eq!(lines.len(), 2, "{resumed:?}");
    assert!(
        lines[0].starts_with("resumed agent ") && lines[0].ends_with("; 1 queued task(s) to run")
    );
    assert_eq!(lines[1], "1 completed, 0 failed");
    let again = toka(&data, &["agent", "resume", "hostile_spin"]);
    assert_ne!(again.code, 0, "{again:?}");
    assert!(again.stderr.contains("not quarantined"), "{again:?}");
    toka(&data, &["verify"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_filling_the_disk_is_refused_before_the_host_must_stop() {
    // Every operation is a record on disk; on a full disk the host cannot
    // commit and stops. Below the disk reserve, agents' operations are
    // refused instead, and the host stays up for its own records.
    let (_tmp, data) = temp_data();
    let dir = toka_host::DataDir::new(&data);
    let root = dir.root_key(None, true).unwrap();
    let redb = dir
        .open_or_create(&toka_kernel::Limits::default(), &root)
        .unwrap();
    // The data dir's redb file; the free space of its disk as set below.
    let store = crate::hardening::Failing::over(Arc::new(redb), u32::MAX, false);
    let host = toka_host::Host::open(
        Arc::clone(&store) as Arc<dyn EventStore>,
        root,
        toka_host::HostConfig::new().disk_reserve(64 << 20).clone(),
    )
    .await
    .unwrap();
    let flood = host
        .install("hostile-flood", agent_bytes("hostile-flood"))
        .await
        .unwrap();
    let flood = host
        .spawn(flood, "flood", grant(&["observe"]))
        .await
        .unwrap();
    let hello = host.install("hello", agent_bytes("hello")).await.unwrap();
    let hello = host
        .spawn(hello, "hello", grant(&["observe"]))
        .await
        .unwrap();
    assert_eq!(outcome(&host, hello, "x").await, Ok("Hello, x!".to_owned()));
    // The disk fills up. The writer looks at it after a commit, at most
    // every 200 ms: the task's scheduling is the commit it looks after.
    store.set_free(10 << 20);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let err = outcome(&host, flood, "log").await.unwrap_err();
    let nearly_full = "limit exceeded: the host's disk is nearly full: 10MiB free, and the host keeps 64MiB for its own records";
    assert!(
        err.starts_with("refused after 0: ") && err.contains(nearly_full),
        "{err}"
    );
    // Every agent is refused, not only the one that wrote most; the host
    // is up and takes the operator's commands.
    let err = outcome(&host, hello, "y").await.unwrap_err();
    assert!(err.contains(nearly_full), "{err}");
    // A task that makes no operation but ends with 1 MiB of output fails
    // for the disk too: its output would be written past the reserve.
    let err = outcome(&host, flood, "output").await.unwrap_err();
    assert!(
        err.starts_with("the task's output is refused: the host's disk is nearly full: 10MiB free"),
        "{err}"
    );
    let stopped = tokio::time::timeout(Duration::from_millis(10), host.stopped()).await;
    assert!(stopped.is_err(), "the host stopped: {stopped:?}");
    // An API client's install would store its bytes past the reserve:
    // refused, nothing written; the host's own caller is not refused.
    let writer = host.as_operator(
        host.mint(&[toka_host::OperatorLevel::Write.right()], &[], None)
            .unwrap(),
    );
    let bench = agent_bytes("test-bench");
    let head = host.head().seq;
    let err = writer.install("bench", bench.clone()).await.unwrap_err();
    assert!(
        matches!(err, toka_host::HostError::DiskReserve(_))
            && err.to_string().starts_with(&format!(
                "{}; {} more is refused until space is freed",
                &nearly_full["limit exceeded: ".len()..],
                toka_host::Size(bench.len() as u64)
            )),
        "{err}"
    );
    assert_eq!(host.head().seq, head, "nothing written");
    host.install("bench", bench).await.unwrap();
    // Space is freed: agents are served again.
    store.set_free(1 << 30);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        outcome(&host, hello, "again").await,
        Ok("Hello, again!".to_owned())
    );
    host.shutdown().await.unwrap();
    drop(store);
    assert!(crate::toka(&data, &["verify"]).ok().starts_with("ok "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_s_reads_of_its_state_are_paced_across_its_instances() {
    // Listing keys copies them under the sequencer's lock, so an agent's
    // reads are paced (here 32 KiB a second, a second's worth at once).
    // With no instance kept warm each task runs in a new one: if the pace
    // started over with each instance, every task below (~28 KB of
    // listings) would fit in a new second's worth and never wait.
    let pace = 32 * 1024;
    let mut config = toka_host::HostConfig::new();
    config
        .agent_limits(AgentLimits {
            state_read_bytes_per_second: pace,
            ..AgentLimits::default()
        })
        .warm_instances(0);
    let arena = Arena::new(config).await;
    let lister = arena.agent("test-bench", grant(&["state"])).await;
    // 20 keys of 200 bytes: a listing costs 20 × (200 + 32) + 1 024 bytes.
    let listing = 20 * (200 + 32) + 1024;
    assert_eq!(
        crate::served(&arena.host, lister, "keys 20").await,
        Ok("20".to_owned())
    );
    let start = std::time::Instant::now();
    let tasks = 3;
    for _ in 0..tasks {
        // Five listings: one to learn how many keys there are, four more.
        assert_eq!(
            crate::served(&arena.host, lister, "keys 20 4").await,
            Ok("80".to_owned())
        );
    }
    let read = tasks * 5 * listing;
    // What passed the first second's worth (less what the first task
    // left unspent) waited for the pace.
    let least = Duration::from_secs_f64((read - pace) as f64 / pace as f64);
    let waited = start.elapsed();
    assert!(
        waited >= least,
        "{read} bytes read in {waited:?}: the pace would take at least {least:?}"
    );
    arena.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refused_again_and_again_is_paced() {
    // A refusal is decided under the sequencer's lock and counts against
    // no quota of operations (nothing is applied): an agent asking again
    // and again for what it may not do took the lock as often as it
    // liked. Here 50 refusals a second, a second's worth at once.
    let rate = 50;
    let arena = Arena::with_limits(AgentLimits {
        refusals_per_second: rate,
        ..AgentLimits::default()
    })
    .await;
    // Without `observe`, each observation is refused by the gate.
    let asker = arena.agent("test-bench", grant(&["state"])).await;
    let asked = 150;
    let start = std::time::Instant::now();
    assert_eq!(
        crate::served(&arena.host, asker, &format!("refused {asked}")).await,
        Ok(asked.to_string())
    );
    // So are HTTP requests to a host its token does not name (decided in
    // the request's own task, under the same lock), on the same pace.
    assert_eq!(
        crate::served(
            &arena.host,
            asker,
            &format!("refused {asked} http://127.0.0.1:9/")
        )
        .await,
        Ok(asked.to_string())
    );
    let waited = start.elapsed();
    let least = Duration::from_secs((2 * asked - rate) / rate);
    assert!(
        waited >= least,
        "{} refusals in {waited:?}: the pace would take at least {least:?}",
        2 * asked
    );
    // Its neighbour was served meanwhile, and is now.
    arena.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_agents_refused_again_and_again_is_paced_as_a_tree() {
    // The refusal pace is each agent's: without a pace of the tree, an
    // agent spawning children had as many paces as children. Here 50
    // refusals a second an agent, and so 200 a tree (four agents' worth).
    let rate = 50;
    let arena = Arena::with_limits(AgentLimits {
        refusals_per_second: rate,
        ..AgentLimits::default()
    })
    .await;
    let spawner = arena
        .agent(
            "hostile-flood",
            grant(&["state", "spawn hostile-flood", "schedule children"]),
        )
        .await;
    // Eight children without `observe`, each observing 100 times: alone,
    // each would be done in a second (its second's worth, then 50 more at
    // 50 a second), all eight together in about one.
    let (children, each) = (8u64, 100u64);
    let start = std::time::Instant::now();
    assert_eq!(
        outcome(
            &arena.host,
            spawner,
            &format!("spawn-refuse {children} {each}")
        )
        .await,
        Ok(format!("spawned {children}"))
    );
    arena.host.run_until_idle().await.unwrap();
    let waited = start.elapsed();
    let tree_rate = 4 * rate;
    let least = Duration::from_secs((children * each - tree_rate) / tree_rate);
    assert!(
        waited >= least,
        "{} refusals in a tree in {waited:?}: its pace would take at least {least:?}",
        children * each
    );
    arena.bystander_serves().await;
    let events = arena.finish().await;
    let refused: Vec<&[u8]> = events
        .iter()
        .filter_map(|l| match &l.event {
            Event::TaskCompleted { agent, output, .. } if *agent != spawner => {
                Some(output.as_slice())
            }
            _ => None,
        })
        .filter(|output| output.starts_with(b"refused"))
        .collect();
    assert_eq!(
        refused,
        vec![format!("refused {each}").as_bytes(); children as usize],
        "every child was refused each time, and finished"
    );
}

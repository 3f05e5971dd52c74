//! Journaled outbound requests: what the kernel accepts of them, and what
//! it keeps while a task runs.

mod common;

use common::World;
use toka_kernel::{
    Authorization, Digest, Event, Exchange, HttpFailure, HttpOutcome, HttpRequest, KernelError,
    Limits, OpKind, Operation, Registry, TaskId, WorldState, replay_log,
};

fn request(url: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        url: url.into(),
        headers: Digest::of(b"headers"),
        body: Digest::of(b"body"),
        body_len: 4,
    }
}

fn asked(task: TaskId, index: u32) -> Operation {
    Operation::HttpRequest {
        task,
        index,
        request: Box::new(request("http://127.0.0.1:8080/v1/chat/completions")),
    }
}

fn answered(task: TaskId, index: u32, body_len: u64) -> Operation {
    Operation::HttpResponse {
        task,
        index,
        outcome: Box::new(HttpOutcome::Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Digest::of(b"answer"),
            body_len,
        }),
        secret: Some("OPENAI_API_KEY".into()),
    }
}

#[test]
fn a_request_and_its_answer_are_kept_while_the_task_runs() {
    let mut world = World::new();
    world
        .system(Operation::AdoptRules {
            rules: Box::new(toka_kernel::Rules::default()),
        })
        .unwrap();
    let agent = world.spawn_root("planner");
    let task = world.schedule(agent, "plan");
    world.start(agent, task);

    let applied = world.agent(agent, asked(task, 0)).unwrap();
    assert_eq!(
        applied.events,
        [Event::HttpRequested {
            agent,
            task,
            index: 0,
            method: "POST".into(),
            url: "http://127.0.0.1:8080/v1/chat/completions".into(),
        }]
    );
    let request_seq = applied.seq;
    let paid = |world: &World| {
        world
            .kernel
            .state()
            .agent(agent)
            .unwrap()
            .account
            .log_bytes_total
    };
    let before = paid(&world);
    let state = world.kernel.state();
    assert_eq!(
        state.exchange(task, 0),
        Some(Exchange {
            request: request_seq,
            digest: request("http://127.0.0.1:8080/v1/chat/completions").digest(),
            response: None
        })
    );
    let applied = world.host_for(agent, answered(task, 0, 600_000)).unwrap();
    // The body is a blob beside the record: the agent pays for it.
    assert!(
        paid(&world) - before >= 600_000,
        "{}",
        paid(&world) - before
    );
    assert!(matches!(
        &applied.events[..],
        [Event::HttpResponded { status: Some(200), body_len: 600_000, secret: Some(s), .. }] if s == "OPENAI_API_KEY"
    ));
    assert_eq!(
        world.kernel.state().exchange(task, 0),
        Some(Exchange {
            request: request_seq,
            digest: request("http://127.0.0.1:8080/v1/chat/completions").digest(),
            response: Some(applied.seq)
        })
    );
    // A failure is an answer too.
    world.agent(agent, asked(task, 1)).unwrap();
    let failed = Operation::HttpResponse {
        task,
        index: 1,
        outcome: Box::new(HttpOutcome::Failed {
            failure: HttpFailure::TooLarge { limit: 1024 },
            message: "the response is larger than the limit of 1024 bytes".into(),
        }),
        secret: None,
    };
    let applied = world.host_for(agent, failed).unwrap();
    assert!(matches!(
        &applied.events[..],
        [Event::HttpResponded { status: None, failure: Some(f), .. }] if f.starts_with("too large: ")
    ));

    // The journal goes with the task; a replay rebuilds the same state.
    world
        .host_for(
            agent,
            Operation::CompleteTask {
                task,
                output: Vec::new(),
            },
        )
        .unwrap();
    assert_eq!(world.kernel.state().exchange_count(), 0);
    let replayed = replay_log(
        world.log.iter().map(Vec::as_slice),
        Limits::default(),
        Registry::new(),
    )
    .unwrap();
    assert_eq!(replayed.state(), world.kernel.state());
}

#[test]
fn requests_and_answers_out_of_place_are_refused_and_change_nothing() {
    let mut world = World::new();
    let agent = world.spawn_root("planner");
    let other = world.spawn_root("other");
    let task = world.schedule(agent, "plan");
    let auth = Authorization::Token;

    // Before the task runs.
    world.assert_rejected(
        agent,
        auth,
        asked(task, 0),
        KernelError::InvalidOperation {
            operation: OpKind::HttpRequest,
            message: format!("task {task} is not running"),
        },
    );
    world.start(agent, task);
    // For someone else's task.
    world.assert_rejected(
        other,
        auth,
        asked(task, 0),
        KernelError::CapabilityDenied {
            origin: other,
            operation: OpKind::HttpRequest,
            reason: format!("task {task} belongs to agent {agent}"),
        },
    );
    // A method that is not one, a URL over the limit.
    let mut bad = request("http://x/");
    bad.method = "GET /".into();
    world.assert_rejected(
        agent,
        auth,
        Operation::HttpRequest {
            task,
            index: 0,
            request: Box::new(bad),
        },
        KernelError::InvalidOperation {
            operation: OpKind::HttpRequest,
            message: "`GET /` is not an HTTP method".into(),
        },
    );
    let long = format!("http://x/{}", "a".repeat(toka_kernel::MAX_URL));
    let err = world
        .kernel
        .apply(toka_kernel::Command {
            origin: agent,
            time: toka_kernel::Timestamp(10_000),
            auth,
            cause: None,
            op: Operation::HttpRequest {
                task,
                index: 0,
                request: Box::new(request(&long)),
            },
        })
        .unwrap_err();
    assert!(err.to_string().contains("the URL is"), "{err}");

    // An answer without a request; the agent answering itself.
    world.assert_rejected(
        agent,
        Authorization::System,
        answered(task, 0, 1),
        KernelError::InvalidOperation {
            operation: OpKind::HttpResponse,
            message: format!("task {task} has no journaled request 0"),
        },
    );
    world.agent(agent, asked(task, 0)).unwrap();
    world.assert_rejected(
        agent,
        auth,
        answered(task, 0, 1),
        KernelError::CapabilityDenied {
            origin: agent,
            operation: OpKind::HttpResponse,
            reason: "only the host may submit this operation".into(),
        },
    );
    // The same index twice; two answers.
    world.assert_rejected(
        agent,
        auth,
        asked(task, 0),
        KernelError::InvalidOperation {
            operation: OpKind::HttpRequest,
            message: format!("request 0 of task {task} is journaled already"),
        },
    );
    world.host_for(agent, answered(task, 0, 1)).unwrap();
    world.assert_rejected(
        agent,
        Authorization::System,
        answered(task, 0, 1),
        KernelError::InvalidOperation {
            operation: OpKind::HttpResponse,
            message: format!("request 0 of task {task} has its response already"),
        },
    );
    assert_eq!(world.kernel.state().exchange_count(), 1);
}

#[test]
fn a_state_encoded_before_requests_were_journaled_still_decodes() {
    let mut world = World::new();
    let agent = world.spawn_root("planner");
    let task = world.schedule(agent, "plan");
    world.start(agent, task);
    let state = world.kernel.state().clone();
    let bytes = state.to_bytes();
    // Format 4 had no journal and no mail at the end: three bytes (empty
    // maps) less.
    let v4 = &bytes[..bytes.len() - 3];
    assert_eq!(WorldState::from_bytes_v4(v4).unwrap(), state);
}

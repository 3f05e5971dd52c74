//! Operations from bytes: whatever decodes as a command is judged by a
//! kernel holding agents and tasks; a rejected command changes nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use toka_kernel::{
    AgentSpec, Command, ComponentSpec, Digest, EntityId, Event, Kernel, Limits, Operation,
    TaskSpec, Timestamp,
};

/// A kernel with a component, two agents and a task queued for each.
fn world() -> Kernel {
    let mut kernel = Kernel::new(Limits::default());
    let mut time = 1_000;
    let mut system = |kernel: &mut Kernel, op: Operation| {
        time += 1;
        kernel
            .apply(Command::system(EntityId::SYSTEM, Timestamp(time), op))
            .expect("the seed world applies")
            .events
    };
    let digest = Digest::of(b"component");
    system(
        &mut kernel,
        Operation::InstallComponent {
            component: Box::new(ComponentSpec {
                digest,
                name: "c".into(),
                size: 9,
            }),
        },
    );
    for name in ["a", "b"] {
        let events = system(
            &mut kernel,
            Operation::SpawnAgent {
                spec: Box::new(AgentSpec {
                    component: digest,
                    name: name.into(),
                    token: Digest::of(name.as_bytes()),
                    rights: Vec::new(),
                }),
            },
        );
        let Some(Event::AgentSpawned { agent, .. }) = events.first() else {
            unreachable!("a spawn emits AgentSpawned first");
        };
        system(
            &mut kernel,
            Operation::ScheduleTask {
                agent: *agent,
                spec: TaskSpec {
                    description: "t".into(),
                },
            },
        );
    }
    kernel
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(command) = postcard::from_bytes::<Command>(bytes) else {
        return;
    };
    let mut kernel = world();
    let (digest, head) = (kernel.state().digest(), kernel.head());
    if kernel.apply(command).is_err() {
        assert_eq!(
            kernel.state().digest(),
            digest,
            "a rejection changed the state"
        );
        assert_eq!(kernel.head(), head, "a rejection moved the chain head");
    }
});

//! Times [`WorldState::forgettable`] on a large state: `N` agents (default
//! 1 000 000) in trees of 1 000 (a root spawned by the operator, 999
//! children of it), every other child terminated; then a host's forget
//! record (ask whether anything is forgettable, then apply
//! `ForgetTerminated`), asking the state (found twice) and asking the
//! kernel (found once, kept for the record).
//!
//! `cargo run --release -p toka-kernel --example forgettable -- 1000000`

#![expect(
    clippy::disallowed_methods,
    reason = "an example timing the kernel from outside it"
)]

use toka_kernel::{
    AgentSpec, Applied, Command, ComponentSpec, Digest, EntityId, Event, Kernel, Limits, Operation,
    Timestamp, WorldState,
};

/// Applies `op` from `origin` at the next millisecond.
fn apply(kernel: &mut Kernel, origin: EntityId, op: Operation) -> Applied {
    let time = Timestamp(kernel.head().seq + 1);
    kernel
        .apply(Command::system(origin, time, op))
        .expect("the example's commands apply")
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("N: a number of agents"));
    let mut kernel = Kernel::new(Limits::default());
    let component = Digest::of(b"component");
    let spec = ComponentSpec {
        digest: component,
        name: "c".into(),
        size: 1,
    };
    let install = Operation::InstallComponent {
        component: Box::new(spec),
    };
    apply(&mut kernel, EntityId::SYSTEM, install);
    let mut root = EntityId::SYSTEM;
    for i in 0..n {
        let spec = AgentSpec {
            component,
            name: format!("a{i}"),
            token: Digest::of(&i.to_le_bytes()),
            rights: Vec::new(),
        };
        let op = Operation::SpawnAgent {
            spec: Box::new(spec),
        };
        let parent = if i % 1000 == 0 {
            EntityId::SYSTEM
        } else {
            root
        };
        let applied = apply(&mut kernel, parent, op);
        let Some(Event::AgentSpawned { agent, .. }) = applied.events.first() else {
            unreachable!("a spawn's first event is agent_spawned");
        };
        if i % 1000 == 0 {
            root = *agent;
        } else if i % 2 == 0 {
            let reason = String::new();
            let op = Operation::TerminateAgent {
                agent: *agent,
                reason,
            };
            apply(&mut kernel, EntityId::SYSTEM, op);
        }
    }
    let state: &WorldState = kernel.state();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let forgettable = state.forgettable();
        println!(
            "{n} agents, {} terminated: {} forgettable in one record, found in {:?}",
            state.agents().len() as u64 - state.live_agents(),
            forgettable.len(),
            started.elapsed()
        );
    }
    for ask_the_kernel in [false, true, false, true] {
        let mut kernel = kernel.clone();
        let started = std::time::Instant::now();
        let wanted = if ask_the_kernel {
            !kernel.forgettable().is_empty()
        } else {
            !kernel.state().forgettable().is_empty()
        };
        assert!(wanted, "the example's state has agents to forget");
        let applied = apply(&mut kernel, EntityId::SYSTEM, Operation::ForgetTerminated);
        println!(
            "a forget record, asking the {}: {} agents forgotten in {:?}",
            if ask_the_kernel { "kernel" } else { "state" },
            applied.events.len(),
            started.elapsed()
        );
    }
}

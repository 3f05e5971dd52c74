//! Components leave the state: the operator removes one nothing uses, and
//! (rules 3 and on) a package's component leaves with the package.

mod common;

use common::{World, spawned};
use toka_kernel::{
    AgentSpec, ComponentSpec, Digest, Event, KernelError, Operation, Publisher, Rules,
};

fn world(rules_version: u32) -> World {
    let mut w = World::new();
    w.system(Operation::AdoptRules {
        rules: Box::new(Rules {
            version: rules_version,
            ..Rules::default()
        }),
    })
    .unwrap();
    w.system(Operation::TrustPublisher {
        publisher: Publisher {
            name: "acme".into(),
            key: vec![7; 32],
        },
    })
    .unwrap();
    w
}

fn remove(w: &mut World, component: Digest) -> Result<Vec<Event>, KernelError> {
    w.system(Operation::RemoveComponent { component })
        .map(|applied| applied.events)
}

/// Package `probe` at `version`, its token `token`.
fn install(w: &mut World, version: &str, token: u8) -> Vec<Event> {
    w.system(common::package_install("probe", version, "acme", token))
        .unwrap()
        .events
}

fn spawn(w: &mut World, component: Digest, token: u8) -> toka_kernel::AgentId {
    let applied = w
        .system(Operation::SpawnAgent {
            spec: Box::new(AgentSpec {
                component,
                name: "a".into(),
                token: Digest::of(&[token]),
                rights: Vec::new(),
            }),
        })
        .unwrap();
    spawned(&applied.events)
}

fn removed(events: &[Event]) -> Vec<Digest> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ComponentRemoved { component, .. } => Some(*component),
            _ => None,
        })
        .collect()
}

#[test]
fn the_operator_removes_a_component_no_agent_runs() {
    let mut w = world(3);
    let digest = w.install("tool");
    let agent = spawn(&mut w, digest, 1);
    let second = spawn(&mut w, digest, 2);

    let refused = remove(&mut w, digest).unwrap_err().to_string();
    assert!(
        refused.contains("in use") && refused.contains("and 1 more run it"),
        "{refused}"
    );
    // A quarantined agent still runs it; a terminated one does not.
    w.system(Operation::QuarantineAgent {
        agent,
        reason: "faulty".into(),
    })
    .unwrap();
    w.system(Operation::TerminateAgent {
        agent: second,
        reason: "done".into(),
    })
    .unwrap();
    let refused = remove(&mut w, digest).unwrap_err().to_string();
    assert!(
        refused.contains(&format!("agent {agent} runs it")),
        "{refused}"
    );
    w.system(Operation::TerminateAgent {
        agent,
        reason: "done".into(),
    })
    .unwrap();
    let events = remove(&mut w, digest).unwrap();
    assert_eq!(
        events,
        [Event::ComponentRemoved {
            component: digest,
            name: "tool".into(),
        }]
    );
    let state = w.kernel.state();
    assert!(state.component(&digest).is_none() && state.component_named("tool").is_none());
    // Gone: not spawnable, not removable twice; installable again.
    let spawn_again = w
        .system(Operation::SpawnAgent {
            spec: Box::new(common::spec(digest, "again")),
        })
        .unwrap_err();
    assert!(
        matches!(spawn_again, KernelError::UnknownEntity { .. }),
        "{spawn_again}"
    );
    assert!(matches!(
        remove(&mut w, digest),
        Err(KernelError::UnknownEntity { .. })
    ));
    assert_eq!(w.install("tool"), digest);
}

#[test]
fn a_name_moved_on_to_a_newer_component_stays_with_it() {
    let mut w = world(3);
    let old = w.install("tool");
    let new = Digest::of(b"tool v2");
    w.system(Operation::InstallComponent {
        component: Box::new(ComponentSpec {
            digest: new,
            name: "tool".into(),
            size: 2,
        }),
    })
    .unwrap();
    remove(&mut w, old).unwrap();
    assert_eq!(
        w.kernel.state().component_named("tool").unwrap().digest,
        new
    );
}

#[test]
fn only_the_operator_removes_and_a_package_keeps_its_component() {
    let mut w = world(3);
    let tool = w.install("tool");
    let agent = w.spawn_root("agent");
    let by_agent = w
        .agent(agent, Operation::RemoveComponent { component: tool })
        .unwrap_err();
    assert!(
        matches!(by_agent, KernelError::CapabilityDenied { .. }),
        "{by_agent}"
    );
    install(&mut w, "1.0.0", 1);
    let shipped = Digest::of(b"probe-1.0.0");
    let refused = remove(&mut w, shipped).unwrap_err().to_string();
    assert!(refused.contains("package `probe` ships it"), "{refused}");
    assert!(w.kernel.state().component(&tool).is_some());
}

#[test]
fn an_upgrade_and_an_uninstall_remove_the_component_no_agent_runs_any_more() {
    let mut w = world(3);
    install(&mut w, "1.0.0", 1);
    let v1 = Digest::of(b"probe-1.0.0");
    let v2 = Digest::of(b"probe-2.0.0");
    let agent = spawn(&mut w, v1, 1);
    // The agent is rebound to 2.0.0: nothing runs 1.0.0.
    let upgraded = install(&mut w, "2.0.0", 2);
    assert_eq!(removed(&upgraded), [v1]);
    assert_eq!(w.kernel.state().agent(agent).unwrap().component, v2);
    // An agent the operator spawned from the package's component outside
    // the package keeps it installed after the uninstall, until it ends.
    let outside = spawn(&mut w, v2, 9);
    let uninstalled = w
        .system(Operation::UninstallPackage {
            name: "probe".into(),
        })
        .unwrap()
        .events;
    assert!(removed(&uninstalled).is_empty());
    assert!(w.kernel.state().component(&v2).is_some());
    w.system(Operation::TerminateAgent {
        agent: outside,
        reason: "done".into(),
    })
    .unwrap();
    assert_eq!(remove(&mut w, v2).map(|e| removed(&e)).unwrap(), [v2]);
    assert_eq!(w.kernel.state().components().len(), 0);
    w.assert_replays();
}

#[test]
fn under_rules_2_a_package_s_components_stay_as_logs_written_then_replay() {
    let mut w = world(2);
    install(&mut w, "1.0.0", 1);
    let upgraded = install(&mut w, "2.0.0", 2);
    let uninstalled = w
        .system(Operation::UninstallPackage {
            name: "probe".into(),
        })
        .unwrap()
        .events;
    assert!(removed(&upgraded).is_empty() && removed(&uninstalled).is_empty());
    assert_eq!(w.kernel.state().components().len(), 2);
}

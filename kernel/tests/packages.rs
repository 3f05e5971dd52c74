//! The trust store and packages: what the kernel enforces of them, in
//! order, whatever the host asked.

mod common;

use common::{World, spawned};
use toka_kernel::{
    AgentSpec, Authorization, Command, Digest, EntityId, Event, KernelError, OpKind, Operation,
    Publisher, Timestamp,
};

fn publisher(name: &str, key: u8) -> Operation {
    Operation::TrustPublisher {
        publisher: Publisher {
            name: name.into(),
            key: vec![key; 32],
        },
    }
}

fn install(name: &str, version: &str, publisher: &str, token: u8) -> Operation {
    common::package_install(name, version, publisher, token)
}

fn spawn_with(w: &mut World, name: &str, token: u8) -> toka_kernel::AgentId {
    let package = w.kernel.state().package(name).unwrap().clone();
    let applied = w
        .system(Operation::SpawnAgent {
            spec: Box::new(AgentSpec {
                component: package.component,
                name: name.into(),
                token: Digest::of(&[token]),
                rights: Vec::new(),
            }),
        })
        .unwrap();
    spawned(&applied.events)
}

#[test]
fn a_package_installs_only_from_a_trusted_publisher() {
    let mut w = World::new();
    let refused = w.system(install("probe", "1.0.0", "acme", 1)).unwrap_err();
    assert!(
        matches!(refused, KernelError::UnknownEntity { .. }),
        "{refused}"
    );
    assert!(
        w.kernel
            .state()
            .component(&Digest::of(b"probe-1.0.0"))
            .is_none()
    );
    w.system(publisher("acme", 7)).unwrap();
    // A name and a key are trusted once each.
    assert!(w.system(publisher("acme", 8)).is_err());
    assert!(w.system(publisher("other", 7)).is_err());
    let applied = w.system(install("probe", "1.0.0", "acme", 1)).unwrap();
    let kinds: Vec<&str> = applied.events.iter().map(Event::kind).collect();
    assert_eq!(kinds, ["component_installed", "package_installed"]);
    // The same version again, or the same name from another publisher.
    assert!(w.system(install("probe", "1.0.0", "acme", 2)).is_err());
    w.system(publisher("mallory", 9)).unwrap();
    let other = w
        .system(install("probe", "2.0.0", "mallory", 3))
        .unwrap_err();
    assert!(other.to_string().contains("uninstall it first"), "{other}");
}

#[test]
fn agents_and_operators_without_admin_authority_cannot_touch_the_trust_store() {
    let mut w = World::new();
    let agent = w.spawn_root("agent");
    for op in [
        publisher("acme", 7),
        install("probe", "1.0.0", "acme", 1),
        Operation::DistrustPublisher {
            name: "acme".into(),
        },
        Operation::UninstallPackage {
            name: "probe".into(),
        },
    ] {
        let kind = op.kind();
        let refused = w.agent(agent, op).unwrap_err();
        assert!(
            matches!(refused, KernelError::CapabilityDenied { operation, .. } if operation == kind),
            "{refused}"
        );
    }
    // An operator's command comes from the system origin.
    let time = Timestamp(w.now + 1);
    let from_agent = w.apply(Command {
        origin: agent,
        time,
        auth: Authorization::Operator(Digest::of(b"t")),
        cause: None,
        op: publisher("acme", 7),
    });
    assert!(from_agent.is_err());
    assert_eq!(w.kernel.state().publishers().len(), 0);
    assert!(OpKind::TrustPublisher.by_operator() && OpKind::TrustPublisher.host_only());
}

#[test]
fn an_upgrade_rebinds_the_agents_and_revokes_the_old_token() {
    let mut w = World::new();
    w.system(publisher("acme", 7)).unwrap();
    w.system(install("probe", "1.0.0", "acme", 1)).unwrap();
    let agent = spawn_with(&mut w, "probe", 1);
    let applied = w.system(install("probe", "2.0.0", "acme", 2)).unwrap();
    let record = w.kernel.state().agent(agent).unwrap();
    assert_eq!(record.component, Digest::of(b"probe-2.0.0"));
    assert_eq!(record.token, Digest::of(&[2]));
    assert!(w.kernel.state().is_revoked(&[1; 64]));
    assert!(applied.events.contains(&Event::PackageInstalled {
        package: Box::new(w.kernel.state().package("probe").unwrap().clone()),
        previous: Some("1.0.0".into()),
    }));
    assert!(matches!(
        applied.events.last(),
        Some(Event::TokenRevoked { .. })
    ));
}

#[test]
fn removing_a_publisher_revokes_its_packages_and_uninstalling_terminates_the_agents() {
    let mut w = World::new();
    w.system(publisher("acme", 7)).unwrap();
    w.system(install("probe", "1.0.0", "acme", 1)).unwrap();
    let agent = spawn_with(&mut w, "probe", 1);
    let applied = w
        .system(Operation::DistrustPublisher {
            name: "acme".into(),
        })
        .unwrap();
    assert_eq!(
        applied.events,
        vec![
            Event::PublisherDistrusted {
                name: "acme".into(),
                packages: vec!["probe".into()],
            },
            Event::TokenRevoked {
                revocation_id: vec![1; 64],
            },
        ]
    );
    let state = w.kernel.state();
    assert!(state.package_revoked(state.package("probe").unwrap()));
    assert!(
        state.agent(agent).unwrap().is_active(),
        "revoked, not terminated"
    );
    // Installing it again from a trusted publisher is a fresh install: the
    // revoked agent is not rebound.
    w.system(publisher("acme", 7)).unwrap();
    let again = w.system(install("probe", "1.1.0", "acme", 2)).unwrap();
    assert!(
        !again
            .events
            .iter()
            .any(|e| matches!(e, Event::AgentRebound { .. }))
    );
    let agent2 = spawn_with(&mut w, "probe", 2);
    let gone = w
        .system(Operation::UninstallPackage {
            name: "probe".into(),
        })
        .unwrap();
    assert!(gone.events.contains(&Event::AgentTerminated {
        agent: agent2,
        by: EntityId::SYSTEM,
        reason: "package `probe` uninstalled".into(),
    }));
    assert!(w.kernel.state().package("probe").is_none());
    assert!(w.kernel.state().is_revoked(&[2; 64]));
    assert!(w.kernel.state().agent(agent).unwrap().is_active());
    // Replaying the log reproduces the state.
    w.assert_replays();
}

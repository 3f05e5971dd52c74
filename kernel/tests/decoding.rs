//! Bytes from outside never panic the kernel: random and mutated record and
//! command encodings decode to an error or to something the kernel judges
//! like any other command (a rejection changes nothing).
//!
//! The stable-toolchain companion of the libFuzzer targets in `fuzz/`
//! (`record`, `command`): 256 cases each by default, `PROPTEST_CASES=N` or
//! the long mode (`TOKA_LONG_TESTS=1`: 100 000 cases each) for more.

mod common;

use common::World;
use proptest::prelude::*;
use toka_kernel::{Command, Kernel, Limits, Operation, Record, TaskSpec};

/// A world with a component, two agents, a queued and a running task, and
/// the records that built it.
fn world() -> World {
    let mut w = World::new();
    let a = w.spawn_root("a");
    let b = w.spawn_root("b");
    w.schedule(a, "queued");
    let running = w.schedule(b, "running");
    w.start(b, running);
    w.agent(
        a,
        Operation::PutState {
            key: "k".into(),
            value: b"v".to_vec(),
        },
    )
    .unwrap();
    w
}

/// Valid command encodings to mutate: every command that built [`world`]
/// and a few more an agent might send.
fn seeds(w: &World) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = w
        .log
        .iter()
        .map(|bytes| postcard::to_allocvec(&Record::decode(bytes).unwrap().command).unwrap())
        .collect();
    let (a, _) = w.kernel.state().agents().next().unwrap();
    for op in [
        Operation::EmitObservation {
            topic: Some("t".into()),
            data: b"hello".to_vec(),
        },
        Operation::ScheduleTask {
            agent: a,
            spec: TaskSpec {
                description: "x".into(),
            },
        },
        Operation::DeleteState { key: "k".into() },
    ] {
        let command = Command {
            origin: a,
            time: toka_kernel::Timestamp(w.now + 1),
            auth: w.token_of(a),
            cause: None,
            op,
        };
        seeds.push(postcard::to_allocvec(&command).unwrap());
    }
    seeds
}

/// Applies a decoded command; a rejection must leave the kernel unchanged.
fn judge(kernel: &mut Kernel, command: Command) {
    let (digest, head) = (kernel.state().digest(), kernel.head());
    if kernel.apply(command).is_err() {
        assert_eq!(
            kernel.state().digest(),
            digest,
            "a rejection changed the state"
        );
        assert_eq!(kernel.head(), head, "a rejection moved the chain head");
    }
}

/// The default number of cases, or 100 000 in the long mode.
fn config() -> ProptestConfig {
    if std::env::var_os("TOKA_LONG_TESTS").is_some() {
        ProptestConfig::with_cases(100_000)
    } else {
        ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_are_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Record::decode(&bytes);
        let _ = Record::decode_unchecked(&bytes);
        // A fresh kernel takes a first record only if it is one, sealed.
        let mut kernel = Kernel::new(Limits::default());
        prop_assert!(kernel.replay(&bytes).is_err() || kernel.head().seq == 1);
        let _ = Kernel::new(Limits::default()).restore(&bytes);
        if let Ok(command) = postcard::from_bytes::<Command>(&bytes) {
            judge(&mut world().kernel, command);
        }
    }

    #[test]
    fn mutated_commands_are_judged_like_any_other(
        seed in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut w = world();
        let seeds = seeds(&w);
        let mut bytes = seeds[seed.index(seeds.len())].clone();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(command) = postcard::from_bytes::<Command>(&bytes) {
            judge(&mut w.kernel, command);
        }
    }

    #[test]
    fn a_mutated_record_never_verifies(
        seed in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let w = world();
        let mut bytes = w.log[seed.index(w.log.len())].clone();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(Record::decode(&bytes).is_err());
    }
}

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
use toka_kernel::{Command, Digest, FORMAT_VERSION, Kernel, Limits, Operation, Record, TaskSpec};

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

/// A record's body decoded as serde's derive lays it out (one tuple: the
/// version, the sequence number, the previous hash, the command), when it
/// does so entirely and its version is one this release reads; with
/// whether the body is that tuple's canonical encoding.
fn by_serde(bytes: &[u8]) -> Option<((u16, u64, Digest, Command), bool)> {
    let body = bytes.get(..bytes.len().checked_sub(32)?)?;
    match postcard::take_from_bytes::<(u16, u64, Digest, Command)>(body) {
        Ok((parts, [])) if (1..=FORMAT_VERSION).contains(&parts.0) => {
            let canonical = postcard::to_allocvec(&parts).unwrap() == body;
            Some((parts, canonical))
        }
        _ => None,
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

    /// The record decoder reads the header by hand: it must agree with the
    /// layout serde's derive gives the body, on sealed records and on any
    /// record mutated from one (it may refuse what is not canonical).
    #[test]
    fn records_decode_as_serde_lays_them_out(
        seed in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let w = world();
        let mut bytes = w.log[seed.index(w.log.len())].clone();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let ours = Record::decode_unchecked(&bytes)
            .ok()
            .map(|r| (r.version, r.seq, r.prev_hash, r.command));
        match by_serde(&bytes) {
            Some((parts, true)) => prop_assert_eq!(ours, Some(parts)),
            Some((parts, false)) => prop_assert!(ours.is_none() || ours == Some(parts)),
            None => prop_assert_eq!(ours, None),
        }
    }
}

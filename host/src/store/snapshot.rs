//! Snapshots: the world state after a record, so recovery replays only the
//! log's tail.
//!
//! A snapshot is the postcard encoding of `(version, head, state digest,
//! state bytes)`, stored under the sequence number of its head. Loading one
//! checks its version and that the state bytes hash to the digest.

use serde::{Deserialize, Serialize};
use toka_kernel::{ChainHead, Digest, Kernel, WorldState};

/// The snapshot encoding this release writes and the newest it reads.
///
/// - 1: the state as releases before recorded rules kept it (read through
///   [`WorldState::from_bytes_v1`]).
/// - 2: the state with rules, spawn depths, accounts and refusal gaps (read
///   through [`WorldState::from_bytes_v2`]).
/// - 3: the state with the most recent idempotency keys (read through
///   [`WorldState::from_bytes_v3`]).
/// - 4: the state with the trust store and installed packages (read
///   through [`WorldState::from_bytes_v4`]).
/// - 5: the state with the journaled HTTP requests of running tasks.
/// - 6: the state with the cell's mail.
/// - 7: a running task's later writes of a key keep no copy of what they
///   replaced ([`toka_kernel::Replaced::Rewrite`]), and the keys written
///   outside a running task are kept at the end of the state (format 6, its
///   prefix, is read through [`WorldState::from_bytes_v6`]).
pub(crate) const SNAPSHOT_VERSION: u16 = 7;

#[derive(Serialize, Deserialize)]
struct Encoded {
    version: u16,
    head: ChainHead,
    digest: Digest,
    #[serde(with = "serde_bytes_vec")]
    state: Vec<u8>,
}

/// A decoded, checked snapshot.
pub(crate) struct Snapshot {
    pub(crate) head: ChainHead,
    pub(crate) state: WorldState,
}

/// Encodes the kernel's state at its head.
pub(crate) fn encode(kernel: &Kernel) -> Vec<u8> {
    encode_state(kernel.head(), kernel.state())
}

/// Encodes `state`, the state after the record at `head`, as a snapshot
/// (docs/format.md; read it back with [`decode_snapshot`]): what
/// [`Host::encoded_state`](crate::Host::encoded_state) returns, for a
/// caller that encodes a state it holds ([`Host::committed_view`](crate::Host::committed_view))
/// on a thread of its choosing.
#[must_use]
pub fn encode_state(head: ChainHead, state: &WorldState) -> Vec<u8> {
    let state = state.to_bytes();
    let encoded = Encoded {
        version: SNAPSHOT_VERSION,
        head,
        digest: Digest::of(&state),
        state,
    };
    postcard::to_allocvec(&encoded).expect("a snapshot is plain data: postcard encodes it")
}

/// Decodes and checks a snapshot.
pub(crate) fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    let (version, _) =
        postcard::take_from_bytes::<u16>(bytes).map_err(|e| format!("unreadable: {e}"))?;
    if version == 0 || version > SNAPSHOT_VERSION {
        return Err(format!(
            "snapshot format {version} is not supported (this build reads up to {SNAPSHOT_VERSION})"
        ));
    }
    let encoded: Encoded = postcard::from_bytes(bytes).map_err(|e| format!("unreadable: {e}"))?;
    if Digest::of(&encoded.state) != encoded.digest {
        return Err("its state does not match its digest".into());
    }
    let state = match version {
        1 => WorldState::from_bytes_v1(&encoded.state),
        2 => WorldState::from_bytes_v2(&encoded.state),
        3 => WorldState::from_bytes_v3(&encoded.state),
        4 => WorldState::from_bytes_v4(&encoded.state),
        5 => WorldState::from_bytes_v5(&encoded.state),
        6 => WorldState::from_bytes_v6(&encoded.state),
        _ => WorldState::from_bytes(&encoded.state),
    }
    .map_err(|e| format!("unreadable state (format {version}): {e}"))?;
    Ok(Snapshot {
        head: encoded.head,
        state,
    })
}

/// Decodes a snapshot (as a store keeps it, or as `GET /v1/log/state`
/// sends it) into the state and the chain head it is the state after,
/// checking its version and digest.
///
/// # Errors
///
/// What is wrong with it, for a person.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(ChainHead, WorldState), String> {
    decode(bytes).map(|s| (s.head, s.state))
}

/// `Vec<u8>` as one byte string (postcard lays it out as a sequence of
/// bytes either way; this copies at once instead of byte by byte).
pub(crate) mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toka_kernel::Limits;

    #[test]
    fn snapshots_round_trip_and_refuse_tampering() {
        let kernel = Kernel::new(Limits::default());
        let bytes = encode(&kernel);
        let snapshot = decode(&bytes).unwrap();
        assert_eq!(snapshot.head, kernel.head());
        assert_eq!(snapshot.state, *kernel.state());
        assert_eq!(snapshot.state.digest(), kernel.state().digest());

        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(decode(&tampered).is_err());
        let mut newer = bytes;
        newer[0] = 9;
        let Err(why) = decode(&newer) else {
            panic!("a newer snapshot format decoded");
        };
        assert!(why.contains("snapshot format 9 is not supported"), "{why}");
    }
}

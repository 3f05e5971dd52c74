//! Identifiers: 128-bit entity ids and 256-bit content digests.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The id of an entity in the world: an agent, a task, or the system itself.
///
/// Ids are 128 bits. The kernel derives the ids of new agents and tasks from
/// their parent and a counter in the world state (never from randomness), so
/// replaying a log reproduces every id. They print as 32 lowercase hex digits;
/// [`EntityId::short`] gives the first 8 for humans.
///
/// # Examples
///
/// ```
/// use toka_kernel::EntityId;
///
/// let id: EntityId = "000000000000000000000000000000ff".parse().unwrap();
/// assert_eq!(id.as_u128(), 255);
/// assert_eq!(id.to_string(), "000000000000000000000000000000ff");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntityId(u128);

/// An alias that documents an [`EntityId`] naming an agent.
pub type AgentId = EntityId;
/// An alias that documents an [`EntityId`] naming a task.
pub type TaskId = EntityId;

impl EntityId {
    /// The host itself: the origin of operator commands and of the records the
    /// host writes on an agent's behalf.
    pub const SYSTEM: EntityId = EntityId(0);

    /// Wraps a raw 128-bit value.
    #[must_use]
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The raw 128-bit value.
    #[must_use]
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The first 8 hex digits: enough to tell entities apart in human output.
    #[must_use]
    pub fn short(self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }

    /// The cell of a cluster that minted the id: its top 16 bits.
    /// Meaningful for ids minted in a cluster's cell (where it routes a
    /// request to the cell's owner); a single host's ids carry no cell.
    #[must_use]
    pub const fn cell(self) -> u16 {
        (self.0 >> 112) as u16
    }

    /// Derives a child id from a domain tag, a parent id and a counter; in a
    /// cluster's cell, the cell is the id's top 16 bits (and part of the
    /// hash), so ids minted in two cells never collide.
    ///
    /// A pure function: the same inputs always give the same id.
    pub(crate) fn derive(cell: Option<u16>, domain: &str, parent: EntityId, counter: u64) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"toka.entity.v1\0");
        if let Some(cell) = cell {
            hasher.update(b"cell\0");
            hasher.update(&cell.to_be_bytes());
        }
        hasher.update(domain.as_bytes());
        hasher.update(&[0]);
        hasher.update(&parent.0.to_be_bytes());
        hasher.update(&counter.to_be_bytes());
        let hash = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash.as_bytes()[..16]);
        let mut value = u128::from_be_bytes(bytes);
        if let Some(cell) = cell {
            value = (value & (u128::MAX >> 16)) | (u128::from(cell) << 112);
        }
        // Zero is reserved for SYSTEM; a derived id of zero (probability
        // 2^-128) is nudged so the reservation holds by construction.
        Self(value.max(1))
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityId({:032x})", self.0)
    }
}

/// Why a string is not an [`EntityId`] or a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} hex digits, got `{input}`")]
pub struct ParseIdError {
    expected: usize,
    input: String,
}

impl FromStr for EntityId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; 16] = parse_hex(s)?;
        Ok(Self(u128::from_be_bytes(bytes)))
    }
}

impl Serialize for EntityId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fixed(&self.0.to_be_bytes(), serializer)
    }
}

impl<'de> Deserialize<'de> for EntityId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_fixed::<16, D>(deserializer).map(|b| Self(u128::from_be_bytes(b)))
    }
}

/// A 256-bit BLAKE3 digest: of a component's bytes, a token's bytes, a log
/// record, or the world state.
///
/// # Examples
///
/// ```
/// use toka_kernel::Digest;
///
/// let d = Digest::of(b"hello");
/// assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The all-zero digest: the `prev_hash` of the first record of a log.
    pub const ZERO: Digest = Digest([0; 32]);

    /// The BLAKE3 digest of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The raw bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits: enough to tell digests apart in human output.
    #[must_use]
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

/// Hashes a map key that is one [`EntityId`] or one [`Digest`] by its
/// first 8 bytes (an id's low 64 bits): both are BLAKE3 outputs, uniform in
/// every bit, and neither is chosen by an agent (an id is derived from its
/// parent and a counter, a digest is of content), so those bytes are as good
/// a hash as SipHash's over all of them, at a fraction of its cost. Not for
/// keys made of several ids (their halves would cancel) or of anything else.
///
/// ```
/// use std::collections::HashMap;
/// use toka_kernel::{EntityId, IdHash};
///
/// let mut tasks: HashMap<EntityId, u32, IdHash> = HashMap::default();
/// tasks.insert(EntityId::from_u128(7), 1);
/// assert_eq!(tasks[&EntityId::from_u128(7)], 1);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// The [`IdHash`] hasher.
#[derive(Debug, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A `Digest` hashes as its 32 bytes: their first 8.
        let mut first = [0u8; 8];
        match bytes.first_chunk::<8>() {
            Some(chunk) => first = *chunk,
            None => first[..bytes.len()].copy_from_slice(bytes),
        }
        self.0 ^= u64::from_le_bytes(first);
    }

    fn write_usize(&mut self, len: usize) {
        // A `Digest`'s length, before its bytes: always 32.
        self.0 ^= len as u64;
    }

    fn write_u128(&mut self, value: u128) {
        // An `EntityId`: its low 64 bits (the top 16 may name a cell).
        self.0 ^= value as u64;
    }
}

/// Bytes as lowercase hex, two digits each: how ids, digests and
/// revocation ids are printed everywhere.
///
/// # Examples
///
/// ```
/// assert_eq!(toka_kernel::to_hex(&[0, 15, 255]), "000fff");
/// ```
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s).map(Self)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fixed(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_fixed::<32, D>(deserializer).map(Self)
    }
}

/// Fixed-size ids as hex text in human-readable formats (JSON), and as one
/// byte string (a length byte, then the bytes copied at once) in postcard.
fn serialize_fixed<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.serialize_str(&to_hex(bytes))
    } else {
        serializer.serialize_bytes(bytes)
    }
}

fn deserialize_fixed<'de, const N: usize, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<[u8; N], D::Error> {
    struct Fixed<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for Fixed<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{N} bytes or {} hex digits", N * 2)
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; N], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<[u8; N], E> {
            parse_hex(v).map_err(E::custom)
        }
    }

    if deserializer.is_human_readable() {
        deserializer.deserialize_str(Fixed::<N>)
    } else {
        deserializer.deserialize_bytes(Fixed::<N>)
    }
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], ParseIdError> {
    let err = || ParseIdError {
        expected: N * 2,
        input: s.chars().take(80).collect(),
    };
    if s.len() != N * 2 {
        return Err(err());
    }
    let mut out = [0u8; N];
    for (i, chunk) in s.as_bytes().chunks_exact(2).enumerate() {
        let hi = hex_value(chunk[0]).ok_or_else(err)?;
        let lo = hex_value(chunk[1]).ok_or_else(err)?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_id_round_trips_through_text_and_postcard() {
        let id = EntityId::derive(None, "agent", EntityId::SYSTEM, 7);
        assert_eq!(id.to_string().parse::<EntityId>().unwrap(), id);
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes.len(), 17, "a length byte and 16 bytes");
        assert_eq!(postcard::from_bytes::<EntityId>(&bytes).unwrap(), id);
    }

    #[test]
    fn derivation_is_deterministic_and_separates_domains() {
        let a = EntityId::derive(None, "agent", EntityId::SYSTEM, 1);
        assert_eq!(a, EntityId::derive(None, "agent", EntityId::SYSTEM, 1));
        assert_ne!(a, EntityId::derive(None, "task", EntityId::SYSTEM, 1));
        assert_ne!(a, EntityId::derive(None, "agent", EntityId::SYSTEM, 2));
        assert_ne!(a, EntityId::SYSTEM);
    }

    #[test]
    fn ids_minted_in_a_cell_carry_it_and_never_meet_another_cell_s() {
        let mut seen = std::collections::BTreeSet::new();
        for cell in [0u16, 1, 2, 1023, u16::MAX] {
            for counter in 0..200 {
                for domain in ["agent", "task"] {
                    let id = EntityId::derive(Some(cell), domain, EntityId::SYSTEM, counter);
                    assert_eq!(id.cell(), cell);
                    assert_ne!(id, EntityId::SYSTEM);
                    assert!(seen.insert(id), "{id} minted twice");
                }
            }
        }
        // The same inputs in a cell and on a single host: different ids.
        assert_ne!(
            EntityId::derive(Some(0), "agent", EntityId::SYSTEM, 1),
            EntityId::derive(None, "agent", EntityId::SYSTEM, 1)
        );
    }

    #[test]
    fn bad_hex_is_rejected_with_the_expected_length() {
        let err = "xyz".parse::<EntityId>().unwrap_err();
        assert_eq!(err.to_string(), "expected 32 hex digits, got `xyz`");
        assert!("g".repeat(64).parse::<Digest>().is_err());
        assert_eq!(
            "AB".repeat(32).parse::<Digest>().unwrap(),
            Digest([0xab; 32])
        );
    }
}

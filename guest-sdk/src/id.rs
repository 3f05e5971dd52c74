//! Entity ids as agents see them.

use std::fmt;
use std::str::FromStr;

use crate::bindings::toka::agent::types as wit;

/// The id of an agent or a task: 128 bits, printed as 32 hex digits (the
/// same text the `toka` command line prints and accepts).
///
/// # Examples
///
/// ```
/// use toka_guest::EntityId;
///
/// let id: EntityId = "0123456789abcdef0123456789abcdef".parse().unwrap();
/// assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
/// assert_eq!(id.short(), "01234567");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntityId(u128);

/// An [`EntityId`] naming an agent.
pub type AgentId = EntityId;
/// An [`EntityId`] naming a task.
pub type TaskId = EntityId;

impl EntityId {
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

    /// The first 8 hex digits, for messages.
    #[must_use]
    pub fn short(self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }

    /// The 16 big-endian bytes, e.g. to store the id in state.
    #[must_use]
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The inverse of [`EntityId::to_bytes`].
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }
}

impl From<wit::EntityId> for EntityId {
    fn from(id: wit::EntityId) -> Self {
        Self((u128::from(id.hi) << 64) | u128::from(id.lo))
    }
}

impl From<EntityId> for wit::EntityId {
    fn from(id: EntityId) -> Self {
        wit::EntityId {
            hi: (id.0 >> 64) as u64,
            lo: id.0 as u64,
        }
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

/// Why a string is not an [`EntityId`]: it must be exactly 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError(String);

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected 32 hex digits, got `{}`", self.0)
    }
}

impl std::error::Error for ParseIdError {}

impl FromStr for EntityId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseIdError(s.chars().take(80).collect()));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| ParseIdError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_halves_round_trip() {
        let id = EntityId::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
        let wire: wit::EntityId = id.into();
        assert_eq!(wire.hi, 0x0011_2233_4455_6677);
        assert_eq!(wire.lo, 0x8899_aabb_ccdd_eeff);
        assert_eq!(EntityId::from(wire), id);
    }

    #[test]
    fn text_and_bytes_round_trip() {
        let id = EntityId::from_u128(u128::MAX - 5);
        assert_eq!(id.to_string().parse::<EntityId>().unwrap(), id);
        assert_eq!(EntityId::from_bytes(id.to_bytes()), id);
    }

    #[test]
    fn malformed_text_is_rejected() {
        for bad in [
            "",
            "abc",
            &"g".repeat(32),
            &"0".repeat(33),
            "+0000000000000000000000000000001",
        ] {
            assert!(bad.parse::<EntityId>().is_err(), "{bad:?} parsed");
        }
    }
}

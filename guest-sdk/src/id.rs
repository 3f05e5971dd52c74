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

/// Declares a typed id: an [`EntityId`] that only names one kind of entity,
/// so that one kind cannot be passed where another is expected.
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(EntityId);

        impl $name {
            /// Wraps a raw 128-bit value.
            #[must_use]
            pub const fn from_u128(value: u128) -> Self {
                Self(EntityId::from_u128(value))
            }

            /// The raw 128-bit value.
            #[must_use]
            pub const fn as_u128(self) -> u128 {
                self.0.as_u128()
            }

            /// The first 8 hex digits, for messages.
            #[must_use]
            pub fn short(self) -> String {
                self.0.short()
            }

            /// The 16 big-endian bytes, e.g. to store the id in state.
            #[must_use]
            pub const fn to_bytes(self) -> [u8; 16] {
                self.0.to_bytes()
            }

            /// The inverse of `to_bytes`.
            #[must_use]
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(EntityId::from_bytes(bytes))
            }

            /// The untyped id.
            #[must_use]
            pub const fn entity(self) -> EntityId {
                self.0
            }
        }

        impl From<$name> for EntityId {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl From<EntityId> for $name {
            /// Takes an untyped id as naming this kind of entity (the host
            /// refuses it if it does not).
            fn from(id: EntityId) -> Self {
                Self(id)
            }
        }

        impl From<$name> for wit::EntityId {
            fn from(id: $name) -> Self {
                id.0.into()
            }
        }

        impl From<wit::EntityId> for $name {
            fn from(id: wit::EntityId) -> Self {
                Self(id.into())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}

typed_id!(
    /// The id of an agent. A [`TaskId`] is not an agent id: passing one
    /// where an agent is expected does not compile.
    ///
    /// ```compile_fail
    /// fn schedule_onto(ctx: &mut toka_guest::Context, task: toka_guest::TaskId) {
    ///     let _ = ctx.schedule(task, "oops"); // expected `AgentId`, found `TaskId`
    /// }
    /// ```
    AgentId
);

typed_id!(
    /// The id of a task.
    TaskId
);

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
    fn typed_ids_keep_the_text_and_bytes_of_their_entity() {
        let agent: AgentId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(agent.to_string(), "0123456789abcdef0123456789abcdef");
        assert_eq!(AgentId::from_bytes(agent.to_bytes()), agent);
        assert_eq!(EntityId::from(agent).short(), agent.short());
        assert_eq!(
            format!("{agent:?}"),
            "AgentId(0123456789abcdef0123456789abcdef)"
        );
        let task = TaskId::from(EntityId::from(agent));
        assert_eq!(task.as_u128(), agent.as_u128());
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

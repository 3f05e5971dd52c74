//! Why the host refused an operation.

use std::fmt;

use crate::bindings::toka::agent::types as wit;

/// Why the host did not apply an operation. Each case carries the host's
/// message, which names the problem (e.g. the missing right).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The agent's token does not grant the right the operation needs.
    CapabilityDenied(String),
    /// The operation is not valid now (e.g. the target agent is terminated).
    InvalidOperation(String),
    /// The operation names an agent, task or component that does not exist.
    UnknownEntity(String),
    /// A size or count limit would be exceeded.
    LimitExceeded(String),
    /// The host does not support the operation.
    Unsupported(String),
    /// Anything else, e.g. the host is shutting down.
    Other(String),
}

impl Error {
    /// The host's message.
    #[must_use]
    pub fn message(&self) -> &str {
        match self {
            Error::CapabilityDenied(m)
            | Error::InvalidOperation(m)
            | Error::UnknownEntity(m)
            | Error::LimitExceeded(m)
            | Error::Unsupported(m)
            | Error::Other(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Error::CapabilityDenied(_) => "capability denied",
            Error::InvalidOperation(_) => "invalid operation",
            Error::UnknownEntity(_) => "unknown entity",
            Error::LimitExceeded(_) => "limit exceeded",
            Error::Unsupported(_) => "unsupported",
            Error::Other(_) => "error",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for Error {}

impl From<wit::Error> for Error {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::CapabilityDenied(m) => Error::CapabilityDenied(m),
            wit::Error::InvalidOperation(m) => Error::InvalidOperation(m),
            wit::Error::UnknownEntity(m) => Error::UnknownEntity(m),
            wit::Error::LimitExceeded(m) => Error::LimitExceeded(m),
            wit::Error::Unsupported(m) => Error::Unsupported(m),
            wit::Error::Other(m) => Error::Other(m),
        }
    }
}

/// Lets agents use `?` on [`Context`](crate::Context) calls inside
/// [`Agent::handle_task`](crate::Agent::handle_task), whose error is a `String`.
impl From<Error> for String {
    fn from(e: Error) -> Self {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind_and_keeps_the_message() {
        let e = Error::from(wit::Error::CapabilityDenied(
            "missing right spawn worker".into(),
        ));
        assert_eq!(
            e.to_string(),
            "capability denied: missing right spawn worker"
        );
        assert_eq!(e.message(), "missing right spawn worker");
        assert_eq!(
            String::from(e),
            "capability denied: missing right spawn worker"
        );
    }
}

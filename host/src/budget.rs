//! Budgets: limits a capability token states, e.g. `memory=16MiB`.
//!
//! A budget is a `budget(NAME, VALUE)` fact in any block of a token. The
//! effective budget is the smallest value any block states, so a delegation
//! block can only lower what its parent had: a child never gets a larger
//! budget than its parent. The host applies it on top of its own limits
//! ([`AgentLimits::narrowed`](crate::AgentLimits::narrowed)).
//!
//! | budget              | limits                                   | fact                                 |
//! |---------------------|------------------------------------------|--------------------------------------|
//! | `memory=SIZE`       | bytes of each linear memory              | `budget("memory", BYTES)`            |
//! | `fuel=N`            | fuel per task (needs a host with `--fuel`) | `budget("fuel", N)`                |
//! | `deadline=DURATION` | wall-clock time per task                 | `budget("deadline_ms", MS)`          |
//! | `observations=SIZE` | bytes of observations per task           | `budget("observation_bytes", BYTES)` |
//!
//! SIZE is bytes with an optional `KiB`, `MiB` or `GiB`; DURATION is a
//! whole number of `ms`, `s` or `m`.

use std::fmt;
use std::str::FromStr;

use crate::units::{Size, parse_count, parse_duration, parse_size};

/// One budget.
///
/// # Examples
///
/// ```
/// use toka_host::Budget;
///
/// let budget: Budget = "memory=16MiB".parse().unwrap();
/// assert_eq!(budget, Budget::Memory(16 << 20));
/// assert_eq!(budget.to_string(), "memory=16MiB");
/// assert!("memory=lots".parse::<Budget>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Budget {
    /// Bytes of each linear memory.
    Memory(u64),
    /// Fuel per task.
    Fuel(u64),
    /// Wall-clock time per task, in milliseconds.
    DeadlineMs(u64),
    /// Bytes of observations per task.
    ObservationBytes(u64),
}

/// Why a string or a token fact is not a budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a budget: {problem} (budgets: memory=SIZE, fuel=N, deadline=DURATION, observations=SIZE)"
)]
pub struct BudgetError {
    input: String,
    problem: String,
}

impl Budget {
    /// The name of its fact in a token.
    #[must_use]
    pub const fn fact_name(self) -> &'static str {
        match self {
            Budget::Memory(_) => "memory",
            Budget::Fuel(_) => "fuel",
            Budget::DeadlineMs(_) => "deadline_ms",
            Budget::ObservationBytes(_) => "observation_bytes",
        }
    }

    /// The value of its fact in a token.
    #[must_use]
    pub const fn value(self) -> u64 {
        match self {
            Budget::Memory(v)
            | Budget::Fuel(v)
            | Budget::DeadlineMs(v)
            | Budget::ObservationBytes(v) => v,
        }
    }

    /// The budget a token fact `budget(name, value)` states.
    ///
    /// # Errors
    ///
    /// [`BudgetError`] for a name this host does not know: a token that
    /// states a limit the host cannot apply is refused, not half-obeyed.
    pub fn from_fact(name: &str, value: u64) -> Result<Budget, BudgetError> {
        Ok(match name {
            "memory" => Budget::Memory(value),
            "fuel" => Budget::Fuel(value),
            "deadline_ms" => Budget::DeadlineMs(value),
            "observation_bytes" => Budget::ObservationBytes(value),
            _ => {
                return Err(BudgetError {
                    input: format!("budget({name:?}, {value})"),
                    problem: format!("this host knows no budget `{name}`"),
                });
            }
        })
    }

    /// The same kind of budget with `value`.
    #[must_use]
    pub(crate) const fn with_value(self, value: u64) -> Budget {
        match self {
            Budget::Memory(_) => Budget::Memory(value),
            Budget::Fuel(_) => Budget::Fuel(value),
            Budget::DeadlineMs(_) => Budget::DeadlineMs(value),
            Budget::ObservationBytes(_) => Budget::ObservationBytes(value),
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Budget::Memory(bytes) => write!(f, "memory={}", Size(bytes)),
            Budget::Fuel(fuel) => write!(f, "fuel={fuel}"),
            Budget::DeadlineMs(ms) => write!(f, "deadline={ms}ms"),
            Budget::ObservationBytes(bytes) => write!(f, "observations={}", Size(bytes)),
        }
    }
}

impl FromStr for Budget {
    type Err = BudgetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |problem: String| BudgetError {
            input: s.chars().take(100).collect(),
            problem,
        };
        let (name, value) = s
            .trim()
            .split_once('=')
            .ok_or_else(|| fail("expected NAME=VALUE".into()))?;
        match name.trim() {
            "memory" => parse_size(value).map(Budget::Memory),
            "fuel" => parse_count(value).map(Budget::Fuel),
            "deadline" => parse_duration(value)
                .map(|d| Budget::DeadlineMs(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
            "observations" => parse_size(value).map(Budget::ObservationBytes),
            other => Err(format!("unknown budget `{other}`")),
        }
        .map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_round_trip_through_text() {
        for (text, budget) in [
            ("memory=16MiB", Budget::Memory(16 << 20)),
            ("memory=1000B", Budget::Memory(1000)),
            ("fuel=1000000", Budget::Fuel(1_000_000)),
            ("deadline=1500ms", Budget::DeadlineMs(1500)),
            ("observations=64KiB", Budget::ObservationBytes(64 << 10)),
        ] {
            assert_eq!(text.parse::<Budget>().unwrap(), budget, "{text}");
            assert_eq!(budget.to_string(), text);
            let fact = Budget::from_fact(budget.fact_name(), budget.value()).unwrap();
            assert_eq!(fact, budget);
        }
        assert_eq!(
            "deadline=2s".parse::<Budget>().unwrap(),
            Budget::DeadlineMs(2000)
        );
        assert_eq!("fuel=1_000".parse::<Budget>().unwrap(), Budget::Fuel(1000));
    }

    #[test]
    fn malformed_budgets_name_the_problem() {
        for (input, problem) in [
            ("memory", "expected NAME=VALUE"),
            ("speed=3", "unknown budget `speed`"),
            ("memory=lots", "is not a size"),
            ("memory=99999999999GiB", "too large"),
            ("deadline=5", "is not a duration"),
            ("deadline=5w", "is not a duration"),
            ("fuel=-1", "not a whole number"),
        ] {
            let err = input.parse::<Budget>().unwrap_err().to_string();
            assert!(err.contains(problem), "{input:?}: {err}");
        }
        let err = Budget::from_fact("speed", 3).unwrap_err().to_string();
        assert!(err.contains("knows no budget `speed`"), "{err}");
    }
}

//! Budgets: limits a capability token states, e.g. `memory=16MiB`.
//!
//! A budget is a `budget(NAME, VALUE)` fact in any block of a token. The
//! effective budget is the smallest value any block states, so a delegation
//! block can only lower what its parent had: a child never gets a larger
//! budget than its parent. The host applies it on top of its own limits
//! ([`AgentLimits::narrowed`](crate::AgentLimits::narrowed)).
//!
//! | budget                | limits                                      | fact                                    |
//! |-----------------------|---------------------------------------------|-----------------------------------------|
//! | `memory=SIZE`         | bytes of all the agent's memories together  | `budget("memory", BYTES)`               |
//! | `fuel=N`              | fuel per task (needs a host with `--fuel`)  | `budget("fuel", N)`                     |
//! | `deadline=DURATION`   | wall-clock time per task                    | `budget("deadline_ms", MS)`             |
//! | `observations=SIZE`   | bytes of observations per task              | `budget("observation_bytes", BYTES)`    |
//! | `log=SIZE`            | log bytes over the agent's lifetime         | `budget("log_bytes", BYTES)`            |
//! | `log_rate=SIZE`       | log bytes per second                        | `budget("log_bytes_per_second", BYTES)` |
//! | `tasks=N`             | tasks it schedules over its lifetime        | `budget("tasks", N)`                    |
//! | `task_rate=N`         | tasks it schedules per second               | `budget("tasks_per_second", N)`         |
//! | `op_rate=N`           | operations per second                       | `budget("ops_per_second", N)`           |
//! | `children=N`          | live children at once                       | `budget("children", N)`                 |
//!
//! SIZE is bytes with an optional `KiB`, `MiB` or `GiB`; DURATION is a
//! whole number of `ms`, `s` or `m`. The first four are the sandbox's
//! ([`AgentLimits`](crate::AgentLimits)); the others are quotas the kernel
//! charges, deterministically, to the agent and every ancestor of it
//! ([`toka_kernel::Quotas`]).

use std::fmt;
use std::str::FromStr;

use crate::text::{Size, parse_count, parse_duration, parse_size};

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
    /// Log bytes over the agent's lifetime.
    LogBytes(u64),
    /// Log bytes per second.
    LogRate(u64),
    /// Tasks scheduled over the agent's lifetime.
    Tasks(u64),
    /// Tasks scheduled per second.
    TaskRate(u64),
    /// Operations per second.
    OpRate(u64),
    /// Live children at once.
    Children(u64),
}

/// Every kind of budget, with the value 0, in [`Budget`] order.
const KINDS: [Budget; 10] = [
    Budget::Memory(0),
    Budget::Fuel(0),
    Budget::DeadlineMs(0),
    Budget::ObservationBytes(0),
    Budget::LogBytes(0),
    Budget::LogRate(0),
    Budget::Tasks(0),
    Budget::TaskRate(0),
    Budget::OpRate(0),
    Budget::Children(0),
];

/// Why a string or a token fact is not a budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a budget: {problem} (budgets: memory=SIZE, fuel=N, deadline=DURATION, observations=SIZE, log=SIZE, log_rate=SIZE, tasks=N, task_rate=N, op_rate=N, children=N)"
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
            Budget::LogBytes(_) => "log_bytes",
            Budget::LogRate(_) => "log_bytes_per_second",
            Budget::Tasks(_) => "tasks",
            Budget::TaskRate(_) => "tasks_per_second",
            Budget::OpRate(_) => "ops_per_second",
            Budget::Children(_) => "children",
        }
    }

    /// The name people write before `=`.
    const fn text_name(self) -> &'static str {
        match self {
            Budget::Memory(_) => "memory",
            Budget::Fuel(_) => "fuel",
            Budget::DeadlineMs(_) => "deadline",
            Budget::ObservationBytes(_) => "observations",
            Budget::LogBytes(_) => "log",
            Budget::LogRate(_) => "log_rate",
            Budget::Tasks(_) => "tasks",
            Budget::TaskRate(_) => "task_rate",
            Budget::OpRate(_) => "op_rate",
            Budget::Children(_) => "children",
        }
    }

    /// The value of its fact in a token.
    #[must_use]
    pub const fn value(self) -> u64 {
        match self {
            Budget::Memory(v)
            | Budget::Fuel(v)
            | Budget::DeadlineMs(v)
            | Budget::ObservationBytes(v)
            | Budget::LogBytes(v)
            | Budget::LogRate(v)
            | Budget::Tasks(v)
            | Budget::TaskRate(v)
            | Budget::OpRate(v)
            | Budget::Children(v) => v,
        }
    }

    /// The budget a token fact `budget(name, value)` states.
    ///
    /// # Errors
    ///
    /// [`BudgetError`] for a name this host does not know: a token that
    /// states a limit the host cannot apply is refused, not half-obeyed.
    pub fn from_fact(name: &str, value: u64) -> Result<Budget, BudgetError> {
        KINDS
            .iter()
            .find(|kind| kind.fact_name() == name)
            .map(|kind| kind.with_value(value))
            .ok_or_else(|| BudgetError {
                input: format!("budget({name:?}, {value})"),
                problem: format!("this host knows no budget `{name}`"),
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
            Budget::LogBytes(_) => Budget::LogBytes(value),
            Budget::LogRate(_) => Budget::LogRate(value),
            Budget::Tasks(_) => Budget::Tasks(value),
            Budget::TaskRate(_) => Budget::TaskRate(value),
            Budget::OpRate(_) => Budget::OpRate(value),
            Budget::Children(_) => Budget::Children(value),
        }
    }
}

/// The budgets `held` narrowed by `requested`: for each kind either
/// states, the smaller value, in [`Budget`] order (what a token's budgets
/// become when a block with `requested` is appended).
#[must_use]
pub(crate) fn narrow(held: &[Budget], requested: &[Budget]) -> Vec<Budget> {
    let mut out: Vec<Budget> = Vec::new();
    for budget in held.iter().chain(requested) {
        match out.iter_mut().find(|b| b.fact_name() == budget.fact_name()) {
            Some(b) => *b = b.with_value(b.value().min(budget.value())),
            None => out.push(*budget),
        }
    }
    out.sort();
    out
}

/// The quotas among `budgets`, as the kernel records them for an agent.
#[must_use]
pub(crate) fn kernel_budgets(budgets: &[Budget]) -> toka_kernel::Budgets {
    let mut out = toka_kernel::Budgets::default();
    for budget in budgets {
        match *budget {
            Budget::LogBytes(v) => out.log_bytes_total = Some(v),
            Budget::LogRate(v) => out.log_bytes_per_second = Some(v),
            Budget::Tasks(v) => out.tasks_total = Some(v),
            Budget::TaskRate(v) => out.tasks_per_second = Some(v),
            Budget::OpRate(v) => out.ops_per_second = Some(v),
            Budget::Children(v) => out.children = Some(u32::try_from(v).unwrap_or(u32::MAX)),
            Budget::Memory(_)
            | Budget::Fuel(_)
            | Budget::DeadlineMs(_)
            | Budget::ObservationBytes(_) => {}
        }
    }
    out
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.text_name();
        match *self {
            Budget::Memory(bytes)
            | Budget::ObservationBytes(bytes)
            | Budget::LogBytes(bytes)
            | Budget::LogRate(bytes) => write!(f, "{name}={}", Size(bytes)),
            Budget::DeadlineMs(ms) => write!(f, "{name}={ms}ms"),
            Budget::Fuel(n)
            | Budget::Tasks(n)
            | Budget::TaskRate(n)
            | Budget::OpRate(n)
            | Budget::Children(n) => write!(f, "{name}={n}"),
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
        let name = name.trim();
        let kind = KINDS
            .iter()
            .find(|k| k.text_name() == name)
            .ok_or_else(|| fail(format!("unknown budget `{name}`")))?;
        match kind {
            Budget::Memory(_)
            | Budget::ObservationBytes(_)
            | Budget::LogBytes(_)
            | Budget::LogRate(_) => parse_size(value).map_err(|e| e.to_string()),
            Budget::DeadlineMs(_) => parse_duration(value)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .map_err(|e| e.to_string()),
            _ => parse_count(value),
        }
        .map(|v| kind.with_value(v))
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
            ("log=16MiB", Budget::LogBytes(16 << 20)),
            ("log_rate=1MiB", Budget::LogRate(1 << 20)),
            ("tasks=100", Budget::Tasks(100)),
            ("task_rate=5", Budget::TaskRate(5)),
            ("op_rate=1000", Budget::OpRate(1000)),
            ("children=10", Budget::Children(10)),
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

//! Rules: the versioned, recorded configuration a log is written under.
//!
//! A log written before rules existed has none; the kernel then applies the
//! rules of version 1 (no quotas, any printable or unprintable name, no
//! refusal journal) so that it replays exactly as it was written. A host that
//! opens such a log records [`Operation::AdoptRules`](crate::Operation::AdoptRules)
//! once; from that record on, the adopted rules apply. Every later change of
//! the rules is a record too, so a log always says under which rules each of
//! its records was applied.

use serde::{Deserialize, Serialize};

/// The newest rules version this kernel applies.
///
/// - 1: the rules of logs written before rules were recorded.
/// - 2: quotas per agent tree, live-agent limits, spawn depth, printable
///   names, journaled refusals.
/// - 3: a package's component leaves the state when the package is
///   upgraded or uninstalled and no agent that is not terminated runs it
///   ([`Event::ComponentRemoved`](crate::Event::ComponentRemoved)).
pub const RULES_VERSION: u32 = 3;

/// A rate over logical time with a burst allowance (a token bucket): up to
/// `burst` at once, refilled at `per_second`.
///
/// # Examples
///
/// ```
/// use toka_kernel::Rate;
///
/// let rate = Rate::new(100, 1_000);
/// assert!(rate.per_second == 100 && rate.burst == 1_000);
/// assert!(Rate::UNLIMITED.is_unlimited());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Refill per second of logical time.
    pub per_second: u64,
    /// The most that can be spent at once (the bucket's size).
    pub burst: u64,
}

impl Rate {
    /// A rate that never limits.
    pub const UNLIMITED: Rate = Rate {
        per_second: u64::MAX,
        burst: u64::MAX,
    };

    /// `per_second` with a burst of `burst`.
    #[must_use]
    pub const fn new(per_second: u64, burst: u64) -> Self {
        Self { per_second, burst }
    }

    /// Whether this rate never limits.
    #[must_use]
    pub const fn is_unlimited(self) -> bool {
        self.per_second == u64::MAX && self.burst == u64::MAX
    }

    /// The smaller of two rates, field by field.
    #[must_use]
    pub fn min(self, other: Rate) -> Rate {
        Rate {
            per_second: self.per_second.min(other.per_second),
            burst: self.burst.min(other.burst),
        }
    }
}

/// What one agent tree may spend: rates over logical time, and optional
/// lifetime totals.
///
/// Every agent is charged for what it does, and so is each of its
/// ancestors: a tree of agents can never spend more than its root may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    /// Bytes of log records written on the agent's behalf: its own
    /// operations and the host's records about it (task starts, outputs,
    /// failures, faults, denials, refusals).
    pub log_bytes: Rate,
    /// Operations the agent submits.
    pub ops: Rate,
    /// Tasks the agent schedules.
    pub tasks: Rate,
    /// Bytes of log records over the agent's lifetime (`None`: no total).
    pub log_bytes_total: Option<u64>,
    /// Tasks the agent may schedule over its lifetime (`None`: no total).
    pub tasks_total: Option<u64>,
}

impl Default for Quotas {
    /// Limits a normal agent never meets and a runaway meets within
    /// seconds: 4 MiB/s of log with a 64 MiB burst, 50 000 operations/s
    /// with a burst of 500 000, 500 tasks/s with a burst of 5 000; no
    /// lifetime totals.
    fn default() -> Self {
        Self {
            log_bytes: Rate::new(4 << 20, 64 << 20),
            ops: Rate::new(50_000, 500_000),
            tasks: Rate::new(500, 5_000),
            log_bytes_total: None,
            tasks_total: None,
        }
    }
}

impl Quotas {
    /// Quotas that never limit (for benchmarks and tests that measure
    /// something else).
    pub const UNLIMITED: Quotas = Quotas {
        log_bytes: Rate::UNLIMITED,
        ops: Rate::UNLIMITED,
        tasks: Rate::UNLIMITED,
        log_bytes_total: None,
        tasks_total: None,
    };

    /// These quotas narrowed by an agent's own budgets: each becomes the
    /// smaller of the two.
    #[must_use]
    pub fn narrowed(&self, budgets: &Budgets) -> Quotas {
        let min_rate = |rate: Rate, per_second: Option<u64>| match per_second {
            // A budget rate keeps the rule's burst-to-rate proportion.
            Some(limit) if limit < rate.per_second => {
                let seconds = rate.burst.checked_div(rate.per_second).unwrap_or(1).max(1);
                Rate::new(limit, limit.saturating_mul(seconds).min(rate.burst))
            }
            _ => rate,
        };
        let min_total = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Quotas {
            log_bytes: min_rate(self.log_bytes, budgets.log_bytes_per_second),
            ops: min_rate(self.ops, budgets.ops_per_second),
            tasks: min_rate(self.tasks, budgets.tasks_per_second),
            log_bytes_total: min_total(self.log_bytes_total, budgets.log_bytes_total),
            tasks_total: min_total(self.tasks_total, budgets.tasks_total),
        }
    }
}

/// An agent's own limits below the rules' (from its capability token's
/// budgets): `None` leaves the rule as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budgets {
    /// Log bytes per second.
    pub log_bytes_per_second: Option<u64>,
    /// Operations per second.
    pub ops_per_second: Option<u64>,
    /// Tasks scheduled per second.
    pub tasks_per_second: Option<u64>,
    /// Log bytes over the agent's lifetime.
    pub log_bytes_total: Option<u64>,
    /// Tasks scheduled over the agent's lifetime.
    pub tasks_total: Option<u64>,
    /// Live children at once.
    pub children: Option<u32>,
}

impl Budgets {
    /// Whether no budget is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Budgets::default()
    }
}

/// The rules a log is written under from the record that adopts them on.
///
/// # Examples
///
/// ```
/// use toka_kernel::{Rules, RULES_VERSION};
///
/// let rules = Rules::default();
/// assert_eq!(rules.version, RULES_VERSION);
/// assert_eq!(rules.max_children, 100_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Which rules: see [`RULES_VERSION`].
    pub version: u32,
    /// What each agent tree may spend.
    pub quotas: Quotas,
    /// Agents alive (not terminated) at once in the whole log. Default 1 000 000.
    pub max_live_agents: u64,
    /// Live children one agent may have at once. Default 100 000.
    pub max_children: u32,
    /// How deep agents may spawn agents (a root agent is at depth 0).
    /// Default 16; every operation is charged to the agent and each of its
    /// ancestors, so this also bounds that work.
    pub max_depth: u32,
}

impl Default for Rules {
    /// The current version with its documented defaults.
    fn default() -> Self {
        Self {
            version: RULES_VERSION,
            quotas: Quotas::default(),
            max_live_agents: 1_000_000,
            max_children: 100_000,
            max_depth: 16,
        }
    }
}

/// Which quota a [`KernelError::QuotaExceeded`](crate::KernelError::QuotaExceeded) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Quota {
    /// [`Quotas::log_bytes`].
    LogBytes,
    /// [`Quotas::ops`].
    Ops,
    /// [`Quotas::tasks`].
    Tasks,
    /// [`Quotas::log_bytes_total`].
    LogBytesTotal,
    /// [`Quotas::tasks_total`].
    TasksTotal,
    /// [`Rules::max_children`] or the agent's `children` budget.
    Children,
    /// [`Rules::max_live_agents`].
    LiveAgents,
    /// [`Rules::max_depth`].
    Depth,
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quota::LogBytes => "log bytes per second",
            Quota::Ops => "operations per second",
            Quota::Tasks => "tasks per second",
            Quota::LogBytesTotal => "log bytes in all",
            Quota::TasksTotal => "tasks in all",
            Quota::Children => "live children",
            Quota::LiveAgents => "live agents",
            Quota::Depth => "spawn depth",
        })
    }
}

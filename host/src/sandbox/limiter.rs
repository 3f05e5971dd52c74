//! Resource limits inside an instance: the store's memories, tables and
//! instances counted together against [`AgentLimits`], and the failures a
//! guest call ends with, in words.

use std::time::Duration;

use wasmtime::{ResourceLimiter, Trap};

use crate::sandbox::limits::AgentLimits;
use crate::sandbox::memory::{Charge, HostFailure};
use crate::text::Size;

/// A limit an instance ran into; the task fails with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Exceeded {
    /// The linear memories would grow past the limit (all together).
    #[error("out of memory: growing linear memory to {} passes the limit of {}", Size(*desired), Size(*limit))]
    Memory {
        /// The size of all memories together it asked for, in bytes.
        desired: u64,
        /// [`AgentLimits::memory_bytes`].
        limit: u64,
    },
    /// A table would grow past the limit.
    #[error("table limit: growing a table to {desired} elements passes the limit of {limit}")]
    Table {
        /// The elements asked for.
        desired: usize,
        /// [`AgentLimits::table_elements`].
        limit: usize,
    },
    /// The task ran longer than its deadline.
    #[error("deadline exceeded: the task ran longer than {}", seconds(*.0))]
    Deadline(Duration),
    /// The agent (or its tree) ran into a quota; the message names it.
    #[error("{0}")]
    Quota(String),
    /// The agent's token was revoked or expired while the task ran (the
    /// reason says how it was found): the task fails; not the agent's
    /// fault.
    #[error("the agent's token was withdrawn: {0}")]
    Revoked(String),
    /// Nobody waits for the task any more: its agent was terminated, the
    /// task was ended from outside, or the host is stopping.
    #[error("the task was abandoned: its agent was terminated or the host is stopping")]
    Abandoned,
}

/// Enforces [`AgentLimits`] on a store's memories, tables and instances:
/// all its memories together, and all its tables together.
#[derive(Debug)]
pub(crate) struct Limiter {
    memory_bytes: u64,
    table_elements: usize,
    instances: usize,
    /// Bytes of all the store's memories now.
    memory_used: u64,
    /// Elements of all the store's tables now.
    table_used: usize,
    /// The last growths approved, undone if the host then fails them.
    last_growth: (u64, usize),
    /// A growth within the limits that the host failed to provide (no
    /// memory, no address space, its budget for agents spent): the host's
    /// failure, not the agent's.
    host_failure: Option<HostFailure>,
    /// The host's budget the memories are charged to (none in unit tests).
    charge: Option<Charge>,
}

/// Linear memories (and tables) one store may have. Components built from
/// Rust have one or two; each reserves address space, so few are allowed.
const MEMORIES_PER_STORE: usize = 4;

impl Limiter {
    /// Bytes of all the store's memories now.
    pub(crate) fn memory_used(&self) -> u64 {
        self.memory_used
    }

    /// What the host failed to provide since the last call, if anything.
    pub(crate) fn take_host_failure(&mut self) -> Option<HostFailure> {
        self.host_failure.take()
    }

    /// The tree the instance's memories are charged to, if any.
    pub(crate) fn tree(&self) -> Option<toka_kernel::AgentId> {
        self.charge.as_ref().map(|charge| charge.tree)
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_used - current as u64 + desired as u64;
        if total > self.memory_bytes {
            // A trap, not a failed `memory.grow`: the task fails with a
            // reason that names the limit instead of a guest abort.
            return Err(wasmtime::Error::new(Exceeded::Memory {
                desired: total,
                limit: self.memory_bytes,
            }));
        }
        let growth = total.saturating_sub(self.memory_used);
        if let Some(charge) = &self.charge
            && let Err(refused) = charge.budget.reserve(charge.tree, growth)
        {
            // Within the agent's limit, past the host's: the grow fails
            // (the guest sees it fail) and the task with it, as the host's
            // condition.
            self.host_failure = Some(refused.into());
            return Ok(false);
        }
        self.last_growth.0 = growth;
        self.memory_used = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        let growth = std::mem::take(&mut self.last_growth.0);
        self.memory_used -= growth;
        if let Some(charge) = &self.charge {
            charge.budget.release(charge.tree, growth);
        }
        self.host_failure =
            Some(format!("the host could not grow a linear memory: {error:#}").into());
        // Let the instance see the failed grow; the task's outcome is then
        // the host's condition, not the agent's fault.
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.table_used - current + desired;
        if total > self.table_elements {
            return Err(wasmtime::Error::new(Exceeded::Table {
                desired: total,
                limit: self.table_elements,
            }));
        }
        self.last_growth.1 = total - self.table_used;
        self.table_used = total;
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_used -= std::mem::take(&mut self.last_growth.1);
        self.host_failure = Some(format!("the host could not grow a table: {error:#}").into());
        Ok(())
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        MEMORIES_PER_STORE
    }

    fn tables(&self) -> usize {
        self.instances
    }
}

/// Why a guest call failed, as the log records it: the limit it ran into,
/// or the trap, in words.
pub(crate) fn describe_failure(e: &wasmtime::Error, limits: &AgentLimits) -> String {
    if let Some(exceeded) = e.downcast_ref::<Exceeded>() {
        return exceeded.to_string();
    }
    if e.chain()
        .any(|cause| cause.to_string() == "total size of fields exceeds limit")
    {
        return format!(
            "HTTP headers too large: a header map the agent makes may hold {} (in memory)",
            Size(crate::sandbox::held::HEADER_MAP_BYTES as u64)
        );
    }
    if holds_too_many(e) {
        return format!(
            "too many host resources: an instance may hold {} at once (files, streams, pollables, HTTP requests and header maps)",
            limits.handles
        );
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        match trap {
            Trap::OutOfFuel => {
                return format!(
                    "out of fuel: the task used all {} units of its fuel",
                    limits.fuel_per_task.unwrap_or_default()
                );
            }
            Trap::StackOverflow => {
                return "call stack exhausted (recursion too deep)".to_owned();
            }
            _ => {}
        }
    }
    format!("trapped: {}", summary(e))
}

/// Whether `e` is the instance running into
/// [`AgentLimits::handles`]: the store's handles (wasmtime says so only
/// in words) or the host's table of resources.
fn holds_too_many(e: &wasmtime::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        ) || cause.to_string().contains("store handle limit exceeded")
    })
}

/// The first line of a wasmtime error (the trap, without the backtrace).
pub(crate) fn summary(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    let top = e.to_string();
    let text = if top == root || top.starts_with("error while executing") {
        root
    } else {
        format!("{top}: {root}")
    };
    text.lines().next().unwrap_or_default().to_owned()
}

/// A duration as whole seconds, or milliseconds under 10 s.
fn seconds(d: Duration) -> String {
    if d.as_secs() >= 10 || d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl Limiter {
    /// A limiter for an instance under `limits`, its memories charged to
    /// `charge` (none: to nothing but the agent's limit).
    pub(crate) fn new(limits: &AgentLimits, charge: Option<Charge>) -> Self {
        Limiter {
            memory_bytes: limits.memory_bytes,
            table_elements: limits.table_elements,
            instances: limits.instances,
            memory_used: 0,
            table_used: 0,
            last_growth: (0, 0),
            host_failure: None,
            charge,
        }
    }
}

impl Drop for Limiter {
    /// The instance's store is gone, and its memories with it.
    fn drop(&mut self) {
        if let Some(charge) = &self.charge {
            charge.budget.release(charge.tree, self.memory_used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_refuses_growth_past_the_limits_by_name() {
        let mut limiter = Limiter {
            memory_bytes: 1 << 20,
            table_elements: 10,
            instances: 2,
            memory_used: 0,
            table_used: 0,
            last_growth: (0, 0),
            host_failure: None,
            charge: None,
        };
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        let err = limiter.memory_growing(1 << 20, 2 << 20, None).unwrap_err();
        assert_eq!(
            describe_failure(&err, &AgentLimits::default()),
            "out of memory: growing linear memory to 2MiB passes the limit of 1MiB"
        );
        assert!(limiter.table_growing(0, 10, None).unwrap());
        let err = limiter.table_growing(10, 11, None).unwrap_err();
        assert!(err.to_string().contains("limit of 10"), "{err}");
        assert_eq!(limiter.instances(), 2);
    }

    #[test]
    fn the_limits_count_all_memories_and_tables_together() {
        // Regression: each memory could take the whole limit, so 32
        // memories held 32 times the memory an agent was granted.
        let mut limiter = Limiter::new(
            &AgentLimits {
                memory_bytes: 4 << 20,
                table_elements: 100,
                ..AgentLimits::default()
            },
            None,
        );
        assert!(limiter.memory_growing(0, 3 << 20, None).unwrap());
        // A second memory gets what the first left over, no more.
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        let err = limiter.memory_growing(0, 64 << 10, None).unwrap_err();
        assert!(
            err.to_string().contains("passes the limit of 4MiB"),
            "{err}"
        );
        assert!(limiter.table_growing(0, 60, None).unwrap());
        assert!(limiter.table_growing(0, 40, None).is_ok());
        assert!(limiter.table_growing(0, 1, None).is_err());
        assert_eq!(limiter.memories(), MEMORIES_PER_STORE);
    }

    #[test]
    fn growth_within_the_agents_limit_is_charged_to_the_hosts_budget() {
        let budget = crate::sandbox::memory::MemoryBudget::new(3 << 20, 3 << 20);
        let charge = || Charge {
            budget: std::sync::Arc::clone(&budget),
            tree: toka_kernel::EntityId::from_u128(7),
        };
        let mut first = Limiter::new(&AgentLimits::default(), Some(charge()));
        let mut second = Limiter::new(&AgentLimits::default(), Some(charge()));
        assert!(first.memory_growing(0, 2 << 20, None).unwrap());
        // Past the budget: the grow fails (no trap), the host's failure.
        assert!(!second.memory_growing(0, 2 << 20, None).unwrap());
        let failure = second.take_host_failure().unwrap();
        assert!(
            failure
                .reason
                .starts_with("the host's memory for agents is spent")
                && !failure.tree_share,
            "{failure:?}"
        );
        assert_eq!(second.memory_used(), 0);
        assert!(second.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!first.memory_growing(2 << 20, 3 << 20, None).unwrap());
        assert_eq!(budget.usage().in_use, 3 << 20);
        // A growth the host then fails to provide is given back.
        second
            .memory_grow_failed(wasmtime::Error::msg("no memory"))
            .unwrap();
        assert_eq!(budget.usage().in_use, 2 << 20);
        // An ended store gives back what its memories held.
        drop(first);
        assert_eq!(budget.usage().in_use, 0);
        drop(second);
        assert_eq!(budget.usage().in_use, 0);
    }

    #[test]
    fn a_growth_past_the_tree_s_share_says_so() {
        let budget = crate::sandbox::memory::MemoryBudget::new(8 << 20, 2 << 20);
        let charge = Charge {
            budget: std::sync::Arc::clone(&budget),
            tree: toka_kernel::EntityId::from_u128(7),
        };
        let mut limiter = Limiter::new(&AgentLimits::default(), Some(charge));
        assert_eq!(limiter.tree(), Some(toka_kernel::EntityId::from_u128(7)));
        assert!(limiter.memory_growing(0, 2 << 20, None).unwrap());
        assert!(!limiter.memory_growing(2 << 20, 3 << 20, None).unwrap());
        let failure = limiter.take_host_failure().unwrap();
        assert!(failure.tree_share, "{failure:?}");
        assert!(
            failure
                .reason
                .starts_with("the agent's tree holds its share"),
            "{failure:?}"
        );
    }

    #[test]
    fn traps_are_described_in_words() {
        let limits = AgentLimits {
            fuel_per_task: Some(500),
            ..AgentLimits::default()
        };
        let fuel = wasmtime::Error::new(Trap::OutOfFuel);
        assert_eq!(
            describe_failure(&fuel, &limits),
            "out of fuel: the task used all 500 units of its fuel"
        );
        let stack = wasmtime::Error::new(Trap::StackOverflow);
        assert!(describe_failure(&stack, &limits).contains("call stack exhausted"));
        let full = wasmtime::Error::new(wasmtime::component::ResourceTableError::Full);
        let handles = wasmtime::Error::msg("cannot lend resource: store handle limit exceeded");
        for e in [full, handles] {
            assert_eq!(
                describe_failure(&e, &limits),
                "too many host resources: an instance may hold 256 at once (files, streams, pollables, HTTP requests and header maps)"
            );
        }
        let other = wasmtime::Error::new(Trap::UnreachableCodeReached);
        assert!(describe_failure(&other, &limits).starts_with("trapped: "));
        assert_eq!(
            Exceeded::Deadline(Duration::from_millis(1500)).to_string(),
            "deadline exceeded: the task ran longer than 1500ms"
        );
        assert_eq!(
            Exceeded::Deadline(Duration::from_secs(30)).to_string(),
            "deadline exceeded: the task ran longer than 30s"
        );
    }
}

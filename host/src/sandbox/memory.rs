//! The host's memory for agents: the linear memories of every live
//! instance together, under one budget, shared between agent trees.
//!
//! Each agent's memories are bounded by
//! [`AgentLimits::memory_bytes`](crate::AgentLimits::memory_bytes), but the
//! instances alive at once are many
//! ([`HostConfig::max_instances`](crate::HostConfig::max_instances), and
//! the warm ones): 512 agents each growing to 64 MiB would ask for 32 GiB.
//! The budget ([`HostConfig::memory_budget`](crate::HostConfig::memory_budget))
//! bounds them together, and no tree of agents (an agent the operator
//! spawned, with all its descendants) holds more than its share of it, so
//! one tree cannot take the memory the others need. A growth past either
//! fails as the host's condition, not the agent's fault: the agent was
//! within its own limit.

use std::sync::{Arc, Mutex, MutexGuard};

use toka_kernel::AgentId;

use crate::sandbox::shares::{Over, Shares};
use crate::text::Size;

/// Bytes of linear memory all live instances hold together; see the
/// module docs.
#[derive(Debug)]
pub(crate) struct MemoryBudget(Mutex<Shares>);

/// A growth the budget refused, in words (the host's condition the task
/// fails with).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// All instances together would pass the budget.
    #[error(
        "the host's memory for agents is spent: growing by {} would pass its budget of {} ({} in use)",
        Size(*growth),
        Size(*budget),
        Size(*in_use)
    )]
    Host {
        /// The growth asked for.
        growth: u64,
        /// [`MemoryBudget`]'s total.
        budget: u64,
        /// Held by all instances.
        in_use: u64,
    },
    /// The agent's tree would pass its share.
    #[error(
        "the agent's tree holds its share of the host's memory for agents: growing by {} would pass the share of {} ({} in use by the tree)",
        Size(*growth),
        Size(*share),
        Size(*in_use)
    )]
    Tree {
        /// The growth asked for.
        growth: u64,
        /// The most one tree holds.
        share: u64,
        /// Held by the tree's instances.
        in_use: u64,
    },
}

/// What the host failed to provide an instance within the agent's own
/// limits: the task fails as the host's condition, and is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostFailure {
    /// What was missing, in words.
    pub(crate) reason: String,
    /// Only the agent's tree's share of the host's memory was spent, not
    /// the host's memory: what is missing is held by the tree's own
    /// instances, and no other tree's.
    pub(crate) tree_share: bool,
}

impl HostFailure {
    /// The same failure, its reason prefixed with what the host was doing.
    pub(crate) fn context(self, what: &str) -> Self {
        Self {
            reason: format!("{what}: {}", self.reason),
            ..self
        }
    }
}

impl From<String> for HostFailure {
    /// A failure of the host's (its memory, address space, disk).
    fn from(reason: String) -> Self {
        Self {
            reason,
            tree_share: false,
        }
    }
}

impl From<Refused> for HostFailure {
    fn from(refused: Refused) -> Self {
        Self {
            tree_share: matches!(refused, Refused::Tree { .. }),
            reason: refused.to_string(),
        }
    }
}

impl MemoryBudget {
    /// A budget of `total` bytes, at most `per_tree` of them (at most
    /// `total`) held by one tree.
    pub(crate) fn new(total: u64, per_tree: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget(Mutex::new(Shares::new(total, per_tree))))
    }

    fn shares(&self) -> MutexGuard<'_, Shares> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `bytes` more for an instance of `tree`.
    ///
    /// # Errors
    ///
    /// [`Refused`] when the host's budget or the tree's share would be
    /// passed; nothing is taken then.
    pub(crate) fn reserve(&self, tree: AgentId, bytes: u64) -> Result<(), Refused> {
        let mut shares = self.shares();
        shares.check(tree, bytes).map_err(|over| match over {
            Over::Total { total, held } => Refused::Host {
                growth: bytes,
                budget: total,
                in_use: held,
            },
            Over::Share { share, held } => Refused::Tree {
                growth: bytes,
                share,
                in_use: held,
            },
        })?;
        shares.add(tree, bytes);
        Ok(())
    }

    /// Gives back `bytes` an instance of `tree` held.
    pub(crate) fn release(&self, tree: AgentId, bytes: u64) {
        self.shares().sub(tree, bytes);
    }

    /// The budget, what all instances hold now, and the most they have
    /// held since the host opened.
    pub(crate) fn usage(&self) -> MemoryUsage {
        let figures = self.shares().figures();
        MemoryUsage {
            budget: figures.total,
            per_tree: figures.per_tree,
            in_use: figures.held,
            peak: figures.peak,
        }
    }
}

/// The host's memory for agents at one moment (see
/// [`Host::memory`](crate::Host::memory)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryUsage {
    /// Bytes all live instances' linear memories may hold together
    /// ([`HostConfig::memory_budget`](crate::HostConfig::memory_budget)).
    pub budget: u64,
    /// Bytes the instances of one agent tree may hold together.
    pub per_tree: u64,
    /// Bytes they hold now.
    pub in_use: u64,
    /// The most they have held at once since the host opened.
    pub peak: u64,
}

/// What an instance's memories are charged to: the host's budget, under
/// the agent's tree.
#[derive(Debug, Clone)]
pub(crate) struct Charge {
    pub(crate) budget: Arc<MemoryBudget>,
    pub(crate) tree: AgentId,
}

impl Charge {
    /// Takes `bytes` for something the host holds for the instance outside
    /// its linear memories (an HTTP exchange's bodies), until the
    /// [`Reserved`] is dropped.
    ///
    /// # Errors
    ///
    /// [`Refused`] when the host's budget or the tree's share would be
    /// passed; nothing is taken then.
    pub(crate) fn reserve(&self, bytes: u64) -> Result<Reserved, Refused> {
        let mut reserved = self.nothing();
        reserved.grow_to(bytes)?;
        Ok(reserved)
    }

    /// A holder of nothing yet, which may grow ([`Reserved::grow_to`]).
    pub(crate) fn nothing(&self) -> Reserved {
        Reserved {
            charge: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes taken from the budget for one holder, given back when dropped.
#[derive(Debug)]
pub(crate) struct Reserved {
    charge: Charge,
    bytes: u64,
}

impl Reserved {
    /// The bytes it holds.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes more, to hold `bytes` in all (nothing if it holds as much).
    ///
    /// # Errors
    ///
    /// [`Refused`] when the host's budget or the tree's share would be
    /// passed; nothing more is taken then.
    pub(crate) fn grow_to(&mut self, bytes: u64) -> Result<(), Refused> {
        if bytes > self.bytes {
            self.charge
                .budget
                .reserve(self.charge.tree, bytes - self.bytes)?;
            self.bytes = bytes;
        }
        Ok(())
    }

    /// Gives back all but `bytes` (nothing if it holds no more).
    pub(crate) fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.charge
                .budget
                .release(self.charge.tree, self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.charge.budget.release(self.charge.tree, self.bytes);
    }
}

/// Half the memory this process may use where it can be read (Linux: the
/// physical memory, or the cgroup's limit when lower, as in a container),
/// else 4 GiB: the default budget.
pub(crate) fn default_budget() -> u64 {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"));
    usable_memory(read("/proc/meminfo").as_deref(), cgroup.as_deref())
        .map_or(4 << 30, |bytes| bytes / 2)
}

/// The smaller of `MemTotal` in `meminfo` (`/proc/meminfo`) and the
/// cgroup's limit `cgroup` (`memory.max` of cgroup v2, `max` when none, or
/// `memory.limit_in_bytes` of v1, a huge number when none).
fn usable_memory(meminfo: Option<&str>, cgroup: Option<&str>) -> Option<u64> {
    let total = meminfo.and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line
            .trim_start_matches("MemTotal:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    });
    let limit = cgroup.and_then(|text| text.trim().parse::<u64>().ok());
    match (total, limit) {
        (Some(total), Some(limit)) => Some(total.min(limit)),
        (total, limit) => total.or(limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toka_kernel::EntityId;

    fn id(n: u8) -> AgentId {
        EntityId::from_u128(u128::from(n))
    }

    #[test]
    fn growth_is_taken_until_refused_and_given_back() {
        let budget = MemoryBudget::new(100, 60);
        budget.reserve(id(1), 60).unwrap();
        assert_eq!(
            budget.reserve(id(1), 1),
            Err(Refused::Tree {
                growth: 1,
                share: 60,
                in_use: 60
            })
        );
        // A refused growth takes nothing.
        assert_eq!(budget.usage().in_use, 60);
        budget.release(id(1), 60);
        budget.reserve(id(2), 60).unwrap();
        assert_eq!((budget.usage().in_use, budget.usage().peak), (60, 60));
    }

    #[test]
    fn a_reservation_is_held_until_dropped() {
        let budget = MemoryBudget::new(100, 60);
        let charge = Charge {
            budget: Arc::clone(&budget),
            tree: id(1),
        };
        let mut reserved = charge.reserve(50).unwrap();
        assert!(matches!(charge.reserve(11), Err(Refused::Tree { .. })));
        reserved.shrink_to(20);
        assert_eq!(budget.usage().in_use, 20);
        // Shrinking never grows it.
        reserved.shrink_to(30);
        assert_eq!(budget.usage().in_use, 20);
        drop(reserved);
        assert_eq!((budget.usage().in_use, budget.usage().peak), (0, 50));
    }

    #[test]
    fn a_refusal_names_the_budget_and_what_is_in_use() {
        let budget = MemoryBudget::new(24 << 20, 18 << 20);
        budget.reserve(id(1), 16 << 20).unwrap();
        let host = budget.reserve(id(2), 9 << 20).unwrap_err().to_string();
        assert_eq!(
            host,
            "the host's memory for agents is spent: growing by 9MiB would pass its budget of 24MiB (16MiB in use)"
        );
        let tree = budget.reserve(id(1), 4 << 20).unwrap_err().to_string();
        assert!(
            tree.contains("the share of 18MiB (16MiB in use by the tree)"),
            "{tree}"
        );
    }

    #[test]
    fn the_default_budget_is_half_the_machine_or_the_containers_limit() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:        18000000 kB\n";
        let total = 24_000_000 * 1024;
        assert_eq!(usable_memory(Some(meminfo), None), Some(total));
        // cgroup v2 without a limit, v1 without one (a huge number).
        assert_eq!(usable_memory(Some(meminfo), Some("max\n")), Some(total));
        assert_eq!(
            usable_memory(Some(meminfo), Some("9223372036854771712\n")),
            Some(total)
        );
        // A container limited to 2 GiB.
        assert_eq!(
            usable_memory(Some(meminfo), Some("2147483648\n")),
            Some(2 << 30)
        );
        assert_eq!(usable_memory(None, Some("2147483648")), Some(2 << 30));
        assert_eq!(usable_memory(Some("nonsense"), Some("max")), None);
        if cfg!(target_os = "linux") {
            // This machine: more than any that builds wasmtime lacks.
            assert!(default_budget() >= 128 << 20, "{}", default_budget());
        }
    }
}

//! Bytes held by trees of agents under one total, no tree past its share:
//! the accounting behind the memory budget (the live instances' linear
//! memories) and the state budget (what agents hold in the kernel's state).

use std::collections::HashMap;

use toka_kernel::AgentId;

/// What all trees hold, and each.
#[derive(Debug)]
pub(crate) struct Shares {
    /// The most all trees hold together.
    total: u64,
    /// The most one tree holds (at most `total`).
    per_tree: u64,
    /// Held by all trees now.
    all: u64,
    /// The most `all` has been.
    peak: u64,
    /// Held per tree (trees holding none are absent).
    by_tree: HashMap<AgentId, u64, toka_kernel::IdHash>,
}

/// The bound a growth would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// All trees together would pass `total`; they hold `held`.
    Total {
        /// The bound.
        total: u64,
        /// Held by all trees.
        held: u64,
    },
    /// The tree would pass its `share`; it holds `held`.
    Share {
        /// The most one tree holds.
        share: u64,
        /// Held by the tree.
        held: u64,
    },
}

impl Shares {
    /// `total` bytes, at most `per_tree` of them (at most `total`) held by
    /// one tree.
    pub(crate) fn new(total: u64, per_tree: u64) -> Shares {
        Shares {
            total,
            per_tree: per_tree.min(total),
            all: 0,
            peak: 0,
            by_tree: HashMap::default(),
        }
    }

    /// Whether `tree` may hold `growth` more bytes.
    ///
    /// # Errors
    ///
    /// [`Over`]: the bound it would pass, the tree's share first (when it
    /// is less than the total): a tree past its own share is refused for
    /// it even when the total is spent too, so what is done about it (its
    /// warm instances let go) is done to that tree, not to every other.
    pub(crate) fn check(&self, tree: AgentId, growth: u64) -> Result<(), Over> {
        let held = self.held_by(tree);
        if self.per_tree < self.total && held.saturating_add(growth) > self.per_tree {
            return Err(Over::Share {
                share: self.per_tree,
                held,
            });
        }
        // A share as large as the total is passed only with the total.
        self.check_total(growth)
    }

    /// Whether all trees together may hold `growth` more bytes.
    ///
    /// # Errors
    ///
    /// [`Over::Total`] when they would pass the total.
    pub(crate) fn check_total(&self, growth: u64) -> Result<(), Over> {
        if self.all.saturating_add(growth) > self.total {
            return Err(Over::Total {
                total: self.total,
                held: self.all,
            });
        }
        Ok(())
    }

    /// Counts `bytes` more held by `tree`, whether or not they fit.
    pub(crate) fn add(&mut self, tree: AgentId, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.all = self.all.saturating_add(bytes);
        self.peak = self.peak.max(self.all);
        let held = self.by_tree.entry(tree).or_default();
        *held = held.saturating_add(bytes);
    }

    /// Counts `bytes` fewer held by `tree`.
    pub(crate) fn sub(&mut self, tree: AgentId, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.all = self.all.saturating_sub(bytes);
        if let Some(held) = self.by_tree.get_mut(&tree) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.by_tree.remove(&tree);
            }
        }
    }

    /// What `tree` holds.
    pub(crate) fn held_by(&self, tree: AgentId) -> u64 {
        self.by_tree.get(&tree).copied().unwrap_or(0)
    }

    /// The total, one tree's share, what all trees hold now and the most
    /// they have held at once.
    pub(crate) fn figures(&self) -> Figures {
        Figures {
            total: self.total,
            per_tree: self.per_tree,
            held: self.all,
            peak: self.peak,
        }
    }

    /// The trees holding anything.
    #[cfg(test)]
    pub(crate) fn trees(&self) -> usize {
        self.by_tree.len()
    }
}

/// [`Shares`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Figures {
    /// The most all trees hold together.
    pub(crate) total: u64,
    /// The most one tree holds.
    pub(crate) per_tree: u64,
    /// Held by all trees now.
    pub(crate) held: u64,
    /// The most they have held at once.
    pub(crate) peak: u64,
}

#[cfg(test)]
mod tests {
    use toka_kernel::{AgentId, EntityId};

    use crate::sandbox::shares::{Over, Shares};

    fn id(n: u8) -> AgentId {
        EntityId::from_u128(u128::from(n))
    }

    #[test]
    fn all_trees_are_bounded_together_and_each_by_its_share() {
        let mut shares = Shares::new(100, 60);
        let (a, b, c) = (id(1), id(2), id(3));
        shares.add(a, 60);
        // `a` is at its share; the total still has room for others.
        assert_eq!(
            shares.check(a, 1),
            Err(Over::Share {
                share: 60,
                held: 60
            })
        );
        shares.add(b, 30);
        assert_eq!(
            shares.check(c, 11),
            Err(Over::Total {
                total: 100,
                held: 90
            })
        );
        // Past both: its share is named (what is done about it is done
        // to that tree).
        assert_eq!(
            shares.check(b, 31),
            Err(Over::Share {
                share: 60,
                held: 30
            })
        );
        shares.check(c, 10).unwrap();
        shares.add(c, 10);
        // Giving back makes room again, for anyone.
        shares.sub(a, 60);
        shares.check(c, 50).unwrap();
        shares.add(c, 50);
        let figures = shares.figures();
        assert_eq!((figures.held, figures.peak, figures.total), (90, 100, 100));
        shares.sub(b, 30);
        shares.sub(c, 60);
        assert_eq!(shares.figures().held, 0);
        assert_eq!(shares.trees(), 0, "trees holding none are forgotten");
    }

    #[test]
    fn a_share_is_never_more_than_the_total() {
        assert_eq!(Shares::new(1_000, 5_000).figures().per_tree, 1_000);
    }
}

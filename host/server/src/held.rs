//! Things a server holds for its clients at once — event streams, long
//! polls, uploads — under two bounds: all holders together, and one
//! holder (a client address, a token family), so that one cannot take
//! every place.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// At most `max` held in all, `per_holder` by one holder.
#[derive(Debug)]
pub(crate) struct Bounded<K: Hash + Eq> {
    max: usize,
    per_holder: usize,
    held: Mutex<Held<K>>,
}

#[derive(Debug)]
struct Held<K> {
    total: usize,
    /// Holders holding at least one (none with zero).
    by: HashMap<K, usize>,
}

/// Which bound a new one would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// All holders together hold this many, the most.
    All(usize),
    /// The holder holds this many, the most.
    Holder(usize),
}

/// One thing held; given back when dropped.
#[derive(Debug)]
pub(crate) struct Place<K: Hash + Eq + Copy> {
    bounded: Arc<Bounded<K>>,
    holder: K,
}

impl<K: Hash + Eq + Copy> Bounded<K> {
    /// At most `max` (at least 1) in all, `per_holder` (at least 1, at most
    /// `max`) by one holder.
    pub(crate) fn new(max: usize, per_holder: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            max,
            per_holder: per_holder.clamp(1, max),
            held: Mutex::new(Held {
                total: 0,
                by: HashMap::new(),
            }),
        })
    }

    fn held(&self) -> MutexGuard<'_, Held<K>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for `holder`, unless a bound would be passed.
    pub(crate) fn take(self: &Arc<Self>, holder: K) -> Result<Place<K>, Over> {
        let mut held = self.held();
        if held.total >= self.max {
            return Err(Over::All(self.max));
        }
        let count = held.by.entry(holder).or_default();
        if *count >= self.per_holder {
            return Err(Over::Holder(self.per_holder));
        }
        *count += 1;
        held.total += 1;
        Ok(Place {
            bounded: Arc::clone(self),
            holder,
        })
    }

    /// How many are held now.
    pub(crate) fn count(&self) -> usize {
        self.held().total
    }
}

impl<K: Hash + Eq + Copy> Drop for Place<K> {
    fn drop(&mut self) {
        let mut held = self.bounded.held();
        held.total -= 1;
        if let Some(count) = held.by.get_mut(&self.holder) {
            *count -= 1;
            if *count == 0 {
                held.by.remove(&self.holder);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Bounded, Over};

    #[test]
    fn places_are_held_to_both_bounds_and_given_back() {
        let bounded = Bounded::new(3, 2);
        let first = bounded.take('a').unwrap();
        let _second = bounded.take('a').unwrap();
        assert_eq!(bounded.take('a').unwrap_err(), Over::Holder(2));
        let _third = bounded.take('b').unwrap();
        assert_eq!(bounded.take('b').unwrap_err(), Over::All(3));
        assert_eq!(bounded.take('c').unwrap_err(), Over::All(3));
        assert_eq!(bounded.count(), 3);
        drop(first);
        assert_eq!(bounded.count(), 2);
        let _again = bounded.take('a').unwrap();
        // Holders with nothing held are not kept.
        drop(_third);
        assert_eq!(bounded.held().by.len(), 1);
    }
}

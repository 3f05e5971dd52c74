//! A bounded number of places in something the host has few of, shared
//! between agent trees: running instances (an actor holds a [`Place`]
//! while its instance runs a task) and open outbound connections (a
//! request holds one from before it resolves its host until its response
//! arrives).
//!
//! Places are shared fairly between *trees* of agents (an agent the
//! operator spawned, with all its descendants: the unit the quotas
//! charge): no tree holds more than its share
//! ([`HostConfig::places_per_tree`](crate::HostConfig::places_per_tree),
//! by default three quarters of the places), so an agent that spawns many
//! children running long tasks (or holding requests to a slow server open)
//! cannot take every place from the other trees; and when a place frees,
//! the trees with waiting holders take turns (round-robin across trees,
//! first come, first served within one).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use toka_kernel::AgentId;
use tokio::sync::oneshot;

/// Places for running instances; see the module docs.
pub(crate) struct Places {
    /// The most places one tree holds at once.
    per_tree: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Places nobody holds.
    free: usize,
    /// Places held, per tree (trees holding none are absent).
    held: HashMap<AgentId, usize, toka_kernel::IdHash>,
    /// Actors waiting for a place, per tree, oldest first.
    waiting: HashMap<AgentId, VecDeque<oneshot::Sender<Place>>, toka_kernel::IdHash>,
    /// The trees in `waiting`, in the order they take their turns.
    turns: VecDeque<AgentId>,
    /// The host is stopping: no more places are handed out.
    closed: bool,
}

/// One place, held by a running instance; given back when dropped.
pub(crate) struct Place {
    /// `None` once given back.
    places: Option<Arc<Places>>,
    tree: AgentId,
}

impl Place {
    /// The tree it is held for.
    pub(crate) fn tree(&self) -> AgentId {
        self.tree
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(places) = self.places.take() {
            let mut state = places.state();
            state.give_back(self.tree);
            state.hand_out(&places);
        }
    }
}

impl Places {
    /// `total` places (at least 1), at most `per_tree` of them (at least
    /// 1) held by one tree at once.
    pub(crate) fn new(total: usize, per_tree: usize) -> Arc<Places> {
        Arc::new(Places {
            per_tree: per_tree.clamp(1, total.max(1)),
            state: Mutex::new(State {
                free: total.max(1),
                ..State::default()
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for an actor of `tree`: at once when one is free and the
    /// tree holds less than its share, else when its turn comes.
    ///
    /// # Errors
    ///
    /// When the host is stopping.
    pub(crate) async fn take(self: &Arc<Self>, tree: AgentId) -> Result<Place, String> {
        let stopping = || "the host is shutting down".to_owned();
        let turn = {
            let mut guard = self.state();
            let state = &mut *guard;
            if state.closed {
                return Err(stopping());
            }
            // Waiters of a tree below its share are served as soon as a
            // place frees: a free place now means this tree may take it
            // unless it is at its share.
            if state.free > 0 && state.held(tree) < self.per_tree {
                return Ok(state.grant(self, tree));
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.waiting.entry(tree).or_default();
            if queue.is_empty() {
                state.turns.push_back(tree);
            }
            queue.push_back(tx);
            rx
        };
        // Dropped unanswered only when the host closes.
        turn.await.map_err(|_| stopping())
    }

    /// Whether an actor waits for a place: then a running one gives its
    /// place back after each task.
    pub(crate) fn contended(&self) -> bool {
        !self.state().turns.is_empty()
    }

    /// Whether no place is held.
    pub(crate) fn idle(&self) -> bool {
        self.state().held.is_empty()
    }

    /// Hands out no more places, and wakes every waiter with an error.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.waiting.clear();
        state.turns.clear();
    }
}

impl State {
    fn held(&self, tree: AgentId) -> usize {
        self.held.get(&tree).copied().unwrap_or(0)
    }

    /// Takes a free place for `tree`.
    fn grant(&mut self, places: &Arc<Places>, tree: AgentId) -> Place {
        self.free -= 1;
        *self.held.entry(tree).or_default() += 1;
        Place {
            places: Some(Arc::clone(places)),
            tree,
        }
    }

    fn give_back(&mut self, tree: AgentId) {
        self.free += 1;
        if let Some(held) = self.held.get_mut(&tree) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(&tree);
            }
        }
    }

    /// Hands free places to waiting actors, one tree after another,
    /// skipping trees at their share.
    fn hand_out(&mut self, places: &Arc<Places>) {
        // Trees passed over in a row because they are at their share:
        // once every waiting tree is, the free places stay free.
        let mut passed = 0;
        while self.free > 0 && passed < self.turns.len() {
            let Some(tree) = self.turns.pop_front() else {
                break;
            };
            if self.held(tree) >= places.per_tree {
                self.turns.push_back(tree);
                passed += 1;
                continue;
            }
            let Some(queue) = self.waiting.get_mut(&tree) else {
                continue;
            };
            let waiter = queue.pop_front();
            let more = !queue.is_empty();
            if more {
                self.turns.push_back(tree);
            } else {
                self.waiting.remove(&tree);
            }
            let Some(waiter) = waiter else { continue };
            if let Err(mut place) = waiter.send(self.grant(places, tree)) {
                // The waiter is gone (its actor was dropped): the place
                // goes back without locking again.
                place.places = None;
                self.give_back(tree);
            }
            passed = 0;
        }
    }
}

/// The tree `agent` belongs to: its ancestor the operator spawned (itself
/// when the operator spawned it), read from the kernel's state.
pub(crate) fn tree_of(state: &toka_kernel::WorldState, agent: AgentId) -> AgentId {
    let mut tree = agent;
    // A spawn depth is bounded by the rules; the bound here only guards
    // against a cycle no valid state holds.
    for _ in 0..=u8::MAX {
        match state.agent(tree) {
            Some(record) if record.parent != toka_kernel::EntityId::SYSTEM => {
                tree = record.parent;
            }
            _ => break,
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use toka_kernel::{AgentId, EntityId};

    use crate::sandbox::places::Places;

    fn id(n: u8) -> AgentId {
        EntityId::from_u128(u128::from(n))
    }

    #[tokio::test]
    async fn a_tree_at_its_share_waits_while_another_tree_takes_a_free_place() {
        let places = Places::new(4, 3);
        let (a, b) = (id(1), id(2));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(places.take(a).await.unwrap());
        }
        // The fourth place is free, but `a` is at its share.
        let waiting = tokio::spawn({
            let places = Arc::clone(&places);
            async move { places.take(a).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a tree got more than its share");
        assert!(places.contended());
        let other = places.take(b).await.unwrap();
        // A place `a` gives back goes to `a`'s waiter.
        drop(held.pop());
        waiting.await.unwrap().unwrap();
        drop(other);
        assert!(!places.contended());
    }

    #[tokio::test]
    async fn freed_places_go_to_the_waiting_trees_in_turn() {
        let places = Places::new(2, 2);
        let (a, b) = (id(1), id(2));
        let first = places.take(a).await.unwrap();
        let second = places.take(a).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        // Three actors of `a` queue first, then one of `b`.
        for (tree, name) in [(a, "a1"), (a, "a2"), (a, "a3"), (b, "b1")] {
            let (places, order) = (Arc::clone(&places), Arc::clone(&order));
            waiters.push(tokio::spawn(async move {
                let place = places.take(tree).await.unwrap();
                order.lock().unwrap().push(name);
                place
            }));
            tokio::task::yield_now().await;
        }
        drop(first);
        let got = waiters.remove(0).await.unwrap();
        drop(second);
        let got_b = waiters.pop().unwrap().await.unwrap();
        // `b` came after three of `a`, but took the second freed place.
        assert_eq!(*order.lock().unwrap(), ["a1", "b1"]);
        drop((got, got_b));
        for waiter in waiters {
            drop(waiter.await.unwrap());
        }
        assert_eq!(*order.lock().unwrap(), ["a1", "b1", "a2", "a3"]);
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_does_not_keep_a_place() {
        let places = Places::new(1, 1);
        let (a, b) = (id(1), id(2));
        let held = places.take(a).await.unwrap();
        let gone = tokio::spawn({
            let places = Arc::clone(&places);
            async move { places.take(b).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        drop(held);
        // The place the aborted waiter was handed came back.
        let again = places.take(b).await.unwrap();
        drop(again);
        places.close();
        assert!(places.take(a).await.is_err());
    }
}

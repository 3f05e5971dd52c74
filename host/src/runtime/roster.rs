//! The roster of running actors: which agents have one now.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use toka_kernel::AgentId;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// The agents whose actor is running; an actor ends when its agent has no
/// work, and whoever waits for the host to be idle hears of it.
#[derive(Default)]
pub(crate) struct Roster {
    running: Mutex<BTreeSet<AgentId>>,
    ended: Notify,
}

impl Roster {
    fn running(&self) -> MutexGuard<'_, BTreeSet<AgentId>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `agent`'s actor running; false if it was already.
    pub(crate) fn start(&self, agent: AgentId) -> bool {
        self.running().insert(agent)
    }

    /// Marks `agent`'s actor ended and wakes [`Roster::ended`]'s waiters.
    pub(crate) fn end(&self, agent: AgentId) {
        self.running().remove(&agent);
        self.ended.notify_waiters();
    }

    /// How many actors are running.
    pub(crate) fn len(&self) -> usize {
        self.running().len()
    }

    /// Whether no actor is running.
    pub(crate) fn is_empty(&self) -> bool {
        self.running().is_empty()
    }

    /// Resolves when an actor ends after this future was enabled (see
    /// [`tokio::sync::futures::Notified::enable`]).
    pub(crate) fn ended(&self) -> Notified<'_> {
        self.ended.notified()
    }
}

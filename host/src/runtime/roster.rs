//! The roster of running actors: which agents have one now.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard};

use toka_kernel::AgentId;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// The agents whose actor is running, each with its nudge (see
/// [`Roster::nudge`]); an actor ends when its agent has no work, and
/// whoever waits for the host to be idle hears of it.
#[derive(Default)]
pub(crate) struct Roster {
    running: Mutex<BTreeMap<AgentId, Arc<Notify>>>,
    ended: Notify,
}

impl Roster {
    fn running(&self) -> MutexGuard<'_, BTreeMap<AgentId, Arc<Notify>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `agent`'s actor running; false if it was already.
    pub(crate) fn start(&self, agent: AgentId) -> bool {
        match self.running().entry(agent) {
            Entry::Vacant(vacant) => {
                vacant.insert(Arc::default());
                true
            }
            Entry::Occupied(_) => false,
        }
    }

    /// Tells `agent`'s running actor, if it has one, that something it
    /// waits on may have changed (its agent was terminated, say): one
    /// waiting on [`Roster::nudges`] wakes, and one not waiting yet wakes
    /// as soon as it waits (the nudge is kept until then).
    pub(crate) fn nudge(&self, agent: AgentId) {
        if let Some(nudges) = self.running().get(&agent) {
            nudges.notify_one();
        }
    }

    /// What nudges `agent`'s actor, which is running (see
    /// [`Roster::nudge`]; for an agent without one, nothing does).
    pub(crate) fn nudges(&self, agent: AgentId) -> Arc<Notify> {
        self.running().get(&agent).cloned().unwrap_or_default()
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

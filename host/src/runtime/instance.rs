//! Live instances of agents' components, and the few kept warm for agents
//! that just finished their work.
//!
//! An instance runs a task only while it holds one of the host's places
//! for instances ([`HostConfig::max_instances`](crate::HostConfig::max_instances)).
//! When an agent's queue empties (or it gives its place back to take
//! turns), its actor keeps the instance in [`Warm`] without a place, up to
//! [`HostConfig::warm_instances`](crate::HostConfig::warm_instances), the
//! least recently kept dropped first: an agent that gets tasks often is not
//! instantiated for each one, and a warm instance never keeps a place from
//! an agent with work. At most `max_instances + warm_instances` instances
//! live at once. An instance whose memories hold more than
//! [`WARM_MEMORY_BYTES`], holds more than [`WARM_RESOURCES`] resources
//! in the host, or has an HTTP exchange out (a request, a response not
//! dropped: what they hold is charged to the host's memory for agents),
//! is not kept: an agent cannot park a large memory on the host by growing
//! it (or hoarding resources) and going idle.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use toka_kernel::{AgentId, Digest};
use wasmtime::Store;

use crate::runtime::guest::AgentCtx;
use crate::sandbox::bindings::Agent;
use crate::sandbox::dirs::Sandbox;

/// The most memory (all its memories together) an instance may hold to be
/// kept warm.
pub(crate) const WARM_MEMORY_BYTES: u64 = 8 << 20;

/// The most resources (in the host's memory: streams, HTTP header maps,
/// requests) an instance may hold to be kept warm; one idle after `init`
/// holds a few (its standard streams).
pub(crate) const WARM_RESOURCES: usize = 32;

/// A live instance of an agent's component, holding one of the host's
/// places for instances.
pub(crate) struct Instance {
    pub(crate) store: Store<AgentCtx>,
    pub(crate) agent: Agent,
    pub(crate) sandbox: Sandbox,
    /// The agent's component and token when it was made: an upgrade or a
    /// new token makes a new instance.
    pub(crate) made_for: (Digest, Digest),
    /// Its place while it runs tasks; none while it is kept warm.
    pub(crate) place: Option<crate::sandbox::places::Place>,
}

/// Instances kept for agents without work, at most `cap`, the least
/// recently kept dropped first.
pub(crate) struct Warm {
    cap: usize,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// Counts every keep: the age of a kept instance.
    clock: u64,
    by_agent: HashMap<AgentId, (u64, Instance), toka_kernel::IdHash>,
    by_age: BTreeMap<u64, AgentId>,
}

impl Warm {
    /// Keeps up to `cap` instances (0: none).
    pub(crate) fn new(cap: usize) -> Self {
        Warm {
            cap,
            kept: Mutex::default(),
        }
    }

    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `agent`'s instance (giving its place back), dropping the least
    /// recently kept one when full; an instance holding more than
    /// [`WARM_MEMORY_BYTES`] or [`WARM_RESOURCES`], or an HTTP exchange, is
    /// dropped instead.
    pub(crate) fn keep(&self, agent: AgentId, mut instance: Instance) {
        instance.place = None;
        if self.cap == 0
            || instance.store.data().limiter.memory_used() > WARM_MEMORY_BYTES
            || instance.store.data_mut().resources_held() > WARM_RESOURCES
            || instance.store.data().exchanges_held()
        {
            return;
        }
        let dropped = {
            let mut kept = self.kept();
            kept.clock += 1;
            let age = kept.clock;
            let mut dropped = Vec::new();
            if let Some((old, instance)) = kept.by_agent.insert(agent, (age, instance)) {
                kept.by_age.remove(&old);
                dropped.push(instance);
            }
            kept.by_age.insert(age, agent);
            while kept.by_agent.len() > self.cap {
                dropped.extend(kept.pop_oldest());
            }
            dropped
        };
        // Dropped outside the lock: ending a store is not free.
        drop(dropped);
    }

    /// The instance kept for `agent`, if any.
    pub(crate) fn take(&self, agent: AgentId) -> Option<Instance> {
        let mut kept = self.kept();
        let (age, instance) = kept.by_agent.remove(&agent)?;
        kept.by_age.remove(&age);
        Some(instance)
    }

    /// Drops every kept instance: what the host failed to provide
    /// (memory, address space) may be what they hold.
    pub(crate) fn clear(&self) {
        let kept = std::mem::take(&mut *self.kept());
        // Dropped outside the lock: ending a store is not free.
        drop(kept);
    }

    /// Drops the kept instances of agents of `tree`: only its share of the
    /// host's memory was spent, and they hold part of it.
    pub(crate) fn clear_tree(&self, tree: AgentId) {
        let dropped: Vec<Instance> = {
            let mut kept = self.kept();
            let of_tree: Vec<(AgentId, u64)> = kept
                .by_agent
                .iter()
                .filter(|(_, (_, i))| i.store.data().limiter.tree() == Some(tree))
                .map(|(agent, (age, _))| (*agent, *age))
                .collect();
            of_tree
                .into_iter()
                .filter_map(|(agent, age)| {
                    kept.by_age.remove(&age);
                    kept.by_agent.remove(&agent).map(|(_, instance)| instance)
                })
                .collect()
        };
        // Dropped outside the lock: ending a store is not free.
        drop(dropped);
    }

    /// How many instances are kept.
    pub(crate) fn len(&self) -> usize {
        self.kept().by_agent.len()
    }
}

impl Kept {
    /// Removes the least recently kept instance.
    fn pop_oldest(&mut self) -> Option<Instance> {
        let (_, agent) = self.by_age.pop_first()?;
        self.by_agent.remove(&agent).map(|(_, instance)| instance)
    }
}

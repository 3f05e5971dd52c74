//! What the host's parts share: the sequencer, the compiled components,
//! the bus, the actors; and routing each committed batch to the agents it
//! gives work.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use toka_kernel::{Digest, Event};

use crate::log::committed::Committed;
use crate::runtime::bus::Bus;
use crate::runtime::guest::AgentCtx;
use crate::runtime::sequencer::Sequencer;
use crate::sandbox::bindings::AgentPre;
use crate::sandbox::components::Components;
use crate::sandbox::limits::AgentLimits;
use crate::store::event_store::EventStore;
use crate::text::clip;

/// What actors share with the host.
pub(crate) struct HostInner {
    pub(crate) sequencer: Sequencer,
    /// What agents' sandboxes ask of the runtime (the sequencer, the
    /// secrets, the data dir's id).
    pub(crate) outbound: Arc<crate::runtime::outbound::Outbound>,
    pub(crate) components: Components<AgentCtx>,
    pub(crate) agent_limits: AgentLimits,
    /// Places for running instances ([`HostConfig::max_instances`](crate::HostConfig::max_instances),
    /// [`HostConfig::places_per_tree`](crate::HostConfig::places_per_tree)).
    pub(crate) places: Arc<crate::runtime::places::Places>,
    /// Instances kept for agents that just ran out of work.
    pub(crate) warm: crate::runtime::instance::Warm,
    /// Set by [`Host::drain`](crate::Host::drain): start no more tasks.
    pub(crate) draining: AtomicBool,
    /// Callers waiting for tasks to end.
    pub(crate) waiters: crate::runtime::tasks::Waiters,
    /// Operator tokens presented to the host, verified.
    pub(crate) operator_tokens: crate::capability::presented::PresentedTokens,
    /// See [`HostConfig::protected_paths`](crate::HostConfig::protected_paths).
    pub(crate) protected_paths: Vec<std::path::PathBuf>,
    /// Whether agents run ([`HostConfig::start_agents`](crate::HostConfig::start_agents), [`Host::start_agents`](crate::Host::start_agents)).
    pub(crate) agents_started: AtomicBool,
    /// Keys the guests' per-task randomness (derived from the root key).
    pub(crate) entropy: [u8; 32],
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) bus: Arc<Bus>,
    /// Agents whose actor is running (it ends when the agent has no work).
    pub(crate) actors: crate::runtime::roster::Roster,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl HostInner {
    /// Publishes a durable batch and hands scheduled tasks to their agents.
    pub(crate) fn route(self: &Arc<Self>, batch: Arc<Committed>) {
        for record in &batch.records {
            for event in &record.events {
                match event {
                    Event::TaskScheduled { agent, .. }
                    | Event::AgentTerminated { agent, .. }
                    | Event::AgentResumed { agent } => {
                        self.wake(*agent);
                    }
                    _ => {}
                }
            }
        }
        self.waiters.committed(&batch.records);
        self.bus.send(batch);
    }

    /// The compiled component, compiling it from the stored blob if needed.
    pub(crate) async fn prepared(&self, digest: Digest) -> Result<AgentPre<AgentCtx>, String> {
        if let Some(pre) = self.components.cached(&digest) {
            return Ok(pre);
        }
        let bytes = self
            .store
            .blob(&digest)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("component {} is missing from the store", digest.short()))?;
        let components = self.components.clone();
        tokio::task::spawn_blocking(move || components.prepare(digest, &bytes))
            .await
            .map_err(|e| format!("compiling the component panicked: {e}"))?
            .map_err(|e| e.to_string())
    }

    /// Cuts a reason to the kernel's limit (on a character boundary).
    pub(crate) fn clip_reason(&self, reason: &str) -> String {
        let max = self.sequencer.read(|k| k.limits().max_reason as usize);
        clip(reason, max)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_compile_serves_everyone_asking_for_a_component_meanwhile() {
        let components =
            crate::sandbox::components::Components::<crate::runtime::guest::AgentCtx>::new(
                false,
                None,
                crate::runtime::guest::add_imports,
            )
            .unwrap();
        let bytes = std::fs::read(toka_agents::path("test-bench").unwrap()).unwrap();
        let digest = toka_kernel::Digest::of(&bytes);
        std::thread::scope(|s| {
            let asking: Vec<_> = (0..8)
                .map(|_| s.spawn(|| components.prepare(digest, &bytes).is_ok()))
                .collect();
            for asked in asking {
                assert!(asked.join().unwrap());
            }
        });
        assert_eq!(
            components.compiles(),
            (1, 0),
            "one compile, none left running"
        );
        // A component that does not compile is refused to each caller.
        let bad = toka_kernel::Digest::of(b"not wasm");
        assert!(components.prepare(bad, b"not wasm").is_err());
        assert!(components.cached(&bad).is_none());
    }
}

//! Access to internals for the benchmarks in `host/benches`. Not an API.

use std::sync::Arc;

use toka_kernel::{
    AgentId, AgentSpec, Command, ComponentSpec, Digest, EntityId, Event, Kernel, Limits, Operation,
    Timestamp,
};

use crate::capability::gate::Gate;
use crate::capability::policy::Check;
use crate::capability::token::Token;
use crate::store::memory::MemoryStore;

/// The data dir at `path` (created with default kernel limits when it
/// does not exist) and its root key: the store and key a benchmark opens
/// a host on.
///
/// # Panics
///
/// When the data dir cannot be opened or created: the benchmark cannot
/// run.
#[must_use]
pub fn data_dir(path: &std::path::Path) -> (crate::RedbStore, crate::RootKey) {
    let data = crate::DataDir::new(path);
    let root = data.root_key(None, true).expect("a root key");
    let store = data
        .open_or_create(&Limits::default(), &root)
        .expect("a data dir");
    (store, root)
}

/// A host configuration with quotas no benchmark meets, charged as usual
/// (an unlimited quota would skip the arithmetic a benchmark must
/// include).
#[must_use]
pub fn quota_free_config() -> crate::HostConfig {
    let huge = toka_kernel::Rate::new(u64::MAX >> 1, u64::MAX >> 1);
    let mut config = crate::HostConfig::new();
    config.rules(toka_kernel::Rules {
        quotas: toka_kernel::Quotas {
            log_bytes: huge,
            ops: huge,
            tasks: huge,
            log_bytes_total: None,
            tasks_total: None,
        },
        ..toka_kernel::Rules::default()
    });
    config
}

/// The live gate, with one agent bound to one token, authorizing
/// `observe` through its caches.
pub struct GateProbe {
    gate: Gate,
    kernel: Kernel,
    agent: AgentId,
    token: Digest,
}

impl std::fmt::Debug for GateProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateProbe")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl GateProbe {
    /// A gate for tokens rooted in `root` that knows `token`, and a world
    /// where one agent holds it.
    ///
    /// # Panics
    ///
    /// If the setup commands are refused (they are not).
    #[must_use]
    pub fn new(root: biscuit_auth::PublicKey, token: Token) -> Self {
        let limits = Limits::default();
        let store: Arc<dyn crate::EventStore> = Arc::new(MemoryStore::new(limits.clone()));
        let mut gate = Gate::new(
            root,
            Arc::new(crate::store::event_store::StoreTokens(store)),
            &limits,
        );
        let digest = token.digest();
        gate.admit(token);
        let mut kernel = Kernel::new(limits);
        let component = Digest::of(b"probe");
        let ops = [
            Operation::InstallComponent {
                component: Box::new(ComponentSpec {
                    digest: component,
                    name: "probe".into(),
                    size: 1,
                }),
            },
            Operation::SpawnAgent {
                spec: Box::new(AgentSpec {
                    component,
                    name: "probe".into(),
                    token: digest,
                    rights: Vec::new(),
                }),
            },
        ];
        let mut agent = EntityId::SYSTEM;
        for op in ops {
            let applied = kernel
                .apply(Command::system(EntityId::SYSTEM, Timestamp(1), op))
                .expect("setup");
            if let Some(Event::AgentSpawned { agent: a, .. }) = applied.events.first() {
                agent = *a;
            }
        }
        Self {
            gate,
            kernel,
            agent,
            token: digest,
        }
    }

    /// Authorizes the agent's `observe` at `time`, as the sequencer does.
    ///
    /// # Errors
    ///
    /// The gate's reason when it denies.
    pub fn authorize_observe(&mut self, time: Timestamp) -> Result<(), crate::Denied> {
        let check = Check::literal("observe", None);
        self.gate
            .authorize(self.token, self.agent, &check, time, self.kernel.state())
    }
}

/// The encoding of a snapshot of `kernel` at its head, as the host writes it.
#[must_use]
pub fn snapshot_bytes(kernel: &Kernel) -> Vec<u8> {
    crate::store::snapshot::encode(kernel)
}

/// Has `agent` (the `test-bench` component) emit `ops` 32-byte observations,
/// in tasks under the kernel's operations-per-task limit, and returns how
/// long the host took until idle.
///
/// # Panics
///
/// If scheduling or running fails, or a task failed (the figure would be
/// wrong).
pub async fn time_observations(
    host: &crate::Host,
    agent: AgentId,
    ops: u64,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    let mut left = ops;
    while left > 0 {
        let n = left.min(50_000);
        host.schedule(agent, &format!("observe {n}"))
            .await
            .expect("schedule a bench task");
        left -= n;
    }
    host.run_until_idle().await.expect("run the bench tasks");
    let elapsed = start.elapsed();
    let failed = host.state(|s| s.agent(agent).map_or(0, |a| a.failed)).await;
    assert_eq!(failed, 0, "a bench task failed; the figures would be wrong");
    elapsed
}

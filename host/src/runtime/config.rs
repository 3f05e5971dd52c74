//! How a [`Host`](crate::Host) runs: its configuration, as a builder with
//! documented defaults (the pattern of wasmtime's `Config`).

use std::path::PathBuf;
use std::sync::Arc;

use toka_kernel::Rules;

use crate::runtime::clock::{Clock, SystemClock};
use crate::sandbox::limits::AgentLimits;
use crate::store::secrets::SecretStore;

/// The free disk space a host keeps for its own records unless configured
/// otherwise (see [`HostConfig::disk_reserve`]).
const DEFAULT_DISK_RESERVE: u64 = 256 << 20;

/// How a [`Host`](crate::Host) runs.
///
/// # Examples
///
/// ```
/// use toka_host::{AgentLimits, HostConfig};
///
/// let mut config = HostConfig::new();
/// config.snapshot_every(1_000).max_instances(64);
/// ```
#[derive(Clone)]
pub struct HostConfig {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) agent_limits: AgentLimits,
    pub(crate) snapshot_every: u64,
    pub(crate) rules: Option<Rules>,
    pub(crate) start_agents: bool,
    pub(crate) max_instances: usize,
    pub(crate) places_per_tree: Option<usize>,
    pub(crate) outbound_connections: usize,
    pub(crate) compiled_code: usize,
    pub(crate) warm_instances: usize,
    pub(crate) memory_budget: Option<u64>,
    pub(crate) state_budget: Option<u64>,
    pub(crate) disk_reserve: u64,
    pub(crate) pooling: bool,
    pub(crate) protected_paths: Vec<PathBuf>,
    pub(crate) secrets: Arc<SecretStore>,
    #[cfg(feature = "bench")]
    pub(crate) skip_gate: bool,
}

impl Default for HostConfig {
    /// The defaults, as documented on each setter.
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            agent_limits: AgentLimits::default(),
            snapshot_every: 10_000,
            rules: None,
            start_agents: true,
            max_instances: 512,
            places_per_tree: None,
            outbound_connections: 256,
            compiled_code: crate::sandbox::components::DEFAULT_KEPT,
            warm_instances: 64,
            memory_budget: None,
            state_budget: None,
            disk_reserve: DEFAULT_DISK_RESERVE,
            pooling: true,
            protected_paths: Vec::new(),
            secrets: Arc::new(SecretStore::in_memory()),
            #[cfg(feature = "bench")]
            skip_gate: false,
        }
    }
}

impl HostConfig {
    /// The defaults.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Where logical time comes from. Default: the system clock.
    pub fn clock(&mut self, clock: Arc<dyn Clock>) -> &mut Self {
        self.clock = clock;
        self
    }

    /// The secrets the host injects into agents' outbound requests (see
    /// [`SecretStore`]). Default: none (an empty store in memory).
    pub fn secrets(&mut self, secrets: Arc<SecretStore>) -> &mut Self {
        self.secrets = secrets;
        self
    }

    /// Per-agent sandbox limits. Default: [`AgentLimits::default`].
    pub fn agent_limits(&mut self, limits: AgentLimits) -> &mut Self {
        self.agent_limits = limits;
        self
    }

    /// Write a snapshot of the state with the batch that passes this many
    /// records since the last one, so recovery replays only the tail. 0
    /// turns snapshots off. Default 10 000. A state larger than 1 MiB is
    /// snapshotted no more often than once per its own size of log bytes,
    /// so the snapshots' cost follows what is logged, not the number of
    /// agents.
    pub fn snapshot_every(&mut self, records: u64) -> &mut Self {
        self.snapshot_every = records;
        self
    }

    /// The kernel rules (quotas, live-agent limits) to record and apply
    /// from the host's start on. Default: keep the rules the log has, and
    /// record [`Rules::default`] in a log that has none or older ones.
    pub fn rules(&mut self, rules: Rules) -> &mut Self {
        self.rules = Some(rules);
        self
    }

    /// Whether opening the host starts the agents that have work. Off for
    /// commands that only write a record (a revocation, a snapshot), so no
    /// agent runs before it, and for callers that subscribe first and then
    /// call [`Host::start_agents`](crate::Host::start_agents), so they see
    /// every event of the tasks re-run after a crash. Default on.
    pub fn start_agents(&mut self, start: bool) -> &mut Self {
        self.start_agents = start;
        self
    }

    /// Agents that hold a live instance at once; the others wait for a
    /// place. An agent without work holds none. Default 512 (at least 1).
    pub fn max_instances(&mut self, instances: usize) -> &mut Self {
        self.max_instances = instances.max(1);
        self
    }

    /// The most places (of [`max_instances`](Self::max_instances)) the
    /// agents of one tree — an agent the operator spawned and all its
    /// descendants — hold at once, so a tree that spawns many agents
    /// running long tasks cannot keep every place from the others; when a
    /// place frees, the trees with waiting agents take turns. Default
    /// three quarters of the places (at least 1; at most all of them).
    pub fn places_per_tree(&mut self, places: usize) -> &mut Self {
        self.places_per_tree = Some(places.max(1));
        self
    }

    /// The most outbound HTTP connections agents have open at once, all
    /// together; one tree of agents holds at most three quarters of them
    /// (at least one), so agents holding requests to a slow server open
    /// cannot keep every other tree's requests waiting; when one frees, the
    /// trees with waiting requests take turns. A request waiting for a
    /// place waits within its own timeout. Default 256 (at least 1).
    pub fn outbound_connections(&mut self, connections: usize) -> &mut Self {
        self.outbound_connections = connections.max(1);
        self
    }

    /// The most bytes of compiled code the host keeps for installed
    /// components (the last one compiled is kept anyway): past it, the
    /// least recently used components' code is let go, and compiled again
    /// from their stored bytes when an agent of theirs next starts. A
    /// client installing component after component cannot grow the
    /// host's memory with each. Instances keep the code they run. Default
    /// 512 MiB.
    pub fn compiled_code(&mut self, bytes: usize) -> &mut Self {
        self.compiled_code = bytes;
        self
    }

    /// [`places_per_tree`](Self::places_per_tree) as configured or by
    /// default.
    pub(crate) fn tree_share(&self) -> usize {
        self.places_per_tree
            .unwrap_or(self.max_instances - self.max_instances / 4)
            .clamp(1, self.max_instances.max(1))
    }

    /// Instances kept for agents that just ran out of work, so an agent
    /// that gets tasks often is not instantiated for each one; the least
    /// recently kept goes first. A kept instance holds no place, so at
    /// most [`max_instances`](Self::max_instances) plus these live at
    /// once; one whose memories hold more than 8 MiB is not kept.
    /// Default 64 (0: none).
    pub fn warm_instances(&mut self, instances: usize) -> &mut Self {
        self.warm_instances = instances;
        self
    }

    /// Bytes of linear memory all live instances (running and warm) may
    /// hold together, with the bodies their outgoing HTTP exchanges hold
    /// (see [`AgentLimits::http_response_bytes`](crate::AgentLimits::http_response_bytes))
    /// and what their header maps, paths, authorities and unsent bodies
    /// hold.
    /// An agent's growth within its own
    /// [`memory_bytes`](crate::AgentLimits::memory_bytes) that would pass
    /// the budget fails, as the host's condition (recorded, retried, not
    /// counted against the agent); so does one that would take its tree
    /// past the tree's share of the budget: the same share as of the
    /// places ([`places_per_tree`](Self::places_per_tree) of
    /// [`max_instances`](Self::max_instances), by default three
    /// quarters), but at least what one agent may hold (its memory limit,
    /// one HTTP exchange, and 64 KiB for a request it is making). Default:
    /// half the machine's physical memory, or of the cgroup's memory limit
    /// when that is lower (a container); 4 GiB where neither can be read;
    /// at least what one agent may hold.
    pub fn memory_budget(&mut self, bytes: u64) -> &mut Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// The memory budget as configured or by default, and one tree's
    /// share of it.
    pub(crate) fn memory_shares(&self) -> (u64, u64) {
        // What one agent may hold: its memories and one HTTP exchange,
        // with the request as it was made.
        let limits = &self.agent_limits;
        let limit = limits
            .memory_bytes
            .saturating_add(limits.http_request_bytes)
            .saturating_add(limits.http_response_bytes)
            .saturating_add(crate::sandbox::held::REQUEST_BYTES);
        let total = self
            .memory_budget
            .unwrap_or_else(|| crate::sandbox::memory::default_budget().max(limit));
        (total, self.share_of(total, limit))
    }

    /// Bytes all agents may hold in the kernel's state together: their
    /// state keys and values, 1 KiB for each agent record (a record and
    /// its state stay after the agent terminates, and the host keeps them
    /// in memory), 256 B plus the description for each task not yet
    /// ended (counted to the tree of the agent that scheduled it; the
    /// operators' tasks together count as one more tree), and each running
    /// task's journal (counted to the tree of the agent running it: 32 B an
    /// operation, 128 B more with the key for a state write or an operation
    /// that creates a task or an agent, and for the task's first write of
    /// a key the key again and the value it replaced, 128 B for each HTTP
    /// request; in a cluster's cell, a task for another cell's agent
    /// until it is handed to JetStream). An agent's operation that would
    /// pass the budget (a state write, spawn or scheduling, an HTTP
    /// request, or any operation of a task for its journal's entry)
    /// is refused (`limit-exceeded`, naming the budget), and so is one that
    /// would take its tree past the tree's share: the same share as of the
    /// places
    /// ([`places_per_tree`](Self::places_per_tree) of
    /// [`max_instances`](Self::max_instances), by default three quarters),
    /// but at least one agent's state limit and record. Deleting keys and
    /// ending tasks give bytes back; a delete of a key the agent holds is
    /// refused only once its tree is past its share. An API client (an operator token) is
    /// refused a root agent past the budget and a task past the budget or
    /// the share the operators' tasks hold together
    /// ([`HostError::StateBudget`](crate::HostError::StateBudget)); the
    /// host's own caller is never refused. In a cluster's cell, the tasks
    /// other cells' agents send count together as one more tree; one that
    /// would pass the budget or that share is taken in as refused
    /// ([`CellMail::deliver`](crate::CellMail::deliver)). The budget counts
    /// each byte once; the host holds the state
    /// up to three times (the kernel's, the readers' committed view, the
    /// snapshot replica's). Default: an eighth of the machine's physical
    /// memory, or of the cgroup's memory limit when that is lower; 1 GiB
    /// where neither can be read.
    pub fn state_budget(&mut self, bytes: u64) -> &mut Self {
        self.state_budget = Some(bytes);
        self
    }

    /// Free disk space the host keeps for its own records. Every
    /// operation an agent makes is a record on disk, and on a full disk the
    /// host cannot commit and stops; so while the data dir's file system
    /// has less than this free, agents' operations are refused
    /// (`limit-exceeded`, journaled like any refusal), the host stays up
    /// for reads and the operator's commands, and agents are served again
    /// once the space is back (checked after commits, every 200 ms at
    /// most); an API client's install whose bytes would take the free
    /// space below it is refused too ([`HostError::DiskReserve`](crate::HostError::DiskReserve)).
    /// 0 turns it off. Default: 256 MiB. A store not on a disk (in
    /// memory) is never short of it.
    pub fn disk_reserve(&mut self, bytes: u64) -> &mut Self {
        self.disk_reserve = bytes;
        self
    }

    /// The state budget as configured or by default, and one tree's share
    /// of it, for agents whose state the kernel bounds to
    /// `max_state_bytes` each.
    pub(crate) fn state_shares(&self, max_state_bytes: u64) -> (u64, u64) {
        let least = max_state_bytes.saturating_add(crate::runtime::sequencer::AGENT_RECORD_BYTES);
        let total = self
            .state_budget
            .unwrap_or_else(|| crate::runtime::sequencer::default_state_budget().max(least));
        (total, self.share_of(total, least))
    }

    /// The share of `total` one tree holds: the same as of the places, at
    /// least `least`, at most `total`.
    fn share_of(&self, total: u64, least: u64) -> u64 {
        let places = self.max_instances.max(1) as u128;
        let share = u128::from(total) * self.tree_share() as u128 / places;
        u64::try_from(share)
            .unwrap_or(u64::MAX)
            .max(least)
            .min(total)
    }

    /// Whether instances come from wasmtime's pooling allocator: slots
    /// for [`max_instances`](Self::max_instances) plus
    /// [`warm_instances`](Self::warm_instances) instances (memories,
    /// tables, stacks) reserved when the host opens and reused, instead of
    /// mapped and unmapped for each instance. Each linear memory slot
    /// reserves 4 GiB of address space plus guard pages (wasmtime's default
    /// on 64-bit hosts, so guests run without bounds checks); only the
    /// pages an agent touches use memory. Default on.
    pub fn pooling(&mut self, pooling: bool) -> &mut Self {
        self.pooling = pooling;
        self
    }

    /// Paths no `fs.*` right may cover or reach into: the data dir, the
    /// root key, files of secrets. Checked when a token is minted or
    /// presented, and again when a directory is opened for an agent
    /// (symlinks resolved). Default: none (the CLI names its data dir and
    /// root key).
    pub fn protected_paths(&mut self, paths: Vec<PathBuf>) -> &mut Self {
        self.protected_paths = paths;
        self
    }

    /// Skips the capability gate for agents' operations: only for
    /// measuring what the gate costs (`cargo bench --bench gate`). Exists
    /// only with the `bench` feature, which the `toka` CLI never enables.
    #[cfg(feature = "bench")]
    #[doc(hidden)]
    pub fn skip_gate_for_benchmarks(&mut self, skip: bool) -> &mut Self {
        self.skip_gate = skip;
        self
    }
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("agent_limits", &self.agent_limits)
            .field("snapshot_every", &self.snapshot_every)
            .field("rules", &self.rules)
            .field("start_agents", &self.start_agents)
            .field("max_instances", &self.max_instances)
            .field("places_per_tree", &self.tree_share())
            .field("warm_instances", &self.warm_instances)
            .field("disk_reserve", &self.disk_reserve)
            .field("pooling", &self.pooling)
            .field("protected_paths", &self.protected_paths)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::HostConfig;
    use crate::AgentLimits;

    #[test]
    fn a_tree_s_share_of_memory_holds_one_agent_and_its_http_exchange() {
        let mut config = HostConfig::new();
        config.memory_budget(40 << 20).agent_limits(AgentLimits {
            memory_bytes: 16 << 20,
            http_request_bytes: 8 << 20,
            http_response_bytes: 8 << 20,
            ..AgentLimits::default()
        });
        // Three quarters of 40 MiB is 30 MiB, less than one agent may hold
        // (with a request's headers, path, authority and unsent body).
        assert_eq!(config.memory_shares(), (40 << 20, (32 << 20) + (64 << 10)));
        // Never more than the budget.
        config.memory_budget(24 << 20);
        assert_eq!(config.memory_shares(), (24 << 20, 24 << 20));
        // Three quarters, when that is more.
        config.memory_budget(64 << 20);
        assert_eq!(config.memory_shares(), (64 << 20, 48 << 20));
    }
}

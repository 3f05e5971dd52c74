//! Events: what applying a command did.

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, Digest, EntityId, TaskId};
use crate::operation::{AgentSpec, ComponentSpec, Denial, TaskSpec};
use crate::package::{PackageRecord, Publisher};
use crate::rules::{Budgets, Quota, Rules};

/// One observable effect of an applied command.
///
/// Events are a pure function of the world state and the command, so the log
/// stores commands and anyone can recompute the events by replaying it. Like
/// [`Operation`](crate::Operation), variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A task was queued for an agent.
    TaskScheduled {
        /// The new task.
        task: TaskId,
        /// The agent that will run it.
        agent: AgentId,
        /// Who scheduled it.
        by: EntityId,
        /// What to do.
        spec: TaskSpec,
    },
    /// An agent started a task.
    TaskStarted {
        /// The task.
        task: TaskId,
        /// The agent running it.
        agent: AgentId,
    },
    /// A task finished.
    TaskCompleted {
        /// The task.
        task: TaskId,
        /// The agent that ran it.
        agent: AgentId,
        /// Its output.
        #[serde(with = "crate::serde_bytes")]
        output: Vec<u8>,
    },
    /// A task failed (it was running, or queued for an agent that stopped).
    TaskFailed {
        /// The task.
        task: TaskId,
        /// The agent it belonged to.
        agent: AgentId,
        /// Why.
        reason: String,
    },
    /// A new agent exists.
    AgentSpawned {
        /// The new agent.
        agent: AgentId,
        /// Its parent ([`EntityId::SYSTEM`] for agents the operator started).
        parent: EntityId,
        /// What it runs and which token it holds.
        spec: AgentSpec,
    },
    /// An agent was terminated.
    AgentTerminated {
        /// The agent.
        agent: AgentId,
        /// Who terminated it.
        by: EntityId,
        /// Why.
        reason: String,
    },
    /// An agent faulted.
    AgentFaulted {
        /// The agent.
        agent: AgentId,
        /// What happened.
        reason: String,
        /// Faults in a row, counting this one (a completed task resets it).
        consecutive: u32,
    },
    /// An agent emitted an observation.
    ObservationEmitted {
        /// The agent.
        agent: AgentId,
        /// The optional topic.
        topic: Option<String>,
        /// The data.
        #[serde(with = "crate::serde_bytes")]
        data: Vec<u8>,
    },
    /// An agent put a key in its state.
    StatePut {
        /// The agent.
        agent: AgentId,
        /// The key.
        key: String,
        /// The new value.
        #[serde(with = "crate::serde_bytes")]
        value: Vec<u8>,
    },
    /// An agent deleted a key from its state.
    StateDeleted {
        /// The agent.
        agent: AgentId,
        /// The key.
        key: String,
        /// Whether the key existed.
        existed: bool,
    },
    /// A revocation id was revoked.
    TokenRevoked {
        /// The revocation id.
        #[serde(with = "crate::serde_bytes")]
        revocation_id: Vec<u8>,
    },
    /// The capability gate denied an agent's operation.
    CapabilityDenied {
        /// The agent.
        agent: AgentId,
        /// What was denied and why.
        denial: Denial,
    },
    /// A component was installed.
    ComponentInstalled {
        /// The component.
        component: ComponentSpec,
    },
    /// An extension handler applied an operation.
    ExtensionApplied {
        /// The family.
        family: String,
        /// The family's opcode.
        opcode: u32,
        /// What the handler reported.
        #[serde(with = "crate::serde_bytes")]
        output: Vec<u8>,
    },
    /// An agent was quarantined: it runs no tasks until resumed.
    AgentQuarantined {
        /// The agent.
        agent: AgentId,
        /// Why.
        reason: String,
    },
    /// A quarantined agent was resumed.
    AgentResumed {
        /// The agent.
        agent: AgentId,
    },
    /// Rules apply from here on.
    RulesAdopted {
        /// The rules.
        rules: Rules,
    },
    /// An agent's own budgets were set.
    BudgetsSet {
        /// The agent.
        agent: AgentId,
        /// Its budgets.
        budgets: Budgets,
    },
    /// Refused operations of a running task were recorded.
    RefusalsRecorded {
        /// The task.
        task: TaskId,
        /// Its agent.
        agent: AgentId,
        /// The first refused index.
        first: u32,
        /// How many operations were refused.
        count: u32,
    },
    /// An agent ran into a quota (it counts as a fault).
    QuotaExceeded {
        /// The agent.
        agent: AgentId,
        /// The quota.
        quota: Quota,
        /// What happened.
        reason: String,
        /// Faults in a row, counting this one.
        consecutive: u32,
    },
    /// The host failed while running an agent; not the agent's fault.
    HostCondition {
        /// The agent.
        agent: AgentId,
        /// What happened.
        reason: String,
    },
    /// A publisher was added to the trust store.
    PublisherTrusted {
        /// The publisher and its key.
        publisher: Publisher,
    },
    /// A publisher was removed from the trust store; its packages' tokens
    /// are revoked in the same record.
    PublisherDistrusted {
        /// Its trust-store name.
        name: String,
        /// Its packages, whose tokens are revoked.
        packages: Vec<String>,
    },
    /// A package was installed or upgraded.
    PackageInstalled {
        /// What was installed.
        package: Box<PackageRecord>,
        /// The version it replaced, for an upgrade.
        previous: Option<String>,
    },
    /// A package was uninstalled.
    PackageUninstalled {
        /// Its name.
        name: String,
    },
    /// An upgrade rebound an agent to its package's new component and
    /// install token; its state is unchanged.
    AgentRebound {
        /// The agent.
        agent: AgentId,
        /// The component it runs from now on.
        component: Digest,
        /// The token it is bound to from now on.
        token: Digest,
    },
    /// A running task's HTTP request was journaled; it leaves the host once
    /// this record is durable.
    HttpRequested {
        /// The agent.
        agent: AgentId,
        /// The task.
        task: TaskId,
        /// The request's index in the task.
        index: u32,
        /// The method.
        method: String,
        /// The URL.
        url: String,
    },
    /// What came back for a journaled request.
    HttpResponded {
        /// The agent.
        agent: AgentId,
        /// The task.
        task: TaskId,
        /// The request's index in the task.
        index: u32,
        /// The response's status, if there was a response.
        status: Option<u16>,
        /// The digest of the response body (a blob beside the log), if
        /// there was a response.
        body: Option<Digest>,
        /// The response body's length in bytes.
        body_len: u64,
        /// Why there was no response, if there was none.
        failure: Option<String>,
        /// The secret the host injected into the request, by name.
        secret: Option<String>,
    },
    /// A task was scheduled for an agent of another cell: it waits in the
    /// outbox until the host hands it to JetStream.
    TaskSent {
        /// The new task (its id names the target cell).
        task: TaskId,
        /// The agent that will run it, in another cell.
        agent: AgentId,
        /// Who scheduled it.
        by: EntityId,
        /// What to do.
        spec: TaskSpec,
    },
    /// The outbox's tasks up to a record were handed to JetStream.
    TasksSent {
        /// The sequence number of the last record whose task was sent.
        through: u64,
        /// How many tasks left the outbox.
        count: u32,
    },
    /// A task another cell sent could not be queued here; it is consumed
    /// (never delivered again).
    TaskRefused {
        /// The task.
        task: TaskId,
        /// The agent it was for.
        agent: AgentId,
        /// Who scheduled it, in the cell that sent it.
        by: EntityId,
        /// The cell that sent it.
        from_cell: u16,
        /// Why it was refused.
        reason: String,
    },
    /// A change of the configuration the configuration cell sent could not
    /// be applied here (e.g. the id was revoked already); it is consumed.
    ChangeRefused {
        /// The configuration cell's record that made the change.
        from_seq: u64,
        /// Why.
        reason: String,
    },
    /// A component left the state: the operator removed it, or (rules 3
    /// and on) the package that shipped it was upgraded or uninstalled and
    /// no agent that is not terminated runs it. It can no longer be
    /// spawned; its bytes go with the next archive of the log.
    ComponentRemoved {
        /// The component's digest.
        component: Digest,
        /// The name it was installed under.
        name: String,
    },
    /// A terminated agent none of whose descendants is alive was
    /// forgotten ([`Operation::ForgetTerminated`](crate::Operation::ForgetTerminated)):
    /// its record left the state.
    AgentForgotten {
        /// The agent.
        agent: AgentId,
        /// The root of its tree (the agent the operator spawned it under;
        /// itself for a root agent).
        root: AgentId,
        /// The bytes of its state's keys and values that left with it.
        state_bytes: u64,
    },
}

impl Event {
    /// The entity the event created, if it did: a spawned agent, a
    /// scheduled (or sent) task. What a receipt names.
    #[must_use]
    pub const fn created(&self) -> Option<EntityId> {
        match self {
            Event::AgentSpawned { agent, .. } => Some(*agent),
            Event::TaskScheduled { task, .. } | Event::TaskSent { task, .. } => Some(*task),
            _ => None,
        }
    }

    /// The snake_case name of the event, as `toka events --json` prints it.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Event::TaskScheduled { .. } => "task_scheduled",
            Event::TaskStarted { .. } => "task_started",
            Event::TaskCompleted { .. } => "task_completed",
            Event::TaskFailed { .. } => "task_failed",
            Event::AgentSpawned { .. } => "agent_spawned",
            Event::AgentTerminated { .. } => "agent_terminated",
            Event::AgentFaulted { .. } => "agent_faulted",
            Event::ObservationEmitted { .. } => "observation_emitted",
            Event::StatePut { .. } => "state_put",
            Event::StateDeleted { .. } => "state_deleted",
            Event::TokenRevoked { .. } => "token_revoked",
            Event::CapabilityDenied { .. } => "capability_denied",
            Event::ComponentInstalled { .. } => "component_installed",
            Event::ExtensionApplied { .. } => "extension_applied",
            Event::AgentQuarantined { .. } => "agent_quarantined",
            Event::AgentResumed { .. } => "agent_resumed",
            Event::RulesAdopted { .. } => "rules_adopted",
            Event::BudgetsSet { .. } => "budgets_set",
            Event::RefusalsRecorded { .. } => "refusals_recorded",
            Event::QuotaExceeded { .. } => "quota_exceeded",
            Event::HostCondition { .. } => "host_condition",
            Event::PublisherTrusted { .. } => "publisher_trusted",
            Event::PublisherDistrusted { .. } => "publisher_distrusted",
            Event::PackageInstalled { .. } => "package_installed",
            Event::PackageUninstalled { .. } => "package_uninstalled",
            Event::AgentRebound { .. } => "agent_rebound",
            Event::HttpRequested { .. } => "http_requested",
            Event::HttpResponded { .. } => "http_responded",
            Event::TaskSent { .. } => "task_sent",
            Event::TasksSent { .. } => "tasks_sent",
            Event::TaskRefused { .. } => "task_refused",
            Event::ChangeRefused { .. } => "change_refused",
            Event::ComponentRemoved { .. } => "component_removed",
            Event::AgentForgotten { .. } => "agent_forgotten",
        }
    }
}

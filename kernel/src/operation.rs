//! Operations: every effect in the system is one of these.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::http::{HttpOutcome, HttpRequest};
use crate::id::{AgentId, Digest, TaskId};
use crate::mail::Delivery;
use crate::package::{PackageRecord, Publisher};
use crate::rules::{Budgets, Quota, Rules};

/// What a task asks its agent to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Free text for the agent, at most [`Limits::max_task_description`](crate::Limits::max_task_description) bytes.
    pub description: String,
}

/// What a new agent is: which component it runs, its name, and its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// Digest of an installed component.
    pub component: Digest,
    /// A display name, at most [`Limits::max_name`](crate::Limits::max_name) bytes.
    pub name: String,
    /// Digest of the capability token the agent is bound to. The host
    /// authorizes every operation of the agent against that token.
    pub token: Digest,
    /// The rights the parent delegated, as the host's right strings (e.g.
    /// `schedule children`); empty for agents the operator started. Opaque to
    /// the kernel; recorded so an auditor can re-check the delegation.
    pub rights: Vec<String>,
}

/// A component the host has stored and may instantiate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// BLAKE3 digest of the component's bytes (the bytes live in the store).
    pub digest: Digest,
    /// A display name agents use to refer to it, e.g. in a spawn request.
    pub name: String,
    /// Size of the component in bytes.
    pub size: u64,
}

/// What the capability gate refused, recorded for the audit log. The token
/// checked is the one the denied agent (the record's origin) is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// The operation class that was checked, e.g. `spawn`.
    pub operation: String,
    /// The target terms checked: the target as the agent named it first (an
    /// agent id, a component name), then its relations to the agent (`self`,
    /// `children`, a component's digest). Empty for operations without one.
    pub targets: Vec<String>,
    /// Whether the check was if the agent may *delegate* this right to a
    /// child it asked to spawn, rather than use it.
    pub delegation: bool,
    /// Why it was refused, e.g. the missing right.
    pub reason: String,
}

/// One operation: the unit the kernel applies.
///
/// The variants form the v0.1 operation families. Their order is part of the
/// log format (postcard encodes the variant index), so new variants are only
/// ever appended, never inserted or renumbered. Large payloads are boxed (a
/// `Box` encodes as what it holds), so an operation stays small to move:
/// a command is moved several times on the way to the log and back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Queue a task for an agent (FIFO per agent).
    ScheduleTask {
        /// The agent that will run the task.
        agent: AgentId,
        /// What to do.
        spec: TaskSpec,
    },
    /// The host started the task at the head of its agent's queue.
    StartTask {
        /// The task.
        task: TaskId,
    },
    /// A running task finished with an output.
    CompleteTask {
        /// The task.
        task: TaskId,
        /// The agent's output bytes.
        #[serde(with = "crate::serde_bytes")]
        output: Vec<u8>,
    },
    /// A queued or running task failed.
    FailTask {
        /// The task.
        task: TaskId,
        /// Why, for a person.
        reason: String,
    },
    /// Spawn a sub-agent whose parent is the command's origin, its token's
    /// bytes not charged: how spawns were recorded before
    /// [`Operation::SpawnAgentSized`], which the host records now.
    SpawnAgent {
        /// What the new agent runs and which token it holds.
        spec: Box<AgentSpec>,
    },
    /// Terminate an agent: its queued and running tasks fail.
    TerminateAgent {
        /// The agent to stop.
        agent: AgentId,
        /// Why, for a person.
        reason: String,
    },
    /// Record that an agent faulted (trap, panic, out of fuel, ...).
    RecordFault {
        /// The agent that faulted.
        agent: AgentId,
        /// What happened.
        reason: String,
    },
    /// Emit opaque bytes for whoever watches the log.
    EmitObservation {
        /// An optional topic.
        topic: Option<String>,
        /// The observation.
        #[serde(with = "crate::serde_bytes")]
        data: Vec<u8>,
    },
    /// Put a key in the origin agent's own state namespace.
    PutState {
        /// The key.
        key: String,
        /// The value.
        #[serde(with = "crate::serde_bytes")]
        value: Vec<u8>,
    },
    /// Delete a key from the origin agent's own state namespace (idempotent).
    DeleteState {
        /// The key.
        key: String,
    },
    /// Revoke every token carrying this revocation id, from now on.
    RevokeToken {
        /// A biscuit revocation id (a block signature).
        #[serde(with = "crate::serde_bytes")]
        revocation_id: Vec<u8>,
    },
    /// Record that the capability gate denied an operation of the origin.
    RecordDenial {
        /// What was denied and why.
        denial: Box<Denial>,
    },
    /// Make a stored component available to spawn.
    InstallComponent {
        /// The component.
        component: Box<ComponentSpec>,
    },
    /// An operation of a registered extension family.
    Extension {
        /// The family, the key of the [`Registry`](crate::Registry).
        family: String,
        /// The family's own opcode.
        opcode: u32,
        /// Opaque to the kernel; decoded by the handler.
        #[serde(with = "crate::serde_bytes")]
        payload: Vec<u8>,
    },
    /// Stop starting tasks for an agent that faults too often.
    QuarantineAgent {
        /// The agent.
        agent: AgentId,
        /// Why.
        reason: String,
    },
    /// Let a quarantined agent run tasks again (its fault count restarts).
    ResumeAgent {
        /// The agent.
        agent: AgentId,
    },
    /// Apply these rules from this record on (see [`Rules`]).
    AdoptRules {
        /// The rules.
        rules: Box<Rules>,
    },
    /// Set an agent's own budgets, below the rules' quotas (from its
    /// capability token, when it is spawned).
    SetBudgets {
        /// The agent.
        agent: AgentId,
        /// Its budgets.
        budgets: Box<Budgets>,
    },
    /// Record what the host refused a running task (the operations an
    /// applied operation's index skipped), so a re-run of the task after a
    /// crash gets the same answers. Consecutive identical refusals are one
    /// entry.
    RecordRefusals {
        /// The task (the record's origin is its agent).
        task: TaskId,
        /// The index of the first refused operation: where the gap starts.
        first: u32,
        /// The refusals, in order.
        refusals: Vec<Refusal>,
    },
    /// Record that an agent ran into a quota; it counts as a fault.
    RecordQuotaHit {
        /// The agent.
        agent: AgentId,
        /// The quota.
        quota: Quota,
        /// What happened, for a person.
        reason: String,
    },
    /// Record a failure of the host itself while running an agent (out of
    /// address space, a full disk): not the agent's fault, never counted
    /// towards its quarantine.
    RecordHostCondition {
        /// The agent the host was running.
        agent: AgentId,
        /// What happened.
        reason: String,
    },
    /// Queue a task for an agent once per idempotency key: a retried
    /// request with the same key schedules nothing
    /// ([`KernelError::AlreadyScheduled`](crate::KernelError::AlreadyScheduled)
    /// names the task it scheduled). The most recent
    /// [`IDEMPOTENCY_KEYS_KEPT`](crate::IDEMPOTENCY_KEYS_KEPT) keys are
    /// remembered.
    ScheduleTaskOnce {
        /// The key the client chose (printable, at most
        /// [`MAX_IDEMPOTENCY_KEY`](crate::MAX_IDEMPOTENCY_KEY) bytes).
        key: String,
        /// The agent that will run the task.
        agent: AgentId,
        /// What to do.
        spec: TaskSpec,
    },
    /// Add a publisher to the trust store.
    TrustPublisher {
        /// The publisher and its key.
        publisher: Publisher,
    },
    /// Remove a publisher from the trust store: its packages' install
    /// tokens are revoked in the same record (the packages stay recorded,
    /// revoked, until they are uninstalled or installed again).
    DistrustPublisher {
        /// The publisher's trust-store name.
        name: String,
    },
    /// Install a package and its component, or upgrade the
    /// package of the same name and publisher: the old version's agents
    /// are rebound to the new component and token, and the old token is
    /// revoked.
    InstallPackage {
        /// The package's component, installed by the same record unless
        /// it is already.
        component: Box<ComponentSpec>,
        /// What was installed, approved and minted.
        package: Box<PackageRecord>,
    },
    /// Uninstall a package: its agents are terminated and its install
    /// token revoked.
    UninstallPackage {
        /// The package's name.
        name: String,
    },
    /// An outbound HTTP request of a running task, journaled before it
    /// leaves the host (authorized by `http HOST`); see [`crate::HttpRequest`].
    HttpRequest {
        /// The task (the record's origin is its agent).
        task: TaskId,
        /// The request's index in the task: 0 for its first request, ...
        index: u32,
        /// What is sent.
        request: Box<HttpRequest>,
    },
    /// What came back for a journaled request (the host records it).
    HttpResponse {
        /// The task.
        task: TaskId,
        /// The request's index in the task.
        index: u32,
        /// The response, or why there is none.
        outcome: Box<HttpOutcome>,
        /// The name of the secret the host injected into the request, if
        /// it did (never its value).
        secret: Option<String>,
    },
    /// The host handed the cell's outbox to JetStream up to the record
    /// `through`: those tasks leave the outbox.
    MarkSent {
        /// The sequence number of the last record whose task was sent.
        through: u64,
    },
    /// A task another cell sent, read from this cell's inbox: queued for
    /// its agent, or refused, once.
    DeliverTask {
        /// The task and where it came from.
        delivery: Box<Delivery>,
    },
    /// Remove an installed component (the operator): refused while a
    /// package ships it or an agent that is not terminated runs it. Its
    /// name, if it still names it, names nothing then; its bytes go with
    /// the next archive of the log.
    RemoveComponent {
        /// The component's digest.
        component: Digest,
    },
    /// Forget every terminated agent none of whose descendants is alive
    /// and none of whose scheduled tasks is unfinished (the operator): their records, state and counters leave the state;
    /// their history stays in the log. An agent that is not terminated
    /// keeps every ancestor it has, terminated or not (its quotas are
    /// charged to them). At most
    /// [`FORGOTTEN_PER_RECORD`](crate::FORGOTTEN_PER_RECORD) per record,
    /// the deepest first.
    ForgetTerminated,
    /// A task another cell sent, read from this cell's inbox, that the
    /// host refuses to queue (its memory for agent state would pass its
    /// budget): taken once, as [`Operation::DeliverTask`] takes it, and
    /// recorded as [`Event::TaskRefused`](crate::Event::TaskRefused) with
    /// the host's reason. A change of the configuration is never refused.
    RefuseDelivery {
        /// The task and where it came from.
        delivery: Box<Delivery>,
        /// Why the host refused it.
        reason: String,
    },
    /// Spawn a sub-agent whose parent is the command's origin, as
    /// [`Operation::SpawnAgent`] does, carrying the size of the token the
    /// host stores beside the record: an agent's spawn pays for those bytes
    /// as for the record's own, into its tree's `log` quotas. A child's
    /// token is up to [`Limits::max_token`](crate::Limits::max_token)
    /// bytes behind a record of a few hundred.
    SpawnAgentSized {
        /// What the new agent runs and which token it holds.
        spec: Box<AgentSpec>,
        /// The bytes of the token `spec.token` names.
        token_bytes: u32,
    },
}

/// One or more identical operations of a task, refused in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// How many in a row (at least 1).
    pub count: u32,
    /// The digest of the refused request, as the host encodes it: a re-run
    /// must ask for the same thing to get the same answer.
    pub request: Digest,
    /// The category of the answer.
    pub kind: RefusalKind,
    /// The answer's message.
    pub message: String,
}

/// The category of a refusal, as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs, reason = "each names the error category the agent saw")]
pub enum RefusalKind {
    CapabilityDenied,
    UnknownEntity,
    LimitExceeded,
    Unsupported,
    InvalidOperation,
    QuotaExceeded,
    Other,
}

/// The kind of an [`Operation`], without its data: for errors and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "each variant mirrors the Operation variant of the same name"
)]
pub enum OpKind {
    ScheduleTask,
    StartTask,
    CompleteTask,
    FailTask,
    SpawnAgent,
    TerminateAgent,
    RecordFault,
    EmitObservation,
    PutState,
    DeleteState,
    RevokeToken,
    RecordDenial,
    InstallComponent,
    Extension,
    QuarantineAgent,
    ResumeAgent,
    AdoptRules,
    SetBudgets,
    RecordRefusals,
    RecordQuotaHit,
    RecordHostCondition,
    ScheduleTaskOnce,
    TrustPublisher,
    DistrustPublisher,
    InstallPackage,
    UninstallPackage,
    HttpRequest,
    HttpResponse,
    MarkSent,
    DeliverTask,
    RemoveComponent,
    ForgetTerminated,
    RefuseDelivery,
}

impl OpKind {
    /// The snake_case name, as used in errors and JSON output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::ScheduleTask => "schedule_task",
            OpKind::StartTask => "start_task",
            OpKind::CompleteTask => "complete_task",
            OpKind::FailTask => "fail_task",
            OpKind::SpawnAgent => "spawn_agent",
            OpKind::TerminateAgent => "terminate_agent",
            OpKind::RecordFault => "record_fault",
            OpKind::EmitObservation => "emit_observation",
            OpKind::PutState => "put_state",
            OpKind::DeleteState => "delete_state",
            OpKind::RevokeToken => "revoke_token",
            OpKind::RecordDenial => "record_denial",
            OpKind::InstallComponent => "install_component",
            OpKind::Extension => "extension",
            OpKind::QuarantineAgent => "quarantine_agent",
            OpKind::ResumeAgent => "resume_agent",
            OpKind::AdoptRules => "adopt_rules",
            OpKind::SetBudgets => "set_budgets",
            OpKind::RecordRefusals => "record_refusals",
            OpKind::RecordQuotaHit => "record_quota_hit",
            OpKind::RecordHostCondition => "record_host_condition",
            OpKind::ScheduleTaskOnce => "schedule_task_once",
            OpKind::TrustPublisher => "trust_publisher",
            OpKind::DistrustPublisher => "distrust_publisher",
            OpKind::InstallPackage => "install_package",
            OpKind::UninstallPackage => "uninstall_package",
            OpKind::HttpRequest => "http_request",
            OpKind::HttpResponse => "http_response",
            OpKind::MarkSent => "mark_sent",
            OpKind::DeliverTask => "deliver_task",
            OpKind::RemoveComponent => "remove_component",
            OpKind::ForgetTerminated => "forget_terminated",
            OpKind::RefuseDelivery => "refuse_delivery",
        }
    }

    /// Whether only the host may submit this operation (authorization
    /// [`Authorization::System`](crate::Authorization::System)); agents never can.
    #[must_use]
    pub const fn host_only(self) -> bool {
        matches!(
            self,
            OpKind::StartTask
                | OpKind::CompleteTask
                | OpKind::FailTask
                | OpKind::RecordFault
                | OpKind::RevokeToken
                | OpKind::RecordDenial
                | OpKind::InstallComponent
                | OpKind::QuarantineAgent
                | OpKind::ResumeAgent
                | OpKind::AdoptRules
                | OpKind::SetBudgets
                | OpKind::RecordRefusals
                | OpKind::RecordQuotaHit
                | OpKind::RecordHostCondition
                | OpKind::ScheduleTaskOnce
                | OpKind::TrustPublisher
                | OpKind::DistrustPublisher
                | OpKind::InstallPackage
                | OpKind::UninstallPackage
                | OpKind::HttpResponse
                | OpKind::MarkSent
                | OpKind::DeliverTask
                | OpKind::RemoveComponent
                | OpKind::ForgetTerminated
                | OpKind::RefuseDelivery
        )
    }

    /// Whether an operator (an API client, under
    /// [`Authorization::Operator`](crate::Authorization::Operator)) may
    /// submit this kind: what the operator's commands are made of.
    #[must_use]
    pub const fn by_operator(self) -> bool {
        matches!(
            self,
            OpKind::ScheduleTask
                | OpKind::ScheduleTaskOnce
                | OpKind::SpawnAgent
                | OpKind::TerminateAgent
                | OpKind::ResumeAgent
                | OpKind::RevokeToken
                | OpKind::InstallComponent
                | OpKind::RemoveComponent
                | OpKind::ForgetTerminated
                | OpKind::TrustPublisher
                | OpKind::DistrustPublisher
                | OpKind::InstallPackage
                | OpKind::UninstallPackage
        )
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Operation {
    /// The operation's kind.
    #[must_use]
    pub const fn kind(&self) -> OpKind {
        match self {
            Operation::ScheduleTask { .. } => OpKind::ScheduleTask,
            Operation::StartTask { .. } => OpKind::StartTask,
            Operation::CompleteTask { .. } => OpKind::CompleteTask,
            Operation::FailTask { .. } => OpKind::FailTask,
            Operation::SpawnAgent { .. } => OpKind::SpawnAgent,
            Operation::TerminateAgent { .. } => OpKind::TerminateAgent,
            Operation::RecordFault { .. } => OpKind::RecordFault,
            Operation::EmitObservation { .. } => OpKind::EmitObservation,
            Operation::PutState { .. } => OpKind::PutState,
            Operation::DeleteState { .. } => OpKind::DeleteState,
            Operation::RevokeToken { .. } => OpKind::RevokeToken,
            Operation::RecordDenial { .. } => OpKind::RecordDenial,
            Operation::InstallComponent { .. } => OpKind::InstallComponent,
            Operation::Extension { .. } => OpKind::Extension,
            Operation::QuarantineAgent { .. } => OpKind::QuarantineAgent,
            Operation::ResumeAgent { .. } => OpKind::ResumeAgent,
            Operation::AdoptRules { .. } => OpKind::AdoptRules,
            Operation::SetBudgets { .. } => OpKind::SetBudgets,
            Operation::RecordRefusals { .. } => OpKind::RecordRefusals,
            Operation::RecordQuotaHit { .. } => OpKind::RecordQuotaHit,
            Operation::RecordHostCondition { .. } => OpKind::RecordHostCondition,
            Operation::ScheduleTaskOnce { .. } => OpKind::ScheduleTaskOnce,
            Operation::TrustPublisher { .. } => OpKind::TrustPublisher,
            Operation::DistrustPublisher { .. } => OpKind::DistrustPublisher,
            Operation::InstallPackage { .. } => OpKind::InstallPackage,
            Operation::UninstallPackage { .. } => OpKind::UninstallPackage,
            Operation::HttpRequest { .. } => OpKind::HttpRequest,
            Operation::HttpResponse { .. } => OpKind::HttpResponse,
            Operation::MarkSent { .. } => OpKind::MarkSent,
            Operation::DeliverTask { .. } => OpKind::DeliverTask,
            Operation::RemoveComponent { .. } => OpKind::RemoveComponent,
            Operation::ForgetTerminated => OpKind::ForgetTerminated,
            Operation::RefuseDelivery { .. } => OpKind::RefuseDelivery,
            Operation::SpawnAgentSized { .. } => OpKind::SpawnAgent,
        }
    }

    /// What a spawn ([`Operation::SpawnAgent`] or
    /// [`Operation::SpawnAgentSized`]) starts; `None` for other operations.
    #[must_use]
    pub fn spawned(&self) -> Option<&AgentSpec> {
        match self {
            Operation::SpawnAgent { spec } | Operation::SpawnAgentSized { spec, .. } => Some(spec),
            _ => None,
        }
    }
}
